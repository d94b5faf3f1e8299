/*
 * Loader of bpf/vcpu_probes.bpf.c (libbpf skeleton) and the bpf/probes.h
 * API on top of it.
 *
 * Threads: struct bpf_probes is shared by the VMM's controller threads (API
 * worker, migration, main); `lock` serializes every public function. The
 * BPF programs write the maps concurrently (see vcpu_probes.h for which
 * context owns which field); this file only reads them after start, except
 * for re-initializing the per-vCPU state machine while detached.
 */
#include "bpf/probes.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/capability.h>
#include <linux/types.h>
#include <sys/syscall.h>

#include "bpf/vcpu_probes.h"
#include "vcpu_probes.skel.h"
#include "vmm/monotonic.h"
#include "vmm/vcpu_internal.h"
#include "vmm/vm.h"

_Static_assert(RV_HIST_SLOTS == BPF_PROBES_HIST_BUCKETS, "histogram layouts differ");
_Static_assert(RV_EXIT_SLOTS == BPF_PROBES_EXIT_SLOTS, "exit slot layouts differ");
_Static_assert(RV_HW_REASON_SLOTS == BPF_PROBES_HW_REASONS, "hardware reason layouts differ");
_Static_assert(VCPU_KICK_LATENCY_BUCKETS == BPF_PROBES_HIST_BUCKETS, "the VMM's kick latency buckets differ");

/* ---- the program table ---------------------------------------------------- */

enum prog_id {
    PROG_USERSPACE_EXIT,
    PROG_KVM_FPU,
    PROG_SYS_ENTER,
    PROG_SYS_EXIT,
    PROG_SIGNAL_GENERATE,
    PROG_SCHED_SWITCH,
    PROG_RING_PUSH,
    PROG_RING_EXIT,
    PROG_RING_RESET,
    PROG_KVM_EXIT_BTF,
    PROG_KVM_EXIT_REASON,
    PROG_TASK_RENAME,
    PROG_COUNT,
};

struct prog_info {
    const char *tracepoint;     /* "kvm_userspace_exit": btf_trace_<name>, or "kvm/kvm_exit" (classic) */
    bool classic;
};

static const struct prog_info prog_table[PROG_COUNT] = {
    [PROG_USERSPACE_EXIT] = { "kvm_userspace_exit", false },
    [PROG_KVM_FPU] = { "kvm_fpu", false },
    [PROG_SYS_ENTER] = { "sys_enter", false },
    [PROG_SYS_EXIT] = { "sys_exit", false },
    [PROG_SIGNAL_GENERATE] = { "signal_generate", false },
    [PROG_SCHED_SWITCH] = { "sched_switch", false },
    [PROG_RING_PUSH] = { "kvm_dirty_ring_push", false },
    [PROG_RING_EXIT] = { "kvm_dirty_ring_exit", false },
    [PROG_RING_RESET] = { "kvm_dirty_ring_reset", false },
    [PROG_KVM_EXIT_BTF] = { "kvm_exit", false },
    [PROG_KVM_EXIT_REASON] = { "kvm/kvm_exit", true },
    [PROG_TASK_RENAME] = { "task_rename", false },
};

static struct bpf_program *skel_prog(struct vcpu_probes_bpf *skel, enum prog_id id)
{
    switch (id) {
    case PROG_USERSPACE_EXIT: return skel->progs.rv_userspace_exit;
    case PROG_KVM_FPU: return skel->progs.rv_kvm_fpu;
    case PROG_SYS_ENTER: return skel->progs.rv_sys_enter;
    case PROG_SYS_EXIT: return skel->progs.rv_sys_exit;
    case PROG_SIGNAL_GENERATE: return skel->progs.rv_signal_generate;
    case PROG_SCHED_SWITCH: return skel->progs.rv_sched_switch;
    case PROG_RING_PUSH: return skel->progs.rv_dirty_ring_push;
    case PROG_RING_EXIT: return skel->progs.rv_dirty_ring_exit;
    case PROG_RING_RESET: return skel->progs.rv_dirty_ring_reset;
    case PROG_KVM_EXIT_BTF: return skel->progs.rv_kvm_exit_btf;
    case PROG_KVM_EXIT_REASON: return skel->progs.rv_kvm_exit_reason;
    case PROG_TASK_RENAME: return skel->progs.rv_task_rename;
    case PROG_COUNT: break;
    }
    return NULL;
}

/* ---- the object ------------------------------------------------------------- */

struct bpf_probes {
    pthread_mutex_t lock;
    struct vm *vm;                          /* immutable */
    unsigned vcpu_count;                    /* immutable */
    int possible_cpus;                      /* immutable */
    struct vcpu_probes_bpf *skel;           /* loaded; immutable */

    /* Under lock. */
    pid_t *tids;                            /* vcpu_count; 0 = unknown */
    bool *tid_explicit;                     /* set with bpf_probes_set_vcpu_tid */
    bool initialized;                       /* per-vCPU map entries written once */
    struct vmm_base {                       /* the VMM's counters at the first start */
        uint64_t exits_io, exits_mmio, exits_intr, exits_dirty_ring_full;
        uint64_t kicks_sent, throttle_sleeps, throttle_sleep_ns;
        struct bpf_probes_hist kick_latency;    /* the VMM's own kick latency */
    } *vmm_base;                            /* vcpu_count */
    bool running;
    uint64_t started_ns;
    uint64_t attached_ns;                   /* closed intervals */
    bool loaded[PROG_COUNT];
    char prog_reason[PROG_COUNT][160];      /* why not loaded / not attached */
    struct bpf_link *links[PROG_COUNT];
};

/* libbpf's messages: kept (last few KiB) for the error reason, printed
 * only with RINGVM_BPF_DEBUG=1. libbpf's print hook is process-wide. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_text[4096];
static size_t log_length;

static int libbpf_print(enum libbpf_print_level level, const char *format, va_list args)
{
    const char *debug = getenv("RINGVM_BPF_DEBUG");
    if (debug != NULL && strcmp(debug, "1") == 0) {
        va_list copy;
        va_copy(copy, args);
        vfprintf(stderr, format, copy);
        va_end(copy);
    }
    if (level == LIBBPF_DEBUG)
        return 0;
    pthread_mutex_lock(&log_lock);
    if (log_length + 256 >= sizeof(log_text))
        log_length = 0;
    int n = vsnprintf(log_text + log_length, sizeof(log_text) - log_length, format, args);
    if (n > 0)
        log_length += (size_t)n < sizeof(log_text) - log_length ? (size_t)n : sizeof(log_text) - log_length - 1;
    pthread_mutex_unlock(&log_lock);
    return 0;
}

static void log_reset(void)
{
    pthread_mutex_lock(&log_lock);
    log_length = 0;
    log_text[0] = '\0';
    pthread_mutex_unlock(&log_lock);
}

/* The last libbpf line (without "libbpf: " and the newline). */
static void log_last_line(char *out, size_t size)
{
    pthread_mutex_lock(&log_lock);
    char copy[sizeof(log_text)];
    memcpy(copy, log_text, log_length);
    copy[log_length] = '\0';
    pthread_mutex_unlock(&log_lock);
    size_t length = strlen(copy);
    while (length > 0 && copy[length - 1] == '\n')
        copy[--length] = '\0';
    char *line = strrchr(copy, '\n');
    line = line ? line + 1 : copy;
    if (strncmp(line, "libbpf: ", 8) == 0)
        line += 8;
    snprintf(out, size, "%s", line);
}

