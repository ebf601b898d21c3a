//! The shutdown state machine: flush -> half-close -> await_peer -> linger.
//!
//! [`Shutdown`] never sleeps, and its deadlines come only from the `now` it is
//! given. Every call to [`Shutdown::poll`] takes `now` and what the socket
//! reported, and answers either
//! [`Progress::Done`] with the [`Report`] or [`Progress::Wait`]: wait for READ or
//! WRITE readiness (or only for time to pass), at the latest until a deadline. The
//! adapters — [`shutdown_blocking`](crate::shutdown_blocking), the
//! [`Closer`](crate::Closer), the C API — own the clock and the waiting.
//!
//! The machine talks to the connection through [`Connection`]: OpenSSL in production,
//! a scripted fake in the unit tests below.

use std::io;
use std::time::{Duration, Instant};

use openssl::ssl::ShutdownResult;

use crate::policy::{Mode, Policy, ResetOnTimeout};
use crate::report::{
    Alert, AlertDirection, AlertRecord, Initiator, Outcome, Report, Stage, TlsVersion,
};

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
    /// called `SSL_shutdown`, or an earlier shutdown was dropped midway.
    pub sent: bool,
    /// Our close_notify is queued but OpenSSL has not finished writing it to the
    /// socket (the last call wanted to write): `SSL_shutdown` must flush it.
    /// When `sent` is set and this is not, the alert has left, and the shutdown
    /// never calls `SSL_shutdown` again.
    pub sent_pending: bool,
    /// The peer's close_notify already arrived (`SSL_RECEIVED_SHUTDOWN`).
    pub received: bool,
    /// The negotiated version, if the handshake finished.
    pub version: Option<TlsVersion>,
}

/// What the state machine needs from a TLS connection.
///
/// Implemented for `openssl::ssl::SslStream<S>` (any `S: Read + Write + AsFd`),
/// for `&mut` of any implementation, and for [`RawConnection`](crate::RawConnection)
/// (a raw `SSL*` with its socket). Each method is one OpenSSL or socket call; the
/// implementation classifies OpenSSL's answers into [`TlsError`] and keeps the error
/// queue clean.
pub trait Connection {
    /// The state before the shutdown begins.
    fn status(&mut self) -> Status;
    /// Called once before the first `shutdown`/`read_discard` call. The OpenSSL
    /// implementations suspend `SSL_OP_IGNORE_UNEXPECTED_EOF` here, so that a
    /// truncation is never mistaken for close_notify, and put the socket in
    /// non-blocking mode, so that no call blocks past a deadline.
    fn begin(&mut self) {}
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
    fn shutdown(&mut self) -> Result<ShutdownResult, TlsError>;
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
    /// The report of an earlier shutdown of this connection, if any.
    fn saved_report(&self) -> Option<Report>;
    /// Remember the final report, so that a second shutdown returns it.
    fn save_report(&mut self, report: &Report);
}

impl<T: Connection + ?Sized> Connection for &mut T {
    fn status(&mut self) -> Status {
        (**self).status()
    }
    fn begin(&mut self) {
        (**self).begin()
    }
    fn seal(&mut self) {
        (**self).seal()
    }
    fn end(&mut self) {
        (**self).end()
    }
    fn shutdown(&mut self) -> Result<ShutdownResult, TlsError> {
        (**self).shutdown()
    }
    fn read_discard(&mut self) -> Result<usize, TlsError> {
        (**self).read_discard()
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        (**self).read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        (**self).write(buf)
    }
    fn has_pending(&self) -> bool {
        (**self).has_pending()
    }
    fn set_quiet(&mut self) {
        (**self).set_quiet()
    }
    fn half_close(&mut self) -> io::Result<()> {
        (**self).half_close()
    }
    fn send_queue_len(&self) -> io::Result<usize> {
        (**self).send_queue_len()
    }
    fn arm_reset(&mut self) -> io::Result<()> {
        (**self).arm_reset()
    }
    fn forget_session(&mut self) {
        (**self).forget_session()
    }
    fn session_resumable(&self) -> bool {
        (**self).session_resumable()
    }
    fn saved_report(&self) -> Option<Report> {
        (**self).saved_report()
    }
    fn save_report(&mut self, report: &Report) {
        (**self).save_report(report)
    }
}

/// What to wait for before calling [`Shutdown::poll`] again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interest {
    /// The socket becoming readable.
    Read,
    /// The socket becoming writable.
    Write,
    /// Only time: call again at the deadline (the linger stage re-checks the send
    /// queue, which has no readiness event).
    Timer,
}

impl Interest {
    /// The mio interest to wait for; `None` for [`Interest::Timer`] (use only the
    /// deadline as the poll timeout). An edge-triggered registration for
    /// `READABLE | WRITABLE` made once covers every stage, so re-registering on
    /// each change is optional.
    pub fn to_mio(self) -> Option<mio::Interest> {
        match self {
            Interest::Read => Some(mio::Interest::READABLE),
            Interest::Write => Some(mio::Interest::WRITABLE),
            Interest::Timer => None,
        }
    }
}

/// "Wait for `interest`, at the latest until `deadline`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Wait {
    /// What to wait for.
    pub interest: Interest,
    /// When to call again even if nothing happened.
    pub deadline: Instant,
}

impl Wait {
    /// Time left until the deadline, zero if it has passed.
    pub fn timeout(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// The answer of [`Shutdown::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Progress {
    /// Not finished: wait, then call again.
    Wait(Wait),
    /// Finished; every later call returns the same report.
    Done(Report),
}

/// What the socket reported since the last call: the input of [`Shutdown::poll`].
///
/// A wake-up whose readiness does not match what the machine waits for, before the
/// deadline, is spurious: the call is a no-op and makes no OpenSSL call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ready {
    readable: bool,
    writable: bool,
}

impl Ready {
    /// Nothing: a timer wake-up.
    pub const NONE: Ready = Ready {
        readable: false,
        writable: false,
    };
    /// The socket is readable (or hung up, or has an error).
    pub const READABLE: Ready = Ready {
        readable: true,
        writable: false,
    };
    /// The socket is writable (or hung up, or has an error).
    pub const WRITABLE: Ready = Ready {
        readable: false,
        writable: true,
    };
    /// Unknown readiness: try whatever the machine waits for. Use it when the
    /// event loop cannot say what happened (the C step API does).
    pub const ALL: Ready = Ready {
        readable: true,
        writable: true,
    };

