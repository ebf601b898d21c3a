//! The examples as real processes on real loopback sockets: `echo_client`
//! against `echo_server` in every close mode and server mode, in TLS 1.2 and 1.3;
//! `openssl s_client` against `echo_server`; `echo_client` against `openssl
//! s_server`; the server's idle timeout; 1,000 concurrent clients with mixed
//! behaviours; SIGTERM with open connections; bad command lines. Then TLS as a
//! phase of a longer connection: STARTTLS, HTTP CONNECT through a proxy written
//! for the tests (the SNI the server sees, a certificate for the wrong name),
//! STOPTLS with plaintext after it; and the `scenarios` tour.
//!
//! What is checked is the command-line contract in the README and in the
//! examples' own documentation. Every JSON line is parsed with serde_json and
//! compared field by field. Every wait is bounded, and every child process is
//! killed and reaped on drop.
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
use util::cbuild::profile_dir;
use util::process::{self, Job, Pems, Proc, Ran};
use util::{
    expect_line, read_until_close_notify, reset_on_drop, stop_tls_policy, wait_eof, Contexts, Tls,
    BOTH,
};

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
        "--example",
        "scenarios",
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
        "echo_server" | "echo_client" | "scenarios" | "tokio_echo_client" => {
            Command::new(example(program))
        }
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

/// The keys of every per-connection line of `echo_server --json`, as the README
/// documents them.
const SERVER_KEYS: [&str; 13] = [
    "peer",
    "sni",
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

/// `v` is an object with exactly the keys `want`.
#[track_caller]
fn check_keys(v: &Value, want: &[&str], what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = want.to_vec();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "{what}: keys of {v}");
}

/// A per-connection server line: has exactly the documented keys, and
/// `expected`.
#[track_caller]
fn check_server_line(v: &Value, expected: &Value, what: &str) {
    check_keys(v, &SERVER_KEYS, what);
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

/// The expectations, from echo_client.rs, echo_server.rs and the README (how a
/// connection ended, the examples' command-line contract).
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

/// How `openssl s_server` ends a connection whose client sent close_notify:
/// with its own close_notify from OpenSSL 3.0 on (`clean`, exit 0, the session
/// kept); 1.1.1's s_server closes without one (`SSL_set_shutdown`, then
/// `close()`): `truncated`, exit 1, the session dropped.
fn s_server_answer() -> (&'static str, Option<i32>, bool) {
    if cfg!(ossl300) {
        ("clean", Some(0), true)
    } else {
        ("truncated", Some(1), false)
    }
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
        let (answered, answered_code, answered_session) = s_server_answer();
        for (close, outcome, stage, code, session) in [
            (
                "bidirectional",
                answered,
                "await_peer",
                answered_code,
                answered_session,
            ),
            ("send-only", "sent_only", "half_close", Some(0), true),
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
            assert_eq!(r.code(), code, "{what}");
            check(
                &r.report(),
                &json!({"outcome": outcome, "initiator": "local", "stage": stage,
                        "alert": null, "os_error": null, "bytes_echoed": msg.len(),
                        "discarded_bytes": 0, "tls_version": tls_name(tls),
                        "session_resumable": session}),
                &what,
            );
            // s_server saw the end of its one connection and exits by itself.
            let (status, _) = server.wait_exit(WAIT);
            assert!(status.success(), "{what}: {}", server.transcript());
        }
    }
}

