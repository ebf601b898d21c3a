//! What a shutdown costs, against what users would use instead.
//!
//! ```text
//! cargo bench --bench shutdown                    # everything (a few minutes)
//! cargo bench --bench shutdown -- --quick         # smoke run (seconds)
//! cargo bench --bench shutdown -- --json out.json # also write the figures
//! cargo bench --bench shutdown -- --only timeout_precision   # one section
//! scripts/syscalls.sh                             # section 2, under strace
//! ```
//!
//! The peers run in a second process (this binary, re-executed), one thread on
//! mio, on two listeners: one answers close_notify, one stays silent. Our side's
//! CPU is measured with `getrusage(RUSAGE_THREAD)` on the closing thread, so the
//! peers' work is never counted. Connections are established before timing
//! starts; handshakes are excluded. TLS 1.3, X25519, P-256 certificate; the peer
//! sends no session tickets, so that only the shutdown itself is measured.
//!
//! With `--features tokio`, section 1 also measures `closenotify::tokio::shutdown`
//! beside tokio-openssl, and section 2 can count its system calls.

use std::env;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use closenotify::{Closer, DeadlineQueue, Outcome, Policy};
use openssl::ssl::{
    ErrorCode, ShutdownResult, Ssl, SslContext, SslContextBuilder, SslMethod, SslStream,
    SslVerifyMode, SslVersion,
};
use serde_json::{json, Value};

fn main() {
    if env::var_os(peer::ENV).is_some() {
        raise_fd_limit();
        peer::main();
        return;
    }
    let args: Vec<String> = env::args().skip(1).collect();
    raise_fd_limit();
    if let Some(i) = args.iter().position(|a| a == "--syscalls") {
        let which = args.get(i + 1).map(String::as_str).unwrap_or("closenotify");
        let n = args.get(i + 2).and_then(|s| s.parse().ok()).unwrap_or(1000);
        syscalls::main(which, n);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());

    let machine = machine();
    println!(
        "closenotify benchmarks{}",
        if quick { " (quick)" } else { "" }
    );
    for (k, v) in machine.as_object().into_iter().flatten() {
        println!("  {k}: {}", v.as_str().unwrap_or(&v.to_string()));
    }
    // `--only per_shutdown|mass_close|deadline_queue|timeout_precision`.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let peer = peer::Peer::spawn();
    let mut results = json!({ "machine": machine, "quick": quick });
    if wanted("per_shutdown") {
        results["per_shutdown"] = per_shutdown::run(&peer, quick);
    }
    if wanted("mass_close") {
        results["mass_close"] = mass::run(&peer, quick);
    }
    if wanted("deadline_queue") {
        results["deadline_queue"] = queue::run(quick);
    }
    if wanted("timeout_precision") {
        results["timeout_precision"] = precision::run(&peer, quick);
    }
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
        println!("\nfigures written to {path}");
    }
}

// --- measurement helpers -----------------------------------------------------------

extern "C" {
    /// OpenSSL 1.1.0+: frees a connection's record buffers if they are empty.
    fn SSL_free_buffers(ssl: *mut openssl_sys::SSL) -> std::ffi::c_int;
    /// Points the SSL at a socket BIO on `fd`, as C programs do.
    fn SSL_set_fd(ssl: *mut openssl_sys::SSL, fd: std::ffi::c_int) -> std::ffi::c_int;
}

