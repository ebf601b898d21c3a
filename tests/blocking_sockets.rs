//! Every entry point is bounded by its policy whatever the socket's mode: on a
//! rust-openssl stream, a blocking socket is switched to non-blocking mode while
//! the shutdown runs and switched back when it ends; a raw `SSL*` (and the
//! Closer's streams) read and write with `MSG_DONTWAIT`, and the socket's mode is
//! never touched. And the report's `elapsed` is the time that really passed,
//! whatever `now` the caller hands in.
//!
//! The misbehaving peers hold the connection for at most `HOLD`: long enough that a
//! shutdown blocking inside OpenSSL shows, short enough that such a failure does
//! not hang the suite.

mod util;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use closenotify::{Closer, Outcome, Progress, Ready, Report, Shutdown, Stage};
use util::*;

/// How long a silent peer holds the connection before it gives up and closes.
const HOLD: Duration = Duration::from_secs(3);

/// A peer that reads nothing, sends nothing and closes after `HOLD` (or when told).
fn silent(
    release: mpsc::Receiver<()>,
) -> impl FnOnce(openssl::ssl::SslStream<std::net::TcpStream>) {
    move |p| {
        let _ = release.recv_timeout(HOLD);
        drop(p);
    }
}

/// The first `poll` returns at once, the shutdown times out in `await_peer` within
/// its 300 ms policy, and the socket is blocking afterwards. `switched`: the
/// socket is non-blocking while the shutdown runs (else its mode is untouched).
#[track_caller]
fn assert_bounded<C: closenotify::Connection>(
    mut sd: Shutdown<C>,
    fd: i32,
    switched: bool,
    what: &str,
) -> Report {
    let start = Instant::now();
    let first = sd.poll(Instant::now(), Ready::NONE);
    assert!(
        start.elapsed() < HOLD / 3,
        "{what}: the first poll blocked for {:?}",
        start.elapsed()
    );
    assert!(matches!(first, Progress::Wait(_)), "{what}: {first:?}");
    assert_eq!(
        !is_blocking(fd),
        switched,
        "{what}: the socket's mode meanwhile"
    );
    let r = drive(sd, fd);
    assert_outcome(&r, Outcome::TimedOut, what);
    assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
    assert!(
        r.elapsed >= ms(300) && r.elapsed < ms(600),
        "{what}: {:?}",
        r.elapsed
    );
    assert!(
        start.elapsed() < ms(600),
        "{what}: took {:?}",
        start.elapsed()
    );
    assert!(is_blocking(fd), "{what}: blocking mode not restored");
    r
}

#[test]
fn shutdown_poll_on_a_blocking_std_socket_is_bounded_by_the_policy() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let fd = ours.get_ref().as_raw_fd();
        assert!(is_blocking(fd));
        let (release, held) = mpsc::channel();
        let peer = spawn_peer(peer, silent(held));
        assert_bounded(Shutdown::new(&mut ours, &policy(300, 300)), fd, true, &what);
        release.send(()).unwrap();
        peer.join().unwrap();
    }
}

#[test]
fn raw_connection_on_a_blocking_fd_is_bounded_by_the_policy() {
    for tls in BOTH {
        let what = format!("{tls:?} raw");
        let ctx = Contexts::new(tls);
        let (raw, peer) = RawClient::connect(&ctx, |_| {});
        let fd = raw.tcp.as_raw_fd();
        assert!(is_blocking(fd));
        let (release, held) = mpsc::channel();
        let peer = spawn_peer(peer, silent(held));
        assert_bounded(
            Shutdown::new(raw.conn(), &policy(300, 300)),
            fd,
            false,
            &what,
        );
        release.send(()).unwrap();
        peer.join().unwrap();
    }
}

#[test]
fn a_non_blocking_socket_stays_non_blocking() {
    let ctx = Contexts::new(Tls::V13);
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    ours.get_ref().set_nonblocking(true).unwrap();
    let peer = spawn_peer(peer, answer);
    let fd = ours.get_ref().as_raw_fd();
    let r = drive(Shutdown::new(&mut ours, &policy(300, 300)), fd);
    assert_outcome(&r, Outcome::Clean, "non-blocking");
    assert!(!is_blocking(fd), "switched to blocking mode");
    drop(ours);
    peer.join().unwrap();
}

