/*
 * The post-copy digest: guest RAM as a sum over its pages, so it can be
 * accumulated in any order. A post-copy destination receives pages out of
 * order (on request and in the background) while the guest already runs
 * and writes them, so it can never hash its RAM in offset order as
 * memory_digest does (api/digest.h); it hashes each page as it places it.
 *
 *   digest = sum over pages p of XXH3-128(page p's 4096 bytes, seed p)
 *
 * summed as two 64-bit halves modulo 2^64 each, printed as 32 lowercase
 * hex digits (high half first). The seed binds each hash to its page, so
 * two pages swapping contents change the digest. Not a cryptographic
 * check (the TLS record layer is one): it catches lost, stale and
 * misplaced pages. Pure; the caller owns a struct page_digest.
 */
#ifndef RINGVM_MIGRATION_PAGE_DIGEST_H
#define RINGVM_MIGRATION_PAGE_DIGEST_H

#include <stdint.h>

#define PAGE_DIGEST_HEX_SIZE 33         /* 32 hex digits + NUL */

struct page_digest {
    uint64_t low;
    uint64_t high;
    uint64_t pages;                     /* pages added */
};

void page_digest_init(struct page_digest *digest);
void page_digest_add(struct page_digest *digest, uint64_t page, const void *data);
void page_digest_add_zero(struct page_digest *digest, uint64_t page);
void page_digest_merge(struct page_digest *digest, const struct page_digest *other);
void page_digest_hex(const struct page_digest *digest, char hex[PAGE_DIGEST_HEX_SIZE]);

struct guest_memory;
/* Every page of RAM (memfd holes hashed as zero pages without touching
 * them). The caller guarantees RAM does not change meanwhile. 0 or -errno. */
int page_digest_memory(const struct guest_memory *memory, char hex[PAGE_DIGEST_HEX_SIZE]);

#endif
