//! `closenotify_policy`: what C callers choose, validated into a [`Policy`].

use std::ffi::c_int;
use std::mem::size_of;
use std::time::Duration;

use super::{boundary, closenotify_result, fail, CLOSENOTIFY_ERR_INVALID_ARGUMENT};
use crate::policy::{Mode, Names, Policy, ResetOnTimeout};

/// What the shutdown sends and waits for.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_mode(pub u32);
/// Send close_notify, half-close, wait for the peer's close_notify (default).
pub const CLOSENOTIFY_MODE_BIDIRECTIONAL: closenotify_mode = closenotify_mode(0);
/// Send close_notify, half-close, do not wait.
pub const CLOSENOTIFY_MODE_SEND_ONLY: closenotify_mode = closenotify_mode(1);
/// Send nothing.
pub const CLOSENOTIFY_MODE_QUIET: closenotify_mode = closenotify_mode(2);
/// Leave TLS and keep the connection (STOPTLS): send close_notify, wait for
/// the peer's, never half-close, and read nothing past the peer's
/// close_notify. On `clean`, `transport_reusable` is set and the fd is
/// positioned at the first plaintext byte; otherwise close the fd.
pub const CLOSENOTIFY_MODE_STOPTLS: closenotify_mode = closenotify_mode(3);

/// When a timeout arms `SO_LINGER {1, 0}` so that the caller's `close()` sends
/// an RST.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_reset(pub u32);
/// Never.
pub const CLOSENOTIFY_RESET_NEVER: closenotify_reset = closenotify_reset(0);
/// When the flush stage times out: the peer is not reading (default).
pub const CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT: closenotify_reset = closenotify_reset(1);
/// On every timeout.
pub const CLOSENOTIFY_RESET_ALWAYS: closenotify_reset = closenotify_reset(2);

/// Reserved words at the end of `closenotify_policy`: room for knobs of later
/// versions. Zero means "the default" for every knob added there.
pub const CLOSENOTIFY_POLICY_RESERVED: usize = 4;

/// The shutdown policy. Fill it with `closenotify_policy_init`, then change what
/// you need: every call that takes a policy checks that it was initialised
/// (`struct_size`) and that its reserved words are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct closenotify_policy {
    /// `sizeof(closenotify_policy)`, set by `closenotify_policy_init`; any other
    /// value is refused (`CLOSENOTIFY_ERR_INVALID_ARGUMENT`): the policy was not
    /// initialised.
    pub struct_size: u32,
    /// `CLOSENOTIFY_MODE_*`; default bidirectional.
    pub mode: closenotify_mode,
    /// Longest wait to get close_notify into the kernel, 1..=3600000 ms (0 is
    /// allowed in quiet mode, which sends nothing); default 3000.
    pub flush_timeout_ms: u32,
    /// Longest wait for the peer's close_notify, 1..=3600000 ms (0 is allowed in
    /// the modes that do not wait for the peer); default 3000.
    pub peer_timeout_ms: u32,
    /// Bound of the linger stage, 0 (off, default) ..= 3600000 ms; refused with
    /// `CLOSENOTIFY_MODE_STOPTLS`.
    pub linger_timeout_ms: u32,
    /// Most application bytes discarded while awaiting the peer; default 65536.
    pub drain_limit: u64,
    /// Non-zero: `shutdown(SHUT_WR)` once close_notify is flushed (default 1;
    /// never in `CLOSENOTIFY_MODE_STOPTLS`).
    pub half_close: c_int,
    /// `CLOSENOTIFY_RESET_*`; default `CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT`.
    pub reset_on_timeout: closenotify_reset,
    /// Non-zero: a truncated connection keeps its session resumable (default 0).
    pub keep_session_on_truncation: c_int,
    /// Zero. Later versions add knobs here, where zero means their default; a
    /// non-zero word is refused by a library that does not know it.
    pub reserved: [u64; CLOSENOTIFY_POLICY_RESERVED],
}

