//! The only module that calls `openssl-sys`: [`Connection`] for rust-openssl's
//! `SslStream` and for a raw `SSL*` ([`RawConnection`]), and the one place where
//! OpenSSL's answers become [`TlsError`]s.

use std::ffi::{c_int, c_void};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::OnceLock;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{ErrorCode, ShutdownResult, Ssl, SslRef, SslStream};
use openssl_sys as ffi;

use crate::error::Error;
use crate::machine::{Connection, Status, TlsError};
use crate::report::{Report, TlsVersion};
use crate::sigpipe::SigpipeGuard;
use crate::socket;

// Functions of OpenSSL >= 1.1.1 that openssl-sys does not declare.
extern "C" {
    fn SSL_has_pending(s: *const ffi::SSL) -> c_int;
    fn SSL_SESSION_is_resumable(s: *const ffi::SSL_SESSION) -> c_int;
    fn SSL_get_options(s: *const ffi::SSL) -> u64;
    fn SSL_clear_options(s: *mut ffi::SSL, op: u64) -> u64;
    fn SSL_set_options(s: *mut ffi::SSL, op: u64) -> u64;
    fn SSL_free_buffers(s: *mut ffi::SSL) -> c_int;
    fn SSL_set_read_ahead(s: *mut ffi::SSL, yes: c_int);
}

// The option constants are `uint64_t` in OpenSSL 3 and `unsigned long` before.
#[cfg(ossl300)]
#[allow(clippy::unnecessary_cast)]
const IGNORE_UNEXPECTED_EOF: u64 = ffi::SSL_OP_IGNORE_UNEXPECTED_EOF as u64;
#[allow(clippy::unnecessary_cast)]
const NO_TICKET: u64 = ffi::SSL_OP_NO_TICKET as u64;

/// Reason codes (`ERR_GET_REASON`) that matter here; values from `sslerr.h`.
mod reason {
    use std::ffi::c_int;
    pub const UNEXPECTED_EOF_WHILE_READING: c_int = 294;
    pub const BAD_WRITE_RETRY: c_int = 127;
    pub const SHUTDOWN_WHILE_IN_INIT: c_int = 407;
    /// `SSL_AD_REASON_OFFSET`: a received fatal alert is reported as 1000 + code.
    pub const ALERT_OFFSET: c_int = 1000;
    /// `ERR_RFLAG_COMMON` (OpenSSL 3): reasons shared by every library
    /// (`ERR_R_INTERNAL_ERROR`, `ERR_R_MALLOC_FAILURE`, ...).
    pub const COMMON_FLAG: c_int = 1 << 19;
}

/// `ERR_LIB_SSL` from `err.h`.
const ERR_LIB_SSL: c_int = 20;

/// The alert OpenSSL raises with each reason on the read path of an established
/// connection (its `SSLfatal(s, alert, reason)` pairs in the 3.0 record layer and
/// post-handshake code). OpenSSL keeps the alert itself off the wire once our
/// close_notify has left, so this table is how the report can still name it.
fn alert_for_reason(r: c_int) -> Option<u8> {
    let alert = match r {
        // Garbage: the record header's version bytes are wrong.
        267 => 70,                   // WRONG_VERSION_NUMBER -> protocol_version
        281 => 20,                   // DECRYPTION_FAILED_OR_BAD_RECORD_MAC -> bad_record_mac
        198 | 150 | 140 | 146 => 22, // *_LENGTH_TOO_LONG -> record_overflow
        107 => 30,                   // BAD_DECOMPRESSION -> decompression_failure
        160 | 159 => 50,             // LENGTH_TOO_SHORT, LENGTH_MISMATCH -> decode_error
        122 => 50,                   // BAD_KEY_UPDATE -> decode_error
        443 | 271 | 298 | 293 | 145 | 133 | 205 | 409 | 245 | 244 | 103 | 182 => 10, // unexpected_message
        339 => 40,                               // NO_RENEGOTIATION -> handshake_failure
        246 | 152 => 47, // UNKNOWN_ALERT_TYPE, EXCESSIVE_MESSAGE_SIZE -> illegal_parameter
        _ if r & reason::COMMON_FLAG != 0 => 80, // internal_error
        _ => return None,
    };
    Some(alert)
}

