/* API requests in the test process (tests/api_requests.h). */
#include "tests/api_requests.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "api/commands.h"
#include "api/dispatch.h"

json_t *api_request(struct vm *vm, const char *line)
{
    struct api_session session = { 0 };
    size_t length = 0;
    char *text = api_handle_line(api_command_groups, vm, &session, line, strlen(line), &length);
    cr_assert_not_null(text, "no reply to %s", line);
    json_error_t error;
    json_t *reply = json_loadb(text, length, 0, &error);
    cr_assert_not_null(reply, "reply is not JSON (%s): %s", error.text, text);
    free(text);
    api_session_reset(&session);
    return reply;
}

void api_expect_error(struct vm *vm, const char *line, const char *code, const char *message)
{
    json_t *reply = api_request(vm, line);
    char *text = json_dumps(reply, JSON_COMPACT);
    cr_assert(json_is_false(json_object_get(reply, "ok")), "%s answered %s", line, text);
    json_t *error = json_object_get(reply, "error");
    cr_assert_str_eq(json_string_value(json_object_get(error, "code")), code, "%s answered %s", line, text);
    cr_assert_str_eq(json_string_value(json_object_get(error, "message")), message, "%s answered %s", line, text);
    free(text);
    json_decref(reply);
}

json_t *api_expect_ok(struct vm *vm, const char *line)
{
    json_t *reply = api_request(vm, line);
    char *text = json_dumps(reply, JSON_COMPACT);
    cr_assert(json_is_true(json_object_get(reply, "ok")), "%s answered %s", line, text);
    free(text);
    json_t *result = json_incref(json_object_get(reply, "result"));
    json_decref(reply);
    return result;
}
