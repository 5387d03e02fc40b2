#!/usr/bin/env bash
# Sets up a fresh machine for vramguard: the system packages the tests and the demo need, the
# tests' Python virtualenv (.venv-test, with the packages of tests/clients/requirements.txt), then
# a release build of the library, the command line and the simulated driver.
#   scripts/setup.sh            install what is missing, then build
#   scripts/setup.sh --no-build only install
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v nm >/dev/null 2>&1 || need_apt+=(binutils)
command -v fish >/dev/null 2>&1 || need_apt+=(fish)
# zsh and groff check the completion scripts and man pages (tests/cli_manuals.rs).
command -v zsh >/dev/null 2>&1 || need_apt+=(zsh)
command -v groff >/dev/null 2>&1 || need_apt+=(groff-base)
# systemd-analyze reads the systemd drop-in (tests/cli_service.rs); objdump checks the wheel.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
# A private single-node Slurm runs the TaskProlog of `vramguard env --slurm` (tests/slurm_shards.rs).
command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 || need_apt+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need_apt+=(munge)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
# A real container engine applies the CDI spec (tests/container_podman.rs): podman with runc
# (crun refuses the hybrid cgroup layout of these machines).
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The tests' virtualenv (tests/cuda_python.rs runs NVIDIA's cuda-python bindings from it). Where
# the interpreter cannot make one with pip in it, it is made without and filled by the outer pip.
venv=.venv-test
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the tests' Python virtualenv $venv" >&2
    python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv" && python3 -m venv --without-pip "$venv"; }
fi
if [ -x "$venv/bin/pip" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt
else
    python3 -m pip --python "$venv/bin/python" install -q --disable-pip-version-check \
        -r tests/clients/requirements.txt
fi

# >>> Python tools of the installation tests >>>
# The tests that build the wheel, guard virtualenvs and Jupyter kernels, and check the CDI spec
# and the Kubernetes manifests (tests/install_*.rs) use a project-local virtualenv,
# target/pytools, with the pinned packages of scripts/python-tools.txt (never what is installed
# by hand). Quick when they are already there.
pytools=target/pytools
if ! "$pytools/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "setup: creating $pytools" >&2
    python3 -m venv "$pytools"
fi
"$pytools/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/python-tools.txt
# <<< Python tools of the installation tests <<<

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed; install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi

# The formatting and lint checks (.ci/run) need rustfmt and clippy, which rustup's minimal
# profile leaves out.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "setup: installing the rustfmt and clippy components" >&2
    rustup component add rustfmt clippy
fi

if [ "${1:-}" != "--no-build" ]; then
    cargo build --release --workspace
fi
