/*
 * The interactive console: one thread ("console") that feeds the guest's
 * UART from stdin (--serial stdio) and serves the console socket
 * (--console unix:PATH) that `ringctl console` attaches to.
 *
 * Output: the console registers itself as serial's output listener, so
 * every byte the guest prints (and every built-in guest line) is copied to
 * each socket client's own 64 KiB buffer, from the moment it attached.
 * Stdout is serial's sink, not the console's business.
 *
 * Slow readers: the copy never blocks the vCPU thread that printed, nor
 * other clients. When a client's buffer is full its bytes are dropped and
 * counted; once it has room again it first receives
 *   "\r\n[ringvm console: N bytes of output dropped: this client reads too slowly]\r\n".
 *
 * Input: several clients may read; one writes. The first client that sends
 * a byte becomes the writer until it disconnects or shuts down its sending
 * side; another client's input is discarded and it is told once per writer
 * "\r\n[ringvm console: input refused: another client (pid P) is typing]\r\n".
 * Stdin (--serial stdio) is the operator's and always writes. Input is
 * queued (4 KiB) and handed to uart_receive; what the FIFO does not take is
 * retried when the guest drains it (the UART's rx_space callback), and no
 * more input is read meanwhile, so a fast sender is slowed, never dropped.
 *
 * Stdin: read in raw mode when it is a terminal (no echo, no line editing,
 * no signals: Ctrl-C goes to the guest; output post-processing stays on).
 * The terminal's mode is restored by console_destroy and by an atexit
 * handler (fatal signals cannot restore it). Ctrl-] (0x1d) typed on that
 * terminal stops ringvm (SIGTERM to itself), the way out of a guest that
 * owns Ctrl-C. A terminal where ringvm is not in the foreground process
 * group is not read. Non-terminal stdin is read as it is, with no escape;
 * at EOF ringvm simply stops reading it.
 *
 * Ownership: struct console is private to console.c; the creating thread
 * calls console_create/console_destroy, the console thread owns the
 * socket connections, and the output listener (any vCPU thread) shares the
 * client output buffers with it under the console's lock. Lock order: uart
 * lock -> serial lock -> console lock; the console thread never calls into
 * the uart or serial while holding its lock.
 */
#ifndef RINGVM_VMM_CONSOLE_H
#define RINGVM_VMM_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONSOLE_MAX_CLIENTS 16
#define CONSOLE_CLIENT_BUFFER_BYTES (64u * 1024)

struct serial;
struct uart;
struct console;

struct console_config {
    bool stdio;                 /* read stdin (--serial stdio) */
    const char *socket_path;    /* --console unix:PATH; NULL = no socket */
};

/*
 * Starts the console thread. uart may be NULL (the built-in guest has no
 * UART input): socket clients then only read, and their input is refused.
 * Call after serial_init and after the UART exists, before vm_start (so
 * readers and stdin are ready when the guest prints). The socket follows
 * the API socket's rules (mode 0600, a live path refused, a stale one
 * replaced, peers of another uid but root refused; vmm/unix_listener.h);
 * errors name "--console PATH". Returns 0 or -errno (message on stderr).
 */
int console_create(struct console **out, struct serial *serial, struct uart *uart,
                   const struct console_config *config);

/* Gives a console created without a UART the guest's (a migration's
 * destination learns that its guest is Linux, with a UART, only from the
 * stream: vm->uart_created). From then on socket clients and stdin type
 * into it. Once; a console that has a UART keeps it. Any thread; NULL
 * console: no-op. */
void console_attach_uart(struct console *console, struct uart *uart);

/* Detaches from serial and the uart, sends each client what is already
 * buffered (without waiting), closes the connections and the socket
 * (unlinked), joins the thread, restores the terminal. NULL is a no-op.
 * Call before uart_destroy and serial_destroy. */
void console_destroy(struct console *console);

/*
 * Moving the clients with the guest (issue 14). The source of a migration
 * whose destination has a console socket (migration.start's `console`)
 * hands every client of this console over to it, so `ringctl console`
 * keeps running across the migration:
 *
 * console_handover_prepare connects, from this process, one socket to the
 * destination's console (destination_path) per client attached now. Call
 * it before the guest can run there (the source calls it when it pauses
 * the guest for the switch-over), so the destination's console keeps
 * everything its guest prints from then on for them. Returns the number
 * of connections made (0 with no client or no console), or -errno with
 * error saying why ("console hand-over: connect(unix:PATH): No such file
 * or directory"); then nothing is kept.
 *
 * console_handover_commit: the guest runs there now. Every client gets,
 * after the output it was still owed,
 *   "\r\n[ringvm console: the guest moved to WHERE; this console continues there]\r\n"
 * with its prepared connection riding on the first byte (SCM_RIGHTS), and
 * is then closed here; `ringctl console` carries on over that connection,
 * any other client sees the line and the end. A client without one
 * (attached after prepare, or attaching from now on) gets
 *   "\r\n[ringvm console: the guest moved to WHERE; attach to its console there]\r\n"
 * and is closed. Waits until every client was served or timeout_ms
 * passed (0: returns at once, the notices go out meanwhile; calling it
 * again waits for them); returns how many were handed a connection so far. WHERE is printed as
 * given (non-printable bytes as '?'), at most CONSOLE_HANDOVER_TEXT_MAX - 1
 * bytes.
 *
 * console_handover_cancel: the migration failed and the guest stays here:
 * the prepared connections are closed, the clients keep this console.
 *
 * Any thread but the console thread; a NULL console is a no-op (0).
 */
#define CONSOLE_HANDOVER_TEXT_MAX 400
int console_handover_prepare(struct console *console, const char *destination_path, char *error, size_t error_size);
int console_handover_commit(struct console *console, const char *where, unsigned timeout_ms);
void console_handover_cancel(struct console *console);

struct console_stats {
    unsigned clients;           /* connected now */
    bool has_writer;            /* a socket client holds the writer role */
    uint64_t dropped_bytes;     /* output bytes dropped for slow clients, all time */
    uint64_t input_bytes;       /* bytes handed to the UART, all time */
};
void console_get_stats(struct console *console, struct console_stats *stats);

#endif
