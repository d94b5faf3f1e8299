/*
 * XXH3-128 digest of guest RAM: the whole RAM and every 64 MiB chunk, in
 * RAM-offset order (the memfd's byte order). Used by vm.memory-digest; the
 * migration source/destination digests must use the same function so they
 * compare equal.
 *
 * The caller guarantees the memory does not change while it is hashed
 * (vCPUs paused). Holes of the memfd (never written pages) are hashed as
 * zeros without touching them, so a digest does not allocate guest RAM.
 */
#ifndef RINGVM_API_DIGEST_H
#define RINGVM_API_DIGEST_H

#include <stdint.h>

#define MEMORY_DIGEST_CHUNK_BYTES (64ULL << 20)
#define MEMORY_DIGEST_HEX_SIZE 33       /* 32 hex digits + NUL */

struct guest_memory;

/* Called once per chunk, in order. */
typedef void (*memory_digest_chunk_fn)(uint64_t offset, uint64_t size,
                                       const char hex[MEMORY_DIGEST_HEX_SIZE], void *opaque);

/* Hex = canonical (big-endian) XXH128 form. Returns 0 or -errno. */
int memory_digest(const struct guest_memory *memory, char total_hex[MEMORY_DIGEST_HEX_SIZE],
                  memory_digest_chunk_fn chunk_fn, void *opaque);

/* The same over a plain buffer (no hole skipping); for tests. */
void memory_digest_buffer(const void *data, uint64_t size, char total_hex[MEMORY_DIGEST_HEX_SIZE],
                          memory_digest_chunk_fn chunk_fn, void *opaque);

#endif
