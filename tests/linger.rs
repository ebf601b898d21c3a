//! The linger stage on real sockets: a server that closes with unread input makes
//! the kernel send an RST, and an RST throws away whatever the server's send
//! queue still holds. A client reading slowly then loses the tail of a large
//! response. With linger on, the shutdown waits (bounded) until the client has
//! acknowledged every byte before the caller closes: the RST still comes, but
//! only after the data is in the client's receive buffer, from which Linux lets
//! the client read it.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use closenotify::{shutdown_blocking, Mode, Outcome, Policy, ResetOnTimeout, Stage};
use openssl::ssl::{ErrorCode, SslStream};
use util::*;

/// The final response: large enough that much of it is still queued in the
/// server's kernel when the server closes.
const RESPONSE: usize = 2 << 20;

/// Runs of each exchange: `CLOSENOTIFY_LINGER_RUNS=50 cargo test --test linger`
/// repeats them many times.
fn runs() -> usize {
    std::env::var("CLOSENOTIFY_LINGER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn response() -> Vec<u8> {
    (0..RESPONSE as u32).map(|i| (i % 251) as u8).collect()
}

/// The client: sends a request and, in a second record, bytes the server will
/// never read; then reads slowly until the end. Returns what it received before
/// the end and how the stream ended.
fn slow_client(mut c: SslStream<TcpStream>) -> (Vec<u8>, String) {
    c.write_all(b"request\n").unwrap();
    c.write_all(&[b'x'; 1000]).unwrap(); // never read: an RST at close
    read_slowly(&mut c)
}

/// Reads slowly until the end, so that the sender's send queue fills up behind
/// us. Returns what arrived and how the stream ended.
fn read_slowly(c: &mut SslStream<TcpStream>) -> (Vec<u8>, String) {
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::with_capacity(RESPONSE);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        std::thread::sleep(Duration::from_millis(5));
        match c.ssl_read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => return (got, "close_notify".into()),
            Err(e) => return (got, format!("{e}")),
        }
    }
}

/// The server: reads the request's first record only, writes the response, shuts
/// down `send_only` under `policy` and closes.
fn serve(mut s: SslStream<TcpStream>, policy: &Policy) -> closenotify::Report {
    let mut req = [0u8; 8];
    s.ssl_read(&mut req).unwrap();
    assert_eq!(&req, b"request\n");
    s.write_all(&response()).unwrap();
    let r = shutdown_blocking(&mut s, policy);
    drop(s); // close() with unread input: RST
    r
}

fn send_only(linger: Duration) -> Policy {
    Policy::builder()
        .mode(Mode::SendOnly)
        .linger_timeout(linger)
        .build()
        .unwrap()
}

fn exchange(tls: Tls, policy: &Policy) -> (closenotify::Report, Vec<u8>, String) {
    let ctx = Contexts::new(tls);
    let Pair { ours, peer } = ctx.pair(Role::Server);
    let client = spawn_peer(peer, slow_client);
    let r = serve(ours, policy);
    let (got, end) = client.join().unwrap();
    (r, got, end)
}

#[test]
fn linger_delivers_every_byte_before_the_rst() {
    let expected = response();
    for tls in BOTH {
        for run in 0..runs() {
            let what = format!("{tls:?} run {run}");
            let (r, got, end) = exchange(tls, &send_only(Duration::from_secs(10)));
            assert_outcome(&r, Outcome::SentOnly, &what);
            assert_eq!(r.stage, Stage::Linger, "{what}");
            // What the stage waited for, as SIOCOUTQ reported it.
            let queued = r.linger_bytes.expect("linger ran");
            assert!(queued > 0, "{what}: nothing was queued");
            assert_eq!(
                got.len(),
                expected.len(),
                "{what}: {} bytes lost ({end})",
                expected.len() - got.len()
            );
            assert!(got == expected, "{what}: bytes differ");
            // The server's close_notify came after the last byte.
            assert_eq!(end, "close_notify", "{what}");
        }
    }
}

/// The control: the same exchange without linger loses the tail. The kernel
/// discards the send queue when the RST goes out.
#[test]
fn without_linger_the_rst_destroys_the_tail() {
    let mut lost_runs = 0;
    for run in 0..runs() {
        let (r, got, end) = exchange(Tls::V13, &send_only(Duration::ZERO));
        assert_outcome(&r, Outcome::SentOnly, &format!("run {run}"));
        assert_eq!(r.linger_bytes, None);
        if got.len() < RESPONSE {
            lost_runs += 1;
            assert!(end.contains("reset") || end.contains("EOF"), "{end}");
        }
    }
    eprintln!(
        "without linger: the tail was lost in {lost_runs} of {} runs",
        runs()
    );
    assert!(
        lost_runs > 0,
        "the tail always arrived without linger: this machine does not show the problem"
    );
}

