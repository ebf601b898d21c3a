//! TLS 1.3 KeyUpdate while we await the peer's close_notify.
//!
//! A KeyUpdate(update_requested) makes OpenSSL answer with a KeyUpdate of its own,
//! written from inside the `SSL_read` that processes the request. After our
//! close_notify and `shutdown(SHUT_WR)`, that write fails with EPIPE: with two or
//! more requests it used to turn a clean close into `reset` (and drop the
//! session); with the half-close off, the answer followed our close_notify on the
//! wire, which TLS forbids. Once our close_notify is flushed, the shutdown gives
//! OpenSSL a sink for its writes: the close is clean, and nothing follows our
//! close_notify.

mod util;

use std::os::fd::AsRawFd;

use closenotify::{shutdown_blocking, Outcome, Policy};
use util::*;

const UPDATES: [usize; 3] = [1, 2, 50];

#[test]
fn key_updates_while_we_await_the_peer_end_clean() {
    for role in ROLES {
        for updates in UPDATES {
            for requested in [false, true] {
                for half_close in [true, false] {
                    let what = format!(
                        "as {role:?}, {updates} updates, requested {requested}, \
                         half-close {half_close}"
                    );
                    let ctx = Contexts::new(Tls::V13);
                    let Pair { mut ours, peer } = ctx.pair(role);
                    let peer = spawn_peer(peer, updating_peer(updates, requested));
                    let p = Policy::builder()
                        .flush_timeout(ms(1000))
                        .peer_timeout(ms(2000))
                        .half_close(half_close)
                        .build()
                        .unwrap();
                    let r = shutdown_blocking(&mut ours, &p);
                    assert_outcome(&r, Outcome::Clean, &what);
                    assert!(r.session_resumable, "{what}");
                    assert_eq!(r.os_error, None, "{what}");
                    drop(ours);
                    let after = peer.join().unwrap();
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

/// The same through a raw `SSL*` on OpenSSL's socket BIO (the C API's path).
#[test]
fn key_updates_while_a_raw_ssl_awaits_the_peer_end_clean() {
    for updates in UPDATES {
        for requested in [false, true] {
            let what = format!("raw, {updates} updates, requested {requested}");
            let ctx = Contexts::new(Tls::V13);
            let (raw, peer) = RawClient::connect(&ctx, |_| {});
            let peer = spawn_peer(peer, updating_peer(updates, requested));
            let r = raw.conn().shutdown_blocking(&policy(1000, 2000));
            assert_outcome(&r, Outcome::Clean, &what);
            assert!(r.session_resumable, "{what}");
            drop(raw);
            assert!(peer.join().unwrap().is_empty(), "{what}");
        }
    }
}

/// The sink lasts only for the shutdown: the caller's write BIO is back
/// afterwards (the socket BIO on the same fd).
#[test]
fn the_write_bio_is_restored_after_the_shutdown() {
    let ctx = Contexts::new(Tls::V13);
    let (raw, peer) = RawClient::connect(&ctx, |_| {});
    let ssl = foreign_types::ForeignType::as_ptr(&raw.ssl);
    // SAFETY: the raw client's SSL is valid; these only read its BIO pointers.
    let (rbio, wbio) = unsafe { (openssl_sys::SSL_get_rbio(ssl), util::sys::SSL_get_wbio(ssl)) };
    assert_eq!(rbio, wbio, "SSL_set_fd makes one BIO for both sides");
    let peer = spawn_peer(peer, updating_peer(2, true));
    let r = raw.conn().shutdown_blocking(&policy(1000, 2000));
    assert_outcome(&r, Outcome::Clean, "raw");
    // SAFETY: as above.
    unsafe {
        assert_eq!(util::sys::SSL_get_wbio(ssl), wbio, "write BIO not restored");
        assert_eq!(util::sys::SSL_get_wfd(ssl), raw.tcp.as_raw_fd());
    }
    drop(raw);
    peer.join().unwrap();
}
