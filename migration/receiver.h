/*
 * The destination's frame parser: reads frames from an input (a socket, or
 * a byte buffer for tests and the fuzzer), validates every one of them and
 * applies memory runs to guest RAM.
 *
 * Guarantees, whatever the input: never writes outside [ram, ram +
 * ram_bytes), never allocates more than the configured vCPU state buffers
 * (sized from the LOCAL configuration at init, before any input is read),
 * never crashes, and never works more per input byte than the bounds of
 * mig_receiver_check_work. A frame's payload bytes may land in guest RAM
 * before its checksum is verified; a bad checksum fails the migration and
 * the destination never runs that RAM.
 *
 * Ownership: one thread (the incoming thread, or the fuzzer) owns a
 * receiver; the counters it exposes for progress are atomics read by
 * anyone.
 */
#ifndef RINGVM_MIGRATION_RECEIVER_H
#define RINGVM_MIGRATION_RECEIVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "migration/protocol.h"

/* Reads exactly length bytes: 0; 1 = clean EOF before the first byte
 * (allowed only between frames); -1 = error with a message. Used by
 * mig_read_small_frame (the source reading the destination's replies). */
typedef int (*mig_read_fn)(void *ctx, void *data, size_t length, bool eof_ok, char *error,
                           size_t error_size);
/* Reads what is there, waiting for at least one byte: the count (1 ..
 * capacity), 0 at end of stream, -1 = error with a message (a stall, a
 * shutdown, a socket error). The receiver reads through this only. */
typedef ssize_t (*mig_read_some_fn)(void *ctx, void *data, size_t capacity, char *error, size_t error_size);

struct mig_input {
    mig_read_fn read;
    mig_read_some_fn read_some;
    void *ctx;
};

/* A byte buffer as input (tests, fuzzer): both functions. */
struct mig_buffer_input {
    const uint8_t *data;
    size_t length;
    size_t position;
};
void mig_buffer_input_init(struct mig_buffer_input *buffer, struct mig_input *input, const void *data,
                           size_t length);

#define MIG_RECEIVER_ERROR_MAX 640

/* Input bytes read ahead of the parser: headers and small payloads are
 * served from here, so a stream of tiny frames or run headers costs one
 * input call (one recv) per this many bytes, not one per header. */
#define MIG_RECEIVER_STAGING_BYTES (64u << 10)
/* A read of at least this many bytes (page data, a vCPU state) goes
 * straight to its destination after the staged bytes. */
#define MIG_RECEIVER_DIRECT_BYTES MIG_PAGE_SIZE

/* What the parser did, counted for the work bounds of
 * docs/migration-protocol.md ("Work per frame and per byte"): tests and the
 * fuzzer assert on these counts, not on time. Owner thread only; read
 * after a parse. */
struct mig_receiver_work {
    uint64_t input_calls;       /* read_some calls on the input */
    uint64_t memory_frames;     /* MEMORY frame headers accepted */
    uint64_t runs;              /* run headers decoded (a refused one included) */
    uint64_t zero_words;        /* 64-page words of the written-page bitmap ZERO runs examined */
    uint64_t pages_touched;     /* guest pages a data run wrote or a ZERO run checked (and cleared) */
};

struct mig_receiver {
    /* Configuration, set by mig_receiver_init, immutable afterwards. */
    uint8_t *ram;
    uint64_t ram_bytes;
    struct mig_hello local;
    uint64_t *written;                  /* one bit per page the stream wrote data to */

    /* Parser state (owner thread only). */
    uint64_t seq;                       /* next expected frame number */
    bool got_hello;
    bool got_end;
    struct mig_hello peer;
    uint8_t *vcpu_states;               /* local.vcpu_count * local.vcpu_state_size */
    bool vcpu_state_present[MIG_MAX_VCPUS];
    struct mig_device_state device;
    bool have_device;
    struct mig_end end;
    uint8_t *scratch;                   /* small-frame payloads */
    size_t scratch_size;
    uint8_t *staging;                   /* MIG_RECEIVER_STAGING_BYTES read ahead */
    size_t staged_start, staged_end;    /* unparsed bytes: staging[start, end) */
    struct mig_receiver_work work;

