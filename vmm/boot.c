/*
 * VMM side of booting the built-in guest (or any ELF honouring the same
 * contract, see boot.h). Owned by the boot code; called by vm_create before
 * any vCPU runs, so nothing here is concurrent.
 */
#include "vmm/boot.h"

#include <elf.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "guest/abi.h"

extern const char ringvm_guest_image_start[];
extern const char ringvm_guest_image_end[];

void boot_builtin_guest(const void **image, size_t *size)
{
    *image = ringvm_guest_image_start;
    *size = (size_t)(ringvm_guest_image_end - ringvm_guest_image_start);
}

#define BOOT_ERROR(code, ...)                                  \
    do {                                                       \
        snprintf(error, error_size, __VA_ARGS__);              \
        return (code);                                         \
    } while (0)

static int check_header(const Elf64_Ehdr *header, size_t size, char *error, size_t error_size)
{
    if (size < sizeof(Elf64_Ehdr))
        BOOT_ERROR(-EINVAL, "guest ELF: %zu bytes is too small for an ELF header", size);
    if (memcmp(header->e_ident, ELFMAG, SELFMAG) != 0)
        BOOT_ERROR(-EINVAL, "guest ELF: not an ELF file (bad magic)");
    if (header->e_ident[EI_CLASS] != ELFCLASS64)
        BOOT_ERROR(-EINVAL, "guest ELF: not a 64-bit ELF (class %u)", header->e_ident[EI_CLASS]);
    if (header->e_ident[EI_DATA] != ELFDATA2LSB)
        BOOT_ERROR(-EINVAL, "guest ELF: not little-endian");
    if (header->e_machine != EM_X86_64)
        BOOT_ERROR(-EINVAL, "guest ELF: machine %u is not x86-64", header->e_machine);
    if (header->e_type != ET_EXEC)
        BOOT_ERROR(-EINVAL, "guest ELF: type %u is not an executable (ET_EXEC)", header->e_type);
    if (header->e_phnum == 0)
        BOOT_ERROR(-EINVAL, "guest ELF: no program headers");
    if (header->e_phentsize != sizeof(Elf64_Phdr))
        BOOT_ERROR(-EINVAL, "guest ELF: program header size %u, expected %zu",
                   header->e_phentsize, sizeof(Elf64_Phdr));
    if (header->e_phoff > size || (size - header->e_phoff) / sizeof(Elf64_Phdr) < header->e_phnum)
        BOOT_ERROR(-EINVAL, "guest ELF: program headers (offset %" PRIu64 ", %u entries) "
                   "extend past the end of the %zu-byte file",
                   (uint64_t)header->e_phoff, header->e_phnum, size);
    return 0;
}

static int check_segment(const struct guest_memory *memory, const Elf64_Phdr *segment,
                         unsigned number, size_t size, char *error, size_t error_size)
{
    uint64_t start = segment->p_paddr, memsz = segment->p_memsz;
    if (segment->p_filesz > memsz)
        BOOT_ERROR(-EINVAL, "guest ELF: segment %u has file size %" PRIu64 " > memory size %" PRIu64,
                   number, (uint64_t)segment->p_filesz, memsz);
    if (segment->p_offset > size || size - segment->p_offset < segment->p_filesz)
        BOOT_ERROR(-EINVAL, "guest ELF: segment %u (offset %" PRIu64 ", %" PRIu64
                   " bytes) extends past the end of the %zu-byte file",
                   number, (uint64_t)segment->p_offset, (uint64_t)segment->p_filesz, size);
    if (start < RINGVM_IMAGE_GPA || memsz > RINGVM_WORKLOAD_BASE - start ||
        start > RINGVM_WORKLOAD_BASE)
        BOOT_ERROR(-EINVAL, "guest ELF: segment %u [0x%" PRIx64 ", 0x%" PRIx64 ") is outside the "
                   "image area [0x%llx, 0x%llx) (below is boot info and page tables, above "
                   "the workload regions)", number, start, start + memsz,
                   RINGVM_IMAGE_GPA, RINGVM_WORKLOAD_BASE);
    if (guest_memory_gpa_to_host(memory, start, memsz) == NULL)
        BOOT_ERROR(-ENOSPC, "guest ELF: segment %u [0x%" PRIx64 ", 0x%" PRIx64 ") does not fit in "
                   "%" PRIu64 " bytes of guest RAM", number, start, start + memsz, memory->size);
    return 0;
}

