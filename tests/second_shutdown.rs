//! One `SSL_shutdown` at most: when our close_notify has already left before the
//! shutdown begins (the application called `SSL_shutdown` itself, or an earlier
//! shutdown was dropped after its flush), the shutdown reads the peer's answer with
//! `SSL_read`. A second `SSL_shutdown` would fail on the peer's application data
//! ("application data after close notify") and turn a clean close into a protocol
//! error. When the close_notify is still buffered in OpenSSL, `SSL_shutdown` only
//! flushes it, and the shutdown then reads.

mod util;

use std::os::fd::AsRawFd;
use std::sync::mpsc;

use closenotify::{shutdown_blocking, Initiator, Outcome, Progress, Ready, Shutdown, Stage};
use foreign_types::ForeignType;
use openssl::ssl::ShutdownResult;
use util::*;

/// Application bytes the peer sends after our close_notify, before its own.
const DATA: usize = 1000;

/// The peer, in its thread: reads our close_notify, waits for `answer`, sends
/// `DATA` bytes and its close_notify, and holds the connection until `end`.
struct AnsweringPeer {
    go: mpsc::Sender<()>,
    answered: mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl AnsweringPeer {
    fn spawn(peer: openssl::ssl::SslStream<std::net::TcpStream>) -> AnsweringPeer {
        let (go, start) = mpsc::channel();
        let (done, answered) = mpsc::channel();
        let thread = spawn_peer(peer, move |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
            start.recv().unwrap();
            std::io::Write::write_all(&mut p, &[7u8; DATA]).unwrap();
            p.shutdown().unwrap();
            done.send(()).unwrap();
            let _ = start.recv();
        });
        AnsweringPeer {
            go,
            answered,
            thread,
        }
    }

    /// Lets the peer answer, and waits until its data and close_notify are
    /// readable on `fd`: they are waiting when the next shutdown begins.
    fn answer(&self, fd: std::os::fd::RawFd) {
        self.go.send(()).unwrap();
        self.answered.recv().unwrap();
        assert!(wait_for(fd, libc::POLLIN, ms(5000)));
    }

    /// Lets the peer go once our side is closed.
    fn end(self, ours: impl Sized) {
        drop(self.go);
        drop(ours);
        self.thread.join().unwrap();
    }
}

#[track_caller]
fn assert_clean_with_data(r: &closenotify::Report, what: &str) {
    assert_outcome(r, Outcome::Clean, what);
    assert_eq!(r.discarded_bytes, DATA as u64, "{what}");
    assert_eq!(r.initiator, Initiator::Local, "{what}");
    assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
    assert!(
        r.close_notify_sent && r.close_notify_received && r.half_closed,
        "{what}: {r:?}"
    );
    assert!(r.session_resumable, "{what}: {r:?}");
}

#[test]
fn the_application_sent_close_notify_itself_clean() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let peer = AnsweringPeer::spawn(peer);
        assert_eq!(ours.shutdown().unwrap(), ShutdownResult::Sent, "{what}");
        peer.answer(ours.get_ref().as_raw_fd());
        let r = shutdown_blocking(&mut ours, &policy(500, 500));
        assert_clean_with_data(&r, &what);
        peer.end(ours);
    }
}

#[test]
fn the_application_sent_close_notify_itself_raw_ssl_clean() {
    for tls in BOTH {
        let what = format!("{tls:?} raw");
        let ctx = Contexts::new(tls);
        let (raw, peer) = RawClient::connect(&ctx, |_| {});
        let peer = AnsweringPeer::spawn(peer);
        // SAFETY: the raw client's SSL is valid and used by this thread only.
        assert_eq!(unsafe { openssl_sys::SSL_shutdown(raw.ssl.as_ptr()) }, 0);
        peer.answer(raw.tcp.as_raw_fd());
        let r = raw.conn().shutdown_blocking(&policy(500, 500));
        assert_clean_with_data(&r, &what);
        peer.end(raw);
    }
}

