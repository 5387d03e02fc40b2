/*
 * A context destroyed and a new one created on another device that gets the same handle, as a
 * real driver may hand out (run with SIMCUDA_REUSE_HANDLES=1). Anything the guard keyed by the
 * context handle must not outlive the first context: the second context's memory belongs to the
 * second device, and stays charged when the first context's destruction is done with.
 *
 *   reused_context           the first context is destroyed, then the second one made;
 *   reused_context --race    another thread destroys the first context, and this one makes the
 *                            second and allocates in it before the destroying call has returned
 *                            (with SIMCUDA_RETURN_DELAY=cuCtxDestroy_v2:<a few hundred ms>).
 *
 * Linked with -lcuda and -lpthread. Prints "handles first=<h> second=<h>" and stops at
 * "stage <name>" checkpoints until the test has looked at the ledger (steps.h).
 */
#include <pthread.h>
#include <string.h>

#include "../clients/cuda_min.h"
#include "steps.h"

static CUcontext first = NULL;
static volatile int destroying = 0;

static void *destroy_first(void *unused) {
    (void)unused;
    CHECK(cuCtxSetCurrent(first));
    destroying = 1;
    CHECK(cuCtxDestroy_v2(first)); /* with the delay, returns a while after the context is gone */
    return NULL;
}

int main(int argc, char **argv) {
    int race = argc > 1 && strcmp(argv[1], "--race") == 0;
    CUdevice first_device = 0, second_device = 0;
    CUcontext second = NULL;
    CUdeviceptr p = 0;
    pthread_t destroyer;
    struct timespec moment = {0, 1000 * 1000};
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&first_device, 0));
    CHECK(cuDeviceGet(&second_device, 1));

    /* The first context, used in this thread: its device is now known (cached). */
    CHECK(cuCtxCreate_v2(&first, 0, first_device));
    CHECK(cuMemAlloc_v2(&p, 40 * MIB));
    CHECK(cuMemFree_v2(p));
    CHECK(cuMemAlloc_v2(&p, 40 * MIB));
    stage("first-holding");

    if (race) {
        CHECK(cuCtxSetCurrent(NULL));
        if (pthread_create(&destroyer, NULL, destroy_first, NULL) != 0) {
            printf("fail pthread_create\n");
            return 1;
        }
        while (!destroying) nanosleep(&moment, NULL);
        /* Until the driver has destroyed it (setting it current then fails); the destroying call
         * has not returned yet. */
        while (cuCtxSetCurrent(first) == 0) {
            CHECK(cuCtxSetCurrent(NULL));
            nanosleep(&moment, NULL);
        }
    } else {
        CHECK(cuCtxDestroy_v2(first));
    }

    CHECK(cuCtxCreate_v2(&second, 0, second_device));
    printf("handles first=%p second=%p\n", (void *)first, (void *)second);
    CHECK(cuMemAlloc_v2(&p, 60 * MIB));
    if (race) pthread_join(destroyer, NULL);
    stage("second-holding");
    CHECK(cuMemFree_v2(p));
    stage("second-freed");
    CHECK(cuCtxDestroy_v2(second));
    stage("done");
    return 0;
}
