/* The profiling wrapper (kern_backend_config.profile, kern_profile_start/stop): it changes no result,
 * counts every op of a forward pass by kind, and times them on the host and on the device (the CUDA
 * backend's marks; make test-cudasim runs that part on the simulator). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tests/support/tsupport.h"

static const struct model_synth_config qwen2 = {.arch = MODEL_ARCH_QWEN2, .wtype = SPEC_Q8_0, .n_layer = 2,
                                                .n_embd = 64, .n_head = 4, .n_head_kv = 2, .n_ff = 96,
                                                .n_vocab = 300, .n_ctx = 64, .seed = 3};
static const int32_t prompt[5] = {1, 17, 250, 3, 99};

static const struct kern_op_profile *find(const struct kern_op_profile *ops, int n, const char *op)
{
    for (int i = 0; i < n; i++)
        if (strcmp(ops[i].op, op) == 0)
            return &ops[i];
    return NULL;
}

static long calls(const struct kern_op_profile *ops, int n, const char *op)
{
    const struct kern_op_profile *p = find(ops, n, op);
    return p ? p->calls : 0;
}

/* `steps` greedy decode steps after the prompt (each at the prompt's end: the caches are cut back
 * after every step, so any number fits), profiled, on a profiled backend; their ids are compared
 * with the same steps on a plain backend of the same kind. */
