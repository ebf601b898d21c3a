//! Property tests of the machine: a scripted connection answering any sequence of
//! WANT_READ / WANT_WRITE / data of any size / EOF / errno / alerts /
//! close_notify, under any pattern of wake-ups and any valid policy, on a fake
//! clock.
//!
//! `cargo test --lib proptests` runs 256 cases per property (a few seconds);
//! `PROPTEST_CASES=100000 cargo test --release --lib proptests` runs them long.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::script::{Harness, Script};
use super::*;
use crate::policy::{Mode, Policy, ResetOnTimeout};
use crate::report::{Outcome, Stage};

/// An answer of OpenSSL to one call.
#[derive(Clone, Copy, Debug)]
enum Answer {
    WantRead,
    WantWrite,
    /// `SSL_read`/`SSL_write` moved this many bytes (`SSL_shutdown`: sent).
    Done(usize),
    /// `SSL_shutdown`: both close_notify alerts are through.
    Received,
    Fails(TlsError),
}

fn failure() -> impl Strategy<Value = TlsError> {
    prop_oneof![
        Just(TlsError::CloseNotify),
        Just(TlsError::Eof),
        prop_oneof![Just(libc::ECONNRESET), Just(libc::EPIPE), 1..200i32].prop_map(TlsError::Os),
        any::<u8>().prop_map(TlsError::PeerAlert),
        proptest::option::of(any::<u8>()).prop_map(|alert| TlsError::Protocol {
            alert,
            detail: "scripted"
        }),
        Just(TlsError::Unusable { detail: "scripted" }),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::WantRead),
        2 => Just(Answer::WantWrite),
        4 => prop_oneof![1..64usize, 1..40_000usize].prop_map(Answer::Done),
        1 => Just(Answer::Received),
        2 => failure().prop_map(Answer::Fails),
    ]
}

fn read_result(a: Answer) -> Result<usize, TlsError> {
    match a {
        Answer::WantRead => Err(TlsError::WantRead),
        Answer::WantWrite => Err(TlsError::WantWrite),
        Answer::Done(n) => Ok(n),
        Answer::Received => Err(TlsError::CloseNotify),
        Answer::Fails(e) => Err(e),
    }
}

fn shutdown_result(a: Answer) -> Result<ShutdownAnswer, TlsError> {
    match a {
        Answer::WantRead => Err(TlsError::WantRead),
        Answer::WantWrite => Err(TlsError::WantWrite),
        Answer::Done(_) => Ok(ShutdownAnswer::Sent),
        Answer::Received => Ok(ShutdownAnswer::Received),
        Answer::Fails(e) => Err(e),
    }
}

fn millis(zero_ok: bool) -> impl Strategy<Value = Duration> {
    let low = if zero_ok { 0 } else { 1 };
    (low..3000u64).prop_map(Duration::from_millis)
}

/// Any valid policy.
fn policy() -> impl Strategy<Value = Policy> {
    let mode = prop_oneof![
        3 => Just(Mode::Bidirectional),
        1 => Just(Mode::SendOnly),
        1 => Just(Mode::Quiet),
        1 => Just(Mode::StopTls),
    ];
    let reset = prop_oneof![
        Just(ResetOnTimeout::Never),
        Just(ResetOnTimeout::FlushOnly),
        Just(ResetOnTimeout::Always),
    ];
    (
        mode,
        millis(false),
        millis(false),
        prop_oneof![Just(Duration::ZERO), millis(false)],
        prop_oneof![Just(0u64), 0..200_000u64],
        any::<bool>(),
        reset,
        any::<bool>(),
    )
        .prop_map(|(mode, flush, peer, linger, drain, half, reset, keep)| {
            // STOPTLS has no close to linger before.
            let linger = if mode == Mode::StopTls {
                Duration::ZERO
            } else {
                linger
            };
            Policy::builder()
                .mode(mode)
                .flush_timeout(flush)
                .peer_timeout(peer)
                .linger_timeout(linger)
                .drain_limit(drain)
                .half_close(half)
                .reset_on_timeout(reset)
                .keep_session_on_truncation(keep)
                .build()
                .expect("generated policies are valid")
        })
}

