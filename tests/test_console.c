/*
 * The console (vmm/console.c) for real: a UART with a fake interrupt line,
 * serial's output path, the console thread and its socket in a temporary
 * directory, clients in this process, and build/ringctl console spawned.
 * No KVM and no VM: "the guest" is this test driving the UART's ports.
 * Every wait is on a condition with a timeout.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "api/commands.h"
#include "api/ringctl_console.h"
#include "migration/migration.h"
#include "tests/harness.h"
#include "tests/pseudo_terminal.h"
#include "vmm/console.h"
#include "vmm/serial.h"
#include "vmm/uart.h"

#define WAIT_MS 10000

enum { THR = 0, RBR = 0, IER = 1, FCR = 2, MCR = 4, LSR = 5 };

/* ---- a UART, serial and console without a VM -------------------------------------------- */

struct fixture {
    struct serial serial;
    struct uart *uart;
    struct console *console;
    _Atomic unsigned irq_changes;       /* set_irq calls (vCPU or console thread) */
    char directory[64];
    char path[128];
    /* What "the guest" read from RBR so far. */
    uint8_t received[8192];
    size_t received_length;
};

static void fixture_irq(void *opaque, bool level)
{
    (void)level;
    struct fixture *fixture = opaque;
    atomic_fetch_add(&fixture->irq_changes, 1);
}

static void fixture_transmit(void *opaque, const uint8_t *bytes, size_t length)
{
    struct fixture *fixture = opaque;
    serial_write_bytes(&fixture->serial, bytes, length);
}

static void fixture_start(struct fixture *fixture, bool with_socket)
{
    memset(fixture, 0, sizeof(*fixture));
    struct serial_config serial_config = {.mode = SERIAL_NONE};
    cr_assert_eq(serial_init(&fixture->serial, &serial_config), 0);
    struct uart_callbacks callbacks = {.set_irq = fixture_irq, .transmit = fixture_transmit, .opaque = fixture};
    cr_assert_eq(uart_create(&fixture->uart, &callbacks), 0);
    uint8_t value = 0x01;                       /* FIFOs on, as Linux runs it */
    uart_port_io(fixture->uart, FCR, true, &value, 1);
    value = 0x0b;                               /* DTR, RTS, OUT2 */
    uart_port_io(fixture->uart, MCR, true, &value, 1);
    value = 0x05;                               /* RX and line status interrupts */
    uart_port_io(fixture->uart, IER, true, &value, 1);
    snprintf(fixture->directory, sizeof(fixture->directory), "/tmp/ringvm-console-XXXXXX");
    cr_assert_not_null(mkdtemp(fixture->directory), "mkdtemp: %s", strerror(errno));
    snprintf(fixture->path, sizeof(fixture->path), "%s/console.sock", fixture->directory);
    if (with_socket) {
        struct console_config config = {.socket_path = fixture->path};
        cr_assert_eq(console_create(&fixture->console, &fixture->serial, fixture->uart, &config), 0);
    }
}

static void fixture_stop(struct fixture *fixture)
{
    console_destroy(fixture->console);
    fixture->console = NULL;
    uart_destroy(fixture->uart);
    serial_destroy(&fixture->serial);
    unlink(fixture->path);
    rmdir(fixture->directory);
}

/* The guest prints: one THR write per byte, as Linux's 8250 driver does. */
static void guest_print(struct fixture *fixture, const char *text)
{
    for (const char *c = text; *c; c++) {
        uint8_t byte = (uint8_t)*c;
        uart_port_io(fixture->uart, THR, true, &byte, 1);
    }
}

/* The guest drains its RX FIFO (as its interrupt handler would). */
static void guest_read(struct fixture *fixture)
{
    for (;;) {
        uint8_t lsr;
        uart_port_io(fixture->uart, LSR, false, &lsr, 1);
        if (!(lsr & 0x01) || fixture->received_length == sizeof(fixture->received))
            return;
        uart_port_io(fixture->uart, RBR, false, &fixture->received[fixture->received_length++], 1);
    }
}

struct expect_input {
    struct fixture *fixture;
    size_t length;
};

static bool guest_has_read(void *argument)
{
    struct expect_input *expect = argument;
    guest_read(expect->fixture);
    return expect->fixture->received_length >= expect->length;
}

static void guest_wait_input(struct fixture *fixture, const char *expected)
{
    size_t length = strlen(expected);
    struct expect_input expect = {.fixture = fixture, .length = length};
    cr_assert(harness_wait_until(guest_has_read, &expect, WAIT_MS), "the guest read %zu of %zu bytes",
              fixture->received_length, length);
    cr_assert_eq(fixture->received_length, length, "the guest read more than was sent");
    cr_assert_arr_eq(fixture->received, expected, length, "the guest read '%.*s'", (int)fixture->received_length,
                     (const char *)fixture->received);
}

struct expect_stats {
    struct console *console;
    unsigned clients;
    int has_writer;         /* -1: either */
};

static bool stats_match(void *argument)
{
    struct expect_stats *expect = argument;
    struct console_stats stats;
    console_get_stats(expect->console, &stats);
    return stats.clients == expect->clients && (expect->has_writer < 0 || stats.has_writer == (bool)expect->has_writer);
}

static void wait_stats(struct fixture *fixture, unsigned clients, int has_writer)
{
    struct expect_stats expect = {.console = fixture->console, .clients = clients, .has_writer = has_writer};
    bool matched = harness_wait_until(stats_match, &expect, WAIT_MS);
    struct console_stats stats;
    console_get_stats(fixture->console, &stats);
    cr_assert(matched, "the console never had %u clients (writer %d); it has %u (writer %d)", clients, has_writer,
              stats.clients, (int)stats.has_writer);
}

