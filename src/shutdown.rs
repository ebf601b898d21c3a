//! [`Shutdown`]: the state machine and its connection, for callers' own loops.

use std::time::Instant;

use crate::machine::{Connection, Machine, Progress, Ready, Setup, TlsError, Wait};
use crate::policy::Policy;
use crate::report::Report;

/// One connection being shut down: the state machine flush -> half-close ->
/// await_peer -> linger, with the connection it drives.
///
/// It never sleeps: every [`poll`](Shutdown::poll) takes `now` and what the
/// socket reported, and answers [`Progress::Wait`] (wait for READ or WRITE
/// readiness, or only for time, at the latest until a deadline) or
/// [`Progress::Done`] with the [`Report`]. Your loop owns the waiting, and the
/// clock: the deadlines and [`Report::elapsed`] are measured with the `now`
/// values you pass, which must be the current time. A `now` that lags behind
/// real time counts as the current time, so that a stale value never makes the
/// shutdown run past its policy or report less than the time that passed.
///
/// Call order: the builder methods ([`with_unsent`](Shutdown::with_unsent),
/// [`after_error`](Shutdown::after_error),
/// [`with_read_limit`](Shutdown::with_read_limit)), then
/// [`poll`](Shutdown::poll) once to start, then again each time the socket
/// reports the [`Interest`](crate::Interest) of the last [`Wait`] or its deadline
/// passes, until [`Progress::Done`].
///
/// Dropping an unfinished shutdown (or taking the connection back with
/// [`into_inner`](Shutdown::into_inner)) restores what it changed on the
/// connection: the socket's blocking mode, `SSL_OP_IGNORE_UNEXPECTED_EOF`,
/// read-ahead, the write BIO.
#[derive(Debug)]
pub struct Shutdown<C: Connection> {
    /// Always `Some`, until `into_inner` takes it (consuming the shutdown).
    conn: Option<C>,
    machine: Machine,
    clock: Clock,
}

/// Where the `now` values come from.
#[derive(Clone, Copy, Debug)]
enum Clock {
    /// A caller's: a stale `now` is raised to the real time since the first call.
    Callers(Option<(Instant, Instant)>),
    /// One of this crate's adapters, which always passes the current time of the
    /// clock it runs on (std's, or tokio's, under a paused runtime): `now` is
    /// taken as it is, and the clock is read once more when a call ends the
    /// shutdown (the time that call took).
    Adapter(fn() -> Instant),
}

impl Clock {
    /// The time a call ended, on the clock `now` comes from (read only for the
    /// call that made the report).
    fn end_of_call(self) -> Instant {
        match self {
            Clock::Callers(_) => Instant::now(),
            Clock::Adapter(clock) => clock(),
        }
    }
}

