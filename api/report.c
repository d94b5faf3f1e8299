/*
 * Migration report: HTML page with inline SVG plots from gnuplot (report.h).
 *
 * Steps: read the snapshot(s) into flat per-iteration and per-sample tables
 * (every value a double, NAN when absent), write them as gnuplot data files
 * in a mkdtemp() directory, run one gnuplot script that writes one SVG per
 * plot, then emit the page with each SVG inlined, and remove the directory.
 */
#include "api/report.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define REPORT_MAX_VCPUS 64
#define REPORT_PACKAGE "gnuplot-nox"

const char *const report_plot_ids[] = {
    "plot-dirty-rate",      "plot-bandwidth",     "plot-remaining",       "plot-expected-downtime",
    "plot-throttle",        "plot-throttle-vcpu", "plot-time-rates",      "plot-time-remaining",
    "plot-kick-latency",
};
const size_t report_plot_count = sizeof(report_plot_ids) / sizeof(report_plot_ids[0]);

const char *const report_postcopy_plot_ids[] = {
    "plot-postcopy-pages",
    "plot-postcopy-faults",
    "plot-postcopy-latency",
};
const size_t report_postcopy_plot_count = sizeof(report_postcopy_plot_ids) / sizeof(report_postcopy_plot_ids[0]);

const char *const report_ring_plot_ids[] = {
    "plot-ring-entries",
};
const size_t report_ring_plot_count = sizeof(report_ring_plot_ids) / sizeof(report_ring_plot_ids[0]);

/* ---- lenient JSON reading --------------------------------------------------------- */

static double num(const json_t *object, const char *key)
{
    const json_t *value = json_is_object(object) ? json_object_get(object, key) : NULL;
    if (json_is_integer(value))
        return (double)json_integer_value(value);
    if (json_is_real(value))
        return json_real_value(value);
    return NAN;
}

/* First present key of a NULL-terminated list. */
static double num_any(const json_t *object, ...)
{
    va_list args;
    va_start(args, object);
    double result = NAN;
    for (const char *key; isnan(result) && (key = va_arg(args, const char *)) != NULL;)
        result = num(object, key);
    va_end(args);
    return result;
}

static const char *str(const json_t *object, const char *key)
{
    const json_t *value = json_is_object(object) ? json_object_get(object, key) : NULL;
    return json_is_string(value) ? json_string_value(value) : NULL;
}

/* "Infinite" expected downtimes come as INT64_MAX: not a plottable value. */
static double finite_or_nan(double value)
{
    return (isnan(value) || value > 1e15 || value < 0) ? NAN : value;
}

/* ---- the data ----------------------------------------------------------------- */

struct iteration_row {
    double iter, dur_ms, end_s, overhead_ms, throttle, remaining_bytes, dirty_rate, bandwidth,
        expected_ms, bytes_sent, kick_p50_us, kick_p99_us;
    double ring_entries, ring_recycles;     /* ring mode, per iteration (NAN when absent) */
    unsigned vcpu_count;    /* per-vCPU throttle given for this iteration */
    double vcpu_throttle[REPORT_MAX_VCPUS];
};

struct sample_row {
    double t_s, dirty_rate, bandwidth, remaining_bytes, expected_ms, throttle;
    unsigned vcpu_count;
    double vcpu_throttle[REPORT_MAX_VCPUS];
};

/* One snapshot's "postcopy" object (modes postcopy and hybrid). A counter
 * the snapshot's side does not keep is NAN (docs/api.md: the source keeps
 * pages pushed and requested, the destination the rest). */
struct postcopy_row {
    double t_s, pages_received, pages_requested, pages_pushed, faults, blocktime_ms, latency_p50_us,
        latency_p99_us, latency_max_us;
    bool active;
    char phase[32];
};

enum report_role { ROLE_UNKNOWN = 0, ROLE_OUTGOING, ROLE_INCOMING };

struct report_data {
    const json_t *last;             /* the summary snapshot */
    struct iteration_row *iterations;
    size_t iteration_count;
    struct sample_row *samples;     /* from a snapshot array; else derived from iterations */
    size_t sample_count;
    bool real_samples;
    unsigned vcpu_count;
    double final_throttle[REPORT_MAX_VCPUS];
    double downtime_limit_ms;
    bool per_vcpu_history;          /* some iteration or sample has per-vCPU throttle */
    /* kick latency, µs: per iteration (iterations[]) or per vCPU (bpf) */
    bool kick_per_iteration;
    unsigned kick_vcpu_count;
    double kick_vcpu_p50[REPORT_MAX_VCPUS], kick_vcpu_p99[REPORT_MAX_VCPUS];
    /* Post-copy: the latest "postcopy" object (NULL: no post-copy section)
     * and one row per snapshot that has one (every snapshot of an array,
     * else the one given). */
    const json_t *postcopy;
    const json_t *postcopy_snapshot;    /* the snapshot holding it */
    enum report_role role;
    struct postcopy_row *postcopy_rows;
    size_t postcopy_count;
};

static unsigned read_vcpu_array(const json_t *array, double *out)
{
    if (!json_is_array(array))
        return 0;
    size_t n = json_array_size(array);
    if (n > REPORT_MAX_VCPUS)
        n = REPORT_MAX_VCPUS;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(array, i);
        out[i] = json_is_number(v) ? json_number_value(v) : NAN;
    }
    return (unsigned)n;
}

static const json_t *vcpu_throttle_array(const json_t *object)
{
    const json_t *a = json_object_get(object, "throttle_per_vcpu");
    if (!json_is_array(a))
        a = json_object_get(object, "vcpu_throttle");
    return a;
}

static void read_kick(const json_t *object, double *p50_us, double *p99_us)
{
    const json_t *bpf = json_object_get(object, "bpf");
    const json_t *from = json_is_object(bpf) ? bpf : object;
    *p50_us = num(from, "kick_p50_ns") / 1000.0;
    *p99_us = num(from, "kick_p99_ns") / 1000.0;
}

static enum report_role read_role(const json_t *snapshot)
{
    const char *role = str(snapshot, "role");
    if (role != NULL && strcmp(role, "incoming") == 0)
        return ROLE_INCOMING;
    if (role != NULL && strcmp(role, "outgoing") == 0)
        return ROLE_OUTGOING;
    return ROLE_UNKNOWN;
}

/* A row from snapshot s, when it has a "postcopy" object and a time. */
static bool read_postcopy_row(const json_t *s, struct postcopy_row *row)
{
    const json_t *pc = json_is_object(s) ? json_object_get(s, "postcopy") : NULL;
    double elapsed = num(s, "elapsed_ms");
    if (!json_is_object(pc) || isnan(elapsed))
        return false;
    enum report_role role = read_role(s);
    const json_t *latency = json_object_get(pc, "latency_us");
    row->t_s = elapsed / 1000.0;
    row->pages_requested = num(pc, "pages_requested");
    row->pages_pushed = role == ROLE_INCOMING ? NAN : num(pc, "pages_pushed");
    bool destination = role != ROLE_OUTGOING;
    row->pages_received = destination ? num(pc, "pages_received") : NAN;
    row->faults = destination ? num(pc, "faults") : NAN;
    row->blocktime_ms = destination ? num(pc, "blocktime_total_ms") : NAN;
    row->latency_p50_us = destination ? num(latency, "p50") : NAN;
    row->latency_p99_us = destination ? num(latency, "p99") : NAN;
    row->latency_max_us = destination ? num(latency, "max") : NAN;
    row->active = json_is_true(json_object_get(pc, "active"));
    const char *phase = str(s, "phase");
    snprintf(row->phase, sizeof(row->phase), "%s", phase ? phase : "");
    return true;
}

