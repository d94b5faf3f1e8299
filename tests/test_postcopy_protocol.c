/*
 * Post-copy's wire rules and pure pieces, no KVM (issue 17): the receiver's
 * rules for POSTCOPY_OPEN / DISCARD / SWITCH and for memory after the
 * switch (no byte of an unverified frame reaches RAM), the page digest, the
 * return path's POSTCOPY_RESUMED, and the source's sent bitmap.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "migration/page_digest.h"
#include "migration/postcopy_return.h"
#include "migration/postcopy_source.h"
#include "migration/protocol.h"
#include "migration/receiver.h"
#include "tests/migration_stream.h"
#include "vmm/memory.h"

#define PAGES (MIGRATION_STREAM_RAM_BYTES / MIG_PAGE_SIZE)

static void put_open(struct migration_stream *s)
{
    uint8_t payload[MIG_POSTCOPY_OPEN_SIZE] = { 0 };
    migration_stream_put_frame(s, MIG_FRAME_POSTCOPY_OPEN, payload, sizeof(payload));
}

static void put_discard(struct migration_stream *s, const struct mig_discard_run *runs, size_t count)
{
    uint8_t payload[8 * MIG_POSTCOPY_DISCARD_RUN];
    for (size_t i = 0; i < count; i++)
        mig_discard_run_encode(&runs[i], payload + i * MIG_POSTCOPY_DISCARD_RUN);
    migration_stream_put_frame(s, MIG_FRAME_POSTCOPY_DISCARD, payload, count * MIG_POSTCOPY_DISCARD_RUN);
}

static void put_switch(struct migration_stream *s, uint32_t flags, uint64_t missing)
{
    struct mig_postcopy_switch sw = { .pause_timestamp_ns = 77, .flags = flags, .missing_pages = missing };
    uint8_t payload[MIG_POSTCOPY_SWITCH_SIZE];
    mig_postcopy_switch_encode(&sw, payload);
    migration_stream_put_frame(s, MIG_FRAME_POSTCOPY_SWITCH, payload, sizeof(payload));
}

static void put_states(struct migration_stream *s)
{
    migration_stream_put_machine_state(s, MIGRATION_STREAM_VCPUS, 0xa0);
    struct mig_device_state device = migration_stream_device_state();
    migration_stream_put_device_state(s, &device);
}

/* What the placer saw. */
struct placed {
    unsigned calls;
    uint64_t offset[8];
    uint32_t pages[8];
    bool zero[8];
    uint8_t first_byte[8];
};

static int record_place(void *opaque, uint64_t ram_offset, uint32_t pages, const uint8_t *data)
{
    struct placed *p = opaque;
    if (p->calls < 8) {
        p->offset[p->calls] = ram_offset;
        p->pages[p->calls] = pages;
        p->zero[p->calls] = data == NULL;
        p->first_byte[p->calls] = data != NULL ? data[0] : 0;
    }
    p->calls++;
    return 0;
}

/* Parses s frame by frame with a destination's receiver announcing
 * `features` besides the stream's defaults; the placer is set once
 * POSTCOPY_SWITCH is read, as the destination does. Returns the
 * receiver's last result. */
static int parse_announcing(const struct migration_stream *s, struct mig_receiver *r, uint8_t *ram, uint64_t features,
                            struct placed *placed)
{
    struct mig_hello local = migration_stream_hello();
    local.features |= features;
    cr_assert_eq(mig_receiver_init(r, ram, MIGRATION_STREAM_RAM_BYTES, &local), 0);
    struct mig_buffer_input buffer;
    struct mig_input input;
    mig_buffer_input_init(&buffer, &input, s->data, s->length);
    for (;;) {
        int type = mig_receiver_next(r, &input);
        if (type < 0)
            return -1;
        if (type == MIG_FRAME_POSTCOPY_SWITCH && placed != NULL)
            cr_assert_eq(mig_receiver_set_placer(r, record_place, placed), 0);
        if (type == MIG_FRAME_END)
            return 0;
    }
}

/* A post-copy destination (announce) or one without post-copy. */
static int parse(const struct migration_stream *s, struct mig_receiver *r, uint8_t *ram, bool announce,
                 struct placed *placed)
{
    return parse_announcing(s, r, ram, announce ? MIG_FEATURE_POSTCOPY : 0, placed);
}

