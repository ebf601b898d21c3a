//! The C API from C: `examples/c/echo_client.c` and `tests/c/cn_test.c` are
//! compiled with the strict flags of SPEC §5 against the library and header this
//! build produced (`pkg-config closenotify`), then run against real peers
//! (`openssl s_server` and Python's `ssl` module, `tests/peers/peer.py`) on
//! loopback, in TLS 1.2 and 1.3, through both the blocking and the step API.
//!
//! `cn_test` prints the report as one line of `key=value` pairs; the assertions
//! here are on those fields.
//!
//! Needs `cc`, `pkg-config`, `openssl` and `python3` on `PATH` (CI installs them):
//! when one is missing the tests fail saying so, they never skip.
//!
//! `CLOSENOTIFY_VALGRIND=1 cargo test --test c_api` runs every C program under
//! valgrind (memory errors, and definite leaks, fail the test); time bounds that a
//! slow valgrind run can exceed are widened in that mode only.

mod util;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use util::process::{self, check_tool, require, Pems, Proc, Ran};

/// How long an external peer gets to become ready, answer or exit.
const READY: Duration = Duration::from_secs(5);

/// The flags every C file must compile with (SPEC §5).
const CFLAGS: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-g",
];

/// `valgrind` and its options in valgrind mode: any memory error or definite leak
/// makes the program exit 99.
const VALGRIND: &[&str] = &[
    "valgrind",
    "--error-exitcode=99",
    "--leak-check=full",
    "--errors-for-leak-kinds=definite",
    "--show-leak-kinds=definite",
    "-q",
];

fn valgrind_mode() -> bool {
    std::env::var("CLOSENOTIFY_VALGRIND").is_ok_and(|v| v == "1")
}

/// Longest a C program may run before the test kills it.
fn run_limit() -> Duration {
    if valgrind_mode() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(20)
    }
}

/// Upper bound for a time measured inside a C program (valgrind slows it down
/// several times over; lower bounds never change).
fn upper_ms(normal: u64) -> u64 {
    if valgrind_mode() {
        normal * 10
    } else {
        normal
    }
}

// ---------------------------------------------------------------------------
// Compiling the C programs, once per test binary.
// ---------------------------------------------------------------------------

/// `target/<profile>`: this test binary is `target/<profile>/deps/c_api-HASH`.
/// cargo writes the libraries and `closenotify.pc` there.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
}

struct Programs {
    cn_test: PathBuf,
    echo_client: PathBuf,
}

