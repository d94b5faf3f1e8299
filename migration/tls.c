/*
 * TLS 1.3 channel for the migration stream (see tls.h).
 *
 * GnuTLS does the protocol and the cryptography; this file does the
 * transport under it (custom push/pull functions on the non-blocking fd,
 * with ringvm's stall timeout, handshake deadline and cancel flag) and
 * turns failures into messages an operator can act on.
 *
 * Why our own push/pull: GnuTLS hands every record to the socket on its own
 * (one write per 16 KiB record) and reads each record with two reads
 * (header, then body). Here writes are combined into up to 256 KiB per
 * send and reads are done ahead into a 256 KiB buffer, so a 1 MiB frame
 * costs a handful of system calls instead of ~130. The waits also get the
 * same rules as migration/transport.c (100 ms slices, cancel, stall).
 */
#include "migration/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "migration/protocol.h"

#define TLS_SLICE_MS 100
/* Write-combining and read-ahead buffer per session; overridable with -D
 * for A/B builds of bench/tls-throughput (docs/benchmarks.md). */
#ifndef TLS_BUFFER_BYTES
#define TLS_BUFFER_BYTES (256u << 10)
#endif
#define TLS_DEFAULT_HANDSHAKE_MS 10000u
#define TLS_FILE_MAX (1u << 20)
/* Enough of a plaintext peer's first bytes to decode its ERROR frame. */
#define TLS_FIRST_BYTES (MIG_HEADER_SIZE + 4 + MIG_ERROR_MAX_MESSAGE)

/* Read-only after loading; shared by sessions (GnuTLS allows read-only
 * credentials in several threads). Owned by whoever loaded it. */
struct mig_tls_credentials {
    enum mig_tls_kind kind;
    enum mig_tls_role role;
    gnutls_psk_client_credentials_t psk_client;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_certificate_credentials_t certificate;
    char identity[MIG_TLS_PSK_IDENTITY_MAX + 1];
    uint8_t key[MIG_TLS_PSK_KEY_MAX];   /* the server's PSK callback copies it; wiped on free */
    size_t key_length;
    char source[PATH_MAX];              /* keys.psk path or the x509 directory, for messages */
};

/*
 * One TLS connection. Ownership after the handshake: the send_* fields and
 * out buffer belong to the sending thread, the receive_* fields and in
 * buffer to the receiving thread; GnuTLS calls push only from sends (and
 * gnutls_bye) and pull only from receives, so the two never meet. During
 * the handshake one thread owns everything.
 */
struct mig_tls_session {
    gnutls_session_t tls;
    const struct mig_tls_credentials *credentials;
    int fd;
    char peer[32];                      /* "destination" / "source" */
    bool handshaking;
    uint64_t handshake_deadline_ms;
    size_t record_size;

    const struct mig_io *send_io;       /* the current sending call's */
    uint8_t *out;                       /* records not yet handed to the kernel */
    size_t out_length;
    uint8_t *staging;                   /* small pieces of an iovec gathered into one record */
    char send_error[256];

    const struct mig_io *receive_io;
    uint64_t receive_deadline_ms;       /* mig_tls_read_some: the record must be in by then (0: none) */
    uint8_t *in;                        /* bytes read ahead, [in_start, in_end) unread */
    size_t in_start, in_end;
    bool peer_closed;                   /* recv() returned 0: the peer closed its end */
    char receive_error[256];

    uint8_t first_bytes[TLS_FIRST_BYTES];   /* what the peer sent first, for plaintext detection */
    size_t first_length;
    char peer_identity[MIG_TLS_PSK_IDENTITY_MAX + 1];  /* server: the PSK identity the client offered */
    bool peer_identity_seen;
};

static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static bool cancelled(const struct mig_io *io)
{
    return io != NULL && io->cancel != NULL && atomic_load_explicit(io->cancel, memory_order_acquire);
}

/* ---- files ----------------------------------------------------------------- */

/* Reads a whole file (NUL-terminated). A secret (key) file with any
 * permission bit for group or others is refused before it is read. */
