/*
 * bench/handover: the local hand-over's downtime (issue 19) beside an
 * ordinary live migration of the same guest over a Unix socket, in one
 * run, VMs in this process (each with its own KVM VM; the hand-over's
 * share one RAM).
 *
 *   build/bench/handover [--json] [--sizes 256M,1G,4G,16G] [--vcpus 1,2] [--runs N]
 *   build/bench/handover --help
 *
 * Per cell (guest RAM x vCPUs): a dirtier guest at full rate over half its
 * RAM, warmed up (one pass). Then N hand-overs in a chain (source -> d1 ->
 * ... -> dN), each to a freshly started `--incoming local:` VM: downtime =
 * the source's pause to the destination's resume (CLOCK_REALTIME on both
 * sides, microseconds: migration.progress downtime_us), and total = connect
 * to ACK. Guest pages/s in the one second before the first hand-over and
 * in the first second after it (the new VM's first touches of each page go
 * through its own, empty, nested page tables). Then the guest is moved once
 * more by ordinary pre-copy migration over unix: (defaults: downtime limit
 * 300 ms, converge auto) to a fresh VM with its own RAM: downtime and total.
 * A cell whose RAM (twice, for the baseline) does not fit MemAvailable is
 * skipped and says so.
 *
 * Without /dev/kvm it prints why and exits 0 ("skipped" in --json).
 * Timings under scripts/nested-kvm.sh (TCG) are not measurements.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/lib/bench_options.h"
#include "bench/lib/bench_vm.h"
#include "migration/local_handover.h"
#include "migration/migration.h"
#include "migration/transport.h"
#include "vmm/size.h"
#include "vmm/vm.h"

#define PROGRAM "bench/handover"
#define MAX_LIST 8
#define MAX_RUNS 64

struct options {
    bool json;
    uint64_t sizes[MAX_LIST];
    unsigned size_count;
    unsigned vcpus[MAX_LIST];
    unsigned vcpu_count;
    unsigned runs;
};

struct cell {
    uint64_t memory;
    unsigned vcpus;
    char skipped[256];              /* "" = ran */
    unsigned runs;                  /* hand-overs completed */
    uint64_t downtime_us[MAX_RUNS];
    uint64_t total_ms[MAX_RUNS];
    double pages_per_s_before;
    double pages_per_s_first_second;
    char baseline_skipped[256];
    uint64_t baseline_downtime_us, baseline_total_ms, baseline_bytes;
    char error[512];
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec pause = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
        ;
}

static uint64_t mem_available(void)
{
    FILE *file = fopen("/proc/meminfo", "r");
    if (file == NULL)
        return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof(line), file) != NULL)
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
            break;
    fclose(file);
    return (uint64_t)kib << 10;
}

static int make_vm(struct vm **out, uint64_t memory, unsigned vcpus, const char *workload, bool incoming)
{
    struct bench_vm_options options = { .memory = memory, .vcpus = vcpus, .workload = workload,
                                        .dirty_log = DIRTY_LOG_RING, .incoming = incoming };
    return bench_vm_start(out, &options, "bench/handover");
}

/* Guest page writes per second over the next second. */
static double pages_per_second(struct vm *vm)
{
    uint64_t started = now_ns(), before = vm_guest_pages_written(vm);
    sleep_ms(1000);
    uint64_t elapsed = now_ns() - started, after = vm_guest_pages_written(vm);
    return (double)(after - before) * 1e9 / (double)elapsed;
}

/* Every vCPU has written its share of the working set once. */
static void wait_for_first_pass(struct vm *vm)
{
    uint64_t deadline = now_ns() + 120000000000ull;
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        for (;;) {
            struct ringvm_vcpu_stats stats;
            vm_read_guest_stats(vm, i, &stats);
            if (stats.passes >= 1 || now_ns() >= deadline)
                break;
            sleep_ms(10);
        }
    }
}

struct incoming {
    struct vm *vm;
    int fd;
    char address[160];
    int result;
    pthread_t thread;
};

static void *incoming_main(void *argument)
{
    struct incoming *in = argument;
    in->result = migration_incoming_run_fd(in->vm, in->fd, in->address, NULL);
    return NULL;
}

