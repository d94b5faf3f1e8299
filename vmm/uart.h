/*
 * A 16550A UART (COM1: ports 0x3f8..0x3ff, IRQ 4 on a PC) for the Linux
 * guest's console, one device in one file in the style of kvmtool's
 * hw/serial.c. Registers, interrupts and their priorities as the PC16550D
 * datasheet and Linux's drivers/tty/serial/8250/8250_port.c (probe, THRE
 * tests, interrupt handler) expect; vmm/uart.c says how each one behaves.
 *
 * What is modelled and what is not:
 *   - transmit is instant: LSR always reports THRE|TEMT, every THR byte goes
 *     straight to the transmit callback (no baud rate, no TX FIFO);
 *   - RX: a 16-byte FIFO (1 byte with FIFOs off) filled by uart_receive,
 *     with back-pressure instead of overruns;
 *   - loopback (MCR bit 4): THR bytes go to the RX FIFO (overrun sets
 *     LSR.OE), MSR reflects MCR, the host side is disconnected;
 *   - no breaks, parity or framing errors (LSR bits 2..4 and 7 stay 0);
 *     the divisor and LCR are stored and read back but change nothing.
 *
 * Threads: uart_port_io from any vCPU thread, uart_receive from the console
 * thread, save/restore from a controller with the vCPUs parked. One mutex
 * (`lock` in uart.c) covers all state. The callbacks are called WITH that
 * mutex held, so they see level changes and bytes in the device's order;
 * they must not call back into this uart. Lock order: uart -> whatever the
 * callbacks take (serial's lock, the console's lock); nobody calls into the
 * uart while holding one of those.
 */
#ifndef RINGVM_VMM_UART_H
#define RINGVM_VMM_UART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UART_COM1_PORT 0x3f8
#define UART_COM1_IRQ 4
#define UART_REGISTER_COUNT 8       /* ports base..base+7 */
#define UART_FIFO_SIZE 16           /* the 16550A's RX FIFO */

struct uart;

struct uart_callbacks {
    /* The interrupt line (before the PIC/IOAPIC), called only when its
     * level changes. Required. */
    void (*set_irq)(void *opaque, bool level);
    /* Bytes the guest transmitted (outside loopback). Required. */
    void (*transmit)(void *opaque, const uint8_t *bytes, size_t length);
    void *opaque;
};

/*
 * Everything the device holds, for migration (issue 14). Registers as the
 * guest reads them, except FCR (write-only on the chip: the bits kept) and
 * the RX FIFO (oldest byte first). iir is derived from the rest: saved for
 * diagnosis and checked on restore.
 */
struct uart_state {
    uint8_t ier;                    /* bits 0..3 */
    uint8_t iir;                    /* as the next IIR read would return it */
    uint8_t fcr;                    /* bits 0 (FIFO enable), 3, 6..7 (RX trigger) */
    uint8_t lcr;
    uint8_t mcr;                    /* bits 0..4 */
    uint8_t lsr;                    /* DR, OE, THRE, TEMT */
    uint8_t msr;                    /* status bits 4..7, delta bits 0..3 */
    uint8_t scr;
    uint8_t dll, dlm;               /* divisor latch */
    /* THRE interrupt latched (cleared by an IIR read that reports it, a
     * THR write, or IER.THRI off). */
    bool thre_pending;
    /* A THR write with THRI on "completes" (latches THRE) at the next IIR
     * read; see the comment above uart_port_io in uart.c. */
    bool thre_after_iir_read;
    uint8_t rx_count;
    uint8_t rx_fifo[UART_FIFO_SIZE];
};

/* Returns 0 or -errno (message on stderr). The device starts in its reset
 * state (everything 0 but LSR = THRE|TEMT, MSR = DCD|DSR|CTS) with the
 * line low; set_irq is not called. */
int uart_create(struct uart **out, const struct uart_callbacks *callbacks);
void uart_destroy(struct uart *uart);           /* NULL is a no-op */

/* Port I/O at `offset` (0..7 from the base port): `size` bytes are `size`
 * consecutive byte accesses (offsets past 7 read 0xff, writes ignored). */
void uart_port_io(struct uart *uart, unsigned offset, bool is_write, uint8_t *data, uint32_t size);

/* Bytes from the host side (the console). Returns how many were accepted
 * (0..length): the FIFO's free space, 0 in loopback mode. The caller keeps
 * the rest and retries after the rx_space callback. */
size_t uart_receive(struct uart *uart, const uint8_t *bytes, size_t length);

/* Called (uart lock held, from the vCPU thread that read RBR or changed
 * FCR/MCR) once after a uart_receive that could not take everything, when
 * the FIFO has room again. It should only signal, e.g. write an eventfd.
 * NULL disables. */
void uart_set_rx_space_callback(struct uart *uart, void (*rx_space)(void *opaque), void *opaque);

/* Copies the device state (vCPUs parked, or any time for diagnosis). */
void uart_state_save(struct uart *uart, struct uart_state *state);
/* The checks uart_state_restore makes, without a device (a migration
 * stream's decoder refuses a bad state before anything is restored):
 * 0, or -EINVAL with the first problem found in error. */
int uart_state_check(const struct uart_state *state, char *error, size_t error_size);

/*
 * Replaces the device state. Refuses (-EINVAL, reason in error) a state the
 * device could never be in: reserved register bits set, FIFO count above
 * the capacity, DR disagreeing with the count, a THRE flag without
 * IER.THRI, an iir that does not match the rest ... On success nothing is
 * forced (no IER bits, no THRE). The line is driven to the restored level:
 * a fresh destination's line is low, so if the restored state has an
 * enabled interrupt pending, set_irq(true) is called once (the guest may
 * see that interrupt again; it reads IIR and finds it, as after any IRQ).
 * Call it after the irqchip state is restored and before the vCPUs run.
 */
int uart_state_restore(struct uart *uart, const struct uart_state *state, char *error, size_t error_size);

#endif
