/*
 * The global dirty set: one bit per guest RAM page (page index = RAM offset
 * / 4096), double-buffered in two generations, optionally sharded per NUMA
 * node (every shard is a full-size bitmap allocated on its node; a writer
 * sets bits only in its own node's shard, dirty_set_take() ORs the shards).
 *
 * Writers (harvesters, the vCPU thread on ring-full, the bitmap sync thread,
 * the VMM marking pages it wrote) bracket their marks in a write section:
 *
 *     struct dirty_set_writer w;
 *     dirty_set_write_begin(set, shard, &w);
 *     dirty_set_mark(&w, page); ...
 *     dirty_set_write_end(&w);
 *
 * dirty_set_take() (the migration thread) switches the current generation
 * and then waits until every section still writing into the old generation
 * has ended, then collects and clears the old generation. Hence a page marked
 * during the hand-over is in the old or in the new generation, never in
 * neither; the argument is written at dirty_set_take in dirty_set.c and in
 * docs/architecture.md ("The dirty set and the hand-over"). Sections must be short (one harvest batch): take waits
 * for them.
 *
 * Each generation keeps a summary level (one bit per 64-page word of the
 * bitmap) so take costs O(dirty words), not O(guest memory).
 *
 * Ownership / threads:
 *   - layout (pages, words, shard_count, the arrays): immutable from
 *     dirty_set_create to dirty_set_destroy;
 *   - generation: atomic, written only by dirty_set_take (serialized by
 *     take_lock), read by every writer;
 *   - bitmap words of the current generation: atomic fetch_or by any writer;
 *     the old generation is touched only by the taker, after the wait;
 *   - writer counts: atomic, per shard and generation parity.
 */
#ifndef RINGVM_DIRTYRING_DIRTY_SET_H
#define RINGVM_DIRTYRING_DIRTY_SET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "vmm/page_bitmap.h"

#define DIRTY_SET_MAX_SHARDS 16

struct dirty_set_gen {
    _Atomic uint64_t *words;        /* one bit per page */
    _Atomic uint64_t *summary;      /* one bit per word of words[] */
};

struct dirty_set_shard {
    int numa_node;                  /* -1 = not placed */
    struct dirty_set_gen gen[2];    /* indexed by generation & 1 */
    /* Open write sections per generation parity; own cache line. */
    _Alignas(64) _Atomic uint64_t writers[2];
    char pad[64 - 2 * sizeof(uint64_t)];
};

struct dirty_set {
    uint64_t pages;
    uint64_t words;                 /* ceil(pages / 64) */
    uint64_t summary_words;         /* ceil(words / 64) */
    unsigned shard_count;
    size_t bytes_words, bytes_summary;  /* allocation sizes per generation */
    pthread_mutex_t take_lock;      /* serializes takers */
    _Alignas(64) _Atomic uint64_t generation;   /* current = generation & 1 */
    char pad[64 - sizeof(uint64_t)];
    struct dirty_set_shard *shards; /* shard_count entries */
};

struct dirty_set_writer {
    struct dirty_set *set;
    struct dirty_set_shard *shard;
    _Atomic uint64_t *words;
    _Atomic uint64_t *summary;
    uint64_t generation;
    uint64_t marked;                /* new bits set in this section */
};

/* Sorted list of page indices handed to the migration by a take. */
struct dirty_pages {
    uint64_t *pages;
    uint64_t count;
    uint64_t capacity;
};

/* shard_nodes: shard_count NUMA nodes (NULL or -1 entries: not placed).
 * Returns 0 or -errno with a message on stderr. */
int dirty_set_create(struct dirty_set **out, uint64_t pages, unsigned shard_count,
                     const int *shard_nodes);
void dirty_set_destroy(struct dirty_set *set);

/* Shard whose node is numa_node, else shard 0. */
unsigned dirty_set_shard_for_node(const struct dirty_set *set, int numa_node);

void dirty_set_write_begin(struct dirty_set *set, unsigned shard, struct dirty_set_writer *w);
void dirty_set_write_end(struct dirty_set_writer *w);

/* page < set->pages (out-of-range pages are ignored). */
static inline void dirty_set_mark(struct dirty_set_writer *w, uint64_t page)
{
    if (page >= w->set->pages)
        return;
    uint64_t word = page / 64, bit = page_bitmap_bit(page);
    /* Already set (a page dirtied again before the take): no RMW. */
    if (atomic_load_explicit(&w->words[word], memory_order_relaxed) & bit)
        return;
    uint64_t old = atomic_fetch_or_explicit(&w->words[word], bit, memory_order_relaxed);
    if (old & bit)
        return;
    w->marked++;
    if (old == 0)
        page_bitmap_set_atomic(w->summary, word, memory_order_relaxed);
}

/* ORs nwords bitmap words covering pages [first_page, first_page + 64*nwords)
 * (bitmap mode); first_page must be a multiple of 64. */
void dirty_set_mark_words(struct dirty_set_writer *w, uint64_t first_page,
                          const uint64_t *bits, uint64_t nwords);

/* Convenience: one section marking [first_page, first_page + count). */
void dirty_set_mark_range(struct dirty_set *set, unsigned shard, uint64_t first_page,
                          uint64_t count);

/* Ends the current generation and hands it over: appends its pages (sorted,
 * all shards merged) to out, clears it. Returns the number of pages, or -1
 * (ENOMEM growing out; the generation's pages are then lost to the caller:
 * treat as fatal for the migration). */
int64_t dirty_set_take(struct dirty_set *set, struct dirty_pages *out);
/* The same into a caller bitmap of set->words words (ORed in). */
int64_t dirty_set_take_bitmap(struct dirty_set *set, uint64_t *bitmap);

/* A take whose pages are discarded (tracking restarts). */
int64_t dirty_set_clear(struct dirty_set *set);

/* Pages currently in the open generation (a racy snapshot: O(words)). */
uint64_t dirty_set_count_current(struct dirty_set *set);

void dirty_pages_init(struct dirty_pages *pages);
void dirty_pages_free(struct dirty_pages *pages);

#endif
