#!/usr/bin/env bash
# gpu-smoke.sh: checks vramguard on a real NVIDIA card with PyTorch (it cannot run without one).
#
# First checks that the guard sees what real PyTorch allocates (through NVIDIA's runtime and its
# cuGetProcAddress lookups, whatever pointers the driver answers with):
#   0. a process holding 512 MiB is shown by `vramguard status --json` with at least that much,
#      and one that wants 2 GiB under --limit 1GiB gets a clean OutOfMemoryError.
# Then starts three real PyTorch processes under the guard that together want more than the card,
# each declaring its need up front (--expect):
#   1. policy deny: each wants 60% of the card; expected: one loads, the others fail at once with a
#                   clean out-of-memory (torch.cuda.OutOfMemoryError, or the driver's out-of-memory
#                   at start), none dies of anything else;
#   2. policy wait: the same three; expected: all finish, one after another.
# Meanwhile it samples `nvidia-smi` to show that the card's used memory never reached its total.
#
#   scripts/gpu-smoke.sh [DEVICE_INDEX]        (default 0; PYTHON=python3, VRAMGUARD=vramguard)
#
# Exit code: 0 the guard held in both phases, 1 it did not, 2 something needed is missing.
set -euo pipefail

device=${1:-0}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd -P)
vramguard=${VRAMGUARD:-}
if [ -z "$vramguard" ]; then
    if command -v vramguard >/dev/null 2>&1; then
        vramguard=$(command -v vramguard)
    else
        vramguard="$here/../target/release/vramguard"
    fi
fi

die() { echo "gpu-smoke: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this check needs a real NVIDIA card"
[ -x "$vramguard" ] || die "vramguard not found (build it: cargo build --release --workspace, or set VRAMGUARD)"
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || die "PyTorch with CUDA is not importable by $python"

total_mib=$(nvidia-smi -i "$device" --query-gpu=memory.total --format=csv,noheader,nounits | tr -d ' ')
uuid=$(nvidia-smi -i "$device" --query-gpu=uuid --format=csv,noheader | tr -d ' ')
want_mib=$((total_mib * 6 / 10))
echo "gpu-smoke: card $device ($uuid), ${total_mib} MiB; three processes of ${want_mib} MiB each"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VRAMGUARD_DIR="$work/ledger"
export CUDA_VISIBLE_DEVICES="$uuid"

cat >"$work/load.py" <<'PY'
import sys, time
import torch
name, want_mib, hold_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
chunk_mib = 256
held = []
try:
    torch.cuda.init()
    while len(held) * chunk_mib < want_mib:
        held.append(torch.empty(chunk_mib << 20, dtype=torch.uint8, device="cuda"))
        time.sleep(0.02)
except torch.cuda.OutOfMemoryError:
    print(f"{name}: OOM after {len(held) * chunk_mib} MiB", flush=True)
    sys.exit(2)
except RuntimeError as error:
    # Refused at start (its up-front reservation did not fit): PyTorch reports the driver's
    # CUDA_ERROR_OUT_OF_MEMORY from context creation as a RuntimeError.
    if "out of memory" in str(error).lower() and not held:
        print(f"{name}: OOM at start: {error}", flush=True)
        sys.exit(2)
    print(f"{name}: ERROR {type(error).__name__}: {error}", flush=True)
    sys.exit(1)
except Exception as error:  # anything else is what the guard exists to prevent
    print(f"{name}: ERROR {type(error).__name__}: {error}", flush=True)
    sys.exit(1)
print(f"{name}: LOADED {len(held) * chunk_mib} MiB", flush=True)
time.sleep(hold_s)
sys.exit(0)
PY

# Samples the card's used memory (MiB) into $1 until killed.
sample() {
    while true; do
        nvidia-smi -i "$device" --query-gpu=memory.used --format=csv,noheader,nounits | tr -d ' ' >>"$1"
        sleep 0.2
    done
}

# phase NAME OPTIONS...: runs the three processes at once; sets loaded/oom/other/peak_mib.
phase() {
    local name=$1
    shift
    local samples="$work/$name.samples" pids=() codes=() i
    : >"$samples"
    sample "$samples" &
    local sampler=$!
    for i in 1 2 3; do
        "$vramguard" run "$@" -- "$python" "$work/load.py" "$name-$i" "$want_mib" 3 &
        pids+=($!)
    done
    for i in 0 1 2; do
        if wait "${pids[$i]}"; then codes+=(0); else codes+=($?); fi
    done
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    loaded=0 oom=0 other=0
    for i in 0 1 2; do
        case "${codes[$i]}" in
            0) loaded=$((loaded + 1)) ;;
            2) oom=$((oom + 1)) ;;
            *) other=$((other + 1)) ;;
        esac
    done
    peak_mib=$(sort -n "$samples" | tail -n 1)
    echo "gpu-smoke: $name: $loaded loaded, $oom clean OutOfMemoryError, $other other failures; peak ${peak_mib:-?} of ${total_mib} MiB"
}

