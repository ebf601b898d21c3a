//! `closenotify_closer`: hand a connection over and keep serving; the reports
//! come back later, with the caller's tag. The engine of the Rust `Closer`, on
//! connections the closer owns (a raw `SSL*` and its fd).

use std::ffi::c_int;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::time::Instant;

use openssl_sys::SSL;

use super::shutdown::{closenotify_shutdown, conn_error};
use super::{
    boundary, closenotify_policy, closenotify_report, closenotify_result, fail, to_c_report,
    to_policy, CLOSENOTIFY_ERR_INVALID_ARGUMENT, CLOSENOTIFY_ERR_NULL_ARGUMENT,
    CLOSENOTIFY_ERR_PANIC, CLOSENOTIFY_ERR_SYSTEM, CLOSENOTIFY_ERR_WRONG_STATE, CLOSENOTIFY_OK,
};
use crate::closer::Engine;
use crate::ossl::RawConnection;
use crate::policy::{Mode, Policy};
use crate::shutdown::Shutdown;

/// Connections being shut down on the host's event loop thread. Opaque.
pub struct closenotify_closer {
    engine: Engine<RawConnection, u64>,
    policy: Policy,
}

/// A finished connection: the tag given to `closenotify_closer_add`, and how
/// the connection ended.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct closenotify_closed {
    /// The caller's tag.
    pub tag: u64,
    /// How it ended.
    pub report: closenotify_report,
}

/// A policy the closer can use: it closes every connection, so STOPTLS (which
/// keeps the connection) is refused.
///
/// # Safety
/// As [`to_policy`].
unsafe fn closer_policy(policy: *const closenotify_policy) -> Result<Policy, closenotify_result> {
    // SAFETY: the caller's contract, forwarded.
    let p = unsafe { to_policy(policy) }?;
    refuse_stoptls(&p)?;
    Ok(p)
}

/// The closer closes every connection: a STOPTLS policy is refused.
fn refuse_stoptls(policy: &Policy) -> Result<(), closenotify_result> {
    if policy.mode() == Mode::StopTls {
        return Err(fail(
            CLOSENOTIFY_ERR_INVALID_ARGUMENT,
            "invalid policy: the closer closes every connection, and \
             CLOSENOTIFY_MODE_STOPTLS keeps it: use the step API for STOPTLS",
        ));
    }
    Ok(())
}

/// Makes a closer, with `policy` (NULL: the defaults) for the connections added
/// without one of their own. Make one per event-loop thread; a closer is used by
/// one thread at a time.
///
/// Returns `CLOSENOTIFY_OK` (`*out` is written), `CLOSENOTIFY_ERR_NULL_ARGUMENT`
/// (`out` NULL), `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (a bad policy, or a STOPTLS
/// one; `closenotify_last_error` says which) or `CLOSENOTIFY_ERR_SYSTEM` (no
/// epoll instance).
///
/// # Safety
/// `policy` is NULL or readable; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_new(
    policy: *const closenotify_policy,
    out: *mut *mut closenotify_closer,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        if out.is_null() {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "out is NULL");
        }
        // SAFETY: the caller's contract.
        let policy = match unsafe { closer_policy(policy) } {
            Ok(p) => p,
            Err(code) => return code,
        };
        let engine = match Engine::new() {
            Ok(engine) => engine,
            Err(e) => return fail(CLOSENOTIFY_ERR_SYSTEM, format!("epoll_create: {e}")),
        };
        let closer = Box::new(closenotify_closer { engine, policy });
        // SAFETY: `out` is non-NULL and writable, per the contract.
        unsafe { out.write(Box::into_raw(closer)) };
        CLOSENOTIFY_OK
    })
}

/// Hands a connection over: its shutdown starts now, under `policy` (NULL: the
/// closer's), and `tag` comes back with its report. On `CLOSENOTIFY_OK` the
/// closer owns `ssl` and `fd` from then on: it frees the one (`SSL_free`) and
/// closes the other after the shutdown ends, in a `closenotify_closer_process`
/// call with time to spare (within 100 ms), or when the closer is freed; do not
/// use, free or close them again. On any error nothing changes hands and
/// nothing is done to either.
///
/// `ssl` must read and write through OpenSSL's socket (or fd) BIO on `fd`, as
/// `SSL_set_fd(ssl, fd)` sets it up. The fd's blocking mode does not matter: the
/// shutdown's calls never block and never raise SIGPIPE.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`closer` or `ssl`
/// NULL), `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (a bad fd, an `ssl` not on `fd`, a
/// bad or STOPTLS policy), `CLOSENOTIFY_ERR_WRONG_STATE` (a shutdown object on
/// this `ssl` is alive) or `CLOSENOTIFY_ERR_SYSTEM` (the fd cannot be watched).
///
/// # Safety
/// `closer` is NULL or a live closer; `ssl` is a valid `SSL*` the caller owns,
/// used by no other thread; `fd` is its socket, open; `policy` is NULL or
/// readable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_add(
    closer: *mut closenotify_closer,
    ssl: *mut SSL,
    fd: c_int,
    policy: *const closenotify_policy,
    tag: u64,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live closer, per the contract.
        let Some(closer) = (unsafe { closer.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "closer is NULL");
        };
        let policy = if policy.is_null() {
            closer.policy.clone()
        } else {
            // SAFETY: the caller's contract.
            match unsafe { closer_policy(policy) } {
                Ok(p) => p,
                Err(code) => return code,
            }
        };
        // SAFETY: the caller's contract: the SSL and the fd are theirs to give.
        let conn = match unsafe { RawConnection::owning(ssl, fd) } {
            Ok(conn) => conn,
            Err(e) => return conn_error(e, ssl),
        };
        let shutdown = Shutdown::new(conn, &policy);
        match closer.engine.add(shutdown, tag, Instant::now()) {
            Ok(()) => CLOSENOTIFY_OK,
            Err((shutdown, _, error)) => {
                // Not taken: the SSL and the fd go back to the caller untouched.
                shutdown.into_inner().disown();
                fail(
                    CLOSENOTIFY_ERR_SYSTEM,
                    format!("the closer cannot watch fd {fd}: {error}"),
                )
            }
        }
    })
}

