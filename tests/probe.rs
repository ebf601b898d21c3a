//! The probe (`examples/probe/`) against real servers on loopback: nginx,
//! HAProxy, `openssl s_server`, `gnutls-serv`, Python's `http.server` over `ssl`,
//! and a STARTTLS SMTP server of our own in Python (`tests/peers/probe_server.py`).
//! Each server runs as a plain foreground process with a generated config in a
//! temporary directory, its idle timeout short; each test runs the probe as a
//! process with `--json` and checks every row against what that server is known
//! to do. Where a behaviour depends on the server's version or config, the config
//! is pinned here and the comment says so.
//!
//! Every server binary must be installed (`.ci/run` installs them): a missing one
//! fails the test, saying so. Every wait is bounded, and every child process is
//! killed and reaped on drop.

mod util;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::examples;
use util::process::{python, require, Pems, Proc, Ran};

/// The bound of waiting for a server to listen.
const START: Duration = Duration::from_secs(10);
/// The bound of one probe run (the probe's own waits are far shorter).
const RUN: Duration = Duration::from_secs(40);
/// The servers' idle timeout, and how long the probe waits for it.
const IDLE_S: &str = "1";
const IDLE_WAIT: &str = "2500";

// ---------------------------------------------------------------------------
// The probe.
// ---------------------------------------------------------------------------

/// Runs the probe with `args` (built with the other examples, up to date).
fn probe(args: &[&str]) -> Ran {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    examples::run("probe", &args, b"", RUN)
}

/// Runs `probe ADDR --json ARGS` against `server`, expecting success; returns
/// its document.
fn probe_json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec![server.addr.as_str(), "--json"];
    all.extend_from_slice(args);
    let ran = probe(&all);
    assert!(
        ran.status.success(),
        "{}\n--- the server ---\n{}",
        ran.context(),
        server.proc.transcript()
    );
    let doc: Value = serde_json::from_slice(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", ran.context()));
    check_document(&doc);
    doc
}

/// The keys docs/probe.md documents, for the document and for each row.
const DOC_KEYS: [&str; 11] = [
    "target",
    "servername",
    "starttls",
    "request",
    "timeout_ms",
    "idle_timeout_ms",
    "versions",
    "rows",
    "verdict",
    "connections",
    "elapsed_ms",
];
const ROW_KEYS: [&str; 11] = [
    "question",
    "tls",
    "answer",
    "text",
    "ms",
    "bytes",
    "fin_ms",
    "waits_for_ours",
    "reset",
    "resumed",
    "report",
];

#[track_caller]
fn check_keys(v: &Value, want: &[&str]) {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut want = want.to_vec();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "{v:#}");
}

#[track_caller]
fn check_document(doc: &Value) {
    check_keys(doc, &DOC_KEYS);
    for row in doc["rows"].as_array().expect("rows") {
        check_keys(row, &ROW_KEYS);
    }
}

/// The row of `question` in `tls` ("TLSv1.2").
#[track_caller]
fn row<'a>(doc: &'a Value, question: &str, tls: &str) -> &'a Value {
    doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["question"] == question && r["tls"] == tls)
        .unwrap_or_else(|| panic!("no {question} row in {tls}: {doc:#}"))
}

/// Every field of `want` in the row of `question`, in both versions.
#[track_caller]
fn expect(doc: &Value, question: &str, want: Value) {
    for tls in ["TLSv1.2", "TLSv1.3"] {
        let r = row(doc, question, tls);
        for (key, value) in want.as_object().expect("an object") {
            let got = match key.split_once('.') {
                Some((outer, inner)) => &r[outer][inner],
                None => &r[key.as_str()],
            };
            assert_eq!(got, value, "{question} {tls}: {key} in {r:#}");
        }
    }
}

/// The `ms` of a row is within `low..high` milliseconds, in both versions.
#[track_caller]
fn expect_ms(doc: &Value, question: &str, key: &str, low: f64, high: f64) {
    for tls in ["TLSv1.2", "TLSv1.3"] {
        let r = row(doc, question, tls);
        let ms = r[key].as_f64().unwrap_or_else(|| panic!("no {key}: {r:#}"));
        assert!(
            (low..high).contains(&ms),
            "{question} {tls}: {key} {ms}: {r:#}"
        );
    }
}

