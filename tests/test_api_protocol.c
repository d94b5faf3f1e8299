/* The API protocol without sockets: parsing, validation, replies, framing. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "api/commands.h"
#include "api/digest.h"
#include "api/dispatch.h"
#include "api/protocol.h"

/* Runs one line through the real command table without a VM; returns the
 * parsed reply. */
static json_t *handle(const char *line, size_t length)
{
    struct api_session session = {0};
    size_t reply_length = 0;
    char *reply = api_handle_line(api_command_groups, NULL, &session, line, length, &reply_length);
    api_session_reset(&session);
    cr_assert_not_null(reply, "no reply for %.80s", line);
    cr_assert_gt(reply_length, 1);
    cr_assert_eq(reply[reply_length - 1], '\n', "reply must end in a newline");
    cr_assert_null(memchr(reply, '\n', reply_length - 1), "reply must be one line");
    json_error_t error;
    json_t *object = json_loadb(reply, reply_length, 0, &error);
    cr_assert_not_null(object, "reply is not JSON: %s (%s)", reply, error.text);
    free(reply);
    return object;
}

/* Asserts an error reply with code and the expected id (JSON text, "null"
 * when unreadable); returns the message (static buffer). */
static const char *expect_error(const char *line, size_t length, const char *code, const char *id_json)
{
    static char message[API_MESSAGE_MAX];
    json_t *reply = handle(line, length);
    cr_assert(json_is_false(json_object_get(reply, "ok")), "expected an error for %.80s", line);
    json_t *error = json_object_get(reply, "error");
    const char *got = json_string_value(json_object_get(error, "code"));
    cr_assert_str_eq(got, code, "input %.80s: code %s, expected %s (%s)", line, got, code,
                     json_string_value(json_object_get(error, "message")));
    json_t *want = json_loads(id_json, JSON_DECODE_ANY, NULL);
    cr_assert(json_equal(json_object_get(reply, "id"), want), "input %.80s: id not echoed as %s", line,
              id_json);
    json_decref(want);
    snprintf(message, sizeof(message), "%s", json_string_value(json_object_get(error, "message")));
    cr_assert_gt(strlen(message), 0, "error message must say something");
    json_decref(reply);
    return message;
}

static const char *expect_error_str(const char *line, const char *code, const char *id_json)
{
    return expect_error(line, strlen(line), code, id_json);
}

Test(api_protocol, not_json_is_parse_error)
{
    expect_error_str("hello", "parse-error", "null");
    expect_error_str("{", "parse-error", "null");
    expect_error_str("{\"id\":1,}", "parse-error", "1");
    expect_error_str("{\"id\": 7, \"cmd\": \"vm.info\"", "parse-error", "7");
    expect_error_str("{\"id\":\"abc\",\"cmd\":}", "parse-error", "\"abc\"");
    expect_error_str("", "parse-error", "null");
    expect_error_str("{\"id\":1,\"cmd\":\"api.version\"} trailing", "parse-error", "1");
}

Test(api_protocol, not_an_object_is_invalid_request)
{
    expect_error_str("[1,2,3]", "invalid-request", "null");
    expect_error_str("42", "invalid-request", "null");
    expect_error_str("\"vm.info\"", "invalid-request", "null");
    expect_error_str("null", "invalid-request", "null");
}

Test(api_protocol, id_is_required_and_typed)
{
    expect_error_str("{\"cmd\":\"api.version\"}", "invalid-request", "null");
    expect_error_str("{\"id\":1.5,\"cmd\":\"api.version\"}", "invalid-request", "null");
    expect_error_str("{\"id\":{\"a\":1},\"cmd\":\"api.version\"}", "invalid-request", "null");
    expect_error_str("{\"id\":null,\"cmd\":\"api.version\"}", "invalid-request", "null");
}

Test(api_protocol, missing_or_bad_cmd)
{
    cr_assert_str_eq(expect_error_str("{\"id\":3}", "invalid-request", "3"), "missing cmd");
    cr_assert_str_eq(expect_error_str("{\"id\":\"x\",\"cmd\":5}", "invalid-request", "\"x\""),
                     "cmd: expected string");
    expect_error_str("{\"id\":4,\"cmd\":null}", "invalid-request", "4");
    expect_error_str("{\"id\":4,\"cmd\":[\"vm.info\"]}", "invalid-request", "4");
}

