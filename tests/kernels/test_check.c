/* The argument checks every backend runs first: one call with several faults gets the same code on
 * every backend, in the documented order (INVALID_ARG, then UNSUPPORTED, then RANGE). The tensors
 * here are descriptors only; a check never touches their data. */
#include <criterion/criterion.h>

#include "common/err.h"
#include "kernels/backend.h"

static char dummy[1];

static struct kern_tensor f32(int64_t ne0, int64_t ne1)
{
    return (struct kern_tensor){.type = SPEC_F32, .ne0 = ne0, .ne1 = ne1, .row_bytes = (size_t)ne0 * 4, .data = dummy};
}

static struct kern_tensor f16(int64_t ne0, int64_t ne1)
{
    return (struct kern_tensor){.type = SPEC_F16, .ne0 = ne0, .ne1 = ne1, .row_bytes = (size_t)ne0 * 2, .data = dummy};
}

Test(check, attention_reports_shape_before_type_before_range)
{
    struct kern_tensor q = f32(8, 4), out = f32(8, 4), k = f16(8, 2), v = f16(8, 2);
    struct kern_attn_params p = {.n_head = 2, .n_head_kv = 2, .head_dim = 4, .pos0 = 0, .scale = 0.5f};
    cr_assert_eq(kern_attention_check(&q, &k, &v, &p, &out), SPEC_E_RANGE, "4 queries, 2 cache rows");
    k.type = SPEC_Q8_0;
    cr_assert_eq(kern_attention_check(&q, &k, &v, &p, &out), SPEC_E_UNSUPPORTED, "a quantised cache, and too few rows");
    p.n_head = 3;
    cr_assert_eq(kern_attention_check(&q, &k, &v, &p, &out), SPEC_E_INVALID_ARG, "all three faults");
    p.n_head = 2;
    k = f16(8, 4);
    v = f16(8, 4);
    cr_assert_eq(kern_attention_check(&q, &k, &v, &p, &out), SPEC_OK);
}

Test(check, activations_must_be_f32_rows_that_32_bit_indices_address)
{
    struct kern_tensor a = f32(16, 2), b = f32(16, 2), out = f32(16, 2);
    cr_assert_eq(kern_eltwise_check(&a, &b, &out), SPEC_OK);
    struct kern_tensor huge = f32(16, (int64_t)INT32_MAX + 1), huge_b = huge, huge_out = huge;
    cr_assert_eq(kern_eltwise_check(&huge, &huge_b, &huge_out), SPEC_E_INVALID_ARG);
    struct kern_tensor odd = f32(16, 2);
    odd.row_bytes = 66; /* rows of whole floats only */
    cr_assert_eq(kern_eltwise_check(&odd, &b, &out), SPEC_E_INVALID_ARG);
    struct kern_tensor half = f16(16, 2);
    cr_assert_eq(kern_eltwise_check(&half, &b, &out), SPEC_E_INVALID_ARG);
    struct kern_tensor wide = f32(17, 2);
    cr_assert_eq(kern_eltwise_check(&wide, &b, &out), SPEC_E_INVALID_ARG);
}

Test(check, store_rows_and_get_rows_report_shape_before_range)
{
    struct kern_tensor src = f32(8, 3), cache = f16(8, 4);
    cr_assert_eq(kern_store_rows_check(&src, &cache, 1), SPEC_OK);
    cr_assert_eq(kern_store_rows_check(&src, &cache, 2), SPEC_E_RANGE, "rows 2..4 of 4");
    struct kern_tensor narrow = f16(4, 4);
    cr_assert_eq(kern_store_rows_check(&src, &narrow, 2), SPEC_E_INVALID_ARG);

    struct kern_tensor table = f16(8, 10), out = f32(8, 2);
    const int32_t ok[2] = {0, 9}, bad[2] = {3, 10};
    cr_assert_eq(kern_get_rows_check(&table, ok, 2, &out), SPEC_OK);
    cr_assert_eq(kern_get_rows_check(&table, bad, 2, &out), SPEC_E_RANGE);
    cr_assert_eq(kern_get_rows_check(&table, bad, 3, &out), SPEC_E_INVALID_ARG, "out has 2 rows");
}

Test(check, norm_rope_and_matmul_refuse_mismatched_shapes)
{
    struct kern_tensor x = f32(8, 2), w = f32(8, 1), y = f32(8, 2);
    struct kern_tensor res_short = f32(8, 1), res_f16 = f16(8, 2);
    cr_assert_eq(kern_rms_norm_check(&x, NULL, &w, 1e-6f, &y), SPEC_OK);
    cr_assert_eq(kern_rms_norm_check(&x, NULL, &w, -1.0f, &y), SPEC_E_INVALID_ARG, "negative eps");
    cr_assert_eq(kern_rms_norm_check(&x, &y, &w, 1e-6f, &y), SPEC_OK, "a residual that is also the output");
    cr_assert_eq(kern_rms_norm_check(&x, &res_short, &w, 1e-6f, &y), SPEC_E_INVALID_ARG, "a residual of 1 row");
    cr_assert_eq(kern_rms_norm_check(&x, &res_f16, &w, 1e-6f, &y), SPEC_E_INVALID_ARG, "an F16 residual");

    const int32_t pos[2] = {0, 1};
    struct kern_rope_params rp = {.mode = KERN_ROPE_NEOX, .n_rot = 4, .freq_base = 10000.0f, .freq_scale = 1.0f};
    cr_assert_eq(kern_rope_check(&x, 2, 4, pos, &rp), SPEC_OK);
    rp.n_rot = 3;
    cr_assert_eq(kern_rope_check(&x, 2, 4, pos, &rp), SPEC_E_INVALID_ARG, "odd n_rot");

    struct kern_tensor wq = {.type = SPEC_Q4_0, .ne0 = 32, .ne1 = 4, .row_bytes = 18, .data = dummy};
    struct kern_tensor xin = f32(32, 3), yout = f32(4, 3), ybad = f32(4, 2);
    struct kern_tensor bias = f32(4, 1), bias2 = f32(4, 2), bias3 = f32(3, 1), bias_h = f16(4, 1);
    cr_assert_eq(kern_matmul_check(&wq, &xin, NULL, &yout), SPEC_OK);
    cr_assert_eq(kern_matmul_check(&wq, &xin, NULL, &ybad), SPEC_E_INVALID_ARG);
    cr_assert_eq(kern_matmul_check(&wq, &xin, &bias, &yout), SPEC_OK);
    cr_assert_eq(kern_matmul_check(&wq, &xin, &bias2, &yout), SPEC_E_INVALID_ARG, "a bias of two rows");
    cr_assert_eq(kern_matmul_check(&wq, &xin, &bias3, &yout), SPEC_E_INVALID_ARG, "a bias of 3 for 4 rows");
    cr_assert_eq(kern_matmul_check(&wq, &xin, &bias_h, &yout), SPEC_E_INVALID_ARG, "an F16 bias");
}

Test(check, argmax_takes_f32_rows_and_a_place_for_the_ids)
{
    struct kern_tensor x = f32(8, 2), h = f16(8, 2);
    int32_t ids[2] = {0};
    cr_assert_eq(kern_argmax_check(&x, ids), SPEC_OK);
    cr_assert_eq(kern_argmax_check(&h, ids), SPEC_E_INVALID_ARG, "F16 rows");
    cr_assert_eq(kern_argmax_check(&x, NULL), SPEC_E_INVALID_ARG, "no ids");
    cr_assert_eq(kern_argmax_check(NULL, ids), SPEC_E_INVALID_ARG, "no tensor");
}
