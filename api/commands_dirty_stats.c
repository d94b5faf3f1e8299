/*
 * vm.dirty-stats: per-vCPU dirty rates and ring health, harvester totals,
 * from dirtyring's dirty_log_get_stats (any thread, non-blocking: runs on
 * the epoll thread). Kept in its own file: it follows that struct.
 *
 * vm.dirty-tracking: the API's hold on dirty tracking
 * (DIRTY_LOG_HOLDER_API, dirtyring/dirty_log.h), so dirty-stats shows rates
 * outside a migration. Runs on the worker: turning tracking on or off
 * updates memslots and starts/joins harvester threads, and waits for the
 * dirty log's control lock, which a migration's take holds for a while.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/commands.h"
#include "vmm/vm.h"

/* ["api", "migration"]: who holds tracking on now. */
static json_t *holder_names(unsigned holders)
{
    json_t *names = json_array();
    if (names && (holders & DIRTY_LOG_HOLDER_API))
        json_array_append_new(names, json_string("api"));
    if (names && (holders & DIRTY_LOG_HOLDER_MIGRATION))
        json_array_append_new(names, json_string("migration"));
    return names;
}

/* Both commands need a VM with a dirty log: answers unavailable (and
 * returns false) when there is none. */
static bool have_dirty_log(struct api_call *call, enum api_status *status)
{
    struct vm *vm = call->vm;
    if (!vm)
        *status = api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    else if (!vm->dirty_log)
        *status = api_call_fail(call, API_ERR_UNAVAILABLE, "dirty logging is off (--dirty-log %s)",
                                dirty_log_mode_name(vm->config.dirty_log.mode));
    else
        return true;
    return false;
}

static enum api_status cmd_vm_dirty_stats(struct api_call *call)
{
    enum api_status status;
    if (!have_dirty_log(call, &status))
        return status;
    struct vm *vm = call->vm;
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
    json_t *bitmap = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:f, s:I}",
        "gets", (json_int_t)s->bitmap_gets,
        "clears", (json_int_t)s->bitmap_clears,
        "cleared_pages", (json_int_t)s->bitmap_cleared_pages,
        "uncleared_pages", (json_int_t)s->bitmap_uncleared_pages,
        "clear_chunk_pages", (json_int_t)s->bitmap_clear_chunk_pages,
        "clear_ms_total", (double)s->bitmap_clear_ns_total / 1e6,
        "syncs", (json_int_t)s->bitmap_syncs);
    json_t *late_reset = json_pack(
        "{s:b, s:i, s:i, s:I, s:I, s:I, s:I, s:I}",
        "active", s->ring_late_reset,
        "memslots", (int)s->kvm_slots,
        "memslots_logging", (int)s->kvm_slots_logging,
        "memslots_turned_on", (json_int_t)s->kvm_slot_enables,
        "unflagged", (json_int_t)s->ring_unflagged,
        "protect_calls", (json_int_t)s->late_protect_calls,
        "flagged", (json_int_t)s->late_flagged,
        "resets", (json_int_t)s->late_resets);
    json_t *result = json_pack(
        "{s:s, s:b, s:o, s:i, s:i, s:I, s:f, s:f, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o}",
        "mode", dirty_log_mode_name(s->mode),
        "tracking", s->tracking,
        "tracking_holders", holder_names(s->holders),
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
        "bitmap", bitmap ? bitmap : json_null(),
        "late_reset", late_reset ? late_reset : json_null(),
        "vcpus", vcpus ? vcpus : json_null());
    free(s);
    if (!result)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    return api_call_ok(call, result);
}

static enum api_status cmd_vm_dirty_tracking(struct api_call *call)
{
    enum api_status status;
    if (!have_dirty_log(call, &status))
        return status;
    struct vm *vm = call->vm;
    bool enable;
    struct api_error error;
    if (api_arg_bool(call->args, "enable", false, &enable, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    if (enable) {
        if (atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire))
            return api_call_fail(call, API_ERR_MIGRATION_ACTIVE,
                                 "cannot track dirty pages: this VM is waiting for an incoming migration");
        enum vm_state state = vm_get_state(vm);
        bool stopping = atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire);
        if (stopping || (state != VM_STATE_RUNNING && state != VM_STATE_PAUSED))
            return api_call_fail(call, API_ERR_VM_NOT_RUNNING, "cannot track dirty pages: the VM is %s",
                                 stopping ? "shutting down" : vm_state_name(state));
    }
    bool held = (dirty_log_holders(vm->dirty_log) & DIRTY_LOG_HOLDER_API) != 0;
    int rc = enable ? dirty_log_hold(vm->dirty_log, DIRTY_LOG_HOLDER_API)
                    : dirty_log_release(vm->dirty_log, DIRTY_LOG_HOLDER_API);
    if (rc < 0)
        return api_call_fail(call, API_ERR_INTERNAL, "%s dirty tracking: %s",
                             enable ? "starting" : "stopping", strerror(-rc));
    unsigned holders = dirty_log_holders(vm->dirty_log);
    json_t *result = json_pack("{s:b, s:b, s:o, s:b}",
                               "tracking", holders != 0,
                               "api_hold", (holders & DIRTY_LOG_HOLDER_API) != 0,
                               "tracking_holders", holder_names(holders),
                               "already", held == enable);
    if (!result)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    return api_call_ok(call, result);
}

static const struct api_arg_spec tracking_args[] = {
    {"enable", API_ARG_BOOL, true, NULL,
     "true: keep dirty tracking on from now; false: drop that (a running migration keeps its own)"},
    {NULL, 0, false, NULL, NULL},
};

static const struct api_command commands[] = {
    {"vm.dirty-stats", cmd_vm_dirty_stats, 0, NULL,
     "per-vCPU dirty pages/s (100 ms, 1 s), ring fill high-water, full exits; harvester totals"},
    {"vm.dirty-tracking", cmd_vm_dirty_tracking, API_CMD_WORKER, tracking_args,
     "turn dirty tracking on/off outside a migration, so vm.dirty-stats shows rates"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_dirty_stats = {commands};
