/*
 * migration.start, migration.progress, migration.cancel, migration.postcopy,
 * migration.recover.
 *
 * Threads: migration.start runs on the worker (it may join a finished
 * migration thread; with resume it only stores the new address under a
 * lock); progress (a memcpy under the board's lock), cancel, postcopy (an
 * atomic store under a short lock) and recover (an address stored under a
 * short lock) run on the epoll thread. None waits for the migration.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/commands.h"
#include "migration/migration.h"
#include "migration/transport.h"
#include "vmm/vm.h"

static enum api_error_code code_from_name(const char *name)
{
    enum api_error_code code = api_error_code_from_name(name);
    return code == API_ERR_COUNT ? API_ERR_INTERNAL : code;
}

static const char *const converge_choices[] = { "auto", "dirty-limit", "none", NULL };
static const char *const strategy_choices[] = { "cancel", "force", NULL };
static const char *const mode_choices[] = { "precopy", "postcopy", "hybrid", NULL };

/* timeout_s's range; also the longest "Ns" of postcopy_after. */
#define TIMEOUT_S_MAX (30 * 86400)

static const struct api_arg_spec start_args[] = {
    {"dest", API_ARG_STRING, true, NULL, "destination: unix:PATH, tcp:HOST:PORT or local:PATH"},
    {"downtime_ms", API_ARG_UINT, false, NULL, "downtime limit in ms (default 300)"},
    {"converge", API_ARG_ENUM, false, converge_choices, "auto (default), dirty-limit or none"},
    {"max_bandwidth_mibs", API_ARG_UINT, false, NULL, "bandwidth cap in MiB/s (default 0 = unlimited)"},
    {"switch_over_bandwidth_mibs", API_ARG_UINT, false, NULL,
     "cap in MiB/s for the stop-and-copy, guest paused (default 0 = unlimited, whatever max_bandwidth_mibs)"},
    {"timeout_s", API_ARG_UINT, false, NULL, "give up (or force) after this many seconds (default 3600)"},
    {"timeout_strategy", API_ARG_ENUM, false, strategy_choices, "cancel (default) or force stop-and-copy"},
    {"keep_alive", API_ARG_BOOL, false, NULL, "keep the source up (state migrated) after completion (default false)"},
    {"throttle_initial", API_ARG_UINT, false, NULL, "auto-converge first throttle, percent (default 20)"},
    {"throttle_increment", API_ARG_UINT, false, NULL, "auto-converge step, percent (default 10)"},
    {"throttle_max", API_ARG_UINT, false, NULL, "highest throttle, percent (default 99)"},
    {"stall_timeout_s", API_ARG_UINT, false, NULL, "fail when no byte moved for this long (default 5)"},
    {"verify_digest", API_ARG_BOOL, false, NULL,
     "compare XXH3-128 digests of RAM before the destination resumes (default false: costs downtime)"},
    {"source_digest", API_ARG_BOOL, false, NULL,
     "without verify_digest: hash the source's RAM after the ack, for memory_digest_source (default true; "
     "costs total time, not downtime)"},
    {"tls_psk_file", API_ARG_STRING, false, NULL,
     "tcp: only: TLS 1.3 with the pre-shared key in this keys.psk file (read by ringvm; mode 0600)"},
    {"tls_creds_dir", API_ARG_STRING, false, NULL,
     "tcp: only: TLS 1.3 with x509: ca-cert.pem, client-cert.pem, client-key.pem in this directory"},
    {"tls_server_name", API_ARG_STRING, false, NULL,
     "with tls_creds_dir: the name the destination's certificate must carry (default: HOST of dest)"},
    {"console", API_ARG_STRING, false, NULL,
     "unix:PATH of the destination's console socket (its --console): this ringvm's console clients move there "
     "with the guest"},
    {"mode", API_ARG_ENUM, false, mode_choices,
     "precopy (default), postcopy (switch over at once, RAM follows) or hybrid (pre-copy, then post-copy)"},
    {"postcopy_after", API_ARG_INT_OR_STRING, false, NULL,
     "mode hybrid only: switch to post-copy after N pre-copy passes (integer), \"Ns\" seconds, "
     "or \"auto\" (default: once pre-copy cannot meet downtime_ms without throttling)"},
    {"resume", API_ARG_BOOL, false, NULL,
     "resume the post-copy migration paused by a broken link (phase postcopy-paused) by connecting to dest, "
     "where the destination listens after migration.recover; only dest goes with it (default false)"},
    {NULL, 0, false, NULL, NULL},
};

/* "Ns": decimal digits (no sign, no blanks), then 's'. A value too large
 * for 64 bits saturates: the range check then refuses it by name. */
