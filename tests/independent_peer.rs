//! closenotify against a TLS stack that is not OpenSSL: tlslite-ng (pure Python),
//! scripted at the record level by `tests/peers/scripted.py`. It ends a connection
//! in ways no OpenSSL peer can be made to: warning alerts before, instead of, or
//! after its close_notify, a close_notify split over two records or with trailing
//! bytes, a HelloRequest or a KeyUpdate right before its close_notify, records
//! after it. Our side is an OpenSSL client (`shutdown_blocking`, or
//! `shutdown_blocking_read`, and the C `cn_test` once); each case pins the whole
//! report: outcome, stage, initiator, close_notify_received, the alert behind the
//! outcome and every alert seen, each with its direction and level. The peer also
//! says what reached it after our close_notify: nothing, in every case (OpenSSL's
//! own fatal alerts and KeyUpdate answers stay off the wire).
//!
//! "first": the peer's records are in our socket before the shutdown starts;
//! "after": the peer sends them once our close_notify has reached it.
//!
//! What OpenSSL does with each ending comes from `ssl3_read_bytes`
//! (ssl/record/rec_layer_s3.c), the same on 1.1.1, 3.0, 3.6 and 4.0 except where a
//! test says so by name: an alert record must hold exactly two bytes (a split or
//! padded close_notify is `invalid alert`); a TLS 1.2 warning is ignored, except
//! no_renegotiation, which becomes OpenSSL's own handshake_failure; in TLS 1.3
//! every alert but close_notify and user_canceled is fatal, whatever its level;
//! the fifth warning in a row is `too many warn alerts`; a TLS 1.2 handshake
//! message after our close_notify is dropped unread, a TLS 1.3 one is processed.
//!
//! Needs `python3` with tlslite-ng (`.ci/run` installs it); when it is missing the
//! tests fail saying so, they never skip.

mod util;

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use closenotify::{
    shutdown_blocking, shutdown_blocking_read, Alert, AlertDirection, AlertLevel, AlertLog,
    AlertRecord, Initiator, Outcome, Policy, Report, Stage, TlsVersion,
};
use openssl::ssl::{ErrorCode, Ssl, SslStream};
use util::cbuild::{self, run_c};
use util::process::{python, Pems, Proc};
use util::*;

/// How long the peer gets to start, answer or exit.
const READY: Duration = Duration::from_secs(5);
/// The policy's timeouts: short, so that a silent peer costs little.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(1000);
const PEER_TIMEOUT: Duration = Duration::from_millis(400);

