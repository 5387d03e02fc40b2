/* A container image's own preload library (as jemalloc or tcmalloc would be): says once on
 * stderr that it was loaded, so tests/container_podman.rs can tell that the image's LD_PRELOAD
 * still applies next to the guard. */
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void say_loaded(void) {
    static const char line[] = "image preload: loaded\n";
    ssize_t ignored = write(2, line, strlen(line));
    (void)ignored;
}
