/*
 * The migration wire format without sockets or VMs: encode a stream into a
 * buffer (tests/migration_stream.h), parse it with the receiver into guest
 * RAM between PROT_NONE guard pages (a write outside RAM crashes the test),
 * and check every validation error message exactly. The table of every
 * documented rejection rule is tests/test_migration_rejections.c.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/progress.h"
#include "migration/protocol.h"
#include "migration/receiver.h"
#include "migration/machine_state.h"
#include "migration/sender.h"
#include "migration/transport.h"
#include "tests/harness.h"
#include "tests/migration_stream.h"

#define RAM_BYTES MIGRATION_STREAM_RAM_BYTES     /* 256 pages */

static uint8_t *source_ram(void)
{
    uint8_t *ram = calloc(1, RAM_BYTES);
    for (unsigned p = 10; p < 20; p++)
        memset(ram + p * MIG_PAGE_SIZE, (int)p, MIG_PAGE_SIZE);
    ram[100 * MIG_PAGE_SIZE + 17] = 0x5a;
    return ram;
}

static void build_valid_stream(struct migration_stream *s, const uint8_t *ram)
{
    memset(s, 0, sizeof(*s));
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(s, &h);
    struct mig_iteration it = { .iteration = 0, .pages = 12 };
    uint8_t it_bytes[MIG_ITERATION_SIZE];
    mig_iteration_encode(&it, it_bytes);
    migration_stream_put_frame(s, MIG_FRAME_ITERATION, it_bytes, sizeof(it_bytes));
    /* 10..19 data, 20..21 zero, 100 data (a page with one byte set). */
    uint64_t pages[] = { 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 100 };
    migration_stream_put_pages(s, ram, pages, sizeof(pages) / sizeof(pages[0]));
    migration_stream_put_tail(s);
}

static int run(struct mig_receiver *r, uint8_t *target, const struct migration_stream *s, size_t length)
{
    struct mig_hello h = migration_stream_hello();
    cr_assert_eq(mig_receiver_init(r, target, RAM_BYTES, &h), 0);
    return mig_receiver_run_buffer(r, s->data, length);
}

Test(migration_protocol, a_valid_stream_reproduces_the_pages_and_states)
{
    uint8_t *ram = source_ram();
    struct migration_stream s;
    build_valid_stream(&s, ram);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), 0, "%s", r.error);
    cr_assert_eq(memcmp(ram, target, RAM_BYTES), 0, "RAM differs after the stream");
    cr_assert_eq(atomic_load(&r.normal_pages), 11);
    cr_assert_eq(atomic_load(&r.zero_pages), 2);
    cr_assert_eq(atomic_load(&r.bytes_received), s.length);
    cr_assert(r.got_end);
    cr_assert_eq(r.device.serial_lcr, 3);
    cr_assert_eq(r.device.last_exception_vector, -1);
    cr_assert_eq(r.device.guest_phase[1], 2);
    const struct machine_state *state = mig_receiver_machine_state(&r);
    cr_assert_not_null(state);
    cr_assert_eq(state->vcpu_count, 2);
    cr_assert_eq(state->vcpus[1].regs.rip, MIGRATION_STREAM_STATE_RIP(0xa0, 1));
    cr_assert_eq(r.end.timestamp_ns, 123);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    free(ram);
    migration_stream_free(&s);
}

Test(migration_protocol, a_zero_run_clears_a_page_written_earlier)
{
    uint8_t *ram = source_ram();
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    uint64_t page = 12;
    migration_stream_put_pages(&s, ram, &page, 1);             /* iteration 0: data */
    memset(ram + 12 * MIG_PAGE_SIZE, 0, MIG_PAGE_SIZE);
    migration_stream_put_pages(&s, ram, &page, 1);             /* later: the page became zero */
    migration_stream_put_tail(&s);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), 0, "%s", r.error);
    cr_assert(mig_page_is_zero(target + 12 * MIG_PAGE_SIZE), "the zero run did not clear the page");
    cr_assert_eq(atomic_load(&r.normal_pages), 1);
    cr_assert_eq(atomic_load(&r.zero_pages), 1);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    free(ram);
    migration_stream_free(&s);
}

