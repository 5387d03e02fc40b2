/* The shared workload of the C test clients: allocate, hold and free device memory through one
 * of the driver's allocation families, from several threads and a forked child if asked, and
 * report every event on stdout. How the driver is reached is up to the binding file linked in.
 *
 *   client [--device N] [--api default|pitch|managed|async|pool|vmm|array|array3d|mipmapped|ctx]
 *          [--chunk SIZE] [--count N] [--hold-ms MS] [--hold-if-complete-ms MS] [--threads N] [--fork] [--free-each]
 *          [--keep-going] [--sleep-between-ms MS] [--exhaust-fds] [--check-abi]
 *
 * --exhaust-fds: right after cuInit, opens /dev/null until the process has no file descriptor
 * left (EMFILE), and keeps them open: what the guard does without descriptors after attaching.
 *
 * stdout: `alloc ok <bytes>` / `alloc fail <bytes> <CUDA_ERROR_NAME>` per allocation, `holding
 * <ms>` before holding, then `summary path=<path> ok=<n> failed=<n> bytes=<total>
 * first_error=<NAME|none>`. Exit: 0 all allocations succeeded, 2 one failed with
 * CUDA_ERROR_OUT_OF_MEMORY, 3 cuInit failed, 1 anything else.
 *
 * What one allocation of --chunk bytes is, per --api (the bytes printed are what the driver is
 * asked to hold):
 *   default   cuMemAlloc_v2(chunk)                 managed  cuMemAllocManaged(chunk)
 *   pitch     cuMemAllocPitch_v2, rows of 1000 bytes (pitch 1024), chunk/1024 rows: pitch x rows
 *   async     cuMemAllocAsync on the thread's stream; freed with cuMemFreeAsync (+ synchronize)
 *   pool      cuMemAllocFromPoolAsync from the thread's own pool (cuMemPoolCreate)
 *   vmm       like PyTorch's expandable segments: one reserved VA range per thread, then per
 *             chunk 20 MiB cuMemCreate pages, each cuMemMap'ped and cuMemSetAccess'ed (the
 *             chunk rounds up to 20 MiB); freed with cuMemUnmap + cuMemRelease
 *   array     cuArrayCreate_v2 float x1, 1024 wide: 4096-byte rows
 *   array3d   cuArray3DCreate_v2 float x4, 256 x 16: 64 KiB slices
 *   mipmapped cuMipmappedArrayCreate float, square side >= sqrt(chunk/4), two levels
 *   ctx       cuCtxCreate_v2 (--chunk ignored); the bytes are what cuMemGetInfo shows it took
 * The primary context is retained and made current first, as the CUDA runtime does; with --fork
 * the child starts its own CUDA session after the parent's and reports through a pipe. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define VMM_SEGMENT (20ull << 20) /* PyTorch's expandable segments map 20 MiB pages */

enum api_kind { API_DEFAULT, API_PITCH, API_MANAGED, API_ASYNC, API_POOL, API_VMM, API_ARRAY, API_ARRAY3D, API_MIPMAPPED, API_CTX };
static const char *const api_names[] = {"default", "pitch", "managed", "async", "pool", "vmm", "array", "array3d", "mipmapped", "ctx"};

struct options {
    int device;
    enum api_kind api;
    unsigned long long chunk;
    int count, hold_ms, hold_if_complete_ms, threads, fork, free_each, keep_going, sleep_between_ms, exhaust_fds;
};

struct results {
    int ok, failed;
    unsigned long long bytes;
    CUresult first_error;  /* 0: none */
    int other_failure;     /* a non-allocation step failed */
};

/* One live allocation, whatever its family. */
struct record {
    CUdeviceptr ptr;
    void *handle;                          /* array, mipmapped array, context */
    CUmemGenericAllocationHandle *pages;   /* vmm: one physical handle per segment */
    size_t npages;
    unsigned long long bytes;
};

