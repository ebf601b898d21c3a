//! The shutdown state machine: flush -> half-close -> await_peer -> linger.
//!
//! Sans-IO: [`Machine`] owns no clock and no I/O type. Every call takes the
//! connection (through the [`Connection`] trait: OpenSSL in production, a
//! scripted fake in the unit and property tests), `now`, and what the socket
//! reported; it answers [`Progress::Wait`] (wait for READ or WRITE readiness, or
//! only for time, at the latest until a deadline) or [`Progress::Done`] with the
//! [`Report`]. Deadlines and [`Report::elapsed`] come only from the `now` values
//! it is given, so a test on a fake clock gets exact times by construction. The
//! adapters own the clock and the waiting: [`Shutdown`](crate::Shutdown) for
//! callers' own loops, the blocking calls, the [`Closer`](crate::Closer), the C
//! API and the tokio driver.
//!
//! This module uses std and the crate's own types only.

mod connection;
mod wait;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod script;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use crate::policy::{Mode, Policy, ResetOnTimeout};
use crate::report::{
    Alert, AlertDirection, AlertLevel, AlertRecord, Initiator, Outcome, Report, Stage, TlsVersion,
};

pub use self::connection::{Connection, ShutdownAnswer, Status, TlsError};
pub use self::wait::{Interest, Progress, Ready, Wait};

/// First and longest pause between two checks of the send queue in the linger stage.
const LINGER_FIRST_CHECK: Duration = Duration::from_millis(1);
const LINGER_MAX_CHECK: Duration = Duration::from_millis(50);

/// Most application bytes one call discards before it hands control back (four
/// full records): the caller's next call brings a fresh `now`.
const DISCARD_PER_CALL: u64 = 64 * 1024;

/// What the caller hands over before the shutdown starts; ignored once it has.
#[derive(Debug, Default)]
pub(crate) struct Setup {
    /// Application data to write before close_notify (a write the application
    /// left half-finished, then more).
    pub unsent: Vec<u8>,
    /// The failure the application already saw on this connection.
    pub prior_error: Option<TlsError>,
    /// Most bytes `poll_read` delivers before the shutdown ends with
    /// `drain_limit`.
    pub read_limit: Option<u64>,
    /// Readiness will be reported for bytes already waiting in the socket (a
    /// level-triggered `poll(2)`, or a registration made after the first call):
    /// no read is tried before the first wait for the peer.
    pub level_readiness: bool,
    /// The connection is closed right after the report (the Closer): the report
    /// is not kept on it for a second shutdown.
    pub closed_after_report: bool,
}

impl Setup {
    /// Hands over the application's failure; retry requests and close_notify
    /// are not failures and are ignored.
    pub fn set_prior_error(&mut self, err: TlsError) {
        let is_failure = !matches!(
            err,
            TlsError::WantRead | TlsError::WantWrite | TlsError::CloseNotify
        );
        if is_failure {
            self.prior_error = Some(err);
        }
    }
}

/// The facts the report is built from, gathered as the shutdown goes.
#[derive(Debug)]
struct Facts {
    /// The `now` of the first call.
    started: Instant,
    initiator: Initiator,
    stage: Stage,
    sent: bool,
    received: bool,
    half_closed: bool,
    discarded: u64,
    delivered: u64,
    calls: u32,
    version: Option<TlsVersion>,
    alert: Option<AlertRecord>,
    os_error: Option<i32>,
    detail: Option<&'static str>,
    linger_bytes: Option<u64>,
    /// STOPTLS: read-ahead had buffered bytes before the shutdown began, which
    /// may include plaintext past the peer's close_notify.
    transport_tainted: bool,
    /// `Connection::begin` ran and `Connection::end` has not yet.
    begun: bool,
    /// The report was made by this machine and not yet taken by its driver
    /// (`Machine::take_fresh_report`).
    fresh: bool,
}

impl Facts {
    fn new(started: Instant) -> Facts {
        Facts {
            started,
            initiator: Initiator::Local,
            stage: Stage::Flush,
            sent: false,
            received: false,
            half_closed: false,
            discarded: 0,
            delivered: 0,
            calls: 0,
            version: None,
            alert: None,
            os_error: None,
            detail: None,
            linger_bytes: None,
            transport_tainted: false,
            begun: false,
            fresh: false,
        }
    }
}

