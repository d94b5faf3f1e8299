/* ringctl's migration commands (api/ringctl_migration.c). */
#ifndef RINGVM_API_RINGCTL_MIGRATION_H
#define RINGVM_API_RINGCTL_MIGRATION_H

#include <stdbool.h>

/* argv[0] is "migrate", "progress" or "cancel". Returns ringctl's exit status. */
int ringctl_migration_main(int argc, char **argv, const char *socket_path, bool json);

#endif
