#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "common/err.h"
#include "verify/verify.h"

enum { V = 8 };

/* A random distribution with some exact zeros, like a filtered (top-k/top-p) row. */
static void random_dist(unsigned *state, float *d, int n, int n_zero)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        d[i] = (float)(rand_r(state) % 1000 + 1);
        sum += d[i];
    }
    for (int z = 0; z < n_zero; z++) {
        const int i = rand_r(state) % n;
        sum -= d[i];
        d[i] = 0.0f;
    }
    if (sum <= 0.0) {
        d[0] = 1.0f;
        sum = 1.0;
    }
    for (int i = 0; i < n; i++)
        d[i] = (float)(d[i] / sum);
}

/* P(first output = y) = q(y) a(y) + (1 - sum_x q(x) a(x)) residual(y), computed with the very
 * functions the round uses; it must equal p(y) for any p and q. */
static void analytic_first_token(const float *p, const float *q, double *out)
{
    float residual[V];
    cr_assert_eq(verify_residual(p, q, V, residual), SPEC_OK);
    double accepted = 0.0;
    for (int x = 0; x < V; x++)
        accepted += q[x] * verify_accept_prob(p, q, x);
    for (int y = 0; y < V; y++)
        out[y] = q[y] * verify_accept_prob(p, q, y) + (1.0 - accepted) * residual[y];
}

Test(verify, analytic_output_distribution_equals_target_for_random_p_and_q)
{
    unsigned st = 12345;
    for (int trial = 0; trial < 500; trial++) {
        float p[V], q[V];
        random_dist(&st, p, V, trial % 4);
        random_dist(&st, q, V, (trial / 4) % 4);
        double out[V];
        analytic_first_token(p, q, out);
        for (int y = 0; y < V; y++)
            cr_assert(fabs(out[y] - p[y]) < 1e-6, "trial %d token %d: %f vs p=%f", trial, y, out[y], p[y]);
    }
}

Test(verify, analytic_output_equals_target_when_draft_is_one_hot)
{
    /* The n-gram proposer's q is one-hot on its guess. */
    float p[V] = {0.1f, 0.2f, 0.05f, 0.05f, 0.3f, 0.1f, 0.1f, 0.1f};
    for (int guess = 0; guess < V; guess++) {
        float q[V] = {0};
        q[guess] = 1.0f;
        double out[V];
        analytic_first_token(p, q, out);
        for (int y = 0; y < V; y++)
            cr_assert(fabs(out[y] - p[y]) < 1e-6);
    }
}

Test(verify, residual_falls_back_to_p_when_p_equals_q)
{
    float p[V] = {0.5f, 0.5f, 0, 0, 0, 0, 0, 0}, r[V];
    cr_assert_eq(verify_residual(p, p, V, r), SPEC_OK);
    cr_assert_float_eq(r[0], 0.5f, 1e-7);
    cr_assert_float_eq(r[1], 0.5f, 1e-7);
}

Test(verify, residual_of_empty_rows_is_a_named_error)
{
    float p[V] = {0}, q[V] = {0}, r[V];
    p[3] = NAN;
    cr_assert_eq(verify_residual(p, q, V, r), SPEC_E_NUMERIC);
}

Test(verify, token_with_zero_draft_probability_is_never_accepted)
{
    float p[V] = {0.5f, 0.5f}, q[V] = {0.0f, 1.0f};
    cr_assert_eq(verify_accept_prob(p, q, 0), 0.0);
    cr_assert_eq(verify_accept_prob(p, q, 1), 0.5);
}

