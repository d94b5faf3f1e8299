/*
 * ringctl's migration commands run in the test process
 * (ringctl_migration_main, api/ringctl_migration.h), each on its own
 * session (connection) to socket_path, as one `ringctl -s PATH ARGV...`
 * would: shared by tests/test_migration.c, test_ringctl_postcopy.c and
 * test_ringctl_recover.c. Test thread only (stdout is process-wide).
 */
#ifndef RINGVM_TESTS_RINGCTL_IN_PROCESS_H
#define RINGVM_TESTS_RINGCTL_IN_PROCESS_H

#include <stdbool.h>

/* Returns ringctl's exit status. With out non-NULL, what it printed on
 * stdout goes there instead (stdout points at a memfd for the call;
 * caller frees *out). json: ringctl's --json. */
int ringctl_in_process(int argc, char **argv, const char *socket_path, bool json, char **out);

#endif