fn policy() -> Policy {
    Policy::builder()
        .flush_timeout(FLUSH_TIMEOUT)
        .peer_timeout(PEER_TIMEOUT)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The peer.
// ---------------------------------------------------------------------------

/// Fails once, clearly, when tlslite-ng is not installed.
fn require_tlslite() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(|| {
        let out = Command::new(python())
            .args(["-c", "import tlslite; print(tlslite.__version__)"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = check {
        panic!(
            "tests/independent_peer.rs needs tlslite-ng for {} \
             (`python3 -m pip install tlslite-ng`; CI installs it): {e}",
            python()
        );
    }
}

fn tls_arg(tls: Tls) -> &'static str {
    match tls {
        Tls::V12 => "1.2",
        Tls::V13 => "1.3",
    }
}

/// `tests/peers/scripted.py` running `steps`, listening on `port`.
struct Peer {
    proc: Proc,
    port: u16,
    _pems: Pems,
}

impl Peer {
    fn start(tls: Tls, steps: &[&str]) -> Peer {
        require_tlslite();
        let pems = Pems::write();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/scripted.py");
        let mut args: Vec<&str> = vec![
            script.to_str().unwrap(),
            "--cert",
            pems.cert(),
            "--key",
            pems.key(),
            "--tls",
            tls_arg(tls),
        ];
        args.extend_from_slice(steps);
        let mut proc = Proc::spawn(python(), &args);
        let line = proc.next_line("port line", READY);
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("first line is not a port: {}", proc.transcript()));
        Peer {
            proc,
            port,
            _pems: pems,
        }
    }

    /// Our client, handshaken with the peer.
    fn connect(&mut self, tls: Tls) -> SslStream<TcpStream> {
        let ctx = Contexts::new(tls);
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        tcp.set_nodelay(true).unwrap();
        // Bounds the handshake if the peer dies; the shutdown does not use it.
        tcp.set_read_timeout(Some(READY)).unwrap();
        let ours = Ssl::new(&ctx.client)
            .unwrap()
            .connect(tcp)
            .unwrap_or_else(|e| panic!("handshake: {e}: {}", self.proc.transcript()));
        let want = format!("handshake TLS {}", tls_arg(tls));
        self.proc.wait_line(&want, READY, |l| l == want);
        ours
    }

    /// Waits until the peer printed `line` (it has sent that record), and the
    /// bytes are readable on our socket.
    fn sent(&mut self, line: &str, ours: &SslStream<TcpStream>) {
        self.proc.wait_line(line, READY, |l| l == line);
        assert!(
            wait_for(ours.get_ref().as_raw_fd(), libc::POLLIN, READY),
            "nothing readable after `{line}`: {}",
            self.proc.transcript()
        );
    }

    /// Lets the peer close (EOF on its stdin) and waits for its exit; its
    /// stdout lines.
    fn finish(mut self) -> Vec<String> {
        self.proc.close_stdin();
        self.proc.expect_success(READY)
    }
}

/// When the peer acts: once our close_notify has reached it, or before our
/// shutdown starts (its records already in our socket).
#[derive(Clone, Copy, Debug, PartialEq)]
enum When {
    After,
    First,
}

const WHEN: [When; 2] = [When::After, When::First];

/// The peer's script: `actions`, after reading our close_notify or before.
fn script<'a>(when: When, actions: &[&'a str]) -> Vec<&'a str> {
    let mut steps = actions.to_vec();
    match when {
        When::After => steps.insert(0, "wait"),
        When::First => steps.push("wait"),
    }
    steps
}

/// The line the peer prints for the last record of `actions`.
fn last_sent(actions: &[&str]) -> String {
    let last = actions
        .iter()
        .rev()
        .find(|a| !matches!(**a, "cork" | "flush"));
    match last.expect("an action").split(':').collect::<Vec<_>>()[..] {
        ["alert", level, desc] => {
            let (l, d): (u8, u8) = (level.parse().unwrap(), desc.parse().unwrap());
            format!("sent alert {l:02x}{d:02x}")
        }
        ["record", kind, hex] => {
            let name = match kind {
                "21" => "alert",
                "23" => "application_data",
                other => other,
            };
            format!("sent {name} {hex}")
        }
        ["data", n] => format!("sent application_data {}", "64".repeat(n.parse().unwrap())),
        ["hello-request"] => "sent handshake 00000000".into(),
        ["key-update", r] => format!("sent key_update requested={r}"),
        ["fin"] => "sent fin".into(),
        _ => panic!("no sent line for {actions:?}"),
    }
}

/// One scripted ending: the peer performs `actions` (`when`), our client shuts
/// down with `shutdown_blocking`. Returns the report, having checked that
/// nothing reached the peer after our close_notify and that the call ended
/// within its bound.
fn end_with(tls: Tls, when: When, actions: &[&str]) -> Report {
    let mut peer = Peer::start(tls, &script(when, actions));
    let mut ours = peer.connect(tls);
    if when == When::First {
        peer.sent(&last_sent(actions), &ours);
    }
    let start = Instant::now();
    let report = shutdown_blocking(&mut ours, &policy());
    let took = start.elapsed();
    assert!(
        took < FLUSH_TIMEOUT + PEER_TIMEOUT + Duration::from_secs(1),
        "took {took:?}: {report}"
    );
    drop(ours);
    expect_nothing_after_our_close_notify(&peer.finish(), &report);
    report
}

/// The peer's last line: it read our close_notify, then our FIN, and nothing in
/// between (no alert of ours, no KeyUpdate answer).
#[track_caller]
fn expect_nothing_after_our_close_notify(lines: &[String], report: &Report) {
    assert!(
        lines.iter().any(|l| l == "got alert 0100"),
        "the peer never read our close_notify: {lines:?}; {report}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("end=eof bytes=0"),
        "{lines:?}; {report}"
    );
}

