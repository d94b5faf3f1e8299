/*
 * Machine state v2: capture from KVM and restore into KVM, in the order
 * machine_state_restore_plan (machine_state_order.c) decides. Needs
 * /dev/kvm; written without one and NOT RUN YET.
 */
#include "migration/machine_state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vmm/cmos_rtc.h"
#include "vmm/monotonic.h"

/* ---- KVM: capture ------------------------------------------------------------ */
/* NOT RUN YET (written without /dev/kvm). */

#define MSR_CHUNK 128u      /* KVM_{GET,SET}_MSRS take fewer than 256 (MAX_IO_MSRS) per call */

static int ioctl_failed(char *error, size_t error_size, const char *what, uint32_t vcpu)
{
    int saved = errno;
    if (vcpu == MACHINE_STATE_NO_VCPU)
        snprintf(error, error_size, "%s: %s", what, strerror(saved));
    else
        snprintf(error, error_size, "vCPU %" PRIu32 ": %s: %s", vcpu, what, strerror(saved));
    return -saved;
}

static struct kvm_msrs *msrs_allocate(uint32_t count)
{
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + (size_t)count * sizeof(struct kvm_msr_entry));
    if (msrs != NULL)
        msrs->nmsrs = count;
    return msrs;
}

int machine_state_capture_vcpu(int vcpu_fd, const struct machine_state_capture_config *config,
                               struct machine_state_vcpu *vcpu, char *error, size_t error_size)
{
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    vcpu->sections = 0;
    /* MP_STATE first: KVM_GET_MP_STATE runs kvm_apic_accept_events, which
     * may change LAPIC and vCPU state that the later GETs then see. */
    if (ioctl(vcpu_fd, KVM_GET_MP_STATE, &vcpu->mp_state) < 0)
        return ioctl_failed(error, error_size, "KVM_GET_MP_STATE", none);
    if (ioctl(vcpu_fd, KVM_GET_REGS, &vcpu->regs) < 0)
        return ioctl_failed(error, error_size, "KVM_GET_REGS", none);
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &vcpu->sregs) < 0)
        return ioctl_failed(error, error_size, "KVM_GET_SREGS", none);
    vcpu->sections |= MACHINE_STATE_HAS_MP_STATE | MACHINE_STATE_HAS_REGS | MACHINE_STATE_HAS_SREGS;

    /* XSAVE2 with the VM's size where KVM_CAP_XSAVE2 exists (AMX makes it
     * larger than 4096), else XSAVE, else the legacy FPU (hosts without
     * XSAVE). */
    uint32_t xsave_size = config->xsave2_size >= MACHINE_STATE_XSAVE_MIN ? config->xsave2_size
                                                                           : MACHINE_STATE_XSAVE_MIN;
    if (xsave_size > MACHINE_STATE_XSAVE_MAX) {
        snprintf(error, error_size, "KVM_CAP_XSAVE2 size %" PRIu32 " exceeds %u", xsave_size,
                 MACHINE_STATE_XSAVE_MAX);
        return -E2BIG;
    }
    uint8_t *xsave = calloc(1, xsave_size);
    if (xsave == NULL) {
        snprintf(error, error_size, "KVM_GET_XSAVE: out of memory for %" PRIu32 " bytes", xsave_size);
        return -ENOMEM;
    }
    unsigned long request = config->xsave2_size != 0 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE;
    if (ioctl(vcpu_fd, request, xsave) == 0) {
        free(vcpu->xsave);
        vcpu->xsave = xsave;
        vcpu->xsave_size = xsave_size;
        vcpu->sections |= MACHINE_STATE_HAS_XSAVE;
    } else {
        free(xsave);
        if (ioctl(vcpu_fd, KVM_GET_FPU, &vcpu->fpu) < 0)
            return ioctl_failed(error, error_size, "KVM_GET_XSAVE and KVM_GET_FPU", none);
        vcpu->sections |= MACHINE_STATE_HAS_FPU;
    }
    if (ioctl(vcpu_fd, KVM_GET_XCRS, &vcpu->xcrs) == 0)
        vcpu->sections |= MACHINE_STATE_HAS_XCRS;
    if (ioctl(vcpu_fd, KVM_GET_DEBUGREGS, &vcpu->debugregs) < 0)
        return ioctl_failed(error, error_size, "KVM_GET_DEBUGREGS", none);
    vcpu->sections |= MACHINE_STATE_HAS_DEBUGREGS;
    if (config->has_irqchip) {
        if (ioctl(vcpu_fd, KVM_GET_LAPIC, &vcpu->lapic) < 0)
            return ioctl_failed(error, error_size, "KVM_GET_LAPIC", none);
        vcpu->sections |= MACHINE_STATE_HAS_LAPIC;
    }
    /* Optional as in Firecracker: without it the destination cannot scale
     * the TSC, and a different host frequency goes unnoticed. */
    int tsc_khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
    if (tsc_khz > 0) {
        vcpu->tsc_khz = (uint32_t)tsc_khz;
        vcpu->sections |= MACHINE_STATE_HAS_TSC_KHZ;
    }

    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + MACHINE_STATE_MAX_CPUID * sizeof(struct kvm_cpuid_entry2));
    if (cpuid == NULL) {
        snprintf(error, error_size, "KVM_GET_CPUID2: out of memory");
        return -ENOMEM;
    }
    cpuid->nent = MACHINE_STATE_MAX_CPUID;
    if (ioctl(vcpu_fd, KVM_GET_CPUID2, cpuid) < 0) {
        int result = ioctl_failed(error, error_size, "KVM_GET_CPUID2", none);
        free(cpuid);
        return result;
    }
    int result = machine_state_vcpu_set_cpuid(vcpu, cpuid->entries, cpuid->nent);
    free(cpuid);
    if (result != 0) {
        snprintf(error, error_size, "KVM_GET_CPUID2: out of memory");
        return result;
    }
    vcpu->sections |= MACHINE_STATE_HAS_CPUID2;

    if (config->msr_count > MACHINE_STATE_MAX_MSRS) {
        snprintf(error, error_size, "%" PRIu32 " MSRs to save exceed %u", config->msr_count, MACHINE_STATE_MAX_MSRS);
        return -E2BIG;
    }
    struct kvm_msr_entry *entries = calloc(config->msr_count > 0 ? config->msr_count : 1, sizeof(*entries));
    struct kvm_msrs *chunk = msrs_allocate(MSR_CHUNK);
    if (entries == NULL || chunk == NULL) {
        free(entries);
        free(chunk);
        snprintf(error, error_size, "KVM_GET_MSRS: out of memory");
        return -ENOMEM;
    }
    for (uint32_t start = 0; start < config->msr_count; start += MSR_CHUNK) {
        uint32_t n = config->msr_count - start < MSR_CHUNK ? config->msr_count - start : MSR_CHUNK;
        memset(chunk->entries, 0, (size_t)n * sizeof(struct kvm_msr_entry));
        chunk->nmsrs = n;
        for (uint32_t i = 0; i < n; i++)
            chunk->entries[i].index = config->msr_indices[start + i];
        int read = ioctl(vcpu_fd, KVM_GET_MSRS, chunk);
        if (read < 0) {
            result = ioctl_failed(error, error_size, "KVM_GET_MSRS", none);
            free(entries);
            free(chunk);
            return result;
        }
        if ((uint32_t)read > n) {
            snprintf(error, error_size, "KVM_GET_MSRS: read %d MSRs, asked for %" PRIu32, read, n);
            free(entries);
            free(chunk);
            return -EIO;
        }
        if ((uint32_t)read != n) {
            /* KVM stops at the first MSR it cannot read: that one is named. */
            snprintf(error, error_size, "KVM_GET_MSRS: read %d of %" PRIu32 " MSRs; MSR 0x%" PRIx32 " could not be read",
                     read, n, chunk->entries[read].index);
            free(entries);
            free(chunk);
            return -EIO;
        }
        memcpy(entries + start, chunk->entries, (size_t)n * sizeof(struct kvm_msr_entry));
    }
    free(chunk);
    free(vcpu->msrs);
    vcpu->msrs = entries;
    vcpu->msr_count = config->msr_count;
    vcpu->sections |= MACHINE_STATE_HAS_MSRS;

    /* Last: the GETs above may change event state (Firecracker's note). */
    if (ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &vcpu->events) < 0)
        return ioctl_failed(error, error_size, "KVM_GET_VCPU_EVENTS", none);
    vcpu->sections |= MACHINE_STATE_HAS_VCPU_EVENTS;
    return 0;
}