/// Turns `SSL_get_error`'s code, the drained error queue and the errno of the call
/// into a [`TlsError`]. Both EOF conventions are recognised whatever the build:
/// OpenSSL 1.1.1, and any BIO that does not report `BIO_eof` (rust-openssl's stream
/// BIO), say `SSL_ERROR_SYSCALL` with an empty queue and no errno; OpenSSL 3.x with
/// a socket BIO raises `SSL_R_UNEXPECTED_EOF_WHILE_READING`.
fn classify(code: ErrorCode, stack: Option<&ErrorStack>, os_error: Option<i32>) -> TlsError {
    match code {
        ErrorCode::WANT_READ => TlsError::WantRead,
        ErrorCode::WANT_WRITE => TlsError::WantWrite,
        ErrorCode::ZERO_RETURN => TlsError::CloseNotify,
        ErrorCode::SYSCALL | ErrorCode::SSL => {
            if let Some(err) = stack.and_then(|s| most_relevant(s.errors())) {
                return classify_queued(err);
            }
            match os_error {
                Some(errno) if errno != 0 => TlsError::Os(errno),
                _ if code == ErrorCode::SYSCALL => TlsError::Eof,
                _ => TlsError::Protocol {
                    alert: None,
                    detail: "SSL_ERROR_SSL with an empty error queue",
                },
            }
        }
        _ => TlsError::Protocol {
            alert: None,
            detail: "unexpected SSL_get_error code",
        },
    }
}

/// The entry that explains a failure: a system error if there is one, else the
/// last entry of the SSL library (the one `SSLfatal` pushed, after lower layers
/// such as EVP's "cipher operation failed"), else the first.
fn most_relevant(errors: &[openssl::error::Error]) -> Option<&openssl::error::Error> {
    errors
        .iter()
        .find(|e| e.library_code() == ffi::ERR_LIB_SYS)
        .or_else(|| {
            errors
                .iter()
                .rev()
                .find(|e| e.library_code() == ERR_LIB_SSL)
        })
        .or_else(|| errors.first())
}

fn classify_queued(err: &openssl::error::Error) -> TlsError {
    let r = err.reason_code();
    if err.library_code() == ffi::ERR_LIB_SYS {
        return TlsError::Os(r);
    }
    let detail = err.reason().unwrap_or("unknown OpenSSL error");
    if err.library_code() != ERR_LIB_SSL {
        return TlsError::Protocol {
            alert: None,
            detail,
        };
    }
    match r {
        reason::UNEXPECTED_EOF_WHILE_READING if cfg!(ossl300) => TlsError::Eof,
        reason::BAD_WRITE_RETRY | reason::SHUTDOWN_WHILE_IN_INIT => TlsError::Unusable { detail },
        r if (reason::ALERT_OFFSET..reason::ALERT_OFFSET + 256).contains(&r) => {
            TlsError::PeerAlert((r - reason::ALERT_OFFSET) as u8)
        }
        r => TlsError::Protocol {
            alert: alert_for_reason(r),
            detail,
        },
    }
}

/// Per-`SSL` state kept in ex_data: the final report (so that a second shutdown
/// returns it) and whether `begin` suspended `SSL_OP_IGNORE_UNEXPECTED_EOF`.
#[derive(Default)]
struct Saved {
    report: Option<Report>,
    suspended_ignore_eof: bool,
}

