//! [`shutdown_blocking`]: the shutdown for blocking code, bounded by the policy.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use openssl::ssl::SslStream;

use crate::machine::{Connection, Progress, Ready, Shutdown};
use crate::ossl::RawConnection;
use crate::policy::Policy;
use crate::report::Report;
use crate::socket;

/// Shuts `stream` down under `policy`, waiting with `poll(2)`, and returns how the
/// connection ended.
///
/// It never waits longer than the policy allows (`flush_timeout + peer_timeout +
/// linger_timeout` at most), whether the socket is blocking or not: like every
/// [`Shutdown`], it switches a blocking socket to non-blocking mode for the
/// duration and back afterwards. The stream is not closed; drop it to close the socket. A misbehaving
/// peer is an outcome in the report, never a panic or an error.
///
/// Calling it again on the same stream returns the same report.
pub fn shutdown_blocking<S: Read + Write + AsFd>(
    stream: &mut SslStream<S>,
    policy: &Policy,
) -> Report {
    let fd = stream.get_ref().as_fd().as_raw_fd();
    let mut sd = Shutdown::new(stream, policy);
    sd.readiness_is_level();
    drive(&mut sd, fd)
}

impl RawConnection {
    /// [`shutdown_blocking`] for a raw `SSL*` and its socket: waits with `poll(2)`,
    /// bounded by the policy. The `SSL` is not freed and the socket not closed.
    pub fn shutdown_blocking(self, policy: &Policy) -> Report {
        let fd = self.as_raw_fd();
        let mut sd = Shutdown::new(self, policy);
        sd.readiness_is_level();
        drive(&mut sd, fd)
    }
}

/// Runs the machine to its report, waiting on `fd` with `poll(2)` in between.
fn drive<C: Connection>(sd: &mut Shutdown<C>, fd: RawFd) -> Report {
    let mut ready = Ready::NONE;
    loop {
        match sd.poll(Instant::now(), ready) {
            Progress::Done(report) => return report,
            Progress::Wait(wait) => {
                // SAFETY: `fd` belongs to the connection `sd` borrows or owns, which
                // keeps it open for the whole call.
                let sock = unsafe { BorrowedFd::borrow_raw(fd) };
                ready = socket::wait(sock, wait.interest, wait.timeout(Instant::now()));
            }
        }
    }
}
