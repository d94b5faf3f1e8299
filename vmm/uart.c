/*
 * The 16550A register model (see uart.h for what is and is not modelled).
 *
 * Registers by offset (DLAB = LCR bit 7):
 *   0  read: RBR (pops the RX FIFO) / DLL      write: THR / DLL
 *   1  IER (low 4 bits; 4..7 read 0) / DLM
 *   2  read: IIR                               write: FCR
 *   3  LCR      4  MCR (5 bits)     5  LSR (read; writes ignored)
 *   6  MSR (read; writes ignored)   7  SCR
 *
 * Interrupt sources, highest priority first (IIR id in brackets), each
 * pending only while enabled in IER:
 *   line status [0x06]   LSR.OE set (only loopback can overrun); cleared by
 *                        reading LSR
 *   RX data [0x04]       RX FIFO at or above the FCR trigger level (any
 *                        byte with FIFOs off);
 *   RX timeout [0x0c]    ... below the trigger level but not empty. The chip
 *                        waits 4 character times first; here it is pending
 *                        at once: the console hands over whole bursts, so
 *                        there is never "more of this burst" worth waiting
 *                        for, and a single typed byte reaches Linux (whose
 *                        16550A trigger level is 8) without a timer. Both
 *                        clear when reading RBR drains the condition.
 *   THRE [0x02]          the latch described below
 *   modem status [0x00]  an MSR delta bit set (MSR changes only in loopback
 *                        mode); cleared by reading MSR
 * The INTR output is high while any enabled source is pending; on a PC it
 * reaches the interrupt controller only while MCR.OUT2 is set, and never in
 * loopback (the chip holds OUT2 inactive there). Linux sets OUT2 when it
 * opens the port; the console's polled output never needs an interrupt.
 *
 * Why the RX FIFO is 16 bytes: that is the chip Linux identifies (its
 * size_fifo() test counts 16, so it is a plain PORT_16550A, trigger levels
 * 1/4/8/14 mean what the datasheet says, and the migration state stays
 * small). A bigger buffer would only speed up pasting; typing never fills
 * 16 bytes, and the console refills the FIFO as soon as the guest drains it
 * (the rx_space callback).
 */
#include "vmm/uart.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    UART_RBR_THR = 0,
    UART_IER = 1,
    UART_IIR_FCR = 2,
    UART_LCR = 3,
    UART_MCR = 4,
    UART_LSR = 5,
    UART_MSR = 6,
    UART_SCR = 7,
};

#define IER_RDI 0x01
#define IER_THRI 0x02
#define IER_RLSI 0x04
#define IER_MSI 0x08
#define IER_MASK 0x0f

#define IIR_NO_INTERRUPT 0x01
#define IIR_MODEM_STATUS 0x00
#define IIR_THRE 0x02
#define IIR_RX_DATA 0x04
#define IIR_LINE_STATUS 0x06
#define IIR_RX_TIMEOUT 0x0c
#define IIR_FIFOS_ENABLED 0xc0

#define FCR_ENABLE_FIFO 0x01
#define FCR_CLEAR_RX 0x02
#define FCR_DMA_MODE 0x08
#define FCR_TRIGGER_SHIFT 6
#define FCR_KEPT (FCR_ENABLE_FIFO | FCR_DMA_MODE | 0xc0)

#define LCR_DLAB 0x80

#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MCR_MASK 0x1f

#define LSR_DR 0x01
#define LSR_OE 0x02
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_DELTAS 0x0f
#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80

/* Ownership: `callbacks` is immutable after uart_create; every other field
 * is under `lock`, taken by vCPU threads (port I/O), the console thread
 * (uart_receive) and controllers (save/restore). */
struct uart {
    pthread_mutex_t lock;
    struct uart_callbacks callbacks;

    uint8_t ier, fcr, lcr, mcr, msr, scr, dll, dlm;
    bool overrun;                   /* LSR.OE */
    bool thre_pending;
    bool thre_after_iir_read;
    uint8_t rx_fifo[UART_FIFO_SIZE];
    unsigned rx_head, rx_count;

    bool irq_level;                 /* the level set_irq was last given */
    bool rx_waiting;                /* uart_receive left bytes behind */
    void (*rx_space)(void *opaque);
    void *rx_space_opaque;
};

static unsigned rx_capacity_for(uint8_t fcr)
{
    return (fcr & FCR_ENABLE_FIFO) ? UART_FIFO_SIZE : 1;
}

