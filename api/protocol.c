/*
 * Protocol: request parsing and validation, reply/event building, line
 * framing. Pure functions; see protocol.h.
 */
#include "api/protocol.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const error_code_names[API_ERR_COUNT] = {
    [API_OK] = "ok",
    [API_ERR_PARSE] = "parse-error",
    [API_ERR_INVALID_REQUEST] = "invalid-request",
    [API_ERR_UNKNOWN_COMMAND] = "unknown-command",
    [API_ERR_INVALID_ARGUMENT] = "invalid-argument",
    [API_ERR_VM_NOT_RUNNING] = "vm-not-running",
    [API_ERR_VM_RUNNING] = "vm-running",
    [API_ERR_VM_PAUSED] = "vm-paused",
    [API_ERR_MIGRATION_ACTIVE] = "migration-active",
    [API_ERR_NO_MIGRATION] = "no-migration",
    [API_ERR_INVALID_STATE] = "invalid-state",
    [API_ERR_UNAVAILABLE] = "unavailable",
    [API_ERR_INTERNAL] = "internal",
};

const char *api_error_code_name(enum api_error_code code)
{
    if ((int)code <= 0 || code >= API_ERR_COUNT)
        return "internal";
    return error_code_names[code];
}

enum api_error_code api_error_code_from_name(const char *name)
{
    for (int i = 1; i < API_ERR_COUNT; i++)
        if (name && strcmp(name, error_code_names[i]) == 0)
            return (enum api_error_code)i;
    return API_ERR_COUNT;
}

int api_error_set(struct api_error *error, enum api_error_code code, const char *fmt, ...)
{
    if (!error)
        return -1;
    error->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error->message, sizeof(error->message), fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- UTF-8 ------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if invalid (RFC 3629:
 * no overlongs, no surrogates, <= U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

json_t *api_json_string_lossy(const char *text, size_t max_bytes)
{
    if (!text)
        text = "";
    size_t n = strlen(text);
    bool cut = false;
    if (n > max_bytes) {
        n = max_bytes;
        cut = true;
    }
    char *copy = malloc(n + 4);
    if (!copy)
        return NULL;
    size_t out = 0;
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_sequence(s + i, n - i);
        if (len == 0) {
            copy[out++] = '?';
            i++;
        } else {
            memcpy(copy + out, s + i, len);
            out += len;
            i += len;
        }
    }
    if (cut) {
        memcpy(copy + out, "...", 3);
        out += 3;
    }
    json_t *string = json_stringn(copy, out);
    free(copy);
    return string;
}

/* ---- scanning without recursion -------------------------------------------------- */

unsigned api_json_depth(const char *text, size_t length, unsigned limit)
{
    unsigned depth = 0, deepest = 0;
    bool in_string = false, escape = false;
    for (size_t i = 0; i < length; i++) {
        char c = text[i];
        if (in_string) {
            if (escape)
                escape = false;
            else if (c == '\\')
                escape = true;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > deepest) {
                deepest = depth;
                if (deepest > limit)
                    return limit + 1;
            }
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return deepest;
}

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    return i;
}

/* s[*i] == '"': moves *i past the closing quote. false if truncated. */
static bool skip_string(const char *s, size_t n, size_t *i)
{
    for (size_t j = *i + 1; j < n; j++) {
        if (s[j] == '\\')
            j++;
        else if (s[j] == '"') {
            *i = j + 1;
            return true;
        }
    }
    return false;
}

static bool is_scalar_end(char c)
{
    return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skips any JSON value at s[*i] by bracket counting. false if truncated. */
static bool skip_value(const char *s, size_t n, size_t *i)
{
    size_t j = *i;
    if (j >= n)
        return false;
    if (s[j] == '"')
        return skip_string(s, n, i);
    if (s[j] == '{' || s[j] == '[') {
        size_t depth = 0;
        while (j < n) {
            char c = s[j];
            if (c == '"') {
                if (!skip_string(s, n, &j))
                    return false;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0) {
                    *i = j + 1;
                    return true;
                }
            }
            j++;
        }
        return false;
    }
    while (j < n && !is_scalar_end(s[j]))
        j++;
    if (j >= n || j == *i)
        return false;
    *i = j;
    return true;
}

json_t *api_id_from_prefix(const char *s, size_t n)
{
    size_t i = skip_ws(s, n, 0);
    if (i >= n || s[i] != '{')
        return NULL;
    i++;
    for (;;) {
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != '"')
            return NULL;
        size_t key = i;
        if (!skip_string(s, n, &i))
            return NULL;
        bool is_id = (i - key == 4 && memcmp(s + key, "\"id\"", 4) == 0);
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ':')
            return NULL;
        i = skip_ws(s, n, i + 1);
        size_t value = i;
        if (!skip_value(s, n, &i))
            return NULL;
        if (is_id) {
            if (s[value] != '"' && s[value] != '-' && !(s[value] >= '0' && s[value] <= '9'))
                return NULL;
            json_t *id = json_loadb(s + value, i - value, JSON_DECODE_ANY, NULL);
            if (id && (json_is_integer(id) || json_is_string(id)))
                return id;
            json_decref(id);
            return NULL;
        }
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ',')
            return NULL;
        i++;
    }
}

