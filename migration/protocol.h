/*
 * The migration wire format (documented byte by byte in
 * docs/migration-protocol.md).
 *
 * A stream is a sequence of frames in each direction. Every frame is a
 * 32-byte header followed by `length` payload bytes:
 *
 *   off size field
 *    0   4   type       enum mig_frame_type
 *    4   4   flags      0 (reserved; a non-zero value is rejected)
 *    8   8   seq        0, 1, 2, ... per direction (detects lost frames)
 *   16   8   length     payload bytes, bounded per type (mig_frame_max_length)
 *   24   8   checksum   XXH3-64 (seed 0) of header bytes [0, 24) then the payload
 *
 * All integers are little-endian. Everything here is a pure function of
 * its arguments (no I/O, no globals), so the unit tests and the fuzzer call
 * it directly.
 */
#ifndef RINGVM_MIGRATION_PROTOCOL_H
#define RINGVM_MIGRATION_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_PROTOCOL_VERSION    2   /* 2: DEVICE_STATE carries the workload */
/* How vCPU and machine state travel (the hello's state_format): 2 = one
 * MACHINE_STATE frame (machine state v2) for either guest kind. Format 1
 * (a VCPU_STATE frame per vCPU holding struct vcpu_state as bytes, readable
 * only by the same build) is refused at the handshake. */
#define MIG_STATE_FORMAT        2u
#define MIG_MAGIC               "RINGVMIG"      /* 8 bytes, no NUL on the wire */
#define MIG_PAGE_SIZE           4096u
#define MIG_HEADER_SIZE         32u
#define MIG_HEADER_CHECKSUM_OFFSET 24u  /* the checksum covers header[0, 24), then the payload */
#define MIG_MAX_SLOTS           2u
#define MIG_MAX_VCPUS           64u

enum mig_frame_type {
    MIG_FRAME_HELLO = 1,        /* source -> destination: configuration */
    MIG_FRAME_HELLO_ACK = 2,    /* destination -> source: its configuration, accepted */
    MIG_FRAME_MEMORY = 3,       /* source -> destination: runs of pages */
    MIG_FRAME_ITERATION = 4,    /* source -> destination: iteration marker */
    /* 5 was VCPU_STATE (state format 1: one struct vcpu_state per vCPU, the
       built-in guest's until 2026-12); retired: every guest's state travels
       in one MACHINE_STATE frame. A type-5 frame is refused by name. */
    MIG_FRAME_RETIRED_VCPU_STATE = 5,
    MIG_FRAME_DEVICE_STATE = 6, /* source -> destination: serial, guest phases, ... */
    MIG_FRAME_END = 7,          /* source -> destination: nothing follows */
    MIG_FRAME_ACK = 8,          /* destination -> source: resumed */
    MIG_FRAME_ERROR = 9,        /* either direction: refusal / failure, then close */
    /* 10 and 11 are the post-copy return path's (migration/postcopy_return.h). */
    MIG_FRAME_MACHINE_STATE = 12, /* source -> destination: the guest's machine state
                                     v2 (migration/machine_state.h), either guest kind */
    MIG_FRAME_PROBE = 13,       /* source -> destination, right after the hello (only when both
                                   announce MIG_FEATURE_SWITCH_PROBE): a dry run of the state
                                   path, the state as the switch-over would send it */
    MIG_FRAME_PROBE_ACK = 14,   /* destination -> source: the probe was read and decoded */
    MIG_FRAME_SWITCH_OVER = 15, /* source -> destination, after the state, before END (with
                                   MIG_FEATURE_SWITCH_PROBE): what the switch-over cost model
                                   knows, so the destination learns it (switch_over.h) */
    /* Post-copy (only when the destination announces MIG_FEATURE_POSTCOPY;
       docs/migration-protocol.md, "Post-copy"): */
    MIG_FRAME_POSTCOPY_OPEN = 16,     /* source -> destination: accept my urgent channel now */
    MIG_FRAME_POSTCOPY_OPEN_ACK = 17, /* destination -> source: the urgent channel is accepted */
    MIG_FRAME_POSTCOPY_DISCARD = 18,  /* source -> destination, after the state: page ranges the
                                         destination must drop (stale or never sent) */
    MIG_FRAME_POSTCOPY_SWITCH = 19,   /* source -> destination: run the guest now; RAM follows */
    MIG_FRAME_POSTCOPY_RESUMED = 20,  /* destination -> source, urgent channel: the guest runs here */
    MIG_FRAME_POSTCOPY_RESUME = 21,   /* source -> destination, right after the hello of a recovery
                                         connection: continue the paused post-copy (the destination
                                         answers with RECEIVED_BITMAP frames) */
    /* Hybrid's early discard (only when the destination announces
       MIG_FEATURE_EARLY_DISCARD): the stale pages known before the pause are
       discarded while the guest still runs on the source. */
    MIG_FRAME_POSTCOPY_DISCARD_SYNC = 22,     /* source -> destination: the DISCARD frames so far held this
                                                 many pages; answer once they are gone, then a new
                                                 ascending sequence of DISCARD frames may follow */
    MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK = 23, /* destination -> source: those pages are discarded */
    MIG_FRAME_TYPE_MAX = 23,
};

