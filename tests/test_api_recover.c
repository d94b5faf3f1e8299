/*
 * Post-copy recovery through the API (issue 17): migration.recover on the
 * destination and migration.start's resume on the source.
 *
 * api_recover runs without KVM: arguments through the real dispatcher with
 * no VM (a valid request gets as far as "no VM in this process"), and what
 * api.commands says. api_recover_vm needs /dev/kvm: both commands against
 * a VM without a migration ("no-migration"), a source whose migration is
 * held in its handshake by a destination that accepts nothing, and a
 * destination still listening ("invalid-state": neither is paused in
 * post-copy). A migration really paused by a broken link is the data
 * path's business (its own tests).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/commands.h"
#include "api/dispatch.h"
#include "migration/migration.h"
#include "migration/progress.h"
#include "tests/api_requests.h"
#include "tests/harness.h"
#include "tests/migration_destination.h"

#define NOT_PAUSED "the migration is not paused in post-copy"
#define WITH_RESUME "not valid with resume (a resumed migration goes on with the parameters it was started with; " \
                    "only dest goes with resume)"

/* migration.recover with these arguments (a JSON object's inside). */
static void recover_refused(struct vm *vm, const char *arguments, const char *code, const char *message)
{
    char line[1024];
    snprintf(line, sizeof(line), "{\"id\":1,\"cmd\":\"migration.recover\",\"args\":{%s}}", arguments);
    api_expect_error(vm, line, code, message);
}

/* migration.start {resume: true} with these arguments besides. */
static void resume_refused(struct vm *vm, const char *arguments, const char *code, const char *message)
{
    char line[1024];
    snprintf(line, sizeof(line), "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"resume\":true%s%s}}",
             arguments[0] != '\0' ? "," : "", arguments);
    api_expect_error(vm, line, code, message);
}

/* Addresses neither side can listen on or connect to, and what they get
 * (after "args.NAME: "). */
static const struct {
    const char *address;
    const char *message;
} bad_addresses[] = {
    { "", "empty migration address (expected unix:PATH or tcp:HOST:PORT)" },
    { "unix:", "'unix:': empty socket path" },
    { "tcp:host", "'tcp:host': expected tcp:HOST:PORT" },
    { "tcp::4444", "'tcp::4444': bad host" },
    { "tcp:host:0", "'tcp:host:0': port must be 1..65535" },
    { "tcp:host:65536", "'tcp:host:65536': port must be 1..65535" },
    { "tcp:[::1:4444", "'tcp:[::1:4444': expected tcp:[IPV6]:PORT" },
    /* A local hand-over has no post-copy to recover. */
    { "local:/tmp/x.sock", "'local:/tmp/x.sock': unknown transport (expected unix:PATH or tcp:HOST:PORT)" },
    { "/tmp/x.sock", "'/tmp/x.sock': unknown transport (expected unix:PATH or tcp:HOST:PORT)" },
};

static const char *const good_addresses[] = { "unix:/tmp/ringvm-recover.sock", "tcp:127.0.0.1:4444",
                                              "tcp:[::1]:4444", "tcp:dest.example:65535" };

/* ---- migration.recover's arguments ------------------------------------------------------------------ */

Test(api_recover, recover_needs_one_address_that_parses)
{
    recover_refused(NULL, "", "invalid-argument", "args.address: required (string)");
    recover_refused(NULL, "\"address\":null", "invalid-argument", "args.address: required (string)");
    recover_refused(NULL, "\"address\":4444", "invalid-argument", "args.address: expected string");
    recover_refused(NULL, "\"address\":\"unix:/x\",\"dest\":\"unix:/y\"", "invalid-argument",
                    "args.dest: unknown argument (migration.recover takes address)");
    for (size_t i = 0; i < sizeof(bad_addresses) / sizeof(bad_addresses[0]); i++) {
        char arguments[256], message[512];
        snprintf(arguments, sizeof(arguments), "\"address\":\"%s\"", bad_addresses[i].address);
        snprintf(message, sizeof(message), "args.address: %s", bad_addresses[i].message);
        recover_refused(NULL, arguments, "invalid-argument", message);
    }
    /* Longer than the migration keeps (255 bytes), whatever its form. */
    char arguments[512];
    int n = snprintf(arguments, sizeof(arguments), "\"address\":\"tcp:");
    memset(arguments + n, 'h', 250);
    snprintf(arguments + n + 250, sizeof(arguments) - (size_t)n - 250, ":4444\"");
    recover_refused(NULL, arguments, "invalid-argument", "args.address: longer than 255 bytes");
}

