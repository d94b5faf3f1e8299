/*
 * Migration transport (see transport.h).
 */
#include "migration/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <linux/tcp.h>         /* struct tcp_info with tcpi_min_rtt (glibc's lacks it) */

#include "migration/protocol.h"
#include "migration/tls.h"

#define SLICE_MS 100

static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static bool cancelled(const _Atomic bool *cancel)
{
    return cancel != NULL && atomic_load_explicit(cancel, memory_order_acquire);
}

int mig_address_parse(const char *text, struct mig_address *out, char *error, size_t error_size)
{
    memset(out, 0, sizeof(*out));
    if (text == NULL || *text == '\0') {
        snprintf(error, error_size, "empty migration address (expected unix:PATH or tcp:HOST:PORT)");
        return -1;
    }
    if (strncmp(text, "unix:", 5) == 0) {
        const char *path = text + 5;
        if (*path == '\0') {
            snprintf(error, error_size, "'%s': empty socket path", text);
            return -1;
        }
        if (strlen(path) >= sizeof(out->path)) {
            snprintf(error, error_size, "'%s': socket path longer than %zu bytes", text, sizeof(out->path) - 1);
            return -1;
        }
        out->kind = MIG_ADDRESS_UNIX;
        strcpy(out->path, path);
        return 0;
    }
    if (strncmp(text, "tcp:", 4) == 0) {
        const char *rest = text + 4;
        const char *colon;
        size_t host_length;
        if (*rest == '[') {
            const char *close = strchr(rest, ']');
            if (close == NULL || close[1] != ':') {
                snprintf(error, error_size, "'%s': expected tcp:[IPV6]:PORT", text);
                return -1;
            }
            rest++;
            host_length = (size_t)(close - rest);
            colon = close + 1;
        } else {
            colon = strrchr(rest, ':');
            if (colon == NULL) {
                snprintf(error, error_size, "'%s': expected tcp:HOST:PORT", text);
                return -1;
            }
            host_length = (size_t)(colon - rest);
        }
        const char *port = colon + 1;
        if (host_length == 0 || host_length >= sizeof(out->host)) {
            snprintf(error, error_size, "'%s': bad host", text);
            return -1;
        }
        char *end = NULL;
        long value = strtol(port, &end, 10);
        if (*port == '\0' || *end != '\0' || value < 1 || value > 65535) {
            snprintf(error, error_size, "'%s': port must be 1..65535", text);
            return -1;
        }
        out->kind = MIG_ADDRESS_TCP;
        memcpy(out->host, rest, host_length);
        out->host[host_length] = '\0';
        snprintf(out->port, sizeof(out->port), "%ld", value);
        return 0;
    }
    snprintf(error, error_size, "'%s': unknown transport (expected unix:PATH or tcp:HOST:PORT)", text);
    return -1;
}

