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
    println!("cargo:rustc-check-cfg=cfg(ossl300)");
    println!("cargo:rustc-check-cfg=cfg(ossl111)");
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
    // OPENSSL_VERSION_NUMBER: 0xMNNFFPPS (major, minor, fix, patch, status).
    let version = u64::from_str_radix(hex.trim(), 16).unwrap_or(0);
    if version >= 0x1010_1000 {
        println!("cargo:rustc-cfg=ossl111");
    }
    if version >= 0x3000_0000 {
        println!("cargo:rustc-cfg=ossl300");
    }
}
