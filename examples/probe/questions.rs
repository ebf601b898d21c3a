//! The questions, one connection each (two for the sessions): how the server
//! answers our close_notify, how it ends an idle connection, how it ends a
//! response, what an RST does to a response when input is left unread, and
//! whether it resumes sessions after clean and unclean closes. Each returns
//! [`Row`]s with the closenotify report behind the answer.

use std::time::{Duration, Instant};

use closenotify::{Mode, Outcome, Policy, Report, Stage};

use crate::conn::{End, Ended, Failure, Received, SendError, Target, Tls, Transport};

/// After its close_notify, a FIN within this is "at once".
pub const AT_ONCE: Duration = Duration::from_millis(100);
/// The unread-input question sends at least this much after its request.
const UNREAD_BYTES: usize = 32 * 1024;
/// ... and then does not read for this long (at most half the timeout), so that
/// the server answers and closes while most of its answer cannot reach us yet.
const HOLD: Duration = Duration::from_millis(500);
/// Between an unclean close and the next connection: time for the server to see
/// the close.
const SETTLE: Duration = Duration::from_millis(100);
/// A TLS 1.3 server sends its tickets at once; after the first one, the others
/// are read until the socket is quiet this long.
const QUIET: Duration = Duration::from_millis(50);

/// What every question takes from the command line.
pub struct Settings {
    /// `--timeout-ms`: the longest wait for any answer.
    pub timeout: Duration,
    /// `--idle-timeout-ms`: how long the idle question waits for the server.
    pub idle: Duration,
    /// `--request`, if given.
    pub request: Option<Request>,
}

/// What `--request` sends.
pub struct Request {
    pub bytes: Vec<u8>,
    /// Its first line, for people.
    pub shown: String,
}

impl Settings {
    /// Our shutdowns: bidirectional, each stage bounded by the timeout.
    pub fn policy(&self) -> Policy {
        Policy::builder()
            .flush_timeout(self.timeout)
            .peer_timeout(self.timeout)
            .build()
            .expect("a timeout checked by the command line")
    }
}

/// The questions, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Question {
    CloseFirst,
    Idle,
    Request,
    UnreadInput,
    SessionClean,
    SessionUnclean,
}

impl Question {
    /// The name in the JSON document.
    pub fn name(self) -> &'static str {
        match self {
            Question::CloseFirst => "close_first",
            Question::Idle => "idle",
            Question::Request => "request",
            Question::UnreadInput => "unread_input",
            Question::SessionClean => "session_clean",
            Question::SessionUnclean => "session_unclean",
        }
    }

    /// The title in the table.
    pub fn title(self) -> &'static str {
        match self {
            Question::CloseFirst => "we close first",
            Question::Idle => "we stay idle",
            Question::Request => "request",
            Question::UnreadInput => "unread input",
            Question::SessionClean => "session, clean",
            Question::SessionUnclean => "session, unclean",
        }
    }
}

/// One answer, and the report of our shutdown on that connection.
pub struct Row {
    pub question: Question,
    pub tls: Tls,
    /// A word from the question's vocabulary (docs/probe.md).
    pub answer: &'static str,
    /// The answer for people.
    pub text: String,
    /// Until the server's answer: its close_notify or FIN, or the end of what it
    /// sent.
    pub ms: Option<f64>,
    /// What the server sent before it ended (the response).
    pub bytes: Option<u64>,
    /// From the server's close_notify to its FIN, while we sent nothing.
    pub fin_ms: Option<f64>,
    /// The server was still reading when our close_notify came after its own.
    pub waits_for_ours: Option<bool>,
    /// An RST ended the connection, or answered our close_notify.
    pub reset: Option<bool>,
    /// The next connection resumed the session.
    pub resumed: Option<bool>,
    pub report: Option<Report>,
}

impl Row {
    fn new(question: Question, tls: Tls, answer: &'static str, text: String) -> Row {
        Row {
            question,
            tls,
            answer,
            text,
            ms: None,
            bytes: None,
            fin_ms: None,
            waits_for_ours: None,
            reset: None,
            resumed: None,
            report: None,
        }
    }

    fn failed(question: Question, tls: Tls, failure: &str) -> Row {
        Row::new(question, tls, "error", failure.to_string())
    }
}

