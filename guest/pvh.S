/*
 * Xen PVH entry, so other VMMs (QEMU -machine microvm -kernel) can boot the
 * same image. ringvm does not use it: it starts vCPUs at guest_entry64.
 *
 * PVH starts the boot vCPU in 32-bit protected mode, paging off, EBX = the
 * physical address of struct hvm_start_info. We build an identity map of the
 * first 4 GiB with 2 MiB pages (U bit set: ring 3 runs the workloads),
 * enable long mode, and join the 64-bit path as vCPU 0 with the boot info
 * pvh_prepare() derives from start_info. Secondary vCPUs are not started
 * (that would take INIT/SIPI): under PVH the guest runs on vCPU 0 only.
 */
#include "guest/guest.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* QEMU reads the descriptor as a pointer-sized value after the 4-byte
 * aligned name "Xen", so the note is 4-aligned and the entry a .quad. */
    .section .note.xen, "a", @note
    .balign 4
    .long 4                         /* name size: "Xen\0" */
    .long 8                         /* descriptor size */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad guest_pvh_entry32
    .balign 4

    .section .text, "ax"
    .code32
    .globl guest_pvh_entry32
guest_pvh_entry32:
    cli
    cld
    mov %ebx, %esi                  /* start_info, kept until pvh_prepare */
    lgdt guest_gdt_pointer          /* 0x08 = 64-bit code, 0x10 = data */
    mov $GUEST_SELECTOR_KERNEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs

    /* PML4 and PDPT: zero, then one PML4 entry and four PDPT entries. */
    mov $pvh_pml4, %edi
    mov $(2 * 4096 / 4), %ecx
    xor %eax, %eax
    rep stosl
    movl $(pvh_pdpt + 0x7), pvh_pml4                /* P | W | U */
    mov $pvh_pdpt, %edi
    mov $(pvh_page_directories + 0x7), %eax
    mov $4, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $4096, %eax
    add $8, %edi
    loop 1b

    /* 2048 2 MiB pages: 0-4 GiB, P | W | U | PS. */
    mov $pvh_page_directories, %edi
    mov $0x87, %eax
    mov $2048, %ecx
2:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80010033, %eax            /* PG | WP | NE | ET | MP | PE */
    mov %eax, %cr0
    ljmp $GUEST_SELECTOR_KERNEL_CODE, $pvh_entry64

    .code64
pvh_entry64:
    lea (guest_ring0_stacks + GUEST_RING0_STACK_SIZE), %rsp
    mov %esi, %edi
    call pvh_prepare                /* returns the boot info to use */
    mov %rax, %rsi
    xor %edi, %edi                  /* vCPU 0 */
    jmp guest_entry64

    .section .bss
    .balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_page_directories:
    .skip 4 * 4096

    .section .note.GNU-stack, "", @progbits
