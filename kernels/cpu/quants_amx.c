/* AMX tile kernels for batches of activation rows (compiled with the AVX-512 flags plus -mamx-tile
 * -mamx-int8, chosen at run time).
 *
 * A tile kernel takes 16 weight rows at once. For each super-block it rearranges the 16 rows'
 * quants into AMX's B layout (4 bytes of one row per 32-bit column: a dword transpose) once, then,
 * for every group of up to 16 activation rows, lets TDPBSUD/TDPBSSD form exact int32 sums of each
 * activation row with each weight row, in one of two forms:
 *  - per scale group (small batches): one product per group, whose integer scale AVX-512 then
 *    applies across the 16 weight rows; tmm0-3 take four groups' products, tmm4/5 hold activation
 *    rows (A), tmm6/7 quants (B);
 *  - scaled (large batches): the preparation multiplies each quant by its scale and splits the
 *    product into two bytes (split_scaled), so two accumulating products cover the super-block;
 *    tmm0/1 take them, tmm2/3 hold A, tmm4-7 B.
 * AVX-512 then does the super-block's float operations. The integer sums equal the row kernels'
 * and the float operations are the same, in the same order (see quants.c), so every result is
 * bit-identical to the scalar, AVX2 and AVX-512 kernels, and a position's logits do not depend on
 * which kernel or form its batch size picked.
 *
 * The configuration is loaded per call: A and C have nx rows when the batch fits one tile, else
 * 16, with the caller padding the activations to whole tiles.
 *
 * Measured on a 2-vCPU Sapphire Rapids against the AVX-512 row kernels (8960 x 1536, one thread,
 * alternated runs): Q4_K 0.9x at 2 rows, 1.2x at 3, 1.3x at 4; Q6_K, whose 16 scale groups need
 * twice the tile products, 0.9x at 4, 1.2x at 5, 1.3x at 7; hence the batch sizes from which the
 * table offers them. With 2 threads: Q4_K 2.2x and Q6_K 1.3x at 8 rows; in L2 (512 x 1536) Q4_K
 * 3.3x at 16 rows and 4.2x at 64, Q6_K 2x and 3.2x (before the scaled form). A product and its
 * tile store cost about the same for 2 rows as for 16 (a full-tile TDP ~20 ns, a TILESTORED after
 * it ~50 ns on this VM), so small batches pay mostly for the weight rearrangement and the stores.
 * Stacking several scale groups into one product (zero-padded copies of the activations) was
 * tried: no faster overall. bench/results/2026-11-30-cpu-xeon-2c-amx.md has the model-level runs. */
#include <immintrin.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define TILE 16

struct tile_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed));

/* n_c C tiles of `rows` x 16 int32, then two A tiles of `rows` x k_bytes, then B tiles of
 * k_bytes / 4 rows x 64. */
static void configure_tiles(int n_c, int rows, int k_bytes)
{
    struct tile_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < n_c + 2; t++) {
        cfg.rows[t] = (uint8_t)rows;
        cfg.colsb[t] = (uint16_t)(t < n_c ? 64 : k_bytes);
    }
    for (int t = n_c + 2; t < 8; t++) {
        cfg.rows[t] = (uint8_t)(k_bytes / 4);
        cfg.colsb[t] = 64;
    }
    /* not gcc 12's _tile_loadconfig: its asm operand covers 8 bytes of the config, so the stores to
     * the rest can be dropped as dead */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

/* Dword kk (0..7) of the 32 bytes at src + n * stride, for n = 0..15: out[kk] holds row n's dword
 * in 32-bit lane n, which is AMX's B layout for 32 elements of 16 weight rows. */
