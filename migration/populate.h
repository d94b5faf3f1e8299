/*
 * The destination's populating thread ("mig-populate"): faults guest RAM in
 * with MADV_POPULATE_WRITE, in 2 MiB chunks, up to MIG_POPULATE_AHEAD bytes
 * ahead of the receiver's frontier (the start of the data run it is
 * writing; struct mig_receiver.frontier). Iteration 0 arrives in RAM-offset
 * order, so the receiver mostly finds its pages allocated already; RAM the
 * source sends as zero runs (memfd holes) is skipped with the frontier and
 * never allocated.
 *
 * What it saves depends on the host (docs/benchmarks.md, bench/ram-backing):
 * the page allocation and the fault, moved off the receiver's thread. What
 * the receiver's first write through the populated mapping still costs
 * differs between hosts of one kind: ~4.5 us a page on the PVM machine of
 * 2026-12-04, nothing measurable (5-6 GiB/s, as a second write) on the one
 * of 2026-12-05 once its memory was warm. These machines also hand freed
 * memory back to the hypervisor below, whose own first touch is 10-15x
 * the rest (docs/benchmarks.md, "Host memory on these machines").
 *
 * Ownership: struct mig_populate belongs to the thread that starts and
 * stops it (the incoming thread); stop and done are atomics shared with
 * the populater, which only reads host/size/frontier.
 */
#ifndef RINGVM_MIGRATION_POPULATE_H
#define RINGVM_MIGRATION_POPULATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define MIG_POPULATE_CHUNK (2ull << 20)
#define MIG_POPULATE_AHEAD (64ull << 20)

struct mig_populate {
    uint8_t *host;
    uint64_t size;
    const _Atomic uint64_t *frontier;
    _Atomic bool stop;
    _Atomic uint64_t done;          /* bytes populated */
    pthread_t thread;
    bool started;
};

/* Starts the thread over [host, host + size) following *frontier. 0, or
 * -1 when the thread cannot be created (the caller goes on without: the
 * receiver then faults its pages in itself). */
int mig_populate_start(struct mig_populate *populate, uint8_t *host, uint64_t size,
                       const _Atomic uint64_t *frontier);
/* Stops and joins the thread; a no-op when it is not running. Called
 * before anything punches holes in RAM (a post-copy discard), which the
 * populater would otherwise fill again. */
void mig_populate_stop(struct mig_populate *populate);
/* Bytes populated so far. */
uint64_t mig_populate_done(const struct mig_populate *populate);

#endif
