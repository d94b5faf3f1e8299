/*
 * bpf.start, bpf.stop, bpf.stats: the eBPF probes (bpf/probes.h).
 *
 * Threads: all three run on the API worker (loading BPF programs takes
 * tens of ms). The probes object is created here on the first bpf.start
 * when ringvm was not started with --bpf, and published in vm->bpf_probes
 * with a release store; main destroys it after the VM has stopped.
 */
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

static enum api_status cmd_bpf_start(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (vm == NULL)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    char error[512];
    struct bpf_probes *probes = current_probes(vm);
    bool created = false;
    if (probes == NULL) {
        if (bpf_probes_create(&probes, vm, error, sizeof(error)) != 0)
            return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF unavailable: %s", error);
        created = true;
    }
    register_vcpu_threads(probes, vm);
    bool was_running = bpf_probes_running(probes);
    if (!was_running && bpf_probes_start(probes, error, sizeof(error)) != 0) {
        if (created)
            bpf_probes_destroy(probes);
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF probes did not start: %s", error);
    }
    if (created)
        atomic_store_explicit(&vm->bpf_probes, probes, memory_order_release);
    return api_call_ok(call, json_pack("{s:b, s:b}", "running", true, "already", was_running));
}

static enum api_status cmd_bpf_stop(struct api_call *call)
{
    struct bpf_probes *probes = call->vm ? current_probes(call->vm) : NULL;
    if (probes == NULL)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF probes are not loaded (bpf.start or ringvm --bpf)");
    bool was_running = bpf_probes_running(probes);
    bpf_probes_stop(probes);
    return api_call_ok(call, json_pack("{s:b, s:b}", "running", false, "already", !was_running));
}

/* The VMM's own user-space measurement of the kick interval (vcpu_kick to
 * KVM_RUN returning EINTR), beside the kernel's, per vCPU. */
static void add_vmm_kick_latency(struct vm *vm, json_t *stats)
{
    size_t index;
    json_t *vcpu;
    json_array_foreach(json_object_get(stats, "vcpus"), index, vcpu) {
        json_int_t which = json_integer_value(json_object_get(vcpu, "index"));
        if (which < 0 || (unsigned)which >= vm->config.vcpu_count)
            continue;
        const struct vcpu_counters *counters = &vm->vcpus[which].counters;
        struct bpf_probes_hist hist;
        memset(&hist, 0, sizeof(hist));
        hist.count = atomic_load_explicit(&counters->kick_latency_count, memory_order_relaxed);
        hist.sum_ns = atomic_load_explicit(&counters->kick_latency_sum_ns, memory_order_relaxed);
        for (unsigned b = 0; b < VCPU_KICK_LATENCY_BUCKETS && b < BPF_PROBES_HIST_BUCKETS; b++)
            hist.buckets[b] = atomic_load_explicit(&counters->kick_latency_buckets[b], memory_order_relaxed);
        json_object_set_new(vcpu, "vmm_kick_latency_ns", bpf_probes_hist_json(&hist));
    }
}

static enum api_status cmd_bpf_stats(struct api_call *call)
{
    struct bpf_probes *probes = call->vm ? current_probes(call->vm) : NULL;
    if (probes == NULL) {
        const char *reason = NULL;
        if (!bpf_probes_built(&reason))
            return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF unavailable: %s", reason);
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF probes are not loaded (bpf.start or ringvm --bpf)");
    }
    char error[512];
    json_t *stats = bpf_probes_stats_json(probes, error, sizeof(error));
    if (stats == NULL)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "BPF statistics unavailable: %s", error);
    add_vmm_kick_latency(call->vm, stats);
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
