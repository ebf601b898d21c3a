//! Connections that cannot carry a close_notify, and bad input: quiet outcomes,
//! clear errors, no OpenSSL error left behind, no forbidden call, no leaked fd.

mod util;

use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use closenotify::{shutdown_blocking, Error, Outcome, RawConnection};
use openssl::ssl::{ErrorCode, Ssl, SslStream};
use util::*;

/// Record types of every TLS record in `bytes` (they are plaintext headers).
fn record_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        types.push(rest[0]);
        rest = &rest[(5 + len).min(rest.len())..];
    }
    types
}

/// Everything the other side sent, until EOF or an error (an RST when it closed
/// with input unread).
fn read_all(mut tcp: TcpStream) -> Vec<u8> {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = tcp.read(&mut buf) {
        all.extend_from_slice(&buf[..n]);
    }
    all
}

#[test]
fn before_the_handshake_quiet_and_nothing_sent() {
    let ctx = Contexts::new(Tls::V13);
    let (client, server) = tcp_pair();
    let mut ours = SslStream::new(Ssl::new(&ctx.client).unwrap(), client).unwrap();
    let r = shutdown_blocking(&mut ours, &policy(200, 200));
    assert_outcome(&r, Outcome::Quiet, "no handshake");
    assert_eq!(r.ssl_calls, 0, "SSL_shutdown called before the handshake");
    assert!(!r.close_notify_sent && r.tls_version.is_none());
    assert!(error_queue_empty());
    drop(ours);
    assert!(
        read_all(server).is_empty(),
        "bytes sent by a quiet shutdown"
    );
}

#[test]
fn mid_handshake_quiet_and_no_alert_sent() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let (client, server) = tcp_pair();
        client.set_nonblocking(true).unwrap();
        let mut ours = SslStream::new(Ssl::new(&ctx.client).unwrap(), client).unwrap();
        // The server never answers the ClientHello.
        let err = ours.connect().unwrap_err();
        assert_eq!(err.code(), ErrorCode::WANT_READ);
        let r = shutdown_blocking(&mut ours, &policy(200, 200));
        assert_outcome(&r, Outcome::Quiet, "mid-handshake");
        assert_eq!(r.ssl_calls, 0);
        assert!(error_queue_empty());
        drop(ours);
        let types = record_types(&read_all(server));
        assert_eq!(types, vec![0x16], "{tls:?}: expected only the ClientHello");
    }
}

#[test]
fn non_tls_peer_quiet_after_the_failed_handshake() {
    let ctx = Contexts::new(Tls::V13);
    let (client, mut server) = tcp_pair();
    let http = std::thread::spawn(move || {
        // The whole ClientHello record (about 300 bytes up to OpenSSL 3.4, 1.5 KB
        // with 3.5's post-quantum key shares), so that only our answer follows.
        let mut header = [0u8; 5];
        server.read_exact(&mut header).unwrap();
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        server.read_exact(&mut vec![0u8; len]).unwrap();
        let _ = std::io::Write::write_all(&mut server, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        read_all(server)
    });
    let mut ours = SslStream::new(Ssl::new(&ctx.client).unwrap(), client).unwrap();
    let err = ours.connect().unwrap_err();
    assert_eq!(err.code(), ErrorCode::SSL);
    let r = shutdown_blocking(&mut ours, &policy(200, 200));
    assert_outcome(&r, Outcome::Quiet, "non-TLS peer");
    assert_eq!(r.ssl_calls, 0);
    assert!(error_queue_empty());
    drop(ours);
    // Our side sent its ClientHello and (as OpenSSL does on a failed handshake) an
    // alert; no close_notify or anything else from the shutdown.
    let types = record_types(&http.join().unwrap());
    assert!(types.iter().all(|&t| t == 0x15), "{types:?}");
}

#[test]
fn after_a_fatal_error_quiet_and_nothing_more_sent() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, mut peer } = ctx.pair(role);
        if tls == Tls::V13 && role == Role::Client {
            read_tickets(&mut ours);
        }
        write_raw(&mut peer, b"garbage, not a TLS record\n");
        let err = ours.ssl_read(&mut [0u8; 64]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::SSL, "{tls:?} {role:?}");
        // Everything our side sent so far (its fatal alert) has arrived.
        let mut tcp = peer.get_ref().try_clone().unwrap();
        tcp.set_read_timeout(Some(ms(100))).unwrap();
        let mut before = Vec::new();
        let _ = tcp.read_to_end(&mut before);
        assert!(!before.is_empty(), "our fatal alert");

        let r = shutdown_blocking(&mut ours, &policy(200, 200));
        let what = format!("{tls:?} as {role:?}");
        assert_outcome(&r, Outcome::Quiet, &what);
        assert_eq!(r.ssl_calls, 0, "{what}");
        assert!(error_queue_empty(), "{what}");
        drop(ours);
        // Our side closes with the rest of the garbage unread, so the end may be an
        // RST; what matters is that no byte came before it.
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let sent_after = tcp.read(&mut buf).unwrap_or(0);
        assert_eq!(sent_after, 0, "{what}: bytes sent after the fatal error");
    }
}

