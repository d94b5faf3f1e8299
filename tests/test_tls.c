/* The TLS channel of the migration stream (migration/tls.c, issue 16):
 * handshakes and data over real sockets between two threads, every refusal
 * with its message. No KVM needed. Certificates are made here with GnuTLS's
 * API (throwaway CA, server and client, ECDSA P-256), so no certtool. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
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
#include "migration/tls.h"
#include "migration/transport.h"
#include "tests/harness.h"
#include "tests/tls_fixtures.h"

#define HANDSHAKE_MS 5000u
#define STALL_MS 5000u

/* ---- the two ends ------------------------------------------------------------- */

static void socket_pair(int fds[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds), 0);
}

/* Deterministic bytes: a frame-sized pattern that differs at every offset. */
static void fill_pattern(uint8_t *data, size_t length, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < length; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data[i] = (uint8_t)x;
    }
}

enum server_action {
    SERVER_HANDSHAKE_ONLY,
    SERVER_ECHO,            /* read `length` bytes, write them back */
    SERVER_READ_ONCE,       /* read `length` bytes into received (MITM test) */
};

/* One side run on a helper thread; the test thread reads the results after
 * pthread_join (the join orders every write here before the reads). */
struct tls_end {
    int fd;
    const struct mig_tls_credentials *credentials;
    const char *server_name;
    unsigned handshake_ms;
    enum server_action action;
    size_t length;
    uint8_t *received;
    _Atomic bool handshake_done;
    _Atomic bool cancel;
    int result;                 /* 0 ok, -1 handshake failed, -2 data failed */
    char error[2048];
    char cipher[64];
};

static void *server_main(void *argument)
{
    struct tls_end *end = argument;
    struct mig_io io = { .fd = end->fd, .stall_ms = STALL_MS, .cancel = &end->cancel, .peer = "source" };
    struct mig_tls_options options = { .credentials = end->credentials, .handshake_timeout_ms = end->handshake_ms };
    struct mig_tls_session *session = NULL;
    if (mig_tls_handshake(&session, &io, &options, end->error, sizeof(end->error)) != 0) {
        end->result = -1;
        atomic_store(&end->handshake_done, true);
        return NULL;
    }
    snprintf(end->cipher, sizeof(end->cipher), "%s", mig_tls_cipher_suite(session));
    atomic_store(&end->handshake_done, true);
    end->result = 0;
    if (end->action == SERVER_ECHO || end->action == SERVER_READ_ONCE) {
        if (mig_tls_read(session, &io, end->received, end->length, false, end->error, sizeof(end->error)) != 0)
            end->result = -2;
        else if (end->action == SERVER_ECHO &&
                 mig_tls_write(session, &io, end->received, end->length, end->error, sizeof(end->error)) != 0)
            end->result = -2;
    }
    mig_tls_session_free(session);
    return NULL;
}

static struct mig_tls_credentials *load_psk(enum mig_tls_role role, const char *directory, const char *name)
{
    char path[512], error[1024];
    snprintf(path, sizeof(path), "%s/%s", directory, name);
    struct mig_tls_credentials *credentials = NULL;
    cr_assert_eq(mig_tls_credentials_load_psk(&credentials, role, path, error, sizeof(error)), 0, "%s", error);
    return credentials;
}

static struct mig_tls_credentials *load_x509(enum mig_tls_role role, const char *directory)
{
    char error[1024];
    struct mig_tls_credentials *credentials = NULL;
    cr_assert_eq(mig_tls_credentials_load_x509(&credentials, role, directory, error, sizeof(error)), 0, "%s", error);
    return credentials;
}

/* Client handshake on the test thread against server_main on another. */
struct pair_result {
    int client_result;
    char client_error[2048];
    char client_cipher[64];
    struct tls_end server;
};

static void log_pair(const struct pair_result *r)
{
    cr_log_info("source: %s", r->client_result == 0 ? r->client_cipher : r->client_error);
    cr_log_info("destination: %s", r->server.result == 0 ? r->server.cipher : r->server.error);
}

