/*
 * Command lookup and dispatch; see dispatch.h. No sockets, no threads.
 */
#include "api/dispatch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const struct api_command *api_command_find(const struct api_command_group *const *groups,
                                           const char *name)
{
    for (size_t g = 0; groups && groups[g]; g++)
        for (const struct api_command *c = groups[g]->commands; c && c->name; c++)
            if (strcmp(c->name, name) == 0)
                return c;
    return NULL;
}

enum api_status api_call_ok(struct api_call *call, json_t *result)
{
    json_decref(call->result);
    call->result = result ? result : json_object();
    call->error.code = API_OK;
    return API_DONE;
}

enum api_status api_call_fail(struct api_call *call, enum api_error_code code, const char *fmt, ...)
{
    json_decref(call->result);
    call->result = NULL;
    call->error.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call->error.message, sizeof(call->error.message), fmt, ap);
    va_end(ap);
    return API_DONE;
}

void api_call_free(struct api_call *call)
{
    if (!call)
        return;
    json_decref(call->id);
    json_decref(call->args);
    json_decref(call->result);
    free(call);
}

struct api_call *api_call_from_line(const struct api_command_group *const *groups,
                                    const char *line, size_t length, char **error_reply,
                                    size_t *error_length)
{
    struct api_request request;
    struct api_error error = {0};
    json_t *id = NULL;
    *error_reply = NULL;
    if (api_request_parse(line, length, &request, &id, &error) < 0) {
        *error_reply = api_reply_error(id, error.code, error.message, error_length);
        json_decref(id);
        return NULL;
    }
    const struct api_command *command = api_command_find(groups, request.cmd);
    if (!command) {
        char message[160];
        snprintf(message, sizeof(message),
                 "unknown command '%.64s' (api.commands lists them)", request.cmd);
        *error_reply = api_reply_error(request.id, API_ERR_UNKNOWN_COMMAND, message, error_length);
        api_request_free(&request);
        return NULL;
    }
    if (api_args_validate(request.args, command->args, command->name, &error) < 0) {
        *error_reply = api_reply_error(request.id, error.code, error.message, error_length);
        api_request_free(&request);
        return NULL;
    }
    struct api_call *call = calloc(1, sizeof(*call));
    if (!call) {
        *error_reply = api_reply_error(request.id, API_ERR_INTERNAL, "out of memory", error_length);
        api_request_free(&request);
        return NULL;
    }
    call->command = command;
    call->groups = groups;
    call->id = json_incref(request.id);
    call->args = json_incref(request.args);
    api_request_free(&request);
    return call;
}

char *api_call_reply(struct api_call *call, size_t *length)
{
    if (call->error.code != API_OK)
        return api_reply_error(call->id, call->error.code, call->error.message, length);
    json_t *result = call->result;
    call->result = NULL;
    return api_reply_ok(call->id, result, length);
}

char *api_handle_line(const struct api_command_group *const *groups, struct vm *vm,
                      struct api_session *session, const char *line, size_t length,
                      size_t *reply_length)
{
    char *reply = NULL;
    struct api_call *call = api_call_from_line(groups, line, length, &reply, reply_length);
    if (!call)
        return reply;
    call->vm = vm;
    call->session = session;
    if (call->command->handler(call) == API_PENDING) {
        /* Without a server nobody completes it; such handlers must not be
         * reachable here (they check call->server). */
        api_call_fail(call, API_ERR_INTERNAL, "%s cannot complete without a server",
                      call->command->name);
    }
    reply = api_call_reply(call, reply_length);
    api_call_free(call);
    return reply;
}

void api_session_reset(struct api_session *session)
{
    json_decref(session->event_filter);
    session->event_filter = NULL;
    session->subscribed = false;
}

bool api_session_wants(const struct api_session *session, const char *event_name)
{
    if (!session->subscribed)
        return false;
    if (!session->event_filter)
        return true;
    size_t i;
    json_t *prefix;
    json_array_foreach(session->event_filter, i, prefix) {
        const char *p = json_string_value(prefix);
        if (p && strncmp(event_name, p, strlen(p)) == 0)
            return true;
    }
    return false;
}

uint64_t api_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
