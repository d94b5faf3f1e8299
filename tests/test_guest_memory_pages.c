/*
 * Guest RAM's page sizes (vmm/memory.h), no KVM needed: the transparent
 * huge page advice on the mapping (on by default, off with --no-thp and on
 * hugetlbfs, dropped before a post-copy destination discards, kept when a
 * local hand-over replaces the backing), anonymous RAM (--ram anonymous),
 * and the page functions of vmm/memory_extents.h on both backings: which
 * pages hold data (what a migration skips as zero without reading) and
 * guest_ram_discard, which a post-copy discard relies on: the range must
 * hold no data afterwards, or the guest would read zeros where the next
 * touch should have faulted.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "migration/page_digest.h"
#include "tests/harness.h"
#include "vmm/memory_extents.h"

#define MIB (1ull << 20)
#define RAM_SIZE (16 * MIB)

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
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
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
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
    cr_assert_not(memory.thp_advised);
    cr_assert_not(has_flag(flags, "hg"), "--no-thp RAM advised anyway: VmFlags%s", flags);
    cr_assert(has_flag(flags, "nh"), "--no-thp RAM without MADV_NOHUGEPAGE: a host whose policy is always would "
                                     "give it huge pages: VmFlags%s", flags);
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
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
    cr_assert(has_flag(flags, "hg"), "the replaced backing lost MADV_HUGEPAGE: VmFlags%s", flags);

    guest_memory_forgo_thp(&memory);
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
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
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
    cr_assert_not(memory.thp_advised);
    cr_assert_not(has_flag(flags, "hg"), "VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

static void expect_extent(struct guest_ram *ram, uint64_t from, uint64_t start, uint64_t end)
{
    uint64_t data_start = 1, data_end = 1;
    cr_assert_eq(guest_ram_next_data(ram, from, &data_start, &data_end), 0);
    cr_assert(data_start == start && data_end == end,
              "%s RAM, next data from page %" PRIu64 ": [%" PRIu64 ", %" PRIu64 "), expected [%" PRIu64 ", %" PRIu64
              ")", ram->memfd >= 0 ? "memfd" : "anonymous", from, data_start, data_end, start, end);
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

/* Both backings: the discarded pages hold no data afterwards (a hole in
 * the memfd, not present in anonymous RAM) and read as zero; their
 * neighbours keep theirs. */
static void a_discard_leaves_pages_without_data_that_read_as_zero(bool anonymous)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .no_thp = true,
                                                                                       .anonymous = anonymous }),
                 0);
    fill_pages(memory.host, 0, 8);
    char error[300];
    struct guest_ram ram = guest_memory_ram(&memory);
    cr_assert_eq(guest_ram_discard(&ram, 2 * 4096, 3 * 4096, error, sizeof(error)), 0, "%s", error);
    if (!anonymous)
        expect_data_from(memory.memfd, 2 * 4096, 5 * 4096);
    expect_extent(&ram, 2, 5, 8);
    expect_extent(&ram, 0, 0, 2);
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

Test(guest_memory_pages, punch_hole_leaves_a_hole_that_reads_as_zero)
{
    a_discard_leaves_pages_without_data_that_read_as_zero(false);
}

Test(guest_memory_pages, an_anonymous_discard_leaves_pages_without_data_that_read_as_zero)
{
    a_discard_leaves_pages_without_data_that_read_as_zero(true);
}

Test(guest_memory_pages, punch_hole_that_fails_names_the_call)
{
    int closed = memfd_create("ringvm-test-closed", MFD_CLOEXEC);
    cr_assert_geq(closed, 0);
    cr_assert_eq(close(closed), 0);
    struct guest_ram ram = { .memfd = closed, .host = NULL, .size = RAM_SIZE };
    char error[300];
    cr_assert_eq(guest_ram_discard(&ram, 0x3000, 4096, error, sizeof(error)), -EBADF);
    cr_assert_str_eq(error, "fallocate(guest RAM memfd, PUNCH_HOLE, 0x3000 + 4096 bytes): Bad file descriptor");
}

