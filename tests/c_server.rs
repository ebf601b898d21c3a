//! `examples/c/echo_server.c`: one poll() loop that echoes and hands every
//! connection that is done to a `closenotify_closer` (whose fd is in the same
//! poll set), through a shutdown object when it has unsent echo or a failure to
//! hand over. It is compiled with strict flags against the C library
//! built from this tree (as `tests/c_api.rs` does, through `util::cbuild`), then
//! run with short timeouts while Rust clients on real OpenSSL misbehave at it all
//! at once (40 connections): clean, silent, not reading, truncating, resetting
//! (after the server's close_notify, and in the middle of the session), hanging
//! up on the echo (the server's own write then fails, mostly with EPIPE: its
//! SIGPIPE must not kill it), not speaking TLS, not speaking at all.
//!
//! Asserted: every connection reported exactly once, with the outcome and stage
//! its client calls for; none past its policy (the report's `elapsed_ms` and the
//! server's `closing_ms` within the policy's bound plus scheduling slack), and
//! the whole run bounded; the server's open descriptors back to their count
//! before the first client once the last report is out (the closer closes them
//! in the call that reports them, or in the next one, at once); exit status 0.
//!
//! `CLOSENOTIFY_VALGRIND=1 cargo test --test c_server` runs the server under
//! valgrind (a memory error or a definite leak fails the test); only the upper
//! time bounds are widened in that mode.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ShutdownResult, SslContext};

use util::cbuild::{self, assert_no_valgrind_errors, run_limit, spawn_c, upper_ms, valgrind_mode};
use util::echo_client::{exchange, expect_close_notify, tcp_connect, tls_connect};
use util::process::{Pems, Proc};
use util::{reset_on_drop, wait_eof, Contexts, Tls};

/// The server's policy and idle timeout in these tests.
const FLUSH_MS: u64 = 300;
const PEER_MS: u64 = 300;
const IDLE_MS: u64 = 200;

/// Scheduling slack allowed past a policy's bound (a loaded machine, two cores).
const SLACK_MS: u64 = 250;

/// Clients of each kind in the mixed run.
const EACH: usize = 4;

// ---------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------

fn echo_server() -> &'static Path {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let compiled = PROGRAM.get_or_init(|| {
        let (dir, flags) = cbuild::prepare()?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c/echo_server.c");
        cbuild::compile(&src, &dir, "echo_server", &flags)
    });
    match compiled {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

struct Server {
    proc: Proc,
    addr: SocketAddr,
    _pems: Pems,
}

impl Server {
    /// Starts the server on a free loopback port with the test's timeouts and
    /// `extra` options; returns once it printed the address it listens on.
    fn start(extra: &[&str]) -> Server {
        let pems = Pems::write();
        let (flush, peer, idle) = (
            FLUSH_MS.to_string(),
            PEER_MS.to_string(),
            IDLE_MS.to_string(),
        );
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--cert",
            pems.cert(),
            "--key",
            pems.key(),
            "--flush-timeout-ms",
            &flush,
            "--peer-timeout-ms",
            &peer,
            "--idle-timeout-ms",
            &idle,
        ];
        args.extend_from_slice(extra);
        let mut proc = spawn_c(echo_server(), &args);
        let line = proc.next_line("the listening line", run_limit());
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not a listening line: {line:?}: {}", proc.transcript()));
        Server {
            proc,
            addr,
            _pems: pems,
        }
    }

    /// The next report line, parsed.
    fn report(&mut self, limit: Duration) -> Line {
        let line = self.proc.next_line("a report line", limit);
        Line::parse(&line)
    }

    /// Descriptors the server has open now.
    fn open_fds(&self) -> Vec<String> {
        util::process::open_fds(self.proc.pid())
    }

    /// Waits for the exit: status 0, and valgrind clean in valgrind mode.
    fn expect_clean_exit(&mut self) {
        let (status, _) = self.proc.wait_exit(run_limit());
        let transcript = self.proc.transcript();
        assert_no_valgrind_errors(status, &transcript);
        assert!(status.success(), "exited with {status}: {transcript}");
    }
}

