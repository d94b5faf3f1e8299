/*
 * API client; see client.h. Ownership: a struct api_client belongs to the
 * thread using it.
 */
#include "api/client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vmm/unix_socket.h"

struct api_client {
    int fd;
    int64_t next_id;
    struct api_linebuf in;
    json_t *events;         /* array: events read while waiting for a reply */
    bool eof;
};

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int api_client_connect(struct api_client **out, const char *path, char *error, size_t error_size)
{
    *out = NULL;
    if (!path || !*path) {
        snprintf(error, error_size, "no socket given (use -s PATH or set RINGVM_SOCKET)");
        return -EINVAL;
    }
    char reason[512];
    int fd = unix_socket_connect(path, 0, reason, sizeof(reason));
    if (fd < 0) {
        const char *hint = "";
        if (fd == -ENOENT || fd == -ECONNREFUSED)
            hint = " (is ringvm running with --api-socket on this path?)";
        else if (fd == -EACCES)
            hint = " (the socket is mode 0600: connect as ringvm's user or root)";
        snprintf(error, error_size, "%s%s", reason, hint);
        return fd;
    }
    struct api_client *client = calloc(1, sizeof(*client));
    json_t *events = json_array();
    if (!client || !events) {
        free(client);
        json_decref(events);
        close(fd);
        snprintf(error, error_size, "out of memory");
        return -ENOMEM;
    }
    client->fd = fd;
    client->next_id = 1;
    client->events = events;
    /* Replies can be large (api.commands, digests): no line limit beyond
     * 64 MiB here. */
    api_linebuf_init(&client->in, 64u << 20);
    *out = client;
    return 0;
}

void api_client_close(struct api_client *client)
{
    if (!client)
        return;
    close(client->fd);
    api_linebuf_free(&client->in);
    json_decref(client->events);
    free(client);
}

int api_client_fd(const struct api_client *client)
{
    return client->fd;
}

int api_client_send_raw(struct api_client *client, const char *bytes, size_t length)
{
    while (length > 0) {
        ssize_t n = send(client->fd, bytes, length, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        bytes += n;
        length -= (size_t)n;
    }
    return 0;
}

int api_client_send(struct api_client *client, const char *cmd, json_t *args, int64_t *id_out)
{
    int64_t id = client->next_id++;
    json_t *request = json_object();
    if (!request) {
        json_decref(args);
        return -ENOMEM;
    }
    json_object_set_new(request, "id", json_integer(id));
    json_object_set_new(request, "cmd", json_string(cmd));
    if (args)
        json_object_set_new(request, "args", args);
    char *text = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return -ENOMEM;
    }
    line[n] = '\n';
    int result = api_client_send_raw(client, line, n + 1);
    free(line);
    if (result == 0 && id_out)
        *id_out = id;
    return result;
}

int api_client_read(struct api_client *client, json_t **message, int timeout_ms)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : monotonic_ms() + (uint64_t)timeout_ms;
    *message = NULL;
    for (;;) {
        const char *line;
        size_t length;
        enum api_line_status status = api_linebuf_next(&client->in, &line, &length);
        if (status == API_LINE_OVERFLOW)
            return -EPROTO;
        if (status == API_LINE_READY) {
            if (length == 0)
                continue;
            json_t *object = json_loadb(line, length, 0, NULL);
            if (!json_is_object(object)) {
                json_decref(object);
                return -EPROTO;
            }
            *message = object;
            return 0;
        }
        if (client->eof)
            return -EPIPE;
        int wait = -1;
        if (timeout_ms >= 0) {
            uint64_t now = monotonic_ms();
            if (now >= deadline)
                return -ETIMEDOUT;
            wait = (int)(deadline - now);
        }
        struct pollfd pfd = {.fd = client->fd, .events = POLLIN};
        int ready = poll(&pfd, 1, wait);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (ready == 0)
            return -ETIMEDOUT;
        size_t available;
        char *space = api_linebuf_space(&client->in, 65536, &available);
        if (!space)
            return -ENOMEM;
        ssize_t n = recv(client->fd, space, available, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (errno == ECONNRESET) {
                client->eof = true;
                continue;
            }
            return -errno;
        }
        if (n == 0)
            client->eof = true;
        else
            api_linebuf_commit(&client->in, (size_t)n);
    }
}

