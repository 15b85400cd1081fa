/* specd: options, the socket, the models and the engine; then the server until SIGTERM. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "daemon/daemon.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: specd --target T.gguf [--draft D.gguf] [options]\n"
            "Serves speculative generation to local clients over a Unix socket (MessagePack-RPC,\n"
            "docs/protocol.md). Without --draft, drafts come from prompt lookup (n-grams).\n"
            "\n"
            "  --socket PATH        default $XDG_RUNTIME_DIR/specd.sock, else /tmp/specd-$UID.sock;\n"
            "                       ignored under systemd socket activation (LISTEN_FDS)\n"
            "  --socket-mode MODE   octal permissions of the socket file (default 0600)\n"
            "  --allow-uid UID      also accept this peer uid (repeatable; own uid always allowed)\n"
            "  --device D           auto | cpu | cuda (default auto: CUDA if built and present, else cpu)\n"
            "  --cuda-graphs        CUDA: record each model step as a graph and replay it (experimental)\n"
            "  --tensor-cores       CUDA: quantised matmuls on int8 tensor cores (experimental)\n"
            "  --blas-prefill       CUDA: prompts' matmuls through cuBLAS (experimental)\n"
            "  --gpu-memory MIB     CUDA: hold at most this much GPU memory (weights, caches, scratch);\n"
            "                       a request needing more fails with SPEC_E_NOMEM (default: the GPU's)\n"
            "  --threads N          CPU compute threads (default: one per core)\n"
            "  --ctx N              context per request in tokens (default 4096, at most the target's)\n"
            "  --draft-max N        largest draft length per round (default 8, 1..%d)\n"
            "  --draft-min N        smallest adaptive draft length (default 1); 0 lets rounds go undrafted\n"
            "                       when drafting does not pay: faster under load, slower for one client\n"
            "  --draft-vocab N      the draft scores only token ids below N: a cheaper draft step, the\n"
            "                       same output (default: the whole vocabulary)\n"
            "  --max-seqs N         requests generating at once, batched together (default 8, 1..%d)\n"
            "  --max-queue N        generate requests waiting for a batch slot (default 64)\n"
            "  --max-clients N      connections at once (default 64)\n"
            "  --max-pending N      unfinished requests per connection (default 16)\n"
            "  --max-frame BYTES    largest request message (default %u)\n"
            "  --max-output BYTES   unread output per client before its generations are cancelled\n"
            "                       (default 4194304; at 4x the connection is closed)\n"
            "  --drain-timeout S    on SIGTERM/SIGINT, wait this long for requests to finish (default 30)\n"
            "  --log-level L        error | warn | info | debug (default info)\n"
            "  --help, --version\n",
            ENGINE_MAX_DRAFT, ENGINE_MAX_SEQS, IPC_DEFAULT_MAX_FRAME);
}

enum {
    O_TARGET = 256, O_DRAFT, O_SOCKET, O_SOCKET_MODE, O_ALLOW_UID, O_DEVICE, O_CUDA_GRAPHS, O_TENSOR_CORES,
    O_BLAS_PREFILL, O_GPU_MEMORY, O_THREADS,
    O_CTX, O_DRAFT_MAX,
    O_DRAFT_MIN, O_DRAFT_VOCAB, O_MAX_SEQS, O_MAX_QUEUE, O_MAX_CLIENTS, O_MAX_PENDING, O_MAX_FRAME, O_MAX_OUTPUT, O_DRAIN,
    O_LOG_LEVEL, O_HELP, O_VERSION,
};

static const struct option longopts[] = {
    {"target", required_argument, NULL, O_TARGET},
    {"draft", required_argument, NULL, O_DRAFT},
    {"socket", required_argument, NULL, O_SOCKET},
    {"socket-mode", required_argument, NULL, O_SOCKET_MODE},
    {"allow-uid", required_argument, NULL, O_ALLOW_UID},
    {"device", required_argument, NULL, O_DEVICE},
    {"cuda-graphs", no_argument, NULL, O_CUDA_GRAPHS},
    {"tensor-cores", no_argument, NULL, O_TENSOR_CORES},
    {"blas-prefill", no_argument, NULL, O_BLAS_PREFILL},
    {"gpu-memory", required_argument, NULL, O_GPU_MEMORY},
    {"threads", required_argument, NULL, O_THREADS},
    {"ctx", required_argument, NULL, O_CTX},
    {"draft-max", required_argument, NULL, O_DRAFT_MAX},
    {"draft-min", required_argument, NULL, O_DRAFT_MIN},
    {"draft-vocab", required_argument, NULL, O_DRAFT_VOCAB},
    {"max-seqs", required_argument, NULL, O_MAX_SEQS},
    {"max-queue", required_argument, NULL, O_MAX_QUEUE},
    {"max-clients", required_argument, NULL, O_MAX_CLIENTS},
    {"max-pending", required_argument, NULL, O_MAX_PENDING},
    {"max-frame", required_argument, NULL, O_MAX_FRAME},
    {"max-output", required_argument, NULL, O_MAX_OUTPUT},
    {"drain-timeout", required_argument, NULL, O_DRAIN},
    {"log-level", required_argument, NULL, O_LOG_LEVEL},
    {"help", no_argument, NULL, O_HELP},
    {"version", no_argument, NULL, O_VERSION},
    {NULL, 0, NULL, 0},
};

/* An integer option in [lo, hi]. */
static int num(const char *name, const char *v, int base, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    const long long x = strtoll(v, &end, base);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "specd: --%s: '%s' is not an integer in %lld..%lld\n", name, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, struct options *o)
{
    *o = (struct options){.socket_mode = 0600, .device = "auto", .n_ctx = 4096, .draft_max = 8, .draft_min = 1,
                          .max_seqs = 8, .max_clients = 64, .max_queue = 64, .max_pending = 16,
                          .max_frame = IPC_DEFAULT_MAX_FRAME, .max_output = 4u << 20, .drain_timeout = 30};
    const char *socket = NULL;
    int c;
    long long v;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *name = c >= O_TARGET && c <= O_VERSION ? longopts[c - O_TARGET].name : "?";
        int rc = 0;
        switch (c) {
        case O_TARGET: o->target = optarg; break;
        case O_DRAFT: o->draft = optarg; break;
        case O_SOCKET: socket = optarg; break;
        case O_SOCKET_MODE:
            if (!(rc = num(name, optarg, 8, 0, 0777, &v)))
                o->socket_mode = (unsigned)v;
            break;
        case O_ALLOW_UID:
            if (o->n_allow_uid == OPT_MAX_ALLOW_UID) {
                fprintf(stderr, "specd: at most %d --allow-uid\n", OPT_MAX_ALLOW_UID);
                return -1;
            }
            if (!(rc = num(name, optarg, 10, 0, 0xfffffffell, &v)))
                o->allow_uid[o->n_allow_uid++] = (uid_t)v;
            break;
        case O_DEVICE:
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "specd: --device: auto, cpu or cuda\n");
                return -1;
            }
            o->device = optarg;
            break;
        case O_CUDA_GRAPHS: o->cuda_graphs = true; break;
        case O_TENSOR_CORES: o->tensor_cores = true; break;
        case O_BLAS_PREFILL: o->blas_prefill = true; break;
        case O_GPU_MEMORY:
            if (!(rc = num(name, optarg, 10, 1, 1 << 30, &v)))
                o->gpu_memory_mib = (int)v;
            break;
        case O_THREADS:
            if (!(rc = num(name, optarg, 10, 0, 1024, &v)))
                o->threads = (int)v;
            break;
        case O_CTX:
            if (!(rc = num(name, optarg, 10, 16, 1 << 20, &v))) {
                o->n_ctx = (int)v;
                o->ctx_given = true;
            }
            break;
        case O_DRAFT_MAX:
            if (!(rc = num(name, optarg, 10, 1, ENGINE_MAX_DRAFT, &v)))
                o->draft_max = (int)v;
            break;
        case O_DRAFT_MIN:
            if (!(rc = num(name, optarg, 10, 0, ENGINE_MAX_DRAFT, &v)))
                o->draft_min = (int)v;
            break;
        case O_DRAFT_VOCAB:
            if (!(rc = num(name, optarg, 10, 1, INT32_MAX, &v)))
                o->draft_vocab = (int)v;
            break;
        case O_MAX_SEQS:
            if (!(rc = num(name, optarg, 10, 1, ENGINE_MAX_SEQS, &v)))
                o->max_seqs = (int)v;
            break;
        case O_MAX_QUEUE:
            if (!(rc = num(name, optarg, 10, 0, 1 << 16, &v)))
                o->max_queue = (int)v;
            break;
        case O_MAX_CLIENTS:
            if (!(rc = num(name, optarg, 10, 1, 1 << 16, &v)))
                o->max_clients = (int)v;
            break;
        case O_MAX_PENDING:
            if (!(rc = num(name, optarg, 10, 1, 1 << 12, &v)))
                o->max_pending = (int)v;
            break;
        case O_MAX_FRAME:
            if (!(rc = num(name, optarg, 10, 1024, 1ll << 30, &v)))
                o->max_frame = (size_t)v;
            break;
        case O_MAX_OUTPUT:
            if (!(rc = num(name, optarg, 10, 1024, 1ll << 32, &v)))
                o->max_output = (size_t)v;
            break;
        case O_DRAIN:
            if (!(rc = num(name, optarg, 10, 0, 86400, &v)))
                o->drain_timeout = (double)v;
            break;
        case O_LOG_LEVEL: {
            enum dlog_level l;
            if (dlog_parse_level(optarg, &l)) {
                fprintf(stderr, "specd: --log-level: error, warn, info or debug\n");
                return -1;
            }
            dlog_set_level(l);
            break;
        }
        case O_HELP: usage(stdout); exit(0);
        case O_VERSION: printf("specd %s (protocol %d)\n", SPECD_VERSION, IPC_PROTOCOL_VERSION); exit(0);
        default: return -1;
        }
        if (rc)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "specd: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->target) {
        fprintf(stderr, "specd: --target is required\n");
        return -1;
    }
    if (o->draft_min > o->draft_max) {
        fprintf(stderr, "specd: --draft-min %d is above --draft-max %d\n", o->draft_min, o->draft_max);
        return -1;
    }
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    const int n = socket ? snprintf(o->socket_path, sizeof o->socket_path, "%s", socket)
                  : xdg && *xdg ? snprintf(o->socket_path, sizeof o->socket_path, "%s/specd.sock", xdg)
                                : snprintf(o->socket_path, sizeof o->socket_path, "/tmp/specd-%u.sock",
                                           (unsigned)getuid());
    if (n < 0 || (size_t)n >= sizeof o->socket_path) {
        fprintf(stderr, "specd: socket path longer than %zu bytes\n", sizeof o->socket_path - 1);
        return -1;
    }
    return 0;
}

