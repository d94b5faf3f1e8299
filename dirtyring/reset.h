/*
 * KVM_RESET_DIRTY_RINGS with bookkeeping. The ioctl is VM-wide: it recycles
 * every RESET-flagged entry of every vCPU ring (re-write-protecting those
 * pages), so all resetters (harvesters, vCPU threads on ring-full, take,
 * final sync) share one struct ring_resetter.
 *
 * Ownership / threads:
 *   - vm_fd, rings[] (slots filled by dirty_log_attach_vcpu before the vCPUs
 *     run; atomic pointers), ring_count: fixed after creation.
 *   - lock serializes resetters so the "unreset" accounting of each ring
 *     stays exact: snapshot every ring's unreset (acquire), ioctl, subtract
 *     the snapshots. Entries flagged after the snapshot may have been
 *     recycled too; they stay counted until the next reset (an overestimate
 *     of ring fill, never an underestimate).
 *   - statistics: atomics, written under lock, read by anyone.
 */
#ifndef RINGVM_DIRTYRING_RESET_H
#define RINGVM_DIRTYRING_RESET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct vcpu_ring;

struct ring_resetter {
    int vm_fd;
    unsigned ring_count;
    struct vcpu_ring *_Atomic *rings;
    uint32_t *snapshot;             /* under lock */
    uint32_t *flag_snapshot;        /* under lock: each ring's flag_index before the ioctl */
    pthread_mutex_t lock;

    _Atomic uint64_t resets;        /* ioctls issued */
    _Atomic uint64_t reset_entries; /* sum of the ioctl's return values */
    _Atomic uint64_t reset_requested; /* sum of the snapshots (what we flagged) */
    _Atomic uint64_t reset_ns_total;
    _Atomic uint64_t reset_ns_max;
    _Atomic uint64_t failures;
    /* The source paused the guest for its switch-over (dirty_log_final_sync):
     * re-protecting pages now is work on the downtime path for nothing,
     * since the guest never runs here again unless the migration fails (and
     * then the migration's tracking is released, which resumes resets).
     * While set, only forced resets (a running vCPU's ring-full exit) issue
     * the ioctl. Written under the dirty log's control_lock, read by any
     * resetter. */
    _Atomic bool suspended;
    /* Resets a harvester's policy issued (a ring past its threshold or
     * delay), as opposed to a take's or a release's: while a migration
     * runs, each means the rings recycled entries before the migration took
     * them (issue 15, item 4). Incremented by the harvesters, read by any. */
    _Atomic uint64_t harvester_resets;
};

int ring_resetter_init(struct ring_resetter *r, int vm_fd, unsigned ring_count);
void ring_resetter_fini(struct ring_resetter *r);
void ring_resetter_set_ring(struct ring_resetter *r, unsigned index, struct vcpu_ring *ring);

/* Issues KVM_RESET_DIRTY_RINGS if any ring has unreset entries (or always
 * with force; without force nothing while suspended). Returns the entries the kernel reported reset (>= 0), or
 * -errno with a message on stderr. */
int64_t ring_resetter_reset(struct ring_resetter *r, bool force);

/* See `suspended`; any thread (the dirty log's controller). */
void ring_resetter_suspend(struct ring_resetter *r, bool suspended);

/* Total unreset entries over all rings (relaxed snapshot). */
uint64_t ring_resetter_pending(struct ring_resetter *r);

#endif