/// One report line: `key=value` pairs.
struct Line {
    text: String,
    map: HashMap<String, String>,
}

impl Line {
    fn parse(text: &str) -> Line {
        let map = text
            .split_whitespace()
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not key=value: {kv:?} in {text:?}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Line {
            text: text.to_owned(),
            map,
        }
    }

    #[track_caller]
    fn str(&self, key: &str) -> &str {
        self.map
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` in {:?}", self.text))
    }

    #[track_caller]
    fn num(&self, key: &str) -> u64 {
        let v = self.str(key);
        v.parse()
            .unwrap_or_else(|_| panic!("`{key}={v}` is not a number in {:?}", self.text))
    }

    fn port(&self) -> u16 {
        let peer = self.str("peer");
        peer.parse::<SocketAddr>()
            .unwrap_or_else(|_| panic!("`peer={peer}` is not an address in {:?}", self.text))
            .port()
    }

    /// Asserts every `key=value`.
    #[track_caller]
    fn expect(&self, pairs: &[(&str, &str)], context: &str) {
        for &(key, value) in pairs {
            assert_eq!(
                self.str(key),
                value,
                "`{key}` in {:?}\n{context}",
                self.text
            );
        }
    }

    /// Asserts `lo <= key <= hi`.
    #[track_caller]
    fn expect_range(&self, key: &str, lo: u64, hi: u64, context: &str) {
        let v = self.num(key);
        assert!(
            lo <= v && v <= hi,
            "`{key}={v}` not in [{lo}, {hi}]: {:?}\n{context}",
            self.text
        );
    }
}

// ---------------------------------------------------------------------------
// The clients: Rust on real OpenSSL, each on its own thread.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// Sends, reads the echo, sends close_notify, reads until the server's.
    Clean,
    /// Sends, reads the echo, then holds the connection without a word: the
    /// idle timeout starts the shutdown, which times out awaiting its answer.
    Silent,
    /// Sends without ever reading: the echo backs up, the server stops reading,
    /// the idle timeout starts the shutdown, and the flush times out.
    NotReading,
    /// After the echo, waits for the server's close_notify (idle timeout) and
    /// closes TCP without answering.
    Truncating,
    /// As `Truncating`, but resets (SO_LINGER {1, 0}, then close).
    Resetting,
    /// Closes TCP without close_notify right after the echo, while the server
    /// is still reading: the server's own SSL_read fails.
    Vanishing,
    /// Resets right after the echo, while the server is still reading.
    Aborting,
    /// Sends 32 KiB and closes without reading the echo: the server's echo
    /// meets a closed socket, and its own read or write fails (ECONNRESET, or
    /// EPIPE, which raises the SIGPIPE the server ignores, or EOF).
    Hangup,
    /// Speaks HTTP to the TLS port: the handshake fails.
    Garbage,
    /// Connects and never sends a byte: the handshake times out.
    Mute,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Clean,
        Kind::Silent,
        Kind::NotReading,
        Kind::Truncating,
        Kind::Resetting,
        Kind::Vanishing,
        Kind::Aborting,
        Kind::Hangup,
        Kind::Garbage,
        Kind::Mute,
    ];

    /// Whether the client exchanges one message with the server first.
    fn echoes(self) -> bool {
        !matches!(
            self,
            Kind::NotReading | Kind::Hangup | Kind::Garbage | Kind::Mute
        )
    }
}

/// What a client saw, for the checks after the run.
#[derive(Debug)]
struct Seen {
    kind: Kind,
    tls: Tls,
    port: u16,
    message: String,
    /// Application bytes written (`NotReading`, `Hangup`).
    sent: usize,
    /// How the connection ended from the client's side.
    end: String,
    /// From connect to that end.
    elapsed: Duration,
}

/// How a raw TCP stream ends: "eof" or the error kind.
fn tcp_end(tcp: &mut TcpStream) -> String {
    match wait_eof(tcp) {
        None => "eof".into(),
        Some(kind) => format!("{kind:?}"),
    }
}

/// How a client's TLS write failed, as the name of its `io::ErrorKind`. OpenSSL
/// 3.2+ queues the system error of a failed record write, so that rust-openssl
/// reports it as an SSL error (`Other`) with the errno packed in its error
/// stack rather than as an I/O error: the errno is taken from there.
fn write_end(e: &io::Error) -> String {
    // OpenSSL 3's ERR_SYSTEM_FLAG: the rest of the code is the errno.
    const SYSTEM_FLAG: std::ffi::c_ulong = 1 << 31;
    let errno = e.raw_os_error().or_else(|| {
        let ssl = e.get_ref()?.downcast_ref::<openssl::ssl::Error>()?;
        ssl.ssl_error()?
            .errors()
            .iter()
            .find(|err| err.code() & SYSTEM_FLAG != 0)
            .map(|err| (err.code() & !SYSTEM_FLAG) as i32)
    });
    let kind = errno.map_or(e.kind(), |n| io::Error::from_raw_os_error(n).kind());
    format!("{kind:?}")
}

/// Runs one client to its end. `release`: when the test lets a client that
/// holds its connection go.
fn client(
    kind: Kind,
    tls: Tls,
    ctx: SslContext,
    addr: SocketAddr,
    message: String,
    release: mpsc::Receiver<()>,
) -> Result<Seen, String> {
    let start = Instant::now();
    let mut tcp = tcp_connect(addr).map_err(|e| format!("connect: {e}"))?;
    let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
    let mut sent = 0;
    let end = match kind {
        Kind::Garbage => {
            tcp.write_all(b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            tcp_end(&mut tcp)
        }
        Kind::Mute => tcp_end(&mut tcp),
        Kind::Hangup => {
            let mut s = tls_connect(tcp, &ctx)?;
            s.write_all(&[0x68; 32 * 1024])
                .map_err(|e| format!("write: {e}"))?;
            sent = 32 * 1024;
            "dropped".into()
        }
        Kind::NotReading => {
            let mut s = tls_connect(tcp, &ctx)?;
            // Until the server gives up on us: its RST ends the blocked write.
            let chunk = vec![0x5a; 16384];
            loop {
                match s.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) => break write_end(&e),
                }
                if sent > 1 << 30 {
                    return Err(format!("{sent} bytes written and never blocked"));
                }
            }
        }
        _ => {
            let mut s = tls_connect(tcp, &ctx)?;
            exchange(&mut s, &message)?;
            match kind {
                Kind::Clean => {
                    match s.shutdown() {
                        Ok(ShutdownResult::Sent) => {}
                        other => return Err(format!("our close_notify: {other:?}")),
                    }
                    expect_close_notify(&mut s)?;
                    tcp_end(s.get_mut())
                }
                Kind::Silent => {
                    // Held until every report is in, then: the server's
                    // close_notify must be waiting for us.
                    let _ = release.recv_timeout(2 * run_limit());
                    expect_close_notify(&mut s)?;
                    "close_notify".into()
                }
                Kind::Truncating | Kind::Resetting => {
                    expect_close_notify(&mut s)?;
                    if kind == Kind::Resetting {
                        reset_on_drop(s.get_ref());
                    }
                    "close_notify".into()
                }
                Kind::Vanishing => "dropped".into(),
                Kind::Aborting => {
                    reset_on_drop(s.get_ref());
                    "dropped".into()
                }
                _ => unreachable!(),
            }
        }
    };
    Ok(Seen {
        kind,
        tls,
        port,
        message,
        sent,
        end,
        elapsed: start.elapsed(),
    })
}

// ---------------------------------------------------------------------------
// What each kind of client must get.
// ---------------------------------------------------------------------------

fn wire(tls: Tls) -> &'static str {
    match tls {
        Tls::V12 => "0x0303",
        Tls::V13 => "0x0304",
    }
}

#[track_caller]
fn check(seen: &Seen, r: &Line, context: &str) {
    let context = &format!("{seen:?}\n{context}");
    if matches!(seen.kind, Kind::Garbage | Kind::Mute) {
        r.expect(
            &[("outcome", "handshake_failed"), ("trigger", "handshake")],
            context,
        );
        if seen.kind == Kind::Garbage {
            assert!(
                r.str("error").starts_with("tls:"),
                "not a TLS error: {:?}\n{context}",
                r.text
            );
        } else {
            r.expect(&[("error", "timeout")], context);
            // The handshake bound is the idle timeout: never before it.
            assert!(
                seen.elapsed >= Duration::from_millis(IDLE_MS),
                "closed after {:?}\n{context}",
                seen.elapsed
            );
        }
        return;
    }

    // Reported by closenotify: within the policy, in the client's version.
    let policy = FLUSH_MS + PEER_MS;
    r.expect(&[("tls_version", wire(seen.tls))], context);
    r.expect_range("elapsed_ms", 0, upper_ms(policy + SLACK_MS), context);
    r.expect_range("closing_ms", 0, upper_ms(policy + SLACK_MS), context);
    if seen.kind.echoes() {
        let len = seen.message.len().to_string();
        r.expect(&[("bytes_in", &len), ("bytes_out", &len)], context);
    }
    let fast = upper_ms(SLACK_MS);
    match seen.kind {
        Kind::Clean => {
            r.expect(
                &[
                    ("outcome", "clean"),
                    ("initiator", "peer"),
                    ("stage", "half_close"),
                    ("trigger", "close_notify"),
                    ("error", "none"),
                    ("close_notify_sent", "1"),
                    ("close_notify_received", "1"),
                    ("half_closed", "1"),
                ],
                context,
            );
            r.expect_range("closing_ms", 0, fast, context);
            assert_eq!(seen.end, "eof", "{context}");
        }
        Kind::Silent => {
            r.expect(
                &[
                    ("outcome", "timed_out"),
                    ("initiator", "local"),
                    ("stage", "await_peer"),
                    ("trigger", "idle"),
                    ("close_notify_sent", "1"),
                    ("close_notify_received", "0"),
                ],
                context,
            );
            r.expect_range("elapsed_ms", PEER_MS, upper_ms(PEER_MS + SLACK_MS), context);
            r.expect_range("closing_ms", PEER_MS, upper_ms(PEER_MS + SLACK_MS), context);
        }
        Kind::NotReading => {
            // The echo left unsent was handed over with the connection: the
            // library's flush of it, then of close_notify, used the flush
            // timeout, and armed the reset.
            r.expect(
                &[
                    ("outcome", "timed_out"),
                    ("initiator", "local"),
                    ("stage", "flush"),
                    ("trigger", "idle"),
                    ("close_notify_sent", "0"),
                ],
                context,
            );
            for key in ["closing_ms", "elapsed_ms"] {
                r.expect_range(key, FLUSH_MS, upper_ms(FLUSH_MS + SLACK_MS), context);
            }
            let (bytes_in, bytes_out) = (r.num("bytes_in"), r.num("bytes_out"));
            assert!(
                bytes_out < bytes_in && bytes_in <= seen.sent as u64,
                "in {bytes_in}, out {bytes_out}, client sent {}\n{context}",
                seen.sent
            );
            // The RST of the armed reset ended the client's blocked write.
            assert!(
                matches!(seen.end.as_str(), "ConnectionReset" | "BrokenPipe"),
                "{context}"
            );
        }
        Kind::Truncating => {
            r.expect(
                &[
                    ("outcome", "truncated"),
                    ("initiator", "local"),
                    ("stage", "await_peer"),
                    ("trigger", "idle"),
                    ("close_notify_sent", "1"),
                    ("close_notify_received", "0"),
                ],
                context,
            );
            r.expect_range("elapsed_ms", 0, fast, context);
        }
        Kind::Resetting => {
            r.expect(
                &[
                    ("outcome", "reset"),
                    ("initiator", "local"),
                    ("stage", "await_peer"),
                    ("trigger", "idle"),
                    ("os_error", &libc::ECONNRESET.to_string()),
                    ("close_notify_sent", "1"),
                    ("close_notify_received", "0"),
                ],
                context,
            );
            r.expect_range("elapsed_ms", 0, fast, context);
        }
        Kind::Vanishing | Kind::Aborting => {
            // OpenSSL forbids SSL_shutdown after the failure the server's
            // SSL_read saw: handed that failure, closenotify sends nothing,
            // makes no OpenSSL call, and reports it as the server saw it.
            let (error, outcome, os_error) = if seen.kind == Kind::Vanishing {
                ("eof".to_string(), "truncated", 0)
            } else {
                (
                    format!("os:{}", libc::ECONNRESET),
                    "reset",
                    libc::ECONNRESET,
                )
            };
            r.expect(
                &[
                    ("outcome", outcome),
                    ("os_error", &os_error.to_string()),
                    ("trigger", "error"),
                    ("error", &error),
                    ("close_notify_sent", "0"),
                    ("ssl_calls", "0"),
                ],
                context,
            );
            r.expect_range("closing_ms", 0, fast, context);
        }
        Kind::Hangup => {
            r.expect(
                &[
                    ("trigger", "error"),
                    ("close_notify_sent", "0"),
                    ("ssl_calls", "0"),
                ],
                context,
            );
            // The report names the failure the server's own read or write saw.
            let error = r.str("error");
            let expected = [
                (format!("os:{}", libc::EPIPE), "reset", libc::EPIPE),
                (
                    format!("os:{}", libc::ECONNRESET),
                    "reset",
                    libc::ECONNRESET,
                ),
                ("eof".to_string(), "truncated", 0),
            ];
            let Some((_, outcome, os_error)) = expected.iter().find(|(e, ..)| e == error) else {
                panic!("`error={error}`: {:?}\n{context}", r.text);
            };
            r.expect(
                &[("outcome", outcome), ("os_error", &os_error.to_string())],
                context,
            );
            assert!(r.num("bytes_in") <= seen.sent as u64, "{context}");
            r.expect_range("closing_ms", 0, fast, context);
        }
        Kind::Garbage | Kind::Mute => unreachable!(),
    }
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// Every kind of client, `EACH` of each, half in TLS 1.2 and half in 1.3, all at
/// once; then one last clean client, the server's `--max-conns`, after which it
/// must exit 0.
#[test]
fn mixed_misbehaving_clients_each_reported_once_within_policy() {
    let clients = Kind::ALL.len() * EACH;
    let max = (clients + 1).to_string();
    let mut server = Server::start(&["--max-conns", &max]);
    let addr = server.addr;
    let baseline = server.open_fds();

    let contexts = [Contexts::new(Tls::V12), Contexts::new(Tls::V13)];
    let start = Instant::now();
    let mut releases = Vec::new();
    let mut handles = Vec::new();
    for i in 0..clients {
        let kind = Kind::ALL[i % Kind::ALL.len()];
        let tls = if (i / Kind::ALL.len()) % 2 == 0 {
            Tls::V12
        } else {
            Tls::V13
        };
        let ctx = contexts[usize::from(tls == Tls::V13)].client.clone();
        let (release, held) = mpsc::channel();
        releases.push(release);
        let message = format!("client {i}: {kind:?} in {tls:?}");
        handles.push(
            thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn(move || client(kind, tls, ctx, addr, message, held))
                .unwrap(),
        );
    }

    // Every connection reported once: one line each, distinct ids.
    let deadline = start + run_limit();
    let mut lines: HashMap<u16, Line> = HashMap::new();
    let mut ids = HashSet::new();
    for _ in 0..clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = server.report(left);
        assert!(ids.insert(r.num("conn")), "conn id twice: {:?}", r.text);
        let port = r.port();
        assert!(
            lines.insert(port, r).is_none(),
            "port {port} reported twice: {}",
            server.proc.transcript()
        );
    }
    let run = start.elapsed();

    // Every fd of a reported connection is closed: the closer closes it in the
    // call that reports it or, when deadlines were due, in a later one it asks
    // for at once when it has time (its timeout is then 0), so the count is back
    // within moments.
    let after = util::process::fds_back_to(server.proc.pid(), &baseline, Duration::from_secs(2));
    assert_eq!(
        after,
        baseline,
        "the server's fds before the clients and after the last report: {}",
        server.proc.transcript()
    );

    // The clients that hold their connections may go; each saw what it should.
    drop(releases);
    let transcript = server.proc.transcript();
    let mut per_kind: HashMap<Kind, usize> = HashMap::new();
    let mut epipe = 0;
    for handle in handles {
        let name = handle.thread().name().unwrap_or("client").to_owned();
        let seen = handle
            .join()
            .unwrap_or_else(|_| panic!("{name} panicked"))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{transcript}"));
        let r = lines
            .remove(&seen.port)
            .unwrap_or_else(|| panic!("no report for {seen:?} (port {}): {transcript}", seen.port));
        check(&seen, &r, &transcript);
        if r.str("error") == format!("os:{}", libc::EPIPE) {
            epipe += 1; // the server's own write raised SIGPIPE
        }
        *per_kind.entry(seen.kind).or_default() += 1;
    }
    assert!(lines.is_empty(), "reports of no client: {:?}", lines.keys());
    assert!(Kind::ALL.iter().all(|k| per_kind[k] == EACH));

    // The whole run: the slowest client ends by idle + flush + peer timeouts
    // (each kind reaches at most two of them), whatever the others do. Under
    // valgrind the server's crypto dominates instead: each client that never
    // reads has it decrypt and encrypt about 4 MB (the kernel's send buffer on
    // loopback) before its echo backs up, which takes seconds there.
    let bound = if valgrind_mode() {
        60_000
    } else {
        IDLE_MS + FLUSH_MS + PEER_MS + 1500
    };
    assert!(
        run <= Duration::from_millis(bound),
        "{clients} connections took {run:?} (bound {bound} ms): {transcript}"
    );

    // The last connection: reported, and the server exits.
    let tls = Tls::V13;
    let (_, held) = mpsc::channel();
    let seen = client(
        Kind::Clean,
        tls,
        contexts[1].client.clone(),
        addr,
        "the last one".into(),
        held,
    )
    .unwrap_or_else(|e| panic!("last client: {e}"));
    let r = server.report(run_limit());
    assert_eq!(r.port(), seen.port, "{:?}", r.text);
    assert_eq!(r.num("conn"), clients as u64 + 1, "{:?}", r.text);
    check(&seen, &r, &server.proc.transcript());
    server.expect_clean_exit();
    eprintln!(
        "{clients} concurrent connections reported in {run:?}; server fds {} before and \
         after; {epipe} echo writes failed with EPIPE (SIGPIPE ignored)",
        baseline.len()
    );
}

/// `--tls12` caps the version; `--max-conns 1` ends the server after one.
#[test]
fn tls12_caps_the_version_and_max_conns_ends_the_server() {
    let mut server = Server::start(&["--tls12", "--max-conns", "1"]);
    // A client that would take TLS 1.3.
    let ctx = {
        let mut b =
            openssl::ssl::SslContextBuilder::new(openssl::ssl::SslMethod::tls_client()).unwrap();
        b.set_verify(openssl::ssl::SslVerifyMode::NONE);
        b.build()
    };
    let (_, held) = mpsc::channel();
    let seen = client(
        Kind::Clean,
        Tls::V12,
        ctx,
        server.addr,
        "capped".into(),
        held,
    )
    .unwrap_or_else(|e| panic!("client: {e}"));
    let r = server.report(run_limit());
    check(&seen, &r, &server.proc.transcript());
    server.expect_clean_exit();
}

#[test]
fn usage_errors_exit_2_and_a_bad_certificate_1() {
    let program = echo_server();
    for args in [
        &[][..],
        &["--cert", "c.pem"][..],
        &["--cert", "c.pem", "--key", "k.pem", "--bogus"][..],
        &[
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--idle-timeout-ms",
            "0",
        ][..],
        &[
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--flush-timeout-ms",
            "x",
        ][..],
        &["--cert", "c.pem", "--key", "k.pem", "--max-conns"][..],
        &["--cert", "c.pem", "--key", "k.pem", "--listen", "nowhere"][..],
    ] {
        cbuild::assert_usage_error(program, args);
    }
    cbuild::assert_bad_certificate(program);
}
