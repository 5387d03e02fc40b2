/* The benchmark client: times driver calls from inside a process, the same way whether or not
 * libvramguard.so is preloaded, so that the harness (benches/guard.rs) can run it both ways and
 * report the difference. Built twice by the harness: linked with -lcuda and -DVG_DIRECT (path
 * "direct"), and plain (paths "dlsym" and "procaddr", see vg_driver.h).
 *
 *   vg-bench --path P pairs --chunk BYTES --batches N --batch B
 *       N batches of B cuMemAlloc_v2 + cuMemFree_v2 pairs; prints `batch_ns <ns>` (elapsed
 *       time) and `batch_cpu_ns <ns>` (the thread's CPU time, which time the thread spends
 *       preempted by other processes does not inflate) per batch.
 *   vg-bench --path procaddr lookups --rounds R
 *       R rounds of the CUDA runtime's start-up lookups (a probe for "" then every driver entry
 *       point through cuGetProcAddress); prints `lookups count=<n> ns=<ns>` per round.
 *   vg-bench --path P start --chunk BYTES
 *       cuInit, primary context, one allocation and its free: what a process does at start;
 *       prints `start init_ns=<ns>` (cuInit to the first allocation returning).
 *   vg-bench --path P hammer --chunk BYTES --start-at MONO_NS --until MONO_NS
 *       waits for CLOCK_MONOTONIC start-at, then allocates and frees until `until`; prints
 *       `hammer pairs=<n> failed=<n>` and a latency histogram, `hist <lower_ns> <count>` lines.
 *   vg-bench --path P rss --chunk BYTES
 *       prints `rss start_kib=<k> end_kib=<k>` (VmRSS before cuInit and after attach + alloc + free).
 *   vg-bench --path P waitpair --rounds R --hold BYTES --want BYTES --settle-us U [--poll-us P]
 *       forks a holder and a waiter. Each round the holder holds `hold`, the waiter asks for
 *       `want` (which does not fit until the holder frees), the holder sleeps U us plus a random
 *       0..1 ms (so that a polling waiter's retries are not in step with the release), records
 *       CLOCK_MONOTONIC and frees. Without --poll-us the waiter makes one call (the guard's wait
 *       policy makes it wait); with it, it retries every P us (what a program does without the
 *       guard). Prints `round asked_ns=<t> release_ns=<t> returned_ns=<t>` per round.
 * Exit status: 0 done, 1 failure (message on stderr), 3 cuInit failed. */
#include "vg_driver.h"
#include "vg_driver_names.h"

#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

struct options {
    const char *path;
    const char *mode;
    unsigned long long chunk, hold, want;
    long batches, batch, rounds, settle_us, poll_us;
    unsigned long long start_at, until;
};

static void usage(void) {
    fprintf(stderr, "usage: vg-bench --path direct|dlsym|procaddr "
                    "pairs|lookups|start|hammer|rss|waitpair [options]\n");
    exit(1);
}

static unsigned long long number(const char *flag, const char *text) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || !end || *end || end == text) {
        fprintf(stderr, "vg-bench: %s needs a number, got %s\n", flag, text);
        exit(1);
    }
    return v;
}

static void parse(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof *o);
    o->chunk = 1 << 20;
    o->batches = 100;
    o->batch = 1000;
    o->rounds = 10;
    o->settle_us = 2000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            if (o->mode) usage();
            o->mode = a;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--path")) o->path = v;
        else if (!strcmp(a, "--chunk")) o->chunk = number(a, v);
        else if (!strcmp(a, "--hold")) o->hold = number(a, v);
        else if (!strcmp(a, "--want")) o->want = number(a, v);
        else if (!strcmp(a, "--batches")) o->batches = (long)number(a, v);
        else if (!strcmp(a, "--batch")) o->batch = (long)number(a, v);
        else if (!strcmp(a, "--rounds")) o->rounds = (long)number(a, v);
        else if (!strcmp(a, "--settle-us")) o->settle_us = (long)number(a, v);
        else if (!strcmp(a, "--poll-us")) o->poll_us = (long)number(a, v);
        else if (!strcmp(a, "--start-at")) o->start_at = number(a, v);
        else if (!strcmp(a, "--until")) o->until = number(a, v);
        else usage();
    }
    if (!o->path || !o->mode) usage();
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void alloc_free(const struct vg_driver *d, unsigned long long bytes) {
    CUdeviceptr p = 0;
    CUresult rc = d->cuMemAlloc(&p, bytes);
    if (rc != CUDA_SUCCESS) vg_die("cuMemAlloc_v2", rc);
    rc = d->cuMemFree(p);
    if (rc != CUDA_SUCCESS) vg_die("cuMemFree_v2", rc);
}

