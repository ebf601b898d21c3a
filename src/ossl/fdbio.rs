//! The shutdown's own socket BIO, for the backends that own their I/O (a raw
//! `SSL*` and its fd; the Closer's streams): every read is `recv(MSG_DONTWAIT)`
//! and every write `send(MSG_DONTWAIT | MSG_NOSIGNAL)` on the fd. Installed for
//! the shutdown and the caller's BIOs put back afterwards, it makes the
//! shutdown's I/O non-blocking whatever the fd's mode (no `fcntl` to switch it
//! and back), and it can never raise `SIGPIPE` (no signal mask to set and
//! restore): a clean close costs the system calls of the protocol and nothing
//! more.
//!
//! Not installed when the SSL uses kernel TLS (kTLS): its records must go
//! through the kernel's TLS layer with OpenSSL's own socket BIO.

use std::ffi::{c_char, c_int, c_long, c_void};
use std::os::fd::RawFd;
use std::sync::OnceLock;

use openssl_sys as ffi;

use super::ext;

/// `BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR`, and an index of ours.
const TYPE: c_int = 0x0400 | 0x0100 | 0x3c;
/// `BIO_FLAGS_IN_EOF`: the last read returned 0 (what `BIO_eof` answers, as
/// OpenSSL's socket BIO does, so that OpenSSL 3 reports an unexpected EOF the
/// same way whichever BIO read it).
const FLAGS_IN_EOF: c_int = 0x800;
/// `BIO_FLAGS_READ | BIO_FLAGS_WRITE | BIO_FLAGS_IO_SPECIAL |
/// BIO_FLAGS_SHOULD_RETRY`: what a retry request leaves on a BIO.
const RETRY_FLAGS: c_int = 0x0f;
/// `BIO_CTRL_EOF`, `BIO_CTRL_FLUSH`, `BIO_C_GET_FD`.
const CTRL_EOF: c_int = ffi::BIO_CTRL_EOF;
const CTRL_FLUSH: c_int = ffi::BIO_CTRL_FLUSH;
const C_GET_FD: c_int = 105;

/// The BIO method, made once per process (`None` if OpenSSL could not make it:
/// the shutdown then keeps the caller's BIOs).
fn method() -> Option<*mut ffi::BIO_METHOD> {
    static METHOD: OnceLock<usize> = OnceLock::new();
    let method = *METHOD.get_or_init(|| {
        // SAFETY: BIO_meth_new copies the name; the setters store function
        // pointers with the signatures OpenSSL calls them with. The method is
        // never freed: it lives as long as the process, as OpenSSL's own.
        unsafe {
            let m = ffi::BIO_meth_new(TYPE, c"closenotify socket".as_ptr());
            if m.is_null() {
                return 0;
            }
            let ok = ffi::BIO_meth_set_write__fixed_rust(m, Some(write)) == 1
                && ffi::BIO_meth_set_read__fixed_rust(m, Some(read)) == 1
                && ffi::BIO_meth_set_ctrl__fixed_rust(m, Some(ctrl)) == 1
                && ffi::BIO_meth_set_create__fixed_rust(m, Some(create)) == 1
                && ffi::BIO_meth_set_destroy__fixed_rust(m, Some(destroy)) == 1;
            if !ok {
                ffi::BIO_meth_free(m);
                return 0;
            }
            m as usize
        }
    });
    (method != 0).then_some(method as *mut ffi::BIO_METHOD)
}

/// The fd a BIO of ours works on (kept in its data pointer: no allocation).
///
/// # Safety
/// `bio` is a live BIO of this method.
unsafe fn fd_of(bio: *mut ffi::BIO) -> RawFd {
    // SAFETY: the caller's contract; the data pointer holds the fd.
    unsafe { ffi::BIO_get_data(bio) as usize as RawFd }
}

