/*
 * VM lifecycle: create (KVM fds, RAM, guest image, vCPUs), start, pause and
 * resume by signal kick, shutdown, destroy. See vm.h for who owns what.
 */
#include "vmm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <numa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bpf/probes.h"
#include "vmm/boot.h"
#include "vmm/bootinfo.h"
#include "vmm/cpuid.h"
#include "vmm/host.h"
#include "vmm/linux_guest.h"
#include "vmm/monotonic.h"
#include "vmm/page_clearing.h"
#include "vmm/uart.h"
#include "vmm/vcpu_internal.h"
#include "vmm/msr_index.h"

#define KICK_RETRY_NS   10000000ULL     /* re-kick a silent vCPU every 10 ms */

_Atomic(vm_vcpu_park_hook_fn) vm_vcpu_park_hook;

uint64_t vm_now_ns(void)
{
    return monotonic_now_ns();
}

const char *vm_state_name(enum vm_state state)
{
    switch (state) {
    case VM_STATE_CREATED: return "created";
    case VM_STATE_RUNNING: return "running";
    case VM_STATE_PAUSED: return "paused";
    case VM_STATE_MIGRATED: return "migrated";
    case VM_STATE_SHUTDOWN: return "shutdown";
    }
    return "unknown";
}

enum vm_state vm_get_state(struct vm *vm)
{
    return (enum vm_state)atomic_load_explicit(&vm->state, memory_order_acquire);
}

void vm_set_state(struct vm *vm, enum vm_state state)
{
    enum vm_state old = (enum vm_state)atomic_exchange_explicit(&vm->state, (int)state, memory_order_acq_rel);
    if (old == state)
        return;
    for (unsigned i = 0; i < vm->listener_count; i++)
        vm->listeners[i].fn(vm, old, state, vm->listeners[i].opaque);
}

int vm_add_state_listener(struct vm *vm, vm_state_listener fn, void *opaque)
{
    if (vm->listener_count >= VM_MAX_LISTENERS)
        return -ENOSPC;
    vm->listeners[vm->listener_count].fn = fn;
    vm->listeners[vm->listener_count].opaque = opaque;
    vm->listener_count++;
    return 0;
}

uint64_t vm_uptime_ms(struct vm *vm)
{
    return vm->started_ns == 0 ? 0 : (vm_now_ns() - vm->started_ns) / 1000000ULL;
}

void vm_log_once(struct vm *vm, uint64_t key, const char *format, ...)
{
    pthread_mutex_lock(&vm->log_once_lock);
    bool seen = false;
    for (unsigned i = 0; i < vm->log_once_count; i++)
        if (vm->log_once_keys[i] == key)
            seen = true;
    if (!seen && vm->log_once_count < sizeof(vm->log_once_keys) / sizeof(vm->log_once_keys[0]))
        vm->log_once_keys[vm->log_once_count++] = key;
    pthread_mutex_unlock(&vm->log_once_lock);
    if (seen)
        return;
    va_list arguments;
    va_start(arguments, format);
    vfprintf(stderr, format, arguments);
    va_end(arguments);
}

void vm_read_guest_stats(struct vm *vm, unsigned vcpu, struct ringvm_vcpu_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (vcpu >= vm->config.vcpu_count)
        return;
    /* The guest updates these with aligned 64-bit stores; read each field
     * atomically (relaxed: they are independent counters). */
    uint64_t *source = guest_memory_gpa_to_host(&vm->memory, RINGVM_STATS_GPA + RINGVM_STATS_SLOT_SIZE * vcpu,
                                                sizeof(*out));
    if (source == NULL)
        return;
    uint64_t *target = (uint64_t *)out;
    for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
        target[i] = __atomic_load_n(&source[i], __ATOMIC_RELAXED);
}

uint64_t vm_guest_pages_written(struct vm *vm)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        struct ringvm_vcpu_stats stats;
        vm_read_guest_stats(vm, i, &stats);
        total += stats.pages_written;
    }
    return total;
}

/* ---- creation ------------------------------------------------------- */

static int kvm_check(int fd, long extension)
{
    int result = ioctl(fd, KVM_CHECK_EXTENSION, extension);
    return result < 0 ? 0 : result;
}