fn status() -> impl Strategy<Value = Status> {
    (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(usable, sent, received)| Status {
            usable,
            sent,
            received,
            version: usable.then_some(crate::report::TlsVersion::Tls1_3),
        })
}

/// One wake-up: what the socket reports, and when (a fraction of the time left
/// until the deadline, or the deadline itself).
#[derive(Clone, Copy, Debug)]
struct WakeUp {
    ready: Ready,
    /// Thousandths of the time left; 1000 is the deadline.
    at: u16,
}

fn wake_up() -> impl Strategy<Value = WakeUp> {
    let ready = prop_oneof![
        Just(Ready::NONE),
        Just(Ready::READABLE),
        Just(Ready::WRITABLE),
        Just(Ready::ALL),
    ];
    (ready, prop_oneof![0..=1000u16, Just(1000u16)]).prop_map(|(ready, at)| WakeUp { ready, at })
}

#[derive(Debug)]
struct Case {
    policy: Policy,
    status: Status,
    shutdowns: Vec<Answer>,
    reads: Vec<Answer>,
    writes: Vec<Answer>,
    pending: bool,
    send_queue: Vec<usize>,
    unsent: usize,
    prior: Option<TlsError>,
    wake_ups: Vec<WakeUp>,
    /// `poll_read` with a buffer of this size instead of `poll`.
    read_into: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (policy(), status()),
        (
            prop::collection::vec(answer(), 0..4),
            prop::collection::vec(answer(), 0..40),
            prop::collection::vec(answer(), 0..8),
        ),
        (
            any::<bool>(),
            prop::collection::vec(0..100_000usize, 0..6),
            prop_oneof![3 => Just(0usize), 1 => 1..100_000usize],
            proptest::option::weighted(0.1, failure()),
        ),
        prop::collection::vec(wake_up(), 0..60),
        proptest::option::weighted(0.3, 0..100usize),
    )
        .prop_map(
            |(
                (policy, status),
                (shutdowns, reads, writes),
                (pending, send_queue, unsent, prior),
                wake_ups,
                read_into,
            )| Case {
                policy,
                status,
                shutdowns,
                reads,
                writes,
                pending,
                send_queue,
                unsent,
                prior,
                wake_ups,
                read_into,
            },
        )
}

impl Case {
    /// The scripted connection. When the script runs dry, the peer goes silent:
    /// reads and writes wait forever, and only the deadlines end the shutdown.
    fn connection(&self) -> Script {
        let mut s = Script::usable();
        s.status = Some(self.status);
        s.shutdowns = self.shutdowns.iter().map(|&a| shutdown_result(a)).collect();
        s.reads = self.reads.iter().map(|&a| read_result(a)).collect();
        s.writes = self.writes.iter().map(|&a| read_result(a)).collect();
        s.pending.push_back(self.pending);
        s.send_queue = self.send_queue.iter().copied().collect();
        s.fallback_shutdown = Some(Err(TlsError::WantWrite));
        s.fallback_read = Some(Err(TlsError::WantRead));
        s.fallback_write = Some(Err(TlsError::WantWrite));
        s
    }

    /// The longest a shutdown may take under the policy.
    fn bound(&self) -> Duration {
        self.policy.flush_timeout() + self.policy.peer_timeout() + self.policy.linger_timeout()
    }
}

/// The stages a shutdown may end in with each outcome.
fn stage_fits(outcome: Outcome, stage: Stage) -> bool {
    use Stage::*;
    match outcome {
        Outcome::Clean => matches!(stage, Flush | HalfClose | AwaitPeer | Linger),
        Outcome::SentOnly => matches!(stage, Flush | HalfClose | Linger),
        Outcome::Quiet => stage == Flush,
        Outcome::TimedOut => matches!(stage, Flush | AwaitPeer | Linger),
        Outcome::DrainLimit => stage == AwaitPeer,
        Outcome::Truncated | Outcome::Reset | Outcome::PeerAlert | Outcome::ProtocolError => {
            matches!(stage, Flush | AwaitPeer)
        }
    }
}

