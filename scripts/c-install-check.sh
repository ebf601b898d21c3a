#!/usr/bin/env bash
# The C library as C projects consume it: install it with cargo-c into a fresh
# prefix, check what a distro packager checks, and build and run the C examples and
# the C tests against the installed copy through pkg-config, shared and static.
#
#   scripts/c-install-check.sh            (CI runs it; about a minute once cargo-c
#                                          and the release build are cached)
#
# cargo-c: the one on PATH if it is recent enough (CARGO_C_MIN), else one
# installed once into a cache outside the clone, keyed by version, in cargo's
# debug profile (about 3 minutes to build on 2 cores, against 14 for a release
# build; cargo-c's speed does not matter here):
#   ${CLOSENOTIFY_CACHE:-~/.cache/closenotify}/cargo-c/VERSION-debug
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# The last cargo-c release that builds with the Rust of this machine (1.95).
CARGO_C_VERSION=0.10.24+cargo-0.98.0
# The oldest that builds this crate: older ones (Debian 12's 0.9.14) fetch the
# index over git and cannot read edition-2024 manifests in Cargo.lock.
CARGO_C_MIN=0.10.0
cache=${CLOSENOTIFY_CACHE:-$HOME/.cache/closenotify}
cargo_c="$cache/cargo-c/$CARGO_C_VERSION-debug"

say() { printf '  %s\n' "$*"; }
fail() { printf 'c-install-check: %s\n' "$*" >&2; exit 1; }

# "cargo-c 0.10.24+cargo-0.98.0" -> 0.10.24, compared with CARGO_C_MIN.
recent_enough() {
    local have
    have=$("$1" --version 2>/dev/null | sed -n 's/^cargo-c\(-cinstall\)\{0,1\} \([0-9.]*\).*/\2/p')
    [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$CARGO_C_MIN" "$have" | sort -V | head -n1)" = "$CARGO_C_MIN" ]
}
if command -v cargo-cinstall >/dev/null && recent_enough cargo-cinstall; then
    say "cargo-c on PATH: $(cargo-cinstall --version)"
elif [ -x "$cargo_c/bin/cargo-cinstall" ]; then
    export PATH="$cargo_c/bin:$PATH"
else
    if command -v cargo-cinstall >/dev/null; then
        say "cargo-c on PATH is $(cargo-cinstall --version 2>/dev/null || echo '?'), older than $CARGO_C_MIN: not used"
    fi
    say "installing cargo-c $CARGO_C_VERSION (debug) into $cargo_c (once; about 3 minutes)"
    cargo install cargo-c --locked --debug --version "$CARGO_C_VERSION" --root "$cargo_c" --quiet
    export PATH="$cargo_c/bin:$PATH"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
say "cargo cinstall --release --prefix $prefix --libdir lib"
cargo cinstall --release --prefix "$prefix" --libdir lib --target-dir "${CARGO_TARGET_DIR:-target}/cinstall"
lib="$prefix/lib"

# What was installed.
for f in include/closenotify.h lib/libclosenotify.a lib/libclosenotify.so lib/pkgconfig/closenotify.pc; do
    [ -e "$prefix/$f" ] || fail "$f was not installed"
done
cmp -s include/closenotify.h "$prefix/include/closenotify.h" ||
    fail "the installed header is not include/closenotify.h"