verdict=0
# Phase 0: the guard sees real PyTorch's allocations. A process holding 512 MiB must show in the
# ledger with at least that much; 2 GiB wanted under a 1 GiB limit must end in OutOfMemoryError.
"$vramguard" run -- "$python" "$work/load.py" seen 512 20 >"$work/seen.out" 2>&1 &
seen=$!
shown_mib=0
for _ in $(seq 1 100); do
    grep -q LOADED "$work/seen.out" && break
    sleep 0.2
done
shown_mib=$("$vramguard" status --json 2>/dev/null | "$python" -c '
import json, sys
report = json.load(sys.stdin)
print(sum(d["used_bytes"] for p in report["processes"] for d in p["devices"]) >> 20)' || echo 0)
kill "$seen" 2>/dev/null || true
wait "$seen" 2>/dev/null || true
echo "gpu-smoke: seen: a PyTorch process holding 512 MiB is shown with ${shown_mib} MiB (its context included)"
if [ "${shown_mib:-0}" -lt 512 ]; then
    echo "gpu-smoke: seen phase FAILED: the guard does not see PyTorch's allocations"; verdict=1
fi
if "$vramguard" run --limit 1GiB -- "$python" "$work/load.py" limited 2048 0 >"$work/limited.out" 2>&1; then
    limited_code=0
else
    limited_code=$?
fi
echo "gpu-smoke: limited: exit $limited_code; $(tail -n 1 "$work/limited.out")"
if [ "$limited_code" -ne 2 ]; then
    echo "gpu-smoke: seen phase FAILED: 2 GiB under a 1 GiB limit should end in OutOfMemoryError"; verdict=1
fi
phase deny --policy deny --expect "${want_mib}MiB"
if [ "$loaded" -lt 1 ] || [ "$other" -ne 0 ] || [ "$((loaded + oom))" -ne 3 ]; then
    echo "gpu-smoke: deny phase FAILED: expected a load and only clean out-of-memory errors"; verdict=1
fi
if [ -z "${peak_mib:-}" ] || [ "$peak_mib" -ge "$total_mib" ]; then
    echo "gpu-smoke: deny phase FAILED: the card was full (peak ${peak_mib:-?} MiB)"; verdict=1
fi
phase wait --policy wait --expect "${want_mib}MiB" --timeout 10m
if [ "$loaded" -ne 3 ]; then
    echo "gpu-smoke: wait phase FAILED: expected all three to finish in turn"; verdict=1
fi
if [ -z "${peak_mib:-}" ] || [ "$peak_mib" -ge "$total_mib" ]; then
    echo "gpu-smoke: wait phase FAILED: the card was full (peak ${peak_mib:-?} MiB)"; verdict=1
fi
if [ "$verdict" -eq 0 ]; then
    echo "gpu-smoke: the guard held: clean errors or orderly waiting, and the card never over-committed"
fi
exit "$verdict"
