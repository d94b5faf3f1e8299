/*
 * A Linux guest under ringvm on KVM (issue 13): the project's guest image
 * (make linux-guest) booted with 1 and 2 vCPUs, the ledger in user space,
 * console input through `ringctl console`, reboot and poweroff, and dirty
 * tracking on a guest whose kernel writes from (emulated) ring 0.
 *
 * Every test needs /dev/kvm and the image; without either it skips with the
 * reason. Run on SVM KVM (make test-nested) and on PVM hosts, where every
 * boot costs 25-45 s of emulated ring 0: tests that need the same kind of
 * guest share one boot (docs/testing.md, "Time budget").
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "tests/harness.h"
#include "tests/netns/hosts.h"
#include "vmm/host.h"
#include "vmm/monotonic.h"

/* /init at ~23-73 s on PVM hosts (vmlinux, 256 MiB), more beside other tests:
 * harness_linux_timeout_ms() triples these there. */
#define BOOT_TIMEOUT_MS harness_linux_timeout_ms(120000)
/* Every first touch of a page is a guest page fault, which a PVM host runs
 * in its instruction emulator (~2 ms each): hence 8 MiB working sets here,
 * and time for the first verify passes after that. */
#define LEDGER_TIMEOUT_MS harness_linux_timeout_ms(120000)
#define CALL_TIMEOUT_MS 10000

struct linux_vm {
    char directory[64];
    char api_path[128];
    char console_path[128];
    struct harness_process process;
    struct api_client *client;
};

static bool try_connect(void *argument)
{
    struct linux_vm *vm = argument;
    char error[256];
    return api_client_connect(&vm->client, vm->api_path, error, sizeof(error)) == 0;
}

/* Starts ringvm on `kernel` and the image's initramfs; `cmdline` is
 * appended to the defaults. */
/* ---- emulated hosts: two network namespaces (tests/netns/hosts.h) ---- */

/* Brings up this test process's hosts (one test per process), which
 * hosts_down removes (the test's .fini, so also when it fails; hosts.sh
 * sweeps those of a test killed outright). Skips without root, the script,
 * iproute2 or nftables. */
static void linux_hosts_up(void)
{
    hosts_require();
    char name[16];
    snprintf(name, sizeof(name), "lx%u", (unsigned)getpid() % 100000u);
    hosts_up(name, "");
}

/* "tcp:ADDRESS:PORT" of the dst host. */
static void hosts_dst_tcp(char *out, size_t size, unsigned port)
{
    char address[64];
    hosts_address("dst", false, address, sizeof(address));
    snprintf(out, size, "tcp:%s:%u", address, port);
}

/* Spawns argv, inside host `side` ("src"/"dst") when it is not NULL, with
 * RINGVM_FAULT_INJECT=fault when that is not NULL (migration/destination.c:
 * the destination stops there until killed, or until the file `release`
 * exists when that is not NULL: RINGVM_FAULT_RELEASE). */
static void spawn_on(struct harness_process *process, char **argv, const char *side, const char *fault,
                     const char *release)
{
    char *full[48];
    unsigned n = 0;
    static char fault_env[64], release_env[160];
    n += hosts_exec_prefix(&full[n], side);
    if (fault != NULL) {
        snprintf(fault_env, sizeof(fault_env), "RINGVM_FAULT_INJECT=%s", fault);
        full[n++] = "/usr/bin/env";
        full[n++] = fault_env;
        if (release != NULL) {
            snprintf(release_env, sizeof(release_env), "RINGVM_FAULT_RELEASE=%s", release);
            full[n++] = release_env;
        }
    }
    for (unsigned i = 0; argv[i] != NULL && n < 47; i++)
        full[n++] = argv[i];
    full[n] = NULL;
    harness_spawn(process, full);
}

static void linux_vm_start_on(struct linux_vm *vm, const char *kernel, const char *vcpus, const char *cmdline,
                              const char *side)
{
    harness_require_kvm();
    const char *initrd = harness_linux_image_file("initramfs.cpio");
    snprintf(vm->directory, sizeof(vm->directory), "/tmp/ringvm-linux-vm-XXXXXX");
    cr_assert_not_null(mkdtemp(vm->directory));
    snprintf(vm->api_path, sizeof(vm->api_path), "%s/api.sock", vm->directory);
    snprintf(vm->console_path, sizeof(vm->console_path), "unix:%s/console.sock", vm->directory);
    char *argv[] = { (char *)harness_program("ringvm"), "--kernel", (char *)kernel, "--initrd", (char *)initrd,
                     "--memory", "128M", "--vcpus", (char *)vcpus, "--cmdline", (char *)cmdline,
                     "--api-socket", vm->api_path, "--console", vm->console_path, NULL };
    spawn_on(&vm->process, argv, side, NULL, NULL);
    cr_assert(harness_wait_until(try_connect, vm, 10000), "no API socket at %s; stderr: %s", vm->api_path,
              vm->process.err);
}

static void linux_vm_start_kernel(struct linux_vm *vm, const char *kernel, const char *vcpus, const char *cmdline)
{
    linux_vm_start_on(vm, kernel, vcpus, cmdline, NULL);
}

/* The same on the project's own kernel (make linux-guest). */
static void linux_vm_start(struct linux_vm *vm, const char *vcpus, const char *cmdline)
{
    harness_require_kvm();
    linux_vm_start_kernel(vm, harness_linux_kernel(), vcpus, cmdline);
}

/* SIGTERM: ringvm exits 0. The directory stays (a destination shares its
 * source's). */
static void linux_vm_end_process(struct linux_vm *vm)
{
    if (vm->client != NULL)
        api_client_close(vm->client);
    vm->client = NULL;
    kill(vm->process.pid, SIGTERM);
    int status = harness_process_wait_exit(&vm->process, 20000);
    cr_assert_eq(status, 0, "ringvm exit %d on SIGTERM; stderr: %s", status, vm->process.err);
    harness_process_free(&vm->process);
}

static void linux_vm_stop(struct linux_vm *vm)
{
    linux_vm_end_process(vm);
    rmdir(vm->directory);
}

static json_t *call_ok(struct linux_vm *vm, const char *command, json_t *arguments)
{
    json_t *result = NULL;
    struct api_error error;
    int status = api_client_call(vm->client, command, arguments, &result, &error, CALL_TIMEOUT_MS);
    cr_assert_eq(status, 0, "%s: %s", command, error.message);
    return result;
}

/* Lines come from the guest's tty, which ends them with "\r\n" (ONLCR). */
static unsigned count_lines(const char *text, const char *prefix, unsigned vcpu)
{
    char suffix[32];
    snprintf(suffix, sizeof(suffix), " vcpu=%u", vcpu);
    unsigned count = 0;
    for (const char *at = strstr(text, prefix); at != NULL; at = strstr(at + 1, prefix)) {
        const char *end = strchr(at, '\n');
        if (end != NULL && end > at && end[-1] == '\r')
            end--;
        if (end != NULL && (size_t)(end - at) >= strlen(suffix) &&
            strncmp(end - strlen(suffix), suffix, strlen(suffix)) == 0)
            count++;
    }
    return count;
}

/* Whether `vcpu` printed `count` whole LEDGER OK lines within timeout_ms.
 * Counts whole lines, not line ends: a destination's output can begin in
 * the middle of a line whose head the source printed before the
 * switch-over ("1024 gen=144008 vcpu=1"), and that tail is no verify pass. */
