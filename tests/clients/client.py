#!/usr/bin/env python3
"""The Python test client: reaches the driver through ctypes (CDLL("libcuda.so.1") and its
exported names), as Python libraries that drive CUDA without the runtime do. Same command line
and output as the C clients (see workload.c):

  client.py [--device N] [--api default|pitch|managed|async|pool|vmm|array|array3d|mipmapped|ctx]
            [--chunk SIZE] [--count N] [--hold-ms MS] [--hold-if-complete-ms MS] [--hold-until FILE]
            [--hold-if-complete-until FILE] [--pause-before-chunk N --resume-file FILE] [--threads N] [--fork]
            [--free-each] [--keep-going] [--sleep-between-ms MS]
"""
import argparse
import ctypes as C
import os
import re
import sys
import threading
import time

VMM_SEGMENT = 20 << 20
OOM = 2
NAMES = {0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
         3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED", 100: "CUDA_ERROR_NO_DEVICE",
         101: "CUDA_ERROR_INVALID_DEVICE", 201: "CUDA_ERROR_INVALID_CONTEXT", 400: "CUDA_ERROR_INVALID_HANDLE",
         500: "CUDA_ERROR_NOT_FOUND", 801: "CUDA_ERROR_NOT_SUPPORTED", 999: "CUDA_ERROR_UNKNOWN"}
APIS = ["default", "pitch", "managed", "async", "pool", "vmm", "array", "array3d", "mipmapped", "ctx"]


def name(code):
    return NAMES.get(code, "CUDA_ERROR_%d" % code)


class MemLocation(C.Structure):
    _fields_ = [("type", C.c_int), ("id", C.c_int)]


class AllocationProp(C.Structure):
    _fields_ = [("type", C.c_int), ("requestedHandleTypes", C.c_int), ("location", MemLocation),
                ("win32HandleMetaData", C.c_void_p), ("allocFlags", C.c_ubyte * 8)]


class PoolProps(C.Structure):
    _fields_ = [("allocType", C.c_int), ("handleTypes", C.c_int), ("location", MemLocation),
                ("win32SecurityAttributes", C.c_void_p), ("maxSize", C.c_size_t), ("usage", C.c_ushort),
                ("reserved", C.c_ubyte * 54)]


class AccessDesc(C.Structure):
    _fields_ = [("location", MemLocation), ("flags", C.c_int)]


class ArrayDescriptor(C.Structure):
    _fields_ = [("Width", C.c_size_t), ("Height", C.c_size_t), ("Format", C.c_int), ("NumChannels", C.c_uint)]


class Array3DDescriptor(C.Structure):
    _fields_ = [("Width", C.c_size_t), ("Height", C.c_size_t), ("Depth", C.c_size_t), ("Format", C.c_int),
                ("NumChannels", C.c_uint), ("Flags", C.c_uint)]


