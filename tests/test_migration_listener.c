/*
 * The destination's listening socket (migration/transport.c: mig_listener_open,
 * mig_listen, mig_accept) for `ringvm --incoming unix:PATH`, issue 16: the
 * rules of every ringvm socket (vmm/unix_listener.h) without a VM and
 * without /dev/kvm: mode 0600 whatever the umask, a live path refused and
 * never unlinked, a stale socket replaced, other files kept, only our own
 * file removed on close, and a peer of another uid refused with an ERROR
 * frame while the wait for the real source goes on (root only: the peer
 * is a child that dropped to uid 65534, harness_ask_as_nobody).
 *
 * Every wait is poll() with a timeout on a descriptor, never a sleep.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "migration/protocol.h"
#include "migration/transport.h"
#include "tests/harness.h"

#define TIMEOUT_MS 10000

/* A path in /tmp itself (a uid-65534 child must be able to reach it),
 * unique per test process. */
static void listener_path(char *out, size_t size, const char *tag)
{
    snprintf(out, size, "/tmp/ringvm-mig-listener-%d-%s.sock", (int)getpid(), tag);
    unlink(out);
}

static struct mig_address unix_address(const char *path)
{
    char text[160], error[256];
    snprintf(text, sizeof(text), "unix:%s", path);
    struct mig_address address;
    cr_assert_eq(mig_address_parse(text, &address, error, sizeof(error)), 0, "%s", error);
    return address;
}

static int connect_to(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    memcpy(address.sun_path, path, strlen(path) + 1);
    cr_assert_eq(connect(fd, (struct sockaddr *)&address, sizeof(address)), 0, "connect %s: %s", path,
                 strerror(errno));
    return fd;
}

/* Accepts on listener_fd; the connection must come from this process. */
static void accept_own_connection(int listener_fd)
{
    char error[256];
    int fd = mig_accept(listener_fd, NULL, error, sizeof(error));
    cr_assert_geq(fd, 0, "mig_accept: %s", error);
    struct ucred peer;
    socklen_t length = sizeof(peer);
    cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length), 0);
    cr_assert_eq(peer.pid, getpid(), "accepted a connection from pid %d", (int)peer.pid);
    close(fd);
}

static void expect_mode_0600_socket(const char *path)
{
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, strerror(errno));
    cr_assert(S_ISSOCK(st.st_mode), "%s is not a socket", path);
    cr_assert_eq(st.st_mode & 07777, 0600, "mode is %o", st.st_mode & 07777);
}

static void expect_gone(const char *path)
{
    struct stat st;
    cr_assert_eq(lstat(path, &st), -1, "%s left behind", path);
    cr_assert_eq(errno, ENOENT);
}

Test(migration_listener, unix_socket_is_mode_0600_whatever_the_umask_and_removed_on_close)
{
    char path[128], error[256];
    listener_path(path, sizeof(path), "mode");
    struct mig_address address = unix_address(path);
    mode_t old = umask(0);
    struct mig_listener listener;
    int result = mig_listener_open(&listener, &address, error, sizeof(error));
    umask(old);
    cr_assert_eq(result, 0, "%s", error);
    expect_mode_0600_socket(path);
    int client = connect_to(path);
    accept_own_connection(listener.fd);
    close(client);
    mig_listener_close(&listener);
    expect_gone(path);
    mig_listener_close(&listener);     /* twice is harmless */

    /* mig_listen (tests, benchmarks) creates it the same way; the file is
     * then the caller's. */
    old = umask(0);
    int fd = mig_listen(&address, error, sizeof(error));
    umask(old);
    cr_assert_geq(fd, 0, "%s", error);
    expect_mode_0600_socket(path);
    close(fd);
    cr_assert_eq(unlink(path), 0);
}