# A SONAME, and the file it names.
soname=$(readelf -d "$lib/libclosenotify.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ -n "$soname" ] || fail "libclosenotify.so has no SONAME"
major=$(sed -n 's/^version = "\([0-9]*\)\..*"/\1/p' Cargo.toml | head -1)
[ "$soname" = "libclosenotify.so.$major" ] ||
    fail "the SONAME is $soname, not libclosenotify.so.$major (libclosenotify.so.MAJOR)"
[ -e "$lib/$soname" ] || fail "the SONAME $soname is not installed"
say "SONAME $soname"

# No build path leaks into what is installed: no RPATH/RUNPATH in the library,
# nothing of the build tree in the .pc file.
if readelf -d "$lib/libclosenotify.so" | grep -qE '\((RPATH|RUNPATH)\)'; then
    fail "libclosenotify.so has an RPATH/RUNPATH: $(readelf -d "$lib/libclosenotify.so" | grep -E 'RPATH|RUNPATH')"
fi
if grep -qF "$root" "$lib/pkgconfig/closenotify.pc"; then
    fail "closenotify.pc names the build tree: $(grep -F "$root" "$lib/pkgconfig/closenotify.pc")"
fi
grep -q '^Requires:.*libssl' "$lib/pkgconfig/closenotify.pc" ||
    fail "closenotify.pc does not require libssl: $(cat "$lib/pkgconfig/closenotify.pc")"
grep -q '^Libs.private:' "$lib/pkgconfig/closenotify.pc" ||
    fail "closenotify.pc has no Libs.private"

# Only the C API is exported.
others=$(nm -D --defined-only "$lib/libclosenotify.so" | awk '{print $3}' | grep -v '^closenotify_' || true)
[ -z "$others" ] || fail "exported besides closenotify_*: $others"
say "exports: $(nm -D --defined-only "$lib/libclosenotify.so" | grep -c ' closenotify_') closenotify_* functions, nothing else"

# The .pc is relocatable: `prefix=` is its only absolute path and everything
# else derives from it, so a packager's staging directory (DESTDIR) or a moved
# prefix only needs `prefix` redefined. Prove it: move the prefix and build from
# the new place with `--define-variable=prefix=...`.
absolute=$(grep -v '^prefix=' "$lib/pkgconfig/closenotify.pc" | grep -E '(^|[ =])/' || true)
[ -z "$absolute" ] || fail "closenotify.pc has absolute paths besides prefix=: $absolute"
mv "$prefix" "$work/moved"
prefix="$work/moved"
lib="$prefix/lib"
export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pkgconf() { pkg-config --define-variable=prefix="$prefix" "$@"; }
[ "$(pkgconf --variable=libdir closenotify)" = "$lib" ] ||
    fail "the moved .pc does not point at $lib: $(pkgconf --variable=libdir closenotify)"

# Build the C programs against the installed copy with pkg-config: shared, and
# static from a second, static-only install (with both libraries in one place
# the linker would always take the shared one).
static_prefix="$work/static"
cargo cinstall --release --prefix "$static_prefix" --libdir lib --library-type staticlib \
    --target-dir "${CARGO_TARGET_DIR:-target}/cinstall" >/dev/null 2>&1 || fail "the static-only install failed"
cflags=(-std=c11 -Wall -Wextra -Wpedantic -Werror)
programs=(examples/c/*.c tests/c/cn_test.c tests/c/cn_errors.c tests/c/cn_closer.c)
for src in "${programs[@]}"; do
    name=$(basename "$src" .c)
    # shellcheck disable=SC2046
    cc "${cflags[@]}" "$src" -o "$work/$name" $(pkgconf --cflags --libs closenotify)
    # shellcheck disable=SC2046
    cc "${cflags[@]}" "$src" -o "$work/$name-static" \
        $(PKG_CONFIG_PATH="$static_prefix/lib/pkgconfig" \
            pkg-config --define-variable=prefix="$static_prefix" --static --cflags --libs closenotify)
done
say "built ${#programs[@]} programs with pkg-config, shared and --static"

# Run them: the shared ones load the installed library, the static ones carry it.
LD_LIBRARY_PATH="$lib" ldd "$work/cn_test" | grep -q "$lib/$soname" ||
    fail "cn_test does not load $lib/$soname: $(LD_LIBRARY_PATH="$lib" ldd "$work/cn_test")"
if readelf -d "$work/cn_test-static" | grep -q 'libclosenotify'; then
    fail "cn_test-static needs libclosenotify.so"
fi
LD_LIBRARY_PATH="$lib" "$work/cn_errors" >/dev/null || fail "cn_errors (shared) failed"
"$work/cn_errors-static" >/dev/null || fail "cn_errors (static) failed"
say "cn_errors passed, shared and static"
# The examples load and parse their command line (exit 2 for a usage error).
for prog in echo_server echo_server-static echo_client echo_client-static; do
    rc=0
    LD_LIBRARY_PATH="$lib" "$work/$prog" --bogus >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 2 ] || fail "$prog --bogus exited $rc, not 2 (usage error)"
done
say "the C examples start, shared and static"
echo "c-install-check: ok"
