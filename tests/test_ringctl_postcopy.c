/*
 * ringctl's post-copy surface (issue 17): `migrate --mode`,
 * `--postcopy-after`, the confirmation a post-copy start needs (`--yes`),
 * `ringctl postcopy`, and the post-copy line of the progress output.
 *
 * ringctl_postcopy runs the built ringctl against a socket nobody serves
 * (exit 3 proves ringctl got as far as connecting; 1 or 2 that it stopped
 * before), with a pseudo-terminal as its stdin where a user would answer,
 * and formats post-copy snapshots without a VMM. ringctl_postcopy_vm
 * (needs /dev/kvm) runs ringctl's migration commands against a VM's API
 * server, the migration held in its handshake by a destination that
 * accepts nothing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/ringctl_migration.h"
#include "api/ringctl_session.h"
#include "api/server.h"
#include "migration/migration.h"
#include "migration/progress.h"
#include "tests/harness.h"
#include "tests/pseudo_terminal.h"
#include "tests/ringctl_in_process.h"

#define NOBODY "/nonexistent/ringvm-postcopy.sock"
#define PROMPT "post-copy: once the guest switches over, its RAM is split between the two hosts; if either " \
               "process dies before the copy ends, the guest is lost. Continue? [y/N] "
#define NOT_CONFIRMED "ringctl: migrate: not confirmed; no migration started\n"
#define CANNOT_CONNECT "ringctl: connect(unix:" NOBODY "): No such file or directory (is ringvm running with " \
                       "--api-socket on this path?)\n"

static const char *ringctl_or_skip(void)
{
    const char *ringctl = harness_program("ringctl");
    if (access(ringctl, X_OK) != 0)
        harness_skip("%s not built (make all)", ringctl);
    return ringctl;
}

/* The child's stdin, set by the test before harness_spawn_prepared. */
static int child_stdin = -1;

static int use_child_stdin(void)
{
    return dup2(child_stdin, STDIN_FILENO) == STDIN_FILENO ? 0 : errno;
}

/* Runs ringctl ARGS... (NULL-terminated, after the program) with stdin
 * from fd; returns its exit status, output in *process (caller frees). */
static int run_ringctl(struct harness_process *process, int stdin_fd, char *const arguments[])
{
    char *argv[24] = { (char *)ringctl_or_skip() };
    size_t count = 1;
    for (; arguments[count - 1] != NULL; count++) {
        cr_assert_lt(count, sizeof(argv) / sizeof(argv[0]) - 1);
        argv[count] = arguments[count - 1];
    }
    argv[count] = NULL;
    child_stdin = stdin_fd;
    harness_spawn_prepared(process, argv, use_child_stdin);
    return harness_process_wait_exit(process, 20000);
}

static int open_null(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "/dev/null: %s", strerror(errno));
    return fd;
}

/* `ringctl migrate` with mode on a terminal answered with typed; returns
 * the exit status, stderr in *process. The pseudo-terminal's slave is
 * ringctl's stdin; what the user typed is written to the master before
 * ringctl reads it (the terminal's line discipline keeps it). */
static int migrate_answering(struct harness_process *process, const char *mode, const char *typed)
{
    struct pseudo_terminal pty;
    pseudo_terminal_open(&pty);
    size_t length = strlen(typed);
    cr_assert_eq(write(pty.master, typed, length), (ssize_t)length, "write to the terminal: %s", strerror(errno));
    char *arguments[] = { "-s", NOBODY, "migrate", "unix:/tmp/nowhere.sock", "--mode", (char *)mode, NULL };
    int status = run_ringctl(process, pty.slave, arguments);
    pseudo_terminal_close(&pty);
    return status;
}

