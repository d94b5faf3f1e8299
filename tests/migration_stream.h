/*
 * Builds migration streams byte by byte for the receiver tests
 * (tests/test_migration_protocol.c, tests/test_migration_rejections.c): a
 * growing buffer of frames, the frame boundaries it holds (to cut a stream
 * at every boundary and inside every header), the small test destination's
 * hello, and guest RAM between PROT_NONE guard pages (a write outside RAM
 * crashes the test, as in the fuzzer).
 *
 * Ownership: one test owns each struct migration_stream and frees it with
 * migration_stream_free; nothing is shared between threads.
 */
#ifndef RINGVM_TESTS_MIGRATION_STREAM_H
#define RINGVM_TESTS_MIGRATION_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "migration/protocol.h"

/* The destination these tests play: 1 MiB of RAM (256 pages), 2 vCPUs,
 * state format 2, zero-page runs, guest ABI 2. */
#define MIGRATION_STREAM_RAM_BYTES (1u << 20)
#define MIGRATION_STREAM_VCPUS 2u

struct mig_hello migration_stream_hello(void);

#define MIGRATION_STREAM_MAX_FRAMES 64u

struct migration_stream {
    uint8_t *data;
    size_t length, capacity;
    uint64_t seq;                               /* seq of the next frame */
    size_t frame_start[MIGRATION_STREAM_MAX_FRAMES];   /* offset of each frame's header */
    size_t frame_count;
};

/* Raw bytes (no frame bookkeeping). */
void migration_stream_put(struct migration_stream *s, const void *bytes, size_t length);
/* Records that a frame starts at the current end (for the cut tests). */
void migration_stream_mark_frame(struct migration_stream *s);
/* A sealed frame with the next seq. */
void migration_stream_put_frame(struct migration_stream *s, uint32_t type, const void *payload, size_t length);
void migration_stream_put_hello(struct migration_stream *s, const struct mig_hello *hello);
void migration_stream_put_iteration(struct migration_stream *s, uint64_t iteration, uint64_t pages);
/* A valid machine-state encoding (migration/machine_state.h) of a built-in
 * guest with `vcpus` vCPUs, the smallest the decoder accepts (FPU, one
 * CPUID leaf, EFER, the clock); vCPU i's RIP is MIGRATION_STREAM_STATE_RIP
 * (fill, i), so a test can tell which state arrived. Heap, *length bytes. */
#define MIGRATION_STREAM_STATE_RIP(fill, index) (0x100000u + 0x1000u * (fill) + (index))
uint8_t *migration_stream_machine_state(uint32_t vcpus, uint8_t fill, size_t *length);
/* That encoding in a MACHINE_STATE frame. */
void migration_stream_put_machine_state(struct migration_stream *s, uint32_t vcpus, uint8_t fill);
/* The device state every valid test stream ends with (2 vCPUs, LCR 3,
 * phases 1 and 2, no exception, a ledger workload). */
struct mig_device_state migration_stream_device_state(void);
void migration_stream_put_device_state(struct migration_stream *s, const struct mig_device_state *device);
void migration_stream_put_end(struct migration_stream *s, const struct mig_end *end);
/* The machine state (both vCPUs, fill 0xa0), the device state and an END
 * without digest (timestamp 123, 3 pages). */
void migration_stream_put_tail(struct migration_stream *s);
/* A MEMORY frame built by the real sender-side builder
 * (migration/sender.h) from the given pages of ram. */
void migration_stream_put_pages(struct migration_stream *s, const uint8_t *ram, const uint64_t *pages, size_t count);
void migration_stream_free(struct migration_stream *s);

/* Guest RAM of ram_bytes (zeroed) with one PROT_NONE guard page on each
 * side: a receiver write outside [ram, ram + ram_bytes) is a SIGSEGV. */
uint8_t *migration_stream_guarded_ram(size_t ram_bytes);
void migration_stream_guarded_ram_free(uint8_t *ram, size_t ram_bytes);

#endif
