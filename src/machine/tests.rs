//! The machine against a scripted connection and a fake clock: exact deadlines,
//! no sleeping, no sockets.

use super::script::{Harness, Script};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy() -> Policy {
    Policy::builder()
        .flush_timeout(ms(100))
        .peer_timeout(ms(300))
        .build()
        .unwrap()
}

fn wait(p: Progress) -> Wait {
    match p {
        Progress::Wait(w) => w,
        Progress::Done(r) => panic!("expected a wait, got {r}"),
    }
}

fn done(p: Progress) -> Report {
    match p {
        Progress::Done(r) => r,
        Progress::Wait(w) => panic!("expected a report, got {w:?}"),
    }
}

#[test]
fn clean_exchange_reports_clean_local_and_counts_calls() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::WantRead))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy());
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(w.interest, Interest::Read);
    assert_eq!(w.deadline, t0 + ms(300));
    let r = done(sd.poll(t0 + ms(7), Ready::READABLE));
    assert_eq!(r.outcome, Outcome::Clean);
    assert_eq!(r.initiator, Initiator::Local);
    assert_eq!(r.stage, Stage::AwaitPeer);
    assert!(r.close_notify_sent && r.close_notify_received && r.half_closed);
    assert_eq!(r.elapsed, ms(7));
    assert_eq!(r.ssl_calls, 3);
    assert!(r.session_resumable);
    assert_eq!(sd.get_ref().began, 1);
    assert_eq!(sd.get_ref().ended, 1);
    // A second call returns the same report and calls nothing.
    assert_eq!(done(sd.poll(t0 + ms(500), Ready::ALL)), r);
}

#[test]
fn flush_deadline_is_exact_and_spurious_wakeups_are_noops() {
    let t0 = Instant::now();
    let conn = Script::usable().shutdown(Err(TlsError::WantWrite));
    let mut sd = Harness::new(conn, &policy());
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(
        w,
        Wait {
            interest: Interest::Write,
            deadline: t0 + ms(100)
        }
    );
    // Readable is not what we wait for; neither is a timer before the deadline.
    assert_eq!(wait(sd.poll(t0 + ms(10), Ready::READABLE)), w);
    assert_eq!(wait(sd.poll(t0 + ms(99), Ready::NONE)), w);
    let just_before = t0 + ms(100) - Duration::from_nanos(1);
    assert_eq!(wait(sd.poll(just_before, Ready::NONE)), w);
    let r = done(sd.poll(t0 + ms(100), Ready::NONE));
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(r.stage, Stage::Flush);
    assert_eq!(r.elapsed, ms(100));
    assert_eq!(r.ssl_calls, 1, "spurious wake-ups made OpenSSL calls");
    assert!(!r.close_notify_sent && !r.half_closed);
    // Default policy: a flush timeout arms the reset and drops the session.
    assert!(sd.get_ref().reset_armed);
    assert!(!r.session_resumable);
}

#[test]
fn await_peer_deadline_is_exact_and_not_reset_by_default() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::WantRead))
        .read(Err(TlsError::WantRead));
    let mut sd = Harness::new(conn, &policy());
    let start = ms(20);
    let w = wait(sd.poll(t0 + start, Ready::NONE));
    assert_eq!(w.deadline, t0 + start + ms(300));
    // A readable event with no full record: one call, same deadline.
    assert_eq!(wait(sd.poll(t0 + ms(100), Ready::READABLE)), w);
    assert_eq!(wait(sd.poll(t0 + ms(200), Ready::WRITABLE)), w);
    let r = done(sd.poll(t0 + start + ms(300), Ready::NONE));
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(r.stage, Stage::AwaitPeer);
    assert_eq!(r.elapsed, ms(300));
    assert_eq!(r.ssl_calls, 3);
    assert!(r.close_notify_sent && !r.close_notify_received);
    assert!(!sd.get_ref().reset_armed);
}