Test(api_protocol, unknown_command)
{
    const char *message = expect_error_str("{\"id\":5,\"cmd\":\"vm.fly\"}", "unknown-command", "5");
    cr_assert(strstr(message, "vm.fly"), "message names the command: %s", message);
    expect_error_str("{\"id\":-9,\"cmd\":\"\"}", "unknown-command", "-9");
}

Test(api_protocol, bad_args_and_fields)
{
    expect_error_str("{\"id\":6,\"cmd\":\"api.version\",\"args\":[1]}", "invalid-request", "6");
    expect_error_str("{\"id\":6,\"cmd\":\"api.version\",\"args\":\"x\"}", "invalid-request", "6");
    const char *message =
        expect_error_str("{\"id\":6,\"cmd\":\"api.version\",\"arg\":{}}", "invalid-request", "6");
    cr_assert(strstr(message, "arg"), "%s", message);
    /* args: null is the same as no args */
    json_t *reply = handle("{\"id\":6,\"cmd\":\"api.version\",\"args\":null}", strlen("{\"id\":6,\"cmd\":\"api.version\",\"args\":null}"));
    cr_assert(json_is_true(json_object_get(reply, "ok")));
    json_decref(reply);
}

Test(api_protocol, wrong_argument_type_names_the_field)
{
    cr_assert_str_eq(expect_error_str("{\"id\":8,\"cmd\":\"vm.shutdown\",\"args\":{\"exit_code\":\"x\"}}",
                                      "invalid-argument", "8"),
                     "args.exit_code: expected integer");
    cr_assert_str_eq(expect_error_str("{\"id\":8,\"cmd\":\"vm.shutdown\",\"args\":{\"exit_code\":-1}}",
                                      "invalid-argument", "8"),
                     "args.exit_code: must be >= 0 (got -1)");
    /* migration.start's real downtime_ms (an unsigned argument): a string is
     * the wrong type, a negative integer the wrong sign. */
    cr_assert_str_eq(expect_error_str("{\"id\":10,\"cmd\":\"migration.start\",\"args\":"
                                      "{\"dest\":\"unix:/x\",\"downtime_ms\":\"300\"}}",
                                      "invalid-argument", "10"),
                     "args.downtime_ms: expected integer");
    cr_assert_str_eq(expect_error_str("{\"id\":10,\"cmd\":\"migration.start\",\"args\":"
                                      "{\"dest\":\"unix:/x\",\"downtime_ms\":-1}}",
                                      "invalid-argument", "10"),
                     "args.downtime_ms: must be >= 0 (got -1)");
    cr_assert_str_eq(expect_error_str("{\"id\":10,\"cmd\":\"migration.start\",\"args\":"
                                      "{\"dest\":\"unix:/x\",\"downtime_ms\":1.5}}",
                                      "invalid-argument", "10"),
                     "args.downtime_ms: expected integer");
    cr_assert_str_eq(expect_error_str("{\"id\":9,\"cmd\":\"vm.info\",\"args\":{\"verbose\":true}}",
                                      "invalid-argument", "9"),
                     "args.verbose: unknown argument (vm.info takes no arguments)");
    expect_error_str("{\"id\":9,\"cmd\":\"events.subscribe\",\"args\":{\"events\":\"vm.\"}}",
                     "invalid-argument", "9");

    /* The validator on its own, with the migration-style arguments. */
    static const char *const modes[] = {"auto", "dirty-limit", "none", NULL};
    static const struct api_arg_spec specs[] = {
        {"dest", API_ARG_STRING, true, NULL, NULL},
        {"downtime_ms", API_ARG_INT, false, NULL, NULL},
        {"converge", API_ARG_ENUM, false, modes, NULL},
        {"keep_alive", API_ARG_BOOL, false, NULL, NULL},
        {NULL, 0, false, NULL, NULL},
    };
    struct api_error error;
    json_t *args = json_loads("{\"dest\":\"unix:/x\",\"downtime_ms\":\"300\"}", 0, NULL);
    cr_assert_eq(api_args_validate(args, specs, "migration.start", &error), -1);
    cr_assert_eq(error.code, API_ERR_INVALID_ARGUMENT);
    cr_assert_str_eq(error.message, "args.downtime_ms: expected integer");
    json_decref(args);
    args = json_loads("{\"downtime_ms\":300}", 0, NULL);
    cr_assert_eq(api_args_validate(args, specs, "migration.start", &error), -1);
    cr_assert_str_eq(error.message, "args.dest: required (string)");
    json_decref(args);
    args = json_loads("{\"dest\":\"x\",\"converge\":\"fast\"}", 0, NULL);
    cr_assert_eq(api_args_validate(args, specs, "migration.start", &error), -1);
    cr_assert_str_eq(error.message, "args.converge: expected one of auto, dirty-limit, none");
    json_decref(args);
    args = json_loads("{\"dest\":\"x\",\"keep_alive\":1}", 0, NULL);
    cr_assert_eq(api_args_validate(args, specs, "migration.start", &error), -1);
    cr_assert_str_eq(error.message, "args.keep_alive: expected boolean");
    json_decref(args);
    args = json_loads("{\"dest\":\"x\",\"downtime_ms\":300,\"converge\":\"auto\",\"keep_alive\":false}", 0, NULL);
    cr_assert_eq(api_args_validate(args, specs, "migration.start", &error), 0);
    int64_t value;
    cr_assert_eq(api_arg_int(args, "downtime_ms", 0, 1, 100, &value, &error), -1);
    cr_assert_str_eq(error.message, "args.downtime_ms: 300 is out of range 1..100");
    cr_assert_eq(api_arg_int(args, "timeout_s", 3600, 1, 100000, &value, &error), 0);
    cr_assert_eq(value, 3600);
    json_decref(args);
}

