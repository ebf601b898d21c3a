//! The C closer at scale: `tests/c/cn_closer.c` hands a few thousand finished
//! connections over to one `closenotify_closer`, one call each, and serves on;
//! the peers here (Rust, real OpenSSL on loopback) misbehave at it in a mix:
//! answering, silent, not reading, truncating, resetting, sending a fatal alert.
//! The C program checks every report (exactly once, with its tag, the outcome of
//! its peer's behaviour, within its policy) and that every fd is closed, then
//! the ends of a closer's life (`_finish` and `_free` with shutdowns pending);
//! this driver checks its summary and that every peer saw the end it expects.
//!
//! The whole behaviour matrix (every row, TLS 1.2 and 1.3) also runs through the
//! C closer one connection at a time: `tests/matrix.rs`, adapter `CCloser`.
//!
//! `CLOSENOTIFY_VALGRIND=1 cargo test --test c_closer` runs the program under
//! valgrind, all 2000 connections (a memory error or a definite leak fails).

mod util;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread;
use std::time::Duration;

use openssl::ssl::{Ssl, SslContext, SslVersion};

use util::cbuild::{self, run_c};
use util::{read_until_close_notify, reset_on_drop, wait_eof, wait_for, Contexts, Tls};

fn cn_closer() -> &'static Path {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let compiled = PROGRAM.get_or_init(|| {
        let (dir, flags) = cbuild::prepare()?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/cn_closer.c");
        cbuild::compile(&src, &dir, "cn_closer", &flags)
    });
    match compiled {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// The peers that finished, and those that did not see the end they expect;
/// `gate` is held (written) while the C program runs: a silent peer holds its
/// connection open until then.
#[derive(Default)]
struct Tally {
    finished: AtomicUsize,
    wrong: AtomicUsize,
    gate: RwLock<()>,
}

/// The server side: TLS 1.2 and 1.3, each connection on its own thread, playing
/// the behaviour its first line names.
fn serve(listener: TcpListener, ctx: SslContext, tally: Arc<Tally>) {
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { return };
        let (ctx, tally) = (ctx.clone(), tally.clone());
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                if !play(tcp, &ctx, &tally.gate) {
                    tally.wrong.fetch_add(1, Ordering::Relaxed);
                }
                tally.finished.fetch_add(1, Ordering::Relaxed);
            })
            .expect("a peer thread");
    }
}

/// One connection's peer; false when it did not see what it should.
fn play(tcp: TcpStream, ctx: &SslContext, gate: &RwLock<()>) -> bool {
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let Ok(mut s) = Ssl::new(ctx).expect("ssl").accept(tcp) else {
        return false;
    };
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return false,
        }
    }
    match &line[..] {
        b"answers\n" => {
            read_until_close_notify(&mut s).is_ok()
                && s.shutdown().is_ok()
                && wait_eof(s.get_mut()).is_none()
        }
        // Reads under TLS until our half-close: never answers, and sees a FIN
        // (every byte of ours arrived, close_notify included, so no RST). Then
        // holds the connection open: closing it would end the shutdown early.
        b"silent\n" => {
            let fin = wait_eof(s.get_mut()).is_none();
            drop(gate.read());
            fin
        }
        // Never reads: the closer gives up on flushing and resets.
        b"not_reading\n" => {
            wait_for(
                s.get_ref().as_raw_fd(),
                libc::POLLRDHUP,
                Duration::from_secs(30),
            );
            true
        }
        b"truncates\n" => read_until_close_notify(&mut s).is_ok(),
        b"resets\n" => {
            let ok = read_until_close_notify(&mut s).is_ok();
            reset_on_drop(s.get_ref());
            ok
        }
        // Our forged record fails; OpenSSL answers with bad_record_mac. Then
        // the end of our side.
        b"alert\n" => {
            let failed = s.ssl_read(&mut [0u8; 64]).is_err();
            wait_eof(s.get_mut());
            failed
        }
        _ => false,
    }
}

/// `count` connections through one closer, against the mixed peers.
fn run(count: usize) -> String {
    let ctx = Contexts::with(
        Tls::V13,
        |s| {
            s.set_min_proto_version(Some(SslVersion::TLS1_2))
                .expect("version");
        },
        |_| {},
    )
    .server;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let tally = Arc::new(Tally::default());
    let server = tally.clone();
    thread::spawn(move || serve(listener, ctx, server));

    let held = tally.gate.write().expect("the gate");
    let count_arg = count.to_string();
    let ran = run_c(
        cn_closer(),
        &[
            &port,
            &count_arg,
            "--peer-timeout-ms",
            "200",
            "--flush-timeout-ms",
            "200",
        ],
    );
    drop(held);
    let context = ran.context();
    ran.assert_success();
    // Every fd is closed: each peer has seen its end, or is about to (a
    // bounded wait for the last few threads).
    let all = count + 5;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while tally.finished.load(Ordering::Relaxed) < all && std::time::Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tally.finished.load(Ordering::Relaxed), all, "{context}");
    assert_eq!(
        tally.wrong.load(Ordering::Relaxed),
        0,
        "peers that did not see the end they expect: {context}"
    );
    ran.stdout_text().into_owned()
}

#[test]
fn thousands_of_connections_handed_over_each_reported_once_within_policy() {
    let count = 2000;
    let out = run(count);
    assert!(
        out.contains(&format!("reports={count} ")),
        "not every report: {out}"
    );
    for (behaviour, outcome) in [
        ("answers", "clean"),
        ("silent", "timed_out"),
        ("not_reading", "timed_out"),
        ("truncates", "truncated"),
        ("resets", "reset"),
        ("alert", "peer_alert"),
    ] {
        assert!(
            out.contains(&format!("behaviour={behaviour} "))
                && out.contains(&format!("outcome={outcome} ")),
            "no {behaviour} row with {outcome}: {out}"
        );
    }
    assert!(
        out.contains("finish: ok") && out.contains("free with pending: ok"),
        "{out}"
    );
}
