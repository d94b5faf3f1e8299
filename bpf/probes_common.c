/*
 * The parts of bpf/probes.h that need no libbpf: histogram math, names,
 * the bpf.stats JSON rendering of a snapshot, and the text bars ringctl
 * prints from the JSON it received. Compiled in every build (also without
 * BPF), so ringctl can always link it.
 *
 * Stateless: every function is safe from any thread.
 */
#include "bpf/probes.h"
#include "vmm/log2_histogram.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- histograms --------------------------------------------------------- */

uint64_t bpf_probes_bucket_low_ns(unsigned bucket)
{
    return log2_histogram_bucket_low_ns(bucket);
}

uint64_t bpf_probes_bucket_high_ns(unsigned bucket)
{
    return log2_histogram_bucket_high_ns(bucket);
}

uint64_t bpf_probes_hist_quantile(const struct bpf_probes_hist *hist, double q)
{
    return log2_histogram_quantile(hist->buckets, BPF_PROBES_HIST_BUCKETS, q);
}

void bpf_probes_hist_merge(struct bpf_probes_hist *into, const struct bpf_probes_hist *from)
{
    into->count += from->count;
    into->sum_ns += from->sum_ns;
    for (unsigned i = 0; i < BPF_PROBES_HIST_BUCKETS; i++)
        into->buckets[i] += from->buckets[i];
}

static int json_set(json_t *object, const char *key, json_t *value)
{
    if (value == NULL)
        return -1;
    return json_object_set_new(object, key, value);
}

json_t *bpf_probes_hist_json(const struct bpf_probes_hist *hist)
{
    json_t *object = json_object();
    json_t *buckets = json_array();
    if (object == NULL || buckets == NULL) {
        json_decref(object);
        json_decref(buckets);
        return NULL;
    }
    int highest = -1;
    for (unsigned i = 0; i < BPF_PROBES_HIST_BUCKETS; i++) {
        if (hist->buckets[i] == 0)
            continue;
        highest = (int)i;
        json_t *bucket = json_pack("{s:I, s:I, s:I}", "low_ns", (json_int_t)bpf_probes_bucket_low_ns(i),
                                   "high_ns", (json_int_t)bpf_probes_bucket_high_ns(i), "count",
                                   (json_int_t)hist->buckets[i]);
        if (bucket == NULL || json_array_append_new(buckets, bucket) != 0) {
            json_decref(object);
            json_decref(buckets);
            return NULL;
        }
    }
    int failed = 0;
    failed |= json_set(object, "count", json_integer((json_int_t)hist->count));
    failed |= json_set(object, "sum_ns", json_integer((json_int_t)hist->sum_ns));
    failed |= json_set(object, "mean_ns",
                       json_integer(hist->count ? (json_int_t)(hist->sum_ns / hist->count) : 0));
    failed |= json_set(object, "p50_ns", json_integer((json_int_t)bpf_probes_hist_quantile(hist, 0.50)));
    failed |= json_set(object, "p99_ns", json_integer((json_int_t)bpf_probes_hist_quantile(hist, 0.99)));
    failed |= json_set(object, "max_ns",
                       json_integer(highest < 0 ? 0 : (json_int_t)bpf_probes_bucket_high_ns((unsigned)highest)));
    failed |= json_set(object, "buckets", buckets);
    if (failed) {
        json_decref(object);
        return NULL;
    }
    return object;
}

/* ---- names -------------------------------------------------------------- */

static const char *const metric_names[BPF_METRIC_COUNT] = {
    [BPF_METRIC_KVM_RUN] = "kvm_run",
    [BPF_METRIC_KVM_EXIT] = "kvm_exit",
    [BPF_METRIC_KICK_LATENCY] = "kick_latency",
    [BPF_METRIC_THROTTLE_SLEEP] = "throttle_sleep",
    [BPF_METRIC_OFFCPU] = "offcpu",
    [BPF_METRIC_DIRTY_RING_PUSH] = "dirty_ring_push",
    [BPF_METRIC_DIRTY_RING_FULL] = "dirty_ring_full",
    [BPF_METRIC_DIRTY_RING_RESET] = "dirty_ring_reset",
};

const char *bpf_probes_metric_name(enum bpf_probes_metric metric)
{
    return (unsigned)metric < BPF_METRIC_COUNT ? metric_names[metric] : "unknown";
}