struct worker {
    const struct options *opt;
    struct cu_api *api;
    CUcontext ctx;
    CUdevice dev;
    struct results res;
};

static struct cu_api api;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&out_lock);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

const char *cu_error_name(CUresult code) {
    switch (code) {
    case 0: return "CUDA_SUCCESS";
    case 1: return "CUDA_ERROR_INVALID_VALUE";
    case 2: return "CUDA_ERROR_OUT_OF_MEMORY";
    case 3: return "CUDA_ERROR_NOT_INITIALIZED";
    case 4: return "CUDA_ERROR_DEINITIALIZED";
    case 100: return "CUDA_ERROR_NO_DEVICE";
    case 101: return "CUDA_ERROR_INVALID_DEVICE";
    case 201: return "CUDA_ERROR_INVALID_CONTEXT";
    case 400: return "CUDA_ERROR_INVALID_HANDLE";
    case 500: return "CUDA_ERROR_NOT_FOUND";
    case 801: return "CUDA_ERROR_NOT_SUPPORTED";
    case 999: return "CUDA_ERROR_UNKNOWN";
    default: {
        static __thread char buffer[32];
        snprintf(buffer, sizeof buffer, "CUDA_ERROR_%d", code);
        return buffer;
    }
    }
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static unsigned long long parse_size(const char *text) {
    char *end = NULL;
    double value = strtod(text, &end);
    unsigned long long unit = 1;
    if (end && *end) {
        if (!strcasecmp(end, "k") || !strcasecmp(end, "kib")) unit = 1ull << 10;
        else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib")) unit = 1ull << 20;
        else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib")) unit = 1ull << 30;
        else if (!strcasecmp(end, "b")) unit = 1;
        else { fprintf(stderr, "client: bad size %s\n", text); exit(1); }
    }
    return (unsigned long long)(value * (double)unit);
}

static unsigned long long round_up(unsigned long long v, unsigned long long to) { return (v + to - 1) / to * to; }

static CUmemAllocationProp device_prop(CUdevice dev) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = 1;
    prop.location.type = 1;
    prop.location.id = dev;
    return prop;
}

/* Per-thread resources of the async, pool and vmm families. */
struct lane {
    CUstream stream;
    CUmemoryPool pool;
    CUdeviceptr va_base;
    size_t va_size, va_used;
};

static unsigned long long mipmapped_bytes(size_t w, size_t h, unsigned levels, unsigned elem) {
    unsigned long long total = 0;
    for (unsigned l = 0; l < levels; l++) {
        size_t lw = w >> l ? w >> l : 1, lh = h >> l ? h >> l : 1;
        total += (unsigned long long)lw * lh * elem;
    }
    return total;
}