fn saved_index() -> Option<Index<Ssl, Saved>> {
    static INDEX: OnceLock<Option<Index<Ssl, Saved>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The helpers shared by every OpenSSL-backed connection, on an `&SslRef`.
mod on_ssl {
    use super::*;

    pub fn status(ssl: &SslRef) -> Status {
        let usable = ssl.is_init_finished();
        // SAFETY: `ssl` is a valid SSL for the duration of the borrow.
        let flags = unsafe { ffi::SSL_get_shutdown(ssl.as_ptr()) };
        let version = if usable {
            // SAFETY: as above.
            let v = unsafe { ffi::SSL_version(ssl.as_ptr()) };
            Some(TlsVersion::from_wire(v as u16))
        } else {
            None
        };
        Status {
            usable,
            sent: flags & ffi::SSL_SENT_SHUTDOWN != 0,
            received: flags & ffi::SSL_RECEIVED_SHUTDOWN != 0,
            version,
        }
    }

    /// Suspends `SSL_OP_IGNORE_UNEXPECTED_EOF`: with it, OpenSSL turns an EOF into a
    /// fake close_notify and a truncation would be reported as `clean`.
    pub fn begin(ssl: &mut SslRef) {
        #[cfg(ossl300)]
        {
            // SAFETY: `ssl` is valid; the option calls only read/modify a bit field.
            let had = unsafe { SSL_get_options(ssl.as_ptr()) } & IGNORE_UNEXPECTED_EOF != 0;
            if had {
                // SAFETY: as above.
                unsafe { SSL_clear_options(ssl.as_ptr(), IGNORE_UNEXPECTED_EOF) };
                with_saved(ssl, |s| s.suspended_ignore_eof = true);
            }
        }
        #[cfg(not(ossl300))]
        let _ = ssl;
    }

    pub fn end(ssl: &mut SslRef) {
        #[cfg(ossl300)]
        if let Some(index) = saved_index() {
            if let Some(saved) = ssl.ex_data_mut(index) {
                if std::mem::take(&mut saved.suspended_ignore_eof) {
                    // SAFETY: `ssl` is valid; restores the option `begin` cleared.
                    unsafe { SSL_set_options(ssl.as_ptr(), IGNORE_UNEXPECTED_EOF) };
                }
            }
        }
        #[cfg(not(ossl300))]
        let _ = ssl;
    }

    /// Lets a retried `SSL_write` come with a different buffer holding the same
    /// bytes (the caller's unsent data, now owned by the shutdown).
    pub fn accept_moving_write_buffer(ssl: &SslRef) {
        set_mode(ssl, ffi::SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }

    /// Releases OpenSSL's read and write buffers whenever they are empty
    /// (`SSL_MODE_RELEASE_BUFFERS`): a connection that only waits for an alert
    /// then holds no 16 KiB record buffers.
    pub fn release_buffers(ssl: &SslRef) {
        set_mode(ssl, ffi::SSL_MODE_RELEASE_BUFFERS);
    }

    /// `SSL_set_mode`: ORs `mode` into the connection's mode bits.
    fn set_mode(ssl: &SslRef, mode: std::ffi::c_long) {
        // SAFETY: `ssl` is valid; SSL_ctrl(SSL_CTRL_MODE) only ORs a mode bit.
        unsafe { ffi::SSL_ctrl(ssl.as_ptr(), ffi::SSL_CTRL_MODE, mode, std::ptr::null_mut()) };
    }

    pub fn has_pending(ssl: &SslRef) -> bool {
        // SAFETY: `ssl` is valid; SSL_has_pending only inspects buffers.
        unsafe { SSL_has_pending(ssl.as_ptr()) == 1 }
    }

    pub fn set_quiet(ssl: &mut SslRef) {
        // SAFETY: `ssl` is valid; sets the shutdown flags so that nothing is ever
        // sent, which OpenSSL allows in any state (it is what quiet shutdown does).
        unsafe {
            ffi::SSL_set_shutdown(
                ssl.as_ptr(),
                ffi::SSL_SENT_SHUTDOWN | ffi::SSL_RECEIVED_SHUTDOWN,
            )
        };
    }

    /// Removes the session from the context's cache; OpenSSL also marks it not
    /// resumable, so a client holding it will not offer it again.
    pub fn forget_session(ssl: &mut SslRef) {
        // SAFETY: `ssl` is valid; the session and context pointers come from it and
        // stay valid while it lives; SSL_CTX_remove_session accepts any session.
        unsafe {
            let session = ffi::SSL_get_session(ssl.as_ptr());
            if !session.is_null() {
                ffi::SSL_CTX_remove_session(ffi::SSL_get_SSL_CTX(ssl.as_ptr()), session);
            }
            ffi::ERR_clear_error();
        }
    }

    pub fn session_resumable(ssl: &SslRef) -> bool {
        // SAFETY: `ssl` is valid; the session pointer is checked for null.
        let (resumable, stateless_tickets) = unsafe {
            let session = ffi::SSL_get_session(ssl.as_ptr());
            let resumable = !session.is_null() && SSL_SESSION_is_resumable(session) == 1;
            let tickets = ffi::SSL_is_server(ssl.as_ptr()) == 1
                && SSL_get_options(ssl.as_ptr()) & NO_TICKET == 0
                && (ffi::SSL_version(ssl.as_ptr()) != ffi::TLS1_3_VERSION
                    || ffi::SSL_get_num_tickets(ssl.as_ptr()) > 0);
            (resumable, tickets)
        };
        // A server cannot revoke a stateless ticket: the client can still resume.
        resumable || (stateless_tickets && handshake_completed(ssl))
    }

    /// The handshake completed at least once (a Finished message was sent), even if
    /// the connection failed since.
    fn handshake_completed(ssl: &SslRef) -> bool {
        // SAFETY: `ssl` is valid; with a null buffer and count 0 SSL_get_finished
        // only returns the length of our Finished message.
        unsafe { ffi::SSL_get_finished(ssl.as_ptr(), std::ptr::null_mut(), 0) > 0 }
    }

    pub fn saved_report(ssl: &SslRef) -> Option<Report> {
        saved_index()
            .and_then(|index| ssl.ex_data(index))
            .and_then(|s| s.report)
    }

    pub fn save_report(ssl: &mut SslRef, report: &Report) {
        with_saved(ssl, |s| s.report = Some(*report));
    }

    fn with_saved(ssl: &mut SslRef, f: impl FnOnce(&mut Saved)) {
        let Some(index) = saved_index() else { return };
        if let Some(saved) = ssl.ex_data_mut(index) {
            f(saved);
        } else {
            let mut saved = Saved::default();
            f(&mut saved);
            ssl.set_ex_data(index, saved);
        }
    }

    /// Clears the error queue before an OpenSSL call: a stale entry would turn the
    /// next `SSL_ERROR_SYSCALL` into a misclassified `SSL_ERROR_SSL`.
    pub fn clear_errors() {
        // SAFETY: ERR_clear_error only touches this thread's error queue.
        unsafe { ffi::ERR_clear_error() };
    }
}

/// Size of the buffer application data is read into and discarded: one record.
const DISCARD_BUF: usize = 16 * 1024;

impl<S: Read + Write + AsFd> Connection for SslStream<S> {
    fn status(&mut self) -> Status {
        on_ssl::status(self.ssl())
    }
    fn begin(&mut self) {
        on_ssl::begin(stream_ssl_mut(self))
    }
    fn end(&mut self) {
        on_ssl::end(stream_ssl_mut(self))
    }
    fn shutdown(&mut self) -> Result<ShutdownResult, TlsError> {
        on_ssl::clear_errors();
        let result = SslStream::shutdown(self).map_err(|e| classify_stream(&e));
        on_ssl::clear_errors();
        result
    }
    fn read_discard(&mut self) -> Result<usize, TlsError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); DISCARD_BUF];
        on_ssl::clear_errors();
        let result = self
            .ssl_read_uninit(&mut buf)
            .map_err(|e| classify_stream(&e));
        on_ssl::clear_errors();
        result
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        on_ssl::clear_errors();
        let result = self.ssl_read(buf).map_err(|e| classify_stream(&e));
        on_ssl::clear_errors();
        result
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        on_ssl::accept_moving_write_buffer(self.ssl());
        on_ssl::clear_errors();
        let result = self.ssl_write(buf).map_err(|e| classify_stream(&e));
        on_ssl::clear_errors();
        result
    }
    fn has_pending(&self) -> bool {
        on_ssl::has_pending(self.ssl())
    }
    fn set_quiet(&mut self) {
        on_ssl::set_quiet(stream_ssl_mut(self))
    }
    fn half_close(&mut self) -> io::Result<()> {
        socket::half_close(self.get_ref().as_fd())
    }
    fn send_queue_len(&self) -> io::Result<usize> {
        socket::send_queue_len(self.get_ref().as_fd())
    }
    fn arm_reset(&mut self) -> io::Result<()> {
        socket::arm_reset(self.get_ref().as_fd())
    }
    fn forget_session(&mut self) {
        on_ssl::forget_session(stream_ssl_mut(self))
    }
    fn session_resumable(&self) -> bool {
        on_ssl::session_resumable(self.ssl())
    }
    fn saved_report(&self) -> Option<Report> {
        on_ssl::saved_report(self.ssl())
    }
    fn save_report(&mut self, report: &Report) {
        on_ssl::save_report(stream_ssl_mut(self), report)
    }
}

