/*
 * The migration progress snapshot and the board it is published on.
 *
 * The migration thread (or the incoming thread on the destination) owns a
 * private struct mig_progress, updates it, and publishes a copy at least
 * every 100 ms and at each phase change. Readers (API epoll thread, tests)
 * copy the published snapshot out. The board's mutex is held only for the
 * memcpy on either side, so a reader never blocks the migration for longer
 * than one copy of this struct (~20 KiB).
 *
 * The snapshot survives completion, failure and cancellation until the next
 * migration publishes its first snapshot.
 */
#ifndef RINGVM_MIGRATION_PROGRESS_H
#define RINGVM_MIGRATION_PROGRESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "migration/protocol.h"
#include "migration/tls.h"

enum mig_state {
    MIG_STATE_NONE = 0,         /* no migration yet */
    MIG_STATE_SETUP,
    MIG_STATE_ACTIVE,
    MIG_STATE_COMPLETING,
    MIG_STATE_COMPLETED,
    MIG_STATE_FAILED,
    MIG_STATE_CANCELLED,
};

const char *mig_state_name(enum mig_state state);
static inline bool mig_state_finished(enum mig_state state)
{
    return state == MIG_STATE_COMPLETED || state == MIG_STATE_FAILED || state == MIG_STATE_CANCELLED;
}

/* One iteration, the fields of its log line (plus what was sent). */
struct mig_iteration_record {
    uint64_t iteration;
    uint64_t dur_ms;
    uint64_t overhead_ms;       /* producing the dirty set */
    int throttle;               /* percent (max over vCPUs) */
    uint64_t size_bytes;        /* dirty after the iteration, still to send */
    uint64_t dirty_rate_pps;
    double bandwidth_mibs;
    uint64_t expected_downtime_ms;
    uint64_t pages_sent;
    uint64_t bytes_sent;
    /* From the eBPF probes, when they run (has_bpf): kicks that found a
     * vCPU in KVM_RUN during the iteration, their latency p50/p99, and
     * ring-full exits. */
    bool has_bpf;
    uint64_t kicks;
    uint64_t kick_p50_ns;
    uint64_t kick_p99_ns;
    uint64_t ring_full_exits;
    /* Ring mode (has_ring): dirty ring entries harvested during the
     * iteration (first writes after a page was write-protected again) and
     * how often the rings recycled in it (harvester resets + ring-full
     * exits). Entries per page taken ~ write-protect faults per page. */
    bool has_ring;
    uint64_t ring_entries;
    uint64_t ring_recycles;
};

#define MIG_PROGRESS_MAX_ITERATIONS 128
#define MIG_PROGRESS_TEXT 256