static int read_data(const json_t *progress, const json_t *bpf, struct report_data *d, char *error,
                     size_t error_size)
{
    memset(d, 0, sizeof(*d));
    const json_t *snapshots = NULL;
    if (json_is_array(progress)) {
        size_t n = json_array_size(progress);
        for (size_t i = n; i > 0 && !d->last; i--)
            if (json_is_object(json_array_get(progress, i - 1)))
                d->last = json_array_get(progress, i - 1);
        snapshots = progress;
    } else if (json_is_object(progress)) {
        d->last = progress;
    }
    if (!d->last) {
        snprintf(error, error_size, "report: no progress snapshot (expected the object `ringctl progress --json` "
                                    "prints, or an array of them)");
        return -1;
    }
    const json_t *last = d->last;
    d->downtime_limit_ms = num_any(last, "downtime_limit_ms", "downtime_limit", (const char *)NULL);
    d->vcpu_count = read_vcpu_array(vcpu_throttle_array(last), d->final_throttle);

    /* iterations[] */
    const json_t *iterations = json_object_get(last, "iterations");
    size_t count = json_is_array(iterations) ? json_array_size(iterations) : 0;
    d->iterations = calloc(count ? count : 1, sizeof(*d->iterations));
    if (!d->iterations) {
        snprintf(error, error_size, "report: out of memory");
        return -1;
    }
    double start_s = num(last, "setup_ms");
    double t = isnan(start_s) ? 0 : start_s / 1000.0;
    const json_t *bpf_iterations = bpf ? json_object_get(bpf, "iterations") : NULL;
    for (size_t i = 0; i < count; i++) {
        const json_t *it = json_array_get(iterations, i);
        if (!json_is_object(it))
            continue;
        struct iteration_row *row = &d->iterations[d->iteration_count++];
        row->iter = num_any(it, "iter", "iteration", (const char *)NULL);
        if (isnan(row->iter))
            row->iter = (double)i;
        row->dur_ms = num_any(it, "dur_ms", "dur", (const char *)NULL);
        if (!isnan(row->dur_ms))
            t += row->dur_ms / 1000.0;
        row->end_s = t;
        row->overhead_ms = num_any(it, "overhead_ms", "overhead", (const char *)NULL);
        row->throttle = num(it, "throttle");
        row->remaining_bytes = num(it, "size_bytes");
        if (isnan(row->remaining_bytes)) {
            double mib = num_any(it, "size_mib", "size", (const char *)NULL);
            row->remaining_bytes = mib * 1048576.0;
        }
        row->dirty_rate = num_any(it, "dirtyrate_pps", "dirtyrate", "dirty_rate_pps", (const char *)NULL);
        row->bandwidth = num_any(it, "bandwidth_mibs", "bandwidth", (const char *)NULL);
        row->expected_ms = finite_or_nan(
            num_any(it, "downtime_expected_ms", "expected_downtime_ms", "expected_downtime", (const char *)NULL));
        row->bytes_sent = num(it, "bytes_sent");
        read_kick(it, &row->kick_p50_us, &row->kick_p99_us);
        const json_t *bpf_it = json_is_array(bpf_iterations) ? json_array_get(bpf_iterations, i) : NULL;
        if (isnan(row->kick_p50_us) && json_is_object(bpf_it))
            read_kick(bpf_it, &row->kick_p50_us, &row->kick_p99_us);
        if (!isnan(row->kick_p50_us) || !isnan(row->kick_p99_us))
            d->kick_per_iteration = true;
        row->ring_entries = num(it, "ring_entries");
        row->ring_recycles = num(it, "ring_recycles");
        row->vcpu_count = read_vcpu_array(vcpu_throttle_array(it), row->vcpu_throttle);
        if (row->vcpu_count > 0)
            d->per_vcpu_history = true;
        if (row->vcpu_count > d->vcpu_count)
            d->vcpu_count = row->vcpu_count;
    }

    /* samples over time */
    size_t snapshot_count = snapshots ? json_array_size(snapshots) : 0;
    size_t capacity = snapshot_count > 1 ? snapshot_count : d->iteration_count;
    d->samples = calloc(capacity ? capacity : 1, sizeof(*d->samples));
    if (!d->samples) {
        snprintf(error, error_size, "report: out of memory");
        return -1;
    }
    if (snapshot_count > 1) {
        d->real_samples = true;
        for (size_t i = 0; i < snapshot_count; i++) {
            const json_t *s = json_array_get(snapshots, i);
            double elapsed = num(s, "elapsed_ms");
            if (!json_is_object(s) || isnan(elapsed))
                continue;
            struct sample_row *row = &d->samples[d->sample_count++];
            row->t_s = elapsed / 1000.0;
            row->dirty_rate = num(s, "dirty_rate_pps");
            row->bandwidth = num(s, "bandwidth_mibs");
            row->remaining_bytes = num(json_object_get(s, "memory"), "remaining");
            row->expected_ms = finite_or_nan(num(s, "expected_downtime_ms"));
            row->throttle = num(s, "throttle_percent");
            row->vcpu_count = read_vcpu_array(vcpu_throttle_array(s), row->vcpu_throttle);
            if (row->vcpu_count > 0)
                d->per_vcpu_history = true;
            if (row->vcpu_count > d->vcpu_count)
                d->vcpu_count = row->vcpu_count;
        }
    }
    if (d->sample_count == 0) {
        for (size_t i = 0; i < d->iteration_count; i++) {
            const struct iteration_row *it = &d->iterations[i];
            struct sample_row *row = &d->samples[d->sample_count++];
            row->t_s = it->end_s;
            row->dirty_rate = it->dirty_rate;
            row->bandwidth = it->bandwidth;
            row->remaining_bytes = it->remaining_bytes;
            row->expected_ms = it->expected_ms;
            row->throttle = it->throttle;
            row->vcpu_count = it->vcpu_count;
            memcpy(row->vcpu_throttle, it->vcpu_throttle, sizeof(row->vcpu_throttle));
        }
    }

    /* Post-copy rows: every snapshot of an array, else the one given. */
    size_t rows = snapshot_count > 1 ? snapshot_count : 1;
    d->postcopy_rows = calloc(rows, sizeof(*d->postcopy_rows));
    if (!d->postcopy_rows) {
        snprintf(error, error_size, "report: out of memory");
        return -1;
    }
    for (size_t i = 0; i < rows; i++) {
        const json_t *s = snapshot_count > 1 ? json_array_get(snapshots, i) : last;
        const json_t *pc = json_is_object(s) ? json_object_get(s, "postcopy") : NULL;
        if (!json_is_object(pc))
            continue;
        d->postcopy = pc;
        d->postcopy_snapshot = s;
        if (read_postcopy_row(s, &d->postcopy_rows[d->postcopy_count]))
            d->postcopy_count++;
    }
    d->role = d->postcopy_snapshot ? read_role(d->postcopy_snapshot) : ROLE_UNKNOWN;

    /* BPF per-vCPU kick latency */
    const json_t *vcpus = bpf ? json_object_get(bpf, "vcpus") : NULL;
    for (size_t i = 0; json_is_array(vcpus) && i < json_array_size(vcpus) && i < REPORT_MAX_VCPUS; i++) {
        const json_t *vcpu = json_array_get(vcpus, i);
        const json_t *hist = json_object_get(vcpu, "kick_latency_ns");
        /* Kernel-side (probe) latency when it saw kicks, else the VMM's own. */
        if (!(num(hist, "count") > 0) && num(json_object_get(vcpu, "vmm_kick_latency_ns"), "count") > 0)
            hist = json_object_get(vcpu, "vmm_kick_latency_ns");
        d->kick_vcpu_p50[i] = num(hist, "p50_ns") / 1000.0;
        d->kick_vcpu_p99[i] = num(hist, "p99_ns") / 1000.0;
        if (num(hist, "count") > 0 || (!isnan(d->kick_vcpu_p50[i]) && isnan(num(hist, "count"))))
            d->kick_vcpu_count = (unsigned)i + 1;
    }
    return 0;
}

/* ---- gnuplot ------------------------------------------------------------------------ */

static void put_value(FILE *f, double value)
{
    if (isnan(value))
        fputs(" ?", f);
    else
        fprintf(f, " %.10g", value);
}

