/*
 * A listening Unix socket with the rules every ringvm socket follows (the
 * API socket, api/server.c, and the console socket, vmm/console.c):
 *   - mode 0600 whatever the umask;
 *   - one listener per path at a time, whatever the race: an abstract
 *     socket named after the canonical path is the lock, released by the
 *     kernel when the process dies;
 *   - an existing socket file nobody accepts on (a crashed ringvm's) is
 *     replaced; a live one is refused, and so is any file that is not a
 *     socket;
 *   - on close only our own socket file is unlinked (same device and inode),
 *     never a file someone put there since;
 *   - peers must have our effective uid or be root (SO_PEERCRED).
 *
 * Ownership: a struct unix_listener belongs to the thread that opened it;
 * its fd may be polled and accepted on by the subsystem's own thread.
 */
#ifndef RINGVM_VMM_UNIX_LISTENER_H
#define RINGVM_VMM_UNIX_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

struct unix_listener {
    int fd;                 /* listening, SOCK_NONBLOCK | SOCK_CLOEXEC; -1 = closed */
    int lock_fd;            /* the abstract path lock */
    char *path;
    dev_t socket_dev;
    ino_t socket_ino;
    const char *log_name;   /* "api", "console": in messages after opening */
};

/*
 * Opens path. option names the command-line option in error messages
 * ("--api-socket": "ringvm: --api-socket /x: another ringvm is listening
 * there"); log_name (a string literal) names the lock ("ringvm-<log_name>:
 * <hash>") and later messages ("ringvm: <log_name>: unlink ..."). Returns 0
 * or -errno, the cause printed to stderr; on failure nothing is left open.
 */
int unix_listener_open(struct unix_listener *listener, const char *path, const char *option,
                       const char *log_name);

/* Unlinks the socket file if it is still ours; the fds stay open. */
void unix_listener_remove_file(struct unix_listener *listener);

/* Removes the file (as above) and closes everything. Safe on a listener
 * that failed to open or was closed already. */
void unix_listener_close(struct unix_listener *listener);

/*
 * Checks an accepted connection's peer: 1 allowed (*peer filled), 0 refused
 * with the reason in message ("permission denied: uid 1001 is neither
 * ringvm's uid 1000 nor root"), -errno when SO_PEERCRED fails.
 */
int unix_listener_check_peer(int fd, struct ucred *peer, char *message, size_t message_size);

#endif
