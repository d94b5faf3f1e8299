/*
 * The vCPU thread: KVM_RUN, exit handling, pause parking and throttling.
 *
 * Kick protocol: a controller sets a request flag (pause_requested, or
 * vm->shutdown_requested), then vcpu_kick() sends VCPU_KICK_SIGNAL to the
 * thread. The handler sets run->immediate_exit, so whether the signal lands
 * while the thread is inside KVM_RUN (returns EINTR) or just before it
 * (KVM_RUN returns EINTR at once), the thread gets back to the top of its
 * loop and sees the flag. The thread clears immediate_exit before it reads
 * the flags, so a kick is never lost, only occasionally redundant.
 *
 * Throttle: a per-thread POSIX timer delivers the same signal after each
 * timeslice; the thread then sleeps slice * P / (100 - P) on the VM's park
 * condition variable (so pause and shutdown still wake it at once).
 */
#include "vmm/vcpu.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "guest/abi.h"
#include "vmm/cmos_rtc.h"
#include "vmm/page_clearing.h"
#include "vmm/vm.h"
#include "vmm/host.h"
#include "vmm/vcpu_internal.h"

#define THROTTLE_TIMESLICE_NS 10000000ULL   /* 10 ms, as QEMU's cpu-throttle */

/* The vCPU running on this thread, for the signal handler. */
static __thread struct vcpu *thread_vcpu;

static void kick_signal_handler(int signo, siginfo_t *info, void *context)
{
    (void)signo;
    (void)context;
    struct vcpu *vcpu = thread_vcpu;
    if (vcpu == NULL)
        return;
    __atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_RELAXED);
    if (info != NULL && info->si_code == SI_TIMER)
        atomic_fetch_add_explicit(&vcpu->counters.throttle_timer_expiries, 1, memory_order_relaxed);
}

static unsigned latency_bucket(uint64_t nanoseconds)
{
    unsigned bucket = nanoseconds <= 1 ? 0 : 63 - (unsigned)__builtin_clzll(nanoseconds);
    return bucket < VCPU_KICK_LATENCY_BUCKETS ? bucket : VCPU_KICK_LATENCY_BUCKETS - 1;
}

/* KVM_RUN returned EINTR: if a kick was sent while it ran, record how long
 * the vCPU took to leave. kick_before is kick_sent_ns read before KVM_RUN. */
static void record_kick_latency(struct vcpu *vcpu, uint64_t kick_before)
{
    uint64_t sent = atomic_load_explicit(&vcpu->kick_sent_ns, memory_order_relaxed);
    if (sent == kick_before || sent == 0)
        return;
    uint64_t now = vm_now_ns();
    uint64_t latency = now > sent ? now - sent : 0;
    atomic_fetch_add_explicit(&vcpu->counters.kick_latency_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&vcpu->counters.kick_latency_sum_ns, latency, memory_order_relaxed);
    atomic_fetch_add_explicit(&vcpu->counters.kick_latency_buckets[latency_bucket(latency)], 1,
                              memory_order_relaxed);
}

int vcpu_install_kick_handler(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = kick_signal_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    /* No SA_RESTART: we want KVM_RUN and sleeps to return EINTR. */
    if (sigaction(VCPU_KICK_SIGNAL, &action, NULL) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: sigaction(vCPU kick signal): %s\n", strerror(saved));
        return -saved;
    }
    return 0;
}

void vcpu_kick(struct vcpu *vcpu)
{
    atomic_store_explicit(&vcpu->kick_sent_ns, vm_now_ns(), memory_order_relaxed);
    atomic_fetch_add_explicit(&vcpu->counters.kicks_sent, 1, memory_order_relaxed);
    if (vcpu->thread_started) {
        int result = pthread_kill(vcpu->thread, VCPU_KICK_SIGNAL);
        if (result != 0 && result != ESRCH)
            fprintf(stderr, "ringvm: pthread_kill(vcpu %u): %s\n", vcpu->index, strerror(result));
    }
}

