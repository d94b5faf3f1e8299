/*
 * The destination's frame parser (see receiver.h).
 */
#include "migration/receiver.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "migration/machine_state.h"
#include "vmm/monotonic.h"
#include "vmm/workload.h"
#include "vmm/page_bitmap.h"

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

static ssize_t buffer_read_some(void *ctx, void *data, size_t capacity, char *error, size_t error_size)
{
    (void)error;
    (void)error_size;
    struct mig_buffer_input *b = ctx;
    size_t left = b->length - b->position;
    size_t take = capacity < left ? capacity : left;
    memcpy(data, b->data + b->position, take);
    b->position += take;
    return (ssize_t)take;
}

void mig_buffer_input_init(struct mig_buffer_input *buffer, struct mig_input *input, const void *data,
                           size_t length)
{
    buffer->data = data;
    buffer->length = length;
    buffer->position = 0;
    input->read = buffer_read;
    input->read_some = buffer_read_some;
    input->ctx = buffer;
    input->clock = NULL;
    input->clock_ctx = NULL;
    input->stop = NULL;
}

void mig_receiver_set_deadline(struct mig_receiver *r, unsigned stall_ms, uint64_t floor_bytes_per_s)
{
    r->stall_ms = stall_ms;
    r->floor_bytes_per_s = floor_bytes_per_s != 0 ? floor_bytes_per_s : MIG_RATE_FLOOR_BYTES_PER_S;
}

static uint64_t input_now_ns(const struct mig_input *input)
{
    if (input->clock != NULL)
        return input->clock(input->clock_ctx);
    return monotonic_now_ns();
}

static bool input_stopped(const struct mig_input *input)
{
    return input->stop != NULL && atomic_load_explicit(input->stop, memory_order_acquire);
}

/* bytes per second over elapsed_ns, 0 for no time. */
static uint64_t rate_per_second(uint64_t bytes, uint64_t elapsed_ns)
{
    return elapsed_ns == 0 ? 0 : (uint64_t)((unsigned __int128)bytes * 1000000000u / elapsed_ns);
}

int mig_receiver_init(struct mig_receiver *r, uint8_t *ram, uint64_t ram_bytes, const struct mig_hello *local)
{
    memset(r, 0, sizeof(*r));
    r->ram = ram;
    r->ram_bytes = ram_bytes;
    r->local = *local;
    unsigned vcpus = local->vcpu_count > MIG_MAX_VCPUS ? MIG_MAX_VCPUS : local->vcpu_count;
    r->local.vcpu_count = vcpus;
    r->written = page_bitmap_alloc(ram_bytes / MIG_PAGE_SIZE);
    if (r->written == NULL)
        return -1;
    r->scratch_size = 4 + MIG_ERROR_MAX_MESSAGE + MIG_HELLO_SIZE + MIG_DEVICE_STATE_SIZE + MIG_END_SIZE +
                      MIG_SWITCH_OVER_SIZE;
    r->scratch = malloc(r->scratch_size);
    r->staging = malloc(MIG_RECEIVER_STAGING_BYTES);
    if (r->scratch == NULL || r->staging == NULL) {
        mig_receiver_destroy(r);
        return -1;
    }
    return 0;
}

void mig_receiver_restart_stream(struct mig_receiver *r)
{
    r->seq = 0;
    r->got_hello = false;
    r->got_end = false;
    r->staged_start = r->staged_end = 0;
    r->frame_clock_running = false;
    r->got_postcopy_open = false;
    r->awaiting_resume = true;
    r->got_resume = false;
}

int mig_receiver_set_placer(struct mig_receiver *r,
                            int (*place)(void *opaque, uint64_t ram_offset, uint32_t pages, const uint8_t *data),
                            void *opaque)
{
    if (r->place_buffer == NULL) {
        r->place_buffer = malloc(MIG_POSTCOPY_FRAME_MAX);
        if (r->place_buffer == NULL)
            return -1;
    }
    r->place = place;
    r->place_opaque = opaque;
    return 0;
}

void mig_receiver_drop_probe(struct mig_receiver *r)
{
    free(r->probe);
    r->probe = NULL;
    r->probe_length = 0;
}

void mig_receiver_destroy(struct mig_receiver *r)
{
    mig_receiver_drop_probe(r);
    if (r->machine_state != NULL)
        machine_state_free(r->machine_state);
    free(r->machine_state);
    r->machine_state = NULL;
    free(r->scratch);
    free(r->staging);
    free(r->written);
    free(r->discard_runs);
    free(r->place_buffer);
    r->discard_runs = NULL;
    r->place_buffer = NULL;
    r->scratch = NULL;
    r->staging = NULL;
    r->written = NULL;
}

/* Bits [from, to) of a 64-bit word, 0 <= from < to <= 64. */
static uint64_t bit_range(uint64_t from, uint64_t to)
{
    uint64_t below_to = to == 64 ? ~0ull : (1ull << to) - 1;
    return below_to & ~((1ull << from) - 1);
}

