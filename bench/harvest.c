/*
 * bench/harvest: what dirty tracking costs the guest and the host, all in one
 * run (issue 3). Prints a table; --json prints one JSON object instead.
 *
 *  1. guest throughput (pages/s written by a full-rate dirtier), 1 and 2
 *     vCPUs: untracked; ring, default policy; the same with 4096-entry
 *     rings; ring resetting after every batch; ring harvested only at
 *     ring-full exits (no harvester); bitmap synced every 100 ms; ratios
 *     to untracked and to ring-full-only;
 *  2. time to produce one iteration's dirty set (dirty_log_take), guest
 *     memory 1, 4, 16 GiB (memfd, untouched except the working set), fixed
 *     16 MiB working set, ring vs bitmap;
 *  3. harvester CPU ns per dirty page (default ring policy) and harvester
 *     CPU of an idle tracked guest.
 *
 * Each throughput figure is the median of --reps runs (default 3), variants
 * interleaved so that background load hits them alike.
 *
 * Usage: harvest [--json] [--seconds S] [--reps N] [--wss SIZE] [--quick]
 *        harvest --help
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/lib/bench_options.h"
#include "dirtyring/dirty_log.h"
#include "vmm/size.h"
#include "vmm/vm.h"
#include "vmm/workload.h"

#define PROGRAM "bench/harvest"
/* measure_throughput's runs of one variant are kept to take their median. */
#define MAX_REPS 16

static double seconds_per_run = 2.0;
static int reps = 3;
static const char *wss_text = "256M";   /* as given: it names the working set in the output */
static uint64_t wss_bytes = 256ULL << 20;

enum variant { V_UNTRACKED, V_RING_DEFAULT, V_RING_4096, V_RING_EVERY_BATCH, V_RING_FULL_ONLY, V_BITMAP, V_COUNT };
static const char *variant_name[V_COUNT] = {
    "untracked", "ring-default", "ring-default-4096", "ring-every-batch", "ring-full-only", "bitmap-100ms",
};

static void die(const char *what)
{
    fprintf(stderr, "harvest: %s\n", what);
    exit(1);
}

static struct vm *make_vm(uint64_t memory, unsigned vcpus, const char *workload, enum variant v)
{
    struct vm_config config;
    memset(&config, 0, sizeof(config));
    config.memory_bytes = memory;
    config.vcpu_count = vcpus;
    config.create_irqchip = true;
    config.memory_options.numa_node = -1;
    config.serial.mode = SERIAL_NONE;
    char error[256];
    if (workload_spec_parse(workload, &config.workload, error, sizeof(error)) != 0)
        die(error);
    dirty_log_config_defaults(&config.dirty_log);
    switch (v) {
    case V_UNTRACKED:
    case V_RING_DEFAULT:
        break;
    case V_RING_4096:
        config.dirty_log.ring_entries = 4096;
        break;
    case V_RING_EVERY_BATCH:
        config.dirty_log.reset_threshold_pct = 0;
        break;
    case V_RING_FULL_ONLY:
        config.dirty_log.no_harvester = true;
        break;
    case V_BITMAP:
        config.dirty_log.mode = DIRTY_LOG_BITMAP;
        config.dirty_log.bitmap_sync_ms = 100;
        break;
    default:
        break;
    }
    struct vm *vm;
    if (vm_create(&vm, &config) != 0)
        die("vm_create failed");
    if (vm_start(vm) != 0)
        die("vm_start failed");
    return vm;
}

static void end_vm(struct vm *vm)
{
    vm_request_shutdown(vm, 0);
    vm_wait(vm);
    vm_destroy(vm);
}

/* Waits (polling the guest's counters, 1 ms steps) until the guest wrote
 * `delta` more pages, or timeout. */
