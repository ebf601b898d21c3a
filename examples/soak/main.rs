//! A soak run: one process closes TLS connections through one closenotify
//! `Closer` (with its own `mio::Poll`) for as long as asked, thousands pending
//! at once, against peers that end their connections in every way, and shows
//! that nothing leaks: RSS flat after warm-up, file descriptors back to where
//! they were, and every report the one its peer calls for.
//!
//! ```text
//! cargo run --release --example soak -- --seconds 600 --check
//! ```
//!
//! Options: `--seconds N` (default 60), `--pending N` (shutdowns kept pending
//! in the Closer, default 2000), `--report-every-s N` (a line every N seconds,
//! default 30), `--check` (exit 1 unless the verdict is a pass), `--peer-timeout-ms
//! N` (default 5000), `--max-growth-pct P` (the RSS check, default 5), and
//! `--leak-bytes N` (leaks N bytes per closed connection on purpose, to see the
//! RSS check catch a leak).
//!
//! The peers live in another process: this program, re-executed with `--peer`
//! (see `peer.rs`), one listener per behaviour (`behaviour.rs`). This process
//! connects to them as a TLS client, TLS 1.2 and 1.3 in turn (`opener.rs`),
//! hands every connection to the Closer as soon as its handshake is done, and
//! keeps the Closer's pending count at the target. Every report is checked
//! against the behaviour of its peer.
//!
//! Every `--report-every-s` seconds it prints the elapsed time, its RSS
//! (/proc/self/status), its open file descriptors (/proc/self/fd), the
//! shutdowns pending, the closes per second since the last line, and the
//! count per outcome. At the end: the same line, then the Closer runs until
//! every pending shutdown has reported, is dropped, and the fds are counted
//! again; then the verdict. It passes when
//! - every report is the one its behaviour calls for (`Behaviour::expects`),
//!   no connection is stuck in the Closer, and every connection reached it;
//! - the open fds, once the Closer is dropped, are the baseline counted before
//!   the Closer and the first connection;
//! - RSS at the end is at most `--max-growth-pct` above RSS at the end of the
//!   warm-up, the first third of the run (the allocator's footprint takes
//!   minutes to settle: docs/soak.md).

#[path = "../common/mod.rs"]
mod common;

mod behaviour;
mod measure;
mod opener;
mod peer;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use behaviour::Behaviour;
use closenotify::{Closer, Policy, Report};
use common::cli;
use measure::{mib, MIB};
use opener::Opener;
use peer::PeerOptions;

const USAGE: &str = "usage: soak [--seconds N] [--pending N] [--report-every-s N] [--check] \
                     [--peer-timeout-ms N] [--max-growth-pct P] [--leak-bytes N]";

/// The soak's policy, besides the peer timeout: short, so that connections
/// cycle. A flush never waits here (every peer reads), so its timeout is only
/// a bound.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(300);
/// Less than a flooding peer sends (`FLOOD_BYTES`).
const DRAIN_LIMIT: u64 = 16 * 1024;
const FLOOD_BYTES: usize = 64 * 1024;
/// A silent peer holds its connection this much longer than our peer timeout,
/// so that the timeout always comes first.
const HOLD_MARGIN: Duration = Duration::from_secs(1);
/// Handshakes in progress at once: enough to keep the Closer fed, few enough
/// for the peer's listen backlog.
const HANDSHAKES: usize = 64;
/// File descriptors kept free of connections (stdio, polls, the peer's pipe).
const FD_RESERVE: u64 = 64;
/// How often RSS is sampled (the lines show one sample in `--report-every-s`).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Wrong reports described in full; the rest are only counted.
const DESCRIBED: u64 = 5;

