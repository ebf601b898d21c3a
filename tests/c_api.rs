//! The C API from C: `examples/c/echo_client.c` and `tests/c/cn_test.c` are
//! compiled with strict flags (`-Wall -Wextra -Wpedantic -Werror`) against the
//! C library built from this tree and its header, then run against real peers
//! (`openssl s_server` and Python's `ssl` module, `tests/peers/peer.py`) on
//! loopback, in TLS 1.2 and 1.3, through both the blocking and the step API.
//!
//! `cn_test` prints the report as one line of `key=value` pairs; the assertions
//! here are on those fields.
//!
//! Needs `cc`, `pkg-config`, `readelf`, `openssl` and `python3` on `PATH` (CI
//! installs them):
//! when one is missing the tests fail saying so, they never skip.
//!
//! `CLOSENOTIFY_VALGRIND=1 cargo test --test c_api` runs every C program under
//! valgrind (memory errors, and definite leaks, fail the test); time bounds that a
//! slow valgrind run can exceed are widened in that mode only.

mod util;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use util::cbuild::Fields;
use util::cbuild::{self, compile, profile_dir, run_c, upper_ms};
use util::process::{self, require, Pems, Proc, Ran};
use util::{Tls, BOTH};

/// How long an external peer gets to become ready, answer or exit.
const READY: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Compiling the C programs, once per test binary.
// ---------------------------------------------------------------------------

struct Programs {
    cn_test: PathBuf,
    cn_errors: PathBuf,
    echo_client: PathBuf,
}

fn programs() -> &'static Programs {
    static PROGRAMS: OnceLock<Result<Programs, String>> = OnceLock::new();
    match PROGRAMS.get_or_init(compile_all) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn compile_all() -> Result<Programs, String> {
    let (dir, flags) = cbuild::prepare()?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(Programs {
        cn_test: compile(&src.join("tests/c/cn_test.c"), &dir, "cn_test", &flags)?,
        cn_errors: compile(&src.join("tests/c/cn_errors.c"), &dir, "cn_errors", &flags)?,
        echo_client: compile(
            &src.join("examples/c/echo_client.c"),
            &dir,
            "echo_client",
            &flags,
        )?,
    })
}

// ---------------------------------------------------------------------------
// Running the C programs.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// External peers (as in tests/external_peers.rs).
// ---------------------------------------------------------------------------

/// An external peer process, listening on `port`; killed and reaped on drop.
/// Its stdin stays open: `openssl s_server` ends the connection at EOF on it.
struct External {
    proc: Proc,
    port: u16,
    _pems: Pems,
}

impl External {
    fn transcript(&self) -> String {
        self.proc.transcript()
    }

    /// Waits (bounded) for a successful exit on its own.
    fn expect_success(&mut self) {
        self.proc.expect_success(READY);
    }
}

/// The C shutdown APIs: blocking, and the step API with and without poll()'s
/// revents.
const APIS: [&str; 4] = ["blocking", "step", "step-revents", "closer"];

/// `openssl s_server` for exactly one connection, on the port it chose (see
/// `util::process::s_server`).
fn s_server(tls: Tls) -> External {
    require("openssl", "version");
    let pems = Pems::write();
    let (server, addr) = process::s_server(&pems, &[tls.openssl_flag()], READY);
    External {
        proc: server,
        port: addr.port(),
        _pems: pems,
    }
}

/// `tests/peers/peer.py MODE`, listening on the port it prints first.
fn python(tls: Tls, mode: &str) -> External {
    let pems = Pems::write();
    let (peer, port) = process::peer_py(&pems, mode, tls.arg(), READY);
    External {
        proc: peer,
        port,
        _pems: pems,
    }
}

/// `cn_test API SCENARIO PORT VERSION [extra...]` against `peer`; its report,
/// with the version and the API's own invariants checked.
fn cn_test(api: &str, scenario: &str, tls: Tls, peer: &External, extra: &[&str]) -> Fields {
    let r = cn_run(api, scenario, tls, peer, extra);
    // Every retry follows a readiness event: a handful of calls, never a spin.
    r.expect_range("ssl_calls", 1, 10);
    r
}