static bool wait_pages(struct vm *vm, uint64_t delta, double timeout_s)
{
    uint64_t start = vm_guest_pages_written(vm), t0 = vm_now_ns();
    while (vm_guest_pages_written(vm) < start + delta) {
        if ((double)(vm_now_ns() - t0) / 1e9 > timeout_s)
            return false;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    return true;
}

static void sleep_s(double s)
{
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    nanosleep(&ts, NULL);
}

struct throughput {
    double pages_per_s;
    uint64_t harvested, resets, full_exits, overflows, cpu_ns;
    double cpu_ns_per_page;
};

static struct throughput measure_throughput(unsigned vcpus, enum variant v)
{
    uint64_t wss = wss_bytes;
    char workload[128], wss_spec[32];
    size_format(wss, wss_spec, sizeof(wss_spec));
    snprintf(workload, sizeof(workload), "dirtier,wss=%s,pattern=seq", wss_spec);
    struct vm *vm = make_vm(wss + (64ULL << 20), vcpus,
                            workload, v);
    if (!wait_pages(vm, 1000, 30))
        die("guest did not start writing");
    struct dirty_log *log = vm->dirty_log;
    if (v != V_UNTRACKED && dirty_log_start(log) != 0)
        die("dirty_log_start failed");
    /* Warm-up: one pass over the working set under tracking. */
    wait_pages(vm, wss / 4096, 30);
    struct dirty_log_stats s0, s1;
    dirty_log_get_stats(log, &s0);
    uint64_t p0 = vm_guest_pages_written(vm), t0 = vm_now_ns();
    sleep_s(seconds_per_run);
    uint64_t p1 = vm_guest_pages_written(vm), t1 = vm_now_ns();
    dirty_log_get_stats(log, &s1);
    struct throughput r = { 0 };
    r.pages_per_s = (double)(p1 - p0) * 1e9 / (double)(t1 - t0);
    r.harvested = s1.pages - s0.pages;
    r.resets = s1.resets - s0.resets;
    r.full_exits = s1.ring_full_exits - s0.ring_full_exits;
    r.overflows = s1.ring_overflows;
    r.cpu_ns = s1.harvester_cpu_ns - s0.harvester_cpu_ns;
    r.cpu_ns_per_page = r.harvested ? (double)r.cpu_ns / (double)r.harvested : 0;
    if (v != V_UNTRACKED)
        dirty_log_stop(log);
    end_vm(vm);
    return r;
}

struct sync_result {
    double take_us;         /* median dirty_log_take */
    double collect_us;      /* of it: ring drain / bitmap GET+CLEAR (same take) */
    double reset_us;        /* of it: KVM_RESET_DIRTY_RINGS (ring) */
    double get_us;          /* bitmap: GET_DIRTY_LOG + scan (last sync) */
    double clear_us;        /* bitmap: CLEAR_DIRTY_LOG (last sync) */
    uint64_t pages;
};

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j]; v[j] = v[j - 1]; v[j - 1] = t;
        }
    return v[n / 2];
}

/* dirty_log_take with a 16 MiB working set fully rewritten between takes;
 * medians of 9. */
static struct sync_result measure_sync(uint64_t memory, bool ring)
{
    struct vm *vm = make_vm(memory, 1, "dirtier,wss=16M,pattern=seq", ring ? V_RING_DEFAULT : V_BITMAP);
    struct dirty_log *log = vm->dirty_log;
    if (!wait_pages(vm, 1000, 30) || dirty_log_start(log) != 0)
        die("sync: start failed");
    enum { TAKES = 9 };
    double take[TAKES], collect[TAKES], reset[TAKES], get[TAKES], clear[TAKES];
    struct sync_result r = { 0 };
    struct dirty_pages pages;
    dirty_pages_init(&pages);
    dirty_log_take(log, &pages);     /* drop the start-up generation */
    for (int i = 0; i < TAKES; i++) {
        wait_pages(vm, 2 * 4096, 30);  /* two passes over 16 MiB */
        pages.count = 0;
        uint64_t t0 = vm_now_ns();
        int64_t n = dirty_log_take(log, &pages);
        take[i] = (double)(vm_now_ns() - t0) / 1e3;
        if (n < 0)
            die("take failed");
        struct dirty_log_stats st;
        dirty_log_get_stats(log, &st);
        collect[i] = (double)st.take_collect_ns_last / 1e3;
        reset[i] = (double)st.take_reset_ns_last / 1e3;
        get[i] = (double)st.bitmap_get_ns_last / 1e3;
        clear[i] = (double)st.bitmap_clear_ns_last / 1e3;
        r.pages = (uint64_t)n;
        /* What a migration does before reading the pages: with late reset
         * (ring) the re-protection happens here, not in the take; its
         * time counts as the take's reset. */
        if (ring) {
            uint64_t t1 = vm_now_ns();
            if (dirty_log_protect_pages(log, pages.pages, pages.count) != 0)
                die("protect failed");
            reset[i] += (double)(vm_now_ns() - t1) / 1e3;
        }
    }
    dirty_pages_free(&pages);
    dirty_log_stop(log);
    end_vm(vm);
    r.take_us = median(take, TAKES);
    r.collect_us = median(collect, TAKES);
    r.reset_us = median(reset, TAKES);
    r.get_us = median(get, TAKES);
    r.clear_us = median(clear, TAKES);
    return r;
}

