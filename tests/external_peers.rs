//! closenotify against TLS stacks it did not write: the `openssl s_server` and
//! `openssl s_client` command-line tools, and Python's `ssl` module
//! (`tests/peers/peer.py`), on real loopback sockets, in TLS 1.2 and 1.3.
//!
//! These tests need `openssl` and `python3` on `PATH` (CI installs both). When
//! either is missing they fail with a message saying so: they never skip.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use closenotify::{shutdown_blocking, Initiator, Outcome, Stage};
use openssl::ssl::{Ssl, SslStream};
use util::*;

/// How long any external peer gets to become ready, answer or exit.
const READY: Duration = Duration::from_secs(5);

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/peer.py")
}

/// Fails the test, with a clear message, when `program` cannot be run.
fn require(program: &str, version_arg: &str) {
    match Command::new(program).arg(version_arg).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} {version_arg}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "`{program}` is required by tests/external_peers.rs and could not be run ({e}); \
             install it (CI does) instead of skipping these tests"
        ),
    }
}

/// The certificate and key of `util::identity()` as PEM files in a private temp
/// directory, removed on drop.
struct Pems {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pems {
    fn write() -> Pems {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "closenotify-external-peers-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = identity();
        let pems = Pems {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pems.cert, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&pems.key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        pems
    }

    fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

impl Drop for Pems {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An external peer process. Its stdout lines arrive on a channel (read by a
/// thread, so that every wait is bounded); its stderr is kept for failure messages.
/// Dropping it kills and reaps the process, whatever happened in the test.
struct External {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl External {
    fn spawn(program: &str, args: &[&str]) -> External {
        let what = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e} (is `{program}` installed?)"));
        let (tx, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        External {
            what,
            stdin: child.stdin.take(),
            child,
            stdout,
            seen: Vec::new(),
            stderr,
        }
    }

    /// What the process said so far, for failure messages.
    fn transcript(&self) -> String {
        format!(
            "`{}`\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The first stdout line matching `pred`, within `READY`.
    fn wait_line(&mut self, looking_for: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {looking_for} within {READY:?}: {}", self.transcript())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stdout closed before {looking_for}: {}", self.transcript())
                }
            }
        }
    }

    /// Closes the process's stdin (EOF).
    fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits (bounded) for the process to exit on its own; returns its status and
    /// everything it wrote to stdout.
    fn wait_exit(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + READY;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {READY:?}: {}",
                self.transcript()
            );
            thread::sleep(Duration::from_millis(5));
        };
        // The process is gone: the reader thread reaches EOF and hangs up.
        while let Ok(line) = self.stdout.recv_timeout(READY) {
            self.seen.push(line);
        }
        (status, self.seen.clone())
    }

    /// Waits for a successful exit.
    fn expect_success(&mut self) -> Vec<String> {
        let (status, out) = self.wait_exit();
        assert!(
            status.success(),
            "exited with {status}: {}",
            self.transcript()
        );
        out
    }

    /// SIGKILL, and reap the process: its sockets are closed by the kernel once
    /// `wait` returns.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) until `fd` reports one of `events`.
fn wait_for(fd: i32, events: i16, what: &str) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, READY.as_millis() as i32) };
    assert_eq!(n, 1, "{what}: socket not ready within {READY:?}");
}

/// Our client: `ctx.client` over a fresh connection to `127.0.0.1:port`.
fn connect(ctx: &Contexts, port: u16) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the external peer");
    tcp.set_nodelay(true).unwrap();
    // Bounds the handshake if the peer dies; the shutdown does not use it.
    tcp.set_read_timeout(Some(READY)).unwrap();
    Ssl::new(&ctx.client)
        .unwrap()
        .connect(tcp)
        .expect("handshake with the external peer")
}

/// Our server: accepts one connection on `listener` (bounded) and handshakes.
fn accept(ctx: &Contexts, listener: &TcpListener) -> SslStream<TcpStream> {
    wait_for(listener.as_raw_fd(), libc::POLLIN, "accept");
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(READY)).unwrap();
    Ssl::new(&ctx.server)
        .unwrap()
        .accept(tcp)
        .expect("handshake with the external peer")
}

fn openssl_flag(tls: Tls) -> &'static str {
    match tls {
        Tls::V12 => "-tls1_2",
        Tls::V13 => "-tls1_3",
    }
}

