/*
 * The ringvm control protocol: newline-delimited JSON over a Unix socket.
 *
 *   request  {"id": ID, "cmd": "NAME", "args": {...}}       args optional
 *   reply    {"id": ID, "ok": true,  "result": {...}}
 *            {"id": ID, "ok": false, "error": {"code": "CODE", "message": "..."}}
 *   event    {"event": "NAME", "ts_ms": T, "data": {...}}
 *
 * Everything in this file is a pure function of its inputs (no sockets, no
 * threads, no VM): the server, the client, the unit tests and the fuzzer
 * all use it. Documented for users in docs/api.md.
 */
#ifndef RINGVM_API_PROTOCOL_H
#define RINGVM_API_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define API_PROTOCOL_VERSION 1

/* A request line longer than this (without its '\n') is answered with
 * invalid-request and the connection is closed. */
#define API_MAX_LINE_BYTES (1024 * 1024)
/* Deeper nesting of arrays/objects in a request is a parse-error (checked
 * before jansson sees the text, so no recursion depth is ever at risk). */
#define API_MAX_DEPTH 32
/* Longest error message (bytes, including the NUL). */
#define API_MESSAGE_MAX 512

enum api_error_code {
    API_OK = 0,
    API_ERR_PARSE,              /* "parse-error" */
    API_ERR_INVALID_REQUEST,    /* "invalid-request" */
    API_ERR_UNKNOWN_COMMAND,    /* "unknown-command" */
    API_ERR_INVALID_ARGUMENT,   /* "invalid-argument" */
    API_ERR_VM_NOT_RUNNING,     /* "vm-not-running" */
    API_ERR_VM_RUNNING,         /* "vm-running" */
    API_ERR_VM_PAUSED,          /* "vm-paused" */
    API_ERR_MIGRATION_ACTIVE,   /* "migration-active" */
    API_ERR_NO_MIGRATION,       /* "no-migration" */
    API_ERR_INVALID_STATE,      /* "invalid-state" */
    API_ERR_UNAVAILABLE,        /* "unavailable" */
    API_ERR_INTERNAL,           /* "internal" */
    API_ERR_COUNT
};

/* "parse-error", ...; "internal" for out-of-range values. */
const char *api_error_code_name(enum api_error_code code);
/* Inverse of api_error_code_name; API_ERR_COUNT if unknown. */
enum api_error_code api_error_code_from_name(const char *name);

struct api_error {
    enum api_error_code code;
    char message[API_MESSAGE_MAX];
};

/* Sets code and a printf-formatted message; returns -1 (for "return
 * api_error_set(...)"). */
