/*
 * The destination's frame parser: reads frames from an input (a socket, or
 * a byte buffer for tests and the fuzzer), validates every one of them and
 * applies memory runs to guest RAM.
 *
 * Guarantees, whatever the input: never writes outside [ram, ram +
 * ram_bytes), never allocates more than the configured vCPU state buffers
 * (sized from the LOCAL configuration at init, before any input is read),
 * never crashes, and never works more per input byte than the bounds of
 * mig_receiver_check_work. With mig_receiver_set_deadline it refuses a
 * frame that arrives slower than the progress floor, and it gives up at
 * the first read after input->stop becomes true. A frame's payload bytes may land in guest RAM
 * before its checksum is verified; a bad checksum fails the migration and
 * the destination never runs that RAM.
 *
 * Ownership: one thread (the incoming thread, or the fuzzer) owns a
 * receiver; the counters it exposes for progress are atomics read by
 * anyone.
 */
#ifndef RINGVM_MIGRATION_RECEIVER_H
#define RINGVM_MIGRATION_RECEIVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "migration/protocol.h"

struct machine_state;

/* Reads exactly length bytes: 0; 1 = clean EOF before the first byte
 * (allowed only between frames); -1 = error with a message. Used by
 * mig_read_small_frame (the source reading the destination's replies). */
typedef int (*mig_read_fn)(void *ctx, void *data, size_t length, bool eof_ok, char *error,
                           size_t error_size);
/* Reads what is there, waiting for at least one byte: the count (1 ..
 * capacity), 0 at end of stream, -1 = error with a message (a stall, a
 * shutdown, a socket error). The receiver reads through this only. */
typedef ssize_t (*mig_read_some_fn)(void *ctx, void *data, size_t capacity, char *error, size_t error_size);
/* A monotonic clock in nanoseconds. Production leaves it NULL
 * (CLOCK_MONOTONIC); the liveness tests pass a fake one they advance from
 * their read_some, so deadlines are tested without sleeping. */
typedef uint64_t (*mig_clock_fn)(void *ctx);

/*
 * Where the parser's bytes come from. Ownership: the caller's, used by the
 * one thread that reads through it; *stop is written by any thread (the
 * signal thread: vm->shutdown_requested) and read here with acquire.
 * Fields left zero (NULL) are off, so `{ .read_some = f, .ctx = c }` works.
 */
struct mig_input {
    mig_read_fn read;
    mig_read_some_fn read_some;
    void *ctx;
    mig_clock_fn clock;             /* NULL: CLOCK_MONOTONIC */
    void *clock_ctx;
    /* When it becomes true the receiver gives up at its next read (before
     * every read_some call and every read served from the staged bytes):
     * error "the destination VM is shutting down", code MIG_ERR_CANCELLED.
     * May be NULL. */
    const _Atomic bool *stop;
};

/* A byte buffer as input (tests, fuzzer): both functions. */
struct mig_buffer_input {
    const uint8_t *data;
    size_t length;
    size_t position;
};
void mig_buffer_input_init(struct mig_buffer_input *buffer, struct mig_input *input, const void *data,
                           size_t length);

/*
 * The progress floor (docs/migration-protocol.md, "Deadlines"): once a
 * frame's first byte has arrived, all of it must arrive within
 *     max(stall timeout, frame bytes / MIG_RATE_FLOOR_BYTES_PER_S)
 * in every phase (handshake, pre-copy, stop-and-copy). 256 KiB/s is a
 * quarter of the lowest bandwidth cap a source can be given (1 MiB/s), so
 * no paced source comes near it; a 1 MiB frame may take 4 s, the largest
 * (64 MiB) 256 s, a small frame the stall timeout.
 */
#define MIG_RATE_FLOOR_BYTES_PER_S (256u << 10)

#define MIG_RECEIVER_ERROR_MAX 640

/* Input bytes read ahead of the parser: headers and small payloads are
 * served from here, so a stream of tiny frames or run headers costs one
 * input call (one recv) per this many bytes, not one per header. */
#define MIG_RECEIVER_STAGING_BYTES (64u << 10)
/* A read of at least this many bytes (page data, a vCPU state) goes
 * straight to its destination after the staged bytes. */
#define MIG_RECEIVER_DIRECT_BYTES MIG_PAGE_SIZE

/* What the parser did, counted for the work bounds of
 * docs/migration-protocol.md ("Work per frame and per byte"): tests and the
 * fuzzer assert on these counts, not on time. Owner thread only; read
 * after a parse. */
