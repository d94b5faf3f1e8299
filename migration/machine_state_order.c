/*
 * Machine state v2: the restore order as data (machine_state_restore_plan),
 * the MSR split that keeps TSC_DEADLINE after the TSC and the LAPIC, and
 * the TSC-frequency tolerance. Pure: no KVM. The encoding is
 * machine_state.c's; the KVM calls that follow this order are
 * machine_state_kvm.c's.
 */
#include "migration/machine_state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- restore order ---------------------------------------------------------- */

const char *machine_state_call_name(uint32_t call)
{
    switch (call) {
    case MACHINE_STATE_CALL_SET_TSC_KHZ: return "KVM_SET_TSC_KHZ";
    case MACHINE_STATE_CALL_SET_CPUID2: return "KVM_SET_CPUID2";
    case MACHINE_STATE_CALL_SET_MP_STATE: return "KVM_SET_MP_STATE";
    case MACHINE_STATE_CALL_SET_REGS: return "KVM_SET_REGS";
    case MACHINE_STATE_CALL_SET_SREGS: return "KVM_SET_SREGS";
    case MACHINE_STATE_CALL_SET_XSAVE: return "KVM_SET_XSAVE";
    case MACHINE_STATE_CALL_SET_FPU: return "KVM_SET_FPU";
    case MACHINE_STATE_CALL_SET_XCRS: return "KVM_SET_XCRS";
    case MACHINE_STATE_CALL_SET_DEBUGREGS: return "KVM_SET_DEBUGREGS";
    case MACHINE_STATE_CALL_SET_LAPIC: return "KVM_SET_LAPIC";
    case MACHINE_STATE_CALL_SET_MSRS: return "KVM_SET_MSRS";
    case MACHINE_STATE_CALL_SET_TSC_DEADLINE: return "KVM_SET_MSRS(TSC_DEADLINE)";
    case MACHINE_STATE_CALL_SET_VCPU_EVENTS: return "KVM_SET_VCPU_EVENTS";
    case MACHINE_STATE_CALL_SET_PIT2: return "KVM_SET_PIT2";
    case MACHINE_STATE_CALL_SET_CLOCK: return "KVM_SET_CLOCK";
    case MACHINE_STATE_CALL_SET_IRQCHIP_PIC_MASTER: return "KVM_SET_IRQCHIP(pic master)";
    case MACHINE_STATE_CALL_SET_IRQCHIP_PIC_SLAVE: return "KVM_SET_IRQCHIP(pic slave)";
    case MACHINE_STATE_CALL_SET_IRQCHIP_IOAPIC: return "KVM_SET_IRQCHIP(ioapic)";
    case MACHINE_STATE_CALL_RESTORE_UART: return "uart_state_restore";
    case MACHINE_STATE_CALL_RESTORE_CMOS: return "cmos restore";
    case MACHINE_STATE_CALL_KVMCLOCK_CTRL: return "KVM_KVMCLOCK_CTRL";
    }
    return "unknown";
}

bool machine_state_tsc_scaling_needed(uint32_t source_khz, uint32_t local_khz)
{
    uint64_t difference = source_khz > local_khz ? source_khz - local_khz : local_khz - source_khz;
    /* difference > source * 250 / 1e6, in integers without rounding. */
    return difference * 1000000u > (uint64_t)source_khz * 250u;
}

