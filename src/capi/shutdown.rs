//! The shutdown calls: blocking, and the step API for event loops.

use std::ffi::{c_int, c_void};
use std::time::Instant;

use openssl::ssl::ErrorCode;
use openssl_sys::{self as ffi, SSL};

use super::{
    boundary, closenotify_policy, closenotify_report, closenotify_result, fail, to_c_report,
    to_policy, CLOSENOTIFY_ERR_INVALID_ARGUMENT, CLOSENOTIFY_ERR_NULL_ARGUMENT,
    CLOSENOTIFY_ERR_PANIC, CLOSENOTIFY_ERR_SINK, CLOSENOTIFY_ERR_WRONG_STATE, CLOSENOTIFY_OK,
};
use crate::machine::{Interest, Progress, Ready};
use crate::ossl::RawConnection;
use crate::shutdown::Shutdown;
use crate::{Error, Policy};

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

/// A shutdown in progress, for the step API. Opaque.
pub struct closenotify_shutdown {
    pub(super) machine: Shutdown<RawConnection>,
}

/// The policy (checked first), then the connection, of a call that starts a
/// shutdown; the error code (with its message set) of the first that is invalid.
///
/// # Safety
/// As [`to_policy`] for `policy`, as [`RawConnection::new`] for `ssl` and `fd`.
unsafe fn to_args(
    ssl: *mut SSL,
    fd: c_int,
    policy: *const closenotify_policy,
) -> Result<(RawConnection, Policy), closenotify_result> {
    // SAFETY: the caller's contract, forwarded.
    let policy = unsafe { to_policy(policy) }?;
    // SAFETY: the caller's contract, forwarded.
    let conn = unsafe { RawConnection::new(ssl, fd) }.map_err(|e| conn_error(e, ssl))?;
    Ok((conn, policy))
}

/// The error code (with its message set) of a `RawConnection` refused for `ssl`.
pub(super) fn conn_error(e: Error, ssl: *mut SSL) -> closenotify_result {
    match e {
        Error::InvalidArgument(msg) if ssl.is_null() => fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, msg),
        Error::Busy(msg) => fail(CLOSENOTIFY_ERR_WRONG_STATE, msg),
        other => fail(CLOSENOTIFY_ERR_INVALID_ARGUMENT, other.to_string()),
    }
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
/// (`ssl` or `report` NULL), `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (bad fd, an `ssl`
/// not on `fd`, or a bad policy; `closenotify_last_error` says which) or
/// `CLOSENOTIFY_ERR_WRONG_STATE` (a shutdown object on this `ssl` is not freed
/// yet).
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
        let (conn, policy) = match unsafe { to_args(ssl, fd, policy) } {
            Ok(args) => args,
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
/// Before the first step, hand it what you could not finish: the data of a write
/// that stopped half way (`closenotify_shutdown_set_unsent`), or the failure of
/// your last `SSL_read` or `SSL_write` (`closenotify_shutdown_set_error`; this call
/// leaves OpenSSL's error queue alone, for it to read).
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
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`ssl` or `out` NULL),
/// `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (bad fd, an `ssl` not on `fd`, or a bad
/// policy) or `CLOSENOTIFY_ERR_WRONG_STATE` (another shutdown object on this
/// `ssl` is not freed yet: two would fight over the socket; nothing is
/// touched); `*out` is written only on success.
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
        let (conn, policy) = match unsafe { to_args(ssl, fd, policy) } {
            Ok(args) => args,
            Err(code) => return code,
        };
        let mut machine = Shutdown::new(conn, &policy);
        // Every step reads the clock.
        machine.adapter_clock(Instant::now);
        let boxed = Box::new(closenotify_shutdown { machine });
        // SAFETY: `out` is non-NULL and writable, per the contract.
        unsafe { out.write(Box::into_raw(boxed)) };
        CLOSENOTIFY_OK
    })
}

