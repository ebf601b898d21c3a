//! The plaintext lines around TLS in the echo examples (STARTTLS before it, the
//! line each side sends after STOPTLS, the HTTP CONNECT exchange with a proxy),
//! and line reading that never consumes a byte past the newline: what follows a
//! line belongs to the next protocol (the ClientHello after STARTTLS, TLS after
//! the proxy's answer).

use std::io::{self, Read};

/// The `--starttls` server's first line.
pub const GREETING: &[u8] = b"220 closenotify echo ready\r\n";
/// The client's command.
pub const STARTTLS: &[u8] = b"STARTTLS\r\n";
/// The server's answer to the command; the TLS handshake follows at once.
pub const GO_AHEAD: &[u8] = b"220 go ahead\r\n";
/// The server's answer to any other command (and then it closes).
pub const NOT_STARTTLS: &[u8] = b"502 only STARTTLS is accepted here\r\n";
/// What the `--stoptls` server sends in plaintext once TLS has ended.
pub const SERVER_BYE: &[u8] = b"plain: bye\r\n";
/// What the `--stoptls` client answers.
pub const CLIENT_BYE: &[u8] = b"plain: bye, server\r\n";
/// The longest line either side accepts.
pub const MAX_LINE: usize = 1024;

/// How a non-blocking line read stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// The line, newline included, is complete.
    Complete,
    /// The socket has nothing more for now.
    Pending,
    /// The peer ended the connection before the newline.
    Eof,
}

/// Continues reading a line into `line`, one byte per read, until the newline,
/// EOF or `WouldBlock`. An error when the line grows past `MAX_LINE` bytes.
pub fn read_line_into(from: &mut impl Read, line: &mut Vec<u8>) -> io::Result<LineRead> {
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no newline in the first {MAX_LINE} bytes"),
            ));
        }
        match from.read(&mut byte) {
            Ok(0) => return Ok(LineRead::Eof),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(LineRead::Pending),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(LineRead::Complete)
}

/// One line from a blocking reader (its read timeout bounds the wait), newline
/// included.
pub fn read_line(from: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    match read_line_into(from, &mut line)? {
        LineRead::Complete => Ok(line),
        LineRead::Eof => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            if line.is_empty() {
                "connection closed".to_string()
            } else {
                format!("connection closed after {:?}", show(&line))
            },
        )),
        // A blocking socket's read timeout.
        LineRead::Pending => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

/// What arrived instead of a line, for messages: the text, or what the bytes
/// look like when they are not text (a TLS record from a client that did not
/// send STARTTLS first).
pub fn describe(bytes: &[u8]) -> String {
    let text = show(bytes);
    if !text.chars().any(char::is_control) && !text.contains('\u{fffd}') {
        return format!("{text:?}");
    }
    match bytes {
        [0x16, 0x03, ..] => format!("{} bytes of a TLS handshake record", bytes.len()),
        _ => format!("{} bytes that are not text", bytes.len()),
    }
}

/// A line for messages: lossy UTF-8, without its line ending.
pub fn show(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches(['\r', '\n'])
        .to_string()
}
