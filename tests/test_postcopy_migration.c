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
#include <unistd.h>

#include "migration/migration.h"
#include "migration/postcopy_destination.h"
#include "migration/postcopy_priority.h"
#include "tests/harness.h"
#include "tests/link_relay.h"
#include "tests/migration_destination.h"
#include "vmm/crash_report.h"

#define RAM_BYTES (256ull << 20)
#define RAM_PAGES (RAM_BYTES / 4096u)

static void require_userfaultfd(void)
{
    char why[400];
    if (!postcopy_destination_available(why, sizeof(why)))
        harness_skip("%s", why);
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

/* Migrates a 2-vCPU ledger guest in mode (postcopy, or hybrid after one
 * pass or with the auto rule) and checks the accounting both sides
 * publish. */
/* memory: the source's and the destination's RAM, "256M" with the
 * harness's backing flags ("256M,anonymous"). */
static void migrate_postcopy_on(const char *memory, const char *destination_memory, enum mig_mode mode, bool tcp,
                                const char *workload, unsigned cap_mibs, bool hybrid_auto)
{
    harness_require_kvm();
    require_userfaultfd();
    crash_report_install();
    const unsigned vcpus = 2;
    struct harness_vm source;
    harness_vm_start(&source, memory, vcpus, workload, "ring");
    for (unsigned i = 0; i < vcpus; i++)
        cr_assert(harness_wait_phase(source.vm, i, RINGVM_PHASE_RING3, 20000), "vcpu %u never reached ring 3", i);
    cr_assert(console_wait_for(&source.console, "LEDGER OK", 1, 20000), "no LEDGER OK on the source:\n%s",
              console_snapshot(&source.console));

    /* The stall timeouts scaled to the host (harness_stall_ms): under
     * scripts/nested-kvm.sh with the host's cores busy, the destination's
     * one emulated CPU took 10-22 s for this migration and went 5 s
     * without reading, which the default 5 s stall took for a broken link. */
    struct test_destination dest;
    test_destination_start_stall(&dest, destination_memory, vcpus, "idle", tcp, harness_stall_ms(5000));
    struct mig_params params;
    mig_params_defaults(&params);
    params.stall_timeout_ms = harness_stall_ms(params.stall_timeout_ms);
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    params.mode = mode;
    if (mode == MIG_MODE_HYBRID && !hybrid_auto) {
        params.postcopy_after_auto = false;
        params.postcopy_after_passes = 1;
        params.converge = MIG_CONVERGE_NONE;
        params.downtime_ms = 1;     /* pre-copy alone would never switch over */
    } else if (mode == MIG_MODE_HYBRID) {
        /* The full-rate ledger dirties more pages in the 50 ms window
         * than the link moves in 50 ms: the auto rule switches within
         * the bulk pass (migration/convergence.h). */
        params.converge = MIG_CONVERGE_NONE;
        params.downtime_ms = 50;
        /* The link is cap_mibs for the stop-and-copy too: pre-copy's
         * expected downtime must not count on an uncapped one. */
        params.switch_over_bandwidth_mibs = cap_mibs;
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
    } else if (!hybrid_auto) {
        cr_assert_gt(p->postcopy.pages_total, 0, "the ledger dirtied pages after they were sent");
        cr_assert_lt(p->postcopy.pages_total, RAM_PAGES);
        cr_assert_eq(p->iteration_count, 1, "hybrid after one pass: exactly one pre-copy pass");
    } else {
        /* Switched within the bulk pass: no pass completed, part of RAM
         * went before the switch, the rest (and what the guest dirtied
         * after it went) is missing. */
        cr_assert_eq(p->iteration_count, 0, "hybrid auto did not switch within the bulk pass");
        cr_assert_gt(p->postcopy.pages_total, 0);
        cr_assert_lt(p->postcopy.pages_total, RAM_PAGES, "the bulk pass sent nothing before the switch");
    }
    /* Every missing page went once in the background or on request: the
     * background stream never sends a page pc-serve took, pc-serve may
     * resend one the background took a moment before. */
    /* Each missing page was discarded on the destination once: hybrid's
     * stale pages mostly before the pause (the destination announces
     * early discards), the rest inside it; pure post-copy's all inside. */
    cr_assert_eq(p->postcopy.discarded_early_pages + p->postcopy.discarded_in_pause_pages, p->postcopy.pages_total,
                 "discarded early %" PRIu64 " + in the pause %" PRIu64 " != missing %" PRIu64,
                 p->postcopy.discarded_early_pages, p->postcopy.discarded_in_pause_pages, p->postcopy.pages_total);
    if (mode == MIG_MODE_HYBRID)
        cr_assert_gt(p->postcopy.discarded_early_pages, 0, "hybrid discarded nothing before the pause");
    else
        cr_assert_eq(p->postcopy.discarded_early_pages, 0, "pure post-copy has nothing to discard early");
    cr_assert_leq(p->postcopy.pages_pushed, p->postcopy.pages_total);
    cr_assert_geq(p->postcopy.pages_pushed + p->postcopy.pages_requested, p->postcopy.pages_total);
    cr_assert_eq(p->postcopy.requests_refused, 0);
    cr_assert_gt(p->downtime_us, 0);

    struct mig_progress *q = malloc(sizeof(*q));
    cr_assert(migration_progress(dest.harness.vm, q));
    cr_assert_eq(q->state, MIG_STATE_COMPLETED, "destination %s: %s", q->error_code, q->error_message);
    cr_assert(q->postcopy.active);
    cr_assert_eq(q->postcopy.pages_total, p->postcopy.pages_total, "both sides agree on the pages missing");
    cr_assert_eq(q->postcopy.discarded_early_pages, p->postcopy.discarded_early_pages);
    cr_assert_eq(q->postcopy.discarded_in_pause_pages, p->postcopy.discarded_in_pause_pages);
    cr_assert_eq(q->postcopy.pages_received, q->postcopy.pages_total, "each missing page placed exactly once");
    cr_assert_str_eq(q->digest_destination, p->digest_source);
    /* The guest ran before its RAM was there: its vCPUs faulted and each
     * fault was served. */
    cr_assert_gt(q->postcopy.faults, 0, "no vCPU touched a missing page");
    cr_assert_gt(q->postcopy.pages_requested, 0);
    /* Every request the source read, the destination made; a few may
     * have been still queued or in flight when the last page arrived (a
     * fault read while its page was being copied asks once more). */
    cr_assert_leq(p->postcopy.requests, q->postcopy.pages_requested);
    cr_assert_gt(p->postcopy.requests, 0, "no request reached the source");
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

static void migrate_postcopy(enum mig_mode mode, bool tcp, const char *workload, unsigned cap_mibs)
{
    migrate_postcopy_on("256M", "256M", mode, tcp, workload, cap_mibs, false);
}

/* Pure post-copy over unix streams at this cap (1 s for the 32 MiB the
 * ledger wrote) so its vCPUs surely touch pages still missing, which the
 * fault and request checks need: uncapped, the stream (each page once,
 * never-written pages left as holes) once had every page there before a
 * loaded host ran the vCPUs. Uncapped post-copy streaming is what the
 * hybrid tests run after their switch. */
#define POSTCOPY_UNIX_CAP_MIBS 32

Test(postcopy_migration, ledger_two_vcpus_postcopy_unix, .timeout = 90)
{
    migrate_postcopy(MIG_MODE_POSTCOPY, false, "ledger,wss=32M,verify=1", POSTCOPY_UNIX_CAP_MIBS);
}

/* ringvm --postcopy-fifo 1: pc-fault, pc-urgent and pc-serve under
 * SCHED_FIFO (tests/test_postcopy_channels.c checks the class) must not
 * starve what they wait on, the fair threads sending and placing pages,
 * even with fewer cores than runnable threads. */
Test(postcopy_migration, ledger_two_vcpus_postcopy_unix_with_the_fault_service_under_fifo, .timeout = 90)
{
    char error[300];
    if (postcopy_priority_check(1, error, sizeof(error)) != 0)
        harness_skip("SCHED_FIFO is not permitted to this process: %s", error);
    postcopy_priority_set(1);
    migrate_postcopy(MIG_MODE_POSTCOPY, false, "ledger,wss=32M,verify=1", POSTCOPY_UNIX_CAP_MIBS);
}

Test(postcopy_migration, ledger_two_vcpus_postcopy_tcp_capped, .timeout = 90)
{
    migrate_postcopy(MIG_MODE_POSTCOPY, true, "ledger,wss=32M,verify=1", 125);
}

Test(postcopy_migration, ledger_two_vcpus_hybrid_after_one_pass_unix, .timeout = 90)
{
    migrate_postcopy(MIG_MODE_HYBRID, false, "ledger,wss=32M,verify=1", 0);
}

/* Anonymous guest RAM (ringvm --ram anonymous): on both sides through a
 * hybrid migration (pre-copy finds pages without data in the page tables,
 * the destination discards with MADV_DONTNEED and takes MISSING faults on
 * anonymous memory), and a memfd source onto an anonymous destination in
 * pure post-copy. */
Test(postcopy_migration, ledger_two_vcpus_hybrid_on_anonymous_ram_unix, .timeout = 90)
{
    migrate_postcopy_on("256M,anonymous", "256M,anonymous", MIG_MODE_HYBRID, false, "ledger,wss=32M,verify=1", 0,
                        false);
}

Test(postcopy_migration, ledger_two_vcpus_postcopy_from_memfd_onto_anonymous_ram_unix, .timeout = 90)
{
    migrate_postcopy_on("256M", "256M,anonymous", MIG_MODE_POSTCOPY, false, "ledger,wss=32M,verify=1",
                        POSTCOPY_UNIX_CAP_MIBS, false);
}

/* Hybrid auto at 64 MiB/s: the window 100 ms into the bulk pass finds the
 * full-rate ledger dirtying more than the link moves in the downtime
 * limit, and the pass hands over to post-copy there. */
Test(postcopy_migration, ledger_two_vcpus_hybrid_auto_switches_within_the_bulk_pass, .timeout = 90)
{
    migrate_postcopy_on("256M", "256M", MIG_MODE_HYBRID, false, "ledger,wss=32M,verify=1", 64, true);
}

/* ---- failures after the switch-over ---------------------------------------- */

struct phase_wait {
    struct vm *vm;
    const char *phase;
    uint64_t min_pushed;
};

static bool reached_phase(void *argument)
{
    struct phase_wait *w = argument;
    struct mig_progress *p = malloc(sizeof(*p));
    bool reached = migration_progress(w->vm, p) && strcmp(p->phase, w->phase) == 0 &&
                   p->postcopy.pages_pushed + p->postcopy.pages_received >= w->min_pushed;
    free(p);
    return reached;
}

static void start_ledger_source(struct harness_vm *source)
{
    harness_vm_start(source, "256M", 2, "ledger,wss=8M,verify=1", "ring");
    for (unsigned i = 0; i < 2; i++)
        cr_assert(harness_wait_phase(source->vm, i, RINGVM_PHASE_RING3, 20000), "vcpu %u never reached ring 3", i);
    cr_assert(console_wait_for(&source->console, "LEDGER OK", 1, 20000), "no LEDGER OK on the source:\n%s",
              console_snapshot(&source->console));
}

/* The link goes silent mid post-copy: both sides pause (the guest waits
 * on the destination), and migration.recover + resume over a new
 * connection finish the copy with equal digests and the ledger intact. */
Test(postcopy_migration, a_cut_link_pauses_both_sides_and_recovery_completes, .timeout = 120)
{
    harness_require_kvm();
    require_userfaultfd();
    struct harness_vm source;
    start_ledger_source(&source);
    struct test_destination dest;
    test_destination_start_stall(&dest, "256M", 2, "idle", false, harness_stall_ms(1000));
    char relay_address[160];
    struct link_relay *relay = link_relay_start(dest.address, relay_address, sizeof(relay_address));
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", relay_address);
    params.mode = MIG_MODE_POSTCOPY;
    params.max_bandwidth_mibs = 4;      /* ~2 s for the guest's data; the cut comes right after the
                                           switch-over, so it lands mid-stream (a cut after END would
                                           cost the source's 10 s ack wait first) */
    params.stall_timeout_ms = harness_stall_ms(1000);
    params.verify_digest = true;
    params.timeout_s = 60;
    test_migration_start(source.vm, &params);

    struct phase_wait running = { .vm = dest.harness.vm, .phase = "postcopy", .min_pushed = 1 };
    cr_assert(harness_wait_until(reached_phase, &running, 20000), "the destination never ran in post-copy");
    link_relay_cut(relay);
    struct phase_wait source_paused = { .vm = source.vm, .phase = "postcopy-paused" };
    struct phase_wait dest_paused = { .vm = dest.harness.vm, .phase = "postcopy-paused" };
    cr_assert(harness_wait_until(reached_phase, &source_paused, 20000), "the source did not pause");
    cr_assert(harness_wait_until(reached_phase, &dest_paused, 20000), "the destination did not pause");
    struct mig_progress *q = malloc(sizeof(*q));
    cr_assert(migration_progress(dest.harness.vm, q));
    cr_assert_str_eq(q->error_code, "postcopy-paused");
    cr_assert_eq(q->state, MIG_STATE_ACTIVE);
    cr_assert_lt(q->postcopy.pages_received, q->postcopy.pages_total, "nothing was missing at the cut");
    /* vCPUs blocked on missing pages stay signalable: the operator can
     * still pause and resume the guest while the link is down. */
    harness_pause_and_resume_waiting_guest(dest.harness.vm);

    /* Recovery: the destination listens anew, the source connects there. */
    char recover_address[160];
    snprintf(recover_address, sizeof(recover_address), "unix:/tmp/ringvm-recover-%d.sock", getpid());
    const char *code = NULL;
    char message[400];
    cr_assert_eq(migration_resume(dest.harness.vm, recover_address, &code, message, sizeof(message)), -1);
    cr_assert_str_eq(code, "invalid-state");
    cr_assert_eq(migration_recover(dest.harness.vm, recover_address, &code, message, sizeof(message)), 0,
                 "%s: %s", code, message);
    cr_assert_eq(migration_resume(source.vm, recover_address, &code, message, sizeof(message)), 0, "%s: %s", code,
                 message);

    struct mig_progress *p = malloc(sizeof(*p));
    test_migration_finished(source.vm, p, 90000);
    cr_assert_eq(test_destination_join(&dest), 0, "the destination failed (see stderr)");
    cr_assert_eq(p->state, MIG_STATE_COMPLETED, "state %s: %s: %s", mig_state_name(p->state), p->error_code,
                 p->error_message);
    cr_assert_str_eq(p->digest_source, p->digest_destination, "page digests differ after the recovery");
    cr_assert(migration_progress(dest.harness.vm, q));
    cr_assert_eq(q->state, MIG_STATE_COMPLETED);
    cr_assert_eq(q->postcopy.pages_received, q->postcopy.pages_total, "each missing page placed exactly once");
    cr_assert_eq(link_relay_connections(relay), 2, "the recovery did not go around the cut link");
    struct vm *dvm = dest.harness.vm;
    cr_assert(console_wait_for(&dest.harness.console, "LEDGER OK", 2, 20000),
              "the ledger does not verify on the destination:\n%s", console_snapshot(&dest.harness.console));
    cr_assert_eq(console_count(&dest.harness.console, "MISMATCH"), 0, "%s", console_snapshot(&dest.harness.console));
    cr_assert_eq(atomic_load(&dvm->ledger_mismatches), 0);
    unlink(recover_address + strlen("unix:"));
    free(p);
    free(q);
    link_relay_stop(relay);
    test_destination_stop(&dest);
    test_migration_source_stop(&source);
}

/* The destination goes away mid post-copy (its VM shuts down, its sockets
 * close, as when its process dies): the source reports the guest lost and
 * ends with exit status 1; it never resumes its stale copy. */
Test(postcopy_migration, the_destination_gone_mid_postcopy_loses_the_guest, .timeout = 90)
{
    harness_require_kvm();
    require_userfaultfd();
    struct harness_vm source;
    start_ledger_source(&source);
    struct test_destination dest;
    test_destination_start(&dest, "256M", 2, "idle", false);
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    params.mode = MIG_MODE_POSTCOPY;
    params.max_bandwidth_mibs = 4;
    params.timeout_s = 60;
    test_migration_start(source.vm, &params);
    struct phase_wait running = { .vm = dest.harness.vm, .phase = "postcopy", .min_pushed = 256 };
    cr_assert(harness_wait_until(reached_phase, &running, 20000), "the destination never ran in post-copy");
    vm_request_shutdown(dest.harness.vm, 0);

    struct mig_progress *p = malloc(sizeof(*p));
    test_migration_finished(source.vm, p, 30000);
    cr_assert_eq(p->state, MIG_STATE_FAILED);
    cr_assert_str_eq(p->error_code, "guest-lost");
    cr_assert(strstr(p->error_message, "post-copy: the destination closed its connections (its process ended?); "
                                       "the guest is lost") == p->error_message, "%s", p->error_message);
    uint64_t written[2] = { harness_pages_written(source.vm, 0), harness_pages_written(source.vm, 1) };
    cr_assert_eq(test_destination_join(&dest), -1);
    cr_assert(vm_wait_for_shutdown_request(source.vm, 5000000000ull), "the source did not end");
    cr_assert_eq(vm_wait(source.vm), 1, "the source must end with status 1");
    for (unsigned i = 0; i < 2; i++)
        cr_assert_eq(harness_pages_written(source.vm, i), written[i], "the source resumed its stale copy");
    free(p);
    test_destination_stop(&dest);
    test_migration_source_stop(&source);
}

struct iterations_wait {
    struct vm *vm;
    uint64_t count;
};

static bool iterated(void *argument)
{
    struct iterations_wait *w = argument;
    struct mig_progress *p = malloc(sizeof(*p));
    bool done = migration_progress(w->vm, p) && p->iteration_count >= w->count;
    free(p);
    return done;
}

/* migration.postcopy (migration_postcopy_now) switches a hybrid migration
 * that would never switch by itself (postcopy_after 1000 passes, a limit
 * pre-copy cannot meet) at its next decision; it completes in post-copy. */
Test(postcopy_migration, migration_postcopy_switches_a_hybrid_migration_now, .timeout = 90)
{
    harness_require_kvm();
    require_userfaultfd();
    struct harness_vm source;
    start_ledger_source(&source);
    struct test_destination dest;
    test_destination_start(&dest, "256M", 2, "idle", false);
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    params.mode = MIG_MODE_HYBRID;
    params.postcopy_after_auto = false;
    params.postcopy_after_passes = 1000;
    params.converge = MIG_CONVERGE_NONE;
    params.downtime_ms = 1;
    params.max_bandwidth_mibs = 64;
    params.verify_digest = true;
    params.timeout_s = 60;
    test_migration_start(source.vm, &params);
    struct iterations_wait two = { .vm = source.vm, .count = 2 };
    cr_assert(harness_wait_until(iterated, &two, 30000), "pre-copy never made two passes");
    const char *code = NULL;
    char message[400];
    cr_assert_eq(migration_postcopy_now(source.vm, &code, message, sizeof(message)), 0, "%s: %s", code, message);
    struct mig_progress *p = malloc(sizeof(*p));
    test_migration_finished(source.vm, p, 60000);
    cr_assert_eq(test_destination_join(&dest), 0, "the destination failed (see stderr)");
    cr_assert_eq(p->state, MIG_STATE_COMPLETED, "%s: %s", p->error_code, p->error_message);
    cr_assert(p->postcopy.active, "migration.postcopy did not switch");
    cr_assert_lt(p->iteration_count, 1000);
    cr_assert_geq(p->iteration_count, 2);
    cr_assert_str_eq(p->digest_source, p->digest_destination);
    cr_assert(console_wait_for(&dest.harness.console, "LEDGER OK", 2, 20000),
              "the ledger does not verify on the destination:\n%s", console_snapshot(&dest.harness.console));
    cr_assert_eq(console_count(&dest.harness.console, "MISMATCH"), 0, "%s", console_snapshot(&dest.harness.console));
    /* Once switched, there is nothing left to switch. */
    cr_assert_eq(migration_postcopy_now(source.vm, &code, message, sizeof(message)), -1);
    free(p);
    test_destination_stop(&dest);
    test_migration_source_stop(&source);
}
