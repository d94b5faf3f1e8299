/*
 * The console thread: stdin and the console socket to the UART, the
 * guest's output to every socket client (console.h has the rules).
 */
#include "vmm/console.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "vmm/monotonic.h"
#include "vmm/serial.h"
#include "vmm/terminal.h"
#include "vmm/thread.h"
#include "vmm/uart.h"
#include "vmm/unix_listener.h"
#include "vmm/unix_socket.h"

#define CONSOLE_INPUT_BYTES 4096
#define CONSOLE_ESCAPE_BYTE 0x1d            /* Ctrl-] */
#define CONSOLE_ACCEPT_PAUSE_MS 100         /* after accept() fails (EMFILE ...) */

struct console_client {
    int fd;
    pid_t pid;
    /* Output ring, under console->lock: the output listener appends (any
     * vCPU thread), the console thread sends. */
    uint8_t *ring;
    size_t ring_start, ring_length;
    uint64_t dropped_unreported;
    /* Console thread only. */
    bool read_eof;                  /* the peer will send nothing more */
    bool hung_up;                   /* the peer closed its end */
    uint64_t refused_generation;    /* writer generation it was told about */
    bool told_no_uart;
    /* The hand-over, under console->lock: a connection to the destination's
     * console made for this client (-1 none; prepare sets, cancel and
     * removal close), and whether it is due to be told the guest moved
     * (commit; the console thread sends the notice after the ring, the
     * fd riding on its first byte, then removes the client). */
    int handover_fd;
    bool handover_due;
    size_t notice_sent;
};

struct console {
    /* Immutable after console_create, but for uart: NULL (no input
     * path) until console_attach_uart publishes it once (release; the
     * console thread reads it with acquire, through console_uart). */
    struct serial *serial;
    _Atomic(struct uart *) uart;
    bool has_socket;
    struct unix_listener listener;
    int wake_fd;                    /* eventfd: output queued, UART has room, stop */
    pthread_t thread;
    bool thread_started;

    _Atomic bool stop;
    _Atomic int writer;             /* slot of the writing client, -1 none; written by the console thread */
    _Atomic uint64_t input_bytes;

    /* Console thread only. */
    bool stdin_open;
    bool stdin_is_terminal;
    uint64_t writer_generation;
    uint64_t accept_paused_until_ns;
    uint8_t input[CONSOLE_INPUT_BYTES];
    size_t input_start, input_length;

    /* clients[] (slots taken and freed by the console thread), every
     * client's ring and dropped_bytes. Never held across a call into the
     * uart or serial. */
    pthread_mutex_t lock;
    struct console_client *clients[CONSOLE_MAX_CLIENTS];
    unsigned client_count;
    uint64_t dropped_bytes;
    /* The hand-over's notices (set by commit, then immutable): for clients
     * with a connection to pass, and for those without (attached after
     * prepare, or its connect failed). moved: commit ran; handed_over
     * counts notices sent with a connection; handover_done signals
     * (console->lock) each due client that is finished with. */
    bool moved;
    char moved_notice[CONSOLE_HANDOVER_TEXT_MAX + 96];
    char attach_notice[CONSOLE_HANDOVER_TEXT_MAX + 96];
    unsigned handed_over;
    pthread_cond_t handover_done;
};

static void console_wake(struct console *console)
{
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(console->wake_fd, &one, sizeof(one));
        if (n == (ssize_t)sizeof(one) || (n < 0 && errno == EAGAIN))
            return;     /* EAGAIN: counter saturated, a wake-up is pending anyway */
        if (n < 0 && errno == EINTR)
            continue;
        fprintf(stderr, "ringvm: console: eventfd write: %s\n", n < 0 ? strerror(errno) : "short write");
        return;
    }
}

/* ---- the terminal (process-wide: stdin is) ------------------------------------------ */

static pthread_mutex_t terminal_lock = PTHREAD_MUTEX_INITIALIZER;
static struct termios terminal_saved;       /* terminal_lock */
static bool terminal_is_raw;                /* terminal_lock */
static pthread_once_t terminal_atexit_once = PTHREAD_ONCE_INIT;

