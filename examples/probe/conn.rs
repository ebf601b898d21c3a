//! One connection to the server under test: TCP, STARTTLS if asked, the TLS
//! handshake in one version, and the bounded reads, writes and waits the
//! questions are made of. Every wait has a deadline; the socket is non-blocking
//! once the handshake is done.

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use closenotify::{Alert, Interest, Policy, Progress, Ready, Report, Shutdown, TlsError};
use openssl::ssl::{
    ErrorCode, HandshakeError, Ssl, SslContext, SslContextBuilder, SslMethod, SslSession,
    SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use socket2::{Domain, SockRef, Socket, Type};

use crate::common::starttls::{self, Dialect};

/// The receive buffer of a slow client (`Target::connect` with `small_window`):
/// the server's kernel keeps what does not fit.
pub const SMALL_WINDOW: usize = 4096;

/// How many bytes of what the server sends are kept to be shown (all are counted).
const KEEP: usize = 4096;

/// A protocol version the probe asks in, each on its own connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    V12,
    V13,
}

impl Tls {
    pub const BOTH: [Tls; 2] = [Tls::V12, Tls::V13];

    pub fn version(self) -> SslVersion {
        match self {
            Tls::V12 => SslVersion::TLS1_2,
            Tls::V13 => SslVersion::TLS1_3,
        }
    }

    /// OpenSSL's name, as in the report: `TLSv1.2`, `TLSv1.3`.
    pub fn name(self) -> &'static str {
        match self {
            Tls::V12 => "TLSv1.2",
            Tls::V13 => "TLSv1.3",
        }
    }
}

/// The server under test, and how to reach it.
pub struct Target {
    /// `HOST:PORT`, as given.
    pub addr: String,
    /// What it resolved to, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// The name sent in SNI (none for an IP address without `--servername`).
    pub servername: Option<String>,
    /// `--starttls`.
    pub starttls: Option<Dialect>,
    /// The bound of connecting, STARTTLS, the handshake and every answer.
    pub timeout: Duration,
    /// TCP connections opened so far.
    pub connections: Cell<usize>,
}

/// Why a connection could not be used.
#[derive(Clone, Debug)]
pub enum Failure {
    /// No TCP connection: nothing else can be asked.
    Unreachable(String),
    /// TCP, but the STARTTLS exchange failed.
    StartTls(String),
    /// The TLS handshake failed; `alert` is the one the server sent, if any.
    Handshake {
        alert: Option<Alert>,
        message: String,
    },
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::StartTls(m) => m,
            Failure::Handshake { message, .. } => message,
        }
    }
}

/// An established TLS connection.
pub struct Conn {
    pub stream: SslStream<TcpStream>,
    /// When the handshake finished.
    pub ready_at: Instant,
    /// How long the TCP connection took: a round trip, about.
    pub rtt: Duration,
    /// The last session the server gave us (TLS 1.2: at the handshake; TLS 1.3:
    /// its last ticket, once read).
    session: Arc<Mutex<Option<SslSession>>>,
    /// A write stopped half way at its deadline: the bytes of that call, handed to
    /// the shutdown (`Shutdown::with_unsent`) so that it can finish it first.
    unsent: Option<Vec<u8>>,
}

/// How the server ended what it sent, as our reads saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Its close_notify.
    CloseNotify,
    /// A FIN without close_notify.
    Fin,
    /// A transport error: an RST (`ECONNRESET`), or another errno.
    Rst(i32),
    /// A fatal alert.
    Alert(Alert),
    /// Our side rejected what arrived (the reason).
    Rejected(&'static str),
    /// Nothing ended the connection before the deadline.
    Open,
}

/// An `End`, when it was seen, and the error behind it for `Shutdown::after_error`.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub end: End,
    pub at: Instant,
    pub error: Option<TlsError>,
}

/// Why a write did not finish.
pub struct SendError {
    pub text: String,
    /// The server's RST stopped it.
    pub reset: bool,
}

/// What the server sent: the first `KEEP` bytes, and how many in all.
#[derive(Default)]
pub struct Received {
    pub head: Vec<u8>,
    pub bytes: u64,
}

impl Received {
    /// The first line, for messages (`HTTP/1.1 200 OK`).
    pub fn first_line(&self) -> Option<String> {
        let line = self.head.split(|&b| b == b'\n').next()?;
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        (!text.is_empty()).then_some(text)
    }
}

