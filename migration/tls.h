/*
 * TLS 1.3 channel for the migration stream (issue 16, "Peers that are
 * allowed in / TCP"), GnuTLS from Debian. The stream reaches it through
 * migration/transport.h only: a struct mig_io with its tls set routes
 * every read and write here (docs/migration-protocol.md, "TLS").
 *
 * Roles: the migration source is the TLS client (it connects), the
 * destination the TLS server. Both sides authenticate each other, with
 *   - a pre-shared key file in QEMU's keys.psk format (lines IDENTITY:HEXKEY,
 *     the first used, the same file on both hosts; ECDHE/DHE + PSK, so the
 *     session keys are forward secret), or
 *   - x509: a directory with ca-cert.pem, server-cert.pem, server-key.pem,
 *     client-cert.pem, client-key.pem (QEMU/libvirt layout); the destination
 *     requires and verifies the source's certificate against the CA, the
 *     source verifies the destination's against the CA and the name it
 *     connected to (mig_tls_options.server_name).
 * Key files (keys.psk, *-key.pem) with any permission bit for group or
 * others (mode & 0077, OpenSSH's rule) are refused.
 *
 * I/O follows migration/transport.h: the fd is non-blocking, every wait
 * polls in slices of at most 100 ms for the caller's cancel flag and fails
 * after io->stall_ms without progress. Errors name what failed and why,
 * with GnuTLS's own words in parentheses.
 *
 * Threads: a session may be used by one sending thread (mig_tls_write*,
 * mig_tls_close) and one receiving thread (mig_tls_read, mig_tls_poll_readable)
 * at the same time, as GnuTLS allows; the handshake and mig_tls_session_free
 * by one thread alone. Credentials are read-only once loaded and may be
 * shared by any number of sessions and threads. (GnuTLS asks that key
 * updates be handled by one thread: ringvm never requests one from its
 * peer, and GnuTLS's own updates happen in the sending thread.)
 */
#ifndef RINGVM_MIGRATION_TLS_H
#define RINGVM_MIGRATION_TLS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "migration/transport.h"

/* GnuTLS priority strings: TLS 1.3 only, AES-256-GCM first, AES-128-GCM
 * second (both carried by AES-NI/VAES; no ChaCha20: both ends are ringvm
 * on x86-64). x509 sessions get TLS_AES_256_GCM_SHA384; PSK sessions
 * TLS_AES_128_GCM_SHA256, because GnuTLS binds an external PSK to SHA-256.
 * PSK adds the (EC)DHE-PSK key exchanges, never plain PSK, so a stolen key
 * file does not decrypt recorded migrations. */
#define MIG_TLS_PRIORITY_X509 \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:-MAC-ALL:+AEAD"
#define MIG_TLS_PRIORITY_PSK \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:-MAC-ALL:+AEAD:" \
    "-KX-ALL:+ECDHE-PSK:+DHE-PSK"

/* After the handshake the destination sends this (one record, 8 bytes)
 * and the source waits for it: see mig_tls_handshake. */
#define MIG_TLS_CONFIRMATION "RVMTLSOK"

/* Longest identity and key accepted from a keys.psk file. */
#define MIG_TLS_PSK_IDENTITY_MAX 128
#define MIG_TLS_PSK_KEY_MIN 16
#define MIG_TLS_PSK_KEY_MAX 256

enum mig_tls_role {
    MIG_TLS_CLIENT = 0,     /* the migration source: connects, sends ClientHello */
    MIG_TLS_SERVER,         /* the destination: accepts */
};

enum mig_tls_kind { MIG_TLS_PSK = 0, MIG_TLS_X509 };

/* Loaded credentials (opaque): the files read, checked and handed to
 * GnuTLS; key bytes are wiped from ringvm's own buffers after loading. */
struct mig_tls_credentials;

/* Reads a keys.psk file: blank lines and lines starting with '#' are
 * skipped, the first other line must be IDENTITY:HEXKEY (identity 1..128
 * printable characters without ':', key 16..256 bytes as hex). Returns 0,
 * or -1 with a message naming the file and the problem. */
int mig_tls_credentials_load_psk(struct mig_tls_credentials **out, enum mig_tls_role role, const char *path,
                                 char *error, size_t error_size);
/* Reads ca-cert.pem and, for the client, client-cert.pem + client-key.pem,
 * for the server server-cert.pem + server-key.pem from directory. */
int mig_tls_credentials_load_x509(struct mig_tls_credentials **out, enum mig_tls_role role,
                                  const char *directory, char *error, size_t error_size);
/* The credentials an operator names (the --tls-psk / --tls-creds pair, or
 * migration.start's tls_psk_file / tls_creds_dir; NULL or "" = not given)
 * for a stream to address: *out NULL when neither is given (plaintext);
 * -1 when both are, when address is not tcp:HOST:PORT, or when the files
 * cannot be loaded (the message names the file and what is wrong). */
int mig_tls_credentials_load_for(struct mig_tls_credentials **out, enum mig_tls_role role, const char *psk_file,
                                 const char *creds_dir, const struct mig_address *address, char *error,
                                 size_t error_size);
void mig_tls_credentials_free(struct mig_tls_credentials *credentials);
enum mig_tls_kind mig_tls_credentials_kind(const struct mig_tls_credentials *credentials);
enum mig_tls_role mig_tls_credentials_role(const struct mig_tls_credentials *credentials);

