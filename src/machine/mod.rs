//! The shutdown state machine: flush -> half-close -> await_peer -> linger.
//!
//! [`Shutdown`] never sleeps, and its deadlines come only from the `now` it is
//! given. Every call to [`Shutdown::poll`] takes `now` and what the socket
//! reported, and answers either [`Progress::Done`] with the [`Report`] or
//! [`Progress::Wait`]: wait for READ or WRITE readiness (or only for time to pass),
//! at the latest until a deadline. The adapters — [`shutdown_blocking`](crate::shutdown_blocking),
//! the [`Closer`](crate::Closer), the C API — own the clock and the waiting.
//!
//! The machine talks to the connection through [`Connection`]: OpenSSL in
//! production, a scripted fake in the unit and property tests (`tests.rs`,
//! `proptests.rs`).

mod connection;
mod wait;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod script;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use openssl::ssl::ShutdownResult;

use crate::policy::{Mode, Policy, ResetOnTimeout};
use crate::report::{
    Alert, AlertDirection, AlertRecord, Initiator, Outcome, Report, Stage, TlsVersion,
};

pub use self::connection::{Connection, Status, TlsError};
pub use self::wait::{Interest, Progress, Ready, Wait};

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

/// Most application bytes one call discards before it hands control back (four
/// full records): the caller's next call brings a fresh `now`.
const DISCARD_PER_CALL: u64 = 64 * 1024;

/// One connection being shut down: the state machine flush -> half-close ->
/// await_peer -> linger.
///
/// It never sleeps, and its deadlines come only from the `now` it is given: every
/// [`poll`](Shutdown::poll) takes `now` and what the socket reported, and answers [`Progress::Wait`] (wait for
/// READ or WRITE readiness, or only for time, at the latest until a deadline) or
/// [`Progress::Done`] with the [`Report`]. The adapters own the clock and the
/// waiting: [`shutdown_blocking`](crate::shutdown_blocking), or your event loop.
///
/// Call order: [`poll`](Shutdown::poll) once to start, then again each time the
/// socket reports the [`Interest`] of the last [`Wait`] or its deadline passes, until
/// [`Progress::Done`].
#[derive(Debug)]
pub struct Shutdown<C: Connection> {
    conn: Held<C>,
    policy: Policy,
    state: State,
    /// The `now` of the first call, and the monotonic clock at that moment, from
    /// which [`Report::elapsed`] is measured: the time that really passed, even
    /// when a caller's `now` is stale. (Deadlines come only from `now`.)
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
    /// Our close_notify was queued before the shutdown began: the flush only
    /// finishes writing it.
    resuming: bool,
    /// Most bytes `poll_read` delivers before the shutdown ends with
    /// `drain_limit`, and how many it delivered so far.
    read_limit: Option<u64>,
    delivered_total: u64,
    /// STOPTLS: read-ahead had buffered bytes before the shutdown began, which
    /// may include plaintext past the peer's close_notify.
    transport_tainted: bool,
}

