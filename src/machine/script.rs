//! A connection whose OpenSSL answers are a script, for the unit and property
//! tests of the machine: no OpenSSL, no sockets.

use std::collections::VecDeque;
use std::io;

use openssl::ssl::ShutdownResult;

use super::{Connection, Status, TlsError};
use crate::report::{Report, TlsVersion};

/// A connection whose OpenSSL answers are a script. When a queue runs dry, the
/// matching fallback answers (the unit tests leave them unset: an unscripted call
/// is a test failure).
#[derive(Default)]
pub(super) struct Script {
    pub status: Option<Status>,
    pub shutdowns: VecDeque<Result<ShutdownResult, TlsError>>,
    pub reads: VecDeque<Result<usize, TlsError>>,
    pub writes: VecDeque<Result<usize, TlsError>>,
    pub pending: VecDeque<bool>,
    pub send_queue: VecDeque<usize>,
    pub fallback_shutdown: Option<Result<ShutdownResult, TlsError>>,
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
    pub fn shutdown(mut self, r: Result<ShutdownResult, TlsError>) -> Self {
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
    fn shutdown(&mut self) -> Result<ShutdownResult, TlsError> {
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
    fn saved_report(&self) -> Option<Report> {
        self.saved
    }
    fn save_report(&mut self, report: &Report) {
        self.saved = Some(*report);
    }
}
