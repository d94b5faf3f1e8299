/*
 * Linux boot protocol (see linux_boot.h for the layout and the decisions).
 * Called by the thread creating the VM, before any vCPU runs.
 */
#include "vmm/linux_boot.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <asm/e820.h>

#include "guest/abi.h"
#include "guest/pvh_start_info.h"
#include "vmm/mptable.h"

#define KIB ((uint64_t)1 << 10)
#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)

#define BOOT_ERROR(code, ...)                                  \
    do {                                                       \
        snprintf(error, error_size, __VA_ARGS__);              \
        return (code);                                         \
    } while (0)

/* ---- boot protocol constants (Documentation/x86/boot.rst) ------------- */

#define BZIMAGE_SETUP_HEADER_OFFSET 0x1f1   /* struct setup_header in the image and the zero page */
#define BZIMAGE_JUMP_END_OFFSET     0x201   /* 0x202 + this byte = end of the setup header */
#define BZIMAGE_MAGIC_OFFSET        0x202
#define BZIMAGE_MAGIC               0x53726448U     /* "HdrS" */
#define BZIMAGE_BOOT_FLAG           0xAA55
#define BZIMAGE_MIN_PROTOCOL        0x020C          /* 2.12: xloadflags, XLF_KERNEL_64 */
#define BZIMAGE_64BIT_ENTRY_OFFSET  0x200
#define BZIMAGE_DEFAULT_SETUP_SECTS 4
#define BZIMAGE_LOADER_UNDEFINED    0xFF            /* type_of_loader: "other" */
/* The setup header may grow up to the next zero-page field (0x290). */
#define BZIMAGE_HEADER_LIMIT        offsetof(struct boot_params, edd_mbr_sig_buffer)
/* The header must reach init_size (2.10+) for the fields this code reads. */
#define BZIMAGE_HEADER_MINIMUM      (BZIMAGE_SETUP_HEADER_OFFSET + offsetof(struct setup_header, init_size) + 4)

#define XEN_ELFNOTE_PHYS32_ENTRY    18

_Static_assert(sizeof(struct boot_params) == 4096, "the zero page is one page");
_Static_assert(LINUX_BOOT_START_INFO_GPA + sizeof(struct hvm_start_info) <= LINUX_BOOT_MODLIST_GPA,
               "start_info overlaps the module list");
_Static_assert(LINUX_BOOT_MODLIST_GPA + sizeof(struct hvm_modlist_entry) <= LINUX_BOOT_MEMMAP_GPA,
               "the module list overlaps the memory map");
_Static_assert(LINUX_BOOT_MEMMAP_GPA + E820_MAX_ENTRIES_ZEROPAGE * sizeof(struct hvm_memmap_table_entry) <=
               LINUX_BOOT_ZERO_PAGE_GPA, "the PVH memory map overlaps the zero page");
_Static_assert(LINUX_BOOT_GDT_GPA >= RINGVM_STATS_GPA + RINGVM_STATS_SIZE, "boot data inside the stats pages");
_Static_assert(LINUX_BOOT_PAGE_TABLES_GPA + LINUX_BOOT_PAGE_TABLES_SIZE <= LINUX_BOOT_STACK_GPA,
               "page tables overlap the stack");
_Static_assert(LINUX_BOOT_CMDLINE_GPA + LINUX_BOOT_CMDLINE_SIZE <= LINUX_BOOT_MPTABLE_GPA,
               "the command line overlaps the MP table");

/* ---- sizes in messages --------------------------------------------- */

/* "900 MiB", "1 GiB", "4 KiB", or "812345 bytes" when no unit is exact. */
static const char *describe_size(uint64_t bytes, char *out, size_t out_size)
{
    if (bytes != 0 && bytes % GIB == 0)
        snprintf(out, out_size, "%" PRIu64 " GiB", bytes / GIB);
    else if (bytes != 0 && bytes % MIB == 0)
        snprintf(out, out_size, "%" PRIu64 " MiB", bytes / MIB);
    else if (bytes != 0 && bytes % KIB == 0)
        snprintf(out, out_size, "%" PRIu64 " KiB", bytes / KIB);
    else
        snprintf(out, out_size, "%" PRIu64 " bytes", bytes);
    return out;
}

/* An address: "16 MiB" when MiB-aligned, else hex. */
static const char *describe_address(uint64_t address, char *out, size_t out_size)
{
    if (address % MIB == 0 && address != 0)
        return describe_size(address, out, out_size);
    snprintf(out, out_size, "0x%" PRIx64, address);
    return out;
}

static uint64_t align_up(uint64_t value, uint64_t alignment)
{
    return (value + alignment - 1) & ~(alignment - 1);
}

/* ---- reading files --------------------------------------------------- */

/* Nothing that fits below 3 GiB of guest RAM is larger. */
#define LINUX_BOOT_MAX_FILE_SIZE (4 * GIB)

int linux_boot_read_file(const char *option, const char *path, struct linux_boot_file *file,
                         char *error, size_t error_size)
{
    file->data = NULL;
    file->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        BOOT_ERROR(-saved, "%s %s: %s", option, path, strerror(saved));
    }
    struct stat status;
    if (fstat(fd, &status) != 0) {
        int saved = errno;
        close(fd);
        BOOT_ERROR(-saved, "%s %s: fstat: %s", option, path, strerror(saved));
    }
    if (!S_ISREG(status.st_mode)) {
        close(fd);
        BOOT_ERROR(-EINVAL, "%s %s: not a regular file", option, path);
    }
    if (status.st_size == 0) {
        close(fd);
        BOOT_ERROR(-EINVAL, "%s %s: the file is empty", option, path);
    }
    if ((uint64_t)status.st_size > LINUX_BOOT_MAX_FILE_SIZE) {
        close(fd);
        BOOT_ERROR(-EFBIG, "%s %s: %" PRIu64 " bytes, more than the 4 GiB ringvm reads", option, path,
                   (uint64_t)status.st_size);
    }
    size_t size = (size_t)status.st_size;
    uint8_t *data = malloc(size);
    if (data == NULL) {
        close(fd);
        BOOT_ERROR(-ENOMEM, "%s %s: out of memory for %zu bytes", option, path, size);
    }
    size_t done = 0;
    while (done < size) {
        ssize_t got = read(fd, data + done, size - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int saved = errno;
            free(data);
            close(fd);
            BOOT_ERROR(-saved, "%s %s: read: %s", option, path, strerror(saved));
        }
        if (got == 0) {
            free(data);
            close(fd);
            BOOT_ERROR(-EIO, "%s %s: read %zu of %zu bytes (did the file shrink?)", option, path, done, size);
        }
        done += (size_t)got;
    }
    if (close(fd) != 0) {
        int saved = errno;
        free(data);
        BOOT_ERROR(-saved, "%s %s: close: %s", option, path, strerror(saved));
    }
    file->data = data;
    file->size = size;
    return 0;
}

