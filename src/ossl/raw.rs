//! [`RawConnection`]: a raw `SSL*` and the socket it runs on, as C callers own them.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::{ErrorCode, SslRef};
use openssl_sys as ffi;

use super::classify::classify;
use super::core::Backend;
use super::ext;
use super::ssl;
use crate::error::Error;
use crate::machine::{ShutdownAnswer, TlsError};
use crate::sigpipe::SigpipeGuard;
use crate::socket;

/// A raw `SSL*` and the socket it runs on: what C callers own.
///
/// The caller keeps ownership of both: nothing here frees the `SSL` or closes the
/// socket. The `SSL` must read and write through OpenSSL's own socket (or fd) BIO
/// on exactly that socket (`SSL_set_fd`); [`RawConnection::new`] checks it.
///
/// Every OpenSSL call that can write to the socket runs with `SIGPIPE` blocked on
/// the calling thread, and a `SIGPIPE` it raised is consumed before the mask is
/// restored, so a host program with the default disposition survives a peer that
/// reset the connection even though OpenSSL's socket BIO writes with `write()`.
/// (Once our close_notify is out, OpenSSL's writes go to a sink: the reads that
/// wait for the peer's need no guard.) The socket is switched to
/// non-blocking mode while a [`Shutdown`](crate::Shutdown) runs on it, and back
/// when the shutdown ends or is dropped.
#[derive(Debug)]
pub struct RawConnection {
    ssl: NonNull<ffi::SSL>,
    fd: RawFd,
    /// OpenSSL's writes go to a sink (`seal`): no call can write to the socket.
    sealed: bool,
}

impl RawConnection {
    /// Wraps `ssl` and its socket `fd`, after checking that they belong together.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`], with nothing done to either socket, when `ssl`
    /// is null, `fd` is negative or not a stream socket, or the `SSL` does not read
    /// and write through a socket or fd BIO on `fd`: a memory BIO, a BIO pair, a
    /// BIO of another library (rust-openssl's and tokio-openssl's streams use their
    /// own: shut those down through their stream types instead), or a socket BIO on
    /// another fd. The message names the problem.
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
        // SAFETY: the caller guarantees `ssl` is a valid SSL.
        unsafe { check_bios(ssl.as_ptr(), fd) }.map_err(Error::InvalidArgument)?;
        Ok(RawConnection {
            ssl,
            fd,
            sealed: false,
        })
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
    /// and the error queue drained. `sends`: the call writes (`SSL_shutdown`,
    /// `SSL_write`); once the peer's close_notify is in, `SSL_get_error` says
    /// ZERO_RETURN for any failure of such a call, and the errno is the truth.
    fn call(
        &mut self,
        sends: bool,
        f: impl FnOnce(*mut ffi::SSL) -> c_int,
    ) -> (c_int, Option<TlsError>) {
        let ssl = self.ssl.as_ptr();
        ssl::with_clean_queue(|| {
            // A sealed SSL writes nothing to the socket: no SIGPIPE to guard against.
            let guard = (sends || !self.sealed).then(SigpipeGuard::new);
            errno::clear();
            let ret = f(ssl);
            let errno = errno::get();
            drop(guard);
            if ret > 0 {
                return (ret, None);
            }
            // SAFETY: `ssl` is valid (see `new`); SSL_get_error reads its state and
            // this thread's error queue, which `classify_failure` then drains.
            let code = ErrorCode::from_raw(unsafe { ffi::SSL_get_error(ssl, ret) });
            let err = match self.classify_failure(code, errno) {
                TlsError::CloseNotify if sends && errno != 0 => TlsError::Os(errno),
                other => other,
            };
            (ret, Some(err))
        })
    }

    /// Classifies the failure of the application's own last `SSL_read` or
    /// `SSL_write` on this connection the way the shutdown classifies its own
    /// calls: `code` is `SSL_get_error`'s answer, `errno` the errno saved right
    /// after the call, and the error queue that call left on this thread is read
    /// (and emptied) here. Unlike `TlsError::from(&openssl::ssl::Error)`, the
    /// negotiated TLS version is known, so the alerts that depend on it are exact.
    pub(crate) fn classify_failure(&self, code: ErrorCode, errno: i32) -> TlsError {
        let stack = ErrorStack::get();
        classify(code, Some(&stack), Some(errno), ssl::is_tls13(self.ssl()))
    }
}

