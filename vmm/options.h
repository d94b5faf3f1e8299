/*
 * ringvm's command line. Parsing is separate from main() so it is unit
 * tested: every bad value gets a message and exit code 2.
 */
#ifndef RINGVM_VMM_OPTIONS_H
#define RINGVM_VMM_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "vmm/vm.h"

struct ringvm_options {
    struct vm_config vm;
    bool stats;                     /* --stats: one line a second */
    const char *api_socket;         /* --api-socket PATH, NULL = none */
    const char *incoming;           /* --incoming unix:PATH|tcp:HOST:PORT */
    unsigned incoming_stall_timeout_s;  /* --incoming-stall-timeout S: the destination gives up after
                                           S seconds without a byte from the source (default 5) */
    const char *tls_psk;            /* --tls-psk FILE (keys.psk), NULL = none */
    const char *tls_creds;          /* --tls-creds DIR (x509), NULL = none */
    bool bpf;                       /* --bpf */
    unsigned postcopy_fifo_priority;    /* --postcopy-fifo N: SCHED_FIFO priority of the post-copy fault
                                           service threads, 0 = not given (fair class) */
    unsigned postcopy_queue_budget_us;  /* --postcopy-queue-budget US (migration/stream_window.h), 0 = off */
    const char *console_socket;     /* --console unix:PATH (the PATH), NULL = none */
    unsigned demo_seconds;          /* --run-seconds N: shut down after N s (0 = run until signalled) */
};

enum options_result {
    OPTIONS_OK = 0,
    OPTIONS_EXIT = 1,               /* --help / --version printed: exit 0 */
    OPTIONS_ERROR = 2,              /* message in error: exit 2 */
};

enum options_result options_parse(int argc, char **argv, struct ringvm_options *options,
                                  char *error, size_t error_size);
void options_print_usage(FILE *out);

#endif
