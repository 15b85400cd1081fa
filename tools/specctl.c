/* specctl: the command-line client of the specd daemon (a thin shell over libspecd-client).
 *
 * Exit status (also in --help):
 *   0  success
 *   1  the daemon answered with an error (printed as "CODE NAME: message")
 *   2  usage error
 *   3  cannot connect to the daemon's socket
 *   4  connection lost, timeout, or a reply that breaks the protocol
 *   5  health: the daemon is draining (it accepts no new work) */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "specd_client.h"

enum { EXIT_DAEMON = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3, EXIT_IO = 4, EXIT_DRAINING = 5 };

static void usage(FILE *f)
{
    fprintf(f,
            "usage: specctl [--socket PATH] [--timeout MS] COMMAND [ARGS]\n"
            "commands:\n"
            "  generate PROMPT [options]  one completion; the text goes to stdout, a summary to stderr\n"
            "      --stream               print the text as it is generated\n"
            "      --max-tokens N         --temperature T (0: greedy)  --top-k K  --top-p P  --min-p P\n"
            "      --repeat-penalty R     --frequency-penalty F        --presence-penalty P\n"
            "      --seed S               sampling seed (default: the daemon picks one, see the summary)\n"
            "      --stop STR             end the text before STR (repeatable)\n"
            "      --no-spec              target-only decoding, no speculation\n"
            "      --draft-max N          this request's largest draft\n"
            "      --no-special           do not prepend BOS\n"
            "      --chat                 PROMPT is a user message, formatted by the model's chat template\n"
            "      --system TEXT          a system message before it (implies --chat)\n"
            "      --json                 print the result as one JSON line (after each chunk's\n"
            "                             own line with --stream) instead of text and summary\n"
            "  info                       models, backend and limits\n"
            "  stats [--prometheus]       counters and latency histograms\n"
            "  health                     \"ok\" or \"draining\", requests active and queued\n"
            "  tokenize TEXT [--special]  the token ids of TEXT (--special: with BOS)\n"
            "  detokenize ID...           the text of token ids\n"
            "options:\n"
            "  --socket PATH    default $XDG_RUNTIME_DIR/specd.sock, else /tmp/specd-$UID.sock\n"
            "  --timeout MS     give up when the daemon sends nothing for MS ms (default: wait)\n"
            "  -h, --help       this text\n"
            "exit status:\n"
            "  0  success\n"
            "  1  the daemon answered with an error (printed as \"CODE NAME: message\")\n"
            "  2  usage error\n"
            "  3  cannot connect to the daemon's socket\n"
            "  4  connection lost, timeout, or a reply that breaks the protocol\n"
            "  5  health: the daemon is draining (it accepts no new work)\n");
}

#define MAX_ARGS 1024

struct args {
    const char *socket, *cmd;
    int timeout_ms;
    const char *pos[MAX_ARGS]; /* positional arguments after the command */
    int n_pos;
    const char *stop[MAX_ARGS];
    int32_t ids[MAX_ARGS];     /* detokenize */
    struct spc_gen_params gp;
    const char *system;        /* --system */
    bool stream, json, prometheus, special, chat;
};

static bool parse_int(const char *s, long lo, long hi, long *v)
{
    char *end;
    errno = 0;
    *v = strtol(s, &end, 10);
    return end != s && !*end && !errno && *v >= lo && *v <= hi;
}

static bool parse_double(const char *s, double *v)
{
    char *end;
    *v = strtod(s, &end);
    return end != s && !*end && isfinite(*v);
}

static bool parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    *v = strtoull(s, &end, 10);
    return end != s && !*end && !errno && s[0] != '-';
}

