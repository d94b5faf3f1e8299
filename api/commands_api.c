/*
 * api.version, api.commands, events.subscribe, events.unsubscribe.
 * No VM access: these are also linked into the fuzzer.
 */
#include <string.h>
#include <unistd.h>

#include "api/commands.h"

static enum api_status cmd_api_version(struct api_call *call)
{
    return api_call_ok(call, json_pack("{s:i, s:s, s:I}", "protocol", API_PROTOCOL_VERSION,
                                       "server", "ringvm", "pid", (json_int_t)getpid()));
}

static json_t *describe_args(const struct api_arg_spec *specs)
{
    json_t *list = json_array();
    for (size_t i = 0; list && specs && specs[i].name; i++) {
        json_t *arg = json_pack("{s:s, s:s, s:b}", "name", specs[i].name, "type",
                                api_arg_type_name(specs[i].type), "required", specs[i].required);
        if (!arg)
            continue;
        if (specs[i].type == API_ARG_ENUM && specs[i].choices) {
            json_t *choices = json_array();
            for (size_t c = 0; choices && specs[i].choices[c]; c++)
                json_array_append_new(choices, json_string(specs[i].choices[c]));
            json_object_set_new(arg, "choices", choices);
        }
        if (specs[i].help)
            json_object_set_new(arg, "help", json_string(specs[i].help));
        json_array_append_new(list, arg);
    }
    return list;
}

static enum api_status cmd_api_commands(struct api_call *call)
{
    json_t *list = json_array();
    for (size_t g = 0; list && call->groups && call->groups[g]; g++) {
        for (const struct api_command *c = call->groups[g]->commands; c && c->name; c++) {
            json_t *entry = json_pack("{s:s, s:s, s:o, s:b}", "name", c->name, "summary",
                                      c->summary ? c->summary : "", "args", describe_args(c->args),
                                      "worker", (c->flags & API_CMD_WORKER) != 0);
            if (entry)
                json_array_append_new(list, entry);
        }
    }
    if (!list)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    return api_call_ok(call, json_pack("{s:o}", "commands", list));
}

static enum api_status cmd_events_subscribe(struct api_call *call)
{
    if (!call->session)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "events need a connection");
    json_t *filter = json_object_get(call->args, "events");
    if (filter && !json_is_null(filter)) {
        size_t i;
        json_t *item;
        json_array_foreach(filter, i, item) {
            if (!json_is_string(item))
                return api_call_fail(call, API_ERR_INVALID_ARGUMENT,
                                     "args.events[%zu]: expected string", i);
        }
        if (json_array_size(filter) == 0)
            filter = NULL;
    } else {
        filter = NULL;
    }
    api_session_reset(call->session);
    call->session->subscribed = true;
    call->session->event_filter = filter ? json_deep_copy(filter) : NULL;
    return api_call_ok(call, json_pack("{s:b, s:O}", "subscribed", 1, "events",
                                       filter ? filter : json_null()));
}

static enum api_status cmd_events_unsubscribe(struct api_call *call)
{
    if (call->session)
        api_session_reset(call->session);
    return api_call_ok(call, json_pack("{s:b}", "subscribed", 0));
}

static const struct api_arg_spec subscribe_args[] = {
    {"events", API_ARG_ARRAY, false, NULL,
     "event name prefixes to receive, e.g. [\"vm.\"]; absent or empty = all"},
    {NULL, 0, false, NULL, NULL},
};

static const struct api_command commands[] = {
    {"api.version", cmd_api_version, 0, NULL, "protocol version and server identity"},
    {"api.commands", cmd_api_commands, 0, NULL, "every command with its arguments"},
    {"events.subscribe", cmd_events_subscribe, 0, subscribe_args,
     "this connection also receives event lines from now on"},
    {"events.unsubscribe", cmd_events_unsubscribe, 0, NULL, "stop receiving events"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_api = {commands};
