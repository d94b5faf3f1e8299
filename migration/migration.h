/*
 * Pre-copy live migration: the source state machine (one "migration"
 * thread per migration) and the destination entry point.
 *
 * Per VM there is one struct migration (created on first use, found by VM
 * pointer; freed by migration_release before vm_destroy). It holds the
 * progress board (survives until the next migration starts) and, while a
 * migration runs, its thread.
 *
 * Source lifecycle (migration thread):
 *   setup     connect, hello / hello-ack (config checked on both sides),
 *             sender thread, dirty tracking on
 *   active    iteration 0 = all RAM (memfd holes as zero runs), then
 *             iterations of the dirty set; per iteration bandwidth, expected
 *             downtime, the log line, an event, the convergence step
 *   completing  vCPUs paused (vm_pause_vcpus under vm->control_lock),
 *             final sync, the rest of the pages, vCPU + device state,
 *             END (with the source digest), wait for the ACK
 *   completed keep_alive ? VM state MIGRATED : vm_request_shutdown(vm, 0)
 *   failed / cancelled: vCPUs resumed if we paused them, throttles removed,
 *             tracking stopped, the guest continues; a new migration may
 *             start.
 *
 * Threads: migration_start / cancel / progress / release are called by
 * any controller thread (API worker or epoll thread, tests); they never
 * wait for the migration thread except release (joins it).
 */
#ifndef RINGVM_MIGRATION_MIGRATION_H
#define RINGVM_MIGRATION_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/convergence.h"
#include "migration/progress.h"

struct vm;
struct api_server;

/* Event names. */
#define MIG_EVENT_STATE     "migration.state"
#define MIG_EVENT_ITERATION "migration.iteration"
#define MIG_EVENT_WARNING   "migration.warning"

#define MIG_TLS_PATH_MAX 512

/* How the guest's RAM moves (migration.start "mode"). */
enum mig_mode {
    MIG_MODE_PRECOPY = 0,       /* iterate until the expected downtime fits, then stop-and-copy */
    MIG_MODE_POSTCOPY,          /* switch over right after the handshake; RAM follows, pulled on
                                   first touch and pushed in the background */
    MIG_MODE_HYBRID,            /* pre-copy, then post-copy once postcopy_after is reached (or
                                   migration.postcopy) */
};
const char *mig_mode_name(enum mig_mode mode);
/* "precopy" | "postcopy" | "hybrid": 0, else -1. */
int mig_mode_parse(const char *text, enum mig_mode *out);

struct mig_params {
    char dest[256];                 /* unix:PATH | tcp:HOST:PORT */
    uint64_t downtime_ms;           /* 300 */
    enum mig_converge converge;     /* auto */
    uint64_t max_bandwidth_mibs;    /* 0 = unlimited */
    uint64_t switch_over_bandwidth_mibs;    /* 0 = unlimited (default): the stop-and-copy, with the
                                               guest paused, is not held to max_bandwidth_mibs
                                               (as QEMU's completion stage); N: capped at N */
    uint64_t timeout_s;             /* 3600 */
    bool timeout_force;             /* timeout_strategy: false = cancel, true = force */
    bool keep_alive;                /* false */
    struct mig_throttle_params throttle;    /* 20 / 10 / 99 */
    unsigned stall_timeout_ms;      /* 5000: no byte moved this long = failed */
    bool verify_digest;             /* false. true: END carries the source digest and the
                                       destination verifies its own before resuming (both
                                       digests then cost downtime, which the expected
                                       downtime includes: see convergence.h).
                                       false: the source digest is computed after the ack,
                                       unless source_digest is false. */
    bool source_digest;             /* true. Without verify_digest: hash the source's RAM once
                                       the ack is in (phase "digest", memory_digest_source,
                                       source_digest_ms: part of total_ms, not of the
                                       downtime). false: no hash at all, as QEMU does. */
    unsigned dirty_limit_margin;    /* 50 (% of bandwidth the dirty rate may use) */
    /* TLS (tcp: only; at most one of the two; "" = plaintext). ringvm reads
     * the files itself: no key crosses the API. */
    char tls_psk_file[MIG_TLS_PATH_MAX];    /* keys.psk (QEMU format) */
    char tls_creds_dir[MIG_TLS_PATH_MAX];   /* x509: ca-cert.pem, client-cert.pem, client-key.pem */
    char tls_server_name[256];              /* x509: the name the destination's certificate must carry
                                               ("" = the HOST of dest) */
    char console[108];                      /* the destination's console socket (migration.start
                                               console "unix:PATH"): this VM's console clients move
                                               there with the guest (vmm/console.h); "" = stay */
    enum mig_mode mode;             /* precopy */
    /* Hybrid only: switch to post-copy after this many pre-copy passes
     * (iteration 0 included; 0 = not by passes), or this many ms after the
     * start (0 = not by time), or, with postcopy_after_auto, at the first
     * pass whose measured dirty rate shows pre-copy cannot meet downtime_ms
     * without throttling. Exactly one of the three is set for hybrid
     * (migration.start's postcopy_after: N, "Ns" or "auto"; default auto).
     * auto (ring mode) first decides within the bulk pass: a window of the
     * guest's writes 100 ms into it (migration/convergence.h, "hybrid,
     * within the bulk pass"); then, or in bitmap mode, it switches after a
     * pass whose dirty rate is at least 80 % of the measured bandwidth, or
     * whose dirty set is not a tenth smaller than the pass before's, while
     * the limit is not met. */
    uint64_t postcopy_after_passes;
    uint64_t postcopy_after_ms;
    bool postcopy_after_auto;
};