#[test]
fn reset_on_timeout_always_and_never() {
    let t0 = Instant::now();
    for (reset, expected) in [
        (ResetOnTimeout::Always, true),
        (ResetOnTimeout::Never, false),
    ] {
        let p = policy()
            .to_builder()
            .reset_on_timeout(reset)
            .build()
            .unwrap();
        let conn = Script::usable().shutdown(Err(TlsError::WantWrite));
        let mut sd = Harness::new(conn, &p);
        let _ = sd.poll(t0, Ready::NONE);
        let r = done(sd.poll(t0 + ms(100), Ready::NONE));
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert_eq!(sd.get_ref().reset_armed, expected, "{reset:?}");

        let conn = Script::usable()
            .shutdown(Ok(ShutdownAnswer::Sent))
            .read(Err(TlsError::WantRead));
        let mut sd = Harness::new(conn, &p);
        let _ = sd.poll(t0, Ready::NONE);
        let r = done(sd.poll(t0 + ms(300), Ready::NONE));
        assert_eq!(r.stage, Stage::AwaitPeer);
        assert_eq!(sd.get_ref().reset_armed, expected, "{reset:?}");
    }
}

#[test]
fn readiness_after_the_deadline_is_still_tried_first() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::WantRead))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy());
    let _ = sd.poll(t0, Ready::NONE);
    // The loop was late, but the close_notify is there: clean, not timed out.
    let r = done(sd.poll(t0 + ms(400), Ready::READABLE));
    assert_eq!(r.outcome, Outcome::Clean);
}

#[test]
fn level_triggered_skips_the_speculative_read() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy());
    sd.readiness_is_level();
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(w.interest, Interest::Read);
    let r = done(sd.poll(t0 + ms(1), Ready::READABLE));
    assert_eq!(r.outcome, Outcome::Clean);
    assert_eq!(r.ssl_calls, 2);
}

#[test]
fn buffered_bytes_are_read_before_waiting() {
    let t0 = Instant::now();
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    conn.pending.push_back(true);
    let mut sd = Harness::new(conn, &policy());
    sd.readiness_is_level();
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::Clean);
}

#[test]
fn want_read_with_pending_bytes_retries_once_then_waits() {
    let t0 = Instant::now();
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::WantRead))
        .read(Err(TlsError::WantRead));
    conn.pending.push_back(true); // a partial record stays pending
    let mut sd = Harness::new(conn, &policy());
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(w.interest, Interest::Read);
    assert_eq!(sd.calls(), 3, "shutdown + read + one retry");
}

#[test]
fn peer_initiated_answers_and_skips_the_wait() {
    let t0 = Instant::now();
    let mut conn = Script::usable().shutdown(Ok(ShutdownAnswer::Received));
    conn.status.as_mut().unwrap().received = true;
    let mut sd = Harness::new(conn, &policy());
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::Clean);
    assert_eq!(r.initiator, Initiator::Peer);
    assert_eq!(r.stage, Stage::HalfClose);
    assert!(r.close_notify_sent && r.close_notify_received && r.half_closed);
    assert_eq!(r.ssl_calls, 1);
}

#[test]
fn send_only_does_not_wait() {
    let t0 = Instant::now();
    let p = policy().to_builder().mode(Mode::SendOnly).build().unwrap();
    let conn = Script::usable().shutdown(Ok(ShutdownAnswer::Sent));
    let mut sd = Harness::new(conn, &p);
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::SentOnly);
    assert_eq!(r.stage, Stage::HalfClose);
    assert!(r.session_resumable);
    assert!(!sd.get_ref().forgot_session);

    let p = p.to_builder().half_close(false).build().unwrap();
    let conn = Script::usable().shutdown(Ok(ShutdownAnswer::Sent));
    let mut sd = Harness::new(conn, &p);
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.stage, Stage::Flush);
    assert!(!r.half_closed && !sd.get_ref().half_closed);
}

#[test]
fn quiet_by_policy_and_when_unusable_calls_nothing() {
    let t0 = Instant::now();
    let p = policy().to_builder().mode(Mode::Quiet).build().unwrap();
    let mut sd = Harness::new(Script::usable(), &p);
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::Quiet);
    assert_eq!(r.ssl_calls, 0);
    assert!(sd.get_ref().quiet && sd.get_ref().forgot_session);

    let mut conn = Script::usable();
    conn.status.as_mut().unwrap().usable = false;
    let mut sd = Harness::new(conn, &policy());
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::Quiet);
    assert!(!r.close_notify_sent);
    assert_eq!(r.ssl_calls, 0);
}

