//! External processes for the integration tests: `openssl s_server`/`s_client`,
//! `tests/peers/peer.py`, the compiled C programs, the echo examples.
//!
//! Every wait is bounded (pipes are read on threads), and every child is killed
//! and reaped on drop, whatever happened in the test. When a needed tool is
//! missing, the tests fail saying so: they never skip.
//!
//! - [`Proc`]: a long-running process, its stdout as lines (`wait_line`,
//!   `next_line`), its stdin open until `close_stdin` (`openssl s_server` ends the
//!   connection at EOF on its stdin).
//! - [`run`] / [`Job`]: a process fed fixed input, its stdout kept as raw bytes;
//!   what it left is a [`Ran`].
//! - [`Pems`]: the test identity as PEM files; [`require`]: a tool must be there.
//! - [`s_server`]: `openssl s_server` for one connection; [`peer_py`]:
//!   `tests/peers/peer.py`, Python's `ssl` module as the peer.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the pipes of a process that has exited get to reach EOF.
const PIPES_CLOSE: Duration = Duration::from_secs(5);

/// The most stdout lines a transcript shows (the last ones).
const TRANSCRIPT_LINES: usize = 50;

/// The test file this module is compiled into, for messages.
const TEST_FILE: &str = concat!("tests/", env!("CARGO_CRATE_NAME"), ".rs");

// ---------------------------------------------------------------------------
// Tools and files.
// ---------------------------------------------------------------------------

/// `Err` with a clear message when `program version_arg` cannot be run or fails.
pub fn check_tool(program: &str, version_arg: &str) -> Result<(), String> {
    match Command::new(program).arg(version_arg).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {version_arg}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!(
            "`{program}` is required by {TEST_FILE} and could not be run ({e}); \
             install it (CI does) instead of skipping these tests"
        )),
    }
}

/// Fails the test, with a clear message, when `program` cannot be run.
pub fn require(program: &str, version_arg: &str) {
    check_tool(program, version_arg).unwrap_or_else(|e| panic!("{e}"));
}

/// The certificate and key of `util::identity()` (or, with `for_name`, of a
/// certificate for another name) as PEM files (`cert.pem`, `key.pem`) in a
/// private temp directory, removed on drop.
pub struct Pems {
    dir: PathBuf,
    cert: String,
    key: String,
}

impl Pems {
    pub fn write() -> Pems {
        let (cert, key) = super::identity();
        Pems::write_identity(cert, key)
    }

    /// As `write`, with a new self-signed certificate for `name` (and 127.0.0.1).
    pub fn for_name(name: &str) -> Pems {
        let (cert, key) = closenotify::doc_support::self_signed(name).expect("certificate");
        Pems::write_identity(&cert, &key)
    }

