//! The echo examples (SPEC §6) as real processes on real loopback sockets:
//! `echo_client` against `echo_server` in every close mode and server mode, in
//! TLS 1.2 and 1.3; `openssl s_client` against `echo_server`; `echo_client`
//! against `openssl s_server`; the server's idle timeout; 1,000 concurrent clients
//! with mixed behaviours; SIGTERM with open connections; bad command lines.
//!
//! Every JSON line is parsed with serde_json and compared field by field. Every
//! wait is bounded, and every child process is killed and reaped on drop.
//!
//! The examples run from `target/<profile>/examples`; the first test that needs
//! them runs `cargo build --example ...` with this binary's profile, so that
//! `cargo test --test echo` runs the examples as they are now. The `openssl`
//! tool must be on `PATH`.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, ShutdownResult, Ssl, SslStream};
use serde_json::{json, Value};
use util::process::{self, Job, Pems, Proc, Ran};
use util::{read_until_close_notify, reset_on_drop, wait_eof, Contexts, Tls, BOTH};

/// The bound of every wait for a process, a line or a socket.
const WAIT: Duration = Duration::from_secs(10);

/// Tests that measure time or put load on the machine run one at a time (CI
/// machines may have two CPUs); the others run alongside.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Processes.
// ---------------------------------------------------------------------------

/// `target/<profile>`, from this test's own path (`target/<profile>/deps/echo-HASH`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
}

/// Builds the examples once per test binary, with this binary's profile and
/// target directory: `cargo test` builds them too, but `cargo test --test echo`
/// does not, and a copy left by an earlier build may be stale. A no-op when they
/// are up to date.
fn build_examples() -> Result<PathBuf, String> {
    let profile = profile_dir();
    let name = profile
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "echo_server",
        "--example",
        "echo_client",
    ]);
    // The tokio client exists with the feature only (the features of this build).
    if cfg!(feature = "tokio") {
        cmd.args(["--features", "tokio", "--example", "tokio_echo_client"]);
    }
    cmd.arg("--manifest-path")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    match name {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // target/<profile>, or target/<triple>/<profile> with --target.
    let up = profile.parent().expect("target directory");
    if up.join("CACHEDIR.TAG").is_file() {
        cmd.arg("--target-dir").arg(up);
    } else if let Some(root) = up.parent().filter(|r| r.join("CACHEDIR.TAG").is_file()) {
        cmd.arg("--target-dir")
            .arg(root)
            .arg("--target")
            .arg(up.file_name().unwrap());
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the examples failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(profile.join("examples"))
}

/// The path of an example program, built and up to date.
fn example(name: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR
        .get_or_init(build_examples)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing after the build",
        path.display()
    );
    path
}

fn command(program: &str) -> Command {
    let mut cmd = match program {
        "echo_server" | "echo_client" | "tokio_echo_client" => Command::new(example(program)),
        other => Command::new(other),
    };
    // env_logger would add lines to stderr, where the client's report is the last.
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A long-running `program` (see `util::process::Proc`).
fn spawn(program: &str, args: &[String]) -> Proc {
    Proc::spawn_cmd(command(program), program, args)
}

/// Runs `program args` to completion with `stdin` as its input, within `limit`.
fn run(program: &str, args: &[String], stdin: &[u8], limit: Duration) -> Ran {
    Job::start(command(program), program, args, stdin).wait(limit)
}

impl Ran {
    /// The last stderr line, as JSON (the client's report).
    fn report(&self) -> Value {
        let last = self.stderr.lines().last().unwrap_or_else(|| {
            panic!("{}: nothing on stderr", self.what);
        });
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{}: last stderr line is not JSON ({e}): {last}", self.what))
    }
}

// ---------------------------------------------------------------------------
// echo_server.
// ---------------------------------------------------------------------------

/// The keys of every per-connection line of `echo_server --json` (SPEC §6).
const SERVER_KEYS: [&str; 12] = [
    "peer",
    "outcome",
    "initiator",
    "stage",
    "alert",
    "alert_name",
    "bytes_in",
    "bytes_out",
    "discarded_bytes",
    "elapsed_ms",
    "tls_version",
    "session_resumable",
];

/// The keys of the client's `--json` report.
const CLIENT_KEYS: [&str; 11] = [
    "outcome",
    "initiator",
    "stage",
    "alert",
    "alert_name",
    "os_error",
    "bytes_echoed",
    "discarded_bytes",
    "elapsed_ms",
    "tls_version",
    "session_resumable",
];

struct EchoServer {
    proc: Proc,
    port: u16,
}

impl EchoServer {
    /// `echo_server --listen 127.0.0.1:0 --json ARGS`; returns once it listens.
    fn start(args: &[&str]) -> EchoServer {
        let mut all: Vec<String> = ["--listen", "127.0.0.1:0", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let mut proc = spawn("echo_server", &all);
        let first = proc.next_line("the listening line", WAIT);
        let v: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("first line is not JSON ({e}): {}", proc.transcript()));
        let obj = v.as_object().expect("an object");
        assert_eq!(obj.len(), 1, "{v}");
        let addr: SocketAddr = obj["listening"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {v}"));
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{v}");
        assert_ne!(addr.port(), 0, "{v}");
        EchoServer {
            proc,
            port: addr.port(),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The next stdout line, parsed as JSON (every line must be).
    fn line(&mut self) -> Value {
        let line = self.proc.next_line("a connection's line", WAIT);
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "not a JSON line ({e}): {line:?}\n{}",
                self.proc.transcript()
            )
        })
    }

    /// Open file descriptors of the server process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped before drop.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
}

/// The port of a `"peer":"127.0.0.1:PORT"` field.
fn peer_port(v: &Value) -> u16 {
    let peer: SocketAddr = v["peer"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer address in {v}"));
    assert_eq!(peer.ip().to_string(), "127.0.0.1", "{v}");
    peer.port()
}

/// Every field of `expected` equals the same field of `v`.
#[track_caller]
fn check(v: &Value, expected: &Value, what: &str) {
    for (key, want) in expected.as_object().expect("expected is an object") {
        assert_eq!(v.get(key), Some(want), "{what}: field {key:?} of {v}");
    }
}

/// A per-connection server line: has exactly the SPEC's keys, and `expected`.
#[track_caller]
fn check_server_line(v: &Value, expected: &Value, what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = SERVER_KEYS.to_vec();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "{what}: keys of {v}");
    check(v, expected, what);
}

/// A `handshake_failed` line: the peer, the outcome and a non-empty error.
#[track_caller]
fn check_handshake_failed(v: &Value, what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "outcome", "peer"], "{what}: {v}");
    assert_eq!(v["outcome"], json!("handshake_failed"), "{what}: {v}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {v}"
    );
}