int machine_state_capture_vm(int vm_fd, const struct machine_state_capture_config *config,
                             struct machine_state_vm *vm, char *error, size_t error_size)
{
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    if (config->has_pit) {
        if (ioctl(vm_fd, KVM_GET_PIT2, &vm->pit) < 0)
            return ioctl_failed(error, error_size, "KVM_GET_PIT2", none);
        vm->sections |= MACHINE_STATE_HAS_PIT2;
    }
    uint64_t before = realtime_now_ns();
    if (ioctl(vm_fd, KVM_GET_CLOCK, &vm->clock) < 0)
        return ioctl_failed(error, error_size, "KVM_GET_CLOCK", none);
    uint64_t after = realtime_now_ns();
    machine_state_clock_complete(&vm->clock, before + (after - before) / 2);
    vm->sections |= MACHINE_STATE_HAS_CLOCK;
    if (config->has_irqchip) {
        static const struct { uint32_t chip; uint32_t bit; const char *name; } chips[] = {
            { KVM_IRQCHIP_PIC_MASTER, MACHINE_STATE_HAS_PIC_MASTER, "KVM_GET_IRQCHIP(pic master)" },
            { KVM_IRQCHIP_PIC_SLAVE, MACHINE_STATE_HAS_PIC_SLAVE, "KVM_GET_IRQCHIP(pic slave)" },
            { KVM_IRQCHIP_IOAPIC, MACHINE_STATE_HAS_IOAPIC, "KVM_GET_IRQCHIP(ioapic)" },
        };
        for (unsigned i = 0; i < 3; i++) {
            struct kvm_irqchip chip = { .chip_id = chips[i].chip };
            if (ioctl(vm_fd, KVM_GET_IRQCHIP, &chip) < 0)
                return ioctl_failed(error, error_size, chips[i].name, none);
            if (chips[i].chip == KVM_IRQCHIP_PIC_MASTER)
                vm->pic_master = chip.chip.pic;
            else if (chips[i].chip == KVM_IRQCHIP_PIC_SLAVE)
                vm->pic_slave = chip.chip.pic;
            else
                vm->ioapic = chip.chip.ioapic;
            vm->sections |= chips[i].bit;
        }
    }
    /* The VM-wide frequency (KVM_CAP_VM_TSC_CONTROL); older kernels answer
     * only on a vCPU fd, and the per-vCPU section carries it then. */
    int tsc_khz = ioctl(vm_fd, KVM_GET_TSC_KHZ, 0);
    if (tsc_khz > 0) {
        vm->tsc_khz = (uint32_t)tsc_khz;
        vm->sections |= MACHINE_STATE_HAS_TSC_FREQUENCY;
    }
    return 0;
}

