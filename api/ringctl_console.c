/*
 * `ringctl console`: the client side of ringvm's console socket. One
 * thread, one poll loop: stdin -> socket (a 4 KiB buffer; stdin is not read
 * while it is non-empty, so a guest that reads slowly slows the sender and
 * nothing is dropped), socket -> stdout. The socket is non-blocking so
 * output keeps flowing while input waits.
 *
 * The guest migrating: when its ringvm hands this client over
 * (console_handover_commit, vmm/console.h), a connection to the
 * destination's console arrives with the notice (SCM_RIGHTS); once the
 * old console closes, the session carries on over it (input not yet sent
 * goes there, a finished stdin stays finished, --until keeps matching
 * across). Several moves in a row work the same way.
 */
#include "api/ringctl_console.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "api/ringctl_session.h"
#include "vmm/terminal.h"
#include "vmm/unix_socket.h"

#define DETACH_FLUSH_MS 1000        /* input typed before Ctrl-] still goes out */

/* The terminal's mode before raw mode (stdin is process-wide state). */
static struct termios saved_terminal;
static volatile sig_atomic_t terminal_is_raw;
static volatile sig_atomic_t stop_signal;

static void restore_terminal(void)
{
    if (terminal_is_raw) {
        if (tcsetattr(STDIN_FILENO, TCSANOW, &saved_terminal) != 0)
            fprintf(stderr, "ringctl console: restoring the terminal: %s\n", strerror(errno));
        terminal_is_raw = 0;
    }
}

static void on_stop_signal(int signal_number)
{
    stop_signal = signal_number;
}

/* Raw mode (vmm/terminal.h). 0, or -1 with a message. */
static int make_terminal_raw(void)
{
    if (tcgetattr(STDIN_FILENO, &saved_terminal) != 0) {
        fprintf(stderr, "ringctl console: tcgetattr(stdin): %s\n", strerror(errno));
        return -1;
    }
    struct termios raw = saved_terminal;
    terminal_make_settings_raw(&raw);
    if (atexit(restore_terminal) != 0) {
        fprintf(stderr, "ringctl console: atexit failed: not changing the terminal mode\n");
        return -1;
    }
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) != 0) {
        fprintf(stderr, "ringctl console: tcsetattr(stdin, raw): %s\n", strerror(errno));
        return -1;
    }
    terminal_is_raw = 1;
    return 0;
}

/* The stop signals are blocked except while the copy loop waits in
 * ppoll with wait_mask: a signal that lands between the loop's check of
 * stop_signal and the wait stays pending and ends the wait at once, where
 * with plain poll it was lost until the next byte (a SIGTERM right after
 * raw mode hung `ringctl console` under emulation). *old_mask gets the
 * caller's mask, to restore on return. */
static int install_signal_handlers(sigset_t *old_mask, sigset_t *wait_mask)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_stop_signal;     /* no SA_RESTART: ppoll returns EINTR */
    sigemptyset(&action.sa_mask);
    static const int stops[] = {SIGINT, SIGTERM, SIGHUP};
    sigset_t block;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++) {
        if (sigaction(stops[i], &action, NULL) != 0) {
            fprintf(stderr, "ringctl console: sigaction: %s\n", strerror(errno));
            return -1;
        }
        sigaddset(&block, stops[i]);
    }
    if (sigprocmask(SIG_BLOCK, &block, old_mask) != 0) {
        fprintf(stderr, "ringctl console: sigprocmask: %s\n", strerror(errno));
        return -1;
    }
    /* A mask inherited from the parent must not make them unstoppable. */
    *wait_mask = *old_mask;
    for (size_t i = 0; i < sizeof(stops) / sizeof(stops[0]); i++)
        sigdelset(wait_mask, stops[i]);
    /* A closed stdout or socket is an error return, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int connect_console(const char *path)
{
    /* Blocking connect: a console whose backlog is full is waited for,
     * not reported as a failure; O_NONBLOCK comes after. */
    char reason[512];
    int fd = unix_socket_connect(path, 0, reason, sizeof(reason));
    if (fd == -ENAMETOOLONG || fd == -EINVAL) {
        /* Only the path check gives these: --socket is at fault. */
        fprintf(stderr, "ringctl console: --socket: %s\n", reason);
        return -RINGCTL_EXIT_USAGE;
    }
    if (fd < 0) {
        const char *hint = "";
        if (fd == -ENOENT || fd == -ECONNREFUSED)
            hint = " (is ringvm running with --console unix:PATH on this path?)";
        else if (fd == -EACCES)
            hint = " (the socket is mode 0600: connect as ringvm's user or root)";
        fprintf(stderr, "ringctl console: %s%s\n", reason, hint);
        return -RINGCTL_EXIT_CONNECT;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        fprintf(stderr, "ringctl console: fcntl(O_NONBLOCK): %s\n", strerror(errno));
        close(fd);
        return -RINGCTL_EXIT_CONNECT;
    }
    return fd;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writes everything to stdout; false when stdout is gone. */