// ---------------------------------------------------------------------------
// What a report must say.
// ---------------------------------------------------------------------------

fn received(alert: Alert, level: AlertLevel) -> AlertRecord {
    AlertRecord::new(alert, AlertDirection::Received, level)
}

fn warning(alert: Alert) -> AlertRecord {
    received(alert, AlertLevel::Warning)
}

/// An alert our side raised (kept off the wire after our close_notify).
fn ours(alert: Alert) -> AlertRecord {
    AlertRecord::new(alert, AlertDirection::Sent, AlertLevel::Fatal)
}

/// The report of a shutdown we started, that ended in stage await_peer.
struct Want {
    outcome: Outcome,
    close_notify_received: bool,
    alert: Option<AlertRecord>,
    alerts: Vec<AlertRecord>,
    detail: Option<&'static str>,
}

impl Want {
    fn new(outcome: Outcome, alerts: &[AlertRecord]) -> Want {
        Want {
            outcome,
            close_notify_received: outcome == Outcome::Clean,
            alert: None,
            alerts: alerts.to_vec(),
            detail: None,
        }
    }

    /// `outcome` (peer_alert or protocol_error) because of `alert`.
    fn because(mut self, alert: AlertRecord) -> Want {
        self.alert = Some(alert);
        self
    }

    fn detail(mut self, detail: &'static str) -> Want {
        self.detail = Some(detail);
        self
    }
}

#[track_caller]
fn check(r: &Report, tls: Tls, want: &Want, what: &str) {
    let what = format!("{what} ({tls:?}): {r}");
    assert_eq!(r.outcome, want.outcome, "{what}");
    assert_eq!(r.stage, Stage::AwaitPeer, "{what}");
    assert_eq!(r.initiator, Initiator::Local, "{what}");
    assert!(r.close_notify_sent && r.half_closed, "{what}");
    assert_eq!(
        r.close_notify_received, want.close_notify_received,
        "{what}"
    );
    assert_eq!(r.alert, want.alert, "{what}");
    let listed: Vec<_> = r.alerts.iter().collect();
    if want.alerts.len() <= AlertLog::CAPACITY {
        assert_eq!(listed, want.alerts, "{what}");
    } else {
        // More alerts than the log keeps: the listed ones are true, and the
        // log is full (which ones it keeps: five_warnings_list_the_alert_...).
        assert_eq!(listed.len(), AlertLog::CAPACITY, "{what}");
        assert!(listed.iter().all(|a| want.alerts.contains(a)), "{what}");
    }
    if want.detail.is_some() {
        assert_eq!(r.detail, want.detail, "{what}");
    }
    let version = match tls {
        Tls::V12 => TlsVersion::Tls1_2,
        Tls::V13 => TlsVersion::Tls1_3,
    };
    assert_eq!(r.tls_version, Some(version), "{what}");
    // The peer keeps no session (no ID, no ticket): nothing to resume after a
    // clean close either; every other outcome drops the session anyway.
    if !r.outcome.is_orderly() {
        assert!(!r.session_resumable, "{what}");
    }
    if r.outcome == Outcome::TimedOut {
        assert!(r.elapsed >= PEER_TIMEOUT, "{what}");
    } else {
        assert!(r.elapsed < PEER_TIMEOUT, "{what}");
    }
}

// ---------------------------------------------------------------------------
// Warnings, then close_notify or not.
// ---------------------------------------------------------------------------

/// user_canceled, then close_notify (RFC 5246 §7.2.1, RFC 8446 §6.1), with the
/// peer acting first and after; and the same read to its end after 100 bytes
/// of data, which are delivered. OpenSSL ignores the warning and reads on: the
/// close is clean, and the report names the warning.
fn user_canceled_then_close_notify(tls: Tls) {
    let want = Want::new(Outcome::Clean, &[warning(Alert::UserCanceled)]);
    for when in WHEN {
        let r = end_with(tls, when, &["alert:1:90", "alert:1:0"]);
        check(&r, tls, &want, &format!("{when:?}"));
    }
    let mut peer = Peer::start(tls, &["wait", "data:100", "alert:1:90", "alert:1:0"]);
    let mut ours = peer.connect(tls);
    let mut answer = Vec::new();
    let r = shutdown_blocking_read(&mut ours, &policy(), &mut answer, 1 << 20).unwrap();
    drop(ours);
    expect_nothing_after_our_close_notify(&peer.finish(), &r);
    check(&r, tls, &want, "data, read to the end");
    assert_eq!(answer, vec![b'd'; 100], "{tls:?}: {r}");
    assert_eq!(r.delivered_bytes, 100, "{tls:?}: {r}");
}

