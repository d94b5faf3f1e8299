/*
 * Key material for the TLS tests (tests/test_tls.c, tests/test_tls_migration.c):
 * throwaway directories, keys.psk files and an x509 CA with server and client
 * certificates made with GnuTLS's API (ECDSA P-256; no certtool needed), in
 * the layout QEMU, libvirt and ringvm --tls-creds use. Every helper asserts
 * on failure. Nothing is shared between threads.
 */
#ifndef RINGVM_TESTS_TLS_FIXTURES_H
#define RINGVM_TESTS_TLS_FIXTURES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define PSK_IDENTITY "ringvm-test"
#define PSK_KEY_HEX "00112233445566778899aabbccddeeff0123456789abcdef0123456789abcdef"
#define PSK_OTHER_HEX "ff112233445566778899aabbccddeeff0123456789abcdef0123456789abcdef"

/* A fresh directory under /tmp (path: at least 32 bytes). */
void tls_fixture_temp_dir(char *path, size_t size);
/* directory/name with exactly mode, whatever the umask. */
void tls_fixture_write_file(const char *directory, const char *name, const void *data, size_t length, mode_t mode);
/* Removes the files in directory, then directory. */
void tls_fixture_remove_dir(const char *directory);
/* A keys.psk: a comment, a blank line, IDENTITY:HEX and a second line. */
void tls_fixture_write_psk(const char *directory, const char *name, const char *identity, const char *hex,
                           mode_t mode);

struct x509_setup {
    bool server_expired;            /* the destination's certificate ran out yesterday */
    bool client_from_other_ca;      /* the source's certificate is signed by a CA the destination does not trust */
    mode_t server_key_mode;         /* 0: 0600 */
};

/* ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
 * client-key.pem in directory (the server certificate is for "localhost"). */
void tls_fixture_x509_dir(const char *directory, const struct x509_setup *setup);

#include <stdatomic.h>
#include <stdint.h>

/* Relays bytes between client_fd and server_fd; once armed, flips one byte
 * in the body (offset 100) of the first TLS record the client sends after
 * that (its first application data record), or, with skip_records, of the
 * (skip_records + 1)-th record of type 23 counted since it was armed. Stops
 * when both sides closed or stop. Ownership: the relay thread writes the
 * parser fields and flipped (read after join); the test writes armed and
 * stop. */
struct tls_fixture_relay {
    int client_fd, server_fd;
    _Atomic bool armed;
    unsigned skip_records;      /* armed: flip in the client's first record of type 23 after this many */
    _Atomic bool stop;
    bool flipped;
    /* client -> server record parser */
    uint8_t header[5];
    size_t header_have;
    size_t body_left;
    size_t body_offset;
    bool flip_this_record;
    unsigned records_seen;
};
/* The relay thread's body (argument: struct tls_fixture_relay *). */
void *tls_fixture_relay_main(void *argument);

#endif
