/*
 * Migration wire format: pure encode / decode / validate functions.
 */
#include "migration/protocol.h"

#include "migration/machine_state.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
/* Runtime-dispatched XXH3 (SSE2/AVX2/AVX-512, libxxhash's x86 dispatcher):
 * the header redirects XXH3_* to the *_dispatch entry points, ~2x the
 * throughput of the baseline SSE2 build on AVX2 hosts. */
#include <xxh_x86dispatch.h>

const char *mig_frame_type_name(uint32_t type)
{
    switch (type) {
    case MIG_FRAME_HELLO: return "hello";
    case MIG_FRAME_HELLO_ACK: return "hello-ack";
    case MIG_FRAME_MEMORY: return "memory";
    case MIG_FRAME_ITERATION: return "iteration";
    case MIG_FRAME_RETIRED_VCPU_STATE: return "vcpu-state";
    case MIG_FRAME_DEVICE_STATE: return "device-state";
    case MIG_FRAME_END: return "end";
    case MIG_FRAME_ACK: return "ack";
    case MIG_FRAME_ERROR: return "error";
    case MIG_FRAME_MACHINE_STATE: return "machine-state";
    case MIG_FRAME_PROBE: return "probe";
    case MIG_FRAME_PROBE_ACK: return "probe-ack";
    case MIG_FRAME_SWITCH_OVER: return "switch-over";
    case MIG_FRAME_POSTCOPY_OPEN: return "postcopy-open";
    case MIG_FRAME_POSTCOPY_OPEN_ACK: return "postcopy-open-ack";
    case MIG_FRAME_POSTCOPY_DISCARD: return "postcopy-discard";
    case MIG_FRAME_POSTCOPY_SWITCH: return "postcopy-switch";
    case MIG_FRAME_POSTCOPY_RESUMED: return "postcopy-resumed";
    case MIG_FRAME_POSTCOPY_RESUME: return "postcopy-resume";
    case MIG_FRAME_POSTCOPY_DISCARD_SYNC: return "postcopy-discard-sync";
    case MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK: return "postcopy-discard-sync-ack";
    }
    return "unknown";
}

void mig_header_encode(uint8_t out[MIG_HEADER_SIZE], uint32_t type, uint64_t seq, uint64_t length)
{
    mig_put_u32(out + 0, type);
    mig_put_u32(out + 4, 0);
    mig_put_u64(out + 8, seq);
    mig_put_u64(out + 16, length);
    mig_put_u64(out + MIG_HEADER_CHECKSUM_OFFSET, 0);
}

uint64_t mig_frame_checksum(const uint8_t header[MIG_HEADER_SIZE], const void *payload, size_t length)
{
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, header, MIG_HEADER_CHECKSUM_OFFSET);
    if (length > 0)
        XXH3_64bits_update(&state, payload, length);
    return XXH3_64bits_digest(&state);
}

void mig_header_seal(uint8_t header[MIG_HEADER_SIZE], const void *payload, size_t length)
{
    mig_put_u64(header + MIG_HEADER_CHECKSUM_OFFSET, mig_frame_checksum(header, payload, length));
}

size_t mig_frame_encode(uint8_t *out, uint32_t type, uint64_t seq, const void *payload, size_t length)
{
    mig_header_encode(out, type, seq, length);
    if (length > 0)
        memcpy(out + MIG_HEADER_SIZE, payload, length);
    mig_header_seal(out, out + MIG_HEADER_SIZE, length);
    return MIG_HEADER_SIZE + length;
}