/// Prepares a stream the [`Closer`](crate::Closer) now owns: `SSL_MODE_RELEASE_BUFFERS`,
/// so that buffers OpenSSL allocates for the last records are freed once empty,
/// and read-ahead, so that the peer's close_notify takes one `recv` instead of two
/// (header, then body). Read-ahead may pull in bytes beyond the close_notify;
/// harmless here, since the Closer closes the socket after it (it is off for
/// streams the caller keeps, which could carry plaintext after TLS).
pub(crate) fn prepare_for_closer<S>(stream: &mut SslStream<S>) {
    on_ssl::release_buffers(stream.ssl());
    let ssl = stream_ssl_mut(stream);
    // SAFETY: `ssl` is valid; SSL_set_read_ahead only sets a flag.
    unsafe { SSL_set_read_ahead(ssl.as_ptr(), 1) };
}

/// Frees the record buffers a connection still holds from its handshake or its
/// application traffic, if they are empty (`SSL_free_buffers`): a shutdown that
/// waits for the peer needs none until the peer's alert arrives.
pub(crate) fn free_buffers<S>(stream: &mut SslStream<S>) {
    let ssl = stream_ssl_mut(stream);
    // SAFETY: `ssl` is valid; SSL_free_buffers frees only empty buffers (it
    // returns 0 and keeps them when data is pending).
    unsafe { SSL_free_buffers(ssl.as_ptr()) };
    on_ssl::clear_errors();
}

