/* The VMM core against real KVM and the built-in guest. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tests/harness.h"
#include "migration/machine_state.h"
#include "migration/machine_state_vm.h"

static void sleep_ms(unsigned milliseconds)
{
    struct timespec pause = { .tv_sec = milliseconds / 1000, .tv_nsec = (long)(milliseconds % 1000) * 1000000L };
    nanosleep(&pause, NULL);
}

static void boot_and_dirty(unsigned vcpus)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "256M", vcpus, "dirtier,wss=32M", "off");
    cr_assert(console_wait_for(&harness.console, "ringvm guest", 1, 10000), "no banner; console:\n%s",
              console_snapshot(&harness.console));
    for (unsigned i = 0; i < vcpus; i++)
        cr_assert(harness_wait_phase(harness.vm, i, RINGVM_PHASE_RING3, 10000), "vcpu %u never reached ring 3", i);
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 100000, 20000), "guest counters did not advance");
    cr_assert_eq(vm_get_state(harness.vm), VM_STATE_RUNNING);
    harness_vm_stop(&harness);
}

Test(vm, boots_one_vcpu_and_dirties, .timeout = 60)
{
    boot_and_dirty(1);
}

Test(vm, boots_two_vcpus_and_dirties_on_each, .timeout = 60)
{
    boot_and_dirty(2);
}

Test(vm, pause_stops_guest_and_resume_continues, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "256M", 2, "dirtier,wss=32M", "off");
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 10000, 20000));
    cr_assert_eq(vm_pause(harness.vm), 0);
    cr_assert_eq(vm_get_state(harness.vm), VM_STATE_PAUSED);
    uint64_t before[2] = { harness_pages_written(harness.vm, 0), harness_pages_written(harness.vm, 1) };
    sleep_ms(200); /* observing an interval, not synchronizing */
    cr_assert_eq(harness_pages_written(harness.vm, 0), before[0], "vcpu 0 wrote while paused");
    cr_assert_eq(harness_pages_written(harness.vm, 1), before[1], "vcpu 1 wrote while paused");
    cr_assert_eq(vm_pause(harness.vm), -EINVAL, "pausing a paused VM must be refused");
    cr_assert_gt(atomic_load(&harness.vm->pause_count), 0);
    cr_assert_gt(atomic_load(&harness.vm->pause_latency_last_ns), 0);
    cr_assert_eq(vm_resume(harness.vm), 0);
    cr_assert_eq(vm_get_state(harness.vm), VM_STATE_RUNNING);
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 10000, 20000), "no progress after resume");
    harness_vm_stop(&harness);
}

Test(vm, ledger_verifies_twice_then_detects_a_corrupted_page, .timeout = 90)
{
    harness_require_kvm();
    struct harness_vm harness;
    /* Slow writer (2000 pages/s over 16384 pages): a page we corrupt ahead
     * of the writer stays corrupted until the next verify pass sees it. */
    harness_vm_start(&harness, "256M", 1, "ledger,wss=64M,verify=1,rate=2000", "off");
    cr_assert(console_wait_for(&harness.console, "LEDGER OK", 2, 20000), "no two LEDGER OK; console:\n%s",
              console_snapshot(&harness.console));
    cr_assert_eq(console_count(&harness.console, "LEDGER MISMATCH"), 0);

    cr_assert_eq(vm_pause(harness.vm), 0);
    const struct ringvm_vcpu_bootinfo *slice = &harness.vm->bootinfo->vcpu[0];
    uint64_t written = harness_pages_written(harness.vm, 0);
    uint64_t victim = (written + slice->region_pages / 2) % slice->region_pages;
    struct ringvm_ledger_record *record =
        guest_memory_gpa_to_host(&harness.vm->memory, slice->region_gpa + victim * RINGVM_PAGE_SIZE, sizeof(*record));
    cr_assert_not_null(record);
    uint32_t *table = guest_memory_gpa_to_host(&harness.vm->memory, slice->table_gpa, slice->region_pages * 4);
    uint64_t want = table[victim];
    record->generation = 0xdead;
    cr_assert_eq(vm_resume(harness.vm), 0);

    char expected[128];
    snprintf(expected, sizeof(expected), "LEDGER MISMATCH page=%llu want=%llu got=57005",
             (unsigned long long)victim, (unsigned long long)want);
    cr_assert(console_wait_for(&harness.console, expected, 1, 20000), "expected '%s'; console:\n%s", expected,
              console_snapshot(&harness.console));
    cr_assert_eq(console_count(&harness.console, "LEDGER MISMATCH"), 1, "console:\n%s",
                 console_snapshot(&harness.console));
    harness_vm_stop(&harness);
}

static void expect_exception(const char *workload, int vector)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "64M", 1, workload, "off");
    cr_assert(vm_wait_for_shutdown_request(harness.vm, 20000000000ULL), "%s: the VM did not stop", workload);
    int exit_code = vm_wait(harness.vm);
    cr_assert_eq(exit_code, 1);
    cr_assert_eq(atomic_load(&harness.vm->last_exception_vector), vector, "%s", workload);
    harness_vm_stop(&harness);
}

