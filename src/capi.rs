//! The C API (`include/closenotify.h`, generated from this file by cbindgen).
//!
//! Conventions, after rustls-ffi: the object first, inputs, outputs last; outputs
//! are written only on success; every function body runs inside a panic boundary;
//! a null pointer or an invalid value is a result code, never a crash. Values C
//! passes in (modes, outcomes, result codes) are plain integers on this side, so an
//! out-of-range value is an error and not undefined behaviour.
//!
//! The caller keeps ownership of the `SSL*` and of the socket: nothing here frees
//! or closes them.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use openssl_sys::SSL;

use crate::machine::{Interest, Progress, Ready, Shutdown};
use crate::ossl::RawConnection;
use crate::policy::{Mode, Names, Policy, ResetOnTimeout};
use crate::report::{Alert, Initiator, Outcome, Report, Stage, TlsVersion};
use crate::Error;

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
/// `CLOSENOTIFY_WAIT_DONE`.
pub const CLOSENOTIFY_ERR_WRONG_STATE: closenotify_result = closenotify_result(3);
/// closenotify panicked (a bug); the shutdown object must only be freed.
pub const CLOSENOTIFY_ERR_PANIC: closenotify_result = closenotify_result(4);

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

/// How the connection ended (the names of `closenotify_outcome_name`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_outcome(pub u32);
/// Both close_notify alerts exchanged.
pub const CLOSENOTIFY_OUTCOME_CLEAN: closenotify_outcome = closenotify_outcome(0);
/// Ours flushed; not waiting, by policy.
pub const CLOSENOTIFY_OUTCOME_SENT_ONLY: closenotify_outcome = closenotify_outcome(1);
/// No close_notify sent: by policy, or the connection was not usable.
pub const CLOSENOTIFY_OUTCOME_QUIET: closenotify_outcome = closenotify_outcome(2);
/// The peer ended the transport without close_notify.
pub const CLOSENOTIFY_OUTCOME_TRUNCATED: closenotify_outcome = closenotify_outcome(3);
/// Transport error; `os_error` has the errno.
pub const CLOSENOTIFY_OUTCOME_RESET: closenotify_outcome = closenotify_outcome(4);
/// The peer sent a fatal alert; `alert` has its code.
pub const CLOSENOTIFY_OUTCOME_PEER_ALERT: closenotify_outcome = closenotify_outcome(5);
/// Our side rejected what arrived; `alert` has the alert it raised.
pub const CLOSENOTIFY_OUTCOME_PROTOCOL_ERROR: closenotify_outcome = closenotify_outcome(6);
/// A stage ran past its timeout; `stage` names it.
pub const CLOSENOTIFY_OUTCOME_TIMED_OUT: closenotify_outcome = closenotify_outcome(7);
/// The peer sent more application data than `drain_limit`.
pub const CLOSENOTIFY_OUTCOME_DRAIN_LIMIT: closenotify_outcome = closenotify_outcome(8);

/// Who sent the first close_notify.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_initiator(pub u32);
/// We did.
pub const CLOSENOTIFY_INITIATOR_LOCAL: closenotify_initiator = closenotify_initiator(0);
/// The peer's had arrived before the shutdown began.
pub const CLOSENOTIFY_INITIATOR_PEER: closenotify_initiator = closenotify_initiator(1);

/// The stages of a shutdown.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_stage(pub u32);
/// Getting our close_notify into the kernel.
pub const CLOSENOTIFY_STAGE_FLUSH: closenotify_stage = closenotify_stage(0);
/// `shutdown(SHUT_WR)`.
pub const CLOSENOTIFY_STAGE_HALF_CLOSE: closenotify_stage = closenotify_stage(1);
/// Waiting for the peer's close_notify.
pub const CLOSENOTIFY_STAGE_AWAIT_PEER: closenotify_stage = closenotify_stage(2);
/// Waiting for the kernel send queue to empty.
pub const CLOSENOTIFY_STAGE_LINGER: closenotify_stage = closenotify_stage(3);

/// What `closenotify_shutdown_step` waits for.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct closenotify_wait(pub u32);
/// Finished: fetch the report with `closenotify_shutdown_report`.
pub const CLOSENOTIFY_WAIT_DONE: closenotify_wait = closenotify_wait(0);
/// Wait until the socket is readable (POLLIN), at most `timeout_ms`.
pub const CLOSENOTIFY_WAIT_READ: closenotify_wait = closenotify_wait(1);
/// Wait until the socket is writable (POLLOUT), at most `timeout_ms`.
pub const CLOSENOTIFY_WAIT_WRITE: closenotify_wait = closenotify_wait(2);
/// Wait `timeout_ms` without watching the socket (the linger stage polls
/// the send queue, which has no readiness event). Only with a linger
/// timeout.
pub const CLOSENOTIFY_WAIT_TIMER: closenotify_wait = closenotify_wait(3);