/* One option with its value (v, NULL when missing): false when unknown or the value is bad. */
static bool option(struct args *a, const char *o, const char *v, bool *used_value)
{
    *used_value = true;
    long n;
    double *num = !strcmp(o, "--temperature")         ? &a->gp.temperature
                  : !strcmp(o, "--top-p")             ? &a->gp.top_p
                  : !strcmp(o, "--min-p")             ? &a->gp.min_p
                  : !strcmp(o, "--repeat-penalty")    ? &a->gp.repeat_penalty
                  : !strcmp(o, "--frequency-penalty") ? &a->gp.frequency_penalty
                  : !strcmp(o, "--presence-penalty")  ? &a->gp.presence_penalty
                                                      : NULL;
    int *whole = !strcmp(o, "--max-tokens") ? &a->gp.max_tokens
                 : !strcmp(o, "--top-k")    ? &a->gp.top_k
                 : !strcmp(o, "--draft-max") ? &a->gp.draft_max
                                             : NULL;
    if (num)
        return v && parse_double(v, num);
    if (whole) {
        if (!v || !parse_int(v, INT_MIN + 1, INT_MAX, &n))
            return false;
        *whole = (int)n;
        return true;
    }
    if (!strcmp(o, "--socket"))
        return (a->socket = v) != NULL;
    if (!strcmp(o, "--timeout")) {
        if (!v || !parse_int(v, 1, INT_MAX, &n))
            return false;
        a->timeout_ms = (int)n;
        return true;
    }
    if (!strcmp(o, "--seed"))
        return v && (a->gp.has_seed = parse_u64(v, &a->gp.seed));
    if (!strcmp(o, "--system")) {
        a->chat = true;
        return (a->system = v) != NULL;
    }
    if (!strcmp(o, "--stop")) {
        if (!v || a->gp.n_stop == MAX_ARGS)
            return false;
        a->stop[a->gp.n_stop++] = v;
        return true;
    }
    *used_value = false;
    bool *flag = !strcmp(o, "--stream")       ? &a->stream
                 : !strcmp(o, "--json")       ? &a->json
                 : !strcmp(o, "--prometheus") ? &a->prometheus
                 : !strcmp(o, "--special")    ? &a->special
                 : !strcmp(o, "--chat")       ? &a->chat
                                              : NULL;
    if (flag)
        return *flag = true;
    int *off = !strcmp(o, "--no-spec")      ? &a->gp.speculative
               : !strcmp(o, "--no-special") ? &a->gp.add_special
                                            : NULL;
    if (off)
        *off = 0;
    return off != NULL;
}

/* Options that only some commands take, and the positional arguments each takes (token ids parsed). */
static bool options_fit(struct args *a)
{
    const struct spc_gen_params def = spc_gen_params_default();
    const bool gen = !strcmp(a->cmd, "generate");
    const bool gen_opts = a->stream || a->json || a->chat || a->gp.n_stop || a->gp.has_seed ||
                          a->gp.speculative != -1 || a->gp.add_special != -1 || a->gp.max_tokens != def.max_tokens ||
                          a->gp.top_k != def.top_k || a->gp.draft_max != def.draft_max ||
                          !isnan(a->gp.temperature) || !isnan(a->gp.top_p) || !isnan(a->gp.min_p) ||
                          !isnan(a->gp.repeat_penalty) || !isnan(a->gp.frequency_penalty) ||
                          !isnan(a->gp.presence_penalty);
    if (gen_opts && !gen)
        return false;
    if (a->prometheus && strcmp(a->cmd, "stats"))
        return false;
    if (a->special && strcmp(a->cmd, "tokenize"))
        return false;
    if (gen || !strcmp(a->cmd, "tokenize"))
        return a->n_pos == 1;
    if (!strcmp(a->cmd, "detokenize")) {
        for (int i = 0; i < a->n_pos; i++) {
            long v;
            if (!parse_int(a->pos[i], INT32_MIN, INT32_MAX, &v))
                return false;
            a->ids[i] = (int32_t)v;
        }
        return a->n_pos >= 1;
    }
    return a->n_pos == 0;
}

