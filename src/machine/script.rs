//! A connection whose OpenSSL answers are a script, for the unit and property
//! tests of the machine: no OpenSSL, no sockets.

use std::borrow::BorrowMut;
use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use super::{Connection, Machine, Progress, Ready, ShutdownAnswer, Status, TlsError};
use crate::policy::Policy;
use crate::report::{AlertLog, Report, TlsVersion};

/// The machine with a scripted connection (owned, or borrowed to look at it
/// after the machine is gone), driven as `Shutdown` drives it, minus the clock:
/// every `now` is the test's.
pub(crate) struct Harness<C: BorrowMut<Script>> {
    pub conn: C,
    pub machine: Machine,
}

impl<C: BorrowMut<Script>> Harness<C> {
    pub fn new(conn: C, policy: &Policy) -> Self {
        Harness {
            conn,
            machine: Machine::new(policy),
        }
    }
    pub fn with_unsent(mut self, data: Vec<u8>) -> Self {
        if let Some(setup) = self.machine.setup() {
            setup.unsent = data;
        }
        self
    }
    pub fn after_error(mut self, err: TlsError) -> Self {
        if let Some(setup) = self.machine.setup() {
            setup.set_prior_error(err);
        }
        self
    }
    pub fn readiness_is_level(&mut self) {
        if let Some(setup) = self.machine.setup() {
            setup.level_readiness = true;
        }
    }
    pub fn poll(&mut self, now: Instant, ready: Ready) -> Progress {
        self.poll_read_opt(now, ready, None).1
    }
    pub fn poll_read(&mut self, now: Instant, ready: Ready, buf: &mut [u8]) -> (usize, Progress) {
        self.poll_read_opt(now, ready, Some(buf))
    }
    /// As `Shutdown` drives the machine, minus the real clock: a report made in
    /// this call is kept on the connection.
    fn poll_read_opt(
        &mut self,
        now: Instant,
        ready: Ready,
        out: Option<&mut [u8]>,
    ) -> (usize, Progress) {
        let (n, progress) = self.machine.poll(self.conn.borrow_mut(), now, ready, out);
        let saves = self.machine.saves_report();
        if let Some(report) = self.machine.take_fresh_report() {
            if saves {
                let report = *report;
                self.conn.borrow_mut().save_report(&report);
            }
        }
        (n, progress)
    }
    pub fn get_ref(&self) -> &Script {
        self.conn.borrow()
    }
    pub fn get_mut(&mut self) -> &mut Script {
        self.conn.borrow_mut()
    }
    pub fn calls(&self) -> u32 {
        self.machine.calls()
    }
}

impl<C: BorrowMut<Script>> Drop for Harness<C> {
    fn drop(&mut self) {
        self.machine.abandon(self.conn.borrow_mut());
    }
}

/// A connection whose OpenSSL answers are a script. When a queue runs dry, the
/// matching fallback answers (the unit tests leave them unset: an unscripted call
/// is a test failure).
#[derive(Default)]
pub(crate) struct Script {
    pub status: Option<Status>,
    pub shutdowns: VecDeque<Result<ShutdownAnswer, TlsError>>,
    pub reads: VecDeque<Result<usize, TlsError>>,
    pub writes: VecDeque<Result<usize, TlsError>>,
    pub pending: VecDeque<bool>,
    pub send_queue: VecDeque<usize>,
    pub fallback_shutdown: Option<Result<ShutdownAnswer, TlsError>>,
    pub fallback_read: Option<Result<usize, TlsError>>,
    pub fallback_write: Option<Result<usize, TlsError>>,
    pub half_closed: bool,
    pub reset_armed: bool,
    pub quiet: bool,
    pub forgot_session: bool,
    pub began: u32,
    pub kept_transport: bool,
    pub sealed: u32,
    pub ended: u32,
    pub saved: Option<Report>,
    /// What OpenSSL's info callback would have seen.
    pub alerts: AlertLog,
    /// How long each `SSL_shutdown` takes (real time).
    pub shutdown_takes: std::time::Duration,
    /// OpenSSL calls (shutdown, read, write) answered so far.
    pub calls: u32,
    /// Of those, the ones that answered WANT_READ or WANT_WRITE.
    pub retries: u32,
    /// Application bytes the reads returned.
    pub read_bytes: u64,
    /// An `SSL_shutdown` call succeeded (returned 0 or 1).
    pub shutdown_ok: bool,
}

