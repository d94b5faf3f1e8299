/* ringctl's migration commands in the test process (tests/ringctl_in_process.h). */
#include "tests/ringctl_in_process.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "api/ringctl_migration.h"
#include "api/ringctl_session.h"

static int run_once(int argc, char **argv, const char *socket_path, bool json)
{
    struct ringctl_session session = { .socket = socket_path, .timeout_ms = 60000, .json = json };
    int status = ringctl_migration_main(argc, argv, &session);
    ringctl_session_close(&session);
    return status;
}

int ringctl_in_process(int argc, char **argv, const char *socket_path, bool json, char **out)
{
    if (out == NULL)
        return run_once(argc, argv, socket_path, json);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    cr_assert_geq(saved, 0, "dup(stdout): %s", strerror(errno));
    int capture = memfd_create("ringctl-stdout", MFD_CLOEXEC);
    cr_assert_geq(capture, 0, "memfd_create: %s", strerror(errno));
    cr_assert_eq(dup2(capture, STDOUT_FILENO), STDOUT_FILENO, "dup2: %s", strerror(errno));
    int status = run_once(argc, argv, socket_path, json);
    fflush(stdout);
    cr_assert_eq(dup2(saved, STDOUT_FILENO), STDOUT_FILENO, "dup2: %s", strerror(errno));
    close(saved);
    off_t size = lseek(capture, 0, SEEK_END);
    cr_assert_geq(size, 0, "lseek: %s", strerror(errno));
    *out = calloc(1, (size_t)size + 1);
    cr_assert_not_null(*out);
    cr_assert_eq(pread(capture, *out, (size_t)size, 0), size, "pread: %s", strerror(errno));
    close(capture);
    return status;
}
