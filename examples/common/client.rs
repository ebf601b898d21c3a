//! What the two echo clients share (`echo_client` on std, `tokio_echo_client` on
//! tokio): their common options, the TLS connector built from them, the message
//! they send, how a misbehaving client waits for the server to give up, and how
//! the end of the connection is printed.

use std::io::{self, Read};
use std::os::fd::RawFd;
use std::path::PathBuf;

use closenotify::{Mode, Policy, PolicyBuilder, Report};
use openssl::ssl::{ConnectConfiguration, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use serde_json::{json, Value};

use super::cli::{self, Args};

/// The `--close` values, as the error message lists them.
const CLOSE_VALUES: &str = "bidirectional, send-only, quiet, abrupt, reset or never";

/// How the client ends the connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Close {
    /// A closenotify shutdown in this mode (`echo_client --stoptls` is
    /// `Mode::StopTls`).
    Shutdown(Mode),
    /// TCP close without close_notify (a FIN).
    Abrupt,
    /// TCP close with an RST (SO_LINGER 0).
    Reset,
    /// Never close: hold the connection until the server resets it.
    Never,
}

impl Close {
    /// The name printed in the report of a misbehaving close.
    pub fn name(self) -> &'static str {
        match self {
            Close::Shutdown(_) => "shutdown",
            Close::Abrupt => "abrupt",
            Close::Reset => "reset",
            Close::Never => "never",
        }
    }
}

/// The options both clients take.
pub struct ClientOptions {
    /// `--connect HOST:PORT`.
    pub connect: String,
    /// `--message TEXT` (default: stdin).
    pub message: Option<String>,
    /// `--servername NAME` (default: the host of `--connect`).
    pub servername: Option<String>,
    /// `--ca FILE`.
    pub ca: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: bool,
    /// `--close`.
    pub close: Close,
    /// Whether `--close` was given (`--stoptls` excludes it).
    pub close_given: bool,
    /// `--flush-timeout-ms`, `--peer-timeout-ms`; the mode comes from `close`.
    pub policy: PolicyBuilder,
    /// `--tls12`.
    pub tls12: bool,
    /// `--json`.
    pub json: bool,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            connect: String::new(),
            message: None,
            servername: None,
            ca: None,
            insecure: false,
            close: Close::Shutdown(Mode::Bidirectional),
            close_given: false,
            policy: Policy::builder(),
            tls12: false,
            json: false,
        }
    }
}