static double measure_idle_cpu_pct(void)
{
    struct vm *vm = make_vm(256ULL << 20, 1, "idle", V_RING_DEFAULT);
    struct dirty_log *log = vm->dirty_log;
    if (dirty_log_start(log) != 0)
        die("idle: start failed");
    sleep_s(0.5);
    struct dirty_log_stats s0, s1;
    dirty_log_get_stats(log, &s0);
    sleep_s(seconds_per_run);
    dirty_log_get_stats(log, &s1);
    dirty_log_stop(log);
    end_vm(vm);
    return (double)(s1.harvester_cpu_ns - s0.harvester_cpu_ns) * 100.0 /
           (double)(s1.now_ns - s0.now_ns);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: harvest [--json] [--seconds S] [--reps N] [--wss SIZE] [--quick]\n"
            "What dirty tracking costs the guest and the host, all in one run:\n"
            "  1. guest throughput (pages/s written by a full-rate dirtier), 1 and 2 vCPUs: untracked;\n"
            "     ring, default policy; the same with 4096-entry rings; ring resetting after every\n"
            "     batch; ring harvested only at ring-full exits (no harvester); bitmap synced every\n"
            "     100 ms; ratios to untracked and to ring-full-only\n"
            "  2. time to produce one iteration's dirty set (dirty_log_take), guest memory 1, 4 and\n"
            "     16 GiB (memfd, untouched except a fixed 16 MiB working set), ring vs bitmap,\n"
            "     medians of 9 takes\n"
            "  3. harvester CPU ns per dirty page (default ring policy) and harvester CPU of an idle\n"
            "     tracked guest\n"
            "Each throughput figure is the median of --reps runs, variants interleaved so that\n"
            "background load hits them alike. Progress on stderr, the table on stdout.\n"
            "  --json        one JSON object on stdout instead of the table\n"
            "  --seconds S   length of each throughput run and of the idle measurement, 0.1 to 3600\n"
            "                (default 2)\n"
            "  --reps N      throughput runs per figure, 1 to %d (default 3)\n"
            "  --wss SIZE    the dirtier's working set in part 1, a multiple of 4K (default 256M)\n"
            "  --quick       part 2 with 1 and 4 GiB only (no 16 GiB guest)\n"
            "  -h, --help    this text\n",
            MAX_REPS);
}