/// The shutdown policy; `closenotify_policy_init` fills in the defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct closenotify_policy {
    /// `CLOSENOTIFY_MODE_*`; default bidirectional.
    pub mode: closenotify_mode,
    /// Longest wait to get close_notify into the kernel, 1..=3600000 ms (0 is
    /// allowed in quiet mode, which sends nothing); default 3000.
    pub flush_timeout_ms: u32,
    /// Longest wait for the peer's close_notify, 1..=3600000 ms (0 is allowed in
    /// the modes that do not wait for the peer); default 3000.
    pub peer_timeout_ms: u32,
    /// Bound of the linger stage, 0 (off, default) ..= 3600000 ms.
    pub linger_timeout_ms: u32,
    /// Most application bytes discarded while awaiting the peer; default 65536.
    pub drain_limit: u64,
    /// Non-zero: `shutdown(SHUT_WR)` once close_notify is flushed (default 1).
    pub half_close: c_int,
    /// `CLOSENOTIFY_RESET_*`; default `CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT`.
    pub reset_on_timeout: closenotify_reset,
    /// Non-zero: a truncated connection keeps its session resumable (default 0).
    pub keep_session_on_truncation: c_int,
}

/// How a connection ended.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct closenotify_report {
    /// `CLOSENOTIFY_OUTCOME_*`.
    pub outcome: closenotify_outcome,
    /// `CLOSENOTIFY_INITIATOR_*`.
    pub initiator: closenotify_initiator,
    /// The stage that timed out, or the last stage reached.
    pub stage: closenotify_stage,
    /// The alert behind `peer_alert` (received) or `protocol_error` (raised by our
    /// side); -1 if none. `closenotify_alert_name` gives its RFC name.
    pub alert: c_int,
    /// The errno behind `reset`; 0 if none.
    pub os_error: c_int,
    /// Our close_notify was written to the kernel.
    pub close_notify_sent: bool,
    /// The peer's close_notify arrived.
    pub close_notify_received: bool,
    /// `shutdown(SHUT_WR)` was applied.
    pub half_closed: bool,
    /// The session can still be resumed.
    pub session_resumable: bool,
    /// Application bytes received and discarded after our close_notify.
    pub discarded_bytes: u64,
    /// Time from the first call to the report, in milliseconds.
    pub elapsed_ms: u64,
    /// Negotiated version as on the wire (0x0303 TLS 1.2, 0x0304 TLS 1.3); 0 if
    /// the handshake never finished.
    pub tls_version: c_int,
    /// `SSL_shutdown` and `SSL_read` calls made.
    pub ssl_calls: u32,
}

/// A shutdown in progress, for the step API. Opaque.
pub struct closenotify_shutdown {
    machine: Shutdown<RawConnection>,
}

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

fn policy_defaults() -> closenotify_policy {
    let p = Policy::default();
    closenotify_policy {
        mode: CLOSENOTIFY_MODE_BIDIRECTIONAL,
        flush_timeout_ms: p.flush_timeout().as_millis() as u32,
        peer_timeout_ms: p.peer_timeout().as_millis() as u32,
        linger_timeout_ms: p.linger_timeout().as_millis() as u32,
        drain_limit: p.drain_limit(),
        half_close: c_int::from(p.half_close()),
        reset_on_timeout: CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT,
        keep_session_on_truncation: c_int::from(p.keep_session_on_truncation()),
    }
}