fn programs() -> &'static Programs {
    static PROGRAMS: OnceLock<Result<Programs, String>> = OnceLock::new();
    match PROGRAMS.get_or_init(compile_all) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn compile_all() -> Result<Programs, String> {
    check_tool("cc", "--version")?;
    check_tool("pkg-config", "--version")?;
    let profile = profile_dir();
    let pc = profile.join("closenotify.pc");
    if !pc.is_file() {
        return Err(format!(
            "{} is missing: build.rs writes it when the library is built",
            pc.display()
        ));
    }
    // Our .pc first; the system's (libssl, libcrypto) stay reachable.
    let mut search = profile.clone().into_os_string();
    if let Some(old) = std::env::var_os("PKG_CONFIG_PATH") {
        search.push(":");
        search.push(old);
    }
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "closenotify"])
        .env("PKG_CONFIG_PATH", &search)
        .output()
        .map_err(|e| format!("pkg-config: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`pkg-config --cflags --libs closenotify` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The .pc points at `target/<profile>`, where `cargo build` copies the
    // libraries. `cargo test` builds them too, but leaves them in `deps/` (no copy
    // up): the copy in `target/<profile>` is stale, or missing on a clean checkout.
    // Searching `deps/` first (link time and run time) tests the library this very
    // run built; everything else comes from pkg-config as a user gets it.
    let deps = profile.join("deps");
    let fresh = deps.join("libclosenotify.so");
    if !fresh.is_file() {
        return Err(format!(
            "{} is missing: the cdylib should be built with the tests",
            fresh.display()
        ));
    }
    let pkg_flags = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let flags = if cdylib_links_openssl_dynamically(&fresh)? {
        let mut flags = vec![
            format!("-L{}", deps.display()),
            format!("-Wl,-rpath,{}", deps.display()),
        ];
        flags.extend(pkg_flags);
        flags
    } else {
        static_openssl_flags(&deps, &pkg_flags)?
    };

    let dir = profile.join("c-tests");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(Programs {
        cn_test: compile(&src.join("tests/c/cn_test.c"), &dir, "cn_test", &flags)?,
        echo_client: compile(
            &src.join("examples/c/echo_client.c"),
            &dir,
            "echo_client",
            &flags,
        )?,
    })
}

/// Whether the cdylib loads OpenSSL as a shared library (`NEEDED libssl.so.*`), as
/// with the system's libssl-dev. When openssl-sys linked a static OpenSSL (an
/// `OPENSSL_DIR` with only `.a` files, `OPENSSL_STATIC=1`, or the `vendored`
/// feature), the cdylib carries its own copy of OpenSSL with its symbols hidden.
fn cdylib_links_openssl_dynamically(cdylib: &Path) -> Result<bool, String> {
    check_tool("readelf", "--version")?;
    let out = Command::new("readelf")
        .arg("-d")
        .arg(cdylib)
        .output()
        .map_err(|e| format!("readelf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`readelf -d {}` failed ({}): {}",
            cdylib.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("(NEEDED)") && l.contains("[libssl.so")))
}

/// Link flags for a static OpenSSL: the C program must not get a second copy.
///
/// The cdylib's copy of OpenSSL is private to it: a C program linked with it and
/// with `-lssl -lcrypto` (static) would create its `SSL_CTX`/`SSL` with its own
/// copy and hand them to the library's copy: two error queues, two sets of
/// globals, one `SSL*`. So the C programs link the crate's staticlib instead
/// (`libclosenotify.a` bundles the very OpenSSL the crate was built with, and its
/// OpenSSL symbols stay visible), with the headers of that OpenSSL (pkg-config's
/// `-I` flags, which come from the same prefix) and without `-lssl -lcrypto`. The
/// system libraries are the `.pc` file's `Libs.private`.
fn static_openssl_flags(deps: &Path, pkg_flags: &[String]) -> Result<Vec<String>, String> {
    let staticlib = deps.join("libclosenotify.a");
    if !staticlib.is_file() {
        return Err(format!(
            "{} is missing: the staticlib should be built with the tests",
            staticlib.display()
        ));
    }
    let mut flags: Vec<String> = pkg_flags
        .iter()
        .filter(|f| f.starts_with("-I"))
        .cloned()
        .collect();
    flags.push(staticlib.display().to_string());
    flags.extend(["-lpthread", "-ldl", "-lm"].map(String::from));
    Ok(flags)
}

/// `cc CFLAGS source -o dir/name $(pkg-config ...)`; the compiler's stderr on
/// failure. Built under a temporary name and renamed, so that concurrent test
/// runs never execute a half-written binary.
fn compile(source: &Path, dir: &Path, name: &str, flags: &[String]) -> Result<PathBuf, String> {
    let target = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
    let out = Command::new("cc")
        .args(CFLAGS)
        .arg(source)
        .arg("-o")
        .arg(&tmp)
        .args(flags)
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "compiling {} failed ({}):\n{}{}",
            source.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))?;
    Ok(target)
}

// ---------------------------------------------------------------------------
// Running the C programs.
// ---------------------------------------------------------------------------

impl Ran {
    /// The report line of `cn_test`.
    #[track_caller]
    fn report(&self) -> Fields {
        self.assert_success();
        let stdout = self.stdout_text();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("outcome="))
            .unwrap_or_else(|| panic!("no report line: {}", self.context()));
        Fields::parse(line, self.context())
    }
}

/// Runs a compiled C program (under valgrind in valgrind mode), bounded by
/// `run_limit()`.
fn run_c(program: &Path, args: &[&str]) -> Ran {
    let mut argv: Vec<String> = Vec::new();
    if valgrind_mode() {
        argv.extend(VALGRIND.iter().map(|s| s.to_string()));
    }
    argv.push(program.to_str().unwrap().to_owned());
    argv.extend(args.iter().map(|s| s.to_string()));
    let ran = process::run(&argv[0], &argv[1..], b"", run_limit());
    if valgrind_mode() {
        assert_ne!(
            ran.status.code(),
            Some(99),
            "valgrind found memory errors or leaks: {}",
            ran.context()
        );
    }
    ran
}

/// `key=value` pairs of one report line.
struct Fields {
    map: HashMap<String, String>,
    context: String,
}

