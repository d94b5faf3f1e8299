/*
 * Between the source's two files only: migration/source.c (the pre-copy
 * state machine, thread "migration", and the pieces every switch-over
 * uses) and migration/source_postcopy.c (the post-copy switch-over, its
 * background stream, recovery and loss). struct source and who owns what
 * in it: migration/migration_internal.h. Everything here runs on the
 * migration thread.
 */
#ifndef RINGVM_MIGRATION_SOURCE_INTERNAL_H
#define RINGVM_MIGRATION_SOURCE_INTERNAL_H

#include "migration/migration_internal.h"

/* The first failure's code and message (later ones are dropped); -1. */
__attribute__((format(printf, 3, 4)))
int source_fail(struct source *s, const char *code, const char *fmt, ...);
int source_socket_read(void *ctx, void *data, size_t length, bool eof_ok, char *error, size_t error_size);
void source_publish(struct source *s);
void source_phase(struct source *s, enum mig_state state, const char *phase);
/* Publishing, cancel, shutdown, timeout, the sender's failure: 0 or -1. */
int source_tick(struct source *s);
int source_flush(struct source *s);
/* Starts thread mig-send on the main connection, paced at the migration's
 * cap (at the start, and again on a post-copy recovery): 0 or -1. */
int source_start_sender(struct source *s);
int source_small_frame(struct source *s, uint32_t type, const void *payload, size_t length);

/* Builder over buffers: pages go into the current frame; full frames are
 * submitted. */
struct source_stream {
    struct source *s;
    struct mig_buffer *buffer;
    struct mig_frame_builder builder;
    unsigned since_tick;
};
int source_stream_submit(struct source_stream *st);
int source_stream_page(struct source_stream *st, uint64_t page);
int source_stream_zero(struct source_stream *st, uint64_t first_page, uint64_t count);

int source_read_answer(struct source *s, const char *phase, struct mig_frame_header *header, uint8_t *reply,
                       size_t reply_size);
int source_read_expected(struct source *s, const char *phase, const char *what, uint32_t expected,
                         struct mig_frame_header *header, uint8_t *reply, size_t reply_size);
int source_handshake(struct source *s);
/* Before END / POSTCOPY_SWITCH: a cancel or this point, never both. */
int source_pass_point_of_no_return(struct source *s);
int source_tls_handshake(struct source *s, const struct mig_address *address);

/* The vCPU and machine state as the switch-over sends it, captured with
 * the vCPUs paused (out of KVM_RUN) by the caller: one machine-state
 * encoding (migration/machine_state.h) of either guest kind: its vCPUs,
 * and where the VM has them the irqchips, PIT, clock, UART and CMOS.
 *
 * At the switch-over it is captured right after the pause and BEFORE the
 * final dirty sync: KVM writes guest RAM on behalf of vCPU ioctls (steal
 * time's preempted flag when the calling thread is scheduled out inside
 * one, kvmclock), and such a write must land in the final dirty set, not
 * after it (QEMU, too, synchronises the CPU state at vm_stop, before its
 * last RAM pass). Seen as a digest mismatch when the capture came after
 * the sync. */
struct captured_state {
    uint8_t *bytes;
    size_t size;
};
int source_capture_state(struct source *s, struct captured_state *out);
int source_send_state(struct source *s, const struct captured_state *state);
int source_send_device_state(struct source *s);
int source_pause_guest(struct source *s);
/* The console hand-over (migration.start console): prepared when
 * source_pause_guest pauses the guest, committed once the guest runs on
 * the destination, cancelled (console_handover_cancel) when the migration
 * fails. The commit waits at most this long for the clients to be told. */
#define SOURCE_CONSOLE_HANDOVER_MS 1000u
void source_console_commit(struct source *s, bool wait);
int source_read_ack(struct source *s, struct mig_end *ack);
void source_release_tracking(struct source *s);

/* ---- post-copy (migration/source_postcopy.c) ---- */

/* After the handshake, before the sender: POSTCOPY_OPEN and the urgent
 * channel (mode postcopy or hybrid). */
int source_postcopy_open(struct source *s, const struct mig_address *address);
/* Hybrid: whether pre-copy hands over to post-copy after this pass. */
bool source_hybrid_due(struct source *s, uint64_t iteration, const struct mig_iteration_record *record);
/* The post-copy switch-over and everything after it, recovery included. */
int source_postcopy(struct source *s);
/* The post-copy counters into s->progress (nothing before the switch). */
void source_postcopy_progress(struct source *s);

#endif
