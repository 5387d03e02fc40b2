#!/usr/bin/env bash
# Runs the whole test suite against the simulated driver (no GPU needed): a release build of
# every workspace member (the tests load target/release/libvramguard.so and the simulated
# libcuda.so), then every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads=2
