//! TLS as a phase of a longer TCP connection: plaintext, STARTTLS, TLS, a clean
//! STOPTLS, plaintext again, byte-exact, against Python's `ssl` module (its
//! `unwrap()` is an independent STOPTLS) in both roles, both initiators, TLS 1.2
//! and 1.3, including the peer whose plaintext follows its close_notify in the
//! same write and the TLS 1.3 peer whose session tickets arrive late. And the
//! blocking read of the rest of the answer (`shutdown_blocking_read`).

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use closenotify::{
    into_transport, shutdown_blocking, shutdown_blocking_read, Initiator, Mode, Outcome, Policy,
    Report,
};
use openssl::ssl::{Ssl, SslStream};
use util::process::{Pems, Proc};
use util::*;

const AFTER_PY: &[u8] = b"plain from python\n";

/// `read_until_close_notify` for any stream type; errors end it too.
fn read_until_close_notify_any<S: Read + Write>(s: &mut SslStream<S>) {
    let mut buf = [0u8; 1024];
    while let Ok(_n) = s.ssl_read(&mut buf) {}
}
const AFTER_TEST: &[u8] = b"plain from test\n";

/// Who ends TLS, as stoptls.py spells it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    /// Python's `unwrap()` first; our application reads its close_notify, then
    /// the STOPTLS shutdown answers.
    Python,
    /// Our STOPTLS shutdown first; Python answers with `unwrap()`.
    Test,
    /// Ours first; Python's close_notify and first plaintext bytes in one write.
    TestSameWrite,
}

impl Close {
    const ALL: [Close; 3] = [Close::Python, Close::Test, Close::TestSameWrite];
    fn arg(self) -> &'static str {
        match self {
            Close::Python => "python",
            Close::Test => "test",
            Close::TestSameWrite => "test-same-write",
        }
    }
}

fn python(role: &str, tls: Tls, close: Close, data: bool, port: Option<u16>, pems: &Pems) -> Proc {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/stoptls.py");
    let version = match tls {
        Tls::V12 => "1.2",
        Tls::V13 => "1.3",
    };
    let port = port.map(|p| p.to_string());
    let mut args = vec![
        script,
        role,
        "--tls",
        version,
        "--cert",
        pems.cert(),
        "--key",
        pems.key(),
        "--close",
        close.arg(),
    ];
    if let Some(p) = &port {
        args.extend(["--port", p]);
    }
    if !data {
        args.push("--no-data");
    }
    Proc::spawn(util::process::python(), &args)
}

/// Our side of the lifecycle on `tcp`; returns the STOPTLS report.
fn our_side(ctx: &Contexts, role: Role, mut tcp: TcpStream, close: Close, data: bool) -> Report {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match role {
        Role::Client => {
            expect_line(&mut tcp, b"220 ready\r\n", "the greeting");
            tcp.write_all(b"STARTTLS\r\n").unwrap();
            expect_line(&mut tcp, b"220 go\r\n", "the answer to STARTTLS");
        }
        Role::Server => {
            tcp.write_all(b"220 ready\r\n").unwrap();
            expect_line(&mut tcp, b"STARTTLS\r\n", "the STARTTLS command");
            tcp.write_all(b"220 go\r\n").unwrap();
        }
    }
    let mut tls = match role {
        Role::Client => Ssl::new(&ctx.client).unwrap().connect(tcp).unwrap(),
        Role::Server => Ssl::new(&ctx.server).unwrap().accept(tcp).unwrap(),
    };
    if data {
        let mut five = [0u8; 5];
        match role {
            Role::Client => {
                tls.write_all(b"ping\n").unwrap();
                tls.read_exact(&mut five).unwrap();
                assert_eq!(&five, b"pong\n");
            }
            Role::Server => {
                tls.read_exact(&mut five).unwrap();
                assert_eq!(&five, b"ping\n");
                tls.write_all(b"pong\n").unwrap();
            }
        }
    }
    if close == Close::Python {
        assert!(read_until_close_notify(&mut tls).unwrap().is_empty());
    }
    let r = shutdown_blocking(&mut tls, &stop_tls_policy());
    let mut plain = into_transport(tls).unwrap_or_else(|_| panic!("not reusable: {r:?}"));
    plain.write_all(AFTER_TEST).unwrap();
    let mut got = vec![0u8; AFTER_PY.len()];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(AFTER_PY)
    );
    r
}

