//! Endings beside the behaviour matrix (tests/matrix.rs), against real OpenSSL on
//! real loopback sockets, in TLS 1.2 and 1.3, with our side as client and as
//! server: close_notify alerts that cross, a peer that reset before we started,
//! TLS 1.3 tickets and KeyUpdates while we wait, the modes, unexpected-EOF
//! options, blocking sockets, the half-close reader, and connections handed over
//! with unsent data or an error.

mod util;

use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use closenotify::{shutdown_blocking, Alert, Mode, Outcome, Policy, Stage};
use openssl::ssl::ErrorCode;
use util::*;

#[test]
fn both_send_close_notify_at_the_same_moment_clean() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let barrier = Arc::new(Barrier::new(2));
        let b = barrier.clone();
        let peer = spawn_peer(peer, move |mut p| {
            b.wait();
            p.shutdown().unwrap();
            read_until_close_notify(&mut p).expect("our close_notify");
            wait_eof(p.get_mut());
        });
        barrier.wait();
        let r = shutdown_blocking(&mut ours, &policy(500, 500));
        assert_outcome(&r, Outcome::Clean, &format!("{tls:?} as {role:?}"));
        assert!(r.close_notify_sent && r.close_notify_received);
        drop(ours);
        peer.join().unwrap();
    }
}

#[test]
fn peer_reset_before_we_start_reset_in_flush() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        reset_on_drop(peer.get_ref());
        drop(peer);
        assert!(wait_for(
            ours.get_ref().as_raw_fd(),
            libc::POLLHUP | libc::POLLERR,
            ms(5000)
        ));
        let r = shutdown_blocking(&mut ours, &policy(500, 500));
        let what = format!("{tls:?} as {role:?}");
        assert_outcome(&r, Outcome::Reset, &what);
        assert!(
            matches!(r.os_error, Some(libc::ECONNRESET) | Some(libc::EPIPE)),
            "{what}: {:?}",
            r.os_error
        );
        assert_eq!(r.stage, Stage::Flush, "{what}");
    }
}

/// A new session ticket (OpenSSL 3.0+: `SSL_new_session_ticket`; skipped on 1.1.1,
/// where only the key updates are sent) and key updates from the peer.
#[test]
fn tls13_tickets_and_key_updates_while_we_await_are_processed_clean() {
    use foreign_types::ForeignTypeRef;
    for role in ROLES {
        for requested in [false, true] {
            let ctx = Contexts::new(Tls::V13);
            let Pair { mut ours, peer } = ctx.pair(role);
            let peer = spawn_peer(peer, move |mut p| {
                // Our close_notify is in the peer's socket buffer, unread: the
                // peer's OpenSSL state is still fully open, and what it sends now
                // reaches us while we await its close_notify.
                assert!(wait_for(p.get_ref().as_raw_fd(), libc::POLLIN, ms(5000)));
                let ssl = p.ssl().as_ptr();
                // SAFETY: the peer owns `p`; each call queues one post-handshake
                // message that SSL_do_handshake then writes.
                unsafe {
                    #[cfg(ossl300)]
                    if openssl_sys::SSL_is_server(ssl) == 1 {
                        assert_eq!(util::sys::SSL_new_session_ticket(ssl), 1);
                        assert_eq!(openssl_sys::SSL_do_handshake(ssl), 1);
                    }
                    let kind = if requested { 1 } else { 0 };
                    assert_eq!(util::sys::SSL_key_update(ssl, kind), 1);
                    assert_eq!(openssl_sys::SSL_do_handshake(ssl), 1);
                }
                read_until_close_notify(&mut p).expect("our close_notify");
                p.shutdown().unwrap();
                wait_eof(p.get_mut());
            });
            let r = shutdown_blocking(&mut ours, &policy(500, 1000));
            let what = format!("as {role:?}, update requested: {requested}");
            assert_outcome(&r, Outcome::Clean, &what);
            assert!(r.ssl_calls >= 2, "{what}");
            drop(ours);
            peer.join().unwrap();
        }
    }
}

