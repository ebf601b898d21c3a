//! `examples/cpp/asio_server.cpp`: a standalone-Asio TLS server
//! (`asio::ssl::stream<tcp::socket>` on one `io_context`) that, instead of
//! `async_shutdown`, hands each connection to a `closenotify_closer` running on
//! the same `io_context` (a `posix::stream_descriptor` on a dup of its fd, a
//! `steady_timer` on its deadlines). The handover takes an extra reference on
//! the `SSL*` (`SSL_up_ref`: the stream's destructor and the closer each drop
//! one), puts it on a socket BIO (`SSL_set_fd`, in place of Asio's BIO pair),
//! and `release()`s the socket so that only the closer closes the fd.
//!
//! The example is compiled with `c++ -std=c++17 -Wall -Wextra -Werror` against
//! the C library built from this tree (`util::cbuild`), then run against Rust
//! clients on real OpenSSL over loopback: one that answers the server's
//! close_notify (`clean`), one that never does and holds the connection
//! (`timed_out` after the 200 ms peer timeout), one that resets after the echo
//! (`reset`), fifty of those at once (each reported exactly once, the server's
//! fds back to where they were), and one that sends a second TLS record with
//! its line, which Asio has already pulled into its BIO pair (not handed over:
//! those bytes would be lost). The server must exit 0 after `--max-conns`.
//!
//! `CLOSENOTIFY_VALGRIND=1 cargo test --test asio` runs the server under
//! valgrind: a memory error (the `SSL*` freed twice, or used after a free) or a
//! definite leak (a reference never dropped) fails the test; only the upper time
//! bounds are widened in that mode.
//!
//! Needs a C++ compiler and Asio's headers (`apt-get install libasio-dev`, as
//! `.ci/run` does): without them the tests fail, saying so.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, ShutdownResult, Ssl, SslContext, SslStream};

use util::cbuild::{self, assert_no_valgrind_errors, run_limit, upper_ms};
use util::echo_client::{exchange, expect_close_notify, expect_echo, tcp_connect, tls_connect};
use util::process::{self, check_tool, Pems, Proc};
use util::{read_until_close_notify, reset_on_drop, wait_eof, Contexts, Corkable, Tls};

/// The server's peer timeout in these tests.
const PEER_MS: u64 = 200;

/// Scheduling slack allowed past a bound (a loaded machine).
const SLACK_MS: u64 = 1000;

/// The flags the example must compile with.
const CXXFLAGS: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-g"];

// ---------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------

fn asio_server() -> &'static Path {
    static PROGRAM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PROGRAM.get_or_init(compile) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `c++ CXXFLAGS examples/cpp/asio_server.cpp -o DIR/asio_server` with the link
/// flags of the C programs (the library of this tree, OpenSSL) and `-lpthread`.
fn compile() -> Result<PathBuf, String> {
    check_tool("c++", "--version")?;
    check_asio_headers()?;
    let (dir, mut flags) = cbuild::prepare()?;
    flags.push("-lpthread".into());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cpp/asio_server.cpp");
    cbuild::compile_with("c++", CXXFLAGS, &src, &dir, "asio_server", &flags)
}

/// Asio's headers are there: `<asio.hpp>` and `<asio/ssl.hpp>` compile.
fn check_asio_headers() -> Result<(), String> {
    let probe = b"#include <asio.hpp>\n#include <asio/ssl.hpp>\nint main() { return 0; }\n";
    let ran = process::run(
        "c++",
        &["-std=c++17", "-fsyntax-only", "-x", "c++", "-"],
        probe,
        Duration::from_secs(60),
    );
    if ran.status.success() {
        return Ok(());
    }
    Err(format!(
        "tests/asio.rs needs Asio's headers (<asio.hpp>, <asio/ssl.hpp>), which do not \
         compile here: install them with `apt-get install libasio-dev` (.ci/run does) \
         instead of skipping these tests.\n{}",
        ran.stderr
    ))
}

struct Server {
    proc: Proc,
    port: u16,
    _pems: Pems,
}

impl Server {
    /// Starts the server on a free loopback port, with a 200 ms peer timeout,
    /// to exit after `max_conns` connections; returns once it listens.
    fn start(max_conns: usize) -> Server {
        let pems = Pems::write();
        let (peer, max) = (PEER_MS.to_string(), max_conns.to_string());
        let args = [
            "--cert",
            pems.cert(),
            "--key",
            pems.key(),
            "--listen-port",
            "0",
            "--peer-timeout-ms",
            &peer,
            "--max-conns",
            &max,
        ];
        let mut proc = cbuild::spawn_c(asio_server(), &args);
        let line = proc.next_line("the listening line", run_limit());
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a listening line: {line:?}: {}", proc.transcript()));
        Server {
            proc,
            port,
            _pems: pems,
        }
    }

