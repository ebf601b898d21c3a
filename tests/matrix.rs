//! The behaviour matrix: every way a peer can end a connection ([`Behaviour`],
//! one row each) in TLS 1.2 and 1.3, with our side as client and as server,
//! through every adapter (one column each): `shutdown_blocking` on a blocking
//! std stream, `Shutdown::poll` in a mio loop, `RawConnection` on a raw `SSL*`,
//! the `Closer`, `closenotify::tokio` on both runtimes (with the `tokio`
//! feature), and the C API from C (`cn_test`, client only, blocking and the
//! step API). Real OpenSSL on both ends of real loopback sockets.
//!
//! What each behaviour must produce is data ([`expect`], one exhaustive match:
//! a new behaviour does not compile until it has its expectations); each
//! adapter is a small driver that returns what it [`Observed`]; one check
//! compares them. A new adapter is a column: a variant of [`Adapter`] and its
//! driver.
//!
//! Under valgrind (`CLOSENOTIFY_VALGRIND=1`) only the C step API's column runs.

mod util;

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use closenotify::{
    shutdown_blocking, Alert, AlertDirection, Closer, Initiator, Outcome, Policy, Report,
    ResetOnTimeout, Stage,
};
use openssl::ssl::Ssl;
use util::cbuild::{self, Fields};
use util::*;

// --- the behaviours, as data ---------------------------------------------------------

/// How the session must be left.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Session {
    Kept,
    Dropped,
}

/// What a behaviour must produce. `None`: not checked.
#[derive(Debug)]
struct Expect {
    outcome: Outcome,
    stage: Option<Stage>,
    initiator: Initiator,
    sent: bool,
    received: bool,
    half_closed: Option<bool>,
    alert: Option<(Alert, AlertDirection)>,
    detail: Option<&'static str>,
    os_error: Option<i32>,
    session: Session,
    discarded: Option<std::ops::Range<u64>>,
    /// `elapsed` in `[lo, hi)`.
    elapsed: (Duration, Duration),
    /// OpenSSL calls, exactly, where the count is the point.
    ssl_calls: Option<u32>,
    /// `SO_LINGER {1, 0}` armed, where the adapter can tell.
    reset_armed: Option<bool>,
    /// How the peer saw our side's transport end, where it watches.
    peer_saw: PeerSaw,
}

/// Short timeouts only where the timeout is the outcome; the other one is far
/// away, so that waiting on the wrong one cannot pass for scheduling delay.
fn policy_for(behaviour: Behaviour) -> Policy {
    match behaviour {
        Behaviour::Silent => policy(3000, 150),
        Behaviour::NotReading => policy(150, 3000),
        _ => policy(1000, 2000),
    }
}

