//! The Closer: many connections on one thread, its own poll or the caller's, every
//! socket closed when its report is final.

mod util;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use closenotify::{shutdown_blocking, Closer, Outcome, Stage};
use mio::{Events, Interest, Poll, Token};
use util::*;

/// The tests of this file run one at a time: some count this process's open fds.
static FDS: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Answers,
    Silent,
    Truncates,
    Resets,
}

const KINDS: [Kind; 4] = [Kind::Answers, Kind::Silent, Kind::Truncates, Kind::Resets];

fn expected(kind: Kind) -> Outcome {
    match kind {
        Kind::Answers => Outcome::Clean,
        Kind::Silent => Outcome::TimedOut,
        Kind::Truncates => Outcome::Truncated,
        Kind::Resets => Outcome::Reset,
    }
}

fn behave(
    kind: Kind,
    release: std::sync::mpsc::Receiver<()>,
) -> impl FnOnce(openssl::ssl::SslStream<std::net::TcpStream>) + Send + 'static {
    move |mut p| match kind {
        Kind::Answers => answer(p),
        Kind::Silent => {
            let _ = release.recv();
        }
        Kind::Truncates => {
            let _ = read_until_close_notify(&mut p);
        }
        Kind::Resets => {
            let _ = read_until_close_notify(&mut p);
            reset_on_drop(p.get_ref());
        }
    }
}

#[test]
fn mixed_peers_on_the_closers_own_poll() {
    let _serial = FDS.lock().unwrap();
    for tls in BOTH {
        let mut closer: Closer<(usize, Kind)> = Closer::new(&policy(300, 300)).unwrap();
        let baseline = open_fds();
        let mut releases = Vec::new();
        let mut peers = Vec::new();
        let ctx = Contexts::new(tls);
        for i in 0..40 {
            let kind = KINDS[i % KINDS.len()];
            let role = if i % 2 == 0 {
                Role::Client
            } else {
                Role::Server
            };
            let (ours, peer) = ctx.pair_mio(role);
            let (release, held) = std::sync::mpsc::channel();
            releases.push(release);
            peers.push(spawn_peer(peer, behave(kind, held)));
            closer.add(ours, (i, kind)).unwrap();
        }
        let start = Instant::now();
        closer.finish().unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "{tls:?}: {:?}",
            start.elapsed()
        );
        assert_eq!(closer.pending(), 0);
        let reports: Vec<_> = closer.reports().collect();
        assert_eq!(reports.len(), 40, "{tls:?}");
        for ((i, kind), r) in &reports {
            assert_eq!(r.outcome, expected(*kind), "{tls:?} #{i} {kind:?}: {r:?}");
            if *kind == Kind::Silent {
                assert_eq!(r.stage, Stage::AwaitPeer);
                assert!(
                    r.elapsed >= ms(300) && r.elapsed < ms(700),
                    "{:?}",
                    r.elapsed
                );
                assert!(r.ssl_calls <= 4, "busy loop: {} calls", r.ssl_calls);
            }
        }
        drop(releases);
        for p in peers {
            p.join().unwrap();
        }
        // Every socket the closer took is closed; the peers' too.
        assert_eq!(open_fds(), baseline, "{tls:?}: fds leaked");
    }
}

#[test]
fn five_hundred_silent_peers_pending_at_once() {
    let _serial = FDS.lock().unwrap();
    let ctx = Contexts::new(Tls::V13);
    let mut closer: Closer<usize> = Closer::new(&policy(300, 300)).unwrap();
    let mut peers = Vec::new();
    for i in 0..500 {
        let (ours, peer) = ctx.pair_mio(Role::Server);
        peers.push(peer); // held open, never read: silent
        closer.add(ours, i).unwrap();
    }
    assert_eq!(closer.pending(), 500);
    let fds_with_peers = open_fds();
    closer.finish().unwrap();
    let reports: Vec<_> = closer.reports().collect();
    assert_eq!(reports.len(), 500);
    assert!(reports
        .iter()
        .all(|(_, r)| r.outcome == Outcome::TimedOut && r.stage == Stage::AwaitPeer));
    let max_calls = reports.iter().map(|(_, r)| r.ssl_calls).max().unwrap();
    assert!(
        max_calls <= 3,
        "{max_calls} OpenSSL calls for a silent peer"
    );
    assert_eq!(open_fds(), fds_with_peers - 500);
    drop(peers);
}

