/*
 * The post-copy API (issue 17): migration.start's mode and postcopy_after,
 * migration.postcopy, and the post-copy part of migration.progress.
 *
 * api_postcopy runs without KVM: arguments through the real dispatcher
 * with no VM (a valid request gets as far as "no VM in this process"),
 * their mapping onto struct mig_params, and mig_progress_to_json on filled
 * snapshots. api_postcopy_vm needs /dev/kvm: migration.postcopy against
 * real migrations held in their handshake by a destination that accepts
 * nothing (so the data path, not wired here, plays no part).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
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

/* migration.start with these arguments (a JSON object's inside), no VM. */
static void start_refused(const char *arguments, const char *code, const char *message)
{
    char line[512];
    snprintf(line, sizeof(line), "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:/x\"%s%s}}",
             arguments[0] != '\0' ? "," : "", arguments);
    api_expect_error(NULL, line, code, message);
}

/* ---- migration.start's arguments ------------------------------------------------------------- */

struct params_case {
    const char *arguments;      /* inside the args object, after dest */
    enum mig_mode mode;
    uint64_t passes;
    uint64_t ms;
    bool automatic;
};

Test(api_postcopy, mode_and_postcopy_after_map_onto_the_parameters)
{
    static const struct params_case cases[] = {
        { "", MIG_MODE_PRECOPY, 0, 0, true },   /* auto is mig_params_defaults' value, ignored by precopy */
        { "\"mode\":\"precopy\"", MIG_MODE_PRECOPY, 0, 0, true },
        { "\"mode\":\"postcopy\"", MIG_MODE_POSTCOPY, 0, 0, true },
        { "\"mode\":\"hybrid\"", MIG_MODE_HYBRID, 0, 0, true },
        { "\"mode\":\"hybrid\",\"postcopy_after\":null", MIG_MODE_HYBRID, 0, 0, true },
        { "\"mode\":\"hybrid\",\"postcopy_after\":\"auto\"", MIG_MODE_HYBRID, 0, 0, true },
        { "\"mode\":\"hybrid\",\"postcopy_after\":1", MIG_MODE_HYBRID, 1, 0, false },
        { "\"mode\":\"hybrid\",\"postcopy_after\":3", MIG_MODE_HYBRID, 3, 0, false },
        { "\"mode\":\"hybrid\",\"postcopy_after\":\"1s\"", MIG_MODE_HYBRID, 0, 1000, false },
        { "\"mode\":\"hybrid\",\"postcopy_after\":\"5s\"", MIG_MODE_HYBRID, 0, 5000, false },
        { "\"mode\":\"hybrid\",\"postcopy_after\":\"005s\"", MIG_MODE_HYBRID, 0, 5000, false },
        { "\"mode\":\"hybrid\",\"postcopy_after\":\"3599s\"", MIG_MODE_HYBRID, 0, 3599000, false },
        { "\"mode\":\"hybrid\",\"timeout_s\":2592000,\"postcopy_after\":\"2591999s\"", MIG_MODE_HYBRID, 0,
          2591999000ull, false },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "{\"dest\":\"unix:/x\"%s%s}", cases[i].arguments[0] != '\0' ? "," : "",
                 cases[i].arguments);
        json_error_t json_error;
        json_t *args = json_loads(text, 0, &json_error);
        cr_assert_not_null(args, "%s: %s", text, json_error.text);
        struct mig_params params;
        struct api_error error = { 0 };
        cr_assert_eq(api_migration_start_params(args, &params, &error), 0, "%s refused: %s", text, error.message);
        cr_assert_eq(params.mode, cases[i].mode, "%s: mode %d", text, (int)params.mode);
        cr_assert_eq(params.postcopy_after_passes, cases[i].passes, "%s: passes %" PRIu64, text,
                     params.postcopy_after_passes);
        cr_assert_eq(params.postcopy_after_ms, cases[i].ms, "%s: ms %" PRIu64, text, params.postcopy_after_ms);
        cr_assert_eq(params.postcopy_after_auto, cases[i].automatic, "%s: auto %d", text,
                     params.postcopy_after_auto);
        if (params.mode == MIG_MODE_HYBRID)   /* what migration_start demands of hybrid */
            cr_assert_eq((params.postcopy_after_passes != 0) + (params.postcopy_after_ms != 0) +
                             params.postcopy_after_auto, 1, "%s: not exactly one trigger", text);
        cr_assert_str_eq(params.dest, "unix:/x");
        json_decref(args);
    }
}