static int write_file(const char *dir, const char *name, char *path, size_t path_size, FILE **out, char *error,
                      size_t error_size)
{
    snprintf(path, path_size, "%s/%s", dir, name);
    *out = fopen(path, "w");
    if (!*out) {
        snprintf(error, error_size, "report: cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int close_file(FILE *f, const char *path, char *error, size_t error_size)
{
    if (ferror(f) | (fclose(f) != 0)) {
        snprintf(error, error_size, "report: cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int write_data_files(const char *dir, const struct report_data *d, char *error, size_t error_size)
{
    char path[512];
    FILE *f;
    /* iterations.dat: iter dirty bandwidth remaining_mib expected_ms throttle kick50 kick99 vcpu0.. */
    if (write_file(dir, "iterations.dat", path, sizeof(path), &f, error, error_size))
        return -1;
    for (size_t i = 0; i < d->iteration_count; i++) {
        const struct iteration_row *r = &d->iterations[i];
        fprintf(f, "%.0f", r->iter);
        put_value(f, r->dirty_rate);
        put_value(f, r->bandwidth);
        put_value(f, r->remaining_bytes / 1048576.0);
        put_value(f, r->expected_ms);
        put_value(f, r->throttle);
        put_value(f, r->kick_p50_us);
        put_value(f, r->kick_p99_us);
        for (unsigned v = 0; v < d->vcpu_count; v++)
            put_value(f, v < r->vcpu_count ? r->vcpu_throttle[v] : NAN);
        fputc('\n', f);
    }
    if (close_file(f, path, error, error_size))
        return -1;
    /* samples.dat: t dirty bandwidth remaining_mib expected_ms throttle vcpu0.. */
    if (write_file(dir, "samples.dat", path, sizeof(path), &f, error, error_size))
        return -1;
    for (size_t i = 0; i < d->sample_count; i++) {
        const struct sample_row *r = &d->samples[i];
        fprintf(f, "%.3f", r->t_s);
        put_value(f, r->dirty_rate);
        put_value(f, r->bandwidth);
        put_value(f, r->remaining_bytes / 1048576.0);
        put_value(f, r->expected_ms);
        put_value(f, r->throttle);
        for (unsigned v = 0; v < d->vcpu_count; v++)
            put_value(f, v < r->vcpu_count ? r->vcpu_throttle[v] : NAN);
        fputc('\n', f);
    }
    if (close_file(f, path, error, error_size))
        return -1;
    /* ring.dat: iter entries_per_page_taken recycles (ring mode) */
    if (write_file(dir, "ring.dat", path, sizeof(path), &f, error, error_size))
        return -1;
    for (size_t i = 0; i < d->iteration_count; i++) {
        const struct iteration_row *r = &d->iterations[i];
        double pages = r->remaining_bytes / 4096.0;
        fprintf(f, "%.0f", r->iter);
        put_value(f, !isnan(r->ring_entries) && pages > 0 ? r->ring_entries / pages : NAN);
        put_value(f, r->ring_recycles);
        fputc('\n', f);
    }
    if (close_file(f, path, error, error_size))
        return -1;
    /* postcopy.dat: t received requested pushed faults blocktime_ms p50_us p99_us max_us */
    if (write_file(dir, "postcopy.dat", path, sizeof(path), &f, error, error_size))
        return -1;
    for (size_t i = 0; i < d->postcopy_count; i++) {
        const struct postcopy_row *r = &d->postcopy_rows[i];
        fprintf(f, "%.3f", r->t_s);
        put_value(f, r->pages_received);
        put_value(f, r->pages_requested);
        put_value(f, r->pages_pushed);
        put_value(f, r->faults);
        put_value(f, r->blocktime_ms);
        put_value(f, r->latency_p50_us);
        put_value(f, r->latency_p99_us);
        put_value(f, r->latency_max_us);
        fputc('\n', f);
    }
    if (close_file(f, path, error, error_size))
        return -1;
    /* vcpus.dat: vcpu final_throttle kick50 kick99 */
    if (write_file(dir, "vcpus.dat", path, sizeof(path), &f, error, error_size))
        return -1;
    unsigned rows = d->vcpu_count > d->kick_vcpu_count ? d->vcpu_count : d->kick_vcpu_count;
    for (unsigned v = 0; v < rows; v++) {
        fprintf(f, "%u", v);
        put_value(f, v < d->vcpu_count ? d->final_throttle[v] : NAN);
        put_value(f, v < d->kick_vcpu_count ? d->kick_vcpu_p50[v] : NAN);
        put_value(f, v < d->kick_vcpu_count ? d->kick_vcpu_p99[v] : NAN);
        fputc('\n', f);
    }
    return close_file(f, path, error, error_size);
}

static bool have_kick(const struct report_data *d)
{
    return d->kick_per_iteration || d->kick_vcpu_count > 0;
}

/* Ring mode's per-iteration entries (progress iterations[].ring_entries). */
static bool have_ring(const struct report_data *d)
{
    for (size_t i = 0; i < d->iteration_count; i++)
        if (!isnan(d->iterations[i].ring_entries))
            return true;
    return false;
}

/* Does any row have a value at this double's offset? */
static bool iteration_column(const struct report_data *d, size_t offset)
{
    for (size_t i = 0; i < d->iteration_count; i++)
        if (!isnan(*(const double *)((const char *)&d->iterations[i] + offset)))
            return true;
    return false;
}

static bool sample_column(const struct report_data *d, size_t offset)
{
    for (size_t i = 0; i < d->sample_count; i++)
        if (!isnan(*(const double *)((const char *)&d->samples[i] + offset)))
            return true;
    return false;
}

static bool iteration_vcpu_column(const struct report_data *d, unsigned v)
{
    for (size_t i = 0; i < d->iteration_count; i++)
        if (v < d->iterations[i].vcpu_count && !isnan(d->iterations[i].vcpu_throttle[v]))
            return true;
    return false;
}

static bool sample_vcpu_column(const struct report_data *d, unsigned v)
{
    for (size_t i = 0; i < d->sample_count; i++)
        if (v < d->samples[i].vcpu_count && !isnan(d->samples[i].vcpu_throttle[v]))
            return true;
    return false;
}

static bool array_any(const double *values, unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        if (!isnan(values[i]))
            return true;
    return false;
}

/* Some post-copy row has a value (above min) at this double's offset. */
static bool postcopy_column(const struct report_data *d, size_t offset, double above)
{
    for (size_t i = 0; i < d->postcopy_count; i++) {
        double value = *(const double *)((const char *)&d->postcopy_rows[i] + offset);
        if (!isnan(value) && value > above)
            return true;
    }
    return false;
}

#define ICOL(field) iteration_column(d, offsetof(struct iteration_row, field))
#define SCOL(field) sample_column(d, offsetof(struct sample_row, field))
#define PCOL(field) postcopy_column(d, offsetof(struct postcopy_row, field), -1.0)
#define PCOL_POSITIVE(field) postcopy_column(d, offsetof(struct postcopy_row, field), 0.0)

/* Builds one `plot` command from the series that have data; gnuplot fails
 * on a series without a single valid point, so those are left out, and a
 * plot with none says "no data". */
struct plot_command {
    FILE *f;
    unsigned clauses;
};

__attribute__((format(printf, 3, 4))) static void series(struct plot_command *p, bool valid, const char *format, ...)
{
    if (!valid)
        return;
    fputs(p->clauses++ ? ", " : "plot ", p->f);
    va_list args;
    va_start(args, format);
    vfprintf(p->f, format, args);
    va_end(args);
}

static void plot_end(struct plot_command *p)
{
    if (p->clauses == 0)
        fputs("unset logscale\nunset y2tics\nunset y2label\nunset arrow\nunset label\nset xrange [0:1]\n"
              "set yrange [0:1]\nunset xtics\nunset ytics\nset label 1 'no data' at 0.5,0.5 center\nplot NaN notitle",
              p->f);
    fputc('\n', p->f);
    p->clauses = 0;
}

static void plot_header(FILE *f, const char *dir, const char *id, const char *title)
{
    fprintf(f, "\nreset\nset datafile missing '?'\nset grid\nset key top right\n");
    /* The name prefixes gnuplot's element ids: distinct per plot, so several
     * SVGs inlined in one page do not share ids. Only [A-Za-z0-9_]. */
    char name[64];
    size_t i = 0;
    for (; id[i] && i + 1 < sizeof(name); i++)
        name[i] = id[i] == '-' ? '_' : id[i];
    name[i] = '\0';
    fprintf(f, "set terminal svg size 760,340 dynamic noenhanced font 'sans,11' name '%s'\n", name);
    fprintf(f, "set output '%s/%s.svg'\n", dir, id);
    fprintf(f, "set title '%s'\n", title);
}

/* The switch-over as a dashed vertical line (elapsed_ms at the switch). */
static void switch_over_marker(FILE *f, const struct report_data *d)
{
    double at_ms = num(d->postcopy, "switched_at_ms");
    if (!json_is_true(json_object_get(d->postcopy, "active")) || isnan(at_ms))
        return;
    fprintf(f, "set arrow 1 from %.10g, graph 0 to %.10g, graph 1 nohead dt 2 lw 1.5 lc rgb '#333333'\n"
               "set label 2 'switch-over' at %.10g, graph 0.96 left offset 0.5,0 textcolor rgb '#333333'\n",
            at_ms / 1000.0, at_ms / 1000.0, at_ms / 1000.0);
}

/* plot-postcopy-*: from postcopy.dat, one point per sample. */
static void write_postcopy_script(FILE *f, const char *dir, const struct report_data *d)
{
    char data[600];
    snprintf(data, sizeof(data), "%s/postcopy.dat", dir);
    struct plot_command p = {f, 0};
    const char *time_label = d->real_samples ? "time since start (s)" : "time since start (s, one sample)";

    plot_header(f, dir, "plot-postcopy-pages", "Post-copy pages over time");
    fprintf(f, "set xlabel '%s'\nset ylabel 'pages'\nset format y '%%.0s%%c'\nset xrange [0:*]\nset yrange [0:*]\n"
               "set key below\n", time_label);
    switch_over_marker(f, d);
    series(&p, PCOL(pages_received), "'%s' using 1:2 with linespoints lw 2 pt 7 lc rgb '#5cb85c' title 'received'",
           data);
    series(&p, PCOL(pages_requested), "'%s' using 1:3 with linespoints lw 2 pt 5 lc rgb '#d9534f' title "
           "'requested (on fault)'", data);
    series(&p, PCOL(pages_pushed), "'%s' using 1:4 with linespoints lw 2 pt 9 lc rgb '#337ab7' title "
           "'pushed (background)'", data);
    double total = num(d->postcopy, "pages_total");
    series(&p, p.clauses > 0 && total > 0, "%.10g with lines dt 2 lw 1.5 lc rgb '#999999' title "
           "'missing at the switch-over'", total);
    plot_end(&p);

    plot_header(f, dir, "plot-postcopy-faults", "Remote faults and blocktime over time");
    fprintf(f, "set xlabel '%s'\nset ylabel 'faults'\nset xrange [0:*]\nset yrange [0:*]\nset key below\n",
            time_label);
    if (PCOL(blocktime_ms))
        fprintf(f, "set y2label 'blocktime (ms, all vCPUs)'\nset ytics nomirror\nset y2tics\nset y2range [0:*]\n");
    switch_over_marker(f, d);
    series(&p, PCOL(faults), "'%s' using 1:5 with linespoints lw 2 pt 7 lc rgb '#d9534f' title 'faults'", data);
    series(&p, PCOL(blocktime_ms), "'%s' using 1:6 axes x1y2 with linespoints lw 2 pt 5 lc rgb '#8e44ad' title "
           "'blocktime'", data);
    plot_end(&p);

    plot_header(f, dir, "plot-postcopy-latency", "Fault service latency over time: p50, p99, max");
    fprintf(f, "set xlabel '%s'\nset ylabel 'µs (log)'\nset logscale y\nset xrange [0:*]\nset key below\n",
            time_label);
    switch_over_marker(f, d);
    /* Zero (no fault served yet) has no place on a log scale. */
    series(&p, PCOL_POSITIVE(latency_p50_us), "'%s' using 1:($7>0?$7:1/0) with linespoints lw 2 pt 7 lc rgb "
           "'#5bc0de' title 'p50'", data);
    series(&p, PCOL_POSITIVE(latency_p99_us), "'%s' using 1:($8>0?$8:1/0) with linespoints lw 2 pt 5 lc rgb "
           "'#d9534f' title 'p99'", data);
    series(&p, PCOL_POSITIVE(latency_max_us), "'%s' using 1:($9>0?$9:1/0) with linespoints lw 2 pt 9 lc rgb "
           "'#333333' title 'max'", data);
    plot_end(&p);
}

static int write_script(const char *dir, const struct report_data *d, char *error, size_t error_size)
{
    char path[512];
    FILE *f;
    if (write_file(dir, "plots.gp", path, sizeof(path), &f, error, error_size))
        return -1;
    char iters[600], samples[600], vcpus[600];
    snprintf(iters, sizeof(iters), "%s/iterations.dat", dir);
    snprintf(samples, sizeof(samples), "%s/samples.dat", dir);
    snprintf(vcpus, sizeof(vcpus), "%s/vcpus.dat", dir);
    bool limit = !isnan(d->downtime_limit_ms) && d->downtime_limit_ms > 0;
    const char *time_label = d->real_samples ? "time since start (s)" : "time since start (s, end of each iteration)";
    struct plot_command p = {f, 0};
    fprintf(f, "set encoding utf8\n");

    plot_header(f, dir, "plot-dirty-rate", "Dirty rate per iteration");
    fprintf(f, "set xlabel 'iteration'\nset ylabel 'pages/s'\nset format y '%%.0s%%c'\nset xtics 1\n"
               "set yrange [0:*]\nset style fill solid 0.6\nset boxwidth 0.6\n");
    series(&p, ICOL(dirty_rate), "'%s' using 1:2 with boxes lc rgb '#d9534f' title 'dirty rate'", iters);
    plot_end(&p);

    plot_header(f, dir, "plot-bandwidth", "Bandwidth per iteration");
    fprintf(f, "set xlabel 'iteration'\nset ylabel 'MiB/s'\nset xtics 1\nset yrange [0:*]\n");
    series(&p, ICOL(bandwidth), "'%s' using 1:3 with linespoints lw 2 pt 7 lc rgb '#337ab7' title 'bandwidth'",
           iters);
    plot_end(&p);

    plot_header(f, dir, "plot-remaining", "Remaining (dirty) memory after each iteration");
    fprintf(f, "set xlabel 'iteration'\nset ylabel 'MiB'\nset xtics 1\nset yrange [0:*]\nset style fill solid 0.6\n"
               "set boxwidth 0.6\n");
    series(&p, ICOL(remaining_bytes), "'%s' using 1:4 with boxes lc rgb '#5cb85c' title 'remaining'", iters);
    plot_end(&p);

    plot_header(f, dir, "plot-expected-downtime", "Expected downtime vs limit");
    fprintf(f, "set xlabel 'iteration'\nset ylabel 'ms'\nset xtics 1\nset logscale y\n");
    series(&p, ICOL(expected_ms),
           "'%s' using 1:5 with linespoints lw 2 pt 7 lc rgb '#f0ad4e' title 'expected downtime'", iters);
    series(&p, limit && p.clauses > 0, "%.10g with lines dt 2 lw 2 lc rgb '#333333' title 'limit %.0f ms'",
           d->downtime_limit_ms, d->downtime_limit_ms);
    plot_end(&p);

    plot_header(f, dir, "plot-throttle", d->per_vcpu_history ? "Throttle per vCPU" : "Throttle (max over vCPUs)");
    fprintf(f, "set ylabel 'percent'\nset yrange [0:100]\n");
    if (d->real_samples) {
        fprintf(f, "set xlabel '%s'\n", time_label);
        for (unsigned v = 0; d->per_vcpu_history && v < d->vcpu_count; v++)
            series(&p, sample_vcpu_column(d, v), "'%s' using 1:%u with steps lw 2 title 'vCPU %u'", samples, 7 + v, v);
        series(&p, !d->per_vcpu_history && SCOL(throttle), "'%s' using 1:6 with steps lw 2 title 'all vCPUs (max)'",
               samples);
    } else {
        fprintf(f, "set xlabel 'iteration'\nset xtics 1\n");
        for (unsigned v = 0; d->per_vcpu_history && v < d->vcpu_count; v++)
            series(&p, iteration_vcpu_column(d, v), "'%s' using 1:%u with linespoints lw 2 pt 7 title 'vCPU %u'",
                   iters, 9 + v, v);
        series(&p, !d->per_vcpu_history && ICOL(throttle),
               "'%s' using 1:6 with linespoints lw 2 pt 7 lc rgb '#8e44ad' title 'all vCPUs (max)'", iters);
    }
    plot_end(&p);

    plot_header(f, dir, "plot-throttle-vcpu", "Final throttle per vCPU");
    fprintf(f, "set xlabel 'vCPU'\nset ylabel 'percent'\nset yrange [0:100]\nset xtics 1\nset style fill solid 0.6\n"
               "set boxwidth 0.5\n");
    series(&p, array_any(d->final_throttle, d->vcpu_count),
           "'%s' using 1:2 with boxes lc rgb '#8e44ad' title 'throttle'", vcpus);
    plot_end(&p);

    plot_header(f, dir, "plot-time-rates", "Dirty rate and bandwidth over time");
    /* Both in MiB/s (a dirty page is 4 KiB to resend): comparable lines. */
    fprintf(f, "set xlabel '%s'\nset ylabel 'MiB/s'\nset xrange [0:*]\nset yrange [0:*]\nset key below\n",
            time_label);
    series(&p, SCOL(dirty_rate),
           "'%s' using 1:($2*4096/1048576) with linespoints lw 2 pt 7 lc rgb '#d9534f' title 'dirty rate (4 KiB pages)'",
           samples);
    series(&p, SCOL(bandwidth), "'%s' using 1:3 with linespoints lw 2 pt 5 lc rgb '#337ab7' title 'bandwidth'",
           samples);
    plot_end(&p);

    plot_header(f, dir, "plot-time-remaining", "Remaining memory and expected downtime over time");
    fprintf(f, "set xlabel '%s'\nset ylabel 'MiB'\nset xrange [0:*]\nset yrange [0:*]\nset key below\n",
            time_label);
    if (SCOL(expected_ms))
        fprintf(f, "set y2label 'ms'\nset ytics nomirror\nset y2tics\nset logscale y2\n");
    series(&p, SCOL(remaining_bytes), "'%s' using 1:4 with linespoints lw 2 pt 7 lc rgb '#5cb85c' title 'remaining'",
           samples);
    series(&p, SCOL(expected_ms),
           "'%s' using 1:5 axes x1y2 with linespoints lw 2 pt 5 lc rgb '#f0ad4e' title 'expected downtime'", samples);
    series(&p, limit && SCOL(expected_ms), "%.10g axes x1y2 with lines dt 2 lw 2 lc rgb '#333333' title 'limit'",
           d->downtime_limit_ms);
    plot_end(&p);

    if (have_kick(d)) {
        plot_header(f, dir, "plot-kick-latency", "Kick latency (vCPU out of KVM_RUN), p50 / p99");
        fprintf(f, "set ylabel 'µs (log)'\nset logscale y\nset xtics 1\nset key top left\n");
        if (d->kick_per_iteration) {
            fprintf(f, "set xlabel 'iteration'\n");
            series(&p, ICOL(kick_p50_us), "'%s' using 1:7 with linespoints lw 2 pt 7 lc rgb '#5bc0de' title 'p50'",
                   iters);
            series(&p, ICOL(kick_p99_us), "'%s' using 1:8 with linespoints lw 2 pt 5 lc rgb '#d9534f' title 'p99'",
                   iters);
        } else {
            fprintf(f, "set xlabel 'vCPU'\nset offsets 0.5, 0.5, 0, 0\n");
            series(&p, array_any(d->kick_vcpu_p50, d->kick_vcpu_count),
                   "'%s' using 1:3 with points pt 7 ps 1.5 lc rgb '#5bc0de' title 'p50'", vcpus);
            series(&p, array_any(d->kick_vcpu_p99, d->kick_vcpu_count),
                   "'%s' using 1:4 with points pt 5 ps 1.5 lc rgb '#d9534f' title 'p99'", vcpus);
        }
        plot_end(&p);
    }
    if (have_ring(d)) {
        char ring[600];
        snprintf(ring, sizeof(ring), "%s/ring.dat", dir);
        plot_header(f, dir, "plot-ring-entries", "Dirty ring entries per page taken, and recycling, per iteration");
        fprintf(f, "set xlabel 'iteration'\nset ylabel 'entries per page'\nset xtics 1\nset yrange [0:*]\n"
                   "set style fill solid 0.6\nset boxwidth 0.6\nset key below\n"
                   "set y2label 'harvester resets + ring-full exits'\nset ytics nomirror\nset y2tics\n"
                   "set y2range [0:*]\n");
        series(&p, ICOL(ring_entries), "'%s' using 1:2 with boxes lc rgb '#337ab7' title 'entries per page taken'",
               ring);
        series(&p, ICOL(ring_entries), "1 with lines dt 2 lw 1.5 lc rgb '#333333' title 'one fault per page'");
        series(&p, ICOL(ring_recycles), "'%s' using 1:3 axes x1y2 with linespoints lw 2 pt 7 lc rgb '#d9534f' "
               "title 'recycling'", ring);
        plot_end(&p);
    }
    if (d->postcopy != NULL)
        write_postcopy_script(f, dir, d);
    return close_file(f, path, error, error_size);
}

static const char *gnuplot_program(void)
{
    const char *program = getenv("RINGVM_GNUPLOT");
    return program && *program ? program : "gnuplot";
}

int report_gnuplot_available(void)
{
    const char *program = gnuplot_program();
    if (strchr(program, '/'))
        return access(program, X_OK) == 0;
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t length = end ? (size_t)(end - path) : strlen(path);
        char candidate[4096];
        if (length > 0 && length + strlen(program) + 2 < sizeof(candidate)) {
            snprintf(candidate, sizeof(candidate), "%.*s/%s", (int)length, path, program);
            if (access(candidate, X_OK) == 0)
                return 1;
        }
        path += length;
        if (*path == ':')
            path++;
    }
    return 0;
}

static int run_gnuplot(const char *dir, char *error, size_t error_size)
{
    const char *program = gnuplot_program();
    if (!report_gnuplot_available()) {
        snprintf(error, error_size,
                 "report: %s not found: the plots need gnuplot; install the Debian package " REPORT_PACKAGE
                 " (apt-get install " REPORT_PACKAGE ", or scripts/install-deps.sh --bench)",
                 program);
        return -1;
    }
    char script[512], log[512];
    snprintf(script, sizeof(script), "%s/plots.gp", dir);
    snprintf(log, sizeof(log), "%s/gnuplot.log", dir);
    posix_spawn_file_actions_t actions;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc == 0)
        rc = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0)
        rc = posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (rc != 0) {
        snprintf(error, error_size, "report: posix_spawn_file_actions: %s", strerror(rc));
        posix_spawn_file_actions_destroy(&actions);
        return -1;
    }
    char *argv[] = {(char *)program, script, NULL};
    pid_t pid;
    rc = posix_spawnp(&pid, program, &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        snprintf(error, error_size, "report: cannot run %s: %s%s", program, strerror(rc),
                 rc == ENOENT ? " (install the Debian package " REPORT_PACKAGE ")" : "");
        return -1;
    }
    int status;
    pid_t waited;
    do
        waited = waitpid(pid, &status, 0);
    while (waited < 0 && errno == EINTR);
    if (waited < 0) {
        snprintf(error, error_size, "report: waitpid(gnuplot): %s", strerror(errno));
        return -1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char output[300] = "";
        FILE *f = fopen(log, "r");
        if (f) {
            size_t n = fread(output, 1, sizeof(output) - 1, f);
            output[n] = '\0';
            fclose(f);
            for (char *c = output; *c; c++)
                if (*c == '\n')
                    *c = ' ';
        }
        snprintf(error, error_size, "report: gnuplot failed (%s %d): %s",
                 WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                 output);
        return -1;
    }
    return 0;
}

/* ---- HTML ----------------------------------------------------------------------------- */

static void html_escape(FILE *out, const char *text)
{
    for (; text && *text; text++) {
        switch (*text) {
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '&': fputs("&amp;", out); break;
        case '"': fputs("&quot;", out); break;
        default: fputc(*text, out);
        }
    }
}

/* Copies the SVG gnuplot wrote, minus the XML prolog, giving the <svg> its id. */
static int embed_svg(FILE *out, const char *dir, const char *id, char *error, size_t error_size)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.svg", dir, id);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(error, error_size, "report: gnuplot wrote no %s: %s", path, strerror(errno));
        return -1;
    }
    char *svg = NULL;
    size_t size = 0;
    FILE *memory = open_memstream(&svg, &size);
    if (!memory) {
        fclose(f);
        snprintf(error, error_size, "report: open_memstream: %s", strerror(errno));
        return -1;
    }
    char buffer[65536];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), f)) > 0)
        fwrite(buffer, 1, n, memory);
    bool read_error = ferror(f);
    fclose(f);
    if (fclose(memory) != 0 || read_error || !svg) {
        free(svg);
        snprintf(error, error_size, "report: cannot read %s", path);
        return -1;
    }
    const char *start = strstr(svg, "<svg");
    if (!start) {
        free(svg);
        snprintf(error, error_size, "report: %s is not an SVG", path);
        return -1;
    }
    fprintf(out, "<svg id=\"%s\" role=\"img\"", id);
    fputs(start + 4, out);
    fputc('\n', out);
    free(svg);
    return 0;
}