static int run_pairs(const struct vg_driver *d, const struct options *o) {
    vg_driver_attach(d, 0);
    for (long i = 0; i < o->batch; i++) alloc_free(d, o->chunk); /* warm-up */
    for (long b = 0; b < o->batches; b++) {
        uint64_t t0 = vg_now_ns();
        uint64_t c0 = vg_thread_cpu_ns();
        for (long i = 0; i < o->batch; i++) alloc_free(d, o->chunk);
        uint64_t c1 = vg_thread_cpu_ns();
        uint64_t t1 = vg_now_ns();
        printf("batch_ns %llu\nbatch_cpu_ns %llu\n", (unsigned long long)(t1 - t0),
               (unsigned long long)(c1 - c0));
    }
    return 0;
}

static int run_lookups(const struct vg_driver *d, const struct options *o) {
    if (!d->cuGetProcAddress) {
        fprintf(stderr, "vg-bench: lookups need --path procaddr or direct\n");
        return 1;
    }
    for (long r = 0; r < o->rounds; r++) {
        uint64_t t0 = vg_now_ns();
        void *fn = NULL;
        int status = 0;
        unsigned found = 0;
        d->cuGetProcAddress("", &fn, 12000, 0, &status); /* cudart's probe */
        for (size_t i = 0; i < VG_LOOKUP_COUNT; i++) {
            fn = NULL;
            if (d->cuGetProcAddress(VG_LOOKUPS[i].name, &fn, 12000, VG_LOOKUPS[i].flags, &status) ==
                    CUDA_SUCCESS &&
                fn)
                found++;
        }
        uint64_t ns = vg_now_ns() - t0;
        printf("lookups count=%zu found=%u ns=%llu\n", VG_LOOKUP_COUNT + 1, found,
               (unsigned long long)ns);
    }
    return 0;
}

static int run_start(const struct vg_driver *d, const struct options *o) {
    uint64_t t0 = vg_now_ns();
    vg_driver_attach(d, 0);
    CUdeviceptr p = 0;
    CUresult rc = d->cuMemAlloc(&p, o->chunk);
    if (rc != CUDA_SUCCESS) vg_die("cuMemAlloc_v2", rc);
    uint64_t t1 = vg_now_ns();
    rc = d->cuMemFree(p);
    if (rc != CUDA_SUCCESS) vg_die("cuMemFree_v2", rc);
    printf("start init_ns=%llu\n", (unsigned long long)(t1 - t0));
    return 0;
}

/* Log-linear latency histogram: 16 sub-buckets per power of two (under 7% error). */
#define HIST_SUB 16
#define HIST_BUCKETS (64 * HIST_SUB)
static unsigned long long hist[HIST_BUCKETS];

static unsigned hist_index(uint64_t ns) {
    if (ns < HIST_SUB) return (unsigned)ns;
    unsigned exp = 63 - (unsigned)__builtin_clzll(ns); /* >= 4 */
    unsigned sub = (unsigned)((ns >> (exp - 4)) & (HIST_SUB - 1));
    return (exp - 3) * HIST_SUB + sub;
}

static uint64_t hist_lower(unsigned index) {
    if (index < HIST_SUB) return index;
    unsigned exp = index / HIST_SUB + 3, sub = index % HIST_SUB;
    return ((uint64_t)(HIST_SUB + sub)) << (exp - 4);
}

static int run_hammer(const struct vg_driver *d, const struct options *o) {
    vg_driver_attach(d, 0);
    alloc_free(d, o->chunk);
    uint64_t now = vg_now_ns();
    if (o->start_at > now) sleep_ns(o->start_at - now);
    unsigned long long pairs = 0, failed = 0;
    uint64_t t = vg_now_ns();
    while (t < o->until) {
        CUdeviceptr p = 0;
        CUresult rc = d->cuMemAlloc(&p, o->chunk);
        if (rc == CUDA_SUCCESS) rc = d->cuMemFree(p);
        uint64_t t2 = vg_now_ns();
        if (rc == CUDA_SUCCESS) {
            pairs++;
            hist[hist_index(t2 - t)]++;
        } else {
            failed++;
        }
        t = t2;
    }
    printf("hammer pairs=%llu failed=%llu\n", pairs, failed);
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        if (hist[i]) printf("hist %llu %llu\n", (unsigned long long)hist_lower(i), hist[i]);
    return 0;
}

static long vm_rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib;
}