static struct kern_backend_config backend_config(const struct options *o)
{
    return (struct kern_backend_config){.n_threads = o->threads, .graphs = o->cuda_graphs,
                                        .tensor_cores = o->tensor_cores, .blas_prefill = o->blas_prefill,
                                        .device_bytes = (size_t)o->gpu_memory_mib << 20};
}

static int create_backend(const struct options *o, struct kern_backend **be, const char **name)
{
    const struct kern_backend_config cfg = backend_config(o);
    int rc;
    if (!strcmp(o->device, "auto")) {
        rc = kern_backend_create("cuda", &cfg, be);
        if (rc == SPEC_OK) {
            *name = "cuda";
            return SPEC_OK;
        }
        dlog(DLOG_INFO, "device auto: no usable CUDA backend (%s); using the CPU", spec_errname(rc));
    }
    *name = !strcmp(o->device, "cuda") ? "cuda" : "cpu";
    rc = kern_backend_create(*name, &cfg, be);
    if (rc)
        dlog(DLOG_ERROR, "device %s: %s (%s)", *name, spec_strerror(rc), spec_errname(rc));
    else if (!strcmp(*name, "cpu") && kern_backend_config_cuda_only(&cfg))
        dlog(DLOG_WARN, "--cuda-graphs, --tensor-cores, --blas-prefill and --gpu-memory do nothing on the CPU");
    return rc;
}

