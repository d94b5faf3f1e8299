/*
 * The migration report (api/report.c): renders the stored progress file
 * tests/data/progress-sample.json (6 iterations, 2 vCPUs, converge=auto)
 * with tests/data/bpf-stats-sample.json and checks, without a browser, that
 * the HTML holds every plot as an inline <svg id="plot-..."> and the summary
 * numbers. The post-copy section (issue 17) from synthetic snapshots made
 * by mig_progress_to_json (destination and source series, one snapshot, a
 * hybrid migration that never switched) and from sparse hand-written JSON.
 * Needs gnuplot (Debian gnuplot-nox): skipped with a reason when it is
 * missing. No timing assertions. `ringctl report --watch`: its option
 * checks (no VMM), and (report_vm, needs /dev/kvm) its samples of a held
 * hybrid migration until cancelled.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/report.h"
#include "api/server.h"
#include "migration/migration.h"
#include "migration/progress.h"
#include "tests/harness.h"

#define DATA_DIR "tests/data/"

static json_t *load(const char *name)
{
    char path[512];
    const char *root = getenv("RINGVM_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s%s%s", root ? root : "", root ? "/" : "", name);
    json_error_t error;
    json_t *value = json_load_file(path, 0, &error);
    cr_assert_not_null(value, "cannot load %s (run from the repository root): %s", path, error.text);
    return value;
}

static void skip_without_gnuplot(void)
{
    if (!report_gnuplot_available())
        harness_skip("gnuplot not installed (Debian package gnuplot-nox, scripts/install-deps.sh --bench): "
                     "report rendering not tested");
}

/* Renders into memory; returns the HTML (caller frees) or NULL with error. */
static char *render(const json_t *progress, const json_t *bpf, char *error, size_t error_size)
{
    char *html = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&html, &size);
    cr_assert_not_null(out);
    int rc = report_render(progress, bpf, out, error, error_size);
    cr_assert_eq(fclose(out), 0);
    if (rc != 0) {
        free(html);
        return NULL;
    }
    return html;
}

