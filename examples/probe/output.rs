//! What the probe prints: the table (one row per question and TLS version, with
//! the report behind each answer), the verdict, and the JSON document whose
//! fields docs/probe.md documents.

use serde_json::{json, Value};

use crate::common::report_json;
use crate::conn::Tls;
use crate::questions::{secs, Question, Row, Settings};
use crate::Probe;

/// The widest line of the table.
const WIDTH: usize = 100;
/// question, tls, outcome, initiator, stage, elapsed (right-aligned); the answer
/// follows, wrapped within the rest of the width.
const COLUMNS: [usize; 6] = [16, 3, 14, 5, 10, 8];
const HEADINGS: [&str; 7] = [
    "question", "tls", "outcome", "by", "stage", "elapsed", "answer",
];

/// The table and the verdict, for people.
pub fn print_table(probe: &Probe) {
    println!("{}\n", heading(probe));
    let mut line = String::new();
    for (heading, width) in HEADINGS.iter().zip(COLUMNS) {
        line.push_str(&format!("{heading:width$} "));
    }
    println!("{}{}", line, HEADINGS[6]);
    println!("{}", "-".repeat(WIDTH));
    for row in &probe.rows {
        print_row(row);
    }
    println!();
    for note in notes(probe) {
        println!("{note}");
    }
    let verdict = format!("verdict: {}", verdict(probe));
    let lines = wrap(&verdict, WIDTH);
    println!("{}", lines[0]);
    for line in wrap(&lines[1..].join(" "), WIDTH - 9) {
        if !line.is_empty() {
            println!("         {line}");
        }
    }
}

fn heading(probe: &Probe) -> String {
    let versions: Vec<&str> = probe.versions.iter().map(|v| short(v.tls)).collect();
    let mut text = format!("closenotify probe of {}", probe.target.addr);
    if let Some(name) = &probe.target.servername {
        text.push_str(&format!(" (SNI {name})"));
    }
    if let Some(dialect) = probe.target.starttls {
        text.push_str(&format!(", STARTTLS {}", dialect.name()));
    }
    text.push_str(&format!(
        ": TLS {}; answers awaited {}, idle {}",
        versions.join(" and "),
        secs(probe.settings.timeout),
        secs(probe.settings.idle)
    ));
    if let Some(req) = &probe.settings.request {
        text.push_str(&format!("; request {:?}", req.shown));
    }
    text.push('.');
    wrap(&text, WIDTH).join("\n")
}

fn print_row(row: &Row) {
    let report = row.report.as_ref();
    let cells = [
        row.question.title().to_string(),
        short(row.tls).to_string(),
        report.map_or("-".into(), |r| r.outcome.to_string()),
        report.map_or("-".into(), |r| r.initiator.to_string()),
        report.map_or("-".into(), |r| r.stage.to_string()),
        report.map_or("-".into(), |r| elapsed(r.elapsed)),
    ];
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(COLUMNS).enumerate() {
        match i {
            5 => line.push_str(&format!("{cell:>width$}  ")),
            _ => line.push_str(&format!("{cell:width$} ")),
        }
    }
    let indent = line.len();
    for (i, part) in wrap(&row.text, WIDTH - indent).iter().enumerate() {
        match i {
            0 => println!("{line}{part}"),
            _ => println!("{:indent$}{part}", ""),
        }
    }
}

/// Versions the server does not speak, questions not asked.
fn notes(probe: &Probe) -> Vec<String> {
    let mut notes = Vec::new();
    for v in &probe.versions {
        if let Some(error) = &v.error {
            notes.push(format!("TLS {}: not probed: {error}", short(v.tls)));
        }
    }
    if probe.settings.request.is_none() {
        notes.push(
            "No --request: the request and unread-input questions were not asked \
             (--request http, or a line)."
                .to_string(),
        );
    }
    notes.push(format!(
        "{} connections in {}.",
        probe.connections,
        secs(probe.took)
    ));
    notes.iter().flat_map(|n| wrap(n, WIDTH)).collect()
}

/// A short summary of the answers: each question's, the same across versions
/// or per version.
pub fn verdict(probe: &Probe) -> String {
    let questions = [
        Question::CloseFirst,
        Question::Idle,
        Question::Request,
        Question::UnreadInput,
    ];
    let mut parts = Vec::new();
    for question in questions {
        parts.extend(merged(probe, |tls| {
            probe
                .row(question, tls)
                .and_then(|row| phrase(row, &probe.settings))
        }));
    }
    let truncating = probe.rows.iter().any(|r| r.answer == "fin");
    if !truncating {
        parts.push("never truncates".to_string());
    }
    parts.extend(merged(probe, |tls| {
        sessions(
            probe.row(Question::SessionClean, tls)?.answer,
            probe.row(Question::SessionUnclean, tls)?.answer,
        )
    }));
    if parts.is_empty() {
        return "nothing could be asked".to_string();
    }
    parts.join(", ")
}

/// The phrase of each probed version: once if they agree, else each with its
/// version.
fn merged(probe: &Probe, phrase: impl Fn(Tls) -> Option<String>) -> Option<String> {
    let phrases: Vec<(Tls, String)> = probe
        .versions
        .iter()
        .filter(|v| v.error.is_none())
        .filter_map(|v| Some((v.tls, phrase(v.tls)?)))
        .collect();
    let first = &phrases.first()?.1;
    if phrases.iter().all(|(_, p)| p == first) {
        return Some(first.clone());
    }
    let each: Vec<String> = phrases
        .iter()
        .map(|(tls, p)| format!("{p} (TLS {})", short(*tls)))
        .collect();
    Some(each.join(", "))
}