bool mig_frame_length_bounds(uint32_t type, uint64_t *min, uint64_t *max)
{
    switch (type) {
    case MIG_FRAME_HELLO:
    case MIG_FRAME_HELLO_ACK:
        *min = *max = MIG_HELLO_SIZE;
        return true;
    case MIG_FRAME_MEMORY:
        *min = MIG_RUN_HEADER_SIZE;
        *max = MIG_MEMORY_MAX_PAYLOAD;
        return true;
    case MIG_FRAME_ITERATION:
        *min = *max = MIG_ITERATION_SIZE;
        return true;
    case MIG_FRAME_DEVICE_STATE:
        *min = *max = MIG_DEVICE_STATE_SIZE;
        return true;
    case MIG_FRAME_END:
        *min = *max = MIG_END_SIZE;
        return true;
    case MIG_FRAME_ACK:
        *min = *max = MIG_ACK_SIZE;
        return true;
    case MIG_FRAME_ERROR:
        *min = 4;
        *max = 4 + MIG_ERROR_MAX_MESSAGE;
        return true;
    case MIG_FRAME_MACHINE_STATE:
        /* Its own decoder checks every section's length. */
        *min = MACHINE_STATE_HEADER_SIZE;
        *max = MIG_MACHINE_STATE_MAX;
        return true;
    case MIG_FRAME_PROBE:
        *min = MIG_PROBE_HEADER_SIZE;
        *max = MIG_PROBE_MAX;
        return true;
    case MIG_FRAME_PROBE_ACK:
        *min = *max = MIG_PROBE_ACK_SIZE;
        return true;
    case MIG_FRAME_POSTCOPY_OPEN:
    case MIG_FRAME_POSTCOPY_OPEN_ACK:
    case MIG_FRAME_POSTCOPY_RESUME:
        *min = *max = MIG_POSTCOPY_OPEN_SIZE;
        return true;
    case MIG_FRAME_POSTCOPY_DISCARD:
        *min = MIG_POSTCOPY_DISCARD_RUN;
        *max = MIG_POSTCOPY_DISCARD_RUN * MIG_POSTCOPY_DISCARD_MAX_RUNS;
        return true;
    case MIG_FRAME_POSTCOPY_SWITCH:
        *min = *max = MIG_POSTCOPY_SWITCH_SIZE;
        return true;
    case MIG_FRAME_POSTCOPY_RESUMED:
        *min = *max = MIG_POSTCOPY_RESUMED_SIZE;
        return true;
    case MIG_FRAME_POSTCOPY_DISCARD_SYNC:
    case MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK:
        *min = *max = MIG_POSTCOPY_DISCARD_SYNC_SIZE;
        return true;
    case MIG_FRAME_SWITCH_OVER:
        *min = *max = MIG_SWITCH_OVER_SIZE;
        return true;
    }
    return false;
}

int mig_header_decode(const uint8_t in[MIG_HEADER_SIZE], uint64_t expected_seq,
                      struct mig_frame_header *out, char *error, size_t error_size)
{
    out->type = mig_get_u32(in + 0);
    out->flags = mig_get_u32(in + 4);
    out->seq = mig_get_u64(in + 8);
    out->length = mig_get_u64(in + 16);
    out->checksum = mig_get_u64(in + MIG_HEADER_CHECKSUM_OFFSET);
    uint64_t min, max;
    if (out->type == MIG_FRAME_RETIRED_VCPU_STATE) {
        snprintf(error, error_size, "frame %" PRIu64 ": vcpu-state frame (type 5): retired with state format 1, "
                 "vCPU state travels in the machine-state frame", expected_seq);
        return -1;
    }
    if (!mig_frame_length_bounds(out->type, &min, &max)) {
        snprintf(error, error_size, "frame %" PRIu64 ": unknown frame type %" PRIu32, expected_seq, out->type);
        return -1;
    }
    if (out->flags != 0) {
        snprintf(error, error_size, "frame %" PRIu64 ": %s frame has unknown flags 0x%" PRIx32, expected_seq,
                 mig_frame_type_name(out->type), out->flags);
        return -1;
    }
    if (out->seq != expected_seq) {
        snprintf(error, error_size, "frame %" PRIu64 ": sequence number %" PRIu64 " (frames lost or reordered)",
                 expected_seq, out->seq);
        return -1;
    }
    if (out->length < min || out->length > max) {
        if (min == max)
            snprintf(error, error_size, "frame %" PRIu64 ": %s frame length %" PRIu64 " (must be %" PRIu64 ")",
                     expected_seq, mig_frame_type_name(out->type), out->length, min);
        else
            snprintf(error, error_size,
                     "frame %" PRIu64 ": %s frame length %" PRIu64 " out of bounds [%" PRIu64 ", %" PRIu64 "]",
                     expected_seq, mig_frame_type_name(out->type), out->length, min, max);
        return -1;
    }
    return 0;
}

/* ---- hello ---------------------------------------------------------------- */