static const char *const exit_names[BPF_PROBES_EXIT_SLOTS] = {
    "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
    "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET", "DCR",
    "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG", "S390_TSCH", "EPR",
    "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV", "X86_RDMSR", "X86_WRMSR",
    "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN", "RISCV_SBI", "RISCV_CSR", "NOTIFY",
    "LOONGARCH_IOCSR", "MEMORY_FAULT", "OTHER", "EINTR", "ERROR",
};

const char *bpf_probes_exit_slot_name(unsigned slot)
{
    return slot < BPF_PROBES_EXIT_SLOTS ? exit_names[slot] : "?";
}

static const char *vmx_reason_name(unsigned reason)
{
    switch (reason) {
    case 0: return "EXCEPTION_NMI";
    case 1: return "EXTERNAL_INTERRUPT";
    case 2: return "TRIPLE_FAULT";
    case 3: return "INIT_SIGNAL";
    case 4: return "SIPI_SIGNAL";
    case 7: return "INTERRUPT_WINDOW";
    case 8: return "NMI_WINDOW";
    case 9: return "TASK_SWITCH";
    case 10: return "CPUID";
    case 12: return "HLT";
    case 13: return "INVD";
    case 14: return "INVLPG";
    case 15: return "RDPMC";
    case 16: return "RDTSC";
    case 18: return "VMCALL";
    case 28: return "CR_ACCESS";
    case 29: return "DR_ACCESS";
    case 30: return "IO_INSTRUCTION";
    case 31: return "MSR_READ";
    case 32: return "MSR_WRITE";
    case 33: return "INVALID_STATE";
    case 36: return "MWAIT_INSTRUCTION";
    case 37: return "MONITOR_TRAP_FLAG";
    case 39: return "MONITOR_INSTRUCTION";
    case 40: return "PAUSE_INSTRUCTION";
    case 43: return "TPR_BELOW_THRESHOLD";
    case 44: return "APIC_ACCESS";
    case 45: return "EOI_INDUCED";
    case 46: return "GDTR_IDTR";
    case 47: return "LDTR_TR";
    case 48: return "EPT_VIOLATION";
    case 49: return "EPT_MISCONFIG";
    case 51: return "RDTSCP";
    case 52: return "PREEMPTION_TIMER";
    case 54: return "WBINVD";
    case 55: return "XSETBV";
    case 56: return "APIC_WRITE";
    case 57: return "RDRAND";
    case 58: return "INVPCID";
    case 61: return "RDSEED";
    case 62: return "PML_FULL";
    case 63: return "XSAVES";
    case 64: return "XRSTORS";
    case 67: return "UMWAIT";
    case 68: return "TPAUSE";
    case 74: return "BUS_LOCK";
    case 75: return "NOTIFY";
    default: return NULL;
    }
}

static const char *svm_reason_name(unsigned slot)
{
    if (slot < 0x40) {
        static const char *const cr_dr[] = { "read_cr", "write_cr", "read_dr", "write_dr" };
        return cr_dr[slot >> 4];
    }
    if (slot < 0x60)
        return "exception";
    switch (slot) {
    case 0x60: return "interrupt";
    case 0x61: return "nmi";
    case 0x62: return "smi";
    case 0x63: return "init";
    case 0x64: return "vintr";
    case 0x6e: return "rdtsc";
    case 0x6f: return "rdpmc";
    case 0x72: return "cpuid";
    case 0x74: return "iret";
    case 0x77: return "pause";
    case 0x78: return "hlt";
    case 0x79: return "invlpg";
    case 0x7b: return "io";
    case 0x7c: return "msr";
    case 0x7f: return "shutdown";
    case 0x81: return "hypercall";
    case 0x87: return "rdtscp";
    case 0x89: return "wbinvd";
    case 0x8b: return "mwait";
    case 0x8d: return "xsetbv";
    case 0x8f: return "write_efer_trap";
    case 0x90: return "write_cr0_trap";
    case 0x94: return "write_cr4_trap";
    case 0x98: return "write_cr8_trap";
    case 0xa5: return "buslock";
    case 0xa6: return "idle-halt";
    case 0x180: return "npf";
    case 0x181: return "avic_incomplete_ipi";
    case 0x182: return "avic_unaccelerated_access";
    case 0x183: return "vmgexit";
    default: return NULL;
    }
}

const char *bpf_probes_hw_reason_name(unsigned isa, unsigned slot)
{
    if (slot >= BPF_PROBES_HW_REASONS)
        return NULL;
    if (slot == BPF_PROBES_HW_REASONS - 1)
        return "other";
    return isa == 1 ? vmx_reason_name(slot) : isa == 2 ? svm_reason_name(slot) : NULL;
}