static void run_handshake_pair(struct pair_result *r, const struct mig_tls_credentials *client,
                               const struct mig_tls_credentials *server, const char *server_name)
{
    int fds[2];
    socket_pair(fds);
    memset(r, 0, sizeof(*r));
    r->server.fd = fds[1];
    r->server.credentials = server;
    r->server.handshake_ms = HANDSHAKE_MS;
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, server_main, &r->server), 0);
    struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_tls_options options = { .credentials = client, .server_name = server_name,
                                       .handshake_timeout_ms = HANDSHAKE_MS };
    struct mig_tls_session *session = NULL;
    r->client_result = mig_tls_handshake(&session, &io, &options, r->client_error, sizeof(r->client_error));
    if (r->client_result == 0)
        snprintf(r->client_cipher, sizeof(r->client_cipher), "%s", mig_tls_cipher_suite(session));
    /* A failed client closes its end so a server still waiting sees it at once. */
    mig_tls_session_free(session);
    close(fds[0]);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    close(fds[1]);
    log_pair(r);
}

/* ---- PSK -------------------------------------------------------------------- */

Test(tls, psk_handshake_and_round_trips_of_exact_bytes, .timeout = 120)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "keys.psk");
    struct mig_tls_credentials *server = load_psk(MIG_TLS_SERVER, dir, "keys.psk");
    cr_assert_eq(mig_tls_credentials_kind(client), MIG_TLS_PSK);
    cr_assert_eq(mig_tls_credentials_role(server), MIG_TLS_SERVER);

    /* 1 byte, around one record (16 KiB), a 1 MiB frame with its header
     * as a separate iovec, and several MiB. */
    static const size_t sizes[] = { 1, 100, 16383, 16384, 16385, 32 + (1u << 20), 5u << 20 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t length = sizes[i];
        uint8_t *sent = malloc(length), *echoed = malloc(length), *received = malloc(length);
        cr_assert(sent != NULL && echoed != NULL && received != NULL);
        fill_pattern(sent, length, i + 1);
        memset(echoed, 0, length);
        int fds[2];
        socket_pair(fds);
        struct tls_end end = { .fd = fds[1], .credentials = server, .handshake_ms = HANDSHAKE_MS,
                               .action = SERVER_ECHO, .length = length, .received = received };
        pthread_t thread;
        cr_assert_eq(pthread_create(&thread, NULL, server_main, &end), 0);
        struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
        struct mig_tls_options options = { .credentials = client, .handshake_timeout_ms = HANDSHAKE_MS };
        struct mig_tls_session *session = NULL;
        char error[2048];
        cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), 0, "%s", error);
        /* GnuTLS binds an external PSK to SHA-256, so a PSK session
         * gets the SHA-256 AES-GCM suite (x509 gets AES-256). */
        cr_assert_str_eq(mig_tls_cipher_suite(session), "TLS_AES_128_GCM_SHA256");
        cr_assert_eq(mig_tls_record_size(session), 16384);
        struct iovec iov[2];
        int iovcnt = 1;
        iov[0] = (struct iovec){ .iov_base = sent, .iov_len = length };
        if (length > 32) {     /* a frame header, then its payload, as mig-send writes them */
            iov[0].iov_len = 32;
            iov[1] = (struct iovec){ .iov_base = sent + 32, .iov_len = length - 32 };
            iovcnt = 2;
        }
        cr_assert_eq(mig_tls_writev(session, &io, iov, iovcnt, error, sizeof(error)), 0, "%s", error);
        cr_assert_eq(mig_tls_read(session, &io, echoed, length, false, error, sizeof(error)), 0, "%s", error);
        cr_assert_eq(pthread_join(thread, NULL), 0);
        cr_assert_eq(end.result, 0, "%zu bytes: %s", length, end.error);
        cr_assert_str_eq(end.cipher, "TLS_AES_128_GCM_SHA256");
        cr_assert_eq(memcmp(received, sent, length), 0, "%zu bytes arrived changed", length);
        cr_assert_eq(memcmp(echoed, sent, length), 0, "%zu bytes came back changed", length);
        /* The peer is gone: its end of the socket is still open here, so a
         * poll says nothing is waiting. */
        cr_assert_eq(mig_tls_poll_readable(session, 0), 0);
        mig_tls_session_free(session);
        close(fds[0]);
        close(fds[1]);
        free(sent);
        free(echoed);
        free(received);
    }
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