/* 0, or an exit status (EXIT_USAGE; 0 with *done for --help). */
static int parse_args(int argc, char **argv, struct args *a, bool *done)
{
    *a = (struct args){.gp = spc_gen_params_default()};
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        /* A leading '-' followed by a digit is a (negative) number, not an option. */
        const bool is_opt = !only_pos && o[0] == '-' && o[1] && !(o[1] >= '0' && o[1] <= '9');
        if (is_opt && !strcmp(o, "--")) {
            only_pos = true;
        } else if (is_opt && (!strcmp(o, "-h") || !strcmp(o, "--help"))) {
            *done = true;
            return 0;
        } else if (is_opt) {
            bool used;
            if (!option(a, o, i + 1 < argc ? argv[i + 1] : NULL, &used)) {
                fprintf(stderr, "specctl: bad or unknown option %s\n", o);
                return EXIT_USAGE;
            }
            i += used;
        } else if (!a->cmd) {
            a->cmd = o;
        } else if (a->n_pos < MAX_ARGS) {
            a->pos[a->n_pos++] = o;
        } else {
            fprintf(stderr, "specctl: too many arguments\n");
            return EXIT_USAGE;
        }
    }
    a->gp.stop = a->stop;
    static const char *const commands[] = {"generate", "info", "stats", "health", "tokenize", "detokenize"};
    bool known = false;
    for (size_t i = 0; a->cmd && i < sizeof commands / sizeof commands[0]; i++)
        known |= !strcmp(a->cmd, commands[i]);
    if (!known) {
        fprintf(stderr, a->cmd ? "specctl: unknown command '%s'\n" : "specctl: no command\n", a->cmd);
        return EXIT_USAGE;
    }
    if (!options_fit(a)) {
        fprintf(stderr, "specctl: wrong arguments for '%s'\n", a->cmd);
        return EXIT_USAGE;
    }
    return 0;
}

/* The exit status for a failed call, after saying why. */
static int failed(struct spc_client *c, const char *what, int err)
{
    if (err == SPC_E_DAEMON) {
        const struct spc_error *e = spc_last_error(c);
        fprintf(stderr, "specctl: %s: %lld %s: %s\n", what, (long long)e->code, e->name, e->message);
        return EXIT_DAEMON;
    }
    fprintf(stderr, "specctl: %s: %s\n", what, spc_strerror(err));
    return EXIT_IO;
}

