/*
 * The Linux boot protocol (vmm/linux_boot.c) without KVM: parsing crafted
 * bzImages and vmlinux ELFs, the fit checks and their messages, loading into
 * real guest memory (memfd, no KVM) and reading back the zero page, e820,
 * PVH start_info, GDT, page tables, and the pure vCPU state helpers. Real
 * kernels are parsed when present (build/linux, ~/.cache/ringvm, /boot).
 */
#include <criterion/criterion.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <asm/e820.h>

#include "guest/abi.h"
#include "tests/harness.h"
#include "vmm/boot.h"
#include "vmm/cpuid.h"
#include "vmm/linux_boot.h"

#define KIB (1ULL << 10)
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

static char error[512];

/* ---- a crafted bzImage ------------------------------------------------ */

struct fake_bzimage {
    uint16_t protocol;
    uint8_t setup_sects;        /* as stored: 0 means 4 */
    uint32_t payload_size;      /* multiple of 16 */
    uint8_t loadflags;
    uint16_t xloadflags;
    uint8_t relocatable;
    uint32_t kernel_alignment;
    uint64_t pref_address;
    uint32_t init_size;
    uint32_t cmdline_size;
    uint32_t initrd_addr_max;
};

static const struct fake_bzimage default_bzimage = {
    .protocol = 0x020f,
    .setup_sects = 7,           /* setup part 0x1000 bytes */
    .payload_size = 0x3000,
    .loadflags = LOADED_HIGH | CAN_USE_HEAP,
    .xloadflags = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
    .relocatable = 1,
    .kernel_alignment = 0x200000,
    .pref_address = 0x1000000,
    .init_size = 0x2000000,     /* runs in [16 MiB, 48 MiB) */
    .cmdline_size = 2047,
    .initrd_addr_max = 0x7fffffff,
};

#define FAKE_HEADER_END 0x26c   /* Linux 6.1: 0x202 + 0x6a */

static size_t fake_setup_size(const struct fake_bzimage *fake)
{
    return ((size_t)(fake->setup_sects ? fake->setup_sects : 4) + 1) * 512;
}

/* A setup part with a real-looking header and a patterned payload. */
static uint8_t *build_bzimage(const struct fake_bzimage *fake, size_t *size)
{
    size_t setup = fake_setup_size(fake);
    *size = setup + fake->payload_size;
    uint8_t *image = calloc(1, *size);
    cr_assert_not_null(image);
    memset(image, 0x90, 0x1f1);         /* boot sector noise, never copied */
    image[0x1ef] = 0xff;                /* the sentinel as header.S leaves it */
    struct setup_header header;
    memset(&header, 0, sizeof(header));
    header.setup_sects = fake->setup_sects;
    header.root_flags = 1;
    header.syssize = fake->payload_size / 16;
    header.vid_mode = 0xffff;
    header.boot_flag = 0xaa55;
    header.jump = (uint16_t)(0xeb | ((FAKE_HEADER_END - 0x202) << 8));
    header.header = 0x53726448;
    header.version = fake->protocol;
    header.kernel_version = 0x3c0;
    header.loadflags = fake->loadflags;
    header.code32_start = 0x100000;
    header.initrd_addr_max = fake->initrd_addr_max;
    header.kernel_alignment = fake->kernel_alignment;
    header.relocatable_kernel = fake->relocatable;
    header.min_alignment = 21;
    header.xloadflags = fake->xloadflags;
    header.cmdline_size = fake->cmdline_size;
    header.payload_offset = 0x3a0;
    header.payload_length = 0x2000;
    header.pref_address = fake->pref_address;
    header.init_size = fake->init_size;
    header.handover_offset = 0x190;
    header.kernel_info_offset = 0x1200;
    memcpy(image + 0x1f1, &header, sizeof(header));
    /* Beyond the header's end: must not reach the zero page. */
    memset(image + FAKE_HEADER_END, 0xcc, 0x290 - FAKE_HEADER_END);
    for (size_t i = 0; i < fake->payload_size; i++)
        image[setup + i] = (uint8_t)(i * 7 + 3);
    return image;
}

static int parse_fake(const struct fake_bzimage *fake, struct linux_kernel *kernel, uint8_t **image)
{
    size_t size;
    *image = build_bzimage(fake, &size);
    memset(error, 0, sizeof(error));
    return linux_kernel_parse(kernel, "/fake/bzImage", *image, size, error, sizeof(error));
}

static void expect_parse_error(const uint8_t *image, size_t size, const char *expected)
{
    struct linux_kernel kernel;
    memset(error, 0, sizeof(error));
    cr_assert_eq(linux_kernel_parse(&kernel, "/fake/bzImage", image, size, error, sizeof(error)), -EINVAL,
                 "expected an error: %s", expected);
    cr_assert_str_eq(error, expected);
}

Test(linux_boot, bzimage_every_parsed_field)
{
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&default_bzimage, &kernel, &image), 0, "%s", error);
    cr_assert_str_eq(kernel.path, "/fake/bzImage");
    cr_assert_eq(kernel.image, image);
    cr_assert_eq(kernel.image_size, 0x4000);
    cr_assert_eq(kernel.format, LINUX_KERNEL_BZIMAGE);
    cr_assert_eq(kernel.mode, LINUX_BOOT_MODE_64BIT);
    cr_assert_eq(kernel.entry, 0x100200);
    cr_assert_eq(kernel.segment_count, 1);
    cr_assert_eq(kernel.segments[0].file_offset, 0x1000);
    cr_assert_eq(kernel.segments[0].file_size, 0x3000);
    cr_assert_eq(kernel.segments[0].gpa, 0x100000);
    cr_assert_eq(kernel.segments[0].memory_size, 0x3000);
    cr_assert_eq(kernel.protocol, 0x020f);
    cr_assert_eq(kernel.setup_sects, 7);
    cr_assert_eq(kernel.setup_size, 0x1000);
    cr_assert_eq(kernel.payload_size, 0x3000);
    cr_assert_eq(kernel.header_end, FAKE_HEADER_END);
    cr_assert_eq(kernel.loadflags, 0x81);
    cr_assert_eq(kernel.xloadflags, 0x3);
    cr_assert_eq(kernel.relocatable, true);
    cr_assert_eq(kernel.kernel_alignment, 0x200000);
    cr_assert_eq(kernel.pref_address, 0x1000000);
    cr_assert_eq(kernel.init_size, 0x2000000);
    cr_assert_eq(kernel.runtime_start, 0x1000000, "max(align_up(1M, 2M), pref_address)");
    cr_assert_eq(kernel.cmdline_max, 2047);
    cr_assert_eq(kernel.initrd_addr_max, 0x7fffffff);
    cr_assert_eq(kernel.footprint_start, 0x100000);
    cr_assert_eq(kernel.footprint_end, 0x3000000);
    free(image);
}

Test(linux_boot, bzimage_setup_sects_zero_means_four)
{
    struct fake_bzimage fake = default_bzimage;
    fake.setup_sects = 0;
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&fake, &kernel, &image), 0, "%s", error);
    cr_assert_eq(kernel.setup_sects, 4);
    cr_assert_eq(kernel.setup_size, 0xa00);
    cr_assert_eq(kernel.segments[0].file_offset, 0xa00);
    cr_assert_eq(kernel.image_size, 0xa00 + 0x3000);
    free(image);
}

Test(linux_boot, bzimage_runtime_start_follows_relocation_rules)
{
    struct linux_kernel kernel;
    uint8_t *image;
    /* Not relocatable: moves itself to pref_address. */
    struct fake_bzimage fake = default_bzimage;
    fake.relocatable = 0;
    fake.pref_address = 0x400000;
    cr_assert_eq(parse_fake(&fake, &kernel, &image), 0, "%s", error);
    cr_assert_eq(kernel.relocatable, false);
    cr_assert_eq(kernel.runtime_start, 0x400000);
    cr_assert_eq(kernel.footprint_end, 0x2400000);
    free(image);
    /* Relocatable, alignment above pref_address: align_up(1 MiB, 16 MiB). */
    fake = default_bzimage;
    fake.kernel_alignment = 0x1000000;
    fake.pref_address = 0x200000;
    cr_assert_eq(parse_fake(&fake, &kernel, &image), 0, "%s", error);
    cr_assert_eq(kernel.runtime_start, 0x1000000);
    free(image);
    /* Relocatable with a small init_size: the loaded image is the end. */
    fake = default_bzimage;
    fake.pref_address = 0x100000;
    fake.kernel_alignment = 0x100000;
    fake.init_size = 0x1000;
    cr_assert_eq(parse_fake(&fake, &kernel, &image), 0, "%s", error);
    cr_assert_eq(kernel.runtime_start, 0x100000);
    cr_assert_eq(kernel.footprint_end, 0x103000);
    free(image);
}