void mig_hello_encode(const struct mig_hello *h, uint8_t out[MIG_HELLO_SIZE])
{
    memset(out, 0, MIG_HELLO_SIZE);
    memcpy(out, MIG_MAGIC, 8);
    mig_put_u32(out + 8, h->version);
    mig_put_u32(out + 12, h->page_size);
    mig_put_u64(out + 16, h->memory_bytes);
    mig_put_u32(out + 24, h->vcpu_count);
    mig_put_u32(out + 28, h->slot_count);
    for (unsigned i = 0; i < MIG_MAX_SLOTS; i++) {
        mig_put_u64(out + 32 + 24 * i, h->slots[i].gpa);
        mig_put_u64(out + 40 + 24 * i, h->slots[i].size);
        mig_put_u64(out + 48 + 24 * i, h->slots[i].ram_offset);
    }
    mig_put_u32(out + 80, h->legacy_state_size);
    mig_put_u32(out + 84, h->state_format);
    mig_put_u64(out + 88, h->features);
    mig_put_u32(out + 96, h->abi_version);
    mig_put_u32(out + 100, 0);
}

int mig_hello_decode(const uint8_t *in, size_t length, struct mig_hello *h, char *error, size_t error_size)
{
    memset(h, 0, sizeof(*h));
    if (length != MIG_HELLO_SIZE) {
        snprintf(error, error_size, "hello of %zu bytes (must be %u)", length, MIG_HELLO_SIZE);
        return -1;
    }
    if (memcmp(in, MIG_MAGIC, 8) != 0) {
        snprintf(error, error_size, "not a ringvm migration stream (bad magic)");
        return -1;
    }
    h->version = mig_get_u32(in + 8);
    h->page_size = mig_get_u32(in + 12);
    h->memory_bytes = mig_get_u64(in + 16);
    h->vcpu_count = mig_get_u32(in + 24);
    h->slot_count = mig_get_u32(in + 28);
    for (unsigned i = 0; i < MIG_MAX_SLOTS; i++) {
        h->slots[i].gpa = mig_get_u64(in + 32 + 24 * i);
        h->slots[i].size = mig_get_u64(in + 40 + 24 * i);
        h->slots[i].ram_offset = mig_get_u64(in + 48 + 24 * i);
    }
    h->legacy_state_size = mig_get_u32(in + 80);
    h->state_format = mig_get_u32(in + 84);
    h->features = mig_get_u64(in + 88);
    h->abi_version = mig_get_u32(in + 96);
    uint32_t reserved = mig_get_u32(in + 100);
    if (reserved != 0) {
        /* Reserved means "must be 0": a peer that sets it speaks a format
         * this side does not know. */
        snprintf(error, error_size, "hello reserved field is 0x%" PRIx32 " (must be 0)", reserved);
        return -1;
    }
    return 0;
}

static void mib_text(uint64_t bytes, char *out, size_t size)
{
    if (bytes % (1ull << 20) == 0)
        snprintf(out, size, "%" PRIu64 " MiB", bytes >> 20);
    else
        snprintf(out, size, "%" PRIu64 " bytes", bytes);
}

