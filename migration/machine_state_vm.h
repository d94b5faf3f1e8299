/*
 * Machine state v2 of a whole ringvm VM (issue 14): what a guest lives in
 * outside its RAM, captured from a paused VM and restored into an incoming
 * one. Both guest kinds travel in it: a Linux guest with its irqchips, PIT,
 * UART, CMOS clock and boot info; the built-in guest with its vCPUs, clock,
 * CMOS and (with --irqchip) its irqchips. Ties machine_state's KVM layer
 * (capture / restore of the kernel's objects) to ringvm's own devices and to
 * what vm.info reports (guest kind, command line, boot protocol).
 *
 * Threads: both run on the migration thread with every vCPU out of
 * KVM_RUN (the source paused, the destination's vCPUs parked and never
 * run). The UART and CMOS clock take their own locks.
 */
#ifndef RINGVM_MIGRATION_MACHINE_STATE_VM_H
#define RINGVM_MIGRATION_MACHINE_STATE_VM_H

#include <stddef.h>

#include "migration/machine_state.h"

struct vm;

/* Fills state (initialised here; machine_state_free releases it) from a
 * paused VM of either guest kind. 0, or -1 with the KVM call or the reason
 * in error. */
int machine_state_vm_capture(struct vm *vm, struct machine_state *state, char *error, size_t error_size);

/* Restores state into an incoming VM still awaiting it: a Linux guest's
 * devices are created first (vm_become_linux_destination; a built-in
 * guest's state into a VM already running Linux is refused), then every KVM
 * call in machine_state_restore_plan order, then the UART and CMOS; the
 * guest's command line and boot protocol are kept for vm.info. The vCPU
 * count must match (the hello checked it). 0, or -1 with the reason. */
int machine_state_vm_restore(struct vm *vm, const struct machine_state *state, char *error, size_t error_size);

#endif