/// Plain `s_server` does not echo: it prints what it receives and answers our
/// close_notify ("DONE"). The client gets no echo and a clean end (from OpenSSL
/// 3.0 on; see `s_server_answer`).
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
        let (outcome, code, session) = s_server_answer();
        assert!(r.stdout.is_empty(), "{what}");
        assert_eq!(r.code(), code, "{what}");
        check(
            &r.report(),
            &json!({"outcome": outcome, "initiator": "local", "stage": "await_peer",
                    "bytes_echoed": 0, "discarded_bytes": 0, "tls_version": tls_name(tls),
                    "session_resumable": session}),
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
        assert!(
            is_reset(&err),
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

/// Whether a failed write saw the connection reset. Up to OpenSSL 3.1 the errno
/// comes back as the I/O error; from 3.2 the record layer queues it as a system
/// error, and rust-openssl then returns an SSL error: classified the way
/// closenotify classifies its own.
fn is_reset(err: &std::io::Error) -> bool {
    use closenotify::TlsError;
    let reset = |errno| errno == libc::ECONNRESET || errno == libc::EPIPE;
    if matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    ) {
        return true;
    }
    err.get_ref()
        .and_then(|e| e.downcast_ref::<openssl::ssl::Error>())
        .is_some_and(|e| matches!(TlsError::from(e), TlsError::Os(errno) if reset(errno)))
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
        &["--starttls=yes"],
        &["--stoptls", "extra"],
        &["--stoptls", "--mode", "quiet", "--flush-timeout-ms", "0"],
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
        &["--connect", "no-port"],
        &["--connect", "host:port"],
        &["--connect", addr, "--proxy", "no-port"],
        &["--connect", addr, "--stoptls", "--close", "quiet"],
        &["--connect", addr, "--close", "bidirectional", "--stoptls"],
        &["--connect", addr, "--starttls=yes"],
    ] {
        assert_usage_error("echo_client", args);
    }
}

/// The tokio client parses the options it shares with echo_client the same way,
/// and refuses the ones it does not have.
#[cfg(feature = "tokio")]
#[test]
fn tokio_echo_client_bad_command_lines_exit_2_with_usage() {
    let addr = "127.0.0.1:9";
    for args in [
        &["--connect", addr, "--bogus"][..],
        &["--message", "no address"],
        &["--connect", addr, "--close", "sometimes"],
        &["--connect", addr, "--insecure", "--ca", "ca.pem"],
        &["--connect", addr, "--flush-timeout-ms", "0"],
        &["--connect", "no-port"],
        &["--connect", addr, "--stoptls"],
        &["--connect", addr, "--proxy", "127.0.0.1:3128"],
    ] {
        assert_usage_error("tokio_echo_client", args);
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

/// The README's command-line contract: usage errors exit 2. A `--listen` value
/// that is not an address is one.
#[test]
fn unparsable_listen_address_is_a_usage_error() {
    assert_usage_error("echo_server", &["--listen", "not-an-address"]);
}

// ---------------------------------------------------------------------------
// 7. TLS as a phase of a longer connection: STARTTLS, HTTP CONNECT, STOPTLS.
// ---------------------------------------------------------------------------

/// The plaintext of `echo_server --starttls` and of both examples after STOPTLS,
/// byte for byte, as their documentation gives it.
const GREETING: &[u8] = b"220 closenotify echo ready\r\n";
const GO_AHEAD: &[u8] = b"220 go ahead\r\n";
const SERVER_BYE: &[u8] = b"plain: bye\r\n";
const CLIENT_BYE: &[u8] = b"plain: bye, server\r\n";

/// The keys `--stoptls` adds to the server's lines and to the client's report.
const SERVER_STOPTLS_KEYS: [&str; 2] = ["transport_reusable", "plaintext_received"];
const CLIENT_STOPTLS_KEYS: [&str; 3] =
    ["transport_reusable", "plaintext_received", "plaintext_sent"];

fn with_keys(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(extra).copied().collect()
}

/// `echo_client --json --message MSG ARGS` (plus `--tls12` for TLS 1.2).
fn lifecycle_client(args: &[&str], msg: &str, tls: Tls) -> Ran {
    let mut all = strings(&["--json", "--message", msg]);
    all.extend(strings(args));
    if tls == Tls::V12 {
        all.push("--tls12".into());
    }
    run("echo_client", &all, b"", WAIT)
}

/// What the test proxy saw of one request.
#[derive(Debug)]
struct Seen {
    /// The request line, `CONNECT host:port HTTP/1.1`.
    request: String,
    /// The value of its `Host` header.
    host: Option<String>,
    /// The status the proxy answered.
    status: u16,
}

impl Seen {
    #[track_caller]
    fn assert_tunnel_to(&self, target: &str) {
        assert_eq!(
            self.request,
            format!("CONNECT {target} HTTP/1.1"),
            "{self:?}"
        );
        assert_eq!(self.host.as_deref(), Some(target), "{self:?}");
        assert_eq!(self.status, 200, "{self:?}");
    }
}

/// A small HTTP CONNECT proxy for the tests, on 127.0.0.1.
///
/// It resolves names itself: the `names` it is given stand for 127.0.0.1, so
/// the tests need no DNS, and the end host's name reaches the server only
/// through the client's SNI. IP addresses are used as they are; any other host
/// is refused with 403. For each connection it reads the request head byte by
/// byte up to the blank line (never further), checks it (`CONNECT host:port
/// HTTP/1.1` and a `Host` header naming the same target, else 400), connects to
/// the target (502 if it cannot), answers `200 Connection established` and
/// relays bytes both ways, shutting down the write side of one socket when the
/// other direction ends. Every request is reported on a channel.
struct Proxy {
    port: u16,
    seen: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(names: &[&str]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let names: Arc<Vec<String>> = Arc::new(names.iter().map(|n| n.to_string()).collect());
        let (report, seen) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (names, report) = (names.clone(), report.clone());
                        thread::spawn(move || proxy_one(client, &names, &report));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                }
            }
        });
        Proxy { port, seen, stop }
    }

    /// The proxy's address by name: a client that took the proxy's name for SNI
    /// or the certificate check would show it.
    fn addr(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The next request it saw.
    fn next(&self) -> Seen {
        self.seen
            .recv_timeout(WAIT)
            .expect("the proxy saw no CONNECT request")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_one(mut client: TcpStream, names: &[String], report: &mpsc::Sender<Seen>) {
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) if head.len() < 8192 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("").to_string();
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_string());
    let words: Vec<&str> = request.split(' ').collect();
    let target = match words[..] {
        ["CONNECT", target, "HTTP/1.1"] if host.as_deref() == Some(target) => Some(target),
        _ => None,
    };
    let upstream = target.map(|t| {
        let (name, port) = t.rsplit_once(':').unwrap_or((t, ""));
        let ip = if names.iter().any(|n| n == name) {
            Some(std::net::IpAddr::from([127, 0, 0, 1]))
        } else {
            name.parse().ok()
        };
        match (ip, port.parse::<u16>()) {
            (Some(ip), Ok(port)) => TcpStream::connect_timeout(&SocketAddr::new(ip, port), WAIT)
                .map_err(|_| (502, "Bad Gateway")),
            _ => Err((403, "Forbidden")),
        }
    });
    let (status, upstream) = match upstream {
        None => (400, Err("Bad Request")),
        Some(Err((code, text))) => (code, Err(text)),
        Some(Ok(up)) => (200, Ok(up)),
    };
    let answer = match &upstream {
        Ok(_) => "HTTP/1.1 200 Connection established\r\n\r\n".to_string(),
        Err(text) => format!("HTTP/1.1 {status} {text}\r\nContent-Length: 0\r\n\r\n"),
    };
    let _ = report.send(Seen {
        request,
        host,
        status,
    });
    if client.write_all(answer.as_bytes()).is_err() {
        return;
    }
    if let Ok(upstream) = upstream {
        relay(client, upstream);
    }
}