void linux_boot_file_free(struct linux_boot_file *file)
{
    free(file->data);
    file->data = NULL;
    file->size = 0;
}

/* ---- parsing: bzImage ------------------------------------------------- */

static int parse_bzimage(struct linux_kernel *kernel, char *error, size_t error_size)
{
    const char *path = kernel->path;
    size_t size = kernel->image_size;
    const uint8_t *image = kernel->image;

    /* The first 4 KiB through the kernel's own layout; the setup header
     * sits at 0x1f1 of both the image and the zero page. */
    struct boot_params params;
    memset(&params, 0, sizeof(params));
    memcpy(&params, image, size < sizeof(params) ? size : sizeof(params));
    const struct setup_header *header = &params.hdr;

    uint16_t protocol = header->version;
    if (protocol < BZIMAGE_MIN_PROTOCOL)
        BOOT_ERROR(-EINVAL, "--kernel %s: boot protocol %u.%02u is too old (the 64-bit entry needs 2.12 or later)",
                   path, protocol >> 8, protocol & 0xff);
    uint32_t header_end = BZIMAGE_MAGIC_OFFSET + image[BZIMAGE_JUMP_END_OFFSET];
    if (header_end < BZIMAGE_HEADER_MINIMUM || header_end > BZIMAGE_HEADER_LIMIT)
        BOOT_ERROR(-EINVAL, "--kernel %s: the setup header ends at 0x%x (byte 0x201 = 0x%02x), expected between "
                   "0x%zx and 0x%zx for protocol %u.%02u", path, header_end, image[BZIMAGE_JUMP_END_OFFSET],
                   (size_t)BZIMAGE_HEADER_MINIMUM, (size_t)BZIMAGE_HEADER_LIMIT, protocol >> 8, protocol & 0xff);
    if (size < header_end)
        BOOT_ERROR(-EINVAL, "--kernel %s: truncated: %zu bytes, the setup header alone ends at %u", path, size,
                   header_end);
    if (!(header->xloadflags & XLF_KERNEL_64))
        BOOT_ERROR(-EINVAL, "--kernel %s: no 64-bit entry point (XLF_KERNEL_64 is not set in xloadflags 0x%x): "
                   "a 32-bit kernel?", path, header->xloadflags);
    if (!(header->loadflags & LOADED_HIGH))
        BOOT_ERROR(-EINVAL, "--kernel %s: a zImage that loads at 0x10000 (LOADED_HIGH is not set in loadflags "
                   "0x%x); ringvm boots bzImages", path, header->loadflags);

    unsigned setup_sects = header->setup_sects ? header->setup_sects : BZIMAGE_DEFAULT_SETUP_SECTS;
    uint64_t setup_size = (uint64_t)(setup_sects + 1) * 512;
    uint64_t payload_size = (uint64_t)header->syssize * 16;
    if (payload_size == 0)
        BOOT_ERROR(-EINVAL, "--kernel %s: syssize is 0: no protected-mode kernel", path);
    if (size < setup_size + payload_size)
        BOOT_ERROR(-EINVAL, "--kernel %s: truncated: %zu bytes, the header says %" PRIu64, path, size,
                   setup_size + payload_size);
    if (header->init_size == 0)
        BOOT_ERROR(-EINVAL, "--kernel %s: init_size is 0 (the header says the kernel needs no memory)", path);

    /* Where startup_64 decompresses to (linux_boot.h). */
    uint64_t runtime_start;
    bool relocatable = header->relocatable_kernel != 0;
    if (relocatable) {
        uint32_t alignment = header->kernel_alignment;
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            BOOT_ERROR(-EINVAL, "--kernel %s: kernel_alignment 0x%x is not a power of two", path, alignment);
        runtime_start = align_up(LINUX_BOOT_KERNEL_GPA, alignment);
        if (runtime_start < header->pref_address)
            runtime_start = header->pref_address;
    } else {
        runtime_start = header->pref_address;
    }
    if (runtime_start < LINUX_BOOT_KERNEL_GPA || runtime_start >= RINGVM_LOW_RAM_END)
        BOOT_ERROR(-EINVAL, "--kernel %s: it runs at 0x%" PRIx64 " (pref_address 0x%llx, %s), outside "
                   "[1 MiB, 3 GiB) where ringvm can place it", path, runtime_start,
                   (unsigned long long)header->pref_address, relocatable ? "relocatable" : "not relocatable");

    kernel->format = LINUX_KERNEL_BZIMAGE;
    kernel->mode = LINUX_BOOT_MODE_64BIT;
    kernel->entry = LINUX_BOOT_KERNEL_GPA + BZIMAGE_64BIT_ENTRY_OFFSET;
    kernel->segment_count = 1;
    kernel->segments[0] = (struct linux_kernel_segment){
        .file_offset = setup_size, .file_size = payload_size,
        .gpa = LINUX_BOOT_KERNEL_GPA, .memory_size = payload_size,
    };
    kernel->protocol = protocol;
    kernel->setup_sects = setup_sects;
    kernel->setup_size = setup_size;
    kernel->payload_size = payload_size;
    kernel->header_end = header_end;
    kernel->loadflags = header->loadflags;
    kernel->xloadflags = header->xloadflags;
    kernel->relocatable = relocatable;
    kernel->kernel_alignment = header->kernel_alignment;
    kernel->pref_address = header->pref_address;
    kernel->init_size = header->init_size;
    kernel->runtime_start = runtime_start;
    kernel->cmdline_max = header->cmdline_size;
    kernel->initrd_addr_max = header->initrd_addr_max;
    kernel->footprint_start = LINUX_BOOT_KERNEL_GPA;
    uint64_t image_end = LINUX_BOOT_KERNEL_GPA + payload_size;
    uint64_t runtime_end = runtime_start + header->init_size;
    kernel->footprint_end = image_end > runtime_end ? image_end : runtime_end;
    return 0;
}

/* ---- parsing: ELF ----------------------------------------------------- */