#[track_caller]
fn assert_stopped(r: &Report, close: Close, what: &str) {
    assert_outcome(r, Outcome::Clean, what);
    assert!(r.transport_reusable, "{what}: {r:?}");
    assert!(!r.half_closed, "{what}: half-closed");
    assert!(r.close_notify_sent && r.close_notify_received, "{what}");
    let initiator = match close {
        Close::Python => Initiator::Peer,
        Close::Test | Close::TestSameWrite => Initiator::Local,
    };
    assert_eq!(r.initiator, initiator, "{what}");
}

fn cases() -> Vec<(Tls, Close, bool)> {
    let mut cases: Vec<_> = BOTH
        .iter()
        .flat_map(|&t| Close::ALL.iter().map(move |&c| (t, c, true)))
        .collect();
    // TLS 1.3 with no data: a client's session tickets arrive while it awaits the
    // peer's close_notify.
    cases.push((Tls::V13, Close::Test, false));
    cases.push((Tls::V13, Close::TestSameWrite, false));
    cases
}

#[test]
fn python_server_unwrap_interop() {
    for (tls, close, data) in cases() {
        let what = format!("{tls:?}, close {close:?}, data {data}");
        let pems = Pems::write();
        let mut py = python("server", tls, close, data, None, &pems);
        let port: u16 = py
            .wait_line("port", Duration::from_secs(5), |_| true)
            .trim()
            .parse()
            .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let r = our_side(&Contexts::new(tls), Role::Client, tcp, close, data);
        assert_stopped(&r, close, &what);
        let lines = py.expect_success(Duration::from_secs(10));
        assert_eq!(lines.last().map(String::as_str), Some("ok"), "{what}");
    }
}

#[test]
fn python_client_unwrap_interop() {
    for (tls, close, data) in cases() {
        let what = format!("{tls:?}, close {close:?}, data {data}");
        let pems = Pems::write();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut py = python("client", tls, close, data, Some(port), &pems);
        let (tcp, _) = listener.accept().unwrap();
        let r = our_side(&Contexts::new(tls), Role::Server, tcp, close, data);
        assert_stopped(&r, close, &what);
        let lines = py.expect_success(Duration::from_secs(10));
        assert_eq!(lines.last().map(String::as_str), Some("ok"), "{what}");
    }
}

/// A TLS 1.3 server that issues a session ticket after our close_notify, right
/// before its own: the ticket is processed, the close is clean, and the
/// plaintext after it is intact.
#[cfg(ossl300)]
#[test]
fn late_tickets_from_an_openssl_server_stop_tls_clean() {
    let ctx = Contexts::new(Tls::V13);
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    read_tickets(&mut ours);
    let peer = spawn_peer(peer, |mut p| {
        read_until_close_notify(&mut p).expect("our close_notify");
        let ssl = foreign_types::ForeignTypeRef::as_ptr(p.ssl());
        // SAFETY: the peer owns `p`; queue a ticket and write it.
        unsafe {
            assert_eq!(util::sys::SSL_new_session_ticket(ssl), 1);
            assert_eq!(openssl_sys::SSL_do_handshake(ssl), 1);
        }
        p.shutdown().unwrap();
        p.get_mut().write_all(AFTER_PY).unwrap();
        let mut got = vec![0u8; AFTER_TEST.len()];
        p.get_mut().read_exact(&mut got).unwrap();
        got
    });
    let r = shutdown_blocking(&mut ours, &stop_tls_policy());
    assert_stopped(&r, Close::Test, "late ticket");
    assert!(r.session_resumable);
    let mut plain = into_transport(ours).expect("reusable");
    plain.write_all(AFTER_TEST).unwrap();
    let mut got = vec![0u8; AFTER_PY.len()];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(got, AFTER_PY);
    assert_eq!(peer.join().unwrap(), AFTER_TEST);
}

/// A connected pair whose peer writes through a `Corkable`: our client side has
/// read-ahead on, as an application may have set it.
fn read_ahead_pair() -> (
    SslStream<TcpStream>,
    std::thread::JoinHandle<SslStream<Corkable>>,
) {
    let ctx = Contexts::with(Tls::V13, |_| {}, |c| c.set_read_ahead(true));
    let (client, server) = tcp_pair();
    let server_ctx = ctx.server.clone();
    let peer = std::thread::spawn(move || {
        let mut p = Ssl::new(&server_ctx)
            .unwrap()
            .accept(Corkable::new(server))
            .unwrap();
        p.write_all(b"hello").unwrap(); // the tickets go out before this
        p
    });
    let mut ours = Ssl::new(&ctx.client).unwrap().connect(client).unwrap();
    let mut hello = [0u8; 5];
    ours.read_exact(&mut hello).unwrap();
    (ours, peer)
}