/// `&mut SslRef` of a stream; rust-openssl only hands out `&SslRef`.
fn stream_ssl_mut<S>(stream: &mut SslStream<S>) -> &mut SslRef {
    // SAFETY: the pointer is the stream's own valid SSL, and `&mut stream` makes
    // this the only reference to it for the lifetime of the borrow.
    unsafe { SslRef::from_ptr_mut(stream.ssl().as_ptr()) }
}

impl From<&openssl::ssl::Error> for TlsError {
    /// Classifies an error rust-openssl returned (from `ssl_read`, `ssl_write`,
    /// `connect`, ...) the way the shutdown classifies its own; use it with
    /// [`Shutdown::after_error`](crate::Shutdown::after_error).
    fn from(err: &openssl::ssl::Error) -> TlsError {
        classify_stream(err)
    }
}

/// rust-openssl keeps the I/O error of its BIO in the `ssl::Error`, not in errno.
fn classify_stream(err: &openssl::ssl::Error) -> TlsError {
    let os_error = err
        .io_error()
        .map(|e| e.raw_os_error().unwrap_or(libc::EIO));
    classify(err.code(), err.ssl_error(), os_error)
}

/// A raw `SSL*` and the socket it runs on: what C callers own.
///
/// The caller keeps ownership of both: nothing here frees the `SSL` or closes the
/// socket. Every OpenSSL call runs with `SIGPIPE` blocked on the calling thread, and
/// a `SIGPIPE` it raised is consumed before the mask is restored, so a host program
/// with the default disposition survives a peer that reset the connection even
/// though OpenSSL's socket BIO writes with `write()`.
#[derive(Debug)]
pub struct RawConnection {
    ssl: NonNull<ffi::SSL>,
    fd: RawFd,
}