static ALWAYS_INLINE void transpose_16x8(const uint8_t *src, size_t stride, __m512i out[8])
{
    __m512i r[8], t[8], u[8];
    for (int n = 0; n < 8; n++)
        r[n] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(src + n * stride))),
                                  _mm256_loadu_si256((const __m256i *)(src + (n + 8) * stride)), 1);
    /* each 256-bit half is an 8 x 8 dword transpose: rows 0-7 in the low halves, 8-15 in the high */
    for (int n = 0; n < 8; n += 2) {
        t[n] = _mm512_unpacklo_epi32(r[n], r[n + 1]);
        t[n + 1] = _mm512_unpackhi_epi32(r[n], r[n + 1]);
    }
    for (int g = 0; g < 8; g += 4) {
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    /* u[c] (c < 4) holds dwords c and c + 4 of rows 0-3 (and 8-11), u[c + 4] those of rows 4-7
     * (and 12-15): put the 128-bit pieces in row order */
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int c = 0; c < 4; c++) {
        out[c] = _mm512_permutex2var_epi64(u[c], lo, u[c + 4]);
        out[c + 4] = _mm512_permutex2var_epi64(u[c], hi, u[c + 4]);
    }
}

/* The dword at base + row_offsets[n], n = 0..15: one field of each weight row's block. */
static inline __m512i gather_rows(const uint8_t *base, __m512i row_offsets)
{
    return _mm512_i32gather_epi32(row_offsets, (const void *)base, 1);
}

/* Scaled quants for large batches: the int16 products scale * q of the bytes q (each dword lane n
 * times lane n of sc, int32) split into the signed high and unsigned low bytes, so that
 * scale * q = 256 * hi + lo and one tile product per 64 elements covers every scale group. */