/// More wake-ups than any shutdown needs: the linger stage re-checks the send
/// queue with a backoff of at most 50 ms, within at most an hour... but the
/// generated linger timeouts are below 3 s.
const MAX_WAKE_UPS: usize = 10_000;

fn run(case: &Case) -> Result<(), TestCaseError> {
    let wall = Instant::now();
    let mut sd = Harness::new(case.connection(), &case.policy).with_unsent(vec![7; case.unsent]);
    if let Some(err) = case.prior {
        sd = sd.after_error(err);
    }
    let t0 = Instant::now();
    let mut now = t0;
    let mut ready = Ready::NONE;
    let mut waiting: Option<Wait> = None;
    let mut buf = vec![0u8; case.read_into.unwrap_or(0)];
    let mut delivered = 0u64;
    for i in 0..MAX_WAKE_UPS {
        let (calls, retries) = (sd.get_ref().calls, sd.get_ref().retries);
        let progress = match case.read_into {
            Some(_) => {
                let (n, p) = sd.poll_read(now, ready, &mut buf);
                delivered += n as u64;
                p
            }
            None => sd.poll(now, ready),
        };
        let calls = sd.get_ref().calls - calls;
        let retries = sd.get_ref().retries - retries;
        // Never a busy loop: without progress, a wake-up costs at most three
        // calls that answer "not yet" (SSL_shutdown, a read, one retry on
        // buffered bytes); each call that makes progress buys at most two more.
        let progress_calls = calls - retries;
        prop_assert!(
            retries <= 3 + 2 * progress_calls,
            "wake-up {i}: {calls} calls, {retries} of them retries"
        );
        // A wake-up that does not match the wait, before its deadline, is free.
        if let Some(w) = waiting {
            let matches = match w.interest {
                Interest::Read => ready.is_readable(),
                Interest::Write => ready.is_writable(),
                Interest::Timer => true,
            };
            if !matches && now < w.deadline && case.read_into.is_none() {
                prop_assert_eq!(calls, 0, "spurious wake-up {} made calls", i);
            }
        }
        match progress {
            Progress::Done(r) => return check_report(case, &sd, &r, delivered, wall),
            Progress::Wait(w) => {
                prop_assert!(w.deadline >= now || w.interest == Interest::Timer);
                let wake = case.wake_ups.get(i).copied().unwrap_or(WakeUp {
                    ready: Ready::NONE,
                    at: 1000,
                });
                let left = w.deadline.saturating_duration_since(now);
                now += left * u32::from(wake.at) / 1000;
                // A wake-up before the deadline that reports what is awaited
                // again would loop forever on a silent script: make later
                // wake-ups reach the deadline.
                if i >= case.wake_ups.len() {
                    now = now.max(w.deadline);
                }
                ready = wake.ready;
                waiting = Some(w);
            }
        }
    }
    Err(TestCaseError::fail(format!(
        "no report after {MAX_WAKE_UPS} wake-ups"
    )))
}