static bool wait_whole_ledger_lines(struct harness_process *process, unsigned vcpu, unsigned count,
                                    unsigned timeout_ms)
{
    char needle[32];
    snprintf(needle, sizeof(needle), " vcpu=%u\r\n", vcpu);   /* a line's end, and never vcpu=10 */
    uint64_t deadline = monotonic_now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (count_lines(process->out, "LEDGER OK ", vcpu) < count) {
        unsigned ends = harness_process_output_count(process, needle);
        uint64_t now = monotonic_now_ns();
        if (now >= deadline ||
            !harness_process_wait_output(process, needle, ends + 1, (unsigned)((deadline - now) / 1000000u)))
            return false;
    }
    return true;
}

/* Waits until each of `vcpus` vCPUs printed `count` whole LEDGER OK lines
 * (one vCPU's thread may run far ahead of the other's), then checks that
 * no line says MISMATCH. */
static void wait_ledger_per_vcpu(struct harness_process *process, unsigned vcpus, unsigned count)
{
    for (unsigned vcpu = 0; vcpu < vcpus; vcpu++)
        cr_assert(wait_whole_ledger_lines(process, vcpu, count, LEDGER_TIMEOUT_MS),
                  "vcpu %u printed fewer than %u whole LEDGER OK lines; stdout: %s\nstderr: %s", vcpu, count,
                  process->out, process->err);
    cr_assert_null(strstr(process->out, "MISMATCH"), "stdout: %s", process->out);
}

/* Boots on `vcpus` vCPUs to the ledger, checks what vm.info and
 * vm.guest-stats say, then hands the running VM to `then`, which ends it. */
static void boots_and_runs_the_ledger(unsigned vcpus, void (*then)(struct linux_vm *vm, unsigned vcpus))
{
    struct linux_vm vm = { 0 };
    char vcpu_text[8];
    snprintf(vcpu_text, sizeof(vcpu_text), "%u", vcpus);
    const char *cmdline = "ringvm.workload=ledger,wss=8M,verify=1";
    linux_vm_start(&vm, vcpu_text, cmdline);
    cr_assert(harness_process_wait_output(&vm.process, "Linux version 6.1", 1, BOOT_TIMEOUT_MS),
              "no kernel banner; stdout: %s\nstderr: %s", vm.process.out, vm.process.err);
    cr_assert(harness_process_wait_output(&vm.process, "ringvm-init: /init started", 1, BOOT_TIMEOUT_MS),
              "/init did not run; stdout: %s", vm.process.out);
    cr_assert(harness_process_wait_output(&vm.process, "LEDGER OK", 2 * vcpus, LEDGER_TIMEOUT_MS),
              "fewer than 2 LEDGER OK per vCPU; stdout: %s", vm.process.out);
    wait_ledger_per_vcpu(&vm.process, vcpus, 1);

    json_t *info = call_ok(&vm, "vm.info", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "guest")), "linux");
    cr_assert_str_eq(json_string_value(json_object_get(info, "boot_protocol")), harness_linux_boot_protocol());
    cr_assert_str_eq(json_string_value(json_object_get(info, "cmdline")),
                     harness_linux_cmdline("ringvm.workload=ledger,wss=8M,verify=1"));
    cr_assert_str_eq(json_string_value(json_object_get(info, "workload")), "ledger,wss=8M,verify=1");
    /* The page-clearing port: offered on PVM hosts only, and there the
     * guest image's kernel cleared through it at least the working set
     * (8 MiB = 2048 pages, faulted in before the first LEDGER OK). */
    cr_assert_eq(json_is_true(json_object_get(info, "page_clearing_offered")), host_kvm_is_pvm());
    json_int_t cleared = json_integer_value(json_object_get(info, "cleared_pages"));
    if (host_kvm_is_pvm())
        cr_assert_geq(cleared, 2048, "the guest cleared its working set itself: %" JSON_INTEGER_FORMAT, cleared);
    else
        cr_assert_eq(cleared, 0);
    json_decref(info);

    /* The workload's counters reach the VMM through the stats pages. */
    json_t *stats = call_ok(&vm, "vm.guest-stats", NULL);
    size_t index;
    json_t *vcpu;
    json_array_foreach(json_object_get(stats, "vcpus"), index, vcpu) {
        cr_assert_gt(json_integer_value(json_object_get(vcpu, "pages_written")), 0, "vcpu %zu", index);
        cr_assert_geq(json_integer_value(json_object_get(vcpu, "ledger_verify_ok")), 1, "vcpu %zu", index);
        cr_assert_eq(json_integer_value(json_object_get(vcpu, "ledger_mismatches")), 0, "vcpu %zu", index);
    }
    cr_assert_eq(json_array_size(json_object_get(stats, "vcpus")), vcpus);
    json_decref(stats);
    then(&vm, vcpus);
}

static void console_answers(struct linux_vm *vm, const char *command, const char *expected);
static void power_command_ends(struct linux_vm *vm, const char *command, const char *reason);

/* The kernel writes from emulated ring 0 on PVM hosts, where a ring's soft-
 * full exit is not honoured (HOST-KVM.md): the harvesters must keep every
 * ring from filling. Tracking on, two more verify passes per vCPU (every
 * page of the working set rewritten twice), no ring overflowed, pages seen.
 * Then `reboot` typed on the console (reboot=k: 0xFE to port 0x64) ends
 * ringvm with exit 0. */
static void tracks_without_overflowing_a_ring_then_reboots(struct linux_vm *vm, unsigned vcpus)
{
    json_decref(call_ok(vm, "vm.dirty-tracking", json_pack("{s:b}", "enable", 1)));
    unsigned before[2] = { 0 };
    cr_assert_leq(vcpus, 2);
    for (unsigned vcpu = 0; vcpu < vcpus; vcpu++)
        before[vcpu] = count_lines(vm->process.out, "LEDGER OK ", vcpu);
    for (unsigned vcpu = 0; vcpu < vcpus; vcpu++)
        cr_assert(wait_whole_ledger_lines(&vm->process, vcpu, before[vcpu] + 2, LEDGER_TIMEOUT_MS),
                  "vcpu %u: no two verify passes with tracking on; stdout: %s", vcpu, vm->process.out);
    /* A command run by the shell: its fork makes the kernel clear
     * page-table pages, through the port on PVM hosts, where each page
     * ringvm clears while tracking is marked dirty by ringvm itself
     * (nothing else marks pages here). */
    console_answers(vm, "ls / > /dev/null && echo forked-$((6*7))", "forked-42");
    json_t *stats = call_ok(vm, "vm.dirty-stats", NULL);
    cr_assert_eq(json_integer_value(json_object_get(stats, "ring_overflows")), 0, "%s",
                 json_dumps(stats, JSON_COMPACT));
    cr_assert_gt(json_integer_value(json_object_get(stats, "pages")), 0, "tracking saw no page");
    json_int_t marked = json_integer_value(json_object_get(stats, "vmm_marked_pages"));
    if (host_kvm_is_pvm())
        cr_assert_gt(marked, 0, "pages cleared for the guest while tracking were not marked dirty");
    else
        cr_assert_eq(marked, 0);
    json_decref(stats);
    cr_assert_null(strstr(vm->process.out, "MISMATCH"));
    power_command_ends(vm, "reboot", "guest reset through the keyboard controller (reboot=k)");
}

/* Console input reaches the guest (busybox answers on the console socket),
 * then `poweroff` typed there ends ringvm with exit 0. */
static void console_then_poweroff(struct linux_vm *vm, unsigned vcpus)
{
    (void)vcpus;
    console_answers(vm, "echo marker-$((40+2))", "marker-42");
    power_command_ends(vm, "poweroff", ": guest powered off (exit code 0)");
}

/* Each test here makes one boot serve several claims (make test's time
 * budget: every boot costs 25-45 s of emulated ring 0 on PVM hosts). */