static void tune_socket(int fd, bool tcp)
{
    int size = MIG_SOCKET_BUFFER_BYTES;
    /* Best effort (MIG_SOCKET_BUFFER_BYTES). */
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    if (tcp) {
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
}

static int tcp_listen(const struct mig_address *address, char *error, size_t error_size)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *list = NULL;
    int gai = getaddrinfo(address->host, address->port, &hints, &list);
    if (gai != 0) {
        snprintf(error, error_size, "getaddrinfo(%s:%s): %s", address->host, address->port, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    int saved = 0;
    for (struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(list);
    if (fd < 0)
        snprintf(error, error_size, "listen on tcp:%s:%s: %s", address->host, address->port, strerror(saved));
    return fd;
}

int mig_listener_open(struct mig_listener *listener, const struct mig_address *address, char *error,
                      size_t error_size)
{
    memset(listener, 0, sizeof(*listener));
    listener->kind = address->kind;
    listener->fd = -1;
    listener->unix_socket.fd = -1;
    listener->unix_socket.lock_fd = -1;
    if (address->kind == MIG_ADDRESS_TCP) {
        listener->fd = tcp_listen(address, error, error_size);
        return listener->fd >= 0 ? 0 : -1;
    }
    /* unix_listener prints the cause naming the option; error gets the
     * same cause for the caller's own message. */
    int result = unix_listener_open(&listener->unix_socket, address->path, "--incoming", "incoming");
    if (result < 0) {
        const char *why = result == -EADDRINUSE ? "another ringvm is listening there"
                          : result == -EEXIST   ? "exists and is not a socket; not replacing it"
                                                : strerror(-result);
        snprintf(error, error_size, "unix:%s: %s", address->path, why);
        return -1;
    }
    listener->fd = listener->unix_socket.fd;
    return 0;
}

void mig_listener_close(struct mig_listener *listener)
{
    if (listener->kind == MIG_ADDRESS_UNIX) {
        unix_listener_close(&listener->unix_socket);   /* closes fd too; idempotent */
    } else if (listener->fd >= 0 && close(listener->fd) != 0) {
        fprintf(stderr, "ringvm: migration: close(listening socket): %s\n", strerror(errno));
    }
    listener->fd = -1;
}

int mig_listen(const struct mig_address *address, char *error, size_t error_size)
{
    struct mig_listener listener;
    if (mig_listener_open(&listener, address, error, error_size) != 0)
        return -1;
    if (listener.kind == MIG_ADDRESS_TCP)
        return listener.fd;
    /* Hand the socket to the caller: with its fd taken out, closing the
     * unix listener releases the lock and the path but leaves the file. */
    int fd = listener.unix_socket.fd;
    listener.unix_socket.fd = -1;
    unix_listener_close(&listener.unix_socket);
    return fd;
}

/* Tells a refused peer why before closing: an ERROR frame numbered as the
 * destination's first (seq 0, where the source expects HELLO_ACK | ERROR).
 * Best effort, never blocking: ~100 bytes fit any socket buffer, and a peer
 * that is gone loses nothing it could use. */
static void tell_refused_peer(int fd, const char *message)
{
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(MIG_ERR_CONFIG, message, payload);
    uint8_t frame[MIG_HEADER_SIZE + sizeof(payload)];
    size_t total = mig_frame_encode(frame, MIG_FRAME_ERROR, 0, payload, length);
    (void)send(fd, frame, total, MSG_NOSIGNAL | MSG_DONTWAIT);
}

int mig_accept(int listen_fd, const _Atomic bool *cancel, char *error, size_t error_size)
{
    for (;;) {
        if (cancelled(cancel)) {
            snprintf(error, error_size, "cancelled while waiting for the source to connect");
            return -1;
        }
        struct pollfd p = { .fd = listen_fd, .events = POLLIN };
        int ready = poll(&p, 1, SLICE_MS);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            snprintf(error, error_size, "poll(listening socket): %s", strerror(errno));
            return -1;
        }
        if (ready == 0)
            continue;
        struct sockaddr_storage peer;
        socklen_t length = sizeof(peer);
        int fd = accept4(listen_fd, (struct sockaddr *)&peer, &length, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            snprintf(error, error_size, "accept: %s", strerror(errno));
            return -1;
        }
        if (peer.ss_family == AF_UNIX) {
            /* The same rule as the API and console sockets: the file mode
             * is the first gate, the peer's credentials the second. */
            struct ucred credentials;
            char message[160];
            int allowed = unix_listener_check_peer(fd, &credentials, message, sizeof(message));
            if (allowed < 0) {
                snprintf(error, error_size, "SO_PEERCRED of the connecting source: %s", strerror(-allowed));
                close(fd);
                return -1;
            }
            if (allowed == 0) {
                fprintf(stderr, "ringvm: migration: refused a connection from pid %d: %s\n", (int)credentials.pid,
                        message);
                tell_refused_peer(fd, message);
                close(fd);
                continue;
            }
        }
        tune_socket(fd, peer.ss_family != AF_UNIX);
        return fd;
    }
}

static int connect_one(int family, int type, int protocol, const struct sockaddr *sa, socklen_t length,
                       unsigned timeout_ms, const _Atomic bool *cancel, char *error, size_t error_size,
                       const char *name)
{
    int fd = socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
    if (fd < 0) {
        snprintf(error, error_size, "socket(%s): %s", name, strerror(errno));
        return -1;
    }
    tune_socket(fd, family != AF_UNIX);
    if (connect(fd, sa, length) == 0)
        return fd;
    if (errno != EINPROGRESS && errno != EAGAIN) {
        snprintf(error, error_size, "connect(%s): %s", name, strerror(errno));
        close(fd);
        return -1;
    }
    uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (cancelled(cancel)) {
            snprintf(error, error_size, "connect(%s): cancelled", name);
            close(fd);
            return -1;
        }
        uint64_t now = now_ms();
        if (now >= deadline) {
            snprintf(error, error_size, "connect(%s): no answer within %u ms", name, timeout_ms);
            close(fd);
            return -1;
        }
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        uint64_t wait = deadline - now < SLICE_MS ? deadline - now : SLICE_MS;
        int ready = poll(&p, 1, (int)wait);
        if (ready < 0 && errno != EINTR) {
            snprintf(error, error_size, "poll(connect %s): %s", name, strerror(errno));
            close(fd);
            return -1;
        }
        if (ready > 0) {
            int soerror = 0;
            socklen_t size = sizeof(soerror);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerror, &size) != 0)
                soerror = errno;
            if (soerror != 0) {
                snprintf(error, error_size, "connect(%s): %s", name, strerror(soerror));
                close(fd);
                return -1;
            }
            return fd;
        }
    }
}