Test(migration_listener, a_path_a_live_ringvm_listens_on_is_refused_and_kept)
{
    char path[128], error[256], expected[256];
    listener_path(path, sizeof(path), "live");
    struct mig_address address = unix_address(path);
    struct mig_listener first, second;
    cr_assert_eq(mig_listener_open(&first, &address, error, sizeof(error)), 0, "%s", error);
    struct stat before, after;
    cr_assert_eq(lstat(path, &before), 0);
    cr_assert_eq(mig_listener_open(&second, &address, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected), "unix:%s: another ringvm is listening there", path);
    cr_assert_str_eq(error, expected);
    cr_assert_eq(second.fd, -1);
    mig_listener_close(&second);        /* a failed open leaves nothing to close */
    /* The first listener's file was not replaced, and it still works (no
     * probe connection waits in its queue: the path lock refused first). */
    cr_assert_eq(lstat(path, &after), 0);
    cr_assert_eq(after.st_ino, before.st_ino, "the live socket file was replaced");
    int client = connect_to(path);
    accept_own_connection(first.fd);
    close(client);
    mig_listener_close(&first);
    expect_gone(path);
}

Test(migration_listener, a_path_another_program_listens_on_is_refused_and_kept)
{
    char path[128], error[256], expected[256];
    listener_path(path, sizeof(path), "foreign");
    int foreign = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(foreign, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);
    cr_assert_eq(bind(foreign, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    cr_assert_eq(listen(foreign, 4), 0);
    struct mig_address address = unix_address(path);
    struct mig_listener listener;
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected), "unix:%s: another ringvm is listening there", path);
    cr_assert_str_eq(error, expected);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "the live socket file was unlinked");
    cr_assert(S_ISSOCK(st.st_mode));
    close(foreign);
    cr_assert_eq(unlink(path), 0);
}

Test(migration_listener, a_stale_socket_is_replaced_and_other_files_are_not)
{
    char path[128], error[256], expected[256];
    listener_path(path, sizeof(path), "stale");
    /* A socket file nobody listens on, as a crashed ringvm leaves it. */
    int stale = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);
    cr_assert_eq(bind(stale, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    close(stale);
    struct mig_address address = unix_address(path);
    struct mig_listener listener;
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), 0, "a stale socket must be replaced: %s",
                 error);
    int client = connect_to(path);
    accept_own_connection(listener.fd);
    close(client);
    mig_listener_close(&listener);
    expect_gone(path);

    int file = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    cr_assert_geq(file, 0);
    close(file);
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected), "unix:%s: exists and is not a socket; not replacing it", path);
    cr_assert_str_eq(error, expected);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0);
    cr_assert(S_ISREG(st.st_mode), "a regular file must never be replaced");
    cr_assert_eq(unlink(path), 0);
}

Test(migration_listener, close_removes_only_our_own_socket_file)
{
    char path[128], error[256];
    listener_path(path, sizeof(path), "own");
    struct mig_address address = unix_address(path);
    struct mig_listener listener;
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), 0, "%s", error);
    /* Someone replaced the file meanwhile: it is theirs now. */
    cr_assert_eq(unlink(path), 0);
    int file = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    cr_assert_geq(file, 0);
    close(file);
    mig_listener_close(&listener);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "someone else's file was removed");
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(unlink(path), 0);
}

/* Reads exactly length bytes from fd within TIMEOUT_MS; false on EOF,
 * error or timeout. Used by the uid-65534 child (no Criterion asserts). */
static bool read_fully(int fd, void *data, size_t length)
{
    size_t done = 0;
    while (done < length) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, TIMEOUT_MS) != 1)
            return false;
        ssize_t got = read(fd, (uint8_t *)data + done, length - done);
        if (got <= 0)
            return false;
        done += (size_t)got;
    }
    return true;
}

/* The socket the uid-65534 child connects to (set before the fork). */
static char refused_path[128];

/* Runs as uid 65534 (harness_ask_as_nobody): connects, reads the
 * destination's ERROR frame and answers "CODE TEXT", then checks that the
 * destination closed the connection; a failed step answers its name. */
