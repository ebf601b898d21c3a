//! `echo_client` on tokio and tokio-openssl: a TLS echo client that ends its
//! connection with `closenotify::tokio`, or misbehaves on purpose to show what
//! servers see.
//!
//! ```text
//! cargo run --example echo_server &
//! cargo run --features tokio --example tokio_echo_client -- \
//!     --connect 127.0.0.1:4433 --insecure --message hello
//! ```
//!
//! Options, flows, output and exit codes are `echo_client`'s: `--connect ADDR`
//! (required), `--message TEXT` (default: stdin), `--servername NAME`, `--ca FILE`
//! or `--insecure`, `--close bidirectional|send-only|quiet|abrupt|reset|never`,
//! `--flush-timeout-ms N`, `--peer-timeout-ms N`, `--tls12`, `--json`.
//!
//! Default flow (`--close bidirectional`): send the message, then close_notify +
//! SHUT_WR, and keep reading the echo until the server's close_notify: the TLS
//! half-close, `closenotify::tokio::HalfClose`, an `AsyncRead` that ends with an
//! error unless the server closed properly. The other modes first read the whole
//! echo, then: `send-only` sends close_notify without waiting and `quiet` sends
//! none (both with `closenotify::tokio::shutdown`), `abrupt` closes TCP without
//! close_notify, `reset` closes with an RST, `never` holds the connection open
//! until the server resets it.
//!
//! Echoed bytes go to stdout. The report goes to stderr (with `--json`, as the
//! last line, a JSON object). Exit 0 for `clean` and `sent_only`, 1 for any other
//! end, 2 for usage errors.

mod common;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::process::ExitCode;

use closenotify::tokio::HalfClose;
use closenotify::{Mode, Policy, Report};
use common::cli;
use common::client::{wait_for_hangup, ClientOptions, Close, IO_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const USAGE: &str = "usage: tokio_echo_client --connect ADDR [--message TEXT] \
[--servername NAME] [--ca FILE | --insecure] \
[--close bidirectional|send-only|quiet|abrupt|reset|never] \
[--flush-timeout-ms N] [--peer-timeout-ms N] [--tls12] [--json]";

type Stream = tokio_openssl::SslStream<tokio::net::TcpStream>;

fn parse_options() -> Result<ClientOptions, String> {
    ClientOptions::from_args(|_, _| Ok(false))
}

fn main() -> ExitCode {
    env_logger::init();
    let mut options = match parse_options() {
        Ok(o) => o,
        Err(msg) => return cli::usage_error("tokio_echo_client", USAGE, &msg),
    };
    let policy = match options.policy() {
        Ok(p) => p,
        Err(e) => return cli::usage_error("tokio_echo_client", USAGE, &e),
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(run(&options, &policy)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            options.print_failure("tokio_echo_client", "failed", &e);
            ExitCode::from(1)
        }
    }
}

/// `f`, or an error after `IO_TIMEOUT`.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    timeout(IO_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: timed out after {IO_TIMEOUT:?}"))
}

async fn connect(options: &ClientOptions) -> Result<Stream, String> {
    let connector = options.connector()?;
    let addr = tokio::net::lookup_host(&options.connect)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", options.connect))?
        .next()
        .ok_or_else(|| format!("no address for {}", options.connect))?;
    let tcp = bounded("connect", tokio::net::TcpStream::connect(addr))
        .await?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_nodelay(true).ok();
    let (config, name) = options.configure(&connector)?;
    let ssl = config.into_ssl(name).map_err(|e| e.to_string())?;
    let mut stream = Stream::new(ssl, tcp).map_err(|e| e.to_string())?;
    bounded("TLS handshake", Pin::new(&mut stream).connect())
        .await?
        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
    Ok(stream)
}

/// Runs the client; `Ok(true)` when the connection ended `clean` or `sent_only`.
async fn run(options: &ClientOptions, policy: &Policy) -> Result<bool, String> {
    let message = options.message()?;
    let mut stream = connect(options).await?;
    bounded("send", stream.write_all(&message))
        .await?
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut stdout = io::stdout().lock();

    if options.close == Close::Shutdown(Mode::Bidirectional) {
        let (report, echoed) = half_close(&mut stream, policy, &mut stdout).await?;
        return Ok(options.print_end(Some(&report), echoed, vec![], ""));
    }

    // The other modes read the whole echo first, so that nothing is left unread
    // (unread input would turn the close into an RST) and the server sees exactly
    // the behaviour asked for.
    let mut echo = vec![0u8; message.len()];
    bounded("echo", stream.read_exact(&mut echo))
        .await?
        .map_err(|e| format!("cannot read the echo: {e}"))?;
    stdout.write_all(&echo).ok();
    stdout.flush().ok();
    let echoed = echo.len() as u64;
    match options.close {
        Close::Shutdown(_) => {
            let report = closenotify::tokio::shutdown(&mut stream, policy)
                .await
                .map_err(|e| e.to_string())?;
            Ok(options.print_end(Some(&report), echoed, vec![], ""))
        }
        Close::Abrupt => {
            drop(stream); // FIN, no close_notify
            Ok(options.print_end(None, echoed, vec![], ""))
        }
        Close::Reset => {
            common::try_reset_on_drop(stream.get_ref()).map_err(|e| e.to_string())?;
            drop(stream); // RST
            Ok(options.print_end(None, echoed, vec![], ""))
        }
        Close::Never => {
            // Hold the connection without ever answering: past the server's
            // close_notify and FIN, until it resets the connection (or we are
            // killed). poll() reports POLLHUP/POLLERR only for a reset.
            let mut raw = [0u8; 4096];
            while matches!(stream.get_mut().read(&mut raw).await, Ok(n) if n > 0) {}
            let fd = stream.get_ref().as_raw_fd();
            // `stream` keeps the fd open until the wait, awaited here, is over.
            tokio::task::spawn_blocking(move || wait_for_hangup(fd))
                .await
                .map_err(|e| e.to_string())?;
            drop(stream);
            Ok(options.print_end(None, echoed, vec![], ""))
        }
    }
}

/// Sends close_notify + SHUT_WR and reads the rest of the echo until the server's
/// close_notify, writing it to `out`. Returns the report and the bytes echoed.
async fn half_close(
    stream: &mut Stream,
    policy: &Policy,
    out: &mut impl Write,
) -> Result<(Report, u64), String> {
    let mut closing = HalfClose::new(stream, policy).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16 * 1024];
    let mut echoed = 0u64;
    // Bounded by the policy: the reads end with the shutdown, in order (Ok(0)) or
    // not (an error; the report says how).
    while let Ok(n) = closing.read(&mut buf).await {
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).ok();
        echoed += n as u64;
    }
    out.flush().ok();
    let report = match closing.report() {
        Some(report) => report,
        None => closing.finish().await,
    };
    Ok((report, echoed))
}
