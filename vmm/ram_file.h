/*
 * The file behind shareable guest RAM (everything but --ram anonymous):
 * a local hand-over passes it to another process (migration/
 * memfd_transfer.h), so it must be a file, and it must be one nobody can
 * open by name.
 *
 * Which file:
 *   memfd      memfd_create, sealed against shrinking and growing. Where
 *              /sys/kernel/mm/transparent_hugepage/shmem_enabled grants
 *              MADV_HUGEPAGE mappings huge pages (advise, always,
 *              within_size, force), or where none are wanted (--no-thp).
 *   hugetlbfs  memfd_create(MFD_HUGETLB), sealed: --hugepages.
 *   tmpfs      an unlinked file on a tmpfs instance of ringvm's own,
 *              mounted huge=advise and never attached to any mount
 *              namespace (fsopen + fsmount): shmem_enabled governs only
 *              the kernel's internal mount behind memfds, so with
 *              Debian's 'never' a memfd gets 4 KiB pages and this file
 *              gets 2 MiB ones (a guest writing its memory runs ~15-20 %
 *              faster, a bulk pass faults 512x less). It needs
 *              CAP_SYS_ADMIN; without it (or on a kernel without the
 *              mount API or THP, or with shmem_enabled 'deny', which
 *              forbids every mount) the memfd, and a start-up note says
 *              why. Such a file cannot be sealed (tmpfs sets F_SEAL_SEAL
 *              on every file but a memfd): what keeps its size is that
 *              nobody can open it by name, and a hand-over takes it only
 *              from a peer of the same uid or root (vmm/unix_listener.h),
 *              who could ptrace the receiver anyway.
 *
 * Ownership: plain functions; the fd returned belongs to the caller.
 */
#ifndef RINGVM_VMM_RAM_FILE_H
#define RINGVM_VMM_RAM_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ram_file_kind {
    RAM_FILE_NONE,          /* anonymous RAM, or an fd that is none of the below */
    RAM_FILE_MEMFD,
    RAM_FILE_HUGETLBFS,
    RAM_FILE_TMPFS,
};

/* Creates a file of size bytes for guest RAM: hugepages a hugetlbfs memfd;
 * else, with try_tmpfs (the caller's THP policy, vmm/memory.c), the tmpfs
 * file, falling back to a memfd; else a memfd. Memfds are sealed against
 * shrinking, growing and further seals. Returns the fd (O_CLOEXEC) and sets
 * *kind, or -errno with *failed_call naming what failed ("memfd_create",
 * "ftruncate", "fcntl(F_ADD_SEALS)"; the caller reports it). *tmpfs_errno:
 * 0 when the tmpfs file was made or not tried, else why it could not be. */
int ram_file_create(uint64_t size, bool hugepages, bool try_tmpfs, enum ram_file_kind *kind, int *tmpfs_errno,
                    const char **failed_call);

/* What fd is: a memfd (its /proc link names memfd:), one on hugetlbfs, an
 * unlinked regular file on some tmpfs instance (not a memfd), or none of
 * these. Reads nothing but the fd's metadata. */
enum ram_file_kind ram_file_identify(int fd);

/* "memfd", "hugetlbfs", "tmpfs", or "anonymous" for RAM_FILE_NONE. */
const char *ram_file_kind_name(enum ram_file_kind kind);

#endif
