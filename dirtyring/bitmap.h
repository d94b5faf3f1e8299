/*
 * Bitmap dirty logging (the A/B baseline): KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
 * without KVM_DIRTY_LOG_INITIALLY_SET, and a sync thread ("dirtysync") that
 * every sync_ms does, per memslot, KVM_GET_DIRTY_LOG then KVM_CLEAR_DIRTY_LOG
 * of exactly the bits it got, then marks them in the dirty set.
 *
 * Marking only after the CLEAR is what makes the hand-over safe: a page
 * enters the dirty set only once it is write-protected again, so any write
 * after the migration reads it is logged anew. (Marking before the clear
 * would let a write between the migration's read and the clear be wiped by
 * the clear.)
 *
 * Ownership / threads:
 *   - vm_fd, memory, set, slot buffers: immutable between create and destroy
 *     (the buffers' contents only under sync_lock).
 *   - sync_lock serializes syncs (the thread, dirty_log_take, final sync).
 *   - thread/stop/cond: the controller (facade, under its control lock)
 *     starts and stops the thread.
 *   - counters: atomics written under sync_lock, read by anyone.
 */
#ifndef RINGVM_DIRTYRING_BITMAP_H
#define RINGVM_DIRTYRING_BITMAP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmm/memory.h"

struct dirty_set;

struct bitmap_sync {
    int vm_fd;
    const struct guest_memory *memory;
    struct dirty_set *set;
    unsigned sync_ms;
    uint64_t *slot_bitmap[GUEST_MEMORY_MAX_SLOTS];
    uint64_t slot_words[GUEST_MEMORY_MAX_SLOTS];

    pthread_mutex_t sync_lock;

    pthread_t thread;
    bool running;
    pthread_mutex_t lock;           /* stop + cond */
    pthread_cond_t cond;
    bool stop;
    clockid_t cpu_clock;
    bool cpu_clock_valid;
    uint64_t retired_cpu_ns;        /* controller only */
    _Atomic uint64_t cpu_ns_at_exit;

    _Atomic uint64_t syncs;
    _Atomic uint64_t sync_ns_total;
    _Atomic uint64_t sync_ns_last;
    _Atomic uint64_t pages;         /* dirty bits collected */
    _Atomic uint64_t last_sync_ns;  /* CLOCK_MONOTONIC of the last sync */
    _Atomic uint64_t get_ns_last;   /* KVM_GET_DIRTY_LOG + scan, last sync */
    _Atomic uint64_t clear_ns_last; /* KVM_CLEAR_DIRTY_LOG (re-protection), last sync */
};

/* KVM_CHECK_EXTENSION + KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2, ENABLE).
 * Must run before the memslots get KVM_MEM_LOG_DIRTY_PAGES. */
int bitmap_enable_manual_protect(int vm_fd);

int bitmap_sync_init(struct bitmap_sync *b, int vm_fd, const struct guest_memory *memory,
                     struct dirty_set *set, unsigned sync_ms);
void bitmap_sync_fini(struct bitmap_sync *b);

/* One GET + CLEAR + mark pass over every slot. Returns pages newly found
 * dirty by KVM or -errno (message printed). */
int64_t bitmap_sync_once(struct bitmap_sync *b);

int bitmap_sync_start(struct bitmap_sync *b);
void bitmap_sync_stop(struct bitmap_sync *b);
uint64_t bitmap_sync_cpu_ns(const struct bitmap_sync *b);

#endif
