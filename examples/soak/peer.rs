//! The peer process (`soak --peer`): the soak starts it, so that the peers'
//! memory and file descriptors are not the measured process's. One TLS server on
//! one mio loop, a listener per behaviour; it prints `ports P1 ... P6` (in the
//! order of `Behaviour::ALL`) and serves until its stdin closes (the soak ends,
//! or dies).
//!
//! Every behaviour but `Silent` acts after a delay chosen per connection (at
//! most `--delay-max-ms`), so that the soak's shutdowns stay pending for a while
//! and thousands are pending at once; a silent peer holds the connection for
//! `--hold-ms`, longer than the soak's peer timeout.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslSessionCacheMode, SslStream,
};

use crate::behaviour::Behaviour;
use crate::measure;

/// Tokens: the listeners (one per behaviour), stdin, then the connections.
const STDIN: Token = Token(Behaviour::ALL.len());
const FIRST_CONN: usize = Behaviour::ALL.len() + 1;

/// The bytes of one application-data write of a flooding peer.
const FLOOD_CHUNK: usize = 16 * 1024;

pub struct PeerOptions {
    /// The longest delay before a peer acts.
    pub delay_max: Duration,
    /// How long a silent peer holds a connection.
    pub hold: Duration,
    /// How much a flooding peer sends before it closes.
    pub flood_bytes: usize,
}

/// Where a connection is.
enum State {
    Handshake,
    /// Reading until the client's close_notify.
    AwaitCloseNotify,
    /// Waiting for its timer, then acting.
    Delay,
    /// `Alerts`: reading the forged record, which fails with an alert.
    ReadForged,
    /// `Answers`: sending our close_notify.
    Answer,
    /// `Floods`: this many bytes still to send.
    Flood(usize),
    /// After the alert: raw bytes until the client's EOF, then close.
    DrainToEof,
    /// `Silent`: nothing until the timer.
    Hold,
}

/// What a connection waits for after its turn.
enum Next {
    Io,
    Timer(Instant),
    Done,
}

struct Conn {
    stream: SslStream<TcpStream>,
    behaviour: Behaviour,
    state: State,
    /// How long it waits before it acts (chosen at random, at most
    /// `delay_max`).
    delay: Duration,
    /// Tells a live timer from one left by an earlier connection in this slot.
    generation: u64,
}

pub fn run(options: &PeerOptions) -> io::Result<()> {
    measure::raise_fd_limit();
    let context = server_context()?;
    let mut poll = Poll::new()?;
    let mut listeners = Vec::new();
    for (i, _) in Behaviour::ALL.iter().enumerate() {
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().expect("an address"))?;
        poll.registry()
            .register(&mut listener, Token(i), Interest::READABLE)?;
        listeners.push(listener);
    }
    poll.registry()
        .register(&mut SourceFd(&0), STDIN, Interest::READABLE)?;
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<io::Result<_>>()?;
    println!("ports {}", ports.join(" "));
    io::stdout().flush()?;

    let mut peer = Peer {
        options,
        context,
        conns: Vec::new(),
        free: Vec::new(),
        timers: BinaryHeap::new(),
        generation: 0,
        random: measure::Random::new(),
    };
    let mut events = Events::with_capacity(1024);
    loop {
        let timeout = peer
            .timers
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            match event.token() {
                STDIN => {
                    if stdin_closed() {
                        return Ok(());
                    }
                }
                Token(i) if i < FIRST_CONN => peer.accept(&poll, &listeners[i], Behaviour::ALL[i]),
                Token(i) => peer.turn(i - FIRST_CONN, false),
            }
        }
        peer.fire_timers(Instant::now());
    }
}

/// The soak closed our stdin (or died): time to go.
fn stdin_closed() -> bool {
    let mut buf = [0u8; 64];
    !matches!(io::stdin().read(&mut buf), Ok(n) if n > 0)
}

/// TLS 1.2 and 1.3 (the client picks), the self-signed P-256 identity, and no
/// session cache: nothing in the peer grows with the number of connections.
fn server_context() -> io::Result<SslContext> {
    let (cert, key) =
        closenotify::doc_support::self_signed("localhost").map_err(io::Error::other)?;
    let mut builder = SslContextBuilder::new(SslMethod::tls_server()).map_err(io::Error::other)?;
    builder.set_certificate(&cert).map_err(io::Error::other)?;
    builder.set_private_key(&key).map_err(io::Error::other)?;
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    Ok(builder.build())
}

struct Peer<'a> {
    options: &'a PeerOptions,
    context: SslContext,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// (when, slot, generation), earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    generation: u64,
    random: measure::Random,
}