/* source_digest (not post-copy's, but migration.start's, parsed here):
 * on unless false; anything but a boolean is refused by name. */
Test(api_postcopy, source_digest_is_on_unless_false_and_only_a_boolean)
{
    static const struct {
        const char *text;
        bool source_digest, verify_digest;
    } cases[] = {
        { "{\"dest\":\"unix:/x\"}", true, false },
        { "{\"dest\":\"unix:/x\",\"source_digest\":null}", true, false },
        { "{\"dest\":\"unix:/x\",\"source_digest\":true}", true, false },
        { "{\"dest\":\"unix:/x\",\"source_digest\":false}", false, false },
        { "{\"dest\":\"unix:/x\",\"source_digest\":false,\"verify_digest\":true}", false, true },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_error_t json_error;
        json_t *args = json_loads(cases[i].text, 0, &json_error);
        cr_assert_not_null(args, "%s: %s", cases[i].text, json_error.text);
        struct mig_params params;
        struct api_error error = { 0 };
        cr_assert_eq(api_migration_start_params(args, &params, &error), 0, "%s refused: %s", cases[i].text,
                     error.message);
        cr_assert_eq(params.source_digest, cases[i].source_digest, "%s", cases[i].text);
        cr_assert_eq(params.verify_digest, cases[i].verify_digest, "%s", cases[i].text);
        json_decref(args);
    }
    start_refused("\"source_digest\":0", "invalid-argument", "args.source_digest: expected boolean");
    start_refused("\"source_digest\":\"false\"", "invalid-argument", "args.source_digest: expected boolean");
}

Test(api_postcopy, bad_mode_and_postcopy_after_are_refused_naming_the_field)
{
    /* The argument table (before the handler). */
    start_refused("\"mode\":\"fast\"", "invalid-argument", "args.mode: expected one of precopy, postcopy, hybrid");
    start_refused("\"mode\":1", "invalid-argument", "args.mode: expected string");
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":true", "invalid-argument",
                  "args.postcopy_after: expected integer or string");
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":1.5", "invalid-argument",
                  "args.postcopy_after: expected integer or string");
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":[3]", "invalid-argument",
                  "args.postcopy_after: expected integer or string");
    /* Only hybrid switches on a condition. */
    start_refused("\"postcopy_after\":3", "invalid-argument",
                  "args.postcopy_after: only valid with mode hybrid (mode is precopy)");
    start_refused("\"mode\":\"precopy\",\"postcopy_after\":\"auto\"", "invalid-argument",
                  "args.postcopy_after: only valid with mode hybrid (mode is precopy)");
    start_refused("\"mode\":\"postcopy\",\"postcopy_after\":\"5s\"", "invalid-argument",
                  "args.postcopy_after: only valid with mode hybrid (mode is postcopy)");
    /* Passes. */
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":0", "invalid-argument",
                  "args.postcopy_after: 0 passes: expected at least 1 (the first pass sends all RAM)");
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":-2", "invalid-argument",
                  "args.postcopy_after: -2 passes: expected at least 1 (the first pass sends all RAM)");
    /* Strings that are neither "Ns" nor "auto". */
    static const char *const malformed[] = { "5", "5m", "5 s", " 5s", "+5s", "-5s", "s", "", "AUTO", "5ss",
                                             "1.5s" };
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        char arguments[128], message[256];
        snprintf(arguments, sizeof(arguments), "\"mode\":\"hybrid\",\"postcopy_after\":\"%s\"", malformed[i]);
        snprintf(message, sizeof(message), "args.postcopy_after: expected an integer N >= 1 (passes), \"Ns\" "
                 "(seconds, N >= 1) or \"auto\", got \"%s\"", malformed[i]);
        start_refused(arguments, "invalid-argument", message);
    }
    /* Seconds out of range, also beyond 64 bits. */
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":\"0s\"", "invalid-argument",
                  "args.postcopy_after: \"0s\" is out of range 1s..2592000s");
    start_refused("\"mode\":\"hybrid\",\"timeout_s\":2592000,\"postcopy_after\":\"2592001s\"", "invalid-argument",
                  "args.postcopy_after: \"2592001s\" is out of range 1s..2592000s");
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":\"99999999999999999999999s\"", "invalid-argument",
                  "args.postcopy_after: \"99999999999999999999999s\" is out of range 1s..2592000s");
    /* A switch the timeout would pre-empt. */
    start_refused("\"mode\":\"hybrid\",\"postcopy_after\":\"3600s\"", "invalid-argument",
                  "args.postcopy_after: 3600s is not before timeout_s (3600 s): the timeout would end pre-copy first");
    start_refused("\"mode\":\"hybrid\",\"timeout_s\":60,\"postcopy_after\":\"61s\"", "invalid-argument",
                  "args.postcopy_after: 61s is not before timeout_s (60 s): the timeout would end pre-copy first");
}

