/*
 * Post-copy return path: frame encoders (destination) and the source's
 * validating parser. See postcopy_return.h.
 */
#include "migration/postcopy_return.h"
#include "vmm/page_bitmap.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POSTCOPY_RETURN_PAGE_SIZE 4096u
#define POSTCOPY_RETURN_DEFAULT_QUEUE 1024u
#define POSTCOPY_RETURN_DEFAULT_RATE 262144u
#define POSTCOPY_RETURN_DEFAULT_BURST 16384u
/* The payload buffer starts at this and grows to the largest frame seen
 * (at most POSTCOPY_BITMAP_MAX_LENGTH, bounded by the header check). */
#define POSTCOPY_RETURN_INITIAL_PAYLOAD 4096u

static const char *postcopy_return_type_name(uint32_t type)
{
    switch (type) {
    case POSTCOPY_FRAME_PAGE_REQUEST: return "page-request";
    case POSTCOPY_FRAME_RECEIVED_BITMAP: return "received-bitmap";
    }
    return mig_frame_type_name(type);
}

__attribute__((format(printf, 2, 3))) static int postcopy_return_fail(struct postcopy_return_parser *p,
                                                                       const char *format, ...)
{
    int used = snprintf(p->error, sizeof(p->error), "frame %" PRIu64 ": ", p->seq);
    va_list args;
    va_start(args, format);
    vsnprintf(p->error + used, sizeof(p->error) - (size_t)used, format, args);
    va_end(args);
    p->failed = true;
    return -1;
}

int postcopy_return_init(struct postcopy_return_parser *p, const struct postcopy_return_options *options)
{
    memset(p, 0, sizeof(*p));
    p->options = *options;
    if (p->options.queue_capacity == 0)
        p->options.queue_capacity = POSTCOPY_RETURN_DEFAULT_QUEUE;
    if (p->options.rate_pages_per_s == 0)
        p->options.rate_pages_per_s = POSTCOPY_RETURN_DEFAULT_RATE;
    if (p->options.burst_pages == 0)
        p->options.burst_pages = POSTCOPY_RETURN_DEFAULT_BURST;
    if (options->ram_bytes == 0 || options->ram_bytes % POSTCOPY_RETURN_PAGE_SIZE != 0) {
        snprintf(p->error, sizeof(p->error), "post-copy return path: guest RAM of %" PRIu64
                 " bytes is not a positive multiple of 4096", options->ram_bytes);
        p->failed = true;
        return -1;
    }
    p->ram_pages = options->ram_bytes / POSTCOPY_RETURN_PAGE_SIZE;
    p->payload_capacity = POSTCOPY_RETURN_INITIAL_PAYLOAD;
    p->payload = malloc(p->payload_capacity);
    p->queue = calloc(p->options.queue_capacity, sizeof(p->queue[0]));
    p->received = page_bitmap_alloc(p->ram_pages);
    if (p->payload == NULL || p->queue == NULL || p->received == NULL) {
        snprintf(p->error, sizeof(p->error), "post-copy return path: out of memory (%" PRIu64 " pages)",
                 p->ram_pages);
        postcopy_return_destroy(p);
        p->failed = true;
        return -1;
    }
    return 0;
}

void postcopy_return_destroy(struct postcopy_return_parser *p)
{
    free(p->payload);
    free(p->queue);
    free(p->received);
    p->payload = NULL;
    p->queue = NULL;
    p->received = NULL;
}

