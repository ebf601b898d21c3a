//! No busy loop (a silent peer costs a handful of OpenSSL calls, blocking and with
//! mio), and a second shutdown returns the same report.

mod util;

use std::net::TcpStream;
use std::time::Instant;

use closenotify::{shutdown_blocking, Outcome, Progress, Ready, Shutdown, Stage};
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::SslStream;
use util::*;

#[test]
fn silent_peer_for_300ms_costs_a_handful_of_calls() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |p| {
            wait.recv().unwrap();
            drop(p)
        });
        let r = shutdown_blocking(&mut ours, &policy(500, 300));
        assert_outcome(&r, Outcome::TimedOut, "silent");
        // flush (1) + reads of whatever arrived (TLS 1.3 tickets) + nothing else.
        assert!(
            r.ssl_calls <= 4,
            "{tls:?} as {role:?}: {} calls",
            r.ssl_calls
        );
        go.send(()).unwrap();
        peer.join().unwrap();
    }
}

#[test]
fn second_shutdown_returns_the_same_report() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let peer = spawn_peer(peer, answer);
        let first = shutdown_blocking(&mut ours, &policy(500, 500));
        assert_outcome(&first, Outcome::Clean, "first");
        let second = shutdown_blocking(&mut ours, &policy(100, 100));
        assert_eq!(first, second, "{tls:?} as {role:?}");
        drop(ours);
        peer.join().unwrap();
    }

    // Also for a raw SSL*.
    let ctx = Contexts::new(Tls::V13);
    let (raw, peer) = RawClient::connect(&ctx, |_| {});
    let peer = spawn_peer(peer, answer);
    let first = raw.conn().shutdown_blocking(&policy(500, 500));
    assert_outcome(&first, Outcome::Clean, "raw first");
    assert_eq!(raw.conn().shutdown_blocking(&policy(500, 500)), first);
    drop(raw);
    peer.join().unwrap();
}

/// Our side as a mio user would drive it: one registration for READABLE |
/// WRITABLE (edge-triggered), the machine's deadline as the poll timeout.
fn drive_with_mio(
    ours: &mut SslStream<mio::net::TcpStream>,
    policy: &closenotify::Policy,
) -> (closenotify::Report, u32) {
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(
            ours.get_mut(),
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .unwrap();
    let mut events = Events::with_capacity(8);
    let mut sd = Shutdown::new(&mut *ours, policy);
    let mut ready = Ready::NONE;
    let mut wakeups = 0;
    loop {
        match sd.poll(Instant::now(), ready) {
            Progress::Done(report) => return (report, wakeups),
            Progress::Wait(wait) => {
                poll.poll(&mut events, Some(wait.timeout(Instant::now())))
                    .unwrap();
                wakeups += 1;
                ready = events
                    .iter()
                    .fold(Ready::NONE, |acc, e| acc | Ready::from(e));
            }
        }
    }
}

fn mio_pair(tls: Tls, role: Role) -> (SslStream<mio::net::TcpStream>, SslStream<TcpStream>) {
    Contexts::new(tls).pair_mio(role)
}

#[test]
fn mio_driven_clean_and_silent() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let (mut ours, peer) = mio_pair(tls, role);
        let peer = spawn_peer(peer, answer);
        let (r, _) = drive_with_mio(&mut ours, &policy(500, 500));
        assert_outcome(&r, Outcome::Clean, &what);
        drop(ours);
        peer.join().unwrap();

        let (mut ours, peer) = mio_pair(tls, role);
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |p| {
            wait.recv().unwrap();
            drop(p)
        });
        let start = Instant::now();
        let (r, wakeups) = drive_with_mio(&mut ours, &policy(500, 300));
        assert_outcome(&r, Outcome::TimedOut, &what);
        assert_eq!(r.stage, Stage::AwaitPeer);
        assert!(
            start.elapsed() >= ms(300) && start.elapsed() < ms(600),
            "{what}"
        );
        assert!(r.ssl_calls <= 4, "{what}: {} calls", r.ssl_calls);
        assert!(wakeups <= 4, "{what}: {wakeups} wake-ups in 300 ms");
        go.send(()).unwrap();
        peer.join().unwrap();
    }
}
