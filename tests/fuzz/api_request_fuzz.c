/*
 * libFuzzer target over the API request handler: the framing layer splits
 * the input into lines (in pieces whose sizes come from the input), each line
 * goes through parsing, validation, dispatch and reply building exactly as
 * on the server's epoll thread. Every reply must be one valid JSON line.
 *
 * Every command group of the server is in the table: api.*, events.*, and
 * vm.*, migration.*, bpf.* (plus fuzz.start, every argument type). There
 * is no VM (vm == NULL: a real one needs /dev/kvm), so a vm.* / migration.*
 * / bpf.* request goes through the real argument validation of its
 * command and then gets the no-VM answer; such a request that is answered
 * ok:true, or with anything but parse-error, invalid-request,
 * invalid-argument, unknown-command or unavailable, aborts (a VM command must not succeed
 * without a VM). What lies past the handlers' VM checks needs a VM and is
 * not fuzzed here; the target prints that once at start.
 *
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined) against
 * the VMM library compiled for fuzzing ($(BUILD)/fuzz/libringvm-fuzz.a).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/commands.h"
#include "api/dispatch.h"
#include "api/protocol.h"

/* A command with every argument type, so validation is exercised. */
static const char *const modes[] = {"auto", "dirty-limit", "none", NULL};
static const struct api_arg_spec fuzz_args[] = {
    {"dest", API_ARG_STRING, true, NULL, NULL},
    {"downtime_ms", API_ARG_INT, false, NULL, NULL},
    {"bytes", API_ARG_UINT, false, NULL, NULL},
    {"ratio", API_ARG_NUMBER, false, NULL, NULL},
    {"converge", API_ARG_ENUM, false, modes, NULL},
    {"keep_alive", API_ARG_BOOL, false, NULL, NULL},
    {"extra", API_ARG_OBJECT, false, NULL, NULL},
    {"list", API_ARG_ARRAY, false, NULL, NULL},
    {NULL, 0, false, NULL, NULL},
};

static enum api_status fuzz_start(struct api_call *call)
{
    int64_t downtime;
    bool keep;
    struct api_error error;
    if (api_arg_int(call->args, "downtime_ms", 300, 0, 1000000, &downtime, &error) < 0 ||
        api_arg_bool(call->args, "keep_alive", false, &keep, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    return api_call_ok(call, json_pack("{s:s, s:I, s:b}", "dest", api_arg_string(call->args, "dest", ""),
                                       "downtime_ms", (json_int_t)downtime, "keep_alive", keep));
}

static const struct api_command fuzz_commands[] = {
    {"fuzz.start", fuzz_start, 0, fuzz_args, "every argument type"},
    {NULL, NULL, 0, NULL, NULL},
};
static const struct api_command_group fuzz_group = {fuzz_commands};
static const struct api_command_group *const groups[] = {
    &api_commands_api, &api_commands_vm, &api_commands_digest, &api_commands_dirty_stats,
    &api_commands_migration, &api_commands_bpf, &fuzz_group, NULL,
};

/* True when the request line names a command that needs a VM. */
static bool needs_vm(const char *line, size_t length)
{
    json_t *request = json_loadb(line, length, JSON_DISABLE_EOF_CHECK, NULL);
    const char *name = json_string_value(json_object_get(request, "cmd"));
    bool result = name != NULL && (strncmp(name, "vm.", 3) == 0 || strncmp(name, "migration.", 10) == 0 ||
                                   strncmp(name, "bpf.", 4) == 0);
    json_decref(request);
    return result;
}

static void check_reply(const char *line, size_t line_length, char *reply, size_t length)
{
    if (!reply)
        return;     /* out of memory only */
    if (length == 0 || reply[length - 1] != '\n' || memchr(reply, '\n', length - 1))
        abort();
    json_t *object = json_loadb(reply, length, 0, NULL);
    if (!json_is_object(object) || !json_object_get(object, "ok"))
        abort();
    if (needs_vm(line, line_length)) {
        /* Without a VM: validation errors or "unavailable", nothing else. */
        const char *code = json_string_value(json_object_get(json_object_get(object, "error"), "code"));
        if (json_is_true(json_object_get(object, "ok")) || code == NULL ||
            (strcmp(code, "parse-error") != 0 && strcmp(code, "invalid-request") != 0 &&
             strcmp(code, "invalid-argument") != 0 && strcmp(code, "unknown-command") != 0 &&
             strcmp(code, "unavailable") != 0)) {
            fprintf(stderr, "api_request_fuzz: a VM command answered without a VM: %.*s -> %.*s\n",
                    (int)(line_length > 200 ? 200 : line_length), line, (int)length, reply);
            abort();
        }
    }
    json_decref(object);
    free(reply);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "api_request_fuzz: vm.*, migration.* and bpf.* run with no VM (needs /dev/kvm): their "
                    "argument validation and no-VM answers are fuzzed, not what follows\n");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The whole input as one line, the way a single request arrives. */
    struct api_session session = {0};
    size_t length;
    check_reply((const char *)data, size, api_handle_line(groups, NULL, &session, (const char *)data, size, &length),
                length);
    json_decref(api_id_from_prefix((const char *)data, size));

    /* Through the framing layer, in pieces. */
    struct api_linebuf buffer;
    api_linebuf_init(&buffer, 4096);
    size_t offset = 0;
    unsigned piece_seed = size ? data[0] : 1;
    while (offset < size) {
        size_t piece = 1 + (piece_seed = piece_seed * 33 + 7) % 97;
        if (piece > size - offset)
            piece = size - offset;
        if (api_linebuf_append(&buffer, data + offset, piece) < 0)
            break;
        offset += piece;
        const char *line;
        enum api_line_status status;
        while ((status = api_linebuf_next(&buffer, &line, &length)) == API_LINE_READY) {
            size_t reply_length;
            check_reply(line, length, api_handle_line(groups, NULL, &session, line, length, &reply_length),
                        reply_length);
        }
        if (status == API_LINE_OVERFLOW) {
            json_decref(api_id_from_prefix(line, length));
            break;
        }
    }
    api_linebuf_free(&buffer);
    api_session_reset(&session);
    return 0;
}
