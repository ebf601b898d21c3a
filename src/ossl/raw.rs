//! [`RawConnection`]: a raw `SSL*` and the socket it runs on, as C callers own them.

use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;
use openssl_sys as ffi;

use super::ext;
use super::fdio::{fdio_backend, FdIo};
use super::ssl;
use crate::error::Error;
use crate::socket;

/// A raw `SSL*` and the socket it runs on: what C callers own.
///
/// The caller keeps ownership of both: nothing here frees the `SSL` or closes the
/// socket. The `SSL` must read and write through OpenSSL's own socket (or fd) BIO
/// on exactly that socket (`SSL_set_fd`); [`RawConnection::new`] checks it, and
/// refuses an `SSL` another shutdown is running on.
///
/// While a [`Shutdown`](crate::Shutdown) runs, the `SSL` reads and writes through
/// the shutdown's own BIO on the socket: `recv`/`send` with `MSG_DONTWAIT`, and
/// `MSG_NOSIGNAL`, so that no call blocks whatever the socket's mode (the mode is
/// never changed), and none raises `SIGPIPE` in the host program, even on a
/// connection the peer reset. The caller's BIOs are back when the shutdown ends or
/// is dropped. (An `SSL` that uses kernel TLS keeps its BIOs: the socket is then
/// switched to non-blocking mode for the shutdown and back, and the calls that can
/// write run with `SIGPIPE` blocked on the calling thread.)
#[derive(Debug)]
pub struct RawConnection {
    io: FdIo,
    /// The value owns the `SSL` and the fd (a C closer's connection): dropping it
    /// frees the one and closes the other.
    owns: bool,
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
    /// another fd. The message names the problem. [`Error::Busy`] when another
    /// `RawConnection` (or a C shutdown object) on this `SSL` is alive.
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
        // SAFETY: the caller guarantees `ssl` is a valid SSL and `fd` open.
        unsafe { check(ssl.as_ptr(), fd) }?;
        // SAFETY: as above.
        let ssl_ref = unsafe { SslRef::from_ptr_mut(ssl.as_ptr()) };
        if !ssl::claim(ssl_ref) {
            return Err(Error::Busy(
                "another shutdown of this SSL is in progress (a RawConnection or a C \
                 shutdown object is alive): finish or free it first"
                    .into(),
            ));
        }
        // SAFETY: the caller's contract, forwarded.
        let io = unsafe { FdIo::new(ssl, fd) };
        Ok(RawConnection { io, owns: false })
    }

    /// As [`new`](RawConnection::new), and the value owns `ssl` and `fd` from
    /// now on: dropping it frees the `SSL` (`SSL_free`) and closes the fd. On an
    /// error, nothing changes hands.
    ///
    /// # Safety
    /// As `new`; and `ssl` and `fd` are the caller's to give (nothing else frees
    /// or closes them).
    #[cfg(any(feature = "capi", test))]
    pub(crate) unsafe fn owning(ssl: *mut ffi::SSL, fd: RawFd) -> Result<RawConnection, Error> {
        // SAFETY: the caller's contract, forwarded.
        let mut conn = unsafe { RawConnection::new(ssl, fd) }?;
        conn.owns = true;
        Ok(conn)
    }

    /// From now on the value owns the `SSL` and the fd (see `owning`).
    ///
    /// # Safety
    /// They are the caller's to give: nothing else frees or closes them.
    #[cfg(any(feature = "capi", test))]
    pub(crate) unsafe fn take_ownership(&mut self) {
        self.owns = true;
    }

    /// Gives up what `owning` (or `take_ownership`) took: the caller owns the
    /// `SSL` and the fd again.
    #[cfg(any(feature = "capi", test))]
    pub(crate) fn disown(&mut self) {
        self.owns = false;
    }

    /// The socket.
    pub fn fd(&self) -> RawFd {
        self.io.fd()
    }

    /// Classifies the failure of the application's own last `SSL_read` or
    /// `SSL_write` on this connection the way the shutdown classifies its own
    /// calls (see `FdIo::classify_failure`).
    #[cfg(any(feature = "capi", test))]
    pub(crate) fn classify_failure(
        &self,
        code: openssl::ssl::ErrorCode,
        errno: i32,
    ) -> crate::machine::TlsError {
        self.io.classify_failure(code, errno)
    }
}

impl Drop for RawConnection {
    fn drop(&mut self) {
        self.io.detach();
        ssl::release(self.io.ssl_mut());
        if self.owns {
            let ssl = self.io.ssl().as_ptr();
            // SAFETY: `owning`'s contract: the SSL and the fd are this value's,
            // freed and closed once, here; nothing uses them afterwards (`io`
            // only holds their addresses).
            unsafe {
                ffi::SSL_free(ssl);
                libc::close(self.io.fd());
            }
        }
    }
}

/// Checks that `ssl` and `fd` belong together (see `check_bios`); an fd BIO, which
/// may be on any file, is also checked to be a stream socket. (A socket BIO is
/// `SSL_set_fd`'s: its fd is taken to be a socket without a system call; should
/// it not be one, the first `send` says so, and the report carries `ENOTSOCK`.)
///
/// # Safety
/// `ssl` is a valid SSL; `fd` is open or its checks fail.
unsafe fn check(ssl: *mut ffi::SSL, fd: RawFd) -> Result<(), Error> {
    // SAFETY: the caller's contract: `fd` is open while we use it.
    let sock = unsafe { BorrowedFd::borrow_raw(fd) };
    let not_a_socket =
        |e: std::io::Error| Error::InvalidArgument(format!("fd {fd} is not a stream socket: {e}"));
    // SAFETY: the caller's contract.
    match unsafe { check_bios(ssl, fd) } {
        Ok(fd_bio) => {
            if fd_bio {
                socket::check_stream_socket(sock).map_err(not_a_socket)?;
            }
            Ok(())
        }
        // The best message: a file that is not a stream socket says so first.
        Err(msg) => {
            socket::check_stream_socket(sock).map_err(not_a_socket)?;
            Err(Error::InvalidArgument(msg))
        }
    }
}

/// Checks that `ssl` reads and writes through a socket or fd BIO on `fd`, so that
/// readiness on `fd` means progress for `ssl`, a half-close of `fd` ends `ssl`'s
/// stream, and no BIO callback of another library runs outside its context.
/// Returns whether a BIO is an fd BIO (not a socket BIO).
///
/// # Safety
/// `ssl` is a valid SSL.
unsafe fn check_bios(ssl: *mut ffi::SSL, fd: RawFd) -> Result<bool, String> {
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
    // SAFETY: `ssl` is valid; these getters only read the BIOs' methods.
    let fd_bio = unsafe {
        ext::BIO_method_type(rbio) == ext::BIO_TYPE_FD
            || ext::BIO_method_type(wbio) == ext::BIO_TYPE_FD
    };
    // SAFETY: `ssl` is valid; SSL_get_rfd/wfd read the BIOs' descriptors.
    let (rfd, wfd) = unsafe { (ext::SSL_get_rfd(ssl), ext::SSL_get_wfd(ssl)) };
    if rfd != fd || wfd != fd {
        return Err(format!(
            "the SSL reads from fd {rfd} and writes to fd {wfd}, not fd {fd}: pass \
             the socket the SSL was given with SSL_set_fd"
        ));
    }
    Ok(fd_bio)
}

fdio_backend!(RawConnection);
