//! A peer that streams its answer for longer than `peer_timeout`: every entry
//! point that reads the answer ends at the deadline with `timed_out` in stage
//! `await_peer`, however fast the data comes and however fast or slow the caller
//! consumes it, with the bytes delivered so far in the report.

mod util;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use closenotify::{
    shutdown_blocking, shutdown_blocking_read, Closer, Outcome, Policy, Progress, Ready, Report,
    Shutdown, Stage,
};
use util::*;

/// The policy of every case: the peer streams for ten times the peer timeout.
const PEER_TIMEOUT: Duration = Duration::from_millis(300);

fn streaming_policy() -> Policy {
    Policy::builder()
        .flush_timeout(ms(500))
        .peer_timeout(PEER_TIMEOUT)
        .drain_limit(1 << 40) // the limit is not what ends it
        .build()
        .unwrap()
}

/// A `Write` that takes `per_chunk` for every chunk, as a consumer that parses,
/// stores or forwards what it reads.
struct Consumer {
    per_chunk: Duration,
    got: u64,
}

impl Write for Consumer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.per_chunk.is_zero() {
            thread::sleep(self.per_chunk);
        }
        self.got += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const CONSUMERS: [Duration; 2] = [Duration::ZERO, Duration::from_millis(3)];

#[track_caller]
fn assert_cut_at_the_deadline(r: &Report, started: Instant, what: &str) {
    assert_eq!(r.outcome, Outcome::TimedOut, "{what}: {r:?}");
    assert_eq!(r.stage, Stage::AwaitPeer, "{what}: {r:?}");
    assert!(
        r.close_notify_sent && !r.close_notify_received,
        "{what}: {r:?}"
    );
    // At the deadline, plus at most one read and one chunk of the consumer's work;
    // generous for a loaded machine, far below the peer's 3 s.
    assert!(r.elapsed >= PEER_TIMEOUT, "{what}: {:?}", r.elapsed);
    assert!(
        r.elapsed < PEER_TIMEOUT * 3,
        "{what}: elapsed {:?}",
        r.elapsed
    );
    assert!(
        started.elapsed() < PEER_TIMEOUT * 3,
        "{what}: returned after {:?}",
        started.elapsed()
    );
}

#[test]
fn shutdown_blocking_read_ends_at_the_deadline() {
    for tls in BOTH {
        for per_chunk in CONSUMERS {
            let ctx = Contexts::new(tls);
            let Pair { mut ours, peer } = ctx.pair(Role::Client);
            let peer = streaming_peer(peer);
            let mut out = Consumer { per_chunk, got: 0 };
            let started = Instant::now();
            let r =
                shutdown_blocking_read(&mut ours, &streaming_policy(), &mut out, u64::MAX).unwrap();
            let what = format!("{tls:?}, {per_chunk:?} per chunk");
            assert_cut_at_the_deadline(&r, started, &what);
            assert!(out.got > 0, "{what}");
            assert_eq!(r.delivered_bytes, out.got, "{what}");
            assert_eq!(r.discarded_bytes, 0, "{what}");
            drop(ours);
            peer.join().unwrap();
        }
    }
}

#[test]
fn raw_connection_blocking_read_ends_at_the_deadline() {
    for tls in BOTH {
        for per_chunk in CONSUMERS {
            let ctx = Contexts::new(tls);
            let (raw, peer) = RawClient::connect(&ctx, |_| {});
            let peer = streaming_peer(peer);
            let mut out = Consumer { per_chunk, got: 0 };
            let started = Instant::now();
            let r = raw
                .conn()
                .shutdown_blocking_read(&streaming_policy(), &mut out, u64::MAX)
                .unwrap();
            let what = format!("raw {tls:?}, {per_chunk:?} per chunk");
            assert_cut_at_the_deadline(&r, started, &what);
            assert_eq!(r.delivered_bytes, out.got, "{what}");
            drop(raw);
            peer.join().unwrap();
        }
    }
}