/* Looks for XEN_ELFNOTE_PHYS32_ENTRY in one PT_NOTE segment. */
static int find_pvh_entry(struct linux_kernel *kernel, const Elf64_Phdr *segment, unsigned number,
                          uint64_t *pvh_entry, char *error, size_t error_size)
{
    const uint8_t *notes = kernel->image + segment->p_offset;
    uint64_t length = segment->p_filesz;
    /* 64-bit notes are 4-byte aligned in practice (Linux's .notes); a
     * segment that says 8 uses 8. */
    uint64_t alignment = segment->p_align == 8 ? 8 : 4;
    uint64_t offset = 0;
    while (length - offset >= 12) {
        uint32_t name_size, descriptor_size, type;
        memcpy(&name_size, notes + offset, 4);
        memcpy(&descriptor_size, notes + offset + 4, 4);
        memcpy(&type, notes + offset + 8, 4);
        uint64_t name_offset = offset + 12;
        uint64_t descriptor_offset = name_offset + align_up(name_size, alignment);
        uint64_t next = descriptor_offset + align_up(descriptor_size, alignment);
        if (descriptor_offset > length || descriptor_size > length - descriptor_offset)
            BOOT_ERROR(-EINVAL, "--kernel %s: note segment %u is malformed (a note at +%" PRIu64
                       " runs past its %" PRIu64 " bytes)", kernel->path, number, offset, length);
        if (name_size == 4 && memcmp(notes + name_offset, "Xen", 4) == 0 && type == XEN_ELFNOTE_PHYS32_ENTRY) {
            uint64_t value;
            if (descriptor_size == 4) {
                uint32_t value32;
                memcpy(&value32, notes + descriptor_offset, 4);
                value = value32;
            } else if (descriptor_size == 8) {
                memcpy(&value, notes + descriptor_offset, 8);
            } else {
                BOOT_ERROR(-EINVAL, "--kernel %s: the XEN_ELFNOTE_PHYS32_ENTRY note has %u bytes, expected 4 or 8",
                           kernel->path, descriptor_size);
            }
            if (value > UINT32_MAX)
                BOOT_ERROR(-EINVAL, "--kernel %s: the PVH entry 0x%" PRIx64 " is above 4 GiB (it is a 32-bit entry)",
                           kernel->path, value);
            *pvh_entry = value;
            return 1;
        }
        if (next <= offset)
            break;
        offset = next;
    }
    return 0;
}

static bool inside_segment(const struct linux_kernel *kernel, uint64_t address)
{
    for (unsigned i = 0; i < kernel->segment_count; i++) {
        const struct linux_kernel_segment *segment = &kernel->segments[i];
        if (address >= segment->gpa && address - segment->gpa < segment->memory_size)
            return true;
    }
    return false;
}

static int parse_elf(struct linux_kernel *kernel, char *error, size_t error_size)
{
    const char *path = kernel->path;
    size_t size = kernel->image_size;
    Elf64_Ehdr header;
    if (size < sizeof(header))
        BOOT_ERROR(-EINVAL, "--kernel %s: truncated: %zu bytes, an ELF header alone is %zu", path, size,
                   sizeof(header));
    memcpy(&header, kernel->image, sizeof(header));
    if (header.e_ident[EI_CLASS] != ELFCLASS64)
        BOOT_ERROR(-EINVAL, "--kernel %s: a 32-bit ELF (class %u); ringvm boots x86-64 kernels", path,
                   header.e_ident[EI_CLASS]);
    if (header.e_ident[EI_DATA] != ELFDATA2LSB || header.e_machine != EM_X86_64)
        BOOT_ERROR(-EINVAL, "--kernel %s: an ELF for machine %u, not x86-64 (%u)", path, header.e_machine,
                   EM_X86_64);
    if (header.e_type != ET_EXEC)
        BOOT_ERROR(-EINVAL, "--kernel %s: ELF type %u is not an executable (ET_EXEC) like a vmlinux", path,
                   header.e_type);
    if (header.e_phnum == 0 || header.e_phentsize != sizeof(Elf64_Phdr))
        BOOT_ERROR(-EINVAL, "--kernel %s: %u program headers of %u bytes (expected 1 or more of %zu)", path,
                   header.e_phnum, header.e_phentsize, sizeof(Elf64_Phdr));
    if (header.e_phoff > size || (size - header.e_phoff) / sizeof(Elf64_Phdr) < header.e_phnum)
        BOOT_ERROR(-EINVAL, "--kernel %s: truncated: %zu bytes, the program headers end at %" PRIu64, path, size,
                   (uint64_t)header.e_phoff + (uint64_t)header.e_phnum * sizeof(Elf64_Phdr));

    uint64_t lowest = UINT64_MAX, highest = 0, pvh_entry = 0;
    bool has_pvh = false;
    kernel->segment_count = 0;
    for (unsigned i = 0; i < header.e_phnum; i++) {
        Elf64_Phdr segment;
        memcpy(&segment, kernel->image + header.e_phoff + i * sizeof(Elf64_Phdr), sizeof(segment));
        if (segment.p_type != PT_LOAD && segment.p_type != PT_NOTE)
            continue;
        if (segment.p_offset > size || segment.p_filesz > size - segment.p_offset)
            BOOT_ERROR(-EINVAL, "--kernel %s: truncated: %zu bytes, segment %u ends at %" PRIu64, path, size, i,
                       (uint64_t)segment.p_offset + (uint64_t)segment.p_filesz);
        if (segment.p_type == PT_NOTE) {
            if (!has_pvh) {
                int found = find_pvh_entry(kernel, &segment, i, &pvh_entry, error, error_size);
                if (found < 0)
                    return found;
                has_pvh = found == 1;
            }
            continue;
        }
        if (segment.p_memsz == 0)
            continue;
        if (segment.p_filesz > segment.p_memsz)
            BOOT_ERROR(-EINVAL, "--kernel %s: segment %u has %" PRIu64 " bytes in the file but %" PRIu64
                       " in memory", path, i, (uint64_t)segment.p_filesz, (uint64_t)segment.p_memsz);
        if (segment.p_paddr < LINUX_BOOT_KERNEL_GPA)
            BOOT_ERROR(-EINVAL, "--kernel %s: segment %u loads at 0x%" PRIx64 ", below 1 MiB where ringvm keeps "
                       "its boot data", path, i, (uint64_t)segment.p_paddr);
        if (segment.p_paddr >= RINGVM_LOW_RAM_END || segment.p_memsz > RINGVM_LOW_RAM_END - segment.p_paddr)
            BOOT_ERROR(-EINVAL, "--kernel %s: segment %u [0x%" PRIx64 ", +0x%" PRIx64 ") reaches beyond 3 GiB, "
                       "where ringvm's low RAM ends", path, i, (uint64_t)segment.p_paddr,
                       (uint64_t)segment.p_memsz);
        if (kernel->segment_count == LINUX_BOOT_MAX_SEGMENTS)
            BOOT_ERROR(-EINVAL, "--kernel %s: more than %d loadable segments", path, LINUX_BOOT_MAX_SEGMENTS);
        kernel->segments[kernel->segment_count++] = (struct linux_kernel_segment){
            .file_offset = segment.p_offset, .file_size = segment.p_filesz,
            .gpa = segment.p_paddr, .memory_size = segment.p_memsz,
        };
        if (segment.p_paddr < lowest)
            lowest = segment.p_paddr;
        if (segment.p_paddr + segment.p_memsz > highest)
            highest = segment.p_paddr + segment.p_memsz;
    }
    if (kernel->segment_count == 0)
        BOOT_ERROR(-EINVAL, "--kernel %s: no loadable (PT_LOAD) segment", path);
    for (unsigned i = 0; i < kernel->segment_count; i++)
        for (unsigned j = i + 1; j < kernel->segment_count; j++) {
            const struct linux_kernel_segment *a = &kernel->segments[i], *b = &kernel->segments[j];
            if (a->gpa < b->gpa + b->memory_size && b->gpa < a->gpa + a->memory_size)
                BOOT_ERROR(-EINVAL, "--kernel %s: loadable segments at 0x%" PRIx64 " and 0x%" PRIx64 " overlap",
                           path, a->gpa, b->gpa);
        }

    kernel->format = LINUX_KERNEL_ELF;
    if (has_pvh) {
        kernel->mode = LINUX_BOOT_MODE_PVH;
        kernel->entry = pvh_entry;
    } else {
        /* vmlinux.lds.S: ENTRY(phys_startup_64), a physical address. */
        kernel->mode = LINUX_BOOT_MODE_64BIT;
        kernel->entry = header.e_entry;
    }
    if (!inside_segment(kernel, kernel->entry))
        BOOT_ERROR(-EINVAL, "--kernel %s: the %s entry point 0x%" PRIx64 " is not inside a loadable segment", path,
                   has_pvh ? "PVH" : "ELF", kernel->entry);
    kernel->footprint_start = lowest;
    kernel->footprint_end = highest;
    kernel->cmdline_max = LINUX_BOOT_ELF_CMDLINE_MAX;
    /* No setup header: PVH passes 32-bit ramdisk fields, and the 64-bit
     * path copies ramdisk_image (32 bits) too; ringvm puts the initrd in
     * low RAM anyway. */
    kernel->initrd_addr_max = UINT32_MAX;
    return 0;
}