Test(migration_protocol, builder_merges_runs_and_flags_zero_pages)
{
    uint8_t *ram = source_ram();
    struct mig_buffer buffer = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    struct mig_frame_builder b;
    mig_builder_begin(&b, &buffer);
    uint64_t pages[] = { 10, 11, 12, 20, 21, 30 };
    for (size_t i = 0; i < 6; i++)
        mig_builder_add_page(&b, pages[i] * MIG_PAGE_SIZE, ram + pages[i] * MIG_PAGE_SIZE);
    mig_builder_add_zero(&b, 40 * MIG_PAGE_SIZE, 5);
    mig_builder_finish(&b, 7);
    /* Runs: data 10..12, zero 20..21, zero 30, zero 40..44 = 4 run headers,
     * 3 data pages. */
    cr_assert_eq(buffer.length, MIG_HEADER_SIZE + 4 * MIG_RUN_HEADER_SIZE + 3 * MIG_PAGE_SIZE);
    cr_assert_eq(b.pages, 11);
    cr_assert_eq(b.zero_pages, 8);
    cr_assert_eq(b.normal_pages, 3);
    struct mig_frame_header h;
    char error[256];
    cr_assert_eq(mig_header_decode(buffer.data, 7, &h, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(h.type, MIG_FRAME_MEMORY);
    cr_assert_eq(h.length, 4 * MIG_RUN_HEADER_SIZE + 3 * MIG_PAGE_SIZE);
    cr_assert_eq(h.checksum, mig_frame_checksum(buffer.data, buffer.data + MIG_HEADER_SIZE, h.length));
    struct mig_run run;
    mig_run_decode(buffer.data + MIG_HEADER_SIZE, &run);
    cr_assert_eq(run.ram_offset, 10 * MIG_PAGE_SIZE);
    cr_assert_eq(run.pages, 3);
    cr_assert_eq(run.flags, 0);
    mig_run_decode(buffer.data + MIG_HEADER_SIZE + MIG_RUN_HEADER_SIZE + 3 * MIG_PAGE_SIZE, &run);
    cr_assert_eq(run.ram_offset, 20 * MIG_PAGE_SIZE);
    cr_assert_eq(run.pages, 2);
    cr_assert_eq(run.flags, MIG_RUN_ZERO);
    free(buffer.data);
    free(ram);
}

/* The migration thread closes a frame, the sender thread fills it later:
 * the frame carries RAM as it is at fill time, under a checksum of exactly
 * those bytes (a page the guest rewrote in between is dirty and re-sent). */
Test(migration_protocol, a_frame_filled_after_the_page_changed_carries_the_new_bytes)
{
    uint8_t *ram = source_ram();
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    struct mig_buffer buffer = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    struct mig_frame_builder b;
    mig_builder_begin(&b, &buffer);
    for (uint64_t page = 10; page < 13; page++)
        mig_builder_add_page(&b, page * MIG_PAGE_SIZE, ram + page * MIG_PAGE_SIZE);
    mig_builder_close(&b, s.seq++);
    cr_assert(buffer.unfilled);
    cr_assert_eq(buffer.copy_count, 1);
    cr_assert_eq(buffer.copies[0].pages, 3);
    memset(ram + 11 * MIG_PAGE_SIZE, 0x77, MIG_PAGE_SIZE);
    mig_buffer_fill(&buffer);
    cr_assert_not(buffer.unfilled);
    cr_assert_eq(mig_get_u64(buffer.data + 24),
                 mig_frame_checksum(buffer.data, buffer.data + MIG_HEADER_SIZE, buffer.length - MIG_HEADER_SIZE));
    migration_stream_put(&s, buffer.data, buffer.length);
    migration_stream_put_tail(&s);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), 0, "%s", r.error);
    cr_assert_eq(target[11 * MIG_PAGE_SIZE], 0x77);
    cr_assert_eq(target[11 * MIG_PAGE_SIZE + MIG_PAGE_SIZE - 1], 0x77);
    cr_assert_eq(memcmp(target + 10 * MIG_PAGE_SIZE, ram + 10 * MIG_PAGE_SIZE, 3 * MIG_PAGE_SIZE), 0);
    cr_assert_eq(atomic_load(&r.normal_pages), 3);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    free(buffer.data);
    free(ram);
    migration_stream_free(&s);
}

/* Close + fill builds byte for byte the frame finish builds, for a frame
 * mixing data runs, zero runs and memfd-hole runs. */
Test(migration_protocol, close_then_fill_equals_finish)
{
    uint8_t *ram = source_ram();
    struct mig_buffer one = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    struct mig_buffer two = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    uint64_t pages[] = { 10, 11, 20, 12, 13, 100, 101, 19 };
    struct mig_frame_builder b;
    mig_builder_begin(&b, &one);
    for (size_t i = 0; i < 8; i++)
        mig_builder_add_page(&b, pages[i] * MIG_PAGE_SIZE, ram + pages[i] * MIG_PAGE_SIZE);
    mig_builder_add_zero(&b, 200 * MIG_PAGE_SIZE, 7);
    mig_builder_finish(&b, 5);
    mig_builder_begin(&b, &two);
    for (size_t i = 0; i < 8; i++)
        mig_builder_add_page(&b, pages[i] * MIG_PAGE_SIZE, ram + pages[i] * MIG_PAGE_SIZE);
    mig_builder_add_zero(&b, 200 * MIG_PAGE_SIZE, 7);
    mig_builder_close(&b, 5);
    /* Data runs: 10-11, 12-13, 100, 19 (20 and 101 are zero pages). */
    cr_assert_eq(two.copy_count, 4);
    mig_buffer_fill(&two);
    cr_assert_eq(one.length, two.length);
    cr_assert_eq(one.length, MIG_HEADER_SIZE + 7 * MIG_RUN_HEADER_SIZE + 6 * MIG_PAGE_SIZE);
    cr_assert_eq(memcmp(one.data, two.data, one.length), 0);
    free(one.data);
    free(two.data);
    free(ram);
}

/* Post-copy's stream leaves out, when it fills a frame, pages pc-serve
 * sent first (migration/postcopy_source.h): the test's withdrawn set. */
struct withdrawn_set {
    const uint64_t *pages;
    size_t count;
    unsigned asked;
};

static bool in_withdrawn_set(uint64_t page, void *opaque)
{
    struct withdrawn_set *set = opaque;
    set->asked++;
    for (size_t i = 0; i < set->count; i++)
        if (set->pages[i] == page)
            return true;
    return false;
}

/* A memory frame planned after a small frame in the same buffer: data
 * 10..19, zero 20..21, data 100, zero 200..206. */
