//! The one-command tour: every way a peer can end a TLS connection, in TLS 1.2 and
//! 1.3, against real OpenSSL on loopback sockets, and how closenotify reports it.
//!
//! ```text
//! cargo run --example scenarios
//! ```
//!
//! Our side is the client. For each row the example also opens a new connection
//! offering the session, to show that "resumable" in the report is what really
//! happens on the next handshake.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use closenotify::{shutdown_blocking, Outcome, Policy, Report};
use common::{Behaviour, Contexts, Pair, Role, BOTH};

fn main() {
    let started = Instant::now();
    // Short timeouts so that the tour is quick; the defaults are 3 s.
    let policy = Policy::builder()
        .flush_timeout(Duration::from_millis(300))
        .peer_timeout(Duration::from_millis(300))
        .build()
        .expect("valid policy");

    println!(
        "{:<24} {:<8} {:<15} {:<11} {:>9}  {:<30} {:<9} resumed next",
        "scenario", "tls", "outcome", "stage", "elapsed", "detail", "resumable"
    );
    println!("{}", "-".repeat(122));
    for behaviour in Behaviour::ALL {
        for tls in BOTH {
            let ctx = Contexts::new(tls);
            let (report, resumed) = run(&ctx, behaviour, &policy);
            println!(
                "{:<24} {:<8} {:<15} {:<11} {:>7.1}ms  {:<30} {:<9} {}",
                behaviour.describe(),
                tls.name(),
                report.outcome.as_str(),
                report.stage.as_str(),
                report.elapsed.as_secs_f64() * 1000.0,
                detail(&report),
                yes_no(report.session_resumable),
                yes_no(resumed),
            );
        }
    }
    println!(
        "\n{} scenarios in {:.1} s. Outcomes: clean and sent_only keep the session; \
         every other outcome drops it.",
        Behaviour::ALL.len() * BOTH.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Runs one scenario; returns our report and whether the next connection resumed.
fn run(ctx: &Contexts, behaviour: Behaviour, policy: &Policy) -> (Report, bool) {
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let (release, held) = mpsc::channel();
    let peer = behaviour.start(&mut ours, peer, held);
    let report = shutdown_blocking(&mut ours, policy);
    let session = ours.ssl().session().map(|s| s.to_owned());
    drop(ours);
    let _ = release.send(());
    let _ = peer.join();

    let resumed = session.is_some_and(|s| {
        let next = ctx.pair_resuming(Role::Client, Some(&s));
        let resumed = next.ours.ssl().session_reused();
        let (release, held) = mpsc::channel::<()>();
        drop(release);
        let mut ours = next.ours;
        let peer = Behaviour::Answers.start(&mut ours, next.peer, held);
        let _ = shutdown_blocking(&mut ours, policy);
        drop(ours);
        let _ = peer.join();
        resumed
    });
    (report, resumed)
}

fn detail(r: &Report) -> String {
    match r.outcome {
        Outcome::PeerAlert | Outcome::ProtocolError => r
            .alert
            .map(|a| format!("{} {}", a.direction.as_str(), a.alert))
            .unwrap_or_default(),
        Outcome::Reset => match r.os_error {
            Some(libc::ECONNRESET) => "ECONNRESET".into(),
            Some(libc::EPIPE) => "EPIPE".into(),
            Some(e) => format!("errno {e}"),
            None => String::new(),
        },
        _ if r.discarded_bytes > 0 => format!("{} bytes discarded", r.discarded_bytes),
        _ => format!("initiator {}", r.initiator),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