Test(linux_boot, bzimage_bad_magic)
{
    size_t size;
    uint8_t *image = build_bzimage(&default_bzimage, &size);
    image[0x202] = 'X';
    expect_parse_error(image, size, "--kernel /fake/bzImage: not a bzImage (no \"HdrS\" at 0x202) nor an x86-64 ELF");
    expect_parse_error(image, 0x100, "--kernel /fake/bzImage: not a bzImage (no \"HdrS\" at 0x202) nor an x86-64 ELF");
    free(image);
}

Test(linux_boot, bzimage_protocol_too_old)
{
    struct fake_bzimage fake = default_bzimage;
    fake.protocol = 0x020b;
    size_t size;
    uint8_t *image = build_bzimage(&fake, &size);
    expect_parse_error(image, size,
                       "--kernel /fake/bzImage: boot protocol 2.11 is too old (the 64-bit entry needs 2.12 or later)");
    free(image);
    fake.protocol = 0x0203;
    image = build_bzimage(&fake, &size);
    expect_parse_error(image, size,
                       "--kernel /fake/bzImage: boot protocol 2.03 is too old (the 64-bit entry needs 2.12 or later)");
    free(image);
}

Test(linux_boot, bzimage_without_64bit_entry)
{
    struct fake_bzimage fake = default_bzimage;
    fake.xloadflags = XLF_CAN_BE_LOADED_ABOVE_4G;
    size_t size;
    uint8_t *image = build_bzimage(&fake, &size);
    expect_parse_error(image, size, "--kernel /fake/bzImage: no 64-bit entry point (XLF_KERNEL_64 is not set in "
                       "xloadflags 0x2): a 32-bit kernel?");
    free(image);
}

Test(linux_boot, bzimage_loaded_low)
{
    struct fake_bzimage fake = default_bzimage;
    fake.loadflags = CAN_USE_HEAP;
    size_t size;
    uint8_t *image = build_bzimage(&fake, &size);
    expect_parse_error(image, size, "--kernel /fake/bzImage: a zImage that loads at 0x10000 (LOADED_HIGH is not "
                       "set in loadflags 0x80); ringvm boots bzImages");
    free(image);
}

Test(linux_boot, bzimage_truncated)
{
    size_t size;
    uint8_t *image = build_bzimage(&default_bzimage, &size);
    expect_parse_error(image, size - 100, "--kernel /fake/bzImage: truncated: 16284 bytes, the header says 16384");
    expect_parse_error(image, 0x1000, "--kernel /fake/bzImage: truncated: 4096 bytes, the header says 16384");
    expect_parse_error(image, 0x240,
                       "--kernel /fake/bzImage: truncated: 576 bytes, the setup header alone ends at 620");
    free(image);
}

Test(linux_boot, bzimage_bad_alignment)
{
    struct fake_bzimage fake = default_bzimage;
    fake.kernel_alignment = 0x300000;
    size_t size;
    uint8_t *image = build_bzimage(&fake, &size);
    expect_parse_error(image, size, "--kernel /fake/bzImage: kernel_alignment 0x300000 is not a power of two");
    free(image);
}

/* ---- fit checks ------------------------------------------------------- */

Test(linux_boot, check_places_the_initrd_at_the_top_of_low_ram)
{
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&default_bzimage, &kernel, &image), 0, "%s", error);
    struct linux_boot_layout layout;
    uint64_t initrd = MIB + 123;
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, "/fake/initrd", initrd, 100, &layout, error, sizeof(error)), 0,
                 "%s", error);
    cr_assert_eq(layout.low_ram_end, 256 * MIB);
    cr_assert_eq(layout.initrd_gpa, 0xFEFF000);
    cr_assert_eq(layout.initrd_size, initrd);
    cr_assert_eq(layout.cmdline_length, 100);
    cr_assert_eq(linux_boot_check(&kernel, 1 * GIB, "/fake/initrd", initrd, 100, &layout, error, sizeof(error)), 0);
    cr_assert_eq(layout.initrd_gpa, 0x3FEFF000);
    /* 5 GiB: low RAM ends at 3 GiB but initrd_addr_max is 2 GiB - 1. */
    cr_assert_eq(linux_boot_check(&kernel, 5 * GIB, "/fake/initrd", initrd, 100, &layout, error, sizeof(error)), 0);
    cr_assert_eq(layout.low_ram_end, 3 * GIB);
    cr_assert_eq(layout.initrd_gpa, 0x7FEFF000);
    /* No initrd. */
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, NULL, 0, 0, &layout, error, sizeof(error)), 0);
    cr_assert_eq(layout.initrd_gpa, 0);
    cr_assert_eq(layout.initrd_size, 0);
    /* Exactly filling the space between the kernel and the top fits. */
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, "/fake/initrd", 208 * MIB, 0, &layout, error,
                                  sizeof(error)), 0, "%s", error);
    cr_assert_eq(layout.initrd_gpa, 48 * MIB);
    free(image);
}

Test(linux_boot, check_messages)
{
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&default_bzimage, &kernel, &image), 0, "%s", error);

    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, NULL, 0, 3000, NULL, error, sizeof(error)), -E2BIG);
    cr_assert_str_eq(error, "--cmdline: 3000 bytes, the kernel accepts at most 2047");
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, NULL, 0, 2047, NULL, error, sizeof(error)), 0);

    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, "/fake/initrd", 300 * MIB, 10, NULL, error, sizeof(error)),
                 -ENOSPC);
    cr_assert_str_eq(error, "--initrd /fake/initrd: 300 MiB does not fit in 256 MiB of guest RAM: it must lie above "
                     "the kernel (up to 48 MiB) and below 256 MiB (the end of guest RAM)");
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, "/fake/initrd", 208 * MIB + 1, 10, NULL, error,
                                  sizeof(error)), -ENOSPC);
    cr_assert_str_eq(error, "--initrd /fake/initrd: 218103809 bytes does not fit in 256 MiB of guest RAM: it must "
                     "lie above the kernel (up to 48 MiB) and below 256 MiB (the end of guest RAM)");
    cr_assert_eq(linux_boot_check(&kernel, 5 * GIB, "/fake/initrd", 2001 * MIB, 10, NULL, error, sizeof(error)),
                 -ENOSPC);
    cr_assert_str_eq(error, "--initrd /fake/initrd: 2001 MiB does not fit in 5 GiB of guest RAM: it must lie above "
                     "the kernel (up to 48 MiB) and below 2 GiB (the kernel's initrd_addr_max 0x7fffffff)");

    cr_assert_eq(linux_boot_check(&kernel, 32 * MIB, NULL, 0, 10, NULL, error, sizeof(error)), -ENOSPC);
    cr_assert_str_eq(error, "--kernel /fake/bzImage: needs guest RAM up to 48 MiB (loaded at 1 MiB, decompressed "
                     "into [16 MiB, 48 MiB)), the guest has 32 MiB");
    free(image);
}

Test(linux_boot, check_limits_the_cmdline_to_the_buffer)
{
    struct fake_bzimage fake = default_bzimage;
    fake.cmdline_size = 0x7fffffff;
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&fake, &kernel, &image), 0, "%s", error);
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, NULL, 0, 65535, NULL, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(linux_boot_check(&kernel, 256 * MIB, NULL, 0, 65536, NULL, error, sizeof(error)), -E2BIG);
    cr_assert_str_eq(error, "--cmdline: 65536 bytes, ringvm passes at most 65535");
    free(image);
}

/* ---- command line, files ---------------------------------------------- */

/* The defaults, then (on PVM hosts only) the options that keep the kernel
 * off instructions the emulator cannot run, then the user's. */
