/*
 * Unit tests of the dirty ring consumer (dirtyring/ring.c, vcpu_ring.c) on a
 * simulated ring: a plain array of struct kvm_dirty_gfn and a fake kernel
 * that publishes (store-release DIRTY) and recycles (KVM_RESET_DIRTY_RINGS:
 * RESET entries from reset_index back to 0) exactly as api.rst describes.
 * No /dev/kvm needed.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dirtyring/dirty_log.h"
#include "dirtyring/dirty_set.h"
#include "dirtyring/ring.h"
#include "dirtyring/vcpu_ring.h"

/* ---- the fake kernel ---------------------------------------------------- */

struct fake_kernel {
    struct kvm_dirty_gfn *gfns;
    uint32_t size;
    pthread_mutex_t lock;
    pthread_cond_t changed;         /* publish or reset happened */
    uint32_t dirty_index;           /* under lock */
    uint32_t reset_index;           /* under lock */
    uint64_t reset_total;
};

static void fk_init(struct fake_kernel *k, uint32_t size)
{
    k->gfns = calloc(size, sizeof(*k->gfns));
    cr_assert_not_null(k->gfns);
    k->size = size;
    pthread_mutex_init(&k->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->changed, &ca);
    pthread_condattr_destroy(&ca);
    k->dirty_index = k->reset_index = 0;
    k->reset_total = 0;
}

static void fk_fini(struct fake_kernel *k)
{
    free(k->gfns);
    pthread_mutex_destroy(&k->lock);
    pthread_cond_destroy(&k->changed);
}

/* Writes slot/offset of entry index, then store-release DIRTY. */
static void fk_publish_at(struct fake_kernel *k, uint32_t index, uint32_t slot, uint64_t offset)
{
    struct kvm_dirty_gfn *g = &k->gfns[index & (k->size - 1)];
    cr_assert_eq(__atomic_load_n(&g->flags, __ATOMIC_ACQUIRE), 0,
                 "fake kernel: publishing over an unrecycled entry %u", index);
    g->slot = slot;
    g->offset = offset;
    __atomic_store_n(&g->flags, KVM_DIRTY_GFN_F_DIRTY, __ATOMIC_RELEASE);
}

static void fk_publish(struct fake_kernel *k, uint32_t slot, uint64_t offset)
{
    pthread_mutex_lock(&k->lock);
    cr_assert_lt(k->dirty_index - k->reset_index, k->size, "fake ring overflow");
    fk_publish_at(k, k->dirty_index++, slot, offset);
    pthread_cond_broadcast(&k->changed);
    pthread_mutex_unlock(&k->lock);
}

/* KVM_RESET_DIRTY_RINGS on one ring: returns entries recycled. */
static uint32_t fk_reset(struct fake_kernel *k)
{
    pthread_mutex_lock(&k->lock);
    uint32_t n = 0;
    while (k->reset_index != k->dirty_index) {
        struct kvm_dirty_gfn *g = &k->gfns[k->reset_index & (k->size - 1)];
        if (__atomic_load_n(&g->flags, __ATOMIC_ACQUIRE) != KVM_DIRTY_GFN_F_RESET)
            break;
        __atomic_store_n(&g->flags, 0, __ATOMIC_RELEASE);
        k->reset_index++;
        n++;
    }
    k->reset_total += n;
    pthread_cond_broadcast(&k->changed);
    pthread_mutex_unlock(&k->lock);
    return n;
}

/* ---- recording visitor -------------------------------------------------- */

struct record {
    uint32_t slot[4096];
    uint64_t offset[4096];
    uint32_t count;
};

static void record_visit(void *opaque, uint32_t slot, uint64_t offset, uint32_t index)
{
    (void)index;
    struct record *r = opaque;
    cr_assert_lt(r->count, 4096);
    r->slot[r->count] = slot;
    r->offset[r->count] = offset;
    r->count++;
}

/* ---- tests -------------------------------------------------------------- */

