/*
 * Data extents of guest RAM and discards, for memfd and anonymous RAM
 * (memory_extents.h). Anonymous RAM has no file to ask, so its extents
 * come from /proc/self/pagemap: a page holds data when it is present in
 * this process's page tables or swapped out. Readable by any process for
 * its own mappings (only the frame numbers need CAP_SYS_ADMIN, and they
 * are not used).
 */
#include "vmm/memory_extents.h"
#include "vmm/page_bitmap.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef SEEK_DATA
#define SEEK_DATA 3
#define SEEK_HOLE 4
#endif

#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_SWAPPED (1ull << 62)
/* Entries read per pread, on the caller's stack: 32 KiB of pagemap
 * describes 16 MiB of RAM. */
#define PAGEMAP_BATCH 4096u

/* Opened once per process, never closed: every RAM of this process is
 * described by the same file, and pread keeps concurrent readers apart. */
static pthread_once_t pagemap_once = PTHREAD_ONCE_INIT;
static int pagemap_fd = -1;
static int pagemap_errno;

static void pagemap_open(void)
{
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap_fd < 0)
        pagemap_errno = errno;
}

/* data_end NULL: only where the extent starts. Why it matters: shmem
 * answers SEEK_DATA by skipping empty parts of the file's page cache,
 * cheaply, but SEEK_HOLE by visiting every page of the data it starts in,
 * to its end: ~1 ms per 256 MiB of data, which a caller asking about a
 * few pages (a post-copy page request) should not pay every time. */
static int file_next_data(const struct guest_ram *ram, uint64_t from, uint64_t pages, uint64_t *data_start,
                          uint64_t *data_end)
{
    off_t data = lseek(ram->memfd, (off_t)(from * GUEST_RAM_PAGE), SEEK_DATA);
    if (data < 0 && errno == ENXIO) {
        *data_start = pages;
        if (data_end != NULL)
            *data_end = pages;
        return 0;
    }
    if (data < 0)
        return -errno;
    *data_start = (uint64_t)data / GUEST_RAM_PAGE;
    if (data_end == NULL)
        return 0;
    off_t hole = lseek(ram->memfd, data, SEEK_HOLE);
    if (hole < 0)
        return -errno;
    *data_end = ((uint64_t)hole + GUEST_RAM_PAGE - 1) / GUEST_RAM_PAGE;
    return 0;
}

/* The first page in [from, pages) whose "holds data" equals want, or pages.
 * Reads start small and double: on RAM written in short runs an extent
 * ends within a few entries, and a full batch per call would read the
 * pagemap many times over. */
static int pagemap_find(const struct guest_ram *ram, uint64_t from, uint64_t pages, bool want, uint64_t *found)
{
    uint64_t entries[PAGEMAP_BATCH];
    uint64_t first_virtual_page = (uint64_t)(uintptr_t)ram->host / GUEST_RAM_PAGE;
    uint64_t batch = 64;
    for (uint64_t page = from; page < pages; batch = batch < PAGEMAP_BATCH ? 2 * batch : PAGEMAP_BATCH) {
        uint64_t count = pages - page < batch ? pages - page : batch;
        ssize_t got = pread(pagemap_fd, entries, count * sizeof(entries[0]),
                            (off_t)((first_virtual_page + page) * sizeof(entries[0])));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -errno;
        if ((size_t)got < sizeof(entries[0]))
            return -EIO;
        count = (uint64_t)got / sizeof(entries[0]);
        for (uint64_t i = 0; i < count; i++) {
            bool data = (entries[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED)) != 0;
            if (data == want) {
                *found = page + i;
                return 0;
            }
        }
        page += count;
    }
    *found = pages;
    return 0;
}

/* The next data extent at or after from, looking no further than page
 * limit (<= the RAM's pages): [*data_start, *data_end) clamped to limit.
 * data_end NULL: only where it starts (cheaper, see file_next_data). */
static int next_data_within(const struct guest_ram *ram, uint64_t from, uint64_t limit, uint64_t *data_start,
                            uint64_t *data_end)
{
    if (from >= limit) {
        *data_start = limit;
        if (data_end != NULL)
            *data_end = limit;
        return 0;
    }
    if (ram->memfd >= 0) {
        int result = file_next_data(ram, from, limit, data_start, data_end);
        if (result != 0)
            return result;
    } else {
        pthread_once(&pagemap_once, pagemap_open);
        if (pagemap_fd < 0)
            return -pagemap_errno;
        int result = pagemap_find(ram, from, limit, true, data_start);
        if (data_end != NULL) {
            if (result == 0 && *data_start < limit)
                result = pagemap_find(ram, *data_start + 1, limit, false, data_end);
            else
                *data_end = limit;
        }
        if (result != 0)
            return result;
    }
    if (*data_start > limit)
        *data_start = limit;
    if (data_end != NULL && *data_end > limit)
        *data_end = limit;
    return 0;
}

int guest_ram_next_data(const struct guest_ram *ram, uint64_t from, uint64_t *data_start, uint64_t *data_end)
{
    return next_data_within(ram, from, ram->size / GUEST_RAM_PAGE, data_start, data_end);
}

int guest_ram_holds_data(const struct guest_ram *ram, uint64_t first, uint64_t count)
{
    uint64_t pages = ram->size / GUEST_RAM_PAGE;
    uint64_t limit = first < pages && count < pages - first ? first + count : pages;
    uint64_t data_start;
    int result = next_data_within(ram, first, limit, &data_start, NULL);
    return result != 0 ? result : data_start < limit;
}

/* mincore's steps: 16 MiB of RAM per call, its vector on the stack. */
#define DATA_MAP_STEP 4096u

