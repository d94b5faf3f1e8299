/*
 * Guest RAM's page sizes (vmm/memory.h), no KVM needed: the transparent
 * huge page advice on the mapping (on by default, off with --no-thp and on
 * hugetlbfs, dropped before a post-copy destination discards, kept when a
 * local hand-over replaces the backing) and guest_memory_punch_hole, which
 * a post-copy discard relies on: the range must be a hole afterwards, or
 * the guest would read zeros where the next touch should have faulted.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tests/harness.h"
#include "vmm/memory.h"

#define MIB (1ull << 20)
#define RAM_SIZE (16 * MIB)

/* The VmFlags line of the mapping that starts at `start` in
 * /proc/self/smaps, and (if wanted) its ShmemPmdMapped kB. */
static void mapping_flags(const void *start, char *flags, size_t size, unsigned long *pmd_mapped_kb)
{
    FILE *smaps = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(smaps, "fopen(/proc/self/smaps): %s", strerror(errno));
    char line[512];
    bool inside = false, found = false;
    flags[0] = '\0';
    if (pmd_mapped_kb != NULL)
        *pmd_mapped_kb = 0;
    while (fgets(line, sizeof(line), smaps) != NULL) {
        unsigned long low, high;
        /* A mapping's first line ("7f12...-7f13... rw-s ..."); field lines
         * ("AnonHugePages: ...") fail the '-' after the first number. */
        if (sscanf(line, "%lx-%lx ", &low, &high) == 2) {
            inside = low == (unsigned long)start;
            continue;
        }
        if (!inside)
            continue;
        unsigned long kb;
        if (pmd_mapped_kb != NULL && sscanf(line, "ShmemPmdMapped: %lu kB", &kb) == 1)
            *pmd_mapped_kb = kb;
        if (strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(flags, size, "%s", line + 8);
            found = true;
            break;
        }
    }
    fclose(smaps);
    cr_assert(found, "no mapping at %p in /proc/self/smaps", start);
}

static bool has_flag(const char *flags, const char *flag)
{
    size_t length = strlen(flag);
    for (const char *at = strstr(flags, flag); at != NULL; at = strstr(at + 1, flag))
        if ((at == flags || at[-1] == ' ') && (at[length] == ' ' || at[length] == '\n' || at[length] == '\0'))
            return true;
    return false;
}

Test(guest_memory_pages, transparent_huge_pages_are_asked_for_by_default)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    char flags[512];
    mapping_flags(memory.host, flags, sizeof(flags), NULL);
    cr_assert(memory.thp_advised);
    cr_assert(has_flag(flags, "hg"), "no MADV_HUGEPAGE (hg) on guest RAM: VmFlags%s", flags);
    cr_assert_not(has_flag(flags, "nh"), "VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

Test(guest_memory_pages, no_thp_leaves_the_mapping_without_advice)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .no_thp = true }), 0);
    char flags[512];
    mapping_flags(memory.host, flags, sizeof(flags), NULL);
    cr_assert_not(memory.thp_advised);
    cr_assert_not(has_flag(flags, "hg"), "--no-thp RAM advised anyway: VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

Test(guest_memory_pages, a_post_copy_destination_forgoes_them_and_a_new_backing_keeps_the_advice)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    char flags[512];

    /* A local hand-over maps the source's memfd over the old mapping
     * (MAP_FIXED: a new VMA, which would lose the advice). */
    int other = memfd_create("ringvm-test-ram", MFD_CLOEXEC);
    cr_assert_geq(other, 0);
    cr_assert_eq(ftruncate(other, RAM_SIZE), 0);
    char error[300];
    cr_assert_eq(guest_memory_replace_backing(&memory, other, error, sizeof(error)), 0, "%s", error);
    mapping_flags(memory.host, flags, sizeof(flags), NULL);
    cr_assert(has_flag(flags, "hg"), "the replaced backing lost MADV_HUGEPAGE: VmFlags%s", flags);

    guest_memory_forgo_thp(&memory);
    mapping_flags(memory.host, flags, sizeof(flags), NULL);
    cr_assert_not(memory.thp_advised);
    cr_assert(has_flag(flags, "nh"), "no MADV_NOHUGEPAGE (nh) after guest_memory_forgo_thp: VmFlags%s", flags);
    cr_assert_not(has_flag(flags, "hg"), "VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

Test(guest_memory_pages, hugetlbfs_ram_gets_no_transparent_advice)
{
    harness_require_free_huge_pages(RAM_SIZE / (2 * MIB));
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .hugepages = true }), 0);
    char flags[512];
    mapping_flags(memory.host, flags, sizeof(flags), NULL);
    cr_assert_not(memory.thp_advised);
    cr_assert_not(has_flag(flags, "hg"), "VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

static void fill_pages(uint8_t *host, uint64_t first, uint64_t count)
{
    for (uint64_t page = first; page < first + count; page++)
        memset(host + page * 4096, (int)(0x40 + page % 64), 4096);
}

static void expect_data_from(int memfd, uint64_t offset, uint64_t expected)
{
    off_t data = lseek(memfd, (off_t)offset, SEEK_DATA);
    cr_assert_eq((uint64_t)data, expected, "SEEK_DATA from 0x%" PRIx64 ": 0x%llx, expected 0x%" PRIx64, offset,
                 (long long)data, expected);
}

Test(guest_memory_pages, punch_hole_leaves_a_hole_that_reads_as_zero)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .no_thp = true }), 0);
    fill_pages(memory.host, 0, 8);
    char error[300];
    cr_assert_eq(guest_memory_punch_hole(memory.memfd, 2 * 4096, 3 * 4096, error, sizeof(error)), 0, "%s", error);
    expect_data_from(memory.memfd, 2 * 4096, 5 * 4096);
    static const uint8_t zero[4096];
    for (uint64_t page = 0; page < 8; page++) {
        if (page >= 2 && page < 5) {
            cr_assert_eq(memcmp(memory.host + page * 4096, zero, 4096), 0, "page %" PRIu64 " not zero", page);
        } else {
            cr_assert_eq(memory.host[page * 4096], 0x40 + page, "page %" PRIu64 " lost its data", page);
            cr_assert_eq(memory.host[page * 4096 + 4095], 0x40 + page);
        }
    }
    guest_memory_destroy(&memory);
}

