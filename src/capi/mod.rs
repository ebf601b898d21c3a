//! The C API (`include/closenotify.h`, generated from this module by cbindgen),
//! built with the `capi` feature (cargo-c builds and installs it: see
//! `docs/c-api.md`).
//!
//! Conventions, after rustls-ffi: the object first, inputs, outputs last; outputs
//! are written only on success; every function body runs inside a panic boundary;
//! a null pointer or an invalid value is a result code, never a crash. Values C
//! passes in (modes, outcomes, result codes) are plain integers on this side, so an
//! out-of-range value is an error and not undefined behaviour.
//!
//! The caller keeps ownership of the `SSL*` and of the socket: nothing here frees
//! or closes them.
//!
//! The calls: `closenotify_shutdown_blocking` (and `_blocking_read`) for blocking
//! code; for event loops, `closenotify_shutdown_new`, then what the application
//! could not finish, before the first step (`closenotify_shutdown_set_unsent`: the
//! bytes of a write that stopped half way, as [`Shutdown::with_unsent`](crate::Shutdown::with_unsent);
//! `closenotify_shutdown_set_error`: the failure of its last call, classified from
//! `SSL_get_error`'s code, the errno and OpenSSL's error queue as the shutdown
//! classifies its own, with the connection's TLS version, as
//! [`Shutdown::after_error`](crate::Shutdown::after_error)), then
//! `closenotify_shutdown_step` (`_step_revents`, `_step_read`) until done,
//! `closenotify_shutdown_report` and `closenotify_shutdown_free`.
//!
//! ABI promise: names and numbers never change; structs only grow into their
//! reserved space (`closenotify_policy` checks that a policy came from
//! `closenotify_policy_init` and that its reserved words are zero, so a program
//! built against a newer header fails loudly on an older library instead of
//! having its new knobs ignored); the library's SONAME changes with every
//! release that breaks this promise.
#![allow(non_camel_case_types)]

mod closer;
mod policy;
mod report;
mod shutdown;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::report::{Alert, Outcome, Stage};

pub use self::closer::*;
pub use self::policy::*;
pub use self::report::*;
pub use self::shutdown::*;

/// Result of every call. A misbehaving peer is an outcome in the report, never an
/// error here. The numbers never change.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_result(pub u32);
/// Success.
pub const CLOSENOTIFY_OK: closenotify_result = closenotify_result(0);
/// A required pointer argument was NULL.
pub const CLOSENOTIFY_ERR_NULL_ARGUMENT: closenotify_result = closenotify_result(1);
/// An argument is out of range: a negative or non-socket fd, an unknown
/// mode, a zero or absurd timeout. `closenotify_last_error` says which.
pub const CLOSENOTIFY_ERR_INVALID_ARGUMENT: closenotify_result = closenotify_result(2);
/// The call is not valid now: a report requested before the step API said
/// `CLOSENOTIFY_WAIT_DONE`, unsent data or an error handed over after the
/// first step, or a second shutdown object on an `SSL*` whose first is not
/// freed yet.
pub const CLOSENOTIFY_ERR_WRONG_STATE: closenotify_result = closenotify_result(3);
/// closenotify panicked (a bug); the shutdown object must only be freed.
pub const CLOSENOTIFY_ERR_PANIC: closenotify_result = closenotify_result(4);
/// The sink of `closenotify_shutdown_blocking_read` returned non-zero: the
/// shutdown was abandoned there (nothing more read; the report is not written).
pub const CLOSENOTIFY_ERR_SINK: closenotify_result = closenotify_result(5);
/// The system refused what a closer needs (an epoll instance, watching an fd,
/// waiting on it: ENOMEM, EMFILE ...); `closenotify_last_error` says what. Nothing
/// changed hands.
pub const CLOSENOTIFY_ERR_SYSTEM: closenotify_result = closenotify_result(6);

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn fail(code: closenotify_result, message: impl Into<String>) -> closenotify_result {
    let message = message.into();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
    code
}

/// Runs `body`; a panic becomes `on_panic` (and a last-error message) instead of
/// unwinding into C, which would be undefined behaviour.
fn boundary<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            let _ = fail(
                CLOSENOTIFY_ERR_PANIC,
                "closenotify panicked (a bug; please report it)",
            );
            on_panic
        }
    }
}

/// The library's version, "MAJOR.MINOR.PATCH": the same as the header's
/// `CLOSENOTIFY_VERSION` when the program runs with the library it was built
/// against. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The name of an outcome: "clean", "sent_only", "quiet", "truncated", "reset",
/// "peer_alert", "protocol_error", "timed_out", "drain_limit"; "unknown" for any
/// other value. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_outcome_name(outcome: closenotify_outcome) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || {
        Outcome::from_number(outcome.0)
            .map_or(UNKNOWN, Outcome::as_cstr)
            .as_ptr()
    })
}

/// The name of a stage: "flush", "half_close", "await_peer", "linger"; "unknown"
/// for any other value. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_stage_name(stage: closenotify_stage) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || {
        Stage::from_number(stage.0)
            .map_or(UNKNOWN, Stage::as_cstr)
            .as_ptr()
    })
}