/* Allocates one chunk; fills `rec` and returns the driver's result. */
static CUresult alloc_one(struct worker *w, struct lane *lane, struct record *rec) {
    const struct options *o = w->opt;
    unsigned long long chunk = o->chunk;
    memset(rec, 0, sizeof *rec);
    rec->bytes = chunk;
    switch (o->api) {
    case API_DEFAULT:
        return api.MemAlloc(&rec->ptr, chunk);
    case API_MANAGED:
        return api.MemAllocManaged(&rec->ptr, chunk, CU_MEM_ATTACH_GLOBAL);
    case API_PITCH: {
        size_t pitch = 0, width = 1000, height = (chunk + 1023) / 1024;
        CUresult r = api.MemAllocPitch(&rec->ptr, &pitch, width, height, 4);
        rec->bytes = r == 0 ? (unsigned long long)pitch * height : round_up(width, 512) * height;
        return r;
    }
    case API_ASYNC:
        return api.MemAllocAsync(&rec->ptr, chunk, lane->stream);
    case API_POOL:
        return api.MemAllocFromPoolAsync(&rec->ptr, chunk, lane->pool, lane->stream);
    case API_VMM: {
        unsigned long long size = round_up(chunk, VMM_SEGMENT);
        CUmemAllocationProp prop = device_prop(w->dev);
        CUmemAccessDesc access = {{1, w->dev}, 3};
        size_t n = size / VMM_SEGMENT;
        rec->bytes = size;
        if (lane->va_used + size > lane->va_size) return 1;
        rec->ptr = lane->va_base + lane->va_used;
        rec->pages = calloc(n, sizeof *rec->pages);
        for (size_t i = 0; i < n; i++) {
            CUdeviceptr at = rec->ptr + i * VMM_SEGMENT;
            CUresult r = api.MemCreate(&rec->pages[i], VMM_SEGMENT, &prop, 0);
            if (r == 0) {
                r = api.MemMap(at, VMM_SEGMENT, 0, rec->pages[i], 0);
                if (r != 0) api.MemRelease(rec->pages[i]);
            }
            if (r == 0) r = api.MemSetAccess(at, VMM_SEGMENT, &access, 1);
            if (r != 0) { /* undo this chunk's pages, as PyTorch does on failure */
                for (size_t j = 0; j < i; j++) {
                    api.MemUnmap(rec->ptr + j * VMM_SEGMENT, VMM_SEGMENT);
                    api.MemRelease(rec->pages[j]);
                }
                free(rec->pages);
                rec->pages = NULL;
                return r;
            }
            rec->npages = i + 1;
        }
        lane->va_used += size;
        return 0;
    }
    case API_ARRAY: {
        CUDA_ARRAY_DESCRIPTOR d = {1024, (chunk + 4095) / 4096, CU_AD_FORMAT_FLOAT, 1};
        rec->bytes = 4096ull * d.Height;
        return api.ArrayCreate((CUarray *)&rec->handle, &d);
    }
    case API_ARRAY3D: {
        CUDA_ARRAY3D_DESCRIPTOR d = {256, 16, (chunk + 65535) / 65536, CU_AD_FORMAT_FLOAT, 4, 0};
        rec->bytes = 65536ull * d.Depth;
        return api.Array3DCreate((CUarray *)&rec->handle, &d);
    }
    case API_MIPMAPPED: {
        size_t side = 64;
        while ((unsigned long long)side * side * 4 < chunk) side *= 2;
        CUDA_ARRAY3D_DESCRIPTOR d = {side, side, 0, CU_AD_FORMAT_FLOAT, 1, 0};
        rec->bytes = mipmapped_bytes(side, side, 2, 4);
        return api.MipmappedArrayCreate((CUmipmappedArray *)&rec->handle, &d, 2);
    }
    case API_CTX: {
        size_t before = 0, after = 0, total = 0;
        api.MemGetInfo(&before, &total);
        CUresult r = api.CtxCreate((CUcontext *)&rec->handle, 0, w->dev);
        if (r == 0) {
            api.MemGetInfo(&after, &total);
            rec->bytes = before > after ? before - after : 0;
            api.CtxSetCurrent(w->ctx); /* keep the primary context current for the next steps */
        } else {
            rec->bytes = 0;
        }
        return r;
    }
    }
    return 1;
}

static CUresult free_one(struct worker *w, struct lane *lane, struct record *rec) {
    CUresult r = 0;
    switch (w->opt->api) {
    case API_DEFAULT: case API_MANAGED: case API_PITCH:
        return api.MemFree(rec->ptr);
    case API_ASYNC: case API_POOL:
        r = api.MemFreeAsync(rec->ptr, lane->stream);
        if (r == 0 && w->opt->free_each) r = api.StreamSynchronize(lane->stream);
        return r;
    case API_VMM:
        for (size_t i = 0; i < rec->npages; i++) {
            CUresult u = api.MemUnmap(rec->ptr + i * VMM_SEGMENT, VMM_SEGMENT);
            CUresult v = api.MemRelease(rec->pages[i]);
            if (!r) r = u ? u : v;
        }
        free(rec->pages);
        return r;
    case API_ARRAY: case API_ARRAY3D:
        return api.ArrayDestroy(rec->handle);
    case API_MIPMAPPED:
        return api.MipmappedArrayDestroy(rec->handle);
    case API_CTX:
        return api.CtxDestroy(rec->handle);
    }
    return 1;
}