int linux_kernel_parse(struct linux_kernel *kernel, const char *path, const void *image, size_t size,
                       char *error, size_t error_size)
{
    memset(kernel, 0, sizeof(*kernel));
    kernel->path = path;
    kernel->image = image;
    kernel->image_size = size;
    if (size >= SELFMAG && memcmp(image, ELFMAG, SELFMAG) == 0)
        return parse_elf(kernel, error, error_size);
    uint32_t magic = 0;
    if (size >= BZIMAGE_MAGIC_OFFSET + 4)
        memcpy(&magic, (const uint8_t *)image + BZIMAGE_MAGIC_OFFSET, 4);
    if (magic != BZIMAGE_MAGIC)
        BOOT_ERROR(-EINVAL, "--kernel %s: not a bzImage (no \"HdrS\" at 0x202) nor an x86-64 ELF", path);
    return parse_bzimage(kernel, error, error_size);
}

/* ---- fitting everything before memory exists ------------------------- */

int linux_boot_check(const struct linux_kernel *kernel, uint64_t memory_size, const char *initrd_path,
                     uint64_t initrd_size, size_t cmdline_length, struct linux_boot_layout *layout,
                     char *error, size_t error_size)
{
    char a[32], b[32], c[32], d[32];
    uint64_t low_ram_end = memory_size < RINGVM_LOW_RAM_END ? memory_size : RINGVM_LOW_RAM_END;

    if (kernel->footprint_end > low_ram_end) {
        if (kernel->format == LINUX_KERNEL_BZIMAGE)
            BOOT_ERROR(-ENOSPC, "--kernel %s: needs guest RAM up to %s (loaded at 1 MiB, decompressed into "
                       "[%s, %s)), the guest has %s", kernel->path,
                       describe_address(kernel->footprint_end, a, sizeof(a)),
                       describe_address(kernel->runtime_start, b, sizeof(b)),
                       describe_address(kernel->runtime_start + kernel->init_size, c, sizeof(c)),
                       describe_size(memory_size, d, sizeof(d)));
        BOOT_ERROR(-ENOSPC, "--kernel %s: needs guest RAM up to %s (its segments span [%s, %s)), the guest has %s",
                   kernel->path, describe_address(kernel->footprint_end, a, sizeof(a)),
                   describe_address(kernel->footprint_start, b, sizeof(b)),
                   describe_address(kernel->footprint_end, c, sizeof(c)), describe_size(memory_size, d, sizeof(d)));
    }
    if (cmdline_length > kernel->cmdline_max)
        BOOT_ERROR(-E2BIG, "--cmdline: %zu bytes, the kernel accepts at most %u", cmdline_length,
                   kernel->cmdline_max);
    if (cmdline_length >= LINUX_BOOT_CMDLINE_SIZE)
        BOOT_ERROR(-E2BIG, "--cmdline: %zu bytes, ringvm passes at most %llu", cmdline_length,
                   LINUX_BOOT_CMDLINE_SIZE - 1);

    uint64_t initrd_gpa = 0;
    if (initrd_size > 0) {
        uint64_t lowest = align_up(kernel->footprint_end, RINGVM_PAGE_SIZE);
        uint64_t top = low_ram_end;
        bool limited = false;
        if (kernel->initrd_addr_max < top - 1) {
            top = kernel->initrd_addr_max + 1;
            limited = true;
        }
        bool fits = initrd_size <= top && ((top - initrd_size) & ~(RINGVM_PAGE_SIZE - 1)) >= lowest;
        if (!fits) {
            char limit[64];
            if (limited)
                snprintf(limit, sizeof(limit), "the kernel's initrd_addr_max 0x%" PRIx64, kernel->initrd_addr_max);
            else if (memory_size <= RINGVM_LOW_RAM_END)
                snprintf(limit, sizeof(limit), "the end of guest RAM");
            else
                snprintf(limit, sizeof(limit), "where RAM stops below the 3-4 GiB hole");
            BOOT_ERROR(-ENOSPC, "--initrd %s: %s does not fit in %s of guest RAM: it must lie above the kernel "
                       "(up to %s) and below %s (%s)", initrd_path != NULL ? initrd_path : "(no path)", describe_size(initrd_size, a, sizeof(a)),
                       describe_size(memory_size, b, sizeof(b)), describe_address(lowest, c, sizeof(c)),
                       describe_address(top, d, sizeof(d)), limit);
        }
        initrd_gpa = (top - initrd_size) & ~(RINGVM_PAGE_SIZE - 1);
    }
    if (layout != NULL) {
        layout->low_ram_end = low_ram_end;
        layout->initrd_gpa = initrd_gpa;
        layout->initrd_size = initrd_size;
        layout->cmdline_length = cmdline_length;
    }
    return 0;
}

