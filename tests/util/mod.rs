//! Shared helpers for the integration tests: real OpenSSL on both ends of real
//! loopback sockets. Each test file uses a subset. External processes (openssl,
//! python3, the C programs, the examples) are in `process`; building the C
//! programs is in `cbuild`.
#![allow(dead_code)]

pub mod cbuild;
pub mod echo_client;
pub mod examples;
pub mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use closenotify::{Outcome, Policy, Report};
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::ssl::SslStream;
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
        pub fn SSL_get_wbio(s: *const SSL) -> *mut openssl_sys::BIO;
        pub fn SSL_get_wfd(s: *const SSL) -> c_int;
        pub fn SSL_get_read_ahead(s: *const SSL) -> c_int;
    }
}

pub mod peers;
pub use peers::*;

/// The line protocol the examples speak around TLS (STARTTLS, STOPTLS).
#[path = "../../examples/common/line.rs"]
pub mod line;

/// Every (version, our role) combination.
pub fn matrix() -> Vec<(Tls, Role)> {
    BOTH.iter()
        .flat_map(|&t| ROLES.iter().map(move |&r| (t, r)))
        .collect()
}

impl Contexts {
    /// A connected TCP pair: our socket and context, for our side's handshake in
    /// `role`, and the peer's thread already in its handshake on the other socket
    /// (blocking rust-openssl, done once ours is).
    fn peer_handshaking(
        &self,
        role: Role,
    ) -> (
        TcpStream,
        &openssl::ssl::SslContext,
        JoinHandle<SslStream<TcpStream>>,
    ) {
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
        (ours_tcp, ours_ctx, peer)
    }

    /// As `pair`, with our side on a `mio::net::TcpStream` (non-blocking once the
    /// handshake is done).
    pub fn pair_mio(&self, role: Role) -> (SslStream<mio::net::TcpStream>, SslStream<TcpStream>) {
        let (ours, peer) = self.pair_mio_blocking(role);
        socket2::SockRef::from(ours.get_ref())
            .set_nonblocking(true)
            .unwrap();
        (ours, peer)
    }

    /// As `pair_mio`, but the socket stays in blocking mode, as
    /// `mio::net::TcpStream::from_std` leaves a socket a std server accepted.
    pub fn pair_mio_blocking(
        &self,
        role: Role,
    ) -> (SslStream<mio::net::TcpStream>, SslStream<TcpStream>) {
        let (ours_tcp, ours_ctx, peer) = self.peer_handshaking(role);
        // The socket stays blocking for the handshake; mio only wraps the fd.
        let mio_tcp = mio::net::TcpStream::from_std(ours_tcp);
        let ssl = openssl::ssl::Ssl::new(ours_ctx).unwrap();
        let mut ours = SslStream::new(ssl, mio_tcp).unwrap();
        match role {
            Role::Client => ours.connect().expect("our handshake"),
            Role::Server => ours.accept().expect("our handshake"),
        }
        (ours, peer.join().unwrap())
    }
}

/// Our side on tokio-openssl, over a tokio `TcpStream`.

// --- tokio runtimes and cases ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

pub const FLAVORS: [Flavor; 2] = [Flavor::CurrentThread, Flavor::MultiThread];

pub fn runtime(flavor: Flavor) -> tokio::runtime::Runtime {
    let mut builder = match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    builder.enable_all().build().unwrap()
}

/// Runs `case` as a task on a fresh runtime of `flavor` (on a multi-thread
/// runtime, a worker runs it; spawning also proves the futures are `Send`).
pub fn on_runtime<T: Send + 'static>(
    flavor: Flavor,
    case: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let rt = runtime(flavor);
    rt.block_on(async move { tokio::spawn(case).await.expect("the case panicked") })
}

/// Every (version, our role, runtime) combination.
pub fn cases() -> Vec<(Tls, Role, Flavor)> {
    matrix()
        .into_iter()
        .flat_map(|(t, r)| FLAVORS.iter().map(move |&f| (t, r, f)))
        .collect()
}

/// `SSL_get_shutdown`: `SSL_SENT_SHUTDOWN`, `SSL_RECEIVED_SHUTDOWN`.
pub fn shutdown_flags(ssl: &openssl::ssl::SslRef) -> i32 {
    // SAFETY: a valid SSL; SSL_get_shutdown only reads its flags.
    unsafe { openssl_sys::SSL_get_shutdown(ssl.as_ptr()) }
}

