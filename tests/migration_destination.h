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
    char address[160];      /* unix:PATH or tcp:127.0.0.1:PORT, for mig_params.dest */
    int result;             /* migration_incoming_run_fd's return value */
    bool running;
};

/* Asserts on any failure. The VM starts paused, awaiting the migration. */
void test_destination_start(struct test_destination *d, const char *memory, unsigned vcpus, const char *workload,
                            bool tcp);
/* Waits for the incoming migration to end; returns its result. */
int test_destination_join(struct test_destination *d);
/* Stops a destination still waiting, joins, and destroys its VM. */
void test_destination_stop(struct test_destination *d);

#endif
