/* See pseudo_terminal.h. */
#include "tests/pseudo_terminal.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/harness.h"

void pseudo_terminal_open(struct pseudo_terminal *terminal)
{
    terminal->master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (terminal->master < 0)
        harness_skip("no pseudo-terminal here (posix_openpt: %s)", strerror(errno));
    cr_assert_eq(grantpt(terminal->master), 0);
    cr_assert_eq(unlockpt(terminal->master), 0);
    const char *name = ptsname(terminal->master);
    cr_assert_not_null(name);
    terminal->slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(terminal->slave, 0, "open %s: %s", name, strerror(errno));
    cr_assert_eq(tcgetattr(terminal->slave, &terminal->original), 0);
}

bool pseudo_terminal_is_raw(void *argument)
{
    const struct pseudo_terminal *terminal = argument;
    struct termios now;
    return tcgetattr(terminal->slave, &now) == 0 && !(now.c_lflag & (ICANON | ECHO | ISIG)) &&
           !(now.c_iflag & ICRNL);
}

void pseudo_terminal_assert_restored(const struct pseudo_terminal *terminal)
{
    struct termios now;
    cr_assert_eq(tcgetattr(terminal->slave, &now), 0);
    cr_assert_eq(now.c_lflag, terminal->original.c_lflag, "c_lflag 0x%x, was 0x%x", (unsigned)now.c_lflag,
                 (unsigned)terminal->original.c_lflag);
    cr_assert_eq(now.c_iflag, terminal->original.c_iflag);
    cr_assert_eq(now.c_oflag, terminal->original.c_oflag);
    cr_assert_eq(now.c_cflag, terminal->original.c_cflag);
}

void pseudo_terminal_close(struct pseudo_terminal *terminal)
{
    close(terminal->slave);
    close(terminal->master);
}