pub type TokioStream = tokio_openssl::SslStream<tokio::net::TcpStream>;

/// `Behaviour::start`'s part on our side (`OurPart`), played on a tokio stream.
pub async fn play_our_part_tokio(behaviour: Behaviour, ours: &mut TokioStream) {
    use tokio::io::AsyncReadExt;
    match behaviour.our_part() {
        OurPart::Nothing => {}
        OurPart::ReadUntilCloseNotify => {
            let mut buf = [0u8; 1024];
            while matches!(ours.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        OurPart::FillSendBuffer => {
            let tls13_client = ours.ssl().version2() == Some(openssl::ssl::SslVersion::TLS1_3)
                && !ours.ssl().is_server();
            let mut wait = ms(5000);
            while tls13_client && wait_for(ours.get_ref().as_raw_fd(), libc::POLLIN, wait) {
                // A read processes the tickets (and answers `Pending`: no data);
                // they may come in more than one segment.
                wait = ms(50);
                let mut buf = [0u8; 64];
                std::future::poll_fn(|cx| {
                    let mut rb = tokio::io::ReadBuf::new(&mut buf);
                    let _ = tokio::io::AsyncRead::poll_read(
                        std::pin::Pin::new(&mut *ours),
                        cx,
                        &mut rb,
                    );
                    std::task::Poll::Ready(())
                })
                .await;
            }
            fill_send_buffer(ours.get_ref());
        }
        OurPart::ProvokeFatalAlert => provoke_fatal_alert(ours.get_ref()),
    }
}

impl Contexts {
    /// As `pair`, with our side a tokio-openssl stream registered with the current
    /// tokio runtime; the peer is the usual blocking rust-openssl stream (hand it
    /// to `spawn_peer` or `Behaviour::spawn_peer`).
    pub async fn pair_tokio(&self, role: Role) -> (TokioStream, SslStream<TcpStream>) {
        self.pair_tokio_with(role, |tcp| tcp).await
    }

    /// As `pair_tokio`, our tokio `TcpStream` wrapped by `wrap` (a test stream).
    pub async fn pair_tokio_with<S>(
        &self,
        role: Role,
        wrap: impl FnOnce(tokio::net::TcpStream) -> S,
    ) -> (tokio_openssl::SslStream<S>, SslStream<TcpStream>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (ours_tcp, ours_ctx, peer) = self.peer_handshaking(role);
        ours_tcp.set_nonblocking(true).unwrap();
        let tcp = wrap(tokio::net::TcpStream::from_std(ours_tcp).unwrap());
        let ssl = openssl::ssl::Ssl::new(ours_ctx).unwrap();
        let mut ours = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        let mut pinned = std::pin::Pin::new(&mut ours);
        match role {
            Role::Client => pinned.as_mut().connect().await.expect("our handshake"),
            Role::Server => pinned.as_mut().accept().await.expect("our handshake"),
        }
        // Our handshake is done, so the peer's ends at once.
        (ours, peer.join().unwrap())
    }
}

/// The peer: once our close_notify is in its socket (unread, so its OpenSSL is
/// still fully open), sends `updates` KeyUpdates, then reads our close_notify,
/// answers with its own, and returns every byte that came after our close_notify
/// until our FIN (or until we close, without the half-close).
pub fn updating_peer(
    updates: usize,
    requested: bool,
) -> impl FnOnce(SslStream<std::net::TcpStream>) -> Vec<u8> {
    move |mut p| {
        assert!(wait_for(p.get_ref().as_raw_fd(), libc::POLLIN, ms(5000)));
        let ssl = p.ssl().as_ptr();
        for _ in 0..updates {
            // SAFETY: the peer owns `p`; each call queues one KeyUpdate that
            // SSL_do_handshake then writes.
            unsafe {
                assert_eq!(sys::SSL_key_update(ssl, i32::from(requested)), 1);
                assert_eq!(ffi::SSL_do_handshake(ssl), 1);
            }
        }
        read_until_close_notify(&mut p).expect("our close_notify");
        p.shutdown().unwrap();
        let tcp = p.get_mut();
        tcp.set_read_timeout(Some(ms(5000))).unwrap();
        let mut after = Vec::new();
        let _ = tcp.read_to_end(&mut after);
        after
    }
}

/// How long `streaming_peer` streams.
pub const STREAM_FOR: Duration = Duration::from_secs(3);

/// The peer: reads our close_notify, then writes application data as fast as the
/// socket takes it for `STREAM_FOR` (3 s) (or until we are gone), then answers.
pub fn streaming_peer(p: SslStream<TcpStream>) -> JoinHandle<()> {
    spawn_peer(p, |mut p| {
        if read_until_close_notify(&mut p).is_err() {
            return;
        }
        let _ = p.get_ref().set_write_timeout(Some(ms(5000)));
        let chunk = vec![b's'; 16 * 1024];
        let start = Instant::now();
        while start.elapsed() < STREAM_FOR {
            if p.write_all(&chunk).is_err() {
                return; // we closed: what the test wants
            }
        }
        let _ = p.shutdown();
    })
}

/// Drives a `Shutdown` with poll(2), as a simple event loop would.
pub fn drive<C: closenotify::Connection>(
    mut sd: closenotify::Shutdown<C>,
    fd: i32,
) -> closenotify::Report {
    use closenotify::{Interest, Progress, Ready};
    use std::time::Instant;
    let mut ready = Ready::NONE;
    loop {
        match sd.poll(Instant::now(), ready) {
            Progress::Done(r) => return r,
            Progress::Wait(w) => {
                let events = match w.interest {
                    Interest::Read => libc::POLLIN,
                    Interest::Write => libc::POLLOUT,
                    Interest::Timer => 0,
                };
                ready = if wait_for(fd, events, w.timeout(Instant::now())) {
                    Ready::ALL
                } else {
                    Ready::NONE
                };
            }
        }
    }
}

/// A TCP stream whose writes can be held back and then sent in one `write()`:
/// how a peer puts its close_notify and the plaintext after it in one segment.
#[derive(Debug)]
pub struct Corkable {
    pub tcp: TcpStream,
    held: Option<Vec<u8>>,
}

impl Corkable {
    pub fn new(tcp: TcpStream) -> Corkable {
        Corkable { tcp, held: None }
    }
    /// Holds every write from now on.
    pub fn cork(&mut self) {
        self.held = Some(Vec::new());
    }
    /// Sends what was held, followed by `extra`, in one write.
    pub fn uncork_with(&mut self, extra: &[u8]) {
        let mut all = self.held.take().expect("corked");
        all.extend_from_slice(extra);
        std::io::Write::write_all(&mut self.tcp, &all).unwrap();
    }
}

impl std::io::Read for Corkable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl std::io::Write for Corkable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.held {
            Some(held) => {
                held.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.tcp.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What our side rejects text garbage with: OpenSSL checks a record's version
/// before its type, except in the TLS 1.3 record layer of 3.2 and later, which
/// checks the type first (and `t` is no record type).
pub fn text_garbage_rejection(tls: Tls) -> (closenotify::Alert, &'static str) {
    if cfg!(ossl320) && tls == Tls::V13 {
        (closenotify::Alert::UnexpectedMessage, "bad record type")
    } else {
        (closenotify::Alert::ProtocolVersion, "wrong version number")
    }
}

/// Whether `fd` is in blocking mode.
pub fn is_blocking(fd: i32) -> bool {
    // SAFETY: F_GETFL on an fd takes no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0, "fcntl: {}", std::io::Error::last_os_error());
    flags & libc::O_NONBLOCK == 0
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
        RawClient::pair(ctx, Role::Client, tweak)
    }

    /// A raw `SSL*` in `role`, handshaken with a rust-openssl peer in the other.
    pub fn pair(
        ctx: &Contexts,
        role: Role,
        tweak: impl FnOnce(&mut openssl::ssl::SslRef),
    ) -> (RawClient, SslStream<TcpStream>) {
        let (client_tcp, server_tcp) = tcp_pair();
        let (ours_tcp, peer_tcp) = match role {
            Role::Client => (client_tcp, server_tcp),
            Role::Server => (server_tcp, client_tcp),
        };
        let (ours_ctx, peer_ctx) = match role {
            Role::Client => (&ctx.client, ctx.server.clone()),
            Role::Server => (&ctx.server, ctx.client.clone()),
        };
        let peer = thread::spawn(move || {
            let ssl = openssl::ssl::Ssl::new(&peer_ctx).unwrap();
            match role {
                Role::Client => ssl.accept(peer_tcp).expect("peer handshake"),
                Role::Server => ssl.connect(peer_tcp).expect("peer handshake"),
            }
        });
        let mut ssl = openssl::ssl::Ssl::new(ours_ctx).unwrap();
        tweak(&mut ssl);
        let ptr = ssl.as_ptr();
        // SAFETY: `ptr` is a fresh SSL; the socket outlives it inside RawClient.
        unsafe {
            assert_eq!(sys::SSL_set_fd(ptr, ours_tcp.as_raw_fd()), 1);
            let done = match role {
                Role::Client => ffi::SSL_connect(ptr),
                Role::Server => ffi::SSL_accept(ptr),
            };
            assert_eq!(done, 1, "raw handshake");
        }
        let peer = peer.join().unwrap();
        (RawClient { ssl, tcp: ours_tcp }, peer)
    }

    /// Reads (raw `SSL_read`) until the peer's close_notify or an error.
    pub fn read_until_close_notify(&mut self) {
        let mut buf = [0u8; 4096];
        // SAFETY: the SSL is valid; `buf` is writable for its length.
        while unsafe { ffi::SSL_read(self.ssl.as_ptr(), buf.as_mut_ptr().cast(), buf.len() as i32) }
            > 0
        {}
    }

    /// Plays our part of `behaviour` on the raw `SSL*`, as `Behaviour::start`
    /// plays it on a stream.
    pub fn play(&mut self, behaviour: Behaviour) {
        match behaviour.our_part() {
            OurPart::Nothing => {}
            OurPart::ReadUntilCloseNotify => self.read_until_close_notify(),
            OurPart::FillSendBuffer => {
                let tls13_client = self.ssl.version2() == Some(openssl::ssl::SslVersion::TLS1_3)
                    && !self.ssl.is_server();
                if tls13_client {
                    // The tickets, maybe in more than one segment.
                    self.tcp.set_nonblocking(true).unwrap();
                    let mut wait = ms(5000);
                    while wait_for(self.tcp.as_raw_fd(), libc::POLLIN, wait) {
                        let mut buf = [0u8; 64];
                        // SAFETY: as above; the tickets are processed, no data comes.
                        unsafe { ffi::SSL_read(self.ssl.as_ptr(), buf.as_mut_ptr().cast(), 64) };
                        wait = ms(50);
                    }
                    self.tcp.set_nonblocking(false).unwrap();
                }
                fill_send_buffer(&self.tcp);
            }
            OurPart::ProvokeFatalAlert => provoke_fatal_alert(&self.tcp),
        }
    }

    pub fn conn(&self) -> closenotify::RawConnection {
        // SAFETY: the SSL and the socket live as long as `self`, which the tests
        // keep alive while the connection is used.
        unsafe { closenotify::RawConnection::new(self.ssl.as_ptr(), self.tcp.as_raw_fd()).unwrap() }
    }
}

/// A STOPTLS policy for the tests' own peers.
pub fn stop_tls_policy() -> closenotify::Policy {
    closenotify::Policy::builder()
        .mode(closenotify::Mode::StopTls)
        .flush_timeout(Duration::from_secs(2))
        .peer_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Reads one line byte by byte (nothing past its newline) and compares it.
#[track_caller]
pub fn expect_line(tcp: &mut TcpStream, want: &[u8], what: &str) {
    let got = line::read_line(tcp).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "{what}"
    );
}

/// Our side as a mio user would drive it: one registration for READABLE |
/// WRITABLE (edge-triggered), the machine's deadline as the poll timeout, each
/// event handed to the machine. Returns the report and the number of wake-ups.
pub fn drive_with_mio(ours: &mut SslStream<mio::net::TcpStream>, policy: &Policy) -> (Report, u32) {
    use closenotify::{Progress, Ready, Shutdown};
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(
            ours.get_mut(),
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .unwrap();
    let mut events = Events::with_capacity(8);
    let mut sd = Shutdown::new(&mut *ours, policy);
    let mut ready = Ready::NONE;
    let mut wakeups = 0;
    loop {
        match sd.poll(Instant::now(), ready) {
            Progress::Done(report) => return (report, wakeups),
            Progress::Wait(wait) => {
                poll.poll(&mut events, Some(wait.timeout(Instant::now())))
                    .unwrap();
                wakeups += 1;
                ready = events
                    .iter()
                    .fold(Ready::NONE, |acc, e| acc | Ready::from(e));
            }
        }
    }
}