fn ms_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

// ---------------------------------------------------------------------------
// In-process TLS clients (rust-openssl), for what a process cannot do.
// ---------------------------------------------------------------------------

fn tls_name(tls: Tls) -> &'static str {
    tls.name()
}

/// Connects to the echo server and handshakes; blocking, with bounded I/O.
fn tls_connect(ctx: &Contexts, port: u16) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to echo_server");
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    Ssl::new(&ctx.client)
        .unwrap()
        .connect(tcp)
        .expect("handshake with echo_server")
}

fn local_port(s: &SslStream<TcpStream>) -> u16 {
    s.get_ref().local_addr().unwrap().port()
}

/// Sends `msg` and reads exactly its echo.
#[track_caller]
fn echo(s: &mut SslStream<TcpStream>, msg: &[u8]) {
    s.write_all(msg).expect("send");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo");
    assert!(back == msg, "the echo differs from what was sent");
}

/// The orderly client close: our close_notify first, then the server's answer.
#[track_caller]
fn close_first(s: &mut SslStream<TcpStream>) {
    assert_eq!(
        s.shutdown().expect("send close_notify"),
        ShutdownResult::Sent
    );
    let rest = read_until_close_notify(s).expect("the server's close_notify");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
}

/// Deterministic bytes with every value, different per seed.
fn varied_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// 1. echo_client -> echo_server: every close mode, every server mode, both versions.
// ---------------------------------------------------------------------------

/// A message with varied text: quotes, backslashes, tabs, newlines, control
/// characters and multi-byte UTF-8 (`--message` takes text; NUL cannot be in an
/// argument). The binary message goes through stdin.
const TEXT: &str = "héllo, wörld! \"quoted\" \\back\\slash\ttab\nnew line\r\n\u{1}\u{7f} ✓ 🦀 end";

/// What one client run must show.
struct Expect {
    exit: i32,
    /// Fields of the client's JSON report (the last stderr line).
    client: Value,
    /// Fields of the server's line for the connection.
    server: Value,
}