/// Hands the shutdown application data you could not finish writing: it is sent
/// before our close_notify, in the flush stage and under the policy's
/// `flush_timeout_ms` (a peer that does not read makes the flush time out, as
/// it would for close_notify alone). The `len` bytes at `data` are copied; a
/// second call replaces them, and `len` 0 removes them.
///
/// If your last `SSL_write` failed with `SSL_ERROR_WANT_WRITE`, OpenSSL holds
/// part of a record that must go out before anything else, and a retry must
/// carry the same bytes: `data` must then begin with the whole buffer of that
/// call (from the pointer you passed to it, not from where the record stopped),
/// followed by anything more you want sent. The write then completes. Without
/// it, close_notify cannot follow the half-written record (OpenSSL 1.1.1 and 3.0
/// fail with "bad write retry", 3.2 and later drop the alert) and the shutdown
/// ends `CLOSENOTIFY_OUTCOME_QUIET`.
///
/// Nothing is sent in `CLOSENOTIFY_MODE_QUIET`, after a failure handed over with
/// `closenotify_shutdown_set_error`, on a connection that cannot carry
/// close_notify (handshake unfinished), nor after your own `SSL_shutdown` (no
/// data may follow a close_notify).
///
/// Call it after `closenotify_shutdown_new`, before the first step.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`sd` NULL, or `data`
/// NULL with `len` not 0), `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (`len` too large to
/// copy) or `CLOSENOTIFY_ERR_WRONG_STATE` (the shutdown has started; nothing is
/// changed).
///
/// # Safety
/// `sd` is NULL or a live object from `closenotify_shutdown_new`, used by one
/// thread at a time; `data` is readable for `len` bytes (or NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_set_unsent(
    sd: *mut closenotify_shutdown,
    data: *const c_void,
    len: usize,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live shutdown object, per the contract.
        let Some(sd) = (unsafe { sd.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "shutdown is NULL");
        };
        if data.is_null() && len > 0 {
            return fail(
                CLOSENOTIFY_ERR_NULL_ARGUMENT,
                "data is NULL but len is not 0",
            );
        }
        if let Err(code) = not_started(sd, "closenotify_shutdown_set_unsent") {
            return code;
        }
        let mut copy = Vec::new();
        // try_reserve_exact also refuses more than isize::MAX bytes.
        if copy.try_reserve_exact(len).is_err() {
            return fail(
                CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                format!("cannot allocate {len} bytes for a copy of the unsent data"),
            );
        }
        if len > 0 {
            // SAFETY: non-NULL and readable for `len` bytes (at most isize::MAX,
            // the reservation above), per the contract.
            copy.extend_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) });
        }
        if let Some(setup) = sd.machine.setup() {
            setup.unsent = copy;
        }
        CLOSENOTIFY_OK
    })
}

/// Hands the shutdown the failure of your last `SSL_read` or `SSL_write` on this
/// connection: `ssl_error` is what `SSL_get_error` answered for that call, and
/// `sys_errno` the `errno` saved right after it (set `errno` to 0 before the
/// call; 0 for none, as with a plain EOF).
///
/// OpenSSL forbids `SSL_shutdown` after `SSL_ERROR_SYSCALL` or `SSL_ERROR_SSL`.
/// With either, the shutdown sends nothing and makes no OpenSSL I/O call (the
/// report's `ssl_calls` is 0): the first step answers `CLOSENOTIFY_WAIT_DONE`,
/// and the report names the failure:
/// `CLOSENOTIFY_OUTCOME_TRUNCATED` for an EOF without close_notify, `_RESET` with
/// `os_error` for a transport error, `_PEER_ALERT` with the alert the peer sent,
/// `_PROTOCOL_ERROR` with the alert our side raised (named for the connection's
/// TLS version) and OpenSSL's reason in `detail`.
///
/// For these two codes the reason is in OpenSSL's error queue (OpenSSL 3 reports
/// an EOF as `SSL_ERROR_SSL` with a reason there), which this call reads and
/// empties: call it on the thread of the failed call, before anything clears or
/// adds to the queue (`ERR_clear_error`, `ERR_print_errors`, another OpenSSL
/// call; `ERR_peek_error` is fine). On an emptied queue, `SSL_ERROR_SSL` is
/// reported as `_PROTOCOL_ERROR` ("SSL_ERROR_SSL with an empty error queue").
///
/// `SSL_ERROR_NONE`, `SSL_ERROR_ZERO_RETURN` (the peer's close_notify: no
/// failure) and every `SSL_ERROR_WANT_*` are accepted and ignored: the shutdown
/// runs as usual. A failure handed over later replaces an earlier one.
///
/// Call it after `closenotify_shutdown_new`, before the first step.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`sd` NULL),
/// `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (`ssl_error` is no `SSL_ERROR_*` code, or
/// `sys_errno` is negative) or `CLOSENOTIFY_ERR_WRONG_STATE` (the shutdown has
/// started; nothing is changed). A refused call leaves the error queue alone.
///
/// # Safety
/// `sd` is NULL or a live object from `closenotify_shutdown_new`, used by one
/// thread at a time.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_set_error(
    sd: *mut closenotify_shutdown,
    ssl_error: c_int,
    sys_errno: c_int,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live shutdown object, per the contract.
        let Some(sd) = (unsafe { sd.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "shutdown is NULL");
        };
        let failed = match ssl_error {
            ffi::SSL_ERROR_SSL | ffi::SSL_ERROR_SYSCALL => true,
            ffi::SSL_ERROR_NONE..=SSL_ERROR_LAST => false,
            other => {
                return fail(
                    CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                    format!("ssl_error {other} is not an SSL_ERROR_* code: pass what SSL_get_error answered"),
                )
            }
        };
        if sys_errno < 0 {
            return fail(
                CLOSENOTIFY_ERR_INVALID_ARGUMENT,
                format!("sys_errno {sys_errno} is negative: pass errno (0 for none)"),
            );
        }
        if let Err(code) = not_started(sd, "closenotify_shutdown_set_error") {
            return code;
        }
        if failed {
            let err = sd
                .machine
                .get_ref()
                .classify_failure(ErrorCode::from_raw(ssl_error), sys_errno);
            if let Some(setup) = sd.machine.setup() {
                setup.set_prior_error(err);
            }
        }
        CLOSENOTIFY_OK
    })
}