pub(super) fn policy_defaults() -> closenotify_policy {
    let p = Policy::default();
    closenotify_policy {
        struct_size: size_of::<closenotify_policy>() as u32,
        mode: closenotify_mode(p.mode().number()),
        flush_timeout_ms: p.flush_timeout().as_millis() as u32,
        peer_timeout_ms: p.peer_timeout().as_millis() as u32,
        linger_timeout_ms: p.linger_timeout().as_millis() as u32,
        drain_limit: p.drain_limit(),
        half_close: c_int::from(p.half_close()),
        reset_on_timeout: closenotify_reset(p.reset_on_timeout().number()),
        keep_session_on_truncation: c_int::from(p.keep_session_on_truncation()),
        reserved: [0; CLOSENOTIFY_POLICY_RESERVED],
    }
}

/// `policy` (or the defaults for NULL) as a validated [`Policy`].
///
/// # Safety
/// `policy` is NULL or points to a readable `closenotify_policy`.
pub(super) unsafe fn to_policy(
    policy: *const closenotify_policy,
) -> Result<Policy, closenotify_result> {
    // SAFETY: the caller's contract.
    let c = unsafe { policy.as_ref() }
        .copied()
        .unwrap_or_else(policy_defaults);
    let size = size_of::<closenotify_policy>();
    if c.struct_size as usize != size {
        return Err(fail(
            CLOSENOTIFY_ERR_INVALID_ARGUMENT,
            format!(
                "invalid policy: struct_size is {}, not {size}: initialise the policy \
                 with closenotify_policy_init",
                c.struct_size
            ),
        ));
    }
    if c.reserved.iter().any(|&w| w != 0) {
        return Err(fail(
            CLOSENOTIFY_ERR_INVALID_ARGUMENT,
            format!(
                "invalid policy: a reserved word is set: the program was built against \
                 a newer closenotify than this library ({})",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    let mode = Mode::from_number(c.mode.0).ok_or_else(|| {
        fail(
            CLOSENOTIFY_ERR_INVALID_ARGUMENT,
            format!("invalid policy: unknown mode {}", c.mode.0),
        )
    })?;
    let reset = ResetOnTimeout::from_number(c.reset_on_timeout.0).ok_or_else(|| {
        fail(
            CLOSENOTIFY_ERR_INVALID_ARGUMENT,
            format!(
                "invalid policy: unknown reset_on_timeout {}",
                c.reset_on_timeout.0
            ),
        )
    })?;
    Policy::builder()
        .mode(mode)
        .flush_timeout(Duration::from_millis(c.flush_timeout_ms.into()))
        .peer_timeout(Duration::from_millis(c.peer_timeout_ms.into()))
        .linger_timeout(Duration::from_millis(c.linger_timeout_ms.into()))
        .drain_limit(c.drain_limit)
        .half_close(c.half_close != 0)
        .reset_on_timeout(reset)
        .keep_session_on_truncation(c.keep_session_on_truncation != 0)
        .build_named(&C_NAMES)
        .map_err(|e| fail(CLOSENOTIFY_ERR_INVALID_ARGUMENT, e.to_string()))
}

/// The policy's knobs as C callers name them, for the error messages.
const C_NAMES: Names = Names {
    flush_timeout: "flush_timeout_ms",
    peer_timeout: "peer_timeout_ms",
    linger_timeout: "linger_timeout_ms",
    quiet: "CLOSENOTIFY_MODE_QUIET",
    send_only: "CLOSENOTIFY_MODE_SEND_ONLY",
    stop_tls: "CLOSENOTIFY_MODE_STOPTLS",
};

/// Fills `policy` with the defaults: bidirectional, 3000 ms flush and peer
/// timeouts, half-close on, 64 KiB drain limit, reset on flush timeout, no linger,
/// sessions dropped on truncation; sets `struct_size` and zeroes the reserved
/// words. NULL is ignored.
///
/// # Safety
/// `policy` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_policy_init(policy: *mut closenotify_policy) {
    boundary((), || {
        // SAFETY: NULL or a writable closenotify_policy, per the C contract.
        if let Some(p) = unsafe { policy.as_mut() } {
            *p = policy_defaults();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capi::closenotify_last_error;
    use std::ffi::{c_char, CStr};

    fn last_error() -> String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: `buf` is writable for its length.
        unsafe { closenotify_last_error(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: closenotify_last_error NUL-terminates what it writes.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Each C constant is its Rust value's number, and every value has one.
    #[test]
    fn the_c_constants_are_the_rust_values() {
        let modes = [
            (CLOSENOTIFY_MODE_BIDIRECTIONAL, Mode::Bidirectional),
            (CLOSENOTIFY_MODE_SEND_ONLY, Mode::SendOnly),
            (CLOSENOTIFY_MODE_QUIET, Mode::Quiet),
            (CLOSENOTIFY_MODE_STOPTLS, Mode::StopTls),
        ];
        assert_eq!(modes.len(), Mode::ALL.len());
        for (c, rust) in modes {
            assert_eq!(c.0, rust.number(), "{rust}");
        }
        let resets = [
            (CLOSENOTIFY_RESET_NEVER, ResetOnTimeout::Never),
            (
                CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT,
                ResetOnTimeout::FlushOnly,
            ),
            (CLOSENOTIFY_RESET_ALWAYS, ResetOnTimeout::Always),
        ];
        assert_eq!(resets.len(), ResetOnTimeout::ALL.len());
        for (c, rust) in resets {
            assert_eq!(c.0, rust.number(), "{rust}");
        }
    }

    #[test]
    fn defaults_match_the_rust_policy() {
        let mut c = std::mem::MaybeUninit::<closenotify_policy>::uninit();
        // SAFETY: a writable policy, then NULL (ignored); init writes every field.
        let c = unsafe {
            closenotify_policy_init(c.as_mut_ptr());
            closenotify_policy_init(std::ptr::null_mut());
            c.assume_init()
        };
        // SAFETY: a valid policy pointer.
        assert_eq!(unsafe { to_policy(&c) }.unwrap(), Policy::default());
    }

    #[test]
    fn invalid_policies_name_the_problem() {
        let mut c = policy_defaults();
        c.mode = closenotify_mode(7);
        // SAFETY: a valid policy pointer.
        assert_eq!(
            unsafe { to_policy(&c) },
            Err(CLOSENOTIFY_ERR_INVALID_ARGUMENT)
        );
        assert_eq!(last_error(), "invalid policy: unknown mode 7");

        let mut c = policy_defaults();
        c.peer_timeout_ms = 0;
        // SAFETY: as above.
        assert_eq!(
            unsafe { to_policy(&c) },
            Err(CLOSENOTIFY_ERR_INVALID_ARGUMENT)
        );
        let mut c = policy_defaults();
        c.reset_on_timeout = closenotify_reset(3);
        // SAFETY: as above.
        assert_eq!(
            unsafe { to_policy(&c) },
            Err(CLOSENOTIFY_ERR_INVALID_ARGUMENT)
        );
    }

    #[test]
    fn a_policy_not_made_by_init_is_refused() {
        let mut c = policy_defaults();
        c.struct_size = 0;
        // SAFETY: a valid policy pointer.
        assert_eq!(
            unsafe { to_policy(&c) },
            Err(CLOSENOTIFY_ERR_INVALID_ARGUMENT)
        );
        assert!(
            last_error().contains("closenotify_policy_init"),
            "{}",
            last_error()
        );
        let mut c = policy_defaults();
        c.reserved[2] = 1;
        // SAFETY: as above.
        assert_eq!(
            unsafe { to_policy(&c) },
            Err(CLOSENOTIFY_ERR_INVALID_ARGUMENT)
        );
        assert!(last_error().contains("newer"), "{}", last_error());
    }
}