/// The expectations, from echo_client.rs, echo_server.rs and SPEC §1/§6.
///
/// - The client's close_notify (`bidirectional`, `send-only`) is answered by the
///   server after the echo: `clean`, initiator `peer`, stage `half_close`; a
///   `quiet` server sends no close_notify, even in answer (`quiet`, initiator
///   `peer`), so a bidirectional client waiting for it sees the TCP EOF:
///   `truncated`.
/// - A client that ends without close_notify (`quiet`, `abrupt`) is an EOF in the
///   server's read: `truncated`; `reset` is ECONNRESET: `reset`. OpenSSL forbids a
///   shutdown after those errors, so the server sends nothing (stage `flush`,
///   initiator `local`), whatever its mode.
/// - `never`: the idle timeout starts the server's shutdown (initiator `local`): a
///   `send-only` server reports `sent_only`, a `quiet` one `quiet`, and a
///   `bidirectional` one waits for a close_notify that never comes: `timed_out` in
///   `await_peer` (see `never_client_is_timed_out_by_a_bidirectional_server`).
fn expect(server_mode: &str, close: &str, tls: Tls, len: usize) -> Expect {
    let v = tls_name(tls);
    let answered = server_mode != "quiet";
    let server_answers = |client_initiated: bool| {
        if answered {
            json!({"outcome": "clean", "initiator": "peer", "stage": "half_close",
                   "session_resumable": true})
        } else {
            json!({"outcome": "quiet",
                   "initiator": if client_initiated { "peer" } else { "local" },
                   "stage": "flush"})
        }
    };
    let client_report = |outcome: &str, stage: &str, resumable: bool| {
        json!({"outcome": outcome, "initiator": "local", "stage": stage, "alert": null,
               "alert_name": null, "os_error": null, "bytes_echoed": len,
               "discarded_bytes": 0, "tls_version": v, "session_resumable": resumable})
    };
    let misbehaved = json!({"close": close, "bytes_echoed": len});
    let (exit, client, mut server) = match close {
        "bidirectional" if answered => (
            0,
            client_report("clean", "await_peer", true),
            server_answers(true),
        ),
        "bidirectional" => (
            1,
            client_report("truncated", "await_peer", false),
            server_answers(true),
        ),
        "send-only" => (
            0,
            client_report("sent_only", "half_close", true),
            server_answers(true),
        ),
        "quiet" => (
            1,
            client_report("quiet", "flush", false),
            json!({"outcome": "truncated", "initiator": "local", "stage": "flush"}),
        ),
        "abrupt" => (
            1,
            misbehaved,
            json!({"outcome": "truncated", "initiator": "local", "stage": "flush"}),
        ),
        "reset" => (
            1,
            misbehaved,
            json!({"outcome": "reset", "initiator": "local", "stage": "flush"}),
        ),
        "never" => (
            1,
            misbehaved,
            match server_mode {
                "bidirectional" => {
                    json!({"outcome": "timed_out", "initiator": "local", "stage": "await_peer"})
                }
                "send-only" => json!({"outcome": "sent_only", "initiator": "local",
                                      "stage": "half_close", "session_resumable": true}),
                _ => server_answers(false),
            },
        ),
        other => unreachable!("{other}"),
    };
    let fields = server.as_object_mut().unwrap();
    for (key, value) in [
        ("bytes_in", json!(len)),
        ("bytes_out", json!(len)),
        ("discarded_bytes", json!(0)),
        ("alert", Value::Null),
        ("alert_name", Value::Null),
        ("tls_version", json!(v)),
    ] {
        fields.insert(key.to_string(), value);
    }
    Expect {
        exit,
        client,
        server,
    }
}

/// Runs one `client` (echo_client, or tokio_echo_client, which must behave the
/// same) against `server` and checks the client's output, exit code and report,
/// and the server's line for the connection (clients run one at a time per
/// server, so the next line is this client's).
fn client_run(
    client: &str,
    server: &mut EchoServer,
    server_mode: &str,
    close: &str,
    tls: Tls,
    msg: &[u8],
    via_stdin: bool,
) {
    let mut args = strings(&[
        "--connect",
        &server.addr(),
        "--insecure",
        "--json",
        "--close",
        close,
        "--peer-timeout-ms",
        "3000",
    ]);
    if tls == Tls::V12 {
        args.push("--tls12".into());
    }
    if !via_stdin {
        args.push("--message".into());
        args.push(std::str::from_utf8(msg).unwrap().into());
    }
    let input: &[u8] = if via_stdin { msg } else { b"" };
    let what = format!(
        "server --mode {server_mode}, {client} --close {close}, {tls:?}, {} bytes{}",
        msg.len(),
        if via_stdin { " via stdin" } else { "" }
    );
    let e = expect(server_mode, close, tls, msg.len());
    if close == "never" {
        return never_run(client, server, &args, input, msg, &e, &what, server_mode);
    }
    let r = run(client, &args, input, WAIT);

    assert!(
        r.stdout == msg,
        "{what}: the echo on stdout differs ({} bytes, expected {}); stderr: {}",
        r.stdout.len(),
        msg.len(),
        r.stderr
    );
    assert_eq!(
        r.code(),
        Some(e.exit),
        "{what}: exit status; stderr: {}",
        r.stderr
    );
    let report = r.report();
    let obj = report.as_object().unwrap();
    if e.client.get("outcome").is_some() {
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = CLIENT_KEYS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "{what}: {report}");
        assert!(ms_field(&report, "elapsed_ms") < 1000, "{what}: {report}");
    } else {
        assert_eq!(obj.len(), 2, "{what}: {report}");
    }
    check(&report, &e.client, &what);

    let line = server.line();
    peer_port(&line); // a loopback address
    check_server_line(&line, &e.server, &format!("{what}: server line"));
    let elapsed = ms_field(&line, "elapsed_ms");
    if close == "never" && server_mode == "bidirectional" {
        assert!(
            elapsed >= 300,
            "{what}: waited {elapsed} ms, not the peer timeout"
        );
    } else {
        assert!(elapsed < 1000, "{what}: {line}");
    }
}