static void expect_refused_announcing(struct migration_stream *s, uint64_t features, uint32_t code,
                                      const char *error)
{
    uint8_t *ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    struct mig_receiver r;
    cr_expect_eq(parse_announcing(s, &r, ram, features, NULL), -1, "accepted; wanted '%s'", error);
    cr_expect_str_eq(r.error, error);
    cr_expect_eq(r.error_code, code);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(ram, MIGRATION_STREAM_RAM_BYTES);
    migration_stream_free(s);
}

static void expect_refused(struct migration_stream *s, bool announce, uint32_t code, const char *error)
{
    uint8_t *ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    struct mig_receiver r;
    cr_expect_eq(parse(s, &r, ram, announce, NULL), -1, "accepted; wanted '%s'", error);
    cr_expect_str_eq(r.error, error);
    cr_expect_eq(r.error_code, code);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(ram, MIGRATION_STREAM_RAM_BYTES);
    migration_stream_free(s);
}

Test(postcopy_protocol, post_copy_frames_need_the_feature)
{
    struct migration_stream s = { 0 };
    struct mig_hello hello = migration_stream_hello();
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    expect_refused(&s, false, MIG_ERR_STREAM,
                   "frame 1: postcopy-open frame, but this destination did not announce post-copy");
}

Test(postcopy_protocol, frames_out_of_order_are_refused)
{
    struct mig_hello hello = migration_stream_hello();
    struct migration_stream s = { 0 };
    migration_stream_put_hello(&s, &hello);
    struct mig_discard_run all = { 0, PAGES };
    put_discard(&s, &all, 1);
    expect_refused(&s, true, MIG_ERR_STREAM, "frame 1: postcopy-discard frame before postcopy-open");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_open(&s);
    expect_refused(&s, true, MIG_ERR_STREAM, "frame 2: second postcopy-open frame");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    migration_stream_put_iteration(&s, 0, 1);
    put_open(&s);
    expect_refused(&s, true, MIG_ERR_STREAM, "frame 2: postcopy-open frame after the stream began");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_switch(&s, 0, PAGES);
    expect_refused(&s, true, MIG_ERR_STREAM, "frame 2: postcopy-switch frame but no machine state");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_states(&s);
    put_switch(&s, 0x4, PAGES);
    expect_refused(&s, true, MIG_ERR_STREAM,
                   "frame 4: postcopy-switch frame with flags 0x4, reserved 0 (known flags 0x2; reserved 0)");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_states(&s);
    put_switch(&s, 0, PAGES + 1);
    expect_refused(&s, true, MIG_ERR_STREAM, "frame 4: postcopy-switch frame: 257 pages missing of 256");
}