/// Question 1: we send close_notify first: what comes back, and how soon. The first
/// connection of each version: its failure says whether the server speaks it.
pub fn close_first(target: &Target, tls: Tls, s: &Settings) -> Result<Row, Failure> {
    let mut conn = target.connect(tls, None, false)?;
    let started = Instant::now();
    let report = conn.shutdown(&s.policy(), None);
    // Our clock, around the whole shutdown: the report's elapsed time counts
    // from its first step, which may be the last.
    let took = started.elapsed();
    let (answer, text) = match report.outcome {
        Outcome::Clean => ("close_notify", format!("close_notify back in {}", ms(took))),
        Outcome::Truncated => ("fin", format!("FIN without close_notify, in {}", ms(took))),
        Outcome::Reset => (
            "rst",
            format!("{}, in {}", errno(report.os_error), ms(took)),
        ),
        Outcome::PeerAlert => ("alert", format!("alert {}", alert(&report))),
        Outcome::TimedOut if report.stage == Stage::Flush => (
            "not_reading",
            format!("does not read our close_notify within {}", ms(s.timeout)),
        ),
        Outcome::TimedOut => ("nothing", format!("no answer within {}", ms(s.timeout))),
        Outcome::DrainLimit => ("data", "data instead of close_notify".to_string()),
        other => (other.as_str(), report.to_string()),
    };
    let mut row = Row::new(Question::CloseFirst, tls, answer, text);
    row.ms = Some(millis(took));
    row.reset = Some(report.outcome == Outcome::Reset);
    row.report = Some(report);
    Ok(row)
}

/// Question 2: we send nothing: does the server close, when, how, and does it wait for
/// our close_notify?
pub fn idle(target: &Target, tls: Tls, s: &Settings) -> Row {
    let mut conn = match target.connect(tls, None, false) {
        Ok(conn) => conn,
        Err(f) => return Row::failed(Question::Idle, tls, f.message()),
    };
    let mut got = Received::default();
    let ended = conn.read_until_end(conn.ready_at + s.idle, &mut got);
    let after = ended.at - conn.ready_at;
    let closing = server_end(&mut conn, ended, false, s);
    let text = match ended.end {
        End::Open => format!("open after {}; {}", ms(s.idle), closing.text),
        _ => format!("after {}: {}", secs(after), closing.text),
    };
    let mut row = closing.row(Question::Idle, tls, text);
    if ended.end != End::Open {
        row.ms = Some(millis(after));
    }
    if got.bytes > 0 {
        row.bytes = Some(got.bytes);
    }
    row
}

/// Question 3: we send the request: does the response end with close_notify, is it cut,
/// or does the connection stay open?
pub fn request(target: &Target, tls: Tls, s: &Settings, req: &Request) -> Row {
    let mut conn = match target.connect(tls, None, false) {
        Ok(conn) => conn,
        Err(f) => return Row::failed(Question::Request, tls, f.message()),
    };
    let sent = Instant::now();
    let written = conn.write_all(&req.bytes, sent + s.timeout);
    let mut got = Received::default();
    let ended = conn.read_until_end(sent + s.timeout, &mut got);
    let reset = written.as_ref().is_err_and(|e| e.reset);
    let closing = server_end(&mut conn, ended, reset, s);
    let text = format!("{}, then {}", response(&got, None), closing.text);
    let mut row = closing.row(Question::Request, tls, sent_first(&written, text));
    row.bytes = Some(got.bytes);
    if ended.end != End::Open {
        row.ms = Some(millis(ended.at - sent));
    }
    row
}

/// Question 4: we send the request and more than the server reads, from a client with a
/// small receive window that does not read for a moment: does the response
/// survive the server's close, or does an RST destroy it? `full` is the size of
/// the whole response (question 3's), if known.
pub fn unread_input(
    target: &Target,
    tls: Tls,
    s: &Settings,
    req: &Request,
    full: Option<u64>,
) -> Row {
    let mut conn = match target.connect(tls, None, true) {
        Ok(conn) => conn,
        Err(f) => return Row::failed(Question::UnreadInput, tls, f.message()),
    };
    let sent = Instant::now();
    let mut unread = Vec::new();
    while unread.len() < UNREAD_BYTES {
        unread.extend_from_slice(&req.bytes);
    }
    // The request in its own record, so that a server reads it without the rest;
    // corked, so that the rest is there when it reads the request.
    let written = conn.corked(|conn| {
        conn.write_all(&req.bytes, sent + s.timeout)
            .and_then(|()| conn.write_all(&unread, sent + s.timeout))
    });
    std::thread::sleep(HOLD.min(s.timeout / 2));
    let mut got = Received::default();
    let ended = conn.read_until_end(sent + s.timeout, &mut got);
    let reset = written.as_ref().is_err_and(|e| e.reset);
    let closing = server_end(&mut conn, ended, reset, s);
    let text = response(&got, full);
    // An RST before close_notify (seen by a read, or by our write first).
    let destroyed = matches!(ended.end, End::Rst(_)) || (ended.end == End::Fin && reset);
    let text = match full {
        Some(full) if destroyed && got.bytes < full => {
            format!("{text}, then {}: it destroyed the rest", closing.text)
        }
        _ => format!("{text}, then {}", closing.text),
    };
    let mut row = closing.row(Question::UnreadInput, tls, sent_first(&written, text));
    row.bytes = Some(got.bytes);
    if ended.end != End::Open {
        row.ms = Some(millis(ended.at - sent));
    }
    row
}