/// `--close never` holds the connection until it is killed (or reset): the server's
/// line comes while the client still holds it; then the client is killed.
#[allow(clippy::too_many_arguments)]
fn never_run(
    client: &str,
    server: &mut EchoServer,
    args: &[String],
    input: &[u8],
    msg: &[u8],
    e: &Expect,
    what: &str,
    server_mode: &str,
) {
    let mut child = Job::start(command(client), client, args, input);

    let line = server.line();
    peer_port(&line);
    check_server_line(&line, &e.server, &format!("{what}: server line"));
    let elapsed = ms_field(&line, "elapsed_ms");
    if server_mode == "bidirectional" {
        assert!(
            elapsed >= 300,
            "{what}: waited {elapsed} ms, not the peer timeout"
        );
    } else {
        assert!(elapsed < 1000, "{what}: {line}");
    }
    assert!(
        child.is_running(),
        "{what}: the client stopped holding the connection"
    );
    let r = child.kill();
    assert!(
        r.stdout == msg,
        "{what}: the echo on stdout differs ({} bytes, expected {}); stderr: {}",
        r.stdout.len(),
        msg.len(),
        r.stderr
    );
}

#[test]
fn echo_client_against_echo_server_every_close_and_server_mode() {
    every_close_and_server_mode("echo_client");
}

/// The tokio client does what echo_client does: the same expectations.
#[cfg(feature = "tokio")]
#[test]
fn tokio_echo_client_against_echo_server_every_close_and_server_mode() {
    every_close_and_server_mode("tokio_echo_client");
}

fn every_close_and_server_mode(client: &str) {
    let _serial = serial();
    let big = varied_bytes(1 << 20, 1);
    thread::scope(|scope| {
        for server_mode in ["bidirectional", "send-only", "quiet"] {
            let big = &big;
            scope.spawn(move || {
                // The idle timeout ends `never` clients; the others finish well
                // before it.
                let mut server = EchoServer::start(&[
                    "--mode",
                    server_mode,
                    "--idle-timeout-ms",
                    "400",
                    "--peer-timeout-ms",
                    "300",
                ]);
                for tls in BOTH {
                    for close in [
                        "bidirectional",
                        "send-only",
                        "quiet",
                        "abrupt",
                        "reset",
                        "never",
                    ] {
                        if close == "never" && server_mode == "bidirectional" {
                            continue; // see never_client_is_timed_out_by_a_bidirectional_server
                        }
                        let text = TEXT.as_bytes();
                        client_run(client, &mut server, server_mode, close, tls, text, false);
                        client_run(client, &mut server, server_mode, close, tls, big, true);
                    }
                }
            });
        }
    });
}

/// `--close never` must hold the connection until the server closes it, so a
/// bidirectional server waits for the close_notify that never comes and reports
/// `timed_out` in `await_peer` after `--peer-timeout-ms`.
#[test]
fn never_client_is_timed_out_by_a_bidirectional_server() {
    let _serial = serial();
    let mut server = EchoServer::start(&["--idle-timeout-ms", "300", "--peer-timeout-ms", "300"]);
    for tls in BOTH {
        client_run(
            "echo_client",
            &mut server,
            "bidirectional",
            "never",
            tls,
            TEXT.as_bytes(),
            false,
        );
    }
}

// ---------------------------------------------------------------------------
// 2. openssl s_client -> echo_server.
// ---------------------------------------------------------------------------

fn openssl_flag(tls: Tls) -> &'static str {
    match tls {
        Tls::V12 => "-tls1_2",
        Tls::V13 => "-tls1_3",
    }
}

/// `openssl s_client` connected to `server`, once it has printed the echo of a
/// line: everything the server sent (Finished, tickets, echo) has been read.
/// `-quiet` implies `-ign_eof`; `-no_ign_eof` after it makes stdin EOF send
/// close_notify.
fn s_client(server: &EchoServer, tls: Tls) -> Proc {
    let mut client = spawn(
        "openssl",
        &strings(&[
            "s_client",
            "-connect",
            &server.addr(),
            "-quiet",
            "-no_ign_eof",
            openssl_flag(tls),
        ]),
    );
    client.write_stdin(b"ping\n");
    client.wait_line("the echo of ping", WAIT, |l| l == "ping");
    client
}

fn s_client_line(tls: Tls, outcome: &str, initiator: &str, stage: &str) -> Value {
    json!({"outcome": outcome, "initiator": initiator, "stage": stage, "bytes_in": 5,
           "bytes_out": 5, "alert": null, "alert_name": null, "discarded_bytes": 0,
           "tls_version": tls_name(tls)})
}