/* Chi-square of observed counts against expected probabilities. */
static double chi_square(const int *counts, const float *probs, int n, int total)
{
    double chi = 0.0;
    for (int i = 0; i < n; i++) {
        const double e = probs[i] * total;
        if (e == 0.0) {
            cr_assert_eq(counts[i], 0, "token %d has probability 0 but was produced", i);
            continue;
        }
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

Test(verify, sampled_rounds_reproduce_target_distribution_for_every_output_slot)
{
    /* Two drafted positions: the first output slot always comes from round position 0; when both
     * drafts are accepted the bonus comes from p[2]. Both must follow the target, counted over
     * independent sequences (the counter-based RNG makes each seq an independent stream). */
    unsigned st = 99;
    float p[3 * V], q[2 * V], scratch[V];
    random_dist(&st, p, V, 2);
    random_dist(&st, p + V, V, 1);
    random_dist(&st, p + 2 * V, V, 0);
    random_dist(&st, q, V, 1);
    random_dist(&st, q + V, V, 3);
    int first[V] = {0}, bonus[V] = {0}, n_bonus = 0;
    const int n = 20000;
    for (int s = 0; s < n; s++) {
        int32_t draft[2];
        cr_assert_eq(verify_sample(q, V, verify_uniform(7, (uint64_t)s, 10, VERIFY_DRAW_DRAFT), &draft[0]), SPEC_OK);
        cr_assert_eq(verify_sample(q + V, V, verify_uniform(7, (uint64_t)s, 11, VERIFY_DRAW_DRAFT), &draft[1]),
                     SPEC_OK);
        struct verify_round r = {.p = p, .q = q, .draft = draft, .n_draft = 2, .n_vocab = V, .seed = 7,
                                 .seq = (uint64_t)s, .pos0 = 10, .scratch = scratch};
        int32_t out[3];
        int n_out = 0;
        cr_assert_eq(verify_round_sampled(&r, out, &n_out), SPEC_OK);
        cr_assert(n_out >= 1 && n_out <= 3);
        first[out[0]]++;
        if (n_out == 3) {
            bonus[out[2]]++;
            n_bonus++;
        }
    }
    /* df = 7; 24.32 is the 0.1% critical value */
    cr_assert_lt(chi_square(first, p, V, n), 24.32);
    cr_assert_gt(n_bonus, 1000);
    cr_assert_lt(chi_square(bonus, p + 2 * V, V, n_bonus), 24.32);
}

Test(verify, sampled_round_is_deterministic_for_a_seed)
{
    unsigned st = 5;
    float p[2 * V], q[V], scratch[V];
    random_dist(&st, p, V, 0);
    random_dist(&st, p + V, V, 0);
    random_dist(&st, q, V, 0);
    int32_t draft[1] = {3}, a[2], b[2];
    int na, nb;
    struct verify_round r = {.p = p, .q = q, .draft = draft, .n_draft = 1, .n_vocab = V, .seed = 42, .seq = 1,
                             .pos0 = 0, .scratch = scratch};
    cr_assert_eq(verify_round_sampled(&r, a, &na), SPEC_OK);
    cr_assert_eq(verify_round_sampled(&r, b, &nb), SPEC_OK);
    cr_assert_eq(na, nb);
    for (int i = 0; i < na; i++)
        cr_assert_eq(a[i], b[i]);
}

Test(verify, sampled_round_rejects_out_of_vocabulary_draft_token)
{
    float p[2 * V] = {1}, q[V] = {1}, scratch[V];
    int32_t draft[1] = {V}, out[2];
    int n;
    struct verify_round r = {.p = p, .q = q, .draft = draft, .n_draft = 1, .n_vocab = V, .scratch = scratch};
    cr_assert_eq(verify_round_sampled(&r, out, &n), SPEC_E_RANGE);
}

Test(verify, greedy_round_accepts_matching_prefix_then_takes_target_token)
{
    const int32_t draft[4] = {5, 6, 7, 8};
    const int32_t target[5] = {5, 6, 9, 8, 1};
    int32_t out[5];
    int n;
    cr_assert_eq(verify_round_greedy(draft, 4, target, out, &n), SPEC_OK);
    cr_assert_eq(n, 3);
    cr_assert_eq(out[0], 5);
    cr_assert_eq(out[1], 6);
    cr_assert_eq(out[2], 9);
}

Test(verify, greedy_round_adds_bonus_token_when_all_drafts_match)
{
    const int32_t draft[2] = {1, 2};
    const int32_t target[3] = {1, 2, 3};
    int32_t out[3];
    int n;
    cr_assert_eq(verify_round_greedy(draft, 2, target, out, &n), SPEC_OK);
    cr_assert_eq(n, 3);
    cr_assert_eq(out[2], 3);
}

Test(rng, uniform_is_deterministic_in_range_and_distinct_per_coordinate)
{
    const double a = verify_uniform(1, 2, 3, VERIFY_DRAW_ACCEPT);
    cr_assert_eq(a, verify_uniform(1, 2, 3, VERIFY_DRAW_ACCEPT));
    cr_assert_neq(a, verify_uniform(1, 2, 3, VERIFY_DRAW_SAMPLE));
    cr_assert_neq(a, verify_uniform(1, 2, 4, VERIFY_DRAW_ACCEPT));
    cr_assert_neq(a, verify_uniform(1, 3, 3, VERIFY_DRAW_ACCEPT));
    cr_assert_neq(a, verify_uniform(2, 2, 3, VERIFY_DRAW_ACCEPT));
    int bins[16] = {0};
    const int n = 160000;
    for (int i = 0; i < n; i++) {
        const double u = verify_uniform(9, (uint64_t)i % 7, (uint64_t)i, VERIFY_DRAW_SAMPLE);
        cr_assert(u >= 0.0 && u < 1.0);
        bins[(int)(u * 16)]++;
    }
    double chi = 0.0;
    for (int b = 0; b < 16; b++)
        chi += (bins[b] - n / 16.0) * (bins[b] - n / 16.0) / (n / 16.0);
    cr_assert_lt(chi, 37.7); /* df = 15, 0.1% critical value */
}