/* The client closes with close_notify; the server thread reads. */
struct closing_reader {
    int fd;
    const struct mig_tls_credentials *credentials;
    bool eof_ok;
    int result;
    char error[1024];
};

static void *closing_reader_main(void *argument)
{
    struct closing_reader *r = argument;
    struct mig_io io = { .fd = r->fd, .stall_ms = STALL_MS, .peer = "source" };
    struct mig_tls_options options = { .credentials = r->credentials, .handshake_timeout_ms = HANDSHAKE_MS };
    struct mig_tls_session *session = NULL;
    if (mig_tls_handshake(&session, &io, &options, r->error, sizeof(r->error)) != 0) {
        r->result = -100;
        return NULL;
    }
    uint8_t byte;
    r->result = mig_tls_read(session, &io, &byte, 1, r->eof_ok, r->error, sizeof(r->error));
    mig_tls_session_free(session);
    return NULL;
}

Test(tls, end_of_stream_with_and_without_eof_ok, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "keys.psk");
    struct mig_tls_credentials *server = load_psk(MIG_TLS_SERVER, dir, "keys.psk");
    for (int eof_ok = 1; eof_ok >= 0; eof_ok--) {
        int fds[2];
        socket_pair(fds);
        struct closing_reader reader = { .fd = fds[1], .credentials = server, .eof_ok = eof_ok };
        pthread_t thread;
        cr_assert_eq(pthread_create(&thread, NULL, closing_reader_main, &reader), 0);
        struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
        struct mig_tls_options options = { .credentials = client, .handshake_timeout_ms = HANDSHAKE_MS };
        struct mig_tls_session *session = NULL;
        char error[2048];
        cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), 0, "%s", error);
        cr_assert_eq(mig_tls_close(session, &io, error, sizeof(error)), 0, "%s", error);
        cr_assert_eq(pthread_join(thread, NULL), 0);
        if (eof_ok) {
            cr_assert_eq(reader.result, 1, "%s", reader.error);
        } else {
            cr_assert_eq(reader.result, -1);
            cr_assert_str_eq(reader.error, "source closed the connection (truncated stream: 0 of 1 bytes)");
        }
        mig_tls_session_free(session);
        close(fds[0]);
        close(fds[1]);
    }
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

Test(tls, wrong_psk_is_refused_on_both_sides, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "source.psk", PSK_IDENTITY, PSK_OTHER_HEX, 0600);
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "source.psk");
    struct mig_tls_credentials *server = load_psk(MIG_TLS_SERVER, dir, "keys.psk");
    struct pair_result r;
    run_handshake_pair(&r, client, server, NULL);
    cr_assert_eq(r.client_result, -1);
    cr_assert_eq(r.server.result, -1);
    char expected[1024];
    snprintf(expected, sizeof(expected),
             "TLS handshake with the source: the source's pre-shared key for identity \"" PSK_IDENTITY
             "\" is not the one in %s/keys.psk (is it the same keys.psk file on both hosts?)",
             dir);
    cr_assert(strncmp(r.server.error, expected, strlen(expected)) == 0, "server: %s", r.server.error);
    cr_assert(strstr(r.server.error, "(GnuTLS: ") != NULL, "server: %s", r.server.error);
    snprintf(expected, sizeof(expected),
             "TLS handshake with the destination: the destination refused it with the alert \"Illegal parameter\" (is "
             "%s/source.psk the same keys.psk file on both hosts?) (GnuTLS: A TLS fatal alert has been received.)",
             dir);
    cr_assert_str_eq(r.client_error, expected);

    /* Another identity: named on the destination. */
    mig_tls_credentials_free(client);
    tls_fixture_write_psk(dir, "identity.psk", "someone-else", PSK_KEY_HEX, 0600);
    client = load_psk(MIG_TLS_CLIENT, dir, "identity.psk");
    run_handshake_pair(&r, client, server, NULL);
    cr_assert_eq(r.client_result, -1);
    cr_assert_eq(r.server.result, -1);
    snprintf(expected, sizeof(expected),
             "TLS handshake with the source: the source's PSK identity \"someone-else\" is not \"" PSK_IDENTITY
             "\", the first in %s/keys.psk",
             dir);
    cr_assert(strncmp(r.server.error, expected, strlen(expected)) == 0, "server: %s", r.server.error);
    cr_assert(strstr(r.client_error, "TLS handshake with the destination: the destination refused it with the alert")
                  != NULL,
              "client: %s", r.client_error);
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

