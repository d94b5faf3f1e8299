/*
 * The source's side of a post-copy migration (issue 17): which pages the
 * destination still lacks, and the thread "pc-serve" that owns the urgent
 * channel and answers the destination's page requests on it.
 *
 * A page is "sent" once either the background stream (the migration
 * thread, on the main connection) or pc-serve has taken it; the bit is
 * claimed atomically, so the background stream sends each page once. A
 * requested page the stream has not taken is sent on the urgent channel.
 * One the stream took is decided per page by who commits it first (one
 * fetch_or): the sender thread when it fills the page's buffer, right
 * before writing it, or pc-serve when the request comes. Committed by
 * pc-serve first, the page is withdrawn from the buffer (one copy, on the
 * urgent channel, without waiting behind the stream). Committed by the
 * stream first, the copy is on its way: pc-serve leaves the request to
 * it while little of the stream is ahead of it (STREAM_WAIT_*), and
 * only behind a longer queue sends a second copy, which the destination
 * drops if the first is there. After a request the background stream
 * continues just past it (pre-paging by locality).
 *
 * Guest RAM is frozen from the switch-over on (the source's vCPUs never
 * run again), so both threads read it without locks.
 *
 * Ownership: the migration thread creates, marks, starts, claims, reads
 * the counters and stops/destroys; pc-serve owns the urgent io (fd and TLS
 * session stay the caller's) and the return-path parser between start
 * and stop. Shared state: atomics.
 */
#ifndef RINGVM_MIGRATION_POSTCOPY_SOURCE_H
#define RINGVM_MIGRATION_POSTCOPY_SOURCE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/transport.h"

struct guest_memory;
struct postcopy_source;

struct postcopy_source_stats {
    uint64_t requests;          /* page requests read */
    uint64_t pages_requested;   /* pages sent on the urgent channel */
    uint64_t requests_refused;  /* refused by the parser's queue or rate bounds */
    uint64_t pages_pushed;      /* pages the background stream sent (claimed, not withdrawn) */
    uint64_t pages_withdrawn;   /* claimed by the stream, then left out of it: served on request first */
    uint64_t pages_left_to_stream;      /* requested, answered by the stream's copy on its way */
    uint64_t pages_sent_twice;  /* requested, sent again though the stream's copy was on its way */
};

/* All pages unsent. 0, or -1 (out of memory). */
int postcopy_source_create(struct postcopy_source **out, const struct guest_memory *memory, struct mig_io urgent);
/* Hybrid: pages the destination already holds (sent in pre-copy, clean since). Before start. */
void postcopy_source_mark_sent(struct postcopy_source *source, uint64_t page, uint64_t count);
/* Unsent and uncommitted again: recovery, for pages the destination lacks. */
void postcopy_source_mark_unsent(struct postcopy_source *source, uint64_t page);
/* The main stream sender's filter (mig_sender_set_withdrawn, opaque = the
 * source): commits the page to the stream, or true when pc-serve
 * committed it first (it went on the urgent channel). */
bool postcopy_source_withdrawn(uint64_t page, void *opaque);
/* The counter of pages the sender left out (its counter argument). */
_Atomic uint64_t *postcopy_source_withdrawn_counter(struct postcopy_source *source);
/* The main stream's socket, whose queue (SIOCOUTQ) decides whether a
 * requested page already on its way there is left to it; any time. -1
 * (the default): never left, always sent again. */
void postcopy_source_set_main_socket(struct postcopy_source *source, int fd);
uint64_t postcopy_source_unsent(struct postcopy_source *source);
/* The first unsent page at or after from, wrapping around once: true and
 * *page, or false when every page is sent. */
bool postcopy_source_next_unsent(struct postcopy_source *source, uint64_t from, uint64_t *page);
/* pc-serve adds the bytes it sends to *counter (the main stream's
 * sender's shared_bytes), so both channels together keep to the cap. Set
 * before start; counter outlives the source. */
void postcopy_source_count_bytes_into(struct postcopy_source *source, _Atomic uint64_t *counter);
/* Starts pc-serve. 0, or -errno. */
int postcopy_source_start(struct postcopy_source *source);
/* The background stream takes page: true when it is the first to. */
bool postcopy_source_claim(struct postcopy_source *source, uint64_t page);
/* Where the background stream should continue after a request: true and
 * *page once per request served since the last call. */
bool postcopy_source_take_restart(struct postcopy_source *source, uint64_t *page);
/* The destination's POSTCOPY_RESUMED timestamp (CLOCK_REALTIME ns), 0 before. */
uint64_t postcopy_source_resumed_ns(struct postcopy_source *source);
/* The urgent channel failed (or the destination sent ERROR on it). */
bool postcopy_source_failed(struct postcopy_source *source, char *error, size_t error_size);
void postcopy_source_get_stats(struct postcopy_source *source, struct postcopy_source_stats *stats);
/* Recovery: pc-serve again, on a new urgent channel (a fresh parser,
 * frames numbered from 0). Stops the old one first. 0 or -errno. */
int postcopy_source_restart(struct postcopy_source *source, struct mig_io urgent);
/* Joins pc-serve (idempotent). */
void postcopy_source_stop(struct postcopy_source *source);
void postcopy_source_destroy(struct postcopy_source *source);

#endif
