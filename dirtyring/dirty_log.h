/*
 * Dirty logging facade: the one interface the VMM core and migration use,
 * whatever the mode (dirty ring, bitmap, off).
 *
 * Call order from the VMM core (vmm/vm.c):
 *   dirty_log_create()          right after KVM_CREATE_VM, before any vCPU
 *                               (ring mode enables KVM_CAP_DIRTY_LOG_RING[_ACQ_REL],
 *                               bitmap mode KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with
 *                               KVM_DIRTY_LOG_INITIALLY_SET, see bitmap.h).
 *                               Mode off: returns 0 with *out = NULL; every
 *                               function below accepts a NULL log as a no-op.
 *                               The memslots must be registered WITHOUT
 *                               KVM_MEM_LOG_DIRTY_PAGES: dirty_log_start sets it.
 *                               guest_memory must be created (slots known)
 *                               before this call, registered or not.
 *   dirty_log_attach_vcpu()     after each KVM_CREATE_VCPU, vcpu->index and
 *                               vcpu->numa_node set (ring mode mmaps the ring
 *                               and sets vcpu->dirty_ring/dirty_ring_entries)
 *   dirty_log_handle_ring_full()  on the vCPU thread for KVM_EXIT_DIRTY_RING_FULL,
 *                               then KVM_RUN again (it drains this vCPU's ring
 *                               and resets; it never waits for another vCPU)
 *   dirty_log_destroy()         at VM teardown, after vCPU threads are joined
 *
 * Who keeps tracking on: holders. Tracking (slot flags, harvesters) is on
 * while at least one holder holds it; each holder holds and releases only
 * its own bit, so a migration ending never turns off tracking the API asked
 * for, and the reverse:
 *   DIRTY_LOG_HOLDER_MIGRATION  the migration source (migration.c), and any
 *                               single controller using dirty_log_start/stop
 *                               (tests, benches): they are hold/release of
 *                               this holder.
 *   DIRTY_LOG_HOLDER_API        vm.dirty-tracking (api/commands_dirty_stats.c),
 *                               to watch dirty rates outside a migration.
 * dirty_log_hold(MIGRATION) always leaves a fresh session (ring: every
 * page written since tracking began write-protected again, or its entry
 * still to be harvested into the next take; joining the API's tracking it
 * takes and discards a generation instead of restarting, so pages never
 * written stay protected and nothing faults for it; bitmap: every page
 * counts as not yet CLEARed, so each is
 * write-protected by dirty_log_protect_before_send before it is read, and
 * the API's statistics sync thread pauses until the migration releases);
 * holding a bit already held is a no-op; release of a bit not held too.
 *
 * Migration (any one controller thread at a time; they serialize on the
 * facade's control lock):
 *   dirty_log_start()           = dirty_log_hold(MIGRATION): tracking on
 *                               with an empty dirty set, slots get
 *                               KVM_MEM_LOG_DIRTY_PAGES, harvesters start.
 *                               Every page written after it returns is in a
 *                               later take. Send all RAM once after this.
 *   dirty_log_take()            one iteration's dirty pages (generation swap).
 *                               Ring (late reset, the default): nothing is
 *                               re-protected; a page it returns is
 *                               write-protected by dirty_log_protect_pages
 *                               (the entries of its ring up to its own are
 *                               flagged and reset). Ring with
 *                               ring_reset_at_take: every page it returns
 *                               is write-protected before it returns.
 *                               Bitmap: GET only; a page it returns is
 *                               write-protected by
 *                               dirty_log_protect_before_send. Either way a
 *                               guest write after the caller reads the page
 *                               (the caller protecting it before the read)
 *                               shows up in a later take.
 *   dirty_log_take_bitmap()     the same into a bitmap; in ring mode it
 *                               always re-protects what it returns (a
 *                               window of the guest's writes is measured
 *                               with two of them).
 *   dirty_log_protect_before_send()  the migration thread, for every page it
 *                               plans to send (pass 0's too, holes
 *                               included), BEFORE anything reads it
 *                               (zero test, sender copy). Bitmap: CLEARs the
 *                               page's whole chunk (--bitmap-clear-chunk) if
 *                               it has bits not cleared yet; a no-op
 *                               otherwise, for ring mode, outside a
 *                               migration's hold and after the final sync.
 *   dirty_log_protect_pages()   the migration thread, for the pages of a
 *                               take (sorted), a window at a time before
 *                               any of them is read: ring (late reset):
 *                               flags each page's entry if it was harvested
 *                               before the last take and is not flagged,
 *                               with its ring's entries before it, then one
 *                               KVM_RESET_DIRTY_RINGS; nothing in the
 *                               other modes.
 *   dirty_log_final_sync()      vCPUs paused (out of KVM_RUN) by the caller:
 *                               drains every ring to empty / one last bitmap
 *                               GET. Nothing is write-protected from here
 *                               until the migration releases (no CLEAR, no
 *                               KVM_RESET_DIRTY_RINGS: the guest never runs
 *                               here again unless the migration fails, and
 *                               then it releases; a release that leaves the
 *                               API tracking resets then). The following
 *                               dirty_log_take returns every page written
 *                               before the pause, protecting none.
 *   dirty_log_stop()            = dirty_log_release(MIGRATION): tracking off
 *                               (slots lose the flag, rings drained to
 *                               empty, harvesters joined) unless another
 *                               holder still holds it.
 *   dirty_log_mark_range()      pages the VMM itself wrote into guest RAM
 *                               (while tracking; a no-op otherwise).
 *
 * Statistics: dirty_log_get_stats (any thread) + dirty_log_format_stats for
 * the --stats per-second line.
 */
