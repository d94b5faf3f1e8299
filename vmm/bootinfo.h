/*
 * The boot info page (struct ringvm_bootinfo, guest/abi.h) the VMM writes
 * before the guest starts: workload parameters and the per-vCPU layout of
 * working-set regions and ledger tables. Pure (no KVM), unit-tested.
 *
 * Layout: each vCPU's region is wss/vcpu_count pages (the first
 * wss_pages % vcpu_count vCPUs get one page more), placed one after the
 * other from RINGVM_WORKLOAD_BASE; the ledger tables (uint32 per page,
 * rounded up to whole pages) follow all regions. Nothing straddles the
 * 3-4 GiB hole: a region or table that does not fit below the end of low
 * RAM starts at RINGVM_HIGH_RAM_BASE instead (and everything after it
 * stays there). Only dirtier and ledger get regions; idle/fault get none.
 */
#ifndef RINGVM_VMM_BOOTINFO_H
#define RINGVM_VMM_BOOTINFO_H

#include <stddef.h>
#include <stdint.h>

#include "guest/abi.h"
#include "vmm/memory.h"
#include "vmm/workload.h"

/* Fills *info (zeroing it first). Returns 0, or -1 with a one-line message
 * (no "ringvm: " prefix) in error, e.g.
 * "--workload: wss 2G plus ledger tables does not fit in 1G of guest memory". */
int bootinfo_build(struct ringvm_bootinfo *info, const struct workload_spec *spec,
                   const struct guest_memory *memory, unsigned vcpu_count, uint64_t tsc_khz,
                   char *error, size_t error_size);

#endif