/* A destination VM listening on prefix (local: or unix:) PATH. */
static int start_destination(struct incoming *in, const struct cell *c, const char *prefix)
{
    static unsigned counter;
    memset(in, 0, sizeof(*in));
    char path[108], error[256];
    snprintf(path, sizeof(path), "/tmp/ringvm-bench-handover-%d-%u.sock", (int)getpid(), counter++);
    unlink(path);
    snprintf(in->address, sizeof(in->address), "%s%s", prefix, path);
    struct mig_address address;
    memset(&address, 0, sizeof(address));
    address.kind = MIG_ADDRESS_UNIX;
    memcpy(address.path, path, strlen(path) + 1);
    if (make_vm(&in->vm, c->memory, c->vcpus, "idle", true) != 0)
        return -1;
    in->fd = mig_listen(&address, error, sizeof(error));
    if (in->fd < 0) {
        fprintf(stderr, "bench/handover: %s\n", error);
        bench_vm_stop(in->vm);
        return -1;
    }
    if (pthread_create(&in->thread, NULL, incoming_main, in) != 0) {
        close(in->fd);
        bench_vm_stop(in->vm);
        return -1;
    }
    return 0;
}

/* Moves the guest from source to in (started); the progress of the source
 * in *p. 0 when it completed. */
static int move_guest(struct vm *source, struct incoming *in, struct mig_progress *p, char *error, size_t size)
{
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", in->address);
    params.timeout_s = 600;
    params.keep_alive = true;
    uint64_t id;
    const char *code;
    char message[512];
    int result = -1;
    if (migration_start(source, NULL, &params, &id, &code, message, sizeof(message)) != 0) {
        snprintf(error, size, "%s: %.400s", code, message);
        vm_request_shutdown(in->vm, 1);     /* ends the destination's wait */
    } else {
        migration_wait_idle(source, 700000);
        migration_progress(source, p);
        if (p->state == MIG_STATE_COMPLETED)
            result = 0;
        else
            snprintf(error, size, "%s: %.400s", p->error_code, p->error_message);
    }
    pthread_join(in->thread, NULL);
    unlink(strchr(in->address, ':') + 1);
    return result == 0 && in->result == 0 ? 0 : -1;
}