Test(ringctl_postcopy, without_a_terminal_postcopy_and_hybrid_need_yes)
{
    static const char *const modes[] = { "postcopy", "hybrid" };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        struct harness_process process;
        int null = open_null();
        char *arguments[] = { "-s", NOBODY, "migrate", "unix:/tmp/nowhere.sock", "--mode", (char *)modes[i], NULL };
        int status = run_ringctl(&process, null, arguments);
        close(null);
        cr_assert_eq(status, 2, "exit %d; stderr: %s", status, process.err);
        char expected[512];
        snprintf(expected, sizeof(expected), "ringctl: migrate: --mode %s: stdin is not a terminal to confirm that "
                 "the guest is lost if either process dies during post-copy; pass --yes to start it anyway\n",
                 modes[i]);
        cr_assert_str_eq(process.err, expected);
        cr_assert_str_eq(process.out, "");
        harness_process_free(&process);

        /* --yes: no question; ringctl goes on to connect. */
        null = open_null();
        char *confirmed[] = { "-s", NOBODY, "migrate", "unix:/tmp/nowhere.sock", "--mode", (char *)modes[i], "--yes",
                              NULL };
        status = run_ringctl(&process, null, confirmed);
        close(null);
        cr_assert_eq(status, 3, "exit %d; stderr: %s", status, process.err);
        cr_assert(strncmp(process.err, CANNOT_CONNECT, strlen(CANNOT_CONNECT)) == 0, "stderr: %s", process.err);
        harness_process_free(&process);
    }
    /* precopy asks nothing. */
    struct harness_process process;
    int null = open_null();
    char *precopy[] = { "-s", NOBODY, "migrate", "unix:/tmp/nowhere.sock", "--mode", "precopy", NULL };
    int status = run_ringctl(&process, null, precopy);
    close(null);
    cr_assert_eq(status, 3, "exit %d; stderr: %s", status, process.err);
    cr_assert(strncmp(process.err, CANNOT_CONNECT, strlen(CANNOT_CONNECT)) == 0, "stderr: %s", process.err);
    harness_process_free(&process);
}

Test(ringctl_postcopy, on_a_terminal_only_y_or_yes_starts_it, .timeout = 60)
{
    static const char *const refusals[] = { "n\n", "\n", "no\n", "nope\n", "yess\n", "y es\n", "ja\n" };
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        struct harness_process process;
        int status = migrate_answering(&process, i % 2 == 0 ? "postcopy" : "hybrid", refusals[i]);
        cr_assert_eq(status, 1, "answer '%s': exit %d; stderr: %s", refusals[i], status, process.err);
        cr_assert_str_eq(process.err, PROMPT NOT_CONFIRMED, "answer '%s'", refusals[i]);
        cr_assert_str_eq(process.out, "");
        harness_process_free(&process);
    }
    static const char *const consents[] = { "y\n", "yes\n", "Y\n", "  YES \n" };
    for (size_t i = 0; i < sizeof(consents) / sizeof(consents[0]); i++) {
        struct harness_process process;
        int status = migrate_answering(&process, i % 2 == 0 ? "postcopy" : "hybrid", consents[i]);
        cr_assert_eq(status, 3, "answer '%s': exit %d; stderr: %s", consents[i], status, process.err);
        cr_assert(strncmp(process.err, PROMPT CANNOT_CONNECT, strlen(PROMPT CANNOT_CONNECT)) == 0,
                  "answer '%s': stderr: %s", consents[i], process.err);
        harness_process_free(&process);
    }
}

/* Ctrl-D at the question (end of input, the terminal's VEOF on an empty
 * line): no answer is no. */