static bool parse_seconds(const char *text, uint64_t *seconds)
{
    size_t digits = strspn(text, "0123456789");
    if (digits == 0 || strcmp(text + digits, "s") != 0)
        return false;
    uint64_t value = 0;
    for (size_t i = 0; i < digits; i++) {
        if (value > (UINT64_MAX - 9) / 10) {
            value = UINT64_MAX;
            break;
        }
        value = value * 10 + (uint64_t)(text[i] - '0');
    }
    *seconds = value;
    return true;
}

/* postcopy_after (present, not null) into params: an integer N >= 1 =
 * after N pre-copy passes, "Ns" = N seconds after the start, "auto". Only
 * mode hybrid switches on a condition, so any other mode refuses it rather
 * than ignoring what the caller asked for. */
static int parse_postcopy_after(const json_t *value, struct mig_params *params, struct api_error *error)
{
    if (params->mode != MIG_MODE_HYBRID)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.postcopy_after: only valid with mode hybrid "
                             "(mode is %s)", mig_mode_name(params->mode));
    if (json_is_integer(value)) {
        json_int_t passes = json_integer_value(value);
        if (passes < 1)
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.postcopy_after: %lld passes: expected "
                                 "at least 1 (the first pass sends all RAM)", (long long)passes);
        params->postcopy_after_passes = (uint64_t)passes;
        params->postcopy_after_auto = false;
        return 0;
    }
    const char *text = json_string_value(value);
    if (text == NULL)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.postcopy_after: expected integer or string");
    if (strcmp(text, "auto") == 0) {
        params->postcopy_after_auto = true;
        return 0;
    }
    uint64_t seconds;
    if (!parse_seconds(text, &seconds))
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.postcopy_after: expected an integer N >= 1 "
                             "(passes), \"Ns\" (seconds, N >= 1) or \"auto\", got \"%.32s\"", text);
    if (seconds < 1 || seconds > TIMEOUT_S_MAX)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.postcopy_after: \"%.32s\" is out of range "
                             "1s..%ds", text, TIMEOUT_S_MAX);
    /* The timeout acts on a migration still in pre-copy: a later switch
     * could never happen. */
    if (seconds >= params->timeout_s)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.postcopy_after: %" PRIu64 "s is not before "
                             "timeout_s (%" PRIu64 " s): the timeout would end pre-copy first", seconds,
                             params->timeout_s);
    params->postcopy_after_ms = seconds * 1000u;
    params->postcopy_after_auto = false;
    return 0;
}

int api_migration_start_params(const json_t *args, struct mig_params *params, struct api_error *error)
{
    mig_params_defaults(params);
    const char *dest = api_arg_string(args, "dest", NULL);
    if (dest == NULL || *dest == '\0')
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.dest: expected unix:PATH, tcp:HOST:PORT or local:PATH");
    if (strlen(dest) >= sizeof(params->dest))
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.dest: longer than %zu bytes",
                             sizeof(params->dest) - 1);
    snprintf(params->dest, sizeof(params->dest), "%s", dest);
    int64_t value;
    if (api_arg_int(args, "downtime_ms", 300, 1, 3600000, &value, error) < 0)
        return -1;
    params->downtime_ms = (uint64_t)value;
    if (mig_converge_parse(api_arg_string(args, "converge", "auto"), &params->converge) != 0)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.converge: expected auto, dirty-limit or none");
    if (api_arg_int(args, "max_bandwidth_mibs", 0, 0, 1 << 30, &value, error) < 0)
        return -1;
    params->max_bandwidth_mibs = (uint64_t)value;
    if (api_arg_int(args, "switch_over_bandwidth_mibs", 0, 0, 1 << 30, &value, error) < 0)
        return -1;
    params->switch_over_bandwidth_mibs = (uint64_t)value;
    if (api_arg_int(args, "timeout_s", 3600, 1, TIMEOUT_S_MAX, &value, error) < 0)
        return -1;
    params->timeout_s = (uint64_t)value;
    params->timeout_force = strcmp(api_arg_string(args, "timeout_strategy", "cancel"), "force") == 0;
    if (api_arg_bool(args, "keep_alive", false, &params->keep_alive, error) < 0)
        return -1;
    if (api_arg_int(args, "throttle_initial", 20, 1, 99, &value, error) < 0)
        return -1;
    params->throttle.initial = (int)value;
    if (api_arg_int(args, "throttle_increment", 10, 0, 99, &value, error) < 0)
        return -1;
    params->throttle.increment = (int)value;
    if (api_arg_int(args, "throttle_max", 99, 1, 99, &value, error) < 0)
        return -1;
    params->throttle.max = (int)value;
    if (params->throttle.initial > params->throttle.max)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.throttle_initial: %d is above throttle_max (%d)",
                             params->throttle.initial, params->throttle.max);
    if (api_arg_int(args, "stall_timeout_s", 5, 1, 3600, &value, error) < 0)
        return -1;
    params->stall_timeout_ms = (unsigned)value * 1000u;
    if (api_arg_bool(args, "verify_digest", false, &params->verify_digest, error) < 0)
        return -1;
    if (api_arg_bool(args, "source_digest", true, &params->source_digest, error) < 0)
        return -1;
    static const struct {
        const char *name;
        size_t offset, size;
    } tls_args[] = {
        {"tls_psk_file", offsetof(struct mig_params, tls_psk_file), sizeof(params->tls_psk_file)},
        {"tls_creds_dir", offsetof(struct mig_params, tls_creds_dir), sizeof(params->tls_creds_dir)},
        {"tls_server_name", offsetof(struct mig_params, tls_server_name), sizeof(params->tls_server_name)},
    };
    for (size_t i = 0; i < sizeof(tls_args) / sizeof(tls_args[0]); i++) {
        const char *text = api_arg_string(args, tls_args[i].name, "");
        if (strlen(text) >= tls_args[i].size)
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: longer than %zu bytes", tls_args[i].name,
                                 tls_args[i].size - 1);
        snprintf((char *)params + tls_args[i].offset, tls_args[i].size, "%s", text);
    }
    const char *console = api_arg_string(args, "console", "");
    if (console[0] != '\0') {
        if (strncmp(console, "unix:", 5) != 0)
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.console: expected unix:PATH (the "
                                 "destination's --console socket), got \"%.64s\"", console);
        size_t length = strlen(console + 5);
        if (length == 0 || length >= sizeof(params->console))
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.console: the path must be 1 to %zu bytes",
                                 sizeof(params->console) - 1);
        snprintf(params->console, sizeof(params->console), "%s", console + 5);
    }
    if (mig_mode_parse(api_arg_string(args, "mode", "precopy"), &params->mode) != 0)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.mode: expected precopy, postcopy or hybrid");
    json_t *postcopy_after = json_object_get(args, "postcopy_after");
    if (postcopy_after != NULL && !json_is_null(postcopy_after) &&
        parse_postcopy_after(postcopy_after, params, error) < 0)
        return -1;
    return 0;
}