impl<C: Connection> Shutdown<C> {
    /// Prepares a shutdown of `conn` under `policy`. Nothing happens until the
    /// first [`poll`](Shutdown::poll).
    pub fn new(conn: C, policy: &Policy) -> Self {
        Shutdown {
            conn: Some(conn),
            machine: Machine::new(policy),
            clock: Clock::Callers(None),
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
        if let Some(setup) = self.machine.setup() {
            setup.unsent = data;
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
        if let Some(setup) = self.machine.setup() {
            setup.set_prior_error(err);
        }
        self
    }

    /// Bounds what [`poll_read`](Shutdown::poll_read) delivers: once more than
    /// `bytes` have been delivered, the shutdown ends with
    /// [`Outcome::DrainLimit`](crate::Outcome::DrainLimit), and exactly `bytes`
    /// have been delivered: the call that crossed the limit returns the bytes up to
    /// it only (the rest of its buffer is not the caller's), and
    /// [`Report::delivered_bytes`](crate::Report::delivered_bytes) is `bytes`.
    /// Ignored once the shutdown has started.
    pub fn with_read_limit(mut self, bytes: u64) -> Self {
        if let Some(setup) = self.machine.setup() {
            setup.read_limit = Some(bytes);
        }
        self
    }

    /// The setup before the first call (`None` once started), for the crate's
    /// adapters: level-triggered readiness, a connection closed after its report,
    /// the C API's setters.
    pub(crate) fn setup(&mut self) -> Option<&mut Setup> {
        self.machine.setup()
    }

    /// The same shutdown over another form of its connection (the Closer's
    /// backend for the stream it was given), before the first call.
    pub(crate) fn map_conn<D: Connection>(mut self, f: impl FnOnce(C) -> D) -> Shutdown<D> {
        debug_assert!(!self.machine.is_started(), "mapped after the start");
        let conn = f(self.conn.take().expect(TAKEN));
        let policy = self.machine.policy().clone();
        let machine = std::mem::replace(&mut self.machine, Machine::new(&policy));
        Shutdown {
            conn: Some(conn),
            machine,
            clock: self.clock,
        }
    }

    /// The `now` values come from one of this crate's adapters, always current
    /// on `clock`: they are taken as they are.
    pub(crate) fn adapter_clock(&mut self, clock: fn() -> Instant) {
        self.clock = Clock::Adapter(clock);
    }

    /// The first [`poll`](Shutdown::poll) has run: the builder methods are ignored
    /// from now on.
    #[cfg(any(feature = "capi", test))]
    pub(crate) fn is_started(&self) -> bool {
        self.machine.is_started()
    }

    /// Drives the shutdown. `now` is the current time; `ready` is what the socket
    /// reported since the last call ([`Ready::NONE`] for a timer wake-up,
    /// [`Ready::ALL`] when unknown). Returns the next [`Wait`] or the [`Report`].
    ///
    /// A wake-up that does not match what the machine waits for, before the
    /// deadline, is a no-op (no OpenSSL call).
    ///
    /// Application data that arrives after our close_notify is discarded (and
    /// counted) up to the drain limit; use [`poll_read`](Shutdown::poll_read) to
    /// receive it instead. Data does not extend the wait: the peer's close_notify
    /// must arrive within `peer_timeout`. A call discards at most 64 KiB before it
    /// returns a [`Wait`] whose deadline is the `now` it was given (call again at
    /// once, whatever the socket reports), so that a fast peer cannot keep one call
    /// going.
    pub fn poll(&mut self, now: Instant, ready: Ready) -> Progress {
        self.drive(now, ready, None).1
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
        self.drive(now, ready, Some(buf))
    }

    /// One call of the machine. A report it made now gets the time this call
    /// took (the machine only knows the `now` of its start), and is kept on the
    /// connection for a second shutdown.
    fn drive(&mut self, now: Instant, ready: Ready, out: Option<&mut [u8]>) -> (usize, Progress) {
        let now = self.now(now);
        let conn = self.conn.as_mut().expect(TAKEN);
        let (n, progress) = self.machine.poll(conn, now, ready, out);
        let saves = self.machine.saves_report();
        let clock = self.clock;
        let Some(report) = self.machine.take_fresh_report() else {
            return (n, progress);
        };
        report.elapsed += clock.end_of_call().saturating_duration_since(now);
        let report = *report;
        if saves {
            self.conn.as_mut().expect(TAKEN).save_report(&report);
        }
        (n, Progress::Done(report))
    }

    /// The `now` to hand the machine.
    fn now(&mut self, now: Instant) -> Instant {
        match &mut self.clock {
            Clock::Adapter(_) => now,
            Clock::Callers(origin @ None) => {
                *origin = Some((now, Instant::now()));
                now
            }
            Clock::Callers(Some((first, real))) => now.max(*first + real.elapsed()),
        }
    }

    /// The report, once the shutdown is done.
    pub fn report(&self) -> Option<Report> {
        self.machine.report()
    }

    /// What the machine waits for now; `None` before the first call and when done.
    pub fn waiting(&self) -> Option<Wait> {
        self.machine.waiting()
    }

    /// The policy this shutdown runs under.
    pub fn policy(&self) -> &Policy {
        self.machine.policy()
    }

    /// The connection.
    pub fn get_ref(&self) -> &C {
        self.conn.as_ref().expect(TAKEN)
    }

    /// The connection, mutably. Reading or writing it while the shutdown runs breaks
    /// the shutdown.
    pub fn get_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect(TAKEN)
    }

    /// Gives the connection back. An unfinished shutdown is abandoned as dropping
    /// it would be: what it changed on the connection (the socket's blocking
    /// mode, `SSL_OP_IGNORE_UNEXPECTED_EOF`, read-ahead, the write BIO) is
    /// restored first. After a [`Mode::StopTls`](crate::Mode::StopTls) shutdown
    /// that ended `clean`, pass the stream to [`into_transport`](crate::into_transport).
    pub fn into_inner(mut self) -> C {
        let mut conn = self.conn.take().expect(TAKEN);
        self.machine.abandon(&mut conn);
        conn
    }
}

/// `conn` is `None` only inside `into_inner`, which consumes the shutdown.
const TAKEN: &str = "the connection is taken only by into_inner";

impl<C: Connection> Drop for Shutdown<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            self.machine.abandon(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::script::Script;
    use crate::machine::ShutdownAnswer;
    use crate::report::Outcome;
    use std::time::Duration;

    fn policy() -> Policy {
        Policy::builder()
            .flush_timeout(Duration::from_millis(100))
            .peer_timeout(Duration::from_millis(300))
            .build()
            .unwrap()
    }

    #[test]
    fn dropping_an_unfinished_shutdown_restores_the_connection() {
        let t0 = Instant::now();
        let mut holder = Script::usable().shutdown(Err(TlsError::WantWrite));
        {
            let mut sd = Shutdown::new(&mut holder, &policy());
            let _ = sd.poll(t0, Ready::NONE);
        }
        assert_eq!((holder.began, holder.ended), (1, 1));
        assert!(holder.saved.is_none());
    }

    #[test]
    fn into_inner_hands_the_connection_back_restored_once() {
        let t0 = Instant::now();
        // Unfinished: what begin changed is undone, once.
        let mut sd = Shutdown::new(
            Script::usable().shutdown(Err(TlsError::WantWrite)),
            &policy(),
        );
        let _ = sd.poll(t0, Ready::NONE);
        let conn = sd.into_inner();
        assert_eq!((conn.began, conn.ended), (1, 1));
        // Never started: nothing to undo.
        let conn = Shutdown::new(Script::usable(), &policy()).into_inner();
        assert_eq!((conn.began, conn.ended), (0, 0));
        // Finished: end ran with the report, not again.
        let conn = Script::usable()
            .shutdown(Ok(ShutdownAnswer::Sent))
            .read(Err(TlsError::CloseNotify));
        let mut sd = Shutdown::new(conn, &policy());
        match sd.poll(t0, Ready::NONE) {
            Progress::Done(r) => assert_eq!(r.outcome, Outcome::Clean),
            Progress::Wait(w) => panic!("waits: {w:?}"),
        }
        let conn = sd.into_inner();
        assert_eq!((conn.began, conn.ended), (1, 1));
    }

    /// A shutdown that ends in the call that starts it reports the time that
    /// call took, saved with the report for a second shutdown.
    #[test]
    fn a_one_call_shutdown_reports_the_time_it_took() {
        let mut conn = Script::usable().shutdown(Ok(ShutdownAnswer::Received));
        conn.status.as_mut().unwrap().received = true;
        conn.shutdown_takes = Duration::from_millis(5);
        let mut holder = conn;
        let mut sd = Shutdown::new(&mut holder, &policy());
        let r = match sd.poll(Instant::now(), Ready::NONE) {
            Progress::Done(r) => r,
            Progress::Wait(w) => panic!("waits: {w:?}"),
        };
        assert!(r.elapsed >= Duration::from_millis(5), "{:?}", r.elapsed);
        assert_eq!(sd.report(), Some(r));
        drop(sd);
        assert_eq!(holder.saved, Some(r), "the saved report is the same");
    }

    /// A stale `now` counts as the time that really passed: the deadline and the
    /// report follow real time.
    #[test]
    fn a_stale_now_is_raised_to_real_time() {
        let stale = Instant::now();
        let conn = Script::usable()
            .shutdown(Ok(ShutdownAnswer::Sent))
            .read(Err(TlsError::WantRead));
        let mut sd = Shutdown::new(conn, &policy());
        let w = match sd.poll(stale, Ready::NONE) {
            Progress::Wait(w) => w,
            Progress::Done(r) => panic!("done: {r}"),
        };
        std::thread::sleep(w.deadline - stale);
        match sd.poll(stale, Ready::NONE) {
            Progress::Done(r) => {
                assert_eq!(r.outcome, Outcome::TimedOut);
                assert!(r.elapsed >= Duration::from_millis(300), "{:?}", r.elapsed);
            }
            Progress::Wait(w) => panic!("the stale now held the deadline off: {w:?}"),
        }
    }
}