/* Header checks, before any payload byte is buffered. */
static int postcopy_return_check_header(struct postcopy_return_parser *p)
{
    struct mig_frame_header *h = &p->frame;
    h->type = mig_get_u32(p->header + 0);
    h->flags = mig_get_u32(p->header + 4);
    h->seq = mig_get_u64(p->header + 8);
    h->length = mig_get_u64(p->header + 16);
    h->checksum = mig_get_u64(p->header + MIG_HEADER_CHECKSUM_OFFSET);
    uint64_t min, max;
    switch (h->type) {
    case POSTCOPY_FRAME_PAGE_REQUEST:
        min = max = POSTCOPY_PAGE_REQUEST_SIZE;
        break;
    case POSTCOPY_FRAME_RECEIVED_BITMAP:
        min = POSTCOPY_BITMAP_HEADER_SIZE + 8;
        max = POSTCOPY_BITMAP_MAX_LENGTH;
        break;
    case MIG_FRAME_ERROR:
    case MIG_FRAME_POSTCOPY_RESUMED:
        mig_frame_length_bounds(h->type, &min, &max);
        break;
    default:
        if (h->type >= 1 && h->type <= MIG_FRAME_TYPE_MAX)
            return postcopy_return_fail(p, "%s frame is not allowed on the post-copy return path",
                                        mig_frame_type_name(h->type));
        return postcopy_return_fail(p, "unknown frame type %" PRIu32, h->type);
    }
    const char *name = postcopy_return_type_name(h->type);
    if (h->flags != 0)
        return postcopy_return_fail(p, "%s frame has unknown flags 0x%" PRIx32, name, h->flags);
    if (h->seq != p->seq)
        return postcopy_return_fail(p, "sequence number %" PRIu64 " (frames lost or reordered)", h->seq);
    if (h->length < min || h->length > max) {
        if (min == max)
            return postcopy_return_fail(p, "%s frame length %" PRIu64 " (must be %" PRIu64 ")", name, h->length,
                                        min);
        return postcopy_return_fail(p, "%s frame length %" PRIu64 " out of bounds [%" PRIu64 ", %" PRIu64 "]", name,
                                    h->length, min, max);
    }
    return 0;
}

static void postcopy_return_refill(struct postcopy_return_parser *p, uint64_t now_ns)
{
    if (!p->clock_started) {
        p->clock_started = true;
        p->tokens = p->options.burst_pages;
        p->last_refill_ns = now_ns;
        return;
    }
    if (now_ns <= p->last_refill_ns)
        return;     /* a clock that goes back refills nothing */
    unsigned __int128 add = (unsigned __int128)(now_ns - p->last_refill_ns) * p->options.rate_pages_per_s /
                            1000000000u;
    if (add == 0)
        return;     /* keep the fraction for the next call */
    unsigned __int128 tokens = p->tokens + add;
    p->tokens = tokens > p->options.burst_pages ? p->options.burst_pages : (uint64_t)tokens;
    p->last_refill_ns = now_ns;
}

static int postcopy_return_page_request(struct postcopy_return_parser *p, uint64_t now_ns)
{
    uint64_t offset = mig_get_u64(p->payload);
    uint32_t pages = mig_get_u32(p->payload + 8);
    uint32_t flags = mig_get_u32(p->payload + 12);
    if (flags != 0)
        return postcopy_return_fail(p, "page request has unknown flags 0x%" PRIx32, flags);
    if (offset % POSTCOPY_RETURN_PAGE_SIZE != 0)
        return postcopy_return_fail(p, "page request at offset 0x%" PRIx64 " is not page aligned", offset);
    if (pages == 0)
        return postcopy_return_fail(p, "page request at offset 0x%" PRIx64 " for 0 pages", offset);
    if (pages > POSTCOPY_REQUEST_MAX_PAGES)
        return postcopy_return_fail(p, "page request at offset 0x%" PRIx64 " for %" PRIu32 " pages (at most %u)",
                                    offset, pages, POSTCOPY_REQUEST_MAX_PAGES);
    if (offset >= p->options.ram_bytes || pages > (p->options.ram_bytes - offset) / POSTCOPY_RETURN_PAGE_SIZE)
        return postcopy_return_fail(p, "page request at offset 0x%" PRIx64 " + %" PRIu64 " exceeds guest RAM (%" PRIu64
                                    " bytes)", offset, (uint64_t)pages * POSTCOPY_RETURN_PAGE_SIZE,
                                    p->options.ram_bytes);
    postcopy_return_refill(p, now_ns);
    if (p->queue_count == p->options.queue_capacity) {
        p->requests_refused_queue++;
        snprintf(p->last_refusal, sizeof(p->last_refusal),
                 "frame %" PRIu64 ": page request at offset 0x%" PRIx64 " (%" PRIu32
                 " pages) refused: queue full (%u requests pending)", p->seq, offset, pages, p->queue_count);
        return 0;
    }
    if (p->tokens < pages) {
        p->requests_refused_rate++;
        snprintf(p->last_refusal, sizeof(p->last_refusal),
                 "frame %" PRIu64 ": page request at offset 0x%" PRIx64 " (%" PRIu32
                 " pages) refused: above the request rate (%" PRIu64 " pages/s, burst %" PRIu64 " pages)",
                 p->seq, offset, pages, p->options.rate_pages_per_s, p->options.burst_pages);
        return 0;
    }
    p->tokens -= pages;
    unsigned tail = (p->queue_head + p->queue_count) % p->options.queue_capacity;
    p->queue[tail] = (struct postcopy_page_request){ .ram_offset = offset, .pages = pages };
    p->queue_count++;
    p->requests_accepted++;
    return 0;
}

