/*
 * Handing guest RAM to a new ringvm on the same host (issue 19, the local
 * hand-over): guest RAM is one file (vmm/ram_file.h), so the source passes
 * the fd itself over the local Unix socket (SCM_RIGHTS) instead of copying
 * a byte of RAM. The destination trusts nothing about what arrives: it must
 * be a memfd sealed against shrinking and growing (so its mapping can never
 * SIGBUS and the size never changes under it), or an unlinked file on a
 * tmpfs instance (ringvm's own where a memfd gets no huge pages: it cannot
 * be sealed, and nobody can open it by name), exactly the size the message
 * announces and the size its own --memory asks for.
 *
 * Message: 16 bytes, "RVMEMFD1" then the size (u64, little-endian), with
 * exactly one fd attached. Peer credentials are checked by the listener
 * (vmm/unix_listener.h), not here.
 *
 * Ownership: plain functions on the caller's thread; the received fd
 * belongs to the caller.
 */
#ifndef RINGVM_MIGRATION_MEMFD_TRANSFER_H
#define RINGVM_MIGRATION_MEMFD_TRANSFER_H

#include <stddef.h>
#include <stdint.h>

#define MEMFD_TRANSFER_MAGIC "RVMEMFD1"
#define MEMFD_TRANSFER_MESSAGE_SIZE 16

/* Sends memfd (size bytes of guest RAM) on socket_fd. 0 or -errno. */
int memfd_transfer_send(int socket_fd, int memfd, uint64_t size, char *error, size_t error_size);

/* Receives one message and its fd, checks it (memfd_transfer_check) against
 * expected_size, and returns the fd in *memfd (the caller closes it). Any
 * extra fd that arrived is closed. 0 or -errno (-EPROTO for a bad message,
 * -EBADF for a bad fd) with the reason in error. */
int memfd_transfer_receive(int socket_fd, uint64_t expected_size, int *memfd, char *error, size_t error_size);

/* The destination's checks on an fd it was given: a memfd (sealable, its
 * /proc/self/fd link names memfd:), F_SEAL_SHRINK and F_SEAL_GROW set, a
 * regular file of exactly expected_size bytes. 0 or -errno with the reason. */
int memfd_transfer_check(int fd, uint64_t expected_size, char *error, size_t error_size);

#endif
