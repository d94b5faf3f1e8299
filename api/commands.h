/*
 * The command groups of the ringvm API. Each api/commands_*.c file defines
 * one group (a {NULL}-terminated table); api/commands.c lists them.
 */
#ifndef RINGVM_API_COMMANDS_H
#define RINGVM_API_COMMANDS_H

#include "api/dispatch.h"

extern const struct api_command_group api_commands_api;         /* api.*, events.* */
extern const struct api_command_group api_commands_vm;          /* vm.* */
extern const struct api_command_group api_commands_digest;      /* vm.memory-digest */
extern const struct api_command_group api_commands_dirty_stats; /* vm.dirty-stats */
extern const struct api_command_group api_commands_migration;   /* migration.* */
extern const struct api_command_group api_commands_bpf;         /* bpf.* */

/* migration.start's arguments (already checked against its argument
 * table) as the parameters of migration_start, defaults filled in: every
 * value and combination that can be judged without a VM (mode and
 * postcopy_after included). 0, or -1 with error set (invalid-argument, the
 * message naming the field). The handler's first step; the tests call it
 * too. */
struct mig_params;
int api_migration_start_params(const json_t *args, struct mig_params *params, struct api_error *error);

/* Event names published by the API itself. */
#define API_EVENT_VM_STATE "vm.state"

#endif
