/*
 * Which pages of guest RAM hold data, and giving pages back, for both
 * backings (vmm/memory.h): memfd RAM asks the file (SEEK_DATA/SEEK_HOLE,
 * FALLOC_FL_PUNCH_HOLE), anonymous RAM asks this process's page tables
 * (/proc/self/pagemap: present or swapped; MADV_DONTNEED). A page that
 * holds no data reads as zero and has never been written since it was
 * created or last given back: a migration sends it as a zero run without
 * reading it, a digest hashes it as zero, a post-copy destination's next
 * touch of it faults.
 *
 * Thread safety: every function may be called from any thread at once
 * (SEEK_DATA takes an absolute offset; the pagemap fd is opened once and
 * read with pread).
 */
#ifndef RINGVM_VMM_MEMORY_EXTENTS_H
#define RINGVM_VMM_MEMORY_EXTENTS_H

#include <stddef.h>
#include <stdint.h>

#include "vmm/memory.h"

#define GUEST_RAM_PAGE 4096u

/* What the page functions need of guest RAM; built from a struct
 * guest_memory (guest_memory_ram) or by hand (a post-copy destination's
 * options, tests). memfd -1: anonymous RAM. */
struct guest_ram {
    int memfd;
    uint8_t *host;
    uint64_t size;
};

static inline struct guest_ram guest_memory_ram(const struct guest_memory *memory)
{
    return (struct guest_ram){ .memfd = memory->memfd, .host = memory->host, .size = memory->size };
}

/* The next extent of pages holding data at or after page from:
 * [*data_start, *data_end), both clamped to the RAM's pages;
 * *data_start == *data_end == pages when only pages without data follow.
 * 0, or -errno when the host cannot say (the caller then treats every page
 * as data, which is always correct, only slower). */
int guest_ram_next_data(const struct guest_ram *ram, uint64_t from, uint64_t *data_start, uint64_t *data_end);

/* 1 when a page of [first, first + count) holds data, 0 when none does,
 * -errno when the host cannot say. Looks no further than the range. */
int guest_ram_holds_data(const struct guest_ram *ram, uint64_t first, uint64_t count);
/* The same for one page, and as fast when the answer is no as when it is
 * yes (guest_ram_holds_data's SEEK_DATA walks the whole hole after a page
 * that is one): 1 data, 0 a hole or past the end, -errno. */
int guest_ram_page_holds_data(const struct guest_ram *ram, uint64_t page);

/* Every page's "holds data" as a bitmap over the RAM's pages (a
 * vmm/page_bitmap.h bitmap, the caller's array of page_bitmap_words(pages)
 * words), for RAM
 * that no longer changes (a post-copy source after the switch-over). A
 * memfd is read with mincore in bounded steps (resident: data), and only
 * the runs of non-resident pages are asked with SEEK_DATA (swapped-out
 * data): never SEEK_HOLE, which shmem answers by visiting every page of
 * the data extent it starts in, one uninterruptible syscall of ~6 ms per
 * GiB that delayed the fault service sharing its core (docs/benchmarks.md).
 * Anonymous RAM: its pagemap. 0, or -errno (the map is then partial). */
int guest_ram_data_map(const struct guest_ram *ram, uint64_t *bits);

/* Gives [offset, offset + length) back (page-aligned) and checks that no
 * page of it holds data afterwards: a punch inside a shmem huge page the
 * kernel cannot split only zeroes the range and leaves it present, and a
 * post-copy destination relies on the next touch of a discarded page
 * faulting (a present zero page would be read as the guest's data). 0, or
 * -errno with the reason in error (-EBUSY: data remained). */
int guest_ram_discard(const struct guest_ram *ram, uint64_t offset, uint64_t length, char *error,
                      size_t error_size);

#endif
