/*
 * The dirty logging facade (see dirty_log.h for the call order).
 *
 * struct dirty_log ownership / threads:
 *   - config, kvm_fd, vm_fd, memory, vcpu_count, mode, ring_bytes,
 *     page_size: immutable after dirty_log_create.
 *   - slots, set, bitmap buffers: created once by the first caller of
 *     ensure_memory (attach_vcpu or start, under control_lock), immutable
 *     afterwards until dirty_log_destroy.
 *   - rings[i]: written by dirty_log_attach_vcpu (owner thread, before the
 *     vCPU runs), then read by everyone (harvesters, vCPU threads, takes).
 *   - resetter: shared by all resetters, internally locked (reset.h).
 *   - control_lock serializes controllers: hold/release (start/stop)/take/
 *     final_sync/get_stats' reads of the harvester group. tracking is an
 *     atomic so mark_range and the vCPU threads can read it without the lock.
 *   - holders: the DIRTY_LOG_HOLDER_* bits of whoever wants tracking on
 *     (a migration, the API's vm.dirty-tracking). Written only under
 *     control_lock by dirty_log_hold/release, read by anyone (atomic).
 *     Invariant under control_lock: tracking == (holders != 0), except
 *     inside hold(MIGRATION) while it restarts tracking (both briefly
 *     off) and after a failed start (holders unchanged, tracking off).
 *     The KVM state (slot flags, harvesters) belongs to the facade, not
 *     to a holder: tracking goes off only when the last holder releases.
 *   - page_entries (ring mode unless ring_reset_at_take): one word per RAM
 *     page, allocated with the dirty set; written by the ring consumers
 *     (vcpu_ring.h), read by the migration thread in
 *     dirty_log_protect_pages. late_reset: a migration holds tracking with
 *     late reset (written under control_lock, read by anyone).
 *     protect_end/protect_needed: scratch of dirty_log_protect_pages, whose
 *     only caller is the migration thread.
 *   - counters: atomics.
 */
#include "dirtyring/dirty_log.h"

#include <errno.h>
#include <inttypes.h>
#include <numa.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "dirtyring/bitmap.h"
#include "dirtyring/dirty_set.h"
#include "dirtyring/harvester.h"
#include "dirtyring/rate.h"
#include "dirtyring/reset.h"
#include "dirtyring/vcpu_ring.h"
#include "vmm/memory.h"
#include "vmm/monotonic.h"
#include "vmm/vcpu.h"

struct dirty_log {
    struct dirty_log_config config;
    int kvm_fd;
    int vm_fd;
    struct guest_memory *memory;
    unsigned vcpu_count;
    long page_size;
    uint32_t ring_bytes;
    const char *ring_cap_name;

    pthread_mutex_t control_lock;
    _Atomic bool tracking;
    _Atomic unsigned holders;           /* DIRTY_LOG_HOLDER_* bits, see above */
    bool memory_ready;                  /* under control_lock */
    struct dirty_slot_map slots;
    struct dirty_set *set;

    struct vcpu_ring **rings;           /* vcpu_count entries */
    _Atomic uint64_t *page_entries;     /* see above; NULL without late reset */
    /* Late protection of pass 0: per KVM memslot, KVM_MEM_LOG_DIRTY_PAGES is
     * on (written under control_lock, read by anyone); lazy_slots: some
     * memslot waits for the migration's first read in it (a migration's
     * fresh start in ring mode with late reset and several memslots).
     * lazy_cache_*: the page range of the memslot last found logging, the
     * migration thread's alone (dirty_log_protect_before_send). */
    _Atomic bool *slot_logging;
    _Atomic bool lazy_slots;
    uint64_t lazy_cache_first, lazy_cache_end;
    _Atomic uint64_t slot_enables;
    _Atomic bool late_reset;
    uint32_t *protect_end;              /* vcpu_count entries, migration thread */
    bool *protect_needed;
    _Atomic uint64_t late_protect_calls;
    _Atomic uint64_t late_flagged;
    _Atomic uint64_t late_resets;
    struct ring_resetter resetter;
    bool resetter_ready;
    struct harvester_group harvesters;  /* under control_lock */

    struct bitmap_log bitmap;
    bool bitmap_ready;
    /* dirty_log_final_sync ran for this migration hold (the vCPUs are
     * paused for good): bitmap mode: no more CLEARs, the take GETs nothing
     * new; ring mode: no more resets (the resetter is suspended) until the
     * migration releases. Written under control_lock, read by the
     * migration thread in dirty_log_protect_before_send (atomic). */
    _Atomic bool final_synced;

    struct rate_history vm_rate;        /* VM total, sampled by get_stats / bitmap takes */

    _Atomic uint64_t takes;
    _Atomic uint64_t tracking_starts;   /* start_locked that turned tracking on */
    _Atomic uint64_t take_ns_last;
    _Atomic uint64_t take_pages_last;
    _Atomic uint64_t take_collect_ns_last;
    _Atomic uint64_t take_reset_ns_last;
    _Atomic uint64_t vmm_marked;
    _Atomic bool overflow_warned;
    /* Last values read under control_lock, for get_stats when a controller
     * holds it (get_stats never blocks). */
    _Atomic uint64_t cached_cpu_ns;
    _Atomic uint64_t cached_polls;
    _Atomic unsigned cached_harvesters;
};

void dirty_log_config_defaults(struct dirty_log_config *config)
{
    memset(config, 0, sizeof(*config));
    config->mode = DIRTY_LOG_RING;
    config->ring_entries = DIRTY_LOG_DEFAULT_RING_ENTRIES;
    config->harvesters = 0;
    config->bitmap_sync_ms = DIRTY_LOG_DEFAULT_BITMAP_SYNC_MS;
    config->bitmap_clear_chunk_bytes = DIRTY_LOG_DEFAULT_BITMAP_CLEAR_CHUNK;
    config->reset_threshold_pct = DIRTY_LOG_DEFAULT_RESET_THRESHOLD_PCT;
    config->reset_max_delay_ms = DIRTY_LOG_DEFAULT_RESET_MAX_DELAY_MS;
    config->no_harvester = false;
}

const char *dirty_log_mode_name(enum dirty_log_mode mode)
{
    switch (mode) {
    case DIRTY_LOG_RING: return "ring";
    case DIRTY_LOG_BITMAP: return "bitmap";
    case DIRTY_LOG_OFF: return "off";
    }
    return "?";
}

int dirty_log_mode_parse(const char *text, enum dirty_log_mode *mode, char *error, size_t error_size)
{
    if (text && !strcasecmp(text, "ring"))
        *mode = DIRTY_LOG_RING;
    else if (text && !strcasecmp(text, "bitmap"))
        *mode = DIRTY_LOG_BITMAP;
    else if (text && !strcasecmp(text, "off"))
        *mode = DIRTY_LOG_OFF;
    else {
        snprintf(error, error_size, "--dirty-log: unknown mode '%s' (expected ring, bitmap or off)",
                 text ? text : "");
        return -1;
    }
    return 0;
}

