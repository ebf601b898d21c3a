//! `closenotify::tokio` reading the peer's answer after our close_notify: the
//! `HalfClose` reader and `shutdown_read` (the tokio form of
//! `shutdown_blocking_read`), in TLS 1.2 and 1.3, as client and server, on both
//! kinds of runtime: the answer delivered whole, bounded by the policy however
//! fast the peer streams, a truncated answer an error, the rest discarded on
//! `finish`, the read limit, a refused mode, a failing writer.
#![cfg(feature = "tokio")]

mod util;

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use closenotify::tokio::HalfClose;
use closenotify::{Mode, Outcome, Policy, Stage};
use tokio::io::AsyncReadExt;
use util::*;

// --- the half-close reader -----------------------------------------------------------------

fn body() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn half_close_delivers_the_peers_data_until_its_close_notify() {
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let ctx = Contexts::new(tls);
        let (got, report) = on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            // The peer answers what it has to say after our close_notify: 100 KB,
            // then its own close_notify.
            let peer = spawn_peer(peer, |mut p| {
                read_until_close_notify(&mut p).expect("our close_notify");
                p.write_all(&body()).unwrap();
                p.shutdown().unwrap();
                wait_eof(p.get_mut());
            });
            let mut closing = HalfClose::new(&mut ours, &policy(500, 2000)).unwrap();
            let mut got = Vec::new();
            closing.read_to_end(&mut got).await.expect("an orderly end");
            let report = closing.report().expect("done");
            drop(closing);
            drop(ours);
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            (got, report)
        });
        assert_outcome(&report, Outcome::Clean, &what);
        assert!(report.half_closed && report.close_notify_received, "{what}");
        assert_eq!(report.discarded_bytes, 0, "{what}");
        assert_eq!(got.len(), 100_000, "{what}");
        assert!(got == body(), "{what}: bytes differ");
    }
}

/// A peer that streams for 3 s against a 300 ms peer timeout: `HalfClose` ends at
/// the deadline with `TimedOut`, for a reader that takes the data as fast as it
/// comes and for one that does 30 ms of async work per chunk.
#[test]
fn half_close_ends_at_the_deadline_while_the_peer_streams() {
    for (tls, role, flavor) in cases() {
        for work in [Duration::ZERO, ms(30)] {
            let what = format!("{tls:?} as {role:?} on {flavor:?}, {work:?} per chunk");
            let ctx = Contexts::new(tls);
            let (got, err, report, took) = on_runtime(flavor, async move {
                let (mut ours, peer) = ctx.pair_tokio(role).await;
                let peer = streaming_peer(peer);
                let p = Policy::builder()
                    .peer_timeout(ms(300))
                    .drain_limit(1 << 40)
                    .build()
                    .unwrap();
                let started = Instant::now();
                let mut closing = HalfClose::new(&mut ours, &p).unwrap();
                let mut got = 0u64;
                let mut buf = vec![0u8; 16 * 1024];
                let err = loop {
                    match closing.read(&mut buf).await {
                        Ok(0) => panic!("an orderly end while the peer streams"),
                        Ok(n) => got += n as u64,
                        Err(err) => break err,
                    }
                    if !work.is_zero() {
                        tokio::time::sleep(work).await;
                    }
                };
                let took = started.elapsed();
                let report = closing.report().expect("done");
                drop(closing);
                drop(ours);
                tokio::task::spawn_blocking(move || peer.join().unwrap())
                    .await
                    .unwrap();
                (got, err, report, took)
            });
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{what}: {err}");
            assert_outcome(&report, Outcome::TimedOut, &what);
            assert_eq!(report.stage, Stage::AwaitPeer, "{what}");
            assert_eq!(report.delivered_bytes, got, "{what}");
            assert!(got > 0, "{what}");
            assert!(report.elapsed >= ms(300), "{what}: {:?}", report.elapsed);
            assert!(report.elapsed < ms(900), "{what}: {:?}", report.elapsed);
            assert!(took < ms(900), "{what}: returned after {took:?}");
        }
    }
}

#[test]
fn half_close_reports_a_truncated_answer_as_an_error() {
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let ctx = Contexts::new(tls);
        let (got, err, report) = on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let peer = spawn_peer(peer, |mut p| {
                read_until_close_notify(&mut p).expect("our close_notify");
                p.write_all(b"half an answ").unwrap();
                drop(p); // FIN, no close_notify
            });
            let mut closing = HalfClose::new(&mut ours, &policy(500, 2000)).unwrap();
            let mut got = Vec::new();
            let err = closing.read_to_end(&mut got).await.unwrap_err();
            // Reading on returns the same end.
            let again = closing.read(&mut [0u8; 16]).await.unwrap_err();
            assert_eq!(again.kind(), err.kind());
            let report = closing.report().expect("done");
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            (got, err, report)
        });
        assert_eq!(got, b"half an answ", "{what}");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{what}: {err}");
        assert_outcome(&report, Outcome::Truncated, &what);
    }
}

