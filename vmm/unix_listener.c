/* See unix_listener.h. Moved from api/server.c (its messages unchanged). */
#include "vmm/unix_listener.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <xxhash.h>

#include "vmm/unix_socket.h"

/* One listener per socket path at a time, whatever the race: an abstract
 * socket named after the canonical path, released by the kernel when the
 * process dies (no lock file left behind). */
static int take_path_lock(struct unix_listener *listener, const char *path)
{
    char directory[PATH_MAX], canonical[PATH_MAX * 2];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!slash) {
        if (!getcwd(directory, sizeof(directory)))
            return -errno;
    } else {
        char parent[PATH_MAX];
        size_t n = (size_t)(slash - path);
        if (n >= sizeof(parent))
            return -ENAMETOOLONG;
        memcpy(parent, path, n);
        parent[n] = '\0';
        if (!realpath(n ? parent : "/", directory))
            return -errno;
    }
    snprintf(canonical, sizeof(canonical), "%s/%s", directory, base);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    int name_length = snprintf(address.sun_path + 1, sizeof(address.sun_path) - 1, "ringvm-%s:%016llx",
                               listener->log_name,
                               (unsigned long long)XXH3_64bits(canonical, strlen(canonical)));
    if (name_length < 0 || (size_t)name_length >= sizeof(address.sun_path) - 1) {
        close(fd);
        return -ENAMETOOLONG;
    }
    socklen_t length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)name_length);
    if (bind(fd, (struct sockaddr *)&address, length) < 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    listener->lock_fd = fd;
    return 0;
}

/* 1: something accepts connections on path; 0: nothing does; -errno. */
static int probe_live(const char *path)
{
    /* Non-blocking: a live listener with a full backlog must not stall
     * the open; the caller prints its own message, so none is wanted. */
    int fd = unix_socket_connect(path, SOCK_NONBLOCK, NULL, 0);
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    if (fd == -EAGAIN || fd == -EINPROGRESS)
        return 1;           /* listening, backlog full: alive */
    if (fd == -ECONNREFUSED || fd == -ENOENT)
        return 0;
    return fd;
}

/* Everything after the path lock; on failure the caller closes. */
static int open_socket(struct unix_listener *listener, const char *path, const char *option)
{
    size_t path_length = strlen(path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            fprintf(stderr, "ringvm: %s %s: exists and is not a socket; not replacing it\n", option, path);
            return -EEXIST;
        }
        int live = probe_live(path);
        if (live == 1) {
            fprintf(stderr, "ringvm: %s %s: another ringvm is listening there\n", option, path);
            return -EADDRINUSE;
        }
        if (live < 0) {
            fprintf(stderr, "ringvm: %s %s: cannot check the existing socket: %s\n", option, path,
                    strerror(-live));
            return live;
        }
        if (unlink(path) < 0 && errno != ENOENT) {
            int error = errno;
            fprintf(stderr, "ringvm: %s %s: cannot remove the stale socket: %s\n", option, path,
                    strerror(error));
            return -error;
        }
    } else if (errno != ENOENT) {
        int error = errno;
        fprintf(stderr, "ringvm: %s %s: %s\n", option, path, strerror(error));
        return -error;
    }

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int error = errno;
        fprintf(stderr, "ringvm: %s %s: socket: %s\n", option, path, strerror(error));
        return -error;
    }
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    memcpy(address.sun_path, path, path_length + 1);
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
        int error = errno;
        fprintf(stderr, "ringvm: %s %s: bind: %s\n", option, path, strerror(error));
        close(fd);
        return -error;
    }
    /* Nobody can connect before listen(), so tightening the mode here
     * leaves no window. */
    if (chmod(path, 0600) < 0 || lstat(path, &st) < 0) {
        int error = errno;
        fprintf(stderr, "ringvm: %s %s: chmod 0600: %s\n", option, path, strerror(error));
        unlink(path);
        close(fd);
        return -error;
    }
    listener->socket_dev = st.st_dev;
    listener->socket_ino = st.st_ino;
    if (listen(fd, 64) < 0) {
        int error = errno;
        fprintf(stderr, "ringvm: %s %s: listen: %s\n", option, path, strerror(error));
        unlink(path);
        close(fd);
        return -error;
    }
    listener->fd = fd;
    return 0;
}

int unix_listener_open(struct unix_listener *listener, const char *path, const char *option,
                       const char *log_name)
{
    memset(listener, 0, sizeof(*listener));
    listener->fd = -1;
    listener->lock_fd = -1;
    listener->log_name = log_name;
    size_t path_length = strlen(path);
    if (path_length == 0 || path_length >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "ringvm: %s %s: expected a path of 1 to 107 bytes\n", option, path);
        return -ENAMETOOLONG;
    }
    listener->path = strdup(path);
    if (!listener->path) {
        fprintf(stderr, "ringvm: %s %s: out of memory\n", option, path);
        return -ENOMEM;
    }
    int result = take_path_lock(listener, path);
    if (result == -EADDRINUSE)
        fprintf(stderr, "ringvm: %s %s: another ringvm is listening there\n", option, path);
    else if (result < 0)
        fprintf(stderr, "ringvm: %s %s: %s\n", option, path, strerror(-result));
    else
        result = open_socket(listener, path, option);
    if (result < 0)
        unix_listener_close(listener);
    return result;
}

void unix_listener_remove_file(struct unix_listener *listener)
{
    struct stat st;
    /* Only our own socket: never someone else's file that replaced it. */
    if (listener->fd >= 0 && listener->path && lstat(listener->path, &st) == 0 &&
        st.st_dev == listener->socket_dev && st.st_ino == listener->socket_ino && unlink(listener->path) < 0)
        fprintf(stderr, "ringvm: %s: unlink %s: %s\n", listener->log_name, listener->path, strerror(errno));
}

void unix_listener_close(struct unix_listener *listener)
{
    if (listener->fd >= 0) {
        unix_listener_remove_file(listener);
        if (close(listener->fd) < 0)
            fprintf(stderr, "ringvm: %s: close(listening socket): %s\n", listener->log_name, strerror(errno));
        listener->fd = -1;
    }
    if (listener->lock_fd >= 0) {
        close(listener->lock_fd);
        listener->lock_fd = -1;
    }
    free(listener->path);
    listener->path = NULL;
}

int unix_listener_check_peer(int fd, struct ucred *peer, char *message, size_t message_size)
{
    socklen_t length = sizeof(*peer);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, peer, &length) < 0)
        return -errno;
    uid_t me = geteuid();
    if (peer->uid != me && peer->uid != 0) {
        snprintf(message, message_size, "permission denied: uid %u is neither ringvm's uid %u nor root",
                 (unsigned)peer->uid, (unsigned)me);
        return 0;
    }
    return 1;
}