int boot_load_guest(struct guest_memory *memory, const void *elf, size_t size,
                    uint64_t *entry, char *error, size_t error_size)
{
    const Elf64_Ehdr *header = elf;
    if (elf == NULL)
        BOOT_ERROR(-EINVAL, "guest ELF: no image");
    int status = check_header(header, size, error, error_size);
    if (status != 0)
        return status;

    const Elf64_Phdr *segments = (const Elf64_Phdr *)((const uint8_t *)elf + header->e_phoff);
    unsigned loaded = 0;
    int entry_inside = 0;
    /* Validate everything before writing anything. */
    for (unsigned i = 0; i < header->e_phnum; i++) {
        const Elf64_Phdr *segment = &segments[i];
        if (segment->p_type != PT_LOAD || segment->p_memsz == 0)
            continue;
        status = check_segment(memory, segment, i, size, error, error_size);
        if (status != 0)
            return status;
        if (header->e_entry >= segment->p_paddr &&
            header->e_entry - segment->p_paddr < segment->p_memsz && (segment->p_flags & PF_X))
            entry_inside = 1;
        loaded++;
    }
    if (loaded == 0)
        BOOT_ERROR(-EINVAL, "guest ELF: no loadable (PT_LOAD) segment");
    if (!entry_inside)
        BOOT_ERROR(-EINVAL, "guest ELF: entry point 0x%" PRIx64 " is not in an executable segment",
                   (uint64_t)header->e_entry);

    for (unsigned i = 0; i < header->e_phnum; i++) {
        const Elf64_Phdr *segment = &segments[i];
        if (segment->p_type != PT_LOAD || segment->p_memsz == 0)
            continue;
        uint8_t *target = guest_memory_gpa_to_host(memory, segment->p_paddr, segment->p_memsz);
        memcpy(target, (const uint8_t *)elf + segment->p_offset, segment->p_filesz);
        memset(target + segment->p_filesz, 0, segment->p_memsz - segment->p_filesz);
    }
    *entry = header->e_entry;
    return 0;
}

#define PTE_PRESENT   0x001ULL
#define PTE_WRITABLE  0x002ULL
#define PTE_USER      0x004ULL
#define PTE_ACCESSED  0x020ULL
#define PTE_DIRTY     0x040ULL
#define PTE_LARGE     0x080ULL
/* A and D preset so neither the CPU nor KVM's emulator ever writes the
 * tables back (which would also dirty them under dirty tracking). */
#define PTE_TABLE     (PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED)
#define PTE_LEAF      (PTE_TABLE | PTE_DIRTY)

#define GIB (1ULL << 30)
#define MIB2 (2ULL << 20)

int boot_setup_page_tables(struct guest_memory *memory, char *error, size_t error_size)
{
    /* Address space to map: RAM, the 3-4 GiB hole (doorbell) and above. */
    uint64_t top = 4 * GIB;
    for (unsigned i = 0; i < memory->slot_count; i++) {
        uint64_t end = memory->slots[i].gpa + memory->slots[i].size;
        if (end > top)
            top = end;
    }
    uint64_t directories = (top + GIB - 1) / GIB;
    uint64_t pages_needed = 3 + directories;   /* PML4, PDPT, first-2-MiB table, PDs */
    uint64_t pages_available = RINGVM_PAGE_TABLES_SIZE / RINGVM_PAGE_SIZE;
    if (pages_needed > pages_available)
        BOOT_ERROR(-ENOSPC, "page tables: identity-mapping %" PRIu64 " GiB of guest-physical "
                   "space needs %" PRIu64 " page-table pages, only %" PRIu64 " fit below the image",
                   directories, pages_needed, pages_available);
    uint64_t *tables = guest_memory_gpa_to_host(memory, RINGVM_PAGE_TABLES_GPA, pages_needed *
                                                RINGVM_PAGE_SIZE);
    if (tables == NULL)
        BOOT_ERROR(-ENOSPC, "page tables: [0x%llx, 0x%llx) is not guest RAM (%" PRIu64 " bytes)",
                   RINGVM_PAGE_TABLES_GPA, RINGVM_PAGE_TABLES_GPA + pages_needed * RINGVM_PAGE_SIZE,
                   memory->size);
    memset(tables, 0, pages_needed * RINGVM_PAGE_SIZE);

    const uint64_t words = RINGVM_PAGE_SIZE / 8;
    uint64_t *pml4 = tables;
    uint64_t *pdpt = tables + words;
    uint64_t *first_table = tables + 2 * words;
    uint64_t *directory = tables + 3 * words;
    uint64_t pdpt_gpa = RINGVM_PAGE_TABLES_GPA + RINGVM_PAGE_SIZE;
    uint64_t first_table_gpa = RINGVM_PAGE_TABLES_GPA + 2 * RINGVM_PAGE_SIZE;
    uint64_t directory_gpa = RINGVM_PAGE_TABLES_GPA + 3 * RINGVM_PAGE_SIZE;

    pml4[0] = pdpt_gpa | PTE_TABLE;
    for (uint64_t gib = 0; gib < directories; gib++)
        pdpt[gib] = (directory_gpa + gib * RINGVM_PAGE_SIZE) | PTE_TABLE;
    for (uint64_t index = 0; index < directories * 512; index++)
        directory[index] = (index * MIB2) | PTE_LEAF | PTE_LARGE;
    /* First 2 MiB in 4 KiB pages so the null page can stay not present. */
    directory[0] = first_table_gpa | PTE_TABLE;
    for (uint64_t page = 1; page < 512; page++)
        first_table[page] = (page * RINGVM_PAGE_SIZE) | PTE_LEAF;
    return 0;
}