char *linux_boot_cmdline(const char *user_cmdline, bool pvm_host)
{
    const char *user = user_cmdline != NULL ? user_cmdline : "";
    const char *host = pvm_host ? LINUX_BOOT_PVM_CMDLINE : "";
    size_t length = strlen(LINUX_BOOT_DEFAULT_CMDLINE) + 1 + strlen(host) + 1 + strlen(user) + 1;
    char *cmdline = malloc(length);
    if (cmdline == NULL)
        return NULL;
    snprintf(cmdline, length, "%s%s%s%s%s", LINUX_BOOT_DEFAULT_CMDLINE, host[0] ? " " : "", host,
             user[0] ? " " : "", user);
    return cmdline;
}

/* ---- e820 ------------------------------------------------------------- */

static int e820_add(struct boot_e820_entry *entries, unsigned capacity, unsigned *count, uint64_t start,
                    uint64_t end, uint32_t type)
{
    if (end <= start)
        return 0;
    if (*count == capacity)
        return -ENOSPC;
    entries[*count] = (struct boot_e820_entry){ .addr = start, .size = end - start, .type = type };
    (*count)++;
    return 0;
}

int linux_boot_e820(const struct guest_memory *memory, struct boot_e820_entry *entries, unsigned capacity)
{
    unsigned count = 0;
    int status = 0;
    for (unsigned i = 0; i < memory->slot_count && status == 0; i++) {
        const struct guest_memory_slot *slot = &memory->slots[i];
        uint64_t start = slot->gpa, end = slot->gpa + slot->size;
        if (start != 0) {
            status = e820_add(entries, capacity, &count, start, end, E820_RAM);
            continue;
        }
        /* The slot at 0: ringvm's pages and the legacy area carved out. */
        const uint64_t stats_end = RINGVM_STATS_GPA + RINGVM_STATS_SIZE;
        uint64_t cut = end < RINGVM_BOOTINFO_GPA ? end : RINGVM_BOOTINFO_GPA;
        status |= e820_add(entries, capacity, &count, 0, cut, E820_RAM);
        status |= e820_add(entries, capacity, &count, RINGVM_BOOTINFO_GPA, stats_end, E820_RESERVED);
        status |= e820_add(entries, capacity, &count, stats_end,
                           end < LINUX_BOOT_RESERVED_HIGH_START ? end : LINUX_BOOT_RESERVED_HIGH_START, E820_RAM);
        status |= e820_add(entries, capacity, &count, LINUX_BOOT_RESERVED_HIGH_START, LINUX_BOOT_KERNEL_GPA,
                           E820_RESERVED);
        status |= e820_add(entries, capacity, &count, LINUX_BOOT_KERNEL_GPA, end, E820_RAM);
    }
    return status != 0 ? -ENOSPC : (int)count;
}

/* ---- loading ---------------------------------------------------------- */

/* A GDT descriptor from the kernel's GDT_ENTRY(flags, base, limit) packing
 * (arch/x86/include/asm/segment.h): flags = G D/B L AVL in bits 15:12 and
 * P DPL S type in bits 7:0. */
static uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
    return (((uint64_t)base & 0xff000000ULL) << 32) | (((uint64_t)flags & 0xf0ffULL) << 40) |
           (((uint64_t)limit & 0xf0000ULL) << 32) | (((uint64_t)base & 0x00ffffffULL) << 16) |
           ((uint64_t)limit & 0xffffULL);
}

#define PTE_PRESENT   0x001ULL
#define PTE_WRITABLE  0x002ULL
#define PTE_ACCESSED  0x020ULL
#define PTE_DIRTY     0x040ULL
#define PTE_LARGE     0x080ULL
/* A and D preset so the CPU (or KVM's emulator) never writes them back. */
#define PTE_TABLE     (PTE_PRESENT | PTE_WRITABLE | PTE_ACCESSED)
#define PTE_LEAF_2M   (PTE_TABLE | PTE_DIRTY | PTE_LARGE)

#define CR0_PE   (1ULL << 0)
#define CR0_ET   (1ULL << 4)
#define CR0_NE   (1ULL << 5)
#define CR0_PG   (1ULL << 31)
#define CR4_PAE  (1ULL << 5)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)

static void write_page_tables(uint8_t *tables)
{
    uint64_t *pml4 = (uint64_t *)tables;
    uint64_t *pdpt = (uint64_t *)(tables + RINGVM_PAGE_SIZE);
    uint64_t *directories = (uint64_t *)(tables + 2 * RINGVM_PAGE_SIZE);
    uint64_t gibs = LINUX_BOOT_IDENTITY_MAP_SIZE / GIB;
    memset(tables, 0, LINUX_BOOT_PAGE_TABLES_SIZE);
    pml4[0] = (LINUX_BOOT_PAGE_TABLES_GPA + RINGVM_PAGE_SIZE) | PTE_TABLE;
    for (uint64_t gib = 0; gib < gibs; gib++)
        pdpt[gib] = (LINUX_BOOT_PAGE_TABLES_GPA + (2 + gib) * RINGVM_PAGE_SIZE) | PTE_TABLE;
    for (uint64_t index = 0; index < gibs * 512; index++)
        directories[index] = (index << 21) | PTE_LEAF_2M;
}

/* Host pointer for [gpa, gpa + length) or an error naming what. */
static void *host_range(struct guest_memory *memory, uint64_t gpa, uint64_t length, const char *what,
                        char *error, size_t error_size)
{
    void *host = guest_memory_gpa_to_host(memory, gpa, length);
    if (host == NULL)
        snprintf(error, error_size, "%s [0x%" PRIx64 ", 0x%" PRIx64 ") is not guest RAM (%" PRIu64 " bytes)", what,
                 gpa, gpa + length, memory->size);
    return host;
}

