/*
 * A second LD_PRELOAD interposer, written the way other tools write theirs: it wraps
 * cuMemAlloc_v2 and libc's getenv, and finds the next definition of each with
 * dlsym(RTLD_NEXT, ...). Loaded before or after libvramguard.so, it must keep working: no
 * recursion (its RTLD_NEXT lookups must resolve from its own position, not vramguard's), and
 * both libraries see the calls. At exit it reports what it saw on stderr:
 *   second-interposer: cuMemAlloc_v2=<n> getenv=<n>
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int alloc_calls;
static int getenv_calls;
static __thread int inside_alloc;
static __thread int inside_getenv;

static void die(const char *message) {
    (void)!write(2, message, strlen(message));
    abort();
}

typedef int (*alloc_fn)(unsigned long long *, size_t);
typedef char *(*getenv_fn)(const char *);

int cuMemAlloc_v2(unsigned long long *dptr, size_t bytes) {
    if (inside_alloc) die("second-interposer: recursion in cuMemAlloc_v2\n");
    alloc_fn next = (alloc_fn)dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    if (next == NULL || next == cuMemAlloc_v2) die("second-interposer: RTLD_NEXT gave no next cuMemAlloc_v2\n");
    inside_alloc = 1;
    __atomic_add_fetch(&alloc_calls, 1, __ATOMIC_RELAXED);
    int result = next(dptr, bytes);
    inside_alloc = 0;
    return result;
}

char *getenv(const char *name) {
    if (inside_getenv) die("second-interposer: recursion in getenv\n");
    getenv_fn next = (getenv_fn)dlsym(RTLD_NEXT, "getenv");
    if (next == NULL || next == getenv) die("second-interposer: RTLD_NEXT gave no next getenv\n");
    inside_getenv = 1;
    __atomic_add_fetch(&getenv_calls, 1, __ATOMIC_RELAXED);
    char *value = next(name);
    inside_getenv = 0;
    return value;
}

__attribute__((destructor)) static void report(void) {
    char line[128];
    int n = snprintf(line, sizeof line, "second-interposer: cuMemAlloc_v2=%d getenv=%d\n",
                     __atomic_load_n(&alloc_calls, __ATOMIC_RELAXED), __atomic_load_n(&getenv_calls, __ATOMIC_RELAXED));
    if (n > 0) (void)!write(2, line, (size_t)n);
}
