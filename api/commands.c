/*
 * Every command group the server dispatches to. A subsystem that adds a
 * group (e.g. migration: api/commands_migration.c) adds its extern to api/commands.h and one line here.
 */
#include "api/commands.h"

const struct api_command_group *const api_command_groups[] = {
    &api_commands_api,
    &api_commands_vm,
    &api_commands_digest,
    &api_commands_dirty_stats,
    &api_commands_migration,
    &api_commands_bpf,
    NULL,
};