int dirty_log_config_validate(const struct dirty_log_config *c, char *error, size_t error_size)
{
    uint32_t n = c->ring_entries;
    if (n < DIRTY_LOG_MIN_RING_ENTRIES || n > DIRTY_LOG_MAX_RING_ENTRIES || (n & (n - 1))) {
        snprintf(error, error_size, "--ring-entries %u: must be a power of two from %d to %d",
                 n, DIRTY_LOG_MIN_RING_ENTRIES, DIRTY_LOG_MAX_RING_ENTRIES);
        return -1;
    }
    if (c->bitmap_sync_ms == 0 || c->bitmap_sync_ms > 60000) {
        snprintf(error, error_size, "--bitmap-sync-ms %u: must be 1..60000", c->bitmap_sync_ms);
        return -1;
    }
    uint64_t chunk = c->bitmap_clear_chunk_bytes;
    if (chunk < DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK || chunk > DIRTY_LOG_MAX_BITMAP_CLEAR_CHUNK ||
        chunk % DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK) {
        snprintf(error, error_size, "--bitmap-clear-chunk %llu: must be a multiple of 256K "
                 "(64 pages) from 256K to 1G", (unsigned long long)chunk);
        return -1;
    }
    if (c->harvesters > 64) {
        snprintf(error, error_size, "--harvesters %u: at most 64", c->harvesters);
        return -1;
    }
    if (c->reset_threshold_pct > 100) {
        snprintf(error, error_size, "reset threshold %u%%: must be 0..100", c->reset_threshold_pct);
        return -1;
    }
    return 0;
}

enum dirty_log_mode dirty_log_mode(const struct dirty_log *log)
{
    return log ? log->config.mode : DIRTY_LOG_OFF;
}

bool dirty_log_tracking(const struct dirty_log *log)
{
    /* The holders, not the KVM state: a migration restarting tracking under
     * the API's hold does not show as a gap. */
    return log && atomic_load_explicit(&log->holders, memory_order_acquire) != 0;
}

unsigned dirty_log_holders(const struct dirty_log *log)
{
    return log ? atomic_load_explicit(&log->holders, memory_order_acquire) : 0;
}

