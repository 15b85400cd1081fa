/* The CUDA backend (kernels/backend.h on one GPU), reached through kern_backend_create("cuda") and
 * "auto". Plain C: kernels/backend.c includes it; only the .cu files beside it include CUDA headers. */
#ifndef SPECD_KERNELS_CUDA_BACKEND_CUDA_H
#define SPECD_KERNELS_CUDA_BACKEND_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/backend.h"

/* SPEC_E_UNSUPPORTED when no CUDA device is usable (no driver, no device, or a GPU older than the
 * compute capability the kernels were built for); SPEC_E_NOMEM when the stream cannot be made. */
int kern_cuda_backend_create(const struct kern_backend_config *cfg, struct kern_backend **out);

#ifdef __cplusplus
}
#endif

#endif
