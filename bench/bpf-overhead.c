/*
 * bench/bpf-overhead: what the eBPF probes cost the guest. One VM, the
 * built-in dirtier with dirty tracking on (every first write after a reset
 * is a kvm_dirty_ring_push, the probes' hottest event), measured in phases
 * with the probes detached (A) and attached (B), interleaved A B A B ... in
 * the same run so drift of the host hits both alike. The guest's own
 * pages_written counters are the measurement. Target: <= 3 % loss.
 *
 *   build/bench/bpf-overhead [--json] [--seconds N] [--rounds N] [--vcpus N]
 *                            [--wss SIZE] [--dirty-log ring|bitmap|off]
 *   build/bench/bpf-overhead --help
 *
 * Needs root and BPF; exits 3 with the reason when the probes cannot load.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/lib/bench_options.h"
#include "bpf/probes.h"
#include "vmm/size.h"
#include "vmm/vm.h"

#define PROGRAM "bench/bpf-overhead"
#define MAX_PHASES 64
#define MAX_VCPUS 16

struct phase {
    bool probes;
    double pages_per_second;
    double pages_per_cpu_second;    /* per second of vCPU-thread CPU time */
    uint64_t pushes;                /* B phases: dirty ring pushes seen */
    uint64_t run_exits;             /* B phases: KVM_RUN exits seen */
    uint64_t vcpu_cpu_ns;           /* CPU time of the vCPU threads */
    uint64_t probe_ns;              /* B phases: run time of the BPF programs */
    uint64_t probe_events;          /* B phases: program runs */
};

/* Run time and runs of all programs so far (kernel BPF stats). */
static void probe_cost(struct bpf_probes *probes, uint64_t *ns, uint64_t *runs)
{
    struct bpf_probes_prog_stat stats[16];
    *ns = *runs = 0;
    int n = bpf_probes_prog_stats(probes, stats, 16);
    for (int i = 0; i < n; i++) {
        *ns += stats[i].run_time_ns;
        *runs += stats[i].run_count;
    }
}

/* CPU time of the vCPU threads: the probes' cost lands there, while other
 * load on the host changes wall-clock rates, not pages per CPU second. */
static uint64_t vcpu_cpu_ns(struct vm *vm)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        clockid_t clock;
        struct timespec ts;
        if (pthread_getcpuclockid(vm->vcpus[i].thread, &clock) != 0 || clock_gettime(clock, &ts) != 0)
            continue;
        sum += (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    }
    return sum;
}

static void probe_totals(struct bpf_probes *probes, uint64_t *pushes, uint64_t *exits)
{
    struct bpf_probes_stats stats;
    *pushes = *exits = 0;
    if (bpf_probes_stats_get(probes, &stats) != 0)
        return;
    for (unsigned i = 0; i < stats.vcpu_count; i++) {
        *pushes += stats.vcpus[i].dirty_pushes;
        for (unsigned s = 0; s < BPF_PROBES_EXIT_SLOTS; s++)
            *exits += stats.vcpus[i].exits[s];
    }
    bpf_probes_stats_free(&stats);
}

static double rate_of(const struct phase *phase, bool per_cpu)
{
    return per_cpu ? phase->pages_per_cpu_second : phase->pages_per_second;
}

static double mean_of(const struct phase *phases, unsigned count, bool probes, bool per_cpu, double *min,
                      double *max)
{
    double sum = 0;
    unsigned n = 0;
    *min = INFINITY;
    *max = 0;
    for (unsigned i = 0; i < count; i++) {
        if (phases[i].probes != probes)
            continue;
        double rate = rate_of(&phases[i], per_cpu);
        sum += rate;
        n++;
        if (rate < *min)
            *min = rate;
        if (rate > *max)
            *max = rate;
    }
    return n ? sum / n : 0;
}

/* Each B against the mean of the A phases either side of it (neighbours
 * share the host's drift); sorted, so [0] is min and the middle the median. */