/* ZERO run: only pages a data run wrote can be non-zero, so the run costs
 * one bitmap word per 64 pages plus one page check per page written
 * since (each written bit is cleared here, so a page is checked once per
 * data write). */
static void apply_zero_run(struct mig_receiver *r, uint64_t first, uint64_t count)
{
    uint64_t end = first + count;
    for (uint64_t word = first / 64; word * 64 < end; word++) {
        uint64_t base = word * 64;
        uint64_t mask = bit_range(first > base ? first - base : 0, end - base < 64 ? end - base : 64);
        uint64_t hits = r->written[word] & mask;
        r->work.zero_words++;
        while (hits != 0) {
            uint8_t *host = r->ram + (base + (uint64_t)__builtin_ctzll(hits)) * MIG_PAGE_SIZE;
            if (!mig_page_is_zero(host))
                memset(host, 0, MIG_PAGE_SIZE);
            r->work.pages_touched++;
            hits &= hits - 1;
        }
        r->written[word] &= ~mask;
    }
}

static void mark_written(struct mig_receiver *r, uint64_t first, uint64_t count)
{
    uint64_t end = first + count;
    for (uint64_t word = first / 64; word * 64 < end; word++) {
        uint64_t base = word * 64;
        r->written[word] |= bit_range(first > base ? first - base : 0, end - base < 64 ? end - base : 64);
    }
}

int mig_receiver_decode_machine_state(const struct mig_receiver *r, const uint8_t *bytes, size_t length,
                                      struct machine_state *state, char *error, size_t error_size)
{
    char reason[MIG_RECEIVER_ERROR_MAX - 64];
    if (machine_state_decode(bytes, length, state, reason, sizeof(reason)) != 0) {
        /* The decoder names the section and field; say "machine state"
         * once whichever layer the reason comes from. */
        bool named = strncmp(reason, "machine state", 13) == 0;
        snprintf(error, error_size, "%s%s", named ? "" : "machine state: ", reason);
        return -1;
    }
    if (state->vcpu_count != r->local.vcpu_count) {
        snprintf(error, error_size, "machine state for %" PRIu32 " vCPUs (this VM has %" PRIu32 ")",
                 state->vcpu_count, r->local.vcpu_count);
        machine_state_free(state);
        return -1;
    }
    return 0;
}

