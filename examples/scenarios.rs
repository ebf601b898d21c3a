//! The one-command tour: every way a TLS connection can end, in TLS 1.2 and 1.3,
//! against real OpenSSL on loopback sockets, and how closenotify reports it.
//!
//! ```text
//! cargo run --example scenarios
//! ```
//!
//! Our side is the client: closenotify's `shutdown_blocking`, under a policy
//! with short timeouts (the rows that change the policy say so). The peer is
//! OpenSSL in a thread of the same process, behaving as the row says. Every
//! outcome of the report appears at least once. For each row the example also
//! opens a new connection offering the session, to show that "resumable" in the
//! report is what really happens on the next handshake.
//!
//! Every line fits 100 columns (the example checks it), and the whole tour takes
//! about two seconds.

mod common;
/// The misbehaving peers, the same the tests use.
#[path = "../tests/util/peers.rs"]
mod peers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use closenotify::{into_transport, shutdown_blocking, Mode, Outcome, Policy, Report, Stage};
use common::line;
use openssl::ssl::{SslSession, SslStream};
use peers::{Behaviour, Contexts, Pair, Role, Tls, BOTH};

/// The widest line the tour prints.
const WIDTH: usize = 100;
/// The tour's timeouts: short, so that it is quick (the defaults are 3 s).
const TIMEOUT: Duration = Duration::from_millis(300);
/// The drain limit of the `drain_limit` row: less than the peer sends.
const SMALL_DRAIN_LIMIT: u64 = 4096;
/// The plaintext lines of the STOPTLS row, after TLS has ended.
const PEER_PLAIN: &[u8] = b"hello\n";
const OUR_PLAIN: &[u8] = b"bye\n";

/// One row of the table: what the peer does, and what our policy changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    /// The peer behaves as `Behaviour` says; our policy is the tour's.
    Peer(Behaviour),
    /// Our policy does not wait for the answer (`Mode::SendOnly`).
    SendOnly,
    /// Our policy sends nothing (`Mode::Quiet`).
    Quiet,
    /// The peer sends more after our close_notify than our drain limit allows.
    DrainLimit,
    /// We leave TLS (`Mode::StopTls`) and both sides exchange a plaintext line on
    /// the same TCP connection.
    StopTls,
}

const ROWS: [Row; 13] = [
    Row::Peer(Behaviour::Answers),
    Row::Peer(Behaviour::Initiates),
    Row::SendOnly,
    Row::Quiet,
    Row::Peer(Behaviour::Silent),
    Row::Peer(Behaviour::NotReading),
    Row::Peer(Behaviour::Truncates),
    Row::Peer(Behaviour::Resets),
    Row::Peer(Behaviour::FatalAlert),
    Row::Peer(Behaviour::DataAfterCloseNotify),
    Row::DrainLimit,
    Row::Peer(Behaviour::GarbageRecord),
    Row::StopTls,
];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Peer(Behaviour::Answers) => "peer answers",
            Row::Peer(Behaviour::Initiates) => "peer initiates",
            Row::Peer(Behaviour::Silent) => "silent peer",
            Row::Peer(Behaviour::NotReading) => "peer not reading",
            Row::Peer(Behaviour::Truncates) => "peer truncates",
            Row::Peer(Behaviour::Resets) => "peer resets",
            Row::Peer(Behaviour::FatalAlert) => "peer sends alert",
            Row::Peer(Behaviour::DataAfterCloseNotify) => "data, then answer",
            Row::Peer(Behaviour::GarbageRecord) => "garbage from peer",
            Row::Peer(Behaviour::Garbage) => "text from peer",
            Row::SendOnly => "send-only policy",
            Row::Quiet => "quiet policy",
            Row::DrainLimit => "data past limit",
            Row::StopTls => "STOPTLS + plain",
        }
    }

    fn policy(self, base: &Policy) -> Policy {
        let policy = base.to_builder();
        match self {
            Row::Peer(_) => policy,
            Row::SendOnly => policy.mode(Mode::SendOnly),
            Row::Quiet => policy.mode(Mode::Quiet),
            Row::DrainLimit => policy.drain_limit(SMALL_DRAIN_LIMIT),
            Row::StopTls => policy.mode(Mode::StopTls),
        }
        .build()
        .expect("valid policy")
    }

    /// What the peer does.
    fn behaviour(self) -> Behaviour {
        match self {
            Row::Peer(b) => b,
            Row::SendOnly => Behaviour::Answers,
            Row::Quiet => Behaviour::Silent,
            Row::DrainLimit => Behaviour::DataAfterCloseNotify,
            Row::StopTls => unreachable!("the STOPTLS row has its own peer, stop_tls_peer"),
        }
    }
}

