/*
 * delayline: a point-to-point link with a fixed one-way delay between two
 * network namespaces, for the migration tests (tests/netns/hosts.sh delay).
 *
 * The CI kernel has no netem and no fq qdisc (docs/reliability.md), so a
 * qdisc cannot hold packets back. This program is the wire instead: it
 * creates a TUN device in each namespace, and every IP packet one side
 * sends is written to the other side's device DELAY ms after it was read.
 * Packets keep their order; when a direction holds QUEUE_PACKETS packets
 * the next one is dropped (a full router queue), which TCP treats as loss.
 *
 *   delayline --delay-ms MS NS_A DEV_A NS_B DEV_B
 *
 * It prints "ready" once both devices exist (hosts.sh then gives them
 * addresses and brings them up) and runs until killed. It moves itself into
 * NS_A, so hosts.sh's sweep of a dead test's namespaces kills it too.
 *
 * Single-threaded: the poll loop owns both queues.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define PACKET_BYTES 2048           /* TUN MTU 1500 (hosts.sh sets it) + headroom */
#define QUEUE_PACKETS 16384         /* per direction: > 1 Gbit/s x 100 ms of 1500-byte packets */

struct packet {
    uint64_t due_ns;
    uint16_t length;
    uint8_t data[PACKET_BYTES];
};

/* One direction: packets read from `from`, written to `to` when due. */
struct direction {
    int from, to;
    struct packet *queue;           /* ring of QUEUE_PACKETS */
    unsigned head, count;
    uint64_t dropped;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int open_tun_in(const char *ns, const char *dev)
{
    char path[256];
    snprintf(path, sizeof(path), "/run/netns/%s", ns);
    int ns_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) {
        fprintf(stderr, "delayline: open(%s): %s\n", path, strerror(errno));
        return -1;
    }
    if (setns(ns_fd, CLONE_NEWNET) != 0) {
        fprintf(stderr, "delayline: setns(%s): %s\n", ns, strerror(errno));
        close(ns_fd);
        return -1;
    }
    close(ns_fd);
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        fprintf(stderr, "delayline: open(/dev/net/tun): %s\n", strerror(errno));
        return -1;
    }
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    request.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(request.ifr_name, sizeof(request.ifr_name), "%s", dev);
    if (ioctl(fd, TUNSETIFF, &request) != 0) {
        fprintf(stderr, "delayline: TUNSETIFF(%s in %s): %s\n", dev, ns, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads every packet waiting on d->from into the queue. */
static void direction_read(struct direction *d, uint64_t delay_ns)
{
    for (;;) {
        struct packet scratch;
        struct packet *slot = d->count < QUEUE_PACKETS ? &d->queue[(d->head + d->count) % QUEUE_PACKETS] : &scratch;
        ssize_t n = read(d->from, slot->data, sizeof(slot->data));
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                fprintf(stderr, "delayline: read: %s\n", strerror(errno));
            return;
        }
        if (slot == &scratch) {
            d->dropped++;
            continue;
        }
        slot->length = (uint16_t)n;
        slot->due_ns = now_ns() + delay_ns;
        d->count++;
    }
}

/* Writes the packets that are due; returns ns until the next is due, or
 * -1 when the queue is empty. */
static int64_t direction_write(struct direction *d)
{
    uint64_t now = now_ns();
    while (d->count > 0) {
        struct packet *p = &d->queue[d->head];
        if (p->due_ns > now)
            return (int64_t)(p->due_ns - now);
        if (write(d->to, p->data, p->length) < 0 && errno != EAGAIN && errno != EINTR && errno != EIO)
            fprintf(stderr, "delayline: write: %s\n", strerror(errno));
        d->head = (d->head + 1) % QUEUE_PACKETS;
        d->count--;
    }
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 7 || strcmp(argv[1], "--delay-ms") != 0) {
        fprintf(stderr, "usage: delayline --delay-ms MS NS_A DEV_A NS_B DEV_B\n");
        return 2;
    }
    char *end;
    long delay_ms = strtol(argv[2], &end, 10);
    if (*argv[2] == '\0' || *end != '\0' || delay_ms < 0 || delay_ms > 10000) {
        fprintf(stderr, "delayline: --delay-ms '%s': expected 0..10000\n", argv[2]);
        return 2;
    }
    uint64_t delay_ns = (uint64_t)delay_ms * 1000000ull;
    int fd_b = open_tun_in(argv[5], argv[6]);
    int fd_a = fd_b < 0 ? -1 : open_tun_in(argv[3], argv[4]);     /* ends in NS_A */
    if (fd_a < 0 || fd_b < 0)
        return 1;
    struct direction directions[2] = {
        { .from = fd_a, .to = fd_b, .queue = calloc(QUEUE_PACKETS, sizeof(struct packet)) },
        { .from = fd_b, .to = fd_a, .queue = calloc(QUEUE_PACKETS, sizeof(struct packet)) },
    };
    if (directions[0].queue == NULL || directions[1].queue == NULL) {
        fprintf(stderr, "delayline: out of memory\n");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int64_t wait_ns = -1;
        for (int i = 0; i < 2; i++) {
            int64_t next = direction_write(&directions[i]);
            if (next >= 0 && (wait_ns < 0 || next < wait_ns))
                wait_ns = next;
        }
        struct pollfd fds[2] = { { .fd = fd_a, .events = POLLIN }, { .fd = fd_b, .events = POLLIN } };
        struct timespec timeout = { .tv_sec = wait_ns / 1000000000, .tv_nsec = wait_ns % 1000000000 };
        if (ppoll(fds, 2, wait_ns < 0 ? NULL : &timeout, NULL) < 0 && errno != EINTR) {
            fprintf(stderr, "delayline: ppoll: %s\n", strerror(errno));
            return 1;
        }
        if (fds[0].revents & POLLIN)
            direction_read(&directions[0], delay_ns);
        if (fds[1].revents & POLLIN)
            direction_read(&directions[1], delay_ns);
    }
}