Test(vm, ring3_exception_is_reported_with_its_vector, .timeout = 60)
{
    expect_exception("fault,kind=ud,ring=3", 6);
}

Test(vm, ring0_exception_is_reported_with_its_vector, .timeout = 60)
{
    expect_exception("fault,kind=pf,ring=0", 14);
}

Test(vm, ring3_divide_error_is_reported, .timeout = 60)
{
    expect_exception("fault,kind=de,ring=3", 0);
}

/* capture, restore, capture: equal. MSR_IA32_TSC (0x10) keeps counting
 * between the two captures, so it is compared for monotonicity instead. */
static void assert_vcpu_state_equal(const struct machine_state_vcpu *a, const struct machine_state_vcpu *b)
{
    cr_assert_eq(a->sections, b->sections);
    cr_assert_eq(a->msr_count, b->msr_count);
    cr_assert_gt(a->msr_count, 10, "suspiciously few MSRs: %u", a->msr_count);
    for (uint32_t i = 0; i < a->msr_count; i++) {
        cr_assert_eq(a->msrs[i].index, b->msrs[i].index);
        if (a->msrs[i].index == 0x10)
            cr_assert_geq(b->msrs[i].data, a->msrs[i].data);
        else
            cr_assert_eq(a->msrs[i].data, b->msrs[i].data, "MSR 0x%x: 0x%llx != 0x%llx", a->msrs[i].index,
                         (unsigned long long)a->msrs[i].data, (unsigned long long)b->msrs[i].data);
    }
    cr_assert_eq(memcmp(&a->regs, &b->regs, sizeof(a->regs)), 0, "regs differ");
    cr_assert_eq(memcmp(&a->sregs, &b->sregs, sizeof(a->sregs)), 0, "sregs differ");
    cr_assert_eq(a->xsave_size, b->xsave_size);
    if (a->xsave_size > 0)
        cr_assert_eq(memcmp(a->xsave, b->xsave, a->xsave_size), 0, "xsave differs");
    cr_assert_eq(memcmp(&a->xcrs, &b->xcrs, sizeof(a->xcrs)), 0, "xcrs differ");
    cr_assert_eq(memcmp(&a->lapic, &b->lapic, sizeof(a->lapic)), 0, "lapic differs");
    cr_assert_eq(memcmp(&a->events, &b->events, sizeof(a->events)), 0, "events differ");
    cr_assert_eq(memcmp(&a->mp_state, &b->mp_state, sizeof(a->mp_state)), 0, "mp_state differs");
    cr_assert_eq(memcmp(&a->debugregs, &b->debugregs, sizeof(a->debugregs)), 0, "debugregs differ");
    cr_assert_eq(a->cpuid_count, b->cpuid_count);
    cr_assert_eq(memcmp(a->cpuid, b->cpuid, a->cpuid_count * sizeof(*a->cpuid)), 0, "cpuid differs");
}

/* The built-in guest's whole machine state (what a migration carries):
 * captured from the paused guest, restored into a second VM that never ran
 * (as a migration's destination; KVM refuses a changed CPUID once a vCPU
 * has run), captured there again: equal, and the first guest runs on. */
Test(vm, machine_state_round_trip_of_a_running_builtin_guest, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "128M", 1, "dirtier,wss=16M", "off");
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 10000, 20000));
    cr_assert_eq(vm_pause(harness.vm), 0);
    struct vm *vm = harness.vm;
    struct machine_state first, second;
    char error[512];
    cr_assert_eq(machine_state_vm_capture(vm, &first, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(first.vm.guest_kind, MACHINE_STATE_GUEST_BUILTIN);
    cr_assert_eq(first.vm.sections & (MACHINE_STATE_HAS_UART | MACHINE_STATE_HAS_BOOT_INFO | MACHINE_STATE_HAS_PIT2),
                 0, "the built-in guest has no UART, boot info or PIT: sections 0x%x", first.vm.sections);
    cr_assert(first.vm.sections & MACHINE_STATE_HAS_CLOCK);
    cr_assert_eq(first.vcpus[0].regs.rip != 0, 1);
    cr_assert_eq(first.vcpus[0].sregs.cs.dpl, 3, "a running workload is in ring 3");
    struct harness_vm destination;
    harness_vm_create_incoming(&destination, "128M", 1, "idle", "off");
    cr_assert_eq(machine_state_vm_restore(destination.vm, &first, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(machine_state_vm_capture(destination.vm, &second, error, sizeof(error)), 0, "%s", error);
    assert_vcpu_state_equal(&first.vcpus[0], &second.vcpus[0]);
    cr_assert_eq(second.vm.guest_kind, MACHINE_STATE_GUEST_BUILTIN);
    machine_state_free(&first);
    machine_state_free(&second);
    harness_vm_stop(&destination);
    cr_assert_eq(vm_resume(vm), 0);
    cr_assert(harness_wait_all_vcpus_advance(vm, 10000, 20000), "guest stopped after a state restore");
    harness_vm_stop(&harness);
}