/* Arguments are judged before the VM is looked at: a valid request without
 * a VM gets exactly that answer. */
Test(api_recover, a_valid_recover_reaches_the_vm_check)
{
    for (size_t i = 0; i < sizeof(good_addresses) / sizeof(good_addresses[0]); i++) {
        char arguments[256];
        snprintf(arguments, sizeof(arguments), "\"address\":\"%s\"", good_addresses[i]);
        recover_refused(NULL, arguments, "unavailable", "no VM in this process");
    }
}

/* ---- migration.start's resume ------------------------------------------------------------------------ */

Test(api_recover, resume_takes_only_dest)
{
    /* Every other argument of migration.start, with a value it would
     * accept without resume. */
    static const struct {
        const char *name, *value;
    } others[] = {
        { "downtime_ms", "300" }, { "converge", "\"auto\"" }, { "max_bandwidth_mibs", "0" },
        { "switch_over_bandwidth_mibs", "0" }, { "timeout_s", "60" },
        { "timeout_strategy", "\"cancel\"" }, { "keep_alive", "false" }, { "throttle_initial", "20" },
        { "throttle_increment", "10" }, { "throttle_max", "99" }, { "stall_timeout_s", "5" },
        { "verify_digest", "false" }, { "source_digest", "true" }, { "tls_psk_file", "\"/etc/ringvm/keys.psk\"" },
        { "tls_creds_dir", "\"/etc/ringvm\"" }, { "tls_server_name", "\"dest.example\"" },
        { "mode", "\"postcopy\"" }, { "postcopy_after", "\"auto\"" },
    };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        char arguments[256], message[512];
        snprintf(arguments, sizeof(arguments), "\"dest\":\"unix:/x\",\"%s\":%s", others[i].name, others[i].value);
        snprintf(message, sizeof(message), "args.%s: " WITH_RESUME, others[i].name);
        resume_refused(NULL, arguments, "invalid-argument", message);
        /* null counts as absent, as everywhere in the API */
        snprintf(arguments, sizeof(arguments), "\"dest\":\"unix:/x\",\"%s\":null", others[i].name);
        resume_refused(NULL, arguments, "unavailable", "no VM in this process");
    }
    /* Several: the first in migration.start's table is named. */
    resume_refused(NULL, "\"mode\":\"postcopy\",\"dest\":\"unix:/x\",\"downtime_ms\":300", "invalid-argument",
                   "args.downtime_ms: " WITH_RESUME);
    /* Checked before dest: the caller learns about the argument first. */
    resume_refused(NULL, "\"dest\":\"local:/x\",\"mode\":\"hybrid\"", "invalid-argument",
                   "args.mode: " WITH_RESUME);
    /* The argument table still applies first. */
    resume_refused(NULL, "\"dest\":\"unix:/x\",\"mode\":\"fast\"", "invalid-argument",
                   "args.mode: expected one of precopy, postcopy, hybrid");
    resume_refused(NULL, "\"dest\":\"unix:/x\",\"verify_digest\":1", "invalid-argument",
                   "args.verify_digest: expected boolean");
}

Test(api_recover, resume_needs_a_dest_that_parses)
{
    resume_refused(NULL, "", "invalid-argument", "args.dest: required (string)");
    resume_refused(NULL, "\"dest\":null", "invalid-argument", "args.dest: required (string)");
    resume_refused(NULL, "\"dest\":7", "invalid-argument", "args.dest: expected string");
    for (size_t i = 0; i < sizeof(bad_addresses) / sizeof(bad_addresses[0]); i++) {
        char arguments[256], message[512];
        snprintf(arguments, sizeof(arguments), "\"dest\":\"%s\"", bad_addresses[i].address);
        snprintf(message, sizeof(message), "args.dest: %s", bad_addresses[i].message);
        resume_refused(NULL, arguments, "invalid-argument", message);
    }
    char arguments[512];
    int n = snprintf(arguments, sizeof(arguments), "\"dest\":\"unix:/");
    memset(arguments + n, 'p', 260);
    snprintf(arguments + n + 260, sizeof(arguments) - (size_t)n - 260, "\"");
    resume_refused(NULL, arguments, "invalid-argument", "args.dest: longer than 255 bytes");
    for (size_t i = 0; i < sizeof(good_addresses) / sizeof(good_addresses[0]); i++) {
        snprintf(arguments, sizeof(arguments), "\"dest\":\"%s\"", good_addresses[i]);
        resume_refused(NULL, arguments, "unavailable", "no VM in this process");
    }
}

