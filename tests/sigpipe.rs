//! SIGPIPE: a process with SIGPIPE at its default disposition survives a
//! shutdown against a peer that reset the connection, on a raw `SSL*` whose socket
//! BIO writes with write(). The scenario runs in a child process (this test binary,
//! re-executed), since the Rust test harness ignores SIGPIPE.

mod util;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use closenotify::Outcome;
use util::*;

const CHILD_ENV: &str = "CLOSENOTIFY_SIGPIPE_CHILD";

/// Sets up the trap: a raw client whose peer reset the connection, with the
/// ECONNRESET already consumed (as an event loop does on EPOLLERR), so that the
/// next write() gets EPIPE and, without protection, SIGPIPE.
fn reset_connection(tls: Tls) -> RawClient {
    let ctx = Contexts::new(tls);
    let (raw, peer) = RawClient::connect(&ctx, |_| {});
    reset_on_drop(peer.get_ref());
    drop(peer);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&raw.tcp);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
    let err = socket2::SockRef::from(&raw.tcp).take_error().unwrap();
    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::ECONNRESET));
    raw
}

fn default_sigpipe() {
    // SAFETY: restores the default disposition in this (child) process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Runs in the child: prints the outcome, or dies of SIGPIPE.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return; // not a child: nothing to do
    };
    default_sigpipe();
    let tls = if mode.ends_with("12") {
        Tls::V12
    } else {
        Tls::V13
    };
    let raw = reset_connection(tls);
    if mode.starts_with("plain") {
        // Control: what a C program does without closenotify.
        // SAFETY: a valid SSL on an open (reset) socket.
        unsafe { openssl_sys::SSL_shutdown(foreign_types::ForeignType::as_ptr(&raw.ssl)) };
        println!("OUTCOME survived");
    } else {
        let r = raw.conn().shutdown_blocking(&policy(200, 200));
        println!("OUTCOME {} {:?}", r.outcome, r.os_error);
        assert_eq!(r.outcome, Outcome::Reset);
        assert_eq!(r.os_error, Some(libc::EPIPE));
    }
}

fn run_child(mode: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_reset_peer_does_not_kill_a_default_sigpipe_process() {
    for tls in ["13", "12"] {
        // Control: the scenario really raises SIGPIPE without closenotify.
        let (status, _) = run_child(&format!("plain{tls}"));
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "control did not die: {status:?}"
        );

        let (status, out) = run_child(&format!("closenotify{tls}"));
        assert!(status.success(), "TLS{tls}: {status:?}\n{out}");
        assert!(out.contains("OUTCOME reset Some(32)"), "{out}");
    }
}
