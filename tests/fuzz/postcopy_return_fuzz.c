/*
 * libFuzzer target over the source's post-copy return-path parser
 * (migration/postcopy_return.c): the input is what a destination sends back
 * (PAGE_REQUEST, RECEIVED_BITMAP, ERROR frames, or anything else).
 *
 * Guest RAM is 64 MiB, the queue 64 requests, the rate 4096 pages/s with a
 * burst of 1024 pages, so floods reach both refusals. Each input runs three
 * times: as is in one call; with every frame checksum recomputed (so
 * mutations reach the payload checks); and that again fed in pieces whose
 * sizes come from the input, with the clock advancing 1 ms per piece.
 * Every run must keep the parser's promises or abort (reported as a crash):
 * a failure says why; every queued request lies inside guest RAM, page
 * aligned, 1..512 pages; the queue never exceeds its capacity; no more
 * requests are accepted or refused than frames were read; and the pieces
 * give the same outcome as the single call when the clock does not matter
 * (checked on the counts that do not depend on the rate).
 *
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined); run for
 * 20 s by tests/test_postcopy_return.c from tests/fuzz/postcopy-return-corpus/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/postcopy_return.h"
#include "tests/fuzz/sealed_copy.h"

#define FUZZ_RAM_BYTES (64ull << 20)


struct outcome {
    int result;
    uint64_t frames;
    uint64_t bitmap_chunks;
};

static void check(const struct postcopy_return_parser *p, int result)
{
    if (result != 0 && p->error[0] == '\0') {
        fprintf(stderr, "postcopy_return_fuzz: failed without a reason\n");
        abort();
    }
    if (p->queue_count > p->options.queue_capacity) {
        fprintf(stderr, "postcopy_return_fuzz: queue holds %u of %u\n", p->queue_count, p->options.queue_capacity);
        abort();
    }
    if (p->requests_accepted + p->requests_refused_queue + p->requests_refused_rate > p->frames) {
        fprintf(stderr, "postcopy_return_fuzz: more requests than frames\n");
        abort();
    }
}

static struct outcome run(const uint8_t *data, size_t size, size_t piece_seed)
{
    struct postcopy_return_options options = { .ram_bytes = FUZZ_RAM_BYTES, .queue_capacity = 64,
                                               .rate_pages_per_s = 4096, .burst_pages = 1024 };
    struct postcopy_return_parser p;
    if (postcopy_return_init(&p, &options) != 0)
        abort();
    int result = 0;
    uint64_t now = 1000000000ull;
    if (piece_seed == 0) {
        result = postcopy_return_feed(&p, data, size, now);
    } else {
        size_t at = 0, state = piece_seed;
        while (at < size && result == 0) {
            state = state * 1103515245u + 12345u;
            size_t piece = 1 + (state >> 8) % 97;
            if (piece > size - at)
                piece = size - at;
            result = postcopy_return_feed(&p, data + at, piece, now);
            at += piece;
            now += 1000000;
        }
    }
    check(&p, result);
    struct postcopy_page_request r;
    while (postcopy_return_pop(&p, &r)) {
        if (r.ram_offset % 4096 != 0 || r.pages == 0 || r.pages > POSTCOPY_REQUEST_MAX_PAGES ||
            r.ram_offset >= FUZZ_RAM_BYTES || r.pages > (FUZZ_RAM_BYTES - r.ram_offset) / 4096) {
            fprintf(stderr, "postcopy_return_fuzz: queued request 0x%llx + %u pages outside guest RAM\n",
                    (unsigned long long)r.ram_offset, r.pages);
            abort();
        }
    }
    struct outcome outcome = { .result = result, .frames = p.frames, .bitmap_chunks = p.bitmap_chunks };
    postcopy_return_destroy(&p);
    return outcome;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size, 0);
    if (size == 0)
        return 0;
    const uint8_t *copy = fuzz_sealed_copy(data, size);
    struct outcome whole = run(copy, size, 0);
    struct outcome pieces = run(copy, size, (size_t)data[0] + 1);
    /* The rate can only refuse (never fail) a frame, so chunking and the
     * clock change neither the outcome nor what was parsed. */
    if (whole.result != pieces.result || whole.frames != pieces.frames ||
        whole.bitmap_chunks != pieces.bitmap_chunks) {
        fprintf(stderr, "postcopy_return_fuzz: one call and pieces disagree (result %d/%d, frames %llu/%llu)\n",
                whole.result, pieces.result, (unsigned long long)whole.frames, (unsigned long long)pieces.frames);
        abort();
    }
    return 0;
}
