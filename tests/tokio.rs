//! `closenotify::tokio` against the same real OpenSSL peers as the blocking API
//! (`Behaviour::ALL`, examples/common): every behaviour in TLS 1.2 and 1.3, with
//! our side as client and as server, on a current-thread and a multi-thread
//! runtime. Each report is checked against what tests/outcomes.rs asserts for the
//! blocking call, and against `shutdown_blocking`'s own report for the same peer
//! behaviour. Also: the modes, the drain limit, the linger stage, the half-close
//! reader, cancellation, the policies the adapter refuses, a stream that is not a
//! socket, the inner stream's half-close, TLS 1.3 KeyUpdates.
#![cfg(feature = "tokio")]

mod util;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use closenotify::tokio::{shutdown, HalfClose};
use closenotify::{Error, Initiator, Mode, Outcome, Policy, ResetOnTimeout, Stage};
use foreign_types::ForeignTypeRef;
use openssl::ssl::{ErrorCode, SslOptions, SslRef, SslStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use util::*;

#[test]
fn send_only_half_closes_without_a_round_trip() {
    let p = Policy::builder().mode(Mode::SendOnly).build().unwrap();
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let (ctx, p) = (Contexts::new(tls), p.clone());
        let (r, peer) = on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let (go, wait) = mpsc::channel::<()>();
            let peer = spawn_peer(peer, move |mut p| {
                wait.recv().unwrap();
                let got = read_until_close_notify(&mut p).map(|_| ());
                (got.is_ok(), wait_eof(p.get_mut()))
            });
            let r = shutdown(&mut ours, &p).await.unwrap();
            // Half-closed: the peer gets close_notify and EOF while we hold the socket.
            go.send(()).unwrap();
            let seen = tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            drop(ours);
            (r, seen)
        });
        assert_outcome(&r, Outcome::SentOnly, &what);
        assert_eq!(r.stage, Stage::HalfClose, "{what}");
        assert!(
            r.close_notify_sent && r.half_closed && !r.close_notify_received,
            "{what}"
        );
        assert_eq!(r.ssl_calls, 1, "{what}");
        // The default policy: 3 s to wait, had it waited.
        assert!(r.elapsed < ms(1000), "{what}: waited {:?}", r.elapsed);
        let tickets_unread = tls == Tls::V13 && role == Role::Client;
        assert_eq!(r.session_resumable, !tickets_unread, "{what}");
        assert_eq!(peer, (true, None), "{what}: close_notify, then EOF");
    }
}

#[test]
fn quiet_sends_nothing_and_accepts_any_half_close() {
    for half_close in [true, false] {
        let p = Policy::builder()
            .mode(Mode::Quiet)
            .half_close(half_close)
            .build()
            .unwrap();
        for (tls, role, flavor) in cases() {
            let what = format!("{tls:?} as {role:?} on {flavor:?}");
            let (ctx, p) = (Contexts::new(tls), p.clone());
            let (r, peer) = on_runtime(flavor, async move {
                let (mut ours, peer) = ctx.pair_tokio(role).await;
                let peer = spawn_peer(peer, |mut p| {
                    let mut buf = [0u8; 64];
                    p.ssl_read(&mut buf).map(|_| ()).map_err(|e| e.code())
                });
                let r = shutdown(&mut ours, &p).await.unwrap();
                drop(ours);
                (r, peer)
            });
            assert_outcome(&r, Outcome::Quiet, &what);
            assert!(!r.close_notify_sent && !r.half_closed, "{what}");
            assert_eq!(r.ssl_calls, 0, "{what}");
            assert_eq!(
                r.session_resumable,
                dropped_session_resumable(role),
                "{what}"
            );
            let seen = peer.join().unwrap();
            assert!(
                matches!(seen, Err(ErrorCode::SYSCALL) | Err(ErrorCode::SSL)),
                "{what}: {seen:?}"
            );
        }
    }
}

