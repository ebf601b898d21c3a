//! 1,000 concurrent clients with mixed behaviours against one `echo_server`.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;
use serde_json::{json, Value};
use util::examples::*;
use util::{reset_on_drop, wait_eof, Contexts, Tls};

// 5. 1,000 concurrent clients with mixed behaviours.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Load {
    /// Echo, then close_notify first and read the server's answer.
    Bidirectional,
    /// Echo, then close TCP without close_notify.
    Abrupt,
    /// Echo, then RST.
    Reset,
    /// Raw bytes that are not TLS.
    Garbage,
    /// Connect and disconnect without sending anything.
    Nothing,
    /// 4 MB, then the bidirectional close. Sent in rounds of one full TLS record
    /// (16 KiB), each echo read before the next: the server never holds a second
    /// record while an echo write waits, which today would trip the bug shown by
    /// `client_that_reads_slower_than_it_writes_gets_its_whole_echo`.
    Burst,
}

const WORKERS: usize = 50;
const BATCHES: usize = 4;
const PER_BATCH: usize = 5;
const CLIENTS: usize = WORKERS * BATCHES * PER_BATCH;
const BURST: usize = 4 << 20;
const BURST_ROUND: usize = 16 << 10;

/// Per 20 clients: 9 bidirectional, 3 abrupt, 3 reset, 2 garbage, 2 nothing, 1
/// burst. Worker `w` runs clients `20w..20w+20`, shifted by `w`, so batches mix.
fn load_of(worker: usize, nth: usize) -> Load {
    match (nth + worker) % 20 {
        0..=6 | 18 | 19 => Load::Bidirectional,
        7..=9 => Load::Abrupt,
        10..=12 => Load::Reset,
        13 | 14 => Load::Garbage,
        15 | 16 => Load::Nothing,
        _ => Load::Burst,
    }
}

fn holds_a_connection(load: Load) -> bool {
    !matches!(load, Load::Garbage | Load::Nothing)
}

/// A client that finished, and what the server must say about it.
struct Finished {
    port: u16,
    expected: Value,
    load: Load,
}

enum Held {
    Tls(SslStream<TcpStream>),
    Gone,
}

/// Opens a client and does its part before the close (handshake and echo).
fn open_client(load: Load, id: usize, ctx: &Contexts, port: u16, burst: &[u8]) -> (Finished, Held) {
    let tls = tls_name(ctx.tls);
    let line = |outcome: &str, initiator: &str, stage: &str, len: usize| {
        json!({"outcome": outcome, "initiator": initiator, "stage": stage, "bytes_in": len,
               "bytes_out": len, "discarded_bytes": 0, "alert": null, "tls_version": tls})
    };
    match load {
        Load::Garbage | Load::Nothing => {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let local = tcp.local_addr().unwrap().port();
            if load == Load::Garbage {
                tcp.write_all(b"this is not TLS, not at all\r\n\r\n")
                    .unwrap();
                // The server answers with an alert (or nothing) and closes.
                let _ = wait_eof(&mut tcp);
            }
            let expected = json!({"outcome": "handshake_failed"});
            (
                Finished {
                    port: local,
                    expected,
                    load,
                },
                Held::Gone,
            )
        }
        _ => {
            let mut s = tls_connect(ctx, port);
            let local = local_port(&s);
            let len = if load == Load::Burst {
                for round in burst.chunks(BURST_ROUND) {
                    echo(&mut s, round);
                }
                burst.len()
            } else {
                let msg = varied_bytes(100 + id % 50, id as u64);
                echo(&mut s, &msg);
                msg.len()
            };
            let expected = match load {
                Load::Abrupt => line("truncated", "local", "flush", len),
                Load::Reset => line("reset", "local", "flush", len),
                _ => line("clean", "peer", "half_close", len),
            };
            (
                Finished {
                    port: local,
                    expected,
                    load,
                },
                Held::Tls(s),
            )
        }
    }
}

fn close_client(load: Load, held: Held) {
    let Held::Tls(mut s) = held else { return };
    match load {
        Load::Bidirectional | Load::Burst => close_first(&mut s),
        Load::Abrupt => drop(s),
        Load::Reset => {
            reset_on_drop(s.get_ref());
            drop(s);
        }
        Load::Garbage | Load::Nothing => unreachable!(),
    }
}

/// A full echo and a clean close; returns the client's port, its expected line
/// and how long it took.
fn probe(ctx: &Contexts, port: u16, n: usize) -> (Finished, Duration) {
    let started = Instant::now();
    let mut s = tls_connect(ctx, port);
    let local = local_port(&s);
    let msg = format!("probe {n}");
    echo(&mut s, msg.as_bytes());
    close_first(&mut s);
    let expected = json!({"outcome": "clean", "initiator": "peer", "stage": "half_close",
                          "bytes_in": msg.len(), "bytes_out": msg.len(),
                          "tls_version": tls_name(ctx.tls)});
    let finished = Finished {
        port: local,
        expected,
        load: Load::Bidirectional,
    };
    (finished, started.elapsed())
}

/// Workers wait here with their first batch open until the main thread has
/// looked at the server; bounded, and opened on drop whatever happens.
struct Gate {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Gate {
    fn arrive_and_wait(&self) {
        let mut g = self.state.lock().unwrap();
        g.0 += 1;
        self.cv.notify_all();
        let _ = self.cv.wait_timeout_while(g, 3 * WAIT, |g| !g.1).unwrap();
    }