/* Arguments are judged before the VM is looked at: a valid request without
 * a VM gets exactly that answer. */
Test(api_postcopy, valid_mode_arguments_reach_the_vm_check)
{
    static const char *const valid[] = {
        "\"mode\":\"precopy\"",
        "\"mode\":\"postcopy\"",
        "\"mode\":\"hybrid\"",
        "\"mode\":\"hybrid\",\"postcopy_after\":2",
        "\"mode\":\"hybrid\",\"postcopy_after\":\"10s\"",
        "\"mode\":\"hybrid\",\"postcopy_after\":\"auto\"",
    };
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
        start_refused(valid[i], "unavailable", "no VM in this process");
}

Test(api_postcopy, migration_postcopy_takes_no_arguments_and_needs_a_vm)
{
    api_expect_error(NULL, "{\"id\":1,\"cmd\":\"migration.postcopy\"}", "unavailable", "no VM in this process");
    api_expect_error(NULL, "{\"id\":2,\"cmd\":\"migration.postcopy\",\"args\":{\"now\":true}}", "invalid-argument",
                 "args.now: unknown argument (migration.postcopy takes no arguments)");
}

/* The entry of name in api.commands' list. */
static json_t *command_entry(json_t *commands, const char *name)
{
    size_t index;
    json_t *entry;
    json_array_foreach(commands, index, entry)
        if (strcmp(json_string_value(json_object_get(entry, "name")), name) == 0)
            return entry;
    return NULL;
}

static json_t *argument_entry(json_t *command, const char *name)
{
    return command_entry(json_object_get(command, "args"), name);
}

Test(api_postcopy, api_commands_describes_the_new_arguments_and_command)
{
    json_t *result = api_expect_ok(NULL, "{\"id\":1,\"cmd\":\"api.commands\"}");
    json_t *commands = json_object_get(result, "commands");
    json_t *postcopy = command_entry(commands, "migration.postcopy");
    cr_assert_not_null(postcopy, "api.commands misses migration.postcopy");
    cr_assert(json_is_false(json_object_get(postcopy, "worker")), "migration.postcopy must run on the epoll thread");
    cr_assert_eq(json_array_size(json_object_get(postcopy, "args")), 0);
    cr_assert_str_eq(json_string_value(json_object_get(postcopy, "summary")),
                     "switch the running hybrid migration to post-copy at its next decision");
    json_t *start = command_entry(commands, "migration.start");
    cr_assert_not_null(start);
    json_t *mode = argument_entry(start, "mode");
    cr_assert_not_null(mode, "migration.start has no mode argument");
    cr_assert_str_eq(json_string_value(json_object_get(mode, "type")), "string");
    cr_assert(json_is_false(json_object_get(mode, "required")));
    json_t *choices = json_pack("[s, s, s]", "precopy", "postcopy", "hybrid");
    cr_assert(json_equal(json_object_get(mode, "choices"), choices), "mode's choices");
    json_decref(choices);
    json_t *after = argument_entry(start, "postcopy_after");
    cr_assert_not_null(after, "migration.start has no postcopy_after argument");
    cr_assert_str_eq(json_string_value(json_object_get(after, "type")), "integer or string");
    cr_assert(json_is_false(json_object_get(after, "required")));
    json_decref(result);
}

