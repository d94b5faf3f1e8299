/*
 * Throwaway TLS credentials for the benchmarks that compare TLS with
 * plaintext (bench/tls-throughput.c, bench/migrate-tls.c): a fresh
 * directory under /tmp holding keys.psk (one identity, QEMU's format) and
 * an x509 CA with a server certificate for "localhost" and a client
 * certificate, ECDSA P-256, valid for a day, every file mode 0600: the
 * layout ringvm's --tls-psk / --tls-creds and ringctl migrate read.
 *
 * Ownership: plain functions; the caller owns the directory.
 */
#ifndef RINGVM_BENCH_LIB_BENCH_TLS_H
#define RINGVM_BENCH_LIB_BENCH_TLS_H

#include <stddef.h>

/* Makes the directory (its path in directory, at least 32 bytes) and the
 * files. 0, or -1 with the reason on stderr prefixed with `program`. */
int bench_tls_make_credentials(char *directory, size_t size, const char *program);
/* Removes the files and the directory. */
void bench_tls_remove_credentials(const char *directory);

#endif
