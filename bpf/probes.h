/*
 * eBPF probes of one VM (libbpf CO-RE): what the kernel sees of the vCPUs
 * that the VMM cannot - how long a kicked vCPU takes to leave KVM_RUN, how
 * long it sits off-CPU, how often its dirty ring fills.
 *
 * Metrics and where they come from (all BTF raw tracepoints, filtered in
 * the program on this process's tgid, per-vCPU data in array maps indexed
 * by the vCPU index; see bpf/vcpu_probes.bpf.c):
 *
 *   kvm_run          KVM_RUN entry (raw_syscalls:sys_enter ioctl KVM_RUN,
 *                    or kvm:kvm_fpu load=1) -> kvm:kvm_userspace_exit:
 *                    time in guest and time in user space, per userspace
 *                    exit reason (KVM_EXIT_*, "EINTR", "error").
 *   kvm_exit         in-kernel exits per hardware exit reason (classic
 *                    kvm:kvm_exit, which carries exit_reason; VMX/SVM hosts
 *                    only: never fires under PVM).
 *   kick_latency     tgkill(SIGUSR1) from the VMM (sys_enter) or the
 *                    throttle timer's signal (signal:signal_generate,
 *                    SI_TIMER) -> the vCPU's first exit to user space
 *                    after it (any exit reason: the moment it left the
 *                    guest). Kicks that find the vCPU already outside
 *                    KVM_RUN count as latency 0 (bucket 0). Beside it, for
 *                    tgkill kicks: the same interval from the VMM's own kick
 *                    stamp (vcpu->kick_sent_ns), and the VMM's user-space
 *                    measurement (vcpu_kick -> KVM_RUN EINTR).
 *   throttle_sleep   exit caused by the throttle timer -> next KVM_RUN.
 *   offcpu           sched:sched_switch out -> in of vCPU threads, split by
 *                    whether the thread was inside KVM_RUN.
 *   dirty_ring_push  kvm:kvm_dirty_ring_push per vCPU.
 *   dirty_ring_full  kvm:kvm_dirty_ring_exit per vCPU.
 *   dirty_ring_reset KVM_RESET_DIRTY_RINGS count and latency (sys_enter ->
 *                    sys_exit), kvm:kvm_dirty_ring_reset per ring.
 *
 * Threads: every function may be called from any thread; a mutex inside
 * struct bpf_probes serializes them (the API worker calls start/stop/stats,
 * migration calls mark/since_mark). The probes never block the vCPUs.
 *
 * Without BPF (RINGVM_BPF_DISABLE=1, no privilege, kernel without BTF, or a
 * build without clang/bpftool) bpf_probes_create fails with a reason and
 * the VM runs on.
 */
#ifndef RINGVM_BPF_PROBES_H
#define RINGVM_BPF_PROBES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <jansson.h>

struct vm;
struct bpf_probes;

/* ---- histograms (shared with the text formatter) ---------------------- */

/* log2 buckets: bucket 0 = [0, 2) ns, bucket i = [2^i, 2^(i+1)) ns. */
#define BPF_PROBES_HIST_BUCKETS 48

struct bpf_probes_hist {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t buckets[BPF_PROBES_HIST_BUCKETS];
};

uint64_t bpf_probes_bucket_low_ns(unsigned bucket);
uint64_t bpf_probes_bucket_high_ns(unsigned bucket);   /* exclusive */
/* Quantile q in [0,1], linear inside the bucket; 0 for an empty histogram. */
uint64_t bpf_probes_hist_quantile(const struct bpf_probes_hist *hist, double q);
void bpf_probes_hist_merge(struct bpf_probes_hist *into, const struct bpf_probes_hist *from);
/* {"count", "sum_ns", "mean_ns", "p50_ns", "p99_ns", "max_ns" (upper bound),
 *  "buckets": [{"low_ns", "high_ns", "count"}...] non-empty only} */
json_t *bpf_probes_hist_json(const struct bpf_probes_hist *hist);

/* ---- metrics ------------------------------------------------------------ */

enum bpf_probes_metric {
    BPF_METRIC_KVM_RUN = 0,
    BPF_METRIC_KVM_EXIT,
    BPF_METRIC_KICK_LATENCY,
    BPF_METRIC_THROTTLE_SLEEP,
    BPF_METRIC_OFFCPU,
    BPF_METRIC_DIRTY_RING_PUSH,
    BPF_METRIC_DIRTY_RING_FULL,
    BPF_METRIC_DIRTY_RING_RESET,
    BPF_METRIC_COUNT,
};

const char *bpf_probes_metric_name(enum bpf_probes_metric metric);

