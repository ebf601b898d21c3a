//! A TLS echo server on one thread: mio, non-blocking handshakes, streaming echo,
//! and every connection ended by closenotify's `Closer` on the same poll. It can
//! also start TLS late (STARTTLS) and leave it again for plaintext (STOPTLS).
//!
//! ```text
//! cargo run --example echo_server -- --listen 127.0.0.1:4433 --json
//! ```
//!
//! Options (the command-line contract in the README): `--listen ADDR` (default
//! 127.0.0.1:4433, port 0 allowed), `--cert FILE --key FILE` (default: a
//! self-signed certificate for `localhost` made at start), `--mode
//! bidirectional|send-only|quiet`, `--flush-timeout-ms N`, `--peer-timeout-ms N`,
//! `--idle-timeout-ms N` (the server starts the shutdown after N ms without data
//! from a client; default off), `--starttls`, `--stoptls`, `--json`.
//!
//! `--starttls`: each connection begins in plaintext. The server sends
//! `220 closenotify echo ready`, waits for the line `STARTTLS` (read one byte at a
//! time: the bytes after its newline are the ClientHello), answers
//! `220 go ahead`, and the TLS handshake follows on the same socket. Any other
//! line is answered with `502 ...` and the connection is closed.
//!
//! `--stoptls`: a connection whose TLS ends in order (the client's close_notify
//! after the echo, the idle timeout, SIGINT/SIGTERM) leaves TLS with a
//! `Mode::StopTls` shutdown instead of being closed: both close_notify alerts,
//! no TCP half-close. The Closer refuses that mode (it closes what it is given),
//! so the server drives that `Shutdown` itself, on the same poll. After it, in
//! plaintext on the same connection, the server sends `plain: bye` and reads one
//! line from the client, then closes. Connections that fail still go to the
//! Closer under `--mode`.
//!
//! The first line on stdout is `{"listening":"ADDR"}`. With `--json`, one line per
//! finished connection follows (without it, one human-readable line): `peer`,
//! `sni` (the name the client sent, or null), the report, `bytes_in` and
//! `bytes_out`; with `--stoptls` also `transport_reusable` and
//! `plaintext_received` (the client's line after STOPTLS, or null). A failed
//! handshake is `"outcome":"handshake_failed"`, a failed STARTTLS
//! `"outcome":"starttls_failed"`, each with `"error"`. SIGINT or SIGTERM shuts
//! every open connection down under the policy, prints a summary line and exits
//! 0. Usage errors exit 2; a bad certificate or an address in use, 1.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use closenotify::{
    Closer, DeadlineQueue, Mode, Policy, Progress, Ready, Report, Shutdown, Stream, TlsError,
};
use common::cli::{self, Args};
use common::line::{self, LineRead};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{
    ErrorCode, NameType, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode,
    SslSessionCacheMode, SslStream, SslVersion,
};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

const USAGE: &str = "usage: echo_server [--listen ADDR] [--cert FILE --key FILE] \
[--mode bidirectional|send-only|quiet] [--flush-timeout-ms N] [--peer-timeout-ms N] \
[--idle-timeout-ms N] [--starttls] [--stoptls] [--json]";

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// Connections being handshaken or echoed: tokens CONNS.. below CLOSER.
const CONNS: usize = 2;
/// The Closer's tokens, on the same poll.
const CLOSER: usize = 1 << 40;
/// A client must finish its handshake (and, with `--starttls`, send its command
/// first) within this, or the idle timeout if shorter: a client that sends
/// nothing holds a socket only this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's plaintext line after STOPTLS must come within this (or the idle
/// timeout if shorter).
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Echo bytes buffered for a client that does not read before the server stops
/// reading from it: a huge burst costs the server at most this much.
const MAX_PENDING: usize = 1 << 20;

struct Options {
    listen: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    policy: Policy,
    idle_timeout: Option<Duration>,
    starttls: bool,
    /// `--stoptls`: the policy of the STOPTLS shutdowns.
    stoptls: Option<Policy>,
    json: bool,
}