static int read_file(const char *path, bool secret, char **data, size_t *length, char *error, size_t error_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(error, error_size, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(error, error_size, "%s: fstat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(error, error_size, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (secret && (st.st_mode & 0077) != 0) {
        snprintf(error, error_size,
                 "%s: key file is accessible by group or others (mode %04o); refusing it: chmod 600 %s", path,
                 (unsigned)(st.st_mode & 07777), path);
        close(fd);
        return -1;
    }
    if (st.st_size > (off_t)TLS_FILE_MAX) {
        snprintf(error, error_size, "%s: %lld bytes, larger than the %u allowed", path, (long long)st.st_size,
                 TLS_FILE_MAX);
        close(fd);
        return -1;
    }
    size_t capacity = (size_t)st.st_size;
    char *buffer = malloc(capacity + 1);
    if (buffer == NULL) {
        snprintf(error, error_size, "%s: out of memory", path);
        close(fd);
        return -1;
    }
    size_t done = 0;
    while (done < capacity) {
        ssize_t got = read(fd, buffer + done, capacity - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(error, error_size, "%s: read: %s", path, strerror(errno));
            explicit_bzero(buffer, capacity);
            free(buffer);
            close(fd);
            return -1;
        }
        if (got == 0)
            break;
        done += (size_t)got;
    }
    close(fd);
    buffer[done] = '\0';
    *data = buffer;
    *length = done;
    return 0;
}

static void free_secret(char *data, size_t length)
{
    if (data != NULL) {
        explicit_bzero(data, length);
        free(data);
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses the first IDENTITY:HEXKEY line of text into credentials. */
static int parse_psk(struct mig_tls_credentials *c, const char *path, char *text, char *error, size_t error_size)
{
    unsigned line_number = 0;
    char *line = text;
    while (line != NULL && *line != '\0') {
        char *next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        line_number++;
        size_t length = strlen(line);
        if (length > 0 && line[length - 1] == '\r')
            line[--length] = '\0';
        if (length == 0 || line[0] == '#') {
            line = next;
            continue;
        }
        char *colon = strchr(line, ':');
        if (colon == NULL) {
            snprintf(error, error_size, "%s line %u: expected IDENTITY:HEXKEY (QEMU's keys.psk format)", path,
                     line_number);
            return -1;
        }
        size_t identity_length = (size_t)(colon - line);
        if (identity_length == 0 || identity_length > MIG_TLS_PSK_IDENTITY_MAX) {
            snprintf(error, error_size, "%s line %u: the identity must be 1..%d characters", path, line_number,
                     MIG_TLS_PSK_IDENTITY_MAX);
            return -1;
        }
        for (size_t i = 0; i < identity_length; i++) {
            if (line[i] < 0x20 || line[i] > 0x7e) {
                snprintf(error, error_size, "%s line %u: the identity has a non-printable character", path,
                         line_number);
                return -1;
            }
        }
        const char *hex = colon + 1;
        size_t hex_length = strlen(hex);
        if (hex_length % 2 != 0 || hex_length / 2 < MIG_TLS_PSK_KEY_MIN || hex_length / 2 > MIG_TLS_PSK_KEY_MAX) {
            snprintf(error, error_size,
                     "%s line %u: the key must be %d..%d bytes as an even number of hex digits, got %zu digits "
                     "(psktool -s 32 makes a 32-byte key)",
                     path, line_number, MIG_TLS_PSK_KEY_MIN, MIG_TLS_PSK_KEY_MAX, hex_length);
            return -1;
        }
        for (size_t i = 0; i < hex_length / 2; i++) {
            int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
            if (high < 0 || low < 0) {
                snprintf(error, error_size, "%s line %u: the key has a character that is not a hex digit", path,
                         line_number);
                explicit_bzero(c->key, sizeof(c->key));
                return -1;
            }
            c->key[i] = (uint8_t)(high << 4 | low);
        }
        c->key_length = hex_length / 2;
        memcpy(c->identity, line, identity_length);
        c->identity[identity_length] = '\0';
        return 0;
    }
    snprintf(error, error_size, "%s: no IDENTITY:HEXKEY line", path);
    return -1;
}

/* The server's PSK lookup: only the file's first identity exists. The
 * session records what the client offered for the error message. */
static int psk_server_key(gnutls_session_t tls, const char *username, gnutls_datum_t *key)
{
    struct mig_tls_session *s = gnutls_session_get_ptr(tls);
    snprintf(s->peer_identity, sizeof(s->peer_identity), "%s", username);
    s->peer_identity_seen = true;
    if (strcmp(username, s->credentials->identity) != 0)
        return -1;
    key->data = gnutls_malloc(s->credentials->key_length);
    if (key->data == NULL)
        return -1;
    memcpy(key->data, s->credentials->key, s->credentials->key_length);
    key->size = (unsigned)s->credentials->key_length;
    return 0;
}

int mig_tls_credentials_load_psk(struct mig_tls_credentials **out, enum mig_tls_role role, const char *path,
                                 char *error, size_t error_size)
{
    *out = NULL;
    struct mig_tls_credentials *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(error, error_size, "%s: out of memory", path);
        return -1;
    }
    c->kind = MIG_TLS_PSK;
    c->role = role;
    snprintf(c->source, sizeof(c->source), "%s", path);
    char *text = NULL;
    size_t length = 0;
    if (read_file(path, true, &text, &length, error, error_size) != 0) {
        free(c);
        return -1;
    }
    int result = parse_psk(c, path, text, error, error_size);
    free_secret(text, length);
    if (result != 0) {
        mig_tls_credentials_free(c);
        return -1;
    }
    int ret;
    if (role == MIG_TLS_CLIENT) {
        ret = gnutls_psk_allocate_client_credentials(&c->psk_client);
        if (ret == 0) {
            gnutls_datum_t key = { .data = c->key, .size = (unsigned)c->key_length };
            ret = gnutls_psk_set_client_credentials(c->psk_client, c->identity, &key, GNUTLS_PSK_KEY_RAW);
            /* GnuTLS keeps its own copy; the server needs ours for its
             * callback, the client does not. */
            explicit_bzero(c->key, sizeof(c->key));
        }
    } else {
        ret = gnutls_psk_allocate_server_credentials(&c->psk_server);
        if (ret == 0)
            gnutls_psk_set_server_credentials_function(c->psk_server, psk_server_key);
    }
    if (ret != 0) {
        snprintf(error, error_size, "%s: loading the pre-shared key into GnuTLS failed (GnuTLS: %s)", path,
                 gnutls_strerror(ret));
        mig_tls_credentials_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

int mig_tls_credentials_load_x509(struct mig_tls_credentials **out, enum mig_tls_role role,
                                  const char *directory, char *error, size_t error_size)
{
    *out = NULL;
    struct mig_tls_credentials *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(error, error_size, "%s: out of memory", directory);
        return -1;
    }
    c->kind = MIG_TLS_X509;
    c->role = role;
    snprintf(c->source, sizeof(c->source), "%s", directory);
    const char *side = role == MIG_TLS_CLIENT ? "client" : "server";
    char ca_path[PATH_MAX], cert_path[PATH_MAX], key_path[PATH_MAX];
    snprintf(ca_path, sizeof(ca_path), "%s/ca-cert.pem", directory);
    snprintf(cert_path, sizeof(cert_path), "%s/%s-cert.pem", directory, side);
    snprintf(key_path, sizeof(key_path), "%s/%s-key.pem", directory, side);

    char *ca = NULL, *cert = NULL, *key = NULL;
    size_t ca_length = 0, cert_length = 0, key_length = 0;
    int result = -1;
    if (read_file(key_path, true, &key, &key_length, error, error_size) != 0 ||
        read_file(ca_path, false, &ca, &ca_length, error, error_size) != 0 ||
        read_file(cert_path, false, &cert, &cert_length, error, error_size) != 0)
        goto out;
    int ret = gnutls_certificate_allocate_credentials(&c->certificate);
    if (ret != 0) {
        snprintf(error, error_size, "%s: GnuTLS credentials (GnuTLS: %s)", directory, gnutls_strerror(ret));
        goto out;
    }
    gnutls_datum_t ca_datum = { .data = (unsigned char *)ca, .size = (unsigned)ca_length };
    ret = gnutls_certificate_set_x509_trust_mem(c->certificate, &ca_datum, GNUTLS_X509_FMT_PEM);
    if (ret <= 0) {
        snprintf(error, error_size, "%s: no CA certificate could be loaded (GnuTLS: %s)", ca_path,
                 ret < 0 ? gnutls_strerror(ret) : "no PEM certificate in the file");
        goto out;
    }
    gnutls_datum_t cert_datum = { .data = (unsigned char *)cert, .size = (unsigned)cert_length };
    gnutls_datum_t key_datum = { .data = (unsigned char *)key, .size = (unsigned)key_length };
    ret = gnutls_certificate_set_x509_key_mem2(c->certificate, &cert_datum, &key_datum, GNUTLS_X509_FMT_PEM, NULL,
                                               0);
    if (ret < 0) {
        snprintf(error, error_size, "%s with %s: certificate and key could not be loaded (GnuTLS: %s)", cert_path,
                 key_path, gnutls_strerror(ret));
        goto out;
    }
    result = 0;
out:
    free(ca);
    free(cert);
    free_secret(key, key_length);
    if (result != 0) {
        mig_tls_credentials_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

int mig_tls_credentials_load_for(struct mig_tls_credentials **out, enum mig_tls_role role, const char *psk_file,
                                 const char *creds_dir, const struct mig_address *address, char *error,
                                 size_t error_size)
{
    *out = NULL;
    bool psk = psk_file != NULL && psk_file[0] != '\0', x509 = creds_dir != NULL && creds_dir[0] != '\0';
    if (!psk && !x509)
        return 0;
    if (psk && x509) {
        snprintf(error, error_size, "a pre-shared key (%s) and x509 credentials (%s) were both given: choose one",
                 psk_file, creds_dir);
        return -1;
    }
    if (address->kind != MIG_ADDRESS_TCP) {
        snprintf(error, error_size,
                 "TLS is for tcp:HOST:PORT; a unix: socket is local, protected by its file mode and peer check");
        return -1;
    }
    return psk ? mig_tls_credentials_load_psk(out, role, psk_file, error, error_size)
               : mig_tls_credentials_load_x509(out, role, creds_dir, error, error_size);
}

void mig_tls_credentials_free(struct mig_tls_credentials *c)
{
    if (c == NULL)
        return;
    if (c->psk_client != NULL)
        gnutls_psk_free_client_credentials(c->psk_client);
    if (c->psk_server != NULL)
        gnutls_psk_free_server_credentials(c->psk_server);
    if (c->certificate != NULL)
        gnutls_certificate_free_credentials(c->certificate);
    explicit_bzero(c, sizeof(*c));
    free(c);
}

enum mig_tls_kind mig_tls_credentials_kind(const struct mig_tls_credentials *c)
{
    return c->kind;
}

enum mig_tls_role mig_tls_credentials_role(const struct mig_tls_credentials *c)
{
    return c->role;
}

/* ---- transport under GnuTLS ------------------------------------------------- */

/* Waits for events on the fd. During the handshake the deadline counts,
 * afterwards the caller's stall timeout from last_progress_ms. */
static int wait_fd(struct mig_tls_session *s, const struct mig_io *io, short events, uint64_t last_progress_ms,
                   uint64_t deadline_ms, const char *what, char *error, size_t error_size)
{
    for (;;) {
        if (cancelled(io)) {
            snprintf(error, error_size, "cancelled");
            return -1;
        }
        uint64_t now = now_ms();
        if (deadline_ms != 0 && now >= deadline_ms) {
            snprintf(error, error_size, "%s %s: a TLS record did not arrive whole within %u ms (link stalled or "
                     "too slow)", what, s->peer, io != NULL ? io->stall_ms : 0u);
            return -1;
        }
        if (s->handshaking) {
            if (now >= s->handshake_deadline_ms) {
                snprintf(error, error_size, "%s %s: no answer before the TLS handshake's deadline", what, s->peer);
                return -1;
            }
        } else if (io != NULL && io->stall_ms != 0 && now - last_progress_ms >= io->stall_ms) {
            snprintf(error, error_size, "%s %s: no progress for %u ms (link stalled)", what, s->peer,
                     io->stall_ms);
            return -1;
        }
        struct pollfd p = { .fd = s->fd, .events = events };
        int ready = poll(&p, 1, TLS_SLICE_MS);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            snprintf(error, error_size, "poll(%s): %s", s->peer, strerror(errno));
            return -1;
        }
        if (ready > 0)
            return 0;
    }
}

/* Hands the combined records to the kernel. 0 or -1 (send_error set). */
static int flush_out(struct mig_tls_session *s)
{
    size_t done = 0;
    uint64_t last = now_ms();
    while (done < s->out_length) {
        ssize_t sent = send(s->fd, s->out + done, s->out_length - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (wait_fd(s, s->send_io, POLLOUT, last, 0, "sending to", s->send_error, sizeof(s->send_error)) !=
                    0)
                    return -1;
                continue;
            }
            snprintf(s->send_error, sizeof(s->send_error), "sending to %s: %s", s->peer, strerror(errno));
            return -1;
        }
        done += (size_t)sent;
        last = now_ms();
    }
    s->out_length = 0;
    return 0;
}

/* GnuTLS's push: one record (possibly in pieces) appended to out. */
static ssize_t push_vector(gnutls_transport_ptr_t pointer, const giovec_t *iov, int iovcnt)
{
    struct mig_tls_session *s = pointer;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        const uint8_t *data = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            if (s->out_length == TLS_BUFFER_BYTES && flush_out(s) != 0) {
                gnutls_transport_set_errno(s->tls, EIO);
                return -1;
            }
            size_t room = TLS_BUFFER_BYTES - s->out_length;
            size_t chunk = left < room ? left : room;
            memcpy(s->out + s->out_length, data, chunk);
            s->out_length += chunk;
            data += chunk;
            left -= chunk;
            total += chunk;
        }
    }
    return (ssize_t)total;
}

static ssize_t push_one(gnutls_transport_ptr_t pointer, const void *data, size_t length)
{
    giovec_t iov = { .iov_base = (void *)data, .iov_len = length };
    return push_vector(pointer, &iov, 1);
}

static ssize_t pull(gnutls_transport_ptr_t pointer, void *data, size_t length)
{
    struct mig_tls_session *s = pointer;
    /* In the handshake the peer answers only what we sent: send it before
     * waiting. Afterwards the receiving thread never touches out. */
    if (s->handshaking && s->out_length > 0) {
        if (flush_out(s) != 0) {
            snprintf(s->receive_error, sizeof(s->receive_error), "%s", s->send_error);
            gnutls_transport_set_errno(s->tls, EIO);
            return -1;
        }
    }
    uint64_t last = now_ms();
    while (s->in_start == s->in_end) {
        ssize_t got = recv(s->fd, s->in, TLS_BUFFER_BYTES, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (wait_fd(s, s->receive_io, POLLIN, last, s->receive_deadline_ms, "receiving from",
                            s->receive_error, sizeof(s->receive_error)) != 0) {
                    gnutls_transport_set_errno(s->tls, EIO);
                    return -1;
                }
                continue;
            }
            snprintf(s->receive_error, sizeof(s->receive_error), "receiving from %s: %s", s->peer,
                     strerror(errno));
            gnutls_transport_set_errno(s->tls, EIO);
            return -1;
        }
        if (got == 0) {
            s->peer_closed = true;
            return 0;
        }
        s->in_start = 0;
        s->in_end = (size_t)got;
        if (s->handshaking && s->first_length < TLS_FIRST_BYTES) {
            size_t keep = TLS_FIRST_BYTES - s->first_length;
            if (keep > (size_t)got)
                keep = (size_t)got;
            memcpy(s->first_bytes + s->first_length, s->in, keep);
            s->first_length += keep;
        }
    }
    size_t available = s->in_end - s->in_start;
    size_t chunk = length < available ? length : available;
    memcpy(data, s->in + s->in_start, chunk);
    s->in_start += chunk;
    return (ssize_t)chunk;
}