static unsigned paired_losses(const struct phase *phases, unsigned count, bool per_cpu, double *out)
{
    unsigned pairs = 0;
    for (unsigned p = 1; p < count; p += 2) {
        double a = rate_of(&phases[p - 1], per_cpu);
        if (p + 1 < count)
            a = (a + rate_of(&phases[p + 1], per_cpu)) / 2;
        out[pairs++] = a > 0 ? (a - rate_of(&phases[p], per_cpu)) / a * 100.0 : 0;
    }
    for (unsigned i = 1; i < pairs; i++)
        for (unsigned j = i; j > 0 && out[j - 1] > out[j]; j--) {
            double t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return pairs;
}

static double median(const double *sorted, unsigned n)
{
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bpf-overhead [--json] [--seconds N] [--rounds N] [--vcpus N] [--wss SIZE]\n"
                 "                    [--dirty-log ring|bitmap|off]\n"
                 "Guest pages/s with the eBPF probes detached (A) and attached (B), A B A B...\n"
                 "Needs root and BPF; exits 3 with the reason when the probes cannot load.\n"
                 "  --seconds N     length of each phase, 1 to 600 (default 2)\n"
                 "  --rounds N      A B pairs, 1 to %d (default 4)\n"
                 "  --vcpus N       the guest's vCPUs, 1 to %d (default 1)\n"
                 "  --wss SIZE      the dirtier's working set, a multiple of 4K (default 256M)\n"
                 "  --dirty-log M   ring (default), bitmap or off\n"
                 "  --json          one JSON object on stdout\n"
                 "  -h, --help      this text\n",
            MAX_PHASES / 2, MAX_VCPUS);
}