#[test]
fn a_peer_that_reset_before_we_start_reset_in_flush() {
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let ctx = Contexts::new(tls);
        let r = on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            reset_on_drop(peer.get_ref());
            drop(peer);
            let fd = ours.get_ref().as_raw_fd();
            assert!(wait_for(fd, libc::POLLHUP | libc::POLLERR, ms(5000)));
            shutdown(&mut ours, &policy(500, 500)).await.unwrap()
        });
        // SSL_shutdown's own write fails: not taken for the inner half-close's error.
        assert_outcome(&r, Outcome::Reset, &what);
        assert!(
            matches!(r.os_error, Some(libc::ECONNRESET) | Some(libc::EPIPE)),
            "{what}: {:?}",
            r.os_error
        );
        assert_eq!(r.stage, Stage::Flush, "{what}");
        assert!(!r.close_notify_sent && !r.half_closed, "{what}");
    }
}

/// OpenSSL 3.0+ only: 1.1.1 has no `SSL_OP_IGNORE_UNEXPECTED_EOF`.
#[cfg(ossl300)]
#[test]
fn ignore_unexpected_eof_still_reports_truncated() {
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let ctx = Contexts::with(
            tls,
            |s| {
                s.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
            },
            |c| {
                c.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
            },
        );
        let (r, restored) = on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let peer = spawn_peer(peer, |mut p| {
                read_until_close_notify(&mut p).expect("our close_notify");
            });
            let r = shutdown(&mut ours, &policy(500, 1000)).await.unwrap();
            let restored = options(ours.ssl()) & SslOptions::IGNORE_UNEXPECTED_EOF.bits() != 0;
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            (r, restored)
        });
        assert_outcome(&r, Outcome::Truncated, &what);
        assert!(restored, "{what}: option not restored");
    }
}

#[test]
fn a_second_shutdown_returns_the_same_report() {
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let ctx = Contexts::new(tls);
        let (first, second, blocking) = on_runtime(flavor, async move {
            let (ours, peer) = ctx.pair_tokio(role).await;
            let mut ours = ours;
            let peer = spawn_peer(peer, answer);
            let first = shutdown(&mut ours, &policy(1000, 2000)).await.unwrap();
            let second = shutdown(&mut ours, &Policy::default()).await.unwrap();
            let mut reader = HalfClose::new(&mut ours, &Policy::default()).unwrap();
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).await.unwrap();
            let blocking = reader.report();
            drop(reader);
            drop(ours);
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            (first, second, blocking)
        });
        assert_outcome(&first, Outcome::Clean, &what);
        assert_eq!(first, second, "{what}");
        assert_eq!(Some(first), blocking, "{what}: the half-close reader too");
    }
}

// --- cancellation ---------------------------------------------------------------------------

/// `SSL_OP_IGNORE_UNEXPECTED_EOF` from OpenSSL 3.0 on; nothing on 1.1.1, which
/// has no such option.
fn ignore_eof() -> SslOptions {
    #[cfg(ossl300)]
    return SslOptions::IGNORE_UNEXPECTED_EOF;
    #[cfg(not(ossl300))]
    return SslOptions::empty();
}

fn options(ssl: &SslRef) -> u64 {
    // SAFETY: a valid SSL; SSL_get_options only reads a field.
    unsafe { sys::SSL_get_options(ssl.as_ptr()) }
}

/// The write BIO is the stream's own again (rust-openssl uses one BIO for both).
fn write_bio_restored(ssl: &SslRef) -> bool {
    // SAFETY: a valid SSL; these only read its BIO pointers.
    unsafe { sys::SSL_get_wbio(ssl.as_ptr()) == openssl_sys::SSL_get_rbio(ssl.as_ptr()) }
}

#[test]
fn a_future_never_polled_does_nothing_and_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let rt = runtime(Flavor::CurrentThread);
    rt.block_on(async {
        let ctx = Contexts::new(Tls::V13);
        let (mut ours, peer) = ctx.pair_tokio(Role::Client).await;
        let p = Policy::default();
        let future = shutdown(&mut ours, &p);
        assert_send(&future);
        drop(future);
        assert_eq!(shutdown_flags(ours.ssl()), 0);
        let closing = HalfClose::new(&mut ours, &p).unwrap();
        assert_send(&closing);
        assert!(closing.report().is_none());
        assert!(format!("{closing:?}").starts_with("HalfClose"));
        drop(closing);
        assert_eq!(shutdown_flags(ours.ssl()), 0);
        drop(peer);
    });
}

