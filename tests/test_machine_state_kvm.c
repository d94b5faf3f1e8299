/*
 * Machine state v2 against a real KVM (issue 14): a running Linux guest is
 * paused, everything it lives in outside RAM is captured
 * (machine_state_vm_capture: vCPUs, irqchips, PIT, clock, UART, CMOS), encoded,
 * decoded and restored (machine_state_vm_restore) into a second VM of the same shape that was created as a
 * migration destination (no kernel loaded); its RAM is copied across. The
 * guest must carry on there: the ledger's later passes prove that memory,
 * timers (a verify pass waits on a sleep: the LAPIC timer and kvmclock),
 * interrupts (the console is the UART on IRQ 4 through the IOAPIC) and both
 * vCPUs (the workload runs a pinned thread on each) came along. The stream
 * itself is not involved: this is the state path alone.
 *
 * Needs /dev/kvm and the guest image (make linux-guest); skips without.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migration/machine_state.h"
#include "migration/machine_state_vm.h"
#include "tests/harness.h"
#include "vmm/vm.h"

#define BOOT_TIMEOUT_MS 120000

Test(machine_state_kvm, linux_guest_carries_on_in_a_second_vm, .timeout = 300)
{
    harness_require_kvm();
    const char *kernel = harness_linux_kernel();
    const char *initrd = harness_linux_image_file("initramfs.cpio");
    struct harness_vm source, destination;
    harness_linux_vm_create(&source, "256M", 2, kernel, initrd, "ringvm.workload=ledger,wss=32M,verify=1", false);
    cr_assert_eq(vm_start(source.vm), 0);
    cr_assert(console_wait_for(&source.console, "LEDGER OK", 4, BOOT_TIMEOUT_MS), "no ledger on the source:\n%s",
              console_snapshot(&source.console));
    harness_linux_vm_create(&destination, "256M", 2, NULL, NULL, NULL, true);
    cr_assert_eq(vm_start(destination.vm), 0, "the destination's vCPU threads did not start");

    cr_assert_eq(vm_pause(source.vm), 0);
    struct machine_state captured;
    char error[512];
    cr_assert_eq(machine_state_vm_capture(source.vm, &captured, error, sizeof(error)), 0, "%s", error);
    size_t size = machine_state_encoded_size(&captured);
    uint8_t *bytes = malloc(size);
    cr_assert_not_null(bytes);
    cr_assert_eq(machine_state_encode(&captured, bytes, size, error, sizeof(error)), size, "%s", error);
    struct machine_state decoded;
    cr_assert_eq(machine_state_decode(bytes, size, &decoded, error, sizeof(error)), 0, "%s", error);
    /* The decoded state encodes to the same bytes: nothing captured was
     * dropped or changed on the way. */
    uint8_t *again = malloc(size);
    cr_assert_not_null(again);
    cr_assert_eq(machine_state_encode(&decoded, again, size, error, sizeof(error)), size, "%s", error);
    cr_assert_eq(memcmp(bytes, again, size), 0, "decode + encode changed the state");
    free(again);
    free(bytes);
    cr_assert_gt(decoded.vcpus[0].msr_count, 10, "suspiciously few MSRs");
    cr_assert(decoded.vm.sections & MACHINE_STATE_HAS_IOAPIC);
    cr_assert(decoded.vm.sections & MACHINE_STATE_HAS_PIT2);
    cr_assert(decoded.vm.sections & MACHINE_STATE_HAS_CLOCK);

    /* RAM: the source is paused, so this is its last word. */
    cr_assert_eq(destination.vm->memory.size, source.vm->memory.size);
    memcpy(destination.vm->memory.host, source.vm->memory.host, source.vm->memory.size);

    struct vm *to = destination.vm;
    cr_assert_eq(machine_state_vm_restore(to, &decoded, error, sizeof(error)), 0, "%s", error);
    machine_state_free(&decoded);
    machine_state_free(&captured);

    /* The source never runs again; the destination takes over. */
    size_t ok_before = console_count(&destination.console, "LEDGER OK");
    cr_assert_eq(ok_before, 0);
    atomic_store_explicit(&to->awaiting_migration, false, memory_order_release);
    vm_resume_vcpus(to);
    vm_set_state(to, VM_STATE_RUNNING);
    /* vm.info's view of it: the guest's command line came along. */
    cr_assert_str_eq(vm_linux_cmdline(to), harness_linux_cmdline("ringvm.workload=ledger,wss=32M,verify=1"));
    cr_assert_str_eq(vm_linux_boot_protocol(to), harness_linux_boot_protocol());
    /* Two verify passes per vCPU there, each after a 1 s sleep. */
    bool carried_on = console_wait_for(&destination.console, "LEDGER OK", 4, 60000);
    char *text = console_snapshot(&destination.console);
    cr_assert(carried_on, "the guest did not carry on in the second VM; its console:\n%s", text);
    cr_assert_null(strstr(text, "MISMATCH"), "%s", text);
    cr_assert_not_null(strstr(text, "vcpu=0"), "%s", text);
    cr_assert_not_null(strstr(text, "vcpu=1"), "%s", text);
    free(text);
    harness_vm_stop(&destination);
    harness_vm_stop(&source);
}