#[test]
fn driven_from_the_callers_poll_leaves_other_tokens_alone() {
    let _serial = FDS.lock().unwrap();
    let mut poll = Poll::new().unwrap();
    let mut closer: Closer<Kind> =
        Closer::with_registry(poll.registry(), 1000..2000, &policy(300, 200)).unwrap();
    // An unrelated socket of the caller's, readable at once.
    let (mut mine, mut other) = mio::net::UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut other, b"x").unwrap();
    poll.registry()
        .register(&mut mine, Token(1), Interest::READABLE)
        .unwrap();

    let ctx = Contexts::new(Tls::V12);
    let mut releases = Vec::new();
    let mut peers = Vec::new();
    for kind in [Kind::Answers, Kind::Silent] {
        let (ours, peer) = ctx.pair_mio(Role::Client);
        let (release, held) = std::sync::mpsc::channel();
        releases.push(release);
        peers.push(spawn_peer(peer, behave(kind, held)));
        closer.add(ours, kind).unwrap();
    }
    assert!(
        closer.poll(None).is_err(),
        "a shared closer has no poll of its own"
    );

    let mut events = Events::with_capacity(16);
    let mut mine_seen = 0;
    while closer.pending() > 0 {
        let timeout = closer
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        poll.poll(&mut events, timeout).unwrap();
        let now = Instant::now();
        for event in events.iter() {
            if !closer.handle_event(event, now) {
                assert_eq!(event.token(), Token(1));
                mine_seen += 1;
            }
        }
        closer.handle_timeouts(now);
    }
    assert_eq!(mine_seen, 1);
    let mut reports: Vec<_> = closer.reports().collect();
    reports.sort_by_key(|(k, _)| *k as u8);
    assert_eq!(reports[0].1.outcome, Outcome::Clean);
    assert_eq!(reports[1].1.outcome, Outcome::TimedOut);
    drop(releases);
    for p in peers {
        p.join().unwrap();
    }
}

#[test]
fn an_exhausted_token_range_hands_the_stream_back_intact() {
    let _serial = FDS.lock().unwrap();
    let poll = Poll::new().unwrap();
    let mut closer: Closer<u8> =
        Closer::with_registry(poll.registry(), 10..12, &policy(300, 300)).unwrap();
    let ctx = Contexts::new(Tls::V13);
    let mut peers = Vec::new();
    for tag in 0..2 {
        let (ours, peer) = ctx.pair_mio(Role::Client);
        peers.push(spawn_peer(peer, answer));
        closer.add(ours, tag).unwrap();
    }
    let (ours, peer) = ctx.pair_mio(Role::Client);
    peers.push(spawn_peer(peer, answer));
    let rejected = closer.add(ours, 2).unwrap_err();
    assert_eq!(rejected.tag, 2);
    assert_eq!(rejected.error.kind(), std::io::ErrorKind::OutOfMemory);
    // Untouched: it can still be shut down properly.
    let mut stream = rejected.stream;
    let r = shutdown_blocking(&mut stream, &policy(500, 500));
    assert_eq!(r.outcome, Outcome::Clean, "{r:?}");
    drop(stream);
    drop(closer);
    for p in peers {
        p.join().unwrap();
    }
}

