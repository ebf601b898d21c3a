//! Socket operations: half-close, reset on close, the kernel send queue, and the
//! `poll(2)` wait of the blocking adapters.

use std::io;
use std::net::Shutdown as HowShutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use socket2::{SockRef, Type};

use crate::machine::{Interest, Ready};

/// `shutdown(SHUT_WR)`: the peer reads EOF after our close_notify. A socket whose
/// write side is already shut (by an earlier shutdown of the same connection, or
/// by the application) counts as half-closed: Linux answers ENOTCONN to a second
/// `shutdown(SHUT_WR)`, and the TCP state tells the two apart from a dead
/// connection.
pub(crate) fn half_close(fd: BorrowedFd<'_>) -> io::Result<()> {
    half_close_answer(SockRef::from(&fd).shutdown(HowShutdown::Write), fd)
}

/// What a `shutdown(SHUT_WR)` of `fd` made elsewhere (by tokio-openssl) answered,
/// read as [`half_close`] reads its own: ENOTCONN once our FIN is queued means the
/// write side was already shut.
pub(crate) fn half_close_answer(answer: io::Result<()>, fd: BorrowedFd<'_>) -> io::Result<()> {
    match answer {
        Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) && fin_sent(fd) => Ok(()),
        other => other,
    }
}

/// Whether a TCP socket is in a state in which its FIN has been queued
/// (`FIN_WAIT1`, `FIN_WAIT2`, `CLOSING`, `TIME_WAIT`, `LAST_ACK`).
fn fin_sent(fd: BorrowedFd<'_>) -> bool {
    // TCP states of include/net/tcp_states.h.
    const FIN_WAIT1: u8 = 4;
    const FIN_WAIT2: u8 = 5;
    const TIME_WAIT: u8 = 6;
    const LAST_ACK: u8 = 9;
    const CLOSING: u8 = 11;
    // SAFETY: an all-zero tcp_info is a valid value of the plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    rc == 0
        && matches!(
            info.tcpi_state,
            FIN_WAIT1 | FIN_WAIT2 | TIME_WAIT | LAST_ACK | CLOSING
        )
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

/// Puts `fd` in non-blocking mode; returns whether it was blocking before.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<bool> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes no pointers; a bad fd is EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(false);
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Puts `fd` back in blocking mode.
pub(crate) fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes no pointers; a bad fd is EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
