/*
 * The local hand-over (issue 19): a new ringvm on the same host takes over
 * a running guest. Guest RAM is one memfd (vmm/memory.h), so the source
 * passes the fd itself (migration/memfd_transfer.h) and then runs the
 * normal protocol minus RAM: HELLO / HELLO_ACK, pause, vCPU (or machine)
 * and device state, END, ACK. No MEMORY frame is ever sent or accepted.
 *
 * Addresses: "local:PATH" names the destination's Unix socket (mode 0600,
 * SO_PEERCRED same uid or root: the rules of unix:PATH). The wire order is
 * in docs/migration-protocol.md ("Local hand-over"), the safety rules in
 * docs/reliability.md.
 *
 * The destination's order (the design question of the issue): its VM was
 * created at start-up with RAM of its own (a memfd nobody touched, so no
 * pages) and memslots registered on that mapping. The received memfd is
 * mapped over it at the same address (guest_memory_replace_backing): the
 * memslots stay registered as they are, every pointer into RAM stays
 * valid, the old RAM is freed; then the data extents are faulted into the
 * destination's page tables. All of this happens before HELLO_ACK, i.e.
 * before the source pauses its guest.
 *
 * Ownership: plain functions on the caller's thread (the source's
 * migration thread, the destination's incoming thread).
 */
#ifndef RINGVM_MIGRATION_LOCAL_HANDOVER_H
#define RINGVM_MIGRATION_LOCAL_HANDOVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/transport.h"

struct vm;

#define LOCAL_HANDOVER_PREFIX "local:"

/* 1 when text is "local:PATH" (out then holds the Unix address of PATH),
 * 0 when text is some other address (out untouched), -1 when it is
 * local: with a bad path (the reason in error). */
int local_handover_parse_address(const char *text, struct mig_address *out, char *error, size_t error_size);
/* Any migration address: 1 for local:PATH, 0 for unix:PATH or
 * tcp:HOST:PORT (mig_address_parse), out set either way; -1 with the
 * reason in error. */
int local_handover_parse_any_address(const char *text, struct mig_address *out, char *error, size_t error_size);

/* Source, right after connecting and before HELLO: sends vm's guest-RAM
 * memfd. 0 or -1 with the reason in error. */
int local_handover_send_ram(int socket_fd, const struct vm *vm, char *error, size_t error_size);

/* What the destination did with the RAM it adopted (for the log line and
 * the benchmark). */
struct local_handover_adoption {
    uint64_t adopt_ns;          /* wait for the message, receive, check, map over the old RAM */
    uint64_t populate_ns;       /* fault the data extents into this process */
    uint64_t populated_bytes;   /* bytes of the data extents (pages the source had written) */
};

/* Destination, right after accepting: waits (up to stall_ms, giving up
 * when *stop becomes true) for the source's memfd message, checks it
 * (memfd_transfer_receive against vm's --memory) and makes it vm's guest
 * RAM (see above); faulting the written pages in stops after stall_ms / 2
 * (the rest is faulted in on first touch). vm must be an incoming VM whose vCPUs never ran.
 * 0, or -1 with the reason in error; after a failure the VM must not run
 * (the caller fails the migration; the source's RAM was not written). */
int local_handover_adopt_ram(struct vm *vm, int socket_fd, unsigned stall_ms, const _Atomic bool *stop,
                             struct local_handover_adoption *adoption, char *error, size_t error_size);

#endif