/// The RFC 8446 / 5246 name of an alert code ("bad_record_mac", "unknown_ca", ...);
/// "none" for -1; "unknown" for codes no RFC defines. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_alert_name(alert: c_int) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || match alert {
        -1 => c"none".as_ptr(),
        0..=255 => static_cstr(Alert::from_code(alert as u8).name()),
        _ => UNKNOWN.as_ptr(),
    })
}

/// The name of a result code: "ok", "null_argument", "invalid_argument",
/// "wrong_state", "panic", "sink", "system"; "unknown" for any other value. The string is
/// static.
#[no_mangle]
pub extern "C" fn closenotify_result_name(result: closenotify_result) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || {
        let name = match result {
            CLOSENOTIFY_OK => c"ok",
            CLOSENOTIFY_ERR_NULL_ARGUMENT => c"null_argument",
            CLOSENOTIFY_ERR_INVALID_ARGUMENT => c"invalid_argument",
            CLOSENOTIFY_ERR_WRONG_STATE => c"wrong_state",
            CLOSENOTIFY_ERR_PANIC => c"panic",
            CLOSENOTIFY_ERR_SINK => c"sink",
            CLOSENOTIFY_ERR_SYSTEM => c"system",
            _ => UNKNOWN,
        };
        name.as_ptr()
    })
}

/// Copies the message of the last failed call on this thread (for a policy with
/// `peer_timeout_ms` 0: "invalid policy: peer_timeout_ms must be at least 1 ms
/// (or use CLOSENOTIFY_MODE_SEND_ONLY not to wait for the peer)") into `buf`,
/// NUL-terminated and
/// truncated to `len` bytes; returns the message's full length (as snprintf). The
/// message is empty if no call has failed. `buf` may be NULL when `len` is 0.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn closenotify_last_error(buf: *mut c_char, len: usize) -> usize {
    boundary(0, || {
        LAST_ERROR.with(|e| {
            let msg = e.borrow();
            if !buf.is_null() && len > 0 {
                let n = msg.len().min(len - 1);
                // SAFETY: `buf` is writable for `len` bytes and `n + 1 <= len`.
                unsafe {
                    std::ptr::copy_nonoverlapping(msg.as_ptr().cast(), buf, n);
                    buf.add(n).write(0);
                }
            }
            msg.len()
        })
    })
}

const UNKNOWN: &CStr = c"unknown";

/// A NUL-terminated copy of a static string (an alert's name, a reason text of
/// OpenSSL or of this crate: a small fixed set), made once per distinct string
/// and kept for the rest of the process.
fn static_cstr(text: &'static str) -> *const c_char {
    static CACHE: Mutex<Vec<(&'static str, &'static CStr)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = cache.iter().find(|(s, _)| *s == text) {
        return c.as_ptr();
    }
    let owned = CString::new(text.replace('\0', " ")).unwrap_or_default();
    let leaked: &'static CStr = Box::leak(owned.into_boxed_c_str());
    cache.push((text, leaked));
    leaked.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(p: *const c_char) -> &'static str {
        // SAFETY: every name function returns a static NUL-terminated string (or a
        // thread-local one that lives as long as the test thread).
        unsafe { CStr::from_ptr(p) }.to_str().unwrap()
    }

    #[test]
    fn outcome_constants_follow_the_rust_order_and_names() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(
                name(closenotify_outcome_name(closenotify_outcome(i as u32))),
                o.as_str()
            );
        }
        assert_eq!(
            name(closenotify_outcome_name(closenotify_outcome(99))),
            "unknown"
        );
        assert_eq!(name(closenotify_alert_name(20)), "bad_record_mac");
        assert_eq!(name(closenotify_alert_name(-1)), "none");
        assert_eq!(name(closenotify_alert_name(3)), "unknown");
        assert_eq!(name(closenotify_alert_name(4096)), "unknown");
        assert_eq!(
            name(closenotify_result_name(CLOSENOTIFY_ERR_PANIC)),
            "panic"
        );
        assert_eq!(
            name(closenotify_stage_name(CLOSENOTIFY_STAGE_AWAIT_PEER)),
            "await_peer"
        );
    }

    #[test]
    fn the_panic_boundary_turns_a_panic_into_a_result_code() {
        let code = boundary(CLOSENOTIFY_ERR_PANIC, || -> closenotify_result {
            panic!("boom")
        });
        assert_eq!(code, CLOSENOTIFY_ERR_PANIC);
        let mut buf = [0 as c_char; 64];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { closenotify_last_error(buf.as_mut_ptr(), buf.len()) };
        assert!(n > 0);
        assert!(name(buf.as_ptr()).starts_with("closenotify panicked"));
        // Truncation to a small buffer, snprintf-style.
        let mut small = [0 as c_char; 8];
        // SAFETY: `small` is writable.
        let full = unsafe { closenotify_last_error(small.as_mut_ptr(), small.len()) };
        assert!(full > 8);
        assert_eq!(name(small.as_ptr()), "closeno");
    }

    #[test]
    fn the_version_is_the_crates() {
        assert_eq!(name(closenotify_version()), env!("CARGO_PKG_VERSION"));
    }
}
