#include <math.h>

#include "common/err.h"
#include "verify/verify.h"

double verify_accept_prob(const float *p, const float *q, int32_t x)
{
    const double px = p[x], qx = q[x];
    /* A token the draft could not have proposed carries no probability under q, so rejecting it
     * keeps the output distribution intact (and never divides by zero). */
    if (!(qx > 0.0) || !(px > 0.0))
        return 0.0;
    return px >= qx ? 1.0 : px / qx;
}

int verify_residual(const float *p, const float *q, int32_t n_vocab, float *residual)
{
    double mass = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        const float d = p[i] - q[i];
        residual[i] = d > 0.0f ? d : 0.0f;
        mass += residual[i];
    }
    if (!(mass > 0.0) || !isfinite(mass)) {
        /* p == q up to rounding: a rejection then has (almost) zero probability, and p is the
         * distribution it must produce. */
        mass = 0.0;
        for (int32_t i = 0; i < n_vocab; i++) {
            residual[i] = p[i] > 0.0f && isfinite(p[i]) ? p[i] : 0.0f;
            mass += residual[i];
        }
        if (!(mass > 0.0) || !isfinite(mass))
            return SPEC_E_NUMERIC;
    }
    const double inv = 1.0 / mass;
    for (int32_t i = 0; i < n_vocab; i++)
        residual[i] = (float)(residual[i] * inv);
    return SPEC_OK;
}

int verify_round_sampled(const struct verify_round *r, int32_t *out, int *n_out)
{
    if (!r || !r->p || (r->n_draft > 0 && (!r->q || !r->draft)) || !r->scratch || !out || !n_out ||
        r->n_draft < 0 || r->n_vocab <= 0)
        return SPEC_E_INVALID_ARG;
    const size_t v = (size_t)r->n_vocab;
    for (int i = 0; i < r->n_draft; i++) {
        const int32_t x = r->draft[i];
        if (x < 0 || x >= r->n_vocab)
            return SPEC_E_RANGE;
        const float *p = r->p + (size_t)i * v, *q = r->q + (size_t)i * v;
        const uint64_t pos = r->pos0 + (uint64_t)i;
        const double u = verify_uniform(r->seed, r->seq, pos, VERIFY_DRAW_ACCEPT);
        if (u < verify_accept_prob(p, q, x)) {
            out[i] = x;
            continue;
        }
        int rc = verify_residual(p, q, r->n_vocab, r->scratch);
        if (rc)
            return rc;
        rc = verify_sample(r->scratch, r->n_vocab, verify_uniform(r->seed, r->seq, pos, VERIFY_DRAW_SAMPLE),
                           &out[i]);
        if (rc)
            return rc;
        *n_out = i + 1;
        return SPEC_OK;
    }
    const uint64_t pos = r->pos0 + (uint64_t)r->n_draft;
    const int rc = verify_sample(r->p + (size_t)r->n_draft * v, r->n_vocab,
                                 verify_uniform(r->seed, r->seq, pos, VERIFY_DRAW_SAMPLE), &out[r->n_draft]);
    if (rc)
        return rc;
    *n_out = r->n_draft + 1;
    return SPEC_OK;
}

void verify_round_draws(uint64_t seed, uint64_t seq, uint64_t pos0, int n_draft, double *u_accept, double *u_sample)
{
    for (int i = 0; i <= n_draft; i++) {
        if (i < n_draft)
            u_accept[i] = verify_uniform(seed, seq, pos0 + (uint64_t)i, VERIFY_DRAW_ACCEPT);
        u_sample[i] = verify_uniform(seed, seq, pos0 + (uint64_t)i, VERIFY_DRAW_SAMPLE);
    }
}

int verify_round_greedy(const int32_t *draft, int n_draft, const int32_t *target, int32_t *out, int *n_out)
{
    if (n_draft < 0 || !target || !out || !n_out || (n_draft > 0 && !draft))
        return SPEC_E_INVALID_ARG;
    int i = 0;
    while (i < n_draft && draft[i] == target[i]) {
        out[i] = draft[i];
        i++;
    }
    out[i] = target[i];
    *n_out = i + 1;
    return SPEC_OK;
}