/// Copies bytes both ways until each direction ends, passing each end on as a
/// half-close.
fn relay(a: TcpStream, b: TcpStream) {
    for s in [&a, &b] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
    }
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let there = thread::spawn(move || {
        let _ = std::io::copy(&mut &a2, &mut &b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut &b, &mut &a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = there.join();
}

/// `--starttls` on both sides: greeting, command, go-ahead, then TLS on the same
/// connection, an echo and a clean close, in TLS 1.2 and 1.3. The client names
/// the server `localhost`: that is the SNI the server reports.
#[test]
fn starttls_then_tls_then_a_clean_close() {
    let mut server = EchoServer::start(&["--starttls"]);
    let addr = format!("localhost:{}", server.port);
    for tls in BOTH {
        let what = format!("STARTTLS, {tls:?}");
        let r = lifecycle_client(&["--connect", &addr, "--insecure", "--starttls"], TEXT, tls);
        assert_eq!(r.code(), Some(0), "{what}: {}", r.context());
        assert!(r.stdout == TEXT.as_bytes(), "{what}: {}", r.context());
        let report = r.report();
        check_keys(&report, &CLIENT_KEYS, &what);
        check(
            &report,
            &json!({"outcome": "clean", "initiator": "local", "stage": "await_peer",
                    "bytes_echoed": TEXT.len(), "tls_version": tls_name(tls)}),
            &what,
        );
        let line = server.line();
        check_server_line(
            &line,
            &json!({"sni": "localhost", "outcome": "clean", "initiator": "peer",
                    "stage": "half_close", "bytes_in": TEXT.len(), "bytes_out": TEXT.len(),
                    "tls_version": tls_name(tls), "session_resumable": true}),
            &what,
        );
    }
}

/// `--starttls --stoptls` on both sides: TLS in the middle of a plaintext
/// connection, and after the clean STOPTLS one plaintext line each way, exactly
/// the documented bytes.
#[test]
fn starttls_and_stoptls_exchange_a_plaintext_line_each_way() {
    let mut server = EchoServer::start(&["--starttls", "--stoptls"]);
    let addr = server.addr();
    for tls in BOTH {
        let what = format!("STARTTLS + STOPTLS, {tls:?}");
        let args = ["--connect", &addr, "--insecure", "--starttls", "--stoptls"];
        let r = lifecycle_client(&args, TEXT, tls);
        assert_eq!(r.code(), Some(0), "{what}: {}", r.context());
        assert!(r.stdout == TEXT.as_bytes(), "{what}: {}", r.context());
        let report = r.report();
        check_keys(
            &report,
            &with_keys(&CLIENT_KEYS, &CLIENT_STOPTLS_KEYS),
            &what,
        );
        check(
            &report,
            &json!({"outcome": "clean", "initiator": "local", "stage": "await_peer",
                    "bytes_echoed": TEXT.len(), "tls_version": tls_name(tls),
                    "session_resumable": true, "transport_reusable": true,
                    "plaintext_received": "plain: bye\r\n",
                    "plaintext_sent": "plain: bye, server\r\n"}),
            &what,
        );
        let line = server.line();
        check_keys(&line, &with_keys(&SERVER_KEYS, &SERVER_STOPTLS_KEYS), &what);
        // The client's close_notify came first; STOPTLS never half-closes, so
        // the server's shutdown ends once its own close_notify is flushed.
        check(
            &line,
            &json!({"sni": null, "outcome": "clean", "initiator": "peer", "stage": "flush",
                    "bytes_in": TEXT.len(), "bytes_out": TEXT.len(),
                    "tls_version": tls_name(tls), "transport_reusable": true,
                    "plaintext_received": "plain: bye, server\r\n"}),
            &what,
        );
    }
}

/// Byte-exact at the wire, against the tests' own peers: a client written here
/// talks to `echo_server --starttls --stoptls` (the server's lines are exactly
/// the documented bytes, nothing follows its plaintext line, and it reports our
/// line exactly); a server written here talks to `echo_client --starttls
/// --stoptls` (the client sends exactly `STARTTLS` and its line, and reports our
/// line exactly).
#[test]
fn stoptls_plaintext_is_byte_exact_both_ways_against_the_tests_own_peers() {
    const OURS: &str = "plain: from the test, ünïcode ✓\tend\r\n";
    let ctx = Contexts::new(Tls::V13);

    // Our client, echo_server's side.
    let mut server = EchoServer::start(&["--starttls", "--stoptls"]);
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let port = tcp.local_addr().unwrap().port();
    expect_line(&mut tcp, GREETING, "greeting");
    tcp.write_all(b"STARTTLS\r\n").unwrap();
    expect_line(&mut tcp, GO_AHEAD, "go-ahead");
    let mut tls = Ssl::new(&ctx.client).unwrap().connect(tcp).unwrap();
    echo(&mut tls, b"ping");
    let r = closenotify::shutdown_blocking(&mut tls, &stop_tls_policy());
    assert!(r.transport_reusable, "{r:?}");
    let mut tcp = closenotify::into_transport(tls).expect("reusable");
    expect_line(&mut tcp, SERVER_BYE, "the server's line after STOPTLS");
    tcp.write_all(OURS.as_bytes()).unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "after its line, the server sent {rest:?}");
    let line = server.line();
    assert_eq!(peer_port(&line), port);
    check(
        &line,
        &json!({"outcome": "clean", "initiator": "peer", "transport_reusable": true,
                "plaintext_received": OURS, "bytes_in": 4, "bytes_out": 4}),
        "our client",
    );

    // Our server, echo_client's side.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let args = strings(&[
        "--connect",
        &addr,
        "--insecure",
        "--starttls",
        "--stoptls",
        "--json",
        "--message",
        "ping",
    ]);
    let client = Job::start(command("echo_client"), "echo_client", &args, b"");
    let (mut tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.write_all(b"220 the test's server\r\n").unwrap();
    expect_line(&mut tcp, b"STARTTLS\r\n", "the client's command");
    tcp.write_all(b"220 go on\r\n").unwrap();
    let mut tls = Ssl::new(&ctx.server).unwrap().accept(tcp).unwrap();
    let mut ping = [0u8; 4];
    tls.read_exact(&mut ping).unwrap();
    tls.write_all(&ping).unwrap();
    let rest = read_until_close_notify(&mut tls).expect("the client's close_notify");
    assert!(rest.is_empty(), "{rest:?}");
    let r = closenotify::shutdown_blocking(&mut tls, &stop_tls_policy());
    assert!(r.transport_reusable, "{r:?}");
    let mut tcp = closenotify::into_transport(tls).expect("reusable");
    tcp.write_all(OURS.as_bytes()).unwrap();
    expect_line(&mut tcp, CLIENT_BYE, "the client's line after STOPTLS");
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "after its line, the client sent {rest:?}");
    let r = client.wait(WAIT);
    assert_eq!(r.code(), Some(0), "{}", r.context());
    assert_eq!(r.stdout, b"ping", "{}", r.context());
    check(
        &r.report(),
        &json!({"outcome": "clean", "transport_reusable": true,
                "plaintext_received": OURS, "plaintext_sent": "plain: bye, server\r\n"}),
        "our server",
    );
}