/* ---- clients in this process ------------------------------------------------------------- */

struct peer {
    int fd;
    char *data;             /* everything received, NUL-terminated */
    size_t length, capacity;
};

static void peer_connect(struct peer *peer, const char *path)
{
    memset(peer, 0, sizeof(*peer));
    peer->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(peer->fd, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(path), sizeof(address.sun_path));
    memcpy(address.sun_path, path, strlen(path) + 1);
    cr_assert_eq(connect(peer->fd, (struct sockaddr *)&address, sizeof(address)), 0, "connect %s: %s", path,
                 strerror(errno));
    peer->capacity = 4096;
    peer->data = calloc(1, peer->capacity);
}

static void peer_close(struct peer *peer)
{
    if (peer->fd >= 0)
        close(peer->fd);
    peer->fd = -1;
    free(peer->data);
    peer->data = NULL;
}

static void peer_send(struct peer *peer, const char *text)
{
    cr_assert_eq(send(peer->fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
}

/* Reads what is there within timeout_ms; false on EOF or timeout. */
static bool peer_pump(struct peer *peer, int timeout_ms)
{
    struct pollfd entry = {.fd = peer->fd, .events = POLLIN};
    int n = poll(&entry, 1, timeout_ms);
    if (n <= 0)
        return false;
    if (peer->capacity - peer->length < 65537) {
        peer->capacity = peer->capacity * 2 + 65537;
        peer->data = realloc(peer->data, peer->capacity);
        cr_assert_not_null(peer->data);
    }
    ssize_t got = recv(peer->fd, peer->data + peer->length, peer->capacity - peer->length - 1, MSG_DONTWAIT);
    if (got <= 0)
        return got < 0 && errno == EAGAIN;
    peer->length += (size_t)got;
    peer->data[peer->length] = '\0';
    return true;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits until the peer has received at least `length` bytes. */
static bool peer_wait_length(struct peer *peer, size_t length, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    while (peer->length < length) {
        uint64_t now = now_ms();
        if (now >= deadline || !peer_pump(peer, (int)(deadline - now)))
            return peer->length >= length;
    }
    return true;
}

static bool peer_wait_text(struct peer *peer, const char *needle, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    while (peer->data == NULL || memmem(peer->data, peer->length, needle, strlen(needle)) == NULL) {
        uint64_t now = now_ms();
        if (now >= deadline || !peer_pump(peer, (int)(deadline - now)))
            return memmem(peer->data, peer->length, needle, strlen(needle)) != NULL;
    }
    return true;
}

/* ---- serial's raw path --------------------------------------------------------------------- */

struct capture {
    char lines[8][64];
    unsigned line_count;
    char output[256];
    size_t output_length;
};

static void capture_line(const char *line, size_t length, void *opaque)
{
    struct capture *capture = opaque;
    cr_assert_lt(capture->line_count, 8);
    snprintf(capture->lines[capture->line_count++], 64, "%.*s", (int)length, line);
}

static void capture_output(const uint8_t *bytes, size_t length, void *opaque)
{
    struct capture *capture = opaque;
    cr_assert_leq(capture->output_length + length, sizeof(capture->output));
    memcpy(capture->output + capture->output_length, bytes, length);
    capture->output_length += length;
}

Test(console, serial_raw_bytes_go_out_at_once_and_still_make_lines)
{
    char path[] = "/tmp/ringvm-serial-XXXXXX";
    int file = mkstemp(path);
    cr_assert_geq(file, 0);
    close(file);
    struct serial_config config;
    char error[128];
    char spec[64];
    snprintf(spec, sizeof(spec), "file:%s", path);
    cr_assert_eq(serial_config_parse(spec, &config, error, sizeof(error)), 0, "%s", error);
    struct serial serial;
    cr_assert_eq(serial_init(&serial, &config), 0);
    struct capture capture = {0};
    serial.on_line = capture_line;
    serial.on_line_opaque = &capture;
    serial_set_output_listener(&serial, capture_output, &capture);

    const char *raw = "LEDGER OK pages=1 gen=2 vcpu=0\r\n~ # ";
    serial_write_bytes(&serial, (const uint8_t *)raw, strlen(raw));
    cr_assert_eq(capture.line_count, 1);
    cr_assert_str_eq(capture.lines[0], "LEDGER OK pages=1 gen=2 vcpu=0");
    cr_assert_eq(capture.output_length, strlen(raw), "the prompt is not held back for a newline");
    cr_assert_arr_eq(capture.output, raw, strlen(raw));
    serial_write_bytes(&serial, (const uint8_t *)"ls\r\n", 4);
    cr_assert_eq(capture.line_count, 2);
    cr_assert_str_eq(capture.lines[1], "~ # ls");
    /* built-in guest text: whole lines, to the listener too */
    serial_write_text(&serial, 1, "vcpu1 says hi\n", 14);
    cr_assert_eq(capture.line_count, 3);
    cr_assert_str_eq(capture.lines[2], "vcpu1 says hi");
    serial_set_output_listener(&serial, NULL, NULL);
    serial_write_bytes(&serial, (const uint8_t *)"x", 1);
    serial_destroy(&serial);
    cr_assert_eq(capture.line_count, 4, "destroy flushes the partial line");
    cr_assert_str_eq(capture.lines[3], "x");

    const char *expected = "LEDGER OK pages=1 gen=2 vcpu=0\r\n~ # ls\r\nvcpu1 says hi\nx";
    cr_assert_eq(capture.output_length, strlen(expected) - 1, "the listener was removed before 'x'");
    cr_assert_arr_eq(capture.output, expected, strlen(expected) - 1);
    char content[256] = "";
    FILE *in = fopen(path, "r");
    cr_assert_not_null(in);
    size_t got = fread(content, 1, sizeof(content) - 1, in);
    fclose(in);
    unlink(path);
    cr_assert_eq(got, strlen(expected));
    cr_assert_str_eq(content, expected);
}

Test(console, serial_stdio_mode_parses)
{
    struct serial_config config;
    char error[128];
    cr_assert_eq(serial_config_parse("stdio", &config, error, sizeof(error)), 0);
    cr_assert_eq(config.mode, SERIAL_STDIO);
    cr_assert_eq(serial_config_parse("tty", &config, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "--serial: 'tty': expected stdout, stdio, none or file:PATH");
}

/* ---- the console socket ---------------------------------------------------------------------- */

Test(console, two_readers_get_the_output_from_when_they_attached, .timeout = 30)
{
    struct fixture f;
    fixture_start(&f, true);
    struct peer a, b, c;
    peer_connect(&a, f.path);
    peer_connect(&b, f.path);
    wait_stats(&f, 2, 0);
    guest_print(&f, "Welcome to the ringvm guest\r\n~ # ");
    const char *first = "Welcome to the ringvm guest\r\n~ # ";
    cr_assert(peer_wait_length(&a, strlen(first), WAIT_MS));
    cr_assert(peer_wait_length(&b, strlen(first), WAIT_MS));
    cr_assert_str_eq(a.data, first);
    cr_assert_str_eq(b.data, first);

    peer_connect(&c, f.path);
    wait_stats(&f, 3, 0);
    guest_print(&f, "later\r\n");
    cr_assert(peer_wait_length(&c, 7, WAIT_MS));
    cr_assert(peer_wait_length(&a, strlen(first) + 7, WAIT_MS));
    cr_assert_str_eq(c.data, "later\r\n", "a late reader starts at its attach");
    cr_assert_str_eq(a.data + strlen(first), "later\r\n");
    peer_close(&a);
    peer_close(&b);
    peer_close(&c);
    wait_stats(&f, 0, 0);
    fixture_stop(&f);
}

Test(console, first_writer_reaches_the_uart_in_order_second_is_refused, .timeout = 30)
{
    struct fixture f;
    fixture_start(&f, true);
    struct peer a, b;
    peer_connect(&a, f.path);
    peer_connect(&b, f.path);
    wait_stats(&f, 2, 0);
    /* 40 bytes: more than the 16-byte FIFO, so the rest waits for room */
    const char *typed = "echo the quick brown fox jumps over it\r\n";
    peer_send(&a, typed);
    guest_wait_input(&f, typed);
    wait_stats(&f, 2, 1);
    cr_assert_gt(atomic_load(&f.irq_changes), 0, "RX raised the interrupt line");

    peer_send(&b, "rm -rf /\r");
    char refusal[128];
    snprintf(refusal, sizeof(refusal), "\r\n[ringvm console: input refused: another client (pid %d) is typing]\r\n",
             (int)getpid());
    cr_assert(peer_wait_text(&b, refusal, WAIT_MS), "b got: '%s'", b.data ? b.data : "");
    guest_read(&f);
    cr_assert_eq(f.received_length, strlen(typed), "the refused bytes reached the guest");
    peer_send(&b, "again");
    guest_print(&f, "$ ");
    cr_assert(peer_wait_text(&b, "$ ", WAIT_MS));
    cr_assert_eq(strstr(b.data + strlen(refusal), "refused"), NULL, "told twice for the same writer: %s", b.data);

    /* the writer leaves: the next client that types writes */
    peer_close(&a);
    wait_stats(&f, 1, 0);
    f.received_length = 0;
    peer_send(&b, "ls\r");
    guest_wait_input(&f, "ls\r");
    wait_stats(&f, 1, 1);
    peer_close(&b);
    fixture_stop(&f);
}

Test(console, socket_is_0600_and_removed_live_path_refused_stale_replaced, .timeout = 30)
{
    struct fixture f;
    mode_t old = umask(0);
    fixture_start(&f, true);
    umask(old);
    struct stat st;
    cr_assert_eq(lstat(f.path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);

    struct console *second = NULL;
    struct console_config config = {.socket_path = f.path};
    cr_assert_eq(console_create(&second, &f.serial, NULL, &config), -EADDRINUSE);
    cr_assert_null(second);
    struct peer a;
    peer_connect(&a, f.path);                   /* the first still serves */
    wait_stats(&f, 1, 0);
    peer_close(&a);

    console_destroy(f.console);
    f.console = NULL;
    cr_assert_eq(lstat(f.path, &st), -1, "socket file left behind");
    cr_assert_eq(errno, ENOENT);

    /* a socket file nobody listens on (a crashed ringvm's) is taken over */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(f.path), sizeof(address.sun_path));
    memcpy(address.sun_path, f.path, strlen(f.path) + 1);
    cr_assert_eq(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    close(fd);
    cr_assert_eq(console_create(&f.console, &f.serial, f.uart, &config), 0, "a stale socket must be replaced");
    console_destroy(f.console);
    f.console = NULL;

    /* anything else is never replaced */
    int file = open(f.path, O_CREAT | O_WRONLY, 0644);
    cr_assert_geq(file, 0);
    close(file);
    cr_assert_eq(console_create(&second, &f.serial, f.uart, &config), -EEXIST);
    cr_assert_eq(lstat(f.path, &st), 0);
    cr_assert(S_ISREG(st.st_mode));
    fixture_stop(&f);
}

/* A reader thread that keeps up with the output. */
struct fast_reader {
    struct peer peer;
    _Atomic size_t received;
    size_t want;
};

static void *fast_reader_main(void *argument)
{
    struct fast_reader *reader = argument;
    while (reader->peer.length < reader->want && peer_pump(&reader->peer, WAIT_MS))
        atomic_store(&reader->received, reader->peer.length);
    atomic_store(&reader->received, reader->peer.length);
    return NULL;
}

struct expect_received {
    struct fast_reader *reader;
    size_t length;
};

static bool reader_has(void *argument)
{
    struct expect_received *expect = argument;
    return atomic_load(&expect->reader->received) >= expect->length;
}

Test(console, a_reader_that_never_reads_blocks_nobody, .timeout = 60)
{
    struct fixture f;
    fixture_start(&f, true);
    struct peer slow;
    peer_connect(&slow, f.path);
    struct fast_reader fast = {.want = 1u << 20};
    peer_connect(&fast.peer, f.path);
    wait_stats(&f, 2, 0);
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, fast_reader_main, &fast), 0);

    /* 1 MiB of output in 8 KiB writes; each waits for the fast reader, so
     * its own buffer never overflows, while the slow one's must. */
    uint8_t chunk[8192];
    for (size_t done = 0; done < fast.want; done += sizeof(chunk)) {
        for (size_t i = 0; i < sizeof(chunk); i++)
            chunk[i] = (uint8_t)('A' + (done + i) % 23);
        serial_write_bytes(&f.serial, chunk, sizeof(chunk));
        struct expect_received expect = {.reader = &fast, .length = done + sizeof(chunk)};
        cr_assert(harness_wait_until(reader_has, &expect, WAIT_MS), "the fast reader stalled at %zu bytes",
                  atomic_load(&fast.received));
    }
    pthread_join(thread, NULL);
    cr_assert_eq(fast.peer.length, fast.want);
    for (size_t i = 0; i < fast.want; i++)
        if (fast.peer.data[i] != (char)('A' + i % 23))
            cr_assert_fail("the fast reader's byte %zu is wrong", i);

    struct console_stats stats;
    console_get_stats(f.console, &stats);
    cr_assert_gt(stats.dropped_bytes, 0, "1 MiB never filled the slow reader's buffer and socket");
    cr_assert_lt(stats.dropped_bytes, fast.want);
    /* the slow reader catches up: what was kept, then the notice */
    size_t kept = fast.want - stats.dropped_bytes;
    cr_assert(peer_wait_length(&slow, kept, WAIT_MS), "the slow reader got %zu of %zu kept bytes", slow.length, kept);
    for (size_t i = 0; i < kept; i++)
        if (slow.data[i] != (char)('A' + i % 23))
            cr_assert_fail("the slow reader's byte %zu is wrong", i);
    guest_print(&f, "tail\r\n");
    char notice[160];
    snprintf(notice, sizeof(notice),
             "\r\n[ringvm console: %llu bytes of output dropped: this client reads too slowly]\r\ntail\r\n",
             (unsigned long long)stats.dropped_bytes);
    cr_assert(peer_wait_length(&slow, kept + strlen(notice), WAIT_MS));
    cr_assert_str_eq(slow.data + kept, notice);
    peer_close(&slow);
    peer_close(&fast.peer);
    fixture_stop(&f);
}

/* stdin as a pipe (not a terminal): read as it is; EOF stops only that. */
Test(console, stdio_pipe_feeds_the_uart, .timeout = 30)
{
    struct fixture f;
    fixture_start(&f, false);
    int pipe_fds[2];
    cr_assert_eq(pipe(pipe_fds), 0);
    cr_assert_eq(dup2(pipe_fds[0], STDIN_FILENO), STDIN_FILENO);
    close(pipe_fds[0]);
    struct console_config config = {.stdio = true};
    cr_assert_eq(console_create(&f.console, &f.serial, f.uart, &config), 0);
    const char *typed = "cat /proc/cpuinfo\n\x1d and Ctrl-] is just a byte from a pipe\n";
    cr_assert_eq(write(pipe_fds[1], typed, strlen(typed)), (ssize_t)strlen(typed));
    guest_wait_input(&f, typed);
    close(pipe_fds[1]);                         /* EOF */
    struct console_stats stats;
    console_get_stats(f.console, &stats);
    cr_assert_eq(stats.input_bytes, strlen(typed));
    fixture_stop(&f);
}

/* ---- terminals (a pseudo-terminal stands in for the user's) ------------------------------ */

/* --serial stdio on a terminal: raw while the console runs, restored by
 * console_destroy; Ctrl-] stops ringvm with SIGTERM to itself. */
Test(console, stdio_terminal_is_raw_ctrl_bracket_sends_sigterm_and_destroy_restores, .timeout = 30)
{
    struct pseudo_terminal pty;
    pseudo_terminal_open(&pty);
    cr_assert(pty.original.c_lflag & ICANON, "a new pty starts in canonical mode");
    cr_assert(pty.original.c_lflag & ECHO);
    struct fixture f;
    fixture_start(&f, false);
    cr_assert_eq(dup2(pty.slave, STDIN_FILENO), STDIN_FILENO);
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    cr_assert_eq(pthread_sigmask(SIG_BLOCK, &term, NULL), 0);     /* ringvm's main blocks it too */
    struct console_config config = {.stdio = true};
    cr_assert_eq(console_create(&f.console, &f.serial, f.uart, &config), 0);
    cr_assert(pseudo_terminal_is_raw(&pty));
    cr_assert_eq(write(pty.master, "top\r\x03q\x1d", 7), 7);
    guest_wait_input(&f, "top\r\x03q");
    struct timespec wait = {.tv_sec = WAIT_MS / 1000};
    cr_assert_eq(sigtimedwait(&term, NULL, &wait), SIGTERM, "Ctrl-] did not raise SIGTERM");
    console_destroy(f.console);
    f.console = NULL;
    pseudo_terminal_assert_restored(&pty);
    close(STDIN_FILENO);
    pseudo_terminal_close(&pty);
    fixture_stop(&f);
}

/* ---- ringctl console ---------------------------------------------------------------------------- */

static const char *ringctl_or_skip(void)
{
    const char *ringctl = harness_program("ringctl");
    if (access(ringctl, X_OK) != 0)
        harness_skip("%s not built (make all)", ringctl);
    return ringctl;
}

static int child_stdin = -1;        /* read end for the child's stdin */

static int use_child_stdin(void)
{
    return dup2(child_stdin, STDIN_FILENO) == STDIN_FILENO ? 0 : errno;
}

static int spawn_ringctl_console_until(struct harness_process *process, const char *ringctl, const char *path,
                                       const char *timeout, const char *until)
{
    int pipe_fds[2];
    cr_assert_eq(pipe2(pipe_fds, O_CLOEXEC), 0);
    child_stdin = pipe_fds[0];
    char *argv[9] = {(char *)ringctl, "console", "--socket", (char *)path, NULL};   /* 8 + NULL */
    unsigned n = 4;
    if (timeout != NULL) {
        argv[n++] = "--timeout";
        argv[n++] = (char *)timeout;
    }
    if (until != NULL) {
        argv[n++] = "--until";
        argv[n++] = (char *)until;
    }
    harness_spawn_prepared(process, argv, use_child_stdin);
    close(pipe_fds[0]);
    return pipe_fds[1];
}

static int spawn_ringctl_console(struct harness_process *process, const char *ringctl, const char *path,
                                 const char *timeout)
{
    return spawn_ringctl_console_until(process, ringctl, path, timeout, NULL);
}

Test(console, ringctl_console_types_prints_and_detaches_on_ctrl_bracket, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct fixture f;
    fixture_start(&f, true);
    struct harness_process process;
    int input = spawn_ringctl_console(&process, ringctl, f.path, NULL);
    wait_stats(&f, 1, 0);
    cr_assert_eq(write(input, "uname -a\r", 9), 9);
    guest_wait_input(&f, "uname -a\r");
    guest_print(&f, "uname -a\r\nLinux ringvm 6.1.0 x86_64\r\n~ # ");
    cr_assert(harness_process_wait_output(&process, "Linux ringvm 6.1.0 x86_64\r\n~ # ", 1, WAIT_MS),
              "ringctl printed: '%s' (stderr '%s')", process.out, process.err);
    cr_assert_eq(write(input, "x\x1dnot sent", 10), 10);
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 0, "ringctl console exited %d; stderr: %s", status, process.err);
    cr_assert(strstr(process.err, "ringctl console: detached\n") != NULL, "stderr: %s", process.err);
    cr_assert_str_eq(process.out, "uname -a\r\nLinux ringvm 6.1.0 x86_64\r\n~ # ");
    guest_wait_input(&f, "uname -a\rx");
    wait_stats(&f, 0, 0);
    close(input);
    harness_process_free(&process);
    fixture_stop(&f);
}

Test(console, ringctl_console_after_eof_prints_until_timeout, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct fixture f;
    fixture_start(&f, true);
    struct harness_process process;
    int input = spawn_ringctl_console(&process, ringctl, f.path, "300");
    wait_stats(&f, 1, 0);
    cr_assert_eq(write(input, "date\r", 5), 5);
    guest_wait_input(&f, "date\r");
    wait_stats(&f, 1, 1);
    close(input);                                /* EOF: the writer role is released */
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 0, "ringctl console exited %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, "");
    wait_stats(&f, 0, 0);
    harness_process_free(&process);
    fixture_stop(&f);
}

/* --until ends ringctl as soon as the text went by, also when it came in
 * two pieces, with stdin still open and an hour of --timeout left. */
Test(console, ringctl_console_until_ends_at_the_text_even_split_across_reads, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct fixture f;
    fixture_start(&f, true);
    struct harness_process process;
    int input = spawn_ringctl_console_until(&process, ringctl, f.path, "3600000", "answer-42");
    wait_stats(&f, 1, 0);
    static const char typed[] = "echo answer-$((6*7))\r";
    cr_assert_eq(write(input, typed, strlen(typed)), (ssize_t)strlen(typed));
    guest_wait_input(&f, "echo answer-$((6*7))\r");
    guest_print(&f, "echo answer-$((6*7))\r\nansw");
    cr_assert(harness_process_wait_output(&process, "\r\nansw", 1, WAIT_MS), "ringctl printed: '%s'", process.out);
    guest_print(&f, "er-42\r\n~ # ");
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 0, "ringctl console exited %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, "");
    cr_assert(strstr(process.out, "\r\nanswer-42") != NULL, "stdout: %s", process.out);
    close(input);
    harness_process_free(&process);
    fixture_stop(&f);
}

/* Not seen within --timeout after the end of input, or before the console
 * closes: exit 1 saying which. */
Test(console, ringctl_console_until_not_seen_is_exit_1, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct fixture f;
    fixture_start(&f, true);
    struct harness_process process;
    int input = spawn_ringctl_console_until(&process, ringctl, f.path, "200", "never-printed");
    wait_stats(&f, 1, 0);
    guest_print(&f, "never-print\r\n");
    cr_assert(harness_process_wait_output(&process, "never-print\r\n", 1, WAIT_MS));
    close(input);
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 1, "ringctl console exited %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, "ringctl console: --until 'never-printed': not seen within --timeout 200 ms "
                                  "after the end of input\n");
    harness_process_free(&process);
    wait_stats(&f, 0, 0);

    input = spawn_ringctl_console_until(&process, ringctl, f.path, NULL, "never-printed");
    wait_stats(&f, 1, 0);
    console_destroy(f.console);
    f.console = NULL;
    status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 1, "ringctl console exited %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, "ringctl console: ringvm closed the console\n"
                                  "ringctl console: --until 'never-printed': not seen before the console closed\n");
    close(input);
    harness_process_free(&process);
    fixture_stop(&f);
}

