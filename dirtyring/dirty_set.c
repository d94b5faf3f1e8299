#include "dirtyring/dirty_set.h"
#include "vmm/page_bitmap.h"

#include <errno.h>
#include <numa.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void *alloc_zeroed(size_t bytes, int node)
{
    if (node >= 0 && numa_available() >= 0) {
        void *p = numa_alloc_onnode(bytes, node);   /* mmap: zero-filled */
        return p;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void free_zeroed(void *p, size_t bytes, int node)
{
    if (!p)
        return;
    if (node >= 0 && numa_available() >= 0)
        numa_free(p, bytes);
    else
        munmap(p, bytes);
}

static size_t round_page(size_t bytes)
{
    return (bytes + 4095) & ~(size_t)4095;
}

int dirty_set_create(struct dirty_set **out, uint64_t pages, unsigned shard_count,
                     const int *shard_nodes)
{
    *out = NULL;
    if (shard_count == 0)
        shard_count = 1;
    if (shard_count > DIRTY_SET_MAX_SHARDS) {
        fprintf(stderr, "ringvm: dirty set: %u shards requested, at most %d\n",
                shard_count, DIRTY_SET_MAX_SHARDS);
        return -EINVAL;
    }
    struct dirty_set *set = calloc(1, sizeof(*set));
    struct dirty_set_shard *shards = NULL;
    if (set)
        shards = aligned_alloc(64, round_page(sizeof(*shards) * shard_count));
    if (!set || !shards) {
        fprintf(stderr, "ringvm: dirty set: allocating %u shards: %s\n", shard_count,
                strerror(ENOMEM));
        free(set);
        free(shards);
        return -ENOMEM;
    }
    memset(shards, 0, sizeof(*shards) * shard_count);
    set->pages = pages;
    set->words = page_bitmap_words(pages);
    set->summary_words = page_bitmap_words(set->words);
    set->shard_count = shard_count;
    set->bytes_words = round_page(set->words * sizeof(uint64_t) + 8);
    set->bytes_summary = round_page(set->summary_words * sizeof(uint64_t) + 8);
    set->shards = shards;
    atomic_init(&set->generation, 0);
    pthread_mutex_init(&set->take_lock, NULL);

    for (unsigned s = 0; s < shard_count; s++) {
        struct dirty_set_shard *shard = &shards[s];
        shard->numa_node = shard_nodes ? shard_nodes[s] : -1;
        atomic_init(&shard->writers[0], 0);
        atomic_init(&shard->writers[1], 0);
        for (int g = 0; g < 2; g++) {
            shard->gen[g].words = alloc_zeroed(set->bytes_words, shard->numa_node);
            shard->gen[g].summary = alloc_zeroed(set->bytes_summary, shard->numa_node);
            if (!shard->gen[g].words || !shard->gen[g].summary) {
                fprintf(stderr, "ringvm: dirty set: allocating %zu bytes for %llu pages "
                        "(shard %u, node %d): %s\n", set->bytes_words,
                        (unsigned long long)pages, s, shard->numa_node, strerror(ENOMEM));
                dirty_set_destroy(set);
                return -ENOMEM;
            }
        }
    }
    *out = set;
    return 0;
}

void dirty_set_destroy(struct dirty_set *set)
{
    if (!set)
        return;
    for (unsigned s = 0; s < set->shard_count; s++) {
        struct dirty_set_shard *shard = &set->shards[s];
        for (int g = 0; g < 2; g++) {
            free_zeroed((void *)shard->gen[g].words, set->bytes_words, shard->numa_node);
            free_zeroed((void *)shard->gen[g].summary, set->bytes_summary, shard->numa_node);
        }
    }
    pthread_mutex_destroy(&set->take_lock);
    free(set->shards);
    free(set);
}

unsigned dirty_set_shard_for_node(const struct dirty_set *set, int numa_node)
{
    for (unsigned s = 0; s < set->shard_count; s++)
        if (set->shards[s].numa_node == numa_node)
            return s;
    return 0;
}

/*
 * Write sections. The protocol is a two-flag (Dekker) handshake between a
 * writer and the taker, all four operations seq_cst:
 *
 *   writer:  g = load(generation); fetch_add(writers[g&1]); recheck load(generation) == g
 *   taker:   store(generation, g+1);  then wait until load(writers[g&1]) == 0
 *
 * In the single total order of seq_cst operations, either the writer's
 * recheck comes after the taker's store (it sees g+1, backs out and retries
 * in the new generation), or it comes before, and then the writer's
 * fetch_add also precedes the taker's load of writers[], so the taker sees
 * the writer and waits for its release decrement in dirty_set_write_end.
 * The acquire load that finally reads 0 synchronizes with every such
 * decrement, so every bit set inside those sections is visible to the taker.
 */
void dirty_set_write_begin(struct dirty_set *set, unsigned shard_index, struct dirty_set_writer *w)
{
    struct dirty_set_shard *shard = &set->shards[shard_index < set->shard_count ? shard_index : 0];
    for (;;) {
        uint64_t g = atomic_load_explicit(&set->generation, memory_order_seq_cst);
        atomic_fetch_add_explicit(&shard->writers[g & 1], 1, memory_order_seq_cst);
        if (atomic_load_explicit(&set->generation, memory_order_seq_cst) == g) {
            w->set = set;
            w->shard = shard;
            w->words = shard->gen[g & 1].words;
            w->summary = shard->gen[g & 1].summary;
            w->generation = g;
            w->marked = 0;
            return;
        }
        /* A take switched generations under us: back out, retry. */
        atomic_fetch_sub_explicit(&shard->writers[g & 1], 1, memory_order_release);
    }
}

void dirty_set_write_end(struct dirty_set_writer *w)
{
    /* Release: every mark of this section happens-before the taker's
     * acquire load that sees the count drop. */
    atomic_fetch_sub_explicit(&w->shard->writers[w->generation & 1], 1, memory_order_release);
    w->shard = NULL;
}

void dirty_set_mark_words(struct dirty_set_writer *w, uint64_t first_page,
                          const uint64_t *bits, uint64_t nwords)
{
    uint64_t first_word = first_page >> 6;
    if (first_page & 63) {
        /* Unaligned: bit by bit. */
        for (uint64_t i = 0; i < nwords; i++)
            for (uint64_t b = bits[i]; b; b &= b - 1)
                dirty_set_mark(w, first_page + i * 64 + (uint64_t)__builtin_ctzll(b));
        return;
    }
    for (uint64_t i = 0; i < nwords; i++) {
        uint64_t v = bits[i];
        uint64_t word = first_word + i;
        if (!v || word >= w->set->words)
            continue;
        if (word == w->set->words - 1)
            v &= page_bitmap_last_word_mask(w->set->pages);
        uint64_t old = atomic_fetch_or_explicit(&w->words[word], v, memory_order_relaxed);
        w->marked += (uint64_t)__builtin_popcountll(v & ~old);
        if (old == 0 && v)
            page_bitmap_set_atomic(w->summary, word, memory_order_relaxed);
    }
}

void dirty_set_mark_range(struct dirty_set *set, unsigned shard, uint64_t first_page,
                          uint64_t count)
{
    struct dirty_set_writer w;
    dirty_set_write_begin(set, shard, &w);
    for (uint64_t p = first_page; p < first_page + count && p < set->pages; p++)
        dirty_set_mark(&w, p);
    dirty_set_write_end(&w);
}

/* Switches generations and waits for the old one's writers. Called with
 * take_lock held. Returns the old generation's parity. */
static unsigned switch_generation(struct dirty_set *set)
{
    uint64_t g = atomic_load_explicit(&set->generation, memory_order_relaxed);
    atomic_store_explicit(&set->generation, g + 1, memory_order_seq_cst);
    unsigned old = (unsigned)(g & 1);
    for (unsigned s = 0; s < set->shard_count; s++) {
        unsigned spins = 0;
        while (atomic_load_explicit(&set->shards[s].writers[old], memory_order_seq_cst) != 0) {
            /* Sections are one harvest batch long: spin briefly, then
             * yield so a preempted writer on this CPU can finish. */
            if (++spins > 64)
                sched_yield();
        }
    }
    /* The seq_cst loads above that returned 0 are also acquire loads: they
     * synchronize with the writers' release decrements. */
    return old;
}

typedef int (*word_fn)(void *opaque, uint64_t word_index, uint64_t bits);

/* Walks the old generation in page order, merging shards, clearing as it
 * goes (nobody else touches it now). */
static int64_t drain_old(struct dirty_set *set, unsigned old, word_fn fn, void *opaque)
{
    int64_t total = 0;
    int failed = 0;
    for (uint64_t sw = 0; sw < set->summary_words; sw++) {
        uint64_t summary = 0;
        for (unsigned s = 0; s < set->shard_count; s++) {
            _Atomic uint64_t *p = &set->shards[s].gen[old].summary[sw];
            if (atomic_load_explicit(p, memory_order_relaxed))
                summary |= atomic_exchange_explicit(p, 0, memory_order_relaxed);
        }
        while (summary) {
            uint64_t word = sw * 64 + (uint64_t)__builtin_ctzll(summary);
            summary &= summary - 1;
            uint64_t bits = 0;
            for (unsigned s = 0; s < set->shard_count; s++) {
                _Atomic uint64_t *p = &set->shards[s].gen[old].words[word];
                if (atomic_load_explicit(p, memory_order_relaxed))
                    bits |= atomic_exchange_explicit(p, 0, memory_order_relaxed);
            }
            if (!bits)
                continue;
            total += __builtin_popcountll(bits);
            if (!failed && fn(opaque, word, bits) < 0)
                failed = 1;     /* keep clearing so the generation is empty */
        }
    }
    return failed ? -1 : total;
}

static int append_pages(void *opaque, uint64_t word, uint64_t bits)
{
    struct dirty_pages *out = opaque;
    uint64_t need = out->count + (uint64_t)__builtin_popcountll(bits);
    if (need > out->capacity) {
        uint64_t cap = out->capacity ? out->capacity * 2 : 1024;
        while (cap < need)
            cap *= 2;
        uint64_t *p = realloc(out->pages, cap * sizeof(*p));
        if (!p)
            return -1;
        out->pages = p;
        out->capacity = cap;
    }
    for (; bits; bits &= bits - 1)
        out->pages[out->count++] = word * 64 + (uint64_t)__builtin_ctzll(bits);
    return 0;
}

static int or_bitmap(void *opaque, uint64_t word, uint64_t bits)
{
    uint64_t *bitmap = opaque;
    bitmap[word] |= bits;
    return 0;
}

/*
 * The hand-over. Claim: a page marked at any time is either in the
 * generation this take returns or in the next one, never in neither.
 *
 *  1. generation g+1 becomes current (seq_cst store). A section that begins
 *     after this point observes g+1 and writes to the other buffers.
 *  2. We wait until writers[g&1] == 0 in every shard (see the handshake
 *     comment above dirty_set_write_begin): every section that wrote, or
 *     might still write, into generation g has ended, and its bits are
 *     visible to us (release/acquire on the count).
 *  3. We collect and clear generation g. Nobody writes it any more: any
 *     later writer of parity g&1 must first observe generation g+2, which
 *     only the next take (after this one returns, take_lock) creates; by
 *     then this buffer is all zero again, ready to be the "new" generation.
 *
 * So a mark either ended before step 2 finished (it is returned now) or
 * began with generation >= g+1 (it is in the next take). Nothing is dropped
 * and nothing stays stale across takes.
 */
int64_t dirty_set_take(struct dirty_set *set, struct dirty_pages *out)
{
    pthread_mutex_lock(&set->take_lock);
    unsigned old = switch_generation(set);
    int64_t n = drain_old(set, old, append_pages, out);
    pthread_mutex_unlock(&set->take_lock);
    return n;
}

int64_t dirty_set_take_bitmap(struct dirty_set *set, uint64_t *bitmap)
{
    pthread_mutex_lock(&set->take_lock);
    unsigned old = switch_generation(set);
    int64_t n = drain_old(set, old, or_bitmap, bitmap);
    pthread_mutex_unlock(&set->take_lock);
    return n;
}

static int discard_word(void *opaque, uint64_t word, uint64_t bits)
{
    (void)opaque; (void)word; (void)bits;
    return 0;
}

int64_t dirty_set_clear(struct dirty_set *set)
{
    pthread_mutex_lock(&set->take_lock);
    unsigned old = switch_generation(set);
    int64_t n = drain_old(set, old, discard_word, NULL);
    pthread_mutex_unlock(&set->take_lock);
    return n;
}

uint64_t dirty_set_count_current(struct dirty_set *set)
{
    unsigned cur = (unsigned)(atomic_load_explicit(&set->generation, memory_order_acquire) & 1);
    uint64_t total = 0;
    for (uint64_t sw = 0; sw < set->summary_words; sw++) {
        uint64_t summary = 0;
        for (unsigned s = 0; s < set->shard_count; s++)
            summary |= atomic_load_explicit(&set->shards[s].gen[cur].summary[sw],
                                            memory_order_relaxed);
        for (; summary; summary &= summary - 1) {
            uint64_t word = sw * 64 + (uint64_t)__builtin_ctzll(summary);
            uint64_t bits = 0;
            for (unsigned s = 0; s < set->shard_count; s++)
                bits |= atomic_load_explicit(&set->shards[s].gen[cur].words[word],
                                             memory_order_relaxed);
            total += (uint64_t)__builtin_popcountll(bits);
        }
    }
    return total;
}

void dirty_pages_init(struct dirty_pages *pages)
{
    pages->pages = NULL;
    pages->count = 0;
    pages->capacity = 0;
}

void dirty_pages_free(struct dirty_pages *pages)
{
    free(pages->pages);
    dirty_pages_init(pages);
}
