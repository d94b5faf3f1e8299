// SPDX-License-Identifier: GPL-2.0
/*
 * ringvm vCPU probes: KVM_RUN round trips, kick/throttle latency, off-CPU
 * time and dirty ring activity of ONE VMM process (target_tgid).
 *
 * Attach points (all BTF-typed raw tracepoints except the classic kvm_exit,
 * so nothing needs tracefs): see bpf/probes.h for the metric <-> program
 * table. Every program is optional ("?"): the loader enables the ones whose
 * attach point exists on this kernel and reports the others.
 *
 * Ownership of the map values: see vcpu_probes.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "vcpu_probes.h"

char LICENSE[] SEC("license") = "GPL";

#define RV_NR_IOCTL 16              /* x86-64 */
#define RV_NR_TGKILL 234
#define RV_KVM_RUN 0xae80           /* _IO(KVMIO, 0x80) */
#define RV_KVM_RESET_DIRTY_RINGS 0xaec7  /* _IO(KVMIO, 0xc7) */
#define RV_EINTR 4
#define RV_SI_TIMER (-2)
#define RV_STORAGE_CREATE 1         /* BPF_LOCAL_STORAGE_GET_F_CREATE */

/* Set by the loader before load. */
const volatile __u32 target_tgid = 0;
const volatile __u32 kick_signal = 10;  /* SIGUSR1 */
const volatile __u32 vcpu_count = 1;

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);         /* the loader sets the VM's vCPU count */
    __type(key, __u32);
    __type(value, struct rv_vcpu);
} vcpus SEC(".maps");

/* Thread id -> vCPU index; written by the loader, only read here. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, RV_MAX_VCPUS);
    __type(key, __u32);
    __type(value, __u32);
} tid_vcpu SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rv_global);
} global SEC(".maps");

/* Per-CPU cache of the last vCPU thread seen on this CPU: saves the hash
 * lookup on the hot path (dirty ring pushes come in runs from one thread).
 * The loader zeroes it whenever it changes tid_vcpu. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rv_tid_cache);
} tid_cache SEC(".maps");

/* Per-vCPU count of kvm:kvm_dirty_ring_reset (runs on the harvester, not
 * on the vCPU thread: per-CPU, summed by the loader). */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);         /* the loader sets the VM's vCPU count */
    __type(key, __u32);
    __type(value, __u64);
} ring_resets SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct rv_task);
} task_store SEC(".maps");

/* Only the parts we read; CO-RE relocates them (vmlinux or module BTF). */
struct kvm_dirty_ring___rv {
    int index;
} __attribute__((preserve_access_index));

struct trace_event_raw_kvm_exit___rv {
    unsigned int exit_reason;
    __u32 isa;
} __attribute__((preserve_access_index));

static __always_inline __u32 log2_u32(__u32 v)
{
    __u32 r, shift;
    r = (v > 0xFFFF) << 4; v >>= r;
    shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
    shift = (v > 0xF) << 2; v >>= shift; r |= shift;
    shift = (v > 0x3) << 1; v >>= shift; r |= shift;
    r |= (v >> 1);
    return r;
}

static __always_inline __u32 log2_u64(__u64 v)
{
    __u32 hi = v >> 32;
    return hi ? log2_u32(hi) + 32 : log2_u32((__u32)v);
}

/* An array index every kernel's verifier can bound. Clang drops a clamp it
 * can prove redundant and keeps 32-bit compares whose bound Linux 6.1's
 * verifier does not carry into the 64-bit address arithmetic ("math between
 * map_value pointer and register with unbounded min value", "R2 unbounded
 * memory access" on Debian 12's kernel). The empty asm makes the value opaque
 * to clang, so the clamp stays as written, on a 64-bit register. */
static __always_inline __u64 bounded_index(__u64 index, __u64 slots, __u64 fallback)
{
    asm volatile("" : "+r"(index));
    return index < slots ? index : fallback;
}

static __always_inline __u64 hist_slot(__u64 ns)
{
    return bounded_index(log2_u64(ns), RV_HIST_SLOTS, RV_HIST_SLOTS - 1);
}

static __always_inline void hist_add(struct rv_hist *h, __u64 ns)
{
    __u64 slot = hist_slot(ns);
    h->slots[slot]++;
    h->sum += ns;
}

static __always_inline void hist_add_n(struct rv_hist *h, __u64 ns, __u64 n)
{
    __u64 slot = hist_slot(ns);
    h->slots[slot] += n;
    h->sum += ns * n;
}