Test(api_postcopy, invalid_state_is_an_api_error_code)
{
    cr_assert_str_eq(api_error_code_name(API_ERR_INVALID_STATE), "invalid-state");
    cr_assert_eq(api_error_code_from_name("invalid-state"), API_ERR_INVALID_STATE);
}

/* ---- migration.progress ------------------------------------------------------------------------------ */

static struct mig_progress *progress_new(void)
{
    struct mig_progress *progress = calloc(1, sizeof(*progress));
    cr_assert_not_null(progress);
    progress->id = 7;
    progress->state = MIG_STATE_ACTIVE;
    snprintf(progress->phase, sizeof(progress->phase), "iterating");
    snprintf(progress->address, sizeof(progress->address), "unix:/x");
    snprintf(progress->converge, sizeof(progress->converge), "auto");
    return progress;
}

Test(api_postcopy, progress_mode_names_the_mode_or_local)
{
    static const struct {
        enum mig_mode mode;
        const char *name;
    } modes[] = { { MIG_MODE_PRECOPY, "precopy" }, { MIG_MODE_POSTCOPY, "postcopy" }, { MIG_MODE_HYBRID, "hybrid" } };
    struct mig_progress *progress = progress_new();
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        cr_assert_str_eq(mig_mode_name(modes[i].mode), modes[i].name);
        enum mig_mode parsed;
        cr_assert_eq(mig_mode_parse(modes[i].name, &parsed), 0);
        cr_assert_eq(parsed, modes[i].mode);
        progress->mode = (int)modes[i].mode;
        progress->local = false;
        json_t *object = mig_progress_to_json(progress);
        cr_assert_not_null(object);
        cr_assert_str_eq(json_string_value(json_object_get(object, "mode")), modes[i].name);
        json_decref(object);
    }
    /* A local hand-over reads "local" whatever the mode field says. */
    progress->mode = (int)MIG_MODE_PRECOPY;
    progress->local = true;
    json_t *object = mig_progress_to_json(progress);
    cr_assert_str_eq(json_string_value(json_object_get(object, "mode")), "local");
    cr_assert_null(json_object_get(object, "postcopy"), "a local hand-over has no post-copy object");
    json_decref(object);
    enum mig_mode parsed = MIG_MODE_HYBRID;
    cr_assert_eq(mig_mode_parse("local", &parsed), -1);
    cr_assert_eq(mig_mode_parse(NULL, &parsed), -1);
    cr_assert_eq(parsed, MIG_MODE_HYBRID, "a failed parse must not write");
    free(progress);
}

Test(api_postcopy, a_precopy_snapshot_has_no_postcopy_object)
{
    struct mig_progress *progress = progress_new();
    progress->mode = (int)MIG_MODE_PRECOPY;
    progress->vcpu_count = 2;
    json_t *object = mig_progress_to_json(progress);
    cr_assert_str_eq(json_string_value(json_object_get(object, "mode")), "precopy");
    cr_assert_null(json_object_get(object, "postcopy"));
    json_decref(object);
    free(progress);
}

