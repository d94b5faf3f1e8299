/*
 * Which page of its region a ring-3 writer touches next (pattern seq,
 * random or hot), shared by the dirtier and the ledger. Inline: it sits in
 * the innermost loop, which runs natively at millions of pages/s.
 */
#ifndef RINGVM_GUEST_PAGE_WALK_H
#define RINGVM_GUEST_PAGE_WALK_H

#include "guest/guest.h"

struct page_walk {
    uint32_t pattern;           /* enum ringvm_pattern */
    uint64_t pages;             /* region size, > 0 */
    uint64_t hot_pages;         /* hot: first 10 % of the region (at least 1) */
    uint64_t cold_pages;        /* hot: the rest */
    uint64_t next;              /* seq: next page */
    uint64_t random_state;      /* xorshift64* state, never 0 */
    uint64_t in_pass;           /* random/hot: writes since the last pass */
    uint64_t passes;            /* seq: wrap-arounds; random/hot: writes / pages */
};

static inline void page_walk_init(struct page_walk *walk, uint32_t pattern, uint64_t pages,
                                  uint64_t seed)
{
    walk->pattern = pattern;
    walk->pages = pages;
    walk->hot_pages = pages / 10 ? pages / 10 : 1;
    walk->cold_pages = pages - walk->hot_pages;
    walk->next = 0;
    walk->random_state = seed ? seed : 0x9e3779b97f4a7c15ULL;
    walk->in_pass = 0;
    walk->passes = 0;
}

static inline uint64_t page_walk_random(struct page_walk *walk)
{
    uint64_t x = walk->random_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    walk->random_state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Uniform in [0, limit) from 32 random bits (limit < 2^32 pages = 16 TiB). */
static inline uint64_t page_walk_scale(uint64_t random32, uint64_t limit)
{
    return (random32 * limit) >> 32;
}

static inline uint64_t page_walk_next(struct page_walk *walk)
{
    if (walk->pattern == RINGVM_PATTERN_SEQ || walk->pattern > RINGVM_PATTERN_HOT) {
        uint64_t page = walk->next;
        if (++walk->next == walk->pages) {
            walk->next = 0;
            walk->passes++;
        }
        return page;
    }
    if (++walk->in_pass == walk->pages) {
        walk->in_pass = 0;
        walk->passes++;
    }
    uint64_t random = page_walk_random(walk);
    if (walk->pattern == RINGVM_PATTERN_RANDOM)
        return (uint64_t)(((unsigned __int128)random * walk->pages) >> 64);
    /* hot: 9 in 10 writes go to the hot pages */
    uint64_t decide = page_walk_scale(random & 0xffffffff, 10);
    uint64_t pick = random >> 32;
    if (decide < 9 || walk->cold_pages == 0)
        return page_walk_scale(pick, walk->hot_pages);
    return walk->hot_pages + page_walk_scale(pick, walk->cold_pages);
}

#endif