struct mig_tls_options {
    const struct mig_tls_credentials *credentials;  /* its role is the session's */
    /* Client with x509 credentials: the name the destination's certificate
     * must carry, the HOST of tcp:HOST:PORT as the operator typed it (a DNS
     * name in a subjectAltName dNSName or, without any, the CN; an IP
     * literal in a subjectAltName iPAddress). Required there; ignored
     * otherwise. */
    const char *server_name;
    /* The whole handshake must finish within this (0: 10000 ms). */
    unsigned handshake_timeout_ms;
    /* NULL: MIG_TLS_PRIORITY_PSK / _X509. For benchmarks comparing ciphers. */
    const char *priority;
};

struct mig_tls_session;

/* Runs the TLS handshake on io->fd (connected, non-blocking). io->cancel
 * and io->peer ("destination" / "source") are used; io->stall_ms is not:
 * the handshake has options->handshake_timeout_ms in all. Returns 0 with
 * *out set, or -1 with e.g. "TLS handshake with the destination: its
 * certificate is not signed by ca-cert.pem ... (GnuTLS: ...)".
 *
 * A plaintext ringvm peer is recognised: a server that receives a ringvm
 * frame header instead of a ClientHello answers with a plaintext ERROR
 * frame (seq 0, code 1, "this destination requires TLS ...") and fails with
 * "the source speaks plaintext ..."; a client that receives a ringvm frame
 * instead of a ServerHello fails with "the destination speaks plaintext
 * ..." and the frame's message when it is an ERROR frame. */
int mig_tls_handshake(struct mig_tls_session **out, const struct mig_io *io, const struct mig_tls_options *options,
                      char *error, size_t error_size);
/* (Part of the handshake: in TLS 1.3 the client finishes before the server
 * has checked the client's certificate, so the destination then sends
 * MIG_TLS_CONFIRMATION in one record and the source waits for it; a
 * refused source therefore fails here too, with the destination's alert.) */

/* Sends all iov bytes as few records as possible (each the maximum record
 * size, 16 KiB of plaintext, except the last of the call) and, for the
 * kernel, in writes of up to 256 KiB of records. Returns once everything
 * is handed to the socket. iov is modified. 0 or -1 with a message. The
 * sender's io (stall_ms, cancel, peer) applies to this call. */
int mig_tls_writev(struct mig_tls_session *session, const struct mig_io *io, struct iovec *iov, int iovcnt,
                   char *error, size_t error_size);
int mig_tls_write(struct mig_tls_session *session, const struct mig_io *io, const void *data, size_t length,
                  char *error, size_t error_size);
/* Reads exactly length bytes; the semantics of mig_io_read: 0; 1 on a
 * clean end (the peer's close_notify) before the first byte when eof_ok;
 * -1 with a message otherwise. A record that fails authentication (bytes
 * changed on the way) is an error ("... record failed authentication ...")
 * and none of its bytes reach data. */
int mig_tls_read(struct mig_tls_session *session, const struct mig_io *io, void *data, size_t length,
                 bool eof_ok, char *error, size_t error_size);
/* mig_io_recv_some under TLS (see transport.h): MIG_IO_AGAIN when no
 * decrypted, buffered or raw byte is there; else at most one record's
 * plaintext (1 .. capacity), 0 at the peer's close_notify, -1 with a
 * message. A record that has begun must arrive whole within io->stall_ms
 * (a peer dribbling bytes cannot hold the reader inside one record). */
ssize_t mig_tls_read_some(struct mig_tls_session *session, const struct mig_io *io, void *data, size_t capacity,
                          char *error, size_t error_size);
/* For receivers that poll before reading: 1 when a read would find bytes
 * without waiting (decrypted or raw bytes already buffered here, or the fd
 * is readable), 0 when not within timeout_ms, -1 on error. */
int mig_tls_poll_readable(struct mig_tls_session *session, unsigned timeout_ms);

/* Sends close_notify (the sending side's end of the stream; best effort,
 * bounded by io->stall_ms). The fd stays open. */
int mig_tls_close(struct mig_tls_session *session, const struct mig_io *io, char *error, size_t error_size);
/* Frees the session; does not close the fd. NULL is fine. */
void mig_tls_session_free(struct mig_tls_session *session);

/* What a session negotiated, for migration.progress and the log. All
 * empty strings = no TLS (plaintext stream). */
struct mig_tls_info {
    char version[16];       /* "TLS1.3" */
    char cipher[32];        /* "AES-256-GCM" / "AES-128-GCM" */
    char auth[8];           /* "psk" / "x509" */
    char suite[48];         /* "TLS_AES_256_GCM_SHA384" */
};
void mig_tls_session_info(const struct mig_tls_session *session, struct mig_tls_info *info);

/* The negotiated suite, e.g. "TLS_AES_256_GCM_SHA384" (static storage). */
const char *mig_tls_cipher_suite(const struct mig_tls_session *session);
/* Largest plaintext per record (16384 unless the peer asked for less). */
size_t mig_tls_record_size(const struct mig_tls_session *session);

/* True when bytes (the first bytes a peer sent, at least 3) begin a TLS
 * handshake record: content type 22, version 3.1..3.4, and, when 6 bytes
 * are there, a ClientHello. A plaintext destination checks this on the
 * first bytes it reads to say "the source speaks TLS; start this
 * destination with --tls-psk or --tls-creds". */
bool mig_tls_is_client_hello(const uint8_t *bytes, size_t length);

#endif