/// A TCP stream for a client that pipelines: its first write sends `STARTTLS`
/// and the ClientHello in one `write()` (one segment), before the go-ahead came;
/// its reads first take the server's go-ahead line (checked), then pass through.
#[derive(Debug)]
struct Pipelined {
    tcp: TcpStream,
    command_sent: bool,
    go_ahead_read: bool,
}

impl Read for Pipelined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.go_ahead_read {
            expect_line(&mut self.tcp, GO_AHEAD, "go-ahead");
            self.go_ahead_read = true;
        }
        self.tcp.read(buf)
    }
}

impl Write for Pipelined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.command_sent {
            return self.tcp.write(buf);
        }
        let mut both = b"STARTTLS\r\n".to_vec();
        both.extend_from_slice(buf);
        self.tcp.write_all(&both)?;
        self.command_sent = true;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The server reads the command one byte at a time: a ClientHello sent in the
/// same segment as `STARTTLS\r\n` is left for TLS.
#[test]
fn starttls_server_leaves_a_pipelined_client_hello_to_tls() {
    let mut server = EchoServer::start(&["--starttls"]);
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        expect_line(&mut tcp, GREETING, "greeting");
        let pipelined = Pipelined {
            tcp,
            command_sent: false,
            go_ahead_read: false,
        };
        let mut tls_stream = Ssl::new(&ctx.client)
            .unwrap()
            .connect(pipelined)
            .unwrap_or_else(|e| panic!("{tls:?}: handshake after a pipelined STARTTLS: {e}"));
        assert!(tls_stream.get_ref().command_sent);
        tls_stream.write_all(b"pipelined").unwrap();
        let mut back = [0u8; 9];
        tls_stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pipelined");
        assert_eq!(tls_stream.shutdown().unwrap(), ShutdownResult::Sent);
        assert_eq!(tls_stream.shutdown().unwrap(), ShutdownResult::Received);
        let line = server.line();
        check(
            &line,
            &json!({"outcome": "clean", "bytes_in": 9, "tls_version": tls_name(tls)}),
            &format!("{tls:?}"),
        );
    }
}

