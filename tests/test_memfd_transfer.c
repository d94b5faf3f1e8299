/* Guest RAM's memfd handed over a local socket (migration/memfd_transfer.c,
 * issue 19): what the destination accepts and refuses. No KVM needed: the
 * memfd comes from vmm/memory.c exactly as a VM's guest RAM does. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/memfd_transfer.h"
#include "vmm/memory.h"

#define RAM_SIZE (16ULL << 20)

static char error[512];

static void socket_pair(int fds[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
}

static int open_fd_count(void)
{
    int count = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            count++;
    return count;
}

Test(memfd_transfer, guest_ram_crosses_with_its_contents)
{
    struct guest_memory memory;
    struct guest_memory_options options = { .numa_node = -1 };
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &options), 0);
    memcpy(memory.host + 12345, "ringvm", 6);
    int fds[2];
    socket_pair(fds);
    cr_assert_eq(memfd_transfer_send(fds[0], memory.memfd, RAM_SIZE, error, sizeof(error)), 0, "%s", error);
    int received = -1;
    cr_assert_eq(memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error)), 0, "%s", error);
    cr_assert_geq(received, 0);
    cr_assert_neq(received, memory.memfd);
    uint8_t *mapping = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, received, 0);
    cr_assert_neq(mapping, MAP_FAILED);
    cr_assert_eq(memcmp(mapping + 12345, "ringvm", 6), 0, "the same RAM, not a copy");
    mapping[777] = 0x5a;
    cr_assert_eq(memory.host[777], 0x5a, "writes are shared both ways");
    /* A memfd's seals hold: nobody can shrink it under a mapping. (A tmpfs
     * file cannot be sealed; nobody can open it by name: test_ram_file.c.) */
    if (memory.file_kind == RAM_FILE_MEMFD) {
        cr_assert_neq(ftruncate(received, RAM_SIZE / 2), 0);
        cr_assert_eq(errno, EPERM);
    } else {
        cr_assert_eq(memory.file_kind, RAM_FILE_TMPFS);
    }
    munmap(mapping, RAM_SIZE);
    close(received);
    close(fds[0]);
    close(fds[1]);
    guest_memory_destroy(&memory);
}

/* Sends fd announcing `announced` bytes and expects the receiver (which
 * wants `expected`) to refuse with exactly `message`, leaking no fd. */
static void expect_refused(int fd, uint64_t announced, uint64_t expected, int code, const char *message)
{
    int fds[2];
    socket_pair(fds);
    int before = open_fd_count();
    cr_assert_eq(memfd_transfer_send(fds[0], fd, announced, error, sizeof(error)), 0, "%s", error);
    int received = 12345;
    cr_assert_eq(memfd_transfer_receive(fds[1], expected, &received, error, sizeof(error)), code, "%s", error);
    cr_assert_str_eq(error, message);
    cr_assert_eq(received, -1);
    cr_assert_eq(open_fd_count(), before, "the refused fd was closed");
    close(fds[0]);
    close(fds[1]);
}

static int memfd_of(uint64_t size, unsigned flags, int seals)
{
    int fd = memfd_create("test-ram", MFD_CLOEXEC | flags);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    if (seals != 0)
        cr_assert_eq(fcntl(fd, F_ADD_SEALS, seals), 0);
    return fd;
}

Test(memfd_transfer, refuses_what_could_change_under_the_mapping)
{
    int unsealable = memfd_of(RAM_SIZE, 0, 0);
    expect_refused(unsealable, RAM_SIZE, RAM_SIZE, -EBADF,
                   "the memfd received is not sealed against shrinking (seals 0x1): its size could change under "
                   "the mapping");
    close(unsealable);
    int grows = memfd_of(RAM_SIZE, MFD_ALLOW_SEALING, F_SEAL_SHRINK);
    expect_refused(grows, RAM_SIZE, RAM_SIZE, -EBADF,
                   "the memfd received is not sealed against growing (seals 0x2): its size could change under "
                   "the mapping");
    close(grows);
}

Test(memfd_transfer, refuses_a_size_mismatch_and_a_lie)
{
    int sealed = memfd_of(RAM_SIZE, MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_GROW);
    expect_refused(sealed, RAM_SIZE, 2 * RAM_SIZE, -EPROTO,
                   "the source announces 16777216 bytes of guest RAM, this ringvm's --memory is 33554432");
    /* Announced right, but the file itself is smaller. */
    expect_refused(sealed, 2 * RAM_SIZE, 2 * RAM_SIZE, -EBADF,
                   "the guest RAM received (memfd) holds 16777216 bytes, this ringvm's --memory is 33554432");
    close(sealed);
}