static inline void split_scaled(__m512i q, __m512i sc, __m512i *hi, __m512i *lo)
{
    const __m512i sc16 = _mm512_or_si512(_mm512_and_si512(sc, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32(sc, 16));
    const __m512i even = _mm512_mullo_epi16(_mm512_srai_epi16(_mm512_slli_epi16(q, 8), 8), sc16);
    const __m512i odd = _mm512_mullo_epi16(_mm512_srai_epi16(q, 8), sc16);
    const __m512i low8 = _mm512_set1_epi16(0x00ff), high8 = _mm512_set1_epi16((short)0xff00);
    *lo = _mm512_or_si512(_mm512_and_si512(even, low8), _mm512_slli_epi16(odd, 8));
    *hi = _mm512_or_si512(_mm512_and_si512(_mm512_srai_epi16(even, 8), low8), _mm512_and_si512(odd, high8));
}

/* fp32 of the fp16 in the low (high) 16 bits of each lane */
static inline __m512 fp16_lo(__m512i v)
{
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
}

static inline __m512 fp16_hi(__m512i v)
{
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
}

/* ---------------------------------------------------------------------------------------------- */
/* Q4_K: eight sub-blocks of 32 (TDPBSUD: signed activations, unsigned nibbles)                     */

/* B tiles: 64 rows of 64 bytes, four bytes of weight row n in each row's dword n; scale group g
 * (32 elements of Q4_K, 16 of Q6_K) in rows g * group_bytes / 4 onwards. b[0] holds the quants, or
 * for a large batch the scaled quants' high bytes and b[1] their low bytes (split_scaled). */
#define B_ROWS 64

/* B row `row` from 64 quant bytes: as they are, or scaled by sc and split. */
static ALWAYS_INLINE void store_b_row(uint8_t (*b)[B_ROWS][64], int row, __m512i q, __m512i sc, bool scaled)
{
    if (scaled) {
        __m512i hi, lo;
        split_scaled(q, sc, &hi, &lo);
        _mm512_store_si512((void *)b[0][row], hi);
        _mm512_store_si512((void *)b[1][row], lo);
    } else {
        _mm512_store_si512((void *)b[0][row], q);
    }
}

struct q4_K_block {
    _Alignas(64) uint8_t b[2][B_ROWS][64];
    __m512i sc[8];                    /* sub-block j's scale, lane n = weight row n */
    __m512i min_pairs[4];             /* int16 pairs (min 2p, min 2p+1) */
    __m512 d, dmin;
};

static ALWAYS_INLINE void q4_K_prepare(const uint8_t *blk, size_t w_row_bytes, __m512i row_offsets, bool scaled,
                                       struct q4_K_block *s)
{
    /* the scales and mins of every row, unpacked as q4_K_scale_min does */
    const __m512i six = _mm512_set1_epi32(0x3f3f3f3f), four = _mm512_set1_epi32(0x0f0f0f0f),
                  two = _mm512_set1_epi32(0x03030303), byte = _mm512_set1_epi32(0xff);
    const __m512i dd = gather_rows(blk, row_offsets);
    const __m512i u0 = gather_rows(blk + 4, row_offsets), u1 = gather_rows(blk + 8, row_offsets),
                  u2 = gather_rows(blk + 12, row_offsets);
    const __m512i s_lo = _mm512_and_si512(u0, six), m_lo = _mm512_and_si512(u1, six);
    const __m512i s_hi = _mm512_or_si512(_mm512_and_si512(u2, four),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), two), 4));
    const __m512i m_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), four),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), two), 4));
    for (int j = 0; j < 4; j++) {
        s->sc[j] = _mm512_and_si512(_mm512_srli_epi32(s_lo, 8 * j), byte);
        s->sc[j + 4] = _mm512_and_si512(_mm512_srli_epi32(s_hi, 8 * j), byte);
    }
    /* bytes (2q, 2q+1) of each dword as two int16 */
    const __m512i pairs01 =
        _mm512_broadcast_i32x4(_mm_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1));
    const __m512i pairs23 =
        _mm512_broadcast_i32x4(_mm_setr_epi8(2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15, -1));
    s->min_pairs[0] = _mm512_shuffle_epi8(m_lo, pairs01);
    s->min_pairs[1] = _mm512_shuffle_epi8(m_lo, pairs23);
    s->min_pairs[2] = _mm512_shuffle_epi8(m_hi, pairs01);
    s->min_pairs[3] = _mm512_shuffle_epi8(m_hi, pairs23);
    s->d = fp16_lo(dd);
    s->dmin = fp16_hi(dd);

    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int p = 0; p < 4; p++) {
        __m512i v[8];
        transpose_16x8(blk + offsetof(struct cpu_block_q4_K, qs) + 32 * p, w_row_bytes, v);
        for (int kk = 0; kk < 8; kk++) {
            const __m512i q[2] = {_mm512_and_si512(v[kk], low4), _mm512_and_si512(_mm512_srli_epi16(v[kk], 4), low4)};
            for (int h = 0; h < 2; h++)
                store_b_row(s->b, 16 * p + 8 * h + kk, q[h], s->sc[2 * p + h], scaled);
        }
    }
}

/* acc = (acc + d * sum) - dmin * mins for one activation row and its super-block sums. */
static ALWAYS_INLINE __m512 q4_K_finish(const struct cpu_block_q8_K *xb, const struct q4_K_block *s, __m512i sum,
                                        __m512 acc)
{
    /* min_j * (bsums[2j] + bsums[2j+1]), two sub-blocks per pmaddwd */
    __m512i mins = _mm512_setzero_si512();
    for (int p = 0; p < 4; p++) {
        const uint16_t b0 = (uint16_t)(xb->bsums[4 * p] + xb->bsums[4 * p + 1]);
        const uint16_t b1 = (uint16_t)(xb->bsums[4 * p + 2] + xb->bsums[4 * p + 3]);
        const __m512i bs = _mm512_set1_epi32((int32_t)((uint32_t)b0 | (uint32_t)b1 << 16));
        mins = _mm512_add_epi32(mins, _mm512_madd_epi16(s->min_pairs[p], bs));
    }
    const __m512 xd = _mm512_set1_ps(xb->d);
    const __m512 d = _mm512_mul_ps(s->d, xd), dmin = _mm512_mul_ps(s->dmin, xd);
    return _mm512_sub_ps(_mm512_add_ps(acc, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sum))),
                         _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mins)));
}

