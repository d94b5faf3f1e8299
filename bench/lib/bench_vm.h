/*
 * The VM every migration benchmark starts: serial output off, the in-kernel
 * irqchip, RAM on any NUMA node, the default dirty-log configuration with
 * the mode asked for. Shared by bench/migrate.c, bench/postcopy.c and bench/handover.c (bench/
 * programs are one file each; bench/lib/ is linked into all of them).
 *
 * Ownership: plain functions; the caller owns the VM it gets.
 */
#ifndef RINGVM_BENCH_LIB_BENCH_VM_H
#define RINGVM_BENCH_LIB_BENCH_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dirtyring/dirty_log.h"

struct vm;

struct bench_vm_options {
    uint64_t memory;
    unsigned vcpus;
    const char *workload;           /* --workload text */
    enum dirty_log_mode dirty_log;
    bool incoming;                  /* a migration destination: its vCPUs wait for the state */
    bool prealloc;                  /* guest RAM faulted in at creation */
    uint64_t bitmap_clear_chunk;    /* bytes; 0 = the default */
    bool ring_reset_at_take;        /* ringvm --ring-reset take */
    bool anonymous_ram;             /* ringvm --ram anonymous */
};

/* Creates and starts the VM. 0, or -1 with the reason on stderr, prefixed
 * with `program` ("bench/migrate"). */
int bench_vm_start(struct vm **out, const struct bench_vm_options *options, const char *program);

/* Ends a VM: releases its migration, asks it to shut down, waits for its
 * threads and frees it. NULL is ignored. */
void bench_vm_stop(struct vm *vm);

/* A migration listener for a destination in this process: a Unix socket
 * under /tmp (unix:/tmp/ringvm-bench-PROGRAM-PID-N.sock, unique within the
 * process) or TCP on 127.0.0.1 at a port the kernel picks; the address
 * ringctl and migration.start take ("unix:PATH", "tcp:127.0.0.1:PORT") in
 * address. The listening fd, or -1 with the reason on stderr prefixed with
 * `program`. The caller unlinks a unix: path when done. */
int bench_vm_listen(bool tcp, const char *program, char *address, size_t size);

/* Pages the guest has written so far on its first `vcpus` vCPUs (the
 * workload's own counters in guest RAM). */
uint64_t bench_guest_pages_written(struct vm *vm, unsigned vcpus);

/* Waits for the steady state: each of the first `vcpus` vCPUs has covered
 * its part of the working set once (first touches allocate guest RAM and
 * are much slower than rewrites). false after timeout_ms. */
bool bench_wait_for_first_pass(struct vm *vm, unsigned vcpus, unsigned timeout_ms);

#endif
