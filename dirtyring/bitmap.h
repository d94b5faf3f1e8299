/*
 * Bitmap dirty logging, the one bitmap mode: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
 * with KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET,
 * QEMU's clear_bmap design.
 *
 * With INITIALLY_SET, turning KVM_MEM_LOG_DIRTY_PAGES on sets every bit of
 * the slot's dirty bitmap and write-protects nothing; with manual protection
 * KVM_GET_DIRTY_LOG only copies the bitmap out (it neither clears nor
 * protects). A bit goes to 0 only through KVM_CLEAR_DIRTY_LOG, which
 * write-protects the page in the same step; the guest's next write to it
 * faults and sets the bit again. So at every moment each page is either
 * write-protected or has its bit set (invariant P); GET never loses a write.
 *
 * What this file keeps per slot: "uncleared", the bits KVM may have set that
 * we have not cleared yet (all of them when logging turns on: INITIALLY_SET),
 * and one "chunk" bit per clear chunk (chunk_pages pages, a multiple of 64:
 * KVM_CLEAR_DIRTY_LOG wants first_page and num_pages multiples of 64 except
 * at the slot's end) saying the chunk has uncleared bits. Chunks are
 * slot-relative: a chunk never spans two memslots.
 *
 * Two ways to use it (the facade, dirty_log.c, picks):
 *   - migration: bitmap_log_get at pass boundaries only (GET, no CLEAR; the
 *     bits go into the dirty set and into "uncleared"), and
 *     bitmap_log_protect(first_page, count) when the migration plans a page
 *     for sending: it CLEARs the uncleared bits of each chunk the range
 *     touches, so the page is write-protected before the sender reads it.
 *     Correctness: docs/architecture.md ("Bitmap mode: clear just before
 *     the read").
 *   - statistics outside a migration: the sync thread ("dirtysync") does
 *     GET then CLEAR of everything uncleared every sync_ms.
 *
 * Ownership / threads:
 *   - vm_fd, memory, set, chunk_pages, slot layout and buffer pointers:
 *     immutable between bitmap_log_init and bitmap_log_fini.
 *   - got/uncleared contents, uncleared_pages' updates and every GET/CLEAR
 *     ioctl: under lock (the sync thread, the facade's controller, the
 *     migration thread in bitmap_log_protect).
 *   - chunk bits: atomics written under lock; bitmap_log_protect reads them
 *     without the lock first (a clear bit means nothing to CLEAR), so the
 *     common case, a chunk already cleared, costs one load.
 *   - thread/running/retired_cpu_ns: the controller (facade, under its
 *     control lock) starts and stops the sync thread; stop/cond under
 *     thread_lock.
 *   - counters: atomics written under lock, read by anyone.
 */
#ifndef RINGVM_DIRTYRING_BITMAP_H
#define RINGVM_DIRTYRING_BITMAP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/memory.h"

struct dirty_set;

/* KVM_CLEAR_DIRTY_LOG's unit: 64 pages. The default and the range users
 * may choose are DIRTY_LOG_*_BITMAP_CLEAR_CHUNK in dirty_log.h. */
#define BITMAP_MIN_CLEAR_CHUNK_BYTES (64u * 4096u)

struct bitmap_slot {
    uint32_t slot;                  /* KVM memslot id */
    uint64_t first_page;            /* RAM page index of the slot's first page */
    uint64_t pages;
    uint64_t words;                 /* ceil(pages / 64) */
    uint64_t chunks;                /* ceil(pages / chunk_pages) */
    uint64_t *got;                  /* KVM_GET_DIRTY_LOG buffer */
    uint64_t *uncleared;            /* bits set by KVM, not CLEARed by us yet */
    _Atomic uint64_t *chunk_uncleared;  /* one bit per chunk with uncleared bits */
};

struct bitmap_log {
    int vm_fd;
    struct dirty_set *set;
    unsigned sync_ms;
    uint64_t chunk_pages;
    unsigned slot_count;
    struct bitmap_slot slots[GUEST_MEMORY_MAX_SLOTS];

    pthread_mutex_t lock;
    bool locks_ready;               /* lock, thread_lock, cond initialized */

    pthread_t thread;
    bool running;
    pthread_mutex_t thread_lock;    /* stop + cond */
    pthread_cond_t cond;
    bool stop;
    clockid_t cpu_clock;
    bool cpu_clock_valid;
    uint64_t retired_cpu_ns;        /* controller only */
    _Atomic uint64_t cpu_ns_at_exit;

    _Atomic uint64_t syncs;         /* GET passes over every slot */
    _Atomic uint64_t sync_ns_total;
    _Atomic uint64_t sync_ns_last;
    _Atomic uint64_t get_ns_last;   /* KVM_GET_DIRTY_LOG + scan, last pass */
    _Atomic uint64_t gets;          /* KVM_GET_DIRTY_LOG calls */
    _Atomic uint64_t clears;        /* KVM_CLEAR_DIRTY_LOG calls */
    _Atomic uint64_t cleared_pages; /* bits handed to CLEAR: pages write-protected again */
    _Atomic uint64_t clear_ns_total;
    _Atomic uint64_t clear_ns_last; /* the last CLEAR call */
    _Atomic uint64_t pages;         /* bits found newly set (not already uncleared) */
    _Atomic uint64_t uncleared_pages;   /* now */
};

/* KVM_CHECK_EXTENSION + KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2,
 * MANUAL_PROTECT_ENABLE | INITIALLY_SET); fails (-ENOTSUP, message naming
 * the missing flag) on a kernel without INITIALLY_SET. Must run before the
 * memslots get KVM_MEM_LOG_DIRTY_PAGES. */
int bitmap_enable_manual_protect(int vm_fd);

/* chunk_bytes: a multiple of 256 KiB (64 pages). 0 or -errno (message). */
int bitmap_log_init(struct bitmap_log *b, int vm_fd, const struct guest_memory *memory,
                    struct dirty_set *set, unsigned sync_ms, uint64_t chunk_bytes);
void bitmap_log_fini(struct bitmap_log *b);

/* Every bit counts as uncleared: call when logging turns on (KVM has just
 * set them all), and when a migration takes over tracking the statistics
 * kept on (pages they left writable are write-protected chunk by chunk as
 * the migration reaches them). No thread may be inside the other calls. */
void bitmap_log_all_uncleared(struct bitmap_log *b);

/* KVM_GET_DIRTY_LOG of every slot; the bits go into "uncleared" and, if
 * mark_set, into the dirty set. No CLEAR. Returns the number of bits set
 * or -errno (message printed). */
int64_t bitmap_log_get(struct bitmap_log *b, bool mark_set);

/* KVM_CLEAR_DIRTY_LOG of the uncleared bits of every chunk that
 * [first_page, first_page + count) touches (RAM page indices), so those
 * pages are write-protected once it returns. 0 or -errno (message). */
int bitmap_log_protect(struct bitmap_log *b, uint64_t first_page, uint64_t count);

/* One statistics sync: GET, then CLEAR of every uncleared bit. Returns
 * the bits newly found set or -errno. */
int64_t bitmap_log_sync_once(struct bitmap_log *b);

int bitmap_log_sync_start(struct bitmap_log *b);
void bitmap_log_sync_stop(struct bitmap_log *b);
uint64_t bitmap_log_sync_cpu_ns(const struct bitmap_log *b);

#endif