/// What the transport did after the server's close_notify, while we sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Fin,
    Rst(i32),
    /// More bytes after close_notify (they can only be garbage).
    Bytes,
    /// Nothing before the deadline.
    Open,
}

impl Target {
    /// A connection in `tls`, offering `session`. `small_window`: a receive
    /// buffer of `SMALL_WINDOW` bytes, set before the connection exists.
    pub fn connect(
        &self,
        tls: Tls,
        session: Option<&SslSession>,
        small_window: bool,
    ) -> Result<Conn, Failure> {
        let started = Instant::now();
        let mut tcp = self.open_tcp(small_window)?;
        let rtt = started.elapsed();
        if let Some(dialect) = self.starttls {
            starttls::client(&mut tcp, dialect, &self.addr).map_err(Failure::StartTls)?;
        }
        let slot = Arc::new(Mutex::new(None));
        let ctx = context(tls, Arc::clone(&slot)).map_err(|e| handshake_error(&e))?;
        let mut ssl = Ssl::new(&ctx).map_err(|e| handshake_error(&e))?;
        if let Some(name) = &self.servername {
            ssl.set_hostname(name).map_err(|e| handshake_error(&e))?;
        }
        if let Some(session) = session {
            // SAFETY: a session from this program's client contexts, all alike.
            unsafe { ssl.set_session(session) }.map_err(|e| handshake_error(&e))?;
        }
        match ssl.connect(tcp) {
            Ok(stream) => {
                // Our own reads and writes wait with poll() and a deadline.
                stream
                    .get_ref()
                    .set_nonblocking(true)
                    .map_err(|e| Failure::Unreachable(e.to_string()))?;
                Ok(Conn {
                    stream,
                    ready_at: Instant::now(),
                    rtt,
                    session: slot,
                    unsent: None,
                })
            }
            Err(HandshakeError::SetupFailure(e)) => Err(handshake_error(&e)),
            Err(HandshakeError::Failure(mid)) | Err(HandshakeError::WouldBlock(mid)) => {
                Err(self.handshake_failure(mid.error()))
            }
        }
    }

    /// TCP to the first address that answers, its waits bounded by `timeout`.
    fn open_tcp(&self, small_window: bool) -> Result<TcpStream, Failure> {
        let mut last = format!("no address for {}", self.addr);
        for addr in &self.addrs {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)
                .map_err(|e| Failure::Unreachable(e.to_string()))?;
            if small_window {
                socket.set_recv_buffer_size(SMALL_WINDOW).ok();
            }
            match socket.connect_timeout(&(*addr).into(), self.timeout) {
                Ok(()) => {
                    self.connections.set(self.connections.get() + 1);
                    let tcp = TcpStream::from(socket);
                    tcp.set_nodelay(true).ok();
                    tcp.set_read_timeout(Some(self.timeout)).ok();
                    tcp.set_write_timeout(Some(self.timeout)).ok();
                    return Ok(tcp);
                }
                Err(e) => last = format!("cannot connect to {} ({addr}): {e}", self.addr),
            }
        }
        Err(Failure::Unreachable(last))
    }

    /// Says why the handshake failed, naming the server's alert.
    fn handshake_failure(&self, error: &openssl::ssl::Error) -> Failure {
        let hint = match self.starttls {
            None => " (if it expects STARTTLS first, use --starttls smtp|imap|ftp)",
            Some(_) => "",
        };
        let (alert, why) = match TlsError::from(error) {
            TlsError::PeerAlert(code) => {
                let alert = Alert::from_code(code);
                (Some(alert), format!("the server sent {alert}"))
            }
            TlsError::Eof => (None, format!("the server closed the connection{hint}")),
            TlsError::Os(errno) if is_timeout(errno) => {
                (None, format!("no answer within {:?}", self.timeout))
            }
            TlsError::Os(errno) => (None, io::Error::from_raw_os_error(errno).to_string()),
            TlsError::Protocol { detail, .. } if detail == "wrong version number" => (
                None,
                format!("the server does not answer in TLS ({detail}){hint}"),
            ),
            TlsError::Protocol { detail, .. } => (None, format!("our side rejected it: {detail}")),
            TlsError::WantRead | TlsError::WantWrite => {
                (None, format!("no answer within {:?}", self.timeout))
            }
            other => (None, format!("{other:?}")),
        };
        Failure::Handshake {
            alert,
            message: format!("handshake failed: {why}"),
        }
    }
}

