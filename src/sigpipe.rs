//! Keeps `SIGPIPE` away from the host process.
//!
//! OpenSSL's socket BIO writes with `write()`; on a connection the peer reset, the
//! kernel answers EPIPE *and* raises `SIGPIPE`, which kills a C program with the
//! default disposition. Linux has no per-socket `SO_NOSIGPIPE`, so each OpenSSL call
//! on a caller's `SSL*` runs with `SIGPIPE` blocked on the calling thread; a
//! `SIGPIPE` the call raised is then pending, and is consumed with a zero-timeout
//! `sigtimedwait` before the old mask comes back (the technique of libpq). A
//! `SIGPIPE` that was already pending before the call is left alone.
//!
//! Rust streams need none of this: the standard library sends with `MSG_NOSIGNAL`.

use std::mem::MaybeUninit;

pub(crate) struct SigpipeGuard {
    old: libc::sigset_t,
    pipe: libc::sigset_t,
    was_pending: bool,
    active: bool,
}

impl SigpipeGuard {
    pub(crate) fn new() -> SigpipeGuard {
        let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        let mut pending = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset/sigaddset initialise `pipe`; pthread_sigmask writes
        // `old` on success; sigpending writes `pending` on success. Each set is
        // read only after the call that initialises it succeeded.
        unsafe {
            libc::sigemptyset(pipe.as_mut_ptr());
            libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE);
            let pipe = pipe.assume_init();
            if libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, old.as_mut_ptr()) != 0 {
                return SigpipeGuard {
                    old: pipe,
                    pipe,
                    was_pending: false,
                    active: false,
                };
            }
            let was_pending = libc::sigpending(pending.as_mut_ptr()) == 0
                && libc::sigismember(pending.as_ptr(), libc::SIGPIPE) == 1;
            SigpipeGuard {
                old: old.assume_init(),
                pipe,
                was_pending,
                active: true,
            }
        }
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        // SAFETY: `pipe` and `old` are initialised sets; a zero timespec makes
        // sigtimedwait return at once (EAGAIN when nothing is pending).
        unsafe {
            if !self.was_pending {
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                while libc::sigtimedwait(&self.pipe, std::ptr::null_mut(), &zero) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}