int linux_boot_load(struct guest_memory *memory, const struct linux_kernel *kernel,
                    const void *initrd, uint64_t initrd_size, const char *initrd_path,
                    const char *cmdline, unsigned vcpu_count, struct linux_boot_entry *entry,
                    char *error, size_t error_size)
{
    struct linux_boot_layout layout;
    size_t cmdline_length = strlen(cmdline);
    int status = linux_boot_check(kernel, memory->size, initrd_path, initrd_size, cmdline_length, &layout,
                                  error, error_size);
    if (status != 0)
        return status;
    memset(entry, 0, sizeof(*entry));

    /* Everything is checked; the ranges below lie in RAM unless the slot
     * layout is not vmm/memory.h's, which host_range reports. */
    for (unsigned i = 0; i < kernel->segment_count; i++) {
        const struct linux_kernel_segment *segment = &kernel->segments[i];
        uint8_t *target = host_range(memory, segment->gpa, segment->memory_size, "kernel segment", error,
                                     error_size);
        if (target == NULL)
            return -ENOSPC;
        memcpy(target, kernel->image + segment->file_offset, segment->file_size);
        memset(target + segment->file_size, 0, segment->memory_size - segment->file_size);
    }
    if (initrd_size > 0) {
        uint8_t *target = host_range(memory, layout.initrd_gpa, initrd_size, "initrd", error, error_size);
        if (target == NULL)
            return -ENOSPC;
        memcpy(target, initrd, initrd_size);
    }
    char *cmdline_target = host_range(memory, LINUX_BOOT_CMDLINE_GPA, LINUX_BOOT_CMDLINE_SIZE, "command line",
                                      error, error_size);
    if (cmdline_target == NULL)
        return -ENOSPC;
    memset(cmdline_target, 0, LINUX_BOOT_CMDLINE_SIZE);
    memcpy(cmdline_target, cmdline, cmdline_length + 1);

    uint8_t *mptable = host_range(memory, LINUX_BOOT_MPTABLE_GPA, LINUX_BOOT_MPTABLE_SIZE, "MP table", error,
                                  error_size);
    if (mptable == NULL)
        return -ENOSPC;
    size_t mptable_written;
    status = mptable_write(mptable, LINUX_BOOT_MPTABLE_SIZE, LINUX_BOOT_MPTABLE_GPA, vcpu_count, &mptable_written,
                           error, error_size);
    if (status != 0)
        return status;

    struct boot_e820_entry e820[E820_MAX_ENTRIES_ZEROPAGE];
    int e820_count = linux_boot_e820(memory, e820, E820_MAX_ENTRIES_ZEROPAGE);
    if (e820_count < 0)
        BOOT_ERROR(-ENOSPC, "e820: more than %d entries", E820_MAX_ENTRIES_ZEROPAGE);

    uint64_t *gdt = host_range(memory, LINUX_BOOT_GDT_GPA, RINGVM_PAGE_SIZE, "GDT", error, error_size);
    if (gdt == NULL)
        return -ENOSPC;
    memset(gdt, 0, RINGVM_PAGE_SIZE);
    entry->mode = kernel->mode;
    if (kernel->mode == LINUX_BOOT_MODE_64BIT) {
        entry->gdt[2] = gdt_entry(0xa09b, 0, 0xfffff);  /* 64-bit code, G, P, execute/read */
        entry->gdt[3] = gdt_entry(0xc093, 0, 0xfffff);  /* 4 GiB flat data, read/write */
        entry->gdt[4] = gdt_entry(0x808b, 0, 0xfffff);  /* busy TSS (low half; gdt[5] = 0 high half) */
    } else {
        entry->gdt[2] = gdt_entry(0xc09b, 0, 0xfffff);  /* 32-bit flat code (PVH) */
        entry->gdt[3] = gdt_entry(0xc093, 0, 0xfffff);
        entry->gdt[4] = gdt_entry(0x008b, 0, 0x67);     /* 32-bit busy TSS */
    }
    memcpy(gdt, entry->gdt, sizeof(entry->gdt));
    entry->gdt_base = LINUX_BOOT_GDT_GPA;
    entry->gdt_limit = sizeof(entry->gdt) - 1;
    entry->idt_base = 0;
    entry->idt_limit = 0;   /* interrupts are off; a fault this early is a clean triple fault */
    entry->rip = kernel->entry;
    entry->rsp = LINUX_BOOT_STACK_TOP;
    entry->rbp = LINUX_BOOT_STACK_TOP;
    entry->cmdline_gpa = LINUX_BOOT_CMDLINE_GPA;
    entry->initrd_gpa = layout.initrd_gpa;
    entry->initrd_size = initrd_size;
    void *stack = host_range(memory, LINUX_BOOT_STACK_GPA, RINGVM_PAGE_SIZE, "boot stack", error, error_size);
    if (stack == NULL)
        return -ENOSPC;
    memset(stack, 0, RINGVM_PAGE_SIZE);

    if (kernel->mode == LINUX_BOOT_MODE_64BIT) {
        /* The zero page: all zero, the image's setup header, and the fields
         * boot.rst says the loader writes. Read-only header fields
         * (cmdline_size, kernel_alignment, init_size...) stay the kernel's;
         * a vmlinux has no header, and the kernel proper reads none of its
         * read-only fields, so they stay 0 (version too: x86_64_start_kernel
         * copies the page either way). */
        struct boot_params params;
        memset(&params, 0, sizeof(params));
        if (kernel->format == LINUX_KERNEL_BZIMAGE)
            memcpy((uint8_t *)&params + BZIMAGE_SETUP_HEADER_OFFSET, kernel->image + BZIMAGE_SETUP_HEADER_OFFSET,
                   kernel->header_end - BZIMAGE_SETUP_HEADER_OFFSET);
        params.hdr.type_of_loader = BZIMAGE_LOADER_UNDEFINED;
        params.hdr.boot_flag = BZIMAGE_BOOT_FLAG;
        params.hdr.header = BZIMAGE_MAGIC;
        params.hdr.cmd_line_ptr = (uint32_t)LINUX_BOOT_CMDLINE_GPA;
        params.ext_cmd_line_ptr = 0;
        params.hdr.ramdisk_image = (uint32_t)layout.initrd_gpa;
        params.hdr.ramdisk_size = (uint32_t)initrd_size;
        params.ext_ramdisk_image = (uint32_t)(layout.initrd_gpa >> 32);
        params.ext_ramdisk_size = (uint32_t)(initrd_size >> 32);
        params.e820_entries = (uint8_t)e820_count;
        memcpy(params.e820_table, e820, (size_t)e820_count * sizeof(e820[0]));
        params.sentinel = 0;    /* else sanitize_boot_params wipes most of the page */
        void *zero_page = host_range(memory, LINUX_BOOT_ZERO_PAGE_GPA, sizeof(params), "zero page", error,
                                     error_size);
        uint8_t *tables = host_range(memory, LINUX_BOOT_PAGE_TABLES_GPA, LINUX_BOOT_PAGE_TABLES_SIZE,
                                     "page tables", error, error_size);
        if (zero_page == NULL || tables == NULL)
            return -ENOSPC;
        memcpy(zero_page, &params, sizeof(params));
        write_page_tables(tables);

        entry->rsi = LINUX_BOOT_ZERO_PAGE_GPA;
        entry->cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
        entry->cr3 = LINUX_BOOT_PAGE_TABLES_GPA;
        entry->cr4 = CR4_PAE;
        entry->efer = EFER_LME | EFER_LMA;
    } else {
        uint8_t *page = host_range(memory, LINUX_BOOT_START_INFO_GPA, RINGVM_PAGE_SIZE, "PVH start_info", error,
                                   error_size);
        if (page == NULL)
            return -ENOSPC;
        memset(page, 0, RINGVM_PAGE_SIZE);
        struct hvm_start_info start_info = {
            .magic = HVM_START_MAGIC_VALUE,
            .version = 1,
            .cmdline_paddr = LINUX_BOOT_CMDLINE_GPA,
            .memmap_paddr = LINUX_BOOT_MEMMAP_GPA,
            .memmap_entries = (uint32_t)e820_count,
        };
        if (initrd_size > 0) {
            /* Linux takes the first module as the initrd. */
            struct hvm_modlist_entry module = { .paddr = layout.initrd_gpa, .size = initrd_size };
            memcpy(page + (LINUX_BOOT_MODLIST_GPA - LINUX_BOOT_START_INFO_GPA), &module, sizeof(module));
            start_info.nr_modules = 1;
            start_info.modlist_paddr = LINUX_BOOT_MODLIST_GPA;
        }
        for (int i = 0; i < e820_count; i++) {
            struct hvm_memmap_table_entry map = { .addr = e820[i].addr, .size = e820[i].size,
                                                       .type = e820[i].type };
            memcpy(page + (LINUX_BOOT_MEMMAP_GPA - LINUX_BOOT_START_INFO_GPA) + (size_t)i * sizeof(map), &map,
                   sizeof(map));
        }
        memcpy(page, &start_info, sizeof(start_info));

        entry->rbx = LINUX_BOOT_START_INFO_GPA;
        entry->cr0 = CR0_PE | CR0_ET;
        entry->cr3 = 0;
        entry->cr4 = 0;
        entry->efer = 0;
    }
    return 0;
}

