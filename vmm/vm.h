/*
 * The virtual machine: KVM fds, guest RAM, vCPUs, console, lifecycle.
 *
 * Threads:
 *   - the owner (main thread of ringvm, or a test) creates, starts, waits
 *     for and destroys the VM;
 *   - one thread per vCPU ("vcpu<N>");
 *   - controllers (API worker, migration thread, signal thread) call
 *     vm_pause / vm_resume / vm_request_shutdown concurrently: those
 *     serialize on control_lock.
 *
 * Ownership:
 *   - kvm_fd, vm_fd, memory, vcpus[], config: set by vm_create, immutable
 *     until vm_destroy.
 *   - state: atomic; changed only under control_lock (or by a vCPU thread
 *     on a fatal guest event through vm_request_shutdown).
 *   - listeners: registered before vm_start, immutable afterwards.
 */
#ifndef RINGVM_VMM_VM_H
#define RINGVM_VMM_VM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "guest/abi.h"
#include "vmm/cmos_rtc.h"
#include "vmm/memory.h"
#include "vmm/serial.h"
#include "vmm/vcpu.h"
#include "vmm/workload.h"
#include "dirtyring/dirty_log.h"

enum vm_state {
    VM_STATE_CREATED = 0,
    VM_STATE_RUNNING,
    VM_STATE_PAUSED,
    VM_STATE_MIGRATED,      /* source after a completed migration (keep-alive) */
    VM_STATE_SHUTDOWN,
};

struct bpf_probes;
struct linux_guest;

enum vm_guest_kind {
    VM_GUEST_BUILTIN = 0,           /* guest/: the ring-3 workload guest linked into ringvm */
    VM_GUEST_LINUX,                 /* --kernel: a Linux kernel on the 64-bit or PVH boot protocol */
};

/* What the command line says about a Linux guest (--kernel and friends).
 * The files are read and checked by linux_guest_open (vmm/linux_guest.h)
 * before /dev/kvm is opened, so a bad kernel is a usage error (exit 2). */
struct vm_linux_guest_config {
    const char *kernel_path;        /* NULL = the built-in guest */
    const char *initrd_path;        /* NULL = none */
    const char *user_cmdline;       /* --cmdline, appended to the defaults; NULL = none */
    struct linux_guest *loaded;     /* set by the owner before vm_create; owned by it */
};

struct vm_config {
    uint64_t memory_bytes;
    unsigned vcpu_count;
    struct workload_spec workload;
    struct guest_memory_options memory_options;
    struct serial_config serial;
    struct dirty_log_config dirty_log;
    bool create_irqchip;            /* in-kernel LAPIC/IOAPIC (default true) */
    bool incoming;                  /* destination of a migration: no boot,
                                       vCPU state comes from the stream */
    enum vm_guest_kind guest_kind;
    struct vm_linux_guest_config linux_guest;   /* VM_GUEST_LINUX */
    /* Guest ELF; NULL = the built-in guest linked into ringvm. */
    const void *kernel_image;
    size_t kernel_size;
};

typedef void (*vm_state_listener)(struct vm *vm, enum vm_state old_state,
                                  enum vm_state new_state, void *opaque);

#define VM_MAX_LISTENERS 8

struct vm {
    int kvm_fd;
    int vm_fd;
    struct vm_config config;
    struct guest_memory memory;
    struct vcpu *vcpus;             /* config.vcpu_count entries */
    struct serial serial;
    bool serial_ready;
    /* Linux guests' devices (VM_GUEST_LINUX): the CMOS clock, and the
     * 16550A UART whose interrupt line is IRQ 4 of the in-kernel irqchip. */
    struct cmos_rtc rtc;
    struct uart *uart;              /* NULL for the built-in guest */
    /* Set before vm_start (main.c: console_attach_uart). Called once, on the
     * migration thread with the vCPUs parked, when an incoming VM creates
     * the UART of the Linux guest that is arriving (vm_become_linux_destination). */
    void (*uart_created)(struct uart *uart, void *opaque);
    void *uart_created_opaque;
    /* The console (--serial stdio / --console), NULL without one. Set by
     * main.c before vm_start and kept until after the migration thread is
     * joined; a migration's source hands its clients over to the
     * destination's console with it (console_handover_*). */
    struct console *console;
    struct dirty_log *dirty_log;    /* NULL with --dirty-log off */