static int pull_timeout(gnutls_transport_ptr_t pointer, unsigned int ms)
{
    struct mig_tls_session *s = pointer;
    if (s->in_start < s->in_end)
        return 1;
    /* "Wait for ever": say yes and let pull wait by ringvm's rules. */
    if (ms == GNUTLS_INDEFINITE_TIMEOUT)
        return 1;
    return mig_io_poll_readable(s->fd, ms);
}

/* ---- handshake ---------------------------------------------------------------- */

bool mig_tls_is_client_hello(const uint8_t *bytes, size_t length)
{
    if (length < 3 || bytes[0] != 22 || bytes[1] != 3 || bytes[2] < 1 || bytes[2] > 4)
        return false;
    return length < 6 || bytes[5] == 1;
}

/* A ringvm frame header: a known type and flags 0 in its first 8 bytes. */
static bool is_ringvm_frame(const uint8_t *bytes, size_t length)
{
    if (length < 8)
        return false;
    uint32_t type = mig_get_u32(bytes);
    return type >= MIG_FRAME_HELLO && type <= MIG_FRAME_TYPE_MAX && mig_get_u32(bytes + 4) == 0;
}

/* Tells a plaintext source why (it expects HELLO_ACK or ERROR, seq 0). */
static void tell_plaintext_peer(int fd)
{
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(MIG_ERR_CONFIG,
                                     "this destination requires TLS: start the migration with --tls-psk FILE or "
                                     "--tls-creds DIR",
                                     payload);
    uint8_t frame[MIG_HEADER_SIZE + sizeof(payload)];
    size_t total = mig_frame_encode(frame, MIG_FRAME_ERROR, 0, payload, length);
    (void)send(fd, frame, total, MSG_NOSIGNAL | MSG_DONTWAIT);  /* best effort: ~150 bytes fit any buffer */
}

