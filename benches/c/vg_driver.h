/* How the benchmark and soak programs reach the CUDA driver, in the three ways real programs do.
 *
 * - direct:   the program is linked with -lcuda (compiled with -DVG_DIRECT): calls resolve through
 *             the dynamic linker, so a preloaded library's exports take them.
 * - dlsym:    dlopen("libcuda.so.1") + dlsym(handle, plain names).
 * - procaddr: the CUDA runtime's way: dlsym(handle, "cuGetProcAddress_v2"), ask it for
 *             "cuGetProcAddress" at 12000, then fetch everything through that pointer with the
 *             versions the runtime uses (cuMemAlloc/cuMemFree/cuMemGetInfo at 3020, ...).
 *
 * No CUDA headers are needed: the few types and signatures used are declared here. */
#ifndef VG_DRIVER_H
#define VG_DRIVER_H

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef unsigned int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;

#define CUDA_SUCCESS 0u
#define CUDA_ERROR_OUT_OF_MEMORY 2u

typedef CUresult (*vg_cuInit_t)(unsigned int);
typedef CUresult (*vg_cuDeviceGetCount_t)(int *);
typedef CUresult (*vg_cuDeviceGet_t)(CUdevice *, int);
typedef CUresult (*vg_cuDevicePrimaryCtxRetain_t)(CUcontext *, CUdevice);
typedef CUresult (*vg_cuCtxSetCurrent_t)(CUcontext);
typedef CUresult (*vg_cuMemAlloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*vg_cuMemFree_t)(CUdeviceptr);
typedef CUresult (*vg_cuMemGetInfo_t)(size_t *, size_t *);
/* cuGetProcAddress as handed out for "cuGetProcAddress" at 12000 (the _v2 ABI). */
typedef CUresult (*vg_cuGetProcAddress_t)(const char *, void **, int, uint64_t, int *);

/* The entry points the programs use, however they were found. */
struct vg_driver {
    const char *path; /* "direct", "dlsym" or "procaddr" */
    vg_cuInit_t cuInit;
    vg_cuDeviceGetCount_t cuDeviceGetCount;
    vg_cuDeviceGet_t cuDeviceGet;
    vg_cuDevicePrimaryCtxRetain_t cuDevicePrimaryCtxRetain;
    vg_cuCtxSetCurrent_t cuCtxSetCurrent;
    vg_cuMemAlloc_t cuMemAlloc;
    vg_cuMemFree_t cuMemFree;
    vg_cuMemGetInfo_t cuMemGetInfo;
    /* Only for the procaddr path: the lookup function cudart makes all its lookups through. */
    vg_cuGetProcAddress_t cuGetProcAddress;
};

static inline uint64_t vg_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU time of the calling thread (user and system), which excludes time spent preempted. */
static inline uint64_t vg_thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void vg_die(const char *what, CUresult code) {
    fprintf(stderr, "vg: %s failed with CUDA error %u\n", what, code);
    exit(1);
}

#ifdef VG_DIRECT
CUresult cuInit(unsigned int);
CUresult cuDeviceGetCount(int *);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuGetProcAddress_v2(const char *, void **, int, uint64_t, int *);
#endif

/* Fills `d` for the path named `path` ("direct" only in a -DVG_DIRECT build). Exits with status
 * 1 and a message on stderr when the driver or an entry point cannot be found. */
