//! One connection of the echo server: its phase, its stream, and the echo.

use std::time::Instant;

use closenotify::{Report, TlsError};
use openssl::ssl::ErrorCode;

use crate::output::Info;
use crate::plain::{Link, Plain};
use crate::MAX_PENDING;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// `--starttls`: plaintext. The greeting goes out, the command comes in, the
    /// go-ahead goes out (`Conn::plain`).
    StartTls,
    Handshaking,
    Echoing,
    /// `--stoptls`: the STOPTLS shutdown runs (`Link::Stopping`).
    StoppingTls,
    /// After a successful STOPTLS: our line goes out, the client's comes in.
    Plaintext,
}

pub struct Conn {
    pub link: Link,
    pub info: Info,
    pub phase: Phase,
    /// Echo not yet written; the write in progress always starts at `out[sent]`.
    pub out: Vec<u8>,
    pub sent: usize,
    pub plain: Plain,
    /// The client's close_notify arrived.
    pub closed_by_client: bool,
    pub last_activity: Instant,
    pub generation: u64,
    /// The report of the STOPTLS shutdown.
    pub report: Option<Report>,
    /// When the STOPTLS shutdown or the plaintext line needs a wake-up, and the
    /// last such deadline put in the server's timer queue.
    pub wake: Option<Instant>,
    pub wake_queued: Option<Instant>,
}

/// What to do with a connection after handling it.
pub enum Next {
    Keep,
    /// Hand it to the Closer (or, with `--stoptls`, leave TLS): client's
    /// close_notify answered after the echo, idle timeout, or the failure the
    /// server's own read or write saw.
    Close(Option<TlsError>),
    /// The handshake failed: one JSON line, then the socket is closed.
    HandshakeFailed(String),
    /// STARTTLS failed (no command, another command, the client left): one JSON
    /// line, then the socket is closed.
    StartTlsFailed(String),
    /// STOPTLS and what follows it are over: one JSON line, then the socket is
    /// closed.
    Finished,
}

impl Conn {
    /// Echo: write what is pending, read what arrived, until the socket would
    /// block either way. Stops reading while `MAX_PENDING` bytes wait for a client
    /// that does not read (a WRITE event resumes it).
    pub fn pump(&mut self, now: Instant) -> Next {
        let mut buf = [0u8; 16 * 1024];
        let stream = self.link.stream();
        loop {
            while self.sent < self.out.len() {
                match stream.ssl_write(&self.out[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        self.info.bytes_out += n as u64;
                    }
                    Err(e) if matches!(e.code(), ErrorCode::WANT_WRITE | ErrorCode::WANT_READ) => {
                        break
                    }
                    Err(e) => return Next::Close(Some(TlsError::from(&e))),
                }
            }
            if self.sent == self.out.len() {
                self.out.clear();
                self.sent = 0;
            }
            if self.closed_by_client {
                // Answer once every echoed byte is out.
                return if self.out.is_empty() {
                    Next::Close(None)
                } else {
                    Next::Keep
                };
            }
            if self.out.len() - self.sent >= MAX_PENDING {
                return Next::Keep;
            }
            match stream.ssl_read(&mut buf) {
                Ok(n) => {
                    self.out.extend_from_slice(&buf[..n]);
                    self.info.bytes_in += n as u64;
                    self.last_activity = now;
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => self.closed_by_client = true,
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                    return Next::Keep
                }
                Err(e) => return Next::Close(Some(TlsError::from(&e))),
            }
        }
    }
}