int api_error_set(struct api_error *error, enum api_error_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- requests ----------------------------------------------------------- */

struct api_request {
    json_t *root;       /* the parsed object (owned) */
    json_t *id;         /* borrowed from root: integer or string; NULL if unreadable */
    const char *cmd;    /* borrowed from root */
    json_t *args;       /* borrowed from root, or an owned empty object; always an object */
    bool args_owned;
};

/*
 * Parses one request line (without its '\n'; a trailing '\r' is ignored).
 * Checks, in order: UTF-8 / JSON syntax / nesting (parse-error), an object
 * with a valid id, a string cmd, an object args and no other fields
 * (invalid-request). Does not look the command up.
 *
 * Returns 0 with *request filled (free with api_request_free), or -1 with
 * *error set and *id_out set to a new reference to the request id if it
 * could be read (else NULL) so the error reply can echo it.
 */
int api_request_parse(const char *line, size_t length, struct api_request *request,
                      json_t **id_out, struct api_error *error);
void api_request_free(struct api_request *request);

/* Best effort: the top-level "id" of a possibly truncated or malformed
 * request (e.g. a line over the size limit), if it appears before anything
 * unreadable. New reference or NULL. Never recurses. */
json_t *api_id_from_prefix(const char *text, size_t length);

/* Deepest array/object nesting in text (strings skipped), stopping early
 * once it exceeds limit (then returns limit + 1). */
unsigned api_json_depth(const char *text, size_t length, unsigned limit);

/* ---- argument validation -------------------------------------------------- */

enum api_arg_type {
    API_ARG_INT,        /* JSON integer */
    API_ARG_UINT,       /* JSON integer >= 0 */
    API_ARG_NUMBER,     /* integer or real */
    API_ARG_STRING,
    API_ARG_BOOL,
    API_ARG_OBJECT,
    API_ARG_ARRAY,
    API_ARG_ENUM,       /* string, one of choices */
    API_ARG_INT_OR_STRING,  /* JSON integer or string; the handler reads which (e.g.
                               migration.start's postcopy_after: 3, "5s" or "auto") */
};

struct api_arg_spec {
    const char *name;
    enum api_arg_type type;
    bool required;
    const char *const *choices;     /* API_ARG_ENUM: NULL-terminated */
    const char *help;               /* one line, for api.commands and docs */
};

/* "integer", "non-negative integer", "number", "string", ... */
const char *api_arg_type_name(enum api_arg_type type);

/* Checks args (an object) against specs (terminated by a {NULL} entry, or
 * NULL for "no arguments"): unknown names, missing required ones and wrong
 * types are invalid-argument naming the field, e.g.
 * "args.downtime_ms: expected integer". */
int api_args_validate(const json_t *args, const struct api_arg_spec *specs,
                      const char *command, struct api_error *error);

/* Typed getters for handlers (after validation, so types are right; they
 * still check and report like the validator). Absent -> default. */
int api_arg_int(const json_t *args, const char *name, int64_t fallback, int64_t min,
                int64_t max, int64_t *out, struct api_error *error);
int api_arg_bool(const json_t *args, const char *name, bool fallback, bool *out,
                 struct api_error *error);
const char *api_arg_string(const json_t *args, const char *name, const char *fallback);

/* ---- replies and events ----------------------------------------------------- */

/* Each returns one line ending in '\n' (malloc'd, caller frees) or NULL
 * when out of memory. id may be NULL (echoed as null). result is stolen;
 * NULL means {}. Non-UTF-8 bytes in message are replaced by '?'. */
char *api_reply_ok(json_t *id, json_t *result, size_t *length);
char *api_reply_error(json_t *id, enum api_error_code code, const char *message, size_t *length);
/* data is stolen; NULL means {}. */
char *api_event_line(const char *name, uint64_t ts_ms, json_t *data, size_t *length);

/* A JSON string from arbitrary bytes: invalid UTF-8 replaced by '?', cut at
 * max_bytes (on a character boundary) with "..." appended. */
json_t *api_json_string_lossy(const char *text, size_t max_bytes);

/* ---- framing ---------------------------------------------------------------- */

/*
 * Input buffer of one connection: bytes in, complete lines out. A line
 * longer than max_line is reported as overflow (the connection is then
 * closed by the caller, so no resynchronization is attempted).
 */
struct api_linebuf {
    char *data;
    size_t start;       /* first unconsumed byte */
    size_t length;      /* end of valid bytes */
    size_t capacity;
    size_t scanned;     /* bytes after start already known to hold no '\n' */
    size_t max_line;
};

void api_linebuf_init(struct api_linebuf *buffer, size_t max_line);
void api_linebuf_free(struct api_linebuf *buffer);
/* Space to read into: at least min_free bytes (grows up to max_line + 1
 * unconsumed bytes plus min_free). Returns NULL when out of memory. */
char *api_linebuf_space(struct api_linebuf *buffer, size_t min_free, size_t *available);
void api_linebuf_commit(struct api_linebuf *buffer, size_t bytes);
int api_linebuf_append(struct api_linebuf *buffer, const void *bytes, size_t length);

enum api_line_status {
    API_LINE_NONE = 0,      /* no complete line yet */
    API_LINE_READY,         /* line and length: one line without '\n' (valid until the next call) */
    API_LINE_OVERFLOW,      /* a line of more than max_line bytes; line and length: what
                               is buffered of it (not consumed) */
};
enum api_line_status api_linebuf_next(struct api_linebuf *buffer, const char **line, size_t *length);
/* The bytes of an incomplete last line (at EOF the caller may treat it as
 * a line). Consumes them. */
size_t api_linebuf_take_rest(struct api_linebuf *buffer, const char **line);
size_t api_linebuf_pending(const struct api_linebuf *buffer);

#endif