/// The row of `behaviour`.
fn expect(behaviour: Behaviour, tls: Tls) -> Expect {
    let p = policy_for(behaviour);
    // A timeout, then at most a second of scheduling delay.
    let timed = |timeout: Duration| (timeout, timeout + ms(1000));
    let quick = (Duration::ZERO, ms(1000));
    let base = Expect {
        outcome: Outcome::Clean,
        stage: Some(Stage::AwaitPeer),
        initiator: Initiator::Local,
        sent: true,
        received: false,
        half_closed: Some(true),
        alert: None,
        detail: None,
        os_error: None,
        session: Session::Dropped,
        discarded: None,
        elapsed: quick,
        ssl_calls: None,
        reset_armed: None,
        peer_saw: PeerSaw::NotWatched,
    };
    match behaviour {
        Behaviour::Answers => Expect {
            received: true,
            session: Session::Kept,
            elapsed: (Duration::ZERO, ms(500)),
            peer_saw: PeerSaw::Fin,
            ..base
        },
        Behaviour::Initiates => Expect {
            stage: None,
            initiator: Initiator::Peer,
            received: true,
            half_closed: None,
            session: Session::Kept,
            ssl_calls: Some(1), // answering needs one SSL_shutdown
            peer_saw: PeerSaw::Fin,
            ..base
        },
        Behaviour::Silent => Expect {
            outcome: Outcome::TimedOut,
            elapsed: timed(p.peer_timeout()),
            reset_armed: Some(false),
            peer_saw: PeerSaw::Fin, // a silent peer has all our bytes: a FIN
            ..base
        },
        Behaviour::NotReading => Expect {
            outcome: Outcome::TimedOut,
            stage: Some(Stage::Flush),
            sent: false,
            half_closed: Some(false),
            elapsed: timed(p.flush_timeout()),
            ssl_calls: Some(1), // never retried without readiness
            reset_armed: Some(true),
            // The default policy resets: a FIN would sit behind bytes never read.
            peer_saw: PeerSaw::Reset,
            ..base
        },
        Behaviour::Truncates => Expect {
            outcome: Outcome::Truncated,
            elapsed: (Duration::ZERO, p.peer_timeout()),
            ..base
        },
        Behaviour::Resets => Expect {
            outcome: Outcome::Reset,
            os_error: Some(libc::ECONNRESET),
            // The RST may come before our half-close (which then fails).
            half_closed: None,
            ..base
        },
        Behaviour::FatalAlert => Expect {
            outcome: Outcome::PeerAlert,
            stage: None,
            half_closed: None,
            alert: Some((Alert::BadRecordMac, AlertDirection::Received)),
            ..base
        },
        Behaviour::DataAfterCloseNotify => Expect {
            received: true,
            session: Session::Kept,
            discarded: Some(Behaviour::DATA_AFTER as u64..Behaviour::DATA_AFTER as u64 + 1),
            peer_saw: PeerSaw::Fin,
            ..base
        },
        Behaviour::Garbage => {
            let (alert, detail) = text_garbage_rejection(tls);
            Expect {
                outcome: Outcome::ProtocolError,
                alert: Some((alert, AlertDirection::Sent)),
                detail: Some(detail),
                ..base
            }
        }
        Behaviour::GarbageRecord => Expect {
            outcome: Outcome::ProtocolError,
            alert: Some((Alert::BadRecordMac, AlertDirection::Sent)),
            detail: Some("decryption failed or bad record mac"),
            ..base
        },
    }
}

// --- what an adapter observed ------------------------------------------------------

/// A report as every adapter can give it (the C one prints it as text).
#[derive(Debug)]
struct Observed {
    outcome: String,
    stage: String,
    initiator: String,
    sent: bool,
    received: bool,
    half_closed: bool,
    alert: Option<(u8, Option<AlertDirection>)>,
    detail: Option<String>,
    os_error: Option<i32>,
    resumable: bool,
    discarded: u64,
    elapsed: Duration,
    ssl_calls: u32,
    tls_version: String,
    reset_armed: Option<bool>,
    peer_saw: PeerSaw,
}

impl Observed {
    fn from_report(r: &Report, reset_armed: Option<bool>) -> Observed {
        Observed {
            outcome: r.outcome.to_string(),
            stage: r.stage.to_string(),
            initiator: r.initiator.to_string(),
            sent: r.close_notify_sent,
            received: r.close_notify_received,
            half_closed: r.half_closed,
            alert: r.alert.map(|a| (a.alert.code(), Some(a.direction))),
            detail: r.detail.map(str::to_owned),
            os_error: r.os_error,
            resumable: r.session_resumable,
            discarded: r.discarded_bytes,
            elapsed: r.elapsed,
            ssl_calls: r.ssl_calls,
            tls_version: r.tls_version.map_or("none", |v| v.as_str()).to_owned(),
            reset_armed,
            peer_saw: PeerSaw::NotWatched,
        }
    }

