/*
 * The destination's frame parser (see receiver.h).
 */
#include "migration/receiver.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
/* Runtime-dispatched XXH3 (SSE2/AVX2/AVX-512, libxxhash's x86 dispatcher):
 * the header redirects XXH3_* to the *_dispatch entry points, ~2x the
 * throughput of the baseline SSE2 build on AVX2 hosts. */
#include <xxh_x86dispatch.h>

#define DATA_CHUNK (1u << 20)   /* read + hash granularity for memory runs */

_Atomic(mig_receiver_data_hook_fn) mig_receiver_data_hook;

bool mig_page_is_zero(const void *page)
{
    const uint64_t *words = page;
    for (unsigned i = 0; i < MIG_PAGE_SIZE / 8; i += 8) {
        if (words[i] | words[i + 1] | words[i + 2] | words[i + 3] | words[i + 4] | words[i + 5] |
            words[i + 6] | words[i + 7])
            return false;
    }
    return true;
}

static int buffer_read(void *ctx, void *data, size_t length, bool eof_ok, char *error, size_t error_size)
{
    struct mig_buffer_input *b = ctx;
    size_t left = b->length - b->position;
    if (left == 0 && eof_ok && length > 0)
        return 1;
    if (length > left) {
        snprintf(error, error_size, "stream truncated: needed %zu more bytes, %zu left", length, left);
        b->position = b->length;
        return -1;
    }
    memcpy(data, b->data + b->position, length);
    b->position += length;
    return 0;
}

void mig_buffer_input_init(struct mig_buffer_input *buffer, struct mig_input *input, const void *data,
                           size_t length)
{
    buffer->data = data;
    buffer->length = length;
    buffer->position = 0;
    input->read = buffer_read;
    input->ctx = buffer;
}

int mig_receiver_init(struct mig_receiver *r, uint8_t *ram, uint64_t ram_bytes, const struct mig_hello *local)
{
    memset(r, 0, sizeof(*r));
    r->ram = ram;
    r->ram_bytes = ram_bytes;
    r->local = *local;
    unsigned vcpus = local->vcpu_count > MIG_MAX_VCPUS ? MIG_MAX_VCPUS : local->vcpu_count;
    r->local.vcpu_count = vcpus;
    if (vcpus > 0 && local->vcpu_state_size > 0) {
        r->vcpu_states = calloc(vcpus, local->vcpu_state_size);
        if (r->vcpu_states == NULL)
            return -1;
    }
    uint64_t words = (ram_bytes / MIG_PAGE_SIZE + 63) / 64;
    r->written = calloc(words ? words : 1, sizeof(uint64_t));
    if (r->written == NULL) {
        free(r->vcpu_states);
        r->vcpu_states = NULL;
        return -1;
    }
    r->scratch_size = 4 + MIG_ERROR_MAX_MESSAGE + MIG_HELLO_SIZE + MIG_DEVICE_STATE_SIZE + MIG_END_SIZE;
    r->scratch = malloc(r->scratch_size);
    if (r->scratch == NULL) {
        free(r->vcpu_states);
        free(r->written);
        r->vcpu_states = NULL;
        r->written = NULL;
        return -1;
    }
    return 0;
}

void mig_receiver_destroy(struct mig_receiver *r)
{
    free(r->vcpu_states);
    free(r->scratch);
    free(r->written);
    r->vcpu_states = NULL;
    r->scratch = NULL;
    r->written = NULL;
}

/* ZERO run: only pages a data run wrote can be non-zero. */
static void apply_zero_run(struct mig_receiver *r, uint64_t first, uint64_t count)
{
    uint64_t page = first, end = first + count;
    while (page < end) {
        uint64_t word = r->written[page / 64];
        if (word == 0 && page % 64 == 0 && end - page >= 64) {
            page += 64;
            continue;
        }
        uint64_t bit = 1ull << (page % 64);
        if (word & bit) {
            uint8_t *host = r->ram + page * MIG_PAGE_SIZE;
            if (!mig_page_is_zero(host))
                memset(host, 0, MIG_PAGE_SIZE);
            r->written[page / 64] &= ~bit;
        }
        page++;
    }
}

