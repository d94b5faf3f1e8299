/* The file behind shareable guest RAM (vmm/ram_file.h): which one a host
 * gets, that ringvm's own tmpfs file gives huge pages where a memfd gets
 * none, the fallback and its note, and what a hand-over accepts. No KVM. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/capability.h>

#include "migration/memfd_transfer.h"
#include "tests/harness.h"
#include "vmm/memory.h"
#include "vmm/ram_file.h"

#define MIB (1ull << 20)
#define RAM_SIZE (16 * MIB)

static char error[512];

static void fd_link(int fd, char *target, size_t size)
{
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, target, size - 1);
    cr_assert_geq(length, 0, "readlink(%s): %s", link, strerror(errno));
    target[length] = '\0';
}

static void require_shmem_never(void)
{
    char mode[32];
    guest_memory_thp_host(false, mode, sizeof(mode));
    if (strcmp(mode, "never") != 0)
        harness_skip("shmem_enabled is '%s': a memfd gets what it asks for there and ringvm's own tmpfs is "
                     "not tried (the case is shmem_enabled 'never', Debian's default)", mode);
}

Test(ram_file, default_ram_is_the_file_this_host_should_give)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    const char *expected = harness_expected_ram_file();
    cr_assert_str_eq(ram_file_kind_name(memory.file_kind), expected);
    cr_assert_eq(ram_file_identify(memory.memfd), memory.file_kind);
    char target[256];
    fd_link(memory.memfd, target, sizeof(target));
    struct stat status;
    cr_assert_eq(fstat(memory.memfd, &status), 0);
    cr_assert_eq((uint64_t)status.st_size, RAM_SIZE);
    if (memory.file_kind == RAM_FILE_TMPFS) {
        /* Unlinked at once, on an instance no mount namespace shows. */
        cr_assert_str_eq(target, "/ringvm-guest-ram (deleted)");
        cr_assert_eq(status.st_nlink, 0);
        cr_assert_eq(fcntl(memory.memfd, F_GET_SEALS), F_SEAL_SEAL, "a tmpfs file cannot be sealed");
        cr_assert_eq(memory.tmpfs_errno, 0);
    } else {
        cr_assert_str_eq(target, "/memfd:ringvm-guest-ram (deleted)");
        cr_assert_eq(fcntl(memory.memfd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    }
    guest_memory_destroy(&memory);
}

/* The point of the tmpfs file: where shmem_enabled is 'never' a memfd
 * stays on 4 KiB pages whatever it asks; this file gets 2 MiB ones. */
Test(ram_file, the_tmpfs_file_gets_huge_pages_where_a_memfd_gets_none)
{
    require_shmem_never();
    if (strcmp(harness_expected_ram_file(), "tmpfs") != 0)
        harness_skip("no CAP_SYS_ADMIN: ringvm's own tmpfs cannot be mounted here");
    struct guest_memory memory, memfd_ram;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    cr_assert_eq(memory.file_kind, RAM_FILE_TMPFS);
    cr_assert(guest_memory_thp_possible(&memory));
    char policy[32];
    guest_memory_thp_policy(&memory, policy, sizeof(policy));
    cr_assert_str_eq(policy, "advise");
    int memfd = memfd_create("ringvm-test-ram", MFD_CLOEXEC);
    cr_assert_geq(memfd, 0);
    cr_assert_eq(ftruncate(memfd, RAM_SIZE), 0);
    memfd_ram = memory;     /* only host is used below */
    memfd_ram.host = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    cr_assert_neq(memfd_ram.host, MAP_FAILED);
    cr_assert_eq(madvise(memfd_ram.host, RAM_SIZE, MADV_HUGEPAGE), 0);
    for (uint64_t offset = 0; offset < RAM_SIZE; offset += 4096) {
        memory.host[offset] = 1;
        memfd_ram.host[offset] = 1;
    }
    unsigned long tmpfs_kb, memfd_kb;
    harness_mapping_smaps(memory.host, NULL, 0, &tmpfs_kb);
    harness_mapping_smaps(memfd_ram.host, NULL, 0, &memfd_kb);
    cr_assert_eq(memfd_kb, 0, "shmem_enabled 'never' gave a memfd huge pages");
    if (tmpfs_kb == 0)
        harness_skip("the host granted no huge page to 16 MiB of advised RAM (fragmented memory?)");
    cr_assert_eq(tmpfs_kb % 2048, 0);
    munmap(memfd_ram.host, RAM_SIZE);
    close(memfd);
    guest_memory_destroy(&memory);
}

/* Without CAP_SYS_ADMIN (a ringvm run by a kvm-group user): the memfd,
 * and the note names why. The capability is dropped in this test's own
 * process (Criterion runs each test in one). */
Test(ram_file, without_cap_sys_admin_the_memfd_comes_and_the_note_says_why)
{
    require_shmem_never();
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    cr_assert_eq(syscall(SYS_capget, &header, data), 0, "capget: %s", strerror(errno));
    data[CAP_SYS_ADMIN / 32].effective &= ~(1u << (CAP_SYS_ADMIN % 32));
    cr_assert_eq(syscall(SYS_capset, &header, data), 0, "capset: %s", strerror(errno));
    cr_assert_str_eq(harness_expected_ram_file(), "memfd");

    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    cr_assert_eq(memory.file_kind, RAM_FILE_MEMFD);
    cr_assert_eq(memory.tmpfs_errno, EPERM);
    cr_assert_eq(fcntl(memory.memfd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    cr_assert_not(guest_memory_thp_possible(&memory));
    char note[600];
    cr_assert(guest_memory_small_pages_note(&memory, "never", note, sizeof(note)));
    cr_assert_str_eq(note, "guest RAM is a memfd on 4 KiB pages (shmem_enabled 'never' grants no huge pages; "
                     "ringvm's own tmpfs with huge pages: Operation not permitted (it needs CAP_SYS_ADMIN)): a "
                     "guest writing its memory runs ~15 % slower than on huge pages. For them: shmem_enabled "
                     "'advise' (root), --hugepages, or --ram anonymous (no local hand-over); --no-thp silences "
                     "this (docs/benchmarks-vs-qemu.md)");
    guest_memory_destroy(&memory);
}

Test(ram_file, no_thp_never_tries_the_tmpfs)
{
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .no_thp = true }), 0);
    cr_assert_eq(memory.file_kind, RAM_FILE_MEMFD);
    cr_assert_eq(memory.tmpfs_errno, 0);
    guest_memory_destroy(&memory);
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1,
                                                                                       .anonymous = true }), 0);
    cr_assert_eq(memory.file_kind, RAM_FILE_NONE);
    cr_assert_str_eq(ram_file_kind_name(memory.file_kind), "anonymous");
    guest_memory_destroy(&memory);
}

