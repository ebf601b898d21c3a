//! The C programs of the tests (`tests/c/*.c`, `examples/c/*.c`): the C library
//! built from this tree, the programs compiled against it with strict flags, and
//! run (under valgrind with `CLOSENOTIFY_VALGRIND=1`). Used by `tests/c_api.rs`
//! and `tests/c_server.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{self, check_tool, Proc, Ran};

/// The flags every C file must compile with.
pub const CFLAGS: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-g",
];

/// `valgrind` and its options in valgrind mode: any memory error or definite leak
/// makes the program exit 99.
pub const VALGRIND: &[&str] = &[
    "valgrind",
    "--error-exitcode=99",
    "--leak-check=full",
    "--errors-for-leak-kinds=definite",
    "--show-leak-kinds=definite",
    "-q",
];

/// `CLOSENOTIFY_VALGRIND=1`: every C program runs under valgrind.
pub fn valgrind_mode() -> bool {
    std::env::var("CLOSENOTIFY_VALGRIND").is_ok_and(|v| v == "1")
}

/// Longest a C program may run, or take over one thing a test waits for, before
/// the test gives up (generous: the assertions on time are elsewhere).
pub fn run_limit() -> Duration {
    if valgrind_mode() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(20)
    }
}

/// Upper bound for a time measured inside a C program (valgrind slows it down
/// several times over; lower bounds never change).
pub fn upper_ms(normal: u64) -> u64 {
    if valgrind_mode() {
        normal * 10
    } else {
        normal
    }
}

// ---------------------------------------------------------------------------
// Compiling the C programs.
// ---------------------------------------------------------------------------

/// `target/<profile>`: this test binary is `target/<profile>/deps/NAME-HASH`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()))
}

/// Everything the C programs are compiled with: the C library built (see
/// [`build_c_library`]), the link flags, and the output directory
/// (`target/<profile>/c-tests`, created). Fails with a clear message when `cc` or
/// `pkg-config` is missing.
pub fn prepare() -> Result<(PathBuf, Vec<String>), String> {
    check_tool("cc", "--version")?;
    check_tool("pkg-config", "--version")?;
    let lib = build_c_library()?;
    let flags = link_flags(&lib)?;
    let dir = profile_dir().join("c-tests");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((dir, flags))
}