/// `policy` (or the defaults for NULL) as a validated [`Policy`].
///
/// # Safety
/// `policy` is NULL or points to a readable `closenotify_policy`.
unsafe fn to_policy(policy: *const closenotify_policy) -> Result<Policy, closenotify_result> {
    // SAFETY: the caller's contract.
    let c = unsafe { policy.as_ref() }
        .copied()
        .unwrap_or_else(policy_defaults);
    let mode = match c.mode {
        CLOSENOTIFY_MODE_BIDIRECTIONAL => Mode::Bidirectional,
        CLOSENOTIFY_MODE_SEND_ONLY => Mode::SendOnly,
        CLOSENOTIFY_MODE_QUIET => Mode::Quiet,
        CLOSENOTIFY_MODE_STOPTLS => Mode::StopTls,
        other => {
            return Err(fail(
                CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                format!("invalid policy: unknown mode {}", other.0),
            ))
        }
    };
    let reset = match c.reset_on_timeout {
        CLOSENOTIFY_RESET_NEVER => ResetOnTimeout::Never,
        CLOSENOTIFY_RESET_ON_FLUSH_TIMEOUT => ResetOnTimeout::FlushOnly,
        CLOSENOTIFY_RESET_ALWAYS => ResetOnTimeout::Always,
        other => {
            return Err(fail(
                CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                format!("invalid policy: unknown reset_on_timeout {}", other.0),
            ))
        }
    };
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

/// # Safety
/// As [`RawConnection::new`].
unsafe fn to_conn(ssl: *mut SSL, fd: c_int) -> Result<RawConnection, closenotify_result> {
    // SAFETY: the caller's contract, forwarded.
    unsafe { RawConnection::new(ssl, fd) }.map_err(|e| match e {
        Error::InvalidArgument(msg) if ssl.is_null() => fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, msg),
        other => fail(CLOSENOTIFY_ERR_INVALID_ARGUMENT, other.to_string()),
    })
}

fn to_c_report(r: &Report) -> closenotify_report {
    closenotify_report {
        outcome: match r.outcome {
            Outcome::Clean => CLOSENOTIFY_OUTCOME_CLEAN,
            Outcome::SentOnly => CLOSENOTIFY_OUTCOME_SENT_ONLY,
            Outcome::Quiet => CLOSENOTIFY_OUTCOME_QUIET,
            Outcome::Truncated => CLOSENOTIFY_OUTCOME_TRUNCATED,
            Outcome::Reset => CLOSENOTIFY_OUTCOME_RESET,
            Outcome::PeerAlert => CLOSENOTIFY_OUTCOME_PEER_ALERT,
            Outcome::ProtocolError => CLOSENOTIFY_OUTCOME_PROTOCOL_ERROR,
            Outcome::TimedOut => CLOSENOTIFY_OUTCOME_TIMED_OUT,
            Outcome::DrainLimit => CLOSENOTIFY_OUTCOME_DRAIN_LIMIT,
        },
        initiator: match r.initiator {
            Initiator::Local => CLOSENOTIFY_INITIATOR_LOCAL,
            Initiator::Peer => CLOSENOTIFY_INITIATOR_PEER,
        },
        stage: match r.stage {
            Stage::Flush => CLOSENOTIFY_STAGE_FLUSH,
            Stage::HalfClose => CLOSENOTIFY_STAGE_HALF_CLOSE,
            Stage::AwaitPeer => CLOSENOTIFY_STAGE_AWAIT_PEER,
            Stage::Linger => CLOSENOTIFY_STAGE_LINGER,
        },
        alert: r.alert.map_or(-1, |a| c_int::from(a.alert.code())),
        os_error: r.os_error.unwrap_or(0),
        close_notify_sent: r.close_notify_sent,
        close_notify_received: r.close_notify_received,
        half_closed: r.half_closed,
        session_resumable: r.session_resumable,
        discarded_bytes: r.discarded_bytes,
        elapsed_ms: r.elapsed.as_millis().min(u64::MAX as u128) as u64,
        tls_version: match r.tls_version {
            None => 0,
            Some(TlsVersion::Tls1_0) => 0x0301,
            Some(TlsVersion::Tls1_1) => 0x0302,
            Some(TlsVersion::Tls1_2) => 0x0303,
            Some(TlsVersion::Tls1_3) => 0x0304,
            Some(TlsVersion::Other(v)) => c_int::from(v),
        },
        ssl_calls: r.ssl_calls,
    }
}

/// Fills `policy` with the defaults: bidirectional, 3000 ms flush and peer
/// timeouts, half-close on, 64 KiB drain limit, reset on flush timeout, no linger,
/// sessions dropped on truncation. NULL is ignored.
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

