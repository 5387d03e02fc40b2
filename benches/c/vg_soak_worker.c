/* The soak worker: one GPU process of the soak suite (benches/soak). Until CLOCK_MONOTONIC passes
 * --until it allocates, frees, idles, forks children and, at random, exits (abruptly or in order),
 * on every visible device, through the driver path given with --path (see vg_driver.h).
 *
 *   vg-soak-worker --path P --devices N --seed S --until MONO_NS --status FILE
 *                  [--max-chunk BYTES] [--max-held N] [--exit-permille N] [--forks 0|1]
 *
 * It publishes what it holds in FILE (struct vg_worker_status below, read by the soak observer):
 * `seq` is odd while a driver call is in progress and even when the worker is quiescent, so an
 * observer that reads the same even `seq` (and the same contents) before and after sampling the
 * ledger and the driver knows that the worker held exactly `bytes` during the whole sample.
 * The layout is pinned by the observer (benches/soak/worker.rs); change both together.
 *
 * Exit status: 0 (also for a random early exit), 1 setup failure, 3 cuInit failed. Driver errors
 * during the run are counted, never fatal: under the guard a refusal is an expected outcome. */
#include "vg_driver.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define VG_MAX_DEVICES 4
#define VG_MAX_HELD 64

struct vg_worker_status {
    uint64_t seq;           /* odd: inside a driver call */
    uint64_t op_started_ns; /* CLOCK_MONOTONIC when the current call started */
    uint64_t pid;
    uint64_t devices;                      /* how many devices the worker uses */
    uint64_t bytes[VG_MAX_DEVICES];        /* allocation bytes held, by visible ordinal */
    uint64_t contexts[VG_MAX_DEVICES];     /* primary contexts retained, by visible ordinal */
    uint64_t ops;                          /* driver calls made */
    uint64_t allocs_ok, allocs_refused, allocs_failed_other, frees, forks;
    uint64_t finished; /* 1 once the worker freed everything and is about to exit */
};

struct held {
    CUdeviceptr ptr;
    uint64_t bytes;
    int device;
};

static struct vg_worker_status *status;
static struct held held[VG_MAX_HELD];
static int held_count;
static CUcontext contexts[VG_MAX_DEVICES];
static uint64_t rng_state;

static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }

static void begin_op(void) {
    __atomic_store_n(&status->op_started_ns, vg_now_ns(), __ATOMIC_RELAXED);
    __atomic_add_fetch(&status->seq, 1, __ATOMIC_SEQ_CST);
}

static void end_op(void) {
    __atomic_add_fetch(&status->ops, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&status->seq, 1, __ATOMIC_SEQ_CST);
}

static void count(uint64_t *field) { __atomic_add_fetch(field, 1, __ATOMIC_RELAXED); }

static void sleep_ms(uint64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Makes device `ordinal`'s primary context current, retaining it on first use. 0 on success. */
static int use_device(const struct vg_driver *d, int ordinal) {
    if (!contexts[ordinal]) {
        CUdevice dev;
        begin_op();
        CUresult rc = d->cuDeviceGet(&dev, ordinal);
        CUcontext ctx = NULL;
        if (rc == CUDA_SUCCESS) rc = d->cuDevicePrimaryCtxRetain(&ctx, dev);
        if (rc == CUDA_SUCCESS) {
            contexts[ordinal] = ctx;
            status->contexts[ordinal] = 1;
        }
        end_op();
        if (rc != CUDA_SUCCESS) {
            count(rc == CUDA_ERROR_OUT_OF_MEMORY ? &status->allocs_refused : &status->allocs_failed_other);
            return -1;
        }
    }
    return d->cuCtxSetCurrent(contexts[ordinal]) == CUDA_SUCCESS ? 0 : -1;
}

static void do_alloc(const struct vg_driver *d, uint64_t max_chunk) {
    int dev = (int)rnd_below(status->devices);
    if (use_device(d, dev) != 0) return;
    uint64_t mib = 1 + rnd_below(max_chunk >> 20);
    uint64_t bytes = mib << 20;
    CUdeviceptr p = 0;
    begin_op();
    CUresult rc = d->cuMemAlloc(&p, bytes);
    if (rc == CUDA_SUCCESS) {
        held[held_count++] = (struct held){p, bytes, dev};
        status->bytes[dev] += bytes;
    }
    end_op();
    if (rc == CUDA_SUCCESS) count(&status->allocs_ok);
    else if (rc == CUDA_ERROR_OUT_OF_MEMORY) count(&status->allocs_refused);
    else count(&status->allocs_failed_other);
}

static void do_free(const struct vg_driver *d, int index) {
    struct held h = held[index];
    if (use_device(d, h.device) != 0) return;
    begin_op();
    CUresult rc = d->cuMemFree(h.ptr);
    if (rc == CUDA_SUCCESS) {
        held[index] = held[--held_count];
        status->bytes[h.device] -= h.bytes;
    }
    end_op();
    if (rc == CUDA_SUCCESS) count(&status->frees);
    else count(&status->allocs_failed_other);
}

/* A child that does no CUDA (a helper process, like a data-loader worker) and exits soon. It keeps
 * the parent's inherited descriptors, and with them the parent's memory, alive until then. */
static void do_fork(void) {
    uint64_t ms = rnd_below(100);
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        sleep_ms(ms);
        _exit(0);
    }
    if (child > 0) count(&status->forks);
}