Test(dirty_ring, harvests_published_entries_in_order_and_flags_reset)
{
    struct fake_kernel k;
    fk_init(&k, 16);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 16);
    for (uint32_t i = 0; i < 5; i++)
        fk_publish(&k, i % 2, 100 + i);

    struct record rec = { .count = 0 };
    cr_assert(dirty_ring_has_dirty(&ring));
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 5);
    cr_assert_eq(rec.count, 5);
    for (uint32_t i = 0; i < 5; i++) {
        cr_assert_eq(rec.slot[i], i % 2);
        cr_assert_eq(rec.offset[i], 100 + i);
        cr_assert_eq(k.gfns[i].flags, KVM_DIRTY_GFN_F_RESET);
    }
    cr_assert_eq(k.gfns[5].flags, 0);
    cr_assert_eq(ring.fetch_index, 5);
    cr_assert_eq(ring.collected, 5);
    cr_assert_eq(ring.batches, 1);
    cr_assert_not(dirty_ring_has_dirty(&ring));
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 0);
    cr_assert_eq(ring.batches, 1, "an empty collect is not a batch");
    cr_assert_eq(fk_reset(&k), 5);
    fk_fini(&k);
}

Test(dirty_ring, partial_batches_respect_max)
{
    struct fake_kernel k;
    fk_init(&k, 32);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 32);
    for (uint32_t i = 0; i < 10; i++)
        fk_publish(&k, 0, i);
    struct record rec = { .count = 0 };
    cr_assert_eq(dirty_ring_collect(&ring, 4, record_visit, &rec), 4);
    cr_assert_eq(k.gfns[4].flags, KVM_DIRTY_GFN_F_DIRTY, "entry beyond max untouched");
    cr_assert_eq(dirty_ring_collect(&ring, 4, record_visit, &rec), 4);
    cr_assert_eq(dirty_ring_collect(&ring, 4, record_visit, &rec), 2);
    cr_assert_eq(rec.count, 10);
    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(rec.offset[i], i);
    cr_assert_eq(ring.batches, 3);
    cr_assert_eq(fk_reset(&k), 10);
    fk_fini(&k);
}

Test(dirty_ring, wraps_around_many_laps)
{
    struct fake_kernel k;
    fk_init(&k, 8);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 8);
    struct record rec = { .count = 0 };
    uint64_t next = 0;
    for (int lap = 0; lap < 20; lap++) {
        uint32_t batch = 1 + (uint32_t)(lap * 3) % 8;      /* 1..8, crosses the end */
        for (uint32_t i = 0; i < batch; i++)
            fk_publish(&k, 0, next++);
        cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), batch);
        cr_assert_eq(fk_reset(&k), batch);
    }
    cr_assert_eq(rec.count, next);
    for (uint32_t i = 0; i < rec.count; i++)
        cr_assert_eq(rec.offset[i], i);
    cr_assert_eq(ring.fetch_index, (uint32_t)next);
    cr_assert_eq(dirty_ring_fetch_slot(&ring), next % 8);
    fk_fini(&k);
}

Test(dirty_ring, full_lap_without_reset_stops_at_reset_entries)
{
    struct fake_kernel k;
    fk_init(&k, 8);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 8);
    for (uint32_t i = 0; i < 8; i++)
        fk_publish(&k, 0, i);
    struct record rec = { .count = 0 };
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 8);
    /* Entry 0 is RESET (not yet recycled by the kernel): not dirty. */
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 0);
    cr_assert_eq(fk_reset(&k), 8);
    fk_publish(&k, 1, 42);
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 1);
    cr_assert_eq(rec.slot[8], 1);
    cr_assert_eq(rec.offset[8], 42);
    fk_fini(&k);
}

Test(dirty_ring, stops_at_first_unpublished_entry)
{
    struct fake_kernel k;
    fk_init(&k, 16);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 16);
    struct record rec = { .count = 0 };
    /* Entries 1 and 2 published before entry 0. */
    fk_publish_at(&k, 1, 0, 11);
    fk_publish_at(&k, 2, 0, 12);
    cr_assert_not(dirty_ring_has_dirty(&ring));
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 0);
    cr_assert_eq(k.gfns[1].flags, KVM_DIRTY_GFN_F_DIRTY, "later entries left alone");
    fk_publish_at(&k, 0, 0, 10);
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 3);
    cr_assert_eq(rec.offset[0], 10);
    cr_assert_eq(rec.offset[1], 11);
    cr_assert_eq(rec.offset[2], 12);
    k.dirty_index = 3;
    cr_assert_eq(fk_reset(&k), 3);
    fk_fini(&k);
}