#[test]
fn failures_map_to_outcomes() {
    let t0 = Instant::now();
    let cases = [
        (TlsError::Eof, Outcome::Truncated),
        (TlsError::Os(libc::ECONNRESET), Outcome::Reset),
        (TlsError::PeerAlert(48), Outcome::PeerAlert),
        (
            TlsError::Protocol {
                alert: Some(20),
                detail: "bad record mac",
            },
            Outcome::ProtocolError,
        ),
    ];
    for (err, outcome) in cases {
        let conn = Script::usable()
            .shutdown(Ok(ShutdownAnswer::Sent))
            .read(Ok(10))
            .read(Err(err));
        let mut sd = Harness::new(conn, &policy());
        let r = done(sd.poll(t0, Ready::NONE));
        assert_eq!(r.outcome, outcome);
        assert_eq!(r.discarded_bytes, 10);
        assert!(!r.session_resumable, "{outcome} kept the session");
        match outcome {
            Outcome::Reset => assert_eq!(r.os_error, Some(libc::ECONNRESET)),
            Outcome::PeerAlert => {
                let a = r.alert.unwrap();
                assert_eq!(
                    (a.alert.name(), a.direction),
                    ("unknown_ca", AlertDirection::Received)
                );
            }
            Outcome::ProtocolError => {
                let a = r.alert.unwrap();
                assert_eq!(
                    (a.alert, a.direction),
                    (Alert::BadRecordMac, AlertDirection::Sent)
                );
                assert_eq!(r.detail, Some("bad record mac"));
            }
            _ => assert!(r.alert.is_none() && r.os_error.is_none()),
        }
    }
}

#[test]
fn keep_session_on_truncation_is_honoured() {
    let t0 = Instant::now();
    let p = policy()
        .to_builder()
        .keep_session_on_truncation(true)
        .build()
        .unwrap();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::Eof));
    let mut sd = Harness::new(conn, &p);
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::Truncated);
    assert!(r.session_resumable);
}

#[test]
fn drain_limit_counts_and_stops() {
    let t0 = Instant::now();
    let p = policy().to_builder().drain_limit(100).build().unwrap();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Ok(60))
        .read(Ok(40))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &p);
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!((r.outcome, r.discarded_bytes), (Outcome::Clean, 100));

    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Ok(60))
        .read(Ok(41));
    let mut sd = Harness::new(conn, &p);
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!((r.outcome, r.discarded_bytes), (Outcome::DrainLimit, 101));
    assert_eq!(r.stage, Stage::AwaitPeer);
}

#[test]
fn want_write_while_awaiting_waits_for_write() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::WantWrite))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy());
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(w.interest, Interest::Write);
    assert_eq!(wait(sd.poll(t0 + ms(1), Ready::READABLE)), w);
    let r = done(sd.poll(t0 + ms(2), Ready::WRITABLE));
    assert_eq!(r.outcome, Outcome::Clean);
}

#[test]
fn unfinished_write_goes_quiet() {
    let t0 = Instant::now();
    let conn = Script::usable().shutdown(Err(TlsError::Unusable {
        detail: "bad write retry",
    }));
    let mut sd = Harness::new(conn, &policy());
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::Quiet);
    assert!(!r.close_notify_sent);
    assert_eq!(r.detail, Some("bad write retry"));
}

#[test]
fn linger_checks_with_backoff_until_empty_or_deadline() {
    let t0 = Instant::now();
    let p = policy()
        .to_builder()
        .linger_timeout(ms(20))
        .build()
        .unwrap();
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    conn.send_queue.push_back(500);
    let mut sd = Harness::new(conn, &p);
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(w.interest, Interest::Timer);
    assert_eq!(w.deadline, t0 + ms(1));
    // Early wake-up: no-op.
    assert_eq!(wait(sd.poll(t0, Ready::READABLE)), w);
    let w = wait(sd.poll(t0 + ms(1), Ready::NONE));
    assert_eq!(w.deadline, t0 + ms(3));
    sd.get_mut().send_queue.clear();
    let r = done(sd.poll(t0 + ms(3), Ready::NONE));
    assert_eq!((r.outcome, r.stage), (Outcome::Clean, Stage::Linger));

    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    conn.send_queue.push_back(500);
    let mut sd = Harness::new(conn, &p);
    let mut now = t0;
    let mut checks = 0;
    let r = loop {
        match sd.poll(now, Ready::NONE) {
            Progress::Wait(w) => {
                assert!(w.deadline <= t0 + ms(20));
                now = w.deadline;
                checks += 1;
            }
            Progress::Done(r) => break r,
        }
    };
    assert_eq!((r.outcome, r.stage), (Outcome::TimedOut, Stage::Linger));
    assert_eq!(r.elapsed, ms(20));
    assert!(checks <= 6, "{checks} checks in 20 ms");
}

