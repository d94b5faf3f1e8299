/*
 * The post-copy return path (migration/postcopy_return.h, issue 17
 * groundwork): PAGE_REQUEST and RECEIVED_BITMAP frames from the destination
 * through the source's parser. Valid frames in any chunking; every hostile
 * frame gets its exact error; floods are refused (bounded queue, request
 * rate) and parsing goes on; every accepted request lies inside guest RAM.
 * Input is parsed from buffers that end at a PROT_NONE guard page, so a
 * read past the input crashes the test. The libFuzzer target
 * (tests/fuzz/postcopy_return_fuzz.c) runs 20 s here.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "migration/postcopy_return.h"
#include "tests/fuzz_runner.h"
#include "tests/harness.h"

#define RAM (64ull << 20)           /* 0x4000000, 16384 pages */
#define PAGE 4096u
#define NOW 1000000000ull            /* the caller's monotonic clock, ns */

/* The input copied to the end of a read-write mapping followed by a
 * PROT_NONE page, then fed in one call (or in pieces of `piece` bytes). */
static int feed_guarded(struct postcopy_return_parser *p, const uint8_t *bytes, size_t length, size_t piece,
                        uint64_t now)
{
    size_t rw = (length + PAGE - 1) / PAGE * PAGE + PAGE;
    uint8_t *map = mmap(NULL, rw + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(map, MAP_FAILED);
    cr_assert_eq(mprotect(map + rw, PAGE, PROT_NONE), 0);
    uint8_t *copy = map + rw - length;
    memcpy(copy, bytes, length);
    int result = 0;
    if (piece == 0)
        piece = length;
    for (size_t at = 0; at < length && result == 0; at += piece)
        result = postcopy_return_feed(p, copy + at, length - at < piece ? length - at : piece, now);
    munmap(map, rw + PAGE);
    return result;
}

static void parser_init(struct postcopy_return_parser *p, uint64_t ram, unsigned queue, uint64_t rate,
                        uint64_t burst)
{
    struct postcopy_return_options options = { .ram_bytes = ram, .queue_capacity = queue,
                                               .rate_pages_per_s = rate, .burst_pages = burst };
    cr_assert_eq(postcopy_return_init(p, &options), 0, "%s", p->error);
}

/* A frame with any header fields; the checksum made valid. */
static size_t raw_frame(uint8_t *out, uint32_t type, uint32_t flags, uint64_t seq, const void *payload,
                        size_t length)
{
    mig_header_encode(out, type, seq, length);
    mig_put_u32(out + 4, flags);
    memcpy(out + MIG_HEADER_SIZE, payload, length);
    mig_header_seal(out, out + MIG_HEADER_SIZE, length);
    return MIG_HEADER_SIZE + length;
}

static size_t request_frame(uint8_t *out, uint64_t seq, uint64_t offset, uint32_t pages, uint32_t flags)
{
    uint8_t payload[POSTCOPY_PAGE_REQUEST_SIZE];
    mig_put_u64(payload, offset);
    mig_put_u32(payload + 8, pages);
    mig_put_u32(payload + 12, flags);
    return raw_frame(out, POSTCOPY_FRAME_PAGE_REQUEST, 0, seq, payload, sizeof(payload));
}

/* A RECEIVED_BITMAP frame whose declared page count and word count may
 * disagree. */
static size_t bitmap_frame(uint8_t *out, uint64_t seq, uint64_t offset, uint64_t pages, const uint64_t *words,
                           size_t word_count)
{
    uint8_t payload[POSTCOPY_BITMAP_HEADER_SIZE + 8 * 8];
    cr_assert_leq(word_count, 8);
    mig_put_u64(payload, offset);
    mig_put_u64(payload + 8, pages);
    for (size_t i = 0; i < word_count; i++)
        mig_put_u64(payload + POSTCOPY_BITMAP_HEADER_SIZE + 8 * i, words[i]);
    return raw_frame(out, POSTCOPY_FRAME_RECEIVED_BITMAP, 0, seq, payload,
                     POSTCOPY_BITMAP_HEADER_SIZE + 8 * word_count);
}

static void assert_refused(const uint8_t *frame, size_t length, const char *expected)
{
    struct postcopy_return_parser p;
    parser_init(&p, RAM, 0, 0, 0);
    cr_assert_eq(feed_guarded(&p, frame, length, 0, NOW), -1, "accepted; expected: %s", expected);
    cr_assert_str_eq(p.error, expected);
    cr_assert_eq(p.requests_accepted, 0);
    cr_assert_eq(p.queue_count, 0);
    /* Once failed, always failed. */
    uint8_t valid[64];
    size_t n = request_frame(valid, 0, 0, 1, 0);
    cr_assert_eq(postcopy_return_feed(&p, valid, n, NOW), -1);
    cr_assert_str_eq(p.error, expected);
    postcopy_return_destroy(&p);
}

Test(postcopy_return, requests_and_a_bitmap_parse_in_any_chunking)
{
    uint8_t stream[1024];
    size_t length = 0;
    length += postcopy_return_encode_page_request(stream + length, 0, 0x5000, 1);
    length += postcopy_return_encode_page_request(stream + length, 1, 0x3ffe000, 2);   /* the last two pages */
    uint64_t words[2] = { 0x8000000000000001ull, 0x5 };
    length += postcopy_return_encode_received_bitmap(stream + length, 2, 0, 128, words);
    uint64_t tail[1] = { 0x2 };
    length += postcopy_return_encode_received_bitmap(stream + length, 3, 0x80000, 64, tail);
    length += postcopy_return_encode_page_request(stream + length, 4, 0x200000, 512);
    cr_assert_eq(length, 3 * 48 + (32 + 32) + (32 + 24));

    size_t pieces[] = { 0, 1, 7, 31, 32, 33, 48 };
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
        struct postcopy_return_parser p;
        parser_init(&p, RAM, 0, 0, 0);
        cr_assert_eq(feed_guarded(&p, stream, length, pieces[i], NOW), 0, "piece %zu: %s", pieces[i], p.error);
        cr_assert_eq(p.frames, 5);
        cr_assert_eq(p.requests_accepted, 3);
        cr_assert_eq(p.bitmap_chunks, 2);
        cr_assert_eq(p.bitmap_next_page, 192);
        cr_assert(!p.bitmap_complete, "16384 pages, 192 reported");
        struct postcopy_page_request r;
        cr_assert(postcopy_return_pop(&p, &r));
        cr_assert_eq(r.ram_offset, 0x5000);
        cr_assert_eq(r.pages, 1);
        cr_assert(postcopy_return_pop(&p, &r));
        cr_assert_eq(r.ram_offset, 0x3ffe000);
        cr_assert_eq(r.pages, 2);
        cr_assert(postcopy_return_pop(&p, &r));
        cr_assert_eq(r.ram_offset, 0x200000);
        cr_assert_eq(r.pages, 512);
        cr_assert(!postcopy_return_pop(&p, &r));
        cr_assert(postcopy_return_page_received(&p, 0));
        cr_assert(!postcopy_return_page_received(&p, 1));
        cr_assert(postcopy_return_page_received(&p, 63));
        cr_assert(postcopy_return_page_received(&p, 64));
        cr_assert(!postcopy_return_page_received(&p, 65));
        cr_assert(postcopy_return_page_received(&p, 66));
        cr_assert(postcopy_return_page_received(&p, 129));
        cr_assert(!postcopy_return_page_received(&p, 128));
        cr_assert(!postcopy_return_page_received(&p, 16384), "outside RAM is never received");
        cr_assert_str_eq(p.error, "");
        cr_assert_str_eq(p.last_refusal, "");
        postcopy_return_destroy(&p);
    }
}