int mig_hello_compare(const struct mig_hello *local, const struct mig_hello *peer, bool local_is_source,
                      char *error, size_t error_size)
{
    const struct mig_hello *src = local_is_source ? local : peer;
    const struct mig_hello *dst = local_is_source ? peer : local;
    if (src->version != dst->version) {
        snprintf(error, error_size, "protocol version differs: source %" PRIu32 ", destination %" PRIu32,
                 src->version, dst->version);
        return -1;
    }
    if (src->page_size != dst->page_size) {
        snprintf(error, error_size, "page size differs: source %" PRIu32 ", destination %" PRIu32,
                 src->page_size, dst->page_size);
        return -1;
    }
    if (src->memory_bytes != dst->memory_bytes) {
        char a[64], b[64];
        mib_text(src->memory_bytes, a, sizeof(a));
        mib_text(dst->memory_bytes, b, sizeof(b));
        snprintf(error, error_size, "memory size differs: source %s, destination %s", a, b);
        return -1;
    }
    if (src->vcpu_count != dst->vcpu_count) {
        snprintf(error, error_size, "vCPU count differs: source %" PRIu32 ", destination %" PRIu32,
                 src->vcpu_count, dst->vcpu_count);
        return -1;
    }
    if (src->slot_count != dst->slot_count ||
        memcmp(src->slots, dst->slots, sizeof(src->slots[0]) * (src->slot_count < MIG_MAX_SLOTS ? src->slot_count
                                                                                             : MIG_MAX_SLOTS)) != 0) {
        snprintf(error, error_size, "memory layout differs: source %" PRIu32 " slot(s), destination %" PRIu32
                 " slot(s) at different addresses", src->slot_count, dst->slot_count);
        return -1;
    }
    if (src->state_format != dst->state_format) {
        snprintf(error, error_size,
                 "state format differs: source %" PRIu32 ", destination %" PRIu32 " (1: a vcpu-state frame per "
                 "vCPU, ringvm before 2026-12; 2: one machine-state frame)", src->state_format, dst->state_format);
        return -1;
    }
    if (src->legacy_state_size != 0 || dst->legacy_state_size != 0) {
        bool from_source = src->legacy_state_size != 0;
        snprintf(error, error_size, "the %s's hello gives a vCPU state size (%" PRIu32 " bytes) with state format 2 "
                 "(must be 0)", from_source ? "source" : "destination",
                 from_source ? src->legacy_state_size : dst->legacy_state_size);
        return -1;
    }
    if (src->abi_version != dst->abi_version) {
        snprintf(error, error_size, "guest ABI version differs: source %" PRIu32 ", destination %" PRIu32,
                 src->abi_version, dst->abi_version);
        return -1;
    }
    uint64_t unknown = peer->features & ~MIG_FEATURES_KNOWN;
    if (unknown != 0) {
        snprintf(error, error_size, "%s asks for unknown features 0x%" PRIx64,
                 local_is_source ? "destination" : "source", unknown);
        return -1;
    }
    return 0;
}

/* ---- small frames ----------------------------------------------------------- */

void mig_iteration_encode(const struct mig_iteration *it, uint8_t out[MIG_ITERATION_SIZE])
{
    mig_put_u64(out, it->iteration);
    mig_put_u64(out + 8, it->pages);
    mig_put_u64(out + 16, it->transferred);
}

void mig_iteration_decode(const uint8_t in[MIG_ITERATION_SIZE], struct mig_iteration *out)
{
    out->iteration = mig_get_u64(in);
    out->pages = mig_get_u64(in + 8);
    out->transferred = mig_get_u64(in + 16);
}

void mig_run_encode(const struct mig_run *run, uint8_t out[MIG_RUN_HEADER_SIZE])
{
    mig_put_u64(out, run->ram_offset);
    mig_put_u32(out + 8, run->pages);
    mig_put_u32(out + 12, run->flags);
}

void mig_run_decode(const uint8_t in[MIG_RUN_HEADER_SIZE], struct mig_run *out)
{
    out->ram_offset = mig_get_u64(in);
    out->pages = mig_get_u32(in + 8);
    out->flags = mig_get_u32(in + 12);
}

int mig_run_validate(const struct mig_run *run, uint64_t ram_bytes, uint64_t payload_left, char *error,
                     size_t error_size)
{
    if (run->flags & ~MIG_RUN_ZERO) {
        snprintf(error, error_size, "memory run at offset 0x%" PRIx64 " has unknown flags 0x%" PRIx32,
                 run->ram_offset, run->flags);
        return -1;
    }
    if (run->pages == 0 || run->pages > MIG_RUN_MAX_PAGES) {
        snprintf(error, error_size, "memory run at offset 0x%" PRIx64 " has %" PRIu32 " pages (must be 1..%u)",
                 run->ram_offset, run->pages, MIG_RUN_MAX_PAGES);
        return -1;
    }
    if (run->ram_offset % MIG_PAGE_SIZE != 0) {
        snprintf(error, error_size, "memory run at offset 0x%" PRIx64 " is not page aligned", run->ram_offset);
        return -1;
    }
    uint64_t bytes = (uint64_t)run->pages * MIG_PAGE_SIZE;
    if (run->ram_offset >= ram_bytes || bytes > ram_bytes - run->ram_offset) {
        snprintf(error, error_size,
                 "memory run at offset 0x%" PRIx64 " + %" PRIu64 " exceeds guest RAM (%" PRIu64 " bytes)",
                 run->ram_offset, bytes, ram_bytes);
        return -1;
    }
    if (!(run->flags & MIG_RUN_ZERO) && bytes > payload_left) {
        snprintf(error, error_size,
                 "memory run at offset 0x%" PRIx64 " claims %" PRIu64 " data bytes but the frame has %" PRIu64
                 " left", run->ram_offset, bytes, payload_left);
        return -1;
    }
    return 0;
}

