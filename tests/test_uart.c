/* The 16550A model (vmm/uart.c) through its port interface, as a guest
 * driver sees it: no KVM needed. Register offsets from 0x3f8. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vmm/uart.h"

enum { THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

/* What the device did through its callbacks. */
struct recorder {
    int levels[256];            /* every set_irq call, in order */
    unsigned level_count;
    uint8_t sent[1024];         /* every transmitted byte */
    size_t sent_length;
    unsigned rx_space_calls;
};

static void record_irq(void *opaque, bool level)
{
    struct recorder *recorder = opaque;
    cr_assert_lt(recorder->level_count, 256, "more than 256 interrupt line changes");
    recorder->levels[recorder->level_count++] = level;
}

static void record_transmit(void *opaque, const uint8_t *bytes, size_t length)
{
    struct recorder *recorder = opaque;
    cr_assert_leq(recorder->sent_length + length, sizeof(recorder->sent));
    memcpy(recorder->sent + recorder->sent_length, bytes, length);
    recorder->sent_length += length;
}

static void record_rx_space(void *opaque)
{
    struct recorder *recorder = opaque;
    recorder->rx_space_calls++;
}

static struct uart *make_uart(struct recorder *recorder)
{
    memset(recorder, 0, sizeof(*recorder));
    struct uart_callbacks callbacks = {.set_irq = record_irq, .transmit = record_transmit, .opaque = recorder};
    struct uart *uart;
    cr_assert_eq(uart_create(&uart, &callbacks), 0);
    uart_set_rx_space_callback(uart, record_rx_space, recorder);
    return uart;
}

static uint8_t in(struct uart *uart, unsigned offset)
{
    uint8_t value = 0x5a;
    uart_port_io(uart, offset, false, &value, 1);
    return value;
}

static void out(struct uart *uart, unsigned offset, uint8_t value)
{
    uart_port_io(uart, offset, true, &value, 1);
}

static void assert_levels(const struct recorder *recorder, const int *expected, unsigned count)
{
    char got[1024] = "";
    for (unsigned i = 0; i < recorder->level_count; i++)
        snprintf(got + strlen(got), sizeof(got) - strlen(got), "%d ", recorder->levels[i]);
    cr_assert_eq(recorder->level_count, count, "set_irq levels: %s(expected %u calls)", got, count);
    for (unsigned i = 0; i < count; i++)
        cr_assert_eq(recorder->levels[i], expected[i], "set_irq call %u: %s", i, got);
}

Test(uart, reset_state)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    cr_assert_eq(in(uart, IER), 0x00);
    cr_assert_eq(in(uart, IIR), 0x01, "no FIFOs, nothing pending");
    cr_assert_eq(in(uart, LCR), 0x00);
    cr_assert_eq(in(uart, MCR), 0x00);
    cr_assert_eq(in(uart, LSR), 0x60, "THRE|TEMT");
    cr_assert_eq(in(uart, MSR), 0xb0, "DCD|DSR|CTS");
    cr_assert_eq(in(uart, SCR), 0x00);
    cr_assert_eq(in(uart, RBR), 0x00, "empty RBR");
    cr_assert_eq(r.level_count, 0);
    cr_assert_eq(r.sent_length, 0);
    uart_destroy(uart);
}

