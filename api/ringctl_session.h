/*
 * One ringctl invocation's connection to a ringvm API socket, shared by
 * every ringctl command module (ringctl.c, ringctl_migration.c). Opened on
 * the first call; the global options (-s, --json, --timeout) live here so
 * every command honours them. Single-threaded: owned by ringctl's main.
 */
#ifndef RINGVM_API_RINGCTL_SESSION_H
#define RINGVM_API_RINGCTL_SESSION_H

#include <jansson.h>
#include <stdbool.h>

#include "api/client.h"

/* ringctl's exit statuses (ringctl.1, `ringctl --help`). */
#define RINGCTL_EXIT_VMM_ERROR 1    /* the VMM answered an error */
#define RINGCTL_EXIT_USAGE 2
#define RINGCTL_EXIT_CONNECT 3      /* cannot connect, or the connection was lost */

struct ringctl_session {
    const char *socket;             /* -s PATH or $RINGVM_SOCKET */
    bool json;                      /* --json: print raw JSON results */
    int timeout_ms;                 /* --timeout: per reply */
    struct api_client *client;      /* NULL until the first call */
};

/* 0, or an exit status after printing why (no socket given, connect failed). */
int ringctl_session_connect(struct ringctl_session *session);

/* Sends cmd (takes args) and waits for the reply: 0 with *result (the
 * caller's reference), or an exit status after printing the error. quiet:
 * transport errors return RINGCTL_EXIT_CONNECT without a message (a watcher
 * that falls back to events). */
int ringctl_session_call(struct ringctl_session *session, const char *cmd, json_t *args, json_t **result,
                         bool quiet);

void ringctl_session_close(struct ringctl_session *session);

#endif