    /// The report line cn_test prints.
    fn from_c(f: &Fields) -> Observed {
        let alert = f.num("alert");
        let detail = f.str("detail").replace('_', " ");
        Observed {
            outcome: f.str("outcome").to_owned(),
            stage: f.str("stage").to_owned(),
            initiator: ["local", "peer"][f.num("initiator") as usize].to_owned(),
            sent: f.flag("close_notify_sent"),
            received: f.flag("close_notify_received"),
            half_closed: f.flag("half_closed"),
            alert: (alert >= 0).then_some((alert as u8, None)),
            detail: (detail != "none").then_some(detail),
            os_error: Some(f.num("os_error") as i32).filter(|&e| e != 0),
            resumable: f.flag("session_resumable"),
            discarded: f.num("discarded_bytes") as u64,
            elapsed: ms(f.num("elapsed_ms") as u64),
            ssl_calls: f.num("ssl_calls") as u32,
            tls_version: match f.str("tls_version") {
                "0x0303" => "TLSv1.2",
                "0x0304" => "TLSv1.3",
                other => other,
            }
            .to_owned(),
            reset_armed: None,
            peer_saw: PeerSaw::NotWatched,
        }
    }
}

/// Checks `seen` against the row. Adapters differ only where their documentation
/// says so: `slack` is the OpenSSL calls an adapter may add (a read tried before
/// waiting, where readiness is not level-triggered).
#[track_caller]
fn check(e: &Expect, seen: &Observed, tls: Tls, role: Role, slack: u32, what: &str) {
    let ctx = format!("{what}: {seen:?}");
    assert_eq!(seen.outcome, e.outcome.as_str(), "{ctx}");
    if let Some(stage) = e.stage {
        assert_eq!(seen.stage, stage.as_str(), "{ctx}");
    }
    assert_eq!(seen.initiator, e.initiator.as_str(), "{ctx}");
    assert_eq!((seen.sent, seen.received), (e.sent, e.received), "{ctx}");
    if let Some(half_closed) = e.half_closed {
        assert_eq!(seen.half_closed, half_closed, "{ctx}");
    }
    match (e.alert, seen.alert) {
        (None, None) => {}
        (Some((alert, direction)), Some((code, seen_direction))) => {
            assert_eq!(code, alert.code(), "{ctx}");
            if let Some(d) = seen_direction {
                assert_eq!(d, direction, "{ctx}");
            }
        }
        _ => panic!("alert: expected {:?}; {ctx}", e.alert),
    }
    if let Some(detail) = e.detail {
        assert_eq!(seen.detail.as_deref(), Some(detail), "{ctx}");
    }
    assert_eq!(seen.os_error, e.os_error, "{ctx}");
    // A server that issued stateless tickets (OpenSSL's default) cannot revoke
    // them: its report says so even when the session is dropped.
    let resumable = e.session == Session::Kept || role == Role::Server;
    assert_eq!(seen.resumable, resumable, "{ctx}");
    if let Some(discarded) = &e.discarded {
        assert!(discarded.contains(&seen.discarded), "discarded: {ctx}");
    }
    let (lo, hi) = e.elapsed;
    assert!(seen.elapsed >= lo && seen.elapsed < hi, "elapsed: {ctx}");
    match e.ssl_calls {
        Some(n) => assert_eq!(seen.ssl_calls, n, "ssl_calls: {ctx}"),
        // Never a busy loop: a handful of calls.
        None => assert!(seen.ssl_calls <= 6 + slack, "ssl_calls: {ctx}"),
    }
    assert_eq!(seen.tls_version, tls.name(), "{ctx}");
    if let (Some(armed), Some(want)) = (seen.reset_armed, e.reset_armed) {
        assert_eq!(armed, want, "SO_LINGER: {ctx}");
    }
    if e.peer_saw != PeerSaw::NotWatched {
        assert_eq!(seen.peer_saw, e.peer_saw, "the peer saw: {ctx}");
    }
}

// --- the adapters --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Adapter {
    /// `shutdown_blocking` on a std `SslStream`, its socket in blocking mode.
    Blocking,
    /// `Shutdown::poll` in a mio loop, one edge-triggered registration.
    Mio,
    /// `RawConnection::shutdown_blocking` on a raw `SSL*` with a socket BIO.
    Raw,
    /// A `Closer` with its own poll, given a stream whose socket is blocking.
    Closer,
    /// `closenotify::tokio::shutdown`, on a current-thread (false) or
    /// multi-thread (true) runtime.
    #[cfg(feature = "tokio")]
    Tokio(bool),
    /// cn_test, a C client: `closenotify_shutdown_blocking`.
    CBlocking,
    /// cn_test: the step API told poll()'s revents.
    CStep,
    /// cn_test: handed to a C closer, whose fd is polled. The socket is
    /// blocking: the closer copes.
    CCloser,
}