/* The order of Linux 6.1's autoconfig() + autoconfig_16550a() for COM1. */
Test(uart, linux_probe_sequence_finds_a_16550a)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    /* IER existence test */
    uint8_t saved_ier = in(uart, IER);
    out(uart, IER, 0x00);
    cr_assert_eq(in(uart, IER) & 0x0f, 0x00);
    out(uart, IER, 0x0f);
    cr_assert_eq(in(uart, IER) & 0x0f, 0x0f);
    out(uart, IER, 0xff);
    cr_assert_eq(in(uart, IER), 0x0f, "IER bits 4..7 read 0 (no UUE: not an XScale)");
    out(uart, IER, saved_ier);
    cr_assert_eq(in(uart, IIR), 0x01, "the THRE raised by IER 0x0f is gone with THRI off");
    /* EFR write under LCR 0xbf lands in FCR; then FIFOs on: a 16550A */
    out(uart, LCR, 0xbf);
    out(uart, FCR, 0x00);
    out(uart, LCR, 0x00);
    out(uart, FCR, 0x01);
    cr_assert_eq(in(uart, IIR), 0xc1, "IIR 7:6 = 11 with FIFOs: 16550A");
    /* no EFR: offset 2 under LCR 0xbf reads IIR, not 0 */
    out(uart, LCR, 0xbf);
    cr_assert_eq(in(uart, IIR), 0xc1);
    out(uart, LCR, 0x00);
    /* TI16750 test: FCR bit 5 never shows in IIR bit 5 */
    out(uart, FCR, 0x21);
    cr_assert_eq(in(uart, IIR) >> 5, 6);
    out(uart, LCR, 0x80);
    out(uart, FCR, 0x21);
    cr_assert_eq(in(uart, IIR) >> 5, 6);
    out(uart, LCR, 0x00);
    /* divisor latch behind DLAB, IER untouched by it */
    out(uart, IER, 0x05);
    out(uart, LCR, 0x83);
    out(uart, DLL, 0x01);
    out(uart, DLM, 0x00);
    cr_assert_eq(in(uart, DLL), 0x01);
    cr_assert_eq(in(uart, DLM), 0x00);
    out(uart, DLL, 0x0c);
    out(uart, DLM, 0x02);
    cr_assert_eq(in(uart, DLL), 0x0c);
    cr_assert_eq(in(uart, DLM), 0x02);
    out(uart, LCR, 0x03);
    cr_assert_eq(in(uart, LCR), 0x03);
    cr_assert_eq(in(uart, IER), 0x05, "DLM writes do not reach IER");
    cr_assert_eq(r.sent_length, 0, "DLL writes are not transmitted");
    /* scratch and MCR */
    out(uart, SCR, 0x55);
    cr_assert_eq(in(uart, SCR), 0x55);
    out(uart, SCR, 0xaa);
    cr_assert_eq(in(uart, SCR), 0xaa);
    out(uart, MCR, 0xff);
    cr_assert_eq(in(uart, MCR), 0x1f, "MCR has 5 bits");
    /* loopback check (Linux skips it for COM1; it still works) */
    out(uart, MCR, 0x10 | 0x0a);
    cr_assert_eq(in(uart, MSR) & 0xf0, 0x90);
    out(uart, MCR, 0x00);
    cr_assert_eq(in(uart, MSR) & 0xf0, 0xb0);
    uart_destroy(uart);
}

/* size_fifo(): loopback, 256 bytes written, count LSR.DR reads. */
Test(uart, loopback_fifo_size_probe_counts_16_and_sends_nothing)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    out(uart, FCR, 0x07);
    out(uart, MCR, 0x10);
    out(uart, LCR, 0x80);
    out(uart, DLL, 0x01);
    out(uart, DLM, 0x00);
    out(uart, LCR, 0x03);
    for (unsigned i = 0; i < 256; i++)
        out(uart, THR, (uint8_t)i);
    cr_assert_eq(r.sent_length, 0, "loopback bytes must not reach the console");
    cr_assert_eq(in(uart, LSR), 0x63, "DR|OE|THRE|TEMT");
    unsigned count = 0;
    while ((in(uart, LSR) & 0x01) && count < 256) {
        cr_assert_eq(in(uart, RBR), count, "byte %u", count);
        count++;
    }
    cr_assert_eq(count, 16);
    cr_assert_eq(in(uart, LSR), 0x60, "OE cleared by the LSR read");
    cr_assert_eq(r.level_count, 0, "no interrupt in loopback");
    uart_destroy(uart);
}

Test(uart, thr_bytes_are_transmitted_in_order)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    const char *text = "Linux version 6.1\r\n";
    for (const char *c = text; *c; c++)
        out(uart, THR, (uint8_t)*c);
    cr_assert_eq(r.sent_length, strlen(text));
    cr_assert_arr_eq(r.sent, text, strlen(text));
    /* a 2-byte access is two byte accesses: THR then IER */
    uint8_t pair[2] = {'x', 0x01};
    uart_port_io(uart, THR, true, pair, 2);
    cr_assert_eq(r.sent_length, strlen(text) + 1);
    cr_assert_eq(r.sent[strlen(text)], 'x');
    cr_assert_eq(in(uart, IER), 0x01);
    /* past offset 7: reads 0xff, writes ignored */
    uint8_t tail[2] = {0, 0};
    uart_port_io(uart, 7, false, tail, 2);
    cr_assert_eq(tail[0], 0x00);
    cr_assert_eq(tail[1], 0xff);
    uart_destroy(uart);
}

