/*
 * A link the tests can cut: a relay between a migration's source and its
 * destination. It listens on an address of its own of the target's kind
 * (a unix socket, or a kernel-picked 127.0.0.1 port for tcp:, so TLS goes
 * through it untouched), and for every connection it accepts it connects
 * to the destination and copies bytes both ways. link_relay_cut stops the
 * copying and keeps every socket open: to both sides the link goes silent,
 * as a pulled cable looks (nothing is closed, no reset), which is what
 * post-copy's pause and recovery are for. link_relay_cut_after cuts at an
 * exact byte of the destination's answers (mid RECEIVED_BITMAP).
 *
 * Ownership: the test thread owns the struct; the relay thread owns the
 * sockets until link_relay_stop joins it. cut, budget and the byte
 * counter are atomics.
 */
#ifndef RINGVM_TESTS_LINK_RELAY_H
#define RINGVM_TESTS_LINK_RELAY_H

#include <stddef.h>

struct link_relay;

#include <stdbool.h>
#include <stdint.h>

/* Relays to target (unix:PATH or tcp:127.0.0.1:PORT); writes the relay's
 * own address (unix:PATH, tcp:127.0.0.1:PORT) to address. Asserts on
 * failure. */
struct link_relay *link_relay_start(const char *target, char *address, size_t size);
/* The link goes silent, for good. */
void link_relay_cut(struct link_relay *relay);
/* From now on at most `bytes` more bytes go from the destination to the
 * source (all connections together); the link goes silent right after
 * the last of them (both directions, as link_relay_cut). */
void link_relay_cut_after(struct link_relay *relay, uint64_t bytes);
bool link_relay_is_cut(struct link_relay *relay);
/* Bytes copied from the destination to the source so far. */
uint64_t link_relay_bytes_to_source(struct link_relay *relay);
/* Connections relayed so far. */
unsigned link_relay_connections(struct link_relay *relay);
/* Plaintext streams only, armed before the source connects: the relay
 * stops reading the first connection's source side (the main stream) just
 * before the first frame of `type` (a MIG_FRAME_* value), which then stays
 * unread in the source's socket, as a destination too slow to read it
 * leaves it; the destination's answers still pass. link_relay_release
 * lets it through. */
void link_relay_hold_before_frame(struct link_relay *relay, uint32_t type);
bool link_relay_holding(struct link_relay *relay);
void link_relay_release(struct link_relay *relay);
/* Closes everything and frees. */
void link_relay_stop(struct link_relay *relay);

#endif