/* ---- JSON of a snapshot --------------------------------------------------- */

static json_t *metrics_json(const struct bpf_probes_stats *stats)
{
    json_t *metrics = json_object();
    if (metrics == NULL)
        return NULL;
    for (unsigned i = 0; i < BPF_METRIC_COUNT; i++) {
        const struct bpf_probes_metric_state *m = &stats->metrics[i];
        json_t *entry = json_pack("{s:b, s:b, s:s, s:s}", "attached", m->attached, "live", m->live,
                                  "source", m->source, "reason", m->reason);
        if (entry == NULL || json_object_set_new(metrics, bpf_probes_metric_name(i), entry) != 0) {
            json_decref(metrics);
            return NULL;
        }
    }
    return metrics;
}

static json_t *vcpu_json(const struct bpf_probes_vcpu_stats *v)
{
    json_t *exits = json_object();
    json_t *object = json_object();
    if (exits == NULL || object == NULL)
        goto fail;
    for (unsigned slot = 0; slot < BPF_PROBES_EXIT_SLOTS; slot++) {
        if (v->exits[slot] == 0 && v->guest_ns[slot].count == 0 && v->userspace_ns[slot].count == 0)
            continue;
        json_t *entry = json_object();
        if (entry == NULL || json_object_set_new(exits, bpf_probes_exit_slot_name(slot), entry) != 0)
            goto fail;
        if (json_set(entry, "count", json_integer((json_int_t)v->exits[slot])) ||
            json_set(entry, "guest_ns", bpf_probes_hist_json(&v->guest_ns[slot])) ||
            json_set(entry, "userspace_ns", bpf_probes_hist_json(&v->userspace_ns[slot])))
            goto fail;
    }
    json_t *run = json_pack("{s:I, s:o}", "entries", (json_int_t)v->entries, "exits", exits);
    exits = NULL;
    json_t *kicks = json_pack("{s:I, s:I, s:I, s:I, s:I}", "tgkill", (json_int_t)v->kicks_tgkill, "timer",
                              (json_int_t)v->kicks_timer, "outside_run", (json_int_t)v->kicks_outside_run,
                              "pending", (json_int_t)v->kicks_pending, "lost", (json_int_t)v->kicks_lost);
    json_t *vmm = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "kicks_sent",
                            (json_int_t)v->vmm_kicks_sent, "exits_io", (json_int_t)v->vmm_exits_io,
                            "exits_mmio", (json_int_t)v->vmm_exits_mmio, "exits_intr",
                            (json_int_t)v->vmm_exits_intr, "exits_dirty_ring_full",
                            (json_int_t)v->vmm_exits_dirty_ring_full, "throttle_sleeps",
                            (json_int_t)v->vmm_throttle_sleeps, "throttle_sleep_ns",
                            (json_int_t)v->vmm_throttle_sleep_ns, "throttle_sleep_mean_ns",
                            (json_int_t)(v->vmm_throttle_sleeps ? v->vmm_throttle_sleep_ns / v->vmm_throttle_sleeps
                                                                : 0));
    json_t *ring = json_pack("{s:I, s:I, s:I}", "pushes", (json_int_t)v->dirty_pushes, "full_exits",
                             (json_int_t)v->ring_full_exits, "resets", (json_int_t)v->ring_resets);
    if (json_set(object, "index", json_integer(v->index)) || json_set(object, "tid", json_integer(v->tid)) ||
        json_set(object, "kvm_run", run) || json_set(object, "kicks", kicks) ||
        json_set(object, "kick_latency_ns", bpf_probes_hist_json(&v->kick_ns)) ||
        json_set(object, "kick_tgkill_ns", bpf_probes_hist_json(&v->kick_tgkill_ns)) ||
        json_set(object, "kick_timer_ns", bpf_probes_hist_json(&v->kick_timer_ns)) ||
        json_set(object, "kick_tgkill_in_run_ns", bpf_probes_hist_json(&v->kick_tgkill_in_run_ns)) ||
        json_set(object, "kick_vmm_stamp_ns", bpf_probes_hist_json(&v->kick_vmm_stamp_ns)) ||
        json_set(object, "vmm_kick_latency_ns", bpf_probes_hist_json(&v->vmm_kick_latency_ns)) ||
        json_set(object, "throttle_sleep_ns", bpf_probes_hist_json(&v->throttle_sleep_ns)) ||
        json_set(object, "offcpu_in_run_ns", bpf_probes_hist_json(&v->offcpu_in_run_ns)) ||
        json_set(object, "offcpu_userspace_ns", bpf_probes_hist_json(&v->offcpu_userspace_ns)) ||
        json_set(object, "dirty_ring", ring) || json_set(object, "kvm_exits", json_integer((json_int_t)v->kvm_exits)) ||
        json_set(object, "vmm", vmm))
        goto fail;
    return object;
