/*
 * Commands and their dispatch.
 *
 * Adding a command = one entry in a table of struct api_command (in the
 * api/commands_*.c file of its subsystem); a new group file adds one line
 * to api_command_groups in api/commands.c. Arguments are declared in the
 * entry and validated before the handler runs, so a handler only reads them.
 *
 * Where a handler runs:
 *   - default: on the server's epoll thread. It must not block (no
 *     vm_pause, no waiting on locks held by vCPU/harvester/migration work).
 *   - API_CMD_WORKER: on the server's worker thread (one, so such commands
 *     run one at a time, in arrival order). Anything that can take long:
 *     vm_pause, hashing guest RAM, joining threads.
 * Either way the handler may return API_PENDING after keeping the call, and
 * finish it later from any thread with api_call_complete() (e.g. a command
 * that completes when a migration phase ends). The connection's later
 * requests wait for the reply, so replies stay in request order; other
 * connections are not affected.
 *
 * Ownership of a struct api_call: the dispatcher creates it; the thread
 * running the handler owns it until the handler returns API_DONE or until
 * it calls api_call_complete(); then the server owns it again.
 */
#ifndef RINGVM_API_DISPATCH_H
#define RINGVM_API_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "api/protocol.h"

struct vm;
struct api_server;

/* Per-connection state handlers may change. Epoll thread only (so only
 * handlers without API_CMD_WORKER may touch it). */
struct api_session {
    bool subscribed;            /* receives events */
    json_t *event_filter;       /* array of name prefixes, NULL = all */
};

enum api_status { API_DONE = 0, API_PENDING = 1 };

struct api_call {
    /* Inputs, read-only for the handler. */
    struct api_server *server;          /* NULL in unit tests / fuzzing */
    struct vm *vm;                      /* NULL: VM commands answer unavailable */
    const struct api_command *command;
    const struct api_command_group *const *groups;  /* the table it came from */
    json_t *id;                         /* owned */
    json_t *args;                       /* owned; an object, validated */
    struct api_session *session;        /* valid on the epoll thread only */

    /* Outcome: set with api_call_ok / api_call_fail. */
    json_t *result;                     /* owned */
    struct api_error error;             /* code API_OK unless failed */

    /* Server bookkeeping. */
    uint64_t client_token;
    uint64_t started_ns;
    struct api_call *next;
};

typedef enum api_status (*api_handler_fn)(struct api_call *call);

#define API_CMD_WORKER  0x1u    /* run on the worker thread */

struct api_command {
    const char *name;                   /* "group.verb" */
    api_handler_fn handler;
    unsigned flags;
    const struct api_arg_spec *args;    /* {NULL}-terminated, or NULL */
    const char *summary;                /* one line, for api.commands */
};

struct api_command_group {
    const struct api_command *commands;     /* {NULL}-terminated */
};

/* All groups, NULL-terminated (api/commands.c). */
extern const struct api_command_group *const api_command_groups[];

const struct api_command *api_command_find(const struct api_command_group *const *groups,
                                           const char *name);

/* Result setters; both return API_DONE. api_call_ok steals result (NULL = {}). */
enum api_status api_call_ok(struct api_call *call, json_t *result);
enum api_status api_call_fail(struct api_call *call, enum api_error_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* For handlers that returned API_PENDING: hand the finished call back to
 * the server (thread-safe, any thread). */
void api_call_complete(struct api_call *call);

/*
 * Parses and validates one request line and looks the command up. Returns
 * a new call ready for its handler, or NULL with *error_reply set to the
 * error line to send (NULL only when out of memory).
 */
struct api_call *api_call_from_line(const struct api_command_group *const *groups,
                                    const char *line, size_t length, char **error_reply,
                                    size_t *error_length);
/* The reply line for a finished call. NULL only when out of memory. */
char *api_call_reply(struct api_call *call, size_t *length);
void api_call_free(struct api_call *call);

/* Parse, dispatch synchronously (worker commands too) and build the reply:
 * what the server does, minus threads. For unit tests and the fuzzer; a
 * handler returning API_PENDING is treated as an internal error here. */
char *api_handle_line(const struct api_command_group *const *groups, struct vm *vm,
                      struct api_session *session, const char *line, size_t length,
                      size_t *reply_length);

/* Session helpers (events.subscribe). */
void api_session_reset(struct api_session *session);
bool api_session_wants(const struct api_session *session, const char *event_name);

/* CLOCK_REALTIME in ms: the ts_ms of events. */
uint64_t api_wall_ms(void);

#endif
