#!/usr/bin/env bash
# The OpenSSL version matrix: builds each OpenSSL version the crate supports into a
# cached prefix outside the clone, then runs the whole `cargo test` (with the
# tokio feature, so that its outcome tests run on every version too) and the
# scenarios tour against it, checks that every version's tour reads the same as
# the system OpenSSL's (outcomes, stages, sessions, alerts, details; elapsed
# times aside), and prints a per-version summary.
#
#   scripts/openssl-matrix.sh                  # every version: build (cached), test
#   scripts/openssl-matrix.sh --only 3.6       # one version (repeatable; a prefix
#                                              # of the name is enough: 1.1.1, 3.6, 4.0)
#   scripts/openssl-matrix.sh --build-only     # build the prefixes, run nothing
#   scripts/openssl-matrix.sh --with-system    # also the system OpenSSL (name: system)
#
# The system OpenSSL (3.0 on Debian) is what a plain `cargo test` uses; the matrix
# adds the versions below. Each one comes from the `openssl-src` crate that carries
# its source, through that crate's own build API (`openssl_src::Build`): a tiny
# builder project is generated in the cache, next to the prefix. openssl-src
# installs only headers, static libraries and pkg-config files (`make install_dev`)
# and deletes its build tree afterwards, so a `make` wrapper on the builder's PATH
# also builds `apps/openssl` in that tree right after `install_dev` and copies it
# into the prefix: the tests run `openssl s_server`/`s_client` of the SAME version
# as their peers. (OPENSSLDIR is <prefix>/ssl for 3.x+, /usr/local/ssl for 1.1.1,
# whose openssl-src has no setting for it.)
#
# Layout, per version (CLOSENOTIFY_CACHE defaults to ~/.cache/closenotify):
#   $CLOSENOTIFY_CACHE/openssl/<version>/install/   the prefix (bin, include, lib)
#   $CLOSENOTIFY_CACHE/openssl/<version>/stamp      present once the prefix is done
#   $CLOSENOTIFY_CACHE/openssl/<version>/build.log  the OpenSSL build's output
#   $CLOSENOTIFY_CACHE/openssl/<version>/builder/   the generated builder project
# A rerun skips every version whose stamp matches. Tests build into
# target/openssl-<version> (one cargo target dir per version: cached between runs,
# never shared, since openssl-sys's output depends on OPENSSL_DIR). Logs of the
# test runs go to target/openssl-matrix/<version>/.
#
# Needs: cargo, a C compiler, make, perl, pkg-config, readelf (binutils), and what
# the tests themselves need (python3, valgrind is not used here). Exit status: 0 if
# every selected version passed, 1 otherwise, 2 on a usage error.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${CLOSENOTIFY_CACHE:-$HOME/.cache/closenotify}/openssl
jobs=$(nproc 2>/dev/null || echo 2)

# name  openssl-src crate version (its build metadata names the OpenSSL release)
matrix=(
    "1.1.1w 111.28.2+1.1.1w"
    "3.6.3  300.6.1+3.6.3"
    "4.0.3  400.0.2+4.0.3"
)
# Bump when the build recipe below changes: every cached prefix is rebuilt.
recipe=1

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

only=()
build_only=0
with_system=0
while [ $# -gt 0 ]; do
    case $1 in
        --only) [ $# -ge 2 ] || usage; only+=("$2"); shift 2 ;;
        --only=*) only+=("${1#--only=}"); shift ;;
        --build-only) build_only=1; shift ;;
        --with-system) with_system=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

