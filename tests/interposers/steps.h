/*
 * What the step-by-step test programs share: a CHECK that stops the program at the first failed
 * driver call (printing "fail <call> <code>"), and stage(), which prints "stage <name>" and
 * pauses so that a test can look at the ledger and the card at that point.
 */
#ifndef VG_STEPS_H
#define VG_STEPS_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MIB (1ull << 20)
#define CHECK(call)                                                        \
    do {                                                                   \
        CUresult r_ = (call);                                              \
        if (r_ != 0) {                                                     \
            printf("fail %s %d\n", #call, r_);                             \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static void stage(const char *name) {
    printf("stage %s\n", name);
    fflush(stdout);
    struct timespec pause = {0, 400 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

#endif