/* RAM of 100 pages: the last chunk is not a multiple of 64 and may say so;
 * a chunk at offset 0 starts a new bitmap (recovery). */
Test(postcopy_return, a_whole_bitmap_with_a_short_last_chunk_and_a_second_bitmap)
{
    struct postcopy_return_parser p;
    parser_init(&p, 100 * PAGE, 0, 0, 0);
    uint8_t frame[256];
    uint64_t first[1] = { UINT64_MAX };
    uint64_t last[1] = { (1ull << 36) - 1 };  /* pages 64..99 */
    size_t n = postcopy_return_encode_received_bitmap(frame, 0, 0, 64, first);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), 0, "%s", p.error);
    n = postcopy_return_encode_received_bitmap(frame, 1, 64 * PAGE, 36, last);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), 0, "%s", p.error);
    cr_assert(p.bitmap_complete);
    cr_assert(postcopy_return_page_received(&p, 99));
    cr_assert(!postcopy_return_page_received(&p, 100));

    uint64_t recovery[2] = { 0x1, 0x0 };
    n = postcopy_return_encode_received_bitmap(frame, 2, 0, 100, recovery);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), 0, "%s", p.error);
    cr_assert(p.bitmap_complete);
    cr_assert(postcopy_return_page_received(&p, 0));
    cr_assert(!postcopy_return_page_received(&p, 1), "the new bitmap replaced the old");
    cr_assert(!postcopy_return_page_received(&p, 99));
    cr_assert_eq(p.bitmap_chunks, 3);

    /* Bits past the chunk's pages. */
    uint64_t spill[2] = { 0, 1ull << 36 };
    n = postcopy_return_encode_received_bitmap(frame, 3, 0, 100, spill);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), -1);
    cr_assert_str_eq(p.error, "frame 3: received bitmap has bits set past its 100 pages");
    postcopy_return_destroy(&p);
}