#[test]
fn cancelled_while_awaiting_the_peer_then_resumed_clean() {
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let ctx = Contexts::with(
            tls,
            |s| {
                s.set_options(ignore_eof());
            },
            |c| {
                c.set_options(ignore_eof());
            },
        );
        on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let (got, saw) = mpsc::channel();
            let (go, wait) = mpsc::channel::<()>();
            let peer = spawn_peer(peer, move |mut p| {
                read_until_close_notify(&mut p).expect("our close_notify");
                // Our FIN follows it.
                p.get_ref().set_read_timeout(Some(ms(5000))).unwrap();
                got.send(p.get_ref().peek(&mut [0u8; 1]).unwrap()).unwrap();
                wait.recv().unwrap();
                p.shutdown().unwrap();
                wait_eof(p.get_mut())
            });
            let p = policy(1000, 2000);
            let cancelled = tokio::time::timeout(ms(100), shutdown(&mut ours, &p)).await;
            assert!(cancelled.is_err(), "{what}: not cancelled");
            // The documented state: close_notify sent and the write side shut, the
            // option and the write BIO restored, nothing received.
            let flags = shutdown_flags(ours.ssl());
            assert_eq!(flags, openssl_sys::SSL_SENT_SHUTDOWN, "{what}");
            assert!(write_bio_restored(ours.ssl()), "{what}");
            assert_eq!(
                options(ours.ssl()) & ignore_eof().bits(),
                ignore_eof().bits(),
                "{what}: option not restored"
            );
            assert!(!is_blocking(ours.get_ref().as_raw_fd()), "{what}");
            let peeked = tokio::task::spawn_blocking(move || saw.recv().unwrap())
                .await
                .unwrap();
            assert_eq!(peeked, 0, "{what}: the peer saw our FIN");

            // Resumed: the peer answers now.
            go.send(()).unwrap();
            let r = shutdown(&mut ours, &p).await.unwrap();
            assert_outcome(&r, Outcome::Clean, &what);
            assert_eq!(r.initiator, Initiator::Local, "{what}");
            assert!(
                r.close_notify_sent && r.close_notify_received && r.half_closed,
                "{what}"
            );
            assert!(r.session_resumable, "{what}");
            assert!(write_bio_restored(ours.ssl()), "{what}");
            drop(ours);
            let seen = tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            assert_eq!(seen, None, "{what}: the peer saw a reset");
        });
    }
}

#[test]
fn cancelled_in_flush_then_resumed_only_flushes() {
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let rt = runtime(Flavor::CurrentThread);
        rt.block_on(async {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let (release, held) = mpsc::channel();
            let peer = Behaviour::NotReading.spawn_peer(peer, held);
            play_our_part_tokio(Behaviour::NotReading, &mut ours).await;
            let p = policy(150, 1000);
            let cancelled = tokio::time::timeout(ms(50), shutdown(&mut ours, &p)).await;
            assert!(cancelled.is_err(), "{what}");
            // Queued, not flushed: SSL_shutdown has set the flag.
            assert_eq!(shutdown_flags(ours.ssl()), openssl_sys::SSL_SENT_SHUTDOWN);
            assert!(write_bio_restored(ours.ssl()), "{what}");
            let r = shutdown(&mut ours, &p).await.unwrap();
            assert_outcome(&r, Outcome::TimedOut, &what);
            assert_eq!(r.stage, Stage::Flush, "{what}");
            assert_eq!(r.ssl_calls, 1, "{what}: only the flush was retried");
            assert!(!r.close_notify_sent && !r.half_closed, "{what}");
            drop(ours);
            release.send(()).unwrap();
            peer.join().unwrap();
        });
    }
}

// --- policies the adapter refuses, and a stream that is not a socket ----------------------

