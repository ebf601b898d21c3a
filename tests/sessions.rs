//! Sessions: resumable after `clean`/`sent_only`, removed from the cache
//! after anything else, on the client and on the server; observed through real
//! resumption attempts.

mod util;

use closenotify::{shutdown_blocking, Mode, Outcome, Policy};
use foreign_types::ForeignTypeRef;
use openssl::ssl::SslSession;
use util::*;

fn keep_on_truncation() -> Policy {
    policy(500, 1000)
        .to_builder()
        .keep_session_on_truncation(true)
        .build()
        .unwrap()
}

/// Our side is the client; returns its session after the shutdown and the report.
fn client_session_after(
    ctx: &Contexts,
    peer_behaviour: fn(openssl::ssl::SslStream<std::net::TcpStream>),
    policy: &Policy,
) -> (SslSession, closenotify::Report) {
    let Pair { mut ours, peer } = ctx.pair(Role::Client);
    let peer = spawn_peer(peer, peer_behaviour);
    let report = shutdown_blocking(&mut ours, policy);
    let session = ours.ssl().session().expect("a session").to_owned();
    drop(ours);
    peer.join().unwrap();
    (session, report)
}

fn truncate(mut p: openssl::ssl::SslStream<std::net::TcpStream>) {
    read_until_close_notify(&mut p).expect("our close_notify");
}

#[test]
fn client_resumes_after_clean_and_not_after_truncation() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);

        let (session, r) = client_session_after(&ctx, answer, &policy(500, 1000));
        assert_eq!(r.outcome, Outcome::Clean, "{tls:?}");
        assert!(r.session_resumable, "{tls:?}");
        let next = ctx.pair_resuming(Role::Client, Some(&session));
        assert!(
            next.ours.ssl().session_reused(),
            "{tls:?}: clean session not resumed"
        );

        let (session, r) = client_session_after(&ctx, truncate, &policy(500, 1000));
        assert_eq!(r.outcome, Outcome::Truncated, "{tls:?}");
        assert!(!r.session_resumable, "{tls:?}");
        let next = ctx.pair_resuming(Role::Client, Some(&session));
        assert!(
            !next.ours.ssl().session_reused(),
            "{tls:?}: truncated session resumed"
        );

        // Control: the policy that keeps it shows it was closenotify that dropped it.
        let (session, r) = client_session_after(&ctx, truncate, &keep_on_truncation());
        assert_eq!(r.outcome, Outcome::Truncated, "{tls:?}");
        assert!(r.session_resumable, "{tls:?}");
        let next = ctx.pair_resuming(Role::Client, Some(&session));
        assert!(
            next.ours.ssl().session_reused(),
            "{tls:?}: kept session not resumed"
        );
    }
}

#[test]
fn client_session_dropped_on_timeout_kept_on_send_only() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let silent = |mut p: openssl::ssl::SslStream<std::net::TcpStream>| {
            // Reads (so TLS 1.3 tickets were sent) but never answers.
            let _ = read_until_close_notify(&mut p);
            std::thread::sleep(ms(300));
        };
        let (session, r) = client_session_after(&ctx, silent, &policy(500, 100));
        assert_eq!(r.outcome, Outcome::TimedOut, "{tls:?}");
        assert!(!r.session_resumable, "{tls:?}");
        let next = ctx.pair_resuming(Role::Client, Some(&session));
        assert!(!next.ours.ssl().session_reused(), "{tls:?}");

        if tls == Tls::V12 {
            // TLS 1.2 delivers the session in the handshake: send_only keeps it.
            let send_only = Policy::builder().mode(Mode::SendOnly).build().unwrap();
            let (session, r) = client_session_after(&ctx, answer, &send_only);
            assert_eq!(r.outcome, Outcome::SentOnly);
            assert!(r.session_resumable);
            let next = ctx.pair_resuming(Role::Client, Some(&session));
            assert!(next.ours.ssl().session_reused());
        }
    }
}

/// Our side is the server with a stateful cache; the peer client keeps its copy of
/// the session valid (it marks its side as shut down without sending anything, so
/// its own OpenSSL does not drop it). Whether it resumes then depends only on our
/// server's cache.
fn server_then_resume(tls: Tls, policy: &Policy, truncating: bool) -> (closenotify::Report, bool) {
    let ctx = Contexts::stateful(tls);
    let Pair { mut ours, peer } = ctx.pair(Role::Server);
    let peer = spawn_peer(peer, move |mut p| {
        if truncating {
            read_until_close_notify(&mut p).expect("our close_notify");
            // SAFETY: a valid SSL; marks the peer's side shut down, sending nothing.
            unsafe {
                openssl_sys::SSL_set_shutdown(p.ssl().as_ptr(), openssl_sys::SSL_SENT_SHUTDOWN)
            };
        } else {
            answer_keep(&mut p);
        }
        p.ssl().session().expect("client session").to_owned()
    });
    let report = shutdown_blocking(&mut ours, policy);
    drop(ours);
    let session = peer.join().unwrap();
    let next = ctx.pair_resuming(Role::Client, Some(&session));
    (report, next.ours.ssl().session_reused())
}

fn answer_keep(p: &mut openssl::ssl::SslStream<std::net::TcpStream>) {
    read_until_close_notify(p).expect("our close_notify");
    p.shutdown().unwrap();
    wait_eof(p.get_mut());
}

#[test]
fn server_cache_keeps_clean_sessions_and_drops_truncated_ones() {
    for tls in BOTH {
        let (r, resumed) = server_then_resume(tls, &policy(500, 1000), false);
        assert_eq!(r.outcome, Outcome::Clean, "{tls:?}");
        assert!(
            r.session_resumable && resumed,
            "{tls:?}: {r:?} resumed={resumed}"
        );

        let (r, resumed) = server_then_resume(tls, &policy(500, 1000), true);
        assert_eq!(r.outcome, Outcome::Truncated, "{tls:?}");
        assert!(!r.session_resumable, "{tls:?}");
        assert!(!resumed, "{tls:?}: the server resumed a truncated session");

        let (r, resumed) = server_then_resume(tls, &keep_on_truncation(), true);
        assert_eq!(r.outcome, Outcome::Truncated, "{tls:?}");
        assert!(r.session_resumable && resumed, "{tls:?}: control");
    }
}

/// With OpenSSL's default stateless tickets the server cannot revoke a session:
/// the report says it stays resumable, and it does.
#[test]
fn server_with_stateless_tickets_reports_what_it_cannot_revoke() {
    for tls in BOTH {
        let ctx = Contexts::new(tls);
        let Pair { mut ours, peer } = ctx.pair(Role::Server);
        let peer = spawn_peer(peer, |mut p| {
            read_until_close_notify(&mut p).expect("our close_notify");
            // SAFETY: as above: keep the client's copy valid, send nothing.
            unsafe {
                openssl_sys::SSL_set_shutdown(p.ssl().as_ptr(), openssl_sys::SSL_SENT_SHUTDOWN)
            };
            p.ssl().session().unwrap().to_owned()
        });
        let r = shutdown_blocking(&mut ours, &policy(500, 1000));
        assert_eq!(r.outcome, Outcome::Truncated, "{tls:?}");
        assert!(r.session_resumable, "{tls:?}");
        drop(ours);
        let session = peer.join().unwrap();
        let next = ctx.pair_resuming(Role::Client, Some(&session));
        assert!(next.ours.ssl().session_reused(), "{tls:?}");
    }
}
