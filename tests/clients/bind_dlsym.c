/* client-dlsym: dlopen("libcuda.so.1") and dlsym of the exported names, as programs that load
 * the driver at run time without the CUDA runtime do (no link-time dependency on libcuda). */
#include <dlfcn.h>
#include <stdio.h>

#include "workload.h"

const char *const client_path = "dlsym";

#define BIND(field, name)                                                      \
    do {                                                                       \
        *(void **)(&a->field) = dlsym(handle, name);                           \
        if (!a->field) {                                                       \
            fprintf(stderr, "client-dlsym: dlsym(%s): %s\n", name, dlerror()); \
            return 1;                                                          \
        }                                                                      \
    } while (0)

int bind_driver(struct cu_api *a) {
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!handle) {
        fprintf(stderr, "client-dlsym: dlopen(libcuda.so.1): %s\n", dlerror());
        return 1;
    }
    BIND(Init, "cuInit");
    BIND(DeviceGet, "cuDeviceGet");
    BIND(DeviceGetCount, "cuDeviceGetCount");
    BIND(DeviceGetUuid, "cuDeviceGetUuid");
    BIND(DeviceTotalMem, "cuDeviceTotalMem_v2");
    BIND(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    BIND(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
    BIND(CtxSetCurrent, "cuCtxSetCurrent");
    BIND(CtxGetCurrent, "cuCtxGetCurrent");
    BIND(CtxCreate, "cuCtxCreate_v2");
    BIND(CtxDestroy, "cuCtxDestroy_v2");
    BIND(CtxSynchronize, "cuCtxSynchronize");
    BIND(MemGetInfo, "cuMemGetInfo_v2");
    BIND(MemAlloc, "cuMemAlloc_v2");
    BIND(MemFree, "cuMemFree_v2");
    BIND(MemAllocPitch, "cuMemAllocPitch_v2");
    BIND(MemAllocManaged, "cuMemAllocManaged");
    BIND(StreamCreate, "cuStreamCreate");
    BIND(StreamDestroy, "cuStreamDestroy_v2");
    BIND(StreamSynchronize, "cuStreamSynchronize");
    BIND(MemAllocAsync, "cuMemAllocAsync");
    BIND(MemFreeAsync, "cuMemFreeAsync");
    BIND(MemPoolCreate, "cuMemPoolCreate");
    BIND(MemPoolDestroy, "cuMemPoolDestroy");
    BIND(MemAllocFromPoolAsync, "cuMemAllocFromPoolAsync");
    BIND(MemGetAllocationGranularity, "cuMemGetAllocationGranularity");
    BIND(MemAddressReserve, "cuMemAddressReserve");
    BIND(MemAddressFree, "cuMemAddressFree");
    BIND(MemCreate, "cuMemCreate");
    BIND(MemRelease, "cuMemRelease");
    BIND(MemMap, "cuMemMap");
    BIND(MemUnmap, "cuMemUnmap");
    BIND(MemSetAccess, "cuMemSetAccess");
    BIND(ArrayCreate, "cuArrayCreate_v2");
    BIND(Array3DCreate, "cuArray3DCreate_v2");
    BIND(ArrayDestroy, "cuArrayDestroy");
    BIND(MipmappedArrayCreate, "cuMipmappedArrayCreate");
    BIND(MipmappedArrayDestroy, "cuMipmappedArrayDestroy");
    return 0;
}

int binding_check_abi(void) {
    fprintf(stderr, "client-dlsym: --check-abi needs versioned lookups; use client-procaddr\n");
    return 1;
}