static void run_cell(const struct options *o, struct cell *c)
{
    uint64_t available = mem_available();
    if (available < c->memory + (c->memory >> 2)) {
        snprintf(c->skipped, sizeof(c->skipped), "needs %" PRIu64 " MiB, MemAvailable is %" PRIu64 " MiB",
                 (c->memory + (c->memory >> 2)) >> 20, available >> 20);
        return;
    }
    char workload[96];
    snprintf(workload, sizeof(workload), "dirtier,wss=%" PRIu64 "M", (c->memory / 2) >> 20);
    struct vm *guest = NULL;
    if (make_vm(&guest, c->memory, c->vcpus, workload, false) != 0) {
        snprintf(c->error, sizeof(c->error), "could not create the source VM");
        return;
    }
    wait_for_first_pass(guest);
    c->pages_per_s_before = pages_per_second(guest);
    struct mig_progress *p = malloc(sizeof(*p));
    for (unsigned run = 0; run < o->runs && p != NULL; run++) {
        struct incoming in;
        if (start_destination(&in, c, LOCAL_HANDOVER_PREFIX) != 0) {
            snprintf(c->error, sizeof(c->error), "could not start destination %u", run + 1);
            break;
        }
        if (move_guest(guest, &in, p, c->error, sizeof(c->error)) != 0) {
            bench_vm_stop(in.vm);
            break;
        }
        if (run == 0)
            c->pages_per_s_first_second = pages_per_second(in.vm);
        c->downtime_us[c->runs] = p->downtime_us;
        c->total_ms[c->runs] = p->total_ms;
        c->runs++;
        bench_vm_stop(guest);
        guest = in.vm;
    }
    if (c->error[0] == '\0' && p != NULL) {
        if (available < 2 * c->memory + (c->memory >> 2)) {
            snprintf(c->baseline_skipped, sizeof(c->baseline_skipped), "two copies need %" PRIu64
                     " MiB, MemAvailable was %" PRIu64 " MiB", (2 * c->memory + (c->memory >> 2)) >> 20,
                     available >> 20);
        } else {
            struct incoming in;
            if (start_destination(&in, c, "unix:") != 0) {
                snprintf(c->baseline_skipped, sizeof(c->baseline_skipped), "could not start the destination");
            } else if (move_guest(guest, &in, p, c->baseline_skipped, sizeof(c->baseline_skipped)) != 0) {
                bench_vm_stop(in.vm);
            } else {
                c->baseline_downtime_us = p->downtime_us;
                c->baseline_total_ms = p->total_ms;
                c->baseline_bytes = p->memory.transferred;
                bench_vm_stop(guest);
                guest = in.vm;
            }
        }
    }
    free(p);
    bench_vm_stop(guest);
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(const uint64_t *values, unsigned count)
{
    if (count == 0)
        return 0;
    uint64_t sorted[MAX_RUNS];
    memcpy(sorted, values, count * sizeof(*values));
    qsort(sorted, count, sizeof(*sorted), compare_u64);
    return count % 2 ? sorted[count / 2] : (sorted[count / 2 - 1] + sorted[count / 2]) / 2;
}

static void print_json(const struct options *o, const struct cell *cells, unsigned count)
{
    printf("{\"bench\":\"handover\",\"runs\":%u,\"cells\":[", o->runs);
    for (unsigned i = 0; i < count; i++) {
        const struct cell *c = &cells[i];
        printf("%s{\"memory_mib\":%" PRIu64 ",\"vcpus\":%u", i ? "," : "", c->memory >> 20, c->vcpus);
        if (c->skipped[0] != '\0') {
            printf(",\"skipped\":\"%s\"}", c->skipped);
            continue;
        }
        printf(",\"local\":{\"runs\":%u,\"downtime_us\":[", c->runs);
        for (unsigned r = 0; r < c->runs; r++)
            printf("%s%" PRIu64, r ? "," : "", c->downtime_us[r]);
        printf("],\"downtime_us_median\":%" PRIu64 ",\"total_ms_median\":%" PRIu64 "}", median(c->downtime_us, c->runs),
               median(c->total_ms, c->runs));
        printf(",\"pages_per_s_before\":%.0f,\"pages_per_s_first_second\":%.0f", c->pages_per_s_before,
               c->pages_per_s_first_second);
        if (c->baseline_skipped[0] != '\0')
            printf(",\"unix\":{\"skipped\":\"%s\"}", c->baseline_skipped);
        else
            printf(",\"unix\":{\"downtime_us\":%" PRIu64 ",\"total_ms\":%" PRIu64 ",\"bytes\":%" PRIu64 "}",
                   c->baseline_downtime_us, c->baseline_total_ms, c->baseline_bytes);
        if (c->error[0] != '\0')
            printf(",\"error\":\"%s\"", c->error);
        printf("}");
    }
    printf("]}\n");
}

static void print_table(const struct cell *cells, unsigned count)
{
    printf("%-8s %5s %5s %12s %12s %12s %9s %14s %14s %14s %13s\n", "memory", "vcpus", "runs", "downtime_us",
           "min_us", "max_us", "total_ms", "pages/s before", "pages/s 1st s", "unix down_us", "unix total_ms");
    for (unsigned i = 0; i < count; i++) {
        const struct cell *c = &cells[i];
        if (c->skipped[0] != '\0') {
            printf("%-6" PRIu64 "M %5u skipped: %s\n", c->memory >> 20, c->vcpus, c->skipped);
            continue;
        }
        uint64_t low = UINT64_MAX, high = 0;
        for (unsigned r = 0; r < c->runs; r++) {
            low = c->downtime_us[r] < low ? c->downtime_us[r] : low;
            high = c->downtime_us[r] > high ? c->downtime_us[r] : high;
        }
        char unix_down[24], unix_total[24];
        snprintf(unix_down, sizeof(unix_down), "%" PRIu64, c->baseline_downtime_us);
        snprintf(unix_total, sizeof(unix_total), "%" PRIu64, c->baseline_total_ms);
        printf("%-6" PRIu64 "M %5u %5u %12" PRIu64 " %12" PRIu64 " %12" PRIu64 " %9" PRIu64 " %14.0f %14.0f %14s %13s\n",
               c->memory >> 20, c->vcpus, c->runs, median(c->downtime_us, c->runs), c->runs ? low : 0, high,
               median(c->total_ms, c->runs), c->pages_per_s_before, c->pages_per_s_first_second,
               c->baseline_skipped[0] ? "skipped" : unix_down, c->baseline_skipped[0] ? "-" : unix_total);
        if (c->baseline_skipped[0] != '\0')
            printf("         unix baseline skipped: %s\n", c->baseline_skipped);
        if (c->error[0] != '\0')
            printf("         error: %s\n", c->error);
    }
}

/* Guest RAM as ringvm takes it (16M to 1T) in steps of 2M: the dirtier
 * covers half of it, named in whole MiB. */
static int parse_sizes(const char *text, struct options *o)
{
    char copy[256];
    bool ok = strlen(text) < sizeof(copy);
    o->size_count = 0;
    snprintf(copy, sizeof(copy), "%s", text);
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); ok && item; item = strtok_r(NULL, ",", &save)) {
        char error[128];
        uint64_t bytes;
        ok = o->size_count < MAX_LIST && size_parse(item, &bytes, error, sizeof(error)) == 0 &&
             bytes >= (16ULL << 20) && bytes <= (1ULL << 40) && bytes % (2u << 20) == 0;
        if (ok)
            o->sizes[o->size_count++] = bytes;
    }
    if (!ok || o->size_count == 0) {
        fprintf(stderr, PROGRAM ": --sizes '%s': expected up to %d sizes from 16M to 1T in steps of 2M "
                "(256M,1G,...)\n", text, MAX_LIST);
        return -1;
    }
    return 0;
}

