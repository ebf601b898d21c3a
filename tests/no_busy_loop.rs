//! No busy loop (a silent peer costs a handful of OpenSSL calls, blocking and with
//! mio), and a second shutdown returns the same report.

mod util;

use std::net::TcpStream;
use std::time::Instant;

use closenotify::{shutdown_blocking, Outcome, Stage};
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