Test(postcopy_return, hostile_headers_get_their_exact_errors)
{
    uint8_t frame[256], payload[32] = { 0 };
    size_t n = raw_frame(frame, 42, 0, 0, payload, 16);
    assert_refused(frame, n, "frame 0: unknown frame type 42");
    n = raw_frame(frame, 0, 0, 0, payload, 16);
    assert_refused(frame, n, "frame 0: unknown frame type 0");
    n = raw_frame(frame, MIG_FRAME_HELLO, 0, 0, payload, 16);
    assert_refused(frame, n, "frame 0: hello frame is not allowed on the post-copy return path");
    n = raw_frame(frame, MIG_FRAME_MEMORY, 0, 0, payload, 16);
    assert_refused(frame, n, "frame 0: memory frame is not allowed on the post-copy return path");
    n = raw_frame(frame, POSTCOPY_FRAME_PAGE_REQUEST, 1, 0, payload, 16);
    assert_refused(frame, n, "frame 0: page-request frame has unknown flags 0x1");
    n = raw_frame(frame, POSTCOPY_FRAME_PAGE_REQUEST, 0, 5, payload, 16);
    assert_refused(frame, n, "frame 0: sequence number 5 (frames lost or reordered)");
    n = raw_frame(frame, POSTCOPY_FRAME_PAGE_REQUEST, 0, 0, payload, 17);
    assert_refused(frame, n, "frame 0: page-request frame length 17 (must be 16)");
    n = raw_frame(frame, POSTCOPY_FRAME_RECEIVED_BITMAP, 0, 0, payload, 16);
    assert_refused(frame, n, "frame 0: received-bitmap frame length 16 out of bounds [24, 524304]");
    n = raw_frame(frame, MIG_FRAME_ERROR, 0, 0, payload, 3);
    assert_refused(frame, n, "frame 0: error frame length 3 out of bounds [4, 1028]");

    /* A length of 2^63 is refused from the header alone: only the header is fed. */
    mig_header_encode(frame, POSTCOPY_FRAME_RECEIVED_BITMAP, 0, 1ull << 63);
    assert_refused(frame, MIG_HEADER_SIZE,
                   "frame 0: received-bitmap frame length 9223372036854775808 out of bounds [24, 524304]");

    n = request_frame(frame, 0, 0, 1, 0);
    frame[MIG_HEADER_SIZE] ^= 0x10;
    assert_refused(frame, n, "frame 0: page-request frame checksum mismatch");
}

Test(postcopy_return, hostile_page_requests_get_their_exact_errors)
{
    uint8_t frame[64];
    size_t n = request_frame(frame, 0, 0x1001, 1, 0);
    assert_refused(frame, n, "frame 0: page request at offset 0x1001 is not page aligned");
    n = request_frame(frame, 0, 0x1000, 0, 0);
    assert_refused(frame, n, "frame 0: page request at offset 0x1000 for 0 pages");
    n = request_frame(frame, 0, 0, 513, 0);
    assert_refused(frame, n, "frame 0: page request at offset 0x0 for 513 pages (at most 512)");
    n = request_frame(frame, 0, 0, UINT32_MAX, 0);
    assert_refused(frame, n, "frame 0: page request at offset 0x0 for 4294967295 pages (at most 512)");
    n = request_frame(frame, 0, RAM, 1, 0);
    assert_refused(frame, n, "frame 0: page request at offset 0x4000000 + 4096 exceeds guest RAM (67108864 bytes)");
    n = request_frame(frame, 0, RAM - PAGE, 2, 0);
    assert_refused(frame, n, "frame 0: page request at offset 0x3fff000 + 8192 exceeds guest RAM (67108864 bytes)");
    n = request_frame(frame, 0, 0xfffffffffffff000ull, 1, 0);
    assert_refused(frame, n,
                   "frame 0: page request at offset 0xfffffffffffff000 + 4096 exceeds guest RAM (67108864 bytes)");
    n = request_frame(frame, 0, 0, 1, 2);
    assert_refused(frame, n, "frame 0: page request has unknown flags 0x2");
}

