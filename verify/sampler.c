#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "verify/verify.h"

struct verify_scratch {
    int32_t n_vocab;
    float *logits;   /* penalised logits, NaN turned into -inf */
    int32_t *counts; /* occurrences in the penalty window; all zero between calls */
    int32_t *cand;   /* candidate ids, best first once sorted */
};

struct verify_params verify_params_default(void)
{
    return (struct verify_params){
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .frequency_penalty = 0.0f,
        .presence_penalty = 0.0f,
        .seed = 0,
    };
}

struct kern_sampler verify_sampler(const struct verify_params *p)
{
    return (struct kern_sampler){.temperature = p->temperature,
                                 .top_k = p->top_k,
                                 .top_p = p->top_p,
                                 .min_p = p->min_p,
                                 .repeat_penalty = p->repeat_penalty,
                                 .frequency_penalty = p->frequency_penalty,
                                 .presence_penalty = p->presence_penalty};
}

int verify_params_check(const struct verify_params *p)
{
    if (!p)
        return SPEC_E_INVALID_ARG;
    const struct kern_sampler s = verify_sampler(p);
    return kern_sampler_check(&s);
}

int verify_scratch_new(int32_t n_vocab, struct verify_scratch **out)
{
    if (n_vocab <= 0 || !out)
        return SPEC_E_INVALID_ARG;
    struct verify_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return SPEC_E_NOMEM;
    s->n_vocab = n_vocab;
    s->logits = malloc((size_t)n_vocab * sizeof *s->logits);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->logits || !s->counts || !s->cand) {
        verify_scratch_free(s);
        return SPEC_E_NOMEM;
    }
    *out = s;
    return SPEC_OK;
}

void verify_scratch_free(struct verify_scratch *s)
{
    if (!s)
        return;
    free(s->logits);
    free(s->counts);
    free(s->cand);
    free(s);
}

int verify_argmax(const float *logits, int32_t n_vocab, int32_t *token)
{
    int32_t best = -1;
    for (int32_t i = 0; i < n_vocab; i++) {
        const float l = logits[i];
        if (isnan(l) || l == -INFINITY)
            continue;
        if (best < 0 || l > logits[best])
            best = i;
    }
    if (best < 0)
        return SPEC_E_NUMERIC;
    *token = best;
    return SPEC_OK;
}

static bool penalised(const struct verify_params *p)
{
    return p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
}

bool verify_params_raw_greedy(const struct verify_params *p)
{
    return p->temperature == 0.0f && !penalised(p);
}

static void apply_penalties(const struct verify_params *p, struct verify_scratch *s, const int32_t *recent,
                            size_t n_recent)
{
    if (!penalised(p) || !recent)
        return;
    for (size_t i = 0; i < n_recent; i++)
        if (recent[i] >= 0 && recent[i] < s->n_vocab)
            s->counts[recent[i]]++;
    for (size_t i = 0; i < n_recent; i++) {
        const int32_t t = recent[i];
        if (t < 0 || t >= s->n_vocab || s->counts[t] == 0)
            continue;
        float l = s->logits[t];
        l = l <= 0.0f ? l * p->repeat_penalty : l / p->repeat_penalty;
        l -= (float)s->counts[t] * p->frequency_penalty + p->presence_penalty;
        s->logits[t] = l;
        s->counts[t] = 0; /* penalise each token once, and leave the counts zeroed for the next call */
    }
}

/* Order of candidates: larger logit first, lower id on ties (matches greedy's tie rule). */
static bool better(const float *l, int32_t a, int32_t b)
{
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static void heap_sift_down(const float *l, int32_t *h, int32_t n, int32_t i)
{
    for (;;) {
        int32_t worst = i;
        const int32_t a = 2 * i + 1, b = 2 * i + 2;
        if (a < n && better(l, h[worst], h[a]))
            worst = a;
        if (b < n && better(l, h[worst], h[b]))
            worst = b;
        if (worst == i)
            return;
        const int32_t t = h[i];
        h[i] = h[worst];
        h[worst] = t;
        i = worst;
    }
}

/* The k best finite logits into cand, best first; returns how many (fewer when fewer are finite). */
static int32_t select_top(const float *l, int32_t n_vocab, int32_t k, int32_t *cand)
{
    int32_t n = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (l[i] == -INFINITY)
            continue;
        if (n < k) {
            /* keep a min-heap (worst on top) while filling */
            int32_t j = n++;
            cand[j] = i;
            while (j > 0) {
                const int32_t parent = (j - 1) / 2;
                if (!better(l, cand[parent], cand[j]))
                    break;
                const int32_t t = cand[parent];
                cand[parent] = cand[j];
                cand[j] = t;
                j = parent;
            }
        } else if (better(l, i, cand[0])) {
            cand[0] = i;
            heap_sift_down(l, cand, n, 0);
        }
    }
    /* heap sort: repeatedly move the worst to the end, leaving the best first */
    for (int32_t end = n - 1; end > 0; end--) {
        const int32_t t = cand[0];
        cand[0] = cand[end];
        cand[end] = t;
        heap_sift_down(l, cand, end, 0);
    }
    return n;
}

