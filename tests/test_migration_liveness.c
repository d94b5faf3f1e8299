/*
 * No stream may hold either side hostage (issue 16, items 1 and 2), tested
 * without a VM, without sockets and without sleeping:
 *
 * - the destination's frame deadline (migration/receiver.c): a peer that
 *   dribbles bytes fast enough to dodge the stall timeout is refused once a
 *   frame is not complete within max(stall timeout, frame bytes / the
 *   256 KiB/s floor), with the frame, the phase and the rate seen named;
 * - the source's wait for the ACK after END (mig_read_reply): a hard
 *   deadline for the whole reply, however the bytes trickle in;
 * - shutdown while data keeps arriving: the receiver gives up at its next
 *   read after the flag is set, whatever the stream does.
 *
 * Time is a fake clock (struct mig_input's clock) that the test's read_some
 * advances by a fixed step per call, so every elapsed time and rate in the
 * messages is exact.
 *
 * Ownership: each test owns its struct dribble, receiver and stream; the
 * stop flag is an atomic only because the receiver's interface takes one
 * (production sets it from the signal thread).
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/protocol.h"
#include "migration/receiver.h"
#include "tests/migration_stream.h"

#define MS 1000000ull   /* ns */

/* The fake peer: hands out data[position..] at most per_call bytes per
 * read_some call, advancing the fake clock by step_ns before each call
 * returns; past the end it returns 0 (end of stream), or, when endless,
 * keeps returning bytes (0x00). Sets stop when calls reaches
 * stop_at_call (0 = never), after filling that call's bytes. */
struct dribble {
    const uint8_t *data;
    size_t length, position;
    size_t per_call;
    uint64_t now_ns, step_ns;
    uint64_t calls;
    bool endless;
    bool fail_when_empty;       /* past the end: -1 "timed out" instead of 0 */
    uint64_t stop_at_call;
    _Atomic bool stop;
};

static ssize_t dribble_read_some(void *ctx, void *data, size_t capacity, char *error, size_t error_size)
{
    struct dribble *d = ctx;
    d->calls++;
    d->now_ns += d->step_ns;
    size_t left = d->length - d->position;
    size_t take = capacity < d->per_call ? capacity : d->per_call;
    ssize_t result;
    if (left == 0 && d->fail_when_empty) {
        snprintf(error, error_size, "timed out");
        result = -1;
    } else if (left == 0 && d->endless) {
        memset(data, 0, take);
        result = (ssize_t)take;
    } else {
        take = take < left ? take : left;
        if (take > 0)   /* data may be NULL for an empty peer */
            memcpy(data, d->data + d->position, take);
        d->position += take;
        result = (ssize_t)take;
    }
    if (d->stop_at_call != 0 && d->calls == d->stop_at_call)
        atomic_store_explicit(&d->stop, true, memory_order_release);
    return result;
}

static uint64_t dribble_clock(void *ctx)
{
    return ((struct dribble *)ctx)->now_ns;
}

static struct mig_input dribble_input(struct dribble *d)
{
    return (struct mig_input){ .read_some = dribble_read_some, .ctx = d, .clock = dribble_clock, .clock_ctx = d,
                               .stop = &d->stop };
}

/* The test destination (tests/migration_stream.h: 1 MiB of RAM, 2 vCPUs). */
struct destination {
    uint8_t *ram;
    struct mig_receiver r;
};

static void destination_init(struct destination *dst, unsigned stall_ms)
{
    dst->ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    struct mig_hello local = migration_stream_hello();
    cr_assert_eq(mig_receiver_init(&dst->r, dst->ram, MIGRATION_STREAM_RAM_BYTES, &local), 0);
    mig_receiver_set_deadline(&dst->r, stall_ms, 0);
}

static void destination_fini(struct destination *dst)
{
    mig_receiver_destroy(&dst->r);
    migration_stream_guarded_ram_free(dst->ram, MIGRATION_STREAM_RAM_BYTES);
}

/* HELLO, in one read. */
static size_t put_hello(struct migration_stream *s)
{
    struct mig_hello hello = migration_stream_hello();
    migration_stream_put_hello(s, &hello);
    return s->length;
}