static void terminal_restore(void)
{
    pthread_mutex_lock(&terminal_lock);
    if (terminal_is_raw) {
        if (tcsetattr(STDIN_FILENO, TCSANOW, &terminal_saved) != 0)
            fprintf(stderr, "ringvm: console: restoring the terminal (tcsetattr): %s\n", strerror(errno));
        terminal_is_raw = false;
    }
    pthread_mutex_unlock(&terminal_lock);
}

static void terminal_register_atexit(void)
{
    if (atexit(terminal_restore) != 0)
        fprintf(stderr, "ringvm: console: atexit failed: the terminal mode is restored only on a clean "
                        "shutdown\n");
}

/* 1: stdin is a terminal, now raw; 0: stdin is not a terminal; -1: a
 * terminal that is not ours to read (message printed): our controlling
 * terminal with another process group in the foreground (reading would
 * stop us with SIGTTIN, changing its mode would disturb the shell). */
static int terminal_make_raw(void)
{
    if (!isatty(STDIN_FILENO))
        return 0;
    pid_t foreground = tcgetpgrp(STDIN_FILENO);     /* fails: not our controlling terminal */
    if (foreground >= 0 && foreground != getpgrp()) {
        fprintf(stderr, "ringvm: --serial stdio: ringvm is not in the terminal's foreground: stdin is not "
                        "read\n");
        return -1;
    }
    pthread_once(&terminal_atexit_once, terminal_register_atexit);
    pthread_mutex_lock(&terminal_lock);
    struct termios raw;
    if (tcgetattr(STDIN_FILENO, &terminal_saved) != 0) {
        int error = errno;
        pthread_mutex_unlock(&terminal_lock);
        fprintf(stderr, "ringvm: --serial stdio: tcgetattr(stdin): %s: stdin is not read\n", strerror(error));
        return -1;
    }
    raw = terminal_saved;
    terminal_make_settings_raw(&raw);   /* the guest echoes and handles Ctrl-C */
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) != 0) {
        int error = errno;
        pthread_mutex_unlock(&terminal_lock);
        fprintf(stderr, "ringvm: --serial stdio: tcsetattr(stdin, raw): %s: stdin is not read\n", strerror(error));
        return -1;
    }
    terminal_is_raw = true;
    pthread_mutex_unlock(&terminal_lock);
    return 1;
}

/* ---- client output rings (console->lock held) --------------------------------------------- */

static void ring_put(struct console_client *client, const void *bytes, size_t length)
{
    size_t end = (client->ring_start + client->ring_length) % CONSOLE_CLIENT_BUFFER_BYTES;
    size_t first = length < CONSOLE_CLIENT_BUFFER_BYTES - end ? length : CONSOLE_CLIENT_BUFFER_BYTES - end;
    memcpy(client->ring + end, bytes, first);
    memcpy(client->ring, (const uint8_t *)bytes + first, length - first);
    client->ring_length += length;
}

static void queue_output(struct console *console, struct console_client *client, const uint8_t *bytes,
                         size_t length)
{
    size_t room = CONSOLE_CLIENT_BUFFER_BYTES - client->ring_length;
    if (client->dropped_unreported > 0) {
        char notice[128];
        int n = snprintf(notice, sizeof(notice),
                         "\r\n[ringvm console: %" PRIu64 " bytes of output dropped: this client reads too slowly]\r\n",
                         client->dropped_unreported);
        if (n < 0 || (size_t)n > room) {
            client->dropped_unreported += length;
            console->dropped_bytes += length;
            return;
        }
        ring_put(client, notice, (size_t)n);
        room -= (size_t)n;
        client->dropped_unreported = 0;
    }
    size_t taken = length < room ? length : room;
    ring_put(client, bytes, taken);
    if (taken < length) {
        client->dropped_unreported += length - taken;
        console->dropped_bytes += length - taken;
    }
}

/* A message from the console itself; dropped if it does not fit. */
static void queue_notice(struct console *console, struct console_client *client, const char *text)
{
    size_t length = strlen(text);
    pthread_mutex_lock(&console->lock);
    if (CONSOLE_CLIENT_BUFFER_BYTES - client->ring_length >= length)
        ring_put(client, text, length);
    pthread_mutex_unlock(&console->lock);
}

