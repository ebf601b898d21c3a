//! The examples as processes: building them once, running and spawning them,
//! the echo server's JSON lines, and the in-process TLS clients the tests talk
//! to it with. Shared by the tests of the examples (`echo.rs`, `echo_load.rs`,
//! `echo_interop.rs`, `phases.rs`, `probe.rs`, `soak.rs`, `tour.rs`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::cbuild::profile_dir;
use super::process::{Job, Proc, Ran};
use super::{read_until_close_notify, Contexts, Tls};
use openssl::ssl::{ShutdownResult, Ssl, SslStream};
use serde_json::{json, Value};

/// The bound of every wait for a process, a line or a socket.
pub const WAIT: Duration = Duration::from_secs(10);

/// Tests that measure time or put load on the machine run one at a time (CI
/// machines may have two CPUs); the others run alongside.
pub fn serial() -> MutexGuard<'static, ()> {
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
pub fn build_examples() -> Result<PathBuf, String> {
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
        "--example",
        "probe",
        "--example",
        "soak",
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
pub fn example(name: &str) -> PathBuf {
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

pub fn command(program: &str) -> Command {
    let mut cmd = match program {
        "echo_server" | "echo_client" | "scenarios" | "soak" | "tokio_echo_client" | "probe" => {
            Command::new(example(program))
        }
        other => Command::new(other),
    };
    // env_logger would add lines to stderr, where the client's report is the last.
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A long-running `program` (see `util::process::Proc`).
pub fn spawn(program: &str, args: &[String]) -> Proc {
    Proc::spawn_cmd(command(program), program, args)
}

/// Runs `program args` to completion with `stdin` as its input, within `limit`.
pub fn run(program: &str, args: &[String], stdin: &[u8], limit: Duration) -> Ran {
    Job::start(command(program), program, args, stdin).wait(limit)
}

impl Ran {
    /// The last stderr line, as JSON (the client's report).
    pub fn report(&self) -> Value {
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
pub const SERVER_KEYS: [&str; 15] = [
    "peer",
    "sni",
    "outcome",
    "initiator",
    "stage",
    "alert",
    "alert_name",
    "detail",
    "alerts",
    "bytes_in",
    "bytes_out",
    "discarded_bytes",
    "elapsed_ms",
    "tls_version",
    "session_resumable",
];

/// The keys of the client's `--json` report.
pub const CLIENT_KEYS: [&str; 13] = [
    "outcome",
    "initiator",
    "stage",
    "alert",
    "alert_name",
    "detail",
    "alerts",
    "os_error",
    "bytes_echoed",
    "discarded_bytes",
    "elapsed_ms",
    "tls_version",
    "session_resumable",
];

pub struct EchoServer {
    pub proc: Proc,
    pub port: u16,
}

impl EchoServer {
    /// `echo_server --listen 127.0.0.1:0 --json ARGS`; returns once it listens.
    pub fn start(args: &[&str]) -> EchoServer {
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

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The next stdout line, parsed as JSON (every line must be).
    pub fn line(&mut self) -> Value {
        let line = self.proc.next_line("a connection's line", WAIT);
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "not a JSON line ({e}): {line:?}\n{}",
                self.proc.transcript()
            )
        })
    }

    /// Open file descriptors of the server process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped before drop.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
}

/// The port of a `"peer":"127.0.0.1:PORT"` field.
pub fn peer_port(v: &Value) -> u16 {
    let peer: SocketAddr = v["peer"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer address in {v}"));
    assert_eq!(peer.ip().to_string(), "127.0.0.1", "{v}");
    peer.port()
}

/// Every field of `expected` equals the same field of `v`.
#[track_caller]
pub fn check(v: &Value, expected: &Value, what: &str) {
    for (key, want) in expected.as_object().expect("expected is an object") {
        assert_eq!(v.get(key), Some(want), "{what}: field {key:?} of {v}");
    }
}

/// `v` is an object with exactly the keys `want`.
#[track_caller]
pub fn check_keys(v: &Value, want: &[&str], what: &str) {
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
pub fn check_server_line(v: &Value, expected: &Value, what: &str) {
    check_keys(v, &SERVER_KEYS, what);
    check(v, expected, what);
}

/// A `handshake_failed` line: the peer, the outcome and a non-empty error.
#[track_caller]
pub fn check_handshake_failed(v: &Value, what: &str) {
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

pub fn ms_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

// ---------------------------------------------------------------------------
// In-process TLS clients (rust-openssl), for what a process cannot do.
// ---------------------------------------------------------------------------

pub fn tls_name(tls: Tls) -> &'static str {
    tls.name()
}

/// Connects to the echo server and handshakes; blocking, with bounded I/O.
pub fn tls_connect(ctx: &Contexts, port: u16) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to echo_server");
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    Ssl::new(&ctx.client)
        .unwrap()
        .connect(tcp)
        .expect("handshake with echo_server")
}

pub fn local_port(s: &SslStream<TcpStream>) -> u16 {
    s.get_ref().local_addr().unwrap().port()
}

/// Sends `msg` and reads exactly its echo.
#[track_caller]
pub fn echo(s: &mut SslStream<TcpStream>, msg: &[u8]) {
    s.write_all(msg).expect("send");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo");
    assert!(back == msg, "the echo differs from what was sent");
}

/// The orderly client close: our close_notify first, then the server's answer.
#[track_caller]
pub fn close_first(s: &mut SslStream<TcpStream>) {
    assert_eq!(
        s.shutdown().expect("send close_notify"),
        ShutdownResult::Sent
    );
    let rest = read_until_close_notify(s).expect("the server's close_notify");
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
}

/// Deterministic bytes with every value, different per seed.
pub fn varied_bytes(len: usize, seed: u64) -> Vec<u8> {
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

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------

/// A message with varied text: quotes, backslashes, tabs, newlines, control
/// characters and multi-byte UTF-8 (`--message` takes text; NUL cannot be in an
/// argument). The binary message goes through stdin.
pub const TEXT: &str =
    "héllo, wörld! \"quoted\" \\back\\slash\ttab\nnew line\r\n\u{1}\u{7f} ✓ 🦀 end";

/// Waits (bounded) until the server has `n` file descriptors open.
pub fn wait_fds(server: &EchoServer, n: usize, limit: Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = server.fds();
        if now == n || std::time::Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