def parse_size(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError("bad size %r" % text)
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    unit = m.group(2).lower()
    if unit not in units:
        raise argparse.ArgumentTypeError("bad size %r" % text)
    return int(float(m.group(1)) * units[unit])


def round_up(value, to):
    return (value + to - 1) // to * to


class Driver:
    """The driver functions the workload calls, bound by their exported names."""

    def __init__(self):
        self.lib = C.CDLL("libcuda.so.1", mode=C.RTLD_GLOBAL)
        for fn in ("cuInit", "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease_v2",
                   "cuCtxSetCurrent", "cuCtxCreate_v2", "cuCtxDestroy_v2", "cuMemGetInfo_v2", "cuMemAlloc_v2",
                   "cuMemFree_v2", "cuMemAllocPitch_v2", "cuMemAllocManaged", "cuStreamCreate", "cuStreamDestroy_v2",
                   "cuStreamSynchronize", "cuMemAllocAsync", "cuMemFreeAsync", "cuMemPoolCreate", "cuMemPoolDestroy",
                   "cuMemAllocFromPoolAsync", "cuMemGetAllocationGranularity", "cuMemAddressReserve",
                   "cuMemAddressFree", "cuMemCreate", "cuMemRelease", "cuMemMap", "cuMemUnmap", "cuMemSetAccess",
                   "cuArrayCreate_v2", "cuArray3DCreate_v2", "cuArrayDestroy", "cuMipmappedArrayCreate",
                   "cuMipmappedArrayDestroy"):
            f = getattr(self.lib, fn)
            f.restype = C.c_int
            setattr(self, fn, f)
        u64, sz, vp = C.c_ulonglong, C.c_size_t, C.c_void_p
        self.cuInit.argtypes = [C.c_uint]
        self.cuDeviceGet.argtypes = [C.POINTER(C.c_int), C.c_int]
        self.cuDevicePrimaryCtxRetain.argtypes = [C.POINTER(vp), C.c_int]
        self.cuDevicePrimaryCtxRelease_v2.argtypes = [C.c_int]
        self.cuCtxSetCurrent.argtypes = [vp]
        self.cuCtxCreate_v2.argtypes = [C.POINTER(vp), C.c_uint, C.c_int]
        self.cuCtxDestroy_v2.argtypes = [vp]
        self.cuMemGetInfo_v2.argtypes = [C.POINTER(sz), C.POINTER(sz)]
        self.cuMemAlloc_v2.argtypes = [C.POINTER(u64), sz]
        self.cuMemFree_v2.argtypes = [u64]
        self.cuMemAllocPitch_v2.argtypes = [C.POINTER(u64), C.POINTER(sz), sz, sz, C.c_uint]
        self.cuMemAllocManaged.argtypes = [C.POINTER(u64), sz, C.c_uint]
        self.cuStreamCreate.argtypes = [C.POINTER(vp), C.c_uint]
        self.cuStreamDestroy_v2.argtypes = [vp]
        self.cuStreamSynchronize.argtypes = [vp]
        self.cuMemAllocAsync.argtypes = [C.POINTER(u64), sz, vp]
        self.cuMemFreeAsync.argtypes = [u64, vp]
        self.cuMemPoolCreate.argtypes = [C.POINTER(vp), C.POINTER(PoolProps)]
        self.cuMemPoolDestroy.argtypes = [vp]
        self.cuMemAllocFromPoolAsync.argtypes = [C.POINTER(u64), sz, vp, vp]
        self.cuMemGetAllocationGranularity.argtypes = [C.POINTER(sz), C.POINTER(AllocationProp), C.c_int]
        self.cuMemAddressReserve.argtypes = [C.POINTER(u64), sz, sz, u64, u64]
        self.cuMemAddressFree.argtypes = [u64, sz]
        self.cuMemCreate.argtypes = [C.POINTER(u64), sz, C.POINTER(AllocationProp), u64]
        self.cuMemRelease.argtypes = [u64]
        self.cuMemMap.argtypes = [u64, sz, sz, u64, u64]
        self.cuMemUnmap.argtypes = [u64, sz]
        self.cuMemSetAccess.argtypes = [u64, sz, C.POINTER(AccessDesc), sz]
        self.cuArrayCreate_v2.argtypes = [C.POINTER(vp), C.POINTER(ArrayDescriptor)]
        self.cuArray3DCreate_v2.argtypes = [C.POINTER(vp), C.POINTER(Array3DDescriptor)]
        self.cuArrayDestroy.argtypes = [vp]
        self.cuMipmappedArrayCreate.argtypes = [C.POINTER(vp), C.POINTER(Array3DDescriptor), C.c_uint]
        self.cuMipmappedArrayDestroy.argtypes = [vp]


OUT = threading.Lock()


def say(line):
    with OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Results:
    def __init__(self):
        self.ok = self.failed = self.bytes = self.first_error = 0
        self.other_failure = False

    def merge(self, other):
        self.ok += other.ok
        self.failed += other.failed
        self.bytes += other.bytes
        self.first_error = self.first_error or other.first_error
        self.other_failure = self.other_failure or other.other_failure


def device_prop(dev):
    prop = AllocationProp()
    prop.type = 1
    prop.location = MemLocation(1, dev)
    return prop


class Lane:
    """One thread's allocations and the stream, pool or address range they use."""

    def __init__(self, d, opt, dev, ctx):
        self.d, self.opt, self.dev, self.ctx = d, opt, dev, ctx
        self.stream = C.c_void_p()
        self.pool = C.c_void_p()
        self.va_base = C.c_ulonglong(0)
        self.va_size = self.va_used = 0

    def open(self):
        d, opt = self.d, self.opt
        r = 0
        if opt.api in ("async", "pool"):
            r = d.cuStreamCreate(C.byref(self.stream), 1)
        if r == 0 and opt.api == "pool":
            props = PoolProps()
            props.allocType = 1
            props.location = MemLocation(1, self.dev)
            r = d.cuMemPoolCreate(C.byref(self.pool), C.byref(props))
        if r == 0 and opt.api == "vmm":
            gran = C.c_size_t(0)
            r = d.cuMemGetAllocationGranularity(C.byref(gran), C.byref(device_prop(self.dev)), 0)
            if r == 0 and (gran.value == 0 or VMM_SEGMENT % gran.value):
                r = 1
            self.va_size = round_up(opt.chunk, VMM_SEGMENT) * opt.count
            if r == 0:
                r = d.cuMemAddressReserve(C.byref(self.va_base), self.va_size, 0, 0, 0)
        if r:
            say("setup fail %s %s" % (opt.api, name(r)))
        return r

    def close(self):
        d = self.d
        if self.stream.value:
            d.cuStreamSynchronize(self.stream)
        if self.pool.value:
            d.cuMemPoolDestroy(self.pool)
        if self.stream.value:
            d.cuStreamDestroy_v2(self.stream)
        if self.va_base.value:
            d.cuMemAddressFree(self.va_base.value, self.va_size)

    def alloc(self):
        """Returns (result, bytes, record)."""
        d, api, chunk = self.d, self.opt.api, self.opt.chunk
        ptr = C.c_ulonglong(0)
        handle = C.c_void_p()
        if api == "default":
            return d.cuMemAlloc_v2(C.byref(ptr), chunk), chunk, ptr.value
        if api == "managed":
            return d.cuMemAllocManaged(C.byref(ptr), chunk, 1), chunk, ptr.value
        if api == "pitch":
            pitch, width, height = C.c_size_t(0), 1000, (chunk + 1023) // 1024
            r = d.cuMemAllocPitch_v2(C.byref(ptr), C.byref(pitch), width, height, 4)
            return r, (pitch.value if r == 0 else round_up(width, 512)) * height, ptr.value
        if api == "async":
            return d.cuMemAllocAsync(C.byref(ptr), chunk, self.stream), chunk, ptr.value
        if api == "pool":
            return d.cuMemAllocFromPoolAsync(C.byref(ptr), chunk, self.pool, self.stream), chunk, ptr.value
        if api == "vmm":
            size = round_up(chunk, VMM_SEGMENT)
            if self.va_used + size > self.va_size:
                return 1, size, None
            base = self.va_base.value + self.va_used
            prop = device_prop(self.dev)
            access = AccessDesc(MemLocation(1, self.dev), 3)
            pages = []
            for i in range(size // VMM_SEGMENT):
                at = base + i * VMM_SEGMENT
                h = C.c_ulonglong(0)
                r = d.cuMemCreate(C.byref(h), VMM_SEGMENT, C.byref(prop), 0)
                if r == 0:
                    r = d.cuMemMap(at, VMM_SEGMENT, 0, h.value, 0)
                    if r:
                        d.cuMemRelease(h.value)
                if r == 0:
                    pages.append(h.value)
                    r = d.cuMemSetAccess(at, VMM_SEGMENT, C.byref(access), 1)
                if r:
                    for j, page in enumerate(pages):
                        d.cuMemUnmap(base + j * VMM_SEGMENT, VMM_SEGMENT)
                        d.cuMemRelease(page)
                    return r, size, None
            self.va_used += size
            return 0, size, (base, pages)
        if api == "array":
            desc = ArrayDescriptor(1024, (chunk + 4095) // 4096, 0x20, 1)
            return d.cuArrayCreate_v2(C.byref(handle), C.byref(desc)), 4096 * desc.Height, handle.value
        if api == "array3d":
            desc = Array3DDescriptor(256, 16, (chunk + 65535) // 65536, 0x20, 4, 0)
            return d.cuArray3DCreate_v2(C.byref(handle), C.byref(desc)), 65536 * desc.Depth, handle.value
        if api == "mipmapped":
            side = 64
            while side * side * 4 < chunk:
                side *= 2
            desc = Array3DDescriptor(side, side, 0, 0x20, 1, 0)
            size = side * side * 4 + (side // 2) * (side // 2) * 4
            return d.cuMipmappedArrayCreate(C.byref(handle), C.byref(desc), 2), size, handle.value
        if api == "ctx":
            before, after, total = C.c_size_t(0), C.c_size_t(0), C.c_size_t(0)
            d.cuMemGetInfo_v2(C.byref(before), C.byref(total))
            r = d.cuCtxCreate_v2(C.byref(handle), 0, self.dev)
            if r:
                return r, 0, None
            d.cuMemGetInfo_v2(C.byref(after), C.byref(total))
            d.cuCtxSetCurrent(self.ctx)
            return 0, max(before.value - after.value, 0), handle.value
        raise ValueError(api)

    def free(self, record):
        d, api = self.d, self.opt.api
        if api in ("default", "managed", "pitch"):
            return d.cuMemFree_v2(record)
        if api in ("async", "pool"):
            r = d.cuMemFreeAsync(record, self.stream)
            if r == 0 and self.opt.free_each:
                r = d.cuStreamSynchronize(self.stream)
            return r
        if api == "vmm":
            base, pages = record
            r = 0
            for i, page in enumerate(pages):
                u = d.cuMemUnmap(base + i * VMM_SEGMENT, VMM_SEGMENT)
                v = d.cuMemRelease(page)
                r = r or u or v
            return r
        if api in ("array", "array3d"):
            return d.cuArrayDestroy(record)
        if api == "mipmapped":
            return d.cuMipmappedArrayDestroy(record)
        return d.cuCtxDestroy_v2(record)


def wait_for_go_file(path):
    """Waits until the test creates `path` (see go_file.h); gives up after five minutes."""
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            print("client.py: %s did not appear within 5 minutes" % path, file=sys.stderr)
            os._exit(1)
        time.sleep(0.002)


def worker(d, opt, dev, ctx, res, hold_start, hold_end):
    lane = Lane(d, opt, dev, ctx)
    records = []
    r = d.cuCtxSetCurrent(ctx)
    usable = r == 0 and lane.open() == 0
    if not usable:
        res.other_failure = True
    for i in range(opt.count if usable else 0):
        if i and opt.sleep_between_ms:
            time.sleep(opt.sleep_between_ms / 1000.0)
        if i + 1 == opt.pause_before_chunk:
            say("paused")
            wait_for_go_file(opt.resume_file)
        r, size, record = lane.alloc()
        if r == 0:
            res.ok += 1
            res.bytes += size
            say("alloc ok %d" % size)
            if opt.free_each:
                f = lane.free(record)
                if f:
                    say("free fail %d %s" % (size, name(f)))
                    res.other_failure = True
            else:
                records.append((size, record))
        else:
            res.failed += 1
            res.first_error = res.first_error or r
            say("alloc fail %d %s" % (size, name(r)))
            if not opt.keep_going:
                break
    hold_start.wait()
    hold_end.wait()
    for size, record in records:
        f = lane.free(record)
        if f:
            say("free fail %d %s" % (size, name(f)))
            res.other_failure = True
    if usable:
        lane.close()


def run_process(d, opt, dev, ctx):
    n = max(opt.threads, 1)
    hold_start, hold_end = threading.Barrier(n + 1), threading.Barrier(n + 1)
    results = [Results() for _ in range(n)]
    threads = [threading.Thread(target=worker, args=(d, opt, dev, ctx, results[i], hold_start, hold_end))
               for i in range(n)]
    for t in threads:
        t.start()
    hold_start.wait()
    # Every worker has finished allocating: the barrier orders their results before this.
    complete = all(res.failed == 0 for res in results)
    hold = opt.hold_ms + (opt.hold_if_complete_ms if complete else 0)
    until = opt.hold_until or (opt.hold_if_complete_until if complete else None)
    if until:
        say("holding until %s" % until)
        wait_for_go_file(until)
    elif hold > 0:
        say("holding %d" % hold)
        time.sleep(hold / 1000.0)
    hold_end.wait()
    total = Results()
    for t, res in zip(threads, results):
        t.join()
        total.merge(res)
    return total


def open_device(d, opt):
    """cuInit, the device and its primary context made current: (result, init_failed, dev, ctx)."""
    r = d.cuInit(0)
    if r:
        return r, True, None, None
    dev = C.c_int(0)
    ctx = C.c_void_p()
    r = d.cuDeviceGet(C.byref(dev), opt.device)
    if r == 0:
        r = d.cuDevicePrimaryCtxRetain(C.byref(ctx), dev.value)
    if r == 0:
        r = d.cuCtxSetCurrent(ctx)
    return r, False, dev.value, ctx


class Parser(argparse.ArgumentParser):
    """Bad usage exits 1 (argparse's own 2 means out of memory in the clients' contract)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print("client.py: %s" % message, file=sys.stderr)
        sys.exit(1)


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--api", choices=APIS, default="default")
    p.add_argument("--chunk", type=parse_size, default=64 << 20)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--hold-ms", type=int, default=0)
    p.add_argument("--hold-if-complete-ms", type=int, default=0)
    p.add_argument("--hold-until")
    p.add_argument("--hold-if-complete-until")
    p.add_argument("--pause-before-chunk", type=int, default=0)
    p.add_argument("--resume-file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fork", action="store_true")
    p.add_argument("--free-each", action="store_true")
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("--sleep-between-ms", type=int, default=0)
    opt = p.parse_args()
    if opt.pause_before_chunk and not opt.resume_file:
        p.error("--pause-before-chunk needs --resume-file")
    try:
        d = Driver()
    except (OSError, AttributeError) as e:
        print("client.py: cannot load libcuda.so.1: %s" % e, file=sys.stderr)
        return 1
    r, init_failed, dev, ctx = open_device(d, opt)
    if r:
        say("%s fail %s" % ("init" if init_failed else "setup", name(r)))
        say("summary path=python ok=0 failed=0 bytes=0 first_error=%s" % name(r))
        return 3 if init_failed else 1
    child, reader = None, None
    if opt.fork:
        sys.stdout.flush()
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(reader)
            cr, cinit, cdev, cctx = open_device(d, opt)
            res = Results()
            if cr:
                say("child %s fail %s" % ("init" if cinit else "setup", name(cr)))
                res.other_failure = True
            else:
                res = run_process(d, opt, cdev, cctx)
                d.cuDevicePrimaryCtxRelease_v2(cdev)
            os.write(writer, ("%d %d %d %d %d" % (res.ok, res.failed, res.bytes, res.first_error,
                                                  int(res.other_failure))).encode())
            os._exit(0)
        os.close(writer)
    total = run_process(d, opt, dev, ctx)
    if child:
        data = os.read(reader, 256).decode().split()
        _, status = os.waitpid(child, 0)
        theirs = Results()
        if len(data) == 5:
            theirs.ok, theirs.failed, theirs.bytes, theirs.first_error = (int(x) for x in data[:4])
            theirs.other_failure = data[4] == "1"
        else:
            theirs.other_failure = True
        if status != 0:
            theirs.other_failure = True
        total.merge(theirs)
    r = d.cuDevicePrimaryCtxRelease_v2(dev)
    if r:
        say("teardown fail %s" % name(r))
        total.other_failure = True
    say("summary path=python ok=%d failed=%d bytes=%d first_error=%s" % (
        total.ok, total.failed, total.bytes, name(total.first_error) if total.first_error else "none"))
    if total.failed:
        return 2 if total.first_error == OOM else 1
    return 1 if total.other_failure else 0


if __name__ == "__main__":
    sys.exit(main())