struct mig_receiver_work {
    uint64_t input_calls;       /* read_some calls on the input */
    uint64_t memory_frames;     /* MEMORY frame headers accepted */
    uint64_t runs;              /* run headers decoded (a refused one included) */
    uint64_t zero_words;        /* 64-page words of the written-page bitmap ZERO runs examined */
    uint64_t pages_touched;     /* guest pages a data run wrote or a ZERO run checked (and cleared) */
};

struct mig_receiver {
    /* Configuration, set by mig_receiver_init, immutable afterwards. */
    uint8_t *ram;
    uint64_t ram_bytes;
    struct mig_hello local;
    uint64_t *written;                  /* one bit per page the stream wrote data to */

    /* Parser state (owner thread only). */
    uint64_t seq;                       /* next expected frame number */
    bool got_hello;
    bool got_end;
    struct mig_hello peer;
    /* The guest's machine state (the one machine-state frame), decoded
     * when it arrives: checksum verified, every section checked by
     * machine_state_decode, its vCPU count this VM's. A bad state fails
     * the stream at its frame, not at END. Heap, owned; NULL until then. */
    struct machine_state *machine_state;
    /* The switch-over's dry run (MIG_FRAME_PROBE, only when local
     * announces MIG_FEATURE_SWITCH_PROBE; at most one, before the first
     * iteration marker or memory frame): its body as received, checksum
     * verified, header checked. The destination decodes it, answers
     * PROBE_ACK and frees it (mig_receiver_drop_probe). Heap, owned.
     * probe_started_ns: the input clock when its header arrived. */
    uint8_t *probe;
    size_t probe_length;                /* body bytes after the probe header */
    struct mig_probe_header probe_header;
    uint64_t probe_started_ns;
    bool got_probe;
    bool stream_started;                /* an iteration marker or memory frame came */
    /* MIG_FRAME_SWITCH_OVER (same feature; at most one, before END). */
    struct mig_switch_over switch_over;
    bool have_switch_over;
    struct mig_device_state device;
    bool have_device;
    /* Post-copy (only when local announces MIG_FEATURE_POSTCOPY): OPEN at
     * most once before the stream; DISCARD frames after it; SWITCH once,
     * after the state. discard_runs: the last DISCARD frame's runs (valid
     * until the next call), discard_after: where the previous run ended.
     * After SWITCH memory goes through `place` (mig_receiver_set_placer). */
    bool got_postcopy_open;
    bool got_postcopy_switch;
    /* A recovery connection (mig_receiver_restart_stream): after its hello
     * the next frame must be POSTCOPY_RESUME, then a new OPEN is allowed. */
    bool awaiting_resume;
    bool got_resume;
    struct mig_postcopy_switch postcopy_switch;
    struct mig_discard_run *discard_runs;   /* heap, MIG_POSTCOPY_DISCARD_MAX_RUNS */
    unsigned discard_count;
    uint64_t discard_after;
    /* Pages of the DISCARD frames since the start or the DISCARD_SYNC (at
     * most one, only with MIG_FEATURE_EARLY_DISCARD announced here, between
     * OPEN and SWITCH; it must give this count, and starts a new ascending
     * sequence: two passes over RAM at most). discard_sync_pages: the
     * count DISCARD_SYNC gave (so checked), 0 without one. */
    uint64_t discard_pages;
    uint64_t discard_sync_pages;
    bool got_discard_sync;
    int (*place)(void *opaque, uint64_t ram_offset, uint32_t pages, const uint8_t *data);
    void *place_opaque;
    uint8_t *place_buffer;              /* a whole memory frame's payload (heap, MIG_POSTCOPY_FRAME_MAX) */
    struct mig_end end;
    uint8_t *scratch;                   /* small-frame payloads */
    size_t scratch_size;
    uint8_t *staging;                   /* MIG_RECEIVER_STAGING_BYTES read ahead */
    size_t staged_start, staged_end;    /* unparsed bytes: staging[start, end) */
    struct mig_receiver_work work;

    /* Frame deadline (owner thread only; see mig_receiver_set_deadline). */
    unsigned stall_ms;                  /* 0: no frame deadline */
    uint64_t floor_bytes_per_s;
    bool frame_clock_running;           /* the current frame's first byte has arrived */
    uint64_t frame_start_ns;            /* on the input's clock */
    uint64_t frame_deadline_ns;         /* start + stall until the header is decoded */
    uint64_t frame_length;              /* header + payload; 0 until the header is decoded */
    uint32_t frame_type;                /* for messages, once the header is decoded */
    uint64_t frame_consumed;            /* bytes of the current frame parsed so far */

