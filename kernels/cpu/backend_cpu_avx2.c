/* AVX2/F16C variants of the CPU backend's attention helpers (see backend_cpu.h). */
#include <immintrin.h>

#include "kernels/cpu/backend_cpu.h"
#include "kernels/cpu/cpu.h"

void cpu_attn_axpy_f16_avx2(int n, float *y, const uint16_t *x, float a)
{
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(va, vx)));
    }
    for (; i < n; i++)
        y[i] = y[i] + a * cpu_fp16_to_fp32(x[i]);
}