/// Question 5: after a clean close (ours, bidirectional) and after an unclean one (no
/// close_notify, a FIN): does the next connection resume the session?
pub fn sessions(target: &Target, tls: Tls, s: &Settings) -> [Row; 2] {
    [
        session_after(target, tls, s, true),
        session_after(target, tls, s, false),
    ]
}

fn session_after(target: &Target, tls: Tls, s: &Settings, clean: bool) -> Row {
    let question = match clean {
        true => Question::SessionClean,
        false => Question::SessionUnclean,
    };
    let mut conn = match target.connect(tls, None, false) {
        Ok(conn) => conn,
        Err(f) => return Row::failed(question, tls, f.message()),
    };
    let report = if clean {
        // Waiting for the server's close_notify reads its TLS 1.3 tickets.
        conn.shutdown(&s.policy(), None)
    } else {
        conn.wait_for_session(
            Instant::now() + s.timeout.min(Duration::from_secs(1)),
            QUIET,
        );
        let quiet = Policy::builder().mode(Mode::Quiet).build().expect("valid");
        conn.shutdown(&quiet, None) // nothing sent; the drop below sends a FIN
    };
    // A copy: after a close that was not orderly our report marks the session
    // not resumable, and OpenSSL would not offer it; here the server decides.
    let session = conn.session_copy();
    drop(conn);
    let mut row = match session {
        None => Row::new(
            question,
            tls,
            "no_session",
            "no session to offer (no session ID, no ticket)".to_string(),
        ),
        Some(session) => {
            std::thread::sleep(SETTLE);
            match target.connect(tls, Some(&session), false) {
                Err(f) => Row::failed(question, tls, f.message()),
                Ok(mut next) => {
                    let resumed = next.stream.ssl().session_reused();
                    next.shutdown(&s.policy(), None);
                    let said = match report.session_resumable {
                        true => "resumable",
                        false => "not resumable",
                    };
                    let (answer, verb) = match resumed {
                        true => ("resumed", "resumed"),
                        false => ("not_resumed", "not resumed: a full handshake"),
                    };
                    let text = format!("{verb} (our report: {said})");
                    let mut row = Row::new(question, tls, answer, text);
                    row.resumed = Some(resumed);
                    row
                }
            }
        }
    };
    row.report = Some(report);
    row
}

/// How the server ended a connection, once our shutdown has answered it.
struct Closing {
    answer: &'static str,
    text: String,
    fin_ms: Option<f64>,
    waits_for_ours: Option<bool>,
    reset: bool,
    report: Report,
}

impl Closing {
    fn row(self, question: Question, tls: Tls, text: String) -> Row {
        let mut row = Row::new(question, tls, self.answer, text);
        row.fin_ms = self.fin_ms;
        row.waits_for_ours = self.waits_for_ours;
        row.reset = Some(self.reset || self.report.outcome == Outcome::Reset);
        row.report = Some(self.report);
        row
    }
}

/// Follows the server's end of a connection to its last packet: after its
/// close_notify, whether a FIN or an RST follows while we send nothing, then
/// whether our close_notify is read or meets an RST. Our shutdown answers in
/// every case; after a failed read it names that failure. `reset`: our write
/// already met the server's RST (which it consumed: our reads then end in an
/// EOF).
fn server_end(conn: &mut crate::conn::Conn, ended: Ended, reset: bool, s: &Settings) -> Closing {
    let policy = s.policy();
    let closing = |answer, text: String, report: Report| Closing {
        answer,
        text,
        fin_ms: None,
        waits_for_ours: None,
        reset,
        report,
    };
    match ended.end {
        End::Open => {
            // Still open: we close first, as in question 1.
            let report = conn.shutdown(&policy, None);
            let text = format!("ours: {}", our_close(&report));
            closing("kept_open", text, report)
        }
        End::Fin if reset => {
            let report = conn.shutdown(&policy, ended.error);
            closing("rst", "the RST, no close_notify".into(), report)
        }
        End::Fin => {
            let report = conn.shutdown(&policy, ended.error);
            closing("fin", "FIN without close_notify".into(), report)
        }
        End::Rst(e) => {
            let report = conn.shutdown(&policy, ended.error);
            closing("rst", errno(Some(e)), report)
        }
        End::Alert(a) => {
            let report = conn.shutdown(&policy, ended.error);
            closing("alert", format!("alert {a}"), report)
        }
        End::Rejected(why) => {
            let report = conn.shutdown(&policy, ended.error);
            closing("rejected", format!("rejected by our side: {why}"), report)
        }
        End::CloseNotify if reset => {
            // What followed is gone with the RST's error, which our write took.
            let report = conn.shutdown(&policy, None);
            let mut c = closing("close_notify", "close_notify, then the RST".into(), report);
            c.waits_for_ours = Some(false);
            c
        }
        End::CloseNotify => after_close_notify(conn, ended, s),
    }
}