/// Checks that `ssl` reads and writes through a socket or fd BIO on `fd`, so that
/// readiness on `fd` means progress for `ssl`, a half-close of `fd` ends `ssl`'s
/// stream, and no BIO callback of another library runs outside its context.
///
/// # Safety
/// `ssl` is a valid SSL.
unsafe fn check_bios(ssl: *mut ffi::SSL, fd: RawFd) -> Result<(), String> {
    // SAFETY: `ssl` is valid; these getters only read its BIO pointers.
    let (rbio, wbio) = unsafe { (ffi::SSL_get_rbio(ssl), ext::SSL_get_wbio(ssl)) };
    for (bio, side) in [(rbio, "read"), (wbio, "write")] {
        if bio.is_null() {
            return Err(format!(
                "the SSL has no {side} BIO: attach the socket with SSL_set_fd"
            ));
        }
        // SAFETY: `bio` is a live BIO of `ssl`; BIO_method_type reads its method.
        let kind = unsafe { ext::BIO_method_type(bio) };
        if kind != ext::BIO_TYPE_SOCKET && kind != ext::BIO_TYPE_FD {
            let what = match kind {
                ext::BIO_TYPE_MEM => "a memory BIO".to_string(),
                ext::BIO_TYPE_BIO => "half of a BIO pair".to_string(),
                0 => "a custom BIO (as rust-openssl's and tokio-openssl's streams use)".to_string(),
                other => format!("a BIO of type {other:#06x}"),
            };
            return Err(format!(
                "the SSL's {side} BIO is {what}, not a socket or fd BIO: closenotify \
                 drives raw SSL* only on OpenSSL's own socket BIO (SSL_set_fd); shut \
                 rust-openssl or tokio-openssl streams down through their stream types"
            ));
        }
    }
    // SAFETY: `ssl` is valid; SSL_get_rfd/wfd read the BIOs' descriptors.
    let (rfd, wfd) = unsafe { (ext::SSL_get_rfd(ssl), ext::SSL_get_wfd(ssl)) };
    if rfd != fd || wfd != fd {
        return Err(format!(
            "the SSL reads from fd {rfd} and writes to fd {wfd}, not fd {fd}: pass \
             the socket the SSL was given with SSL_set_fd"
        ));
    }
    Ok(())
}

impl Backend for RawConnection {
    fn ssl(&self) -> &SslRef {
        RawConnection::ssl(self)
    }
    fn ssl_mut(&mut self) -> &mut SslRef {
        RawConnection::ssl_mut(self)
    }
    fn socket(&self) -> BorrowedFd<'_> {
        self.sock()
    }
    fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
        // SAFETY: the pointer is the valid SSL of `new`'s contract.
        let (ret, err) = self.call(true, |ssl| unsafe { ffi::SSL_shutdown(ssl) });
        match (ret, err) {
            (1, _) => Ok(ShutdownAnswer::Received),
            (0, _) => Ok(ShutdownAnswer::Sent),
            (_, Some(err)) => Err(err),
            (_, None) => Err(TlsError::Protocol {
                alert: None,
                detail: "SSL_shutdown returned an unknown value",
            }),
        }
    }
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        let mut n = 0usize;
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: the SSL is valid; `buf` is writable for `len` bytes, of which
        // OpenSSL writes at most `len`; `n` is a valid out-pointer.
        let (_, err) = self.call(false, |ssl| unsafe {
            ffi::SSL_read_ex(ssl, ptr as *mut c_void, len, &mut n)
        });
        match err {
            None => Ok(n),
            Some(err) => Err(err),
        }
    }
    fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        let mut n = 0usize;
        // SAFETY: the SSL is valid; `buf` is readable for its length; `n` is a
        // valid out-pointer.
        let (_, err) = self.call(true, |ssl| unsafe {
            ffi::SSL_write_ex(ssl, buf.as_ptr() as *const c_void, buf.len(), &mut n)
        });
        match err {
            None => Ok(n),
            Some(err) => Err(err),
        }
    }
    fn set_sealed(&mut self, sealed: bool) {
        self.sealed = sealed;
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