Test(linux_boot, cmdline_defaults_then_host_options_then_user)
{
    static const struct {
        const char *user;
        bool pvm_host;
        const char *expected;
    } cases[] = {
        { NULL, false, "console=ttyS0 reboot=k panic=1 pci=off" },
        { "", false, "console=ttyS0 reboot=k panic=1 pci=off" },
        { "ringvm.workload=ledger,wss=256M,verify=2 quiet", false,
          "console=ttyS0 reboot=k panic=1 pci=off ringvm.workload=ledger,wss=256M,verify=2 quiet" },
        { NULL, true, "console=ttyS0 reboot=k panic=1 pci=off noxsave clearcpuid=popcnt,cx16,smap" },
        { "quiet", true, "console=ttyS0 reboot=k panic=1 pci=off noxsave clearcpuid=popcnt,cx16,smap quiet" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *cmdline = linux_boot_cmdline(cases[i].user, cases[i].pvm_host);
        cr_assert_str_eq(cmdline, cases[i].expected, "case %zu", i);
        free(cmdline);
    }
}

Test(linux_boot, read_file_contents_and_errors)
{
    char path[] = "/tmp/ringvm-linux-boot-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
    const char text[] = "initramfs bytes";
    cr_assert_eq(write(fd, text, sizeof(text)), (ssize_t)sizeof(text));
    close(fd);
    struct linux_boot_file file;
    cr_assert_eq(linux_boot_read_file("--initrd", path, &file, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(file.size, sizeof(text));
    cr_assert_eq(memcmp(file.data, text, sizeof(text)), 0);
    linux_boot_file_free(&file);
    cr_assert_null(file.data);

    cr_assert_eq(truncate(path, 0), 0);
    cr_assert_eq(linux_boot_read_file("--initrd", path, &file, error, sizeof(error)), -EINVAL);
    char expected[256];
    snprintf(expected, sizeof(expected), "--initrd %s: the file is empty", path);
    cr_assert_str_eq(error, expected);
    unlink(path);

    cr_assert_eq(linux_boot_read_file("--initrd", "/nonexistent/ringvm-initrd", &file, error, sizeof(error)),
                 -ENOENT);
    cr_assert_str_eq(error, "--initrd /nonexistent/ringvm-initrd: No such file or directory");
    cr_assert_null(file.data);
    cr_assert_eq(linux_boot_read_file("--kernel", "/tmp", &file, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "--kernel /tmp: not a regular file");
}

/* ---- loading into real guest memory ---------------------------------- */

static void create_memory(struct guest_memory *memory, uint64_t size)
{
    struct guest_memory_options options = { .hugepages = false, .numa_node = -1, .prealloc = false };
    cr_assert_eq(guest_memory_create(memory, size, &options), 0, "guest_memory_create(%llu)",
                 (unsigned long long)size);
}

static void *at(struct guest_memory *memory, uint64_t gpa, uint64_t length)
{
    void *host = guest_memory_gpa_to_host(memory, gpa, length);
    cr_assert_not_null(host, "gpa 0x%llx is not RAM", (unsigned long long)gpa);
    return host;
}

static void expect_e820(const struct boot_e820_entry *entry, uint64_t addr, uint64_t size, uint32_t type,
                        unsigned index)
{
    cr_assert_eq(entry->addr, addr, "e820[%u].addr 0x%llx", index, (unsigned long long)entry->addr);
    cr_assert_eq(entry->size, size, "e820[%u].size 0x%llx", index, (unsigned long long)entry->size);
    cr_assert_eq(entry->type, type, "e820[%u].type %u", index, entry->type);
}

/* The e820 map every Linux guest gets, low part. */
static void expect_low_e820(const struct boot_e820_entry *e820, uint64_t low_end)
{
    expect_e820(&e820[0], 0, 0x1000, E820_RAM, 0);
    expect_e820(&e820[1], 0x1000, 0x9000, E820_RESERVED, 1);
    expect_e820(&e820[2], 0xA000, 0x9FC00 - 0xA000, E820_RAM, 2);
    expect_e820(&e820[3], 0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED, 3);
    expect_e820(&e820[4], 0x100000, low_end - 0x100000, E820_RAM, 4);
}

static uint8_t *patterned(size_t size, uint8_t seed)
{
    uint8_t *data = malloc(size);
    cr_assert_not_null(data);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i * 13 + seed);
    return data;
}

static void load_bzimage_and_check(uint64_t memory_size, uint64_t expected_initrd_gpa, unsigned e820_count)
{
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&default_bzimage, &kernel, &image), 0, "%s", error);
    struct guest_memory memory;
    create_memory(&memory, memory_size);
    uint64_t initrd_size = MIB + 123;
    uint8_t *initrd = patterned(initrd_size, 5);
    const char *cmdline = "console=ttyS0 reboot=k panic=1 pci=off ringvm.workload=idle";
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, initrd, initrd_size, "/fake/initrd", cmdline, 2, &entry, error,
                                 sizeof(error)), 0, "%s", error);

    /* The zero page. */
    const struct boot_params *params = at(&memory, 0xC000, sizeof(*params));
    cr_assert_eq(params->hdr.type_of_loader, 0xff);
    cr_assert_eq(params->hdr.boot_flag, 0xaa55);
    cr_assert_eq(params->hdr.header, 0x53726448);
    cr_assert_eq(params->hdr.cmd_line_ptr, 0x20000);
    cr_assert_eq(params->ext_cmd_line_ptr, 0);
    cr_assert_eq(params->hdr.ramdisk_image, expected_initrd_gpa);
    cr_assert_eq(params->hdr.ramdisk_size, initrd_size);
    cr_assert_eq(params->ext_ramdisk_image, 0);
    cr_assert_eq(params->ext_ramdisk_size, 0);
    cr_assert_eq(params->sentinel, 0, "the image's 0xff sentinel must not be copied");
    /* The setup header as the image has it (read-only fields untouched). */
    cr_assert_eq(params->hdr.setup_sects, 7);
    cr_assert_eq(params->hdr.root_flags, 1);
    cr_assert_eq(params->hdr.syssize, 0x300);
    cr_assert_eq(params->hdr.vid_mode, 0xffff);
    cr_assert_eq(params->hdr.jump, 0x6aeb);
    cr_assert_eq(params->hdr.version, 0x020f);
    cr_assert_eq(params->hdr.kernel_version, 0x3c0);
    cr_assert_eq(params->hdr.loadflags, 0x81);
    cr_assert_eq(params->hdr.code32_start, 0x100000);
    cr_assert_eq(params->hdr.initrd_addr_max, 0x7fffffff);
    cr_assert_eq(params->hdr.kernel_alignment, 0x200000);
    cr_assert_eq(params->hdr.relocatable_kernel, 1);
    cr_assert_eq(params->hdr.min_alignment, 21);
    cr_assert_eq(params->hdr.xloadflags, 0x3);
    cr_assert_eq(params->hdr.cmdline_size, 2047, "read-only: the kernel's own value");
    cr_assert_eq(params->hdr.payload_offset, 0x3a0);
    cr_assert_eq(params->hdr.payload_length, 0x2000);
    cr_assert_eq(params->hdr.setup_data, 0);
    cr_assert_eq(params->hdr.pref_address, 0x1000000);
    cr_assert_eq(params->hdr.init_size, 0x2000000);
    cr_assert_eq(params->hdr.handover_offset, 0x190);
    cr_assert_eq(params->hdr.kernel_info_offset, 0x1200);
    /* Nothing before 0x1f1 and nothing after the header's end is copied. */
    const uint8_t *bytes = (const uint8_t *)params;
    for (size_t i = 0; i < 0x1e8; i++)
        cr_assert_eq(bytes[i], 0, "zero page byte 0x%zx", i);
    for (size_t i = FAKE_HEADER_END; i < 0x2d0; i++)
        cr_assert_eq(bytes[i], 0, "zero page byte 0x%zx", i);
    cr_assert_eq(params->e820_entries, e820_count);
    expect_low_e820(params->e820_table, memory_size < 3 * GIB ? memory_size : 3 * GIB);
    if (memory_size > 3 * GIB)
        expect_e820(&params->e820_table[5], 4 * GIB, memory_size - 3 * GIB, E820_RAM, 5);
    for (size_t i = 0x2d0 + e820_count * sizeof(struct boot_e820_entry); i < 4096; i++)
        cr_assert_eq(bytes[i], 0, "zero page byte 0x%zx", i);

    /* Kernel, initrd, command line, MP table. */
    cr_assert_eq(memcmp(at(&memory, 0x100000, 0x3000), image + 0x1000, 0x3000), 0);
    cr_assert_eq(memcmp(at(&memory, expected_initrd_gpa, initrd_size), initrd, initrd_size), 0);
    cr_assert_str_eq(at(&memory, 0x20000, strlen(cmdline) + 1), cmdline);
    cr_assert_eq(memcmp(at(&memory, 0x9FC00, 4), "_MP_", 4), 0);
    cr_assert_eq(memcmp(at(&memory, 0x9FC10, 4), "PCMP", 4), 0);
    /* ringvm's boot info and stats pages stay untouched (zero). */
    const uint8_t *ringvm_pages = at(&memory, 0x1000, 0x9000);
    for (size_t i = 0; i < 0x9000; i++)
        cr_assert_eq(ringvm_pages[i], 0, "ringvm page byte 0x%zx", 0x1000 + i);

    /* GDT and page tables. */
    const uint64_t *gdt = at(&memory, 0xA000, 48);
    cr_assert_eq(gdt[0], 0);
    cr_assert_eq(gdt[1], 0);
    cr_assert_eq(gdt[2], 0x00af9b000000ffffULL);
    cr_assert_eq(gdt[3], 0x00cf93000000ffffULL);
    cr_assert_eq(gdt[4], 0x008f8b000000ffffULL);
    cr_assert_eq(gdt[5], 0);
    const uint64_t *pml4 = at(&memory, 0xD000, 4096);
    const uint64_t *pdpt = at(&memory, 0xE000, 4096);
    const uint64_t *directories = at(&memory, 0xF000, 4 * 4096);
    cr_assert_eq(pml4[0], 0xE023);
    for (unsigned i = 1; i < 512; i++)
        cr_assert_eq(pml4[i], 0);
    cr_assert_eq(pdpt[0], 0xF023);
    cr_assert_eq(pdpt[1], 0x10023);
    cr_assert_eq(pdpt[2], 0x11023);
    cr_assert_eq(pdpt[3], 0x12023);
    cr_assert_eq(pdpt[4], 0);
    for (uint64_t i = 0; i < 2048; i++)
        cr_assert_eq(directories[i], (i << 21) | 0xE3, "PD entry %llu", (unsigned long long)i);

    /* What the vCPU set-up gets. */
    cr_assert_eq(entry.mode, LINUX_BOOT_MODE_64BIT);
    cr_assert_eq(entry.rip, 0x100200);
    cr_assert_eq(entry.rsi, 0xC000);
    cr_assert_eq(entry.rbx, 0);
    cr_assert_eq(entry.rsp, 0x13FF0);
    cr_assert_eq(entry.rbp, 0x13FF0);
    cr_assert_eq(entry.cr0, 0x80000031);
    cr_assert_eq(entry.cr3, 0xD000);
    cr_assert_eq(entry.cr4, 0x20);
    cr_assert_eq(entry.efer, 0x500);
    cr_assert_eq(entry.gdt_base, 0xA000);
    cr_assert_eq(entry.gdt_limit, 47);
    cr_assert_eq(entry.idt_base, 0);
    cr_assert_eq(entry.idt_limit, 0);
    cr_assert_eq(memcmp(entry.gdt, gdt, sizeof(entry.gdt)), 0);
    cr_assert_eq(entry.initrd_gpa, expected_initrd_gpa);
    cr_assert_eq(entry.initrd_size, initrd_size);
    cr_assert_eq(entry.cmdline_gpa, 0x20000);

    free(initrd);
    free(image);
    guest_memory_destroy(&memory);
}