static char *deep(size_t depth, const char *prefix, const char *suffix)
{
    size_t p = strlen(prefix), s = strlen(suffix);
    char *text = malloc(p + 2 * depth + s + 1);
    memcpy(text, prefix, p);
    memset(text + p, '[', depth);
    memset(text + p + depth, ']', depth);
    memcpy(text + p + 2 * depth, suffix, s + 1);
    return text;
}

Test(api_protocol, nesting_10k_deep_is_a_clean_parse_error)
{
    char *text = deep(10000, "{\"id\":10,\"cmd\":\"api.version\",\"args\":{\"a\":", "}}");
    const char *message = expect_error_str(text, "parse-error", "10");
    cr_assert(strstr(message, "nested"), "%s", message);
    free(text);
    text = deep(10000, "", "");
    expect_error_str(text, "parse-error", "null");
    free(text);
    /* unbalanced, only openers */
    text = malloc(100001);
    memset(text, '{', 100000);
    text[100000] = '\0';
    expect_error_str(text, "parse-error", "null");
    free(text);
    /* brackets inside strings do not count */
    text = malloc(20100);
    int n = snprintf(text, 20100, "{\"id\":11,\"cmd\":\"x.y\",\"args\":{\"s\":\"");
    memset(text + n, '[', 20000);
    strcpy(text + n + 20000, "\"}}");
    expect_error_str(text, "unknown-command", "11");
    free(text);
    /* at the limit it parses */
    text = deep(API_MAX_DEPTH - 2, "{\"id\":12,\"cmd\":\"api.version\",\"args\":{\"a\":", "}}");
    expect_error_str(text, "invalid-argument", "12");
    free(text);
}