/* Reads the hello through d in one call of exactly its size. */
static void receive_hello(struct destination *dst, struct dribble *d, size_t hello_bytes)
{
    struct mig_input input = dribble_input(d);
    size_t per_call = d->per_call;
    uint64_t step = d->step_ns;
    d->per_call = hello_bytes;
    d->step_ns = 0;
    cr_assert_eq(mig_receiver_next(&dst->r, &input), MIG_FRAME_HELLO, "%s", dst->r.error);
    cr_assert_eq(d->position, hello_bytes);
    d->per_call = per_call;
    d->step_ns = step;
}

/* A MEMORY frame with one data run over all 256 pages of the test RAM
 * (non-zero bytes): 32 + 16 + 1 MiB bytes. */
static void put_full_memory_frame(struct migration_stream *s)
{
    size_t length = MIG_RUN_HEADER_SIZE + MIGRATION_STREAM_RAM_BYTES;
    uint8_t *payload = malloc(length);
    cr_assert_not_null(payload);
    struct mig_run run = { .ram_offset = 0, .pages = MIGRATION_STREAM_RAM_BYTES / MIG_PAGE_SIZE, .flags = 0 };
    mig_run_encode(&run, payload);
    for (size_t i = MIG_RUN_HEADER_SIZE; i < length; i++)
        payload[i] = (uint8_t)(i * 7 + 1);
    migration_stream_put_frame(s, MIG_FRAME_MEMORY, payload, length);
    free(payload);
}

/* ---- item 1: the destination's frame deadline ------------------------------------------ */

/* The case: one byte per (stall timeout - 1 ms) never trips the
 * stall timeout; the frame's header must still arrive within 1000 ms of
 * its first byte. Bytes arrive at 999, 1998, 2997 ms: the third is late. */
Test(migration_liveness, a_frame_dribbled_one_byte_per_stall_timeout_is_refused)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    migration_stream_put_iteration(&s, 0, 256);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1, .step_ns = 999 * MS };
    receive_hello(&dst, &d, hello_bytes);
    struct mig_input input = dribble_input(&d);
    d.now_ns = 0;
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the dribbled frame was accepted");
    cr_assert_str_eq(dst.r.error, "frame 1: frame header too slow in pre-copy (iteration 0): 3 of 32 bytes in "
                                  "1998 ms (1 B/s); it had to arrive within 1000 ms (the longer of the 1000 ms "
                                  "stall timeout and its length at 262144 B/s)");
    cr_assert_eq(dst.r.error_code, MIG_ERR_STREAM);
    cr_assert_eq(d.calls, 1 + 3, "read on after the deadline: %" PRIu64 " calls", d.calls);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* The header in time (30 ms a byte), the payload not: the message names
 * the frame type and its length. Byte k arrives at 30k ms; the frame
 * started at 30 ms; byte 35 at 1050 ms is past 30 + 1000 ms. */
Test(migration_liveness, the_message_names_the_frame_the_phase_and_the_rate)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    migration_stream_put_iteration(&s, 0, 256);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1, .step_ns = 30 * MS };
    receive_hello(&dst, &d, hello_bytes);
    struct mig_input input = dribble_input(&d);
    d.now_ns = 0;
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the dribbled frame was accepted");
    cr_assert_str_eq(dst.r.error, "frame 1: iteration frame of 56 bytes too slow in pre-copy (iteration 0): 35 of "
                                  "56 bytes in 1020 ms (34 B/s); it had to arrive within 1000 ms (the longer of the "
                                  "1000 ms stall timeout and its length at 262144 B/s)");
    cr_assert_eq(dst.r.error_code, MIG_ERR_STREAM);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* Slow but within the stall timeout: 56 bytes at 10 ms each (550 ms). */
Test(migration_liveness, a_slow_small_frame_within_the_stall_timeout_is_accepted)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    migration_stream_put_iteration(&s, 0, 256);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1, .step_ns = 10 * MS };
    receive_hello(&dst, &d, hello_bytes);
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), MIG_FRAME_ITERATION, "%s", dst.r.error);
    cr_assert_eq(d.calls, 1 + 56);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* A 1 MiB frame may take its length at the floor (4000.24 ms), longer than
 * the stall timeout: at 300 KiB/s it passes (4096 bytes per 13.33 ms). */
Test(migration_liveness, a_large_frame_above_the_floor_rate_is_accepted)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    put_full_memory_frame(&s);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 4096,
                         .step_ns = 4096ull * 1000000000ull / (300u << 10) + 1 };
    receive_hello(&dst, &d, hello_bytes);
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), MIG_FRAME_MEMORY, "%s", dst.r.error);
    cr_assert_eq(d.position, s.length);
    cr_assert_eq(atomic_load(&dst.r.normal_pages), 256);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* Below the floor: 4096 bytes per 20 ms (200 KiB/s). The frame started at
 * 20 ms (first call), its deadline is 20 + 4000.24 ms; call 202 at 4040 ms
 * is the first past it, with 202 x 4096 bytes in. */