/* serial's output listener: any vCPU thread, serial's lock held. */
static void console_on_output(const uint8_t *bytes, size_t length, void *opaque)
{
    struct console *console = opaque;
    bool wake = false;
    pthread_mutex_lock(&console->lock);
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
        struct console_client *client = console->clients[i];
        if (client == NULL)
            continue;
        bool was_empty = client->ring_length == 0;
        queue_output(console, client, bytes, length);
        if (was_empty && client->ring_length > 0)
            wake = true;
    }
    pthread_mutex_unlock(&console->lock);
    if (wake)
        console_wake(console);
}

static struct uart *console_uart(const struct console *console)
{
    return atomic_load_explicit(&console->uart, memory_order_acquire);
}

/* The UART's rx_space callback: a vCPU thread, the uart lock held. */
static void console_on_rx_space(void *opaque)
{
    console_wake(opaque);
}

/* ---- clients (console thread) -------------------------------------------------------------- */

static void remove_client(struct console *console, unsigned slot)
{
    pthread_mutex_lock(&console->lock);
    struct console_client *client = console->clients[slot];
    console->clients[slot] = NULL;
    console->client_count--;
    if (client->handover_fd >= 0)
        close(client->handover_fd);
    if (client->handover_due)
        pthread_cond_broadcast(&console->handover_done);
    pthread_mutex_unlock(&console->lock);
    if (atomic_load_explicit(&console->writer, memory_order_relaxed) == (int)slot)
        atomic_store_explicit(&console->writer, -1, memory_order_relaxed);
    if (close(client->fd) < 0)
        fprintf(stderr, "ringvm: console: close(client): %s\n", strerror(errno));
    free(client->ring);
    free(client);
}

/* Under console->lock, the ring empty: the rest of the hand-over notice,
 * its first byte carrying the destination connection (SCM_RIGHTS). true
 * when it is all out (the caller removes the client), false for later
 * (the socket is full) or a broken connection (*broken). */
static bool send_handover_notice(struct console *console, struct console_client *client, bool *broken)
{
    const char *notice = client->handover_fd >= 0 ? console->moved_notice : console->attach_notice;
    size_t length = strlen(notice);
    while (client->notice_sent < length) {
        struct iovec iov = {(void *)(notice + client->notice_sent), length - client->notice_sent};
        union {
            struct cmsghdr header;
            char bytes[CMSG_SPACE(sizeof(int))];
        } control;
        struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1};
        if (client->notice_sent == 0 && client->handover_fd >= 0) {
            memset(&control, 0, sizeof(control));
            message.msg_control = control.bytes;
            message.msg_controllen = sizeof(control.bytes);
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &client->handover_fd, sizeof(int));
        }
        ssize_t n = sendmsg(client->fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            if (client->notice_sent == 0 && client->handover_fd >= 0)
                console->handed_over++;
            client->notice_sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return false;
        *broken = true;
        return false;
    }
    return true;
}

/* Sends what the client's ring holds without blocking (then, when the
 * guest moved, the hand-over notice); false when the client must go: its
 * connection failed, or it was handed over (the caller removes it). */
