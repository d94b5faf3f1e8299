/* Key material for the TLS tests (see tls_fixtures.h). */
#include "tests/tls_fixtures.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include "migration/transport.h"

/* ---- files ------------------------------------------------------------------- */

void tls_fixture_temp_dir(char *path, size_t size)
{
    snprintf(path, size, "/tmp/ringvm-tls-XXXXXX");
    cr_assert_not_null(mkdtemp(path), "mkdtemp: %s", strerror(errno));
}

void tls_fixture_write_file(const char *directory, const char *name, const void *data, size_t length, mode_t mode)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", directory, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, data, length), (ssize_t)length);
    cr_assert_eq(fchmod(fd, mode), 0);     /* exactly mode, whatever the umask */
    close(fd);
}

void tls_fixture_remove_dir(const char *directory)
{
    DIR *d = opendir(directory);
    if (d == NULL)
        return;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", directory, entry->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(directory);
}


void tls_fixture_write_psk(const char *directory, const char *name, const char *identity, const char *hex,
                      mode_t mode)
{
    char text[512];
    int length = snprintf(text, sizeof(text), "# made by test_tls.c\n\n%s:%s\nsecond:%s\n", identity, hex, hex);
    tls_fixture_write_file(directory, name, text, (size_t)length, mode);
}

/* ---- certificates -------------------------------------------------------------- */

struct test_identity {
    gnutls_x509_crt_t certificate;
    gnutls_x509_privkey_t key;
};

enum certificate_kind { CERT_CA, CERT_SERVER, CERT_CLIENT };

static void make_identity(struct test_identity *out, enum certificate_kind kind, const char *common_name,
                          const struct test_identity *issuer, time_t not_before, time_t not_after, unsigned serial)
{
    cr_assert_eq(gnutls_x509_privkey_init(&out->key), 0);
    cr_assert_eq(gnutls_x509_privkey_generate(out->key, GNUTLS_PK_ECDSA,
                                              GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
                 0);
    cr_assert_eq(gnutls_x509_crt_init(&out->certificate), 0);
    gnutls_x509_crt_t c = out->certificate;
    cr_assert_eq(gnutls_x509_crt_set_version(c, 3), 0);
    unsigned char serial_bytes[4] = { 0x01, (unsigned char)(serial >> 16), (unsigned char)(serial >> 8),
                                      (unsigned char)serial };
    cr_assert_eq(gnutls_x509_crt_set_serial(c, serial_bytes, sizeof(serial_bytes)), 0);
    cr_assert_eq(gnutls_x509_crt_set_activation_time(c, not_before), 0);
    cr_assert_eq(gnutls_x509_crt_set_expiration_time(c, not_after), 0);
    char dn[128];
    snprintf(dn, sizeof(dn), "CN=%s,O=ringvm tests", common_name);
    const char *error_position = NULL;
    cr_assert_eq(gnutls_x509_crt_set_dn(c, dn, &error_position), 0);
    cr_assert_eq(gnutls_x509_crt_set_key(c, out->key), 0);
    if (kind == CERT_CA) {
        cr_assert_eq(gnutls_x509_crt_set_basic_constraints(c, 1, -1), 0);
        cr_assert_eq(gnutls_x509_crt_set_key_usage(c, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN), 0);
    } else {
        cr_assert_eq(gnutls_x509_crt_set_basic_constraints(c, 0, -1), 0);
        cr_assert_eq(gnutls_x509_crt_set_key_usage(c, GNUTLS_KEY_DIGITAL_SIGNATURE), 0);
        cr_assert_eq(gnutls_x509_crt_set_key_purpose_oid(
                         c, kind == CERT_SERVER ? GNUTLS_KP_TLS_WWW_SERVER : GNUTLS_KP_TLS_WWW_CLIENT, 0),
                     0);
        if (kind == CERT_SERVER)
            cr_assert_eq(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_DNSNAME, "localhost", 9,
                                                              GNUTLS_FSAN_SET),
                         0);
    }
    gnutls_x509_crt_t signer = issuer != NULL ? issuer->certificate : c;
    gnutls_x509_privkey_t signer_key = issuer != NULL ? issuer->key : out->key;
    cr_assert_eq(gnutls_x509_crt_sign2(c, signer, signer_key, GNUTLS_DIG_SHA256, 0), 0);
}

static void free_identity(struct test_identity *identity)
{
    gnutls_x509_crt_deinit(identity->certificate);
    gnutls_x509_privkey_deinit(identity->key);
}