/// The columns: scenario, tls, outcome, stage, elapsed (right-aligned), session;
/// the detail follows, wrapped within the rest of the width.
const COLUMNS: [usize; 6] = [17, 3, 14, 10, 7, 7];
/// The spaces after each column.
const GAPS: [usize; 6] = [2, 1, 1, 1, 2, 2];
/// Where the detail column starts.
const DETAIL_AT: usize = {
    let mut at = 0;
    let mut i = 0;
    while i < COLUMNS.len() {
        at += COLUMNS[i] + GAPS[i];
        i += 1;
    }
    at
};

fn main() {
    let started = Instant::now();
    let policy = Policy::builder()
        .flush_timeout(TIMEOUT)
        .peer_timeout(TIMEOUT)
        .build()
        .expect("valid policy");
    let mut out = Output;

    let peer = openssl::version::version()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    out.paragraph(&format!(
        "Every way a TLS connection can end, and what closenotify reports. Our side: the \
         client (shutdown_blocking). The peer: {peer} on loopback, in a thread. Policy: \
         bidirectional, flush_timeout {} ms, peer_timeout {} ms, drain_limit {} KiB; the rows \
         \"send-only policy\", \"quiet policy\", \"data past limit\" (drain_limit {} KiB) \
         and \"STOPTLS + plain\" change it. session: resumable in the report / really resumed \
         by the next connection.",
        policy.flush_timeout().as_millis(),
        policy.peer_timeout().as_millis(),
        policy.drain_limit() / 1024,
        SMALL_DRAIN_LIMIT / 1024,
    ));
    out.line("");
    out.row(
        ["scenario", "tls", "outcome", "stage", "elapsed", "session"],
        "detail",
    );
    out.line(&"-".repeat(WIDTH));
    let mut seen = Vec::new();
    for row in ROWS {
        for tls in BOTH {
            let ctx = Contexts::new(tls);
            let (report, resumed, plain) = run(&ctx, row, &row.policy(&policy), &policy);
            seen.push(report.outcome);
            let tls_name = tls.name().trim_start_matches("TLSv");
            let outcome = report.outcome.as_str();
            let stage = report.stage.as_str();
            let elapsed = format!("{:.1}ms", report.elapsed.as_secs_f64() * 1000.0);
            let session = format!("{}/{}", yes_no(report.session_resumable), yes_no(resumed));
            let detail = detail(row, tls, &report, plain.as_deref());
            out.row(
                [row.name(), tls_name, outcome, stage, &elapsed, &session],
                &detail,
            );
        }
    }
    let missing: Vec<_> = Outcome::ALL
        .iter()
        .filter(|o| !seen.contains(o))
        .map(|o| o.as_str())
        .collect();
    out.line("");
    out.paragraph(&format!(
        "{} scenarios in {:.1} s. clean and sent_only keep the session (a TLS 1.3 client's \
         once it has read a ticket); every other outcome drops it.",
        ROWS.len() * BOTH.len(),
        started.elapsed().as_secs_f64()
    ));
    if !missing.is_empty() {
        out.line(&format!("Outcomes not shown: {}", missing.join(", ")));
        std::process::exit(1);
    }
}

/// Prints lines, checking that each fits the width.
struct Output;

impl Output {
    fn line(&mut self, text: &str) {
        assert!(
            text.chars().count() <= WIDTH,
            "a line of the tour is wider than {WIDTH} columns: {text:?}"
        );
        println!("{}", text.trim_end());
    }

    /// Text wrapped at spaces to the width.
    fn paragraph(&mut self, text: &str) {
        for line in wrap(text, WIDTH) {
            self.line(&line);
        }
    }

    /// A table row; the detail wraps at spaces within its column.
    fn row(&mut self, cells: [&str; 6], detail: &str) {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let (width, gap) = (COLUMNS[i], GAPS[i]);
            match i {
                4 => text.push_str(&format!("{cell:>width$}{:gap$}", "")),
                _ => text.push_str(&format!("{cell:<width$}{:gap$}", "")),
            }
        }
        let mut lines = wrap(detail, WIDTH - DETAIL_AT).into_iter();
        text.push_str(&lines.next().unwrap_or_default());
        self.line(&text);
        for more in lines {
            self.line(&format!("{:DETAIL_AT$}{more}", ""));
        }
    }
}