static bool flush_client(struct console *console, struct console_client *client)
{
    bool ok = true;
    pthread_mutex_lock(&console->lock);
    while (client->ring_length > 0) {
        size_t first = CONSOLE_CLIENT_BUFFER_BYTES - client->ring_start;
        if (first > client->ring_length)
            first = client->ring_length;
        ssize_t n = send(client->fd, client->ring + client->ring_start, first, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            client->ring_start = (client->ring_start + (size_t)n) % CONSOLE_CLIENT_BUFFER_BYTES;
            client->ring_length -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        ok = false;         /* EPIPE, ECONNRESET: the peer is gone */
        break;
    }
    if (client->ring_length == 0)
        client->ring_start = 0;
    if (ok && client->ring_length == 0 && client->handover_due) {
        bool broken = false;
        if (send_handover_notice(console, client, &broken) || broken)
            ok = false;
    }
    pthread_mutex_unlock(&console->lock);
    return ok;
}

/* May this client's bytes go to the UART (now or once it sends)? */
static bool may_write(const struct console *console, unsigned slot)
{
    int writer = atomic_load_explicit(&console->writer, memory_order_relaxed);
    return console_uart(console) != NULL && (writer < 0 || writer == (int)slot);
}

static void release_writer(struct console *console, unsigned slot)
{
    if (atomic_load_explicit(&console->writer, memory_order_relaxed) == (int)slot)
        atomic_store_explicit(&console->writer, -1, memory_order_relaxed);
}

/* Reads what the client sent. False when the client must be removed. */
static bool read_client(struct console *console, unsigned slot)
{
    struct console_client *client = console->clients[slot];
    bool writes = may_write(console, slot);
    uint8_t discard[4096];
    uint8_t *buffer = writes ? console->input : discard;
    size_t size = writes ? sizeof(console->input) : sizeof(discard);
    if (writes && console->input_length > 0)
        return true;        /* not polled for input then; nothing to do */
    ssize_t n;
    do {
        n = recv(client->fd, buffer, size, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0) {
        client->read_eof = true;
        release_writer(console, slot);
        return !client->hung_up;
    }
    if (writes) {
        if (atomic_load_explicit(&console->writer, memory_order_relaxed) < 0) {
            atomic_store_explicit(&console->writer, (int)slot, memory_order_relaxed);
            console->writer_generation++;
        }
        console->input_start = 0;
        console->input_length = (size_t)n;
        return true;
    }
    if (console_uart(console) == NULL) {
        if (!client->told_no_uart)
            queue_notice(console, client, "\r\n[ringvm console: this guest has no UART: input ignored]\r\n");
        client->told_no_uart = true;
    } else if (client->refused_generation != console->writer_generation) {
        char notice[160];
        int writer = atomic_load_explicit(&console->writer, memory_order_relaxed);
        pid_t pid = writer >= 0 && console->clients[writer] ? console->clients[writer]->pid : 0;
        snprintf(notice, sizeof(notice),
                 "\r\n[ringvm console: input refused: another client (pid %d) is typing]\r\n", (int)pid);
        queue_notice(console, client, notice);
        client->refused_generation = console->writer_generation;
    }
    return true;
}

static void refuse_connection(int fd, const char *reason)
{
    char message[256];
    int n = snprintf(message, sizeof(message), "ringvm console: refused: %s\r\n", reason);
    if (n > 0) {
        ssize_t sent = send(fd, message, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)sent;     /* best effort: the connection is closed either way */
    }
    if (close(fd) < 0)
        fprintf(stderr, "ringvm: console: close: %s\n", strerror(errno));
}

static void accept_clients(struct console *console)
{
    for (;;) {
        int fd = accept4(console->listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            fprintf(stderr, "ringvm: console: accept: %s; pausing new connections for %d ms\n", strerror(errno),
                    CONSOLE_ACCEPT_PAUSE_MS);
            console->accept_paused_until_ns = monotonic_now_ns() + CONSOLE_ACCEPT_PAUSE_MS * 1000000ull;
            return;
        }
        struct ucred peer;
        char message[160];
        int allowed = unix_listener_check_peer(fd, &peer, message, sizeof(message));
        if (allowed < 0) {
            fprintf(stderr, "ringvm: console: SO_PEERCRED: %s\n", strerror(-allowed));
            refuse_connection(fd, "cannot identify the peer (SO_PEERCRED failed)");
            continue;
        }
        if (allowed == 0) {
            fprintf(stderr, "ringvm: console: refused a connection from pid %d: %s\n", (int)peer.pid, message);
            refuse_connection(fd, message);
            continue;
        }
        unsigned slot = CONSOLE_MAX_CLIENTS;
        for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS && slot == CONSOLE_MAX_CLIENTS; i++)
            if (console->clients[i] == NULL)
                slot = i;
        if (slot == CONSOLE_MAX_CLIENTS) {
            refuse_connection(fd, "too many clients (at most 16)");
            continue;
        }
        struct console_client *client = calloc(1, sizeof(*client));
        uint8_t *ring = malloc(CONSOLE_CLIENT_BUFFER_BYTES);
        if (client == NULL || ring == NULL) {
            free(client);
            free(ring);
            refuse_connection(fd, "out of memory");
            continue;
        }
        client->fd = fd;
        client->pid = peer.pid;
        client->ring = ring;
        client->handover_fd = -1;
        pthread_mutex_lock(&console->lock);
        client->handover_due = console->moved;     /* too late: told where the guest went, then closed */
        console->clients[slot] = client;
        console->client_count++;
        pthread_mutex_unlock(&console->lock);
    }
}

/* ---- input to the UART (console thread) ---------------------------------------------------- */

static void feed_uart(struct console *console)
{
    if (console->input_length == 0)
        return;
    struct uart *uart = console_uart(console);
    if (uart == NULL) {
        console->input_length = 0;      /* nowhere to go */
        return;
    }
    size_t accepted = uart_receive(uart, console->input + console->input_start, console->input_length);
    console->input_start += accepted;
    console->input_length -= accepted;
    if (console->input_length == 0)
        console->input_start = 0;
    atomic_fetch_add_explicit(&console->input_bytes, accepted, memory_order_relaxed);
}

static void read_stdin(struct console *console)
{
    ssize_t n = read(STDIN_FILENO, console->input, sizeof(console->input));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n < 0) {
        fprintf(stderr, "ringvm: console: reading stdin: %s; no more input from it\n", strerror(errno));
        console->stdin_open = false;
        return;
    }
    if (n == 0) {
        console->stdin_open = false;   /* EOF: the guest keeps running */
        return;
    }
    size_t length = (size_t)n;
    if (console->stdin_is_terminal) {
        const uint8_t *escape = memchr(console->input, CONSOLE_ESCAPE_BYTE, length);
        if (escape != NULL) {
            length = (size_t)(escape - console->input);
            console->stdin_open = false;
            fprintf(stderr, "ringvm: Ctrl-] on the console: stopping\n");
            if (kill(getpid(), SIGTERM) != 0)
                fprintf(stderr, "ringvm: console: kill(SIGTERM): %s\n", strerror(errno));
        }
    }
    console->input_start = 0;
    console->input_length = length;
}