static int run_rss(const struct vg_driver *d, const struct options *o) {
    long before = vm_rss_kib();
    vg_driver_attach(d, 0);
    alloc_free(d, o->chunk);
    printf("rss start_kib=%ld end_kib=%ld\n", before, vm_rss_kib());
    return 0;
}

static void write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            perror("vg-bench: write");
            exit(1);
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes; 0 at a clean end of file before the first byte. */
static int read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            perror("vg-bench: read");
            exit(1);
        }
        if (r == 0) {
            if (got == 0) return 0;
            fprintf(stderr, "vg-bench: short read from the other side\n");
            exit(1);
        }
        got += (size_t)r;
    }
    return 1;
}

struct wait_result {
    uint64_t asked_ns, returned_ns;
    CUresult rc;
};

static void waiter(const struct vg_driver *d, const struct options *o, int from_holder, int to_holder) {
    vg_driver_attach(d, 0);
    char token;
    while (read_all(from_holder, &token, 1)) {
        write_all(to_holder, &token, 1); /* "asking now" */
        struct wait_result res = {vg_now_ns(), 0, 0};
        CUdeviceptr p = 0;
        for (;;) {
            res.rc = d->cuMemAlloc(&p, o->want);
            if (res.rc != CUDA_ERROR_OUT_OF_MEMORY || o->poll_us == 0) break;
            sleep_ns((uint64_t)o->poll_us * 1000ull);
        }
        res.returned_ns = vg_now_ns();
        if (res.rc == CUDA_SUCCESS) d->cuMemFree(p);
        write_all(to_holder, &res, sizeof res);
    }
}

static int run_waitpair(const struct options *o) {
    int to_waiter[2], to_holder[2];
    if (pipe(to_waiter) || pipe(to_holder)) {
        perror("vg-bench: pipe");
        return 1;
    }
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        perror("vg-bench: fork");
        return 1;
    }
    struct vg_driver d;
    vg_driver_load(&d, o->path);
    if (child == 0) {
        close(to_waiter[1]);
        close(to_holder[0]);
        waiter(&d, o, to_waiter[0], to_holder[1]);
        _exit(0);
    }
    close(to_waiter[0]);
    close(to_holder[1]);
    vg_driver_attach(&d, 0);
    int status = 0;
    uint64_t jitter = 42;
    for (long r = 0; r < o->rounds; r++) {
        CUdeviceptr held = 0;
        CUresult rc = d.cuMemAlloc(&held, o->hold);
        if (rc != CUDA_SUCCESS) vg_die("holder cuMemAlloc_v2", rc);
        char token = 'h';
        write_all(to_waiter[1], &token, 1);
        if (!read_all(to_holder[0], &token, 1)) {
            fprintf(stderr, "vg-bench: the waiter is gone\n");
            status = 1;
            break;
        }
        jitter = jitter * 6364136223846793005ull + 1442695040888963407ull;
        sleep_ns((uint64_t)o->settle_us * 1000ull + (jitter >> 33) % 1000000ull);
        uint64_t release_ns = vg_now_ns();
        rc = d.cuMemFree(held);
        if (rc != CUDA_SUCCESS) vg_die("holder cuMemFree_v2", rc);
        struct wait_result res;
        if (!read_all(to_holder[0], &res, sizeof res)) {
            fprintf(stderr, "vg-bench: the waiter is gone\n");
            status = 1;
            break;
        }
        if (res.rc != CUDA_SUCCESS) {
            fprintf(stderr, "vg-bench: the waiter's allocation failed with CUDA error %u\n", res.rc);
            status = 1;
            break;
        }
        printf("round asked_ns=%llu release_ns=%llu returned_ns=%llu\n",
               (unsigned long long)res.asked_ns, (unsigned long long)release_ns,
               (unsigned long long)res.returned_ns);
        fflush(stdout);
    }
    close(to_waiter[1]);
    int wstatus = 0;
    waitpid(child, &wstatus, 0);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) status = 1;
    return status;
}

int main(int argc, char **argv) {
    struct options o;
    parse(argc, argv, &o);
    if (!strcmp(o.mode, "waitpair")) return run_waitpair(&o);
    struct vg_driver d;
    vg_driver_load(&d, o.path);
    int rc;
    if (!strcmp(o.mode, "pairs")) rc = run_pairs(&d, &o);
    else if (!strcmp(o.mode, "lookups")) rc = run_lookups(&d, &o);
    else if (!strcmp(o.mode, "start")) rc = run_start(&d, &o);
    else if (!strcmp(o.mode, "hammer")) rc = run_hammer(&d, &o);
    else if (!strcmp(o.mode, "rss")) rc = run_rss(&d, &o);
    else usage();
    fflush(stdout);
    return rc;
}