/// The server sent close_notify: what follows while we send nothing, and then
/// with our close_notify.
fn after_close_notify(conn: &mut crate::conn::Conn, ended: Ended, s: &Settings) -> Closing {
    let (transport, at) = conn.transport_after(Instant::now() + s.timeout);
    let waited = at - ended.at;
    let report = conn.shutdown(&s.policy(), None);
    let met_rst = report.outcome == Outcome::Reset;
    let mut c = Closing {
        answer: "close_notify",
        text: String::new(),
        fin_ms: None,
        waits_for_ours: None,
        reset: false,
        report,
    };
    // An RST answers our close_notify if the server had closed its socket (our
    // shutdown may have met it already).
    let window = s.timeout.min(Duration::from_millis(300) + 3 * conn.rtt);
    let ours = |conn: &crate::conn::Conn, c: &mut Closing| match met_rst
        || conn.reset_within(window).is_some()
    {
        true => {
            c.reset = true;
            c.waits_for_ours = Some(false);
            "ours met an RST"
        }
        false => {
            c.waits_for_ours = Some(true);
            "ours was read"
        }
    };
    c.text = match transport {
        Transport::Fin => {
            c.fin_ms = Some(millis(waited));
            let fin = match waited < AT_ONCE {
                true => "FIN at once".to_string(),
                false => format!("FIN {} later", ms(waited)),
            };
            format!("close_notify, {fin}; {}", ours(conn, &mut c))
        }
        Transport::Rst(e) => {
            c.reset = true;
            c.waits_for_ours = Some(false);
            format!("close_notify, then {} {} later", errno(Some(e)), ms(waited))
        }
        Transport::Bytes => "close_notify, then bytes that are not TLS".to_string(),
        Transport::Open => {
            // It waits for ours: sent now (the shutdown above); does it close then?
            let (after, at) = conn.transport_after(Instant::now() + s.timeout);
            c.waits_for_ours = Some(true);
            match after {
                Transport::Fin => format!(
                    "close_notify; waits for ours ({} without it), FIN {} after ours",
                    secs(waited),
                    ms(at.saturating_duration_since(ended.at + waited))
                ),
                Transport::Rst(e) => {
                    c.reset = true;
                    format!(
                        "close_notify; waits for ours ({} without it), {} after ours",
                        secs(waited),
                        errno(Some(e))
                    )
                }
                _ => format!(
                    "close_notify; waits for ours ({} without it), still open after ours",
                    secs(waited)
                ),
            }
        }
    };
    c
}

/// `text`, after what went wrong while we sent.
fn sent_first(written: &Result<(), SendError>, text: String) -> String {
    match written {
        Ok(()) => text,
        Err(e) => format!("{}; {text}", e.text),
    }
}

/// How the server answered our close_notify, in a few words.
fn our_close(report: &Report) -> String {
    match report.outcome {
        Outcome::Clean => "close_notify back".into(),
        Outcome::Truncated => "FIN back, no close_notify".into(),
        Outcome::Reset => format!("{} back", errno(report.os_error)),
        Outcome::PeerAlert => format!("alert {} back", alert(report)),
        Outcome::TimedOut => format!("no answer ({})", report.stage),
        other => other.as_str().to_string(),
    }
}

/// `"HTTP/1.1 200 OK", 850 bytes` (of `full` when known and more).
fn response(got: &Received, full: Option<u64>) -> String {
    let first = got
        .first_line()
        .map_or_else(String::new, |l| format!("{:?}, ", shorten(&l, 40)));
    match full {
        Some(full) if full > got.bytes => format!("{first}{} of {full} bytes", got.bytes),
        _ => format!("{first}{} bytes", got.bytes),
    }
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn alert(report: &Report) -> String {
    report
        .alert
        .map_or_else(|| "(unknown)".to_string(), |a| a.alert.to_string())
}

/// `ECONNRESET`, `EPIPE`, or the system's words.
pub fn errno(e: Option<i32>) -> String {
    match e {
        Some(libc::ECONNRESET) => "RST (ECONNRESET)".into(),
        Some(libc::EPIPE) => "RST (EPIPE)".into(),
        Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
        None => "transport error".into(),
    }
}

pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64 / 100.0).round() / 10.0
}

/// `0.4 ms`, `12 ms`, `1.5 s`.
pub fn ms(d: Duration) -> String {
    match d.as_millis() {
        0..=9 => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        10..=999 => format!("{} ms", d.as_millis()),
        _ => secs(d),
    }
}

/// `1.5 s`, `0.0 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