void vcpu_set_throttle(struct vcpu *vcpu, int percent)
{
    if (percent < 0)
        percent = 0;
    if (percent > 99)
        percent = 99;
    int previous = atomic_exchange_explicit(&vcpu->throttle_percent, percent, memory_order_relaxed);
    /* A ring-3 guest may never exit on its own: kick it so the thread
     * reaches the top of its loop and arms the timeslice timer. */
    if (previous == 0 && percent > 0)
        vcpu_kick(vcpu);
    /* A vCPU sleeping off a higher throttle must not keep sleeping (up to
     * 990 ms at 99 %) after the throttle was lowered or removed. */
    if (percent < previous) {
        pthread_mutex_lock(&vcpu->vm->park_lock);
        pthread_cond_broadcast(&vcpu->vm->park_cond);
        pthread_mutex_unlock(&vcpu->vm->park_lock);
    }
}

int vcpu_get_throttle(const struct vcpu *vcpu)
{
    return atomic_load_explicit(&vcpu->throttle_percent, memory_order_relaxed);
}

/* ---- diagnostics ---------------------------------------------------- */

void vcpu_dump_registers(struct vcpu *vcpu, FILE *out)
{
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    if (ioctl(vcpu->fd, KVM_GET_REGS, &regs) != 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) != 0) {
        fprintf(out, "ringvm: vcpu %u: registers unavailable: %s\n", vcpu->index, strerror(errno));
        return;
    }
    fprintf(out,
            "ringvm: vcpu %u registers:\n"
            "  rip %016llx rsp %016llx rflags %016llx\n"
            "  rax %016llx rbx %016llx rcx %016llx rdx %016llx\n"
            "  rsi %016llx rdi %016llx rbp %016llx\n"
            "  r8  %016llx r9  %016llx r10 %016llx r11 %016llx\n"
            "  r12 %016llx r13 %016llx r14 %016llx r15 %016llx\n"
            "  cs %04x (dpl %u) ss %04x cr0 %016llx cr2 %016llx cr3 %016llx cr4 %016llx efer %016llx\n"
            "  gdt %016llx/%04x idt %016llx/%04x tr %04x\n",
            vcpu->index, regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx,
            regs.rsi, regs.rdi, regs.rbp, regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13,
            regs.r14, regs.r15, sregs.cs.selector, sregs.cs.dpl, sregs.ss.selector, sregs.cr0, sregs.cr2,
            sregs.cr3, sregs.cr4, sregs.efer, sregs.gdt.base, sregs.gdt.limit, sregs.idt.base,
            sregs.idt.limit, sregs.tr.selector);
}

/* Marks this vCPU stopped for good and asks the VM to shut down. */
static void vcpu_fail(struct vcpu *vcpu, int exit_code)
{
    vcpu->stopped = true;
    vm_request_shutdown(vcpu->vm, exit_code);
}

/* ---- exits ---------------------------------------------------------- */

static const char *exception_name(uint64_t vector)
{
    static const char *const names[] = {
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF(9)", "#TS", "#NP",
        "#SS", "#GP", "#PF", "reserved(15)", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    };
    return vector < sizeof(names) / sizeof(names[0]) ? names[vector] : "exception";
}