static int create_vcpu(struct vm *vm, unsigned index, const struct kvm_cpuid2 *cpuid, size_t run_size,
                       uint64_t entry)
{
    struct vcpu *vcpu = &vm->vcpus[index];
    vcpu->vm = vm;
    vcpu->index = index;
    vcpu->numa_node = vm->memory.numa_node;
    vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
    if (vcpu->fd < 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_CREATE_VCPU(%u): %s\n", index, strerror(saved));
        return -saved;
    }
    vcpu->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
    if (vcpu->run == MAP_FAILED) {
        int saved = errno;
        vcpu->run = NULL;
        fprintf(stderr, "ringvm: mmap(kvm_run of vcpu %u): %s\n", index, strerror(saved));
        return -saved;
    }
    vcpu->run_size = run_size;
    /* A Linux guest gets CPUID normalised per vCPU (APIC ids, topology) in
     * linux_guest_setup_vcpu; the built-in guest reads none of that. */
    if (vm->config.guest_kind != VM_GUEST_LINUX && ioctl(vcpu->fd, KVM_SET_CPUID2, cpuid) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_SET_CPUID2(vcpu %u, %u entries): %s\n", index, cpuid->nent,
                strerror(saved));
        return -saved;
    }
    if (vm->dirty_log != NULL) {
        int result = dirty_log_attach_vcpu(vm->dirty_log, vcpu);
        if (result != 0)
            return result;
    }
    if (!vm->config.incoming && vm->config.guest_kind == VM_GUEST_LINUX) {
        char error[512];
        int result = linux_guest_setup_vcpu(vm->config.linux_guest.loaded, cpuid, vcpu->fd, index,
                                            vm->config.vcpu_count, error, sizeof(error));
        if (result != 0) {
            fprintf(stderr, "ringvm: %s\n", error);
            return result;
        }
    } else if (!vm->config.incoming) {
        char error[256];
        int result = boot_setup_vcpu(vcpu->fd, index, entry, error, sizeof(error));
        if (result != 0) {
            fprintf(stderr, "ringvm: %s\n", error);
            return result;
        }
    }
    return 0;
}

/* Linux calibrates against and, until the LAPIC timer takes over, ticks
 * on the PIT (IRQ 0). The dummy speaker answers port 0x61, which the
 * calibration polls. The built-in guest never programs a PIT. */
static int vm_create_pit(struct vm *vm)
{
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_CREATE_PIT2(speaker dummy): %s\n", strerror(saved));
        return -saved;
    }
    return 0;
}

static int vm_create_kvm(struct vm *vm)
{
    vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: open /dev/kvm: %s\n", strerror(saved));
        return -saved;
    }
    int version = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        fprintf(stderr, "ringvm: KVM_GET_API_VERSION: %d, need %d\n", version, KVM_API_VERSION);
        return -ENOTSUP;
    }
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0UL);
    if (vm->vm_fd < 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_CREATE_VM: %s\n", strerror(saved));
        return -saved;
    }
    /* Dirty rings must be enabled before the first vCPU exists. */
    if (vm->config.dirty_log.mode != DIRTY_LOG_OFF) {
        int result = dirty_log_create(&vm->dirty_log, &vm->config.dirty_log, vm->kvm_fd, vm->vm_fd,
                                      &vm->memory, vm->config.vcpu_count);
        if (result != 0)
            return result;
    }
    /* Harmless where unneeded (SVM, PVM); required by VMX for real mode. */
    if (kvm_check(vm->kvm_fd, KVM_CAP_SET_TSS_ADDR) &&
        ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_SET_TSS_ADDR: %s\n", strerror(saved));
        return -saved;
    }
    if (vm->config.create_irqchip && ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_CREATE_IRQCHIP: %s\n", strerror(saved));
        return -saved;
    }
    if (vm->config.guest_kind == VM_GUEST_LINUX)
        return vm_create_pit(vm);
    return 0;
}

/* ---- which guest: booted here or arrived by migration ------------------ */

bool vm_is_linux_guest(struct vm *vm)
{
    if (vm->config.linux_guest.loaded != NULL)
        return true;
    /* Acquire: guest_kind was set before awaiting_migration was cleared. */
    return !atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire) &&
           vm->config.guest_kind == VM_GUEST_LINUX;
}