Test(console, ringctl_console_ends_when_ringvm_closes_it, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct fixture f;
    fixture_start(&f, true);
    struct harness_process process;
    int input = spawn_ringctl_console(&process, ringctl, f.path, NULL);
    wait_stats(&f, 1, 0);
    guest_print(&f, "reboot: Power down\r\n");
    cr_assert(harness_process_wait_output(&process, "reboot: Power down\r\n", 1, WAIT_MS));
    console_destroy(f.console);
    f.console = NULL;
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 0, "stderr: %s", process.err);
    cr_assert_str_eq(process.err, "ringctl console: ringvm closed the console\n");
    close(input);
    harness_process_free(&process);
    fixture_stop(&f);
}

static int child_terminal = -1;     /* pty slave for the child's stdin */

static int use_child_terminal(void)
{
    return dup2(child_terminal, STDIN_FILENO) == STDIN_FILENO ? 0 : errno;
}

Test(console, ringctl_console_on_a_terminal_is_raw_and_restores_it, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct pseudo_terminal pty;
    pseudo_terminal_open(&pty);
    cr_assert(pty.original.c_lflag & ICANON, "a new pty starts in canonical mode");
    cr_assert(pty.original.c_lflag & ECHO);
    struct fixture f;
    fixture_start(&f, true);
    child_terminal = pty.slave;
    struct harness_process process;
    char *argv[] = {(char *)ringctl, "console", "--socket", f.path, NULL};
    harness_spawn_prepared(&process, argv, use_child_terminal);
    wait_stats(&f, 1, 0);
    cr_assert(harness_wait_until(pseudo_terminal_is_raw, &pty, WAIT_MS),
              "ringctl never put the terminal in raw mode");
    /* Ctrl-C is a byte for the guest; \r is not turned into \n */
    cr_assert_eq(write(pty.master, "vi\r\x03", 4), 4);
    guest_wait_input(&f, "vi\r\x03");
    cr_assert_eq(write(pty.master, "\x1d", 1), 1);
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 0, "stderr: %s", process.err);
    char attached[256];
    snprintf(attached, sizeof(attached), "ringctl console: attached to %s; Ctrl-] detaches\n"
             "ringctl console: detached\n", f.path);
    cr_assert_str_eq(process.err, attached);
    pseudo_terminal_assert_restored(&pty);
    harness_process_free(&process);

    /* killed with SIGTERM: the terminal is restored all the same */
    harness_spawn_prepared(&process, argv, use_child_terminal);
    wait_stats(&f, 1, 0);
    cr_assert(harness_wait_until(pseudo_terminal_is_raw, &pty, WAIT_MS));
    cr_assert_eq(kill(process.pid, SIGTERM), 0);
    status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 128 + SIGTERM, "status %d; stderr: %s", status, process.err);
    pseudo_terminal_assert_restored(&pty);
    harness_process_free(&process);
    pseudo_terminal_close(&pty);
    fixture_stop(&f);
}

