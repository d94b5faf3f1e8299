/* See bench_tls.h. */
#include "bench/lib/bench_tls.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

static const char *const credential_files[] = { "keys.psk", "ca-cert.pem", "server-cert.pem", "server-key.pem",
                                                 "client-cert.pem", "client-key.pem" };

static int write_file(const char *directory, const char *name, const void *data, size_t length, const char *program)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", directory, name);
    FILE *f = fopen(path, "w");
    bool written = f != NULL && fchmod(fileno(f), 0600) == 0 && fwrite(data, 1, length, f) == length;
    if (f != NULL && fclose(f) != 0)
        written = false;
    if (!written)
        fprintf(stderr, "%s: writing %s failed\n", program, path);
    return written ? 0 : -1;
}

static int make_identity(gnutls_x509_crt_t *certificate, gnutls_x509_privkey_t *key, bool ca, const char *name,
                         gnutls_x509_crt_t issuer, gnutls_x509_privkey_t issuer_key, unsigned char serial)
{
    time_t now = time(NULL);
    char dn[128];
    snprintf(dn, sizeof(dn), "CN=%s", name);
    unsigned char serial_bytes[2] = { 1, serial };
    if (gnutls_x509_privkey_init(key) != 0 ||
        gnutls_x509_privkey_generate(*key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0) != 0 ||
        gnutls_x509_crt_init(certificate) != 0 || gnutls_x509_crt_set_version(*certificate, 3) != 0 ||
        gnutls_x509_crt_set_serial(*certificate, serial_bytes, 2) != 0 ||
        gnutls_x509_crt_set_activation_time(*certificate, now - 3600) != 0 ||
        gnutls_x509_crt_set_expiration_time(*certificate, now + 86400) != 0 ||
        gnutls_x509_crt_set_dn(*certificate, dn, NULL) != 0 || gnutls_x509_crt_set_key(*certificate, *key) != 0 ||
        gnutls_x509_crt_set_basic_constraints(*certificate, ca ? 1 : 0, -1) != 0)
        return -1;
    if (!ca && gnutls_x509_crt_set_subject_alt_name(*certificate, GNUTLS_SAN_DNSNAME, "localhost", 9,
                                                    GNUTLS_FSAN_SET) != 0)
        return -1;
    return gnutls_x509_crt_sign2(*certificate, issuer != NULL ? issuer : *certificate,
                                 issuer_key != NULL ? issuer_key : *key, GNUTLS_DIG_SHA256, 0) == 0 ? 0 : -1;
}

static int export_identity(const char *directory, const char *prefix, gnutls_x509_crt_t certificate,
                           gnutls_x509_privkey_t key, const char *program)
{
    gnutls_datum_t pem;
    char name[64];
    if (gnutls_x509_crt_export2(certificate, GNUTLS_X509_FMT_PEM, &pem) != 0)
        return -1;
    snprintf(name, sizeof(name), "%s-cert.pem", prefix);
    int result = write_file(directory, name, pem.data, pem.size, program);
    gnutls_free(pem.data);
    if (result != 0 || key == NULL)
        return result;
    if (gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &pem) != 0)
        return -1;
    snprintf(name, sizeof(name), "%s-key.pem", prefix);
    result = write_file(directory, name, pem.data, pem.size, program);
    gnutls_free(pem.data);
    return result;
}

int bench_tls_make_credentials(char *directory, size_t size, const char *program)
{
    if (snprintf(directory, size, "/tmp/ringvm-tls-bench-XXXXXX") >= (int)size || mkdtemp(directory) == NULL) {
        fprintf(stderr, "%s: making a directory for the TLS credentials failed\n", program);
        return -1;
    }
    const char *psk = "bench:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    if (write_file(directory, "keys.psk", psk, strlen(psk), program) != 0)
        return -1;
    gnutls_x509_crt_t ca = NULL, server = NULL, client = NULL;
    gnutls_x509_privkey_t ca_key = NULL, server_key = NULL, client_key = NULL;
    int result = make_identity(&ca, &ca_key, true, "bench CA", NULL, NULL, 1) == 0 &&
                         make_identity(&server, &server_key, false, "localhost", ca, ca_key, 2) == 0 &&
                         make_identity(&client, &client_key, false, "source", ca, ca_key, 3) == 0
                     ? 0 : -1;
    if (result != 0)
        fprintf(stderr, "%s: making the x509 certificates failed\n", program);
    else if (export_identity(directory, "ca", ca, NULL, program) != 0 ||
             export_identity(directory, "server", server, server_key, program) != 0 ||
             export_identity(directory, "client", client, client_key, program) != 0)
        result = -1;
    gnutls_x509_crt_deinit(ca);
    gnutls_x509_crt_deinit(server);
    gnutls_x509_crt_deinit(client);
    gnutls_x509_privkey_deinit(ca_key);
    gnutls_x509_privkey_deinit(server_key);
    gnutls_x509_privkey_deinit(client_key);
    return result;
}

void bench_tls_remove_credentials(const char *directory)
{
    for (size_t i = 0; i < sizeof(credential_files) / sizeof(credential_files[0]); i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", directory, credential_files[i]);
        unlink(path);
    }
    rmdir(directory);
}