/* The result's postcopy_after: what hybrid switches on, as the caller
 * would write it; null for the other modes. */
static json_t *postcopy_after_json(const struct mig_params *params)
{
    if (params->mode != MIG_MODE_HYBRID)
        return json_null();
    if (params->postcopy_after_passes != 0)
        return json_integer((json_int_t)params->postcopy_after_passes);
    if (params->postcopy_after_ms != 0) {
        char text[32];
        snprintf(text, sizeof(text), "%" PRIu64 "s", params->postcopy_after_ms / 1000u);
        return json_string(text);
    }
    return json_string("auto");
}

/* A post-copy recovery address (migration.recover's address,
 * migration.start's dest with resume): unix:PATH or tcp:HOST:PORT, judged
 * before any VM is looked at. 0, or -1 with error naming the argument. */
static int recovery_address_check(const char *name, const char *address, struct api_error *error)
{
    if (strlen(address) >= MIG_ADDRESS_MAX)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: longer than %d bytes", name,
                             MIG_ADDRESS_MAX - 1);
    struct mig_address parsed;
    char text[MIG_ADDRESS_MAX + 128];
    if (mig_address_parse(address, &parsed, text, sizeof(text)) != 0)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: %s", name, text);
    return 0;
}

/* migration.start with resume true: the paused post-copy migration goes on
 * with the parameters it was started with, so dest is the only argument
 * that may come with it; any other (not null) is refused by name, the
 * first in the table's order. Then dest must be a recovery address (a
 * local: hand-over has no post-copy to resume). */
static int resume_args_check(const json_t *args, const char **dest, struct api_error *error)
{
    for (const struct api_arg_spec *spec = start_args; spec->name != NULL; spec++) {
        if (strcmp(spec->name, "dest") == 0 || strcmp(spec->name, "resume") == 0)
            continue;
        json_t *value = json_object_get(args, spec->name);
        if (value != NULL && !json_is_null(value))
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: not valid with resume (a resumed "
                                 "migration goes on with the parameters it was started with; only dest goes "
                                 "with resume)", spec->name);
    }
    *dest = api_arg_string(args, "dest", "");
    return recovery_address_check("dest", *dest, error);
}

/* migration.start {resume: true}: hands the new destination address to
 * the paused migration's thread (migration_resume stores it under a short
 * lock) and answers at once; the migration goes on on its own thread. */
