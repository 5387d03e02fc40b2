/*
 * A context destroyed and a new one created on another device that gets the same handle, as a
 * real driver may hand out (run with SIMCUDA_REUSE_HANDLES=1). Anything the guard keyed by the
 * context handle must not outlive the first context: the second context's allocation belongs to
 * the second device. Linked with -lcuda. Prints "handles first=<h> second=<h>" and pauses at
 * "stage <name>" checkpoints so that a test can look at the ledger.
 */
#include "../clients/cuda_min.h"
#include "steps.h"

int main(void) {
    CUdevice first_device = 0, second_device = 0;
    CUcontext first = NULL, second = NULL;
    CUdeviceptr p = 0;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&first_device, 0));
    CHECK(cuDeviceGet(&second_device, 1));

    CHECK(cuCtxCreate_v2(&first, 0, first_device));
    CHECK(cuMemAlloc_v2(&p, 40 * MIB));
    CHECK(cuMemFree_v2(p));
    CHECK(cuMemAlloc_v2(&p, 40 * MIB));
    stage("first-holding");
    CHECK(cuCtxDestroy_v2(first));

    CHECK(cuCtxCreate_v2(&second, 0, second_device));
    printf("handles first=%p second=%p\n", (void *)first, (void *)second);
    CHECK(cuMemAlloc_v2(&p, 60 * MIB));
    stage("second-holding");
    CHECK(cuMemFree_v2(p));
    stage("second-freed");
    CHECK(cuCtxDestroy_v2(second));
    stage("done");
    return 0;
}