Test(postcopy_return, hostile_bitmaps_get_their_exact_errors)
{
    uint8_t frame[256];
    uint64_t words[8] = { 0 };
    size_t n = bitmap_frame(frame, 0, 0x1000, 64, words, 1);
    assert_refused(frame, n, "frame 0: received bitmap at offset 0x1000 is not aligned to 64 pages");
    n = bitmap_frame(frame, 0, 0, 0, words, 1);
    assert_refused(frame, n, "frame 0: received bitmap at offset 0x0 for 0 pages");
    n = bitmap_frame(frame, 0, 0, POSTCOPY_BITMAP_MAX_PAGES + 1ull, words, 1);
    assert_refused(frame, n, "frame 0: received bitmap at offset 0x0 for 4194305 pages (at most 4194304)");
    n = bitmap_frame(frame, 0, RAM - 64 * PAGE, 128, words, 2);
    assert_refused(frame, n, "frame 0: received bitmap at offset 0x3fc0000 + 128 pages exceeds guest RAM (67108864 "
                             "bytes)");
    n = bitmap_frame(frame, 0, 0xffffffffffc00000ull, 64, words, 1);
    assert_refused(frame, n, "frame 0: received bitmap at offset 0xffffffffffc00000 + 64 pages exceeds guest RAM "
                             "(67108864 bytes)");
    n = bitmap_frame(frame, 0, 0, 128, words, 1);
    assert_refused(frame, n, "frame 0: received bitmap of 128 pages needs 32 bytes, the frame has 24");
    n = bitmap_frame(frame, 0, 0, 64, words, 2);
    assert_refused(frame, n, "frame 0: received bitmap of 64 pages needs 24 bytes, the frame has 32");
    n = bitmap_frame(frame, 0, 0, 65, words, 2);
    assert_refused(frame, n, "frame 0: received bitmap of 65 pages at offset 0x0 is not a multiple of 64 pages and "
                             "does not end guest RAM");
    n = bitmap_frame(frame, 0, 0x40000, 64, words, 1);
    assert_refused(frame, n, "frame 0: received bitmap at offset 0x40000 but 0x0 expected (chunks go up in RAM "
                             "without gaps)");

    /* A gap after a valid first chunk. */
    uint8_t stream[256];
    size_t length = bitmap_frame(stream, 0, 0, 64, words, 1);
    length += bitmap_frame(stream + length, 1, 0x80000, 64, words, 1);
    assert_refused(stream, length,
                   "frame 1: received bitmap at offset 0x80000 but 0x40000 expected (chunks go up in RAM without gaps)");
}

Test(postcopy_return, an_error_frame_ends_the_return_path_with_the_destinations_text)
{
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE], frame[MIG_HEADER_SIZE + sizeof(payload)];
    size_t length = mig_error_encode(MIG_ERR_INTERNAL, "restore failed\n", payload);
    size_t n = mig_frame_encode(frame, MIG_FRAME_ERROR, 0, payload, length);
    struct postcopy_return_parser p;
    parser_init(&p, RAM, 0, 0, 0);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), -1);
    cr_assert_str_eq(p.error, "frame 0: the destination aborted the post-copy (code 4, internal failure): restore "
                              "failed?");
    cr_assert_eq(p.peer_error_code, MIG_ERR_INTERNAL);
    postcopy_return_destroy(&p);
}

