//! The one connection core: [`Connection`] written once for every OpenSSL-backed
//! connection, over a [`Backend`] that supplies only its handles (the `SSL`, the
//! socket) and its few I/O calls (`SSL_shutdown`, `SSL_read`, `SSL_write`, made
//! the way that connection needs them made).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

use super::ssl;
use crate::machine::{Connection, ShutdownAnswer, Status, TlsError};
use crate::report::{AlertLog, Report};
use crate::socket;

/// What an OpenSSL-backed connection supplies: its handles and its I/O calls.
/// Each I/O call is one OpenSSL call, made on a clean error queue, its failure
/// classified into a [`TlsError`].
///
/// (Public in a private module: the trait bound of the public `Connection`
/// implementations, which users neither name nor implement.)
pub trait Backend {
    /// The connection's `SSL`.
    fn ssl(&self) -> &SslRef;
    /// The connection's `SSL`, mutably.
    fn ssl_mut(&mut self) -> &mut SslRef;
    /// The socket the `SSL` runs on: the half-close, `SO_LINGER`, `SIOCOUTQ`.
    fn socket(&self) -> BorrowedFd<'_>;
    /// The shutdown begins (first thing): the backends that own their I/O put
    /// the shutdown's own BIO in place.
    fn attach(&mut self) {}
    /// The shutdown is over (last thing): undoes `attach`.
    fn detach(&mut self) {}
    /// Whether a blocking socket must be switched to non-blocking mode for the
    /// shutdown (false when the backend's I/O never blocks: tokio's, or the
    /// shutdown's own BIO's).
    fn switches_blocking(&self) -> bool {
        true
    }
    /// One `SSL_shutdown`.
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError>;
    /// One `SSL_read` into `buf` (not empty); `Ok(n)` has `n > 0`, the peer's
    /// close_notify is `Err(TlsError::CloseNotify)`. Only initialised bytes are
    /// written to `buf`.
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError>;
    /// One `SSL_write` of application data (not empty).
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError>;
    /// `shutdown(SHUT_WR)` on the socket, or what it answered if the backend's
    /// `SSL_shutdown` already did it.
    fn half_close(&mut self) -> io::Result<()> {
        socket::half_close(self.socket())
    }
    /// OpenSSL's writes now go to a sink (`sealed`), or again to the socket.
    fn set_sealed(&mut self, _sealed: bool) {}
}

impl<B: Backend + ?Sized> Backend for &mut B {
    fn ssl(&self) -> &SslRef {
        (**self).ssl()
    }
    fn ssl_mut(&mut self) -> &mut SslRef {
        (**self).ssl_mut()
    }
    fn socket(&self) -> BorrowedFd<'_> {
        (**self).socket()
    }
    fn attach(&mut self) {
        (**self).attach()
    }
    fn detach(&mut self) {
        (**self).detach()
    }
    fn switches_blocking(&self) -> bool {
        (**self).switches_blocking()
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        (**self).shutdown()
    }
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        (**self).read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        (**self).write(buf)
    }
    fn half_close(&mut self) -> io::Result<()> {
        (**self).half_close()
    }
    fn set_sealed(&mut self, sealed: bool) {
        (**self).set_sealed(sealed)
    }
}

/// An `SSL_read` that looks like an EOF but came with the peer's close_notify is
/// the close_notify. `SSL_get_error` answers ZERO_RETURN only when the last
/// warning alert OpenSSL noted was close_notify; a TLS 1.3 close_notify after a
/// user_canceled (OpenSSL 3.6+ notes only user_canceled there), or sent at level
/// fatal (which TLS 1.3 ignores), leaves it at SYSCALL with nothing queued,
/// which reads as an EOF. `SSL_RECEIVED_SHUTDOWN` tells them apart (the
/// shutdown suspends `SSL_OP_IGNORE_UNEXPECTED_EOF`, which would set it for a
/// real EOF).
fn close_notify_or<B: Backend + ?Sized>(
    conn: &B,
    read: Result<usize, TlsError>,
) -> Result<usize, TlsError> {
    match read {
        Err(TlsError::Eof) if ssl::received_close_notify(conn.ssl()) => Err(TlsError::CloseNotify),
        other => other,
    }
}

/// Size of the buffer application data is read into and discarded: one record.
const DISCARD_BUF: usize = 16 * 1024;

impl<B: Backend> Connection for B {
    fn status(&mut self) -> Status {
        ssl::status(self.ssl())
    }
    fn begin(&mut self) {
        self.attach();
        let fd = self.switches_blocking().then(|| self.socket().as_raw_fd());
        ssl::begin(self.ssl_mut(), fd)
    }
    fn keep_transport(&mut self) -> bool {
        ssl::keep_transport(self.ssl_mut())
    }
    fn read_ahead(&mut self) {
        ssl::read_ahead(self.ssl_mut())
    }
    fn seal(&mut self) {
        let sealed = ssl::seal(self.ssl_mut());
        self.set_sealed(sealed);
    }
    fn end(&mut self) {
        let fd = self.socket().as_raw_fd();
        ssl::end(self.ssl_mut(), fd);
        self.set_sealed(false);
        self.detach();
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        Backend::shutdown(self)
    }
    fn flush_close_notify(&mut self) -> Result<(), TlsError> {
        let ptr = self.ssl().as_ptr();
        ssl::flush_close_notify(ptr, || Backend::shutdown(self))
    }
    fn read_discard(&mut self) -> Result<usize, TlsError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); DISCARD_BUF];
        let read = Backend::read(self, &mut buf);
        close_notify_or(self, read)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and a backend writes
        // only initialised bytes into the buffer, so `buf` stays initialised.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        let read = Backend::read(self, uninit);
        close_notify_or(self, read)
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        ssl::accept_moving_write_buffer(self.ssl());
        Backend::write(self, buf)
    }
    fn has_pending(&self) -> bool {
        ssl::has_pending(self.ssl())
    }
    fn set_quiet(&mut self) {
        ssl::set_quiet(self.ssl_mut())
    }
    fn half_close(&mut self) -> io::Result<()> {
        Backend::half_close(self)
    }
    fn send_queue_len(&self) -> io::Result<usize> {
        socket::send_queue_len(self.socket())
    }
    fn arm_reset(&mut self) -> io::Result<()> {
        socket::arm_reset(self.socket())
    }
    fn forget_session(&mut self) {
        ssl::forget_session(self.ssl_mut())
    }
    fn session_resumable(&self) -> bool {
        ssl::session_resumable(self.ssl())
    }
    fn alerts(&self) -> AlertLog {
        ssl::alerts(self.ssl())
    }
    fn saved_report(&self) -> Option<Report> {
        ssl::saved_report(self.ssl())
    }
    fn save_report(&mut self, report: &Report) {
        ssl::save_report(self.ssl_mut(), report)
    }
}
