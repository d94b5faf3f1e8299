/*
 * `ringvm --bpf` where BPF cannot load, as a user runs it (the real
 * program, through its API socket): it warns once, the guest runs on,
 * bpf.stats and bpf.start answer `unavailable` with the real reason, and
 * vm.shutdown still ends it with status 0. Two causes: RINGVM_BPF_DISABLE=1
 * and a process without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN.
 *
 * Threads: the test's only; the child between fork and exec
 * (harness_spawn_prepared) drops the capabilities with prctl and capset.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/client.h"
#include "bpf/probes.h"
#include "tests/harness.h"

#define CALL_TIMEOUT_MS 10000

/* Privileges the BPF loader needs; ringvm needs none of them for /dev/kvm
 * (root owns it: a plain DAC check) or anything else it does. */
static const int bpf_capabilities[] = { CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN };

/* In the child: drops the BPF capabilities from the bounding set (so exec
 * as root cannot get them back) and from the effective, permitted and
 * inheritable sets. Returns 0 or the errno of the call that failed. */
static int drop_bpf_capabilities(void)
{
    for (size_t i = 0; i < sizeof(bpf_capabilities) / sizeof(bpf_capabilities[0]); i++)
        if (prctl(PR_CAPBSET_DROP, bpf_capabilities[i], 0, 0, 0) != 0)
            return errno;
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &header, data) != 0)
        return errno;
    for (size_t i = 0; i < sizeof(bpf_capabilities) / sizeof(bpf_capabilities[0]); i++) {
        int cap = bpf_capabilities[i];
        uint32_t bit = 1u << (cap % 32);
        data[cap / 32].effective &= ~bit;
        data[cap / 32].permitted &= ~bit;
        data[cap / 32].inheritable &= ~bit;
    }
    if (syscall(SYS_capset, &header, data) != 0)
        return errno;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return errno;
    return 0;
}

/* Does dropping work here at all? Tried in a throwaway child. */
static bool can_drop_capabilities(char *why, size_t size)
{
    pid_t child = fork();
    if (child < 0) {
        snprintf(why, size, "fork: %s", strerror(errno));
        return false;
    }
    if (child == 0)
        _exit(drop_bpf_capabilities());
    int status = 0;
    if (waitpid(child, &status, 0) != child) {
        snprintf(why, size, "waitpid: %s", strerror(errno));
        return false;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(why, size, "dropping CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN failed: %s",
                 WIFEXITED(status) ? strerror(WEXITSTATUS(status)) : "child killed");
        return false;
    }
    return true;
}

struct connect_wait {
    const char *path;
    struct api_client *client;
};

static bool try_connect(void *argument)
{
    struct connect_wait *wait = argument;
    char error[256];
    return api_client_connect(&wait->client, wait->path, error, sizeof(error)) == 0;
}

static uint64_t pages_written(struct api_client *client)
{
    json_t *result = NULL;
    struct api_error error;
    int rc = api_client_call(client, "vm.guest-stats", NULL, &result, &error, CALL_TIMEOUT_MS);
    cr_assert_eq(rc, 0, "vm.guest-stats: %d %s", rc, error.message);
    uint64_t total = 0;
    size_t index;
    json_t *vcpu;
    json_array_foreach(json_object_get(result, "vcpus"), index, vcpu)
        total += (uint64_t)json_integer_value(json_object_get(vcpu, "pages_written"));
    json_decref(result);
    return total;
}

struct advance_wait {
    struct api_client *client;
    uint64_t target;
};

static bool pages_reached(void *argument)
{
    struct advance_wait *wait = argument;
    return pages_written(wait->client) >= wait->target;
}

/* Calls cmd and expects error `unavailable`; returns its message (static). */
static const char *expect_unavailable(struct api_client *client, const char *cmd)
{
    static char message[API_MESSAGE_MAX];
    json_t *result = NULL;
    struct api_error error;
    int rc = api_client_call(client, cmd, NULL, &result, &error, CALL_TIMEOUT_MS);
    cr_assert_eq(rc, 1, "%s: expected an error reply, got %d", cmd, rc);
    cr_assert_str_eq(api_error_code_name(error.code), "unavailable", "%s: %s", cmd, error.message);
    snprintf(message, sizeof(message), "%s", error.message);
    return message;
}

static unsigned count_bpf_lines(const char *text)
{
    unsigned lines = 0;
    const char *line = text;
    while (*line != '\0') {
        const char *end = strchr(line, '\n');
        size_t length = end ? (size_t)(end - line) : strlen(line);
        if (memmem(line, length, "bpf", 3) != NULL || memmem(line, length, "BPF", 3) != NULL)
            lines++;
        line += length + (end != NULL);
    }
    return lines;
}

