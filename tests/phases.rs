//! TLS as a phase of a longer connection, through the examples: STARTTLS, HTTP
//! CONNECT through a proxy written for the tests (the SNI the server sees, a
//! certificate for the wrong name), STOPTLS with plaintext after it.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ShutdownResult, Ssl};
use serde_json::json;
use util::examples::*;
use util::process::{Job, Pems, Ran};
use util::{expect_line, read_until_close_notify, stop_tls_policy, wait_eof, Contexts, Tls, BOTH};

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
