/*
 * Page bitmaps: one bit per guest page, page p at bit p % 64 of 64-bit word
 * p / 64 (KVM's dirty bitmap layout too). Every page set in ringvm uses it:
 * the dirty set and bitmap tracking (dirtyring/), post-copy's received,
 * requested, unplaced and discarded sets, the source's stale set and the
 * RAM data map (migration/, vmm/memory_extents.c).
 *
 * The plain forms are for bitmaps one thread owns at the time of the call;
 * the _atomic forms take the memory order the owner's comment documents.
 * Nothing here checks the page against the bitmap's size: callers validate
 * pages from outside (a socket, a ring) before they come here.
 */
#ifndef RINGVM_VMM_PAGE_BITMAP_H
#define RINGVM_VMM_PAGE_BITMAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

static inline uint64_t page_bitmap_words(uint64_t pages)
{
    return (pages + 63) / 64;
}

/* A zeroed bitmap for `pages` pages (free() it); NULL when out of memory. */
static inline uint64_t *page_bitmap_alloc(uint64_t pages)
{
    return calloc(page_bitmap_words(pages) > 0 ? page_bitmap_words(pages) : 1, sizeof(uint64_t));
}

static inline uint64_t page_bitmap_bit(uint64_t page)
{
    return 1ull << (page % 64);
}

static inline bool page_bitmap_test(const uint64_t *bits, uint64_t page)
{
    return (bits[page / 64] >> (page % 64)) & 1;
}

static inline void page_bitmap_set(uint64_t *bits, uint64_t page)
{
    bits[page / 64] |= page_bitmap_bit(page);
}

static inline void page_bitmap_clear(uint64_t *bits, uint64_t page)
{
    bits[page / 64] &= ~page_bitmap_bit(page);
}

/* The valid bits of the last word of a `pages`-page bitmap (all ones when
 * pages is a multiple of 64). */
static inline uint64_t page_bitmap_last_word_mask(uint64_t pages)
{
    return pages % 64 != 0 ? (1ull << (pages % 64)) - 1 : ~0ull;
}

static inline bool page_bitmap_test_atomic(const _Atomic uint64_t *bits, uint64_t page, memory_order order)
{
    return (atomic_load_explicit(&bits[page / 64], order) >> (page % 64)) & 1;
}

/* Sets the page's bit; true when it was clear before (this caller set it). */
static inline bool page_bitmap_set_atomic(_Atomic uint64_t *bits, uint64_t page, memory_order order)
{
    uint64_t bit = page_bitmap_bit(page);
    return !(atomic_fetch_or_explicit(&bits[page / 64], bit, order) & bit);
}

/* Clears the page's bit; true when it was set before (this caller cleared it). */
static inline bool page_bitmap_clear_atomic(_Atomic uint64_t *bits, uint64_t page, memory_order order)
{
    uint64_t bit = page_bitmap_bit(page);
    return (atomic_fetch_and_explicit(&bits[page / 64], ~bit, order) & bit) != 0;
}

#endif