/* What a hand-over may receive: a file somebody could still open by name
 * is not guest RAM (its size could change under the mapping). */
Test(ram_file, identify_tells_the_kinds_apart)
{
    int pipe_fds[2];
    cr_assert_eq(pipe(pipe_fds), 0);
    cr_assert_eq(ram_file_identify(pipe_fds[0]), RAM_FILE_NONE);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    int memfd = memfd_create("anything", MFD_CLOEXEC);
    cr_assert_eq(ram_file_identify(memfd), RAM_FILE_MEMFD);
    close(memfd);

    char path[64];
    snprintf(path, sizeof(path), "/dev/shm/ringvm-test-%d", (int)getpid());
    int linked = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (linked < 0)
        harness_skip("open(%s): %s (no tmpfs at /dev/shm)", path, strerror(errno));
    cr_assert_eq(ram_file_identify(linked), RAM_FILE_NONE, "a tmpfs file a path still names");
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(ram_file_identify(linked), RAM_FILE_TMPFS, "unlinked: only fds reach it");
    close(linked);
}

/* The hand-over takes ringvm's tmpfs file (unsealable) and refuses a
 * linked one, with the reason. */
Test(ram_file, a_hand_over_takes_the_tmpfs_file_and_refuses_a_linked_one)
{
    require_shmem_never();
    if (strcmp(harness_expected_ram_file(), "tmpfs") != 0)
        harness_skip("no CAP_SYS_ADMIN: ringvm's own tmpfs cannot be mounted here");
    struct guest_memory memory;
    cr_assert_eq(guest_memory_create(&memory, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }), 0);
    cr_assert_eq(memory.file_kind, RAM_FILE_TMPFS);
    memset(memory.host + 5 * 4096, 0x5a, 4096);
    int fds[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    cr_assert_eq(memfd_transfer_send(fds[0], memory.memfd, RAM_SIZE, error, sizeof(error)), 0, "%s", error);
    int received = -1;
    cr_assert_eq(memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error)), 0, "%s", error);
    struct guest_memory adopted;
    cr_assert_eq(guest_memory_adopt(&adopted, received, RAM_SIZE, &(struct guest_memory_options){ .numa_node = -1 }),
                 0);
    cr_assert_eq(adopted.file_kind, RAM_FILE_TMPFS);
    cr_assert_eq(adopted.host[5 * 4096 + 4095], 0x5a);
    guest_memory_destroy(&adopted);

    char path[64];
    snprintf(path, sizeof(path), "/dev/shm/ringvm-test-%d", (int)getpid());
    int linked = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cr_assert_geq(linked, 0, "open(%s): %s", path, strerror(errno));
    cr_assert_eq(ftruncate(linked, RAM_SIZE), 0);
    cr_assert_eq(memfd_transfer_send(fds[0], linked, RAM_SIZE, error, sizeof(error)), 0, "%s", error);
    received = 12345;
    int result = memfd_transfer_receive(fds[1], RAM_SIZE, &received, error, sizeof(error));
    unlink(path);
    cr_assert_eq(result, -EBADF);
    char expected[160];
    snprintf(expected, sizeof(expected), "the fd received is neither a memfd nor an unlinked tmpfs file (%s)", path);
    cr_assert_str_eq(error, expected);
    cr_assert_eq(received, -1);
    close(linked);
    close(fds[0]);
    close(fds[1]);
    guest_memory_destroy(&memory);
}
