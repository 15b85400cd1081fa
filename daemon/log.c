/* Leveled log lines on stderr, one write per line so lines from the two threads never interleave. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "daemon/daemon.h"

static enum dlog_level level = DLOG_INFO;
static const char *const names[] = {"error", "warn", "info", "debug"};

void dlog_set_level(enum dlog_level l)
{
    level = l;
}

int dlog_parse_level(const char *s, enum dlog_level *out)
{
    for (int i = DLOG_ERROR; i <= DLOG_DEBUG; i++)
        if (!strcmp(s, names[i])) {
            *out = (enum dlog_level)i;
            return SPEC_OK;
        }
    return SPEC_E_INVALID_ARG;
}

void dlog(enum dlog_level l, const char *fmt, ...)
{
    if (l > level)
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ld specd %s: ", ts.tv_nsec / 1000000, names[l]);
    va_list ap;
    va_start(ap, fmt);
    const int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : n + m < (int)sizeof line - 1 ? n + m : (int)sizeof line - 2;
    line[n++] = '\n';
    const ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w; /* nowhere to report a failed log write */
}
