/* ringctl's migration commands (api/ringctl_migration.c). */
#ifndef RINGVM_API_RINGCTL_MIGRATION_H
#define RINGVM_API_RINGCTL_MIGRATION_H

#include <stdio.h>

#include <jansson.h>

struct ringctl_session;

/* argv[0] is "migrate", "progress", "cancel", "postcopy" or "recover"; runs on
 * ringctl's session (its socket, --json and --timeout). Returns ringctl's
 * exit status. */
int ringctl_migration_main(int argc, char **argv, struct ringctl_session *session);

/* The post-copy line of a migration.progress snapshot, printed to out
 * when the snapshot has a "postcopy" object (modes postcopy and hybrid),
 * else nothing: the source's pages pushed and requested, the
 * destination's faults, blocktime and fault service latency. Used by
 * migrate's summary and progress; public for the tests. */
void ringctl_print_postcopy(json_t *progress, FILE *out);

#endif