/* The explanation of a failed handshake (without the "TLS handshake with
 * the X: " prefix and the GnuTLS suffix). Returns true when the peer is a
 * plaintext ringvm (no TLS alert must be sent then). */
static bool explain_failure(struct mig_tls_session *s, int ret, char *why, size_t why_size)
{
    const struct mig_tls_credentials *c = s->credentials;
    bool server = c->role == MIG_TLS_SERVER;
    if (is_ringvm_frame(s->first_bytes, s->first_length)) {
        if (server) {
            snprintf(why, why_size,
                     "the source speaks plaintext (a ringvm frame of type %u arrived instead of a TLS ClientHello): "
                     "start the migration with --tls-psk or --tls-creds, or this destination without them",
                     mig_get_u32(s->first_bytes));
            return true;
        }
        uint64_t length = mig_get_u64(s->first_bytes + 16);
        if (mig_get_u32(s->first_bytes) == MIG_FRAME_ERROR && length >= 4 &&
            length <= 4 + MIG_ERROR_MAX_MESSAGE && s->first_length >= MIG_HEADER_SIZE + length) {
            uint32_t code = 0;
            char message[MIG_ERROR_MAX_MESSAGE + 1];
            mig_error_decode(s->first_bytes + MIG_HEADER_SIZE, (size_t)length, &code, message, sizeof(message));
            snprintf(why, why_size,
                     "the destination speaks plaintext, not TLS; it answered with ERROR code %u: \"%s\" (start it "
                     "with --tls-psk or --tls-creds, or migrate without TLS)",
                     code, message);
        } else {
            snprintf(why, why_size,
                     "the destination speaks plaintext, not TLS (a ringvm frame arrived instead of a TLS "
                     "ServerHello): start it with --tls-psk or --tls-creds, or migrate without TLS");
        }
        return true;
    }
    if (ret == GNUTLS_E_PULL_ERROR && s->receive_error[0] != '\0') {
        snprintf(why, why_size, "%s", s->receive_error);
        return false;
    }
    if (ret == GNUTLS_E_PUSH_ERROR && s->send_error[0] != '\0') {
        snprintf(why, why_size, "%s", s->send_error);
        return false;
    }
    if (ret == GNUTLS_E_PREMATURE_TERMINATION || (ret == GNUTLS_E_PULL_ERROR && s->first_length == 0)) {
        snprintf(why, why_size,
                 "the %s closed the connection during the handshake (it refused this host's credentials, or it "
                 "is not started with TLS)",
                 s->peer);
        return false;
    }
    if (ret == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        const char *alert = gnutls_alert_get_name(gnutls_alert_get(s->tls));
        if (c->kind == MIG_TLS_PSK)
            snprintf(why, why_size,
                     "the %s refused it with the alert \"%s\" (is %s the same keys.psk file on both hosts?)",
                     s->peer, alert != NULL ? alert : "?", c->source);
        else
            snprintf(why, why_size,
                     "the %s refused it with the alert \"%s\" (does it trust this host's %s certificate in %s: "
                     "same CA, not expired?)",
                     s->peer, alert != NULL ? alert : "?", server ? "server" : "client", c->source);
        return false;
    }
    if (ret == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR || ret == GNUTLS_E_CERTIFICATE_ERROR) {
        unsigned status = gnutls_session_get_verify_cert_status(s->tls);
        gnutls_datum_t text = { NULL, 0 };
        if (status != 0 && gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) == 0) {
            size_t length = strlen((const char *)text.data);
            while (length > 0 && text.data[length - 1] == ' ')
                text.data[--length] = '\0';    /* GnuTLS ends each sentence with a space */
            snprintf(why, why_size, "the %s's certificate is refused: %s (checked against %s/ca-cert.pem)", s->peer,
                     (const char *)text.data, c->source);
            gnutls_free(text.data);
        } else {
            snprintf(why, why_size, "the %s's certificate is refused (checked against %s/ca-cert.pem)", s->peer,
                     c->source);
        }
        return false;
    }
    if (ret == GNUTLS_E_NO_CERTIFICATE_FOUND || ret == GNUTLS_E_CERTIFICATE_REQUIRED) {
        snprintf(why, why_size, "the %s sent no certificate (it must have %s-cert.pem and its key)", s->peer,
                 server ? "client" : "server");
        return false;
    }
    if (c->kind == MIG_TLS_PSK && server && s->peer_identity_seen &&
        strcmp(s->peer_identity, c->identity) != 0) {
        snprintf(why, why_size, "the source's PSK identity \"%s\" is not \"%s\", the first in %s",
                 s->peer_identity, c->identity, c->source);
        return false;
    }
    if (c->kind == MIG_TLS_PSK && server && s->peer_identity_seen) {
        snprintf(why, why_size,
                 "the source's pre-shared key for identity \"%s\" is not the one in %s (is it the same keys.psk "
                 "file on both hosts?)",
                 c->identity, c->source);
        return false;
    }
    if (s->first_length > 0 && !server && s->first_bytes[0] != 22 && s->first_bytes[0] != 21) {
        snprintf(why, why_size, "the %s answered with bytes that are not TLS (first byte 0x%02x)", s->peer,
                 s->first_bytes[0]);
        return false;
    }
    if (s->first_length > 0 && server && !mig_tls_is_client_hello(s->first_bytes, s->first_length)) {
        snprintf(why, why_size, "the %s sent bytes that are not a TLS ClientHello (first byte 0x%02x)", s->peer,
                 s->first_bytes[0]);
        return true;
    }
    snprintf(why, why_size, "failed");
    return false;
}