static void fmt_number(char *out, size_t size, double value, const char *unit)
{
    if (isnan(value))
        snprintf(out, size, "n/a");
    else
        snprintf(out, size, "%.0f%s", value, unit);
}

static void fmt_bytes(char *out, size_t size, double bytes)
{
    if (isnan(bytes))
        snprintf(out, size, "n/a");
    else if (bytes >= 1024.0 * 1048576.0)
        snprintf(out, size, "%.2f GiB (%.0f bytes)", bytes / (1024.0 * 1048576.0), bytes);
    else
        snprintf(out, size, "%.1f MiB (%.0f bytes)", bytes / 1048576.0, bytes);
}

static void summary_row(FILE *out, const char *id, const char *label, const char *value)
{
    fprintf(out, "<tr id=\"%s\"><th>%s</th><td>", id, label);
    html_escape(out, value);
    fprintf(out, "</td></tr>\n");
}

static void write_summary(FILE *out, const struct report_data *d)
{
    const json_t *p = d->last;
    char value[256], a[96], b[96];
    fprintf(out, "<section id=\"summary\" class=\"box\"><h2>Summary</h2><table>\n");
    const char *state = str(p, "state");
    summary_row(out, "summary-state", "State", state ? state : "n/a");
    fmt_number(value, sizeof(value), num(p, "total_ms"), " ms");
    summary_row(out, "summary-total", "Total time", value);
    fmt_number(a, sizeof(a), num(p, "downtime_ms"), " ms");
    fmt_number(b, sizeof(b), d->downtime_limit_ms, " ms");
    snprintf(value, sizeof(value), "%s (limit %s)", a, b);
    summary_row(out, "summary-downtime", "Downtime", value);
    fmt_number(value, sizeof(value), num(p, "setup_ms"), " ms");
    summary_row(out, "summary-setup", "Setup", value);
    double iterations = num(p, "iteration_count");
    if (isnan(iterations) && json_is_array(json_object_get(p, "iterations")))
        iterations = (double)d->iteration_count;
    fmt_number(value, sizeof(value), iterations, "");
    summary_row(out, "summary-iterations", "Iterations", value);
    const json_t *memory = json_object_get(p, "memory");
    fmt_bytes(value, sizeof(value), num(memory, "transferred"));
    summary_row(out, "summary-bytes", "Bytes sent", value);
    fmt_bytes(value, sizeof(value), num(memory, "total"));
    summary_row(out, "summary-memory", "Guest memory", value);
    fmt_number(a, sizeof(a), num(memory, "normal_pages"), "");
    fmt_number(b, sizeof(b), num(memory, "zero_pages"), "");
    snprintf(value, sizeof(value), "%s normal, %s zero", a, b);
    summary_row(out, "summary-pages", "Pages", value);
    const char *converge = str(p, "converge");
    summary_row(out, "summary-converge", "Converge mode", converge ? converge : "n/a");
    /* The throttle is lifted at switch-over, so a finished migration's
     * snapshot says 0: the last iteration's throttle is the one that counted. */
    double throttle = num(p, "throttle_percent");
    if (d->iteration_count > 0 && !isnan(d->iterations[d->iteration_count - 1].throttle) &&
        (isnan(throttle) || d->iterations[d->iteration_count - 1].throttle > throttle))
        throttle = d->iterations[d->iteration_count - 1].throttle;
    fmt_number(value, sizeof(value), throttle, " %");
    summary_row(out, "summary-throttle", "Throttle at the last iteration (max over vCPUs)", value);
    const char *address = str(p, "address");
    summary_row(out, "summary-address", "Destination", address ? address : "n/a");
    const char *source = str(p, "memory_digest_source"), *destination = str(p, "memory_digest_destination");
    if (source && destination)
        snprintf(value, sizeof(value), "%s (%s)", strcmp(source, destination) == 0 ? "match" : "MISMATCH", source);
    else if (source && num(p, "source_digest_ms") > 0)   /* without verify_digest: hashed after the ack */
        snprintf(value, sizeof(value), "source only (%s), hashed after the ack in %.0f ms of the total", source,
                 num(p, "source_digest_ms"));
    else if (source)
        snprintf(value, sizeof(value), "source only (%s)", source);
    else
        snprintf(value, sizeof(value), "n/a");
    summary_row(out, "summary-digest", "Memory digest", value);
    const json_t *error = json_object_get(p, "error");
    if (json_is_object(error)) {
        snprintf(value, sizeof(value), "%s: %s", str(error, "code") ? str(error, "code") : "?",
                 str(error, "message") ? str(error, "message") : "");
        summary_row(out, "summary-error", "Error", value);
    }
    fprintf(out, "</table></section>\n");
}

