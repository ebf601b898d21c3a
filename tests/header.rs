//! The checked-in `include/closenotify.h` is what cbindgen generates from the
//! sources now, with the version macros of Cargo.toml. Regenerate it with
//! `CLOSENOTIFY_BLESS=1 cargo test --test header`.

use std::path::Path;

/// The version macros, from the package version: a header whose macros disagree
/// with Cargo.toml is out of date.
fn version_macros() -> String {
    let v = env!("CARGO_PKG_VERSION");
    format!(
        "/* The version of this header; closenotify_version() gives the library's. */\n\
         #define CLOSENOTIFY_VERSION_MAJOR {}\n\
         #define CLOSENOTIFY_VERSION_MINOR {}\n\
         #define CLOSENOTIFY_VERSION_PATCH {}\n\
         #define CLOSENOTIFY_VERSION \"{v}\"\n",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
    )
}

#[test]
fn header_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    assert!(!fresh.contains("//"), "a // comment in the header");

    let path = root.join("include/closenotify.h");
    if std::env::var_os("CLOSENOTIFY_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != fresh {
        let first = current
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(fresh.lines().count()));
        panic!(
            "include/closenotify.h is out of date (first difference at line {}): \
             run `CLOSENOTIFY_BLESS=1 cargo test --test header` and commit it",
            first + 1
        );
    }
}

/// The header compiles, warning-free and pedantic, in every C and C++ a project
/// may use: C89 (with a compiler that provides `stdbool.h` and `stdint.h`, as GCC
/// and Clang do), C99, C11, C17, C++98, C++11, C++17; included twice too.
#[test]
fn header_compiles_in_every_c_and_cpp() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = root.join("include");
    let ssl = std::process::Command::new("pkg-config")
        .args(["--cflags", "libssl"])
        .output()
        .expect("pkg-config (CI installs it)");
    assert!(ssl.status.success(), "pkg-config --cflags libssl failed");
    let ssl = String::from_utf8_lossy(&ssl.stdout).into_owned();
    // A translation unit that uses every type, so that the compiler checks them,
    // and includes the header twice, as a program's own headers may.
    let unit = "#include <closenotify.h>\n\
                #include <closenotify.h>\n\
                int main(void) {\n\
                  closenotify_policy p; closenotify_report r; closenotify_shutdown *sd = 0;\n\
                  closenotify_closer *c = 0; closenotify_closed done;\n\
                  closenotify_policy_init(&p); (void)r; (void)sd; (void)c; (void)done;\n\
                  return closenotify_version() == 0;\n\
                }\n";
    let dir = std::env::temp_dir().join(format!("closenotify-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("unit.c");
    std::fs::write(&source, unit).unwrap();
    let cases = [
        ("cc", "c", "c89"),
        ("cc", "c", "c99"),
        ("cc", "c", "c11"),
        ("cc", "c", "c17"),
        ("c++", "c++", "c++98"),
        ("c++", "c++", "c++11"),
        ("c++", "c++", "c++17"),
    ];
    let mut failures = Vec::new();
    for (compiler, lang, std) in cases {
        let out = std::process::Command::new(compiler)
            .args(["-x", lang, &format!("-std={std}")])
            .args([
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic-errors",
                "-fsyntax-only",
            ])
            .arg(format!("-I{}", include.display()))
            // OpenSSL's headers are not ours to check (1.1.1's use `long long`,
            // which C89 lacks): include them as system headers.
            .args(ssl.split_whitespace().map(|f| match f.strip_prefix("-I") {
                Some(dir) => format!("-isystem{dir}"),
                None => f.to_string(),
            }))
            .arg(&source)
            .output()
            .unwrap_or_else(|e| panic!("{compiler}: {e} (CI installs build-essential)"));
        if !out.status.success() {
            failures.push(format!(
                "{compiler} -std={std}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