struct Options {
    seconds: u64,
    pending: usize,
    report_every: Duration,
    check: bool,
    peer_timeout: Duration,
    max_growth_pct: f64,
    leak_bytes: usize,
    /// `--peer`: run as the peer process (the soak starts it).
    peer: bool,
    delay_max: Duration,
    hold: Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        seconds: 60,
        pending: 2000,
        report_every: Duration::from_secs(30),
        check: false,
        peer_timeout: Duration::from_millis(5000),
        max_growth_pct: 5.0,
        leak_bytes: 0,
        peer: false,
        delay_max: Duration::ZERO,
        hold: Duration::ZERO,
    };
    let mut args = cli::Args::from_env();
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--seconds" => o.seconds = args.parse(&flag)?,
            "--pending" => o.pending = args.parse(&flag)?,
            "--report-every-s" => o.report_every = Duration::from_secs(args.parse(&flag)?),
            "--check" => {
                args.switch(&flag)?;
                o.check = true;
            }
            "--peer-timeout-ms" => o.peer_timeout = args.millis(&flag)?,
            "--max-growth-pct" => o.max_growth_pct = args.parse(&flag)?,
            "--leak-bytes" => o.leak_bytes = args.parse(&flag)?,
            "--peer" => {
                args.switch(&flag)?;
                o.peer = true;
            }
            "--delay-max-ms" => o.delay_max = args.millis(&flag)?,
            "--hold-ms" => o.hold = args.millis(&flag)?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if o.seconds == 0 || o.pending == 0 || o.report_every.is_zero() {
        return Err("--seconds, --pending and --report-every-s must be at least 1".into());
    }
    if o.peer_timeout < Duration::from_millis(10) {
        return Err("--peer-timeout-ms must be at least 10".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(msg) => return cli::usage_error("soak", USAGE, &msg),
    };
    if options.peer {
        let peer = PeerOptions {
            delay_max: options.delay_max,
            hold: options.hold,
            flood_bytes: FLOOD_BYTES,
        };
        return match peer::run(&peer) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soak peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match soak(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) if !options.check => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn soak(options: &Options) -> io::Result<bool> {
    let limit = measure::raise_fd_limit();
    let peer = PeerProcess::start(options)?;
    let pending = options
        .pending
        .min(limit.now.saturating_sub(FD_RESERVE + HANDSHAKES as u64) as usize);
    let policy = Policy::builder()
        .flush_timeout(FLUSH_TIMEOUT)
        .peer_timeout(options.peer_timeout)
        .drain_limit(DRAIN_LIMIT)
        .build()
        .map_err(io::Error::other)?;
    let asked = if pending < options.pending {
        format!(" (asked {}: the fd limit)", options.pending)
    } else {
        String::new()
    };
    println!(
        "soak: {} s, {pending} shutdowns pending{asked}, TLS 1.2 and 1.3 in turn",
        options.seconds
    );
    if limit.now > limit.was {
        println!(
            "fd limit: {} (soft limit raised from {})",
            limit.now, limit.was
        );
    } else {
        println!(
            "fd limit: {} (the soft limit was the hard limit)",
            limit.now
        );
    }
    println!(
        "policy: flush {} ms, peer {} ms, drain limit {} KiB",
        FLUSH_TIMEOUT.as_millis(),
        options.peer_timeout.as_millis(),
        DRAIN_LIMIT / 1024
    );
    println!(
        "peers: pid {}, acting after 0-{} ms: {}",
        peer.child.id(),
        delay_max(options).as_millis(),
        Behaviour::ALL.map(Behaviour::name).join(", ")
    );

    let baseline_fds = measure::open_fds();
    println!(
        "baseline: rss {}, {baseline_fds} fds (before the Closer and the first connection)",
        mib(measure::rss_bytes())
    );
    let mut run = Run::new(options, &policy, pending, peer.ports.clone())?;
    run.until(Duration::from_secs(options.seconds))?;
    let abandoned = run.opener.abandon();
    let (stuck, drained_in) = run.drain(&policy)?;
    run.print_total();
    let Run {
        tally,
        memory,
        opener,
        closer,
        ..
    } = run;
    drop(closer);
    let (failed, failures) = opener.finish();
    let end_fds = measure::open_fds();
    peer.stop()?;

    println!(
        "reports: {}, {} wrong; {stuck} shutdowns still pending {:.1} s after the end",
        tally.closed,
        tally.wrong,
        drained_in.as_secs_f64()
    );
    println!(
        "connections that never reached the Closer: {} ({abandoned} handshakes cut short at the end)",
        failed
    );
    for failure in &failures {
        println!("  {failure}");
    }
    println!(
        "fds: {baseline_fds} before the first connection, {end_fds} after the Closer was dropped"
    );
    let rss = memory.verdict(options.max_growth_pct);
    println!("{}", rss.as_ref().unwrap_or_else(|line| line));

    let mut failures = Vec::new();
    if tally.wrong > 0 {
        failures.push("wrong reports");
    }
    if stuck > 0 {
        failures.push("shutdowns stuck");
    }
    if failed > 0 {
        failures.push("connections lost before the Closer");
    }
    if end_fds != baseline_fds {
        failures.push("fds not back to the baseline");
    }
    if rss.is_err() {
        failures.push("RSS grew after warm-up");
    }
    if failures.is_empty() {
        println!("verdict: pass");
    } else {
        println!("verdict: FAIL ({})", failures.join(", "));
    }
    Ok(failures.is_empty())
}

/// The longest delay before a peer acts: four fifths of the peer timeout (4 s
/// of 5 s), so that even a loaded machine answers in time.
fn delay_max(options: &Options) -> Duration {
    options.peer_timeout * 4 / 5
}

// ---------------------------------------------------------------------------
// The peer process.
// ---------------------------------------------------------------------------

struct PeerProcess {
    child: Child,
    /// Its port for each behaviour, in the order of `Behaviour::ALL`.
    ports: Vec<u16>,
}

impl PeerProcess {
    /// Starts this program with `--peer` and reads its ports.
    fn start(options: &Options) -> io::Result<PeerProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--peer")
            .arg(format!("--delay-max-ms={}", delay_max(options).as_millis()))
            .arg(format!(
                "--hold-ms={}",
                (options.peer_timeout + HOLD_MARGIN).as_millis()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let ports: Vec<u16> = line
            .strip_prefix("ports ")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if ports.len() != Behaviour::ALL.len() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!("the peer process said {line:?}")));
        }
        Ok(PeerProcess { child, ports })
    }

    /// Closes its stdin, which ends it, and waits for it.
    fn stop(mut self) -> io::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "the peer process ended: {status}"
            )));
        }
        Ok(())
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------