Test(api_postcopy, a_hybrid_snapshot_before_the_switch_has_an_inactive_postcopy_object)
{
    struct mig_progress *progress = progress_new();
    progress->mode = (int)MIG_MODE_HYBRID;
    progress->vcpu_count = 2;
    progress->postcopy.guest_pages_per_s = -1;      /* not known: null */
    json_t *object = mig_progress_to_json(progress);
    json_t *expected = json_pack(
        "{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:[{s:I, s:I, s:f}, {s:I, s:I,"
        " s:f}], s:{s:I, s:f, s:f, s:f}, s:n, s:I, s:I, s:I, s:I}",
        "active", 0, "switched_at_ms", (json_int_t)0, "pages_total", (json_int_t)0, "pages_pushed", (json_int_t)0,
        "pages_requested", (json_int_t)0, "requests", (json_int_t)0, "requests_refused", (json_int_t)0,
        "pages_withdrawn", (json_int_t)0, "pages_left_to_stream", (json_int_t)0, "pages_sent_twice", (json_int_t)0,
        "pages_received", (json_int_t)0, "pages_zero", (json_int_t)0, "faults", (json_int_t)0, "duplicate_faults",
        (json_int_t)0, "blocktime_total_ms", 0.0, "vcpus", "index", (json_int_t)0, "faults", (json_int_t)0,
        "blocktime_ms", 0.0, "index", (json_int_t)1, "faults", (json_int_t)0, "blocktime_ms", 0.0, "latency_us",
        "count", (json_int_t)0, "p50", 0.0, "p99", 0.0, "max", 0.0, "guest_pages_per_s", "stream_window_bytes",
        (json_int_t)0, "discarded_early_pages", (json_int_t)0, "discarded_in_pause_pages", (json_int_t)0,
        "discard_early_ms", (json_int_t)0);
    cr_assert_not_null(expected);
    char *got = json_dumps(json_object_get(object, "postcopy"), JSON_COMPACT | JSON_SORT_KEYS);
    char *want = json_dumps(expected, JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert(json_equal(json_object_get(object, "postcopy"), expected), "postcopy is %s, expected %s", got, want);
    free(got);
    free(want);
    json_decref(expected);
    json_decref(object);
    free(progress);
}

Test(api_postcopy, a_postcopy_snapshot_reports_every_counter_exactly)
{
    struct mig_progress *progress = progress_new();
    progress->mode = (int)MIG_MODE_POSTCOPY;
    progress->incoming = true;
    snprintf(progress->phase, sizeof(progress->phase), "postcopy");
    progress->vcpu_count = 2;
    progress->postcopy.active = true;
    progress->postcopy.switched_at_ms = 1234;
    progress->postcopy.pages_total = 262144;
    progress->postcopy.pages_pushed = 200000;
    progress->postcopy.pages_requested = 1500;
    progress->postcopy.requests = 1400;
    progress->postcopy.requests_refused = 3;
    progress->postcopy.stream_window = 38031;
    progress->postcopy.pages_withdrawn = 4100;
    progress->postcopy.pages_left_to_stream = 520;
    progress->postcopy.pages_sent_twice = 17;
    progress->postcopy.pages_received = 201500;
    progress->postcopy.pages_zero = 7000;
    progress->postcopy.faults = 1600;
    progress->postcopy.duplicate_faults = 100;
    progress->postcopy.blocktime_total_ns = 12345678;
    progress->postcopy.vcpu_faults[0] = 1000;
    progress->postcopy.vcpu_faults[1] = 600;
    progress->postcopy.vcpu_faults[2] = 99;             /* beyond vcpu_count: not reported */
    progress->postcopy.vcpu_blocktime_ns[0] = 8000000;
    progress->postcopy.vcpu_blocktime_ns[1] = 4345678;
    progress->postcopy.latency_count = 1500;
    progress->postcopy.latency_p50_ns = 250000;
    progress->postcopy.latency_p99_ns = 900500;
    progress->postcopy.latency_max_ns = 2000000;
    progress->postcopy.guest_pages_per_s = 2500000;
    progress->postcopy.discarded_early_pages = 61000;
    progress->postcopy.discarded_in_pause_pages = 144;
    progress->postcopy.discard_early_ms = 83;
    json_t *object = mig_progress_to_json(progress);
    cr_assert_str_eq(json_string_value(json_object_get(object, "mode")), "postcopy");
    cr_assert_str_eq(json_string_value(json_object_get(object, "phase")), "postcopy");
    json_t *expected = json_pack(
        "{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:[{s:I, s:I, s:f}, {s:I, s:I,"
        " s:f}], s:{s:I, s:f, s:f, s:f}, s:I, s:I, s:I, s:I, s:I}",
        "active", 1, "switched_at_ms", (json_int_t)1234, "pages_total", (json_int_t)262144, "pages_pushed",
        (json_int_t)200000, "pages_requested", (json_int_t)1500, "requests", (json_int_t)1400, "requests_refused",
        (json_int_t)3, "pages_withdrawn", (json_int_t)4100, "pages_left_to_stream", (json_int_t)520,
        "pages_sent_twice", (json_int_t)17, "pages_received", (json_int_t)201500, "pages_zero", (json_int_t)7000, "faults",
        (json_int_t)1600, "duplicate_faults", (json_int_t)100, "blocktime_total_ms", 12.345678, "vcpus", "index",
        (json_int_t)0, "faults", (json_int_t)1000, "blocktime_ms", 8.0, "index", (json_int_t)1, "faults",
        (json_int_t)600, "blocktime_ms", 4.345678, "latency_us", "count", (json_int_t)1500, "p50", 250.0, "p99",
        900.5, "max", 2000.0, "guest_pages_per_s", (json_int_t)2500000, "stream_window_bytes", (json_int_t)38031,
        "discarded_early_pages", (json_int_t)61000, "discarded_in_pause_pages", (json_int_t)144, "discard_early_ms",
        (json_int_t)83);
    cr_assert_not_null(expected);
    char *got = json_dumps(json_object_get(object, "postcopy"), JSON_COMPACT | JSON_SORT_KEYS);
    char *want = json_dumps(expected, JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert(json_equal(json_object_get(object, "postcopy"), expected), "postcopy is %s, expected %s", got, want);
    free(got);
    free(want);
    json_decref(expected);
    json_decref(object);
    free(progress);
}

/* ---- against real migrations (needs /dev/kvm) ---------------------------------------------------------- */

/* A unix socket that listens and never accepts: the source connects (the
 * backlog takes it), sends its hello and waits for an answer, so its
 * migration stays active in the handshake until cancelled. */
struct silent_destination {
    int fd;
    char path[108];
};

static void silent_destination_open(struct silent_destination *d)
{
    snprintf(d->path, sizeof(d->path), "/tmp/ringvm-postcopy-silent-%d.sock", (int)getpid());
    unlink(d->path);
    d->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(d->fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", d->path);
    cr_assert_eq(bind(d->fd, (struct sockaddr *)&address, sizeof(address)), 0, "bind %s: %s", d->path,
                 strerror(errno));
    cr_assert_eq(listen(d->fd, 4), 0, "listen: %s", strerror(errno));
}

static void silent_destination_close(struct silent_destination *d)
{
    close(d->fd);
    unlink(d->path);
}

/* migration.start to the silent destination with extra arguments; the
 * result (new reference). The stall timeout is long so that only the
 * test's cancel ends it. */
static json_t *start_held(struct vm *vm, const struct silent_destination *d, const char *arguments)
{
    char line[512];
    snprintf(line, sizeof(line),
             "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"unix:%s\",\"stall_timeout_s\":120%s%s}}",
             d->path, arguments[0] != '\0' ? "," : "", arguments);
    return api_expect_ok(vm, line);
}

/* Cancels the running migration and waits until it ended cancelled. */
static void cancel_held(struct vm *vm)
{
    json_t *result = api_expect_ok(vm, "{\"id\":9,\"cmd\":\"migration.cancel\"}");
    json_decref(result);
    cr_assert(migration_wait_idle(vm, 30000), "the cancelled migration did not end");
    struct mig_progress *progress = malloc(sizeof(*progress));
    cr_assert_not_null(progress);
    cr_assert(migration_progress(vm, progress));
    cr_assert_eq(progress->state, MIG_STATE_CANCELLED, "state %s (%s: %s)", mig_state_name(progress->state),
                 progress->error_code, progress->error_message);
    free(progress);
}

Test(api_postcopy_vm, migration_postcopy_without_a_migration_is_no_migration, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    api_expect_error(h.vm, "{\"id\":1,\"cmd\":\"migration.postcopy\"}", "no-migration", "no migration is running");
    migration_release(h.vm);
    harness_vm_stop(&h);
}

Test(api_postcopy_vm, migration_postcopy_switches_only_a_hybrid_migration, .timeout = 120)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest did not run");
    struct silent_destination d;
    silent_destination_open(&d);
    char message[256];

    /* precopy: post-copy was not agreed to. */
    json_t *result = start_held(h.vm, &d, "");
    cr_assert_str_eq(json_string_value(json_object_get(result, "mode")), "precopy");
    cr_assert(json_is_null(json_object_get(result, "postcopy_after")));
    json_int_t id = json_integer_value(json_object_get(result, "id"));
    json_decref(result);
    snprintf(message, sizeof(message), "migration %lld was started as precopy: post-copy was not agreed to (start it "
             "with mode hybrid to allow the switch)", (long long)id);
    api_expect_error(h.vm, "{\"id\":2,\"cmd\":\"migration.postcopy\"}", "invalid-state", message);
    json_t *progress = api_expect_ok(h.vm, "{\"id\":3,\"cmd\":\"migration.progress\"}");
    cr_assert_str_eq(json_string_value(json_object_get(progress, "mode")), "precopy");
    cr_assert_null(json_object_get(progress, "postcopy"));
    json_decref(progress);
    cancel_held(h.vm);

    /* hybrid: accepted (the switch happens at the migration's next decision). */
    result = start_held(h.vm, &d, "\"mode\":\"hybrid\",\"postcopy_after\":\"30s\"");
    cr_assert_str_eq(json_string_value(json_object_get(result, "mode")), "hybrid");
    cr_assert_str_eq(json_string_value(json_object_get(result, "postcopy_after")), "30s");
    json_decref(result);
    result = api_expect_ok(h.vm, "{\"id\":4,\"cmd\":\"migration.postcopy\"}");
    json_t *switching = json_pack("{s:b}", "switching", 1);
    cr_assert(json_equal(result, switching), "migration.postcopy answered otherwise");
    json_decref(switching);
    json_decref(result);
    progress = api_expect_ok(h.vm, "{\"id\":5,\"cmd\":\"migration.progress\"}");
    cr_assert_str_eq(json_string_value(json_object_get(progress, "mode")), "hybrid");
    json_t *postcopy = json_object_get(progress, "postcopy");
    cr_assert(json_is_object(postcopy), "a hybrid migration's progress has a postcopy object");
    cr_assert(json_is_false(json_object_get(postcopy, "active")), "still in the handshake: not switched");
    json_decref(progress);
    cancel_held(h.vm);

    /* hybrid with passes, and the default trigger. */
    result = start_held(h.vm, &d, "\"mode\":\"hybrid\",\"postcopy_after\":4");
    cr_assert_eq(json_integer_value(json_object_get(result, "postcopy_after")), 4);
    json_decref(result);
    cancel_held(h.vm);
    result = start_held(h.vm, &d, "\"mode\":\"hybrid\"");
    cr_assert_str_eq(json_string_value(json_object_get(result, "postcopy_after")), "auto");
    json_decref(result);
    cancel_held(h.vm);

    /* postcopy: it switches by itself. */
    result = start_held(h.vm, &d, "\"mode\":\"postcopy\"");
    cr_assert_str_eq(json_string_value(json_object_get(result, "mode")), "postcopy");
    cr_assert(json_is_null(json_object_get(result, "postcopy_after")));
    id = json_integer_value(json_object_get(result, "id"));
    json_decref(result);
    snprintf(message, sizeof(message), "migration %lld is already a post-copy migration", (long long)id);
    api_expect_error(h.vm, "{\"id\":6,\"cmd\":\"migration.postcopy\"}", "invalid-state", message);
    cancel_held(h.vm);

    /* And after the end: nothing runs. */
    api_expect_error(h.vm, "{\"id\":7,\"cmd\":\"migration.postcopy\"}", "no-migration", "no migration is running");
    cr_assert(harness_wait_all_vcpus_advance(h.vm, 100, 20000), "the guest stopped");
    silent_destination_close(&d);
    migration_release(h.vm);
    harness_vm_stop(&h);
}

Test(api_postcopy_vm, a_local_hand_over_refuses_postcopy_and_hybrid, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "64M", 1, "dirtier,wss=4M", "ring");
    static const char *const modes[] = { "postcopy", "hybrid" };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        char line[256], message[256];
        snprintf(line, sizeof(line), "{\"id\":1,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"local:/tmp/"
                 "ringvm-postcopy-local-%d.sock\",\"mode\":\"%s\"}}", (int)getpid(), modes[i]);
        snprintf(message, sizeof(message), "mode %s: a local hand-over moves no RAM (its guest switches over at "
                 "once); use mode precopy with local:PATH", modes[i]);
        api_expect_error(h.vm, line, "invalid-argument", message);
    }
    cr_assert(!migration_active(h.vm));
    migration_release(h.vm);
    harness_vm_stop(&h);
}