    fn write_identity(
        cert: &openssl::x509::X509Ref,
        key: &openssl::pkey::PKeyRef<openssl::pkey::Private>,
    ) -> Pems {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "closenotify-{}-{}-{}",
            env!("CARGO_CRATE_NAME").replace('_', "-"),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pems = Pems {
            cert: path_str(&dir.join("cert.pem")),
            key: path_str(&dir.join("key.pem")),
            dir,
        };
        std::fs::write(&pems.cert, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&pems.key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        pems
    }

    pub fn cert(&self) -> &str {
        &self.cert
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `name` in the directory (which may not exist).
    pub fn file(&self, name: &str) -> String {
        path_str(&self.dir.join(name))
    }
}

impl Drop for Pems {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// Plumbing.
// ---------------------------------------------------------------------------

/// Kills and reaps the child on drop.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `` `program args` ``, as messages show a command.
fn describe<S: AsRef<str>>(program: &str, args: &[S]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    format!("`{program} {}`", args.join(" "))
}

/// Starts `cmd` with `args` and all three pipes.
fn start<S: AsRef<str>>(mut cmd: Command, what: &str, args: &[S]) -> Reaper {
    let child = cmd
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e} (is it installed?)"));
    Reaper(child)
}

/// Waits (bounded) for the child to exit: `None` if it still runs after `limit`.
fn wait_status(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Everything a pipe delivers, read on a thread.
struct Drain {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Hangs up at EOF.
    eof: Receiver<()>,
}

impl Drain {
    fn start(mut from: impl Read + Send + 'static) -> Drain {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let (hang_up, eof) = mpsc::channel::<()>();
        thread::spawn(move || {
            let _hang_up = hang_up;
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Drain { bytes, eof }
    }

    /// What arrived so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// Everything, once the pipe reached EOF (the process has exited: bounded by
    /// `PIPES_CLOSE`).
    fn finish(self) -> Vec<u8> {
        let _ = self.eof.recv_timeout(PIPES_CLOSE);
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------
// A long-running process, its stdout as lines.
// ---------------------------------------------------------------------------

/// A long-running process: stdout lines arrive on a channel (read by a thread, so
/// that every wait is bounded), stderr is kept for failure messages. Its stdin
/// stays open until `close_stdin`. Dropping it kills and reaps the process.
pub struct Proc {
    what: String,
    child: Reaper,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Drain,
}

impl Proc {
    pub fn spawn<S: AsRef<str>>(program: &str, args: &[S]) -> Proc {
        Proc::spawn_cmd(Command::new(program), program, args)
    }

    /// As `spawn`, with `cmd` (which names `program`'s binary, and may set its
    /// environment) in place of `Command::new(program)`.
    pub fn spawn_cmd<S: AsRef<str>>(cmd: Command, program: &str, args: &[S]) -> Proc {
        let what = describe(program, args);
        let mut child = start(cmd, &what, args);
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.0.stdout.take().unwrap());
        thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            what,
            stdin: child.0.stdin.take(),
            stderr: Drain::start(child.0.stderr.take().unwrap()),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    /// What the process said so far, for failure messages.
    pub fn transcript(&self) -> String {
        let skip = self.seen.len().saturating_sub(TRANSCRIPT_LINES);
        let heading = if skip == 0 {
            "--- stdout ---".to_string()
        } else {
            format!(
                "--- stdout (the last {TRANSCRIPT_LINES} of {} lines) ---",
                self.seen.len()
            )
        };
        format!(
            "{}\n{heading}\n{}\n--- stderr ---\n{}",
            self.what,
            self.seen[skip..].join("\n"),
            self.stderr.text()
        )
    }

    fn recv(&mut self, looking_for: &str, timeout: Duration, limit: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("no {looking_for} within {limit:?}: {}", self.transcript())
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("stdout closed before {looking_for}: {}", self.transcript())
            }
        }
    }

    /// The next stdout line, within `limit`.
    pub fn next_line(&mut self, looking_for: &str, limit: Duration) -> String {
        self.recv(looking_for, limit, limit)
    }

    /// The first stdout line that satisfies `pred`, within `limit`.
    pub fn wait_line(
        &mut self,
        looking_for: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.recv(looking_for, left, limit);
            if pred(&line) {
                return line;
            }
        }
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to stdin");
        stdin.flush().unwrap();
    }

    /// Closes the process's stdin (EOF).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits (bounded) for the process to exit on its own; returns its status and
    /// every line it wrote to stdout.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let status = wait_status(&mut self.child.0, limit)
            .unwrap_or_else(|| panic!("did not exit within {limit:?}: {}", self.transcript()));
        // The process is gone: the reader thread reaches EOF and hangs up.
        while let Ok(line) = self.lines.recv_timeout(limit) {
            self.seen.push(line);
        }
        (status, self.seen.clone())
    }

    /// Waits (bounded) for a successful exit; returns every stdout line.
    pub fn expect_success(&mut self, limit: Duration) -> Vec<String> {
        let (status, out) = self.wait_exit(limit);
        assert!(
            status.success(),
            "exited with {status}: {}",
            self.transcript()
        );
        out
    }

    /// SIGKILL, and reap the process: its sockets are closed by the kernel once
    /// this returns.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

// ---------------------------------------------------------------------------
// A process fed fixed input, its output kept raw.
// ---------------------------------------------------------------------------

/// What a finished process left.
pub struct Ran {
    /// `` `program args` ``.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Everything about the run, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "{} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            self.stdout_text(),
            self.stderr
        )
    }

    /// Exited 0, and was not killed by a signal.
    #[track_caller]
    pub fn assert_success(&self) {
        assert_eq!(self.status.signal(), None, "{}", self.context());
        assert!(self.status.success(), "{}", self.context());
    }
}

/// Runs `program args` to completion with `stdin` as its input, within `limit`.
pub fn run<S: AsRef<str>>(program: &str, args: &[S], stdin: &[u8], limit: Duration) -> Ran {
    Job::start(Command::new(program), program, args, stdin).wait(limit)
}

/// A process fed `stdin` (written on a thread: a large input never blocks the
/// test), its stdout and stderr collected; killed and reaped on drop.
pub struct Job {
    what: String,
    child: Reaper,
    writer: JoinHandle<()>,
    stdout: Drain,
    stderr: Drain,
}

impl Job {
    /// Starts `cmd` (which names `program`'s binary) with `args`.
    pub fn start<S: AsRef<str>>(cmd: Command, program: &str, args: &[S], stdin: &[u8]) -> Job {
        let what = describe(program, args);
        let mut child = start(cmd, &what, args);
        let mut input = child.0.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let writer = thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        Job {
            what,
            writer,
            stdout: Drain::start(child.0.stdout.take().unwrap()),
            stderr: Drain::start(child.0.stderr.take().unwrap()),
            child,
        }
    }

    /// Has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }

    /// Waits (bounded by `limit`) for the exit.
    pub fn wait(mut self, limit: Duration) -> Ran {
        let status = wait_status(&mut self.child.0, limit).unwrap_or_else(|| {
            panic!(
                "did not exit within {limit:?}: {}; stderr so far:\n{}",
                self.what,
                self.stderr.text()
            )
        });
        self.finish(status)
    }

    /// SIGKILL, reap, and what the process left.
    pub fn kill(mut self) -> Ran {
        let _ = self.child.0.kill();
        let status = self.child.0.wait().expect("wait");
        self.finish(status)
    }

    fn finish(self, status: ExitStatus) -> Ran {
        let _ = self.writer.join();
        Ran {
            stdout: self.stdout.finish(),
            stderr: String::from_utf8_lossy(&self.stderr.finish()).into_owned(),
            what: self.what,
            status,
        }
    }
}

// ---------------------------------------------------------------------------
// Peers.
// ---------------------------------------------------------------------------

/// Starts `openssl s_server` with `pems` for exactly one connection (`extra` are
/// more arguments); returns it, once it listens, and its address.
///
/// Readiness is the `ACCEPT 127.0.0.1:PORT` line s_server prints once it listens
/// (within `limit`), and the port is the one it chose (`-accept 127.0.0.1:0`), so
/// no other process can take it in between. A TCP probe would not do: `-naccept 1`
/// counts the probe as its one connection and then exits. Its stdin stays open:
/// EOF on it would end the connection.
pub fn s_server(pems: &Pems, extra: &[&str], limit: Duration) -> (Proc, SocketAddr) {
    let mut args = vec![
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-cert",
        pems.cert(),
        "-key",
        pems.key(),
    ];
    args.extend_from_slice(extra);
    let mut server = Proc::spawn("openssl", &args);
    let line = server.wait_line("ACCEPT line", limit, |l| l.starts_with("ACCEPT "));
    let addr = line["ACCEPT ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}: {}", server.transcript()));
    (server, addr)
}

/// The Python interpreter itself, resolved once through `python3` on PATH: a
/// version manager's shim in front of it (pyenv) costs half a second per start.
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        require("python3", "--version");
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if exe.is_empty() {
            "python3".to_string()
        } else {
            exe
        }
    })
}