#[test]
fn tls12_user_canceled_then_close_notify_is_clean_and_names_the_warning() {
    user_canceled_then_close_notify(Tls::V12);
}

/// OpenSSL 3.6 and 4.0 (`cfg(ossl320)`: the matrix has nothing between 3.0 and
/// 3.6) no longer record a TLS 1.3 close_notify as the last warning
/// (`s3.warn_alert`), which SSL_get_error compares with close_notify to answer
/// SSL_ERROR_ZERO_RETURN: after a user_canceled it answers SSL_ERROR_SYSCALL,
/// as for an EOF. closenotify reads SSL_RECEIVED_SHUTDOWN then: clean.
#[test]
fn tls13_user_canceled_then_close_notify_is_clean_and_names_the_warning() {
    user_canceled_then_close_notify(Tls::V13);
}

/// The same with the close_notify at level fatal, which TLS 1.3 ignores (RFC
/// 8446 §6): no version records it as the last warning.
#[test]
fn tls13_user_canceled_then_fatal_level_close_notify_is_clean() {
    let r = end_with(Tls::V13, When::After, &["alert:1:90", "alert:2:0"]);
    let want = Want::new(Outcome::Clean, &[warning(Alert::UserCanceled)]);
    check(&r, Tls::V13, &want, "user_canceled, fatal close_notify");
}

/// user_canceled, then a FIN without close_notify: truncated, and the report
/// still names the warning.
#[test]
fn user_canceled_then_eof_is_truncated_and_names_the_warning() {
    for tls in BOTH {
        let r = end_with(tls, When::After, &["alert:1:90", "fin"]);
        let want = Want::new(Outcome::Truncated, &[warning(Alert::UserCanceled)]);
        check(&r, tls, &want, "user_canceled, fin");
    }
}

/// A warning other than close_notify, then silence (the connection stays
/// open). TLS 1.2: no_renegotiation becomes OpenSSL's own handshake_failure
/// (both named); any other warning is ignored, and the peer's silence times
/// out. TLS 1.3: every alert but user_canceled is an error, whatever its level.
#[test]
fn a_warning_then_silence_names_the_warning() {
    let unknown = Alert::Unknown(222);
    for tls in BOTH {
        for when in WHEN {
            for code in [100u8, 90, 222] {
                let alert = Alert::from_code(code);
                let r = end_with(tls, when, &[&format!("alert:1:{code}")]);
                let seen = warning(alert);
                let want = match (tls, alert) {
                    (Tls::V12, Alert::NoRenegotiation) => Want::new(
                        Outcome::ProtocolError,
                        &[seen, ours(Alert::HandshakeFailure)],
                    )
                    .because(ours(Alert::HandshakeFailure))
                    .detail("no renegotiation"),
                    (_, Alert::UserCanceled) => Want::new(Outcome::TimedOut, &[seen]),
                    (Tls::V12, a) if a == unknown => Want::new(Outcome::TimedOut, &[seen]),
                    (Tls::V13, _) => Want::new(Outcome::PeerAlert, &[seen]).because(seen),
                    _ => unreachable!(),
                };
                check(&r, tls, &want, &format!("{when:?}, warning {alert}"));
            }
        }
    }
}

/// Five warnings in a row are one too many for OpenSSL (MAX_WARN_ALERT_COUNT):
/// `too many warn alerts`, with its own unexpected_message.
#[test]
fn five_warnings_are_too_many_protocol_error() {
    let uc = "alert:1:90";
    for tls in BOTH {
        let r = end_with(tls, When::After, &[uc, uc, uc, uc, uc]);
        check(&r, tls, &too_many_warnings(5), "5 user_canceled");
    }
}