static void json_str(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        const unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void json_tokens(const int32_t *t, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", (int)t[i]);
    putchar(']');
}

static int on_chunk(void *user, const struct spc_chunk *ch)
{
    const struct args *a = user;
    if (a->json) {
        printf("{\"id\":%u,\"text\":", (unsigned)ch->id);
        json_str(ch->text, ch->text_len);
        fputs(",\"tokens\":", stdout);
        json_tokens(ch->tokens, ch->n_tokens);
        puts("}");
    } else {
        fwrite(ch->text, 1, ch->text_len, stdout);
    }
    fflush(stdout);
    return 0;
}

static void print_result(const struct args *a, const struct spc_gen_result *r)
{
    const char *fin = spc_finish_name(r->finish);
    if (!a->json) {
        if (!a->stream)
            fwrite(r->text, 1, r->text_len, stdout);
        putchar('\n');
        fflush(stdout); /* the text ends before the stats on stderr begin */
        fprintf(stderr, "[%s] %lld tokens (prompt %lld, %lld cached) in %.1f ms, seed %llu", fin,
                (long long)r->completion_tokens, (long long)r->prompt_tokens, (long long)r->cached_tokens,
                r->timing.total_ms, (unsigned long long)r->seed);
        if (r->spec.enabled)
            fprintf(stderr, ", acceptance %.3f, %.2f tokens/pass", r->spec.acceptance, r->spec.tokens_per_pass);
        fputc('\n', stderr);
        return;
    }
    fputs("{\"text\":", stdout);
    json_str(r->text, r->text_len);
    fputs(",\"tokens\":", stdout);
    json_tokens(r->tokens, r->n_tokens);
    printf(",\"finish_reason\":\"%s\",\"seed\":%llu,\"usage\":{\"prompt_tokens\":%lld,\"cached_tokens\":%lld,"
           "\"completion_tokens\":%lld},"
           "\"speculative\":{\"enabled\":%s,\"drafted\":%lld,\"accepted\":%lld,\"acceptance\":%g,"
           "\"target_passes\":%lld,\"tokens_per_pass\":%g},"
           "\"timing\":{\"queue_ms\":%g,\"prefill_ms\":%g,\"draft_ms\":%g,\"target_ms\":%g,\"total_ms\":%g}}\n",
           fin, (unsigned long long)r->seed, (long long)r->prompt_tokens, (long long)r->cached_tokens,
           (long long)r->completion_tokens,
           r->spec.enabled ? "true" : "false", (long long)r->spec.drafted, (long long)r->spec.accepted,
           r->spec.acceptance, (long long)r->spec.target_passes, r->spec.tokens_per_pass, r->timing.queue_ms,
           r->timing.prefill_ms, r->timing.draft_ms, r->timing.target_ms, r->timing.total_ms);
}

static int cmd_generate(struct spc_client *c, struct args *a)
{
    const struct spc_message chat[2] = {{"system", a->system}, {"user", a->pos[0]}};
    if (a->chat) {
        a->gp.messages = a->system ? chat : chat + 1;
        a->gp.n_messages = a->system ? 2 : 1;
    } else {
        a->gp.prompt = a->pos[0];
    }
    struct spc_gen_result *r;
    const int err = spc_generate(c, &a->gp, a->stream ? on_chunk : NULL, a, &r);
    if (err) {
        if (a->stream)
            putchar('\n');
        return failed(c, "generate", err);
    }
    print_result(a, r);
    spc_free(r);
    return 0;
}

static void print_model(const char *label, const struct spc_model_info *m)
{
    printf("%-8s %s: %s, %lld tokens, %lld layers, n_embd %lld, trained context %lld\n", label, m->path, m->arch,
           (long long)m->n_vocab, (long long)m->n_layer, (long long)m->n_embd, (long long)m->n_ctx_train);
}

static int cmd_info(struct spc_client *c)
{
    struct spc_info *in;
    const int err = spc_info(c, &in);
    if (err)
        return failed(c, "info", err);
    printf("%-8s specd %s (protocol %lld), backend %s\n", "daemon", in->version, (long long)in->protocol,
           in->backend);
    print_model("target", &in->target);
    if (in->has_draft)
        print_model("draft", &in->draft);
    else
        printf("%-8s none (prompt-lookup drafting)\n", "draft");
    printf("%-8s n_ctx %lld, max_seqs %lld, max_clients %lld, max_queue %lld, max_pending_per_client %lld,\n"
           "%-8s max_frame %lld, draft_max %lld, max_stop %lld, max_stop_len %lld\n",
           "limits", (long long)in->limits.n_ctx, (long long)in->limits.max_seqs, (long long)in->limits.max_clients,
           (long long)in->limits.max_queue, (long long)in->limits.max_pending_per_client, "",
           (long long)in->limits.max_frame, (long long)in->limits.draft_max, (long long)in->limits.max_stop,
           (long long)in->limits.max_stop_len);
    spc_free(in);
    return 0;
}

static void print_histogram(const char *name, const struct spc_histogram *h)
{
    for (size_t i = 0; i < h->n_buckets; i++)
        printf("%s{le=\"%g\"} %llu\n", name, h->buckets[i].le, (unsigned long long)h->buckets[i].count);
    printf("%s_sum %g\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

static int cmd_stats(struct spc_client *c, const struct args *a)
{
    if (a->prometheus) {
        char *text;
        const int err = spc_stats_prometheus(c, &text);
        if (err)
            return failed(c, "stats", err);
        fputs(text, stdout);
        spc_free(text);
        return 0;
    }
    struct spc_stats *s;
    const int err = spc_stats(c, &s);
    if (err)
        return failed(c, "stats", err);
    const struct {
        const char *name;
        uint64_t v;
    } counters[] = {{"requests_total", s->requests_total},       {"requests_failed", s->requests_failed},
                    {"requests_cancelled", s->requests_cancelled}, {"tokens_generated", s->tokens_generated},
                    {"tokens_drafted", s->tokens_drafted},       {"tokens_accepted", s->tokens_accepted},
                    {"target_passes", s->target_passes},         {"prompt_tokens", s->prompt_tokens},
                    {"prompt_tokens_cached", s->prompt_tokens_cached}, {"connections_total", s->connections_total},
                    {"connections_rejected", s->connections_rejected}, {"clients_connected", s->clients_connected},
                    {"active", s->active},                       {"queued", s->queued}};
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        printf("%s %llu\n", counters[i].name, (unsigned long long)counters[i].v);
    printf("uptime_s %.3f\n", s->uptime_s);
    print_histogram("queue_seconds", &s->queue_seconds);
    print_histogram("first_token_seconds", &s->first_token_seconds);
    print_histogram("request_seconds", &s->request_seconds);
    spc_free(s);
    return 0;
}

static int cmd_health(struct spc_client *c)
{
    struct spc_health h;
    const int err = spc_health(c, &h);
    if (err)
        return failed(c, "health", err);
    printf("%s active %lld queued %lld uptime %.1f s\n", h.draining ? "draining" : "ok", (long long)h.active,
           (long long)h.queued, h.uptime_s);
    return h.draining ? EXIT_DRAINING : 0;
}

static int cmd_tokenize(struct spc_client *c, const struct args *a)
{
    int32_t *t;
    size_t n;
    const int err = spc_tokenize(c, a->pos[0], a->special ? 1 : -1, &t, &n);
    if (err)
        return failed(c, "tokenize", err);
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? " " : "", (int)t[i]);
    putchar('\n');
    spc_free(t);
    return 0;
}

static int cmd_detokenize(struct spc_client *c, const struct args *a)
{
    char *text;
    size_t len;
    const int err = spc_detokenize(c, a->ids, (size_t)a->n_pos, &text, &len);
    if (err)
        return failed(c, "detokenize", err);
    fwrite(text, 1, len, stdout);
    putchar('\n');
    spc_free(text);
    return 0;
}

int main(int argc, char **argv)
{
    struct args a;
    bool help = false;
    int rc = parse_args(argc, argv, &a, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (rc) {
        fputs("run 'specctl --help' for the usage\n", stderr);
        return rc;
    }
    char path[256];
    if (!a.socket && spc_default_socket_path(path, sizeof path) == SPC_OK)
        a.socket = path;
    struct spc_client *c;
    const int err = spc_connect(&(struct spc_options){.socket_path = a.socket, .timeout_ms = a.timeout_ms}, &c);
    if (err == SPC_E_CONNECT) {
        fprintf(stderr, "specctl: cannot connect to %s: %s (is specd running?)\n", a.socket, strerror(errno));
        return EXIT_CONNECT;
    }
    if (err) {
        fprintf(stderr, "specctl: %s: %s\n", a.socket ? a.socket : "socket", spc_strerror(err));
        return err == SPC_E_INVALID_ARG ? EXIT_USAGE : EXIT_IO;
    }
    rc = !strcmp(a.cmd, "generate")    ? cmd_generate(c, &a)
         : !strcmp(a.cmd, "info")      ? cmd_info(c)
         : !strcmp(a.cmd, "stats")     ? cmd_stats(c, &a)
         : !strcmp(a.cmd, "health")    ? cmd_health(c)
         : !strcmp(a.cmd, "tokenize")  ? cmd_tokenize(c, &a)
                                       : cmd_detokenize(c, &a);
    spc_close(c);
    return rc;
}