Test(guest_memory_pages, a_discard_outside_guest_ram_or_of_part_of_a_page_is_refused)
{
    struct guest_ram ram = { .memfd = -1, .host = NULL, .size = RAM_SIZE };
    char error[300];
    cr_assert_eq(guest_ram_discard(&ram, RAM_SIZE - 4096, 8192, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "discarding 0xfff000 + 8192 bytes of 16777216 bytes of guest RAM: not whole pages "
                            "inside it");
    cr_assert_eq(guest_ram_discard(&ram, 0x1800, 4096, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "discarding 0x1800 + 4096 bytes of 16777216 bytes of guest RAM: not whole pages "
                            "inside it");
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
    struct guest_ram ram = guest_memory_ram(&memory);
    cr_assert_eq(guest_ram_discard(&ram, 0x1000, 4096, error, sizeof(error)), -EBUSY, "%s", error);
    cr_assert_str_eq(error, "discarding 0x1000 + 4096 bytes of guest RAM left data at 0x1000: the range is inside a "
                            "huge page the kernel could not split (zeroed, still present)");
    guest_memory_destroy(&memory);
}

/* Where the host grants transparent huge pages to shareable RAM (a memfd
 * where shmem_enabled allows, ringvm's own tmpfs elsewhere): a discard of
 * one 4 KiB page inside a huge page splits it and leaves a real hole. */
Test(guest_memory_pages, punch_hole_inside_a_transparent_huge_page_splits_it)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    harness_require_thp(&memory);
    struct guest_ram ram = guest_memory_ram(&memory);
    cr_assert_eq(guest_memory_populate(&memory, 0, RAM_SIZE), 0);
    fill_pages(memory.host, 0, RAM_SIZE / 4096);
    char flags[512];
    unsigned long huge_kb;
    harness_mapping_smaps(memory.host, flags, sizeof(flags), &huge_kb);
    if (huge_kb == 0)
        harness_skip("the host granted no huge page to 16 MiB of advised RAM (fragmented memory?)");
    char error[300];
    cr_assert_eq(guest_ram_discard(&ram, 2 * MIB + 0x5000, 4096, error, sizeof(error)), 0, "%s", error);
    expect_data_from(memory.memfd, 2 * MIB + 0x5000, 2 * MIB + 0x6000);
    static const uint8_t zero[4096];
    cr_assert_eq(memcmp(memory.host + 2 * MIB + 0x5000, zero, 4096), 0);
    cr_assert_eq(memory.host[2 * MIB + 0x4000], 0x40 + (2 * MIB + 0x4000) / 4096 % 64);
    cr_assert_eq(memory.host[2 * MIB + 0x6000], 0x40 + (2 * MIB + 0x6000) / 4096 % 64);
    guest_memory_destroy(&memory);
}

/* ---- anonymous RAM (--ram anonymous) and data extents on both backings ---- */

Test(guest_memory_pages, anonymous_ram_is_a_private_mapping_without_a_memfd_that_asks_for_huge_pages)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .anonymous = true }), 0);
    cr_assert_eq(memory.memfd, -1);
    cr_assert(guest_memory_anonymous(&memory));
    cr_assert(memory.thp_advised);
    char flags[512];
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
    cr_assert(has_flag(flags, "hg"), "no MADV_HUGEPAGE on anonymous RAM: VmFlags%s", flags);
    cr_assert_not(has_flag(flags, "sh"), "anonymous RAM is mapped shared: VmFlags%s", flags);
    cr_assert(has_flag(flags, "dc"), "anonymous RAM is inherited by a fork (no MADV_DONTFORK): VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

Test(guest_memory_pages, anonymous_ram_on_hugetlbfs_pages_is_refused)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .anonymous = true,
                                                                                       .hugepages = true }),
                 -EINVAL);
}