Test(api_recover, resume_must_be_a_boolean_and_false_is_a_plain_start)
{
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/x\",\"resume\":\"yes\"}}",
                 "invalid-argument", "args.resume: expected boolean");
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/x\",\"resume\":1}}",
                 "invalid-argument", "args.resume: expected boolean");
    /* false (and null): migration.start's own rules, all arguments allowed. */
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"local:/x\",\"resume\":false,"
                       "\"downtime_ms\":300}}", "unavailable", "no VM in this process");
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/x\",\"resume\":null,"
                       "\"mode\":\"hybrid\",\"postcopy_after\":2}}", "unavailable", "no VM in this process");
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/x\",\"resume\":false,"
                       "\"postcopy_after\":2}}", "invalid-argument",
                 "args.postcopy_after: only valid with mode hybrid (mode is precopy)");
    /* The parameters' parser knows nothing of resume (it never sees one). */
    json_t *args = json_pack("{s:s, s:b}", "dest", "unix:/x", "resume", 0);
    struct mig_params params;
    struct api_error error = { 0 };
    cr_assert_eq(api_migration_start_params(args, &params, &error), 0, "refused: %s", error.message);
    cr_assert_str_eq(params.dest, "unix:/x");
    json_decref(args);
}

Test(api_recover, unknown_arguments_list_resume)
{
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/x\",\"resum\":true}}",
                 "invalid-argument", "args.resum: unknown argument (migration.start takes dest, downtime_ms, "
                 "converge, max_bandwidth_mibs, switch_over_bandwidth_mibs, timeout_s, timeout_strategy, keep_alive, throttle_initial, "
                 "throttle_increment, throttle_max, stall_timeout_s, verify_digest, source_digest, tls_psk_file, "
                 "tls_creds_dir, "
                 "tls_server_name, console, mode, postcopy_after, resume)");
}

/* The entry of name in an api.commands list. */
static json_t *entry(json_t *list, const char *name)
{
    size_t index;
    json_t *item;
    json_array_foreach(list, index, item)
        if (strcmp(json_string_value(json_object_get(item, "name")), name) == 0)
            return item;
    return NULL;
}

Test(api_recover, api_commands_describes_recover_and_resume)
{
    json_t *result = api_expect_ok(NULL, "{\"id\":1,\"cmd\":\"api.commands\"}");
    json_t *commands = json_object_get(result, "commands");
    json_t *recover = entry(commands, "migration.recover");
    cr_assert_not_null(recover, "api.commands misses migration.recover");
    cr_assert(json_is_false(json_object_get(recover, "worker")), "migration.recover must run on the epoll thread");
    cr_assert_str_eq(json_string_value(json_object_get(recover, "summary")),
                     "destination: listen on a new address for the source of a paused post-copy migration");
    json_t *args = json_object_get(recover, "args");
    cr_assert_eq(json_array_size(args), 1);
    json_t *address = entry(args, "address");
    cr_assert_not_null(address);
    cr_assert_str_eq(json_string_value(json_object_get(address, "type")), "string");
    cr_assert(json_is_true(json_object_get(address, "required")));
    json_t *start = entry(commands, "migration.start");
    cr_assert_not_null(start);
    cr_assert(json_is_true(json_object_get(start, "worker")));
    json_t *resume = entry(json_object_get(start, "args"), "resume");
    cr_assert_not_null(resume, "migration.start has no resume argument");
    cr_assert_str_eq(json_string_value(json_object_get(resume, "type")), "boolean");
    cr_assert(json_is_false(json_object_get(resume, "required")));
    json_decref(result);
}

