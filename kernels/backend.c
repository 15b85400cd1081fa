/* Backend selection: the one place that knows which backends are built in. */
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/backend_cpu.h"
#include "kernels/profile.h"
#ifdef SPEC_HAVE_CUDA
#include "kernels/cuda/backend_cuda.h"
#endif

static int create(const char *name, const struct kern_backend_config *cfg, struct kern_backend **out)
{
    if (strcmp(name, "cpu") == 0)
        return kern_cpu_backend_create(cfg, out);
    if (strcmp(name, "cuda") != 0 && strcmp(name, "auto") != 0)
        return SPEC_E_INVALID_ARG;
    /* The CUDA backend exists when the library was built with nvcc; it refuses without a device. */
#ifdef SPEC_HAVE_CUDA
    const int err = kern_cuda_backend_create(cfg, out);
#else
    const int err = SPEC_E_UNSUPPORTED;
#endif
    if (err == SPEC_OK || strcmp(name, "cuda") == 0)
        return err;
    return kern_cpu_backend_create(cfg, out); /* "auto" without a usable GPU */
}

int kern_backend_create(const char *name, const struct kern_backend_config *cfg, struct kern_backend **out)
{
    if (!name || !out)
        return SPEC_E_INVALID_ARG;
    const struct kern_backend_config defaults = {.n_threads = 0};
    if (!cfg)
        cfg = &defaults;
    struct kern_backend *be;
    int err = create(name, cfg, &be);
    if (err)
        return err;
    if (cfg->profile && (err = kern_profile_wrap(be, &be))) {
        be->ops->destroy(be);
        return err;
    }
    *out = be;
    return SPEC_OK;
}

void kern_backend_destroy(struct kern_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

void kern_backend_describe(const struct kern_backend *be, const struct kern_backend_config *cfg, char *buf,
                           size_t cap)
{
    const bool cuda = strcmp(be->ops->name, "cuda") == 0; /* the settings are the CUDA backend's */
    char mem[48] = "";
    if (cuda && cfg->device_bytes)
        snprintf(mem, sizeof mem, ", at most %zu MiB of GPU memory", cfg->device_bytes >> 20);
    snprintf(buf, cap, "%s%s%s%s%s", be->ops->name, cuda && cfg->graphs ? ", steps as graphs" : "",
             cuda && cfg->tensor_cores ? ", quantised matmuls on tensor cores" : "",
             cuda && cfg->blas_prefill ? ", prefill through cuBLAS" : "", mem);
}

bool kern_backend_config_cuda_only(const struct kern_backend_config *cfg)
{
    return cfg->graphs || cfg->tensor_cores || cfg->blas_prefill || cfg->device_bytes;
}
