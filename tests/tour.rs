//! The `scenarios` tour: every outcome, in 100 columns, quickly.

mod util;

use std::time::{Duration, Instant};

use util::examples::*;

// 8. The tour.
// ---------------------------------------------------------------------------

/// `cargo run --example scenarios`: every outcome, in TLS 1.2 and 1.3, in 100
/// columns and under 15 s, with "resumable" confirmed by the next connection.
#[test]
fn the_tour_shows_every_outcome_in_100_columns_in_under_15_s() {
    let _serial = serial();
    example("scenarios"); // built before the clock starts
    let started = Instant::now();
    let r = run("scenarios", &[], b"", Duration::from_secs(60));
    let took = started.elapsed();
    r.assert_success();
    assert!(took < Duration::from_secs(15), "the tour took {took:?}");
    let out = r.stdout_text();
    for line in out.lines() {
        assert!(line.chars().count() <= 100, "wider than 100: {line:?}");
    }
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("scenario "))
        .expect("the table's header");
    let intro = lines[..header].join(" ");
    for needed in [
        "Our side: the client",
        "The peer: OpenSSL",
        "flush_timeout 300 ms, peer_timeout 300 ms",
    ] {
        assert!(intro.contains(needed), "{needed:?} not in {intro:?}");
    }
    let at = lines[header].find("outcome").unwrap();
    let session_at = lines[header].find("session").unwrap();
    let rows: Vec<&str> = lines[header + 2..]
        .iter()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with(' '))
        .copied()
        .collect();
    assert_eq!(rows.len(), 26, "{out}");
    let mut outcomes = std::collections::BTreeSet::new();
    for row in &rows {
        outcomes.insert(row[at..].split_whitespace().next().unwrap());
        // What the report says of the session is what the next handshake did.
        let session = row[session_at..].split_whitespace().next().unwrap();
        assert!(matches!(session, "yes/yes" | "no/no"), "{row}");
    }
    let all: std::collections::BTreeSet<&str> = closenotify::Outcome::ALL
        .iter()
        .map(|o| o.as_str())
        .collect();
    assert_eq!(outcomes, all, "{out}");
    let table = lines[header..].join("\n");
    assert!(!table.contains("sent protocol_version"), "{out}");
    // The garbage record, rejected the same way by every OpenSSL version (the
    // detail wraps over three lines).
    assert_eq!(
        table.matches("rejected decryption failed or bad").count(),
        2,
        "{out}"
    );
    assert_eq!(table.matches("bad_record_mac(20))").count(), 2, "{out}");
    assert_eq!(
        table
            .matches("then plain \"hello\" in, \"bye\" out")
            .count(),
        2,
        "{out}"
    );
    let footer = lines.iter().find(|l| l.contains(" scenarios in ")).unwrap();
    let secs: f64 = footer
        .split(" scenarios in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{footer}"));
    assert!(secs < 15.0, "{footer}");
}

/// The README shows the tour's output: the same table as a real run, times and
/// the OpenSSL version aside (a test against the system OpenSSL).
#[test]
fn the_readme_shows_the_tours_real_output() {
    let _serial = serial();
    let r = run("scenarios", &[], b"", Duration::from_secs(60));
    r.assert_success();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let intro = "`cargo run --example scenarios` prints this table";
    let at = readme.find(intro).expect("the README's tour sample");
    let block = &readme[at..];
    let start = block.find("```text\n").expect("its text block") + "```text\n".len();
    let end = start + block[start..].find("```").expect("the block's end");
    let shown = normalize(&block[start..end]);
    let real = normalize(&r.stdout_text());
    for (i, (a, b)) in shown.lines().zip(real.lines()).enumerate() {
        assert_eq!(
            a,
            b,
            "README line {} of the sample differs from the real run",
            i + 1
        );
    }
    assert_eq!(shown.lines().count(), real.lines().count(), "{real}");
}

/// Times (`2.4ms`, `in 1.7 s`) and the OpenSSL version replaced, runs of spaces
/// collapsed (the times' widths vary).
fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                let digits =
                    |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
                // A time (`2.4ms`), or the run's seconds.
                let time = w.strip_suffix("ms").is_some_and(digits)
                    || (line.contains(" scenarios in ") && digits(w) && w.contains('.'));
                if time {
                    "T".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        let mut line = words.join(" ");
        if let Some(i) = line.find("OpenSSL ") {
            let rest = &line[i + 8..];
            let version_end = rest.find(' ').unwrap_or(rest.len());
            line = format!("{}OpenSSL V{}", &line[..i], &rest[version_end..]);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
