/*
 * How a test program waits for its test: until a file appears (the test creates it once it has
 * looked at what it wanted to see). A wait, not a sleep, so that a busy machine cannot make the
 * program move on before the test looked. A file that never appears (the test died) ends the
 * program after five minutes, with a message and exit code 1, instead of leaving it behind.
 */
#ifndef VG_GO_FILE_H
#define VG_GO_FILE_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void wait_for_go_file(const char *path) {
    struct timespec step = {0, 2 * 1000 * 1000};
    for (long waited_ms = 0; access(path, F_OK) != 0; waited_ms += 2) {
        if (waited_ms >= 300 * 1000) {
            fprintf(stderr, "client: %s did not appear within 5 minutes\n", path);
            exit(1);
        }
        struct timespec left = step;
        while (nanosleep(&left, &left) != 0 && errno == EINTR) {}
    }
}

#endif