int mig_connect(const struct mig_address *address, unsigned timeout_ms, const _Atomic bool *cancel,
                char *error, size_t error_size)
{
    char name[MIG_ADDRESS_MAX + 32];
    if (address->kind == MIG_ADDRESS_UNIX) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        strcpy(sun.sun_path, address->path);
        snprintf(name, sizeof(name), "unix:%s", address->path);
        return connect_one(AF_UNIX, SOCK_STREAM, 0, (struct sockaddr *)&sun, sizeof(sun), timeout_ms, cancel,
                           error, error_size, name);
    }
    snprintf(name, sizeof(name), "tcp:%s:%s", address->host, address->port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *list = NULL;
    int gai = getaddrinfo(address->host, address->port, &hints, &list);
    if (gai != 0) {
        snprintf(error, error_size, "getaddrinfo(%s:%s): %s", address->host, address->port, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = list; ai != NULL && fd < 0; ai = ai->ai_next)
        fd = connect_one(ai->ai_family, ai->ai_socktype, ai->ai_protocol, ai->ai_addr, ai->ai_addrlen,
                         timeout_ms, cancel, error, error_size, name);
    freeaddrinfo(list);
    return fd;
}

int mig_io_poll_readable(int fd, unsigned timeout_ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    for (;;) {
        int ready = poll(&p, 1, (int)timeout_ms);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            return -1;
        return ready > 0 ? 1 : 0;
    }
}

/* Waits for events on io->fd; 0 ready, -1 failed (message set). */
static int io_wait(struct mig_io *io, short events, uint64_t last_progress_ms, const char *what, char *error,
                   size_t error_size)
{
    for (;;) {
        if (cancelled(io->cancel)) {
            snprintf(error, error_size, "cancelled");
            return -1;
        }
        uint64_t now = now_ms();
        if (io->stall_ms != 0 && now - last_progress_ms >= io->stall_ms) {
            snprintf(error, error_size, "%s %s: no progress for %u ms (link stalled)", what,
                     io->peer ? io->peer : "peer", io->stall_ms);
            return -1;
        }
        struct pollfd p = { .fd = io->fd, .events = events };
        int ready = poll(&p, 1, SLICE_MS);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            snprintf(error, error_size, "poll(%s): %s", io->peer ? io->peer : "peer", strerror(errno));
            return -1;
        }
        if (ready > 0)
            return 0;
    }
}