static __always_inline bool is_target(void)
{
    return (bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

/* The vCPU entry of the current thread if it is one of target_tgid's vCPU
 * threads, else NULL (one helper call for the filter and the tid). */
static __always_inline struct rv_vcpu *target_vcpu(void)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    if ((pid_tgid >> 32) != target_tgid)
        return NULL;
    __u32 tid = (__u32)pid_tgid;
    __u32 zero = 0, key;
    struct rv_tid_cache *cache = bpf_map_lookup_elem(&tid_cache, &zero);
    if (cache && cache->tid == tid && cache->vcpu_plus_one) {
        key = cache->vcpu_plus_one - 1;
        return bpf_map_lookup_elem(&vcpus, &key);
    }
    __u32 *index = bpf_map_lookup_elem(&tid_vcpu, &tid);
    if (!index)
        return NULL;
    key = *index;
    if (cache) {
        cache->tid = tid;
        cache->vcpu_plus_one = key + 1;
    }
    return bpf_map_lookup_elem(&vcpus, &key);
}

static __always_inline struct rv_vcpu *vcpu_of_tid(__u32 tid)
{
    __u32 *index = bpf_map_lookup_elem(&tid_vcpu, &tid);
    if (!index)
        return NULL;
    __u32 key = *index;
    return bpf_map_lookup_elem(&vcpus, &key);
}

static __always_inline struct rv_global *global_stats(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&global, &zero);
}

static __always_inline void note_unknown(void)
{
    struct rv_global *g = global_stats();
    if (g)
        g->unknown_vcpu_events++;
}

/* ---- KVM_RUN round trips -------------------------------------------- */

static __always_inline void run_entry(struct rv_vcpu *v, __u64 now)
{
    if (v->in_run)
        return;                     /* already seen (sys_enter before kvm_fpu) */
    __u32 slot = v->exit_slot;
    if (slot < RV_EXIT_SLOTS)
        hist_add(&v->user[slot], now - v->exit_ns);
    if (v->sleep_pending) {
        hist_add(&v->throttle_sleep, now - v->exit_ns);
        v->sleep_pending = 0;
    }
    v->entries++;
    v->entry_ns = now;
    v->in_run = 1;
}

/* Kicks that found the vCPU outside KVM_RUN: latency 0. Counted apart
 * (atomically: kickers and the vCPU thread both add here); the loader puts
 * them in bucket 0 of the kick histogram of their source, so that every
 * kick sent is in the histogram exactly once. */
static __always_inline void kick_outside_run(struct rv_vcpu *v, __u64 source, __u64 n)
{
    if (source & RV_KICK_SOURCE_TIMER)
        __sync_fetch_and_add(&v->kicks_outside_timer, n);
    else
        __sync_fetch_and_add(&v->kicks_outside_tgkill, n);
}

/* A kick that found the vCPU in KVM_RUN: queue its timestamp; the vCPU's
 * next exit takes it out. One that found it outside counts as latency 0. */
static __always_inline void kick(struct rv_vcpu *v, __u64 now, __u64 source)
{
    if (!v->in_run) {
        kick_outside_run(v, source, 1);
        return;
    }
    __u64 slot = __sync_fetch_and_add(&v->kicks_queued, 1);
    v->kick_ns[slot & (RV_KICK_QUEUE - 1)] = (now & ~RV_KICK_SOURCE_TIMER) | source;
}

static __always_inline void consume_kicks(struct rv_vcpu *v, __u64 now, __u64 entry_ns)
{
    __u64 queued = *(volatile __u64 *)&v->kicks_queued;
    __u64 consumed = v->kicks_consumed;
    __u64 overflow = 0;
    bool vmm_stamp_done = false;

    if (queued == consumed)
        return;
    if (queued - consumed > RV_KICK_QUEUE) {
        /* More kicks than slots during one run (a long stall with
         * re-kicks): the oldest stamps were overwritten. They count with
         * the latency of the oldest surviving kick, a lower bound. */
        overflow = queued - consumed - RV_KICK_QUEUE;
        v->kicks_lost += overflow;
        consumed = queued - RV_KICK_QUEUE;
    }
    for (int i = 0; i < RV_KICK_QUEUE; i++) {
        if (consumed >= queued)
            break;
        __u32 index = consumed & (RV_KICK_QUEUE - 1);
        __u64 stamp = v->kick_ns[index];
        if (stamp == 0)
            break;                  /* kicker between its add and its store */
        v->kick_ns[index] = 0;
        consumed++;
        __u64 at = stamp & ~RV_KICK_SOURCE_TIMER;
        if (at < entry_ns) {
            /* Queued against a run that had already ended: it found the
             * vCPU outside KVM_RUN after all (latency 0). */
            kick_outside_run(v, stamp & RV_KICK_SOURCE_TIMER, 1 + overflow);
            overflow = 0;
            continue;
        }
        __u64 latency = now > at ? now - at : 0;
        struct rv_hist *hist = (stamp & RV_KICK_SOURCE_TIMER) ? &v->kick_timer : &v->kick_tgkill;
        hist_add(hist, latency);
        if (overflow) {
            hist_add_n(hist, latency, overflow);
            overflow = 0;
        }
        if (stamp & RV_KICK_SOURCE_TIMER) {
            v->sleep_pending = 1;
        } else if (!vmm_stamp_done && v->vmm_kick_addr) {
            __u64 sent = 0;
            vmm_stamp_done = true;
            if (bpf_probe_read_user(&sent, sizeof(sent), (const void *)v->vmm_kick_addr) == 0 && sent != 0 &&
                sent <= now && now - sent < 10000000000ULL)
                hist_add(&v->kick_vmm_stamp, now - sent);
        }
    }
    v->kicks_consumed = consumed;
}