/// Builds the C library (the `capi` feature, as cdylib and staticlib) the way
/// cargo-c does, into `target/capi/<profile>`; returns that directory. A plain
/// `cargo test` builds only the Rust library: Rust users never build C
/// artefacts. (CI also installs it with cargo-c and builds the C programs
/// against the installed copy through pkg-config: see `.ci/run`.)
pub fn build_c_library() -> Result<PathBuf, String> {
    let profile = profile_dir();
    let target = profile
        .parent()
        .map(|t| t.join("capi"))
        .ok_or("no target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["rustc", "--lib", "--features", "capi"])
        .args(["--crate-type", "cdylib", "--crate-type", "staticlib"])
        .arg("--target-dir")
        .arg(&target);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| format!("{cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the C library failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = target.join(profile.file_name().ok_or("no profile")?);
    for lib in ["libclosenotify.so", "libclosenotify.a"] {
        if !dir.join(lib).is_file() {
            return Err(format!(
                "{} is missing after the build",
                dir.join(lib).display()
            ));
        }
    }
    Ok(dir)
}

/// How the C programs link the library in `lib`, with the header of this tree
/// and OpenSSL from pkg-config.
pub fn link_flags(lib: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libssl", "libcrypto"])
        .output()
        .map_err(|e| format!("pkg-config: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`pkg-config --cflags --libs libssl libcrypto` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let ssl: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let mut flags = vec![format!("-I{}", include.display())];
    if links_openssl_dynamically(&lib.join("libclosenotify.so"))? {
        // DT_RPATH, not RUNPATH: `cargo test` puts its own `target/<profile>/deps`
        // on LD_LIBRARY_PATH, which RUNPATH would let win (with a stale copy of
        // the library from an older build, say).
        flags.extend([
            format!("-L{}", lib.display()),
            format!("-Wl,--disable-new-dtags,-rpath,{}", lib.display()),
            "-lclosenotify".to_string(),
        ]);
        flags.extend(ssl);
    } else {
        // A static OpenSSL: the cdylib carries a private copy of it, and a C
        // program linked with it and `-lssl` would create its SSL objects with a
        // second copy (two error queues, two sets of globals, one SSL*). The
        // staticlib bundles the very OpenSSL the crate was built with, visible to
        // the program: link it alone, with that OpenSSL's headers.
        flags.extend(ssl.into_iter().filter(|f| f.starts_with("-I")));
        flags.push(lib.join("libclosenotify.a").display().to_string());
        flags.extend(["-lpthread", "-ldl", "-lm"].map(String::from));
    }
    Ok(flags)
}

/// Whether the cdylib loads OpenSSL as a shared library (`NEEDED libssl.so.*`).
fn links_openssl_dynamically(cdylib: &Path) -> Result<bool, String> {
    check_tool("readelf", "--version")?;
    let out = Command::new("readelf")
        .arg("-d")
        .arg(cdylib)
        .output()
        .map_err(|e| format!("readelf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`readelf -d {}` failed: {}",
            cdylib.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("(NEEDED)") && l.contains("[libssl.so")))
}

/// `cc CFLAGS source -o dir/name $(pkg-config ...)`; the compiler's stderr on
/// failure. Built under a temporary name and renamed, so that concurrent test
/// runs never execute a half-written binary.
pub fn compile(source: &Path, dir: &Path, name: &str, flags: &[String]) -> Result<PathBuf, String> {
    compile_with("cc", CFLAGS, source, dir, name, flags)
}

/// As [`compile`], with another compiler and its own flags (C++).
pub fn compile_with(
    compiler: &str,
    own_flags: &[&str],
    source: &Path,
    dir: &Path,
    name: &str,
    flags: &[String],
) -> Result<PathBuf, String> {
    let target = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
    let out = Command::new(compiler)
        .args(own_flags)
        .arg(source)
        .arg("-o")
        .arg(&tmp)
        .args(flags)
        .output()
        .map_err(|e| format!("{compiler}: {e}"))?;
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

/// `program args`, prefixed with valgrind and its options in valgrind mode.
fn argv(program: &Path, args: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if valgrind_mode() {
        argv.extend(VALGRIND.iter().map(|s| s.to_string()));
    }
    argv.push(program.to_str().unwrap().to_owned());
    argv.extend(args.iter().map(|s| s.to_string()));
    argv
}

/// Runs a compiled C program (under valgrind in valgrind mode), bounded by
/// `run_limit()`.
pub fn run_c(program: &Path, args: &[&str]) -> Ran {
    let argv = argv(program, args);
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

/// A server example given bad arguments: exit 2 and the usage on stderr.
pub fn assert_usage_error(program: &Path, args: &[&str]) {
    let ran = run_c(program, args);
    assert_eq!(ran.code(), Some(2), "{}", ran.context());
    assert!(ran.stderr.contains("usage:"), "{}", ran.context());
}

/// A server example given a certificate it cannot read: exit 1, and says so.
pub fn assert_bad_certificate(program: &Path) {
    let ran = run_c(
        program,
        &["--cert", "/nonexistent.pem", "--key", "/nonexistent.pem"],
    );
    assert_eq!(ran.code(), Some(1), "{}", ran.context());
    assert!(
        ran.stderr.contains("cannot use certificate"),
        "{}",
        ran.context()
    );
}

/// Starts a compiled C program that runs alongside the test (a server), under
/// valgrind in valgrind mode: valgrind runs the program in its own process, so
/// `Proc::pid` is the program's. Check its exit with
/// [`assert_no_valgrind_errors`].
pub fn spawn_c(program: &Path, args: &[&str]) -> Proc {
    let argv = argv(program, args);
    Proc::spawn(&argv[0], &argv[1..])
}

/// In valgrind mode, the exit status of a program started by [`spawn_c`] is not
/// valgrind's error code.
#[track_caller]
pub fn assert_no_valgrind_errors(status: std::process::ExitStatus, context: &str) {
    if valgrind_mode() {
        assert_ne!(
            status.code(),
            Some(99),
            "valgrind found memory errors or leaks: {context}"
        );
    }
}

// ---------------------------------------------------------------------------
// cn_test and its report lines.
// ---------------------------------------------------------------------------

/// `tests/c/cn_test.c`, compiled once per test binary against the C library of
/// this tree.
pub fn cn_test() -> &'static Path {
    static CN_TEST: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = CN_TEST.get_or_init(|| {
        let (dir, flags) = prepare()?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/cn_test.c");
        compile(&src, &dir, "cn_test", &flags)
    });
    match built {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

impl Ran {
    /// The report line of `cn_test`.
    #[track_caller]
    pub fn c_report(&self) -> Fields {
        self.assert_success();
        let stdout = self.stdout_text();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("outcome="))
            .unwrap_or_else(|| panic!("no report line: {}", self.context()));
        Fields::parse(line, self.context())
    }
}

/// `key=value` pairs of one report line.
pub struct Fields {
    map: HashMap<String, String>,
    /// What the failure messages show: the program's run, the peer's transcript.
    pub context: String,
}

impl Fields {
    pub fn parse(line: &str, context: String) -> Fields {
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
    pub fn str(&self, key: &str) -> &str {
        self.map
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` in the report: {}", self.context))
    }

    #[track_caller]
    pub fn num(&self, key: &str) -> i64 {
        let v = self.str(key);
        v.parse()
            .unwrap_or_else(|_| panic!("`{key}={v}` is not a number: {}", self.context))
    }

    #[track_caller]
    pub fn flag(&self, key: &str) -> bool {
        match self.num(key) {
            0 => false,
            1 => true,
            other => panic!("`{key}={other}` is not 0/1: {}", self.context),
        }
    }

    /// Asserts `key` has `value` (numbers compare as text, as printed).
    #[track_caller]
    pub fn expect(&self, key: &str, value: &str) -> &Self {
        assert_eq!(self.str(key), value, "`{key}`: {}", self.context);
        self
    }

    #[track_caller]
    pub fn expect_flags(&self, expected: &[(&str, bool)]) -> &Self {
        for &(key, value) in expected {
            assert_eq!(self.flag(key), value, "`{key}`: {}", self.context);
        }
        self
    }

    /// Asserts `lo <= key < hi`.
    #[track_caller]
    pub fn expect_range(&self, key: &str, lo: i64, hi: i64) -> &Self {
        let v = self.num(key);
        assert!(
            lo <= v && v < hi,
            "`{key}={v}` not in [{lo}, {hi}): {}",
            self.context
        );
        self
    }
}