int main(int argc, char **argv)
{
    bool json = false, quick = false;
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "seconds", required_argument, NULL, 's' },
        { "reps", required_argument, NULL, 'r' },
        { "wss", required_argument, NULL, 'w' },
        { "quick", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 's':
            if (bench_option_seconds(PROGRAM, "--seconds", optarg, 0.1, 3600, &seconds_per_run) != 0)
                return 2;
            break;
        case 'r': {
            unsigned value;
            if (bench_option_unsigned(PROGRAM, "--reps", optarg, 1, MAX_REPS, &value) != 0)
                return 2;
            reps = (int)value;
            break;
        }
        case 'w':
            /* 4K: the dirtier's unit (vmm/workload.c); 1T: ringvm's largest guest. */
            if (bench_option_size(PROGRAM, "--wss", optarg, 4096, 1ULL << 40, 4096, &wss_bytes) != 0)
                return 2;
            wss_text = optarg;
            break;
        case 'q': quick = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;

    struct throughput t[2][V_COUNT];
    for (unsigned vc = 1; vc <= 2; vc++) {
        struct throughput runs[V_COUNT][MAX_REPS];
        int nrep = reps;
        for (int rep = 0; rep < nrep; rep++)
            for (int v = 0; v < V_COUNT; v++) {
                runs[v][rep] = measure_throughput(vc, (enum variant)v);
                if (!json)
                    fprintf(stderr, "  %u vCPU %-18s rep %d %12.0f pages/s\n", vc, variant_name[v], rep,
                            runs[v][rep].pages_per_s);
            }
        for (int v = 0; v < V_COUNT; v++) {
            /* The median run by pages/s, with its own counters. */
            int order[MAX_REPS];
            for (int i = 0; i < nrep; i++)
                order[i] = i;
            for (int i = 1; i < nrep; i++)
                for (int j = i; j > 0 && runs[v][order[j - 1]].pages_per_s > runs[v][order[j]].pages_per_s; j--) {
                    int x = order[j]; order[j] = order[j - 1]; order[j - 1] = x;
                }
            t[vc - 1][v] = runs[v][order[nrep / 2]];
        }
    }

    static const uint64_t mems[3] = { 1ULL << 30, 4ULL << 30, 16ULL << 30 };
    /* --quick leaves the 16 GiB guest out, and with it its rows and ratio. */
    const int memories = quick ? 2 : 3;
    struct sync_result sync[3][2];
    memset(sync, 0, sizeof(sync));
    for (int m = 0; m < memories; m++)
        for (int r = 0; r < 2; r++) {
            sync[m][r] = measure_sync(mems[m], r == 0);
            if (!json)
                fprintf(stderr, "  sync %2llu GiB %-6s %10.1f us (%llu pages)\n",
                        (unsigned long long)(mems[m] >> 30), r == 0 ? "ring" : "bitmap",
                        sync[m][r].take_us, (unsigned long long)sync[m][r].pages);
        }
    double idle_pct = measure_idle_cpu_pct();

    if (json) {
        printf("{\"wss\":\"%s\",\"seconds\":%g,\"throughput\":[", wss_text, seconds_per_run);
        for (unsigned vc = 0; vc < 2; vc++)
            for (int v = 0; v < V_COUNT; v++) {
                struct throughput *x = &t[vc][v];
                printf("%s{\"vcpus\":%u,\"variant\":\"%s\",\"pages_per_s\":%.0f,"
                       "\"ratio_untracked\":%.3f,\"ratio_full_only\":%.3f,\"harvested\":%llu,"
                       "\"resets\":%llu,\"ring_full_exits\":%llu,\"overflows\":%llu,"
                       "\"harvester_cpu_ns\":%llu,\"harvester_cpu_ns_per_page\":%.1f}",
                       vc || v ? "," : "", vc + 1, variant_name[v], x->pages_per_s,
                       x->pages_per_s / t[vc][V_UNTRACKED].pages_per_s,
                       x->pages_per_s / t[vc][V_RING_FULL_ONLY].pages_per_s,
                       (unsigned long long)x->harvested, (unsigned long long)x->resets,
                       (unsigned long long)x->full_exits, (unsigned long long)x->overflows,
                       (unsigned long long)x->cpu_ns, x->cpu_ns_per_page);
            }
        printf("],\"sync\":[");
        for (int m = 0; m < memories; m++)
            printf("%s{\"memory_gib\":%llu,\"ring_take_us\":%.1f,\"ring_drain_us\":%.1f,"
                   "\"ring_reset_us\":%.1f,\"bitmap_take_us\":%.1f,\"bitmap_get_us\":%.1f,"
                   "\"bitmap_clear_us\":%.1f,\"pages\":%llu,\"bitmap_over_ring\":%.2f}", m ? "," : "",
                   (unsigned long long)(mems[m] >> 30), sync[m][0].take_us, sync[m][0].collect_us,
                   sync[m][0].reset_us, sync[m][1].take_us, sync[m][1].get_us, sync[m][1].clear_us,
                   (unsigned long long)sync[m][0].pages,
                   sync[m][0].take_us > 0 ? sync[m][1].take_us / sync[m][0].take_us : 0);
        char per_page[32];
        if (t[0][V_RING_DEFAULT].harvested >= 10000)
            snprintf(per_page, sizeof(per_page), "%.1f", t[0][V_RING_DEFAULT].cpu_ns_per_page);
        else
            snprintf(per_page, sizeof(per_page), "null");   /* working set fits in the ring */
        char ratio[32];
        if (!quick && sync[0][0].take_us > 0)
            snprintf(ratio, sizeof(ratio), "%.2f", sync[2][0].take_us / sync[0][0].take_us);
        else
            snprintf(ratio, sizeof(ratio), "null");     /* --quick: no 16 GiB guest */
        printf("],\"ring_sync_16g_over_1g\":%s,\"harvester_cpu_ns_per_page\":%s,"
               "\"idle_harvester_cpu_pct\":%.3f}\n",
               ratio, per_page, idle_pct);
        return 0;
    }

    printf("1. guest throughput, full-rate dirtier wss=%s, %.1f s per run\n", wss_text, seconds_per_run);
    printf("%-6s %-18s %12s %9s %10s %9s %8s %9s %10s\n", "vCPUs", "variant", "pages/s", "x untrk",
           "x fullonly", "harvested", "resets", "ringfull", "hcpu ns/pg");
    for (unsigned vc = 0; vc < 2; vc++)
        for (int v = 0; v < V_COUNT; v++) {
            struct throughput *x = &t[vc][v];
            char cpu[32];
            if (x->harvested >= 10000 && x->cpu_ns)
                snprintf(cpu, sizeof(cpu), "%.1f", x->cpu_ns_per_page);
            else
                snprintf(cpu, sizeof(cpu), "-");
            printf("%-6u %-18s %12.0f %9.3f %10.3f %9llu %8llu %9llu %10s\n", vc + 1, variant_name[v],
                   x->pages_per_s, x->pages_per_s / t[vc][V_UNTRACKED].pages_per_s,
                   x->pages_per_s / t[vc][V_RING_FULL_ONLY].pages_per_s,
                   (unsigned long long)x->harvested, (unsigned long long)x->resets,
                   (unsigned long long)x->full_exits, cpu);
        }
    printf("\n2. time to produce one iteration's dirty set (16 MiB working set, medians of 9 takes, us)\n");
    printf("%-8s %9s %9s %9s | %9s %9s %9s | %11s\n", "memory", "ring", "drain", "reset",
           "bitmap", "GET+scan", "CLEAR", "bitmap/ring");
    for (int m = 0; m < memories; m++)
        printf("%5llu GiB %9.1f %9.1f %9.1f | %9.1f %9.1f %9.1f | %11.2f\n",
               (unsigned long long)(mems[m] >> 30), sync[m][0].take_us, sync[m][0].collect_us,
               sync[m][0].reset_us, sync[m][1].take_us, sync[m][1].get_us, sync[m][1].clear_us,
               sync[m][0].take_us > 0 ? sync[m][1].take_us / sync[m][0].take_us : 0);
    if (!quick)
        printf("ring 16 GiB / 1 GiB: %.2f\n",
               sync[0][0].take_us > 0 ? sync[2][0].take_us / sync[0][0].take_us : 0);
    printf("\n3. harvester CPU per dirty page (ring default, 1 vCPU): ");
    if (t[0][V_RING_DEFAULT].harvested >= 10000)
        printf("%.1f ns", t[0][V_RING_DEFAULT].cpu_ns_per_page);
    else
        printf("n/a (only %llu pages harvested: the working set fits in the ring; use a larger --wss)",
               (unsigned long long)t[0][V_RING_DEFAULT].harvested);
    printf("; idle guest: %.3f %% of a core\n", idle_pct);
    return 0;
}