    /// The next line, a connection's end, parsed.
    fn report(&mut self, limit: Duration) -> cbuild::Fields {
        let line = self.proc.next_line("a report line", limit);
        cbuild::Fields::parse(&line, self.proc.transcript())
    }

    /// Descriptors the server has open now.
    fn open_fds(&self) -> Vec<String> {
        process::open_fds(self.proc.pid())
    }

    /// Waits (bounded) until the server's fds are `baseline` again.
    fn expect_fds(&self, baseline: &[String]) {
        let now = process::fds_back_to(self.proc.pid(), baseline, Duration::from_secs(5));
        assert_eq!(
            now,
            baseline,
            "the server's fds before the clients and after their reports: {}",
            self.proc.transcript()
        );
    }

    /// Fails the test, with the server's transcript, when a client did not see
    /// what it should.
    #[track_caller]
    fn client_ok(&self, what: impl std::fmt::Display, seen: Result<(), String>) {
        if let Err(e) = seen {
            panic!("{what}: {e}\n{}", self.proc.transcript());
        }
    }

    /// Waits for the exit: status 0, valgrind clean in valgrind mode, and
    /// `lines` stdout lines in all (the listening line included).
    fn expect_clean_exit(&mut self, lines: usize) {
        let (status, out) = self.proc.wait_exit(run_limit());
        let transcript = self.proc.transcript();
        assert_no_valgrind_errors(status, &transcript);
        assert!(status.success(), "exited with {status}: {transcript}");
        assert_eq!(out.len(), lines, "stdout lines: {transcript}");
    }
}

// ---------------------------------------------------------------------------
// The clients: Rust on real OpenSSL.
// ---------------------------------------------------------------------------

fn connect(port: u16, ctx: &SslContext) -> SslStream<TcpStream> {
    try_connect(port, ctx).unwrap_or_else(|e| panic!("{e}"))
}

fn try_connect(port: u16, ctx: &SslContext) -> Result<SslStream<TcpStream>, String> {
    let tcp = tcp_connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    tls_connect(tcp, ctx)
}

/// After the server's close_notify: the end of its transport is a FIN (EOF),
/// not an RST.
fn expect_fin(s: &mut SslStream<TcpStream>) -> Result<(), String> {
    match wait_eof(s.get_mut()) {
        None => Ok(()),
        Some(kind) => Err(format!("the server's end: {kind:?}, not EOF")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// Reads the server's close_notify, answers it, then sees the FIN.
    Clean,
    /// Never answers, holds the connection until released; then finds the
    /// server's close_notify waiting, and the FIN.
    Silent,
    /// Resets (SO_LINGER {1, 0}, close) right after the echo.
    Resetting,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Clean, Kind::Silent, Kind::Resetting];

    /// The outcome the server's report must name.
    fn outcome(self) -> &'static str {
        match self {
            Kind::Clean => "clean",
            Kind::Silent => "timed_out",
            Kind::Resetting => "reset",
        }
    }
}

/// One client, after its exchange with the server. `release`: when a silent
/// client may look at how the server ended (after its report).
fn finish_client(
    kind: Kind,
    mut s: SslStream<TcpStream>,
    release: mpsc::Receiver<()>,
) -> Result<(), String> {
    match kind {
        Kind::Clean => {
            expect_close_notify(&mut s)?;
            match s.shutdown() {
                // Both close_notify alerts exchanged.
                Ok(ShutdownResult::Received) => {}
                other => return Err(format!("our close_notify: {other:?}")),
            }
            expect_fin(&mut s)
        }
        Kind::Silent => {
            release
                .recv_timeout(2 * run_limit())
                .map_err(|_| "never released".to_string())?;
            expect_close_notify(&mut s)?;
            expect_fin(&mut s)
        }
        Kind::Resetting => {
            reset_on_drop(s.get_ref());
            drop(s);
            Ok(())
        }
    }
}