int verify_process(const struct verify_params *p, const float *logits, int32_t n_vocab, const int32_t *recent,
                   size_t n_recent, struct verify_scratch *s, float *probs)
{
    if (!p || !logits || !s || !probs || n_vocab != s->n_vocab)
        return SPEC_E_INVALID_ARG;
    int rc = verify_params_check(p);
    if (rc)
        return rc;

    float *l = s->logits;
    for (int32_t i = 0; i < n_vocab; i++)
        l[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    apply_penalties(p, s, recent, n_recent);

    int32_t best;
    rc = verify_argmax(l, n_vocab, &best);
    if (rc)
        return rc;
    memset(probs, 0, (size_t)n_vocab * sizeof *probs);
    if (p->temperature == 0.0f) {
        probs[best] = 1.0f;
        return SPEC_OK;
    }
    const double max_l = l[best];

    /* Candidate set: all finite ids, or a sorted best-first prefix once a filter needs order. */
    int32_t n_cand = 0;
    bool sorted = false;
    if (p->top_k > 0 && p->top_k < n_vocab) {
        n_cand = select_top(l, n_vocab, p->top_k, s->cand);
        sorted = true;
    }
    if (p->top_p < 1.0f) {
        double total = 0.0;
        if (sorted) {
            for (int32_t i = 0; i < n_cand; i++)
                total += exp(l[s->cand[i]] - max_l);
        } else {
            for (int32_t i = 0; i < n_vocab; i++)
                total += exp(l[i] - max_l);
        }
        /* Without top-k, sort only as many of the best as the nucleus needs: grow k until the mass of
         * the best k reaches top_p (a full sort of a 150k vocabulary per row would dominate a round). */
        for (int32_t k = 256;; k = k > n_vocab / 4 ? n_vocab : k * 4) {
            if (!sorted) {
                n_cand = select_top(l, n_vocab, k < n_vocab ? k : n_vocab, s->cand);
            }
            double cum = 0.0;
            int32_t keep = 0;
            while (keep < n_cand) {
                cum += exp(l[s->cand[keep]] - max_l);
                keep++;
                if (cum >= (double)p->top_p * total)
                    break;
            }
            if (cum >= (double)p->top_p * total || sorted || k >= n_vocab) {
                n_cand = keep;
                sorted = true;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        const double threshold = max_l + log((double)p->min_p);
        if (sorted) {
            int32_t keep = 1;
            while (keep < n_cand && l[s->cand[keep]] >= threshold)
                keep++;
            n_cand = keep;
        } else {
            for (int32_t i = 0; i < n_vocab; i++)
                if (l[i] >= threshold)
                    s->cand[n_cand++] = i;
            sorted = true;
        }
    }
    if (!sorted) {
        for (int32_t i = 0; i < n_vocab; i++)
            if (l[i] != -INFINITY)
                s->cand[n_cand++] = i;
    }

    double sum = 0.0;
    const double inv_t = 1.0 / (double)p->temperature;
    for (int32_t i = 0; i < n_cand; i++) {
        const int32_t t = s->cand[i];
        const double e = exp((l[t] - max_l) * inv_t);
        probs[t] = (float)e;
        sum += e;
    }
    const double inv = 1.0 / sum; /* sum >= exp(0) from the best token, which every filter keeps */
    for (int32_t i = 0; i < n_cand; i++)
        probs[s->cand[i]] = (float)(probs[s->cand[i]] * inv);
    return SPEC_OK;
}

void verify_penalty_window(const int32_t *ctx, size_t end, size_t len, const int32_t **w, size_t *n)
{
    const size_t start = end > len ? end - len : 0;
    *w = ctx + start;
    *n = end - start;
}

int verify_sample(const float *probs, int32_t n_vocab, double u, int32_t *token)
{
    double total = 0.0;
    int32_t last = -1;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (probs[i] > 0.0f && isfinite(probs[i])) {
            total += probs[i];
            last = i;
        }
    }
    if (last < 0)
        return SPEC_E_NUMERIC;
    const double target = u * total;
    double cum = 0.0;
    for (int32_t i = 0; i < last; i++) {
        if (!(probs[i] > 0.0f && isfinite(probs[i])))
            continue;
        cum += probs[i];
        if (cum > target) {
            *token = i;
            return SPEC_OK;
        }
    }
    *token = last; /* rounding can leave the cumulative sum a hair short of u * total */
    return SPEC_OK;
}
