#!/usr/bin/env bash
# The C library as C projects consume it: install it with cargo-c into a fresh
# prefix, check what a distro packager checks, and build and run the C examples and
# the C tests against the installed copy through pkg-config, shared and static.
#
#   scripts/c-install-check.sh            (CI runs it; about a minute once cargo-c
#                                          and the release build are cached)
#
# cargo-c is installed once into a cache outside the clone, keyed by version:
#   ${CLOSENOTIFY_CACHE:-~/.cache/closenotify}/cargo-c/VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# The last cargo-c release that builds with the Rust of this machine (1.95).
CARGO_C_VERSION=0.10.24+cargo-0.98.0
cache=${CLOSENOTIFY_CACHE:-$HOME/.cache/closenotify}
cargo_c="$cache/cargo-c/$CARGO_C_VERSION"

say() { printf '  %s\n' "$*"; }
fail() { printf 'c-install-check: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$cargo_c/bin/cargo-cinstall" ]; then
    say "installing cargo-c $CARGO_C_VERSION into $cargo_c (once; several minutes)"
    cargo install cargo-c --locked --version "$CARGO_C_VERSION" --root "$cargo_c" --quiet
fi
export PATH="$cargo_c/bin:$PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
say "cargo cinstall --release --prefix $prefix --libdir lib"
cargo cinstall --release --quiet --prefix "$prefix" --libdir lib --target-dir target/cinstall
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
grep -q '^Requires.private:.*libssl' "$lib/pkgconfig/closenotify.pc" ||
    fail "closenotify.pc does not require libssl: $(cat "$lib/pkgconfig/closenotify.pc")"
grep -q '^Libs.private:' "$lib/pkgconfig/closenotify.pc" ||
    fail "closenotify.pc has no Libs.private"

# Only the C API is exported.
others=$(nm -D --defined-only "$lib/libclosenotify.so" | awk '{print $3}' | grep -v '^closenotify_' || true)
[ -z "$others" ] || fail "exported besides closenotify_*: $others"
say "exports: $(nm -D --defined-only "$lib/libclosenotify.so" | grep -c ' closenotify_') closenotify_* functions, nothing else"

# The .pc is relocatable: move the whole prefix and build from the new place.
mv "$prefix" "$work/moved"
prefix="$work/moved"
lib="$prefix/lib"
export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
[ "$(pkg-config --variable=prefix closenotify)" = "$prefix" ] ||
    fail "pkg-config does not follow the moved prefix: $(pkg-config --variable=prefix closenotify)"

# Build the C programs against the installed copy, shared and static.
cflags=(-std=c11 -Wall -Wextra -Wpedantic -Werror)
programs=(examples/c/echo_client.c examples/c/echo_server.c tests/c/cn_test.c)
for src in "${programs[@]}"; do
    name=$(basename "$src" .c)
    # shellcheck disable=SC2046
    cc "${cflags[@]}" "$src" -o "$work/$name" $(pkg-config --cflags --libs closenotify)
    # Fully static: libclosenotify.a with OpenSSL's static libraries, as
    # `pkg-config --static` lists them (Requires.private, Libs.private).
    # shellcheck disable=SC2046
    cc "${cflags[@]}" -static "$src" -o "$work/$name-static" \
        $(pkg-config --static --cflags --libs closenotify) 2>"$work/link.log" ||
        { cat "$work/link.log" >&2; fail "static build of $src failed"; }
done
say "built ${#programs[@]} programs, shared and static"

# Run them: the shared ones load the installed library, the static ones none.
ldd "$work/cn_test" | grep -q "$lib/$soname" || {
    LD_LIBRARY_PATH="$lib" ldd "$work/cn_test" | grep -q "$lib/$soname" ||
        fail "cn_test does not load $lib/$soname"
}
LD_LIBRARY_PATH="$lib" "$work/cn_test" errors >/dev/null || fail "cn_test errors (shared) failed"
"$work/cn_test-static" errors >/dev/null || fail "cn_test errors (static) failed"
if ldd "$work/cn_test-static" >/dev/null 2>&1; then
    fail "cn_test-static is dynamically linked"
fi
LD_LIBRARY_PATH="$lib" "$work/echo_server" --help >/dev/null 2>&1 || true
say "cn_test errors passed, shared and static"
echo "c-install-check: ok"
