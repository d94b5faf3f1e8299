/* Guest RAM's memfd across a local socket (see memfd_transfer.h). */
#include "migration/memfd_transfer.h"
#include "vmm/ram_file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEMFD_TRANSFER_MAX_FDS 4    /* room to notice (and close) extras */

static void put_u64_le(uint8_t *out, uint64_t value)
{
    for (unsigned i = 0; i < 8; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

static uint64_t get_u64_le(const uint8_t *in)
{
    uint64_t value = 0;
    for (unsigned i = 0; i < 8; i++)
        value |= (uint64_t)in[i] << (8 * i);
    return value;
}

int memfd_transfer_send(int socket_fd, int memfd, uint64_t size, char *error, size_t error_size)
{
    uint8_t message[MEMFD_TRANSFER_MESSAGE_SIZE];
    memcpy(message, MEMFD_TRANSFER_MAGIC, 8);
    put_u64_le(message + 8, size);
    struct iovec vector = { .iov_base = message, .iov_len = sizeof(message) };
    union {
        char buffer[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr header = {
        .msg_iov = &vector,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof(control.buffer),
    };
    struct cmsghdr *rights = CMSG_FIRSTHDR(&header);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(rights), &memfd, sizeof(int));
    ssize_t sent;
    do
        sent = sendmsg(socket_fd, &header, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        int saved = errno;
        snprintf(error, error_size, "sending guest RAM's memfd (sendmsg SCM_RIGHTS): %s", strerror(saved));
        return -saved;
    }
    if ((size_t)sent != sizeof(message)) {
        snprintf(error, error_size, "sending guest RAM's memfd: only %zd of %zu bytes sent", sent, sizeof(message));
        return -EIO;
    }
    return 0;
}

int memfd_transfer_check(int fd, uint64_t expected_size, char *error, size_t error_size)
{
    enum ram_file_kind kind = ram_file_identify(fd);
    if (kind == RAM_FILE_NONE) {
        char link[64], target[256];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t length = readlink(link, target, sizeof(target) - 1);
        target[length >= 0 ? length : 0] = '\0';     /* readlink does not terminate */
        snprintf(error, error_size, "the fd received is neither a memfd nor an unlinked tmpfs file (%s)",
                 length >= 0 ? target : "unnamed");
        return -EBADF;
    }
    /* A memfd can be sealed, and ringvm's always are. A tmpfs file cannot
     * (vmm/ram_file.h): nobody can open it by name, and the peer passed the
     * listener's credential check. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (kind != RAM_FILE_TMPFS && (seals < 0 || !(seals & F_SEAL_SHRINK) || !(seals & F_SEAL_GROW))) {
        snprintf(error, error_size, "the memfd received is not sealed against %s (seals 0x%x): its size could "
                 "change under the mapping", seals < 0 || !(seals & F_SEAL_SHRINK) ? "shrinking" : "growing", seals);
        return -EBADF;
    }
    struct stat status;
    if (fstat(fd, &status) != 0) {
        int saved = errno;
        snprintf(error, error_size, "fstat(received memfd): %s", strerror(saved));
        return -saved;
    }
    if (!S_ISREG(status.st_mode) || (uint64_t)status.st_size != expected_size) {
        snprintf(error, error_size, "the guest RAM received (%s) holds %lld bytes, this ringvm's --memory is %" PRIu64,
                 ram_file_kind_name(kind), (long long)status.st_size, expected_size);
        return -EBADF;
    }
    return 0;
}

int memfd_transfer_receive(int socket_fd, uint64_t expected_size, int *memfd, char *error, size_t error_size)
{
    *memfd = -1;
    uint8_t message[MEMFD_TRANSFER_MESSAGE_SIZE];
    struct iovec vector = { .iov_base = message, .iov_len = sizeof(message) };
    union {
        char buffer[CMSG_SPACE(MEMFD_TRANSFER_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr header = {
        .msg_iov = &vector,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof(control.buffer),
    };
    ssize_t got;
    do
        got = recvmsg(socket_fd, &header, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    while (got < 0 && errno == EINTR);
    if (got < 0) {
        int saved = errno;
        snprintf(error, error_size, "receiving guest RAM's memfd (recvmsg): %s", strerror(saved));
        return -saved;
    }
    /* Collect every fd that came, so none leaks whatever the verdict. */
    int fds[MEMFD_TRANSFER_MAX_FDS];
    unsigned fd_count = 0;
    for (struct cmsghdr *item = CMSG_FIRSTHDR(&header); item != NULL; item = CMSG_NXTHDR(&header, item)) {
        if (item->cmsg_level != SOL_SOCKET || item->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (item->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count && fd_count < MEMFD_TRANSFER_MAX_FDS; i++)
            memcpy(&fds[fd_count++], CMSG_DATA(item) + i * sizeof(int), sizeof(int));
    }
    int result = 0;
    if ((size_t)got != sizeof(message) || memcmp(message, MEMFD_TRANSFER_MAGIC, 8) != 0) {
        snprintf(error, error_size, "not a memfd hand-over message (%zd bytes%s)", got,
                 (size_t)got == sizeof(message) ? ", bad magic" : "");
        result = -EPROTO;
    } else if (header.msg_flags & MSG_CTRUNC) {
        snprintf(error, error_size, "more fds than one came with the memfd message (control data truncated)");
        result = -EPROTO;
    } else if (fd_count != 1) {
        snprintf(error, error_size, "the memfd message carried %u fds, expected exactly 1", fd_count);
        result = -EPROTO;
    } else if (get_u64_le(message + 8) != expected_size) {
        snprintf(error, error_size, "the source announces %" PRIu64 " bytes of guest RAM, this ringvm's --memory "
                 "is %" PRIu64, get_u64_le(message + 8), expected_size);
        result = -EPROTO;
    } else {
        result = memfd_transfer_check(fds[0], expected_size, error, error_size);
    }
    for (unsigned i = 0; i < fd_count; i++)
        if (result != 0 || i > 0)
            close(fds[i]);
    if (result == 0)
        *memfd = fds[0];
    return result;
}