/* ---- KVM: restore ------------------------------------------------------------- */
/* NOT RUN YET (written without /dev/kvm). */

static int set_msr_entries(int vcpu_fd, uint32_t vcpu, const struct kvm_msr_entry *entries, uint32_t count,
                           char *error, size_t error_size)
{
    struct kvm_msrs *chunk = msrs_allocate(MSR_CHUNK);
    if (chunk == NULL) {
        snprintf(error, error_size, "vCPU %" PRIu32 ": KVM_SET_MSRS: out of memory", vcpu);
        return -ENOMEM;
    }
    for (uint32_t start = 0; start < count; start += MSR_CHUNK) {
        uint32_t n = count - start < MSR_CHUNK ? count - start : MSR_CHUNK;
        chunk->nmsrs = n;
        memcpy(chunk->entries, entries + start, (size_t)n * sizeof(struct kvm_msr_entry));
        int written = ioctl(vcpu_fd, KVM_SET_MSRS, chunk);
        if (written < 0) {
            int result = ioctl_failed(error, error_size, "KVM_SET_MSRS", vcpu);
            free(chunk);
            return result;
        }
        if ((uint32_t)written > n) {
            snprintf(error, error_size, "vCPU %" PRIu32 ": KVM_SET_MSRS: wrote %d MSRs, asked for %" PRIu32, vcpu,
                     written, n);
            free(chunk);
            return -EIO;
        }
        if ((uint32_t)written != n) {
            snprintf(error, error_size,
                     "vCPU %" PRIu32 ": KVM_SET_MSRS: wrote %d of %" PRIu32 " MSRs; MSR 0x%" PRIx32
                     " (value 0x%llx) was refused", vcpu, written, n, chunk->entries[written].index,
                     (unsigned long long)chunk->entries[written].data);
            free(chunk);
            return -EIO;
        }
    }
    free(chunk);
    return 0;
}

