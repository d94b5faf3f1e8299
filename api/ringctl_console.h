/* `ringctl console` (api/ringctl_console.c): attach the terminal to a
 * ringvm console socket (ringvm --console unix:PATH, vmm/console.h). */
#ifndef RINGVM_API_RINGCTL_CONSOLE_H
#define RINGVM_API_RINGCTL_CONSOLE_H

/* The byte that detaches (Ctrl-]), from a terminal or a pipe alike. */
#define RINGCTL_CONSOLE_ESCAPE_BYTE 0x1d

/*
 * Connects to socket_path and copies stdin to the socket and the socket to
 * stdout until Ctrl-] (exit 0, "ringctl console: detached" on stderr), the
 * console closes the connection (exit 0), or - after stdin's EOF, with
 * after_eof_timeout_ms > 0 - that many ms pass (exit 0; 0 = no limit).
 * With `until` (NULL or "" = none) it also ends as soon as the guest's
 * output since attaching contains that text (exit 0); the timeout or the
 * console closing before it was seen is then exit 1 with a message.
 * A terminal stdin is put in raw mode and restored on every exit
 * (including SIGINT/SIGTERM/SIGHUP, which then end ringctl as usual).
 * Returns ringctl's exit status: RINGCTL_EXIT_CONNECT when it cannot
 * connect or the connection breaks.
 */
int ringctl_console_run(const char *socket_path, int after_eof_timeout_ms, const char *until);

#endif