#[test]
fn a_shutdown_dropped_after_its_flush_starts_again_clean() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let peer = AnsweringPeer::spawn(peer);
        {
            // Flushes close_notify, half-closes, then waits for the peer: dropped.
            let mut sd = Shutdown::new(&mut ours, &policy(500, 500));
            let first = sd.poll(std::time::Instant::now(), Ready::NONE);
            assert!(matches!(first, Progress::Wait(_)), "{what}: {first:?}");
        }
        peer.answer(ours.get_ref().as_raw_fd());
        let r = shutdown_blocking(&mut ours, &policy(500, 500));
        assert_clean_with_data(&r, &what);
        peer.end(ours);
    }
}

/// A connected pair whose peer does not read until `go`: our send buffer is full
/// of raw filler, so the next TLS record we write stays in OpenSSL. On `go`, the
/// peer closes first (data and close_notify), drains the filler, reads our
/// close_notify and waits for our FIN.
fn peer_not_reading(
    ctx: &Contexts,
    role: Role,
) -> (
    openssl::ssl::SslStream<std::net::TcpStream>,
    mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let Pair { mut ours, mut peer } = ctx.pair(role);
    // TLS 1.3 tickets travel after the handshake: read them on the client side,
    // so that the peer's socket holds only the filler, then TLS.
    if ctx.tls == Tls::V13 {
        match role {
            Role::Client => read_tickets(&mut ours),
            Role::Server => read_tickets(&mut peer),
        }
    }
    let raw = fill_send_buffer(ours.get_ref());
    let (go, start) = mpsc::channel::<()>();
    let peer = spawn_peer(peer, move |mut p| {
        start.recv().unwrap();
        std::io::Write::write_all(&mut p, &[7u8; DATA]).unwrap();
        assert_eq!(p.shutdown().unwrap(), ShutdownResult::Sent);
        let mut filler = vec![1u8; raw];
        std::io::Read::read_exact(p.get_mut(), &mut filler).unwrap();
        assert!(filler.iter().all(|&b| b == 0), "not the filler");
        read_until_close_notify(&mut p).expect("our close_notify");
        wait_eof(p.get_mut());
    });
    (ours, go, peer)
}

/// An earlier shutdown was dropped while the peer did not read: our close_notify is
/// queued in OpenSSL, not written. The next shutdown must flush it (with
/// `SSL_shutdown`, which then only writes) before it reads.
#[test]
fn a_close_notify_still_buffered_is_flushed_before_reading() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let (mut ours, go, peer) = peer_not_reading(&ctx, role);
        {
            let mut sd = Shutdown::new(&mut ours, &policy(300, 300));
            match sd.poll(std::time::Instant::now(), Ready::NONE) {
                Progress::Wait(w) => assert_eq!(w.interest, closenotify::Interest::Write),
                other => panic!("{what}: {other:?}"),
            }
        }
        go.send(()).unwrap();
        let r = shutdown_blocking(&mut ours, &policy(2000, 2000));
        assert_clean_with_data(&r, &what);
        drop(ours);
        peer.join().unwrap();
    }
}

/// The application's own `SSL_shutdown` could not write its close_notify (the peer
/// was not reading), and the application read afterwards, which leaves no trace
/// of the pending write in `SSL_want`. The shutdown must still flush it first.
#[test]
fn the_applications_pending_close_notify_is_flushed_after_a_read() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let (mut ours, go, peer) = peer_not_reading(&ctx, role);
        ours.get_ref().set_nonblocking(true).unwrap();
        let err = ours.shutdown().unwrap_err();
        assert_eq!(err.code(), openssl::ssl::ErrorCode::WANT_WRITE, "{what}");
        let err = ours.ssl_read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.code(), openssl::ssl::ErrorCode::WANT_READ, "{what}");
        ours.get_ref().set_nonblocking(false).unwrap();
        go.send(()).unwrap();
        let r = shutdown_blocking(&mut ours, &policy(2000, 2000));
        assert_clean_with_data(&r, &what);
        drop(ours);
        peer.join().unwrap();
    }
}