/// A client that stops reading: the linger stage ends at its timeout, and the
/// reset policy decides how the connection ends.
#[test]
fn a_peer_that_stops_reading_times_out_in_linger() {
    /// Small enough for the two kernels' buffers (sized below), so that the
    /// write and our close_notify go through; most of it stays in our queue.
    const QUEUED: usize = 100 * 1024;
    for (reset, expect_rst) in [
        (ResetOnTimeout::Always, true),
        (ResetOnTimeout::FlushOnly, false),
    ] {
        let what = format!("{reset:?}");
        let ctx = Contexts::new(Tls::V13);
        let Pair {
            ours: mut server,
            peer,
        } = ctx.pair(Role::Server);
        let client_tcp = socket2::SockRef::from(peer.get_ref());
        client_tcp.set_recv_buffer_size(4096).unwrap();
        socket2::SockRef::from(server.get_ref())
            .set_send_buffer_size(1 << 20)
            .unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let client = spawn_peer(peer, move |mut c| {
            // Reads nothing until told, then everything: an RST, or the data
            // and a FIN.
            wait.recv().unwrap();
            c.get_ref()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut n = 0;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match c.get_mut().read(&mut buf) {
                    Ok(0) => return (n, None),
                    Ok(k) => n += k,
                    Err(e) => return (n, Some(e.kind())),
                }
            }
        });
        server.write_all(&vec![1u8; QUEUED]).unwrap();
        let p = Policy::builder()
            .mode(Mode::SendOnly)
            .linger_timeout(ms(300))
            .reset_on_timeout(reset)
            .build()
            .unwrap();
        let r = shutdown_blocking(&mut server, &p);
        assert_outcome(&r, Outcome::TimedOut, &what);
        assert_eq!(r.stage, Stage::Linger, "{what}");
        assert!(r.close_notify_sent, "{what}");
        assert!(
            r.elapsed >= ms(300) && r.elapsed < ms(600),
            "{what}: {:?}",
            r.elapsed
        );
        let queued = r.linger_bytes.expect("linger ran") as usize;
        assert!(queued > QUEUED / 2, "{what}: only {queued} bytes queued");
        drop(server);
        go.send(()).unwrap();
        let (received, end) = client.join().unwrap();
        assert_eq!(end.is_some(), expect_rst, "{what}: {end:?}");
        if !expect_rst {
            // No reset: the data, our close_notify, then the FIN.
            assert!(received > QUEUED, "{what}: {received}");
        }
    }
}

/// The same through a raw `SSL*` (the C API's path): every byte arrives.
#[test]
fn linger_on_a_raw_ssl_delivers_every_byte() {
    let ctx = Contexts::new(Tls::V13);
    let (raw, peer) = RawClient::connect(&ctx, |_| {});
    // Here our side is the raw client; the slow reader is the server peer.
    let reader = spawn_peer(peer, |mut s| {
        let mut req = [0u8; 8];
        s.ssl_read(&mut req).unwrap();
        read_slowly(&mut s).0
    });
    let ssl = foreign_types::ForeignType::as_ptr(&raw.ssl);
    let data = response();
    let write = |buf: &[u8]| {
        // SAFETY: the raw client's SSL is valid; `buf` is readable.
        let n = unsafe { openssl_sys::SSL_write(ssl, buf.as_ptr().cast(), buf.len() as i32) };
        assert_eq!(n, buf.len() as i32);
    };
    write(b"request\n");
    for chunk in data.chunks(1 << 16) {
        write(chunk);
    }
    let r = raw
        .conn()
        .shutdown_blocking(&send_only(Duration::from_secs(10)));
    assert_outcome(&r, Outcome::SentOnly, "raw");
    assert_eq!(r.stage, Stage::Linger);
    assert!(r.linger_bytes.unwrap() > 0);
    // Close with an RST, as unread input would make it: only the bytes already
    // acknowledged survive, and linger waited for all of them.
    reset_on_drop(&raw.tcp);
    drop(raw);
    let got = reader.join().unwrap();
    assert_eq!(
        got.len(),
        data.len(),
        "{} bytes lost",
        data.len() - got.len()
    );
    assert!(got == data, "bytes differ");
}
