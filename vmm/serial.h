/*
 * The console's output side: where guest console text goes.
 *
 *   - The built-in guest: a minimal 8250 on 0x3f8 (transmit only: THR, LSR
 *     always "empty") and text sent through the doorbell. Lines are
 *     assembled per vCPU and written whole, so lines of two vCPUs never
 *     interleave.
 *   - A Linux guest: the bytes its 16550A (vmm/uart.c) transmits, through
 *     serial_write_bytes: written to the sink at once, unbuffered (prompts,
 *     escape sequences and partial lines show up as they come), and also
 *     assembled into lines (one stream, not per vCPU: a line the guest
 *     kernel starts on one CPU may be finished by its interrupt handler on
 *     another) for the on_line callback.
 * Every byte written to the sink also goes to the output listener (the
 * console socket's readers), raw bytes as they come and built-in lines with
 * their '\n'.
 *
 * Ownership: written by any vCPU thread; everything below the config is
 * under `lock`. Observers (tests) set on_line before vm_start; the console
 * sets the output listener with serial_set_output_listener. The sink write
 * and both callbacks run under `lock`: callbacks must not call back into
 * serial. Lock order: uart lock -> serial lock -> the listener's locks.
 */
#ifndef RINGVM_VMM_SERIAL_H
#define RINGVM_VMM_SERIAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* SERIAL_STDIO writes to stdout like SERIAL_STDOUT; the difference (stdin
 * feeds the guest's UART) is the console's (vmm/console.h). */
enum serial_mode { SERIAL_STDOUT = 0, SERIAL_NONE, SERIAL_FILE, SERIAL_STDIO };

struct serial_config {
    enum serial_mode mode;
    char path[256];             /* SERIAL_FILE */
};

typedef void (*serial_line_callback)(const char *line, size_t length, void *opaque);
/* Output bytes exactly as written to the sink. */
typedef void (*serial_output_callback)(const uint8_t *bytes, size_t length, void *opaque);

#define SERIAL_MAX_LINE 1024
#define SERIAL_MAX_VCPUS 64
/* partial[] index of the UART's byte stream (after the per-vCPU lines). */
#define SERIAL_UART_STREAM SERIAL_MAX_VCPUS

struct serial {
    pthread_mutex_t lock;
    int fd;                     /* -1 = discard */
    bool owns_fd;
    uint8_t line_control;       /* LCR, so DLAB writes are ignored */
    serial_line_callback on_line;
    void *on_line_opaque;
    serial_output_callback on_output;
    void *on_output_opaque;
    /* Partial line per vCPU (index = vCPU) and of the UART stream
     * (SERIAL_UART_STREAM), under lock. */
    char partial[SERIAL_MAX_VCPUS + 1][SERIAL_MAX_LINE];
    size_t partial_length[SERIAL_MAX_VCPUS + 1];
};

int serial_init(struct serial *serial, const struct serial_config *config);
void serial_destroy(struct serial *serial);
/* Port I/O on 0x3f8..0x3ff from vCPU `source`. Returns true if handled. */
bool serial_port_io(struct serial *serial, unsigned source, uint16_t port, bool is_write,
                    uint8_t *data, uint32_t size);
/* Text from vCPU `source` (doorbell console write); split into lines. */
void serial_write_text(struct serial *serial, unsigned source, const char *text, size_t length);
/* Raw bytes the UART transmitted (any thread; the UART's transmit
 * callback): to the sink and the output listener at once, and into lines
 * for on_line ('\r' dropped there only). */
void serial_write_bytes(struct serial *serial, const uint8_t *bytes, size_t length);
/* Sets (or with NULL clears) the output listener. After it returns, the
 * previous listener is not running and will not be called again. */
void serial_set_output_listener(struct serial *serial, serial_output_callback on_output, void *opaque);
/* Parses "stdout", "none", "file:PATH", "stdio". */
int serial_config_parse(const char *text, struct serial_config *config, char *error, size_t error_size);

#endif
