/* A link the tests can cut (tests/link_relay.h). */
#include "tests/link_relay.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RELAY_MAX_PAIRS 8

struct link_relay {
    int listen_fd;
    char path[108];
    char target[108];
    int pairs[RELAY_MAX_PAIRS][2];      /* [0] = accepted (source side), [1] = connected (destination side) */
    _Atomic unsigned pair_count;
    _Atomic bool cut;
    _Atomic bool stop;
    pthread_t thread;
};

static int relay_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Copies what is there from one side to the other (blocking writes: the
 * test's links are fast). false when a side closed. */
static bool relay_copy(int from, int to)
{
    char buffer[65536];
    ssize_t got = recv(from, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (got == 0)
        return false;
    if (got < 0)
        return errno == EAGAIN || errno == EINTR;
    for (ssize_t done = 0; done < got;) {
        ssize_t wrote = send(to, buffer + done, (size_t)(got - done), MSG_NOSIGNAL);
        if (wrote < 0 && errno == EINTR)
            continue;
        if (wrote <= 0)
            return false;
        done += wrote;
    }
    return true;
}

static void *relay_main(void *argument)
{
    struct link_relay *relay = argument;
    while (!atomic_load(&relay->stop)) {
        struct pollfd fds[1 + 2 * RELAY_MAX_PAIRS];
        unsigned count = atomic_load(&relay->pair_count);
        bool cut = atomic_load(&relay->cut);
        fds[0] = (struct pollfd){ .fd = relay->listen_fd, .events = POLLIN };
        for (unsigned i = 0; i < count; i++)
            for (unsigned side = 0; side < 2; side++)
                fds[1 + 2 * i + side] = (struct pollfd){ .fd = cut ? -1 : relay->pairs[i][side], .events = POLLIN };
        if (poll(fds, 1 + 2 * count, 50) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && count < RELAY_MAX_PAIRS) {
            int accepted = accept4(relay->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            int connected = accepted >= 0 ? relay_connect(relay->target) : -1;
            if (accepted >= 0 && connected >= 0) {
                relay->pairs[count][0] = accepted;
                relay->pairs[count][1] = connected;
                atomic_store(&relay->pair_count, count + 1);
            } else if (accepted >= 0) {
                close(accepted);
            }
        }
        for (unsigned i = 0; i < count && !cut; i++)
            for (unsigned side = 0; side < 2; side++)
                if (fds[1 + 2 * i + side].revents & (POLLIN | POLLHUP))
                    (void)relay_copy(relay->pairs[i][side], relay->pairs[i][1 - side]);
    }
    return NULL;
}

struct link_relay *link_relay_start(const char *target, char *address, size_t size)
{
    struct link_relay *relay = calloc(1, sizeof(*relay));
    cr_assert_not_null(relay);
    cr_assert_eq(strncmp(target, "unix:", 5), 0, "the relay relays unix: addresses only");
    snprintf(relay->target, sizeof(relay->target), "%s", target + 5);
    static _Atomic unsigned counter;
    snprintf(relay->path, sizeof(relay->path), "/tmp/ringvm-relay-%d-%u.sock", getpid(), atomic_fetch_add(&counter, 1));
    unlink(relay->path);
    relay->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un listen_address = { .sun_family = AF_UNIX };
    snprintf(listen_address.sun_path, sizeof(listen_address.sun_path), "%s", relay->path);
    cr_assert_eq(bind(relay->listen_fd, (struct sockaddr *)&listen_address, sizeof(listen_address)), 0,
                 "bind(%s): %s", relay->path, strerror(errno));
    cr_assert_eq(listen(relay->listen_fd, 8), 0);
    snprintf(address, size, "unix:%s", relay->path);
    cr_assert_eq(pthread_create(&relay->thread, NULL, relay_main, relay), 0);
    return relay;
}

void link_relay_cut(struct link_relay *relay)
{
    atomic_store(&relay->cut, true);
}

unsigned link_relay_connections(struct link_relay *relay)
{
    return atomic_load(&relay->pair_count);
}

void link_relay_stop(struct link_relay *relay)
{
    atomic_store(&relay->stop, true);
    pthread_join(relay->thread, NULL);
    unsigned count = atomic_load(&relay->pair_count);
    for (unsigned i = 0; i < count; i++) {
        close(relay->pairs[i][0]);
        close(relay->pairs[i][1]);
    }
    close(relay->listen_fd);
    unlink(relay->path);
    free(relay);
}
