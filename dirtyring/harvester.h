/*
 * Harvester threads ("harvest<N>"): each owns a fixed set of vCPU rings,
 * polls them adaptively, moves dirty entries into the dirty set, and
 * decides when to call KVM_RESET_DIRTY_RINGS (the reset policy).
 *
 * Reset policy (the performance lever, see docs/benchmarks.md ("Dirty tracking")):
 * every reset write-protects again every page it recycles, so the guest's
 * next write to each of them faults. We reset only when a ring needs the
 * space back: when one owned ring holds reset_threshold harvested but
 * unrecycled entries, or when entries have waited reset_max_delay_ns. The
 * threshold leaves (ring size - threshold - 64) entries of headroom before
 * the kernel's soft-full exit; the poll interval keeps each poll's batch
 * around 1/8 of the ring, so a ring never approaches full while its
 * harvester is running.
 *
 * Placement: a harvester's thread runs on the NUMA node of its vCPUs
 * (numa_run_on_node) and its struct, including the ring list, is allocated
 * there (numa_alloc_onnode). Rings whose vCPU has no node (-1) go to
 * harvesters without placement.
 *
 * Ownership / threads:
 *   - struct harvester: allocated and freed by the thread calling
 *     harvester_group_start/stop (dirty_log_start/stop, under the facade's
 *     control lock). rings[], policy, numa_node: immutable while running.
 *   - stop: under lock (with cond for prompt wake-up).
 *   - interval_ns, pending_since_ns, last_sample_ns: harvester thread only.
 *   - counters: atomics, written by the harvester thread, read by anyone.
 */
#ifndef RINGVM_DIRTYRING_HARVESTER_H
#define RINGVM_DIRTYRING_HARVESTER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct vcpu_ring;
struct ring_resetter;

struct harvest_policy {
    uint32_t reset_threshold;       /* entries unrecycled in one ring; 0 = reset after every non-empty poll */
    uint64_t reset_max_delay_ns;    /* 0 = no time trigger */
    uint64_t poll_min_ns;
    uint64_t poll_max_ns;
};

struct harvester {
    unsigned index;
    int numa_node;
    struct ring_resetter *resetter;
    struct harvest_policy policy;
    pthread_t thread;
    bool started;
    clockid_t cpu_clock;
    bool cpu_clock_valid;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;

    /* harvester thread only */
    uint64_t interval_ns;
    uint64_t pending_since_ns;
    uint64_t last_sample_ns;

    _Atomic uint64_t polls;
    _Atomic uint64_t busy_polls;    /* polls that harvested >= 1 entry */
    _Atomic uint64_t cpu_ns_at_exit;

    size_t alloc_size;
    unsigned ring_count;
    struct vcpu_ring *rings[];
};

/* Owned by the facade; start/stop/cpu_ns under its control lock. */
struct harvester_group {
    unsigned count;
    struct harvester **harvesters;
    uint64_t retired_cpu_ns;        /* CPU time of stopped harvesters */
    uint64_t retired_polls;
};

/* Places rings on harvesters and starts the threads. harvesters == 0: one
 * per distinct NUMA node of the rings. Returns 0 or -errno (message
 * printed); on failure nothing is left running. */
int harvester_group_start(struct harvester_group *group, struct vcpu_ring *const *rings,
                          unsigned ring_count, unsigned harvesters,
                          const struct harvest_policy *policy, struct ring_resetter *resetter);
void harvester_group_stop(struct harvester_group *group);
/* CPU time of all harvesters, running and retired (ns). */
uint64_t harvester_group_cpu_ns(const struct harvester_group *group);
uint64_t harvester_group_polls(const struct harvester_group *group);

#endif