/// CPU time of the calling thread: (user, system).
fn thread_cpu() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // RUSAGE_THREAD (1, Linux): the calling thread only.
    // SAFETY: getrusage writes one rusage.
    let usage = unsafe {
        libc::getrusage(1, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// What one run cost the closing thread.
#[derive(Clone, Copy)]
struct Cost {
    user: Duration,
    system: Duration,
    wall: Duration,
}

/// Runs `f`, returning its cost on this thread.
fn measure<R>(f: impl FnOnce() -> R) -> (Cost, R) {
    let ((u0, s0), wall0) = (thread_cpu(), Instant::now());
    let r = f();
    let (u1, s1) = thread_cpu();
    let cost = Cost {
        user: u1 - u0,
        system: s1 - s0,
        wall: wall0.elapsed(),
    };
    (cost, r)
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Resets the peak RSS (VmHWM) to the current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Heap bytes in use (glibc's accounting), after returning free pages to the OS.
fn heap_in_use() -> u64 {
    // SAFETY: plain glibc calls without pointers.
    unsafe {
        libc::malloc_trim(0);
        let m = libc::mallinfo2();
        (m.uordblks + m.hblkhd) as u64
    }
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write one rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// For silent peers: the default policy with a shorter peer timeout (no reset on
/// an await_peer timeout: close() then sends nothing more, our FIN already went).
fn silent_policy(peer_timeout: Duration) -> Policy {
    Policy::builder()
        .peer_timeout(peer_timeout)
        .build()
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": model,
        "cores": cores.to_string(),
        "kernel": kernel.trim(),
        "openssl": openssl::version::version(),
        "rustc": rustc,
        "fd_limit": fd_limit().to_string(),
    })
}

// --- our side of the connections ----------------------------------------------------

fn client_ctx() -> SslContext {
    let mut b = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.build()
}

/// `n` established connections to `addr`, handshaken on two threads.
fn establish<S>(addr: SocketAddr, n: usize, wrap: fn(std::net::TcpStream) -> S) -> Vec<SslStream<S>>
where
    S: Read + Write + std::fmt::Debug + Send + 'static,
{
    on_two_threads(addr, n, move |tcp, ctx| {
        Ssl::new(ctx)
            .unwrap()
            .connect(wrap(tcp))
            .expect("handshake")
    })
}

/// `n` TCP connections to `addr`, each made into a `T` by `handshake` (with the
/// client context), on two threads.
fn on_two_threads<T: Send + 'static>(
    addr: SocketAddr,
    n: usize,
    handshake: impl Fn(std::net::TcpStream, &SslContext) -> T + Copy + Send + 'static,
) -> Vec<T> {
    let ctx = Arc::new(client_ctx());
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                (t..n)
                    .step_by(2)
                    .map(|_| {
                        let tcp = std::net::TcpStream::connect(addr).expect("connect");
                        tcp.set_nodelay(true).unwrap();
                        // A stuck peer fails the benchmark instead of hanging it.
                        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        handshake(tcp, &ctx)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn establish_mio(addr: SocketAddr, n: usize) -> Vec<closenotify::Stream> {
    let mut v = establish(addr, n, mio::net::TcpStream::from_std);
    for s in &mut v {
        socket2::SockRef::from(s.get_ref())
            .set_nonblocking(true)
            .unwrap();
    }
    v
}

/// A connection as a C program owns one: an `SSL*` on OpenSSL's socket BIO
/// (`SSL_set_fd`), handshaken, and its socket, non-blocking.
pub struct RawConn {
    ssl: *mut openssl_sys::SSL,
    tcp: std::net::TcpStream,
}

// SAFETY: the SSL is used by one thread at a time (handshaken on one, moved to
// the closing thread afterwards).
unsafe impl Send for RawConn {}

impl RawConn {
    fn fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.tcp)
    }

    /// The SSL and the fd, given away (to a C closer, which frees and closes them).
    fn into_raw(self) -> (*mut openssl_sys::SSL, i32) {
        // Neither the SSL nor the socket is freed or closed here.
        let me = std::mem::ManuallyDrop::new(self);
        (me.ssl, me.fd())
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        // SAFETY: the SSL is this value's (SSL_new below); the fd closes after.
        unsafe { openssl_sys::SSL_free(self.ssl) };
    }
}

/// `n` connections as a C program has them (see `RawConn`), handshaken on two
/// threads.
fn establish_raw(addr: SocketAddr, n: usize) -> Vec<RawConn> {
    on_two_threads(addr, n, |tcp, ctx| {
        let owned = Ssl::new(ctx).unwrap();
        let ssl = foreign_types::ForeignTypeRef::as_ptr(&*owned);
        std::mem::forget(owned); // freed by RawConn's drop
        let conn = RawConn { ssl, tcp };
        // SAFETY: a fresh SSL on an open socket.
        unsafe {
            assert_eq!(SSL_set_fd(ssl, conn.fd()), 1);
            assert_eq!(openssl_sys::SSL_connect(ssl), 1, "handshake");
        }
        conn.tcp.set_nonblocking(true).unwrap();
        conn
    })
}

// --- 1. per shutdown -----------------------------------------------------------------

mod per_shutdown {
    use super::*;

    pub fn run(peer: &peer::Peer, quick: bool) -> Value {
        let (n, rounds) = if quick { (200, 1) } else { (1000, 11) };
        println!("\n1. Per clean bidirectional shutdown ({n} connections per round, {rounds} rounds, median)");
        let policy = Policy::default();
        let (mut cn, mut ro, mut tk, mut tk_bare) = (vec![], vec![], vec![], vec![]);
        let (mut c_step, mut c_closer) = (vec![], vec![]);
        #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
        let mut cn_tk: Vec<Cost> = vec![];
        for _ in 0..rounds {
            cn.push(closenotify(peer.answer, n, &policy));
            c_step.push(c_api::step_loop(peer.answer, n));
            c_closer.push(c_api::closer(peer.answer, n));
            ro.push(rust_openssl(peer.answer, n));
            tk.push(tokio_openssl(peer.answer, n, true));
            tk_bare.push(tokio_openssl(peer.answer, n, false));
            #[cfg(feature = "tokio")]
            cn_tk.push(closenotify_tokio(peer.answer, n, &policy));
        }
        // Medians of each figure, in µs per connection.
        let per = |v: &Vec<Cost>, f: fn(&Cost) -> Duration| {
            median(v.iter().map(|c| us(f(c)) / n as f64).collect())
        };
        let row = |v: &Vec<Cost>| {
            let (u, s, w) = (per(v, |c| c.user), per(v, |c| c.system), per(v, |c| c.wall));
            let cpu = median(v.iter().map(|c| us(c.user + c.system) / n as f64).collect());
            (cpu, u, s, w)
        };
        let (cn_cpu, cn_user, cn_sys, cn_wall) = row(&cn);
        let (ro_cpu, ro_user, ro_sys, ro_wall) = row(&ro);
        let (tk_cpu, tk_user, tk_sys, tk_wall) = row(&tk);
        let (tb_cpu, tb_user, tb_sys, tb_wall) = row(&tk_bare);
        let (cs_cpu, cs_user, cs_sys, cs_wall) = row(&c_step);
        let (cc_cpu, cc_user, cc_sys, cc_wall) = row(&c_closer);
        println!(
            "  {:<36} {:>8} {:>10} {:>10} {:>13}",
            "µs per connection", "CPU", "user", "system", "wall"
        );
        let mut rows = vec![
            (
                "closenotify Closer (1 thread)",
                cn_cpu,
                cn_user,
                cn_sys,
                cn_wall,
            ),
            (
                "C step API, a poll() loop",
                cs_cpu,
                cs_user,
                cs_sys,
                cs_wall,
            ),
            (
                "C closer (closenotify_closer)",
                cc_cpu,
                cc_user,
                cc_sys,
                cc_wall,
            ),
            (
                "rust-openssl shutdown() loop",
                ro_cpu,
                ro_user,
                ro_sys,
                ro_wall,
            ),
            (
                "tokio-openssl shutdown + EOF",
                tk_cpu,
                tk_user,
                tk_sys,
                tk_wall,
            ),
            (
                "  the same, without the timeout",
                tb_cpu,
                tb_user,
                tb_sys,
                tb_wall,
            ),
        ];
        let tokio_row = (!cn_tk.is_empty()).then(|| row(&cn_tk));
        if let Some((cpu, user, sys, wall)) = tokio_row {
            rows.push(("closenotify::tokio::shutdown", cpu, user, sys, wall));
        }
        for (name, cpu, user, sys, wall) in rows {
            println!("  {name:<36} {cpu:>8.2} {user:>10.2} {sys:>10.2} {wall:>13.2}");
        }
        println!(
            "  CPU ratios: Closer / tokio-openssl = {:.2} (target <= 0.95), C step API / Closer = {:.2} and C closer / Closer = {:.2} (targets <= 1.05)",
            cn_cpu / tk_cpu,
            cs_cpu / cn_cpu,
            cc_cpu / cn_cpu
        );
        println!(
            "  the tokio timer: tokio-openssl with - without its timeout = {:.2} µs CPU, {:.2} µs wall per connection",
            tk_cpu - tb_cpu,
            tk_wall - tb_wall
        );
        let timer = tokio_timer_cost(if quick { 20_000 } else { 200_000 }, rounds);
        println!(
            "  the tokio timer alone (one Sleep armed and cancelled per task, as each bounded shutdown does): {timer:.3} µs CPU per task"
        );
        if let Some((cpu, _, _, wall)) = tokio_row {
            println!(
                "  closenotify::tokio / tokio-openssl (with its timeout): CPU {:.2}, wall {:.2}",
                cpu / tk_cpu,
                wall / tk_wall
            );
        }
        let fig = |cpu: f64, user: f64, sys: f64, wall: f64| json!({ "cpu_us": cpu, "user_us": user, "system_us": sys, "wall_us": wall });
        let mut out = json!({
            "connections": n, "rounds": rounds,
            "closenotify": fig(cn_cpu, cn_user, cn_sys, cn_wall),
            "rust_openssl": fig(ro_cpu, ro_user, ro_sys, ro_wall),
            "tokio_openssl": fig(tk_cpu, tk_user, tk_sys, tk_wall),
            "tokio_openssl_without_timeout": fig(tb_cpu, tb_user, tb_sys, tb_wall),
            "c_step": fig(cs_cpu, cs_user, cs_sys, cs_wall),
            "c_closer": fig(cc_cpu, cc_user, cc_sys, cc_wall),
            "c_step_ratio_vs_closer": cs_cpu / cn_cpu,
            "c_closer_ratio_vs_closer": cc_cpu / cn_cpu,
            "ratio_vs_rust_openssl": cn_cpu / ro_cpu,
            "ratio_vs_tokio_openssl": cn_cpu / tk_cpu,
            "tokio_timer_cpu_us": timer,
        });
        if let Some((cpu, user, sys, wall)) = tokio_row {
            out["closenotify_tokio"] = fig(cpu, user, sys, wall);
            out["closenotify_tokio_ratio_vs_tokio_openssl"] = json!(cpu / tk_cpu);
        }
        out
    }

    /// The Closer, on this thread, with its own poll.
    pub fn closenotify(addr: SocketAddr, n: usize, policy: &Policy) -> Cost {
        let conns = establish_mio(addr, n);
        let (cost, clean) = measure(|| {
            let mut closer: Closer = Closer::new(policy).unwrap();
            for c in conns {
                closer.add(c, ()).unwrap();
            }
            closer.finish().unwrap();
            closer
                .reports()
                .filter(|(_, r)| r.outcome == Outcome::Clean)
                .count()
        });
        assert_eq!(clean, n, "closenotify: not every shutdown was clean");
        cost
    }

    /// The cost floor of OpenSSL itself: `shutdown()` until `Received`, blocking.
    pub fn rust_openssl(addr: SocketAddr, n: usize) -> Cost {
        let conns = establish(addr, n, |t| t);
        let (cost, ()) = measure(|| {
            for mut c in conns {
                loop {
                    match c.shutdown() {
                        Ok(ShutdownResult::Received) => break,
                        Ok(ShutdownResult::Sent) => {}
                        Err(e) => panic!("rust-openssl shutdown: {e}"),
                    }
                }
            }
        });
        cost
    }

    /// What Rust users write today: `shutdown().await`, then read to EOF under a
    /// timeout (`timer`; without it, the cost of tokio's timer is the difference),
    /// one task per connection on a current-thread runtime.
    pub fn tokio_openssl(addr: SocketAddr, n: usize, timer: bool) -> Cost {
        let (rt, conns) = tokio_setup(addr, n);
        let (cost, clean) = measure(|| tokio_close_with(&rt, conns, timer));
        assert_eq!(clean, n, "tokio-openssl: not every shutdown completed");
        cost
    }

    /// What the timer of a bounded tokio shutdown costs by itself: `n` tasks that
    /// each arm a `Sleep` (registered in tokio's timer wheel) and drop it before it
    /// fires (cancelled), against the same tasks without it, on a current-thread
    /// runtime; the median of `rounds` differences, in µs of CPU per task. A whole
    /// shutdown costs too much, and varies too much, to show it.
    pub fn tokio_timer_cost(n: usize, rounds: usize) -> f64 {
        use std::future::Future;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = |timer: bool| {
            let (cost, ()) = measure(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..n)
                        .map(|_| {
                            tokio::spawn(async move {
                                if timer {
                                    let deadline =
                                        tokio::time::Instant::now() + Duration::from_secs(3);
                                    let mut sleep =
                                        std::pin::pin!(tokio::time::sleep_until(deadline));
                                    std::future::poll_fn(|cx| {
                                        let _ = sleep.as_mut().poll(cx);
                                        std::task::Poll::Ready(())
                                    })
                                    .await;
                                }
                                tokio::task::yield_now().await;
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
            });
            us(cost.user + cost.system) / n as f64
        };
        median((0..rounds.max(3)).map(|_| run(true) - run(false)).collect())
    }

    /// `closenotify::tokio::shutdown` instead, one task per connection on the same
    /// runtime: bounded by the policy (one tokio timer per shutdown), with a report.
    #[cfg(feature = "tokio")]
    pub fn closenotify_tokio(addr: SocketAddr, n: usize, policy: &Policy) -> Cost {
        let (rt, conns) = tokio_setup(addr, n);
        let (cost, clean) = measure(|| closenotify_tokio_close(&rt, conns, policy));
        assert_eq!(clean, n, "closenotify::tokio: not every shutdown was clean");
        cost
    }

    /// Shuts every connection down with `closenotify::tokio`; returns how many
    /// were clean.
    #[cfg(feature = "tokio")]
    pub fn closenotify_tokio_close(
        rt: &tokio::runtime::Runtime,
        conns: Vec<TokioStream>,
        policy: &Policy,
    ) -> usize {
        rt.block_on(async {
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut s| {
                    let policy = policy.clone();
                    tokio::spawn(async move {
                        closenotify::tokio::shutdown(&mut s, &policy)
                            .await
                            .is_ok_and(|r| r.outcome == Outcome::Clean)
                    })
                })
                .collect();
            let mut clean = 0;
            for t in tasks {
                if t.await.unwrap() {
                    clean += 1;
                }
            }
            clean
        })
    }

    pub type TokioStream = tokio_openssl::SslStream<tokio::net::TcpStream>;

    /// A current-thread runtime and `n` connections established on it.
    pub fn tokio_setup(addr: SocketAddr, n: usize) -> (tokio::runtime::Runtime, Vec<TokioStream>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = client_ctx();
        let conns = rt.block_on(async {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let mut s = tokio_openssl::SslStream::new(Ssl::new(&ctx).unwrap(), tcp).unwrap();
                std::pin::Pin::new(&mut s).connect().await.unwrap();
                v.push(s);
            }
            v
        });
        (rt, conns)
    }

    /// Shuts every connection down; returns how many saw the peer's close_notify.
    pub fn tokio_close(rt: &tokio::runtime::Runtime, conns: Vec<TokioStream>) -> usize {
        tokio_close_with(rt, conns, true)
    }

    /// `tokio_close`, the read to EOF under a timeout or not (`timer`).
    pub fn tokio_close_with(
        rt: &tokio::runtime::Runtime,
        conns: Vec<TokioStream>,
        timer: bool,
    ) -> usize {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        rt.block_on(async {
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut s| {
                    tokio::spawn(async move {
                        s.shutdown().await.ok()?;
                        let mut buf = [0u8; 1024];
                        let to_eof = async {
                            loop {
                                match s.read(&mut buf).await {
                                    Ok(0) => return Some(()),
                                    Ok(_) => {}
                                    Err(_) => return None,
                                }
                            }
                        };
                        if timer {
                            tokio::time::timeout(Duration::from_secs(3), to_eof)
                                .await
                                .ok()?
                        } else {
                            to_eof.await
                        }
                    })
                })
                .collect();
            let mut clean = 0;
            for t in tasks {
                if t.await.unwrap().is_some() {
                    clean += 1;
                }
            }
            clean
        })
    }
}

// --- the C API, called as a C program calls it ------------------------------------------

mod c_api {
    use super::*;
    use closenotify::capi::*;

    fn ok(rc: closenotify_result, what: &str) {
        assert_eq!(rc, CLOSENOTIFY_OK, "{what}");
    }

    /// The step API driven as a C poll() server drives it (as
    /// `examples/c/echo_server.c` did before the closer): one poll() over every
    /// pending socket, rebuilt on every wake-up, each socket stepped with its
    /// revents or at its deadline.
    pub fn step_loop(addr: SocketAddr, n: usize) -> Cost {
        let conns = establish_raw(addr, n);
        let (cost, clean) = measure(|| run_step_loop(conns));
        assert_eq!(clean, n, "C step API: not every shutdown was clean");
        cost
    }

    pub fn run_step_loop(conns: Vec<RawConn>) -> usize {
        struct Pending {
            conn: RawConn,
            sd: *mut closenotify_shutdown,
            events: i16,
            deadline: Instant,
            done: bool,
        }
        let mut clean = 0;
        let mut report = |sd: *mut closenotify_shutdown| {
            let mut r = std::mem::MaybeUninit::<closenotify_report>::zeroed();
            // SAFETY: a finished shutdown object; `r` is writable.
            ok(
                unsafe { closenotify_shutdown_report(sd, r.as_mut_ptr()) },
                "report",
            );
            // SAFETY: written by the call above.
            if unsafe { r.assume_init() }.outcome == CLOSENOTIFY_OUTCOME_CLEAN {
                clean += 1;
            }
            // SAFETY: the object is done with; freed once.
            unsafe { closenotify_shutdown_free(sd) };
        };
        let step = |sd, revents: i16| {
            let (mut wait, mut timeout) = (CLOSENOTIFY_WAIT_DONE, 0);
            // SAFETY: a live shutdown object; the outputs are writable.
            ok(
                unsafe {
                    closenotify_shutdown_step_revents(
                        sd,
                        i32::from(revents),
                        &mut wait,
                        &mut timeout,
                    )
                },
                "step",
            );
            (
                wait,
                Instant::now() + Duration::from_millis(timeout.max(0) as u64),
            )
        };
        let mut pending: Vec<Pending> = Vec::with_capacity(conns.len());
        for conn in conns {
            let mut sd = std::ptr::null_mut();
            // SAFETY: the SSL and its fd, valid; the default policy.
            ok(
                unsafe { closenotify_shutdown_new(conn.ssl, conn.fd(), std::ptr::null(), &mut sd) },
                "shutdown_new",
            );
            match step(sd, 0) {
                (CLOSENOTIFY_WAIT_DONE, _) => report(sd),
                (wait, deadline) => pending.push(Pending {
                    conn,
                    sd,
                    events: if wait == CLOSENOTIFY_WAIT_WRITE {
                        libc::POLLOUT
                    } else {
                        libc::POLLIN
                    },
                    deadline,
                    done: false,
                }),
            }
        }
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            pfds.clear();
            pfds.extend(pending.iter().map(|p| libc::pollfd {
                fd: p.conn.fd(),
                events: p.events,
                revents: 0,
            }));
            let now = Instant::now();
            let earliest = pending.iter().map(|p| p.deadline).min().unwrap();
            let timeout = earliest.saturating_duration_since(now).as_millis() as i32;
            // SAFETY: `pfds` holds `len` pollfds.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            let now = Instant::now();
            for (p, pfd) in pending.iter_mut().zip(&pfds) {
                if pfd.revents == 0 && now < p.deadline {
                    continue;
                }
                match step(p.sd, pfd.revents) {
                    (CLOSENOTIFY_WAIT_DONE, _) => {
                        report(p.sd);
                        p.done = true;
                    }
                    (wait, deadline) => {
                        p.events = if wait == CLOSENOTIFY_WAIT_WRITE {
                            libc::POLLOUT
                        } else {
                            libc::POLLIN
                        };
                        p.deadline = deadline;
                    }
                }
            }
            // The finished leave: SSL_free, close.
            pending.retain(|p| !p.done);
        }
        clean
    }

    /// `closenotify_closer`: one call per connection, then the host's loop on its
    /// fd and timeout until every report is in.
    pub fn closer(addr: SocketAddr, n: usize) -> Cost {
        let conns = establish_raw(addr, n);
        let (cost, clean) = measure(|| run_closer(conns));
        assert_eq!(clean, n, "C closer: not every shutdown was clean");
        cost
    }

    pub fn run_closer(conns: Vec<RawConn>) -> usize {
        let n = conns.len();
        let mut closer = std::ptr::null_mut();
        // SAFETY: the default policy; `closer` is writable.
        ok(
            unsafe { closenotify_closer_new(std::ptr::null(), &mut closer) },
            "closer_new",
        );
        for (i, conn) in conns.into_iter().enumerate() {
            let (ssl, fd) = conn.into_raw();
            // SAFETY: a live closer; the SSL and the fd are given away.
            ok(
                unsafe { closenotify_closer_add(closer, ssl, fd, std::ptr::null(), i as u64) },
                "closer_add",
            );
        }
        let mut done: Vec<closenotify_closed> = Vec::with_capacity(64);
        let (mut reports, mut clean) = (0, 0);
        // SAFETY: a live closer.
        let cfd = unsafe { closenotify_closer_fd(closer) };
        while reports < n {
            let mut pfd = libc::pollfd {
                fd: cfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: a live closer; one pollfd.
            unsafe { libc::poll(&mut pfd, 1, closenotify_closer_timeout_ms(closer)) };
            // SAFETY: a live closer.
            ok(unsafe { closenotify_closer_process(closer) }, "process");
            loop {
                let mut got = 0;
                // SAFETY: `done` has room for 64 elements; `got` is writable.
                ok(
                    unsafe { closenotify_closer_reports(closer, done.as_mut_ptr(), 64, &mut got) },
                    "reports",
                );
                // SAFETY: the call wrote `got` <= 64 elements.
                unsafe { done.set_len(got) };
                reports += got;
                clean += done
                    .iter()
                    .filter(|d| d.report.outcome == CLOSENOTIFY_OUTCOME_CLEAN)
                    .count();
                done.clear();
                if got < 64 {
                    break;
                }
            }
        }
        // SAFETY: a live closer, freed once; its connections are closed.
        unsafe {
            ok(closenotify_closer_finish(closer), "finish");
            closenotify_closer_free(closer);
        }
        clean
    }
}

// --- 3. mass close ---------------------------------------------------------------------

mod mass {
    use super::*;

    pub fn run(peer: &peer::Peer, quick: bool) -> Value {
        let limit = fd_limit() as usize;
        let mut sizes: Vec<usize> = if quick {
            vec![500]
        } else {
            vec![1000, 2500, 5000, 10_000, 15_000, 19_000]
        };
        sizes.retain(|&n| n + 200 <= limit);
        println!("\n3. Mass close: N connections shut down at once on one thread (peers answer)");
        println!(
            "  {:>7} {:>12} {:>12} {:>14} {:>14} {:>12}",
            "N", "last report", "per conn", "peak RSS MiB", "RSS delta/conn", "peer CPU"
        );
        let mut rows = vec![];
        for &n in &sizes {
            let conns = establish_mio(peer.answer, n);
            heap_in_use();
            reset_peak_rss();
            let rss0 = rss_bytes();
            let peer_cpu0 = peer.cpu();
            let mut closer: Closer = Closer::new(&Policy::default()).unwrap();
            let start = Instant::now();
            for c in conns {
                closer.add(c, ()).unwrap();
            }
            closer.finish().unwrap();
            let last = start.elapsed();
            let peer_cpu = peer.cpu().saturating_sub(peer_cpu0);
            let clean = closer
                .reports()
                .filter(|(_, r)| r.outcome == Outcome::Clean)
                .count();
            assert_eq!(clean, n);
            let peak = peak_rss_bytes();
            println!(
                "  {:>7} {:>10.1}ms {:>10.2}µs {:>14.1} {:>14} {:>10.1}ms",
                n,
                last.as_secs_f64() * 1e3,
                us(last) / n as f64,
                peak as f64 / 1048576.0,
                (peak.saturating_sub(rss0)) / n as u64,
                peer_cpu.as_secs_f64() * 1e3
            );
            rows.push(json!({
                "connections": n,
                "last_report_ms": last.as_secs_f64() * 1e3,
                "peak_rss_bytes": peak,
                "rss_before_bytes": rss0,
                "peer_cpu_ms": peer_cpu.as_secs_f64() * 1e3,
            }));
        }
        // Two Closers on two threads, the connections sharded between them by the
        // caller (a server with a thread per core), against the same one-thread
        // peer process.
        let sharded_sizes: Vec<usize> = sizes
            .iter()
            .copied()
            .filter(|&n| quick || n >= 5000)
            .collect();
        println!("  Two Closers on two threads, N/2 connections each:");
        let mut sharded = vec![];
        for &n in &sharded_sizes {
            let mut conns = establish_mio(peer.answer, n);
            let second = conns.split_off(n / 2);
            let peer_cpu0 = peer.cpu();
            let start = Instant::now();
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = [conns, second]
                .into_iter()
                .map(|half| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        let (cost, clean) = measure(|| {
                            let mut closer: Closer = Closer::new(&Policy::default()).unwrap();
                            for c in half {
                                closer.add(c, ()).unwrap();
                            }
                            closer.finish().unwrap();
                            closer
                                .reports()
                                .filter(|(_, r)| r.outcome == Outcome::Clean)
                                .count()
                        });
                        (cost, clean)
                    })
                })
                .collect();
            let results: Vec<(Cost, usize)> =
                threads.into_iter().map(|t| t.join().unwrap()).collect();
            let last = start.elapsed();
            let peer_cpu = peer.cpu().saturating_sub(peer_cpu0);
            assert_eq!(results.iter().map(|r| r.1).sum::<usize>(), n);
            let cpu: Duration = results.iter().map(|(c, _)| c.user + c.system).sum();
            println!(
                "  {:>7} {:>10.1}ms {:>10.2}µs   closers' CPU {:.1} ms, peer CPU {:.1} ms",
                n,
                last.as_secs_f64() * 1e3,
                us(last) / n as f64,
                cpu.as_secs_f64() * 1e3,
                peer_cpu.as_secs_f64() * 1e3
            );
            sharded.push(json!({
                "connections": n,
                "last_report_ms": last.as_secs_f64() * 1e3,
                "closers_cpu_ms": cpu.as_secs_f64() * 1e3,
                "peer_cpu_ms": peer_cpu.as_secs_f64() * 1e3,
            }));
        }
        let cost = pending_cost(peer, if quick { 500 } else { 10_000.min(limit - 200) });
        json!({ "runs": rows, "two_threads": sharded, "pending_cost": cost })
    }

    /// What an idle connection costs, and what it costs once it is a pending
    /// shutdown (buffers released, waiting for a silent peer).
    fn pending_cost(peer: &peer::Peer, n: usize) -> Value {
        // OpenSSL's own floor: the same connections with their record buffers
        // freed (`SSL_free_buffers`), what no shutdown can go below.
        let floor = {
            let heap0 = heap_in_use();
            let conns = establish_mio(peer.silent, n);
            for c in &conns {
                // SAFETY: a valid SSL; SSL_free_buffers frees only empty buffers.
                unsafe { SSL_free_buffers(foreign_types::ForeignTypeRef::as_ptr(c.ssl())) };
            }
            let floor = heap_in_use().saturating_sub(heap0) / n as u64;
            drop(conns);
            floor
        };
        let (heap0, rss0) = (heap_in_use(), rss_bytes());
        let conns = establish_mio(peer.silent, n);
        let (heap1, rss1) = (heap_in_use(), rss_bytes());
        // Silent peers: the shutdowns stay pending until the timeout.
        let mut closer: Closer = Closer::new(&silent_policy(Duration::from_secs(1))).unwrap();
        for c in conns {
            closer.add(c, ()).unwrap();
        }
        assert_eq!(closer.pending(), n);
        let (heap2, rss2) = (heap_in_use(), rss_bytes());
        let per = |a: u64, b: u64| b.saturating_sub(a) / n as u64;
        println!(
            "  Per connection ({n} connections, heap = glibc in-use bytes after malloc_trim):"
        );
        println!(
            "    open idle connection:  heap {:>6} B   RSS {:>6} B",
            per(heap0, heap1),
            per(rss0, rss1)
        );
        println!(
            "    pending shutdown:      heap {:>6} B   RSS {:>6} B   ({:.0}% of an idle connection's heap)",
            per(heap0, heap2),
            per(rss0, rss2),
            100.0 * per(heap0, heap2) as f64 / per(heap0, heap1).max(1) as f64
        );
        println!(
            "    idle, buffers freed:   heap {:>6} B   (OpenSSL's own state: {:.0}% of an idle connection's heap)",
            floor,
            100.0 * floor as f64 / per(heap0, heap1).max(1) as f64
        );
        closer.finish().unwrap();
        json!({
            "connections": n,
            "openssl_floor_heap_bytes": floor,
            "idle_heap_bytes": per(heap0, heap1),
            "idle_rss_bytes": per(rss0, rss1),
            "pending_heap_bytes": per(heap0, heap2),
            "pending_rss_bytes": per(rss0, rss2),
        })
    }
}