const char *vm_linux_cmdline(struct vm *vm)
{
    if (vm->config.linux_guest.loaded != NULL)
        return linux_guest_cmdline(vm->config.linux_guest.loaded);
    if (atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire) || vm->migrated_cmdline[0] == '\0')
        return NULL;
    return vm->migrated_cmdline;
}

const char *vm_linux_boot_protocol(struct vm *vm)
{
    if (vm->config.linux_guest.loaded != NULL)
        return linux_guest_boot_protocol(vm->config.linux_guest.loaded);
    if (atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire) ||
        vm->migrated_boot_protocol[0] == '\0')
        return NULL;
    return vm->migrated_boot_protocol;
}

void vm_set_migrated_linux_boot_info(struct vm *vm, const char *cmdline, const char *boot_protocol)
{
    snprintf(vm->migrated_cmdline, sizeof(vm->migrated_cmdline), "%s", cmdline);
    snprintf(vm->migrated_boot_protocol, sizeof(vm->migrated_boot_protocol), "%s", boot_protocol);
}

/* ---- the Linux guest's devices on a migration's destination ----------- */

static int vm_create_uart(struct vm *vm);

/* An incoming VM learns from the migration stream that its guest is Linux:
 * it gets the devices `ringvm --kernel` would have made (the PIT and the
 * UART; the irqchip and the CMOS clock every VM has). Runs on the migration
 * thread while the vCPU threads are parked and have never run: the park
 * lock they take before their first KVM_RUN orders guest_kind for them. */
int vm_become_linux_destination(struct vm *vm)
{
    if (vm->config.guest_kind == VM_GUEST_LINUX)
        return 0;
    if (!vm->config.incoming || !atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire) ||
        !vm->config.create_irqchip) {
        fprintf(stderr, "ringvm: only an incoming VM with the in-kernel irqchip still waiting for its state "
                "can become a Linux guest's destination\n");
        return -EINVAL;
    }
    int result = vm_create_pit(vm);
    if (result == 0)
        result = vm_create_uart(vm);
    if (result == 0) {
        vm->config.guest_kind = VM_GUEST_LINUX;
        if (vm->uart_created != NULL)
            vm->uart_created(vm->uart, vm->uart_created_opaque);
    }
    return result;
}

/* ---- the Linux guest's UART ------------------------------------------ */

/* The UART's interrupt line, level-driven into the in-kernel PIC and
 * IOAPIC (ISA IRQ 4: edge-triggered there, so each rising level is one
 * interrupt). Called with the uart's lock held, from a vCPU or the console
 * thread; KVM_IRQ_LINE on the VM fd is safe from any thread. */
static void vm_uart_set_irq(void *opaque, bool level)
{
    struct vm *vm = opaque;
    struct kvm_irq_level line = { .irq = UART_COM1_IRQ, .level = level ? 1 : 0 };
    if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &line) != 0)
        vm_log_once(vm, 0x80000000000ULL | UART_COM1_IRQ, "ringvm: KVM_IRQ_LINE(irq %d, level %d): %s\n",
                    UART_COM1_IRQ, level ? 1 : 0, strerror(errno));
}

static void vm_uart_transmit(void *opaque, const uint8_t *bytes, size_t length)
{
    struct vm *vm = opaque;
    serial_write_bytes(&vm->serial, bytes, length);
}

void vm_uart_port_io(struct vm *vm, unsigned offset, bool is_write, uint8_t *data, uint32_t size)
{
    uart_port_io(vm->uart, offset, is_write, data, size);
}

static int vm_create_uart(struct vm *vm)
{
    struct uart_callbacks callbacks = {
        .set_irq = vm_uart_set_irq,
        .transmit = vm_uart_transmit,
        .opaque = vm,
    };
    return uart_create(&vm->uart, &callbacks);
}

static int vm_load_guest(struct vm *vm, uint64_t *entry)
{
    if (vm->config.guest_kind == VM_GUEST_LINUX) {
        char error[512];
        if (linux_guest_load(vm->config.linux_guest.loaded, &vm->memory, vm->config.vcpu_count, error,
                             sizeof(error)) != 0) {
            fprintf(stderr, "ringvm: %s\n", error);
            return -EINVAL;
        }
        *entry = 0;     /* linux_guest_setup_vcpu knows the entry */
        return 0;
    }
    const void *image = vm->config.kernel_image;
    size_t size = vm->config.kernel_size;
    if (image == NULL)
        boot_builtin_guest(&image, &size);
    char error[256];
    if (boot_load_guest(&vm->memory, image, size, entry, error, sizeof(error)) != 0 ||
        boot_setup_page_tables(&vm->memory, error, sizeof(error)) != 0) {
        fprintf(stderr, "ringvm: %s\n", error);
        return -EINVAL;
    }
    return 0;
}