/* ---- against real VMs (needs /dev/kvm) ----------------------------------------------------------------- */

/* A unix socket that listens and never accepts: the source connects (the
 * backlog takes it), sends its hello and waits for an answer, so its
 * migration stays active in the handshake until cancelled. */
static int silent_listener(char *path, size_t size)
{
    snprintf(path, size, "/tmp/ringvm-recover-silent-%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0, "bind %s: %s", path, strerror(errno));
    cr_assert_eq(listen(fd, 4), 0, "listen: %s", strerror(errno));
    return fd;
}

static void expect_no_migration(struct vm *vm)
{
    recover_refused(vm, "\"address\":\"unix:/tmp/ringvm-recover-new.sock\"", "no-migration",
                    "no migration is running");
    resume_refused(vm, "\"dest\":\"unix:/tmp/ringvm-recover-new.sock\"", "no-migration", "no migration is running");
}

Test(api_recover_vm, without_a_migration_both_are_no_migration, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    expect_no_migration(h.vm);
    /* Bad arguments are still answered as such, with a VM too. */
    recover_refused(h.vm, "\"address\":\"local:/x\"", "invalid-argument",
                    "args.address: 'local:/x': unknown transport (expected unix:PATH or tcp:HOST:PORT)");
    resume_refused(h.vm, "\"dest\":\"unix:/x\",\"mode\":\"postcopy\"", "invalid-argument",
                   "args.mode: " WITH_RESUME);
    cr_assert(!migration_active(h.vm), "a refused resume must start nothing");
    migration_release(h.vm);
    harness_vm_stop(&h);
}

Test(api_recover_vm, a_migration_not_paused_in_postcopy_is_invalid_state, .timeout = 120)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest did not run");
    char path[108];
    int silent = silent_listener(path, sizeof(path));
    static const char *const modes[] = { "precopy", "postcopy", "hybrid" };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        char line[512];
        snprintf(line, sizeof(line), "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:%s\","
                 "\"stall_timeout_s\":120,\"mode\":\"%s\"}}", path, modes[i]);
        json_t *result = api_expect_ok(h.vm, line);
        json_decref(result);
        /* Held in its handshake: running, not paused in post-copy. */
        resume_refused(h.vm, "\"dest\":\"unix:/tmp/ringvm-recover-new.sock\"", "invalid-state", NOT_PAUSED);
        recover_refused(h.vm, "\"address\":\"tcp:127.0.0.1:4444\"", "invalid-state", NOT_PAUSED);
        /* A refused resume is not a second start, and changes nothing. */
        cr_assert(migration_active(h.vm));
        json_t *progress = api_expect_ok(h.vm, "{\"id\":2,\"cmd\":\"migration.progress\"}");
        cr_assert_str_eq(json_string_value(json_object_get(progress, "mode")), modes[i]);
        cr_assert_str_eq(json_string_value(json_object_get(progress, "role")), "outgoing");
        json_decref(progress);
        json_decref(api_expect_ok(h.vm, "{\"id\":3,\"cmd\":\"migration.cancel\"}"));
        cr_assert(migration_wait_idle(h.vm, 30000), "the cancelled migration did not end");
        expect_no_migration(h.vm);
    }
    close(silent);
    unlink(path);
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest stopped");
    migration_release(h.vm);
    harness_vm_stop(&h);
}

Test(api_recover_vm, a_destination_still_listening_is_invalid_state, .timeout = 120)
{
    harness_require_kvm();
    struct test_destination d;
    test_destination_start(&d, "64M", 1, "dirtier,wss=4M", false);
    /* migration_incoming_run_fd marks the migration active once it runs. */
    for (int i = 0; i < 200 && !migration_active(d.harness.vm); i++)
        usleep(10000);
    cr_assert(migration_active(d.harness.vm), "the destination does not listen");
    recover_refused(d.harness.vm, "\"address\":\"unix:/tmp/ringvm-recover-new.sock\"", "invalid-state", NOT_PAUSED);
    resume_refused(d.harness.vm, "\"dest\":\"unix:/tmp/ringvm-recover-new.sock\"", "invalid-state", NOT_PAUSED);
    test_destination_stop(&d);
}