Test(postcopy_protocol, discard_runs_stay_inside_ram_and_go_up)
{
    struct mig_hello hello = migration_stream_hello();
    struct migration_stream s = { 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    struct mig_discard_run beyond = { 0xff000, 2 };
    put_discard(&s, &beyond, 1);
    expect_refused(&s, true, MIG_ERR_STREAM,
                   "frame 2: postcopy-discard run 0: offset 0xff000, 2 pages: not page aligned, empty or outside guest RAM "
                   "(256 pages)");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    struct mig_discard_run unaligned = { 0x800, 1 };
    put_discard(&s, &unaligned, 1);
    expect_refused(&s, true, MIG_ERR_STREAM,
                   "frame 2: postcopy-discard run 0: offset 0x800, 1 pages: not page aligned, empty or outside guest RAM "
                   "(256 pages)");

    /* Across frames too: the second frame may not go back. */
    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    struct mig_discard_run first[2] = { { 0x1000, 2 }, { 0x8000, 1 } };
    put_discard(&s, first, 2);
    struct mig_discard_run back = { 0x4000, 1 };
    put_discard(&s, &back, 1);
    expect_refused(&s, true, MIG_ERR_STREAM,
                   "frame 3: postcopy-discard run 0 at 0x4000 overlaps or precedes the run before it (which ends at 0x9000)");
}

static void put_discard_sync(struct migration_stream *s, uint64_t pages)
{
    uint8_t payload[MIG_POSTCOPY_DISCARD_SYNC_SIZE];
    mig_put_u64(payload, pages);
    migration_stream_put_frame(s, MIG_FRAME_POSTCOPY_DISCARD_SYNC, payload, sizeof(payload));
}

#define EARLY (MIG_FEATURE_POSTCOPY | MIG_FEATURE_EARLY_DISCARD)

/* Hybrid's early discard: DISCARD frames, one DISCARD_SYNC giving their
 * page count, then (after the pause) a second ascending sequence that may
 * go back to the start of RAM. */
Test(postcopy_protocol, an_early_discard_starts_a_second_sequence)
{
    struct mig_hello hello = migration_stream_hello();
    struct migration_stream s = { 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    struct mig_discard_run early[2] = { { 0x1000, 2 }, { 0x8000, 1 } };
    put_discard(&s, early, 2);
    struct mig_discard_run more = { 0x20000, 4 };
    put_discard(&s, &more, 1);
    put_discard_sync(&s, 7);
    struct mig_discard_run late[2] = { { 0x0, 1 }, { 0x9000, 2 } };
    put_discard(&s, late, 2);
    put_states(&s);
    put_switch(&s, 0, PAGES);
    struct mig_end end = { .timestamp_ns = 5, .pages = 0 };
    migration_stream_put_end(&s, &end);
    uint8_t *ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(parse_announcing(&s, &r, ram, EARLY, NULL), 0, "%s", r.error);
    cr_assert(r.got_discard_sync);
    cr_assert_eq(r.discard_sync_pages, 7);      /* the first sequence's, as the sync gave them */
    cr_assert_eq(r.discard_pages, 3);           /* the second sequence's pages */
    cr_assert_eq(r.discard_after, 0xb000);
    cr_assert_eq(r.discard_count, 2);
    cr_assert_eq(r.discard_runs[0].ram_offset, 0);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(ram, MIGRATION_STREAM_RAM_BYTES);
    migration_stream_free(&s);
}

Test(postcopy_protocol, early_discard_rules)
{
    struct mig_hello hello = migration_stream_hello();
    struct mig_discard_run two = { 0x3000, 2 };

    /* Only where the destination announced it. */
    struct migration_stream s = { 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_discard(&s, &two, 1);
    put_discard_sync(&s, 2);
    expect_refused_announcing(&s, MIG_FEATURE_POSTCOPY, MIG_ERR_STREAM,
                              "frame 3: postcopy-discard-sync frame, but this destination did not announce early "
                              "discards");

    /* The count must be the pages discarded before it. */
    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_discard(&s, &two, 1);
    put_discard_sync(&s, 3);
    expect_refused_announcing(&s, EARLY, MIG_ERR_STREAM,
                              "frame 3: postcopy-discard-sync counts 3 pages, the discard frames before it held 2");

    /* At most one: two passes over RAM at most. */
    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_discard(&s, &two, 1);
    put_discard_sync(&s, 2);
    put_discard(&s, &two, 1);
    put_discard_sync(&s, 2);
    expect_refused_announcing(&s, EARLY, MIG_ERR_STREAM,
                              "frame 5: postcopy-discard-sync frame a second time (at most one per migration)");

    /* Between OPEN and SWITCH. */
    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_discard_sync(&s, 0);
    expect_refused_announcing(&s, EARLY, MIG_ERR_STREAM, "frame 1: postcopy-discard-sync frame before postcopy-open");

    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_states(&s);
    put_switch(&s, 0, PAGES);
    put_discard_sync(&s, 0);
    expect_refused_announcing(&s, EARLY, MIG_ERR_STREAM, "frame 5: postcopy-discard-sync frame after postcopy-switch");

    /* Within the second sequence the runs still go up. */
    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_discard(&s, &two, 1);
    put_discard_sync(&s, 2);
    struct mig_discard_run up[2] = { { 0x6000, 1 }, { 0x5000, 1 } };
    put_discard(&s, up, 2);
    expect_refused_announcing(&s, EARLY, MIG_ERR_STREAM,
                              "frame 4: postcopy-discard run 1 at 0x5000 overlaps or precedes the run before it "
                              "(which ends at 0x7000)");

    /* The answer is the destination's, never the source's. */
    s = (struct migration_stream){ 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    uint8_t payload[MIG_POSTCOPY_DISCARD_SYNC_SIZE] = { 0 };
    migration_stream_put_frame(&s, MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK, payload, sizeof(payload));
    expect_refused_announcing(&s, EARLY, MIG_ERR_STREAM,
                              "frame 2: unexpected postcopy-discard-sync-ack frame from the source");
}

/* The guest runs on RAM from the switch on: a memory frame is verified
 * whole before any of it is placed. */
Test(postcopy_protocol, memory_after_the_switch_is_placed_only_once_verified)
{
    struct mig_hello hello = migration_stream_hello();
    uint8_t *source = calloc(1, MIGRATION_STREAM_RAM_BYTES);
    source[3 * MIG_PAGE_SIZE] = 0x33;
    source[4 * MIG_PAGE_SIZE] = 0x44;
    uint64_t pages[] = { 3, 4, 9 };

    struct migration_stream s = { 0 };
    migration_stream_put_hello(&s, &hello);
    put_open(&s);
    put_states(&s);
    put_switch(&s, 0, PAGES);
    migration_stream_put_pages(&s, source, pages, 3);
    struct mig_end end = { .timestamp_ns = 5, .pages = 3 };
    migration_stream_put_end(&s, &end);
    uint8_t *ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    struct mig_receiver r;
    struct placed placed = { 0 };
    cr_assert_eq(parse(&s, &r, ram, true, &placed), 0, "%s", r.error);
    cr_assert(r.got_postcopy_switch);
    cr_assert_eq(r.postcopy_switch.missing_pages, PAGES);
    cr_assert_eq(r.postcopy_switch.pause_timestamp_ns, 77);
    /* The builder makes one data run of pages 3-4 and one of page 9 (zero
     * pages are the sender's choice: it sends what it read). */
    cr_assert_geq(placed.calls, 2);
    cr_assert_eq(placed.offset[0], 3 * MIG_PAGE_SIZE);
    cr_assert_eq(placed.pages[0], 2);
    cr_assert_eq(placed.first_byte[0], 0x33);
    cr_assert_eq(placed.offset[placed.calls - 1], 9 * MIG_PAGE_SIZE);
    for (size_t i = 0; i < MIGRATION_STREAM_RAM_BYTES; i++)
        cr_assert_eq(ram[i], 0, "post-copy memory was written to RAM directly at 0x%zx", i);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(ram, MIGRATION_STREAM_RAM_BYTES);

    /* The same frame with its last byte flipped: refused, nothing placed. */
    size_t memory_frame = s.frame_start[s.frame_count - 2];
    size_t end_frame = s.frame_start[s.frame_count - 1];
    cr_assert_gt(end_frame, memory_frame);
    s.data[end_frame - 1] ^= 0x01;
    ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    placed = (struct placed){ 0 };
    cr_assert_eq(parse(&s, &r, ram, true, &placed), -1);
    cr_assert_str_eq(r.error, "frame 5: memory frame checksum mismatch");
    cr_assert_eq(placed.calls, 0, "a page of an unverified frame was placed");
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(ram, MIGRATION_STREAM_RAM_BYTES);
    migration_stream_free(&s);
    free(source);
}

/* 1 MiB of memfd-backed RAM, as guest RAM is (holes until written). */
static void small_memory(struct guest_memory *memory)
{
    memset(memory, 0, sizeof(*memory));
    memory->size = 1u << 20;
    memory->memfd = memfd_create("postcopy-test", MFD_CLOEXEC);
    cr_assert_geq(memory->memfd, 0);
    cr_assert_eq(ftruncate(memory->memfd, (off_t)memory->size), 0);
    memory->host = mmap(NULL, memory->size, PROT_READ | PROT_WRITE, MAP_SHARED, memory->memfd, 0);
    cr_assert_neq(memory->host, MAP_FAILED);
}

static void small_memory_free(struct guest_memory *memory)
{
    munmap(memory->host, memory->size);
    close(memory->memfd);
}

Test(postcopy_protocol, page_digest_is_a_sum_over_pages_in_any_order)
{
    uint8_t *ram = calloc(1, 8 * 4096);
    for (size_t i = 0; i < 8 * 4096; i++)
        ram[i] = (uint8_t)(i * 7 + i / 4096);
    struct page_digest forward, backward;
    page_digest_init(&forward);
    page_digest_init(&backward);
    uint64_t low = 0, high = 0;
    for (uint64_t p = 0; p < 8; p++) {
        page_digest_add(&forward, p, ram + p * 4096);
        page_digest_add(&backward, 7 - p, ram + (7 - p) * 4096);
        XXH128_hash_t h = XXH3_128bits_withSeed(ram + p * 4096, 4096, p);
        low += h.low64;
        high += h.high64;
    }
    char a[PAGE_DIGEST_HEX_SIZE], b[PAGE_DIGEST_HEX_SIZE], want[PAGE_DIGEST_HEX_SIZE];
    page_digest_hex(&forward, a);
    page_digest_hex(&backward, b);
    snprintf(want, sizeof(want), "%016" PRIx64 "%016" PRIx64, high, low);
    cr_assert_str_eq(a, want);
    cr_assert_str_eq(b, want);
    cr_assert_eq(forward.pages, 8);
    /* Two pages swapping contents change it. */
    struct page_digest swapped;
    page_digest_init(&swapped);
    page_digest_add(&swapped, 0, ram + 4096);
    page_digest_add(&swapped, 1, ram);
    for (uint64_t p = 2; p < 8; p++)
        page_digest_add(&swapped, p, ram + p * 4096);
    page_digest_hex(&swapped, b);
    cr_assert_str_neq(a, b);
    /* A zero page is a page of zeros. */
    struct page_digest zero_a, zero_b;
    page_digest_init(&zero_a);
    page_digest_init(&zero_b);
    static const uint8_t zeros[4096];
    page_digest_add_zero(&zero_a, 5);
    page_digest_add(&zero_b, 5, zeros);
    cr_assert_eq(zero_a.low, zero_b.low);
    cr_assert_eq(zero_a.high, zero_b.high);
    free(ram);
}

Test(postcopy_protocol, the_memory_digest_hashes_holes_as_zero_pages)
{
    struct guest_memory memory;
    small_memory(&memory);
    memory.host[5 * 4096 + 1] = 9;      /* one data page; the rest are holes */
    uint8_t *copy = calloc(1, 1u << 20);
    copy[5 * 4096 + 1] = 9;
    struct page_digest expected;
    page_digest_init(&expected);
    for (uint64_t p = 0; p < 256; p++)
        page_digest_add(&expected, p, copy + p * 4096);
    char want[PAGE_DIGEST_HEX_SIZE], got[PAGE_DIGEST_HEX_SIZE];
    page_digest_hex(&expected, want);
    cr_assert_eq(page_digest_memory(&memory, got), 0);
    cr_assert_str_eq(got, want);
    free(copy);
    small_memory_free(&memory);
}

Test(postcopy_protocol, resumed_on_the_return_path_once)
{
    struct postcopy_return_parser parser;
    struct postcopy_return_options options = { .ram_bytes = 1u << 20 };
    cr_assert_eq(postcopy_return_init(&parser, &options), 0);
    uint8_t frame[2 * (MIG_HEADER_SIZE + MIG_POSTCOPY_RESUMED_SIZE)], payload[MIG_POSTCOPY_RESUMED_SIZE];
    mig_put_u64(payload, 123456789);
    size_t length = mig_frame_encode(frame, MIG_FRAME_POSTCOPY_RESUMED, 0, payload, sizeof(payload));
    length += mig_frame_encode(frame + length, MIG_FRAME_POSTCOPY_RESUMED, 1, payload, sizeof(payload));
    cr_assert_eq(postcopy_return_feed(&parser, frame, length / 2, 1), 0);
    cr_assert(parser.got_resumed);
    cr_assert_eq(parser.resumed_ns, 123456789);
    cr_assert_eq(postcopy_return_feed(&parser, frame + length / 2, length / 2, 2), -1);
    cr_assert_str_eq(parser.error, "frame 1: second postcopy-resumed frame");
    postcopy_return_destroy(&parser);
}

Test(postcopy_protocol, the_sources_sent_bitmap_hands_each_page_out_once)
{
    struct guest_memory memory;
    small_memory(&memory);
    struct postcopy_source *source;
    struct mig_io none = { .fd = -1 };
    cr_assert_eq(postcopy_source_create(&source, &memory, none), 0);
    cr_assert_eq(postcopy_source_unsent(source), 256);
    postcopy_source_mark_sent(source, 0, 256);
    postcopy_source_mark_unsent(source, 3);
    postcopy_source_mark_unsent(source, 200);
    cr_assert_eq(postcopy_source_unsent(source), 2);
    uint64_t page;
    cr_assert(postcopy_source_next_unsent(source, 4, &page));
    cr_assert_eq(page, 200);
    cr_assert(postcopy_source_next_unsent(source, 201, &page), "wraps around");
    cr_assert_eq(page, 3);
    cr_assert(postcopy_source_claim(source, 3));
    cr_assert(!postcopy_source_claim(source, 3), "a page is claimed once");
    cr_assert(postcopy_source_claim(source, 200));
    cr_assert(!postcopy_source_next_unsent(source, 0, &page));
    struct postcopy_source_stats stats;
    postcopy_source_get_stats(source, &stats);
    cr_assert_eq(stats.pages_pushed, 2);
    postcopy_source_destroy(source);
    small_memory_free(&memory);
}

/* pc-serve over a socketpair, RAM between PROT_NONE guard pages: a valid
 * request gets its page's exact bytes; a request reaching past RAM gets
 * ERROR with the parser's text, the server stops, and no byte outside RAM
 * was read (that would be a SIGSEGV on a guard page). */
Test(postcopy_protocol, the_page_server_answers_requests_and_refuses_hostile_ones)
{
    const size_t size = 1u << 20, page = 4096;
    uint8_t *region = mmap(NULL, size + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(region, MAP_FAILED);
    struct guest_memory memory;
    memset(&memory, 0, sizeof(memory));
    memory.size = size;
    memory.memfd = memfd_create("pc-serve-test", MFD_CLOEXEC);
    cr_assert_eq(ftruncate(memory.memfd, (off_t)size), 0);
    memory.host = mmap(region + page, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memory.memfd, 0);
    cr_assert_eq(memory.host, region + page);
    for (size_t i = 0; i < page; i++)
        memory.host[3 * page + i] = (uint8_t)(i * 13 + 1);
    int pair[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
    struct mig_io io = { .fd = pair[0], .stall_ms = 2000, .peer = "destination" };
    struct postcopy_source *source;
    cr_assert_eq(postcopy_source_create(&source, &memory, io), 0);
    cr_assert_eq(postcopy_source_start(source), 0);
    struct mig_io peer = { .fd = pair[1], .stall_ms = 2000, .peer = "source" };
    char error[400];

    uint8_t request[MIG_HEADER_SIZE + POSTCOPY_PAGE_REQUEST_SIZE];
    size_t length = postcopy_return_encode_page_request(request, 0, 3 * page, 1);
    cr_assert_eq(mig_io_write(&peer, request, length, error, sizeof(error)), 0, "%s", error);
    uint8_t header_bytes[MIG_HEADER_SIZE];
    cr_assert_eq(mig_io_read(&peer, header_bytes, sizeof(header_bytes), false, error, sizeof(error)), 0, "%s", error);
    struct mig_frame_header header;
    cr_assert_eq(mig_header_decode(header_bytes, 0, &header, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(header.type, MIG_FRAME_MEMORY);
    cr_assert_eq(header.length, MIG_RUN_HEADER_SIZE + page);
    uint8_t *payload = malloc(header.length);
    cr_assert_eq(mig_io_read(&peer, payload, header.length, false, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_frame_checksum(header_bytes, payload, header.length), header.checksum);
    struct mig_run run;
    mig_run_decode(payload, &run);
    cr_assert_eq(run.ram_offset, 3 * page);
    cr_assert_eq(run.pages, 1);
    cr_assert_eq(run.flags, 0);
    cr_assert_eq(memcmp(payload + MIG_RUN_HEADER_SIZE, memory.host + 3 * page, page), 0);
    free(payload);

    /* The last page and one past it. */
    length = postcopy_return_encode_page_request(request, 1, size - page, 2);
    cr_assert_eq(mig_io_write(&peer, request, length, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_io_read(&peer, header_bytes, sizeof(header_bytes), false, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_header_decode(header_bytes, 1, &header, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(header.type, MIG_FRAME_ERROR);
    uint8_t message_bytes[4 + MIG_ERROR_MAX_MESSAGE];
    cr_assert_eq(mig_io_read(&peer, message_bytes, header.length, false, error, sizeof(error)), 0, "%s", error);
    uint32_t code;
    char message[MIG_ERROR_MAX_MESSAGE + 1];
    mig_error_decode(message_bytes, header.length, &code, message, sizeof(message));
    cr_assert_eq(code, MIG_ERR_STREAM);
    cr_assert_str_eq(message, "frame 1: page request at offset 0xff000 + 8192 exceeds guest RAM (1048576 bytes)");
    postcopy_source_stop(source);
    cr_assert(postcopy_source_failed(source, error, sizeof(error)));
    cr_assert_str_eq(error, "urgent channel: frame 1: page request at offset 0xff000 + 8192 exceeds guest RAM "
                            "(1048576 bytes)");
    struct postcopy_source_stats stats;
    postcopy_source_get_stats(source, &stats);
    cr_assert_eq(stats.requests, 1);
    cr_assert_eq(stats.pages_requested, 1);
    postcopy_source_destroy(source);
    close(pair[0]);
    close(pair[1]);
    munmap(region, size + 2 * page);
    close(memory.memfd);
}
