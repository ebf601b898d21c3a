//! [`shutdown_blocking`] and [`shutdown_blocking_read`]: the shutdown for blocking
//! code, bounded by the policy.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use openssl::ssl::SslStream;

use crate::error::{Error, ReadError};
use crate::machine::{Connection, Progress, Ready};
use crate::ossl::RawConnection;
use crate::policy::Policy;
use crate::report::Report;
use crate::shutdown::Shutdown;
use crate::socket;

/// Shuts `stream` down under `policy`, waiting with `poll(2)`, and returns how the
/// connection ended.
///
/// It never waits longer than the policy allows (`flush_timeout + peer_timeout +
/// linger_timeout` at most), whether the socket is blocking or not: like every
/// [`Shutdown`], it switches a blocking socket to non-blocking mode for the
/// duration and back afterwards. The stream is not closed; drop it to close the
/// socket (or, after a [`Mode::StopTls`](crate::Mode::StopTls) shutdown, take the
/// transport back with [`into_transport`](crate::into_transport)). A misbehaving
/// peer is an outcome in the report, never a panic or an error. Application data
/// the peer sends after our close_notify is discarded (up to the drain limit); use
/// [`shutdown_blocking_read`] to receive it.
///
/// Calling it again on the same stream returns the same report.
pub fn shutdown_blocking<S: Read + Write + AsFd>(
    stream: &mut SslStream<S>,
    policy: &Policy,
) -> Report {
    let fd = stream.get_ref().as_fd().as_raw_fd();
    drive(Shutdown::new(stream, policy), fd)
}

/// Shuts `stream` down like [`shutdown_blocking`], but writes the application
/// data the peer sends until its close_notify to `out` instead of discarding it:
/// the TLS half-close of a client that has sent its request and now reads the
/// answer to the end (our close_notify and a FIN go first, then everything the
/// peer sends until its own close_notify is delivered). This is the blocking
/// counterpart of [`Shutdown::poll_read`].
///
/// Bounded by the policy (the whole answer must arrive within `peer_timeout`,
/// however fast the peer streams and however slowly `out` takes it: a peer still
/// sending at the deadline ends it with `timed_out` in stage `await_peer`, and
/// [`Report::delivered_bytes`] counts what `out` received) and
/// by `limit`: past `limit` bytes, the shutdown ends with
/// [`Outcome::DrainLimit`](crate::Outcome::DrainLimit) and exactly `limit` bytes
/// have been written to `out`. `report.outcome == Outcome::Clean` means `out`
/// received the complete answer.
///
/// # Errors
/// [`ReadError::Invalid`] ([`Error::InvalidPolicy`]), before anything is sent,
/// when the policy's mode does not wait for the peer
/// ([`Mode::SendOnly`](crate::Mode::SendOnly), [`Mode::Quiet`](crate::Mode::Quiet));
/// [`ReadError::Write`] with the error of `out`, after which the shutdown is
/// abandoned as a dropped [`Shutdown`] leaves it (the socket's mode and the
/// `SSL`'s options restored, nothing more read). How the connection ended is
/// never an error: it is the report. (Compare [`shutdown_blocking`], which has
/// neither a mode to refuse nor a writer to fail, and returns the report alone.)
pub fn shutdown_blocking_read<S: Read + Write + AsFd, W: Write + ?Sized>(
    stream: &mut SslStream<S>,
    policy: &Policy,
    out: &mut W,
    limit: u64,
) -> Result<Report, ReadError> {
    check_awaits_peer(policy)?;
    let fd = stream.get_ref().as_fd().as_raw_fd();
    drive_read(Shutdown::new(stream, policy), fd, out, limit)
}

impl RawConnection {
    /// [`shutdown_blocking`] for a raw `SSL*` and its socket: waits with `poll(2)`,
    /// bounded by the policy. The `SSL` is not freed and the socket not closed.
    pub fn shutdown_blocking(self, policy: &Policy) -> Report {
        let fd = self.as_raw_fd();
        drive(Shutdown::new(self, policy), fd)
    }

    /// [`shutdown_blocking_read`] for a raw `SSL*` and its socket.
    ///
    /// # Errors
    /// As [`shutdown_blocking_read`].
    pub fn shutdown_blocking_read<W: Write + ?Sized>(
        self,
        policy: &Policy,
        out: &mut W,
        limit: u64,
    ) -> Result<Report, ReadError> {
        check_awaits_peer(policy)?;
        let fd = self.as_raw_fd();
        drive_read(Shutdown::new(self, policy), fd, out, limit)
    }
}

pub(crate) fn check_awaits_peer(policy: &Policy) -> Result<(), Error> {
    if policy.mode().awaits_peer() {
        return Ok(());
    }
    Err(Error::InvalidPolicy(format!(
        "reading the peer's answer needs a mode that waits for it \
         (bidirectional or stop_tls), not {}",
        policy.mode()
    )))
}

/// Waits with `poll(2)` on `fd` for what `progress` asks, up to its deadline.
fn wait(fd: RawFd, progress: &Progress) -> Ready {
    let Progress::Wait(wait) = progress else {
        return Ready::NONE;
    };
    // SAFETY: `fd` belongs to the connection the shutdown borrows or owns, which
    // keeps it open for the whole call.
    let sock = unsafe { BorrowedFd::borrow_raw(fd) };
    socket::wait(sock, wait.interest, wait.timeout(Instant::now()))
}

/// `poll(2)` reports what is already waiting, and the clock is ours.
fn level_readiness<C: Connection>(sd: &mut Shutdown<C>) {
    if let Some(setup) = sd.setup() {
        setup.level_readiness = true;
    }
    sd.adapter_clock(Instant::now);
}

/// Runs the machine to its report, waiting on `fd` with `poll(2)` in between.
fn drive<C: Connection>(mut sd: Shutdown<C>, fd: RawFd) -> Report {
    level_readiness(&mut sd);
    let mut ready = Ready::NONE;
    loop {
        let progress = sd.poll(Instant::now(), ready);
        if let Progress::Done(report) = progress {
            return report;
        }
        ready = wait(fd, &progress);
    }
}

/// As `drive`, delivering the peer's data to `out`, at most `limit` bytes.
fn drive_read<C: Connection, W: Write + ?Sized>(
    sd: Shutdown<C>,
    fd: RawFd,
    out: &mut W,
    limit: u64,
) -> Result<Report, ReadError> {
    let mut sd = sd.with_read_limit(limit);
    level_readiness(&mut sd);
    let mut buf = vec![0u8; 16 * 1024];
    let mut ready = Ready::NONE;
    loop {
        // The machine delivers nothing past the limit.
        let (n, progress) = sd.poll_read(Instant::now(), ready, &mut buf);
        out.write_all(&buf[..n]).map_err(ReadError::Write)?;
        if let Progress::Done(report) = progress {
            return Ok(report);
        }
        // Bytes delivered: more may be buffered already, read again at once.
        ready = if n > 0 {
            Ready::NONE
        } else {
            wait(fd, &progress)
        };
    }
}