    fn wait_arrivals(&self, n: usize) -> bool {
        let g = self.state.lock().unwrap();
        let (_guard, timeout) = self
            .cv
            .wait_timeout_while(g, 3 * WAIT, |g| g.0 < n)
            .unwrap();
        !timeout.timed_out()
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }
}

struct OpenOnDrop<'a>(&'a Gate);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[test]
fn thousand_concurrent_clients_with_mixed_behaviours() {
    let _serial = serial();
    let started = Instant::now();
    let mut server = EchoServer::start(&["--peer-timeout-ms", "2000"]);
    // Listening socket, epoll, signal pipe, stdio: before any client.
    let baseline = server.fds();
    let port = server.port;
    let contexts = [Contexts::new(Tls::V12), Contexts::new(Tls::V13)];
    let burst = varied_bytes(BURST, 7);
    let gate = Gate {
        state: Mutex::new((0, false)),
        cv: Condvar::new(),
    };
    let running = AtomicBool::new(true);
    let held_at_gate = (0..WORKERS)
        .flat_map(|w| (0..PER_BATCH).map(move |k| load_of(w, k)))
        .filter(|&l| holds_a_connection(l))
        .count();

    let mut finished: Vec<Finished> = Vec::new();
    let mut probes: Vec<Duration> = Vec::new();
    let mut fds_at_gate = 0;
    thread::scope(|scope| {
        let open_gate = OpenOnDrop(&gate);
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (contexts, burst, gate) = (&contexts, &burst, &gate);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    for batch in 0..BATCHES {
                        let mut open = Vec::new();
                        for k in 0..PER_BATCH {
                            let nth = batch * PER_BATCH + k;
                            let id = w * BATCHES * PER_BATCH + nth;
                            let load = load_of(w, nth);
                            let ctx = &contexts[(id / 3) % 2];
                            open.push(open_client(load, id, ctx, port, burst));
                        }
                        if batch == 0 {
                            gate.arrive_and_wait();
                        }
                        for (f, held) in open {
                            close_client(f.load, held);
                            done.push(f);
                        }
                    }
                    done
                })
            })
            .collect();
        let prober = {
            let (contexts, running) = (&contexts, &running);
            scope.spawn(move || {
                let mut results = Vec::new();
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    results.push(probe(&contexts[n % 2], port, n));
                    n += 1;
                    // Pace the probes; each one is a full measured round trip.
                    thread::sleep(Duration::from_millis(100));
                }
                results
            })
        };

        assert!(
            gate.wait_arrivals(WORKERS),
            "the workers did not open their first batch within {:?}",
            3 * WAIT
        );
        // Every worker holds its first batch open now.
        fds_at_gate = server.fds();
        let (f, took) = probe(&contexts[1], port, usize::MAX);
        finished.push(f);
        probes.push(took);
        drop(open_gate);

        for w in workers {
            finished.extend(w.join().expect("worker"));
        }
        running.store(false, Ordering::Relaxed);
        for (f, took) in prober.join().expect("prober") {
            finished.push(f);
            probes.push(took);
        }
    });
    let during_run = probes.len();
    let (f, took) = probe(&contexts[0], port, usize::MAX - 1);
    finished.push(f);
    probes.push(took);

    assert!(
        fds_at_gate >= baseline + held_at_gate,
        "{held_at_gate} connections held open, the server had {fds_at_gate} fds (baseline {baseline})"
    );
    assert!(during_run >= 3, "only {during_run} probes during the run");
    let slowest = probes.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "a probe took {slowest:?}: {probes:?}"
    );
    assert_eq!(
        finished.len(),
        CLIENTS + probes.len(),
        "every client and probe finished"
    );

    // Every line matches one client on its port (ports may be reused over a run).
    let mut expected: HashMap<u16, Vec<Finished>> = HashMap::new();
    for f in finished {
        expected.entry(f.port).or_default().push(f);
    }
    let mut tally: BTreeMap<Load, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..CLIENTS + probes.len() {
        let line = server.line();
        let candidates = expected.entry(peer_port(&line)).or_default();
        let at = candidates
            .iter()
            .position(|f| {
                f.expected
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| line.get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("no client on this port expects {line}"));
        let f = candidates.swap_remove(at);
        if holds_a_connection(f.load) {
            check_server_line(&line, &f.expected, &format!("{:?}", f.load));
        } else {
            check_handshake_failed(&line, &format!("{:?}", f.load));
        }
        *tally.entry(f.load).or_default() += 1;
        *outcomes
            .entry(line["outcome"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(expected.values().all(Vec::is_empty));
    let per_20 = |n: usize| n * CLIENTS / 20;
    let want: BTreeMap<Load, usize> = [
        (Load::Bidirectional, per_20(9) + probes.len()),
        (Load::Abrupt, per_20(3)),
        (Load::Reset, per_20(3)),
        (Load::Garbage, per_20(2)),
        (Load::Nothing, per_20(2)),
        (Load::Burst, per_20(1)),
    ]
    .into_iter()
    .collect();
    assert_eq!(tally, want, "outcomes: {outcomes:?}");

    // Every socket is closed again.
    let now = wait_fds(&server, baseline, Duration::from_secs(2));
    assert_eq!(
        now, baseline,
        "the server's fds did not return to the baseline"
    );
    eprintln!(
        "1,000 clients: {:?}; {held_at_gate} held at once; {} probes, slowest {slowest:?}; {outcomes:?}",
        started.elapsed(),
        probes.len()
    );
}

// ---------------------------------------------------------------------------
