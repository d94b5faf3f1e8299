/*
 * A digest mismatch, exercised (issue 18, item 7). Every other migration
 * test compares the digest the destination reports with the source's, so a
 * destination that echoed the source's digest would pass them. Here the
 * destination receives one page wrong: the receiver's test hook
 * (mig_receiver_data_hook, migration/receiver.h) flips one byte of the
 * first data page it writes, after the frame checksum was taken, so only
 * the END digest comparison can catch it. Needs /dev/kvm.
 *
 * Asserted: the destination refuses with digest-mismatch (ERROR code 5) and
 * never runs the guest (it still awaits its migration); the source fails
 * with digest-mismatch naming both digests; the guest runs on at the source.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/migration.h"
#include "migration/progress.h"
#include "migration/receiver.h"
#include "tests/harness.h"
#include "tests/migration_destination.h"

/* RAM offset of the page the hook changed; the hook fires once. */
static _Atomic uint64_t corrupted_offset = UINT64_MAX;

static void corrupt_first_page(uint8_t *ram, uint64_t ram_offset, uint32_t pages)
{
    (void)pages;
    uint64_t none = UINT64_MAX;
    if (atomic_compare_exchange_strong(&corrupted_offset, &none, ram_offset))
        ram[ram_offset + 123] ^= 0x5a;
}

Test(migration_digest, one_page_wrong_on_the_destination_is_a_digest_mismatch_on_both_sides, .timeout = 120)
{
    harness_require_kvm();
    struct harness_vm source;
    harness_vm_start(&source, "256M", 1, "ledger,wss=16M,verify=1", "ring");
    cr_assert(harness_wait_all_vcpus_advance(source.vm, 1000, 20000), "the guest did not run");
    struct test_destination dest;
    test_destination_start(&dest, "256M", 1, "ledger,wss=16M,verify=1", false);
    atomic_store_explicit(&mig_receiver_data_hook, corrupt_first_page, memory_order_release);

    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    params.verify_digest = true;
    params.downtime_ms = harness_digest_downtime_ms(256ull << 20);
    uint64_t id = 0;
    const char *code = NULL;
    char message[512];
    cr_assert_eq(migration_start(source.vm, NULL, &params, &id, &code, message, sizeof(message)), 0,
                 "migration_start: %s: %s", code, message);
    cr_assert(migration_wait_idle(source.vm, 60000), "the migration did not end");
    int destination_result = test_destination_join(&dest);
    atomic_store_explicit(&mig_receiver_data_hook, NULL, memory_order_release);
    cr_assert_neq(atomic_load(&corrupted_offset), UINT64_MAX, "the hook never saw a data page");

    /* The source: failed with digest-mismatch, both digests named. */
    struct mig_progress *progress = malloc(sizeof(*progress));
    cr_assert_not_null(progress);
    cr_assert(migration_progress(source.vm, progress));
    cr_assert_eq(progress->state, MIG_STATE_FAILED, "source state %s", mig_state_name(progress->state));
    cr_assert_str_eq(progress->error_code, "digest-mismatch", "source error %s: %s", progress->error_code,
                     progress->error_message);
    cr_assert(strncmp(progress->error_message, "destination refused: memory digest mismatch: source ",
                      strlen("destination refused: memory digest mismatch: source ")) == 0,
              "source message: %s", progress->error_message);

    /* The destination: refused before running the guest. */
    cr_assert_neq(destination_result, 0, "the destination accepted a stream whose RAM differs");
    cr_assert(migration_progress(dest.harness.vm, progress));
    cr_assert_eq(progress->state, MIG_STATE_FAILED, "destination state %s", mig_state_name(progress->state));
    cr_assert_str_eq(progress->error_code, "digest-mismatch", "destination error %s: %s", progress->error_code,
                     progress->error_message);
    cr_assert_str_neq(progress->digest_source, progress->digest_destination);
    cr_assert(atomic_load(&dest.harness.vm->awaiting_migration), "the destination let the guest run");

    /* The guest runs on at the source. */
    cr_assert_eq(vm_get_state(source.vm), VM_STATE_RUNNING, "source state %s",
                 vm_state_name(vm_get_state(source.vm)));
    cr_assert(harness_wait_all_vcpus_advance(source.vm, 1000, 20000), "the guest does not run on at the source");
    free(progress);
    test_destination_stop(&dest);
    migration_release(source.vm);
    harness_vm_stop(&source);
}