    /* Why the last call failed. error_code: this side's enum
     * mig_error_code (what it sends back and reports); peer_error: the
     * failure is an ERROR frame from the source, then error_code is
     * MIG_ERR_CANCELLED (the peer gave up) and peer_error_code holds the
     * code the source sent, never taken over as this side's own. */
    uint32_t error_code;
    bool peer_error;
    uint32_t peer_error_code;
    char error[MIG_RECEIVER_ERROR_MAX];

    /* Counters (owner writes, anyone reads). */
    _Atomic uint64_t iteration;
    _Atomic uint64_t pages_received;    /* data + zero pages applied */
    _Atomic uint64_t zero_pages;
    _Atomic uint64_t normal_pages;
    _Atomic uint64_t bytes_received;    /* frame bytes, headers included */
    /* RAM offset where the latest data run starts: a populating thread
     * runs ahead of it (owner writes, populater reads). */
    _Atomic uint64_t frontier;
};

/* local: this side's hello (what the peer must match). ram/ram_bytes: guest
 * RAM (host mapping) to write into; it must be all zero at init (a fresh
 * memfd): a ZERO run only touches pages an earlier data run wrote, so the
 * zero runs of never-written RAM cost nothing on the destination (no page
 * is faulted in to be checked). Returns 0 or -1 (out of memory). */
int mig_receiver_init(struct mig_receiver *r, uint8_t *ram, uint64_t ram_bytes, const struct mig_hello *local);
void mig_receiver_destroy(struct mig_receiver *r);
/* Frees the probe's body (after the destination answered it). */
void mig_receiver_drop_probe(struct mig_receiver *r);

/*
 * Turns on the frame deadline: from the arrival of a frame's first byte
 * (or the call of mig_receiver_next, when it was read ahead), all of the
 * frame must have arrived within max(stall_ms, frame bytes /
 * floor_bytes_per_s) on input->clock. It is checked whenever a read_some
 * call returns bytes, so a peer that dribbles is refused at its first byte
 * past the deadline (at most one stall timeout late: a peer that sends
 * nothing at all meets read_some's own stall timeout instead). The error
 * names the frame, the phase and the rate seen (bytes arrived / time since
 * the frame's first byte), code MIG_ERR_STREAM:
 *   frame 1: iteration frame of 56 bytes too slow in pre-copy (iteration
 *   0): 35 of 56 bytes in 1020 ms (34 B/s); it had to arrive within
 *   1000 ms (the longer of the 1000 ms stall timeout and its length at
 *   262144 B/s)
 * ("frame header too slow in handshake: 3 of 32 bytes ..." before the
 * header is in; the phase is handshake, pre-copy (iteration N) or
 * stop-and-copy).
 * stall_ms 0 (the default after init: the buffer parser and the fuzzer
 * have no clock) turns it off; floor_bytes_per_s 0 means
 * MIG_RATE_FLOOR_BYTES_PER_S.
 */
void mig_receiver_set_deadline(struct mig_receiver *r, unsigned stall_ms, uint64_t floor_bytes_per_s);

/*
 * Post-copy: from now on a MEMORY frame is read whole (at most
 * MIG_POSTCOPY_FRAME_MAX payload bytes, else refused), its checksum
 * verified, and only then handed over run by run: place(opaque, offset,
 * pages, data) with data = NULL for a zero run. The guest runs on this RAM,
 * so no byte of an unverified frame may reach it. place returns 0, or
 * non-zero to fail the stream (MIG_ERR_INTERNAL). 0, or -1 (no memory).
 */
#define MIG_POSTCOPY_FRAME_MAX (4u << 20)
int mig_receiver_set_placer(struct mig_receiver *r,
                            int (*place)(void *opaque, uint64_t ram_offset, uint32_t pages, const uint8_t *data),
                            void *opaque);

/* Post-copy recovery: a new connection carries the rest of the stream.
 * Frame numbers start again at 0 with a new HELLO, then POSTCOPY_RESUME,
 * POSTCOPY_OPEN (the new urgent channel), memory, END. What the first
 * connection delivered (state, switch, placer) stays. Only after
 * POSTCOPY_SWITCH. */
void mig_receiver_restart_stream(struct mig_receiver *r);

/* Reads and applies one frame. Returns the frame type (> 0), or -1 with
 * r->error ("frame 12: memory run at offset 0x... exceeds guest RAM ...").
 * A HELLO is compared with the local configuration (mismatch: -1,
 * error_code MIG_ERR_CONFIG). An ERROR frame from the peer gives -1 with
 * peer_error set. Every rule is in docs/migration-protocol.md; r->error
 * never holds a byte of the stream that is not printable ASCII. Input is
 * read through input->read_some only, possibly past the frame (kept in
 * r->staging for the next call). */