// ---------------------------------------------------------------------------
// A. openssl s_server as the peer, our side the client.
// ---------------------------------------------------------------------------

/// Starts `openssl s_server` for exactly one connection; returns it and its port.
///
/// Readiness is the `ACCEPT 127.0.0.1:PORT` line s_server prints once it listens,
/// and the port is the one it chose (`-accept 127.0.0.1:0`), so no other process
/// can take it in between. A TCP probe would not do: `-naccept 1` counts the probe
/// as its one connection and then exits.
fn s_server(tls: Tls, pems: &Pems) -> (External, u16) {
    require("openssl", "version");
    let mut server = External::spawn(
        "openssl",
        &[
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-cert",
            pems.cert(),
            "-key",
            pems.key(),
            openssl_flag(tls),
        ],
    );
    let line = server.wait_line("ACCEPT line", |l| l.starts_with("ACCEPT"));
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}: {}", server.transcript()));
    (server, port)
}

#[test]
fn s_server_answers_our_close_notify_clean_local() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut server, port) = s_server(tls, &pems);
        let ctx = Contexts::new(tls);
        let mut ours = connect(&ctx, port);

        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} against s_server: {}", server.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!(r.alert, None, "{what}");
        assert_eq!(r.os_error, None, "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(r.tls_version.map(|v| v.as_str()), Some(tls.name()));
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(1000), "{what}: {:?}", r.elapsed);

        drop(ours);
        // s_server saw our close_notify as the end of the stream ("DONE"), answered
        // it in its own shutdown, and exits after its one connection.
        let out = server.expect_success();
        assert!(out.iter().any(|l| l == "DONE"), "{}", server.transcript());
    }
}

// ---------------------------------------------------------------------------
// B. openssl s_client as the peer, our side the server.
// ---------------------------------------------------------------------------

/// Starts `openssl s_client` against our listener, accepts it, and returns once
/// s_client has consumed everything we sent: we write `ping` and wait for
/// s_client to print it. In TLS 1.2 our Finished, in TLS 1.3 our session tickets,
/// come before it in the stream, so nothing is left unread in s_client's socket.
///
/// `-quiet` keeps stdout to the application data; it also implies `-ign_eof`,
/// which `-no_ign_eof` (after it) turns off again: EOF on stdin makes s_client
/// send close_notify.
fn s_client(tls: Tls, ctx: &Contexts) -> (External, SslStream<TcpStream>) {
    require("openssl", "version");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect_to = format!("127.0.0.1:{port}");
    let mut client = External::spawn(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect_to,
            "-quiet",
            "-no_ign_eof",
            openssl_flag(tls),
        ],
    );
    let mut ours = accept(ctx, &listener);
    ours.write_all(b"ping\n").unwrap();
    client.wait_line("echo of our ping", |l| l == "ping");
    (client, ours)
}

#[test]
fn s_client_closes_on_stdin_eof_and_we_answer_clean_peer() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let (mut client, mut ours) = s_client(tls, &ctx);

        // EOF on its stdin: s_client sends close_notify, then SHUT_WR, then reads
        // (for up to 500 ms) what we still send before it closes.
        client.close_stdin();
        let data = read_until_close_notify(&mut ours)
            .unwrap_or_else(|e| panic!("{tls:?}: {e}: {}", client.transcript()));
        assert!(data.is_empty(), "{tls:?}: {data:?}");

        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} against s_client: {}", client.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.initiator, Initiator::Peer, "{what}");
        // Answering ends right after the half-close: nothing to await.
        assert_eq!(r.stage, Stage::HalfClose, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!(r.ssl_calls, 1, "{what}: answering needs one SSL_shutdown");
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(r.tls_version.map(|v| v.as_str()), Some(tls.name()));
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(100), "{what}: {:?}", r.elapsed);

        drop(ours);
        client.expect_success();
    }
}

