/*
 * The post-copy stream's window (migration/stream_window.h) and the
 * bytes of a socket not yet sent (mig_socket_unsent_bytes), which decide
 * how long an urgent page can wait behind the background stream (issue
 * 17). No KVM: loopback TCP and unix sockets.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/stream_window.h"
#include "migration/transport.h"
#include "tests/harness.h"

Test(stream_window, bytes_are_twice_the_round_trip_plus_the_queue_budget_at_the_rate)
{
    cr_assert_eq(stream_window_bytes(0, 0, 250, 1448), STREAM_WINDOW_MIN_BYTES);
    cr_assert_eq(stream_window_bytes(0, 100000, 250, 1448), STREAM_WINDOW_MIN_BYTES);
    /* 1 Gbit/s of payload over a 30 µs link: the budget dominates. */
    cr_assert_eq(stream_window_bytes(122683392, 30, 250, 1448), 38031);
    cr_assert_eq(stream_window_bytes(122683392, 30, 500, 1448), 68702);
    cr_assert_eq(stream_window_bytes(50000000, 30, 250, 1448), STREAM_WINDOW_MIN_BYTES);
    /* 10 Gbit/s: 1.25 GB/s x (60 + 250) µs; over 1 ms round trips, 2.25 ms. */
    cr_assert_eq(stream_window_bytes(1250000000, 30, 250, 1448), 387500);
    cr_assert_eq(stream_window_bytes(1250000000, 1000, 250, 1448), 2812500);
    cr_assert_eq(stream_window_bytes(1000000000, 30, 0, 1448), 60000, "no budget: twice the bandwidth-delay product");
    cr_assert_eq(stream_window_bytes(100000000000ull, 1000, 250, 1448), STREAM_WINDOW_MAX_BYTES);
    cr_assert_eq(stream_window_bytes(UINT64_MAX, UINT32_MAX, STREAM_WINDOW_MAX_BUDGET_US, 1448), STREAM_WINDOW_MAX_BYTES);
    /* Never below four segments: loopback's are 64 KiB. */
    cr_assert_eq(stream_window_bytes(0, 0, 250, 65483), 4 * 65483);
    cr_assert_eq(stream_window_bytes(1250000000, 30, 250, 65483), 387500);
    cr_assert_eq(stream_window_bytes(0, 0, 250, UINT32_MAX), STREAM_WINDOW_MAX_BYTES);
}

/* A connected loopback TCP pair: *client and *server (accepted). */
static void tcp_pair(int *client, int *server, int server_rcvbuf)
{
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(listener, 0, "socket: %s", strerror(errno));
    if (server_rcvbuf > 0)      /* inherited by the accepted socket, before the handshake sizes the window */
        cr_assert_eq(setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &server_rcvbuf, sizeof(server_rcvbuf)), 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t length = sizeof(address);
    cr_assert_eq(bind(listener, (struct sockaddr *)&address, sizeof(address)), 0, "bind: %s", strerror(errno));
    cr_assert_eq(listen(listener, 1), 0);
    cr_assert_eq(getsockname(listener, (struct sockaddr *)&address, &length), 0);
    *client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(*client, (struct sockaddr *)&address, sizeof(address)), 0, "connect: %s", strerror(errno));
    *server = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(*server, 0, "accept: %s", strerror(errno));
    close(listener);
}

static int window_clamp(int fd)
{
    int value = -1;
    socklen_t length = sizeof(value);
    cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_WINDOW_CLAMP, &value, &length), 0);
    return value;
}