static bool write_stdout(const uint8_t *bytes, size_t length)
{
    size_t written = 0;
    while (written < length) {
        ssize_t n = write(STDOUT_FILENO, bytes + written, length - written);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        written += (size_t)n;
    }
    return true;
}

/* The copy loop's state (main thread only). */
struct console_session {
    int fd;
    int next_fd;                    /* the destination console's, once handed over; -1 none */
    bool stdin_open;
    uint8_t pending[4096];          /* stdin bytes not yet sent */
    size_t pending_start, pending_length;
    /* --until: the text to wait for, and the output's last bytes (fewer
     * than its length) so that a match split across reads is found. */
    const char *until;
    size_t until_length;
    char *until_window;             /* until_length * 2 bytes */
    size_t window_length;
    bool until_seen;
};

/* Looks for session->until in the output's tail plus these new bytes. */
static void watch_for_until(struct console_session *session, const uint8_t *bytes, size_t length)
{
    if (session->until == NULL || session->until_seen)
        return;
    size_t length_needed = session->until_length;
    while (length > 0) {
        /* Fill the window up to 2 * length_needed - 1 bytes, search, keep
         * the last length_needed - 1: every match lies in some window. */
        size_t room = 2 * length_needed - 1 - session->window_length;
        size_t take = length < room ? length : room;
        memcpy(session->until_window + session->window_length, bytes, take);
        session->window_length += take;
        bytes += take;
        length -= take;
        if (memmem(session->until_window, session->window_length, session->until, length_needed) != NULL) {
            session->until_seen = true;
            return;
        }
        size_t keep = length_needed - 1 < session->window_length ? length_needed - 1 : session->window_length;
        memmove(session->until_window, session->until_window + session->window_length - keep, keep);
        session->window_length = keep;
    }
}