const char *mig_frame_type_name(uint32_t type);

/* Features (hello.features). */
#define MIG_FEATURE_ZERO_PAGES  0x1ull   /* memory runs may carry MIG_RUN_ZERO */
#define MIG_FEATURE_DIGEST      0x2ull   /* END carries the source digest; the
                                            destination verifies before resuming */
#define MIG_FEATURE_SWITCH_PROBE 0x4ull  /* PROBE/PROBE_ACK after the hello, SWITCH_OVER
                                            before END (migration/switch_over.h) */
#define MIG_FEATURE_POSTCOPY    0x8ull   /* the destination can take post-copy (userfaultfd works
                                            there): frames 16-20 and the urgent channel */
#define MIG_FEATURE_EARLY_DISCARD 0x10ull /* with MIG_FEATURE_POSTCOPY: the destination takes DISCARD frames
                                            before the pause, ended by one POSTCOPY_DISCARD_SYNC it answers */
#define MIG_FEATURES_KNOWN      (MIG_FEATURE_ZERO_PAGES | MIG_FEATURE_DIGEST | MIG_FEATURE_SWITCH_PROBE | \
                                 MIG_FEATURE_POSTCOPY | MIG_FEATURE_EARLY_DISCARD)

/* Payload sizes and bounds. */
#define MIG_HELLO_SIZE          104u
#define MIG_ITERATION_SIZE      24u
#define MIG_WORKLOAD_TEXT_SIZE  128u
#define MIG_DEVICE_STATE_SIZE   (24u + 4u * MIG_MAX_VCPUS + MIG_WORKLOAD_TEXT_SIZE)
#define MIG_END_SIZE            56u
#define MIG_ACK_SIZE            56u
#define MIG_ERROR_MAX_MESSAGE   1024u
/* A machine-state frame's payload (64 vCPUs with AMX-sized XSAVE areas and
 * 1024 MSRs each stay well below it). */
#define MIG_MACHINE_STATE_MAX   (8u << 20)
#define MIG_RUN_HEADER_SIZE     16u
/* PROBE: kind, count, then the state as the switch-over would send it. */
#define MIG_PROBE_HEADER_SIZE   8u
#define MIG_PROBE_MAX           (MIG_PROBE_HEADER_SIZE + MIG_MACHINE_STATE_MAX)
#define MIG_PROBE_ACK_SIZE      16u
#define MIG_SWITCH_OVER_SIZE    40u
#define MIG_POSTCOPY_OPEN_SIZE      8u
#define MIG_POSTCOPY_DISCARD_RUN    16u
#define MIG_POSTCOPY_DISCARD_MAX_RUNS 4096u
#define MIG_POSTCOPY_SWITCH_SIZE    24u
#define MIG_POSTCOPY_DISCARD_SYNC_SIZE 8u   /* u64 pages; the ACK echoes it */
#define MIG_POSTCOPY_RESUMED_SIZE   8u
/* A memory frame's payload never exceeds this (the sender uses less). */
#define MIG_MEMORY_MAX_PAYLOAD  (64u << 20)
/* Pages in one run (a run never crosses this; keeps page_count * 4096 in 32 bits). */
#define MIG_RUN_MAX_PAGES       (MIG_MEMORY_MAX_PAYLOAD / MIG_PAGE_SIZE)