Test(uart, rx_fifo_fill_overflow_and_partial_accept)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    uint8_t bytes[20];
    for (unsigned i = 0; i < 20; i++)
        bytes[i] = (uint8_t)('a' + i);

    /* FIFOs off: one holding register */
    cr_assert_eq(uart_receive(uart, bytes, 20), 1);
    cr_assert_eq(in(uart, LSR), 0x61);
    cr_assert_eq(r.rx_space_calls, 0);
    cr_assert_eq(in(uart, RBR), 'a');
    cr_assert_eq(r.rx_space_calls, 1, "room again after a partial accept");
    cr_assert_eq(in(uart, LSR), 0x60);

    /* FIFOs on: 16 bytes, the rest refused (no overrun: back-pressure) */
    out(uart, FCR, 0x01);
    cr_assert_eq(uart_receive(uart, bytes, 20), 16);
    cr_assert_eq(uart_receive(uart, bytes + 16, 4), 0);
    cr_assert_eq(in(uart, LSR), 0x61, "DR, no OE");
    for (unsigned i = 0; i < 16; i++)
        cr_assert_eq(in(uart, RBR), 'a' + i, "byte %u", i);
    cr_assert_eq(r.rx_space_calls, 2, "one call per refusal, not per byte read");
    cr_assert_eq(in(uart, LSR), 0x60);
    cr_assert_eq(in(uart, RBR), 0x00, "empty FIFO");

    /* an exact fit leaves nothing waiting: no callback later */
    cr_assert_eq(uart_receive(uart, bytes, 16), 16);
    cr_assert_eq(in(uart, RBR), 'a');
    cr_assert_eq(r.rx_space_calls, 2);

    /* FCR "clear RX" empties it and reports the room */
    cr_assert_eq(uart_receive(uart, bytes, 5), 1);
    out(uart, FCR, 0x03);
    cr_assert_eq(in(uart, LSR), 0x60);
    cr_assert_eq(r.rx_space_calls, 3);

    /* loopback: the host side is disconnected; leaving it reports room */
    out(uart, MCR, 0x10);
    cr_assert_eq(uart_receive(uart, bytes, 3), 0);
    out(uart, MCR, 0x00);
    cr_assert_eq(r.rx_space_calls, 4);
    cr_assert_eq(uart_receive(uart, bytes, 3), 3);
    cr_assert_eq(in(uart, RBR), 'a');
    cr_assert_eq(in(uart, RBR), 'b');
    cr_assert_eq(in(uart, RBR), 'c');
    uart_destroy(uart);
}

Test(uart, iir_priority_and_clearing_rules)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    out(uart, FCR, 0x01);                       /* FIFOs on, trigger 1 */

    /* THRE: raised by enabling THRI, cleared by the IIR read reporting it */
    out(uart, IER, 0x02);
    cr_assert_eq(in(uart, IIR), 0xc2);
    cr_assert_eq(in(uart, IIR), 0xc1);

    /* RX data outranks THRE; an IIR read reporting RX leaves THRE pending */
    out(uart, IER, 0x00);
    out(uart, IER, 0x03);
    uint8_t byte = 'k';
    cr_assert_eq(uart_receive(uart, &byte, 1), 1);
    cr_assert_eq(in(uart, IIR), 0xc4);
    cr_assert_eq(in(uart, IIR), 0xc4);
    cr_assert_eq(in(uart, RBR), 'k');
    cr_assert_eq(in(uart, IIR), 0xc2, "THRE was still pending under RX");
    cr_assert_eq(in(uart, IIR), 0xc1);

    /* trigger level 8: below it the character timeout id */
    out(uart, FCR, 0x81);
    uint8_t eight[8] = "12345678";
    cr_assert_eq(uart_receive(uart, eight, 1), 1);
    cr_assert_eq(in(uart, IIR), 0xcc, "a single typed byte: timeout id");
    cr_assert_eq(uart_receive(uart, eight + 1, 7), 7);
    cr_assert_eq(in(uart, IIR), 0xc4, "8 bytes: data available");
    cr_assert_eq(in(uart, RBR), '1');
    cr_assert_eq(in(uart, IIR), 0xcc);
    out(uart, FCR, 0x83);                       /* clear RX */
    cr_assert_eq(in(uart, IIR), 0xc1);

    /* a THR write clears THRE; the write completes at the next IIR read */
    out(uart, IER, 0x00);
    out(uart, IER, 0x02);
    out(uart, THR, 'z');
    cr_assert_eq(in(uart, IIR), 0xc1, "the read right after the write: nothing pending");
    cr_assert_eq(in(uart, IIR), 0xc2, "then the transmitter-empty interrupt");
    cr_assert_eq(in(uart, IIR), 0xc1);
    /* THRI off forgets both */
    out(uart, THR, 'z');
    out(uart, IER, 0x00);
    cr_assert_eq(in(uart, IIR), 0xc1);
    cr_assert_eq(in(uart, IIR), 0xc1);

    /* line status (overrun, only in loopback) outranks everything */
    out(uart, FCR, 0x01);
    out(uart, MCR, 0x10);
    (void)in(uart, MSR);                        /* drop the deltas of entering loopback */
    out(uart, IER, 0x0f);
    for (unsigned i = 0; i < 17; i++)
        out(uart, THR, (uint8_t)i);
    cr_assert_eq(in(uart, IIR), 0xc6);
    cr_assert_eq(in(uart, LSR), 0x63);
    cr_assert_eq(in(uart, IIR), 0xc4, "OE cleared by reading LSR");
    out(uart, FCR, 0x03);
    cr_assert_eq(in(uart, IIR), 0xc2, "the writes completed at the 0xc6 read: THRE under RX");
    cr_assert_eq(in(uart, IIR), 0xc1);
    uart_destroy(uart);
}