static void plan_mixed_frame(struct mig_buffer *buffer, const uint8_t *ram, uint64_t seq)
{
    struct mig_iteration it = { .iteration = 0, .pages = 19 };
    uint8_t it_bytes[MIG_ITERATION_SIZE];
    mig_iteration_encode(&it, it_bytes);
    cr_assert(mig_buffer_append_frame(buffer, MIG_FRAME_ITERATION, seq, it_bytes, sizeof(it_bytes)));
    struct mig_frame_builder b;
    mig_builder_begin(&b, buffer);
    for (uint64_t page = 10; page < 22; page++)
        mig_builder_add_page(&b, page * MIG_PAGE_SIZE, ram + page * MIG_PAGE_SIZE);
    mig_builder_add_page(&b, 100 * MIG_PAGE_SIZE, ram + 100 * MIG_PAGE_SIZE);
    mig_builder_add_zero(&b, 200 * MIG_PAGE_SIZE, 7);
    mig_builder_close(&b, seq + 1);
    cr_assert_eq(buffer->copy_count, 2, "data runs 10..19 and 100");
}

/* Withdrawn pages leave the frame: the run 10..19 splits around 12, 13,
 * 15 and 19, the run of page 100 goes, the zero runs stay; the header's
 * length and checksum cover what is left, and the receiver takes it. */
Test(migration_protocol, withdrawn_pages_leave_the_frame_and_the_receiver_takes_what_is_left)
{
    uint8_t *ram = source_ram();
    ram[100 * MIG_PAGE_SIZE + 17] = 0x5a;
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    struct mig_buffer buffer = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    plan_mixed_frame(&buffer, ram, s.seq);
    size_t memory_frame = buffer.frame_start;
    cr_assert_eq(memory_frame, MIG_HEADER_SIZE + MIG_ITERATION_SIZE);
    static const uint64_t gone[] = { 12, 13, 15, 19, 100 };
    struct withdrawn_set set = { .pages = gone, .count = 5 };
    cr_assert_eq(mig_buffer_fill_withdrawing(&buffer, in_withdrawn_set, &set), 5);
    cr_assert_eq(set.asked, 11, "each planned data page is asked once, zero runs never");
    /* Runs: 10-11, 14, 16-18, zero 20-21, zero 200-206. */
    uint64_t payload = 5 * MIG_RUN_HEADER_SIZE + 6 * MIG_PAGE_SIZE;
    cr_assert_eq(buffer.length, memory_frame + MIG_HEADER_SIZE + payload);
    struct mig_frame_header header;
    char error[256];
    cr_assert_eq(mig_header_decode(buffer.data + memory_frame, s.seq + 1, &header, error, sizeof(error)), 0, "%s",
                 error);
    cr_assert_eq(header.length, payload);
    cr_assert_eq(header.checksum,
                 mig_frame_checksum(buffer.data + memory_frame, buffer.data + memory_frame + MIG_HEADER_SIZE, payload));
    static const struct { uint64_t page; uint32_t pages; uint32_t flags; } want[] = {
        { 10, 2, 0 }, { 14, 1, 0 }, { 16, 3, 0 }, { 20, 2, MIG_RUN_ZERO }, { 200, 7, MIG_RUN_ZERO },
    };
    size_t at = memory_frame + MIG_HEADER_SIZE;
    for (size_t i = 0; i < 5; i++) {
        struct mig_run run;
        mig_run_decode(buffer.data + at, &run);
        cr_assert_eq(run.ram_offset, want[i].page * MIG_PAGE_SIZE, "run %zu", i);
        cr_assert_eq(run.pages, want[i].pages, "run %zu", i);
        cr_assert_eq(run.flags, want[i].flags, "run %zu", i);
        at += MIG_RUN_HEADER_SIZE + (run.flags & MIG_RUN_ZERO ? 0 : (size_t)run.pages * MIG_PAGE_SIZE);
    }
    cr_assert_eq(at, buffer.length);
    s.seq += 2;
    migration_stream_put(&s, buffer.data, buffer.length);
    migration_stream_put_tail(&s);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), 0, "%s", r.error);
    for (uint64_t page = 10; page < 20; page++) {
        bool kept = page != 12 && page != 13 && page != 15 && page != 19;
        if (kept)
            cr_assert_eq(memcmp(target + page * MIG_PAGE_SIZE, ram + page * MIG_PAGE_SIZE, MIG_PAGE_SIZE), 0,
                         "page %lu", (unsigned long)page);
        else
            cr_assert(mig_page_is_zero(target + page * MIG_PAGE_SIZE), "withdrawn page %lu arrived",
                      (unsigned long)page);
    }
    cr_assert(mig_page_is_zero(target + 100 * MIG_PAGE_SIZE), "withdrawn page 100 arrived");
    cr_assert_eq(atomic_load(&r.normal_pages), 6);
    cr_assert_eq(atomic_load(&r.zero_pages), 9);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    free(buffer.data);
    free(ram);
    migration_stream_free(&s);
}

/* A memory frame has at least one run: with every data page withdrawn
 * (and no zero run) its first page goes anyway. */
