/*
 * One vCPU: its KVM fd, the mmapped kvm_run, and the thread that loops in
 * KVM_RUN and handles exits.
 *
 * Ownership:
 *   - fd, run, index, vm: set by vm_create, immutable afterwards.
 *   - Everything under "vCPU thread only" is touched by that thread alone.
 *   - pause_requested / throttle_percent / kick bookkeeping are atomics
 *     written by controllers (vm_pause, migration) and read by the thread.
 *   - Counters are atomics written by the vCPU thread, read by anyone
 *     (stats, API) with relaxed loads.
 */
#ifndef RINGVM_VMM_VCPU_H
#define RINGVM_VMM_VCPU_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <linux/kvm.h>

struct vm;

#define VCPU_KICK_LATENCY_BUCKETS 48

struct vcpu_counters {
    _Atomic uint64_t exits_total;
    _Atomic uint64_t exits_io;
    _Atomic uint64_t exits_mmio;
    _Atomic uint64_t exits_hlt;
    _Atomic uint64_t exits_intr;            /* KVM_RUN returned EINTR (kicks) */
    _Atomic uint64_t exits_dirty_ring_full;
    _Atomic uint64_t kicks_sent;            /* signals sent to this vCPU */
    _Atomic uint64_t kvmclock_stop_notices; /* KVM_KVMCLOCK_CTRL accepted on a resume (Linux guests) */
    _Atomic uint64_t throttle_sleeps;
    _Atomic uint64_t throttle_sleep_ns;
    _Atomic uint64_t throttle_timer_expiries;   /* SI_TIMER deliveries of the kick signal */
    _Atomic uint64_t throttle_timer_fired;      /* armings that expired (seen when the vCPU
                                                   re-arms or disarms the timer): the timer
                                                   kicks sent, whether or not delivered yet */
    /* The VMM's own kick latency: vcpu_kick() to KVM_RUN returning EINTR,
     * log2 buckets in ns (bucket b holds [2^b, 2^(b+1)), bucket 0 also 0..1),
     * the same bounds as the BPF histograms so the two can be compared. */
    _Atomic uint64_t kick_latency_count;
    _Atomic uint64_t kick_latency_sum_ns;
    _Atomic uint64_t kick_latency_buckets[VCPU_KICK_LATENCY_BUCKETS];
};

struct vcpu {
    struct vm *vm;
    unsigned index;
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    bool thread_started;
    _Atomic int tid;                        /* kernel thread id, set by the thread at start */
    int numa_node;                          /* node the thread runs on, -1 any */

    /* Dirty ring of this vCPU (NULL unless --dirty-log ring); mapped by
     * dirtyring, drained by its harvester and, on ring-full, by this thread. */
    struct kvm_dirty_gfn *dirty_ring;
    uint32_t dirty_ring_entries;

    /* Control: written by controllers, read by the vCPU thread. */
    _Atomic bool pause_requested;
    _Atomic bool paused;                    /* ack: thread is parked outside KVM_RUN */
    _Atomic int throttle_percent;           /* 0..99 */
    _Atomic uint64_t kick_sent_ns;          /* CLOCK_MONOTONIC of the last kick */

    /* Last RINGVM_CMD_PHASE from the guest; written by the vCPU thread. */
    _Atomic int guest_phase_published;

    /* vCPU thread only. */
    bool stopped;                           /* reported exception / fatal: no more KVM_RUN */
    int guest_phase;                        /* enum ringvm_vcpu_phase */
    timer_t throttle_timer;
    bool throttle_timer_armed;

    struct vcpu_counters counters;
};

/* Per-vCPU throttling (QEMU cpu-throttle semantics): with percent P > 0 the
 * vCPU runs a 10 ms timeslice then sleeps 10 ms * P / (100 - P).
 * Any thread may call it; takes effect at the next timeslice. */
void vcpu_set_throttle(struct vcpu *vcpu, int percent);
int vcpu_get_throttle(const struct vcpu *vcpu);

/* Sends the kick signal to the vCPU thread (sets immediate_exit first). */
void vcpu_kick(struct vcpu *vcpu);

/* Internal to vmm/: the thread body. */
void *vcpu_thread_main(void *arg);

#endif