/*
 * The order, with the reason for each rule (Firecracker vcpu.rs
 * restore_state and builder.rs; the kernel's api.rst; LINUX-GUEST.md):
 *
 * per vCPU, vCPU 0 first:
 *  1. KVM_SET_TSC_KHZ, only when the source's TSC differs beyond 250 ppm:
 *     before everything, in particular before the TSC MSR, whose value KVM
 *     interprets at the vCPU's frequency (a TSC written under the old
 *     ratio would jump when the ratio changes).
 *  2. KVM_SET_CPUID2: first of the state proper. What KVM accepts in XSAVE
 *     (the guest's xfeatures), which MSRs exist and whether the LAPIC timer
 *     has a TSC-deadline mode all follow the CPUID; without it a second
 *     migration loses the TSC-deadline timer (Firecracker #1942).
 *  3. KVM_SET_MP_STATE.
 *  4. KVM_SET_REGS before VCPU_EVENTS: SET_REGS clears pending exceptions
 *     unconditionally.
 *  5. KVM_SET_SREGS before LAPIC: SREGS carries the APIC base MSR, which
 *     SET_LAPIC needs in place (enabled, x2APIC or not).
 *  6. KVM_SET_XSAVE (or KVM_SET_FPU), KVM_SET_XCRS, KVM_SET_DEBUGREGS
 *     (Firecracker's order; they depend only on CPUID).
 *  7. KVM_SET_LAPIC before the MSRs: KVM ignores a TSC_DEADLINE write
 *     while the LAPIC timer is not in TSC-deadline mode.
 *  8. KVM_SET_MSRS of everything but TSC_DEADLINE (TSC among them), then
 *     TSC_DEADLINE alone: KVM arms the deadline timer by comparing it with
 *     the guest TSC, so a deadline written before the TSC fires at the wrong
 *     time or never (Firecracker #4099/#4666). A zero deadline is handled
 *     by machine_state_msr_split. vCPU 0's MSRs are preceded by a TSC 4 s
 *     ahead, which keeps pre-6.6 kernels from dropping the real one
 *     (write_tsc_ahead in machine_state_kvm.c).
 *  9. KVM_SET_VCPU_EVENTS last of the vCPU: the earlier SETs can change
 *     pending-event state (SREGS' interrupt bitmap queues an interrupt,
 *     SET_REGS drops exceptions); this writes the exact saved events.
 * then the VM (after the vCPUs, as Firecracker's builder does):
 * 10. KVM_SET_PIT2, KVM_SET_CLOCK, KVM_SET_IRQCHIP master, slave, IOAPIC
 *     (Firecracker vm.rs order). SET_CLOCK before any vCPU runs (Cloud
 *     Hypervisor #7930: a clock set later jumps under a running guest).
 * 11. The UART after the irqchips: uart_state_restore raises its line when
 *     the saved state has an interrupt pending, and that level must reach
 *     the restored PIC/IOAPIC, not be overwritten by them. The CMOS next.
 * 12. KVM_KVMCLOCK_CTRL per vCPU, last: it needs the kvmclock MSR
 *     (MSR_KVM_SYSTEM_TIME_NEW) restored (else EINVAL), and tells the guest
 *     it was stopped so its soft-lockup watchdog stays quiet.
 */
size_t machine_state_restore_plan(const struct machine_state_plan_input *input, struct machine_state_step *steps,
                                  size_t capacity)
{
    size_t count = 0;
#define STEP(c, v) do { if (count < capacity) steps[count] = (struct machine_state_step){ (c), (v) }; count++; } while (0)
    uint32_t vcpus = input->vcpu_count < MACHINE_STATE_MAX_VCPUS ? input->vcpu_count : MACHINE_STATE_MAX_VCPUS;
    for (uint32_t i = 0; i < vcpus; i++) {
        uint32_t have = input->vcpu_sections[i];
        if (input->set_tsc_khz && (have & MACHINE_STATE_HAS_TSC_KHZ))
            STEP(MACHINE_STATE_CALL_SET_TSC_KHZ, i);
        if (have & MACHINE_STATE_HAS_CPUID2)
            STEP(MACHINE_STATE_CALL_SET_CPUID2, i);
        if (have & MACHINE_STATE_HAS_MP_STATE)
            STEP(MACHINE_STATE_CALL_SET_MP_STATE, i);
        if (have & MACHINE_STATE_HAS_REGS)
            STEP(MACHINE_STATE_CALL_SET_REGS, i);
        if (have & MACHINE_STATE_HAS_SREGS)
            STEP(MACHINE_STATE_CALL_SET_SREGS, i);
        if (have & MACHINE_STATE_HAS_XSAVE)
            STEP(MACHINE_STATE_CALL_SET_XSAVE, i);
        else if (have & MACHINE_STATE_HAS_FPU)
            STEP(MACHINE_STATE_CALL_SET_FPU, i);
        if (have & MACHINE_STATE_HAS_XCRS)
            STEP(MACHINE_STATE_CALL_SET_XCRS, i);
        if (have & MACHINE_STATE_HAS_DEBUGREGS)
            STEP(MACHINE_STATE_CALL_SET_DEBUGREGS, i);
        if (have & MACHINE_STATE_HAS_LAPIC)
            STEP(MACHINE_STATE_CALL_SET_LAPIC, i);
        if (have & MACHINE_STATE_HAS_MSRS) {
            STEP(MACHINE_STATE_CALL_SET_MSRS, i);
            if (input->vcpu_tsc_deadline[i])
                STEP(MACHINE_STATE_CALL_SET_TSC_DEADLINE, i);
        }
        if (have & MACHINE_STATE_HAS_VCPU_EVENTS)
            STEP(MACHINE_STATE_CALL_SET_VCPU_EVENTS, i);
    }
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    if (input->vm_sections & MACHINE_STATE_HAS_PIT2)
        STEP(MACHINE_STATE_CALL_SET_PIT2, none);
    if (input->vm_sections & MACHINE_STATE_HAS_CLOCK)
        STEP(MACHINE_STATE_CALL_SET_CLOCK, none);
    if (input->vm_sections & MACHINE_STATE_HAS_PIC_MASTER)
        STEP(MACHINE_STATE_CALL_SET_IRQCHIP_PIC_MASTER, none);
    if (input->vm_sections & MACHINE_STATE_HAS_PIC_SLAVE)
        STEP(MACHINE_STATE_CALL_SET_IRQCHIP_PIC_SLAVE, none);
    if (input->vm_sections & MACHINE_STATE_HAS_IOAPIC)
        STEP(MACHINE_STATE_CALL_SET_IRQCHIP_IOAPIC, none);
    if (input->vm_sections & MACHINE_STATE_HAS_UART)
        STEP(MACHINE_STATE_CALL_RESTORE_UART, none);
    if (input->vm_sections & MACHINE_STATE_HAS_CMOS)
        STEP(MACHINE_STATE_CALL_RESTORE_CMOS, none);
    /* kvmclock exists only with a clock to restore and MSRs carrying its
     * system-time MSR. */
    if (input->vm_sections & MACHINE_STATE_HAS_CLOCK)
        for (uint32_t i = 0; i < vcpus; i++)
            if (input->vcpu_sections[i] & MACHINE_STATE_HAS_MSRS)
                STEP(MACHINE_STATE_CALL_KVMCLOCK_CTRL, i);
#undef STEP
    return count < capacity ? count : capacity;
}