void mig_device_state_encode(const struct mig_device_state *d, uint8_t out[MIG_DEVICE_STATE_SIZE])
{
    mig_put_u32(out, d->version);
    mig_put_u32(out + 4, d->vcpu_count);
    mig_put_u32(out + 8, d->serial_lcr);
    mig_put_u32(out + 12, (uint32_t)d->last_exception_vector);
    mig_put_u64(out + 16, d->ledger_mismatches);
    for (unsigned i = 0; i < MIG_MAX_VCPUS; i++)
        mig_put_u32(out + 24 + 4 * i, d->guest_phase[i]);
    uint8_t *workload = out + 24 + 4 * MIG_MAX_VCPUS;
    memset(workload, 0, MIG_WORKLOAD_TEXT_SIZE);
    memcpy(workload, d->workload, strnlen(d->workload, MIG_WORKLOAD_TEXT_SIZE - 1));
}

int mig_device_state_decode(const uint8_t in[MIG_DEVICE_STATE_SIZE], struct mig_device_state *d, char *error,
                            size_t error_size)
{
    d->version = mig_get_u32(in);
    d->vcpu_count = mig_get_u32(in + 4);
    d->serial_lcr = mig_get_u32(in + 8);
    d->last_exception_vector = (int32_t)mig_get_u32(in + 12);
    d->ledger_mismatches = mig_get_u64(in + 16);
    for (unsigned i = 0; i < MIG_MAX_VCPUS; i++)
        d->guest_phase[i] = mig_get_u32(in + 24 + 4 * i);
    memcpy(d->workload, in + 24 + 4 * MIG_MAX_VCPUS, MIG_WORKLOAD_TEXT_SIZE);
    if (d->version != 2) {
        snprintf(error, error_size, "device state version %" PRIu32 " (expected 2)", d->version);
        return -1;
    }
    const char *end = memchr(d->workload, '\0', MIG_WORKLOAD_TEXT_SIZE);
    if (end == NULL) {
        snprintf(error, error_size, "device state: workload text is not NUL-terminated");
        return -1;
    }
    /* The text reaches logs, stderr and JSON (vm.info, migration.progress):
     * printable ASCII only, so no terminal escape and no invalid UTF-8 ever
     * leaves this function. The offending byte is named, never echoed. */
    size_t length = (size_t)(end - d->workload);
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)d->workload[i];
        if (c < 0x20 || c > 0x7e) {
            snprintf(error, error_size,
                     "device state: workload text has byte 0x%02x at offset %zu (printable ASCII only)", c, i);
            return -1;
        }
    }
    for (size_t i = length + 1; i < MIG_WORKLOAD_TEXT_SIZE; i++) {
        if (d->workload[i] != '\0') {
            snprintf(error, error_size, "device state: workload text has non-zero padding at offset %zu", i);
            return -1;
        }
    }
    if (d->vcpu_count > MIG_MAX_VCPUS) {
        snprintf(error, error_size, "device state for %" PRIu32 " vCPUs (at most %u)", d->vcpu_count,
                 MIG_MAX_VCPUS);
        return -1;
    }
    if (d->serial_lcr > 0xff) {
        snprintf(error, error_size, "device state: serial LCR 0x%" PRIx32 " out of range", d->serial_lcr);
        return -1;
    }
    return 0;
}

void mig_end_encode(const struct mig_end *end, uint8_t out[MIG_END_SIZE])
{
    mig_put_u64(out, end->flags);
    memset(out + 8, '0', MIG_DIGEST_HEX);
    if (end->flags & MIG_END_HAS_DIGEST)
        memcpy(out + 8, end->digest, strnlen(end->digest, MIG_DIGEST_HEX));
    mig_put_u64(out + 40, end->timestamp_ns);
    mig_put_u64(out + 48, end->pages);
}