#[test]
fn send_only_reports_sent_only_without_a_round_trip() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let (go, wait) = mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |mut p| {
            wait.recv().unwrap();
            let got = read_until_close_notify(&mut p).map(|_| ());
            (got.is_ok(), wait_eof(p.get_mut()))
        });
        let p = Policy::builder().mode(Mode::SendOnly).build().unwrap();
        let r = shutdown_blocking(&mut ours, &p);
        let what = format!("{tls:?} as {role:?}");
        assert_outcome(&r, Outcome::SentOnly, &what);
        assert_eq!(r.stage, Stage::HalfClose, "{what}");
        assert!(
            r.close_notify_sent && r.half_closed && !r.close_notify_received,
            "{what}"
        );
        assert_eq!(r.ssl_calls, 1, "{what}");
        // The default policy: 3 s to wait, had it waited.
        assert!(r.elapsed < ms(1000), "{what}: waited {:?}", r.elapsed);
        // A TLS 1.3 client gets its tickets after the handshake; a send-only
        // shutdown does not read them (openssl#6904), and the report says so.
        let tickets_unread = tls == Tls::V13 && role == Role::Client;
        assert_eq!(r.session_resumable, !tickets_unread, "{what}");
        // Half-closed: the peer gets close_notify and EOF while we still hold the socket.
        go.send(()).unwrap();
        let (got_close_notify, eof) = peer.join().unwrap();
        assert!(got_close_notify, "{what}");
        assert_eq!(eof, None, "{what}");
        drop(ours);
    }
}

#[test]
fn quiet_sends_nothing() {
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let peer = spawn_peer(peer, |mut p| {
            let mut buf = [0u8; 64];
            p.ssl_read(&mut buf).map(|_| ()).map_err(|e| e.code())
        });
        let p = Policy::builder().mode(Mode::Quiet).build().unwrap();
        let r = shutdown_blocking(&mut ours, &p);
        let what = format!("{tls:?} as {role:?}");
        assert_outcome(&r, Outcome::Quiet, &what);
        assert!(!r.close_notify_sent && !r.half_closed, "{what}");
        assert_eq!(r.ssl_calls, 0, "{what}");
        assert_eq!(
            r.session_resumable,
            dropped_session_resumable(role),
            "{what}"
        );
        drop(ours);
        // The peer sees the transport end without close_notify.
        let seen = peer.join().unwrap();
        assert!(
            matches!(seen, Err(ErrorCode::SYSCALL) | Err(ErrorCode::SSL)),
            "{what}: {seen:?}"
        );
    }
}

/// OpenSSL 3.0+ only: `SSL_OP_IGNORE_UNEXPECTED_EOF` does not exist in 1.1.1.
#[cfg(ossl300)]
#[test]
fn ignore_unexpected_eof_still_reports_truncated() {
    use openssl::ssl::SslOptions;
    for (tls, role) in matrix() {
        let ctx = Contexts::with(
            tls,
            |s| {
                s.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
            },
            |c| {
                c.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
            },
        );
        let Pair { mut ours, peer } = ctx.pair(role);
        let peer = spawn_peer(peer, |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
        });
        let r = shutdown_blocking(&mut ours, &policy(500, 1000));
        assert_outcome(&r, Outcome::Truncated, &format!("{tls:?} as {role:?}"));
        peer.join().unwrap();
    }
}

/// The option only bites with OpenSSL's socket BIO (rust-openssl's stream BIO never
/// reports BIO_eof): a raw `SSL*`, as C programs have, is the case that matters.
/// OpenSSL 3.0+ only: `SSL_OP_IGNORE_UNEXPECTED_EOF` does not exist in 1.1.1.
#[cfg(ossl300)]
#[test]
fn ignore_unexpected_eof_on_a_socket_bio_still_reports_truncated() {
    use openssl::ssl::SslOptions;
    for tls in BOTH {
        let ctx = Contexts::with(
            tls,
            |_| {},
            |c| {
                c.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
            },
        );

        // Control: with the option, OpenSSL itself turns a bare EOF into
        // SSL_ERROR_ZERO_RETURN, the same answer as a close_notify.
        let (raw, peer) = RawClient::connect(&ctx, |_| {});
        drop(peer);
        let mut buf = [0u8; 64];
        // SAFETY: the raw client owns a valid SSL on an open socket.
        let code = unsafe {
            let ssl = foreign_types::ForeignType::as_ptr(&raw.ssl);
            let n = openssl_sys::SSL_read(ssl, buf.as_mut_ptr().cast(), 64);
            openssl_sys::SSL_get_error(ssl, n)
        };
        assert_eq!(code, openssl_sys::SSL_ERROR_ZERO_RETURN, "{tls:?}: control");

        let (raw, peer) = RawClient::connect(&ctx, |_| {});
        let peer = spawn_peer(peer, |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
        });
        let r = raw.conn().shutdown_blocking(&policy(500, 1000));
        assert_outcome(&r, Outcome::Truncated, &format!("{tls:?} raw"));
        peer.join().unwrap();
        // The option is back once the shutdown is over.
        // SAFETY: a valid SSL; SSL_get_options only reads a field.
        let opts =
            unsafe { util::sys::SSL_get_options(foreign_types::ForeignType::as_ptr(&raw.ssl)) };
        assert_ne!(
            opts & SslOptions::IGNORE_UNEXPECTED_EOF.bits(),
            0,
            "{tls:?}: option not restored"
        );
    }
}

