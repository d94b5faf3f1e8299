/*
 * One vCPU's mmapped dirty ring as the rest of dirtyring/ sees it: the
 * consumer (ring.h) behind a lock, the translation of (slot, offset) to RAM
 * page indices, and the per-ring counters and rate history.
 *
 * Ownership / threads:
 *   - vcpu_index, numa_node, shard, mapping, set, slots: written once by
 *     dirty_log_attach_vcpu (before the vCPU runs), immutable afterwards.
 *   - lock: the ring has exactly one consumer at a time. Normally its
 *     harvester (try-lock); the vCPU thread itself on KVM_EXIT_DIRTY_RING_FULL
 *     and the migration thread on take / final sync / stop (blocking lock).
 *     Holders never wait for a vCPU or another ring, so no deadlock.
 *   - ring (consumer cursor): only the lock holder.
 *   - counters (_Atomic): written by the lock holder or the vCPU thread,
 *     read by anyone with relaxed loads (statistics).
 *   - unreset: entries flagged RESET that no KVM_RESET_DIRTY_RINGS is known
 *     to have recycled yet; added to by the lock holder after flagging,
 *     subtracted by reset.c. unflagged: harvested, not flagged yet (late
 *     reset, ring.h); written by the lock holder. Ring fill as the consumer
 *     sees it = unreset + unflagged.
 *   - flag_index, generation_boundary: copies of the ring's flag_index and
 *     of its fetch_index at the last take (vcpu_ring_mark_boundary), stored
 *     by the lock holder with release (flag_index after unreset, so a
 *     reader that sees an entry flagged also sees it counted), so the
 *     migration thread can tell without the lock whether a page's entry
 *     still needs flagging. recycled_index: every entry before it is known
 *     recycled (reset.c stores the flag_index it read before a successful
 *     KVM_RESET_DIRTY_RINGS, under the resetter's lock).
 *   - page_entries (may be NULL; the pointer is set by
 *     dirty_log_attach_vcpu before the vCPU runs, immutable afterwards):
 *     shared by every ring of the VM, one atomic word per RAM page: the last entry harvested for it (vcpu_ring_entry_encode),
 *     stored with release by the lock holder inside the harvest's write
 *     section, read by the migration thread (dirty_log.c).
 *   - rate: history of harvested (rate.h), sampled by the owning harvester.
 */
#ifndef RINGVM_DIRTYRING_VCPU_RING_H
#define RINGVM_DIRTYRING_VCPU_RING_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dirtyring/dirty_set.h"
#include "dirtyring/rate.h"
#include "dirtyring/ring.h"
#include "vmm/memory.h"

/* KVM memslot id -> first RAM page; immutable after dirty_slot_map_init. */
struct dirty_slot_map {
    unsigned count;
    struct {
        uint32_t slot;
        uint64_t first_page;
        uint64_t pages;
    } e[GUEST_MEMORY_MAX_KVM_SLOTS];
};

void dirty_slot_map_init(struct dirty_slot_map *map, const struct guest_memory *memory);

/* RAM page index of (slot, offset) from a dirty ring entry (the slot field
 * carries the address space in bits 16..31), or UINT64_MAX. */
static inline uint64_t dirty_slot_map_page(const struct dirty_slot_map *map, uint32_t slot,
                                           uint64_t offset)
{
    uint32_t id = slot & 0xffff;
    if (slot >> 16)
        return UINT64_MAX;          /* SMM address space: not guest RAM we track */
    if (id < map->count && map->e[id].slot == id)   /* ids are indices (guest_memory) */
        return offset < map->e[id].pages ? map->e[id].first_page + offset : UINT64_MAX;
    for (unsigned i = 0; i < map->count; i++)
        if (map->e[i].slot == id)
            return offset < map->e[i].pages ? map->e[i].first_page + offset : UINT64_MAX;
    return UINT64_MAX;
}

struct vcpu_ring {
    unsigned vcpu_index;
    int numa_node;
    unsigned shard;                 /* dirty set shard for this ring's marks */
    void *mapping;
    size_t mapping_size;
    struct dirty_set *set;
    const struct dirty_slot_map *slots;

    pthread_mutex_t lock;
    struct dirty_ring ring;