static size_t count(const char *haystack, const char *needle)
{
    size_t n = 0;
    for (const char *p = haystack; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* The summary row with this id contains text. */
static void assert_summary(const char *html, const char *id, const char *text)
{
    char key[96];
    snprintf(key, sizeof(key), "<tr id=\"%s\">", id);
    const char *row = strstr(html, key);
    cr_assert_not_null(row, "summary row %s missing", id);
    const char *end = strstr(row, "</tr>");
    cr_assert_not_null(end);
    char *copy = strndup(row, (size_t)(end - row));
    cr_assert(strstr(copy, text) != NULL, "summary row %s is '%s', expected it to contain '%s'", id, copy, text);
    free(copy);
}

Test(report, sample_has_every_plot_and_the_summary)
{
    skip_without_gnuplot();
    json_t *progress = load(DATA_DIR "progress-sample.json");
    json_t *bpf = load(DATA_DIR "bpf-stats-sample.json");
    char error[1024] = "";
    char *html = render(progress, bpf, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);

    cr_assert(strncmp(html, "<!DOCTYPE html>", 15) == 0);
    cr_assert(strstr(html, "</html>") != NULL);
    for (size_t i = 0; i < report_plot_count; i++) {
        char key[96];
        snprintf(key, sizeof(key), "<svg id=\"%s\"", report_plot_ids[i]);
        cr_assert_eq(count(html, key), 1, "plot %s: expected exactly one inline <svg id=...>", report_plot_ids[i]);
    }
    cr_assert_eq(count(html, "<svg"), report_plot_count, "one <svg> per plot");
    cr_assert_eq(count(html, "</svg>"), report_plot_count);
    /* Self-contained: no external references, no XML prolog inside the body. */
    cr_assert_null(strstr(html, "<?xml"));
    cr_assert_null(strstr(html, "<script src"));
    cr_assert_null(strstr(html, "<link "));

    assert_summary(html, "summary-state", "completed");
    assert_summary(html, "summary-total", "9201 ms");
    assert_summary(html, "summary-downtime", "252 ms");
    assert_summary(html, "summary-downtime", "limit 300 ms");
    assert_summary(html, "summary-setup", "12 ms");
    assert_summary(html, "summary-iterations", "6");
    assert_summary(html, "summary-bytes", "3801988433 bytes");
    assert_summary(html, "summary-converge", "auto");
    assert_summary(html, "summary-throttle", "50 %");
    assert_summary(html, "summary-digest", "match");
    /* The per-iteration log lines, verbatim. */
    cr_assert(strstr(html, "iter=5,dur=529ms,overhead=0ms,throttle=50%,size=94MiB,dirtyrate=61902pps,"
                           "bandwidth=400.31MiBs,downtime(expected)=234ms") != NULL);
    free(html);
    json_decref(progress);
    json_decref(bpf);
}

Test(report, without_bpf_stats_the_kick_plot_is_left_out_and_explained)
{
    skip_without_gnuplot();
    json_t *progress = load(DATA_DIR "progress-sample.json");
    char error[1024] = "";
    char *html = render(progress, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    cr_assert_null(strstr(html, "<svg id=\"plot-kick-latency\""));
    cr_assert_not_null(strstr(html, "id=\"no-kick-latency\""));
    cr_assert_not_null(strstr(html, "<svg id=\"plot-throttle-vcpu\""));
    free(html);
    json_decref(progress);
}

Test(report, a_series_of_snapshots_and_missing_fields_still_render)
{
    skip_without_gnuplot();
    /* Two sparse snapshots (per-vCPU throttle over time), no iterations. */
    json_t *series = json_pack("[{s:I, s:I, s:[i,i], s:{s:I}}, {s:s, s:I, s:[i,i], s:{s:I}}]",
                               "elapsed_ms", (json_int_t)100, "dirty_rate_pps", (json_int_t)1000,
                               "throttle_per_vcpu", 0, 0, "memory", "remaining", (json_int_t)1048576,
                               "state", "active", "elapsed_ms", (json_int_t)200, "throttle_per_vcpu", 20, 0,
                               "memory", "remaining", (json_int_t)524288);
    cr_assert_not_null(series);
    char error[1024] = "";
    char *html = render(series, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    assert_summary(html, "summary-state", "active");
    assert_summary(html, "summary-total", "n/a");
    assert_summary(html, "summary-converge", "n/a");
    cr_assert_not_null(strstr(html, "<svg id=\"plot-throttle\""));
    free(html);
    json_decref(series);
}

/* Without verify_digest only the source hashed (after the ack): the row
 * says so and how long it took, rather than "n/a". */
Test(report, a_source_only_digest_says_when_and_how_long)
{
    skip_without_gnuplot();
    json_t *snapshot = json_pack("{s:s, s:s, s:I, s:s, s:n, s:I}", "role", "outgoing", "state", "completed",
                                 "total_ms", (json_int_t)4321, "memory_digest_source",
                                 "00112233445566778899aabbccddeeff", "memory_digest_destination",
                                 "source_digest_ms", (json_int_t)37);
    cr_assert_not_null(snapshot);
    char error[1024] = "";
    char *html = render(snapshot, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    assert_summary(html, "summary-digest",
                   "source only (00112233445566778899aabbccddeeff), hashed after the ack in 37 ms of the total");
    free(html);
    json_decref(snapshot);
}

Test(report, no_snapshot_is_a_clear_error)
{
    json_t *nothing = json_array();
    char error[1024] = "";
    FILE *out = fopen("/dev/null", "w");
    cr_assert_not_null(out);
    cr_assert_eq(report_render(nothing, NULL, out, error, sizeof(error)), -1);
    cr_assert_not_null(strstr(error, "no progress snapshot"), "error: %s", error);
    fclose(out);
    json_decref(nothing);
}

Test(report, missing_gnuplot_names_the_package)
{
    /* Criterion runs each test in its own process: the variable stays here. */
    cr_assert_eq(setenv("RINGVM_GNUPLOT", "/nonexistent/ringvm-test/gnuplot", 1), 0);
    json_t *progress = load(DATA_DIR "progress-sample.json");
    char error[1024] = "";
    FILE *out = fopen("/dev/null", "w");
    cr_assert_not_null(out);
    cr_assert_eq(report_render(progress, NULL, out, error, sizeof(error)), -1);
    cr_assert_not_null(strstr(error, "gnuplot-nox"), "error should name the package: %s", error);
    fclose(out);
    json_decref(progress);
}

/* ---- the post-copy section (issue 17) ------------------------------------------------------------------- */

/* The text between the start of the element with this id and its end
 * tag (caller frees). */
static char *element(const char *html, const char *start_key, const char *end_tag)
{
    const char *start = strstr(html, start_key);
    cr_assert_not_null(start, "no %s in the page", start_key);
    const char *end = strstr(start, end_tag);
    cr_assert_not_null(end, "%s is not closed", start_key);
    return strndup(start, (size_t)(end - start));
}

/* A post-copy snapshot as migration.progress returns it (the real
 * encoder, so the report reads what the VMM writes). */
static json_t *postcopy_snapshot(bool incoming, const char *phase, uint64_t elapsed_ms, bool active,
                                 uint64_t scale)
{
    struct mig_progress *p = calloc(1, sizeof(*p));
    cr_assert_not_null(p);
    p->id = 4;
    p->incoming = incoming;
    p->mode = (int)MIG_MODE_POSTCOPY;
    p->state = strcmp(phase, "done") == 0 ? MIG_STATE_COMPLETED : MIG_STATE_ACTIVE;
    snprintf(p->phase, sizeof(p->phase), "%s", phase);
    snprintf(p->address, sizeof(p->address), "unix:/tmp/dest.sock");
    snprintf(p->converge, sizeof(p->converge), "auto");
    p->downtime_limit_ms = 300;
    p->elapsed_ms = elapsed_ms;
    p->vcpu_count = 2;
    p->memory.total = 1ull << 30;
    p->postcopy.active = active;
    if (active) {
        p->postcopy.switched_at_ms = 1234;
        p->postcopy.pages_total = 262144;
        p->postcopy.pages_pushed = 100000 * scale;
        p->postcopy.pages_requested = 500 * scale;
        p->postcopy.requests = 450 * scale;
        p->postcopy.requests_refused = scale - 1;
        p->postcopy.pages_received = 100500 * scale;
        p->postcopy.pages_zero = 3500 * scale;
        p->postcopy.faults = 800 * scale;
        p->postcopy.duplicate_faults = 50 * scale;
        p->postcopy.blocktime_total_ns = 6000000 * scale;
        p->postcopy.vcpu_faults[0] = 500 * scale;
        p->postcopy.vcpu_faults[1] = 300 * scale;
        p->postcopy.vcpu_blocktime_ns[0] = 4000000 * scale;
        p->postcopy.vcpu_blocktime_ns[1] = 2000000 * scale;
        p->postcopy.latency_count = 500 * scale;
        p->postcopy.latency_p50_ns = 240000 + 10000 * scale;
        p->postcopy.latency_p99_ns = 850000 + 50000 * scale;
        p->postcopy.latency_max_ns = 1500000 * scale;
    }
    json_t *object = mig_progress_to_json(p);
    cr_assert_not_null(object);
    free(p);
    return object;
}

/* Three samples of one side: before the switch-over, during post-copy,
 * at its end. */
static json_t *postcopy_series(bool incoming)
{
    json_t *series = json_array();
    json_array_append_new(series, postcopy_snapshot(incoming, "handshake", 100, false, 0));
    json_array_append_new(series, postcopy_snapshot(incoming, "postcopy", 1500, true, 1));
    json_array_append_new(series, postcopy_snapshot(incoming, incoming ? "postcopy-end" : "waiting-ack", 3000, true,
                                                    2));
    return series;
}

static void assert_plot_has(const char *html, const char *id, const char *text, bool present)
{
    char key[96];
    snprintf(key, sizeof(key), "<svg id=\"%s\"", id);
    char *svg = element(html, key, "</svg>");
    if (present)
        cr_assert_not_null(strstr(svg, text), "plot %s lacks '%s'", id, text);
    else
        cr_assert_null(strstr(svg, text), "plot %s has '%s'", id, text);
    free(svg);
}

Test(report, a_precopy_report_has_no_postcopy_section)
{
    skip_without_gnuplot();
    json_t *progress = load(DATA_DIR "progress-sample.json");
    char error[1024] = "";
    char *html = render(progress, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    cr_assert_null(strstr(html, "id=\"postcopy\""));
    for (size_t i = 0; i < report_postcopy_plot_count; i++)
        cr_assert_null(strstr(html, report_postcopy_plot_ids[i]), "%s in a pre-copy report",
                       report_postcopy_plot_ids[i]);
    free(html);
    json_decref(progress);
}

Test(report, the_destination_postcopy_section_has_every_counter_over_time)
{
    skip_without_gnuplot();
    json_t *series = postcopy_series(true);
    char error[1024] = "";
    char *html = render(series, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    cr_assert_eq(count(html, "<section id=\"postcopy\">"), 1);
    for (size_t i = 0; i < report_postcopy_plot_count; i++) {
        char key[96];
        snprintf(key, sizeof(key), "<svg id=\"%s\"", report_postcopy_plot_ids[i]);
        cr_assert_eq(count(html, key), 1, "plot %s: expected exactly one inline <svg id=...>",
                     report_postcopy_plot_ids[i]);
        assert_plot_has(html, report_postcopy_plot_ids[i], "no data", false);
        assert_plot_has(html, report_postcopy_plot_ids[i], "switch-over", true);
    }
    /* Every plot but the kick latency (no BPF stats), and the three. */
    cr_assert_eq(count(html, "<svg"), report_plot_count - 1 + report_postcopy_plot_count);
    cr_assert_eq(count(html, "</svg>"), report_plot_count - 1 + report_postcopy_plot_count);
    assert_plot_has(html, "plot-postcopy-pages", "received", true);
    assert_plot_has(html, "plot-postcopy-pages", "requested (on fault)", true);
    assert_plot_has(html, "plot-postcopy-pages", "pushed (background)", false);   /* the source's counter */
    assert_plot_has(html, "plot-postcopy-faults", "blocktime", true);
    assert_plot_has(html, "plot-postcopy-latency", "p99", true);

    assert_summary(html, "postcopy-mode", "postcopy, destination (incoming)");
    assert_summary(html, "postcopy-switch", "at 1234 ms after the start");
    assert_summary(html, "postcopy-phase", "postcopy-end");
    assert_summary(html, "postcopy-pages", "of 262144 missing at the switch-over: 201000 received (7000 zero), "
                                           "1000 requested");
    assert_summary(html, "postcopy-faults", "1600 (100 on a page already requested)");
    assert_summary(html, "postcopy-blocktime", "12.000 ms in all; vCPU 0 8.000 ms (1000 faults), vCPU 1 4.000 ms "
                                               "(600 faults)");
    assert_summary(html, "postcopy-latency", "p50 260.0 µs, p99 950.0 µs, max 3000.0 µs (1000 faults served)");

    /* One row per sample, the source's counter left blank. */
    char *table = element(html, "<table id=\"postcopy-samples\"", "</table>");
    cr_assert_eq(count(table, "<tr class=\"postcopy-sample\">"), 3);
    cr_assert_not_null(strstr(table, "<tr class=\"postcopy-sample\"><td>0.100</td><td>handshake</td><td>no</td>"
                                     "<td>0</td><td>0</td><td>-</td><td>0</td><td>0.000</td><td>0.0</td><td>0.0</td>"
                                     "<td>0.0</td></tr>"), "%s", table);
    cr_assert_not_null(strstr(table, "<tr class=\"postcopy-sample\"><td>1.500</td><td>postcopy</td><td>yes</td>"
                                     "<td>100500</td><td>500</td><td>-</td><td>800</td><td>6.000</td><td>250.0</td>"
                                     "<td>900.0</td><td>1500.0</td></tr>"), "%s", table);
    cr_assert_not_null(strstr(table, "<tr class=\"postcopy-sample\"><td>3.000</td><td>postcopy-end</td><td>yes</td>"
                                     "<td>201000</td><td>1000</td><td>-</td><td>1600</td><td>12.000</td>"
                                     "<td>260.0</td><td>950.0</td><td>3000.0</td></tr>"), "%s", table);
    free(table);
    cr_assert_null(strstr(html, "One sample: the snapshot given"));
    free(html);
    json_decref(series);
}

Test(report, the_source_postcopy_section_shows_what_the_source_counts)
{
    skip_without_gnuplot();
    json_t *series = postcopy_series(false);
    char error[1024] = "";
    char *html = render(series, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    assert_summary(html, "postcopy-mode", "postcopy, source (outgoing)");
    assert_summary(html, "postcopy-pages", "of 262144 missing at the switch-over: 200000 pushed, 1000 requested "
                                           "(900 requests, 1 refused)");
    static const char *const elsewhere[] = { "postcopy-faults", "postcopy-blocktime", "postcopy-latency" };
    for (size_t i = 0; i < sizeof(elsewhere) / sizeof(elsewhere[0]); i++)
        assert_summary(html, elsewhere[i], "measured by the destination: report its progress");
    assert_plot_has(html, "plot-postcopy-pages", "pushed (background)", true);
    assert_plot_has(html, "plot-postcopy-pages", "requested (on fault)", true);
    assert_plot_has(html, "plot-postcopy-pages", "'received'", false);
    assert_plot_has(html, "plot-postcopy-faults", "no data", true);
    assert_plot_has(html, "plot-postcopy-latency", "no data", true);
    char *table = element(html, "<table id=\"postcopy-samples\"", "</table>");
    cr_assert_not_null(strstr(table, "<tr class=\"postcopy-sample\"><td>3.000</td><td>waiting-ack</td><td>yes</td>"
                                     "<td>-</td><td>1000</td><td>200000</td><td>-</td><td>-</td><td>-</td><td>-</td>"
                                     "<td>-</td></tr>"), "%s", table);
    free(table);
    free(html);
    json_decref(series);
}

Test(report, one_postcopy_snapshot_is_one_sample)
{
    skip_without_gnuplot();
    json_t *snapshot = postcopy_snapshot(true, "postcopy", 2000, true, 1);
    char error[1024] = "";
    char *html = render(snapshot, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    char *table = element(html, "<table id=\"postcopy-samples\"", "</table>");
    cr_assert_eq(count(table, "<tr class=\"postcopy-sample\">"), 1);
    free(table);
    cr_assert_not_null(strstr(html, "One sample: the snapshot given. <code>ringctl report --watch</code> samples "
                                    "the migration until it ends."));
    assert_plot_has(html, "plot-postcopy-pages", "no data", false);
    free(html);
    json_decref(snapshot);
}

Test(report, a_hybrid_migration_that_never_switched_says_so)
{
    skip_without_gnuplot();
    json_t *snapshot = postcopy_snapshot(false, "iterating", 900, false, 0);
    json_object_set_new(snapshot, "mode", json_string("hybrid"));
    char error[1024] = "";
    char *html = render(snapshot, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    assert_summary(html, "postcopy-mode", "hybrid, source (outgoing)");
    assert_summary(html, "postcopy-switch", "not switched over yet");
    assert_plot_has(html, "plot-postcopy-pages", "switch-over", false);
    free(html);
    json_object_set_new(snapshot, "state", json_string("completed"));
    html = render(snapshot, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    assert_summary(html, "postcopy-switch", "never switched over");
    free(html);
    json_decref(snapshot);
}

/* Hand-written input: a postcopy object with fields missing or mistyped,
 * a sample without a time. The page still renders; what is missing reads
 * n/a or "-", and a plot without points says "no data". */
Test(report, a_sparse_postcopy_object_still_renders)
{
    skip_without_gnuplot();
    json_t *series = json_pack("[{s:I, s:{}}, {s:{s:b, s:s}}, {s:I, s:s, s:{s:b, s:I, s:s}}]",
                               "elapsed_ms", (json_int_t)100, "postcopy",
                               "postcopy", "active", 1, "faults", "many",
                               "elapsed_ms", (json_int_t)200, "role", "incoming", "postcopy", "active", 1,
                               "pages_received", (json_int_t)42, "latency_us", "fast");
    cr_assert_not_null(series);
    char error[1024] = "";
    char *html = render(series, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    char *table = element(html, "<table id=\"postcopy-samples\"", "</table>");
    cr_assert_eq(count(table, "<tr class=\"postcopy-sample\">"), 2, "the sample without elapsed_ms is left out");
    cr_assert_not_null(strstr(table, "<tr class=\"postcopy-sample\"><td>0.200</td><td>-</td><td>yes</td><td>42</td>"
                                     "<td>-</td><td>-</td><td>-</td><td>-</td><td>-</td><td>-</td><td>-</td></tr>"),
                       "%s", table);
    free(table);
    assert_summary(html, "postcopy-mode", "n/a, destination (incoming)");
    assert_summary(html, "postcopy-switch", "at n/a after the start");
    assert_summary(html, "postcopy-latency", "p50 -, p99 -, max - (n/a faults served)");
    assert_plot_has(html, "plot-postcopy-latency", "no data", true);
    assert_plot_has(html, "plot-postcopy-pages", "no data", false);
    free(html);
    json_decref(series);
}

/* ---- ringctl report --watch ------------------------------------------------------------------------------ */

#define NOBODY "/nonexistent/ringvm-report.sock"

static const char *ringctl_or_skip(void)
{
    const char *ringctl = harness_program("ringctl");
    if (access(ringctl, X_OK) != 0)
        harness_skip("%s not built (make all)", ringctl);
    return ringctl;
}

/* `ringctl -s NOBODY report ARGS...`: exit status; stderr must be message
 * (NULL: not checked). */
static int report_command(char *const arguments[], const char *message)
{
    char *argv[16] = { (char *)ringctl_or_skip(), "-s", NOBODY, "report" };
    size_t count = 4;
    for (size_t i = 0; arguments[i] != NULL; i++) {
        cr_assert_lt(count, sizeof(argv) / sizeof(argv[0]) - 1);
        argv[count++] = arguments[i];
    }
    argv[count] = NULL;
    struct harness_process process;
    harness_spawn(&process, argv);
    int status = harness_process_wait_exit(&process, 20000);
    if (message != NULL)
        cr_assert_str_eq(process.err, message);
    harness_process_free(&process);
    return status;
}

Test(report, watch_options_are_checked_before_connecting)
{
    char *interval[] = { "--interval", "100", NULL };
    cr_assert_eq(report_command(interval, "ringctl report: --interval needs --watch\n"), 2);
    char *save[] = { "--save", "/tmp/x.jsonl", NULL };
    cr_assert_eq(report_command(save, "ringctl report: --save needs --watch\n"), 2);
    char *from[] = { "--watch", "--from", "/tmp/x.jsonl", NULL };
    cr_assert_eq(report_command(from, "ringctl report: --watch samples the VMM; --from reads a file: not both\n"), 2);
    static const char *const bad[] = { "10", "49", "60001", "abc", "", "100ms", "-100" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char message[128];
        snprintf(message, sizeof(message), "ringctl report: --interval %s: expected an integer 50..60000 (ms)\n",
                 bad[i]);
        char *arguments[] = { "--watch", "--interval", (char *)bad[i], NULL };
        cr_assert_eq(report_command(arguments, message), 2, "--interval %s", bad[i]);
    }
    char *good[] = { "--watch", "--interval", "50", "--save", "/tmp/ringvm-report-unused.jsonl", NULL };
    cr_assert_eq(report_command(good, NULL), 3, "a valid --watch connects (and cannot)");
    char *argv[] = { (char *)ringctl_or_skip(), "report", "--help", NULL };
    struct harness_process process;
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 0);
    cr_assert_not_null(strstr(process.out, "\n                                [--watch [--interval MS] [--save FILE]]\n"),
                       "%s", process.out);
    cr_assert_not_null(strstr(process.out, "\n  --watch          sample migration.progress every --interval until the\n"),
                       "%s", process.out);
    cr_assert_not_null(strstr(process.out, "stats), a summary, and for post-copy and hybrid migrations a post-copy "
                                           "section:\n"), "%s", process.out);
    harness_process_free(&process);
}

/* Reads the child's stderr until report --watch announced its sampling. */
static void wait_for_announcement(struct harness_process *process)
{
    for (int i = 0; i < 1000 && (process->err == NULL || strstr(process->err, "sampling") == NULL); i++) {
        harness_process_read_available(process);
        usleep(20000);
    }
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    char *text = NULL;
    size_t size = 0;
    cr_assert_gt(getdelim(&text, &size, '\0', f), 0, "%s is empty", path);
    fclose(f);
    return text;
}

/* Needs /dev/kvm: `ringctl report --watch` against a VM whose hybrid
 * migration is held in its handshake by a destination that accepts
 * nothing: stopped by SIGINT, then until the migration is cancelled. */
Test(report_vm, watch_samples_until_the_migration_ends, .timeout = 120)
{
    harness_require_kvm();
    skip_without_gnuplot();
    const char *ringctl = ringctl_or_skip();
    struct harness_vm h;
    harness_vm_create(&h, "64M", 1, "dirtier,wss=4M", "ring");
    char socket_path[128], silent_path[108], saved[128], html[128];
    snprintf(socket_path, sizeof(socket_path), "/tmp/ringvm-report-watch-api-%d.sock", (int)getpid());
    snprintf(silent_path, sizeof(silent_path), "/tmp/ringvm-report-watch-silent-%d.sock", (int)getpid());
    snprintf(saved, sizeof(saved), "/tmp/ringvm-report-watch-%d.jsonl", (int)getpid());
    snprintf(html, sizeof(html), "/tmp/ringvm-report-watch-%d.html", (int)getpid());
    struct api_server *server = NULL;
    cr_assert_eq(api_server_create(&server, h.vm, socket_path), 0);
    cr_assert_eq(vm_start(h.vm), 0);
    unlink(silent_path);
    int silent = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(silent, 0);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", silent_path);
    cr_assert_eq(bind(silent, (struct sockaddr *)&address, sizeof(address)), 0, "bind: %s", strerror(errno));
    cr_assert_eq(listen(silent, 4), 0);
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "unix:%s", silent_path);
    params.mode = MIG_MODE_HYBRID;
    params.postcopy_after_auto = true;
    params.stall_timeout_ms = 120000;
    uint64_t id = 0;
    const char *code = NULL;
    char message[512];
    cr_assert_eq(migration_start(h.vm, NULL, &params, &id, &code, message, sizeof(message)), 0, "%s: %s", code,
                 message);

    char announced[160];
    snprintf(announced, sizeof(announced), "ringctl report: sampling migration %llu every 50 ms until it ends (Ctrl-C "
             "stops early)\n", (unsigned long long)id);
    struct harness_process process;

    /* Ctrl-C: the report of what was sampled, the migration still running. */
    char *interrupted[] = { (char *)ringctl, "-s", socket_path, "report", "--watch", "--interval", "50", "--out", html,
                            NULL };
    harness_spawn(&process, interrupted);
    wait_for_announcement(&process);
    cr_assert_str_eq(process.err, announced);
    cr_assert_eq(kill(process.pid, SIGINT), 0);
    int status = harness_process_wait_exit(&process, 30000);
    cr_assert_eq(status, 0, "exit %d; stderr: %s", status, process.err);
    cr_assert_str_eq(process.err, announced);
    harness_process_free(&process);
    char *page = read_text(html);
    assert_summary(page, "summary-state", "setup");    /* held in its handshake */
    assert_summary(page, "postcopy-switch", "not switched over yet");
    free(page);
    cr_assert(migration_active(h.vm));

    /* Until the end. */
    char *argv[] = { (char *)ringctl, "-s", socket_path, "report", "--watch", "--interval", "50", "--save", saved,
                     "--out", html, NULL };
    harness_spawn(&process, argv);
    wait_for_announcement(&process);
    cr_assert_str_eq(process.err, announced);
    usleep(300000);
    cr_assert_eq(migration_cancel(h.vm, &code, message, sizeof(message)), 0, "%s: %s", code, message);
    status = harness_process_wait_exit(&process, 30000);
    cr_assert_eq(status, 0, "exit %d; stderr: %s", status, process.err);
    char expected_out[160];
    snprintf(expected_out, sizeof(expected_out), "%s\n", html);
    cr_assert_str_eq(process.out, expected_out);
    cr_assert_str_eq(process.err, announced);
    harness_process_free(&process);

    /* The samples: one migration, in time order, only the last with its
     * iterations, ending cancelled. */
    FILE *f = fopen(saved, "r");
    cr_assert_not_null(f, "%s: %s", saved, strerror(errno));
    char *line = NULL;
    size_t size = 0;
    size_t samples = 0;
    json_int_t previous_ms = -1;
    json_t *last = NULL;
    while (getline(&line, &size, f) > 0) {
        json_error_t error;
        json_t *sample = json_loads(line, 0, &error);
        cr_assert_not_null(sample, "sample %zu is not JSON: %s", samples, error.text);
        cr_assert_eq(json_integer_value(json_object_get(sample, "id")), (json_int_t)id);
        cr_assert(json_is_object(json_object_get(sample, "postcopy")), "a hybrid migration's sample has postcopy");
        json_int_t elapsed = json_integer_value(json_object_get(sample, "elapsed_ms"));
        cr_assert_geq(elapsed, previous_ms, "sample %zu goes back in time", samples);
        previous_ms = elapsed;
        if (last != NULL)
            cr_assert_null(json_object_get(last, "iterations"), "sample %zu kept its iterations", samples - 1);
        json_decref(last);
        last = sample;
        samples++;
    }
    free(line);
    fclose(f);
    /* At least the first (announced, active) and the last (cancelled). */
    cr_assert_geq(samples, 2, "only %zu samples", samples);
    cr_assert_str_eq(json_string_value(json_object_get(last, "state")), "cancelled");
    cr_assert(json_is_array(json_object_get(last, "iterations")));
    json_decref(last);

    /* The page: every sample in the post-copy table. */
    page = read_text(html);
    assert_summary(page, "summary-state", "cancelled");
    assert_summary(page, "postcopy-mode", "hybrid, source (outgoing)");
    assert_summary(page, "postcopy-switch", "never switched over");
    char *table = element(page, "<table id=\"postcopy-samples\"", "</table>");
    cr_assert_eq(count(table, "<tr class=\"postcopy-sample\">"), samples);
    free(table);
    cr_assert_null(strstr(page, "One sample: the snapshot given"));
    free(page);
    unlink(saved);
    unlink(html);
    close(silent);
    unlink(silent_path);
    migration_release(h.vm);
    api_server_destroy(server);
    harness_vm_stop(&h);
}

/* Ring mode: each iteration record carries the ring entries harvested in
 * it and the rings' recycling; the progress JSON has them exactly, and the
 * report adds plot-ring-entries (only then). */
Test(report, ring_entries_per_iteration_reach_the_json_and_their_plot)
{
    struct mig_iteration_record record = { .iteration = 2, .size_bytes = 4096 * 1000, .has_ring = true,
                                           .ring_entries = 1250, .ring_recycles = 3 };
    json_t *object = mig_iteration_to_json(&record);
    cr_assert_not_null(object);
    cr_assert_eq(json_integer_value(json_object_get(object, "ring_entries")), 1250);
    cr_assert_eq(json_integer_value(json_object_get(object, "ring_recycles")), 3);
    json_decref(object);
    record.has_ring = false;
    object = mig_iteration_to_json(&record);
    cr_assert_null(json_object_get(object, "ring_entries"), "bitmap mode has no ring entries");
    json_decref(object);

    skip_without_gnuplot();
    json_t *progress = load(DATA_DIR "progress-sample.json");
    json_t *last = json_is_array(progress) ? json_array_get(progress, json_array_size(progress) - 1) : progress;
    json_t *iterations = json_object_get(last, "iterations");
    cr_assert(json_is_array(iterations) && json_array_size(iterations) > 0);
    for (size_t i = 0; i < json_array_size(iterations); i++) {
        json_t *it = json_array_get(iterations, i);
        json_object_set_new(it, "ring_entries", json_integer(1000 + (json_int_t)i));
        json_object_set_new(it, "ring_recycles", json_integer((json_int_t)i % 2));
    }
    char error[1024] = "";
    char *html = render(progress, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    cr_assert_eq(count(html, "<svg id=\"plot-ring-entries\""), 1);
    cr_assert_not_null(strstr(html, "write-protect faults per page"));
    /* Every other plot but the kick latency (no BPF stats given), plus this one. */
    cr_assert_eq(count(html, "<svg"), report_plot_count - 1 + report_ring_plot_count);
    free(html);
    json_decref(progress);

    progress = load(DATA_DIR "progress-sample.json");
    html = render(progress, NULL, error, sizeof(error));
    cr_assert_not_null(html, "report_render failed: %s", error);
    cr_assert_null(strstr(html, "plot-ring-entries"), "a ring plot without ring data");
    free(html);
    json_decref(progress);
}