/* ---- requests ------------------------------------------------------------------ */

void api_request_free(struct api_request *request)
{
    if (!request)
        return;
    if (request->args_owned)
        json_decref(request->args);
    json_decref(request->root);
    memset(request, 0, sizeof(*request));
}

int api_request_parse(const char *line, size_t length, struct api_request *request,
                      json_t **id_out, struct api_error *error)
{
    memset(request, 0, sizeof(*request));
    *id_out = NULL;
    if (length > 0 && line[length - 1] == '\r')
        length--;
    if (length > API_MAX_LINE_BYTES) {
        *id_out = api_id_from_prefix(line, length);
        return api_error_set(error, API_ERR_INVALID_REQUEST,
                             "request line longer than %d bytes", API_MAX_LINE_BYTES);
    }
    if (skip_ws(line, length, 0) == length)
        return api_error_set(error, API_ERR_PARSE, "empty request");
    if (api_json_depth(line, length, API_MAX_DEPTH) > API_MAX_DEPTH) {
        *id_out = api_id_from_prefix(line, length);
        return api_error_set(error, API_ERR_PARSE, "JSON nested deeper than %d levels",
                             API_MAX_DEPTH);
    }
    json_error_t json_error;
    json_t *root = json_loadb(line, length, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &json_error);
    if (!root) {
        *id_out = api_id_from_prefix(line, length);
        return api_error_set(error, API_ERR_PARSE, "invalid JSON at byte %d: %s",
                             json_error.position, json_error.text);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return api_error_set(error, API_ERR_INVALID_REQUEST,
                             "a request must be a JSON object {\"id\":..., \"cmd\":...}");
    }
    request->root = root;

    json_t *id = json_object_get(root, "id");
    if (!id) {
        api_request_free(request);
        return api_error_set(error, API_ERR_INVALID_REQUEST, "missing id");
    }
    if (!json_is_integer(id) && !json_is_string(id)) {
        api_request_free(request);
        return api_error_set(error, API_ERR_INVALID_REQUEST, "id: expected integer or string");
    }
    request->id = id;

    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "id") != 0 && strcmp(key, "cmd") != 0 && strcmp(key, "args") != 0) {
            *id_out = json_incref(id);
            api_error_set(error, API_ERR_INVALID_REQUEST,
                          "unknown field '%.64s' (a request has id, cmd and args)", key);
            api_request_free(request);
            return -1;
        }
    }

    json_t *cmd = json_object_get(root, "cmd");
    if (!cmd || !json_is_string(cmd)) {
        *id_out = json_incref(id);
        api_error_set(error, API_ERR_INVALID_REQUEST, cmd ? "cmd: expected string" : "missing cmd");
        api_request_free(request);
        return -1;
    }
    request->cmd = json_string_value(cmd);

    json_t *args = json_object_get(root, "args");
    if (!args || json_is_null(args)) {
        request->args = json_object();
        request->args_owned = true;
        if (!request->args) {
            *id_out = json_incref(id);
            api_request_free(request);
            return api_error_set(error, API_ERR_INTERNAL, "out of memory");
        }
    } else if (!json_is_object(args)) {
        *id_out = json_incref(id);
        api_request_free(request);
        return api_error_set(error, API_ERR_INVALID_REQUEST, "args: expected object");
    } else {
        request->args = args;
    }
    return 0;
}

/* ---- arguments ------------------------------------------------------------------ */

const char *api_arg_type_name(enum api_arg_type type)
{
    switch (type) {
    case API_ARG_INT: return "integer";
    case API_ARG_UINT: return "non-negative integer";
    case API_ARG_NUMBER: return "number";
    case API_ARG_STRING: return "string";
    case API_ARG_BOOL: return "boolean";
    case API_ARG_OBJECT: return "object";
    case API_ARG_ARRAY: return "array";
    case API_ARG_ENUM: return "string";
    case API_ARG_INT_OR_STRING: return "integer or string";
    }
    return "?";
}