static unsigned rx_trigger_level(uint8_t fcr)
{
    static const unsigned levels[4] = {1, 4, 8, 14};
    return levels[fcr >> FCR_TRIGGER_SHIFT];
}

/* MSR bits 4..7: fixed "modem present, carrier up" outside loopback; in
 * loopback the MCR outputs wired back (RTS->CTS, DTR->DSR, OUT1->RI,
 * OUT2->DCD). */
static uint8_t msr_status_for(uint8_t mcr)
{
    if (!(mcr & MCR_LOOP))
        return MSR_DCD | MSR_DSR | MSR_CTS;
    return (uint8_t)(((mcr & MCR_DTR) ? MSR_DSR : 0) | ((mcr & MCR_RTS) ? MSR_CTS : 0) |
                     ((mcr & MCR_OUT1) ? MSR_RI : 0) | ((mcr & MCR_OUT2) ? MSR_DCD : 0));
}

/* Interrupt id of the highest-priority enabled pending source. The pieces
 * are passed in so restore can check a state before adopting it. */
static uint8_t interrupt_id(uint8_t ier, uint8_t fcr, uint8_t msr, bool overrun, bool thre_pending,
                            unsigned rx_count)
{
    if ((ier & IER_RLSI) && overrun)
        return IIR_LINE_STATUS;
    if ((ier & IER_RDI) && rx_count > 0)
        return (!(fcr & FCR_ENABLE_FIFO) || rx_count >= rx_trigger_level(fcr)) ? IIR_RX_DATA : IIR_RX_TIMEOUT;
    if ((ier & IER_THRI) && thre_pending)
        return IIR_THRE;
    if ((ier & IER_MSI) && (msr & MSR_DELTAS))
        return IIR_MODEM_STATUS;
    return IIR_NO_INTERRUPT;
}

static uint8_t current_interrupt_id(const struct uart *uart)
{
    return interrupt_id(uart->ier, uart->fcr, uart->msr, uart->overrun, uart->thre_pending, uart->rx_count);
}

static uint8_t iir_value(const struct uart *uart)
{
    return (uint8_t)(current_interrupt_id(uart) | ((uart->fcr & FCR_ENABLE_FIFO) ? IIR_FIFOS_ENABLED : 0));
}

static uint8_t lsr_value(const struct uart *uart)
{
    return (uint8_t)(LSR_THRE | LSR_TEMT | (uart->rx_count > 0 ? LSR_DR : 0) | (uart->overrun ? LSR_OE : 0));
}

/* Caller holds the lock. */
static void update_irq(struct uart *uart)
{
    bool level = current_interrupt_id(uart) != IIR_NO_INTERRUPT && (uart->mcr & MCR_OUT2) &&
                 !(uart->mcr & MCR_LOOP);
    if (level != uart->irq_level) {
        uart->irq_level = level;
        uart->callbacks.set_irq(uart->callbacks.opaque, level);
    }
}

static bool rx_push(struct uart *uart, uint8_t byte)
{
    if (uart->rx_count >= rx_capacity_for(uart->fcr))
        return false;
    uart->rx_fifo[(uart->rx_head + uart->rx_count) % UART_FIFO_SIZE] = byte;
    uart->rx_count++;
    return true;
}

static uint8_t rx_pop(struct uart *uart)
{
    if (uart->rx_count == 0)
        return 0;
    uint8_t byte = uart->rx_fifo[uart->rx_head];
    uart->rx_head = (uart->rx_head + 1) % UART_FIFO_SIZE;
    uart->rx_count--;
    return byte;
}

static void rx_clear(struct uart *uart)
{
    uart->rx_head = 0;
    uart->rx_count = 0;
}

/* Tells the console once that the FIFO it found full has room again. */
static void signal_rx_space(struct uart *uart)
{
    if (uart->rx_waiting && uart->rx_space && !(uart->mcr & MCR_LOOP) &&
        uart->rx_count < rx_capacity_for(uart->fcr)) {
        uart->rx_waiting = false;
        uart->rx_space(uart->rx_space_opaque);
    }
}

static void set_msr_status(struct uart *uart, uint8_t status)
{
    uint8_t old = uart->msr & ~MSR_DELTAS;
    uint8_t changed = old ^ status;
    uint8_t deltas = uart->msr & MSR_DELTAS;
    if (changed & MSR_CTS)
        deltas |= MSR_DCTS;
    if (changed & MSR_DSR)
        deltas |= MSR_DDSR;
    if (changed & MSR_DCD)
        deltas |= MSR_DDCD;
    if ((old & MSR_RI) && !(status & MSR_RI))
        deltas |= MSR_TERI;             /* trailing edge only */
    uart->msr = status | deltas;
}