#[test]
fn raw_connection_rejects_bad_arguments_with_clear_errors() {
    let ctx = Contexts::new(Tls::V13);
    let ssl = Ssl::new(&ctx.client).unwrap();
    let ptr = foreign_types::ForeignType::as_ptr(&ssl);

    // SAFETY (all calls below): `ptr` is a valid SSL; the fds are open or invalid
    // on purpose, which `new` must detect.
    let err = unsafe { RawConnection::new(std::ptr::null_mut(), 0) }.unwrap_err();
    assert_eq!(err, Error::InvalidArgument("SSL pointer is null".into()));

    let err = unsafe { RawConnection::new(ptr, -1) }.unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");

    let file = std::fs::File::open("/dev/null").unwrap();
    let err = unsafe { RawConnection::new(ptr, file.as_raw_fd()) }.unwrap_err();
    assert!(err.to_string().contains("not a stream socket"), "{err}");

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = unsafe { RawConnection::new(ptr, udp.as_raw_fd()) }.unwrap_err();
    assert!(err.to_string().contains("not a stream socket"), "{err}");

    // An fd number that is not open (tests allocate the lowest free numbers).
    let err = unsafe { RawConnection::new(ptr, 1000) }.unwrap_err();
    assert!(err.to_string().contains("fd 1000"), "{err}");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn raw_connection_on_an_unconnected_socket_is_quiet() {
    // A TCP socket that never connected, under an SSL that never handshook.
    let ctx = Contexts::new(Tls::V12);
    let ssl = Ssl::new(&ctx.client).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // SAFETY: a fresh SSL; the socket outlives it.
    unsafe {
        sys::SSL_set_fd(foreign_types::ForeignType::as_ptr(&ssl), sock.as_raw_fd());
    }
    // SAFETY: both live until the end of the test.
    let conn =
        unsafe { RawConnection::new(foreign_types::ForeignType::as_ptr(&ssl), sock.as_raw_fd()) }
            .unwrap();
    let r = conn.shutdown_blocking(&policy(100, 100));
    assert_outcome(&r, Outcome::Quiet, "unconnected");
    assert!(error_queue_empty());
}

/// An `SSL*` and an fd that do not belong together are refused before anything
/// happens to either connection: the report would describe the wrong connection
/// (A's peer answered, B's fd was polled) and B would be half-closed.
#[test]
fn raw_connection_refuses_an_ssl_on_another_fd() {
    let ctx = Contexts::new(Tls::V13);
    let (a, a_peer) = RawClient::connect(&ctx, |_| {});
    let (b, b_peer) = RawClient::connect(&ctx, |_| {});
    // SAFETY: both SSLs and sockets live until the end of the test.
    let err = unsafe {
        RawConnection::new(
            foreign_types::ForeignType::as_ptr(&a.ssl),
            b.tcp.as_raw_fd(),
        )
    }
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArgument(_)), "{msg}");
    assert!(
        msg.contains(&format!("reads from fd {}", a.tcp.as_raw_fd()))
            && msg.contains(&format!("not fd {}", b.tcp.as_raw_fd())),
        "{msg}"
    );
    // Neither connection was touched: B's peer sees no EOF, and A still shuts
    // down cleanly on its own fd.
    let b_fd = b_peer.get_ref().as_raw_fd();
    assert!(
        !wait_for(b_fd, libc::POLLIN, ms(100)),
        "B's peer saw something"
    );
    let a_peer = spawn_peer(a_peer, answer);
    let r = a.conn().shutdown_blocking(&policy(500, 500));
    assert_outcome(&r, Outcome::Clean, "A on its own fd");
    drop(a);
    a_peer.join().unwrap();
    drop((b, b_peer));
}

