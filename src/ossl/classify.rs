//! The one place where OpenSSL's answers become [`TlsError`]s: `SSL_get_error`'s
//! code, the drained error queue and the errno of the call.

use std::ffi::c_ulong;

use openssl::error::ErrorStack;
use openssl::ssl::ErrorCode;
use openssl_sys as ffi;

use super::reasons;
use crate::machine::TlsError;

/// Turns `SSL_get_error`'s code, the drained error queue and the errno of the call
/// into a [`TlsError`]. Both EOF conventions are recognised whatever the build:
/// OpenSSL 1.1.1, and any BIO that does not report `BIO_eof` (rust-openssl's stream
/// BIO), say `SSL_ERROR_SYSCALL` with an empty queue and no errno; OpenSSL 3.x with
/// a socket BIO raises `SSL_R_UNEXPECTED_EOF_WHILE_READING`. `tls13`: the
/// connection negotiated TLS 1.3 (some alerts depend on it).
pub(crate) fn classify(
    code: ErrorCode,
    stack: Option<&ErrorStack>,
    os_error: Option<i32>,
    tls13: bool,
) -> TlsError {
    match code {
        ErrorCode::WANT_READ => TlsError::WantRead,
        ErrorCode::WANT_WRITE => TlsError::WantWrite,
        ErrorCode::ZERO_RETURN => TlsError::CloseNotify,
        ErrorCode::SYSCALL | ErrorCode::SSL => {
            if let Some(err) = stack.and_then(|s| most_relevant(s.errors())) {
                return classify_queued(err, os_error, tls13);
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

/// rust-openssl keeps the I/O error of its BIO in the `ssl::Error`, not in errno.
pub(crate) fn classify_stream(err: &openssl::ssl::Error, tls13: bool) -> TlsError {
    let os_error = err
        .io_error()
        .map(|e| e.raw_os_error().unwrap_or(libc::EIO));
    classify(err.code(), err.ssl_error(), os_error, tls13)
}

/// The errno a queued entry carries, if it is a system error.
///
/// OpenSSL 3 packs a system error as `ERR_SYSTEM_FLAG | errno` (OpenSSL 3.2+ queues
/// one when a record-layer write fails). `openssl-sys`'s `ERR_GET_REASON` answers
/// `ERR_LIB_SYS` (2) for such a code instead of the errno, so the errno is taken
/// from the packed code itself. OpenSSL 1.1.1 packs it as an ordinary
/// `ERR_LIB_SYS` entry whose reason is the errno.
fn system_errno(code: c_ulong) -> Option<i32> {
    #[cfg(ossl300)]
    if ffi::ERR_SYSTEM_ERROR(code) {
        return Some((code & ffi::ERR_SYSTEM_MASK) as i32);
    }
    if ffi::ERR_GET_LIB(code) == ffi::ERR_LIB_SYS {
        return Some(ffi::ERR_GET_REASON(code));
    }
    None
}

/// The entry that explains a failure: a system error if there is one, else the
/// last entry of the SSL library that is not a mere wrapper (the one `SSLfatal`
/// pushed, after lower layers such as EVP's "cipher operation failed", and before
/// 3.2's "record layer failure"), else the first.
fn most_relevant(errors: &[openssl::error::Error]) -> Option<&openssl::error::Error> {
    errors
        .iter()
        .find(|e| system_errno(e.code()).is_some())
        .or_else(|| {
            errors.iter().rev().find(|e| {
                e.library_code() == reasons::ERR_LIB_SSL && !reasons::is_wrapper(e.reason_code())
            })
        })
        .or_else(|| errors.first())
}

fn classify_queued(err: &openssl::error::Error, os_error: Option<i32>, tls13: bool) -> TlsError {
    if let Some(errno) = system_errno(err.code()) {
        // The errno saved at the call is the more precise one when both exist.
        return TlsError::Os(os_error.filter(|&e| e != 0).unwrap_or(errno));
    }
    let detail = err.reason().unwrap_or("unknown OpenSSL error");
    if err.library_code() != reasons::ERR_LIB_SSL {
        return TlsError::Protocol {
            alert: None,
            detail,
        };
    }
    match err.reason_code() {
        reasons::UNEXPECTED_EOF_WHILE_READING if cfg!(ossl300) => TlsError::Eof,
        reasons::BAD_WRITE_RETRY | reasons::SHUTDOWN_WHILE_IN_INIT => TlsError::Unusable { detail },
        r if (reasons::ALERT_OFFSET..reasons::ALERT_OFFSET + 256).contains(&r) => {
            TlsError::PeerAlert((r - reasons::ALERT_OFFSET) as u8)
        }
        r => TlsError::Protocol {
            alert: reasons::alert_for(r, tls13),
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_with_nothing_is_eof_in_both_conventions() {
        assert_eq!(
            classify(ErrorCode::SYSCALL, None, None, false),
            TlsError::Eof
        );
        assert_eq!(
            classify(ErrorCode::SYSCALL, None, Some(0), false),
            TlsError::Eof
        );
        assert_eq!(
            classify(ErrorCode::SYSCALL, None, Some(libc::ECONNRESET), false),
            TlsError::Os(libc::ECONNRESET)
        );
        assert_eq!(
            classify(ErrorCode::ZERO_RETURN, None, None, false),
            TlsError::CloseNotify
        );
    }

    /// OpenSSL 3 packs `ERR_raise(ERR_LIB_SYS, errno)` as `ERR_SYSTEM_FLAG | errno`:
    /// the errno must come out, not `ERR_LIB_SYS` (what `ERR_GET_REASON` says).
    #[cfg(ossl300)]
    #[test]
    fn a_packed_system_error_gives_its_errno() {
        let packed = ffi::ERR_SYSTEM_FLAG | libc::EPIPE as c_ulong;
        assert_eq!(ffi::ERR_GET_REASON(packed), ffi::ERR_LIB_SYS, "the trap");
        assert_eq!(system_errno(packed), Some(libc::EPIPE));
        // An SSL-library entry is not a system error.
        let ssl =
            (reasons::ERR_LIB_SSL as c_ulong) << 23 | reasons::WRONG_VERSION_NUMBER as c_ulong;
        assert_eq!(system_errno(ssl), None);
    }
}