/*
 * THRE, and why this model cannot storm an SMP guest.
 *
 * The transmitter is always empty (LSR.THRE|TEMT), so the THRE *interrupt*
 * is a latch, set on the two events where a 16550 sets it:
 *   (a) IER.THRI goes 0 -> 1 (the holding register is empty right then);
 *   (b) a byte written to THR while THRI is on has been sent.
 * It is cleared by an IIR read that reports THRE (only when THRE is the
 * highest-priority source: a read reporting RX data leaves it pending), by
 * writing THR, and by turning THRI off.
 *
 * Event (b) is where emulators go wrong. Firecracker re-asserted THRE inside
 * every THR write (PR #5866). Linux's serial8250_interrupt() loops "read
 * IIR, handle, repeat" until IIR says no interrupt (up to PASS_LIMIT = 512
 * passes with interrupts off); each pass writes up to 16 bytes, the last
 * write re-asserted THRE, so the next IIR read found THRE again, and with a
 * writer on another CPU refilling the tty buffer the loop never ended:
 * soft lockups.
 *
 * Here a write "completes" at the guest's NEXT IIR READ, after that read's
 * value has been computed: the write sets thre_after_iir_read, and the IIR
 * read that follows returns what was pending without the new THRE (no
 * interrupt, after a pure transmit pass), then latches THRE and raises the
 * line. So every pass of Linux's loop that transmits is followed by one
 * read answering "no interrupt" (unless RX or line status is pending, which
 * the loop drains), the handler returns after 16 bytes with the interrupt
 * acknowledged, and the next 16 bytes are a NEW interrupt that the guest's
 * interrupt layer schedules like any other - one interrupt per 16 bytes, as
 * a real 16550 gives, only without the baud-rate delay. Nothing on another
 * CPU can re-assert THRE between the handler's reads: the tty writer only
 * touches IER when THRI is off (and then (a) applies, outside the handler),
 * and only the handler's own IIR read completes a write.
 *
 * The cost of the model: a driver that writes THR from its THRE handler and
 * then never reads IIR again would wait forever. Linux, FreeBSD and every
 * 8250 driver we know read IIR until it reports no interrupt.
 */
static void write_register(struct uart *uart, unsigned offset, uint8_t value)
{
    switch (offset) {
    case UART_RBR_THR:
        if (uart->lcr & LCR_DLAB) {
            uart->dll = value;
            break;
        }
        if (uart->mcr & MCR_LOOP) {
            if (!rx_push(uart, value))
                uart->overrun = true;   /* the byte is lost, as on the chip */
        } else {
            uart->callbacks.transmit(uart->callbacks.opaque, &value, 1);
        }
        uart->thre_pending = false;
        if (uart->ier & IER_THRI)
            uart->thre_after_iir_read = true;
        break;
    case UART_IER: {
        if (uart->lcr & LCR_DLAB) {
            uart->dlm = value;
            break;
        }
        uint8_t enabled = value & IER_MASK;
        uint8_t changed = uart->ier ^ enabled;
        uart->ier = enabled;
        if (changed & IER_THRI) {
            if (enabled & IER_THRI) {
                uart->thre_pending = true;         /* event (a) */
            } else {
                uart->thre_pending = false;
                uart->thre_after_iir_read = false;
            }
        }
        break;
    }
    case UART_IIR_FCR: {
        /* FCR: not behind DLAB on a 16550. Toggling bit 0 resets the
         * FIFOs; the other bits are only writable with bit 0 set. */
        bool enable = value & FCR_ENABLE_FIFO;
        if (enable != (bool)(uart->fcr & FCR_ENABLE_FIFO))
            rx_clear(uart);
        if (enable) {
            if (value & FCR_CLEAR_RX)
                rx_clear(uart);
            uart->fcr = value & FCR_KEPT;  /* bit 2 (clear TX): nothing is ever queued */
        } else {
            uart->fcr = 0;
        }
        signal_rx_space(uart);
        break;
    }
    case UART_LCR:
        uart->lcr = value;
        break;
    case UART_MCR:
        uart->mcr = value & MCR_MASK;
        set_msr_status(uart, msr_status_for(uart->mcr));
        signal_rx_space(uart);              /* leaving loopback reconnects the host */
        break;
    case UART_LSR:                          /* factory test register: ignored */
    case UART_MSR:                          /* read-only */
        break;
    case UART_SCR:
        uart->scr = value;
        break;
    default:
        break;
    }
}

