/*
 * Console output (serial.h). The built-in guest's minimal 8250: the guest
 * only transmits; THR writes are collected into lines per source vCPU; LSR
 * always reports an empty transmitter so the guest never waits. Doorbell
 * console text joins the same line buffers. A Linux guest's UART bytes come
 * through serial_write_bytes instead.
 */
#include "vmm/serial.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "guest/abi.h"

enum {
    UART_THR = 0,      /* transmit holding (write), DLAB=0 */
    UART_IER = 1,
    UART_IIR = 2,
    UART_LCR = 3,
    UART_MCR = 4,
    UART_LSR = 5,
    UART_MSR = 6,
    UART_SCR = 7,
    UART_LCR_DLAB = 0x80,
    UART_LSR_THRE = 0x20,
    UART_LSR_TEMT = 0x40,
    UART_IIR_NO_INTERRUPT = 0x01,
};

int serial_config_parse(const char *text, struct serial_config *config, char *error, size_t error_size)
{
    memset(config, 0, sizeof(*config));
    if (strcmp(text, "stdout") == 0) {
        config->mode = SERIAL_STDOUT;
    } else if (strcmp(text, "none") == 0) {
        config->mode = SERIAL_NONE;
    } else if (strcmp(text, "stdio") == 0) {
        config->mode = SERIAL_STDIO;
    } else if (strncmp(text, "file:", 5) == 0 && text[5] != '\0') {
        if (strlen(text + 5) >= sizeof(config->path)) {
            snprintf(error, error_size, "--serial: path too long");
            return -1;
        }
        config->mode = SERIAL_FILE;
        strcpy(config->path, text + 5);
    } else {
        snprintf(error, error_size, "--serial: '%s': expected stdout, stdio, none or file:PATH", text);
        return -1;
    }
    return 0;
}

int serial_init(struct serial *serial, const struct serial_config *config)
{
    memset(serial, 0, sizeof(*serial));
    pthread_mutex_init(&serial->lock, NULL);
    serial->fd = -1;
    switch (config->mode) {
    case SERIAL_STDOUT:
    case SERIAL_STDIO:
        serial->fd = STDOUT_FILENO;
        break;
    case SERIAL_NONE:
        break;
    case SERIAL_FILE:
        serial->fd = open(config->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (serial->fd < 0) {
            int saved = errno;
            fprintf(stderr, "ringvm: --serial file:%s: %s\n", config->path, strerror(saved));
            pthread_mutex_destroy(&serial->lock);
            return -saved;
        }
        serial->owns_fd = true;
        break;
    }
    return 0;
}

/* To the sink and the output listener; caller holds the lock. */
static void output(struct serial *serial, const char *bytes, size_t length)
{
    if (serial->fd >= 0) {
        size_t written = 0;
        while (written < length) {
            ssize_t result = write(serial->fd, bytes + written, length - written);
            if (result < 0 && errno == EINTR)
                continue;
            if (result <= 0)
                break; /* console output is best effort; never stall a vCPU on it */
            written += (size_t)result;
        }
    }
    if (serial->on_output != NULL)
        serial->on_output((const uint8_t *)bytes, length, serial->on_output_opaque);
}

/* Emits a completed line; caller holds the lock. The UART stream's bytes
 * went out raw already: only on_line sees its lines. */
static void emit_line(struct serial *serial, unsigned source)
{
    char *line = serial->partial[source];
    size_t length = serial->partial_length[source];
    if (source != SERIAL_UART_STREAM) {
        line[length] = '\n';
        output(serial, line, length + 1);
    }
    line[length] = '\0';
    if (serial->on_line != NULL)
        serial->on_line(line, length, serial->on_line_opaque);
    serial->partial_length[source] = 0;
}

/* source: a vCPU index below SERIAL_MAX_VCPUS (the callers clamp it) or
 * SERIAL_UART_STREAM. */
static void put_char(struct serial *serial, unsigned source, char c)
{
    if (c == '\r')
        return;
    if (c == '\n') {
        emit_line(serial, source);
        return;
    }
    serial->partial[source][serial->partial_length[source]++] = c;
    if (serial->partial_length[source] >= SERIAL_MAX_LINE - 1)
        emit_line(serial, source);
}

void serial_write_text(struct serial *serial, unsigned source, const char *text, size_t length)
{
    if (source >= SERIAL_MAX_VCPUS)
        source = SERIAL_MAX_VCPUS - 1;
    pthread_mutex_lock(&serial->lock);
    for (size_t i = 0; i < length; i++)
        put_char(serial, source, text[i]);
    pthread_mutex_unlock(&serial->lock);
}

void serial_write_bytes(struct serial *serial, const uint8_t *bytes, size_t length)
{
    pthread_mutex_lock(&serial->lock);
    output(serial, (const char *)bytes, length);
    for (size_t i = 0; i < length; i++)
        put_char(serial, SERIAL_UART_STREAM, (char)bytes[i]);
    pthread_mutex_unlock(&serial->lock);
}

void serial_set_output_listener(struct serial *serial, serial_output_callback on_output, void *opaque)
{
    pthread_mutex_lock(&serial->lock);
    serial->on_output = on_output;
    serial->on_output_opaque = opaque;
    pthread_mutex_unlock(&serial->lock);
}

bool serial_port_io(struct serial *serial, unsigned source, uint16_t port, bool is_write,
                    uint8_t *data, uint32_t size)
{
    if (port < RINGVM_SERIAL_PORT || port > RINGVM_SERIAL_PORT + 7)
        return false;
    unsigned reg = port - RINGVM_SERIAL_PORT;
    if (source >= SERIAL_MAX_VCPUS)
        source = SERIAL_MAX_VCPUS - 1;
    pthread_mutex_lock(&serial->lock);
    if (is_write) {
        if (reg == UART_LCR)
            serial->line_control = data[0];
        else if (reg == UART_THR && !(serial->line_control & UART_LCR_DLAB))
            for (uint32_t i = 0; i < size; i++)
                put_char(serial, source, (char)data[i]);
    } else {
        uint8_t value = 0;
        switch (reg) {
        case UART_LSR: value = UART_LSR_THRE | UART_LSR_TEMT; break;
        case UART_IIR: value = UART_IIR_NO_INTERRUPT; break;
        case UART_LCR: value = serial->line_control; break;
        case UART_MSR: value = 0xb0; break; /* CTS, DSR, DCD */
        default: value = 0; break;
        }
        memset(data, value, size);
    }
    pthread_mutex_unlock(&serial->lock);
    return true;
}

void serial_destroy(struct serial *serial)
{
    pthread_mutex_lock(&serial->lock);
    for (unsigned i = 0; i <= SERIAL_UART_STREAM; i++)
        if (serial->partial_length[i] > 0)
            emit_line(serial, i);
    pthread_mutex_unlock(&serial->lock);
    if (serial->owns_fd)
        close(serial->fd);
    serial->fd = -1;
    pthread_mutex_destroy(&serial->lock);
}