Test(postcopy_return, a_full_queue_refuses_requests_and_parsing_goes_on)
{
    struct postcopy_return_parser p;
    parser_init(&p, RAM, 4, 0, 0);
    uint8_t stream[6 * 48];
    size_t length = 0;
    for (unsigned i = 0; i < 6; i++)
        length += postcopy_return_encode_page_request(stream + length, i, (uint64_t)i * PAGE, 1);
    cr_assert_eq(feed_guarded(&p, stream, length, 0, NOW), 0, "%s", p.error);
    cr_assert_eq(p.frames, 6);
    cr_assert_eq(p.requests_accepted, 4);
    cr_assert_eq(p.requests_refused_queue, 2);
    cr_assert_eq(p.requests_refused_rate, 0);
    cr_assert_str_eq(p.last_refusal, "frame 5: page request at offset 0x5000 (1 pages) refused: queue full (4 "
                                     "requests pending)");
    struct postcopy_page_request r;
    cr_assert(postcopy_return_pop(&p, &r));
    cr_assert_eq(r.ram_offset, 0);
    uint8_t frame[48];
    size_t n = postcopy_return_encode_page_request(frame, 6, 0x9000, 1);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), 0, "%s", p.error);
    cr_assert_eq(p.requests_accepted, 5, "room again after a pop");
    uint64_t expected[] = { 0x1000, 0x2000, 0x3000, 0x9000 };
    for (unsigned i = 0; i < 4; i++) {
        cr_assert(postcopy_return_pop(&p, &r));
        cr_assert_eq(r.ram_offset, expected[i]);
    }
    cr_assert(!postcopy_return_pop(&p, &r));
    cr_assert_str_eq(p.error, "");
    postcopy_return_destroy(&p);
}

Test(postcopy_return, requests_above_the_rate_are_refused_not_obeyed)
{
    /* 1000 pages/s, burst 8: 8 pages at once, then one page per ms. */
    struct postcopy_return_parser p;
    parser_init(&p, RAM, 64, 1000, 8);
    uint8_t stream[16 * 48];
    size_t length = 0;
    length += postcopy_return_encode_page_request(stream + length, 0, 0, 5);
    length += postcopy_return_encode_page_request(stream + length, 1, 0x10000, 3);
    length += postcopy_return_encode_page_request(stream + length, 2, 0x20000, 1);
    cr_assert_eq(feed_guarded(&p, stream, length, 0, NOW), 0, "%s", p.error);
    cr_assert_eq(p.requests_accepted, 2);
    cr_assert_eq(p.requests_refused_rate, 1);
    cr_assert_str_eq(p.last_refusal, "frame 2: page request at offset 0x20000 (1 pages) refused: above the request "
                                     "rate (1000 pages/s, burst 8 pages)");
    uint8_t frame[48];
    /* 0.999 ms later: still no whole page of credit. */
    size_t n = postcopy_return_encode_page_request(frame, 3, 0x30000, 1);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW + 999999), 0);
    cr_assert_eq(p.requests_refused_rate, 2);
    /* 1 ms after the start: one page. */
    n = postcopy_return_encode_page_request(frame, 4, 0x40000, 1);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW + 1000000), 0);
    cr_assert_eq(p.requests_accepted, 3);
    n = postcopy_return_encode_page_request(frame, 5, 0x50000, 1);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW + 1000000), 0);
    cr_assert_eq(p.requests_refused_rate, 3);
    /* An hour later the bucket holds its burst, not more. */
    n = postcopy_return_encode_page_request(frame, 6, 0x60000, 8);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW + 3600000000000ull), 0);
    n = postcopy_return_encode_page_request(frame, 7, 0x70000, 1);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW + 3600000000000ull), 0);
    cr_assert_eq(p.requests_accepted, 4);
    cr_assert_eq(p.requests_refused_rate, 4);
    /* A clock that goes back refills nothing. */
    n = postcopy_return_encode_page_request(frame, 8, 0x80000, 1);
    cr_assert_eq(feed_guarded(&p, frame, n, 0, NOW), 0);
    cr_assert_eq(p.requests_refused_rate, 5);
    cr_assert_eq(p.queue_count, 4);
    postcopy_return_destroy(&p);
}

/* 100000 random requests, some reaching past RAM: each inside RAM is
 * queued, each outside is refused (on a parser of its own, since a refusal
 * ends the parser), and every queued request lies inside guest RAM, so the
 * source never reads outside it. */
