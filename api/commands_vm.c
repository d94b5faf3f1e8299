/*
 * vm.info, vm.pause, vm.resume, vm.shutdown, vm.guest-stats.
 *
 * Threads: vm.info and vm.guest-stats run on the epoll thread and only do
 * atomic loads; vm.pause / vm.resume / vm.shutdown run on the worker
 * (vm_pause can take up to 1 s).
 */
#include <inttypes.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "api/commands.h"
#include "migration/postcopy_priority.h"
#include "migration/stream_window.h"
#include "vmm/linux_guest.h"
#include "vmm/vm.h"

/* The state as the API names it; "shutdown" as soon as a shutdown has been
 * requested (the core flips its state only once the vCPUs are joined). */
static enum vm_state api_vm_state(struct vm *vm)
{
    if (atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire))
        return VM_STATE_SHUTDOWN;
    return vm_get_state(vm);
}

#define REQUIRE_VM(call)                                                             \
    do {                                                                             \
        if (!(call)->vm)                                                             \
            return api_call_fail((call), API_ERR_UNAVAILABLE, "no VM in this process"); \
    } while (0)

/* A path need not be UTF-8; JSON strings must be. */
static json_t *path_string(const char *path)
{
    if (path == NULL)
        return json_null();
    json_t *string = json_string(path);
    return string != NULL ? string : json_string("(not valid UTF-8)");
}

/* guest: "builtin" or "linux"; a Linux guest adds its kernel, initrd,
 * command line and boot protocol. */
static int add_guest_fields(json_t *result, struct vm *vm)
{
    /* guest_kind itself is not read here: an incoming VM's changes on the
     * migration thread. The kernel files are fixed at creation, and a guest
     * that arrived by migration is published with awaiting_migration. */
    const struct linux_guest *guest = vm->config.linux_guest.loaded;
    if (guest == NULL && vm_linux_cmdline(vm) != NULL)
        return json_object_set_new(result, "guest", json_string("linux")) |
               json_object_set_new(result, "kernel", json_null()) |
               json_object_set_new(result, "initrd", json_null()) |
               json_object_set_new(result, "cmdline", json_string(vm_linux_cmdline(vm))) |
               json_object_set_new(result, "boot_protocol", json_string(vm_linux_boot_protocol(vm)));
    if (guest == NULL)
        return json_object_set_new(result, "guest", json_string("builtin"));
    return json_object_set_new(result, "guest", json_string("linux")) |
           json_object_set_new(result, "kernel", path_string(linux_guest_kernel_path(guest))) |
           json_object_set_new(result, "initrd", path_string(linux_guest_initrd_path(guest))) |
           json_object_set_new(result, "cmdline", json_string(linux_guest_cmdline(guest))) |
           json_object_set_new(result, "boot_protocol", json_string(linux_guest_boot_protocol(guest)));
}