static void handle_command(struct vcpu *vcpu, unsigned command, uint64_t argument)
{
    struct vm *vm = vcpu->vm;
    switch (command) {
    case RINGVM_CMD_CONSOLE_WRITE: {
        uint64_t gpa = argument & ((1ULL << 48) - 1);
        uint64_t length = argument >> 48;
        const char *text = length <= 4096 ? guest_memory_gpa_to_host(&vm->memory, gpa, length) : NULL;
        if (text == NULL) {
            vm_log_once(vm, 0x10000000000ULL | gpa, "ringvm: vcpu %u: console write of %" PRIu64
                        " bytes at 0x%" PRIx64 " is outside guest RAM - ignored\n", vcpu->index, length, gpa);
            return;
        }
        serial_write_text(&vm->serial, vcpu->index, text, length);
        return;
    }
    case RINGVM_CMD_EXCEPTION: {
        struct ringvm_exception_report report;
        const void *source = guest_memory_gpa_to_host(&vm->memory, argument, sizeof(report));
        if (source == NULL) {
            fprintf(stderr, "ringvm: vcpu %u: guest exception (report at bad address 0x%" PRIx64 ")\n",
                    vcpu->index, argument);
        } else {
            memcpy(&report, source, sizeof(report));
            fprintf(stderr,
                    "ringvm: vcpu %u: guest exception %s (vector %" PRIu64 ") error 0x%" PRIx64
                    " at rip 0x%" PRIx64 " in ring %" PRIu64 " (cr2 0x%" PRIx64 ", rsp 0x%" PRIx64 ")\n",
                    vcpu->index, exception_name(report.vector), report.vector, report.error_code,
                    report.rip, report.cs & 3, report.cr2, report.rsp);
            atomic_store_explicit(&vm->last_exception_vector, (int)report.vector, memory_order_release);
        }
        vcpu_fail(vcpu, 1);
        return;
    }
    case RINGVM_CMD_PHASE:
        vcpu->guest_phase = (int)argument;
        atomic_store_explicit(&vcpu->guest_phase_published, (int)argument, memory_order_release);
        return;
    case RINGVM_CMD_POWEROFF:
        if (vm->config.guest_kind == VM_GUEST_LINUX)
            fprintf(stderr, "ringvm: vcpu %u: guest powered off (exit code %" PRIu64 ")\n", vcpu->index,
                    argument & 0xff);
        vm_request_shutdown(vm, (int)(argument & 0xff));
        vcpu->stopped = true;
        return;
    case RINGVM_CMD_LEDGER_MISMATCH:
        atomic_fetch_add_explicit(&vm->ledger_mismatches, 1, memory_order_relaxed);
        return;
    case RINGVM_CMD_CLEAR_PAGES: {
        uint64_t gpa = 0, bytes = 0;
        if (page_clearing_decode(argument, &gpa, &bytes) != 0) {
            vm_log_once(vm, 0x30000000000ULL, "ringvm: vcpu %u: clear-pages request 0x%" PRIx64
                        " is malformed (order above %d or pfn not aligned to it) - ignored\n",
                        vcpu->index, argument, RINGVM_CLEAR_PAGES_MAX_ORDER);
            return;
        }
        if (page_clearing_clear(&vm->memory, vm->dirty_log, gpa, bytes) != 0) {
            vm_log_once(vm, 0x30000000001ULL, "ringvm: vcpu %u: clear-pages request for 0x%" PRIx64
                        "..0x%" PRIx64 " is outside guest RAM - ignored\n", vcpu->index, gpa, gpa + bytes - 1);
            return;
        }
        atomic_fetch_add_explicit(&vm->cleared_pages, bytes / RINGVM_PAGE_SIZE, memory_order_relaxed);
        return;
    }
    default:
        vm_log_once(vm, 0x20000000000ULL | command, "ringvm: vcpu %u: unknown guest command %u - ignored\n",
                    vcpu->index, command);
        return;
    }
}

/* The ports a Linux guest touches besides the in-kernel PIC, PIT and
 * speaker port (docs/architecture.md lists them all, with why). */
enum {
    I8042_DATA_PORT = 0x60,
    I8042_COMMAND_PORT = 0x64,
    I8042_COMMAND_PULSE_RESET = 0xfe,
    POST_CODE_PORT = 0x80,          /* io_delay: writes are the delay itself */
    ALTERNATE_DELAY_PORT = 0xed,    /* io_delay=0xed */
};

static bool linux_port_io(struct vcpu *vcpu, uint16_t port, bool is_write, uint8_t *data, uint32_t size)
{
    struct vm *vm = vcpu->vm;
    if (port >= RINGVM_SERIAL_PORT && port < RINGVM_SERIAL_PORT + 8) {
        vm_uart_port_io(vm, (unsigned)(port - RINGVM_SERIAL_PORT), is_write, data, size);
        return true;
    }
    if (cmos_rtc_port_io(&vm->rtc, port, is_write, data, size))
        return true;
    switch (port) {
    case POST_CODE_PORT:
    case ALTERNATE_DELAY_PORT:
        if (!is_write)
            memset(data, 0xff, size);
        return true;
    case I8042_COMMAND_PORT:
        /* Only the reset line of the keyboard controller (reboot=k): no
         * keyboard, status 0 = "input buffer empty", so the kernel's
         * kb_wait() before the 0xfe pulse never spins. */
        if (!is_write) {
            memset(data, 0, size);
        } else if (data[0] == I8042_COMMAND_PULSE_RESET) {
            fprintf(stderr, "ringvm: guest reset through the keyboard controller (reboot=k): exiting\n");
            vm_request_shutdown(vm, 0);
            vcpu->stopped = true;
        }
        return true;
    case I8042_DATA_PORT:
        if (!is_write)
            memset(data, 0, size);
        return true;
    default:
        return false;
    }
}