/* ---------------------------------------------------------------------------------------------- */
/* Q6_K: sixteen groups of 16 (TDPBSSD: signed activations, six-bit quants minus 32)                */

struct q6_K_block {
    _Alignas(64) uint8_t b[2][B_ROWS][64];
    __m512i sc[16];                   /* group g's scale, lane n = weight row n */
    __m512 d;
};

static ALWAYS_INLINE void q6_K_prepare(const uint8_t *blk, size_t w_row_bytes, __m512i row_offsets, bool scaled,
                                       struct q6_K_block *s)
{
    /* int8 scales: byte b of the dword at scales + 4q is group 4q + b */
    for (int q = 0; q < 4; q++) {
        const __m512i v = gather_rows(blk + offsetof(struct cpu_block_q6_K, scales) + 4 * q, row_offsets);
        for (int b = 0; b < 4; b++)
            s->sc[4 * q + b] = _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * b), 24);
    }
    /* d is the last field: read the dword that ends with it, not one past the block */
    s->d = fp16_hi(gather_rows(blk + offsetof(struct cpu_block_q6_K, d) - 2, row_offsets));

    const __m512i low4 = _mm512_set1_epi8(0x0f), low2 = _mm512_set1_epi8(0x03), m32 = _mm512_set1_epi8(32);
    for (int h = 0; h < 2; h++) {
        /* as in the AVX2 kernel: chunks 4h, 4h+1 from the low nibbles of ql[64h ..) and ql[64h+32 ..),
         * 4h+2, 4h+3 from their high nibbles; bits 4-5 from qh[32h ..) shifted by 0, 2, 4, 6 */
        __m512i ql0[8], ql1[8], qh[8];
        transpose_16x8(blk + offsetof(struct cpu_block_q6_K, ql) + 64 * h, w_row_bytes, ql0);
        transpose_16x8(blk + offsetof(struct cpu_block_q6_K, ql) + 64 * h + 32, w_row_bytes, ql1);
        transpose_16x8(blk + offsetof(struct cpu_block_q6_K, qh) + 32 * h, w_row_bytes, qh);
        for (int kk = 0; kk < 8; kk++) {
            const __m512i q[4] = {
                _mm512_or_si512(_mm512_and_si512(ql0[kk], low4), _mm512_slli_epi16(_mm512_and_si512(qh[kk], low2), 4)),
                _mm512_or_si512(_mm512_and_si512(ql1[kk], low4),
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh[kk], 2), low2), 4)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql0[kk], 4), low4),
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh[kk], 4), low2), 4)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql1[kk], 4), low4),
                                _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh[kk], 6), low2), 4)),
            };
            for (int t = 0; t < 4; t++) {
                const int c = 4 * h + t; /* chunk: groups 2c (kk < 4) and 2c + 1 */
                store_b_row(s->b, 8 * c + kk, _mm512_sub_epi8(q[t], m32), s->sc[2 * c + kk / 4], scaled);
            }
        }
    }
}

/* acc + d * sum for one activation row and its super-block sums. */
static ALWAYS_INLINE __m512 q6_K_finish(const struct cpu_block_q8_K *xb, const struct q6_K_block *s, __m512i sum,
                                        __m512 acc)
{
    return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_mul_ps(s->d, _mm512_set1_ps(xb->d)), _mm512_cvtepi32_ps(sum)));
}

/* ---------------------------------------------------------------------------------------------- */

enum kquant { KQ_Q4_K, KQ_Q6_K };

#define KQ_GROUPS(kind) ((kind) == KQ_Q4_K ? 8 : 16)
#define KQ_GROUP_BYTES(kind) ((kind) == KQ_Q4_K ? 32 : 16)
/* Activation rows from which scaled quants (split_scaled) pay for their longer preparation with
 * 2 tile products and stores per super-block instead of one per scale group (measured, one thread,
 * calls alternated: Q6_K 0.91x the time at 8 rows, 0.78x at 16, 0.51x at 64; Q4_K, which keeps its
 * min term, 1.18x at 8, 1.0x at 16, 0.93x at 32, 0.86x at 64). */