/// `text` in lines of at most `width` characters, broken at spaces (a word
/// longer than `width` gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(last) if last.len() + 1 + word.len() <= width => {
                last.push(' ');
                last.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Runs one scenario under `policy`; returns our report, whether the next
/// connection resumed the session (closed under `base`), and (STOPTLS) the
/// plaintext line that arrived after TLS, if ours arrived at the peer too.
fn run(
    ctx: &Contexts,
    row: Row,
    policy: &Policy,
    base: &Policy,
) -> (Report, bool, Option<Vec<u8>>) {
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    if row == Row::StopTls {
        let peer = thread::spawn(move || stop_tls_peer(peer));
        let report = shutdown_blocking(&mut ours, policy);
        let session = ours.ssl().session().map(|s| s.to_owned());
        let got = stop_tls(ours);
        let peer_got = peer.join().ok().flatten();
        let plain = got.filter(|_| peer_got.as_deref() == Some(OUR_PLAIN));
        return (report, resumes(ctx, session, base), plain);
    }
    let (release, held) = mpsc::channel();
    let peer = row.behaviour().start(&mut ours, peer, held);
    let report = shutdown_blocking(&mut ours, policy);
    let session = ours.ssl().session().map(|s| s.to_owned());
    drop(ours);
    let _ = release.send(());
    let _ = peer.join();
    (report, resumes(ctx, session, base), None)
}

/// Whether a new connection offering `session` really resumes it.
fn resumes(ctx: &Contexts, session: Option<SslSession>, policy: &Policy) -> bool {
    session.is_some_and(|s| {
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
    })
}

/// Our side after the STOPTLS shutdown: the TCP connection back, the peer's
/// plaintext line read, ours sent. `None` if the transport is not reusable.
fn stop_tls(ours: SslStream<TcpStream>) -> Option<Vec<u8>> {
    let mut tcp = into_transport(ours).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let got = line::read_line(&mut tcp).ok()?;
    tcp.write_all(OUR_PLAIN).ok()?;
    Some(got)
}

/// The STOPTLS peer: waits for our close_notify, answers with its own, then in
/// plaintext sends its line and reads ours; returns what it read.
fn stop_tls_peer(mut peer: SslStream<TcpStream>) -> Option<Vec<u8>> {
    peers::read_until_close_notify(&mut peer).ok()?;
    peer.shutdown().ok()?;
    let tcp = peer.get_mut();
    tcp.write_all(PEER_PLAIN).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let got = line::read_line(tcp).ok()?;
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    Some(got)
}

fn detail(row: Row, tls: Tls, r: &Report, plain: Option<&[u8]>) -> String {
    let ms = |d: Duration| d.as_millis();
    match r.outcome {
        Outcome::PeerAlert => r
            .alert
            .map(|a| format!("received {}", a.alert))
            .unwrap_or_default(),
        // OpenSSL puts no alert on the wire after our close_notify: the alert is
        // the one our side would have sent.
        Outcome::ProtocolError => format!(
            "rejected {} (would send {})",
            r.detail.unwrap_or("the record"),
            r.alert.map_or("no alert".into(), |a| a.alert.to_string())
        ),
        Outcome::Reset => match r.os_error {
            Some(libc::ECONNRESET) => "ECONNRESET".into(),
            Some(libc::EPIPE) => "EPIPE".into(),
            Some(e) => format!("errno {e}"),
            None => String::new(),
        },
        Outcome::TimedOut if r.stage == Stage::Flush => {
            format!("not flushed in {} ms; RST", ms(TIMEOUT))
        }
        Outcome::TimedOut => format!("no close_notify in {} ms", ms(TIMEOUT)),
        Outcome::Truncated => "EOF, no close_notify".into(),
        Outcome::DrainLimit => format!(
            "{} bytes > drain_limit {}",
            r.discarded_bytes, SMALL_DRAIN_LIMIT
        ),
        Outcome::Quiet => "no close_notify sent".into(),
        Outcome::SentOnly if !r.session_resumable && tls == Tls::V13 => {
            "not waiting; no ticket read yet".into()
        }
        Outcome::SentOnly => "not waiting for the answer".into(),
        Outcome::Clean if row == Row::StopTls => match plain {
            Some(line) => format!(
                "then plain {:?} in, {:?} out",
                line::show(line),
                line::show(OUR_PLAIN)
            ),
            None => "the plaintext after it was lost".into(),
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
