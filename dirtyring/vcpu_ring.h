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
 *     to have recycled yet (= ring fill as the consumer sees it); added to by
 *     the lock holder after flagging, subtracted by reset.c.
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
    } e[GUEST_MEMORY_MAX_SLOTS];
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

/* Records (now, harvested) into vr->rate (every >= 100 ms). */
void vcpu_ring_sample(struct vcpu_ring *vr, uint64_t now_ns);

uint64_t dirtyring_now_ns(void);

#endif