Test(tls, psk_file_format_errors_name_the_file_and_line)
{
    char dir[64], path[128], error[1024];
    tls_fixture_temp_dir(dir, sizeof(dir));
    struct mig_tls_credentials *c = NULL;
    static const struct {
        const char *text;
        const char *message;
    } cases[] = {
        { "no colon here\n", "line 1: expected IDENTITY:HEXKEY (QEMU's keys.psk format)" },
        { "\n# comment\nid:0011\n", "line 3: the key must be 16..256 bytes as an even number of hex digits, got 4 "
                                    "digits (psktool -s 32 makes a 32-byte key)" },
        { ":" PSK_KEY_HEX "\n", "line 1: the identity must be 1..128 characters" },
        { "id:" PSK_KEY_HEX "x\n", "line 1: the key must be 16..256 bytes as an even number of hex digits, got "
                                   "65 digits (psktool -s 32 makes a 32-byte key)" },
        { "id:zz112233445566778899aabbccddeeff\n", "line 1: the key has a character that is not a hex digit" },
        { "# only a comment\n", "no IDENTITY:HEXKEY line" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tls_fixture_write_file(dir, "keys.psk", cases[i].text, strlen(cases[i].text), 0600);
        snprintf(path, sizeof(path), "%s/keys.psk", dir);
        cr_assert_eq(mig_tls_credentials_load_psk(&c, MIG_TLS_SERVER, path, error, sizeof(error)), -1);
        cr_assert_null(c);
        char expected[512];
        snprintf(expected, sizeof(expected), "%s%s%s", path, cases[i].message[0] == 'n' ? ": " : " ",
                 cases[i].message);
        cr_assert_str_eq(error, expected);
    }
    /* CRLF line ends are fine. */
    const char *crlf = "id:" PSK_KEY_HEX "\r\n";
    tls_fixture_write_file(dir, "keys.psk", crlf, strlen(crlf), 0600);
    cr_assert_eq(mig_tls_credentials_load_psk(&c, MIG_TLS_CLIENT, path, error, sizeof(error)), 0, "%s", error);
    mig_tls_credentials_free(c);
    tls_fixture_remove_dir(dir);
}

Test(tls, key_files_readable_by_group_or_others_are_refused)
{
    char dir[64], path[128], error[1024], expected[512];
    tls_fixture_temp_dir(dir, sizeof(dir));
    struct mig_tls_credentials *c = NULL;
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0640);
    snprintf(path, sizeof(path), "%s/keys.psk", dir);
    cr_assert_eq(mig_tls_credentials_load_psk(&c, MIG_TLS_CLIENT, path, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected),
             "%s: key file is accessible by group or others (mode 0640); refusing it: chmod 600 %s", path, path);
    cr_assert_str_eq(error, expected);
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0604);
    cr_assert_eq(mig_tls_credentials_load_psk(&c, MIG_TLS_SERVER, path, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected),
             "%s: key file is accessible by group or others (mode 0604); refusing it: chmod 600 %s", path, path);
    cr_assert_str_eq(error, expected);

    /* x509: the server's key; the certificates themselves may be 0644. */
    tls_fixture_x509_dir(dir, &(struct x509_setup){ .server_key_mode = 0640 });
    cr_assert_eq(mig_tls_credentials_load_x509(&c, MIG_TLS_SERVER, dir, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected),
             "%s/server-key.pem: key file is accessible by group or others (mode 0640); refusing it: chmod 600 "
             "%s/server-key.pem",
             dir, dir);
    cr_assert_str_eq(error, expected);
    cr_assert_eq(mig_tls_credentials_load_x509(&c, MIG_TLS_CLIENT, dir, error, sizeof(error)), 0, "%s", error);
    mig_tls_credentials_free(c);

    snprintf(path, sizeof(path), "%s/missing.psk", dir);
    cr_assert_eq(mig_tls_credentials_load_psk(&c, MIG_TLS_SERVER, path, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected), "%s: cannot open: No such file or directory", path);
    cr_assert_str_eq(error, expected);
    tls_fixture_remove_dir(dir);
}

