/*
 * The destination's bound on the post-copy stream's bytes in the network
 * (issue 17: a fault's page must not wait behind the background stream).
 *
 * Over TCP the background stream and the urgent channel share the link's
 * queues: a bottleneck (a switch port, the tbf of tests/netns/hosts.sh)
 * holds whatever the stream's congestion window lets into it, and an urgent
 * page waits behind all of it (BBR kept 136 KiB-1.2 MiB there on the
 * 1 Gbit/s test link: 1-10 ms). During post-copy the destination clamps
 * the stream's receive window (TCP_WINDOW_CLAMP), which bounds the
 * stream's unacknowledged bytes, so the bottleneck queue holds at most
 * about the budget (STREAM_WINDOW_DEFAULT_BUDGET_US, 250 µs) of the
 * stream at its current rate.
 * The window still exceeds the bandwidth-delay product by that budget, so
 * the stream keeps the link busy and can grow (docs/architecture.md,
 * "The stream's window during post-copy").
 *
 * The clamp alone does not hold on recent kernels (this 6.18 host): it resets
 * TCP_WINDOW_CLAMP to what the receive buffer allows whenever its
 * bytes-to-memory ratio of arriving packets changes (tcp_measure_rcv_mss),
 * and a window already advertised is never taken back. With the 4 MiB
 * buffer every migration socket gets, a post-copy destination had
 * advertised ~4 MiB before its first clamp, and the stream's first tens of
 * milliseconds filled the bottleneck with up to 460 KiB (the urgent pages
 * of those milliseconds waited 2-7 ms). So the receive buffer of a
 * destination that offers post-copy starts small
 * (stream_window_start_small, before the handshake) and is opened when
 * pre-copy's page data begins (stream_window_open_fully); in post-copy it
 * grows with the clamp and never shrinks (a smaller buffer than the bytes
 * already in flight drops them), while the clamp itself is set again at
 * every re-size.
 *
 * Ownership: a struct stream_window belongs to the incoming thread, which
 * alone calls these functions.
 */
#ifndef RINGVM_MIGRATION_STREAM_WINDOW_H
#define RINGVM_MIGRATION_STREAM_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

#define STREAM_WINDOW_MIN_BYTES (16u << 10)         /* never below (and where it starts): 4 pages */
/* SO_RCVBUF before the handshake (the kernel doubles it; the advertised
 * window stays under ~30 KiB): the probe's and the switch's frames pass in
 * a round trip or two. */
#define STREAM_WINDOW_START_BUFFER_BYTES (16u << 10)
#define STREAM_WINDOW_MAX_BYTES (32u << 20)
#define STREAM_WINDOW_DEFAULT_BUDGET_US 250u        /* of the stream queued ahead of an urgent page */
#define STREAM_WINDOW_MAX_BUDGET_US 100000u
#define STREAM_WINDOW_INTERVAL_NS 50000000ull       /* re-sized at most this often */

/* The budget (ringvm --postcopy-queue-budget), process-wide: set once at
 * start, before any migration; 0 = no clamp. */
void stream_window_set_budget_us(unsigned budget_us);
unsigned stream_window_budget_us(void);

/* The window for a stream arriving at rate_bytes_per_s over a link whose
 * minimum round trip is min_rtt_us and whose segments carry at most mss
 * bytes: rate x (2 x min_rtt + budget), at least STREAM_WINDOW_MIN_BYTES
 * and STREAM_WINDOW_MIN_SEGMENTS segments, at most STREAM_WINDOW_MAX_BYTES.
 * (A window below a few segments stalls TCP: its sender waits for the
 * window to take a full segment, or for the persist timer. Loopback's
 * segments are 64 KiB.) Pure. */
#define STREAM_WINDOW_MIN_SEGMENTS 4u
uint32_t stream_window_bytes(uint64_t rate_bytes_per_s, uint32_t min_rtt_us, unsigned budget_us, uint32_t mss);

/* A connection just accepted by a destination that offers post-copy: its
 * receive buffer to STREAM_WINDOW_START_BUFFER_BYTES, so the kernel
 * advertises no large window before post-copy's clamp or pre-copy's data.
 * Nothing for a unix socket or a budget of 0. Best effort: a failing
 * setsockopt is reported on stderr and the buffer stays as it was. */
void stream_window_start_small(int fd);
/* Pre-copy's page data begins on fd: the buffer back to
 * MIG_SOCKET_BUFFER_BYTES and the clamp lifted (today's window). No-op
 * where stream_window_start_small did nothing. */
void stream_window_open_fully(int fd);

struct stream_window {
    int fd;                     /* the clamped connection; -1: none (not TCP, or not started) */
    uint32_t buffer;            /* SO_RCVBUF as last set or read (the kernel's value / 2); only grows */
    uint64_t at_ns;             /* the last re-size: time and the stream's bytes then */
    uint64_t at_bytes;
    uint32_t clamp;             /* bytes, as set; 0 = none set */
    uint32_t min_rtt_us;        /* TCP_INFO's tcpi_min_rtt at the last re-size */
    uint32_t mss;               /* TCP_INFO's tcpi_advmss: the largest segment this side takes */
    uint64_t rate_bytes_per_s;  /* the stream's rate over the last interval */
    unsigned budget_us;         /* stream_window_budget_us() when the connection was first seen */
};

void stream_window_init(struct stream_window *w);
/* Called with the main connection and the bytes received on it so far,
 * at the switch (before the stream starts) and at least every
 * STREAM_WINDOW_INTERVAL_NS during post-copy: the first call on a TCP
 * connection (again after recovery gives a new fd) clamps to
 * STREAM_WINDOW_MIN_BYTES, later ones re-size from the rate since the last
 * and set the clamp again (the kernel may have reset it). The receive
 * buffer is raised to the clamp when it is smaller. A unix socket, or a
 * budget of 0, is left alone. A failing setsockopt is reported on stderr
 * once per connection; the stream runs unclamped then. */
void stream_window_update(struct stream_window *w, int fd, uint64_t now_ns, uint64_t bytes);

#endif