Test(migration_protocol, a_frame_whose_every_page_is_withdrawn_keeps_its_first_page)
{
    uint8_t *ram = source_ram();
    struct mig_buffer buffer = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    struct mig_frame_builder b;
    mig_builder_begin(&b, &buffer);
    for (uint64_t page = 14; page < 18; page++)
        mig_builder_add_page(&b, page * MIG_PAGE_SIZE, ram + page * MIG_PAGE_SIZE);
    mig_builder_close(&b, 3);
    static const uint64_t gone[] = { 14, 15, 16, 17 };
    struct withdrawn_set set = { .pages = gone, .count = 4 };
    cr_assert_eq(mig_buffer_fill_withdrawing(&buffer, in_withdrawn_set, &set), 3);
    cr_assert_eq(buffer.length, MIG_HEADER_SIZE + MIG_RUN_HEADER_SIZE + MIG_PAGE_SIZE);
    struct mig_frame_header header;
    char error[256];
    cr_assert_eq(mig_header_decode(buffer.data, 3, &header, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(header.checksum, mig_frame_checksum(buffer.data, buffer.data + MIG_HEADER_SIZE, header.length));
    struct mig_run run;
    mig_run_decode(buffer.data + MIG_HEADER_SIZE, &run);
    cr_assert_eq(run.ram_offset, 14 * MIG_PAGE_SIZE);
    cr_assert_eq(run.pages, 1);
    cr_assert_eq(memcmp(buffer.data + MIG_HEADER_SIZE + MIG_RUN_HEADER_SIZE, ram + 14 * MIG_PAGE_SIZE, MIG_PAGE_SIZE),
                 0);
    free(buffer.data);
    free(ram);
}

/* Nothing withdrawn: byte for byte the frame plain fill builds. */
Test(migration_protocol, withdrawing_nothing_fills_the_frame_plain_fill_fills)
{
    uint8_t *ram = source_ram();
    struct mig_buffer one = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    struct mig_buffer two = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    plan_mixed_frame(&one, ram, 1);
    plan_mixed_frame(&two, ram, 1);
    mig_buffer_fill(&one);
    struct withdrawn_set set = { .pages = NULL, .count = 0 };
    cr_assert_eq(mig_buffer_fill_withdrawing(&two, in_withdrawn_set, &set), 0);
    cr_assert_eq(set.asked, 11);
    cr_assert_eq(one.length, two.length);
    cr_assert_eq(memcmp(one.data, two.data, one.length), 0);
    free(one.data);
    free(two.data);
    free(ram);
}

/* The frame of the valid stream that byte offset `at` belongs to. */
static size_t frame_of(const struct migration_stream *s, size_t at)
{
    size_t k = 0;
    while (k + 1 < s->frame_count && s->frame_start[k + 1] <= at)
        k++;
    return k;
}

static void expect_cut(const struct migration_stream *s, uint8_t *target, size_t cut, const char *expected)
{
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, s, cut), -1, "a stream cut at %zu bytes was accepted", cut);
    cr_assert_str_eq(r.error, expected, "cut at %zu bytes", cut);
    cr_assert_eq(r.error_code, MIG_ERR_STREAM, "cut at %zu bytes", cut);
    mig_receiver_destroy(&r);
}

/* A stream cut anywhere is rejected as truncated, naming the frame it was
 * cut in: at every frame boundary, at every byte inside every frame header
 * and every run header, and at every 61st byte of the payloads (the page
 * data). Nothing is written outside RAM (guard pages). */
Test(migration_protocol, every_truncation_is_rejected)
{
    uint8_t *ram = source_ram();
    struct migration_stream s;
    build_valid_stream(&s, ram);
    /* hello, iteration, memory, machine-state, device-state, end */
    cr_assert_eq(s.frame_count, 6);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    char expected[200];
    unsigned cuts = 0;
    for (size_t k = 0; k < s.frame_count; k++) {
        size_t start = s.frame_start[k];
        size_t end = k + 1 < s.frame_count ? s.frame_start[k + 1] : s.length;
        /* At the boundary: nothing of frame k arrived. */
        snprintf(expected, sizeof(expected), "frame %zu: stream ended before the end frame (truncated)", k);
        expect_cut(&s, target, start, expected);
        cuts++;
        /* Inside the 32-byte header. */
        for (size_t inside = 1; inside < MIG_HEADER_SIZE; inside++) {
            snprintf(expected, sizeof(expected),
                     "frame %zu: the source closed the connection (truncated stream): needed %u more bytes, got %zu", k,
                     MIG_HEADER_SIZE, inside);
            expect_cut(&s, target, start + inside, expected);
            cuts++;
        }
        /* Inside the payload. */
        uint32_t type = mig_get_u32(s.data + start);
        if (type == MIG_FRAME_MEMORY) {
            /* Every byte of every run header, a stride through the data. */
            size_t at = start + MIG_HEADER_SIZE;
            while (at < end) {
                for (size_t inside = 0; inside < MIG_RUN_HEADER_SIZE; inside++) {
                    snprintf(expected, sizeof(expected),
                             "frame %zu: the source closed the connection (truncated stream): needed %u more bytes, "
                             "got %zu", k, MIG_RUN_HEADER_SIZE, inside);
                    expect_cut(&s, target, at + inside, expected);
                    cuts++;
                }
                struct mig_run run_header;
                mig_run_decode(s.data + at, &run_header);
                size_t data = run_header.flags & MIG_RUN_ZERO ? 0 : (size_t)run_header.pages * MIG_PAGE_SIZE;
                for (size_t inside = 0; inside < data; inside += 61) {
                    snprintf(expected, sizeof(expected),
                             "frame %zu: the source closed the connection (truncated stream): needed %zu more bytes, "
                             "got %zu", k, data, inside);
                    expect_cut(&s, target, at + MIG_RUN_HEADER_SIZE + inside, expected);
                    cuts++;
                }
                at += MIG_RUN_HEADER_SIZE + data;
            }
            cr_assert_eq(at, end, "runs do not end at the frame end");
        } else {
            for (size_t at = start + MIG_HEADER_SIZE; at < end; at++) {
                struct mig_receiver r;
                cr_assert_eq(run(&r, target, &s, at), -1, "a stream cut at %zu bytes was accepted", at);
                snprintf(expected, sizeof(expected),
                         "frame %zu: the source closed the connection (truncated stream): needed ", k);
                cr_assert(strncmp(r.error, expected, strlen(expected)) == 0, "cut at %zu: %s", at, r.error);
                mig_receiver_destroy(&r);
                cuts++;
            }
        }
    }
    cr_assert_geq(cuts, 6 * 32 + 3 * 16, "only %u cuts", cuts);
    /* Uncut, the same stream is accepted. */
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), 0, "%s", r.error);
    mig_receiver_destroy(&r);
    /* Two exact messages at known places. */
    expect_cut(&s, target, 0, "frame 0: stream ended before the end frame (truncated)");
    expect_cut(&s, target, 40,
               "frame 0: the source closed the connection (truncated stream): needed 104 more bytes, got 8");
    cr_assert_eq(frame_of(&s, s.length - 1), 5);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    free(ram);
    migration_stream_free(&s);
}

