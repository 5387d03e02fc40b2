/* client-procaddr: reaches the driver exactly as the CUDA runtime (libcudart 12/13) does:
 * dlopen("libcuda.so.1", RTLD_NOW|RTLD_GLOBAL), dlsym(handle, "cuGetProcAddress_v2"), a probe
 * for "", "cuGetProcAddress" itself at 12000, then every other entry point through the pointer
 * that came back, with cudart's versions and flags.
 *
 * --check-abi asks for the versioned variants one by one (legacy vs _v2, _ptsz with flag 2, too
 * old, unknown), calls each with the ABI it asked for, and prints one line per lookup:
 *   abi <name> version=<v> flags=<f> status=<s> result=<NAME>        (the lookup)
 *   abi-call <what> result=<NAME> [detail]                           (calling what it returned)
 *   abi-summary failures=<n>
 * A guard must hand out wrappers with the same ABI; the simulator's call counters tell which
 * variant was reached. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "workload.h"

const char *const client_path = "procaddr";

static PFN_cuGetProcAddress_v2 get_proc;

static int fetch(void **slot, const char *name, int version, unsigned long long flags) {
    int status = -1;
    CUresult r = get_proc(name, slot, version, flags, &status);
    if (r != 0 || !*slot) {
        fprintf(stderr, "client-procaddr: cuGetProcAddress(%s, %d, %llu): %s status %d\n", name, version, flags,
                cu_error_name(r), status);
        return 1;
    }
    return 0;
}

#define FETCH(field, name, version, flags) \
    if (fetch((void **)&a->field, name, version, flags)) return 1

static int find_get_proc(void) {
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!handle) {
        fprintf(stderr, "client-procaddr: dlopen(libcuda.so.1): %s\n", dlerror());
        return 1;
    }
    PFN_cuGetProcAddress_v2 first = (PFN_cuGetProcAddress_v2)dlsym(handle, "cuGetProcAddress_v2");
    if (!first) {
        fprintf(stderr, "client-procaddr: dlsym(cuGetProcAddress_v2): %s\n", dlerror());
        return 1;
    }
    void *probe = NULL;
    int status = -1;
    CUresult r = first("", &probe, 12000, 0, &status); /* cudart's probe; NOT_FOUND expected */
    if (r == 0) {
        fprintf(stderr, "client-procaddr: the \"\" probe unexpectedly succeeded\n");
        return 1;
    }
    void *again = NULL;
    r = first("cuGetProcAddress", &again, 12000, 0, &status);
    if (r != 0 || !again) {
        fprintf(stderr, "client-procaddr: cuGetProcAddress(\"cuGetProcAddress\", 12000): %s\n", cu_error_name(r));
        return 1;
    }
    get_proc = (PFN_cuGetProcAddress_v2)again;
    return 0;
}