/* ---- the thread ------------------------------------------------------------------------------ */

enum { POLL_WAKE, POLL_STDIN, POLL_LISTEN, POLL_FIRST_CLIENT };

static void *console_main(void *argument)
{
    struct console *console = argument;
    pthread_setname_np(pthread_self(), "console");
    struct pollfd fds[POLL_FIRST_CLIENT + CONSOLE_MAX_CLIENTS];
    while (!atomic_load_explicit(&console->stop, memory_order_acquire)) {
        feed_uart(console);
        for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++)
            if (console->clients[i] != NULL && !flush_client(console, console->clients[i]))
                remove_client(console, i);

        bool input_room = console->input_length == 0;
        int timeout = -1;
        fds[POLL_WAKE] = (struct pollfd){.fd = console->wake_fd, .events = POLLIN};
        fds[POLL_STDIN] = (struct pollfd){.fd = console->stdin_open && input_room ? STDIN_FILENO : -1,
                                          .events = POLLIN};
        fds[POLL_LISTEN] = (struct pollfd){.fd = -1, .events = POLLIN};
        if (console->has_socket) {
            uint64_t now = monotonic_now_ns();
            if (console->accept_paused_until_ns <= now) {
                console->accept_paused_until_ns = 0;
                fds[POLL_LISTEN].fd = console->listener.fd;
            } else {
                timeout = (int)((console->accept_paused_until_ns - now) / 1000000ull) + 1;
            }
        }
        pthread_mutex_lock(&console->lock);
        for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
            struct pollfd *entry = &fds[POLL_FIRST_CLIENT + i];
            struct console_client *client = console->clients[i];
            *entry = (struct pollfd){.fd = -1};
            if (client == NULL)
                continue;
            bool readable = !client->read_eof && (!may_write(console, i) || input_room);
            if (client->hung_up && !readable)
                continue;       /* POLLHUP would be reported again and again */
            entry->fd = client->fd;
            entry->events = (short)((readable ? POLLIN : 0) |
                                    (client->ring_length > 0 || client->handover_due ? POLLOUT : 0));
        }
        pthread_mutex_unlock(&console->lock);

        int n = poll(fds, POLL_FIRST_CLIENT + CONSOLE_MAX_CLIENTS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ringvm: console: poll: %s; the console stops\n", strerror(errno));
            break;
        }
        if (fds[POLL_WAKE].revents & POLLIN) {
            uint64_t count;
            if (read(console->wake_fd, &count, sizeof(count)) < 0 && errno != EAGAIN && errno != EINTR)
                fprintf(stderr, "ringvm: console: eventfd read: %s\n", strerror(errno));
        }
        if (fds[POLL_STDIN].revents & (POLLIN | POLLHUP | POLLERR))
            read_stdin(console);
        if (fds[POLL_LISTEN].revents & POLLIN)
            accept_clients(console);
        for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
            short revents = fds[POLL_FIRST_CLIENT + i].revents;
            struct console_client *client = console->clients[i];
            if (client == NULL || revents == 0)
                continue;
            if (revents & POLLHUP)
                client->hung_up = true;
            if (revents & POLLERR) {
                remove_client(console, i);
                continue;
            }
            if ((revents & (POLLIN | POLLHUP)) && !read_client(console, i)) {
                remove_client(console, i);
                continue;
            }
            if (client->hung_up && client->read_eof) {
                remove_client(console, i);
                continue;
            }
            if ((revents & POLLOUT) && !flush_client(console, client))
                remove_client(console, i);
        }
    }
    /* Stopping: what is buffered goes out if the socket takes it now. */
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
        if (console->clients[i] == NULL)
            continue;
        flush_client(console, console->clients[i]);
        remove_client(console, i);
    }
    return NULL;
}

