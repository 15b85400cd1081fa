/* specd-generate: greedy generation with one model, streaming the text to stdout and the prompt and
 * decode speeds to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "model/model.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: specd-generate -m MODEL.gguf -p PROMPT [-n N_TOKENS] [--threads N] [--ctx N] [--ids]\n"
               "  greedy continuation of PROMPT; --ids prints token ids instead of text\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Greedy choice; the lowest id wins ties, as llama.cpp's argmax does. */
static int32_t argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

struct args {
    const char *model, *prompt;
    int n_gen, n_threads, n_ctx;
    bool ids;
};

static int parse_args(int argc, char **argv, struct args *a)
{
    *a = (struct args){.n_gen = 64};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(o, "--ids") == 0) {
            a->ids = true;
            continue;
        }
        if (!v)
            return -1;
        char *end = NULL;
        if (strcmp(o, "-m") == 0)
            a->model = v;
        else if (strcmp(o, "-p") == 0)
            a->prompt = v;
        else if (strcmp(o, "-n") == 0)
            a->n_gen = (int)strtol(v, &end, 10);
        else if (strcmp(o, "--threads") == 0 || strcmp(o, "-t") == 0)
            a->n_threads = (int)strtol(v, &end, 10);
        else if (strcmp(o, "--ctx") == 0)
            a->n_ctx = (int)strtol(v, &end, 10);
        else
            return -1;
        if (end && (*end != '\0' || end == v))
            return -1;
        i++;
    }
    return a->model && a->prompt && a->n_gen >= 0 && a->n_gen <= 1 << 20 ? 0 : -1;
}

static int die(const char *what, int err, const char *why)
{
    fprintf(stderr, "specd-generate: %s: %s (%s)%s%s\n", what, spec_strerror(err), spec_errname(err),
            why && why[0] ? ": " : "", why ? why : "");
    return 1;
}

/* Streams one token's text (or id) to stdout. */
static int emit(const struct args *a, struct tok_stream *ts, char *buf, size_t cap, int32_t id)
{
    if (a->ids) {
        printf(" %d", id);
    } else {
        size_t n;
        int err = tok_stream_push(ts, id, buf, cap, &n);
        if (err)
            return err;
        fwrite(buf, 1, n, stdout);
    }
    fflush(stdout);
    return SPEC_OK;
}

int main(int argc, char **argv)
{
    struct args a;
    if (parse_args(argc, argv, &a)) {
        usage(stderr);
        return 2;
    }
    struct kern_backend *be;
    int err = kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = a.n_threads}, &be);
    if (err)
        return die("backend", err, NULL);
    char why[256];
    struct model *m;
    err = model_load_cfg(a.model, be, &(struct model_config){.why = why, .why_cap = sizeof why}, &m);
    if (err) {
        kern_backend_destroy(be);
        return die(a.model, err, why);
    }
    const struct tok *tok = model_tokenizer(m);
    const int n_vocab = model_n_vocab(m);

    size_t plen = strlen(a.prompt), n_prompt;
    int32_t *ids = malloc((plen + 2 + (size_t)a.n_gen) * sizeof(int32_t));
    float *logits = malloc((size_t)n_vocab * sizeof(float));
    size_t cap = tok_stream_max_out(tok);
    char *buf = malloc(cap);
    struct model_seq *s = NULL;
    int rc = 1;
    if (!ids || !logits || !buf) {
        die("setup", SPEC_E_NOMEM, NULL);
        goto out;
    }
    err = tok_encode(tok, a.prompt, plen, true, true, ids, plen + 2, &n_prompt);
    if (err == SPEC_E_RANGE) { /* invalid UTF-8 became U+FFFD, which may take more tokens than bytes */
        int32_t *more = realloc(ids, (n_prompt + (size_t)a.n_gen) * sizeof(int32_t));
        if (!more) {
            die("setup", SPEC_E_NOMEM, NULL);
            goto out;
        }
        ids = more;
        err = tok_encode(tok, a.prompt, plen, true, true, ids, n_prompt, &n_prompt);
    }
    if (err || n_prompt == 0) {
        die("tokenize", err ? err : SPEC_E_INVALID_ARG, n_prompt == 0 ? "empty prompt" : NULL);
        goto out;
    }
    err = model_seq_new(m, a.n_ctx > 0 ? a.n_ctx : (int)n_prompt + a.n_gen, &s);
    if (err) {
        die("sequence", err, NULL);
        goto out;
    }
    if (a.ids) {
        printf("prompt:");
        for (size_t i = 0; i < n_prompt; i++)
            printf(" %d", ids[i]);
        printf("\ngenerated:");
    } else {
        fputs(a.prompt, stdout);
    }
    fflush(stdout);

    double t0 = now_s();
    err = model_forward_last(m, s, ids, (int)n_prompt, logits);
    double t_prompt = now_s() - t0;
    if (err) {
        die("prompt", err, NULL);
        goto out;
    }
    struct tok_stream ts;
    tok_stream_init(&ts, tok, false);
    int n_decoded = 0;
    t0 = now_s();
    for (int i = 0; i < a.n_gen; i++) {
        int32_t id = argmax(logits, n_vocab);
        if (tok_is_eog(tok, id))
            break;
        if ((err = emit(&a, &ts, buf, cap, id)) != 0) {
            die("decode", err, NULL);
            goto out;
        }
        if (i + 1 == a.n_gen)
            break;
        if ((err = model_forward_last(m, s, &id, 1, logits)) != 0) {
            die("forward", err, NULL);
            goto out;
        }
        n_decoded++;
    }
    double t_decode = now_s() - t0;
    if (!a.ids) {
        size_t n;
        if (tok_stream_flush(&ts, buf, cap, &n) == SPEC_OK)
            fwrite(buf, 1, n, stdout);
    }
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s)\n",
            n_prompt, t_prompt, (double)n_prompt / t_prompt, n_decoded, t_decode,
            n_decoded ? (double)n_decoded / t_decode : 0.0);
    rc = 0;
out:
    model_seq_free(s);
    free(buf);
    free(logits);
    free(ids);
    model_free(m);
    kern_backend_destroy(be);
    return rc;
}