int main(int argc, char **argv)
{
    bool json = false;
    unsigned seconds = 2, rounds = 4, vcpus = 1;
    uint64_t wss = 256ULL << 20;
    const char *dirty_mode = "ring";
    enum dirty_log_mode mode = DIRTY_LOG_RING;
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "seconds", required_argument, NULL, 's' },
        { "rounds", required_argument, NULL, 'r' },
        { "vcpus", required_argument, NULL, 'v' },
        { "wss", required_argument, NULL, 'w' },
        { "dirty-log", required_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    for (int option; (option = getopt_long(argc, argv, "h", options, NULL)) != -1;) {
        char error[200];
        switch (option) {
        case 'j': json = true; break;
        case 's':
            if (bench_option_unsigned(PROGRAM, "--seconds", optarg, 1, 600, &seconds) != 0)
                return 2;
            break;
        case 'r':
            if (bench_option_unsigned(PROGRAM, "--rounds", optarg, 1, MAX_PHASES / 2, &rounds) != 0)
                return 2;
            break;
        case 'v':
            if (bench_option_unsigned(PROGRAM, "--vcpus", optarg, 1, MAX_VCPUS, &vcpus) != 0)
                return 2;
            break;
        case 'w':
            /* 4K: the dirtier's unit (vmm/workload.c); 1T: ringvm's largest guest. */
            if (bench_option_size(PROGRAM, "--wss", optarg, 4096, 1ULL << 40, 4096, &wss) != 0)
                return 2;
            break;
        case 'd':
            if (dirty_log_mode_parse(optarg, &mode, error, sizeof(error)) != 0) {
                fprintf(stderr, PROGRAM ": %s\n", error);
                return 2;
            }
            dirty_mode = optarg;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;

    struct vm_config config;
    memset(&config, 0, sizeof(config));
    config.memory_bytes = wss + (256ULL << 20);
    config.vcpu_count = vcpus;
    config.create_irqchip = true;
    config.memory_options.numa_node = -1;
    config.serial.mode = SERIAL_NONE;
    dirty_log_config_defaults(&config.dirty_log);
    char spec[128], error[256], wss_text[32];
    config.dirty_log.mode = mode;
    size_format(wss, wss_text, sizeof(wss_text));
    snprintf(spec, sizeof(spec), "dirtier,wss=%s", wss_text);
    if (workload_spec_parse(spec, &config.workload, error, sizeof(error)) != 0) {
        fprintf(stderr, "bpf-overhead: %s\n", error);
        return 2;
    }
    struct vm *vm = NULL;
    if (vm_create(&vm, &config) != 0 || vm_start(vm) != 0) {
        vm_destroy(vm);
        return 1;
    }
    struct bpf_probes *probes = NULL;
    if (bpf_probes_create(&probes, vm, error, sizeof(error)) != 0) {
        fprintf(stderr, "bpf-overhead: BPF probes unavailable: %s\n", error);
        vm_request_shutdown(vm, 0);
        vm_wait(vm);
        vm_destroy(vm);
        return 3;
    }
    int status = 0;
    if (vm->dirty_log != NULL && dirty_log_start(vm->dirty_log) != 0) {
        status = 1;
        goto out;
    }
    /* The programs' own run time, as long as this fd is open. */
    int stats_fd = bpf_probes_enable_run_stats();
    if (stats_fd < 0)
        fprintf(stderr, "bpf-overhead: BPF run-time stats unavailable: %s\n", strerror(-stats_fd));
    /* Warm-up: every vCPU in ring 3, past first touch of its pages and at
     * its steady tracked rate. */
    vm_wait_for_shutdown_request(vm, 3000000000ULL);

    struct phase phases[MAX_PHASES];
    unsigned count = 2 * rounds;
    for (unsigned p = 0; p < count; p++) {
        struct phase *phase = &phases[p];
        memset(phase, 0, sizeof(*phase));
        phase->probes = p % 2 == 1;
        uint64_t pushes_before = 0, exits_before = 0;
        if (phase->probes) {
            if (bpf_probes_start(probes, error, sizeof(error)) != 0) {
                fprintf(stderr, "bpf-overhead: attaching the probes: %s\n", error);
                status = 3;
                goto out;
            }
            probe_totals(probes, &pushes_before, &exits_before);
        }
        uint64_t cost_before = 0, runs_before = 0;
        probe_cost(probes, &cost_before, &runs_before);
        uint64_t pages = vm_guest_pages_written(vm);
        uint64_t cpu = vcpu_cpu_ns(vm);
        uint64_t started = vm_now_ns();
        vm_wait_for_shutdown_request(vm, (uint64_t)seconds * 1000000000ULL);
        uint64_t elapsed = vm_now_ns() - started;
        uint64_t written = vm_guest_pages_written(vm) - pages;
        uint64_t cpu_used = vcpu_cpu_ns(vm) - cpu;
        phase->pages_per_second = (double)written / ((double)elapsed / 1e9);
        phase->pages_per_cpu_second = cpu_used ? (double)written / ((double)cpu_used / 1e9) : 0;
        phase->vcpu_cpu_ns = cpu_used;
        uint64_t cost_after, runs_after;
        probe_cost(probes, &cost_after, &runs_after);
        phase->probe_ns = cost_after - cost_before;
        phase->probe_events = runs_after - runs_before;
        if (phase->probes) {
            uint64_t pushes_after, exits_after;
            probe_totals(probes, &pushes_after, &exits_after);
            phase->pushes = pushes_after - pushes_before;
            phase->run_exits = exits_after - exits_before;
            bpf_probes_stop(probes);
        }
        if (!json)
            fprintf(stderr, "bpf-overhead: phase %u (%s): %.0f pages/s, %.0f pages per vCPU CPU second\n", p + 1,
                    phase->probes ? "B, probes" : "A, none", phase->pages_per_second, phase->pages_per_cpu_second);
    }

    double min_a, max_a, min_b, max_b, cmin_a, cmax_a, cmin_b, cmax_b;
    double mean_a = mean_of(phases, count, false, false, &min_a, &max_a);
    double mean_b = mean_of(phases, count, true, false, &min_b, &max_b);
    double cpu_a = mean_of(phases, count, false, true, &cmin_a, &cmax_a);
    double cpu_b = mean_of(phases, count, true, true, &cmin_b, &cmax_b);
    double paired[MAX_PHASES / 2], paired_cpu[MAX_PHASES / 2];
    unsigned pairs = paired_losses(phases, count, false, paired);
    paired_losses(phases, count, true, paired_cpu);
    double loss = median(paired, pairs), loss_cpu = median(paired_cpu, pairs);
    /* The probes' own run time against the vCPU threads' CPU time in the
     * B phases: the cost with the noise of the host taken out. */
    uint64_t probe_ns = 0, probe_events = 0, b_cpu_ns = 0;
    for (unsigned p = 1; p < count; p += 2) {
        probe_ns += phases[p].probe_ns;
        probe_events += phases[p].probe_events;
        b_cpu_ns += phases[p].vcpu_cpu_ns;
    }
    double probe_pct = b_cpu_ns ? (double)probe_ns / (double)b_cpu_ns * 100.0 : 0;
    double ns_per_event = probe_events ? (double)probe_ns / (double)probe_events : 0;
    uint64_t pushes = 0;
    for (unsigned p = 0; p < count; p++)
        pushes += phases[p].pushes;
    double pushes_per_second = (double)pushes / ((double)rounds * seconds);
    if (json) {
        printf("{\"benchmark\":\"bpf-overhead\",\"vcpus\":%u,\"wss_bytes\":%" PRIu64 ",\"dirty_log\":\"%s\","
               "\"seconds\":%u,\"rounds\":%u,\"phases\":[",
               vcpus, wss, dirty_mode, seconds, rounds);
        for (unsigned p = 0; p < count; p++)
            printf("%s{\"probes\":%s,\"pages_per_s\":%.0f,\"pages_per_cpu_s\":%.0f,\"pushes\":%" PRIu64
                   ",\"run_exits\":%" PRIu64 "}",
                   p ? "," : "", phases[p].probes ? "true" : "false", phases[p].pages_per_second,
                   phases[p].pages_per_cpu_second, phases[p].pushes, phases[p].run_exits);
        printf("],\"without_probes_pages_per_s\":%.0f,\"with_probes_pages_per_s\":%.0f,"
               "\"without_probes_pages_per_cpu_s\":%.0f,\"with_probes_pages_per_cpu_s\":%.0f,"
               "\"loss_pct\":%.2f,\"loss_pct_min\":%.2f,\"loss_pct_max\":%.2f,"
               "\"cpu_loss_pct\":%.2f,\"cpu_loss_pct_min\":%.2f,\"cpu_loss_pct_max\":%.2f,"
               "\"probe_pushes_per_s\":%.0f,\"probe_run_ns\":%" PRIu64 ",\"probe_runs\":%" PRIu64 ","
               "\"probe_ns_per_run\":%.1f,\"probe_pct_of_vcpu_cpu\":%.2f,"
               "\"target_loss_pct\":3,\"target_met\":%s}\n",
               mean_a, mean_b, cpu_a, cpu_b, loss, paired[0], paired[pairs - 1], loss_cpu, paired_cpu[0],
               paired_cpu[pairs - 1], pushes_per_second, probe_ns, probe_events, ns_per_event, probe_pct,
               loss <= 3.0 ? "true" : "false");
    } else {
        printf("bpf-overhead: %u vCPU(s), dirtier over %" PRIu64 " MiB, dirty log %s, %u x (A %us, B %us)\n", vcpus,
               wss >> 20, dirty_mode, rounds, seconds, seconds);
        printf("%-20s %14s %12s %12s %18s %12s %12s\n", "", "pages/s", "min", "max", "pages/CPU-s", "min", "max");
        printf("%-20s %14.0f %12.0f %12.0f %18.0f %12.0f %12.0f\n", "A: no probes", mean_a, min_a, max_a, cpu_a,
               cmin_a, cmax_a);
        printf("%-20s %14.0f %12.0f %12.0f %18.0f %12.0f %12.0f\n", "B: probes attached", mean_b, min_b, max_b, cpu_b,
               cmin_b, cmax_b);
        printf("loss (median of each B vs the A phases around it): pages/s %.2f %% (%.2f .. %.2f), "
               "pages per vCPU CPU second %.2f %% (%.2f .. %.2f)\n",
               loss, paired[0], paired[pairs - 1], loss_cpu, paired_cpu[0], paired_cpu[pairs - 1]);
        printf("probes: %.0f dirty ring pushes/s; %" PRIu64 " program runs, %.0f ns each, %.2f %% of the vCPU "
               "threads' CPU time\n", pushes_per_second, probe_events, ns_per_event, probe_pct);
        printf("target <= 3 %% pages/s: %s\n", loss <= 3.0 ? "met" : "NOT met");
    }
    if (!json && stats_fd >= 0) {
        struct bpf_probes_prog_stat stats[16];
        int n = bpf_probes_prog_stats(probes, stats, 16);
        for (int i = 0; i < n; i++)
            if (stats[i].run_count)
                printf("  %-22s %12" PRIu64 " runs %8.0f ns/run\n", stats[i].name, stats[i].run_count,
                       (double)stats[i].run_time_ns / (double)stats[i].run_count);
    }
    if (stats_fd >= 0)
        close(stats_fd);
out:
    bpf_probes_destroy(probes);
    if (vm->dirty_log != NULL && dirty_log_tracking(vm->dirty_log))
        dirty_log_stop(vm->dirty_log);
    vm_request_shutdown(vm, 0);
    if (vm_wait(vm) != 0)
        status = status ? status : 1;
    vm_destroy(vm);
    return status;
}
