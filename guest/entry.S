/*
 * Ring-0 entry points of the built-in guest: the direct 64-bit entry used by
 * ringvm, the exception stubs, the ring-3-callable gates and the per-vCPU
 * stacks. Every instruction here runs emulated on PVM hosts, so each path is
 * a handful of instructions.
 */
#include "guest/guest.h"

    .section .text.entry, "ax"
    .code64

/*
 * Direct 64-bit entry (ELF e_entry). The VMM starts every vCPU here in long
 * mode, CPL 0, paging on with its identity map, RDI = vCPU index,
 * RSI = boot info, RSP = 0: we pick the vCPU's ring-0 stack first.
 */
    .globl guest_entry64
guest_entry64:
    cmp $GUEST_MAX_VCPUS, %rdi
    jae guest_halt_forever
    mov %rdi, %rax
    inc %rax
    imul $GUEST_RING0_STACK_SIZE, %rax
    lea guest_ring0_stacks(%rax), %rsp
    xor %ebp, %ebp
    call setup_main                 /* does not return */
    jmp guest_halt_forever

/*
 * Exception stubs, one per vector 0-31, GUEST_EXCEPTION_STUB_SIZE bytes
 * apart (setup.c computes gate addresses from that). Vectors without a CPU
 * error code push a zero so the frame is uniform.
 */
.macro exception_stub vector
    .balign GUEST_EXCEPTION_STUB_SIZE
    .if (\vector == 8) || ((\vector >= 10) && (\vector <= 14)) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
    .else
    pushq $0
    .endif
    pushq $\vector
    jmp guest_exception_common
.endm

    .balign GUEST_EXCEPTION_STUB_SIZE
    .globl guest_exception_stubs
guest_exception_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    exception_stub \vector
    .endr

/*
 * The stack now holds vector, error code, RIP, CS, RFLAGS, RSP, SS: the
 * layout of struct ringvm_exception_report except that its last field is
 * CR2, so SS is overwritten with CR2 and the report is reported in place
 * (the ring-0 stack is below 4 GiB, as the 32-bit control port requires).
 */
guest_exception_common:
    /* On PVM hosts `int n` from ring 3 arrives as #UD (like int 0x80, see
     * HOST-KVM.md) instead of through the DPL-3 gate. Recognise our two
     * gate instructions at the faulting RIP and do what the gate would:
     * these are not exceptions to report. */
    cmpq $6, (%rsp)
    jne 9f
    testb $3, 24(%rsp)
    jz 9f
    push %rax                       /* frame offsets +8 from here */
    mov 24(%rsp), %rax
    cmpw $((GUEST_VECTOR_HALT << 8) | 0xcd), (%rax)     /* int $GUEST_VECTOR_HALT */
    je guest_halt_forever
    cmpw $((GUEST_VECTOR_CONSOLE << 8) | 0xcd), (%rax)  /* int $GUEST_VECTOR_CONSOLE */
    jne 8f
    addq $2, 24(%rsp)               /* resume after the int */
    pop %rax
    add $16, %rsp                   /* drop vector and error code: a gate frame */
    jmp guest_console_gate
8:  pop %rax
9:  mov %cr2, %rax
    mov %rax, 48(%rsp)
    mov %rsp, %rax
    mov $GUEST_PORT_EXCEPTION, %dx
    out %eax, %dx
    /* fall through: the vCPU stops here */

/* Also the DPL-3 gate GUEST_VECTOR_HALT: a finished ring-3 workload parks
 * its vCPU here without touching memory. With IF=0 the vCPU blocks in
 * KVM_RUN (in-kernel irqchip) until the VMM kicks it. */
    .globl guest_halt_forever
    .globl guest_halt_gate
guest_halt_forever:
guest_halt_gate:
1:  cli
    hlt
    jmp 1b

/* DPL-3 gate GUEST_VECTOR_CONSOLE: RDI = text, RSI = length, written to
 * the 8250 one byte per OUT. Only used when there is no doorbell (PVH boot
 * under another VMM); each byte is an emulated exit. */
    .globl guest_console_gate
guest_console_gate:
    push %rax
    push %rdx
    push %rsi
    push %rdi
    mov $GUEST_SERIAL_PORT, %dx
1:  test %rsi, %rsi
    jz 2f
    movzbl (%rdi), %eax
    outb %al, %dx
    inc %rdi
    dec %rsi
    jmp 1b
2:  pop %rdi
    pop %rsi
    pop %rdx
    pop %rax
    iretq

/* guest_enter_ring3(rip, rsp, vcpu, info): iretq to CPL 3 with IF=0 (the
 * guest uses no interrupts), passing vcpu and info in RDI/RSI. */
    .globl guest_enter_ring3
guest_enter_ring3:
    pushq $GUEST_SELECTOR_USER_DATA
    pushq %rsi
    pushq $0x2
    pushq $GUEST_SELECTOR_USER_CODE
    pushq %rdi
    mov %rdx, %rdi
    mov %rcx, %rsi
    iretq

/* First ring-3 instruction: a call keeps the C stack alignment right. */
    .globl guest_ring3_start
guest_ring3_start:
    xor %ebp, %ebp
    call ring3_main
    ud2

    .section .bss
    .balign 4096
    .globl guest_ring0_stacks
guest_ring0_stacks:
    .skip GUEST_RING0_STACK_SIZE * GUEST_MAX_VCPUS
    .globl guest_ring3_stacks
guest_ring3_stacks:
    .skip GUEST_RING3_STACK_SIZE * GUEST_MAX_VCPUS

    .section .note.GNU-stack, "", @progbits
