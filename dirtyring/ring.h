/*
 * Consumer of one KVM dirty ring: an array of struct kvm_dirty_gfn that the
 * kernel (producer) fills and user space (consumer) harvests, per the
 * kernel's Documentation/virt/kvm/api.rst (KVM_CAP_DIRTY_LOG_RING[_ACQ_REL]):
 *
 *   producer (kernel):  write slot/offset, then store-release flags = DIRTY
 *   consumer (here):    load-acquire flags; if == DIRTY, read slot/offset,
 *                       record them, then store-release flags = RESET;
 *                       stop at the first entry that is not DIRTY
 *   KVM_RESET_DIRTY_RINGS (someone else) re-protects the RESET entries and
 *   clears their flags, which gives the slots back to the producer.
 *
 * Late reset (issue 15, item 2): with `defer` set the consumer harvests
 * without flagging; entries [flag_index, fetch_index) stay DIRTY (their
 * pages stay writable: KVM pushes a page again only after its entry is
 * recycled) until dirty_ring_flag_until flags a prefix of them. KVM
 * recycles only a flagged prefix, in ring order, so flagging is in ring
 * order too. Collecting stops one lap after flag_index: the slot there
 * still holds a harvested, unflagged entry.
 *
 * The consumer works on a plain array, so unit tests drive it with a fake
 * producer thread; nothing here issues an ioctl.
 *
 * Ownership: a struct dirty_ring has exactly one consumer at a time. The
 * caller serializes (dirtyring/vcpu_ring.c holds a mutex around every
 * dirty_ring_collect). fetch_index is that consumer's private cursor; the
 * counters are plain fields owned by the same consumer (vcpu_ring.c keeps the
 * atomic, cross-thread copies).
 */
#ifndef RINGVM_DIRTYRING_RING_H
#define RINGVM_DIRTYRING_RING_H

#include <stdbool.h>
#include <stdint.h>
#include <linux/kvm.h>

struct dirty_ring {
    struct kvm_dirty_gfn *gfns;     /* size entries; shared with the producer */
    uint32_t size;                  /* power of two */
    uint32_t mask;                  /* size - 1 */
    uint32_t fetch_index;           /* free-running: next entry to look at */
    uint32_t flag_index;            /* free-running: entries before it are flagged RESET */
    bool defer;                     /* harvest without flagging (late reset) */
    uint64_t collected;             /* entries harvested so far */
    uint64_t batches;               /* dirty_ring_collect calls that found >= 1 entry */
};

/* Called for every dirty entry, before the entry is flagged RESET; index:
 * the entry's free-running position (fetch_index when it was harvested). */
typedef void (*dirty_ring_visit_fn)(void *opaque, uint32_t slot, uint64_t offset, uint32_t index);

/* size must be a power of two (>= 1). The array is not touched. */
void dirty_ring_init(struct dirty_ring *ring, struct kvm_dirty_gfn *gfns, uint32_t size);

/* Harvests up to max consecutive DIRTY entries starting at fetch_index:
 * visit(slot, offset, index) then, unless defer, store-release RESET for
 * each. Stops at the first entry whose flags (load-acquire) are not exactly
 * DIRTY, and one lap after flag_index. Returns the number harvested. */
uint32_t dirty_ring_collect(struct dirty_ring *ring, uint32_t max,
                            dirty_ring_visit_fn visit, void *opaque);

/* Flags RESET every harvested entry before `end` not flagged yet, in ring
 * order: [flag_index, end), end clamped to fetch_index (an entry not
 * harvested is never flagged). Returns the number flagged. */
uint32_t dirty_ring_flag_until(struct dirty_ring *ring, uint32_t end);

/* Harvested entries not flagged yet (fetch_index - flag_index). */
static inline uint32_t dirty_ring_unflagged(const struct dirty_ring *ring)
{
    return ring->fetch_index - ring->flag_index;
}

/* True when the entry at fetch_index is DIRTY (something to harvest). */
bool dirty_ring_has_dirty(const struct dirty_ring *ring);

/* Index (0..size-1) of the next entry the consumer will look at. */
static inline uint32_t dirty_ring_fetch_slot(const struct dirty_ring *ring)
{
    return ring->fetch_index & ring->mask;
}

#endif