/// `Shutdown::poll_read` in a caller's own loop, with the real clock.
#[test]
fn poll_read_ends_at_the_deadline() {
    for tls in BOTH {
        for per_chunk in CONSUMERS {
            let ctx = Contexts::new(tls);
            let (mut ours, peer) = ctx.pair_mio(Role::Server);
            let peer = streaming_peer(peer);
            let fd = ours.get_ref().as_raw_fd();
            let mut sd = Shutdown::new(&mut ours, &streaming_policy());
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0u64;
            let mut ready = Ready::NONE;
            let started = Instant::now();
            let r = loop {
                let (n, progress) = sd.poll_read(Instant::now(), ready, &mut buf);
                if n > 0 && !per_chunk.is_zero() {
                    thread::sleep(per_chunk);
                }
                got += n as u64;
                match progress {
                    Progress::Done(r) => break r,
                    Progress::Wait(_) if n > 0 => ready = Ready::NONE,
                    Progress::Wait(w) => {
                        ready = if wait_for(fd, libc::POLLIN, w.timeout(Instant::now())) {
                            Ready::READABLE
                        } else {
                            Ready::NONE
                        };
                    }
                }
            };
            let what = format!("poll_read {tls:?}, {per_chunk:?} per chunk");
            assert_cut_at_the_deadline(&r, started, &what);
            assert_eq!(r.delivered_bytes, got, "{what}");
            drop(sd);
            drop(ours);
            peer.join().unwrap();
        }
    }
}

/// The discarding reads: a drain limit too large to end it, the deadline does.
#[test]
fn discarding_entry_points_end_at_the_deadline() {
    for tls in BOTH {
        let what = format!("shutdown_blocking {tls:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(Role::Client);
        let peer = streaming_peer(peer);
        let started = Instant::now();
        let r = shutdown_blocking(&mut ours, &streaming_policy());
        assert_cut_at_the_deadline(&r, started, &what);
        assert!(r.discarded_bytes > 0, "{what}");
        assert_eq!(r.delivered_bytes, 0, "{what}");
        drop(ours);
        peer.join().unwrap();

        let what = format!("Closer {tls:?}");
        let mut closer: Closer<u32> = Closer::new(&streaming_policy()).unwrap();
        let (ours, peer) = ctx.pair_mio(Role::Client);
        let peer = streaming_peer(peer);
        let started = Instant::now();
        closer.add(ours, 1).unwrap();
        closer.finish().unwrap();
        let reports: Vec<_> = closer.reports().collect();
        assert_eq!(reports.len(), 1, "{what}");
        assert_cut_at_the_deadline(&reports[0].1, started, &what);
        peer.join().unwrap();
    }
}

/// A Closer with a streaming peer and a silent one: the streaming one neither
/// holds the thread nor delays the silent one's deadline.
#[test]
fn a_streaming_peer_does_not_hold_the_closer() {
    let ctx = Contexts::new(Tls::V13);
    let mut closer: Closer<&str> = Closer::new(&streaming_policy()).unwrap();
    let (stream_ours, stream_peer) = ctx.pair_mio(Role::Client);
    let stream_peer = streaming_peer(stream_peer);
    let (silent_ours, silent_peer) = ctx.pair_mio(Role::Client);
    let released = Arc::new(AtomicBool::new(false));
    let r2 = released.clone();
    let silent_peer = spawn_peer(silent_peer, move |_p| {
        while !r2.load(Ordering::Acquire) {
            thread::sleep(ms(10));
        }
    });
    let started = Instant::now();
    closer.add(stream_ours, "streaming").unwrap();
    closer.add(silent_ours, "silent").unwrap();
    closer.finish().unwrap();
    for (tag, r) in closer.reports() {
        assert_cut_at_the_deadline(&r, started, tag);
    }
    released.store(true, Ordering::Release);
    stream_peer.join().unwrap();
    silent_peer.join().unwrap();
}