/* A producer thread publishes N entries in blocks of 4, each block in the
 * order 3,1,2,0 (out of order), waiting for ring space like the kernel's
 * soft-full; the consumer harvests concurrently and recycles after each
 * batch. The consumer must see every entry exactly once, in ring order, and
 * the recycled count must equal the harvested count. */
#define OOO_TOTAL 20000u
#define OOO_SIZE 64u

struct ooo_producer {
    struct fake_kernel *k;
    int error;
};

static void *ooo_producer_main(void *arg)
{
    struct ooo_producer *p = arg;
    struct fake_kernel *k = p->k;
    static const uint32_t order[4] = { 3, 1, 2, 0 };
    for (uint32_t base = 0; base < OOO_TOTAL; base += 4) {
        pthread_mutex_lock(&k->lock);
        while (k->dirty_index + 4 - k->reset_index > OOO_SIZE) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 10;
            if (pthread_cond_timedwait(&k->changed, &k->lock, &ts) == ETIMEDOUT) {
                p->error = ETIMEDOUT;
                pthread_mutex_unlock(&k->lock);
                return NULL;
            }
        }
        uint32_t start = k->dirty_index;
        pthread_mutex_unlock(&k->lock);
        /* Publish outside the lock, out of order: the consumer may look
         * at any moment. */
        for (int j = 0; j < 4; j++) {
            struct kvm_dirty_gfn *g = &k->gfns[(start + order[j]) & (OOO_SIZE - 1)];
            g->slot = 0;
            g->offset = base + order[j];
            __atomic_store_n(&g->flags, KVM_DIRTY_GFN_F_DIRTY, __ATOMIC_RELEASE);
        }
        pthread_mutex_lock(&k->lock);
        k->dirty_index = start + 4;
        pthread_cond_broadcast(&k->changed);
        pthread_mutex_unlock(&k->lock);
    }
    return NULL;
}

struct ooo_consumer {
    uint64_t next;
    int error;
};

static void ooo_visit(void *opaque, uint32_t slot, uint64_t offset, uint32_t index)
{
    (void)index;
    struct ooo_consumer *c = opaque;
    if (slot != 0 || offset != c->next)
        c->error = 1;
    c->next++;
}

Test(dirty_ring, out_of_order_publisher_thread)
{
    struct fake_kernel k;
    fk_init(&k, OOO_SIZE);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, OOO_SIZE);
    struct ooo_producer prod = { .k = &k, .error = 0 };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, ooo_producer_main, &prod), 0);

    struct ooo_consumer cons = { .next = 0, .error = 0 };
    uint64_t harvested = 0;
    while (harvested < OOO_TOTAL) {
        uint32_t n = dirty_ring_collect(&ring, UINT32_MAX, ooo_visit, &cons);
        harvested += n;
        if (n) {
            fk_reset(&k);
            continue;
        }
        /* Nothing visible: wait for the producer to publish. */
        pthread_mutex_lock(&k.lock);
        if (!dirty_ring_has_dirty(&ring) && !prod.error) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 10;
            int rc = pthread_cond_timedwait(&k.changed, &k.lock, &ts);
            cr_assert_neq(rc, ETIMEDOUT, "producer stalled at %llu", (unsigned long long)harvested);
        }
        pthread_mutex_unlock(&k.lock);
        cr_assert_eq(prod.error, 0);
    }
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(prod.error, 0);
    cr_assert_eq(cons.error, 0, "entries must arrive in ring order, each once");
    cr_assert_eq(cons.next, OOO_TOTAL);
    cr_assert_eq(harvested, OOO_TOTAL);
    cr_assert_eq(ring.collected, OOO_TOTAL);
    cr_assert_eq(k.reset_total, OOO_TOTAL, "reset count == harvested count");
    cr_assert_not(dirty_ring_has_dirty(&ring));
    /* Whether the consumer happened to look inside a half-published block
     * is up to the scheduler here; out_of_order_window_in_lockstep below
     * makes it look inside every one and asserts what it harvests. */
    fk_fini(&k);
}