struct Run<'a> {
    options: &'a Options,
    start: Instant,
    pending: usize,
    opener: Opener,
    closer: Closer<Behaviour>,
    /// Finished handshakes on their way to the Closer (kept for its allocation).
    ready: Vec<(closenotify::Stream, Behaviour)>,
    tally: Tally,
    memory: Memory,
    /// When the last line was printed, and the connections closed by then.
    last_line: (Instant, u64),
}

impl<'a> Run<'a> {
    fn new(
        options: &'a Options,
        policy: &Policy,
        pending: usize,
        ports: Vec<u16>,
    ) -> io::Result<Run<'a>> {
        let start = Instant::now();
        let warm_up = Duration::from_secs(options.seconds.div_ceil(3));
        Ok(Run {
            options,
            start,
            pending,
            opener: Opener::new(ports)?,
            closer: Closer::new(policy)?,
            ready: Vec::new(),
            tally: Tally::default(),
            memory: Memory::new(warm_up),
            last_line: (start, 0),
        })
    }

    /// Keeps the Closer busy until `duration` has passed since the start,
    /// printing a line every `--report-every-s`, and one at the end.
    fn until(&mut self, duration: Duration) -> io::Result<()> {
        print_header();
        let end = self.start + duration;
        let mut next_sample = self.start + SAMPLE_EVERY;
        let mut next_line = self.start + self.options.report_every;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if now >= next_sample {
                next_sample += SAMPLE_EVERY;
                self.memory
                    .sample(now - self.start, measure::rss_bytes(), self.tally.closed);
                self.opener.expire(now);
            }
            if now >= next_line {
                next_line += self.options.report_every;
                self.print_line(now);
            }
            self.turn()?;
        }
        let now = Instant::now();
        self.memory
            .sample(now - self.start, measure::rss_bytes(), self.tally.closed);
        self.print_line(now);
        Ok(())
    }

    /// One turn: opens connections up to the target, moves the handshakes on,
    /// hands the finished ones to the Closer, polls the Closer (for at most a
    /// millisecond) and checks its reports.
    fn turn(&mut self) -> io::Result<()> {
        while self.opener.in_flight() < HANDSHAKES
            && self.closer.pending() + self.opener.in_flight() < self.pending
        {
            self.opener.open()?;
        }
        self.opener.poll(&mut self.ready)?;
        for (stream, behaviour) in self.ready.drain(..) {
            if let Err(rejected) = self.closer.add(stream, behaviour) {
                return Err(io::Error::other(rejected.to_string()));
            }
        }
        self.closer.poll(Some(Duration::from_millis(1)))?;
        self.collect();
        Ok(())
    }

    fn collect(&mut self) {
        for (behaviour, report) in self.closer.reports() {
            self.tally.record(behaviour, &report);
            if self.options.leak_bytes > 0 {
                // On purpose: memory written (so resident) and never freed.
                std::mem::forget(vec![0xA5u8; self.options.leak_bytes]);
            }
        }
    }

    /// After the run: no new connection; the Closer runs until every pending
    /// shutdown has reported, bounded by its policy (plus a margin). Returns
    /// how many are still pending then (stuck), and how long it took.
    fn drain(&mut self, policy: &Policy) -> io::Result<(usize, Duration)> {
        let started = Instant::now();
        let bound = policy.flush_timeout() + policy.peer_timeout() + Duration::from_secs(5);
        while self.closer.pending() > 0 && started.elapsed() < bound {
            self.closer.poll(Some(Duration::from_millis(100)))?;
            self.collect();
        }
        let stuck = self.closer.pending();
        if stuck == 0 {
            // Nothing pending: this returns at once, and closes the connections
            // that reported last (the Closer closes them at its next call).
            self.closer.finish()?;
        }
        Ok((stuck, started.elapsed()))
    }

    fn print_line(&mut self, now: Instant) {
        let (then, closed_then) = self.last_line;
        let seconds = now.duration_since(then).as_secs_f64();
        let rate = (self.tally.closed - closed_then) as f64 / seconds.max(1e-9);
        self.last_line = (now, self.tally.closed);
        let elapsed = format!("{}s", (now - self.start).as_secs_f64().round());
        self.print_row(&elapsed, rate);
    }

    /// The last line: after the drain, closes per second over the whole run.
    fn print_total(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        let rate = self.tally.closed as f64 / seconds;
        self.print_row("total", rate);
    }

    fn print_row(&self, label: &str, rate: f64) {
        let mut row = format!(
            "{label:>5} {:>7.1} {:>5} {:>7} {:>8.0}",
            measure::rss_bytes() as f64 / MIB,
            measure::open_fds(),
            self.closer.pending(),
            rate
        );
        for b in Behaviour::ALL {
            row += &format!(
                " {:>w$}",
                self.tally.count(b.outcome().as_str()),
                w = column(b)
            );
        }
        row += &format!(" {:>5}", self.tally.wrong);
        println!("{row}");
    }
}

