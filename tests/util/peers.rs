//! The test kit's peers: real OpenSSL on loopback, contexts for TLS 1.2 and 1.3
//! with session caches, connected pairs, and the ways a peer can end a
//! connection, politely or not ([`Behaviour`]). The tests use it through
//! `tests/util`; the tour (`examples/scenarios.rs`) includes this file to play
//! the same peers.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslSession,
    SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;

/// A protocol version every scenario runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    V12,
    V13,
}

pub const BOTH: [Tls; 2] = [Tls::V12, Tls::V13];

impl Tls {
    pub fn version(self) -> SslVersion {
        match self {
            Tls::V12 => SslVersion::TLS1_2,
            Tls::V13 => SslVersion::TLS1_3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Tls::V12 => "TLSv1.2",
            Tls::V13 => "TLSv1.3",
        }
    }
    /// As cn_test, peer.py and the probe spell it.
    pub fn arg(self) -> &'static str {
        match self {
            Tls::V12 => "1.2",
            Tls::V13 => "1.3",
        }
    }
    /// The `openssl s_server`/`s_client` flag that pins it.
    pub fn openssl_flag(self) -> &'static str {
        match self {
            Tls::V12 => "-tls1_2",
            Tls::V13 => "-tls1_3",
        }
    }
    /// As the C report prints it.
    pub fn wire(self) -> &'static str {
        match self {
            Tls::V12 => "0x0303",
            Tls::V13 => "0x0304",
        }
    }
}

/// Which end of the connection runs closenotify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

pub const ROLES: [Role; 2] = [Role::Client, Role::Server];

/// The process-wide self-signed identity.
pub fn identity() -> &'static (X509, PKey<Private>) {
    static ID: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    ID.get_or_init(|| closenotify::doc_support::self_signed("localhost").expect("certificate"))
}

/// A server and a client context pinned to one version, with session caches on
/// both sides, so that resumption can be observed. A clone shares the contexts.
#[derive(Clone)]
pub struct Contexts {
    pub tls: Tls,
    pub server: SslContext,
    pub client: SslContext,
}

impl Contexts {
    pub fn new(tls: Tls) -> Contexts {
        Contexts::with(tls, |_| {}, |_| {})
    }

    /// `server_tweak` and `client_tweak` adjust the builders (options, modes).
    pub fn with(
        tls: Tls,
        server_tweak: impl FnOnce(&mut SslContextBuilder),
        client_tweak: impl FnOnce(&mut SslContextBuilder),
    ) -> Contexts {
        let (cert, key) = identity();
        let mut s = SslContextBuilder::new(SslMethod::tls_server()).expect("context");
        s.set_certificate(cert).expect("certificate");
        s.set_private_key(key).expect("key");
        s.set_min_proto_version(Some(tls.version()))
            .expect("version");
        s.set_max_proto_version(Some(tls.version()))
            .expect("version");
        s.set_session_id_context(b"closenotify")
            .expect("session id context");
        s.set_session_cache_mode(SslSessionCacheMode::SERVER);
        server_tweak(&mut s);

        let mut c = SslContextBuilder::new(SslMethod::tls_client()).expect("context");
        c.set_verify(SslVerifyMode::NONE);
        c.set_min_proto_version(Some(tls.version()))
            .expect("version");
        c.set_max_proto_version(Some(tls.version()))
            .expect("version");
        c.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        client_tweak(&mut c);
        Contexts {
            tls,
            server: s.build(),
            client: c.build(),
        }
    }

    /// Server contexts that keep sessions server-side (no stateless tickets), so
    /// that removing a session from the server cache is observable.
    pub fn stateful(tls: Tls) -> Contexts {
        Contexts::with(
            tls,
            |s| {
                s.set_options(SslOptions::NO_TICKET);
            },
            |_| {},
        )
    }

    /// A connected, handshaken pair: `ours` runs closenotify, `peer` misbehaves.
    pub fn pair(&self, role: Role) -> Pair {
        self.pair_resuming(role, None)
    }

