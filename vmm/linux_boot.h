/*
 * Booting a Linux kernel: parse a bzImage or a vmlinux ELF, check that it,
 * the initrd and the command line fit the guest, load them into guest RAM
 * with the zero page (64-bit boot protocol) or the PVH start_info, and set
 * up the vCPUs.
 *
 * Sources: Documentation/x86/boot.rst and zero-page.rst (Linux 6.1), the
 * uapi <asm/bootparam.h> layouts, Xen's include/xen/interface/hvm/
 * start_info.h (PVH), Firecracker's arch/x86_64 (vCPU state, MSRs, LINT).
 *
 * Guest-physical layout of a Linux guest (everything ringvm writes):
 *
 *   0x0000_0000  real-mode IVT / BIOS data area: left zero      e820 RAM
 *   0x0000_1000  ringvm boot info page   (guest/abi.h)           e820 RESERVED: the guest's
 *   0x0000_2000  ringvm stats pages      (guest/abi.h)           workload maps them through
 *                                                                /dev/mem, so never RAM
 *   0x0000_A000  GDT (6 entries) .......................... LINUX_BOOT_GDT_GPA      e820 RAM
 *   0x0000_B000  PVH hvm_start_info, module list at +0x40,
 *                memory map at +0x80 .................... LINUX_BOOT_START_INFO_GPA
 *   0x0000_C000  zero page (struct boot_params) .......... LINUX_BOOT_ZERO_PAGE_GPA
 *   0x0000_D000  boot page tables: PML4, PDPT, 4 PDs ..... LINUX_BOOT_PAGE_TABLES_GPA
 *   0x0001_3000  boot stack page, RSP = 0x13ff0 .......... LINUX_BOOT_STACK_TOP
 *   0x0002_0000  kernel command line, up to 64 KiB ....... LINUX_BOOT_CMDLINE_GPA
 *   0x0003_0000  free low RAM (the kernel's real-mode trampoline goes here)
 *   0x0009_FC00  MP floating pointer + table (4 KiB) ..... LINUX_BOOT_MPTABLE_GPA  e820 RESERVED
 *   0x000A_0000  legacy VGA / BIOS hole                                            up to 1 MiB
 *   0x0010_0000  bzImage protected-mode part (64-bit entry at +0x200);            e820 RAM
 *                a vmlinux loads its PT_LOAD segments at their p_paddr instead
 *   ...          the kernel's run-time area [runtime_start, runtime_start + init_size)
 *   top of RAM   the initrd, page-aligned, below 3 GiB and initrd_addr_max
 *   (3 GiB)      RAM stops at RINGVM_LOW_RAM_END when --memory > 3G and continues at 4 GiB;
 *                e820 follows vmm/memory.h's slots exactly
 *
 * Why 1 MiB for every bzImage, relocatable or not: boot.rst says a non-
 * relocatable kernel "will unconditionally move itself" to pref_address, and
 * arch/x86/boot/compressed/head_64.S (startup_64) decompresses a relocatable
 * one to max(align_up(load address, kernel_alignment), LOAD_PHYSICAL_ADDR =
 * pref_address). Either way the loader may put the protected-mode part at
 * 1 MiB, as Firecracker and rust-vmm's linux-loader do; what the initrd must
 * avoid is the image at 1 MiB plus the run-time area
 * [runtime_start, runtime_start + init_size), both computed here.
 *
 * Why the boot page tables map 4 GiB (2 MiB pages) and not 1 GiB as
 * Firecracker: the 64-bit protocol wants the kernel's whole run-time area,
 * the zero page and the command line identity-mapped; with 4 GiB that holds
 * for any pref_address/init_size that fits below the 3 GiB RAM end, at the
 * cost of 3 more page-table pages.
 *
 * Ownership: everything here runs on the thread creating the VM, before any
 * vCPU runs. struct linux_kernel points into the caller's image buffer and
 * path string, which must outlive it; nothing here is shared.
 *
 * Functions return 0 or -errno and on failure write one line naming the
 * option, the file and the problem (no "ringvm: " prefix) to error.
 */