Test(console, ringctl_console_usage_and_connect_errors)
{
    const char *ringctl = ringctl_or_skip();
    struct harness_process process;
    char *no_socket[] = {(char *)ringctl, "console", NULL};
    unsetenv("RINGVM_CONSOLE");
    harness_spawn(&process, no_socket);
    cr_assert_eq(harness_process_wait_exit(&process, WAIT_MS), 2);
    cr_assert_str_eq(process.err, "ringctl console: no console socket: use --socket PATH (ringvm's --console "
                                  "unix:PATH) or set RINGVM_CONSOLE\n");
    harness_process_free(&process);

    char *missing[] = {(char *)ringctl, "console", "--socket", "/nonexistent/ringvm-console.sock", NULL};
    harness_spawn(&process, missing);
    cr_assert_eq(harness_process_wait_exit(&process, WAIT_MS), 3);
    cr_assert_str_eq(process.err, "ringctl console: connect(unix:/nonexistent/ringvm-console.sock): No such "
                                  "file or directory (is ringvm running with --console unix:PATH on this path?)\n");
    harness_process_free(&process);

    char long_path[120];
    memset(long_path, 'x', sizeof(long_path) - 1);
    long_path[0] = '/';
    long_path[sizeof(long_path) - 1] = '\0';
    char *too_long[] = {(char *)ringctl, "console", "--socket", long_path, NULL};
    harness_spawn(&process, too_long);
    cr_assert_eq(harness_process_wait_exit(&process, WAIT_MS), 2);
    char expected[256];
    snprintf(expected, sizeof(expected),
             "ringctl console: --socket: unix socket path %s is 119 bytes, the limit is 107\n", long_path);
    cr_assert_str_eq(process.err, expected);
    harness_process_free(&process);

    char *bad_timeout[] = {(char *)ringctl, "console", "--socket", "/x", "--timeout", "soon", NULL};
    harness_spawn(&process, bad_timeout);
    cr_assert_eq(harness_process_wait_exit(&process, WAIT_MS), 2);
    cr_assert(strstr(process.err, "ringctl console: --timeout 'soon': expected an integer 1..86400000\n"),
              "stderr: %s", process.err);
    harness_process_free(&process);

    char *help[] = {(char *)ringctl, "console", "--help", NULL};
    harness_spawn(&process, help);
    cr_assert_eq(harness_process_wait_exit(&process, WAIT_MS), 0);
    cr_assert(strstr(process.out, "usage: ringctl [-s PATH] [--json] console [--socket PATH] [--timeout MS] "
                                  "[--until TEXT]\n") ==
                  process.out,
              "help: %s", process.out);
    cr_assert(strstr(process.out, "Ctrl-] (byte 0x1d,\nalso in piped input) detaches: exit 0.") != NULL, "help: %s",
              process.out);
    harness_process_free(&process);
}