#define KQ_SCALED_MIN_BATCH(kind) ((kind) == KQ_Q4_K ? 32 : 8)

/* c[g] = the products of scale group g: the activation rows' bytes of the group (from qs, x_stride
 * apart) times its B tile; four groups per pass. */
static ALWAYS_INLINE void products(enum kquant kind, const char *qs, size_t x_stride,
                                   const uint8_t (*b)[64], int32_t c[16][TILE][TILE])
{
    const int gb = KQ_GROUP_BYTES(kind);
    /* gcc's tile intrinsics paste the register numbers into asm: literals only */
#define PRODUCT(C, A, B, g)                                                                            \
    do {                                                                                                \
        _tile_loadd(A, qs + (size_t)(g) * gb, (long)x_stride);                                          \
        _tile_loadd(B, b[(g) * gb / 4], 64);                                                            \
        if (kind == KQ_Q4_K)                                                                            \
            _tile_dpbsud(C, A, B);                                                                      \
        else                                                                                            \
            _tile_dpbssd(C, A, B);                                                                      \
    } while (0)
    for (int t = 0; t < KQ_GROUPS(kind); t += 4) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        PRODUCT(0, 4, 6, t);
        PRODUCT(1, 5, 7, t + 1);
        PRODUCT(2, 4, 6, t + 2);
        PRODUCT(3, 5, 7, t + 3);
        _tile_stored(0, c[t], 64);
        _tile_stored(1, c[t + 1], 64);
        _tile_stored(2, c[t + 2], 64);
        _tile_stored(3, c[t + 3], 64);
    }
#undef PRODUCT
}

/* Row r's super-block sum from the per-group products: sum over g of c[g][r] * sc[g]. */
static ALWAYS_INLINE __m512i group_sum(enum kquant kind, int32_t c[16][TILE][TILE], const __m512i *sc, int r)
{
    __m512i sum = _mm512_mullo_epi32(_mm512_load_si512((const void *)c[0][r]), sc[0]);
    for (int g = 1; g < KQ_GROUPS(kind); g++)
        sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(_mm512_load_si512((const void *)c[g][r]), sc[g]));
    return sum;
}

/* c[0] = activations times the scaled quants' high bytes, c[1] times their low bytes, over the whole
 * super-block (four 64-element products each). */
