/*
 * The raw terminal mode shared by `ringvm --serial stdio` (vmm/console.c)
 * and `ringctl console` (api/ringctl_console.c): every key goes to the guest
 * as typed (no line editing, no echo, Ctrl-C and Ctrl-Z are bytes, not
 * signals), 8-bit clean. Output processing stays on, so the tools' own
 * "\n"-terminated messages still start at column 0. Each caller keeps its
 * own saved mode and restores it on every exit path.
 */
#ifndef RINGVM_VMM_TERMINAL_H
#define RINGVM_VMM_TERMINAL_H

#include <termios.h>

/* Turns `settings` (from tcgetattr) into the raw mode above. */
static inline void terminal_make_settings_raw(struct termios *settings)
{
    settings->c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    settings->c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    settings->c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    settings->c_cflag |= CS8;
    settings->c_cc[VMIN] = 1;
    settings->c_cc[VTIME] = 0;
}

#endif
