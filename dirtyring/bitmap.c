#include "dirtyring/bitmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "dirtyring/dirty_set.h"
#include "dirtyring/vcpu_ring.h"
#include "vmm/monotonic.h"
#include "vmm/page_bitmap.h"

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
                "kernel; bitmap mode needs it (use --dirty-log ring)\n");
        return -ENOTSUP;
    }
    /* No fallback without INITIALLY_SET: turning logging on would then
     * write-protect all RAM at once and the guest would fault on every
     * first write of the bulk copy, the weak bitmap this mode replaced.
     * Every kernel since 5.3 offers it. */
    if (!(caps & KVM_DIRTY_LOG_INITIALLY_SET)) {
        fprintf(stderr, "ringvm: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = %#x: this kernel lacks "
                "KVM_DIRTY_LOG_INITIALLY_SET, which bitmap mode needs (use --dirty-log ring)\n", caps);
        return -ENOTSUP;
    }
    struct kvm_enable_cap cap = {
        .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        .args = { KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET },
    };
    if (ioctl(vm_fd, KVM_ENABLE_CAP, &cap) < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2, "
                "MANUAL_PROTECT_ENABLE | INITIALLY_SET): %s\n", strerror(err));
        return -err;
    }
    return 0;
}

int bitmap_log_init(struct bitmap_log *b, int vm_fd, const struct guest_memory *memory,
                    struct dirty_set *set, unsigned sync_ms, uint64_t chunk_bytes)
{
    memset(b, 0, sizeof(*b));
    if (chunk_bytes < BITMAP_MIN_CLEAR_CHUNK_BYTES || chunk_bytes % BITMAP_MIN_CLEAR_CHUNK_BYTES) {
        fprintf(stderr, "ringvm: bitmap log: clear chunk of %llu bytes is not a multiple of "
                "64 pages (256 KiB)\n", (unsigned long long)chunk_bytes);
        return -EINVAL;
    }
    b->vm_fd = vm_fd;
    b->set = set;
    b->sync_ms = sync_ms ? sync_ms : 100;
    pthread_mutex_init(&b->lock, NULL);
    pthread_mutex_init(&b->thread_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cond, &ca);
    pthread_condattr_destroy(&ca);
    b->locks_ready = true;
    b->chunk_pages = chunk_bytes / 4096;
    unsigned kvm_count;
    const struct guest_memory_slot *kvm_slots = guest_memory_kvm_slots(memory, &kvm_count);
    if (kvm_count > GUEST_MEMORY_MAX_SLOTS) {
        fprintf(stderr, "ringvm: bitmap log: %u KVM memslots, at most %u supported\n", kvm_count,
                GUEST_MEMORY_MAX_SLOTS);
        return -EINVAL;
    }
    b->slot_count = kvm_count;
    for (unsigned i = 0; i < kvm_count; i++) {
        struct bitmap_slot *s = &b->slots[i];
        s->slot = kvm_slots[i].slot;
        s->first_page = kvm_slots[i].ram_offset / 4096;
        s->pages = kvm_slots[i].size / 4096;
        s->words = page_bitmap_words(s->pages);
        s->chunks = (s->pages + b->chunk_pages - 1) / b->chunk_pages;
        uint64_t chunk_words = page_bitmap_words(s->chunks);
        s->got = page_bitmap_alloc(s->pages);
        s->uncleared = page_bitmap_alloc(s->pages);
        s->chunk_uncleared = calloc(chunk_words ? chunk_words : 1, sizeof(uint64_t));
        if (!s->got || !s->uncleared || !s->chunk_uncleared) {
            fprintf(stderr, "ringvm: bitmap log: allocating the bitmaps of slot %u (%llu pages): %s\n",
                    s->slot, (unsigned long long)s->pages, strerror(ENOMEM));
            b->slot_count = i + 1;
            bitmap_log_fini(b);
            return -ENOMEM;
        }
    }
    return 0;
}

void bitmap_log_fini(struct bitmap_log *b)
{
    for (unsigned i = 0; i < GUEST_MEMORY_MAX_SLOTS; i++) {
        free(b->slots[i].got);
        free(b->slots[i].uncleared);
        free((void *)b->slots[i].chunk_uncleared);
        b->slots[i].got = NULL;
        b->slots[i].uncleared = NULL;
        b->slots[i].chunk_uncleared = NULL;
    }
    if (b->locks_ready) {
        pthread_mutex_destroy(&b->lock);
        pthread_mutex_destroy(&b->thread_lock);
        pthread_cond_destroy(&b->cond);
        b->locks_ready = false;
    }
}

