//! Emits cfgs for the OpenSSL version we build against. (The C library's
//! pkg-config file is cargo-c's: `cargo cinstall` writes it, relocatable.)
//!
//! `openssl-sys` publishes the version of the library it found as
//! `DEP_OPENSSL_VERSION_NUMBER` (hex, as in `OPENSSL_VERSION_NUMBER`); only crates
//! that depend on `openssl-sys` directly see it. OpenSSL 1.1.1 and 3.x report an
//! EOF without close_notify differently, so the code that classifies errors
//! needs to know which one it talks to.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Declared whatever the version, so that `#[cfg(...)]` on any of them is never
    // an unexpected_cfgs warning.
    println!("cargo:rustc-check-cfg=cfg(ossl111)");
    println!("cargo:rustc-check-cfg=cfg(ossl300)");
    println!("cargo:rustc-check-cfg=cfg(ossl320)");
    println!("cargo:rustc-check-cfg=cfg(ossl400)");
    println!("cargo:rerun-if-env-changed=DEP_OPENSSL_VERSION_NUMBER");

    let Ok(hex) = env::var("DEP_OPENSSL_VERSION_NUMBER") else {
        // LibreSSL/BoringSSL builds of openssl-sys do not publish it; the
        // conservative choice is the 1.1.1 behaviour, which is also checked at
        // run time for an EOF reported as SSL_ERROR_SYSCALL.
        println!(
            "cargo:warning=DEP_OPENSSL_VERSION_NUMBER not set; assuming OpenSSL 1.1.1 conventions"
        );
        return;
    };
    // OPENSSL_VERSION_NUMBER: 0xMNNFFPPS (major, minor, fix, patch, status) up
    // to 1.1.1; 0xMNN00PP0 (major, minor, patch) from 3.0 on. Either way a
    // release compares above every earlier one.
    //
    // The floor is OpenSSL 1.1.1: `ossl111` is set for every supported version
    // (older ones are not supported, and openssl-sys itself needs 1.0.2+). The
    // others mark behaviour that changed: 3.0 (SSL_OP_IGNORE_UNEXPECTED_EOF,
    // SSL_R_UNEXPECTED_EOF_WHILE_READING), 3.2 (the record layer rewrite) and 4.0.
    // These cfgs apply to the lib, the tests, the examples and the benches of
    // this package (not to other crates).
    let version = u64::from_str_radix(hex.trim(), 16).unwrap_or(0);
    if version < 0x1010_1000 {
        println!(
            "cargo:warning=OpenSSL {hex} is older than 1.1.1, the oldest version closenotify supports"
        );
    }
    for (cfg, since) in [
        ("ossl111", 0x1010_1000),
        ("ossl300", 0x3000_0000),
        ("ossl320", 0x3020_0000),
        ("ossl400", 0x4000_0000),
    ] {
        if version >= since {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}
