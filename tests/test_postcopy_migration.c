/*
 * Post-copy and hybrid migration between two VMs of this process (issue
 * 17): the guest switches over first and its RAM follows, pulled on first
 * touch over the urgent channel and pushed in the background. Each test
 * proves every page arrived exactly once (received = missing at the
 * switch-over), the page digests agree, and the guest's ledger keeps
 * verifying on the destination.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/migration.h"
#include "migration/postcopy_destination.h"
#include "tests/harness.h"
#include "tests/migration_destination.h"
#include "vmm/crash_report.h"

#define RAM_BYTES (256ull << 20)
#define RAM_PAGES (RAM_BYTES / 4096u)

static void require_userfaultfd(void)
{
    char why[400];
    if (!postcopy_destination_available(why, sizeof(why))) {
        cr_log_warn("SKIP: %s", why);
        cr_skip_test("%s", why);
    }
}

struct advanced {
    struct vm *vm;
    unsigned vcpu;
    uint64_t target;
};

static bool vcpu_reached(void *argument)
{
    struct advanced *a = argument;
    return harness_pages_written(a->vm, a->vcpu) >= a->target;
}

/* Migrates a 2-vCPU ledger guest in mode (postcopy or hybrid after one
 * pass) and checks the accounting both sides publish. */
static void migrate_postcopy(enum mig_mode mode, bool tcp, const char *workload, unsigned cap_mibs)
{
    harness_require_kvm();
    require_userfaultfd();
    crash_report_install();
    const unsigned vcpus = 2;
    struct harness_vm source;
    harness_vm_start(&source, "256M", vcpus, workload, "ring");
    for (unsigned i = 0; i < vcpus; i++)
        cr_assert(harness_wait_phase(source.vm, i, RINGVM_PHASE_RING3, 20000), "vcpu %u never reached ring 3", i);
    cr_assert(console_wait_for(&source.console, "LEDGER OK", 1, 20000), "no LEDGER OK on the source:\n%s",
              console_snapshot(&source.console));

    struct test_destination dest;
    test_destination_start(&dest, "256M", vcpus, "idle", tcp);
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    params.mode = mode;
    if (mode == MIG_MODE_HYBRID) {
        params.postcopy_after_auto = false;
        params.postcopy_after_passes = 1;
        params.converge = MIG_CONVERGE_NONE;
        params.downtime_ms = 1;     /* pre-copy alone would never switch over */
    }
    params.max_bandwidth_mibs = cap_mibs;
    params.verify_digest = true;
    params.timeout_s = 60;
    uint64_t id = test_migration_start(source.vm, &params);

    struct mig_progress *p = malloc(sizeof(*p));
    test_migration_finished(source.vm, p, 60000);
    cr_assert_eq(test_destination_join(&dest), 0, "the destination failed (see stderr)");
    cr_assert_eq(p->id, id);
    cr_assert_eq(p->state, MIG_STATE_COMPLETED, "state %s: %s: %s", mig_state_name(p->state), p->error_code,
                 p->error_message);
    cr_assert_eq(p->mode, (int)mode);
    cr_assert(p->postcopy.active, "the source never switched to post-copy");
    cr_assert_eq(strlen(p->digest_source), 32, "no source page digest");
    cr_assert_str_eq(p->digest_source, p->digest_destination, "page digests differ");
    if (mode == MIG_MODE_POSTCOPY) {
        cr_assert_eq(p->postcopy.pages_total, RAM_PAGES, "pure post-copy: every page is missing at the switch");
        cr_assert_eq(p->iteration_count, 0, "pure post-copy runs no pre-copy pass");
    } else {
        cr_assert_gt(p->postcopy.pages_total, 0, "the ledger dirtied pages after they were sent");
        cr_assert_lt(p->postcopy.pages_total, RAM_PAGES);
        cr_assert_eq(p->iteration_count, 1, "hybrid after one pass: exactly one pre-copy pass");
    }
    /* Every missing page went once in the background or on request: the
     * background stream never sends a page pc-serve took, pc-serve may
     * resend one the background took a moment before. */
    cr_assert_leq(p->postcopy.pages_pushed, p->postcopy.pages_total);
    cr_assert_geq(p->postcopy.pages_pushed + p->postcopy.pages_requested, p->postcopy.pages_total);
    cr_assert_eq(p->postcopy.requests_refused, 0);
    cr_assert_gt(p->downtime_us, 0);

    struct mig_progress *q = malloc(sizeof(*q));
    cr_assert(migration_progress(dest.harness.vm, q));
    cr_assert_eq(q->state, MIG_STATE_COMPLETED, "destination %s: %s", q->error_code, q->error_message);
    cr_assert(q->postcopy.active);
    cr_assert_eq(q->postcopy.pages_total, p->postcopy.pages_total, "both sides agree on the pages missing");
    cr_assert_eq(q->postcopy.pages_received, q->postcopy.pages_total, "each missing page placed exactly once");
    cr_assert_str_eq(q->digest_destination, p->digest_source);
    /* The guest ran before its RAM was there: its vCPUs faulted and each
     * fault was served. */
    cr_assert_gt(q->postcopy.faults, 0, "no vCPU touched a missing page");
    cr_assert_gt(q->postcopy.pages_requested, 0);
    cr_assert_eq(q->postcopy.pages_requested, p->postcopy.requests, "every request reached the source");
    uint64_t vcpu_faults = 0;
    for (unsigned i = 0; i < vcpus; i++)
        vcpu_faults += q->postcopy.vcpu_faults[i];
    cr_assert_gt(vcpu_faults, 0, "no fault was a vCPU's");
    cr_assert_gt(q->postcopy.latency_count, 0);
    cr_assert_leq(q->postcopy.latency_p50_ns, q->postcopy.latency_max_ns);

    cr_assert(vm_wait_for_shutdown_request(source.vm, 5000000000ull), "the source did not shut down");
    cr_assert_eq(vm_wait(source.vm), 0);
    struct vm *dvm = dest.harness.vm;
    cr_assert_eq(vm_get_state(dvm), VM_STATE_RUNNING);
    for (unsigned i = 0; i < vcpus; i++) {
        struct advanced a = { .vm = dvm, .vcpu = i, .target = harness_pages_written(dvm, i) + 2000 };
        cr_assert(harness_wait_until(vcpu_reached, &a, 20000), "vcpu %u does not run on the destination", i);
    }
    cr_assert(console_wait_for(&dest.harness.console, "LEDGER OK", 2, 20000),
              "the ledger does not verify on the destination:\n%s", console_snapshot(&dest.harness.console));
    cr_assert_eq(console_count(&dest.harness.console, "MISMATCH"), 0, "%s", console_snapshot(&dest.harness.console));
    cr_assert_eq(atomic_load(&dvm->ledger_mismatches), 0);
    free(q);
    free(p);
    test_destination_stop(&dest);
    test_migration_source_stop(&source);
}

Test(postcopy_migration, ledger_two_vcpus_postcopy_unix, .timeout = 90)
{
    migrate_postcopy(MIG_MODE_POSTCOPY, false, "ledger,wss=32M,verify=1", 0);
}

Test(postcopy_migration, ledger_two_vcpus_postcopy_tcp_capped, .timeout = 90)
{
    migrate_postcopy(MIG_MODE_POSTCOPY, true, "ledger,wss=32M,verify=1", 125);
}

Test(postcopy_migration, ledger_two_vcpus_hybrid_after_one_pass_unix, .timeout = 90)
{
    migrate_postcopy(MIG_MODE_HYBRID, false, "ledger,wss=32M,verify=1", 0);
}
