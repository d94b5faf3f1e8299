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
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "migration/protocol.h"
#include "tests/migration_destination.h"

#define RELAY_MAX_PAIRS 8
/* tcp: the relay's sockets receive into small buffers (set before the
 * connection exists, so the window is small from the start): once cut,
 * the kernel acknowledges only this much more, as a pulled cable
 * acknowledges nothing; a sender's unacknowledged bytes then stay put
 * instead of vanishing into megabytes of autotuned receive buffer. */
#define RELAY_TCP_RCVBUF (64 << 10)

struct link_relay {
    int listen_fd;
    bool tcp;
    char path[108];                     /* unix: the relay's own socket */
    char target[160];                   /* unix: PATH; tcp: HOST:PORT */
    int pairs[RELAY_MAX_PAIRS][2];      /* [0] = accepted (source side), [1] = connected (destination side) */
    _Atomic unsigned pair_count;
    _Atomic bool cut;
    _Atomic int64_t budget;             /* bytes destination -> source still allowed; -1: no limit */
    _Atomic uint64_t to_source;         /* bytes copied destination -> source */
    _Atomic bool stop;
    pthread_t thread;
    /* link_relay_hold_before_frame: the frame type to stop before (0:
     * none), whether it stopped, and (relay thread only) the bytes left of
     * the main stream's current frame. */
    _Atomic uint32_t hold_type;
    _Atomic bool holding;
    uint64_t frame_left;
};

static int relay_connect_tcp(const char *target)
{
    char host[160];
    snprintf(host, sizeof(host), "%s", target);
    char *colon = strrchr(host, ':');
    if (colon == NULL)
        return -1;
    *colon = '\0';
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *found = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &found) != 0)
        return -1;
    int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = RELAY_TCP_RCVBUF;
    if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) != 0 ||
                    connect(fd, found->ai_addr, found->ai_addrlen) != 0)) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    int one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static int relay_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%.107s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Copies what is there from one side to the other (blocking writes: the
 * test's links are fast); to_source: the destination's side to the
 * source's, which the budget limits. false when a side closed. */
static bool relay_copy(struct link_relay *relay, int from, int to, bool to_source, bool main_stream)
{
    char buffer[65536];
    size_t want = sizeof(buffer);
    bool framed = main_stream && !to_source && atomic_load(&relay->hold_type) != 0;
    if (framed) {
        if (relay->frame_left == 0) {
            uint8_t header[MIG_HEADER_SIZE];
            ssize_t peeked = recv(from, header, sizeof(header), MSG_PEEK | MSG_DONTWAIT);
            if (peeked == 0)
                return false;
            if (peeked < (ssize_t)sizeof(header))
                return true;        /* the rest of the header is on its way */
            uint32_t type = mig_get_u32(header);            /* the header's layout: migration/protocol.h */
            uint64_t length = mig_get_u64(header + 16);
            if (type == atomic_load(&relay->hold_type)) {
                atomic_store(&relay->holding, true);
                return true;
            }
            relay->frame_left = MIG_HEADER_SIZE + length;
        }
        if (relay->frame_left < want)
            want = (size_t)relay->frame_left;
    }
    int64_t budget = atomic_load(&relay->budget);
    if (to_source && budget >= 0 && (uint64_t)budget < want)
        want = (size_t)budget;
    if (want == 0) {
        atomic_store(&relay->cut, true);
        return true;
    }
    ssize_t got = recv(from, buffer, want, MSG_DONTWAIT);
    if (got == 0)
        return false;
    if (got < 0)
        return errno == EAGAIN || errno == EINTR;
    if (framed)
        relay->frame_left -= (uint64_t)got;
    if (to_source) {
        atomic_fetch_add(&relay->to_source, (uint64_t)got);
        /* Only this thread lowers the budget; the test sets it once. */
        if (budget >= 0) {
            atomic_store(&relay->budget, budget - got);
            if (budget - got == 0)
                atomic_store(&relay->cut, true);
        }
    }
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
                fds[1 + 2 * i + side] = (struct pollfd){
                    .fd = cut || (i == 0 && side == 0 && atomic_load(&relay->holding)) ? -1 : relay->pairs[i][side],
                    .events = POLLIN };
        if (poll(fds, 1 + 2 * count, 50) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && count < RELAY_MAX_PAIRS) {
            int accepted = accept4(relay->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            int connected = accepted < 0  ? -1
                            : relay->tcp ? relay_connect_tcp(relay->target)
                                         : relay_connect(relay->target);
            if (accepted >= 0 && connected >= 0) {
                relay->pairs[count][0] = accepted;
                relay->pairs[count][1] = connected;
                atomic_store(&relay->pair_count, count + 1);
            } else if (accepted >= 0) {
                close(accepted);
            }
        }
        for (unsigned i = 0; i < count && !cut; i++)
            for (unsigned side = 0; side < 2 && !atomic_load(&relay->cut); side++)
                if (fds[1 + 2 * i + side].revents & (POLLIN | POLLHUP))
                    (void)relay_copy(relay, relay->pairs[i][side], relay->pairs[i][1 - side], side == 1, i == 0);
    }
    return NULL;
}

struct link_relay *link_relay_start(const char *target, char *address, size_t size)
{
    struct link_relay *relay = calloc(1, sizeof(*relay));
    cr_assert_not_null(relay);
    atomic_store(&relay->budget, -1);
    if (strncmp(target, "tcp:", 4) == 0) {
        relay->tcp = true;
        snprintf(relay->target, sizeof(relay->target), "%s", target + 4);
        relay->listen_fd = test_listen_localhost_tcp(address, size);
        int small = RELAY_TCP_RCVBUF;     /* inherited by the accepted sockets */
        cr_assert_eq(setsockopt(relay->listen_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0,
                     "setsockopt(SO_RCVBUF): %s", strerror(errno));
        cr_assert_eq(pthread_create(&relay->thread, NULL, relay_main, relay), 0);
        return relay;
    }
    cr_assert_eq(strncmp(target, "unix:", 5), 0, "the relay relays unix: and tcp: addresses only");
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

void link_relay_hold_before_frame(struct link_relay *relay, uint32_t type)
{
    cr_assert_eq(atomic_load(&relay->pair_count), 0, "hold before the source connects");
    atomic_store(&relay->hold_type, type);
}

bool link_relay_holding(struct link_relay *relay)
{
    return atomic_load(&relay->holding);
}

void link_relay_release(struct link_relay *relay)
{
    atomic_store(&relay->hold_type, 0);
    atomic_store(&relay->holding, false);
}

void link_relay_cut(struct link_relay *relay)
{
    atomic_store(&relay->cut, true);
}

void link_relay_cut_after(struct link_relay *relay, uint64_t bytes)
{
    atomic_store(&relay->budget, (int64_t)bytes);
}

bool link_relay_is_cut(struct link_relay *relay)
{
    return atomic_load(&relay->cut);
}

uint64_t link_relay_bytes_to_source(struct link_relay *relay)
{
    return atomic_load(&relay->to_source);
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
    if (!relay->tcp)
        unlink(relay->path);
    free(relay);
}