int mig_end_decode(const uint8_t in[MIG_END_SIZE], struct mig_end *end, char *error, size_t error_size)
{
    end->flags = mig_get_u64(in);
    memcpy(end->digest, in + 8, MIG_DIGEST_HEX);
    end->digest[MIG_DIGEST_HEX] = '\0';
    end->timestamp_ns = mig_get_u64(in + 40);
    end->pages = mig_get_u64(in + 48);
    if (end->flags & ~MIG_END_FLAGS_KNOWN) {
        snprintf(error, error_size, "end/ack flags 0x%" PRIx64 " unknown", end->flags);
        return -1;
    }
    for (unsigned i = 0; i < MIG_DIGEST_HEX; i++) {
        char c = end->digest[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            snprintf(error, error_size, "end/ack digest is not 32 lowercase hex digits");
            return -1;
        }
    }
    if (!(end->flags & MIG_END_HAS_DIGEST))
        end->digest[0] = '\0';
    return 0;
}

void mig_probe_header_encode(const struct mig_probe_header *probe, uint8_t out[MIG_PROBE_HEADER_SIZE])
{
    mig_put_u32(out, probe->kind);
    mig_put_u32(out + 4, probe->count);
}

int mig_probe_header_decode(const uint8_t in[MIG_PROBE_HEADER_SIZE], struct mig_probe_header *out, char *error,
                            size_t error_size)
{
    out->kind = mig_get_u32(in);
    out->count = mig_get_u32(in + 4);
    if (out->kind == MIG_PROBE_MACHINE_STATE && out->count == 0)
        return 0;
    snprintf(error, error_size, "probe of kind %" PRIu32 " with count %" PRIu32 " (the one kind: 1 machine state "
             "with count 0)", out->kind, out->count);
    return -1;
}

void mig_probe_ack_encode(const struct mig_probe_ack *ack, uint8_t out[MIG_PROBE_ACK_SIZE])
{
    mig_put_u64(out, ack->destination_ns);
    mig_put_u32(out + 8, ack->status);
    mig_put_u32(out + 12, 0);
}

int mig_probe_ack_decode(const uint8_t in[MIG_PROBE_ACK_SIZE], struct mig_probe_ack *out, char *error,
                         size_t error_size)
{
    out->destination_ns = mig_get_u64(in);
    out->status = mig_get_u32(in + 8);
    uint32_t reserved = mig_get_u32(in + 12);
    if ((out->status != MIG_PROBE_DECODED && out->status != MIG_PROBE_UNDECODABLE) || reserved != 0) {
        snprintf(error, error_size, "probe-ack with status %" PRIu32 " and reserved %" PRIu32 " (status 0 or 1, "
                 "reserved 0)", out->status, reserved);
        return -1;
    }
    return 0;
}

void mig_switch_over_encode(const struct mig_switch_over *switch_over, uint8_t out[MIG_SWITCH_OVER_SIZE])
{
    mig_put_u64(out, switch_over->transfer_us);
    mig_put_u64(out + 8, switch_over->digest_pass_us);
    mig_put_u64(out + 16, switch_over->learned_us);
    mig_put_u64(out + 24, switch_over->deviation_us);
    mig_put_u32(out + 32, switch_over->learned_count);
    mig_put_u32(out + 36, 0);
}

int mig_switch_over_decode(const uint8_t in[MIG_SWITCH_OVER_SIZE], struct mig_switch_over *out, char *error,
                           size_t error_size)
{
    out->transfer_us = mig_get_u64(in);
    out->digest_pass_us = mig_get_u64(in + 8);
    out->learned_us = mig_get_u64(in + 16);
    out->deviation_us = mig_get_u64(in + 24);
    out->learned_count = mig_get_u32(in + 32);
    uint32_t reserved = mig_get_u32(in + 36);
    if (reserved != 0 || (out->learned_count == 0 && (out->learned_us != 0 || out->deviation_us != 0))) {
        snprintf(error, error_size, "switch-over frame with reserved %" PRIu32 ", learned %" PRIu64 " us from %"
                 PRIu32 " migrations (reserved 0; nothing learned from none)", reserved, out->learned_us,
                 out->learned_count);
        return -1;
    }
    return 0;
}

void mig_discard_run_encode(const struct mig_discard_run *run, uint8_t out[MIG_POSTCOPY_DISCARD_RUN])
{
    mig_put_u64(out, run->ram_offset);
    mig_put_u64(out + 8, run->pages);
}