/* Runs ringvm --bpf with a dirtier guest and an API socket, checks the
 * unavailable path end to end. reason: what the messages must contain. */
static void run_unavailable(bool drop_privilege, const char *reason)
{
    char directory[] = "/tmp/ringvm-bpf-cli-XXXXXX";
    cr_assert_not_null(mkdtemp(directory), "mkdtemp: %s", strerror(errno));
    char socket_path[sizeof(directory) + 16];
    snprintf(socket_path, sizeof(socket_path), "%s/api.sock", directory);
    char *argv[] = { (char *)harness_program("ringvm"), "--memory", "128M", "--vcpus", "2", "--workload",
                     "dirtier,wss=16M", "--serial", "none", "--bpf", "--api-socket", socket_path, NULL };
    struct harness_process process;
    /* A failed drop in the child: exit 126 with the reason on stderr. */
    harness_spawn_prepared(&process, argv, drop_privilege ? drop_bpf_capabilities : NULL);

    struct connect_wait connect = { socket_path, NULL };
    bool connected = harness_wait_until(try_connect, &connect, 20000);
    if (!connected) {
        int status = harness_process_wait_exit(&process, 1000);
        cr_assert_fail("no API socket at %s (ringvm status %d), stderr:\n%s", socket_path, status, process.err);
    }
    struct api_client *client = connect.client;

    /* The guest runs on. */
    struct advance_wait advance = { client, pages_written(client) + 20000 };
    cr_assert(harness_wait_until(pages_reached, &advance, 20000), "the guest's counters did not advance");

    /* Both answer unavailable with the real reason. */
    const char *message = expect_unavailable(client, "bpf.stats");
    cr_assert(strstr(message, reason) != NULL, "bpf.stats: '%s' does not contain '%s'", message, reason);
    cr_assert(strncmp(message, "BPF unavailable: ", 17) == 0, "bpf.stats: %s", message);
    message = expect_unavailable(client, "bpf.start");
    cr_assert(strstr(message, reason) != NULL, "bpf.start: '%s' does not contain '%s'", message, reason);
    message = expect_unavailable(client, "bpf.stats");
    cr_assert(strstr(message, reason) != NULL, "bpf.stats after bpf.start: %s", message);
    /* Still running after the failed bpf.start. */
    advance.target = pages_written(client) + 20000;
    cr_assert(harness_wait_until(pages_reached, &advance, 20000), "the guest stopped after bpf.start");

    json_t *result = NULL;
    struct api_error error;
    cr_assert_eq(api_client_call(client, "vm.shutdown", NULL, &result, &error, CALL_TIMEOUT_MS), 0, "vm.shutdown: %s",
                 error.message);
    json_decref(result);
    api_client_close(client);
    int status = harness_process_wait_exit(&process, 20000);
    cr_assert_eq(status, 0, "ringvm exited %d, stderr:\n%s", status, process.err);

    /* Warned exactly once, with the reason. */
    cr_assert_eq(count_bpf_lines(process.err), 1, "stderr:\n%s", process.err);
    cr_assert(strstr(process.err, "ringvm: --bpf: BPF probes unavailable, running without them: ") != NULL,
              "stderr:\n%s", process.err);
    cr_assert(strstr(process.err, reason) != NULL, "stderr does not name '%s':\n%s", reason, process.err);
    harness_process_free(&process);
    unlink(socket_path);
    rmdir(directory);
}

Test(bpf_cli, disabled_by_environment_warns_once_and_runs_on, .timeout = 90)
{
    harness_require_kvm();
    const char *why = NULL;
    const char *reason = "disabled by RINGVM_BPF_DISABLE=1";
    if (!bpf_probes_built(&why))
        reason = why;   /* a build without BPF says so instead */
    cr_assert_eq(setenv("RINGVM_BPF_DISABLE", "1", 1), 0);
    run_unavailable(false, reason);
    unsetenv("RINGVM_BPF_DISABLE");
}

Test(bpf_cli, without_privilege_warns_once_and_runs_on, .timeout = 90)
{
    harness_require_kvm();
    const char *why = NULL;
    if (!bpf_probes_built(&why))
        harness_skip("built without BPF (%s): the environment test covers this build", why);
    char drop_error[256];
    if (!can_drop_capabilities(drop_error, sizeof(drop_error)))
        harness_skip("cannot run ringvm without the BPF privileges here: %s", drop_error);
    unsetenv("RINGVM_BPF_DISABLE");
    /* EPERM from the kernel, named by the loader. */
    run_unavailable(true, "Operation not permitted");
}