Test(stream_window, clamps_a_tcp_stream_from_its_rate_and_round_trip)
{
    int client, server;
    tcp_pair(&client, &server, 0);
    struct stream_window w;
    stream_window_init(&w);
    uint64_t t0 = 1000000000ull;
    stream_window_update(&w, server, t0, 4096);
    cr_assert_eq(w.fd, server);
    cr_assert_gt(w.mss, 0, "the segment size read from TCP_INFO");
    uint32_t floor = stream_window_bytes(0, w.min_rtt_us, STREAM_WINDOW_DEFAULT_BUDGET_US, w.mss);
    cr_assert_geq(floor, 4 * w.mss);
    cr_assert_eq(w.clamp, floor, "a new connection starts at the floor");
    cr_assert_eq(window_clamp(server), (int)floor);
    /* Within the interval: nothing changes. */
    stream_window_update(&w, server, t0 + STREAM_WINDOW_INTERVAL_NS - 1, 1u << 30);
    cr_assert_eq(w.clamp, floor);
    cr_assert_eq(w.at_bytes, 4096);
    /* 50 ms later, 62.5 MB more: 1.25 GB/s. */
    stream_window_update(&w, server, t0 + STREAM_WINDOW_INTERVAL_NS, 4096 + 62500000);
    cr_assert_eq(w.rate_bytes_per_s, 1250000000ull);
    cr_assert_eq(w.clamp, stream_window_bytes(1250000000ull, w.min_rtt_us, STREAM_WINDOW_DEFAULT_BUDGET_US, w.mss),
                 "%u for min RTT %u us", w.clamp,
                 w.min_rtt_us);
    cr_assert_geq(w.clamp, 312500u, "at least rate x budget");
    cr_assert_eq(window_clamp(server), (int)w.clamp);
    /* The stream stops: back to the floor. */
    stream_window_update(&w, server, t0 + 2 * STREAM_WINDOW_INTERVAL_NS, 4096 + 62500000);
    cr_assert_eq(w.rate_bytes_per_s, 0);
    cr_assert_eq(window_clamp(server), (int)floor);
    /* A new connection (recovery): starts over at the floor. */
    int client2, server2;
    tcp_pair(&client2, &server2, 0);
    stream_window_update(&w, server2, t0 + 3 * STREAM_WINDOW_INTERVAL_NS, 0);
    cr_assert_eq(w.fd, server2);
    cr_assert_eq(window_clamp(server2), (int)stream_window_bytes(0, w.min_rtt_us, STREAM_WINDOW_DEFAULT_BUDGET_US, w.mss));
    close(client);
    close(server);
    close(client2);
    close(server2);
}

Test(stream_window, leaves_a_unix_stream_alone)
{
    int pair[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    struct stream_window w;
    stream_window_init(&w);
    stream_window_update(&w, pair[0], 1, 0);
    stream_window_update(&w, pair[0], 1 + STREAM_WINDOW_INTERVAL_NS, 1u << 30);
    cr_assert_eq(w.fd, -1);
    cr_assert_eq(w.clamp, 0);
    stream_window_update(&w, -1, 1, 0);
    cr_assert_eq(w.fd, -1);
    close(pair[0]);
    close(pair[1]);
}

Test(stream_window, a_budget_of_zero_leaves_tcp_unclamped)
{
    int client, server;
    tcp_pair(&client, &server, 0);
    int before = window_clamp(server);
    stream_window_set_budget_us(0);
    struct stream_window w;
    stream_window_init(&w);
    stream_window_update(&w, server, 1, 0);
    stream_window_update(&w, server, 1 + STREAM_WINDOW_INTERVAL_NS, 1u << 30);
    stream_window_set_budget_us(STREAM_WINDOW_DEFAULT_BUDGET_US);
    cr_assert_eq(w.fd, -1);
    cr_assert_eq(w.clamp, 0);
    cr_assert_eq(window_clamp(server), before);
    close(client);
    close(server);
}

static int receive_buffer(int fd)
{
    int value = -1;
    socklen_t length = sizeof(value);
    cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, &length), 0);
    return value;
}

static uint32_t receive_ssthresh(int fd)
{
    struct tcp_info info;
    socklen_t length = sizeof(info);
    memset(&info, 0, sizeof(info));
    cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length), 0);
    return info.tcpi_rcv_ssthresh;     /* the most the window may grow to */
}