static int lane_open(struct worker *w, struct lane *lane) {
    const struct options *o = w->opt;
    memset(lane, 0, sizeof *lane);
    CUresult r = 0;
    if (o->api == API_ASYNC || o->api == API_POOL) r = api.StreamCreate(&lane->stream, CU_STREAM_NON_BLOCKING);
    if (r == 0 && o->api == API_POOL) {
        CUmemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = 1;
        props.location.type = 1;
        props.location.id = w->dev;
        r = api.MemPoolCreate(&lane->pool, &props);
    }
    if (r == 0 && o->api == API_VMM) {
        size_t granularity = 0;
        CUmemAllocationProp prop = device_prop(w->dev);
        r = api.MemGetAllocationGranularity(&granularity, &prop, 0);
        if (r == 0 && (granularity == 0 || VMM_SEGMENT % granularity != 0)) r = 1;
        lane->va_size = round_up(o->chunk, VMM_SEGMENT) * (size_t)o->count;
        if (r == 0) r = api.MemAddressReserve(&lane->va_base, lane->va_size, 0, 0, 0);
    }
    if (r != 0) say("setup fail %s %s\n", api_names[o->api], cu_error_name(r));
    return r;
}

static void lane_close(struct worker *w, struct lane *lane) {
    if (lane->stream) api.StreamSynchronize(lane->stream);
    if (lane->pool) api.MemPoolDestroy(lane->pool);
    if (lane->stream) api.StreamDestroy(lane->stream);
    if (lane->va_base) api.MemAddressFree(lane->va_base, lane->va_size);
    (void)w;
}

/* Allocates --count chunks (stopping at the first failure unless --keep-going); returns the
 * live records so the caller can hold them. */
static struct record *allocate_all(struct worker *w, struct lane *lane, int *live) {
    const struct options *o = w->opt;
    struct record *recs = calloc((size_t)o->count + 1, sizeof *recs);
    *live = 0;
    for (int i = 0; i < o->count; i++) {
        if (i > 0 && o->sleep_between_ms > 0) sleep_ms(o->sleep_between_ms);
        struct record rec;
        CUresult r = alloc_one(w, lane, &rec);
        if (r == 0) {
            w->res.ok++;
            w->res.bytes += rec.bytes;
            say("alloc ok %llu\n", rec.bytes);
            if (o->free_each) {
                CUresult f = free_one(w, lane, &rec);
                if (f != 0) { say("free fail %llu %s\n", rec.bytes, cu_error_name(f)); w->res.other_failure = 1; }
            } else {
                recs[(*live)++] = rec;
            }
        } else {
            w->res.failed++;
            if (!w->res.first_error) w->res.first_error = r;
            say("alloc fail %llu %s\n", rec.bytes, cu_error_name(r));
            if (!o->keep_going) break;
        }
    }
    return recs;
}

static void free_all(struct worker *w, struct lane *lane, struct record *recs, int live) {
    for (int i = 0; i < live; i++) {
        CUresult f = free_one(w, lane, &recs[i]);
        if (f != 0) { say("free fail %llu %s\n", recs[i].bytes, cu_error_name(f)); w->res.other_failure = 1; }
    }
    free(recs);
}

/* A worker thread: allocates, waits for the hold, frees. */
struct thread_job {
    struct worker w;
    pthread_barrier_t *hold_start, *hold_end;
};