int mig_io_writev(struct mig_io *io, struct iovec *iov, int iovcnt, char *error, size_t error_size)
{
    if (io->tls != NULL)
        return mig_tls_writev(io->tls, io, iov, iovcnt, error, error_size);
    uint64_t last = now_ms();
    while (iovcnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)(iovcnt > IOV_MAX ? IOV_MAX : iovcnt) };
        ssize_t sent = sendmsg(io->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (io_wait(io, POLLOUT, last, "sending to", error, error_size) != 0)
                    return -1;
                continue;
            }
            snprintf(error, error_size, "sending to %s: %s", io->peer ? io->peer : "peer", strerror(errno));
            return -1;
        }
        last = now_ms();
        size_t left = (size_t)sent;
        while (iovcnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0 && left > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

int mig_io_write(struct mig_io *io, const void *data, size_t length, char *error, size_t error_size)
{
    struct iovec iov = { .iov_base = (void *)data, .iov_len = length };
    return mig_io_writev(io, &iov, 1, error, error_size);
}

int mig_io_read(struct mig_io *io, void *data, size_t length, bool eof_ok, char *error, size_t error_size)
{
    if (io->tls != NULL)
        return mig_tls_read(io->tls, io, data, length, eof_ok, error, error_size);
    size_t done = 0;
    uint64_t last = now_ms();
    while (done < length) {
        ssize_t got = recv(io->fd, (uint8_t *)data + done, length - done, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (io_wait(io, POLLIN, last, "receiving from", error, error_size) != 0)
                    return -1;
                continue;
            }
            snprintf(error, error_size, "receiving from %s: %s", io->peer ? io->peer : "peer", strerror(errno));
            return -1;
        }
        if (got == 0) {
            if (done == 0 && eof_ok)
                return 1;
            snprintf(error, error_size, "%s closed the connection (truncated stream: %zu of %zu bytes)",
                     io->peer ? io->peer : "peer", done, length);
            return -1;
        }
        done += (size_t)got;
        last = now_ms();
    }
    return 0;
}

ssize_t mig_io_recv_some(struct mig_io *io, void *data, size_t capacity, char *error, size_t error_size)
{
    if (io->tls != NULL)
        return mig_tls_read_some(io->tls, io, data, capacity, error, error_size);
    for (;;) {
        ssize_t got = recv(io->fd, data, capacity, MSG_DONTWAIT);
        if (got >= 0)
            return got;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return MIG_IO_AGAIN;
        snprintf(error, error_size, "receiving from %s: %s", io->peer ? io->peer : "peer", strerror(errno));
        return -1;
    }
}

int mig_io_readable(const struct mig_io *io, unsigned timeout_ms)
{
    if (io->tls != NULL)
        return mig_tls_poll_readable(io->tls, timeout_ms);
    return mig_io_poll_readable(io->fd, timeout_ms);
}

void mig_io_close_write(struct mig_io *io)
{
    if (io->tls != NULL) {
        char ignored[256];
        (void)mig_tls_close(io->tls, io, ignored, sizeof(ignored));
    }
    (void)shutdown(io->fd, SHUT_WR);    /* best effort: the peer may be gone */
}

bool mig_socket_peer_gone(int fd)
{
    if (fd < 0)
        return true;
    char sink[16384];
    for (unsigned i = 0; i < 4096; i++) {
        ssize_t got = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (got == 0)
            return true;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return errno != EAGAIN && errno != EWOULDBLOCK;
        }
    }
    return false;
}

bool mig_socket_is_tcp(int fd)
{
    int domain = 0;
    socklen_t length = sizeof(domain);
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) != 0)
        return false;
    return domain == AF_INET || domain == AF_INET6;
}

void mig_socket_tcp_link(int fd, struct mig_tcp_link *link)
{
    struct tcp_info info;
    socklen_t length = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0)
        return;
    if (length >= offsetof(struct tcp_info, tcpi_rtt) + sizeof(info.tcpi_rtt))
        link->srtt_us = info.tcpi_rtt;
    if (length >= offsetof(struct tcp_info, tcpi_advmss) + sizeof(info.tcpi_advmss))
        link->advmss = info.tcpi_advmss;
    if (length >= offsetof(struct tcp_info, tcpi_min_rtt) + sizeof(info.tcpi_min_rtt))
        link->min_rtt_us = info.tcpi_min_rtt;
}

uint64_t mig_socket_unsent_bytes(int fd)
{
    if (!mig_socket_is_tcp(fd))
        return mig_socket_queued_bytes(fd);
    int unsent = 0;
    if (ioctl(fd, SIOCOUTQNSD, &unsent) != 0 || unsent < 0)
        return 0;
    return (uint64_t)unsent;
}

uint64_t mig_socket_queued_bytes(int fd)
{
    int queued = 0;
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &queued) != 0 || queued < 0)
        return 0;
    return (uint64_t)queued;
}