/* Sends what it can of pending; false when the connection is broken. */
static bool send_pending(struct console_session *session)
{
    while (session->pending_length > 0) {
        ssize_t n = send(session->fd, session->pending + session->pending_start, session->pending_length,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            session->pending_start += (size_t)n;
            session->pending_length -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        return false;
    }
    session->pending_start = 0;
    return true;
}

/* Before detaching: what was typed before Ctrl-] goes out (bounded). */
static void flush_before_detach(struct console_session *session)
{
    uint64_t deadline = now_ms() + DETACH_FLUSH_MS;
    while (session->pending_length > 0 && send_pending(session)) {
        uint64_t now = now_ms();
        if (now >= deadline || session->pending_length == 0)
            break;
        struct pollfd entry = {.fd = session->fd, .events = POLLOUT};
        if (poll(&entry, 1, (int)(deadline - now)) < 0 && errno != EINTR)
            break;
    }
}

enum copy_result { COPY_CONTINUE, COPY_DETACHED, COPY_CLOSED, COPY_LOST, COPY_STDOUT_GONE, COPY_UNTIL_SEEN };

static enum copy_result read_input(struct console_session *session)
{
    ssize_t n = read(STDIN_FILENO, session->pending, sizeof(session->pending));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return COPY_CONTINUE;
    if (n <= 0) {
        if (n < 0)
            fprintf(stderr, "ringctl console: reading stdin: %s; no more input\n", strerror(errno));
        session->stdin_open = false;
        /* Tells ringvm this client will type no more (it stops being the
         * writer); the output keeps coming. */
        if (shutdown(session->fd, SHUT_WR) != 0 && errno != ENOTCONN)
            fprintf(stderr, "ringctl console: shutdown(SHUT_WR): %s\n", strerror(errno));
        return COPY_CONTINUE;
    }
    size_t length = (size_t)n;
    const uint8_t *escape = memchr(session->pending, RINGCTL_CONSOLE_ESCAPE_BYTE, length);
    session->pending_start = 0;
    session->pending_length = escape ? (size_t)(escape - session->pending) : length;
    if (escape) {
        flush_before_detach(session);
        return COPY_DETACHED;
    }
    return send_pending(session) ? COPY_CONTINUE : COPY_LOST;
}

/* A descriptor passed with the bytes just read: the destination console's
 * connection (the first one kept; anything else is closed). */
static void take_passed_fd(struct console_session *session, struct msghdr *message)
{
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(message); cmsg != NULL; cmsg = CMSG_NXTHDR(message, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
            if (session->next_fd < 0)
                session->next_fd = fd;
            else
                close(fd);
        }
    }
}

static enum copy_result read_output(struct console_session *session)
{
    uint8_t buffer[16384];
    for (;;) {
        struct iovec iov = {buffer, sizeof(buffer)};
        union {
            struct cmsghdr header;
            char bytes[CMSG_SPACE(4 * sizeof(int))];
        } control;
        struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                                 .msg_controllen = sizeof(control.bytes)};
        ssize_t n = recvmsg(session->fd, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n >= 0)
            take_passed_fd(session, &message);
        if (n > 0) {
            if (!write_stdout(buffer, (size_t)n))
                return COPY_STDOUT_GONE;
            watch_for_until(session, buffer, (size_t)n);
            if (session->until_seen)
                return COPY_UNTIL_SEEN;
            continue;
        }
        if (n == 0)
            return COPY_CLOSED;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return COPY_CONTINUE;
        fprintf(stderr, "ringctl console: connection lost: %s\n", strerror(errno));
        return COPY_LOST;
    }
}

static int console_copy(struct console_session *session, const char *socket_path, int after_eof_timeout_ms,
                        const sigset_t *wait_mask);

int ringctl_console_run(const char *socket_path, int after_eof_timeout_ms, const char *until)
{
    struct console_session session = {.stdin_open = true, .next_fd = -1};
    if (until != NULL && until[0] != '\0') {
        session.until = until;
        session.until_length = strlen(until);
        session.until_window = malloc(2 * session.until_length);
        if (session.until_window == NULL) {
            fprintf(stderr, "ringctl console: --until: out of memory\n");
            return RINGCTL_EXIT_CONNECT;
        }
    }
    int fd = connect_console(socket_path);
    if (fd < 0) {
        free(session.until_window);
        return -fd;
    }
    session.fd = fd;
    sigset_t old_mask, wait_mask;
    if (install_signal_handlers(&old_mask, &wait_mask) != 0) {
        close(fd);
        free(session.until_window);
        return RINGCTL_EXIT_CONNECT;
    }
    int status = console_copy(&session, socket_path, after_eof_timeout_ms, &wait_mask);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    return status;
}

/* The session from attach to exit; frees it. Stop signals blocked but in
 * ppoll (install_signal_handlers). */
