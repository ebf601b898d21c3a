//! A TLS echo server on one thread: mio, non-blocking handshakes, streaming echo,
//! and every connection ended by closenotify's `Closer` on the same poll.
//!
//! ```text
//! cargo run --example echo_server -- --listen 127.0.0.1:4433 --json
//! ```
//!
//! Options (SPEC §6): `--listen ADDR` (default 127.0.0.1:4433, port 0 allowed),
//! `--cert FILE --key FILE` (default: a self-signed certificate made at start),
//! `--mode bidirectional|send-only|quiet`, `--flush-timeout-ms N`,
//! `--peer-timeout-ms N`, `--idle-timeout-ms N` (the server starts the shutdown
//! after N ms without data from a client; default off), `--json`.
//!
//! The first line on stdout is `{"listening":"ADDR"}`. With `--json`, one line per
//! finished connection follows (without it, one human-readable line). SIGINT or
//! SIGTERM shuts every open connection down under the policy, prints a summary
//! line and exits 0. Usage errors exit 2; a bad certificate or an address in use,
//! 1.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use closenotify::{Closer, DeadlineQueue, Policy, Report, Stream, TlsError};
use common::cli::{self, Args};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode,
    SslSessionCacheMode, SslStream, SslVersion,
};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

const USAGE: &str = "usage: echo_server [--listen ADDR] [--cert FILE --key FILE] \
[--mode bidirectional|send-only|quiet] [--flush-timeout-ms N] [--peer-timeout-ms N] \
[--idle-timeout-ms N] [--json]";

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// Connections being handshaken or echoed: tokens CONNS.. below CLOSER.
const CONNS: usize = 2;
/// The Closer's tokens, on the same poll.
const CLOSER: usize = 1 << 40;
/// A client must finish its handshake within this (or the idle timeout, if
/// shorter): a client that sends nothing holds a socket only this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Echo bytes buffered for a client that does not read before the server stops
/// reading from it: a huge burst costs the server at most this much.
const MAX_PENDING: usize = 1 << 20;

struct Options {
    listen: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    policy: Policy,
    idle_timeout: Option<Duration>,
    json: bool,
}

fn parse_options() -> Result<Options, String> {
    let mut args = Args::from_env();
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4433));
    let (mut cert, mut key, mut json) = (None, None, false);
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
    Ok(Options {
        listen,
        cert,
        key,
        policy,
        idle_timeout,
        json,
    })
}

fn main() -> ExitCode {
    env_logger::init();
    let options = match parse_options() {
        Ok(o) => o,
        Err(msg) => return cli::usage_error("echo_server", USAGE, &msg),
    };
    match Server::start(options).and_then(|mut s| s.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::from(1)
        }
    }
}

fn tls_context(options: &Options) -> Result<SslContext, String> {
    let mut ctx = SslContextBuilder::new(SslMethod::tls_server()).map_err(|e| e.to_string())?;
    ctx.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| e.to_string())?;
    ctx.set_session_id_context(b"echo_server")
        .map_err(|e| e.to_string())?;
    ctx.set_session_cache_mode(SslSessionCacheMode::SERVER);
    // The pending echo is a Vec that grows while a write waits: a retried
    // SSL_write may come with the same bytes at another address.
    ctx.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER);
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

/// What the JSON line says about a connection besides the report.
struct Info {
    peer: SocketAddr,
    bytes_in: u64,
    bytes_out: u64,
}

enum Phase {
    Handshaking,
    Echoing,
}

struct Conn {
    stream: Stream,
    info: Info,
    phase: Phase,
    /// Echo not yet written; the write in progress always starts at `out[sent]`.
    out: Vec<u8>,
    sent: usize,
    /// The client's close_notify arrived.
    closed_by_client: bool,
    last_activity: Instant,
    generation: u64,
}

/// What to do with a connection after handling it.
enum Next {
    Keep,
    /// Hand it to the Closer: client's close_notify answered after the echo, idle
    /// timeout, or the failure the server's own read or write saw.
    Close(Option<TlsError>),
    /// The handshake failed: one JSON line, then the socket is closed.
    HandshakeFailed(String),
}

struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    ctx: SslContext,
    closer: Closer<Info>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_generation: u64,
    /// Handshake and idle deadlines, (slot, generation); checked lazily.
    timers: DeadlineQueue<(usize, u64)>,
    idle_timeout: Option<Duration>,
    json: bool,
    outcomes: BTreeMap<&'static str, u64>,
    stopping: Option<i32>,
}

