/*
 * libFuzzer target over the API request handler: the framing layer splits
 * the input into lines (in pieces whose sizes come from the input), each line
 * goes through parsing, validation, dispatch and reply building exactly as
 * on the server's epoll thread. Every reply must be one valid JSON line.
 *
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined).
 */
#include <stdint.h>
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
static const struct api_command_group *const groups[] = {&api_commands_api, &fuzz_group, NULL};

static void check_reply(char *reply, size_t length)
{
    if (!reply)
        return;     /* out of memory only */
    if (length == 0 || reply[length - 1] != '\n' || memchr(reply, '\n', length - 1))
        abort();
    json_t *object = json_loadb(reply, length, 0, NULL);
    if (!json_is_object(object) || !json_object_get(object, "ok"))
        abort();
    json_decref(object);
    free(reply);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The whole input as one line, the way a single request arrives. */
    struct api_session session = {0};
    size_t length;
    check_reply(api_handle_line(groups, NULL, &session, (const char *)data, size, &length), length);
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
            check_reply(api_handle_line(groups, NULL, &session, line, length, &reply_length), reply_length);
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
