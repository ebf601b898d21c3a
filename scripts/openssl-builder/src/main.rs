//! `closenotify-openssl-builder VERSION OUT_DIR TARGET`: builds OpenSSL VERSION
//! (1.1.1w, 3.6.3 or 4.0.3) with the build API of the openssl-src crate that
//! carries it, into OUT_DIR/install (headers, static libraries, pkg-config files;
//! OPENSSLDIR is OUT_DIR/install/ssl from 3.x on). `bin/make` beside this crate,
//! first on PATH, also builds and installs the `openssl` tool.

use std::path::PathBuf;

/// The same calls on each version's `Build` (the crates share no type).
macro_rules! build {
    ($krate:ident, $out:expr, $target:expr $(, $openssldir:expr)?) => {{
        let mut build = $krate::Build::new();
        build.out_dir($out).target($target).host($target);
        $( build.openssl_dir($openssldir); )?
        let artifacts = build.build();
        println!(
            "openssl-src {} installed into {}",
            $krate::version(),
            artifacts.lib_dir().parent().unwrap_or(artifacts.lib_dir()).display()
        );
    }};
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, version, out, target] = &args[..] else {
        eprintln!("usage: closenotify-openssl-builder VERSION OUT_DIR TARGET");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let openssldir = out.join("install/ssl");
    match version.as_str() {
        // openssl-src 111 has no openssl_dir: OPENSSLDIR is /usr/local/ssl.
        "1.1.1w" => build!(openssl_src_111, &out, target),
        "3.6.3" => build!(openssl_src_300, &out, target, &openssldir),
        "4.0.3" => build!(openssl_src_400, &out, target, &openssldir),
        other => {
            eprintln!("unknown OpenSSL version {other} (1.1.1w, 3.6.3, 4.0.3)");
            std::process::exit(2);
        }
    }
}
