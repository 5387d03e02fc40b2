/*
 * What the step-by-step test programs share: a CHECK that stops the program at the first failed
 * driver call (printing "fail <call> <code>"), and stage(), which prints "stage <name>" and waits
 * until the test has looked at the ledger and the card at that point: the test then creates the
 * file <name> in the directory $VG_STAGE_DIR.
 */
#ifndef VG_STEPS_H
#define VG_STEPS_H

#include <stdio.h>
#include <stdlib.h>
#include "../clients/go_file.h"

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
    const char *dir = getenv("VG_STAGE_DIR");
    if (!dir) {
        fprintf(stderr, "VG_STAGE_DIR is not set: the test says when each stage may end\n");
        exit(1);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    wait_for_go_file(path);
}

#endif