# The selected versions, as "name crate" lines ("system -" for the system one).
selected=()
wanted() {  # wanted NAME: selected by --only (exact name or a prefix of it)?
    [ ${#only[@]} -eq 0 ] && return 0
    local o
    for o in "${only[@]}"; do
        [ "$1" = "$o" ] || [ "${1#"$o"}" != "$1" ] && return 0
    done
    return 1
}
if [ "$with_system" = 1 ] || printf '%s\n' "${only[@]+"${only[@]}"}" | grep -qx system; then
    wanted system && selected+=("system -")
fi
for entry in "${matrix[@]}"; do
    read -r name crate <<<"$entry"
    wanted "$name" && selected+=("$name $crate")
done
if [ ${#selected[@]} -eq 0 ]; then
    echo "no version matches --only ${only[*]}; known: system $(printf '%s ' "${matrix[@]%% *}")" >&2
    exit 2
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
real_make=$(command -v make) || { echo "make is required" >&2; exit 1; }

say() { printf '\n==> %s\n' "$*"; }
now() { date +%s; }

# ---------------------------------------------------------------------------
# Building one OpenSSL version into its cached prefix.
# ---------------------------------------------------------------------------

# build_openssl NAME CRATE: makes $cache/NAME/install, unless its stamp says it is
# already there. Prints nothing on stdout but progress; the log is build.log.
build_openssl() {
    local name=$1 crate=$2
    local dir=$cache/$name
    local prefix=$dir/install
    local want="openssl-src=$crate recipe=$recipe target=$triple"
    if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$want" ] &&
        [ -x "$prefix/bin/openssl" ]; then
        build_secs[$name]="cached"
        echo "OpenSSL $name: cached in $prefix (built in $(cat "$dir/build-seconds" 2>/dev/null || echo '?') s)"
        ensure_openssl_cnf "$name" "$prefix"
        return 0
    fi
    rm -f "$dir/stamp"
    mkdir -p "$dir/builder/src" "$dir/shim"

    # The builder: openssl-src pinned to the exact version (cargo matches on
    # x.y.z; the +metadata is informational) and a main that runs its build API.
    cat >"$dir/builder/Cargo.toml" <<EOF
[package]
name = "closenotify-openssl-builder"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
openssl-src = "=${crate%%+*}"

# Not part of any enclosing workspace.
[workspace]
EOF
    # openssl-src 111.x has no `openssl_dir` (its OPENSSLDIR is /usr/local/ssl);
    # the 3.x/4.x builders put OPENSSLDIR (openssl.cnf) inside the prefix.
    local openssldir_call=""
    case $crate in
        111.*) ;;
        *) openssldir_call='build.openssl_dir(&args[3]);' ;;
    esac
    cat >"$dir/builder/src/main.rs" <<EOF
//! Generated by scripts/openssl-matrix.sh: builds OpenSSL with openssl-src.
//! usage: builder OUT_DIR TARGET OPENSSLDIR
fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(args.len(), 4, "usage: builder OUT_DIR TARGET OPENSSLDIR");
    let mut build = openssl_src::Build::new();
    build.out_dir(&args[1]).target(&args[2]).host(&args[2]);
    $openssldir_call
    let artifacts = build.build();
    println!("openssl-src {} installed into {}", openssl_src::version(),
             artifacts.lib_dir().parent().unwrap().display());
}
EOF
    # The make wrapper openssl-src runs (it calls plain `make` from PATH for
    # `depend`, `build_libs` and `install_dev`). After install_dev, while the
    # configured tree still exists, it builds the command-line tool and installs
    # it, and (3.x+) the OPENSSLDIR with openssl.cnf.
    cat >"$dir/shim/make" <<'EOF'
#!/usr/bin/env bash
# Generated by scripts/openssl-matrix.sh (see there).
set -euo pipefail
case " $* " in
    *" build_libs "*) "$CN_REAL_MAKE" -j"$CN_JOBS" "$@" ;;
    *) "$CN_REAL_MAKE" "$@" ;;
esac
if [ "$*" = install_dev ]; then
    echo "closenotify shim: building apps/openssl in $PWD"
    "$CN_REAL_MAKE" -j"$CN_JOBS" apps/openssl
    install -D -m 0755 apps/openssl "$CN_PREFIX/bin/openssl"
    # OPENSSLDIR/openssl.cnf, when the tree has it (`make install_ssldirs` also
    # wants the scripts of build_programs). openssl-src's stripped tree has no
    # apps/openssl.cnf: then the tools run without a config file, which s_server,
    # s_client and the library accept.
    if [ -n "${CN_OPENSSLDIR:-}" ] && [ -f apps/openssl.cnf ]; then
        install -D -m 0644 apps/openssl.cnf "$CN_OPENSSLDIR/openssl.cnf"
    fi