fn parse_options() -> Result<Options, String> {
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

/// What the JSON line says about a connection besides the report.
struct Info {
    peer: SocketAddr,
    /// The name the client sent in SNI.
    sni: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// `--starttls`: plaintext. The greeting goes out, the command comes in, the
    /// go-ahead goes out (`Conn::plain`).
    StartTls,
    Handshaking,
    Echoing,
    /// `--stoptls`: the STOPTLS shutdown runs (`Link::Stopping`).
    StoppingTls,
    /// After a successful STOPTLS: our line goes out, the client's comes in.
    Plaintext,
}

/// The connection's stream, and who owns it.
enum Link {
    /// Ours: TLS, or the plaintext before STARTTLS on its TCP stream (the
    /// `SslStream` exists from the start; nothing of TLS has happened yet).
    Tls(Stream),
    /// A STOPTLS shutdown owns the stream. It keeps it after the report: the
    /// plaintext that follows goes over the same TCP stream, with the same poll
    /// registration. (`closenotify::into_transport` would hand back a duplicate
    /// of the socket, but it takes the `SslStream` by value, and a `Shutdown`
    /// does not give back the stream it owns.)
    Stopping(Box<Shutdown<Stream>>),
    /// Only while moving the stream from one to the other.
    Moving,
}

impl Link {
    fn stream(&mut self) -> &mut Stream {
        match self {
            Link::Tls(stream) => stream,
            Link::Stopping(shutdown) => shutdown.get_mut(),
            Link::Moving => unreachable!("the stream is being moved"),
        }
    }

    fn tcp(&mut self) -> &mut TcpStream {
        self.stream().get_mut()
    }
}

/// Plaintext around TLS: a line to send, and the line coming in.
#[derive(Default)]
struct Plain {
    out: &'static [u8],
    sent: usize,
    line: Vec<u8>,
    /// The line is complete (STARTTLS: the command was accepted).
    done: bool,
}

impl Plain {
    fn sending(out: &'static [u8]) -> Plain {
        Plain {
            out,
            ..Plain::default()
        }
    }

    /// Writes what is left of `out`: true once it is all sent.
    fn flush(&mut self, tcp: &mut TcpStream) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match tcp.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

struct Conn {
    link: Link,
    info: Info,
    phase: Phase,
    /// Echo not yet written; the write in progress always starts at `out[sent]`.
    out: Vec<u8>,
    sent: usize,
    plain: Plain,
    /// The client's close_notify arrived.
    closed_by_client: bool,
    last_activity: Instant,
    generation: u64,
    /// The report of the STOPTLS shutdown.
    report: Option<Report>,
    /// When the STOPTLS shutdown or the plaintext line needs a wake-up, and the
    /// last such deadline put in the server's timer queue.
    wake: Option<Instant>,
    wake_queued: Option<Instant>,
}

/// What to do with a connection after handling it.
enum Next {
    Keep,
    /// Hand it to the Closer (or, with `--stoptls`, leave TLS): client's
    /// close_notify answered after the echo, idle timeout, or the failure the
    /// server's own read or write saw.
    Close(Option<TlsError>),
    /// The handshake failed: one JSON line, then the socket is closed.
    HandshakeFailed(String),
    /// STARTTLS failed (no command, another command, the client left): one JSON
    /// line, then the socket is closed.
    StartTlsFailed(String),
    /// STOPTLS and what follows it are over: one JSON line, then the socket is
    /// closed.
    Finished,
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
    /// Handshake, idle, STOPTLS and plaintext deadlines, (slot, generation);
    /// checked lazily.
    timers: DeadlineQueue<(usize, u64)>,
    idle_timeout: Option<Duration>,
    starttls: bool,
    /// `--stoptls`: the policy of the STOPTLS shutdowns.
    stoptls: Option<Policy>,
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
            starttls: options.starttls,
            stoptls: options.stoptls,
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
                            self.stop(sig, now);
                        }
                    }
                    _ if self.closer.handle_event(event, now) => {}
                    Token(t) => self.handle(t - CONNS, now, Ready::from(event)),
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
        let (phase, plain) = match self.starttls {
            true => (Phase::StartTls, Plain::sending(line::GREETING)),
            false => (Phase::Handshaking, Plain::default()),
        };
        self.conns[index] = Some(Conn {
            link: Link::Tls(stream),
            info: Info {
                peer,
                sni: None,
                bytes_in: 0,
                bytes_out: 0,
            },
            phase,
            out: Vec::new(),
            sent: 0,
            plain,
            closed_by_client: false,
            last_activity: now,
            generation: self.next_generation,
            report: None,
            wake: None,
            wake_queued: None,
        });
        let limit = self.within(HANDSHAKE_TIMEOUT);
        self.timers.push(now + limit, (index, self.next_generation));
        self.handle(index, now, Ready::NONE);
        Ok(())
    }

    /// `limit`, or the idle timeout if it is shorter.
    fn within(&self, limit: Duration) -> Duration {
        self.idle_timeout.map_or(limit, |i| i.min(limit))
    }

    /// Readiness on a connection (or a deadline, with `Ready::NONE`): make all
    /// the progress possible.
    fn handle(&mut self, index: usize, now: Instant, ready: Ready) {
        let line_limit = self.within(LINE_TIMEOUT);
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return; // an event for a connection handed over meanwhile
        };
        let next = loop {
            match conn.phase {
                Phase::StartTls => match conn.start_tls() {
                    Ok(true) => conn.phase = Phase::Handshaking,
                    Ok(false) => break Next::Keep,
                    Err(e) => break Next::StartTlsFailed(e),
                },
                Phase::Handshaking => match conn.link.stream().accept() {
                    Ok(()) => {
                        conn.phase = Phase::Echoing;
                        conn.last_activity = now;
                        let ssl = conn.link.stream().ssl();
                        conn.info.sni = ssl.servername(NameType::HOST_NAME).map(String::from);
                        if let Some(idle) = self.idle_timeout {
                            self.timers.push(now + idle, (index, conn.generation));
                        }
                    }
                    Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                        break Next::Keep
                    }
                    Err(e) => break Next::HandshakeFailed(describe(&e)),
                },
                // The client's close_notify: `hand_over` answers it with a STOPTLS
                // under --stoptls.
                Phase::Echoing => break conn.pump(now),
                Phase::StoppingTls => {
                    let Link::Stopping(shutdown) = &mut conn.link else {
                        unreachable!("a STOPTLS without its shutdown")
                    };
                    match shutdown.poll(now, ready) {
                        Progress::Wait(wait) => {
                            conn.wake = Some(wait.deadline);
                            break Next::Keep;
                        }
                        Progress::Done(report) => {
                            conn.report = Some(report);
                            if !report.transport_reusable {
                                break Next::Finished;
                            }
                            conn.phase = Phase::Plaintext;
                            conn.plain = Plain::sending(line::SERVER_BYE);
                            conn.wake = Some(now + line_limit);
                        }
                    }
                }
                Phase::Plaintext => match conn.plaintext() {
                    Ok(false) => break Next::Keep,
                    Ok(true) => break Next::Finished,
                    Err(e) => {
                        log::warn!("{}: plaintext after STOPTLS: {e}", conn.info.peer);
                        break Next::Finished;
                    }
                },
            }
        };
        if let (Some(wake), Next::Keep) = (conn.wake, &next) {
            if conn.wake_queued != Some(wake) {
                conn.wake_queued = Some(wake);
                self.timers.push(wake, (index, conn.generation));
            }
        }
        match next {
            Next::Keep => {}
            Next::Close(error) => self.hand_over(index, error, now),
            Next::HandshakeFailed(error) => self.failed(index, "handshake_failed", error),
            Next::StartTlsFailed(error) => self.failed(index, "starttls_failed", error),
            Next::Finished => self.finish(index),
        }
    }

    fn take(&mut self, index: usize) -> Option<Conn> {
        let conn = self.conns.get_mut(index)?.take()?;
        self.free.push(index);
        Some(conn)
    }

    /// A connection that never reached TLS data: one line, and the socket closed.
    fn failed(&mut self, index: usize, outcome: &'static str, error: String) {
        if let Some(conn) = self.take(index) {
            self.line(json!({
                "peer": conn.info.peer.to_string(),
                "outcome": outcome,
                "error": error,
            }));
            *self.outcomes.entry(outcome).or_default() += 1;
        }
    }

    /// Gives the connection to the Closer, with the echo it could not write yet;
    /// with `--stoptls`, a connection in order leaves TLS instead. A connection
    /// already leaving TLS finishes on its own.
    fn hand_over(&mut self, index: usize, error: Option<TlsError>, now: Instant) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        match (conn.phase, &self.stoptls, &error) {
            (Phase::StoppingTls | Phase::Plaintext, _, _) => return,
            (Phase::Echoing, Some(policy), None) => {
                conn.begin_stop_tls(policy);
                return self.handle(index, now, Ready::NONE);
            }
            _ => {}
        }
        let Some(conn) = self.take(index) else {
            return;
        };
        let Link::Tls(stream) = conn.link else {
            unreachable!("only a STOPTLS owns the stream elsewhere")
        };
        let handshaking = matches!(conn.phase, Phase::StartTls | Phase::Handshaking);
        let unsent = conn.out[conn.sent..].to_vec();
        let result = self.closer.add_with(stream, conn.info, |shutdown| {
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

    /// Handshake, idle, STOPTLS and plaintext deadlines.
    fn expire(&mut self, now: Instant) {
        while let Some((_, (index, generation))) = self.timers.pop_expired(now) {
            let Some(conn) = self.conns.get(index).and_then(Option::as_ref) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            match conn.phase {
                Phase::StartTls => {
                    let error = "no STARTTLS command in time".to_string();
                    self.failed(index, "starttls_failed", error);
                }
                Phase::Handshaking => {
                    let error = "handshake timed out".to_string();
                    self.failed(index, "handshake_failed", error);
                }
                Phase::Echoing => {
                    let Some(idle) = self.idle_timeout else {
                        continue;
                    };
                    let due = conn.last_activity + idle;
                    if due <= now {
                        self.hand_over(index, None, now);
                    } else {
                        self.timers.push(due, (index, generation));
                    }
                }
                // The machine knows its own deadline: a wake-up before it is a no-op.
                Phase::StoppingTls => self.handle(index, now, Ready::NONE),
                Phase::Plaintext => {
                    if conn.wake.is_some_and(|w| w <= now) {
                        log::warn!(
                            "{}: no plaintext line after STOPTLS in time",
                            conn.info.peer
                        );
                        self.finish(index);
                    }
                }
            }
        }
    }

    /// SIGINT or SIGTERM: stop accepting, hand every connection over.
    fn stop(&mut self, signal: i32, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(signal);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for index in 0..self.conns.len() {
            if self.conns[index].is_some() {
                self.hand_over(index, None, now);
            }
        }
    }

    /// A connection that left TLS (or failed to): its line, and the socket closed.
    fn finish(&mut self, index: usize) {
        let Some(conn) = self.take(index) else {
            return;
        };
        let Some(report) = conn.report else {
            return;
        };
        let received = conn.plain.done.then_some(&conn.plain.line[..]);
        self.report_line(&conn.info, &report, Some(received));
    }

    fn emit_reports(&mut self) {
        let reports: Vec<(Info, Report)> = self.closer.reports().collect();
        for (info, report) in reports {
            self.report_line(&info, &report, None);
        }
    }

    /// One finished connection. `plaintext` is what came after a STOPTLS (`None`
    /// when the connection went to the Closer).
    fn report_line(&mut self, info: &Info, report: &Report, plaintext: Option<Option<&[u8]>>) {
        *self.outcomes.entry(report.outcome.as_str()).or_default() += 1;
        let received = plaintext
            .flatten()
            .map(|l| String::from_utf8_lossy(l).into_owned());
        if self.json {
            let mut v = common::report_json(
                vec![
                    ("peer", json!(info.peer.to_string())),
                    ("sni", json!(info.sni)),
                ],
                report,
                vec![
                    ("bytes_in", json!(info.bytes_in)),
                    ("bytes_out", json!(info.bytes_out)),
                ],
            );
            if let (true, Some(fields)) = (self.stoptls.is_some(), v.as_object_mut()) {
                fields.insert(
                    "transport_reusable".into(),
                    json!(report.transport_reusable),
                );
                fields.insert("plaintext_received".into(), json!(received));
            }
            println!("{v}");
        } else {
            let after = match (self.stoptls.is_some(), &received) {
                (false, _) => String::new(),
                (true, Some(l)) => format!(" then plaintext {l:?}"),
                (true, None) => " no plaintext".to_string(),
            };
            println!(
                "{} sni={} in={} out={} {report}{after}",
                info.peer,
                info.sni.as_deref().unwrap_or("-"),
                info.bytes_in,
                info.bytes_out
            );
        }
    }

    fn line(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        } else if let Some(peer) = value.get("peer") {
            println!(
                "{} {} {}",
                peer.as_str().unwrap_or("?"),
                value["outcome"],
                value["error"]
            );
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
    /// `--starttls`: sends the greeting, reads the command one byte at a time
    /// (never past its newline: the ClientHello follows), sends the go-ahead.
    /// `Ok(true)` once the go-ahead is out and TLS can start.
    fn start_tls(&mut self) -> Result<bool, String> {
        let tcp = self.link.tcp();
        loop {
            match self.plain.flush(tcp) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err(format!("cannot send in plaintext: {e}")),
            }
            if self.plain.done {
                return Ok(true);
            }
            match line::read_line_into(tcp, &mut self.plain.line) {
                Ok(LineRead::Pending) => return Ok(false),
                Ok(LineRead::Complete) => {}
                Ok(LineRead::Eof) if self.plain.line.is_empty() => {
                    return Err("the client left before STARTTLS".into())
                }
                Ok(LineRead::Eof) => {
                    let got = line::describe(&self.plain.line);
                    return Err(format!("the client left after {got}, before STARTTLS"));
                }
                Err(e) => {
                    let got = line::describe(&self.plain.line);
                    return Err(format!("no STARTTLS command: {e} (got {got})"));
                }
            }
            if !line::show(&self.plain.line).eq_ignore_ascii_case("STARTTLS") {
                // Best effort: the client learns why, then the connection closes.
                let _ = tcp.write(line::NOT_STARTTLS);
                let got = line::describe(&self.plain.line);
                return Err(format!("expected STARTTLS, got {got}"));
            }
            self.plain = Plain::sending(line::GO_AHEAD);
            self.plain.done = true;
        }
    }

    /// `--stoptls`: hands the stream to a STOPTLS shutdown, with the echo not yet
    /// written (it goes out before close_notify).
    fn begin_stop_tls(&mut self, policy: &Policy) {
        let Link::Tls(stream) = std::mem::replace(&mut self.link, Link::Moving) else {
            unreachable!("the stream is ours until the STOPTLS")
        };
        let unsent = self.out.split_off(self.sent);
        self.out.clear();
        self.sent = 0;
        self.link = Link::Stopping(Box::new(Shutdown::new(stream, policy).with_unsent(unsent)));
        self.phase = Phase::StoppingTls;
    }

    /// After STOPTLS: sends our line, reads the client's. `Ok(true)` once both are
    /// done; an error when the client leaves first.
    fn plaintext(&mut self) -> io::Result<bool> {
        let tcp = self.link.tcp();
        if !self.plain.flush(tcp)? {
            return Ok(false);
        }
        match line::read_line_into(tcp, &mut self.plain.line)? {
            LineRead::Pending => Ok(false),
            LineRead::Complete => {
                self.plain.done = true;
                Ok(true)
            }
            LineRead::Eof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before a full line",
            )),
        }
    }

    /// Echo: write what is pending, read what arrived, until the socket would
    /// block either way. Stops reading while `MAX_PENDING` bytes wait for a client
    /// that does not read (a WRITE event resumes it).
    fn pump(&mut self, now: Instant) -> Next {
        let mut buf = [0u8; 16 * 1024];
        let stream = self.link.stream();
        loop {
            while self.sent < self.out.len() {
                match stream.ssl_write(&self.out[self.sent..]) {
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
            match stream.ssl_read(&mut buf) {
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