static void handle_io(struct vcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    bool is_write = run->io.direction == KVM_EXIT_IO_OUT;
    uint16_t port = run->io.port;

    for (uint32_t i = 0; i < run->io.count; i++, data += run->io.size) {
        if (vcpu->vm->config.guest_kind == VM_GUEST_LINUX) {
            if (linux_port_io(vcpu, port, is_write, data, run->io.size))
                continue;
        } else if (serial_port_io(&vcpu->vm->serial, vcpu->index, port, is_write, data, run->io.size)) {
            continue;
        }
        if (port == RINGVM_CONTROL_PORT + 4 * RINGVM_CMD_CLEAR_PAGES && !is_write) {
            /* The guest kernel's probe: expected anywhere, so never logged. */
            uint32_t value = page_clearing_probe_value(vcpu->vm->page_clearing_offered);
            memcpy(data, &value, run->io.size <= 4 ? run->io.size : 4);
            continue;
        }
        if (port >= RINGVM_CONTROL_PORT && port < RINGVM_CONTROL_PORT + 4 * RINGVM_CONTROL_PORT_COUNT &&
            is_write && (port - RINGVM_CONTROL_PORT) % 4 == 0) {
            uint64_t value = 0;
            memcpy(&value, data, run->io.size <= 8 ? run->io.size : 8);
            handle_command(vcpu, (port - RINGVM_CONTROL_PORT) / 4, value);
            continue;
        }
        if (!is_write)
            memset(data, 0xff, run->io.size);
        vm_log_once(vcpu->vm, port, "ringvm: vcpu %u: unhandled port I/O %s 0x%x (%u bytes) - ignored\n",
                    vcpu->index, is_write ? "write to" : "read from", port, run->io.size);
    }
}

static void handle_mmio(struct vcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    uint64_t address = run->mmio.phys_addr;
    if (address >= RINGVM_DOORBELL_GPA && address < RINGVM_DOORBELL_GPA + RINGVM_PAGE_SIZE &&
        run->mmio.is_write && run->mmio.len == 8 && address % 8 == 0) {
        uint64_t value;
        memcpy(&value, run->mmio.data, 8);
        handle_command(vcpu, (unsigned)((address - RINGVM_DOORBELL_GPA) / 8), value);
        return;
    }
    if (!run->mmio.is_write)
        memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
    vm_log_once(vcpu->vm, 0x40000000000ULL | address,
                "ringvm: vcpu %u: unhandled MMIO %s 0x%" PRIx64 " (%u bytes) - ignored\n", vcpu->index,
                run->mmio.is_write ? "write to" : "read from", address, run->mmio.len);
}