/// As `cn_test`, without the bounds on OpenSSL calls (a failure handed over
/// makes none).
fn cn_run(api: &str, scenario: &str, tls: Tls, peer: &External, extra: &[&str]) -> Fields {
    let port = peer.port.to_string();
    let mut args = vec![api, scenario, port.as_str(), tls.arg()];
    args.extend_from_slice(extra);
    let limit = upper_ms(100).to_string();
    if api != "blocking" {
        args.extend(["--step-limit-ms", &limit]);
    }
    let ran = run_c(&programs().cn_test, &args);
    let mut r = ran.c_report();
    r.context = format!("{}\npeer: {}", r.context, peer.transcript());
    r.expect("tls_version", tls.wire());
    match api {
        "blocking" => r.expect("steps", "0"),
        _ => r.expect_range("steps", 1, 10),
    };
    r
}

// ---------------------------------------------------------------------------
// The scenarios, each in TLS 1.2 and 1.3, through both APIs.
// ---------------------------------------------------------------------------

/// What every clean shutdown that we initiated looks like.
fn expect_clean_local(r: &Fields) {
    r.expect("outcome", "clean")
        .expect("initiator", "0")
        .expect("stage", "await_peer")
        .expect("alert", "-1")
        .expect("alert_name", "none")
        .expect("os_error", "0")
        .expect("discarded_bytes", "0")
        .expect_flags(&[
            ("close_notify_sent", true),
            ("close_notify_received", true),
            ("half_closed", true),
            ("session_resumable", true),
        ])
        .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
}

#[test]
fn s_server_answers_our_close_notify_clean_local() {
    for tls in BOTH {
        for api in APIS {
            let mut server = s_server(tls);
            let r = cn_test(api, "plain", tls, &server, &[]);
            if cfg!(ossl300) {
                expect_clean_local(&r);
            } else {
                // OpenSSL 1.1.1's s_server closes without close_notify.
                r.expect("outcome", "truncated");
            }
            // It saw our close_notify, answered it, and exits after its one
            // connection.
            server.expect_success();
        }
    }
}

/// A careless caller hands the step API a blocking socket: every step returns at
/// once (cn_test fails if one takes 100 ms), and the shutdown ends within its
/// policy. The socket is blocking again afterwards (cn_test checks its flags).
#[test]
fn a_blocking_fd_in_the_step_api_is_bounded_by_the_policy() {
    for tls in BOTH {
        for api in ["step", "step-revents"] {
            let peer = python(tls, "silent");
            let r = cn_test(
                api,
                "plain",
                tls,
                &peer,
                &["--peer-timeout-ms", "300", "--blocking-fd"],
            );
            r.expect("outcome", "timed_out")
                .expect("stage", "await_peer")
                .expect_range("elapsed_ms", 300, upper_ms(600) as i64);
        }
    }
}

/// In a poll() loop shared with other sockets, wake-ups come every 10 ms
/// whatever this socket does. Told the socket's revents, the step makes no
/// OpenSSL call on them; without them, every wake-up costs one.
#[test]
fn step_revents_costs_no_openssl_call_per_foreign_wakeup() {
    let tls = Tls::V13;
    let mut calls = Vec::new();
    let limit = upper_ms(100).to_string();
    for api in ["step-revents", "step"] {
        let peer = python(tls, "silent");
        let port = peer.port.to_string();
        let args = [
            api,
            "plain",
            port.as_str(),
            tls.arg(),
            "--peer-timeout-ms",
            "300",
            "--tick-ms",
            "10",
            "--step-limit-ms",
            &limit,
        ];
        let r = run_c(&programs().cn_test, &args).c_report();
        r.expect("outcome", "timed_out")
            .expect("stage", "await_peer")
            .expect_range("elapsed_ms", 300, upper_ms(600) as i64);
        calls.push((r.num("ssl_calls"), r.num("steps")));
    }
    let (with_revents, steps) = calls[0];
    assert!(steps >= 10, "the loop did not tick: {steps} steps");
    // SSL_shutdown, one read before waiting, the TLS 1.3 tickets the peer sends
    // after the handshake: a handful, whatever the number of wake-ups.
    assert!(
        with_revents <= 6,
        "{with_revents} OpenSSL calls for {steps} steps with revents"
    );
    let (without, steps) = calls[1];
    assert!(
        without >= 15,
        "{without} OpenSSL calls for {steps} steps without revents: the contrast is gone"
    );
}