    uint32_t msr_indices[256];      /* msr_index_probe: what machine state carries */
    uint32_t msr_count;

    struct ringvm_bootinfo *bootinfo;   /* host pointer into guest RAM */
    /* A Linux guest that arrived by migration has no kernel file here: its
     * command line and boot protocol came with its state. Written by the
     * migration thread before it clears awaiting_migration (release); read
     * through vm_linux_cmdline after seeing it clear (acquire). */
    char migrated_cmdline[2048];
    char migrated_boot_protocol[64];
    uint64_t started_ns;                /* CLOCK_MONOTONIC at vm_start */

    /* Serializes controllers (pause/resume/state changes). Never taken by
     * vCPU threads, so a controller may hold it while waiting for acks. */
    pthread_mutex_t control_lock;
    _Atomic int state;                  /* enum vm_state */

    /* The vCPU park protocol: vCPU threads wait on park_cond, controllers
     * wait on ack_cond for vcpu->paused, vm_wait on shutdown_cond. */
    pthread_mutex_t park_lock;
    pthread_cond_t park_cond;
    pthread_cond_t ack_cond;
    pthread_cond_t shutdown_cond;
    _Atomic int exit_status;            /* process exit code when shut down */
    /* Destination of a migration whose guest state has not arrived yet:
     * vm_resume refuses (the vCPUs have no state to run). Set by vm_create,
     * cleared by the migration receiver right before it resumes the vCPUs. */
    _Atomic bool awaiting_migration;
    _Atomic bool shutdown_requested;

    /* Guest-reported events (any vCPU thread writes, anyone reads). */
    _Atomic int last_exception_vector;  /* -1 = none */
    _Atomic uint64_t ledger_mismatches;
    /* The page-clearing port (vmm/page_clearing.h): whether its probe
     * answers (set by vm_create, read-only afterwards), and the 4 KiB pages
     * it cleared on this host (vCPU threads add, anyone reads). */
    bool page_clearing_offered;
    _Atomic uint64_t cleared_pages;

    pthread_mutex_t log_once_lock;
    unsigned log_once_count;
    uint64_t log_once_keys[64];

    /* How long a pause waits for every vCPU to park before it gives up
     * (-ETIMEDOUT; the vCPUs that parked run again). VM_PAUSE_GIVE_UP_NS
     * unless a test set it before vm_start (read by controllers only). */
    uint64_t pause_give_up_ns;

    /* Pause latency: kick of the first vCPU to the ack of the last, for
     * every vm_pause (benchmarks read these). */
    _Atomic uint64_t pause_count;
    _Atomic uint64_t pause_latency_last_ns;
    _Atomic uint64_t pause_latency_max_ns;
    _Atomic uint64_t pause_latency_total_ns;

    /* eBPF probes (bpf/probes.h), NULL when not loaded. Created by main
     * (--bpf) or the API worker (bpf.start); read by the API and migration
     * threads with acquire loads; destroyed by vm_destroy. */
    _Atomic(struct bpf_probes *) bpf_probes;
    /* Why the probes could not load or start ("" = never tried, or they
     * run): bpf.stats answers `unavailable` with it. Written by main
     * (--bpf) before the API server exists, afterwards only by the API
     * worker (bpf.start), which is also its only reader. */
    char bpf_unavailable_reason[512];

    unsigned listener_count;
    struct { vm_state_listener fn; void *opaque; } listeners[VM_MAX_LISTENERS];
};

/* Creates the VM (KVM fds, memory, vCPUs, loads the guest, writes the boot
 * info). Returns 0 or -errno; the cause is printed with the "ringvm: "
 * prefix. On failure *out is NULL and nothing is left behind. */
int vm_create(struct vm **out, const struct vm_config *config);

