/*
 * unix_socket_connect (vmm/unix_socket.h) without a VM: the flags asked
 * for, and each failure named with its errno; api_client_connect keeps
 * its hints on top of the helper's text.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/client.h"
#include "vmm/unix_socket.h"

struct directory {
    char path[64];
    char socket[96];
};

static void directory_make(struct directory *d)
{
    snprintf(d->path, sizeof(d->path), "/tmp/ringvm-unix-socket-XXXXXX");
    cr_assert_not_null(mkdtemp(d->path), "mkdtemp: %s", strerror(errno));
    snprintf(d->socket, sizeof(d->socket), "%s/s.sock", d->path);
}

static void directory_remove(struct directory *d)
{
    unlink(d->socket);
    cr_assert_eq(rmdir(d->path), 0, "rmdir %s: %s", d->path, strerror(errno));
}

/* Binds path; listens unless the socket is to be left stale. */
static int bind_at(const char *path, bool listening)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    memcpy(address.sun_path, path, strlen(path) + 1);
    cr_assert_eq(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0, "bind %s: %s", path, strerror(errno));
    if (listening)
        cr_assert_eq(listen(fd, 4), 0, "listen: %s", strerror(errno));
    return fd;
}

static void too_long_path(char *out, size_t size)
{
    memset(out, 'x', size - 1);
    out[0] = '/';
    out[size - 1] = '\0';
}

Test(unix_socket, connects_with_cloexec_and_the_flags_asked)
{
    struct directory d;
    directory_make(&d);
    int listener = bind_at(d.socket, true);
    char error[256] = "";

    int fd = unix_socket_connect(d.socket, 0, error, sizeof(error));
    cr_assert_geq(fd, 0, "%s", error);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    cr_assert_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    close(fd);

    fd = unix_socket_connect(d.socket, SOCK_NONBLOCK, error, sizeof(error));
    cr_assert_geq(fd, 0, "%s", error);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    cr_assert_neq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    close(fd);

    close(listener);
    directory_remove(&d);
}

Test(unix_socket, names_what_failed_and_why)
{
    struct directory d;
    directory_make(&d);
    char error[512], expected[512];

    cr_assert_eq(unix_socket_connect(d.socket, 0, error, sizeof(error)), -ENOENT);
    snprintf(expected, sizeof(expected), "connect(unix:%s): No such file or directory", d.socket);
    cr_assert_str_eq(error, expected);

    /* A socket file nobody listens on any more. */
    close(bind_at(d.socket, false));
    cr_assert_eq(unix_socket_connect(d.socket, 0, error, sizeof(error)), -ECONNREFUSED);
    snprintf(expected, sizeof(expected), "connect(unix:%s): Connection refused", d.socket);
    cr_assert_str_eq(error, expected);
    /* No message wanted. */
    cr_assert_eq(unix_socket_connect(d.socket, SOCK_NONBLOCK, NULL, 0), -ECONNREFUSED);

    char path[109];     /* 108 bytes: one more than sun_path holds */
    too_long_path(path, sizeof(path));
    cr_assert_eq(unix_socket_connect(path, 0, error, sizeof(error)), -ENAMETOOLONG);
    snprintf(expected, sizeof(expected), "unix socket path %s is 108 bytes, the limit is 107", path);
    cr_assert_str_eq(error, expected);

    cr_assert_eq(unix_socket_connect("", 0, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "unix socket path is empty");

    directory_remove(&d);
}

Test(unix_socket, api_client_keeps_its_hints)
{
    struct directory d;
    directory_make(&d);
    struct api_client *client = NULL;
    char error[512], expected[512];

    cr_assert_eq(api_client_connect(&client, d.socket, error, sizeof(error)), -ENOENT);
    cr_assert_null(client);
    snprintf(expected, sizeof(expected),
             "connect(unix:%s): No such file or directory (is ringvm running with --api-socket on this path?)",
             d.socket);
    cr_assert_str_eq(error, expected);

    char path[120];
    too_long_path(path, sizeof(path));
    cr_assert_eq(api_client_connect(&client, path, error, sizeof(error)), -ENAMETOOLONG);
    snprintf(expected, sizeof(expected), "unix socket path %s is 119 bytes, the limit is 107", path);
    cr_assert_str_eq(error, expected);

    int listener = bind_at(d.socket, true);
    cr_assert_eq(api_client_connect(&client, d.socket, error, sizeof(error)), 0, "%s", error);
    api_client_close(client);
    close(listener);
    directory_remove(&d);
}