/// `n` user_canceled warnings, the last one too many: every alert seen.
fn too_many_warnings(n: usize) -> Want {
    let mut alerts = vec![warning(Alert::UserCanceled); n];
    alerts.push(ours(Alert::UnexpectedMessage));
    Want::new(Outcome::ProtocolError, &alerts)
        .because(ours(Alert::UnexpectedMessage))
        .detail("too many warn alerts")
}

/// When OpenSSL turns the peer's warnings into an error of its own, `alerts`
/// must name both; with four warnings before it, the log is full, and the alert
/// behind the outcome takes the last place.
#[test]
fn five_warnings_list_the_alert_behind_the_outcome() {
    for tls in BOTH {
        let uc = "alert:1:90";
        let r = end_with(tls, When::After, &[uc, uc, uc, uc, uc]);
        let alert = r.alert.expect("an alert");
        assert!(
            r.alerts.iter().any(|a| a == alert),
            "{tls:?}: {alert} missing from alerts: {r}"
        );
    }
}

/// Four user_canceled, then close_notify. TLS 1.2 counts the close_notify as
/// the fifth warning in a row, on every version.
#[test]
fn tls12_four_user_canceled_then_close_notify_are_too_many() {
    let uc = "alert:1:90";
    let r = end_with(Tls::V12, When::After, &[uc, uc, uc, uc, "alert:1:0"]);
    check(
        &r,
        Tls::V12,
        &too_many_warnings(4),
        "4 user_canceled, close_notify",
    );
}

/// The same in TLS 1.3: 1.1.1 and 3.0 count the close_notify too (`alert_level
/// == SSL3_AL_WARNING`), 3.6 and 4.0 count only user_canceled there, so the
/// close should be clean (but see tls13_user_canceled_then_close_notify_...).
#[test]
fn tls13_four_user_canceled_then_close_notify_depends_on_the_openssl_version() {
    let uc = "alert:1:90";
    let r = end_with(Tls::V13, When::After, &[uc, uc, uc, uc, "alert:1:0"]);
    let want = if cfg!(ossl320) {
        Want::new(Outcome::Clean, &[warning(Alert::UserCanceled); 4])
    } else {
        too_many_warnings(4)
    };
    check(&r, Tls::V13, &want, "4 user_canceled, close_notify");
}

/// close_notify at level fatal: TLS 1.2 takes any fatal alert as the peer's
/// error (peer_alert close_notify(0)); TLS 1.3 ignores the level.
#[test]
fn close_notify_at_fatal_level() {
    for tls in BOTH {
        let r = end_with(tls, When::After, &["alert:2:0"]);
        let want = match tls {
            Tls::V12 => {
                let fatal = received(Alert::CloseNotify, AlertLevel::Fatal);
                Want::new(Outcome::PeerAlert, &[fatal]).because(fatal)
            }
            Tls::V13 => Want::new(Outcome::Clean, &[]),
        };
        check(&r, tls, &want, "fatal close_notify");
    }
}

// ---------------------------------------------------------------------------
// close_notify in records OpenSSL refuses.
// ---------------------------------------------------------------------------

/// TLS 1.2 allows an alert split over two records (RFC 5246 §6.2.1); TLS 1.3
/// forbids it (RFC 8446 §5.1). OpenSSL refuses both: an alert record must hold
/// exactly two bytes (`invalid alert`, unexpected_message).
#[test]
fn close_notify_split_over_two_records_is_refused_protocol_error() {
    for tls in BOTH {
        for when in WHEN {
            let r = end_with(
                tls,
                when,
                &["cork", "record:21:01", "record:21:00", "flush"],
            );
            let refused = ours(Alert::UnexpectedMessage);
            let want = Want::new(Outcome::ProtocolError, &[refused])
                .because(refused)
                .detail("invalid alert");
            check(&r, tls, &want, &format!("{when:?}, split close_notify"));
        }
    }
}