fail:
    json_decref(exits);
    json_decref(object);
    return NULL;
}

json_t *bpf_probes_stats_to_json(const struct bpf_probes_stats *stats)
{
    json_t *root = json_object();
    json_t *vcpus = json_array();
    if (root == NULL || vcpus == NULL)
        goto fail;
    uint64_t pushes = 0, full = 0;
    for (unsigned i = 0; i < stats->vcpu_count; i++) {
        pushes += stats->vcpus[i].dirty_pushes;
        full += stats->vcpus[i].ring_full_exits;
        json_t *v = vcpu_json(&stats->vcpus[i]);
        if (v == NULL || json_array_append_new(vcpus, v) != 0)
            goto fail;
    }
    json_t *vcpus_ref = vcpus;
    vcpus = NULL;
    if (json_set(root, "available", json_true()) || json_set(root, "running", json_boolean(stats->running)) ||
        json_set(root, "attached_ms", json_integer((json_int_t)(stats->attached_ns / 1000000))) ||
        json_set(root, "metrics", metrics_json(stats)) || json_set(root, "vcpus", vcpus_ref))
        goto fail;

    json_t *ring = json_pack("{s:I, s:I, s:I, s:I, s:I, s:o*}", "pushes", (json_int_t)pushes, "full_exits",
                             (json_int_t)full, "reset_ioctls", (json_int_t)stats->reset_ioctls, "reset_errors",
                             (json_int_t)stats->reset_errors, "ring_resets", (json_int_t)stats->ring_resets,
                             "reset_latency_ns", bpf_probes_hist_json(&stats->reset_latency_ns));
    if (json_set(root, "dirty_ring", ring))
        goto fail;

    json_t *reasons = json_object();
    if (reasons == NULL)
        goto fail;
    for (unsigned slot = 0; slot < BPF_PROBES_HW_REASONS; slot++) {
        if (stats->hw_reasons[slot] == 0)
            continue;
        char fallback[32];
        const char *name = bpf_probes_hw_reason_name(stats->hw_isa, slot);
        if (name == NULL) {
            snprintf(fallback, sizeof(fallback), "reason_%u", slot);
            name = fallback;
        }
        /* Several SVM slots share a name (read_cr0..15): add them up. */
        json_t *old = json_object_get(reasons, name);
        json_int_t base = old ? json_integer_value(old) : 0;
        if (json_object_set_new(reasons, name, json_integer(base + (json_int_t)stats->hw_reasons[slot])) != 0) {
            json_decref(reasons);
            goto fail;
        }
    }
    json_t *hw = json_pack("{s:s?, s:I, s:o}", "isa",
                           stats->hw_isa == 1 ? "vmx" : stats->hw_isa == 2 ? "svm" : NULL, "total",
                           (json_int_t)stats->hw_exits, "reasons", reasons);
    if (json_set(root, "kvm_exit", hw) ||
        json_set(root, "unknown_vcpu_events", json_integer((json_int_t)stats->unknown_vcpu_events)))
        goto fail;
    return root;
fail:
    json_decref(vcpus);
    json_decref(root);
    return NULL;
}

json_t *bpf_probes_iteration_json(const struct bpf_probes_iteration *it)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "kicks", (json_int_t)it->kicks, "kick_p50_ns",
                     (json_int_t)it->kick_p50_ns, "kick_p99_ns", (json_int_t)it->kick_p99_ns,
                     "ring_full_exits", (json_int_t)it->ring_full_exits, "dirty_pushes",
                     (json_int_t)it->dirty_pushes, "reset_ioctls", (json_int_t)it->reset_ioctls);
}

/* ---- text bars ------------------------------------------------------------ */

struct text {
    char *data;
    size_t length, capacity;
    bool failed;
};

