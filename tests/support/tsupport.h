/* Helpers shared by the test suites (linked into every test binary). */
#ifndef SPECD_TESTS_SUPPORT_TSUPPORT_H
#define SPECD_TESTS_SUPPORT_TSUPPORT_H

#include <stddef.h>

#include "model/model.h"

/* A synthetic model living in memory. */
struct mem_model {
    void *buf;
    size_t size;
    struct gguf *g;
    struct model *m;
};

/* Parse and load a GGUF buffer (ownership of buf passes to mm) with cfg (its why/why_cap receive the
 * reason of a failure); on failure mm holds no model and the error is returned. */
int tsupport_try_load(void *buf, size_t size, struct kern_backend *be, struct model_config cfg, struct mem_model *mm);
/* Write and load a synthetic model with cfg; asserts success. */
struct mem_model tsupport_load_synth(const struct model_synth_config *c, struct kern_backend *be,
                                     struct model_config cfg);
void tsupport_mem_model_free(struct mem_model *mm);

/* A backend's settings from the environment: steps recorded as graphs when SPECD_TEST_GRAPHS is 1,
 * quantised matmuls on tensor cores when SPECD_TEST_TENSOR_CORES is 1, prefills through cuBLAS when
 * SPECD_TEST_BLAS_PREFILL is 1 (all CUDA only). */
struct kern_backend_config tsupport_backend_config(int n_threads);

/* The backend a model-level suite runs on: the one SPECD_TEST_DEVICE names (cpu, cuda), else the CPU,
 * with tsupport_backend_config's settings; asserts that it can be made (a named device that is
 * missing fails the suite, never skips it). */
struct kern_backend *tsupport_backend(int n_threads);

#endif