int mig_receiver_next(struct mig_receiver *r, const struct mig_input *input);

/* Drives the parser over a whole buffer until END: 0 when a complete,
 * valid stream (hello ... end) was consumed, -1 otherwise (r->error).
 * The fuzzer's entry point. */
int mig_receiver_run_buffer(struct mig_receiver *r, const void *data, size_t length);

/*
 * The receiver's work bounds (docs/migration-protocol.md, "Work per frame
 * and per byte"), whatever the input: after any parse of input_bytes
 * bytes, r->work holds
 *   runs          <= input_bytes / 16              (a run header is 16 bytes)
 *   pages_touched <= 2 * (input_bytes / 4096)      (a data page is 4096 bytes;
 *                    a ZERO run checks only pages a data run wrote, once each)
 *   zero_words    <= memory_frames * ceil(RAM pages / 64) + 2 * runs
 *                    (the runs of a frame never overlap)
 *   input_calls   <= 8 + input_bytes / 1024        (reads are staged)
 * Returns 0, or -1 naming the bound that does not hold. The fuzzer and
 * the tests assert it; production does not call it.
 */
int mig_receiver_check_work(const struct mig_receiver *r, uint64_t input_bytes, char *error, size_t error_size);

/* Decodes a machine-state encoding as the MACHINE_STATE frame is decoded:
 * machine_state_decode, then its vCPU count against this VM's. 0 with
 * *state owned by the caller (machine_state_free), or -1 with the reason
 * in error ("machine state: section ...", "machine state for 3 vCPUs
 * (this VM has 2)") and *state left freed. The switch-over probe's answer
 * uses it too, so the dry run decodes exactly as the real frame will. */
int mig_receiver_decode_machine_state(const struct mig_receiver *r, const uint8_t *bytes, size_t length,
                                      struct machine_state *state, char *error, size_t error_size);
/* The decoded machine state (the destination restores it at END), NULL
 * before its frame. */
const struct machine_state *mig_receiver_machine_state(const struct mig_receiver *r);

/* Reads one small frame (header + payload into buffer, at most capacity
 * bytes) and verifies it: for the source reading the destination's replies.
 * Returns 0 with *header filled, or -1 with a message. */
int mig_read_small_frame(const struct mig_input *input, uint64_t seq, struct mig_frame_header *header,
                         uint8_t *buffer, size_t capacity, char *error, size_t error_size);

/*
 * The source's wait for a reply with a hard deadline (the ACK after END):
 * reads one small frame like mig_read_small_frame, but through
 * input->read_some, never past the frame, and all of it by deadline_ns on
 * input->clock (started_ns: when the wait began, for the rate). Returns 0
 * with *header filled and the payload in buffer; -1 with a message (the
 * peer closed: "destination closed the connection (truncated stream: 0 of
 * 32 bytes)", a read error, a bad header or checksum); MIG_REPLY_LATE when
 * the deadline passed first: the message says how much of the reply
 * arrived in how long ("no complete reply from the destination within
 * 10000 ms: 5 of 32 bytes in 10000 ms (0 B/s)"). Either way *received
 * holds the bytes of the reply that arrived (a caller past END must not
 * assume the peer is silent when some did). read_some must itself return
 * -1 once deadline_ns has passed on the same clock, so the wait cannot
 * outlast it. input->stop is not consulted: past END nothing but the
 * deadline may end the wait. peer names the other side in messages
 * ("destination").
 */
#define MIG_REPLY_LATE (-2)
int mig_read_reply(const struct mig_input *input, uint64_t seq, uint64_t started_ns, uint64_t deadline_ns,
                   const char *peer, struct mig_frame_header *header, uint8_t *buffer, size_t capacity,
                   size_t *received, char *error, size_t error_size);

/* Test hook (tests/test_migration_digest.c): when set, called by the
 * receiving thread after each data run of a MEMORY frame has been written
 * into guest RAM and hashed for the frame checksum, with the RAM mapping,
 * the run's RAM offset and its page count; it may change those pages (a
 * destination that received one page wrong). NULL in production. The test
 * sets it before the migration starts (release) and clears it after; the
 * receiver loads it with acquire. */
typedef void (*mig_receiver_data_hook_fn)(uint8_t *ram, uint64_t ram_offset, uint32_t pages);
extern _Atomic(mig_receiver_data_hook_fn) mig_receiver_data_hook;

/* True if the 4096 bytes at page are all zero. */
bool mig_page_is_zero(const void *page);

#endif
