/*
 * Post-copy return path (destination -> source), issue 17 groundwork: not
 * yet used on the wire. Documented byte by byte in docs/migration-protocol.md,
 * "Post-copy return path, not yet used on the wire".
 *
 * Frames use the stream's 32-byte header (migration/protocol.h: type,
 * flags 0, seq, length, XXH3-64 checksum) with two new types. They are
 * numbered after MIG_FRAME_TYPE_MAX; when post-copy is wired, protocol.h
 * takes them over (and mig_frame_length_bounds their bounds).
 *
 *   PAGE_REQUEST (10), 16 bytes:    RAM offset u64 (page aligned),
 *                                   page count u32 (1..512), flags u32 (0)
 *   RECEIVED_BITMAP (11), 16 + 8 n: RAM offset u64 (a multiple of 64 pages),
 *                                   page count u64 (1..4194304; a multiple
 *                                   of 64 unless the chunk ends RAM), then
 *                                   n = ceil(count / 64) words, bit b of
 *                                   word w = page (offset / 4096) + 64 w + b;
 *                                   bits past count are zero. Chunks go up
 *                                   in RAM without gaps; offset 0 starts a
 *                                   new bitmap (a recovery).
 *   POSTCOPY_RESUMED (20), 8 bytes: CLOCK_REALTIME ns when the guest
 *                                   resumed on the destination (once).
 *   ERROR (9): as in the stream; ends the return path.
 *
 * The source's parser takes bytes in any chunking. Malformed input is fatal
 * (postcopy_return_feed returns -1, the text in parser->error). A valid
 * request beyond the queue or the rate is refused, not obeyed: it is not
 * queued (the background stream still delivers that page), it is counted
 * and its text kept in last_refusal, and parsing goes on.
 *
 * Ownership: one thread owns a parser (the source's return-path reader):
 * feed and pop are not locked; a consumer on another thread pops under
 * the owner's lock.
 */
#ifndef RINGVM_MIGRATION_POSTCOPY_RETURN_H
#define RINGVM_MIGRATION_POSTCOPY_RETURN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/protocol.h"

#define POSTCOPY_FRAME_PAGE_REQUEST      10u
#define POSTCOPY_FRAME_RECEIVED_BITMAP   11u

#define POSTCOPY_PAGE_REQUEST_SIZE       16u
#define POSTCOPY_REQUEST_MAX_PAGES       512u          /* 2 MiB: one huge page */
#define POSTCOPY_BITMAP_HEADER_SIZE      16u
#define POSTCOPY_BITMAP_MAX_PAGES        4194304u      /* 16 GiB of RAM, 512 KiB of bitmap */
#define POSTCOPY_BITMAP_MAX_LENGTH       (POSTCOPY_BITMAP_HEADER_SIZE + POSTCOPY_BITMAP_MAX_PAGES / 8u)
#define POSTCOPY_RETURN_ERROR_MAX        512u

struct postcopy_page_request {
    uint64_t ram_offset;
    uint32_t pages;
};

struct postcopy_return_options {
    uint64_t ram_bytes;             /* guest RAM, a multiple of 4096 */
    unsigned queue_capacity;        /* requests pending at most (default 1024) */
    uint64_t rate_pages_per_s;      /* requested pages per second refilled (default 262144 = 1 GiB/s) */
    uint64_t burst_pages;           /* bucket size (default 16384 = 64 MiB) */
};

struct postcopy_return_parser {
    struct postcopy_return_options options;
    uint64_t ram_pages;
    uint64_t seq;                   /* of the frame being read */
    /* The frame being read: its header, then its payload (the buffer
     * grows to the largest frame seen, at most POSTCOPY_BITMAP_MAX_LENGTH). */
    uint8_t header[MIG_HEADER_SIZE];
    size_t header_have;
    struct mig_frame_header frame;
    uint8_t *payload;
    size_t payload_capacity;
    size_t payload_have;
    /* Requests queue: a ring of queue_capacity entries. */
    struct postcopy_page_request *queue;
    unsigned queue_head, queue_count;
    /* Token bucket in pages, refilled from the caller's clock. */
    uint64_t tokens;
    uint64_t last_refill_ns;
    bool clock_started;
    /* The received bitmap the destination reported (recovery). */
    uint64_t *received;
    uint64_t bitmap_next_page;      /* where the next chunk must start */
    bool bitmap_complete;
    /* Counters. */
    uint64_t frames;
    uint64_t requests_accepted;
    uint64_t requests_refused_queue;
    uint64_t requests_refused_rate;
    uint64_t bitmap_chunks;
    uint32_t peer_error_code;       /* of an ERROR frame, 0 if none */
    /* POSTCOPY_RESUMED (at most one): the destination runs the guest since
     * resumed_ns (its CLOCK_REALTIME). */
    bool got_resumed;
    uint64_t resumed_ns;
    bool failed;
    char error[POSTCOPY_RETURN_ERROR_MAX];
    char last_refusal[POSTCOPY_RETURN_ERROR_MAX];
};

/* 0, or -1 with the reason in parser->error (bad RAM size, no memory).
 * Zero options fields take their defaults. */
int postcopy_return_init(struct postcopy_return_parser *parser, const struct postcopy_return_options *options);
void postcopy_return_destroy(struct postcopy_return_parser *parser);

/* Consumes length bytes (any chunking) at the caller's monotonic time
 * now_ns. 0, or -1 when the input is malformed (parser->error; every later
 * call returns -1 at once). */
int postcopy_return_feed(struct postcopy_return_parser *parser, const uint8_t *bytes, size_t length,
                         uint64_t now_ns);
/* The oldest queued request: true and *out, or false when none. */
bool postcopy_return_pop(struct postcopy_return_parser *parser, struct postcopy_page_request *out);
/* The reported bitmap: page received on the destination. */
bool postcopy_return_page_received(const struct postcopy_return_parser *parser, uint64_t page);

/* Destination side: whole frames (header + payload) into out; returns the
 * bytes written. out holds MIG_HEADER_SIZE + POSTCOPY_PAGE_REQUEST_SIZE, or
 * MIG_HEADER_SIZE + postcopy_return_bitmap_length(pages). */
size_t postcopy_return_encode_page_request(uint8_t *out, uint64_t seq, uint64_t ram_offset, uint32_t pages);
size_t postcopy_return_bitmap_length(uint64_t pages);
size_t postcopy_return_encode_received_bitmap(uint8_t *out, uint64_t seq, uint64_t ram_offset, uint64_t pages,
                                              const uint64_t *words);

#endif