/// Asserts a report: the connection's outcome, within the bounds its kind
/// calls for.
#[track_caller]
fn check(kind: Kind, r: &cbuild::Fields) {
    r.expect("outcome", kind.outcome());
    let elapsed = r.num("elapsed_ms");
    match kind {
        Kind::Silent => {
            let (lo, hi) = (PEER_MS as i64, upper_ms(PEER_MS + SLACK_MS) as i64);
            assert!(
                lo <= elapsed && elapsed <= hi,
                "`elapsed_ms={elapsed}` not in [{lo}, {hi}]: {}",
                r.context
            );
        }
        Kind::Clean | Kind::Resetting => {
            let hi = upper_ms(SLACK_MS) as i64;
            assert!(
                (0..=hi).contains(&elapsed),
                "`elapsed_ms={elapsed}` not in [0, {hi}]: {}",
                r.context
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// (a) The client answers the server's close_notify: `clean`, in TLS 1.2 and
/// 1.3; the server's transport ends with a FIN, and its fd is closed.
#[test]
fn a_client_that_answers_is_reported_clean() {
    let mut server = Server::start(2);
    let baseline = server.open_fds();
    for (i, tls) in [Tls::V12, Tls::V13].into_iter().enumerate() {
        let ctx = Contexts::new(tls).client;
        let mut s = connect(server.port, &ctx);
        server.client_ok(tls.name(), exchange(&mut s, &format!("hello in {tls:?}\n")));
        let (_, release) = mpsc::channel();
        server.client_ok(tls.name(), finish_client(Kind::Clean, s, release));
        let r = server.report(run_limit());
        r.expect("conn", &(i + 1).to_string());
        check(Kind::Clean, &r);
        if i == 0 {
            server.expect_fds(&baseline);
        }
    }
    server.expect_clean_exit(3);
}

/// (b) The client reads the echo, then holds the connection without a word:
/// `timed_out` after the peer timeout; the server's close_notify was sent, and
/// its transport ends with a FIN (the default policy resets only when the
/// flush times out).
#[test]
fn a_silent_client_times_out_after_the_peer_timeout() {
    let mut server = Server::start(1);
    let ctx = Contexts::new(Tls::V13).client;
    let mut s = connect(server.port, &ctx);
    server.client_ok("exchange", exchange(&mut s, "anyone there?\n"));
    // The client reads nothing until the report is out.
    let r = server.report(run_limit());
    r.expect("conn", "1");
    check(Kind::Silent, &r);
    let (done, release) = mpsc::channel();
    done.send(()).unwrap();
    server.client_ok("after the report", finish_client(Kind::Silent, s, release));
    server.expect_clean_exit(2);
}

/// (c) The client resets right after reading the echo: `reset`, never
/// `truncated`. The server's close_notify may or may not have reached the
/// client's socket by then (unread, it makes close() send an RST anyway, as
/// SO_LINGER {1, 0} does): the closer sees the RST, not an orderly EOF.
#[test]
fn a_client_that_resets_after_the_echo_is_reported_reset() {
    let mut server = Server::start(2);
    for (i, tls) in [Tls::V12, Tls::V13].into_iter().enumerate() {
        let ctx = Contexts::new(tls).client;
        let mut s = connect(server.port, &ctx);
        server.client_ok(tls.name(), exchange(&mut s, "bye\n"));
        let (_, release) = mpsc::channel();
        server.client_ok(tls.name(), finish_client(Kind::Resetting, s, release));
        let r = server.report(run_limit());
        r.expect("conn", &(i + 1).to_string());
        check(Kind::Resetting, &r);
    }
    server.expect_clean_exit(3);
}

/// (d) Fifty clients at once, clean, silent and resetting, in TLS 1.2 and 1.3:
/// each connection reported exactly once with its kind's outcome, the
/// server's fds back to their count before the first client; then one last
/// client, the server's `--max-conns`, after which it exits 0.
#[test]
fn fifty_clients_at_once_are_each_reported_once() {
    const CLIENTS: usize = 50;
    let mut server = Server::start(CLIENTS + 1);
    let port = server.port;
    let baseline = server.open_fds();
    let contexts = [Contexts::new(Tls::V12), Contexts::new(Tls::V13)];

    let mut releases = Vec::new();
    let mut clients = Vec::new();
    let mut expected: HashMap<String, usize> = HashMap::new();
    for i in 0..CLIENTS {
        let kind = Kind::ALL[i % Kind::ALL.len()];
        *expected.entry(kind.outcome().to_owned()).or_default() += 1;
        let ctx = contexts[i % 2].client.clone();
        let (release, held) = mpsc::channel();
        releases.push(release);
        let client = thread::Builder::new()
            .name(format!("client-{i}-{kind:?}"))
            .spawn(move || {
                let mut s = try_connect(port, &ctx)?;
                exchange(&mut s, &format!("client {i}: {kind:?}\n"))?;
                finish_client(kind, s, held)
            })
            .unwrap();
        clients.push(client);
    }

    // One line per connection: distinct conn numbers, 1 to 50, and as many of
    // each outcome as there are clients of its kind.
    let deadline = Instant::now() + run_limit();
    let mut conns = HashSet::new();
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for _ in 0..CLIENTS {
        let r = server.report(deadline.saturating_duration_since(Instant::now()));
        let conn = r.num("conn");
        assert!(
            (1..=CLIENTS as i64).contains(&conn) && conns.insert(conn),
            "conn={conn} out of range or twice: {}",
            r.context
        );
        let kind = *Kind::ALL
            .iter()
            .find(|k| k.outcome() == r.str("outcome"))
            .unwrap_or_else(|| panic!("unexpected outcome: {}", r.context));
        check(kind, &r);
        *outcomes.entry(r.str("outcome").to_owned()).or_default() += 1;
    }
    assert_eq!(outcomes, expected, "{}", server.proc.transcript());
    server.expect_fds(&baseline);

    // The silent clients may look now; every client saw what it should.
    for release in &releases {
        let _ = release.send(());
    }
    for client in clients {
        let name = client.thread().name().unwrap_or("client").to_owned();
        let seen = client.join().unwrap_or_else(|_| panic!("{name} panicked"));
        server.client_ok(name, seen);
    }

    // The last one: reported, and the server exits.
    let ctx = contexts[1].client.clone();
    let mut s = connect(port, &ctx);
    server.client_ok("the last one", exchange(&mut s, "the last one\n"));
    let (_, release) = mpsc::channel();
    server.client_ok("the last one", finish_client(Kind::Clean, s, release));
    let r = server.report(run_limit());
    r.expect("conn", &(CLIENTS + 1).to_string());
    check(Kind::Clean, &r);
    server.expect_clean_exit(CLIENTS + 2);
}

/// A client that sends a second TLS record in the same segment as its line:
/// Asio pulls both into its BIO pair and the SSL consumes only the first, so
/// `SSL_set_fd` would lose the second (and the next record would fail its
/// MAC). The server does not hand such a connection over: it prints
/// `not_handed_over` and its stream closes the socket, without close_notify.
#[test]
fn a_second_record_in_the_bio_pair_is_not_handed_over() {
    let mut server = Server::start(2);
    for (i, tls) in [Tls::V12, Tls::V13].into_iter().enumerate() {
        let tcp = tcp_connect(("127.0.0.1", server.port)).expect("connect");
        let ssl = Ssl::new(&Contexts::new(tls).client).unwrap();
        let mut s = ssl.connect(Corkable::new(tcp)).expect("handshake");
        // Two records, one write().
        s.get_mut().cork();
        s.write_all(b"one\n").unwrap();
        s.write_all(b"two\n").unwrap();
        s.get_mut().uncork_with(b"");
        server.client_ok(tls.name(), expect_echo(&mut s, "one\n"));
        let r = server.report(run_limit());
        r.expect("conn", &(i + 1).to_string())
            .expect("outcome", "not_handed_over")
            .expect("stage", "hand_over")
            .expect("error", "bytes_in_the_bio_pair");
        // The stream closed the socket: the transport ends (a FIN, not an
        // RST) without close_notify.
        match read_until_close_notify(&mut s) {
            Err(e)
                if matches!(e.code(), ErrorCode::SYSCALL | ErrorCode::SSL)
                    && e.io_error().is_none() => {}
            other => panic!("{tls:?}: after the echo: {other:?}"),
        }
        assert_eq!(wait_eof(&mut s.get_mut().tcp), None, "{tls:?}");
    }
    server.expect_clean_exit(3);
}

#[test]
fn usage_errors_exit_2_and_a_bad_certificate_1() {
    let program = asio_server();
    for args in [
        &[][..],
        &["--cert", "c.pem"][..],
        &["--cert", "c.pem", "--key", "k.pem", "--bogus", "1"][..],
        &["--cert", "c.pem", "--key", "k.pem", "--max-conns"][..],
        &["--cert", "c.pem", "--key", "k.pem", "--max-conns", "0"][..],
        &[
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--peer-timeout-ms",
            "x",
        ][..],
        &[
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--listen-port",
            "65536",
        ][..],
        &[
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--listen-addr",
            "nowhere",
        ][..],
    ] {
        cbuild::assert_usage_error(program, args);
    }
    cbuild::assert_bad_certificate(program);
}