Test(linux_boot, bzimage_load_256m)
{
    load_bzimage_and_check(256 * MIB, 0xFEFF000, 5);
}

Test(linux_boot, bzimage_load_1g)
{
    load_bzimage_and_check(1 * GIB, 0x3FEFF000, 5);
}

Test(linux_boot, bzimage_load_5g_with_the_hole)
{
    load_bzimage_and_check(5 * GIB, 0x7FEFF000, 6);
}

Test(linux_boot, e820_follows_the_slots)
{
    struct guest_memory memory;
    memset(&memory, 0, sizeof(memory));
    memory.size = 5 * GIB;
    memory.slot_count = 2;
    memory.slots[0] = (struct guest_memory_slot){ .slot = 0, .gpa = 0, .size = 3 * GIB };
    memory.slots[1] = (struct guest_memory_slot){ .slot = 1, .gpa = 4 * GIB, .size = 2 * GIB,
                                                  .ram_offset = 3 * GIB };
    struct boot_e820_entry e820[8];
    cr_assert_eq(linux_boot_e820(&memory, e820, 8), 6);
    expect_low_e820(e820, 3 * GIB);
    expect_e820(&e820[5], 4 * GIB, 2 * GIB, E820_RAM, 5);
    cr_assert_eq(linux_boot_e820(&memory, e820, 5), -ENOSPC);
}

Test(linux_boot, load_refuses_what_check_refuses)
{
    struct linux_kernel kernel;
    uint8_t *image;
    cr_assert_eq(parse_fake(&default_bzimage, &kernel, &image), 0, "%s", error);
    struct guest_memory memory;
    create_memory(&memory, 64 * MIB);
    uint8_t byte = 0;
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, &byte, 17 * MIB, "/fake/initrd", "x", 1, &entry, error,
                                 sizeof(error)), -ENOSPC);
    cr_assert_str_eq(error, "--initrd /fake/initrd: 17 MiB does not fit in 64 MiB of guest RAM: it must lie above "
                     "the kernel (up to 48 MiB) and below 64 MiB (the end of guest RAM)");
    const uint8_t *kernel_area = at(&memory, 0x100000, 0x3000);
    for (size_t i = 0; i < 0x3000; i++)
        cr_assert_eq(kernel_area[i], 0, "nothing is written before every check passed");
    free(image);
    guest_memory_destroy(&memory);
}

/* ---- a crafted vmlinux ------------------------------------------------- */

struct fake_elf {
    bool pvh_note;
    uint32_t pvh_descriptor_size;   /* 4 or 8 */
    uint64_t first_paddr;
    uint16_t machine;
    uint8_t elf_class;
    uint64_t entry;
};

static const struct fake_elf default_elf = {
    .pvh_note = true, .pvh_descriptor_size = 8, .first_paddr = 0x1000000, .machine = EM_X86_64,
    .elf_class = ELFCLASS64, .entry = 0x1000040,
};

#define ELF_TEXT_SIZE 0x2000
#define ELF_DATA_FILE 0x1000
#define ELF_DATA_MEMORY 0x3000
#define ELF_PVH_ENTRY 0x1000100

static void put_note(uint8_t *notes, size_t *offset, const char *name, uint32_t type, const void *descriptor,
                     uint32_t descriptor_size)
{
    uint32_t name_size = (uint32_t)strlen(name) + 1;
    memcpy(notes + *offset, &name_size, 4);
    memcpy(notes + *offset + 4, &descriptor_size, 4);
    memcpy(notes + *offset + 8, &type, 4);
    memcpy(notes + *offset + 12, name, name_size);
    size_t descriptor_offset = *offset + 12 + ((name_size + 3) & ~3U);
    memcpy(notes + descriptor_offset, descriptor, descriptor_size);
    *offset = descriptor_offset + ((descriptor_size + 3) & ~3U);
}

/* ELF header, 3 program headers (text, data + bss, notes), notes, text, data. */
static uint8_t *build_elf(const struct fake_elf *fake, size_t *size)
{
    const size_t notes_offset = 0x100, text_offset = 0x1000, data_offset = text_offset + ELF_TEXT_SIZE;
    *size = data_offset + ELF_DATA_FILE;
    uint8_t *image = calloc(1, *size);
    cr_assert_not_null(image);
    Elf64_Ehdr header = {
        .e_type = ET_EXEC, .e_machine = fake->machine, .e_version = EV_CURRENT, .e_entry = fake->entry,
        .e_phoff = sizeof(Elf64_Ehdr), .e_ehsize = sizeof(Elf64_Ehdr), .e_phentsize = sizeof(Elf64_Phdr),
        .e_phnum = 3,
    };
    memcpy(header.e_ident, ELFMAG, SELFMAG);
    header.e_ident[EI_CLASS] = fake->elf_class;
    header.e_ident[EI_DATA] = ELFDATA2LSB;
    header.e_ident[EI_VERSION] = EV_CURRENT;
    memcpy(image, &header, sizeof(header));

    size_t notes_size = 0;
    uint8_t build_id[20];
    memset(build_id, 0xab, sizeof(build_id));
    put_note(image + notes_offset, &notes_size, "GNU", 3, build_id, sizeof(build_id));
    if (fake->pvh_note) {
        uint64_t entry = ELF_PVH_ENTRY;
        put_note(image + notes_offset, &notes_size, "Xen", 18, &entry, fake->pvh_descriptor_size);
    }
    Elf64_Phdr segments[3] = {
        { .p_type = PT_LOAD, .p_flags = PF_R | PF_X, .p_offset = text_offset, .p_vaddr = 0xffffffff81000000ULL,
          .p_paddr = fake->first_paddr, .p_filesz = ELF_TEXT_SIZE, .p_memsz = ELF_TEXT_SIZE, .p_align = 0x200000 },
        { .p_type = PT_LOAD, .p_flags = PF_R | PF_W, .p_offset = data_offset, .p_vaddr = 0xffffffff81002000ULL,
          .p_paddr = fake->first_paddr + ELF_TEXT_SIZE, .p_filesz = ELF_DATA_FILE, .p_memsz = ELF_DATA_MEMORY,
          .p_align = 0x200000 },
        { .p_type = PT_NOTE, .p_flags = PF_R, .p_offset = notes_offset, .p_filesz = notes_size, .p_memsz = notes_size,
          .p_align = 4 },
    };
    memcpy(image + header.e_phoff, segments, sizeof(segments));
    for (size_t i = 0; i < ELF_TEXT_SIZE + ELF_DATA_FILE; i++)
        image[text_offset + i] = (uint8_t)(i * 11 + 1);
    return image;
}