Test(api_protocol, line_over_1mib)
{
    size_t size = API_MAX_LINE_BYTES + 100;
    char *text = malloc(size + 1);
    int n = snprintf(text, size, "{\"id\":77,\"cmd\":\"api.version\",\"args\":{\"pad\":\"");
    memset(text + n, 'x', size - (size_t)n);
    text[size] = '\0';
    cr_assert_str_eq(expect_error(text, size, "invalid-request", "77"), "request line longer than 1048576 bytes");

    /* The framing layer reports it before a '\n' arrives, with the prefix
     * for the id. */
    struct api_linebuf buffer;
    api_linebuf_init(&buffer, API_MAX_LINE_BYTES);
    cr_assert_eq(api_linebuf_append(&buffer, text, API_MAX_LINE_BYTES), 0);
    const char *line;
    size_t length;
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_NONE);
    cr_assert_eq(api_linebuf_append(&buffer, "x", 1), 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_OVERFLOW);
    json_t *id = api_id_from_prefix(line, length);
    cr_assert(json_is_integer(id) && json_integer_value(id) == 77);
    json_decref(id);
    api_linebuf_free(&buffer);
    free(text);
}

Test(api_protocol, invalid_utf8_is_parse_error)
{
    static const char *const bad[] = {
        "{\"id\":13,\"cmd\":\"api.version\",\"args\":{\"s\":\"\xff\"}}",
        "{\"id\":13,\"cmd\":\"api.version\",\"args\":{\"s\":\"\xc0\xaf\"}}",        /* overlong */
        "{\"id\":13,\"cmd\":\"api.version\",\"args\":{\"s\":\"\xed\xa0\x80\"}}",    /* surrogate */
        "{\"id\":13,\"cmd\":\"api.version\",\"args\":{\"s\":\"\xe2\x82\"}}",        /* truncated */
        "{\"id\":13,\"cmd\":\"vm.\xfe\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *message = expect_error_str(bad[i], "parse-error", "13");
        json_t *check = api_json_string_lossy(message, 1000);
        cr_assert_not_null(check, "message must be valid UTF-8");
        json_decref(check);
    }
    /* a NUL byte inside the line */
    static const char nul[] = "{\"id\":14,\"cmd\":\"api.version\"\0}";
    expect_error(nul, sizeof(nul) - 1, "parse-error", "14");
    /* escaped NUL in a string is refused by jansson as well */
    expect_error_str("{\"id\":15,\"cmd\":\"api.\\u0000version\"}", "parse-error", "15");
    /* valid multi-byte UTF-8 is fine */
    expect_error_str("{\"id\":16,\"cmd\":\"vm.caf\xc3\xa9\"}", "unknown-command", "16");
}

Test(api_protocol, duplicate_keys_and_big_numbers)
{
    expect_error_str("{\"id\":17,\"id\":18,\"cmd\":\"api.version\"}", "parse-error", "17");
    expect_error_str("{\"id\":99999999999999999999999,\"cmd\":\"api.version\"}", "parse-error", "null");
}

Test(api_protocol, ok_replies_echo_the_id_exactly)
{
    struct api_session session = {0};
    size_t length;
    char *reply = api_handle_line(api_command_groups, NULL, &session,
                                  "{\"id\":\"a-b\",\"cmd\":\"events.unsubscribe\"}", strlen("{\"id\":\"a-b\",\"cmd\":\"events.unsubscribe\"}"), &length);
    cr_assert_str_eq(reply, "{\"id\":\"a-b\",\"ok\":true,\"result\":{\"subscribed\":false}}\n");
    free(reply);
    reply = api_handle_line(api_command_groups, NULL, &session,
                            "  {\"cmd\":\"events.unsubscribe\", \"id\": 9007199254740993}\r", strlen("  {\"cmd\":\"events.unsubscribe\", \"id\": 9007199254740993}\r"), &length);
    cr_assert_str_eq(reply, "{\"id\":9007199254740993,\"ok\":true,\"result\":{\"subscribed\":false}}\n");
    free(reply);
    api_session_reset(&session);
}

Test(api_protocol, vm_commands_without_vm_are_unavailable)
{
    static const char *const cmds[] = {"vm.info", "vm.pause", "vm.resume", "vm.shutdown",
                                       "vm.guest-stats", "vm.memory-digest", "vm.dirty-stats"};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "{\"id\":%zu,\"cmd\":\"%s\"}", i, cmds[i]);
        char id[16];
        snprintf(id, sizeof(id), "%zu", i);
        expect_error_str(line, "unavailable", id);
    }
}