Test(uart, modem_status_changes_only_in_loopback)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    out(uart, IER, 0x08);
    cr_assert_eq(in(uart, IIR), 0x01);
    out(uart, MCR, 0x10);                       /* DCD, DSR, CTS drop */
    cr_assert_eq(in(uart, IIR), 0x00, "modem status id");
    cr_assert_eq(in(uart, MSR), 0x0b, "DDCD|DDSR|DCTS");
    cr_assert_eq(in(uart, MSR), 0x00, "deltas cleared by the read");
    cr_assert_eq(in(uart, IIR), 0x01);
    out(uart, MCR, 0x10 | 0x04);                /* OUT1 -> RI */
    cr_assert_eq(in(uart, MSR), 0x40, "RI rising: no delta (TERI is the trailing edge)");
    out(uart, MCR, 0x10);
    cr_assert_eq(in(uart, MSR), 0x04, "TERI");
    out(uart, MCR, 0x10 | 0x01 | 0x02 | 0x08);  /* DTR, RTS, OUT2 */
    cr_assert_eq(in(uart, MSR), 0xbb);
    out(uart, MCR, 0x00);
    cr_assert_eq(in(uart, MSR), 0xb0, "unchanged status: no deltas");
    cr_assert_eq(r.level_count, 0, "interrupts gated: OUT2 clear or loopback");
    uart_destroy(uart);
}

Test(uart, irq_levels_for_thre_and_rx)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    out(uart, FCR, 0x01);
    out(uart, MCR, 0x0b);                       /* DTR, RTS, OUT2: the IRQ reaches the PIC */
    cr_assert_eq(r.level_count, 0);
    out(uart, IER, 0x02);                       /* enable THRI: 1 */
    out(uart, IER, 0x02);                       /* the same again: no change */
    (void)in(uart, IIR);                        /* reports THRE, clears it: 0 */
    out(uart, THR, 'a');                        /* line already low */
    cr_assert_eq(in(uart, IIR), 0xc1);          /* write completes: 1 */
    out(uart, THR, 'b');                        /* clears THRE: 0 */
    out(uart, THR, 'c');
    cr_assert_eq(in(uart, IIR), 0xc1);          /* 1 */
    cr_assert_eq(in(uart, IIR), 0xc2);          /* 0 */
    out(uart, IER, 0x00);
    static const int thre[] = {1, 0, 1, 0, 1, 0};
    assert_levels(&r, thre, 6);
    cr_assert_eq(r.sent_length, 3);

    r.level_count = 0;
    out(uart, IER, 0x01);
    uint8_t byte = '\r';
    cr_assert_eq(uart_receive(uart, &byte, 1), 1);      /* 1 */
    cr_assert_eq(in(uart, IIR), 0xc4);
    cr_assert_eq(in(uart, RBR), '\r');                  /* 0 */
    cr_assert_eq(uart_receive(uart, &byte, 1), 1);      /* 1 */
    out(uart, MCR, 0x03);                               /* OUT2 off: 0 */
    out(uart, MCR, 0x0b);                               /* on again: 1 */
    out(uart, IER, 0x00);                               /* 0 (Linux's console write masks IER) */
    out(uart, IER, 0x01);                               /* 1: still pending, re-asserted */
    (void)in(uart, RBR);                                /* 0 */
    static const int rx[] = {1, 0, 1, 0, 1, 0, 1, 0};
    assert_levels(&r, rx, 8);
    uart_destroy(uart);
}