static enum api_status cmd_vm_info(struct api_call *call)
{
    REQUIRE_VM(call);
    struct vm *vm = call->vm;
    char workload[256];
    /* An incoming VM learns its workload from the migration stream. */
    if (atomic_load_explicit(&vm->awaiting_migration, memory_order_acquire))
        snprintf(workload, sizeof(workload), "(incoming migration)");
    else if (vm->config.linux_guest.loaded != NULL)
        snprintf(workload, sizeof(workload), "%s",
                 linux_guest_workload(vm->config.linux_guest.loaded) != NULL
                     ? linux_guest_workload(vm->config.linux_guest.loaded) : "(none: no ringvm.workload=)");
    else
        workload_spec_format(&vm->config.workload, workload, sizeof(workload));
    char thp_host[32];
    guest_memory_thp_policy(&vm->memory, thp_host, sizeof(thp_host));
    json_t *result = json_pack(
        "{s:s, s:i, s:I, s:s, s:s, s:I, s:I, s:s, s:o, s:b, s:b, s:s, s:i, s:i, s:i, s:b, s:I}",
        "state", vm_state_name(api_vm_state(vm)),
        "vcpus", (int)vm->config.vcpu_count,
        "memory_bytes", (json_int_t)vm->memory.size,
        "workload", workload,
        "dirty_log", dirty_log_mode_name(vm->config.dirty_log.mode),
        "uptime_ms", (json_int_t)vm_uptime_ms(vm),
        "pid", (json_int_t)getpid(),
        "ram", guest_memory_anonymous(&vm->memory) ? "anonymous" : "memfd",
        "ram_file", guest_memory_anonymous(&vm->memory) ? json_null()
                                                         : json_string(ram_file_kind_name(vm->memory.file_kind)),
        "hugepages", vm->memory.hugepages,
        "thp", !vm->memory.hugepages && !vm->config.memory_options.no_thp,
        "thp_host", thp_host,
        "numa_node", vm->memory.numa_node,
        "postcopy_fifo_priority", (int)postcopy_priority_get(),
        "postcopy_queue_budget_us", (int)stream_window_budget_us(),
        "page_clearing_offered", vm->page_clearing_offered,
        "cleared_pages", (json_int_t)atomic_load_explicit(&vm->cleared_pages, memory_order_relaxed));
    if (!result)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    if (add_guest_fields(result, vm) != 0) {
        json_decref(result);
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    }
    return api_call_ok(call, result);
}

static enum api_status state_error(struct api_call *call, enum vm_state state, const char *verb)
{
    switch (state) {
    case VM_STATE_PAUSED:
        return api_call_fail(call, API_ERR_VM_PAUSED, "cannot %s: the VM is paused (vm.resume)", verb);
    case VM_STATE_RUNNING:
        return api_call_fail(call, API_ERR_VM_RUNNING, "cannot %s: the VM is running", verb);
    default:
        return api_call_fail(call, API_ERR_VM_NOT_RUNNING, "cannot %s: the VM is %s", verb,
                             vm_state_name(state));
    }
}

static enum api_status cmd_vm_pause(struct api_call *call)
{
    REQUIRE_VM(call);
    struct vm *vm = call->vm;
    enum vm_state state = api_vm_state(vm);
    if (state != VM_STATE_RUNNING)
        return state_error(call, state, "pause");
    uint64_t started = vm_now_ns();
    int result = vm_pause(vm);
    if (result == -EINVAL)
        return state_error(call, api_vm_state(vm), "pause");
    if (result == -ETIMEDOUT)
        return api_call_fail(call, API_ERR_INTERNAL, "the vCPUs did not stop within %" PRIu64
                             " ms; the VM keeps running", vm->pause_give_up_ns / 1000000u);
    if (result < 0)
        return api_call_fail(call, API_ERR_INTERNAL, "vm_pause: %s", strerror(-result));
    uint64_t latency = atomic_load_explicit(&vm->pause_latency_last_ns, memory_order_relaxed);
    return api_call_ok(call, json_pack("{s:s, s:f, s:f}", "state", "paused",
                                       "duration_ms", (double)(vm_now_ns() - started) / 1e6,
                                       "pause_latency_ms", (double)latency / 1e6));
}

static enum api_status cmd_vm_resume(struct api_call *call)
{
    REQUIRE_VM(call);
    struct vm *vm = call->vm;
    enum vm_state state = api_vm_state(vm);
    if (state != VM_STATE_PAUSED) {
        if (state == VM_STATE_RUNNING)
            return api_call_fail(call, API_ERR_VM_RUNNING, "the VM is already running");
        return state_error(call, state, "resume");
    }
    int result = vm_resume(vm);
    if (result == -EINVAL) {
        state = api_vm_state(vm);
        if (state == VM_STATE_RUNNING)
            return api_call_fail(call, API_ERR_VM_RUNNING, "the VM is already running");
        return state_error(call, state, "resume");
    }
    if (result == -EBUSY)
        return api_call_fail(call, API_ERR_MIGRATION_ACTIVE,
                             "cannot resume: this VM is waiting for an incoming migration (no guest state yet)");
    if (result < 0)
        return api_call_fail(call, API_ERR_INTERNAL, "vm_resume: %s", strerror(-result));
    return api_call_ok(call, json_pack("{s:s}", "state", "running"));
}