#[test]
fn s_client_closing_on_stdin_eof_is_clean_peer_initiated() {
    let _serial = serial();
    let mut server = EchoServer::start(&[]);
    for tls in BOTH {
        let mut client = s_client(&server, tls);
        client.close_stdin();
        let line = server.line();
        let what = format!("{tls:?}: {}", client.transcript());
        check_server_line(
            &line,
            &s_client_line(tls, "clean", "peer", "half_close"),
            &what,
        );
        assert_eq!(line["session_resumable"], json!(true), "{what}: {line}");
        let (status, _) = client.wait_exit(WAIT);
        assert!(status.success(), "{what}: {status}");
    }
}

#[test]
fn s_client_killed_after_the_echo_is_truncated() {
    let _serial = serial();
    let mut server = EchoServer::start(&[]);
    for tls in BOTH {
        let mut client = s_client(&server, tls);
        // Nothing is left unread in s_client's socket: the kill closes it with a
        // FIN, not an RST.
        client.kill();
        let line = server.line();
        let what = format!("{tls:?}: {}", client.transcript());
        check_server_line(
            &line,
            &s_client_line(tls, "truncated", "local", "flush"),
            &what,
        );
    }
}

// ---------------------------------------------------------------------------
// 3. echo_client -> openssl s_server.
// ---------------------------------------------------------------------------

/// `openssl s_server` for one connection on a port it picks, once it listens,
/// and its address (see `util::process::s_server`).
fn s_server(extra: &[&str], pems: &Pems) -> (Proc, String) {
    let (server, addr) = process::s_server(pems, extra, WAIT);
    (server, addr.to_string())
}

fn client_args(addr: &str, close: &str, tls: Tls, msg: &str) -> Vec<String> {
    let mut args = strings(&[
        "--connect",
        addr,
        "--insecure",
        "--json",
        "--close",
        close,
        "--message",
        msg,
    ]);
    if tls == Tls::V12 {
        args.push("--tls12".into());
    }
    args
}

/// `s_server -rev` sends every line back reversed (same length): our client's
/// echo is the reversed lines, and its close is reported against s_server's real
/// answer.
#[test]
fn echo_client_against_s_server_rev() {
    let _serial = serial();
    let pems = Pems::write();
    let msg = "hello world\nsecond line, longer\n";
    let reversed: Vec<u8> = msg
        .lines()
        .flat_map(|l| l.bytes().rev().chain(std::iter::once(b'\n')))
        .collect();
    for tls in BOTH {
        for (close, outcome, stage) in [
            ("bidirectional", "clean", "await_peer"),
            ("send-only", "sent_only", "half_close"),
        ] {
            let (mut server, addr) = s_server(&["-rev"], &pems);
            let r = run(
                "echo_client",
                &client_args(&addr, close, tls, msg),
                b"",
                WAIT,
            );
            let what = format!("{tls:?} --close {close}: {}", r.stderr);
            assert_eq!(r.stdout, reversed, "{what}");
            assert_eq!(r.code(), Some(0), "{what}");
            check(
                &r.report(),
                &json!({"outcome": outcome, "initiator": "local", "stage": stage,
                        "alert": null, "os_error": null, "bytes_echoed": msg.len(),
                        "discarded_bytes": 0, "tls_version": tls_name(tls),
                        "session_resumable": true}),
                &what,
            );
            // s_server saw the end of its one connection and exits by itself.
            let (status, _) = server.wait_exit(WAIT);
            assert!(status.success(), "{what}: {}", server.transcript());
        }
    }
}

/// Plain `s_server` does not echo: it prints what it receives and answers our
/// close_notify ("DONE"). The client gets no echo and a clean end.
#[test]
fn echo_client_against_plain_s_server_gets_no_echo_and_a_clean_close() {
    let _serial = serial();
    let pems = Pems::write();
    let msg = "first line\nsecond line\n";
    for tls in BOTH {
        let (mut server, addr) = s_server(&[], &pems);
        let r = run(
            "echo_client",
            &client_args(&addr, "bidirectional", tls, msg),
            b"",
            WAIT,
        );
        let what = format!("{tls:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{what}");
        assert_eq!(r.code(), Some(0), "{what}");
        check(
            &r.report(),
            &json!({"outcome": "clean", "initiator": "local", "stage": "await_peer",
                    "bytes_echoed": 0, "discarded_bytes": 0, "tls_version": tls_name(tls),
                    "session_resumable": true}),
            &what,
        );
        let (status, lines) = server.wait_exit(WAIT);
        assert!(status.success(), "{what}: {}", server.transcript());
        let at = |l: &str| lines.iter().position(|x| x == l);
        let (first, second, done) = (at("first line"), at("second line"), at("DONE"));
        assert!(
            first.is_some() && first < second && second < done,
            "s_server did not print the message, then DONE: {}",
            server.transcript()
        );
    }
}