/// Hands over a shutdown object from `closenotify_shutdown_new`, before its
/// first step, with what was handed to it (`closenotify_shutdown_set_unsent`,
/// `_set_error`) and its policy: for a connection whose last write stopped half
/// way or whose last call failed. `tag` comes back with its report. On
/// `CLOSENOTIFY_OK` the closer owns `sd` and the `SSL*` and fd it was made with:
/// do not step, free, use or close any of them again. On an error nothing
/// changes hands.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT`,
/// `CLOSENOTIFY_ERR_INVALID_ARGUMENT` (a STOPTLS policy),
/// `CLOSENOTIFY_ERR_WRONG_STATE` (the shutdown has had its first step),
/// `CLOSENOTIFY_ERR_SYSTEM` (the fd cannot be watched) or
/// `CLOSENOTIFY_ERR_PANIC` (a bug in closenotify: `sd` is then gone, do not
/// free it).
///
/// # Safety
/// `closer` is NULL or a live closer; `sd` is NULL or a live shutdown object
/// whose `SSL*` and fd the caller owns.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_add_shutdown(
    closer: *mut closenotify_closer,
    sd: *mut closenotify_shutdown,
    tag: u64,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or live objects, per the contract.
        let (Some(closer), false) = (unsafe { closer.as_mut() }, sd.is_null()) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "closer or shutdown is NULL");
        };
        // SAFETY: as above.
        let shutdown = unsafe { &mut *sd };
        if shutdown.machine.is_started() {
            return fail(
                CLOSENOTIFY_ERR_WRONG_STATE,
                "closenotify_closer_add_shutdown: the shutdown has started; hand it over \
                 before its first step",
            );
        }
        if let Err(rc) = refuse_stoptls(shutdown.machine.policy()) {
            return rc;
        }
        // The object is moved out of its allocation, which stays where it is: freed
        // once the closer has the shutdown, filled again if it cannot take it (the
        // caller's `sd` then stays valid, at the same address).
        // SAFETY: `sd` is a live object from closenotify_shutdown_new (the
        // contract); its bits are not used again unless written back below.
        let mut machine = unsafe { std::ptr::read(sd) }.machine;
        // SAFETY: the caller's contract: the SSL and the fd are theirs to give.
        unsafe { machine.get_mut().take_ownership() };
        match closer.engine.add(machine, tag, Instant::now()) {
            Ok(()) => {
                // SAFETY: the allocation of Box::into_raw in closenotify_shutdown_new,
                // its object moved out above: freed without dropping it again.
                drop(unsafe { Box::from_raw(sd.cast::<MaybeUninit<closenotify_shutdown>>()) });
                CLOSENOTIFY_OK
            }
            Err((mut machine, _, error)) => {
                let fd = machine.get_ref().fd();
                machine.get_mut().disown();
                // SAFETY: `sd`'s allocation, its object moved out above: the object
                // goes back, the caller's again.
                unsafe { std::ptr::write(sd, closenotify_shutdown { machine }) };
                fail(
                    CLOSENOTIFY_ERR_SYSTEM,
                    format!("the closer cannot watch fd {fd}: {error}"),
                )
            }
        }
    })
}

/// The fd to watch for readability in the host's event loop (an epoll
/// instance): when it is readable, call `closenotify_closer_process`. -1 for a
/// NULL closer. The fd belongs to the closer: do not close it.
///
/// # Safety
/// `closer` is NULL or a live closer.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_fd(closer: *const closenotify_closer) -> c_int {
    boundary(-1, || {
        // SAFETY: NULL or a live closer, per the contract.
        let Some(closer) = (unsafe { closer.as_ref() }) else {
            return -1;
        };
        closer.engine.own_poll().map_or(-1, AsRawFd::as_raw_fd)
    })
}