static enum api_status cmd_vm_shutdown(struct api_call *call)
{
    REQUIRE_VM(call);
    int64_t exit_code;
    struct api_error error;
    if (api_arg_int(call->args, "exit_code", 0, 0, 255, &exit_code, &error) < 0)
        return api_call_fail(call, error.code, "%s", error.message);
    if (atomic_load_explicit(&call->vm->shutdown_requested, memory_order_acquire))
        return api_call_ok(call, json_pack("{s:s, s:b}", "state", "shutdown", "already", 1));
    vm_request_shutdown(call->vm, (int)exit_code);
    return api_call_ok(call, json_pack("{s:s, s:b}", "state", "shutdown", "already", 0));
}

static const char *phase_name(uint64_t phase)
{
    switch (phase) {
    case RINGVM_PHASE_BOOTING: return "booting";
    case RINGVM_PHASE_RING3: return "running";
    case RINGVM_PHASE_DONE: return "done";
    }
    return "unknown";
}

static enum api_status cmd_vm_guest_stats(struct api_call *call)
{
    REQUIRE_VM(call);
    struct vm *vm = call->vm;
    json_t *vcpus = json_array();
    uint64_t total_pages = 0;
    for (unsigned i = 0; vcpus && i < vm->config.vcpu_count; i++) {
        struct ringvm_vcpu_stats s;
        vm_read_guest_stats(vm, i, &s);
        total_pages += s.pages_written;
        json_t *entry = json_pack(
            "{s:i, s:I, s:I, s:s, s:I, s:I, s:I, s:I, s:I}",
            "vcpu", (int)i,
            "pages_written", (json_int_t)s.pages_written,
            "passes", (json_int_t)s.passes,
            "phase", phase_name(s.phase),
            "ledger_generation", (json_int_t)s.ledger_generation,
            "ledger_verify_ok", (json_int_t)s.ledger_verify_ok,
            "ledger_mismatches", (json_int_t)s.ledger_mismatches,
            "ledger_last_mismatch_page", (json_int_t)s.ledger_last_mismatch_page,
            "tsc_last_update", (json_int_t)s.tsc_last_update);
        if (entry)
            json_array_append_new(vcpus, entry);
    }
    if (!vcpus)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    return api_call_ok(call, json_pack("{s:s, s:s, s:I, s:I, s:o}",
                                       "state", vm_state_name(api_vm_state(vm)),
                                       "workload", workload_kind_name(vm->config.workload.kind),
                                       "uptime_ms", (json_int_t)vm_uptime_ms(vm),
                                       "pages_written", (json_int_t)total_pages,
                                       "vcpus", vcpus));
}

static const struct api_arg_spec shutdown_args[] = {
    {"exit_code", API_ARG_UINT, false, NULL, "exit status of ringvm, 0..255 (default 0)"},
    {NULL, 0, false, NULL, NULL},
};

static const struct api_command commands[] = {
    {"vm.info", cmd_vm_info, 0, NULL, "state, vCPUs, memory, workload, dirty-log mode, uptime"},
    {"vm.pause", cmd_vm_pause, API_CMD_WORKER, NULL, "stop every vCPU (answers once all parked)"},
    {"vm.resume", cmd_vm_resume, API_CMD_WORKER, NULL, "let the vCPUs run again"},
    {"vm.shutdown", cmd_vm_shutdown, API_CMD_WORKER, shutdown_args,
     "stop the VM; ringvm then exits"},
    {"vm.guest-stats", cmd_vm_guest_stats, 0, NULL, "the guest workload's counters per vCPU"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_vm = {commands};
