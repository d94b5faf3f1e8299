/*
 * The built-in guest's workloads (idle, dirtier, ledger) in Linux user
 * space: one thread per vCPU, pinned, each on its own share of the working
 * set, with the same page order (guest/page_walk.h), pacing
 * (guest/pacing.h), ledger records and checksums (guest/abi.h), console
 * lines and counters as guest/dirtier.c, guest/ledger.c and guest/ring3.c.
 */
#ifndef RINGVM_LINUX_WORKLOAD_RUNNER_H
#define RINGVM_LINUX_WORKLOAD_RUNNER_H

#include <stdbool.h>
#include <stdint.h>

#include "guest/linux/workload/channel.h"
#include "vmm/workload.h"

struct linux_runner_config {
    struct workload_spec spec;  /* idle, dirtier or ledger */
    unsigned threads;           /* 1..RINGVM_MAX_VCPUS; thread N reports as vcpu=N */
    unsigned seconds;           /* stop after this long; 0 = until the workload ends */
    uint64_t tsc_khz;           /* TSC frequency for pacing and verify periods, > 0 */
    const struct linux_channel *channel;    /* may be absent (not present) */
    /* A `CLOCK mono_ns=N` line at every whole multiple of clock_period_ms
     * (1000 by default) of CLOCK_MONOTONIC, from an extra, unpinned thread
     * (--clock-lines[=MS]). */
    bool clock_lines;
    unsigned clock_period_ms;   /* 10..60000 */
    /* --wss-at: the working set is guest-physical memory from wss_phys on
     * (page-aligned; 0 = anonymous memory), mapped through memory_path,
     * thread N's pages after thread N-1's. The kernel must not use that
     * RAM (memmap=SIZE$PHYS on its command line): no page faults, no
     * zeroing, where the guest kernel's own work is expensive (README). */
    uint64_t wss_phys;
    const char *memory_path;
    /* --stats-at without a channel: `threads` stats slots, RINGVM_STATS_SLOT_SIZE
     * apart, in mapped guest-physical memory (NULL: none). Thread N writes
     * slot N as it would the channel's; the channel's slots win when present. */
    volatile struct ringvm_vcpu_stats *stats_slots;
    /* Test hook (RINGVM_WORKLOAD_TEST_CORRUPT): after thread corrupt_vcpu's
     * first verify pass, flip bit 7 of the low byte of the generation in
     * page corrupt_page's record, as a lost write would leave it. */
    bool corrupt;
    unsigned corrupt_vcpu;
    uint64_t corrupt_page;
};

/* Runs the workload until it ends (dirtier with count: every thread done;
 * ledger with count and verify=0: likewise; otherwise never) or until
 * config->seconds pass. Returns the exit status: 0, or 1 when a ledger
 * found a mismatch or a thread could not run (message on stderr). */
int linux_runner_run(const struct linux_runner_config *config);

/* Pages of thread `thread` of `threads` for a working set of wss_bytes:
 * the split of vmm/bootinfo.c (the first pages % threads get one more). */
uint64_t linux_runner_thread_pages(uint64_t wss_bytes, unsigned threads, unsigned thread);

/* TSC ticks per millisecond measured against CLOCK_MONOTONIC over 50 ms. */
uint64_t linux_runner_calibrate_tsc_khz(void);

#endif