impl Fields {
    fn parse(line: &str, context: String) -> Fields {
        let map = line
            .split_whitespace()
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not key=value: {kv:?} in {context}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Fields { map, context }
    }

    #[track_caller]
    fn str(&self, key: &str) -> &str {
        self.map
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` in the report: {}", self.context))
    }

    #[track_caller]
    fn num(&self, key: &str) -> i64 {
        let v = self.str(key);
        v.parse()
            .unwrap_or_else(|_| panic!("`{key}={v}` is not a number: {}", self.context))
    }

    #[track_caller]
    fn flag(&self, key: &str) -> bool {
        match self.num(key) {
            0 => false,
            1 => true,
            other => panic!("`{key}={other}` is not 0/1: {}", self.context),
        }
    }

    /// Asserts `key` has `value` (numbers compare as text, as printed).
    #[track_caller]
    fn expect(&self, key: &str, value: &str) -> &Self {
        assert_eq!(self.str(key), value, "`{key}`: {}", self.context);
        self
    }

    #[track_caller]
    fn expect_flags(&self, expected: &[(&str, bool)]) -> &Self {
        for &(key, value) in expected {
            assert_eq!(self.flag(key), value, "`{key}`: {}", self.context);
        }
        self
    }

    /// Asserts `lo <= key < hi`.
    #[track_caller]
    fn expect_range(&self, key: &str, lo: i64, hi: i64) -> &Self {
        let v = self.num(key);
        assert!(
            lo <= v && v < hi,
            "`{key}={v}` not in [{lo}, {hi}): {}",
            self.context
        );
        self
    }
}

// ---------------------------------------------------------------------------
// External peers (as in tests/external_peers.rs).
// ---------------------------------------------------------------------------

/// An external peer process, listening on `port`; killed and reaped on drop.
/// Its stdin stays open: `openssl s_server` ends the connection at EOF on it.
struct External {
    proc: Proc,
    port: u16,
    _pems: Pems,
}

impl External {
    fn transcript(&self) -> String {
        self.proc.transcript()
    }

    /// Waits (bounded) for a successful exit on its own.
    fn expect_success(&mut self) {
        self.proc.expect_success(READY);
    }
}

#[derive(Clone, Copy, Debug)]
enum Tls {
    V12,
    V13,
}

const BOTH: [Tls; 2] = [Tls::V12, Tls::V13];

impl Tls {
    /// As cn_test and peer.py spell it.
    fn arg(self) -> &'static str {
        match self {
            Tls::V12 => "1.2",
            Tls::V13 => "1.3",
        }
    }

    /// As the report prints it.
    fn wire(self) -> &'static str {
        match self {
            Tls::V12 => "0x0303",
            Tls::V13 => "0x0304",
        }
    }
}

/// The two C shutdown APIs.
const APIS: [&str; 2] = ["blocking", "step"];

/// `openssl s_server` for exactly one connection, on the port it chose (see
/// `util::process::s_server`).
fn s_server(tls: Tls) -> External {
    require("openssl", "version");
    let pems = Pems::write();
    let flag = match tls {
        Tls::V12 => "-tls1_2",
        Tls::V13 => "-tls1_3",
    };
    let (server, addr) = process::s_server(&pems, &[flag], READY);
    External {
        proc: server,
        port: addr.port(),
        _pems: pems,
    }
}

/// `tests/peers/peer.py MODE`, listening on the port it prints first.
fn python(tls: Tls, mode: &str) -> External {
    let pems = Pems::write();
    let (peer, port) = process::peer_py(&pems, mode, tls.arg(), READY);
    External {
        proc: peer,
        port,
        _pems: pems,
    }
}

/// `cn_test API SCENARIO PORT VERSION [extra...]` against `peer`; its report,
/// with the version and the API's own invariants checked.
fn cn_test(api: &str, scenario: &str, tls: Tls, peer: &External, extra: &[&str]) -> Fields {
    let port = peer.port.to_string();
    let mut args = vec![api, scenario, port.as_str(), tls.arg()];
    args.extend_from_slice(extra);
    let ran = run_c(&programs().cn_test, &args);
    let mut r = ran.report();
    r.context = format!("{}\npeer: {}", r.context, peer.transcript());
    r.expect("tls_version", tls.wire());
    // Every retry follows a readiness event: a handful of calls, never a spin.
    r.expect_range("ssl_calls", 1, 10);
    match api {
        "step" => r.expect_range("steps", 1, 10),
        _ => r.expect("steps", "0"),
    };
    r
}

// ---------------------------------------------------------------------------
// The scenarios, each in TLS 1.2 and 1.3, through both APIs.
// ---------------------------------------------------------------------------

/// What every clean shutdown that we initiated looks like.
fn expect_clean_local(r: &Fields) {
    r.expect("outcome", "clean")
        .expect("initiator", "0")
        .expect("stage", "await_peer")
        .expect("alert", "-1")
        .expect("alert_name", "none")
        .expect("os_error", "0")
        .expect("discarded_bytes", "0")
        .expect_flags(&[
            ("close_notify_sent", true),
            ("close_notify_received", true),
            ("half_closed", true),
            ("session_resumable", true),
        ])
        .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
}

#[test]
fn s_server_answers_our_close_notify_clean_local() {
    for tls in BOTH {
        for api in APIS {
            let mut server = s_server(tls);
            let r = cn_test(api, "plain", tls, &server, &[]);
            expect_clean_local(&r);
            // It saw our close_notify, answered it, and exits after its one
            // connection.
            server.expect_success();
        }
    }
}

#[test]
fn python_answers_our_close_notify_clean_local() {
    for tls in BOTH {
        for api in APIS {
            let mut peer = python(tls, "answer");
            let r = cn_test(api, "plain", tls, &peer, &[]);
            expect_clean_local(&r);
            peer.expect_success();
        }
    }
}

#[test]
fn python_silent_times_out_in_await_peer() {
    for tls in BOTH {
        for api in APIS {
            let peer = python(tls, "silent");
            let r = cn_test(api, "plain", tls, &peer, &["--peer-timeout-ms", "200"]);
            r.expect("outcome", "timed_out")
                .expect("initiator", "0")
                .expect("stage", "await_peer")
                .expect("alert", "-1")
                .expect("os_error", "0")
                .expect_flags(&[
                    ("close_notify_sent", true),
                    ("close_notify_received", false),
                    ("half_closed", true),
                    // A client's session is dropped on any outcome but clean.
                    ("session_resumable", false),
                ])
                .expect_range("elapsed_ms", 200, upper_ms(400) as i64);
            // `peer` sleeps forever: killed on drop.
        }
    }
}

#[test]
fn python_closes_without_close_notify_truncated() {
    for tls in BOTH {
        for api in APIS {
            let mut peer = python(tls, "truncate");
            let r = cn_test(api, "plain", tls, &peer, &[]);
            r.expect("outcome", "truncated")
                .expect("initiator", "0")
                .expect("stage", "await_peer")
                .expect("alert", "-1")
                .expect("os_error", "0")
                .expect_flags(&[
                    ("close_notify_sent", true),
                    ("close_notify_received", false),
                    ("session_resumable", false),
                ])
                .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
            peer.expect_success();
        }
    }
}

#[test]
fn python_resets_reset_with_econnreset() {
    for tls in BOTH {
        for api in APIS {
            let mut peer = python(tls, "reset");
            let r = cn_test(api, "plain", tls, &peer, &[]);
            // `half_closed` is not asserted: the RST can beat our shutdown(SHUT_WR).
            r.expect("outcome", "reset")
                .expect("os_error", &libc::ECONNRESET.to_string())
                .expect("initiator", "0")
                .expect("stage", "await_peer")
                .expect("alert", "-1")
                .expect_flags(&[
                    ("close_notify_sent", true),
                    ("close_notify_received", false),
                    ("session_resumable", false),
                ])
                .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
            peer.expect_success();
        }
    }
}

#[test]
fn python_initiates_we_answer_clean_peer() {
    for tls in BOTH {
        for api in APIS {
            let mut peer = python(tls, "initiate");
            let r = cn_test(api, "peer-initiated", tls, &peer, &[]);
            r.expect("outcome", "clean")
                .expect("initiator", "1")
                // Answering ends with the half-close: nothing left to await.
                .expect("stage", "half_close")
                .expect("ssl_calls", "1")
                .expect("alert", "-1")
                .expect("os_error", "0")
                .expect_flags(&[
                    ("close_notify_sent", true),
                    ("close_notify_received", true),
                    ("half_closed", true),
                    ("session_resumable", true),
                ])
                .expect_range("elapsed_ms", 0, upper_ms(100) as i64);
            peer.expect_success();
        }
    }
}

#[test]
fn python_sends_a_fatal_alert_peer_alert_bad_record_mac() {
    for tls in BOTH {
        for api in APIS {
            let peer = python(tls, "alert");
            let r = cn_test(api, "alert", tls, &peer, &[]);
            r.expect("outcome", "peer_alert")
                .expect("alert", "20")
                .expect("alert_name", "bad_record_mac")
                .expect("initiator", "0")
                .expect("os_error", "0")
                .expect_flags(&[
                    ("close_notify_received", false),
                    ("session_resumable", false),
                ])
                .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
            // `peer` sleeps after its alert: killed on drop.
        }
    }
}

#[test]
fn a_reset_peer_does_not_kill_a_c_program_with_default_sigpipe() {
    for tls in BOTH {
        let mut peer = python(tls, "reset-now");
        let port = peer.port.to_string();
        let ran = run_c(&programs().cn_test, &["sigpipe", &port, tls.arg()]);
        // Not killed by SIGPIPE (the status says which signal, if any).
        assert_eq!(ran.status.signal(), None, "{}", ran.context());
        let r = ran.report();
        r.expect("outcome", "reset")
            .expect("os_error", &libc::EPIPE.to_string())
            .expect("stage", "flush")
            .expect("tls_version", tls.wire())
            .expect_flags(&[("close_notify_sent", false), ("session_resumable", false)]);
        peer.expect_success();
    }
}

#[test]
fn every_result_code_from_c() {
    let ran = run_c(&programs().cn_test, &["errors"]);
    ran.assert_success();
    assert_eq!(ran.stdout_text().trim(), "errors: ok", "{}", ran.context());
}

#[test]
fn usage_errors_exit_2() {
    let p = programs();
    for (program, args) in [
        (&p.cn_test, &[][..]),
        (&p.cn_test, &["blocking", "nonsense", "1", "1.3"][..]),
        (&p.cn_test, &["step", "plain", "1", "1.1"][..]),
        (
            &p.cn_test,
            &["step", "plain", "1", "1.3", "--peer-timeout-ms", "x"][..],
        ),
        (&p.echo_client, &[][..]),
        (&p.echo_client, &["127.0.0.1", "1", "hi", "--tls11"][..]),
    ] {
        let ran = run_c(program, args);
        assert_eq!(ran.status.code(), Some(2), "{}", ran.context());
        assert!(ran.stderr.contains("usage:"), "{}", ran.context());
    }
}

#[test]
fn a_compile_error_fails_with_the_compilers_message() {
    // The driver's own failure path: a broken file must fail loudly, with cc's
    // diagnostics, not silently skip the C tests.
    let dir = profile_dir().join("c-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join(format!("broken{}.c", std::process::id()));
    std::fs::write(&broken, "int main(void) { return undeclared; }\n").unwrap();
    let err = compile(&broken, &dir, "broken", &[]).expect_err("compiled a broken file");
    let _ = std::fs::remove_file(&broken);
    assert!(err.contains("undeclared"), "{err}");
    assert!(!dir.join("broken").exists());
}

// ---------------------------------------------------------------------------
// examples/c/echo_client.c
// ---------------------------------------------------------------------------

#[test]
fn echo_client_against_python_echo_clean() {
    let message = "hello from C: close_notify, both ways";
    for tls in BOTH {
        let mut peer = python(tls, "echo");
        let port = peer.port.to_string();
        let mut args = vec!["127.0.0.1", port.as_str(), message];
        if let Tls::V12 = tls {
            args.push("--tls12");
        }
        let ran = run_c(&programs().echo_client, &args);
        let context = format!("{tls:?}: {}\npeer: {}", ran.context(), peer.transcript());
        ran.assert_success();
        assert_eq!(ran.stdout_text(), message, "{context}");
        let line = ran
            .stderr
            .lines()
            .rfind(|l| l.starts_with("outcome="))
            .unwrap_or_else(|| panic!("no report line on stderr: {context}"));
        Fields::parse(line, context)
            .expect("outcome", "clean")
            .expect("initiator", "local")
            .expect("stage", "await_peer")
            .expect("alert", "-1(none)")
            .expect("os_error", "0")
            .expect("discarded", "0")
            .expect("resumable", "1")
            .expect_range("elapsed_ms", 0, upper_ms(1000) as i64);
        peer.expect_success();
    }
}