static int parse_elf(const struct fake_elf *fake, struct linux_kernel *kernel, uint8_t **image, size_t *size)
{
    *image = build_elf(fake, size);
    memset(error, 0, sizeof(error));
    return linux_kernel_parse(kernel, "/fake/vmlinux", *image, *size, error, sizeof(error));
}

Test(linux_boot, elf_with_pvh_note)
{
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&default_elf, &kernel, &image, &size), 0, "%s", error);
    cr_assert_eq(kernel.format, LINUX_KERNEL_ELF);
    cr_assert_eq(kernel.mode, LINUX_BOOT_MODE_PVH);
    cr_assert_eq(kernel.entry, ELF_PVH_ENTRY);
    cr_assert_eq(kernel.segment_count, 2);
    cr_assert_eq(kernel.segments[0].file_offset, 0x1000);
    cr_assert_eq(kernel.segments[0].file_size, ELF_TEXT_SIZE);
    cr_assert_eq(kernel.segments[0].gpa, 0x1000000);
    cr_assert_eq(kernel.segments[0].memory_size, ELF_TEXT_SIZE);
    cr_assert_eq(kernel.segments[1].file_offset, 0x3000);
    cr_assert_eq(kernel.segments[1].file_size, ELF_DATA_FILE);
    cr_assert_eq(kernel.segments[1].gpa, 0x1002000);
    cr_assert_eq(kernel.segments[1].memory_size, ELF_DATA_MEMORY);
    cr_assert_eq(kernel.footprint_start, 0x1000000);
    cr_assert_eq(kernel.footprint_end, 0x1005000);
    cr_assert_eq(kernel.cmdline_max, 2047);
    cr_assert_eq(kernel.initrd_addr_max, 0xffffffff);
    cr_assert_eq(kernel.protocol, 0);
    free(image);

    /* A 4-byte descriptor, as guest/pvh.S writes it. */
    struct fake_elf fake = default_elf;
    fake.pvh_descriptor_size = 4;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), 0, "%s", error);
    cr_assert_eq(kernel.mode, LINUX_BOOT_MODE_PVH);
    cr_assert_eq(kernel.entry, ELF_PVH_ENTRY);
    free(image);
}

Test(linux_boot, elf_without_pvh_note_uses_the_64bit_entry)
{
    struct fake_elf fake = default_elf;
    fake.pvh_note = false;
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), 0, "%s", error);
    cr_assert_eq(kernel.format, LINUX_KERNEL_ELF);
    cr_assert_eq(kernel.mode, LINUX_BOOT_MODE_64BIT);
    cr_assert_eq(kernel.entry, 0x1000040);
    free(image);
}

Test(linux_boot, elf_errors)
{
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    struct fake_elf fake = default_elf;
    fake.first_paddr = 0x80000;
    fake.entry = 0x80040;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), -EINVAL);
    cr_assert_str_eq(error, "--kernel /fake/vmlinux: segment 0 loads at 0x80000, below 1 MiB where ringvm keeps "
                     "its boot data");
    free(image);

    fake = default_elf;
    fake.machine = EM_AARCH64;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), -EINVAL);
    cr_assert_str_eq(error, "--kernel /fake/vmlinux: an ELF for machine 183, not x86-64 (62)");
    free(image);

    fake = default_elf;
    fake.elf_class = ELFCLASS32;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), -EINVAL);
    cr_assert_str_eq(error, "--kernel /fake/vmlinux: a 32-bit ELF (class 1); ringvm boots x86-64 kernels");
    free(image);

    fake = default_elf;
    fake.pvh_note = false;
    fake.entry = 0x2000000;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), -EINVAL);
    cr_assert_str_eq(error, "--kernel /fake/vmlinux: the ELF entry point 0x2000000 is not inside a loadable segment");
    free(image);

    image = build_elf(&default_elf, &size);
    memset(error, 0, sizeof(error));
    cr_assert_eq(linux_kernel_parse(&kernel, "/fake/vmlinux", image, size - 1, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "--kernel /fake/vmlinux: truncated: 16383 bytes, segment 1 ends at 16384");
    free(image);
}

/* A linker-made note: ringvm's own guest carries the same PVH entry note
 * as Linux (guest/pvh.S), so QEMU can boot it; the parser must find it. */
Test(linux_boot, elf_builtin_guest_pvh_note)
{
    const void *image;
    size_t size;
    boot_builtin_guest(&image, &size);
    Elf64_Ehdr header;
    memcpy(&header, image, sizeof(header));
    struct linux_kernel kernel;
    cr_assert_eq(linux_kernel_parse(&kernel, "builtin", image, size, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(kernel.format, LINUX_KERNEL_ELF);
    cr_assert_eq(kernel.mode, LINUX_BOOT_MODE_PVH);
    cr_assert_eq(kernel.segment_count, 1);
    cr_assert_eq(kernel.segments[0].gpa, 0x100000);
    cr_assert_eq(kernel.footprint_start, 0x100000);
    cr_assert_neq(kernel.entry, header.e_entry, "the PVH entry, not the 64-bit ELF entry");
    cr_assert(kernel.entry > 0x100000 && kernel.entry < 0x100000 + kernel.segments[0].file_size,
              "PVH entry 0x%llx outside the guest's code", (unsigned long long)kernel.entry);
}

Test(linux_boot, elf_initrd_limit_is_the_low_ram_end)
{
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&default_elf, &kernel, &image, &size), 0, "%s", error);
    struct linux_boot_layout layout;
    cr_assert_eq(linux_boot_check(&kernel, 5 * GIB, "/fake/initrd", 2 * GIB, 10, &layout, error, sizeof(error)), 0,
                 "%s", error);
    cr_assert_eq(layout.initrd_gpa, 1 * GIB, "top of the RAM below the hole, no initrd_addr_max below it");
    cr_assert_eq(linux_boot_check(&kernel, 5 * GIB, "/fake/initrd", 3 * GIB, 10, NULL, error, sizeof(error)),
                 -ENOSPC);
    cr_assert_str_eq(error, "--initrd /fake/initrd: 3 GiB does not fit in 5 GiB of guest RAM: it must lie above the "
                     "kernel (up to 0x1005000) and below 3 GiB (where RAM stops below the 3-4 GiB hole)");
    cr_assert_eq(linux_boot_check(&kernel, 16 * MIB, NULL, 0, 10, NULL, error, sizeof(error)), -ENOSPC);
    cr_assert_str_eq(error, "--kernel /fake/vmlinux: needs guest RAM up to 0x1005000 (its segments span [16 MiB, "
                     "0x1005000)), the guest has 16 MiB");
    free(image);
}