static int vm_write_bootinfo(struct vm *vm)
{
    int tsc_khz = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
    if (tsc_khz <= 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_GET_TSC_KHZ: %s\n", strerror(saved));
        return -saved;
    }
    vm->bootinfo = guest_memory_gpa_to_host(&vm->memory, RINGVM_BOOTINFO_GPA, sizeof(*vm->bootinfo));
    char error[256];
    if (vm->bootinfo == NULL ||
        bootinfo_build(vm->bootinfo, &vm->config.workload, &vm->memory, vm->config.vcpu_count,
                       (uint64_t)tsc_khz, error, sizeof(error)) != 0) {
        fprintf(stderr, "ringvm: %s\n", vm->bootinfo == NULL ? "boot info page outside RAM" : error);
        return -EINVAL;
    }
    return 0;
}

int vm_create(struct vm **out, const struct vm_config *config)
{
    *out = NULL;
    if (config->vcpu_count == 0 || config->vcpu_count > RINGVM_MAX_VCPUS) {
        fprintf(stderr, "ringvm: --vcpus %u: must be 1..%d\n", config->vcpu_count, RINGVM_MAX_VCPUS);
        return -EINVAL;
    }
    /* The destination of a Linux guest's migration has the same devices but
     * no kernel: the kernel is in the guest RAM that arrives. */
    if (config->guest_kind == VM_GUEST_LINUX &&
        ((config->linux_guest.loaded == NULL && !config->incoming) || !config->create_irqchip)) {
        fprintf(stderr, "ringvm: a Linux guest needs its kernel opened (linux_guest_open), unless it is the "
                "destination of a migration, and the in-kernel irqchip\n");
        return -EINVAL;
    }
    struct vm *vm = calloc(1, sizeof(*vm));
    if (vm == NULL) {
        fprintf(stderr, "ringvm: out of memory\n");
        return -ENOMEM;
    }
    vm->config = *config;
    cmos_rtc_init(&vm->rtc);
    vm->kvm_fd = -1;
    vm->vm_fd = -1;
    vm->memory.memfd = -1;
    atomic_init(&vm->last_exception_vector, -1);
    vm->page_clearing_offered = page_clearing_offered_here();
    atomic_init(&vm->awaiting_migration, config->incoming);
    pthread_mutex_init(&vm->control_lock, NULL);
    vm->pause_give_up_ns = VM_PAUSE_GIVE_UP_NS;
    pthread_mutex_init(&vm->park_lock, NULL);
    pthread_mutex_init(&vm->log_once_lock, NULL);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&vm->park_cond, &attributes);
    pthread_cond_init(&vm->ack_cond, &attributes);
    pthread_cond_init(&vm->shutdown_cond, &attributes);
    pthread_condattr_destroy(&attributes);

    vm->vcpus = calloc(config->vcpu_count, sizeof(struct vcpu));
    int result = vm->vcpus == NULL ? -ENOMEM : 0;
    for (unsigned i = 0; vm->vcpus != NULL && i < config->vcpu_count; i++)
        vm->vcpus[i].fd = -1;

    struct kvm_cpuid2 *cpuid = NULL;
    uint64_t entry = 0;
    if (result == 0) {
        result = serial_init(&vm->serial, &config->serial);
        vm->serial_ready = result == 0;
    }
    if (result == 0) {
        /* Ring mode with late protection turns dirty logging on memslot by
         * memslot as a migration's first pass reaches each (dirtyring/). */
        struct guest_memory_options memory_options = config->memory_options;
        memory_options.split_kvm_slots = config->dirty_log.mode == DIRTY_LOG_RING &&
                                         !config->dirty_log.ring_reset_at_take;
        result = guest_memory_create(&vm->memory, config->memory_bytes, &memory_options);
    }
    if (result == 0)
        result = vm_create_kvm(vm);
    if (result == 0)
        result = guest_memory_register(&vm->memory, vm->vm_fd, false);
    if (result == 0 && config->guest_kind == VM_GUEST_LINUX)
        result = vm_create_uart(vm);
    if (result == 0 && !config->incoming)
        result = vm_load_guest(vm, &entry);
    if (result == 0) {
        char error[256];
        result = cpuid_get_supported(vm->kvm_fd, &cpuid, error, sizeof(error));
        if (result != 0)
            fprintf(stderr, "ringvm: %s\n", error);
        else if (host_kvm_is_pvm())
            cpuid_hide_pv_hypercalls(cpuid);
    }
    int run_size = result == 0 ? ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0) : 0;
    if (result == 0 && run_size <= 0) {
        fprintf(stderr, "ringvm: KVM_GET_VCPU_MMAP_SIZE: %s\n", strerror(errno));
        result = -EIO;
    }
    for (unsigned i = 0; result == 0 && i < config->vcpu_count; i++)
        result = create_vcpu(vm, i, cpuid, (size_t)run_size, entry);
    free(cpuid);
    if (result == 0) {
        int count = msr_index_probe(vm->kvm_fd, vm->vcpus[0].fd, vm->msr_indices,
                                          sizeof(vm->msr_indices) / sizeof(vm->msr_indices[0]));
        if (count < 0)
            result = count;
        else
            vm->msr_count = (uint32_t)count;
    }
    if (result == 0 && !config->incoming)
        result = vm_write_bootinfo(vm);
    if (result == 0)
        result = vcpu_install_kick_handler();
    if (result != 0) {
        vm_destroy(vm);
        return result;
    }
    atomic_store_explicit(&vm->state, VM_STATE_CREATED, memory_order_release);
    *out = vm;
    return 0;
}

