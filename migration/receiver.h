/*
 * The destination's frame parser: reads frames from an input (a socket, or
 * a byte buffer for tests and the fuzzer), validates every one of them and
 * applies memory runs to guest RAM.
 *
 * Guarantees, whatever the input: never writes outside [ram, ram +
 * ram_bytes), never allocates more than the configured vCPU state buffers
 * (sized from the LOCAL configuration at init, before any input is read),
 * never crashes. A frame's payload bytes may land in guest RAM before its
 * checksum is verified; a bad checksum fails the migration and the
 * destination never runs that RAM.
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

#include "migration/protocol.h"

/* Reads exactly length bytes: 0; 1 = clean EOF before the first byte
 * (allowed only between frames); -1 = error with a message. */
typedef int (*mig_read_fn)(void *ctx, void *data, size_t length, bool eof_ok, char *error,
                           size_t error_size);

struct mig_input {
    mig_read_fn read;
    void *ctx;
};

/* A byte buffer as input (tests, fuzzer). */
struct mig_buffer_input {
    const uint8_t *data;
    size_t length;
    size_t position;
};
void mig_buffer_input_init(struct mig_buffer_input *buffer, struct mig_input *input, const void *data,
                           size_t length);

#define MIG_RECEIVER_ERROR_MAX 640

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

    /* Why the last call failed. error_code: enum mig_error_code to send
     * back; peer_error: the failure is an ERROR frame from the peer. */
    uint32_t error_code;
    bool peer_error;
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
 * peer_error set. */
int mig_receiver_next(struct mig_receiver *r, const struct mig_input *input);

/* Drives the parser over a whole buffer until END: 0 when a complete,
 * valid stream (hello ... end) was consumed, -1 otherwise (r->error).
 * The fuzzer's entry point. */
int mig_receiver_run_buffer(struct mig_receiver *r, const void *data, size_t length);

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
