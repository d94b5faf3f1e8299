/*
 * The migration report: one self-contained HTML page (inline SVG plots made
 * by gnuplot, no scripts, no external files) from a migration progress
 * snapshot and, when the probes ran, the BPF stats.
 *
 * Input is read leniently: a missing or mistyped field shows as "n/a" or
 * leaves its plot out, never fails the report. `progress` is either
 *   - one snapshot (the object `migration.progress` / `ringctl progress
 *     --json` returns: iterations[], throttle_per_vcpu, memory{}, ...), or
 *   - an array of snapshots taken over time (`ringctl report --watch`
 *     samples them; `--save FILE` keeps them as JSON lines): the last one is
 *     the summary, the others give the "over time" plots real samples
 *     instead of per-iteration points.
 * `bpf_stats_or_null` is the object of the BPF stats (vcpus[].kick_latency_ns
 * {p50_ns, p99_ns}, optional iterations[] {kick_p50_ns, kick_p99_ns}), or NULL.
 *
 * Plots (each an <svg id="plot-..."> inside <figure id="fig-...">):
 *   plot-dirty-rate, plot-bandwidth, plot-remaining, plot-expected-downtime
 *   (per iteration), plot-throttle (per iteration, per vCPU when the data has
 *   it, else the max over vCPUs), plot-throttle-vcpu (final, per vCPU),
 *   plot-time-rates, plot-time-remaining (over time), plot-kick-latency
 *   (only with kick latency data).
 * Summary box (<section id="summary">): state, total, downtime vs limit,
 * setup, iterations, bytes sent, converge mode, ...
 *
 * Post-copy section (<section id="postcopy">), only when a snapshot has a
 * "postcopy" object (modes postcopy and hybrid): rows postcopy-mode,
 * postcopy-switch, postcopy-phase, postcopy-pages, postcopy-faults,
 * postcopy-blocktime (total and per vCPU), postcopy-latency (p50/p99/max)
 * from the latest such snapshot; the plots report_postcopy_plot_ids (pages
 * received / requested / pushed, faults and blocktime, latency p50/p99/max,
 * each over time with the switch-over marked); and <table
 * id="postcopy-samples">, one <tr class="postcopy-sample"> per snapshot
 * (every snapshot of an array that has the object, else the one given):
 * t, phase, switched, received, requested, pushed, faults, blocktime ms,
 * p50, p99, max µs; "-" for a counter the snapshot's side does not keep
 * (role outgoing: only requested and pushed; incoming: all but pushed).
 *
 * gnuplot (Debian package gnuplot-nox) runs as a subprocess on files in a
 * private temporary directory; $RINGVM_GNUPLOT overrides the program.
 */
#ifndef RINGVM_API_REPORT_H
#define RINGVM_API_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

/* Plot ids, in page order (tests check each appears). */
extern const char *const report_plot_ids[];
extern const size_t report_plot_count;
/* The post-copy section's plots, in page order (only with post-copy data). */
extern const char *const report_postcopy_plot_ids[];
extern const size_t report_postcopy_plot_count;
/* Ring mode's plots (only when iterations[] carry ring_entries): entries
 * harvested per page taken and recycling, per iteration. */
extern const char *const report_ring_plot_ids[];
extern const size_t report_ring_plot_count;

/* Writes the page to out_html. 0, or -1 with a sentence in error (e.g.
 * "gnuplot not found: install the Debian package gnuplot-nox ..."). */
int report_render(const json_t *progress, const json_t *bpf_stats_or_null, FILE *out_html, char *error,
                  size_t error_size);

/* `ringctl report` (api/ringctl_report.c), called by ringctl's dispatch
 * with argv[0] = "report" and the socket from -s / $RINGVM_SOCKET (may be
 * NULL with --from). Returns ringctl's exit status. */
int ringctl_report_main(int argc, char **argv, const char *socket_path);

/* True when the gnuplot program can be found (PATH or $RINGVM_GNUPLOT). */
int report_gnuplot_available(void);

#endif