/// Shuts `ssl` down under `policy` (NULL: the defaults), waiting with poll(2) on
/// `fd`, and writes how it ended to `report`. Never waits longer than the policy's
/// timeouts, whether `fd` is blocking or not (it is switched to non-blocking for
/// the call and back). Raises no SIGPIPE.
///
/// Ownership: the caller keeps `ssl` and `fd`; neither is freed nor closed. On a
/// timeout with the reset policy, `SO_LINGER {1, 0}` is set on `fd` so that the
/// caller's `close()` sends an RST. Calling it again on the same `ssl` writes the
/// same report.
///
/// `ssl` must read and write through OpenSSL's socket (or fd) BIO on `fd`, as
/// `SSL_set_fd(ssl, fd)` sets it up. Anything else (a memory BIO, a BIO pair, a
/// BIO of another library, a socket BIO on another fd) is refused with
/// `CLOSENOTIFY_ERR_INVALID_ARGUMENT` before either socket is touched.
///
/// Returns `CLOSENOTIFY_OK` (the report is written), `CLOSENOTIFY_ERR_NULL_ARGUMENT`
/// (`ssl` or `report` NULL) or `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (bad fd, an `ssl`
/// not on `fd`, or a bad policy; `closenotify_last_error` says which).
///
/// # Safety
/// `ssl` is a valid `SSL*` used by no other thread during the call; `fd` is its
/// socket; `policy` is NULL or readable; `report` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_blocking(
    ssl: *mut SSL,
    fd: c_int,
    policy: *const closenotify_policy,
    report: *mut closenotify_report,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        if report.is_null() {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "report is NULL");
        }
        // SAFETY: the caller's contract.
        let policy = match unsafe { to_policy(policy) } {
            Ok(p) => p,
            Err(code) => return code,
        };
        // SAFETY: the caller's contract.
        let conn = match unsafe { to_conn(ssl, fd) } {
            Ok(c) => c,
            Err(code) => return code,
        };
        let r = conn.shutdown_blocking(&policy);
        // SAFETY: `report` is non-NULL and writable, per the contract.
        unsafe { report.write(to_c_report(&r)) };
        CLOSENOTIFY_OK
    })
}

/// Prepares a shutdown of `ssl` for the step API and stores it in `*out`. Nothing is
/// sent until the first `closenotify_shutdown_step`. Free it with
/// `closenotify_shutdown_free`.
///
/// Ownership: the caller keeps `ssl` and `fd`, which must stay valid until the
/// shutdown object is freed; neither is freed nor closed by the library.
///
/// Blocking sockets: from the first step until the shutdown is done (or the
/// object is freed), `fd` is in non-blocking mode, so that no step blocks past
/// the policy's deadlines; a blocking `fd` is switched back afterwards. Do not
/// use `fd` elsewhere meanwhile.
///
/// `ssl` must read and write through OpenSSL's socket (or fd) BIO on `fd`, as for
/// `closenotify_shutdown_blocking`.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`ssl` or `out` NULL) or
/// `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (bad fd, an `ssl` not on `fd`, or a bad
/// policy); `*out` is written only on success.
///
/// # Safety
/// `ssl` is a valid `SSL*` that outlives the shutdown object and is used by no
/// other thread meanwhile; `fd` is its socket; `policy` is NULL or readable; `out`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_new(
    ssl: *mut SSL,
    fd: c_int,
    policy: *const closenotify_policy,
    out: *mut *mut closenotify_shutdown,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        if out.is_null() {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "out is NULL");
        }
        // SAFETY: the caller's contract.
        let policy = match unsafe { to_policy(policy) } {
            Ok(p) => p,
            Err(code) => return code,
        };
        // SAFETY: the caller's contract.
        let conn = match unsafe { to_conn(ssl, fd) } {
            Ok(c) => c,
            Err(code) => return code,
        };
        let boxed = Box::new(closenotify_shutdown {
            machine: Shutdown::new(conn, &policy),
        });
        // SAFETY: `out` is non-NULL and writable, per the contract.
        unsafe { out.write(Box::into_raw(boxed)) };
        CLOSENOTIFY_OK
    })
}

/// Makes progress and says what to wait for next: `*wait` is
/// `CLOSENOTIFY_WAIT_READ` or `_WRITE` (poll the socket for POLLIN or POLLOUT),
/// `_TIMER` (only wait), each with `*timeout_ms` milliseconds until the deadline,
/// ready for poll(); or `_DONE` with `*timeout_ms` 0. Call it first to start, then
/// whenever poll() returns, ready or timed out. After `_DONE`, every call answers
/// `_DONE` again.
///
/// This call does not know what poll() reported, so while the shutdown waits it
/// tries the OpenSSL call it waits for (one call, which answers "not yet" when the
/// socket was not ready). In a poll() loop shared with other sockets, pass the
/// socket's `revents` to `closenotify_shutdown_step_revents` instead: wake-ups
/// that do not concern this socket then cost nothing.
///
/// Returns `CLOSENOTIFY_OK` or `CLOSENOTIFY_ERR_NULL_ARGUMENT`; the outputs are
/// written only on success.
///
/// # Safety
/// `sd` is NULL or a live object from `closenotify_shutdown_new`, used by one
/// thread at a time; `wait` and `timeout_ms` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_step(
    sd: *mut closenotify_shutdown,
    wait: *mut closenotify_wait,
    timeout_ms: *mut c_int,
) -> closenotify_result {
    // SAFETY: the caller's contract, forwarded.
    unsafe { step(sd, Ready::ALL, wait, timeout_ms) }
}