fn print_header() {
    let mut header = format!(
        "{:>5} {:>7} {:>5} {:>7} {:>8}",
        "time", "rss MiB", "fds", "pending", "closes/s"
    );
    for b in Behaviour::ALL {
        header += &format!(" {:>w$}", b.outcome().as_str(), w = column(b));
    }
    header += &format!(" {:>5}", "wrong");
    println!("{header}");
}

/// The width of an outcome's column: its name, and at least 6 digits.
fn column(b: Behaviour) -> usize {
    b.outcome().as_str().len().max(6)
}

// ---------------------------------------------------------------------------
// What the run counts and measures.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    closed: u64,
    per_outcome: BTreeMap<&'static str, u64>,
    /// Reports that are not the one their behaviour calls for.
    wrong: u64,
}

impl Tally {
    fn record(&mut self, behaviour: Behaviour, report: &Report) {
        self.closed += 1;
        *self.per_outcome.entry(report.outcome.as_str()).or_default() += 1;
        if !behaviour.expects(report) {
            self.wrong += 1;
            if self.wrong <= DESCRIBED {
                println!(
                    "wrong report: a peer that {} calls for {}, got {report}",
                    behaviour.name(),
                    behaviour.outcome()
                );
            }
        }
    }

    fn count(&self, outcome: &str) -> u64 {
        self.per_outcome.get(outcome).copied().unwrap_or(0)
    }
}

/// RSS after warm-up against RSS at the end.
struct Memory {
    warm_up: Duration,
    /// RSS and connections closed at the first sample after the warm-up.
    reference: Option<(u64, u64)>,
    /// The highest RSS sampled after the warm-up.
    max: u64,
    /// RSS and connections closed at the last sample (the end of the run).
    last: (u64, u64),
}

impl Memory {
    fn new(warm_up: Duration) -> Memory {
        Memory {
            warm_up,
            reference: None,
            max: 0,
            last: (0, 0),
        }
    }

    fn sample(&mut self, elapsed: Duration, rss: u64, closed: u64) {
        if self.reference.is_none() && elapsed >= self.warm_up {
            self.reference = Some((rss, closed));
        }
        if self.reference.is_some() {
            self.max = self.max.max(rss);
        }
        self.last = (rss, closed);
    }

    /// One line on RSS after warm-up; `Err` if it grew more than `max_pct`.
    fn verdict(&self, max_pct: f64) -> Result<String, String> {
        let Some((reference, closed_then)) = self.reference else {
            return Err("rss: the run ended before its warm-up".into());
        };
        let (end, closed) = self.last;
        let growth = end as f64 - reference as f64;
        let pct = 100.0 * growth / reference as f64;
        let per_close = growth / closed.saturating_sub(closed_then).max(1) as f64;
        let line = format!(
            "rss: {} after warm-up (the first {} s), {} at the end, at most {} in between\n\
             rss growth after warm-up: {pct:+.1} % (limit {max_pct} %), {per_close:+.0} B per close",
            mib(reference),
            self.warm_up.as_secs(),
            mib(end),
            mib(self.max),
        );
        if pct > max_pct {
            Err(line)
        } else {
            Ok(line)
        }
    }
}