/* ---- running -------------------------------------------------------- */

static void *vcpu_thread_trampoline(void *argument)
{
    struct vcpu *vcpu = argument;
    char name[16];
    snprintf(name, sizeof(name), "vcpu%u", vcpu->index);
    pthread_setname_np(pthread_self(), name);
    if (vcpu->numa_node >= 0 && numa_available() >= 0 && numa_run_on_node(vcpu->numa_node) != 0)
        fprintf(stderr, "ringvm: vcpu %u: numa_run_on_node(%d): %s\n", vcpu->index, vcpu->numa_node,
                strerror(errno));
    return vcpu_thread_main(vcpu);
}

static bool vcpu_is_parked(struct vcpu *vcpu)
{
    return atomic_load_explicit(&vcpu->paused, memory_order_acquire);
}

static unsigned vm_parked_count(struct vm *vm)
{
    unsigned parked = 0;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        parked += vcpu_is_parked(&vm->vcpus[i]);
    return parked;
}

/* An incoming VM's vCPU threads start with pause_requested set and park
 * before their first real KVM_RUN: PAUSED is reported only once every one
 * has (a thread not yet scheduled reads as not parked, and its first,
 * immediate-exit KVM_RUN would otherwise land after the restore). The
 * threads need no kick; a bound only names one that never gets there. */
#define VM_START_PARK_WARN_NS (10ull * 1000000000ull)
static void vm_wait_started_parked(struct vm *vm)
{
    uint64_t started = vm_now_ns();
    bool warned = false;
    pthread_mutex_lock(&vm->park_lock);
    for (;;) {
        unsigned parked = vm_parked_count(vm);
        if (parked == vm->config.vcpu_count || atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire))
            break;
        uint64_t now = vm_now_ns();
        if (!warned && now - started >= VM_START_PARK_WARN_NS) {
            fprintf(stderr, "ringvm: %u of %u vCPU threads parked 10 s after start; still waiting\n", parked,
                    vm->config.vcpu_count);
            warned = true;
        }
        struct timespec deadline = monotonic_deadline_after_ns(100000000ull);
        pthread_cond_timedwait(&vm->ack_cond, &vm->park_lock, &deadline);
    }
    pthread_mutex_unlock(&vm->park_lock);
}