/// The errno of the last call on this thread.
fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A failed send or recv is a retry request when the socket would block (or a
/// signal interrupted it).
fn would_block(err: c_int) -> bool {
    err == libc::EAGAIN || err == libc::EWOULDBLOCK || err == libc::EINTR
}

unsafe extern "C" fn write(bio: *mut ffi::BIO, buf: *const c_char, len: c_int) -> c_int {
    // SAFETY: OpenSSL calls this with one of our live BIOs and a buffer of `len`
    // readable bytes.
    unsafe {
        ffi::BIO_clear_retry_flags(bio);
        let n = libc::send(
            fd_of(bio),
            buf.cast(),
            len.max(0) as usize,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        if n < 0 && would_block(errno()) {
            ffi::BIO_set_retry_write(bio);
        }
        n as c_int
    }
}

unsafe extern "C" fn read(bio: *mut ffi::BIO, buf: *mut c_char, len: c_int) -> c_int {
    // SAFETY: OpenSSL calls this with one of our live BIOs and a buffer of `len`
    // writable bytes.
    unsafe {
        ffi::BIO_clear_retry_flags(bio);
        let n = libc::recv(
            fd_of(bio),
            buf.cast(),
            len.max(0) as usize,
            libc::MSG_DONTWAIT,
        );
        if n < 0 && would_block(errno()) {
            ffi::BIO_set_retry_read(bio);
        } else if n == 0 && len > 0 {
            ffi::BIO_set_flags(bio, FLAGS_IN_EOF);
        }
        n as c_int
    }
}

unsafe extern "C" fn ctrl(
    bio: *mut ffi::BIO,
    cmd: c_int,
    _larg: c_long,
    parg: *mut c_void,
) -> c_long {
    match cmd {
        // Writes go straight to the kernel: nothing to flush.
        CTRL_FLUSH => 1,
        // SAFETY: OpenSSL calls this with one of our live BIOs.
        CTRL_EOF => c_long::from(unsafe { ext::BIO_test_flags(bio, FLAGS_IN_EOF) } != 0),
        // `SSL_get_fd` and friends: the fd, also written to `parg` when given.
        C_GET_FD => {
            // SAFETY: as above; `parg` is NULL or an int to write, as for
            // OpenSSL's socket BIO.
            let fd = unsafe { fd_of(bio) };
            if let Some(out) = unsafe { parg.cast::<c_int>().as_mut() } {
                *out = fd;
            }
            c_long::from(fd)
        }
        _ => 0,
    }
}

unsafe extern "C" fn create(bio: *mut ffi::BIO) -> c_int {
    // SAFETY: OpenSSL calls this with the new BIO.
    unsafe { ffi::BIO_set_init(bio, 1) };
    1
}

unsafe extern "C" fn destroy(_bio: *mut ffi::BIO) -> c_int {
    // Nothing allocated; the fd is the owner's.
    1
}

/// The caller's BIOs, while ours are in their place.
#[derive(Debug)]
pub(crate) struct Swapped {
    rbio: *mut ffi::BIO,
    wbio: *mut ffi::BIO,
}

/// Puts a BIO of ours on `fd` in the place of `ssl`'s read and write BIOs, and
/// returns the caller's, each with the reference the SSL held: `restore` gives
/// them back. `None` (nothing changed) when the SSL has no BIO, uses kernel TLS,
/// or OpenSSL cannot make a BIO.
///
/// # Safety
/// `ssl` is a valid SSL, and `fd` stays open while the BIO is in place.
pub(crate) unsafe fn install(ssl: *mut ffi::SSL, fd: RawFd) -> Option<Swapped> {
    let method = method()?;
    // SAFETY: `ssl` is valid (the caller's contract); the getters read its BIOs,
    // which stay alive: BIO_up_ref takes the reference that `restore` hands back
    // (SSL_set0_*bio drops the SSL's own). Our BIO gets one reference per place
    // it takes: SSL_free or `restore` drop them.
    unsafe {
        let rbio = ffi::SSL_get_rbio(ssl);
        let wbio = ext::SSL_get_wbio(ssl);
        if rbio.is_null() || wbio.is_null() || ktls(rbio, wbio) {
            return None;
        }
        let ours = ffi::BIO_new(method);
        if ours.is_null() {
            ffi::ERR_clear_error();
            return None;
        }
        ffi::BIO_set_data(ours, fd as usize as *mut c_void);
        // The retry state of the caller's last call: OpenSSL reads it from the
        // BIO (a write left half-finished is WANT_WRITE through the write BIO's
        // flags until it is retried).
        let retry = match ext::BIO_test_flags(wbio, RETRY_FLAGS) {
            0 => ext::BIO_test_flags(rbio, RETRY_FLAGS),
            flags => flags,
        };
        ffi::BIO_set_flags(ours, retry);
        if ext::BIO_up_ref(ours) != 1 {
            ext::BIO_free(ours);
            return None;
        }
        if ext::BIO_up_ref(rbio) != 1 {
            ext::BIO_free(ours);
            ext::BIO_free(ours);
            return None;
        }
        if ext::BIO_up_ref(wbio) != 1 {
            ext::BIO_free(rbio);
            ext::BIO_free(ours);
            ext::BIO_free(ours);
            return None;
        }
        ext::SSL_set0_rbio(ssl, ours);
        ext::SSL_set0_wbio(ssl, ours);
        Some(Swapped { rbio, wbio })
    }
}

/// Gives `ssl` its BIOs back (and frees ours).
///
/// # Safety
/// `ssl` is the valid SSL `install` returned `swapped` for, with our BIO in both
/// places.
pub(crate) unsafe fn restore(ssl: *mut ffi::SSL, swapped: Swapped) {
    // SAFETY: the caller's contract; each set0 hands the reference `install` took
    // back to the SSL and drops the SSL's reference to our BIO.
    unsafe {
        ext::SSL_set0_rbio(ssl, swapped.rbio);
        ext::SSL_set0_wbio(ssl, swapped.wbio);
    }
}

/// Whether either BIO sends or receives through kernel TLS
/// (`BIO_get_ktls_send`, `BIO_get_ktls_recv`; OpenSSL 3.0+, never on 1.1.1).
///
/// # Safety
/// Both are live BIOs.
unsafe fn ktls(rbio: *mut ffi::BIO, wbio: *mut ffi::BIO) -> bool {
    const CTRL_GET_KTLS_SEND: c_int = 73;
    const CTRL_GET_KTLS_RECV: c_int = 76;
    // SAFETY: BIO_ctrl with these commands only reads a flag; BIOs that do not
    // know them answer 0.
    unsafe {
        cfg!(ossl300)
            && (ffi::BIO_ctrl(wbio, CTRL_GET_KTLS_SEND, 0, std::ptr::null_mut()) != 0
                || ffi::BIO_ctrl(rbio, CTRL_GET_KTLS_RECV, 0, std::ptr::null_mut()) != 0)
    }
}
