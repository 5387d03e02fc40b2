/* client-direct: linked with -lcuda; every driver function is an ordinary symbol reference
 * resolved by the dynamic linker (what LD_PRELOAD interposes directly). */
#include <stdio.h>

#include "workload.h"

const char *const client_path = "direct";

int bind_driver(struct cu_api *a) {
    a->Init = cuInit;
    a->DeviceGet = cuDeviceGet;
    a->DeviceGetCount = cuDeviceGetCount;
    a->DeviceGetUuid = cuDeviceGetUuid;
    a->DeviceTotalMem = cuDeviceTotalMem_v2;
    a->DevicePrimaryCtxRetain = cuDevicePrimaryCtxRetain;
    a->DevicePrimaryCtxRelease = cuDevicePrimaryCtxRelease_v2;
    a->CtxSetCurrent = cuCtxSetCurrent;
    a->CtxGetCurrent = cuCtxGetCurrent;
    a->CtxCreate = cuCtxCreate_v2;
    a->CtxDestroy = cuCtxDestroy_v2;
    a->CtxSynchronize = cuCtxSynchronize;
    a->MemGetInfo = cuMemGetInfo_v2;
    a->MemAlloc = cuMemAlloc_v2;
    a->MemFree = cuMemFree_v2;
    a->MemAllocPitch = cuMemAllocPitch_v2;
    a->MemAllocManaged = cuMemAllocManaged;
    a->StreamCreate = cuStreamCreate;
    a->StreamDestroy = cuStreamDestroy_v2;
    a->StreamSynchronize = cuStreamSynchronize;
    a->MemAllocAsync = cuMemAllocAsync;
    a->MemFreeAsync = cuMemFreeAsync;
    a->MemPoolCreate = cuMemPoolCreate;
    a->MemPoolDestroy = cuMemPoolDestroy;
    a->MemAllocFromPoolAsync = cuMemAllocFromPoolAsync;
    a->MemGetAllocationGranularity = cuMemGetAllocationGranularity;
    a->MemAddressReserve = cuMemAddressReserve;
    a->MemAddressFree = cuMemAddressFree;
    a->MemCreate = cuMemCreate;
    a->MemRelease = cuMemRelease;
    a->MemMap = cuMemMap;
    a->MemUnmap = cuMemUnmap;
    a->MemSetAccess = cuMemSetAccess;
    a->ArrayCreate = cuArrayCreate_v2;
    a->Array3DCreate = cuArray3DCreate_v2;
    a->ArrayDestroy = cuArrayDestroy;
    a->MipmappedArrayCreate = cuMipmappedArrayCreate;
    a->MipmappedArrayDestroy = cuMipmappedArrayDestroy;
    return 0;
}

int binding_check_abi(void) {
    fprintf(stderr, "client-direct: --check-abi needs versioned lookups; use client-procaddr\n");
    return 1;
}