#[test]
fn elapsed_is_bounded_by_the_policy_even_on_a_blocking_socket() {
    // A blocking socket must not make OpenSSL block: the shutdown switches it to
    // non-blocking mode and back.
    let ctx = Contexts::new(Tls::V13);
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let (go, wait) = mpsc::channel::<()>();
    let peer = spawn_peer(peer, move |p| {
        wait.recv().unwrap();
        drop(p)
    });
    let start = Instant::now();
    let r = shutdown_blocking(&mut ours, &policy(100, 150));
    assert_outcome(&r, Outcome::TimedOut, "silent peer");
    // Blocking would wait until the peer closes, after this assertion.
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    // Still in blocking mode afterwards.
    // SAFETY: F_GETFL on an open fd.
    let flags = unsafe { libc::fcntl(ours.get_ref().as_raw_fd(), libc::F_GETFL) };
    assert_eq!(flags & libc::O_NONBLOCK, 0);
    go.send(()).unwrap();
    peer.join().unwrap();
}

#[test]
fn half_close_delivers_the_peers_data_until_its_close_notify() {
    use closenotify::{Progress, Ready, Shutdown};
    for (tls, role) in matrix() {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        // The peer answers what it has to say after our close_notify: 100 KB, then
        // its own close_notify.
        let peer = spawn_peer(peer, |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
            let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            std::io::Write::write_all(&mut p, &body).unwrap();
            p.shutdown().unwrap();
            wait_eof(p.get_mut());
        });
        let fd = ours.get_ref().as_raw_fd();
        ours.get_ref().set_nonblocking(true).unwrap();
        let mut sd = Shutdown::new(&mut ours, &policy(500, 2000));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut ready = Ready::NONE;
        let report = loop {
            let (n, progress) = sd.poll_read(Instant::now(), ready, &mut buf);
            got.extend_from_slice(&buf[..n]);
            match progress {
                Progress::Done(r) => break r,
                Progress::Wait(_) if n > 0 => ready = Ready::NONE,
                Progress::Wait(w) => {
                    assert!(wait_for(fd, libc::POLLIN, w.timeout(Instant::now())));
                    ready = Ready::READABLE;
                }
            }
        };
        let what = format!("{tls:?} as {role:?}");
        assert_outcome(&report, Outcome::Clean, &what);
        assert_eq!(report.discarded_bytes, 0, "{what}");
        assert_eq!(got.len(), 100_000, "{what}");
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "{what}"
        );
        drop(sd);
        drop(ours);
        peer.join().unwrap();
    }
}

/// Writes `data` until the stalled peer makes OpenSSL answer WANT_WRITE with a
/// record half in the kernel; returns where the interrupted SSL_write began.
fn write_until_stalled(
    ours: &mut openssl::ssl::SslStream<std::net::TcpStream>,
    data: &[u8],
) -> usize {
    ours.get_ref().set_nonblocking(true).unwrap();
    let mut written = 0;
    loop {
        match ours.ssl_write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.code() == ErrorCode::WANT_WRITE => return written,
            Err(e) => panic!("write: {e}"),
        }
        assert!(
            written < data.len(),
            "the peer's buffers swallowed everything"
        );
    }
}

#[test]
fn an_unfinished_write_is_completed_before_close_notify() {
    use closenotify::Shutdown;
    let data: Vec<u8> = (0..16_000_000u32).map(|i| (i % 253) as u8).collect();
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        if tls == Tls::V13 && role == Role::Client {
            read_tickets(&mut ours);
        }
        let (go, wait) = mpsc::channel::<()>();
        let expected = data.len();
        let peer = spawn_peer(peer, move |mut p| {
            wait.recv().unwrap();
            let got = read_until_close_notify(&mut p).expect("our data, then close_notify");
            p.shutdown().unwrap();
            wait_eof(p.get_mut());
            got
        });
        let from = write_until_stalled(&mut ours, &data);
        let fd = ours.get_ref().as_raw_fd();
        go.send(()).unwrap(); // the peer starts reading now
        let sd = Shutdown::new(&mut ours, &policy(5000, 5000)).with_unsent(data[from..].to_vec());
        let r = drive(sd, fd);
        assert_outcome(&r, Outcome::Clean, &what);
        drop(ours);
        let got = peer.join().unwrap();
        assert_eq!(got.len(), expected, "{what}");
        assert!(got == data, "{what}: bytes differ");
    }
}

