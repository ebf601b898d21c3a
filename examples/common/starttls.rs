//! The client's side of STARTTLS: the plaintext exchange that asks a server to
//! start TLS on the same connection, in four dialects. Every line is read one
//! byte at a time ([`line::read_line`]): the bytes after the last newline are the
//! server's TLS and must be left to the handshake. Each read is bounded by the
//! socket's read timeout.
//!
//! - [`Dialect::Line`]: the echo examples' own protocol: a `220` greeting,
//!   `STARTTLS`, a `220` go-ahead.
//! - [`Dialect::Smtp`] (RFC 3207): the `220` greeting, `EHLO`, its `250` reply
//!   (which must list `STARTTLS`), `STARTTLS`, `220`.
//! - [`Dialect::Imap`] (RFC 3501): the `* OK` greeting, `a1 STARTTLS`, `a1 OK`.
//! - [`Dialect::Ftp`] (RFC 4217): the `220` greeting, `AUTH TLS`, `234`.

use std::io::Write;
use std::net::TcpStream;

use super::line;

/// The name our SMTP client gives in `EHLO`.
pub const EHLO_NAME: &str = "closenotify.invalid";

/// The most lines one reply may have.
const MAX_REPLY_LINES: usize = 100;

/// A STARTTLS dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The echo examples' line protocol.
    Line,
    /// SMTP.
    Smtp,
    /// IMAP.
    Imap,
    /// FTP's `AUTH TLS`.
    Ftp,
}

impl Dialect {
    /// The dialect a command line names: `smtp`, `imap` or `ftp`.
    pub fn from_name(name: &str) -> Option<Dialect> {
        match name {
            "smtp" => Some(Dialect::Smtp),
            "imap" => Some(Dialect::Imap),
            "ftp" => Some(Dialect::Ftp),
            _ => None,
        }
    }

    /// The name, as `from_name` takes it (`line` for the echo protocol).
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Line => "line",
            Dialect::Smtp => "smtp",
            Dialect::Imap => "imap",
            Dialect::Ftp => "ftp",
        }
    }
}

/// Asks `server` (for messages) on `tcp` to start TLS; `Ok` once the next byte
/// from the server is its TLS.
pub fn client(tcp: &mut TcpStream, dialect: Dialect, server: &str) -> Result<(), String> {
    match dialect {
        Dialect::Line => line_dialect(tcp, server),
        Dialect::Smtp => smtp(tcp, server),
        Dialect::Imap => imap(tcp, server),
        Dialect::Ftp => ftp(tcp, server),
    }
}

/// The echo protocol: greeting, command, go-ahead.
fn line_dialect(tcp: &mut TcpStream, server: &str) -> Result<(), String> {
    let greeting = line::read_line(tcp)
        .map_err(|e| format!("no greeting line from {server} (is it a STARTTLS server?): {e}"))?;
    if !greeting.starts_with(b"220") {
        return Err(format!(
            "{server} greeted with {}, not 220",
            line::describe(&greeting)
        ));
    }
    send(tcp, line::STARTTLS, server)?;
    let answer =
        line::read_line(tcp).map_err(|e| format!("no answer to STARTTLS from {server}: {e}"))?;
    if !answer.starts_with(b"220") {
        return Err(format!(
            "{server} refused STARTTLS: {}",
            line::describe(&answer)
        ));
    }
    Ok(())
}

fn smtp(tcp: &mut TcpStream, server: &str) -> Result<(), String> {
    expect_reply(tcp, server, "greeting", "220")?;
    send(tcp, format!("EHLO {EHLO_NAME}\r\n").as_bytes(), server)?;
    let extensions = expect_reply(tcp, server, "answer to EHLO", "250")?;
    // The first line is the server's name; the others are its extensions.
    let offered = extensions.iter().skip(1).any(|l| {
        l.get(4..)
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("STARTTLS")
    });
    if !offered {
        return Err(format!(
            "{server} does not offer STARTTLS (its EHLO reply lists none)"
        ));
    }
    send(tcp, b"STARTTLS\r\n", server)?;
    expect_reply(tcp, server, "answer to STARTTLS", "220").map(drop)
}

fn imap(tcp: &mut TcpStream, server: &str) -> Result<(), String> {
    let greeting = read_text_line(tcp, server, "greeting")?;
    if !greeting.starts_with("* OK") {
        return Err(format!("{server} greeted with {greeting:?}, not \"* OK\""));
    }
    send(tcp, b"a1 STARTTLS\r\n", server)?;
    for _ in 0..MAX_REPLY_LINES {
        let answer = read_text_line(tcp, server, "answer to STARTTLS")?;
        if let Some(status) = answer.strip_prefix("a1 ") {
            if status.starts_with("OK") {
                return Ok(());
            }
            return Err(format!("{server} refused STARTTLS: {answer:?}"));
        }
        // An untagged line ("* CAPABILITY ..."): the tagged answer follows.
    }
    Err(format!("{server} sent no tagged answer to STARTTLS"))
}

fn ftp(tcp: &mut TcpStream, server: &str) -> Result<(), String> {
    expect_reply(tcp, server, "greeting", "220")?;
    send(tcp, b"AUTH TLS\r\n", server)?;
    expect_reply(tcp, server, "answer to AUTH TLS", "234").map(drop)
}

fn send(tcp: &mut TcpStream, command: &[u8], server: &str) -> Result<(), String> {
    tcp.write_all(command).map_err(|e| {
        format!(
            "cannot send {:?} to {server}: {e}",
            line::show(command).split(' ').next().unwrap_or_default()
        )
    })
}

/// One line as text, without its line ending. A missing greeting suggests the
/// server does not speak this protocol in plaintext.
fn read_text_line(tcp: &mut TcpStream, server: &str, what: &str) -> Result<String, String> {
    line::read_line(tcp).map(|l| line::show(&l)).map_err(|e| {
        let hint = if what == "greeting" {
            " (is it a STARTTLS server?)"
        } else {
            ""
        };
        format!("no {what} from {server}{hint}: {e}")
    })
}

/// An SMTP or FTP reply: lines `CODE-text` continued until `CODE text`. Fails
/// unless its code is `want`; returns its lines.
fn expect_reply(
    tcp: &mut TcpStream,
    server: &str,
    what: &str,
    want: &str,
) -> Result<Vec<String>, String> {
    let first = read_text_line(tcp, server, what)?;
    let code = first.get(..3).unwrap_or_default().to_string();
    let mut lines = vec![first];
    // FTP allows continuation lines that do not start with the code (RFC 959).
    while !is_last_line(lines.last().expect("one line"), &code) {
        if lines.len() >= MAX_REPLY_LINES {
            return Err(format!(
                "{server}'s {what} has more than {MAX_REPLY_LINES} lines"
            ));
        }
        lines.push(read_text_line(tcp, server, what)?);
    }
    if code != want {
        return Err(format!(
            "{server} answered with {:?} instead of {want} ({what})",
            lines.last().expect("one line")
        ));
    }
    Ok(lines)
}

fn is_last_line(line: &str, code: &str) -> bool {
    line.len() >= 3 && line.starts_with(code) && line.as_bytes().get(3) != Some(&b'-')
}