/// As `closenotify_shutdown_step`, told what poll() reported for the socket:
/// `revents` is the `revents` of its `struct pollfd` (`POLLIN`, `POLLOUT`,
/// `POLLHUP`, `POLLERR`, `POLLNVAL`), or 0 when poll() returned for another
/// reason (a timeout, another socket). A call whose `revents` does not match
/// what the shutdown waits for, before the deadline, makes no OpenSSL call and
/// changes nothing; at the deadline it ends the stage. Use it in a poll() loop
/// shared with other sockets.
///
/// Returns `CLOSENOTIFY_OK` or `CLOSENOTIFY_ERR_NULL_ARGUMENT`; the outputs are
/// written only on success.
///
/// # Safety
/// As `closenotify_shutdown_step`.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_step_revents(
    sd: *mut closenotify_shutdown,
    revents: c_int,
    wait: *mut closenotify_wait,
    timeout_ms: *mut c_int,
) -> closenotify_result {
    let broken = revents & c_int::from(libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
    let mut ready = Ready::NONE;
    if revents & c_int::from(libc::POLLIN) != 0 || broken {
        ready = ready | Ready::READABLE;
    }
    if revents & c_int::from(libc::POLLOUT) != 0 || broken {
        ready = ready | Ready::WRITABLE;
    }
    // SAFETY: the caller's contract, forwarded.
    unsafe { step(sd, ready, wait, timeout_ms) }
}

/// The body of the two step calls.
///
/// # Safety
/// As `closenotify_shutdown_step`.
unsafe fn step(
    sd: *mut closenotify_shutdown,
    ready: Ready,
    wait: *mut closenotify_wait,
    timeout_ms: *mut c_int,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live shutdown object, per the contract.
        let Some(sd) = (unsafe { sd.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "shutdown is NULL");
        };
        if wait.is_null() || timeout_ms.is_null() {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "wait or timeout_ms is NULL");
        }
        let now = Instant::now();
        let (kind, ms) = match sd.machine.poll(now, ready) {
            Progress::Done(_) => (CLOSENOTIFY_WAIT_DONE, 0),
            Progress::Wait(w) => {
                let kind = match w.interest {
                    Interest::Read => CLOSENOTIFY_WAIT_READ,
                    Interest::Write => CLOSENOTIFY_WAIT_WRITE,
                    Interest::Timer => CLOSENOTIFY_WAIT_TIMER,
                };
                // Round up: waking before the deadline only costs another step.
                let ms = w.timeout(Instant::now()).as_nanos().div_ceil(1_000_000);
                (kind, ms.min(c_int::MAX as u128) as c_int)
            }
        };
        // SAFETY: both are non-NULL and writable, per the contract.
        unsafe {
            wait.write(kind);
            timeout_ms.write(ms);
        }
        CLOSENOTIFY_OK
    })
}

/// Writes the report of a finished shutdown to `report`.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT`, or
/// `CLOSENOTIFY_ERR_WRONG_STATE` if `closenotify_shutdown_step` has not said
/// `CLOSENOTIFY_WAIT_DONE` yet (the report is then not written).
///
/// # Safety
/// `sd` is NULL or a live shutdown object; `report` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_report(
    sd: *const closenotify_shutdown,
    report: *mut closenotify_report,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live shutdown object, per the contract.
        let Some(sd) = (unsafe { sd.as_ref() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "shutdown is NULL");
        };
        if report.is_null() {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "report is NULL");
        }
        let Some(r) = sd.machine.report() else {
            return fail(
                CLOSENOTIFY_ERR_WRONG_STATE,
                "the shutdown is not finished: step until CLOSENOTIFY_WAIT_DONE",
            );
        };
        // SAFETY: non-NULL and writable, per the contract.
        unsafe { report.write(to_c_report(&r)) };
        CLOSENOTIFY_OK
    })
}