/// A std server hands the Closer `mio::net::TcpStream::from_std(accepted)`, which
/// keeps the blocking mode. A peer that sends half a TLS record and holds must
/// not freeze the Closer's thread: the other connection reports at once, the
/// holding one times out under the policy.
#[test]
fn a_blocking_stream_cannot_freeze_the_closer() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let mut closer: Closer<&str> = Closer::new(&policy(300, 300)).unwrap();

        let (holding, peer) = ctx.pair_mio_blocking(Role::Client);
        assert!(is_blocking(holding.get_ref().as_raw_fd()));
        let (release, held) = mpsc::channel::<()>();
        let (sent, half_sent) = mpsc::channel();
        let holder = spawn_peer(peer, move |mut p| {
            // An application-data record header announcing 64 bytes, and 5 of them.
            write_raw(&mut p, &[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3, 4, 5]);
            sent.send(()).unwrap();
            let _ = held.recv_timeout(HOLD);
        });
        half_sent.recv().unwrap();
        assert!(wait_for(
            holding.get_ref().as_raw_fd(),
            libc::POLLIN,
            ms(5000)
        ));

        let (answering, peer) = ctx.pair_mio(Role::Client);
        let answerer = spawn_peer(peer, answer);

        let start = Instant::now();
        closer.add(holding, "holding").unwrap();
        closer.add(answering, "answering").unwrap();
        let mut reports = Vec::new();
        while closer.pending() > 0 && start.elapsed() < HOLD * 2 {
            closer.poll(Some(ms(50))).unwrap();
            for (tag, r) in closer.reports() {
                reports.push((tag, r, start.elapsed()));
            }
        }
        let what = format!("{tls:?}: {reports:?}");
        let (_, clean, at) = reports
            .iter()
            .find(|(tag, ..)| *tag == "answering")
            .unwrap_or_else(|| panic!("{what}"));
        assert_eq!(clean.outcome, Outcome::Clean, "{what}");
        assert!(*at < ms(250), "{what}: the answering peer waited {at:?}");
        let (_, timed_out, at) = reports
            .iter()
            .find(|(tag, ..)| *tag == "holding")
            .unwrap_or_else(|| panic!("{what}"));
        assert_eq!(
            (timed_out.outcome, timed_out.stage),
            (Outcome::TimedOut, Stage::AwaitPeer),
            "{what}"
        );
        assert!(*at < ms(600), "{what}: the holding peer took {at:?}");
        release.send(()).unwrap();
        holder.join().unwrap();
        answerer.join().unwrap();
    }
}

/// A caller that hands in a stale `now` (computed once, say) still gets the time
/// that really passed.
#[test]
fn elapsed_is_real_time_even_with_a_stale_now() {
    let ctx = Contexts::new(Tls::V13);
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let peer = spawn_peer(peer, |mut p| {
        read_until_close_notify(&mut p).expect("our close_notify");
        std::thread::sleep(ms(200)); // then answers
        let _ = p.shutdown();
        wait_eof(p.get_mut());
    });
    let fd = ours.get_ref().as_raw_fd();
    let stale = Instant::now();
    let mut sd = Shutdown::new(&mut ours, &policy(1000, 1000));
    let mut ready = Ready::NONE;
    let r = loop {
        match sd.poll(stale, ready) {
            Progress::Done(r) => break r,
            Progress::Wait(_) => {
                ready = if wait_for(fd, libc::POLLIN, ms(2000)) {
                    Ready::READABLE
                } else {
                    Ready::NONE
                };
            }
        }
    };
    assert_outcome(&r, Outcome::Clean, "stale now");
    assert!(
        r.elapsed >= ms(200) && r.elapsed < ms(1000),
        "elapsed {:?}",
        r.elapsed
    );
    drop(sd);
    drop(ours);
    peer.join().unwrap();
}