static void *thread_main(void *arg) {
    struct thread_job *job = arg;
    struct worker *w = &job->w;
    struct lane lane;
    int live = 0;
    struct record *recs = NULL;
    CUresult r = api.CtxSetCurrent(w->ctx);
    int usable = r == 0 && lane_open(w, &lane) == 0;
    if (r != 0) say("setup fail cuCtxSetCurrent %s\n", cu_error_name(r));
    if (!usable) w->res.other_failure = 1;
    if (usable) recs = allocate_all(w, &lane, &live);
    pthread_barrier_wait(job->hold_start);
    pthread_barrier_wait(job->hold_end);
    if (usable) {
        free_all(w, &lane, recs, live);
        lane_close(w, &lane);
    }
    return NULL;
}

static void merge(struct results *into, const struct results *from) {
    into->ok += from->ok;
    into->failed += from->failed;
    into->bytes += from->bytes;
    if (!into->first_error) into->first_error = from->first_error;
    into->other_failure |= from->other_failure;
}

/* Runs the threads of one process (parent or forked child) with its context current. */
static struct results run_process(const struct options *o, CUcontext ctx, CUdevice dev) {
    int n = o->threads > 0 ? o->threads : 1;
    struct thread_job *jobs = calloc((size_t)n, sizeof *jobs);
    pthread_t *tids = calloc((size_t)n, sizeof *tids);
    pthread_barrier_t start, end;
    pthread_barrier_init(&start, NULL, (unsigned)n + 1);
    pthread_barrier_init(&end, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        jobs[i].w.opt = o;
        jobs[i].w.api = &api;
        jobs[i].w.ctx = ctx;
        jobs[i].w.dev = dev;
        jobs[i].hold_start = &start;
        jobs[i].hold_end = &end;
        pthread_create(&tids[i], NULL, thread_main, &jobs[i]);
    }
    pthread_barrier_wait(&start);
    /* Every worker has finished allocating (the barrier orders their results before this). */
    int complete = 1;
    for (int i = 0; i < n; i++) complete = complete && jobs[i].w.res.failed == 0;
    int hold = o->hold_ms + (complete ? o->hold_if_complete_ms : 0);
    if (hold > 0) {
        say("holding %d\n", hold);
        sleep_ms(hold);
    }
    pthread_barrier_wait(&end);
    struct results total = {0};
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
        merge(&total, &jobs[i].w.res);
    }
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&end);
    free(jobs);
    free(tids);
    return total;
}

/* Opens /dev/null until the descriptor table is full; returns how many were opened. */
static int exhaust_descriptors(void) {
    int opened = 0;
    while (open("/dev/null", O_RDONLY) >= 0) opened++;
    return opened;
}

/* cuInit, the device, and its primary context made current (what cudart does first). */
static CUresult open_device(const struct options *o, CUdevice *dev, CUcontext *ctx, int *init_failed) {
    CUresult r = api.Init(0);
    *init_failed = r != 0;
    if (r != 0) return r;
    if (o->exhaust_fds) {
        int opened = exhaust_descriptors();
        say("exhausted %d descriptors (%s)\n", opened, strerror(errno));
    }
    r = api.DeviceGet(dev, o->device);
    if (r == 0) r = api.DevicePrimaryCtxRetain(ctx, *dev);
    if (r == 0) r = api.CtxSetCurrent(*ctx);
    return r;
}

static int exit_code(const struct results *res) {
    if (res->failed > 0) return res->first_error == CUDA_ERROR_OUT_OF_MEMORY ? 2 : 1;
    return res->other_failure ? 1 : 0;
}

static void usage(void) {
    fprintf(stderr, "usage: client [--device N] [--api default|pitch|managed|async|pool|vmm|array|array3d|mipmapped|ctx] "
                    "[--chunk SIZE] [--count N] [--hold-ms MS] [--hold-if-complete-ms MS] [--threads N] [--fork] [--free-each] [--keep-going] "
                    "[--sleep-between-ms MS] [--exhaust-fds] [--check-abi]\n");
    exit(1);
}