/* In TLS 1.3 the client's handshake is over before the server has checked
 * the client's certificate: a refusal would reach the source only at its
 * first read. So the destination confirms every session with one record
 * of MIG_TLS_CONFIRMATION and the source waits for it within the
 * handshake's deadline; both sides then see every refusal in
 * mig_tls_handshake. Returns 0, a GnuTLS error, or TLS_NOT_CONFIRMED. */
#define TLS_NOT_CONFIRMED 1
static int confirm(struct mig_tls_session *s)
{
    static const char confirmation[sizeof(MIG_TLS_CONFIRMATION) - 1] = MIG_TLS_CONFIRMATION;
    if (s->credentials->role == MIG_TLS_SERVER) {
        ssize_t sent;
        do {
            sent = gnutls_record_send(s->tls, confirmation, sizeof(confirmation));
        } while (sent == GNUTLS_E_AGAIN || sent == GNUTLS_E_INTERRUPTED);
        if (sent < 0)
            return (int)sent;
        return s->out_length > 0 && flush_out(s) != 0 ? GNUTLS_E_PUSH_ERROR : 0;
    }
    if (s->out_length > 0 && flush_out(s) != 0)
        return GNUTLS_E_PUSH_ERROR;
    char received[sizeof(confirmation)];
    size_t done = 0;
    while (done < sizeof(received)) {
        ssize_t got = gnutls_record_recv(s->tls, received + done, sizeof(received) - done);
        if (got == 0)
            return GNUTLS_E_PREMATURE_TERMINATION;
        if (got < 0) {
            if (gnutls_error_is_fatal((int)got) == 0)
                continue;
            return (int)got;
        }
        done += (size_t)got;
    }
    return memcmp(received, confirmation, sizeof(received)) == 0 ? 0 : TLS_NOT_CONFIRMED;
}