static void format_choices(const char *const *choices, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; choices && choices[i] && used < size; i++) {
        int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "", choices[i]);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int check_type(const json_t *value, const struct api_arg_spec *spec, struct api_error *error)
{
    bool ok = false;
    switch (spec->type) {
    case API_ARG_INT: ok = json_is_integer(value); break;
    case API_ARG_UINT:
        /* A wrong JSON type reads "expected integer" like API_ARG_INT; only a
         * real integer below zero gets the sign message. */
        if (json_is_integer(value) && json_integer_value(value) < 0)
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: must be >= 0 (got %lld)",
                                 spec->name, (long long)json_integer_value(value));
        ok = json_is_integer(value);
        break;
    case API_ARG_NUMBER: ok = json_is_number(value); break;
    case API_ARG_STRING: ok = json_is_string(value); break;
    case API_ARG_BOOL: ok = json_is_boolean(value); break;
    case API_ARG_OBJECT: ok = json_is_object(value); break;
    case API_ARG_ARRAY: ok = json_is_array(value); break;
    case API_ARG_INT_OR_STRING: ok = json_is_integer(value) || json_is_string(value); break;
    case API_ARG_ENUM:
        if (json_is_string(value)) {
            for (size_t i = 0; spec->choices && spec->choices[i]; i++)
                if (strcmp(json_string_value(value), spec->choices[i]) == 0)
                    return 0;
            char list[256];
            format_choices(spec->choices, list, sizeof(list));
            return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: expected one of %s",
                                 spec->name, list);
        }
        break;
    }
    if (ok)
        return 0;
    return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: expected %s", spec->name,
                         spec->type == API_ARG_UINT ? "integer" : api_arg_type_name(spec->type));
}

int api_args_validate(const json_t *args, const struct api_arg_spec *specs, const char *command,
                      struct api_error *error)
{
    if (!json_is_object(args))
        return api_error_set(error, API_ERR_INVALID_REQUEST, "args: expected object");
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)args, key, value) {
        const struct api_arg_spec *spec = NULL;
        for (size_t i = 0; specs && specs[i].name; i++)
            if (strcmp(specs[i].name, key) == 0)
                spec = &specs[i];
        if (!spec) {
            char list[400] = "";     /* within API_MESSAGE_MAX with the rest of the message */
            size_t used = 0;
            for (size_t i = 0; specs && specs[i].name && used < sizeof(list); i++) {
                int n = snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
                                 specs[i].name);
                if (n < 0)
                    break;
                used += (size_t)n;
            }
            if (list[0])
                return api_error_set(error, API_ERR_INVALID_ARGUMENT,
                                     "args.%.64s: unknown argument (%s takes %s)", key, command,
                                     list);
            return api_error_set(error, API_ERR_INVALID_ARGUMENT,
                                 "args.%.64s: unknown argument (%s takes no arguments)", key,
                                 command);
        }
    }
    for (size_t i = 0; specs && specs[i].name; i++) {
        json_t *v = json_object_get(args, specs[i].name);
        if (!v || json_is_null(v)) {
            if (specs[i].required)
                return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: required (%s)",
                                     specs[i].name, api_arg_type_name(specs[i].type));
            continue;
        }
        if (check_type(v, &specs[i], error) < 0)
            return -1;
    }
    return 0;
}

int api_arg_int(const json_t *args, const char *name, int64_t fallback, int64_t min, int64_t max,
                int64_t *out, struct api_error *error)
{
    json_t *v = json_object_get(args, name);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return 0;
    }
    if (!json_is_integer(v))
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: expected integer", name);
    json_int_t value = json_integer_value(v);
    if (value < min || value > max)
        return api_error_set(error, API_ERR_INVALID_ARGUMENT,
                             "args.%s: %lld is out of range %lld..%lld", name, (long long)value,
                             (long long)min, (long long)max);
    *out = value;
    return 0;
}

int api_arg_bool(const json_t *args, const char *name, bool fallback, bool *out,
                 struct api_error *error)
{
    json_t *v = json_object_get(args, name);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return 0;
    }
    if (!json_is_boolean(v))
        return api_error_set(error, API_ERR_INVALID_ARGUMENT, "args.%s: expected boolean", name);
    *out = json_is_true(v);
    return 0;
}

const char *api_arg_string(const json_t *args, const char *name, const char *fallback)
{
    json_t *v = json_object_get(args, name);
    return json_is_string(v) ? json_string_value(v) : fallback;
}

/* ---- replies -------------------------------------------------------------------- */