Test(linux_vm, boots_one_vcpu_to_the_ledger_takes_console_input_and_powers_off, .timeout = 900)
{
    boots_and_runs_the_ledger(1, console_then_poweroff);
}

Test(linux_vm, boots_two_vcpus_to_the_ledger_tracks_without_ring_overflow_and_reboots, .timeout = 900)
{
    boots_and_runs_the_ledger(2, tracks_without_overflowing_a_ring_then_reboots);
}

/* Types `echo PREFIX$((A*B))` into busybox through `ringctl console` on
 * vm's console socket and asserts the answer PREFIX<expected> comes back
 * there: the shell computes the product, so the answer can only come from
 * the guest (the echoed input says "$((A*B))"). */
/* What came back on vm's console socket for `command` typed through
 * `ringctl console`, which listens `listen_ms` after the end of its input
 * (--timeout); caller frees. */
/* Types `command` through `ringctl console` and returns what came back:
 * with `until`, everything up to that text (ringctl ends as soon as it went
 * by; not seen within timeout_ms after the input is a failure), without,
 * timeout_ms of output after the input. */
static char *console_exchange_for(struct linux_vm *vm, const char *command, const char *until, unsigned timeout_ms)
{
    char script[768];
    snprintf(script, sizeof(script), "printf '%%s\\n' '%s' | %s console --socket %s --timeout %u%s%s%s", command,
             harness_program("ringctl"), vm->console_path + 5, timeout_ms, until != NULL ? " --until '" : "",
             until != NULL ? until : "", until != NULL ? "'" : "");
    char *argv[] = { "/bin/sh", "-c", script, NULL };
    struct harness_process console;
    harness_spawn(&console, argv);
    int status = harness_process_wait_exit(&console, timeout_ms + 30000);
    cr_assert_eq(status, 0, "ringctl console (%s): exit %d: %s; output: %s", command, status, console.err,
                 console.out);
    char *output = strdup(console.out != NULL ? console.out : "");
    cr_assert_not_null(output);
    harness_process_free(&console);
    return output;
}

/* busybox answers `command` with `expected` on the console socket. */
static void console_answers(struct linux_vm *vm, const char *command, const char *expected)
{
    free(console_exchange_for(vm, command, expected, 30000));
}

/* Types `command` on vm's console: ringvm must exit 0 saying `reason`. */
static void power_command_ends(struct linux_vm *vm, const char *command, const char *reason)
{
    char script[512];
    snprintf(script, sizeof(script), "printf '%s\\n' | %s console --socket %s --timeout 60000", command,
             harness_program("ringctl"), vm->console_path + 5);
    char *argv[] = { "/bin/sh", "-c", script, NULL };
    struct harness_process console;
    harness_spawn(&console, argv);
    int status = harness_process_wait_exit(&vm->process, 60000);
    cr_assert_eq(status, 0, "ringvm exit %d after %s; stderr: %s", status, command, vm->process.err);
    cr_assert_not_null(strstr(vm->process.err, reason), "stderr: %s", vm->process.err);
    harness_process_wait_exit(&console, 10000);
    harness_process_free(&console);
    api_client_close(vm->client);
    vm->client = NULL;
    harness_process_free(&vm->process);
    rmdir(vm->directory);
}

/* The VMM boots an unpatched distribution kernel on a VMX/SVM host: Debian's
 * own vmlinuz (RINGVM_TEST_VMLINUZ, the same file the boot-protocol tests
 * parse) with the project's initramfs, to the ledger in user space. On a
 * PVM host stock kernels do not boot at all (../shared/HOST-KVM.md: ring 0
 * is emulated and some of its instructions cannot be), so there it skips. */
Test(linux_vm, boots_debians_own_kernel_to_the_ledger, .timeout = 900)
{
    harness_require_kvm();
    if (host_kvm_is_pvm())
        harness_skip("this host's KVM is PVM (vmm/host.c): stock distribution kernels do not boot there "
                     "(guest/linux/README.md, \"On PVM hosts\")");
    const char *vmlinuz = getenv("RINGVM_TEST_VMLINUZ");
    if (vmlinuz == NULL || vmlinuz[0] == '\0' || access(vmlinuz, R_OK) != 0)
        harness_skip("Debian's vmlinuz is not here (RINGVM_TEST_VMLINUZ unset or unreadable: "
                     "scripts/debian-vmlinuz.sh fetches it)");
    struct linux_vm vm = { 0 };
    linux_vm_start_kernel(&vm, vmlinuz, "2", "ringvm.workload=ledger,wss=8M,verify=1");
    cr_assert(harness_process_wait_output(&vm.process, "Linux version 6.1", 1, BOOT_TIMEOUT_MS),
              "no kernel banner; stdout: %s\nstderr: %s", vm.process.out, vm.process.err);
    cr_assert(harness_process_wait_output(&vm.process, "ringvm-init: /init started", 1, BOOT_TIMEOUT_MS),
              "/init did not run; stdout: %s\nstderr: %s", vm.process.out, vm.process.err);
    wait_ledger_per_vcpu(&vm.process, 2, 1);
    json_t *info = call_ok(&vm, "vm.info", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "kernel")), vmlinuz);
    cr_assert_str_eq(json_string_value(json_object_get(info, "boot_protocol")), "bzImage 64-bit");
    json_decref(info);
    linux_vm_stop(&vm);
}

/* True once a destination's migration.progress says it listens. */
static bool destination_listening(void *argument)
{
    struct linux_vm *vm = argument;
    json_t *progress = NULL;
    struct api_error error;
    if (api_client_call(vm->client, "migration.progress", NULL, &progress, &error, CALL_TIMEOUT_MS) != 0)
        return false;
    bool listening = strcmp(json_string_value(json_object_get(progress, "phase")), "listening") == 0;
    json_decref(progress);
    return listening;
}

static bool migration_ended(void *argument)
{
    struct linux_vm *vm = argument;
    json_t *progress = call_ok(vm, "migration.progress", NULL);
    const char *state = json_string_value(json_object_get(progress, "state"));
    bool ended = strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0;
    json_decref(progress);
    return ended;
}

/* `ringvm --incoming SCHEME:DIRECTORY/incoming-HOP.sock --memory 128M --vcpus 2
 * --console unix:DIRECTORY/console-HOP.sock` (scheme unix or local): no
 * kernel, no workload; listening when this returns. */
/* `ringvm --incoming INCOMING ...` in host `side` (NULL: here), stopping
 * at `fault` (NULL: none) until killed or, when `release` is not NULL,
 * until that file exists; listening when this returns. */
static void linux_destination_start_at(struct linux_vm *destination, const char *directory, unsigned hop,
                                       const char *incoming, const char *side, const char *fault,
                                       const char *release)
{
    memset(destination, 0, sizeof(*destination));
    snprintf(destination->directory, sizeof(destination->directory), "%s", directory);
    snprintf(destination->api_path, sizeof(destination->api_path), "%s/destination-%u.sock", directory, hop);
    snprintf(destination->console_path, sizeof(destination->console_path), "unix:%s/console-%u.sock", directory,
             hop);
    char *argv[] = { (char *)harness_program("ringvm"), "--incoming", (char *)incoming, "--memory", "128M",
                     "--vcpus", "2", "--api-socket", destination->api_path, "--console", destination->console_path,
                     NULL };
    spawn_on(&destination->process, argv, side, fault, release);
    cr_assert(harness_wait_until(try_connect, destination, 20000), "no destination API; stderr: %s",
              destination->process.err);
    cr_assert(harness_wait_until(destination_listening, destination, 20000), "the destination never listened");
}

