/*
 * Between the migration subsystem's three parts only: the per-VM manager and
 * public API (migration/migration.c), the source state machine
 * (migration/source.c, thread "migration") and the destination
 * (migration/destination.c). Not for other subsystems: they use
 * migration/migration.h.
 */
#ifndef RINGVM_MIGRATION_MIGRATION_INTERNAL_H
#define RINGVM_MIGRATION_MIGRATION_INTERNAL_H

#include "migration/migration.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "api/digest.h"
#include "api/server.h"
#include "bpf/probes.h"
#include "dirtyring/dirty_log.h"
#include "migration/local_handover.h"
#include "migration/page_digest.h"
#include "migration/postcopy_return.h"
#include "migration/postcopy_source.h"
#include "migration/protocol.h"
#include "migration/receiver.h"
#include "migration/sender.h"
#include "migration/switch_over.h"
#include "migration/tls.h"
#include "migration/transport.h"
#include "vmm/vm.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PUBLISH_INTERVAL_NS   50000000ull   /* publish at least every 50 ms (issue: 100) */
#define CONNECT_TIMEOUT_MS    5000u
#define MIN_BANDWIDTH_SAMPLE  (256u << 10)  /* bytes; smaller iterations keep the old estimate */

/* ---- the per-VM manager ----------------------------------------------------
 *
 * Ownership: registry under registry_lock. In struct migration: thread,
 * thread_joinable, params, server under lock; active / cancel atomics
 * (written under lock by controllers, read by the migration thread);
 * board: its own lock (see progress.h).
 */
struct migration {
    struct vm *vm;
    pthread_mutex_t lock;
    pthread_cond_t idle;            /* broadcast when active becomes false */
    pthread_t thread;
    bool thread_joinable;
    _Atomic bool active;
    _Atomic bool cancel;
    /* Set (under lock) once END is about to be queued: from then on the
     * destination may resume the guest, so migration.cancel is refused
     * instead of being honoured half-way. cancel and past_end are decided
     * under lock, so exactly one of them wins. */
    bool past_end;
    /* migration.postcopy asked the running hybrid migration to switch to
     * post-copy (migration_postcopy_now); the migration thread reads it at
     * each decision. */
    _Atomic bool postcopy_requested;
    /* Post-copy recovery (docs/reliability.md, "Post-copy"). A side whose
     * channels broke after the switch-over sets postcopy_paused and waits
     * on postcopy_cond for the operator: migration_resume (source: new
     * destination address) or migration_recover (destination: new listen
     * address) fill recover_address and set recover_requested; a cancel
     * (source) or a shutdown gives the guest up. All under lock. */
    bool postcopy_paused;
    bool paused_incoming;           /* the paused side is the destination */
    bool recover_requested;
    char recover_address[256];
    /* Destination: migration_recover opens the new listener itself (so the
     * address listens when it returns) and hands it over here; the
     * incoming thread takes it. */
    struct mig_listener recover_listener;
    bool recover_listener_open;
    pthread_cond_t postcopy_cond;
    uint64_t next_id;
    /* Destination's transfer timeout in ms (ringvm --incoming-stall-timeout),
     * 0 = INCOMING_STALL_DEFAULT_MS. Written under lock by
     * migration_set_incoming_stall_timeout, read under lock when an
     * incoming migration starts. */
    unsigned incoming_stall_ms;
    /* Destination's TLS credentials (ringvm --tls-psk / --tls-creds), NULL =
     * plaintext. Set under lock by migration_set_incoming_tls, read under
     * lock when an incoming migration starts (read-only afterwards, shared
     * with its session); freed by migration_release. */
    struct mig_tls_credentials *incoming_tls;
    /* What completed switch-overs taught this process (learned_us,
     * learned_count; dry_run_us unused): learned by a source after its
     * ACK, or by a destination from the source's SWITCH_OVER frame and the
     * downtime it saw (migration/switch_over.h). Under lock. */
    struct mig_switch_over_model switch_over;
    struct mig_params params;       /* of the running migration; set before the thread starts */
    uint64_t id;
    struct api_server *server;
    struct mig_progress_board board;
};

/* ---- the source (migration/source.c) ------------------------------------- */

/* One outgoing migration. migration_start allocates and fills it, then hands
 * it to thread "migration" (migration_source_main), which alone touches it
 * from then on and frees it at the end; others see only the copies of
 * `progress` published on the manager's board. */
struct source {
    struct migration *m;
    struct vm *vm;
    struct mig_params params;
    struct api_server *server;

    int fd;
    struct mig_io io;               /* io.tls: the TLS session when tls_credentials is set */
    struct mig_tls_credentials *tls_credentials;    /* owned; loaded by migration_start; NULL = plaintext */
    struct mig_tls_session *tls;    /* owned; after the TLS handshake */
    struct mig_input input;
    struct mig_sender sender;
    bool sender_started;
    bool tracking;
    bool locked;                    /* holds vm->control_lock */
    bool paused;                    /* we paused the vCPUs */
    bool user_paused;               /* the VM was PAUSED by the user at stop-and-copy */
    bool keep_paused;               /* failed with an unknown outcome: never resume (see source_complete) */
    uint64_t seq;                   /* next frame to the destination */
    uint64_t peer_seq;              /* next frame from the destination */

    struct mig_progress progress;   /* private; published copies on the board */
    struct bpf_probes_mark bpf_mark;    /* probes' counters at this iteration's start */
    bool bpf_marked;
    uint64_t started_mono;
    uint64_t last_publish;
    struct mig_throughput throughput;   /* bytes the sender wrote: progress.throughput_mibs */
    uint64_t deadline_mono;         /* overall timeout */
    bool force_switch;
    bool end_sent;                  /* the ACK is read by source_complete, not by ticks */
    bool local;                     /* dest is local:PATH: the memfd is handed over, no RAM is sent
                                       (migration/local_handover.h) */
    uint64_t buffer_wait_ns;        /* time waiting for send buffers (trace) */