static ALWAYS_INLINE void products_scaled(const char *qs, size_t x_stride, const uint8_t (*b)[B_ROWS][64],
                                          int32_t c[16][TILE][TILE])
{
    _tile_zero(0);
    _tile_zero(1);
    for (int t = 0; t < 4; t += 2) {
        _tile_loadd(2, qs + 64 * t, (long)x_stride);
        _tile_loadd(4, b[0][16 * t], 64);
        _tile_loadd(6, b[1][16 * t], 64);
        _tile_dpbssd(0, 2, 4);
        _tile_dpbsud(1, 2, 6);
        _tile_loadd(3, qs + 64 * (t + 1), (long)x_stride);
        _tile_loadd(5, b[0][16 * (t + 1)], 64);
        _tile_loadd(7, b[1][16 * (t + 1)], 64);
        _tile_dpbssd(0, 3, 5);
        _tile_dpbsud(1, 3, 7);
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
}

static ALWAYS_INLINE void tile_kquant(enum kquant kind, int64_t k, const void *w, size_t w_row_bytes, const void *x,
                                      size_t x_stride, int nx, float *y, size_t y_stride)
{
    const int64_t nb = k / CPU_QK_K;
    const int gb = KQ_GROUP_BYTES(kind);
    const size_t w_block = kind == KQ_Q4_K ? sizeof(struct cpu_block_q4_K) : sizeof(struct cpu_block_q6_K);
    const __m512i row_offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((int)w_row_bytes));
    union {
        struct q4_K_block q4;
        struct q6_K_block q6;
    } s;
    _Alignas(64) int32_t c[16][TILE][TILE];
    _Alignas(64) float acc[CPU_TILE_MAX_BATCH][TILE];
    memset(acc, 0, (size_t)nx * sizeof(acc[0]));
    const bool scaled = nx >= KQ_SCALED_MIN_BATCH(kind);
    if (scaled)
        configure_tiles(2, nx < TILE ? nx : TILE, 64);
    else
        configure_tiles(4, nx < TILE ? nx : TILE, gb);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)i * w_block;
        /* the next super-block of all 16 rows: 16 streams are more than the hardware prefetchers
         * follow (measured: Q4_K at 8 rows ~20% faster from DRAM) */
        if (i + 1 < nb)
            for (int n = 0; n < TILE; n++)
                for (size_t o = 0; o < w_block; o += 64)
                    _mm_prefetch((const char *)blk + w_block + (size_t)n * w_row_bytes + o, _MM_HINT_T0);
        if (kind == KQ_Q4_K)
            q4_K_prepare(blk, w_row_bytes, row_offsets, scaled, &s.q4);
        else
            q6_K_prepare(blk, w_row_bytes, row_offsets, scaled, &s.q6);
        const uint8_t(*b)[B_ROWS][64] = kind == KQ_Q4_K ? s.q4.b : s.q6.b;
        const __m512i *sc = kind == KQ_Q4_K ? s.q4.sc : s.q6.sc;
        for (int r0 = 0; r0 < nx; r0 += TILE) {
            const char *xblk = (const char *)x + (size_t)r0 * x_stride + (size_t)i * sizeof(struct cpu_block_q8_K);
            const char *qs = xblk + offsetof(struct cpu_block_q8_K, qs);
            if (scaled)
                products_scaled(qs, x_stride, b, c);
            else
                products(kind, qs, x_stride, b[0], c);
            const int rows = nx - r0 < TILE ? nx - r0 : TILE;
            for (int r = 0; r < rows; r++) {
                const struct cpu_block_q8_K *xb = (const void *)(xblk + (size_t)r * x_stride);
                const __m512i sum =
                    scaled ? _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512((const void *)c[0][r]), 8),
                                              _mm512_load_si512((const void *)c[1][r]))
                           : group_sum(kind, c, sc, r);
                const __m512 prev = _mm512_load_ps(acc[r0 + r]);
                _mm512_store_ps(acc[r0 + r], kind == KQ_Q4_K ? q4_K_finish(xb, &s.q4, sum, prev)
                                                             : q6_K_finish(xb, &s.q6, sum, prev));
            }
        }
    }
    for (int r = 0; r < nx; r++)
        _mm512_storeu_ps(y + (size_t)r * y_stride, _mm512_load_ps(acc[r]));
}

static void tile_q4_K(int64_t k, const void *w, size_t w_row_bytes, const void *x, size_t x_stride, int nx, float *y,
                      size_t y_stride)
{
    tile_kquant(KQ_Q4_K, k, w, w_row_bytes, x, x_stride, nx, y, y_stride);
}

static void tile_q6_K(int64_t k, const void *w, size_t w_row_bytes, const void *x, size_t x_stride, int nx, float *y,
                      size_t y_stride)
{
    tile_kquant(KQ_Q6_K, k, w, w_row_bytes, x, x_stride, nx, y, y_stride);
}

cpu_tile_fn cpu_amx_tile_kernel(enum spec_dtype wtype, int64_t n)
{
    switch (wtype) {
    case SPEC_Q4_K:
        return n >= 3 ? tile_q4_K : NULL;
    case SPEC_Q6_K:
        return n >= 5 ? tile_q6_K : NULL;
    default:
        return NULL;
    }
}
