/*
 * Migration transport: "unix:PATH" and "tcp:HOST:PORT" addresses, listen /
 * accept / connect, and blocking-with-deadline I/O on non-blocking sockets.
 *
 * Every wait polls in slices of at most 100 ms so a cancel flag is seen
 * promptly, and fails when no byte moved for stall_ms (a stalled link fails
 * instead of hanging). Errors are written to the caller's buffer naming
 * what failed and why.
 *
 * Threads: a struct mig_conn is used by one thread at a time for sending
 * and one for receiving (the fd is shared; send and recv are independent).
 */
#ifndef RINGVM_MIGRATION_TRANSPORT_H
#define RINGVM_MIGRATION_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "vmm/unix_listener.h"

#define MIG_ADDRESS_MAX 256

enum mig_address_kind { MIG_ADDRESS_UNIX = 0, MIG_ADDRESS_TCP };

struct mig_address {
    enum mig_address_kind kind;
    char path[108];             /* unix */
    char host[MIG_ADDRESS_MAX]; /* tcp */
    char port[16];
};

/* Parses "unix:PATH" or "tcp:HOST:PORT" ("tcp:[::1]:4444" for IPv6).
 * Returns 0 or -1 with a message. */
int mig_address_parse(const char *text, struct mig_address *out, char *error, size_t error_size);

/*
 * The destination's listening socket. unix:PATH follows the rules of every
 * ringvm socket (vmm/unix_listener.h): created mode 0600 whatever the
 * umask; a path a live ringvm listens on is refused (the path lock is held
 * until mig_listener_close) and never unlinked; a stale socket file is
 * replaced; any other file is refused; on close only our own socket file
 * is removed. tcp:HOST:PORT listens with SO_REUSEADDR. Peers are checked by
 * mig_accept.
 *
 * Ownership: the thread that opened it; fd may be handed to another
 * thread to accept on (migration_incoming_run_fd takes a dup of it).
 */
struct mig_listener {
    enum mig_address_kind kind;
    int fd;                             /* listening, SOCK_CLOEXEC; -1 = closed */
    struct unix_listener unix_socket;   /* kind UNIX: the lock, path and file identity */
};

/* Returns 0, or -1 with the cause in error (for unix:PATH the cause is
 * also printed to stderr, naming "--incoming"); nothing is left open. */
int mig_listener_open(struct mig_listener *listener, const struct mig_address *address, char *error,
                      size_t error_size);
/* Closes the socket, removes our socket file, releases the path lock.
 * Safe after a failed open and twice. */
void mig_listener_close(struct mig_listener *listener);

/* A listening socket whose caller owns the path (tests and benchmarks
 * pick unique paths and unlink them): mig_listener_open's rules at the
 * time of the call, but the path lock is released on return and the file
 * is left for the caller. Returns the fd or -1. ringvm --incoming uses
 * mig_listener_open. */
int mig_listen(const struct mig_address *address, char *error, size_t error_size);

/* Waits for one connection; polls *cancel (may be NULL) every 100 ms.
 * A Unix peer must have this process's effective uid or be root
 * (SO_PEERCRED): another is told why in an ERROR frame (seq 0, code 1,
 * "permission denied: uid U is neither ringvm's uid V nor root"), closed,
 * logged to stderr, and the wait goes on. Returns the connected
 * (non-blocking) fd or -1 (error says why, "cancelled ..." when *cancel
 * became true). */
int mig_accept(int listen_fd, const _Atomic bool *cancel, char *error, size_t error_size);
/* Connects within timeout_ms. Returns the connected (non-blocking) fd or -1. */
int mig_connect(const struct mig_address *address, unsigned timeout_ms, const _Atomic bool *cancel,
                char *error, size_t error_size);

struct mig_tls_session;

/*
 * One side's view of the stream. The one place where plaintext and TLS
 * part: with tls set, every mig_io_* call below goes through the TLS
 * session (migration/tls.h) and nothing else may read or write fd; with
 * tls NULL they use fd directly. Callers never test which.
 * Ownership: the struct is the caller's (copies are fine); the session is
 * owned by whoever made it (source / destination) and outlives every io
 * that points to it.
 */
