#include "migration/machine_state_vm.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vmm/linux_guest.h"
#include "vmm/vm.h"

/* KVM_CAP_XSAVE2's size on this VM (0 where the kernel lacks it). */
static uint32_t machine_state_vm_xsave2_size(const struct vm *vm)
{
    int size = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    return size > 0 ? (uint32_t)size : 0;
}

int machine_state_vm_capture(struct vm *vm, struct machine_state *state, char *error, size_t error_size)
{
    bool linux_guest = vm_is_linux_guest(vm);
    if (linux_guest && vm->uart == NULL) {
        snprintf(error, error_size, "machine state: a Linux guest without its UART");
        return -1;
    }
    if (machine_state_init(state, vm->config.vcpu_count) != 0) {
        snprintf(error, error_size, "machine state: out of memory for %u vCPUs", vm->config.vcpu_count);
        return -1;
    }
    struct machine_state_capture_config config = {
        .msr_indices = vm->msr_indices,
        .msr_count = vm->msr_count,
        .xsave2_size = machine_state_vm_xsave2_size(vm),
        .has_irqchip = vm->config.create_irqchip,
        .has_pit = linux_guest,         /* the built-in guest has no PIT (vmm/vm.c) */
    };
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        if (machine_state_capture_vcpu(vm->vcpus[i].fd, &config, &state->vcpus[i], error, error_size) != 0) {
            machine_state_free(state);
            return -1;
        }
    }
    if (machine_state_capture_vm(vm->vm_fd, &config, &state->vm, error, error_size) != 0) {
        machine_state_free(state);
        return -1;
    }
    state->vm.guest_kind = linux_guest ? MACHINE_STATE_GUEST_LINUX : MACHINE_STATE_GUEST_BUILTIN;
    if (linux_guest) {
        const char *cmdline = vm_linux_cmdline(vm);
        const char *protocol = vm_linux_boot_protocol(vm);
        if (cmdline != NULL && protocol != NULL) {
            snprintf(state->vm.cmdline, sizeof(state->vm.cmdline), "%s", cmdline);
            snprintf(state->vm.boot_protocol, sizeof(state->vm.boot_protocol), "%s", protocol);
            state->vm.sections |= MACHINE_STATE_HAS_BOOT_INFO;
        }
        uart_state_save(vm->uart, &state->vm.uart);
        state->vm.sections |= MACHINE_STATE_HAS_UART;
    }
    pthread_mutex_lock(&vm->rtc.lock);
    state->vm.cmos_index = vm->rtc.index;
    memcpy(state->vm.cmos_ram, vm->rtc.ram, sizeof(state->vm.cmos_ram));
    pthread_mutex_unlock(&vm->rtc.lock);
    state->vm.sections |= MACHINE_STATE_HAS_CMOS;
    return 0;
}

int machine_state_vm_restore(struct vm *vm, const struct machine_state *state, char *error, size_t error_size)
{
    if (state->vcpu_count != vm->config.vcpu_count) {
        snprintf(error, error_size, "machine state for %" PRIu32 " vCPUs (this VM has %u)", state->vcpu_count,
                 vm->config.vcpu_count);
        return -1;
    }
    if (state->vm.guest_kind == MACHINE_STATE_GUEST_BUILTIN && vm->config.guest_kind == VM_GUEST_LINUX) {
        snprintf(error, error_size, "machine state of a built-in guest for a VM that runs a Linux guest");
        return -1;
    }
    if (state->vm.guest_kind == MACHINE_STATE_GUEST_LINUX && vm_become_linux_destination(vm) != 0) {
        snprintf(error, error_size, "creating the Linux guest's devices (PIT, UART) failed (see stderr)");
        return -1;
    }
    int *vcpu_fds = calloc(vm->config.vcpu_count, sizeof(*vcpu_fds));
    if (vcpu_fds == NULL) {
        snprintf(error, error_size, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        vcpu_fds[i] = vm->vcpus[i].fd;
    int local_khz = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
    struct machine_state_restore_target target = {
        .vm_fd = vm->vm_fd,
        .vcpu_fds = vcpu_fds,
        .vcpu_count = vm->config.vcpu_count,
        .local_tsc_khz = local_khz > 0 ? (uint32_t)local_khz : 0,
        .xsave2_size = machine_state_vm_xsave2_size(vm),
        .uart = vm->uart,               /* NULL for the built-in guest: its state has no uart */
        .rtc = &vm->rtc,
    };
    int result = machine_state_restore(&target, state, error, error_size);
    free(vcpu_fds);
    if (result != 0)
        return -1;
    if (state->vm.sections & MACHINE_STATE_HAS_BOOT_INFO)
        vm_set_migrated_linux_boot_info(vm, state->vm.cmdline, state->vm.boot_protocol);
    return 0;
}