/* 4 KiB pages (--no-thp), so the extents are exactly the written pages. */
static void data_extents_are_the_written_pages(bool anonymous)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .no_thp = true,
                                                                                       .anonymous = anonymous }),
                 0);
    struct guest_ram ram = guest_memory_ram(&memory);
    uint64_t pages = RAM_SIZE / 4096;
    expect_extent(&ram, 0, pages, pages);
    fill_pages(memory.host, 3, 3);
    fill_pages(memory.host, 9, 1);
    memory.host[RAM_SIZE - 1] = 1;
    expect_extent(&ram, 0, 3, 6);
    expect_extent(&ram, 4, 4, 6);
    expect_extent(&ram, 6, 9, 10);
    expect_extent(&ram, 10, pages - 1, pages);
    expect_extent(&ram, pages, pages, pages);
    expect_extent(&ram, pages + 7, pages, pages);
    cr_assert_eq(guest_ram_holds_data(&ram, 0, 3), 0);
    cr_assert_eq(guest_ram_holds_data(&ram, 0, 4), 1);
    cr_assert_eq(guest_ram_holds_data(&ram, 5, 1), 1);
    cr_assert_eq(guest_ram_holds_data(&ram, 6, 3), 0);
    cr_assert_eq(guest_ram_holds_data(&ram, 6, 4), 1);
    cr_assert_eq(guest_ram_holds_data(&ram, 10, pages - 11), 0, "the last page is outside the range");
    cr_assert_eq(guest_ram_holds_data(&ram, pages - 1, 5), 1, "a count past the end stops at it");
    cr_assert_eq(guest_ram_holds_data(&ram, pages, 1), 0);
    /* One page at a time (pc-serve's question), every page of the RAM. */
    for (uint64_t page = 0; page < pages; page++) {
        int expected = (page >= 3 && page < 6) || page == 9 || page == pages - 1;
        cr_assert_eq(guest_ram_page_holds_data(&ram, page), expected, "page %" PRIu64, page);
    }
    cr_assert_eq(guest_ram_page_holds_data(&ram, pages), 0);
    cr_assert_eq(guest_ram_page_holds_data(&ram, UINT64_MAX), 0);
    /* A hole punched where data was (a post-copy discard): a hole again. */
    char error[200];
    cr_assert_eq(guest_ram_discard(&ram, 4 * 4096, 4096, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(guest_ram_page_holds_data(&ram, 4), 0);
    cr_assert_eq(guest_ram_page_holds_data(&ram, 3), 1);
    cr_assert_eq(guest_ram_page_holds_data(&ram, 5), 1);
    guest_memory_destroy(&memory);
}

/* The post-copy stream's map of which pages hold data: exactly the
 * written pages, on both backings, including a run of data that crosses
 * mincore's 4096-page steps and a punched hole inside it. */
static void the_data_map_is_the_written_pages(bool anonymous)
{
    uint64_t size = 64ull << 20;        /* 16384 pages: four mincore steps */
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, size, &(struct guest_memory_options){ .numa_node = -1,
                                                                                   .no_thp = true,
                                                                                   .anonymous = anonymous }),
                 0);
    struct guest_ram ram = guest_memory_ram(&memory);
    uint64_t pages = size / 4096;
    uint64_t *bits = calloc((pages + 63) / 64, sizeof(uint64_t));
    memset(bits, 0xff, (pages + 63) / 64 * sizeof(uint64_t));
    cr_assert_eq(guest_ram_data_map(&ram, bits), 0);
    for (uint64_t w = 0; w < pages / 64; w++)
        cr_assert_eq(bits[w], 0, "untouched RAM: word %" PRIu64 " = 0x%" PRIx64, w, bits[w]);
    fill_pages(memory.host, 0, 1);
    fill_pages(memory.host, 70, 3);
    fill_pages(memory.host, 4090, 12);  /* across the first step boundary (4096) */
    fill_pages(memory.host, pages - 1, 1);
    char error[200];
    cr_assert_eq(guest_ram_discard(&ram, 4095 * 4096ull, 4096, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(guest_ram_data_map(&ram, bits), 0);
    for (uint64_t page = 0; page < pages; page++) {
        bool expected = page == 0 || (page >= 70 && page < 73) || (page >= 4090 && page < 4102 && page != 4095) ||
                        page == pages - 1;
        cr_assert_eq((bits[page / 64] >> (page % 64)) & 1, expected, "%s RAM, page %" PRIu64,
                     anonymous ? "anonymous" : "memfd", page);
    }
    free(bits);
    guest_memory_destroy(&memory);
}

Test(guest_memory_pages, memfd_data_map_is_the_written_pages) { the_data_map_is_the_written_pages(false); }
Test(guest_memory_pages, anonymous_data_map_is_the_written_pages) { the_data_map_is_the_written_pages(true); }

Test(guest_memory_pages, memfd_data_extents_are_the_written_pages) { data_extents_are_the_written_pages(false); }
Test(guest_memory_pages, anonymous_data_extents_are_the_written_pages) { data_extents_are_the_written_pages(true); }

/* Where the host grants anonymous memory transparent huge pages (Debian's
 * default enabled = madvise): a discard of one 4 KiB page inside a huge
 * page splits it and leaves that page alone without data. */
Test(guest_memory_pages, an_anonymous_discard_inside_a_transparent_huge_page_splits_it)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .anonymous = true }), 0);
    harness_require_thp(&memory);
    cr_assert_eq(guest_memory_populate(&memory, 0, RAM_SIZE), 0);
    fill_pages(memory.host, 0, RAM_SIZE / 4096);
    if (harness_mapping_huge_kb(memory.host) == 0)
        harness_skip("the host granted no huge page to 16 MiB of advised anonymous RAM (fragmented memory?)");
    struct guest_ram ram = guest_memory_ram(&memory);
    char error[300];
    uint64_t page = (2 * MIB + 0x5000) / 4096;
    cr_assert_eq(guest_ram_discard(&ram, page * 4096, 4096, error, sizeof(error)), 0, "%s", error);
    expect_extent(&ram, page, page + 1, RAM_SIZE / 4096);
    expect_extent(&ram, 0, 0, page);
    static const uint8_t zero[4096];
    cr_assert_eq(memcmp(memory.host + page * 4096, zero, 4096), 0);
    cr_assert_eq(memory.host[(page - 1) * 4096], 0x40 + (page - 1) % 64);
    cr_assert_eq(memory.host[(page + 1) * 4096], 0x40 + (page + 1) % 64);
    guest_memory_destroy(&memory);
}

