#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "verify/verify.h"

/* Brute-force reference of the documented chain: penalties, full sort, top-k, top-p, min-p on the
 * untempered softmax, then temperature. */
static const float *ref_l;
static int ref_cmp(const void *a, const void *b)
{
    const int x = *(const int *)a, y = *(const int *)b;
    if (ref_l[x] != ref_l[y])
        return ref_l[x] > ref_l[y] ? -1 : 1;
    return x - y;
}

static void reference(const struct verify_params *p, const float *logits, int n, const int32_t *recent,
                      int n_recent, double *out)
{
    float *l = malloc(sizeof(float) * n);
    int *idx = malloc(sizeof(int) * n);
    int *count = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++)
        l[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    for (int i = 0; i < n_recent; i++)
        count[recent[i]]++;
    for (int t = 0; t < n; t++) {
        if (!count[t])
            continue;
        l[t] = l[t] <= 0 ? l[t] * p->repeat_penalty : l[t] / p->repeat_penalty;
        l[t] -= count[t] * p->frequency_penalty + p->presence_penalty;
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (l[i] != -INFINITY)
            idx[m++] = i;
    ref_l = l;
    qsort(idx, m, sizeof(int), ref_cmp);
    memset(out, 0, sizeof(double) * n);
    if (p->temperature == 0) {
        out[idx[0]] = 1;
        goto done;
    }
    const double mx = l[idx[0]];
    if (p->top_k > 0 && p->top_k < m)
        m = p->top_k;
    if (p->top_p < 1) {
        double total = 0, cum = 0;
        for (int i = 0; i < m; i++)
            total += exp(l[idx[i]] - mx);
        int keep = 0;
        while (keep < m) {
            cum += exp(l[idx[keep++]] - mx);
            if (cum >= p->top_p * total)
                break;
        }
        m = keep;
    }
    if (p->min_p > 0) {
        int keep = 1;
        while (keep < m && l[idx[keep]] >= mx + log(p->min_p))
            keep++;
        m = keep;
    }
    double sum = 0;
    for (int i = 0; i < m; i++)
        sum += out[idx[i]] = exp((l[idx[i]] - mx) / p->temperature);
    for (int i = 0; i < m; i++)
        out[idx[i]] /= sum;
done:
    free(l);
    free(idx);
    free(count);
}

static void check_against_reference(const struct verify_params *p, const float *logits, int n,
                                     const int32_t *recent, int n_recent)
{
    struct verify_scratch *s;
    cr_assert_eq(verify_scratch_new(n, &s), SPEC_OK);
    float *probs = malloc(sizeof(float) * n);
    double *want = malloc(sizeof(double) * n);
    cr_assert_eq(verify_process(p, logits, n, recent, n_recent, s, probs), SPEC_OK);
    reference(p, logits, n, recent, n_recent, want);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        cr_assert((probs[i] == 0) == (want[i] == 0), "token %d kept-set mismatch: %g vs %g (T=%g k=%d p=%g minp=%g)",
                  i, probs[i], want[i], p->temperature, p->top_k, p->top_p, p->min_p);
        cr_assert(fabs(probs[i] - want[i]) <= 1e-6 + 1e-5 * want[i], "token %d: %g vs %g", i, probs[i], want[i]);
        sum += probs[i];
    }
    cr_assert(fabs(sum - 1.0) < 1e-5);
    free(probs);
    free(want);
    verify_scratch_free(s);
}

Test(sampler, processed_distribution_matches_bruteforce_chain)
{
    unsigned st = 1;
    const float temps[] = {0.0f, 0.5f, 1.0f, 1.5f};
    const int sizes[] = {7, 64, 3000};
    for (int si = 0; si < 3; si++) {
        const int n = sizes[si];
        float *logits = malloc(sizeof(float) * n);
        for (int trial = 0; trial < 24; trial++) {
            for (int i = 0; i < n; i++)
                logits[i] = (float)(rand_r(&st) % 2000) / 200.0f - 5.0f;
            int32_t recent[6];
            for (int i = 0; i < 6; i++)
                recent[i] = rand_r(&st) % n;
            struct verify_params p = verify_params_default();
            p.temperature = temps[trial % 4];
            p.top_k = (trial / 4) % 3 == 0 ? 0 : 1 + rand_r(&st) % (n < 50 ? n : 50);
            p.top_p = (trial / 2) % 3 == 0 ? 1.0f : 0.3f + (rand_r(&st) % 70) / 100.0f;
            p.min_p = trial % 5 == 0 ? 0.0f : (rand_r(&st) % 30) / 100.0f;
            p.repeat_penalty = trial % 3 == 0 ? 1.0f : 1.3f;
            p.frequency_penalty = trial % 7 == 0 ? 0.2f : 0.0f;
            p.presence_penalty = trial % 6 == 0 ? 0.5f : 0.0f;
            check_against_reference(&p, logits, n, recent, 6);
        }
        free(logits);
    }
}