static void data_map_set(uint64_t *bits, uint64_t first, uint64_t end)
{
    for (uint64_t page = first; page < end; page++)
        page_bitmap_set(bits, page);
}

/* A memfd's non-resident pages [first, end): holes, or data swapped out,
 * which SEEK_DATA finds (walking holes only); from there page by page to
 * the run's end (SEEK_HOLE would walk on through the data after it). */
static int data_map_non_resident(const struct guest_ram *ram, uint64_t *bits, uint64_t first, uint64_t end)
{
    for (uint64_t page = first; page < end;) {
        uint64_t data_start;
        int result = next_data_within(ram, page, end, &data_start, NULL);
        if (result != 0)
            return result;
        if (data_start >= end)
            return 0;
        uint64_t next = data_start + 1;
        while (next < end && guest_ram_page_holds_data(ram, next) == 1)
            next++;
        data_map_set(bits, data_start, next);
        page = next;
    }
    return 0;
}

int guest_ram_data_map(const struct guest_ram *ram, uint64_t *bits)
{
    uint64_t pages = ram->size / GUEST_RAM_PAGE;
    memset(bits, 0, page_bitmap_words(pages) * sizeof(uint64_t));
    if (ram->memfd < 0) {
        for (uint64_t page = 0; page < pages;) {
            uint64_t data_start, data_end;
            int result = guest_ram_next_data(ram, page, &data_start, &data_end);
            if (result != 0)
                return result;
            data_map_set(bits, data_start, data_end);
            page = data_end > page ? data_end : pages;
        }
        return 0;
    }
    unsigned char resident[DATA_MAP_STEP];
    uint64_t run = UINT64_MAX;      /* first page of the non-resident run going on, if any */
    for (uint64_t step = 0; step < pages; step += DATA_MAP_STEP) {
        uint64_t count = pages - step < DATA_MAP_STEP ? pages - step : DATA_MAP_STEP;
        if (mincore(ram->host + step * GUEST_RAM_PAGE, count * GUEST_RAM_PAGE, resident) != 0)
            return -errno;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t page = step + i;
            if (!(resident[i] & 1)) {
                if (run == UINT64_MAX)
                    run = page;
                continue;
            }
            if (run != UINT64_MAX) {
                int result = data_map_non_resident(ram, bits, run, page);
                if (result != 0)
                    return result;
                run = UINT64_MAX;
            }
            page_bitmap_set(bits, page);
        }
    }
    return run != UINT64_MAX ? data_map_non_resident(ram, bits, run, pages) : 0;
}

int guest_ram_page_holds_data(const struct guest_ram *ram, uint64_t page)
{
    if (page >= ram->size / GUEST_RAM_PAGE)
        return 0;
    if (ram->memfd < 0)
        return guest_ram_holds_data(ram, page, 1);
    /* In the page cache (or its swap cache): data. Otherwise a hole, or
     * data swapped out: SEEK_HOLE answers at once from inside a hole,
     * where SEEK_DATA would walk the whole hole after the page (5 ms per
     * request in post-copy when the guest reaches pages its source never
     * wrote: docs/benchmarks.md). */
    unsigned char resident = 0;
    if (mincore(ram->host + page * GUEST_RAM_PAGE, GUEST_RAM_PAGE, &resident) == 0 && (resident & 1))
        return 1;
    off_t hole = lseek(ram->memfd, (off_t)(page * GUEST_RAM_PAGE), SEEK_HOLE);
    if (hole < 0)
        return -errno;
    return (uint64_t)hole != page * GUEST_RAM_PAGE;
}

int guest_ram_discard(const struct guest_ram *ram, uint64_t offset, uint64_t length, char *error,
                      size_t error_size)
{
    if (offset % GUEST_RAM_PAGE != 0 || length % GUEST_RAM_PAGE != 0 || offset > ram->size ||
        length > ram->size - offset) {
        snprintf(error, error_size, "discarding 0x%" PRIx64 " + %" PRIu64 " bytes of %" PRIu64 " bytes of guest RAM: "
                 "not whole pages inside it", offset, length, ram->size);
        return -EINVAL;
    }
    if (ram->memfd >= 0) {
        if (fallocate(ram->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) != 0) {
            int saved = errno;
            snprintf(error, error_size, "fallocate(guest RAM memfd, PUNCH_HOLE, 0x%" PRIx64 " + %" PRIu64
                     " bytes): %s", offset, length, strerror(saved));
            return -saved;
        }
    } else if (madvise(ram->host + offset, length, MADV_DONTNEED) != 0) {
        int saved = errno;
        snprintf(error, error_size, "madvise(anonymous guest RAM +0x%" PRIx64 ", %" PRIu64 " bytes, DONTNEED): %s",
                 offset, length, strerror(saved));
        return -saved;
    }
    uint64_t data_start, data_end;
    int result = next_data_within(ram, offset / GUEST_RAM_PAGE, (offset + length) / GUEST_RAM_PAGE, &data_start,
                                  &data_end);
    if (result != 0) {
        snprintf(error, error_size, "checking the discard of 0x%" PRIx64 " + %" PRIu64 " bytes of guest RAM (%s): %s",
                 offset, length, ram->memfd >= 0 ? "SEEK_DATA" : "/proc/self/pagemap", strerror(-result));
        return result;
    }
    if (data_start < (offset + length) / GUEST_RAM_PAGE) {
        snprintf(error, error_size, "discarding 0x%" PRIx64 " + %" PRIu64 " bytes of guest RAM left data at 0x%" PRIx64
                 ": the range is inside a huge page the kernel could not split (zeroed, still present)", offset,
                 length, data_start * GUEST_RAM_PAGE);
        return -EBUSY;
    }
    return 0;
}
