/* See stream_window.h. */
#include "migration/stream_window.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/tcp.h>

#include "migration/transport.h"

static atomic_uint configured_budget_us = STREAM_WINDOW_DEFAULT_BUDGET_US;

void stream_window_set_budget_us(unsigned budget_us)
{
    atomic_store_explicit(&configured_budget_us, budget_us, memory_order_relaxed);
}

unsigned stream_window_budget_us(void)
{
    return atomic_load_explicit(&configured_budget_us, memory_order_relaxed);
}

uint32_t stream_window_bytes(uint64_t rate_bytes_per_s, uint32_t min_rtt_us, unsigned budget_us, uint32_t mss)
{
    uint64_t floor = (uint64_t)mss * STREAM_WINDOW_MIN_SEGMENTS;
    if (floor < STREAM_WINDOW_MIN_BYTES)
        floor = STREAM_WINDOW_MIN_BYTES;
    if (floor > STREAM_WINDOW_MAX_BYTES)
        floor = STREAM_WINDOW_MAX_BYTES;
    /* 2 x the bandwidth-delay product: the window lets the stream grow
     * (as BBR's cwnd gain of 2 does) while the budget bounds what of it
     * queues at the bottleneck once the link is full. */
    unsigned __int128 bytes = (unsigned __int128)rate_bytes_per_s *
                              (2u * (uint64_t)min_rtt_us + budget_us) / 1000000u;
    if (bytes < floor)
        return (uint32_t)floor;
    if (bytes > STREAM_WINDOW_MAX_BYTES)
        return STREAM_WINDOW_MAX_BYTES;
    return (uint32_t)bytes;
}

void stream_window_init(struct stream_window *w)
{
    memset(w, 0, sizeof(*w));
    w->fd = -1;
}

static bool set_receive_buffer(int fd, uint32_t bytes, const char *why)
{
    int value = (int)bytes;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, sizeof(value)) != 0) {
        fprintf(stderr, "ringvm: migration: setsockopt(SO_RCVBUF, %u bytes) %s: %s\n", bytes, why, strerror(errno));
        return false;
    }
    return true;
}

static bool set_window_clamp(int fd, uint32_t bytes, const char *why)
{
    int value = (int)bytes;
    if (setsockopt(fd, IPPROTO_TCP, TCP_WINDOW_CLAMP, &value, sizeof(value)) != 0) {
        fprintf(stderr, "ringvm: migration: setsockopt(TCP_WINDOW_CLAMP, %u bytes) %s: %s\n", bytes, why,
                strerror(errno));
        return false;
    }
    return true;
}

void stream_window_start_small(int fd)
{
    if (stream_window_budget_us() == 0 || !mig_socket_is_tcp(fd))
        return;
    set_receive_buffer(fd, STREAM_WINDOW_START_BUFFER_BYTES, "before the handshake");
}

void stream_window_open_fully(int fd)
{
    if (stream_window_budget_us() == 0 || !mig_socket_is_tcp(fd))
        return;
    if (!set_receive_buffer(fd, MIG_SOCKET_BUFFER_BYTES, "for pre-copy's stream"))
        return;
    /* The kernel keeps the clamp the small buffer gave until a reset;
     * lifting it lets the window grow with the new buffer now. */
    set_window_clamp(fd, 2 * MIG_SOCKET_BUFFER_BYTES, "for pre-copy's stream");
}

/* The clamp, set every time (the kernel resets it, stream_window.h); the
 * receive buffer raised to hold it. */
static void set_clamp(struct stream_window *w, uint32_t bytes)
{
    if (bytes > w->buffer) {
        if (!set_receive_buffer(w->fd, bytes, "for the post-copy stream's window")) {
            w->fd = -1;
            return;
        }
        w->buffer = bytes;
    }
    if (!set_window_clamp(w->fd, bytes, "on the post-copy stream (it runs unclamped)")) {
        w->fd = -1;
        return;
    }
    w->clamp = bytes;
}

/* TCP_INFO's minimum round trip (a minimum over minutes, the
 * handshake's included: the link without the stream's own queue) and
 * advertised MSS into w; those it cannot read stay as they were. */
static void read_link(struct stream_window *w)
{
    struct mig_tcp_link link = { .min_rtt_us = w->min_rtt_us, .advmss = w->mss };
    mig_socket_tcp_link(w->fd, &link);
    w->min_rtt_us = link.min_rtt_us;
    w->mss = link.advmss;
}

void stream_window_update(struct stream_window *w, int fd, uint64_t now_ns, uint64_t bytes)
{
    if (fd < 0)
        return;
    if (fd != w->fd) {
        /* A new connection (the first call, or recovery's): start low, the
         * rate term raises it within a few intervals on a fatter link. */
        stream_window_init(w);
        w->budget_us = stream_window_budget_us();
        if (w->budget_us == 0 || !mig_socket_is_tcp(fd))
            return;
        w->fd = fd;
        w->at_ns = now_ns;
        w->at_bytes = bytes;
        int buffer = 0;
        socklen_t length = sizeof(buffer);
        if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, &length) == 0 && buffer > 0)
            w->buffer = (uint32_t)buffer / 2;     /* the kernel reports twice what was set */
        read_link(w);
        set_clamp(w, stream_window_bytes(0, w->min_rtt_us, w->budget_us, w->mss));
        return;
    }
    if (now_ns - w->at_ns < STREAM_WINDOW_INTERVAL_NS)
        return;
    read_link(w);
    w->rate_bytes_per_s = bytes > w->at_bytes ? (bytes - w->at_bytes) * 1000000000ull / (now_ns - w->at_ns) : 0;
    w->at_ns = now_ns;
    w->at_bytes = bytes;
    set_clamp(w, stream_window_bytes(w->rate_bytes_per_s, w->min_rtt_us, w->budget_us, w->mss));
}