#ifndef RINGVM_VMM_LINUX_BOOT_H
#define RINGVM_VMM_LINUX_BOOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <asm/bootparam.h>
#include <linux/kvm.h>

#include "vmm/memory.h"

#define LINUX_BOOT_GDT_GPA              0xA000ULL
#define LINUX_BOOT_GDT_ENTRIES          6
#define LINUX_BOOT_START_INFO_GPA       0xB000ULL
#define LINUX_BOOT_MODLIST_GPA          0xB040ULL
#define LINUX_BOOT_MEMMAP_GPA           0xB080ULL
#define LINUX_BOOT_ZERO_PAGE_GPA        0xC000ULL
#define LINUX_BOOT_PAGE_TABLES_GPA      0xD000ULL   /* PML4; PDPT +0x1000; PDs +0x2000.. */
#define LINUX_BOOT_PAGE_TABLES_SIZE     0x6000ULL   /* maps [0, 4 GiB) */
#define LINUX_BOOT_STACK_GPA            0x13000ULL
#define LINUX_BOOT_STACK_TOP            0x13FF0ULL
#define LINUX_BOOT_CMDLINE_GPA          0x20000ULL
#define LINUX_BOOT_CMDLINE_SIZE         0x10000ULL  /* buffer, including the NUL */
#define LINUX_BOOT_MPTABLE_GPA          0x9FC00ULL  /* the last KiB of 640 KiB: Linux scans it */
#define LINUX_BOOT_MPTABLE_SIZE         0x1000ULL
#define LINUX_BOOT_RESERVED_HIGH_START  0x9FC00ULL  /* e820 reserved up to 1 MiB */
#define LINUX_BOOT_KERNEL_GPA           0x100000ULL /* bzImage load address; below: boot data */
#define LINUX_BOOT_IDENTITY_MAP_SIZE    0x100000000ULL

/* Selectors of the boot GDT: boot.rst's __BOOT_CS 0x10 / __BOOT_DS 0x18.
 * (Firecracker uses 0x08/0x10, which works too because both entry points
 * load their own GDT first; we follow the documented contract.) */
#define LINUX_BOOT_CODE_SELECTOR        0x10
#define LINUX_BOOT_DATA_SELECTOR        0x18
#define LINUX_BOOT_TSS_SELECTOR         0x20

/* The kernel command line ringvm always passes; --cmdline is appended. */
#define LINUX_BOOT_DEFAULT_CMDLINE      "console=ttyS0 reboot=k panic=1 pci=off"
/* Added after it on PVM hosts (vmm/host.h), which emulate guest ring 0 and
 * cannot emulate these instructions of a stock kernel's boot and context
 * switches: xrstor (noxsave: the FPU falls back to fxsave/fxrstor), popcnt
 * (hweight falls back to C), and the ones clearcpuid= names (each found by
 * booting without it: guest/linux/README.md, "On PVM hosts"). */
#define LINUX_BOOT_PVM_CMDLINE          "noxsave clearcpuid=popcnt,cx16,smap"
/* x86 COMMAND_LINE_SIZE (2048) minus the NUL: what a vmlinux (no setup
 * header) accepts, and what copy_bootdata copies in any case. */
#define LINUX_BOOT_ELF_CMDLINE_MAX      2047U

#define LINUX_BOOT_MAX_SEGMENTS         16

enum linux_kernel_format {
    LINUX_KERNEL_BZIMAGE = 1,
    LINUX_KERNEL_ELF = 2,
};

enum linux_boot_mode {
    LINUX_BOOT_MODE_64BIT = 1,  /* long mode, RSI = zero page */
    LINUX_BOOT_MODE_PVH = 2,    /* 32-bit flat protected mode, paging off, EBX = start_info */
};

/* One PT_LOAD segment of a vmlinux, or the protected-mode part of a bzImage. */
struct linux_kernel_segment {
    uint64_t file_offset;
    uint64_t file_size;
    uint64_t gpa;
    uint64_t memory_size;       /* >= file_size; the rest is zeroed */
};

