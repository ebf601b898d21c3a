#!/usr/bin/env bash
# The OpenSSL version matrix, three plain steps per version:
#
#   1. build OpenSSL once into a cache outside the clone, from the sources the
#      openssl-src crates carry (scripts/openssl-builder; skipped when cached);
#   2. run, against it, the tests of what can differ between versions: the
#      behaviour matrix (classification, alerts, every adapter, the C API), the
#      version-specific cases, the independent peer, the C tests, and the check
#      that the tests really ran on that version (tests/versions.rs);
#   3. run the tour and compare it with the system OpenSSL's (elapsed aside).
#
#   scripts/openssl-matrix.sh                  # 1.1.1w, 3.6.3 and 4.0.3
#   scripts/openssl-matrix.sh --only 3.6       # one version (a prefix is enough)
#   scripts/openssl-matrix.sh --build-only     # step 1 only
#
# The system OpenSSL (3.0 on Debian) is what the plain `cargo test` runs on.
# Cache (CLOSENOTIFY_CACHE, default ~/.cache/closenotify):
#   openssl/<version>/install   the prefix: bin/openssl, include, lib
#   openssl/<version>/stamp     present once the prefix is complete
#   target/openssl-<version>    the cargo target directory of that version
# Logs: target/openssl-matrix/<version>/. Exit status 0 if every version passed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLOSENOTIFY_CACHE:-$HOME/.cache/closenotify}
versions=(1.1.1w 3.6.3 4.0.3)
# The openssl-src crate of each (pinned in scripts/openssl-builder/Cargo.toml).
declare -A crate=([1.1.1w]=111.28.2 [3.6.3]=300.6.1 [4.0.3]=400.0.2)
# What can differ between OpenSSL versions (the rest of the suite runs on the
# system OpenSSL only): see the README's table of versions.
tests=(--lib --test versions --test matrix --test outcomes --test key_update
    --test sessions --test external_peers --test independent_peer --test stoptls
    --test sigpipe --test unusable --test c_api --test c_server)
# Bump when the build recipe changes: every cached prefix is rebuilt.
recipe=1

only=() build_only=0
while [ $# -gt 0 ]; do
    case $1 in
        --only) only+=("$2"); shift 2 ;;
        --build-only) build_only=1; shift ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
selected=()
for v in "${versions[@]}"; do
    keep=$([ ${#only[@]} -eq 0 ] && echo 1 || echo 0)
    for o in "${only[@]+"${only[@]}"}"; do [ "${v#"$o"}" != "$v" ] && keep=1; done
    [ "$keep" = 1 ] && selected+=("$v")
done
[ ${#selected[@]} -gt 0 ] || { echo "no version matches ${only[*]} (${versions[*]})" >&2; exit 2; }

say() { printf '\n==> %s\n' "$*"; }
triple=$(rustc -vV | sed -n 's/^host: //p')

# Step 1: the prefix of version $1, built unless its stamp says it is there.
build() {
    local v=$1 dir=$cache/openssl/$1
    local prefix=$dir/install stamp="openssl-src=${crate[$v]}+$v recipe=$recipe target=$triple"
    if [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$prefix/bin/openssl" ]; then
        echo "OpenSSL $v: cached in $prefix"
        return
    fi
    say "OpenSSL $v: building into $prefix (log: $dir/build.log)"
    rm -rf "$dir" && mkdir -p "$dir"
    local t0=$SECONDS
    (cd "$repo/scripts/openssl-builder" &&
        env -u RUSTFLAGS CARGO_TARGET_DIR="$cache/target/openssl-builder" \
            cargo build --release --quiet --locked)
    env -u OPENSSL_DIR -u OPENSSL_STATIC -u OPENSSL_CONF \
        PATH="$repo/scripts/openssl-builder/bin:$PATH" CN_REAL_MAKE="$(command -v make)" \
        CN_JOBS="$(nproc)" CN_PREFIX="$prefix" \
        "$cache/target/openssl-builder/release/closenotify-openssl-builder" "$v" "$dir" "$triple" \
        >"$dir/build.log" 2>&1 || { tail -n 40 "$dir/build.log"; exit 1; }
    "$prefix/bin/openssl" version | grep -q "^OpenSSL $v " ||
        { echo "OpenSSL $v: the tool says $("$prefix/bin/openssl" version)" >&2; exit 1; }
    # 3.x's `openssl req` wants a config file, and the source carries none.
    if [ -d "$prefix/ssl" ] && [ ! -f "$prefix/ssl/openssl.cnf" ]; then
        printf '[ req ]\ndistinguished_name = dn\n[ dn ]\n' >"$prefix/ssl/openssl.cnf"
    fi
    echo "$stamp" >"$dir/stamp"
    echo "OpenSSL $v: built in $((SECONDS - t0)) s"
}

# The environment of version $1 for cargo and the tests (their `openssl` tool),
# as `env` arguments, one a line.
version_env() {
    local prefix=$cache/openssl/$1/install
    local lib=$prefix/lib
    [ -d "$prefix/lib64" ] && lib=$prefix/lib64
    printf '%s\n' -u OPENSSL_LIB_DIR -u OPENSSL_INCLUDE_DIR -u OPENSSL_CONF \
        "OPENSSL_DIR=$prefix" OPENSSL_STATIC=1 "PATH=$prefix/bin:$PATH" \
        "PKG_CONFIG_PATH=$lib/pkgconfig" "CARGO_TARGET_DIR=$cache/target/openssl-$1" \
        "CLOSENOTIFY_EXPECT_OPENSSL=$1"
}

# The tour's table, elapsed (characters 50-56) aside.
tour_table() { sed -n '/^scenario /,/^$/p' "$1" | cut -c1-49,57-; }

for v in "${selected[@]}"; do build "$v"; done
[ "$build_only" = 1 ] && exit 0

logs=$repo/target/openssl-matrix
mkdir -p "$logs"
say "The tour on the system OpenSSL, the reference"
(cd "$repo" && cargo run --quiet --example scenarios) >"$logs/system-tour.log"

failed=()
for v in "${selected[@]}"; do
    mkdir -p "$logs/$v"
    mapfile -t venv < <(version_env "$v")
    set -- "${venv[@]}"
    say "OpenSSL $v: the tests of what can differ (log: $logs/$v/test.log)"
    t0=$SECONDS
    if (cd "$repo" && env "$@" cargo test --no-fail-fast "${tests[@]}") >"$logs/$v/test.log" 2>&1; then
        result=passed
    else
        result=failed
    fi
    grep -E '^test result|^     Running|FAILED|panicked' "$logs/$v/test.log" | tail -n 40
    say "OpenSSL $v: the tour, compared with the system's"
    (cd "$repo" && env "$@" cargo run --quiet --example scenarios) >"$logs/$v/tour.log" 2>&1 ||
        result=failed
    if ! diff <(tour_table "$logs/system-tour.log") <(tour_table "$logs/$v/tour.log"); then
        echo "OpenSSL $v: the tour differs from the system's (above)"
        result=failed
    fi
    echo "OpenSSL $v: $result in $((SECONDS - t0)) s"
    [ "$result" = passed ] || failed+=("$v")
done
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
echo "every version passed: ${selected[*]}"