/* `bytes` from client to server, read as they come. */
static void stream_bytes(int client, int server, size_t bytes)
{
    static char buffer[65536];
    size_t sent = 0, received = 0;
    while (received < bytes) {
        if (sent < bytes) {
            size_t chunk = bytes - sent < sizeof(buffer) ? bytes - sent : sizeof(buffer);
            ssize_t n = send(client, buffer, chunk, MSG_DONTWAIT);
            if (n > 0)
                sent += (size_t)n;
            else
                cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "send: %s", strerror(errno));
        }
        ssize_t n = recv(server, buffer, sizeof(buffer), sent < bytes ? MSG_DONTWAIT : 0);
        if (n > 0)
            received += (size_t)n;
        else
            cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "recv: %s", strerror(errno));
    }
}

static int rmem_max(void)
{
    FILE *file = fopen("/proc/sys/net/core/rmem_max", "r");
    cr_assert_not_null(file);
    int value = 0;
    cr_assert_eq(fscanf(file, "%d", &value), 1);
    fclose(file);
    return value;
}

/* A destination offering post-copy accepts with a small receive buffer:
 * the window the kernel may advertise stays small through the handshake
 * and any data (the kernel resets a bare TCP_WINDOW_CLAMP, stream_window.h),
 * until pre-copy's first pass opens it to the usual 4 MiB. */
Test(stream_window, a_post_copy_destination_starts_small_and_pre_copy_opens_it)
{
    int client, server;
    int full = (int)MIG_SOCKET_BUFFER_BYTES;
    tcp_pair(&client, &server, full);
    stream_window_start_small(server);
    cr_assert_eq(receive_buffer(server), 2 * (int)STREAM_WINDOW_START_BUFFER_BYTES, "the kernel doubles SO_RCVBUF");
    stream_bytes(client, server, 1u << 20);
    cr_assert_leq(receive_ssthresh(server), 2 * STREAM_WINDOW_START_BUFFER_BYTES,
                  "the window may grow to %u bytes after 1 MiB", receive_ssthresh(server));
    stream_window_open_fully(server);
    int expected = 2 * (full < rmem_max() ? full : rmem_max());
    cr_assert_eq(receive_buffer(server), expected);
    stream_bytes(client, server, 8u << 20);
    cr_assert_gt(receive_ssthresh(server), 4 * STREAM_WINDOW_START_BUFFER_BYTES,
                 "the window stayed at %u bytes after pre-copy opened it", receive_ssthresh(server));
    close(client);
    close(server);
}

/* In post-copy the receive buffer follows the clamp up, never down (a
 * buffer below what is in flight drops it), and the clamp is set again at
 * every re-size even when unchanged (the kernel may have reset it). */