__attribute__((format(printf, 2, 3))) static void text_add(struct text *t, const char *format, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list args;
        va_start(args, format);
        size_t room = t->capacity - t->length;
        int n = vsnprintf(t->data ? t->data + t->length : NULL, room, format, args);
        va_end(args);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < room) {
            t->length += (size_t)n;
            return;
        }
        size_t capacity = t->capacity ? t->capacity * 2 : 4096;
        while (capacity < t->length + (size_t)n + 1)
            capacity *= 2;
        char *grown = realloc(t->data, capacity);
        if (grown == NULL) {
            t->failed = true;
            return;
        }
        t->data = grown;
        t->capacity = capacity;
    }
}

static void format_duration(char *out, size_t size, uint64_t ns)
{
    if (ns < 1000)
        snprintf(out, size, "%" PRIu64 "ns", ns);
    else if (ns < 1000000)
        snprintf(out, size, "%.3gus", (double)ns / 1e3);
    else if (ns < 1000000000)
        snprintf(out, size, "%.3gms", (double)ns / 1e6);
    else
        snprintf(out, size, "%.3gs", (double)ns / 1e9);
}

static uint64_t json_u64(const json_t *object, const char *key)
{
    json_t *value = json_object_get(object, key);
    return json_is_integer(value) && json_integer_value(value) > 0 ? (uint64_t)json_integer_value(value) : 0;
}

/* One histogram from its JSON form. Empty histograms print one line. */
static void text_hist(struct text *t, const char *title, const json_t *hist, unsigned width)
{
    uint64_t count = json_u64(hist, "count");
    char p50[24], p99[24], mean[24];
    format_duration(p50, sizeof(p50), json_u64(hist, "p50_ns"));
    format_duration(p99, sizeof(p99), json_u64(hist, "p99_ns"));
    format_duration(mean, sizeof(mean), json_u64(hist, "mean_ns"));
    if (count == 0) {
        text_add(t, "  %s: no samples\n", title);
        return;
    }
    text_add(t, "  %s: %" PRIu64 " samples, mean %s, p50 %s, p99 %s\n", title, count, mean, p50, p99);
    const json_t *buckets = json_object_get(hist, "buckets");
    uint64_t peak = 0;
    size_t index;
    const json_t *bucket;
    json_array_foreach(buckets, index, bucket) {
        uint64_t n = json_u64(bucket, "count");
        if (n > peak)
            peak = n;
    }
    json_array_foreach(buckets, index, bucket) {
        char low[24], high[24];
        uint64_t n = json_u64(bucket, "count");
        format_duration(low, sizeof(low), json_u64(bucket, "low_ns"));
        format_duration(high, sizeof(high), json_u64(bucket, "high_ns"));
        unsigned bar = peak ? (unsigned)((n * width + peak - 1) / peak) : 0;
        text_add(t, "    %8s .. %-8s %10" PRIu64 " |", low, high, n);
        for (unsigned i = 0; i < width; i++)
            text_add(t, "%c", i < bar ? '*' : ' ');
        text_add(t, "|\n");
    }
}

