//! The echo server's command line and TLS context.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use closenotify::{Mode, Policy};
use openssl::ssl::{
    NameType, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslSessionCacheMode,
    SslVersion,
};

use crate::common;
use crate::common::cli::{self, Args};

pub const USAGE: &str = "usage: echo_server [--listen ADDR] [--cert FILE --key FILE] \
[--mode bidirectional|send-only|quiet] [--flush-timeout-ms N] [--peer-timeout-ms N] \
[--idle-timeout-ms N] [--starttls] [--stoptls] [--json]";

pub struct Options {
    pub listen: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub policy: Policy,
    pub idle_timeout: Option<Duration>,
    pub starttls: bool,
    /// `--stoptls`: the policy of the STOPTLS shutdowns.
    pub stoptls: Option<Policy>,
    pub json: bool,
}

pub fn parse_options() -> Result<Options, String> {
    let mut args = Args::from_env();
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4433));
    let (mut cert, mut key, mut json) = (None, None, false);
    let (mut starttls, mut stoptls) = (false, false);
    let mut policy = Policy::builder();
    let mut idle_timeout = None;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--listen" => {
                let v = args.value(&flag)?;
                listen = v
                    .parse()
                    .map_err(|_| format!("invalid --listen '{v}' (an IP:PORT address)"))?;
            }
            "--cert" => cert = Some(PathBuf::from(args.value(&flag)?)),
            "--key" => key = Some(PathBuf::from(args.value(&flag)?)),
            "--mode" => policy = policy.mode(cli::mode(&args.value(&flag)?)?),
            "--flush-timeout-ms" => policy = policy.flush_timeout(args.millis(&flag)?),
            "--peer-timeout-ms" => policy = policy.peer_timeout(args.millis(&flag)?),
            "--idle-timeout-ms" => {
                let d = args.millis(&flag)?;
                if d.is_zero() {
                    return Err("--idle-timeout-ms must be at least 1".into());
                }
                idle_timeout = Some(d);
            }
            "--starttls" => {
                args.switch(&flag)?;
                starttls = true;
            }
            "--stoptls" => {
                args.switch(&flag)?;
                stoptls = true;
            }
            "--json" => {
                args.switch(&flag)?;
                json = true;
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if cert.is_some() != key.is_some() {
        return Err("--cert and --key go together".into());
    }
    let policy = policy.build().map_err(|e| e.to_string())?;
    // The timeouts of the command line, in the mode that keeps the connection.
    let stoptls = match stoptls {
        true => Some(
            policy
                .to_builder()
                .mode(Mode::StopTls)
                .build()
                .map_err(|e| format!("--stoptls: {e}"))?,
        ),
        false => None,
    };
    Ok(Options {
        listen,
        cert,
        key,
        policy,
        idle_timeout,
        starttls,
        stoptls,
        json,
    })
}

pub fn tls_context(options: &Options) -> Result<SslContext, String> {
    let mut ctx = SslContextBuilder::new(SslMethod::tls_server()).map_err(|e| e.to_string())?;
    ctx.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| e.to_string())?;
    ctx.set_session_id_context(b"echo_server")
        .map_err(|e| e.to_string())?;
    ctx.set_session_cache_mode(SslSessionCacheMode::SERVER);
    // The pending echo is a Vec that grows while a write waits: a retried
    // SSL_write may come with the same bytes at another address.
    ctx.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    // Accept every SNI name (one certificate serves them all). Acknowledging it
    // also makes OpenSSL keep it with the session, so that `servername` still
    // names it after a TLS 1.2 resumption.
    ctx.set_servername_callback(|ssl, _alert| {
        log::debug!("SNI: {:?}", ssl.servername(NameType::HOST_NAME));
        Ok(())
    });
    match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            ctx.set_certificate_chain_file(cert)
                .map_err(|e| format!("cannot use certificate {}: {e}", cert.display()))?;
            ctx.set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| format!("cannot use key {}: {e}", key.display()))?;
            ctx.check_private_key()
                .map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
        }
        _ => {
            let (cert, key) = common::identity();
            ctx.set_certificate(cert).map_err(|e| e.to_string())?;
            ctx.set_private_key(key).map_err(|e| e.to_string())?;
        }
    }
    Ok(ctx.build())
}
