/*
 * A migration destination VM in the test process: an incoming VM (its own
 * KVM VM, RAM and vCPU threads) listening on a unix socket or on a
 * kernel-picked localhost TCP port, with migration_incoming_run_fd running
 * in a thread. Shared by the tests that migrate between two VMs of one
 * process (tests/test_migration.c, tests/test_api_dirty_tracking.c).
 *
 * Ownership: the test thread owns the struct; the destination thread
 * writes only result, which the test reads after test_destination_join.
 */
#ifndef RINGVM_TESTS_MIGRATION_DESTINATION_H
#define RINGVM_TESTS_MIGRATION_DESTINATION_H

#include <pthread.h>
#include <stdbool.h>

#include "tests/harness.h"

struct test_destination {
    struct harness_vm harness;
    pthread_t thread;
    int listen_fd;
    char address[160];      /* unix:PATH, tcp:127.0.0.1:PORT or local:PATH, for mig_params.dest */
    int result;             /* migration_incoming_run_fd's return value */
    bool running;
};

/* Asserts on any failure. The VM starts paused, awaiting the migration. */
void test_destination_start(struct test_destination *d, const char *memory, unsigned vcpus, const char *workload,
                            bool tcp);
/* The same with --incoming-stall-timeout stall_ms. */
void test_destination_start_stall(struct test_destination *d, const char *memory, unsigned vcpus,
                                  const char *workload, bool tcp, unsigned stall_ms);
/* The same as the destination of a local hand-over: listens on
 * local:PATH (address holds "local:PATH"); the source's RAM replaces the
 * VM's own when it arrives (migration/local_handover.h). */
void test_destination_start_local(struct test_destination *d, const char *memory, unsigned vcpus,
                                  const char *workload);
/* A TCP destination with TLS (migration_set_incoming_tls): tls_psk a
 * keys.psk path or tls_creds an x509 directory (one of them). */
void test_destination_start_tls(struct test_destination *d, const char *memory, unsigned vcpus, const char *workload,
                                const char *tls_psk, const char *tls_creds);
/* The same with --incoming-stall-timeout stall_ms (post-copy recovery tests). */
void test_destination_start_tls_stall(struct test_destination *d, const char *memory, unsigned vcpus,
                                      const char *workload, const char *tls_psk, const char *tls_creds,
                                      unsigned stall_ms);
/* A listening socket on a kernel-picked 127.0.0.1 port: returns its fd and
 * writes "tcp:127.0.0.1:PORT" to address. Asserts on failure. */
int test_listen_localhost_tcp(char *address, size_t size);
/* Waits for the incoming migration to end; returns its result. */
int test_destination_join(struct test_destination *d);
/* Stops a destination still waiting, joins, and destroys its VM. */
void test_destination_stop(struct test_destination *d);

/* The source side, shared by the migration tests. */
struct api_server;
struct mig_params;
struct mig_progress;
/* migration_start on vm, asserting it was accepted; the migration's id. */
uint64_t test_migration_start(struct vm *vm, const struct mig_params *params);
/* The same with the VM's API server, which publishes the migration's events. */
uint64_t test_migration_start_on(struct vm *vm, struct api_server *server, const struct mig_params *params);
/* Waits for vm's migration to end and copies its final progress into *p. */
void test_migration_finished(struct vm *vm, struct mig_progress *p, unsigned timeout_ms);
/* Releases the source's migration and stops its VM. */
void test_migration_source_stop(struct harness_vm *source);
/* Waits until vm's migration is active and has sent at least min_bytes. */
bool test_migration_wait_transferred(struct vm *vm, uint64_t min_bytes, unsigned timeout_ms);

#endif