/* Before the first vCPU's TSC is written: a TSC 4 s ahead of it, so that
 * the real value lands outside the window of KVM's TSC synchronization.
 * Kernels before 6.6 (bf328e22e472, "Don't sync user-written TSC against
 * startup values") treat a host-initiated TSC write within one second of
 * the value they expect since the last write (0 at vCPU creation, plus the
 * time since) as the same TSC and keep the old offset: the written value is
 * dropped and the guest's TSC goes back by up to a second when the
 * source's TSC happens to be near the destination VM's age (seen under
 * make test-nested's 6.1 kernel). After this write the expected value is
 * 4 s ahead, so the real write starts a new TSC generation, and the other
 * vCPUs' writes of the same value then match it (KVM keeps them in
 * sync). Later kernels simply overwrite it. */
static int write_tsc_ahead(int vcpu_fd, uint32_t vcpu, const struct kvm_msr_entry *entries, uint32_t count,
                           uint32_t tsc_khz, char *error, size_t error_size)
{
    if (tsc_khz == 0)
        return 0;
    for (uint32_t m = 0; m < count; m++) {
        if (entries[m].index != MACHINE_STATE_MSR_IA32_TSC)
            continue;
        struct kvm_msr_entry ahead = { .index = MACHINE_STATE_MSR_IA32_TSC,
                                       .data = entries[m].data + (uint64_t)tsc_khz * 4000u };
        return set_msr_entries(vcpu_fd, vcpu, &ahead, 1, error, error_size);
    }
    return 0;
}

/* The saved TSC advanced by the host realtime elapsed since the source's
 * KVM_GET_CLOCK (the same span KVM_SET_CLOCK adds to kvm-clock): a guest
 * whose clocksource is the TSC then sees its clock run through the
 * downtime too, instead of lagging by it on VMX/SVM hosts, where the TSC
 * written is the TSC the guest reads (docs/migration-protocol.md, "The
 * clock decision"). The vCPUs' TSCs were read before the clock, up to the
 * capture's few milliseconds earlier: the guest's TSC lands that much
 * behind, never ahead. No clock section, no realtime in it, or a realtime
 * in this host's future (hosts' clocks apart): the TSC as saved. */