static void set_error(char *error, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));
static void set_error(char *error, size_t size, const char *format, ...)
{
    if (error == NULL || size == 0)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(error, size, format, args);
    va_end(args);
}

bool bpf_probes_built(const char **reason)
{
    if (reason)
        *reason = NULL;
    return true;
}

/* CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN (kernels before 5.8), in the
 * effective set. */
static bool bpf_capabilities_present(void)
{
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &header, data) != 0)
        return false;
    uint64_t effective = (uint64_t)data[1].effective << 32 | data[0].effective;
    bool sys_admin = effective & (1ULL << CAP_SYS_ADMIN);
    bool bpf_and_perfmon = (effective & (1ULL << CAP_BPF)) && (effective & (1ULL << CAP_PERFMON));
    return sys_admin || bpf_and_perfmon;
}

/* ---- availability of attach points ------------------------------------------ */

static bool btf_has_tracepoint(const struct btf *vmlinux, const struct btf *kvm, const char *name)
{
    char type_name[128];
    snprintf(type_name, sizeof(type_name), "btf_trace_%s", name);
    if (vmlinux && btf__find_by_name_kind(vmlinux, type_name, BTF_KIND_TYPEDEF) > 0)
        return true;
    return kvm && btf__find_by_name_kind(kvm, type_name, BTF_KIND_TYPEDEF) > 0;
}

static bool tracefs_has_event(const char *event)
{
    static const char *const roots[] = { "/sys/kernel/tracing", "/sys/kernel/debug/tracing" };
    for (unsigned i = 0; i < 2; i++) {
        char path[256];
        snprintf(path, sizeof(path), "%s/events/%s/id", roots[i], event);
        if (access(path, R_OK) == 0)
            return true;
    }
    return false;
}

/* Decides which programs to load; fills prog_reason for the others. */
static void choose_programs(struct bpf_probes *probes, bool wanted[PROG_COUNT])
{
    struct btf *vmlinux = btf__load_vmlinux_btf();
    if (libbpf_get_error(vmlinux))
        vmlinux = NULL;
    struct btf *kvm = vmlinux ? btf__load_module_btf("kvm", vmlinux) : NULL;
    if (libbpf_get_error(kvm))
        kvm = NULL;

    for (unsigned i = 0; i < PROG_COUNT; i++) {
        const struct prog_info *info = &prog_table[i];
        if (info->classic) {
            wanted[i] = tracefs_has_event(info->tracepoint);
            if (!wanted[i])
                snprintf(probes->prog_reason[i], sizeof(probes->prog_reason[i]),
                         "tracepoint %s not in tracefs (tracefs not mounted at /sys/kernel/tracing, "
                         "or no such event)", info->tracepoint);
        } else {
            wanted[i] = btf_has_tracepoint(vmlinux, kvm, info->tracepoint);
            if (!wanted[i])
                snprintf(probes->prog_reason[i], sizeof(probes->prog_reason[i]),
                         "tracepoint %s not in the kernel's BTF", info->tracepoint);
        }
    }
    /* kvm_fpu is only the fallback KVM_RUN entry (it may fire outside
     * KVM_RUN too); sys_enter of the ioctl is exact. */
    if (wanted[PROG_SYS_ENTER] && wanted[PROG_KVM_FPU]) {
        wanted[PROG_KVM_FPU] = false;
        snprintf(probes->prog_reason[PROG_KVM_FPU], sizeof(probes->prog_reason[PROG_KVM_FPU]),
                 "not needed: KVM_RUN entry from raw_syscalls:sys_enter");
    }
    btf__free(kvm);
    btf__free(vmlinux);
}

static int open_skeleton(struct bpf_probes *probes, const bool load[PROG_COUNT], struct vcpu_probes_bpf **out)
{
    struct vcpu_probes_bpf *skel = vcpu_probes_bpf__open();
    if (skel == NULL)
        return errno ? -errno : -ENOMEM;
    int rc = 0;
    for (unsigned i = 0; i < PROG_COUNT && rc == 0; i++)
        rc = bpf_program__set_autoload(skel_prog(skel, i), load[i]);
    if (rc == 0)
        rc = bpf_map__set_max_entries(skel->maps.vcpus, probes->vcpu_count);
    if (rc == 0)
        rc = bpf_map__set_max_entries(skel->maps.ring_resets, probes->vcpu_count);
    if (rc != 0) {
        vcpu_probes_bpf__destroy(skel);
        return rc < 0 ? rc : -EINVAL;
    }
    skel->rodata->target_tgid = (__u32)getpid();
    skel->rodata->kick_signal = VCPU_KICK_SIGNAL;
    skel->rodata->vcpu_count = probes->vcpu_count;
    *out = skel;
    return 0;
}

static int load_programs(struct bpf_probes *probes, const bool load[PROG_COUNT], struct vcpu_probes_bpf **out)
{
    int rc = open_skeleton(probes, load, out);
    if (rc != 0)
        return rc;
    rc = vcpu_probes_bpf__load(*out);
    if (rc != 0) {
        vcpu_probes_bpf__destroy(*out);
        *out = NULL;
        return rc < 0 ? rc : -EINVAL;
    }
    return 0;
}

