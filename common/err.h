/* Error codes shared by every component: 0 is success, negatives are named errors.
 * Messages for humans come from spec_strerror() at the edges (CLI, logs, protocol). */
#ifndef SPECD_COMMON_ERR_H
#define SPECD_COMMON_ERR_H

enum spec_err {
    SPEC_OK = 0,
    SPEC_E_NOMEM = -1,        /* allocation failed */
    SPEC_E_IO = -2,           /* open/read/write/mmap failed */
    SPEC_E_FORMAT = -3,       /* malformed input (structure does not parse) */
    SPEC_E_TRUNCATED = -4,    /* input ends before the data it declares */
    SPEC_E_BAD_MAGIC = -5,    /* not a GGUF file */
    SPEC_E_VERSION = -6,      /* unsupported file/format version */
    SPEC_E_UNSUPPORTED = -7,  /* valid but not implemented here (tensor type, architecture, tokenizer) */
    SPEC_E_RANGE = -8,        /* a count, length, dimension or offset out of range or overflowing */
    SPEC_E_NOT_FOUND = -9,    /* metadata key or tensor missing */
    SPEC_E_TYPE = -10,        /* metadata value has the wrong type */
    SPEC_E_SHAPE = -11,       /* tensor shape does not match the model's hyper-parameters */
    SPEC_E_INVALID_ARG = -12, /* caller passed an invalid argument */
    SPEC_E_CONTEXT_FULL = -13,/* sequence would exceed the context length */
    SPEC_E_DUPLICATE = -14,   /* duplicate metadata key or tensor name */
    SPEC_E_ALIGNMENT = -15,   /* alignment or offset not aligned as required */
    SPEC_E_TOKENIZER = -16,   /* tokenizer data inconsistent (bad merge, missing byte token...) */
    SPEC_E_NUMERIC = -17,     /* a distribution has no finite mass (all -inf or NaN logits) */
    SPEC_E_BUSY = -18,        /* every slot is taken (sequences, clients, queue) */
    SPEC_E_CANCELLED = -19,   /* the operation was cancelled before it finished */
};

/* Return from the enclosing function with the error of `expr`, if any. */
#define SPEC_TRY(expr)                                                                                       \
    do {                                                                                                     \
        const int spec_try_err_ = (expr);                                                                    \
        if (spec_try_err_)                                                                                   \
            return spec_try_err_;                                                                            \
    } while (0)

/* Stable short description of an error code, never NULL. */
const char *spec_strerror(int err);
/* Stable identifier such as "SPEC_E_TRUNCATED", never NULL. */
const char *spec_errname(int err);

#endif
