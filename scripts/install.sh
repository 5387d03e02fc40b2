#!/bin/sh
# Installs vramguard so that the command finds its library without configuration:
#   PREFIX/bin/vramguard                  the command line
#   PREFIX/bin/vramguard-run              the POSIX sh wrapper (for hosts without the command)
#   PREFIX/bin/vramguard-entrypoint       the container entrypoint (scripts/docker-entrypoint.sh)
#   PREFIX/lib/vramguard/libvramguard.so  the preload library
#
#   scripts/install.sh                    PREFIX=/usr/local
#   PREFIX=$HOME/.local scripts/install.sh
#   DESTDIR=/tmp/pkg PREFIX=/usr scripts/install.sh    (staging for a package)
#   scripts/install.sh --uninstall
#
# It builds the release binaries first, the way the wheel is built (python/build_backend: cargo
# zigbuild for x86_64-unknown-linux-gnu.2.28), so that the library loads into every program of a
# system or container image with glibc 2.28 or later: a plain `cargo build` links against this
# machine's glibc (GLIBC_2.34 on current systems), and such a library preloaded on an older one
# stops every program from starting. The two build tools (cargo-zigbuild, ziglang, pinned in
# pyproject.toml) come from the Python environment target/pytools (scripts/setup.sh) or one this
# script makes, target/buildtools; VRAMGUARD_BUILD_PYTHON names another interpreter that has them.
# Running it again replaces the installed files.
set -eu

cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
bindir=$DESTDIR$PREFIX/bin
libdir=$DESTDIR$PREFIX/lib/vramguard

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$bindir/vramguard" "$bindir/vramguard-run" "$bindir/vramguard-entrypoint" "$libdir/libvramguard.so"
    rmdir "$libdir" 2>/dev/null || true
    echo "install: removed vramguard from $DESTDIR$PREFIX"
    exit 0
fi
if [ $# -gt 0 ]; then
    echo "usage: [PREFIX=/usr/local] [DESTDIR=] scripts/install.sh [--uninstall]" >&2
    exit 2
fi

# An interpreter with the build tools: given, the tests' tools, or a virtualenv made here.
has_tools() {
    [ -x "$1" ] && "$1" -c 'import ziglang' >/dev/null 2>&1 && [ -x "$(dirname "$1")/cargo-zigbuild" ]
}
build_python() {
    for candidate in "${VRAMGUARD_BUILD_PYTHON:-}" target/pytools/bin/python target/buildtools/bin/python; do
        if [ -n "$candidate" ] && has_tools "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    pins=$(sed -n 's/^requires = \[\(.*\)\]$/\1/p' pyproject.toml | tr -d '",')
    echo "install: making target/buildtools with $pins" >&2
    python3 -m venv target/buildtools >&2
    # shellcheck disable=SC2086 # the pins are words
    target/buildtools/bin/python -m pip install --quiet --disable-pip-version-check $pins >&2
    printf '%s\n' target/buildtools/bin/python
}

if [ "$(uname -m)" = x86_64 ]; then
    echo "install: building the release binaries for glibc 2.28" >&2
    python=$(build_python)
    # The wheel's one cargo command (python/build_backend/vramguard_build.py); prints the paths
    # of the command and the library it built.
    built=$("$python" -c 'import sys; sys.path.insert(0, "python/build_backend"); import vramguard_build; print("\n".join(vramguard_build.build_binaries()))')
    command_file=$(printf '%s\n' "$built" | sed -n 1p)
    library_file=$(printf '%s\n' "$built" | sed -n 2p)
else
    echo "install: $(uname -m): building with this machine's glibc (the 2.28 build is for x86_64); the library loads only where glibc is at least this machine's" >&2
    cargo build --release --locked -p vramguard -p vramguard-preload
    command_file=${CARGO_TARGET_DIR:-target}/release/vramguard
    library_file=${CARGO_TARGET_DIR:-target}/release/libvramguard.so
fi

install -d "$bindir" "$libdir"
install -m 0755 "$command_file" "$bindir/vramguard"
install -m 0755 scripts/vramguard-run "$bindir/vramguard-run"
install -m 0755 scripts/docker-entrypoint.sh "$bindir/vramguard-entrypoint"
install -m 0644 "$library_file" "$libdir/libvramguard.so"
echo "install: vramguard in $bindir, libvramguard.so in $libdir"
