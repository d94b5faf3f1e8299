/*
 * migration.start, migration.progress, migration.cancel.
 *
 * Threads: migration.start runs on the worker (it may join a finished
 * migration thread); progress (a memcpy under the board's lock) and cancel
 * (an atomic store) run on the epoll thread. None waits for the migration.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "api/commands.h"
#include "migration/migration.h"
#include "vmm/vm.h"

static enum api_error_code code_from_name(const char *name)
{
    enum api_error_code code = api_error_code_from_name(name);
    return code == API_ERR_COUNT ? API_ERR_INTERNAL : code;
}

static const char *const converge_choices[] = { "auto", "dirty-limit", "none", NULL };
static const char *const strategy_choices[] = { "cancel", "force", NULL };

static const struct api_arg_spec start_args[] = {
    {"dest", API_ARG_STRING, true, NULL, "destination: unix:PATH, tcp:HOST:PORT or local:PATH"},
    {"downtime_ms", API_ARG_UINT, false, NULL, "downtime limit in ms (default 300)"},
    {"converge", API_ARG_ENUM, false, converge_choices, "auto (default), dirty-limit or none"},
    {"max_bandwidth_mibs", API_ARG_UINT, false, NULL, "bandwidth cap in MiB/s (default 0 = unlimited)"},
    {"timeout_s", API_ARG_UINT, false, NULL, "give up (or force) after this many seconds (default 3600)"},
    {"timeout_strategy", API_ARG_ENUM, false, strategy_choices, "cancel (default) or force stop-and-copy"},
    {"keep_alive", API_ARG_BOOL, false, NULL, "keep the source up (state migrated) after completion (default false)"},
    {"throttle_initial", API_ARG_UINT, false, NULL, "auto-converge first throttle, percent (default 20)"},
    {"throttle_increment", API_ARG_UINT, false, NULL, "auto-converge step, percent (default 10)"},
    {"throttle_max", API_ARG_UINT, false, NULL, "highest throttle, percent (default 99)"},
    {"stall_timeout_s", API_ARG_UINT, false, NULL, "fail when no byte moved for this long (default 5)"},
    {"verify_digest", API_ARG_BOOL, false, NULL,
     "compare XXH3-128 digests of RAM before the destination resumes (default false: costs downtime)"},
    {"tls_psk_file", API_ARG_STRING, false, NULL,
     "tcp: only: TLS 1.3 with the pre-shared key in this keys.psk file (read by ringvm; mode 0600)"},
    {"tls_creds_dir", API_ARG_STRING, false, NULL,
     "tcp: only: TLS 1.3 with x509: ca-cert.pem, client-cert.pem, client-key.pem in this directory"},
    {"tls_server_name", API_ARG_STRING, false, NULL,
     "with tls_creds_dir: the name the destination's certificate must carry (default: HOST of dest)"},
    {NULL, 0, false, NULL, NULL},
};

static enum api_status cmd_migration_start(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    struct mig_params params;
    mig_params_defaults(&params);
    struct api_error error;
    const char *dest = api_arg_string(call->args, "dest", NULL);
    if (dest == NULL || *dest == '\0')
        return api_call_fail(call, API_ERR_INVALID_ARGUMENT, "args.dest: expected unix:PATH, tcp:HOST:PORT or local:PATH");
    if (strlen(dest) >= sizeof(params.dest))
        return api_call_fail(call, API_ERR_INVALID_ARGUMENT, "args.dest: longer than %zu bytes",
                             sizeof(params.dest) - 1);
    snprintf(params.dest, sizeof(params.dest), "%s", dest);
    int64_t value;
    if (api_arg_int(call->args, "downtime_ms", 300, 1, 3600000, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.downtime_ms = (uint64_t)value;
    if (mig_converge_parse(api_arg_string(call->args, "converge", "auto"), &params.converge) != 0)
        return api_call_fail(call, API_ERR_INVALID_ARGUMENT, "args.converge: expected auto, dirty-limit or none");
    if (api_arg_int(call->args, "max_bandwidth_mibs", 0, 0, 1 << 30, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.max_bandwidth_mibs = (uint64_t)value;
    if (api_arg_int(call->args, "timeout_s", 3600, 1, 30 * 86400, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.timeout_s = (uint64_t)value;
    params.timeout_force = strcmp(api_arg_string(call->args, "timeout_strategy", "cancel"), "force") == 0;
    if (api_arg_bool(call->args, "keep_alive", false, &params.keep_alive, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    if (api_arg_int(call->args, "throttle_initial", 20, 1, 99, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.throttle.initial = (int)value;
    if (api_arg_int(call->args, "throttle_increment", 10, 0, 99, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.throttle.increment = (int)value;
    if (api_arg_int(call->args, "throttle_max", 99, 1, 99, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.throttle.max = (int)value;
    if (params.throttle.initial > params.throttle.max)
        return api_call_fail(call, API_ERR_INVALID_ARGUMENT,
                             "args.throttle_initial: %d is above throttle_max (%d)", params.throttle.initial,
                             params.throttle.max);
    if (api_arg_int(call->args, "stall_timeout_s", 5, 1, 3600, &value, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    params.stall_timeout_ms = (unsigned)value * 1000u;
    if (api_arg_bool(call->args, "verify_digest", false, &params.verify_digest, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    static const struct {
        const char *name;
        size_t offset, size;
    } tls_args[] = {
        {"tls_psk_file", offsetof(struct mig_params, tls_psk_file), sizeof(params.tls_psk_file)},
        {"tls_creds_dir", offsetof(struct mig_params, tls_creds_dir), sizeof(params.tls_creds_dir)},
        {"tls_server_name", offsetof(struct mig_params, tls_server_name), sizeof(params.tls_server_name)},
    };
    for (size_t i = 0; i < sizeof(tls_args) / sizeof(tls_args[0]); i++) {
        const char *text = api_arg_string(call->args, tls_args[i].name, "");
        if (strlen(text) >= tls_args[i].size)
            return api_call_fail(call, API_ERR_INVALID_ARGUMENT, "args.%s: longer than %zu bytes", tls_args[i].name,
                                 tls_args[i].size - 1);
        snprintf((char *)&params + tls_args[i].offset, tls_args[i].size, "%s", text);
    }

    uint64_t id = 0;
    const char *code = NULL;
    char message[1400];
    if (migration_start(vm, call->server, &params, &id, &code, message, sizeof(message)) != 0)
        return api_call_fail(call, code_from_name(code), "%s", message);
    const char *tls = params.tls_psk_file[0] != '\0' ? "psk" : params.tls_creds_dir[0] != '\0' ? "x509" : NULL;
    return api_call_ok(call, json_pack("{s:I, s:s, s:s, s:s, s:I, s:I, s:I, s:b, s:s?}",
                                       "id", (json_int_t)id,
                                       "state", "setup",
                                       "dest", params.dest,
                                       "converge", mig_converge_name(params.converge),
                                       "downtime_ms", (json_int_t)params.downtime_ms,
                                       "max_bandwidth_mibs", (json_int_t)params.max_bandwidth_mibs,
                                       "timeout_s", (json_int_t)params.timeout_s,
                                       "keep_alive", params.keep_alive,
                                       "tls", tls));
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

static const struct api_command commands[] = {
    {"migration.start", cmd_migration_start, API_CMD_WORKER, start_args,
     "live-migrate the VM to another ringvm --incoming (returns once dispatched)"},
    {"migration.progress", cmd_migration_progress, 0, NULL,
     "the migration progress snapshot (also on the destination)"},
    {"migration.cancel", cmd_migration_cancel, 0, NULL, "stop the running migration; the guest continues here"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_migration = {commands};