#ifndef RINGVM_DIRTYRING_DIRTY_LOG_H
#define RINGVM_DIRTYRING_DIRTY_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dirtyring/dirty_set.h"    /* struct dirty_pages */

struct guest_memory;
struct vcpu;

enum dirty_log_mode {
    DIRTY_LOG_RING = 0,
    DIRTY_LOG_BITMAP,
    DIRTY_LOG_OFF,
};

/* Chosen with bench/harvest, see docs/benchmarks.md ("Dirty tracking"). */
#define DIRTY_LOG_DEFAULT_RING_ENTRIES 65536
#define DIRTY_LOG_MIN_RING_ENTRIES 64
#define DIRTY_LOG_MAX_RING_ENTRIES 65536
#define DIRTY_LOG_DEFAULT_BITMAP_SYNC_MS 100
/* Bitmap mode's CLEAR chunk: 256 KiB, QEMU's default (clear-bitmap-shift
 * 18); see docs/benchmarks.md for the sizes measured. A multiple of 64
 * pages (KVM_CLEAR_DIRTY_LOG's granularity). */
#define DIRTY_LOG_DEFAULT_BITMAP_CLEAR_CHUNK (256ull << 10)
#define DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK (256ull << 10)
#define DIRTY_LOG_MAX_BITMAP_CLEAR_CHUNK (1ull << 30)
#define DIRTY_LOG_DEFAULT_RESET_THRESHOLD_PCT 75
#define DIRTY_LOG_DEFAULT_RESET_MAX_DELAY_MS 0

struct dirty_log_config {
    enum dirty_log_mode mode;
    uint32_t ring_entries;      /* power of two, 64..65536 (the kernel needs >= 256: one page) */
    unsigned harvesters;        /* 0 = one per NUMA node running vCPUs */
    unsigned bitmap_sync_ms;        /* statistics sync period outside a migration */
    uint64_t bitmap_clear_chunk_bytes;  /* multiple of 256 KiB, up to 1 GiB */
    /* Ring reset policy (benchmarks vary these; defaults from
     * dirty_log_config_defaults): */
    uint32_t reset_threshold_pct;   /* reset when a ring is this % full of harvested
                                       entries; 0 = reset after every non-empty poll */
    uint32_t reset_max_delay_ms;    /* also reset entries older than this; 0 = off */
    bool no_harvester;              /* no harvester threads: harvest only on
                                       ring-full exits and takes (baseline) */
    bool ring_reset_at_take;        /* ring: re-protect a whole generation at
                                       each take (the behaviour before late
                                       reset; --ring-reset take, for the A/B) */
};

struct dirty_log;

void dirty_log_config_defaults(struct dirty_log_config *config);
const char *dirty_log_mode_name(enum dirty_log_mode mode);
/* "ring", "bitmap", "off". Returns 0 or -1 with a message in error. */
int dirty_log_mode_parse(const char *text, enum dirty_log_mode *mode, char *error, size_t error_size);
/* Checks ring_entries/bitmap_sync_ms/...; 0 or -1 with a one-line message
 * (no "ringvm: " prefix), e.g. "--ring-entries 100: not a power of two (64..65536)". */
int dirty_log_config_validate(const struct dirty_log_config *config, char *error, size_t error_size);

int dirty_log_create(struct dirty_log **out, const struct dirty_log_config *config,
                     int kvm_fd, int vm_fd, struct guest_memory *memory, unsigned vcpu_count);
