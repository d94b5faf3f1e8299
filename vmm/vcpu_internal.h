/* Between vm.c and vcpu.c only: the park/wake protocol and diagnostics. */
#ifndef RINGVM_VMM_VCPU_INTERNAL_H
#define RINGVM_VMM_VCPU_INTERNAL_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct vm;
struct vcpu;

/* Kicks vCPU threads out of KVM_RUN; also the throttle timer's signal. */
#define VCPU_KICK_SIGNAL SIGUSR1

int vcpu_install_kick_handler(void);
void vcpu_dump_registers(struct vcpu *vcpu, FILE *out);

/* Called by the vCPU thread (vm.c implements them on vm->park_lock). */
void vm_vcpu_park(struct vcpu *vcpu);                       /* ack pause, wait for resume */
void vm_vcpu_wait_halted(struct vcpu *vcpu);                /* HLT without irqchip */
void vm_vcpu_wait_stopped(struct vcpu *vcpu);               /* stopped for good: wait for shutdown */
void vm_vcpu_throttle_sleep(struct vcpu *vcpu, uint64_t nanoseconds);

/* Port I/O on the Linux guest's UART (offset 0..7 from 0x3f8); vm.c owns
 * the device and its interrupt line. */
void vm_uart_port_io(struct vm *vm, unsigned offset, bool is_write, uint8_t *data, uint32_t size);

/* Prints the message once per key for the VM's lifetime (unknown ports,
 * addresses); later occurrences are counted silently. */
void vm_log_once(struct vm *vm, uint64_t key, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

#endif