/// A client context for one version: no certificate check (the probe asks how
/// connections end, not whom it talks to), and a callback that keeps the last
/// session the server gives.
fn context(
    tls: Tls,
    slot: Arc<Mutex<Option<SslSession>>>,
) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut ctx = SslContextBuilder::new(SslMethod::tls_client())?;
    ctx.set_verify(SslVerifyMode::NONE);
    ctx.set_min_proto_version(Some(tls.version()))?;
    ctx.set_max_proto_version(Some(tls.version()))?;
    ctx.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    ctx.set_new_session_callback(move |_, session| {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
    });
    Ok(ctx.build())
}

fn handshake_error(e: &dyn std::fmt::Display) -> Failure {
    Failure::Handshake {
        alert: None,
        message: format!("TLS setup failed: {e}"),
    }
}

fn is_timeout(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EWOULDBLOCK || errno == libc::ETIMEDOUT
}

impl Conn {
    fn fd(&self) -> RawFd {
        self.stream.get_ref().as_raw_fd()
    }

    /// The last session the server gave, serialized now: our shutdown may mark
    /// the live one not resumable, and the probe offers it anyway.
    pub fn session_copy(&self) -> Option<SslSession> {
        let slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let der = slot.as_ref()?.to_der().ok()?;
        SslSession::from_der(&der).ok()
    }