static int remaining_ms(uint64_t deadline, int timeout_ms)
{
    if (timeout_ms < 0)
        return -1;
    uint64_t now = monotonic_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

int api_client_reply_outcome(json_t *reply, json_t **result, struct api_error *error)
{
    if (json_is_true(json_object_get(reply, "ok"))) {
        json_t *r = json_object_get(reply, "result");
        *result = r ? json_incref(r) : json_object();
        return 0;
    }
    json_t *err = json_object_get(reply, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *message = json_string_value(json_object_get(err, "message"));
    enum api_error_code c = api_error_code_from_name(code);
    error->code = c == API_ERR_COUNT ? API_ERR_INTERNAL : c;
    snprintf(error->message, sizeof(error->message), "%s", message ? message : "(no message)");
    return 1;
}

static int wait_reply(struct api_client *client, json_t *want_id, json_t **reply, int timeout_ms)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        json_t *message;
        int result = api_client_read(client, &message, remaining_ms(deadline, timeout_ms));
        if (result < 0)
            return result;
        if (json_object_get(message, "event")) {
            json_array_append_new(client->events, message);
            continue;
        }
        json_t *id = json_object_get(message, "id");
        if (!want_id || json_equal(id, want_id) || json_is_null(id)) {
            *reply = message;
            return 0;
        }
        json_decref(message);   /* a stale reply: not ours */
    }
}

int api_client_call(struct api_client *client, const char *cmd, json_t *args, json_t **result,
                    struct api_error *error, int timeout_ms)
{
    *result = NULL;
    int64_t id;
    int r = api_client_send(client, cmd, args, &id);
    if (r < 0) {
        snprintf(error->message, sizeof(error->message), "sending %s: %s", cmd, strerror(-r));
        error->code = API_ERR_UNAVAILABLE;
        return r;
    }
    json_t *want = json_integer(id);
    json_t *reply = NULL;
    r = wait_reply(client, want, &reply, timeout_ms);
    json_decref(want);
    if (r < 0) {
        error->code = API_ERR_UNAVAILABLE;
        if (r == -EPIPE)
            snprintf(error->message, sizeof(error->message),
                     "%s: the connection was closed before the reply", cmd);
        else if (r == -ETIMEDOUT)
            snprintf(error->message, sizeof(error->message), "%s: no reply within %d ms", cmd,
                     timeout_ms);
        else
            snprintf(error->message, sizeof(error->message), "%s: %s", cmd, strerror(-r));
        return r;
    }
    r = api_client_reply_outcome(reply, result, error);
    json_decref(reply);
    return r;
}

int api_client_call_raw(struct api_client *client, const char *text, json_t **reply, int timeout_ms)
{
    *reply = NULL;
    json_t *request = json_loads(text, JSON_DECODE_ANY, NULL);
    json_t *want = NULL;
    int r;
    if (json_is_object(request)) {
        if (!json_object_get(request, "id"))
            json_object_set_new(request, "id", json_integer(client->next_id++));
        want = json_incref(json_object_get(request, "id"));
        char *line = json_dumps(request, JSON_COMPACT);
        if (!line) {
            json_decref(request);
            json_decref(want);
            return -ENOMEM;
        }
        r = api_client_send_raw(client, line, strlen(line));
        if (r == 0)
            r = api_client_send_raw(client, "\n", 1);
        free(line);
    } else {
        r = api_client_send_raw(client, text, strlen(text));
        if (r == 0)
            r = api_client_send_raw(client, "\n", 1);
    }
    json_decref(request);
    if (r == 0)
        r = wait_reply(client, want, reply, timeout_ms);
    json_decref(want);
    return r;
}

int api_client_next_event(struct api_client *client, json_t **event, int timeout_ms)
{
    *event = NULL;
    if (json_array_size(client->events) > 0) {
        *event = json_incref(json_array_get(client->events, 0));
        json_array_remove(client->events, 0);
        return 0;
    }
    uint64_t deadline = timeout_ms < 0 ? 0 : monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        json_t *message;
        int r = api_client_read(client, &message, remaining_ms(deadline, timeout_ms));
        if (r < 0)
            return r;
        if (json_object_get(message, "event")) {
            *event = message;
            return 0;
        }
        json_decref(message);
    }
}