struct bpf_probes_metric_state {
    bool attached;              /* its programs are attached */
    bool live;                  /* attached and events seen */
    char source[96];            /* tracepoints used */
    char reason[192];           /* why not attached / why no events */
};

/* Userspace exit slots: KVM_EXIT_* 0..39, then these. */
#define BPF_PROBES_EXIT_REASONS 40
#define BPF_PROBES_EXIT_OTHER 40
#define BPF_PROBES_EXIT_EINTR 41
#define BPF_PROBES_EXIT_ERROR 42
#define BPF_PROBES_EXIT_SLOTS 43
const char *bpf_probes_exit_slot_name(unsigned slot);  /* "IO", "MMIO", "EINTR"... */

#define BPF_PROBES_HW_REASONS 512
/* Hardware exit reason name for slot (isa 1 VMX, 2 SVM); NULL if unknown. */
const char *bpf_probes_hw_reason_name(unsigned isa, unsigned slot);

struct bpf_probes_vcpu_stats {
    unsigned index;
    pid_t tid;                                  /* 0 = not mapped */
    uint64_t entries;                           /* KVM_RUN entries */
    uint64_t exits[BPF_PROBES_EXIT_SLOTS];
    struct bpf_probes_hist guest_ns[BPF_PROBES_EXIT_SLOTS];
    struct bpf_probes_hist userspace_ns[BPF_PROBES_EXIT_SLOTS];
    /* Kick latency: the kick to the vCPU's first exit to user space after
     * it (kvm_userspace_exit with any reason, not only -EINTR: that is when
     * it left the guest). A kick that found the vCPU outside KVM_RUN
     * counts as latency 0 (bucket 0), so count == kicks sent. */
    struct bpf_probes_hist kick_ns;             /* tgkill + timer */
    struct bpf_probes_hist kick_tgkill_ns;
    struct bpf_probes_hist kick_timer_ns;
    struct bpf_probes_hist kick_tgkill_in_run_ns;   /* tgkill kicks that found it in KVM_RUN */
    struct bpf_probes_hist kick_vmm_stamp_ns;   /* VMM's kick_sent_ns -> exit */
    /* The VMM's own user-space measurement of tgkill kicks (vcpu_kick ->
     * KVM_RUN returning EINTR), since the probes were first started. */
    struct bpf_probes_hist vmm_kick_latency_ns;
    struct bpf_probes_hist throttle_sleep_ns;
    struct bpf_probes_hist offcpu_in_run_ns;
    struct bpf_probes_hist offcpu_userspace_ns;
    uint64_t kicks_tgkill;                      /* seen at the sender */
    uint64_t kicks_timer;
    uint64_t kicks_outside_run;                 /* found the vCPU out of KVM_RUN (latency 0) */
    uint64_t kicks_pending;                     /* in KVM_RUN, not yet out */
    uint64_t kicks_lost;                        /* more kicks than queue slots in one run:
                                                   in the histogram, latency a lower bound */
    uint64_t dirty_pushes;
    uint64_t ring_full_exits;
    uint64_t ring_resets;
    uint64_t kvm_exits;                         /* in-kernel, tp_btf kvm_exit */
    /* The VMM's own counters since the probes were first started (they
     * also count while the probes are stopped), for comparison. */
    uint64_t vmm_exits_io, vmm_exits_mmio, vmm_exits_intr, vmm_exits_dirty_ring_full;
    uint64_t vmm_kicks_sent, vmm_throttle_sleeps, vmm_throttle_sleep_ns;
};

struct bpf_probes_stats {
    bool running;
    uint64_t attached_ns;                       /* total time attached */
    struct bpf_probes_metric_state metrics[BPF_METRIC_COUNT];
    unsigned vcpu_count;
    struct bpf_probes_vcpu_stats *vcpus;        /* vcpu_count entries, malloc'ed */
    uint64_t reset_ioctls;
    uint64_t reset_errors;
    struct bpf_probes_hist reset_latency_ns;
    uint64_t ring_resets;
    uint64_t hw_exits;
    unsigned hw_isa;
    uint64_t hw_reasons[BPF_PROBES_HW_REASONS];
    uint64_t unknown_vcpu_events;
};

/* ---- lifecycle ---------------------------------------------------------- */

/* True when this build has the BPF loader; otherwise *reason says why not
 * (e.g. "built without BPF: clang not found"). */
bool bpf_probes_built(const char **reason);

/* Opens and loads the programs for vm (tgid = this process; tids of the
 * "vcpu<N>" threads resolved at start). Nothing is attached yet.
 * Returns 0, or -errno with the reason in error ("RINGVM_BPF_DISABLE=1",
 * "loading BPF programs: Operation not permitted (needs root or
 * CAP_BPF+CAP_PERFMON)", ...). */