const struct machine_state *mig_receiver_machine_state(const struct mig_receiver *r)
{
    return r->machine_state;
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

/* The phase a frame belongs to, for messages: the handshake until the
 * hello is in, stop-and-copy from the first vCPU or device state on (the
 * source has paused), pre-copy in between. */
static void receiver_phase(const struct mig_receiver *r, char *out, size_t size)
{
    bool stopped = r->have_device || r->machine_state != NULL;
    if (!r->got_hello)
        snprintf(out, size, "handshake");
    else if (stopped)
        snprintf(out, size, "stop-and-copy");
    else
        snprintf(out, size, "pre-copy (iteration %" PRIu64 ")",
                 atomic_load_explicit(&r->iteration, memory_order_relaxed));
}

/* Starts the current frame's clock (its first byte is here). */
static void start_frame_clock(struct mig_receiver *r, uint64_t now)
{
    r->frame_clock_running = true;
    r->frame_start_ns = now;
    r->frame_deadline_ns = now + (uint64_t)r->stall_ms * 1000000u;
}

/* The frame's length is known (header decoded): its deadline becomes
 * start + max(stall, length / floor). */
static uint64_t frame_window_ns(const struct mig_receiver *r)
{
    uint64_t stall = (uint64_t)r->stall_ms * 1000000u;
    if (r->frame_length == 0)
        return stall;
    uint64_t at_floor = (uint64_t)(((unsigned __int128)r->frame_length * 1000000000u + r->floor_bytes_per_s - 1) /
                                   r->floor_bytes_per_s);
    return at_floor > stall ? at_floor : stall;
}

/*
 * After read_some brought bytes: arrived bytes of the current frame are
 * in (parsed, read into place, or staged). Starts the frame's clock at its
 * first byte; fails when the frame is still incomplete at or past its
 * deadline. 0 or -1 (r->error).
 */
static int check_frame_deadline(struct mig_receiver *r, const struct mig_input *input, uint64_t arrived)
{
    uint64_t now = input_now_ns(input);
    if (!r->frame_clock_running)
        start_frame_clock(r, now);
    uint64_t total = r->frame_length != 0 ? r->frame_length : MIG_HEADER_SIZE;
    if (arrived >= total || now < r->frame_deadline_ns)
        return 0;
    char what[64], phase[64];
    if (r->frame_length == 0)
        snprintf(what, sizeof(what), "frame header");
    else
        snprintf(what, sizeof(what), "%s frame of %" PRIu64 " bytes", mig_frame_type_name(r->frame_type),
                 r->frame_length);
    receiver_phase(r, phase, sizeof(phase));
    uint64_t elapsed = now - r->frame_start_ns;
    return fail(r, MIG_ERR_STREAM,
                "%s too slow in %s: %" PRIu64 " of %" PRIu64 " bytes in %" PRIu64 " ms (%" PRIu64
                " B/s); it had to arrive within %" PRIu64 " ms (the longer of the %u ms stall timeout and its "
                "length at %" PRIu64 " B/s)", what, phase, arrived, total, elapsed / 1000000u,
                rate_per_second(arrived, elapsed), frame_window_ns(r) / 1000000u, r->stall_ms,
                r->floor_bytes_per_s);
}

/*
 * Reads exactly length bytes into data: first what is staged, then through
 * input->read_some, straight into data for a long read, into the staging
 * buffer (and on) for a short one. Returns 0; 1 on a clean end of stream
 * before the first byte when eof_ok (a frame boundary); -1 with r->error.
 */
static int receive_bytes(struct mig_receiver *r, const struct mig_input *input, void *data, size_t length,
                         bool eof_ok)
{
    /* Every read, staged or not, looks at the stop flag first: with the
     * peer keeping the socket full, read_some never waits, so this is
     * where a shutdown is seen (issue 16, item 2). */
    if (input_stopped(input))
        return fail(r, MIG_ERR_CANCELLED, "the destination VM is shutting down");
    uint8_t *out = data;
    size_t staged = r->staged_end - r->staged_start;
    size_t done = staged < length ? staged : length;
    memcpy(out, r->staging + r->staged_start, done);
    r->staged_start += done;
    while (done < length) {
        if (input_stopped(input))
            return fail(r, MIG_ERR_CANCELLED, "the destination VM is shutting down");
        size_t want = length - done;
        char text[MIG_RECEIVER_ERROR_MAX - 32];
        ssize_t got;
        r->work.input_calls++;
        if (want >= MIG_RECEIVER_DIRECT_BYTES) {
            got = input->read_some(input->ctx, out + done, want, text, sizeof(text));
            if (got > 0)
                done += (size_t)got;
        } else {
            /* The staging buffer is empty here (drained above). */
            got = input->read_some(input->ctx, r->staging, MIG_RECEIVER_STAGING_BYTES, text, sizeof(text));
            if (got > 0) {
                size_t take = (size_t)got < want ? (size_t)got : want;
                memcpy(out + done, r->staging, take);
                done += take;
                r->staged_start = take;
                r->staged_end = (size_t)got;
            }
        }
        if (got < 0) {
            if (input_stopped(input))
                return fail(r, MIG_ERR_CANCELLED, "the destination VM is shutting down");
            return fail(r, MIG_ERR_STREAM, "%s", text);
        }
        if (got == 0) {
            if (done == 0 && eof_ok)
                return 1;
            return fail(r, MIG_ERR_STREAM,
                        "the source closed the connection (truncated stream): needed %zu more bytes, got %zu",
                        length, done);
        }
        if (r->stall_ms != 0 &&
            check_frame_deadline(r, input, r->frame_consumed + done + (r->staged_end - r->staged_start)) != 0)
            return -1;
    }
    r->frame_consumed += length;
    atomic_fetch_add_explicit(&r->bytes_received, length, memory_order_relaxed);
    return 0;
}

static int read_input(struct mig_receiver *r, const struct mig_input *input, void *data, size_t length)
{
    return receive_bytes(r, input, data, length, false);
}

/*
 * Memory frame: runs applied to RAM as they arrive, checksum at the end.
 * The work a frame can cause is bounded (docs/migration-protocol.md, "Work
 * per frame and per byte"): its runs go up in RAM without overlapping, so
 * a page is covered at most once per frame, and a ZERO run never continues
 * a ZERO run it could have been merged into (one ZERO run per contiguous
 * zero range, as the sender builds them).
 */
/* Post-copy's memory frame: whole, verified, then placed (see
 * mig_receiver_set_placer). The run rules are the pre-copy ones. */
static int receive_memory_placed(struct mig_receiver *r, const struct mig_input *input, const uint8_t *raw_header,
                                 const struct mig_frame_header *header)
{
    if (header->length > MIG_POSTCOPY_FRAME_MAX)
        return fail(r, MIG_ERR_STREAM, "memory frame of %" PRIu64 " bytes in post-copy (at most %u)",
                    header->length, MIG_POSTCOPY_FRAME_MAX);
    uint8_t *payload = r->place_buffer;
    if (read_input(r, input, payload, (size_t)header->length) != 0)
        return -1;
    if (mig_frame_checksum(raw_header, payload, (size_t)header->length) != header->checksum)
        return fail(r, MIG_ERR_STREAM, "memory frame checksum mismatch");
    r->work.memory_frames++;
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    uint64_t at = 0, previous_end = 0, zero = 0, normal = 0;
    bool first = true;
    while (at < header->length) {
        if (header->length - at < MIG_RUN_HEADER_SIZE)
            return fail(r, MIG_ERR_STREAM, "memory frame ends inside a run header (%" PRIu64 " bytes left)",
                        header->length - at);
        struct mig_run run;
        mig_run_decode(payload + at, &run);
        at += MIG_RUN_HEADER_SIZE;
        r->work.runs++;
        if (mig_run_validate(&run, r->ram_bytes, header->length - at, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        bool is_zero = (run.flags & MIG_RUN_ZERO) != 0;
        if (is_zero && !(r->peer.features & MIG_FEATURE_ZERO_PAGES))
            return fail(r, MIG_ERR_STREAM, "memory run at offset 0x%" PRIx64 " is a zero run but the hello did not "
                        "announce zero-page runs", run.ram_offset);
        if (!first && run.ram_offset < previous_end)
            return fail(r, MIG_ERR_STREAM, "memory run at offset 0x%" PRIx64 " overlaps or precedes the run before "
                        "it (which ends at 0x%" PRIx64 ")", run.ram_offset, previous_end);
        first = false;
        uint64_t bytes = (uint64_t)run.pages * MIG_PAGE_SIZE;
        previous_end = run.ram_offset + bytes;
        if (r->place(r->place_opaque, run.ram_offset, run.pages, is_zero ? NULL : payload + at) != 0)
            return fail(r, MIG_ERR_INTERNAL, "placing %" PRIu32 " pages at 0x%" PRIx64 " failed", run.pages,
                        run.ram_offset);
        r->work.pages_touched += run.pages;
        if (is_zero) {
            zero += run.pages;
        } else {
            at += bytes;
            normal += run.pages;
        }
    }
    atomic_fetch_add_explicit(&r->zero_pages, zero, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->normal_pages, normal, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->pages_received, zero + normal, memory_order_relaxed);
    return 0;
}

static int receive_memory(struct mig_receiver *r, const struct mig_input *input, const uint8_t *raw_header,
                          const struct mig_frame_header *header)
{
    if (r->got_postcopy_switch) {
        if (r->place == NULL)
            return fail(r, MIG_ERR_INTERNAL, "memory frame after postcopy-switch but no placer is set");
        return receive_memory_placed(r, input, raw_header, header);
    }
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, raw_header, MIG_HEADER_CHECKSUM_OFFSET);
    uint64_t left = header->length;
    uint64_t zero = 0, normal = 0;
    uint64_t previous_end = 0;          /* RAM offset after the previous run of this frame */
    struct mig_run previous = { 0 };    /* pages == 0: no run yet */
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    r->work.memory_frames++;
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
        r->work.runs++;
        if (mig_run_validate(&run, r->ram_bytes, left, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        bool is_zero = (run.flags & MIG_RUN_ZERO) != 0;
        if (is_zero && !(r->peer.features & MIG_FEATURE_ZERO_PAGES))
            return fail(r, MIG_ERR_STREAM,
                        "memory run at offset 0x%" PRIx64
                        " is a zero run but the hello did not announce zero-page runs", run.ram_offset);
        if (previous.pages != 0 && run.ram_offset < previous_end)
            return fail(r, MIG_ERR_STREAM,
                        "memory run at offset 0x%" PRIx64 " overlaps or precedes the run before it (which ends at 0x%"
                        PRIx64 ")", run.ram_offset, previous_end);
        if (is_zero && (previous.flags & MIG_RUN_ZERO) && run.ram_offset == previous_end &&
            (uint64_t)previous.pages + run.pages <= MIG_RUN_MAX_PAGES)
            return fail(r, MIG_ERR_STREAM,
                        "memory run at offset 0x%" PRIx64 " continues the zero run before it (%" PRIu32 " + %" PRIu32
                        " pages belong in one run)", run.ram_offset, previous.pages, run.pages);
        uint64_t bytes = (uint64_t)run.pages * MIG_PAGE_SIZE;
        previous = run;
        previous_end = run.ram_offset + bytes;
        uint8_t *target = r->ram + run.ram_offset;
        if (is_zero) {
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
            r->work.pages_touched += chunk / MIG_PAGE_SIZE;
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

/* A frame whose payload the destination keeps whole (MACHINE_STATE,
 * PROBE): read into the heap (its length is bounded by mig_header_decode)
 * and checksum-verified. The bytes (the caller owns them), or NULL having
 * failed. */
static uint8_t *receive_whole_payload(struct mig_receiver *r, const struct mig_input *input,
                                      const uint8_t raw[MIG_HEADER_SIZE], const struct mig_frame_header *header)
{
    const char *name = mig_frame_type_name(header->type);
    uint8_t *bytes = malloc((size_t)header->length);
    if (bytes == NULL) {
        fail(r, MIG_ERR_INTERNAL, "out of memory for a %" PRIu64 "-byte %s frame", header->length, name);
        return NULL;
    }
    if (read_input(r, input, bytes, (size_t)header->length) != 0) {
        free(bytes);
        return NULL;
    }
    if (mig_frame_checksum(raw, bytes, (size_t)header->length) != header->checksum) {
        free(bytes);
        fail(r, MIG_ERR_STREAM, "%s frame checksum mismatch", name);
        return NULL;
    }
    return bytes;
}

int mig_receiver_next(struct mig_receiver *r, const struct mig_input *input)
{
    r->peer_error = false;
    r->peer_error_code = 0;
    r->error_code = 0;
    r->error[0] = '\0';
    if (r->got_end)
        return fail(r, MIG_ERR_STREAM, "data after the end frame");
    /* A new frame: its clock starts with its first byte, which is here
     * already when it was read ahead. */
    r->frame_consumed = 0;
    r->frame_length = 0;
    r->frame_type = 0;
    r->frame_clock_running = false;
    if (r->stall_ms != 0 && r->staged_end > r->staged_start)
        start_frame_clock(r, input_now_ns(input));
    uint8_t raw[MIG_HEADER_SIZE];
    char text[MIG_RECEIVER_ERROR_MAX - 32];
    int result = receive_bytes(r, input, raw, sizeof(raw), true);
    if (result > 0)
        return fail(r, MIG_ERR_STREAM, "stream ended before the end frame (truncated)");
    if (result < 0)
        return -1;
    struct mig_frame_header header;
    /* mig_header_decode prefixes "frame N: " itself. */
    if (mig_header_decode(raw, r->seq, &header, r->error, sizeof(r->error)) != 0) {
        r->error_code = MIG_ERR_STREAM;
        return -1;
    }
    if (r->stall_ms != 0) {
        /* Bounded by mig_header_decode (at most MIG_MEMORY_MAX_PAYLOAD). */
        r->frame_type = header.type;
        r->frame_length = MIG_HEADER_SIZE + header.length;
        if (r->frame_clock_running)
            r->frame_deadline_ns = r->frame_start_ns + frame_window_ns(r);
    }
    if (header.type == MIG_FRAME_HELLO_ACK || header.type == MIG_FRAME_ACK || header.type == MIG_FRAME_PROBE_ACK ||
        header.type == MIG_FRAME_POSTCOPY_OPEN_ACK || header.type == MIG_FRAME_POSTCOPY_RESUMED ||
        header.type == MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK || header.type == 10u || header.type == 11u)
        return fail(r, MIG_ERR_STREAM, "unexpected %s frame from the source", mig_frame_type_name(header.type));
    if (!r->got_hello && header.type != MIG_FRAME_HELLO && header.type != MIG_FRAME_ERROR)
        return fail(r, MIG_ERR_STREAM, "%s frame before the hello", mig_frame_type_name(header.type));
    if (r->got_hello && header.type == MIG_FRAME_HELLO)
        return fail(r, MIG_ERR_STREAM, "second hello");
    if (r->got_hello && r->awaiting_resume && !r->got_resume && header.type != MIG_FRAME_POSTCOPY_RESUME &&
        header.type != MIG_FRAME_ERROR)
        return fail(r, MIG_ERR_STREAM, "%s frame on a recovery connection before postcopy-resume",
                    mig_frame_type_name(header.type));
    if (header.type == MIG_FRAME_POSTCOPY_RESUME && (!r->awaiting_resume || r->got_resume))
        return fail(r, MIG_ERR_STREAM, "postcopy-resume frame %s", r->got_resume ? "twice"
                    : "outside a post-copy recovery");

    if (header.type == MIG_FRAME_MEMORY) {
        if (receive_memory(r, input, raw, &header) != 0)
            return -1;
        r->stream_started = true;
        r->seq++;
        return MIG_FRAME_MEMORY;
    }
    if (header.type == MIG_FRAME_PROBE || header.type == MIG_FRAME_SWITCH_OVER) {
        if (!(r->local.features & MIG_FEATURE_SWITCH_PROBE))
            return fail(r, MIG_ERR_STREAM, "%s frame, but this destination did not announce the switch-over "
                        "probe", mig_frame_type_name(header.type));
    }
    if (header.type == MIG_FRAME_PROBE) {
        /* Once, before the stream: a dry run of the state path. Its length
         * is bounded by mig_header_decode (MIG_PROBE_MAX). */
        if (r->got_probe)
            return fail(r, MIG_ERR_STREAM, "second probe frame");
        if (r->stream_started)
            return fail(r, MIG_ERR_STREAM, "probe frame after the stream began");
        uint64_t started = input_now_ns(input);
        uint8_t *bytes = receive_whole_payload(r, input, raw, &header);
        if (bytes == NULL)
            return -1;
        struct mig_probe_header probe;
        if (mig_probe_header_decode(bytes, &probe, text, sizeof(text)) != 0) {
            free(bytes);
            return fail(r, MIG_ERR_STREAM, "%s", text);
        }
        uint64_t body = header.length - MIG_PROBE_HEADER_SIZE;
        memmove(bytes, bytes + MIG_PROBE_HEADER_SIZE, (size_t)body);
        r->probe = bytes;
        r->probe_length = (size_t)body;
        r->probe_header = probe;
        r->probe_started_ns = started;
        r->got_probe = true;
        r->seq++;
        return MIG_FRAME_PROBE;
    }

    if (((header.type >= MIG_FRAME_POSTCOPY_OPEN && header.type <= MIG_FRAME_POSTCOPY_SWITCH) ||
         header.type == MIG_FRAME_POSTCOPY_RESUME) &&
        !(r->local.features & MIG_FEATURE_POSTCOPY))
        return fail(r, MIG_ERR_STREAM, "%s frame, but this destination did not announce post-copy",
                    mig_frame_type_name(header.type));
    if (header.type == MIG_FRAME_POSTCOPY_DISCARD) {
        if (!r->got_postcopy_open || r->got_postcopy_switch)
            return fail(r, MIG_ERR_STREAM, "postcopy-discard frame %s", r->got_postcopy_switch
                        ? "after postcopy-switch" : "before postcopy-open");
        if (r->discard_runs == NULL) {
            r->discard_runs = malloc(MIG_POSTCOPY_DISCARD_MAX_RUNS * sizeof(*r->discard_runs));
            if (r->discard_runs == NULL)
                return fail(r, MIG_ERR_INTERNAL, "out of memory for discard runs");
        }
        /* Bounded by mig_header_decode (MIG_POSTCOPY_DISCARD_MAX_RUNS runs). */
        uint8_t *bytes = receive_whole_payload(r, input, raw, &header);
        if (bytes == NULL)
            return -1;
        int count = mig_discard_decode(bytes, (size_t)header.length, r->ram_bytes, r->discard_after,
                                       r->discard_runs, text, sizeof(text));
        free(bytes);
        if (count < 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        r->discard_count = (unsigned)count;
        const struct mig_discard_run *last = &r->discard_runs[count - 1];
        r->discard_after = last->ram_offset + last->pages * MIG_PAGE_SIZE;
        for (int i = 0; i < count; i++)
            r->discard_pages += r->discard_runs[i].pages;    /* <= RAM pages: the runs ascend */
        r->seq++;
        return MIG_FRAME_POSTCOPY_DISCARD;
    }
    if (header.type == MIG_FRAME_POSTCOPY_DISCARD_SYNC) {
        if (!(r->local.features & MIG_FEATURE_EARLY_DISCARD))
            return fail(r, MIG_ERR_STREAM, "postcopy-discard-sync frame, but this destination did not announce "
                        "early discards");
        if (!r->got_postcopy_open || r->got_postcopy_switch || r->got_discard_sync)
            return fail(r, MIG_ERR_STREAM, "postcopy-discard-sync frame %s", r->got_discard_sync
                        ? "a second time (at most one per migration)" : r->got_postcopy_switch
                        ? "after postcopy-switch" : "before postcopy-open");
        uint8_t bytes[MIG_POSTCOPY_DISCARD_SYNC_SIZE];
        if (read_input(r, input, bytes, sizeof(bytes)) != 0)
            return -1;
        if (mig_frame_checksum(raw, bytes, sizeof(bytes)) != header.checksum)
            return fail(r, MIG_ERR_STREAM, "postcopy-discard-sync frame checksum mismatch");
        uint64_t pages = mig_get_u64(bytes);
        if (pages != r->discard_pages)
            return fail(r, MIG_ERR_STREAM, "postcopy-discard-sync counts %" PRIu64 " pages, the discard frames "
                        "before it held %" PRIu64, pages, r->discard_pages);
        r->got_discard_sync = true;
        r->discard_sync_pages = pages;
        r->discard_after = 0;
        r->discard_pages = 0;
        r->seq++;
        return MIG_FRAME_POSTCOPY_DISCARD_SYNC;
    }

    /* Small frames: payload into scratch (bounded), then checksum. */
    uint8_t *payload = r->scratch;
    if (header.type == MIG_FRAME_MACHINE_STATE) {
        /* Once. Its length is bounded by mig_header_decode; the decode
         * checks every section before it allocates. */
        if (r->machine_state != NULL)
            return fail(r, MIG_ERR_STREAM, "second machine-state frame");
        uint8_t *bytes = receive_whole_payload(r, input, raw, &header);
        if (bytes == NULL)
            return -1;
        struct machine_state *state = malloc(sizeof(*state));
        if (state == NULL) {
            free(bytes);
            return fail(r, MIG_ERR_INTERNAL, "out of memory for the machine state");
        }
        char reason[MIG_RECEIVER_ERROR_MAX - 64];
        int decoded = mig_receiver_decode_machine_state(r, bytes, (size_t)header.length, state, reason,
                                                        sizeof(reason));
        free(bytes);
        if (decoded != 0) {
            free(state);
            return fail(r, MIG_ERR_STREAM, "%s", reason);
        }
        r->machine_state = state;
        r->seq++;
        return MIG_FRAME_MACHINE_STATE;
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
        r->stream_started = true;
        break;
    }
    case MIG_FRAME_POSTCOPY_OPEN:
        if (r->got_postcopy_open)
            return fail(r, MIG_ERR_STREAM, "second postcopy-open frame");
        if (r->stream_started && !r->got_resume)
            return fail(r, MIG_ERR_STREAM, "postcopy-open frame after the stream began");
        if (mig_get_u64(payload) != 0)
            return fail(r, MIG_ERR_STREAM, "postcopy-open frame with reserved 0x%" PRIx64 " (must be 0)",
                        mig_get_u64(payload));
        r->got_postcopy_open = true;
        break;
    case MIG_FRAME_POSTCOPY_RESUME:
        if (mig_get_u64(payload) != 0)
            return fail(r, MIG_ERR_STREAM, "postcopy-resume frame with reserved 0x%" PRIx64 " (must be 0)",
                        mig_get_u64(payload));
        r->got_resume = true;
        break;
    case MIG_FRAME_POSTCOPY_SWITCH:
        if (!r->got_postcopy_open || r->got_postcopy_switch)
            return fail(r, MIG_ERR_STREAM, "postcopy-switch frame %s", r->got_postcopy_switch
                        ? "twice" : "before postcopy-open");
        if (mig_postcopy_switch_decode(payload, &r->postcopy_switch, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        if (r->machine_state == NULL)
            return fail(r, MIG_ERR_STREAM, "postcopy-switch frame but no machine state");
        if (!r->have_device)
            return fail(r, MIG_ERR_STREAM, "postcopy-switch frame but no device state");
        if (r->postcopy_switch.missing_pages > r->ram_bytes / MIG_PAGE_SIZE)
            return fail(r, MIG_ERR_STREAM, "postcopy-switch frame: %" PRIu64 " pages missing of %" PRIu64,
                        r->postcopy_switch.missing_pages, r->ram_bytes / MIG_PAGE_SIZE);
        r->got_postcopy_switch = true;
        break;
    case MIG_FRAME_SWITCH_OVER:
        if (r->have_switch_over)
            return fail(r, MIG_ERR_STREAM, "second switch-over frame");
        if (mig_switch_over_decode(payload, &r->switch_over, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        r->have_switch_over = true;
        break;
    case MIG_FRAME_DEVICE_STATE:
        if (mig_device_state_decode(payload, &r->device, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        if (r->device.vcpu_count != r->local.vcpu_count)
            return fail(r, MIG_ERR_STREAM, "device state for %" PRIu32 " vCPUs (this VM has %" PRIu32 ")",
                        r->device.vcpu_count, r->local.vcpu_count);
        /* Printable ASCII (checked by the decode) of the --workload
         * grammar: parsed as the command line would be, so the destination
         * never stores a spec it could not have been started with. */
        {
            struct workload_spec spec;
            char workload_error[256];
            if (workload_spec_parse(r->device.workload, &spec, workload_error, sizeof(workload_error)) != 0)
                return fail(r, MIG_ERR_STREAM, "device state: workload '%s': %s", r->device.workload,
                            workload_error);
        }
        r->have_device = true;
        break;
    case MIG_FRAME_END: {
        if (mig_end_decode(payload, &r->end, text, sizeof(text)) != 0)
            return fail(r, MIG_ERR_STREAM, "%s", text);
        if (r->machine_state == NULL)
            return fail(r, MIG_ERR_STREAM, "end frame but no machine state");
        if (!r->have_device)
            return fail(r, MIG_ERR_STREAM, "end frame but no device state");
        if ((r->end.flags & MIG_END_HAS_DIGEST) && !(r->peer.features & MIG_FEATURE_DIGEST))
            return fail(r, MIG_ERR_STREAM, "end frame carries a digest the hello did not announce");
        /* Announced means promised: without it the destination would
         * silently skip the verification the source asked for. */
        if (!(r->end.flags & MIG_END_HAS_DIGEST) && (r->peer.features & MIG_FEATURE_DIGEST))
            return fail(r, MIG_ERR_STREAM, "end frame carries no digest although the hello announced one");
        r->got_end = true;
        break;
    }
    case MIG_FRAME_ERROR: {
        uint32_t code;
        char message[MIG_RECEIVER_ERROR_MAX - 64];
        mig_error_decode(payload, (size_t)header.length, &code, message, sizeof(message));
        snprintf(r->error, sizeof(r->error), "the source aborted the migration: %s", message);
        /* This side's own code says what happened here: the peer gave up.
         * The source's code is its own view, kept apart (an unknown code
         * from a newer source is no reason to misreport). */
        r->error_code = MIG_ERR_CANCELLED;
        r->peer_error = true;
        r->peer_error_code = code;
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
            /* Bytes after END: those not read yet and those read ahead. */
            size_t after = buffer.length - buffer.position + (r->staged_end - r->staged_start);
            if (after != 0) {
                /* seq already names the frame after END. */
                fail(r, MIG_ERR_STREAM, "%zu bytes after the end frame", after);
                return -1;
            }
            return 0;
        }
    }
}

int mig_receiver_check_work(const struct mig_receiver *r, uint64_t input_bytes, char *error, size_t error_size)
{
    const struct mig_receiver_work *w = &r->work;
    uint64_t ram_words = page_bitmap_words(r->ram_bytes / MIG_PAGE_SIZE);
    if (w->runs > input_bytes / MIG_RUN_HEADER_SIZE) {
        snprintf(error, error_size, "%" PRIu64 " runs parsed from %" PRIu64 " bytes (at most one per %u bytes)",
                 w->runs, input_bytes, MIG_RUN_HEADER_SIZE);
        return -1;
    }
    if (w->pages_touched > 2 * (input_bytes / MIG_PAGE_SIZE)) {
        snprintf(error, error_size, "%" PRIu64 " pages touched for %" PRIu64 " bytes (at most 2 per %u bytes)",
                 w->pages_touched, input_bytes, MIG_PAGE_SIZE);
        return -1;
    }
    if (w->zero_words > w->memory_frames * ram_words + 2 * w->runs) {
        snprintf(error, error_size,
                 "%" PRIu64 " bitmap words examined by zero runs in %" PRIu64 " memory frames of %" PRIu64
                 " runs (at most %" PRIu64 " per frame + 2 per run)", w->zero_words, w->memory_frames, w->runs,
                 ram_words);
        return -1;
    }
    if (w->input_calls > 8 + input_bytes / 1024) {
        snprintf(error, error_size, "%" PRIu64 " input calls for %" PRIu64 " bytes (at most 8 + 1 per 1024 bytes)",
                 w->input_calls, input_bytes);
        return -1;
    }
    return 0;
}

/* The header of a small reply frame (ACK, ERROR, HELLO_ACK): valid for
 * frame `seq`, with a payload that fits `capacity`. */
static int decode_reply_header(const uint8_t *raw, uint64_t seq, struct mig_frame_header *header, size_t capacity,
                               char *error, size_t error_size)
{
    if (mig_header_decode(raw, seq, header, error, error_size) != 0)
        return -1;
    if (header->length > capacity) {
        snprintf(error, error_size, "frame %" PRIu64 ": unexpected %s frame of %" PRIu64 " bytes", seq,
                 mig_frame_type_name(header->type), header->length);
        return -1;
    }
    return 0;
}

int mig_read_small_frame(const struct mig_input *input, uint64_t seq, struct mig_frame_header *header,
                         uint8_t *buffer, size_t capacity, char *error, size_t error_size)
{
    uint8_t raw[MIG_HEADER_SIZE];
    int result = input->read(input->ctx, raw, sizeof(raw), false, error, error_size);
    if (result != 0)
        return -1;
    if (decode_reply_header(raw, seq, header, capacity, error, error_size) != 0)
        return -1;
    if (input->read(input->ctx, buffer, (size_t)header->length, false, error, error_size) != 0)
        return -1;
    if (mig_frame_checksum(raw, buffer, (size_t)header->length) != header->checksum) {
        snprintf(error, error_size, "frame %" PRIu64 ": %s frame checksum mismatch", seq,
                 mig_frame_type_name(header->type));
        return -1;
    }
    return 0;
}

int mig_read_reply(const struct mig_input *input, uint64_t seq, uint64_t started_ns, uint64_t deadline_ns,
                   const char *peer, struct mig_frame_header *header, uint8_t *buffer, size_t capacity,
                   size_t *received, char *error, size_t error_size)
{
    uint8_t raw[MIG_HEADER_SIZE];
    uint8_t *out = raw;
    size_t need = sizeof(raw);         /* of the current part: the header, then the payload */
    uint64_t total = sizeof(raw);      /* of the whole reply, once the header says */
    *received = 0;
    for (int part = 0; part < 2; part++) {
        size_t done = 0;
        while (done < need) {
            /* Never more than the frame: what follows is not ours. */
            ssize_t got = input->read_some(input->ctx, out + done, need - done, error, error_size);
            uint64_t now = input_now_ns(input);
            if (got > 0) {
                done += (size_t)got;
                *received += (size_t)got;
            } else if (got == 0) {
                snprintf(error, error_size, "%s closed the connection (truncated stream: %zu of %zu bytes)", peer,
                         done, need);
                return -1;
            }
            if (*received < total && now >= deadline_ns) {
                uint64_t elapsed = now - started_ns;
                snprintf(error, error_size,
                         "no complete reply from the %s within %" PRIu64 " ms: %zu of %" PRIu64 " bytes in %" PRIu64
                         " ms (%" PRIu64 " B/s)", peer, (deadline_ns - started_ns) / 1000000u, *received, total,
                         elapsed / 1000000u, rate_per_second(*received, elapsed));
                return MIG_REPLY_LATE;
            }
            if (got < 0)
                return -1;      /* read_some's message, before the deadline */
        }
        if (part == 0) {
            if (decode_reply_header(raw, seq, header, capacity, error, error_size) != 0)
                return -1;
            need = (size_t)header->length;
            total = sizeof(raw) + header->length;
            out = buffer;
        }
    }
    if (mig_frame_checksum(raw, buffer, (size_t)header->length) != header->checksum) {
        snprintf(error, error_size, "frame %" PRIu64 ": %s frame checksum mismatch", seq,
                 mig_frame_type_name(header->type));
        return -1;
    }
    return 0;
}