#[test]
fn saved_report_is_returned_without_touching_the_connection() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    let mut conn = conn;
    let first = done(Harness::new(&mut conn, &policy()).poll(t0, Ready::NONE));
    assert_eq!(conn.ended, 1);
    let mut again = Harness::new(conn, &policy());
    assert_eq!(done(again.poll(t0 + ms(50), Ready::ALL)), first);
    assert_eq!(again.get_ref().began, 1, "second shutdown began again");
}

#[test]
fn poll_read_delivers_data_and_rereads_without_readiness() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Ok(4))
        .read(Ok(3))
        .read(Err(TlsError::WantRead))
        .read(Ok(2))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy());
    let mut buf = [0u8; 8];
    let (n, p) = sd.poll_read(t0, Ready::NONE, &mut buf);
    assert_eq!((n, wait(p).interest), (4, Interest::Read));
    // Called again at once with no readiness: still reads.
    let (n, p) = sd.poll_read(t0, Ready::NONE, &mut buf);
    assert_eq!(n, 3);
    let w = wait(p);
    let (n, p) = sd.poll_read(t0, Ready::NONE, &mut buf);
    assert_eq!((n, wait(p)), (0, w), "WANT_READ: now it waits");
    // A spurious wake-up is still a no-op.
    let (n, _) = sd.poll_read(t0 + ms(1), Ready::WRITABLE, &mut buf);
    assert_eq!(n, 0);
    let (n, _) = sd.poll_read(t0 + ms(2), Ready::READABLE, &mut buf);
    assert_eq!(n, 2);
    let (n, p) = sd.poll_read(t0 + ms(2), Ready::NONE, &mut buf);
    let r = done(p);
    assert_eq!((n, r.outcome, r.discarded_bytes), (0, Outcome::Clean, 0));
    assert_eq!(r.ssl_calls, 6);
}

#[test]
fn poll_read_with_an_empty_buffer_reads_nothing() {
    let t0 = Instant::now();
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Ok(5))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy());
    let (n, p) = sd.poll_read(t0, Ready::NONE, &mut []);
    assert_eq!((n, wait(p).interest), (0, Interest::Read));
    let (n, p) = sd.poll_read(t0 + ms(1), Ready::READABLE, &mut []);
    assert_eq!(n, 0);
    let _ = wait(p);
    assert_eq!(
        sd.calls(),
        1,
        "only SSL_shutdown: nothing read, nothing discarded"
    );
    assert_eq!(sd.get_ref().reads.len(), 2);
    // With room, the data is delivered, not discarded.
    let mut buf = [0u8; 8];
    let (n, _) = sd.poll_read(t0 + ms(2), Ready::READABLE, &mut buf);
    assert_eq!(n, 5);
    let (_, p) = sd.poll_read(t0 + ms(2), Ready::NONE, &mut buf);
    let r = done(p);
    assert_eq!((r.outcome, r.discarded_bytes), (Outcome::Clean, 0));
    // The deadline still ends a wait made with an empty buffer.
    let conn = Script::usable().shutdown(Ok(ShutdownAnswer::Sent));
    let mut sd = Harness::new(conn, &policy());
    let _ = sd.poll_read(t0, Ready::NONE, &mut []);
    let (_, p) = sd.poll_read(t0 + ms(300), Ready::NONE, &mut []);
    assert_eq!(done(p).outcome, Outcome::TimedOut);
}

