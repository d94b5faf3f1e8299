/* The post-copy digest (migration/page_digest.h). */
#include "migration/page_digest.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#include <xxh_x86dispatch.h>

#include "vmm/memory_extents.h"

#define PAGE_DIGEST_PAGE 4096u

void page_digest_init(struct page_digest *digest)
{
    memset(digest, 0, sizeof(*digest));
}

void page_digest_add(struct page_digest *digest, uint64_t page, const void *data)
{
    XXH128_hash_t hash = XXH3_128bits_withSeed(data, PAGE_DIGEST_PAGE, page);
    digest->low += hash.low64;
    digest->high += hash.high64;
    digest->pages++;
}

void page_digest_add_zero(struct page_digest *digest, uint64_t page)
{
    static const uint8_t zero[PAGE_DIGEST_PAGE];
    page_digest_add(digest, page, zero);
}

void page_digest_merge(struct page_digest *digest, const struct page_digest *other)
{
    digest->low += other->low;
    digest->high += other->high;
    digest->pages += other->pages;
}

void page_digest_hex(const struct page_digest *digest, char hex[PAGE_DIGEST_HEX_SIZE])
{
    snprintf(hex, PAGE_DIGEST_HEX_SIZE, "%016llx%016llx", (unsigned long long)digest->high,
             (unsigned long long)digest->low);
}

int page_digest_memory(const struct guest_memory *memory, char hex[PAGE_DIGEST_HEX_SIZE])
{
    struct page_digest digest;
    page_digest_init(&digest);
    uint64_t pages = memory->size / PAGE_DIGEST_PAGE;
    uint64_t page = 0;
    struct guest_ram ram = guest_memory_ram(memory);
    while (page < pages) {
        /* The next data extent; pages before it are zero pages. */
        uint64_t data_start, data_end;
        int result = guest_ram_next_data(&ram, page, &data_start, &data_end);
        if (result != 0)
            return result;
        for (; page < data_start; page++)
            page_digest_add_zero(&digest, page);
        for (; page < data_end; page++)
            page_digest_add(&digest, page, memory->host + page * PAGE_DIGEST_PAGE);
    }
    page_digest_hex(&digest, hex);
    return 0;
}