Test(linux_boot, elf_pvh_load_and_start_info)
{
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&default_elf, &kernel, &image, &size), 0, "%s", error);
    struct guest_memory memory;
    create_memory(&memory, 256 * MIB);
    /* Dirty the bss range: the loader must zero it. */
    memset(at(&memory, 0x1003000, 0x2000), 0xaa, 0x2000);
    uint64_t initrd_size = 3 * 4096 + 5;
    uint8_t *initrd = patterned(initrd_size, 9);
    const char *cmdline = "console=ttyS0 reboot=k panic=1 pci=off";
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, initrd, initrd_size, "/fake/initrd", cmdline, 1, &entry, error,
                                 sizeof(error)), 0, "%s", error);

    cr_assert_eq(memcmp(at(&memory, 0x1000000, ELF_TEXT_SIZE), image + 0x1000, ELF_TEXT_SIZE), 0);
    cr_assert_eq(memcmp(at(&memory, 0x1002000, ELF_DATA_FILE), image + 0x3000, ELF_DATA_FILE), 0);
    const uint8_t *bss = at(&memory, 0x1003000, 0x2000);
    for (size_t i = 0; i < 0x2000; i++)
        cr_assert_eq(bss[i], 0, "bss byte %zu", i);
    uint64_t initrd_gpa = 256 * MIB - 4 * 4096;
    cr_assert_eq(memcmp(at(&memory, initrd_gpa, initrd_size), initrd, initrd_size), 0);

    /* hvm_start_info, at its documented offsets. */
    const uint8_t *start = at(&memory, 0xB000, 4096);
    uint32_t u32;
    uint64_t u64;
    memcpy(&u32, start + 0, 4);
    cr_assert_eq(u32, 0x336ec578, "magic");
    memcpy(&u32, start + 4, 4);
    cr_assert_eq(u32, 1, "version");
    memcpy(&u32, start + 8, 4);
    cr_assert_eq(u32, 0, "flags");
    memcpy(&u32, start + 12, 4);
    cr_assert_eq(u32, 1, "nr_modules");
    memcpy(&u64, start + 16, 8);
    cr_assert_eq(u64, 0xB040, "modlist_paddr");
    memcpy(&u64, start + 24, 8);
    cr_assert_eq(u64, 0x20000, "cmdline_paddr");
    memcpy(&u64, start + 32, 8);
    cr_assert_eq(u64, 0, "rsdp_paddr");
    memcpy(&u64, start + 40, 8);
    cr_assert_eq(u64, 0xB080, "memmap_paddr");
    memcpy(&u32, start + 48, 4);
    cr_assert_eq(u32, 5, "memmap_entries");
    memcpy(&u32, start + 52, 4);
    cr_assert_eq(u32, 0, "reserved");
    /* The module list: the initrd. */
    memcpy(&u64, start + 0x40, 8);
    cr_assert_eq(u64, initrd_gpa, "module paddr");
    memcpy(&u64, start + 0x48, 8);
    cr_assert_eq(u64, initrd_size, "module size");
    memcpy(&u64, start + 0x50, 8);
    cr_assert_eq(u64, 0, "module cmdline");
    /* The memory map: the e820 entries, 24 bytes each. */
    const uint64_t expected[5][3] = {
        { 0, 0x1000, 1 }, { 0x1000, 0x9000, 2 }, { 0xA000, 0x9FC00 - 0xA000, 1 },
        { 0x9FC00, 0x100000 - 0x9FC00, 2 }, { 0x100000, 256 * MIB - 0x100000, 1 },
    };
    for (unsigned i = 0; i < 5; i++) {
        const uint8_t *map = start + 0x80 + 24 * i;
        memcpy(&u64, map, 8);
        cr_assert_eq(u64, expected[i][0], "memmap[%u].addr", i);
        memcpy(&u64, map + 8, 8);
        cr_assert_eq(u64, expected[i][1], "memmap[%u].size", i);
        memcpy(&u32, map + 16, 4);
        cr_assert_eq(u32, expected[i][2], "memmap[%u].type", i);
        memcpy(&u32, map + 20, 4);
        cr_assert_eq(u32, 0, "memmap[%u].reserved", i);
    }
    /* No zero page and no page tables in PVH mode. */
    const uint8_t *zero_page = at(&memory, 0xC000, 4096);
    for (size_t i = 0; i < 4096; i++)
        cr_assert_eq(zero_page[i], 0);
    const uint64_t *pml4 = at(&memory, 0xD000, 8);
    cr_assert_eq(pml4[0], 0);

    cr_assert_eq(entry.mode, LINUX_BOOT_MODE_PVH);
    cr_assert_eq(entry.rip, ELF_PVH_ENTRY);
    cr_assert_eq(entry.rbx, 0xB000);
    cr_assert_eq(entry.rsi, 0);
    cr_assert_eq(entry.cr0, 0x11);
    cr_assert_eq(entry.cr3, 0);
    cr_assert_eq(entry.cr4, 0);
    cr_assert_eq(entry.efer, 0);
    cr_assert_eq(entry.gdt[2], 0x00cf9b000000ffffULL);
    cr_assert_eq(entry.gdt[3], 0x00cf93000000ffffULL);
    cr_assert_eq(entry.gdt[4], 0x00008b0000000067ULL);
    const uint64_t *gdt = at(&memory, 0xA000, 48);
    cr_assert_eq(memcmp(gdt, entry.gdt, 48), 0);

    free(initrd);
    free(image);
    guest_memory_destroy(&memory);
}

Test(linux_boot, elf_pvh_without_initrd_has_no_module)
{
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&default_elf, &kernel, &image, &size), 0, "%s", error);
    struct guest_memory memory;
    create_memory(&memory, 64 * MIB);
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, NULL, 0, NULL, "x", 1, &entry, error, sizeof(error)), 0, "%s",
                 error);
    const uint8_t *start = at(&memory, 0xB000, 64);
    uint32_t nr_modules;
    uint64_t modlist;
    memcpy(&nr_modules, start + 12, 4);
    memcpy(&modlist, start + 16, 8);
    cr_assert_eq(nr_modules, 0);
    cr_assert_eq(modlist, 0);
    cr_assert_eq(entry.initrd_gpa, 0);
    cr_assert_eq(entry.initrd_size, 0);
    free(image);
    guest_memory_destroy(&memory);
}

Test(linux_boot, elf_64bit_zero_page)
{
    struct fake_elf fake = default_elf;
    fake.pvh_note = false;
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), 0, "%s", error);
    struct guest_memory memory;
    create_memory(&memory, 128 * MIB);
    uint8_t initrd[100];
    memset(initrd, 0x42, sizeof(initrd));
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, initrd, sizeof(initrd), "/fake/initrd", "root=/dev/ram0", 1,
                                 &entry, error, sizeof(error)), 0, "%s", error);
    const struct boot_params *params = at(&memory, 0xC000, sizeof(*params));
    cr_assert_eq(params->hdr.type_of_loader, 0xff);
    cr_assert_eq(params->hdr.boot_flag, 0xaa55);
    cr_assert_eq(params->hdr.header, 0x53726448);
    cr_assert_eq(params->hdr.version, 0, "no setup header in a vmlinux");
    cr_assert_eq(params->hdr.cmd_line_ptr, 0x20000);
    cr_assert_eq(params->hdr.ramdisk_image, 128 * MIB - 4096);
    cr_assert_eq(params->hdr.ramdisk_size, 100);
    cr_assert_eq(params->hdr.cmdline_size, 0);
    cr_assert_eq(params->sentinel, 0);
    cr_assert_eq(params->e820_entries, 5);
    expect_low_e820(params->e820_table, 128 * MIB);
    cr_assert_eq(entry.mode, LINUX_BOOT_MODE_64BIT);
    cr_assert_eq(entry.rip, 0x1000040);
    cr_assert_eq(entry.rsi, 0xC000);
    cr_assert_eq(entry.cr3, 0xD000);
    free(image);
    guest_memory_destroy(&memory);
}

/* ---- vCPU state helpers ------------------------------------------------ */

static void expect_segment(const struct kvm_segment *segment, uint64_t base, uint32_t limit, uint16_t selector,
                           uint8_t type, uint8_t s, uint8_t db, uint8_t l, uint8_t g, const char *name)
{
    cr_assert_eq(segment->base, base, "%s.base", name);
    cr_assert_eq(segment->limit, limit, "%s.limit 0x%x", name, segment->limit);
    cr_assert_eq(segment->selector, selector, "%s.selector", name);
    cr_assert_eq(segment->type, type, "%s.type", name);
    cr_assert_eq(segment->present, 1, "%s.present", name);
    cr_assert_eq(segment->dpl, 0, "%s.dpl", name);
    cr_assert_eq(segment->s, s, "%s.s", name);
    cr_assert_eq(segment->db, db, "%s.db", name);
    cr_assert_eq(segment->l, l, "%s.l", name);
    cr_assert_eq(segment->g, g, "%s.g", name);
    cr_assert_eq(segment->avl, 0, "%s.avl", name);
    cr_assert_eq(segment->unusable, 0, "%s.unusable", name);
}

static struct linux_boot_entry entry_for(bool pvh)
{
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    struct fake_elf fake = default_elf;
    fake.pvh_note = pvh;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), 0, "%s", error);
    struct guest_memory memory;
    create_memory(&memory, 64 * MIB);
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, NULL, 0, NULL, "x", 1, &entry, error, sizeof(error)), 0, "%s",
                 error);
    free(image);
    guest_memory_destroy(&memory);
    return entry;
}