/* The out-of-order window, asserted: a producer thread publishes one entry
 * at a time in a scrambled order inside each block of 4, and after every
 * single publish hands the turn to the consumer thread (this one), which
 * collects once. The consumer must harvest exactly the published prefix
 * from its cursor (up to the first gap), in ring order, and leave the
 * entries behind the gap DIRTY for a later pass. */
#define WINDOW_BLOCKS 300u
#define WINDOW_SIZE 16u

struct window_turns {
    struct fake_kernel *k;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    bool consumer_turn;         /* under lock: the producer published one entry */
    uint32_t published_index;   /* under lock: ring index of that entry */
    int error;
};

static const uint32_t window_orders[3][4] = { { 3, 1, 2, 0 }, { 1, 0, 3, 2 }, { 0, 2, 1, 3 } };

static bool window_wait(struct window_turns *t, bool consumer_turn)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += 10;
    while (t->consumer_turn != consumer_turn && t->error == 0)
        if (pthread_cond_timedwait(&t->changed, &t->lock, &deadline) == ETIMEDOUT)
            return false;
    return t->error == 0;
}

static void *window_producer_main(void *argument)
{
    struct window_turns *t = argument;
    for (uint32_t block = 0; block < WINDOW_BLOCKS; block++) {
        const uint32_t *order = window_orders[block % 3];
        for (int j = 0; j < 4; j++) {
            uint32_t index = block * 4 + order[j];
            struct kvm_dirty_gfn *g = &t->k->gfns[index & (WINDOW_SIZE - 1)];
            g->slot = 0;
            g->offset = index;
            __atomic_store_n(&g->flags, KVM_DIRTY_GFN_F_DIRTY, __ATOMIC_RELEASE);
            pthread_mutex_lock(&t->lock);
            t->published_index = index;
            t->consumer_turn = true;
            pthread_cond_broadcast(&t->changed);
            bool ok = window_wait(t, false);
            pthread_mutex_unlock(&t->lock);
            if (!ok) {
                t->error = t->error != 0 ? t->error : ETIMEDOUT;
                return NULL;
            }
        }
    }
    return NULL;
}

Test(dirty_ring, out_of_order_window_in_lockstep)
{
    struct fake_kernel k;
    fk_init(&k, WINDOW_SIZE);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, WINDOW_SIZE);
    struct window_turns t = { .k = &k };
    pthread_mutex_init(&t.lock, NULL);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&t.changed, &attributes);
    pthread_condattr_destroy(&attributes);
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, window_producer_main, &t), 0);

    bool published[WINDOW_BLOCKS * 4] = { false };
    struct ooo_consumer cons = { .next = 0, .error = 0 };
    uint32_t partial_windows = 0;       /* collects that stopped at a gap with entries behind it */
    for (uint32_t step = 0; step < WINDOW_BLOCKS * 4; step++) {
        pthread_mutex_lock(&t.lock);
        bool ok = window_wait(&t, true);
        uint32_t index = t.published_index;
        pthread_mutex_unlock(&t.lock);
        cr_assert(ok, "producer stalled at step %u", step);
        published[index] = true;
        /* The model: the published run from the cursor, up to the gap. */
        uint32_t expected = 0;
        while (cons.next + expected < WINDOW_BLOCKS * 4 && published[cons.next + expected])
            expected++;
        uint64_t before = cons.next;
        uint32_t n = dirty_ring_collect(&ring, UINT32_MAX, ooo_visit, &cons);
        cr_assert_eq(n, expected, "step %u (entry %u published): harvested %u, the published prefix is %u", step,
                     index, n, expected);
        cr_assert_eq(cons.error, 0, "entries out of ring order at step %u", step);
        /* Behind the gap: published entries stay DIRTY, untouched. */
        uint32_t behind = 0;
        for (uint64_t i = cons.next; i < (before / 4 + 1) * 4 && i < WINDOW_BLOCKS * 4; i++)
            if (published[i]) {
                cr_assert_eq(__atomic_load_n(&k.gfns[i & (WINDOW_SIZE - 1)].flags, __ATOMIC_ACQUIRE),
                             KVM_DIRTY_GFN_F_DIRTY, "entry %" PRIu64 " behind the gap was touched", i);
                behind++;
            }
        if (behind > 0)
            partial_windows++;
        if (n > 0) {
            /* The fake kernel recycles what was harvested. */
            pthread_mutex_lock(&k.lock);
            k.dirty_index = (uint32_t)cons.next;
            pthread_mutex_unlock(&k.lock);
            cr_assert_eq(fk_reset(&k), n);
        }
        pthread_mutex_lock(&t.lock);
        t.consumer_turn = false;
        pthread_cond_broadcast(&t.changed);
        pthread_mutex_unlock(&t.lock);
    }
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(t.error, 0);
    cr_assert_eq(cons.next, WINDOW_BLOCKS * 4);
    cr_assert_eq(ring.collected, WINDOW_BLOCKS * 4);
    /* Orders 3,1,2,0 / 1,0,3,2 / 0,2,1,3 leave entries behind a gap at 3,
     * 2 and 1 collects of their block: 6 per 3 blocks. */
    cr_assert_eq(partial_windows, WINDOW_BLOCKS * 2, "partial windows %u", partial_windows);
    cr_assert_not(dirty_ring_has_dirty(&ring));
    pthread_mutex_destroy(&t.lock);
    pthread_cond_destroy(&t.changed);
    fk_fini(&k);
}

