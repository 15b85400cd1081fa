/* The argument checks every backend runs first: one call with several faults gets the same code on
 * every backend, in the documented order (INVALID_ARG, then UNSUPPORTED, then RANGE). The tensors
 * here are descriptors only; a check never touches their data. */
#include <criterion/criterion.h>
#include <math.h>

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

Test(check, sampling_rows_report_shape_before_settings_before_range)
{
    struct kern_tensor lg = f32(8, 2), out = f32(8, 3), narrow = f32(4, 3), h = f16(8, 2);
    const struct kern_sampler ok = {.temperature = 0.7f, .top_p = 1.0f, .repeat_penalty = 1.0f},
                              nan_t = {.temperature = NAN, .top_p = 1.0f, .repeat_penalty = 1.0f},
                              no_p = {.temperature = 0.7f, .top_p = 0.0f, .repeat_penalty = 1.0f};
    const int32_t window[2] = {1, 900}; /* out of the vocabulary: ignored, not refused */
    struct kern_sample_row r = {.s = &ok, .row = 1, .out = &out, .out_row = 2, .recent = window, .n_recent = 2};
    cr_assert_eq(kern_sample_process_check(&lg, &r, 1), SPEC_OK);
    cr_assert_eq(kern_sample_process_check(&lg, &r, 0), SPEC_OK, "no rows");
    cr_assert_eq(kern_sample_process_check(&h, &r, 1), SPEC_E_INVALID_ARG, "F16 logits");
    struct kern_sample_row bad = r;
    bad.out = &narrow;
    cr_assert_eq(kern_sample_process_check(&lg, &bad, 1), SPEC_E_INVALID_ARG, "output narrower than the logits");
    struct kern_sample_row two[2] = {r, r};
    struct kern_tensor wider = f32(9, 3);
    two[1].out = &wider;
    cr_assert_eq(kern_sample_process_check(&lg, two, 2), SPEC_E_INVALID_ARG, "outputs of two widths");
    two[0].out = &wider;
    cr_assert_eq(kern_sample_process_check(&lg, two, 2), SPEC_OK, "outputs wider than the logits");
    bad = r, bad.recent = NULL;
    cr_assert_eq(kern_sample_process_check(&lg, &bad, 1), SPEC_E_INVALID_ARG, "a window without tokens");
    bad = r, bad.s = &nan_t, bad.row = 9;
    cr_assert_eq(kern_sample_process_check(&lg, &bad, 1), SPEC_E_RANGE, "NaN temperature");
    bad.s = &no_p;
    cr_assert_eq(kern_sample_process_check(&lg, &bad, 1), SPEC_E_RANGE, "top_p 0");
    bad = r, bad.out_row = 3;
    cr_assert_eq(kern_sample_process_check(&lg, &bad, 1), SPEC_E_RANGE, "output row past the tensor");
    bad = r, bad.row = -1;
    cr_assert_eq(kern_sample_process_check(&lg, &bad, 1), SPEC_E_RANGE, "logits row before the tensor");
}

Test(check, rounds_report_shape_before_range)
{
    struct kern_tensor p = f32(8, 4), q = f32(8, 3), wide = f32(9, 4);
    const int32_t draft[3] = {1, 7, 2}, outside[3] = {1, 8, 2};
    const double u[4] = {0.1, 0.2, 0.3, 0.4};
    struct kern_choose j = {.p = &p, .q = &q, .draft = draft, .n_draft = 3, .u_accept = u, .u_sample = u};
    cr_assert_eq(kern_sample_choose_check(&j, 1), SPEC_OK);
    struct kern_choose bad = j;
    bad.q = &wide;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_E_INVALID_ARG, "q wider than p");
    bad = j, bad.u_accept = NULL;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_E_INVALID_ARG, "no accept uniforms");
    bad = j, bad.n_draft = -1;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_E_INVALID_ARG, "negative draft count");
    struct kern_choose two[2] = {j, j};
    two[1].p = &wide, two[1].q = NULL;
    cr_assert_eq(kern_sample_choose_check(two, 2), SPEC_E_INVALID_ARG, "rounds over vocabularies of two widths");
    bad = j, bad.p_row = 1;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_E_RANGE, "p rows past the tensor");
    bad = j, bad.q_row = 1;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_E_RANGE, "q rows past the tensor");
    bad = j, bad.draft = outside;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_E_RANGE, "a draft token outside the vocabulary");
    bad = j, bad.q = NULL, bad.n_draft = 0, bad.draft = NULL, bad.u_accept = NULL;
    cr_assert_eq(kern_sample_choose_check(&bad, 1), SPEC_OK, "a plain draw needs no drafts");
}

