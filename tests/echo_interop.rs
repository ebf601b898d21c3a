//! The echo examples against OpenSSL's own tools: `openssl s_client` against
//! `echo_server`, `echo_client` against `openssl s_server`.

mod util;

use serde_json::{json, Value};
use util::examples::*;
use util::process::{self, Pems, Proc};
use util::{Tls, BOTH};

// 2. openssl s_client -> echo_server.
// ---------------------------------------------------------------------------

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
            tls.openssl_flag(),
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
