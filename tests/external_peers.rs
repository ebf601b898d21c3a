//! closenotify against TLS stacks it did not write: the `openssl s_server` and
//! `openssl s_client` command-line tools, and Python's `ssl` module
//! (`tests/peers/peer.py`), on real loopback sockets, in TLS 1.2 and 1.3.
//!
//! These tests need `openssl` and `python3` on `PATH` (CI installs both). When
//! either is missing they fail with a message saying so: they never skip.

mod util;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use closenotify::{shutdown_blocking, Initiator, Outcome, Stage};
use openssl::ssl::{Ssl, SslStream};
use util::process::{self, require, Pems, Proc};
use util::*;

/// How long any external peer gets to become ready, answer or exit.
const READY: Duration = Duration::from_secs(5);

/// Waits (bounded) until `fd` reports one of `events`.
fn wait_for(fd: i32, events: i16, what: &str) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, READY.as_millis() as i32) };
    assert_eq!(n, 1, "{what}: socket not ready within {READY:?}");
}

/// Our client: `ctx.client` over a fresh connection to `127.0.0.1:port`.
fn connect(ctx: &Contexts, port: u16) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the external peer");
    tcp.set_nodelay(true).unwrap();
    // Bounds the handshake if the peer dies; the shutdown does not use it.
    tcp.set_read_timeout(Some(READY)).unwrap();
    Ssl::new(&ctx.client)
        .unwrap()
        .connect(tcp)
        .expect("handshake with the external peer")
}

/// Our server: accepts one connection on `listener` (bounded) and handshakes.
fn accept(ctx: &Contexts, listener: &TcpListener) -> SslStream<TcpStream> {
    wait_for(listener.as_raw_fd(), libc::POLLIN, "accept");
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(READY)).unwrap();
    Ssl::new(&ctx.server)
        .unwrap()
        .accept(tcp)
        .expect("handshake with the external peer")
}

// ---------------------------------------------------------------------------
// A. openssl s_server as the peer, our side the client.
// ---------------------------------------------------------------------------

/// Starts `openssl s_server` for exactly one connection (see
/// `util::process::s_server`); returns it and its port.
fn s_server(tls: Tls, pems: &Pems) -> (Proc, u16) {
    require("openssl", "version");
    let (server, addr) = process::s_server(pems, &[tls.openssl_flag()], READY);
    (server, addr.port())
}

#[test]
fn s_server_answers_our_close_notify_clean_local() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut server, port) = s_server(tls, &pems);
        let ctx = Contexts::new(tls);
        let mut ours = connect(&ctx, port);

        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} against s_server: {}", server.transcript());
        if !cfg!(ossl300) {
            // OpenSSL 1.1.1's s_server ends with SSL_set_shutdown and close(): no
            // close_notify, which closenotify reports as it is.
            assert_outcome(&r, Outcome::Truncated, &what);
            drop(ours);
            server.expect_success(READY);
            continue;
        }
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!(r.alert, None, "{what}");
        assert_eq!(r.os_error, None, "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(r.tls_version.map(|v| v.as_str()), Some(tls.name()));
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(1000), "{what}: {:?}", r.elapsed);

        drop(ours);
        // s_server saw our close_notify as the end of the stream ("DONE"), answered
        // it in its own shutdown, and exits after its one connection.
        let out = server.expect_success(READY);
        assert!(out.iter().any(|l| l == "DONE"), "{}", server.transcript());
    }
}

// ---------------------------------------------------------------------------
// B. openssl s_client as the peer, our side the server.
// ---------------------------------------------------------------------------

/// Starts `openssl s_client` against our listener, accepts it, and returns once
/// s_client has consumed everything we sent: we write `ping` and wait for
/// s_client to print it. In TLS 1.2 our Finished, in TLS 1.3 our session tickets,
/// come before it in the stream, so nothing is left unread in s_client's socket.
///
/// `-quiet` keeps stdout to the application data; it also implies `-ign_eof`,
/// which `-no_ign_eof` (after it) turns off again: EOF on stdin makes s_client
/// send close_notify.
fn s_client(tls: Tls, ctx: &Contexts) -> (Proc, SslStream<TcpStream>) {
    require("openssl", "version");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect_to = format!("127.0.0.1:{port}");
    let mut client = Proc::spawn(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect_to,
            "-quiet",
            "-no_ign_eof",
            tls.openssl_flag(),
        ],
    );
    let mut ours = accept(ctx, &listener);
    ours.write_all(b"ping\n").unwrap();
    client.wait_line("echo of our ping", READY, |l| l == "ping");
    (client, ours)
}