static void write_iteration_table(FILE *out, const struct report_data *d)
{
    const json_t *iterations = json_object_get(d->last, "iterations");
    if (!json_is_array(iterations) || json_array_size(iterations) == 0)
        return;
    fprintf(out, "<section id=\"iterations\"><h2>Iterations</h2><pre>");
    for (size_t i = 0; i < json_array_size(iterations); i++) {
        const json_t *it = json_array_get(iterations, i);
        const char *line = str(it, "line");
        if (line) {
            html_escape(out, line);
        } else {
            const struct iteration_row *r = i < d->iteration_count ? &d->iterations[i] : NULL;
            if (r)
                fprintf(out, "iter=%.0f dur=%.0fms throttle=%.0f%% remaining=%.0fMiB dirtyrate=%.0fpps "
                             "bandwidth=%.2fMiBs downtime(expected)=%.0fms",
                        r->iter, r->dur_ms, r->throttle, r->remaining_bytes / 1048576.0, r->dirty_rate, r->bandwidth,
                        r->expected_ms);
        }
        fputc('\n', out);
    }
    fprintf(out, "</pre></section>\n");
}

static const char *plot_caption(const char *id)
{
    static const struct { const char *id, *caption; } captions[] = {
        {"plot-dirty-rate", "Pages the guest dirtied per second, measured over each iteration."},
        {"plot-bandwidth", "Migration stream bandwidth in each iteration."},
        {"plot-remaining", "Dirty memory still to send when each iteration ended."},
        {"plot-expected-downtime", "Remaining / bandwidth: stop-and-copy starts once it is under the limit."},
        {"plot-throttle", "How much of each vCPU's time the throttle takes."},
        {"plot-throttle-vcpu", "Throttle per vCPU in the last snapshot (a completed migration has lifted it: 0)."},
        {"plot-time-rates", "Dirty rate (as MiB/s of pages to resend) against bandwidth: pre-copy converges when red stays under blue."},
        {"plot-time-remaining", "Remaining memory and the expected downtime it implies."},
        {"plot-kick-latency", "Time from the VMM's kick to the vCPU leaving KVM_RUN (eBPF probes)."},
        {"plot-ring-entries", "Ring mode: dirty ring entries harvested in each iteration per page it left to "
                              "send, i.e. write-protect faults per page (1 = one fault per page per pass), and "
                              "how often the rings recycled (harvester resets + ring-full exits): recycling "
                              "means a vCPU writes more distinct pages per pass than its ring holds."},
        {"plot-postcopy-pages", "Pages moved after the switch-over, so far at each sample: received by the "
                                "destination, requested on a fault (served on the urgent channel), pushed by the "
                                "source's background stream. The source counts requested and pushed, the "
                                "destination requested and received."},
        {"plot-postcopy-faults", "Guest faults on missing pages and the time vCPUs spent blocked on them (summed "
                                 "over vCPUs), so far at each sample. Measured by the destination."},
        {"plot-postcopy-latency", "Fault service latency (fault read to page placed) of the faults served so far "
                                  "at each sample. Measured by the destination."},
    };
    for (size_t i = 0; i < sizeof(captions) / sizeof(captions[0]); i++)
        if (strcmp(captions[i].id, id) == 0)
            return captions[i].caption;
    return "";
}