/// The last of `SSL_get_error`'s codes, which run from `SSL_ERROR_NONE` (0) to
/// `SSL_ERROR_WANT_RETRY_VERIFY` (12, OpenSSL 3.0+), the same numbers in every
/// version.
const SSL_ERROR_LAST: c_int = 12;

/// `CLOSENOTIFY_ERR_WRONG_STATE` (with its message) once the first step has run.
fn not_started(sd: &closenotify_shutdown, call: &str) -> Result<(), closenotify_result> {
    if sd.machine.is_started() {
        return Err(fail(
            CLOSENOTIFY_ERR_WRONG_STATE,
            format!(
                "{call}: the shutdown has started; call it after closenotify_shutdown_new, \
                 before the first step"
            ),
        ));
    }
    Ok(())
}

/// Makes progress and says what to wait for next: `*wait` is
/// `CLOSENOTIFY_WAIT_READ` or `_WRITE` (poll the socket for POLLIN or POLLOUT),
/// `_TIMER` (only wait), each with `*timeout_ms` milliseconds until the deadline,
/// rounded up (a loop that sleeps that long never wakes before the deadline, so
/// it never spins), ready for poll(); or `_DONE` with `*timeout_ms` 0. Call it first to start, then
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
    unsafe { step(sd, Ready::ALL, None, wait, timeout_ms) }
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
    // SAFETY: the caller's contract, forwarded.
    unsafe { step(sd, ready_from_revents(revents), None, wait, timeout_ms) }
}

/// The body of the step calls: one `poll` (or `poll_read` into `read`), then
/// the outputs.
///
/// # Safety
/// As `closenotify_shutdown_step`; `read`, if given, is a writable buffer and a
/// writable count.
unsafe fn step(
    sd: *mut closenotify_shutdown,
    ready: Ready,
    read: Option<(&mut [u8], *mut usize)>,
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
        let progress = match read {
            Some((buf, nread)) => {
                let (n, progress) = sd.machine.poll_read(now, ready, buf);
                // SAFETY: checked non-NULL and writable by the caller of `step`.
                unsafe { nread.write(n) };
                progress
            }
            None => sd.machine.poll(now, ready),
        };
        let (kind, ms) = match progress {
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

/// poll()'s `revents` as the machine's readiness: a hang-up or an error counts
/// as both, so that the next OpenSSL call reports it.
fn ready_from_revents(revents: c_int) -> Ready {
    let broken = revents & c_int::from(libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
    let mut ready = Ready::NONE;
    if revents & c_int::from(libc::POLLIN) != 0 || broken {
        ready = ready | Ready::READABLE;
    }
    if revents & c_int::from(libc::POLLOUT) != 0 || broken {
        ready = ready | Ready::WRITABLE;
    }
    ready
}

/// Like `closenotify_shutdown_step_revents`, but application data that arrives
/// after our close_notify is copied to `buf` (at most `len` bytes; `*nread` says
/// how many) instead of being discarded: the TLS half-close, where we are done
/// sending and read the peer's answer until its close_notify. When `*nread` is
/// not 0, consume the bytes and call again at once, whatever poll() says: more
/// may already be buffered; `*nread` can be non-zero with `CLOSENOTIFY_WAIT_DONE`
/// too (the step that crossed the limit or the deadline). With `len` 0 nothing
/// is read. The whole wait, data included, is bounded by the policy's
/// `peer_timeout_ms`, however fast the peer sends: a peer still streaming at the
/// deadline ends the shutdown `timed_out` in stage `await_peer`. Delivered bytes
/// are the report's `delivered_bytes`, not its `discarded_bytes`.
///
/// Returns `CLOSENOTIFY_OK` or `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`sd`, `nread`,
/// `wait` or `timeout_ms` NULL, or `buf` NULL with `len` not 0); the outputs are
/// written only on success.
///
/// # Safety
/// As `closenotify_shutdown_step`; `buf` is writable for `len` bytes (or NULL
/// with `len` 0); `nread` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_step_read(
    sd: *mut closenotify_shutdown,
    revents: c_int,
    buf: *mut u8,
    len: usize,
    nread: *mut usize,
    wait: *mut closenotify_wait,
    timeout_ms: *mut c_int,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        if nread.is_null() || (buf.is_null() && len > 0) {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "buf or nread is NULL");
        }
        let buf: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL and writable for `len` bytes, per the contract.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        // SAFETY: the caller's contract, forwarded; `nread` checked above.
        unsafe {
            step(
                sd,
                ready_from_revents(revents),
                Some((buf, nread)),
                wait,
                timeout_ms,
            )
        }
    })
}