static void reap_children(int block) {
    while (waitpid(-1, NULL, block ? 0 : WNOHANG) > 0) {
    }
}

static unsigned long long number(const char *flag, const char *text) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || !end || *end || end == text) {
        fprintf(stderr, "vg-soak-worker: %s needs a number, got %s\n", flag, text);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *path = NULL, *status_path = NULL;
    uint64_t devices = 1, seed = 1, until = 0, max_chunk = 256ull << 20, max_held = 8, exit_permille = 5, forks = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--path")) path = v;
        else if (!strcmp(a, "--status")) status_path = v;
        else if (!strcmp(a, "--devices")) devices = number(a, v);
        else if (!strcmp(a, "--seed")) seed = number(a, v);
        else if (!strcmp(a, "--until")) until = number(a, v);
        else if (!strcmp(a, "--max-chunk")) max_chunk = number(a, v);
        else if (!strcmp(a, "--max-held")) max_held = number(a, v);
        else if (!strcmp(a, "--exit-permille")) exit_permille = number(a, v);
        else if (!strcmp(a, "--forks")) forks = number(a, v);
        else {
            fprintf(stderr, "vg-soak-worker: unknown option %s\n", a);
            return 1;
        }
    }
    if (!path || !status_path || devices < 1 || devices > VG_MAX_DEVICES || max_held > VG_MAX_HELD ||
        max_chunk < (1ull << 20)) {
        fprintf(stderr, "vg-soak-worker: bad arguments (need --path, --status, 1..%d devices, "
                        "--max-held <= %d, --max-chunk >= 1 MiB)\n",
                VG_MAX_DEVICES, VG_MAX_HELD);
        return 1;
    }
    int fd = open(status_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, sizeof(struct vg_worker_status)) != 0) {
        perror("vg-soak-worker: status file");
        return 1;
    }
    status = mmap(NULL, sizeof *status, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (status == MAP_FAILED) {
        perror("vg-soak-worker: mmap");
        return 1;
    }
    status->pid = (uint64_t)getpid();
    status->devices = devices;
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;

    struct vg_driver d;
    vg_driver_load(&d, path);
    begin_op();
    CUresult rc = d.cuInit(0);
    end_op();
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "vg-soak-worker: cuInit failed with CUDA error %u\n", rc);
        return 3;
    }

    while (vg_now_ns() < until) {
        uint64_t r = rnd_below(1000);
        if (r < exit_permille) {
            /* Exit at random: holding everything, with or without exit handlers, or in order. */
            uint64_t how = rnd_below(3);
            if (how == 0) _exit(0);
            if (how == 1) exit(0);
            break;
        }
        r = rnd_below(100);
        if (r < 45 && held_count < (int)max_held) do_alloc(&d, max_chunk);
        else if (r < 80 && held_count > 0) do_free(&d, (int)rnd_below((uint64_t)held_count));
        else if (r < 95 || !forks) sleep_ms(rnd_below(20));
        else do_fork();
        reap_children(0);
    }
    while (held_count > 0) {
        int before = held_count;
        do_free(&d, held_count - 1);
        if (held_count == before) break; /* the driver refused the free: leave it to exit */
    }
    reap_children(1);
    __atomic_store_n(&status->finished, 1, __ATOMIC_SEQ_CST);
    return 0;
}
