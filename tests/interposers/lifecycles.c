/*
 * Memory whose life does not end with the call that seems to free it, driven step by step so a
 * test can compare the guard's ledger with the card at each stage. Linked with -lcuda.
 *   - a pool that keeps freed memory (release threshold = max), reuses it, then is trimmed;
 *   - a physical allocation released right after it was mapped (llama.cpp's pattern), then
 *     unmapped;
 *   - memory left in a created context that is destroyed, and in the primary context when its
 *     last reference is released (the driver frees both with their context).
 * At each checkpoint it prints "stage <name>" and waits until the test has looked (steps.h).
 */
#include "../clients/cuda_min.h"
#include "steps.h"

int main(void) {
    int dev = 0;
    CUcontext ctx = NULL;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    stage("start");

    CUstream stream = NULL;
    CUmemoryPool pool = NULL;
    CUmemPoolProps props = {0};
    props.allocType = 1;
    props.location.type = 1;
    props.location.id = dev;
    CHECK(cuStreamCreate(&stream, 1));
    CHECK(cuMemPoolCreate(&pool, &props));
    unsigned long long keep_everything = ~0ull;
    CHECK(cuMemPoolSetAttribute(pool, 4 /* CU_MEMPOOL_ATTR_RELEASE_THRESHOLD */, &keep_everything));
    CUdeviceptr p = 0;
    CHECK(cuMemAllocFromPoolAsync(&p, 100 * MIB, pool, stream));
    CHECK(cuMemFreeAsync(p, stream));
    CHECK(cuStreamSynchronize(stream));
    stage("pool-cached");
    CHECK(cuMemAllocFromPoolAsync(&p, 60 * MIB, pool, stream));
    stage("pool-reused");
    CHECK(cuMemFreeAsync(p, stream));
    CHECK(cuStreamSynchronize(stream));
    CHECK(cuMemPoolTrimTo(pool, 0));
    stage("pool-trimmed");

    CUdeviceptr va = 0;
    CUmemGenericAllocationHandle handle = 0;
    CUmemAllocationProp prop = {0};
    prop.type = 1;
    prop.location.type = 1;
    prop.location.id = dev;
    CHECK(cuMemAddressReserve(&va, 40 * MIB, 0, 0, 0));
    CHECK(cuMemCreate(&handle, 20 * MIB, &prop, 0));
    CHECK(cuMemMap(va, 20 * MIB, 0, handle, 0));
    CHECK(cuMemRelease(handle));
    stage("mapped-released");
    CHECK(cuMemUnmap(va, 20 * MIB));
    stage("unmapped");

    CHECK(cuMemAddressFree(va, 40 * MIB));
    CHECK(cuMemPoolDestroy(pool));
    CHECK(cuStreamDestroy_v2(stream));

    CUcontext created = NULL;
    CHECK(cuCtxCreate_v2(&created, 0, dev));
    CHECK(cuMemAlloc_v2(&p, 50 * MIB));
    stage("created-context-holding");
    CHECK(cuCtxDestroy_v2(created));
    stage("created-context-destroyed");

    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuMemAlloc_v2(&p, 30 * MIB));
    stage("primary-holding");
    CHECK(cuDevicePrimaryCtxRelease_v2(dev));
    stage("done");
    return 0;
}