/// Starts `python3 tests/peers/peer.py MODE` with `pems` in TLS `version` ("1.2"
/// or "1.3"); returns it and the port it listens on, the first line it prints
/// (within `limit`).
pub fn peer_py(pems: &Pems, mode: &str, version: &str, limit: Duration) -> (Proc, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/peer.py");
    assert!(script.is_file(), "missing {}", script.display());
    let mut peer = Proc::spawn(
        python(),
        &[
            script.to_str().unwrap(),
            mode,
            "--cert",
            pems.cert(),
            "--key",
            pems.key(),
            "--tls",
            version,
        ],
    );
    let line = peer.wait_line("port line", limit, |_| true);
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("first line is not a port: {}", peer.transcript()));
    (peer, port)
}

/// The descriptors process `pid` has open now, as `N -> target`, sorted.
pub fn open_fds(pid: i32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| {
            let entry = entry.unwrap();
            let target = std::fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{} -> {target}", entry.file_name().to_string_lossy())
        })
        .collect();
    fds.sort();
    fds
}

/// Waits (bounded by `limit`) until process `pid` has exactly the descriptors
/// of `baseline` open again (a closer closes a finished connection's fd in the
/// call that reports it, or in a later one it asks for at once); the fds then.
pub fn fds_back_to(pid: i32, baseline: &[String], limit: Duration) -> Vec<String> {
    let until = std::time::Instant::now() + limit;
    let mut now = open_fds(pid);
    while now != baseline && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        now = open_fds(pid);
    }
    now
}