static int parse_vcpus(const char *text, struct options *o)
{
    char copy[64];
    bool ok = strlen(text) < sizeof(copy);
    o->vcpu_count = 0;
    snprintf(copy, sizeof(copy), "%s", text);
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); ok && item; item = strtok_r(NULL, ",", &save)) {
        unsigned value;
        ok = o->vcpu_count < MAX_LIST && bench_parse_unsigned(item, 1, RINGVM_MAX_VCPUS, &value) == 0;
        if (ok)
            o->vcpus[o->vcpu_count++] = value;
    }
    if (!ok || o->vcpu_count == 0) {
        fprintf(stderr, PROGRAM ": --vcpus '%s': expected up to %d counts from 1 to %d, comma-separated\n", text,
                MAX_LIST, RINGVM_MAX_VCPUS);
        return -1;
    }
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: handover [--json] [--sizes 256M,1G,4G,16G] [--vcpus 1,2] [--runs N (5)]\n"
                 "The local hand-over's downtime beside an ordinary live migration of the same guest\n"
                 "over a Unix socket, per guest RAM x vCPUs, VMs in this process.\n"
                 "  --sizes LIST   guest RAM of the cells, up to %d sizes from 16M to 1T in steps of 2M\n"
                 "                 (default 256M,1G,4G,16G; a cell that does not fit MemAvailable is skipped)\n"
                 "  --vcpus LIST   vCPUs of the cells, up to %d counts from 1 to %d (default 1,2)\n"
                 "  --runs N       hand-overs per cell, in a chain, 1 to %d (default 5)\n"
                 "  --json         one JSON object on stdout\n"
                 "  -h, --help     this text\n"
                 "Without /dev/kvm it prints why and exits 0.\n",
            MAX_LIST, MAX_LIST, RINGVM_MAX_VCPUS, MAX_RUNS);
}

int main(int argc, char **argv)
{
    struct options o = { .runs = 5 };
    parse_sizes("256M,1G,4G,16G", &o);
    parse_vcpus("1,2", &o);
    static const struct option long_options[] = {
        { "json", no_argument, NULL, 'j' },
        { "sizes", required_argument, NULL, 's' },
        { "vcpus", required_argument, NULL, 'v' },
        { "runs", required_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int option;
    while ((option = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        switch (option) {
        case 'j':
            o.json = true;
            break;
        case 's':
            if (parse_sizes(optarg, &o) != 0)
                return 2;
            break;
        case 'v':
            if (parse_vcpus(optarg, &o) != 0)
                return 2;
            break;
        case 'r':
            if (bench_option_unsigned(PROGRAM, "--runs", optarg, 1, MAX_RUNS, &o.runs) != 0)
                return 2;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        const char *why = strerror(errno);
        if (o.json)
            printf("{\"bench\":\"handover\",\"skipped\":\"/dev/kvm unavailable: %s\"}\n", why);
        else
            printf("bench/handover: skipped: /dev/kvm unavailable: %s\n", why);
        return 0;
    }
    close(kvm);
    struct cell cells[MAX_LIST * MAX_LIST];
    unsigned count = 0;
    for (unsigned s = 0; s < o.size_count; s++) {
        for (unsigned v = 0; v < o.vcpu_count; v++) {
            struct cell *c = &cells[count++];
            memset(c, 0, sizeof(*c));
            c->memory = o.sizes[s];
            c->vcpus = o.vcpus[v];
            if (!o.json)
                fprintf(stderr, "bench/handover: %" PRIu64 " MiB, %u vCPUs...\n", c->memory >> 20, c->vcpus);
            run_cell(&o, c);
        }
    }
    if (o.json)
        print_json(&o, cells, count);
    else
        print_table(cells, count);
    return 0;
}