Test(postcopy_return, every_accepted_request_lies_inside_guest_ram)
{
    struct postcopy_return_parser p;
    parser_init(&p, RAM, 100000, 1ull << 40, 1ull << 40);
    uint8_t frame[48];
    uint64_t state = 12345, inside_count = 0, outside_count = 0;
    for (unsigned i = 0; i < 100000; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t offset = (state >> 11) % (RAM + 1024 * PAGE) / PAGE * PAGE;
        uint32_t pages = (uint32_t)(state >> 40) % POSTCOPY_REQUEST_MAX_PAGES + 1;
        bool inside = offset + (uint64_t)pages * PAGE <= RAM;
        if (inside) {
            size_t n = postcopy_return_encode_page_request(frame, p.seq, offset, pages);
            cr_assert_eq(postcopy_return_feed(&p, frame, n, NOW), 0, "%s", p.error);
            inside_count++;
            continue;
        }
        struct postcopy_return_parser fresh;
        parser_init(&fresh, RAM, 0, 0, 0);
        size_t n = postcopy_return_encode_page_request(frame, 0, offset, pages);
        cr_assert_eq(postcopy_return_feed(&fresh, frame, n, NOW), -1, "offset 0x%lx + %u pages accepted",
                     (unsigned long)offset, pages);
        cr_assert_eq(fresh.queue_count, 0);
        postcopy_return_destroy(&fresh);
        outside_count++;
    }
    cr_assert_gt(outside_count, 1000, "the test reaches past RAM often");
    cr_assert_eq(p.requests_accepted, inside_count);
    struct postcopy_page_request r;
    uint64_t popped = 0;
    while (postcopy_return_pop(&p, &r)) {
        cr_assert_lt(r.ram_offset, RAM);
        cr_assert_leq(r.ram_offset + (uint64_t)r.pages * PAGE, RAM);
        popped++;
    }
    cr_assert_eq(popped, inside_count);
    postcopy_return_destroy(&p);
}

Test(postcopy_return, bad_ram_sizes_are_refused_at_init)
{
    struct postcopy_return_parser p;
    struct postcopy_return_options options = { .ram_bytes = 0 };
    cr_assert_eq(postcopy_return_init(&p, &options), -1);
    cr_assert_str_eq(p.error, "post-copy return path: guest RAM of 0 bytes is not a positive multiple of 4096");
    options.ram_bytes = 4097;
    cr_assert_eq(postcopy_return_init(&p, &options), -1);
    cr_assert_str_eq(p.error, "post-copy return path: guest RAM of 4097 bytes is not a positive multiple of 4096");
    postcopy_return_destroy(&p);
}

Test(postcopy_return, parser_10s_under_libfuzzer_no_crash)
{
    /* Over a hundred thousand inputs run on a 2-core machine in 10 s; 20000 is the floor. */
    fuzz_runner_run(&(struct fuzz_run){ .target = "postcopy_return_fuzz", .corpus = "tests/fuzz/postcopy-return-corpus",
                                        .seconds = 10, .extra_options = "-malloc_limit_mb=256",
                                        .min_executions = 20000 });
}

/* The seed corpus is what a destination sends (made with the encoders above). */
static uint8_t *read_seed(const char *name, size_t *length)
{
    char path[256];
    snprintf(path, sizeof(path), "tests/fuzz/postcopy-return-corpus/%s", name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        harness_skip("run from the repository root (%s not found)", path);
    static uint8_t data[16384];
    *length = fread(data, 1, sizeof(data), f);
    fclose(f);
    return data;
}

Test(postcopy_return, the_seed_corpus_parses_as_described)
{
    struct { const char *name; int result; uint64_t frames, accepted, refused, chunks; const char *error; } seeds[] = {
        { "page-requests", 0, 3, 3, 0, 0, "" },
        { "received-bitmap-whole", 0, 1, 0, 0, 1, "" },
        { "bitmap-chunks-and-requests", 0, 4, 2, 0, 2, "" },
        { "request-flood", 0, 200, 128, 72, 0, "" },   /* 1024 pages of burst = 128 requests of 8 */
        { "request-then-error", -1, 1, 1, 0, 0,
          "frame 1: the destination aborted the post-copy (code 3, cancelled): destination shutting down" },
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        size_t length;
        const uint8_t *data = read_seed(seeds[i].name, &length);
        struct postcopy_return_parser p;
        parser_init(&p, RAM, 1024, 4096, 1024);     /* the fuzz target's rate and burst */
        cr_assert_eq(feed_guarded(&p, data, length, 0, NOW), seeds[i].result, "%s: %s", seeds[i].name, p.error);
        cr_assert_eq(p.frames, seeds[i].frames, "%s", seeds[i].name);
        cr_assert_eq(p.requests_accepted, seeds[i].accepted, "%s", seeds[i].name);
        cr_assert_eq(p.requests_refused_rate + p.requests_refused_queue, seeds[i].refused, "%s", seeds[i].name);
        cr_assert_eq(p.bitmap_chunks, seeds[i].chunks, "%s", seeds[i].name);
        cr_assert_str_eq(p.error, seeds[i].error, "%s", seeds[i].name);
        postcopy_return_destroy(&p);
    }
}
