/*
 * Progress snapshot publication and formatting (see progress.h).
 */
#include "migration/progress.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* For enum mig_mode and mig_mode_name: progress.h stores the mode as an
 * int so that it need not include migration.h (which includes it). */
#include "migration/migration.h"

const char *mig_state_name(enum mig_state state)
{
    switch (state) {
    case MIG_STATE_NONE: return "none";
    case MIG_STATE_SETUP: return "setup";
    case MIG_STATE_ACTIVE: return "active";
    case MIG_STATE_COMPLETING: return "completing";
    case MIG_STATE_COMPLETED: return "completed";
    case MIG_STATE_FAILED: return "failed";
    case MIG_STATE_CANCELLED: return "cancelled";
    }
    return "unknown";
}

void mig_progress_board_init(struct mig_progress_board *board)
{
    memset(board, 0, sizeof(*board));
    pthread_mutex_init(&board->lock, NULL);
}

void mig_progress_board_destroy(struct mig_progress_board *board)
{
    pthread_mutex_destroy(&board->lock);
}

void mig_progress_publish(struct mig_progress_board *board, const struct mig_progress *progress)
{
    pthread_mutex_lock(&board->lock);
    memcpy(&board->snapshot, progress, sizeof(*progress));
    board->valid = true;
    pthread_mutex_unlock(&board->lock);
}

bool mig_progress_read(struct mig_progress_board *board, struct mig_progress *out)
{
    pthread_mutex_lock(&board->lock);
    bool valid = board->valid;
    if (valid)
        memcpy(out, &board->snapshot, sizeof(*out));
    pthread_mutex_unlock(&board->lock);
    if (!valid)
        memset(out, 0, sizeof(*out));
    return valid;
}

void mig_progress_add_iteration(struct mig_progress *progress, const struct mig_iteration_record *record)
{
    progress->iterations[progress->iteration_count % MIG_PROGRESS_MAX_ITERATIONS] = *record;
    progress->iteration_count++;
}

int mig_iteration_format(const struct mig_iteration_record *r, char *out, size_t size)
{
    char downtime[32];
    if (r->expected_downtime_ms == UINT64_MAX)
        snprintf(downtime, sizeof(downtime), "inf");
    else
        snprintf(downtime, sizeof(downtime), "%" PRIu64, r->expected_downtime_ms);
    return snprintf(out, size,
                    "iter=%" PRIu64 ",dur=%" PRIu64 "ms,overhead=%" PRIu64 "ms,throttle=%d%%,size=%" PRIu64
                    "MiB,dirtyrate=%" PRIu64 "pps,bandwidth=%.2fMiBs,downtime(expected)=%sms",
                    r->iteration, r->dur_ms, r->overhead_ms, r->throttle, r->size_bytes >> 20, r->dirty_rate_pps,
                    r->bandwidth_mibs, downtime);
}

double mig_throughput_update(struct mig_throughput *throughput, uint64_t now_ns, uint64_t bytes)
{
    if (throughput->window_start_ns == 0 || now_ns < throughput->window_start_ns ||
        bytes < throughput->window_start_bytes) {
        throughput->window_start_ns = now_ns;
        throughput->window_start_bytes = bytes;
        return throughput->mibs;
    }
    uint64_t elapsed = now_ns - throughput->window_start_ns;
    if (elapsed >= MIG_THROUGHPUT_WINDOW_NS) {
        throughput->mibs = (double)(bytes - throughput->window_start_bytes) / (1024.0 * 1024.0) /
                           ((double)elapsed / 1e9);
        throughput->window_start_ns = now_ns;
        throughput->window_start_bytes = bytes;
    }
    return throughput->mibs;
}

void mig_progress_sample_throughput(struct mig_progress *progress, struct mig_throughput *throughput,
                                    uint64_t now_ns)
{
    progress->throughput_mibs = mig_state_finished(progress->state)
                                    ? 0.0
                                    : mig_throughput_update(throughput, now_ns, progress->memory.transferred);
}

