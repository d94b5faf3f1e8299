/*
 * The migration report (api/report.c): renders the stored progress file
 * tests/data/progress-sample.json (6 iterations, 2 vCPUs, converge=auto)
 * with tests/data/bpf-stats-sample.json and checks, without a browser, that
 * the HTML holds every plot as an inline <svg id="plot-..."> and the summary
 * numbers. Needs gnuplot (Debian gnuplot-nox): skipped with a reason when
 * it is missing. No timing assertions.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/report.h"
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
