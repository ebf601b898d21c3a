//! How does that server end TLS connections? The probe opens a handful of
//! connections to it, each ending a different way, and prints one row per
//! question with the closenotify report behind each answer.
//!
//! ```text
//! cargo run --example probe -- example.com:443 --request http
//! ```
//!
//! The questions, asked in TLS 1.2 and 1.3 separately (each on its own
//! connection):
//! 1. **we close first**: we send close_notify; does the server answer with its
//!    own, a FIN only, an RST, an alert, or nothing, and how soon?
//! 2. **we stay idle**: does the server close an idle connection, when, and how
//!    (close_notify and FIN, FIN alone, RST)? Does it wait for our close_notify?
//! 3. **request** (with `--request`): does the response end with close_notify,
//!    is it cut by a FIN, or does the connection stay open?
//! 4. **unread input** (with `--request`): the request, then more than the
//!    server reads, from a client with a small receive window that does not read
//!    for a moment: does the response survive the server's close, or does the
//!    RST of a close with unread input destroy it?
//! 5. **sessions**: after a clean close, and after an unclean one (no
//!    close_notify, a FIN), does the next connection resume the session?
//!
//! Options:
//! - `HOST:PORT` (required): the server; every address it resolves to is tried.
//! - `--servername NAME`: the name sent in SNI (default: HOST, unless it is an
//!   IP address). The certificate is not checked: the probe asks how
//!   connections end, not whom it talks to.
//! - `--tls1.2` or `--tls1.3`: only that version (default: both).
//! - `--starttls smtp|imap|ftp`: start TLS in that protocol first.
//! - `--request http`: `GET / HTTP/1.1` with `Host` and `Connection: close`;
//!   `--request http:/PATH` for another path; `--request LINE`: that line and
//!   CRLF (`QUIT` for SMTP, for example).
//! - `--timeout-ms N` (default 4000): the longest wait for any answer; also our
//!   shutdown's flush and peer timeouts.
//! - `--idle-timeout-ms N` (default 6000): how long question 2 waits for the
//!   server to close an idle connection.
//! - `--json`: one JSON document on stdout instead of the table
//!   (docs/probe.md documents its fields).
//!
//! Every wait is bounded: a probe takes a few seconds, plus the idle wait (the
//! server's idle timeout, at most `--idle-timeout-ms`) for each version. Exit
//! status: 0 once the questions are asked, whatever the answers; 1 when the
//! server cannot be reached, STARTTLS fails, or no handshake succeeds (the
//! message names the alert the server sent); 2 for a bad command line.

#[path = "../common/mod.rs"]
mod common;
mod conn;
mod output;
mod questions;

use std::cell::Cell;
use std::net::{IpAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use closenotify::{Alert, MAX_TIMEOUT};
use common::cli;
use common::client::split_host_port;
use common::starttls::Dialect;
use conn::{Failure, Target, Tls};
use questions::{Question, Request, Row, Settings};
use serde_json::json;

const USAGE: &str = "usage: probe HOST:PORT [--servername NAME] [--tls1.2 | --tls1.3] \
[--starttls smtp|imap|ftp] [--request http|http:/PATH|LINE] [--timeout-ms N] \
[--idle-timeout-ms N] [--json]";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);
const DEFAULT_IDLE: Duration = Duration::from_secs(6);

/// The command line.
struct Options {
    target: String,
    servername: Option<String>,
    versions: Vec<Tls>,
    starttls: Option<Dialect>,
    request: Option<String>,
    timeout: Duration,
    idle: Duration,
    json: bool,
}

/// A probe's results: the target, what was asked, the answers.
pub struct Probe {
    pub target: Target,
    pub settings: Settings,
    pub versions: Vec<Version>,
    /// Grouped by question, in version order.
    pub rows: Vec<Row>,
    pub connections: usize,
    pub took: Duration,
}