impl Peer<'_> {
    fn accept(&mut self, poll: &Poll, listener: &TcpListener, behaviour: Behaviour) {
        loop {
            let tcp = match listener.accept() {
                Ok((tcp, _)) => tcp,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("soak peer: accept: {e}");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Ok(stream) = Ssl::new(&self.context).and_then(|ssl| SslStream::new(ssl, tcp))
            else {
                continue;
            };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            self.generation += 1;
            let mut conn = Conn {
                stream,
                behaviour,
                state: State::Handshake,
                delay: self.random.below(self.options.delay_max),
                generation: self.generation,
            };
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) =
                poll.registry()
                    .register(conn.stream.get_mut(), Token(FIRST_CONN + slot), interest)
            {
                eprintln!("soak peer: register: {e}");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(conn);
            self.turn(slot, false);
        }
    }

    /// Lets the connection in `slot` make all the progress it can: after an
    /// event, or when its timer fired.
    fn turn(&mut self, slot: usize, timer: bool) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        match advance(conn, timer, self.options) {
            Next::Io => {}
            Next::Timer(at) => self.timers.push(Reverse((at, slot, conn.generation))),
            Next::Done => {
                self.conns[slot] = None; // closes the socket
                self.free.push(slot);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let live = self.conns[slot]
                .as_ref()
                .is_some_and(|c| c.generation == generation);
            if live {
                self.turn(slot, true);
            }
        }
    }
}

/// One connection's turn: runs its state machine until it waits for I/O or a
/// timer, or is done (then the caller closes it).
fn advance(conn: &mut Conn, mut timer: bool, options: &PeerOptions) -> Next {
    let mut buf = [0u8; 4096];
    loop {
        match conn.state {
            State::Handshake => match conn.stream.accept() {
                Ok(()) => match conn.behaviour {
                    Behaviour::Silent => {
                        conn.state = State::Hold;
                        return Next::Timer(Instant::now() + options.hold);
                    }
                    Behaviour::Alerts => {
                        conn.state = State::Delay;
                        return Next::Timer(Instant::now() + conn.delay);
                    }
                    _ => conn.state = State::AwaitCloseNotify,
                },
                Err(e) if would_block(&e) => return Next::Io,
                Err(_) => return Next::Done,
            },
            State::AwaitCloseNotify => match conn.stream.ssl_read(&mut buf) {
                Ok(_) => {}
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    conn.state = State::Delay;
                    return Next::Timer(Instant::now() + conn.delay);
                }
                Err(e) if would_block(&e) => return Next::Io,
                Err(_) => return Next::Done,
            },
            State::Delay | State::Hold if !timer => return Next::Io,
            State::Hold => return Next::Done,
            State::Delay => {
                timer = false;
                conn.state = match conn.behaviour {
                    Behaviour::Answers => State::Answer,
                    Behaviour::Floods => State::Flood(options.flood_bytes),
                    Behaviour::Alerts => State::ReadForged,
                    Behaviour::Resets => {
                        let _ = socket2::SockRef::from(conn.stream.get_ref())
                            .set_linger(Some(Duration::ZERO));
                        return Next::Done;
                    }
                    Behaviour::Truncates | Behaviour::Silent => return Next::Done,
                };
            }
            State::ReadForged => match conn.stream.ssl_read(&mut buf) {
                Ok(_) => {}
                Err(e) if would_block(&e) => return Next::Io,
                // The record fails authentication: OpenSSL has sent the alert.
                Err(e) if e.code() == ErrorCode::SSL => conn.state = State::DrainToEof,
                Err(_) => return Next::Done,
            },
            State::Answer => match conn.stream.shutdown() {
                Ok(_) => return Next::Done,
                Err(e) if would_block(&e) => return Next::Io,
                Err(_) => return Next::Done,
            },
            State::Flood(0) => return Next::Done,
            State::Flood(left) => {
                let chunk = [b'f'; FLOOD_CHUNK];
                match conn.stream.ssl_write(&chunk[..left.min(FLOOD_CHUNK)]) {
                    Ok(n) => conn.state = State::Flood(left - n),
                    Err(e) if would_block(&e) => return Next::Io,
                    // The client has closed (after its drain limit): done.
                    Err(_) => return Next::Done,
                }
            }
            State::DrainToEof => match conn.stream.get_mut().read(&mut buf) {
                Ok(0) => return Next::Done,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Io,
                Err(_) => return Next::Done,
            },
        }
    }
}

fn would_block(e: &openssl::ssl::Error) -> bool {
    matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE)
}