// --- 4. deadline queue -------------------------------------------------------------------

mod queue {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    pub fn run(quick: bool) -> Value {
        let sizes: Vec<usize> = if quick {
            vec![1000, 100_000]
        } else {
            vec![1000, 100_000, 1_000_000]
        };
        let ops = if quick { 200_000 } else { 2_000_000 };
        println!(
            "\n4. Deadline queue, fake clock: cost per timeout with N pending ({ops} timeouts)"
        );
        println!(
            "  {:>9} {:>16} {:>16}",
            "N", "lanes ns/timeout", "BinaryHeap ns"
        );
        let mut rows = vec![];
        for &n in &sizes {
            let lanes = lanes(n, ops);
            let heap = heap(n, ops);
            println!("  {:>9} {:>16.1} {:>16.1}", n, lanes, heap);
            rows.push(json!({ "pending": n, "lanes_ns": lanes, "binary_heap_ns": heap }));
        }
        let first = rows[0]["lanes_ns"].as_f64().unwrap();
        let last = rows.last().unwrap()["lanes_ns"].as_f64().unwrap();
        println!(
            "  lanes: cost at {} pending / cost at 1000 = {:.2} (target <= 2)",
            sizes.last().unwrap(),
            last / first
        );
        json!({ "timeouts": ops, "runs": rows, "ratio_largest_vs_1000": last / first })
    }