/// Read-ahead that the application left on: it is off for the STOPTLS shutdown,
/// so the plaintext that follows the peer's close_notify in the same segment
/// stays in the socket, and read-ahead is back on afterwards.
#[test]
fn read_ahead_is_off_for_the_shutdown() {
    let (mut ours, peer) = read_ahead_pair();
    let peer = peer.join().unwrap();
    let peer = std::thread::spawn(move || {
        let mut p = peer;
        read_until_close_notify_any(&mut p);
        // Its close_notify and the plaintext in one write.
        p.get_mut().cork();
        let _ = p.shutdown();
        p.get_mut().uncork_with(AFTER_PY);
    });
    let r = shutdown_blocking(&mut ours, &stop_tls_policy());
    assert_stopped(&r, Close::Test, "read-ahead on");
    // SAFETY: a valid SSL; SSL_get_read_ahead reads a flag.
    let ahead =
        unsafe { util::sys::SSL_get_read_ahead(foreign_types::ForeignTypeRef::as_ptr(ours.ssl())) };
    assert_eq!(ahead, 1, "read-ahead not restored");
    let mut plain = into_transport(ours).expect("reusable");
    let mut got = vec![0u8; AFTER_PY.len()];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(got, AFTER_PY);
    peer.join().unwrap();
}

/// The application read with read-ahead on, and OpenSSL pulled the plaintext
/// after the peer's close_notify into its buffer before the shutdown began: those
/// bytes cannot be handed back, and the report says the transport is not
/// reusable instead of letting the application lose them silently.
#[test]
fn plaintext_swallowed_before_the_shutdown_is_reported() {
    let (mut ours, peer) = read_ahead_pair();
    let peer = peer.join().unwrap();
    let peer = std::thread::spawn(move || {
        let mut p = peer;
        // The peer's close_notify and plaintext in one segment...
        p.get_mut().cork();
        let _ = p.shutdown();
        p.get_mut().uncork_with(AFTER_PY);
        read_until_close_notify_any(&mut p);
    });
    // ...and the application's read, with read-ahead on, takes both.
    assert!(read_until_close_notify(&mut ours).unwrap().is_empty());
    let r = shutdown_blocking(&mut ours, &stop_tls_policy());
    assert_outcome(&r, Outcome::Clean, "swallowed");
    assert!(!r.transport_reusable, "{r:?}");
    assert_eq!(
        r.detail,
        Some("read-ahead had buffered bytes before the shutdown"),
        "{r:?}"
    );
    let err = into_transport(ours).unwrap_err();
    assert!(err.reason().contains("read-ahead"), "{err}");
    peer.join().unwrap();
}

/// Only a successful STOPTLS hands the transport back.
#[test]
fn into_transport_refuses_anything_but_a_successful_stop_tls_policy() {
    let ctx = Contexts::new(Tls::V12);
    // No shutdown yet.
    let Pair { ours, peer } = ctx.pair(Role::Client);
    let err = into_transport(ours).unwrap_err();
    assert_eq!(err.reason(), "no shutdown has finished on this stream");
    drop((err.into_stream(), peer));
    // A bidirectional close.
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let peer = spawn_peer(peer, answer);
    let r = shutdown_blocking(&mut ours, &policy(500, 500));
    assert_outcome(&r, Outcome::Clean, "bidirectional");
    assert!(!r.transport_reusable);
    let err = into_transport(ours).unwrap_err();
    assert!(err.reason().contains("not a STOPTLS"), "{err}");
    peer.join().unwrap();
    // A STOPTLS the peer never answers.
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let (release, held) = mpsc::channel::<()>();
    let peer = spawn_peer(peer, move |_p| {
        let _ = held.recv();
    });
    let p = stop_tls_policy()
        .to_builder()
        .peer_timeout(ms(200))
        .build()
        .unwrap();
    let r = shutdown_blocking(&mut ours, &p);
    assert_outcome(&r, Outcome::TimedOut, "silent");
    assert!(!r.transport_reusable && !r.half_closed);
    let err = into_transport(ours).unwrap_err();
    assert!(
        err.reason().contains("did not end clean: timed_out"),
        "{err}"
    );
    release.send(()).unwrap();
    peer.join().unwrap();
}

