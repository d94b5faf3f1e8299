#include "dirtyring/ring.h"

#include <stdatomic.h>

/*
 * struct kvm_dirty_gfn::flags is a plain __u32 shared with the kernel. The
 * kernel publishes with smp_store_release and reads RESET with
 * smp_load_acquire (ACQ_REL capability); we use the GCC/Clang __atomic
 * builtins on the same field, which are the C11 memory-order operations on a
 * non-_Atomic object (the layout is fixed by the kernel ABI).
 */
static inline uint32_t gfn_flags_load_acquire(const struct kvm_dirty_gfn *gfn)
{
    return __atomic_load_n(&gfn->flags, __ATOMIC_ACQUIRE);
}

static inline void gfn_flags_store_release(struct kvm_dirty_gfn *gfn, uint32_t flags)
{
    __atomic_store_n(&gfn->flags, flags, __ATOMIC_RELEASE);
}

void dirty_ring_init(struct dirty_ring *ring, struct kvm_dirty_gfn *gfns, uint32_t size)
{
    ring->gfns = gfns;
    ring->size = size;
    ring->mask = size - 1;
    ring->fetch_index = 0;
    ring->flag_index = 0;
    ring->defer = false;
    ring->collected = 0;
    ring->batches = 0;
}

bool dirty_ring_has_dirty(const struct dirty_ring *ring)
{
    const struct kvm_dirty_gfn *gfn = &ring->gfns[ring->fetch_index & ring->mask];
    return gfn_flags_load_acquire(gfn) == KVM_DIRTY_GFN_F_DIRTY;
}

uint32_t dirty_ring_collect(struct dirty_ring *ring, uint32_t max,
                            dirty_ring_visit_fn visit, void *opaque)
{
    uint32_t count = 0;

    while (count < max) {
        /* The slot one lap after flag_index holds a harvested entry we have
         * not flagged: DIRTY, but not a new one. */
        if (ring->fetch_index - ring->flag_index >= ring->size)
            break;
        struct kvm_dirty_gfn *gfn = &ring->gfns[ring->fetch_index & ring->mask];
        /* Acquire pairs with the producer's release of DIRTY: slot and
         * offset written before it are visible after it. Anything else
         * (0 = not yet published, RESET = already harvested and waiting for
         * KVM_RESET_DIRTY_RINGS, i.e. we caught up a full lap) stops us. */
        if (gfn_flags_load_acquire(gfn) != KVM_DIRTY_GFN_F_DIRTY)
            break;
        uint32_t slot = gfn->slot;
        uint64_t offset = gfn->offset;
        visit(opaque, slot, offset, ring->fetch_index);
        /* Release: our reads of slot/offset (and the recording) are done
         * before the kernel may recycle the entry. */
        if (!ring->defer) {
            gfn_flags_store_release(gfn, KVM_DIRTY_GFN_F_RESET);
            ring->flag_index++;
        }
        ring->fetch_index++;
        count++;
    }
    if (count) {
        ring->collected += count;
        ring->batches++;
    }
    return count;
}

uint32_t dirty_ring_flag_until(struct dirty_ring *ring, uint32_t end)
{
    uint32_t harvested = ring->fetch_index - ring->flag_index;
    if ((int32_t)(end - ring->flag_index) <= 0)
        return 0;               /* already flagged up to end */
    uint32_t wanted = end - ring->flag_index;
    if (wanted > harvested)
        wanted = harvested;     /* never an entry not harvested */
    for (uint32_t i = 0; i < wanted; i++)
        gfn_flags_store_release(&ring->gfns[(ring->flag_index + i) & ring->mask], KVM_DIRTY_GFN_F_RESET);
    ring->flag_index += wanted;
    return wanted;
}