SEC("?tp_btf/kvm_userspace_exit")
int BPF_PROG(rv_userspace_exit, __u32 reason, int err)
{
    struct rv_vcpu *v = target_vcpu();
    if (!v)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    __u32 slot;
    if (err < 0)
        slot = err == -RV_EINTR ? RV_EXIT_SLOT_EINTR : RV_EXIT_SLOT_ERROR;
    else
        slot = reason < RV_EXIT_REASONS ? reason : RV_EXIT_SLOT_OTHER;

    v->exits[slot]++;
    __u64 entry_ns = v->entry_ns;
    if (v->in_run)
        hist_add(&v->guest[slot], now - entry_ns);
    v->in_run = 0;
    v->exit_ns = now;
    v->exit_slot = slot;
    consume_kicks(v, now, entry_ns);
    return 0;
}

/* KVM_RUN entry, fallback when raw_syscalls:sys_enter is unavailable. */
SEC("?tp_btf/kvm_fpu")
int BPF_PROG(rv_kvm_fpu, int load)
{
    if (load != 1)
        return 0;
    struct rv_vcpu *v = target_vcpu();
    if (v)
        run_entry(v, bpf_ktime_get_ns());
    return 0;
}

SEC("?tp_btf/sys_enter")
int BPF_PROG(rv_sys_enter, struct pt_regs *regs, long id)
{
    if (!is_target())
        return 0;
    if (id == RV_NR_IOCTL) {
        unsigned long request = regs->si;
        if (request == RV_KVM_RUN) {
            struct rv_vcpu *v = target_vcpu();
            if (v)
                run_entry(v, bpf_ktime_get_ns());
        } else if (request == RV_KVM_RESET_DIRTY_RINGS) {
            struct rv_task *task = bpf_task_storage_get(&task_store, bpf_get_current_task_btf(), 0,
                                                        RV_STORAGE_CREATE);
            if (task)
                task->reset_start_ns = bpf_ktime_get_ns();
        }
    } else if (id == RV_NR_TGKILL) {
        if ((__u32)regs->di != target_tgid || (__u32)regs->dx != kick_signal)
            return 0;
        struct rv_vcpu *v = vcpu_of_tid((__u32)regs->si);
        if (!v)
            return 0;
        __sync_fetch_and_add(&v->kicks_tgkill, 1);
        kick(v, bpf_ktime_get_ns(), 0);
    }
    return 0;
}

SEC("?tp_btf/sys_exit")
int BPF_PROG(rv_sys_exit, struct pt_regs *regs, long ret)
{
    if (!is_target())
        return 0;
    if (regs->orig_ax != RV_NR_IOCTL)
        return 0;
    struct rv_task *task = bpf_task_storage_get(&task_store, bpf_get_current_task_btf(), 0, 0);
    if (!task || task->reset_start_ns == 0)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    struct rv_global *g = global_stats();
    if (g) {
        g->reset_ioctls++;
        if (ret < 0)
            g->reset_errors++;
        hist_add(&g->reset_latency, now - task->reset_start_ns);
    }
    task->reset_start_ns = 0;
    return 0;
}

/* The throttle timer's signal (SIGEV_THREAD_ID, si_code SI_TIMER), raised
 * in interrupt context: filter on the target task, not on current. */
SEC("?tp_btf/signal_generate")
int BPF_PROG(rv_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *task,
             int group, int result)
{
    if ((__u32)sig != kick_signal || result != 0)
        return 0;
    if ((unsigned long)info < 4096)
        return 0;                   /* SEND_SIG_NOINFO / SEND_SIG_PRIV */
    if ((__u32)task->tgid != target_tgid)
        return 0;
    /* Read, not dereferenced: since info may be SEND_SIG_PRIV (1), newer
     * verifiers (6.18 here) type it as a scalar ("may encode error") and
     * refuse a direct access with EACCES. */
    if (BPF_CORE_READ(info, si_code) != RV_SI_TIMER)
        return 0;
    struct rv_vcpu *v = vcpu_of_tid((__u32)task->pid);
    if (!v)
        return 0;
    __sync_fetch_and_add(&v->kicks_timer, 1);
    kick(v, bpf_ktime_get_ns(), RV_KICK_SOURCE_TIMER);
    return 0;
}