#[test]
fn unsent_data_goes_first_under_the_flush_timeout() {
    let t0 = Instant::now();
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    conn.writes.extend([Ok(6), Err(TlsError::WantWrite), Ok(4)]);
    let mut sd = Harness::new(conn, &policy()).with_unsent(b"0123456789".to_vec());
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!((w.interest, w.deadline), (Interest::Write, t0 + ms(100)));
    let r = done(sd.poll(t0 + ms(5), Ready::WRITABLE));
    assert_eq!(r.outcome, Outcome::Clean);
    assert_eq!(r.ssl_calls, 5, "3 writes, shutdown, read");

    // A peer that never reads: the flush times out with the data unsent.
    let mut conn = Script::usable();
    conn.writes.extend([Err(TlsError::WantWrite)]);
    let mut sd = Harness::new(conn, &policy()).with_unsent(vec![1; 100]);
    let _ = wait(sd.poll(t0, Ready::NONE));
    let r = done(sd.poll(t0 + ms(100), Ready::NONE));
    assert_eq!((r.outcome, r.stage), (Outcome::TimedOut, Stage::Flush));
    assert!(!r.close_notify_sent);
}

#[test]
fn after_error_reports_the_applications_error_and_sends_nothing() {
    let t0 = Instant::now();
    let mut conn = Script::usable();
    conn.status.as_mut().unwrap().usable = false; // OpenSSL's fatal state
                                                  // OpenSSL sets SSL_RECEIVED_SHUTDOWN on a fatal alert as on a close_notify.
    conn.status.as_mut().unwrap().received = true;
    let mut sd = Harness::new(conn, &policy()).after_error(TlsError::PeerAlert(42));
    let r = done(sd.poll(t0, Ready::NONE));
    assert_eq!(r.outcome, Outcome::PeerAlert);
    assert_eq!(r.alert.map(|a| a.alert), Some(Alert::BadCertificate));
    assert_eq!((r.ssl_calls, r.close_notify_sent), (0, false));
    assert!(!r.close_notify_received, "the flag was the alert's");
    assert_eq!(r.initiator, Initiator::Local);
    assert!(sd.get_ref().quiet);

    let mut sd = Harness::new(Script::usable(), &policy()).after_error(TlsError::Eof);
    assert_eq!(done(sd.poll(t0, Ready::NONE)).outcome, Outcome::Truncated);

    // Not failures: the shutdown runs as usual.
    let conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::CloseNotify));
    let mut sd = Harness::new(conn, &policy()).after_error(TlsError::WantRead);
    assert_eq!(done(sd.poll(t0, Ready::NONE)).outcome, Outcome::Clean);
}

/// A peer that streams faster than we read never finds the socket empty: the
/// deadline must still end the stage, and the report says what was delivered.
#[test]
fn poll_read_of_an_endless_stream_ends_at_the_peer_deadline() {
    let t0 = Instant::now();
    let mut conn = Script::usable().shutdown(Ok(ShutdownAnswer::Sent));
    conn.fallback_read = Some(Ok(8));
    let mut sd = Harness::new(conn, &policy());
    let mut buf = [0u8; 8];
    let mut delivered = 0;
    let mut t = t0;
    let report = loop {
        let (n, p) = sd.poll_read(t, Ready::NONE, &mut buf);
        delivered += n as u64;
        match p {
            Progress::Done(r) => break r,
            Progress::Wait(w) => assert_eq!(w.deadline, t0 + ms(300)),
        }
        assert!(t < t0 + ms(300), "read on past the deadline");
        t += ms(7); // the consumer's work per chunk
    };
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert_eq!(report.stage, Stage::AwaitPeer);
    assert_eq!(
        report.elapsed,
        ms(301),
        "the first call at or after the deadline"
    );
    assert_eq!(report.delivered_bytes, delivered);
    assert_eq!(delivered, 44 * 8, "43 calls before the deadline, one at it");
    assert_eq!(report.discarded_bytes, 0);
}