static int enable_ring(struct dirty_log *log)
{
    int cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
    const char *name = "DIRTY_LOG_RING_ACQ_REL";
    int max = ioctl(log->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
    if (max <= 0) {
        cap = KVM_CAP_DIRTY_LOG_RING;
        name = "DIRTY_LOG_RING";
        max = ioctl(log->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DIRTY_LOG_RING);
    }
    if (max <= 0) {
        fprintf(stderr, "ringvm: dirty ring unsupported by this kernel; use --dirty-log bitmap\n");
        return -ENOTSUP;
    }
    uint64_t bytes = (uint64_t)log->config.ring_entries * sizeof(struct kvm_dirty_gfn);
    if (bytes > (uint64_t)max && log->config.ring_entries == DIRTY_LOG_DEFAULT_RING_ENTRIES) {
        /* The default is the largest ring we want; a kernel allowing less
         * gets its maximum (max is a power of two per api.rst). */
        uint32_t entries = (uint32_t)((uint64_t)max / sizeof(struct kvm_dirty_gfn));
        fprintf(stderr, "ringvm: dirty ring: this kernel allows %u entries per vCPU; using %u\n",
                entries, entries);
        log->config.ring_entries = entries;
        bytes = (uint64_t)entries * sizeof(struct kvm_dirty_gfn);
    }
    if (bytes > (uint64_t)max) {
        fprintf(stderr, "ringvm: --ring-entries %u: this kernel allows at most %llu entries "
                "per vCPU\n", log->config.ring_entries,
                (unsigned long long)((uint64_t)max / sizeof(struct kvm_dirty_gfn)));
        return -EINVAL;
    }
    struct kvm_enable_cap enable = { .cap = (uint32_t)cap, .args = { bytes } };
    if (ioctl(log->vm_fd, KVM_ENABLE_CAP, &enable) < 0) {
        int err = errno;
        fprintf(stderr, "ringvm: KVM_ENABLE_CAP(%s, %u entries): %s%s\n", name,
                log->config.ring_entries, strerror(err),
                err == EINVAL && bytes < (uint64_t)log->page_size
                    ? " (the ring must be at least one page: 256 entries)" : "");
        return -err;
    }
    log->ring_bytes = (uint32_t)bytes;
    log->ring_cap_name = name;
    return 0;
}

int dirty_log_create(struct dirty_log **out, const struct dirty_log_config *config,
                     int kvm_fd, int vm_fd, struct guest_memory *memory, unsigned vcpu_count)
{
    *out = NULL;
    if (config->mode == DIRTY_LOG_OFF)
        return 0;
    char error[160];
    if (dirty_log_config_validate(config, error, sizeof(error)) < 0) {
        fprintf(stderr, "ringvm: %s\n", error);
        return -EINVAL;
    }
    struct dirty_log *log = calloc(1, sizeof(*log));
    if (!log) {
        fprintf(stderr, "ringvm: dirty log: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    log->config = *config;
    log->kvm_fd = kvm_fd;
    log->vm_fd = vm_fd;
    log->memory = memory;
    log->vcpu_count = vcpu_count;
    log->page_size = sysconf(_SC_PAGESIZE);
    pthread_mutex_init(&log->control_lock, NULL);
    atomic_init(&log->tracking, false);
    atomic_init(&log->holders, 0u);
    rate_history_init(&log->vm_rate);
    log->rings = calloc(vcpu_count ? vcpu_count : 1, sizeof(*log->rings));
    if (!log->rings) {
        fprintf(stderr, "ringvm: dirty log: %s\n", strerror(ENOMEM));
        dirty_log_destroy(log);
        return -ENOMEM;
    }
    int rc;
    if (config->mode == DIRTY_LOG_RING) {
        rc = enable_ring(log);
        if (rc == 0) {
            rc = ring_resetter_init(&log->resetter, vm_fd, vcpu_count);
            log->resetter_ready = rc == 0;
        }
    } else {
        rc = bitmap_enable_manual_protect(vm_fd);
    }
    if (rc < 0) {
        dirty_log_destroy(log);
        return rc;
    }
    *out = log;
    return 0;
}

/* The dirty set and slot map need the guest memory layout, which the core
 * may create after dirty_log_create. Called under control_lock. */
static int ensure_memory(struct dirty_log *log)
{
    if (log->memory_ready)
        return 0;
    if (!log->memory || log->memory->size == 0 || log->memory->slot_count == 0) {
        fprintf(stderr, "ringvm: dirty log: guest memory must exist before the first vCPU "
                "is attached\n");
        return -EINVAL;
    }
    dirty_slot_map_init(&log->slots, log->memory);

    /* One shard per NUMA node when there are several (writers mark in
     * their node's shard; take merges). */
    int nodes[DIRTY_SET_MAX_SHARDS];
    unsigned shards = 1;
    nodes[0] = -1;
    if (numa_available() >= 0 && numa_num_configured_nodes() > 1) {
        shards = 0;
        int max_node = numa_max_node();
        for (int n = 0; n <= max_node && shards < DIRTY_SET_MAX_SHARDS; n++)
            if (numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)n))
                nodes[shards++] = n;
        if (shards == 0) {
            shards = 1;
            nodes[0] = -1;
        }
    }
    int rc = dirty_set_create(&log->set, guest_memory_pages(log->memory), shards, nodes);
    if (rc < 0)
        return rc;
    if (log->config.mode == DIRTY_LOG_RING && !log->config.ring_reset_at_take) {
        log->page_entries = calloc(guest_memory_pages(log->memory), sizeof(*log->page_entries));
        log->protect_end = calloc(log->vcpu_count ? log->vcpu_count : 1, sizeof(*log->protect_end));
        log->protect_needed = calloc(log->vcpu_count ? log->vcpu_count : 1, sizeof(*log->protect_needed));
        log->slot_logging = calloc(log->slots.count ? log->slots.count : 1, sizeof(*log->slot_logging));
        if (!log->page_entries || !log->protect_end || !log->protect_needed || !log->slot_logging) {
            fprintf(stderr, "ringvm: dirty log: late reset's page entry records (%" PRIu64 " pages): %s\n",
                    guest_memory_pages(log->memory), strerror(ENOMEM));
            return -ENOMEM;
        }
    }
    if (log->config.mode == DIRTY_LOG_BITMAP) {
        rc = bitmap_log_init(&log->bitmap, log->vm_fd, log->memory, log->set,
                             log->config.bitmap_sync_ms, log->config.bitmap_clear_chunk_bytes);
        if (rc < 0)
            return rc;
        log->bitmap_ready = true;
    }
    log->memory_ready = true;
    return 0;
}

int dirty_log_attach_vcpu(struct dirty_log *log, struct vcpu *vcpu)
{
    if (!log)
        return 0;
    pthread_mutex_lock(&log->control_lock);
    int rc = ensure_memory(log);
    if (rc < 0 || log->config.mode != DIRTY_LOG_RING) {
        pthread_mutex_unlock(&log->control_lock);
        return rc;
    }
    if (vcpu->index >= log->vcpu_count || log->rings[vcpu->index]) {
        fprintf(stderr, "ringvm: dirty log: vCPU %u attached twice or beyond %u vCPUs\n",
                vcpu->index, log->vcpu_count);
        pthread_mutex_unlock(&log->control_lock);
        return -EINVAL;
    }
    off_t offset = (off_t)KVM_DIRTY_LOG_PAGE_OFFSET * log->page_size;
    void *map = mmap(NULL, log->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, offset);
    if (map == MAP_FAILED) {
        int err = errno;
        fprintf(stderr, "ringvm: mmap of vCPU %u dirty ring (%u bytes at offset %lld): %s\n",
                vcpu->index, log->ring_bytes, (long long)offset, strerror(err));
        pthread_mutex_unlock(&log->control_lock);
        return -err;
    }
    int node = vcpu->numa_node;
    struct vcpu_ring *vr;
    if (node >= 0 && numa_available() >= 0)
        vr = numa_alloc_onnode(sizeof(*vr), node);
    else
        vr = aligned_alloc(64, (sizeof(*vr) + 63) & ~(size_t)63);
    if (!vr) {
        munmap(map, log->ring_bytes);
        fprintf(stderr, "ringvm: dirty log: vCPU %u ring state: %s\n", vcpu->index, strerror(ENOMEM));
        pthread_mutex_unlock(&log->control_lock);
        return -ENOMEM;
    }
    memset(vr, 0, sizeof(*vr));
    uint32_t entries = log->ring_bytes / sizeof(struct kvm_dirty_gfn);
    vcpu_ring_init(vr, vcpu->index, node, map, entries, log->set,
                   dirty_set_shard_for_node(log->set, node), &log->slots);
    vr->mapping = map;
    vr->mapping_size = log->ring_bytes;
    vr->page_entries = log->page_entries;
    log->rings[vcpu->index] = vr;
    ring_resetter_set_ring(&log->resetter, vcpu->index, vr);
    vcpu->dirty_ring = map;
    vcpu->dirty_ring_entries = entries;
    pthread_mutex_unlock(&log->control_lock);
    return 0;
}

static void free_ring(struct vcpu_ring *vr)
{
    if (!vr)
        return;
    if (vr->mapping)
        munmap(vr->mapping, vr->mapping_size);
    int node = vr->numa_node;
    vcpu_ring_fini(vr);
    if (node >= 0 && numa_available() >= 0)
        numa_free(vr, sizeof(*vr));
    else
        free(vr);
}

/* Ring mode: every ring to empty (vCPUs paused or slots unflagged), then one
 * reset. Returns entries harvested or -errno. */
static int64_t drain_all_rings(struct dirty_log *log, bool to_empty)
{
    int64_t total = 0;
    for (unsigned i = 0; i < log->vcpu_count; i++)
        if (log->rings[i])
            total += vcpu_ring_harvest(log->rings[i], false, to_empty);
    return total;
}

void dirty_log_handle_ring_full(struct dirty_log *log, struct vcpu *vcpu)
{
    if (!log || log->config.mode != DIRTY_LOG_RING || vcpu->index >= log->vcpu_count)
        return;
    struct vcpu_ring *vr = log->rings[vcpu->index];
    if (!vr)
        return;
    atomic_fetch_add_explicit(&vr->full_exits, 1, memory_order_relaxed);
    /* Our own ring: blocking lock (its harvester holds it for one batch at
     * most and never waits for us), drain to empty, recycle. Then KVM_RUN
     * continues with a ring that has room again. */
    uint32_t n = vcpu_ring_harvest(vr, false, true);
    /* Late reset held entries back for the sender; the vCPU needs the
     * space now (they are re-protected early: safe, one fault more). */
    vcpu_ring_flag_all(vr);
    int64_t reset = ring_resetter_reset(&log->resetter, true);
    if (n == 0 && reset <= 0) {
        /* Full with nothing to harvest: the ring overflowed (emulated
         * writes ignore the soft limit on some hosts). Nothing we can
         * recover; count it and say so once. */
        atomic_fetch_add_explicit(&vr->full_exits_empty, 1, memory_order_relaxed);
        if (!atomic_exchange_explicit(&log->overflow_warned, true, memory_order_relaxed))
            fprintf(stderr, "ringvm: vCPU %u: dirty ring full with nothing to harvest "
                    "(overflowed?); dirty tracking of this vCPU is unreliable\n", vcpu->index);
    }
}

void dirty_log_destroy(struct dirty_log *log)
{
    if (!log)
        return;
    pthread_mutex_lock(&log->control_lock);
    if (log->harvesters.count)
        harvester_group_stop(&log->harvesters);
    if (log->bitmap_ready)
        bitmap_log_sync_stop(&log->bitmap);
    pthread_mutex_unlock(&log->control_lock);
    if (log->rings)
        for (unsigned i = 0; i < log->vcpu_count; i++)
            free_ring(log->rings[i]);
    free(log->rings);
    free((void *)log->page_entries);
    free(log->protect_end);
    free(log->protect_needed);
    free((void *)log->slot_logging);
    if (log->resetter_ready)
        ring_resetter_fini(&log->resetter);
    if (log->bitmap_ready)
        bitmap_log_fini(&log->bitmap);
    dirty_set_destroy(log->set);
    rate_history_fini(&log->vm_rate);
    pthread_mutex_destroy(&log->control_lock);
    free(log);
}

static struct harvest_policy policy_of(const struct dirty_log *log, uint32_t ring_entries)
{
    struct harvest_policy p = {
        .reset_threshold = (uint32_t)((uint64_t)ring_entries * log->config.reset_threshold_pct / 100),
        .reset_max_delay_ns = (uint64_t)log->config.reset_max_delay_ms * 1000000ULL,
        .poll_min_ns = 50000,           /* 50 us */
        .poll_max_ns = 5000000,         /* 5 ms: ~200 wake-ups/s idle */
    };
    if (log->config.reset_threshold_pct && p.reset_threshold == 0)
        p.reset_threshold = 1;
    /* Leave the kernel's reserve (64) + one poll's worth of headroom. */
    uint32_t ceiling = ring_entries > 64 + ring_entries / 8 ? ring_entries - 64 - ring_entries / 8 : 1;
    if (p.reset_threshold > ceiling)
        p.reset_threshold = ceiling;
    return p;
}

/* A migration's hold starts (or ends): whatever its final sync stopped
 * (CLEARs, ring resets) is allowed again. Under control_lock. */
static void final_sync_undone_locked(struct dirty_log *log)
{
    atomic_store_explicit(&log->final_synced, false, memory_order_relaxed);
    if (log->resetter_ready)
        ring_resetter_suspend(&log->resetter, false);
}

/* Late reset on for a migration's hold, or off when it releases (every
 * entry held back is flagged; the caller resets). Ring mode with page
 * records only. Returns the entries flagged. Under control_lock. */
static uint64_t late_reset_set_locked(struct dirty_log *log, bool on)
{
    if (log->config.mode != DIRTY_LOG_RING || !log->page_entries ||
        atomic_load_explicit(&log->late_reset, memory_order_relaxed) == on)
        return 0;
    uint64_t flagged = 0;
    for (unsigned i = 0; i < log->vcpu_count; i++)
        if (log->rings[i])
            flagged += vcpu_ring_set_defer(log->rings[i], on);
    atomic_store_explicit(&log->late_reset, on, memory_order_release);
    return flagged;
}

/* KVM_MEM_LOG_DIRTY_PAGES on for one KVM memslot (index into log->slots),
 * if not yet. Under control_lock. */
static int enable_slot_locked(struct dirty_log *log, unsigned index)
{
    if (log->slot_logging && atomic_load_explicit(&log->slot_logging[index], memory_order_relaxed))
        return 0;
    int rc = guest_memory_set_kvm_slot_dirty_logging(log->memory, log->vm_fd, index, true);
    if (rc < 0)
        return rc;
    if (log->slot_logging) {
        atomic_store_explicit(&log->slot_logging[index], true, memory_order_release);
        atomic_fetch_add_explicit(&log->slot_enables, 1, memory_order_relaxed);
    }
    return 0;
}

/* Every memslot logging (a take, the API's tracking, the end of lazy
 * enabling). Under control_lock. */
static int enable_all_slots_locked(struct dirty_log *log)
{
    int rc = 0;
    if (!log->slot_logging) {
        rc = guest_memory_set_dirty_logging(log->memory, log->vm_fd, true);
    } else {
        for (unsigned i = 0; i < log->slots.count && rc == 0; i++)
            rc = enable_slot_locked(log, i);
    }
    if (rc == 0)
        atomic_store_explicit(&log->lazy_slots, false, memory_order_release);
    return rc;
}

/* Tracking on from off, with an empty dirty set: every page written after
 * it returns is in a later take. lazy: leave the memslots without
 * KVM_MEM_LOG_DIRTY_PAGES; dirty_log_protect_before_send turns each on
 * before the migration first reads a page of it (pass 0), and a take turns
 * on whatever is left. Under control_lock. */
static int start_locked(struct dirty_log *log, bool lazy)
{
    int rc = 0;
    if (atomic_load_explicit(&log->tracking, memory_order_relaxed))
        return 0;
    rc = ensure_memory(log);
    if (rc < 0)
        return rc;
    /* Pages of an earlier tracking session are stale: the caller sends all
     * RAM after start. Discard both generations. */
    dirty_set_clear(log->set);
    atomic_store_explicit(&log->tracking, true, memory_order_release);
    if (log->config.mode == DIRTY_LOG_RING && !log->config.no_harvester) {
        struct harvest_policy policy = policy_of(log, log->ring_bytes / sizeof(struct kvm_dirty_gfn));
        rc = harvester_group_start(&log->harvesters, log->rings, log->vcpu_count,
                                   log->config.harvesters, &policy, &log->resetter);
        if (rc < 0)
            goto fail;
    } else if (log->config.mode == DIRTY_LOG_BITMAP) {
        /* INITIALLY_SET: the flag below sets every bit and protects no
         * page; each page is write-protected when its bit is CLEARed
         * (bitmap.h). The sync thread is the holders' business
         * (bitmap_sync_thread_locked). */
        bitmap_log_all_uncleared(&log->bitmap);
    }
    final_sync_undone_locked(log);
    log->lazy_cache_first = log->lazy_cache_end = 0;
    if (lazy && log->slot_logging && log->slots.count > 1) {
        atomic_store_explicit(&log->lazy_slots, true, memory_order_release);
    } else {
        rc = enable_all_slots_locked(log);
        if (rc < 0) {
            fprintf(stderr, "ringvm: dirty log: enabling KVM_MEM_LOG_DIRTY_PAGES failed\n");
            goto fail;
        }
    }
    atomic_fetch_add_explicit(&log->tracking_starts, 1, memory_order_relaxed);
    return 0;
fail:
    if (log->harvesters.count)
        harvester_group_stop(&log->harvesters);
    if (log->bitmap_ready)
        bitmap_log_sync_stop(&log->bitmap);
    atomic_store_explicit(&log->tracking, false, memory_order_release);
    return rc;
}

/* Tracking off (slots unflagged, rings drained, harvesters joined). Under
 * control_lock. */
static int stop_locked(struct dirty_log *log)
{
    int rc = 0;
    if (!atomic_load_explicit(&log->tracking, memory_order_relaxed))
        return 0;
    /* Bitmap: the sync thread must not GET a slot without a dirty bitmap
     * (ENOENT), so it stops before the flag goes. */
    if (log->config.mode == DIRTY_LOG_BITMAP && log->bitmap_ready)
        bitmap_log_sync_stop(&log->bitmap);
    /* Ring: unflag first; once KVM_SET_USER_MEMORY_REGION returns no vCPU
     * pushes new entries (KVM waits for in-flight faults on the old
     * memslots), then drain what is left. */
    rc = guest_memory_set_dirty_logging(log->memory, log->vm_fd, false);
    if (rc < 0)
        fprintf(stderr, "ringvm: dirty log: clearing KVM_MEM_LOG_DIRTY_PAGES failed\n");
    for (unsigned i = 0; log->slot_logging && i < log->slots.count; i++)
        atomic_store_explicit(&log->slot_logging[i], false, memory_order_relaxed);
    atomic_store_explicit(&log->lazy_slots, false, memory_order_release);
    if (log->harvesters.count)
        harvester_group_stop(&log->harvesters);
    if (log->config.mode == DIRTY_LOG_RING) {
        drain_all_rings(log, true);
        int64_t r = ring_resetter_reset(&log->resetter, false);
        if (r < 0 && rc == 0)
            rc = (int)r;
    }
    atomic_store_explicit(&log->tracking, false, memory_order_release);
    return rc;
}

/* Bitmap mode: the statistics' sync thread (periodic GET + CLEAR of
 * everything) runs exactly while tracking is on for the API alone. During
 * a migration it must not run: its CLEARs would re-protect pages long
 * before the sender reads them and, worse, clear bits of pages a take has
 * handed over but the migration has not read yet. Under control_lock.
 * 0 or -errno. */
static int bitmap_sync_thread_locked(struct dirty_log *log)
{
    if (log->config.mode != DIRTY_LOG_BITMAP || !log->bitmap_ready)
        return 0;
    unsigned holders = atomic_load_explicit(&log->holders, memory_order_relaxed);
    if (atomic_load_explicit(&log->tracking, memory_order_relaxed) && holders == DIRTY_LOG_HOLDER_API)
        return bitmap_log_sync_start(&log->bitmap);
    bitmap_log_sync_stop(&log->bitmap);
    return 0;
}

/* Collect what KVM has now into the current generation. Bitmap: GET
 * only (the pages are CLEARed chunk by chunk by
 * dirty_log_protect_before_send just before they are read), and nothing
 * after the final sync (the vCPUs are paused for good; it got everything). */
static int64_t sync_now(struct dirty_log *log, bool to_empty)
{
    if (log->config.mode == DIRTY_LOG_RING)
        return drain_all_rings(log, to_empty);
    if (atomic_load_explicit(&log->final_synced, memory_order_relaxed))
        return 0;
    return bitmap_log_get(&log->bitmap, true);
}

/* One generation out (into out, or ORed into bitmap), under control_lock:
 * collect, swap, and in ring mode reset. Every entry whose page is in the
 * generation just taken was flagged RESET inside a write section the swap
 * waited for; the reset write-protects all of them before they are handed
 * over (not after the final sync: the guest stays paused for good). The
 * pages, or -errno. collect_ns/reset_ns: time in each part. */
static int64_t take_locked(struct dirty_log *log, struct dirty_pages *out, uint64_t *bitmap, uint64_t *collect_ns,
                           uint64_t *reset_ns)
{
    /* Late reset: a take into pages leaves its entries unflagged (the
     * sender flags them as it reaches their pages) and only records where
     * its generation ends in each ring. A take into a bitmap (the hybrid
     * window, which measures the writes between two takes) re-protects
     * everything as before. */
    bool late = atomic_load_explicit(&log->late_reset, memory_order_relaxed) && out != NULL;
    /* A take stands for all of RAM: memslots pass 0 has not reached yet
     * start logging now (not after the final sync: the guest is paused
     * for good, and what pass 0 never read is never sent as read). */
    if (atomic_load_explicit(&log->lazy_slots, memory_order_relaxed) &&
        !atomic_load_explicit(&log->final_synced, memory_order_relaxed)) {
        int rc = enable_all_slots_locked(log);
        if (rc < 0)
            return rc;
    }
    uint64_t t0 = monotonic_now_ns();
    int64_t rc = sync_now(log, false);
    *collect_ns = monotonic_now_ns() - t0;
    int64_t n = 0;
    if (rc >= 0) {
        n = out ? dirty_set_take(log->set, out) : dirty_set_take_bitmap(log->set, bitmap);
        if (n < 0) {
            fprintf(stderr, "ringvm: dirty log: take: %s\n", strerror(ENOMEM));
            rc = -ENOMEM;
        }
    }
    if (rc >= 0 && atomic_load_explicit(&log->late_reset, memory_order_relaxed)) {
        for (unsigned i = 0; i < log->vcpu_count; i++) {
            if (!log->rings[i])
                continue;
            if (!late)
                vcpu_ring_flag_all(log->rings[i]);
            vcpu_ring_mark_boundary(log->rings[i]);
        }
    }
    if (rc >= 0 && log->config.mode == DIRTY_LOG_RING && !late &&
        !atomic_load_explicit(&log->final_synced, memory_order_relaxed)) {
        uint64_t tr = monotonic_now_ns();
        int64_t r = ring_resetter_reset(&log->resetter, false);
        *reset_ns = monotonic_now_ns() - tr;
        if (r < 0)
            rc = r;
    }
    return rc < 0 ? rc : n;
}

int dirty_log_hold(struct dirty_log *log, unsigned holder)
{
    if (!log)
        return 0;
    bool lazy = (holder & DIRTY_LOG_HOLD_LAZY_MEMSLOTS) != 0 && holder & DIRTY_LOG_HOLDER_MIGRATION;
    holder &= ~DIRTY_LOG_HOLD_LAZY_MEMSLOTS;
    pthread_mutex_lock(&log->control_lock);
    unsigned holders = atomic_load_explicit(&log->holders, memory_order_relaxed);
    int rc = 0;
    if (holders & holder) {
        /* Already held by this holder: nothing changes (idempotent). */
    } else if (holder == DIRTY_LOG_HOLDER_MIGRATION && holders != 0 &&
               log->config.mode == DIRTY_LOG_BITMAP) {
        /* Bitmap: no restart needed. The statistics' sync thread stops
         * (from here on only takes GET and only the migration CLEARs), the
         * dirty set starts empty, and every bit counts as uncleared, so
         * pass 0 CLEARs each chunk before reading it: a page the sync left
         * writable (bit set) is protected then, one already protected
         * stays so (CLEAR protects only pages whose bit was set), and any
         * write after the read sets its bit for a later GET. */
        bitmap_log_sync_stop(&log->bitmap);
        dirty_set_clear(log->set);
        bitmap_log_all_uncleared(&log->bitmap);
        final_sync_undone_locked(log);
    } else if (holder == DIRTY_LOG_HOLDER_MIGRATION && holders != 0) {
        /* A migration joining tracking the API keeps on needs a session in
         * which every write after this returns reaches a later take; its
         * pass 0 sends all RAM anyway. Restarting tracking would give that
         * by re-protecting ALL of RAM (slot flag off and on) and making the
         * guest fault on every page again (issue 15, item 2: never restart
         * tracking the API holds). A take that is discarded gives it for
         * the pages that need it: it harvests every published entry and
         * resets them, so each page written so far is write-protected again
         * (its next write pushes a new entry) or has an entry not yet
         * harvested (it lands in the next generation, a page sent once
         * more); a page never written since tracking began is still
         * protected. Clearing the set alone would not do: a page harvested
         * earlier whose entry is not reset is writable without a new
         * entry. */
        final_sync_undone_locked(log);
        struct dirty_pages discarded;
        dirty_pages_init(&discarded);
        uint64_t collect_ns, reset_ns;
        int64_t taken = take_locked(log, &discarded, NULL, &collect_ns, &reset_ns);
        dirty_pages_free(&discarded);
        rc = taken < 0 ? (int)taken : 0;
        if (rc == 0)
            late_reset_set_locked(log, true);
    } else {
        rc = start_locked(log, lazy);
        if (rc == 0 && holder == DIRTY_LOG_HOLDER_MIGRATION)
            late_reset_set_locked(log, true);
        /* The API's rates need every memslot logging, whatever pass 0
         * has reached. */
        if (rc == 0 && holder == DIRTY_LOG_HOLDER_API && atomic_load_explicit(&log->lazy_slots, memory_order_relaxed))
            rc = enable_all_slots_locked(log);
    }
    if (rc == 0) {
        atomic_store_explicit(&log->holders, holders | holder, memory_order_release);
        rc = bitmap_sync_thread_locked(log);
    } else if (holders != 0 && !atomic_load_explicit(&log->tracking, memory_order_relaxed)) {
        /* The restart failed half-way: the other holders lost tracking. */
        atomic_store_explicit(&log->holders, 0u, memory_order_release);
    }
    pthread_mutex_unlock(&log->control_lock);
    return rc;
}

int dirty_log_release(struct dirty_log *log, unsigned holder)
{
    if (!log)
        return 0;
    pthread_mutex_lock(&log->control_lock);
    unsigned holders = atomic_load_explicit(&log->holders, memory_order_relaxed);
    int rc = 0;
    if (holders & holder) {
        holders &= ~holder;
        atomic_store_explicit(&log->holders, holders, memory_order_release);
        bool was_final = holder == DIRTY_LOG_HOLDER_MIGRATION &&
                         atomic_load_explicit(&log->final_synced, memory_order_relaxed);
        uint64_t held_back = 0;
        if (holder == DIRTY_LOG_HOLDER_MIGRATION) {
            final_sync_undone_locked(log);
            /* What late reset held back is flagged now: tracking ends
             * (stop recycles it) or goes on for the API (reset below). */
            held_back = late_reset_set_locked(log, false);
        }
        if (holders == 0) {
            rc = stop_locked(log);
        } else {
            rc = bitmap_sync_thread_locked(log);
            if (rc == 0 && atomic_load_explicit(&log->lazy_slots, memory_order_relaxed))
                rc = enable_all_slots_locked(log);
            /* Tracking goes on for the API: the entries the final sync
             * left unrecycled are re-protected now, so later writes to
             * their pages are logged again. */
            if (rc == 0 && (was_final || held_back) && log->config.mode == DIRTY_LOG_RING) {
                int64_t r = ring_resetter_reset(&log->resetter, false);
                if (r < 0)
                    rc = (int)r;
            }
        }
    }
    pthread_mutex_unlock(&log->control_lock);
    return rc;
}

int dirty_log_start(struct dirty_log *log)
{
    return dirty_log_hold(log, DIRTY_LOG_HOLDER_MIGRATION);
}

int dirty_log_stop(struct dirty_log *log)
{
    return dirty_log_release(log, DIRTY_LOG_HOLDER_MIGRATION);
}

static int64_t take_common(struct dirty_log *log, struct dirty_pages *out, uint64_t *bitmap)
{
    if (!log)
        return 0;
    pthread_mutex_lock(&log->control_lock);
    if (!atomic_load_explicit(&log->tracking, memory_order_relaxed)) {
        pthread_mutex_unlock(&log->control_lock);
        fprintf(stderr, "ringvm: dirty log: take without tracking (call dirty_log_start)\n");
        return -EINVAL;
    }
    uint64_t t0 = monotonic_now_ns();
    uint64_t t_collect = 0, t_reset = 0;
    int64_t n = take_locked(log, out, bitmap, &t_collect, &t_reset);
    uint64_t t1 = monotonic_now_ns();
    if (n >= 0) {
        atomic_fetch_add_explicit(&log->takes, 1, memory_order_relaxed);
        atomic_store_explicit(&log->take_ns_last, t1 - t0, memory_order_relaxed);
        atomic_store_explicit(&log->take_pages_last, (uint64_t)n, memory_order_relaxed);
        atomic_store_explicit(&log->take_collect_ns_last, t_collect, memory_order_relaxed);
        atomic_store_explicit(&log->take_reset_ns_last, t_reset, memory_order_relaxed);
    }
    pthread_mutex_unlock(&log->control_lock);
    return n;
}

int64_t dirty_log_take(struct dirty_log *log, struct dirty_pages *out)
{
    return take_common(log, out, NULL);
}

int64_t dirty_log_take_bitmap(struct dirty_log *log, uint64_t *bitmap)
{
    return take_common(log, NULL, bitmap);
}

int dirty_log_final_sync(struct dirty_log *log)
{
    if (!log)
        return 0;
    pthread_mutex_lock(&log->control_lock);
    int rc = 0;
    if (!atomic_load_explicit(&log->tracking, memory_order_relaxed))
        goto out;
    int64_t n = sync_now(log, true);
    if (n < 0) {
        rc = (int)n;
        goto out;
    }
    atomic_store_explicit(&log->final_synced, true, memory_order_release);
    if (log->config.mode == DIRTY_LOG_RING) {
        /* Every entry is harvested; recycling them would only re-protect
         * pages the paused guest never writes here again (issue 15, item
         * 1: no reset on the downtime path). */
        ring_resetter_suspend(&log->resetter, true);
        for (unsigned i = 0; i < log->vcpu_count; i++) {
            struct vcpu_ring *vr = log->rings[i];
            if (!vr)
                continue;
            pthread_mutex_lock(&vr->lock);
            bool dirty = dirty_ring_has_dirty(&vr->ring);
            pthread_mutex_unlock(&vr->lock);
            if (dirty) {
                fprintf(stderr, "ringvm: dirty log: final sync: vCPU %u still pushes dirty "
                        "entries (not paused?)\n", i);
                rc = -EBUSY;
            }
        }
    }
out:
    pthread_mutex_unlock(&log->control_lock);
    return rc;
}

/* Ring mode, pass 0 with lazy memslots: KVM_MEM_LOG_DIRTY_PAGES on for
 * every memslot of [first_page, first_page + count) that is not logging
 * yet, before anything reads its pages. The migration thread. */
static int enable_slots_for_range(struct dirty_log *log, uint64_t first_page, uint64_t count)
{
    uint64_t page = first_page, end = first_page + count;
    while (page < end) {
        if (page >= log->lazy_cache_first && page < log->lazy_cache_end) {
            page = log->lazy_cache_end;
            continue;
        }
        unsigned index = log->slots.count;
        for (unsigned i = 0; i < log->slots.count; i++)
            if (page >= log->slots.e[i].first_page && page - log->slots.e[i].first_page < log->slots.e[i].pages) {
                index = i;
                break;
            }
        if (index == log->slots.count)
            return 0;               /* not RAM: nothing logs it */
        if (!atomic_load_explicit(&log->slot_logging[index], memory_order_acquire)) {
            pthread_mutex_lock(&log->control_lock);
            int rc = 0;
            if (atomic_load_explicit(&log->tracking, memory_order_relaxed))
                rc = enable_slot_locked(log, index);
            pthread_mutex_unlock(&log->control_lock);
            if (rc < 0)
                return rc;
        }
        log->lazy_cache_first = log->slots.e[index].first_page;
        log->lazy_cache_end = log->slots.e[index].first_page + log->slots.e[index].pages;
        page = log->lazy_cache_end;
    }
    return 0;
}

int dirty_log_protect_before_send(struct dirty_log *log, uint64_t first_page, uint64_t count)
{
    if (!log || count == 0)
        return 0;
    if (log->config.mode == DIRTY_LOG_RING && atomic_load_explicit(&log->lazy_slots, memory_order_acquire) &&
        (atomic_load_explicit(&log->holders, memory_order_acquire) & DIRTY_LOG_HOLDER_MIGRATION) &&
        !atomic_load_explicit(&log->final_synced, memory_order_acquire))
        return enable_slots_for_range(log, first_page, count);
    if (log->config.mode != DIRTY_LOG_BITMAP || !log->bitmap_ready)
        return 0;
    /* Only a migration's hold CLEARs late; after the final sync nothing is
     * CLEARed (the source never runs the guest again unless the migration
     * fails, and then the migration's tracking is released). */
    if (!(atomic_load_explicit(&log->holders, memory_order_acquire) & DIRTY_LOG_HOLDER_MIGRATION) ||
        atomic_load_explicit(&log->final_synced, memory_order_acquire))
        return 0;
    return bitmap_log_protect(&log->bitmap, first_page, count);
}

int dirty_log_protect_pages(struct dirty_log *log, const uint64_t *pages, uint64_t count)
{
    if (!log || count == 0)
        return 0;
    if (log->config.mode != DIRTY_LOG_RING || !atomic_load_explicit(&log->late_reset, memory_order_acquire) ||
        atomic_load_explicit(&log->final_synced, memory_order_acquire))
        return 0;
    /* Each page's last harvested entry (vcpu_ring.h): one harvested before
     * the last take and not flagged yet leaves the page writable with
     * nothing newer to log it, so it is flagged, with every entry before
     * it in its ring (KVM recycles a flagged prefix only). One entry per
     * ring, the furthest any page needs, then one reset for all. */
    uint64_t ram_pages = guest_memory_pages(log->memory);
    bool any = false;
    for (uint64_t i = 0; i < count; i++) {
        if (pages[i] >= ram_pages)
            continue;
        uint64_t entry = atomic_load_explicit(&log->page_entries[pages[i]], memory_order_acquire);
        if (entry == 0)
            continue;
        unsigned v = (unsigned)(entry >> 32) - 1;
        uint32_t position = (uint32_t)entry;
        if (v >= log->vcpu_count || !log->rings[v] || !vcpu_ring_entry_needs_reset(log->rings[v], position))
            continue;
        /* Flagged already by a thread whose reset may not have run yet:
         * the reset below recycles it either way (forced, after any reset
         * in progress: the resetter's lock). */
        any = true;
        if (!vcpu_ring_entry_needs_flag(log->rings[v], position))
            continue;
        if (!log->protect_needed[v] || (int32_t)(position + 1 - log->protect_end[v]) > 0)
            log->protect_end[v] = position + 1;
        log->protect_needed[v] = true;
    }
    atomic_fetch_add_explicit(&log->late_protect_calls, 1, memory_order_relaxed);
    if (!any)
        return 0;
    uint64_t flagged = 0;
    for (unsigned v = 0; v < log->vcpu_count; v++) {
        if (!log->protect_needed[v])
            continue;
        log->protect_needed[v] = false;
        flagged += vcpu_ring_flag_until(log->rings[v], log->protect_end[v]);
    }
    atomic_fetch_add_explicit(&log->late_flagged, flagged, memory_order_relaxed);
    int64_t r = ring_resetter_reset(&log->resetter, true);
    if (r < 0)
        return (int)r;
    atomic_fetch_add_explicit(&log->late_resets, 1, memory_order_relaxed);
    return 0;
}

uint64_t dirty_log_protect_unit_pages(const struct dirty_log *log)
{
    if (log && log->config.mode == DIRTY_LOG_RING)
        return log->slot_logging && log->slots.count > 1 ? log->slots.e[0].pages : 0;
    if (!log || log->config.mode != DIRTY_LOG_BITMAP)
        return 0;
    return log->config.bitmap_clear_chunk_bytes / 4096;
}

void dirty_log_mark_range(struct dirty_log *log, uint64_t ram_offset, uint64_t len)
{
    if (!log || !len || !atomic_load_explicit(&log->tracking, memory_order_acquire) || !log->set)
        return;
    uint64_t first = ram_offset / 4096, last = (ram_offset + len - 1) / 4096;
    dirty_set_mark_range(log->set, 0, first, last - first + 1);
    atomic_fetch_add_explicit(&log->vmm_marked, last - first + 1, memory_order_relaxed);
}

void dirty_log_get_stats(struct dirty_log *log, struct dirty_log_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->mode = DIRTY_LOG_OFF;
    out->now_ns = monotonic_now_ns();
    if (!log)
        return;
    out->mode = log->config.mode;
    out->holders = atomic_load_explicit(&log->holders, memory_order_acquire);
    out->tracking = out->holders != 0;
    out->ring_entries = log->ring_bytes / sizeof(struct kvm_dirty_gfn);
    out->vcpu_count = log->vcpu_count;
    out->vcpu_stats_count = log->vcpu_count < DIRTY_LOG_STATS_MAX_VCPUS
        ? log->vcpu_count : DIRTY_LOG_STATS_MAX_VCPUS;

    /* The harvester group is replaced by start/stop under control_lock; a
     * controller may hold it for milliseconds (memslot updates, joins), so
     * fall back to the last values instead of waiting. */
    if (pthread_mutex_trylock(&log->control_lock) == 0) {
        uint64_t cpu = 0, polls = 0;
        if (log->config.mode == DIRTY_LOG_RING) {
            cpu = harvester_group_cpu_ns(&log->harvesters);
            polls = harvester_group_polls(&log->harvesters);
        } else if (log->bitmap_ready) {
            cpu = bitmap_log_sync_cpu_ns(&log->bitmap);
        }
        atomic_store_explicit(&log->cached_cpu_ns, cpu, memory_order_relaxed);
        atomic_store_explicit(&log->cached_polls, polls, memory_order_relaxed);
        atomic_store_explicit(&log->cached_harvesters, log->harvesters.count, memory_order_relaxed);
        pthread_mutex_unlock(&log->control_lock);
    }
    out->harvester_cpu_ns = atomic_load_explicit(&log->cached_cpu_ns, memory_order_relaxed);
    out->harvest_polls = atomic_load_explicit(&log->cached_polls, memory_order_relaxed);
    out->harvesters = atomic_load_explicit(&log->cached_harvesters, memory_order_relaxed);

    if (log->config.mode == DIRTY_LOG_RING) {
        for (unsigned i = 0; i < log->vcpu_count; i++) {
            struct vcpu_ring *vr = log->rings[i];
            if (!vr)
                continue;
            struct dirty_log_vcpu_stats v = {
                .pages = atomic_load_explicit(&vr->harvested, memory_order_relaxed),
                .ring_fill = vcpu_ring_fill(vr),
                .ring_fill_high_water = atomic_load_explicit(&vr->fill_high_water, memory_order_relaxed),
                .ring_full_exits = atomic_load_explicit(&vr->full_exits, memory_order_relaxed),
                .ring_full_empty = atomic_load_explicit(&vr->full_exits_empty, memory_order_relaxed),
                .batches = atomic_load_explicit(&vr->batches, memory_order_relaxed),
            };
            rate_history_rates(&vr->rate, &v.pages_per_s_100ms, &v.pages_per_s_1s);
            if (i < DIRTY_LOG_STATS_MAX_VCPUS)
                out->vcpu[i] = v;
            out->pages += v.pages;
            out->pages_per_s_100ms += v.pages_per_s_100ms;
            out->pages_per_s_1s += v.pages_per_s_1s;
            out->harvest_batches += v.batches;
            out->ring_full_exits += v.ring_full_exits;
            out->ring_overflows += v.ring_full_empty;
            if (v.ring_fill_high_water > out->ring_fill_high_water)
                out->ring_fill_high_water = v.ring_fill_high_water;
            out->bad_entries += atomic_load_explicit(&vr->bad_entries, memory_order_relaxed);
            out->ring_unflagged += atomic_load_explicit(&vr->unflagged, memory_order_relaxed);
        }
        out->ring_late_reset = atomic_load_explicit(&log->late_reset, memory_order_relaxed);
        out->kvm_slots = log->slots.count;
        out->kvm_slots_logging = 0;
        for (unsigned i = 0; log->slot_logging && i < log->slots.count; i++)
            out->kvm_slots_logging += atomic_load_explicit(&log->slot_logging[i], memory_order_relaxed);
        out->kvm_slot_enables = atomic_load_explicit(&log->slot_enables, memory_order_relaxed);
        out->late_protect_calls = atomic_load_explicit(&log->late_protect_calls, memory_order_relaxed);
        out->late_flagged = atomic_load_explicit(&log->late_flagged, memory_order_relaxed);
        out->late_resets = atomic_load_explicit(&log->late_resets, memory_order_relaxed);
        out->resets = atomic_load_explicit(&log->resetter.resets, memory_order_relaxed);
        out->harvester_resets = atomic_load_explicit(&log->resetter.harvester_resets, memory_order_relaxed);
        out->reset_entries = atomic_load_explicit(&log->resetter.reset_entries, memory_order_relaxed);
        out->reset_ns_total = atomic_load_explicit(&log->resetter.reset_ns_total, memory_order_relaxed);
        out->reset_ns_max = atomic_load_explicit(&log->resetter.reset_ns_max, memory_order_relaxed);
    } else if (log->bitmap_ready) {
        out->pages = atomic_load_explicit(&log->bitmap.pages, memory_order_relaxed);
        out->bitmap_syncs = atomic_load_explicit(&log->bitmap.syncs, memory_order_relaxed);
        out->bitmap_sync_ns_total = atomic_load_explicit(&log->bitmap.sync_ns_total, memory_order_relaxed);
        out->bitmap_sync_ns_last = atomic_load_explicit(&log->bitmap.sync_ns_last, memory_order_relaxed);
        out->bitmap_get_ns_last = atomic_load_explicit(&log->bitmap.get_ns_last, memory_order_relaxed);
        out->bitmap_clear_ns_last = atomic_load_explicit(&log->bitmap.clear_ns_last, memory_order_relaxed);
        out->bitmap_clear_ns_total = atomic_load_explicit(&log->bitmap.clear_ns_total, memory_order_relaxed);
        out->bitmap_gets = atomic_load_explicit(&log->bitmap.gets, memory_order_relaxed);
        out->bitmap_clears = atomic_load_explicit(&log->bitmap.clears, memory_order_relaxed);
        out->bitmap_cleared_pages = atomic_load_explicit(&log->bitmap.cleared_pages, memory_order_relaxed);
        out->bitmap_uncleared_pages = atomic_load_explicit(&log->bitmap.uncleared_pages, memory_order_relaxed);
        out->bitmap_clear_chunk_pages = log->bitmap.chunk_pages;
        /* No per-vCPU attribution with a bitmap: VM rate from our own
         * samples (one per get_stats call at most every 100 ms). */
        rate_history_sample(&log->vm_rate, out->now_ns, out->pages);
        rate_history_rates(&log->vm_rate, &out->pages_per_s_100ms, &out->pages_per_s_1s);
    }
    out->takes = atomic_load_explicit(&log->takes, memory_order_relaxed);
    out->tracking_starts = atomic_load_explicit(&log->tracking_starts, memory_order_relaxed);
    out->take_ns_last = atomic_load_explicit(&log->take_ns_last, memory_order_relaxed);
    out->take_pages_last = atomic_load_explicit(&log->take_pages_last, memory_order_relaxed);
    out->take_collect_ns_last = atomic_load_explicit(&log->take_collect_ns_last, memory_order_relaxed);
    out->take_reset_ns_last = atomic_load_explicit(&log->take_reset_ns_last, memory_order_relaxed);
    out->vmm_marked_pages = atomic_load_explicit(&log->vmm_marked, memory_order_relaxed);
}

static void human(double v, char *buf, size_t size)
{
    if (v >= 1e6)
        snprintf(buf, size, "%.2fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, size, "%.1fk", v / 1e3);
    else
        snprintf(buf, size, "%.0f", v);
}

int dirty_log_format_stats(const struct dirty_log_stats *s, const struct dirty_log_stats *prev,
                           char *buf, size_t size)
{
    if (s->mode == DIRTY_LOG_OFF)
        return snprintf(buf, size, "dirty=off");
    double dt = prev && s->now_ns > prev->now_ns ? (double)(s->now_ns - prev->now_ns) / 1e9 : 0;
    char rate[32];
    double pages_per_s = s->pages_per_s_1s;
    if (dt > 0)
        pages_per_s = (double)(s->pages - prev->pages) / dt;
    human(pages_per_s, rate, sizeof(rate));
    double cpu_pct = dt > 0 ? (double)(s->harvester_cpu_ns - prev->harvester_cpu_ns) / (dt * 1e7) : 0;
    if (s->mode == DIRTY_LOG_BITMAP) {
        uint64_t syncs = s->bitmap_syncs - (prev ? prev->bitmap_syncs : 0);
        uint64_t clears = s->bitmap_clears - (prev ? prev->bitmap_clears : 0);
        uint64_t cleared = s->bitmap_cleared_pages - (prev ? prev->bitmap_cleared_pages : 0);
        return snprintf(buf, size, "dirty=bitmap %s %s/s syncs=%llu(%.2fms) clears=%llu(%llu pages) scpu=%.1f%%",
                        s->tracking ? "on" : "off", rate, (unsigned long long)syncs,
                        (double)s->bitmap_sync_ns_last / 1e6, (unsigned long long)clears,
                        (unsigned long long)cleared, cpu_pct);
    }
    uint64_t resets = s->resets - (prev ? prev->resets : 0);
    uint64_t reset_ns = s->reset_ns_total - (prev ? prev->reset_ns_total : 0);
    unsigned fill_pct = s->ring_entries
        ? (unsigned)(s->ring_fill_high_water * 100 / s->ring_entries) : 0;
    return snprintf(buf, size,
                    "dirty=ring %s %s/s fill-hw=%u%% full=%llu ovf=%llu resets=%llu(%.2fms) hcpu=%.1f%%",
                    s->tracking ? "on" : "off", rate, fill_pct,
                    (unsigned long long)s->ring_full_exits, (unsigned long long)s->ring_overflows,
                    (unsigned long long)resets, resets ? (double)reset_ns / (double)resets / 1e6 : 0.0,
                    cpu_pct);
}
