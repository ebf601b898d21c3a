//! Shared helpers for the integration tests: real OpenSSL on both ends of real
//! loopback sockets. Each test file uses a subset.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use closenotify::{Outcome, Policy, Report};
use foreign_types::ForeignType;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ErrorCode, SslContext, SslContextBuilder, SslMethod, SslOptions, SslSessionCacheMode,
    SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use openssl_sys as ffi;

/// OpenSSL functions the tests need that openssl-sys does not declare.
pub mod sys {
    use openssl_sys::SSL;
    use std::ffi::{c_int, c_ulong};
    extern "C" {
        pub fn SSL_set_fd(s: *mut SSL, fd: c_int) -> c_int;
        pub fn ERR_peek_error() -> c_ulong;
        pub fn SSL_new_session_ticket(s: *mut SSL) -> c_int;
        pub fn SSL_key_update(s: *mut SSL, updatetype: c_int) -> c_int;
        pub fn SSL_get_options(s: *const SSL) -> u64;
    }
}

/// The protocol versions every scenario runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    V12,
    V13,
}

pub const BOTH: [Tls; 2] = [Tls::V12, Tls::V13];

impl Tls {
    fn version(self) -> SslVersion {
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
}

/// Which end of the connection runs closenotify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

pub const ROLES: [Role; 2] = [Role::Client, Role::Server];

/// Every (version, our role) combination.
pub fn matrix() -> Vec<(Tls, Role)> {
    BOTH.iter()
        .flat_map(|&t| ROLES.iter().map(move |&r| (t, r)))
        .collect()
}

pub fn identity() -> &'static (X509, PKey<Private>) {
    static ID: OnceLock<(X509, PKey<Private>)> = OnceLock::new();
    ID.get_or_init(|| closenotify::doc_support::self_signed("localhost").unwrap())
}

/// A server and a client context pinned to one version, with session caches on
/// both sides, so that resumption can be observed.
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
        let mut s = SslContextBuilder::new(SslMethod::tls_server()).unwrap();
        s.set_certificate(cert).unwrap();
        s.set_private_key(key).unwrap();
        s.set_min_proto_version(Some(tls.version())).unwrap();
        s.set_max_proto_version(Some(tls.version())).unwrap();
        s.set_session_id_context(b"closenotify-tests").unwrap();
        s.set_session_cache_mode(SslSessionCacheMode::SERVER);
        server_tweak(&mut s);

        let mut c = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        c.set_verify(SslVerifyMode::NONE);
        c.set_min_proto_version(Some(tls.version())).unwrap();
        c.set_max_proto_version(Some(tls.version())).unwrap();
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
    pub fn pair_resuming(&self, role: Role, session: Option<&openssl::ssl::SslSession>) -> Pair {
        let (client_tcp, server_tcp) = tcp_pair();
        let server_ctx = self.server.clone();
        let server = thread::spawn(move || {
            let ssl = openssl::ssl::Ssl::new(&server_ctx).unwrap();
            ssl.accept(server_tcp).expect("server handshake")
        });
        let mut ssl = openssl::ssl::Ssl::new(&self.client).unwrap();
        if let Some(s) = session {
            // SAFETY: the session comes from the same client context.
            unsafe { ssl.set_session(s).unwrap() };
        }
        let client = ssl.connect(client_tcp).expect("client handshake");
        let server = server.join().unwrap();
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

impl Contexts {
    /// As `pair`, with our side on a `mio::net::TcpStream` (non-blocking once the
    /// handshake is done).
    pub fn pair_mio(&self, role: Role) -> (SslStream<mio::net::TcpStream>, SslStream<TcpStream>) {
        let (client_tcp, server_tcp) = tcp_pair();
        let (ours_tcp, peer_tcp, ours_ctx, peer_ctx) = match role {
            Role::Client => (client_tcp, server_tcp, &self.client, self.server.clone()),
            Role::Server => (server_tcp, client_tcp, &self.server, self.client.clone()),
        };
        let peer = thread::spawn(move || {
            let ssl = openssl::ssl::Ssl::new(&peer_ctx).unwrap();
            match role {
                Role::Client => ssl.accept(peer_tcp).expect("peer handshake"),
                Role::Server => ssl.connect(peer_tcp).expect("peer handshake"),
            }
        });
        // The socket stays blocking for the handshake; mio only wraps the fd.
        let mio_tcp = mio::net::TcpStream::from_std(ours_tcp);
        let ssl = openssl::ssl::Ssl::new(ours_ctx).unwrap();
        let mut ours = SslStream::new(ssl, mio_tcp).unwrap();
        match role {
            Role::Client => ours.connect().expect("our handshake"),
            Role::Server => ours.accept().expect("our handshake"),
        }
        socket2::SockRef::from(ours.get_ref())
            .set_nonblocking(true)
            .unwrap();
        (ours, peer.join().unwrap())
    }
}

pub struct Pair {
    pub ours: SslStream<TcpStream>,
    pub peer: SslStream<TcpStream>,
}

/// Two connected loopback sockets (client, server).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

/// Runs a misbehaving peer on its own thread.
pub fn spawn_peer<T: Send + 'static>(
    peer: SslStream<TcpStream>,
    f: impl FnOnce(SslStream<TcpStream>) -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name("peer".into())
        .spawn(move || f(peer))
        .unwrap()
}

