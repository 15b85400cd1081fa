/* libFuzzer harness for what the daemon does with a client's bytes (not built by `make`: it needs
 * clang's -fsanitize=fuzzer):
 *
 *   clang -std=c11 -g -O1 -I. -Iinclude -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *       tools/fuzz/fuzz_ipc.c ipc/reader.c ipc/request.c ipc/encode.c common/err.c verify/sampler.c \
 *       -lmsgpackc -lm -o fuzz_ipc
 *   ./fuzz_ipc -max_total_time=60 corpus/
 *
 * The input is fed to the frame reader in pieces whose sizes come from its first byte (as a socket
 * might deliver it); every whole message is validated as a request and, whatever the verdict, an
 * error reply is encoded. Any input must end in messages or a named reader error, never a crash,
 * and a failed reader must stay failed. */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ipc/ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const size_t piece = 1 + data[0] % 64;
    data++;
    size--;
    struct ipc_reader *r;
    if (ipc_reader_new(4096, &r) != 0)
        abort();
    const struct ipc_limits lim = {.n_vocab = 1000, .n_ctx = 512, .draft_max = 8};
    int failed = 0;
    for (size_t off = 0; off < size && !failed; off += piece) {
        const size_t n = size - off < piece ? size - off : piece;
        if (ipc_reader_feed(r, data + off, n) != 0)
            abort();
        for (;;) {
            const msgpack_object *msg = NULL;
            const int rc = ipc_reader_next(r, &msg);
            if (rc) {
                if (rc != SPEC_E_FORMAT && rc != SPEC_E_RANGE)
                    abort();
                if (ipc_reader_error(r)[0] == '\0')
                    abort(); /* a failure always says why */
                const msgpack_object *again = NULL;
                if (ipc_reader_next(r, &again) != rc)
                    abort(); /* and stays failed */
                failed = 1;
                break;
            }
            if (!msg)
                break;
            struct ipc_request req;
            struct ipc_error err;
            memset(&err, 0, sizeof err);
            const int prc = ipc_parse_request(msg, &lim, &req, &err);
            if (prc == 0) {
                ipc_request_free(&req);
                ipc_error_set(&err, IPC_INTERNAL, "fuzz");
            } else if (prc != SPEC_E_FORMAT) {
                abort();
            }
            msgpack_sbuffer sb;
            msgpack_sbuffer_init(&sb);
            if (ipc_encode_error(&sb, &err) != 0)
                abort();
            msgpack_sbuffer_destroy(&sb);
        }
    }
    ipc_reader_free(r);
    return 0;
}