#define MIG_RUN_ZERO            0x1u     /* all pages of the run are zero: no data */

#define MIG_DIGEST_HEX          32u      /* XXH3-128, canonical, lowercase hex */

struct mig_slot {
    uint64_t gpa;
    uint64_t size;
    uint64_t ram_offset;
};

struct mig_hello {
    uint32_t version;
    uint32_t page_size;
    uint64_t memory_bytes;
    uint32_t vcpu_count;
    uint32_t slot_count;
    struct mig_slot slots[MIG_MAX_SLOTS];
    uint32_t legacy_state_size; /* state format 1's sizeof(struct vcpu_state); 0 in format 2 */
    uint32_t state_format;      /* MIG_STATE_FORMAT */
    uint64_t features;
    uint32_t abi_version;
};

struct mig_frame_header {
    uint32_t type;
    uint32_t flags;
    uint64_t seq;
    uint64_t length;
    uint64_t checksum;
};

struct mig_run {
    uint64_t ram_offset;
    uint32_t pages;
    uint32_t flags;             /* MIG_RUN_ZERO */
};

struct mig_iteration {
    uint64_t iteration;
    uint64_t pages;             /* pages the source sends in this iteration */
    uint64_t transferred;       /* bytes sent so far (informational) */
};

struct mig_device_state {
    uint32_t version;           /* 2 */
    uint32_t vcpu_count;
    uint32_t serial_lcr;
    int32_t last_exception_vector;
    uint64_t ledger_mismatches;
    uint32_t guest_phase[MIG_MAX_VCPUS];
    char workload[MIG_WORKLOAD_TEXT_SIZE];  /* canonical --workload text, NUL-terminated */
};

/* PROBE's kinds: what its body holds. */
#define MIG_PROBE_MACHINE_STATE 1u      /* one machine-state encoding */
/* Kind 2 (count vcpu-state payloads) went with state format 1. */

struct mig_probe_header {
    uint32_t kind;
    uint32_t count;             /* 0 (kind 2's vCPU count, retired) */
};

/* PROBE_ACK's status. */
#define MIG_PROBE_DECODED       0u      /* the body decoded as the real state would */
#define MIG_PROBE_UNDECODABLE   1u      /* it did not: the switch-over would fail the same way */

struct mig_probe_ack {
    uint64_t destination_ns;    /* from the probe's header to the answer (read, check, decode) */
    uint32_t status;            /* MIG_PROBE_DECODED or MIG_PROBE_UNDECODABLE */
};

/* SWITCH_OVER: what the destination needs to learn this switch-over's cost
 * (migration/switch_over.h), sent after the state, before END. */
struct mig_switch_over {
    uint64_t transfer_us;       /* the bytes sent after the pause, at the source's bandwidth */
    uint64_t digest_pass_us;    /* verify_digest: one hash pass (0 = none) */
    uint64_t learned_us;        /* the source's learned cost before this migration */
    uint64_t deviation_us;      /* and its mean deviation */
    uint32_t learned_count;     /* 0 = nothing learned */
};

/* POSTCOPY_DISCARD: runs of pages, ascending, not overlapping, inside RAM. */
struct mig_discard_run {
    uint64_t ram_offset;        /* page aligned */
    uint64_t pages;             /* >= 1 */
};

/* POSTCOPY_SWITCH. */
struct mig_postcopy_switch {
    uint64_t pause_timestamp_ns;    /* CLOCK_REALTIME when the source paused (downtime's start) */
    uint32_t flags;                 /* MIG_END_GUEST_PAUSED: restore it paused */
    uint64_t missing_pages;         /* pages the destination lacks from now on: it checks its own count */
};