// ---------------------------------------------------------------------------
// 4. The server's idle timeout.
// ---------------------------------------------------------------------------

/// A client that answers the server's close_notify: `clean`, initiator `local`.
#[test]
fn idle_timeout_with_a_client_that_answers_is_clean_local() {
    let _serial = serial();
    let mut server = EchoServer::start(&["--idle-timeout-ms", "300", "--peer-timeout-ms", "2000"]);
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let mut s = tls_connect(&ctx, server.port);
        let port = local_port(&s);
        echo(&mut s, b"idle soon");
        let quiet_since = Instant::now();
        // The server's close_notify comes after 300 ms without data.
        let data = read_until_close_notify(&mut s).expect("the server's close_notify");
        let waited = quiet_since.elapsed();
        assert!(data.is_empty(), "{tls:?}: {data:?}");
        // Not at once, but after the idle timeout (which runs from the server's
        // last read, a little before `quiet_since`).
        assert!(
            waited >= Duration::from_millis(250),
            "{tls:?}: after {waited:?}"
        );
        assert_eq!(s.shutdown().expect("answer"), ShutdownResult::Received);
        // The server then closes with a FIN (no RST).
        assert_eq!(wait_eof(s.get_mut()), None, "{tls:?}");

        let line = server.line();
        assert_eq!(peer_port(&line), port);
        check_server_line(
            &line,
            &json!({"outcome": "clean", "initiator": "local", "stage": "await_peer",
                    "bytes_in": 9, "bytes_out": 9, "discarded_bytes": 0, "alert": null,
                    "tls_version": tls_name(tls), "session_resumable": true}),
            &format!("{tls:?}"),
        );
        assert!(ms_field(&line, "elapsed_ms") < 1000, "{line}");
    }
}

/// A client that never answers: `timed_out` in `await_peer` after the peer
/// timeout; that timeout does not reset (the default policy resets only on a
/// flush timeout), so the client sees the close_notify and a FIN.
#[test]
fn idle_timeout_with_a_silent_client_times_out_in_await_peer() {
    let _serial = serial();
    let mut server = EchoServer::start(&["--idle-timeout-ms", "300", "--peer-timeout-ms", "300"]);
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let mut s = tls_connect(&ctx, server.port);
        let port = local_port(&s);
        echo(&mut s, b"then silence");
        // Hold the connection: read nothing, answer nothing.
        let line = server.line();
        assert_eq!(peer_port(&line), port);
        check_server_line(
            &line,
            &json!({"outcome": "timed_out", "initiator": "local", "stage": "await_peer",
                    "bytes_in": 12, "bytes_out": 12, "discarded_bytes": 0, "alert": null,
                    "tls_version": tls_name(tls)}),
            &format!("{tls:?}"),
        );
        let elapsed = ms_field(&line, "elapsed_ms");
        assert!((300..1000).contains(&elapsed), "{tls:?}: {line}");
        // The server's close_notify, then a FIN.
        let data = read_until_close_notify(&mut s).expect("close_notify");
        assert!(data.is_empty());
        assert_eq!(wait_eof(s.get_mut()), None, "{tls:?}: reset instead of FIN");
    }
}

/// A client that writes 20 MB and never reads: the server stops reading once 1 MiB
/// of echo is pending, the idle timeout starts its shutdown, the echo and the
/// close_notify cannot be flushed: `timed_out` in `flush`, and the connection is
/// reset.
#[test]
fn idle_timeout_with_a_client_that_never_reads_times_out_in_flush_and_resets() {
    let _serial = serial();
    let mut server = EchoServer::start(&["--idle-timeout-ms", "300", "--flush-timeout-ms", "300"]);
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let mut s = tls_connect(&ctx, server.port);
        let port = local_port(&s);
        let data = vec![0x5a_u8; 20 << 20];
        let started = Instant::now();
        let err = s
            .write_all(&data)
            .expect_err("the server must reset a peer that never reads");
        let kind = err.kind();
        assert!(
            matches!(
                kind,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{tls:?}: {err} after {:?}",
            started.elapsed()
        );
        let line = server.line();
        assert_eq!(peer_port(&line), port);
        check_server_line(
            &line,
            &json!({"outcome": "timed_out", "initiator": "local", "stage": "flush",
                    "alert": null, "tls_version": tls_name(tls)}),
            &format!("{tls:?}"),
        );
        let elapsed = ms_field(&line, "elapsed_ms");
        assert!((300..1000).contains(&elapsed), "{tls:?}: {line}");
        assert!(
            ms_field(&line, "bytes_out") < ms_field(&line, "bytes_in"),
            "{line}"
        );
    }
}