fi
EOF
    chmod +x "$dir/shim/make"

    say "OpenSSL $name: building with openssl-src $crate (log: $dir/build.log)"
    local t0
    t0=$(now)
    # The builder gets its own target dir whatever the caller's environment says.
    (cd "$dir/builder" &&
        env -u CARGO_TARGET_DIR -u RUSTFLAGS cargo build --release --quiet) ||
        { echo "OpenSSL $name: building the builder failed" >&2; return 1; }
    local openssldir=$prefix/ssl
    if ! env -u OPENSSL_DIR -u OPENSSL_STATIC -u OPENSSL_CONF \
        PATH="$dir/shim:$PATH" CN_REAL_MAKE="$real_make" CN_JOBS="$jobs" \
        CN_PREFIX="$prefix" CN_OPENSSLDIR="$([ -n "$openssldir_call" ] && echo "$openssldir")" \
        "$dir/builder/target/release/closenotify-openssl-builder" "$dir" "$triple" "$openssldir" \
        >"$dir/build.log" 2>&1; then
        tail -n 40 "$dir/build.log" >&2
        echo "OpenSSL $name: build failed (log: $dir/build.log)" >&2
        return 1
    fi

    # Checks: the tool runs and is the right version; static libs and headers.
    local libdir
    libdir=$(libdir_of "$prefix")
    "$prefix/bin/openssl" version | grep -q "OpenSSL ${name}" ||
        { echo "OpenSSL $name: $prefix/bin/openssl says $("$prefix/bin/openssl" version)" >&2; return 1; }
    if ! [ -f "$libdir/libssl.a" ] || ! [ -f "$libdir/libcrypto.a" ] ||
        ! [ -f "$prefix/include/openssl/ssl.h" ]; then
        echo "OpenSSL $name: missing libssl.a/libcrypto.a/ssl.h in $prefix" >&2
        return 1
    fi
    write_pc_files "$name" "$prefix" "$libdir"
    ensure_openssl_cnf "$name" "$prefix"

    build_secs[$name]=$(($(now) - t0))
    echo "${build_secs[$name]}" >"$dir/build-seconds"
    echo "$want" >"$dir/stamp"
    echo "OpenSSL $name: built in ${build_secs[$name]} s: $("$prefix/bin/openssl" version)"
}

# ensure_openssl_cnf NAME PREFIX: a minimal openssl.cnf in OPENSSLDIR when it is
# inside the prefix and has none (openssl-src's source has no apps/openssl.cnf):
# the library and s_server/s_client run without one, but 3.x's `openssl req`
# refuses to. It sets nothing, so the library behaves as without a file.
ensure_openssl_cnf() {
    local name=$1 prefix=$2
    local cnf=$prefix/ssl/openssl.cnf
    "$prefix/bin/openssl" version -d | grep -qF "\"$prefix/ssl\"" || return 0
    [ -f "$cnf" ] && return 0
    mkdir -p "$prefix/ssl"
    cat >"$cnf" <<'CNF'
# Written by scripts/openssl-matrix.sh: the openssl-src source tree ships no
# openssl.cnf. Only what `openssl req` needs; no library settings.
[ req ]
distinguished_name = req_distinguished_name
[ req_distinguished_name ]
CNF
    echo "OpenSSL $name: wrote a minimal $cnf"
}

# libdir_of PREFIX: lib, or lib64 (OpenSSL 1.1.1 on x86_64 installs there).
libdir_of() {
    if [ -f "$1/lib/libssl.a" ] || [ -f "$1/lib/libssl.so" ]; then echo "$1/lib"; else echo "$1/lib64"; fi
}