/*
 * Linux's serial8250_interrupt() + serial8250_tx_chars() against a tty
 * buffer that a writer on another CPU keeps full: every interrupt must end
 * after one transmit pass (2 IIR reads), never loop towards PASS_LIMIT.
 */
Test(uart, interrupt_handler_never_loops_while_the_writer_refills)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    out(uart, FCR, 0x01);
    out(uart, MCR, 0x08);
    out(uart, IER, 0x05);                       /* RLSI|RDI, as after startup */
    out(uart, IER, 0x07);                       /* start_tx: THRI on */
    cr_assert_eq(r.level_count, 1);
    unsigned interrupts = 0, passes = 0;
    while (interrupts < 40) {
        cr_assert_eq(r.levels[r.level_count - 1], 1, "the line is high: an interrupt is due");
        interrupts++;
        unsigned reads = 0;
        for (;;) {                              /* the handler's loop */
            uint8_t iir = in(uart, IIR);
            reads++;
            cr_assert_leq(reads, 2, "interrupt %u: the handler loops (IIR 0x%02x)", interrupts, iir);
            if (iir & 0x01)
                break;
            cr_assert_eq(iir, 0xc2);
            cr_assert_eq(in(uart, LSR) & 0x20, 0x20);
            for (unsigned i = 0; i < 16; i++)   /* tx_loadsz; the buffer never empties */
                out(uart, THR, (uint8_t)('0' + i));
            passes++;
        }
    }
    cr_assert_eq(passes, 40, "one transmit pass per interrupt");
    cr_assert_eq(r.sent_length, 640);
    cr_assert_eq(r.level_count, 1 + 2 * 40, "one fall and one rise per interrupt");
    uart_destroy(uart);
}

/* ---- migration state ----------------------------------------------------------------- */

static void build_busy_state(struct uart *uart)
{
    out(uart, LCR, 0x80);
    out(uart, DLL, 0x0c);
    out(uart, DLM, 0x01);
    out(uart, LCR, 0x1b);
    out(uart, FCR, 0x81);                       /* FIFOs on, trigger 8 */
    out(uart, MCR, 0x0b);
    out(uart, SCR, 0x5a);
    out(uart, IER, 0x07);                       /* THRI: THRE latched */
    uint8_t first[3] = {'x', 'y', 'z'};
    cr_assert_eq(uart_receive(uart, first, 3), 3);
    cr_assert_eq(in(uart, RBR), 'x');
    cr_assert_eq(in(uart, RBR), 'y');
    uint8_t more[15] = "0123456789abcde";
    cr_assert_eq(uart_receive(uart, more, 15), 15);  /* wraps around the ring */
    out(uart, THR, '!');                        /* THRE waits for the next IIR read */
}

Test(uart, state_save_restore_round_trip)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    build_busy_state(uart);
    struct uart_state state;
    uart_state_save(uart, &state);
    cr_assert_eq(state.ier, 0x07);
    cr_assert_eq(state.iir, 0xc4, "16 bytes >= trigger 8");
    cr_assert_eq(state.fcr, 0x81);
    cr_assert_eq(state.lcr, 0x1b);
    cr_assert_eq(state.mcr, 0x0b);
    cr_assert_eq(state.lsr, 0x61);
    cr_assert_eq(state.msr, 0xb0);
    cr_assert_eq(state.scr, 0x5a);
    cr_assert_eq(state.dll, 0x0c);
    cr_assert_eq(state.dlm, 0x01);
    cr_assert_eq(state.thre_pending, false);
    cr_assert_eq(state.thre_after_iir_read, true);
    cr_assert_eq(state.rx_count, 16);
    cr_assert_arr_eq(state.rx_fifo, "z0123456789abcde", 16);

    struct recorder r2;
    struct uart *copy = make_uart(&r2);
    char error[256] = "";
    cr_assert_eq(uart_state_restore(copy, &state, error, sizeof(error)), 0, "%s", error);
    static const int raised[] = {1};
    assert_levels(&r2, raised, 1);
    struct uart_state again;
    uart_state_save(copy, &again);
    cr_assert_eq(memcmp(&state, &again, sizeof(state)), 0, "save(restore(s)) != s");
    cr_assert_eq(r2.sent_length, 0);

    /* it behaves as the original from here on */
    cr_assert_eq(in(copy, IIR), 0xc4);          /* the THR write completes here */
    cr_assert_eq(in(copy, RBR), 'z');
    for (unsigned i = 0; i < 15; i++)
        cr_assert_eq(in(copy, RBR), "0123456789abcde"[i]);
    cr_assert_eq(in(copy, IIR), 0xc2, "THRE from the write before the save");
    cr_assert_eq(in(copy, IIR), 0xc1);
    cr_assert_eq(in(copy, LCR), 0x1b);
    out(copy, LCR, 0x9b);
    cr_assert_eq(in(copy, DLL), 0x0c);
    cr_assert_eq(in(copy, DLM), 0x01);
    uart_destroy(copy);
    uart_destroy(uart);
}

