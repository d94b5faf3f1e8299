/*
 * Between the destination's two files only: migration/destination.c (the
 * incoming thread: listen, receive, restore, ACK) and
 * migration/destination_postcopy.c (its post-copy frames, switch, end and
 * recovery). Everything here runs on the incoming thread.
 */
#ifndef RINGVM_MIGRATION_DESTINATION_INTERNAL_H
#define RINGVM_MIGRATION_DESTINATION_INTERNAL_H

#include "migration/migration_internal.h"
#include "migration/postcopy_incoming.h"
#include "migration/stream_window.h"

/* One incoming migration. migration_incoming_run_fd owns it (the
 * incoming thread, which alone touches it); others see only the copies
 * of `progress` published on the manager's board. */
struct incoming {
    struct migration *m;
    struct vm *vm;
    struct api_server *server;
    int fd;
    struct mig_io io;               /* the stream: fd, and the TLS session when there is one */
    struct mig_tls_session *tls;    /* owned; NULL = plaintext */
    bool source_speaks_tls;         /* a plaintext destination got a TLS ClientHello */
    uint64_t bytes_read;            /* by incoming_read_some (plaintext after TLS) */
    unsigned stall_ms;
    struct mig_receiver receiver;
    struct mig_progress progress;
    uint64_t started_mono;
    uint64_t last_publish;
    struct mig_throughput throughput;   /* bytes received: progress.throughput_mibs */
    uint64_t seq;                   /* next frame to the source */
    bool fault_held;                /* a test's fault point held the switch-over (not learned) */
    /* Post-copy (issue 17): the urgent channel between POSTCOPY_OPEN and
     * the switch (then the session owns it), and the session itself. */
    bool postcopy_offered;          /* MIG_FEATURE_POSTCOPY in our hello */
    struct mig_io urgent;           /* fd -1 = none */
    uint64_t *discarded;            /* one bit per page in a DISCARD run (heap, from POSTCOPY_OPEN) */
    struct mig_listener recovery;   /* migration.recover's listener (recovery_open: listening) */
    bool recovery_open;
    bool recovering;                /* on a recovery connection that has not reopened the urgent channel */
    uint64_t guest_rate_at_ns;      /* the guest's counters at the last snapshot (incoming_guest_rate) */
    uint64_t guest_rate_pages;
    struct postcopy_incoming *postcopy;
    struct stream_window stream_window;     /* the main connection's clamp during post-copy */
    int stream_nice_before;                 /* postcopy_priority_boost_stream's, for the restore */
};

void incoming_publish(struct incoming *in);
void incoming_phase(struct incoming *in, enum mig_state state, const char *phase);
int incoming_send(struct incoming *in, uint32_t type, const void *payload, size_t length);
/* The state received (vCPUs or machine, devices, workload) into the VM;
 * verifies END's RAM digest first when it has one. 0 or -1. */
int incoming_restore(struct incoming *in, char *error, size_t error_size, uint32_t *code);
void incoming_send_ack(struct incoming *in, uint64_t timestamp_ns);
int incoming_resume_guest(struct incoming *in, bool stay_paused, uint64_t *resumed, char *error, size_t error_size,
                          uint32_t *code);

/* ---- post-copy (migration/destination_postcopy.c) ---- */

/* POSTCOPY_OPEN: accept the urgent channel on listen_fd, answer OPEN_ACK. */
int incoming_postcopy_open(struct incoming *in, int listen_fd, const struct mig_tls_credentials *credentials,
                           char *error, size_t error_size);
int incoming_postcopy_discard(struct incoming *in, char *error, size_t error_size);
int incoming_postcopy_discard_sync(struct incoming *in, char *error, size_t error_size);
int incoming_postcopy_switch(struct incoming *in, char *error, size_t error_size, uint32_t *code);
int incoming_send_received_bitmap(struct incoming *in, char *error, size_t error_size);
int incoming_postcopy_recover(struct incoming *in, const struct mig_tls_credentials *credentials,
                              const char *cause, char *error, size_t error_size, uint32_t *code);
/* The same, with the cause in error (a step of a recovery that failed:
 * its link broke again); error is overwritten with the outcome. */
int incoming_postcopy_recover_after(struct incoming *in, const struct mig_tls_credentials *credentials, char *error,
                                    size_t error_size, uint32_t *code);
int incoming_postcopy_end(struct incoming *in, char *error, size_t error_size, uint32_t *code);
/* Post-copy progress: the guest's own pages/s (built-in guest). */
void incoming_guest_rate(struct incoming *in, uint64_t now);

#endif