fn adapters() -> Vec<Adapter> {
    // Under valgrind, every row once through the C library's event-loop path
    // (tests/c_api.rs runs the blocking path there).
    if cbuild::valgrind_mode() {
        return vec![Adapter::CStep, Adapter::CCloser];
    }
    let c = vec![Adapter::CBlocking, Adapter::CStep, Adapter::CCloser];
    let mut all = vec![
        Adapter::Blocking,
        Adapter::Mio,
        Adapter::Raw,
        Adapter::Closer,
    ];
    #[cfg(feature = "tokio")]
    all.extend([Adapter::Tokio(false), Adapter::Tokio(true)]);
    all.extend(c);
    all
}

impl Adapter {
    fn roles(self) -> &'static [Role] {
        match self {
            Adapter::CBlocking | Adapter::CStep | Adapter::CCloser => &[Role::Client],
            _ => &ROLES,
        }
    }

    /// The OpenSSL calls this adapter may add to the row's bound: reads tried
    /// where readiness is edge-triggered or unknown (the mio loop, tokio, the C
    /// step API before its first poll), and one more when data arrives in more
    /// records than a level-triggered wait sees.
    fn slack(self) -> u32 {
        match self {
            Adapter::Blocking
            | Adapter::Raw
            | Adapter::Closer
            | Adapter::CBlocking
            | Adapter::CCloser => 1,
            _ => 2,
        }
    }

    /// Runs `behaviour` through this adapter, our side in `role`.
    fn run(self, behaviour: Behaviour, ctx: &Contexts, role: Role, policy: &Policy) -> Observed {
        let (release, held) = mpsc::channel::<()>();
        let (observed, peer) = match self {
            Adapter::Blocking => {
                let Pair { mut ours, peer } = ctx.pair(role);
                let peer = behaviour.start(&mut ours, peer, held);
                let report = shutdown_blocking(&mut ours, policy);
                (
                    Observed::from_report(&report, Some(reset_armed(ours.get_ref()))),
                    peer,
                )
            }
            Adapter::Mio => {
                let (mut ours, peer) = ctx.pair_mio_blocking(role);
                let peer = behaviour.start(&mut ours, peer, held);
                socket2::SockRef::from(ours.get_ref())
                    .set_nonblocking(true)
                    .unwrap();
                let (report, _) = drive_with_mio(&mut ours, policy);
                (
                    Observed::from_report(&report, Some(reset_armed(ours.get_ref()))),
                    peer,
                )
            }
            Adapter::Raw => {
                let (mut raw, peer) = RawClient::pair(ctx, role, |_| {});
                let peer = behaviour.spawn_peer(peer, held);
                raw.play(behaviour);
                let report = raw.conn().shutdown_blocking(policy);
                (
                    Observed::from_report(&report, Some(reset_armed(&raw.tcp))),
                    peer,
                )
            }
            Adapter::Closer => {
                // The stream's socket is still blocking: the Closer copes.
                let (mut ours, peer) = ctx.pair_mio_blocking(role);
                let peer = behaviour.start(&mut ours, peer, held);
                let mut closer = Closer::new(policy).unwrap();
                closer.add(ours, ()).unwrap();
                closer.finish().unwrap();
                let ((), report) = closer.reports().next().expect("a report");
                (Observed::from_report(&report, None), peer)
            }
            #[cfg(feature = "tokio")]
            Adapter::Tokio(multi_thread) => {
                tokio_run(behaviour, ctx, role, policy, multi_thread, held)
            }
            Adapter::CBlocking | Adapter::CStep | Adapter::CCloser => {
                return c_run(self, behaviour, ctx, policy, release, held)
            }
        };
        let _ = release.send(());
        Observed {
            peer_saw: peer.join().expect("the peer panicked"),
            ..observed
        }
    }
}