/* A flipped byte anywhere in a frame fails its checksum (or a stricter
 * check before it): every byte of every frame header, every 97th byte of
 * the rest; never a crash, never a write outside RAM (guard pages). */
Test(migration_protocol, corrupted_bytes_are_rejected)
{
    uint8_t *ram = source_ram();
    struct migration_stream s;
    build_valid_stream(&s, ram);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    unsigned flips = 0;
    for (size_t at = 0; at < s.length; at++) {
        size_t k = frame_of(&s, at);
        bool in_header = at - s.frame_start[k] < MIG_HEADER_SIZE;
        if (!in_header && at % 97 != 0)
            continue;
        s.data[at] ^= 0x40;
        struct mig_receiver r;
        cr_assert_eq(run(&r, target, &s, s.length), -1, "corruption at byte %zu accepted", at);
        cr_assert_neq(r.error[0], '\0');
        mig_receiver_destroy(&r);
        s.data[at] ^= 0x40;
        flips++;
    }
    cr_assert_geq(flips, 7 * 32, "only %u flips", flips);
    /* The exact message for a data byte. */
    size_t data_byte = MIG_HEADER_SIZE + MIG_HELLO_SIZE + MIG_HEADER_SIZE + MIG_ITERATION_SIZE + MIG_HEADER_SIZE +
                       MIG_RUN_HEADER_SIZE + 5;
    s.data[data_byte] ^= 1;
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), -1);
    cr_assert(strncmp(r.error, "frame 2: memory frame checksum mismatch (got 0x", 47) == 0, "%s", r.error);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    free(ram);
    migration_stream_free(&s);
}

static void expect_error(const struct migration_stream *s, const char *expected)
{
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, s, s->length), -1, "accepted; expected: %s", expected);
    cr_assert_str_eq(r.error, expected);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
}

Test(migration_protocol, memory_run_outside_guest_ram)
{
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    uint8_t payload[MIG_RUN_HEADER_SIZE + 2 * MIG_PAGE_SIZE] = { 0 };
    struct mig_run run = { .ram_offset = RAM_BYTES - MIG_PAGE_SIZE, .pages = 2 };
    mig_run_encode(&run, payload);
    migration_stream_put_frame(&s, MIG_FRAME_MEMORY, payload, sizeof(payload));
    expect_error(&s, "frame 1: memory run at offset 0xff000 + 8192 exceeds guest RAM (1048576 bytes)");
    migration_stream_free(&s);
}

Test(migration_protocol, huge_offset_does_not_wrap)
{
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    uint8_t payload[MIG_RUN_HEADER_SIZE];
    struct mig_run run = { .ram_offset = UINT64_MAX - MIG_PAGE_SIZE + 1, .pages = 1, .flags = MIG_RUN_ZERO };
    mig_run_encode(&run, payload);
    migration_stream_put_frame(&s, MIG_FRAME_MEMORY, payload, sizeof(payload));
    expect_error(&s, "frame 1: memory run at offset 0xfffffffffffff000 + 4096 exceeds guest RAM (1048576 bytes)");
    migration_stream_free(&s);
}

Test(migration_protocol, frame_length_2_pow_63_rejected_before_allocation)
{
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    uint8_t header[MIG_HEADER_SIZE];
    mig_header_encode(header, MIG_FRAME_MEMORY, 1, 1ull << 63);
    mig_header_seal(header, NULL, 0);
    migration_stream_put(&s, header, sizeof(header));
    expect_error(&s, "frame 1: memory frame length 9223372036854775808 out of bounds [16, 67108864]");
    migration_stream_free(&s);
}

