/* Running the built binaries (specctl, specd, python3) from the client tests: where the build
 * directory is, and a run that captures a child's exit status, stdout and stderr. */
#ifndef SPECD_TESTS_CLIENT_CLI_H
#define SPECD_TESTS_CLIENT_CLI_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The build directory of this test binary (<build>/tests/<dir>/<test>), e.g. "/repo/build". */
static inline void cli_build_dir(char *buf, size_t cap)
{
    char exe[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert_gt(n, 0, "readlink /proc/self/exe");
    exe[n] = '\0';
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(exe, '/');
        cr_assert_not_null(slash, "test binary %s is not under <build>/tests/<dir>/", exe);
        *slash = '\0';
    }
    cr_assert_lt(strlen(exe), cap);
    strcpy(buf, exe);
}

/* "<build>/bin/<name>". */
static inline void cli_bin(const char *name, char *buf, size_t cap)
{
    char dir[PATH_MAX];
    cli_build_dir(dir, sizeof dir);
    cr_assert_lt((size_t)snprintf(buf, cap, "%s/bin/%s", dir, name), cap);
}

struct cli_run {
    int status; /* exit status, or 128 + signal */
    char *out, *err;
};

static inline char *cli_slurp(FILE *f)
{
    fflush(f);
    const long n = ftell(f);
    cr_assert_geq(n, 0);
    char *s = malloc((size_t)n + 1);
    cr_assert_not_null(s);
    rewind(f);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* Runs argv (argv[0] a path, or a name looked up in $PATH) to completion, stdin from /dev/null. */
static inline struct cli_run cli_run(char *const argv[])
{
    FILE *out = tmpfile(), *err = tmpfile();
    cr_assert(out && err, "tmpfile");
    fflush(NULL);
    const pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork");
    if (pid == 0) {
        const int in = open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(fileno(out), 1);
        dup2(fileno(err), 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return (struct cli_run){.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st),
                            .out = cli_slurp(out), .err = cli_slurp(err)};
}

static inline void cli_run_free(struct cli_run *r)
{
    free(r->out);
    free(r->err);
}

#endif
