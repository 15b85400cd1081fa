/* Backend selection: the one place that knows which backends are built in. */
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/backend_cpu.h"

int kern_backend_create(const char *name, const struct kern_backend_config *cfg, struct kern_backend **out)
{
    if (!name || !out)
        return SPEC_E_INVALID_ARG;
    struct kern_backend_config defaults = {.n_threads = 0};
    if (!cfg)
        cfg = &defaults;
    /* No CUDA backend is built yet: "auto" means the CPU, an explicit "cuda" is refused. */
    if (strcmp(name, "cpu") == 0 || strcmp(name, "auto") == 0)
        return kern_cpu_backend_create(cfg, out);
    if (strcmp(name, "cuda") == 0)
        return SPEC_E_UNSUPPORTED;
    return SPEC_E_INVALID_ARG;
}

void kern_backend_destroy(struct kern_backend *be)
{
    if (be)
        be->ops->destroy(be);
}
