/* A management library that cannot answer, for the tests of `vramguard status` and `doctor`:
 * it has every entry point vramguard's client looks up, but `nvmlInit_v2` either never returns
 * (BROKEN_NVML=hang, as NVML can on a wedged GPU) or fails with NVML_ERROR_DRIVER_NOT_LOADED
 * (BROKEN_NVML=fail, the default). Built as a shared library by tests/cli_outside.rs. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef unsigned int nvml_return;
#define NVML_ERROR_DRIVER_NOT_LOADED 9u
#define NVML_ERROR_UNINITIALIZED 1u

nvml_return nvmlInit_v2(void) {
    const char *mode = getenv("BROKEN_NVML");
    if (mode && strcmp(mode, "hang") == 0) {
        for (;;) pause();
    }
    return NVML_ERROR_DRIVER_NOT_LOADED;
}

nvml_return nvmlShutdown(void) { return NVML_ERROR_UNINITIALIZED; }

const char *nvmlErrorString(nvml_return code) {
    return code == NVML_ERROR_DRIVER_NOT_LOADED ? "Driver Not Loaded" : "Uninitialized";
}

nvml_return nvmlDeviceGetCount_v2(unsigned int *count) { (void)count; return NVML_ERROR_UNINITIALIZED; }
nvml_return nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) { (void)index; (void)device; return NVML_ERROR_UNINITIALIZED; }
nvml_return nvmlDeviceGetHandleByUUID(const char *uuid, void **device) { (void)uuid; (void)device; return NVML_ERROR_UNINITIALIZED; }
nvml_return nvmlDeviceGetMemoryInfo(void *device, void *memory) { (void)device; (void)memory; return NVML_ERROR_UNINITIALIZED; }