/* A parsed kernel image. Points into the caller's buffers (image, path). */
struct linux_kernel {
    const char *path;               /* for messages */
    const uint8_t *image;
    size_t image_size;
    enum linux_kernel_format format;
    enum linux_boot_mode mode;
    uint64_t entry;                 /* guest-physical entry point (RIP / EIP) */

    unsigned segment_count;
    struct linux_kernel_segment segments[LINUX_BOOT_MAX_SEGMENTS];

    /* Guest RAM the kernel occupies until it has read the memory map: the
     * loaded image and (bzImage) its decompression area. [start, end). */
    uint64_t footprint_start;
    uint64_t footprint_end;

    uint32_t cmdline_max;           /* characters, without the NUL */
    uint64_t initrd_addr_max;       /* highest byte the initrd may occupy */

    /* bzImage only (0 for an ELF). */
    uint16_t protocol;              /* 0x020f = 2.15 */
    unsigned setup_sects;           /* 0 in the file means 4 */
    uint64_t setup_size;            /* (setup_sects + 1) * 512: file offset of the protected-mode part */
    uint64_t payload_size;          /* syssize * 16: bytes of the protected-mode part */
    uint32_t header_end;            /* 0x202 + byte at 0x201: end of the setup header */
    uint8_t loadflags;
    uint16_t xloadflags;
    bool relocatable;
    uint32_t kernel_alignment;
    uint64_t pref_address;
    uint32_t init_size;
    uint64_t runtime_start;         /* where the kernel decompresses to */
};

/* Where check() placed things, before any guest memory exists. */
struct linux_boot_layout {
    uint64_t low_ram_end;           /* end of the RAM slot at 0 (<= 3 GiB) */
    uint64_t initrd_gpa;            /* 0 when there is no initrd */
    uint64_t initrd_size;
    size_t cmdline_length;          /* without the NUL */
};

/* A whole file read into memory (linux_boot_read_file). */
struct linux_boot_file {
    uint8_t *data;
    size_t size;
};

/* What the vCPU set-up needs, filled by linux_boot_load. The boot vCPU
 * starts here; the others wait for INIT/SIPI from the guest. */
struct linux_boot_entry {
    enum linux_boot_mode mode;
    uint64_t rip;
    uint64_t rsp;
    uint64_t rbp;
    uint64_t rsi;                   /* 64-bit: the zero page */
    uint64_t rbx;                   /* PVH: the start_info */
    uint64_t cr0;
    uint64_t cr3;
    uint64_t cr4;
    uint64_t efer;
    uint64_t gdt_base;
    uint16_t gdt_limit;
    uint64_t idt_base;
    uint16_t idt_limit;
    uint64_t gdt[LINUX_BOOT_GDT_ENTRIES];   /* as written to LINUX_BOOT_GDT_GPA */
    uint64_t initrd_gpa;
    uint64_t initrd_size;
    uint64_t cmdline_gpa;
};

/* ---- pure: no guest memory, no KVM ---------------------------------- */

/* Reads the whole regular file `path` for `option` ("--kernel", "--initrd")
 * into file->data (malloc'd). Errors read "--initrd /nope: No such file or
 * directory", "--kernel /tmp: not a regular file". */
int linux_boot_read_file(const char *option, const char *path, struct linux_boot_file *file,
                         char *error, size_t error_size);
void linux_boot_file_free(struct linux_boot_file *file);

/* Parses a bzImage (64-bit boot protocol 2.12+) or an x86-64 vmlinux ELF
 * (PVH entry when it carries XEN_ELFNOTE_PHYS32_ENTRY, else its 64-bit
 * entry). -EINVAL with "--kernel PATH: ..." for anything else. */
int linux_kernel_parse(struct linux_kernel *kernel, const char *path, const void *image, size_t size,
                       char *error, size_t error_size);

/* Every "does not fit" check, before guest memory exists: the kernel in
 * guest RAM, the command line (cmdline_length bytes without the NUL)
 * within the kernel's limit and ringvm's buffer, the initrd (initrd_size
 * bytes, 0 = none; initrd_path for messages) between the kernel and
 * min(end of low RAM, initrd_addr_max). Fills layout when non-NULL. */