/* ---- vCPU state --------------------------------------------------------- */

/* struct kvm_segment from a GDT descriptor (selector = index * 8). KVM
 * takes the limit in bytes, so a page-granular limit is scaled. */
static struct kvm_segment segment_from_gdt(uint64_t descriptor, unsigned index)
{
    struct kvm_segment segment;
    memset(&segment, 0, sizeof(segment));
    segment.base = ((descriptor >> 16) & 0xffffff) | (((descriptor >> 56) & 0xff) << 24);
    uint32_t limit = (uint32_t)((descriptor & 0xffff) | ((descriptor >> 32) & 0xf0000));
    segment.g = (descriptor >> 55) & 1;
    segment.limit = segment.g ? (limit << 12) | 0xfff : limit;
    segment.selector = (uint16_t)(index * 8);
    segment.type = (descriptor >> 40) & 0xf;
    segment.s = (descriptor >> 44) & 1;
    segment.dpl = (descriptor >> 45) & 3;
    segment.present = (descriptor >> 47) & 1;
    segment.avl = (descriptor >> 52) & 1;
    segment.l = (descriptor >> 53) & 1;
    segment.db = (descriptor >> 54) & 1;
    segment.unusable = segment.present ? 0 : 1;
    return segment;
}

void linux_boot_fill_sregs(const struct linux_boot_entry *entry, struct kvm_sregs *sregs)
{
    struct kvm_segment code = segment_from_gdt(entry->gdt[LINUX_BOOT_CODE_SELECTOR / 8], LINUX_BOOT_CODE_SELECTOR / 8);
    struct kvm_segment data = segment_from_gdt(entry->gdt[LINUX_BOOT_DATA_SELECTOR / 8], LINUX_BOOT_DATA_SELECTOR / 8);
    sregs->cs = code;
    sregs->ds = data;
    sregs->es = data;
    sregs->fs = data;
    sregs->gs = data;
    sregs->ss = data;
    sregs->tr = segment_from_gdt(entry->gdt[LINUX_BOOT_TSS_SELECTOR / 8], LINUX_BOOT_TSS_SELECTOR / 8);
    sregs->gdt.base = entry->gdt_base;
    sregs->gdt.limit = entry->gdt_limit;
    sregs->idt.base = entry->idt_base;
    sregs->idt.limit = entry->idt_limit;
    sregs->cr0 = entry->cr0;
    sregs->cr3 = entry->cr3;
    sregs->cr4 = entry->cr4;
    sregs->efer = entry->efer;
}

void linux_boot_fill_regs(const struct linux_boot_entry *entry, struct kvm_regs *regs)
{
    memset(regs, 0, sizeof(*regs));
    regs->rflags = 0x2;
    regs->rip = entry->rip;
    regs->rsp = entry->rsp;
    regs->rbp = entry->rbp;
    regs->rsi = entry->rsi;
    regs->rbx = entry->rbx;
}

void linux_boot_fill_fpu(struct kvm_fpu *fpu)
{
    memset(fpu, 0, sizeof(*fpu));
    fpu->fcw = 0x37f;
    fpu->mxcsr = 0x1f80;
}

/* MSR indices (arch/x86/include/asm/msr-index.h). */
#define MSR_IA32_TSC            0x00000010
#define MSR_IA32_SYSENTER_CS    0x00000174
#define MSR_IA32_SYSENTER_ESP   0x00000175
#define MSR_IA32_SYSENTER_EIP   0x00000176
#define MSR_IA32_MISC_ENABLE    0x000001a0
#define MSR_MTRR_DEF_TYPE       0x000002ff
#define MSR_STAR                0xc0000081
#define MSR_LSTAR               0xc0000082
#define MSR_CSTAR               0xc0000083
#define MSR_SYSCALL_MASK        0xc0000084
#define MSR_KERNEL_GS_BASE      0xc0000102
#define MISC_ENABLE_FAST_STRING (1ULL << 0)
#define MTRR_DEF_TYPE_ENABLE    (1ULL << 11)
#define MTRR_TYPE_WRITE_BACK    6ULL

