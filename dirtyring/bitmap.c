#include "dirtyring/bitmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "dirtyring/dirty_set.h"
#include "dirtyring/vcpu_ring.h"

int bitmap_enable_manual_protect(int vm_fd)
{
    int caps = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (caps < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_CHECK_EXTENSION(MANUAL_DIRTY_LOG_PROTECT2): %s\n",
                strerror(err));
        return -err;
    }
    if (!(caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
        fprintf(stderr, "ringvm: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 unsupported by this "
                "kernel; bitmap mode needs it\n");
        return -ENOTSUP;
    }
    struct kvm_enable_cap cap = {
        .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        .args = { KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE },  /* no INITIALLY_SET */
    };
    if (ioctl(vm_fd, KVM_ENABLE_CAP, &cap) < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2): %s\n", strerror(err));
        return -err;
    }
    return 0;
}

int bitmap_sync_init(struct bitmap_sync *b, int vm_fd, const struct guest_memory *memory,
                     struct dirty_set *set, unsigned sync_ms)
{
    memset(b, 0, sizeof(*b));
    b->vm_fd = vm_fd;
    b->memory = memory;
    b->set = set;
    b->sync_ms = sync_ms ? sync_ms : 100;
    for (unsigned i = 0; i < memory->slot_count; i++) {
        uint64_t pages = memory->slots[i].size / 4096;
        b->slot_words[i] = (pages + 63) / 64;
        b->slot_bitmap[i] = calloc(b->slot_words[i] ? b->slot_words[i] : 1, sizeof(uint64_t));
        if (!b->slot_bitmap[i]) {
            fprintf(stderr, "ringvm: bitmap sync: allocating %llu-page bitmap: %s\n",
                    (unsigned long long)pages, strerror(ENOMEM));
            bitmap_sync_fini(b);
            return -ENOMEM;
        }
    }
    pthread_mutex_init(&b->sync_lock, NULL);
    pthread_mutex_init(&b->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    return 0;
}

void bitmap_sync_fini(struct bitmap_sync *b)
{
    for (unsigned i = 0; i < GUEST_MEMORY_MAX_SLOTS; i++) {
        free(b->slot_bitmap[i]);
        b->slot_bitmap[i] = NULL;
    }
    if (b->memory) {
        pthread_mutex_destroy(&b->sync_lock);
        pthread_mutex_destroy(&b->lock);
        pthread_cond_destroy(&b->cond);
        b->memory = NULL;
    }
}

static int64_t sync_slot(struct bitmap_sync *b, unsigned i, struct dirty_set_writer *w,
                         uint64_t *get_ns, uint64_t *clear_ns)
{
    uint64_t t0 = dirtyring_now_ns();
    const struct guest_memory_slot *slot = &b->memory->slots[i];
    uint64_t *bits = b->slot_bitmap[i];
    uint64_t words = b->slot_words[i];
    uint64_t pages = slot->size / 4096;

    struct kvm_dirty_log log = { .slot = slot->slot, .dirty_bitmap = bits };
    if (ioctl(b->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_GET_DIRTY_LOG(slot %u): %s\n", slot->slot, strerror(err));
        return -err;
    }
    uint64_t first = UINT64_MAX, last = 0;
    for (uint64_t k = 0; k < words; k++) {
        if (bits[k]) {
            if (first == UINT64_MAX)
                first = k;
            last = k;
        }
    }
    uint64_t t1 = dirtyring_now_ns();
    *get_ns += t1 - t0;
    if (first == UINT64_MAX)
        return 0;
    /* One CLEAR from the first to the last non-zero word: first_page is a
     * multiple of 64, num_pages a multiple of 64 or reaching the slot end. */
    uint64_t first_page = first * 64;
    uint64_t end_page = (last + 1) * 64;
    if (end_page > pages)
        end_page = pages;
    struct kvm_clear_dirty_log clear = {
        .slot = slot->slot,
        .num_pages = (uint32_t)(end_page - first_page),
        .first_page = first_page,
        .dirty_bitmap = &bits[first],
    };
    if (ioctl(b->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_CLEAR_DIRTY_LOG(slot %u, pages %llu+%u): %s\n",
                slot->slot, (unsigned long long)first_page, clear.num_pages, strerror(err));
        return -err;
    }
    *clear_ns += dirtyring_now_ns() - t1;
    /* Now re-protected: safe to hand to the migration (see bitmap.h). */
    dirty_set_mark_words(w, slot->ram_offset / 4096 + first_page, &bits[first], last - first + 1);
    int64_t n = 0;
    for (uint64_t k = first; k <= last; k++)
        n += __builtin_popcountll(bits[k]);
    return n;
}

int64_t bitmap_sync_once(struct bitmap_sync *b)
{
    pthread_mutex_lock(&b->sync_lock);
    uint64_t t0 = dirtyring_now_ns();
    int64_t total = 0;
    uint64_t get_ns = 0, clear_ns = 0;
    struct dirty_set_writer w;
    dirty_set_write_begin(b->set, 0, &w);
    for (unsigned i = 0; i < b->memory->slot_count; i++) {
        int64_t n = sync_slot(b, i, &w, &get_ns, &clear_ns);
        if (n < 0) {
            total = n;
            break;
        }
        total += n;
    }
    dirty_set_write_end(&w);
    uint64_t t1 = dirtyring_now_ns();
    atomic_fetch_add_explicit(&b->syncs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->sync_ns_total, t1 - t0, memory_order_relaxed);
    atomic_store_explicit(&b->sync_ns_last, t1 - t0, memory_order_relaxed);
    atomic_store_explicit(&b->last_sync_ns, t1, memory_order_relaxed);
    atomic_store_explicit(&b->get_ns_last, get_ns, memory_order_relaxed);
    atomic_store_explicit(&b->clear_ns_last, clear_ns, memory_order_relaxed);
    if (total > 0)
        atomic_fetch_add_explicit(&b->pages, (uint64_t)total, memory_order_relaxed);
    pthread_mutex_unlock(&b->sync_lock);
    return total;
}

static void *bitmap_sync_main(void *arg)
{
    struct bitmap_sync *b = arg;
    pthread_setname_np(pthread_self(), "dirtysync");
    bool failed = false;
    pthread_mutex_lock(&b->lock);
    while (!b->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t t = (uint64_t)ts.tv_nsec + (uint64_t)b->sync_ms * 1000000ULL;
        ts.tv_sec += (time_t)(t / 1000000000ULL);
        ts.tv_nsec = (long)(t % 1000000000ULL);
        while (!b->stop && pthread_cond_timedwait(&b->cond, &b->lock, &ts) != ETIMEDOUT)
            ;
        if (b->stop)
            break;
        pthread_mutex_unlock(&b->lock);
        if (bitmap_sync_once(b) < 0 && !failed) {
            failed = true;      /* printed once; keep trying */
        }
        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        atomic_store_explicit(&b->cpu_ns_at_exit,
                              (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec,
                              memory_order_relaxed);
    return NULL;
}

int bitmap_sync_start(struct bitmap_sync *b)
{
    if (b->running)
        return 0;
    b->stop = false;
    int rc = pthread_create(&b->thread, NULL, bitmap_sync_main, b);
    if (rc) {
        fprintf(stderr, "ringvm: bitmap sync thread: pthread_create: %s\n", strerror(rc));
        return -rc;
    }
    b->running = true;
    b->cpu_clock_valid = pthread_getcpuclockid(b->thread, &b->cpu_clock) == 0;
    return 0;
}

void bitmap_sync_stop(struct bitmap_sync *b)
{
    if (!b->running)
        return;
    pthread_mutex_lock(&b->lock);
    b->stop = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
    int rc = pthread_join(b->thread, NULL);
    if (rc)
        fprintf(stderr, "ringvm: bitmap sync thread: pthread_join: %s\n", strerror(rc));
    b->running = false;
    b->retired_cpu_ns += atomic_load_explicit(&b->cpu_ns_at_exit, memory_order_relaxed);
}

uint64_t bitmap_sync_cpu_ns(const struct bitmap_sync *b)
{
    uint64_t total = b->retired_cpu_ns;
    struct timespec ts;
    if (b->running && b->cpu_clock_valid && clock_gettime(b->cpu_clock, &ts) == 0)
        total += (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    return total;
}