static json_int_t clamp_int(uint64_t value)
{
    return value > (uint64_t)INT64_MAX ? (json_int_t)INT64_MAX : (json_int_t)value;
}

json_t *mig_iteration_to_json(const struct mig_iteration_record *r)
{
    char line[256];
    mig_iteration_format(r, line, sizeof(line));
    json_t *object = json_pack("{s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:s}",
                     "iter", clamp_int(r->iteration),
                     "dur_ms", clamp_int(r->dur_ms),
                     "overhead_ms", clamp_int(r->overhead_ms),
                     "throttle", r->throttle,
                     "size_mib", clamp_int(r->size_bytes >> 20),
                     "size_bytes", clamp_int(r->size_bytes),
                     "dirtyrate_pps", clamp_int(r->dirty_rate_pps),
                     "bandwidth_mibs", r->bandwidth_mibs,
                     "downtime_expected_ms", clamp_int(r->expected_downtime_ms),
                     "pages_sent", clamp_int(r->pages_sent),
                     "bytes_sent", clamp_int(r->bytes_sent),
                     "line", line);
    if (object != NULL && r->has_ring) {
        json_object_set_new(object, "ring_entries", json_integer(clamp_int(r->ring_entries)));
        json_object_set_new(object, "ring_recycles", json_integer(clamp_int(r->ring_recycles)));
    }
    if (object != NULL && r->has_bpf)
        json_object_set_new(object, "bpf",
                            json_pack("{s:I, s:I, s:I, s:I}", "kicks", clamp_int(r->kicks), "kick_p50_ns",
                                      clamp_int(r->kick_p50_ns), "kick_p99_ns", clamp_int(r->kick_p99_ns),
                                      "ring_full_exits", clamp_int(r->ring_full_exits)));
    return object;
}

/* The "postcopy" object of mig_progress_to_json: times in ms and µs as
 * doubles (the ns counters keep their precision), one entry per vCPU. */
static json_t *postcopy_to_json(const struct mig_progress *p)
{
    json_t *vcpus = json_array();
    for (unsigned i = 0; vcpus != NULL && i < p->vcpu_count && i < MIG_MAX_VCPUS; i++)
        json_array_append_new(vcpus, json_pack("{s:I, s:I, s:f}", "index", (json_int_t)i, "faults",
                                               clamp_int(p->postcopy.vcpu_faults[i]), "blocktime_ms",
                                               (double)p->postcopy.vcpu_blocktime_ns[i] / 1e6));
    json_t *latency = json_pack("{s:I, s:f, s:f, s:f}", "count", clamp_int(p->postcopy.latency_count),
                                "p50", (double)p->postcopy.latency_p50_ns / 1e3,
                                "p99", (double)p->postcopy.latency_p99_ns / 1e3,
                                "max", (double)p->postcopy.latency_max_ns / 1e3);
    json_t *object = json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}",
                               "active", p->postcopy.active,
                               "switched_at_ms", clamp_int(p->postcopy.switched_at_ms),
                               "pages_total", clamp_int(p->postcopy.pages_total),
                               "pages_pushed", clamp_int(p->postcopy.pages_pushed),
                               "pages_requested", clamp_int(p->postcopy.pages_requested),
                               "requests", clamp_int(p->postcopy.requests),
                               "requests_refused", clamp_int(p->postcopy.requests_refused),
                               "pages_withdrawn", clamp_int(p->postcopy.pages_withdrawn),
                               "pages_left_to_stream", clamp_int(p->postcopy.pages_left_to_stream),
                               "pages_sent_twice", clamp_int(p->postcopy.pages_sent_twice),
                               "pages_received", clamp_int(p->postcopy.pages_received),
                               "pages_zero", clamp_int(p->postcopy.pages_zero),
                               "faults", clamp_int(p->postcopy.faults),
                               "duplicate_faults", clamp_int(p->postcopy.duplicate_faults),
                               "blocktime_total_ms", (double)p->postcopy.blocktime_total_ns / 1e6);
    if (object == NULL || vcpus == NULL || latency == NULL) {
        json_decref(object);
        json_decref(vcpus);
        json_decref(latency);
        return NULL;
    }
    json_object_set_new(object, "vcpus", vcpus);
    json_object_set_new(object, "latency_us", latency);
    json_object_set_new(object, "stream_window_bytes", json_integer(clamp_int(p->postcopy.stream_window)));
    json_object_set_new(object, "discarded_early_pages", json_integer(clamp_int(p->postcopy.discarded_early_pages)));
    json_object_set_new(object, "discarded_in_pause_pages",
                        json_integer(clamp_int(p->postcopy.discarded_in_pause_pages)));
    json_object_set_new(object, "discard_early_ms", json_integer(clamp_int(p->postcopy.discard_early_ms)));
    json_object_set_new(object, "guest_pages_per_s", p->postcopy.guest_pages_per_s >= 0
                                                         ? json_integer(p->postcopy.guest_pages_per_s) : json_null());
    return object;
}