static void advance_tsc(const struct machine_state *state, struct kvm_msr_entry *entries, uint32_t count,
                        uint32_t tsc_khz)
{
    const struct kvm_clock_data *clock = &state->vm.clock;
    if (!(state->vm.sections & MACHINE_STATE_HAS_CLOCK) || !(clock->flags & KVM_CLOCK_REALTIME) || tsc_khz == 0)
        return;
    uint64_t now = realtime_now_ns();
    if (now <= clock->realtime)
        return;
    for (uint32_t m = 0; m < count; m++)
        if (entries[m].index == MACHINE_STATE_MSR_IA32_TSC)
            entries[m].data += machine_state_tsc_ticks(tsc_khz, now - clock->realtime);
}

static int restore_vcpu_step(const struct machine_state_restore_target *target, const struct machine_state *state,
                             const struct machine_state_step *step, char *error, size_t error_size)
{
    uint32_t i = step->vcpu;
    int fd = target->vcpu_fds[i];
    const struct machine_state_vcpu *v = &state->vcpus[i];
    const char *name = machine_state_call_name(step->call);
    int r = 0;
    switch (step->call) {
    case MACHINE_STATE_CALL_SET_TSC_KHZ:
        if (ioctl(fd, KVM_SET_TSC_KHZ, (unsigned long)v->tsc_khz) < 0) {
            int saved = errno;
            snprintf(error, error_size,
                     "vCPU %" PRIu32 ": TSC frequency differs (source %" PRIu32 " kHz, destination %" PRIu32
                     " kHz) and KVM_SET_TSC_KHZ failed: %s", i, v->tsc_khz, target->local_tsc_khz, strerror(saved));
            return -saved;
        }
        return 0;
    case MACHINE_STATE_CALL_SET_CPUID2: {
        struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + (size_t)v->cpuid_count * sizeof(struct kvm_cpuid_entry2));
        if (cpuid == NULL) {
            snprintf(error, error_size, "vCPU %" PRIu32 ": KVM_SET_CPUID2: out of memory", i);
            return -ENOMEM;
        }
        cpuid->nent = v->cpuid_count;
        memcpy(cpuid->entries, v->cpuid, (size_t)v->cpuid_count * sizeof(struct kvm_cpuid_entry2));
        r = ioctl(fd, KVM_SET_CPUID2, cpuid);
        free(cpuid);
        break;
    }
    case MACHINE_STATE_CALL_SET_MP_STATE: r = ioctl(fd, KVM_SET_MP_STATE, &v->mp_state); break;
    case MACHINE_STATE_CALL_SET_REGS: r = ioctl(fd, KVM_SET_REGS, &v->regs); break;
    case MACHINE_STATE_CALL_SET_SREGS: r = ioctl(fd, KVM_SET_SREGS, &v->sregs); break;
    case MACHINE_STATE_CALL_SET_XSAVE: {
        /* KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 says on this
         * host (at least 4096), whatever the state's size: the buffer must
         * be that large. A larger saved region holds components (AMX)
         * this host's KVM would not read: refused, not truncated. */
        uint32_t host_size = target->xsave2_size >= MACHINE_STATE_XSAVE_MIN ? target->xsave2_size
                                                                            : MACHINE_STATE_XSAVE_MIN;
        if (v->xsave_size > host_size) {
            snprintf(error, error_size,
                     "vCPU %" PRIu32 ": xsave region of %" PRIu32 " bytes, but this host's KVM takes %" PRIu32
                     " (KVM_CAP_XSAVE2)", i, v->xsave_size, host_size);
            return -EINVAL;
        }
        uint8_t *buffer = calloc(1, host_size);
        if (buffer == NULL) {
            snprintf(error, error_size, "vCPU %" PRIu32 ": KVM_SET_XSAVE: out of memory", i);
            return -ENOMEM;
        }
        memcpy(buffer, v->xsave, v->xsave_size);
        r = ioctl(fd, KVM_SET_XSAVE, buffer);
        int saved = errno;
        free(buffer);
        errno = saved;
        break;
    }
    case MACHINE_STATE_CALL_SET_FPU: r = ioctl(fd, KVM_SET_FPU, &v->fpu); break;
    case MACHINE_STATE_CALL_SET_XCRS: r = ioctl(fd, KVM_SET_XCRS, &v->xcrs); break;
    case MACHINE_STATE_CALL_SET_DEBUGREGS: r = ioctl(fd, KVM_SET_DEBUGREGS, &v->debugregs); break;
    case MACHINE_STATE_CALL_SET_LAPIC: r = ioctl(fd, KVM_SET_LAPIC, &v->lapic); break;
    case MACHINE_STATE_CALL_SET_MSRS:
    case MACHINE_STATE_CALL_SET_TSC_DEADLINE: {
        struct kvm_msr_entry *first = calloc(v->msr_count + 1u, sizeof(*first));
        struct kvm_msr_entry *deferred = calloc(v->msr_count + 1u, sizeof(*deferred));
        if (first == NULL || deferred == NULL) {
            free(first);
            free(deferred);
            snprintf(error, error_size, "vCPU %" PRIu32 ": KVM_SET_MSRS: out of memory", i);
            return -ENOMEM;
        }
        uint32_t first_count, deferred_count;
        machine_state_msr_split(v->msrs, v->msr_count, first, &first_count, deferred, &deferred_count);
        if (step->call == MACHINE_STATE_CALL_SET_MSRS) {
            uint32_t tsc_khz = (v->sections & MACHINE_STATE_HAS_TSC_KHZ) ? v->tsc_khz : target->local_tsc_khz;
            advance_tsc(state, first, first_count, tsc_khz);
            r = i == 0 ? write_tsc_ahead(fd, i, first, first_count, tsc_khz, error, error_size) : 0;
            if (r == 0)
                r = set_msr_entries(fd, i, first, first_count, error, error_size);
        } else
            r = set_msr_entries(fd, i, deferred, deferred_count, error, error_size);
        free(first);
        free(deferred);
        return r;
    }
    case MACHINE_STATE_CALL_SET_VCPU_EVENTS: r = ioctl(fd, KVM_SET_VCPU_EVENTS, &v->events); break;
    case MACHINE_STATE_CALL_KVMCLOCK_CTRL:
        /* EINVAL: the guest has not enabled kvmclock (e.g. no-kvmclock, or
         * the built-in guest). Not an error, as in Firecracker. */
        if (ioctl(fd, KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
            return ioctl_failed(error, error_size, name, i);
        return 0;
    default:
        snprintf(error, error_size, "vCPU %" PRIu32 ": step %s is not a vCPU call", i, name);
        return -EINVAL;
    }
    if (r < 0)
        return ioctl_failed(error, error_size, name, i);
    return 0;
}

static int restore_vm_step(const struct machine_state_restore_target *target, const struct machine_state *state,
                           const struct machine_state_step *step, char *error, size_t error_size)
{
    const struct machine_state_vm *vm = &state->vm;
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    const char *name = machine_state_call_name(step->call);
    int r = 0;
    switch (step->call) {
    case MACHINE_STATE_CALL_SET_PIT2: r = ioctl(target->vm_fd, KVM_SET_PIT2, &vm->pit); break;
    case MACHINE_STATE_CALL_SET_CLOCK: {
        /* The choice (docs/migration-protocol.md): carry realtime. With
         * KVM_CLOCK_REALTIME KVM advances the clock by the host realtime
         * elapsed since the source's KVM_GET_CLOCK, so the guest's clock
         * continues across the downtime instead of stopping for it (it
         * never steps backwards). It needs the two hosts' CLOCK_REALTIME
         * in sync (same host: exact; else NTP's error is the guest's
         * error). TSC_STABLE and HOST_TSC mean nothing to SET_CLOCK on
         * another host (older kernels refuse every flag), so only
         * REALTIME is passed, and only when the source's KVM set it. */
        struct kvm_clock_data clock = { .clock = vm->clock.clock };
        if (vm->clock.flags & KVM_CLOCK_REALTIME) {
            clock.flags = KVM_CLOCK_REALTIME;
            clock.realtime = vm->clock.realtime;
        }
        r = ioctl(target->vm_fd, KVM_SET_CLOCK, &clock);
        break;
    }
    case MACHINE_STATE_CALL_SET_IRQCHIP_PIC_MASTER:
    case MACHINE_STATE_CALL_SET_IRQCHIP_PIC_SLAVE:
    case MACHINE_STATE_CALL_SET_IRQCHIP_IOAPIC: {
        struct kvm_irqchip chip;
        memset(&chip, 0, sizeof(chip));
        if (step->call == MACHINE_STATE_CALL_SET_IRQCHIP_PIC_MASTER) {
            chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
            chip.chip.pic = vm->pic_master;
        } else if (step->call == MACHINE_STATE_CALL_SET_IRQCHIP_PIC_SLAVE) {
            chip.chip_id = KVM_IRQCHIP_PIC_SLAVE;
            chip.chip.pic = vm->pic_slave;
        } else {
            chip.chip_id = KVM_IRQCHIP_IOAPIC;
            chip.chip.ioapic = vm->ioapic;
        }
        r = ioctl(target->vm_fd, KVM_SET_IRQCHIP, &chip);
        break;
    }
    case MACHINE_STATE_CALL_RESTORE_UART: {
        if (target->uart == NULL) {
            snprintf(error, error_size, "the state has a UART but this VM has none");
            return -EINVAL;
        }
        char reason[256];
        int result = uart_state_restore(target->uart, &vm->uart, reason, sizeof(reason));
        if (result != 0)
            snprintf(error, error_size, "%s", reason);
        return result;
    }
    case MACHINE_STATE_CALL_RESTORE_CMOS:
        if (target->rtc != NULL) {
            int locked = pthread_mutex_lock(&target->rtc->lock);
            if (locked != 0) {
                snprintf(error, error_size, "cmos restore: pthread_mutex_lock: %s", strerror(locked));
                return -locked;
            }
            target->rtc->index = vm->cmos_index;
            memcpy(target->rtc->ram, vm->cmos_ram, sizeof(target->rtc->ram));
            pthread_mutex_unlock(&target->rtc->lock);
        }
        return 0;
    default:
        snprintf(error, error_size, "step %s is not a VM call", name);
        return -EINVAL;
    }
    if (r < 0)
        return ioctl_failed(error, error_size, name, none);
    return 0;
}

int machine_state_restore(const struct machine_state_restore_target *target, const struct machine_state *state,
                          char *error, size_t error_size)
{
    if (target->vcpu_count != state->vcpu_count) {
        snprintf(error, error_size, "machine state for %" PRIu32 " vCPUs, this VM has %" PRIu32, state->vcpu_count,
                 target->vcpu_count);
        return -EINVAL;
    }
    if (machine_state_validate(state, error, error_size) != 0)
        return -EINVAL;
    struct machine_state_plan_input input;
    machine_state_plan_input_from(state, target->local_tsc_khz, &input);
    struct machine_state_step *steps = calloc(MACHINE_STATE_MAX_STEPS, sizeof(*steps));
    if (steps == NULL) {
        snprintf(error, error_size, "machine state restore: out of memory");
        return -ENOMEM;
    }
    size_t count = machine_state_restore_plan(&input, steps, MACHINE_STATE_MAX_STEPS);
    int result = 0;
    for (size_t s = 0; s < count && result == 0; s++) {
        if (steps[s].vcpu == MACHINE_STATE_NO_VCPU)
            result = restore_vm_step(target, state, &steps[s], error, error_size);
        else
            result = restore_vcpu_step(target, state, &steps[s], error, error_size);
    }
    free(steps);
    return result;
}
