//! Our side's connections before they are closed: a TCP connect and a
//! non-blocking TLS handshake as the client, on a `mio::Poll` of their own (not
//! the Closer's). A finished handshake leaves this poll and goes to the Closer.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode, SslVersion};

use crate::behaviour::{forged_record, Behaviour};

/// A handshake that has not finished in this long is given up (and counted as
/// failed): the peer is stuck, or the machine is.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures described in full; the rest are only counted.
const DESCRIBED: usize = 5;

struct Handshake {
    stream: SslStream<TcpStream>,
    behaviour: Behaviour,
    started: Instant,
}

pub struct Opener {
    poll: Poll,
    events: Events,
    context: SslContext,
    /// The peer's port for each behaviour, in the order of `Behaviour::ALL`.
    ports: Vec<u16>,
    slots: Vec<Option<Handshake>>,
    free: Vec<usize>,
    in_flight: usize,
    opened: u64,
    /// Connections that never reached the Closer: connect or handshake failed,
    /// or timed out.
    failed: u64,
    /// The first failures, described.
    failures: Vec<String>,
}

impl Opener {
    pub fn new(ports: Vec<u16>) -> io::Result<Opener> {
        let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(io::Error::other)?;
        builder.set_verify(SslVerifyMode::NONE);
        Ok(Opener {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            context: builder.build(),
            ports,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            opened: 0,
            failed: 0,
            failures: Vec::new(),
        })
    }

    /// Handshakes in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Starts the next connection. The behaviours take turns, and each round of
    /// them alternates between TLS 1.2 and 1.3.
    pub fn open(&mut self) -> io::Result<()> {
        let n = self.opened;
        self.opened += 1;
        let index = (n % Behaviour::ALL.len() as u64) as usize;
        let behaviour = Behaviour::ALL[index];
        let version = if (n / Behaviour::ALL.len() as u64) % 2 == 0 {
            SslVersion::TLS1_2
        } else {
            SslVersion::TLS1_3
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports[index]));
        let tcp = match TcpStream::connect(addr) {
            Ok(tcp) => tcp,
            Err(e) => {
                self.fail(format!("connect to {addr}: {e}"));
                return Ok(());
            }
        };
        tcp.set_nodelay(true)?;
        let mut ssl = Ssl::new(&self.context).map_err(io::Error::other)?;
        ssl.set_min_proto_version(Some(version))
            .map_err(io::Error::other)?;
        ssl.set_max_proto_version(Some(version))
            .map_err(io::Error::other)?;
        let mut stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        // Writable once connected: the handshake starts then.
        self.poll.registry().register(
            stream.get_mut(),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.slots[slot] = Some(Handshake {
            stream,
            behaviour,
            started: Instant::now(),
        });
        self.in_flight += 1;
        Ok(())
    }

    /// Moves the handshakes on (without waiting); the finished ones go to
    /// `done`, out of this poll, ready for the Closer.
    pub fn poll(&mut self, done: &mut Vec<(SslStream<TcpStream>, Behaviour)>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        let slots: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for slot in slots {
            self.step(slot, done)?;
        }
        Ok(())
    }

    fn step(
        &mut self,
        slot: usize,
        done: &mut Vec<(SslStream<TcpStream>, Behaviour)>,
    ) -> io::Result<()> {
        let Some(handshake) = self.slots[slot].as_mut() else {
            return Ok(());
        };
        match handshake.stream.connect() {
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                return Ok(());
            }
            Err(e) => {
                let behaviour = handshake.behaviour;
                self.close(slot);
                self.fail(format!("handshake ({}): {e}", behaviour.name()));
            }
            Ok(()) => {
                let Some(mut handshake) = self.close(slot) else {
                    return Ok(());
                };
                self.poll
                    .registry()
                    .deregister(handshake.stream.get_mut())?;
                if handshake.behaviour == Behaviour::Alerts {
                    // Under the TLS layer: the peer's OpenSSL rejects it with an alert.
                    let forged = forged_record();
                    match handshake.stream.get_mut().write(&forged) {
                        Ok(n) if n == forged.len() => {}
                        other => {
                            self.fail(format!("sending the forged record: {other:?}"));
                            return Ok(());
                        }
                    }
                }
                done.push((handshake.stream, handshake.behaviour));
            }
        }
        Ok(())
    }

    /// Gives up the handshakes that have taken longer than `HANDSHAKE_TIMEOUT`.
    pub fn expire(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let late = self.slots[slot]
                .as_ref()
                .is_some_and(|h| now.duration_since(h.started) > HANDSHAKE_TIMEOUT);
            if late {
                self.close(slot);
                self.fail(format!("handshake not done in {HANDSHAKE_TIMEOUT:?}"));
            }
        }
    }

    /// Gives up every handshake in progress (the run is over); returns how many.
    pub fn abandon(&mut self) -> usize {
        let n = self.in_flight;
        for slot in 0..self.slots.len() {
            self.close(slot);
        }
        n
    }

    /// Drops the opener (its poll, and any handshake left); returns how many
    /// connections never reached the Closer, and the first failures described.
    pub fn finish(self) -> (u64, Vec<String>) {
        (self.failed, self.failures)
    }

    /// Frees a slot; returns what it held.
    fn close(&mut self, slot: usize) -> Option<Handshake> {
        let handshake = self.slots[slot].take()?;
        self.free.push(slot);
        self.in_flight -= 1;
        Some(handshake)
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < DESCRIBED {
            self.failures.push(what);
        }
    }
}
