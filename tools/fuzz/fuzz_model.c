/* libFuzzer harness for loading a model from an untrusted GGUF (not built by `make`: it needs clang's
 * -fsanitize=fuzzer). Seed it with small synthetic models (specd-mkmodel), whose mutations reach the
 * hyper-parameter, tokenizer and tensor checks of model_load_gguf():
 *
 *   clang -std=c11 -g -O1 -I. -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -mavx2 -mfma -mf16c \
 *       -mavx512f -mavx512bw -mavx512vl -pthread tools/fuzz/fuzz_model.c common/[a-z]*.c kernels/[a-z]*.c \
 *       kernels/cpu/[a-z]*.c model/[a-z]*.c -lm -o fuzz_model
 *   build/bin/specd-mkmodel -o corpus/a.gguf --layers 1 --dim 32 --heads 2 --kv-heads 1 --ff 64 --vocab 300
 *   ./fuzz_model -max_total_time=60 corpus/
 *
 * (One command line compiles the SIMD files with their ISA flags; the kernels pick an ISA the CPU has.)
 * A file must load or fail with a named error; a loaded model must run a short forward pass, whose
 * logits are then checked to exist (finite or not: random weights may overflow). */
#include <stdlib.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/model.h"

static struct kern_backend *be;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (kern_backend_create("cpu", &(struct kern_backend_config){.n_threads = 1}, &be) != 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gguf *g;
    if (gguf_open_memory(data, size, &g) != 0)
        return 0;
    struct model *m;
    const int rc = model_load_gguf(g, be, &(struct model_config){.max_batch = 4}, &m);
    if (rc == 0) {
        struct model_seq *s;
        const int n_vocab = model_n_vocab(m);
        float *logits = malloc(2 * (size_t)n_vocab * sizeof(float));
        const int32_t tokens[2] = {0, n_vocab - 1};
        if (!logits || model_seq_new(m, 8, &s) != 0)
            abort();
        if (model_forward(m, s, tokens, 2, logits) != 0)
            abort();
        model_seq_free(s);
        free(logits);
        model_free(m);
    } else if (rc == SPEC_E_INVALID_ARG || rc == SPEC_E_IO) {
        abort(); /* the caller's fault or the file's: neither applies to a well-formed call */
    }
    gguf_close(g);
    return 0;
}