Test(migration_protocol, unknown_type_flags_and_sequence)
{
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    migration_stream_put_frame(&s, 77, NULL, 0);
    expect_error(&s, "frame 1: unknown frame type 77");
    migration_stream_free(&s);

    memset(&s, 0, sizeof(s));
    migration_stream_put_hello(&s, &h);
    s.seq = 5;
    uint8_t it[MIG_ITERATION_SIZE] = { 0 };
    migration_stream_put_frame(&s, MIG_FRAME_ITERATION, it, sizeof(it));
    expect_error(&s, "frame 1: sequence number 5 (frames lost or reordered)");
    migration_stream_free(&s);

    memset(&s, 0, sizeof(s));
    migration_stream_put_hello(&s, &h);
    uint8_t header[MIG_HEADER_SIZE + MIG_ITERATION_SIZE] = { 0 };
    mig_header_encode(header, MIG_FRAME_ITERATION, 1, MIG_ITERATION_SIZE);
    mig_put_u32(header + 4, 2);
    mig_header_seal(header, header + MIG_HEADER_SIZE, MIG_ITERATION_SIZE);
    migration_stream_put(&s, header, sizeof(header));
    expect_error(&s, "frame 1: iteration frame has unknown flags 0x2");
    migration_stream_free(&s);
}

Test(migration_protocol, frames_in_the_wrong_place)
{
    struct migration_stream s = { 0 };
    uint8_t it[MIG_ITERATION_SIZE] = { 0 };
    migration_stream_put_frame(&s, MIG_FRAME_ITERATION, it, sizeof(it));
    expect_error(&s, "frame 0: iteration frame before the hello");
    migration_stream_free(&s);

    memset(&s, 0, sizeof(s));
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    uint8_t ack[MIG_ACK_SIZE] = { 0 };
    migration_stream_put_frame(&s, MIG_FRAME_ACK, ack, sizeof(ack));
    expect_error(&s, "frame 1: unexpected ack frame from the source");
    migration_stream_free(&s);

    memset(&s, 0, sizeof(s));
    migration_stream_put_hello(&s, &h);
    struct mig_end end = { 0 };
    uint8_t end_bytes[MIG_END_SIZE];
    mig_end_encode(&end, end_bytes);
    migration_stream_put_frame(&s, MIG_FRAME_END, end_bytes, sizeof(end_bytes));
    expect_error(&s, "frame 1: end frame but no machine state");
    migration_stream_free(&s);

    /* A machine state for another vCPU count; a retired vcpu-state frame */
    memset(&s, 0, sizeof(s));
    migration_stream_put_hello(&s, &h);
    migration_stream_put_machine_state(&s, 3, 0);
    expect_error(&s, "frame 1: machine state for 3 vCPUs (this VM has 2)");
    migration_stream_free(&s);

    memset(&s, 0, sizeof(s));
    migration_stream_put_hello(&s, &h);
    uint8_t state[72] = { 0 };
    migration_stream_put_frame(&s, MIG_FRAME_RETIRED_VCPU_STATE, state, sizeof(state));
    expect_error(&s, "frame 1: vcpu-state frame (type 5): retired with state format 1, vCPU state travels in the "
                     "machine-state frame");
    migration_stream_free(&s);
}

Test(migration_protocol, config_mismatch_messages)
{
    struct mig_hello local = migration_stream_hello(), peer = migration_stream_hello();
    char error[256];
    peer.memory_bytes = 2 * RAM_BYTES;
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "memory size differs: source 2 MiB, destination 1 MiB");
    cr_assert_eq(mig_hello_compare(&local, &peer, true, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "memory size differs: source 1 MiB, destination 2 MiB");
    peer = migration_stream_hello();
    peer.vcpu_count = 4;
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "vCPU count differs: source 4, destination 2");
    peer = migration_stream_hello();
    peer.version = MIG_PROTOCOL_VERSION + 1;
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "protocol version differs: source 3, destination 2");
    peer = migration_stream_hello();
    peer.page_size = 65536;
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "page size differs: source 65536, destination 4096");
    peer = migration_stream_hello();
    peer.state_format = 1;
    peer.legacy_state_size = 8952;      /* what a format-1 ringvm sends */
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "state format differs: source 1, destination 2 (1: a vcpu-state frame per vCPU, ringvm "
                            "before 2026-12; 2: one machine-state frame)");
    peer = migration_stream_hello();
    peer.legacy_state_size = 99;
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "the source's hello gives a vCPU state size (99 bytes) with state format 2 (must be 0)");
    peer = migration_stream_hello();
    peer.features |= 0x100;
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "source asks for unknown features 0x100");
    peer = migration_stream_hello();
    cr_assert_eq(mig_hello_compare(&local, &peer, false, error, sizeof(error)), 0);

    /* Through the parser: the hello is refused with the same text. */
    struct migration_stream s = { 0 };
    peer.memory_bytes = 2 * RAM_BYTES;
    migration_stream_put_hello(&s, &peer);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), -1);
    cr_assert_eq(r.error_code, MIG_ERR_CONFIG);
    cr_assert_str_eq(r.error, "configuration mismatch: memory size differs: source 2 MiB, destination 1 MiB");
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    migration_stream_free(&s);

    memset(&s, 0, sizeof(s));
    uint8_t bad[MIG_HELLO_SIZE];
    peer = migration_stream_hello();
    mig_hello_encode(&peer, bad);
    bad[0] = 'X';
    migration_stream_put_frame(&s, MIG_FRAME_HELLO, bad, sizeof(bad));
    expect_error(&s, "frame 0: not a ringvm migration stream (bad magic)");
    migration_stream_free(&s);
}