#[test]
fn half_close_false_is_refused_before_anything_happens() {
    let no_half_close = Policy::builder().half_close(false).build().unwrap();
    for (tls, role, flavor) in cases() {
        let what = format!("{tls:?} as {role:?} on {flavor:?}");
        let (ctx, no_half_close) = (Contexts::new(tls), no_half_close.clone());
        on_runtime(flavor, async move {
            let (mut ours, peer) = ctx.pair_tokio(role).await;
            let peer = spawn_peer(peer, answer);
            let err = shutdown(&mut ours, &no_half_close).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPolicy(m) if m.contains("half_close(false)")),
                "{what}: {err}"
            );
            let err = HalfClose::new(&mut ours, &no_half_close).unwrap_err();
            assert!(matches!(err, Error::InvalidPolicy(_)), "{what}");
            // STOPTLS needs the connection kept: refused the same way.
            let stop_tls = Policy::builder().mode(Mode::StopTls).build().unwrap();
            let err = shutdown(&mut ours, &stop_tls).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPolicy(m) if m.contains("StopTls")),
                "{what}: {err}"
            );
            assert_eq!(shutdown_flags(ours.ssl()), 0, "{what}: touched");
            // The stream is as it was: the usual shutdown still works.
            let r = shutdown(&mut ours, &policy(1000, 2000)).await.unwrap();
            assert_outcome(&r, Outcome::Clean, &what);
            assert_eq!(r.initiator, Initiator::Local, "{what}");
            drop(ours);
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
        });
    }
}

/// Two pipes as one stream: our end on tokio's pipe types, the peer's on files.
struct PipeDuplex {
    rx: tokio::net::unix::pipe::Receiver,
    /// Dropped by `poll_shutdown`: the peer reads EOF.
    tx: Option<tokio::net::unix::pipe::Sender>,
}

#[derive(Debug)]
struct PipeEnd {
    r: File,
    w: File,
}

impl Read for PipeEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for PipeEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

impl AsyncRead for PipeDuplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rx).poll_read(cx, buf)
    }
}

impl AsyncWrite for PipeDuplex {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.tx.as_mut() {
            Some(tx) => Pin::new(tx).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx = None;
        Poll::Ready(Ok(()))
    }
}

impl AsFd for PipeDuplex {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors, owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A handshaken TLS client over pipes (ours, in the current runtime) and its
/// server (the peer, blocking, on its own thread running `peer`).
async fn pipe_pair<T: Send + 'static>(
    ctx: &Contexts,
    peer: impl FnOnce(SslStream<PipeEnd>) -> T + Send + 'static,
) -> (
    tokio_openssl::SslStream<PipeDuplex>,
    std::thread::JoinHandle<T>,
) {
    let (to_us_r, to_us_w) = pipe();
    let (to_peer_r, to_peer_w) = pipe();
    let end = PipeEnd {
        r: File::from(to_peer_r),
        w: File::from(to_us_w),
    };
    let server = ctx.server.clone();
    let peer = std::thread::spawn(move || {
        let ssl = openssl::ssl::Ssl::new(&server).unwrap();
        peer(ssl.accept(end).expect("peer handshake"))
    });
    let duplex = PipeDuplex {
        rx: tokio::net::unix::pipe::Receiver::from_owned_fd(to_us_r).unwrap(),
        tx: Some(tokio::net::unix::pipe::Sender::from_owned_fd(to_peer_w).unwrap()),
    };
    let ssl = openssl::ssl::Ssl::new(&ctx.client).unwrap();
    let mut ours = tokio_openssl::SslStream::new(ssl, duplex).unwrap();
    Pin::new(&mut ours).connect().await.expect("our handshake");
    (ours, peer)
}