/* A migration's destination learns that its guest has a UART only when the
 * state arrives: a console created without one refuses input, then types
 * into the one console_attach_uart gives it. */
Test(console, a_uart_attached_later_gets_the_input, .timeout = 30)
{
    struct fixture f;
    fixture_start(&f, false);
    struct console_config config = {.socket_path = f.path};
    cr_assert_eq(console_create(&f.console, &f.serial, NULL, &config), 0);
    struct peer a;
    peer_connect(&a, f.path);
    wait_stats(&f, 1, 0);
    peer_send(&a, "lost\r");
    const char *notice = "\r\n[ringvm console: this guest has no UART: input ignored]\r\n";
    cr_assert(peer_wait_text(&a, notice, WAIT_MS), "a got: '%s'", a.data ? a.data : "");

    console_attach_uart(f.console, f.uart);
    peer_send(&a, "ls\r");
    guest_wait_input(&f, "ls\r");
    wait_stats(&f, 1, 1);
    guest_print(&f, "$ ");
    cr_assert(peer_wait_text(&a, "$ ", WAIT_MS));
    peer_close(&a);
    fixture_stop(&f);
}

/* ---- moving the clients with the guest (console_handover_*) ----------------------------------- */

static const char moved_notice[] =
    "\r\n[ringvm console: the guest moved to unix:/dest (console B); this console continues there]\r\n";