static int load(const char *path, struct kern_backend *be, int n_logits, struct model **m)
{
    char why[256] = "";
    const struct model_config cfg = {.why = why, .why_cap = sizeof why, .n_logits = n_logits};
    const int rc = model_load_cfg(path, be, &cfg, m);
    if (rc)
        dlog(DLOG_ERROR, "%s: %s (%s)%s%s", path, spec_strerror(rc), spec_errname(rc), why[0] ? ": " : "", why);
    return rc;
}

int main(int argc, char **argv)
{
    struct options opt;
    if (parse_args(argc, argv, &opt)) {
        usage(stderr);
        return 2;
    }
    /* A peer that closes mid-write is an EPIPE for the connection, not a reason to die. */
    signal(SIGPIPE, SIG_IGN);

    int fd = -1;
    ino_t ino = 0;
    if (sock_activated(&fd))
        return 1;
    const bool activated = fd >= 0;
    if (activated)
        dlog(DLOG_INFO, "listening on the socket systemd passed (--socket ignored)");
    else if (sock_listen(opt.socket_path, opt.socket_mode, &fd, &ino))
        return 1;
    else
        dlog(DLOG_INFO, "listening on %s (mode %04o)", opt.socket_path, opt.socket_mode);

    struct kern_backend *be = NULL;
    struct server_models m = {0};
    int rc = create_backend(&opt, &be, &m.backend);
    if (!rc)
        rc = load(opt.target, be, 0, &m.target);
    if (!rc && opt.draft)
        rc = load(opt.draft, be, opt.draft_vocab, &m.draft);
    if (!rc) {
        const int n_ctx_train = model_n_ctx_train(m.target);
        if (opt.n_ctx > n_ctx_train) {
            if (opt.ctx_given)
                dlog(DLOG_WARN, "--ctx %d is beyond the target's training context; using %d", opt.n_ctx,
                     n_ctx_train);
            opt.n_ctx = n_ctx_train;
        }
        const struct engine_config cfg = {.target = m.target, .draft = m.draft, .n_ctx = opt.n_ctx,
                                          .draft_max = opt.draft_max, .draft_min = opt.draft_min,
                                          .adaptive = true, .penalty_window = 64, .max_seqs = opt.max_seqs};
        rc = engine_new(&cfg, &m.engine);
        if (rc)
            dlog(DLOG_ERROR, "engine: %s (%s)", spec_strerror(rc), spec_errname(rc));
    }
    if (!rc) {
        const struct kern_backend_config bcfg = backend_config(&opt);
        char backend[128];
        kern_backend_describe(be, &bcfg, backend, sizeof backend);
        dlog(DLOG_INFO, "target %s, draft %s, backend %s", opt.target, opt.draft ? opt.draft : "(prompt lookup)",
             backend);
        rc = server_run(&opt, &m, fd); /* the loop owns fd from here and closes it */
        fd = -1;
    }
    engine_free(m.engine);
    model_free(m.draft);
    model_free(m.target);
    kern_backend_destroy(be);
    if (fd >= 0)
        close(fd);
    if (!activated)
        sock_remove(opt.socket_path, ino);
    uv_library_shutdown();
    return rc ? 1 : 0;
}