static int console_copy(struct console_session *session, const char *socket_path, int after_eof_timeout_ms,
                        const sigset_t *wait_mask)
{
    const char *until = session->until;
    bool terminal = isatty(STDIN_FILENO);
    if (terminal) {
        fprintf(stderr, "ringctl console: attached to %s; Ctrl-] detaches\n", socket_path);
        if (make_terminal_raw() != 0) {
            close(session->fd);
            free(session->until_window);
            return RINGCTL_EXIT_CONNECT;
        }
    }
    bool timed_out = false;
    uint64_t eof_deadline = 0;
    enum copy_result result = COPY_CONTINUE;
    while (result == COPY_CONTINUE && !stop_signal) {
        if (!session->stdin_open && after_eof_timeout_ms > 0 && eof_deadline == 0)
            eof_deadline = now_ms() + (uint64_t)after_eof_timeout_ms;
        int timeout = -1;
        if (eof_deadline != 0) {
            uint64_t now = now_ms();
            if (now >= eof_deadline) {
                timed_out = true;
                break;      /* --timeout after the end of input: done */
            }
            timeout = (int)(eof_deadline - now);
        }
        struct pollfd fds[2] = {
            {.fd = session->stdin_open && session->pending_length == 0 ? STDIN_FILENO : -1, .events = POLLIN},
            {.fd = session->fd, .events = (short)(POLLIN | (session->pending_length > 0 ? POLLOUT : 0))},
        };
        struct timespec wait_time = {.tv_sec = timeout / 1000, .tv_nsec = (long)(timeout % 1000) * 1000000L};
        if (ppoll(fds, 2, timeout < 0 ? NULL : &wait_time, wait_mask) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ringctl console: ppoll: %s\n", strerror(errno));
            result = COPY_LOST;
            break;
        }
        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR))
            result = read_output(session);
        if (result == COPY_CLOSED && session->next_fd >= 0) {
            /* The guest moved and its old console handed us the new one. */
            close(session->fd);
            session->fd = session->next_fd;
            session->next_fd = -1;
            if (!session->stdin_open && shutdown(session->fd, SHUT_WR) != 0 && errno != ENOTCONN)
                fprintf(stderr, "ringctl console: shutdown(SHUT_WR): %s\n", strerror(errno));
            if (terminal)
                fprintf(stderr, "ringctl console: the guest moved; attached to its new console\r\n");
            result = COPY_CONTINUE;
            continue;
        }
        if (result == COPY_CONTINUE && (fds[1].revents & POLLOUT) && !send_pending(session)) {
            /* ringvm closed its end: the read side reports it next. */
            session->pending_length = 0;
            session->stdin_open = false;
        }
        if (result == COPY_CONTINUE && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
            result = read_input(session);
    }
    close(session->fd);
    if (session->next_fd >= 0)
        close(session->next_fd);
    free(session->until_window);
    restore_terminal();
    if (stop_signal) {
        signal(stop_signal, SIG_DFL);
        raise(stop_signal);     /* pending until the mask lets it in */
        sigset_t stop;
        sigemptyset(&stop);
        sigaddset(&stop, stop_signal);
        sigprocmask(SIG_UNBLOCK, &stop, NULL);
        return 1;           /* the default action ended ringctl already */
    }
    switch (result) {
    case COPY_DETACHED:
        fprintf(stderr, "ringctl console: detached\n");
        return 0;
    case COPY_CLOSED:
        fprintf(stderr, "ringctl console: ringvm closed the console\n");
        if (session->until != NULL) {
            fprintf(stderr, "ringctl console: --until '%s': not seen before the console closed\n", until);
            return RINGCTL_EXIT_VMM_ERROR;
        }
        return 0;
    case COPY_LOST:
        return RINGCTL_EXIT_CONNECT;
    case COPY_UNTIL_SEEN:
        return 0;
    case COPY_STDOUT_GONE:
    case COPY_CONTINUE:
    default:
        if (session->until != NULL && timed_out) {
            fprintf(stderr, "ringctl console: --until '%s': not seen within --timeout %d ms after the end of input\n",
                    until, after_eof_timeout_ms);
            return RINGCTL_EXIT_VMM_ERROR;
        }
        return 0;
    }
}
