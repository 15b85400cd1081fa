#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "tests/support/tsupport.h"

int tsupport_try_load(void *buf, size_t size, struct kern_backend *be, struct model_config cfg, struct mem_model *mm)
{
    *mm = (struct mem_model){.buf = buf, .size = size};
    cr_assert_eq(gguf_open_memory(buf, size, &mm->g), 0);
    int err = model_load_gguf(mm->g, be, &cfg, &mm->m);
    if (err) {
        gguf_close(mm->g);
        mm->g = NULL;
    }
    return err;
}

struct mem_model tsupport_load_synth(const struct model_synth_config *c, struct kern_backend *be,
                                     struct model_config cfg)
{
    void *buf;
    size_t size;
    int err = model_synth_write_memory(c, &buf, &size);
    cr_assert_eq(err, 0, "synth: %s", spec_errname(err));
    struct mem_model mm;
    char why[200];
    cfg.why = why;
    cfg.why_cap = sizeof why;
    err = tsupport_try_load(buf, size, be, cfg, &mm);
    cr_assert_eq(err, 0, "load: %s: %s", spec_errname(err), why);
    return mm;
}

void tsupport_mem_model_free(struct mem_model *mm)
{
    model_free(mm->m);
    gguf_close(mm->g);
    free(mm->buf);
    *mm = (struct mem_model){0};
}

static bool env_is_1(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "1");
}

struct kern_backend_config tsupport_backend_config(int n_threads)
{
    return (struct kern_backend_config){.n_threads = n_threads,
                                        .graphs = env_is_1("SPECD_TEST_GRAPHS"),
                                        .tensor_cores = env_is_1("SPECD_TEST_TENSOR_CORES"),
                                        .blas_prefill = env_is_1("SPECD_TEST_BLAS_PREFILL")};
}

struct kern_backend *tsupport_backend(int n_threads)
{
    const char *name = getenv("SPECD_TEST_DEVICE");
    name = name && *name ? name : "cpu";
    struct kern_backend *be = NULL;
    const struct kern_backend_config cfg = tsupport_backend_config(n_threads);
    const int err = kern_backend_create(name, &cfg, &be);
    cr_assert_eq(err, SPEC_OK, "SPECD_TEST_DEVICE=%s: no such backend here (%s)", name, spec_errname(err));
    return be;
}