/* A local hand-over's destination started with anonymous RAM (refused by
 * ringvm's options, allowed here): the source's memfd replaces it and the
 * RAM is memfd RAM from then on. */
Test(guest_memory_pages, anonymous_ram_replaced_by_a_memfd_becomes_memfd_ram)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .anonymous = true }), 0);
    fill_pages(memory.host, 0, 1);
    int other = memfd_create("ringvm-test-ram", MFD_CLOEXEC);
    cr_assert_geq(other, 0);
    cr_assert_eq(ftruncate(other, RAM_SIZE), 0);
    cr_assert_eq(pwrite(other, "source", 6, 5 * 4096), 6);
    char error[300];
    cr_assert_eq(guest_memory_replace_backing(&memory, other, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(memory.memfd, other);
    cr_assert_not(guest_memory_anonymous(&memory));
    cr_assert_eq(memory.host[0], 0, "the anonymous page went with the old mapping");
    cr_assert_eq(memcmp(memory.host + 5 * 4096, "source", 6), 0);
    char flags[512];
    harness_mapping_smaps(memory.host, flags, sizeof(flags), NULL);
    cr_assert(has_flag(flags, "sh"), "the memfd is mapped shared: VmFlags%s", flags);
    guest_memory_destroy(&memory);
}

/* The same bytes give the same page digest (what verify_digest compares
 * across a migration) whichever backing holds them: a source on one and a
 * destination on the other agree. */
Test(guest_memory_pages, the_page_digest_is_the_same_on_both_backings)
{
    struct guest_memory memfd_ram, anonymous_ram;
    cr_assert_eq(guest_memory_create(&memfd_ram, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    cr_assert_eq(guest_memory_create(&anonymous_ram, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                              .anonymous = true }),
                 0);
    char memfd_hex[PAGE_DIGEST_HEX_SIZE], anonymous_hex[PAGE_DIGEST_HEX_SIZE], empty_hex[PAGE_DIGEST_HEX_SIZE];
    cr_assert_eq(page_digest_memory(&memfd_ram, empty_hex), 0);
    fill_pages(memfd_ram.host, 7, 2);
    fill_pages(anonymous_ram.host, 7, 2);
    memfd_ram.host[3 * MIB] = anonymous_ram.host[3 * MIB] = 0x5a;
    cr_assert_eq(page_digest_memory(&memfd_ram, memfd_hex), 0);
    cr_assert_eq(page_digest_memory(&anonymous_ram, anonymous_hex), 0);
    cr_assert_str_eq(memfd_hex, anonymous_hex);
    cr_assert_str_neq(memfd_hex, empty_hex);
    anonymous_ram.host[3 * MIB + 1] = 1;
    cr_assert_eq(page_digest_memory(&anonymous_ram, anonymous_hex), 0);
    cr_assert_str_neq(memfd_hex, anonymous_hex, "one byte more must change the digest");
    guest_memory_destroy(&memfd_ram);
    guest_memory_destroy(&anonymous_ram);
}

/* The start-up note (vmm/main.c) for RAM the host keeps on 4 KiB pages
 * although ringvm asked for huge pages: only a memfd with the advice, and
 * only where shmem_enabled does not grant it. */
Test(guest_memory_pages, the_small_pages_note_names_the_policy_only_where_it_denies_the_advice)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    /* As a host that gave the memfd (ringvm's own tmpfs not tried: the
     * fallback itself is test_ram_file.c's). */
    enum ram_file_kind made = memory.file_kind;
    memory.file_kind = RAM_FILE_MEMFD;
    memory.tmpfs_errno = 0;
    char note[512] = "untouched";
    cr_assert(guest_memory_small_pages_note(&memory, "never", note, sizeof(note)));
    cr_assert_str_eq(note, "guest RAM is a memfd on 4 KiB pages (shmem_enabled 'never' grants no huge pages): a "
                     "guest writing its memory runs ~15 % slower than on huge pages. For them: shmem_enabled "
                     "'advise' (root), --hugepages, or --ram anonymous (no local hand-over); --no-thp silences "
                     "this (docs/benchmarks-vs-qemu.md)");
    cr_assert(guest_memory_small_pages_note(&memory, "deny", note, sizeof(note)));
    cr_assert(guest_memory_small_pages_note(&memory, "unavailable", note, sizeof(note)));
    snprintf(note, sizeof(note), "untouched");
    static const char *const granting[] = { "advise", "always", "within_size", "force" };
    for (unsigned i = 0; i < sizeof(granting) / sizeof(granting[0]); i++)
        cr_assert_not(guest_memory_small_pages_note(&memory, granting[i], note, sizeof(note)), "%s", granting[i]);
    cr_assert_str_eq(note, "untouched");
    /* ringvm's own tmpfs: huge pages whatever shmem_enabled says. */
    memory.file_kind = RAM_FILE_TMPFS;
    cr_assert_not(guest_memory_small_pages_note(&memory, "never", note, sizeof(note)));
    memory.file_kind = made;
    guest_memory_destroy(&memory);

    /* --no-thp asked for 4 KiB pages; anonymous RAM follows enabled, not
     * shmem_enabled. */
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .no_thp = true }), 0);
    cr_assert_not(guest_memory_small_pages_note(&memory, "never", note, sizeof(note)));
    guest_memory_destroy(&memory);
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .anonymous = true }), 0);
    cr_assert_not(guest_memory_small_pages_note(&memory, "never", note, sizeof(note)));
    guest_memory_destroy(&memory);
    cr_assert_str_eq(note, "untouched");
}
