#include "common/err.h"

struct err_entry {
    int code;
    const char *name;
    const char *text;
};

static const struct err_entry err_table[] = {
    {SPEC_OK, "SPEC_OK", "success"},
    {SPEC_E_NOMEM, "SPEC_E_NOMEM", "out of memory"},
    {SPEC_E_IO, "SPEC_E_IO", "I/O error"},
    {SPEC_E_FORMAT, "SPEC_E_FORMAT", "malformed input"},
    {SPEC_E_TRUNCATED, "SPEC_E_TRUNCATED", "input truncated"},
    {SPEC_E_BAD_MAGIC, "SPEC_E_BAD_MAGIC", "bad magic: not a GGUF file"},
    {SPEC_E_VERSION, "SPEC_E_VERSION", "unsupported version"},
    {SPEC_E_UNSUPPORTED, "SPEC_E_UNSUPPORTED", "unsupported feature"},
    {SPEC_E_RANGE, "SPEC_E_RANGE", "value out of range"},
    {SPEC_E_NOT_FOUND, "SPEC_E_NOT_FOUND", "not found"},
    {SPEC_E_TYPE, "SPEC_E_TYPE", "wrong value type"},
    {SPEC_E_SHAPE, "SPEC_E_SHAPE", "tensor shape mismatch"},
    {SPEC_E_INVALID_ARG, "SPEC_E_INVALID_ARG", "invalid argument"},
    {SPEC_E_CONTEXT_FULL, "SPEC_E_CONTEXT_FULL", "context length exceeded"},
    {SPEC_E_DUPLICATE, "SPEC_E_DUPLICATE", "duplicate key or tensor name"},
    {SPEC_E_ALIGNMENT, "SPEC_E_ALIGNMENT", "bad alignment"},
    {SPEC_E_TOKENIZER, "SPEC_E_TOKENIZER", "inconsistent tokenizer data"},
    {SPEC_E_NUMERIC, "SPEC_E_NUMERIC", "no finite probability mass (all -inf or NaN)"},
    {SPEC_E_BUSY, "SPEC_E_BUSY", "no free slot (sequences, clients or queue)"},
    {SPEC_E_CANCELLED, "SPEC_E_CANCELLED", "cancelled before it finished"},
};

static const struct err_entry *err_lookup(int err)
{
    for (unsigned i = 0; i < sizeof err_table / sizeof err_table[0]; i++)
        if (err_table[i].code == err)
            return &err_table[i];
    return 0;
}

const char *spec_strerror(int err)
{
    const struct err_entry *e = err_lookup(err);
    return e ? e->text : "unknown error";
}

const char *spec_errname(int err)
{
    const struct err_entry *e = err_lookup(err);
    return e ? e->name : "SPEC_E_UNKNOWN";
}
