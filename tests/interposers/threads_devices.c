/*
 * Two threads allocating at the same time, each in the primary context of its own device: every
 * allocation must be charged to the device of the context current in the thread that made it.
 * Each thread makes 2000 allocate-and-free pairs of 1 MiB, then keeps (ordinal + 1) x 10 MiB.
 * Linked with -lcuda and -lpthread; stops at "stage held" until the test has looked (steps.h).
 */
#include <pthread.h>

#include "../clients/cuda_min.h"
#include "steps.h"

#define PAIRS 2000

static void *allocate_on(void *arg) {
    int ordinal = (int)(long)arg;
    CUdevice device = 0;
    CUcontext context = NULL;
    CUdeviceptr p = 0;
    CHECK(cuDeviceGet(&device, ordinal));
    CHECK(cuDevicePrimaryCtxRetain(&context, device));
    CHECK(cuCtxSetCurrent(context));
    for (int i = 0; i < PAIRS; i++) {
        CHECK(cuMemAlloc_v2(&p, MIB));
        CHECK(cuMemFree_v2(p));
    }
    CHECK(cuMemAlloc_v2(&p, (unsigned long long)(ordinal + 1) * 10 * MIB));
    return NULL;
}

int main(void) {
    pthread_t threads[2];
    CHECK(cuInit(0));
    for (long i = 0; i < 2; i++) {
        if (pthread_create(&threads[i], NULL, allocate_on, (void *)i) != 0) {
            printf("fail pthread_create\n");
            return 1;
        }
    }
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    stage("held");
    return 0;
}