    /* Why the last call failed. error_code: this side's enum
     * mig_error_code (what it sends back and reports); peer_error: the
     * failure is an ERROR frame from the source, then error_code is
     * MIG_ERR_CANCELLED (the peer gave up) and peer_error_code holds the
     * code the source sent, never taken over as this side's own. */
    uint32_t error_code;
    bool peer_error;
    uint32_t peer_error_code;
    char error[MIG_RECEIVER_ERROR_MAX];

    /* Counters (owner writes, anyone reads). */
    _Atomic uint64_t iteration;
    _Atomic uint64_t pages_received;    /* data + zero pages applied */
    _Atomic uint64_t zero_pages;
    _Atomic uint64_t normal_pages;
    _Atomic uint64_t bytes_received;    /* frame bytes, headers included */
    /* RAM offset where the latest data run starts: a populating thread
     * runs ahead of it (owner writes, populater reads). */
    _Atomic uint64_t frontier;
};

/* local: this side's hello (what the peer must match). ram/ram_bytes: guest
 * RAM (host mapping) to write into; it must be all zero at init (a fresh
 * memfd): a ZERO run only touches pages an earlier data run wrote, so the
 * zero runs of never-written RAM cost nothing on the destination (no page
 * is faulted in to be checked). Returns 0 or -1 (out of memory). */
int mig_receiver_init(struct mig_receiver *r, uint8_t *ram, uint64_t ram_bytes, const struct mig_hello *local);
void mig_receiver_destroy(struct mig_receiver *r);

/* Reads and applies one frame. Returns the frame type (> 0), or -1 with
 * r->error ("frame 12: memory run at offset 0x... exceeds guest RAM ...").
 * A HELLO is compared with the local configuration (mismatch: -1,
 * error_code MIG_ERR_CONFIG). An ERROR frame from the peer gives -1 with
 * peer_error set. Every rule is in docs/migration-protocol.md; r->error
 * never holds a byte of the stream that is not printable ASCII. Input is
 * read through input->read_some only, possibly past the frame (kept in
 * r->staging for the next call). */
int mig_receiver_next(struct mig_receiver *r, const struct mig_input *input);

/* Drives the parser over a whole buffer until END: 0 when a complete,
 * valid stream (hello ... end) was consumed, -1 otherwise (r->error).
 * The fuzzer's entry point. */
int mig_receiver_run_buffer(struct mig_receiver *r, const void *data, size_t length);

/*
 * The receiver's work bounds (docs/migration-protocol.md, "Work per frame
 * and per byte"), whatever the input: after any parse of input_bytes
 * bytes, r->work holds
 *   runs          <= input_bytes / 16              (a run header is 16 bytes)
 *   pages_touched <= 2 * (input_bytes / 4096)      (a data page is 4096 bytes;
 *                    a ZERO run checks only pages a data run wrote, once each)
 *   zero_words    <= memory_frames * ceil(RAM pages / 64) + 2 * runs
 *                    (the runs of a frame never overlap)
 *   input_calls   <= 8 + input_bytes / 1024        (reads are staged)
 * Returns 0, or -1 naming the bound that does not hold. The fuzzer and
 * the tests assert it; production does not call it.
 */
int mig_receiver_check_work(const struct mig_receiver *r, uint64_t input_bytes, char *error, size_t error_size);

/* Pointer to vCPU i's received state bytes (local.vcpu_state_size), NULL
 * if not received. */
const void *mig_receiver_vcpu_state(const struct mig_receiver *r, unsigned index);

/* Reads one small frame (header + payload into buffer, at most capacity
 * bytes) and verifies it: for the source reading the destination's replies.
 * Returns 0 with *header filled, or -1 with a message. */
int mig_read_small_frame(const struct mig_input *input, uint64_t seq, struct mig_frame_header *header,
                         uint8_t *buffer, size_t capacity, char *error, size_t error_size);

/* Test hook (tests/test_migration_digest.c): when set, called by the
 * receiving thread after each data run of a MEMORY frame has been written
 * into guest RAM and hashed for the frame checksum, with the RAM mapping,
 * the run's RAM offset and its page count; it may change those pages (a
 * destination that received one page wrong). NULL in production. The test
 * sets it before the migration starts (release) and clears it after; the
 * receiver loads it with acquire. */
typedef void (*mig_receiver_data_hook_fn)(uint8_t *ram, uint64_t ram_offset, uint32_t pages);
extern _Atomic(mig_receiver_data_hook_fn) mig_receiver_data_hook;

/* True if the 4096 bytes at page are all zero. */
bool mig_page_is_zero(const void *page);

#endif