int bpf_probes_create(struct bpf_probes **out, struct vm *vm, char *error, size_t error_size)
{
    *out = NULL;
    const char *disable = getenv("RINGVM_BPF_DISABLE");
    if (disable != NULL && *disable != '\0' && strcmp(disable, "0") != 0) {
        set_error(error, error_size, "disabled by RINGVM_BPF_DISABLE=%s", disable);
        return -ENOTSUP;
    }
    if (vm == NULL || vm->config.vcpu_count == 0 || vm->config.vcpu_count > RV_MAX_VCPUS) {
        set_error(error, error_size, "no VM or unsupported vCPU count");
        return -EINVAL;
    }
    if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
        set_error(error, error_size, "kernel has no BTF (/sys/kernel/btf/vmlinux: %s)", strerror(errno));
        return -ENOTSUP;
    }

    struct bpf_probes *probes = calloc(1, sizeof(*probes));
    if (probes == NULL) {
        set_error(error, error_size, "out of memory");
        return -ENOMEM;
    }
    probes->vm = vm;
    probes->vcpu_count = vm->config.vcpu_count;
    probes->tids = calloc(probes->vcpu_count, sizeof(*probes->tids));
    probes->tid_explicit = calloc(probes->vcpu_count, sizeof(*probes->tid_explicit));
    probes->vmm_base = calloc(probes->vcpu_count, sizeof(*probes->vmm_base));
    int rc = pthread_mutex_init(&probes->lock, NULL);
    if (probes->tids == NULL || probes->tid_explicit == NULL || probes->vmm_base == NULL || rc != 0) {
        free(probes->tids);
        free(probes->tid_explicit);
        free(probes->vmm_base);
        free(probes);
        set_error(error, error_size, "out of memory");
        return -ENOMEM;
    }
    probes->possible_cpus = libbpf_num_possible_cpus();
    if (probes->possible_cpus <= 0) {
        set_error(error, error_size, "cannot count possible CPUs: %s", strerror(-probes->possible_cpus));
        bpf_probes_destroy(probes);
        return -EINVAL;
    }

    libbpf_set_print(libbpf_print);
    log_reset();

    bool wanted[PROG_COUNT];
    choose_programs(probes, wanted);
    if (!wanted[PROG_USERSPACE_EXIT]) {
        set_error(error, error_size, "%s", probes->prog_reason[PROG_USERSPACE_EXIT]);
        bpf_probes_destroy(probes);
        return -ENOTSUP;
    }

    rc = load_programs(probes, wanted, &probes->skel);
    /* EPERM/EACCES mean "not allowed" only without the capabilities; with
     * them it is the verifier refusing a program (EACCES), which the
     * per-program pass below names with its log line. */
    if ((rc == -EPERM || rc == -EACCES) && !bpf_capabilities_present()) {
        set_error(error, error_size, "loading BPF programs: %s (needs root, or CAP_BPF + CAP_PERFMON)",
                  strerror(-rc));
        bpf_probes_destroy(probes);
        return rc;
    }
    if (rc != 0) {
        /* Find the programs this kernel refuses: each alone, then all that
         * loaded alone together. Only on this failure path. */
        char first_reason[160];
        log_last_line(first_reason, sizeof(first_reason));
        for (unsigned i = 0; i < PROG_COUNT; i++) {
            if (!wanted[i])
                continue;
            bool alone[PROG_COUNT] = { false };
            alone[i] = true;
            struct vcpu_probes_bpf *skel = NULL;
            log_reset();
            int one = load_programs(probes, alone, &skel);
            if (one != 0) {
                char last[120];
                log_last_line(last, sizeof(last));
                snprintf(probes->prog_reason[i], sizeof(probes->prog_reason[i]), "load failed: %s%s%s",
                         strerror(-one), *last ? ": " : "", last);
                wanted[i] = false;
            }
            vcpu_probes_bpf__destroy(skel);
        }
        if (!wanted[PROG_USERSPACE_EXIT]) {
            set_error(error, error_size, "loading BPF programs: %s (%s)", strerror(-rc), first_reason);
            bpf_probes_destroy(probes);
            return rc;
        }
        rc = load_programs(probes, wanted, &probes->skel);
        if (rc != 0) {
            set_error(error, error_size, "loading BPF programs: %s (%s)", strerror(-rc), first_reason);
            bpf_probes_destroy(probes);
            return rc;
        }
    }
    for (unsigned i = 0; i < PROG_COUNT; i++)
        probes->loaded[i] = wanted[i];
    *out = probes;
    return 0;
}

void bpf_probes_destroy(struct bpf_probes *probes)
{
    if (probes == NULL)
        return;
    bpf_probes_stop(probes);
    vcpu_probes_bpf__destroy(probes->skel);
    pthread_mutex_destroy(&probes->lock);
    free(probes->tids);
    free(probes->tid_explicit);
    free(probes->vmm_base);
    free(probes);
}

/* ---- vCPU threads ------------------------------------------------------------- */

static int clear_tid_cache(struct bpf_probes *probes);

int bpf_probes_set_vcpu_tid(struct bpf_probes *probes, unsigned vcpu, pid_t tid)
{
    if (probes == NULL || vcpu >= probes->vcpu_count || tid <= 0)
        return -EINVAL;
    pthread_mutex_lock(&probes->lock);
    pid_t old = probes->tids[vcpu];
    probes->tids[vcpu] = tid;
    probes->tid_explicit[vcpu] = true;
    int rc = 0;
    if (probes->initialized && old != 0 && old != tid) {
        __u32 old_key = (__u32)old;
        if (bpf_map__delete_elem(probes->skel->maps.tid_vcpu, &old_key, sizeof(old_key), 0) != 0 && errno != ENOENT)
            rc = -errno;
    }
    if (rc == 0 && probes->running) {
        __u32 key = (__u32)tid, value = vcpu;
        if (bpf_map__update_elem(probes->skel->maps.tid_vcpu, &key, sizeof(key), &value, sizeof(value), BPF_ANY) != 0)
            rc = -errno;
        else
            rc = clear_tid_cache(probes);
    }
    pthread_mutex_unlock(&probes->lock);
    return rc;
}

/* Fills the tids not set explicitly from /proc/self/task/x/comm "vcpu<N>".
 * Returns the number of vCPUs still unknown, or -errno. */