static void linux_destination_start(struct linux_vm *destination, const char *directory, unsigned hop,
                                    const char *scheme, char *incoming, size_t incoming_size)
{
    snprintf(incoming, incoming_size, "%s:%s/incoming-%u.sock", scheme, directory, hop);
    linux_destination_start_at(destination, directory, hop, incoming, NULL, NULL, NULL);
}

/* Starts migrating `from` to `incoming` with verify_digest; stall_timeout_s
 * 0 = the default (5 s). */
static void linux_migration_start_stalling(struct linux_vm *from, const char *incoming, int stall_timeout_s)
{
    /* A local hand-over has no iterations for the limit to decide: the
     * largest, so the digest estimate's swings cannot refuse the start. */
    bool local = strncmp(incoming, "local:", 6) == 0;
    json_t *arguments = json_pack("{s:s, s:b, s:I, s:b, s:i}", "dest", incoming, "verify_digest", 1, "downtime_ms",
                                  local ? (json_int_t)3600000 : (json_int_t)harness_digest_downtime_ms(128ull << 20),
                                  "keep_alive", 1, "timeout_s", 120);
    cr_assert_not_null(arguments);
    if (stall_timeout_s != 0)
        cr_assert_eq(json_object_set_new(arguments, "stall_timeout_s", json_integer(stall_timeout_s)), 0);
    json_decref(call_ok(from, "migration.start", arguments));
}

/* Starts migrating `from` to `incoming` with verify_digest. */
static void linux_migration_start(struct linux_vm *from, const char *incoming)
{
    linux_migration_start_stalling(from, incoming, 0);
}

/* Waits for the migration started by linux_migration_start: completed,
 * digests equal. Returns its measured downtime, µs (migration.progress
 * downtime_us: source pause to destination resume). */
static int64_t linux_migration_completed(struct linux_vm *from, const char *incoming)
{
    bool local = strncmp(incoming, "local:", 6) == 0;
    cr_assert(harness_wait_until(migration_ended, from, 150000), "the migration did not end");
    json_t *progress = call_ok(from, "migration.progress", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(progress, "state")), "completed", "%s",
                     json_dumps(progress, JSON_COMPACT));
    cr_assert_str_eq(json_string_value(json_object_get(progress, "memory_digest_source")),
                     json_string_value(json_object_get(progress, "memory_digest_destination")));
    cr_assert_str_eq(json_string_value(json_object_get(progress, "mode")), local ? "local" : "precopy");
    json_t *downtime = json_object_get(progress, "downtime_us");
    cr_assert(json_is_integer(downtime) && json_integer_value(downtime) > 0, "no downtime_us: %s",
              json_dumps(progress, JSON_COMPACT));
    int64_t downtime_us = json_integer_value(downtime);
    json_decref(progress);
    return downtime_us;
}

/* Migrates `from` to `incoming` with verify_digest: completed, digests
 * equal. Returns the downtime, µs. */
static int64_t linux_migrate(struct linux_vm *from, const char *incoming)
{
    linux_migration_start(from, incoming);
    return linux_migration_completed(from, incoming);
}

/* The guest runs at `to`: two verify passes per vCPU printed there (the
 * LAPIC timers, the clock and both vCPUs came along; its UART's interrupt
 * through the restored IOAPIC), never a MISMATCH, and vm.info there. */
/* What a guest whose timers, clock or interrupts came across wrong prints
 * (watchdogs, the clocksource watchdog, RCU stalls, oopses). */
static const char *const kernel_complaints[] = {
    "soft lockup", "blocked for more than", "rcu: INFO", "self-detected stall", "Call Trace", "BUG:", "WARNING:",
    "unstable", /* the clocksource watchdog: "Marking clocksource 'tsc' as unstable" */
    "clocksource", /* last: also in a run-time switch's own output (kernel_complaint_after) */
};

/* The first complaint in process's stdout from byte `from` on, or NULL.
 * With any_clocksource false, the word "clocksource" alone does not count
 * (the output of the ping-pong's switch to kvm-clock has it; the watchdog's
 * "unstable" still counts). */
static const char *kernel_complaint_after(const struct harness_process *process, size_t from, bool any_clocksource)
{
    size_t complaints = sizeof(kernel_complaints) / sizeof(kernel_complaints[0]) - (any_clocksource ? 0 : 1);
    const char *text = process->out + (from < process->out_length ? from : process->out_length);
    for (size_t i = 0; i < complaints; i++)
        if (strstr(text, kernel_complaints[i]) != NULL)
            return kernel_complaints[i];
    return NULL;
}

static void assert_no_kernel_complaint(const struct harness_process *process, const char *where)
{
    const char *complaint = kernel_complaint_after(process, 0, true);
    cr_assert_null(complaint, "%s: the guest printed \"%s\": %s", where, complaint, process->out);
}

/* The migrated guest (booted with user_cmdline) runs its ledger on the
 * destination `to`, which knows its kind and command line. */
static void linux_guest_carries_on_with(struct linux_vm *to, const char *user_cmdline)
{
    wait_ledger_per_vcpu(&to->process, 2, 2);
    /* Only what the guest printed after it arrived is in to's stdout. */
    assert_no_kernel_complaint(&to->process, "after the migration");
    json_t *info = call_ok(to, "vm.info", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "guest")), "linux");
    cr_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
    cr_assert_str_eq(json_string_value(json_object_get(info, "cmdline")), harness_linux_cmdline(user_cmdline));
    cr_assert(json_is_null(json_object_get(info, "kernel")));
    json_decref(info);
}

static void linux_guest_carries_on_at(struct linux_vm *to)
{
    linux_guest_carries_on_with(to, "ringvm.workload=ledger,wss=8M,verify=1");
}

/* pages_written of each of vm's 2 vCPUs, from vm.guest-stats. */
static void guest_pages_written(struct linux_vm *vm, int64_t written[2])
{
    json_t *stats = call_ok(vm, "vm.guest-stats", NULL);
    json_t *vcpus = json_object_get(stats, "vcpus");
    cr_assert_eq(json_array_size(vcpus), 2, "%s", json_dumps(stats, JSON_COMPACT));
    for (unsigned i = 0; i < 2; i++)
        written[i] = json_integer_value(json_object_get(json_array_get(vcpus, i), "pages_written"));
    json_decref(stats);
}

static void assert_state(struct linux_vm *vm, const char *state)
{
    json_t *info = call_ok(vm, "vm.info", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "state")), state);
    json_decref(info);
}

/* A Linux guest paused by the operator (vm.pause) on `from` moves to `to`
 * (listening at `incoming`) and stays paused there (END's guest-paused
 * flag): state paused, the ledger's counters exactly those at the pause,
 * and still those after a whole-RAM digest there; vm.resume there runs it:
 * LEDGER OK goes on, never MISMATCH. */
static void linux_paused_guest_moves(struct linux_vm *from, struct linux_vm *to, const char *incoming)
{
    json_decref(call_ok(from, "vm.pause", NULL));
    int64_t at_pause[2];
    guest_pages_written(from, at_pause);
    cr_assert(at_pause[0] > 0 && at_pause[1] > 0, "the ledger wrote nothing: %" PRId64 ", %" PRId64, at_pause[0],
              at_pause[1]);
    linux_migrate(from, incoming);
    assert_state(from, "migrated");
    assert_state(to, "paused");
    int64_t arrived[2], later[2];
    guest_pages_written(to, arrived);
    cr_assert(arrived[0] == at_pause[0] && arrived[1] == at_pause[1],
              "the guest ran on the way: %" PRId64 ", %" PRId64 " written, %" PRId64 ", %" PRId64 " at the pause",
              arrived[0], arrived[1], at_pause[0], at_pause[1]);
    /* Hashing all 128 MiB takes a while: the vCPUs stay parked meanwhile. */
    json_decref(call_ok(to, "vm.memory-digest", NULL));
    guest_pages_written(to, later);
    cr_assert(later[0] == at_pause[0] && later[1] == at_pause[1], "the paused guest ran: %" PRId64 ", %" PRId64,
              later[0], later[1]);
    json_t *resumed = call_ok(to, "vm.resume", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(resumed, "state")), "running");
    json_decref(resumed);
    linux_guest_carries_on_at(to);
    guest_pages_written(to, later);
    cr_assert(later[0] > at_pause[0] && later[1] > at_pause[1], "a vCPU did not run after vm.resume");
}