# write_pc_files NAME PREFIX LIBDIR: libssl.pc/libcrypto.pc/openssl.pc, unless
# install_dev wrote them (it does on 1.1.1 and 3.x; this is the safety net).
write_pc_files() {
    local name=$1 prefix=$2 libdir=$3
    local pc=$libdir/pkgconfig
    [ -f "$pc/libssl.pc" ] && [ -f "$pc/libcrypto.pc" ] && return 0
    mkdir -p "$pc"
    local v=${name%%[a-z]*}
    cat >"$pc/libcrypto.pc" <<EOF
prefix=$prefix
libdir=$libdir
includedir=\${prefix}/include

Name: OpenSSL-libcrypto
Description: OpenSSL cryptography library
Version: $v
Libs: -L\${libdir} -lcrypto
Libs.private: -ldl -pthread
Cflags: -I\${includedir}
EOF
    cat >"$pc/libssl.pc" <<EOF
prefix=$prefix
libdir=$libdir
includedir=\${prefix}/include

Name: OpenSSL-libssl
Description: Secure Sockets Layer and cryptography libraries
Version: $v
Requires.private: libcrypto
Libs: -L\${libdir} -lssl
Cflags: -I\${includedir}
EOF
    cat >"$pc/openssl.pc" <<EOF
Name: OpenSSL
Description: Secure Sockets Layer and cryptography libraries and tools
Version: $v
Requires: libssl libcrypto
EOF
    echo "OpenSSL $name: wrote the pkg-config files into $pc"
}

# ---------------------------------------------------------------------------
# Testing one version.
# ---------------------------------------------------------------------------

# version_env NAME: the environment for cargo and the tests, as `env` arguments.
version_env() {
    local name=$1
    if [ "$name" = system ]; then
        printf '%s\n' -u OPENSSL_DIR -u OPENSSL_STATIC -u OPENSSL_LIB_DIR -u OPENSSL_INCLUDE_DIR \
            "CARGO_TARGET_DIR=$repo/target/openssl-system"
        return
    fi
    local prefix=$cache/$name/install
    local libdir
    libdir=$(libdir_of "$prefix")
    printf '%s\n' -u OPENSSL_LIB_DIR -u OPENSSL_INCLUDE_DIR -u OPENSSL_CONF \
        "OPENSSL_DIR=$prefix" "OPENSSL_STATIC=1" \
        "PATH=$prefix/bin:$PATH" \
        "PKG_CONFIG_PATH=$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
        "CARGO_TARGET_DIR=$repo/target/openssl-$name"
}

# check_linkage NAME TARGET_DIR LOG: the build really used the intended OpenSSL.
#  - openssl-sys's build script found the prefix's version (version_number);
#  - the crate's build script emitted the matching cfgs;
#  - (static) the crate's staticlib bundles that release (its version text; the
#    cdylib may have dropped the string with unused code) and the cdylib needs
#    no shared libssl/libcrypto; (system) the cdylib needs the system libssl.so;
#  - `openssl version` on the tests' PATH is the same release.
check_linkage() {
    local name=$1 target=$2 log=$3
    local out ok=0
    {
        echo "--- linkage check"
        # The newest build-script output (an older one may survive a rebuild).
        # shellcheck disable=SC2012
        out=$(ls -t "$target"/debug/build/openssl-sys-*/output 2>/dev/null | head -n 1)
        echo "openssl-sys build output: $out"
        grep -E '^cargo:(version_number|rustc-link-lib|rustc-link-search)' "$out" || true
        local cn
        # shellcheck disable=SC2012
        cn=$(ls -t "$target"/debug/build/closenotify-*/output 2>/dev/null | head -n 1)
        echo "closenotify build cfgs: $(grep -o 'rustc-cfg=.*' "$cn" | tr '\n' ' ')"
        echo "openssl on PATH: $(command -v openssl): $(openssl version)"
    } >>"$log"
    local vnum
    vnum=$(sed -n 's/^cargo:version_number=//p' "$out")
    # The C library the C tests built (tests/c_api.rs: the capi feature, into
    # target/capi/<profile> of this run's target directory).
    local so=$target/capi/debug/libclosenotify.so
    case $name in
        system)
            readelf -d "$so" | grep -q 'NEEDED.*libssl\.so' || ok=1
            echo "system: cdylib NEEDED: $(readelf -d "$so" | grep -o 'lib\(ssl\|crypto\)\.so[^]]*' | tr '\n' ' ')" >>"$log"
            ;;
        *)
            # e.g. 1.1.1w -> 1010117f, 3.6.3 -> 30600030, 4.0.3 -> 40000030
            local expect
            expect=$(version_hex "$name")
            [ "${vnum,,}" = "$expect" ] || { echo "version_number $vnum, expected $expect" >>"$log"; ok=1; }
            grep -q 'rustc-link-lib=static=ssl' "$out" || { echo "not linked statically" >>"$log"; ok=1; }
            if readelf -d "$so" | grep -q 'NEEDED.*lib\(ssl\|crypto\)\.so'; then
                echo "the cdylib needs a shared libssl/libcrypto" >>"$log"; ok=1
            fi
            local a=$target/capi/debug/libclosenotify.a
            if grep -aq "OpenSSL $name " "$a"; then
                echo "staticlib bundles: $(grep -ao "OpenSSL $name [0-9A-Za-z ]*" "$a" | head -n 1)" >>"$log"
            else
                echo "no 'OpenSSL $name' text in $a" >>"$log"; ok=1
            fi
            openssl version | grep -q "^OpenSSL $name " || { echo "wrong openssl on PATH" >>"$log"; ok=1; }
            ;;
    esac
    return "$ok"
}