int vm_add_state_listener(struct vm *vm, vm_state_listener fn, void *opaque);

/* Starts the vCPU threads (state RUNNING; PAUSED when config.incoming). */
int vm_start(struct vm *vm);
/* An incoming VM (still awaiting its state, vCPUs parked) whose arriving
 * guest is Linux: creates the PIT and UART a Linux guest has and marks the
 * VM as one. 0 (also when it already is one) or -errno, message on stderr. */
int vm_become_linux_destination(struct vm *vm);
/* A Linux guest's full command line and boot protocol ("bzImage 64-bit"):
 * from its kernel files, or from the migration that brought it; NULL for
 * the built-in guest and for an incoming VM still awaiting its state. */
const char *vm_linux_cmdline(struct vm *vm);
/* True for a Linux guest, booted here or arrived by migration (false for an
 * incoming VM still awaiting its state). */
bool vm_is_linux_guest(struct vm *vm);
const char *vm_linux_boot_protocol(struct vm *vm);
/* The migration thread, before it clears awaiting_migration. */
void vm_set_migrated_linux_boot_info(struct vm *vm, const char *cmdline, const char *boot_protocol);

#define VM_PAUSE_GIVE_UP_NS 1000000000ULL

/* Test hook (tests/test_api_server.c, tests/test_api_error_codes.c): when
 * set, a vCPU thread that saw a pause request calls it before it parks, so
 * a test can hold a pause in flight (and release it) or make one time out.
 * NULL in production: nothing sets it outside tests/. */
struct vcpu;
typedef void (*vm_vcpu_park_hook_fn)(struct vcpu *vcpu);
extern _Atomic(vm_vcpu_park_hook_fn) vm_vcpu_park_hook;

/* Kicks every vCPU out of KVM_RUN and waits for all to park. Re-kicks every
 * 10 ms with a warning; gives up after vm->pause_give_up_ns (1 s) with
 * -ETIMEDOUT and lets the vCPUs that did park run again. -EINVAL if not
 * RUNNING. */
int vm_pause(struct vm *vm);
/* -EINVAL if not PAUSED, -EBUSY while an incoming migration has not
 * restored the guest yet. */
int vm_resume(struct vm *vm);

/* The same without the RUNNING/PAUSED state change, for a controller that
 * needs the vCPUs out of KVM_RUN briefly (final sync, state capture).
 * vm_resume_vcpus needs every vCPU parked; for a Linux guest it first
 * tells each vCPU's kvmclock that the guest was stopped (KVM_KVMCLOCK_CTRL),
 * so the guest's watchdog does not report the pause as a lockup. */
int vm_pause_vcpus(struct vm *vm);
void vm_resume_vcpus(struct vm *vm);

/* Asynchronous; any thread, including vCPU threads and signal handlers'
 * helper threads. The first exit code wins. */
void vm_request_shutdown(struct vm *vm, int exit_code);

/* Blocks until shutdown is requested, then stops and joins all vCPU
 * threads. Returns the exit code. */
int vm_wait(struct vm *vm);
/* Waits up to timeout_ns for a shutdown request; true if one was made. */
bool vm_wait_for_shutdown_request(struct vm *vm, uint64_t timeout_ns);
void vm_destroy(struct vm *vm);

enum vm_state vm_get_state(struct vm *vm);
const char *vm_state_name(enum vm_state state);
/* Sets state and notifies listeners; for migration (MIGRATED). */
void vm_set_state(struct vm *vm, enum vm_state state);

/* Guest counters of one vCPU, read from the stats page. */
void vm_read_guest_stats(struct vm *vm, unsigned vcpu, struct ringvm_vcpu_stats *out);

/* Sum of pages_written over every vCPU (the guest's own write counter). */
uint64_t vm_guest_pages_written(struct vm *vm);

uint64_t vm_uptime_ms(struct vm *vm);

/* CLOCK_MONOTONIC in ns: monotonic_now_ns (vmm/monotonic.h) under vm.h. */
uint64_t vm_now_ns(void);

#endif
