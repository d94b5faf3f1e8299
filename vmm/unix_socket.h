/*
 * Connecting to a Unix socket by path: the one place that checks the path
 * against sun_path and says what failed. Used by the API client
 * (api/client.c), ringctl console (api/ringctl_console.c), the console
 * hand-over (vmm/console.c) and the listener's probe for a live peer
 * (vmm/unix_listener.c). Callers add their own context and hints.
 */
#ifndef RINGVM_VMM_UNIX_SOCKET_H
#define RINGVM_VMM_UNIX_SOCKET_H

#include <stddef.h>

/*
 * Connects a new SOCK_STREAM | SOCK_CLOEXEC socket, or'ed with
 * extra_type_flags (0 or SOCK_NONBLOCK), to path. Returns the connected fd
 * or -errno, with error (NULL allowed when error_size is 0) naming what
 * failed and why:
 *   "connect(unix:/run/x.sock): No such file or directory"
 *   "socket(AF_UNIX): Too many open files"
 *   "unix socket path /... is 120 bytes, the limit is 107"   -ENAMETOOLONG
 *   "unix socket path is empty"                              -EINVAL
 * -ENAMETOOLONG and -EINVAL come only from the path check. With
 * SOCK_NONBLOCK, a listener whose backlog is full gives -EAGAIN.
 */
int unix_socket_connect(const char *path, int extra_type_flags, char *error, size_t error_size);

#endif