struct mig_progress {
    uint64_t id;                /* 1, 2, ... per process */
    bool incoming;              /* destination side */
    bool local;                 /* a local hand-over (mode "local"), else `mode` */
    int mode;                   /* enum mig_mode (migration.h): precopy, postcopy, hybrid */
    enum mig_state state;
    char phase[32];             /* connecting, handshake, bulk, iterating, stop-and-copy,
                                   waiting-ack, done, receiving, restoring */
    char address[MIG_PROGRESS_TEXT];
    char converge[16];
    uint64_t downtime_limit_ms;
    uint64_t started_at_ms;     /* CLOCK_REALTIME */
    uint64_t ended_at_ms;       /* 0 while running */
    uint64_t elapsed_ms;
    uint64_t iteration;
    int throttle_percent;       /* max over vCPUs */
    unsigned vcpu_count;
    int vcpu_throttle[MIG_MAX_VCPUS];
    uint64_t dirty_rate_pps;
    double bandwidth_mibs;
    double throughput_mibs;     /* now: MiB/s over the last ~0.5 s (mig_throughput_update) */
    struct {
        uint64_t total;         /* bytes of guest RAM */
        uint64_t transferred;   /* bytes on the wire */
        uint64_t remaining;     /* dirty bytes still to send (last measurement) */
        uint64_t zero_pages;
        uint64_t normal_pages;
    } memory;
    uint64_t expected_downtime_ms;
    uint64_t digest_pass_ms;    /* verify_digest: one XXH3 pass over all RAM, estimated at start
                                   (part of expected_downtime_ms); 0 without verification */
    uint64_t source_digest_ms;  /* the source's hash of its RAM after the ack (no verify_digest,
                                   source_digest on), ms; part of total_ms; 0 when not done */
    /* The expected downtime's parts (migration/switch_over.h), as of the
     * last iteration; expected_downtime_ms is their sum. */
    struct {
        uint64_t transfer_ms;   /* pages left + socket backlog + state, at the bandwidth */
        uint64_t digest_ms;     /* what verify_digest adds */
        uint64_t switch_over_ms;
        double bandwidth_mibs;  /* the rate transfer_ms assumes (source_switch_over_bandwidth) */
    } expected_parts;
    uint64_t backlog_bytes;     /* written, not yet delivered at the last decision (in transfer_ms) */
    uint64_t state_bytes;       /* the vCPU/device state the switch-over sends (in transfer_ms) */
    struct {
        uint64_t dry_run_us;    /* this migration's probe round (0 = the peer has no probe) */
        uint64_t probe_destination_us;  /* of it: the destination reading and decoding the state */
        uint64_t probe_pause_us;        /* of it: the guest paused for the capture */
        uint64_t learned_us;    /* what completed switch-overs taught this process, before this one */
        uint64_t deviation_us;  /* and its mean deviation */
        uint32_t learned_count;
        uint64_t used_us;       /* max(dry run, learned): what the expected downtime includes */
        bool learned_ignored;   /* learned >= the downtime limit: left out (switch_over.h) */
        uint64_t measured_us;   /* after completion: downtime - transfer (and digest) of this one */
        bool measured;
        uint64_t paced_us;      /* the stop-and-copy's wait on switch_over_bandwidth_mibs (0 uncapped) */
    } switch_over;
    /* Ring mode: the rings recycled entries between the migration's
     * takes (a harvester's threshold reset or a ring-full exit): those
     * pages were write-protected again long before the sender reached
     * them, so the guest faulted on its next write to each (issue 15, item
     * 4). Counts since the migration took hold of tracking. */
    struct {
        uint64_t iterations;        /* iterations during which it happened */
        uint64_t harvester_resets;
        uint64_t ring_full_exits;
        /* At most one write-protect fault per page per pass means at most
         * one ring entry per page per take: entries_harvested (since the
         * hold) <= pages_taken (the sum of every take's pages) while the
         * working set fits the rings (issue 15's fault target). */
        uint64_t entries_harvested;
        uint64_t pages_taken;
    } recycling;
    /* Post-copy (issue 17): from the switch-over on (phase "postcopy").
     * Source: pages pushed by the background stream and pages served on
     * request. Destination: faults, requests, pages placed, per-vCPU
     * faults and blocktime (time a vCPU spent blocked on a missing page),
     * and the fault service latency (fault read -> page placed). */
    struct {
        bool active;                /* switched over to post-copy */
        uint64_t switched_at_ms;    /* elapsed_ms at the switch-over */
        uint64_t pages_total;       /* pages the destination lacked at the switch-over */
        uint64_t pages_pushed;      /* source: sent by the background stream */
        uint64_t pages_requested;   /* source: served on the urgent channel; destination: asked for */
        uint64_t requests;          /* source: page requests read */
        uint64_t requests_refused;  /* source: refused (queue full, rate) */
        uint64_t pages_withdrawn;   /* source: taken by the stream, served on request first, left out of it */
        uint64_t pages_left_to_stream;  /* source: requested, answered by the stream's copy on its way */
        uint64_t pages_sent_twice;  /* source: requested, sent again though the stream's copy was on its way */
        uint64_t pages_received;    /* destination: placed (data or zero) */
        uint64_t pages_zero;        /* destination: of them, zero pages */
        uint64_t faults;            /* destination: fault messages read */
        uint64_t duplicate_faults;  /* destination: faults on a page already requested */
        uint64_t blocktime_total_ns;
        uint64_t vcpu_faults[MIG_MAX_VCPUS];
        uint64_t vcpu_blocktime_ns[MIG_MAX_VCPUS];
        uint64_t latency_count;
        uint64_t latency_p50_ns;
        uint64_t latency_p99_ns;
        uint64_t latency_max_ns;
        /* Destination, built-in guest: the pages/s its vCPUs wrote since the
         * last snapshot, from the guest's own counters (read only once the
         * page holding them is here); -1 = not known. */
        int64_t guest_pages_per_s;
        /* Destination over TCP: the main connection's TCP_WINDOW_CLAMP
         * (migration/stream_window.h); 0 = none (unix, not switched). */
        uint64_t stream_window;
        /* Hybrid: pages discarded on the destination while the guest still
         * ran on the source (MIG_FEATURE_EARLY_DISCARD) and inside the pause;
         * source: how long the early discard took, DISCARD_SYNC's round
         * trip included (the guest ran meanwhile). */
        uint64_t discarded_early_pages;
        uint64_t discarded_in_pause_pages;
        uint64_t discard_early_ms;
    } postcopy;
    uint64_t downtime_ms;       /* source pause -> destination resume */
    uint64_t downtime_us;       /* the same in microseconds (a local hand-over's is a few ms) */
    uint64_t setup_ms;
    uint64_t total_ms;
    char error_code[32];        /* "" when no error */
    char error_message[640];
    uint64_t iteration_count;   /* records ever added */
    struct mig_iteration_record iterations[MIG_PROGRESS_MAX_ITERATIONS];    /* ring: last 128 */
    char digest_source[MIG_DIGEST_HEX + 1];
    char digest_destination[MIG_DIGEST_HEX + 1];
    struct mig_tls_info tls;    /* the stream's TLS session; version "" = plaintext (or not connected yet) */
};