/// The server starts the STOPTLS itself when the idle timeout ends TLS: a client
/// that answers with its own close_notify gets the plaintext line.
#[test]
fn idle_timeout_under_stoptls_leaves_tls_from_the_server_side() {
    let mut server = EchoServer::start(&["--stoptls", "--idle-timeout-ms", "200"]);
    let ctx = Contexts::new(Tls::V12);
    let mut tls = tls_connect(&ctx, server.port);
    echo(&mut tls, b"then idle");
    let rest = read_until_close_notify(&mut tls).expect("the server's close_notify");
    assert!(rest.is_empty(), "{rest:?}");
    let r = closenotify::shutdown_blocking(&mut tls, &stop_tls_policy());
    assert!(r.transport_reusable, "{r:?}");
    let mut tcp = closenotify::into_transport(tls).expect("reusable");
    expect_line(&mut tcp, SERVER_BYE, "the server's line after STOPTLS");
    tcp.write_all(b"ok\n").unwrap();
    let line = server.line();
    check_keys(
        &line,
        &with_keys(&SERVER_KEYS, &SERVER_STOPTLS_KEYS),
        "idle",
    );
    check(
        &line,
        &json!({"outcome": "clean", "initiator": "local", "stage": "await_peer",
                "transport_reusable": true, "plaintext_received": "ok\n",
                "bytes_in": 9, "bytes_out": 9, "tls_version": "TLSv1.2"}),
        "idle",
    );
}