static enum api_status migration_start_resume(struct api_call *call)
{
    const char *dest = NULL;
    struct api_error error;
    if (resume_args_check(call->args, &dest, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    const char *code = NULL;
    char message[512];
    if (migration_resume(vm, dest, &code, message, sizeof(message)) != 0)
        return api_call_fail(call, code_from_name(code), "%s", message);
    return api_call_ok(call, json_pack("{s:b}", "resumed", 1));
}

static enum api_status cmd_migration_start(struct api_call *call)
{
    bool resume = false;
    struct api_error error;
    if (api_arg_bool(call->args, "resume", false, &resume, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    if (resume)
        return migration_start_resume(call);
    /* The arguments first: a request that could never start is answered
     * as such, also in a process without a VM (and by the fuzzer). */
    struct mig_params params;
    if (api_migration_start_params(call->args, &params, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");

    uint64_t id = 0;
    const char *code = NULL;
    char message[1400];
    if (migration_start(vm, call->server, &params, &id, &code, message, sizeof(message)) != 0)
        return api_call_fail(call, code_from_name(code), "%s", message);
    const char *tls = params.tls_psk_file[0] != '\0' ? "psk" : params.tls_creds_dir[0] != '\0' ? "x509" : NULL;
    return api_call_ok(call, json_pack("{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:b, s:s?, s:s, s:o}",
                                       "id", (json_int_t)id,
                                       "state", "setup",
                                       "dest", params.dest,
                                       "converge", mig_converge_name(params.converge),
                                       "downtime_ms", (json_int_t)params.downtime_ms,
                                       "max_bandwidth_mibs", (json_int_t)params.max_bandwidth_mibs,
                                       "switch_over_bandwidth_mibs",
                                       (json_int_t)params.switch_over_bandwidth_mibs,
                                       "timeout_s", (json_int_t)params.timeout_s,
                                       "keep_alive", params.keep_alive,
                                       "tls", tls,
                                       "mode", mig_mode_name(params.mode),
                                       "postcopy_after", postcopy_after_json(&params)));
}

static enum api_status cmd_migration_progress(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    struct mig_progress *progress = malloc(sizeof(*progress));
    if (!progress)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    if (!migration_progress(vm, progress)) {
        free(progress);
        return api_call_fail(call, API_ERR_NO_MIGRATION, "this VM has not migrated (migration.start)");
    }
    json_t *result = mig_progress_to_json(progress);
    free(progress);
    if (!result)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    return api_call_ok(call, result);
}

static enum api_status cmd_migration_cancel(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    const char *code = NULL;
    char message[256];
    if (migration_cancel(vm, &code, message, sizeof(message)) != 0)
        return api_call_fail(call, code_from_name(code), "%s", message);
    return api_call_ok(call, json_pack("{s:b}", "cancelling", 1));
}

static enum api_status cmd_migration_postcopy(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    const char *code = NULL;
    char message[256];
    if (migration_postcopy_now(vm, &code, message, sizeof(message)) != 0)
        return api_call_fail(call, code_from_name(code), "%s", message);
    return api_call_ok(call, json_pack("{s:b}", "switching", 1));
}

static const struct api_arg_spec recover_args[] = {
    {"address", API_ARG_STRING, true, NULL,
     "where this destination listens for the source's new connection: unix:PATH or tcp:HOST:PORT"},
    {NULL, 0, false, NULL, NULL},
};

/* Destination side of post-copy recovery: stores the new listen address
 * for the paused incoming migration (migration_recover, a short lock);
 * the incoming thread listens there. */
static enum api_status cmd_migration_recover(struct api_call *call)
{
    const char *address = api_arg_string(call->args, "address", "");
    struct api_error error;
    if (recovery_address_check("address", address, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    const char *code = NULL;
    char message[512];
    if (migration_recover(vm, address, &code, message, sizeof(message)) != 0)
        return api_call_fail(call, code_from_name(code), "%s", message);
    return api_call_ok(call, json_pack("{s:b, s:s}", "recovering", 1, "address", address));
}

static const struct api_command commands[] = {
    {"migration.start", cmd_migration_start, API_CMD_WORKER, start_args,
     "live-migrate the VM to another ringvm --incoming, or with resume go on with a paused post-copy one "
     "(returns once dispatched)"},
    {"migration.progress", cmd_migration_progress, 0, NULL,
     "the migration progress snapshot (also on the destination)"},
    {"migration.cancel", cmd_migration_cancel, 0, NULL, "stop the running migration; the guest continues here"},
    {"migration.postcopy", cmd_migration_postcopy, 0, NULL,
     "switch the running hybrid migration to post-copy at its next decision"},
    {"migration.recover", cmd_migration_recover, 0, recover_args,
     "destination: listen on a new address for the source of a paused post-copy migration"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_migration = {commands};
