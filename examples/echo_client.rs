//! A TLS echo client that ends its connection with closenotify, or misbehaves on
//! purpose to show what servers see. It can also start TLS late on a connection
//! (STARTTLS, or through an HTTP CONNECT proxy) and leave TLS again for plaintext
//! on the same connection (STOPTLS).
//!
//! ```text
//! cargo run --example echo_client -- --connect 127.0.0.1:4433 --insecure --message hello
//! ```
//!
//! Options (the command-line contract in the README):
//! - `--connect HOST:PORT` (required): the echo server. Every address HOST
//!   resolves to is tried in turn; through a proxy, the proxy resolves it.
//! - `--message TEXT`: what to send (default: stdin).
//! - `--servername NAME`: the name sent in SNI and checked against the server's
//!   certificate; default: the HOST of `--connect`, never the proxy's. (An IP
//!   address is checked against the certificate's IP addresses, and no SNI is
//!   sent: SNI carries only names.)
//! - `--ca FILE` (verify the server's certificate with these CA certificates,
//!   besides the system's) or `--insecure` (no verification at all).
//! - `--proxy HOST:PORT`: connect to an HTTP proxy, ask it for a tunnel with
//!   `CONNECT` to the `--connect` address (status 200 required), then run TLS to
//!   the end host through it.
//! - `--starttls`: read the server's greeting line, send `STARTTLS`, read its
//!   go-ahead line (both must start with `220`), then start TLS on the same
//!   connection.
//! - `--stoptls`: end TLS but keep the connection: close_notify (no TCP
//!   half-close), the rest of the echo read until the server's close_notify (a
//!   `Mode::StopTls` shutdown with `shutdown_blocking_read`), then, in
//!   plaintext, read the server's line and answer with one. Excludes `--close`.
//! - `--close bidirectional|send-only|quiet|abrupt|reset|never`: how to end TLS
//!   (see below).
//! - `--flush-timeout-ms N`, `--peer-timeout-ms N`: the shutdown policy.
//! - `--tls12`: TLS 1.2 at most. `--json`: the report as JSON.
//!
//! Default flow (`--close bidirectional`): send the message, then close_notify +
//! SHUT_WR, and keep reading the echo until the server's close_notify (the TLS
//! half-close, `shutdown_blocking_read`). The other modes first read the whole
//! echo, then: `send-only` sends close_notify without waiting, `quiet` sends
//! none, `abrupt` closes TCP without close_notify, `reset` closes with an RST,
//! `never` holds the connection open until the server closes it.
//!
//! Echoed bytes go to stdout. The report goes to stderr (with `--json`, as the
//! last line, a JSON object; with `--stoptls` it also has `transport_reusable`,
//! `plaintext_received` and `plaintext_sent`). Exit status: 0 for `clean` and
//! `sent_only` (with `--stoptls`: a clean STOPTLS and both plaintext lines
//! exchanged), 1 for any other end or failure, 2 for usage errors, 3 when the
//! server's certificate is rejected (wrong name, unknown CA, expired...).

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use closenotify::{
    into_transport, shutdown_blocking, shutdown_blocking_read, Mode, Policy, Report,
};
use common::cli;
use common::client::{split_host_port, wait_for_hangup, ClientOptions, Close, IO_TIMEOUT};
use common::line;
use common::starttls::{self, Dialect};
use openssl::ssl::{HandshakeError, MidHandshakeSslStream, SslStream, SslVerifyMode};
use openssl::x509::{X509Ref, X509VerifyResult};
use serde_json::json;

const USAGE: &str = "usage: echo_client --connect HOST:PORT [--message TEXT] \
[--servername NAME] [--ca FILE | --insecure] [--proxy HOST:PORT] [--starttls] \
[--stoptls | --close bidirectional|send-only|quiet|abrupt|reset|never] \
[--flush-timeout-ms N] [--peer-timeout-ms N] [--tls12] [--json]";

/// The exit status when the server's certificate is rejected.
const EXIT_CERTIFICATE: u8 = 3;

struct Options {
    common: ClientOptions,
    proxy: Option<String>,
    starttls: bool,
}

