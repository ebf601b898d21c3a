//! The I/O of the backends that own it (a raw `SSL*` and its fd; the Closer's
//! streams): OpenSSL's calls made directly on the `SSL`, through the shutdown's
//! own BIO (`fdbio`) while the shutdown runs, with errno captured right after
//! each call and its failure classified.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::{ErrorCode, SslRef};
use openssl_sys as ffi;

use super::classify::classify;
use super::fdbio::{self, Swapped};
use super::ssl;
use crate::machine::{ShutdownAnswer, TlsError};
use crate::sigpipe::SigpipeGuard;

/// An `SSL` and its fd, driven with OpenSSL's own calls.
#[derive(Debug)]
pub(crate) struct FdIo {
    ssl: NonNull<ffi::SSL>,
    fd: RawFd,
    /// The caller's BIOs, while the shutdown's own are in their place.
    swapped: Option<Swapped>,
    /// OpenSSL's writes go to a sink (`seal`): no call can write to the socket.
    sealed: bool,
}

impl FdIo {
    /// # Safety
    /// `ssl` is a valid SSL that outlives the value, on `fd`, which stays open as
    /// long; neither is used by another thread while the value is in use.
    pub(crate) unsafe fn new(ssl: NonNull<ffi::SSL>, fd: RawFd) -> FdIo {
        FdIo {
            ssl,
            fd,
            swapped: None,
            sealed: false,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: `new`'s contract: the fd stays open as long as the value.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    pub(crate) fn ssl(&self) -> &SslRef {
        // SAFETY: `new`'s contract: the SSL is valid and not used elsewhere.
        unsafe { SslRef::from_ptr(self.ssl.as_ptr()) }
    }

    pub(crate) fn ssl_mut(&mut self) -> &mut SslRef {
        // SAFETY: as in `ssl`; `&mut self` makes the borrow unique.
        unsafe { SslRef::from_ptr_mut(self.ssl.as_ptr()) }
    }

    /// The shutdown begins: its own BIO takes the place of the caller's (unless
    /// the SSL uses kernel TLS).
    pub(crate) fn attach(&mut self) {
        if self.swapped.is_none() {
            // SAFETY: `new`'s contract; `detach` (or drop) puts them back.
            self.swapped = unsafe { fdbio::install(self.ssl.as_ptr(), self.fd) };
        }
    }

    /// The shutdown is over: the caller's BIOs are back.
    pub(crate) fn detach(&mut self) {
        if let Some(swapped) = self.swapped.take() {
            // SAFETY: `attach` installed ours in both places; `seal` has been
            // undone by then (`ssl::end` runs first).
            unsafe { fdbio::restore(self.ssl.as_ptr(), swapped) };
        }
    }

    /// The I/O goes through the shutdown's own BIO: non-blocking whatever the
    /// fd's mode, and never a `SIGPIPE`.
    pub(crate) fn owns_io(&self) -> bool {
        self.swapped.is_some()
    }

    pub(crate) fn set_sealed(&mut self, sealed: bool) {
        self.sealed = sealed;
    }

    /// One OpenSSL I/O call, errno captured right after it, the error queue
    /// drained. Through the caller's socket BIO (kernel TLS), a call that can
    /// write runs with `SIGPIPE` blocked. `sends`: the call writes
    /// (`SSL_shutdown`, `SSL_write`); once the peer's close_notify is in,
    /// `SSL_get_error` says ZERO_RETURN for any failure of such a call, and the
    /// errno is the truth.
    fn call(
        &mut self,
        sends: bool,
        f: impl FnOnce(*mut ffi::SSL) -> c_int,
    ) -> (c_int, Option<TlsError>) {
        let ssl = self.ssl.as_ptr();
        let guarded = !self.owns_io() && (sends || !self.sealed);
        ssl::with_clean_queue(|| {
            let guard = guarded.then(SigpipeGuard::new);
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

    /// Classifies the failure of a call on this SSL: `code` is `SSL_get_error`'s
    /// answer, `errno` the errno saved right after the call, and the error queue
    /// that call left on this thread is read (and emptied) here. The negotiated
    /// TLS version is known, so the alerts that depend on it are exact.
    pub(crate) fn classify_failure(&self, code: ErrorCode, errno: i32) -> TlsError {
        let stack = ErrorStack::get();
        classify(code, Some(&stack), Some(errno), ssl::is_tls13(self.ssl()))
    }

    pub(crate) fn shutdown(&mut self) -> Result<ShutdownAnswer, TlsError> {
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

    pub(crate) fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        let mut n = 0usize;
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: the SSL is valid; `buf` is writable for `len` bytes, of which
        // OpenSSL writes at most `len`; `n` is a valid out-pointer.
        let (_, err) = self.call(false, |ssl| unsafe {
            ffi::SSL_read_ex(ssl, ptr as *mut c_void, len, &mut n)
        });
        err.map_or(Ok(n), Err)
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        let mut n = 0usize;
        // SAFETY: the SSL is valid; `buf` is readable for its length; `n` is a
        // valid out-pointer.
        let (_, err) = self.call(true, |ssl| unsafe {
            ffi::SSL_write_ex(ssl, buf.as_ptr() as *const c_void, buf.len(), &mut n)
        });
        err.map_or(Ok(n), Err)
    }
}

impl Drop for FdIo {
    /// The caller's BIOs back, should the shutdown be forgotten without its end.
    fn drop(&mut self) {
        self.detach();
    }
}

/// `Backend`, `Closable` and `AsRawFd` for a type whose `io: FdIo` field does
/// all of its I/O: the backends that own it, `Owned` and `RawConnection`.
macro_rules! fdio_backend {
    ($t:ty) => {
        impl $crate::ossl::core::Backend for $t {
            fn ssl(&self) -> &::openssl::ssl::SslRef {
                self.io.ssl()
            }
            fn ssl_mut(&mut self) -> &mut ::openssl::ssl::SslRef {
                self.io.ssl_mut()
            }
            fn socket(&self) -> ::std::os::fd::BorrowedFd<'_> {
                self.io.socket()
            }
            fn attach(&mut self) {
                self.io.attach();
            }
            fn detach(&mut self) {
                self.io.detach();
            }
            fn switches_blocking(&self) -> bool {
                !self.io.owns_io()
            }
            fn shutdown(
                &mut self,
            ) -> Result<$crate::machine::ShutdownAnswer, $crate::machine::TlsError> {
                self.io.shutdown()
            }
            fn read(
                &mut self,
                buf: &mut [::std::mem::MaybeUninit<u8>],
            ) -> Result<usize, $crate::machine::TlsError> {
                self.io.read(buf)
            }
            fn write(&mut self, buf: &[u8]) -> Result<usize, $crate::machine::TlsError> {
                self.io.write(buf)
            }
            fn set_sealed(&mut self, sealed: bool) {
                self.io.set_sealed(sealed);
            }
        }

        impl $crate::closer::engine::Closable for $t {
            fn prepare_for_closer(&mut self) {
                $crate::ossl::ssl::prepare_for_closer(self.io.ssl());
            }
            fn free_buffers(&mut self) {
                $crate::ossl::ssl::free_buffers(self.io.ssl());
            }
        }

        impl ::std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> ::std::os::fd::RawFd {
                self.io.fd()
            }
        }
    };
}
pub(crate) use fdio_backend;

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