/* ---- x509 ---------------------------------------------------------------------- */

Test(tls, x509_handshake_both_sides_verified, .timeout = 60)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_x509_dir(dir, &(struct x509_setup){ 0 });
    struct mig_tls_credentials *client = load_x509(MIG_TLS_CLIENT, dir);
    struct mig_tls_credentials *server = load_x509(MIG_TLS_SERVER, dir);
    cr_assert_eq(mig_tls_credentials_kind(client), MIG_TLS_X509);
    struct pair_result r;
    run_handshake_pair(&r, client, server, "localhost");
    cr_assert_eq(r.client_result, 0, "%s", r.client_error);
    cr_assert_eq(r.server.result, 0, "%s", r.server.error);
    cr_assert_str_eq(r.client_cipher, "TLS_AES_256_GCM_SHA384");
    cr_assert_str_eq(r.server.cipher, "TLS_AES_256_GCM_SHA384");

    /* The name checked is the one the source connected to. */
    run_handshake_pair(&r, client, server, "migration.example");
    cr_assert_eq(r.client_result, -1);
    char expected[1024];
    snprintf(expected, sizeof(expected),
             "TLS handshake with the destination: the destination's certificate is refused: The certificate is NOT "
             "trusted. The name in the certificate does not match the expected. (checked against %s/ca-cert.pem) "
             "(GnuTLS: Error in the certificate verification.)",
             dir);
    cr_assert_str_eq(r.client_error, expected);
    cr_assert_eq(r.server.result, -1);

    /* A client without a name to check is a programming error, said so. */
    run_handshake_pair(&r, client, server, NULL);
    cr_assert_str_eq(r.client_error, "TLS handshake with the destination: no name to check its certificate against "
                                     "(the HOST of tcp:HOST:PORT)");
    cr_assert_eq(r.server.result, -1);
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

Test(tls, x509_expired_server_certificate_is_refused, .timeout = 60)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_x509_dir(dir, &(struct x509_setup){ .server_expired = true });
    struct mig_tls_credentials *client = load_x509(MIG_TLS_CLIENT, dir);
    struct mig_tls_credentials *server = load_x509(MIG_TLS_SERVER, dir);
    struct pair_result r;
    run_handshake_pair(&r, client, server, "localhost");
    cr_assert_eq(r.client_result, -1);
    char expected[1024];
    snprintf(expected, sizeof(expected),
             "TLS handshake with the destination: the destination's certificate is refused: The certificate is NOT "
             "trusted. The certificate chain uses expired certificate. (checked against %s/ca-cert.pem) (GnuTLS: "
             "Error in the certificate verification.)",
             dir);
    cr_assert_str_eq(r.client_error, expected);
    cr_assert_eq(r.server.result, -1);
    snprintf(expected, sizeof(expected),
             "TLS handshake with the source: the source refused it with the alert \"Certificate is bad\" (does it "
             "trust this host's server certificate in %s: same CA, not expired?) (GnuTLS: A TLS fatal alert has been "
             "received.)",
             dir);
    cr_assert_str_eq(r.server.error, expected);
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