/* Firecracker #5730: restore must not force IER bits or a THRE. */
Test(uart, restore_forces_nothing)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    out(uart, MCR, 0x08);
    out(uart, IER, 0x01);                       /* RX only: THRI off (idle TX) */
    struct uart_state state;
    uart_state_save(uart, &state);

    struct recorder r2;
    struct uart *copy = make_uart(&r2);
    char error[256];
    cr_assert_eq(uart_state_restore(copy, &state, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(in(copy, IER), 0x01);
    cr_assert_eq(in(copy, IIR), 0x01);
    cr_assert_eq(r2.level_count, 0, "nothing pending: the line stays low");

    /* restoring over a device whose line is high lowers it first */
    out(copy, IER, 0x02);
    cr_assert_eq(r2.level_count, 1);
    cr_assert_eq(uart_state_restore(copy, &state, error, sizeof(error)), 0, "%s", error);
    static const int lowered[] = {1, 0};
    assert_levels(&r2, lowered, 2);
    uart_destroy(copy);
    uart_destroy(uart);
}

static void assert_refused(struct uart *uart, const struct uart_state *bad, const char *reason)
{
    struct uart_state before, after;
    uart_state_save(uart, &before);
    char error[256] = "";
    cr_assert_eq(uart_state_restore(uart, bad, error, sizeof(error)), -EINVAL, "accepted; expected '%s'", reason);
    cr_assert(strstr(error, reason) != NULL, "error '%s' does not say '%s'", error, reason);
    uart_state_save(uart, &after);
    cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0, "a refused restore changed the device");
}

Test(uart, restore_rejects_states_the_device_cannot_be_in)
{
    struct recorder r;
    struct uart *uart = make_uart(&r);
    build_busy_state(uart);
    struct uart_state good;
    uart_state_save(uart, &good);
    struct uart_state bad;

    bad = good; bad.rx_count = 17;
    assert_refused(uart, &bad, "uart state: rx_count 17 exceeds the RX FIFO capacity 16 (FIFOs on)");
    bad = good; bad.fcr = 0x00; bad.iir = 0x04;
    assert_refused(uart, &bad, "rx_count 16 exceeds the RX FIFO capacity 1 (FIFOs off)");
    bad = good; bad.ier = 0x17;
    assert_refused(uart, &bad, "ier 0x17: bits 4..7 do not exist");
    bad = good; bad.fcr = 0x87;
    assert_refused(uart, &bad, "fcr 0x87: only bits 0, 3, 6 and 7 are kept");
    bad = good; bad.fcr = 0x80;
    assert_refused(uart, &bad, "fcr 0x80: FIFO settings without the FIFO enabled");
    bad = good; bad.mcr = 0x2b;
    assert_refused(uart, &bad, "mcr 0x2b: bits 5..7 do not exist");
    bad = good; bad.lsr = 0x21;
    assert_refused(uart, &bad, "lsr 0x21: expected THRE|TEMT set");
    bad = good; bad.lsr = 0x60;
    assert_refused(uart, &bad, "lsr 0x60: DR clear but the RX FIFO holds 16 bytes");
    bad = good; bad.msr = 0x30;
    assert_refused(uart, &bad, "msr 0x30: status bits 0x30, but mcr 0x0b gives 0xb0");
    bad = good; bad.ier = 0x05; bad.thre_pending = false;
    assert_refused(uart, &bad, "a THRE interrupt is pending with IER.THRI off (ier 0x05)");
    bad = good; bad.thre_pending = true;
    assert_refused(uart, &bad, "THRE both pending and waiting for an IIR read");
    bad = good; bad.iir = 0xc2;
    assert_refused(uart, &bad, "iir 0xc2 does not match the rest of the state (which gives 0xc4)");
    uart_destroy(uart);
}
