/*
 * Xen PVH entry, so other VMMs (QEMU -machine microvm -kernel) can boot the
 * same image. ringvm does not use it: it starts vCPUs at guest_entry64.
 *
 * PVH starts the boot vCPU in 32-bit protected mode, paging off, EBX = the
 * physical address of struct hvm_start_info. We build an identity map of the
 * first 4 GiB with 2 MiB pages (U bit set: ring 3 runs the workloads),
 * enable long mode, and join the 64-bit path as vCPU 0 with the boot info
 * pvh_prepare() derives from start_info.
 *
 * Secondary vCPUs (`vcpus=N` on the command line, QEMU -smp N): vCPU 0
 * copies pvh_ap_trampoline below 1 MiB (PVH_AP_TRAMPOLINE_GPA) and sends
 * INIT + SIPI through its local APIC (pvh.c). Each AP starts there in real
 * mode and goes straight to long mode (PAE, CR3 = the identity map built
 * here, EFER.LME, then CR0.PE|PG at once and a far jump to the 64-bit code
 * segment): about 15 instructions, all emulated on PVM hosts. It then takes
 * the next vCPU index and joins guest_entry64 like a ringvm-started vCPU.
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
    call pvh_prepare                /* returns the boot info to use; starts the APs */
    mov %rax, %rsi
    xor %edi, %edi                  /* vCPU 0 */
    jmp guest_entry64

/*
 * AP start-up code, copied to PVH_AP_TRAMPOLINE_GPA (the SIPI vector
 * page) by pvh_start_secondary_vcpus(). Runs at CS:IP = vector<<8:0, so
 * data is addressed relative to the copy with DS = CS. Absolute 32-bit
 * immediates (CR3, the 64-bit entry) are fine: the image is not moved.
 */
    .code16
    .globl pvh_ap_trampoline
    .globl pvh_ap_trampoline_end
    .globl pvh_ap_gdt_pointer
pvh_ap_trampoline:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (pvh_ap_gdt_pointer - pvh_ap_trampoline)
    mov $0x20, %eax                 /* PAE */
    mov %eax, %cr4
    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80010033, %eax           /* PG | WP | NE | ET | MP | PE */
    mov %eax, %cr0
    ljmpl $GUEST_SELECTOR_KERNEL_CODE, $pvh_ap_entry64
    .balign 8
pvh_ap_gdt_pointer:                 /* filled by vCPU 0: guest_gdt_pointer */
    .word 0
    .long 0
pvh_ap_trampoline_end:

    .code64
pvh_ap_entry64:
    mov $GUEST_SELECTOR_KERNEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $1, %eax
    lock xadd %eax, pvh_ap_next_index(%rip)
    mov %eax, %edi                  /* this AP's vCPU index: 1, 2, ... */
    mov pvh_ap_bootinfo(%rip), %rsi
    jmp guest_entry64               /* halts if the index is out of range */

    .section .bss
    .balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_page_directories:
    .skip 4 * 4096

    .section .note.GNU-stack, "", @progbits