void machine_state_msr_split(const struct kvm_msr_entry *msrs, uint32_t count, struct kvm_msr_entry *first,
                             uint32_t *first_count, struct kvm_msr_entry *deferred, uint32_t *deferred_count)
{
    /* Firecracker takes the largest TSC value should there be several; the
     * decoder refuses duplicates, so there is at most one. */
    bool have_tsc = false;
    uint64_t tsc = 0;
    for (uint32_t i = 0; i < count; i++)
        if (msrs[i].index == MACHINE_STATE_MSR_IA32_TSC && (!have_tsc || msrs[i].data > tsc)) {
            have_tsc = true;
            tsc = msrs[i].data;
        }
    *first_count = 0;
    *deferred_count = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (msrs[i].index != MACHINE_STATE_MSR_IA32_TSC_DEADLINE) {
            first[(*first_count)++] = msrs[i];
            continue;
        }
        struct kvm_msr_entry entry = msrs[i];
        if (entry.data == 0) {
            if (!have_tsc)
                continue;
            entry.data = tsc;
        }
        deferred[(*deferred_count)++] = entry;
    }
}

void machine_state_plan_input_from(const struct machine_state *state, uint32_t local_tsc_khz,
                                   struct machine_state_plan_input *input)
{
    memset(input, 0, sizeof(*input));
    input->vcpu_count = state->vcpu_count < MACHINE_STATE_MAX_VCPUS ? state->vcpu_count : MACHINE_STATE_MAX_VCPUS;
    input->vm_sections = state->vm.sections;
    for (uint32_t i = 0; i < input->vcpu_count; i++) {
        const struct machine_state_vcpu *v = &state->vcpus[i];
        input->vcpu_sections[i] = v->sections;
        if (v->sections & MACHINE_STATE_HAS_MSRS) {
            bool have_tsc = false;
            for (uint32_t m = 0; m < v->msr_count; m++)
                have_tsc |= v->msrs[m].index == MACHINE_STATE_MSR_IA32_TSC;
            for (uint32_t m = 0; m < v->msr_count; m++)
                if (v->msrs[m].index == MACHINE_STATE_MSR_IA32_TSC_DEADLINE && (v->msrs[m].data != 0 || have_tsc))
                    input->vcpu_tsc_deadline[i] = true;
        }
        if (i == 0 && (v->sections & MACHINE_STATE_HAS_TSC_KHZ) && local_tsc_khz != 0)
            input->set_tsc_khz = machine_state_tsc_scaling_needed(v->tsc_khz, local_tsc_khz);
    }
}

void machine_state_clock_complete(struct kvm_clock_data *clock, uint64_t realtime_ns)
{
    if (clock->flags & KVM_CLOCK_REALTIME)
        return;
    clock->realtime = realtime_ns;
    clock->flags |= KVM_CLOCK_REALTIME;
}

#define TSC_ELAPSED_CAP_NS (86400ull * 1000000000ull)

uint64_t machine_state_tsc_ticks(uint32_t tsc_khz, uint64_t elapsed_ns)
{
    if (elapsed_ns > TSC_ELAPSED_CAP_NS)
        elapsed_ns = TSC_ELAPSED_CAP_NS;
    return (uint64_t)((unsigned __int128)elapsed_ns * tsc_khz / 1000000u);
}