char *bpf_probes_format_text(const json_t *stats, unsigned width)
{
    if (!json_is_object(stats) || !json_is_array(json_object_get(stats, "vcpus"))) {
        errno = EINVAL;
        return NULL;
    }
    if (width == 0)
        width = 40;
    if (width > 200)
        width = 200;
    struct text t = { 0 };

    text_add(&t, "bpf probes: %s, attached %" PRIu64 " ms\n",
             json_is_true(json_object_get(stats, "running")) ? "running" : "stopped",
             json_u64(stats, "attached_ms"));
    const char *key;
    const json_t *metric;
    json_object_foreach((json_t *)json_object_get(stats, "metrics"), key, metric) {
        bool live = json_is_true(json_object_get(metric, "live"));
        bool attached = json_is_true(json_object_get(metric, "attached"));
        const char *reason = json_string_value(json_object_get(metric, "reason"));
        text_add(&t, "  %-17s %-10s %s\n", key, live ? "live" : attached ? "no events" : "unavailable",
                 reason && *reason ? reason : "");
    }

    size_t index;
    const json_t *vcpu;
    json_array_foreach(json_object_get(stats, "vcpus"), index, vcpu) {
        const json_t *kicks = json_object_get(vcpu, "kicks");
        const json_t *vmm = json_object_get(vcpu, "vmm");
        const json_t *ring = json_object_get(vcpu, "dirty_ring");
        text_add(&t, "\nvcpu%" PRIu64 " (tid %" PRIu64 "): kicks tgkill %" PRIu64 " timer %" PRIu64
                 " outside KVM_RUN %" PRIu64 " (VMM sent %" PRIu64 ", throttle sleeps %" PRIu64 ")\n",
                 json_u64(vcpu, "index"), json_u64(vcpu, "tid"), json_u64(kicks, "tgkill"),
                 json_u64(kicks, "timer"), json_u64(kicks, "outside_run"), json_u64(vmm, "kicks_sent"),
                 json_u64(vmm, "throttle_sleeps"));
        text_add(&t, "  dirty ring: %" PRIu64 " pushes, %" PRIu64 " full exits, %" PRIu64 " ring resets\n",
                 json_u64(ring, "pushes"), json_u64(ring, "full_exits"), json_u64(ring, "resets"));
        text_hist(&t, "kick -> out of KVM_RUN, all kicks (tgkill + throttle timer; outside KVM_RUN = 0 ns)",
                  json_object_get(vcpu, "kick_latency_ns"), width);
        /* The VMM's own measurement covers only its tgkill kicks that ended
         * a KVM_RUN: compare it with the kernel's figure for those. */
        text_add(&t, "  tgkill kicks that found the vCPU in KVM_RUN, kernel vs VMM:\n");
        text_hist(&t, "[kernel] tgkill -> out of KVM_RUN", json_object_get(vcpu, "kick_tgkill_in_run_ns"), width);
        text_hist(&t, "[kernel] VMM kick stamp -> out of KVM_RUN", json_object_get(vcpu, "kick_vmm_stamp_ns"), width);
        text_hist(&t, "[VMM]    vcpu_kick -> KVM_RUN returns EINTR", json_object_get(vcpu, "vmm_kick_latency_ns"),
                  width);
        text_hist(&t, "throttle timer kick -> out of KVM_RUN (outside KVM_RUN = 0 ns)",
                  json_object_get(vcpu, "kick_timer_ns"), width);
        text_hist(&t, "throttle sleep", json_object_get(vcpu, "throttle_sleep_ns"), width);
        text_hist(&t, "off-CPU inside KVM_RUN", json_object_get(vcpu, "offcpu_in_run_ns"), width);
        text_hist(&t, "off-CPU in user space", json_object_get(vcpu, "offcpu_userspace_ns"), width);
        const json_t *run = json_object_get(vcpu, "kvm_run");
        text_add(&t, "  KVM_RUN: %" PRIu64 " entries\n", json_u64(run, "entries"));
        const char *reason;
        const json_t *exit;
        json_object_foreach((json_t *)json_object_get(run, "exits"), reason, exit) {
            char title[96];
            snprintf(title, sizeof(title), "%s exits (%" PRIu64 "): time in guest", reason, json_u64(exit, "count"));
            text_hist(&t, title, json_object_get(exit, "guest_ns"), width);
            snprintf(title, sizeof(title), "%s exits: time in user space", reason);
            text_hist(&t, title, json_object_get(exit, "userspace_ns"), width);
        }
    }

    const json_t *ring = json_object_get(stats, "dirty_ring");
    text_add(&t, "\ndirty ring: %" PRIu64 " pushes, %" PRIu64 " full exits, %" PRIu64
             " KVM_RESET_DIRTY_RINGS (%" PRIu64 " failed), %" PRIu64 " ring resets\n",
             json_u64(ring, "pushes"), json_u64(ring, "full_exits"), json_u64(ring, "reset_ioctls"),
             json_u64(ring, "reset_errors"), json_u64(ring, "ring_resets"));
    text_hist(&t, "KVM_RESET_DIRTY_RINGS latency", json_object_get(ring, "reset_latency_ns"), width);

    const json_t *hw = json_object_get(stats, "kvm_exit");
    if (json_u64(hw, "total") > 0) {
        text_add(&t, "\nin-kernel exits (%s): %" PRIu64 "\n",
                 json_string_value(json_object_get(hw, "isa")) ? json_string_value(json_object_get(hw, "isa")) : "?",
                 json_u64(hw, "total"));
        const char *name;
        const json_t *count;
        json_object_foreach((json_t *)json_object_get(hw, "reasons"), name, count)
            text_add(&t, "  %-28s %10" PRIu64 "\n", name, (uint64_t)json_integer_value(count));
    }

    if (t.failed) {
        free(t.data);
        errno = ENOMEM;
        return NULL;
    }
    if (t.data == NULL)
        return strdup("");
    return t.data;
}