fn phrase(row: &Row, settings: &Settings) -> Option<String> {
    let when = row
        .ms
        .map(|ms| secs(std::time::Duration::from_secs_f64(ms / 1000.0)));
    let words = match (row.question, row.answer) {
        (_, "error") => return None,
        (Question::CloseFirst, "close_notify") => "answers close_notify".into(),
        (Question::CloseFirst, "fin") => "answers our close_notify with a FIN only".into(),
        (Question::CloseFirst, "rst") => "answers our close_notify with an RST".into(),
        (Question::CloseFirst, "alert") => "answers our close_notify with an alert".into(),
        (Question::CloseFirst, "nothing") => "never answers our close_notify".into(),
        (Question::CloseFirst, "not_reading") => "does not read our close_notify".into(),
        (Question::Idle, "kept_open") => {
            format!("keeps idle connections over {}", secs(settings.idle))
        }
        (Question::Idle, "close_notify") => match waiting(row, settings) {
            Some(waiting) => format!("closes idle after {}, {waiting}", when?),
            None => format!("closes idle after {}", when?),
        },
        (Question::Idle, "fin") => format!("closes idle after {} without close_notify", when?),
        (Question::Idle, "rst") => format!("resets idle connections after {}", when?),
        (Question::Request, "close_notify") => "responses end with close_notify".into(),
        (Question::Request, "fin") => "cuts responses (FIN without close_notify)".into(),
        (Question::Request, "rst") => "resets after responses".into(),
        (Question::Request, "kept_open") => "keeps the connection after a response".into(),
        (Question::UnreadInput, "close_notify") if row.reset == Some(true) => {
            "RST on unread input (the response arrived first here)".into()
        }
        (Question::UnreadInput, "close_notify") => "no RST on unread input".into(),
        (Question::UnreadInput, "rst") => "an RST on unread input destroys the response".into(),
        (Question::UnreadInput, "fin") => "cuts the response when input is unread".into(),
        (Question::UnreadInput, "kept_open") => "reads all input".into(),
        (_, answer) => format!("{}: {answer}", row.question.title()),
    };
    Some(words)
}

/// Whether a server that sent close_notify waited for ours: its FIN came
/// later (it gave up then), at once but ours was read (it half-closed), never
/// (it still waits), or ours met an RST.
fn waiting(row: &Row, settings: &Settings) -> Option<String> {
    let at_once = crate::questions::AT_ONCE.as_secs_f64() * 1000.0;
    Some(match (row.fin_ms, row.waits_for_ours?) {
        (Some(ms), _) if ms >= at_once => format!(
            "waits for ours up to {}",
            secs(std::time::Duration::from_secs_f64(ms / 1000.0))
        ),
        (Some(_), true) => "half-closes and waits for ours".into(),
        (None, true) => format!("waits for ours over {}", secs(settings.timeout)),
        (_, false) => "not waiting for ours".into(),
    })
}

fn sessions(clean: &str, unclean: &str) -> Option<String> {
    Some(
        match (clean, unclean) {
            ("resumed", "resumed") => "resumes sessions, also after an unclean close",
            ("resumed", "not_resumed") => "resumes sessions after clean closes only",
            ("resumed", _) => "resumes sessions after clean closes",
            ("not_resumed", _) => "does not resume sessions",
            ("no_session", _) => "gives no sessions",
            _ => return None,
        }
        .to_string(),
    )
}

/// The JSON document (docs/probe.md documents every field).
pub fn json(probe: &Probe) -> Value {
    let s = &probe.settings;
    json!({
        "target": probe.target.addr,
        "servername": probe.target.servername,
        "starttls": probe.target.starttls.map(|d| d.name()),
        "request": s.request.as_ref().map(|r| r.shown.clone()),
        "timeout_ms": s.timeout.as_millis() as u64,
        "idle_timeout_ms": s.idle.as_millis() as u64,
        "versions": probe.versions.iter().map(|v| json!({
            "tls": v.tls.name(),
            "probed": v.error.is_none(),
            "alert": v.alert.map(|a| a.name()),
            "error": v.error,
        })).collect::<Vec<_>>(),
        "rows": probe.rows.iter().map(row_json).collect::<Vec<_>>(),
        "verdict": verdict(probe),
        "connections": probe.connections,
        "elapsed_ms": probe.took.as_millis() as u64,
    })
}

fn row_json(row: &Row) -> Value {
    json!({
        "question": row.question.name(),
        "tls": row.tls.name(),
        "answer": row.answer,
        "text": row.text,
        "ms": row.ms,
        "bytes": row.bytes,
        "fin_ms": row.fin_ms,
        "waits_for_ours": row.waits_for_ours,
        "reset": row.reset,
        "resumed": row.resumed,
        "report": row.report.as_ref().map(|r| {
            report_json(vec![], r, vec![
                ("close_notify_sent", json!(r.close_notify_sent)),
                ("close_notify_received", json!(r.close_notify_received)),
                ("os_error", json!(r.os_error)),
            ])
        }),
    })
}

/// `1.2`, `1.3`.
pub fn short(tls: Tls) -> &'static str {
    &tls.name()[4..]
}

/// `0.4ms`, `300.5ms`, `1.25s`.
fn elapsed(d: std::time::Duration) -> String {
    match d.as_secs_f64() {
        s if s < 1.0 => format!("{:.1}ms", s * 1000.0),
        s => format!("{s:.2}s"),
    }
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}
