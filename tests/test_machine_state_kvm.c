/*
 * Machine state v2 against a real KVM (issue 14): a running Linux guest is
 * paused, everything it lives in outside RAM is captured
 * (machine_state_capture_vcpu / _vm, the UART and CMOS), encoded, decoded
 * and restored into a second VM of the same shape that was created as a
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
#include <sys/ioctl.h>
#include <unistd.h>

#include "migration/machine_state.h"
#include "tests/harness.h"
#include "vmm/cmos_rtc.h"
#include "vmm/uart.h"
#include "vmm/vcpu.h"
#include "vmm/vm.h"

#define BOOT_TIMEOUT_MS 120000

static const char *image_file(const char *name)
{
    static char path[2][512];
    static int which;
    which ^= 1;
    const char *build = getenv("RINGVM_BUILD_DIR") != NULL ? getenv("RINGVM_BUILD_DIR") : "build";
    snprintf(path[which], sizeof(path[which]), "%s/linux/%s", build, name);
    if (access(path[which], R_OK) != 0)
        harness_skip("%s not built (make linux-guest)", path[which]);
    return path[which];
}

static uint32_t xsave2_size(struct vm *vm)
{
    int size = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    return size > 0 ? (uint32_t)size : 0;
}

/* Everything of `vm` (paused) into state. */
static void capture(struct vm *vm, struct machine_state *state)
{
    char error[512];
    cr_assert_eq(machine_state_init(state, vm->config.vcpu_count), 0);
    struct machine_state_capture_config config = {
        .msr_indices = vm->msr_indices,
        .msr_count = vm->msr_count,
        .xsave2_size = xsave2_size(vm),
        .has_irqchip = true,
        .has_pit = true,
    };
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        cr_assert_eq(machine_state_capture_vcpu(vm->vcpus[i].fd, &config, &state->vcpus[i], error, sizeof(error)),
                     0, "vCPU %u: %s", i, error);
    cr_assert_eq(machine_state_capture_vm(vm->vm_fd, &config, &state->vm, error, sizeof(error)), 0, "%s", error);
    state->vm.guest_kind = MACHINE_STATE_GUEST_LINUX;
    uart_state_save(vm->uart, &state->vm.uart);
    state->vm.sections |= MACHINE_STATE_HAS_UART;
    pthread_mutex_lock(&vm->rtc.lock);
    state->vm.cmos_index = vm->rtc.index;
    memcpy(state->vm.cmos_ram, vm->rtc.ram, sizeof(state->vm.cmos_ram));
    pthread_mutex_unlock(&vm->rtc.lock);
    state->vm.sections |= MACHINE_STATE_HAS_CMOS;
}

static size_t lines_in(struct console_capture *console, const char *needle)
{
    return console_count(console, needle);
}

Test(machine_state_kvm, linux_guest_carries_on_in_a_second_vm, .timeout = 300)
{
    harness_require_kvm();
    const char *kernel = image_file("bzImage");
    const char *initrd = image_file("initramfs.cpio.gz");
    struct harness_vm source, destination;
    harness_linux_vm_create(&source, "256M", 2, kernel, initrd, "ringvm.workload=ledger,wss=32M,verify=1", false);
    cr_assert_eq(vm_start(source.vm), 0);
    cr_assert(console_wait_for(&source.console, "LEDGER OK", 4, BOOT_TIMEOUT_MS), "no ledger on the source:\n%s",
              console_snapshot(&source.console));
    harness_linux_vm_create(&destination, "256M", 2, NULL, NULL, NULL, true);
    cr_assert_eq(vm_start(destination.vm), 0, "the destination's vCPU threads did not start");

    cr_assert_eq(vm_pause(source.vm), 0);
    struct machine_state captured;
    capture(source.vm, &captured);
    char error[512];
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
    int vcpu_fds[2] = { to->vcpus[0].fd, to->vcpus[1].fd };
    int local_khz = ioctl(to->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
    struct machine_state_restore_target target = {
        .vm_fd = to->vm_fd,
        .vcpu_fds = vcpu_fds,
        .vcpu_count = 2,
        .local_tsc_khz = local_khz > 0 ? (uint32_t)local_khz : 0,
        .xsave2_size = xsave2_size(to),
        .uart = to->uart,
        .rtc = &to->rtc,
    };
    cr_assert_eq(machine_state_restore(&target, &decoded, error, sizeof(error)), 0, "%s", error);
    machine_state_free(&decoded);
    machine_state_free(&captured);

    /* The source never runs again; the destination takes over. */
    size_t ok_before = lines_in(&destination.console, "LEDGER OK");
    cr_assert_eq(ok_before, 0);
    atomic_store_explicit(&to->awaiting_migration, false, memory_order_release);
    vm_resume_vcpus(to);
    vm_set_state(to, VM_STATE_RUNNING);
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