static const char attach_notice[] =
    "\r\n[ringvm console: the guest moved to unix:/dest (console B); attach to its console there]\r\n";

/* ringctl console attached to the source's console keeps running on the
 * destination's: what the source printed, the notice, what the
 * destination's guest printed between prepare and commit (kept for it),
 * what it prints later; its typing reaches the destination's UART. */
Test(console, ringctl_console_follows_the_guest_to_the_destination_console, .timeout = 60)
{
    const char *ringctl = ringctl_or_skip();
    struct fixture source, destination;
    fixture_start(&source, true);
    fixture_start(&destination, true);
    struct harness_process process;
    int input = spawn_ringctl_console(&process, ringctl, source.path, NULL);
    wait_stats(&source, 1, 0);
    guest_print(&source, "on the source\r\n");
    cr_assert(harness_process_wait_output(&process, "on the source\r\n", 1, WAIT_MS), "ringctl printed '%s'",
              process.out);

    char error[256] = "";
    cr_assert_eq(console_handover_prepare(source.console, destination.path, error, sizeof(error)), 1, "%s", error);
    wait_stats(&destination, 1, 0);
    guest_print(&destination, "early on the destination\r\n");
    /* As post-copy's switch-over does it: at once, then waiting at the end. */
    cr_assert_geq(console_handover_commit(source.console, "unix:/dest (console B)", 0), 0);
    cr_assert_eq(console_handover_commit(source.console, "unix:/dest (console B)", WAIT_MS), 1);
    wait_stats(&source, 0, -1);
    cr_assert(harness_process_wait_output(&process, "early on the destination\r\n", 1, WAIT_MS),
              "ringctl printed '%s' (stderr '%s')", process.out, process.err);
    guest_print(&destination, "later\r\n");
    cr_assert(harness_process_wait_output(&process, "later\r\n", 1, WAIT_MS), "ringctl printed '%s'", process.out);

    cr_assert_eq(write(input, "typed\r", 6), 6);
    guest_wait_input(&destination, "typed\r");
    guest_read(&source);
    cr_assert_eq(source.received_length, 0, "input went to the source's UART");
    cr_assert_eq(write(input, "\x1d", 1), 1);
    int status = harness_process_wait_exit(&process, WAIT_MS);
    cr_assert_eq(status, 0, "ringctl console exited %d; stderr: %s", status, process.err);
    char expected[512];
    snprintf(expected, sizeof(expected), "on the source\r\n%searly on the destination\r\nlater\r\n", moved_notice);
    cr_assert_str_eq(process.out, expected);
    cr_assert_str_eq(process.err, "ringctl console: detached\n");
    wait_stats(&destination, 0, 0);
    close(input);
    harness_process_free(&process);
    fixture_stop(&source);
    fixture_stop(&destination);
}