/// `SO_LINGER {1, 0}` is set: closing sends an RST.
fn reset_armed(sock: impl AsFd) -> bool {
    socket2::SockRef::from(&sock).linger().unwrap() == Some(Duration::ZERO)
}

#[cfg(feature = "tokio")]
fn tokio_run(
    behaviour: Behaviour,
    ctx: &Contexts,
    role: Role,
    policy: &Policy,
    multi_thread: bool,
    held: mpsc::Receiver<()>,
) -> (Observed, JoinHandle<PeerSaw>) {
    let (ctx, policy) = (ctx.clone(), policy.clone());
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = builder.enable_all().build().unwrap();
    // Spawned: on a multi-thread runtime a worker runs it, which also proves
    // the future is `Send`.
    rt.block_on(async move {
        tokio::spawn(async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let peer = behaviour.spawn_peer(peer, held);
            play_our_part_tokio(behaviour, &mut ours).await;
            let report = closenotify::tokio::shutdown(&mut ours, &policy)
                .await
                .expect("the policy is accepted");
            let armed = reset_armed(ours.get_ref());
            (Observed::from_report(&report, Some(armed)), peer)
        })
        .await
        .expect("the case panicked")
    })
}

/// cn_test as the client, our Rust peer as the server.
fn c_run(
    adapter: Adapter,
    behaviour: Behaviour,
    ctx: &Contexts,
    policy: &Policy,
    release: mpsc::Sender<()>,
    held: mpsc::Receiver<()>,
) -> Observed {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = ctx.server.clone();
    let peer: JoinHandle<PeerSaw> = thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("cn_test connects");
        tcp.set_nodelay(true).unwrap();
        let ssl = Ssl::new(&server).unwrap();
        let peer = ssl.accept(tcp).expect("handshake with cn_test");
        behaviour
            .spawn_peer(peer, held)
            .join()
            .expect("the peer panicked")
    });
    let scenario = match behaviour.our_part() {
        OurPart::Nothing => "plain",
        OurPart::ReadUntilCloseNotify => "peer-initiated",
        OurPart::FillSendBuffer => "fill",
        OurPart::ProvokeFatalAlert => "alert",
    };
    let flush = policy.flush_timeout().as_millis().to_string();
    let peer_ms = policy.peer_timeout().as_millis().to_string();
    let drain = policy.drain_limit().to_string();
    let linger = policy.linger_timeout().as_millis().to_string();
    let reset = match policy.reset_on_timeout() {
        ResetOnTimeout::Never => "never",
        ResetOnTimeout::FlushOnly => "flush",
        _ => "always",
    };
    let limit = cbuild::upper_ms(100).to_string();
    let mut args = vec![
        match adapter {
            Adapter::CStep => "step-revents",
            Adapter::CCloser => "closer",
            _ => "blocking",
        },
        scenario,
        &port,
        ctx.tls.arg(),
        "--flush-timeout-ms",
        &flush,
        "--peer-timeout-ms",
        &peer_ms,
        "--drain-limit",
        &drain,
        "--linger-timeout-ms",
        &linger,
        "--reset",
        reset,
    ];
    if adapter != Adapter::CBlocking {
        args.extend(["--step-limit-ms", &limit]);
    }
    let ran = cbuild::run_c(cbuild::cn_test(), &args);
    let observed = Observed::from_c(&ran.c_report());
    let _ = release.send(());
    Observed {
        peer_saw: peer.join().expect("the peer's thread panicked"),
        ..observed
    }
}

// --- the rows --------------------------------------------------------------------------

/// `behaviour` through every adapter, in both versions and every role the
/// adapter plays.
fn row(behaviour: Behaviour) {
    row_with(behaviour, &policy_for(behaviour), |tls| {
        expect(behaviour, tls)
    });
}

/// As `row`, under `policy`, with the row's expectations from `expect`.
fn row_with(behaviour: Behaviour, policy: &Policy, expect: impl Fn(Tls) -> Expect) {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let e = expect(tls);
        for adapter in adapters() {
            for &role in adapter.roles() {
                let what = format!(
                    "{} in {tls:?} as {role:?} through {adapter:?}",
                    behaviour.describe()
                );
                let seen = adapter.run(behaviour, &ctx, role, policy);
                check(&e, &seen, tls, role, adapter.slack(), &what);
            }
        }
    }
}