Test(tls, x509_client_certificate_from_another_ca_is_refused, .timeout = 60)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_x509_dir(dir, &(struct x509_setup){ .client_from_other_ca = true });
    struct mig_tls_credentials *client = load_x509(MIG_TLS_CLIENT, dir);
    struct mig_tls_credentials *server = load_x509(MIG_TLS_SERVER, dir);
    struct pair_result r;
    run_handshake_pair(&r, client, server, "localhost");
    cr_assert_eq(r.server.result, -1);
    char expected[1024];
    snprintf(expected, sizeof(expected),
             "TLS handshake with the source: the source's certificate is refused: The certificate is NOT trusted. "
             "The certificate issuer is unknown. (checked against %s/ca-cert.pem) (GnuTLS: Error in the certificate "
             "verification.)",
             dir);
    cr_assert_str_eq(r.server.error, expected);
    cr_assert_eq(r.client_result, -1);
    snprintf(expected, sizeof(expected),
             "TLS handshake with the destination: the destination refused it with the alert \"Certificate is bad\" "
             "(does it trust this host's client certificate in %s: same CA, not expired?) (GnuTLS: A TLS fatal alert "
             "has been received.)",
             dir);
    cr_assert_str_eq(r.client_error, expected);
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

/* ---- plaintext against TLS ------------------------------------------------------ */

/* A plaintext ringvm source: sends HELLO, reads the reply frame. */
Test(tls, plaintext_source_against_tls_destination, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *server = load_psk(MIG_TLS_SERVER, dir, "keys.psk");
    int fds[2];
    socket_pair(fds);
    struct tls_end end = { .fd = fds[1], .credentials = server, .handshake_ms = HANDSHAKE_MS };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, server_main, &end), 0);

    uint8_t hello[MIG_HELLO_SIZE] = { 0 };
    uint8_t frame[MIG_HEADER_SIZE + MIG_HELLO_SIZE];
    size_t total = mig_frame_encode(frame, MIG_FRAME_HELLO, 0, hello, sizeof(hello));
    cr_assert_eq(mig_tls_is_client_hello(frame, total), false);
    struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
    char error[1024];
    cr_assert_eq(mig_io_write(&io, frame, total, error, sizeof(error)), 0, "%s", error);
    uint8_t header[MIG_HEADER_SIZE];
    cr_assert_eq(mig_io_read(&io, header, sizeof(header), false, error, sizeof(error)), 0, "%s", error);
    struct mig_frame_header decoded;
    cr_assert_eq(mig_header_decode(header, 0, &decoded, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(decoded.type, MIG_FRAME_ERROR);
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
    cr_assert_eq(mig_io_read(&io, payload, decoded.length, false, error, sizeof(error)), 0, "%s", error);
    uint32_t code = 0;
    char message[MIG_ERROR_MAX_MESSAGE + 1];
    mig_error_decode(payload, decoded.length, &code, message, sizeof(message));
    cr_assert_eq(code, MIG_ERR_CONFIG);
    cr_assert_str_eq(message, "this destination requires TLS: start the migration with --tls-psk FILE or "
                              "--tls-creds DIR");
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(end.result, -1);
    cr_assert_str_eq(end.error, "TLS handshake with the source: the source speaks plaintext (a ringvm frame of type 1 "
                                "arrived instead of a TLS ClientHello): start the migration with --tls-psk or "
                                "--tls-creds, or this destination without them (GnuTLS: An unexpected TLS packet "
                                "was received.)");
    close(fds[0]);
    close(fds[1]);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

/* A plaintext ringvm destination: reads a frame header, sees TLS, says so. */
struct plaintext_destination {
    int fd;
    bool saw_client_hello;
    int result;
    char error[512];
};

static void *plaintext_destination_main(void *argument)
{
    struct plaintext_destination *d = argument;
    struct mig_io io = { .fd = d->fd, .stall_ms = STALL_MS, .peer = "source" };
    uint8_t header[MIG_HEADER_SIZE];
    d->result = mig_io_read(&io, header, sizeof(header), false, d->error, sizeof(d->error));
    if (d->result != 0)
        return NULL;
    d->saw_client_hello = mig_tls_is_client_hello(header, sizeof(header));
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(MIG_ERR_CONFIG,
                                     "the source speaks TLS; start this destination with --tls-psk or --tls-creds",
                                     payload);
    uint8_t frame[MIG_HEADER_SIZE + sizeof(payload)];
    size_t total = mig_frame_encode(frame, MIG_FRAME_ERROR, 0, payload, length);
    d->result = mig_io_write(&io, frame, total, d->error, sizeof(d->error));
    return NULL;
}

Test(tls, tls_source_against_plaintext_destination, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "keys.psk");
    int fds[2];
    socket_pair(fds);
    struct plaintext_destination destination = { .fd = fds[1] };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, plaintext_destination_main, &destination), 0);
    struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_tls_options options = { .credentials = client, .handshake_timeout_ms = HANDSHAKE_MS };
    struct mig_tls_session *session = NULL;
    char error[2048];
    cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), -1);
    cr_assert_null(session);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(destination.result, 0, "%s", destination.error);
    cr_assert(destination.saw_client_hello, "the plaintext side recognises the ClientHello");
    cr_assert_str_eq(error, "TLS handshake with the destination: the destination speaks plaintext, not TLS; it "
                            "answered with ERROR code 1: \"the source speaks TLS; start this destination with "
                            "--tls-psk or --tls-creds\" (start it with --tls-psk or --tls-creds, or migrate without "
                            "TLS) (GnuTLS: An unexpected TLS packet was received.)");
    close(fds[0]);
    close(fds[1]);
    mig_tls_credentials_free(client);
    tls_fixture_remove_dir(dir);
}

