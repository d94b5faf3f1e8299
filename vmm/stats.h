/*
 * The --stats line: guest pages/s per vCPU from the guest's own counters,
 * computed from deltas between two samples. Owned by the thread printing.
 */
#ifndef RINGVM_VMM_STATS_H
#define RINGVM_VMM_STATS_H

#include <stdint.h>
#include <stdio.h>

#include "vmm/vm.h"

struct stats_sampler {
    struct vm *vm;
    uint64_t last_ns;
    uint64_t started_ns;
    uint64_t last_pages[RINGVM_MAX_VCPUS];
    struct dirty_log_stats last_dirty;
};

void stats_sampler_init(struct stats_sampler *sampler, struct vm *vm);
/* Fills rates[] (pages/s per vCPU since the last sample); returns the total. */
uint64_t stats_sample_rates(struct stats_sampler *sampler, uint64_t *rates);
void stats_print_line(struct stats_sampler *sampler, FILE *out);

#endif