/* Guest RAM as the slot map sees it, built by hand: `regions` memslots of
 * 4 MiB (1024 pages), the second at 4 GiB. */
static void test_memory(struct guest_memory *mem, unsigned regions, struct dirty_slot_map *map)
{
    memset(mem, 0, sizeof(*mem));
    mem->size = (uint64_t)regions << 22;
    mem->slot_count = regions;
    mem->slots[0] = (struct guest_memory_slot){ .slot = 0, .gpa = 0, .size = 4ULL << 20, .ram_offset = 0 };
    if (regions > 1)
        mem->slots[1] = (struct guest_memory_slot){ .slot = 1, .gpa = 1ULL << 32, .size = 4ULL << 20,
                                                    .ram_offset = 4ULL << 20 };
    dirty_slot_map_init(map, mem);
}

/* vcpu_ring: (slot, offset) -> RAM page through the slot map, into the dirty
 * set, with the unreset (ring fill) bookkeeping. */
Test(vcpu_ring, translates_slots_into_dirty_set)
{
    struct guest_memory mem;
    struct dirty_slot_map map;
    test_memory(&mem, 2, &map);
    cr_assert_eq(dirty_slot_map_page(&map, 0, 5), 5);
    cr_assert_eq(dirty_slot_map_page(&map, 1, 5), 1024 + 5);
    cr_assert_eq(dirty_slot_map_page(&map, 1, 1024), UINT64_MAX, "offset beyond slot");
    cr_assert_eq(dirty_slot_map_page(&map, 7, 0), UINT64_MAX, "unknown slot");
    cr_assert_eq(dirty_slot_map_page(&map, (1u << 16) | 0, 0), UINT64_MAX, "SMM address space");

    struct dirty_set *set;
    cr_assert_eq(dirty_set_create(&set, 2048, 1, NULL), 0);
    struct fake_kernel k;
    fk_init(&k, 64);
    struct vcpu_ring vr;
    vcpu_ring_init(&vr, 0, -1, k.gfns, 64, set, 0, &map);

    fk_publish(&k, 0, 3);
    fk_publish(&k, 1, 3);
    fk_publish(&k, 0, 3);           /* duplicate page */
    fk_publish(&k, 1, 4096);        /* bad: beyond slot 1 */
    fk_publish(&k, 0, 1023);
    cr_assert_eq(vcpu_ring_harvest(&vr, true, false), 5);
    cr_assert_eq(atomic_load(&vr.harvested), 5);
    cr_assert_eq(atomic_load(&vr.bad_entries), 1);
    cr_assert_eq(atomic_load(&vr.unreset), 5);
    cr_assert_eq(atomic_load(&vr.fill_high_water), 5);
    cr_assert_eq(fk_reset(&k), 5, "bad entries are flagged RESET too");

    struct dirty_pages pages;
    dirty_pages_init(&pages);
    cr_assert_eq(dirty_set_take(set, &pages), 3);
    cr_assert_eq(pages.count, 3);
    cr_assert_eq(pages.pages[0], 3);
    cr_assert_eq(pages.pages[1], 1023);
    cr_assert_eq(pages.pages[2], 1024 + 3);
    dirty_pages_free(&pages);

    /* try-lock: a busy ring is skipped, not waited for. */
    fk_publish(&k, 0, 9);
    pthread_mutex_lock(&vr.lock);
    cr_assert_eq(vcpu_ring_harvest(&vr, true, false), 0);
    pthread_mutex_unlock(&vr.lock);
    cr_assert_eq(vcpu_ring_harvest(&vr, true, true), 1);

    vcpu_ring_fini(&vr);
    dirty_set_destroy(set);
    fk_fini(&k);
}