Test(api_protocol, api_commands_lists_everything)
{
    json_t *reply = handle("{\"id\":1,\"cmd\":\"api.commands\"}", strlen("{\"id\":1,\"cmd\":\"api.commands\"}"));
    json_t *list = json_object_get(json_object_get(reply, "result"), "commands");
    static const char *const expected[] = {"api.version", "api.commands", "events.subscribe",
                                           "vm.info", "vm.pause", "vm.resume", "vm.shutdown",
                                           "vm.dirty-stats", "vm.memory-digest", "vm.guest-stats"};
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        bool found = false;
        size_t j;
        json_t *c;
        json_array_foreach(list, j, c)
            if (strcmp(json_string_value(json_object_get(c, "name")), expected[i]) == 0)
                found = true;
        cr_assert(found, "api.commands misses %s", expected[i]);
    }
    json_decref(reply);
}

Test(api_protocol, events_subscribe_sets_the_session)
{
    struct api_session session = {0};
    size_t length;
    char *reply = api_handle_line(api_command_groups, NULL, &session,
                                  "{\"id\":1,\"cmd\":\"events.subscribe\",\"args\":{\"events\":[\"vm.\"]}}", strlen("{\"id\":1,\"cmd\":\"events.subscribe\",\"args\":{\"events\":[\"vm.\"]}}"),
                                  &length);
    cr_assert_str_eq(reply, "{\"id\":1,\"ok\":true,\"result\":{\"subscribed\":true,\"events\":[\"vm.\"]}}\n");
    cr_assert_eq(length, strlen(reply));
    free(reply);
    cr_assert(session.subscribed);
    cr_assert(api_session_wants(&session, "vm.state"));
    cr_assert_not(api_session_wants(&session, "migration.iteration"));
    reply = api_handle_line(api_command_groups, NULL, &session,
                            "{\"id\":2,\"cmd\":\"events.subscribe\",\"args\":{\"events\":[1]}}", strlen("{\"id\":2,\"cmd\":\"events.subscribe\",\"args\":{\"events\":[1]}}"), &length);
    cr_assert_str_eq(reply, "{\"id\":2,\"ok\":false,\"error\":{\"code\":\"invalid-argument\",\"message\":"
                            "\"args.events[0]: expected string\"}}\n");
    free(reply);
    /* A refused subscribe leaves the session's filter as it was. */
    cr_assert(session.subscribed);
    cr_assert_not(api_session_wants(&session, "migration.iteration"));
    /* No filter: every event. */
    reply = api_handle_line(api_command_groups, NULL, &session, "{\"id\":3,\"cmd\":\"events.subscribe\"}", strlen("{\"id\":3,\"cmd\":\"events.subscribe\"}"),
                            &length);
    cr_assert_str_eq(reply, "{\"id\":3,\"ok\":true,\"result\":{\"subscribed\":true,\"events\":null}}\n");
    free(reply);
    cr_assert(api_session_wants(&session, "migration.iteration"));
    api_session_reset(&session);
    cr_assert_not(session.subscribed);
}

Test(api_protocol, event_line_format)
{
    size_t length;
    char *line = api_event_line("vm.state", 1234, json_pack("{s:s}", "state", "paused"), &length);
    cr_assert_str_eq(line, "{\"event\":\"vm.state\",\"ts_ms\":1234,\"data\":{\"state\":\"paused\"}}\n");
    cr_assert_eq(length, strlen(line));
    free(line);
    line = api_reply_error(NULL, API_ERR_VM_RUNNING, "bad \xff byte", &length);
    cr_assert_str_eq(line, "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"vm-running\",\"message\":\"bad ? byte\"}}\n");
    free(line);
}

Test(api_protocol, error_code_names_round_trip)
{
    static const char *const names[] = {"parse-error", "invalid-request", "unknown-command",
                                        "invalid-argument", "vm-not-running", "vm-running", "vm-paused",
                                        "migration-active", "no-migration", "invalid-state", "unavailable",
                                        "internal"};
    cr_assert_eq(sizeof(names) / sizeof(names[0]), API_ERR_COUNT - 1);
    for (int i = 1; i < API_ERR_COUNT; i++) {
        cr_assert_str_eq(api_error_code_name((enum api_error_code)i), names[i - 1]);
        cr_assert_eq(api_error_code_from_name(names[i - 1]), (enum api_error_code)i);
    }
}