#[test]
fn unsent_data_goes_out_before_close_notify() {
    let _serial = FDS.lock().unwrap();
    let ctx = Contexts::new(Tls::V13);
    let (mut ours, peer) = ctx.pair_mio(Role::Server);
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 241) as u8).collect();
    // Write until the (not yet reading) peer stalls us mid-record.
    let mut written = 0;
    loop {
        match ours.ssl_write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.code() == openssl::ssl::ErrorCode::WANT_WRITE => break,
            Err(e) => panic!("{e}"),
        }
    }
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let peer = spawn_peer(peer, move |mut p| {
        wait.recv().unwrap();
        let got = read_until_close_notify(&mut p).unwrap();
        p.shutdown().unwrap();
        wait_eof(p.get_mut());
        got
    });
    let mut closer: Closer = Closer::new(&policy(5000, 5000)).unwrap();
    let unsent = data[written..].to_vec();
    closer
        .add_with(ours, (), |shutdown| shutdown.with_unsent(unsent))
        .unwrap();
    go.send(()).unwrap();
    closer.finish().unwrap();
    let (_, r) = closer.reports().next().unwrap();
    assert_eq!(r.outcome, Outcome::Clean, "{r:?}");
    assert!(
        peer.join().unwrap() == data,
        "the peer did not get every byte in order"
    );
}

/// With time to spare (the only other shutdown waits seconds), a connection that
/// finished is closed by the call that reports it, while it is still warm.
#[test]
fn a_finished_connection_is_closed_by_its_call_when_the_closer_has_time() {
    let _serial = FDS.lock().unwrap();
    let ctx = Contexts::new(Tls::V13);
    let mut closer: Closer<&str> = Closer::new(&policy(3000, 3000)).unwrap();
    // A silent peer keeps a deadline seconds away.
    let (silent, held) = ctx.pair_mio(Role::Client);
    closer.add(silent, "silent").unwrap();
    let (ours, peer) = ctx.pair_mio(Role::Client);
    let fd = std::os::fd::AsRawFd::as_raw_fd(ours.get_ref());
    let inode = inode_of(fd).expect("an open socket");
    let answering = std::thread::spawn(move || answer(peer));
    closer.add(ours, "answers").unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut reports = Vec::new();
    while reports.is_empty() && Instant::now() < until {
        closer.poll(Some(ms(100))).unwrap();
        reports.extend(closer.reports());
    }
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].0, "answers");
    assert_eq!(reports[0].1.outcome, Outcome::Clean);
    assert_ne!(
        inode_of(fd),
        Some(inode),
        "still open when its report was out"
    );
    // The silent one is still pending, its deadline next.
    assert_eq!(closer.pending(), 1);
    assert!(closer.next_deadline().unwrap() > Instant::now() + ms(1000));
    answering.join().unwrap();
    drop(held);
}

/// When other deadlines are due (200 silent peers timing out together), the
/// reports come first: a connection reported is still open when the call that
/// reported it returns, and every one is closed once the burst is over.
#[test]
fn a_burst_of_timeouts_is_reported_before_its_connections_are_closed() {
    let _serial = FDS.lock().unwrap();
    let ctx = Contexts::new(Tls::V13);
    let mut closer: Closer<(i32, u64)> = Closer::new(&policy(3000, 100)).unwrap();
    let mut peers = Vec::new();
    for _ in 0..200 {
        let (ours, peer) = ctx.pair_mio(Role::Client);
        let fd = std::os::fd::AsRawFd::as_raw_fd(ours.get_ref());
        let inode = inode_of(fd).expect("an open socket");
        peers.push(peer); // held open, never read: silent
        closer.add(ours, (fd, inode)).unwrap();
    }
    let mut still_open = 0;
    let mut reported = Vec::new();
    while closer.pending() > 0 {
        closer.poll(Some(ms(1000))).unwrap();
        for ((fd, inode), r) in closer.reports() {
            assert_eq!(r.outcome, Outcome::TimedOut);
            if inode_of(fd) == Some(inode) {
                still_open += 1;
            }
            reported.push((fd, inode));
        }
    }
    assert_eq!(reported.len(), 200);
    assert!(
        still_open > 0,
        "every connection was closed before its report was out"
    );
    closer.finish().unwrap();
    for (fd, inode) in reported {
        assert_ne!(inode_of(fd), Some(inode), "fd {fd} still open after finish");
    }
    drop(peers);
}

/// The inode of the socket open on `fd`, or `None` if `fd` is closed (another
/// socket that took the number has another inode).
fn inode_of(fd: i32) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes a stat on success; `st` is large enough.
    (unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0)
        // SAFETY: written by fstat.
        .then(|| unsafe { st.assume_init() }.st_ino)
}