static bool peer_wait_closed(struct peer *peer, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return false;
        struct pollfd entry = {.fd = peer->fd, .events = POLLIN};
        if (poll(&entry, 1, (int)(deadline - now)) <= 0)
            return false;
        char buffer[512];
        ssize_t got = recv(peer->fd, buffer, sizeof(buffer), MSG_DONTWAIT);
        if (got == 0)
            return true;
        if (got < 0 && errno != EAGAIN && errno != EINTR)
            return true;
        if (got > 0) {
            if (peer->capacity - peer->length <= (size_t)got) {
                peer->capacity = peer->capacity * 2 + (size_t)got + 1;
                peer->data = realloc(peer->data, peer->capacity);
            }
            memcpy(peer->data + peer->length, buffer, (size_t)got);
            peer->length += (size_t)got;
            peer->data[peer->length] = '\0';
        }
    }
}

/* A client that is not ringctl reads the notice and the end (the passed
 * connection is dropped by its recv, so the destination's console loses
 * it again); a client that attached after prepare, or attaches after
 * the commit, is told to attach there. */
Test(console, other_clients_get_the_notice_and_the_end, .timeout = 60)
{
    struct fixture source, destination;
    fixture_start(&source, true);
    fixture_start(&destination, true);
    struct peer prepared, late, later;
    peer_connect(&prepared, source.path);
    wait_stats(&source, 1, 0);
    char error[256] = "";
    cr_assert_eq(console_handover_prepare(source.console, destination.path, error, sizeof(error)), 1, "%s", error);
    wait_stats(&destination, 1, 0);
    peer_connect(&late, source.path);
    wait_stats(&source, 2, 0);
    guest_print(&source, "last words\r\n");
    cr_assert_eq(console_handover_commit(source.console, "unix:/dest (console B)", WAIT_MS), 1);
    cr_assert(peer_wait_closed(&prepared, WAIT_MS), "the prepared client was not closed: '%s'", prepared.data);
    cr_assert(peer_wait_closed(&late, WAIT_MS), "the late client was not closed: '%s'", late.data);
    char expected[512];
    snprintf(expected, sizeof(expected), "last words\r\n%s", moved_notice);
    cr_assert_str_eq(prepared.data, expected);
    snprintf(expected, sizeof(expected), "last words\r\n%s", attach_notice);
    cr_assert_str_eq(late.data, expected);
    wait_stats(&destination, 0, 0);

    peer_connect(&later, source.path);
    cr_assert(peer_wait_closed(&later, WAIT_MS), "a client after the move was not closed: '%s'", later.data);
    cr_assert_str_eq(later.data, attach_notice);
    wait_stats(&source, 0, 0);
    peer_close(&prepared);
    peer_close(&late);
    peer_close(&later);
    fixture_stop(&source);
    fixture_stop(&destination);
}