int dirty_log_attach_vcpu(struct dirty_log *log, struct vcpu *vcpu);
void dirty_log_handle_ring_full(struct dirty_log *log, struct vcpu *vcpu);
void dirty_log_destroy(struct dirty_log *log);

enum dirty_log_mode dirty_log_mode(const struct dirty_log *log);    /* OFF for NULL */
/* Some holder holds tracking (any thread). */
bool dirty_log_tracking(const struct dirty_log *log);

enum dirty_log_holder {
    DIRTY_LOG_HOLDER_MIGRATION = 1u << 0,
    DIRTY_LOG_HOLDER_API = 1u << 1,
};
/* ORed into dirty_log_hold(MIGRATION) by a holder that reads every page
 * of RAM (pass 0) and calls dirty_log_protect_before_send before each
 * first read: in ring mode with late reset tracking then starts with no
 * memslot logging, and each is turned on just before that first read in
 * it (or by a take). Without it every memslot logs from the start. */
#define DIRTY_LOG_HOLD_LAZY_MEMSLOTS (1u << 8)
/* The DIRTY_LOG_HOLDER_* bits held now (any thread; 0 for NULL). */
unsigned dirty_log_holders(const struct dirty_log *log);

/* All return 0 or -errno with the cause printed ("ringvm: "...). hold:
 * tracking on for this holder (see the holders above); release: this
 * holder's hold gone, tracking off if it was the last. If hold(MIGRATION)
 * fails while restarting another holder's tracking, tracking is off and
 * no holder holds it. */
int dirty_log_hold(struct dirty_log *log, unsigned holder);
int dirty_log_release(struct dirty_log *log, unsigned holder);
int dirty_log_start(struct dirty_log *log);
int dirty_log_stop(struct dirty_log *log);
/* Appends the iteration's RAM page indices (page = RAM offset / 4096),
 * sorted, to out (dirty_pages_init / dirty_pages_free in dirty_set.h).
 * Returns the number of pages or -errno. */
int64_t dirty_log_take(struct dirty_log *log, struct dirty_pages *out);
/* The same ORed into a caller bitmap of ceil(ram_pages / 64) words. */
int64_t dirty_log_take_bitmap(struct dirty_log *log, uint64_t *bitmap);
int dirty_log_final_sync(struct dirty_log *log);
/* Before the migration reads RAM pages [first_page, first_page + count)
 * (page = RAM offset / 4096) for sending: write-protects what must be
 * (bitmap mode: KVM_CLEAR_DIRTY_LOG of each touched chunk's bits not yet
 * cleared; ring mode in pass 0 with late reset: KVM_MEM_LOG_DIRTY_PAGES on
 * for each touched memslot not logging yet), so a later guest write is in
 * a later take. Cheap when there
 * is nothing to do (one atomic load per chunk). The migration thread;
 * 0 or -errno with the cause printed. */
int dirty_log_protect_before_send(struct dirty_log *log, uint64_t first_page, uint64_t count);
/* Before the migration reads the pages of a take (pages[0..count), any
 * order): ring mode with late reset re-protects those that need it with
 * at most one KVM_RESET_DIRTY_RINGS; a no-op otherwise (bitmap mode
 * protects in dirty_log_protect_before_send, called for each page anyway).
 * The migration thread; 0 or -errno with the cause printed. */
int dirty_log_protect_pages(struct dirty_log *log, const uint64_t *pages, uint64_t count);
/* Pages per protection unit (bitmap: the clear chunk; ring with late
 * reset and several memslots: a memslot); 0 when
 * dirty_log_protect_before_send never does anything (other ring set-ups,
 * off, NULL).
 * Lets pass 0 protect a chunk before it looks for holes in it. */
uint64_t dirty_log_protect_unit_pages(const struct dirty_log *log);
/* RAM byte range [ram_offset, ram_offset + len) written by the VMM. */
void dirty_log_mark_range(struct dirty_log *log, uint64_t ram_offset, uint64_t len);

#define DIRTY_LOG_STATS_MAX_VCPUS 64

struct dirty_log_vcpu_stats {
    uint64_t pages;                 /* ring entries harvested (first writes after a reset) */
    double pages_per_s_100ms;
    double pages_per_s_1s;
    uint32_t ring_fill;             /* harvested, not yet recycled (now) */
    uint32_t ring_fill_high_water;
    uint64_t ring_full_exits;
    uint64_t ring_full_empty;       /* ring-full exits with nothing to harvest: overflow */
    uint64_t batches;
};