    /// Whether this includes readability.
    pub fn is_readable(self) -> bool {
        self.readable
    }
    /// Whether this includes writability.
    pub fn is_writable(self) -> bool {
        self.writable
    }
}

impl std::ops::BitOr for Ready {
    type Output = Ready;
    fn bitor(self, rhs: Ready) -> Ready {
        Ready {
            readable: self.readable || rhs.readable,
            writable: self.writable || rhs.writable,
        }
    }
}

impl From<&mio::event::Event> for Ready {
    /// A hang-up or an error counts as both: the next OpenSSL call reports it.
    fn from(event: &mio::event::Event) -> Ready {
        let broken = event.is_error();
        Ready {
            readable: event.is_readable() || event.is_read_closed() || broken,
            writable: event.is_writable() || event.is_write_closed() || broken,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    Idle,
    Flush {
        deadline: Instant,
    },
    AwaitPeer {
        deadline: Instant,
        interest: Interest,
        /// `poll_read` filled the caller's buffer: read again before waiting.
        data_pending: bool,
    },
    Linger {
        outcome: Outcome,
        deadline: Instant,
        next_check: Instant,
        backoff: Duration,
    },
    Done(Report),
}

/// First and longest pause between two checks of the send queue in the linger stage.
const LINGER_FIRST_CHECK: Duration = Duration::from_millis(1);
const LINGER_MAX_CHECK: Duration = Duration::from_millis(50);

/// One connection being shut down: the state machine flush -> half-close ->
/// await_peer -> linger.
///
/// It never sleeps and never reads the clock: every [`poll`](Shutdown::poll) takes
/// `now` and what the socket reported, and answers [`Progress::Wait`] (wait for
/// READ or WRITE readiness, or only for time, at the latest until a deadline) or
/// [`Progress::Done`] with the [`Report`]. The adapters own the clock and the
/// waiting: [`shutdown_blocking`](crate::shutdown_blocking), or your event loop.
///
/// Call order: [`poll`](Shutdown::poll) once to start, then again each time the
/// socket reports the [`Interest`] of the last [`Wait`] or its deadline passes, until
/// [`Progress::Done`].
#[derive(Debug)]
pub struct Shutdown<C: Connection> {
    conn: C,
    policy: Policy,
    state: State,
    /// The `now` of the first call, and the monotonic clock at that moment.
    started: Option<(Instant, Instant)>,
    initiator: Initiator,
    stage: Stage,
    sent: bool,
    received: bool,
    half_closed: bool,
    discarded: u64,
    calls: u32,
    version: Option<TlsVersion>,
    alert: Option<AlertRecord>,
    os_error: Option<i32>,
    detail: Option<&'static str>,
    linger_bytes: Option<u64>,
    speculative_read: bool,
    /// Bytes handed to the caller by the last `poll_read`; more may be waiting in
    /// OpenSSL or the socket, so the next call reads without waiting for readiness.
    delivered: usize,
    /// Application data to write before close_notify, and how much is written.
    unsent: Vec<u8>,
    unsent_written: usize,
    /// The failure the application already saw on this connection.
    prior_error: Option<TlsError>,
    /// Keep the final report on the connection for a second shutdown (off when
    /// the connection is closed right after, as in the Closer).
    save_report: bool,
}

impl<C: Connection> Shutdown<C> {
    /// Prepares a shutdown of `conn` under `policy`. Nothing happens until the first
    /// [`poll`](Shutdown::poll).
    pub fn new(conn: C, policy: &Policy) -> Self {
        Shutdown {
            conn,
            policy: policy.clone(),
            state: State::Idle,
            started: None,
            initiator: Initiator::Local,
            stage: Stage::Flush,
            sent: false,
            received: false,
            half_closed: false,
            discarded: 0,
            calls: 0,
            version: None,
            alert: None,
            os_error: None,
            detail: None,
            linger_bytes: None,
            speculative_read: true,
            delivered: 0,
            unsent: Vec::new(),
            unsent_written: 0,
            prior_error: None,
            save_report: true,
        }
    }

    /// Application data the caller could not finish writing, to be sent before our
    /// close_notify, in the flush stage and under its timeout. If the caller's last
    /// `SSL_write` stopped half way (WANT_WRITE), `data` must begin with the bytes
    /// of that call, as OpenSSL requires of a retry; the write then completes
    /// instead of failing with "bad write retry". A peer that never reads makes the
    /// flush time out, as it would for close_notify alone. Ignored once the
    /// shutdown has started, and in quiet mode.
    pub fn with_unsent(mut self, data: Vec<u8>) -> Self {
        if self.started.is_none() {
            self.unsent = data;
            self.unsent_written = 0;
        }
        self
    }

    /// The error the application's last `SSL_read` or `SSL_write` on this
    /// connection failed with (see `TlsError::from(&openssl::ssl::Error)`). OpenSSL
    /// forbids `SSL_shutdown` after `SSL_ERROR_SYSCALL` or `SSL_ERROR_SSL`, so the
    /// shutdown sends nothing and reports that error: `truncated` for an EOF,
    /// `reset` for a transport error, `peer_alert` with the alert the application
    /// consumed, `protocol_error`. Retry requests and close_notify are not errors
    /// and are ignored. Ignored once the shutdown has started.
    pub fn after_error(mut self, err: TlsError) -> Self {
        let is_failure = !matches!(
            err,
            TlsError::WantRead | TlsError::WantWrite | TlsError::CloseNotify
        );
        if self.started.is_none() && is_failure {
            self.prior_error = Some(err);
        }
        self
    }

    /// Tells the machine that readiness will be reported for bytes already waiting in
    /// the socket (a level-triggered `poll(2)`, or a registration made after the
    /// first `poll` call), so it need not try one read before waiting for the peer.
    /// Without this, the machine tries once, which is right for an edge-triggered
    /// registration whose edge was consumed by the application.
    pub(crate) fn readiness_is_level(&mut self) {
        self.speculative_read = false;
    }

    /// The connection is closed as soon as the report is final (the Closer), so
    /// keeping the report on it for a second shutdown would only cost allocations.
    pub(crate) fn closed_after_report(&mut self) {
        self.save_report = false;
    }

    /// Drives the shutdown. `now` is the current time; `ready` is what the socket
    /// reported since the last call ([`Ready::NONE`] for a timer wake-up,
    /// [`Ready::ALL`] when unknown). Returns the next [`Wait`] or the [`Report`].
    ///
    /// Application data that arrives after our close_notify is discarded (and
    /// counted) up to the drain limit; use [`poll_read`](Shutdown::poll_read) to
    /// receive it instead.
    pub fn poll(&mut self, now: Instant, ready: Ready) -> Progress {
        self.step(now, ready, None)
    }

    /// Like [`poll`](Shutdown::poll), but application data that arrives after our
    /// close_notify is written to `buf` instead of being discarded: the TLS
    /// half-close, where we are done sending and keep reading until the peer's
    /// close_notify. Returns how many bytes were written to `buf`.
    ///
    /// When it returns `n > 0`, consume the bytes and call again at once, whatever
    /// the socket reports: more may already be buffered. Delivered bytes do not
    /// count against the drain limit and are not in
    /// [`Report::discarded_bytes`].
    pub fn poll_read(&mut self, now: Instant, ready: Ready, buf: &mut [u8]) -> (usize, Progress) {
        let progress = self.step(now, ready, Some(buf));
        (std::mem::take(&mut self.delivered), progress)
    }

    fn step(&mut self, now: Instant, ready: Ready, out: Option<&mut [u8]>) -> Progress {
        self.delivered = 0;
        match self.state {
            State::Done(report) => Progress::Done(report),
            State::Idle => self.start(now, out),
            State::Flush { deadline } => {
                if ready.writable {
                    self.flush(now, deadline, out)
                } else {
                    self.idle(now, deadline, Stage::Flush)
                }
            }
            State::AwaitPeer {
                deadline,
                interest,
                data_pending,
            } => {
                let hit = data_pending
                    || match interest {
                        Interest::Read => ready.readable,
                        Interest::Write => ready.writable,
                        Interest::Timer => false,
                    };
                if hit {
                    self.await_peer(now, deadline, out)
                } else {
                    self.idle(now, deadline, Stage::AwaitPeer)
                }
            }
            State::Linger { next_check, .. } => {
                if now >= next_check {
                    self.linger(now)
                } else {
                    self.waiting()
                        .map_or_else(|| unreachable_wait(now), Progress::Wait)
                }
            }
        }
    }

    /// The report, once the shutdown is done.
    pub fn report(&self) -> Option<Report> {
        match self.state {
            State::Done(report) => Some(report),
            _ => None,
        }
    }

    /// What the machine waits for now; `None` before the first call and when done.
    pub fn waiting(&self) -> Option<Wait> {
        match self.state {
            State::Flush { deadline } => Some(Wait {
                interest: Interest::Write,
                deadline,
            }),
            State::AwaitPeer {
                deadline, interest, ..
            } => Some(Wait { interest, deadline }),
            State::Linger { next_check, .. } => Some(Wait {
                interest: Interest::Timer,
                deadline: next_check,
            }),
            State::Idle | State::Done(_) => None,
        }
    }

    /// The policy this shutdown runs under.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The connection.
    pub fn get_ref(&self) -> &C {
        &self.conn
    }

    /// The connection, mutably. Reading or writing it while the shutdown runs breaks
    /// the shutdown.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.conn
    }

    fn abandon(&mut self) {
        if self.started.is_some() && !matches!(self.state, State::Done(_)) {
            self.conn.end();
        }
    }

    // --- stages -------------------------------------------------------------------

    fn start(&mut self, now: Instant, out: Option<&mut [u8]>) -> Progress {
        self.started = Some((now, Instant::now()));
        if let Some(report) = self.conn.saved_report() {
            log::debug!("closenotify: shutdown already done: {report}");
            self.state = State::Done(report);
            return Progress::Done(report);
        }
        let status = self.conn.status();
        self.version = status.version;
        if status.received {
            self.initiator = Initiator::Peer;
            self.received = true;
        }
        self.conn.begin();
        if let Some(err) = self.prior_error {
            log::debug!("closenotify: the application already saw {err:?}; sending nothing");
            self.conn.set_quiet();
            return self.failed(now, err);
        }
        if self.policy.mode() == Mode::Quiet || !status.usable {
            log::debug!(
                "closenotify: quiet shutdown ({})",
                if status.usable {
                    "by policy"
                } else {
                    "handshake unfinished or fatal error"
                }
            );
            self.conn.set_quiet();
            return self.finish(now, Outcome::Quiet);
        }
        if status.sent && !status.sent_pending {
            // Our close_notify has already left (the application called
            // SSL_shutdown, or an earlier shutdown was dropped after the flush): a
            // second SSL_shutdown would read, and fail on application data the
            // peer may still send. Go straight to reading with SSL_read.
            log::debug!("closenotify: close_notify already sent; not calling SSL_shutdown");
            self.sent = true;
            return self.after_flush(now, out);
        }
        let deadline = now + self.policy.flush_timeout();
        self.flush(now, deadline, out)
    }

    fn flush(&mut self, now: Instant, deadline: Instant, out: Option<&mut [u8]>) -> Progress {
        while self.unsent_written < self.unsent.len() {
            self.calls += 1;
            match self.conn.write(&self.unsent[self.unsent_written..]) {
                Ok(n) => self.unsent_written += n,
                Err(TlsError::WantWrite | TlsError::WantRead) => {
                    return self.flush_wait(now, deadline);
                }
                Err(err) => return self.failed(now, err),
            }
        }
        if !self.unsent.is_empty() {
            self.unsent = Vec::new(); // all written: free it
        }
        self.calls += 1;
        match self.conn.shutdown() {
            Ok(ShutdownResult::Sent) => {
                self.sent = true;
                self.after_flush(now, out)
            }
            Ok(ShutdownResult::Received) => {
                self.sent = true;
                self.received = true;
                self.after_flush(now, out)
            }
            // Only when our close_notify was queued before we started: OpenSSL
            // flushed it and went on to read for the peer's.
            Err(TlsError::WantRead) => {
                self.sent = true;
                self.after_flush(now, out)
            }
            Err(TlsError::WantWrite) => self.flush_wait(now, deadline),
            Err(err) => self.failed(now, err),
        }
    }

    fn flush_wait(&mut self, now: Instant, deadline: Instant) -> Progress {
        if now >= deadline {
            return self.timed_out(now);
        }
        self.state = State::Flush { deadline };
        Progress::Wait(Wait {
            interest: Interest::Write,
            deadline,
        })
    }

    fn after_flush(&mut self, now: Instant, out: Option<&mut [u8]>) -> Progress {
        if self.policy.half_close() {
            self.enter(Stage::HalfClose);
            match self.conn.half_close() {
                Ok(()) => self.half_closed = true,
                // ENOTCONN: the peer already reset the connection; the next stage
                // (or the report) says so.
                Err(err) => log::debug!("closenotify: shutdown(SHUT_WR) failed: {err}"),
            }
        }
        if self.received {
            return self.linger_or_finish(now, Outcome::Clean);
        }
        match self.policy.mode() {
            Mode::SendOnly | Mode::Quiet => self.linger_or_finish(now, Outcome::SentOnly),
            Mode::Bidirectional => {
                self.enter(Stage::AwaitPeer);
                self.conn.seal();
                let deadline = now + self.policy.peer_timeout();
                if self.speculative_read || self.conn.has_pending() {
                    self.await_peer(now, deadline, out)
                } else {
                    self.state = State::AwaitPeer {
                        deadline,
                        interest: Interest::Read,
                        data_pending: false,
                    };
                    Progress::Wait(Wait {
                        interest: Interest::Read,
                        deadline,
                    })
                }
            }
        }
    }

    fn await_peer(
        &mut self,
        now: Instant,
        deadline: Instant,
        mut out: Option<&mut [u8]>,
    ) -> Progress {
        if out.as_deref().is_some_and(<[u8]>::is_empty) {
            // `poll_read` with no room: read nothing (reading would have to discard
            // what the caller asked to receive), keep waiting.
            if now >= deadline {
                return self.timed_out(now);
            }
            let data_pending = matches!(
                self.state,
                State::AwaitPeer {
                    data_pending: true,
                    ..
                }
            );
            self.state = State::AwaitPeer {
                deadline,
                interest: Interest::Read,
                data_pending,
            };
            return Progress::Wait(Wait {
                interest: Interest::Read,
                deadline,
            });
        }
        // One retry on buffered bytes per wake-up: OpenSSL may consume a record
        // (a TLS 1.3 ticket, a KeyUpdate) and still answer WANT_READ. A partial
        // record is also "pending" and needs the socket; one retry tells them apart.
        let mut retried_pending = false;
        loop {
            self.calls += 1;
            let read = match out.as_deref_mut() {
                Some(buf) => self.conn.read(buf).map(|n| (n, true)),
                None => self.conn.read_discard().map(|n| (n, false)),
            };
            match read {
                Ok((n, true)) => {
                    self.delivered = n;
                    self.state = State::AwaitPeer {
                        deadline,
                        interest: Interest::Read,
                        data_pending: true,
                    };
                    return Progress::Wait(Wait {
                        interest: Interest::Read,
                        deadline,
                    });
                }
                Ok((n, false)) => {
                    self.discarded += n as u64;
                    if self.discarded > self.policy.drain_limit() {
                        return self.finish(now, Outcome::DrainLimit);
                    }
                    retried_pending = false;
                }
                Err(TlsError::CloseNotify) => {
                    self.received = true;
                    return self.linger_or_finish(now, Outcome::Clean);
                }
                Err(want @ (TlsError::WantRead | TlsError::WantWrite)) => {
                    if want == TlsError::WantRead && !retried_pending && self.conn.has_pending() {
                        retried_pending = true;
                        continue;
                    }
                    if now >= deadline {
                        return self.timed_out(now);
                    }
                    let interest = if want == TlsError::WantRead {
                        Interest::Read
                    } else {
                        Interest::Write
                    };
                    self.state = State::AwaitPeer {
                        deadline,
                        interest,
                        data_pending: false,
                    };
                    return Progress::Wait(Wait { interest, deadline });
                }
                Err(err) => return self.failed(now, err),
            }
        }
    }

    fn linger_or_finish(&mut self, now: Instant, outcome: Outcome) -> Progress {
        let timeout = self.policy.linger_timeout();
        if timeout.is_zero() {
            return self.finish(now, outcome);
        }
        self.enter(Stage::Linger);
        self.state = State::Linger {
            outcome,
            deadline: now + timeout,
            next_check: now,
            backoff: LINGER_FIRST_CHECK,
        };
        self.linger(now)
    }

    fn linger(&mut self, now: Instant) -> Progress {
        let State::Linger {
            outcome,
            deadline,
            backoff,
            ..
        } = self.state
        else {
            return unreachable_wait(now);
        };
        let queued = self.conn.send_queue_len();
        if let Ok(n) = queued {
            if self.linger_bytes.is_none() {
                log::debug!("closenotify: linger: {n} bytes in the send queue");
                self.linger_bytes = Some(n as u64);
            }
        }
        match queued {
            Ok(0) => self.finish(now, outcome),
            Ok(queued) => {
                if now >= deadline {
                    log::debug!("closenotify: linger timed out with {queued} bytes queued");
                    return self.timed_out(now);
                }
                let next_check = (now + backoff).min(deadline);
                self.state = State::Linger {
                    outcome,
                    deadline,
                    next_check,
                    backoff: (backoff * 2).min(LINGER_MAX_CHECK),
                };
                Progress::Wait(Wait {
                    interest: Interest::Timer,
                    deadline: next_check,
                })
            }
            Err(err) => {
                // Not a TCP socket, or already gone: nothing to wait for.
                log::debug!("closenotify: cannot read the send queue: {err}");
                self.finish(now, outcome)
            }
        }
    }

    /// A wake-up that does not match what we wait for: a no-op before the deadline.
    fn idle(&mut self, now: Instant, deadline: Instant, stage: Stage) -> Progress {
        if now >= deadline {
            debug_assert_eq!(stage, self.stage);
            return self.timed_out(now);
        }
        self.waiting()
            .map_or_else(|| unreachable_wait(now), Progress::Wait)
    }

    fn timed_out(&mut self, now: Instant) -> Progress {
        let reset = match self.policy.reset_on_timeout() {
            ResetOnTimeout::Never => false,
            ResetOnTimeout::FlushOnly => self.stage == Stage::Flush,
            ResetOnTimeout::Always => true,
        };
        if reset {
            if let Err(err) = self.conn.arm_reset() {
                log::debug!("closenotify: cannot arm the reset: {err}");
            }
        }
        self.finish(now, Outcome::TimedOut)
    }

    fn failed(&mut self, now: Instant, err: TlsError) -> Progress {
        let outcome = match err {
            TlsError::Eof => Outcome::Truncated,
            TlsError::Os(errno) => {
                self.os_error = Some(errno);
                Outcome::Reset
            }
            TlsError::PeerAlert(code) => {
                self.alert = Some(AlertRecord {
                    alert: Alert::from_code(code),
                    direction: AlertDirection::Received,
                });
                Outcome::PeerAlert
            }
            TlsError::Protocol { alert, detail } => {
                self.alert = alert.map(|code| AlertRecord {
                    alert: Alert::from_code(code),
                    direction: AlertDirection::Sent,
                });
                self.detail = Some(detail);
                Outcome::ProtocolError
            }
            TlsError::Unusable { detail } => {
                self.detail = Some(detail);
                Outcome::Quiet
            }
            // A close_notify answering SSL_shutdown, or a stray WANT: not failures.
            TlsError::CloseNotify => {
                self.received = true;
                return self.linger_or_finish(now, Outcome::Clean);
            }
            TlsError::WantRead | TlsError::WantWrite => {
                self.detail = Some("unexpected retry request");
                Outcome::ProtocolError
            }
        };
        self.finish(now, outcome)
    }

    fn finish(&mut self, now: Instant, outcome: Outcome) -> Progress {
        let keep = outcome.is_orderly()
            || (outcome == Outcome::Truncated && self.policy.keep_session_on_truncation());
        if !keep {
            self.conn.forget_session();
        }
        self.conn.end();
        // The spread of the `now` values, or the time that really passed if that
        // is more (a caller may pass a stale `now`): never less than the truth.
        let elapsed = self.started.map_or(Duration::ZERO, |(first, clock)| {
            now.saturating_duration_since(first).max(clock.elapsed())
        });
        let report = Report {
            outcome,
            initiator: self.initiator,
            stage: self.stage,
            close_notify_sent: self.sent,
            close_notify_received: self.received,
            half_closed: self.half_closed,
            alert: self.alert,
            os_error: self.os_error,
            discarded_bytes: self.discarded,
            elapsed,
            session_resumable: self.conn.session_resumable(),
            tls_version: self.version,
            detail: self.detail,
            linger_bytes: self.linger_bytes,
            ssl_calls: self.calls,
        };
        if self.save_report {
            self.conn.save_report(&report);
        }
        log::debug!("closenotify: done: {report}");
        self.state = State::Done(report);
        Progress::Done(report)
    }

    fn enter(&mut self, stage: Stage) {
        log::debug!("closenotify: {} -> {}", self.stage, stage);
        self.stage = stage;
    }
}

impl<C: Connection> Drop for Shutdown<C> {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The states that call this always have a wait; keep the type checker honest
/// without a panic path (and without reading the clock).
#[cold]
fn unreachable_wait(now: Instant) -> Progress {
    debug_assert!(false, "state without a wait");
    Progress::Wait(Wait {
        interest: Interest::Timer,
        deadline: now,
    })
}

#[cfg(test)]
mod tests {
    //! The machine against a scripted connection and a fake clock: exact deadlines,
    //! no sleeping, no sockets.