static void check_profile(const char *device, int steps, bool has_marks)
{
    struct kern_backend *plain = NULL, *prof = NULL;
    int err = kern_backend_create(device, &(struct kern_backend_config){.n_threads = 2}, &plain);
    if (err == SPEC_E_UNSUPPORTED && strcmp(device, "cuda") == 0) {
        const char *req = getenv("SPECD_REQUIRE_CUDA");
        cr_assert(!req || strcmp(req, "1") != 0, "SPECD_REQUIRE_CUDA=1 but the CUDA backend is unavailable");
        fprintf(stderr, "!!! no CUDA device: profiling on CUDA not run\n");
        cr_skip_test("no CUDA device: profiling on CUDA not run");
    }
    cr_assert_eq(err, SPEC_OK);
    cr_assert_eq(kern_backend_create(device, &(struct kern_backend_config){.n_threads = 2, .profile = true}, &prof),
                 SPEC_OK);
    cr_assert_str_eq(prof->ops->name, plain->ops->name, "the wrapper goes by the backend's own name");
    cr_assert_eq(kern_profile_start(plain), SPEC_E_UNSUPPORTED);

    struct mem_model mp = tsupport_load_synth(&qwen2, plain, (struct model_config){0}),
                     mq = tsupport_load_synth(&qwen2, prof, (struct model_config){0});
    struct model_seq *sp = NULL, *sq = NULL;
    cr_assert_eq(model_seq_new(mp.m, 64, &sp), 0);
    cr_assert_eq(model_seq_new(mq.m, 64, &sq), 0);
    cr_assert_eq(model_forward_last(mp.m, sp, prompt, 5, NULL), 0);
    cr_assert_eq(model_forward_last(mq.m, sq, prompt, 5, NULL), 0); /* not counted: before start */

    cr_assert_eq(kern_profile_start(prof), SPEC_OK);
    int32_t tp = prompt[4], tq = prompt[4];
    for (int i = 0; i < steps; i++) {
        int32_t next_p, next_q;
        const struct model_batch_item ip = {.s = sp, .tokens = &tp, .n = 1, .argmax = &next_p},
                                      iq = {.s = sq, .tokens = &tq, .n = 1, .argmax = &next_q};
        cr_assert_eq(model_forward_batch(mp.m, &ip, 1), 0);
        cr_assert_eq(model_forward_batch(mq.m, &iq, 1), 0);
        cr_assert_eq(next_q, next_p, "step %d: profiled %d, plain %d", i, next_q, next_p);
        cr_assert_eq(model_seq_truncate(sp, 5), 0);
        cr_assert_eq(model_seq_truncate(sq, 5), 0);
        tp = next_p, tq = next_q;
    }
    struct kern_op_profile ops[48];
    int n = -1;
    cr_assert_eq(kern_profile_stop(prof, ops, 48, &n), SPEC_OK);

    /* every op of a qwen2 decode step, per layer and once for the output */
    const long L = qwen2.n_layer, s = steps;
    /* matmuls per weight shape (output rows x input width; the tied output is Q8_0 as well) */
    cr_assert_eq(calls(ops, n, "matmuls Q8_0 128x64"), L * s, "wq, wk and wv in one call");
    cr_assert_eq(calls(ops, n, "matmul Q8_0 64x64"), L * s, "wo");
    cr_assert_eq(calls(ops, n, "matmuls Q8_0 192x64"), L * s, "gate and up in one call, with the swiglu");
    cr_assert_eq(calls(ops, n, "matmul Q8_0 64x96"), L * s, "down");
    cr_assert_eq(calls(ops, n, "matmul Q8_0 300x64"), s, "output");
    cr_assert_eq(calls(ops, n, "rms_norm"), (2 * L + 1) * s);
    cr_assert_eq(calls(ops, n, "add_bias"), 0, "the biases of q, k and v are added by their matmuls");
    cr_assert_eq(calls(ops, n, "rope"), L * s, "q and k side by side in one row");
    cr_assert_eq(calls(ops, n, "store_rows"), L * s, "k and v side by side in one cache row");
    cr_assert_eq(calls(ops, n, "attention"), L * s);
    cr_assert_eq(calls(ops, n, "swiglu"), 0);
    cr_assert_eq(calls(ops, n, "add"), 0, "the residual adds are the norms' (the last one the output norm's)");
    cr_assert_eq(calls(ops, n, "get_rows"), s, "the embedding (a step's one row is its output row)");
    cr_assert_eq(calls(ops, n, "argmax"), s, "made in the step, kept on the backend");
    cr_assert_eq(calls(ops, n, "rows_to_host"), s, "then the greedy ids read back, without logits");

    size_t rb, total;
    cr_assert_eq(kern_tensor_bytes(SPEC_Q8_0, qwen2.n_embd, qwen2.n_vocab, &rb, &total), 0);
    const struct kern_op_profile *mm = find(ops, n, "matmul Q8_0 300x64");
    cr_assert_eq(mm->bytes, (double)total * (double)s, "the output matrix's bytes, once a step");
    for (int i = 0; i < n; i++) {
        cr_assert_geq(ops[i].host_ms, 0.0);
        cr_assert_geq(ops[i].device_ms, 0.0);
        if (!has_marks)
            cr_assert_eq(ops[i].device_ms, ops[i].host_ms, "%s: without marks the device's time is the host's",
                         ops[i].op);
    }
    cr_assert_gt(mm->host_ms, 0.0);
    cr_assert_gt(mm->device_ms, 0.0);

    /* a new start begins from zero */
    cr_assert_eq(kern_profile_start(prof), SPEC_OK);
    cr_assert_eq(kern_profile_stop(prof, ops, 48, &n), SPEC_OK);
    cr_assert_eq(n, 0);

    model_seq_free(sp);
    model_seq_free(sq);
    tsupport_mem_model_free(&mp);
    tsupport_mem_model_free(&mq);
    kern_backend_destroy(plain);
    kern_backend_destroy(prof);
}

Test(profile, cpu_ops_are_counted_and_timed_without_changing_results)
{
    check_profile("cpu", 6, false);
}

/* Enough steps that the device intervals are read back in more than one batch (4096 pending). */
Test(profile, cuda_ops_are_timed_between_device_marks)
{
    check_profile("cuda", 150, true);
}

Test(profile, a_plain_backend_has_no_profile)
{
    struct kern_backend *be = NULL;
    cr_assert_eq(kern_backend_create("cpu", NULL, &be), SPEC_OK);
    struct kern_op_profile ops[4];
    int n;
    cr_assert_eq(kern_profile_start(be), SPEC_E_UNSUPPORTED);
    cr_assert_eq(kern_profile_stop(be, ops, 4, &n), SPEC_E_UNSUPPORTED);
    cr_assert_eq(kern_profile_start(NULL), SPEC_E_UNSUPPORTED);
    kern_backend_destroy(be);
}