static inline void vg_driver_load(struct vg_driver *d, const char *path) {
    memset(d, 0, sizeof *d);
    d->path = path;
#ifdef VG_DIRECT
    if (strcmp(path, "direct") != 0) {
        fprintf(stderr, "vg: this build is linked with -lcuda: only --path direct\n");
        exit(1);
    }
    d->cuInit = cuInit;
    d->cuDeviceGetCount = cuDeviceGetCount;
    d->cuDeviceGet = cuDeviceGet;
    d->cuDevicePrimaryCtxRetain = cuDevicePrimaryCtxRetain;
    d->cuCtxSetCurrent = cuCtxSetCurrent;
    d->cuMemAlloc = cuMemAlloc_v2;
    d->cuMemFree = cuMemFree_v2;
    d->cuMemGetInfo = cuMemGetInfo_v2;
    d->cuGetProcAddress = cuGetProcAddress_v2;
#else
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "vg: dlopen(libcuda.so.1): %s\n", dlerror());
        exit(1);
    }
    if (strcmp(path, "dlsym") == 0) {
#define VG_SYM(field, name)                                                                        \
    do {                                                                                           \
        *(void **)&d->field = dlsym(h, name);                                                      \
        if (!d->field) {                                                                           \
            fprintf(stderr, "vg: dlsym(%s) found nothing\n", name);                                \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
        VG_SYM(cuInit, "cuInit");
        VG_SYM(cuDeviceGetCount, "cuDeviceGetCount");
        VG_SYM(cuDeviceGet, "cuDeviceGet");
        VG_SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
        VG_SYM(cuCtxSetCurrent, "cuCtxSetCurrent");
        VG_SYM(cuMemAlloc, "cuMemAlloc_v2");
        VG_SYM(cuMemFree, "cuMemFree_v2");
        VG_SYM(cuMemGetInfo, "cuMemGetInfo_v2");
#undef VG_SYM
    } else if (strcmp(path, "procaddr") == 0) {
        vg_cuGetProcAddress_t first = NULL;
        *(void **)&first = dlsym(h, "cuGetProcAddress_v2");
        if (!first) {
            fprintf(stderr, "vg: dlsym(cuGetProcAddress_v2) found nothing\n");
            exit(1);
        }
        int status = 0;
        CUresult rc = first("cuGetProcAddress", (void **)&d->cuGetProcAddress, 12000, 0, &status);
        if (rc != CUDA_SUCCESS || !d->cuGetProcAddress) vg_die("cuGetProcAddress_v2(cuGetProcAddress)", rc);
#define VG_PROC(field, name, version)                                                              \
    do {                                                                                           \
        CUresult r = d->cuGetProcAddress(name, (void **)&d->field, version, 0, &status);           \
        if (r != CUDA_SUCCESS || !d->field) vg_die("cuGetProcAddress(" name ")", r);               \
    } while (0)
        VG_PROC(cuInit, "cuInit", 2000);
        VG_PROC(cuDeviceGetCount, "cuDeviceGetCount", 2000);
        VG_PROC(cuDeviceGet, "cuDeviceGet", 2000);
        VG_PROC(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 7000);
        VG_PROC(cuCtxSetCurrent, "cuCtxSetCurrent", 4000);
        VG_PROC(cuMemAlloc, "cuMemAlloc", 3020);
        VG_PROC(cuMemFree, "cuMemFree", 3020);
        VG_PROC(cuMemGetInfo, "cuMemGetInfo", 3020);
#undef VG_PROC
    } else {
        fprintf(stderr, "vg: unknown --path %s (direct needs the -lcuda build)\n", path);
        exit(1);
    }
#endif
}

/* cuInit, then the primary context of device `ordinal` made current (as the CUDA runtime does). */
static inline void vg_driver_attach(const struct vg_driver *d, int ordinal) {
    CUresult rc = d->cuInit(0);
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "vg: cuInit failed with CUDA error %u\n", rc);
        exit(3);
    }
    CUdevice dev;
    rc = d->cuDeviceGet(&dev, ordinal);
    if (rc != CUDA_SUCCESS) vg_die("cuDeviceGet", rc);
    CUcontext ctx;
    rc = d->cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc != CUDA_SUCCESS) vg_die("cuDevicePrimaryCtxRetain", rc);
    rc = d->cuCtxSetCurrent(ctx);
    if (rc != CUDA_SUCCESS) vg_die("cuCtxSetCurrent", rc);
}

#endif
