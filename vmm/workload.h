/*
 * The --workload SPEC of the built-in guest: "NAME,key=value,...".
 * Parsing is pure (no KVM) so it is unit-tested on its own.
 */
#ifndef RINGVM_VMM_WORKLOAD_H
#define RINGVM_VMM_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "guest/abi.h"

struct workload_spec {
    enum ringvm_workload_kind kind;
    uint64_t wss_bytes;         /* working set, split across vCPUs */
    enum ringvm_pattern pattern;
    uint64_t rate_pages_per_s;  /* per vCPU; 0 = full speed */
    uint32_t write_bytes;       /* 8 or 4096 */
    uint32_t verify_seconds;    /* ledger */
    uint64_t count;             /* page writes per vCPU then stop; 0 = forever */
    enum ringvm_fault_kind fault_kind;
    uint32_t fault_ring;        /* 0 or 3 */
    uint64_t seed;
};

/* Defaults: dirtier, wss=64M, seq, rate=0, write=8, verify=5, count=0. */
void workload_spec_defaults(struct workload_spec *spec);

/* Parses SPEC into *spec. On error returns -1 and writes a one-line
 * message (without the "ringvm: " prefix) to error, e.g.
 * "--workload: unknown pattern 'zigzag' (expected seq, random or hot)". */
int workload_spec_parse(const char *text, struct workload_spec *spec,
                        char *error, size_t error_size);

/* Canonical text form, e.g. "dirtier,wss=64M,pattern=seq,rate=0,write=8". */
void workload_spec_format(const struct workload_spec *spec, char *out, size_t out_size);

const char *workload_kind_name(enum ringvm_workload_kind kind);

#endif
