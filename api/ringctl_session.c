/* See ringctl_session.h. */
#include "api/ringctl_session.h"

#include <stdio.h>
#include <string.h>

int ringctl_session_connect(struct ringctl_session *session)
{
    if (session->client)
        return 0;
    if (!session->socket || !*session->socket) {
        fprintf(stderr, "ringctl: no socket given: use -s PATH or set RINGVM_SOCKET\n");
        return RINGCTL_EXIT_USAGE;
    }
    char error[512];
    if (api_client_connect(&session->client, session->socket, error, sizeof(error)) < 0) {
        fprintf(stderr, "ringctl: %s\n", error);
        return RINGCTL_EXIT_CONNECT;
    }
    return 0;
}

int ringctl_session_call(struct ringctl_session *session, const char *cmd, json_t *args, json_t **result,
                         bool quiet)
{
    *result = NULL;
    int status = ringctl_session_connect(session);
    if (status) {
        json_decref(args);
        return status;
    }
    struct api_error error;
    int r = api_client_call(session->client, cmd, args, result, &error, session->timeout_ms);
    if (r == 0)
        return 0;
    if (r == 1) {
        fprintf(stderr, "ringctl: %s: %s: %s\n", cmd, api_error_code_name(error.code), error.message);
        return RINGCTL_EXIT_VMM_ERROR;
    }
    if (!quiet)
        fprintf(stderr, "ringctl: %s: %s (socket %s)\n", cmd, error.message[0] ? error.message : strerror(-r),
                session->socket);
    return RINGCTL_EXIT_CONNECT;
}

void ringctl_session_close(struct ringctl_session *session)
{
    if (session->client) {
        api_client_close(session->client);
        session->client = NULL;
    }
}