int main(int argc, char **argv) {
    struct options o = {0, API_DEFAULT, 64ull << 20, 1, 0, 0, 1, 0, 0, 0, 0, 0};
    int check_abi = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--device") && v) { o.device = atoi(v); i++; }
        else if (!strcmp(a, "--api") && v) {
            int found = 0;
            for (size_t k = 0; k < sizeof api_names / sizeof *api_names; k++)
                if (!strcmp(v, api_names[k])) { o.api = (enum api_kind)k; found = 1; }
            if (!found) usage();
            i++;
        }
        else if (!strcmp(a, "--chunk") && v) { o.chunk = parse_size(v); i++; }
        else if (!strcmp(a, "--count") && v) { o.count = atoi(v); i++; }
        else if (!strcmp(a, "--hold-ms") && v) { o.hold_ms = atoi(v); i++; }
        else if (!strcmp(a, "--hold-if-complete-ms") && v) { o.hold_if_complete_ms = atoi(v); i++; }
        else if (!strcmp(a, "--threads") && v) { o.threads = atoi(v); i++; }
        else if (!strcmp(a, "--sleep-between-ms") && v) { o.sleep_between_ms = atoi(v); i++; }
        else if (!strcmp(a, "--fork")) o.fork = 1;
        else if (!strcmp(a, "--free-each")) o.free_each = 1;
        else if (!strcmp(a, "--keep-going")) o.keep_going = 1;
        else if (!strcmp(a, "--exhaust-fds")) o.exhaust_fds = 1;
        else if (!strcmp(a, "--check-abi")) check_abi = 1;
        else usage();
    }
    if (o.chunk == 0 || o.count < 0) usage();
    if (bind_driver(&api) != 0) return 1;
    if (check_abi) return binding_check_abi();

    CUdevice dev = 0;
    CUcontext ctx = NULL;
    int init_failed = 0;
    struct results total = {0};
    CUresult r = open_device(&o, &dev, &ctx, &init_failed);
    if (r != 0) {
        say("%s fail %s\n", init_failed ? "init" : "setup", cu_error_name(r));
        say("summary path=%s ok=0 failed=0 bytes=0 first_error=%s\n", client_path, cu_error_name(r));
        return init_failed ? 3 : 1;
    }

    int pipefd[2] = {-1, -1};
    pid_t child = -1;
    if (o.fork) {
        fflush(stdout);
        if (pipe(pipefd) != 0) { perror("pipe"); return 1; }
        child = fork();
        if (child < 0) { perror("fork"); return 1; }
        if (child == 0) { /* the child starts its own CUDA session and reports its results */
            close(pipefd[0]);
            struct results res = {0};
            CUdevice cdev = 0;
            CUcontext cctx = NULL;
            int cinit = 0;
            CUresult cr = open_device(&o, &cdev, &cctx, &cinit);
            if (cr != 0) {
                say("child %s fail %s\n", cinit ? "init" : "setup", cu_error_name(cr));
                res.other_failure = 1;
                if (cinit) res.first_error = cr;
            } else {
                res = run_process(&o, cctx, cdev);
                api.DevicePrimaryCtxRelease(cdev);
            }
            if (write(pipefd[1], &res, sizeof res) != (ssize_t)sizeof res) _exit(1);
            _exit(0);
        }
        close(pipefd[1]);
    }

    total = run_process(&o, ctx, dev);

    if (child > 0) {
        struct results from_child;
        memset(&from_child, 0, sizeof from_child);
        ssize_t got = read(pipefd[0], &from_child, sizeof from_child);
        if (got != (ssize_t)sizeof from_child) from_child.other_failure = 1;
        int status = 0;
        waitpid(child, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) from_child.other_failure = 1;
        merge(&total, &from_child);
    }
    r = api.DevicePrimaryCtxRelease(dev);
    if (r != 0) { say("teardown fail %s\n", cu_error_name(r)); total.other_failure = 1; }
    say("summary path=%s ok=%d failed=%d bytes=%llu first_error=%s\n", client_path, total.ok, total.failed, total.bytes,
        total.first_error ? cu_error_name(total.first_error) : "none");
    return exit_code(&total);
}