/// Frees a shutdown object; NULL is fine. The `SSL*` and the socket are left to the
/// caller, untouched except that an unfinished shutdown restores the options it
/// suspended (`SSL_OP_IGNORE_UNEXPECTED_EOF`).
///
/// # Safety
/// `sd` is NULL or an object from `closenotify_shutdown_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_free(sd: *mut closenotify_shutdown) {
    boundary((), || {
        if !sd.is_null() {
            // SAFETY: created by Box::into_raw in closenotify_shutdown_new and not
            // yet freed, per the contract.
            drop(unsafe { Box::from_raw(sd) });
        }
    })
}

/// The name of an outcome: "clean", "sent_only", "quiet", "truncated", "reset",
/// "peer_alert", "protocol_error", "timed_out", "drain_limit"; "unknown" for any
/// other value. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_outcome_name(outcome: closenotify_outcome) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || {
        let name = match outcome {
            CLOSENOTIFY_OUTCOME_CLEAN => c"clean",
            CLOSENOTIFY_OUTCOME_SENT_ONLY => c"sent_only",
            CLOSENOTIFY_OUTCOME_QUIET => c"quiet",
            CLOSENOTIFY_OUTCOME_TRUNCATED => c"truncated",
            CLOSENOTIFY_OUTCOME_RESET => c"reset",
            CLOSENOTIFY_OUTCOME_PEER_ALERT => c"peer_alert",
            CLOSENOTIFY_OUTCOME_PROTOCOL_ERROR => c"protocol_error",
            CLOSENOTIFY_OUTCOME_TIMED_OUT => c"timed_out",
            CLOSENOTIFY_OUTCOME_DRAIN_LIMIT => c"drain_limit",
            _ => UNKNOWN,
        };
        name.as_ptr()
    })
}

/// The name of a stage: "flush", "half_close", "await_peer", "linger"; "unknown"
/// for any other value. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_stage_name(stage: closenotify_stage) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || {
        let name = match stage {
            CLOSENOTIFY_STAGE_FLUSH => c"flush",
            CLOSENOTIFY_STAGE_HALF_CLOSE => c"half_close",
            CLOSENOTIFY_STAGE_AWAIT_PEER => c"await_peer",
            CLOSENOTIFY_STAGE_LINGER => c"linger",
            _ => UNKNOWN,
        };
        name.as_ptr()
    })
}

/// The RFC 8446 / 5246 name of an alert code ("bad_record_mac", "unknown_ca", ...);
/// "none" for -1; "unknown" for codes no RFC defines. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_alert_name(alert: c_int) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || match alert {
        -1 => c"none".as_ptr(),
        0..=255 => alert_names()[alert as usize].as_ptr(),
        _ => UNKNOWN.as_ptr(),
    })
}

/// The name of a result code: "ok", "null_argument", "invalid_argument",
/// "wrong_state", "panic"; "unknown" for any other value. The string is static.
#[no_mangle]
pub extern "C" fn closenotify_result_name(result: closenotify_result) -> *const c_char {
    boundary(UNKNOWN.as_ptr(), || {
        let name = match result {
            CLOSENOTIFY_OK => c"ok",
            CLOSENOTIFY_ERR_NULL_ARGUMENT => c"null_argument",
            CLOSENOTIFY_ERR_INVALID_ARGUMENT => c"invalid_argument",
            CLOSENOTIFY_ERR_WRONG_STATE => c"wrong_state",
            CLOSENOTIFY_ERR_PANIC => c"panic",
            _ => UNKNOWN,
        };
        name.as_ptr()
    })
}

/// Copies the message of the last failed call on this thread ("invalid policy:
/// peer_timeout must be at least 1 ms ...") into `buf`, NUL-terminated and
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

/// NUL-terminated alert names for every code, built once from [`Alert::name`] and
/// alive for the rest of the process.
fn alert_names() -> &'static [std::ffi::CString] {
    static NAMES: std::sync::OnceLock<Vec<std::ffi::CString>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        (0..=255u8)
            .map(|code| std::ffi::CString::new(Alert::from_code(code).name()).unwrap_or_default())
            .collect()
    })
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
        let mut buf = [0 as c_char; 128];
        // SAFETY: `buf` is writable.
        unsafe { closenotify_last_error(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(name(buf.as_ptr()), "invalid policy: unknown mode 7");

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

        // Truncation to a small buffer, snprintf-style.
        let mut small = [0 as c_char; 8];
        // SAFETY: `small` is writable.
        let full = unsafe { closenotify_last_error(small.as_mut_ptr(), small.len()) };
        assert!(full > 8);
        assert_eq!(name(small.as_ptr()), "invalid");
    }
}
