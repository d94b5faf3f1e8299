/*
 * The destination's side of a post-copy migration once it has switched
 * over (issue 17): guest RAM under userfaultfd (migration/
 * postcopy_destination.h), the urgent channel, and the thread "pc-urgent"
 * that owns that channel.
 *
 * The urgent channel is the migration's second connection (accepted after
 * POSTCOPY_OPEN, peer-checked and TLS-wrapped like the first). On it the
 * destination sends PAGE_REQUEST for each page a thread faulted on and
 * POSTCOPY_RESUMED once; the source answers each request with a MEMORY
 * frame of the requested pages, which never waits behind the background
 * stream on the main connection. Both channels place pages through
 * postcopy_incoming_place: the first copy of a page wins (UFFDIO_COPY),
 * a second one finds it present and is dropped.
 *
 * Threads and ownership: the incoming thread creates, calls place (main
 * stream), resumed, fill_progress, failed, missing, wait_all, pause,
 * restart, finish and destroy. "pc-fault" (inside postcopy_destination)
 * sends a request itself on a plaintext channel when that needs no wait
 * (one non-blocking send under the send lock, taken with trylock), and
 * queues it for pc-urgent otherwise (TLS, a busy or paused channel, a
 * full socket buffer): a fault then crosses three threads instead of
 * four (bench/fault-service). "pc-urgent" reads the urgent channel (and
 * owns its TLS session: one thread per session, both directions) and
 * sends the queue from start (or restart) until pause/finish/destroy join
 * it; between a pause and the next restart no pc-urgent runs, pc-fault
 * only queues, and the incoming thread holds the old channel. Everything
 * shared is under a lock or atomic; each place and a failure broadcast a
 * condition on the lock, which wait_all sleeps on.
 */
#ifndef RINGVM_MIGRATION_POSTCOPY_INCOMING_H
#define RINGVM_MIGRATION_POSTCOPY_INCOMING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "migration/page_digest.h"
#include "migration/transport.h"

struct mig_progress;
struct postcopy_incoming;

struct postcopy_incoming_options {
    uint8_t *host;              /* guest RAM's MAP_SHARED mapping */
    int memfd;
    uint64_t size;
    struct mig_io urgent;       /* the accepted urgent channel; its fd and TLS session become the session's */
    bool digest;                /* keep the page digest (verify_digest) */
    /* Every request through pc-urgent's queue, as before pc-fault could
     * send one itself (bench/fault-service's baseline). */
    bool queue_requests;
    /* Tests only, NULL in production: postcopy_destination_options'. */
    void (*after_copy)(uint64_t page, uint64_t count, void *opaque);
    void *after_copy_opaque;
};

/* Registers guest RAM with userfaultfd (the pages present now count as
 * received: discard the stale ones first) and starts "pc-urgent". 0, or
 * -1 with the reason in error (the urgent channel is closed then too). */
int postcopy_incoming_start(struct postcopy_incoming **out, const struct postcopy_incoming_options *options,
                            char *error, size_t error_size);
/* Places pages [ram_offset, + pages * 4096) from data (NULL: zero pages);
 * pages already present are left as they are. 0, or -1 (message printed). */
int postcopy_incoming_place(struct postcopy_incoming *incoming, uint64_t ram_offset, uint32_t pages,
                            const uint8_t *data);
/* Hybrid: pages missing now but known to be zero (not in discarded, one
 * bit per page: pre-copy sent them as zero runs, which leave memfd holes):
 * counted, then placed as zero pages (after the guest resumed: a touch
 * before that asks the source, which answers zero as well). */
uint64_t postcopy_incoming_known_zero(struct postcopy_incoming *incoming, const uint64_t *discarded);
int postcopy_incoming_fill_known_zero(struct postcopy_incoming *incoming, const uint64_t *discarded);
/* Has "pc-urgent" send POSTCOPY_RESUMED(timestamp_ns) to the source. */
void postcopy_incoming_resumed(struct postcopy_incoming *incoming, uint64_t timestamp_ns);
/* Whether page (RAM offset / 4096) is here. */
bool postcopy_incoming_received(struct postcopy_incoming *incoming, uint64_t page);
/* Pages not received yet. */
uint64_t postcopy_incoming_missing(struct postcopy_incoming *incoming);
/* END: waits until every page is here (0), the urgent channel failed (-1,
 * its reason in error) or timeout_ms passed (1); *missing = the pages
 * still missing then. Sleeps on a condition the places and the failure
 * signal (no polling). Incoming thread. */
int postcopy_incoming_wait_all(struct postcopy_incoming *incoming, unsigned timeout_ms, uint64_t *missing,
                               char *error, size_t error_size);
/* The urgent channel failed: true and its reason. */
bool postcopy_incoming_failed(struct postcopy_incoming *incoming, char *error, size_t error_size);
/* The digest of every page placed (or present at registration) in hex;
 * returns how many pages it covers (all of RAM once nothing is missing:
 * fewer or more names a page lost or counted twice). */
uint64_t postcopy_incoming_digest(struct postcopy_incoming *incoming, char hex[PAGE_DIGEST_HEX_SIZE]);
/* Copies the counters into progress->postcopy (vcpu_tids[i] = vCPU i's
 * kernel thread id, to tell their faults and blocktime apart). */
void postcopy_incoming_fill_progress(struct postcopy_incoming *incoming, struct mig_progress *progress,
                                     const pid_t *vcpu_tids, unsigned vcpu_count);
/* The link broke: ends pc-urgent, keeps its channel open (closing it
 * would tell the source this process is gone). Faults keep being queued. */
void postcopy_incoming_pause(struct postcopy_incoming *incoming);
/* The urgent channel's fd (after pause: to look at the peer). */
int postcopy_incoming_urgent_fd(const struct postcopy_incoming *incoming);
/* Recovery: closes the old urgent channel, takes the new one (its fd and
 * TLS session become the session's) and starts pc-urgent again; the
 * queued requests go first. 0, or -1 (message in error). */
int postcopy_incoming_restart(struct postcopy_incoming *incoming, struct mig_io urgent, char *error,
                              size_t error_size);
/* The received bitmap's 64-bit words [first, first + count). */
void postcopy_incoming_copy_received(struct postcopy_incoming *incoming, uint64_t first_word, uint64_t words,
                                     uint64_t *out);
/* Every page is here: ends "pc-urgent" and the fault thread, unregisters
 * RAM from userfaultfd (from now on it is plain memory) and closes the
 * urgent channel. Only with missing() == 0. */
void postcopy_incoming_finish(struct postcopy_incoming *incoming);
/* Frees. After finish, or on a failure: then RAM leaves userfaultfd with
 * pages missing, which read as zeros from then on, so the caller stops
 * the vCPUs first (the guest is lost then). */
void postcopy_incoming_destroy(struct postcopy_incoming *incoming);

#endif