/* A Linux guest on 2 vCPUs migrates to a destination started with only
 * --memory and --vcpus (no kernel: it arrives in guest RAM) and carries on
 * there; then, paused by the operator, on from that destination to a third
 * ringvm (a guest that arrived by migration leaves the same way), where it
 * stays paused until vm.resume (linux_paused_guest_moves). */
static void linux_guest_moves_twice(const char *scheme)
{
    struct linux_vm vm = { 0 };
    linux_vm_start(&vm, "2", "ringvm.workload=ledger,wss=8M,verify=1");
    cr_assert(harness_process_wait_output(&vm.process, "LEDGER OK", 4, BOOT_TIMEOUT_MS), "stdout: %s",
              vm.process.out);
    struct linux_vm hops[2];
    struct linux_vm *from = &vm;
    for (unsigned hop = 0; hop < 2; hop++) {
        char incoming[160];
        linux_destination_start(&hops[hop], vm.directory, hop, scheme, incoming, sizeof(incoming));
        if (hop == 0) {
            linux_migrate(from, incoming);
            linux_guest_carries_on_at(&hops[hop]);
        } else {
            linux_paused_guest_moves(from, &hops[hop], incoming);
        }
        from = &hops[hop];
    }
    for (unsigned hop = 0; hop < 2; hop++)
        linux_vm_end_process(&hops[hop]);
    linux_vm_stop(&vm);
}

/* By local hand-over (issue 19): each new ringvm adopts the RAM (the kernel
 * is in it) and gets the machine state in MACHINE_STATE; the second time the
 * guest is paused and stays so. Over unix sockets the ping-pong test below
 * moves the guest ten times (a paused built-in guest: migration::
 * a_paused_guest_migrates_and_stays_paused). One boot for all of it: make
 * test's budget. */
Test(linux_vm, a_linux_guest_is_handed_over_locally_twice_the_second_time_paused, .timeout = 1200)
{
    linux_guest_moves_twice("local");
}

static bool stopped_at_iteration0(void *argument)
{
    struct harness_process *process = argument;
    harness_process_read_available(process);
    return process->err != NULL && strstr(process->err, "ringvm: fault-inject: stopped at iteration0") != NULL;
}

/* Types `command` on vm's console without waiting for its output. */
static void console_type(struct linux_vm *vm, const char *command)
{
    free(console_exchange_for(vm, command, NULL, 100));
}

/* Has the kernel clear pages until /seq-stop (SEQ_COMMAND's file) stops
 * it: each dd maps a fresh 1 MiB buffer and reads zeros into it, 256 page
 * faults (a fork alone, or an applet busybox runs without one, clears a
 * few page-table pages at most, too few to see beside a loaded host's
 * slowness). */
#define CLEARING_COMMAND "clear-pages&"  /* guest/linux/clear-pages */

/* vm.info's cleared_pages (the page-clearing port's count). */
static json_int_t cleared_pages(struct linux_vm *vm)
{
    json_t *info = call_ok(vm, "vm.info", NULL);
    json_int_t cleared = json_integer_value(json_object_get(info, "cleared_pages"));
    json_decref(info);
    return cleared;
}

struct cleared_pages_growth {
    struct linux_vm *vm;
    json_int_t from;
};

/* True once cleared_pages passed `from` by 64 pages (a dd's buffer is
 * 256). Both predicates here drain ringvm's stdout as they poll: the guest
 * prints its SEQ lines throughout, and a full pipe would block the vCPU
 * writing its UART, and with it the guest (seen under ASan, where the
 * wait is long). */
static bool cleared_pages_grew(void *argument)
{
    struct cleared_pages_growth *growth = argument;
    harness_process_read_available(&growth->vm->process);
    return cleared_pages(growth->vm) >= growth->from + 64;
}

/* True once vm's dirty log counts a page ringvm itself marked. */
static bool vmm_marked_pages(void *argument)
{
    struct linux_vm *vm = argument;
    harness_process_read_available(&vm->process);
    json_t *stats = call_ok(vm, "vm.dirty-stats", NULL);
    bool marked = json_integer_value(json_object_get(stats, "vmm_marked_pages")) > 0;
    json_decref(stats);
    return marked;
}

/* The guest prints SEQ1, SEQ2, ... one echo (one write(2)) each, so each
 * token reaches the console whole, until the test creates /seq-stop; then
 * SEQ-END. Other writers (the workload's LEDGER and CLOCK lines, the tty
 * echoing typed commands) write whole lines of their own between them, and
 * the echo of a typed command can split anywhere: a token is "SEQ"
 * followed by digits, wherever it stands. The migration may fall inside a
 * token ("SE" the last bytes on the source, "Q121" the first on the
 * destination: the UART moved mid-transmission), so the two outputs are
 * read as one stream, the source's then the destination's. Its tokens are
 * exactly 1..N, in order (no byte of the sequence lost or repeated), some
 * of them on each side: the loop runs until the test stops it on the
 * destination, so the migration always falls inside it. */
#define SEQ_COMMAND "seq-lines&"   /* guest/linux/seq-lines */
static void assert_sequence_complete(const char *first, const char *second)
{
    size_t first_length = strlen(first), second_length = strlen(second);
    char *both = malloc(first_length + second_length + 1);
    cr_assert_not_null(both);
    memcpy(both, first, first_length);
    memcpy(both + first_length, second, second_length + 1);
    unsigned expected = 1, on_first = 0;
    for (const char *at = strstr(both, "SEQ"); at != NULL; at = strstr(at + 3, "SEQ")) {
        if (at[3] < '0' || at[3] > '9')
            continue;   /* the typed command's "SEQ$i", and SEQ-END */
        char *end = NULL;
        unsigned value = (unsigned)strtoul(at + 3, &end, 10);
        size_t offset = (size_t)(at - both);
        size_t before = offset < 300 ? offset : 300;
        cr_assert_eq(value, expected, "%s: after %u came %u (a byte lost or repeated across the migration?); the "
                     "output around it: ...%.600s...", offset < first_length ? "source" : "destination",
                     expected - 1, value, at - before);
        if ((size_t)(end - both) <= first_length)
            on_first++;
        expected++;
    }
    free(both);
    unsigned count = expected - 1;
    fprintf(stderr, "linux_vm: %u of %u numbered lines came out before the migration, %u after\n", on_first, count,
            count - on_first);
    /* Otherwise the migration did not happen mid-transmission. */
    cr_assert(on_first > 0 && on_first < count, "%u of %u lines before the migration", on_first, count);
}