Test(tls, client_hello_recognition)
{
    static const uint8_t client_hello[] = { 22, 3, 1, 0x01, 0x20, 1 };
    static const uint8_t server_hello[] = { 22, 3, 3, 0x00, 0x7a, 2 };
    static const uint8_t application[] = { 23, 3, 3, 0x00, 0x20, 0 };
    cr_assert_eq(mig_tls_is_client_hello(client_hello, 6), true);
    cr_assert_eq(mig_tls_is_client_hello(client_hello, 3), true);
    cr_assert_eq(mig_tls_is_client_hello(client_hello, 2), false);
    cr_assert_eq(mig_tls_is_client_hello(server_hello, 6), false);
    cr_assert_eq(mig_tls_is_client_hello(application, 6), false);
}

/* ---- timeouts and cancel ---------------------------------------------------------- */

Test(tls, silent_peer_meets_the_handshake_deadline_and_cancel_is_seen, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "keys.psk");
    int fds[2];
    socket_pair(fds);
    struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_tls_options options = { .credentials = client, .handshake_timeout_ms = 300 };
    struct mig_tls_session *session = NULL;
    char error[2048];
    cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "TLS handshake with the destination: receiving from destination: no answer before the "
                            "TLS handshake's deadline (GnuTLS: Error in the pull function.)");
    _Atomic bool cancel = true;
    io.cancel = &cancel;
    options.handshake_timeout_ms = 60000;
    cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "TLS handshake with the destination: cancelled (GnuTLS: Error in the pull function.)");
    close(fds[0]);
    close(fds[1]);
    mig_tls_credentials_free(client);
    tls_fixture_remove_dir(dir);
}

/* ---- a man in the middle ------------------------------------------------------ */

static bool end_handshake_done(void *argument)
{
    return atomic_load(&((struct tls_end *)argument)->handshake_done);
}