/// A close_notify record with more bytes after the alert: a trailing byte, or
/// a second alert in the same record (which TLS 1.2 allows, TLS 1.3 not).
#[test]
fn close_notify_with_trailing_bytes_is_refused_protocol_error() {
    for tls in BOTH {
        for payload in ["record:21:010000", "record:21:01000100"] {
            let r = end_with(tls, When::After, &[payload]);
            let refused = ours(Alert::UnexpectedMessage);
            let want = Want::new(Outcome::ProtocolError, &[refused])
                .because(refused)
                .detail("invalid alert");
            check(&r, tls, &want, payload);
        }
    }
}

// ---------------------------------------------------------------------------
// Handshake messages right before close_notify.
// ---------------------------------------------------------------------------

/// TLS 1.2: a HelloRequest, then close_notify. After our close_notify OpenSSL
/// drops TLS 1.2 handshake messages unread (it could not answer them).
#[test]
fn hello_request_then_close_notify_is_clean() {
    for when in WHEN {
        let r = end_with(Tls::V12, when, &["hello-request", "alert:1:0"]);
        check(
            &r,
            Tls::V12,
            &Want::new(Outcome::Clean, &[]),
            &format!("{when:?}"),
        );
    }
}

/// TLS 1.2: the application read the peer's HelloRequest before closing, so
/// OpenSSL started the renegotiation (our ClientHello went out); the peer
/// answers with close_notify instead of its ServerHello. The connection is in
/// a handshake, where OpenSSL cannot send close_notify: quiet, nothing sent.
#[test]
fn close_notify_in_the_middle_of_a_renegotiation_is_quiet() {
    let tls = Tls::V12;
    let mut peer = Peer::start(tls, &["hello-request", "read", "alert:1:0"]);
    let mut ours = peer.connect(tls);
    peer.sent("sent handshake 00000000", &ours);
    ours.get_ref().set_nonblocking(true).unwrap();
    let err = ours.ssl_read(&mut [0u8; 16]).expect_err("no data was sent");
    assert_eq!(err.code(), ErrorCode::WANT_READ, "{err}");
    assert!(!ours.ssl().is_init_finished(), "no renegotiation started");
    // The peer read our ClientHello (handshake type 1), then sent close_notify.
    peer.proc.wait_line("our ClientHello", READY, |l| {
        l.starts_with("got handshake 01")
    });
    peer.sent("sent alert 0100", &ours);
    let r = shutdown_blocking(&mut ours, &policy());
    assert_eq!(r.outcome, Outcome::Quiet, "{r}");
    assert_eq!(r.stage, Stage::Flush, "{r}");
    assert!(!r.close_notify_sent && !r.close_notify_received, "{r}");
    assert!(r.alerts.is_empty(), "{r}");
    assert_eq!(r.detail, Some("handshake unfinished or fatal error"), "{r}");
    drop(ours);
    let lines = peer.finish();
    assert!(!lines.iter().any(|l| l == "got alert 0100"), "{lines:?}");
}

/// TLS 1.3: a KeyUpdate, then close_notify under the new key. OpenSSL
/// processes it; when the peer asks for an update in return, OpenSSL's answer
/// goes to the sink, and the peer sees nothing after our close_notify.
#[test]
fn key_update_then_close_notify_is_clean() {
    for when in WHEN {
        for requested in ["key-update:0", "key-update:1"] {
            let r = end_with(Tls::V13, when, &[requested, "alert:1:0"]);
            let what = format!("{when:?}, {requested}");
            check(&r, Tls::V13, &Want::new(Outcome::Clean, &[]), &what);
        }
    }
}

// ---------------------------------------------------------------------------
// Records after close_notify.
// ---------------------------------------------------------------------------

/// Records after the peer's close_notify, in the same TCP segment: data and a
/// fatal alert. Nothing after a close_notify counts (RFC 8446 §6.1): clean,
/// and the alert is never read.
#[test]
fn close_notify_then_more_records_is_clean() {
    let after = ["cork", "alert:1:0", "data:100", "alert:2:20", "flush"];
    for tls in BOTH {
        for when in WHEN {
            let r = end_with(tls, when, &after);
            check(
                &r,
                tls,
                &Want::new(Outcome::Clean, &[]),
                &format!("{when:?}"),
            );
            assert_eq!(r.discarded_bytes, 0, "{tls:?} {when:?}: {r}");
        }
    }
}

