//! The echo example pair as real processes on real loopback sockets:
//! `echo_client` against `echo_server` in every close mode and server mode, in
//! TLS 1.2 and 1.3; the server's idle timeout; SIGTERM with open connections;
//! bad command lines. What is checked is the command-line contract in the README
//! and in the examples' own documentation: every JSON line is parsed and compared
//! field by field, every wait is bounded, every child process is killed and
//! reaped on drop. (More: echo_load.rs, echo_interop.rs, phases.rs, tour.rs.)

mod util;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, ShutdownResult, Ssl, SslStream};
use serde_json::{json, Value};
use util::examples::*;
use util::process::{Job, Pems};
use util::{read_until_close_notify, wait_eof, Contexts, Tls, BOTH};

// 1. echo_client -> echo_server: every close mode, every server mode, both versions.
// ---------------------------------------------------------------------------

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