static const struct {
    uint32_t index;
    uint64_t value;
    const char *name;
} boot_msrs[LINUX_BOOT_MSR_COUNT] = {
    { MSR_IA32_SYSENTER_CS, 0, "IA32_SYSENTER_CS" },
    { MSR_IA32_SYSENTER_ESP, 0, "IA32_SYSENTER_ESP" },
    { MSR_IA32_SYSENTER_EIP, 0, "IA32_SYSENTER_EIP" },
    { MSR_STAR, 0, "STAR" },
    { MSR_CSTAR, 0, "CSTAR" },
    { MSR_KERNEL_GS_BASE, 0, "KERNEL_GS_BASE" },
    { MSR_SYSCALL_MASK, 0, "SYSCALL_MASK" },
    { MSR_LSTAR, 0, "LSTAR" },
    { MSR_IA32_TSC, 0, "IA32_TSC" },
    { MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING, "IA32_MISC_ENABLE" },
    /* MTRRs on, default type write-back: without it the guest sees all
     * memory uncached. */
    { MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLE | MTRR_TYPE_WRITE_BACK, "MTRRdefType" },
};

unsigned linux_boot_msr_entries(struct kvm_msr_entry *entries, unsigned capacity)
{
    if (capacity < LINUX_BOOT_MSR_COUNT)
        return 0;
    for (unsigned i = 0; i < LINUX_BOOT_MSR_COUNT; i++)
        entries[i] = (struct kvm_msr_entry){ .index = boot_msrs[i].index, .data = boot_msrs[i].value };
    return LINUX_BOOT_MSR_COUNT;
}

#define APIC_LVT_LINT0          0x350
#define APIC_LVT_LINT1          0x360
#define APIC_DELIVERY_MODE_MASK 0x700U
#define APIC_MODE_NMI           0x4U
#define APIC_MODE_EXTINT        0x7U

static void set_delivery_mode(struct kvm_lapic_state *lapic, unsigned offset, uint32_t mode)
{
    uint32_t value;
    memcpy(&value, &lapic->regs[offset], sizeof(value));   /* little-endian, as the host */
    value = (value & ~APIC_DELIVERY_MODE_MASK) | (mode << 8);
    memcpy(&lapic->regs[offset], &value, sizeof(value));
}

void linux_boot_set_lint(struct kvm_lapic_state *lapic)
{
    set_delivery_mode(lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_delivery_mode(lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
}

/* ---- KVM -------------------------------------------------------------- */

#define VCPU_IOCTL(fd, request, argument, what)                                              \
    do {                                                                                     \
        if (ioctl((fd), (request), (argument)) != 0) {                                      \
            int saved_ = errno;                                                              \
            BOOT_ERROR(-saved_, "vcpu %u: %s: %s", index, (what), strerror(saved_));        \
        }                                                                                    \
    } while (0)

static int set_boot_msrs(int vcpu_fd, unsigned index, char *error, size_t error_size)
{
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + LINUX_BOOT_MSR_COUNT * sizeof(struct kvm_msr_entry));
    if (msrs == NULL)
        BOOT_ERROR(-ENOMEM, "vcpu %u: KVM_SET_MSRS: out of memory", index);
    msrs->nmsrs = linux_boot_msr_entries(msrs->entries, LINUX_BOOT_MSR_COUNT);
    int written = ioctl(vcpu_fd, KVM_SET_MSRS, msrs);
    int saved = errno;
    free(msrs);
    if (written < 0)
        BOOT_ERROR(-saved, "vcpu %u: KVM_SET_MSRS (%d boot MSRs): %s", index, LINUX_BOOT_MSR_COUNT,
                   strerror(saved));
    /* KVM stops at the first MSR it refuses and returns how many it set. */
    if (written < LINUX_BOOT_MSR_COUNT)
        BOOT_ERROR(-EINVAL, "vcpu %u: KVM_SET_MSRS set %d of %d boot MSRs: KVM refused %s (0x%x) = 0x%" PRIx64,
                   index, written, LINUX_BOOT_MSR_COUNT, boot_msrs[written].name, boot_msrs[written].index,
                   boot_msrs[written].value);
    return 0;
}

int linux_boot_setup_vcpu(int vcpu_fd, unsigned index, const struct linux_boot_entry *entry,
                          char *error, size_t error_size)
{
    /* Firecracker's order: MSRs, REGS, FPU, SREGS, LINT. */
    int status = set_boot_msrs(vcpu_fd, index, error, error_size);
    if (status != 0)
        return status;
    if (index == 0) {
        struct kvm_regs regs;
        linux_boot_fill_regs(entry, &regs);
        VCPU_IOCTL(vcpu_fd, KVM_SET_REGS, &regs, "KVM_SET_REGS");
        struct kvm_fpu fpu;
        linux_boot_fill_fpu(&fpu);
        VCPU_IOCTL(vcpu_fd, KVM_SET_FPU, &fpu, "KVM_SET_FPU");
        struct kvm_sregs sregs;
        VCPU_IOCTL(vcpu_fd, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
        linux_boot_fill_sregs(entry, &sregs);
        if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) != 0) {
            int saved = errno;
            BOOT_ERROR(-saved, "vcpu %u: KVM_SET_SREGS (%s entry state): %s%s", index,
                       entry->mode == LINUX_BOOT_MODE_64BIT ? "64-bit" : "PVH 32-bit", strerror(saved),
                       saved == EINVAL && entry->mode == LINUX_BOOT_MODE_64BIT ?
                       " (KVM_SET_CPUID2 with long mode must come first)" : "");
        }
    }
    struct kvm_lapic_state lapic;
    if (ioctl(vcpu_fd, KVM_GET_LAPIC, &lapic) != 0) {
        int saved = errno;
        BOOT_ERROR(-saved, "vcpu %u: KVM_GET_LAPIC: %s%s", index, strerror(saved),
                   saved == EINVAL ? " (the in-kernel irqchip, KVM_CREATE_IRQCHIP, must come first)" : "");
    }
    linux_boot_set_lint(&lapic);
    VCPU_IOCTL(vcpu_fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");
    return 0;
}