/* Issue 14 over TCP between two emulated hosts (network namespaces), with
 * one case of the fault matrix first (one boot for both: make test's
 * budget). The Linux ledger guest (2 vCPUs) runs in host src. A
 * destination in host dst that stops once iteration 0 has begun
 * (RINGVM_FAULT_INJECT=iteration0) is killed: the migration fails with
 * `transport`, the guest runs on at the source (two more verify passes per
 * vCPU, never MISMATCH). Then a new destination in dst gets it: completed,
 * digests equal, and it carries on there; the guest was printing
 * numbered lines on its UART throughout (SEQ_COMMAND), and every one
 * arrives once, in order, across the two ringvm processes' outputs; and
 * on PVM hosts ringvm was clearing pages for the guest's kernel during
 * that migration (CLEARING_COMMAND), which the equal digests cover. */
Test(linux_vm, a_linux_guest_survives_a_killed_destination_then_migrates_over_tcp_between_hosts, .timeout = 1200,
     .fini = hosts_down)
{
    linux_hosts_up();
    struct linux_vm vm = { 0 };
    linux_vm_start_on(&vm, harness_linux_kernel(), "2", "ringvm.workload=ledger,wss=8M,verify=1", "src");
    wait_ledger_per_vcpu(&vm.process, 2, 2);

    char incoming[160];
    unsigned port = 20000u + (unsigned)getpid() % 20000u;
    hosts_dst_tcp(incoming, sizeof(incoming), port);
    struct linux_vm doomed;
    linux_destination_start_at(&doomed, vm.directory, 0, incoming, "dst", "iteration0", NULL);
    json_decref(call_ok(&vm, "migration.start", json_pack("{s:s, s:b}", "dest", incoming, "keep_alive", 1)));
    cr_assert(harness_wait_until(stopped_at_iteration0, &doomed.process, 60000),
              "the destination never reached iteration 0; stderr: %s", doomed.process.err);
    cr_assert_eq(kill(doomed.process.pid, SIGKILL), 0);
    harness_process_wait_exit(&doomed.process, 20000);
    api_client_close(doomed.client);
    harness_process_free(&doomed.process);
    cr_assert(harness_wait_until(migration_ended, &vm, 60000), "the migration did not end after the kill");
    json_t *progress = call_ok(&vm, "migration.progress", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(progress, "state")), "failed", "%s",
                     json_dumps(progress, JSON_COMPACT));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(progress, "error"), "code")), "transport",
                     "%s", json_dumps(progress, JSON_COMPACT));
    json_decref(progress);
    assert_state(&vm, "running");
    unsigned before[2] = { count_lines(vm.process.out, "LEDGER OK ", 0), count_lines(vm.process.out, "LEDGER OK ", 1) };
    wait_ledger_per_vcpu(&vm.process, 2, (before[0] > before[1] ? before[0] : before[1]) + 2);

    struct linux_vm destination;
    hosts_dst_tcp(incoming, sizeof(incoming), port + 1);
    char release[128];
    snprintf(release, sizeof(release), "%s/release", vm.directory);
    linux_destination_start_at(&destination, vm.directory, 1, incoming, "dst", "iteration0", release);
    /* The UART mid-transmission: the guest prints numbered lines (~120
     * a second of port writes) while it migrates; every number must come
     * out once, in order, on the source's stdout and then the
     * destination's. */
    console_type(&vm, SEQ_COMMAND);
    cr_assert(harness_process_wait_output(&vm.process, "SEQ100\r\n", 1, 60000), "the sequence did not start: %s",
              vm.process.out);
    /* Pages the kernel has ringvm clear (PVM hosts: the page-clearing
     * port) while the migration runs: dd in a loop (CLEARING_COMMAND).
     * ringvm writes them, not the guest, so only ringvm's own marks put
     * them in the dirty set; the digests compared at the end hold them.
     * The destination stops reading at iteration 0 until such pages were
     * marked (the source's pass 0 waits on the full socket meanwhile,
     * tracking on, the guest running). */
    struct cleared_pages_growth growth = { .vm = &vm, .from = cleared_pages(&vm) };
    console_type(&vm, CLEARING_COMMAND);
    if (host_kvm_is_pvm())
        cr_assert(harness_wait_until(cleared_pages_grew, &growth, harness_linux_timeout_ms(60000)),
                  "the dd loop had no page cleared through the port; stdout: %s", vm.process.out);
    /* The hold lasts until the guest had pages cleared (seconds under
     * ASan): longer than the default stall timeout would let it. */
    linux_migration_start_stalling(&vm, incoming, 120);
    cr_assert(harness_wait_until(stopped_at_iteration0, &destination.process, 60000),
              "the destination never reached iteration 0; stderr: %s", destination.process.err);
    if (host_kvm_is_pvm())
        cr_assert(harness_wait_until(vmm_marked_pages, &vm, harness_linux_timeout_ms(60000)),
                  "no page was cleared for the guest while it migrated; stderr: %s", vm.process.err);
    harness_release_fault(release);
    linux_migration_completed(&vm, incoming);
    assert_state(&vm, "migrated");
    linux_guest_carries_on_at(&destination);
    cr_assert(harness_process_wait_output(&destination.process, "\r\nSEQ", 50, 60000),
              "the sequence did not go on on the destination: %s", destination.process.out);
    console_type(&destination, "touch /seq-stop");
    cr_assert(harness_process_wait_output(&destination.process, "SEQ-END\r\n", 1, 60000),
              "the sequence did not end on the destination: %s", destination.process.out);
    harness_process_read_available(&vm.process);
    assert_sequence_complete(vm.process.out, destination.process.out);
    linux_vm_end_process(&destination);
    linux_vm_stop(&vm);
}

struct guest_progress {
    struct linux_vm *vm;
    int64_t from[2];
};

/* True once both vCPUs' pages_written passed `from`. */
static bool guest_wrote_more(void *argument)
{
    struct guest_progress *progress = argument;
    int64_t now[2];
    guest_pages_written(progress->vm, now);
    return now[0] > progress->from[0] && now[1] > progress->from[1];
}

/* ---- the guest's clock across a migration ---- */

/* The guest's CLOCK_MONOTONIC as its workload printed it (`CLOCK
 * mono_ns=N` every PINGPONG_CLOCK_CMDLINE period: ringvm-workload
 * --clock-lines=MS, which /init passes; guest/linux/README.md), and this host's CLOCK_MONOTONIC when the
 * whole line had arrived on ringvm's stdout. */
struct clock_reading {
    uint64_t guest_ns;
    uint64_t host_ns;
    uint64_t spread_ns;     /* how much later the slowest sample came through */
};

/* The guest's clock must advance across a migration by the host time that
 * passed, downtime included, within this (issue 14: "by the downtime +-
 * 100 ms"; docs/migration-protocol.md, "The clock decision"). */
#define CLOCK_TOLERANCE_NS 100000000ll
/* The first hop on each clocksource holds its destination this long at
 * `end` (every byte arrived, nothing restored yet: the downtime's middle),
 * so a clock that stopped for the downtime would be off by far more than
 * the tolerance. */
#define CLOCK_HOLD_MS 1000u