struct mig_io {
    int fd;
    unsigned stall_ms;              /* fail when nothing moved this long */
    const _Atomic bool *cancel;     /* may be NULL */
    const char *peer;               /* for messages: "destination" / "source" */
    struct mig_tls_session *tls;    /* NULL: plaintext */
};

/* Sends all iov bytes (iov is modified). 0, or -1 with a message. */
int mig_io_writev(struct mig_io *io, struct iovec *iov, int iovcnt, char *error, size_t error_size);
int mig_io_write(struct mig_io *io, const void *data, size_t length, char *error, size_t error_size);
/* Reads exactly length bytes. 0; 1 on a clean EOF before the first byte
 * (when eof_ok); -1 with a message otherwise (EOF mid-way = truncated). */
int mig_io_read(struct mig_io *io, void *data, size_t length, bool eof_ok, char *error, size_t error_size);
/* What is there now, without waiting for the first byte: the count (1 ..
 * capacity), 0 at the end of the stream, MIG_IO_AGAIN when nothing is
 * there yet, -1 with a message. Under TLS a record that has begun to
 * arrive is waited for (at most io->stall_ms in all, cancel polled). */
#define MIG_IO_AGAIN (-2)
ssize_t mig_io_recv_some(struct mig_io *io, void *data, size_t capacity, char *error, size_t error_size);
/* Waits up to timeout_ms until a read would find bytes (under TLS: bytes
 * already decrypted or buffered count too): 1 readable, 0 not, -1 error. */
int mig_io_readable(const struct mig_io *io, unsigned timeout_ms);
/* Bytes written to a connected socket that its peer has not taken yet
 * (SIOCOUTQ: a unix socket's unread bytes, TCP's unsent and
 * unacknowledged); 0 when there are none or the kernel cannot tell
 * (fd < 0, not a socket). */
uint64_t mig_socket_queued_bytes(int fd);
/* Of those, the bytes the kernel has not handed to the network yet:
 * TCP's unsent (SIOCOUTQNSD: bytes in flight are left out, they are ahead
 * of anything sent later on any connection over the same link); a unix
 * socket's unread bytes (SIOCOUTQ, as above). 0 when none or unknown. */
uint64_t mig_socket_unsent_bytes(int fd);
/* Whether fd is a TCP socket (AF_INET or AF_INET6); false for unix
 * sockets and whatever the kernel cannot tell. */
/* Every migration socket's SO_SNDBUF and SO_RCVBUF (the kernel doubles
 * them): larger buffers mean fewer wake-ups per MiB. */
#define MIG_SOCKET_BUFFER_BYTES (4u << 20)

bool mig_socket_is_tcp(int fd);
/* What TCP_INFO says of a connection's link; a field the kernel does not
 * report (or a socket that is not TCP) is left as the caller set it. */
struct mig_tcp_link {
    uint32_t srtt_us;       /* tcpi_rtt: the smoothed round trip */
    uint32_t min_rtt_us;    /* tcpi_min_rtt: the smallest, over minutes (the handshake's included) */
    uint32_t advmss;        /* tcpi_advmss: the largest segment this side takes */
};
void mig_socket_tcp_link(int fd, struct mig_tcp_link *link);
/* Ends this side's sending: TLS close_notify (best effort, bounded by
 * io->stall_ms), then shutdown(SHUT_WR). The fd stays open for reading. */
void mig_io_close_write(struct mig_io *io);
/* Whether the peer of a connected stream socket is gone (its process
 * ended, or it closed the connection): reads and drops what is buffered
 * (at most 64 MiB, without waiting) and looks for the end of the stream
 * or a reset. false: it is still there, only silent (a broken or stalled
 * link looks like this). For post-copy, where the two cases differ. */
bool mig_socket_peer_gone(int fd);
/* Waits up to timeout_ms for the fd to become readable: 1 readable, 0 not,
 * -1 error. Plaintext only: a stream's reader uses mig_io_readable. */
int mig_io_poll_readable(int fd, unsigned timeout_ms);

#endif