    /* The switch-over's cost: learned part copied from the manager at
     * the start, dry_run_us from the probe (migration/switch_over.h). */
    struct mig_switch_over_model switch_over;
    bool peer_probes;               /* the destination announced MIG_FEATURE_SWITCH_PROBE */
    bool learned_ignored_said;      /* the "learned cost left out" line was printed */
    /* Ring recycling during this migration (issue 15, item 4): the dirty
     * log's harvester resets and ring-full exits at the last look. */
    uint64_t recycling_seen_resets;
    uint64_t recycling_seen_full_exits;
    uint64_t entries_at_hold;       /* ring entries harvested before the migration's hold */
    uint64_t entries_at_iteration;  /* ... before the current iteration (per-iteration records) */
    uint64_t pages_taken;           /* pages of every take, the final one included */
    uint64_t state_bytes;           /* the state frames' size, from the probe's capture */
    uint64_t bandwidth;             /* bytes/s estimate (last iteration) */
    /* bytes/s of the last iteration over the time the sender did not sleep
     * on max_bandwidth_mibs (mig_unpaced_rate): what the uncapped
     * stop-and-copy can expect; set with bandwidth and never below it
     * (= bandwidth when nothing was paced, and over TCP) */
    uint64_t unpaced_bandwidth;
    /* A unix: destination: the peer is on this host, so the stream's own
     * unpaced speed is the link's. Over TCP a cap below the link's speed
     * hides the link (paced slices land in the socket buffer, which
     * drains between them): unpaced_bandwidth stays = bandwidth there. */
    bool stream_is_the_link;
    uint64_t digest_ms;             /* verify_digest: one XXH3 pass over RAM, estimated at start (0 = off) */
    uint64_t iteration_start_ns;    /* for a live estimate within the first iteration */
    uint64_t iteration_start_bytes;
    uint64_t iteration_start_queued;    /* in the socket at the start (source_delivered_this_iteration) */
    /* mig_sender_paced_ns at the start. The cap changes only at the pause
     * (source_complete), so during the passes that count is never reset
     * and its growth over an iteration is the time it slept on the cap. */
    uint64_t iteration_start_paced_ns;
    uint64_t pages_sent_total;
    struct mig_auto_converge auto_state;
    uint64_t dl_last_ns;            /* dirty-limit: last sample */
    uint64_t dl_last_pages[MIG_MAX_VCPUS];
    uint64_t dl_last_rate[MIG_MAX_VCPUS];
    int dl_last_throttle[MIG_MAX_VCPUS];

    struct dirty_pages pending;
    uint64_t pending_sent;          /* pages of `pending` sent so far in this iteration */

    /* Post-copy (mode postcopy / hybrid, issue 17): the urgent channel
     * (connected after POSTCOPY_OPEN; its io is pc-serve's from the switch
     * on, closed here at the end) and the post-copy state. */
    bool peer_postcopy;             /* the destination announced MIG_FEATURE_POSTCOPY */
    bool peer_early_discard;        /* ... and MIG_FEATURE_EARLY_DISCARD (hybrid discards before the pause) */
    uint64_t hybrid_previous_size;  /* hybrid auto: the dirty set after the pass before (bytes) */
    /* Hybrid within the bulk pass (source_bulk_hybrid_check, ring mode):
     * two takes a window apart measure the guest's writes; what they took
     * stays in bulk_carry (a bitmap over RAM pages, ORed by each take)
     * for the pass's end or the switch-over. bulk_stopped: the pass
     * handed over to post-copy at bulk_end_page; pages from there on were
     * never sent. */
    uint64_t *bulk_carry;           /* NULL = no take during this bulk pass */
    uint64_t bulk_window_start_ns;  /* 0 = the window has not opened */
    bool bulk_window_done;
    bool bulk_stopped;
    uint64_t bulk_end_page;
    int urgent_fd;                  /* -1 = none */
    struct mig_io urgent_io;
    struct mig_tls_session *urgent_tls;
    struct postcopy_source *postcopy;   /* created at the switch-over */

    /* Outcome. */
    const char *error_code;         /* NULL = none */
    char error[640];
    bool cancelled;
};

/* ---- shared helpers (migration/migration.c) ------------------------------- */

uint64_t mig_mono_ns(void);
uint64_t mig_real_ns(void);
/* pthread_cond_timedwait for at most ms milliseconds (lock held). */
void mig_cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *lock, unsigned ms);
/* RINGVM_MIG_TRACE=1: phase timestamps on stderr (diagnostics). */
void mig_trace(const char *what);
/* Publishes on the API server, or drops the event when there is none. */
void mig_publish_event(struct api_server *server, const char *name, json_t *data);
/* The migration.state event of either side. */
void mig_publish_state_event(struct api_server *server, uint64_t id, const char *role, enum mig_state state,
                             const char *phase);
/* The manager of vm's migrations; created on first use when `create`.
 * NULL when out of memory or too many VMs in this process. */
struct migration *migration_manager_find(struct vm *vm, bool create);

/* ---- the source's entry points (migration/source.c) ---------------------- */

/* Thread "migration": runs the source state machine of s, publishes the
 * outcome, frees s and marks the manager idle. */
void *migration_source_main(void *argument);
/* s->progress's per-vCPU and maximum throttle, read from the vCPUs. */
void migration_source_vcpu_throttles(struct source *s);

#endif