impl Script {
    pub fn usable() -> Script {
        Script {
            status: Some(Status {
                usable: true,
                sent: false,
                received: false,
                version: Some(TlsVersion::Tls1_3),
            }),
            ..Script::default()
        }
    }
    pub fn shutdown(mut self, r: Result<ShutdownAnswer, TlsError>) -> Self {
        self.shutdowns.push_back(r);
        self
    }
    pub fn read(mut self, r: Result<usize, TlsError>) -> Self {
        self.reads.push_back(r);
        self
    }

    /// Counts one call and its answer.
    fn answered<T>(&mut self, r: Result<T, TlsError>) -> Result<T, TlsError> {
        self.calls += 1;
        if matches!(r, Err(TlsError::WantRead | TlsError::WantWrite)) {
            self.retries += 1;
        }
        r
    }

    fn next_read(&mut self) -> Result<usize, TlsError> {
        let r = self
            .reads
            .pop_front()
            .or(self.fallback_read)
            .expect("unscripted SSL_read");
        if let Ok(n) = r {
            self.read_bytes += n as u64;
        }
        self.answered(r)
    }
}

impl Connection for Script {
    fn status(&mut self) -> Status {
        self.status.expect("status")
    }
    fn begin(&mut self) {
        self.began += 1;
    }
    /// Buffered bytes: what `has_pending` says at the start.
    fn keep_transport(&mut self) -> bool {
        self.kept_transport = true;
        self.has_pending()
    }
    fn seal(&mut self) {
        self.sealed += 1;
    }
    fn end(&mut self) {
        self.ended += 1;
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        std::thread::sleep(self.shutdown_takes);
        let r = self
            .shutdowns
            .pop_front()
            .or(self.fallback_shutdown)
            .expect("unscripted SSL_shutdown");
        self.shutdown_ok |= r.is_ok();
        self.answered(r)
    }
    /// Answers from the same script as `shutdown`.
    fn flush_close_notify(&mut self) -> Result<(), TlsError> {
        self.shutdown().map(drop)
    }
    fn read_discard(&mut self) -> Result<usize, TlsError> {
        self.next_read()
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        let r = self
            .writes
            .pop_front()
            .or(self.fallback_write)
            .expect("unscripted SSL_write");
        self.answered(r.map(|n| n.min(buf.len())))
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        let n = self.next_read()?;
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
    fn alerts(&self) -> AlertLog {
        self.alerts
    }
    fn saved_report(&self) -> Option<Report> {
        self.saved
    }
    fn save_report(&mut self, report: &Report) {
        self.saved = Some(*report);
    }
}

/// A borrowed script, so that a test can look at it once the shutdown is gone.
impl Connection for &mut Script {
    fn status(&mut self) -> Status {
        (**self).status()
    }
    fn begin(&mut self) {
        (**self).begin()
    }
    fn keep_transport(&mut self) -> bool {
        (**self).keep_transport()
    }
    fn read_ahead(&mut self) {
        (**self).read_ahead()
    }
    fn seal(&mut self) {
        (**self).seal()
    }
    fn end(&mut self) {
        (**self).end()
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        Connection::shutdown(&mut **self)
    }
    fn flush_close_notify(&mut self) -> Result<(), TlsError> {
        (**self).flush_close_notify()
    }
    fn read_discard(&mut self) -> Result<usize, TlsError> {
        (**self).read_discard()
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        Connection::read(&mut **self, buf)
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
    fn alerts(&self) -> AlertLog {
        (**self).alerts()
    }
    fn saved_report(&self) -> Option<Report> {
        (**self).saved_report()
    }
    fn save_report(&mut self, report: &Report) {
        (**self).save_report(report)
    }
}