static void fmt_fixed(char *out, size_t size, double value, int decimals, const char *unit)
{
    if (isnan(value))
        snprintf(out, size, "-");
    else
        snprintf(out, size, "%.*f%s", decimals, value, unit);
}

static void postcopy_summary(FILE *out, const struct report_data *d)
{
    const json_t *pc = d->postcopy;
    const json_t *s = d->postcopy_snapshot;
    char value[4096], a[64], b[64], c[64], e[64];
    const char *mode = str(s, "mode");
    snprintf(value, sizeof(value), "%s, %s", mode ? mode : "n/a",
             d->role == ROLE_INCOMING ? "destination (incoming)"
             : d->role == ROLE_OUTGOING ? "source (outgoing)" : "side unknown");
    summary_row(out, "postcopy-mode", "Mode, side", value);
    const char *state = str(s, "state");
    bool finished = state && (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 ||
                              strcmp(state, "cancelled") == 0);
    if (json_is_true(json_object_get(pc, "active"))) {
        fmt_number(a, sizeof(a), num(pc, "switched_at_ms"), " ms");
        snprintf(value, sizeof(value), "at %s after the start", a);
    } else {
        snprintf(value, sizeof(value), "%s", finished ? "never switched over" : "not switched over yet");
    }
    summary_row(out, "postcopy-switch", "Switch-over", value);
    const char *phase = str(s, "phase");
    summary_row(out, "postcopy-phase", "Phase (last sample)", phase ? phase : "n/a");
    fmt_number(a, sizeof(a), num(pc, "pages_total"), "");
    if (d->role == ROLE_OUTGOING) {
        fmt_number(b, sizeof(b), num(pc, "pages_pushed"), "");
        fmt_number(c, sizeof(c), num(pc, "pages_requested"), "");
        fmt_number(e, sizeof(e), num(pc, "requests"), "");
        char refused[64];
        fmt_number(refused, sizeof(refused), num(pc, "requests_refused"), "");
        snprintf(value, sizeof(value), "of %s missing at the switch-over: %s pushed, %s requested (%s requests, %s "
                 "refused)", a, b, c, e, refused);
    } else {
        fmt_number(b, sizeof(b), num(pc, "pages_received"), "");
        fmt_number(c, sizeof(c), num(pc, "pages_zero"), "");
        fmt_number(e, sizeof(e), num(pc, "pages_requested"), "");
        snprintf(value, sizeof(value), "of %s missing at the switch-over: %s received (%s zero), %s requested", a, b,
                 c, e);
    }
    summary_row(out, "postcopy-pages", "Pages", value);
    if (d->role == ROLE_OUTGOING) {
        static const char measured_there[] = "measured by the destination: report its progress "
                                             "(ringctl -s DESTINATION-SOCKET report --watch)";
        summary_row(out, "postcopy-faults", "Remote faults", measured_there);
        summary_row(out, "postcopy-blocktime", "Blocktime", measured_there);
        summary_row(out, "postcopy-latency", "Fault service latency", measured_there);
        return;
    }
    fmt_number(a, sizeof(a), num(pc, "faults"), "");
    fmt_number(b, sizeof(b), num(pc, "duplicate_faults"), "");
    snprintf(value, sizeof(value), "%s (%s on a page already requested)", a, b);
    summary_row(out, "postcopy-faults", "Remote faults", value);
    fmt_fixed(a, sizeof(a), num(pc, "blocktime_total_ms"), 3, " ms");
    size_t used = (size_t)snprintf(value, sizeof(value), "%s in all", a);
    const json_t *vcpus = json_object_get(pc, "vcpus");
    for (size_t i = 0; json_is_array(vcpus) && i < json_array_size(vcpus) && used < sizeof(value); i++) {
        const json_t *vcpu = json_array_get(vcpus, i);
        double index = num(vcpu, "index");
        fmt_fixed(a, sizeof(a), num(vcpu, "blocktime_ms"), 3, " ms");
        fmt_number(b, sizeof(b), num(vcpu, "faults"), "");
        int n = snprintf(value + used, sizeof(value) - used, "%s vCPU %.0f %s (%s faults)", i == 0 ? ";" : ",",
                         isnan(index) ? (double)i : index, a, b);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    summary_row(out, "postcopy-blocktime", "Blocktime", value);
    const json_t *latency = json_object_get(pc, "latency_us");
    fmt_fixed(a, sizeof(a), num(latency, "p50"), 1, " µs");
    fmt_fixed(b, sizeof(b), num(latency, "p99"), 1, " µs");
    fmt_fixed(c, sizeof(c), num(latency, "max"), 1, " µs");
    fmt_number(e, sizeof(e), num(latency, "count"), "");
    snprintf(value, sizeof(value), "p50 %s, p99 %s, max %s (%s faults served)", a, b, c, e);
    summary_row(out, "postcopy-latency", "Fault service latency", value);
}

/* The post-copy section: summary of the latest snapshot, the plots over
 * time, and every sample as a table row. */
static int write_postcopy_section(FILE *out, const char *dir, const struct report_data *d, char *error,
                                  size_t error_size)
{
    fprintf(out, "<section id=\"postcopy\"><h2>Post-copy</h2>\n<div class=\"box\"><table>\n");
    postcopy_summary(out, d);
    fprintf(out, "</table></div>\n");
    if (!d->real_samples)
        fprintf(out, "<p>One sample: the snapshot given. <code>ringctl report --watch</code> samples the migration "
                     "until it ends.</p>\n");
    fprintf(out, "<div class=\"plots\">\n");
    for (size_t i = 0; i < report_postcopy_plot_count; i++) {
        const char *plot = report_postcopy_plot_ids[i];
        fprintf(out, "<figure id=\"fig-%s\">\n", plot + 5);
        if (embed_svg(out, dir, plot, error, error_size))
            return -1;
        fprintf(out, "<figcaption>%s</figcaption></figure>\n", plot_caption(plot));
    }
    fprintf(out, "</div>\n<h3>Samples</h3>\n<table id=\"postcopy-samples\" class=\"samples\">\n"
                 "<tr><th>t (s)</th><th>phase</th><th>switched</th><th>received</th><th>requested</th>"
                 "<th>pushed</th><th>faults</th><th>blocktime (ms)</th><th>p50 (µs)</th><th>p99 (µs)</th>"
                 "<th>max (µs)</th></tr>\n");
    for (size_t i = 0; i < d->postcopy_count; i++) {
        const struct postcopy_row *r = &d->postcopy_rows[i];
        char cells[9][48];
        fmt_fixed(cells[0], sizeof(cells[0]), r->t_s, 3, "");
        fmt_fixed(cells[1], sizeof(cells[1]), r->pages_received, 0, "");
        fmt_fixed(cells[2], sizeof(cells[2]), r->pages_requested, 0, "");
        fmt_fixed(cells[3], sizeof(cells[3]), r->pages_pushed, 0, "");
        fmt_fixed(cells[4], sizeof(cells[4]), r->faults, 0, "");
        fmt_fixed(cells[5], sizeof(cells[5]), r->blocktime_ms, 3, "");
        fmt_fixed(cells[6], sizeof(cells[6]), r->latency_p50_us, 1, "");
        fmt_fixed(cells[7], sizeof(cells[7]), r->latency_p99_us, 1, "");
        fmt_fixed(cells[8], sizeof(cells[8]), r->latency_max_us, 1, "");
        fprintf(out, "<tr class=\"postcopy-sample\"><td>%s</td><td>", cells[0]);
        html_escape(out, r->phase[0] ? r->phase : "-");
        fprintf(out, "</td><td>%s</td>", r->active ? "yes" : "no");
        for (size_t c = 1; c < 9; c++)
            fprintf(out, "<td>%s</td>", cells[c]);
        fprintf(out, "</tr>\n");
    }
    fprintf(out, "</table>\n<p>Counters so far at each sample; - where this side does not count it (the source "
                 "counts pages pushed and requested, the destination the rest).</p>\n</section>\n");
    return 0;
}

static int write_html(FILE *out, const char *dir, const struct report_data *d, char *error, size_t error_size)
{
    const json_t *p = d->last;
    double id = num(p, "id");
    fprintf(out, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                 "<title>ringvm migration report");
    if (!isnan(id))
        fprintf(out, " #%.0f", id);
    fprintf(out, "</title>\n<style>\n"
                 "body{font-family:sans-serif;margin:2em auto;max-width:1600px;color:#222}\n"
                 ".box{border:1px solid #bbb;border-radius:6px;padding:0.5em 1.5em;background:#f8f8f8;"
                 "display:inline-block}\n"
                 ".box th{text-align:left;padding-right:2em;font-weight:normal;color:#555}\n"
                 ".plots{display:flex;flex-wrap:wrap;gap:1em}\n"
                 "figure{margin:0;border:1px solid #ddd;padding:0.5em}\n"
                 "figcaption{font-size:90%%;color:#555;max-width:760px}\n"
                 "pre{background:#f4f4f4;padding:0.5em;overflow-x:auto}\n"
                 ".samples{border-collapse:collapse;font-size:90%%}\n"
                 ".samples td,.samples th{border:1px solid #ddd;padding:0.1em 0.6em;text-align:right}\n"
                 "</style></head><body>\n<h1>ringvm migration report");
    if (!isnan(id))
        fprintf(out, " #%.0f", id);
    fprintf(out, "</h1>\n");
    double started = num(p, "started_at");
    if (!isnan(started) && started > 0) {
        time_t seconds = (time_t)(started / 1000.0);
        struct tm tm;
        char when[64];
        if (gmtime_r(&seconds, &tm) && strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm) > 0)
            fprintf(out, "<p>Started %s.</p>\n", when);
    }
    write_summary(out, d);
    fprintf(out, "<h2>Per iteration and over time</h2>\n");
    if (!d->real_samples)
        fprintf(out, "<p>Over-time plots use one point per iteration (its end). <code>ringctl report --watch"
                     "</code> samples the migration until it ends, for finer samples.</p>\n");
    fprintf(out, "<div class=\"plots\">\n");
    for (size_t i = 0; i < report_plot_count; i++) {
        const char *plot = report_plot_ids[i];
        if (strcmp(plot, "plot-kick-latency") == 0 && !have_kick(d))
            continue;
        fprintf(out, "<figure id=\"fig-%s\">\n", plot + 5);
        if (embed_svg(out, dir, plot, error, error_size))
            return -1;
        fprintf(out, "<figcaption>%s</figcaption></figure>\n", plot_caption(plot));
    }
    if (have_ring(d)) {
        for (size_t i = 0; i < report_ring_plot_count; i++) {
            const char *plot = report_ring_plot_ids[i];
            fprintf(out, "<figure id=\"fig-%s\">\n", plot + 5);
            if (embed_svg(out, dir, plot, error, error_size))
                return -1;
            fprintf(out, "<figcaption>%s</figcaption></figure>\n", plot_caption(plot));
        }
    }
    fprintf(out, "</div>\n");
    if (!have_kick(d))
        fprintf(out, "<p id=\"no-kick-latency\">Kick latency: no BPF stats (start ringvm with --bpf and pass "
                     "them to the report).</p>\n");
    if (d->postcopy != NULL && write_postcopy_section(out, dir, d, error, error_size) != 0)
        return -1;
    write_iteration_table(out, d);
    fprintf(out, "<p style=\"color:#888\">Generated by ringctl report; plots by gnuplot.</p>\n</body></html>\n");
    if (ferror(out)) {
        snprintf(error, error_size, "report: writing the HTML failed: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static void remove_dir(const char *dir)
{
    static const char *const files[] = {"iterations.dat", "samples.dat", "postcopy.dat", "ring.dat", "vcpus.dat",
                                        "plots.gp", "gnuplot.log"};
    char path[512];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    for (size_t i = 0; i < report_plot_count; i++) {
        snprintf(path, sizeof(path), "%s/%s.svg", dir, report_plot_ids[i]);
        unlink(path);
    }
    for (size_t i = 0; i < report_postcopy_plot_count; i++) {
        snprintf(path, sizeof(path), "%s/%s.svg", dir, report_postcopy_plot_ids[i]);
        unlink(path);
    }
    for (size_t i = 0; i < report_ring_plot_count; i++) {
        snprintf(path, sizeof(path), "%s/%s.svg", dir, report_ring_plot_ids[i]);
        unlink(path);
    }
    rmdir(dir);
}

int report_render(const json_t *progress, const json_t *bpf_stats_or_null, FILE *out_html, char *error,
                  size_t error_size)
{
    struct report_data d;
    int rc = -1;
    if (read_data(progress, json_is_object(bpf_stats_or_null) ? bpf_stats_or_null : NULL, &d, error,
                  error_size) != 0)
        goto out;
    if (!report_gnuplot_available()) {
        snprintf(error, error_size,
                 "report: %s not found: the plots need gnuplot; install the Debian package " REPORT_PACKAGE
                 " (apt-get install " REPORT_PACKAGE ", or scripts/install-deps.sh --bench)",
                 gnuplot_program());
        goto out;
    }
    const char *tmp = getenv("TMPDIR");
    char dir[256];
    snprintf(dir, sizeof(dir), "%s/ringvm-report-XXXXXX", tmp && *tmp && strlen(tmp) < 200 ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(error, error_size, "report: mkdtemp %s: %s", dir, strerror(errno));
        goto out;
    }
    if (write_data_files(dir, &d, error, error_size) == 0 && write_script(dir, &d, error, error_size) == 0 &&
        run_gnuplot(dir, error, error_size) == 0 && write_html(out_html, dir, &d, error, error_size) == 0)
        rc = 0;
    remove_dir(dir);
out:
    free(d.iterations);
    free(d.samples);
    free(d.postcopy_rows);
    return rc;
}