Test(check, matmuls_refuse_mixed_types_overlaps_and_a_lone_swiglu)
{
    static char wa[64], wb[64], ya[64], yb[64], xa[64];
    struct kern_tensor x = f32(8, 2), w0 = {.type = SPEC_Q8_0, .ne0 = 8, .ne1 = 4, .row_bytes = 9, .data = wa},
                       w1 = w0, w16 = f16(8, 4), y0 = f32(4, 2), y1 = f32(4, 2), y3 = f32(3, 2);
    x.data = xa, w1.data = wb, y0.data = ya, y1.data = yb;
    const struct kern_matmul two[2] = {{&w0, NULL, &y0}, {&w1, NULL, &y1}};
    cr_assert_eq(kern_matmuls_check(&x, two, 2, KERN_MATMULS_PLAIN), SPEC_OK);
    cr_assert_eq(kern_matmuls_check(&x, two, 2, KERN_MATMULS_SWIGLU), SPEC_OK);
    cr_assert_eq(kern_matmuls_check(&x, two, 1, KERN_MATMULS_SWIGLU), SPEC_E_INVALID_ARG, "swiglu of one product");
    cr_assert_eq(kern_matmuls_check(&x, two, 0, KERN_MATMULS_PLAIN), SPEC_E_INVALID_ARG, "no product");
    cr_assert_eq(kern_matmuls_check(&x, two, 2, (enum kern_matmuls_then)7), SPEC_E_INVALID_ARG, "unknown epilogue");
    const struct kern_matmul mixed[2] = {{&w0, NULL, &y0}, {&w16, NULL, &y1}};
    cr_assert_eq(kern_matmuls_check(&x, mixed, 2, KERN_MATMULS_PLAIN), SPEC_E_INVALID_ARG, "two weight types");
    const struct kern_matmul same_out[2] = {{&w0, NULL, &y0}, {&w1, NULL, &y0}};
    cr_assert_eq(kern_matmuls_check(&x, same_out, 2, KERN_MATMULS_PLAIN), SPEC_E_INVALID_ARG, "one output twice");
    struct kern_tensor y_on_x = y0;
    y_on_x.data = xa + 4;
    const struct kern_matmul onto_x[1] = {{&w0, NULL, &y_on_x}};
    cr_assert_eq(kern_matmuls_check(&x, onto_x, 1, KERN_MATMULS_PLAIN), SPEC_E_INVALID_ARG, "an output over x");
    static float row[2][12]; /* q | k | v of two rows: disjoint columns of one stride */
    struct kern_tensor q = f32(4, 2), k = f32(4, 2), v = f32(4, 2);
    q.row_bytes = k.row_bytes = v.row_bytes = sizeof row[0];
    q.data = &row[0][0], k.data = &row[0][4], v.data = &row[0][8];
    struct kern_matmul views[3] = {{&w0, NULL, &q}, {&w1, NULL, &k}, {&w0, NULL, &v}};
    cr_assert_eq(kern_matmuls_check(&x, views, 3, KERN_MATMULS_PLAIN), SPEC_OK, "q, k and v as column views");
    struct kern_tensor k_wide = k;
    k_wide.data = &row[0][2];
    views[1].y = &k_wide;
    cr_assert_eq(kern_matmuls_check(&x, views, 3, KERN_MATMULS_PLAIN), SPEC_E_INVALID_ARG, "views sharing columns");
    /* x right after the last row of a column view, inside that row's stride: apart */
    static float buf[40];
    struct kern_tensor col = f32(4, 2), after = f32(8, 2);
    col.row_bytes = 12 * sizeof(float), col.data = &buf[4], after.data = &buf[20];
    const struct kern_matmul into_col[1] = {{&w0, NULL, &col}};
    cr_assert_eq(kern_matmuls_check(&after, into_col, 1, KERN_MATMULS_PLAIN), SPEC_OK,
                 "an input just past an output view's last element");
    w1.ne1 = 3, y3.data = yb;
    const struct kern_matmul shapes[2] = {{&w0, NULL, &y0}, {&w1, NULL, &y3}};
    cr_assert_eq(kern_matmuls_check(&x, shapes, 2, KERN_MATMULS_PLAIN), SPEC_OK);
    cr_assert_eq(kern_matmuls_check(&x, shapes, 2, KERN_MATMULS_SWIGLU), SPEC_E_INVALID_ARG,
                 "swiglu of two shapes");
}