int vm_start(struct vm *vm)
{
    /* vCPU threads inherit this mask with the kick signal blocked and
     * unblock it themselves once their kvm_run pointer is set; no other
     * thread ever runs the handler. */
    sigset_t block, previous;
    sigemptyset(&block);
    sigaddset(&block, VCPU_KICK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &block, &previous);

    bool incoming = vm->config.incoming;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        atomic_store_explicit(&vm->vcpus[i].pause_requested, incoming, memory_order_release);
    vm->started_ns = vm_now_ns();
    int result = 0;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        struct vcpu *vcpu = &vm->vcpus[i];
        int error = pthread_create(&vcpu->thread, NULL, vcpu_thread_trampoline, vcpu);
        if (error != 0) {
            fprintf(stderr, "ringvm: pthread_create(vcpu %u): %s\n", i, strerror(error));
            vm_request_shutdown(vm, 1);
            result = -error;
            break;
        }
        vcpu->thread_started = true;
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (result == 0 && incoming)
        vm_wait_started_parked(vm);
    if (result == 0)
        vm_set_state(vm, incoming ? VM_STATE_PAUSED : VM_STATE_RUNNING);
    return result;
}

static void vm_release_vcpus(struct vm *vm)
{
    pthread_mutex_lock(&vm->park_lock);
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        atomic_store_explicit(&vm->vcpus[i].pause_requested, false, memory_order_release);
    pthread_cond_broadcast(&vm->park_cond);
    pthread_mutex_unlock(&vm->park_lock);
}