impl RawConnection {
    /// Wraps `ssl` and its socket `fd`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `ssl` is null, `fd` is negative, or `fd` is
    /// not a stream socket.
    ///
    /// # Safety
    /// `ssl` must point to a valid `SSL` that outlives the returned value, and
    /// neither it nor `fd` may be used by another thread while the value is in use.
    /// `fd` must stay open until the value is dropped.
    pub unsafe fn new(ssl: *mut ffi::SSL, fd: RawFd) -> Result<RawConnection, Error> {
        let ssl = NonNull::new(ssl)
            .ok_or_else(|| Error::InvalidArgument("SSL pointer is null".into()))?;
        if fd < 0 {
            return Err(Error::InvalidArgument(format!("fd {fd} is negative")));
        }
        // SAFETY: the caller guarantees `fd` stays open while we use it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        socket::check_stream_socket(borrowed)
            .map_err(|e| Error::InvalidArgument(format!("fd {fd} is not a stream socket: {e}")))?;
        Ok(RawConnection { ssl, fd })
    }

    /// The socket.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn ssl(&self) -> &SslRef {
        // SAFETY: `new`'s contract: the SSL is valid and not used elsewhere while
        // this value lives.
        unsafe { SslRef::from_ptr(self.ssl.as_ptr()) }
    }

    fn ssl_mut(&mut self) -> &mut SslRef {
        // SAFETY: as in `ssl`; `&mut self` makes the borrow unique.
        unsafe { SslRef::from_ptr_mut(self.ssl.as_ptr()) }
    }

    fn sock(&self) -> BorrowedFd<'_> {
        // SAFETY: `new`'s contract keeps the fd open while this value lives.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    /// One OpenSSL I/O call with SIGPIPE blocked, errno captured right after it,
    /// and the error queue drained.
    fn call(&mut self, f: impl FnOnce(*mut ffi::SSL) -> c_int) -> (c_int, Option<TlsError>) {
        let ssl = self.ssl.as_ptr();
        on_ssl::clear_errors();
        let guard = SigpipeGuard::new();
        errno::clear();
        let ret = f(ssl);
        let errno = errno::get();
        drop(guard);
        let err = if ret > 0 {
            None
        } else {
            // SAFETY: `ssl` is valid (see `new`); SSL_get_error reads its state and
            // this thread's error queue, which ErrorStack::get then drains.
            let code = ErrorCode::from_raw(unsafe { ffi::SSL_get_error(ssl, ret) });
            let stack = ErrorStack::get();
            Some(classify(code, Some(&stack), Some(errno)))
        };
        on_ssl::clear_errors();
        (ret, err)
    }
}

impl RawConnection {
    /// One `SSL_read_ex` into `len` writable bytes at `buf`.
    fn read_into(&mut self, buf: *mut u8, len: usize) -> Result<usize, TlsError> {
        let mut n = 0usize;
        // SAFETY: the SSL is valid; the callers pass a buffer writable for `len`
        // bytes, of which OpenSSL writes at most `len`; `n` is a valid out-pointer.
        let (_, err) =
            self.call(|ssl| unsafe { ffi::SSL_read_ex(ssl, buf as *mut c_void, len, &mut n) });
        match err {
            None => Ok(n),
            Some(err) => Err(err),
        }
    }
}