fn parse_options() -> Result<Options, String> {
    let (mut proxy, mut starttls, mut stoptls) = (None, false, false);
    let mut common = ClientOptions::from_args(|flag, args| {
        match flag {
            "--proxy" => {
                let v = args.value(flag)?;
                if split_host_port(&v).is_none() {
                    return Err(format!("invalid --proxy '{v}' (HOST:PORT)"));
                }
                proxy = Some(v);
            }
            "--starttls" => {
                args.switch(flag)?;
                starttls = true;
            }
            "--stoptls" => {
                args.switch(flag)?;
                stoptls = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if stoptls {
        if common.close_given {
            return Err("--stoptls ends TLS its own way: it excludes --close".into());
        }
        common.close = Close::Shutdown(Mode::StopTls);
    }
    Ok(Options {
        common,
        proxy,
        starttls,
    })
}

/// Why the client failed before it could end the connection its way.
enum Failure {
    /// The server's certificate was rejected (exit 3).
    Certificate(String),
    /// Anything else: connect, proxy, STARTTLS, handshake, I/O (exit 1).
    Other(String),
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure::Other(msg)
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let mut options = match parse_options() {
        Ok(o) => o,
        Err(msg) => return cli::usage_error("echo_client", USAGE, &msg),
    };
    let policy = match options.common.policy() {
        Ok(p) => p,
        Err(e) => return cli::usage_error("echo_client", USAGE, &e),
    };
    let (outcome, msg, code) = match run(&options, &policy) {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => return ExitCode::from(1),
        Err(Failure::Certificate(msg)) => ("certificate_rejected", msg, EXIT_CERTIFICATE),
        Err(Failure::Other(msg)) => ("failed", msg, 1),
    };
    options.common.print_failure("echo_client", outcome, &msg);
    ExitCode::from(code)
}

/// A TCP connection to `addr` (HOST:PORT), trying every address it resolves to.
fn open_tcp(addr: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .collect();
    let mut last = format!("no address for {addr}");
    for a in addrs {
        match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
            Ok(tcp) => {
                tcp.set_nodelay(true).ok();
                tcp.set_read_timeout(Some(IO_TIMEOUT)).ok();
                tcp.set_write_timeout(Some(IO_TIMEOUT)).ok();
                return Ok(tcp);
            }
            Err(e) => last = format!("cannot connect to {addr} ({a}): {e}"),
        }
    }
    Err(last)
}

/// Asks the proxy on `tcp` for a tunnel to `target` (HOST:PORT). Reads its answer
/// byte by byte up to the blank line, and not one byte further: TLS follows.
fn http_connect(tcp: &mut TcpStream, proxy: &str, target: &str) -> Result<(), String> {
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("cannot send CONNECT to the proxy {proxy}: {e}"))?;
    let answer = |e: io::Error| format!("no answer to CONNECT from the proxy {proxy}: {e}");
    let status = line::read_line(tcp).map_err(answer)?;
    let text = line::show(&status);
    let mut words = text.split_whitespace();
    let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        let got = line::describe(&status);
        return Err(format!(
            "the proxy {proxy} did not answer CONNECT in HTTP: {got}"
        ));
    }
    if code != "200" {
        return Err(format!(
            "the proxy {proxy} refused CONNECT {target}: {text:?}"
        ));
    }
    for _ in 0..100 {
        let header = line::read_line(tcp).map_err(answer)?;
        if header == b"\r\n" || header == b"\n" {
            return Ok(());
        }
    }
    Err(format!("the proxy {proxy} sent more than 100 header lines"))
}

/// The connection to the server, TLS established: direct or through the proxy,
/// STARTTLS if asked, then the handshake with SNI and the certificate checked for
/// `--servername`, else the host of `--connect`.
fn connect(options: &Options) -> Result<SslStream<TcpStream>, Failure> {
    let connector = options.common.connector()?;
    let server = options.common.connect.as_str();
    let mut tcp = match &options.proxy {
        Some(proxy) => {
            let mut tcp = open_tcp(proxy).map_err(|e| format!("proxy: {e}"))?;
            http_connect(&mut tcp, proxy, server)?;
            tcp
        }
        None => open_tcp(server)?,
    };
    if options.starttls {
        starttls::client(&mut tcp, Dialect::Line, server)?;
    }
    let (mut config, name) = options.common.configure(&connector)?;
    // The server's certificate, kept from the verification itself: OpenSSL 1.1.1
    // does not keep the chain of a certificate it rejected.
    let leaf = Arc::new(Mutex::new(None));
    if !options.common.insecure {
        let seen = Arc::clone(&leaf);
        config.set_verify_callback(SslVerifyMode::PEER, move |ok, store| {
            if store.error_depth() == 0 {
                if let Some(cert) = store.current_cert() {
                    *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(cert.to_owned());
                }
            }
            ok
        });
    }
    match config.connect(name, tcp) {
        Ok(stream) => Ok(stream),
        Err(HandshakeError::SetupFailure(e)) => Err(format!("TLS setup failed: {e}").into()),
        Err(HandshakeError::Failure(mid)) | Err(HandshakeError::WouldBlock(mid)) => {
            let leaf = leaf.lock().unwrap_or_else(|e| e.into_inner()).take();
            Err(handshake_failure(&mid, leaf.as_deref(), server, name))
        }
    }
}

/// Says why the handshake failed: the certificate check, or the TLS error.
fn handshake_failure(
    mid: &MidHandshakeSslStream<TcpStream>,
    leaf: Option<&X509Ref>,
    server: &str,
    name: &str,
) -> Failure {
    let verify = mid.ssl().verify_result();
    if verify != X509VerifyResult::OK {
        let checked = match name.parse::<IpAddr>() {
            Ok(_) => format!("IP address {name}"),
            Err(_) => format!("name {name:?}"),
        };
        let names = leaf
            .map(cert_names)
            .filter(|n| !n.is_empty())
            .map_or_else(String::new, |n| format!("; the certificate is for {n}"));
        return Failure::Certificate(format!(
            "the certificate of {server} is rejected: {} (checked for {checked}{names})",
            verify.error_string()
        ));
    }
    let error = mid.error();
    let reason = error
        .ssl_error()
        .and_then(|stack| stack.errors().last())
        .and_then(|e| e.reason());
    let hint = match reason {
        Some("wrong version number") => {
            " (the server did not answer in TLS: if it expects STARTTLS first, use --starttls)"
        }
        _ => "",
    };
    Failure::Other(format!("TLS handshake with {server} failed: {error}{hint}"))
}

/// The DNS names and IP addresses of a certificate (its subject's CN if it has
/// no subjectAltName), for messages.
fn cert_names(cert: &X509Ref) -> String {
    let mut names = Vec::new();
    for name in cert.subject_alt_names().into_iter().flatten() {
        if let Some(dns) = name.dnsname() {
            names.push(dns.to_string());
        } else if let Some(ip) = name.ipaddress() {
            let ip = match ip.len() {
                4 => <[u8; 4]>::try_from(ip).map(IpAddr::from).ok(),
                16 => <[u8; 16]>::try_from(ip).map(IpAddr::from).ok(),
                _ => None,
            };
            names.extend(ip.map(|ip| ip.to_string()));
        }
    }
    if names.is_empty() {
        let cn = openssl::nid::Nid::COMMONNAME;
        for entry in cert.subject_name().entries_by_nid(cn) {
            names.extend(entry.data().to_string().ok());
        }
    }
    names.join(", ")
}

/// The echo goes to stdout as it arrives; write errors there do not change how
/// the connection ends.
struct Echo<W: Write> {
    out: W,
    bytes: u64,
}

impl<W: Write> Write for Echo<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.out.write_all(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// What happened in plaintext after a STOPTLS.
#[derive(Default)]
struct Plaintext {
    received: Option<Vec<u8>>,
    sent: Option<&'static [u8]>,
}

/// Runs the client; `Ok(true)` when the connection ended `clean` or `sent_only`
/// (with `--stoptls`, a clean STOPTLS and both lines exchanged).
fn run(options: &Options, policy: &Policy) -> Result<bool, Failure> {
    let common = &options.common;
    let message = common.message()?;
    let mut stream = connect(options)?;
    stream
        .write_all(&message)
        .map_err(|e| format!("cannot send: {e}"))?;
    let stdout = io::stdout().lock();

    if let Close::Shutdown(mode @ (Mode::Bidirectional | Mode::StopTls)) = common.close {
        // Our close_notify goes out at once (with a TCP half-close unless STOPTLS);
        // the echo is read until the server's close_notify.
        let mut echo = Echo {
            out: stdout,
            bytes: 0,
        };
        let report = shutdown_blocking_read(&mut stream, policy, &mut echo, u64::MAX)
            .map_err(|e| format!("cannot read the echo: {e}"))?;
        echo.flush().ok();
        if mode == Mode::Bidirectional {
            return Ok(common.print_end(Some(&report), echo.bytes, vec![], ""));
        }
        let (plain, error) = match stop_tls(stream, &report) {
            Ok(plain) => (plain, None),
            Err((plain, error)) => (plain, Some(error)),
        };
        if let Some(error) = &error {
            eprintln!("echo_client: {error}");
        }
        let ok = print_stoptls_end(common, &report, echo.bytes, &plain);
        return Ok(ok && error.is_none());
    }

    // The other modes read the whole echo first, so that nothing is left unread
    // (unread input would turn the close into an RST) and the server sees exactly
    // the behaviour asked for.
    let mut stdout = stdout;
    let mut echo = vec![0u8; message.len()];
    stream
        .read_exact(&mut echo)
        .map_err(|e| format!("cannot read the echo: {e}"))?;
    stdout.write_all(&echo).ok();
    stdout.flush().ok();
    let echoed = echo.len() as u64;
    match common.close {
        Close::Shutdown(_) => {
            let report = shutdown_blocking(&mut stream, policy);
            Ok(common.print_end(Some(&report), echoed, vec![], ""))
        }
        Close::Abrupt => {
            drop(stream); // FIN, no close_notify
            Ok(common.print_end(None, echoed, vec![], ""))
        }
        Close::Reset => {
            common::try_reset_on_drop(stream.get_ref()).map_err(|e| e.to_string())?;
            drop(stream); // RST
            Ok(common.print_end(None, echoed, vec![], ""))
        }
        Close::Never => {
            // Hold the connection without ever answering: past the server's
            // close_notify and FIN, until it resets the connection (or we are
            // killed). poll() reports POLLHUP/POLLERR only for a reset.
            stream.get_ref().set_read_timeout(None).ok();
            let mut raw = [0u8; 4096];
            while matches!(stream.get_mut().read(&mut raw), Ok(n) if n > 0) {}
            wait_for_hangup(stream.get_ref().as_raw_fd());
            Ok(common.print_end(None, echoed, vec![], ""))
        }
    }
}

/// After the STOPTLS shutdown: the plain TCP connection back, the server's line
/// read, ours sent, the connection closed.
fn stop_tls(
    stream: SslStream<TcpStream>,
    report: &Report,
) -> Result<Plaintext, (Plaintext, String)> {
    let mut plain = Plaintext::default();
    let Ok(mut tcp) = into_transport(stream) else {
        let why = format!("STOPTLS failed ({report}): the connection is not reusable");
        return Err((plain, why));
    };
    match line::read_line(&mut tcp) {
        Ok(l) => plain.received = Some(l),
        Err(e) => {
            let why = format!("no plaintext line from the server after STOPTLS: {e}");
            return Err((plain, why));
        }
    }
    if let Err(e) = tcp.write_all(line::CLIENT_BYE) {
        return Err((plain, format!("cannot send the plaintext line: {e}")));
    }
    plain.sent = Some(line::CLIENT_BYE);
    Ok(plain)
}

/// Prints the report of a STOPTLS and what followed in plaintext; true for a
/// clean STOPTLS.
fn print_stoptls_end(common: &ClientOptions, r: &Report, echoed: u64, plain: &Plaintext) -> bool {
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
    let quoted =
        |b: Option<&[u8]>| text(b).map_or_else(|| "nothing".to_string(), |t| format!("{t:?}"));
    let received = plain.received.as_deref();
    let extra = vec![
        ("transport_reusable", json!(r.transport_reusable)),
        ("plaintext_received", json!(text(received))),
        ("plaintext_sent", json!(text(plain.sent))),
    ];
    let tail = format!(
        "; transport reusable: {}; then plaintext: received {}, sent {}",
        r.transport_reusable,
        quoted(received),
        quoted(plain.sent)
    );
    common.print_end(Some(r), echoed, extra, &tail)
}