    /// Whether the server has given a session yet.
    pub fn has_session(&self) -> bool {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Reads until the server has given a session (a TLS 1.3 server sends its
    /// tickets after the handshake), then until the socket is `quiet` for a
    /// moment (the next tickets), at the latest until `deadline`. Nothing is left
    /// unread, so that our close sends a FIN, not an RST.
    pub fn wait_for_session(&mut self, deadline: Instant, quiet: Duration) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.ssl_read(&mut buf) {
                Ok(_) => {}
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    let until = match self.has_session() {
                        true => deadline.min(Instant::now() + quiet),
                        false => deadline,
                    };
                    if !poll(self.fd(), libc::POLLIN, until) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Runs `f` with the socket corked: what it writes leaves in as few packets
    /// as possible, when `f` returns (Linux's `TCP_CORK`).
    pub fn corked<T>(&mut self, f: impl FnOnce(&mut Conn) -> T) -> T {
        let sock = SockRef::from(self.stream.get_ref());
        sock.set_tcp_cork(true).ok();
        let result = f(self);
        SockRef::from(self.stream.get_ref())
            .set_tcp_cork(false)
            .ok();
        result
    }

    /// Writes all of `data` by `deadline`. A write the server does not take in
    /// time is kept for the shutdown, which finishes it before our close_notify.
    pub fn write_all(&mut self, data: &[u8], deadline: Instant) -> Result<(), SendError> {
        let mut rest = data;
        while !rest.is_empty() {
            match self.stream.ssl_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.code() == ErrorCode::WANT_WRITE || e.code() == ErrorCode::WANT_READ => {
                    let interest = match e.code() {
                        ErrorCode::WANT_WRITE => libc::POLLOUT,
                        _ => libc::POLLIN,
                    };
                    if !poll(self.fd(), interest, deadline) {
                        self.unsent = Some(rest.to_vec());
                        return Err(SendError {
                            text: format!(
                                "the server did not take {} of our {} bytes in time",
                                rest.len(),
                                data.len()
                            ),
                            reset: false,
                        });
                    }
                }
                Err(e) => {
                    return Err(match TlsError::from(&e) {
                        TlsError::Os(errno @ (libc::EPIPE | libc::ECONNRESET)) => SendError {
                            text: format!(
                                "{} while we were sending",
                                crate::questions::errno(Some(errno))
                            ),
                            reset: true,
                        },
                        other => SendError {
                            text: format!("cannot send: {other:?}"),
                            reset: false,
                        },
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads (into `got`) until the server ends the connection or `deadline`.
    pub fn read_until_end(&mut self, deadline: Instant, got: &mut Received) -> Ended {
        let mut buf = [0u8; 16384];
        loop {
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => {
                    let keep = n.min(KEEP.saturating_sub(got.head.len()));
                    got.head.extend_from_slice(&buf[..keep]);
                    got.bytes += n as u64;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                    let interest = match e.code() {
                        ErrorCode::WANT_WRITE => libc::POLLOUT,
                        _ => libc::POLLIN,
                    };
                    if !poll(self.fd(), interest, deadline) {
                        return self.ended(End::Open, None);
                    }
                }
                Err(e) => {
                    let error = TlsError::from(&e);
                    let end = match error {
                        TlsError::CloseNotify => End::CloseNotify,
                        TlsError::Eof => End::Fin,
                        TlsError::Os(errno) => End::Rst(errno),
                        TlsError::PeerAlert(code) => End::Alert(Alert::from_code(code)),
                        TlsError::Protocol { detail, .. } => End::Rejected(detail),
                        _ => End::Rejected("unexpected OpenSSL answer"),
                    };
                    return self.ended(end, Some(error));
                }
            }
        }
    }

    fn ended(&self, end: End, error: Option<TlsError>) -> Ended {
        Ended {
            end,
            at: Instant::now(),
            error,
        }
    }

    /// After the server's close_notify, and while we send nothing: its FIN, an
    /// RST, or nothing by `deadline`. Peeks: what comes is left for OpenSSL.
    pub fn transport_after(&self, deadline: Instant) -> (Transport, Instant) {
        let mut byte = [0u8; 1];
        loop {
            if !poll(self.fd(), libc::POLLIN, deadline) {
                return (Transport::Open, Instant::now());
            }
            // SAFETY: a one-byte buffer; MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    byte.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            let seen = match n {
                0 => Transport::Fin,
                n if n > 0 => Transport::Bytes,
                _ => match io::Error::last_os_error().raw_os_error() {
                    Some(e) if is_timeout(e) || e == libc::EINTR => continue,
                    Some(e) => Transport::Rst(e),
                    None => Transport::Rst(libc::EIO),
                },
            };
            return (seen, Instant::now());
        }
    }

    /// Whether an RST arrives within `window`: the socket's pending error,
    /// checked every few milliseconds (once both sides have sent their FIN,
    /// poll() reports a hang-up whatever happens next, so it cannot wait for
    /// the RST alone).
    pub fn reset_within(&self, window: Duration) -> Option<i32> {
        let deadline = Instant::now() + window;
        loop {
            if let Ok(Some(e)) = SockRef::from(self.stream.get_ref()).take_error() {
                return Some(e.raw_os_error().unwrap_or(libc::EIO));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Our shutdown under `policy`, driven with poll(): after a failed read,
    /// `prior` is its error, which the report then names (`truncated`, `reset`,
    /// `peer_alert`) instead of sending anything.
    pub fn shutdown(&mut self, policy: &Policy, prior: Option<TlsError>) -> Report {
        let fd = self.fd();
        let mut shutdown = Shutdown::new(&mut self.stream, policy);
        if let Some(error) = prior {
            shutdown = shutdown.after_error(error);
        }
        if let Some(unsent) = self.unsent.take() {
            shutdown = shutdown.with_unsent(unsent);
        }
        let mut ready = Ready::NONE;
        loop {
            match shutdown.poll(Instant::now(), ready) {
                Progress::Done(report) => return report,
                Progress::Wait(wait) => {
                    let deadline = Instant::now() + wait.timeout(Instant::now());
                    let events = match wait.interest {
                        Interest::Read => libc::POLLIN,
                        Interest::Write => libc::POLLOUT,
                        _ => {
                            // Only time (the linger stage, which our policies skip).
                            std::thread::sleep(wait.timeout(Instant::now()));
                            ready = Ready::NONE;
                            continue;
                        }
                    };
                    ready = match poll(fd, events, deadline) {
                        true => Ready::ALL,
                        false => Ready::NONE,
                    };
                }
            }
        }
    }
}

/// Waits until `fd` reports one of `events` (or an error or hang-up), at the
/// latest until `deadline`; false when the deadline passed.
pub fn poll(fd: RawFd, events: i16, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // Rounded up: a wait never ends before its deadline.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            1 => return true,
            0 if Instant::now() >= deadline => return false,
            _ => {} // EINTR, or woken a little early
        }
    }
}