int linux_boot_check(const struct linux_kernel *kernel, uint64_t memory_size, const char *initrd_path,
                     uint64_t initrd_size, size_t cmdline_length, struct linux_boot_layout *layout,
                     char *error, size_t error_size);

/* LINUX_BOOT_DEFAULT_CMDLINE, then " " LINUX_BOOT_PVM_CMDLINE when
 * pvm_host, then " " and user_cmdline when that is neither NULL nor empty.
 * malloc'd; NULL when out of memory. */
char *linux_boot_cmdline(const char *user_cmdline, bool pvm_host);

/* The e820 map of a guest with this memory layout (vmm/memory.h slots):
 * RAM [0, 4K), RESERVED [4K, 40K) (ringvm's boot info and stats pages),
 * RAM [40K, 0x9fc00), RESERVED [0x9fc00, 1M), RAM from 1 MiB to the end
 * of each slot. Returns the number of entries (<= capacity, else -ENOSPC). */
int linux_boot_e820(const struct guest_memory *memory, struct boot_e820_entry *entries, unsigned capacity);

/* ---- guest memory, no KVM --------------------------------------------- */

/* Checks again (linux_boot_check), then writes the kernel, the initrd, the
 * command line, the MP table for vcpu_count vCPUs, the GDT, and either the
 * zero page and page tables (64-bit) or the PVH start_info, memory map and
 * module list; fills entry. Guest RAM is expected to be fresh (zero). */
int linux_boot_load(struct guest_memory *memory, const struct linux_kernel *kernel,
                    const void *initrd, uint64_t initrd_size, const char *initrd_path,
                    const char *cmdline, unsigned vcpu_count, struct linux_boot_entry *entry,
                    char *error, size_t error_size);

/* ---- vCPU state: pure parts (tests call them) ------------------------- */

/* Segment registers, GDT/IDT, CR0/3/4 and EFER of the boot vCPU, written
 * over a struct kvm_sregs read with KVM_GET_SREGS (APIC base and the
 * interrupt bitmap are kept). */
void linux_boot_fill_sregs(const struct linux_boot_entry *entry, struct kvm_sregs *sregs);
/* RFLAGS 0x2, RIP, RSP/RBP, RSI or RBX; everything else 0. */
void linux_boot_fill_regs(const struct linux_boot_entry *entry, struct kvm_regs *regs);
/* FCW 0x37f, MXCSR 0x1f80 (the power-on values). */
void linux_boot_fill_fpu(struct kvm_fpu *fpu);
/* The boot MSRs (Firecracker's create_boot_msr_entries): SYSENTER_CS/ESP/EIP,
 * STAR, CSTAR, KERNEL_GS_BASE, SYSCALL_MASK, LSTAR, TSC = 0,
 * MISC_ENABLE = FAST_STRING, MTRRdefType = E | WB. Returns how many it wrote
 * (LINUX_BOOT_MSR_COUNT) or 0 when capacity is too small. */
#define LINUX_BOOT_MSR_COUNT 11
unsigned linux_boot_msr_entries(struct kvm_msr_entry *entries, unsigned capacity);
/* LVT LINT0 (0x350) delivery mode ExtINT, LVT LINT1 (0x360) NMI; the other
 * bits (mask, trigger) are kept. */
void linux_boot_set_lint(struct kvm_lapic_state *lapic);

/* ---- KVM (needs /dev/kvm) -------------------------------------------- */

/* For every vCPU, after KVM_SET_CPUID2 (cpuid.h) and with the in-kernel
 * irqchip created: KVM_SET_MSRS (every entry must be written; the first
 * that was not is named), and for index 0 only KVM_SET_REGS, KVM_SET_FPU,
 * KVM_GET/SET_SREGS; then KVM_GET/SET_LAPIC with LINT0/LINT1. The other
 * vCPUs keep KVM's reset state and wait for INIT/SIPI: do not make them
 * RUNNABLE (boot_setup_vcpu does, for the built-in guest only). */
int linux_boot_setup_vcpu(int vcpu_fd, unsigned index, const struct linux_boot_entry *entry,
                          char *error, size_t error_size);

#endif