    /// As `pair`, the client offering `session`.
    pub fn pair_resuming(&self, role: Role, session: Option<&SslSession>) -> Pair {
        let (client_tcp, server_tcp) = tcp_pair();
        let server_ctx = self.server.clone();
        let server = thread::spawn(move || {
            let ssl = Ssl::new(&server_ctx).expect("ssl");
            ssl.accept(server_tcp).expect("server handshake")
        });
        let mut ssl = Ssl::new(&self.client).expect("ssl");
        if let Some(s) = session {
            // SAFETY: the session comes from the same client context.
            unsafe { ssl.set_session(s).expect("set_session") };
        }
        let client = ssl.connect(client_tcp).expect("client handshake");
        let server = server.join().expect("server thread");
        match role {
            Role::Client => Pair {
                ours: client,
                peer: server,
            },
            Role::Server => Pair {
                ours: server,
                peer: client,
            },
        }
    }
}

pub struct Pair {
    pub ours: SslStream<TcpStream>,
    pub peer: SslStream<TcpStream>,
}

/// Two connected loopback sockets (client, server).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client.set_nodelay(true).expect("nodelay");
    server.set_nodelay(true).expect("nodelay");
    (client, server)
}

/// Reads until the other side's close_notify; returns the application bytes read.
pub fn read_until_close_notify<S: Read + Write>(
    s: &mut SslStream<S>,
) -> Result<Vec<u8>, openssl::ssl::Error> {
    let mut all = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.ssl_read(&mut buf) {
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(all),
            Err(e) => return Err(e),
        }
    }
}

/// Reads raw TCP until EOF or error; returns the error kind if any.
pub fn wait_eof(tcp: &mut TcpStream) -> Option<io::ErrorKind> {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.kind()),
        }
    }
}

/// The well-behaved peer: waits for our close_notify, answers with its own, then
/// waits for our FIN so that nothing is reset.
pub fn answer(mut s: SslStream<TcpStream>) {
    if read_until_close_notify(&mut s).is_ok() && s.shutdown().is_ok() {
        wait_eof(s.get_mut());
    }
}

/// Makes the final close() of `tcp` send an RST.
pub fn reset_on_drop(tcp: &TcpStream) {
    try_reset_on_drop(tcp).expect("SO_LINGER");
}

/// Makes the final close() of the socket `sock` send an RST (SO_LINGER 0).
pub fn try_reset_on_drop(sock: &impl AsFd) -> io::Result<()> {
    socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO))
}

/// Writes raw bytes under the TLS layer, as a broken or hostile peer would.
pub fn write_raw(s: &mut SslStream<TcpStream>, bytes: &[u8]) {
    let _ = s.get_mut().write_all(bytes);
}

/// As `write_raw`, on any socket (a tokio one too), bypassing its owner.
pub fn send_raw(sock: impl AsFd, mut bytes: &[u8]) {
    let fd = sock.as_fd().as_raw_fd();
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for its length; MSG_NOSIGNAL: no SIGPIPE.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
            wait_for(fd, libc::POLLOUT, Duration::from_secs(5));
        } else {
            return;
        }
    }
}

/// Our forged record (see `forged_record`) under the TLS layer of `sock`, then a
/// bounded wait until the fatal alert the peer raises on it has arrived.
pub fn provoke_fatal_alert(sock: impl AsFd) {
    let fd = sock.as_fd().as_raw_fd();
    send_raw(sock, &forged_record());
    wait_for(fd, libc::POLLIN, Duration::from_secs(5));
}

/// A well-formed TLS application-data record header with a body that will fail
/// authentication: the receiver raises bad_record_mac.
pub fn forged_record() -> Vec<u8> {
    let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    rec.extend((0..0x30u8).map(|i| i.wrapping_mul(37)));
    rec
}

/// Waits (bounded) until `fd` reports one of `events`; false on timeout.
pub fn wait_for(fd: i32, events: i16, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) == 1 }
}

/// A TLS 1.3 client: waits for the server's tickets and processes them, so that
/// nothing is left unread in the socket. The socket's mode is left as it was.
pub fn read_tickets<S: Read + Write + AsFd>(s: &mut SslStream<S>) {
    let fd = s.get_ref().as_fd().as_raw_fd();
    let sock = socket2::SockRef::from(s.get_ref());
    let blocking = !sock.nonblocking().unwrap_or(true);
    let _ = sock.set_nonblocking(true);
    // The tickets may come in more than one segment: read until none has come
    // for 50 ms.
    let mut wait = Duration::from_secs(5);
    while wait_for(fd, libc::POLLIN, wait) {
        let _ = s.ssl_read(&mut [0u8; 64]);
        wait = Duration::from_millis(50);
    }
    let _ = socket2::SockRef::from(s.get_ref()).set_nonblocking(!blocking);
}