#[test]
fn a_reset_peer_does_not_kill_a_c_program_with_default_sigpipe() {
    for (tls, closer) in BOTH.into_iter().flat_map(|t| [(t, false), (t, true)]) {
        let mut peer = python(tls, "reset-now");
        let port = peer.port.to_string();
        let mut args = vec!["sigpipe", &port, tls.arg()];
        if closer {
            args.push("closer"); // the C closer writes close_notify on the reset socket
        }
        let ran = run_c(&programs().cn_test, &args);
        // Not killed by SIGPIPE (the status says which signal, if any).
        assert_eq!(ran.status.signal(), None, "{}", ran.context());
        let r = ran.c_report();
        r.expect("outcome", "reset")
            .expect("os_error", &libc::EPIPE.to_string())
            .expect("stage", "flush")
            .expect("tls_version", tls.wire())
            .expect_flags(&[("close_notify_sent", false), ("session_resumable", false)]);
        peer.expect_success();
    }
}

// ---------------------------------------------------------------------------
// A connection handed over: unsent data (closenotify_shutdown_set_unsent), the
// failure of the application's last call (closenotify_shutdown_set_error).
// ---------------------------------------------------------------------------

/// The APIs that take a handover: the step APIs, and the closer (through a
/// shutdown object given to `closenotify_closer_add_shutdown`).
const HANDOVER_APIS: [&str; 3] = ["step", "step-revents", "closer"];

/// `cn_test API unsent` against `peer.py sink`: cn_test fills the socket
/// buffers until an SSL_write stalls half way through a record, and says so;
/// then the peer is told to read. Returns cn_test's `stalled` line, its report
/// and the peer's `received` line.
fn unsent_run(api: &str, tls: Tls, handover: bool) -> (Fields, Fields, Fields) {
    let mut peer = python(tls, "sink");
    let port = peer.port.to_string();
    // Bounds only: the peer reads as soon as it is told to.
    let timeout = upper_ms(5000).to_string();
    let limit = upper_ms(100).to_string();
    let mut args = vec![
        api,
        "unsent",
        &port,
        tls.arg(),
        "--flush-timeout-ms",
        &timeout,
        "--peer-timeout-ms",
        &timeout,
        "--step-limit-ms",
        &limit,
    ];
    if !handover {
        args.push("--no-handover");
    }
    let mut c = cbuild::spawn_c(&programs().cn_test, &args);
    let stalled = c.wait_line("the stalled line", cbuild::run_limit(), |l| {
        l.starts_with("stalled ")
    });
    // The socket buffers are full and a record is half written: the peer may
    // read now.
    peer.proc.write_stdin(b"go\n");
    let (status, lines) = c.wait_exit(cbuild::run_limit());
    let context = format!("{}\npeer: {}", c.transcript(), peer.transcript());
    cbuild::assert_no_valgrind_errors(status, &context);
    assert!(status.success(), "cn_test exited with {status}: {context}");
    let report = lines
        .iter()
        .find(|l| l.starts_with("outcome="))
        .unwrap_or_else(|| panic!("no report line: {context}"));
    let received = peer
        .proc
        .wait_line("the received line", READY, |l| l.starts_with("received="));
    peer.expect_success();
    let stalled = Fields::parse(stalled.strip_prefix("stalled ").unwrap(), context.clone());
    let received = Fields::parse(&received, context.clone());
    let r = Fields::parse(report, context);
    r.expect("tls_version", tls.wire());
    (stalled, r, received)
}

