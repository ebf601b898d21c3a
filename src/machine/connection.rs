//! What the state machine needs from a TLS connection: [`Connection`], the
//! [`Status`] it starts from, and OpenSSL's answers classified ([`TlsError`]).

use std::io;

use crate::report::{AlertLog, Report, TlsVersion};

/// What a successful `SSL_shutdown` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownAnswer {
    /// 0: our close_notify is sent; the peer's has not arrived.
    Sent,
    /// 1: both close_notify alerts are through.
    Received,
}

/// What an OpenSSL call answered when it did not simply succeed, already classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// `SSL_ERROR_WANT_READ`: retry once the socket is readable.
    WantRead,
    /// `SSL_ERROR_WANT_WRITE`: retry once the socket is writable.
    WantWrite,
    /// `SSL_ERROR_ZERO_RETURN`: the peer's close_notify arrived.
    CloseNotify,
    /// EOF without close_notify (OpenSSL 1.1.1: `SSL_ERROR_SYSCALL` with errno 0;
    /// 3.x: `SSL_R_UNEXPECTED_EOF_WHILE_READING`).
    Eof,
    /// A transport error with its errno.
    Os(i32),
    /// The peer sent this fatal alert.
    PeerAlert(u8),
    /// Our side rejected what arrived.
    Protocol {
        /// The alert our side raised, when known.
        alert: Option<u8>,
        /// OpenSSL's reason text.
        detail: &'static str,
    },
    /// The connection cannot carry a close_notify (for example an application write
    /// was left half-finished: OpenSSL would fail with "bad write retry").
    Unusable {
        /// Why.
        detail: &'static str,
    },
}

/// The state of a connection before the shutdown begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The handshake finished and no fatal error happened: `SSL_shutdown` is allowed.
    pub usable: bool,
    /// Our close_notify was already queued (`SSL_SENT_SHUTDOWN`): the application
    /// called `SSL_shutdown`, or an earlier shutdown was dropped midway. The
    /// shutdown then finishes writing it with
    /// [`flush_close_notify`](Connection::flush_close_notify) and never calls
    /// `SSL_shutdown` to read.
    pub sent: bool,
    /// The peer's close_notify already arrived (`SSL_RECEIVED_SHUTDOWN`).
    pub received: bool,
    /// The negotiated version, if the handshake finished.
    pub version: Option<TlsVersion>,
}

/// What the state machine needs from a TLS connection.
///
/// Implemented for `openssl::ssl::SslStream<S>` (any `S: Read + Write + AsFd`)
/// and for [`RawConnection`](crate::RawConnection) (a raw `SSL*` with its socket),
/// and for `&mut` of either. Each method is one OpenSSL or socket call; the
/// implementation classifies OpenSSL's answers into [`TlsError`] and keeps the
/// error queue clean. The state machine uses nothing else of the connection, so a
/// scripted implementation drives it in tests.
pub trait Connection {
    /// The state before the shutdown begins.
    fn status(&mut self) -> Status;
    /// Called once before the first `shutdown`/`read_discard` call. The OpenSSL
    /// implementations suspend `SSL_OP_IGNORE_UNEXPECTED_EOF` here, so that a
    /// truncation is never mistaken for close_notify, and put the socket in
    /// non-blocking mode, so that no call blocks past a deadline.
    fn begin(&mut self) {}
    /// Called once, after `begin`, by a [`Mode::StopTls`](crate::Mode::StopTls)
    /// shutdown: the transport will carry plaintext afterwards, so nothing past
    /// the peer's close_notify may be read. The OpenSSL implementations turn
    /// read-ahead off (and back on in `end`). Returns whether bytes may already
    /// be buffered past what the shutdown will read (read-ahead was on and
    /// OpenSSL holds unprocessed bytes): the transport cannot be handed back
    /// whole then.
    fn keep_transport(&mut self) -> bool;
    /// Called once, after `begin`, by a shutdown that ends TLS on the
    /// connection (every mode but STOPTLS): nothing past the peer's close_notify
    /// is for anyone, so the OpenSSL implementations turn read-ahead on (and back
    /// off in `end`), and the peer's close_notify takes one `recv` instead of two
    /// (header, then body). Bytes read ahead stay in OpenSSL's buffer for the
    /// application's own later reads.
    fn read_ahead(&mut self) {}
    /// Called once our close_notify has been flushed, before the shutdown reads
    /// for the peer's: from now on nothing may reach the peer. The OpenSSL
    /// implementations swap the write BIO for a sink, so that the answer OpenSSL
    /// writes to a TLS 1.3 KeyUpdate(update_requested) neither fails on the
    /// half-closed socket nor follows our close_notify on the wire.
    fn seal(&mut self) {}
    /// Called once when the report is final (or the shutdown is dropped): undo
    /// `begin` and `seal`.
    fn end(&mut self) {}
    /// One `SSL_shutdown` call.
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError>;
    /// Finishes writing a close_notify that was queued before the shutdown began
    /// (`Status::sent`), without reading anything: `Ok` once it has left, now or
    /// earlier; `Err(WantWrite)` while the socket cannot take it. (`SSL_shutdown`
    /// itself would read when the alert has already left, and fail on the peer's
    /// application data.)
    fn flush_close_notify(&mut self) -> Result<(), TlsError>;
    /// One `SSL_read` call; the bytes are discarded. `Ok(n)` has `n > 0`; the peer's
    /// close_notify is `Err(TlsError::CloseNotify)`.
    fn read_discard(&mut self) -> Result<usize, TlsError>;
    /// One `SSL_read` call into `buf` (not empty); otherwise as `read_discard`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError>;
    /// One `SSL_write` of application data (not empty) with
    /// `SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER`, so that it can complete a write the
    /// application left half-finished with a buffer of its own.
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError>;
    /// Whether OpenSSL holds received bytes not yet processed (`SSL_has_pending`).
    fn has_pending(&self) -> bool;
    /// Send nothing, now or later (`SSL_set_shutdown(SENT | RECEIVED)`).
    fn set_quiet(&mut self);
    /// `shutdown(SHUT_WR)` on the socket.
    fn half_close(&mut self) -> io::Result<()>;
    /// Bytes in the kernel send queue not yet acknowledged by the peer (`SIOCOUTQ`).
    fn send_queue_len(&self) -> io::Result<usize>;
    /// Make the owner's `close()` send an RST (`SO_LINGER {1, 0}`).
    fn arm_reset(&mut self) -> io::Result<()>;
    /// Remove the session from the `SSL_CTX` cache and mark it not resumable.
    fn forget_session(&mut self);
    /// Whether the session can still be resumed (see [`Report::session_resumable`]).
    fn session_resumable(&self) -> bool;
    /// The alerts seen since `begin` (sent and received, close_notify aside).
    /// The OpenSSL implementations watch them with an info callback that
    /// `begin` installs (chained to the application's) and `end` removes.
    fn alerts(&self) -> AlertLog {
        AlertLog::default()
    }
    /// The report of an earlier shutdown of this connection, if any.
    fn saved_report(&self) -> Option<Report>;
    /// Remember the final report, so that a second shutdown returns it.
    fn save_report(&mut self, report: &Report);
}