Test(linux_boot, sregs_64bit)
{
    struct linux_boot_entry entry = entry_for(false);
    struct kvm_sregs sregs;
    memset(&sregs, 0x5a, sizeof(sregs));
    sregs.apic_base = 0xfee00900;
    linux_boot_fill_sregs(&entry, &sregs);
    expect_segment(&sregs.cs, 0, 0xffffffff, 0x10, 0xb, 1, 0, 1, 1, "cs");
    const struct kvm_segment *data[] = { &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss };
    for (unsigned i = 0; i < 5; i++)
        expect_segment(data[i], 0, 0xffffffff, 0x18, 0x3, 1, 1, 0, 1, "data");
    expect_segment(&sregs.tr, 0, 0xffffffff, 0x20, 0xb, 0, 0, 0, 1, "tr");
    cr_assert_eq(sregs.gdt.base, 0xA000);
    cr_assert_eq(sregs.gdt.limit, 47);
    cr_assert_eq(sregs.idt.base, 0);
    cr_assert_eq(sregs.idt.limit, 0);
    cr_assert_eq(sregs.cr0, 0x80000031);
    cr_assert_eq(sregs.cr3, 0xD000);
    cr_assert_eq(sregs.cr4, 0x20);
    cr_assert_eq(sregs.efer, 0x500);
    cr_assert_eq(sregs.apic_base, 0xfee00900, "KVM's APIC base is kept");
}

Test(linux_boot, sregs_pvh)
{
    struct linux_boot_entry entry = entry_for(true);
    struct kvm_sregs sregs;
    memset(&sregs, 0, sizeof(sregs));
    linux_boot_fill_sregs(&entry, &sregs);
    expect_segment(&sregs.cs, 0, 0xffffffff, 0x10, 0xb, 1, 1, 0, 1, "cs");
    expect_segment(&sregs.ss, 0, 0xffffffff, 0x18, 0x3, 1, 1, 0, 1, "ss");
    expect_segment(&sregs.tr, 0, 0x67, 0x20, 0xb, 0, 0, 0, 0, "tr");
    cr_assert_eq(sregs.cr0, 0x11);
    cr_assert_eq(sregs.cr3, 0);
    cr_assert_eq(sregs.cr4, 0);
    cr_assert_eq(sregs.efer, 0);
}

Test(linux_boot, regs_and_fpu)
{
    struct linux_boot_entry entry = entry_for(false);
    struct kvm_regs regs;
    memset(&regs, 0x77, sizeof(regs));
    linux_boot_fill_regs(&entry, &regs);
    cr_assert_eq(regs.rflags, 0x2);
    cr_assert_eq(regs.rip, 0x1000040);
    cr_assert_eq(regs.rsp, 0x13FF0);
    cr_assert_eq(regs.rbp, 0x13FF0);
    cr_assert_eq(regs.rsi, 0xC000);
    cr_assert_eq(regs.rbx, 0);
    cr_assert_eq(regs.rax | regs.rcx | regs.rdx | regs.rdi | regs.r8 | regs.r9 | regs.r10 | regs.r11 | regs.r12 |
                 regs.r13 | regs.r14 | regs.r15, 0);

    entry = entry_for(true);
    linux_boot_fill_regs(&entry, &regs);
    cr_assert_eq(regs.rip, ELF_PVH_ENTRY);
    cr_assert_eq(regs.rbx, 0xB000);
    cr_assert_eq(regs.rsi, 0);

    struct kvm_fpu fpu;
    memset(&fpu, 0x33, sizeof(fpu));
    linux_boot_fill_fpu(&fpu);
    cr_assert_eq(fpu.fcw, 0x37f);
    cr_assert_eq(fpu.mxcsr, 0x1f80);
    cr_assert_eq(fpu.fsw, 0);
    cr_assert_eq(fpu.ftwx, 0);
}

Test(linux_boot, boot_msrs)
{
    struct kvm_msr_entry entries[LINUX_BOOT_MSR_COUNT];
    cr_assert_eq(linux_boot_msr_entries(entries, LINUX_BOOT_MSR_COUNT - 1), 0);
    cr_assert_eq(linux_boot_msr_entries(entries, LINUX_BOOT_MSR_COUNT), 11);
    const uint32_t indices[11] = { 0x174, 0x175, 0x176, 0xc0000081, 0xc0000083, 0xc0000102, 0xc0000084,
                                   0xc0000082, 0x10, 0x1a0, 0x2ff };
    const uint64_t values[11] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x806 };
    for (unsigned i = 0; i < 11; i++) {
        cr_assert_eq(entries[i].index, indices[i], "entry %u index 0x%x", i, entries[i].index);
        cr_assert_eq(entries[i].data, values[i], "entry %u data", i);
        cr_assert_eq(entries[i].reserved, 0);
    }
}

Test(linux_boot, lapic_lint0_extint_lint1_nmi)
{
    struct kvm_lapic_state lapic;
    memset(&lapic, 0, sizeof(lapic));
    uint32_t masked = 0x10000, other = 0x10500;
    memcpy(&lapic.regs[0x350], &masked, 4);
    memcpy(&lapic.regs[0x360], &other, 4);
    lapic.regs[0x340] = 0x12;
    lapic.regs[0x370] = 0x34;
    linux_boot_set_lint(&lapic);
    uint32_t lint0, lint1;
    memcpy(&lint0, &lapic.regs[0x350], 4);
    memcpy(&lint1, &lapic.regs[0x360], 4);
    cr_assert_eq(lint0, 0x10700, "LINT0 0x%x", lint0);
    cr_assert_eq(lint1, 0x10400, "LINT1 0x%x", lint1);
    cr_assert_eq(lapic.regs[0x340], 0x12);
    cr_assert_eq(lapic.regs[0x370], 0x34);
}

/* ---- real kernels, when present ---------------------------------------- */

static bool real_kernel_path(const char *pattern, char *path, size_t path_size)
{
    glob_t found;
    bool ok = false;
    if (glob(pattern, 0, NULL, &found) == 0 && found.gl_pathc > 0) {
        snprintf(path, path_size, "%s", found.gl_pathv[found.gl_pathc - 1]);
        ok = true;
    }
    globfree(&found);
    return ok;
}

/* Parses, checks and loads a real kernel into a 256 MiB guest; prints what
 * it found. */