static void set_flat_segment(struct kvm_segment *segment, uint16_t selector, uint8_t type, int code)
{
    memset(segment, 0, sizeof(*segment));
    segment->base = 0;
    segment->limit = 0xffffffff;
    segment->selector = selector;
    segment->type = type;
    segment->present = 1;
    segment->dpl = 0;
    segment->s = 1;
    segment->g = 1;
    segment->l = code ? 1 : 0;     /* 64-bit code */
    segment->db = code ? 0 : 1;
}

#define CR0_PE (1ULL << 0)
#define CR0_MP (1ULL << 1)
#define CR0_ET (1ULL << 4)
#define CR0_NE (1ULL << 5)
#define CR0_WP (1ULL << 16)
#define CR0_PG (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define CR4_OSFXSR (1ULL << 9)
#define CR4_OSXMMEXCPT (1ULL << 10)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)
#define EFER_NXE (1ULL << 11)

int boot_setup_vcpu(int vcpu_fd, unsigned index, uint64_t entry, char *error, size_t error_size)
{
    struct kvm_sregs sregs;
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) != 0) {
        int saved = errno;
        BOOT_ERROR(-saved, "vcpu %u: KVM_GET_SREGS: %s", index, strerror(saved));
    }
    set_flat_segment(&sregs.cs, 0x08, 0xb, 1);     /* execute/read, accessed */
    set_flat_segment(&sregs.ds, 0x10, 0x3, 0);     /* read/write, accessed */
    sregs.es = sregs.ds;
    sregs.ss = sregs.ds;
    sregs.fs = sregs.ds;
    sregs.gs = sregs.ds;
    /* Long mode requires a busy 64-bit TSS in TR; the guest loads its own. */
    sregs.tr.type = 0xb;
    sregs.tr.present = 1;
    sregs.tr.s = 0;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = RINGVM_PAGE_TABLES_GPA;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) != 0) {
        int saved = errno;
        BOOT_ERROR(-saved, "vcpu %u: KVM_SET_SREGS (64-bit entry state): %s%s", index,
                   strerror(saved), saved == EINVAL ?
                   " (KVM_SET_CPUID2 with LM and NX must come first)" : "");
    }

    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = entry;
    regs.rflags = 0x2;
    regs.rdi = index;
    regs.rsi = RINGVM_BOOTINFO_GPA;
    regs.rsp = 0;
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) != 0) {
        int saved = errno;
        BOOT_ERROR(-saved, "vcpu %u: KVM_SET_REGS: %s", index, strerror(saved));
    }

    /* With an in-kernel LAPIC every vCPU but 0 would wait for INIT/SIPI. */
    struct kvm_mp_state mp_state = { .mp_state = KVM_MP_STATE_RUNNABLE };
    if (ioctl(vcpu_fd, KVM_SET_MP_STATE, &mp_state) != 0) {
        int saved = errno;
        BOOT_ERROR(-saved, "vcpu %u: KVM_SET_MP_STATE(RUNNABLE): %s", index, strerror(saved));
    }
    return 0;
}
