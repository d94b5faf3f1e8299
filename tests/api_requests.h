/*
 * API requests in the test process: one request line through the real
 * command table (api_handle_line on api_command_groups, a fresh session
 * each time), as the API socket's epoll thread would run it. Shared by the
 * tests that check commands' arguments, errors and results without a
 * socket (tests/test_api_*.c). Each asserts on what it expects; vm may be
 * NULL (commands then answer as a VMM without a VM would).
 */
#ifndef RINGVM_TESTS_API_REQUESTS_H
#define RINGVM_TESTS_API_REQUESTS_H

#include <jansson.h>

#include "vmm/vm.h"

/* The parsed reply to `line` (new reference). */
json_t *api_request(struct vm *vm, const char *line);

/* `line` is answered ok:false with exactly this code and message. */
void api_expect_error(struct vm *vm, const char *line, const char *code, const char *message);

/* `line` is answered ok:true; its result (new reference). */
json_t *api_expect_ok(struct vm *vm, const char *line);

#endif