static int postcopy_return_bitmap(struct postcopy_return_parser *p)
{
    uint64_t offset = mig_get_u64(p->payload);
    uint64_t pages = mig_get_u64(p->payload + 8);
    const uint64_t chunk_align = 64ull * POSTCOPY_RETURN_PAGE_SIZE;
    if (offset % chunk_align != 0)
        return postcopy_return_fail(p, "received bitmap at offset 0x%" PRIx64 " is not aligned to 64 pages", offset);
    if (pages == 0)
        return postcopy_return_fail(p, "received bitmap at offset 0x%" PRIx64 " for 0 pages", offset);
    if (pages > POSTCOPY_BITMAP_MAX_PAGES)
        return postcopy_return_fail(p, "received bitmap at offset 0x%" PRIx64 " for %" PRIu64 " pages (at most %u)",
                                    offset, pages, POSTCOPY_BITMAP_MAX_PAGES);
    if (offset >= p->options.ram_bytes || pages > (p->options.ram_bytes - offset) / POSTCOPY_RETURN_PAGE_SIZE)
        return postcopy_return_fail(p, "received bitmap at offset 0x%" PRIx64 " + %" PRIu64
                                    " pages exceeds guest RAM (%" PRIu64 " bytes)", offset, pages,
                                    p->options.ram_bytes);
    uint64_t words = page_bitmap_words(pages);
    if (p->frame.length != POSTCOPY_BITMAP_HEADER_SIZE + 8 * words)
        return postcopy_return_fail(p, "received bitmap of %" PRIu64 " pages needs %" PRIu64
                                    " bytes, the frame has %" PRIu64, pages, POSTCOPY_BITMAP_HEADER_SIZE + 8 * words,
                                    p->frame.length);
    uint64_t first_page = offset / POSTCOPY_RETURN_PAGE_SIZE;
    if (pages % 64 != 0 && first_page + pages != p->ram_pages)
        return postcopy_return_fail(p, "received bitmap of %" PRIu64 " pages at offset 0x%" PRIx64
                                    " is not a multiple of 64 pages and does not end guest RAM", pages, offset);
    if (first_page != 0 && first_page != p->bitmap_next_page)
        return postcopy_return_fail(p, "received bitmap at offset 0x%" PRIx64 " but 0x%" PRIx64
                                    " expected (chunks go up in RAM without gaps)", offset,
                                    p->bitmap_next_page * POSTCOPY_RETURN_PAGE_SIZE);
    uint64_t last = mig_get_u64(p->payload + POSTCOPY_BITMAP_HEADER_SIZE + 8 * (words - 1));
    if (pages % 64 != 0 && (last >> (pages % 64)) != 0)
        return postcopy_return_fail(p, "received bitmap has bits set past its %" PRIu64 " pages", pages);
    if (first_page == 0) {
        /* A new bitmap (the first, or a recovery's): forget the old one. */
        memset(p->received, 0, page_bitmap_words(p->ram_pages) * sizeof(uint64_t));
        p->bitmap_complete = false;
    }
    for (uint64_t w = 0; w < words; w++)
        p->received[first_page / 64 + w] = mig_get_u64(p->payload + POSTCOPY_BITMAP_HEADER_SIZE + 8 * w);
    p->bitmap_next_page = first_page + pages;
    p->bitmap_complete = p->bitmap_next_page == p->ram_pages;
    p->bitmap_chunks++;
    return 0;
}

