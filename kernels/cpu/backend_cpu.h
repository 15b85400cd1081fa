/* The CPU backend (the reference implementation of kernels/backend.h), reached through
 * kern_backend_create("cpu"), and the attention helpers it picks per instruction set. */
#ifndef SPECD_KERNELS_CPU_BACKEND_CPU_H
#define SPECD_KERNELS_CPU_BACKEND_CPU_H

#include <stdint.h>

#include "kernels/backend.h"

int kern_cpu_backend_create(const struct kern_backend_config *cfg, struct kern_backend **out);

/* y[i] += a * x[i] over an F16 row: attention's weighted sum of V. Both variants give the same bits
 * (a multiply then an add, never fused). */
typedef void (*cpu_attn_axpy_fn)(int n, float *y, const uint16_t *x, float a);
void cpu_attn_axpy_f16(int n, float *y, const uint16_t *x, float a);
void cpu_attn_axpy_f16_avx2(int n, float *y, const uint16_t *x, float a);

#endif
