/*
 * The destination the migration stream fuzzer plays: a 64 MiB, 1-vCPU
 * ringvm, as captured into tests/fuzz/migration-corpus/ by
 * tests/fuzz/capture-corpus.sh. Shared by the libFuzzer target and by
 * tests/test_migration_fuzz.c, which checks that the corpus streams are
 * complete and valid against exactly this configuration.
 */
#ifndef RINGVM_TESTS_FUZZ_MIGRATION_LOCAL_CONFIG_H
#define RINGVM_TESTS_FUZZ_MIGRATION_LOCAL_CONFIG_H

#include <string.h>

#include "guest/abi.h"
#include "migration/protocol.h"

#define FUZZ_MIGRATION_RAM_BYTES (64ull << 20)

static inline void fuzz_migration_local_hello(struct mig_hello *hello)
{
    memset(hello, 0, sizeof(*hello));
    hello->version = MIG_PROTOCOL_VERSION;
    hello->page_size = MIG_PAGE_SIZE;
    hello->memory_bytes = FUZZ_MIGRATION_RAM_BYTES;
    hello->vcpu_count = 1;
    hello->slot_count = 1;
    hello->slots[0].gpa = 0;
    hello->slots[0].size = FUZZ_MIGRATION_RAM_BYTES;
    hello->slots[0].ram_offset = 0;
    hello->state_format = MIG_STATE_FORMAT;
    /* Every feature a ringvm destination can announce, post-copy's frames
     * (OPEN, DISCARD, DISCARD_SYNC, SWITCH) included: the fuzzer reaches
     * their rules. No placer is set, so memory after a SWITCH ends the
     * parse with its error, as a destination without a session would. */
    hello->features = MIG_FEATURE_ZERO_PAGES | MIG_FEATURE_DIGEST | MIG_FEATURE_SWITCH_PROBE |
                      MIG_FEATURE_POSTCOPY | MIG_FEATURE_EARLY_DISCARD;
    hello->abi_version = RINGVM_ABI_VERSION;
}

#endif