Test(migration_protocol, error_frame_from_the_source)
{
    struct migration_stream s = { 0 };
    struct mig_hello h = migration_stream_hello();
    migration_stream_put_hello(&s, &h);
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(MIG_ERR_CANCELLED, "cancelled by migration.cancel\x01", payload);
    migration_stream_put_frame(&s, MIG_FRAME_ERROR, payload, length);
    uint8_t *target = migration_stream_guarded_ram(RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(run(&r, target, &s, s.length), -1);
    cr_assert(r.peer_error);
    cr_assert_eq(r.error_code, MIG_ERR_CANCELLED);
    cr_assert_str_eq(r.error, "the source aborted the migration: cancelled by migration.cancel?");
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, RAM_BYTES);
    migration_stream_free(&s);
}

Test(migration_protocol, addresses)
{
    struct mig_address a;
    char error[256];
    cr_assert_eq(mig_address_parse("unix:/tmp/x.sock", &a, error, sizeof(error)), 0);
    cr_assert_eq(a.kind, MIG_ADDRESS_UNIX);
    cr_assert_str_eq(a.path, "/tmp/x.sock");
    cr_assert_eq(mig_address_parse("tcp:localhost:4444", &a, error, sizeof(error)), 0);
    cr_assert_eq(a.kind, MIG_ADDRESS_TCP);
    cr_assert_str_eq(a.host, "localhost");
    cr_assert_str_eq(a.port, "4444");
    cr_assert_eq(mig_address_parse("tcp:[::1]:5", &a, error, sizeof(error)), 0);
    cr_assert_str_eq(a.host, "::1");
    cr_assert_eq(mig_address_parse("tcp:host:0", &a, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'tcp:host:0': port must be 1..65535");
    cr_assert_eq(mig_address_parse("tcp:host", &a, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'tcp:host': expected tcp:HOST:PORT");
    cr_assert_eq(mig_address_parse("unix:", &a, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'unix:': empty socket path");
    cr_assert_eq(mig_address_parse("file:/x", &a, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'file:/x': unknown transport (expected unix:PATH or tcp:HOST:PORT)");
}

Test(migration_protocol, iteration_log_line_format)
{
    struct mig_iteration_record r = {
        .iteration = 3, .dur_ms = 23319, .overhead_ms = 0, .throttle = 10, .size_bytes = 9245ull << 20,
        .dirty_rate_pps = 2281225, .bandwidth_mibs = 396.42, .expected_downtime_ms = 32010,
    };
    char line[256];
    mig_iteration_format(&r, line, sizeof(line));
    cr_assert_str_eq(line, "iter=3,dur=23319ms,overhead=0ms,throttle=10%,size=9245MiB,dirtyrate=2281225pps,"
                           "bandwidth=396.42MiBs,downtime(expected)=32010ms");
}

Test(migration_protocol, device_state_carries_the_workload_and_rejects_unterminated_text)
{
    struct mig_device_state d, back;
    memset(&d, 0, sizeof(d));
    d.version = 2;
    d.vcpu_count = 1;
    d.last_exception_vector = -1;
    snprintf(d.workload, sizeof(d.workload), "dirtier,wss=64M,pattern=hot,rate=0,write=8");
    uint8_t bytes[MIG_DEVICE_STATE_SIZE];
    mig_device_state_encode(&d, bytes);
    char error[200] = "";
    cr_assert_eq(mig_device_state_decode(bytes, &back, error, sizeof(error)), 0, "%s", error);
    cr_assert_str_eq(back.workload, "dirtier,wss=64M,pattern=hot,rate=0,write=8");
    memset(bytes + MIG_DEVICE_STATE_SIZE - MIG_WORKLOAD_TEXT_SIZE, 'x', MIG_WORKLOAD_TEXT_SIZE);
    cr_assert_eq(mig_device_state_decode(bytes, &back, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "device state: workload text is not NUL-terminated");
    mig_put_u32(bytes, 1);
    cr_assert_eq(mig_device_state_decode(bytes, &back, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "device state version 1 (expected 2)");
}

/* ---- frames larger than one send buffer (a machine state of many vCPUs) ---- */

struct socket_reader {
    int fd;
    pthread_t thread;
    uint8_t *bytes;
    size_t length, capacity;
};

/* Reads fd to EOF into bytes (the test's other end of the socketpair). */
static void *socket_reader_main(void *argument)
{
    struct socket_reader *r = argument;
    for (;;) {
        if (r->capacity - r->length < 65536) {
            r->capacity = r->capacity * 2 + 65536;
            r->bytes = realloc(r->bytes, r->capacity);
            if (r->bytes == NULL)
                return NULL;
        }
        ssize_t got = read(r->fd, r->bytes + r->length, r->capacity - r->length);
        if (got <= 0)
            return NULL;
        r->length += (size_t)got;
    }
}

struct large_frame_run {
    int fds[2];
    struct mig_sender sender;
    struct socket_reader reader;
    _Atomic bool cancel;
    uint8_t *payload;
    size_t payload_length;
    uint8_t *expected;          /* the frame as mig_frame_encode makes it */
};

static void large_frame_start(struct large_frame_run *run, uint64_t max_bandwidth)
{
    memset(run, 0, sizeof(*run));
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, run->fds), 0);
    run->reader.fd = run->fds[1];
    cr_assert_eq(pthread_create(&run->reader.thread, NULL, socket_reader_main, &run->reader), 0);
    char error[256];
    cr_assert_eq(mig_sender_start(&run->sender, run->fds[0], NULL, max_bandwidth, 5000, &run->cancel, error,
                                  sizeof(error)), 0, "%s", error);
    /* 3.5 send buffers of payload: four parts. */
    run->payload_length = 3 * MIG_SEND_BUFFER_BYTES + MIG_SEND_BUFFER_BYTES / 2;
    run->payload = malloc(run->payload_length);
    run->expected = malloc(MIG_HEADER_SIZE + run->payload_length);
    cr_assert(run->payload != NULL && run->expected != NULL);
    for (size_t i = 0; i < run->payload_length; i++)
        run->payload[i] = (uint8_t)(i * 131u + (i >> 12));
    mig_frame_encode(run->expected, MIG_FRAME_MACHINE_STATE, 1, run->payload, run->payload_length);
}

/* Stops the sender, closes its end and returns once the reader has it all. */
static void large_frame_end(struct large_frame_run *run)
{
    mig_sender_stop(&run->sender);
    close(run->fds[0]);
    pthread_join(run->reader.thread, NULL);
    close(run->fds[1]);
}

static void large_frame_free(struct large_frame_run *run)
{
    free(run->payload);
    free(run->expected);
    free(run->reader.bytes);
}

Test(migration_protocol, a_frame_larger_than_a_send_buffer_goes_out_whole_over_several)
{
    struct large_frame_run run;
    large_frame_start(&run, 0);
    char error[256];
    cr_assert_eq(mig_sender_queue_large_frame(&run.sender, MIG_FRAME_MACHINE_STATE, 1, run.payload,
                                              run.payload_length, 5000, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_sender_flush(&run.sender, 10000), 0);
    cr_assert_eq(mig_sender_seq_written(&run.sender), 2, "the frame counts as written once, when whole");
    large_frame_end(&run);
    cr_assert_eq(run.reader.length, MIG_HEADER_SIZE + run.payload_length);
    cr_assert_eq(memcmp(run.reader.bytes, run.expected, run.reader.length), 0);
    large_frame_free(&run);
}

static bool sender_has_written(void *argument)
{
    return mig_sender_bytes(argument) > 0;
}

/* A cancel while such a frame is being written: mig_sender_finish ends the
 * stream after the whole frame (never inside it, so the ERROR frame the
 * source writes next is readable) and drops the frame queued after it. */
Test(migration_protocol, finishing_inside_a_large_frame_completes_it_and_drops_what_follows)
{
    struct large_frame_run run;
    large_frame_start(&run, 1u << 20);     /* 1 MiB/s: the frame takes ~3.5 s unless finished */
    char error[256];
    cr_assert_eq(mig_sender_queue_large_frame(&run.sender, MIG_FRAME_MACHINE_STATE, 1, run.payload,
                                              run.payload_length, 5000, error, sizeof(error)), 0, "%s", error);
    struct mig_buffer *after = mig_sender_get(&run.sender, 5000);
    cr_assert_not_null(after);
    uint8_t iteration[MIG_ITERATION_SIZE] = { 0 };
    cr_assert(mig_buffer_append_frame(after, MIG_FRAME_ITERATION, 2, iteration, sizeof(iteration)));
    mig_sender_submit(&run.sender, after, 3);
    /* Inside the frame: some of it written, not all. */
    cr_assert(harness_wait_until(sender_has_written, &run.sender, 5000), "the sender never started");
    cr_assert_lt(mig_sender_bytes(&run.sender), MIG_HEADER_SIZE + run.payload_length);
    mig_sender_finish(&run.sender);
    cr_assert_eq(mig_sender_seq_written(&run.sender), 2);
    large_frame_end(&run);
    cr_assert_eq(run.reader.length, MIG_HEADER_SIZE + run.payload_length, "%zu bytes: the frame %s",
                 run.reader.length, run.reader.length < MIG_HEADER_SIZE + run.payload_length ? "was cut" :
                 "was followed by the dropped one");
    cr_assert_eq(memcmp(run.reader.bytes, run.expected, run.reader.length), 0);
    large_frame_free(&run);
}

static bool sender_has_paced(void *argument)
{
    return mig_sender_paced_ns(argument) > 0;
}

/* The switch-over lifts the live phase's cap (switch_over_bandwidth_mibs
 * 0): a sender waiting on the old cap goes on at once, and the wait under
 * the old cap is not counted under the new one. At 64 KiB/s the frame
 * would take ~56 s; once the cap is lifted the flush must finish well
 * inside its 10 s. */
Test(migration_protocol, lifting_the_cap_ends_a_pacing_wait_and_restarts_the_count)
{
    struct large_frame_run run;
    large_frame_start(&run, 64u << 10);
    char error[256];
    cr_assert_eq(mig_sender_queue_large_frame(&run.sender, MIG_FRAME_MACHINE_STATE, 1, run.payload,
                                              run.payload_length, 5000, error, sizeof(error)), 0, "%s", error);
    cr_assert(harness_wait_until(sender_has_paced, &run.sender, 5000), "the sender never waited on its cap");
    mig_sender_set_bandwidth(&run.sender, 0);
    cr_assert_eq(mig_sender_paced_ns(&run.sender), 0, "the count starts again with the new cap");
    cr_assert_eq(mig_sender_flush(&run.sender, 10000), 0, "the sender still waits on the lifted cap");
    cr_assert_eq(mig_sender_paced_ns(&run.sender), 0, "it waited under no cap");
    large_frame_end(&run);
    cr_assert_eq(run.reader.length, MIG_HEADER_SIZE + run.payload_length);
    cr_assert_eq(memcmp(run.reader.bytes, run.expected, run.reader.length), 0);
    large_frame_free(&run);
}