fn check_report(
    case: &Case,
    sd: &Harness<Script>,
    r: &Report,
    delivered: u64,
    wall: Instant,
) -> Result<(), TestCaseError> {
    let conn = sd.get_ref();
    let p = &case.policy;
    // No later than the policy's bound (plus the real time the test took, which
    // `elapsed` may report when it exceeds the fake clock's).
    prop_assert!(
        r.elapsed <= case.bound() + wall.elapsed(),
        "elapsed {:?} past the bound {:?}",
        r.elapsed,
        case.bound()
    );
    prop_assert_eq!(r.ssl_calls, conn.calls, "ssl_calls");
    prop_assert!(
        stage_fits(r.outcome, r.stage),
        "{} at {}",
        r.outcome,
        r.stage
    );
    // Resumable only after an orderly close (or a truncation the policy keeps).
    let keeps = r.outcome.is_orderly()
        || (r.outcome == Outcome::Truncated && p.keep_session_on_truncation());
    prop_assert_eq!(r.session_resumable, keeps, "resumable after {}", r.outcome);
    // Both close_notify alerts went through only in a clean close (which a linger
    // timeout may still end as timed_out). The peer's alone may have come with a
    // shutdown that could not send ours (unusable, or the send failed).
    if r.close_notify_received && r.close_notify_sent {
        prop_assert!(
            r.outcome == Outcome::Clean
                || (r.outcome == Outcome::TimedOut && r.stage == Stage::Linger),
            "both close_notify alerts, yet {} at {}",
            r.outcome,
            r.stage
        );
    }
    if r.outcome == Outcome::Clean {
        prop_assert!(r.close_notify_sent && r.close_notify_received);
    }
    if r.outcome == Outcome::SentOnly {
        prop_assert!(r.close_notify_sent && !r.close_notify_received);
    }
    if r.outcome == Outcome::Quiet {
        prop_assert!(!r.close_notify_sent && conn.quiet);
    }
    // Never SHUT_WR before close_notify is out.
    if conn.half_closed {
        prop_assert!(r.close_notify_sent && r.half_closed && p.half_close());
    }
    // Only what was read can have been discarded; delivered bytes are not.
    prop_assert!(r.discarded_bytes + delivered <= conn.read_bytes);
    if r.outcome == Outcome::DrainLimit {
        prop_assert!(r.discarded_bytes > p.drain_limit());
    } else {
        prop_assert!(r.discarded_bytes <= p.drain_limit());
    }
    // A reset is armed only on the timeouts the policy names.
    if conn.reset_armed {
        let allowed = match p.reset_on_timeout() {
            ResetOnTimeout::Never => false,
            ResetOnTimeout::FlushOnly => r.stage == Stage::Flush,
            ResetOnTimeout::Always => true,
        };
        prop_assert!(r.outcome == Outcome::TimedOut && allowed);
    }
    if r.outcome == Outcome::TimedOut && p.reset_on_timeout() == ResetOnTimeout::Always {
        prop_assert!(conn.reset_armed);
    }
    // STOPTLS: never half-closed; the transport is handed back only after a clean
    // close with nothing buffered past the peer's close_notify.
    prop_assert_eq!(
        conn.kept_transport,
        p.mode() == Mode::StopTls && conn.began > 0
    );
    if p.mode() == Mode::StopTls {
        prop_assert!(!conn.half_closed);
    }
    prop_assert_eq!(
        r.transport_reusable,
        p.mode() == Mode::StopTls && r.outcome == Outcome::Clean && !case.pending
    );
    // Never a close_notify claimed sent that OpenSSL did not take.
    if r.close_notify_sent && !case.status.sent {
        prop_assert!(
            conn.shutdown_ok,
            "close_notify_sent without a successful SSL_shutdown"
        );
    }
    // What begin changed, end undid; the sink was set at most once.
    prop_assert_eq!(conn.ended, conn.began);
    prop_assert!(conn.sealed <= 1);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Failures are reported with the case; nothing is written to disk.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_script_ends_in_a_consistent_report_within_the_policy(case in case()) {
        run(&case)?;
    }

    #[test]
    fn a_second_shutdown_returns_the_same_report_without_a_call(case in case()) {
        let mut conn = case.connection();
        let first = {
            let mut sd = Harness::new(&mut conn, &case.policy);
            let mut now = Instant::now();
            loop {
                match sd.poll(now, Ready::ALL) {
                    Progress::Done(r) => break r,
                    Progress::Wait(w) => now = now.max(w.deadline),
                }
            }
        };
        let calls = conn.calls;
        let mut again = Harness::new(&mut conn, &case.policy);
        match again.poll(Instant::now(), Ready::ALL) {
            Progress::Done(r) => prop_assert_eq!(r, first),
            Progress::Wait(w) => prop_assert!(false, "waits again: {:?}", w),
        }
        drop(again);
        prop_assert_eq!(conn.calls, calls);
    }
}
