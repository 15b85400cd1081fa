/* The listening Unix socket: created with the requested mode, a stale file from a killed daemon
 * replaced, a live daemon's never; or handed over by systemd. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/err.h"
#include "daemon/daemon.h"

#define SD_LISTEN_FDS_START 3

int sock_activated(int *fd)
{
    *fd = -1;
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds)
        return SPEC_OK;
    char *end;
    const long p = strtol(pid, &end, 10);
    if (*end || p != (long)getpid())
        return SPEC_OK; /* meant for another process */
    const long n = strtol(fds, &end, 10);
    /* Children (none here) must not see these. */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (*end || n != 1) {
        dlog(DLOG_ERROR, "socket activation: LISTEN_FDS=%s, expected exactly one socket", fds);
        return SPEC_E_INVALID_ARG;
    }
    int type = 0, listening = 0;
    struct sockaddr_un addr;
    socklen_t len = sizeof type, alen = sizeof addr, llen = sizeof listening;
    if (getsockopt(SD_LISTEN_FDS_START, SOL_SOCKET, SO_TYPE, &type, &len) ||
        getsockopt(SD_LISTEN_FDS_START, SOL_SOCKET, SO_ACCEPTCONN, &listening, &llen) ||
        getsockname(SD_LISTEN_FDS_START, (struct sockaddr *)&addr, &alen) || addr.sun_family != AF_UNIX ||
        type != SOCK_STREAM || !listening) {
        dlog(DLOG_ERROR, "socket activation: fd 3 is not a listening Unix stream socket");
        return SPEC_E_INVALID_ARG;
    }
    fcntl(SD_LISTEN_FDS_START, F_SETFD, FD_CLOEXEC);
    *fd = SD_LISTEN_FDS_START;
    return SPEC_OK;
}

static int fill_addr(const char *path, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        return SPEC_E_RANGE;
    strcpy(a->sun_path, path);
    return SPEC_OK;
}

/* path exists: remove it if it is a socket nobody accepts on. */
static int clear_stale(const char *path, const struct sockaddr_un *a)
{
    struct stat st;
    if (lstat(path, &st)) {
        if (errno == ENOENT)
            return SPEC_OK;
        dlog(DLOG_ERROR, "%s: %s", path, strerror(errno));
        return SPEC_E_IO;
    }
    if (!S_ISSOCK(st.st_mode)) {
        dlog(DLOG_ERROR, "%s exists and is not a socket; not touching it", path);
        return SPEC_E_DUPLICATE;
    }
    /* Non-blocking: a live daemon whose backlog is full answers EAGAIN instead of stalling us. */
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return SPEC_E_IO;
    const int rc = connect(fd, (const struct sockaddr *)a, sizeof *a);
    const int err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN) { /* EAGAIN: a live daemon with a full backlog */
        dlog(DLOG_ERROR, "%s: another daemon is listening on it", path);
        return SPEC_E_BUSY;
    }
    if (err != ECONNREFUSED) {
        dlog(DLOG_ERROR, "%s: cannot tell whether a daemon listens on it: %s", path, strerror(err));
        return SPEC_E_IO;
    }
    dlog(DLOG_WARN, "%s: removing the stale socket of a daemon that is gone", path);
    if (unlink(path) && errno != ENOENT) {
        dlog(DLOG_ERROR, "%s: %s", path, strerror(errno));
        return SPEC_E_IO;
    }
    return SPEC_OK;
}

int sock_listen(const char *path, unsigned mode, int *out_fd, ino_t *ino)
{
    struct sockaddr_un a;
    if (fill_addr(path, &a)) {
        dlog(DLOG_ERROR, "socket path too long (max %zu bytes): %s", sizeof a.sun_path - 1, path);
        return SPEC_E_RANGE;
    }
    SPEC_TRY(clear_stale(path, &a));
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        dlog(DLOG_ERROR, "socket: %s", strerror(errno));
        return SPEC_E_IO;
    }
    /* bind() creates the file with mode & ~umask: narrow the umask so the file never exists with
     * wider permissions than asked for, then set the exact mode. */
    const mode_t old = umask(~mode & 0777);
    const int brc = bind(fd, (const struct sockaddr *)&a, sizeof a);
    const int berr = errno;
    umask(old);
    struct stat st;
    if (brc || chmod(path, mode) || listen(fd, SOMAXCONN) || stat(path, &st)) {
        dlog(DLOG_ERROR, "%s: %s", path, strerror(brc ? berr : errno));
        if (!brc)
            unlink(path);
        close(fd);
        return SPEC_E_IO;
    }
    *ino = st.st_ino;
    *out_fd = fd;
    return SPEC_OK;
}

void sock_remove(const char *path, ino_t ino)
{
    struct stat st;
    if (!lstat(path, &st) && S_ISSOCK(st.st_mode) && st.st_ino == ino)
        unlink(path);
}

int sock_peer(int fd, uid_t *uid, pid_t *pid)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || len != sizeof cred)
        return SPEC_E_IO;
    *uid = cred.uid;
    *pid = cred.pid;
    return SPEC_OK;
}