#[test]
fn a_discarding_call_hands_back_control_after_its_budget() {
    let t0 = Instant::now();
    let p = Policy::builder()
        .peer_timeout(ms(300))
        .drain_limit(1 << 30)
        .build()
        .unwrap();
    let mut conn = Script::usable().shutdown(Ok(ShutdownAnswer::Sent));
    conn.fallback_read = Some(Ok(16 * 1024));
    let mut sd = Harness::new(conn, &p);
    // The first call reads its budget (four records), then asks to be called
    // again at once: a wait due at the `now` it was given.
    let w = wait(sd.poll(t0, Ready::NONE));
    assert_eq!(w.deadline, t0);
    assert_eq!(sd.get_ref().read_bytes, 64 * 1024);
    // Called again with no readiness, it reads on.
    let w = wait(sd.poll(t0 + ms(100), Ready::NONE));
    assert_eq!(w.deadline, t0 + ms(100));
    assert_eq!(sd.get_ref().read_bytes, 128 * 1024);
    // At the deadline, the data that still comes ends the stage.
    let r = done(sd.poll(t0 + ms(300), Ready::NONE));
    assert_eq!((r.outcome, r.stage), (Outcome::TimedOut, Stage::AwaitPeer));
    assert_eq!(r.discarded_bytes, 128 * 1024 + 16 * 1024);
    assert_eq!(r.elapsed, ms(300));
}

/// A TLS 1.2 peer's warning that OpenSSL turns into a fatal error of its own:
/// the report names both alerts, and the one behind the outcome is ours.
#[test]
fn alerts_seen_by_openssl_and_the_one_behind_the_outcome_are_both_reported() {
    use crate::report::{AlertLevel, AlertLog};
    let t0 = Instant::now();
    let warning = AlertRecord::new(
        Alert::NoRenegotiation,
        AlertDirection::Received,
        AlertLevel::Warning,
    );
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::Protocol {
            alert: Some(Alert::HandshakeFailure.code()),
            detail: "no renegotiation",
        }));
    conn.alerts.push(warning);
    let r = done(Harness::new(conn, &policy()).poll(t0, Ready::ALL));
    assert_eq!(r.outcome, Outcome::ProtocolError);
    let ours = AlertRecord::new(
        Alert::HandshakeFailure,
        AlertDirection::Sent,
        AlertLevel::Fatal,
    );
    assert_eq!(r.alert, Some(ours));
    assert_eq!(r.alerts.iter().collect::<Vec<_>>(), vec![warning, ours]);
    assert_eq!(r.alerts.from_peer(), Some(warning));

    // A fatal alert OpenSSL saw keeps its level on the wire (a TLS 1.3 peer's
    // warning is an error all the same), and is listed once.
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::PeerAlert(Alert::NoRenegotiation.code())));
    conn.alerts.push(warning);
    let r = done(Harness::new(conn, &policy()).poll(t0, Ready::ALL));
    assert_eq!(r.outcome, Outcome::PeerAlert);
    assert_eq!(r.alert, Some(warning));
    assert_eq!(r.alerts.len(), 1);

    // An alert the application consumed before the shutdown: not seen by the
    // shutdown's callback, listed from the error handed over.
    let conn = Script::usable();
    let r = done(
        Harness::new(conn, &policy())
            .after_error(TlsError::PeerAlert(Alert::UnknownCa.code()))
            .poll(t0, Ready::ALL),
    );
    assert_eq!(r.outcome, Outcome::PeerAlert);
    assert_eq!(
        r.alerts.iter().collect::<Vec<_>>(),
        vec![AlertRecord::new(
            Alert::UnknownCa,
            AlertDirection::Received,
            AlertLevel::Fatal
        )]
    );
    // A full log (five warnings are too many for OpenSSL): the first ones are
    // kept, and the alert behind the outcome takes the last place.
    let mut conn = Script::usable()
        .shutdown(Ok(ShutdownAnswer::Sent))
        .read(Err(TlsError::Protocol {
            alert: Some(Alert::UnexpectedMessage.code()),
            detail: "too many warn alerts",
        }));
    for _ in 0..AlertLog::CAPACITY + 1 {
        conn.alerts.push(warning);
    }
    assert_eq!(
        conn.alerts.len(),
        AlertLog::CAPACITY,
        "the first ones are kept"
    );
    let r = done(Harness::new(conn, &policy()).poll(t0, Ready::ALL));
    let mut want = vec![warning; AlertLog::CAPACITY - 1];
    want.push(r.alert.expect("ours"));
    assert_eq!(r.alerts.iter().collect::<Vec<_>>(), want);
}