Test(migration_liveness, a_large_frame_below_the_floor_rate_is_refused)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    put_full_memory_frame(&s);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 4096, .step_ns = 20 * MS };
    receive_hello(&dst, &d, hello_bytes);
    struct mig_input input = dribble_input(&d);
    d.now_ns = 0;
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the slow frame was accepted");
    cr_assert_str_eq(dst.r.error, "frame 1: memory frame of 1048624 bytes too slow in pre-copy (iteration 0): "
                                  "827392 of 1048624 bytes in 4020 ms (205818 B/s); it had to arrive within 4000 ms "
                                  "(the longer of the 1000 ms stall timeout and its length at 262144 B/s)");
    cr_assert_eq(dst.r.error_code, MIG_ERR_STREAM);
    cr_assert_eq(d.calls, 1 + 202);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* Every phase has the deadline, and the message says which: the hello
 * itself (handshake) and a frame after the machine state
 * (stop-and-copy). */
Test(migration_liveness, the_handshake_and_stop_and_copy_have_the_deadline_too)
{
    struct migration_stream s = { 0 };
    put_hello(&s);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1, .step_ns = 999 * MS };
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the dribbled hello was accepted");
    cr_assert_str_eq(dst.r.error, "frame 0: frame header too slow in handshake: 3 of 32 bytes in 1998 ms (1 B/s); "
                                  "it had to arrive within 1000 ms (the longer of the 1000 ms stall timeout and its "
                                  "length at 262144 B/s)");
    destination_fini(&dst);
    migration_stream_free(&s);

    struct migration_stream t = { 0 };
    size_t hello_bytes = put_hello(&t);
    migration_stream_put_machine_state(&t, MIGRATION_STREAM_VCPUS, 0xa0);
    size_t through_vcpu = t.length;
    struct mig_device_state device = migration_stream_device_state();
    migration_stream_put_device_state(&t, &device);
    destination_init(&dst, 1000);
    d = (struct dribble){ .data = t.data, .length = t.length, .per_call = t.length, .step_ns = 0 };
    receive_hello(&dst, &d, hello_bytes);
    input = dribble_input(&d);
    d.per_call = through_vcpu - hello_bytes;
    cr_assert_eq(mig_receiver_next(&dst.r, &input), MIG_FRAME_MACHINE_STATE, "%s", dst.r.error);
    d.per_call = 16;
    d.step_ns = 400 * MS;
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the dribbled device state was accepted");
    cr_assert_str_eq(dst.r.error, "frame 2: device-state frame of 440 bytes too slow in stop-and-copy: 64 of 440 "
                                  "bytes in 1200 ms (53 B/s); it had to arrive within 1000 ms (the longer of the "
                                  "1000 ms stall timeout and its length at 262144 B/s)");
    destination_fini(&dst);
    migration_stream_free(&t);
}

/* Without mig_receiver_set_deadline (the buffer parser, the fuzzer) time
 * plays no part: the 999 ms dribble of the first test goes through. */
Test(migration_liveness, no_deadline_unless_set)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    migration_stream_put_iteration(&s, 0, 256);
    struct destination dst;
    destination_init(&dst, 0);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1, .step_ns = 999 * MS };
    receive_hello(&dst, &d, hello_bytes);
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), MIG_FRAME_ITERATION, "%s", dst.r.error);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* ---- item 2: shutdown while data keeps arriving ---------------------------------------- */

/* The peer always has data (4096 bytes a call, never EAGAIN); the flag is
 * set during call 5, in the middle of a 1 MiB data run. The receiver must
 * not call read_some again: with a socket kept full, this is what makes
 * SIGTERM count within one read (a recv of at most 1 MiB). */
Test(migration_liveness, shutdown_is_honoured_at_the_next_read_while_data_flows)
{
    struct migration_stream s = { 0 };
    put_hello(&s);
    put_full_memory_frame(&s);
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 4096, .endless = true, .stop_at_call = 5 };
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), MIG_FRAME_HELLO, "%s", dst.r.error);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the frame was received despite the shutdown");
    cr_assert_str_eq(dst.r.error, "frame 1: the destination VM is shutting down");
    cr_assert_eq(dst.r.error_code, MIG_ERR_CANCELLED);
    cr_assert_eq(d.calls, 5, "read_some called %" PRIu64 " times (the flag was set in call 5)", d.calls);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* Bytes already read ahead are no excuse: the flag is set in the call that
 * brings a whole frame of 128 ZERO runs into the staging buffer; the
 * parser stops at the first run header it would take from there. */