/* ---- create / destroy ---------------------------------------------------------------------- */

static void console_free(struct console *console)
{
    if (console->has_socket)
        unix_listener_close(&console->listener);
    if (console->wake_fd >= 0)
        close(console->wake_fd);
    pthread_mutex_destroy(&console->lock);
    pthread_cond_destroy(&console->handover_done);
    free(console);
}

int console_create(struct console **out, struct serial *serial, struct uart *uart,
                   const struct console_config *config)
{
    *out = NULL;
    struct console *console = calloc(1, sizeof(*console));
    if (console == NULL) {
        fprintf(stderr, "ringvm: console: out of memory\n");
        return -ENOMEM;
    }
    console->serial = serial;
    atomic_init(&console->uart, uart);
    console->wake_fd = -1;
    atomic_init(&console->writer, -1);
    pthread_mutex_init(&console->lock, NULL);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&console->handover_done, &attributes);
    pthread_condattr_destroy(&attributes);
    console->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (console->wake_fd < 0) {
        int error = errno;
        fprintf(stderr, "ringvm: console: eventfd: %s\n", strerror(error));
        console_free(console);
        return -error;
    }
    if (config->socket_path != NULL) {
        int result = unix_listener_open(&console->listener, config->socket_path, "--console", "console");
        if (result < 0) {
            console_free(console);
            return result;
        }
        console->has_socket = true;
    }
    if (config->stdio) {
        int terminal = terminal_make_raw();
        console->stdin_open = terminal >= 0;
        console->stdin_is_terminal = terminal == 1;
    }

    serial_set_output_listener(serial, console_on_output, console);
    if (uart != NULL)
        uart_set_rx_space_callback(uart, console_on_rx_space, console);

    int result = thread_create_without_signals(&console->thread, console_main, console);
    if (result != 0) {
        fprintf(stderr, "ringvm: console: pthread_create(console): %s\n", strerror(result));
        serial_set_output_listener(serial, NULL, NULL);
        if (uart != NULL)
            uart_set_rx_space_callback(uart, NULL, NULL);
        if (console->stdin_is_terminal)
            terminal_restore();
        console_free(console);
        return -result;
    }
    console->thread_started = true;
    *out = console;
    return 0;
}

void console_attach_uart(struct console *console, struct uart *uart)
{
    if (console == NULL || console_uart(console) != NULL)
        return;
    uart_set_rx_space_callback(uart, console_on_rx_space, console);
    atomic_store_explicit(&console->uart, uart, memory_order_release);
    console_wake(console);
}

void console_destroy(struct console *console)
{
    if (console == NULL)
        return;
    /* After these return, no vCPU thread is inside our callbacks. */
    serial_set_output_listener(console->serial, NULL, NULL);
    struct uart *uart = console_uart(console);
    if (uart != NULL)
        uart_set_rx_space_callback(uart, NULL, NULL);
    atomic_store_explicit(&console->stop, true, memory_order_release);
    console_wake(console);
    if (console->thread_started)
        pthread_join(console->thread, NULL);
    if (console->stdin_is_terminal)
        terminal_restore();
    console_free(console);
}