impl Connection for RawConnection {
    fn status(&mut self) -> Status {
        on_ssl::status(self.ssl())
    }
    fn begin(&mut self) {
        on_ssl::begin(self.ssl_mut())
    }
    fn end(&mut self) {
        on_ssl::end(self.ssl_mut())
    }
    fn shutdown(&mut self) -> Result<ShutdownResult, TlsError> {
        // SAFETY: the pointer is the valid SSL of `new`'s contract.
        let (ret, err) = self.call(|ssl| unsafe { ffi::SSL_shutdown(ssl) });
        match (ret, err) {
            (1, _) => Ok(ShutdownResult::Received),
            (0, _) => Ok(ShutdownResult::Sent),
            (_, Some(err)) => Err(err),
            (_, None) => Err(TlsError::Protocol {
                alert: None,
                detail: "SSL_shutdown returned an unknown value",
            }),
        }
    }
    fn read_discard(&mut self) -> Result<usize, TlsError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); DISCARD_BUF];
        self.read_into(buf.as_mut_ptr().cast(), buf.len())
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        self.read_into(buf.as_mut_ptr(), buf.len())
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        on_ssl::accept_moving_write_buffer(self.ssl());
        let mut n = 0usize;
        // SAFETY: the SSL is valid; `buf` is readable for its length; `n` is a
        // valid out-pointer.
        let (_, err) = self.call(|ssl| unsafe {
            ffi::SSL_write_ex(ssl, buf.as_ptr() as *const c_void, buf.len(), &mut n)
        });
        match err {
            None => Ok(n),
            Some(err) => Err(err),
        }
    }
    fn has_pending(&self) -> bool {
        on_ssl::has_pending(self.ssl())
    }
    fn set_quiet(&mut self) {
        on_ssl::set_quiet(self.ssl_mut())
    }
    fn half_close(&mut self) -> io::Result<()> {
        socket::half_close(self.sock())
    }
    fn send_queue_len(&self) -> io::Result<usize> {
        socket::send_queue_len(self.sock())
    }
    fn arm_reset(&mut self) -> io::Result<()> {
        socket::arm_reset(self.sock())
    }
    fn forget_session(&mut self) {
        on_ssl::forget_session(self.ssl_mut())
    }
    fn session_resumable(&self) -> bool {
        on_ssl::session_resumable(self.ssl())
    }
    fn saved_report(&self) -> Option<Report> {
        on_ssl::saved_report(self.ssl())
    }
    fn save_report(&mut self, report: &Report) {
        on_ssl::save_report(self.ssl_mut(), report)
    }
}

impl AsRawFd for RawConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// errno, read and reset around one call.
mod errno {
    pub fn clear() {
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = 0 };
    }
    pub fn get() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_with_nothing_is_eof_in_both_conventions() {
        assert_eq!(classify(ErrorCode::SYSCALL, None, None), TlsError::Eof);
        assert_eq!(classify(ErrorCode::SYSCALL, None, Some(0)), TlsError::Eof);
        assert_eq!(
            classify(ErrorCode::SYSCALL, None, Some(libc::ECONNRESET)),
            TlsError::Os(libc::ECONNRESET)
        );
        assert_eq!(
            classify(ErrorCode::ZERO_RETURN, None, None),
            TlsError::CloseNotify
        );
    }

    #[test]
    fn read_path_reasons_name_their_alerts() {
        assert_eq!(alert_for_reason(267), Some(70));
        assert_eq!(alert_for_reason(281), Some(20));
        assert_eq!(alert_for_reason(198), Some(22));
        assert_eq!(alert_for_reason(291), None);
        assert_eq!(alert_for_reason(259 | reason::COMMON_FLAG), Some(80));
    }
}
