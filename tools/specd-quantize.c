/* specd-quantize: re-encode a GGUF model's matrices as another type, like llama-quantize (see
 * model_convert() in model/model.h). `make models` uses it to make the F32 references of the real
 * models. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "model/model.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: specd-quantize IN.gguf OUT.gguf TYPE\n"
               "  TYPE: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q8_0 Q4_K Q6_K\n"
               "  Every tensor of two or more dimensions whose rows fit TYPE's blocks is dequantised and\n"
               "  re-encoded; norms, biases and all metadata are copied; general.file_type is updated.\n"
               "  Q4_K and Q6_K use a simple encoder, less accurate than llama-quantize's.\n");
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 4) {
        usage(stderr);
        return 2;
    }
    int type = -1;
    for (uint32_t t = 0; t < SPEC_DTYPE_COUNT && type < 0; t++) {
        const struct kern_dtype_info *info = kern_dtype_info(t);
        if (info && strcasecmp(info->name, argv[3]) == 0)
            type = (int)t;
    }
    if (type < 0) {
        fprintf(stderr, "specd-quantize: unknown type %s\n", argv[3]);
        usage(stderr);
        return 2;
    }
    char why[512];
    int err = model_convert(argv[1], argv[2], (enum spec_dtype)type, why, sizeof why);
    if (err) {
        fprintf(stderr, "specd-quantize: %s (%s): %s\n", spec_strerror(err), spec_errname(err), why);
        return 1;
    }
    return 0;
}
