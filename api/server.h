/*
 * The API server: a Unix socket, an epoll thread ("api") that owns every
 * connection, and a worker thread ("api-worker") for commands that can take
 * long (see api/dispatch.h). The epoll thread never blocks on VM work.
 *
 * Use from ringvm's main():
 *     vm_create(&vm, ...);
 *     api_server_create(&server, vm, path);    before vm_start: registers
 *                                              the VM state listener
 *     vm_start(vm);
 *     ... vm_wait(vm);
 *     api_server_destroy(server);              before vm_destroy
 *     vm_destroy(vm);
 */
#ifndef RINGVM_API_SERVER_H
#define RINGVM_API_SERVER_H

#include <jansson.h>
#include <stddef.h>

#include "api/dispatch.h"

#define API_MAX_CLIENTS 32

struct vm;
struct api_server;

/*
 * Creates the socket (mode 0600) and starts the threads. A stale socket file
 * (nothing answering) is replaced; a live server on the path is an error.
 * vm may be NULL (VM commands then answer unavailable). If the VM has not
 * been started yet, VM state changes are published as "vm.state" events.
 * Returns 0 or -errno; the cause is printed to stderr with the "ringvm: "
 * prefix, e.g. "ringvm: --api-socket /x: another ringvm is listening there".
 */
int api_server_create(struct api_server **out, struct vm *vm, const char *socket_path);

/* The same with another command table (tests). */
int api_server_create_with(struct api_server **out, struct vm *vm, const char *socket_path,
                           const struct api_command_group *const *groups);

/* Stops accepting, lets the worker finish its current command, flushes
 * replies and events already produced (up to 500 ms), closes every
 * connection, joins the threads and unlinks the socket. NULL is a no-op. */
void api_server_destroy(struct api_server *server);

/*
 * Sends {"event": name, "ts_ms": now, "data": data} to every subscribed
 * connection. Thread-safe, any thread, never blocks on I/O (the line is
 * queued and written by the epoll thread). data is stolen (NULL = {}).
 * NULL server: data is released, nothing happens.
 */
void api_server_publish_event(struct api_server *server, const char *name, json_t *data);

/* Connected clients right now (for tests and vm.info-like reporting). */
unsigned api_server_client_count(struct api_server *server);

#endif