Test(stream_window, the_receive_buffer_grows_with_the_clamp_and_never_shrinks)
{
    int client, server;
    tcp_pair(&client, &server, (int)MIG_SOCKET_BUFFER_BYTES);
    stream_window_start_small(server);
    struct stream_window w;
    stream_window_init(&w);
    uint64_t t0 = 1000000000ull;
    stream_window_update(&w, server, t0, 0);
    uint32_t floor = w.clamp;
    cr_assert_eq(w.buffer, floor > STREAM_WINDOW_START_BUFFER_BYTES ? floor : STREAM_WINDOW_START_BUFFER_BYTES);
    /* The kernel caps SO_RCVBUF at net.core.rmem_max (212992 by default). */
    int cap = rmem_max();
    cr_assert_geq(receive_buffer(server), 2 * ((int)floor < cap ? (int)floor : cap));
    /* 1.25 GB/s: a window of hundreds of KiB, the buffer raised to it. */
    stream_window_update(&w, server, t0 + STREAM_WINDOW_INTERVAL_NS, 62500000);
    uint32_t large = w.clamp;
    cr_assert_gt(large, floor);
    cr_assert_eq(w.buffer, large);
    int large_buffer = 2 * ((int)large < cap ? (int)large : cap);
    cr_assert_eq(receive_buffer(server), large_buffer);
    /* The stream stops: the clamp falls back, the buffer stays. */
    stream_window_update(&w, server, t0 + 2 * STREAM_WINDOW_INTERVAL_NS, 62500000);
    cr_assert_eq(w.clamp, floor);
    cr_assert_eq(window_clamp(server), (int)floor);
    cr_assert_eq(receive_buffer(server), large_buffer);
    /* Reset behind our back, set again at the next re-size. */
    int reset = 1 << 20;
    cr_assert_eq(setsockopt(server, IPPROTO_TCP, TCP_WINDOW_CLAMP, &reset, sizeof(reset)), 0);
    stream_window_update(&w, server, t0 + 3 * STREAM_WINDOW_INTERVAL_NS, 62500000);
    cr_assert_eq(window_clamp(server), (int)floor);
    close(client);
    close(server);
}

struct unsent_wait {
    int fd;
    uint64_t at_most;
};

static bool unsent_at_most(void *argument)
{
    const struct unsent_wait *wait = argument;
    return mig_socket_unsent_bytes(wait->fd) <= wait->at_most;
}

Test(stream_window, unsent_bytes_leave_out_what_tcp_has_in_flight)
{
    cr_assert_eq(mig_socket_unsent_bytes(-1), 0);
    /* unix: every unread byte is "unsent" (no network between). */
    int pair[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    char bytes[1000];
    memset(bytes, 7, sizeof(bytes));
    cr_assert_eq(write(pair[0], bytes, sizeof(bytes)), (ssize_t)sizeof(bytes));
    cr_assert_geq(mig_socket_unsent_bytes(pair[0]), sizeof(bytes));
    cr_assert_eq(mig_socket_unsent_bytes(pair[0]), mig_socket_queued_bytes(pair[0]));
    cr_assert_eq(read(pair[1], bytes, sizeof(bytes)), (ssize_t)sizeof(bytes));
    cr_assert_eq(mig_socket_unsent_bytes(pair[0]), 0);
    close(pair[0]);
    close(pair[1]);

    /* TCP: a peer that reads nothing through a small window. What fills the
     * window is sent (in flight, or acknowledged and waiting in the peer);
     * the rest waits unsent in the sender, and SIOCOUTQ counts both. */
    int client, server;
    tcp_pair(&client, &server, 4096);
    cr_assert_eq(fcntl(client, F_SETFL, O_NONBLOCK), 0);
    static char chunk[64 << 10];
    uint64_t written = 0;
    for (;;) {
        ssize_t n = write(client, chunk, sizeof(chunk));
        if (n < 0) {
            cr_assert(errno == EAGAIN, "write: %s", strerror(errno));
            break;
        }
        written += (uint64_t)n;
    }
    uint64_t unsent = mig_socket_unsent_bytes(client), queued = mig_socket_queued_bytes(client);
    cr_assert_gt(unsent, 0, "the window is full: bytes wait unsent");
    cr_assert_leq(unsent, queued);
    cr_assert_leq(queued, written);
    /* The peer reads everything: nothing stays unsent. */
    uint64_t read_total = 0;
    struct unsent_wait wait = { .fd = client, .at_most = 0 };
    while (read_total < written) {
        ssize_t n = read(server, chunk, sizeof(chunk));
        cr_assert_gt(n, 0, "read: %s", n < 0 ? strerror(errno) : "closed");
        read_total += (uint64_t)n;
    }
    cr_assert(harness_wait_until(unsent_at_most, &wait, 5000), "still %" PRIu64 " bytes unsent",
              mig_socket_unsent_bytes(client));
    close(client);
    close(server);
}