/* ---- facade pieces that need no KVM ------------------------------------ */

Test(dirty_log_config, defaults_parse_validate)
{
    struct dirty_log_config c;
    dirty_log_config_defaults(&c);
    cr_assert_eq(c.mode, DIRTY_LOG_RING);
    cr_assert_eq(c.ring_entries, DIRTY_LOG_DEFAULT_RING_ENTRIES);
    cr_assert_eq(c.harvesters, 0);
    cr_assert_eq(c.bitmap_sync_ms, 100);
    cr_assert_eq(c.bitmap_clear_chunk_bytes, 256u << 10);
    char err[128];
    cr_assert_eq(dirty_log_config_validate(&c, err, sizeof(err)), 0);
    c.bitmap_clear_chunk_bytes = 128u << 10;
    cr_assert_eq(dirty_log_config_validate(&c, err, sizeof(err)), -1);
    cr_assert_str_eq(err, "--bitmap-clear-chunk 131072: must be a multiple of 256K (64 pages) from 256K to 1G");
    c.bitmap_clear_chunk_bytes = 768u << 10;
    cr_assert_eq(dirty_log_config_validate(&c, err, sizeof(err)), 0);
    c.bitmap_clear_chunk_bytes = 256u << 10;

    enum dirty_log_mode m;
    cr_assert_eq(dirty_log_mode_parse("bitmap", &m, err, sizeof(err)), 0);
    cr_assert_eq(m, DIRTY_LOG_BITMAP);
    cr_assert_eq(dirty_log_mode_parse("off", &m, err, sizeof(err)), 0);
    cr_assert_eq(m, DIRTY_LOG_OFF);
    cr_assert_eq(dirty_log_mode_parse("ring", &m, err, sizeof(err)), 0);
    cr_assert_eq(m, DIRTY_LOG_RING);
    cr_assert_eq(dirty_log_mode_parse("pml", &m, err, sizeof(err)), -1);
    cr_assert_str_eq(err, "--dirty-log: unknown mode 'pml' (expected ring, bitmap or off)");
    cr_assert_str_eq(dirty_log_mode_name(DIRTY_LOG_BITMAP), "bitmap");

    c.ring_entries = 100;
    cr_assert_eq(dirty_log_config_validate(&c, err, sizeof(err)), -1);
    cr_assert_str_eq(err, "--ring-entries 100: must be a power of two from 64 to 65536");
    c.ring_entries = 131072;
    cr_assert_eq(dirty_log_config_validate(&c, err, sizeof(err)), -1);
    c.ring_entries = 64;
    cr_assert_eq(dirty_log_config_validate(&c, err, sizeof(err)), 0);
}