/* A plain snapshot: counters are totals since dirty_log_create. */
struct dirty_log_stats {
    enum dirty_log_mode mode;
    bool tracking;                  /* holders != 0 */
    unsigned holders;               /* DIRTY_LOG_HOLDER_* bits */
    uint32_t ring_entries;
    unsigned harvesters;            /* running now */
    unsigned vcpu_count;
    uint64_t now_ns;                /* CLOCK_MONOTONIC of the snapshot */

    uint64_t pages;                 /* ring: entries harvested; bitmap: bits found newly
                                       set (first writes after a CLEAR) */
    double pages_per_s_100ms;       /* whole VM */
    double pages_per_s_1s;
    uint64_t harvest_batches;
    uint64_t harvest_polls;
    uint64_t resets;                /* KVM_RESET_DIRTY_RINGS calls */
    uint64_t harvester_resets;      /* of them: by a harvester's policy (a ring filled
                                       past its threshold between takes: recycling) */
    uint64_t reset_entries;         /* entries the kernel reported recycled */
    uint64_t reset_ns_total;
    uint64_t reset_ns_max;
    bool ring_late_reset;           /* a migration holds tracking with late reset now */
    uint64_t ring_unflagged;        /* now: entries harvested, held back from reset */
    uint64_t late_protect_calls;    /* dirty_log_protect_pages calls that had pages */
    uint64_t late_flagged;          /* entries flagged by them */
    uint64_t late_resets;           /* KVM_RESET_DIRTY_RINGS they issued */
    unsigned kvm_slots;             /* KVM memslots of guest RAM */
    unsigned kvm_slots_logging;     /* now: of them with KVM_MEM_LOG_DIRTY_PAGES (late reset
                                       keeps track of these; 0 without it) */
    uint64_t kvm_slot_enables;      /* memslots turned on one at a time */
    uint64_t ring_full_exits;
    uint64_t ring_overflows;        /* ring-full exits with nothing to harvest */
    uint64_t ring_fill_high_water;  /* max over vCPUs */
    uint64_t bad_entries;
    uint64_t harvester_cpu_ns;      /* harvesters (ring) or the sync thread (bitmap) */
    uint64_t bitmap_syncs;          /* GET passes over all slots (takes, final sync,
                                       statistics syncs) */
    uint64_t bitmap_sync_ns_total;
    uint64_t bitmap_sync_ns_last;
    uint64_t bitmap_get_ns_last;    /* of the last GET pass: GET_DIRTY_LOG + scan */
    uint64_t bitmap_clear_ns_last;  /* of the last CLEAR_DIRTY_LOG call */
    uint64_t bitmap_clear_ns_total;
    uint64_t bitmap_gets;           /* KVM_GET_DIRTY_LOG calls (one per slot per pass) */
    uint64_t bitmap_clears;         /* KVM_CLEAR_DIRTY_LOG calls */
    uint64_t bitmap_cleared_pages;  /* bits handed to CLEAR: pages write-protected again */
    uint64_t bitmap_uncleared_pages;    /* now: bits set that no CLEAR has cleared yet */
    uint64_t bitmap_clear_chunk_pages;
    uint64_t takes;
    uint64_t tracking_starts;       /* times tracking was turned on (slots flagged) */
    uint64_t take_ns_last;
    uint64_t take_pages_last;
    uint64_t take_collect_ns_last;  /* of take_ns_last: draining rings / GET+CLEAR */
    uint64_t take_reset_ns_last;    /* of take_ns_last: KVM_RESET_DIRTY_RINGS (ring) */
    uint64_t vmm_marked_pages;

    unsigned vcpu_stats_count;      /* min(vcpu_count, DIRTY_LOG_STATS_MAX_VCPUS); per-vCPU
                                       figures are ring mode only (zero for bitmap) */
    struct dirty_log_vcpu_stats vcpu[DIRTY_LOG_STATS_MAX_VCPUS];
};

/* Any thread, never blocks (while a controller is inside start/stop/take
 * the harvester CPU/poll/count figures are those of the previous call).
 * Zeroes *out for a NULL log (mode OFF). */
void dirty_log_get_stats(struct dirty_log *log, struct dirty_log_stats *out);

/* One fragment of the --stats line, e.g.
 *   "dirty=ring on 312.4k/s fill-hw=52% full=0 ovf=0 resets=3/s(1.20ms) hcpu=0.8%"
 * prev: the previous snapshot (for per-second figures) or NULL. Returns
 * the length as snprintf does. */
int dirty_log_format_stats(const struct dirty_log_stats *now, const struct dirty_log_stats *prev,
                           char *buf, size_t size);

#endif
