/*
 * A pseudo-terminal standing in for the user's terminal in the tests of
 * ringvm's --serial stdio and of ringctl (console, migrate's prompt): the
 * slave is what the program under test gets as its terminal, the master is
 * the user's side (what they type, what they see).
 *
 * Ownership: one test owns each struct pseudo_terminal and closes it with
 * pseudo_terminal_close; nothing is shared between threads.
 */
#ifndef RINGVM_TESTS_PSEUDO_TERMINAL_H
#define RINGVM_TESTS_PSEUDO_TERMINAL_H

#include <stdbool.h>
#include <termios.h>

struct pseudo_terminal {
    int master, slave;
    struct termios original;    /* the slave's attributes when it was opened */
};

/* Opens both ends (close-on-exec, not the controlling terminal); skips the
 * test with the reason where the system has no pseudo-terminals. */
void pseudo_terminal_open(struct pseudo_terminal *terminal);
/* The slave is in raw mode (no ICANON, ECHO, ISIG, ICRNL); for
 * harness_wait_until, so it takes a void *. */
bool pseudo_terminal_is_raw(void *terminal);
/* The slave's attributes are the ones it was opened with. */
void pseudo_terminal_assert_restored(const struct pseudo_terminal *terminal);
void pseudo_terminal_close(struct pseudo_terminal *terminal);

#endif
