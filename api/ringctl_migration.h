/* ringctl's migration commands (api/ringctl_migration.c). */
#ifndef RINGVM_API_RINGCTL_MIGRATION_H
#define RINGVM_API_RINGCTL_MIGRATION_H

struct ringctl_session;

/* argv[0] is "migrate", "progress" or "cancel"; runs on ringctl's session
 * (its socket, --json and --timeout). Returns ringctl's exit status. */
int ringctl_migration_main(int argc, char **argv, struct ringctl_session *session);

#endif