struct mig_progress_board {
    pthread_mutex_t lock;
    bool valid;                 /* something was published */
    struct mig_progress snapshot;
};

void mig_progress_board_init(struct mig_progress_board *board);
void mig_progress_board_destroy(struct mig_progress_board *board);
void mig_progress_publish(struct mig_progress_board *board, const struct mig_progress *progress);
/* false when nothing was ever published. */
bool mig_progress_read(struct mig_progress_board *board, struct mig_progress *out);

void mig_progress_add_iteration(struct mig_progress *progress, const struct mig_iteration_record *record);

/* The log line, exactly:
 * iter=3,dur=23319ms,overhead=0ms,throttle=10%,size=9245MiB,dirtyrate=2281225pps,bandwidth=396.42MiBs,downtime(expected)=32010ms */
int mig_iteration_format(const struct mig_iteration_record *record, char *out, size_t size);

json_t *mig_iteration_to_json(const struct mig_iteration_record *record);
/* The whole snapshot as the API returns it. */
json_t *mig_progress_to_json(const struct mig_progress *progress);

/* The live rate a progress display shows ("bw" in ringctl's bar):
 * bandwidth_mibs is known only when an iteration ends (a 1 GiB bulk pass:
 * many seconds of 0), this is the rate over the last window of at least
 * MIG_THROUGHPUT_WINDOW_NS. Owned by the thread that publishes. */
#define MIG_THROUGHPUT_WINDOW_NS 500000000ull
struct mig_throughput {
    uint64_t window_start_ns;   /* 0: no sample yet */
    uint64_t window_start_bytes;
    double mibs;                /* the last full window's rate (0 before one) */
};
/* Feeds the byte counter at now_ns; returns the rate of the last full
 * window. A counter that went back (a new stream) starts a new window. */
double mig_throughput_update(struct mig_throughput *throughput, uint64_t now_ns, uint64_t bytes);
/* progress->throughput_mibs from its memory.transferred at now_ns; 0 once
 * the migration has finished (it moves nothing then, whatever the last
 * window saw). Both sides' publishers call it. */
void mig_progress_sample_throughput(struct mig_progress *progress, struct mig_throughput *throughput,
                                    uint64_t now_ns);

#endif