Test(tls, man_in_the_middle_flipping_one_byte_is_caught_by_the_record_layer, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "keys.psk");
    struct mig_tls_credentials *server = load_psk(MIG_TLS_SERVER, dir, "keys.psk");
    int client_side[2], server_side[2];
    socket_pair(client_side);
    socket_pair(server_side);
    struct tls_fixture_relay relay = { .client_fd = client_side[1], .server_fd = server_side[0] };
    pthread_t relay_thread, server_thread;
    cr_assert_eq(pthread_create(&relay_thread, NULL, tls_fixture_relay_main, &relay), 0);

    size_t length = 3 * 16384;
    uint8_t *received = malloc(length), *sent = malloc(length);
    cr_assert(received != NULL && sent != NULL);
    memset(received, 0xAA, length);
    fill_pattern(sent, length, 7);
    struct tls_end end = { .fd = server_side[1], .credentials = server, .handshake_ms = HANDSHAKE_MS,
                           .action = SERVER_READ_ONCE, .length = length, .received = received };
    cr_assert_eq(pthread_create(&server_thread, NULL, server_main, &end), 0);

    struct mig_io io = { .fd = client_side[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_tls_options options = { .credentials = client, .handshake_timeout_ms = HANDSHAKE_MS };
    struct mig_tls_session *session = NULL;
    char error[2048];
    cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), 0, "%s", error);
    /* Arm the relay only once both handshakes are over: everything the
     * client sends from now on is application data. */
    cr_assert(harness_wait_until(end_handshake_done, &end, 10000));
    cr_assert_eq(end.result, 0, "%s", end.error);
    atomic_store(&relay.armed, true);
    cr_assert_eq(mig_tls_write(session, &io, sent, length, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(pthread_join(server_thread, NULL), 0);
    cr_assert_eq(end.result, -2);
    cr_assert_str_eq(end.error, "receiving from source: a TLS record failed authentication (bytes changed on the way: "
                                "a faulty link or an attacker); nothing of it was used (GnuTLS: Decryption has "
                                "failed.)");
    /* The corrupted record was the first: not one byte reached the reader. */
    for (size_t i = 0; i < length; i++)
        cr_assert_eq(received[i], 0xAA, "byte %zu was written", i);
    atomic_store(&relay.stop, true);
    cr_assert_eq(pthread_join(relay_thread, NULL), 0);
    cr_assert(relay.flipped);
    mig_tls_session_free(session);
    close(client_side[0]);
    close(client_side[1]);
    close(server_side[0]);
    close(server_side[1]);
    free(received);
    free(sent);
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}

/* Many small iovecs (frame headers, run headers) and a large one among
 * them: gathered into full records, every byte in order. */
Test(tls, many_small_iovecs_arrive_in_order, .timeout = 30)
{
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    struct mig_tls_credentials *client = load_psk(MIG_TLS_CLIENT, dir, "keys.psk");
    struct mig_tls_credentials *server = load_psk(MIG_TLS_SERVER, dir, "keys.psk");
    enum { PIECES = 3001 };
    static struct iovec iov[PIECES];
    size_t total = 0;
    for (int i = 0; i < PIECES; i++)
        total += i == 1500 ? 100000 : (size_t)(i % 40);     /* zero-length pieces included */
    uint8_t *sent = malloc(total), *received = malloc(total), *echoed = malloc(total);
    cr_assert(sent != NULL && received != NULL && echoed != NULL);
    fill_pattern(sent, total, 99);
    size_t offset = 0;
    for (int i = 0; i < PIECES; i++) {
        size_t length = i == 1500 ? 100000 : (size_t)(i % 40);
        iov[i] = (struct iovec){ .iov_base = sent + offset, .iov_len = length };
        offset += length;
    }
    int fds[2];
    socket_pair(fds);
    struct tls_end end = { .fd = fds[1], .credentials = server, .handshake_ms = HANDSHAKE_MS,
                           .action = SERVER_ECHO, .length = total, .received = received };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, server_main, &end), 0);
    struct mig_io io = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_tls_options options = { .credentials = client, .handshake_timeout_ms = HANDSHAKE_MS };
    struct mig_tls_session *session = NULL;
    char error[2048];
    cr_assert_eq(mig_tls_handshake(&session, &io, &options, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_tls_writev(session, &io, iov, PIECES, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_tls_read(session, &io, echoed, total, false, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(end.result, 0, "%s", end.error);
    cr_assert_eq(memcmp(received, sent, total), 0);
    cr_assert_eq(memcmp(echoed, sent, total), 0);
    mig_tls_session_free(session);
    close(fds[0]);
    close(fds[1]);
    free(sent);
    free(received);
    free(echoed);
    mig_tls_credentials_free(client);
    mig_tls_credentials_free(server);
    tls_fixture_remove_dir(dir);
}