/// Fills our socket's send buffer with raw bytes (the peer does not read) until
/// the kernel accepts not even one more byte and the state is stable: what a
/// connection looks like after an application wrote more than a stalled peer
/// would take. OpenSSL's own state is untouched (no half-written record).
/// Returns the number of raw bytes written, for a peer that drains them before it
/// reads TLS again.
pub fn fill_send_buffer(sock: impl AsFd) -> usize {
    let fd = sock.as_fd().as_raw_fd();
    let chunk = vec![0u8; 65536];
    let mut total = 0;
    let mut send = |size: usize| {
        // SAFETY: `chunk` is valid for `size` bytes; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::send(
                fd,
                chunk.as_ptr().cast(),
                size,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        total += n.max(0) as usize;
        n >= 0
    };
    loop {
        while send(chunk.len()) {}
        while send(1) {}
        // Stable once the socket stays unwritable for a while (in-flight bytes have
        // been acknowledged into the peer's full receive buffer) and even then the
        // kernel refuses a single byte.
        if !wait_for(fd, libc::POLLOUT, Duration::from_millis(50)) && !send(1) {
            return total;
        }
    }
}

/// How a peer ends the connection after ours has sent close_notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers with its own close_notify.
    Answers,
    /// Sends close_notify first; our application reads it, then shuts down.
    Initiates,
    /// Never answers.
    Silent,
    /// Never reads; our send buffer is full.
    NotReading,
    /// Closes TCP without close_notify.
    Truncates,
    /// Resets the connection.
    Resets,
    /// Sends a fatal alert (provoked by a forged record of ours).
    FatalAlert,
    /// Sends application data after our close_notify, then answers.
    DataAfterCloseNotify,
    /// Sends bytes that are not TLS (text, not even a record header). How OpenSSL
    /// rejects them depends on its version: see `text_garbage_rejection` in the
    /// tests.
    Garbage,
    /// Sends a garbage record: a well-formed record header, a body that fails
    /// authentication. Every OpenSSL version rejects it the same way.
    GarbageRecord,
}