static void ask_as_refused_peer(char *answer, size_t size)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, refused_path, strlen(refused_path) + 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        snprintf(answer, size, "connect: %s", strerror(errno));
        return;
    }
    uint8_t raw[MIG_HEADER_SIZE], payload[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header header;
    char error[256];
    if (!read_fully(fd, raw, sizeof(raw)) || mig_header_decode(raw, 0, &header, error, sizeof(error)) != 0 ||
        header.type != MIG_FRAME_ERROR || !read_fully(fd, payload, (size_t)header.length) ||
        mig_frame_checksum(raw, payload, (size_t)header.length) != header.checksum) {
        snprintf(answer, size, "no valid ERROR frame with seq 0 from the destination");
        close(fd);
        return;
    }
    uint32_t code;
    char message[MIG_ERROR_MAX_MESSAGE + 1];
    mig_error_decode(payload, (size_t)header.length, &code, message, sizeof(message));
    uint8_t more;
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, TIMEOUT_MS) != 1 || read(fd, &more, 1) != 0)
        snprintf(answer, size, "the destination did not close the connection");
    else
        snprintf(answer, size, "%" PRIu32 " %s", code, message);
    close(fd);
}

struct accepting {
    int listen_fd;
    const _Atomic bool *cancel;
    int fd;                 /* mig_accept's result */
    char error[256];
};

static void *accept_main(void *argument)
{
    struct accepting *a = argument;
    a->fd = mig_accept(a->listen_fd, a->cancel, a->error, sizeof(a->error));
    return NULL;
}

Test(migration_listener, a_peer_of_another_uid_is_refused_with_an_error_frame_and_the_wait_goes_on)
{
    if (geteuid() != 0)
        harness_skip("needs root to connect as another uid");
    char error[256];
    listener_path(refused_path, sizeof(refused_path), "cred");
    struct mig_address address = unix_address(refused_path);
    struct mig_listener listener;
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(chmod(refused_path, 0666), 0);    /* the file mode lets uid 65534 in: the uid check is next */
    /* The destination waits for its source in a thread, as
     * migration_incoming_run_fd does; the refused peer must not end it. */
    _Atomic bool cancel = false;
    struct accepting accepting = { .listen_fd = listener.fd, .cancel = &cancel, .fd = -1 };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, accept_main, &accepting), 0);
    char answer[MIG_ERROR_MAX_MESSAGE + 32];
    harness_ask_as_nobody(ask_as_refused_peer, answer, sizeof(answer));
    char expected[256];
    snprintf(expected, sizeof(expected), "%d permission denied: uid 65534 is neither ringvm's uid 0 nor root",
             MIG_ERR_CONFIG);
    cr_expect_str_eq(answer, expected);
    /* Still waiting: our own connection is the one it returns. */
    int client = connect_to(refused_path);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_geq(accepting.fd, 0, "mig_accept: %s", accepting.error);
    struct ucred peer;
    socklen_t length = sizeof(peer);
    cr_assert_eq(getsockopt(accepting.fd, SOL_SOCKET, SO_PEERCRED, &peer, &length), 0);
    cr_assert_eq(peer.pid, getpid(), "accepted a connection from pid %d", (int)peer.pid);
    close(accepting.fd);
    close(client);
    mig_listener_close(&listener);
    expect_gone(refused_path);
}

Test(migration_listener, accept_stops_when_cancelled)
{
    char path[128], error[256];
    listener_path(path, sizeof(path), "cancel");
    struct mig_address address = unix_address(path);
    struct mig_listener listener;
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), 0, "%s", error);
    _Atomic bool cancel = true;
    cr_assert_eq(mig_accept(listener.fd, &cancel, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "cancelled while waiting for the source to connect");
    mig_listener_close(&listener);
}

Test(migration_listener, tcp_listener_accepts_and_closes)
{
    struct mig_address address;
    memset(&address, 0, sizeof(address));
    address.kind = MIG_ADDRESS_TCP;
    snprintf(address.host, sizeof(address.host), "127.0.0.1");
    snprintf(address.port, sizeof(address.port), "0");     /* the kernel picks the port */
    char error[256];
    struct mig_listener listener;
    cr_assert_eq(mig_listener_open(&listener, &address, error, sizeof(error)), 0, "%s", error);
    struct sockaddr_in bound;
    socklen_t length = sizeof(bound);
    cr_assert_eq(getsockname(listener.fd, (struct sockaddr *)&bound, &length), 0);
    int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(client, (struct sockaddr *)&bound, length), 0, "%s", strerror(errno));
    int fd = mig_accept(listener.fd, NULL, error, sizeof(error));
    cr_assert_geq(fd, 0, "%s", error);
    close(fd);
    close(client);
    mig_listener_close(&listener);
    cr_assert_eq(listener.fd, -1);
}