/* Returns false when the thread must stop running the vCPU. */
static bool handle_exit(struct vcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    atomic_fetch_add_explicit(&vcpu->counters.exits_total, 1, memory_order_relaxed);
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        atomic_fetch_add_explicit(&vcpu->counters.exits_io, 1, memory_order_relaxed);
        handle_io(vcpu);
        return !vcpu->stopped;
    case KVM_EXIT_MMIO:
        atomic_fetch_add_explicit(&vcpu->counters.exits_mmio, 1, memory_order_relaxed);
        handle_mmio(vcpu);
        return !vcpu->stopped;
    case KVM_EXIT_HLT:
        /* Only without an in-kernel irqchip: nothing will wake the guest
         * but us, so park until paused, resumed or shut down. */
        atomic_fetch_add_explicit(&vcpu->counters.exits_hlt, 1, memory_order_relaxed);
        vm_vcpu_wait_halted(vcpu);
        return true;
    case KVM_EXIT_INTR:
        atomic_fetch_add_explicit(&vcpu->counters.exits_intr, 1, memory_order_relaxed);
        return true;
    case KVM_EXIT_DIRTY_RING_FULL:
        atomic_fetch_add_explicit(&vcpu->counters.exits_dirty_ring_full, 1, memory_order_relaxed);
        if (vcpu->vm->dirty_log != NULL)
            dirty_log_handle_ring_full(vcpu->vm->dirty_log, vcpu);
        return true;
    case KVM_EXIT_SHUTDOWN:
        if (vcpu->vm->config.guest_kind == VM_GUEST_LINUX) {
            /* Linux's reboot=k falls back to a triple fault when the
             * keyboard controller reset did not take: a reboot, not a crash. */
            fprintf(stderr, "ringvm: vcpu %u: guest reset by triple fault (KVM_EXIT_SHUTDOWN): exiting\n",
                    vcpu->index);
            vm_request_shutdown(vcpu->vm, 0);
            vcpu->stopped = true;
            return false;
        }
        fprintf(stderr, "ringvm: vcpu %u: guest triple fault (KVM_EXIT_SHUTDOWN)\n", vcpu->index);
        vcpu_dump_registers(vcpu, stderr);
        vcpu_fail(vcpu, 1);
        return false;
    case KVM_EXIT_INTERNAL_ERROR:
        if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION && run->emulation_failure.ndata >= 3 &&
            (run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
            /* The instruction KVM could not emulate, as bytes: on PVM hosts
             * guest ring 0 is emulated and a few instructions cannot be
             * (guest/linux/README.md, "On PVM hosts" names them and how ringvm avoids them). */
            unsigned size = run->emulation_failure.insn_size;
            if (size > sizeof(run->emulation_failure.insn_bytes))
                size = sizeof(run->emulation_failure.insn_bytes);
            fprintf(stderr, "ringvm: vcpu %u: KVM could not emulate the guest instruction at rip (below):",
                    vcpu->index);
            for (unsigned i = 0; i < size; i++)
                fprintf(stderr, " %02x", run->emulation_failure.insn_bytes[i]);
            fprintf(stderr, " (the first bytes are the instruction; %s host KVM)\n", host_kvm_kind());
        } else {
            fprintf(stderr, "ringvm: vcpu %u: KVM internal error, suberror %u", vcpu->index,
                    run->internal.suberror);
            for (uint32_t i = 0; i < run->internal.ndata && i < 16; i++)
                fprintf(stderr, "%s0x%llx", i == 0 ? ", data " : " ", (unsigned long long)run->internal.data[i]);
            fprintf(stderr, "\n");
        }
        vcpu_dump_registers(vcpu, stderr);
        vcpu_fail(vcpu, 1);
        return false;
    case KVM_EXIT_FAIL_ENTRY:
        fprintf(stderr, "ringvm: vcpu %u: KVM_EXIT_FAIL_ENTRY, hardware entry failure reason 0x%llx\n",
                vcpu->index, (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        vcpu_dump_registers(vcpu, stderr);
        vcpu_fail(vcpu, 1);
        return false;
    case KVM_EXIT_SYSTEM_EVENT:
        fprintf(stderr, "ringvm: vcpu %u: guest system event %u: powering off\n", vcpu->index,
                run->system_event.type);
        vm_request_shutdown(vcpu->vm, 0);
        vcpu->stopped = true;
        return false;
    default:
        fprintf(stderr, "ringvm: vcpu %u: unexpected KVM exit reason %u\n", vcpu->index, run->exit_reason);
        vcpu_dump_registers(vcpu, stderr);
        vcpu_fail(vcpu, 1);
        return false;
    }
}

/* ---- throttle ------------------------------------------------------- */

static int throttle_timer_create(struct vcpu *vcpu)
{
    struct sigevent event;
    memset(&event, 0, sizeof(event));
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = VCPU_KICK_SIGNAL;
    event._sigev_un._tid = gettid();
    if (timer_create(CLOCK_MONOTONIC, &event, &vcpu->throttle_timer) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: vcpu %u: timer_create(throttle): %s\n", vcpu->index, strerror(saved));
        return -saved;
    }
    return 0;
}

static void throttle_timer_arm(struct vcpu *vcpu, uint64_t nanoseconds)
{
    struct itimerspec spec = {
        .it_value = { .tv_sec = (time_t)(nanoseconds / 1000000000ULL),
                      .tv_nsec = (long)(nanoseconds % 1000000000ULL) },
    };
    struct itimerspec old;
    if (timer_settime(vcpu->throttle_timer, 0, &spec, &old) != 0) {
        fprintf(stderr, "ringvm: vcpu %u: timer_settime(throttle): %s\n", vcpu->index, strerror(errno));
    } else if (vcpu->throttle_timer_armed && old.it_value.tv_sec == 0 && old.it_value.tv_nsec == 0) {
        /* The previous one-shot arming ran out: the kernel sent its kick. */
        atomic_fetch_add_explicit(&vcpu->counters.throttle_timer_fired, 1, memory_order_relaxed);
    }
    vcpu->throttle_timer_armed = nanoseconds != 0;
}

/* ---- the loop ------------------------------------------------------- */

void *vcpu_thread_main(void *argument)
{
    struct vcpu *vcpu = argument;
    struct vm *vm = vcpu->vm;
    thread_vcpu = vcpu;
    atomic_store_explicit(&vcpu->tid, (int)gettid(), memory_order_release);

    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, VCPU_KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);

    bool have_timer = throttle_timer_create(vcpu) == 0;
    uint64_t slice_started_ns = 0;

    for (;;) {
        __atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_RELAXED);
        if (atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire))
            break;
        if (atomic_load_explicit(&vcpu->pause_requested, memory_order_acquire)) {
            /* Complete any pending I/O so the state is consistent, then park. */
            if (have_timer && vcpu->throttle_timer_armed)
                throttle_timer_arm(vcpu, 0);
            vcpu->run->immediate_exit = 1;
            (void)ioctl(vcpu->fd, KVM_RUN, 0);
            vcpu->run->immediate_exit = 0;
            vm_vcpu_park(vcpu);
            slice_started_ns = 0;
            continue;
        }
        if (vcpu->stopped) {
            vm_vcpu_wait_stopped(vcpu);
            break;
        }

        int throttle = atomic_load_explicit(&vcpu->throttle_percent, memory_order_relaxed);
        if (have_timer && throttle > 0) {
            uint64_t now = vm_now_ns();
            if (slice_started_ns == 0)
                slice_started_ns = now;
            if (now - slice_started_ns >= THROTTLE_TIMESLICE_NS) {
                uint64_t sleep_ns = THROTTLE_TIMESLICE_NS * (uint64_t)throttle / (uint64_t)(100 - throttle);
                vm_vcpu_throttle_sleep(vcpu, sleep_ns);
                atomic_fetch_add_explicit(&vcpu->counters.throttle_sleeps, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&vcpu->counters.throttle_sleep_ns, vm_now_ns() - now,
                                          memory_order_relaxed);
                slice_started_ns = 0;
                continue;
            }
            throttle_timer_arm(vcpu, THROTTLE_TIMESLICE_NS - (now - slice_started_ns));
        } else {
            slice_started_ns = 0;
            if (have_timer && vcpu->throttle_timer_armed)
                throttle_timer_arm(vcpu, 0);
        }

        uint64_t kick_before = atomic_load_explicit(&vcpu->kick_sent_ns, memory_order_relaxed);
        int result = ioctl(vcpu->fd, KVM_RUN, 0);
        if (result < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                atomic_fetch_add_explicit(&vcpu->counters.exits_intr, 1, memory_order_relaxed);
                record_kick_latency(vcpu, kick_before);
                continue;
            }
            int saved = errno;
            fprintf(stderr, "ringvm: vcpu %u: KVM_RUN: %s\n", vcpu->index, strerror(saved));
            vcpu_dump_registers(vcpu, stderr);
            vcpu_fail(vcpu, 1);
            continue;
        }
        if (!handle_exit(vcpu))
            continue; /* stopped: the top of the loop parks or exits */
    }

    if (have_timer)
        timer_delete(vcpu->throttle_timer);
    thread_vcpu = NULL;
    return NULL;
}
