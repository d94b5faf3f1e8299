/* The built-in guest, linked into ringvm so the binary needs no data files.
 * The Makefile passes the image path as RINGVM_GUEST_ELF. */
    .section .rodata
    .balign 4096
    .globl ringvm_guest_image_start
    .globl ringvm_guest_image_end
ringvm_guest_image_start:
    .incbin RINGVM_GUEST_ELF
ringvm_guest_image_end:
    .section .note.GNU-stack,"",@progbits
