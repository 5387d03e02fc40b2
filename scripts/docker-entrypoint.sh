#!/bin/sh
# Container entrypoint: puts the vramguard guard in place, then replaces itself with the
# container's command (exec), so the command is PID 1's successor, receives `docker stop`'s
# signals directly, and its exit status is the container's.
#
#   ENTRYPOINT ["/usr/local/bin/vramguard-entrypoint"]   (scripts/install.sh puts it there)
#   CMD ["python", "train.py"]
#
# Mount the host's ledger directory so that containers and host share one ledger:
#   docker run --gpus all -v /dev/shm/vramguard:/dev/shm/vramguard IMAGE
# The library is $VRAMGUARD_LIBRARY, else <script dir>/../lib/vramguard/libvramguard.so (where
# scripts/install.sh puts it), else /usr/local/lib/vramguard/libvramguard.so. Every VRAMGUARD_*
# variable set on the container is passed on.
set -eu

if [ -n "${VRAMGUARD_LIBRARY:-}" ]; then
    library=$VRAMGUARD_LIBRARY
else
    # Installed by scripts/install.sh as PREFIX/bin/vramguard-entrypoint: the library is in
    # PREFIX/lib/vramguard.
    library=$(cd "$(dirname "$0")/.." && pwd -P)/lib/vramguard/libvramguard.so
    [ -f "$library" ] || library=/usr/local/lib/vramguard/libvramguard.so
fi
if [ ! -f "$library" ]; then
    echo "docker-entrypoint: $library not found; install vramguard in the image (scripts/install.sh) or set VRAMGUARD_LIBRARY" >&2
    exit 125
fi

# Defaults for a container: the shared ledger directory; everything else keeps the library's
# defaults unless the container sets it.
VRAMGUARD_DIR=${VRAMGUARD_DIR:-/dev/shm/vramguard}
export VRAMGUARD_DIR

if [ $# -eq 0 ]; then
    echo "docker-entrypoint: no command given" >&2
    exit 2
fi
# vramguard-run (installed beside this script) puts the library first in LD_PRELOAD, after
# checking that it can be loaded here (a library built for a newer glibc than the image's would
# stop every program; the command then starts unguarded, with one warning), and execs the command.
VRAMGUARD_LIBRARY=$library
export VRAMGUARD_LIBRARY
run=$(cd "$(dirname "$0")" && pwd -P)/vramguard-run
if [ ! -f "$run" ]; then
    echo "docker-entrypoint: $run not found; install vramguard in the image with scripts/install.sh (it puts vramguard-run beside this script)" >&2
    exit 125
fi
exec /bin/sh "$run" -- "$@"
