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

/// The peer: reads our close_notify, waits for `go`, sends `DATA` bytes and its
/// close_notify, says so on `done`, and holds the connection until `go` again.
fn data_then_close_notify(
    go: mpsc::Receiver<()>,
    done: mpsc::Sender<()>,
) -> impl FnOnce(openssl::ssl::SslStream<std::net::TcpStream>) {
    move |mut p| {
        read_until_close_notify(&mut p).expect("our close_notify");
        go.recv().unwrap();
        std::io::Write::write_all(&mut p, &[7u8; DATA]).unwrap();
        p.shutdown().unwrap();
        done.send(()).unwrap();
        let _ = go.recv();
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
        let (go, start) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let peer = spawn_peer(peer, data_then_close_notify(start, done));
        assert_eq!(ours.shutdown().unwrap(), ShutdownResult::Sent, "{what}");
        go.send(()).unwrap();
        // The peer's data and close_notify are waiting when the shutdown begins.
        finished.recv().unwrap();
        assert!(wait_for(ours.get_ref().as_raw_fd(), libc::POLLIN, ms(5000)));
        let r = shutdown_blocking(&mut ours, &policy(500, 500));
        assert_clean_with_data(&r, &what);
        drop(go);
        drop(ours);
        peer.join().unwrap();
    }
}

#[test]
fn the_application_sent_close_notify_itself_raw_ssl_clean() {
    for tls in BOTH {
        let what = format!("{tls:?} raw");
        let ctx = Contexts::new(tls);
        let (raw, peer) = RawClient::connect(&ctx, |_| {});
        let (go, start) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let peer = spawn_peer(peer, data_then_close_notify(start, done));
        // SAFETY: the raw client's SSL is valid and used by this thread only.
        assert_eq!(unsafe { openssl_sys::SSL_shutdown(raw.ssl.as_ptr()) }, 0);
        go.send(()).unwrap();
        finished.recv().unwrap();
        assert!(wait_for(raw.tcp.as_raw_fd(), libc::POLLIN, ms(5000)));
        let r = raw.conn().shutdown_blocking(&policy(500, 500));
        assert_clean_with_data(&r, &what);
        drop(go);
        drop(raw);
        peer.join().unwrap();
    }
}

#[test]
fn a_shutdown_dropped_after_its_flush_starts_again_clean() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let (go, start) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let peer = spawn_peer(peer, data_then_close_notify(start, done));
        {
            // Flushes close_notify, half-closes, then waits for the peer: dropped.
            let mut sd = Shutdown::new(&mut ours, &policy(500, 500));
            let first = sd.poll(std::time::Instant::now(), Ready::NONE);
            assert!(matches!(first, Progress::Wait(_)), "{what}: {first:?}");
        }
        go.send(()).unwrap();
        finished.recv().unwrap();
        assert!(wait_for(ours.get_ref().as_raw_fd(), libc::POLLIN, ms(5000)));
        let r = shutdown_blocking(&mut ours, &policy(500, 500));
        assert_clean_with_data(&r, &what);
        drop(go);
        drop(ours);
        peer.join().unwrap();
    }
}

/// An earlier shutdown was dropped while the peer did not read: our close_notify is
/// queued in OpenSSL, not written. The next shutdown must flush it (with
/// `SSL_shutdown`, which then only writes) before it reads.
#[test]
fn a_close_notify_still_buffered_is_flushed_before_reading() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, mut peer } = ctx.pair(role);
        // TLS 1.3 tickets travel after the handshake: read them on the client
        // side, so that the peer's socket holds only the filler, then TLS.
        if tls == Tls::V13 {
            match role {
                Role::Client => read_tickets(&mut ours),
                Role::Server => read_tickets(&mut peer),
            }
        }
        let raw = fill_send_buffer(ours.get_ref());
        let (go, start) = mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |mut p| {
            start.recv().unwrap();
            // The peer closes first this time: data and close_notify, then it
            // drains the raw filler and reads our close_notify.
            std::io::Write::write_all(&mut p, &[7u8; DATA]).unwrap();
            assert_eq!(p.shutdown().unwrap(), ShutdownResult::Sent);
            let mut filler = vec![1u8; raw];
            std::io::Read::read_exact(p.get_mut(), &mut filler).unwrap();
            assert!(filler.iter().all(|&b| b == 0), "not the filler");
            read_until_close_notify(&mut p).expect("our close_notify");
            wait_eof(p.get_mut());
        });
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
        let Pair { mut ours, mut peer } = ctx.pair(role);
        if tls == Tls::V13 {
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
