/*
 * evalctl's named fake of libcuda.so.1 (the CUDA driver API), for tests only: the entry
 * points evalctl-gpu-proof's burner calls (agent/gpu-proof/src/burn.rs), for one fake
 * H100. It honours CUDA_VISIBLE_DEVICES as the driver does for one GPU (index 0, its UUID,
 * or its MIG instance's UUID make it visible; anything else hides it), accepts only PTX
 * with the burner's `burn` entry, "runs" each launch for 5 ms, and records launches and
 * allocations for the fake NVML (fake_gpu_state.h).
 */
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include "fake_gpu_state.h"

typedef int CUresult;
enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_NOT_FOUND = 500,
};
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;
typedef unsigned long long CUdeviceptr;
typedef struct {
    char bytes[16];
} CUuuid;

static int initialised = 0;
static int context = 1, module = 2, function = 3;
static unsigned long long allocated = 0;
static CUdeviceptr next_pointer = 0x7f0000000000ULL;
static int pending_launches = 0;
static double last_state_write_ms = 0;

static int visible_count(void) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (visible == NULL) return 1;
    /* The first entry decides, as for the driver with one GPU. */
    char first[128];
    size_t n = strcspn(visible, ",");
    if (n >= sizeof first) return 0;
    memcpy(first, visible, n);
    first[n] = '\0';
    if (strcmp(first, "0") == 0 || strcmp(first, FAKE_GPU_UUID) == 0) return 1;
    if (fake_mig() && strcmp(first, FAKE_MIG_UUID) == 0) return 1;
    return 0;
}

CUresult cuInit(unsigned int flags) {
    (void)flags;
    initialised = 1;
    return CUDA_SUCCESS;
}
CUresult cuDriverGetVersion(int *version) {
    *version = 12040;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case CUDA_SUCCESS: *text = "no error"; break;
    case CUDA_ERROR_NO_DEVICE: *text = "no CUDA-capable device is detected"; break;
    case CUDA_ERROR_INVALID_DEVICE: *text = "invalid device ordinal"; break;
    case CUDA_ERROR_INVALID_PTX: *text = "a PTX JIT compilation failed"; break;
    case CUDA_ERROR_NOT_FOUND: *text = "named symbol not found"; break;
    default: *text = "unknown error"; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult error, const char **text) {
    switch (error) {
    case CUDA_ERROR_NO_DEVICE: *text = "CUDA_ERROR_NO_DEVICE"; break;
    case CUDA_ERROR_INVALID_DEVICE: *text = "CUDA_ERROR_INVALID_DEVICE"; break;
    default: *text = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    *count = visible_count();
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    int count = visible_count();
    if (count == 0) return CUDA_ERROR_NO_DEVICE;
    if (ordinal < 0 || ordinal >= count) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char *name, int length, CUdevice device) {
    (void)device;
    if (length <= (int)strlen(FAKE_GPU_NAME)) return CUDA_ERROR_INVALID_VALUE;
    strcpy(name, FAKE_GPU_NAME);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice device) {
    (void)device;
    memcpy(uuid->bytes, fake_mig() ? FAKE_MIG_UUID_BYTES : FAKE_GPU_UUID_BYTES, 16);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice device) { return cuDeviceGetUuid(uuid, device); }
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device) {
    (void)device;
    *bytes = (size_t)FAKE_GPU_MEMORY_BYTES;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice device) {
    (void)device;
    /* CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16: an H100 SXM has 132. */
    *value = attribute == 16 ? 132 : 0;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device) {
    (void)device;
    *ctx = &context;
    return CUDA_SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext ctx) {
    return ctx == &context ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuModuleLoadData(CUmodule *out, const void *image) {
    if (image == NULL || strstr((const char *)image, ".entry burn(") == NULL)
        return CUDA_ERROR_INVALID_PTX;
    *out = &module;
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(CUfunction *out, CUmodule mod, const char *name) {
    if (mod != &module || strcmp(name, "burn") != 0) return CUDA_ERROR_NOT_FOUND;
    *out = &function;
    return CUDA_SUCCESS;
}
CUresult cuMemAlloc_v2(CUdeviceptr *pointer, size_t bytes) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    *pointer = next_pointer;
    next_pointer += (bytes + 0xfffff) & ~0xfffffULL;
    allocated += bytes;
    fake_write_state(0, allocated);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr pointer, unsigned char value, size_t bytes) {
    (void)pointer;
    (void)value;
    (void)bytes;
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr pointer) {
    (void)pointer;
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
                        CUstream stream, void **params, void **extra) {
    (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz;
    (void)shared; (void)stream; (void)extra;
    if (f != &function || params == NULL) return CUDA_ERROR_INVALID_VALUE;
    pending_launches += 1;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize(void) {
    if (pending_launches > 0) {
        usleep(5000 * pending_launches);
        pending_launches = 0;
        double now = fake_now_ms();
        /* At most every 50 ms: the state file is for the fake NVML's readings. */
        if (now - last_state_write_ms >= 50) {
            fake_write_state(now, allocated);
            last_state_write_ms = now;
        }
    }
    return CUDA_SUCCESS;
}
