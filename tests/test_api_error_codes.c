/*
 * Error codes of docs/api.md that had no test (issue 18, item 8), one test
 * each, against a real VM (needs /dev/kvm): the request goes through the
 * real dispatcher (api_handle_line, as the server's threads run it) and the
 * reply's code and message are asserted.
 *
 * The others live beside the machinery they need: digest-mismatch in
 * tests/test_migration_digest.c (a receiver hook), destination-error and
 * stream in tests/test_migration.c (a fake destination). The `internal`
 * cases here hold the vCPUs before they park (harness_hold_pauses) so a
 * pause gives up, which is what "the vCPUs did not stop" means.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/dispatch.h"
#include "migration/migration.h"
#include "migration/progress.h"
#include "tests/api_requests.h"
#include "tests/harness.h"
#include "tests/migration_destination.h"

/* The guard against running a guest that has no state yet. */
Test(api_error_codes, incoming_vm_without_state_refuses_resume_and_dirty_tracking, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm destination;
    harness_vm_create_incoming(&destination, "64M", 1, "idle", "ring");
    cr_assert_eq(vm_start(destination.vm), 0);
    api_expect_error(destination.vm, "{\"id\":1,\"cmd\":\"vm.resume\"}", "migration-active",
                 "cannot resume: this VM is waiting for an incoming migration (no guest state yet)");
    api_expect_error(destination.vm, "{\"id\":2,\"cmd\":\"vm.dirty-tracking\",\"args\":{\"enable\":true}}",
                 "migration-active", "cannot track dirty pages: this VM is waiting for an incoming migration");
    cr_assert(atomic_load(&destination.vm->awaiting_migration), "the guest was let run without its state");
    harness_vm_stop(&destination);
}

Test(api_error_codes, vm_commands_on_a_shut_down_vm_are_vm_not_running, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest did not run");
    vm_request_shutdown(h.vm, 0);
    api_expect_error(h.vm, "{\"id\":1,\"cmd\":\"vm.pause\"}", "vm-not-running", "cannot pause: the VM is shutdown");
    api_expect_error(h.vm, "{\"id\":2,\"cmd\":\"vm.dirty-tracking\",\"args\":{\"enable\":true}}", "vm-not-running",
                 "cannot track dirty pages: the VM is shutting down");
    harness_vm_stop(&h);
}

Test(api_error_codes, migration_to_nobody_fails_with_connect_failed, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest did not run");
    char line[256];
    snprintf(line, sizeof(line),
             "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/tmp/ringvm-nobody-%d.sock\"}}",
             (int)getpid());
    json_t *reply = api_request(h.vm, line);
    cr_assert(json_is_true(json_object_get(reply, "ok")), "migration.start refused");
    json_decref(reply);
    cr_assert(migration_wait_idle(h.vm, 30000), "the migration did not end");
    struct mig_progress *progress = malloc(sizeof(*progress));
    cr_assert_not_null(progress);
    cr_assert(migration_progress(h.vm, progress));
    cr_assert_eq(progress->state, MIG_STATE_FAILED, "state %s", mig_state_name(progress->state));
    cr_assert_str_eq(progress->error_code, "connect-failed", "error %s: %s", progress->error_code,
                     progress->error_message);
    /* The guest runs on here. */
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest stopped after a failed connect");
    free(progress);
    migration_release(h.vm);
    harness_vm_stop(&h);
}

/* vm.pause whose vCPUs do not park within the give-up time (held here,
 * 50 ms): internal, the message says how long, and the VM keeps running. */
Test(api_error_codes, a_pause_the_vcpus_do_not_answer_is_internal, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_create(&h, "64M", 2, "dirtier,wss=4M", "ring");
    h.vm->pause_give_up_ns = 50000000ull;
    cr_assert_eq(vm_start(h.vm), 0);
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest did not run");
    harness_hold_pauses();
    api_expect_error(h.vm, "{\"id\":1,\"cmd\":\"vm.pause\"}", "internal",
                 "the vCPUs did not stop within 50 ms; the VM keeps running");
    cr_assert_eq(vm_get_state(h.vm), VM_STATE_RUNNING);
    harness_release_pauses();
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest stopped after the failed pause");
    harness_vm_stop(&h);
}

/* A running source (one vCPU, dirtier) and an in-process destination,
 * params pointing at it; pause_give_up_ns 0 keeps the default. */
struct migration_pair {
    struct harness_vm source;
    struct test_destination destination;
    struct mig_params params;
    struct mig_progress *progress;      /* the source's, once ended */
};

static void migration_pair_start(struct migration_pair *m, const char *workload, uint64_t pause_give_up_ns)
{
    harness_require_kvm();
    harness_vm_create(&m->source, "64M", 1, workload, "ring");
    if (pause_give_up_ns != 0)
        m->source.vm->pause_give_up_ns = pause_give_up_ns;
    cr_assert_eq(vm_start(m->source.vm), 0);
    cr_assert(harness_wait_all_vcpus_advance(m->source.vm, 100, 20000), "the guest did not run");
    test_destination_start(&m->destination, "64M", 1, workload, false);
    mig_params_defaults(&m->params);
    snprintf(m->params.dest, sizeof(m->params.dest), "%s", m->destination.address);
    m->params.verify_digest = false;
    m->progress = malloc(sizeof(*m->progress));
    cr_assert_not_null(m->progress);
}

/* The source's migration ended unsuccessfully with code and message, and
 * the destination failed, was told exactly that, and never ran the guest. */