int mig_tls_handshake(struct mig_tls_session **out, const struct mig_io *io, const struct mig_tls_options *options,
                      char *error, size_t error_size)
{
    *out = NULL;
    const struct mig_tls_credentials *c = options->credentials;
    const char *peer = io->peer != NULL ? io->peer : (c->role == MIG_TLS_CLIENT ? "destination" : "source");
    struct mig_tls_session *s = calloc(1, sizeof(*s));
    if (s != NULL) {
        s->out = malloc(TLS_BUFFER_BYTES);
        s->in = malloc(TLS_BUFFER_BYTES);
        s->staging = malloc(16384 + 256);
    }
    if (s == NULL || s->out == NULL || s->in == NULL || s->staging == NULL) {
        snprintf(error, error_size, "TLS handshake with the %s: out of memory", peer);
        mig_tls_session_free(s);
        return -1;
    }
    s->credentials = c;
    s->fd = io->fd;
    snprintf(s->peer, sizeof(s->peer), "%s", peer);
    s->handshaking = true;
    unsigned timeout = options->handshake_timeout_ms != 0 ? options->handshake_timeout_ms : TLS_DEFAULT_HANDSHAKE_MS;
    s->handshake_deadline_ms = now_ms() + timeout;
    s->send_io = io;
    s->receive_io = io;

    if (c->kind == MIG_TLS_X509 && c->role == MIG_TLS_CLIENT &&
        (options->server_name == NULL || options->server_name[0] == '\0')) {
        snprintf(error, error_size,
                 "TLS handshake with the %s: no name to check its certificate against (the HOST of tcp:HOST:PORT)",
                 peer);
        mig_tls_session_free(s);
        return -1;
    }

    unsigned flags = (c->role == MIG_TLS_SERVER ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS;
    int ret = gnutls_init(&s->tls, flags);
    if (ret != 0) {
        snprintf(error, error_size, "TLS handshake with the %s: gnutls_init (GnuTLS: %s)", peer, gnutls_strerror(ret));
        s->tls = NULL;
        mig_tls_session_free(s);
        return -1;
    }
    const char *priority = options->priority != NULL ? options->priority
                           : c->kind == MIG_TLS_PSK  ? MIG_TLS_PRIORITY_PSK
                                                     : MIG_TLS_PRIORITY_X509;
    const char *error_position = NULL;
    ret = gnutls_priority_set_direct(s->tls, priority, &error_position);
    if (ret != 0) {
        snprintf(error, error_size, "TLS handshake with the %s: priority string \"%s\" refused at \"%s\" (GnuTLS: %s)",
                 peer, priority, error_position != NULL ? error_position : "", gnutls_strerror(ret));
        mig_tls_session_free(s);
        return -1;
    }
    if (c->kind == MIG_TLS_PSK) {
        ret = gnutls_credentials_set(s->tls, GNUTLS_CRD_PSK,
                                     c->role == MIG_TLS_CLIENT ? (void *)c->psk_client : (void *)c->psk_server);
    } else {
        ret = gnutls_credentials_set(s->tls, GNUTLS_CRD_CERTIFICATE, c->certificate);
        if (ret == 0 && c->role == MIG_TLS_SERVER) {
            /* The destination requires the source's certificate, signed
             * by the CA and meant for TLS clients. */
            gnutls_certificate_server_set_request(s->tls, GNUTLS_CERT_REQUIRE);
            /* Without the CA list in the request a source with a
             * certificate from another CA still sends it, and the refusal
             * names the reason ("issuer is unknown") instead of "no
             * certificate". */
            gnutls_certificate_send_x509_rdn_sequence(s->tls, 1);
            gnutls_typed_vdata_st purpose = { .type = GNUTLS_DT_KEY_PURPOSE_OID,
                                              .data = (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT };
            gnutls_session_set_verify_cert2(s->tls, &purpose, 1, 0);
        } else if (ret == 0) {
            gnutls_session_set_verify_cert(s->tls, options->server_name, 0);
        }
    }
    if (ret != 0) {
        snprintf(error, error_size, "TLS handshake with the %s: credentials (GnuTLS: %s)", peer, gnutls_strerror(ret));
        mig_tls_session_free(s);
        return -1;
    }
    gnutls_handshake_set_timeout(s->tls, 0);    /* ours: handshake_deadline_ms in wait_fd */
    gnutls_session_set_ptr(s->tls, s);
    gnutls_transport_set_ptr(s->tls, s);
    gnutls_transport_set_push_function(s->tls, push_one);
    gnutls_transport_set_vec_push_function(s->tls, push_vector);
    gnutls_transport_set_pull_function(s->tls, pull);
    gnutls_transport_set_pull_timeout_function(s->tls, pull_timeout);

    do {
        ret = gnutls_handshake(s->tls);
    } while (ret < 0 && gnutls_error_is_fatal(ret) == 0);
    if (ret == 0 && gnutls_protocol_get_version(s->tls) != GNUTLS_TLS1_3) {
        snprintf(error, error_size, "TLS handshake with the %s: negotiated %s, not TLS 1.3", peer,
                 gnutls_protocol_get_name(gnutls_protocol_get_version(s->tls)));
        mig_tls_session_free(s);
        return -1;
    }
    if (ret == 0)
        ret = confirm(s);
    if (ret == TLS_NOT_CONFIRMED) {
        snprintf(error, error_size, "TLS handshake with the %s: it did not confirm the session (other bytes than "
                 "ringvm's confirmation arrived)", peer);
        mig_tls_session_free(s);
        return -1;
    }
    if (ret != 0) {
        char why[8192];
        bool plaintext = explain_failure(s, ret, why, sizeof(why));
        if (plaintext && c->role == MIG_TLS_SERVER) {
            tell_plaintext_peer(s->fd);
        } else if (!plaintext && ret != GNUTLS_E_PULL_ERROR && ret != GNUTLS_E_PUSH_ERROR &&
                   ret != GNUTLS_E_FATAL_ALERT_RECEIVED && ret != GNUTLS_E_PREMATURE_TERMINATION) {
            /* Tell a TLS peer why (its message then names the alert);
             * best effort and never blocking. */
            s->out_length = 0;
            (void)gnutls_alert_send_appropriate(s->tls, ret);
            if (s->out_length > 0)
                (void)send(s->fd, s->out, s->out_length, MSG_NOSIGNAL | MSG_DONTWAIT);
            s->out_length = 0;
        }
        snprintf(error, error_size, "TLS handshake with the %s: %s (GnuTLS: %s)", peer, why, gnutls_strerror(ret));
        mig_tls_session_free(s);
        return -1;
    }
    s->handshaking = false;
    s->record_size = gnutls_record_get_max_size(s->tls);
    if (s->record_size == 0 || s->record_size > 16384)
        s->record_size = 16384;
    s->send_io = NULL;
    s->receive_io = NULL;
    *out = s;
    return 0;
}

/* ---- records -------------------------------------------------------------------- */

/* Encrypts data (at most one record) into out. */
static int send_record(struct mig_tls_session *s, const uint8_t *data, size_t length, char *error,
                       size_t error_size)
{
    while (length > 0) {
        ssize_t sent = gnutls_record_send(s->tls, data, length);
        if (sent == GNUTLS_E_AGAIN || sent == GNUTLS_E_INTERRUPTED)
            continue;
        if (sent < 0) {
            if (sent == GNUTLS_E_PUSH_ERROR && s->send_error[0] != '\0')
                snprintf(error, error_size, "%s", s->send_error);
            else
                snprintf(error, error_size, "sending to %s: TLS record error (GnuTLS: %s)", s->peer,
                         gnutls_strerror((int)sent));
            return -1;
        }
        data += sent;
        length -= (size_t)sent;
    }
    return 0;
}

int mig_tls_writev(struct mig_tls_session *s, const struct mig_io *io, struct iovec *iov, int iovcnt, char *error,
                   size_t error_size)
{
    s->send_io = io;
    s->send_error[0] = '\0';
    size_t record = s->record_size;
    size_t staged = 0;
    int result = 0;
    while (result == 0 && iovcnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        if (staged == 0 && iov->iov_len >= record) {
            /* Whole records straight from the caller's memory. */
            result = send_record(s, iov->iov_base, record, error, error_size);
            iov->iov_base = (uint8_t *)iov->iov_base + record;
            iov->iov_len -= record;
            continue;
        }
        /* Pieces smaller than a record (a frame header, a tail) are
         * gathered so that no record is smaller than it has to be. */
        size_t chunk = record - staged < iov->iov_len ? record - staged : iov->iov_len;
        memcpy(s->staging + staged, iov->iov_base, chunk);
        staged += chunk;
        iov->iov_base = (uint8_t *)iov->iov_base + chunk;
        iov->iov_len -= chunk;
        if (staged == record) {
            result = send_record(s, s->staging, staged, error, error_size);
            staged = 0;
        }
    }
    if (result == 0 && staged > 0)
        result = send_record(s, s->staging, staged, error, error_size);
    if (result == 0 && s->out_length > 0 && flush_out(s) != 0) {
        snprintf(error, error_size, "%s", s->send_error);
        result = -1;
    }
    s->send_io = NULL;
    return result;
}

int mig_tls_write(struct mig_tls_session *s, const struct mig_io *io, const void *data, size_t length, char *error,
                  size_t error_size)
{
    struct iovec iov = { .iov_base = (void *)data, .iov_len = length };
    return mig_tls_writev(s, io, &iov, 1, error, error_size);
}

/* The message for a failed gnutls_record_recv (done of length bytes in). */
static void explain_receive_error(struct mig_tls_session *s, int got, size_t done, size_t length, char *error,
                                  size_t error_size)
{
    if (got == GNUTLS_E_PULL_ERROR && s->receive_error[0] != '\0')
        snprintf(error, error_size, "%s", s->receive_error);
    else if (got == GNUTLS_E_DECRYPTION_FAILED)
        snprintf(error, error_size,
                 "receiving from %s: a TLS record failed authentication (bytes changed on the way: a faulty "
                 "link or an attacker); nothing of it was used (GnuTLS: %s)",
                 s->peer, gnutls_strerror((int)got));
    else if (got == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        const char *alert = gnutls_alert_get_name(gnutls_alert_get(s->tls));
        snprintf(error, error_size,
                 "receiving from %s: it ended the TLS session with the alert \"%s\" (GnuTLS: %s)", s->peer,
                 alert != NULL ? alert : "?", gnutls_strerror((int)got));
    }
    else if (got == GNUTLS_E_PREMATURE_TERMINATION)
        snprintf(error, error_size,
                 "%s closed the connection without TLS close_notify (truncated stream: %zu of %zu bytes)",
                 s->peer, done, length);
    else if (got == GNUTLS_E_UNEXPECTED_PACKET_LENGTH && s->peer_closed)
        /* GnuTLS's word for an end of stream inside a record ("Error
         * decoding the received TLS packet") would blame the data. */
        snprintf(error, error_size,
                 "%s closed the connection in the middle of a TLS record (truncated stream: %zu of %zu bytes)",
                 s->peer, done, length);
    else
        snprintf(error, error_size, "receiving from %s: TLS record error (GnuTLS: %s)", s->peer,
                 gnutls_strerror((int)got));
}

int mig_tls_read(struct mig_tls_session *s, const struct mig_io *io, void *data, size_t length, bool eof_ok,
                 char *error, size_t error_size)
{
    s->receive_io = io;
    s->receive_error[0] = '\0';
    size_t done = 0;
    int result = 0;
    while (done < length) {
        ssize_t got = gnutls_record_recv(s->tls, (uint8_t *)data + done, length - done);
        if (got > 0) {
            done += (size_t)got;
            continue;
        }
        if (got == 0) {
            if (done == 0 && eof_ok) {
                result = 1;
                break;
            }
            snprintf(error, error_size, "%s closed the connection (truncated stream: %zu of %zu bytes)", s->peer,
                     done, length);
            result = -1;
            break;
        }
        if (got == GNUTLS_E_AGAIN || got == GNUTLS_E_INTERRUPTED || gnutls_error_is_fatal((int)got) == 0)
            continue;
        explain_receive_error(s, (int)got, done, length, error, error_size);
        result = -1;
        break;
    }
    s->receive_io = NULL;
    return result;
}


ssize_t mig_tls_read_some(struct mig_tls_session *s, const struct mig_io *io, void *data, size_t capacity,
                          char *error, size_t error_size)
{
    if (gnutls_record_check_pending(s->tls) == 0 && s->in_start == s->in_end) {
        int ready = mig_io_poll_readable(s->fd, 0);
        if (ready < 0) {
            snprintf(error, error_size, "poll(%s): %s", s->peer, strerror(errno));
            return -1;
        }
        if (ready == 0)
            return MIG_IO_AGAIN;
    }
    s->receive_io = io;
    s->receive_error[0] = '\0';
    /* A record has begun: all of it within the stall timeout, however it
     * dribbles (a 16 KiB record in io->stall_ms is far below the frame
     * deadline's floor rate, so no honest peer meets this). */
    s->receive_deadline_ms = io->stall_ms != 0 ? now_ms() + io->stall_ms : 0;
    ssize_t got;
    do {
        got = gnutls_record_recv(s->tls, data, capacity);
    } while (got < 0 && (got == GNUTLS_E_AGAIN || got == GNUTLS_E_INTERRUPTED || gnutls_error_is_fatal((int)got) == 0));
    if (got < 0) {
        explain_receive_error(s, (int)got, 0, capacity, error, error_size);
        got = -1;
    }
    s->receive_deadline_ms = 0;
    s->receive_io = NULL;
    return got;
}

int mig_tls_poll_readable(struct mig_tls_session *s, unsigned timeout_ms)
{
    if (gnutls_record_check_pending(s->tls) > 0 || s->in_start < s->in_end)
        return 1;
    return mig_io_poll_readable(s->fd, timeout_ms);
}

int mig_tls_close(struct mig_tls_session *s, const struct mig_io *io, char *error, size_t error_size)
{
    s->send_io = io;
    s->send_error[0] = '\0';
    int ret = gnutls_bye(s->tls, GNUTLS_SHUT_WR);
    int result = 0;
    if (ret == 0 && s->out_length > 0 && flush_out(s) != 0)
        ret = GNUTLS_E_PUSH_ERROR;
    if (ret != 0) {
        snprintf(error, error_size, "closing the TLS stream to %s: %s", s->peer,
                 s->send_error[0] != '\0' ? s->send_error : gnutls_strerror(ret));
        result = -1;
    }
    s->send_io = NULL;
    return result;
}

void mig_tls_session_free(struct mig_tls_session *s)
{
    if (s == NULL)
        return;
    if (s->tls != NULL)
        gnutls_deinit(s->tls);
    if (s->staging != NULL)
        explicit_bzero(s->staging, 16384 + 256);
    free(s->staging);
    free(s->out);
    if (s->in != NULL)
        explicit_bzero(s->in, TLS_BUFFER_BYTES);
    free(s->in);
    free(s);
}

const char *mig_tls_cipher_suite(const struct mig_tls_session *s)
{
    const char *name = gnutls_ciphersuite_get(s->tls);
    return name != NULL ? name : "unknown";
}

size_t mig_tls_record_size(const struct mig_tls_session *s)
{
    return s->record_size;
}

void mig_tls_session_info(const struct mig_tls_session *s, struct mig_tls_info *info)
{
    const char *version = gnutls_protocol_get_name(gnutls_protocol_get_version(s->tls));
    const char *cipher = gnutls_cipher_get_name(gnutls_cipher_get(s->tls));
    snprintf(info->version, sizeof(info->version), "%s", version != NULL ? version : "unknown");
    snprintf(info->cipher, sizeof(info->cipher), "%s", cipher != NULL ? cipher : "unknown");
    snprintf(info->auth, sizeof(info->auth), "%s", s->credentials->kind == MIG_TLS_PSK ? "psk" : "x509");
    snprintf(info->suite, sizeof(info->suite), "%s", mig_tls_cipher_suite(s));
}