# version_hex NAME: OPENSSL_VERSION_NUMBER of a release name, lower-case hex.
version_hex() {
    local v=$1 letter=""
    case $v in *[a-z]) letter=${v: -1}; v=${v%?} ;; esac
    local major minor patch
    IFS=. read -r major minor patch <<<"$v"
    if [ "$major" -ge 3 ]; then
        # 3.0+: 0xMNN00PP0
        printf '%x%02x00%02x0\n' "$major" "$minor" "$patch"
    else
        # 1.1.1w: 0xMNNFFPPS with PP the letter (a=1) and S=f (release)
        local pp=0
        [ -n "$letter" ] && pp=$(($(printf '%d' "'$letter") - 96))
        printf '%x%02x%02x%02xf\n' "$major" "$minor" "$patch" "$pp"
    fi
}

# test_version NAME: cargo test and the scenarios tour; sets result/test_secs.
test_version() {
    local name=$1
    local logdir=$repo/target/openssl-matrix/$name
    mkdir -p "$logdir"
    local -a envargs
    mapfile -t envargs < <(version_env "$name")
    local target
    target=$(printf '%s\n' "${envargs[@]}" | sed -n 's/^CARGO_TARGET_DIR=//p')
    local t0 t1 status=passed
    t0=$(now)

    say "OpenSSL $name: cargo test (log: $logdir/test.log)"
    if ! (cd "$repo" && env "${envargs[@]}" CARGO_TERM_COLOR=never cargo test --no-fail-fast --features tokio) \
        >"$logdir/test.log" 2>&1; then
        status=failed
    fi
    cargo_test_secs[$name]=$(($(now) - t0))
    # The closing lines of every test binary, and the failures.
    grep -E '^(test result|     Running|   Doc-tests|error(\[|:)|    [a-z_0-9:]+$)' "$logdir/test.log" | tail -n 80 || true

    # In a subshell with the version's environment (for `openssl` on PATH).
    if ! (
        set -- "${envargs[@]}"
        while [ $# -gt 0 ]; do
            if [ "$1" = -u ]; then unset "$2"; shift 2; else export "${1?}"; shift; fi
        done
        check_linkage "$name" "$target" "$logdir/test.log"
    ); then
        echo "OpenSSL $name: LINKAGE CHECK FAILED (see the end of $logdir/test.log)"
        status=failed
    else
        echo "OpenSSL $name: linkage check ok (see the end of $logdir/test.log)"
    fi
    sed -n '/^--- linkage check/,$p' "$logdir/test.log"

    t1=$(now)
    say "OpenSSL $name: cargo run --example scenarios (log: $logdir/scenarios.log)"
    # The table on stdout; cargo's output (and its warnings) only on failure. The
    # features of the cargo test above, so that nothing is built a second time.
    if ! (cd "$repo" && env "${envargs[@]}" CARGO_TERM_COLOR=never cargo run --quiet --features tokio --example scenarios) \
        >"$logdir/scenarios.log" 2>"$logdir/scenarios.stderr"; then
        status=failed
        tail -n 30 "$logdir/scenarios.stderr"
    fi
    cat "$logdir/scenarios.log"

    scenarios_secs[$name]=$(($(now) - t1))
    test_secs[$name]=$(($(now) - t0))
    result[$name]=$status
    echo "OpenSSL $name: $status in ${test_secs[$name]} s (cargo test ${cargo_test_secs[$name]} s," \
        "scenarios ${scenarios_secs[$name]} s)"
}

# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------

declare -A build_secs=() test_secs=() cargo_test_secs=() scenarios_secs=() result=()
total0=$(now)
mkdir -p "$cache"

for entry in "${selected[@]}"; do
    read -r name crate <<<"$entry"
    [ "$name" = system ] && continue
    if ! build_openssl "$name" "$crate"; then
        result[$name]="build failed"
    fi
done

if [ "$build_only" = 0 ]; then
    for entry in "${selected[@]}"; do
        read -r name _ <<<"$entry"
        [ -n "${result[$name]:-}" ] && continue
        test_version "$name"
    done
fi

# The tour reads the same on every version: outcomes, stages, sessions, alerts
# and details; only the elapsed column (characters 50-56) may differ. The
# reference is the system OpenSSL's tour, from the default target directory
# (what a plain `cargo test` built).
tour_table() {
    sed -n '/^scenario /,/^$/p' "$1" | cut -c1-49,57-
}
tours_differ=0
if [ "$build_only" = 0 ]; then
    reference=$repo/target/openssl-matrix/system-tour.log
    say "The tour on the system OpenSSL (the reference; log: $reference)"
    if (cd "$repo" && env -u OPENSSL_DIR -u OPENSSL_STATIC -u OPENSSL_LIB_DIR -u OPENSSL_INCLUDE_DIR \
        CARGO_TERM_COLOR=never cargo run --quiet --example scenarios) >"$reference" 2>&1; then
        for entry in "${selected[@]}"; do
            read -r name _ <<<"$entry"
            log=$repo/target/openssl-matrix/$name/scenarios.log
            [ -s "$log" ] || continue
            if diff <(tour_table "$reference") <(tour_table "$log") >"$log.diff"; then
                echo "OpenSSL $name: the tour is identical to the system's (elapsed aside)"
            else
                echo "OpenSSL $name: THE TOUR DIFFERS from the system's:"
                cat "$log.diff"
                tours_differ=1
            fi
        done
    else
        echo "the system OpenSSL's tour failed:"
        tail -n 30 "$reference"
        tours_differ=1
    fi
fi

say "Summary"
# build_s: this run's OpenSSL build ("cached": built before, see build-seconds);
# test_s: cargo test (compiling included) + the scenarios tour.
printf '%-8s %-13s %8s %8s %8s  %s\n' version result build_s test_s tour_s prefix
failed=0
for entry in "${selected[@]}"; do
    read -r name _ <<<"$entry"
    r=${result[$name]:-built}
    case $r in passed|built) ;; *) failed=1 ;; esac
    if [ "$name" = system ]; then
        b=- prefix="(system)"
    else
        b=${build_secs[$name]:--} prefix=$cache/$name/install
    fi
    printf '%-8s %-13s %8s %8s %8s  %s\n' "$name" "$r" "$b" \
        "${cargo_test_secs[$name]:--}" "${scenarios_secs[$name]:--}" "$prefix"
done
[ "$tours_differ" = 0 ] || { echo "the tours differ (above)"; failed=1; }
echo "total: $(($(now) - total0)) s"
exit $failed