int bind_driver(struct cu_api *a) {
    if (find_get_proc()) return 1;
    const unsigned long long ptds = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    FETCH(Init, "cuInit", 2000, 0);
    FETCH(DeviceGet, "cuDeviceGet", 2000, 0);
    FETCH(DeviceGetCount, "cuDeviceGetCount", 2000, 0);
    FETCH(DeviceGetUuid, "cuDeviceGetUuid", 9020, 0);
    FETCH(DeviceTotalMem, "cuDeviceTotalMem", 3020, 0);
    FETCH(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 7000, 0);
    FETCH(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease", 11000, 0);
    FETCH(CtxSetCurrent, "cuCtxSetCurrent", 4000, 0);
    FETCH(CtxGetCurrent, "cuCtxGetCurrent", 4000, 0);
    FETCH(CtxCreate, "cuCtxCreate", 3020, 0);
    FETCH(CtxDestroy, "cuCtxDestroy", 4000, 0);
    FETCH(CtxSynchronize, "cuCtxSynchronize", 2000, 0);
    FETCH(MemGetInfo, "cuMemGetInfo", 3020, 0);
    FETCH(MemAlloc, "cuMemAlloc", 3020, 0);
    FETCH(MemFree, "cuMemFree", 3020, 0);
    FETCH(MemAllocPitch, "cuMemAllocPitch", 3020, 0);
    FETCH(MemAllocManaged, "cuMemAllocManaged", 6000, 0);
    FETCH(StreamCreate, "cuStreamCreate", 2000, 0);
    FETCH(StreamDestroy, "cuStreamDestroy", 4000, 0);
    FETCH(StreamSynchronize, "cuStreamSynchronize", 2000, ptds);
    FETCH(MemAllocAsync, "cuMemAllocAsync", 11020, ptds);
    FETCH(MemFreeAsync, "cuMemFreeAsync", 11020, ptds);
    FETCH(MemPoolCreate, "cuMemPoolCreate", 11020, 0);
    FETCH(MemPoolDestroy, "cuMemPoolDestroy", 11020, 0);
    FETCH(MemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", 11020, ptds);
    FETCH(MemGetAllocationGranularity, "cuMemGetAllocationGranularity", 10020, 0);
    FETCH(MemAddressReserve, "cuMemAddressReserve", 10020, 0);
    FETCH(MemAddressFree, "cuMemAddressFree", 10020, 0);
    FETCH(MemCreate, "cuMemCreate", 10020, 0);
    FETCH(MemRelease, "cuMemRelease", 10020, 0);
    FETCH(MemMap, "cuMemMap", 10020, 0);
    FETCH(MemUnmap, "cuMemUnmap", 10020, 0);
    FETCH(MemSetAccess, "cuMemSetAccess", 10020, 0);
    FETCH(ArrayCreate, "cuArrayCreate", 3020, 0);
    FETCH(Array3DCreate, "cuArray3DCreate", 3020, 0);
    FETCH(ArrayDestroy, "cuArrayDestroy", 2000, 0);
    FETCH(MipmappedArrayCreate, "cuMipmappedArrayCreate", 5000, 0);
    FETCH(MipmappedArrayDestroy, "cuMipmappedArrayDestroy", 5000, 0);
    return 0;
}

/* ----- --check-abi --------------------------------------------------------------------------- */

static int abi_failures;

static void *lookup(const char *name, int version, unsigned long long flags, CUresult expect) {
    void *fn = NULL;
    int status = -1;
    CUresult r = get_proc(name, &fn, version, flags, &status);
    printf("abi %s version=%d flags=%llu status=%d result=%s", name, version, flags, status, cu_error_name(r));
    if (r != expect) {
        printf(" UNEXPECTED(wanted %s)", cu_error_name(expect));
        abi_failures++;
    }
    printf("\n");
    return r == 0 ? fn : NULL;
}

static void called(const char *what, CUresult r, const char *detail) {
    printf("abi-call %s result=%s%s%s\n", what, cu_error_name(r), detail ? " " : "", detail ? detail : "");
    if (r != 0) abi_failures++;
}

typedef CUresult (*legacy_alloc_t)(CUdeviceptr_v1 *, unsigned int);
typedef CUresult (*legacy_free_t)(CUdeviceptr_v1);
typedef CUresult (*legacy_info_t)(unsigned int *, unsigned int *);
typedef CUresult (*legacy_total_t)(unsigned int *, CUdevice);
typedef CUresult (*legacy_pitch_t)(CUdeviceptr_v1 *, unsigned int *, unsigned int, unsigned int, unsigned int);
typedef CUresult (*v2_alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*v2_free_t)(CUdeviceptr);
typedef CUresult (*v2_info_t)(size_t *, size_t *);
typedef CUresult (*v2_total_t)(size_t *, CUdevice);
typedef CUresult (*ctx_v2_t)(CUcontext *, unsigned int, CUdevice);
typedef CUresult (*ctx_v3_t)(CUcontext *, void *, int, unsigned int, CUdevice);
typedef CUresult (*ctx_v4_t)(CUcontext *, void *, unsigned int, CUdevice);
typedef CUresult (*ctx_destroy_t)(CUcontext);
typedef CUresult (*ctx_set_t)(CUcontext);
typedef CUresult (*alloc_async_t)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*free_async_t)(CUdeviceptr, CUstream);
typedef CUresult (*sync_t)(CUstream);
typedef CUresult (*pool_alloc_t)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
typedef CUresult (*default_pool_t)(CUmemoryPool *, CUdevice);
typedef CUresult (*primary_release_t)(CUdevice);
typedef CUresult (*primary_retain_t)(CUcontext *, CUdevice);

/* A 32-bit out-parameter followed by a canary: a 64-bit store by the wrong ABI clobbers it. */
struct legacy_out { unsigned int value; unsigned int canary; };
#define CANARY 0xC0FFEEu

int binding_check_abi(void) {
    if (find_get_proc()) return 1;
    CUresult (*init)(unsigned int) = lookup("cuInit", 2000, 0, 0);
    if (init) called("cuInit", init(0), NULL);
    primary_retain_t retain = lookup("cuDevicePrimaryCtxRetain", 7000, 0, 0);
    ctx_set_t set_current = NULL;
    CUcontext primary = NULL;
    if (retain) called("cuDevicePrimaryCtxRetain", retain(&primary, 0), NULL);
    set_current = lookup("cuCtxSetCurrent", 4000, 0, 0);
    if (set_current) called("cuCtxSetCurrent", set_current(primary), NULL);

    /* cuMemAlloc / cuMemFree: legacy 32-bit at 2000, _v2 at 3020. */
    legacy_alloc_t legacy_alloc = lookup("cuMemAlloc", 2000, 0, 0);
    legacy_free_t legacy_free = lookup("cuMemFree", 2000, 0, 0);
    if (legacy_alloc) {
        struct legacy_out out = {0, CANARY};
        CUresult r = legacy_alloc(&out.value, 1u << 20);
        char detail[96];
        snprintf(detail, sizeof detail, "ptr=0x%x canary=%s", out.value, out.canary == CANARY ? "intact" : "CLOBBERED");
        if (out.canary != CANARY) abi_failures++;
        called("cuMemAlloc(legacy)", r, detail);
        if (legacy_free && r == 0) { called("cuMemFree(legacy)", legacy_free(out.value), NULL); }
    }
    v2_alloc_t alloc = lookup("cuMemAlloc", 3020, 0, 0);
    v2_free_t mem_free = lookup("cuMemFree", 3020, 0, 0);
    if (alloc) {
        CUdeviceptr p = 0;
        CUresult r = alloc(&p, 5ull << 20);
        char detail[64];
        snprintf(detail, sizeof detail, "ptr=0x%llx", p);
        called("cuMemAlloc(v2)", r, detail);
        if (mem_free && r == 0) { called("cuMemFree(v2)", mem_free(p), NULL); }
    }

    /* cuMemGetInfo and cuDeviceTotalMem: 32-bit vs size_t results. */
    legacy_info_t legacy_info = lookup("cuMemGetInfo", 2000, 0, 0);
    if (legacy_info) {
        struct legacy_out f = {0, CANARY}, t = {0, CANARY};
        CUresult r = legacy_info(&f.value, &t.value);
        char detail[96];
        snprintf(detail, sizeof detail, "free=%u total=%u canary=%s", f.value, t.value,
                 f.canary == CANARY && t.canary == CANARY ? "intact" : "CLOBBERED");
        if (f.canary != CANARY || t.canary != CANARY) abi_failures++;
        called("cuMemGetInfo(legacy)", r, detail);
    }
    v2_info_t info = lookup("cuMemGetInfo", 3020, 0, 0);
    if (info) {
        size_t f = 0, t = 0;
        CUresult r = info(&f, &t);
        char detail[96];
        snprintf(detail, sizeof detail, "free=%zu total=%zu", f, t);
        called("cuMemGetInfo(v2)", r, detail);
    }
    legacy_total_t legacy_total = lookup("cuDeviceTotalMem", 2000, 0, 0);
    if (legacy_total) {
        struct legacy_out t = {0, CANARY};
        CUresult r = legacy_total(&t.value, 0);
        if (t.canary != CANARY) abi_failures++;
        called("cuDeviceTotalMem(legacy)", r, t.canary == CANARY ? "canary=intact" : "canary=CLOBBERED");
    }
    v2_total_t total = lookup("cuDeviceTotalMem", 3020, 0, 0);
    if (total) {
        size_t t = 0;
        char detail[64];
        CUresult r = total(&t, 0);
        snprintf(detail, sizeof detail, "total=%zu", t);
        called("cuDeviceTotalMem(v2)", r, detail);
    }
    legacy_pitch_t legacy_pitch = lookup("cuMemAllocPitch", 2000, 0, 0);
    if (legacy_pitch) {
        struct legacy_out p = {0, CANARY}, pitch = {0, CANARY};
        CUresult r = legacy_pitch(&p.value, &pitch.value, 1000, 4, 4);
        char detail[96];
        snprintf(detail, sizeof detail, "pitch=%u canary=%s", pitch.value,
                 p.canary == CANARY && pitch.canary == CANARY ? "intact" : "CLOBBERED");
        if (p.canary != CANARY || pitch.canary != CANARY) abi_failures++;
        called("cuMemAllocPitch(legacy)", r, detail);
        if (legacy_free && r == 0) { called("cuMemFree(legacy)", legacy_free(p.value), NULL); }
    }

    /* cuCtxCreate: legacy at 2000, _v2 at 3020, _v3 at 11040, _v4 at 12050; and _v2 at 11000. */
    ctx_destroy_t destroy = lookup("cuCtxDestroy", 4000, 0, 0);
    ctx_v2_t create_legacy = lookup("cuCtxCreate", 2000, 0, 0);
    CUcontext c = NULL;
    if (create_legacy) { called("cuCtxCreate(legacy)", create_legacy(&c, 0, 0), NULL); if (destroy && c) destroy(c); c = NULL; }
    ctx_v2_t create_v2 = lookup("cuCtxCreate", 11000, 0, 0);
    if (create_v2) { called("cuCtxCreate(v2)", create_v2(&c, 0, 0), NULL); if (destroy && c) destroy(c); c = NULL; }
    ctx_v3_t create_v3 = lookup("cuCtxCreate", 11040, 0, 0);
    if (create_v3) { called("cuCtxCreate(v3)", create_v3(&c, NULL, 0, 0, 0), NULL); if (destroy && c) destroy(c); c = NULL; }
    ctx_v4_t create_v4 = lookup("cuCtxCreate", 12080, 0, 0);
    if (create_v4) { called("cuCtxCreate(v4)", create_v4(&c, NULL, 0, 0), NULL); if (destroy && c) destroy(c); c = NULL; }
    if (set_current) set_current(primary);

    /* Stream-ordered allocation: default (flags 0) and per-thread default stream (flags 2). */
    for (unsigned long long flags = 0; flags <= 2; flags += 2) {
        alloc_async_t alloc_async = lookup("cuMemAllocAsync", 11020, flags, 0);
        CUdeviceptr p = 0;
        if (alloc_async) called("cuMemAllocAsync", alloc_async(&p, 3ull << 20, NULL), NULL);
        free_async_t free_async = lookup("cuMemFreeAsync", 11020, flags, 0);
        if (free_async && p) called("cuMemFreeAsync", free_async(p, NULL), NULL);
        sync_t sync = lookup("cuStreamSynchronize", 2000, flags, 0);
        if (sync) called("cuStreamSynchronize", sync(NULL), NULL);
        default_pool_t get_pool = lookup("cuDeviceGetDefaultMemPool", 11020, 0, 0);
        CUmemoryPool pool = NULL;
        if (get_pool) called("cuDeviceGetDefaultMemPool", get_pool(&pool, 0), NULL);
        pool_alloc_t pool_alloc = lookup("cuMemAllocFromPoolAsync", 11020, flags, 0);
        p = 0;
        if (pool_alloc && pool) called("cuMemAllocFromPoolAsync", pool_alloc(&p, 3ull << 20, pool, NULL), NULL);
        if (free_async && p) { called("cuMemFreeAsync", free_async(p, NULL), NULL); }
        if (sync) { called("cuStreamSynchronize", sync(NULL), NULL); }
    }

    /* The CUDA 11.3-11.8 lookup function (4 arguments, no status), itself found at 11030. */
    PFN_cuGetProcAddress legacy_get_proc = lookup("cuGetProcAddress", 11030, 0, 0);
    if (legacy_get_proc) {
        void *fn = NULL;
        CUresult r = legacy_get_proc("cuMemAlloc", &fn, 3020, 0);
        called("cuGetProcAddress(legacy)", r, fn ? "found=cuMemAlloc" : "found=nothing");
        if (r == 0 && fn) {
            CUdeviceptr p = 0;
            CUresult a = ((v2_alloc_t)fn)(&p, 1ull << 20);
            called("cuMemAlloc(via legacy lookup)", a, NULL);
            if (a == 0 && mem_free) called("cuMemFree(v2)", mem_free(p), NULL);
        }
    }

    /* Lookups that must fail: too old a version, an unknown name, the "" probe. */
    lookup("cuMemAllocAsync", 11010, 0, 500);
    lookup("cuNoSuchFunction", 12000, 0, 500);
    lookup("", 12000, 0, 500);

    /* cuDevicePrimaryCtxRelease: legacy at 7000, _v2 at 11000 (same ABI, both counted). */
    primary_release_t release_legacy = lookup("cuDevicePrimaryCtxRelease", 7000, 0, 0);
    if (retain) retain(&primary, 0);
    if (release_legacy) called("cuDevicePrimaryCtxRelease(legacy)", release_legacy(0), NULL);
    primary_release_t release_v2 = lookup("cuDevicePrimaryCtxRelease", 11000, 0, 0);
    if (release_v2) called("cuDevicePrimaryCtxRelease(v2)", release_v2(0), NULL);

    printf("abi-summary failures=%d\n", abi_failures);
    return abi_failures ? 1 : 0;
}