#[test]
fn half_close_finish_discards_the_rest() {
    for flavor in FLAVORS {
        let ctx = Contexts::new(Tls::V13);
        let (first, report) = on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(Role::Client).await;
            let peer = spawn_peer(peer, |mut p| {
                read_until_close_notify(&mut p).expect("our close_notify");
                p.write_all(&body()).unwrap();
                p.shutdown().unwrap();
                wait_eof(p.get_mut());
            });
            let p = policy(500, 2000)
                .to_builder()
                .drain_limit(200_000)
                .build()
                .unwrap();
            let mut closing = HalfClose::new(&mut ours, &p).unwrap();
            let mut first = vec![0u8; 1000];
            closing.read_exact(&mut first).await.unwrap();
            let report = closing.finish().await;
            assert_eq!(closing.finish().await, report);
            drop(closing);
            drop(ours);
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            (first, report)
        });
        assert_eq!(first, body()[..1000], "{flavor:?}");
        assert_outcome(&report, Outcome::Clean, &format!("{flavor:?}"));
        assert_eq!(report.discarded_bytes, 99_000, "{flavor:?}");
    }
}

// --- shutdown_read: the same job as shutdown_blocking_read ------------------------------

/// A writer that refuses everything.
struct Refusing;

impl tokio::io::AsyncWrite for Refusing {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::other("disk full")))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `closenotify::tokio::shutdown_read` writes the peer's answer to the writer:
/// all of it and `clean`, or exactly `limit` bytes and `drain_limit`, as
/// `shutdown_blocking_read` does; a mode that does not wait for the peer is
/// refused before anything is sent, and a failing writer is `ReadError::Write`.
#[test]
fn shutdown_read_writes_the_answer_within_its_limit() {
    for (limit, outcome) in [(u64::MAX, Outcome::Clean), (1000, Outcome::DrainLimit)] {
        for flavor in FLAVORS {
            let what = format!("limit {limit} on {flavor:?}");
            let ctx = Contexts::new(Tls::V13);
            let (got, report) = on_runtime(flavor, async move {
                let (mut ours, peer) = ctx.pair_tokio(Role::Client).await;
                let peer = spawn_peer(peer, |mut p| {
                    read_until_close_notify(&mut p).expect("our close_notify");
                    let _ = p.write_all(&body());
                    let _ = p.shutdown();
                    wait_eof(p.get_mut());
                });
                let mut got = Vec::new();
                let report = closenotify::tokio::shutdown_read(
                    &mut ours,
                    &policy(500, 2000),
                    &mut got,
                    limit,
                )
                .await
                .expect("accepted");
                drop(ours);
                tokio::task::spawn_blocking(move || peer.join().unwrap())
                    .await
                    .unwrap();
                (got, report)
            });
            assert_outcome(&report, outcome, &what);
            let want = body();
            let want = &want[..want.len().min(limit as usize)];
            assert!(
                got == want,
                "{what}: {} bytes, not the {} expected",
                got.len(),
                want.len()
            );
            assert_eq!(report.delivered_bytes, got.len() as u64, "{what}");
        }
    }
    let (refused, failed) = on_runtime(Flavor::CurrentThread, async {
        let ctx = Contexts::new(Tls::V13);
        let (mut ours, peer) = ctx.pair_tokio(Role::Client).await;
        let send_only = Policy::builder().mode(Mode::SendOnly).build().unwrap();
        let refused =
            closenotify::tokio::shutdown_read(&mut ours, &send_only, &mut Vec::new(), 10).await;
        let sent_nothing = shutdown_flags(ours.ssl()) == 0;
        let peer = spawn_peer(peer, |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
            let _ = p.write_all(b"some answer");
            let _ = p.shutdown();
            wait_eof(p.get_mut());
        });
        let failed =
            closenotify::tokio::shutdown_read(&mut ours, &policy(500, 2000), &mut Refusing, 1000)
                .await;
        drop(ours);
        tokio::task::spawn_blocking(move || peer.join().unwrap())
            .await
            .unwrap();
        (
            (refused.err().map(|e| e.to_string()), sent_nothing),
            failed.err().map(|e| e.to_string()),
        )
    });
    assert!(
        refused
            .0
            .as_deref()
            .is_some_and(|e| e.contains("needs a mode that waits")),
        "{refused:?}"
    );
    assert!(refused.1, "the refused call sent something");
    assert!(
        failed.as_deref().is_some_and(|e| e.contains("disk full")),
        "{failed:?}"
    );
}