/// Memory BIOs (and BIO pairs): nothing to poll, nothing to half-close.
#[test]
fn raw_connection_refuses_an_ssl_on_memory_bios() {
    let ctx = Contexts::new(Tls::V13);
    let ssl = Ssl::new(&ctx.client).unwrap();
    let ptr = foreign_types::ForeignType::as_ptr(&ssl);
    // SAFETY: two fresh memory BIOs whose references pass to the SSL.
    unsafe {
        let rbio = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        let wbio = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        openssl_sys::SSL_set_bio(ptr, rbio, wbio);
    }
    let (tcp, _other) = tcp_pair();
    // SAFETY: the SSL and the socket live until the end of the test.
    let err = unsafe { RawConnection::new(ptr, tcp.as_raw_fd()) }.unwrap_err();
    assert!(err.to_string().contains("memory BIO"), "{err}");
}

/// tokio-openssl's `SSL*` runs on a BIO that calls back into tokio-openssl and
/// needs its async context: driving it from outside panicked (debug) or crashed
/// (release). It is refused, and says what to use instead.
#[test]
fn raw_connection_refuses_tokio_openssls_ssl() {
    let ctx = Contexts::new(Tls::V13);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_ctx = ctx.server.clone();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let tls = Ssl::new(&server_ctx).unwrap().accept(tcp).unwrap();
        answer(tls);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let fd = tcp.as_raw_fd();
        let mut stream =
            tokio_openssl::SslStream::new(Ssl::new(&ctx.client).unwrap(), tcp).unwrap();
        std::pin::Pin::new(&mut stream).connect().await.unwrap();
        let ptr = foreign_types::ForeignTypeRef::as_ptr(stream.ssl());
        // SAFETY: the stream (and its SSL and socket) outlive the call.
        let err = unsafe { RawConnection::new(ptr, fd) }.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("custom BIO") && msg.contains("tokio-openssl"),
            "{msg}"
        );
        // The stream still works: tokio-openssl's own shutdown sends close_notify.
        tokio::io::AsyncWriteExt::shutdown(&mut stream)
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest)
            .await
            .unwrap();
    });
    server.join().unwrap();
}

/// One SSL*, one shutdown: a second `RawConnection` on an `SSL*` whose first is
/// alive is refused, without touching the socket (whose mode the first may
/// have to restore); once the first is gone, a second is fine.
#[test]
fn a_second_raw_connection_on_one_ssl_is_refused_while_the_first_lives() {
    let ctx = Contexts::new(Tls::V13);
    let (raw, peer) = RawClient::connect(&ctx, |_| {});
    let fd = raw.tcp.as_raw_fd();
    let first = raw.conn();
    let flags = fd_flags(fd);
    // SAFETY: the SSL and its socket live as long as `raw`.
    let ptr = foreign_types::ForeignType::as_ptr(&raw.ssl);
    let err = unsafe { RawConnection::new(ptr, fd) }.unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert!(err.to_string().contains("another shutdown"), "{err}");
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::ResourceBusy
    );
    assert_eq!(fd_flags(fd), flags, "the socket was touched");
    // A shutdown of the first, dropped half way, then a second object.
    let mut sd = closenotify::Shutdown::new(first, &policy(200, 200));
    let _ = sd.poll(std::time::Instant::now(), closenotify::Ready::NONE);
    drop(sd);
    let second = raw.conn();
    drop(second);
    drop(peer);
}

fn fd_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL takes no pointer.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}