static int scan_vcpu_threads(struct bpf_probes *probes, char *error, size_t error_size)
{
    DIR *dir = opendir("/proc/self/task");
    if (dir == NULL) {
        int saved = errno;
        set_error(error, error_size, "opendir /proc/self/task: %s", strerror(saved));
        return -saved;
    }
    pid_t *found = calloc(probes->vcpu_count, sizeof(*found));
    if (found == NULL) {
        closedir(dir);
        set_error(error, error_size, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9')
            continue;
        char path[300], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", entry->d_name);
        FILE *file = fopen(path, "r");
        if (file == NULL)
            continue;               /* thread exited meanwhile */
        if (fgets(comm, sizeof(comm), file) == NULL)
            comm[0] = '\0';
        fclose(file);
        unsigned index;
        char tail;
        if (sscanf(comm, "vcpu%u%c", &index, &tail) != 2 || tail != '\n' || index >= probes->vcpu_count)
            continue;
        pid_t tid = (pid_t)strtol(entry->d_name, NULL, 10);
        if (found[index] != 0 && found[index] != tid && !probes->tid_explicit[index]) {
            set_error(error, error_size,
                      "two threads are named vcpu%u (%d and %d): several VMs in this process - "
                      "pass the tids with bpf_probes_set_vcpu_tid", index, found[index], tid);
            rc = -EEXIST;
            break;
        }
        found[index] = tid;
    }
    closedir(dir);
    int missing = 0;
    if (rc == 0) {
        for (unsigned i = 0; i < probes->vcpu_count; i++) {
            if (!probes->tid_explicit[i])
                probes->tids[i] = found[i];
            if (probes->tids[i] == 0)
                missing++;
        }
        rc = missing;
    }
    free(found);
    return rc;
}

static int resolve_vcpu_threads(struct bpf_probes *probes, char *error, size_t error_size)
{
    /* vCPU threads name themselves as they start: give them a second. */
    uint64_t deadline = monotonic_now_ns() + 1000000000ULL;
    for (;;) {
        int missing = scan_vcpu_threads(probes, error, error_size);
        if (missing <= 0)
            return missing;
        if (monotonic_now_ns() >= deadline) {
            set_error(error, error_size, "%d of %u vCPU threads not found (no thread named vcpu<N>; "
                      "is the VM started?)", missing, probes->vcpu_count);
            return -ESRCH;
        }
        struct timespec pause = { 0, 1000000 };
        nanosleep(&pause, NULL);
    }
}

static void read_vmm_counters(struct bpf_probes *probes, unsigned index, struct vmm_base *out)
{
    const struct vcpu_counters *c = &probes->vm->vcpus[index].counters;
    out->exits_io = atomic_load_explicit(&c->exits_io, memory_order_relaxed);
    out->exits_mmio = atomic_load_explicit(&c->exits_mmio, memory_order_relaxed);
    out->exits_intr = atomic_load_explicit(&c->exits_intr, memory_order_relaxed);
    out->exits_dirty_ring_full = atomic_load_explicit(&c->exits_dirty_ring_full, memory_order_relaxed);
    out->kicks_sent = atomic_load_explicit(&c->kicks_sent, memory_order_relaxed);
    out->throttle_sleeps = atomic_load_explicit(&c->throttle_sleeps, memory_order_relaxed);
    out->throttle_sleep_ns = atomic_load_explicit(&c->throttle_sleep_ns, memory_order_relaxed);
    /* Each field on its own: count, sum and buckets may disagree by the
     * one kick being recorded meanwhile; count is the sum of the buckets. */
    out->kick_latency.count = 0;
    out->kick_latency.sum_ns = atomic_load_explicit(&c->kick_latency_sum_ns, memory_order_relaxed);
    for (unsigned b = 0; b < VCPU_KICK_LATENCY_BUCKETS; b++) {
        out->kick_latency.buckets[b] = atomic_load_explicit(&c->kick_latency_buckets[b], memory_order_relaxed);
        out->kick_latency.count += out->kick_latency.buckets[b];
    }
}

/* Per-vCPU entries: zeroed the first time; afterwards only the state
 * machine is reset (the programs are detached: nothing else writes). */
static int init_vcpu_entries(struct bpf_probes *probes, char *error, size_t error_size)
{
    struct rv_vcpu *value = malloc(sizeof(*value));
    if (value == NULL) {
        set_error(error, error_size, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    for (__u32 i = 0; i < probes->vcpu_count && rc == 0; i++) {
        if (!probes->initialized) {
            memset(value, 0, sizeof(*value));
            read_vmm_counters(probes, i, &probes->vmm_base[i]);
        } else if (bpf_map__lookup_elem(probes->skel->maps.vcpus, &i, sizeof(i), value, sizeof(*value), 0) != 0) {
            rc = -errno;
            set_error(error, error_size, "reading the vCPU map: %s", strerror(errno));
            break;
        }
        value->vmm_kick_addr = (__u64)(uintptr_t)&probes->vm->vcpus[i].kick_sent_ns;
        value->in_run = 0;
        value->exit_slot = 0xffffffffu;
        value->sleep_pending = 0;
        value->switch_out_ns = 0;
        memset(value->kick_ns, 0, sizeof(value->kick_ns));
        value->kicks_consumed = value->kicks_queued;
        if (bpf_map__update_elem(probes->skel->maps.vcpus, &i, sizeof(i), value, sizeof(*value), BPF_ANY) != 0) {
            rc = -errno;
            set_error(error, error_size, "writing the vCPU map: %s", strerror(errno));
        }
    }
    free(value);
    if (rc == 0)
        probes->initialized = true;
    return rc;
}

/* Empties every CPU's tid cache (after any change of tid_vcpu). */
static int clear_tid_cache(struct bpf_probes *probes)
{
    size_t count = (size_t)probes->possible_cpus;
    struct rv_tid_cache *values = calloc(count, sizeof(*values));
    if (values == NULL)
        return -ENOMEM;
    __u32 zero = 0;
    int rc = 0;
    if (bpf_map__update_elem(probes->skel->maps.tid_cache, &zero, sizeof(zero), values, count * sizeof(*values),
                             BPF_ANY) != 0)
        rc = -errno;
    free(values);
    return rc;
}

static int fill_tid_map(struct bpf_probes *probes, char *error, size_t error_size)
{
    for (unsigned i = 0; i < probes->vcpu_count; i++) {
        if (probes->tids[i] == 0)
            continue;
        __u32 key = (__u32)probes->tids[i], value = i;
        if (bpf_map__update_elem(probes->skel->maps.tid_vcpu, &key, sizeof(key), &value, sizeof(value), BPF_ANY) != 0) {
            int saved = errno;
            set_error(error, error_size, "writing the tid map: %s", strerror(saved));
            return -saved;
        }
    }
    int rc = clear_tid_cache(probes);
    if (rc != 0)
        set_error(error, error_size, "clearing the tid cache: %s", strerror(-rc));
    return rc;
}

/* ---- start / stop --------------------------------------------------------------- */

static void detach_all(struct bpf_probes *probes)
{
    for (unsigned i = 0; i < PROG_COUNT; i++) {
        bpf_link__destroy(probes->links[i]);
        probes->links[i] = NULL;
    }
}

int bpf_probes_start(struct bpf_probes *probes, char *error, size_t error_size)
{
    if (probes == NULL) {
        set_error(error, error_size, "BPF probes not loaded");
        return -EINVAL;
    }
    pthread_mutex_lock(&probes->lock);
    int rc = 0;
    if (probes->running)
        goto out;
    bool any_started = false;
    for (unsigned i = 0; i < probes->vcpu_count; i++)
        any_started |= probes->vm->vcpus[i].thread_started;
    if (any_started) {
        rc = resolve_vcpu_threads(probes, error, error_size);
    } else if (!probes->loaded[PROG_TASK_RENAME]) {
        set_error(error, error_size, "the VM is not started and task_rename is unavailable (%s): "
                  "start the probes after vm_start", probes->prog_reason[PROG_TASK_RENAME]);
        rc = -EAGAIN;
    }
    if (rc == 0)
        rc = init_vcpu_entries(probes, error, error_size);
    if (rc == 0)
        rc = fill_tid_map(probes, error, error_size);
    if (rc != 0)
        goto out;
    for (unsigned i = 0; i < PROG_COUNT; i++) {
        if (!probes->loaded[i])
            continue;
        log_reset();
        struct bpf_link *link = bpf_program__attach(skel_prog(probes->skel, i));
        if (link == NULL) {
            int saved = errno;
            char last[100];
            log_last_line(last, sizeof(last));
            snprintf(probes->prog_reason[i], sizeof(probes->prog_reason[i]), "attach failed: %s%s%s",
                     strerror(saved), *last ? ": " : "", last);
            continue;
        }
        probes->links[i] = link;
        probes->prog_reason[i][0] = '\0';
    }
    if (probes->links[PROG_USERSPACE_EXIT] == NULL) {
        set_error(error, error_size, "kvm:kvm_userspace_exit: %s", probes->prog_reason[PROG_USERSPACE_EXIT]);
        detach_all(probes);
        rc = -ENOTSUP;
        goto out;
    }
    probes->running = true;
    probes->started_ns = monotonic_now_ns();
out:
    pthread_mutex_unlock(&probes->lock);
    return rc;
}

int bpf_probes_stop(struct bpf_probes *probes)
{
    if (probes == NULL)
        return -EINVAL;
    pthread_mutex_lock(&probes->lock);
    if (probes->running) {
        detach_all(probes);
        probes->attached_ns += monotonic_now_ns() - probes->started_ns;
        probes->running = false;
    }
    pthread_mutex_unlock(&probes->lock);
    return 0;
}

bool bpf_probes_running(struct bpf_probes *probes)
{
    if (probes == NULL)
        return false;
    pthread_mutex_lock(&probes->lock);
    bool running = probes->running;
    pthread_mutex_unlock(&probes->lock);
    return running;
}

/* ---- reading ---------------------------------------------------------------------- */

static void hist_from(struct bpf_probes_hist *out, const struct rv_hist *in)
{
    out->count = 0;
    out->sum_ns = in->sum;
    for (unsigned i = 0; i < RV_HIST_SLOTS; i++) {
        out->buckets[i] = in->slots[i];
        out->count += in->slots[i];
    }
}

/* The kick histograms of one vCPU entry: the kicks that found the vCPU
 * outside KVM_RUN (counted apart by the programs) go into bucket 0 with
 * latency 0, so each histogram's count is every kick of its source. */
static void kick_hists_from(const struct rv_vcpu *value, struct bpf_probes_hist *tgkill,
                            struct bpf_probes_hist *timer, struct bpf_probes_hist *tgkill_in_run)
{
    hist_from(tgkill_in_run, &value->kick_tgkill);
    *tgkill = *tgkill_in_run;
    tgkill->buckets[0] += value->kicks_outside_tgkill;
    tgkill->count += value->kicks_outside_tgkill;
    hist_from(timer, &value->kick_timer);
    timer->buckets[0] += value->kicks_outside_timer;
    timer->count += value->kicks_outside_timer;
}

static int read_vcpu(struct bpf_probes *probes, __u32 index, struct rv_vcpu *value)
{
    if (bpf_map__lookup_elem(probes->skel->maps.vcpus, &index, sizeof(index), value, sizeof(*value), 0) != 0)
        return -errno;
    return 0;
}

static int read_global(struct bpf_probes *probes, struct rv_global *sum)
{
    size_t count = (size_t)probes->possible_cpus;
    struct rv_global *values = calloc(count, sizeof(*values));
    if (values == NULL)
        return -ENOMEM;
    __u32 zero = 0;
    if (bpf_map__lookup_elem(probes->skel->maps.global, &zero, sizeof(zero), values, count * sizeof(*values), 0) != 0) {
        int saved = errno;
        free(values);
        return -saved;
    }
    memset(sum, 0, sizeof(*sum));
    for (size_t c = 0; c < count; c++) {
        const struct rv_global *g = &values[c];
        sum->reset_ioctls += g->reset_ioctls;
        sum->reset_errors += g->reset_errors;
        sum->reset_latency.sum += g->reset_latency.sum;
        for (unsigned i = 0; i < RV_HIST_SLOTS; i++)
            sum->reset_latency.slots[i] += g->reset_latency.slots[i];
        sum->ring_resets += g->ring_resets;
        sum->hw_exits += g->hw_exits;
        if (g->hw_isa)
            sum->hw_isa = g->hw_isa;
        for (unsigned i = 0; i < RV_HW_REASON_SLOTS; i++)
            sum->hw_reasons[i] += g->hw_reasons[i];
        sum->unknown_vcpu_events += g->unknown_vcpu_events;
    }
    free(values);
    return 0;
}

static int read_ring_resets(struct bpf_probes *probes, __u32 index, uint64_t *out)
{
    size_t count = (size_t)probes->possible_cpus;
    __u64 values[count];
    if (bpf_map__lookup_elem(probes->skel->maps.ring_resets, &index, sizeof(index), values, sizeof(values), 0) != 0)
        return -errno;
    *out = 0;
    for (size_t c = 0; c < count; c++)
        *out += values[c];
    return 0;
}

static void describe_metrics(struct bpf_probes *probes, struct bpf_probes_stats *stats)
{
    struct link_state {
        bool attached;
        const char *reason;
    } p[PROG_COUNT];
    for (unsigned i = 0; i < PROG_COUNT; i++) {
        p[i].attached = probes->links[i] != NULL;
        p[i].reason = probes->prog_reason[i][0] ? probes->prog_reason[i]
                      : probes->running ? "" : "probes stopped";
    }
    uint64_t exits = 0, entries = 0, kicks = 0, sleeps = 0, offcpu = 0, pushes = 0, full = 0,
             kvm_exits = 0;
    for (unsigned i = 0; i < stats->vcpu_count; i++) {
        const struct bpf_probes_vcpu_stats *v = &stats->vcpus[i];
        for (unsigned s = 0; s < BPF_PROBES_EXIT_SLOTS; s++)
            exits += v->exits[s];
        entries += v->entries;
        kicks += v->kicks_tgkill + v->kicks_timer;
        sleeps += v->throttle_sleep_ns.count;
        offcpu += v->offcpu_in_run_ns.count + v->offcpu_userspace_ns.count;
        pushes += v->dirty_pushes;
        full += v->ring_full_exits;
        kvm_exits += v->kvm_exits;
    }

    /* Why an attached metric saw no events, from what the VM did meanwhile
     * (the start summary prints these once the vCPUs have run). */
    char kvm_exit_why[160], throttle_why[96], ring_why[96], kick_why[96];
    bool pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
    snprintf(kvm_exit_why, sizeof(kvm_exit_why), "no in-kernel exit in %" PRIu64 " KVM_RUN round trips: %s", entries,
             pvm ? "kvm:kvm_exit does not fire under PVM (kvm_pvm is loaded)"
                 : "kvm:kvm_exit did not fire on this host");
    bool throttled = false;
    for (unsigned i = 0; i < probes->vcpu_count; i++)
        throttled |= vcpu_get_throttle(&probes->vm->vcpus[i]) > 0;
    snprintf(throttle_why, sizeof(throttle_why), "%s",
             throttled ? "no throttle timer kick yet" : "no throttle timer kick: throttling is off (0 %)");
    enum dirty_log_mode mode = dirty_log_mode(probes->vm->dirty_log);
    if (mode != DIRTY_LOG_RING)
        snprintf(ring_why, sizeof(ring_why), "dirty logging is %s, not ring", dirty_log_mode_name(mode));
    else if (!dirty_log_tracking(probes->vm->dirty_log))
        snprintf(ring_why, sizeof(ring_why), "dirty ring tracking is off (a migration or vm.dirty-tracking turns it on)");
    else
        ring_why[0] = '\0';
    snprintf(kick_why, sizeof(kick_why), "%s",
             throttled ? "no kicks yet" : "no kicks yet (no pause, throttle or migration)");

    struct bpf_probes_metric_state *m;
#define METRIC(id, is_attached, events, src, why_not, no_events)                                            \
    do {                                                                                                   \
        m = &stats->metrics[id];                                                                           \
        m->attached = (is_attached);                                                                       \
        m->live = m->attached && (events) > 0;                                                             \
        snprintf(m->source, sizeof(m->source), "%s", src);                                                 \
        snprintf(m->reason, sizeof(m->reason), "%s",                                                       \
                 !m->attached ? (why_not) : m->live ? "" : (no_events));                                   \
    } while (0)

    /* Sources follow what was loaded, not what is attached now: after
     * bpf.stop nothing is attached, yet the counters came from these. */
    const bool *loaded = probes->loaded;
    bool entry_attached = p[PROG_SYS_ENTER].attached || p[PROG_KVM_FPU].attached;
    METRIC(BPF_METRIC_KVM_RUN, p[PROG_USERSPACE_EXIT].attached && entry_attached, exits + entries,
           loaded[PROG_SYS_ENTER] ? "kvm:kvm_userspace_exit + raw_syscalls:sys_enter(KVM_RUN)"
                                  : "kvm:kvm_userspace_exit + kvm:kvm_fpu(load)",
           !p[PROG_USERSPACE_EXIT].attached ? p[PROG_USERSPACE_EXIT].reason
           : loaded[PROG_SYS_ENTER]         ? p[PROG_SYS_ENTER].reason
                                            : p[PROG_KVM_FPU].reason,
           "no KVM_RUN seen yet (vCPUs not running?)");
    if (loaded[PROG_KVM_EXIT_REASON] || loaded[PROG_KVM_EXIT_BTF]) {
        uint64_t events = stats->hw_exits + kvm_exits;
        METRIC(BPF_METRIC_KVM_EXIT, p[PROG_KVM_EXIT_REASON].attached || p[PROG_KVM_EXIT_BTF].attached, events,
               loaded[PROG_KVM_EXIT_REASON] ? "kvm:kvm_exit (classic, exit_reason)" : "kvm:kvm_exit (tp_btf, counts only)",
               loaded[PROG_KVM_EXIT_REASON] ? p[PROG_KVM_EXIT_REASON].reason : p[PROG_KVM_EXIT_BTF].reason,
               kvm_exit_why);
        if (!loaded[PROG_KVM_EXIT_REASON] && m->live)
            snprintf(m->reason, sizeof(m->reason), "per-reason counts off: %.150s", p[PROG_KVM_EXIT_REASON].reason);
    } else {
        METRIC(BPF_METRIC_KVM_EXIT, false, 0, "kvm:kvm_exit", p[PROG_KVM_EXIT_REASON].reason, "");
    }
    METRIC(BPF_METRIC_KICK_LATENCY,
           p[PROG_USERSPACE_EXIT].attached && (p[PROG_SYS_ENTER].attached || p[PROG_SIGNAL_GENERATE].attached),
           kicks,
           loaded[PROG_SIGNAL_GENERATE] ? "raw_syscalls:sys_enter(tgkill) + signal:signal_generate(SI_TIMER)"
                                        : "raw_syscalls:sys_enter(tgkill)",
           !p[PROG_USERSPACE_EXIT].attached ? p[PROG_USERSPACE_EXIT].reason : p[PROG_SYS_ENTER].reason, kick_why);
    if (m->live && !loaded[PROG_SIGNAL_GENERATE])
        snprintf(m->reason, sizeof(m->reason), "throttle timer kicks not seen: %.150s", p[PROG_SIGNAL_GENERATE].reason);
    METRIC(BPF_METRIC_THROTTLE_SLEEP, p[PROG_SIGNAL_GENERATE].attached && entry_attached, sleeps,
           "signal:signal_generate(SI_TIMER) -> next KVM_RUN",
           !p[PROG_SIGNAL_GENERATE].attached ? p[PROG_SIGNAL_GENERATE].reason : p[PROG_SYS_ENTER].reason,
           throttle_why);
    METRIC(BPF_METRIC_OFFCPU, p[PROG_SCHED_SWITCH].attached, offcpu, "sched:sched_switch",
           p[PROG_SCHED_SWITCH].reason, "no vCPU context switch yet");
    METRIC(BPF_METRIC_DIRTY_RING_PUSH, p[PROG_RING_PUSH].attached, pushes, "kvm:kvm_dirty_ring_push",
           p[PROG_RING_PUSH].reason, ring_why[0] ? ring_why : "no pushes yet");
    METRIC(BPF_METRIC_DIRTY_RING_FULL, p[PROG_RING_EXIT].attached, full, "kvm:kvm_dirty_ring_exit",
           p[PROG_RING_EXIT].reason, ring_why[0] ? ring_why : "no ring-full exit yet (no ring filled up)");
    METRIC(BPF_METRIC_DIRTY_RING_RESET, p[PROG_SYS_ENTER].attached && p[PROG_SYS_EXIT].attached,
           stats->reset_ioctls + stats->ring_resets,
           loaded[PROG_RING_RESET] ? "raw_syscalls:sys_enter/sys_exit(KVM_RESET_DIRTY_RINGS) + kvm:kvm_dirty_ring_reset"
                                   : "raw_syscalls:sys_enter/sys_exit(KVM_RESET_DIRTY_RINGS)",
           p[PROG_SYS_ENTER].attached ? p[PROG_SYS_EXIT].reason : p[PROG_SYS_ENTER].reason,
           ring_why[0] ? ring_why : "no KVM_RESET_DIRTY_RINGS yet");
#undef METRIC
}

static int stats_get_locked(struct bpf_probes *probes, struct bpf_probes_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->vcpus = calloc(probes->vcpu_count, sizeof(*out->vcpus));
    struct rv_vcpu *value = malloc(sizeof(*value));
    struct rv_global *global = malloc(sizeof(*global));
    int rc = 0;
    if (out->vcpus == NULL || value == NULL || global == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    out->vcpu_count = probes->vcpu_count;
    out->running = probes->running;
    out->attached_ns = probes->attached_ns + (probes->running ? monotonic_now_ns() - probes->started_ns : 0);

    /* vCPU threads registered by rv_task_rename are only in the map. */
    if (probes->initialized) {
        __u32 key, next, index;
        bool first = true;
        while (bpf_map__get_next_key(probes->skel->maps.tid_vcpu, first ? NULL : &key, &next, sizeof(next)) == 0) {
            first = false;
            key = next;
            if (bpf_map__lookup_elem(probes->skel->maps.tid_vcpu, &key, sizeof(key), &index, sizeof(index), 0) == 0 &&
                index < probes->vcpu_count && !probes->tid_explicit[index])
                probes->tids[index] = (pid_t)key;
        }
    }
    for (__u32 i = 0; i < probes->vcpu_count; i++) {
        struct bpf_probes_vcpu_stats *v = &out->vcpus[i];
        v->index = i;
        v->tid = probes->tids[i];
        if (!probes->initialized)
            memset(value, 0, sizeof(*value));
        else if ((rc = read_vcpu(probes, i, value)) != 0)
            goto out;
        v->entries = value->entries;
        for (unsigned s = 0; s < RV_EXIT_SLOTS; s++) {
            v->exits[s] = value->exits[s];
            hist_from(&v->guest_ns[s], &value->guest[s]);
            hist_from(&v->userspace_ns[s], &value->user[s]);
        }
        kick_hists_from(value, &v->kick_tgkill_ns, &v->kick_timer_ns, &v->kick_tgkill_in_run_ns);
        v->kick_ns = v->kick_tgkill_ns;
        bpf_probes_hist_merge(&v->kick_ns, &v->kick_timer_ns);
        hist_from(&v->kick_vmm_stamp_ns, &value->kick_vmm_stamp);
        hist_from(&v->throttle_sleep_ns, &value->throttle_sleep);
        hist_from(&v->offcpu_in_run_ns, &value->offcpu_in_run);
        hist_from(&v->offcpu_userspace_ns, &value->offcpu_user);
        v->kicks_tgkill = value->kicks_tgkill;
        v->kicks_timer = value->kicks_timer;
        v->kicks_outside_run = value->kicks_outside_tgkill + value->kicks_outside_timer;
        v->kicks_pending = value->kicks_queued - value->kicks_consumed;
        v->kicks_lost = value->kicks_lost;
        v->dirty_pushes = value->dirty_pushes;
        v->ring_full_exits = value->ring_full_exits;
        v->kvm_exits = value->kvm_exits;
        if ((rc = read_ring_resets(probes, i, &v->ring_resets)) != 0)
            goto out;

        if (probes->initialized) {
            struct vmm_base now;
            const struct vmm_base *base = &probes->vmm_base[i];
            read_vmm_counters(probes, i, &now);
            v->vmm_exits_io = now.exits_io - base->exits_io;
            v->vmm_exits_mmio = now.exits_mmio - base->exits_mmio;
            v->vmm_exits_intr = now.exits_intr - base->exits_intr;
            v->vmm_exits_dirty_ring_full = now.exits_dirty_ring_full - base->exits_dirty_ring_full;
            v->vmm_kicks_sent = now.kicks_sent - base->kicks_sent;
            v->vmm_throttle_sleeps = now.throttle_sleeps - base->throttle_sleeps;
            v->vmm_throttle_sleep_ns = now.throttle_sleep_ns - base->throttle_sleep_ns;
            v->vmm_kick_latency_ns.count = 0;
            v->vmm_kick_latency_ns.sum_ns = now.kick_latency.sum_ns - base->kick_latency.sum_ns;
            for (unsigned b = 0; b < BPF_PROBES_HIST_BUCKETS; b++) {
                v->vmm_kick_latency_ns.buckets[b] = now.kick_latency.buckets[b] - base->kick_latency.buckets[b];
                v->vmm_kick_latency_ns.count += v->vmm_kick_latency_ns.buckets[b];
            }
        }
    }

    if ((rc = read_global(probes, global)) != 0)
        goto out;
    out->reset_ioctls = global->reset_ioctls;
    out->reset_errors = global->reset_errors;
    hist_from(&out->reset_latency_ns, &global->reset_latency);
    out->ring_resets = global->ring_resets;
    out->hw_exits = global->hw_exits;
    out->hw_isa = (unsigned)global->hw_isa;
    memcpy(out->hw_reasons, global->hw_reasons, sizeof(out->hw_reasons));
    out->unknown_vcpu_events = global->unknown_vcpu_events;
    describe_metrics(probes, out);
out:
    free(value);
    free(global);
    if (rc != 0) {
        free(out->vcpus);
        out->vcpus = NULL;
        out->vcpu_count = 0;
    }
    return rc;
}

int bpf_probes_stats_get(struct bpf_probes *probes, struct bpf_probes_stats *out)
{
    if (probes == NULL) {
        memset(out, 0, sizeof(*out));
        return -EINVAL;
    }
    pthread_mutex_lock(&probes->lock);
    int rc = stats_get_locked(probes, out);
    pthread_mutex_unlock(&probes->lock);
    return rc;
}

void bpf_probes_stats_free(struct bpf_probes_stats *stats)
{
    if (stats == NULL)
        return;
    free(stats->vcpus);
    stats->vcpus = NULL;
    stats->vcpu_count = 0;
}

json_t *bpf_probes_stats_json(struct bpf_probes *probes, char *error, size_t error_size)
{
    if (probes == NULL) {
        set_error(error, error_size, "BPF probes not loaded");
        return NULL;
    }
    struct bpf_probes_stats *stats = malloc(sizeof(*stats));
    if (stats == NULL) {
        set_error(error, error_size, "out of memory");
        return NULL;
    }
    int rc = bpf_probes_stats_get(probes, stats);
    if (rc != 0) {
        set_error(error, error_size, "reading BPF maps: %s", strerror(-rc));
        free(stats);
        return NULL;
    }
    json_t *json = bpf_probes_stats_to_json(stats);
    bpf_probes_stats_free(stats);
    free(stats);
    if (json == NULL)
        set_error(error, error_size, "out of memory");
    return json;
}

void bpf_probes_print_metrics(struct bpf_probes *probes, FILE *out)
{
    struct bpf_probes_stats *stats = malloc(sizeof(*stats));
    if (stats == NULL || bpf_probes_stats_get(probes, stats) != 0) {
        fprintf(out, "ringvm: bpf: cannot read the probes' state\n");
        free(stats);
        return;
    }
    /* Before the vCPUs run nothing has fired yet: say what is attached,
     * not "no events"; bpf_probes_print_summary says what is live. */
    for (unsigned i = 0; i < BPF_METRIC_COUNT; i++) {
        const struct bpf_probes_metric_state *m = &stats->metrics[i];
        if (m->attached)
            fprintf(out, "ringvm: bpf: %-16s attached (%s)\n", bpf_probes_metric_name(i), m->source);
        else
            fprintf(out, "ringvm: bpf: %-16s off      (%s)\n", bpf_probes_metric_name(i), m->reason);
    }
    bpf_probes_stats_free(stats);
    free(stats);
}

void bpf_probes_print_summary(struct bpf_probes *probes, FILE *out)
{
    struct bpf_probes_stats *stats = malloc(sizeof(*stats));
    if (stats == NULL || bpf_probes_stats_get(probes, stats) != 0) {
        fprintf(out, "ringvm: bpf: cannot read the probes' state\n");
        free(stats);
        return;
    }
    /* One line for the live ones, one per other metric: short enough for a
     * start-up log, complete enough to know what bpf.stats will hold. */
    char live[256] = "";
    size_t length = 0;
    for (unsigned i = 0; i < BPF_METRIC_COUNT; i++) {
        if (!stats->metrics[i].live)
            continue;
        int n = snprintf(live + length, sizeof(live) - length, "%s%s", length ? ", " : "", bpf_probes_metric_name(i));
        if (n > 0)
            length += (size_t)n < sizeof(live) - length ? (size_t)n : sizeof(live) - length - 1;
    }
    fprintf(out, "ringvm: bpf: after %.1f s: live: %s\n", (double)stats->attached_ns / 1e9, length ? live : "none");
    for (unsigned i = 0; i < BPF_METRIC_COUNT; i++) {
        const struct bpf_probes_metric_state *m = &stats->metrics[i];
        if (m->live)
            continue;
        fprintf(out, "ringvm: bpf:   %-16s %s: %s\n", bpf_probes_metric_name(i),
                m->attached ? "attached, no events" : "unavailable", m->reason);
    }
    bpf_probes_stats_free(stats);
    free(stats);
}

/* ---- per migration iteration ------------------------------------------------------- */

static int mark_locked(struct bpf_probes *probes, struct bpf_probes_mark *mark)
{
    memset(mark, 0, sizeof(*mark));
    if (!probes->initialized)
        return 0;
    struct rv_vcpu *value = malloc(sizeof(*value));
    if (value == NULL)
        return -ENOMEM;
    int rc = 0;
    for (__u32 i = 0; i < probes->vcpu_count && rc == 0; i++) {
        rc = read_vcpu(probes, i, value);
        if (rc != 0)
            break;
        struct bpf_probes_hist tgkill, timer, tgkill_in_run;
        kick_hists_from(value, &tgkill, &timer, &tgkill_in_run);
        bpf_probes_hist_merge(&mark->kick, &tgkill);
        bpf_probes_hist_merge(&mark->kick, &timer);
        mark->ring_full_exits += value->ring_full_exits;
        mark->dirty_pushes += value->dirty_pushes;
    }
    free(value);
    if (rc == 0) {
        size_t count = (size_t)probes->possible_cpus;
        struct rv_global *values = calloc(count, sizeof(*values));
        __u32 zero = 0;
        if (values == NULL)
            return -ENOMEM;
        if (bpf_map__lookup_elem(probes->skel->maps.global, &zero, sizeof(zero), values, count * sizeof(*values), 0) != 0)
            rc = -errno;
        for (size_t c = 0; rc == 0 && c < count; c++)
            mark->reset_ioctls += values[c].reset_ioctls;
        free(values);
    }
    return rc;
}

int bpf_probes_mark(struct bpf_probes *probes, struct bpf_probes_mark *mark)
{
    if (probes == NULL)
        return -EINVAL;
    pthread_mutex_lock(&probes->lock);
    int rc = mark_locked(probes, mark);
    pthread_mutex_unlock(&probes->lock);
    return rc;
}

int bpf_probes_since_mark(struct bpf_probes *probes, const struct bpf_probes_mark *mark,
                          struct bpf_probes_iteration *out)
{
    memset(out, 0, sizeof(*out));
    if (probes == NULL)
        return -EINVAL;
    struct bpf_probes_mark now;
    pthread_mutex_lock(&probes->lock);
    int rc = mark_locked(probes, &now);
    pthread_mutex_unlock(&probes->lock);
    if (rc != 0)
        return rc;
    struct bpf_probes_hist delta = { 0 };
    for (unsigned i = 0; i < BPF_PROBES_HIST_BUCKETS; i++) {
        delta.buckets[i] = now.kick.buckets[i] >= mark->kick.buckets[i] ? now.kick.buckets[i] - mark->kick.buckets[i] : 0;
        delta.count += delta.buckets[i];
    }
    out->kicks = delta.count;
    out->kick_p50_ns = bpf_probes_hist_quantile(&delta, 0.50);
    out->kick_p99_ns = bpf_probes_hist_quantile(&delta, 0.99);
    out->ring_full_exits = now.ring_full_exits - mark->ring_full_exits;
    out->dirty_pushes = now.dirty_pushes - mark->dirty_pushes;
    out->reset_ioctls = now.reset_ioctls - mark->reset_ioctls;
    return 0;
}

/* ---- the probes' own cost ------------------------------------------------------------ */

int bpf_probes_enable_run_stats(void)
{
    int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    return fd < 0 ? (errno ? -errno : fd) : fd;
}

int bpf_probes_prog_stats(struct bpf_probes *probes, struct bpf_probes_prog_stat *out, unsigned max)
{
    if (probes == NULL)
        return -EINVAL;
    pthread_mutex_lock(&probes->lock);
    unsigned n = 0;
    int rc = 0;
    for (unsigned i = 0; i < PROG_COUNT && n < max; i++) {
        if (!probes->loaded[i])
            continue;
        struct bpf_program *prog = skel_prog(probes->skel, i);
        struct bpf_prog_info info;
        __u32 length = sizeof(info);
        memset(&info, 0, sizeof(info));
        if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &length) != 0) {
            rc = -errno;
            break;
        }
        snprintf(out[n].name, sizeof(out[n].name), "%s", bpf_program__name(prog));
        out[n].run_count = info.run_cnt;
        out[n].run_time_ns = info.run_time_ns;
        out[n].recursion_misses = info.recursion_misses;
        n++;
    }
    pthread_mutex_unlock(&probes->lock);
    return rc != 0 ? rc : (int)n;
}