/// Where `closenotify_shutdown_blocking_read` delivers the peer's data: called
/// with each chunk (`len` > 0) in order; return 0 to go on, anything else to
/// abandon the shutdown (the call then returns `CLOSENOTIFY_ERR_SINK`).
pub type closenotify_sink =
    Option<unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> c_int>;

/// `closenotify_shutdown_blocking`, but the application data the peer sends
/// after our close_notify, until its own close_notify, is handed to `sink`
/// instead of being discarded: the blocking way to read the rest of an answer
/// (a client that has sent its request sends close_notify and a FIN, then reads
/// the response to its end). At most `limit` bytes are delivered: past them the
/// shutdown ends with `CLOSENOTIFY_OUTCOME_DRAIN_LIMIT`. `clean` means the sink
/// received the complete answer.
///
/// Returns `CLOSENOTIFY_OK` (the report is written), `CLOSENOTIFY_ERR_NULL_ARGUMENT`
/// (`ssl`, `sink` or `report` NULL), `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (as
/// `closenotify_shutdown_blocking`, or a mode that does not wait for the peer:
/// send-only, quiet), or `CLOSENOTIFY_ERR_SINK` (the sink said stop; the report is
/// not written).
///
/// # Safety
/// As `closenotify_shutdown_blocking`; `sink` is safe to call with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn closenotify_shutdown_blocking_read(
    ssl: *mut SSL,
    fd: c_int,
    policy: *const closenotify_policy,
    limit: u64,
    sink: closenotify_sink,
    ctx: *mut c_void,
    report: *mut closenotify_report,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        if report.is_null() {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "report is NULL");
        }
        let Some(sink) = sink else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "sink is NULL");
        };
        // SAFETY: the caller's contract.
        let (conn, policy) = match unsafe { to_args(ssl, fd, policy) } {
            Ok(args) => args,
            Err(code) => return code,
        };
        let mut out = SinkWriter { sink, ctx };
        match conn.shutdown_blocking_read(&policy, &mut out, limit) {
            Ok(r) => {
                // SAFETY: `report` is non-NULL and writable, per the contract.
                unsafe { report.write(to_c_report(&r)) };
                CLOSENOTIFY_OK
            }
            Err(crate::ReadError::Invalid(err)) => {
                fail(CLOSENOTIFY_ERR_INVALID_ARGUMENT, err.to_string())
            }
            Err(_) => fail(
                CLOSENOTIFY_ERR_SINK,
                "the sink returned non-zero: shutdown abandoned",
            ),
        }
    })
}

/// The C sink as a `Write`.
struct SinkWriter {
    sink: unsafe extern "C" fn(*mut c_void, *const u8, usize) -> c_int,
    ctx: *mut c_void,
}

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // SAFETY: the caller of closenotify_shutdown_blocking_read vouches for the
        // sink and its context; `buf` is valid for its length during the call.
        match unsafe { (self.sink)(self.ctx, buf.as_ptr(), buf.len()) } {
            0 => Ok(buf.len()),
            _ => Err(std::io::Error::other("sink")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
