/*
 * evalctl's named fake of libnvidia-ml.so.1 (NVML), for tests only: the entry points the
 * agent's telemetry and evalctl-gpu-proof call, answering for one fake H100 whose readings
 * follow the fake CUDA's load (fake_gpu_state.h). Entry points a real driver has and this
 * fake lacks fail to load, which nvml-wrapper reports as an error for that field, as it
 * would for an old driver.
 */
#include <unistd.h>

#include "fake_gpu_state.h"

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
};

struct fake_device {
    int mig_instance;
};
typedef struct fake_device *nvmlDevice_t;
static struct fake_device gpu = {0};
static struct fake_device mig_instance = {1};

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

static int initialised = 0;
/* The energy counter: advanced at each reading by the power of the state at that time. */
static double energy_mj = 123456789.0;
static double energy_at_ms = 0;

static double power_w(void) { return fake_loaded() ? 420.0 : 68.0; }

static void advance_energy(void) {
    double now = fake_now_ms();
    if (energy_at_ms > 0) energy_mj += power_w() * (now - energy_at_ms);
    energy_at_ms = now;
}

static nvmlReturn_t copy_text(char *out, unsigned int length, const char *text) {
    if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    initialised = 1;
    advance_energy();
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_text(version, length, "550.90.07-fake");
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    *version = 12040;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *count = 1;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpu;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    return copy_text(name, length,
                     device->mig_instance ? "NVIDIA H100 80GB HBM3 MIG 1g.10gb" : FAKE_GPU_NAME);
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    return copy_text(uuid, length, device->mig_instance ? FAKE_MIG_UUID : FAKE_GPU_UUID);
}

static void memory(unsigned long long *total, unsigned long long *free,
                   unsigned long long *used) {
    double last;
    unsigned long long allocated;
    fake_read_state(&last, &allocated);
    *total = FAKE_GPU_MEMORY_BYTES;
    *used = FAKE_GPU_BASE_USED_BYTES + allocated;
    *free = *total - *used;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *m) {
    (void)device;
    memory(&m->total, &m->free, &m->used);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *m) {
    (void)device;
    m->reserved = 0;
    memory(&m->total, &m->free, &m->used);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    (void)device;
    /* As on a real GPU in MIG mode: utilisation is not reported. */
    if (fake_mig()) return NVML_ERROR_NOT_SUPPORTED;
    int loaded = fake_loaded();
    u->gpu = loaded ? 100 : 0;
    u->memory = loaded ? 35 : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *milliwatts) {
    (void)device;
    advance_energy();
    *milliwatts = (unsigned int)(power_w() * 1000.0);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                 unsigned long long *millijoules) {
    (void)device;
    advance_energy();
    *millijoules = (unsigned long long)energy_mj;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *celsius) {
    (void)device;
    (void)sensor;
    *celsius = fake_loaded() ? 62 : 41;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *mhz) {
    (void)device;
    /* NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2. */
    *mhz = type == 2 ? 2619 : (fake_loaded() ? 1755 : 1980);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *reasons) {
    (void)device;
    /* Loaded: held at the software power cap (0x4); idle: gpu_idle (0x1). */
    *reasons = fake_loaded() ? 0x4ULL : 0x1ULL;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, int counter, unsigned int *kb_s) {
    (void)device;
    (void)counter;
    *kb_s = fake_loaded() ? 1200 : 10;
    return NVML_SUCCESS;
}
/* ECC off and no event support, as on many cloud GPUs: the agent leaves those fields out. */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int type, int counter,
                                         unsigned long long *count) {
    (void)device;
    (void)type;
    (void)counter;
    (void)count;
    return NVML_ERROR_NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                              unsigned long long *types) {
    (void)device;
    (void)types;
    return NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                  unsigned int *pending) {
    (void)device;
    *current = *pending = fake_mig() ? 1 : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    (void)device;
    *count = fake_mig() ? 7 : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig) {
    (void)device;
    if (!fake_mig() || index != 0) return NVML_ERROR_NOT_FOUND;
    *mig = &mig_instance;
    return NVML_SUCCESS;
}