static void vm_record_pause_latency(struct vm *vm, uint64_t latency)
{
    atomic_fetch_add_explicit(&vm->pause_count, 1, memory_order_relaxed);
    atomic_store_explicit(&vm->pause_latency_last_ns, latency, memory_order_relaxed);
    atomic_fetch_add_explicit(&vm->pause_latency_total_ns, latency, memory_order_relaxed);
    uint64_t max = atomic_load_explicit(&vm->pause_latency_max_ns, memory_order_relaxed);
    while (latency > max &&
           !atomic_compare_exchange_weak_explicit(&vm->pause_latency_max_ns, &max, latency,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

int vm_pause_vcpus(struct vm *vm)
{
    unsigned count = vm->config.vcpu_count;
    uint64_t started = vm_now_ns();
    pthread_mutex_lock(&vm->park_lock);
    for (unsigned i = 0; i < count; i++) {
        atomic_store_explicit(&vm->vcpus[i].pause_requested, true, memory_order_release);
        vcpu_kick(&vm->vcpus[i]);
    }
    /* Halted (no irqchip) or throttle-sleeping vCPUs wait on park_cond. */
    pthread_cond_broadcast(&vm->park_cond);

    int result = 0;
    uint64_t next_retry = started + KICK_RETRY_NS;
    for (;;) {
        if (vm_parked_count(vm) == count)
            break;
        if (atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
            result = -ECANCELED;
            break;
        }
        uint64_t now = vm_now_ns();
        if (now - started >= vm->pause_give_up_ns) {
            for (unsigned i = 0; i < count; i++)
                if (!vcpu_is_parked(&vm->vcpus[i]))
                    fprintf(stderr, "ringvm: vcpu %u did not respond to kicks for %" PRIu64 " ms - pause failed\n",
                            i, vm->pause_give_up_ns / 1000000u);
            result = -ETIMEDOUT;
            break;
        }
        if (now >= next_retry) {
            for (unsigned i = 0; i < count; i++) {
                if (!vcpu_is_parked(&vm->vcpus[i])) {
                    fprintf(stderr, "ringvm: vcpu %u did not respond in 10 ms to kick - retrying\n", i);
                    vcpu_kick(&vm->vcpus[i]);
                }
            }
            next_retry = now + KICK_RETRY_NS;
        }
        uint64_t give_up = started + vm->pause_give_up_ns;
        uint64_t wake = next_retry < give_up ? next_retry : give_up;
        uint64_t wait = wake > now ? wake - now : 0;
        struct timespec deadline = monotonic_deadline_after_ns(wait);
        pthread_cond_timedwait(&vm->ack_cond, &vm->park_lock, &deadline);
    }
    pthread_mutex_unlock(&vm->park_lock);
    if (result == 0)
        vm_record_pause_latency(vm, vm_now_ns() - started);
    else
        vm_release_vcpus(vm);
    return result;
}

/* A Linux guest that was paused sees a jump in its clock when it runs
 * again, and its soft-lockup watchdog would call that a lockup. KVM's
 * answer is KVM_KVMCLOCK_CTRL: it sets PVCLOCK_GUEST_STOPPED in the vCPU's
 * kvmclock page at its next entry, and the guest's watchdog, seeing it,
 * clears it and starts counting afresh (QEMU does the same on resume).
 * Only with every vCPU parked (out of KVM_RUN): the ioctl takes the vCPU's
 * mutex. EINVAL: the guest has not enabled kvmclock (yet), nothing to do. */
static void vm_tell_guest_it_was_stopped(struct vm *vm)
{
    if (!vm_is_linux_guest(vm))
        return;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        if (ioctl(vm->vcpus[i].fd, KVM_KVMCLOCK_CTRL, 0) == 0)
            atomic_fetch_add_explicit(&vm->vcpus[i].counters.kvmclock_stop_notices, 1, memory_order_relaxed);
        else if (errno != EINVAL)
            vm_log_once(vm, 0x50000000000ULL | i, "ringvm: vcpu %u: KVM_KVMCLOCK_CTRL: %s\n", i, strerror(errno));
    }
}

void vm_resume_vcpus(struct vm *vm)
{
    vm_tell_guest_it_was_stopped(vm);
    vm_release_vcpus(vm);
}

int vm_pause(struct vm *vm)
{
    pthread_mutex_lock(&vm->control_lock);
    int result = -EINVAL;
    if (vm_get_state(vm) == VM_STATE_RUNNING) {
        result = vm_pause_vcpus(vm);
        if (result == 0)
            vm_set_state(vm, VM_STATE_PAUSED);
    }
    pthread_mutex_unlock(&vm->control_lock);
    return result;
}

int vm_resume(struct vm *vm)
{
    pthread_mutex_lock(&vm->control_lock);
    int result = -EINVAL;
    if (atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire)) {
        result = -EBUSY;
    } else if (vm_get_state(vm) == VM_STATE_PAUSED) {
        vm_resume_vcpus(vm);
        vm_set_state(vm, VM_STATE_RUNNING);
        result = 0;
    }
    pthread_mutex_unlock(&vm->control_lock);
    return result;
}

void vm_request_shutdown(struct vm *vm, int exit_code)
{
    bool expected = false;
    pthread_mutex_lock(&vm->park_lock);
    if (atomic_compare_exchange_strong_explicit(&vm->shutdown_requested, &expected, true,
                                                memory_order_acq_rel, memory_order_acquire))
        atomic_store_explicit(&vm->exit_status, exit_code, memory_order_release);
    pthread_cond_broadcast(&vm->park_cond);
    pthread_cond_broadcast(&vm->ack_cond);
    pthread_cond_broadcast(&vm->shutdown_cond);
    pthread_mutex_unlock(&vm->park_lock);
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        if (vm->vcpus[i].thread_started && !pthread_equal(vm->vcpus[i].thread, pthread_self()))
            vcpu_kick(&vm->vcpus[i]);
}

int vm_wait(struct vm *vm)
{
    pthread_mutex_lock(&vm->park_lock);
    while (!atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire))
        pthread_cond_wait(&vm->shutdown_cond, &vm->park_lock);
    pthread_mutex_unlock(&vm->park_lock);
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        struct vcpu *vcpu = &vm->vcpus[i];
        if (!vcpu->thread_started)
            continue;
        vcpu_kick(vcpu);
        pthread_join(vcpu->thread, NULL);
        vcpu->thread_started = false;
    }
    pthread_mutex_lock(&vm->control_lock);
    vm_set_state(vm, VM_STATE_SHUTDOWN);
    pthread_mutex_unlock(&vm->control_lock);
    return atomic_load_explicit(&vm->exit_status, memory_order_acquire);
}