static uint8_t read_register(struct uart *uart, unsigned offset)
{
    uint8_t value = 0;
    switch (offset) {
    case UART_RBR_THR:
        if (uart->lcr & LCR_DLAB) {
            value = uart->dll;
        } else {
            value = rx_pop(uart);
            signal_rx_space(uart);
        }
        break;
    case UART_IER:
        value = (uart->lcr & LCR_DLAB) ? uart->dlm : uart->ier;
        break;
    case UART_IIR_FCR:
        value = iir_value(uart);
        if ((value & 0x0f) == IIR_THRE)
            uart->thre_pending = false;
        if (uart->thre_after_iir_read) {
            uart->thre_after_iir_read = false;
            uart->thre_pending = true;      /* event (b), after the read */
        }
        break;
    case UART_LCR:
        value = uart->lcr;
        break;
    case UART_MCR:
        value = uart->mcr;
        break;
    case UART_LSR:
        value = lsr_value(uart);
        uart->overrun = false;
        break;
    case UART_MSR:
        value = uart->msr;
        uart->msr &= ~MSR_DELTAS;
        break;
    case UART_SCR:
        value = uart->scr;
        break;
    default:
        break;
    }
    return value;
}

void uart_port_io(struct uart *uart, unsigned offset, bool is_write, uint8_t *data, uint32_t size)
{
    pthread_mutex_lock(&uart->lock);
    for (uint32_t i = 0; i < size; i++) {
        unsigned reg = offset + i;
        if (reg >= UART_REGISTER_COUNT) {
            if (!is_write)
                data[i] = 0xff;
            continue;
        }
        if (is_write)
            write_register(uart, reg, data[i]);
        else
            data[i] = read_register(uart, reg);
    }
    update_irq(uart);
    pthread_mutex_unlock(&uart->lock);
}

size_t uart_receive(struct uart *uart, const uint8_t *bytes, size_t length)
{
    size_t accepted = 0;
    pthread_mutex_lock(&uart->lock);
    if (!(uart->mcr & MCR_LOOP))
        while (accepted < length && rx_push(uart, bytes[accepted]))
            accepted++;
    if (accepted < length)
        uart->rx_waiting = true;
    update_irq(uart);
    pthread_mutex_unlock(&uart->lock);
    return accepted;
}

void uart_set_rx_space_callback(struct uart *uart, void (*rx_space)(void *opaque), void *opaque)
{
    pthread_mutex_lock(&uart->lock);
    uart->rx_space = rx_space;
    uart->rx_space_opaque = opaque;
    pthread_mutex_unlock(&uart->lock);
}

int uart_create(struct uart **out, const struct uart_callbacks *callbacks)
{
    *out = NULL;
    if (callbacks == NULL || callbacks->set_irq == NULL || callbacks->transmit == NULL) {
        fprintf(stderr, "ringvm: uart: set_irq and transmit callbacks are required\n");
        return -EINVAL;
    }
    struct uart *uart = calloc(1, sizeof(*uart));
    if (uart == NULL) {
        fprintf(stderr, "ringvm: uart: out of memory\n");
        return -ENOMEM;
    }
    int result = pthread_mutex_init(&uart->lock, NULL);
    if (result != 0) {
        fprintf(stderr, "ringvm: uart: pthread_mutex_init: %s\n", strerror(result));
        free(uart);
        return -result;
    }
    uart->callbacks = *callbacks;
    uart->msr = msr_status_for(0);
    *out = uart;
    return 0;
}

void uart_destroy(struct uart *uart)
{
    if (uart == NULL)
        return;
    pthread_mutex_destroy(&uart->lock);
    free(uart);
}

void uart_state_save(struct uart *uart, struct uart_state *state)
{
    memset(state, 0, sizeof(*state));
    pthread_mutex_lock(&uart->lock);
    state->ier = uart->ier;
    state->iir = iir_value(uart);
    state->fcr = uart->fcr;
    state->lcr = uart->lcr;
    state->mcr = uart->mcr;
    state->lsr = lsr_value(uart);
    state->msr = uart->msr;
    state->scr = uart->scr;
    state->dll = uart->dll;
    state->dlm = uart->dlm;
    state->thre_pending = uart->thre_pending;
    state->thre_after_iir_read = uart->thre_after_iir_read;
    state->rx_count = (uint8_t)uart->rx_count;
    for (unsigned i = 0; i < uart->rx_count; i++)
        state->rx_fifo[i] = uart->rx_fifo[(uart->rx_head + i) % UART_FIFO_SIZE];
    pthread_mutex_unlock(&uart->lock);
}