/// On a stream that is not a socket, a timeout that should arm the reset cannot:
/// the report says so rather than nothing.
#[test]
fn a_reset_that_cannot_be_armed_is_named_in_the_report() {
    for flavor in FLAVORS {
        let ctx = Contexts::new(Tls::V13);
        let r = on_runtime(flavor, async move {
            let (mut ours, peer) = pipe_pair(&ctx, |mut p| {
                // Reads our close_notify, never answers.
                let _ = p.ssl_read(&mut [0u8; 64]);
                std::thread::sleep(ms(600));
            })
            .await;
            let p = policy(1000, 200)
                .to_builder()
                .reset_on_timeout(ResetOnTimeout::Always)
                .build()
                .unwrap();
            let r = shutdown(&mut ours, &p).await.unwrap();
            drop(ours);
            tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            r
        });
        assert_outcome(&r, Outcome::TimedOut, &format!("{flavor:?}"));
        assert_eq!(r.stage, Stage::AwaitPeer);
        assert_eq!(
            r.detail,
            Some("the reset on timeout could not be armed (SO_LINGER failed)"),
            "{r}"
        );
    }
}

#[test]
fn a_stream_that_is_not_a_socket_refuses_a_linger_timeout_and_closes_clean() {
    for (tls, flavor) in BOTH.iter().flat_map(|&t| FLAVORS.map(|f| (t, f))) {
        let what = format!("{tls:?} on {flavor:?}");
        let ctx = Contexts::new(tls);
        let (r, peer) = on_runtime(flavor, async move {
            let (mut ours, peer) = pipe_pair(&ctx, |mut p| {
                // Reads our close_notify, answers, then reads EOF: our half-close.
                let mut buf = [0u8; 1024];
                let code = loop {
                    match p.ssl_read(&mut buf) {
                        Ok(_) => {}
                        Err(e) => break e.code(),
                    }
                };
                p.shutdown().unwrap();
                let mut rest = Vec::new();
                let eof = p.get_mut().r.read_to_end(&mut rest).is_ok() && rest.is_empty();
                (code, eof)
            })
            .await;
            // The linger stage reads the send queue: it needs a socket.
            let linger = Policy::builder()
                .reset_on_timeout(ResetOnTimeout::Never)
                .linger_timeout(ms(100))
                .build()
                .unwrap();
            let err = shutdown(&mut ours, &linger).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPolicy(m) if m.contains("linger_timeout")),
                "{err}"
            );
            assert_eq!(shutdown_flags(ours.ssl()), 0, "touched");
            // The default policy (a reset on a flush timeout) is accepted.
            let r = shutdown(&mut ours, &policy(1000, 2000)).await.unwrap();
            let peer = tokio::task::spawn_blocking(move || peer.join().unwrap())
                .await
                .unwrap();
            (r, peer)
        });
        assert_outcome(&r, Outcome::Clean, &what);
        assert!(
            r.close_notify_sent && r.close_notify_received && r.half_closed,
            "{what}"
        );
        assert_eq!(peer, (ErrorCode::ZERO_RETURN, true), "{what}");
    }
}

// --- the inner stream's half-close -----------------------------------------------------------

/// How the test stream below answers `poll_shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InnerShutdown {
    /// `Pending` once (waking the task), then the socket's.
    PendingOnce,
    /// An error, without touching the socket.
    Fails,
}

/// A tokio `TcpStream` whose `poll_shutdown` misbehaves as told.
struct Inner {
    tcp: tokio::net::TcpStream,
    shutdown: InnerShutdown,
    shutdown_polls: usize,
}

impl AsyncRead for Inner {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Inner {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_polls += 1;
        match self.shutdown {
            InnerShutdown::PendingOnce if self.shutdown_polls == 1 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            InnerShutdown::PendingOnce => Pin::new(&mut self.tcp).poll_shutdown(cx),
            InnerShutdown::Fails => Poll::Ready(Err(io::Error::other("test: no half-close"))),
        }
    }
}