Test(api_protocol, id_from_prefix)
{
    static const struct {
        const char *text;
        const char *id;     /* JSON or NULL */
    } cases[] = {
        {"{\"id\":5", NULL},                    /* could be 50 */
        {"{\"id\":5,", "5"},
        {"{\"cmd\":\"x\",\"id\":\"q\"", "\"q\""},
        {"{\"args\":{\"id\":1,\"n\":[1,{\"x\":\"}\"}]},\"id\":-3}", "-3"},
        {"{\"id\":true}", NULL},
        {"[\"id\",1]", NULL},
        {"{\"cmd\":\"unterminated", NULL},
        {"  {  \"id\"  :  \"with \\\" quote\"  }", "\"with \\\" quote\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *id = api_id_from_prefix(cases[i].text, strlen(cases[i].text));
        if (!cases[i].id) {
            cr_assert_null(id, "case %zu: %s", i, cases[i].text);
        } else {
            json_t *want = json_loads(cases[i].id, JSON_DECODE_ANY, NULL);
            cr_assert(json_equal(id, want), "case %zu: %s", i, cases[i].text);
            json_decref(want);
        }
        json_decref(id);
    }
}

Test(api_protocol, linebuf_framing)
{
    struct api_linebuf buffer;
    api_linebuf_init(&buffer, 16);
    const char *line;
    size_t length;
    cr_assert_eq(api_linebuf_append(&buffer, "ab", 2), 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_NONE);
    cr_assert_eq(api_linebuf_append(&buffer, "c\r\nde\n\nf", 8), 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_READY);
    cr_assert_eq(length, 3);
    cr_assert_eq(memcmp(line, "abc", 3), 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_READY);
    cr_assert_eq(length, 2);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_READY);
    cr_assert_eq(length, 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_NONE);
    cr_assert_eq(api_linebuf_take_rest(&buffer, &line), 1);
    cr_assert_eq(line[0], 'f');
    cr_assert_eq(api_linebuf_pending(&buffer), 0);
    /* exactly max_line is fine, max_line + 1 is not */
    cr_assert_eq(api_linebuf_append(&buffer, "0123456789abcdef\n", 17), 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_READY);
    cr_assert_eq(length, 16);
    cr_assert_eq(api_linebuf_append(&buffer, "0123456789abcdefg\n", 18), 0);
    cr_assert_eq(api_linebuf_next(&buffer, &line, &length), API_LINE_OVERFLOW);
    api_linebuf_free(&buffer);
}

static void collect_chunk(uint64_t offset, uint64_t size, const char hex[MEMORY_DIGEST_HEX_SIZE], void *opaque)
{
    json_array_append_new(opaque, json_pack("{s:I,s:I,s:s}", "offset", (json_int_t)offset, "bytes",
                                            (json_int_t)size, "digest", hex));
}

static void hex128(const void *data, size_t size, char out[33])
{
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits(data, size));
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", canonical.digest[i]);
}

Test(api_protocol, memory_digest_is_xxh3_128_of_ram_and_chunks)
{
    size_t size = (130u << 20) + 4096;
    uint8_t *data = calloc(1, size);
    cr_assert_not_null(data);
    for (size_t i = 0; i < size; i += 4096)
        data[i] = (uint8_t)(i >> 12);
    json_t *chunks = json_array();
    char total[MEMORY_DIGEST_HEX_SIZE], want[33];
    memory_digest_buffer(data, size, total, collect_chunk, chunks);
    hex128(data, size, want);
    cr_assert_str_eq(total, want);
    cr_assert_eq(json_array_size(chunks), 3);
    hex128(data + (128u << 20), size - (128u << 20), want);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(chunks, 2), "digest")), want);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(chunks, 2), "bytes")), (2u << 20) + 4096);
    hex128(data, 64u << 20, want);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(chunks, 0), "digest")), want);
    json_decref(chunks);
    free(data);
}