/// The whole answer of a peer that keeps writing after our close_notify, into a
/// `Write`, without an event loop.
#[test]
fn shutdown_blocking_read_delivers_the_rest_of_the_answer() {
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let answer_body = body.clone();
        let peer = spawn_peer(peer, move |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
            p.write_all(&answer_body).unwrap();
            p.shutdown().unwrap();
            wait_eof(p.get_mut());
        });
        let mut out = Vec::new();
        let r = shutdown_blocking_read(&mut ours, &policy(1000, 2000), &mut out, 1 << 20).unwrap();
        assert_outcome(&r, Outcome::Clean, &what);
        assert!(r.half_closed, "{what}");
        assert_eq!(r.discarded_bytes, 0, "{what}");
        assert_eq!(out.len(), body.len(), "{what}");
        assert!(out == body, "{what}: bytes differ");
        drop(ours);
        peer.join().unwrap();
    }
}

#[test]
fn shutdown_blocking_read_stops_at_its_limit() {
    let ctx = Contexts::new(Tls::V13);
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let peer = spawn_peer(peer, |mut p| {
        read_until_close_notify(&mut p).expect("our close_notify");
        let _ = p.write_all(&[9u8; 200_000]);
        let _ = p.shutdown();
    });
    let mut out = Vec::new();
    let r = shutdown_blocking_read(&mut ours, &policy(1000, 2000), &mut out, 50_000).unwrap();
    assert_outcome(&r, Outcome::DrainLimit, "limit");
    assert_eq!(out.len(), 50_000, "exactly the limit is written");
    assert_eq!(r.delivered_bytes, 50_000, "and reported as delivered");
    assert!(!r.session_resumable);
    drop(ours);
    peer.join().unwrap();
}

#[test]
fn shutdown_blocking_read_refuses_modes_that_do_not_wait_and_stops_on_a_failed_write() {
    let ctx = Contexts::new(Tls::V12);
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let p = Policy::builder().mode(Mode::SendOnly).build().unwrap();
    let err = shutdown_blocking_read(&mut ours, &p, &mut Vec::new(), 10).unwrap_err();
    assert!(
        matches!(&err, closenotify::ReadError::Invalid(closenotify::Error::InvalidPolicy(m)) if m.contains("send_only")),
        "{err}"
    );
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::InvalidInput
    );
    // Nothing was sent: the shutdown can still run.
    let peer = spawn_peer(peer, |mut p| {
        read_until_close_notify(&mut p).expect("our close_notify");
        p.write_all(b"answer").unwrap();
        let _ = p.shutdown();
        wait_eof(p.get_mut());
    });
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = shutdown_blocking_read(&mut ours, &policy(500, 500), &mut Full, 100).unwrap_err();
    assert!(
        matches!(&err, closenotify::ReadError::Write(e) if e.to_string() == "disk full"),
        "{err}"
    );
    drop(ours);
    peer.join().unwrap();
}

/// An event loop that owns its `Shutdown` takes the stream back with
/// `into_inner`, then the transport with `into_transport`.
#[test]
fn an_owned_shutdown_gives_the_stream_back_for_the_transport() {
    use closenotify::{Progress, Ready, Shutdown};
    let ctx = Contexts::new(Tls::V12);
    let Pair { ours, peer } = ctx.pair(Role::Client);
    let peer = spawn_peer(peer, |mut p| {
        read_until_close_notify(&mut p).expect("our close_notify");
        p.shutdown().unwrap();
        p.get_mut().write_all(AFTER_PY).unwrap();
    });
    let fd = std::os::fd::AsRawFd::as_raw_fd(ours.get_ref());
    let mut sd = Shutdown::new(ours, &stop_tls_policy());
    let mut ready = Ready::NONE;
    let r = loop {
        match sd.poll(std::time::Instant::now(), ready) {
            Progress::Done(r) => break r,
            Progress::Wait(w) => {
                ready = if wait_for(fd, libc::POLLIN, w.timeout(std::time::Instant::now())) {
                    Ready::READABLE
                } else {
                    Ready::NONE
                };
            }
        }
    };
    assert_stopped(&r, Close::Test, "owned");
    let mut plain = into_transport(sd.into_inner()).expect("reusable");
    let mut got = vec![0u8; AFTER_PY.len()];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(got, AFTER_PY);
    peer.join().unwrap();
}
