#include "dirtyring/vcpu_ring.h"

void dirty_slot_map_init(struct dirty_slot_map *map, const struct guest_memory *memory)
{
    map->count = 0;
    unsigned count;
    const struct guest_memory_slot *slots = guest_memory_kvm_slots(memory, &count);
    for (unsigned i = 0; i < count && i < GUEST_MEMORY_MAX_KVM_SLOTS; i++) {
        map->e[i].slot = slots[i].slot;
        map->e[i].first_page = slots[i].ram_offset / 4096;
        map->e[i].pages = slots[i].size / 4096;
        map->count++;
    }
}

void vcpu_ring_init(struct vcpu_ring *vr, unsigned vcpu_index, int numa_node,
                    struct kvm_dirty_gfn *gfns, uint32_t size, struct dirty_set *set,
                    unsigned shard, const struct dirty_slot_map *slots)
{
    vr->vcpu_index = vcpu_index;
    vr->numa_node = numa_node;
    vr->shard = shard;
    vr->mapping = NULL;
    vr->mapping_size = 0;
    vr->set = set;
    vr->slots = slots;
    pthread_mutex_init(&vr->lock, NULL);
    dirty_ring_init(&vr->ring, gfns, size);
    atomic_init(&vr->harvested, 0);
    atomic_init(&vr->batches, 0);
    atomic_init(&vr->bad_entries, 0);
    atomic_init(&vr->unreset, 0);
    atomic_init(&vr->unflagged, 0);
    atomic_init(&vr->flag_index, 0);
    atomic_init(&vr->recycled_index, 0);
    atomic_init(&vr->generation_boundary, 0);
    vr->page_entries = NULL;
    atomic_init(&vr->fill_high_water, 0);
    atomic_init(&vr->full_exits, 0);
    atomic_init(&vr->full_exits_empty, 0);
    rate_history_init(&vr->rate);
}

void vcpu_ring_fini(struct vcpu_ring *vr)
{
    pthread_mutex_destroy(&vr->lock);
    rate_history_fini(&vr->rate);
}

struct visit_ctx {
    struct dirty_set_writer writer;
    const struct dirty_slot_map *slots;
    _Atomic uint64_t *page_entries;
    unsigned vcpu_index;
    uint64_t bad;
};

static void visit_entry(void *opaque, uint32_t slot, uint64_t offset, uint32_t index)
{
    struct visit_ctx *ctx = opaque;
    uint64_t page = dirty_slot_map_page(ctx->slots, slot, offset);
    if (page == UINT64_MAX) {
        ctx->bad++;         /* still flagged RESET, or the ring would stall */
        return;
    }
    dirty_set_mark(&ctx->writer, page);
    if (ctx->page_entries)
        atomic_store_explicit(&ctx->page_entries[page], vcpu_ring_entry_encode(ctx->vcpu_index, index),
                              memory_order_release);
}

/* Lock held: publish the consumer's flag position and move n entries from
 * unflagged to unreset. */
static void account_flagged(struct vcpu_ring *vr, uint32_t n)
{
    if (n != 0) {
        atomic_fetch_sub_explicit(&vr->unflagged, n, memory_order_relaxed);
        /* Release: the RESET flags stored are visible to whoever reads
         * unreset with acquire before issuing the reset ioctl. */
        atomic_fetch_add_explicit(&vr->unreset, n, memory_order_release);
    }
    /* After unreset: whoever sees the entries flagged sees them counted. */
    atomic_store_explicit(&vr->flag_index, vr->ring.flag_index, memory_order_release);
}

uint32_t vcpu_ring_flag_until(struct vcpu_ring *vr, uint32_t end)
{
    pthread_mutex_lock(&vr->lock);
    uint32_t n = dirty_ring_flag_until(&vr->ring, end);
    account_flagged(vr, n);
    pthread_mutex_unlock(&vr->lock);
    return n;
}