Test(memfd_transfer, refuses_what_is_not_a_memfd)
{
    int pipe_fds[2];
    cr_assert_eq(pipe(pipe_fds), 0);
    int fds[2];
    socket_pair(fds);
    cr_assert_eq(memfd_transfer_send(fds[0], pipe_fds[0], RAM_SIZE, error, sizeof(error)), 0);
    int received = 0;
    cr_assert_eq(memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error)), -EBADF);
    static const char expected[] = "the fd received is neither a memfd nor an unlinked tmpfs file (pipe:[";
    cr_assert_eq(strncmp(error, expected, strlen(expected)), 0, "%s", error);
    cr_assert_eq(received, -1);
    close(fds[0]);
    close(fds[1]);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

Test(memfd_transfer, refuses_a_message_without_exactly_one_fd)
{
    int fds[2];
    socket_pair(fds);
    uint8_t message[MEMFD_TRANSFER_MESSAGE_SIZE] = "RVMEMFD1";
    message[8 + 3] = 1;     /* 16 MiB, little-endian */
    cr_assert_eq(write(fds[0], message, sizeof(message)), (ssize_t)sizeof(message));
    int received = 0;
    cr_assert_eq(memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error)), -EPROTO);
    cr_assert_str_eq(error, "the memfd message carried 0 fds, expected exactly 1");

    cr_assert_eq(write(fds[0], "HELLO...garbage!", 16), 16);
    cr_assert_eq(memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error)), -EPROTO);
    cr_assert_str_eq(error, "not a memfd hand-over message (16 bytes, bad magic)");

    cr_assert_eq(write(fds[0], "RVMEM", 5), 5);
    close(fds[0]);
    cr_assert_eq(memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error)), -EPROTO);
    cr_assert_str_eq(error, "not a memfd hand-over message (5 bytes)");
    close(fds[1]);
}

/* The destination's side: the received memfd becomes its guest RAM with the
 * same memslot layout (RAM above 3 GiB continues at 4 GiB). A 5 GiB memfd
 * costs nothing until touched. */
Test(memfd_transfer, adopted_ram_has_the_same_layout_and_bytes)
{
    struct guest_memory source, destination;
    struct guest_memory_options options = { .numa_node = -1 };
    uint64_t size = 5ULL << 30;
    cr_assert_eq(guest_memory_create(&source, size, &options), 0);
    source.host[size - 1] = 0x42;
    int fds[2];
    socket_pair(fds);
    cr_assert_eq(memfd_transfer_send(fds[0], source.memfd, size, error, sizeof(error)), 0, "%s", error);
    int received = -1;
    cr_assert_eq(memfd_transfer_receive(fds[1], size, &received, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(guest_memory_adopt(&destination, received, size, &options), 0);
    cr_assert_eq(destination.size, size);
    cr_assert_eq(destination.slot_count, 2);
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_eq(destination.slots[i].gpa, source.slots[i].gpa);
        cr_assert_eq(destination.slots[i].size, source.slots[i].size);
        cr_assert_eq(destination.slots[i].ram_offset, source.slots[i].ram_offset);
    }
    cr_assert_eq(destination.host[size - 1], 0x42);
    uint8_t *last = guest_memory_gpa_to_host(&destination, (4ULL << 30) + (2ULL << 30) - 1, 1);
    cr_assert_not_null(last);
    cr_assert_eq(*last, 0x42, "the last byte of RAM sits at 6 GiB - 1 behind the hole");
    guest_memory_destroy(&destination);
    guest_memory_destroy(&source);
    close(fds[0]);
    close(fds[1]);
}

Test(memfd_transfer, adopt_refuses_a_memfd_of_another_size)
{
    struct guest_memory memory;
    struct guest_memory_options options = { .numa_node = -1 };
    int fd = memfd_of(RAM_SIZE, MFD_ALLOW_SEALING, F_SEAL_SHRINK | F_SEAL_GROW);
    cr_assert_eq(guest_memory_adopt(&memory, fd, 2 * RAM_SIZE, &options), -EINVAL);
    cr_assert_eq(memory.memfd, -1);
    cr_assert_eq(fcntl(fd, F_GETFD), -1, "adopt owns the fd and closed it");
}