/* END (source) and ACK (destination) share one layout. */
#define MIG_END_HAS_DIGEST 0x1ull
/* END only: the operator had paused the guest (vm.pause) when the source
 * stopped it; the destination restores it and leaves it paused. */
#define MIG_END_GUEST_PAUSED 0x2ull
#define MIG_END_FLAGS_KNOWN (MIG_END_HAS_DIGEST | MIG_END_GUEST_PAUSED)
struct mig_end {
    uint64_t flags;             /* MIG_END_HAS_DIGEST, MIG_END_GUEST_PAUSED */
    char digest[MIG_DIGEST_HEX + 1];    /* NUL-terminated in memory, 32 bytes on the wire */
    uint64_t timestamp_ns;      /* END: CLOCK_REALTIME at pause; ACK: at resume */
    uint64_t pages;             /* END: pages sent in all; ACK: pages received */
};

enum mig_error_code {
    MIG_ERR_CONFIG = 1,         /* configuration mismatch */
    MIG_ERR_STREAM = 2,         /* malformed stream */
    MIG_ERR_CANCELLED = 3,      /* the peer gave up (cancel, timeout) */
    MIG_ERR_INTERNAL = 4,       /* the peer failed locally (restore, memory) */
    MIG_ERR_DIGEST = 5,         /* memory digests differ */
};

/* "config mismatch", "malformed stream", ... ; "unknown code" otherwise. */
const char *mig_error_code_name(uint32_t code);

/* ---- encoding ---------------------------------------------------------- */

static inline void mig_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void mig_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t mig_get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint64_t mig_get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Header without its checksum field filled in (bytes [24, 32) zero). */
void mig_header_encode(uint8_t out[MIG_HEADER_SIZE], uint32_t type, uint64_t seq, uint64_t length);
/* Checksum over header[0,24) and the payload pieces; stores it in header[24,32). */
uint64_t mig_frame_checksum(const uint8_t header[MIG_HEADER_SIZE], const void *payload, size_t length);
void mig_header_seal(uint8_t header[MIG_HEADER_SIZE], const void *payload, size_t length);

void mig_hello_encode(const struct mig_hello *hello, uint8_t out[MIG_HELLO_SIZE]);
void mig_iteration_encode(const struct mig_iteration *it, uint8_t out[MIG_ITERATION_SIZE]);
void mig_run_encode(const struct mig_run *run, uint8_t out[MIG_RUN_HEADER_SIZE]);
void mig_device_state_encode(const struct mig_device_state *d, uint8_t out[MIG_DEVICE_STATE_SIZE]);
void mig_end_encode(const struct mig_end *end, uint8_t out[MIG_END_SIZE]);
void mig_probe_header_encode(const struct mig_probe_header *probe, uint8_t out[MIG_PROBE_HEADER_SIZE]);
void mig_probe_ack_encode(const struct mig_probe_ack *ack, uint8_t out[MIG_PROBE_ACK_SIZE]);
void mig_switch_over_encode(const struct mig_switch_over *switch_over, uint8_t out[MIG_SWITCH_OVER_SIZE]);
void mig_discard_run_encode(const struct mig_discard_run *run, uint8_t out[MIG_POSTCOPY_DISCARD_RUN]);
void mig_postcopy_switch_encode(const struct mig_postcopy_switch *sw, uint8_t out[MIG_POSTCOPY_SWITCH_SIZE]);
/* Returns the payload length (4 + message bytes, message cut at MIG_ERROR_MAX_MESSAGE). */
size_t mig_error_encode(uint32_t code, const char *message, uint8_t out[4 + MIG_ERROR_MAX_MESSAGE]);

/* Encodes a whole frame (header + payload) into out (MIG_HEADER_SIZE +
 * length bytes); for small frames and tests. */
size_t mig_frame_encode(uint8_t *out, uint32_t type, uint64_t seq, const void *payload, size_t length);