    /// Steady state with `n` pending: two timeouts in use (a flush and a peer
    /// timeout), one deadline expires and one new connection arrives per step, as
    /// in a server closing connections at a constant rate.
    fn lanes(n: usize, ops: usize) -> f64 {
        let t0 = Instant::now();
        let tick = Duration::from_nanos(1000);
        let (short, long) = (tick * n as u32, tick * (2 * n) as u32);
        let mut q = DeadlineQueue::new();
        let mut now = t0;
        for i in 0..n {
            now += tick;
            q.push(now + if i % 2 == 0 { short } else { long }, i as u64);
        }
        let start = Instant::now();
        let mut popped = 0u64;
        for i in 0..ops {
            now += tick;
            q.push(now + if i % 2 == 0 { short } else { long }, i as u64);
            while let Some((_, k)) = q.pop_expired(now) {
                popped = popped.wrapping_add(k);
            }
        }
        std::hint::black_box(popped);
        start.elapsed().as_nanos() as f64 / ops as f64
    }

    fn heap(n: usize, ops: usize) -> f64 {
        let t0 = Instant::now();
        let tick = Duration::from_nanos(1000);
        let (short, long) = (tick * n as u32, tick * (2 * n) as u32);
        let mut q = BinaryHeap::new();
        let mut now = t0;
        for i in 0..n {
            now += tick;
            q.push(Reverse((
                now + if i % 2 == 0 { short } else { long },
                i as u64,
            )));
        }
        let start = Instant::now();
        let mut popped = 0u64;
        for i in 0..ops {
            now += tick;
            q.push(Reverse((
                now + if i % 2 == 0 { short } else { long },
                i as u64,
            )));
            while q.peek().is_some_and(|Reverse((d, _))| *d <= now) {
                let Reverse((_, k)) = q.pop().unwrap();
                popped = popped.wrapping_add(k);
            }
        }
        std::hint::black_box(popped);
        start.elapsed().as_nanos() as f64 / ops as f64
    }
}

