/*
 * ringctl's post-copy recovery surface (issue 17): `ringctl recover
 * ADDRESS` (migration.recover) and `ringctl migrate --resume DEST`
 * (migration.start {dest, resume: true}).
 *
 * ringctl_recover runs the built ringctl against a socket nobody serves
 * (exit 3 proves ringctl got as far as connecting; 2 that it stopped at
 * the usage check), with /dev/null as stdin (so a question asked would
 * end in exit 2 too, with its own message). ringctl_recover_vm (needs
 * /dev/kvm) runs both commands in this process against a VM's API server:
 * no migration, and one held in its handshake (not paused: invalid-state).
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
#include "tests/harness.h"
#include "tests/ringctl_in_process.h"

#define NOBODY "/nonexistent/ringvm-recover.sock"
#define CANNOT_CONNECT "ringctl: connect(unix:" NOBODY "): No such file or directory (is ringvm running with " \
                       "--api-socket on this path?)\n"
#define KEEPS_PARAMETERS "cannot be used with --resume (a resumed migration goes on with the parameters it was " \
                         "started with)\n"
#define RESUME_ONE_DEST "ringctl: migrate: --resume: expected exactly one DEST (unix:PATH or tcp:HOST:PORT where " \
                        "the destination listens after `ringctl recover`)\n"
#define RECOVER_ONE_ADDRESS "ringctl: recover: expected exactly one ADDRESS (unix:PATH or tcp:HOST:PORT to listen " \
                            "on for the source's `ringctl migrate --resume ADDRESS`)\n"

static const char *ringctl_or_skip(void)
{
    const char *ringctl = harness_program("ringctl");
    if (access(ringctl, X_OK) != 0)
        harness_skip("%s not built (make all)", ringctl);
    return ringctl;
}

static int null_stdin = -1;

static int use_null_stdin(void)
{
    return dup2(null_stdin, STDIN_FILENO) == STDIN_FILENO ? 0 : errno;
}

/* Runs ringctl ARGS... (NULL-terminated, after the program) with stdin
 * from /dev/null; returns its exit status, output in *process (caller
 * frees). */
static int run_ringctl(struct harness_process *process, char *const arguments[])
{
    char *argv[24] = { (char *)ringctl_or_skip() };
    size_t count = 1;
    for (; arguments[count - 1] != NULL; count++) {
        cr_assert_lt(count, sizeof(argv) / sizeof(argv[0]) - 1);
        argv[count] = arguments[count - 1];
    }
    argv[count] = NULL;
    null_stdin = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(null_stdin, 0, "/dev/null: %s", strerror(errno));
    harness_spawn_prepared(process, argv, use_null_stdin);
    int status = harness_process_wait_exit(process, 20000);
    close(null_stdin);
    return status;
}