/* ---- decoding and validation -------------------------------------------- */

/* Decodes a header and validates what can be checked without the payload:
 * known type, flags == 0, the expected seq, length within the type's
 * bounds. Returns 0, or -1 with a message in error ("frame 12: ..."). */
int mig_header_decode(const uint8_t in[MIG_HEADER_SIZE], uint64_t expected_seq,
                      struct mig_frame_header *out, char *error, size_t error_size);
/* Bounds of a type's payload length: [min, max]. Unknown type: false. */
bool mig_frame_length_bounds(uint32_t type, uint64_t *min, uint64_t *max);

/* Checks the magic and that the reserved field is 0; the values are
 * compared by mig_hello_compare. */
int mig_hello_decode(const uint8_t *in, size_t length, struct mig_hello *out, char *error,
                     size_t error_size);
void mig_iteration_decode(const uint8_t in[MIG_ITERATION_SIZE], struct mig_iteration *out);
void mig_run_decode(const uint8_t in[MIG_RUN_HEADER_SIZE], struct mig_run *out);
/* Checks version 2, vcpu_count <= 64, serial LCR <= 255, and the workload
 * text: NUL-terminated, printable ASCII (0x20..0x7e) before the NUL, zero
 * after it. Whether the text is a valid --workload spec is the receiver's
 * check (it needs vmm/workload.c). */
int mig_device_state_decode(const uint8_t in[MIG_DEVICE_STATE_SIZE], struct mig_device_state *out,
                            char *error, size_t error_size);
int mig_end_decode(const uint8_t in[MIG_END_SIZE], struct mig_end *out, char *error, size_t error_size);
/* Known kind, count 0 for a machine state and 1..MIG_MAX_VCPUS for vCPU
 * states. 0 or -1 with a message. */
int mig_probe_header_decode(const uint8_t in[MIG_PROBE_HEADER_SIZE], struct mig_probe_header *out, char *error,
                            size_t error_size);
/* Known status, reserved 0. */
int mig_probe_ack_decode(const uint8_t in[MIG_PROBE_ACK_SIZE], struct mig_probe_ack *out, char *error,
                         size_t error_size);
/* Reserved 0; learned_us and deviation_us 0 when learned_count is. */
/* A DISCARD payload of length bytes: runs into out (room for
 * MIG_POSTCOPY_DISCARD_MAX_RUNS), each checked against ram_bytes and
 * against the one before it (after = end of the previous frame's last run,
 * 0 for the first frame). The count, or -1 with the reason. */
int mig_discard_decode(const uint8_t *in, size_t length, uint64_t ram_bytes, uint64_t after,
                       struct mig_discard_run *out, char *error, size_t error_size);
int mig_postcopy_switch_decode(const uint8_t in[MIG_POSTCOPY_SWITCH_SIZE], struct mig_postcopy_switch *out,
                               char *error, size_t error_size);
int mig_switch_over_decode(const uint8_t in[MIG_SWITCH_OVER_SIZE], struct mig_switch_over *out, char *error,
                           size_t error_size);
/* message gets the text (NUL-terminated, non-printable bytes replaced by '?'). */
void mig_error_decode(const uint8_t *in, size_t length, uint32_t *code, char *message,
                      size_t message_size);

/* Validates a run against guest RAM of ram_bytes and against the payload
 * bytes left after its header. Returns 0 or -1 with e.g.
 * "memory run at offset 0x10000000 + 8192 exceeds guest RAM (268435456 bytes)". */
int mig_run_validate(const struct mig_run *run, uint64_t ram_bytes, uint64_t payload_left,
                     char *error, size_t error_size);

/* Compares the local configuration with the peer's hello; a mismatch gives
 * a message naming both values, e.g. "memory size differs: source 256 MiB,
 * destination 512 MiB". local_is_source names the sides. */
int mig_hello_compare(const struct mig_hello *local, const struct mig_hello *peer,
                      bool local_is_source, char *error, size_t error_size);

#endif
