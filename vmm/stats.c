/* The --stats line. */
#include "vmm/stats.h"

#include <inttypes.h>
#include <string.h>

void stats_sampler_init(struct stats_sampler *sampler, struct vm *vm)
{
    memset(sampler, 0, sizeof(*sampler));
    sampler->vm = vm;
    sampler->started_ns = sampler->last_ns = vm_now_ns();
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        struct ringvm_vcpu_stats stats;
        vm_read_guest_stats(vm, i, &stats);
        sampler->last_pages[i] = stats.pages_written;
    }
    dirty_log_get_stats(vm->dirty_log, &sampler->last_dirty);
}

uint64_t stats_sample_rates(struct stats_sampler *sampler, uint64_t *rates)
{
    uint64_t now = vm_now_ns();
    uint64_t elapsed = now - sampler->last_ns;
    uint64_t total = 0;
    for (unsigned i = 0; i < sampler->vm->config.vcpu_count; i++) {
        struct ringvm_vcpu_stats stats;
        vm_read_guest_stats(sampler->vm, i, &stats);
        uint64_t delta = stats.pages_written - sampler->last_pages[i];
        sampler->last_pages[i] = stats.pages_written;
        rates[i] = elapsed == 0 ? 0 : (uint64_t)((double)delta * 1e9 / (double)elapsed);
        total += rates[i];
    }
    sampler->last_ns = now;
    return total;
}

void stats_print_line(struct stats_sampler *sampler, FILE *out)
{
    uint64_t rates[RINGVM_MAX_VCPUS];
    uint64_t total = stats_sample_rates(sampler, rates);
    char line[2048];
    size_t used = (size_t)snprintf(line, sizeof(line), "stats: t=%" PRIu64 "s guest pages/s:",
                                   (uint64_t)((sampler->last_ns - sampler->started_ns + 500000000ULL) / 1000000000ULL));
    for (unsigned i = 0; i < sampler->vm->config.vcpu_count && used < sizeof(line); i++)
        used += (size_t)snprintf(line + used, sizeof(line) - used, " vcpu%u=%" PRIu64, i, rates[i]);
    if (used < sizeof(line))
        used += (size_t)snprintf(line + used, sizeof(line) - used, " total=%" PRIu64, total);
    if (sampler->vm->dirty_log != NULL && used + 2 < sizeof(line)) {
        struct dirty_log_stats dirty;
        dirty_log_get_stats(sampler->vm->dirty_log, &dirty);
        line[used++] = ' ';
        dirty_log_format_stats(&dirty, &sampler->last_dirty, line + used, sizeof(line) - used);
        sampler->last_dirty = dirty;
    }
    fprintf(out, "%s\n", line);
    fflush(out);
}