// --- 5. timeout precision ----------------------------------------------------------------

mod precision {
    use super::*;

    pub fn run(peer: &peer::Peer, quick: bool) -> Value {
        let n = if quick { 500 } else { 10_000 };
        let timeout = Duration::from_millis(500);
        println!("\n5. Timeout precision: {n} silent peers, peer_timeout {timeout:?}");
        let heap0 = heap_in_use();
        let conns = establish_mio(peer.silent, n);
        let mut closer: Closer<usize> = Closer::new(&silent_policy(timeout)).unwrap();
        let mut deadlines = Vec::with_capacity(n);
        for (i, c) in conns.into_iter().enumerate() {
            // Taken just before the hand-over: the Closer's own deadline is a few
            // microseconds later, so lateness is overstated by that much at most.
            deadlines.push(Instant::now() + timeout);
            closer.add(c, i).unwrap();
        }
        let mut late = Vec::with_capacity(n);
        while closer.pending() > 0 {
            closer.poll(None).unwrap();
            let now = Instant::now();
            for (i, r) in closer.reports() {
                assert_eq!(r.outcome, Outcome::TimedOut);
                late.push(now.saturating_duration_since(deadlines[i]).as_secs_f64() * 1e3);
            }
        }
        // The reports came first; the teardown follows in idle time: the heap the
        // connections held comes back once the closer is done.
        let heap_reported = heap_in_use();
        let waited = Instant::now();
        while closer.next_deadline().is_some() {
            closer.poll(None).unwrap();
        }
        let teardown = waited.elapsed();
        let heap_done = heap_in_use();
        drop(closer);
        let heap_dropped = heap_in_use();
        let per = |h: u64| h.saturating_sub(heap0) as f64 / n as f64;
        println!(
            "  heap above the start, per connection: {:.0} B at the last report, {:.0} B once the Closer is idle ({:.1} ms later: its slab and queues stay at their high-water mark), {:.0} B once it is dropped",
            per(heap_reported),
            per(heap_done),
            teardown.as_secs_f64() * 1e3,
            per(heap_dropped)
        );
        late.sort_by(f64::total_cmp);
        let (p50, p99, max) = (
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            *late.last().unwrap(),
        );
        println!("  lateness of timed_out reports: median {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (target p99 <= 5 ms)");
        json!({
            "peers": n, "timeout_ms": 500, "median_ms": p50, "p99_ms": p99, "max_ms": max,
            "heap_per_conn_at_last_report": per(heap_reported),
            "heap_per_conn_when_idle": per(heap_done),
            "heap_per_conn_after_drop": per(heap_dropped),
            "teardown_ms": teardown.as_secs_f64() * 1e3,
        })
    }
}