void console_get_stats(struct console *console, struct console_stats *stats)
{
    memset(stats, 0, sizeof(*stats));
    pthread_mutex_lock(&console->lock);
    stats->clients = console->client_count;
    stats->dropped_bytes = console->dropped_bytes;
    pthread_mutex_unlock(&console->lock);
    stats->has_writer = atomic_load_explicit(&console->writer, memory_order_relaxed) >= 0;
    stats->input_bytes = atomic_load_explicit(&console->input_bytes, memory_order_relaxed);
}

/* ---- moving the clients with the guest (console.h) --------------------------------------------- */

static int handover_connect(const char *path, char *error, size_t error_size)
{
    char reason[512];
    /* The receiving ringctl reads it non-blocking as well; the flag
     * travels with the open file. */
    int fd = unix_socket_connect(path, SOCK_NONBLOCK, reason, sizeof(reason));
    if (fd < 0)
        snprintf(error, error_size, "console hand-over: %s", reason);
    return fd;
}

int console_handover_prepare(struct console *console, const char *destination_path, char *error, size_t error_size)
{
    if (console == NULL)
        return 0;
    struct console_client *wanted[CONSOLE_MAX_CLIENTS];
    pthread_mutex_lock(&console->lock);
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
        struct console_client *client = console->clients[i];
        wanted[i] = client != NULL && client->handover_fd < 0 && !client->handover_due ? client : NULL;
    }
    pthread_mutex_unlock(&console->lock);
    /* Connect outside the lock (the output listener takes it); a client
     * that left meanwhile gets nothing and its connection is closed. */
    int fds[CONSOLE_MAX_CLIENTS];
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
        fds[i] = -1;
        if (wanted[i] == NULL)
            continue;
        fds[i] = handover_connect(destination_path, error, error_size);
        if (fds[i] < 0) {
            int result = fds[i];
            for (unsigned j = 0; j < i; j++)
                if (fds[j] >= 0)
                    close(fds[j]);
            return result;
        }
    }
    unsigned prepared = 0;
    pthread_mutex_lock(&console->lock);
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
        if (fds[i] < 0)
            continue;
        if (console->clients[i] == wanted[i]) {
            wanted[i]->handover_fd = fds[i];
            prepared++;
        } else {
            close(fds[i]);
        }
    }
    pthread_mutex_unlock(&console->lock);
    return (int)prepared;
}

void console_handover_cancel(struct console *console)
{
    if (console == NULL)
        return;
    pthread_mutex_lock(&console->lock);
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++) {
        struct console_client *client = console->clients[i];
        if (client != NULL && client->handover_fd >= 0 && !client->handover_due) {
            close(client->handover_fd);
            client->handover_fd = -1;
        }
    }
    pthread_mutex_unlock(&console->lock);
}

static bool handover_pending(const struct console *console)
{
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++)
        if (console->clients[i] != NULL && console->clients[i]->handover_due)
            return true;
    return false;
}

int console_handover_commit(struct console *console, const char *where, unsigned timeout_ms)
{
    if (console == NULL)
        return 0;
    char text[CONSOLE_HANDOVER_TEXT_MAX];
    snprintf(text, sizeof(text), "%s", where);
    /* Printable ASCII only: it goes to terminals. */
    for (char *c = text; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            *c = '?';
    pthread_mutex_lock(&console->lock);
    if (!console->moved) {
        snprintf(console->moved_notice, sizeof(console->moved_notice),
                 "\r\n[ringvm console: the guest moved to %s; this console continues there]\r\n", text);
        snprintf(console->attach_notice, sizeof(console->attach_notice),
                 "\r\n[ringvm console: the guest moved to %s; attach to its console there]\r\n", text);
        console->moved = true;
    }
    for (unsigned i = 0; i < CONSOLE_MAX_CLIENTS; i++)
        if (console->clients[i] != NULL)
            console->clients[i]->handover_due = true;
    pthread_mutex_unlock(&console->lock);
    console_wake(console);

    struct timespec deadline = monotonic_deadline_after_ns((uint64_t)timeout_ms * 1000000u);
    pthread_mutex_lock(&console->lock);
    while (handover_pending(console) && !atomic_load_explicit(&console->stop, memory_order_acquire))
        if (pthread_cond_timedwait(&console->handover_done, &console->lock, &deadline) == ETIMEDOUT)
            break;
    int moved = (int)console->handed_over;
    pthread_mutex_unlock(&console->lock);
    return moved;
}