/// The application's last SSL_write stopped half way through a record; the
/// rest of its data, from the start of that call, is handed over. The peer
/// receives every byte, in order, then our close_notify, which it answers.
#[test]
fn unsent_data_handed_over_is_sent_before_close_notify() {
    for tls in BOTH {
        for api in HANDOVER_APIS {
            let (stalled, r, received) = unsent_run(api, tls, true);
            r.expect("outcome", "clean")
                .expect("initiator", "0")
                .expect("stage", "await_peer")
                .expect("detail", "none")
                .expect_flags(&[("close_notify_sent", true), ("close_notify_received", true)])
                .expect_range("ssl_calls", 2, 1000);
            let total = stalled.num("written") + stalled.num("unsent");
            received
                .expect("end", "close_notify")
                .expect("received", &total.to_string())
                .expect("sha256", stalled.str("sha256"));
        }
    }
}

/// The control: the same stalled write without the handover. OpenSSL cannot
/// put close_notify behind the half-written record (3.0 and 1.1.1: "bad write
/// retry"; 3.2+: the alert is dropped), so nothing more is sent: `quiet`, and
/// the peer sees the stream end without close_notify, short of the data.
#[test]
fn unsent_data_not_handed_over_is_quiet() {
    let detail = if cfg!(ossl320) {
        "close_notify_dropped_by_OpenSSL_behind_a_half-finished_write"
    } else {
        "bad_write_retry"
    };
    for tls in BOTH {
        let (stalled, r, received) = unsent_run("step-revents", tls, false);
        r.expect("outcome", "quiet")
            .expect("detail", detail)
            .expect_flags(&[("close_notify_sent", false)]);
        assert_ne!(received.str("end"), "close_notify", "{}", received.context);
        let total = stalled.num("written") + stalled.num("unsent");
        assert!(
            received.num("received") < total,
            "all {total} bytes arrived: {}",
            received.context
        );
    }
}

/// What a failure handed over looks like, whatever it was: nothing sent, no
/// OpenSSL I/O call, done in one step, and the session forgotten.
fn handed_over(r: &Fields, outcome: &str, os_error: i32, alert: &str) -> bool {
    r.str("outcome") == outcome
        && r.num("os_error") == i64::from(os_error)
        && r.str("alert_name") == alert
        && r.str("ssl_calls") == "0"
        && r.str("steps") == "1"
        && r.str("stage") == "flush"
        && !r.flag("close_notify_sent")
        && !r.flag("close_notify_received")
        && !r.flag("half_closed")
        && !r.flag("session_resumable")
}

/// The application's SSL_read failed against `mode` of peer.py
/// (`scenario`: `read-error`, or `alert-read-error` after a forged record);
/// handed over, the report names that failure. Without the handover (the
/// control) it does not.
fn failed_read_is_reported(mode: &str, scenario: &str, outcome: &str, os_error: i32, alert: &str) {
    for tls in BOTH {
        for api in HANDOVER_APIS {
            let peer = python(tls, mode);
            let r = cn_run(api, scenario, tls, &peer, &[]);
            assert!(
                handed_over(&r, outcome, os_error, alert),
                "expected {outcome} (os_error {os_error}, alert {alert}) without a call: {}",
                r.context
            );
        }
        let peer = python(tls, mode);
        let r = cn_run("step", scenario, tls, &peer, &["--no-handover"]);
        assert!(
            !handed_over(&r, outcome, os_error, alert),
            "the control reported the failure it was not given: {}",
            r.context
        );
    }
}

#[test]
fn a_read_failed_with_a_reset_is_reported_reset() {
    failed_read_is_reported("reset-now", "read-error", "reset", libc::ECONNRESET, "none");
}

#[test]
fn a_read_failed_on_eof_without_close_notify_is_reported_truncated() {
    failed_read_is_reported("truncate-now", "read-error", "truncated", 0, "none");
}

#[test]
fn a_read_failed_on_a_fatal_alert_is_reported_peer_alert() {
    failed_read_is_reported(
        "alert",
        "alert-read-error",
        "peer_alert",
        0,
        "bad_record_mac",
    );
}

