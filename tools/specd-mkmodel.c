/* specd-mkmodel: write a synthetic llama/qwen2 GGUF (random weights from a seed, synthetic vocabulary). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "model/model.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: specd-mkmodel -o FILE.gguf [--arch llama|qwen2] [--type F32|F16|BF16|Q4_0|Q4_1|Q5_0|Q8_0|Q4_K|Q6_K]\n"
            "                     [--layers N] [--dim N] [--heads N] [--kv-heads N] [--ff N] [--vocab N] [--ctx N]\n"
            "                     [--rot N] [--rope-base F] [--rope-scale F] [--rope-freqs] [--tied] [--tok bpe|spm]\n"
            "                     [--seed N]\n");
}

static int parse_type(const char *s, enum spec_dtype *out)
{
    for (uint32_t t = 0; t < SPEC_DTYPE_COUNT; t++) {
        const struct kern_dtype_info *info = kern_dtype_info(t);
        if (info && info->cpu && strcasecmp(info->name, s) == 0) {
            *out = (enum spec_dtype)t;
            return 0;
        }
    }
    return -1;
}

static int parse_int(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0 || v > 1 << 24)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, float *out)
{
    char *end;
    *out = strtof(s, &end);
    return *s == '\0' || *end != '\0' ? -1 : 0;
}

int main(int argc, char **argv)
{
    struct model_synth_config c = {.arch = MODEL_ARCH_LLAMA, .wtype = SPEC_Q8_0, .n_layer = 2, .n_embd = 64,
                                   .n_head = 4, .n_head_kv = 2, .n_ff = 160, .n_vocab = 512, .n_ctx = 512,
                                   .tok_kind = TOK_KIND_BPE, .seed = 1};
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, used = 1;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--rope-freqs") == 0) {
            c.rope_freqs = true;
            used = 0;
        } else if (strcmp(a, "--tied") == 0) {
            c.tied_output = true;
            used = 0;
        } else if (!v) {
            bad = 1;
        } else if (strcmp(a, "-o") == 0) {
            path = v;
        } else if (strcmp(a, "--arch") == 0) {
            if (strcmp(v, "llama") == 0)
                c.arch = MODEL_ARCH_LLAMA;
            else if (strcmp(v, "qwen2") == 0)
                c.arch = MODEL_ARCH_QWEN2;
            else
                bad = 1;
        } else if (strcmp(a, "--type") == 0) {
            bad = parse_type(v, &c.wtype);
        } else if (strcmp(a, "--tok") == 0) {
            if (strcmp(v, "bpe") == 0)
                c.tok_kind = TOK_KIND_BPE;
            else if (strcmp(v, "spm") == 0)
                c.tok_kind = TOK_KIND_SPM;
            else
                bad = 1;
        } else if (strcmp(a, "--layers") == 0) {
            bad = parse_int(v, &c.n_layer);
        } else if (strcmp(a, "--dim") == 0) {
            bad = parse_int(v, &c.n_embd);
        } else if (strcmp(a, "--heads") == 0) {
            bad = parse_int(v, &c.n_head);
        } else if (strcmp(a, "--kv-heads") == 0) {
            bad = parse_int(v, &c.n_head_kv);
        } else if (strcmp(a, "--ff") == 0) {
            bad = parse_int(v, &c.n_ff);
        } else if (strcmp(a, "--vocab") == 0) {
            bad = parse_int(v, &c.n_vocab);
        } else if (strcmp(a, "--ctx") == 0) {
            bad = parse_int(v, &c.n_ctx);
        } else if (strcmp(a, "--rot") == 0) {
            bad = parse_int(v, &c.n_rot);
        } else if (strcmp(a, "--rope-base") == 0) {
            bad = parse_float(v, &c.rope_freq_base);
        } else if (strcmp(a, "--rope-scale") == 0) {
            bad = parse_float(v, &c.rope_scale);
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            c.seed = strtoull(v, &end, 10);
            bad = *end != '\0';
        } else {
            fprintf(stderr, "specd-mkmodel: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "specd-mkmodel: bad or missing value for %s\n", a);
            usage(stderr);
            return 2;
        }
        i += used;
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    int err = model_synth_write(&c, path);
    if (err) {
        fprintf(stderr, "specd-mkmodel: %s: %s (%s)\n", path, spec_strerror(err), spec_errname(err));
        if (err == SPEC_E_INVALID_ARG)
            fprintf(stderr, "  (dims must divide as a transformer needs: dim by heads, heads by kv-heads, and\n"
                            "   dim, ff and heads*head_dim by the type's block size, e.g. 256 for K-quants;\n"
                            "   vocab %d..%d for bpe)\n",
                    TOK_SYNTH_BPE_MIN_VOCAB, TOK_SYNTH_MAX_VOCAB);
        return 1;
    }
    return 0;
}