/// Where the shutdown stands, with each stage's own data.
#[derive(Debug)]
enum State {
    /// Not started: the setup can still change.
    Idle(Setup),
    Flush {
        deadline: Instant,
        /// Our close_notify was queued before the shutdown began: only finish
        /// writing it.
        resuming: bool,
        /// Application data to write first, and how much of it is written.
        unsent: Vec<u8>,
        written: usize,
    },
    AwaitPeer {
        deadline: Instant,
        interest: Interest,
        /// Data was delivered or the read budget spent: more may be buffered,
        /// so the next call reads without waiting for readiness.
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

impl State {
    /// What this state waits for; `None` before the first call and when done.
    fn wait(&self) -> Option<Wait> {
        match *self {
            State::Flush { deadline, .. } => Some(Wait {
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
            State::Idle(_) | State::Done(_) => None,
        }
    }
}

/// The state machine of one shutdown, without its connection: every call is
/// handed the connection, `now` and the readiness (see the module documentation).
#[derive(Debug)]
pub(crate) struct Machine {
    policy: Policy,
    state: State,
    /// `None` until the first call.
    facts: Option<Facts>,
    /// Setup that outlives the start.
    read_limit: Option<u64>,
    level_readiness: bool,
    save_report: bool,
}

impl Machine {
    pub fn new(policy: &Policy) -> Machine {
        Machine {
            policy: policy.clone(),
            state: State::Idle(Setup::default()),
            facts: None,
            read_limit: None,
            level_readiness: false,
            save_report: true,
        }
    }

    /// The setup, until the first call; `None` once the shutdown has started.
    pub fn setup(&mut self) -> Option<&mut Setup> {
        match &mut self.state {
            State::Idle(setup) => Some(setup),
            _ => None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn is_started(&self) -> bool {
        !matches!(self.state, State::Idle(_))
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
        self.state.wait()
    }

    /// The report this machine made in the last call, once: its driver completes
    /// it (the time the last call itself took, which the machine, given only the
    /// `now` of its start, cannot know) and keeps it on the connection when
    /// [`saves_report`](Machine::saves_report) says so. `None` for a report found
    /// on the connection, and on every later call.
    pub fn take_fresh_report(&mut self) -> Option<&mut Report> {
        let facts = self.facts.as_mut()?;
        match &mut self.state {
            State::Done(report) if std::mem::take(&mut facts.fresh) => Some(report),
            _ => None,
        }
    }

    /// Whether the final report is to be kept on the connection, for a second
    /// shutdown (off when the connection is closed right after, as in the Closer).
    pub fn saves_report(&self) -> bool {
        self.save_report
    }

    /// OpenSSL calls made so far.
    #[cfg(test)]
    pub fn calls(&self) -> u32 {
        self.facts.as_ref().map_or(0, |f| f.calls)
    }

    /// Abandons an unfinished shutdown: undoes what `Connection::begin` changed.
    pub fn abandon<C: Connection + ?Sized>(&mut self, conn: &mut C) {
        if let Some(facts) = self.facts.as_mut() {
            if std::mem::take(&mut facts.begun) {
                conn.end();
            }
        }
    }

    /// One step: `out` is `poll_read`'s buffer (`None`: data is discarded).
    /// Returns the bytes delivered to `out`, and what comes next.
    pub fn poll<C: Connection + ?Sized>(
        &mut self,
        conn: &mut C,
        now: Instant,
        ready: Ready,
        out: Option<&mut [u8]>,
    ) -> (usize, Progress) {
        let mut step = Step {
            policy: &self.policy,
            read_limit: self.read_limit,
            level_readiness: self.level_readiness,
            conn,
            now,
            delivered: 0,
        };
        let progress = match &mut self.state {
            State::Done(report) => Progress::Done(*report),
            State::Idle(setup) => {
                let setup = std::mem::take(setup);
                self.read_limit = setup.read_limit;
                self.level_readiness = setup.level_readiness;
                self.save_report = !setup.closed_after_report;
                step.read_limit = self.read_limit;
                step.level_readiness = self.level_readiness;
                let facts = self.facts.insert(Facts::new(now));
                step.start(facts, &mut self.state, setup, out)
            }
            State::Flush { deadline, .. } => {
                let deadline = *deadline;
                let facts = self.facts.as_mut().expect("started");
                if ready.writable {
                    step.flush(facts, &mut self.state, out)
                } else {
                    step.idle(facts, &mut self.state, deadline)
                }
            }
            State::AwaitPeer {
                deadline,
                interest,
                data_pending,
            } => {
                let (deadline, interest, data_pending) = (*deadline, *interest, *data_pending);
                let facts = self.facts.as_mut().expect("started");
                let hit = data_pending
                    || match interest {
                        Interest::Read => ready.readable,
                        Interest::Write => ready.writable,
                        Interest::Timer => false,
                    };
                if hit {
                    step.await_peer(facts, &mut self.state, deadline, data_pending, out)
                } else {
                    step.idle(facts, &mut self.state, deadline)
                }
            }
            State::Linger { next_check, .. } => {
                let next_check = *next_check;
                let facts = self.facts.as_mut().expect("started");
                if now >= next_check {
                    step.linger(facts, &mut self.state)
                } else {
                    Progress::Wait(Wait {
                        interest: Interest::Timer,
                        deadline: next_check,
                    })
                }
            }
        };
        (step.delivered, progress)
    }
}

/// One call of the machine: what it was given, and what it delivered.
struct Step<'a, C: Connection + ?Sized> {
    policy: &'a Policy,
    read_limit: Option<u64>,
    level_readiness: bool,
    conn: &'a mut C,
    now: Instant,
    /// Bytes written to `poll_read`'s buffer by this call.
    delivered: usize,
}

impl<C: Connection + ?Sized> Step<'_, C> {
    fn start(
        &mut self,
        facts: &mut Facts,
        state: &mut State,
        setup: Setup,
        out: Option<&mut [u8]>,
    ) -> Progress {
        if let Some(report) = self.conn.saved_report() {
            log::debug!("closenotify: shutdown already done: {report}");
            *state = State::Done(report);
            return Progress::Done(report);
        }
        let status = self.conn.status();
        facts.version = status.version;
        // OpenSSL flags a received fatal alert as SSL_RECEIVED_SHUTDOWN too. With
        // the alert the application consumed handed over, the flag stands for that
        // alert: no close_notify can have come before it (OpenSSL reads nothing
        // past a close_notify).
        let alert_consumed = matches!(setup.prior_error, Some(TlsError::PeerAlert(_)));
        if status.received && !alert_consumed {
            facts.initiator = Initiator::Peer;
            facts.received = true;
        }
        self.conn.begin();
        facts.begun = true;
        if self.policy.mode() == Mode::StopTls {
            facts.transport_tainted = self.conn.keep_transport();
        } else {
            self.conn.read_ahead();
        }
        if let Some(err) = setup.prior_error {
            log::debug!("closenotify: the application already saw {err:?}; sending nothing");
            self.conn.set_quiet();
            return self.failed(facts, state, err);
        }
        if self.policy.mode() == Mode::Quiet || !status.usable {
            let why = if status.usable {
                "by policy"
            } else {
                "handshake unfinished or fatal error"
            };
            log::debug!("closenotify: quiet shutdown ({why})");
            facts.detail = Some(why);
            self.conn.set_quiet();
            return self.finish(facts, state, Outcome::Quiet);
        }
        if status.sent {
            // The application called SSL_shutdown, or an earlier shutdown was
            // dropped midway: finish writing that close_notify if it is still
            // buffered, then read with SSL_read. A second SSL_shutdown would read
            // itself, and fail on application data the peer may still send.
            log::debug!("closenotify: close_notify already queued; flushing it only");
        }
        *state = State::Flush {
            deadline: self.now + self.policy.flush_timeout(),
            resuming: status.sent,
            unsent: setup.unsent,
            written: 0,
        };
        self.flush(facts, state, out)
    }

    fn flush(&mut self, facts: &mut Facts, state: &mut State, out: Option<&mut [u8]>) -> Progress {
        let State::Flush {
            deadline,
            resuming,
            unsent,
            written,
        } = state
        else {
            return unreachable_wait(self.now);
        };
        let deadline = *deadline;
        if *resuming {
            facts.calls += 1;
            return match self.conn.flush_close_notify() {
                Ok(()) => {
                    facts.sent = true;
                    self.after_flush(facts, state, out)
                }
                Err(TlsError::WantWrite) => self.flush_wait(facts, state, deadline),
                Err(err) => self.failed(facts, state, err),
            };
        }
        while *written < unsent.len() {
            facts.calls += 1;
            match self.conn.write(&unsent[*written..]) {
                Ok(n) => *written += n,
                Err(TlsError::WantWrite | TlsError::WantRead) => {
                    return self.flush_wait(facts, state, deadline);
                }
                Err(err) => return self.failed(facts, state, err),
            }
        }
        if !unsent.is_empty() {
            *unsent = Vec::new(); // all written: free it
        }
        facts.calls += 1;
        match self.conn.shutdown() {
            Ok(answer) => {
                facts.sent = true;
                facts.received |= answer == ShutdownAnswer::Received;
                self.after_flush(facts, state, out)
            }
            Err(TlsError::WantWrite) => self.flush_wait(facts, state, deadline),
            // SSL_shutdown reads only once its close_notify is no longer queued,
            // and after a successful write it answers 0 first. Reading straight
            // after a failed attempt means OpenSSL dropped the alert: 3.2+ gives
            // up on a close_notify queued behind a half-finished application
            // write (ssl3_dispatch_alert), where 3.0 says "bad write retry".
            Err(TlsError::WantRead) => self.failed(
                facts,
                state,
                TlsError::Unusable {
                    detail: "close_notify dropped by OpenSSL behind a half-finished write",
                },
            ),
            Err(err) => self.failed(facts, state, err),
        }
    }

    fn flush_wait(&mut self, facts: &mut Facts, state: &mut State, deadline: Instant) -> Progress {
        if self.now >= deadline {
            return self.timed_out(facts, state);
        }
        Progress::Wait(Wait {
            interest: Interest::Write,
            deadline,
        })
    }

    fn after_flush(
        &mut self,
        facts: &mut Facts,
        state: &mut State,
        out: Option<&mut [u8]>,
    ) -> Progress {
        if self.policy.half_close() {
            self.enter(facts, Stage::HalfClose);
            match self.conn.half_close() {
                Ok(()) => facts.half_closed = true,
                // ENOTCONN: the peer already reset the connection; the next stage
                // (or the report) says so.
                Err(err) => log::debug!("closenotify: shutdown(SHUT_WR) failed: {err}"),
            }
        }
        if facts.received {
            return self.linger_or_finish(facts, state, Outcome::Clean);
        }
        if !self.policy.mode().awaits_peer() {
            return self.linger_or_finish(facts, state, Outcome::SentOnly);
        }
        self.enter(facts, Stage::AwaitPeer);
        self.conn.seal();
        let deadline = self.now + self.policy.peer_timeout();
        *state = State::AwaitPeer {
            deadline,
            interest: Interest::Read,
            data_pending: false,
        };
        if !self.level_readiness || self.conn.has_pending() {
            self.await_peer(facts, state, deadline, false, out)
        } else {
            Progress::Wait(Wait {
                interest: Interest::Read,
                deadline,
            })
        }
    }

    fn await_peer(
        &mut self,
        facts: &mut Facts,
        state: &mut State,
        deadline: Instant,
        data_pending: bool,
        mut out: Option<&mut [u8]>,
    ) -> Progress {
        // Past the deadline one read is still tried, in case the peer's
        // close_notify is already here; application data then ends the stage:
        // the whole answer must arrive within `peer_timeout`, however fast it
        // streams (the data of that last read still counts, and is delivered).
        let late = self.now >= deadline;
        let mut wait = |interest: Interest, data_pending: bool| {
            *state = State::AwaitPeer {
                deadline,
                interest,
                data_pending,
            };
            Progress::Wait(Wait { interest, deadline })
        };
        if out.as_deref().is_some_and(<[u8]>::is_empty) {
            // `poll_read` with no room: read nothing (reading would have to discard
            // what the caller asked to receive), keep waiting.
            if late {
                return self.timed_out(facts, state);
            }
            return wait(Interest::Read, data_pending);
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
            facts.calls += 1;
            let read = match out.as_deref_mut() {
                Some(buf) => self.conn.read(buf).map(|n| (n, true)),
                None => self.conn.read_discard().map(|n| (n, false)),
            };
            match read {
                Ok((n, true)) => {
                    self.delivered = n;
                    facts.delivered += n as u64;
                    if let Some(limit) = self.read_limit.filter(|&l| facts.delivered > l) {
                        // The bytes past the limit only show that the peer went
                        // past it: they are not delivered.
                        self.delivered -= (facts.delivered - limit) as usize;
                        facts.delivered = limit;
                        return self.finish(facts, state, Outcome::DrainLimit);
                    }
                    if late {
                        return self.timed_out(facts, state);
                    }
                    return wait(Interest::Read, true);
                }
                Ok((n, false)) => {
                    facts.discarded += n as u64;
                    if facts.discarded > self.policy.drain_limit() {
                        return self.finish(facts, state, Outcome::DrainLimit);
                    }
                    if late {
                        return self.timed_out(facts, state);
                    }
                    discarded_here += n as u64;
                    if discarded_here >= DISCARD_PER_CALL {
                        let _ = wait(Interest::Read, true);
                        return Progress::Wait(Wait {
                            interest: Interest::Read,
                            deadline: self.now,
                        });
                    }
                    retried_pending = false;
                }
                Err(TlsError::CloseNotify) => {
                    facts.received = true;
                    return self.linger_or_finish(facts, state, Outcome::Clean);
                }
                Err(want @ (TlsError::WantRead | TlsError::WantWrite)) => {
                    if want == TlsError::WantRead && !retried_pending && self.conn.has_pending() {
                        retried_pending = true;
                        continue;
                    }
                    if late {
                        return self.timed_out(facts, state);
                    }
                    let interest = if want == TlsError::WantRead {
                        Interest::Read
                    } else {
                        Interest::Write
                    };
                    return wait(interest, false);
                }
                Err(err) => return self.failed(facts, state, err),
            }
        }
    }

    fn linger_or_finish(
        &mut self,
        facts: &mut Facts,
        state: &mut State,
        outcome: Outcome,
    ) -> Progress {
        let timeout = self.policy.linger_timeout();
        if timeout.is_zero() {
            return self.finish(facts, state, outcome);
        }
        self.enter(facts, Stage::Linger);
        *state = State::Linger {
            outcome,
            deadline: self.now + timeout,
            next_check: self.now,
            backoff: LINGER_FIRST_CHECK,
        };
        self.linger(facts, state)
    }

    fn linger(&mut self, facts: &mut Facts, state: &mut State) -> Progress {
        let State::Linger {
            outcome,
            deadline,
            next_check,
            backoff,
        } = state
        else {
            return unreachable_wait(self.now);
        };
        let (outcome, deadline) = (*outcome, *deadline);
        let queued = self.conn.send_queue_len();
        if let Ok(n) = queued {
            if facts.linger_bytes.is_none() {
                log::debug!("closenotify: linger: {n} bytes in the send queue");
                facts.linger_bytes = Some(n as u64);
            }
        }
        match queued {
            Ok(0) => self.finish(facts, state, outcome),
            Ok(queued) => {
                if self.now >= deadline {
                    log::debug!("closenotify: linger timed out with {queued} bytes queued");
                    return self.timed_out(facts, state);
                }
                *next_check = (self.now + *backoff).min(deadline);
                *backoff = (*backoff * 2).min(LINGER_MAX_CHECK);
                Progress::Wait(Wait {
                    interest: Interest::Timer,
                    deadline: *next_check,
                })
            }
            Err(err) => {
                // Not a TCP socket, or already gone: nothing to wait for.
                log::debug!("closenotify: cannot read the send queue: {err}");
                self.finish(facts, state, outcome)
            }
        }
    }

    /// A wake-up that does not match what we wait for: a no-op before the deadline.
    fn idle(&mut self, facts: &mut Facts, state: &mut State, deadline: Instant) -> Progress {
        if self.now >= deadline {
            return self.timed_out(facts, state);
        }
        state
            .wait()
            .map_or_else(|| unreachable_wait(self.now), Progress::Wait)
    }

    fn timed_out(&mut self, facts: &mut Facts, state: &mut State) -> Progress {
        let reset = match self.policy.reset_on_timeout() {
            ResetOnTimeout::Never => false,
            ResetOnTimeout::FlushOnly => facts.stage == Stage::Flush,
            ResetOnTimeout::Always => true,
        };
        if reset {
            if let Err(err) = self.conn.arm_reset() {
                log::debug!("closenotify: cannot arm the reset: {err}");
                facts.detail = Some("the reset on timeout could not be armed (SO_LINGER failed)");
            }
        }
        self.finish(facts, state, Outcome::TimedOut)
    }

    fn failed(&mut self, facts: &mut Facts, state: &mut State, err: TlsError) -> Progress {
        let outcome = match err {
            TlsError::Eof => Outcome::Truncated,
            TlsError::Os(errno) => {
                facts.os_error = Some(errno);
                Outcome::Reset
            }
            TlsError::PeerAlert(code) => {
                facts.alert = Some(AlertRecord::new(
                    Alert::from_code(code),
                    AlertDirection::Received,
                    AlertLevel::Fatal,
                ));
                Outcome::PeerAlert
            }
            TlsError::Protocol { alert, detail } => {
                facts.alert = alert.map(|code| {
                    AlertRecord::new(
                        Alert::from_code(code),
                        AlertDirection::Sent,
                        AlertLevel::Fatal,
                    )
                });
                facts.detail = Some(detail);
                Outcome::ProtocolError
            }
            // Nothing sent: quiet. Once our close_notify is out, a connection
            // that cannot go on is our side's refusal.
            TlsError::Unusable { detail } if !facts.sent => {
                facts.detail = Some(detail);
                self.conn.set_quiet();
                Outcome::Quiet
            }
            TlsError::Unusable { detail } => {
                facts.detail = Some(detail);
                Outcome::ProtocolError
            }
            // Only SSL_shutdown and SSL_write come here (reads handle close_notify
            // themselves). Once the peer's close_notify is in, SSL_get_error says
            // ZERO_RETURN for any failed call, a failed write included: the peer
            // closed properly, but ours did not go out.
            TlsError::CloseNotify => {
                facts.received = true;
                facts.detail = Some("the peer's close_notify arrived, but ours could not be sent");
                Outcome::Reset
            }
            TlsError::WantRead | TlsError::WantWrite => {
                facts.detail = Some("unexpected retry request");
                Outcome::ProtocolError
            }
        };
        self.finish(facts, state, outcome)
    }

    fn finish(&mut self, facts: &mut Facts, state: &mut State, outcome: Outcome) -> Progress {
        let keep = outcome.is_orderly()
            || (outcome == Outcome::Truncated && self.policy.keep_session_on_truncation());
        if !keep {
            self.conn.forget_session();
        }
        // The alerts OpenSSL saw, and the one behind the outcome if it did not
        // pass through OpenSSL (kept off the wire, or consumed by the application).
        // (An alert OpenSSL saw keeps the level it had on the wire: a TLS 1.3 peer's
        // warning is an error all the same.)
        let mut alerts = self.conn.alerts();
        if let Some(alert) = facts.alert {
            let seen = alerts
                .iter()
                .find(|a| (a.alert, a.direction) == (alert.alert, alert.direction));
            match seen {
                Some(seen) => facts.alert = Some(seen),
                None => alerts.push_last(alert),
            }
        }
        if std::mem::take(&mut facts.begun) {
            self.conn.end();
        }
        // STOPTLS succeeded only if nothing past the peer's close_notify can be
        // held by OpenSSL (read-ahead the application had turned on may have
        // pulled plaintext into OpenSSL's buffer before the shutdown, beyond reach).
        let stopped = self.policy.mode() == Mode::StopTls && outcome == Outcome::Clean;
        let transport_reusable = stopped && !facts.transport_tainted;
        if stopped && facts.transport_tainted {
            facts.detail = Some("read-ahead had buffered bytes before the shutdown");
        }
        let report = Report {
            outcome,
            initiator: facts.initiator,
            stage: facts.stage,
            close_notify_sent: facts.sent,
            close_notify_received: facts.received,
            half_closed: facts.half_closed,
            alert: facts.alert,
            alerts,
            os_error: facts.os_error,
            discarded_bytes: facts.discarded,
            delivered_bytes: facts.delivered,
            elapsed: self.now.saturating_duration_since(facts.started),
            session_resumable: self.conn.session_resumable(),
            tls_version: facts.version,
            detail: facts.detail,
            linger_bytes: facts.linger_bytes,
            transport_reusable,
            ssl_calls: facts.calls,
        };
        facts.fresh = true;
        log::debug!("closenotify: done: {report}");
        *state = State::Done(report);
        Progress::Done(report)
    }

    fn enter(&mut self, facts: &mut Facts, stage: Stage) {
        log::debug!("closenotify: {} -> {}", facts.stage, stage);
        facts.stage = stage;
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