static uint64_t host_monotonic_ns(void)
{
    struct timespec now;
    cr_assert_eq(clock_gettime(CLOCK_MONOTONIC, &now), 0, "clock_gettime: %s", strerror(errno));
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* The whole `CLOCK mono_ns=N` lines of text (N, then the end of the line);
 * *last gets the N of the last one. A line still arriving is not counted. */
static unsigned count_clock_lines(const char *text, uint64_t *last)
{
    static const char prefix[] = "CLOCK mono_ns=";
    unsigned count = 0;
    for (const char *at = strstr(text, prefix); at != NULL; at = strstr(at + 1, prefix)) {
        const char *digits = at + strlen(prefix);
        char *end;
        unsigned long long value = strtoull(digits, &end, 10);
        if (end == digits || (*end != '\r' && *end != '\n'))
            continue;
        count++;
        *last = value;
    }
    return count;
}

struct clock_line_wait {
    struct harness_process *process;
    unsigned count;         /* whole CLOCK lines to wait for */
    uint64_t guest_ns;      /* the last one's N */
};

static bool clock_line_arrived(void *argument)
{
    struct clock_line_wait *wait = argument;
    harness_process_read_available(wait->process);
    return count_clock_lines(wait->process->out, &wait->guest_ns) >= wait->count;
}

/* Of the next CLOCK_SAMPLES lines on process's stdout (after skipping
 * `skip`), each with the host's clock when it arrived (polled every
 * millisecond), the one that came through quickest: the smallest host -
 * guest. A line's transit (the guest's tty and UART, ringvm, the pipe) is
 * milliseconds, but a line now and then arrives tens of ms late on a
 * loaded host (77 ms seen once among 11 single readings); the quickest of
 * three is late only when all are. Right after a migration skip 1: a line
 * whose clock was read just before the source paused may still be in the
 * guest's UART and arrive only at the destination; the lines after it were
 * read after the resume. */
#define CLOCK_SAMPLES 3u
/* Four CLOCK lines a second: a hop's readings (skip one, take three) take
 * one second instead of three. */
#define PINGPONG_CLOCK_CMDLINE "ringvm.clock_ms=250"
static struct clock_reading next_clock_reading(struct harness_process *process, unsigned skip)
{
    harness_process_read_available(process);
    uint64_t ignored = 0;
    struct clock_line_wait wait = { .process = process, .count = count_clock_lines(process->out, &ignored) + skip };
    struct clock_reading quickest = { 0 };
    uint64_t slowest_offset = 0;
    for (unsigned sample = 0; sample < CLOCK_SAMPLES; sample++) {
        wait.count++;
        /* Lines come at least every second; 10 s allows for a loaded host. */
        cr_assert(harness_wait_until(clock_line_arrived, &wait, 10000), "no CLOCK line for 10 s; stdout: %s",
                  process->out);
        struct clock_reading reading = { .guest_ns = wait.guest_ns, .host_ns = host_monotonic_ns() };
        uint64_t offset = reading.host_ns - reading.guest_ns;
        if (sample == 0 || offset < quickest.host_ns - quickest.guest_ns)
            quickest = reading;
        if (sample == 0 || offset > slowest_offset)
            slowest_offset = offset;
    }
    quickest.spread_ns = slowest_offset - (quickest.host_ns - quickest.guest_ns);
    return quickest;
}

/* The documented behaviour (KVM_CLOCK_REALTIME carried, machine_state_kvm.c):
 * the guest's clock runs through the downtime as the host's does, so
 * between a reading before the migration and one after it the guest's
 * clock advanced by the host's elapsed time +- CLOCK_TOLERANCE_NS. Put as
 * the issue puts it: the guest's advance during the downtime, (guest
 * delta) - (host delta - downtime), equals the downtime +- 100 ms: the
 * same inequality. A clock stopped for the downtime would lag by the
 * downtime (KVM_SET_CLOCK without REALTIME), one restored wrongly by any
 * other amount; the readings' own error is the lines' transit time through
 * the guest's UART (milliseconds; printed below). */
static void assert_clock_advanced_with_the_host(unsigned hop, struct clock_reading before,
                                                struct clock_reading after, int64_t downtime_us)
{
    int64_t guest_delta = (int64_t)(after.guest_ns - before.guest_ns);
    int64_t host_delta = (int64_t)(after.host_ns - before.host_ns);
    int64_t difference = guest_delta - host_delta;
    fprintf(stderr,
            "ping-pong: hop %u clock: guest +%.3f s, host +%.3f s, guest - host %+.1f ms, downtime %.1f ms "
            "(the slower sample came %.1f ms later before, %.1f ms after)\n",
            hop + 1, guest_delta / 1e9, host_delta / 1e9, difference / 1e6, downtime_us / 1e3,
            before.spread_ns / 1e6, after.spread_ns / 1e6);
    cr_assert(difference >= -CLOCK_TOLERANCE_NS && difference <= CLOCK_TOLERANCE_NS,
              "hop %u: the guest's CLOCK_MONOTONIC advanced %.3f s while the host's advanced %.3f s "
              "(downtime %.1f ms): off by %+.1f ms, more than 100 ms (a clock that stops for the downtime "
              "would be off by -%.1f ms)",
              hop + 1, guest_delta / 1e9, host_delta / 1e9, downtime_us / 1e3, difference / 1e6, downtime_us / 1e3);
}

static bool destination_stopped_at_end(void *argument)
{
    struct harness_process *process = argument;
    harness_process_read_available(process);
    return process->err != NULL && strstr(process->err, "ringvm: fault-inject: stopped at end") != NULL;
}

/* Migrates `from` to `to` (started with RINGVM_FAULT_INJECT=end and
 * `release`), holding `to` at `end` for CLOCK_HOLD_MS before releasing it:
 * the source has paused the guest and sent everything, so the downtime
 * grows by the hold. Returns the downtime, µs, which must be at least the
 * hold. */
static int64_t linux_migrate_holding_at_end(struct linux_vm *from, struct linux_vm *to, const char *incoming,
                                            const char *release)
{
    linux_migration_start(from, incoming);
    cr_assert(harness_wait_until(destination_stopped_at_end, &to->process, 150000),
              "the destination never stopped at end; stderr: %s", to->process.err);
    /* The hold is the stimulus here (a long downtime), not a wait for
     * something to happen. */
    struct timespec hold = { .tv_sec = CLOCK_HOLD_MS / 1000u, .tv_nsec = (CLOCK_HOLD_MS % 1000u) * 1000000l };
    while (nanosleep(&hold, &hold) != 0)
        cr_assert_eq(errno, EINTR, "nanosleep: %s", strerror(errno));
    harness_release_fault(release);
    int64_t downtime_us = linux_migration_completed(from, incoming);
    cr_assert_geq(downtime_us, (int64_t)CLOCK_HOLD_MS * 1000, "downtime %" PRId64 " µs, held %u ms", downtime_us,
                  CLOCK_HOLD_MS);
    cr_assert_eq(unlink(release), 0, "unlink %s: %s", release, strerror(errno));
    return downtime_us;
}

/* RINGVM_PINGPONG_HOPS (default 10, 1..1000). */
static unsigned pingpong_hops(void)
{
    const char *text = getenv("RINGVM_PINGPONG_HOPS");
    if (text == NULL || text[0] == '\0')
        return 10;
    char *end;
    unsigned long hops = strtoul(text, &end, 10);
    cr_assert(*end == '\0' && hops >= 1 && hops <= 1000, "RINGVM_PINGPONG_HOPS='%s': expected 1..1000", text);
    return (unsigned)hops;
}

/* Ping-pong: the Linux ledger guest (2 vCPUs) migrated over unix between
 * two destination slots in turn, RINGVM_PINGPONG_HOPS hops (default 10).
 * A ringvm receives once, so each hop starts a new ringvm in the slot the
 * guest left the hop before and ends that slot's old one: at most two
 * ringvm processes hold the guest's two places. Each hop: completed,
 * digests equal, two LEDGER OK per vCPU on the destination, no MISMATCH.
 * Console: typed before the first hop and after the last, through `ringctl
 * console` on that ringvm's socket, busybox answers (the UART's registers
 * and its interrupt through the restored IOAPIC came along), and the
 * answer also reaches the last destination's --serial (stdout). Timers and
 * clock: no destination's guest complains (soft lockup, clocksource, RCU
 * stall, oops), after the last hop one-second timeouts take a second, and
 * at every hop the guest's CLOCK_MONOTONIC advanced as the host's did,
 * downtime included, +- 100 ms (issue 14; assert_clock_advanced_with_the_host):
 * on the TSC clocksource for the first half of the hops, on kvm-clock for
 * the second, the first hop on each with a downtime of over a second. */
Test(linux_vm, a_linux_guest_ping_pongs_between_two_destinations_and_keeps_its_console, .timeout = 3000)
{
    unsigned hops = pingpong_hops();
    fprintf(stderr, "linux_vm::a_linux_guest_ping_pongs_between_two_destinations: %u hops\n", hops);
    struct linux_vm vm = { 0 };
    const char *cmdline = "ringvm.workload=ledger,wss=8M,verify=1 " PINGPONG_CLOCK_CMDLINE;
    linux_vm_start(&vm, "2", cmdline);
    wait_ledger_per_vcpu(&vm.process, 2, 2);
    /* From where the source's stdout has not been checked for complaints:
     * the booted guest's from its first ledger lines on (its boot log
     * names clocksources). */
    size_t from_checked = vm.process.out_length;
    console_answers(&vm, "echo before-$((40+2))", "before-42");
    struct linux_vm slots[2];
    bool slot_used[2] = { false, false };
    struct linux_vm *from = &vm;
    /* Each hop's clock check spans from the reading after the hop before
     * (or this one) to the reading after it: the guest's clock runs at the
     * host's rate in between, so only the migration can open a gap. */
    struct clock_reading before = next_clock_reading(&vm.process, 0);
    unsigned kvmclock_hop = hops >= 2 ? hops / 2 : UINT_MAX;
    char release[128];
    snprintf(release, sizeof(release), "%s/release", vm.directory);
    for (unsigned hop = 0; hop < hops; hop++) {
        struct linux_vm *to = &slots[hop % 2];
        if (slot_used[hop % 2])
            linux_vm_end_process(to);   /* it sent the guest on the hop before */
        char incoming[160];
        snprintf(incoming, sizeof(incoming), "unix:%s/incoming-%u.sock", vm.directory, hop);
        /* The guest's clocksource is the TSC (its kernel prefers it to
         * kvm-clock on a host with a stable TSC), which KVM_SET_CLOCK does
         * not touch: from the middle hop on it reads kvm-clock instead,
         * switched at run time (the image's /bin/clocksource: typed input
         * is echoed at ~20 characters a second on PVM hosts, so the
         * command is short), so the clock check also covers ringvm's
         * KVM_SET_CLOCK (the TSC alone kept the clock right on this PVM
         * host even when ringvm restored it 2 s behind). */
        if (hop == kvmclock_hop) {
            /* Waits on the --serial copy of the answer: the echo alone
             * takes seconds beside another guest. */
            console_type(from, "clocksource kvm-clock");
            cr_assert(harness_process_wait_output(&from->process, "clocksource=kvm-clock", 1, 60000),
                      "the guest did not switch to kvm-clock; stdout: %s", from->process.out);
        }
        /* The first hop on each clocksource has a long downtime
         * (CLOCK_HOLD_MS): there the clock check tells a clock that runs
         * through the downtime from one that stops for it. */
        bool hold = hop == 0 || hop == kvmclock_hop;
        linux_destination_start_at(to, vm.directory, hop, incoming, NULL, hold ? "end" : NULL, hold ? release : NULL);
        slot_used[hop % 2] = true;
        int64_t downtime_us = hold ? linux_migrate_holding_at_end(from, to, incoming, release)
                                   : linux_migrate(from, incoming);
        fprintf(stderr, "ping-pong: hop %u of %u completed (to %s)\n", hop + 1, hops, incoming);
        /* Everything the guest printed on the source since it was last
         * checked there (a warning while it ran there between hops would
         * otherwise only show as "Tainted: W" in a later one's). */
        harness_process_read_available(&from->process);
        const char *complaint = kernel_complaint_after(&from->process, from_checked, false);
        cr_assert_null(complaint, "hop %u: the guest printed \"%s\" on the source: %s", hop, complaint,
                       from->process.out + from_checked);
        struct clock_reading after = next_clock_reading(&to->process, 1);
        assert_clock_advanced_with_the_host(hop, before, after, downtime_us);
        before = after;
        /* Tells a guest that stopped from one whose console went silent. */
        struct guest_progress progress = { .vm = to };
        guest_pages_written(to, progress.from);
        cr_assert(harness_wait_until(guest_wrote_more, &progress, 60000),
                  "hop %u: the guest's vCPUs do not run on the destination; stdout: %s\nstderr: %s", hop,
                  to->process.out, to->process.err);
        linux_guest_carries_on_with(to, cmdline);
        cr_assert_null(strstr(from->process.out, "MISMATCH"), "hop %u source stdout: %s", hop, from->process.out);
        from = to;
        from_checked = to->process.out_length;
    }
    console_answers(from, "echo ringvm-$((6*7))", "ringvm-42");
    cr_assert(harness_process_wait_output(&from->process, "ringvm-42", 1, 30000), "stdout: %s", from->process.out);
    /* Timers after ten moves: one-second timeouts in the shell (`read -t
     * 1`, a builtin: no process is created, which costs ~1 s of emulated
     * page faults on PVM hosts) wake on the LAPIC's TSC-deadline timer.
     * Measured by the guest's own clock (/proc/uptime, read by builtins),
     * three times: each must end (a timer that stopped firing leaves no
     * answer) and take at least a second, and the quickest under 2 s (a
     * timer firing late is late every time; the shell's wake-up beside two
     * busy ledger threads on a loaded host is not: 1.03-1.05 s for the
     * quickest of three beside one other test, 1.13-1.29 s in full make
     * test runs, so the bound says "fires, about on time", no finer).
     * (Against this host's clock nothing can be asserted from here: ringctl
     * console listens a fixed time after the input.) */
    /* ringctl waits for the line after the three answers (the echoed
     * command has $((5+5)), not 10): three reads of a second each, echoed
     * slowly beside the ledger's output on a loaded host. */
    char *timing = console_exchange_for(from, "for i in 1 2 3; do read a _ </proc/uptime; read -t 1 x; "
                                              "read b _ </proc/uptime; echo slept $a $b; done; echo timed-$((5+5))",
                                        "timed-10", 30000);
    double quickest = 1e9;
    unsigned answers = 0;
    for (const char *at = strstr(timing, "slept "); at != NULL; at = strstr(at + 1, "slept ")) {
        double start_uptime, end_uptime;
        if (sscanf(at, "slept %lf %lf", &start_uptime, &end_uptime) != 2)
            continue;   /* the echoed command line ("slept $a $b") */
        double seconds = end_uptime - start_uptime;
        cr_assert(seconds >= 1.0 && seconds < 5.0, "read -t 1 took %.2f s by the guest's clock (%s)", seconds,
                  timing);
        quickest = seconds < quickest ? seconds : quickest;
        answers++;
    }
    cr_assert_eq(answers, 3, "timed reads answered: %u of 3 (%s)", answers, timing);
    cr_assert_lt(quickest, 2.0, "the quickest read -t 1 took %.2f s by the guest's clock (%s)", quickest, timing);
    fprintf(stderr, "ping-pong: read -t 1 after the last hop: quickest of 3 %.2f s by the guest's clock\n",
            quickest);
    free(timing);
    assert_no_kernel_complaint(&from->process, "after ten migrations");
    for (unsigned slot = 0; slot < 2; slot++)
        if (slot_used[slot])
            linux_vm_end_process(&slots[slot]);
    linux_vm_stop(&vm);
}