/// The wrong partner, both ways round, and the wrong command: each fails at
/// once with a message that says why, never waiting for a timeout it does not
/// need.
#[test]
fn starttls_mismatches_fail_cleanly_and_quickly() {
    // A client that does not send STARTTLS: its ClientHello meets the greeting.
    let mut server = EchoServer::start(&["--starttls"]);
    let started = Instant::now();
    let r = lifecycle_client(&["--connect", &server.addr(), "--insecure"], "hi", Tls::V13);
    assert_eq!(r.code(), Some(1), "{}", r.context());
    assert!(r.stdout.is_empty(), "{}", r.context());
    let report = r.report();
    check_keys(&report, &["outcome", "error"], "no STARTTLS");
    assert_eq!(report["outcome"], json!("failed"), "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("wrong version number") && error.contains("--starttls"),
        "{error}"
    );
    let line = server.line();
    check_keys(&line, &["peer", "outcome", "error"], "no STARTTLS");
    assert_eq!(line["outcome"], json!("starttls_failed"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Another command: 502, then the server closes.
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    expect_line(&mut tcp, GREETING, "greeting");
    tcp.write_all(b"EHLO test\r\n").unwrap();
    expect_line(
        &mut tcp,
        b"502 only STARTTLS is accepted here\r\n",
        "the answer to EHLO",
    );
    assert_eq!(wait_eof(&mut tcp), None);
    let line = server.line();
    assert_eq!(line["outcome"], json!("starttls_failed"), "{line}");
    assert_eq!(
        line["error"],
        json!("expected STARTTLS, got \"EHLO test\""),
        "{line}"
    );

    // A --starttls client and a server that waits for a ClientHello: the
    // server's handshake limit (here the idle timeout, 300 ms) ends it.
    let plain = EchoServer::start(&["--idle-timeout-ms", "300"]);
    let started = Instant::now();
    let r = lifecycle_client(
        &["--connect", &plain.addr(), "--insecure", "--starttls"],
        "hi",
        Tls::V13,
    );
    assert_eq!(r.code(), Some(1), "{}", r.context());
    let error = r.report()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("no greeting line") && error.contains("STARTTLS server"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// `--stoptls` against a server that closes instead: TLS ends cleanly, then the
/// client finds no plaintext line and says so (exit 1).
#[test]
fn stoptls_client_against_a_server_that_closes_reports_the_missing_line() {
    let mut server = EchoServer::start(&[]);
    let r = lifecycle_client(
        &["--connect", &server.addr(), "--insecure", "--stoptls"],
        "hi",
        Tls::V13,
    );
    assert_eq!(r.code(), Some(1), "{}", r.context());
    assert!(
        r.stderr
            .contains("no plaintext line from the server after STOPTLS"),
        "{}",
        r.context()
    );
    check(
        &r.report(),
        &json!({"outcome": "clean", "transport_reusable": true,
                "plaintext_received": null, "plaintext_sent": null}),
        "closing server",
    );
    let line = server.line();
    assert_eq!(line["outcome"], json!("clean"), "{line}");
}

/// Through an HTTP CONNECT proxy: the tunnel goes to the `--connect` host, and
/// SNI and the certificate check use `--servername` if given, else that host,
/// never the proxy's name (`localhost`). The certificate is for `echo.example`.
#[test]
fn connect_proxy_tunnels_to_the_end_host_with_the_right_name() {
    let pems = Pems::for_name("echo.example");
    let mut server = EchoServer::start(&["--cert", pems.cert(), "--key", pems.key()]);
    let proxy = Proxy::start(&["echo.example", "alt.example"]);
    let end_host = format!("echo.example:{}", server.port);
    let by_ip = format!("127.0.0.1:{}", server.port);
    for (tls, connect, servername, verify, sni) in [
        // No --servername: the --connect host, verified against the certificate.
        (Tls::V13, &end_host, None, true, Some("echo.example")),
        (Tls::V12, &end_host, None, true, Some("echo.example")),
        // --servername wins; not the certificate's name, so no verification.
        (
            Tls::V13,
            &end_host,
            Some("alt.example"),
            false,
            Some("alt.example"),
        ),
        // --connect by IP address, --servername for SNI and the check.
        (
            Tls::V13,
            &by_ip,
            Some("echo.example"),
            true,
            Some("echo.example"),
        ),
        // An IP address and no --servername: checked as an address, no SNI.
        (Tls::V13, &by_ip, None, true, None),
    ] {
        let what = format!("{tls:?} --connect {connect} --servername {servername:?}");
        let proxy_addr = proxy.addr();
        let mut args = vec!["--proxy", &proxy_addr[..], "--connect", connect];
        if let Some(name) = servername {
            args.extend(["--servername", name]);
        }
        if verify {
            args.extend(["--ca", pems.cert()]);
        } else {
            args.push("--insecure");
        }
        let r = lifecycle_client(&args, TEXT, tls);
        assert_eq!(r.code(), Some(0), "{what}: {}", r.context());
        assert!(r.stdout == TEXT.as_bytes(), "{what}: {}", r.context());
        check(&r.report(), &json!({"outcome": "clean"}), &what);
        proxy.next().assert_tunnel_to(connect);
        let line = server.line();
        check_server_line(
            &line,
            &json!({"sni": sni, "outcome": "clean", "tls_version": tls_name(tls),
                    "bytes_in": TEXT.len(), "bytes_out": TEXT.len()}),
            &what,
        );
    }
    // A target the proxy refuses: its status line in the message.
    let r = lifecycle_client(
        &[
            "--proxy",
            &proxy.addr(),
            "--connect",
            "unknown.example:443",
            "--insecure",
        ],
        "hi",
        Tls::V13,
    );
    assert_eq!(r.code(), Some(1), "{}", r.context());
    let error = r.report()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("refused CONNECT unknown.example:443") && error.contains("403 Forbidden"),
        "{error}"
    );
    assert_eq!(proxy.next().status, 403);
}

/// A verification error as OpenSSL 3 words it: 1.1.1 writes "Hostname mismatch"
/// and "self signed certificate".
fn verify_text(error: &str) -> String {
    error
        .to_lowercase()
        .replace("self signed certificate", "self-signed certificate")
}

/// A certificate for another name is rejected, directly and through the proxy,
/// with exit status 3 and a message that names the name checked, the names the
/// certificate has and OpenSSL's reason; an untrusted certificate likewise.
#[test]
fn a_certificate_for_the_wrong_name_is_rejected_with_a_clear_message() {
    let pems = Pems::for_name("echo.example");
    let mut server = EchoServer::start(&["--cert", pems.cert(), "--key", pems.key()]);
    let proxy = Proxy::start(&["other.example"]);
    let direct = server.addr();
    let tunnelled = format!("other.example:{}", server.port);
    for (args, json_mode) in [
        (
            vec!["--connect", &direct[..], "--servername", "other.example"],
            true,
        ),
        (
            vec!["--connect", &direct[..], "--servername", "other.example"],
            false,
        ),
        (vec!["--connect", &tunnelled[..], "--proxy", "PROXY"], true),
    ] {
        let proxy_addr = proxy.addr();
        let mut args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == "PROXY" { &proxy_addr[..] } else { a })
            .collect();
        args.extend(["--ca", pems.cert(), "--message", "secret"]);
        if json_mode {
            args.push("--json");
        }
        let r = run("echo_client", &strings(&args), b"", WAIT);
        let what = r.context();
        assert_eq!(r.code(), Some(3), "{what}");
        assert!(r.stdout.is_empty(), "{what}");
        let lines = r.stderr_lines();
        assert_eq!(lines.len(), 1, "{what}");
        let error = if json_mode {
            let report = r.report();
            check_keys(&report, &["outcome", "error"], &what);
            assert_eq!(report["outcome"], json!("certificate_rejected"), "{what}");
            report["error"].as_str().unwrap().to_string()
        } else {
            lines[0]
                .strip_prefix("echo_client: ")
                .unwrap_or_else(|| panic!("{what}"))
                .to_string()
        };
        assert!(
            // "Hostname mismatch" in OpenSSL 1.1.1.
            error
                .to_lowercase()
                .contains("is rejected: hostname mismatch")
                && error.contains("checked for name \"other.example\"")
                && error.contains("the certificate is for echo.example, 127.0.0.1"),
            "{error}"
        );
        if args.contains(&"--proxy") {
            proxy.next().assert_tunnel_to(&tunnelled);
        }
        let line = server.line();
        assert_eq!(line["outcome"], json!("handshake_failed"), "{line}");
    }
    // A certificate no CA vouches for (the CA file holds another one).
    let stranger = Pems::write();
    let r = lifecycle_client(
        &[
            "--connect",
            &direct,
            "--servername",
            "echo.example",
            "--ca",
            stranger.cert(),
        ],
        "secret",
        Tls::V13,
    );
    assert_eq!(r.code(), Some(3), "{}", r.context());
    let error = r.report()["error"].as_str().unwrap().to_string();
    assert!(
        verify_text(&error).contains("is rejected: self-signed certificate"),
        "{error}"
    );
    let line = server.line();
    assert_eq!(line["outcome"], json!("handshake_failed"), "{line}");
}

// ---------------------------------------------------------------------------
// 8. The tour.
// ---------------------------------------------------------------------------

/// `cargo run --example scenarios`: every outcome, in TLS 1.2 and 1.3, in 100
/// columns and under 15 s, with "resumable" confirmed by the next connection.
#[test]
fn the_tour_shows_every_outcome_in_100_columns_in_under_15_s() {
    let _serial = serial();
    example("scenarios"); // built before the clock starts
    let started = Instant::now();
    let r = run("scenarios", &[], b"", Duration::from_secs(60));
    let took = started.elapsed();
    r.assert_success();
    assert!(took < Duration::from_secs(15), "the tour took {took:?}");
    let out = r.stdout_text();
    for line in out.lines() {
        assert!(line.chars().count() <= 100, "wider than 100: {line:?}");
    }
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("scenario "))
        .expect("the table's header");
    let intro = lines[..header].join(" ");
    for needed in [
        "Our side: the client",
        "The peer: OpenSSL",
        "flush_timeout 300 ms, peer_timeout 300 ms",
    ] {
        assert!(intro.contains(needed), "{needed:?} not in {intro:?}");
    }
    let at = lines[header].find("outcome").unwrap();
    let session_at = lines[header].find("session").unwrap();
    let rows: Vec<&str> = lines[header + 2..]
        .iter()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with(' '))
        .copied()
        .collect();
    assert_eq!(rows.len(), 26, "{out}");
    let mut outcomes = std::collections::BTreeSet::new();
    for row in &rows {
        outcomes.insert(row[at..].split_whitespace().next().unwrap());
        // What the report says of the session is what the next handshake did.
        let session = row[session_at..].split_whitespace().next().unwrap();
        assert!(matches!(session, "yes/yes" | "no/no"), "{row}");
    }
    let all: std::collections::BTreeSet<&str> = closenotify::Outcome::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    assert_eq!(outcomes, all, "{out}");
    let table = lines[header..].join("\n");
    assert!(!table.contains("sent protocol_version"), "{out}");
    // The garbage record, rejected the same way by every OpenSSL version (the
    // detail wraps over three lines).
    assert_eq!(
        table.matches("rejected decryption failed or bad").count(),
        2,
        "{out}"
    );
    assert_eq!(table.matches("bad_record_mac(20))").count(), 2, "{out}");
    assert_eq!(
        table
            .matches("then plain \"hello\" in, \"bye\" out")
            .count(),
        2,
        "{out}"
    );
    let footer = lines.iter().find(|l| l.contains(" scenarios in ")).unwrap();
    let secs: f64 = footer
        .split(" scenarios in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{footer}"));
    assert!(secs < 15.0, "{footer}");
}