/// Milliseconds until the closer's next deadline, for the host loop's poll
/// timeout: rounded up (waking before the deadline would only cost another
/// call); 0 if one has passed, or if finished connections wait to be closed
/// and the closer has time for it now; -1 if there is none (nothing pending,
/// nothing to close). Call `closenotify_closer_process` when it runs out,
/// whatever the fd says.
///
/// # Safety
/// `closer` is NULL (-1) or a live closer.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_timeout_ms(closer: *const closenotify_closer) -> c_int {
    boundary(-1, || {
        // SAFETY: NULL or a live closer, per the contract.
        let Some(closer) = (unsafe { closer.as_ref() }) else {
            return -1;
        };
        closer.engine.next_deadline().map_or(-1, |deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            left.as_nanos().div_ceil(1_000_000).min(c_int::MAX as u128) as c_int
        })
    })
}

/// Makes all the progress possible now, without blocking: handles what the
/// closer's fd reported and the deadlines that passed, and closes the
/// connections that finished before this call. Call it when the closer's fd is
/// readable or its timeout ran out (calling it more often is harmless). The
/// reports wait for `closenotify_closer_reports`.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` or
/// `CLOSENOTIFY_ERR_SYSTEM` (epoll_wait failed; the next call tries again,
/// nothing is lost).
///
/// # Safety
/// `closer` is NULL or a live closer.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_process(
    closer: *mut closenotify_closer,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live closer, per the contract.
        let Some(closer) = (unsafe { closer.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "closer is NULL");
        };
        match closer.engine.poll(Some(std::time::Duration::ZERO)) {
            Ok(_) => CLOSENOTIFY_OK,
            Err(e) => fail(CLOSENOTIFY_ERR_SYSTEM, format!("epoll_wait: {e}")),
        }
    })
}

/// Takes finished connections' reports, oldest first: writes up to `len` of
/// them to `out` and their number to `*n`. Each report is handed out exactly
/// once: those written are removed, the rest wait for the next call. Call it
/// after `closenotify_closer_process` (or `_finish`) until `*n` < `len`.
///
/// Returns `CLOSENOTIFY_OK` or `CLOSENOTIFY_ERR_NULL_ARGUMENT` (`closer` or `n`
/// NULL, or `out` NULL with `len` not 0).
///
/// # Safety
/// `closer` is NULL or a live closer; `out` is writable for `len` elements (or
/// NULL with `len` 0); `n` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_reports(
    closer: *mut closenotify_closer,
    out: *mut closenotify_closed,
    len: usize,
    n: *mut usize,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live closer, per the contract.
        let Some(closer) = (unsafe { closer.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "closer is NULL");
        };
        if n.is_null() || (out.is_null() && len > 0) {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "out or n is NULL");
        }
        let mut written = 0;
        for (tag, report) in closer.engine.take_reports(len) {
            // SAFETY: `out` is writable for `len` elements and `written < len`.
            unsafe {
                out.add(written).write(closenotify_closed {
                    tag,
                    report: to_c_report(&report),
                })
            };
            written += 1;
        }
        // SAFETY: non-NULL and writable, per the contract.
        unsafe { n.write(written) };
        CLOSENOTIFY_OK
    })
}

/// Connections whose shutdown is still running (their reports are not out
/// yet). 0 for a NULL closer.
///
/// # Safety
/// `closer` is NULL or a live closer.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_pending(closer: *const closenotify_closer) -> usize {
    boundary(0, || {
        // SAFETY: NULL or a live closer, per the contract.
        unsafe { closer.as_ref() }.map_or(0, |c| c.engine.pending())
    })
}

/// Blocks until every pending shutdown has ended (each within its policy) and
/// every connection is closed; the reports wait for
/// `closenotify_closer_reports`. For a program that exits.
///
/// Returns `CLOSENOTIFY_OK`, `CLOSENOTIFY_ERR_NULL_ARGUMENT` or
/// `CLOSENOTIFY_ERR_SYSTEM` (epoll_wait failed).
///
/// # Safety
/// `closer` is NULL or a live closer.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_finish(
    closer: *mut closenotify_closer,
) -> closenotify_result {
    boundary(CLOSENOTIFY_ERR_PANIC, || {
        // SAFETY: NULL or a live closer, per the contract.
        let Some(closer) = (unsafe { closer.as_mut() }) else {
            return fail(CLOSENOTIFY_ERR_NULL_ARGUMENT, "closer is NULL");
        };
        match closer.engine.finish() {
            Ok(()) => CLOSENOTIFY_OK,
            Err(e) => fail(CLOSENOTIFY_ERR_SYSTEM, format!("epoll_wait: {e}")),
        }
    })
}

/// Frees the closer; NULL is fine. Connections still pending are aborted: each
/// `SSL` is freed and each fd closed at once, without waiting further and
/// without a report (their peers see a truncation; call
/// `closenotify_closer_finish` first to let them end under their policies).
/// Reports not yet taken are discarded.
///
/// # Safety
/// `closer` is NULL or a closer from `closenotify_closer_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn closenotify_closer_free(closer: *mut closenotify_closer) {
    boundary((), || {
        if !closer.is_null() {
            // SAFETY: created by Box::into_raw in closenotify_closer_new and not
            // yet freed, per the contract.
            drop(unsafe { Box::from_raw(closer) });
        }
    })
}