Test(ringctl_postcopy, end_of_input_on_the_terminal_is_a_no, .timeout = 30)
{
    struct harness_process process;
    int status = migrate_answering(&process, "postcopy", "\x04");
    cr_assert_eq(status, 1, "exit %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, PROMPT "\n" NOT_CONFIRMED);
    harness_process_free(&process);
}

/* Usage errors (exit 2, before any question or connection). */
static void usage_error(char *const arguments[], const char *message)
{
    struct harness_process process;
    int null = open_null();
    int status = run_ringctl(&process, null, arguments);
    close(null);
    cr_assert_eq(status, 2, "exit %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, message);
    harness_process_free(&process);
}

Test(ringctl_postcopy, bad_mode_and_postcopy_after_are_usage_errors)
{
    char *mode[] = { "-s", NOBODY, "migrate", "unix:/x", "--mode", "fast", NULL };
    usage_error(mode, "ringctl: migrate: --mode fast: expected precopy, postcopy or hybrid\n");
    char *without_mode[] = { "-s", NOBODY, "migrate", "unix:/x", "--postcopy-after", "3", NULL };
    usage_error(without_mode, "ringctl: migrate: --postcopy-after needs --mode hybrid (mode precopy never switches "
                              "to post-copy on a condition)\n");
    char *postcopy[] = { "-s", NOBODY, "migrate", "unix:/x", "--mode", "postcopy", "--postcopy-after", "auto", "--yes",
                         NULL };
    usage_error(postcopy, "ringctl: migrate: --postcopy-after needs --mode hybrid (mode postcopy never switches "
                          "to post-copy on a condition)\n");
    static const char *const values[] = { "0", "-1", "5m", "s", "", "5 s", "1.5s", "AUTO", "0x10",
                                          "9999999999999999999" };
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char *hybrid[] = { "-s", NOBODY, "migrate", "unix:/x", "--mode", "hybrid", "--postcopy-after",
                           (char *)values[i], "--yes", NULL };
        char message[256];
        snprintf(message, sizeof(message), "ringctl: migrate: --postcopy-after %s: expected N (passes, N >= 1), Ns "
                 "(seconds, N >= 1) or auto\n", values[i]);
        usage_error(hybrid, message);
    }
}

Test(ringctl_postcopy, postcopy_command_help_usage_and_connection)
{
    struct harness_process process;
    int null = open_null();
    char *help[] = { "postcopy", "--help", NULL };
    cr_assert_eq(run_ringctl(&process, null, help), 0, "stderr: %s", process.err);
    cr_assert_str_eq(process.out,
                     "usage: ringctl [-s PATH] [--json] postcopy\n\n"
                     "Switch the running hybrid migration (migrate --mode hybrid) to post-copy at\n"
                     "its next decision, without waiting for --postcopy-after (migration.postcopy).\n"
                     "Error invalid-state (exit 1) for a migration started as precopy (post-copy was\n"
                     "not agreed to), one started as postcopy, or one already past its switch-over;\n"
                     "no-migration when none runs.\n");
    harness_process_free(&process);
    close(null);
    char *extra[] = { "-s", NOBODY, "postcopy", "now", NULL };
    usage_error(extra, "ringctl: postcopy: takes no arguments\n");
    null = open_null();
    char *plain[] = { "-s", NOBODY, "postcopy", NULL };
    int status = run_ringctl(&process, null, plain);
    close(null);
    cr_assert_eq(status, 3, "exit %d; stderr: %s", status, process.err);
    cr_assert(strncmp(process.err, CANNOT_CONNECT, strlen(CANNOT_CONNECT)) == 0, "stderr: %s", process.err);
    harness_process_free(&process);
}

Test(ringctl_postcopy, migrate_help_describes_the_new_options)
{
    struct harness_process process;
    int null = open_null();
    char *help[] = { "migrate", "--help", NULL };
    cr_assert_eq(run_ringctl(&process, null, help), 0, "stderr: %s", process.err);
    close(null);
    static const char *const lines[] = {
        "\n  --mode MODE             precopy (iterate, then stop and copy), postcopy\n",
        "\n  --postcopy-after WHEN   with --mode hybrid: switch after N pre-copy passes,\n",
        "\n  --yes                   start post-copy or hybrid without asking. Otherwise\n",
        "\n                          stdin ringctl exits 2 asking for --yes.\n",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        cr_assert_not_null(strstr(process.out, lines[i]), "migrate --help lacks '%s':\n%s", lines[i], process.out);
    harness_process_free(&process);
}

/* ---- the post-copy line ------------------------------------------------------------------------------ */

/* What ringctl_print_postcopy prints for p's JSON (caller frees). */
static char *postcopy_line(const struct mig_progress *p)
{
    json_t *object = mig_progress_to_json(p);
    cr_assert_not_null(object);
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    cr_assert_not_null(out);
    ringctl_print_postcopy(object, out);
    cr_assert_eq(fclose(out), 0);
    json_decref(object);
    return text;
}

static struct mig_progress *switched_progress(bool incoming)
{
    struct mig_progress *p = calloc(1, sizeof(*p));
    cr_assert_not_null(p);
    p->id = 3;
    p->incoming = incoming;
    p->mode = (int)MIG_MODE_HYBRID;
    p->state = MIG_STATE_ACTIVE;
    p->vcpu_count = 2;
    snprintf(p->phase, sizeof(p->phase), "postcopy");
    p->postcopy.active = true;
    p->postcopy.switched_at_ms = 2500;
    p->postcopy.pages_total = 262144;
    p->postcopy.pages_pushed = 120000;
    p->postcopy.pages_requested = 900;
    p->postcopy.requests = 850;
    p->postcopy.requests_refused = 2;
    p->postcopy.pages_received = 120900;
    p->postcopy.pages_zero = 4000;
    p->postcopy.faults = 1000;
    p->postcopy.duplicate_faults = 100;
    p->postcopy.blocktime_total_ns = 45678901;
    p->postcopy.latency_count = 900;
    p->postcopy.latency_p50_ns = 180000;
    p->postcopy.latency_p99_ns = 950000;
    p->postcopy.latency_max_ns = 3250000;
    return p;
}

Test(ringctl_postcopy, the_postcopy_line_on_each_side)
{
    struct mig_progress *source = switched_progress(false);
    char *text = postcopy_line(source);
    cr_assert_str_eq(text, "post-copy: switched over at 2500 ms; of 262144 pages 120000 pushed, 900 requested "
                           "(850 requests, 2 refused)\n");
    free(text);
    struct mig_progress *destination = switched_progress(true);
    text = postcopy_line(destination);
    cr_assert_str_eq(text, "post-copy: switched over at 2500 ms; 1000 faults (100 duplicate), 120900 of 262144 pages "
                           "received (4000 zero), blocktime 45.679 ms; fault service p50 180.0 us, p99 950.0 us, "
                           "max 3250.0 us (900 served)\n");
    free(text);
    /* Before the switch, and a migration that ended without one. */
    source->postcopy.active = false;
    text = postcopy_line(source);
    cr_assert_str_eq(text, "post-copy: not switched over yet\n");
    free(text);
    source->state = MIG_STATE_COMPLETED;
    text = postcopy_line(source);
    cr_assert_str_eq(text, "post-copy: never switched over\n");
    free(text);
    /* Pre-copy: no line at all. */
    source->mode = (int)MIG_MODE_PRECOPY;
    text = postcopy_line(source);
    cr_assert_str_eq(text, "");
    free(text);
    free(source);
    free(destination);
}

/* ---- against a VM's API server (needs /dev/kvm) --------------------------------------------------------- */

/* A unix socket that listens and never accepts: the source's migration
 * waits in its handshake until cancelled. */
static int silent_listener(char *path, size_t size)
{
    snprintf(path, size, "/tmp/ringvm-ringctl-postcopy-%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0, "bind %s: %s", path, strerror(errno));
    cr_assert_eq(listen(fd, 4), 0, "listen: %s", strerror(errno));
    return fd;
}

/* `ringctl --json migrate DEST ... --dispatch --yes --stall-timeout 120`:
 * the start result ringctl printed (new reference). */
static json_t *migrate_dispatched(const char *socket_path, const char *dest, const char *mode, const char *after)
{
    char *argv[16] = { "migrate", (char *)dest, "--dispatch", "--yes", "--stall-timeout", "120", "--mode",
                       (char *)mode };
    int argc = 8;
    if (after != NULL) {
        argv[argc++] = "--postcopy-after";
        argv[argc++] = (char *)after;
    }
    argv[argc] = NULL;
    char *text = NULL;
    int status = ringctl_in_process(argc, argv, socket_path, true, &text);
    cr_assert_eq(status, 0, "ringctl migrate --mode %s exited %d, printed: %s", mode, status, text);
    json_error_t error;
    json_t *result = json_loads(text, 0, &error);
    cr_assert_not_null(result, "ringctl printed no JSON (%s): %s", error.text, text);
    free(text);
    return result;
}

static void cancel_and_wait(struct vm *vm, const char *socket_path)
{
    char *argv[] = { "cancel", NULL };
    char *text = NULL;
    cr_assert_eq(ringctl_in_process(1, argv, socket_path, false, &text), 0, "ringctl cancel printed %s", text);
    free(text);
    cr_assert(migration_wait_idle(vm, 30000), "the cancelled migration did not end");
}

Test(ringctl_postcopy_vm, migrate_passes_the_mode_and_postcopy_switches_a_hybrid_migration, .timeout = 120)
{
    harness_require_kvm();
    struct harness_vm source;
    harness_vm_create(&source, "64M", 1, "dirtier,wss=4M", "ring");
    char socket_path[128];
    snprintf(socket_path, sizeof(socket_path), "/tmp/ringvm-ringctl-postcopy-api-%d.sock", (int)getpid());
    struct api_server *server = NULL;
    cr_assert_eq(api_server_create(&server, source.vm, socket_path), 0);
    cr_assert_eq(vm_start(source.vm), 0);
    cr_assert(harness_wait_all_vcpus_advance(source.vm, 100, 20000), "the guest did not run");
    char silent_path[108], dest[128];
    int silent = silent_listener(silent_path, sizeof(silent_path));
    snprintf(dest, sizeof(dest), "unix:%s", silent_path);
    char *postcopy_argv[] = { "postcopy", NULL };
    char *progress_argv[] = { "progress", NULL };
    char *text = NULL;

    /* Nothing to switch yet. */
    cr_assert_eq(ringctl_in_process(1, postcopy_argv, socket_path, false, &text), 1, "postcopy without a migration");
    cr_assert_str_eq(text, "");
    free(text);

    /* hybrid after 5 s: what the VMM runs with comes back in the result. */
    json_t *result = migrate_dispatched(socket_path, dest, "hybrid", "5s");
    cr_assert_str_eq(json_string_value(json_object_get(result, "mode")), "hybrid");
    cr_assert_str_eq(json_string_value(json_object_get(result, "postcopy_after")), "5s");
    cr_assert_str_eq(json_string_value(json_object_get(result, "dest")), dest);
    json_decref(result);
    cr_assert_eq(ringctl_in_process(1, postcopy_argv, socket_path, false, &text), 0, "printed %s", text);
    cr_assert_str_eq(text, "switching to post-copy at the migration's next decision\n");
    free(text);
    cr_assert_eq(ringctl_in_process(1, postcopy_argv, socket_path, true, &text), 0, "printed %s", text);
    cr_assert_str_eq(text, "{\"switching\":true}\n");
    free(text);
    cr_assert_eq(ringctl_in_process(1, progress_argv, socket_path, false, &text), 0);
    cr_assert_not_null(strstr(text, "\npost-copy: not switched over yet\n"), "progress printed:\n%s", text);
    free(text);
    cancel_and_wait(source.vm, socket_path);
    cr_assert_eq(ringctl_in_process(1, progress_argv, socket_path, false, &text), 0);
    cr_assert_not_null(strstr(text, "\npost-copy: never switched over\n"), "progress printed:\n%s", text);
    free(text);

    /* hybrid after 4 passes, and the default trigger. */
    result = migrate_dispatched(socket_path, dest, "hybrid", "4");
    cr_assert_eq(json_integer_value(json_object_get(result, "postcopy_after")), 4);
    json_decref(result);
    cancel_and_wait(source.vm, socket_path);
    result = migrate_dispatched(socket_path, dest, "hybrid", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(result, "postcopy_after")), "auto");
    json_decref(result);
    cancel_and_wait(source.vm, socket_path);

    /* precopy and postcopy refuse `ringctl postcopy` (invalid-state: exit 1). */
    static const char *const refusing[] = { "precopy", "postcopy" };
    for (size_t i = 0; i < sizeof(refusing) / sizeof(refusing[0]); i++) {
        result = migrate_dispatched(socket_path, dest, refusing[i], NULL);
        cr_assert_str_eq(json_string_value(json_object_get(result, "mode")), refusing[i]);
        cr_assert(json_is_null(json_object_get(result, "postcopy_after")));
        json_decref(result);
        cr_assert_eq(ringctl_in_process(1, postcopy_argv, socket_path, false, &text), 1, "mode %s: printed %s",
                     refusing[i], text);
        cr_assert_str_eq(text, "");
        free(text);
        cancel_and_wait(source.vm, socket_path);
    }
    close(silent);
    unlink(silent_path);
    cr_assert(harness_wait_all_vcpus_advance(source.vm, 100, 20000), "the guest stopped");
    migration_release(source.vm);
    api_server_destroy(server);
    harness_vm_stop(&source);
}