/* Lock held: every harvested entry flagged. */
static uint32_t flag_all_locked(struct vcpu_ring *vr)
{
    uint32_t n = dirty_ring_flag_until(&vr->ring, vr->ring.fetch_index);
    account_flagged(vr, n);
    return n;
}

uint32_t vcpu_ring_flag_all(struct vcpu_ring *vr)
{
    pthread_mutex_lock(&vr->lock);
    uint32_t n = flag_all_locked(vr);
    pthread_mutex_unlock(&vr->lock);
    return n;
}

uint32_t vcpu_ring_set_defer(struct vcpu_ring *vr, bool defer)
{
    pthread_mutex_lock(&vr->lock);
    vr->ring.defer = defer;
    uint32_t n = defer ? 0 : flag_all_locked(vr);
    /* Entries harvested before now belong to no generation a migration
     * will send with late reset: nothing before here needs flagging. */
    atomic_store_explicit(&vr->generation_boundary, vr->ring.fetch_index, memory_order_release);
    pthread_mutex_unlock(&vr->lock);
    return n;
}

void vcpu_ring_mark_boundary(struct vcpu_ring *vr)
{
    pthread_mutex_lock(&vr->lock);
    atomic_store_explicit(&vr->generation_boundary, vr->ring.fetch_index, memory_order_release);
    pthread_mutex_unlock(&vr->lock);
}

uint32_t vcpu_ring_harvest(struct vcpu_ring *vr, bool try_lock, bool to_empty)
{
    if (try_lock) {
        if (pthread_mutex_trylock(&vr->lock) != 0)
            return 0;
    } else {
        pthread_mutex_lock(&vr->lock);
    }
    uint32_t total = 0;
    uint32_t flag_before = vr->ring.flag_index;
    if (dirty_ring_has_dirty(&vr->ring)) {
        struct visit_ctx ctx = { .slots = vr->slots, .bad = 0, .vcpu_index = vr->vcpu_index,
                                 .page_entries = vr->page_entries };
        /* One write section covers the marks, the pages' entry records and
         * the RESET flags, so a take that waited for this section also sees
         * the flags (its KVM_RESET_DIRTY_RINGS then re-protects every page
         * it hands over) and, with late reset, the records. */
        dirty_set_write_begin(vr->set, vr->shard, &ctx.writer);
        for (;;) {
            uint32_t n = dirty_ring_collect(&vr->ring, vr->ring.size, visit_entry, &ctx);
            total += n;
            if (!to_empty || n == 0)
                break;
        }
        dirty_set_write_end(&ctx.writer);
        if (ctx.bad)
            atomic_fetch_add_explicit(&vr->bad_entries, ctx.bad, memory_order_relaxed);
    }
    if (total) {
        /* Release: the RESET flags stored above are visible to whoever
         * reads unreset with acquire before issuing the reset ioctl. */
        uint32_t deferred = dirty_ring_unflagged(&vr->ring);
        uint32_t flagged = vr->ring.flag_index - flag_before;
        atomic_store_explicit(&vr->unflagged, deferred, memory_order_relaxed);
        uint32_t fill = atomic_fetch_add_explicit(&vr->unreset, flagged, memory_order_release) + flagged + deferred;
        atomic_store_explicit(&vr->flag_index, vr->ring.flag_index, memory_order_release);
        uint32_t hw = atomic_load_explicit(&vr->fill_high_water, memory_order_relaxed);
        if (fill > hw)
            atomic_store_explicit(&vr->fill_high_water, fill, memory_order_relaxed);
        atomic_fetch_add_explicit(&vr->harvested, total, memory_order_relaxed);
        atomic_fetch_add_explicit(&vr->batches, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&vr->lock);
    return total;
}

void vcpu_ring_sample(struct vcpu_ring *vr, uint64_t now_ns)
{
    rate_history_sample(&vr->rate, now_ns, atomic_load_explicit(&vr->harvested, memory_order_relaxed));
}
