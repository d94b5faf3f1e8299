/*
 * Client side of the API: connect, send requests, read replies and events.
 * Shared by ringctl, the tests and the benchmarks. Blocking I/O with
 * timeouts; one struct api_client per connection, used by one thread.
 */
#ifndef RINGVM_API_CLIENT_H
#define RINGVM_API_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "api/protocol.h"

struct api_client;

/* Connects to path. Returns 0 or -errno with a sentence in error, e.g.
 * "connect(unix:/run/x.sock): No such file or directory (is ringvm running
 * with --api-socket on this path?)". */
int api_client_connect(struct api_client **out, const char *path, char *error, size_t error_size);
void api_client_close(struct api_client *client);
int api_client_fd(const struct api_client *client);

/* Sends bytes as they are (a line must end in '\n'). 0 or -errno. */
int api_client_send_raw(struct api_client *client, const char *bytes, size_t length);

/* Sends {"id": <next integer>, "cmd": cmd, "args": args} (args stolen,
 * NULL = none). *id_out = the id used. 0 or -errno. */
int api_client_send(struct api_client *client, const char *cmd, json_t *args, int64_t *id_out);

/* Next message (reply or event), waiting up to timeout_ms (-1 = forever).
 * 0 with *message set (caller decrefs), -ETIMEDOUT, -EPIPE (connection
 * closed), -EPROTO (a line that is not a JSON object), other -errno. */
int api_client_read(struct api_client *client, json_t **message, int timeout_ms);

/*
 * Sends a request and waits for its reply; events arriving meanwhile are
 * queued for api_client_next_event. Returns:
 *    0   ok: *result = the result object (caller decrefs)
 *    1   the VMM answered an error: *error filled
 *   <0   -errno: transport failure or timeout (error->message says what)
 */
int api_client_call(struct api_client *client, const char *cmd, json_t *args, json_t **result,
                    struct api_error *error, int timeout_ms);

/* Same for a request given as text (ringctl raw): an object without "id"
 * gets one; anything else is sent as is and the first reply is taken.
 * *reply = the whole reply object. 0 or -errno. */
int api_client_call_raw(struct api_client *client, const char *text, json_t **reply,
                        int timeout_ms);

/* Next event: a queued one or one read from the socket. Same returns as
 * api_client_read. Replies read meanwhile are dropped. */
int api_client_next_event(struct api_client *client, json_t **event, int timeout_ms);

/* Splits a reply into result or error like api_client_call (0 / 1). */
int api_client_reply_outcome(json_t *reply, json_t **result, struct api_error *error);

#endif