static void usage_error(char *const arguments[], const char *message)
{
    struct harness_process process;
    int status = run_ringctl(&process, arguments);
    cr_assert_eq(status, 2, "exit %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, message);
    cr_assert_str_eq(process.out, "");
    harness_process_free(&process);
}

/* ringctl got past its checks (and asked nothing): it tried to connect. */
static void reaches_the_vmm(char *const arguments[])
{
    struct harness_process process;
    int status = run_ringctl(&process, arguments);
    cr_assert_eq(status, 3, "exit %d; stderr: %s", status, process.err);
    cr_assert(strncmp(process.err, CANNOT_CONNECT, strlen(CANNOT_CONNECT)) == 0, "stderr: %s", process.err);
    cr_assert_str_eq(process.out, "");
    harness_process_free(&process);
}

/* ---- ringctl recover ---------------------------------------------------------------------------------- */

Test(ringctl_recover, recover_help)
{
    struct harness_process process;
    char *help[] = { "recover", "--help", NULL };
    cr_assert_eq(run_ringctl(&process, help), 0, "stderr: %s", process.err);
    cr_assert_str_eq(process.out,
                     "usage: ringctl [-s PATH] [--json] recover ADDRESS\n\n"
                     "On the destination of a post-copy migration a broken link paused (phase\n"
                     "postcopy-paused): listen on ADDRESS (unix:PATH or tcp:HOST:PORT) for the\n"
                     "source's new connection (migration.recover); then run `ringctl migrate\n"
                     "--resume ADDRESS` on the source. Error no-migration (exit 1) when no migration\n"
                     "runs here, invalid-state when it is not paused in post-copy (or this is its\n"
                     "source), invalid-argument for an ADDRESS that does not parse.\n");
    harness_process_free(&process);
}

Test(ringctl_recover, recover_takes_exactly_one_address)
{
    char *none[] = { "-s", NOBODY, "recover", NULL };
    usage_error(none, RECOVER_ONE_ADDRESS);
    char *two[] = { "-s", NOBODY, "recover", "unix:/a", "unix:/b", NULL };
    usage_error(two, RECOVER_ONE_ADDRESS);
    char *option[] = { "-s", NOBODY, "recover", "--now", "unix:/a", NULL };
    usage_error(option, "ringctl: recover: unknown option '--now'\n");
    /* The VMM judges the address (invalid-argument): ringctl passes it on. */
    static const char *const addresses[] = { "unix:/tmp/new.sock", "tcp:10.0.0.2:4445", "local:/x", "bogus" };
    for (size_t i = 0; i < sizeof(addresses) / sizeof(addresses[0]); i++) {
        char *one[] = { "-s", NOBODY, "recover", (char *)addresses[i], NULL };
        reaches_the_vmm(one);
    }
}

/* ---- ringctl migrate --resume ------------------------------------------------------------------------- */

Test(ringctl_recover, resume_refuses_every_migration_parameter)
{
    static const struct {
        const char *option, *value;     /* value NULL: a flag */
    } options[] = {
        { "--mode", "postcopy" }, { "--mode", "hybrid" }, { "--postcopy-after", "3" }, { "--downtime-ms", "300" },
        { "--converge", "auto" }, { "--max-bandwidth", "100" }, { "--keep-alive", NULL }, { "--timeout", "60" },
        { "--timeout-strategy", "force" }, { "--throttle-initial", "20" }, { "--throttle-increment", "10" },
        { "--throttle-max", "99" }, { "--stall-timeout", "5" }, { "--verify-digest", NULL },
        { "--no-verify", NULL }, { "--no-source-digest", NULL }, { "--tls-psk", "keys.psk" }, { "--tls-creds", "/etc/ringvm" },
        { "--tls-server-name", "dest" },
    };
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        char message[256];
        snprintf(message, sizeof(message), "ringctl: migrate: %s " KEEPS_PARAMETERS, options[i].option);
        /* Before and after --resume, before and after DEST. */
        char *after[8] = { "-s", NOBODY, "migrate", "--resume", "unix:/tmp/new.sock", (char *)options[i].option,
                           (char *)options[i].value, NULL };
        usage_error(after, message);
        char *before[8] = { "-s", NOBODY, "migrate", (char *)options[i].option, (char *)options[i].value,
                            "--resume", "unix:/tmp/new.sock", NULL };
        if (options[i].value == NULL) {
            before[4] = "--resume";
            before[5] = "unix:/tmp/new.sock";
            before[6] = NULL;
        }
        usage_error(before, message);
    }
    /* Several: the first given is named. */
    char *several[] = { "-s", NOBODY, "migrate", "--resume", "--yes", "--stall-timeout", "9", "--mode", "postcopy",
                        "unix:/x", NULL };
    usage_error(several, "ringctl: migrate: --stall-timeout " KEEPS_PARAMETERS);
    /* A malformed value is still reported as such (parsed first). */
    char *bad_mode[] = { "-s", NOBODY, "migrate", "--resume", "--mode", "fast", "unix:/x", NULL };
    usage_error(bad_mode, "ringctl: migrate: --mode fast: expected precopy, postcopy or hybrid\n");
}

Test(ringctl_recover, resume_takes_exactly_one_dest_and_asks_nothing)
{
    char *none[] = { "-s", NOBODY, "migrate", "--resume", NULL };
    usage_error(none, RESUME_ONE_DEST);
    char *two[] = { "-s", NOBODY, "migrate", "--resume", "unix:/a", "unix:/b", NULL };
    usage_error(two, RESUME_ONE_DEST);
    char *only_dispatch[] = { "-s", NOBODY, "migrate", "--dispatch", "--resume", NULL };
    usage_error(only_dispatch, RESUME_ONE_DEST);
    /* No confirmation (stdin is not a terminal: a question would exit 2),
     * no plaintext warning for tcp:; --dispatch and --yes are fine. */
    char *plain[] = { "-s", NOBODY, "migrate", "--resume", "unix:/tmp/new.sock", NULL };
    reaches_the_vmm(plain);
    char *tcp[] = { "-s", NOBODY, "migrate", "tcp:10.0.0.2:4445", "--resume", NULL };
    reaches_the_vmm(tcp);
    char *dispatch[] = { "-s", NOBODY, "migrate", "--resume", "--dispatch", "--yes", "unix:/tmp/new.sock", NULL };
    reaches_the_vmm(dispatch);
    char *json[] = { "-s", NOBODY, "--json", "migrate", "--resume", "unix:/tmp/new.sock", "--dispatch", NULL };
    reaches_the_vmm(json);
}