/* A migration that fails after prepare: the connections go, the clients
 * stay and keep getting the (source's) guest output. An unreachable
 * destination console fails prepare with the reason and changes nothing;
 * without clients prepare makes no connection. */
Test(console, cancel_keeps_the_clients_and_prepare_names_what_failed, .timeout = 60)
{
    struct fixture source, destination;
    fixture_start(&source, true);
    fixture_start(&destination, true);
    char error[256] = "";
    cr_assert_eq(console_handover_prepare(source.console, destination.path, error, sizeof(error)), 0, "%s", error);
    struct peer client;
    peer_connect(&client, source.path);
    wait_stats(&source, 1, 0);
    char missing[160];
    snprintf(missing, sizeof(missing), "%s/none.sock", destination.directory);
    cr_assert_eq(console_handover_prepare(source.console, missing, error, sizeof(error)), -ENOENT);
    char expected[512];
    snprintf(expected, sizeof(expected), "console hand-over: connect(unix:%s): No such file or directory", missing);
    cr_assert_str_eq(error, expected);
    cr_assert_eq(console_handover_prepare(source.console, destination.path, error, sizeof(error)), 1, "%s", error);
    wait_stats(&destination, 1, 0);
    console_handover_cancel(source.console);
    wait_stats(&destination, 0, 0);
    guest_print(&source, "still here\r\n");
    cr_assert(peer_wait_text(&client, "still here\r\n", WAIT_MS), "received '%s'", client.data);
    wait_stats(&source, 1, 0);
    peer_close(&client);
    fixture_stop(&source);
    fixture_stop(&destination);
}

/* migration.start's console: unix:PATH of the destination's console,
 * kept as the path; anything else refused naming the field. */
Test(console, migration_start_console_is_a_unix_path)
{
    static const struct {
        const char *arguments;
        int result;
        const char *text;           /* the path kept, or the error */
    } cases[] = {
        {"", 0, ""},
        {",\"console\":\"unix:/run/ringvm/b.console\"", 0, "/run/ringvm/b.console"},
        {",\"console\":\"\"", 0, ""},
        {",\"console\":\"/run/b.console\"", -1,
         "args.console: expected unix:PATH (the destination's --console socket), got \"/run/b.console\""},
        {",\"console\":\"tcp:host:1\"", -1,
         "args.console: expected unix:PATH (the destination's --console socket), got \"tcp:host:1\""},
        {",\"console\":\"unix:\"", -1, "args.console: the path must be 1 to 107 bytes"},
        {",\"console\":\"unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", -1,
         "args.console: the path must be 1 to 107 bytes"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), "{\"dest\":\"unix:/x\"%s}", cases[i].arguments);
        json_error_t json_error;
        json_t *args = json_loads(text, 0, &json_error);
        cr_assert_not_null(args, "%s: %s", text, json_error.text);
        struct mig_params params;
        struct api_error error = {0};
        int result = api_migration_start_params(args, &params, &error);
        cr_assert_eq(result, cases[i].result, "%s: %d (%s)", text, result, error.message);
        if (result == 0)
            cr_assert_str_eq(params.console, cases[i].text, "%s", text);
        else
            cr_assert_str_eq(error.message, cases[i].text, "%s", text);
        json_decref(args);
    }
}
