//! Socket operations: half-close, reset on close, the kernel send queue, and the
//! `poll(2)` wait of the blocking adapters.

use std::io;
use std::net::Shutdown as HowShutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use socket2::{SockRef, Type};

use crate::machine::{Interest, Ready};

/// `shutdown(SHUT_WR)`: the peer reads EOF after our close_notify.
pub(crate) fn half_close(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).shutdown(HowShutdown::Write)
}

/// `SO_LINGER {1, 0}`: the owner's `close()` sends an RST and frees the kernel state.
pub(crate) fn arm_reset(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).set_linger(Some(Duration::ZERO))
}

/// Bytes in the send queue not yet acknowledged (`SIOCOUTQ`, Linux).
pub(crate) fn send_queue_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is open for the borrow; SIOCOUTQ (= TIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as usize)
}

/// Checks that `fd` is an open stream socket.
pub(crate) fn check_stream_socket(fd: BorrowedFd<'_>) -> io::Result<()> {
    let ty = SockRef::from(&fd).r#type()?;
    if ty != Type::STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a SOCK_STREAM socket",
        ));
    }
    Ok(())
}

/// Puts a socket in non-blocking mode for as long as the guard lives, and restores
/// blocking mode afterwards if it was set. Holds the fd number only: the caller
/// keeps the socket open for the guard's lifetime.
pub(crate) struct NonBlocking {
    fd: RawFd,
    restore: bool,
}

impl NonBlocking {
    pub(crate) fn new(fd: RawFd) -> io::Result<Self> {
        // SAFETY: fcntl with F_GETFL/F_SETFL takes no pointers; a bad fd is EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK != 0 {
            return Ok(NonBlocking { fd, restore: false });
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking { fd, restore: true })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if self.restore {
            // SAFETY: as in `new`.
            unsafe {
                let flags = libc::fcntl(self.fd, libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(self.fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
            }
        }
    }
}

/// Waits with `poll(2)` until `fd` is ready for `interest` or `timeout` passes.
/// `Interest::Timer` only sleeps. Returns what the socket reported: a hang-up or an
/// error counts as both readable and writable, so that the next OpenSSL call
/// surfaces it.
pub(crate) fn wait(fd: BorrowedFd<'_>, interest: Interest, timeout: Duration) -> Ready {
    let events = match interest {
        Interest::Read => libc::POLLIN,
        Interest::Write => libc::POLLOUT,
        Interest::Timer => {
            std::thread::sleep(timeout);
            return Ready::NONE;
        }
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // Round up: waking before the deadline would only cost another call.
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd; nfds is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            // poll itself failed (ENOMEM): do not spin on it; the deadline ends the
            // shutdown.
            log::debug!("closenotify: poll failed: {err}");
            std::thread::sleep(timeout);
        }
        return Ready::NONE;
    }
    let r = pfd.revents;
    let broken = r & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
    let mut ready = Ready::NONE;
    if r & libc::POLLIN != 0 || broken {
        ready = ready | Ready::READABLE;
    }
    if r & libc::POLLOUT != 0 || broken {
        ready = ready | Ready::WRITABLE;
    }
    ready
}
