/* The emulated hosts of a test (tests/netns/hosts.sh); see hosts.h. */
#include "tests/netns/hosts.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/harness.h"

/* The pair of this test process; "" when none is up. */
static char hosts_current[16];

int hosts_shell(const char *format, ...)
{
    char command[2048];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(command, sizeof(command), format, arguments);
    va_end(arguments);
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

void hosts_require(void)
{
    harness_require_kvm();
    if (geteuid() != 0)
        harness_skip("needs root: network namespaces (" HOSTS_SCRIPT ")");
    if (access(HOSTS_SCRIPT, X_OK) != 0)
        harness_skip("run from the repository root (" HOSTS_SCRIPT " not found)");
    if (hosts_shell("command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1") != 0)
        harness_skip("iproute2 (ip) and nftables (nft) are needed for the emulated hosts");
}

void hosts_up(const char *name, const char *options)
{
    cr_assert_lt(strlen(name), sizeof(hosts_current), "hosts name '%s' is longer than %zu characters", name,
                 sizeof(hosts_current) - 1);
    snprintf(hosts_current, sizeof(hosts_current), "%s", name);
    /* --owner: hosts.sh sweeps the hosts of a test that was killed
     * before its fini (timeout, crash), never those of a live one. */
    cr_assert_eq(hosts_shell(HOSTS_SCRIPT " up %s --owner %d %s >&2", hosts_current, (int)getpid(), options), 0,
                 HOSTS_SCRIPT " up %s %s failed", hosts_current, options);
}

void hosts_down(void)
{
    if (hosts_current[0] == '\0')
        return;
    hosts_shell(HOSTS_SCRIPT " down %s", hosts_current);
    hosts_current[0] = '\0';
}

const char *hosts_name(void)
{
    return hosts_current;
}

void hosts_address(const char *side, bool delayed, char *out, size_t size)
{
    char command[256];
    snprintf(command, sizeof(command), HOSTS_SCRIPT " addr %s %s%s", hosts_current, side,
             delayed ? " --delayed" : "");
    FILE *pipe = popen(command, "r");
    cr_assert_not_null(pipe, "popen %s failed", command);
    cr_assert_not_null(fgets(out, (int)size, pipe), "%s printed nothing", command);
    pclose(pipe);
    out[strcspn(out, "\n")] = '\0';
}

unsigned hosts_exec_prefix(char **argv, const char *side)
{
    if (side == NULL)
        return 0;
    argv[0] = HOSTS_SCRIPT;
    argv[1] = "exec";
    argv[2] = hosts_current;
    argv[3] = (char *)side;
    return 4;
}
