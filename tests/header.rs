//! The checked-in `include/closenotify.h` is what cbindgen generates from the
//! sources now. Regenerate it with `CLOSENOTIFY_BLESS=1 cargo test --test header`.

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");

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