#[test]
fn s_client_killed_after_the_handshake_truncated() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let (mut client, mut ours) = s_client(tls, &ctx);

        // SIGKILL: the kernel closes s_client's socket. Everything we sent was
        // read (see `s_client`), so the close is a FIN, not an RST. Once `wait`
        // returned, the FIN is on its way; wait until it reached us.
        client.kill();
        wait_for(ours.get_ref().as_raw_fd(), libc::POLLIN, "s_client's FIN");

        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} against a killed s_client: {}", client.transcript());
        // Our close_notify still goes into the kernel; the dead socket answers it
        // with an RST, which on loopback arrives before our shutdown(SHUT_WR) (so
        // `half_closed` is false: ENOTCONN). Linux reads the FIN (EOF) before the
        // pending error, so the answer is truncated, not reset. Without the ping
        // sync in `s_client`, unread bytes (the TLS 1.2 Finished, the TLS 1.3
        // tickets) make the kill itself send an RST: `reset` (ECONNRESET) in flush.
        assert_outcome(&r, Outcome::Truncated, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Server),
            "{what}"
        );
        assert!(r.elapsed < ms(100), "{what}: waited {:?}", r.elapsed);
    }
}

// ---------------------------------------------------------------------------
// C. Python's ssl module as the peer (tests/peers/peer.py), our side the client.
// ---------------------------------------------------------------------------

/// Starts peer.py in `mode` and connects to it.
fn python(tls: Tls, mode: &str, pems: &Pems) -> (External, SslStream<TcpStream>) {
    require("python3", "--version");
    let script = peer_script();
    assert!(script.is_file(), "missing {}", script.display());
    let version = match tls {
        Tls::V12 => "1.2",
        Tls::V13 => "1.3",
    };
    let mut peer = External::spawn(
        "python3",
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
    let line = peer.wait_line("port line", |_| true);
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("first line is not a port: {}", peer.transcript()));
    let ctx = Contexts::new(tls);
    let ours = connect(&ctx, port);
    (peer, ours)
}

#[test]
fn python_answers_our_close_notify_clean() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "answer", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python answer: {}", peer.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(r.tls_version.map(|v| v.as_str()), Some(tls.name()));
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(1000), "{what}: {:?}", r.elapsed);
        drop(ours);
        peer.expect_success();
    }
}

#[test]
fn python_silent_times_out_in_await_peer() {
    for tls in BOTH {
        let pems = Pems::write();
        let (_peer, mut ours) = python(tls, "silent", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 200));
        let what = format!("{tls:?} python silent");
        assert_outcome(&r, Outcome::TimedOut, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.elapsed >= ms(200) && r.elapsed < ms(400),
            "{what}: {:?}",
            r.elapsed
        );
        assert!(
            r.close_notify_sent && r.half_closed && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Client),
            "{what}"
        );
        // `_peer` is killed on drop: it sleeps forever.
    }
}

#[test]
fn python_closes_without_close_notify_truncated() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "truncate", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python truncate: {}", peer.transcript());
        assert_outcome(&r, Outcome::Truncated, &what);
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Client),
            "{what}"
        );
        assert!(r.elapsed < ms(1000), "{what}: waited for the timeout");
        peer.expect_success();
    }
}

#[test]
fn python_resets_reset_with_econnreset() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "reset", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python reset: {}", peer.transcript());
        assert_outcome(&r, Outcome::Reset, &what);
        assert_eq!(r.os_error, Some(libc::ECONNRESET), "{what}");
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && !r.close_notify_received,
            "{what}: {r:?}"
        );
        assert_eq!(r.alert, None, "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(Role::Client),
            "{what}"
        );
        assert!(r.elapsed < ms(1000), "{what}: waited for the timeout");
        peer.expect_success();
    }
}

#[test]
fn python_sends_data_after_our_close_notify_clean_with_discarded_bytes() {
    for tls in BOTH {
        let pems = Pems::write();
        let (mut peer, mut ours) = python(tls, "data", &pems);
        let r = shutdown_blocking(&mut ours, &policy(1000, 1000));
        let what = format!("{tls:?} python data: {}", peer.transcript());
        assert_outcome(&r, Outcome::Clean, &what);
        assert_eq!(r.discarded_bytes, 5000, "{what}");
        assert_eq!(r.initiator, Initiator::Local, "{what}");
        assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}: {r:?}"
        );
        assert_eq!((r.alert, r.os_error), (None, None), "{what}");
        assert!(r.session_resumable, "{what}");
        assert!(r.elapsed < ms(1000), "{what}: {:?}", r.elapsed);
        drop(ours);
        peer.expect_success();
    }
}