// --- 2. system calls (driven by scripts/syscalls.sh) -------------------------------------

mod syscalls {
    use super::*;

    /// Establishes `n` connections, prints `READY <tid>`, waits for a line on stdin
    /// (the script attaches strace to this thread meanwhile), shuts them all down
    /// with `which`, prints `DONE`, and waits for a last line before exiting.
    pub fn main(which: &str, n: usize) {
        let peer = peer::Peer::spawn();
        let policy = Policy::default();
        let stdin = io::stdin();
        let mut line = String::new();
        // Set up, then hand the thread over to strace.
        let run: Box<dyn FnOnce()> = match which {
            "closenotify" => {
                let conns = establish_mio(peer.answer, n);
                Box::new(move || {
                    let mut closer: Closer = Closer::new(&policy).unwrap();
                    for c in conns {
                        closer.add(c, ()).unwrap();
                    }
                    closer.finish().unwrap();
                })
            }
            "c-step" => {
                let conns = establish_raw(peer.answer, n);
                Box::new(move || {
                    c_api::run_step_loop(conns);
                })
            }
            "c-closer" => {
                let conns = establish_raw(peer.answer, n);
                Box::new(move || {
                    c_api::run_closer(conns);
                })
            }
            "rust-openssl" => {
                let conns = establish(peer.answer, n, |t| t);
                Box::new(move || {
                    for mut c in conns {
                        while !matches!(c.shutdown(), Ok(ShutdownResult::Received) | Err(_)) {}
                    }
                })
            }
            "tokio-openssl" => {
                let (rt, conns) = per_shutdown::tokio_setup(peer.answer, n);
                Box::new(move || {
                    per_shutdown::tokio_close(&rt, conns);
                })
            }
            #[cfg(feature = "tokio")]
            "closenotify-tokio" => {
                let (rt, conns) = per_shutdown::tokio_setup(peer.answer, n);
                Box::new(move || {
                    per_shutdown::closenotify_tokio_close(&rt, conns, &policy);
                })
            }
            other => panic!("unknown implementation {other}"),
        };
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        println!("READY {tid}");
        io::stdout().flush().unwrap();
        stdin.lock().read_line(&mut line).unwrap();
        run();
        println!("DONE");
        io::stdout().flush().unwrap();
        line.clear();
        stdin.lock().read_line(&mut line).unwrap();
    }
}