#[test]
fn the_peer_answers_clean() {
    row(Behaviour::Answers);
}

#[test]
fn the_peer_initiates_clean_peer() {
    row(Behaviour::Initiates);
}

#[test]
fn a_silent_peer_times_out_in_await_peer() {
    row(Behaviour::Silent);
}

#[test]
fn a_peer_not_reading_times_out_in_flush_and_resets() {
    row(Behaviour::NotReading);
}

#[test]
fn a_truncating_peer_truncated() {
    row(Behaviour::Truncates);
}

#[test]
fn a_resetting_peer_reset_econnreset() {
    row(Behaviour::Resets);
}

#[test]
fn a_fatal_alert_peer_alert_bad_record_mac() {
    row(Behaviour::FatalAlert);
}

#[test]
fn data_after_close_notify_is_discarded_clean() {
    row(Behaviour::DataAfterCloseNotify);
}

#[test]
fn text_garbage_protocol_error() {
    row(Behaviour::Garbage);
}

#[test]
fn a_garbage_record_protocol_error_bad_record_mac() {
    row(Behaviour::GarbageRecord);
}

/// The same data, under a drain limit it passes: stopped within a record of it.
#[test]
fn data_past_the_drain_limit_drain_limit() {
    let limit = 4096u64;
    let p = policy_for(Behaviour::DataAfterCloseNotify)
        .to_builder()
        .drain_limit(limit)
        .build()
        .unwrap();
    row_with(Behaviour::DataAfterCloseNotify, &p, |tls| Expect {
        outcome: Outcome::DrainLimit,
        received: false,
        session: Session::Dropped,
        discarded: Some(limit + 1..limit + 16_385),
        // What is left unread may make our close an RST: not checked.
        peer_saw: PeerSaw::NotWatched,
        ..expect(Behaviour::DataAfterCloseNotify, tls)
    });
}

/// A peer that does not read, under a policy that never resets: the timeout
/// leaves the queued bytes, then a FIN.
#[test]
fn a_peer_not_reading_with_reset_never_gets_a_fin() {
    let p = policy_for(Behaviour::NotReading)
        .to_builder()
        .reset_on_timeout(ResetOnTimeout::Never)
        .build()
        .unwrap();
    row_with(Behaviour::NotReading, &p, |tls| Expect {
        reset_armed: Some(false),
        peer_saw: PeerSaw::Fin,
        ..expect(Behaviour::NotReading, tls)
    });
}

/// An answering peer with the linger stage on: the send queue is empty at once.
#[test]
fn the_linger_stage_ends_clean_when_the_send_queue_is_empty() {
    let p = policy_for(Behaviour::Answers)
        .to_builder()
        .linger_timeout(ms(500))
        .build()
        .unwrap();
    row_with(Behaviour::Answers, &p, |tls| Expect {
        stage: Some(Stage::Linger),
        ..expect(Behaviour::Answers, tls)
    });
}

#[test]
fn every_behaviour_has_a_test() {
    // A new behaviour fails to compile here until it has its row test.
    for b in Behaviour::ALL {
        let _test: fn() = match b {
            Behaviour::Answers => the_peer_answers_clean,
            Behaviour::Initiates => the_peer_initiates_clean_peer,
            Behaviour::Silent => a_silent_peer_times_out_in_await_peer,
            Behaviour::NotReading => a_peer_not_reading_times_out_in_flush_and_resets,
            Behaviour::Truncates => a_truncating_peer_truncated,
            Behaviour::Resets => a_resetting_peer_reset_econnreset,
            Behaviour::FatalAlert => a_fatal_alert_peer_alert_bad_record_mac,
            Behaviour::DataAfterCloseNotify => data_after_close_notify_is_discarded_clean,
            Behaviour::Garbage => text_garbage_protocol_error,
            Behaviour::GarbageRecord => a_garbage_record_protocol_error_bad_record_mac,
        };
    }
}