#[track_caller]
fn expect_verdict(doc: &Value, parts: &[&str]) {
    let verdict = doc["verdict"].as_str().expect("a verdict");
    for part in parts {
        assert!(
            verdict.contains(part),
            "{part:?} not in the verdict {verdict:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Servers.
// ---------------------------------------------------------------------------

/// A port nobody listens on now (the server binds it next; nothing else on
/// this machine picks ports in that range on purpose).
fn free_port() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.local_addr().unwrap().port()
}

/// Waits until `server` accepts connections on `port` (a connection that sends
/// nothing; the servers here drop it).
fn wait_listening(server: &mut Proc, port: u16) {
    let deadline = Instant::now() + START;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "not listening on {port} after {START:?}: {}",
            server.transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process and its address.
struct Server {
    proc: Proc,
    addr: String,
    _pems: Pems,
}

/// `program args` listening on `port` once it accepts.
fn start(pems: Pems, port: u16, program: &str, args: &[&str]) -> Server {
    require(
        program,
        match program {
            "nginx" | "haproxy" => "-v",
            _ => "--version",
        },
    );
    let mut proc = Proc::spawn(program, args);
    wait_listening(&mut proc, port);
    Server {
        proc,
        addr: format!("127.0.0.1:{port}"),
        _pems: pems,
    }
}

/// A Python server of `tests/peers/probe_server.py` in `mode`; its first line is
/// its port.
fn python_server(mode: &str, extra: &[&str]) -> Server {
    let pems = Pems::write();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/probe_server.py");
    let mut args = vec![
        script.to_str().unwrap(),
        mode,
        "--cert",
        pems.cert(),
        "--key",
        pems.key(),
        "--idle",
        IDLE_S,
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(python(), &args);
    let line = proc.next_line("the port", START);
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a port: {}", proc.transcript()));
    Server {
        proc,
        addr: format!("127.0.0.1:{port}"),
        _pems: pems,
    }
}

/// `openssl s_server -www EXTRA` on a port it picks, serving connections one
/// after the other until killed.
fn s_server(extra: &[&str]) -> Server {
    require("openssl", "version");
    let pems = Pems::write();
    let mut args = vec![
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-cert",
        pems.cert(),
        "-key",
        pems.key(),
        "-www",
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn("openssl", &args);
    let line = proc.wait_line("ACCEPT line", START, |l| l.starts_with("ACCEPT "));
    let addr = line["ACCEPT ".len()..].trim().to_string();
    Server {
        proc,
        addr,
        _pems: pems,
    }
}

// ---------------------------------------------------------------------------
// The servers, one test each.
// ---------------------------------------------------------------------------

/// nginx (Debian 12's 1.22), `client_header_timeout 1s` for the idle question.
/// - It never answers our close_notify: reading one sets its `no_send_shutdown`
///   flag, so it closes with a bare FIN.
/// - An idle connection gets close_notify and a FIN at once, and nginx closes
///   without reading ours (our close_notify meets an RST); so does a response
///   with `Connection: close`.
/// - With input left unread it lingers (`lingering_close on`, the default):
///   close_notify, FIN, and it reads on, so ours is read and nothing is reset.
/// - Stateless tickets (`ssl_session_tickets on`, the default): every session
///   resumes, also after an unclean close.
#[test]
fn nginx_never_answers_close_notify_and_lingers_on_unread_input() {
    let pems = Pems::write();
    let port = free_port();
    let dir = pems.dir().to_str().unwrap().to_string();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log stderr notice;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n\
         proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
         uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         client_header_timeout {IDLE_S}s;\n  keepalive_timeout {IDLE_S}s;\n\
         lingering_close on;\n  ssl_session_tickets on;\n\
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n\
         ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
         location / {{ return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n",
        pems.cert(),
        pems.key()
    );
    let file = pems.file("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    let server = start(
        pems,
        port,
        "nginx",
        &["-p", &dir, "-c", &file, "-e", "stderr"],
    );
    let doc = probe_json(
        &server,
        &["--request", "http", "--idle-timeout-ms", IDLE_WAIT],
    );

    expect(
        &doc,
        "close_first",
        json!({"answer": "fin", "report.outcome": "truncated"}),
    );
    expect(
        &doc,
        "idle",
        json!({"answer": "close_notify", "waits_for_ours": false, "reset": true,
               "report.outcome": "clean", "report.initiator": "peer"}),
    );
    expect_ms(&doc, "idle", "ms", 900.0, 2400.0);
    expect_ms(&doc, "idle", "fin_ms", 0.0, 100.0);
    expect(
        &doc,
        "request",
        json!({"answer": "close_notify", "waits_for_ours": false}),
    );
    expect(
        &doc,
        "unread_input",
        json!({"answer": "close_notify", "waits_for_ours": true, "reset": false}),
    );
    expect(
        &doc,
        "session_clean",
        json!({"answer": "resumed", "report.outcome": "truncated"}),
    );
    expect(
        &doc,
        "session_unclean",
        json!({"answer": "resumed", "report.outcome": "quiet", "report.session_resumable": false}),
    );
    expect_verdict(
        &doc,
        &[
            "answers our close_notify with a FIN only",
            "no RST on unread input",
        ],
    );
}

/// HAProxy (Debian 12's 2.6) terminating TLS, answering every request itself,
/// `timeout client 1s`.
/// - It answers our close_notify with its own.
/// - Idle (after 1 s), and after a response, it sends close_notify and a FIN at
///   once and closes. Whether our close_notify, sent as soon as its FIN is read,
///   still finds the connection open (read) or closed (an RST) depends on how
///   soon HAProxy tears it down: usually closed, but not asserted.
/// - It closes with our extra input unread: an RST (the short response arrives
///   before it on loopback).
/// - Stateless tickets (the default): sessions resume after any close.
#[test]
fn haproxy_answers_close_notify_and_resets_on_unread_input() {
    let pems = Pems::write();
    let port = free_port();
    let combined = pems.file("combined.pem");
    let pem = format!(
        "{}{}",
        std::fs::read_to_string(pems.cert()).unwrap(),
        std::fs::read_to_string(pems.key()).unwrap()
    );
    std::fs::write(&combined, pem).unwrap();
    let conf = format!(
        "global\n  log stderr format raw local0\ndefaults\n  mode http\n  log global\n\
         timeout connect 1s\n  timeout client {IDLE_S}s\n  timeout server 1s\n\
         timeout http-keep-alive {IDLE_S}s\n\
         frontend fe\n  bind 127.0.0.1:{port} ssl crt {combined}\n\
         http-request return status 200 content-type text/plain string \"hello\\n\"\n"
    );
    let file = pems.file("haproxy.cfg");
    std::fs::write(&file, conf).unwrap();
    let server = start(pems, port, "haproxy", &["-f", &file, "-db"]);
    let doc = probe_json(
        &server,
        &["--request", "http", "--idle-timeout-ms", IDLE_WAIT],
    );

    expect(
        &doc,
        "close_first",
        json!({"answer": "close_notify", "report.outcome": "clean"}),
    );
    expect(&doc, "idle", json!({"answer": "close_notify"}));
    expect_ms(&doc, "idle", "ms", 900.0, 2400.0);
    expect_ms(&doc, "idle", "fin_ms", 0.0, 100.0);
    expect(&doc, "request", json!({"answer": "close_notify"}));
    expect_ms(&doc, "request", "fin_ms", 0.0, 100.0);
    expect(
        &doc,
        "unread_input",
        json!({"answer": "close_notify", "reset": true}),
    );
    expect(
        &doc,
        "session_clean",
        json!({"answer": "resumed", "report.session_resumable": true}),
    );
    expect(&doc, "session_unclean", json!({"answer": "resumed"}));
    expect_verdict(
        &doc,
        &[
            "answers close_notify",
            "closes idle after 1.",
            "RST on unread input",
            "never truncates",
        ],
    );
}

/// `openssl s_server -www -no_ticket`: one connection at a time, no idle
/// timeout, sessions in its cache instead of tickets. Its version decides:
/// - 3.0 and later answer our close_notify; after a response they send
///   close_notify and wait for ours. With input left unread they send
///   close_notify and a FIN, then read what is left for 0.5 s (s_server's own
///   limit) before closing: the probe, which waits 300 ms before it reads
///   (half its `--timeout-ms 600`), answers within that time, and its
///   close_notify is read (no RST). A session whose connection ended without
///   close_notify is removed from the cache (the read of the EOF is a fatal
///   error): it does not resume.
/// - 1.1.1 sends no close_notify at all (`SSL_set_shutdown`, then `close()`),
///   and keeps the session after an unclean close.
#[test]
fn s_server_3_forgets_sessions_ended_uncleanly_and_1_1_1_sends_no_close_notify() {
    let server = s_server(&["-no_ticket"]);
    let args = [
        "--request",
        "http",
        "--idle-timeout-ms",
        "500",
        "--timeout-ms",
        "600",
    ];
    let doc = probe_json(&server, &args);

    expect(&doc, "idle", json!({"answer": "kept_open"}));
    if openssl_111() {
        for question in ["close_first", "request", "unread_input"] {
            expect(
                &doc,
                question,
                json!({"answer": "fin", "report.outcome": "truncated"}),
            );
        }
        expect(&doc, "session_unclean", json!({"answer": "resumed"}));
    } else {
        expect(&doc, "close_first", json!({"answer": "close_notify"}));
        // It waits for ours longer than the probe's 600 ms, and closes once read.
        expect(
            &doc,
            "request",
            json!({"answer": "close_notify", "fin_ms": null, "waits_for_ours": true}),
        );
        expect(
            &doc,
            "unread_input",
            json!({"answer": "close_notify", "waits_for_ours": true, "reset": false}),
        );
        expect(&doc, "session_clean", json!({"answer": "resumed"}));
        expect(
            &doc,
            "session_unclean",
            json!({"answer": "not_resumed", "resumed": false}),
        );
        expect_verdict(
            &doc,
            &[
                "resumes sessions after clean closes only",
                "never truncates",
            ],
        );
    }
}

/// Whether the `openssl` tool is 1.1.1 (the OpenSSL matrix puts each version's
/// tool on PATH).
fn openssl_111() -> bool {
    let out = Command::new("openssl")
        .arg("version")
        .output()
        .expect("openssl version");
    String::from_utf8_lossy(&out.stdout).starts_with("OpenSSL 1.1.1")
}

/// `gnutls-serv --http` (Debian 12's GnuTLS 3.7): no idle timeout. It answers
/// our close_notify; after a response it sends close_notify and a FIN and
/// closes without reading ours (an RST answers it), and with our input unread
/// it closes with an RST. (gnutls-serv has no option for the address: it
/// listens on every interface, on the free port picked here.)
#[test]
fn gnutls_serv_answers_close_notify_and_closes_without_waiting() {
    let pems = Pems::write();
    let port = free_port();
    let (cert, key) = (pems.cert().to_string(), pems.key().to_string());
    let server = start(
        pems,
        port,
        "gnutls-serv",
        &[
            "--http",
            "--x509certfile",
            &cert,
            "--x509keyfile",
            &key,
            "-p",
            &port.to_string(),
        ],
    );
    let args = ["--request", "http", "--idle-timeout-ms", "500"];
    let doc = probe_json(&server, &args);

    expect(
        &doc,
        "close_first",
        json!({"answer": "close_notify", "report.outcome": "clean"}),
    );
    expect(&doc, "idle", json!({"answer": "kept_open", "ms": null}));
    expect(
        &doc,
        "request",
        json!({"answer": "close_notify", "waits_for_ours": false}),
    );
    expect(
        &doc,
        "unread_input",
        json!({"answer": "close_notify", "reset": true}),
    );
    expect(&doc, "session_clean", json!({"answer": "resumed"}));
    expect(&doc, "session_unclean", json!({"answer": "resumed"}));
    expect_verdict(
        &doc,
        &["keeps idle connections over 0.5 s", "never truncates"],
    );
}

/// Python's `http.server` over `ssl`, as its documentation sets it up: it never
/// sends close_notify, so every close is a truncation. Its handler timeout (1 s)
/// ends an idle connection with a bare FIN. With our input unread, its close is
/// an RST, and a response larger than what our small receive window holds
/// (`/big`, 256 KiB) loses its tail.
#[test]
fn python_http_server_truncates_and_its_rst_destroys_a_large_response() {
    let server = python_server("https", &[]);
    let args = ["--request", "http:/big", "--idle-timeout-ms", IDLE_WAIT];
    let doc = probe_json(&server, &args);

    expect(
        &doc,
        "close_first",
        json!({"answer": "fin", "report.outcome": "truncated"}),
    );
    expect(
        &doc,
        "idle",
        json!({"answer": "fin", "report.outcome": "truncated"}),
    );
    expect_ms(&doc, "idle", "ms", 900.0, 2400.0);
    expect(&doc, "request", json!({"answer": "fin"}));
    expect(
        &doc,
        "unread_input",
        json!({"answer": "rst", "reset": true}),
    );
    for tls in ["TLSv1.2", "TLSv1.3"] {
        // The whole response: the page and its headers.
        let full = row(&doc, "request", tls)["bytes"].as_u64().unwrap();
        assert!(full > 256 * 1024, "{tls}: {doc:#}");
        let bytes = row(&doc, "unread_input", tls)["bytes"].as_u64().unwrap();
        assert!(
            bytes < 256 * 1024,
            "{tls}: the RST destroyed nothing: {doc:#}"
        );
    }
    expect(&doc, "session_unclean", json!({"answer": "resumed"}));
    expect_verdict(
        &doc,
        &[
            "answers our close_notify with a FIN only",
            "an RST on unread input destroys the response",
        ],
    );
}

/// Our STARTTLS SMTP server (`probe_server.py smtp`): it ends TLS with
/// `unwrap()`, which sends close_notify and then waits up to 1 s for ours
/// (pinned with `--unwrap 1`; the probe waits 2 s), so the FIN follows its
/// close_notify by about a second, idle (1 s) or after `QUIT`. QUIT followed by
/// more commands: unwrap() stops at them, and the server closes with them
/// unread (an RST, after the reply and close_notify, which leave at once:
/// TCP_NODELAY).
#[test]
fn starttls_smtp_server_waits_a_second_for_our_close_notify() {
    let server = python_server("smtp", &["--unwrap", "1"]);
    let args = [
        "--starttls",
        "smtp",
        "--request",
        "QUIT",
        "--idle-timeout-ms",
        IDLE_WAIT,
        "--timeout-ms",
        "2000",
    ];
    let doc = probe_json(&server, &args);

    assert_eq!(doc["starttls"], "smtp", "{doc:#}");
    expect(
        &doc,
        "close_first",
        json!({"answer": "close_notify", "report.outcome": "clean"}),
    );
    expect(&doc, "idle", json!({"answer": "close_notify", "bytes": 23}));
    expect_ms(&doc, "idle", "ms", 900.0, 2400.0);
    expect_ms(&doc, "idle", "fin_ms", 900.0, 1900.0);
    expect(
        &doc,
        "request",
        json!({"answer": "close_notify", "bytes": 9}),
    );
    expect_ms(&doc, "request", "fin_ms", 900.0, 1900.0);
    expect(
        &doc,
        "unread_input",
        json!({"answer": "close_notify", "reset": true}),
    );
    expect(&doc, "session_clean", json!({"answer": "resumed"}));
    expect_verdict(&doc, &["waits for ours up to 1.", "never truncates"]);
}

/// The IMAP and FTP dialects of `--starttls` reach TLS with the same server in
/// those dialects (`* OK`, `a1 STARTTLS`, `a1 OK`; a two-line `220`, `AUTH TLS`,
/// `234`); the wrong dialect fails at once, quoting the greeting.
#[test]
fn starttls_imap_and_ftp_reach_tls_and_the_wrong_dialect_fails() {
    for mode in ["imap", "ftp"] {
        let server = python_server(mode, &[]);
        let args = ["--starttls", mode, "--tls1.3", "--idle-timeout-ms", "100"];
        let doc = probe_json(&server, &args);
        assert_eq!(doc["starttls"], mode, "{doc:#}");
        let first = row(&doc, "close_first", "TLSv1.3");
        assert_eq!(first["answer"], "close_notify", "{mode}: {first:#}");
        assert_eq!(first["report"]["outcome"], "clean", "{mode}: {first:#}");
        let idle = row(&doc, "idle", "TLSv1.3");
        assert_eq!(idle["answer"], "kept_open", "{mode}: {idle:#}");

        let wrong = if mode == "imap" { "smtp" } else { "imap" };
        let ran = probe(&[&server.addr, "--starttls", wrong]);
        assert_eq!(ran.code(), Some(1), "{}", ran.context());
        let greeting = match mode {
            "imap" => "\"* OK [CAPABILITY IMAP4rev1 STARTTLS] probe_server.py\"",
            _ => "\"220-probe_server.py\"",
        };
        assert!(ran.stderr.contains(greeting), "{}", ran.context());
    }
}

// ---------------------------------------------------------------------------
// Failures and the command line.
// ---------------------------------------------------------------------------

/// A server that speaks only TLS 1.3: `--tls1.2` fails naming the alert it
/// sends (exit 1); without it the probe asks in TLS 1.3 and says why 1.2 was
/// not probed. Nobody listening: exit 1, saying so. A plaintext greeting where
/// TLS was expected: the hint to use --starttls.
#[test]
fn failures_exit_1_naming_the_cause() {
    let server = s_server(&["-tls1_3"]);
    let addr = server.addr.clone();

    let ran = probe(&[&addr, "--tls1.2"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.context());
    assert_eq!(
        ran.stderr.trim(),
        "probe: handshake failed: the server sent protocol_version(70)",
        "{}",
        ran.context()
    );
    let ran = probe(&[&addr, "--tls1.2", "--json"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.context());
    let doc: Value = serde_json::from_slice(&ran.stdout).expect("JSON");
    assert_eq!(doc["alert"], "protocol_version", "{doc:#}");

    let doc = probe_json(
        &server,
        &["--idle-timeout-ms", "100", "--timeout-ms", "1000"],
    );
    assert_eq!(
        doc["versions"],
        json!([
            {"tls": "TLSv1.2", "probed": false, "alert": "protocol_version",
             "error": "handshake failed: the server sent protocol_version(70)"},
            {"tls": "TLSv1.3", "probed": true, "alert": null, "error": null}
        ])
    );
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{doc:#}");
    assert!(rows.iter().all(|r| r["tls"] == "TLSv1.3"), "{doc:#}");
    drop(server);

    let closed = free_port();
    let ran = probe(&[&format!("127.0.0.1:{closed}")]);
    assert_eq!(ran.code(), Some(1), "{}", ran.context());
    assert!(
        ran.stderr.contains("Connection refused"),
        "{}",
        ran.context()
    );

    let smtp = python_server("smtp", &[]);
    let ran = probe(&[&smtp.addr, "--tls1.3"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.context());
    assert!(ran.stderr.contains("use --starttls"), "{}", ran.context());
}

#[test]
fn bad_command_lines_exit_2_with_usage() {
    for args in [
        &[][..],
        &["127.0.0.1"],
        &["127.0.0.1:0"],
        &["127.0.0.1:443", "--bogus"],
        &["127.0.0.1:443", "127.0.0.1:444"],
        &["127.0.0.1:443", "--starttls", "pop3"],
        &["127.0.0.1:443", "--timeout-ms", "0"],
        &["127.0.0.1:443", "--idle-timeout-ms", "soon"],
        &["127.0.0.1:443", "--request", ""],
        &["127.0.0.1:443", "--request", "http:nopath"],
        &["127.0.0.1:443", "--json=yes"],
        &["127.0.0.1:443", "--servername"],
    ] {
        let ran = probe(args);
        assert_eq!(ran.code(), Some(2), "{args:?}: {}", ran.context());
        assert!(ran.stdout.is_empty(), "{args:?}: {}", ran.context());
        let lines = ran.stderr_lines();
        assert_eq!(lines.len(), 2, "{args:?}: {}", ran.context());
        assert!(
            lines[0].starts_with("probe: "),
            "{args:?}: {}",
            ran.context()
        );
        assert!(
            lines[1].starts_with("usage: probe HOST:PORT"),
            "{args:?}: {}",
            ran.context()
        );
    }
    let ran = probe(&["--help"]);
    ran.assert_success();
    assert!(
        ran.stdout_text().starts_with("usage: probe HOST:PORT"),
        "{}",
        ran.context()
    );
}