void bitmap_log_all_uncleared(struct bitmap_log *b)
{
    pthread_mutex_lock(&b->lock);
    uint64_t total = 0;
    for (unsigned i = 0; i < b->slot_count; i++) {
        struct bitmap_slot *s = &b->slots[i];
        for (uint64_t k = 0; k < s->words; k++)
            s->uncleared[k] = ~0ULL;
        if (s->words > 0)
            s->uncleared[s->words - 1] = page_bitmap_last_word_mask(s->pages);
        uint64_t chunk_words = page_bitmap_words(s->chunks);
        for (uint64_t k = 0; k < chunk_words; k++) {
            uint64_t v = k == chunk_words - 1 ? page_bitmap_last_word_mask(s->chunks) : ~0ULL;
            atomic_store_explicit(&s->chunk_uncleared[k], v, memory_order_release);
        }
        total += s->pages;
    }
    atomic_store_explicit(&b->uncleared_pages, total, memory_order_relaxed);
    pthread_mutex_unlock(&b->lock);
}

/* Under lock. */
static int64_t get_locked(struct bitmap_log *b, bool mark_set)
{
    uint64_t t0 = monotonic_now_ns();
    int64_t total = 0;
    uint64_t fresh = 0;
    struct dirty_set_writer w;
    if (mark_set)
        dirty_set_write_begin(b->set, 0, &w);
    for (unsigned i = 0; i < b->slot_count; i++) {
        struct bitmap_slot *s = &b->slots[i];
        struct kvm_dirty_log log = { .slot = s->slot, .dirty_bitmap = s->got };
        if (ioctl(b->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
            int err = errno;
            fprintf(stderr, "ringvm: KVM_GET_DIRTY_LOG(slot %u): %s\n", s->slot, strerror(err));
            total = -err;
            break;
        }
        atomic_fetch_add_explicit(&b->gets, 1, memory_order_relaxed);
        uint64_t first = UINT64_MAX, last = 0;
        for (uint64_t k = 0; k < s->words; k++) {
            uint64_t got = s->got[k];
            if (!got)
                continue;
            if (first == UINT64_MAX)
                first = k;
            last = k;
            total += __builtin_popcountll(got);
            uint64_t added = got & ~s->uncleared[k];
            if (added) {
                fresh += (uint64_t)__builtin_popcountll(added);
                s->uncleared[k] |= added;
                uint64_t chunk = k * 64 / b->chunk_pages;
                page_bitmap_set_atomic(s->chunk_uncleared, chunk, memory_order_release);
            }
        }
        if (mark_set && first != UINT64_MAX)
            dirty_set_mark_words(&w, s->first_page + first * 64, &s->got[first], last - first + 1);
    }
    if (mark_set)
        dirty_set_write_end(&w);
    uint64_t t1 = monotonic_now_ns();
    atomic_fetch_add_explicit(&b->syncs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->sync_ns_total, t1 - t0, memory_order_relaxed);
    atomic_store_explicit(&b->sync_ns_last, t1 - t0, memory_order_relaxed);
    atomic_store_explicit(&b->get_ns_last, t1 - t0, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->pages, fresh, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->uncleared_pages, fresh, memory_order_relaxed);
    return total;
}

int64_t bitmap_log_get(struct bitmap_log *b, bool mark_set)
{
    pthread_mutex_lock(&b->lock);
    int64_t n = get_locked(b, mark_set);
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* KVM_CLEAR_DIRTY_LOG of the uncleared bits of words [first_word, end_word)
 * of slot s, then those words are zero. Under lock. 0 or -errno. */
static int clear_words_locked(struct bitmap_log *b, struct bitmap_slot *s, uint64_t first_word,
                              uint64_t end_word)
{
    while (first_word < end_word && !s->uncleared[first_word])
        first_word++;
    while (end_word > first_word && !s->uncleared[end_word - 1])
        end_word--;
    if (first_word == end_word)
        return 0;
    /* first_page a multiple of 64; num_pages a multiple of 64 or reaching
     * the slot's end, as KVM requires. */
    uint64_t first_page = first_word * 64;
    uint64_t end_page = end_word * 64 < s->pages ? end_word * 64 : s->pages;
    struct kvm_clear_dirty_log clear = {
        .slot = s->slot,
        .num_pages = (uint32_t)(end_page - first_page),
        .first_page = first_page,
        .dirty_bitmap = &s->uncleared[first_word],
    };
    uint64_t t0 = monotonic_now_ns();
    if (ioctl(b->vm_fd, KVM_CLEAR_DIRTY_LOG, &clear) < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_CLEAR_DIRTY_LOG(slot %u, pages %llu..%llu): %s\n", s->slot,
                (unsigned long long)first_page, (unsigned long long)end_page - 1, strerror(err));
        return -err;
    }
    uint64_t ns = monotonic_now_ns() - t0;
    uint64_t cleared = 0;
    for (uint64_t k = first_word; k < end_word; k++) {
        cleared += (uint64_t)__builtin_popcountll(s->uncleared[k]);
        s->uncleared[k] = 0;
    }
    atomic_fetch_add_explicit(&b->clears, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->cleared_pages, cleared, memory_order_relaxed);
    atomic_fetch_sub_explicit(&b->uncleared_pages, cleared, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->clear_ns_total, ns, memory_order_relaxed);
    atomic_store_explicit(&b->clear_ns_last, ns, memory_order_relaxed);
    return 0;
}

/* Chunk c of slot s: CLEAR its uncleared bits, then its chunk bit goes.
 * Under lock. */
static int clear_chunk_locked(struct bitmap_log *b, struct bitmap_slot *s, uint64_t c)
{
    if (!page_bitmap_test_atomic(s->chunk_uncleared, c, memory_order_relaxed))
        return 0;       /* cleared by someone else since the lock-free look */
    uint64_t first_word = c * b->chunk_pages / 64;
    uint64_t end_word = first_word + b->chunk_pages / 64;
    if (end_word > s->words)
        end_word = s->words;
    int rc = clear_words_locked(b, s, first_word, end_word);
    if (rc == 0)
        page_bitmap_clear_atomic(s->chunk_uncleared, c, memory_order_release);
    return rc;
}

int bitmap_log_protect(struct bitmap_log *b, uint64_t first_page, uint64_t count)
{
    uint64_t end = first_page + count;
    bool locked = false;
    int rc = 0;
    for (unsigned i = 0; i < b->slot_count && rc == 0; i++) {
        struct bitmap_slot *s = &b->slots[i];
        uint64_t lo = first_page > s->first_page ? first_page - s->first_page : 0;
        uint64_t hi = end < s->first_page + s->pages ? end - s->first_page : s->pages;
        if (end <= s->first_page || lo >= hi)
            continue;
        for (uint64_t c = lo / b->chunk_pages; c <= (hi - 1) / b->chunk_pages; c++) {
            /* Acquire pairs with the release that set the bit under lock:
             * a bit we see clear here was cleared by a CLEAR that
             * completed (the only way a set bit goes), so the chunk's
             * pages are protected; a bit set later belongs to a later GET
             * whose pages will be planned (and so protected) again. */
            if (!page_bitmap_test_atomic(s->chunk_uncleared, c, memory_order_acquire))
                continue;
            if (!locked) {
                pthread_mutex_lock(&b->lock);
                locked = true;
            }
            rc = clear_chunk_locked(b, s, c);
            if (rc < 0)
                break;
        }
    }
    if (locked)
        pthread_mutex_unlock(&b->lock);
    return rc;
}

int64_t bitmap_log_sync_once(struct bitmap_log *b)
{
    pthread_mutex_lock(&b->lock);
    uint64_t fresh_before = atomic_load_explicit(&b->pages, memory_order_relaxed);
    int64_t rc = get_locked(b, false);
    for (unsigned i = 0; i < b->slot_count && rc >= 0; i++) {
        struct bitmap_slot *s = &b->slots[i];
        int r = clear_words_locked(b, s, 0, s->words);
        if (r < 0) {
            rc = r;
            break;
        }
        uint64_t chunk_words = page_bitmap_words(s->chunks);
        for (uint64_t k = 0; k < chunk_words; k++)
            atomic_store_explicit(&s->chunk_uncleared[k], 0, memory_order_release);
    }
    uint64_t fresh = atomic_load_explicit(&b->pages, memory_order_relaxed) - fresh_before;
    pthread_mutex_unlock(&b->lock);
    return rc < 0 ? rc : (int64_t)fresh;
}

static void *bitmap_sync_main(void *arg)
{
    struct bitmap_log *b = arg;
    pthread_setname_np(pthread_self(), "dirtysync");
    pthread_mutex_lock(&b->thread_lock);
    while (!b->stop) {
        struct timespec ts = monotonic_deadline_after_ns((uint64_t)b->sync_ms * 1000000ULL);
        while (!b->stop && pthread_cond_timedwait(&b->cond, &b->thread_lock, &ts) != ETIMEDOUT)
            ;
        if (b->stop)
            break;
        pthread_mutex_unlock(&b->thread_lock);
        /* A failure is printed by the call; the next period tries again. */
        (void)bitmap_log_sync_once(b);
        pthread_mutex_lock(&b->thread_lock);
    }
    pthread_mutex_unlock(&b->thread_lock);
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        atomic_store_explicit(&b->cpu_ns_at_exit,
                              (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec,
                              memory_order_relaxed);
    return NULL;
}

int bitmap_log_sync_start(struct bitmap_log *b)
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

void bitmap_log_sync_stop(struct bitmap_log *b)
{
    if (!b->running)
        return;
    pthread_mutex_lock(&b->thread_lock);
    b->stop = true;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->thread_lock);
    int rc = pthread_join(b->thread, NULL);
    if (rc)
        fprintf(stderr, "ringvm: bitmap sync thread: pthread_join: %s\n", strerror(rc));
    b->running = false;
    b->retired_cpu_ns += atomic_load_explicit(&b->cpu_ns_at_exit, memory_order_relaxed);
}

uint64_t bitmap_log_sync_cpu_ns(const struct bitmap_log *b)
{
    uint64_t total = b->retired_cpu_ns;
    struct timespec ts;
    if (b->running && b->cpu_clock_valid && clock_gettime(b->cpu_clock, &ts) == 0)
        total += (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    return total;
}