static int postcopy_return_frame(struct postcopy_return_parser *p, uint64_t now_ns)
{
    if (mig_frame_checksum(p->header, p->payload, (size_t)p->frame.length) != p->frame.checksum)
        return postcopy_return_fail(p, "%s frame checksum mismatch", postcopy_return_type_name(p->frame.type));
    switch (p->frame.type) {
    case POSTCOPY_FRAME_PAGE_REQUEST:
        return postcopy_return_page_request(p, now_ns);
    case POSTCOPY_FRAME_RECEIVED_BITMAP:
        return postcopy_return_bitmap(p);
    case MIG_FRAME_POSTCOPY_RESUMED:
        if (p->got_resumed)
            return postcopy_return_fail(p, "second postcopy-resumed frame");
        p->resumed_ns = mig_get_u64(p->payload);
        p->got_resumed = true;
        return 0;
    default: {    /* MIG_FRAME_ERROR: the header check let nothing else through */
        char message[MIG_ERROR_MAX_MESSAGE + 1];
        uint32_t code;
        mig_error_decode(p->payload, (size_t)p->frame.length, &code, message, sizeof(message));
        p->peer_error_code = code;
        return postcopy_return_fail(p, "the destination aborted the post-copy (code %" PRIu32 ", %s): %s", code,
                                    mig_error_code_name(code), message);
    }
    }
}

int postcopy_return_feed(struct postcopy_return_parser *p, const uint8_t *bytes, size_t length, uint64_t now_ns)
{
    if (p->failed)
        return -1;
    while (length > 0) {
        if (p->header_have < MIG_HEADER_SIZE) {
            size_t take = MIG_HEADER_SIZE - p->header_have;
            if (take > length)
                take = length;
            memcpy(p->header + p->header_have, bytes, take);
            p->header_have += take;
            bytes += take;
            length -= take;
            if (p->header_have < MIG_HEADER_SIZE)
                break;
            if (postcopy_return_check_header(p) != 0)
                return -1;
            if (p->frame.length > p->payload_capacity) {
                uint8_t *larger = realloc(p->payload, (size_t)p->frame.length);
                if (larger == NULL)
                    return postcopy_return_fail(p, "out of memory for a %s frame of %" PRIu64 " bytes",
                                                postcopy_return_type_name(p->frame.type), p->frame.length);
                p->payload = larger;
                p->payload_capacity = (size_t)p->frame.length;
            }
            p->payload_have = 0;
            continue;
        }
        size_t take = (size_t)p->frame.length - p->payload_have;
        if (take > length)
            take = length;
        memcpy(p->payload + p->payload_have, bytes, take);
        p->payload_have += take;
        bytes += take;
        length -= take;
        if (p->payload_have < p->frame.length)
            break;
        if (postcopy_return_frame(p, now_ns) != 0)
            return -1;
        p->frames++;
        p->seq++;
        p->header_have = 0;
    }
    return 0;
}

bool postcopy_return_pop(struct postcopy_return_parser *p, struct postcopy_page_request *out)
{
    if (p->queue_count == 0)
        return false;
    *out = p->queue[p->queue_head];
    p->queue_head = (p->queue_head + 1) % p->options.queue_capacity;
    p->queue_count--;
    return true;
}

bool postcopy_return_page_received(const struct postcopy_return_parser *p, uint64_t page)
{
    return page < p->ram_pages && page_bitmap_test(p->received, page);
}

size_t postcopy_return_encode_page_request(uint8_t *out, uint64_t seq, uint64_t ram_offset, uint32_t pages)
{
    uint8_t payload[POSTCOPY_PAGE_REQUEST_SIZE];
    mig_put_u64(payload, ram_offset);
    mig_put_u32(payload + 8, pages);
    mig_put_u32(payload + 12, 0);
    return mig_frame_encode(out, POSTCOPY_FRAME_PAGE_REQUEST, seq, payload, sizeof(payload));
}

size_t postcopy_return_bitmap_length(uint64_t pages)
{
    return POSTCOPY_BITMAP_HEADER_SIZE + 8 * (size_t)page_bitmap_words(pages);
}

size_t postcopy_return_encode_received_bitmap(uint8_t *out, uint64_t seq, uint64_t ram_offset, uint64_t pages,
                                              const uint64_t *words)
{
    size_t length = postcopy_return_bitmap_length(pages);
    uint8_t *payload = out + MIG_HEADER_SIZE;
    mig_put_u64(payload, ram_offset);
    mig_put_u64(payload + 8, pages);
    for (uint64_t w = 0; w < page_bitmap_words(pages); w++)
        mig_put_u64(payload + POSTCOPY_BITMAP_HEADER_SIZE + 8 * w, words[w]);
    mig_header_encode(out, POSTCOPY_FRAME_RECEIVED_BITMAP, seq, length);
    mig_header_seal(out, payload, length);
    return MIG_HEADER_SIZE + length;
}