SEC("?tp_btf/sched_switch")
int BPF_PROG(rv_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
             unsigned int prev_state)
{
    __u32 tgid = target_tgid;
    bool prev_ours = (__u32)prev->tgid == tgid;
    bool next_ours = (__u32)next->tgid == tgid;
    if (!prev_ours && !next_ours)
        return 0;
    __u64 now = bpf_ktime_get_ns();
    if (prev_ours) {
        struct rv_vcpu *v = vcpu_of_tid((__u32)prev->pid);
        if (v) {
            v->switch_out_ns = now;
            v->switch_out_in_run = v->in_run;
        }
    }
    if (next_ours) {
        struct rv_vcpu *v = vcpu_of_tid((__u32)next->pid);
        if (v && v->switch_out_ns) {
            __u64 off = now - v->switch_out_ns;
            if (v->switch_out_in_run)
                hist_add(&v->offcpu_in_run, off);
            else
                hist_add(&v->offcpu_user, off);
            v->switch_out_ns = 0;
        }
    }
    return 0;
}

/* vCPU threads name themselves "vcpu<N>" as they start: register them
 * here, so probes attached before vm_start see the first KVM_RUN. */
SEC("?tp_btf/task_rename")
int BPF_PROG(rv_task_rename, struct task_struct *task, const char *comm)
{
    if ((__u32)task->tgid != target_tgid)
        return 0;
    char name[16] = {};
    if (bpf_probe_read_kernel_str(name, sizeof(name), comm) < 0)
        return 0;
    if (name[0] != 'v' || name[1] != 'c' || name[2] != 'p' || name[3] != 'u')
        return 0;
    __u32 index = 0;
    bool digits = false;
    for (int i = 4; i < 16; i++) {
        char c = name[i];
        if (c == 0)
            break;
        if (c < '0' || c > '9' || index > 100000)
            return 0;
        index = index * 10 + (__u32)(c - '0');
        digits = true;
    }
    if (!digits || index >= vcpu_count)
        return 0;
    __u32 tid = (__u32)task->pid;
    bpf_map_update_elem(&tid_vcpu, &tid, &index, BPF_ANY);
    return 0;
}

/* ---- dirty ring ------------------------------------------------------ */

SEC("?tp_btf/kvm_dirty_ring_push")
int BPF_PROG(rv_dirty_ring_push, void *ring, __u32 slot, __u64 offset)
{
    struct rv_vcpu *v = target_vcpu();
    if (v)
        v->dirty_pushes++;
    else if (is_target())
        note_unknown();
    return 0;
}

SEC("?tp_btf/kvm_dirty_ring_exit")
int BPF_PROG(rv_dirty_ring_exit, void *vcpu)
{
    struct rv_vcpu *v = target_vcpu();
    if (v)
        v->ring_full_exits++;
    else if (is_target())
        note_unknown();
    return 0;
}

SEC("?tp_btf/kvm_dirty_ring_reset")
int BPF_PROG(rv_dirty_ring_reset, void *ring)
{
    if (!is_target())
        return 0;
    struct rv_global *g = global_stats();
    if (g)
        g->ring_resets++;
    __u32 index = (__u32)BPF_CORE_READ((struct kvm_dirty_ring___rv *)ring, index);
    __u64 *count = bpf_map_lookup_elem(&ring_resets, &index);
    if (count)
        (*count)++;
    return 0;
}

/* ---- in-kernel exits (VMX/SVM hosts; never fires under PVM) ---------- */

SEC("?tp_btf/kvm_exit")
int BPF_PROG(rv_kvm_exit_btf, void *vcpu, __u32 isa)
{
    struct rv_vcpu *v = target_vcpu();
    if (v)
        v->kvm_exits++;
    return 0;
}

SEC("?tracepoint/kvm/kvm_exit")
int rv_kvm_exit_reason(struct trace_event_raw_kvm_exit___rv *ctx)
{
    if (!is_target())
        return 0;
    struct rv_global *g = global_stats();
    if (!g)
        return 0;
    __u32 reason = BPF_CORE_READ(ctx, exit_reason);
    __u32 isa = BPF_CORE_READ(ctx, isa);
    __u32 slot;
    if (isa == 1)
        reason &= 0xffff;           /* VMX: basic exit reason */
    if (reason < RV_HW_SLOT_SVM_NPF_BASE)
        slot = reason;
    else if (reason >= 0x400 && reason < 0x480)
        slot = RV_HW_SLOT_SVM_NPF_BASE + (reason - 0x400);
    else
        slot = RV_HW_SLOT_OTHER;
    g->hw_reasons[bounded_index(slot, RV_HW_REASON_SLOTS, RV_HW_SLOT_OTHER)]++;
    g->hw_exits++;
    g->hw_isa = isa;
    return 0;
}
