/* See unix_socket.h. */
#include "vmm/unix_socket.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int unix_socket_connect(const char *path, int extra_type_flags, char *error, size_t error_size)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    size_t length = strlen(path);
    /* An empty sun_path would name an abstract socket, not a file. */
    if (length == 0) {
        snprintf(error, error_size, "unix socket path is empty");
        return -EINVAL;
    }
    if (length >= sizeof(address.sun_path)) {
        snprintf(error, error_size, "unix socket path %s is %zu bytes, the limit is %zu", path, length,
                 sizeof(address.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    memcpy(address.sun_path, path, length + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | extra_type_flags, 0);
    if (fd < 0) {
        int saved = errno;
        snprintf(error, error_size, "socket(AF_UNIX): %s", strerror(saved));
        return -saved;
    }
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        int saved = errno;
        snprintf(error, error_size, "connect(unix:%s): %s", path, strerror(saved));
        /* Never connected: nothing was sent that close could lose. */
        close(fd);
        return -saved;
    }
    return fd;
}