int bpf_probes_create(struct bpf_probes **out, struct vm *vm, char *error, size_t error_size);
void bpf_probes_destroy(struct bpf_probes *probes);

/* Overrides the tid of one vCPU thread (the VMM knows them; otherwise
 * start reads /proc/self/task/x/comm for "vcpu<N>"). */
int bpf_probes_set_vcpu_tid(struct bpf_probes *probes, unsigned vcpu, pid_t tid);

/* Attaches the programs. Before vm_start: vCPU threads register
 * themselves as they name themselves "vcpu<N>" (sched:task_rename), so
 * the first KVM_RUN is seen. After vm_start: the running "vcpu<N>"
 * threads are found in /proc/self/task. Counters continue from where
 * stop left them. 0 or -errno with the reason. */
int bpf_probes_start(struct bpf_probes *probes, char *error, size_t error_size);
int bpf_probes_stop(struct bpf_probes *probes);
bool bpf_probes_running(struct bpf_probes *probes);

/* The attach report (main, right after bpf_probes_start, before the vCPUs
 * run): one line per metric, "attached (source)" or "off (why)". */
void bpf_probes_print_metrics(struct bpf_probes *probes, FILE *out);
/* The start summary, once the vCPUs have run a while: which metrics are
 * live, which are attached but saw no events (and why, from what the VM
 * did meanwhile), which are unavailable (why). A few lines. */
void bpf_probes_print_summary(struct bpf_probes *probes, FILE *out);

/* ---- reading ------------------------------------------------------------ */

int bpf_probes_stats_get(struct bpf_probes *probes, struct bpf_probes_stats *out);
void bpf_probes_stats_free(struct bpf_probes_stats *stats);
/* The bpf.stats result (layout in docs/api.md, bpf.stats). probes NULL or
 * not loadable: NULL with the reason in error (the API answers error
 * "unavailable" with it). */
json_t *bpf_probes_stats_json(struct bpf_probes *probes, char *error, size_t error_size);
/* The same from an already taken snapshot. */
json_t *bpf_probes_stats_to_json(const struct bpf_probes_stats *stats);

/* Per migration iteration: mark at the iteration start, read at its end. */
struct bpf_probes_mark {
    struct bpf_probes_hist kick;                /* all vCPUs, tgkill + timer */
    uint64_t ring_full_exits;
    uint64_t dirty_pushes;
    uint64_t reset_ioctls;
};
struct bpf_probes_iteration {
    uint64_t kicks;                             /* kicks (those that found the vCPU
                                                   outside KVM_RUN as latency 0) */
    uint64_t kick_p50_ns;
    uint64_t kick_p99_ns;
    uint64_t ring_full_exits;
    uint64_t dirty_pushes;
    uint64_t reset_ioctls;
};
int bpf_probes_mark(struct bpf_probes *probes, struct bpf_probes_mark *mark);
int bpf_probes_since_mark(struct bpf_probes *probes, const struct bpf_probes_mark *mark,
                          struct bpf_probes_iteration *out);
/* {"kicks", "kick_p50_ns", "kick_p99_ns", "ring_full_exits", "dirty_pushes", "reset_ioctls"} */
json_t *bpf_probes_iteration_json(const struct bpf_probes_iteration *iteration);

/* ---- the probes' own cost ------------------------------------------------ */

/* Run time of each loaded program (kernel BPF stats). Counting is off by
 * default; bpf_probes_enable_run_stats turns it on for as long as the
 * returned fd is open (close it to stop). -errno on failure. */
int bpf_probes_enable_run_stats(void);
struct bpf_probes_prog_stat {
    char name[32];
    uint64_t run_count;
    uint64_t run_time_ns;
    /* Runs the kernel skipped because the same program was already running
     * on that CPU (always counted, also without run stats): e.g. the
     * throttle timer's signal_generate in hard IRQ context interrupting
     * rv_signal_generate for another signal. Those events are not seen. */
    uint64_t recursion_misses;
};
/* Fills up to max entries; returns how many, or -errno. */
int bpf_probes_prog_stats(struct bpf_probes *probes, struct bpf_probes_prog_stat *out, unsigned max);

/* ---- text rendering (ringctl trace; no libbpf needed) -------------------- */

/* Renders a bpf.stats JSON result as text histograms with bars, `width`
 * columns for the bars (0 = 40). Returns a malloc'ed string, or NULL with
 * errno set (ENOMEM, EINVAL for a result that is not a bpf.stats object). */
char *bpf_probes_format_text(const json_t *stats, unsigned width);

#endif