bool vm_wait_for_shutdown_request(struct vm *vm, uint64_t timeout_ns)
{
    struct timespec deadline = monotonic_deadline_after_ns(timeout_ns);
    pthread_mutex_lock(&vm->park_lock);
    while (!atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
        if (pthread_cond_timedwait(&vm->shutdown_cond, &vm->park_lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool requested = atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire);
    pthread_mutex_unlock(&vm->park_lock);
    return requested;
}

void vm_destroy(struct vm *vm)
{
    if (vm == NULL)
        return;
    if (vm->vcpus != NULL) {
        for (unsigned i = 0; i < vm->config.vcpu_count; i++)
            if (vm->vcpus[i].thread_started) {
                vm_request_shutdown(vm, 0);
                vm_wait(vm);
                break;
            }
    }
    bpf_probes_destroy(atomic_exchange_explicit(&vm->bpf_probes, NULL, memory_order_acq_rel));
    if (vm->dirty_log != NULL)
        dirty_log_destroy(vm->dirty_log);
    for (unsigned i = 0; vm->vcpus != NULL && i < vm->config.vcpu_count; i++) {
        struct vcpu *vcpu = &vm->vcpus[i];
        if (vcpu->run != NULL)
            munmap(vcpu->run, vcpu->run_size);
        if (vcpu->fd >= 0)
            close(vcpu->fd);
    }
    free(vm->vcpus);
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    guest_memory_destroy(&vm->memory);
    if (vm->serial_ready)
        serial_destroy(&vm->serial);
    uart_destroy(vm->uart);
    cmos_rtc_destroy(&vm->rtc);
    pthread_cond_destroy(&vm->park_cond);
    pthread_cond_destroy(&vm->ack_cond);
    pthread_cond_destroy(&vm->shutdown_cond);
    pthread_mutex_destroy(&vm->park_lock);
    pthread_mutex_destroy(&vm->control_lock);
    pthread_mutex_destroy(&vm->log_once_lock);
    free(vm);
}

/* ---- the vCPU side of parking ---------------------------------------- */

static bool vm_stop_waiting(struct vcpu *vcpu)
{
    return atomic_load_explicit(&vcpu->vm->shutdown_requested, memory_order_acquire);
}

void vm_vcpu_park(struct vcpu *vcpu)
{
    struct vm *vm = vcpu->vm;
    vm_vcpu_park_hook_fn hook = atomic_load_explicit(&vm_vcpu_park_hook, memory_order_acquire);
    if (hook != NULL)
        hook(vcpu);
    pthread_mutex_lock(&vm->park_lock);
    atomic_store_explicit(&vcpu->paused, true, memory_order_release);
    pthread_cond_broadcast(&vm->ack_cond);
    while (atomic_load_explicit(&vcpu->pause_requested, memory_order_acquire) && !vm_stop_waiting(vcpu))
        pthread_cond_wait(&vm->park_cond, &vm->park_lock);
    atomic_store_explicit(&vcpu->paused, false, memory_order_release);
    pthread_mutex_unlock(&vm->park_lock);
}

void vm_vcpu_wait_halted(struct vcpu *vcpu)
{
    struct vm *vm = vcpu->vm;
    pthread_mutex_lock(&vm->park_lock);
    while (!atomic_load_explicit(&vcpu->pause_requested, memory_order_acquire) && !vm_stop_waiting(vcpu))
        pthread_cond_wait(&vm->park_cond, &vm->park_lock);
    pthread_mutex_unlock(&vm->park_lock);
}

void vm_vcpu_wait_stopped(struct vcpu *vcpu)
{
    struct vm *vm = vcpu->vm;
    pthread_mutex_lock(&vm->park_lock);
    atomic_store_explicit(&vcpu->paused, true, memory_order_release);
    pthread_cond_broadcast(&vm->ack_cond);
    while (!vm_stop_waiting(vcpu))
        pthread_cond_wait(&vm->park_cond, &vm->park_lock);
    pthread_mutex_unlock(&vm->park_lock);
}

void vm_vcpu_throttle_sleep(struct vcpu *vcpu, uint64_t nanoseconds)
{
    struct vm *vm = vcpu->vm;
    struct timespec deadline = monotonic_deadline_after_ns(nanoseconds);
    int percent = atomic_load_explicit(&vcpu->throttle_percent, memory_order_relaxed);
    pthread_mutex_lock(&vm->park_lock);
    /* A lowered (or removed) throttle ends the sleep at once: vcpu_set_throttle
     * broadcasts park_cond when it lowers the value. */
    while (!atomic_load_explicit(&vcpu->pause_requested, memory_order_acquire) && !vm_stop_waiting(vcpu) &&
           atomic_load_explicit(&vcpu->throttle_percent, memory_order_relaxed) >= percent) {
        if (pthread_cond_timedwait(&vm->park_cond, &vm->park_lock, &deadline) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&vm->park_lock);
}
