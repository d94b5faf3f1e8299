/*
 * vm.dirty-stats: per-vCPU dirty rates and ring health, harvester totals,
 * from dirtyring's dirty_log_get_stats (any thread, non-blocking: runs on
 * the epoll thread). Kept in its own file: it follows that struct.
 */
#include <stdlib.h>
#include <string.h>

#include "api/commands.h"
#include "vmm/vm.h"

static enum api_status cmd_vm_dirty_stats(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    if (!vm->dirty_log)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "dirty logging is off (--dirty-log %s)",
                             dirty_log_mode_name(vm->config.dirty_log.mode));
    struct dirty_log_stats *s = calloc(1, sizeof(*s));
    if (!s)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    dirty_log_get_stats(vm->dirty_log, s);
    json_t *vcpus = json_array();
    for (unsigned i = 0; vcpus && i < s->vcpu_stats_count; i++) {
        const struct dirty_log_vcpu_stats *v = &s->vcpu[i];
        json_array_append_new(
            vcpus, json_pack("{s:i, s:I, s:f, s:f, s:i, s:i, s:f, s:I, s:I, s:I}",
                             "vcpu", (int)i,
                             "pages", (json_int_t)v->pages,
                             "pages_per_s_100ms", v->pages_per_s_100ms,
                             "pages_per_s_1s", v->pages_per_s_1s,
                             "ring_fill", (int)v->ring_fill,
                             "ring_fill_high_water", (int)v->ring_fill_high_water,
                             "ring_fill_high_water_pct",
                             s->ring_entries ? 100.0 * v->ring_fill_high_water / s->ring_entries : 0.0,
                             "ring_full_exits", (json_int_t)v->ring_full_exits,
                             "ring_overflows", (json_int_t)v->ring_full_empty,
                             "batches", (json_int_t)v->batches));
    }
    json_t *harvester = json_pack(
        "{s:i, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:I, s:I}",
        "threads", (int)s->harvesters,
        "batches", (json_int_t)s->harvest_batches,
        "polls", (json_int_t)s->harvest_polls,
        "resets", (json_int_t)s->resets,
        "reset_entries", (json_int_t)s->reset_entries,
        "reset_ms_total", (double)s->reset_ns_total / 1e6,
        "reset_ms_max", (double)s->reset_ns_max / 1e6,
        "cpu_ms", (double)s->harvester_cpu_ns / 1e6,
        "bad_entries", (json_int_t)s->bad_entries,
        "bitmap_syncs", (json_int_t)s->bitmap_syncs);
    json_t *result = json_pack(
        "{s:s, s:b, s:i, s:i, s:I, s:f, s:f, s:I, s:I, s:I, s:I, s:o, s:o}",
        "mode", dirty_log_mode_name(s->mode),
        "tracking", s->tracking,
        "ring_entries", (int)s->ring_entries,
        "vcpu_count", (int)s->vcpu_count,
        "pages", (json_int_t)s->pages,
        "pages_per_s_100ms", s->pages_per_s_100ms,
        "pages_per_s_1s", s->pages_per_s_1s,
        "ring_full_exits", (json_int_t)s->ring_full_exits,
        "ring_overflows", (json_int_t)s->ring_overflows,
        "ring_fill_high_water", (json_int_t)s->ring_fill_high_water,
        "vmm_marked_pages", (json_int_t)s->vmm_marked_pages,
        "harvester", harvester ? harvester : json_null(),
        "vcpus", vcpus ? vcpus : json_null());
    free(s);
    if (!result)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    return api_call_ok(call, result);
}

static const struct api_command commands[] = {
    {"vm.dirty-stats", cmd_vm_dirty_stats, 0, NULL,
     "per-vCPU dirty pages/s (100 ms, 1 s), ring fill high-water, full exits; harvester totals"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_dirty_stats = {commands};