#[test]
fn s_client_closes_on_stdin_eof_and_we_answer_clean_peer() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let (mut client, mut ours) = s_client(tls, &ctx);

        // EOF on its stdin: s_client sends close_notify, then SHUT_WR, then reads
        // (for up to 500 ms) what we still send before it closes.
        client.close_stdin();
        let data = read_until_close_notify(&mut ours)
            .unwrap_or_else(|e| panic!("{tls:?}: {e}: {}", client.transcript()));
        assert!(data.is_empty(), "{tls:?}: {data:?}");

        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} against s_client: {}", client.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.initiator, Initiator::Peer, "{what}");
        // Answering ends right after the half-close: nothing to await.
        assert_eq!(r.stage, Stage::HalfClose, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!(r.ssl_calls, 1, "{what}: answering needs one SSL_shutdown");
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(r.tls_version.map(|v| v.as_str()), Some(tls.name()));
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(500), "{what}: {:?}", r.elapsed);

        drop(ours);
        client.expect_success(READY);
    }
}

#[test]
fn s_client_killed_after_the_handshake_truncated() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let (mut client, mut ours) = s_client(tls, &ctx);

        // SIGKILL: the kernel closes s_client's socket. Everything we sent was
        // read (see `s_client`), so the close is a FIN, not an RST. Once `wait`
        // returned, the FIN is on its way; wait until it reached us.
        client.kill();
        wait_for(ours.get_ref().as_raw_fd(), libc::POLLIN, "s_client's FIN");

        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} against a killed s_client: {}", client.transcript());
        // Our close_notify still goes into the kernel; the dead socket answers it
        // with an RST, which on loopback arrives before our shutdown(SHUT_WR) (so
        // `half_closed` is false: ENOTCONN). Linux reads the FIN (EOF) before the
        // pending error, so the answer is truncated, not reset. Without the ping
        // sync in `s_client`, unread bytes (the TLS 1.2 Finished, the TLS 1.3
        // tickets) make the kill itself send an RST: `reset` (ECONNRESET) in flush.
        assert_outcome(&r, Outcome::Truncated, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Server),
            "{what}"
        );
        assert!(r.elapsed < ms(500), "{what}: waited {:?}", r.elapsed);
    }
}

// ---------------------------------------------------------------------------
// C. Python's ssl module as the peer (tests/peers/peer.py), our side the client.
// ---------------------------------------------------------------------------

/// Starts peer.py in `mode` (see `util::process::peer_py`) and connects to it.
fn python(tls: Tls, mode: &str, pems: &Pems) -> (Proc, SslStream<TcpStream>) {
    let version = match tls {
        Tls::V12 => "1.2",
        Tls::V13 => "1.3",
    };
    let (peer, port) = process::peer_py(pems, mode, version, READY);
    let ctx = Contexts::new(tls);
    let ours = connect(&ctx, port);
    (peer, ours)
}

#[test]
fn python_answers_our_close_notify_clean() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "answer", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python answer: {}", peer.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(r.tls_version.map(|v| v.as_str()), Some(tls.name()));
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(1000), "{what}: {:?}", r.elapsed);
        drop(ours);
        peer.expect_success(READY);
    }
}

#[test]
fn python_silent_times_out_in_await_peer() {
    for tls in BOTH {
        let pems = Pems::write();
        let (_peer, mut ours) = python(tls, "silent", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 200));
        let what = format!("{tls:?} python silent");
        assert_outcome(&r, Outcome::TimedOut, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.elapsed >= ms(200) && r.elapsed < ms(400),
            "{what}: {:?}",
            r.elapsed
        );
        assert!(
            r.close_notify_sent && r.half_closed && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Client),
            "{what}"
        );
        // `_peer` is killed on drop: it sleeps forever.
    }
}

#[test]
fn python_closes_without_close_notify_truncated() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "truncate", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python truncate: {}", peer.transcript());
        assert_outcome(&r, Outcome::Truncated, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Client),
            "{what}"
        );
        assert!(r.elapsed < ms(1000), "{what}: waited for the timeout");
        peer.expect_success(READY);
    }
}

#[test]
fn python_resets_reset_with_econnreset() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "reset", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python reset: {}", peer.transcript());
        assert_outcome(&r, Outcome::Reset, &what);
        assert_eq!(r.os_error, Some(libc::ECONNRESET), "{what}");
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!(r.alert, None, "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Client),
            "{what}"
        );
        assert!(r.elapsed < ms(1000), "{what}: waited for the timeout");
        peer.expect_success(READY);
    }
}

#[test]
fn python_sends_data_after_our_close_notify_clean_with_discarded_bytes() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "data", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python data: {}", peer.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.discarded_bytes, 5000, "{what}");
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(1000), "{what}: {:?}", r.elapsed);
        drop(ours);
        peer.expect_success(READY);
    }
}