Test(dirty_log_config, null_log_is_a_no_op_and_off_creates_nothing)
{
    struct dirty_log_config c;
    dirty_log_config_defaults(&c);
    c.mode = DIRTY_LOG_OFF;
    struct dirty_log *log = (struct dirty_log *)1;
    cr_assert_eq(dirty_log_create(&log, &c, -1, -1, NULL, 1), 0);
    cr_assert_null(log);
    cr_assert_eq(dirty_log_start(NULL), 0);
    cr_assert_eq(dirty_log_stop(NULL), 0);
    cr_assert_eq(dirty_log_final_sync(NULL), 0);
    dirty_log_mark_range(NULL, 0, 4096);
    cr_assert_eq(dirty_log_mode(NULL), DIRTY_LOG_OFF);
    struct dirty_log_stats s;
    dirty_log_get_stats(NULL, &s);
    cr_assert_eq(s.mode, DIRTY_LOG_OFF);
    char buf[128];
    dirty_log_format_stats(&s, NULL, buf, sizeof(buf));
    cr_assert_str_eq(buf, "dirty=off");
    dirty_log_destroy(NULL);
}

Test(dirty_log_config, stats_line_format)
{
    struct dirty_log_stats prev, now;
    memset(&prev, 0, sizeof(prev));
    memset(&now, 0, sizeof(now));
    prev.mode = now.mode = DIRTY_LOG_RING;
    now.tracking = true;
    now.ring_entries = 4096;
    prev.now_ns = 1000000000ULL;
    now.now_ns = 2000000000ULL;
    now.pages = 312400;
    now.ring_fill_high_water = 2048;
    now.resets = 3;
    now.reset_ns_total = 3600000;
    now.harvester_cpu_ns = 8000000;
    char buf[160];
    dirty_log_format_stats(&now, &prev, buf, sizeof(buf));
    cr_assert_str_eq(buf, "dirty=ring on 312.4k/s fill-hw=50% full=0 ovf=0 resets=3(1.20ms) hcpu=0.8%");
}

/* ---- late reset (issue 15, item 2) --------------------------------------- */

/* Deferred harvesting leaves entries DIRTY (their pages writable) until a
 * prefix is flagged; the kernel recycles only that prefix. */
Test(dirty_ring, deferred_entries_stay_unflagged_until_a_prefix_is_flagged)
{
    struct fake_kernel k;
    fk_init(&k, 16);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 16);
    ring.defer = true;
    for (uint32_t i = 0; i < 6; i++)
        fk_publish(&k, 0, 100 + i);
    struct record rec = { .count = 0 };
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 6);
    for (uint32_t i = 0; i < 6; i++)
        cr_assert_eq(k.gfns[i].flags, KVM_DIRTY_GFN_F_DIRTY, "entry %u flagged although deferred", i);
    cr_assert_eq(dirty_ring_unflagged(&ring), 6);
    cr_assert_eq(fk_reset(&k), 0, "nothing flagged, nothing recycled");
    cr_assert_eq(dirty_ring_flag_until(&ring, 3), 3);
    cr_assert_eq(k.gfns[2].flags, KVM_DIRTY_GFN_F_RESET);
    cr_assert_eq(k.gfns[3].flags, KVM_DIRTY_GFN_F_DIRTY);
    cr_assert_eq(fk_reset(&k), 3);
    cr_assert_eq(dirty_ring_flag_until(&ring, 2), 0, "already flagged up to 3");
    cr_assert_eq(dirty_ring_flag_until(&ring, 3), 0);
    cr_assert_eq(dirty_ring_flag_until(&ring, 40), 3, "clamped to what was harvested");
    cr_assert_eq(ring.flag_index, 6);
    cr_assert_eq(fk_reset(&k), 3);
    /* Not harvested yet: never flagged. */
    fk_publish(&k, 0, 200);
    cr_assert_eq(dirty_ring_flag_until(&ring, 7), 0);
    cr_assert_eq(k.gfns[6].flags, KVM_DIRTY_GFN_F_DIRTY);
    fk_fini(&k);
}

/* A full lap of deferred entries: the slot after the last one holds the
 * first, harvested but still DIRTY. Collecting stops there instead of
 * reading it again. */