/// SSL_ERROR_WANT_READ is no failure: handed over, it is ignored and the
/// shutdown runs as usual.
#[test]
fn a_want_read_handed_over_is_ignored() {
    for tls in BOTH {
        for api in HANDOVER_APIS {
            let mut peer = python(tls, "answer");
            let r = cn_test(api, "want-read", tls, &peer, &[]);
            expect_clean_local(&r);
            peer.expect_success();
        }
    }
}

#[test]
fn every_result_code_from_c() {
    let ran = run_c(&programs().cn_errors, &[]);
    ran.assert_success();
    let stdout = ran.stdout_text();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("errors: ok"), "{}", ran.context());
    // Under the OpenSSL matrix, the C library carries the version it names.
    let openssl = lines.next().unwrap_or_default();
    if let Ok(expected) = std::env::var("CLOSENOTIFY_EXPECT_OPENSSL") {
        assert!(
            openssl.starts_with(&format!("openssl: OpenSSL {expected} ")),
            "{}",
            ran.context()
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let p = programs();
    for (program, args) in [
        (&p.cn_test, &[][..]),
        (&p.cn_test, &["blocking", "nonsense", "1", "1.3"][..]),
        (&p.cn_test, &["step", "plain", "1", "1.1"][..]),
        (
            &p.cn_test,
            &["step", "plain", "1", "1.3", "--peer-timeout-ms", "x"][..],
        ),
        (&p.echo_client, &[][..]),
        (&p.echo_client, &["127.0.0.1", "1", "hi", "--tls11"][..]),
    ] {
        let ran = run_c(program, args);
        assert_eq!(ran.status.code(), Some(2), "{}", ran.context());
        assert!(ran.stderr.contains("usage:"), "{}", ran.context());
    }
}

#[test]
fn a_compile_error_fails_with_the_compilers_message() {
    // The driver's own failure path: a broken file must fail loudly, with cc's
    // diagnostics, not silently skip the C tests.
    let dir = profile_dir().join("c-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join(format!("broken{}.c", std::process::id()));
    std::fs::write(&broken, "int main(void) { return undeclared; }\n").unwrap();
    let err = compile(&broken, &dir, "broken", &[]).expect_err("compiled a broken file");
    let _ = std::fs::remove_file(&broken);
    assert!(err.contains("undeclared"), "{err}");
    assert!(!dir.join("broken").exists());
}

// ---------------------------------------------------------------------------
// examples/c/echo_client.c
// ---------------------------------------------------------------------------

#[test]
fn echo_client_against_python_echo_clean() {
    let message = "hello from C: close_notify, both ways";
    for tls in BOTH {
        let mut peer = python(tls, "echo");
        let port = peer.port.to_string();
        let mut args = vec!["127.0.0.1", port.as_str(), message];
        if let Tls::V12 = tls {
            args.push("--tls12");
        }
        let ran = run_c(&programs().echo_client, &args);
        let context = format!("{tls:?}: {}\npeer: {}", ran.context(), peer.transcript());
        ran.assert_success();
        assert_eq!(ran.stdout_text(), message, "{context}");
        let line = ran
            .stderr
            .lines()
            .rfind(|l| l.starts_with("outcome="))
            .unwrap_or_else(|| panic!("no report line on stderr: {context}"));
        Fields::parse(line, context)
            .expect("outcome", "clean")
            .expect("initiator", "local")
            .expect("stage", "await_peer")
            .expect("alert", "-1(none)")
            .expect("os_error", "0")
            .expect("discarded", "0")
            .expect("resumable", "1")
            .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
        peer.expect_success();
    }
}

/// The `delivered=N checksum=S` line of cn_test's read subcommands.
fn delivered(ran: &Ran) -> (u64, u32) {
    let stdout = ran.stdout_text();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("delivered="))
        .unwrap_or_else(|| panic!("no delivered line: {}", ran.context()));
    let f = Fields::parse(line, ran.context());
    (f.num("delivered") as u64, f.num("checksum") as u32)
}

/// What `peer.py data` sends after our close_notify: 5000 times `d`, as cn_test
/// counts and checksums it.
fn expected_data(len: u64) -> (u64, u32) {
    let sum = (0..len).fold(0u32, |s, i| {
        s.wrapping_add((i as u32).wrapping_mul(b'd'.into()))
    });
    (len, sum)
}

#[test]
fn blocking_read_and_step_read_deliver_the_peers_answer() {
    for tls in BOTH {
        for api in ["blocking-read", "step-read"] {
            let mut peer = python(tls, "data");
            let port = peer.port.to_string();
            let ran = run_c(&programs().cn_test, &[api, "plain", &port, tls.arg()]);
            let r = ran.c_report();
            r.expect("outcome", "clean")
                .expect("discarded_bytes", "0")
                .expect("tls_version", tls.wire());
            assert_eq!(delivered(&ran), expected_data(5000), "{api} {tls:?}");
            peer.expect_success();
        }
    }
}

/// A peer that streams for 3 s against a 300 ms peer timeout: both read calls end
/// at the deadline, for a fast and a slow consumer, with what they delivered in
/// the report.
#[test]
fn blocking_read_and_step_read_end_at_the_deadline_while_the_peer_streams() {
    for tls in BOTH {
        for api in ["blocking-read", "step-read"] {
            for consume in ["0", "3"] {
                let peer = python(tls, "stream");
                let port = peer.port.to_string();
                let ran = run_c(
                    &programs().cn_test,
                    &[
                        api,
                        "plain",
                        &port,
                        tls.arg(),
                        "--peer-timeout-ms",
                        "300",
                        "--consume-ms",
                        consume,
                    ],
                );
                let r = ran.c_report();
                r.expect("outcome", "timed_out")
                    .expect("stage", "await_peer")
                    .expect_range("elapsed_ms", 300, upper_ms(900) as i64);
                let (got, _) = delivered(&ran);
                assert!(got > 0, "{api} {tls:?} {consume} ms: {}", ran.context());
                r.expect("delivered_bytes", &got.to_string());
                drop(peer);
            }
        }
    }
}

#[test]
fn blocking_read_stops_at_its_limit_and_when_the_sink_refuses() {
    let tls = Tls::V13;
    let peer = python(tls, "data");
    let port = peer.port.to_string();
    let ran = run_c(
        &programs().cn_test,
        &[
            "blocking-read",
            "plain",
            &port,
            tls.arg(),
            "--limit",
            "1000",
        ],
    );
    ran.c_report().expect("outcome", "drain_limit");
    assert_eq!(delivered(&ran), expected_data(1000));
    drop(peer);

    let peer = python(tls, "data");
    let port = peer.port.to_string();
    let ran = run_c(
        &programs().cn_test,
        &["blocking-read", "plain", &port, tls.arg(), "--abort"],
    );
    ran.assert_success();
    assert!(ran.stdout_text().contains("aborted"), "{}", ran.context());
}

/// STOPTLS through the C API against Python's `unwrap()`: the plaintext after
/// the TLS close, byte-exact both ways, also when Python's close_notify and its
/// first plaintext bytes come in one write.
#[test]
fn stoptls_from_c_against_python_unwrap() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/stoptls.py");
    for tls in BOTH {
        for close in ["test", "test-same-write"] {
            let pems = Pems::write();
            let mut py = Proc::spawn(
                process::python(),
                &[
                    script,
                    "server",
                    "--tls",
                    tls.arg(),
                    "--cert",
                    pems.cert(),
                    "--key",
                    pems.key(),
                    "--close",
                    close,
                ],
            );
            let port = py.wait_line("port", READY, |_| true).trim().to_string();
            let ran = run_c(&programs().cn_test, &["stoptls", &port, tls.arg()]);
            ran.c_report()
                .expect("outcome", "clean")
                .expect("half_closed", "0")
                .expect("transport_reusable", "1");
            assert!(
                ran.stdout_text().contains("plaintext: ok"),
                "{}",
                ran.context()
            );
            let lines = py.expect_success(READY);
            assert_eq!(
                lines.last().map(String::as_str),
                Some("ok"),
                "{close} {tls:?}"
            );
        }
    }
}
