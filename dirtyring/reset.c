#include "dirtyring/reset.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "dirtyring/vcpu_ring.h"
#include "vmm/monotonic.h"

int ring_resetter_init(struct ring_resetter *r, int vm_fd, unsigned ring_count)
{
    memset(r, 0, sizeof(*r));
    r->vm_fd = vm_fd;
    r->ring_count = ring_count;
    r->rings = calloc(ring_count ? ring_count : 1, sizeof(*r->rings));
    r->snapshot = calloc(ring_count ? ring_count : 1, sizeof(*r->snapshot));
    r->flag_snapshot = calloc(ring_count ? ring_count : 1, sizeof(*r->flag_snapshot));
    if (!r->rings || !r->snapshot || !r->flag_snapshot) {
        free((void *)r->rings);
        free(r->snapshot);
        free(r->flag_snapshot);
        fprintf(stderr, "ringvm: dirty ring resetter: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    for (unsigned i = 0; i < ring_count; i++)
        atomic_init(&r->rings[i], NULL);
    pthread_mutex_init(&r->lock, NULL);
    return 0;
}

void ring_resetter_fini(struct ring_resetter *r)
{
    if (!r->rings)
        return;
    pthread_mutex_destroy(&r->lock);
    free((void *)r->rings);
    free(r->snapshot);
    free(r->flag_snapshot);
    r->rings = NULL;
    r->snapshot = NULL;
    r->flag_snapshot = NULL;
}

void ring_resetter_set_ring(struct ring_resetter *r, unsigned index, struct vcpu_ring *ring)
{
    if (index < r->ring_count)
        atomic_store_explicit(&r->rings[index], ring, memory_order_release);
}

uint64_t ring_resetter_pending(struct ring_resetter *r)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < r->ring_count; i++) {
        struct vcpu_ring *ring = atomic_load_explicit(&r->rings[i], memory_order_acquire);
        if (ring)
            total += atomic_load_explicit(&ring->unreset, memory_order_relaxed);
    }
    return total;
}

void ring_resetter_suspend(struct ring_resetter *r, bool suspended)
{
    atomic_store_explicit(&r->suspended, suspended, memory_order_release);
}

int64_t ring_resetter_reset(struct ring_resetter *r, bool force)
{
    if (!force && atomic_load_explicit(&r->suspended, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&r->lock);
    uint64_t requested = 0;
    for (unsigned i = 0; i < r->ring_count; i++) {
        struct vcpu_ring *ring = atomic_load_explicit(&r->rings[i], memory_order_acquire);
        /* Acquire pairs with the consumer's release add in
         * vcpu_ring_harvest: the RESET flags counted here are visible to
         * this thread, hence to the kernel when we call it below. */
        /* flag_index first: its release store follows the unreset add,
         * so every entry before it is counted in the unreset read next
         * and flagged (contiguously), hence recycled by the ioctl. */
        r->flag_snapshot[i] = ring ? atomic_load_explicit(&ring->flag_index, memory_order_acquire) : 0;
        r->snapshot[i] = ring ? atomic_load_explicit(&ring->unreset, memory_order_acquire) : 0;
        requested += r->snapshot[i];
    }
    if (!requested && !force) {
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    uint64_t t0 = monotonic_now_ns();
    int ret = ioctl(r->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
    uint64_t dt = monotonic_now_ns() - t0;
    if (ret < 0) {
        int err = errno;
        atomic_fetch_add_explicit(&r->failures, 1, memory_order_relaxed);
        pthread_mutex_unlock(&r->lock);
        fprintf(stderr, "ringvm: KVM_RESET_DIRTY_RINGS: %s\n", strerror(err));
        return -err;
    }
    for (unsigned i = 0; i < r->ring_count; i++) {
        struct vcpu_ring *ring = atomic_load_explicit(&r->rings[i], memory_order_relaxed);
        if (!ring)
            continue;
        if (r->snapshot[i])
            atomic_fetch_sub_explicit(&ring->unreset, r->snapshot[i], memory_order_relaxed);
        atomic_store_explicit(&ring->recycled_index, r->flag_snapshot[i], memory_order_release);
    }
    atomic_fetch_add_explicit(&r->resets, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->reset_entries, (uint64_t)ret, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->reset_requested, requested, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->reset_ns_total, dt, memory_order_relaxed);
    if (dt > atomic_load_explicit(&r->reset_ns_max, memory_order_relaxed))
        atomic_store_explicit(&r->reset_ns_max, dt, memory_order_relaxed);
    pthread_mutex_unlock(&r->lock);
    return ret;
}
