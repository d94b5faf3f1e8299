/*
 * bench/guest-rate: guest pages/s of the built-in dirtier, untracked, for
 * seq and random patterns with 1 and 2 vCPUs. The guest's own counters are
 * the measurement (stats page), sampled over a fixed window after warm-up.
 *
 *   build/bench/guest-rate [--json] [--seconds N] [--wss SIZE]
 *   build/bench/guest-rate --help
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/lib/bench_options.h"
#include "vmm/size.h"
#include "vmm/vm.h"

#define PROGRAM "bench/guest-rate"

struct bench_case {
    const char *pattern;
    unsigned vcpus;
    double pages_per_second;        /* all vCPUs */
    double per_vcpu[RINGVM_MAX_VCPUS];
};

static uint64_t guest_pages(struct vm *vm, unsigned vcpu)
{
    struct ringvm_vcpu_stats stats;
    vm_read_guest_stats(vm, vcpu, &stats);
    return stats.pages_written;
}

static int run_case(struct bench_case *bench, uint64_t wss, unsigned seconds)
{
    struct vm_config config;
    memset(&config, 0, sizeof(config));
    config.memory_bytes = wss + (256ULL << 20);
    config.vcpu_count = bench->vcpus;
    config.create_irqchip = true;
    config.memory_options.numa_node = -1;
    config.serial.mode = SERIAL_NONE;
    dirty_log_config_defaults(&config.dirty_log);
    config.dirty_log.mode = DIRTY_LOG_OFF;
    char spec[128], error[256], wss_text[32];
    size_format(wss, wss_text, sizeof(wss_text));
    snprintf(spec, sizeof(spec), "dirtier,wss=%s,pattern=%s", wss_text, bench->pattern);
    if (workload_spec_parse(spec, &config.workload, error, sizeof(error)) != 0) {
        fprintf(stderr, "guest-rate: %s\n", error);
        return -1;
    }
    struct vm *vm = NULL;
    if (vm_create(&vm, &config) != 0 || vm_start(vm) != 0) {
        vm_destroy(vm);
        return -1;
    }
    /* Warm-up: one second, so every vCPU is in ring 3 and past first touch. */
    vm_wait_for_shutdown_request(vm, 1000000000ULL);
    uint64_t start[RINGVM_MAX_VCPUS];
    for (unsigned i = 0; i < bench->vcpus; i++)
        start[i] = guest_pages(vm, i);
    uint64_t started = vm_now_ns();
    vm_wait_for_shutdown_request(vm, (uint64_t)seconds * 1000000000ULL);
    double elapsed = (double)(vm_now_ns() - started) / 1e9;
    bench->pages_per_second = 0;
    for (unsigned i = 0; i < bench->vcpus; i++) {
        bench->per_vcpu[i] = (double)(guest_pages(vm, i) - start[i]) / elapsed;
        bench->pages_per_second += bench->per_vcpu[i];
    }
    vm_request_shutdown(vm, 0);
    int failed = vm_wait(vm);
    vm_destroy(vm);
    return failed ? -1 : 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: guest-rate [--json] [--seconds N] [--wss SIZE]\n"
                 "Guest pages/s of the built-in dirtier, untracked: seq and random, 1 and 2 vCPUs.\n"
                 "  --seconds N   measured window per case after 1 s of warm-up, 1 to 600 (default 2)\n"
                 "  --wss SIZE    the dirtier's working set, a multiple of 4K (default 256M)\n"
                 "  --json        one JSON object on stdout\n"
                 "  -h, --help    this text\n");
}

int main(int argc, char **argv)
{
    bool json = false;
    unsigned seconds = 2;
    uint64_t wss = 256ULL << 20;
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "seconds", required_argument, NULL, 's' },
        { "wss", required_argument, NULL, 'w' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    for (int option; (option = getopt_long(argc, argv, "h", options, NULL)) != -1;) {
        switch (option) {
        case 'j': json = true; break;
        case 's':
            if (bench_option_unsigned(PROGRAM, "--seconds", optarg, 1, 600, &seconds) != 0)
                return 2;
            break;
        case 'w':
            /* 4K: the dirtier's unit (vmm/workload.c); 1T: ringvm's largest guest. */
            if (bench_option_size(PROGRAM, "--wss", optarg, 4096, 1ULL << 40, 4096, &wss) != 0)
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;
    struct bench_case cases[] = {
        { .pattern = "seq", .vcpus = 1 }, { .pattern = "random", .vcpus = 1 },
        { .pattern = "seq", .vcpus = 2 }, { .pattern = "random", .vcpus = 2 },
    };
    size_t count = sizeof(cases) / sizeof(cases[0]);
    for (size_t i = 0; i < count; i++)
        if (run_case(&cases[i], wss, seconds) != 0) {
            fprintf(stderr, "guest-rate: case %s/%u vCPUs failed\n", cases[i].pattern, cases[i].vcpus);
            return 1;
        }
    if (json) {
        printf("{\"benchmark\":\"guest-rate\",\"wss_bytes\":%" PRIu64 ",\"seconds\":%u,\"cases\":[", wss, seconds);
        for (size_t i = 0; i < count; i++)
            printf("%s{\"pattern\":\"%s\",\"vcpus\":%u,\"pages_per_s\":%.0f,\"ratio_to_seq_1vcpu\":%.3f}",
                   i ? "," : "", cases[i].pattern, cases[i].vcpus, cases[i].pages_per_second,
                   cases[i].pages_per_second / cases[0].pages_per_second);
        printf("]}\n");
    } else {
        printf("guest-rate: dirtier over %" PRIu64 " MiB, untracked, %u s per case\n", wss >> 20, seconds);
        printf("%-8s %5s %16s %10s\n", "pattern", "vcpus", "pages/s", "vs seq/1");
        for (size_t i = 0; i < count; i++)
            printf("%-8s %5u %16.0f %10.3f\n", cases[i].pattern, cases[i].vcpus, cases[i].pages_per_second,
                   cases[i].pages_per_second / cases[0].pages_per_second);
    }
    return 0;
}