Test(ringctl_recover, migrate_help_describes_resume)
{
    struct harness_process process;
    char *help[] = { "migrate", "--help", NULL };
    cr_assert_eq(run_ringctl(&process, help), 0, "stderr: %s", process.err);
    cr_assert(strncmp(process.out, "usage: ringctl [-s PATH] [--json] migrate [--resume] DEST [OPTIONS]\n",
                      strlen("usage: ringctl [-s PATH] [--json] migrate [--resume] DEST [OPTIONS]\n")) == 0,
              "migrate --help starts: %.120s", process.out);
    static const char *const lines[] = {
        "\n  --resume                go on with the post-copy migration a broken link\n",
        "\n                          after `ringctl recover DEST` there (migration.start\n",
        "\n                          started with: any option but --dispatch (and --yes,\n",
        "\n                          with nothing to confirm) is a usage error (exit 2).\n",
        "\n                          invalid-state when it is not paused in post-copy.\n",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        cr_assert_not_null(strstr(process.out, lines[i]), "migrate --help lacks '%s':\n%s", lines[i], process.out);
    harness_process_free(&process);
}

/* ---- against a VM's API server (needs /dev/kvm) --------------------------------------------------------- */

/* Runs argv (NULL-terminated) here; asserts its exit status and that it
 * printed nothing on stdout (a VMM error goes to stderr). */
static void ringctl_fails(char **argv, const char *socket_path, int expected)
{
    int argc = 0;
    while (argv[argc] != NULL)
        argc++;
    char *text = NULL;
    int status = ringctl_in_process(argc, argv, socket_path, false, &text);
    cr_assert_eq(status, expected, "ringctl %s %s exited %d, printed %s", argv[0], argv[1], status, text);
    cr_assert_str_eq(text, "");
    free(text);
}

Test(ringctl_recover_vm, recover_and_resume_without_a_paused_migration_exit_1, .timeout = 120)
{
    harness_require_kvm();
    struct harness_vm source;
    harness_vm_create(&source, "64M", 1, "dirtier,wss=4M", "ring");
    char socket_path[128];
    snprintf(socket_path, sizeof(socket_path), "/tmp/ringvm-ringctl-recover-api-%d.sock", (int)getpid());
    struct api_server *server = NULL;
    cr_assert_eq(api_server_create(&server, source.vm, socket_path), 0);
    cr_assert_eq(vm_start(source.vm), 0);
    char *recover[] = { "recover", "unix:/tmp/ringvm-ringctl-recover-new.sock", NULL };
    char *resume[] = { "migrate", "--resume", "unix:/tmp/ringvm-ringctl-recover-new.sock", NULL };
    char *resume_dispatch[] = { "migrate", "--resume", "--dispatch", "unix:/tmp/ringvm-ringctl-recover-new.sock",
                                NULL };
    char *bad_address[] = { "recover", "local:/x", NULL };

    /* no-migration */
    ringctl_fails(recover, socket_path, 1);
    ringctl_fails(resume, socket_path, 1);
    ringctl_fails(resume_dispatch, socket_path, 1);
    ringctl_fails(bad_address, socket_path, 1);
    cr_assert(!migration_active(source.vm), "migrate --resume must not start a migration");

    /* A migration held in its handshake: invalid-state, and it goes on. */
    char silent_path[108];
    snprintf(silent_path, sizeof(silent_path), "/tmp/ringvm-ringctl-recover-silent-%d.sock", (int)getpid());
    unlink(silent_path);
    int silent = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(silent, 0);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", silent_path);
    cr_assert_eq(bind(silent, (struct sockaddr *)&address, sizeof(address)), 0, "bind: %s", strerror(errno));
    cr_assert_eq(listen(silent, 4), 0);
    char dest[128];
    snprintf(dest, sizeof(dest), "unix:%s", silent_path);
    char *start[] = { "migrate", dest, "--dispatch", "--yes", "--mode", "postcopy", "--stall-timeout", "120", NULL };
    char *text = NULL;
    cr_assert_eq(ringctl_in_process(8, start, socket_path, false, &text), 0, "printed %s", text);
    free(text);
    ringctl_fails(recover, socket_path, 1);
    ringctl_fails(resume_dispatch, socket_path, 1);
    cr_assert(migration_active(source.vm), "a refused resume must leave the migration running");
    char *cancel[] = { "cancel", NULL };
    cr_assert_eq(ringctl_in_process(1, cancel, socket_path, false, &text), 0, "printed %s", text);
    free(text);
    cr_assert(migration_wait_idle(source.vm, 30000), "the cancelled migration did not end");
    close(silent);
    unlink(silent_path);
    migration_release(source.vm);
    api_server_destroy(server);
    harness_vm_stop(&source);
}
