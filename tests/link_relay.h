/*
 * A link the tests can cut: a relay between a migration's source and its
 * destination. It listens on a unix socket of its own, and for every
 * connection it accepts it connects to the destination and copies bytes
 * both ways. link_relay_cut stops the copying and keeps every socket open:
 * to both sides the link goes silent, as a pulled cable looks (nothing is
 * closed, no reset), which is what post-copy's pause and recovery are for.
 *
 * Ownership: the test thread owns the struct; the relay thread owns the
 * sockets until link_relay_stop joins it. cut is an atomic.
 */
#ifndef RINGVM_TESTS_LINK_RELAY_H
#define RINGVM_TESTS_LINK_RELAY_H

#include <stddef.h>

struct link_relay;

/* Relays to target (unix:PATH); writes the relay's own address
 * (unix:PATH) to address. Asserts on failure. */
struct link_relay *link_relay_start(const char *target, char *address, size_t size);
/* The link goes silent, for good. */
void link_relay_cut(struct link_relay *relay);
/* Connections relayed so far. */
unsigned link_relay_connections(struct link_relay *relay);
/* Closes everything and frees. */
void link_relay_stop(struct link_relay *relay);

#endif