/// Writes `data` and reads its echo on a non-blocking socket, reading only when
/// it cannot write: a client that writes faster than it reads, but never stops
/// reading for good. Returns the echo, or the first hard error.
fn duplex(s: &mut SslStream<TcpStream>, data: &[u8]) -> Result<Vec<u8>, openssl::ssl::Error> {
    s.get_ref().set_nonblocking(true).unwrap();
    let fd = s.get_ref().as_raw_fd();
    let deadline = Instant::now() + WAIT;
    let (mut written, mut echo, mut buf) = (0, Vec::new(), vec![0u8; 16384]);
    while echo.len() < data.len() {
        let mut progress = false;
        if written < data.len() {
            // A retry after WANT_WRITE passes the same slice, as OpenSSL requires.
            let end = (written + 16384).min(data.len());
            match s.ssl_write(&data[written..end]) {
                Ok(n) => {
                    // Write ahead: read only when the socket takes no more.
                    written += n;
                    continue;
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
                Err(e) => return Err(e),
            }
        }
        match s.ssl_read(&mut buf) {
            Ok(n) => {
                echo.extend_from_slice(&buf[..n]);
                progress = true;
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
            Err(e) => return Err(e),
        }
        if !progress {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no progress within {WAIT:?}: {} of {} echoed",
                echo.len(),
                data.len()
            );
            let events = if written < data.len() {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            };
            util::wait_for(fd, events, left);
        }
    }
    s.get_ref().set_nonblocking(false).unwrap();
    Ok(echo)
}

/// A client that writes 16 MB ahead of its reading (it reads only when it cannot
/// write): the server's writes block (WANT_WRITE) while it keeps reading. It must
/// get all of its echo and a clean end.
#[test]
fn client_that_reads_slower_than_it_writes_gets_its_whole_echo() {
    let _serial = serial();
    let mut server = EchoServer::start(&[]);
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let addr: SocketAddr = server.addr().parse().unwrap();
        socket.connect(&addr.into()).unwrap();
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        let mut s = Ssl::new(&ctx.client)
            .unwrap()
            .connect(tcp)
            .expect("handshake");
        let port = local_port(&s);
        let data = varied_bytes(16 << 20, 3);
        let echoed = match duplex(&mut s, &data) {
            Ok(echoed) => echoed,
            Err(e) => {
                let line = server.line();
                panic!("{tls:?}: the client failed ({e}); the server said {line}");
            }
        };
        assert!(echoed == data, "{tls:?}: the echo differs");
        close_first(&mut s);
        let line = server.line();
        let what = format!("{tls:?}: server line {line}");
        assert_eq!(peer_port(&line), port);
        check_server_line(
            &line,
            &json!({"outcome": "clean", "initiator": "peer", "stage": "half_close",
                    "bytes_in": data.len(), "bytes_out": data.len(),
                    "tls_version": tls_name(tls)}),
            &what,
        );
    }
}

// ---------------------------------------------------------------------------
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

/// Waits (bounded) until the server has `n` file descriptors open.
fn wait_fds(server: &EchoServer, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let now = server.fds();
        if now == n || Instant::now() >= deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(5));
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
// 6. SIGTERM with open connections.
// ---------------------------------------------------------------------------

#[test]
fn sigterm_shuts_every_open_connection_down_and_exits_0() {
    const N: usize = 100;
    let _serial = serial();
    let mut server = EchoServer::start(&["--flush-timeout-ms", "500", "--peer-timeout-ms", "500"]);
    let baseline = server.fds();
    let contexts = Arc::new([Contexts::new(Tls::V12), Contexts::new(Tls::V13)]);
    let (ready_tx, ready_rx) = mpsc::channel();
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let (contexts, ready) = (contexts.clone(), ready_tx.clone());
            let port = server.port;
            thread::spawn(move || {
                let ctx = &contexts[i % 2];
                let mut s = tls_connect(ctx, port);
                echo(&mut s, format!("client {i:03}").as_bytes());
                ready.send((local_port(&s), ctx.tls)).unwrap();
                // Hold it open; answer the server's close_notify when it comes.
                let data = read_until_close_notify(&mut s).map_err(|e| e.to_string());
                let answer = s.shutdown().map_err(|e| e.to_string());
                let eof = wait_eof(s.get_mut());
                (data, answer, eof)
            })
        })
        .collect();
    let mut ports = HashMap::new();
    for _ in 0..N {
        let (port, tls) = ready_rx
            .recv_timeout(WAIT)
            .expect("a client connected and echoed");
        ports.insert(port, tls);
    }
    assert_eq!(wait_fds(&server, baseline + N, WAIT), baseline + N);

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    for _ in 0..N {
        let line = server.line();
        let tls = ports
            .remove(&peer_port(&line))
            .unwrap_or_else(|| panic!("not one of the open clients: {line}"));
        check_server_line(
            &line,
            &json!({"outcome": "clean", "initiator": "local", "stage": "await_peer",
                    "bytes_in": 10, "bytes_out": 10, "discarded_bytes": 0, "alert": null,
                    "tls_version": tls_name(tls), "session_resumable": true}),
            "SIGTERM",
        );
        assert!(ms_field(&line, "elapsed_ms") <= 500, "{line}");
    }
    let summary = server.line();
    assert_eq!(
        summary,
        json!({"summary": {"signal": "SIGTERM", "connections": N,
                           "outcomes": {"clean": N}}})
    );
    let (status, _) = server.proc.wait_exit(WAIT);
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.proc.transcript());
    // The policy bounds it: flush 500 ms + peer 500 ms (the clients answer at once).
    assert!(
        took < Duration::from_millis(1500),
        "exit {took:?} after SIGTERM"
    );
    for c in clients {
        let (data, answer, eof) = c.join().expect("client");
        assert_eq!(data, Ok(Vec::new()));
        assert_eq!(answer, Ok(ShutdownResult::Received));
        assert_eq!(eof, None, "reset instead of FIN");
    }
}

