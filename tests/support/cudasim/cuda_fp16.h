/* cudasim's half type (see cuda_runtime.h beside this): IEEE binary16 through the host compiler's
 * _Float16, whose conversion from float rounds to nearest even as __float2half_rn does. */
#ifndef SPECD_CUDASIM_CUDA_FP16_H
#define SPECD_CUDASIM_CUDA_FP16_H

#include <stdint.h>
#include <string.h>

struct __half {
    uint16_t bits;
};

static inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
static inline unsigned short __half_as_ushort(__half h) { return h.bits; }

static inline float __half2float(__half h)
{
    _Float16 f;
    memcpy(&f, &h.bits, sizeof f);
    return (float)f;
}

static inline __half __float2half_rn(float f)
{
    const _Float16 h = (_Float16)f;
    __half out;
    memcpy(&out.bits, &h, sizeof out.bits);
    return out;
}

#endif
