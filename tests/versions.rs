//! Which OpenSSL the tests run on, and that the crate was built for it: the
//! version cfgs of build.rs match the library linked at run time, and under
//! `scripts/openssl-matrix.sh` (`CLOSENOTIFY_EXPECT_OPENSSL=3.6.3`, say) the
//! library and the `openssl` tool on PATH (the tests' external peers) are that
//! release. (The C library's copy is checked by tests/c_api.rs.)

mod util;

use util::process;

#[test]
fn the_version_cfgs_match_the_linked_openssl() {
    let number = openssl::version::number() as u64;
    println!("{} ({number:#x})", openssl::version::version());
    assert_eq!(cfg!(ossl300), number >= 0x3000_0000, "ossl300");
    assert_eq!(cfg!(ossl320), number >= 0x3020_0000, "ossl320");
    assert_eq!(cfg!(ossl400), number >= 0x4000_0000, "ossl400");
    assert!(number >= 0x1010_1000, "older than 1.1.1");
}

#[test]
fn the_matrix_runs_on_the_version_it_names() {
    let Ok(expected) = std::env::var("CLOSENOTIFY_EXPECT_OPENSSL") else {
        return; // the system OpenSSL: nothing is expected
    };
    let linked = openssl::version::version();
    assert!(
        linked.starts_with(&format!("OpenSSL {expected} ")),
        "linked: {linked}, expected {expected}"
    );
    let tool = process::run(
        "openssl",
        &["version"],
        b"",
        std::time::Duration::from_secs(10),
    );
    tool.assert_success();
    assert!(
        tool.stdout_text()
            .starts_with(&format!("OpenSSL {expected} ")),
        "the openssl on PATH: {}",
        tool.context()
    );
}