static void boot_real_kernel(const char *path, enum linux_kernel_format format)
{
    struct linux_boot_file file;
    cr_assert_eq(linux_boot_read_file("--kernel", path, &file, error, sizeof(error)), 0, "%s", error);
    struct linux_kernel kernel;
    cr_assert_eq(linux_kernel_parse(&kernel, path, file.data, file.size, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(kernel.format, format);
    if (format == LINUX_KERNEL_BZIMAGE) {
        cr_assert_geq(kernel.protocol, 0x20c);
        cr_assert_eq(kernel.entry, 0x100200);
        cr_assert_eq(kernel.image_size >= kernel.setup_size + kernel.payload_size, true);
    }
    fprintf(stderr, "%s: %s protocol %u.%02u, %s entry 0x%llx, setup_sects %u, relocatable %d, pref_address "
            "0x%llx, init_size 0x%x, cmdline max %u, footprint [0x%llx, 0x%llx)\n", path,
            format == LINUX_KERNEL_BZIMAGE ? "bzImage" : "vmlinux", kernel.protocol >> 8, kernel.protocol & 0xff,
            kernel.mode == LINUX_BOOT_MODE_PVH ? "PVH" : "64-bit", (unsigned long long)kernel.entry,
            kernel.setup_sects, kernel.relocatable, (unsigned long long)kernel.pref_address, kernel.init_size,
            kernel.cmdline_max, (unsigned long long)kernel.footprint_start, (unsigned long long)kernel.footprint_end);
    struct guest_memory memory;
    create_memory(&memory, 256 * MIB);
    struct linux_boot_entry entry;
    char *cmdline = linux_boot_cmdline("quiet", false);
    cr_assert_eq(linux_boot_load(&memory, &kernel, NULL, 0, NULL, cmdline, 2, &entry, error, sizeof(error)), 0, "%s",
                 error);
    if (format == LINUX_KERNEL_BZIMAGE) {
        const struct boot_params *params = at(&memory, 0xC000, sizeof(*params));
        cr_assert_eq(params->hdr.version, kernel.protocol);
        cr_assert_eq(params->hdr.init_size, kernel.init_size);
        cr_assert_eq(memcmp(at(&memory, 0x100000, kernel.payload_size), file.data + kernel.setup_size,
                            kernel.payload_size), 0);
    }
    free(cmdline);
    guest_memory_destroy(&memory);
    linux_boot_file_free(&file);
}

static bool find_project_kernel(const char *name, char *path, size_t path_size)
{
    const char *build = getenv("RINGVM_BUILD_DIR");
    char pattern[1024];
    snprintf(pattern, sizeof(pattern), "%s/linux/%s", build != NULL ? build : "build", name);
    if (real_kernel_path(pattern, path, path_size))
        return true;
    snprintf(pattern, sizeof(pattern), "build/linux/%s", name);
    if (real_kernel_path(pattern, path, path_size))
        return true;
    /* guest/linux/build-kernel.sh's cache: ${RINGVM_CACHE:-$HOME/.cache/ringvm}/linux-<hash>/. */
    const char *cache = getenv("RINGVM_CACHE");
    const char *home = getenv("HOME");
    if (cache != NULL && cache[0] != '\0')
        snprintf(pattern, sizeof(pattern), "%s/linux-*/%s", cache, name);
    else
        snprintf(pattern, sizeof(pattern), "%s/.cache/ringvm/linux-*/%s", home != NULL ? home : "/root", name);
    return real_kernel_path(pattern, path, path_size);
}

Test(linux_boot, real_project_bzimage)
{
    char path[1024];
    if (!find_project_kernel("bzImage", path, sizeof(path)))
        harness_skip("no bzImage in $RINGVM_BUILD_DIR/linux, build/linux or the kernel cache "
                     "${RINGVM_CACHE:-~/.cache/ringvm}/linux-*/ (make linux-guest builds it)");
    boot_real_kernel(path, LINUX_KERNEL_BZIMAGE);
}

Test(linux_boot, real_project_vmlinux)
{
    char path[1024];
    if (!find_project_kernel("vmlinux", path, sizeof(path)))
        harness_skip("no vmlinux in $RINGVM_BUILD_DIR/linux, build/linux or the kernel cache "
                     "${RINGVM_CACHE:-~/.cache/ringvm}/linux-*/ (make linux-guest builds it)");
    boot_real_kernel(path, LINUX_KERNEL_ELF);
}

Test(linux_boot, real_distribution_vmlinuz)
{
    char path[1024];
    const char *override = getenv("RINGVM_TEST_VMLINUZ");
    if (override != NULL && override[0] != '\0')
        snprintf(path, sizeof(path), "%s", override);
    else if (!real_kernel_path("/boot/vmlinuz-*", path, sizeof(path)))
        harness_skip("no Debian vmlinuz: scripts/debian-vmlinuz.sh could not fetch one and /boot has none "
                     "(RINGVM_TEST_VMLINUZ=PATH names one)");
    struct stat status;
    if (stat(path, &status) != 0 || access(path, R_OK) != 0)
        harness_skip("%s is not readable by this user", path);
    boot_real_kernel(path, LINUX_KERNEL_BZIMAGE);
}

/* ---- the KVM side (needs /dev/kvm; never run on a machine without it) --- */

static int kvm_ioctl_ok(int fd, unsigned long request, void *argument, const char *what)
{
    int result = ioctl(fd, request, argument);
    cr_assert_geq(result, 0, "%s: %s", what, strerror(errno));
    return result;
}

static uint32_t lapic_register(const struct kvm_lapic_state *lapic, unsigned offset)
{
    uint32_t value;
    memcpy(&value, &lapic->regs[offset], 4);
    return value;
}

/* Two vCPUs set up for a vmlinux's 64-bit entry, then read back: vCPU 0
 * holds the entry state, vCPU 1 keeps its reset state and waits for SIPI;
 * both have the boot MSRs, LINT0/LINT1 and their own APIC id in CPUID. */
Test(linux_boot, kvm_vcpu_setup_reads_back, .timeout = 60)
{
    harness_require_kvm();
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    cr_assert_geq(kvm, 0, "open /dev/kvm: %s", strerror(errno));
    int vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
    cr_assert_geq(vm, 0, "KVM_CREATE_VM: %s", strerror(errno));
    kvm_ioctl_ok(vm, KVM_CREATE_IRQCHIP, NULL, "KVM_CREATE_IRQCHIP");
    struct guest_memory memory;
    create_memory(&memory, 64 * MIB);
    cr_assert_eq(guest_memory_register(&memory, vm, false), 0);

    struct fake_elf fake = default_elf;
    fake.pvh_note = false;
    struct linux_kernel kernel;
    uint8_t *image;
    size_t size;
    cr_assert_eq(parse_elf(&fake, &kernel, &image, &size), 0, "%s", error);
    struct linux_boot_entry entry;
    cr_assert_eq(linux_boot_load(&memory, &kernel, NULL, 0, NULL, "console=ttyS0", 2, &entry, error, sizeof(error)),
                 0, "%s", error);

    struct kvm_cpuid2 *supported = NULL;
    cr_assert_eq(cpuid_get_supported(kvm, &supported, error, sizeof(error)), 0, "%s", error);
    int vcpus[2];
    for (unsigned i = 0; i < 2; i++) {
        vcpus[i] = ioctl(vm, KVM_CREATE_VCPU, (unsigned long)i);
        cr_assert_geq(vcpus[i], 0, "KVM_CREATE_VCPU(%u): %s", i, strerror(errno));
        cr_assert_eq(cpuid_setup_vcpu(vcpus[i], supported, i, 2, error, sizeof(error)), 0, "%s", error);
        cr_assert_eq(linux_boot_setup_vcpu(vcpus[i], i, &entry, error, sizeof(error)), 0, "%s", error);
    }

    struct kvm_regs regs;
    kvm_ioctl_ok(vcpus[0], KVM_GET_REGS, &regs, "KVM_GET_REGS");
    cr_assert_eq(regs.rip, 0x1000040);
    cr_assert_eq(regs.rsi, 0xC000);
    cr_assert_eq(regs.rsp, 0x13FF0);
    cr_assert_eq(regs.rflags, 0x2);
    struct kvm_sregs sregs;
    kvm_ioctl_ok(vcpus[0], KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
    cr_assert_eq(sregs.cs.selector, 0x10);
    cr_assert_eq(sregs.cs.l, 1);
    cr_assert_eq(sregs.ds.selector, 0x18);
    cr_assert_eq(sregs.tr.selector, 0x20);
    cr_assert_eq(sregs.gdt.base, 0xA000);
    cr_assert_eq(sregs.cr3, 0xD000);
    cr_assert_eq(sregs.cr0 & 0x80000001, 0x80000001, "PE and PG");
    cr_assert_eq(sregs.cr4 & 0x20, 0x20, "PAE");
    cr_assert_eq(sregs.efer & 0x500, 0x500, "LME and LMA");

    kvm_ioctl_ok(vcpus[1], KVM_GET_REGS, &regs, "KVM_GET_REGS(1)");
    cr_assert_neq(regs.rip, 0x1000040, "vCPU 1 must not be given the entry");
    struct kvm_mp_state mp_state;
    kvm_ioctl_ok(vcpus[1], KVM_GET_MP_STATE, &mp_state, "KVM_GET_MP_STATE(1)");
    cr_assert_eq(mp_state.mp_state, KVM_MP_STATE_UNINITIALIZED, "vCPU 1 waits for INIT/SIPI");

    for (unsigned i = 0; i < 2; i++) {
        struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + 2 * sizeof(struct kvm_msr_entry));
        cr_assert_not_null(msrs);
        msrs->nmsrs = 2;
        msrs->entries[0].index = 0x2ff;  /* MTRRdefType */
        msrs->entries[1].index = 0x1a0;  /* MISC_ENABLE */
        cr_assert_eq(kvm_ioctl_ok(vcpus[i], KVM_GET_MSRS, msrs, "KVM_GET_MSRS"), 2);
        cr_assert_eq(msrs->entries[0].data, 0x806, "vCPU %u MTRRdefType", i);
        cr_assert_eq(msrs->entries[1].data & 1, 1, "vCPU %u FAST_STRING", i);
        free(msrs);
        struct kvm_lapic_state lapic;
        kvm_ioctl_ok(vcpus[i], KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC");
        cr_assert_eq(lapic_register(&lapic, 0x350) & 0x700, 0x700, "vCPU %u LINT0 ExtINT", i);
        cr_assert_eq(lapic_register(&lapic, 0x360) & 0x700, 0x400, "vCPU %u LINT1 NMI", i);
        struct kvm_cpuid2 *cpuid = cpuid_allocate(supported->nent + 8);
        cr_assert_not_null(cpuid);
        kvm_ioctl_ok(vcpus[i], KVM_GET_CPUID2, cpuid, "KVM_GET_CPUID2");
        struct kvm_cpuid_entry2 *leaf1 = cpuid_find(cpuid, 1, 0);
        cr_assert_not_null(leaf1);
        cr_assert_eq(leaf1->ebx >> 24, i, "vCPU %u initial APIC id", i);
        cr_assert_eq(leaf1->ecx >> 31, 1, "hypervisor bit");
        free(cpuid);
    }

    free(supported);
    free(image);
    close(vcpus[0]);
    close(vcpus[1]);
    close(vm);
    close(kvm);
    guest_memory_destroy(&memory);
}
