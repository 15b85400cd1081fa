/* Sampling and speculative verification.
 *
 * The sampler turns a row of logits into the full processed distribution (verification needs the
 * whole distribution, not just a token). Verification implements Leviathan et al. 2023 / Chen et al.
 * 2023: accept draft token x with probability min(1, p(x)/q(x)), at the first rejection draw from
 * normalise(max(0, p - q)), and when every draft token is accepted draw a bonus token from the next p.
 * With p and q processed by the same settings this leaves the output distribution exactly p.
 *
 * Randomness is counter-based: a draw depends only on (seed, sequence, position, purpose), so results
 * do not depend on batching, thread timing or how many other requests share a pass. */
#ifndef SPECD_VERIFY_VERIFY_H
#define SPECD_VERIFY_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

struct verify_params {
    float temperature;       /* 0 = greedy (argmax, lowest id on ties) */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; llama.cpp style (positive logits divided, negative multiplied) */
    float frequency_penalty; /* 0: off; OpenAI style, subtracts count * penalty */
    float presence_penalty;  /* 0: off; subtracts penalty once per token seen */
    uint64_t seed;
};

/* Defaults: greedy, every filter and penalty off. */
struct verify_params verify_params_default(void);
/* SPEC_E_RANGE when a field is out of range or NaN. */
int verify_params_check(const struct verify_params *p);
/* The settings as the backend's sampling ops take them (kern_sampler). */
struct kern_sampler verify_sampler(const struct verify_params *p);
/* Greedy without penalties: every choice is the argmax of the raw logits, which the backend can make
 * itself (model_batch_item.argmax) so that no row of logits reaches the host. */
bool verify_params_raw_greedy(const struct verify_params *p);

/* Purposes of a random draw; each gets an independent stream. */
enum verify_draw {
    VERIFY_DRAW_ACCEPT = 0, /* the accept/reject test of a draft token */
    VERIFY_DRAW_SAMPLE = 1, /* a token drawn from the target (direct, residual or bonus) */
    VERIFY_DRAW_DRAFT = 2,  /* a token drawn from the draft distribution */
};

/* Uniform double in [0, 1) from Philox4x32-10 keyed by seed, counter (seq, pos, draw). */
double verify_uniform(uint64_t seed, uint64_t seq, uint64_t pos, enum verify_draw draw);

/* Reusable working memory for verify_process (sized for one vocabulary). */
struct verify_scratch;
int verify_scratch_new(int32_t n_vocab, struct verify_scratch **out);
void verify_scratch_free(struct verify_scratch *s);

/* Processed distribution of one row: penalties (over `recent`, the tokens already in the sequence
 * window), then top-k, top-p, min-p on the softmax of the penalised logits, then temperature, as
 * llama.cpp's default chain does. probs gets n_vocab entries summing to 1 (zeros outside the kept set);
 * greedy gives a one-hot row. SPEC_E_NUMERIC when no logit is finite. */
int verify_process(const struct verify_params *p, const float *logits, int32_t n_vocab, const int32_t *recent,
                   size_t n_recent, struct verify_scratch *scratch, float *probs);

/* The penalty window for a row predicting position `end`: the last `len` tokens of ctx[0..end). */
void verify_penalty_window(const int32_t *ctx, size_t end, size_t len, const int32_t **w, size_t *n);

/* Token whose cumulative probability first exceeds u * total mass; only tokens with p > 0 are
 * returned. SPEC_E_NUMERIC when the row has no positive finite mass. */
int verify_sample(const float *probs, int32_t n_vocab, double u, int32_t *token);

/* Index of the largest logit, lowest id on ties, NaN ignored. SPEC_E_NUMERIC when none is finite. */
int verify_argmax(const float *logits, int32_t n_vocab, int32_t *token);

/* Probability with which draft token x is accepted: min(1, p(x)/q(x)); 0 when q(x) is 0. */
double verify_accept_prob(const float *p, const float *q, int32_t x);

/* residual = normalise(max(0, p - q)); falls back to p when that has no mass (p == q up to rounding). */
int verify_residual(const float *p, const float *q, int32_t n_vocab, float *residual);

/* One verification round of one sequence. */
struct verify_round {
    const float *p;       /* (n_draft + 1) x n_vocab processed target rows */
    const float *q;       /* n_draft x n_vocab processed draft rows */
    const int32_t *draft; /* n_draft proposed tokens */
    int n_draft;
    int32_t n_vocab;
    uint64_t seed;
    uint64_t seq;
    uint64_t pos0;        /* sequence position of draft[0] */
    float *scratch;       /* n_vocab floats for the residual */
};

/* Writes the accepted prefix plus one corrected or bonus token to out (n_draft + 1 slots):
 * *n_out = accepted + 1. */
int verify_round_sampled(const struct verify_round *r, int32_t *out, int *n_out);

/* The uniforms verify_round_sampled draws for a round of n_draft drafts at pos0, for a round made
 * elsewhere (kern_backend_ops.sample_choose): u_accept[i] tests draft i, u_sample[i] draws the token at
 * position i (n_draft + 1 of them). */
void verify_round_draws(uint64_t seed, uint64_t seq, uint64_t pos0, int n_draft, double *u_accept, double *u_sample);

/* Greedy round from target argmax ids: target[i] is the argmax at draft position i (n_draft + 1 of
 * them). Accepts while draft[i] == target[i]; the token after the accepted prefix is target's. */
int verify_round_greedy(const int32_t *draft, int n_draft, const int32_t *target, int32_t *out, int *n_out);

#endif