Test(guest_memory_pages, punch_hole_outside_the_memfd_names_the_call)
{
    char error[300];
    cr_assert_eq(guest_memory_punch_hole(-1, 0x3000, 4096, error, sizeof(error)), -EBADF);
    cr_assert_str_eq(error, "fallocate(guest RAM memfd, PUNCH_HOLE, 0x3000 + 4096 bytes): Bad file descriptor");
}

/* hugetlbfs cannot free part of a 2 MiB page: the punch zeroes it and the
 * page stays, the case a transparent huge page the kernel cannot split
 * would give; guest_memory_punch_hole must refuse it. */
Test(guest_memory_pages, punch_hole_that_leaves_the_page_present_is_refused)
{
    harness_require_free_huge_pages(RAM_SIZE / (2 * MIB));
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .hugepages = true }), 0);
    fill_pages(memory.host, 0, 8);
    char error[300];
    cr_assert_eq(guest_memory_punch_hole(memory.memfd, 0x1000, 4096, error, sizeof(error)), -EBUSY, "%s", error);
    cr_assert_str_eq(error, "PUNCH_HOLE of 0x1000 + 4096 bytes left data at 0x1000: the range is inside a huge "
                            "page the kernel could not split (zeroed, still present)");
    guest_memory_destroy(&memory);
}

/* Where the host grants transparent huge pages to memfd RAM: a discard of
 * one 4 KiB page inside a huge page splits it and leaves a real hole. */
Test(guest_memory_pages, punch_hole_inside_a_transparent_huge_page_splits_it)
{
    harness_require_thp();
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    cr_assert_eq(guest_memory_populate(&memory, 0, RAM_SIZE), 0);
    fill_pages(memory.host, 0, RAM_SIZE / 4096);
    char flags[512];
    unsigned long pmd_mapped_kb;
    mapping_flags(memory.host, flags, sizeof(flags), &pmd_mapped_kb);
    if (pmd_mapped_kb == 0)
        harness_skip("the host granted no huge page to 16 MiB of advised RAM (fragmented memory?)");
    char error[300];
    cr_assert_eq(guest_memory_punch_hole(memory.memfd, 2 * MIB + 0x5000, 4096, error, sizeof(error)), 0, "%s",
                 error);
    expect_data_from(memory.memfd, 2 * MIB + 0x5000, 2 * MIB + 0x6000);
    static const uint8_t zero[4096];
    cr_assert_eq(memcmp(memory.host + 2 * MIB + 0x5000, zero, 4096), 0);
    cr_assert_eq(memory.host[2 * MIB + 0x4000], 0x40 + (2 * MIB + 0x4000) / 4096 % 64);
    cr_assert_eq(memory.host[2 * MIB + 0x6000], 0x40 + (2 * MIB + 0x6000) / 4096 % 64);
    guest_memory_destroy(&memory);
}
