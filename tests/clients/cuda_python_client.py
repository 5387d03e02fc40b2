#!/usr/bin/env python3
"""A real third-party client: NVIDIA's cuda-python driver bindings (PyPI `cuda-bindings`), which
load libcuda.so.1 themselves and fetch every entry point through cuGetProcAddress. Uses only
cuda.bindings.driver, the way a program that drives CUDA without the runtime does:

  cuda_python_client.py [--chunk SIZE] [--count N] [--hold-until FILE]

cuInit, device 0, its primary context retained and made current, then up to --count
allocations of --chunk bytes with cuMemAlloc (stopping at the first failure), cuMemGetInfo, a
hold until FILE exists if asked, and every allocation freed. stdout, one event a line:

  version <cuDriverGetVersion>
  meminfo before free=<bytes> total=<bytes>
  alloc ok <bytes>            or   alloc fail <bytes> <CUDA_ERROR_NAME> <code>
  meminfo after free=<bytes> total=<bytes>
  holding until <file>
  summary ok=<n> failed=<n> bytes=<total> first_error=<CUDA_ERROR_NAME|none>

Exit: 0 all allocations succeeded, 2 one failed with CUDA_ERROR_OUT_OF_MEMORY, 1 otherwise.
"""
import argparse
import sys

from cuda.bindings import driver

# The ctypes client beside this one: its size parser and its wait for a go file.
from client import parse_size, wait_for_go_file


def check(what, result):
    """The first element of a driver call's result tuple; exits 1 on an error."""
    error = result[0]
    if error != driver.CUresult.CUDA_SUCCESS:
        print("setup fail %s %s %d" % (what, error.name, int(error)), flush=True)
        sys.exit(1)
    return result[1:]


def meminfo(when):
    free, total = check("cuMemGetInfo", driver.cuMemGetInfo())
    print("meminfo %s free=%d total=%d" % (when, free, total), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=parse_size, default=64 << 20)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--hold-until")
    options = parser.parse_args()

    check("cuInit", driver.cuInit(0))
    (version,) = check("cuDriverGetVersion", driver.cuDriverGetVersion())
    print("version %d" % version, flush=True)
    (device,) = check("cuDeviceGet", driver.cuDeviceGet(0))
    (context,) = check("cuDevicePrimaryCtxRetain", driver.cuDevicePrimaryCtxRetain(device))
    check("cuCtxSetCurrent", driver.cuCtxSetCurrent(context))
    meminfo("before")

    pointers, failed, first_error = [], 0, None
    for _ in range(options.count):
        error, pointer = driver.cuMemAlloc(options.chunk)
        if error == driver.CUresult.CUDA_SUCCESS:
            pointers.append(pointer)
            print("alloc ok %d" % options.chunk, flush=True)
        else:
            failed, first_error = 1, error
            print("alloc fail %d %s %d" % (options.chunk, error.name, int(error)), flush=True)
            break
    meminfo("after")
    if options.hold_until:
        print("holding until %s" % options.hold_until, flush=True)
        wait_for_go_file(options.hold_until)

    for pointer in pointers:
        check("cuMemFree", driver.cuMemFree(pointer))
    check("cuDevicePrimaryCtxRelease", driver.cuDevicePrimaryCtxRelease(device))
    print("summary ok=%d failed=%d bytes=%d first_error=%s"
          % (len(pointers), failed, len(pointers) * options.chunk,
             first_error.name if first_error is not None else "none"), flush=True)
    if first_error is None:
        return 0
    return 2 if first_error == driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY else 1


if __name__ == "__main__":
    sys.exit(main())
