/*
 * The console follows the guest (issue 14, migration.start console): a
 * `ringctl console` attached to the source's console socket keeps running
 * on the destination's after a pre-copy and after a post-copy migration.
 * Both VMs are in this process, each with a console (vmm/console.h) as
 * ringvm --console makes it; the client is the built ringctl. Needs
 * /dev/kvm (post-copy: userfaultfd too).
 *
 * Each run checks the client's whole story: the source's LEDGER OK lines,
 * then exactly one notice naming the destination, then LEDGER OK lines the
 * destination's guest printed (its console handed the client over before
 * the guest ran there), and the end when the destination's console closes.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migration/migration.h"
#include "migration/postcopy_destination.h"
#include "tests/harness.h"
#include "tests/migration_destination.h"
#include "vmm/console.h"
#include "vmm/vm.h"

#define WAIT_MS 30000u
#define NOTICE_END "this console continues there]\r\n"

static unsigned count_in(const char *text, size_t length, const char *needle)
{
    unsigned count = 0;
    size_t needle_length = strlen(needle);
    for (const char *at = text; (at = memmem(at, length - (size_t)(at - text), needle, needle_length)) != NULL;
         at += needle_length)
        count++;
    return count;
}

static void follow(enum mig_mode mode)
{
    harness_require_kvm();
    if (mode == MIG_MODE_POSTCOPY) {
        char why[400];
        if (!postcopy_destination_available(why, sizeof(why)))
            harness_skip("%s", why);
    }
    const char *ringctl = harness_program("ringctl");
    if (access(ringctl, X_OK) != 0)
        harness_skip("%s not built (make all)", ringctl);
    char directory[] = "/tmp/ringvm-console-migration-XXXXXX";
    cr_assert_not_null(mkdtemp(directory));
    char source_path[100], destination_path[100];
    snprintf(source_path, sizeof(source_path), "%s/source.sock", directory);
    snprintf(destination_path, sizeof(destination_path), "%s/destination.sock", directory);

    struct harness_vm source;
    harness_vm_start(&source, "256M", 1, "ledger,wss=8M,verify=1", "ring");
    cr_assert(harness_wait_phase(source.vm, 0, RINGVM_PHASE_RING3, 20000));
    struct console *source_console;
    struct console_config source_config = {.socket_path = source_path};
    cr_assert_eq(console_create(&source_console, &source.vm->serial, source.vm->uart, &source_config), 0);
    source.vm->console = source_console;

    struct test_destination dest;
    test_destination_start(&dest, "256M", 1, "idle", false);
    struct console *destination_console;
    struct console_config destination_config = {.socket_path = destination_path};
    cr_assert_eq(console_create(&destination_console, &dest.harness.vm->serial, dest.harness.vm->uart,
                                &destination_config), 0);
    dest.harness.vm->console = destination_console;

    struct harness_process client;
    char *argv[] = {(char *)ringctl, "console", "--socket", source_path, NULL};
    harness_spawn(&client, argv);
    cr_assert(harness_process_wait_output(&client, "LEDGER OK", 2, WAIT_MS), "the client saw no LEDGER OK: '%s' "
              "(stderr '%s')", client.out, client.err);

    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    snprintf(params.console, sizeof(params.console), "%s", destination_path);
    params.mode = mode;
    params.timeout_s = 60;
    test_migration_start(source.vm, &params);
    struct mig_progress *p = malloc(sizeof(*p));
    test_migration_finished(source.vm, p, 60000);
    cr_assert_eq(p->state, MIG_STATE_COMPLETED, "%s: %s", p->error_code, p->error_message);
    cr_assert_eq(test_destination_join(&dest), 0);

    cr_assert(harness_process_wait_output(&client, NOTICE_END, 1, WAIT_MS), "no notice: '%s' (stderr '%s')",
              client.out, client.err);
    const char *notice = strstr(client.out, "\r\n[ringvm console: the guest moved to ");
    cr_assert_not_null(notice, "'%s'", client.out);
    char expected[512];
    snprintf(expected, sizeof(expected), "\r\n[ringvm console: the guest moved to %s (console unix:%s); "
             NOTICE_END, dest.address, destination_path);
    cr_assert_eq(strncmp(notice, expected, strlen(expected)), 0, "notice: '%.300s'", notice);
    size_t before = (size_t)(notice - client.out);
    unsigned source_lines = count_in(client.out, before, "LEDGER OK");
    cr_assert_geq(source_lines, 2);
    /* Two more, printed by the destination's guest, after the notice. */
    cr_assert(harness_process_wait_output(&client, "LEDGER OK", source_lines + 2, WAIT_MS),
              "nothing from the destination after the notice: '%s'", client.out);
    cr_assert_eq(count_in(client.out, client.out_length, "[ringvm console:"), 1, "'%s'", client.out);
    cr_assert_eq(count_in(client.out, client.out_length, "MISMATCH"), 0);
    struct console_stats stats;
    console_get_stats(source_console, &stats);
    cr_assert_eq(stats.clients, 0, "the source kept the client");

    console_destroy(destination_console);       /* the end of the client's session */
    dest.harness.vm->console = NULL;
    int status = harness_process_wait_exit(&client, WAIT_MS);
    cr_assert_eq(status, 0, "ringctl console exited %d: %s", status, client.err);
    cr_assert_str_eq(client.err, "ringctl console: ringvm closed the console\n");
    harness_process_free(&client);
    free(p);
    test_destination_stop(&dest);
    migration_release(source.vm);               /* the migration thread is gone: the console may go */
    source.vm->console = NULL;
    console_destroy(source_console);            /* before the VM's serial */
    test_migration_source_stop(&source);
    unlink(source_path);
    unlink(destination_path);
    rmdir(directory);
}

Test(console_migration, a_ringctl_console_follows_the_guest_through_a_precopy_migration, .timeout = 180)
{
    follow(MIG_MODE_PRECOPY);
}

Test(console_migration, a_ringctl_console_follows_the_guest_through_a_postcopy_migration, .timeout = 180)
{
    follow(MIG_MODE_POSTCOPY);
}