void mig_params_defaults(struct mig_params *params);

/* The downtime that verify_digest alone costs a VM with ram_bytes of RAM on
 * this machine (both sides hash all RAM inside it), measured now: a
 * migration.start whose downtime_ms is below it is refused. */
uint64_t migration_digest_downtime_floor_ms(uint64_t ram_bytes);

/* Starts a migration. Returns 0 (*id set) or -1 with code/message:
 *   "vm-not-running"   the VM is neither running nor paused (a paused
 *                      VM migrates and stays paused on the destination)
 *   "migration-active" one is running
 *   "invalid-argument" bad destination / parameters / dirty logging off;
 *                      TLS credentials that cannot be used (both kinds,
 *                      a unix: destination, a missing, unreadable,
 *                      malformed or group/other-accessible file)
 * server may be NULL (no events). */
int migration_start(struct vm *vm, struct api_server *server, const struct mig_params *params, uint64_t *id,
                    const char **code, char *message, size_t message_size);
/* Switches the running hybrid migration to post-copy at its next decision
 * (QEMU's migrate-start-postcopy). -1 with code/message:
 *   "no-migration"   none is running
 *   "invalid-state"  it was started as precopy (post-copy was not agreed
 *                    to: start it with mode hybrid), or it is already in
 *                    post-copy or past its switch-over
 * A postcopy-mode migration switches by itself: "invalid-state" too. */
int migration_postcopy_now(struct vm *vm, const char **code, char *message, size_t message_size);
/* Post-copy recovery, after a broken link left both sides in phase
 * "postcopy-paused" (QEMU's migrate-recover and migrate resume=true):
 * the destination listens on a new address (migration_recover), then the
 * source connects to it (migration_resume); the destination reports which
 * pages it holds and the copy goes on. -1 with code/message:
 *   "no-migration"     no migration is running (on this side)
 *   "invalid-state"    it is not paused in post-copy
 *   "invalid-argument" the address does not parse */
int migration_recover(struct vm *vm, const char *address, const char **code, char *message, size_t message_size);
int migration_resume(struct vm *vm, const char *dest, const char **code, char *message, size_t message_size);
/* -1 with "no-migration" if none is running. In post-copy it is refused
 * ("migration-active") unless the migration is paused there: then it
 * gives the guest up (it is lost; the source ends with an error). */
int migration_cancel(struct vm *vm, const char **code, char *message, size_t message_size);
bool migration_active(struct vm *vm);
/* Copies the latest snapshot; false when this VM never migrated. */
bool migration_progress(struct vm *vm, struct mig_progress *out);
/* Waits until no migration runs (tests): true, or false on timeout. */
bool migration_wait_idle(struct vm *vm, uint64_t timeout_ms);
/* Cancels, joins and frees the VM's migration state. Call before
 * vm_destroy (main, tests). */
void migration_release(struct vm *vm);

/*
 * Destination: listens on address, receives a migration into vm (created
 * with config.incoming, started: vCPUs parked), restores it and resumes it.
 * Blocking; returns 0 once the guest runs here (then the VM is RUNNING),
 * or -1 after printing "ringvm: migration: <cause>" (the source is told
 * why, the VM never ran). Stops early if a shutdown is requested.
 * Pre-populates guest RAM in a helper thread ahead of the stream.
 */
int migration_incoming_run(struct vm *vm, const char *address, struct api_server *server);

/* The destination's transfer timeout for the next incoming migration of
 * vm: it gives up after stall_ms without a byte from the source (ringvm
 * --incoming-stall-timeout; default 5000). 0 or -1 (message printed). */
int migration_set_incoming_stall_timeout(struct vm *vm, unsigned stall_ms);

/* The destination's TLS credentials for incoming migrations of vm (loaded
 * by the caller with mig_tls_credentials_load_for(MIG_TLS_SERVER) from
 * ringvm --tls-psk FILE | --tls-creds DIR): owned from here on, freed by
 * migration_release (or replaced by the next call). NULL: plaintext.
 * 0, or -1 (message printed; credentials freed) when a migration runs. */
struct mig_tls_credentials;
int migration_set_incoming_tls(struct vm *vm, struct mig_tls_credentials *credentials);

/* Same with a listening socket made by the caller (tests use it to know
 * the port before the source connects): takes ownership of listen_fd. */
int migration_incoming_run_fd(struct vm *vm, int listen_fd, const char *address, struct api_server *server);

#endif