int mig_discard_decode(const uint8_t *in, size_t length, uint64_t ram_bytes, uint64_t after,
                       struct mig_discard_run *out, char *error, size_t error_size)
{
    if (length == 0 || length % MIG_POSTCOPY_DISCARD_RUN != 0 ||
        length / MIG_POSTCOPY_DISCARD_RUN > MIG_POSTCOPY_DISCARD_MAX_RUNS) {
        snprintf(error, error_size, "postcopy-discard frame of %zu bytes (1 to %u runs of %u bytes)", length,
                 MIG_POSTCOPY_DISCARD_MAX_RUNS, MIG_POSTCOPY_DISCARD_RUN);
        return -1;
    }
    size_t count = length / MIG_POSTCOPY_DISCARD_RUN;
    uint64_t ram_pages = ram_bytes / MIG_PAGE_SIZE;
    for (size_t i = 0; i < count; i++) {
        struct mig_discard_run run = { mig_get_u64(in + i * MIG_POSTCOPY_DISCARD_RUN),
                                       mig_get_u64(in + i * MIG_POSTCOPY_DISCARD_RUN + 8) };
        if (run.ram_offset % MIG_PAGE_SIZE != 0 || run.pages == 0 || run.ram_offset / MIG_PAGE_SIZE >= ram_pages ||
            run.pages > ram_pages - run.ram_offset / MIG_PAGE_SIZE) {
            snprintf(error, error_size, "postcopy-discard run %zu: offset 0x%" PRIx64 ", %" PRIu64 " pages: not "
                     "page aligned, empty or outside guest RAM (%" PRIu64 " pages)", i, run.ram_offset, run.pages,
                     ram_pages);
            return -1;
        }
        if (run.ram_offset < after) {
            snprintf(error, error_size, "postcopy-discard run %zu at 0x%" PRIx64 " overlaps or precedes the run "
                     "before it (which ends at 0x%" PRIx64 ")", i, run.ram_offset, after);
            return -1;
        }
        after = run.ram_offset + run.pages * MIG_PAGE_SIZE;
        out[i] = run;
    }
    return (int)count;
}

void mig_postcopy_switch_encode(const struct mig_postcopy_switch *sw, uint8_t out[MIG_POSTCOPY_SWITCH_SIZE])
{
    mig_put_u64(out, sw->pause_timestamp_ns);
    mig_put_u32(out + 8, sw->flags);
    mig_put_u32(out + 12, 0);
    mig_put_u64(out + 16, sw->missing_pages);
}

int mig_postcopy_switch_decode(const uint8_t in[MIG_POSTCOPY_SWITCH_SIZE], struct mig_postcopy_switch *out,
                               char *error, size_t error_size)
{
    out->pause_timestamp_ns = mig_get_u64(in);
    out->flags = mig_get_u32(in + 8);
    uint32_t reserved = mig_get_u32(in + 12);
    out->missing_pages = mig_get_u64(in + 16);
    if (reserved != 0 || (out->flags & ~(uint32_t)MIG_END_GUEST_PAUSED) != 0) {
        snprintf(error, error_size, "postcopy-switch frame with flags 0x%" PRIx32 ", reserved %" PRIu32
                 " (known flags 0x%x; reserved 0)", out->flags, reserved, (unsigned)MIG_END_GUEST_PAUSED);
        return -1;
    }
    return 0;
}

const char *mig_error_code_name(uint32_t code)
{
    switch (code) {
    case MIG_ERR_CONFIG: return "config mismatch";
    case MIG_ERR_STREAM: return "malformed stream";
    case MIG_ERR_CANCELLED: return "cancelled";
    case MIG_ERR_INTERNAL: return "internal failure";
    case MIG_ERR_DIGEST: return "digest mismatch";
    }
    return "unknown code";
}

size_t mig_error_encode(uint32_t code, const char *message, uint8_t out[4 + MIG_ERROR_MAX_MESSAGE])
{
    mig_put_u32(out, code);
    size_t length = strnlen(message, MIG_ERROR_MAX_MESSAGE);
    memcpy(out + 4, message, length);
    return 4 + length;
}

void mig_error_decode(const uint8_t *in, size_t length, uint32_t *code, char *message, size_t message_size)
{
    *code = length >= 4 ? mig_get_u32(in) : 0;
    size_t text = length >= 4 ? length - 4 : 0;
    if (message_size == 0)
        return;
    if (text > message_size - 1)
        text = message_size - 1;
    for (size_t i = 0; i < text; i++) {
        unsigned char c = in[4 + i];
        message[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    message[text] = '\0';
}