static void migration_pair_expect_aborted(struct migration_pair *m, enum mig_state state, const char *code,
                                          const char *message)
{
    test_migration_finished(m->source.vm, m->progress, 60000);
    cr_assert_eq(m->progress->state, state, "state %s", mig_state_name(m->progress->state));
    cr_assert_str_eq(m->progress->error_code, code, "%s", m->progress->error_message);
    cr_assert_str_eq(m->progress->error_message, message);
    cr_assert_eq(test_destination_join(&m->destination), -1, "the destination must fail");
    struct mig_progress *incoming = malloc(sizeof(*incoming));
    cr_assert_not_null(incoming);
    cr_assert(migration_progress(m->destination.harness.vm, incoming));
    char expected[512];
    snprintf(expected, sizeof(expected), "the source aborted the migration: %s", message);
    cr_assert_str_eq(incoming->error_message, expected);
    cr_assert_neq(vm_get_state(m->destination.harness.vm), VM_STATE_RUNNING, "the destination must not run");
    free(incoming);
}

static void migration_pair_stop(struct migration_pair *m)
{
    free(m->progress);
    test_destination_stop(&m->destination);
    migration_release(m->source.vm);
    harness_vm_stop(&m->source);
}

/* A source that migrated away (keep_alive: the process stays for its
 * report) refuses to pause or track: the guest runs elsewhere. */
Test(api_error_codes, vm_commands_on_a_migrated_vm_are_vm_not_running, .timeout = 120)
{
    struct migration_pair m;
    migration_pair_start(&m, "dirtier,wss=4M", 0);
    m.params.keep_alive = true;
    test_migration_start(m.source.vm, &m.params);
    test_migration_finished(m.source.vm, m.progress, 60000);
    cr_assert_eq(m.progress->state, MIG_STATE_COMPLETED, "%s: %s", m.progress->error_code,
                 m.progress->error_message);
    cr_assert_eq(test_destination_join(&m.destination), 0);
    api_expect_error(m.source.vm, "{\"id\":1,\"cmd\":\"vm.pause\"}", "vm-not-running", "cannot pause: the VM is migrated");
    api_expect_error(m.source.vm, "{\"id\":2,\"cmd\":\"vm.dirty-tracking\",\"args\":{\"enable\":true}}",
                 "vm-not-running", "cannot track dirty pages: the VM is migrated");
    migration_pair_stop(&m);
}

/* The stop-and-copy pause gives up (vCPUs held, 50 ms): the migration fails
 * with `internal`, the destination is told, and the guest runs on here. */
Test(api_error_codes, a_migration_whose_pause_fails_is_internal, .timeout = 120)
{
    struct migration_pair m;
    migration_pair_start(&m, "dirtier,wss=4M", 50000000ull);
    m.params.downtime_ms = 60000;       /* switch over after the first pass */
    m.params.max_bandwidth_mibs = 16;   /* that pass takes ~4 s: time to hold the pauses */
    test_migration_start(m.source.vm, &m.params);
    /* Past the switch-over probe's pause (it comes before any page). */
    cr_assert(test_migration_wait_transferred(m.source.vm, 1, 20000), "the migration did not get going");
    harness_hold_pauses();
    migration_pair_expect_aborted(&m, MIG_STATE_FAILED, "internal", "could not pause the vCPUs: Connection timed out");
    harness_release_pauses();
    cr_assert_eq(vm_get_state(m.source.vm), VM_STATE_RUNNING);
    cr_assert(harness_wait_all_vcpus_advance(m.source.vm, 100, 20000), "the guest stopped after the failed migration");
    migration_pair_stop(&m);
}

/* The switch-over probe's pause (right after the handshake) fails the
 * same way, says so, and the guest runs on. */
Test(api_error_codes, a_migration_whose_probe_pause_fails_is_internal, .timeout = 120)
{
    struct migration_pair m;
    migration_pair_start(&m, "dirtier,wss=4M", 50000000ull);
    harness_hold_pauses();
    test_migration_start(m.source.vm, &m.params);
    migration_pair_expect_aborted(&m, MIG_STATE_FAILED, "internal",
                                  "switch-over probe: could not pause the vCPUs: Connection timed out");
    cr_assert_eq(m.progress->memory.transferred, 0, "no page leaves before the probe");
    harness_release_pauses();
    cr_assert_eq(vm_get_state(m.source.vm), VM_STATE_RUNNING);
    cr_assert(harness_wait_all_vcpus_advance(m.source.vm, 100, 20000), "the guest stopped after the failed migration");
    migration_pair_stop(&m);
}

/* The source VM shuts down while it migrates: the migration ends with
 * `shutdown` and the destination is told why. */
Test(api_error_codes, a_migration_interrupted_by_shutdown_is_shutdown, .timeout = 120)
{
    struct migration_pair m;
    migration_pair_start(&m, "dirtier,wss=16M", 0);
    m.params.converge = MIG_CONVERGE_NONE;
    m.params.downtime_ms = 1;           /* never converges: only the shutdown ends it */
    m.params.max_bandwidth_mibs = 8;
    test_migration_start(m.source.vm, &m.params);
    cr_assert(test_migration_wait_transferred(m.source.vm, 1, 20000), "the migration did not get going");
    vm_request_shutdown(m.source.vm, 0);
    migration_pair_expect_aborted(&m, MIG_STATE_CANCELLED, "shutdown", "the VM is shutting down");
    migration_pair_stop(&m);
}
