/*
 * Shared by evalctl's named fakes of the NVIDIA driver libraries (fake_nvml.c builds a
 * fake libnvidia-ml.so.1, fake_cuda.c a fake libcuda.so.1): one GPU, "NVIDIA H100 80GB
 * HBM3", that exists only for the tests. The fake CUDA records its kernel launches and
 * the device memory it handed out in the file named by EVALCTL_FAKE_GPU_STATE; the fake
 * NVML reads that file, so its readings follow the load (power, utilisation, memory,
 * throttle reasons) the way a real GPU's would. EVALCTL_FAKE_NVML_MIG=1 turns MIG mode on.
 * Built by the tests (tests/harness/fake_gpu.rs); never installed, never shipped.
 */
#ifndef EVALCTL_FAKE_GPU_STATE_H
#define EVALCTL_FAKE_GPU_STATE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FAKE_GPU_NAME "NVIDIA H100 80GB HBM3"
/* The GPU's and its one MIG instance's UUIDs, as NVML writes them, and as 16 bytes. */
#define FAKE_GPU_UUID "GPU-fa4efa4e-0000-4000-8000-000000000001"
#define FAKE_MIG_UUID "MIG-fa4efa4e-0000-4000-8000-0000000000aa"
static const unsigned char FAKE_GPU_UUID_BYTES[16] = {0xfa, 0x4e, 0xfa, 0x4e, 0, 0, 0x40, 0,
                                                      0x80, 0, 0, 0, 0, 0, 0, 0x01};
static const unsigned char FAKE_MIG_UUID_BYTES[16] = {0xfa, 0x4e, 0xfa, 0x4e, 0, 0, 0x40, 0,
                                                      0x80, 0, 0, 0, 0, 0, 0, 0xaa};
/* 81559 MiB, as an H100 80GB reports. */
#define FAKE_GPU_MEMORY_BYTES (81559ULL * 1024 * 1024)
/* Memory in use with nothing running (the driver's own), bytes. */
#define FAKE_GPU_BASE_USED_BYTES (512ULL * 1024 * 1024)
/* A launch keeps the GPU "loaded" this long. */
#define FAKE_GPU_BUSY_MS 500

static inline double fake_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static inline int fake_mig(void) {
    const char *mig = getenv("EVALCTL_FAKE_NVML_MIG");
    return mig != NULL && strcmp(mig, "1") == 0;
}

/* The last launch (Unix ms) and the bytes allocated, from the state file; zeros without. */
static inline void fake_read_state(double *last_launch_ms, unsigned long long *allocated) {
    *last_launch_ms = 0;
    *allocated = 0;
    const char *path = getenv("EVALCTL_FAKE_GPU_STATE");
    if (path == NULL) return;
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    if (fscanf(f, "%lf %llu", last_launch_ms, allocated) != 2) {
        *last_launch_ms = 0;
        *allocated = 0;
    }
    fclose(f);
}

/* Writes the state whole (a sibling file renamed over it): readers never see half. */
static inline void fake_write_state(double last_launch_ms, unsigned long long allocated) {
    const char *path = getenv("EVALCTL_FAKE_GPU_STATE");
    if (path == NULL) return;
    char partial[4096];
    snprintf(partial, sizeof partial, "%s.%ld.partial", path, (long)getpid());
    FILE *f = fopen(partial, "w");
    if (f == NULL) return;
    fprintf(f, "%.3f %llu\n", last_launch_ms, allocated);
    fclose(f);
    rename(partial, path);
}

static inline int fake_loaded(void) {
    double last;
    unsigned long long allocated;
    fake_read_state(&last, &allocated);
    return last > 0 && fake_now_ms() - last < FAKE_GPU_BUSY_MS;
}

#endif
