/*
 * bpf.start, bpf.stop, bpf.stats: the eBPF probes (bpf/probes.h).
 *
 * Threads: all three run on the API worker (loading BPF programs takes
 * tens of ms). The probes object is created here on the first bpf.start
 * when ringvm was not started with --bpf, and published in vm->bpf_probes
 * with a release store; main destroys it after the VM has stopped.
 * vm->bpf_unavailable_reason: why they could not load (set by main for
 * --bpf, then only here on the worker).
 */
#include <stdio.h>
#include <string.h>

#include "api/commands.h"
#include "bpf/probes.h"
#include "vmm/vm.h"

static struct bpf_probes *current_probes(struct vm *vm)
{
    return atomic_load_explicit(&vm->bpf_probes, memory_order_acquire);
}

/* Tells the probes the vCPU thread ids the VMM knows (so several VMs in
 * one process, e.g. tests, do not confuse the thread-name lookup). */
static void register_vcpu_threads(struct bpf_probes *probes, struct vm *vm)
{
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        int tid = atomic_load_explicit(&vm->vcpus[i].tid, memory_order_acquire);
        if (tid > 0)
            bpf_probes_set_vcpu_tid(probes, i, tid);
    }
}

/* Keeps why BPF could not load or start, for bpf.stats (see vm.h). */
static void remember_reason(struct vm *vm, const char *reason)
{
    snprintf(vm->bpf_unavailable_reason, sizeof(vm->bpf_unavailable_reason), "%.480s", reason);
}

static enum api_status cmd_bpf_start(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (vm == NULL)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    char error[512];
    struct bpf_probes *probes = current_probes(vm);
    bool created = false;
    if (probes == NULL) {
        if (bpf_probes_create(&probes, vm, error, sizeof(error)) != 0) {
            remember_reason(vm, error);
            return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF unavailable: %s", error);
        }
        created = true;
    }
    register_vcpu_threads(probes, vm);
    bool was_running = bpf_probes_running(probes);
    if (!was_running && bpf_probes_start(probes, error, sizeof(error)) != 0) {
        if (created) {
            bpf_probes_destroy(probes);
            char reason[sizeof(vm->bpf_unavailable_reason)];
            snprintf(reason, sizeof(reason), "probes did not start: %.480s", error);
            remember_reason(vm, reason);
        }
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF probes did not start: %s", error);
    }
    vm->bpf_unavailable_reason[0] = '\0';
    if (created)
        atomic_store_explicit(&vm->bpf_probes, probes, memory_order_release);
    return api_call_ok(call, json_pack("{s:b, s:b}", "running", true, "already", was_running));
}

/* The answer without probes: the reason they could not load when BPF was
 * asked for (ringvm --bpf or an earlier bpf.start), else how to ask. */
static enum api_status fail_not_loaded(struct api_call *call)
{
    const char *reason = NULL;
    if (!bpf_probes_built(&reason))
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF unavailable: %s", reason);
    if (call->vm != NULL && call->vm->bpf_unavailable_reason[0] != '\0')
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF unavailable: %s", call->vm->bpf_unavailable_reason);
    return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF probes are not loaded (bpf.start or ringvm --bpf)");
}

static enum api_status cmd_bpf_stop(struct api_call *call)
{
    struct bpf_probes *probes = call->vm ? current_probes(call->vm) : NULL;
    if (probes == NULL)
        return fail_not_loaded(call);
    bool was_running = bpf_probes_running(probes);
    bpf_probes_stop(probes);
    return api_call_ok(call, json_pack("{s:b, s:b}", "running", false, "already", !was_running));
}

static enum api_status cmd_bpf_stats(struct api_call *call)
{
    struct bpf_probes *probes = call->vm ? current_probes(call->vm) : NULL;
    if (probes == NULL)
        return fail_not_loaded(call);
    char error[512];
    json_t *stats = bpf_probes_stats_json(probes, error, sizeof(error));
    if (stats == NULL)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF statistics unavailable: %s", error);
    return api_call_ok(call, stats);
}

static const struct api_command commands[] = {
    {"bpf.start", cmd_bpf_start, API_CMD_WORKER, NULL,
     "Load (if needed) and attach the eBPF probes; unavailable with the reason when BPF cannot load."},
    {"bpf.stop", cmd_bpf_stop, API_CMD_WORKER, NULL, "Detach the probes; their counters are kept."},
    {"bpf.stats", cmd_bpf_stats, API_CMD_WORKER, NULL,
     "Histograms (log2 buckets, bounds in ns) and counters per vCPU, with which metrics are live."},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_bpf = {commands};