static void write_identity(const char *directory, const char *prefix, const struct test_identity *identity,
                           bool with_key, mode_t key_mode)
{
    gnutls_datum_t pem = { NULL, 0 };
    char name[64];
    cr_assert_eq(gnutls_x509_crt_export2(identity->certificate, GNUTLS_X509_FMT_PEM, &pem), 0);
    snprintf(name, sizeof(name), "%s-cert.pem", prefix);
    tls_fixture_write_file(directory, name, pem.data, pem.size, 0644);
    gnutls_free(pem.data);
    if (with_key) {
        cr_assert_eq(gnutls_x509_privkey_export2(identity->key, GNUTLS_X509_FMT_PEM, &pem), 0);
        snprintf(name, sizeof(name), "%s-key.pem", prefix);
        tls_fixture_write_file(directory, name, pem.data, pem.size, key_mode);
        gnutls_free(pem.data);
    }
}


/* ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
 * client-key.pem in directory (QEMU's layout; both sides read the same
 * directory here). */
void tls_fixture_x509_dir(const char *directory, const struct x509_setup *setup)
{
    time_t now = time(NULL);
    struct test_identity ca, other_ca, server, client;
    make_identity(&ca, CERT_CA, "ringvm test CA", NULL, now - 3600, now + 86400, 1);
    make_identity(&other_ca, CERT_CA, "another CA", NULL, now - 3600, now + 86400, 2);
    if (setup->server_expired)
        make_identity(&server, CERT_SERVER, "localhost", &ca, now - 3 * 86400, now - 86400, 3);
    else
        make_identity(&server, CERT_SERVER, "localhost", &ca, now - 3600, now + 86400, 3);
    make_identity(&client, CERT_CLIENT, "source", setup->client_from_other_ca ? &other_ca : &ca, now - 3600,
                  now + 86400, 4);
    write_identity(directory, "ca", &ca, false, 0);
    write_identity(directory, "server", &server, true, setup->server_key_mode != 0 ? setup->server_key_mode : 0600);
    write_identity(directory, "client", &client, true, 0600);
    free_identity(&ca);
    free_identity(&other_ca);
    free_identity(&server);
    free_identity(&client);
}


/* ---- a man in the middle ------------------------------------------------------ */


static void relay_parse_and_flip(struct tls_fixture_relay *r, uint8_t *data, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        if (r->body_left == 0) {
            r->header[r->header_have++] = data[i];
            if (r->header_have == 5) {
                r->body_left = (size_t)r->header[3] << 8 | r->header[4];
                r->body_offset = 0;
                r->header_have = 0;
                bool candidate = !r->flipped && r->header[0] == 23 && atomic_load(&r->armed);
                r->flip_this_record = candidate && r->records_seen >= r->skip_records;
                if (candidate)
                    r->records_seen++;
            }
            continue;
        }
        if (r->flip_this_record && r->body_offset == 100) {
            data[i] ^= 0x01;
            r->flipped = true;
            r->flip_this_record = false;
        }
        r->body_offset++;
        r->body_left--;
    }
}

void *tls_fixture_relay_main(void *argument)
{
    struct tls_fixture_relay *r = argument;
    uint8_t buffer[65536];
    bool client_open = true, server_open = true;
    while ((client_open || server_open) && !atomic_load(&r->stop)) {
        struct pollfd p[2] = { { .fd = client_open ? r->client_fd : -1, .events = POLLIN },
                               { .fd = server_open ? r->server_fd : -1, .events = POLLIN } };
        if (poll(p, 2, 100) <= 0)
            continue;
        for (int side = 0; side < 2; side++) {
            if (p[side].revents == 0)
                continue;
            int from = side == 0 ? r->client_fd : r->server_fd;
            int to = side == 0 ? r->server_fd : r->client_fd;
            ssize_t got = recv(from, buffer, sizeof(buffer), MSG_DONTWAIT);
            if (got < 0 && errno == EAGAIN)
                continue;
            if (got <= 0) {
                shutdown(to, SHUT_WR);
                if (side == 0)
                    client_open = false;
                else
                    server_open = false;
                continue;
            }
            if (side == 0)
                relay_parse_and_flip(r, buffer, (size_t)got);
            struct mig_io io = { .fd = to, .stall_ms = 5000u, .peer = "relay" };
            char error[256];
            if (mig_io_write(&io, buffer, (size_t)got, error, sizeof(error)) != 0)
                return NULL;
        }
    }
    return NULL;
}