/// A TLS version, and why it was not probed (its handshake failed).
pub struct Version {
    pub tls: Tls,
    pub error: Option<String>,
    pub alert: Option<Alert>,
}

impl Probe {
    pub fn row(&self, question: Question, tls: Tls) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.question == question && r.tls == tls)
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let options = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => return cli::usage_error("probe", USAGE, &msg),
    };
    let settings = match settings(&options) {
        Ok(s) => s,
        Err(msg) => return cli::usage_error("probe", USAGE, &msg),
    };
    let result = target(&options).and_then(|t| run(t, settings, &options.versions));
    match result {
        Ok(probe) if options.json => println!("{:#}", output::json(&probe)),
        Ok(probe) => output::print_table(&probe),
        Err((msg, alert)) => {
            if options.json {
                let alert = alert.map(|a| a.name());
                println!(
                    "{:#}",
                    json!({"target": options.target, "error": msg, "alert": alert})
                );
            }
            eprintln!("probe: {msg}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// Asks every question in every version, in turn (a server such as `openssl
/// s_server` serves one connection at a time).
fn run(
    target: Target,
    settings: Settings,
    versions: &[Tls],
) -> Result<Probe, (String, Option<Alert>)> {
    let started = Instant::now();
    let mut probed = Vec::new();
    let mut rows = Vec::new();
    for &tls in versions {
        let first = match questions::close_first(&target, tls, &settings) {
            Ok(row) => row,
            Err(Failure::Handshake { alert, message }) => {
                probed.push(Version {
                    tls,
                    error: Some(message),
                    alert,
                });
                continue;
            }
            Err(other) => return Err((other.message().to_string(), None)),
        };
        probed.push(Version {
            tls,
            error: None,
            alert: None,
        });
        rows.push(first);
        rows.push(questions::idle(&target, tls, &settings));
        if let Some(req) = &settings.request {
            let request = questions::request(&target, tls, &settings, req);
            // The size of a response that ended, for comparison.
            let full = request
                .bytes
                .filter(|_| matches!(request.answer, "close_notify" | "fin"));
            rows.push(request);
            rows.push(questions::unread_input(&target, tls, &settings, req, full));
        }
        rows.extend(questions::sessions(&target, tls, &settings));
    }
    if probed.iter().all(|v| v.error.is_some()) {
        return Err(no_handshake(&probed));
    }
    rows.sort_by_key(|r| r.question); // stable: versions stay in order
    Ok(Probe {
        connections: target.connections.get(),
        target,
        settings,
        versions: probed,
        rows,
        took: started.elapsed(),
    })
}

/// The error when no version's handshake succeeded: one message if they agree.
fn no_handshake(versions: &[Version]) -> (String, Option<Alert>) {
    let first = &versions[0];
    let same = versions.iter().all(|v| v.error == first.error);
    let msg = match same {
        true => first.error.clone().unwrap_or_default(),
        false => versions
            .iter()
            .map(|v| {
                format!(
                    "TLS {}: {}",
                    output::short(v.tls),
                    v.error.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    };
    (msg, first.alert)
}

fn parse(args: Vec<String>) -> Result<Option<Options>, String> {
    let mut o = Options {
        target: String::new(),
        servername: None,
        versions: Tls::BOTH.to_vec(),
        starttls: None,
        request: None,
        timeout: DEFAULT_TIMEOUT,
        idle: DEFAULT_IDLE,
        json: false,
    };
    let mut items = args.into_iter();
    while let Some(item) = items.next() {
        let (flag, inline) = match item.split_once('=') {
            Some((flag, v)) if item.starts_with("--") => (flag.to_string(), Some(v.to_string())),
            _ => (item.clone(), None),
        };
        let switch = |o: &mut Options, f: fn(&mut Options)| match &inline {
            Some(v) => Err(format!("{flag} takes no value (got '{v}')")),
            None => {
                f(o);
                Ok(())
            }
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| items.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--servername" => o.servername = Some(value()?),
            "--starttls" => {
                let v = value()?;
                o.starttls = Some(
                    Dialect::from_name(&v)
                        .ok_or_else(|| format!("invalid --starttls '{v}' (smtp, imap or ftp)"))?,
                );
            }
            "--request" => o.request = Some(value()?),
            "--timeout-ms" => o.timeout = millis(&flag, &value()?)?,
            "--idle-timeout-ms" => o.idle = millis(&flag, &value()?)?,
            "--tls1.2" => switch(&mut o, |o| o.versions = vec![Tls::V12])?,
            "--tls1.3" => switch(&mut o, |o| o.versions = vec![Tls::V13])?,
            "--json" => switch(&mut o, |o| o.json = true)?,
            "--help" | "-h" => return Ok(None),
            f if f.starts_with('-') => return Err(format!("unknown option '{f}'")),
            _ if o.target.is_empty() => o.target = item,
            _ => return Err(format!("unexpected argument '{item}'")),
        }
    }
    if o.target.is_empty() {
        return Err("HOST:PORT is required".into());
    }
    if !matches!(split_host_port(&o.target), Some((_, port)) if port != 0) {
        return Err(format!("invalid server '{}' (HOST:PORT)", o.target));
    }
    Ok(Some(o))
}

/// A duration in milliseconds, from 1 ms to closenotify's longest timeout.
fn millis(flag: &str, v: &str) -> Result<Duration, String> {
    match v.parse::<u64>().map(Duration::from_millis) {
        Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Ok(d),
        _ => Err(format!(
            "invalid value '{v}' for {flag} (milliseconds, 1 to {})",
            MAX_TIMEOUT.as_millis()
        )),
    }
}

fn settings(o: &Options) -> Result<Settings, String> {
    let request = match o.request.as_deref() {
        None => None,
        Some("") => return Err("--request needs a request (http, http:/PATH or a line)".into()),
        Some(r) if r.contains(['\r', '\n']) => {
            return Err("--request takes one line, without CR or LF".into())
        }
        Some(r) => Some(request(r, o)?),
    };
    Ok(Settings {
        timeout: o.timeout,
        idle: o.idle,
        request,
    })
}

/// What `--request` sends: an HTTP/1.1 GET that asks the server to close, or
/// the line as given.
fn request(r: &str, o: &Options) -> Result<Request, String> {
    let path = match r {
        "http" => "/",
        _ => match r.strip_prefix("http:") {
            Some(path) if path.starts_with('/') && !path.contains(' ') => path,
            Some(_) => return Err(format!("invalid --request '{r}' (http:/PATH)")),
            None => {
                let mut bytes = r.as_bytes().to_vec();
                bytes.extend_from_slice(b"\r\n");
                return Ok(Request {
                    bytes,
                    shown: r.to_string(),
                });
            }
        },
    };
    let (host, port) = split_host_port(&o.target).expect("checked by parse");
    let mut name = o
        .servername
        .clone()
        .unwrap_or_else(|| match host.contains(':') {
            true => format!("[{host}]"),
            false => host.to_string(),
        });
    if port != 443 {
        name = format!("{name}:{port}");
    }
    let text = format!(
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: closenotify-probe\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    Ok(Request {
        bytes: text.into_bytes(),
        shown: format!("GET {path} HTTP/1.1"),
    })
}

/// The server: its addresses, and the name sent in SNI.
fn target(o: &Options) -> Result<Target, (String, Option<Alert>)> {
    let (host, port) = split_host_port(&o.target).expect("checked by parse");
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| (format!("cannot resolve {host}: {e}"), None))?
        .collect();
    let servername = o
        .servername
        .clone()
        .or_else(|| host.parse::<IpAddr>().is_err().then(|| host.to_string()));
    Ok(Target {
        addr: o.target.clone(),
        addrs,
        servername,
        starttls: o.starttls,
        timeout: o.timeout,
        connections: Cell::new(0),
    })
}