static char *dump_line(json_t *object, size_t *length)
{
    char *text = object ? json_dumps(object, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(object);
    if (!text)
        return NULL;
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    if (length)
        *length = n + 1;
    return line;
}

char *api_reply_ok(json_t *id, json_t *result, size_t *length)
{
    if (!result)
        result = json_object();
    json_t *reply = json_object();
    if (!reply || !result) {
        json_decref(reply);
        json_decref(result);
        return NULL;
    }
    json_object_set(reply, "id", id ? id : json_null());
    json_object_set_new(reply, "ok", json_true());
    json_object_set_new(reply, "result", result);
    return dump_line(reply, length);
}

char *api_reply_error(json_t *id, enum api_error_code code, const char *message, size_t *length)
{
    json_t *reply = json_object();
    json_t *err = json_object();
    json_t *text = api_json_string_lossy(message, API_MESSAGE_MAX);
    if (!reply || !err || !text) {
        json_decref(reply);
        json_decref(err);
        json_decref(text);
        return NULL;
    }
    json_object_set_new(err, "code", json_string(api_error_code_name(code)));
    json_object_set_new(err, "message", text);
    json_object_set(reply, "id", id ? id : json_null());
    json_object_set_new(reply, "ok", json_false());
    json_object_set_new(reply, "error", err);
    return dump_line(reply, length);
}

char *api_event_line(const char *name, uint64_t ts_ms, json_t *data, size_t *length)
{
    if (!data)
        data = json_object();
    json_t *event = json_object();
    json_t *jname = api_json_string_lossy(name, 128);
    if (!event || !data || !jname) {
        json_decref(event);
        json_decref(data);
        json_decref(jname);
        return NULL;
    }
    json_object_set_new(event, "event", jname);
    json_object_set_new(event, "ts_ms", json_integer((json_int_t)ts_ms));
    json_object_set_new(event, "data", data);
    return dump_line(event, length);
}

/* ---- framing --------------------------------------------------------------------- */

void api_linebuf_init(struct api_linebuf *buffer, size_t max_line)
{
    memset(buffer, 0, sizeof(*buffer));
    buffer->max_line = max_line;
}

void api_linebuf_free(struct api_linebuf *buffer)
{
    free(buffer->data);
    memset(buffer, 0, sizeof(*buffer));
}

size_t api_linebuf_pending(const struct api_linebuf *buffer)
{
    return buffer->length - buffer->start;
}

char *api_linebuf_space(struct api_linebuf *buffer, size_t min_free, size_t *available)
{
    size_t pending = buffer->length - buffer->start;
    if (buffer->start > 0 && buffer->capacity - buffer->length < min_free) {
        memmove(buffer->data, buffer->data + buffer->start, pending);
        buffer->start = 0;
        buffer->length = pending;
    }
    if (buffer->capacity - buffer->length < min_free) {
        size_t want = buffer->capacity ? buffer->capacity : 4096;
        while (want - buffer->length < min_free)
            want *= 2;
        char *data = realloc(buffer->data, want);
        if (!data)
            return NULL;
        buffer->data = data;
        buffer->capacity = want;
    }
    *available = buffer->capacity - buffer->length;
    return buffer->data + buffer->length;
}

void api_linebuf_commit(struct api_linebuf *buffer, size_t bytes)
{
    buffer->length += bytes;
}

int api_linebuf_append(struct api_linebuf *buffer, const void *bytes, size_t length)
{
    size_t available;
    char *space = api_linebuf_space(buffer, length, &available);
    if (!space)
        return -ENOMEM;
    memcpy(space, bytes, length);
    api_linebuf_commit(buffer, length);
    return 0;
}

enum api_line_status api_linebuf_next(struct api_linebuf *buffer, const char **line, size_t *length)
{
    size_t pending = buffer->length - buffer->start;
    if (pending == 0) {
        buffer->start = buffer->length = buffer->scanned = 0;
        return API_LINE_NONE;
    }
    const char *begin = buffer->data + buffer->start;
    const char *newline = memchr(begin + buffer->scanned, '\n', pending - buffer->scanned);
    if (!newline) {
        buffer->scanned = pending;
        if (pending <= buffer->max_line)
            return API_LINE_NONE;
        *line = begin;          /* the prefix, for api_id_from_prefix */
        *length = pending;
        return API_LINE_OVERFLOW;
    }
    size_t n = (size_t)(newline - begin);
    size_t content = (n > 0 && begin[n - 1] == '\r') ? n - 1 : n;
    *line = begin;
    *length = content;
    if (content > buffer->max_line)
        return API_LINE_OVERFLOW;   /* not consumed: the connection is closed */
    buffer->start += n + 1;
    buffer->scanned = 0;
    return API_LINE_READY;
}

size_t api_linebuf_take_rest(struct api_linebuf *buffer, const char **line)
{
    size_t n = buffer->length - buffer->start;
    *line = buffer->data + buffer->start;
    buffer->start = buffer->length;
    buffer->scanned = 0;
    return n;
}