    use super::*;
    use std::collections::VecDeque;

    /// A connection whose OpenSSL answers are a script.
    #[derive(Default)]
    struct Script {
        status: Option<Status>,
        shutdowns: VecDeque<Result<ShutdownResult, TlsError>>,
        reads: VecDeque<Result<usize, TlsError>>,
        writes: VecDeque<Result<usize, TlsError>>,
        pending: VecDeque<bool>,
        send_queue: VecDeque<usize>,
        half_closed: bool,
        reset_armed: bool,
        quiet: bool,
        forgot_session: bool,
        began: u32,
        ended: u32,
        saved: Option<Report>,
    }

    impl Script {
        fn usable() -> Script {
            Script {
                status: Some(Status {
                    usable: true,
                    sent: false,
                    sent_pending: false,
                    received: false,
                    version: Some(TlsVersion::Tls1_3),
                }),
                ..Script::default()
            }
        }
        fn shutdown(mut self, r: Result<ShutdownResult, TlsError>) -> Self {
            self.shutdowns.push_back(r);
            self
        }
        fn read(mut self, r: Result<usize, TlsError>) -> Self {
            self.reads.push_back(r);
            self
        }
    }

    impl Connection for Script {
        fn status(&mut self) -> Status {
            self.status.expect("status")
        }
        fn begin(&mut self) {
            self.began += 1;
        }
        fn end(&mut self) {
            self.ended += 1;
        }
        fn shutdown(&mut self) -> Result<ShutdownResult, TlsError> {
            self.shutdowns.pop_front().expect("unscripted SSL_shutdown")
        }
        fn read_discard(&mut self) -> Result<usize, TlsError> {
            self.reads.pop_front().expect("unscripted SSL_read")
        }
        fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
            let r = self.writes.pop_front().expect("unscripted SSL_write");
            r.map(|n| n.min(buf.len()))
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
            let n = self.read_discard()?;
            let n = n.min(buf.len());
            buf[..n].fill(b'x');
            Ok(n)
        }
        fn has_pending(&self) -> bool {
            self.pending.front().copied().unwrap_or(false)
        }
        fn set_quiet(&mut self) {
            self.quiet = true;
        }
        fn half_close(&mut self) -> io::Result<()> {
            self.half_closed = true;
            Ok(())
        }
        fn send_queue_len(&self) -> io::Result<usize> {
            Ok(self.send_queue.front().copied().unwrap_or(0))
        }
        fn arm_reset(&mut self) -> io::Result<()> {
            self.reset_armed = true;
            Ok(())
        }
        fn forget_session(&mut self) {
            self.forgot_session = true;
        }
        fn session_resumable(&self) -> bool {
            !self.forgot_session
        }
        fn saved_report(&self) -> Option<Report> {
            self.saved
        }
        fn save_report(&mut self, report: &Report) {
            self.saved = Some(*report);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> Policy {
        Policy::builder()
            .flush_timeout(ms(100))
            .peer_timeout(ms(300))
            .build()
            .unwrap()
    }

    fn wait(p: Progress) -> Wait {
        match p {
            Progress::Wait(w) => w,
            Progress::Done(r) => panic!("expected a wait, got {r}"),
        }
    }

    fn done(p: Progress) -> Report {
        match p {
            Progress::Done(r) => r,
            Progress::Wait(w) => panic!("expected a report, got {w:?}"),
        }
    }

    #[test]
    fn clean_exchange_reports_clean_local_and_counts_calls() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::WantRead))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy());
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!(w.interest, Interest::Read);
        assert_eq!(w.deadline, t0 + ms(300));
        let r = done(sd.poll(t0 + ms(7), Ready::READABLE));
        assert_eq!(r.outcome, Outcome::Clean);
        assert_eq!(r.initiator, Initiator::Local);
        assert_eq!(r.stage, Stage::AwaitPeer);
        assert!(r.close_notify_sent && r.close_notify_received && r.half_closed);
        assert_eq!(r.elapsed, ms(7));
        assert_eq!(r.ssl_calls, 3);
        assert!(r.session_resumable);
        assert_eq!(sd.get_ref().began, 1);
        assert_eq!(sd.get_ref().ended, 1);
        // A second call returns the same report and calls nothing.
        assert_eq!(done(sd.poll(t0 + ms(500), Ready::ALL)), r);
    }

    #[test]
    fn flush_deadline_is_exact_and_spurious_wakeups_are_noops() {
        let t0 = Instant::now();
        let conn = Script::usable().shutdown(Err(TlsError::WantWrite));
        let mut sd = Shutdown::new(conn, &policy());
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!(
            w,
            Wait {
                interest: Interest::Write,
                deadline: t0 + ms(100)
            }
        );
        // Readable is not what we wait for; neither is a timer before the deadline.
        assert_eq!(wait(sd.poll(t0 + ms(10), Ready::READABLE)), w);
        assert_eq!(wait(sd.poll(t0 + ms(99), Ready::NONE)), w);
        let just_before = t0 + ms(100) - Duration::from_nanos(1);
        assert_eq!(wait(sd.poll(just_before, Ready::NONE)), w);
        let r = done(sd.poll(t0 + ms(100), Ready::NONE));
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert_eq!(r.stage, Stage::Flush);
        assert_eq!(r.elapsed, ms(100));
        assert_eq!(r.ssl_calls, 1, "spurious wake-ups made OpenSSL calls");
        assert!(!r.close_notify_sent && !r.half_closed);
        // Default policy: a flush timeout arms the reset and drops the session.
        assert!(sd.get_ref().reset_armed);
        assert!(!r.session_resumable);
    }

    #[test]
    fn await_peer_deadline_is_exact_and_not_reset_by_default() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::WantRead))
            .read(Err(TlsError::WantRead));
        let mut sd = Shutdown::new(conn, &policy());
        let start = ms(20);
        let w = wait(sd.poll(t0 + start, Ready::NONE));
        assert_eq!(w.deadline, t0 + start + ms(300));
        // A readable event with no full record: one call, same deadline.
        assert_eq!(wait(sd.poll(t0 + ms(100), Ready::READABLE)), w);
        assert_eq!(wait(sd.poll(t0 + ms(200), Ready::WRITABLE)), w);
        let r = done(sd.poll(t0 + start + ms(300), Ready::NONE));
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert_eq!(r.stage, Stage::AwaitPeer);
        assert_eq!(r.elapsed, ms(300));
        assert_eq!(r.ssl_calls, 3);
        assert!(r.close_notify_sent && !r.close_notify_received);
        assert!(!sd.get_ref().reset_armed);
    }

    #[test]
    fn reset_on_timeout_always_and_never() {
        let t0 = Instant::now();
        for (reset, expected) in [
            (ResetOnTimeout::Always, true),
            (ResetOnTimeout::Never, false),
        ] {
            let p = policy()
                .to_builder()
                .reset_on_timeout(reset)
                .build()
                .unwrap();
            let conn = Script::usable().shutdown(Err(TlsError::WantWrite));
            let mut sd = Shutdown::new(conn, &p);
            let _ = sd.poll(t0, Ready::NONE);
            let r = done(sd.poll(t0 + ms(100), Ready::NONE));
            assert_eq!(r.outcome, Outcome::TimedOut);
            assert_eq!(sd.get_ref().reset_armed, expected, "{reset:?}");

            let conn = Script::usable()
                .shutdown(Ok(ShutdownResult::Sent))
                .read(Err(TlsError::WantRead));
            let mut sd = Shutdown::new(conn, &p);
            let _ = sd.poll(t0, Ready::NONE);
            let r = done(sd.poll(t0 + ms(300), Ready::NONE));
            assert_eq!(r.stage, Stage::AwaitPeer);
            assert_eq!(sd.get_ref().reset_armed, expected, "{reset:?}");
        }
    }

    #[test]
    fn readiness_after_the_deadline_is_still_tried_first() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::WantRead))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy());
        let _ = sd.poll(t0, Ready::NONE);
        // The loop was late, but the close_notify is there: clean, not timed out.
        let r = done(sd.poll(t0 + ms(400), Ready::READABLE));
        assert_eq!(r.outcome, Outcome::Clean);
    }

    #[test]
    fn level_triggered_skips_the_speculative_read() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy());
        sd.readiness_is_level();
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!(w.interest, Interest::Read);
        let r = done(sd.poll(t0 + ms(1), Ready::READABLE));
        assert_eq!(r.outcome, Outcome::Clean);
        assert_eq!(r.ssl_calls, 2);
    }

    #[test]
    fn buffered_bytes_are_read_before_waiting() {
        let t0 = Instant::now();
        let mut conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        conn.pending.push_back(true);
        let mut sd = Shutdown::new(conn, &policy());
        sd.readiness_is_level();
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::Clean);
    }

    #[test]
    fn want_read_with_pending_bytes_retries_once_then_waits() {
        let t0 = Instant::now();
        let mut conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::WantRead))
            .read(Err(TlsError::WantRead));
        conn.pending.push_back(true); // a partial record stays pending
        let mut sd = Shutdown::new(conn, &policy());
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!(w.interest, Interest::Read);
        assert_eq!(sd.calls, 3, "shutdown + read + one retry");
    }

    #[test]
    fn peer_initiated_answers_and_skips_the_wait() {
        let t0 = Instant::now();
        let mut conn = Script::usable().shutdown(Ok(ShutdownResult::Received));
        conn.status.as_mut().unwrap().received = true;
        let mut sd = Shutdown::new(conn, &policy());
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::Clean);
        assert_eq!(r.initiator, Initiator::Peer);
        assert_eq!(r.stage, Stage::HalfClose);
        assert!(r.close_notify_sent && r.close_notify_received && r.half_closed);
        assert_eq!(r.ssl_calls, 1);
    }

    #[test]
    fn send_only_does_not_wait() {
        let t0 = Instant::now();
        let p = policy().to_builder().mode(Mode::SendOnly).build().unwrap();
        let conn = Script::usable().shutdown(Ok(ShutdownResult::Sent));
        let mut sd = Shutdown::new(conn, &p);
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::SentOnly);
        assert_eq!(r.stage, Stage::HalfClose);
        assert!(r.session_resumable);
        assert!(!sd.get_ref().forgot_session);

        let p = p.to_builder().half_close(false).build().unwrap();
        let conn = Script::usable().shutdown(Ok(ShutdownResult::Sent));
        let mut sd = Shutdown::new(conn, &p);
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.stage, Stage::Flush);
        assert!(!r.half_closed && !sd.get_ref().half_closed);
    }

    #[test]
    fn quiet_by_policy_and_when_unusable_calls_nothing() {
        let t0 = Instant::now();
        let p = policy().to_builder().mode(Mode::Quiet).build().unwrap();
        let mut sd = Shutdown::new(Script::usable(), &p);
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::Quiet);
        assert_eq!(r.ssl_calls, 0);
        assert!(sd.get_ref().quiet && sd.get_ref().forgot_session);

        let mut conn = Script::usable();
        conn.status.as_mut().unwrap().usable = false;
        let mut sd = Shutdown::new(conn, &policy());
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::Quiet);
        assert!(!r.close_notify_sent);
        assert_eq!(r.ssl_calls, 0);
    }

    #[test]
    fn failures_map_to_outcomes() {
        let t0 = Instant::now();
        let cases = [
            (TlsError::Eof, Outcome::Truncated),
            (TlsError::Os(libc::ECONNRESET), Outcome::Reset),
            (TlsError::PeerAlert(48), Outcome::PeerAlert),
            (
                TlsError::Protocol {
                    alert: Some(20),
                    detail: "bad record mac",
                },
                Outcome::ProtocolError,
            ),
        ];
        for (err, outcome) in cases {
            let conn = Script::usable()
                .shutdown(Ok(ShutdownResult::Sent))
                .read(Ok(10))
                .read(Err(err));
            let mut sd = Shutdown::new(conn, &policy());
            let r = done(sd.poll(t0, Ready::NONE));
            assert_eq!(r.outcome, outcome);
            assert_eq!(r.discarded_bytes, 10);
            assert!(!r.session_resumable, "{outcome} kept the session");
            match outcome {
                Outcome::Reset => assert_eq!(r.os_error, Some(libc::ECONNRESET)),
                Outcome::PeerAlert => {
                    let a = r.alert.unwrap();
                    assert_eq!(
                        (a.alert.name(), a.direction),
                        ("unknown_ca", AlertDirection::Received)
                    );
                }
                Outcome::ProtocolError => {
                    let a = r.alert.unwrap();
                    assert_eq!(
                        (a.alert, a.direction),
                        (Alert::BadRecordMac, AlertDirection::Sent)
                    );
                    assert_eq!(r.detail, Some("bad record mac"));
                }
                _ => assert!(r.alert.is_none() && r.os_error.is_none()),
            }
        }
    }

    #[test]
    fn keep_session_on_truncation_is_honoured() {
        let t0 = Instant::now();
        let p = policy()
            .to_builder()
            .keep_session_on_truncation(true)
            .build()
            .unwrap();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::Eof));
        let mut sd = Shutdown::new(conn, &p);
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::Truncated);
        assert!(r.session_resumable);
    }

    #[test]
    fn drain_limit_counts_and_stops() {
        let t0 = Instant::now();
        let p = policy().to_builder().drain_limit(100).build().unwrap();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Ok(60))
            .read(Ok(40))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &p);
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!((r.outcome, r.discarded_bytes), (Outcome::Clean, 100));

        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Ok(60))
            .read(Ok(41));
        let mut sd = Shutdown::new(conn, &p);
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!((r.outcome, r.discarded_bytes), (Outcome::DrainLimit, 101));
        assert_eq!(r.stage, Stage::AwaitPeer);
    }

    #[test]
    fn want_write_while_awaiting_waits_for_write() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::WantWrite))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy());
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!(w.interest, Interest::Write);
        assert_eq!(wait(sd.poll(t0 + ms(1), Ready::READABLE)), w);
        let r = done(sd.poll(t0 + ms(2), Ready::WRITABLE));
        assert_eq!(r.outcome, Outcome::Clean);
    }

    #[test]
    fn unfinished_write_goes_quiet() {
        let t0 = Instant::now();
        let conn = Script::usable().shutdown(Err(TlsError::Unusable {
            detail: "bad write retry",
        }));
        let mut sd = Shutdown::new(conn, &policy());
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::Quiet);
        assert!(!r.close_notify_sent);
        assert_eq!(r.detail, Some("bad write retry"));
    }

    #[test]
    fn linger_checks_with_backoff_until_empty_or_deadline() {
        let t0 = Instant::now();
        let p = policy()
            .to_builder()
            .linger_timeout(ms(20))
            .build()
            .unwrap();
        let mut conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        conn.send_queue.push_back(500);
        let mut sd = Shutdown::new(conn, &p);
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!(w.interest, Interest::Timer);
        assert_eq!(w.deadline, t0 + ms(1));
        // Early wake-up: no-op.
        assert_eq!(wait(sd.poll(t0, Ready::READABLE)), w);
        let w = wait(sd.poll(t0 + ms(1), Ready::NONE));
        assert_eq!(w.deadline, t0 + ms(3));
        sd.get_mut().send_queue.clear();
        let r = done(sd.poll(t0 + ms(3), Ready::NONE));
        assert_eq!((r.outcome, r.stage), (Outcome::Clean, Stage::Linger));

        let mut conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        conn.send_queue.push_back(500);
        let mut sd = Shutdown::new(conn, &p);
        let mut now = t0;
        let mut checks = 0;
        let r = loop {
            match sd.poll(now, Ready::NONE) {
                Progress::Wait(w) => {
                    assert!(w.deadline <= t0 + ms(20));
                    now = w.deadline;
                    checks += 1;
                }
                Progress::Done(r) => break r,
            }
        };
        assert_eq!((r.outcome, r.stage), (Outcome::TimedOut, Stage::Linger));
        assert_eq!(r.elapsed, ms(20));
        assert!(checks <= 6, "{checks} checks in 20 ms");
    }

    #[test]
    fn saved_report_is_returned_without_touching_the_connection() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        let mut conn = conn;
        let first = done(Shutdown::new(&mut conn, &policy()).poll(t0, Ready::NONE));
        assert_eq!(conn.ended, 1);
        let mut again = Shutdown::new(conn, &policy());
        assert_eq!(done(again.poll(t0 + ms(50), Ready::ALL)), first);
        assert_eq!(again.get_ref().began, 1, "second shutdown began again");
    }

    #[test]
    fn poll_read_delivers_data_and_rereads_without_readiness() {
        let t0 = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Ok(4))
            .read(Ok(3))
            .read(Err(TlsError::WantRead))
            .read(Ok(2))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy());
        let mut buf = [0u8; 8];
        let (n, p) = sd.poll_read(t0, Ready::NONE, &mut buf);
        assert_eq!((n, wait(p).interest), (4, Interest::Read));
        // Called again at once with no readiness: still reads.
        let (n, p) = sd.poll_read(t0, Ready::NONE, &mut buf);
        assert_eq!(n, 3);
        let w = wait(p);
        let (n, p) = sd.poll_read(t0, Ready::NONE, &mut buf);
        assert_eq!((n, wait(p)), (0, w), "WANT_READ: now it waits");
        // A spurious wake-up is still a no-op.
        let (n, _) = sd.poll_read(t0 + ms(1), Ready::WRITABLE, &mut buf);
        assert_eq!(n, 0);
        let (n, _) = sd.poll_read(t0 + ms(2), Ready::READABLE, &mut buf);
        assert_eq!(n, 2);
        let (n, p) = sd.poll_read(t0 + ms(2), Ready::NONE, &mut buf);
        let r = done(p);
        assert_eq!((n, r.outcome, r.discarded_bytes), (0, Outcome::Clean, 0));
        assert_eq!(r.ssl_calls, 6);
    }

    #[test]
    fn unsent_data_goes_first_under_the_flush_timeout() {
        let t0 = Instant::now();
        let mut conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        conn.writes.extend([Ok(6), Err(TlsError::WantWrite), Ok(4)]);
        let mut sd = Shutdown::new(conn, &policy()).with_unsent(b"0123456789".to_vec());
        let w = wait(sd.poll(t0, Ready::NONE));
        assert_eq!((w.interest, w.deadline), (Interest::Write, t0 + ms(100)));
        let r = done(sd.poll(t0 + ms(5), Ready::WRITABLE));
        assert_eq!(r.outcome, Outcome::Clean);
        assert_eq!(r.ssl_calls, 5, "3 writes, shutdown, read");

        // A peer that never reads: the flush times out with the data unsent.
        let mut conn = Script::usable();
        conn.writes.extend([Err(TlsError::WantWrite)]);
        let mut sd = Shutdown::new(conn, &policy()).with_unsent(vec![1; 100]);
        let _ = wait(sd.poll(t0, Ready::NONE));
        let r = done(sd.poll(t0 + ms(100), Ready::NONE));
        assert_eq!((r.outcome, r.stage), (Outcome::TimedOut, Stage::Flush));
        assert!(!r.close_notify_sent);
    }

    #[test]
    fn after_error_reports_the_applications_error_and_sends_nothing() {
        let t0 = Instant::now();
        let mut conn = Script::usable();
        conn.status.as_mut().unwrap().usable = false; // OpenSSL's fatal state
        let mut sd = Shutdown::new(conn, &policy()).after_error(TlsError::PeerAlert(42));
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, Outcome::PeerAlert);
        assert_eq!(r.alert.map(|a| a.alert), Some(Alert::BadCertificate));
        assert_eq!((r.ssl_calls, r.close_notify_sent), (0, false));
        assert!(sd.get_ref().quiet);

        let mut sd = Shutdown::new(Script::usable(), &policy()).after_error(TlsError::Eof);
        assert_eq!(done(sd.poll(t0, Ready::NONE)).outcome, Outcome::Truncated);

        // Not failures: the shutdown runs as usual.
        let conn = Script::usable()
            .shutdown(Ok(ShutdownResult::Sent))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy()).after_error(TlsError::WantRead);
        assert_eq!(done(sd.poll(t0, Ready::NONE)).outcome, Outcome::Clean);
    }

    #[test]
    fn interests_map_to_mio() {
        assert_eq!(Interest::Read.to_mio(), Some(mio::Interest::READABLE));
        assert_eq!(Interest::Write.to_mio(), Some(mio::Interest::WRITABLE));
        assert_eq!(Interest::Timer.to_mio(), None);
    }

    #[test]
    fn dropping_an_unfinished_shutdown_restores_the_connection() {
        let t0 = Instant::now();
        let conn = Script::usable().shutdown(Err(TlsError::WantWrite));
        let mut holder = conn;
        {
            let mut sd = Shutdown::new(&mut holder, &policy());
            let _ = sd.poll(t0, Ready::NONE);
        }
        assert_eq!((holder.began, holder.ended), (1, 1));
        assert!(holder.saved.is_none());
    }
}