impl<C: Connection> Shutdown<C> {
    /// Prepares a shutdown of `conn` under `policy`. Nothing happens until the first
    /// [`poll`](Shutdown::poll).
    pub fn new(conn: C, policy: &Policy) -> Self {
        Shutdown {
            conn: Held::new(conn),
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
            resuming: false,
            read_limit: None,
            delivered_total: 0,
            transport_tainted: false,
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
        self.set_unsent(data);
        self
    }

    /// [`with_unsent`](Shutdown::with_unsent) in place (the C API's object owns
    /// its machine).
    pub(crate) fn set_unsent(&mut self, data: Vec<u8>) {
        if self.started.is_none() {
            self.unsent = data;
            self.unsent_written = 0;
        }
    }

    /// The error the application's last `SSL_read` or `SSL_write` on this
    /// connection failed with (see `TlsError::from(&openssl::ssl::Error)`). OpenSSL
    /// forbids `SSL_shutdown` after `SSL_ERROR_SYSCALL` or `SSL_ERROR_SSL`, so the
    /// shutdown sends nothing and reports that error: `truncated` for an EOF,
    /// `reset` for a transport error, `peer_alert` with the alert the application
    /// consumed, `protocol_error`. Retry requests and close_notify are not errors
    /// and are ignored. Ignored once the shutdown has started.
    pub fn after_error(mut self, err: TlsError) -> Self {
        self.set_prior_error(err);
        self
    }

    /// [`after_error`](Shutdown::after_error) in place.
    pub(crate) fn set_prior_error(&mut self, err: TlsError) {
        let is_failure = !matches!(
            err,
            TlsError::WantRead | TlsError::WantWrite | TlsError::CloseNotify
        );
        if self.started.is_none() && is_failure {
            self.prior_error = Some(err);
        }
    }

    /// The first [`poll`](Shutdown::poll) has run: the builder methods are ignored
    /// from now on.
    #[cfg(feature = "capi")]
    pub(crate) fn is_started(&self) -> bool {
        self.started.is_some()
    }

    /// Bounds what [`poll_read`](Shutdown::poll_read) delivers: once more than
    /// `bytes` have been delivered, the shutdown ends with
    /// [`Outcome::DrainLimit`] (the call that crossed the limit still returns its
    /// bytes; the caller decides what to do with the excess). Ignored once the
    /// shutdown has started.
    pub fn with_read_limit(mut self, bytes: u64) -> Self {
        if self.started.is_none() {
            self.read_limit = Some(bytes);
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
    /// receive it instead. Data does not extend the wait: the peer's close_notify
    /// must arrive within `peer_timeout`. A call discards at most 64 KiB before it
    /// returns a [`Wait`] whose deadline is the `now` it was given (call again at
    /// once, whatever the socket reports), so that a fast peer cannot keep one call
    /// going.
    pub fn poll(&mut self, now: Instant, ready: Ready) -> Progress {
        self.step(now, ready, None)
    }

    /// Like [`poll`](Shutdown::poll), but application data that arrives after our
    /// close_notify is written to `buf` instead of being discarded: the TLS
    /// half-close, where we are done sending and keep reading until the peer's
    /// close_notify. Returns how many bytes were written to `buf`.
    ///
    /// When it returns `n > 0`, consume the bytes and call again at once, whatever
    /// the socket reports: more may already be buffered. The bytes can come with
    /// [`Progress::Done`] (the call that crossed the read limit or the deadline):
    /// consume them too. Delivered bytes do not count against the drain limit;
    /// they are [`Report::delivered_bytes`], and
    /// [`with_read_limit`](Shutdown::with_read_limit) bounds them. An empty `buf`
    /// reads nothing (the call only checks the deadline).
    ///
    /// The whole wait for the peer's close_notify, data included, is bounded by
    /// the policy's `peer_timeout`, however fast the peer streams: the first call
    /// at or after the deadline reads once more (the close_notify may be there),
    /// and if that read brings data instead, it returns the data with the report,
    /// `timed_out` in stage `await_peer`.
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

    /// Gives the connection back. An unfinished shutdown is abandoned as dropping
    /// it would be: what it changed on the connection (the socket's blocking
    /// mode, `SSL_OP_IGNORE_UNEXPECTED_EOF`, read-ahead, the write BIO) is
    /// restored first. After a [`Mode::StopTls`] shutdown that ended `clean`, pass
    /// the stream to [`into_transport`](crate::into_transport).
    pub fn into_inner(self) -> C {
        self.conn.into_inner()
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
        // OpenSSL flags a received fatal alert as SSL_RECEIVED_SHUTDOWN too. With
        // the alert the application consumed handed over, the flag stands for that
        // alert: no close_notify can have come before it (OpenSSL reads nothing
        // past a close_notify).
        let alert_consumed = matches!(self.prior_error, Some(TlsError::PeerAlert(_)));
        if status.received && !alert_consumed {
            self.initiator = Initiator::Peer;
            self.received = true;
        }
        self.conn.begin();
        if self.policy.mode() == Mode::StopTls {
            self.transport_tainted = self.conn.keep_transport();
        }
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
        if status.sent {
            // The application called SSL_shutdown, or an earlier shutdown was
            // dropped midway: finish writing that close_notify if it is still
            // buffered, then read with SSL_read. A second SSL_shutdown would read
            // itself, and fail on application data the peer may still send.
            log::debug!("closenotify: close_notify already queued; flushing it only");
            self.resuming = true;
        }
        let deadline = now + self.policy.flush_timeout();
        self.flush(now, deadline, out)
    }

    fn flush(&mut self, now: Instant, deadline: Instant, out: Option<&mut [u8]>) -> Progress {
        if self.resuming {
            self.calls += 1;
            return match self.conn.flush_close_notify() {
                Ok(()) => {
                    self.sent = true;
                    self.after_flush(now, out)
                }
                Err(TlsError::WantWrite) => self.flush_wait(now, deadline),
                Err(err) => self.failed(now, err),
            };
        }
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
            Err(TlsError::WantWrite) => self.flush_wait(now, deadline),
            // SSL_shutdown reads only once its close_notify is no longer queued,
            // and after a successful write it answers 0 first. Reading straight
            // after a failed attempt means OpenSSL dropped the alert: 3.2+ gives
            // up on a close_notify queued behind a half-finished application
            // write (ssl3_dispatch_alert), where 3.0 says "bad write retry".
            Err(TlsError::WantRead) => self.failed(
                now,
                TlsError::Unusable {
                    detail: "close_notify dropped by OpenSSL behind a half-finished write",
                },
            ),
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
        if !self.policy.mode().awaits_peer() {
            return self.linger_or_finish(now, Outcome::SentOnly);
        }
        self.enter(Stage::AwaitPeer);
        self.conn.seal();
        let deadline = now + self.policy.peer_timeout();
        if self.speculative_read || self.conn.has_pending() {
            self.await_peer(now, deadline, out)
        } else {
            self.wait_for_peer(deadline, Interest::Read, false)
        }
    }

    /// Waits in the await_peer stage. `data_pending`: data was delivered and more
    /// may be buffered, so the next call reads without waiting for readiness.
    fn wait_for_peer(
        &mut self,
        deadline: Instant,
        interest: Interest,
        data_pending: bool,
    ) -> Progress {
        self.state = State::AwaitPeer {
            deadline,
            interest,
            data_pending,
        };
        Progress::Wait(Wait { interest, deadline })
    }

    fn await_peer(
        &mut self,
        now: Instant,
        deadline: Instant,
        mut out: Option<&mut [u8]>,
    ) -> Progress {
        // Past the deadline one read is still tried, in case the peer's
        // close_notify is already here; application data then ends the stage:
        // the whole answer must arrive within `peer_timeout`, however fast it
        // streams (the data of that last read still counts, and is delivered).
        let late = now >= deadline;
        if out.as_deref().is_some_and(<[u8]>::is_empty) {
            // `poll_read` with no room: read nothing (reading would have to discard
            // what the caller asked to receive), keep waiting.
            if late {
                return self.timed_out(now);
            }
            let data_pending = matches!(
                self.state,
                State::AwaitPeer {
                    data_pending: true,
                    ..
                }
            );
            return self.wait_for_peer(deadline, Interest::Read, data_pending);
        }
        // One retry on buffered bytes per wake-up: OpenSSL may consume a record
        // (a TLS 1.3 ticket, a KeyUpdate) and still answer WANT_READ. A partial
        // record is also "pending" and needs the socket; one retry tells them apart.
        let mut retried_pending = false;
        // Bytes discarded by this call: past `DISCARD_PER_CALL` the machine hands
        // control back (with a wait that is due at once), so that a peer that
        // streams as fast as we read cannot keep one call going: the next call
        // brings a fresh `now` for the deadline check.
        let mut discarded_here = 0u64;
        loop {
            self.calls += 1;
            let read = match out.as_deref_mut() {
                Some(buf) => self.conn.read(buf).map(|n| (n, true)),
                None => self.conn.read_discard().map(|n| (n, false)),
            };
            match read {
                Ok((n, true)) => {
                    self.delivered = n;
                    self.delivered_total += n as u64;
                    if self
                        .read_limit
                        .is_some_and(|limit| self.delivered_total > limit)
                    {
                        return self.finish(now, Outcome::DrainLimit);
                    }
                    if late {
                        return self.timed_out(now);
                    }
                    return self.wait_for_peer(deadline, Interest::Read, true);
                }
                Ok((n, false)) => {
                    self.discarded += n as u64;
                    if self.discarded > self.policy.drain_limit() {
                        return self.finish(now, Outcome::DrainLimit);
                    }
                    if late {
                        return self.timed_out(now);
                    }
                    discarded_here += n as u64;
                    if discarded_here >= DISCARD_PER_CALL {
                        self.state = State::AwaitPeer {
                            deadline,
                            interest: Interest::Read,
                            data_pending: true,
                        };
                        return Progress::Wait(Wait {
                            interest: Interest::Read,
                            deadline: now,
                        });
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
                    if late {
                        return self.timed_out(now);
                    }
                    let interest = if want == TlsError::WantRead {
                        Interest::Read
                    } else {
                        Interest::Write
                    };
                    return self.wait_for_peer(deadline, interest, false);
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
            // Nothing sent: quiet. Once our close_notify is out, a connection
            // that cannot go on is our side's refusal.
            TlsError::Unusable { detail } if !self.sent => {
                self.detail = Some(detail);
                self.conn.set_quiet();
                Outcome::Quiet
            }
            TlsError::Unusable { detail } => {
                self.detail = Some(detail);
                Outcome::ProtocolError
            }
            // Only SSL_shutdown and SSL_write come here (reads handle close_notify
            // themselves). Once the peer's close_notify is in, SSL_get_error says
            // ZERO_RETURN for any failed call, a failed write included: the peer
            // closed properly, but ours did not go out.
            TlsError::CloseNotify => {
                self.received = true;
                self.detail = Some("the peer's close_notify arrived, but ours could not be sent");
                Outcome::Reset
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
        // STOPTLS succeeded only if nothing past the peer's close_notify can be
        // held by OpenSSL (read-ahead the application had turned on may have
        // pulled plaintext into OpenSSL's buffer before the shutdown, beyond reach).
        let stopped = self.policy.mode() == Mode::StopTls && outcome == Outcome::Clean;
        let transport_reusable = stopped && !self.transport_tainted;
        if stopped && self.transport_tainted {
            self.detail = Some("read-ahead had buffered bytes before the shutdown");
        }
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
            delivered_bytes: self.delivered_total,
            transport_reusable,
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

/// The connection under a shutdown, and whether `begin` changed it with no `end`
/// yet: dropping an unfinished shutdown, or taking the connection back, undoes
/// what `begin` (and `seal`, `keep_transport`) changed.
#[derive(Debug)]
struct Held<C: Connection> {
    /// Always `Some` until `into_inner` takes it (consuming the holder).
    conn: Option<C>,
    begun: bool,
}

impl<C: Connection> Held<C> {
    fn new(conn: C) -> Self {
        Held {
            conn: Some(conn),
            begun: false,
        }
    }

    fn begin(&mut self) {
        self.begun = true;
        (**self).begin();
    }

    /// `Connection::end`, once, if `begin` ran.
    fn end(&mut self) {
        if std::mem::take(&mut self.begun) {
            (**self).end();
        }
    }

    fn into_inner(mut self) -> C {
        self.end();
        self.conn.take().expect("the connection is taken only here")
    }
}

impl<C: Connection> std::ops::Deref for Held<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("the connection is taken only by into_inner")
    }
}

impl<C: Connection> std::ops::DerefMut for Held<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("the connection is taken only by into_inner")
    }
}

impl<C: Connection> Drop for Held<C> {
    fn drop(&mut self) {
        if self.conn.is_some() {
            self.end();
        }
    }
}

/// The states that call this always have a wait; keep the type checker honest
/// without a panic path (and with the caller's `now` as the deadline).
#[cold]
fn unreachable_wait(now: Instant) -> Progress {
    debug_assert!(false, "state without a wait");
    Progress::Wait(Wait {
        interest: Interest::Timer,
        deadline: now,
    })
}
