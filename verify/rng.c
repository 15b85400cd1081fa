#include "verify/verify.h"

/* Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so any draw can be computed
 * independently from its coordinates on any thread or device. */
static void philox_round(uint32_t c[4], const uint32_t k[2])
{
    const uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
    const uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    const uint32_t n0 = hi1 ^ c[1] ^ k[0];
    const uint32_t n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

double verify_uniform(uint64_t seed, uint64_t seq, uint64_t pos, enum verify_draw draw)
{
    uint32_t k[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    /* seq's top two bits share a word with the draw id: sequences stay distinct below 2^62. */
    uint32_t c[4] = {(uint32_t)pos, (uint32_t)(pos >> 32), (uint32_t)seq,
                     ((uint32_t)(seq >> 32) << 2) | ((uint32_t)draw & 3u)};
    for (int r = 0; r < 10; r++) {
        philox_round(c, k);
        k[0] += 0x9E3779B9u;
        k[1] += 0xBB67AE85u;
    }
    const uint64_t bits = ((uint64_t)c[0] << 21) ^ (c[1] >> 11);
    return (double)(bits & ((1ull << 53) - 1)) * 0x1.0p-53;
}