    _Atomic uint64_t harvested;     /* entries collected */
    _Atomic uint64_t batches;       /* non-empty collections */
    _Atomic uint64_t bad_entries;   /* (slot, offset) outside guest RAM */
    _Atomic uint32_t unreset;
    _Atomic uint32_t unflagged;
    _Atomic uint32_t flag_index;
    _Atomic uint32_t recycled_index;    /* flag_index before the last completed reset */
    _Atomic uint32_t generation_boundary;
    _Atomic uint64_t *page_entries;
    _Atomic uint32_t fill_high_water;
    _Atomic uint64_t full_exits;    /* KVM_EXIT_DIRTY_RING_FULL handled */
    _Atomic uint64_t full_exits_empty;  /* ... with nothing to harvest (overflow?) */

    struct rate_history rate;       /* of harvested; sampled by the owning harvester */
};

/* Initializes everything but the mapping fields. gfns: size entries. */
void vcpu_ring_init(struct vcpu_ring *vr, unsigned vcpu_index, int numa_node,
                    struct kvm_dirty_gfn *gfns, uint32_t size, struct dirty_set *set,
                    unsigned shard, const struct dirty_slot_map *slots);
void vcpu_ring_fini(struct vcpu_ring *vr);

/* Harvests what is visible now into the dirty set (one write section).
 * try_lock: give up (return 0) if another consumer holds the ring.
 * to_empty: keep collecting until the next entry is not DIRTY (with vCPUs
 * paused that is "empty"); otherwise stop after one lap (size entries).
 * Returns entries harvested. */
uint32_t vcpu_ring_harvest(struct vcpu_ring *vr, bool try_lock, bool to_empty);

/* Harvested entries not recycled yet, flagged or not (relaxed). */
static inline uint32_t vcpu_ring_fill(struct vcpu_ring *vr)
{
    return atomic_load_explicit(&vr->unreset, memory_order_relaxed) +
           atomic_load_explicit(&vr->unflagged, memory_order_relaxed);
}

/* Late reset (ring.h): on = harvest without flagging; off = flag what is
 * unflagged and harvest with flagging again. Returns entries flagged. */
uint32_t vcpu_ring_set_defer(struct vcpu_ring *vr, bool defer);

/* Flags the harvested entries before position end (ring order; see
 * dirty_ring_flag_until). Returns entries flagged; the caller resets. */
uint32_t vcpu_ring_flag_until(struct vcpu_ring *vr, uint32_t end);

/* Every harvested entry flagged (a ring that needs its space back). */
uint32_t vcpu_ring_flag_all(struct vcpu_ring *vr);

/* A take has swapped generations: entries harvested so far belong to it
 * (or to an older one). Under the ring lock. */
void vcpu_ring_mark_boundary(struct vcpu_ring *vr);

/* page_entries words: 0 = no entry; else vCPU index + 1 in the high half
 * and the entry's free-running ring position in the low half. */
static inline uint64_t vcpu_ring_entry_encode(unsigned vcpu_index, uint32_t position)
{
    return ((uint64_t)(vcpu_index + 1) << 32) | position;
}

/* True when the entry at `position` of this ring was harvested before the
 * last take and is not known recycled: its page may be writable with
 * nothing newer to log it, so it must be flagged (if it is not yet) and
 * reset before the page is read. Lock-free (acquire loads). */
static inline bool vcpu_ring_entry_needs_reset(struct vcpu_ring *vr, uint32_t position)
{
    uint32_t recycled = atomic_load_explicit(&vr->recycled_index, memory_order_acquire);
    uint32_t boundary = atomic_load_explicit(&vr->generation_boundary, memory_order_acquire);
    return (int32_t)(position - recycled) >= 0 && (int32_t)(boundary - position) > 0;
}

/* ... and not flagged yet (a subset of the above). */
static inline bool vcpu_ring_entry_needs_flag(struct vcpu_ring *vr, uint32_t position)
{
    uint32_t flagged = atomic_load_explicit(&vr->flag_index, memory_order_acquire);
    return (int32_t)(position - flagged) >= 0 && vcpu_ring_entry_needs_reset(vr, position);
}

/* Records (now, harvested) into vr->rate (every >= 100 ms). */
void vcpu_ring_sample(struct vcpu_ring *vr, uint64_t now_ns);

#endif