impl Server {
    fn start(options: Options) -> Result<Server, String> {
        let ctx = tls_context(&options)?;
        let addr = options.listen;
        let mut listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let poll = Poll::new().map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        let closer = Closer::with_registry(poll.registry(), CLOSER..2 * CLOSER, &options.policy)
            .map_err(|e| e.to_string())?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("{}", json!({ "listening": local.to_string() }));
        io::stdout().flush().ok();
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            ctx,
            closer,
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            timers: DeadlineQueue::new(),
            idle_timeout: options.idle_timeout,
            json: options.json,
            outcomes: BTreeMap::new(),
            stopping: None,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let next = [self.closer.next_deadline(), self.timers.peek()]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map(|d| d.saturating_duration_since(now));
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("poll: {e}")),
                Ok(()) => {}
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => {
                        if let Some(sig) = self.signals.pending().next() {
                            self.stop(sig);
                        }
                    }
                    _ if self.closer.handle_event(event, now) => {}
                    Token(t) => self.handle(t - CONNS, now),
                }
            }
            self.expire(now);
            self.closer.handle_timeouts(now);
            self.emit_reports();
            if self.stopping.is_some() && self.closer.pending() == 0 && self.live() == 0 {
                self.summary();
                return Ok(());
            }
        }
    }

    fn live(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (tcp, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: keep serving the others.
                    log::warn!("accept: {e}");
                    return;
                }
            };
            if let Err(e) = self.open(tcp, peer, now) {
                log::warn!("{peer}: {e}");
            }
        }
    }

    fn open(&mut self, tcp: TcpStream, peer: SocketAddr, now: Instant) -> Result<(), String> {
        tcp.set_nodelay(true).ok();
        let ssl = Ssl::new(&self.ctx).map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.poll
            .registry()
            .register(
                stream.get_mut(),
                Token(CONNS + index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        self.next_generation += 1;
        self.conns[index] = Some(Conn {
            stream,
            info: Info {
                peer,
                bytes_in: 0,
                bytes_out: 0,
            },
            phase: Phase::Handshaking,
            out: Vec::new(),
            sent: 0,
            closed_by_client: false,
            last_activity: now,
            generation: self.next_generation,
        });
        let limit = self
            .idle_timeout
            .map_or(HANDSHAKE_TIMEOUT, |i| i.min(HANDSHAKE_TIMEOUT));
        self.timers.push(now + limit, (index, self.next_generation));
        self.handle(index, now);
        Ok(())
    }

    /// Readiness on a connection: make all the progress possible.
    fn handle(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return; // an event for a connection handed over meanwhile
        };
        let next = match conn.phase {
            Phase::Handshaking => match conn.stream.accept() {
                Ok(()) => {
                    conn.phase = Phase::Echoing;
                    conn.last_activity = now;
                    if let Some(idle) = self.idle_timeout {
                        self.timers.push(now + idle, (index, conn.generation));
                    }
                    conn.pump(now)
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                    Next::Keep
                }
                Err(e) => Next::HandshakeFailed(describe(&e)),
            },
            Phase::Echoing => conn.pump(now),
        };
        match next {
            Next::Keep => {}
            Next::Close(error) => self.hand_over(index, error),
            Next::HandshakeFailed(error) => {
                if let Some(conn) = self.take(index) {
                    self.line(json!({
                        "peer": conn.info.peer.to_string(),
                        "outcome": "handshake_failed",
                        "error": error,
                    }));
                    *self.outcomes.entry("handshake_failed").or_default() += 1;
                }
            }
        }
    }

    fn take(&mut self, index: usize) -> Option<Conn> {
        let conn = self.conns.get_mut(index)?.take()?;
        self.free.push(index);
        Some(conn)
    }

    /// Gives the connection to the Closer, with the echo it could not write yet.
    fn hand_over(&mut self, index: usize, error: Option<TlsError>) {
        let Some(conn) = self.take(index) else {
            return;
        };
        let handshaking = matches!(conn.phase, Phase::Handshaking);
        let unsent = conn.out[conn.sent..].to_vec();
        let result = self.closer.add_with(conn.stream, conn.info, |shutdown| {
            let shutdown = shutdown.with_unsent(unsent);
            match error {
                Some(e) if !handshaking => shutdown.after_error(e),
                _ => shutdown,
            }
        });
        if let Err(rejected) = result {
            // Only if the token range were exhausted: close it right away.
            log::warn!("{}: {rejected}", rejected.tag.peer);
        }
    }

    /// Handshake and idle deadlines.
    fn expire(&mut self, now: Instant) {
        while let Some((_, (index, generation))) = self.timers.pop_expired(now) {
            let Some(conn) = self.conns.get(index).and_then(Option::as_ref) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            match conn.phase {
                Phase::Handshaking => {
                    if let Some(conn) = self.take(index) {
                        self.line(json!({
                            "peer": conn.info.peer.to_string(),
                            "outcome": "handshake_failed",
                            "error": "handshake timed out",
                        }));
                        *self.outcomes.entry("handshake_failed").or_default() += 1;
                    }
                }
                Phase::Echoing => {
                    let Some(idle) = self.idle_timeout else {
                        continue;
                    };
                    let due = conn.last_activity + idle;
                    if due <= now {
                        self.hand_over(index, None);
                    } else {
                        self.timers.push(due, (index, generation));
                    }
                }
            }
        }
    }

    /// SIGINT or SIGTERM: stop accepting, hand every connection over.
    fn stop(&mut self, signal: i32) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(signal);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for index in 0..self.conns.len() {
            if self.conns[index].is_some() {
                self.hand_over(index, None);
            }
        }
    }

    fn emit_reports(&mut self) {
        let reports: Vec<(Info, Report)> = self.closer.reports().collect();
        for (info, report) in reports {
            *self.outcomes.entry(report.outcome.as_str()).or_default() += 1;
            if self.json {
                self.line(common::report_json(
                    vec![("peer", json!(info.peer.to_string()))],
                    &report,
                    vec![
                        ("bytes_in", json!(info.bytes_in)),
                        ("bytes_out", json!(info.bytes_out)),
                    ],
                ));
            } else {
                println!(
                    "{} in={} out={} {report}",
                    info.peer, info.bytes_in, info.bytes_out
                );
            }
        }
    }

    fn line(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        } else if let Some(peer) = value.get("peer") {
            println!("{} {}", peer.as_str().unwrap_or("?"), value["outcome"]);
        }
    }

    fn summary(&self) {
        let signal = match self.stopping {
            Some(SIGINT) => "SIGINT",
            Some(SIGTERM) => "SIGTERM",
            _ => "signal",
        };
        let total: u64 = self.outcomes.values().sum();
        println!(
            "{}",
            json!({ "summary": { "signal": signal, "connections": total, "outcomes": self.outcomes } })
        );
        io::stdout().flush().ok();
    }
}