impl Behaviour {
    pub const ALL: [Behaviour; 10] = [
        Behaviour::Answers,
        Behaviour::Initiates,
        Behaviour::Silent,
        Behaviour::NotReading,
        Behaviour::Truncates,
        Behaviour::Resets,
        Behaviour::FatalAlert,
        Behaviour::DataAfterCloseNotify,
        Behaviour::Garbage,
        Behaviour::GarbageRecord,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Behaviour::Answers => "peer answers",
            Behaviour::Initiates => "peer initiates",
            Behaviour::Silent => "silent peer",
            Behaviour::NotReading => "peer not reading",
            Behaviour::Truncates => "peer truncates",
            Behaviour::Resets => "peer resets",
            Behaviour::FatalAlert => "peer sends fatal alert",
            Behaviour::DataAfterCloseNotify => "data after close_notify",
            Behaviour::Garbage => "peer sends garbage",
            Behaviour::GarbageRecord => "peer sends a garbage record",
        }
    }

    /// Bytes of application data `DataAfterCloseNotify` sends.
    pub const DATA_AFTER: usize = 10_000;

    /// Sets the stage on our side before the shutdown; returns the peer's thread.
    /// `release` tells a peer that holds the connection open that it may go.
    pub fn start<S: Read + Write + AsFd>(
        self,
        ours: &mut SslStream<S>,
        peer: SslStream<TcpStream>,
        release: std::sync::mpsc::Receiver<()>,
    ) -> thread::JoinHandle<PeerSaw> {
        let tls13_client =
            ours.ssl().version2() == Some(SslVersion::TLS1_3) && !ours.ssl().is_server();
        let handle = self.spawn_peer(peer, release);
        match self.our_part() {
            OurPart::Nothing => {}
            OurPart::ReadUntilCloseNotify => {
                let _ = read_until_close_notify(ours);
            }
            OurPart::FillSendBuffer => {
                if tls13_client {
                    read_tickets(ours);
                }
                fill_send_buffer(ours.get_ref());
            }
            OurPart::ProvokeFatalAlert => provoke_fatal_alert(ours.get_ref()),
        }
        handle
    }

    /// What our application does before the shutdown, for this behaviour: `start`
    /// plays it on a blocking stream; an async test plays it on its own stream.
    pub fn our_part(self) -> OurPart {
        match self {
            Behaviour::Initiates => OurPart::ReadUntilCloseNotify,
            Behaviour::NotReading => OurPart::FillSendBuffer,
            Behaviour::FatalAlert => OurPart::ProvokeFatalAlert,
            _ => OurPart::Nothing,
        }
    }

    /// The peer's thread for this behaviour (the half of `start` on the peer's
    /// side). `release` tells a peer that holds the connection open that it may go.
    pub fn spawn_peer(
        self,
        peer: SslStream<TcpStream>,
        release: std::sync::mpsc::Receiver<()>,
    ) -> thread::JoinHandle<PeerSaw> {
        thread::spawn(move || self.play_peer(peer, release))
    }

    /// The peer's side: plays the behaviour, then, where it watches, says how
    /// our side's transport ended.
    fn play_peer(
        self,
        mut p: SslStream<TcpStream>,
        release: std::sync::mpsc::Receiver<()>,
    ) -> PeerSaw {
        match self {
            Behaviour::Answers => {
                if read_until_close_notify(&mut p).is_ok() && p.shutdown().is_ok() {
                    return PeerSaw::from(wait_eof(p.get_mut()));
                }
                PeerSaw::Failed
            }
            Behaviour::Initiates => {
                if p.shutdown().is_ok() && read_until_close_notify(&mut p).is_ok() {
                    return PeerSaw::from(wait_eof(p.get_mut()));
                }
                PeerSaw::Failed
            }
            Behaviour::Silent => {
                // Reads nothing until we are gone, then how we went.
                let _ = release.recv();
                match read_until_close_notify(&mut p) {
                    Ok(_) => PeerSaw::from(wait_eof(p.get_mut())),
                    Err(_) => PeerSaw::Failed,
                }
            }
            Behaviour::NotReading => {
                let _ = release.recv();
                // Our filler bytes, then the end of our side.
                PeerSaw::from(wait_eof(p.get_mut()))
            }
            Behaviour::FatalAlert => {
                let _ = p.ssl_read(&mut [0u8; 64]); // fails on our forged record: alert
                let _ = release.recv();
                PeerSaw::NotWatched
            }
            Behaviour::Truncates => {
                let _ = read_until_close_notify(&mut p);
                drop(p); // FIN without close_notify
                PeerSaw::NotWatched
            }
            Behaviour::Resets => {
                let _ = read_until_close_notify(&mut p);
                reset_on_drop(p.get_ref());
                PeerSaw::NotWatched
            }
            Behaviour::DataAfterCloseNotify => {
                if read_until_close_notify(&mut p).is_ok()
                    && p.write_all(&vec![7u8; Self::DATA_AFTER]).is_ok()
                    && p.shutdown().is_ok()
                {
                    return PeerSaw::from(wait_eof(p.get_mut()));
                }
                PeerSaw::Failed
            }
            Behaviour::Garbage => {
                let _ = read_until_close_notify(&mut p);
                write_raw(&mut p, b"this is not TLS\n");
                let _ = release.recv();
                PeerSaw::NotWatched
            }
            Behaviour::GarbageRecord => {
                let _ = read_until_close_notify(&mut p);
                write_raw(&mut p, &forged_record());
                let _ = release.recv();
                PeerSaw::NotWatched
            }
        }
    }
}

/// How the peer saw our side's transport end, where its behaviour watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSaw {
    /// A FIN: EOF after every byte we sent.
    Fin,
    /// An RST.
    Reset,
    /// Another error on its socket.
    Other(io::ErrorKind),
    /// The peer's own TLS calls failed before it could watch.
    Failed,
    /// This behaviour does not watch.
    NotWatched,
}

impl From<Option<io::ErrorKind>> for PeerSaw {
    /// What `wait_eof` returned.
    fn from(end: Option<io::ErrorKind>) -> PeerSaw {
        match end {
            None => PeerSaw::Fin,
            Some(io::ErrorKind::ConnectionReset) => PeerSaw::Reset,
            Some(other) => PeerSaw::Other(other),
        }
    }
}

/// What our application does before the shutdown for a `Behaviour`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OurPart {
    /// Nothing: the shutdown starts at once.
    Nothing,
    /// Reads until the peer's close_notify (the peer initiates).
    ReadUntilCloseNotify,
    /// A TLS 1.3 client reads its session tickets (unread input would turn our
    /// close into an RST), then `fill_send_buffer` (the peer does not read).
    FillSendBuffer,
    /// `provoke_fatal_alert`.
    ProvokeFatalAlert,
}