json_t *mig_progress_to_json(const struct mig_progress *p)
{
    json_t *per_vcpu = json_array();
    for (unsigned i = 0; per_vcpu && i < p->vcpu_count && i < MIG_MAX_VCPUS; i++)
        json_array_append_new(per_vcpu, json_integer(p->vcpu_throttle[i]));
    json_t *iterations = json_array();
    uint64_t count = p->iteration_count;
    uint64_t first = count > MIG_PROGRESS_MAX_ITERATIONS ? count - MIG_PROGRESS_MAX_ITERATIONS : 0;
    for (uint64_t i = first; iterations && i < count; i++)
        json_array_append_new(iterations, mig_iteration_to_json(&p->iterations[i % MIG_PROGRESS_MAX_ITERATIONS]));
    json_t *memory = json_pack("{s:I, s:I, s:I, s:I, s:I}",
                               "total", clamp_int(p->memory.total),
                               "transferred", clamp_int(p->memory.transferred),
                               "remaining", clamp_int(p->memory.remaining),
                               "zero_pages", clamp_int(p->memory.zero_pages),
                               "normal_pages", clamp_int(p->memory.normal_pages));
    json_t *error = p->error_code[0] != '\0'
                        ? json_pack("{s:s, s:s}", "code", p->error_code, "message", p->error_message)
                        : json_null();
    uint64_t percent = 0;
    if (p->state == MIG_STATE_COMPLETED)
        percent = 100;
    else if (p->memory.total > 0) {
        /* Pre-copy progress: share of RAM not dirty any more. */
        uint64_t remaining = p->memory.remaining > p->memory.total ? p->memory.total : p->memory.remaining;
        percent = (p->memory.total - remaining) * 100 / p->memory.total;
        if (percent > 99)
            percent = 99;
    }
    json_t *root = json_pack(
        "{s:I, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:o, s:I, s:f, s:o, s:I, s:I, s:I, "
        "s:I, s:o, s:o, s:s?, s:s?, s:I, s:I}",
        "id", clamp_int(p->id),
        "role", p->incoming ? "incoming" : "outgoing",
        "state", mig_state_name(p->state),
        "phase", p->phase,
        "address", p->address,
        "converge", p->converge,
        "downtime_limit_ms", clamp_int(p->downtime_limit_ms),
        "started_at", clamp_int(p->started_at_ms),
        "ended_at", clamp_int(p->ended_at_ms),
        "elapsed_ms", clamp_int(p->elapsed_ms),
        "iteration", clamp_int(p->iteration),
        "percent", clamp_int(percent),
        "throttle_percent", p->throttle_percent,
        "throttle_per_vcpu", per_vcpu ? per_vcpu : json_array(),
        "dirty_rate_pps", clamp_int(p->dirty_rate_pps),
        "bandwidth_mibs", p->bandwidth_mibs,
        "memory", memory ? memory : json_object(),
        "expected_downtime_ms", clamp_int(p->expected_downtime_ms),
        "downtime_ms", clamp_int(p->downtime_ms),
        "setup_ms", clamp_int(p->setup_ms),
        "total_ms", clamp_int(p->total_ms),
        "error", error ? error : json_null(),
        "iterations", iterations ? iterations : json_array(),
        "memory_digest_source", p->digest_source[0] ? p->digest_source : NULL,
        "memory_digest_destination", p->digest_destination[0] ? p->digest_destination : NULL,
        "iteration_count", clamp_int(p->iteration_count),
        "digest_pass_ms", clamp_int(p->digest_pass_ms));
    if (root != NULL) {
        json_object_set_new(root, "source_digest_ms", json_integer(clamp_int(p->source_digest_ms)));
        json_object_set_new(root, "throughput_mibs", json_real(p->throughput_mibs));
        json_object_set_new(root, "mode",
                            json_string(p->local ? "local" : mig_mode_name((enum mig_mode)p->mode)));
        /* Only where post-copy was agreed to (or happened): a pre-copy
         * snapshot stays as it was. */
        if (!p->local && (p->mode != MIG_MODE_PRECOPY || p->postcopy.active)) {
            json_t *postcopy = postcopy_to_json(p);
            json_object_set_new(root, "postcopy", postcopy != NULL ? postcopy : json_null());
        }
        json_object_set_new(root, "downtime_us", json_integer(clamp_int(p->downtime_us)));
        json_object_set_new(root, "expected_downtime_parts",
                            json_pack("{s:I, s:I, s:I, s:I, s:I, s:f}", "transfer_ms",
                                      (json_int_t)clamp_int(p->expected_parts.transfer_ms), "digest_ms",
                                      (json_int_t)clamp_int(p->expected_parts.digest_ms), "switch_over_ms",
                                      (json_int_t)clamp_int(p->expected_parts.switch_over_ms), "backlog_bytes",
                                      (json_int_t)clamp_int(p->backlog_bytes), "state_bytes",
                                      (json_int_t)clamp_int(p->state_bytes), "bandwidth_mibs",
                                      p->expected_parts.bandwidth_mibs));
        json_object_set_new(root, "dirty_rings_recycling",
                            json_pack("{s:b, s:I, s:I, s:I, s:I, s:I}", "recycling", p->recycling.iterations > 0,
                                      "iterations", (json_int_t)clamp_int(p->recycling.iterations),
                                      "harvester_resets", (json_int_t)clamp_int(p->recycling.harvester_resets),
                                      "ring_full_exits", (json_int_t)clamp_int(p->recycling.ring_full_exits),
                                      "entries_harvested", (json_int_t)clamp_int(p->recycling.entries_harvested),
                                      "pages_taken", (json_int_t)clamp_int(p->recycling.pages_taken)));
        json_object_set_new(root, "switch_over",
                            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:o, s:I}", "dry_run_us",
                                      (json_int_t)clamp_int(p->switch_over.dry_run_us), "probe_destination_us",
                                      (json_int_t)clamp_int(p->switch_over.probe_destination_us), "probe_pause_us",
                                      (json_int_t)clamp_int(p->switch_over.probe_pause_us), "learned_us",
                                      (json_int_t)clamp_int(p->switch_over.learned_us), "deviation_us",
                                      (json_int_t)clamp_int(p->switch_over.deviation_us), "learned_count",
                                      (json_int_t)p->switch_over.learned_count, "used_us",
                                      (json_int_t)clamp_int(p->switch_over.used_us), "learned_ignored",
                                      p->switch_over.learned_ignored, "measured_us",
                                      p->switch_over.measured
                                          ? json_integer(clamp_int(p->switch_over.measured_us))
                                          : json_null(),
                                      "paced_us", (json_int_t)clamp_int(p->switch_over.paced_us)));
        json_object_set_new(root, "tls",
                            p->tls.version[0] == '\0'
                                ? json_null()
                                : json_pack("{s:s, s:s, s:s, s:s}", "version", p->tls.version, "cipher",
                                            p->tls.cipher, "auth", p->tls.auth, "suite", p->tls.suite));
    }
    return root;
}