#[test]
fn an_unfinished_write_to_a_peer_that_never_reads_times_out_in_flush() {
    use closenotify::Shutdown;
    let data = vec![9u8; 16_000_000];
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let (go, wait) = mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |mut p| {
            wait.recv().unwrap();
            wait_eof(p.get_mut())
        });
        let from = write_until_stalled(&mut ours, &data);
        let fd = ours.get_ref().as_raw_fd();
        let sd = Shutdown::new(&mut ours, &policy(200, 200)).with_unsent(data[from..].to_vec());
        let r = drive(sd, fd);
        assert_outcome(&r, Outcome::TimedOut, &what);
        assert_eq!(r.stage, Stage::Flush, "{what}");
        assert!(
            r.elapsed >= ms(200) && r.elapsed < ms(400),
            "{what}: {:?}",
            r.elapsed
        );
        assert!(!r.close_notify_sent, "{what}");
        drop(ours);
        go.send(()).unwrap();
        // The default policy reset the connection instead of leaving megabytes
        // queued behind a FIN.
        assert_eq!(
            peer.join().unwrap(),
            Some(std::io::ErrorKind::ConnectionReset),
            "{what}"
        );
    }
}

/// Without the unsent bytes, OpenSSL cannot send close_notify behind the
/// half-written record: 3.0 refuses ("bad write retry"), 3.2+ drops the alert
/// (ssl3_dispatch_alert gives up) and goes on to read. Either way nothing more
/// reaches the peer, and the report says `quiet`, not that close_notify left.
#[test]
fn an_unfinished_write_without_its_bytes_is_quiet() {
    let data = vec![5u8; 16_000_000];
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        if tls == Tls::V13 && role == Role::Client {
            read_tickets(&mut ours);
        }
        let (go, wait) = mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |mut p| {
            wait.recv().unwrap();
            wait_eof(p.get_mut())
        });
        write_until_stalled(&mut ours, &data);
        go.send(()).unwrap(); // the peer reads: the socket drains
        let r = shutdown_blocking(&mut ours, &policy(2000, 200));
        assert_outcome(&r, Outcome::Quiet, &what);
        let detail = if cfg!(ossl320) {
            "close_notify dropped by OpenSSL behind a half-finished write"
        } else {
            "bad write retry"
        };
        assert_eq!(r.detail, Some(detail), "{what}");
        assert!(!r.close_notify_sent, "{what}");
        drop(ours);
        peer.join().unwrap();
    }
}

#[test]
fn an_error_the_application_saw_is_reported_not_quiet() {
    use closenotify::{Shutdown, TlsError};
    for (tls, role) in matrix() {
        let what = format!("{tls:?} as {role:?}");
        // The application's read consumes the peer's fatal alert.
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(role);
        let (go, wait) = mpsc::channel::<()>();
        let peer = spawn_peer(peer, move |mut p| {
            let _ = p.ssl_read(&mut [0u8; 64]); // fails on our forged record: alert
            wait.recv().unwrap();
        });
        write_raw(&mut ours, &forged_record());
        let err = loop {
            match ours.ssl_read(&mut [0u8; 64]) {
                Ok(_) => continue, // TLS 1.3 tickets are processed; no data comes
                Err(e) => break e,
            }
        };
        let fd = ours.get_ref().as_raw_fd();
        let sd = Shutdown::new(&mut ours, &policy(200, 200)).after_error(TlsError::from(&err));
        let r = drive(sd, fd);
        assert_outcome(&r, Outcome::PeerAlert, &what);
        assert_eq!(
            r.alert.map(|a| a.alert),
            Some(Alert::BadRecordMac),
            "{what}"
        );
        assert_eq!((r.ssl_calls, r.close_notify_sent), (0, false), "{what}");
        // OpenSSL flags the consumed alert as SSL_RECEIVED_SHUTDOWN: it is no
        // close_notify.
        assert!(!r.close_notify_received, "{what}");
        assert_eq!(r.initiator, closenotify::Initiator::Local, "{what}");
        go.send(()).unwrap();
        peer.join().unwrap();

        // The application's read sees the peer's bare EOF (a TLS 1.3 client peer
        // first reads its tickets, or its close() would be an RST).
        let Pair { mut ours, mut peer } = ctx.pair(role);
        if tls == Tls::V13 && role == Role::Server {
            read_tickets(&mut peer);
        }
        drop(peer);
        let err = loop {
            match ours.ssl_read(&mut [0u8; 64]) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(TlsError::from(&err), TlsError::Eof, "{what}");
        let fd = ours.get_ref().as_raw_fd();
        let r = drive(
            Shutdown::new(&mut ours, &policy(200, 200)).after_error(TlsError::from(&err)),
            fd,
        );
        assert_outcome(&r, Outcome::Truncated, &what);
        assert!(!r.close_notify_sent, "{what}");
    }
}