impl AsFd for Inner {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

#[test]
fn the_inner_half_close_pending_or_failing_is_reported_as_it_went() {
    for inner in [InnerShutdown::PendingOnce, InnerShutdown::Fails] {
        for (tls, role, flavor) in cases() {
            let what = format!("{inner:?} {tls:?} as {role:?} on {flavor:?}");
            let ctx = Contexts::new(tls);
            let (r, polls, peer) = on_runtime(flavor, async move {
                let (mut ours, peer) = ctx
                    .pair_tokio_with(role, |tcp| Inner {
                        tcp,
                        shutdown: inner,
                        shutdown_polls: 0,
                    })
                    .await;
                let (got, saw) = mpsc::channel();
                let peer = spawn_peer(peer, move |mut p| {
                    read_until_close_notify(&mut p).expect("our close_notify");
                    // Our FIN follows close_notify at once, or not at all.
                    let fin_wait = match inner {
                        InnerShutdown::PendingOnce => ms(5000),
                        InnerShutdown::Fails => ms(100),
                    };
                    p.get_ref().set_read_timeout(Some(fin_wait)).unwrap();
                    // 0: our FIN came; an error: it did not.
                    got.send(p.get_ref().peek(&mut [0u8; 1]).ok()).unwrap();
                    p.shutdown().unwrap();
                });
                let started = Instant::now();
                let r = shutdown(&mut ours, &policy(1000, 2000)).await.unwrap();
                assert!(started.elapsed() < ms(1000));
                let polls = ours.get_ref().shutdown_polls;
                drop(ours);
                let fin = tokio::task::spawn_blocking(move || {
                    let fin = saw.recv().unwrap();
                    peer.join().unwrap();
                    fin
                })
                .await
                .unwrap();
                (r, polls, fin)
            });
            assert_outcome(&r, Outcome::Clean, &what);
            assert!(r.close_notify_sent && r.close_notify_received, "{what}");
            match inner {
                InnerShutdown::PendingOnce => {
                    // Polled again without a second SSL_shutdown (which would have
                    // read, and raced the peer's answer).
                    assert_eq!(polls, 2, "{what}");
                    assert!(r.half_closed, "{what}");
                    assert_eq!(peer, Some(0), "{what}: no FIN");
                }
                InnerShutdown::Fails => {
                    assert_eq!(polls, 1, "{what}");
                    assert!(!r.half_closed, "{what}: reported a half-close that failed");
                    assert_ne!(peer, Some(0), "{what}: a FIN came");
                }
            }
        }
    }
}

// --- TLS 1.3 KeyUpdate ---------------------------------------------------------------------

/// While we await the peer's close_notify, KeyUpdate(update_requested) makes
/// OpenSSL answer from inside our read: the sink takes that answer (it would fail
/// on the half-closed socket, or follow our close_notify), also under
/// tokio-openssl, whose stream rust-openssl finds through the read BIO.
#[test]
fn key_updates_while_we_await_the_peer_end_clean() {
    for role in ROLES {
        for updates in [1, 2, 50] {
            for requested in [false, true] {
                for flavor in FLAVORS {
                    let what = format!(
                        "as {role:?}, {updates} updates, requested {requested}, on {flavor:?}"
                    );
                    let ctx = Contexts::new(Tls::V13);
                    let (r, restored, after) = on_runtime(flavor, async move {
                        let (mut ours, peer) = ctx.pair_tokio(role).await;
                        let peer = spawn_peer(peer, updating_peer(updates, requested));
                        let r = shutdown(&mut ours, &policy(1000, 2000)).await.unwrap();
                        let restored = write_bio_restored(ours.ssl());
                        drop(ours);
                        let after = tokio::task::spawn_blocking(move || peer.join().unwrap())
                            .await
                            .unwrap();
                        (r, restored, after)
                    });
                    assert_outcome(&r, Outcome::Clean, &what);
                    assert!(r.session_resumable, "{what}");
                    assert_eq!(r.os_error, None, "{what}");
                    assert!(restored, "{what}: write BIO not restored");
                    assert!(
                        after.is_empty(),
                        "{what}: {} bytes followed our close_notify",
                        after.len()
                    );
                }
            }
        }
    }
}

// --- tokio's clock, paused ----------------------------------------------------------------

/// A current-thread runtime whose clock starts paused (`start_paused(true)`), as
/// tokio users write tests.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Both ends as tokio-openssl streams on this runtime, handshaken.
async fn in_runtime_pair(tls: Tls) -> (TokioStream, TokioStream) {
    let ctx = Contexts::new(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_ctx = ctx.server.clone();
    let peer = tokio::spawn(async move {
        let (server, _) = listener.accept().await.unwrap();
        let ssl = openssl::ssl::Ssl::new(&server_ctx).unwrap();
        let mut peer = tokio_openssl::SslStream::new(ssl, server).unwrap();
        Pin::new(&mut peer)
            .accept()
            .await
            .expect("the peer's handshake");
        peer
    });
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ssl = openssl::ssl::Ssl::new(&ctx.client).unwrap();
    let mut ours = tokio_openssl::SslStream::new(ssl, client).unwrap();
    Pin::new(&mut ours).connect().await.expect("our handshake");
    (ours, peer.await.unwrap())
}

/// With the clock paused and the peer on the same runtime, tokio advances the
/// clock only when every task waits and no I/O is ready: the peer's answer is
/// never mistaken for silence, and the report is the same on every run.
#[test]
fn a_paused_clock_with_the_peer_on_the_runtime_is_deterministic() {
    for tls in BOTH {
        let report = paused_runtime().block_on(async {
            let (mut ours, mut peer) = in_runtime_pair(tls).await;
            let answering = tokio::spawn(async move {
                let mut buf = [0u8; 64];
                // Our close_notify ends the peer's reads; it answers with its own.
                while peer.read(&mut buf).await.unwrap_or(0) > 0 {}
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut peer).await;
                peer
            });
            let report = shutdown(&mut ours, &policy(1000, 5000)).await.unwrap();
            drop(answering.await.unwrap());
            report
        });
        assert_eq!(report.outcome, Outcome::Clean, "{tls:?}: {report}");
        // Nothing waited on the clock: no time passed on it.
        assert_eq!(report.elapsed, Duration::ZERO, "{tls:?}: {report}");
    }
}

/// A silent peer under a paused clock: the runtime has nothing to do but wait
/// for the timer, so tokio jumps to it. The report says exactly the policy's
/// timeout, in tokio's time, after almost no real time.
#[test]
fn a_paused_clock_times_a_silent_peer_out_at_once_with_the_timeout_as_elapsed() {
    let real = Instant::now();
    let report = paused_runtime().block_on(async {
        let (mut ours, _silent) = in_runtime_pair(Tls::V13).await;
        shutdown(&mut ours, &policy(1000, 5000)).await.unwrap()
    });
    assert_eq!(report.outcome, Outcome::TimedOut, "{report}");
    assert_eq!(report.stage, Stage::AwaitPeer);
    assert_eq!(report.elapsed, ms(5000), "{report}");
    assert!(
        real.elapsed() < ms(2000),
        "{:?} of real time",
        real.elapsed()
    );
}

/// The other side of tokio's rule: a peer outside the runtime (here a std thread
/// that answers after 20 ms of real time) is invisible to it, so with the clock
/// paused the runtime sees nothing to do, jumps to the timer, and the shutdown
/// times out, as `tokio::time::timeout` would. With the clock running, the same
/// peer gives `clean`.
#[test]
fn a_paused_clock_does_not_wait_for_a_peer_outside_the_runtime() {
    for paused in [true, false] {
        let rt = if paused {
            paused_runtime()
        } else {
            runtime(Flavor::CurrentThread)
        };
        let report = rt.block_on(async {
            let (mut ours, peer) = Contexts::new(Tls::V13).pair_tokio(Role::Client).await;
            let answering = std::thread::spawn(move || {
                std::thread::sleep(ms(20));
                answer(peer)
            });
            let report = shutdown(&mut ours, &policy(1000, 5000)).await.unwrap();
            drop(ours);
            answering.join().unwrap();
            report
        });
        if paused {
            assert_eq!(report.outcome, Outcome::TimedOut, "paused: {report}");
            assert_eq!(report.elapsed, ms(5000), "paused: {report}");
        } else {
            assert_eq!(report.outcome, Outcome::Clean, "running: {report}");
            assert!(
                report.elapsed >= ms(20) && report.elapsed < ms(2000),
                "running: {report}"
            );
        }
    }
}
