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
# It builds the release binaries first when they are missing (cargo build --release). Running it
# again replaces the installed files.
set -eu

cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
target=${CARGO_TARGET_DIR:-target}/release
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

if [ ! -f "$target/vramguard" ] || [ ! -f "$target/libvramguard.so" ]; then
    echo "install: building the release binaries" >&2
    cargo build --release -p vramguard -p vramguard-preload
fi

install -d "$bindir" "$libdir"
install -m 0755 "$target/vramguard" "$bindir/vramguard"
install -m 0755 scripts/vramguard-run "$bindir/vramguard-run"
install -m 0755 scripts/docker-entrypoint.sh "$bindir/vramguard-entrypoint"
install -m 0644 "$target/libvramguard.so" "$libdir/libvramguard.so"
echo "install: vramguard in $bindir, libvramguard.so in $libdir"
