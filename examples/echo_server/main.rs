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
//! `--starttls` and `--stoptls` put plaintext before and after TLS on the same
//! connection: see `plain.rs`.
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

#[path = "../common/mod.rs"]
mod common;
mod conn;
mod options;
mod output;
mod plain;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use closenotify::{Closer, DeadlineQueue, Policy, Ready, TlsError};
use common::cli;
use common::line;
use conn::{Conn, Next, Phase};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{ErrorCode, NameType, Ssl, SslContext, SslStream};
use options::{parse_options, tls_context, Options, USAGE};
use output::{describe, Info};
use plain::{Link, Plain};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

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
pub(crate) const MAX_PENDING: usize = 1 << 20;

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
                Phase::StoppingTls | Phase::Plaintext => {
                    if let Some(next) = conn.leave_tls(now, ready, line_limit) {
                        break next;
                    }
                }
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
        let received = conn.plain.received();
        self.report_line(&conn.info, &report, Some(received));
    }
}