Test(migration_liveness, shutdown_is_honoured_between_staged_run_headers)
{
    struct migration_stream s = { 0 };
    size_t hello_bytes = put_hello(&s);
    uint8_t payload[128 * MIG_RUN_HEADER_SIZE];
    for (unsigned i = 0; i < 128; i++) {
        struct mig_run run = { .ram_offset = (uint64_t)i * 2 * MIG_PAGE_SIZE, .pages = 1, .flags = MIG_RUN_ZERO };
        mig_run_encode(&run, payload + i * MIG_RUN_HEADER_SIZE);
    }
    migration_stream_put_frame(&s, MIG_FRAME_MEMORY, payload, sizeof(payload));
    struct destination dst;
    destination_init(&dst, 1000);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1 << 20, .endless = true, .stop_at_call = 2 };
    receive_hello(&dst, &d, hello_bytes);
    d.per_call = 1 << 20;
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1, "the frame was parsed despite the shutdown");
    cr_assert_str_eq(dst.r.error, "frame 1: the destination VM is shutting down");
    cr_assert_eq(dst.r.error_code, MIG_ERR_CANCELLED);
    cr_assert_eq(d.calls, 2);
    cr_assert_eq(dst.r.work.runs, 0, "%" PRIu64 " run headers parsed after the flag", dst.r.work.runs);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* A flag already set: not one read. */
Test(migration_liveness, shutdown_before_the_first_read)
{
    struct migration_stream s = { 0 };
    put_hello(&s);
    struct destination dst;
    destination_init(&dst, 0);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 4096 };
    atomic_store(&d.stop, true);
    struct mig_input input = dribble_input(&d);
    cr_assert_eq(mig_receiver_next(&dst.r, &input), -1);
    cr_assert_str_eq(dst.r.error, "frame 0: the destination VM is shutting down");
    cr_assert_eq(d.calls, 0);
    destination_fini(&dst);
    migration_stream_free(&s);
}

/* ---- item 1: the source's hard deadline for the ACK ------------------------------------ */

/* ACK (32 + 56 bytes) followed by bytes that are not the source's to read. */
static size_t put_ack(struct migration_stream *s, uint64_t seq)
{
    struct mig_end ack = { .flags = 0, .timestamp_ns = 77, .pages = 256 };
    uint8_t payload[MIG_ACK_SIZE];
    mig_end_encode(&ack, payload);
    s->seq = seq;
    migration_stream_put_frame(s, MIG_FRAME_ACK, payload, sizeof(payload));
    size_t length = s->length;
    migration_stream_put(s, "extra", 5);
    return length;
}

#define ACK_DEADLINE (10000 * MS)

/* The destination trickles its ACK one byte per 999 ms (each byte well
 * inside any stall timeout): byte 11 at 10989 ms is past the 10 s
 * deadline and the wait ends there. */
Test(migration_liveness, an_ack_dribbled_past_the_deadline_is_late)
{
    struct migration_stream s = { 0 };
    put_ack(&s, 1);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 1, .step_ns = 999 * MS };
    struct mig_input input = dribble_input(&d);
    struct mig_frame_header header;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    size_t received = 99;
    char error[400] = "";
    int result = mig_read_reply(&input, 1, 0, ACK_DEADLINE, "destination", &header, reply, sizeof(reply), &received,
                                error, sizeof(error));
    cr_assert_eq(result, MIG_REPLY_LATE, "result %d: %s", result, error);
    cr_assert_str_eq(error, "no complete reply from the destination within 10000 ms: 11 of 32 bytes in 10989 ms "
                            "(1 B/s)");
    cr_assert_eq(received, 11);
    cr_assert_eq(d.calls, 11);
    migration_stream_free(&s);
}