static void mark_written(struct mig_receiver *r, uint64_t first, uint64_t count)
{
    for (uint64_t page = first; page < first + count; page++)
        r->written[page / 64] |= 1ull << (page % 64);
}

const void *mig_receiver_vcpu_state(const struct mig_receiver *r, unsigned index)
{
    if (index >= r->local.vcpu_count || !r->vcpu_state_present[index] || r->vcpu_states == NULL)
        return NULL;
    return r->vcpu_states + (size_t)index * r->local.vcpu_state_size;
}

__attribute__((format(printf, 3, 4)))
static int fail(struct mig_receiver *r, uint32_t code, const char *fmt, ...)
{
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof(text), fmt, args);
    va_end(args);
    snprintf(r->error, sizeof(r->error), "frame %" PRIu64 ": %s", r->seq, text);
    r->error_code = code;
    return -1;
}

static int read_input(struct mig_receiver *r, const struct mig_input *input, void *data, size_t length)
{
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    int result = input->read(input->ctx, data, length, false, text, sizeof(text));
    if (result != 0)
        return fail(r, MIG_ERR_STREAM, "%s", result > 0 ? "stream truncated" : text);
    atomic_fetch_add_explicit(&r->bytes_received, length, memory_order_relaxed);
    return 0;
}

/* Memory frame: runs applied to RAM as they arrive, checksum at the end. */
static int receive_memory(struct mig_receiver *r, const struct mig_input *input, const uint8_t *raw_header,
                          const struct mig_frame_header *header)
{
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, raw_header, MIG_HEADER_CHECKSUM_OFFSET);
    uint64_t left = header->length;
    uint64_t zero = 0, normal = 0;
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    while (left > 0) {
        if (left < MIG_RUN_HEADER_SIZE)
            return fail(r, MIG_ERR_STREAM, "memory frame ends inside a run header (%" PRIu64 " bytes left)", left);
        uint8_t run_bytes[MIG_RUN_HEADER_SIZE];
        if (read_input(r, input, run_bytes, sizeof(run_bytes)) != 0)
            return -1;
        XXH3_64bits_update(&state, run_bytes, sizeof(run_bytes));
        left -= MIG_RUN_HEADER_SIZE;
        struct mig_run run;
        mig_run_decode(run_bytes, &run);
        if (mig_run_validate(&run, r->ram_bytes, left, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        uint64_t bytes = (uint64_t)run.pages * MIG_PAGE_SIZE;
        uint8_t *target = r->ram + run.ram_offset;
        if (run.flags & MIG_RUN_ZERO) {
            apply_zero_run(r, run.ram_offset / MIG_PAGE_SIZE, run.pages);
            zero += run.pages;
            continue;
        }
        atomic_store_explicit(&r->frontier, run.ram_offset, memory_order_relaxed);
        mark_written(r, run.ram_offset / MIG_PAGE_SIZE, run.pages);
        for (uint64_t done = 0; done < bytes;) {
            size_t chunk = bytes - done > DATA_CHUNK ? DATA_CHUNK : (size_t)(bytes - done);
            if (read_input(r, input, target + done, chunk) != 0)
                return -1;
            XXH3_64bits_update(&state, target + done, chunk);
            done += chunk;
        }
        mig_receiver_data_hook_fn hook = atomic_load_explicit(&mig_receiver_data_hook, memory_order_acquire);
        if (hook != NULL)
            hook(r->ram, run.ram_offset, run.pages);
        left -= bytes;
        normal += run.pages;
    }
    uint64_t sum = XXH3_64bits_digest(&state);
    if (sum != header->checksum)
        return fail(r, MIG_ERR_STREAM, "memory frame checksum mismatch (got 0x%016" PRIx64 ", computed 0x%016"
                    PRIx64 ")", header->checksum, sum);
    atomic_fetch_add_explicit(&r->zero_pages, zero, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->normal_pages, normal, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->pages_received, zero + normal, memory_order_relaxed);
    return 0;
}

int mig_receiver_next(struct mig_receiver *r, const struct mig_input *input)
{
    r->peer_error = false;
    r->error_code = 0;
    r->error[0] = '\0';
    if (r->got_end)
        return fail(r, MIG_ERR_STREAM, "data after the end frame");
    uint8_t raw[MIG_HEADER_SIZE];
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    int result = input->read(input->ctx, raw, sizeof(raw), true, text, sizeof(text));
    if (result > 0)
        return fail(r, MIG_ERR_STREAM, "stream ended before the end frame (truncated)");
    if (result < 0)
        return fail(r, MIG_ERR_STREAM, "%s", text);
    atomic_fetch_add_explicit(&r->bytes_received, sizeof(raw), memory_order_relaxed);
    struct mig_frame_header header;
    /* mig_header_decode prefixes "frame N: " itself. */
    if (mig_header_decode(raw, r->seq, &header, r->error, sizeof(r->error)) != 0) {
        r->error_code = MIG_ERR_STREAM;
        return -1;
    }
    if (header.type == MIG_FRAME_HELLO_ACK || header.type == MIG_FRAME_ACK)
        return fail(r, MIG_ERR_STREAM, "unexpected %s frame from the source", mig_frame_type_name(header.type));
    if (!r->got_hello && header.type != MIG_FRAME_HELLO && header.type != MIG_FRAME_ERROR)
        return fail(r, MIG_ERR_STREAM, "%s frame before the hello", mig_frame_type_name(header.type));
    if (r->got_hello && header.type == MIG_FRAME_HELLO)
        return fail(r, MIG_ERR_STREAM, "second hello");

    if (header.type == MIG_FRAME_MEMORY) {
        if (receive_memory(r, input, raw, &header) != 0)
            return -1;
        r->seq++;
        return MIG_FRAME_MEMORY;
    }

    /* Small frames: payload into scratch (bounded), then checksum. */
    uint8_t *payload = r->scratch;
    if (header.type == MIG_FRAME_VCPU_STATE) {
        if (header.length != MIG_VCPU_STATE_HEADER + (uint64_t)r->local.vcpu_state_size)
            return fail(r, MIG_ERR_STREAM, "vcpu-state frame length %" PRIu64 " (must be %" PRIu64 ")",
                        header.length, MIG_VCPU_STATE_HEADER + (uint64_t)r->local.vcpu_state_size);
        uint8_t head[MIG_VCPU_STATE_HEADER];
        if (read_input(r, input, head, sizeof(head)) != 0)
            return -1;
        uint32_t index = mig_get_u32(head), size = mig_get_u32(head + 4);
        if (index >= r->local.vcpu_count || r->vcpu_states == NULL)
            return fail(r, MIG_ERR_STREAM, "vcpu-state for vCPU %" PRIu32 " (this VM has %" PRIu32 ")", index,
                        r->local.vcpu_count);
        if (size != r->local.vcpu_state_size)
            return fail(r, MIG_ERR_STREAM, "vcpu-state of %" PRIu32 " bytes (must be %" PRIu32 ")", size,
                        r->local.vcpu_state_size);
        uint8_t *target = r->vcpu_states + (size_t)index * size;
        if (read_input(r, input, target, size) != 0)
            return -1;
        XXH3_state_t state;
        XXH3_64bits_reset(&state);
        XXH3_64bits_update(&state, raw, MIG_HEADER_CHECKSUM_OFFSET);
        XXH3_64bits_update(&state, head, sizeof(head));
        XXH3_64bits_update(&state, target, size);
        if (XXH3_64bits_digest(&state) != header.checksum) {
            r->vcpu_state_present[index] = false;
            return fail(r, MIG_ERR_STREAM, "vcpu-state frame checksum mismatch");
        }
        r->vcpu_state_present[index] = true;
        r->seq++;
        return MIG_FRAME_VCPU_STATE;
    }
    if (header.length > r->scratch_size)
        return fail(r, MIG_ERR_STREAM, "frame too long");   /* unreachable: bounds checked */
    if (read_input(r, input, payload, (size_t)header.length) != 0)
        return -1;
    if (mig_frame_checksum(raw, payload, (size_t)header.length) != header.checksum)
        return fail(r, MIG_ERR_STREAM, "%s frame checksum mismatch", mig_frame_type_name(header.type));

    switch (header.type) {
    case MIG_FRAME_HELLO: {
        if (mig_hello_decode(payload, (size_t)header.length, &r->peer, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_CONFIG, "%s", text);
        if (mig_hello_compare(&r->local, &r->peer, false, text, sizeof(text)) != 0) {
            snprintf(r->error, sizeof(r->error), "configuration mismatch: %s", text);
            r->error_code = MIG_ERR_CONFIG;
            return -1;
        }
        r->got_hello = true;
        break;
    }
    case MIG_FRAME_ITERATION: {
        struct mig_iteration it;
        mig_iteration_decode(payload, &it);
        uint64_t previous = atomic_load_explicit(&r->iteration, memory_order_relaxed);
        if (it.iteration < previous)
            return fail(r, MIG_ERR_STREAM, "iteration %" PRIu64 " after iteration %" PRIu64, it.iteration,
                        previous);
        atomic_store_explicit(&r->iteration, it.iteration, memory_order_relaxed);
        break;
    }
    case MIG_FRAME_DEVICE_STATE:
        if (mig_device_state_decode(payload, &r->device, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        if (r->device.vcpu_count != r->local.vcpu_count)
            return fail(r, MIG_ERR_STREAM, "device state for %" PRIu32 " vCPUs (this VM has %" PRIu32 ")",
                        r->device.vcpu_count, r->local.vcpu_count);
        r->have_device = true;
        break;
    case MIG_FRAME_END: {
        if (mig_end_decode(payload, &r->end, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        for (unsigned i = 0; i < r->local.vcpu_count; i++)
            if (!r->vcpu_state_present[i])
                return fail(r, MIG_ERR_STREAM, "end frame but no state for vCPU %u", i);
        if (!r->have_device)
            return fail(r, MIG_ERR_STREAM, "end frame but no device state");
        if ((r->end.flags & MIG_END_HAS_DIGEST) && !(r->peer.features & MIG_FEATURE_DIGEST))
            return fail(r, MIG_ERR_STREAM, "end frame carries a digest the hello did not announce");
        r->got_end = true;
        break;
    }
    case MIG_FRAME_ERROR: {
        uint32_t code;
        char message[MIG_RECEIVER_ERROR_MAX - 64];
        mig_error_decode(payload, (size_t)header.length, &code, message, sizeof(message));
        snprintf(r->error, sizeof(r->error), "the source aborted the migration: %s", message);
        r->error_code = code;
        r->peer_error = true;
        return -1;
    }
    default:
        return fail(r, MIG_ERR_STREAM, "unexpected %s frame", mig_frame_type_name(header.type));
    }
    r->seq++;
    return (int)header.type;
}

int mig_receiver_run_buffer(struct mig_receiver *r, const void *data, size_t length)
{
    struct mig_buffer_input buffer;
    struct mig_input input;
    mig_buffer_input_init(&buffer, &input, data, length);
    for (;;) {
        int type = mig_receiver_next(r, &input);
        if (type < 0)
            return -1;
        if (type == MIG_FRAME_END) {
            if (buffer.position != buffer.length) {
                /* seq already names the frame after END. */
                fail(r, MIG_ERR_STREAM, "%zu bytes after the end frame", buffer.length - buffer.position);
                return -1;
            }
            return 0;
        }
    }
}

int mig_read_small_frame(const struct mig_input *input, uint64_t seq, struct mig_frame_header *header,
                         uint8_t *buffer, size_t capacity, char *error, size_t error_size)
{
    uint8_t raw[MIG_HEADER_SIZE];
    int result = input->read(input->ctx, raw, sizeof(raw), false, error, error_size);
    if (result != 0)
        return -1;
    if (mig_header_decode(raw, seq, header, error, error_size) != 0)
        return -1;
    if (header->length > capacity) {
        snprintf(error, error_size, "frame %" PRIu64 ": unexpected %s frame of %" PRIu64 " bytes", seq,
                 mig_frame_type_name(header->type), header->length);
        return -1;
    }
    if (input->read(input->ctx, buffer, (size_t)header->length, false, error, error_size) != 0)
        return -1;
    if (mig_frame_checksum(raw, buffer, (size_t)header->length) != header->checksum) {
        snprintf(error, error_size, "frame %" PRIu64 ": %s frame checksum mismatch", seq,
                 mig_frame_type_name(header->type));
        return -1;
    }
    return 0;
}