int uart_state_check(const struct uart_state *state, char *error, size_t error_size)
{
#define REFUSE(...) do { snprintf(error, error_size, "uart state: " __VA_ARGS__); return -EINVAL; } while (0)
    if (state->ier & ~IER_MASK)
        REFUSE("ier 0x%02x: bits 4..7 do not exist on a 16550A", state->ier);
    if (state->fcr & ~FCR_KEPT)
        REFUSE("fcr 0x%02x: only bits 0, 3, 6 and 7 are kept", state->fcr);
    if (!(state->fcr & FCR_ENABLE_FIFO) && state->fcr != 0)
        REFUSE("fcr 0x%02x: FIFO settings without the FIFO enabled", state->fcr);
    if (state->mcr & ~MCR_MASK)
        REFUSE("mcr 0x%02x: bits 5..7 do not exist on a 16550A", state->mcr);
    unsigned capacity = rx_capacity_for(state->fcr);
    if (state->rx_count > capacity)
        REFUSE("rx_count %u exceeds the RX FIFO capacity %u (FIFOs %s)", state->rx_count, capacity,
               capacity == 1 ? "off" : "on");
    if ((state->lsr & (LSR_THRE | LSR_TEMT)) != (LSR_THRE | LSR_TEMT) ||
        (state->lsr & ~(LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT)))
        REFUSE("lsr 0x%02x: expected THRE|TEMT set and nothing but DR and OE besides", state->lsr);
    if (!(state->lsr & LSR_DR) != (state->rx_count == 0))
        REFUSE("lsr 0x%02x: DR %s but the RX FIFO holds %u bytes", state->lsr,
               (state->lsr & LSR_DR) ? "set" : "clear", state->rx_count);
    if ((state->msr & ~MSR_DELTAS) != msr_status_for(state->mcr))
        REFUSE("msr 0x%02x: status bits 0x%02x, but mcr 0x%02x gives 0x%02x", state->msr,
               state->msr & ~MSR_DELTAS, state->mcr, msr_status_for(state->mcr));
    if ((state->thre_pending || state->thre_after_iir_read) && !(state->ier & IER_THRI))
        REFUSE("a THRE interrupt is pending with IER.THRI off (ier 0x%02x)", state->ier);
    if (state->thre_pending && state->thre_after_iir_read)
        REFUSE("THRE both pending and waiting for an IIR read");
    uint8_t iir = (uint8_t)(interrupt_id(state->ier, state->fcr, state->msr, state->lsr & LSR_OE,
                                         state->thre_pending, state->rx_count) |
                            ((state->fcr & FCR_ENABLE_FIFO) ? IIR_FIFOS_ENABLED : 0));
    if (state->iir != iir)
        REFUSE("iir 0x%02x does not match the rest of the state (which gives 0x%02x)", state->iir, iir);
    return 0;
#undef REFUSE
}

int uart_state_restore(struct uart *uart, const struct uart_state *state, char *error, size_t error_size)
{
    int result = uart_state_check(state, error, error_size);
    if (result != 0)
        return result;
    pthread_mutex_lock(&uart->lock);
    uart->ier = state->ier;
    uart->fcr = state->fcr;
    uart->lcr = state->lcr;
    uart->mcr = state->mcr;
    uart->msr = state->msr;
    uart->scr = state->scr;
    uart->dll = state->dll;
    uart->dlm = state->dlm;
    uart->overrun = state->lsr & LSR_OE;
    uart->thre_pending = state->thre_pending;
    uart->thre_after_iir_read = state->thre_after_iir_read;
    uart->rx_head = 0;
    uart->rx_count = state->rx_count;
    memcpy(uart->rx_fifo, state->rx_fifo, state->rx_count);
    /* Drive the line from low to the restored level (uart.h). */
    if (uart->irq_level) {
        uart->irq_level = false;
        uart->callbacks.set_irq(uart->callbacks.opaque, false);
    }
    update_irq(uart);
    signal_rx_space(uart);
    pthread_mutex_unlock(&uart->lock);
    return 0;
}