/// How long a client waits for the server (and the proxy) to connect, answer,
/// handshake and echo.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl ClientOptions {
    /// Reads the command line: the common options, then `own` for the program's
    /// own flags (`Ok(true)`: taken), `--help` and unknown options as errors (an
    /// empty message for `--help`), and the checks once every option is read.
    pub fn from_args(
        mut own: impl FnMut(&str, &mut Args) -> Result<bool, String>,
    ) -> Result<ClientOptions, String> {
        let mut args = Args::from_env();
        let mut o = ClientOptions::default();
        while let Some(flag) = args.next_flag()? {
            if o.parse(&flag, &mut args)? || own(&flag, &mut args)? {
                continue;
            }
            match flag.as_str() {
                "--help" | "-h" => return Err(String::new()),
                other => return Err(format!("unknown option '{other}'")),
            }
        }
        o.check()?;
        Ok(o)
    }

    /// Takes `flag` (and its value from `args`) if it is a common option:
    /// `Ok(true)` when it was one, `Ok(false)` when the caller must handle it.
    pub fn parse(&mut self, flag: &str, args: &mut Args) -> Result<bool, String> {
        match flag {
            "--connect" => self.connect = args.value(flag)?,
            "--message" => self.message = Some(args.value(flag)?),
            "--servername" => self.servername = Some(args.value(flag)?),
            "--ca" => self.ca = Some(PathBuf::from(args.value(flag)?)),
            "--insecure" => {
                args.switch(flag)?;
                self.insecure = true;
            }
            "--close" => {
                self.close_given = true;
                self.close = match args.value(flag)?.as_str() {
                    "abrupt" => Close::Abrupt,
                    "reset" => Close::Reset,
                    "never" => Close::Never,
                    other => Close::Shutdown(
                        cli::mode(other)
                            .map_err(|_| format!("invalid --close '{other}' ({CLOSE_VALUES})"))?,
                    ),
                }
            }
            "--flush-timeout-ms" => {
                let t = args.millis(flag)?;
                self.policy = std::mem::take(&mut self.policy).flush_timeout(t);
            }
            "--peer-timeout-ms" => {
                let t = args.millis(flag)?;
                self.policy = std::mem::take(&mut self.policy).peer_timeout(t);
            }
            "--tls12" => {
                args.switch(flag)?;
                self.tls12 = true;
            }
            "--json" => {
                args.switch(flag)?;
                self.json = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The checks once every option is read.
    pub fn check(&self) -> Result<(), String> {
        if self.connect.is_empty() {
            return Err("--connect is required".into());
        }
        if split_host_port(&self.connect).is_none() {
            return Err(format!("invalid --connect '{}' (HOST:PORT)", self.connect));
        }
        if self.insecure && self.ca.is_some() {
            return Err("--ca and --insecure exclude each other".into());
        }
        Ok(())
    }

    /// The shutdown policy: the timeouts given, the mode of `--close` (the
    /// misbehaving closes never call closenotify; their policy is unused).
    pub fn policy(&mut self) -> Result<Policy, String> {
        let mode = match self.close {
            Close::Shutdown(mode) => mode,
            _ => Mode::Bidirectional,
        };
        std::mem::take(&mut self.policy)
            .mode(mode)
            .build()
            .map_err(|e| e.to_string())
    }

    /// The connector: TLS 1.2 at most with `--tls12`, the `--ca` file besides the
    /// system's CA certificates, no verification with `--insecure`.
    pub fn connector(&self) -> Result<SslConnector, String> {
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        if self.tls12 {
            builder
                .set_max_proto_version(Some(SslVersion::TLS1_2))
                .map_err(|e| e.to_string())?;
        }
        if let Some(ca) = &self.ca {
            builder
                .set_ca_file(ca)
                .map_err(|e| format!("cannot use CA file {}: {e}", ca.display()))?;
        }
        if self.insecure {
            builder.set_verify(SslVerifyMode::NONE);
        }
        Ok(builder.build())
    }

    /// The configuration of one connection, and the name it sends in SNI and
    /// checks the certificate against: `--servername`, else the host of
    /// `--connect` (rust-openssl sends no SNI for an IP address and checks it
    /// against the certificate's IP addresses).
    pub fn configure<'a>(
        &'a self,
        connector: &SslConnector,
    ) -> Result<(ConnectConfiguration, &'a str), String> {
        let (host, _) = split_host_port(&self.connect).ok_or("checked by check()")?;
        let name = self.servername.as_deref().unwrap_or(host);
        let mut config = connector.configure().map_err(|e| e.to_string())?;
        if self.insecure {
            config.set_verify_hostname(false);
        }
        Ok((config, name))
    }

    /// What to send: `--message`, else all of stdin.
    pub fn message(&self) -> Result<Vec<u8>, String> {
        match &self.message {
            Some(m) => Ok(m.clone().into_bytes()),
            None => {
                let mut m = Vec::new();
                io::stdin()
                    .read_to_end(&mut m)
                    .map_err(|e| format!("cannot read stdin: {e}"))?;
                Ok(m)
            }
        }
    }

    /// Prints why the client failed before it could end the connection its way:
    /// `outcome` is the JSON outcome (`failed`, `certificate_rejected`).
    pub fn print_failure(&self, program: &str, outcome: &str, msg: &str) {
        if self.json {
            eprintln!("{}", json!({ "outcome": outcome, "error": msg }));
        } else {
            eprintln!("{program}: {msg}");
        }
    }

    /// Prints how the connection ended: the report, or the misbehaving close
    /// done; `extra` adds fields to a report (JSON) and `extra_text` a tail to
    /// its line. True when the report says `clean` or `sent_only`.
    pub fn print_end(
        &self,
        report: Option<&Report>,
        echoed: u64,
        extra: Vec<(&str, Value)>,
        extra_text: &str,
    ) -> bool {
        match (report, self.json) {
            (Some(r), true) => {
                let mut middle = vec![
                    ("os_error", json!(r.os_error)),
                    ("bytes_echoed", json!(echoed)),
                ];
                middle.extend(extra);
                eprintln!("{}", super::report_json(vec![], r, middle));
            }
            (Some(r), false) => eprintln!("{echoed} bytes echoed; {r}{extra_text}"),
            (None, true) => eprintln!(
                "{}",
                json!({ "close": self.close.name(), "bytes_echoed": echoed })
            ),
            (None, false) => eprintln!("{echoed} bytes echoed; closed: {}", self.close.name()),
        }
        report.is_some_and(|r| r.outcome.is_orderly())
    }
}

/// `HOST:PORT` or `[V6ADDR]:PORT`: the host (without brackets) and the port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

/// Blocks until the connection on `fd` is reset or hung up: what `--close never`
/// waits for once it has read everything. poll() with no events requested
/// reports only POLLHUP and POLLERR.
pub fn wait_for_hangup(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd on an fd the caller keeps open until this returns;
    // poll() only writes `revents`.
    while unsafe { libc::poll(&mut pfd, 1, -1) } == 0
        || pfd.revents & (libc::POLLHUP | libc::POLLERR) == 0
    {}
}