// ---------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------

/// Exit 2, nothing on stdout, "PROGRAM: why" then the usage line on stderr.
#[track_caller]
fn assert_usage_error(program: &str, args: &[&str]) {
    let r = run(program, &strings(args), b"", WAIT);
    let what = format!("{}: {}", r.what, r.stderr);
    assert_eq!(r.code(), Some(2), "{what}");
    assert!(r.stdout.is_empty(), "{what}");
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 2, "{what}");
    assert!(lines[0].starts_with(&format!("{program}: ")), "{what}");
    assert!(
        lines[1].starts_with(&format!("usage: {program} ")),
        "{what}"
    );
}

#[test]
fn bad_command_lines_exit_2_with_usage() {
    for args in [
        &["--bogus"][..],
        &["stray"],
        &["--mode", "sideways"],
        &["--mode"],
        &["--flush-timeout-ms", "soon"],
        &["--peer-timeout-ms", "-1"],
        &["--peer-timeout-ms", "0"],
        &["--idle-timeout-ms", "0"],
        &["--json=yes"],
        &["--cert", "cert.pem"],
    ] {
        assert_usage_error("echo_server", args);
    }
    let addr = "127.0.0.1:9";
    for args in [
        &["--connect", addr, "--bogus"][..],
        &["--message", "no address"],
        &["--connect", addr, "--close", "sometimes"],
        &["--connect", addr, "--close"],
        &["--connect", addr, "--insecure", "--ca", "ca.pem"],
        &["--connect", addr, "--tls12=yes"],
        &["--connect", addr, "--peer-timeout-ms", "soon"],
        &["--connect", addr, "--flush-timeout-ms", "0"],
    ] {
        assert_usage_error("echo_client", args);
    }
}

/// Exit 1 with exactly one line on stderr, "echo_server: ...", and no listening
/// line.
#[track_caller]
fn assert_startup_failure(args: &[String]) -> String {
    let r = run("echo_server", args, b"", WAIT);
    let what = format!("{}: {}", r.what, r.stderr);
    assert_eq!(r.code(), Some(1), "{what}");
    assert!(r.stdout.is_empty(), "{what}");
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "{what}");
    assert!(lines[0].starts_with("echo_server: "), "{what}");
    lines[0].to_string()
}

#[test]
fn unusable_certificate_or_key_exits_1_with_one_line() {
    let pems = Pems::write();
    std::fs::write(pems.file("garbage.pem"), "not a PEM file\n").unwrap();
    let other = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let other = openssl::pkey::PKey::from_ec_key(other).unwrap();
    std::fs::write(
        pems.file("other.pem"),
        other.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    let missing = pems.file("missing.pem");
    let dir = pems.dir().to_str().unwrap().to_string();
    for (cert, key) in [
        (missing.clone(), missing.clone()),
        (dir.clone(), pems.key().to_string()),
        (pems.file("garbage.pem"), pems.key().to_string()),
        (pems.cert().to_string(), pems.file("garbage.pem")),
        (pems.cert().to_string(), missing.clone()),
        (pems.cert().to_string(), pems.file("other.pem")),
    ] {
        let args = strings(&["--listen", "127.0.0.1:0", "--cert", &cert, "--key", &key]);
        assert_startup_failure(&args);
    }
    // The PEM files themselves work.
    let mut ok = spawn(
        "echo_server",
        &strings(&[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            pems.cert(),
            "--key",
            pems.key(),
        ]),
    );
    let first: Value = serde_json::from_str(&ok.next_line("the listening line", WAIT)).unwrap();
    assert!(first["listening"].is_string(), "{first}");
}

#[test]
fn address_in_use_exits_1_with_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = assert_startup_failure(&strings(&["--listen", &addr]));
    assert!(
        line.starts_with(&format!("echo_server: cannot listen on {addr}: ")),
        "{line}"
    );
}

/// SPEC §6: "Usage errors exit 2". A `--listen` value that is not an address is
/// one.
#[test]
fn unparsable_listen_address_is_a_usage_error() {
    assert_usage_error("echo_server", &["--listen", "not-an-address"]);
}