/* Once the header is in, the message counts the whole frame. */
Test(migration_liveness, a_late_ack_payload_counts_the_whole_frame)
{
    struct migration_stream s = { 0 };
    put_ack(&s, 1);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 8, .step_ns = 2000 * MS };
    struct mig_input input = dribble_input(&d);
    struct mig_frame_header header;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    size_t received = 0;
    char error[400] = "";
    int result = mig_read_reply(&input, 1, 0, ACK_DEADLINE, "destination", &header, reply, sizeof(reply), &received,
                                error, sizeof(error));
    cr_assert_eq(result, MIG_REPLY_LATE, "result %d: %s", result, error);
    cr_assert_str_eq(error, "no complete reply from the destination within 10000 ms: 40 of 88 bytes in 10000 ms "
                            "(4 B/s)");
    cr_assert_eq(received, 40);
    migration_stream_free(&s);
}

/* Nothing at all: read_some gives up at the deadline (as the source's does)
 * and the result is MIG_REPLY_LATE with nothing received, which is the
 * case the source resolves with its "whole stream sent?" check. */
Test(migration_liveness, no_ack_at_all_is_late_with_nothing_received)
{
    struct dribble d = { .data = NULL, .length = 0, .per_call = 1, .step_ns = ACK_DEADLINE,
                         .fail_when_empty = true };
    struct mig_input input = dribble_input(&d);
    struct mig_frame_header header;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    size_t received = 99;
    char error[400] = "";
    int result = mig_read_reply(&input, 1, 0, ACK_DEADLINE, "destination", &header, reply, sizeof(reply), &received,
                                error, sizeof(error));
    cr_assert_eq(result, MIG_REPLY_LATE, "result %d: %s", result, error);
    cr_assert_str_eq(error, "no complete reply from the destination within 10000 ms: 0 of 32 bytes in 10000 ms "
                            "(0 B/s)");
    cr_assert_eq(received, 0);
}

/* A read error before the deadline stays a read error. */
Test(migration_liveness, a_read_error_before_the_deadline_is_reported_as_such)
{
    struct dribble d = { .data = NULL, .length = 0, .per_call = 1, .step_ns = 5 * MS, .fail_when_empty = true };
    struct mig_input input = dribble_input(&d);
    struct mig_frame_header header;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    size_t received = 99;
    char error[400] = "";
    int result = mig_read_reply(&input, 1, 0, ACK_DEADLINE, "destination", &header, reply, sizeof(reply), &received,
                                error, sizeof(error));
    cr_assert_eq(result, -1);
    cr_assert_str_eq(error, "timed out");
    cr_assert_eq(received, 0);
}

/* A prompt ACK: read whole, nothing past it. */
Test(migration_liveness, a_prompt_ack_is_read_and_nothing_after_it)
{
    struct migration_stream s = { 0 };
    size_t ack_bytes = put_ack(&s, 1);
    struct dribble d = { .data = s.data, .length = s.length, .per_call = 4096, .step_ns = 1 * MS };
    struct mig_input input = dribble_input(&d);
    struct mig_frame_header header;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    size_t received = 0;
    char error[400] = "";
    int result = mig_read_reply(&input, 1, 0, ACK_DEADLINE, "destination", &header, reply, sizeof(reply), &received,
                                error, sizeof(error));
    cr_assert_eq(result, 0, "%s", error);
    cr_assert_eq(header.type, MIG_FRAME_ACK);
    cr_assert_eq(header.length, MIG_ACK_SIZE);
    cr_assert_eq(received, ack_bytes);
    cr_assert_eq(d.position, ack_bytes, "read %zu bytes, past the reply", d.position);
    struct mig_end ack;
    char text[200];
    cr_assert_eq(mig_end_decode(reply, &ack, text, sizeof(text)), 0, "%s", text);
    cr_assert_eq(ack.timestamp_ns, 77);
    cr_assert_eq(ack.pages, 256);
    migration_stream_free(&s);
}

/* The peer closing before any byte: the message the fault matrix asserts
 * (docs/reliability.md, "destination SIGKILLed after the last byte"). */
Test(migration_liveness, a_closed_connection_keeps_its_message)
{
    struct dribble d = { .data = NULL, .length = 0, .per_call = 1, .step_ns = 1 * MS };
    struct mig_input input = dribble_input(&d);
    struct mig_frame_header header;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    size_t received = 99;
    char error[400] = "";
    int result = mig_read_reply(&input, 1, 0, ACK_DEADLINE, "destination", &header, reply, sizeof(reply), &received,
                                error, sizeof(error));
    cr_assert_eq(result, -1);
    cr_assert_str_eq(error, "destination closed the connection (truncated stream: 0 of 32 bytes)");
    cr_assert_eq(received, 0);
}
