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
        struct kvm_dirty_gfn *gfn = &ring->gfns[ring->fetch_index & ring->mask];
        /* Acquire pairs with the producer's release of DIRTY: slot and
         * offset written before it are visible after it. Anything else
         * (0 = not yet published, RESET = already harvested and waiting for
         * KVM_RESET_DIRTY_RINGS, i.e. we caught up a full lap) stops us. */
        if (gfn_flags_load_acquire(gfn) != KVM_DIRTY_GFN_F_DIRTY)
            break;
        uint32_t slot = gfn->slot;
        uint64_t offset = gfn->offset;
        visit(opaque, slot, offset);
        /* Release: our reads of slot/offset (and the recording) are done
         * before the kernel may recycle the entry. */
        gfn_flags_store_release(gfn, KVM_DIRTY_GFN_F_RESET);
        ring->fetch_index++;
        count++;
    }
    if (count) {
        ring->collected += count;
        ring->batches++;
    }
    return count;
}
