/*
 * The ledger's page format, in one place for both ledgers: the built-in
 * guest's (guest/ledger.c, ring 3 on bare guest memory) and the Linux guest
 * image's (guest/linux/workload/runner.c, Linux user space). What a write
 * stores in a page (a struct ringvm_ledger_record, then filler for
 * write=4096) and when a verify pass calls a page good must be the same in
 * both, or a migration test would prove different things per guest kind.
 * Freestanding: stdint only.
 */
#ifndef RINGVM_GUEST_LEDGER_PAGE_H
#define RINGVM_GUEST_LEDGER_PAGE_H

#include <stdint.h>

#include "guest/abi.h"

/* Writes the next generation of `page` into the page and into the table;
 * returns that generation. */
static inline uint32_t ledger_page_write(uint8_t *region, volatile uint32_t *table, uint64_t seed,
                                         uint32_t write_bytes, uint64_t page)
{
    uint32_t generation = table[page] + 1;
    if (generation == 0)
        generation = 1;     /* 2^32 writes to one page: 0 stays "never written" */
    uint64_t checksum = ringvm_ledger_checksum(seed, page, generation);
    volatile uint64_t *words = (volatile uint64_t *)(region + page * RINGVM_PAGE_SIZE);
    words[0] = page;
    words[1] = generation;
    words[2] = checksum;
    if (write_bytes >= RINGVM_PAGE_SIZE) {
        for (unsigned i = 3; i < RINGVM_PAGE_SIZE / 8; i++)
            words[i] = checksum + i;
    }
    table[page] = generation;
    return generation;
}

/* 1 when `page` holds what the table says (all zero if never written);
 * *got is the generation found in the page, for the mismatch line. */
static inline int ledger_page_good(const uint8_t *region, uint64_t seed, uint64_t page, uint64_t want,
                                   uint64_t *got)
{
    const volatile uint64_t *words = (const volatile uint64_t *)(region + page * RINGVM_PAGE_SIZE);
    uint64_t index = words[0], generation = words[1], checksum = words[2];
    *got = generation;
    if (want == 0)
        return index == 0 && generation == 0 && checksum == 0;
    return index == page && generation == want && checksum == ringvm_ledger_checksum(seed, page, want);
}

#endif