/// The same read to its end: exactly the data before the close_notify.
#[test]
fn close_notify_then_more_records_read_to_the_end_delivers_what_came_before() {
    for tls in BOTH {
        let steps = [
            "wait",
            "cork",
            "data:50",
            "alert:1:0",
            "data:100",
            "alert:2:20",
            "flush",
        ];
        let mut peer = Peer::start(tls, &steps);
        let mut ours = peer.connect(tls);
        let mut answer = Vec::new();
        let r = shutdown_blocking_read(&mut ours, &policy(), &mut answer, 1 << 20).unwrap();
        drop(ours);
        expect_nothing_after_our_close_notify(&peer.finish(), &r);
        check(&r, tls, &Want::new(Outcome::Clean, &[]), "read");
        assert_eq!(answer, vec![b'd'; 50], "{tls:?}: {r}");
    }
}

// ---------------------------------------------------------------------------
// The C report.
// ---------------------------------------------------------------------------

/// `cn_test blocking plain` against the peer that answers our close_notify
/// with a warning no_renegotiation (TLS 1.2): the C report names OpenSSL's
/// handshake_failure (`alert`) and the peer's warning (`peer_alert`, level 1).
#[test]
fn c_report_names_our_alert_and_the_peers_warning() {
    let (dir, flags) = cbuild::prepare().unwrap_or_else(|e| panic!("{e}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/cn_test.c");
    let cn_test = cbuild::compile(&src, &dir, "cn_test_independent", &flags)
        .unwrap_or_else(|e| panic!("{e}"));
    let peer = Peer::start(Tls::V12, &["wait", "alert:1:100"]);
    let port = peer.port.to_string();
    let ran = run_c(
        &cn_test,
        &[
            "blocking",
            "plain",
            &port,
            "1.2",
            "--peer-timeout-ms",
            "400",
            "--flush-timeout-ms",
            "1000",
        ],
    );
    ran.assert_success();
    let out = ran.stdout_text();
    let line = out
        .lines()
        .find(|l| l.starts_with("outcome="))
        .unwrap_or_else(|| panic!("no report line: {}", ran.context()));
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    for (key, value) in [
        ("outcome", "protocol_error"),
        ("stage", "await_peer"),
        ("initiator", "0"),
        ("alert", "40"),
        ("alert_name", "handshake_failure"),
        ("peer_alert", "100"),
        ("peer_alert_level", "1"),
        ("close_notify_sent", "1"),
        ("close_notify_received", "0"),
        ("tls_version", "0x0303"),
        ("detail", "no_renegotiation"),
    ] {
        assert_eq!(fields.get(key), Some(&value), "`{key}`: {}", ran.context());
    }
    let lines = peer.finish();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("end=eof bytes=0"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------
// The examples' JSON.
// ---------------------------------------------------------------------------

/// `echo_client --json` against the same peer: the JSON carries OpenSSL's
/// reason (`detail`) and every alert with who sent it, so a log shows that the
/// handshake_failure was OpenSSL's answer to the peer's no_renegotiation.
#[test]
fn echo_client_json_names_the_peers_warning_and_the_reason() {
    let peer = Peer::start(Tls::V12, &["wait", "alert:1:100"]);
    let args: Vec<String> = [
        "--connect",
        &format!("127.0.0.1:{}", peer.port),
        "--insecure",
        "--tls12",
        "--json",
        "--peer-timeout-ms",
        "400",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ran = util::examples::run("echo_client", &args, b"", Duration::from_secs(20));
    let r = ran.report();
    assert_eq!(r["outcome"], "protocol_error", "{}", ran.context());
    assert_eq!(r["alert_name"], "handshake_failure", "{}", ran.context());
    assert_eq!(r["detail"], "no renegotiation", "{}", ran.context());
    assert_eq!(
        r["alerts"],
        serde_json::json!([
            {"alert": 100, "name": "no_renegotiation", "direction": "received", "level": "warning"},
            {"alert": 40, "name": "handshake_failure", "direction": "sent", "level": "fatal"},
        ]),
        "{}",
        ran.context()
    );
    let _ = peer.finish();
}