Test(dirty_ring, deferred_lap_never_harvests_an_entry_twice)
{
    struct fake_kernel k;
    fk_init(&k, 8);
    struct dirty_ring ring;
    dirty_ring_init(&ring, k.gfns, 8);
    ring.defer = true;
    for (uint32_t i = 0; i < 8; i++)
        fk_publish(&k, 0, i);
    struct record rec = { .count = 0 };
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 8);
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 0,
                 "a stale DIRTY entry one lap on was harvested again");
    cr_assert_eq(dirty_ring_flag_until(&ring, 4), 4);
    cr_assert_eq(fk_reset(&k), 4);
    for (uint32_t i = 0; i < 4; i++)
        fk_publish(&k, 1, 8 + i);
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 4);
    cr_assert_eq(dirty_ring_collect(&ring, UINT32_MAX, record_visit, &rec), 0);
    cr_assert_eq(rec.count, 12);
    for (uint32_t i = 0; i < 12; i++)
        cr_assert_eq(rec.offset[i], i);
    cr_assert_eq(dirty_ring_unflagged(&ring), 8);
    fk_fini(&k);
}

/* vcpu_ring: each harvested page records its entry; an entry needs
 * flagging only while it is harvested before the last take and unflagged;
 * turning defer off flags everything held back. */
Test(dirty_ring, vcpu_ring_records_entries_and_knows_which_need_flagging)
{
    struct guest_memory mem;
    struct dirty_slot_map map;
    test_memory(&mem, 1, &map);
    struct dirty_set *set;
    cr_assert_eq(dirty_set_create(&set, 1024, 1, NULL), 0);
    _Atomic uint64_t *entries = calloc(1024, sizeof(*entries));
    cr_assert_not_null(entries);
    struct fake_kernel k;
    fk_init(&k, 64);
    struct vcpu_ring vr;
    vcpu_ring_init(&vr, 3, -1, k.gfns, 64, set, 0, &map);
    vr.page_entries = entries;
    cr_assert_eq(vcpu_ring_set_defer(&vr, true), 0);

    fk_publish(&k, 0, 10);          /* position 0 */
    fk_publish(&k, 0, 11);          /* 1 */
    fk_publish(&k, 0, 12);          /* 2 */
    cr_assert_eq(vcpu_ring_harvest(&vr, true, false), 3);
    cr_assert_eq(atomic_load(&entries[11]), vcpu_ring_entry_encode(3, 1));
    cr_assert_eq(atomic_load(&entries[13]), 0);
    cr_assert_eq(atomic_load(&vr.unflagged), 3);
    cr_assert_eq(atomic_load(&vr.unreset), 0);
    cr_assert_eq(vcpu_ring_fill(&vr), 3);
    cr_assert_not(vcpu_ring_entry_needs_flag(&vr, 1), "harvested after the last take: sent again anyway");

    vcpu_ring_mark_boundary(&vr);   /* a take */
    fk_publish(&k, 0, 20);          /* 3: next generation */
    cr_assert_eq(vcpu_ring_harvest(&vr, true, false), 1);
    cr_assert(vcpu_ring_entry_needs_flag(&vr, 0));
    cr_assert(vcpu_ring_entry_needs_flag(&vr, 2));
    cr_assert_not(vcpu_ring_entry_needs_flag(&vr, 3));
    cr_assert_eq(vcpu_ring_flag_until(&vr, 2), 2);
    cr_assert_not(vcpu_ring_entry_needs_flag(&vr, 1), "flagged");
    cr_assert(vcpu_ring_entry_needs_flag(&vr, 2));
    cr_assert_eq(atomic_load(&vr.unflagged), 2);
    cr_assert_eq(atomic_load(&vr.unreset), 2);
    cr_assert_eq(fk_reset(&k), 2);

    cr_assert_eq(vcpu_ring_set_defer(&vr, false), 2, "turning defer off flags what was held back");
    cr_assert_eq(atomic_load(&vr.unflagged), 0);
    cr_assert_eq(fk_reset(&k), 2);
    fk_publish(&k, 0, 30);
    cr_assert_eq(vcpu_ring_harvest(&vr, true, false), 1);
    cr_assert_eq(k.gfns[4].flags, KVM_DIRTY_GFN_F_RESET, "flagged at harvest again");
    cr_assert_eq(fk_reset(&k), 1);

    vcpu_ring_fini(&vr);
    free((void *)entries);
    dirty_set_destroy(set);
    fk_fini(&k);
}
