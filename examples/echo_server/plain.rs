//! Plaintext around TLS on the same connection.
//!
//! `--starttls`: each connection begins in plaintext. The server sends
//! `220 closenotify echo ready`, waits for the line `STARTTLS` (read one byte at a
//! time: the bytes after its newline are the ClientHello), answers
//! `220 go ahead`, and the TLS handshake follows on the same socket. Any other
//! line is answered with `502 ...` and the connection is closed.
//!
//! `--stoptls`: a connection whose TLS ends in order (the client's close_notify
//! after the echo, the idle timeout, SIGINT/SIGTERM) leaves TLS with a
//! `Mode::StopTls` shutdown instead of being closed: both close_notify alerts,
//! no TCP half-close. The Closer refuses that mode (it closes what it is given),
//! so the server drives that `Shutdown` itself, on the same poll. After it, in
//! plaintext on the same connection, the server sends `plain: bye` and reads one
//! line from the client, then closes. Connections that fail still go to the
//! Closer under `--mode`.

use std::io::{self, Write};

use std::time::{Duration, Instant};

use closenotify::{Policy, Progress, Ready, Shutdown, Stream};
use mio::net::TcpStream;

use crate::common::line::{self, LineRead};
use crate::{Conn, Next, Phase};

/// The connection's stream, and who owns it.
pub enum Link {
    /// Ours: TLS, or the plaintext before STARTTLS on its TCP stream (the
    /// `SslStream` exists from the start; nothing of TLS has happened yet).
    Tls(Stream),
    /// A STOPTLS shutdown owns the stream. It keeps it after the report: the
    /// plaintext that follows goes over the same TCP stream, with the same poll
    /// registration. (`closenotify::into_transport` would hand back a duplicate
    /// of the socket, but it takes the `SslStream` by value, and a `Shutdown`
    /// does not give back the stream it owns.)
    Stopping(Box<Shutdown<Stream>>),
    /// Only while moving the stream from one to the other.
    Moving,
}

impl Link {
    pub fn stream(&mut self) -> &mut Stream {
        match self {
            Link::Tls(stream) => stream,
            Link::Stopping(shutdown) => shutdown.get_mut(),
            Link::Moving => unreachable!("the stream is being moved"),
        }
    }

    pub fn tcp(&mut self) -> &mut TcpStream {
        self.stream().get_mut()
    }
}

/// Plaintext around TLS: a line to send, and the line coming in.
#[derive(Default)]
pub struct Plain {
    out: &'static [u8],
    sent: usize,
    line: Vec<u8>,
    /// The line is complete (STARTTLS: the command was accepted).
    done: bool,
}

impl Plain {
    /// The client's line, once complete.
    pub fn received(&self) -> Option<&[u8]> {
        self.done.then_some(&self.line[..])
    }

    pub fn sending(out: &'static [u8]) -> Plain {
        Plain {
            out,
            ..Plain::default()
        }
    }

    /// Writes what is left of `out`: true once it is all sent.
    pub fn flush(&mut self, tcp: &mut TcpStream) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match tcp.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl Conn {
    /// `--stoptls`, once the STOPTLS shutdown runs: drives it, then the
    /// plaintext after it. `Some(next)` when the connection is done or waits.
    pub(crate) fn leave_tls(
        &mut self,
        now: Instant,
        ready: Ready,
        line_limit: Duration,
    ) -> Option<Next> {
        match self.phase {
            Phase::StoppingTls => {
                let Link::Stopping(shutdown) = &mut self.link else {
                    unreachable!("a STOPTLS without its shutdown")
                };
                match shutdown.poll(now, ready) {
                    Progress::Wait(wait) => {
                        self.wake = Some(wait.deadline);
                        Some(Next::Keep)
                    }
                    Progress::Done(report) => {
                        self.report = Some(report);
                        if !report.transport_reusable {
                            return Some(Next::Finished);
                        }
                        self.phase = Phase::Plaintext;
                        self.plain = Plain::sending(line::SERVER_BYE);
                        self.wake = Some(now + line_limit);
                        None
                    }
                }
            }
            _ => match self.plaintext() {
                Ok(false) => Some(Next::Keep),
                Ok(true) => Some(Next::Finished),
                Err(e) => {
                    log::warn!("{}: plaintext after STOPTLS: {e}", self.info.peer);
                    Some(Next::Finished)
                }
            },
        }
    }

    /// `--starttls`: sends the greeting, reads the command one byte at a time
    /// (never past its newline: the ClientHello follows), sends the go-ahead.
    /// `Ok(true)` once the go-ahead is out and TLS can start.
    pub(crate) fn start_tls(&mut self) -> Result<bool, String> {
        let tcp = self.link.tcp();
        loop {
            match self.plain.flush(tcp) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err(format!("cannot send in plaintext: {e}")),
            }
            if self.plain.done {
                return Ok(true);
            }
            match line::read_line_into(tcp, &mut self.plain.line) {
                Ok(LineRead::Pending) => return Ok(false),
                Ok(LineRead::Complete) => {}
                Ok(LineRead::Eof) if self.plain.line.is_empty() => {
                    return Err("the client left before STARTTLS".into())
                }
                Ok(LineRead::Eof) => {
                    let got = line::describe(&self.plain.line);
                    return Err(format!("the client left after {got}, before STARTTLS"));
                }
                Err(e) => {
                    let got = line::describe(&self.plain.line);
                    return Err(format!("no STARTTLS command: {e} (got {got})"));
                }
            }
            if !line::show(&self.plain.line).eq_ignore_ascii_case("STARTTLS") {
                // Best effort: the client learns why, then the connection closes.
                let _ = tcp.write(line::NOT_STARTTLS);
                let got = line::describe(&self.plain.line);
                return Err(format!("expected STARTTLS, got {got}"));
            }
            self.plain = Plain::sending(line::GO_AHEAD);
            self.plain.done = true;
        }
    }

    /// `--stoptls`: hands the stream to a STOPTLS shutdown, with the echo not yet
    /// written (it goes out before close_notify).
    pub(crate) fn begin_stop_tls(&mut self, policy: &Policy) {
        let Link::Tls(stream) = std::mem::replace(&mut self.link, Link::Moving) else {
            unreachable!("the stream is ours until the STOPTLS")
        };
        let unsent = self.out.split_off(self.sent);
        self.out.clear();
        self.sent = 0;
        self.link = Link::Stopping(Box::new(Shutdown::new(stream, policy).with_unsent(unsent)));
        self.phase = Phase::StoppingTls;
    }

    /// After STOPTLS: sends our line, reads the client's. `Ok(true)` once both are
    /// done; an error when the client leaves first.
    pub(crate) fn plaintext(&mut self) -> io::Result<bool> {
        let tcp = self.link.tcp();
        if !self.plain.flush(tcp)? {
            return Ok(false);
        }
        match line::read_line_into(tcp, &mut self.plain.line)? {
            LineRead::Pending => Ok(false),
            LineRead::Complete => {
                self.plain.done = true;
                Ok(true)
            }
            LineRead::Eof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before a full line",
            )),
        }
    }
}