impl Conn {
    /// Echo: write what is pending, read what arrived, until the socket would
    /// block either way. Stops reading while `MAX_PENDING` bytes wait for a client
    /// that does not read (a WRITE event resumes it).
    fn pump(&mut self, now: Instant) -> Next {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while self.sent < self.out.len() {
                match self.stream.ssl_write(&self.out[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        self.info.bytes_out += n as u64;
                    }
                    Err(e) if matches!(e.code(), ErrorCode::WANT_WRITE | ErrorCode::WANT_READ) => {
                        break
                    }
                    Err(e) => return Next::Close(Some(TlsError::from(&e))),
                }
            }
            if self.sent == self.out.len() {
                self.out.clear();
                self.sent = 0;
            }
            if self.closed_by_client {
                // Answer once every echoed byte is out.
                return if self.out.is_empty() {
                    Next::Close(None)
                } else {
                    Next::Keep
                };
            }
            if self.out.len() - self.sent >= MAX_PENDING {
                return Next::Keep;
            }
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => {
                    self.out.extend_from_slice(&buf[..n]);
                    self.info.bytes_in += n as u64;
                    self.last_activity = now;
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => self.closed_by_client = true,
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                    return Next::Keep
                }
                Err(e) => return Next::Close(Some(TlsError::from(&e))),
            }
        }
    }
}

fn describe(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => stack
            .errors()
            .last()
            .and_then(|err| err.reason())
            .unwrap_or("TLS error")
            .to_string(),
        None => e
            .io_error()
            .map_or_else(|| "connection closed".to_string(), |io| io.to_string()),
    }
}