/// Reads until the other side's close_notify; returns the application bytes read.
pub fn read_until_close_notify(
    s: &mut SslStream<TcpStream>,
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

/// The well-behaved peer: waits for our close_notify, answers with its own, then
/// waits for our FIN so that nothing is reset.
pub fn answer(mut s: SslStream<TcpStream>) {
    read_until_close_notify(&mut s).expect("our close_notify");
    s.shutdown().expect("peer close_notify");
    wait_eof(s.get_mut());
}

/// A TLS 1.3 client: waits for the server's tickets and processes them, so that
/// nothing is left unread in the socket.
pub fn read_tickets(s: &mut SslStream<TcpStream>) {
    let fd = s.get_ref().as_raw_fd();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "no tickets");
    s.get_ref().set_nonblocking(true).unwrap();
    let err = s.ssl_read(&mut [0u8; 64]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::WANT_READ);
    s.get_ref().set_nonblocking(false).unwrap();
}

/// Reads raw TCP until EOF or error; returns the error kind if any.
pub fn wait_eof(tcp: &mut TcpStream) -> Option<io::ErrorKind> {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.kind()),
        }
    }
}

/// Makes the final close() of `tcp` send an RST.
pub fn reset_on_drop(tcp: &TcpStream) {
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Writes raw bytes under the TLS layer, as a broken or hostile peer would.
pub fn write_raw(s: &mut SslStream<TcpStream>, bytes: &[u8]) {
    s.get_mut().write_all(bytes).unwrap();
}

/// A well-formed TLS application-data record header with a body that will fail
/// authentication: the receiver raises bad_record_mac.
pub fn forged_record() -> Vec<u8> {
    let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    rec.extend((0..0x30u8).map(|i| i.wrapping_mul(37)));
    rec
}

/// Fills our socket's send buffer with raw bytes (the peer does not read) until
/// the kernel accepts not even one more byte and the state is stable: what a
/// connection looks like after an application wrote more than a stalled peer
/// would take. OpenSSL's own state is untouched (no half-written record).
pub fn fill_send_buffer(tcp: &TcpStream) {
    let fd = tcp.as_raw_fd();
    let chunk = vec![0u8; 65536];
    loop {
        for size in [chunk.len(), 1] {
            loop {
                // SAFETY: `chunk` is valid for `size` bytes; MSG_DONTWAIT never blocks.
                let n = unsafe {
                    libc::send(
                        fd,
                        chunk.as_ptr().cast(),
                        size,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    break;
                }
            }
        }
        // Stable once the socket stays unwritable for a while (in-flight bytes have
        // been acknowledged into the peer's full receive buffer) and even then the
        // kernel refuses a single byte.
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; `chunk` is valid for one byte.
        unsafe {
            if libc::poll(&mut pfd, 1, 50) == 0
                && libc::send(
                    fd,
                    chunk.as_ptr().cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                ) < 0
            {
                return;
            }
        }
    }
}

/// The error queue of this thread is empty.
pub fn error_queue_empty() -> bool {
    // SAFETY: ERR_peek_error only reads this thread's queue.
    unsafe { sys::ERR_peek_error() == 0 }
}

/// What `session_resumable` says after an outcome that drops the session, with the
/// default contexts: a client's session is marked not resumable; a server that
/// issued stateless tickets (OpenSSL's default) cannot revoke them, and says so.
pub fn dropped_session_resumable(role: Role) -> bool {
    role == Role::Server
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A policy with test-sized timeouts.
pub fn policy(flush_ms: u64, peer_ms: u64) -> Policy {
    Policy::builder()
        .flush_timeout(ms(flush_ms))
        .peer_timeout(ms(peer_ms))
        .build()
        .unwrap()
}

#[track_caller]
pub fn assert_outcome(report: &Report, outcome: Outcome, what: &str) {
    assert_eq!(report.outcome, outcome, "{what}: {report:?}");
}

/// A raw `SSL*` on a socket BIO (`SSL_set_fd`), as C programs own them. OpenSSL's
/// socket BIO writes with write(), so it can raise SIGPIPE, and it reports EOF the
/// OpenSSL 3 way.
pub struct RawClient {
    pub ssl: openssl::ssl::Ssl,
    pub tcp: TcpStream,
}

impl RawClient {
    /// Connects to a server running on `ctx.server` and completes the handshake.
    pub fn connect(
        ctx: &Contexts,
        tweak: impl FnOnce(&mut openssl::ssl::SslRef),
    ) -> (RawClient, SslStream<TcpStream>) {
        let (client_tcp, server_tcp) = tcp_pair();
        let server_ctx = ctx.server.clone();
        let server = thread::spawn(move || {
            let ssl = openssl::ssl::Ssl::new(&server_ctx).unwrap();
            ssl.accept(server_tcp).expect("server handshake")
        });
        let mut ssl = openssl::ssl::Ssl::new(&ctx.client).unwrap();
        tweak(&mut ssl);
        let ptr = ssl.as_ptr();
        // SAFETY: `ptr` is a fresh SSL; the socket outlives it inside RawClient.
        unsafe {
            assert_eq!(sys::SSL_set_fd(ptr, client_tcp.as_raw_fd()), 1);
            assert_eq!(ffi::SSL_connect(ptr), 1, "raw client handshake");
        }
        let server = server.join().unwrap();
        (
            RawClient {
                ssl,
                tcp: client_tcp,
            },
            server,
        )
    }

    pub fn conn(&self) -> closenotify::RawConnection {
        // SAFETY: the SSL and the socket live as long as `self`, which the tests
        // keep alive while the connection is used.
        unsafe { closenotify::RawConnection::new(self.ssl.as_ptr(), self.tcp.as_raw_fd()).unwrap() }
    }
}
