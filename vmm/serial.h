/*
 * A minimal 8250 UART on 0x3f8 (transmit only: THR, LSR always "empty"),
 * plus the sink for console text the guest sends through the doorbell.
 *
 * Ownership: written by any vCPU thread; output lines are assembled per
 * vCPU and written whole under the serial lock, so lines from two vCPUs
 * never interleave. Observers (tests, API) register a line callback before
 * vm_start.
 */
#ifndef RINGVM_VMM_SERIAL_H
#define RINGVM_VMM_SERIAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum serial_mode { SERIAL_STDOUT = 0, SERIAL_NONE, SERIAL_FILE };

struct serial_config {
    enum serial_mode mode;
    char path[256];             /* SERIAL_FILE */
};

typedef void (*serial_line_callback)(const char *line, size_t length, void *opaque);

#define SERIAL_MAX_LINE 1024
#define SERIAL_MAX_VCPUS 64

struct serial {
    pthread_mutex_t lock;
    int fd;                     /* -1 = discard */
    bool owns_fd;
    uint8_t line_control;       /* LCR, so DLAB writes are ignored */
    serial_line_callback on_line;
    void *on_line_opaque;
    /* Per-vCPU partial line (index = vCPU), under lock. */
    char partial[SERIAL_MAX_VCPUS][SERIAL_MAX_LINE];
    size_t partial_length[SERIAL_MAX_VCPUS];
};

int serial_init(struct serial *serial, const struct serial_config *config);
void serial_destroy(struct serial *serial);
/* Port I/O on 0x3f8..0x3ff from vCPU `source`. Returns true if handled. */
bool serial_port_io(struct serial *serial, unsigned source, uint16_t port, bool is_write,
                    uint8_t *data, uint32_t size);
/* Text from vCPU `source` (doorbell console write); split into lines. */
void serial_write_text(struct serial *serial, unsigned source, const char *text, size_t length);
/* Parses "stdout", "none", "file:PATH". */
int serial_config_parse(const char *text, struct serial_config *config, char *error, size_t error_size);

#endif