// --- the peer process -------------------------------------------------------------------

mod peer {
    use super::*;
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};

    pub const ENV: &str = "CLOSENOTIFY_BENCH_PEER";

    /// The peer process: `answer` answers close_notify, `silent` never does.
    pub struct Peer {
        child: Child,
        pub answer: SocketAddr,
        pub silent: SocketAddr,
    }

    impl Peer {
        pub fn spawn() -> Peer {
            let mut child = Command::new(env::current_exe().unwrap())
                .env(ENV, "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("peer process");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let mut it = line.split_whitespace().skip(1).map(|a| a.parse().unwrap());
            let (answer, silent) = (it.next().unwrap(), it.next().unwrap());
            Peer {
                child,
                answer,
                silent,
            }
        }
    }

    impl Peer {
        /// CPU time the peer process has used so far (user + system).
        pub fn cpu(&self) -> Duration {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default();
            // After the command name's closing parenthesis: fields 3.., of which
            // utime and stime are the 14th and 15th of the whole line.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // SAFETY: sysconf has no memory effects.
            let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            Duration::from_micros(f.iter().sum::<u64>() * 1_000_000 / tick)
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    enum St {
        Handshake,
        Read,
        Answer,
        Drain,
        /// Silent: never answers, never closes; an RST (our timeout) ends it.
        Hold,
    }

    struct Conn {
        s: SslStream<mio::net::TcpStream>,
        answer: bool,
        st: St,
        /// When a silent connection saw our FIN.
        fin_at: Option<Instant>,
    }

    /// How long a silent peer holds a connection after our FIN: longer than any
    /// peer timeout the benchmark uses, so that our side always times out first.
    const HOLD: Duration = Duration::from_secs(2);

    const ANSWER: Token = Token(0);
    const SILENT: Token = Token(1);

    pub fn main() {
        let (cert, key) = closenotify::doc_support::self_signed("localhost").unwrap();
        let mut b = SslContextBuilder::new(SslMethod::tls_server()).unwrap();
        b.set_certificate(&cert).unwrap();
        b.set_private_key(&key).unwrap();
        b.set_num_tickets(0).unwrap();
        let ctx = b.build();
        let mut poll = Poll::new().unwrap();
        let listeners = [ANSWER, SILENT].map(|t| {
            let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            poll.registry()
                .register(&mut l, t, Interest::READABLE)
                .unwrap();
            l
        });
        println!(
            "PORTS {} {}",
            listeners[0].local_addr().unwrap(),
            listeners[1].local_addr().unwrap()
        );
        io::stdout().flush().unwrap();
        let mut conns: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut events = Events::with_capacity(1024);
        let mut held: std::collections::VecDeque<(Instant, usize)> = Default::default();
        loop {
            if poll
                .poll(&mut events, Some(Duration::from_millis(100)))
                .is_err()
            {
                continue;
            }
            // Let go of silent connections held long enough (or already gone).
            let now = Instant::now();
            while held.front().is_some_and(|&(t, _)| now >= t + HOLD) {
                let (t, i) = held.pop_front().unwrap();
                if conns[i].as_ref().is_some_and(|c| c.fin_at == Some(t)) {
                    conns[i] = None;
                    free.push(i);
                }
            }
            for event in events.iter() {
                let t = event.token().0;
                if t < 2 {
                    while let Ok((tcp, _)) = listeners[t].accept() {
                        tcp.set_nodelay(true).ok();
                        let i = free.pop().unwrap_or_else(|| {
                            conns.push(None);
                            conns.len() - 1
                        });
                        let mut s = SslStream::new(Ssl::new(&ctx).unwrap(), tcp).unwrap();
                        poll.registry()
                            .register(
                                s.get_mut(),
                                Token(i + 2),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .unwrap();
                        conns[i] = Some(Conn {
                            s,
                            answer: t == 0,
                            st: St::Handshake,
                            fin_at: None,
                        });
                        if !step(conns[i].as_mut().unwrap()) {
                            conns[i] = None;
                            free.push(i);
                        }
                    }
                } else if let Some(c) = conns[t - 2].as_mut() {
                    let was_held = c.fin_at.is_some();
                    if !step(c) {
                        conns[t - 2] = None;
                        free.push(t - 2);
                    } else if let (false, Some(at)) = (was_held, c.fin_at) {
                        held.push_back((at, t - 2));
                    }
                }
            }
        }
    }

    /// Makes all the progress possible; false when the connection is done.
    fn step(c: &mut Conn) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match c.st {
                St::Handshake => match c.s.accept() {
                    Ok(()) => c.st = St::Read,
                    Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                        return true
                    }
                    Err(_) => return false,
                },
                St::Read => match c.s.ssl_read(&mut buf) {
                    Ok(_) => {}
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        c.st = if c.answer { St::Answer } else { St::Hold }
                    }
                    Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                        return true
                    }
                    Err(_) => return false,
                },
                St::Answer => match c.s.shutdown() {
                    Ok(_) => c.st = St::Drain,
                    Err(e) if e.code() == ErrorCode::WANT_WRITE => return true,
                    Err(_) => return false,
                },
                St::Drain => match c.s.get_mut().read(&mut buf) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                },
                St::Hold => match c.s.get_mut().read(&mut buf) {
                    // Our half-close: keep holding for HOLD. After a FIN, Linux
                    // answers 0 before it reports an error, so an RST from our side
                    // shows up in SO_ERROR, not in read().
                    Ok(0) => {
                        if matches!(c.s.get_ref().take_error(), Ok(Some(_))) {
                            return false;
                        }
                        c.fin_at.get_or_insert_with(Instant::now);
                        return true;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                },
            }
        }
    }
}