Test(sampler, top_p_over_flat_large_vocabulary_needs_more_than_the_first_candidates)
{
    /* Nearly flat logits: the nucleus holds thousands of tokens, past the first partial selection. */
    enum { N = 20000 };
    static float logits[N];
    unsigned st = 3;
    for (int i = 0; i < N; i++)
        logits[i] = (float)(rand_r(&st) % 100) / 1000.0f;
    struct verify_params p = verify_params_default();
    p.temperature = 1.0f;
    p.top_p = 0.9f;
    check_against_reference(&p, logits, N, NULL, 0);
}

Test(sampler, greedy_is_one_hot_on_the_lowest_id_among_ties)
{
    const float logits[5] = {1.0f, 3.0f, -2.0f, 3.0f, NAN};
    float probs[5];
    struct verify_scratch *s;
    cr_assert_eq(verify_scratch_new(5, &s), SPEC_OK);
    struct verify_params p = verify_params_default();
    cr_assert_eq(verify_process(&p, logits, 5, NULL, 0, s, probs), SPEC_OK);
    cr_assert_eq(probs[1], 1.0f);
    cr_assert_eq(probs[0] + probs[2] + probs[3] + probs[4], 0.0f);
    int32_t t;
    cr_assert_eq(verify_argmax(logits, 5, &t), SPEC_OK);
    cr_assert_eq(t, 1);
    verify_scratch_free(s);
}

Test(sampler, rows_without_finite_logits_are_a_named_error)
{
    const float logits[3] = {-INFINITY, NAN, -INFINITY};
    float probs[3];
    struct verify_scratch *s;
    cr_assert_eq(verify_scratch_new(3, &s), SPEC_OK);
    struct verify_params p = verify_params_default();
    p.temperature = 1.0f;
    cr_assert_eq(verify_process(&p, logits, 3, NULL, 0, s, probs), SPEC_E_NUMERIC);
    int32_t t;
    cr_assert_eq(verify_argmax(logits, 3, &t), SPEC_E_NUMERIC);
    const float zero[3] = {0, 0, 0};
    cr_assert_eq(verify_sample(zero, 3, 0.5, &t), SPEC_E_NUMERIC);
    verify_scratch_free(s);
}

Test(sampler, invalid_parameters_are_rejected)
{
    struct verify_params p = verify_params_default();
    cr_assert_eq(verify_params_check(&p), SPEC_OK);
    p.temperature = -1.0f;
    cr_assert_eq(verify_params_check(&p), SPEC_E_RANGE);
    p = verify_params_default();
    p.top_p = 0.0f;
    cr_assert_eq(verify_params_check(&p), SPEC_E_RANGE);
    p = verify_params_default();
    p.min_p = NAN;
    cr_assert_eq(verify_params_check(&p), SPEC_E_RANGE);
    p = verify_params_default();
    p.repeat_penalty = 0.0f;
    cr_assert_eq(verify_params_check(&p), SPEC_E_RANGE);
}

Test(sampler, sample_never_returns_a_zero_probability_token)
{
    const float probs[6] = {0.0f, 0.25f, 0.0f, 0.75f, 0.0f, 0.0f};
    for (int i = 0; i <= 1000; i++) {
        int32_t t;
        cr_assert_eq(verify_sample(probs, 6, i / 1000.0 * 0.999999, &t), SPEC_OK);
        cr_assert(t == 1 || t == 3);
    }
    int32_t t;
    cr_assert_eq(verify_sample(probs, 6, 0.2, &t), SPEC_OK);
    cr_assert_eq(t, 1);
    cr_assert_eq(verify_sample(probs, 6, 0.3, &t), SPEC_OK);
    cr_assert_eq(t, 3);
}

Test(sampler, penalties_push_down_recent_tokens)
{
    const float logits[4] = {2.0f, 2.0f, -1.0f, 0.5f};
    const int32_t recent[3] = {0, 0, 2};
    float probs[4];
    struct verify_scratch *s;
    cr_assert_eq(verify_scratch_new(4, &s), SPEC_OK);
    struct verify_params p = verify_params_default();
    p.repeat_penalty = 2.0f;
    cr_assert_eq(verify_process(&p, logits, 4, recent, 3, s, probs), SPEC_OK);
    cr_assert_eq(probs[1], 1.0f, "greedy must move to the unpenalised tie partner");
    p.temperature = 1.0f;
    cr_assert_eq(verify_process(&p, logits, 4, recent, 3, s, probs), SPEC_OK);
    /* token 0: 2/2 = 1; token 2: -1*2 = -2 */
    cr_assert_float_eq(probs[0] / probs[1], expf(1.0f - 2.0f), 1e-5);
    cr_assert_float_eq(probs[2] / probs[3], expf(-2.0f - 0.5f), 1e-5);
    /* the penalty must not leak into the next call */
    cr_assert_eq(verify_process(&p, logits, 4, NULL, 0, s, probs), SPEC_OK);
    cr_assert_float_eq(probs[0], probs[1], 1e-7);
    verify_scratch_free(s);
}
