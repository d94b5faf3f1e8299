/*
 * bench/api-latency: round-trip latency of vm.info over the API socket
 * while the guest dirties memory at full rate with dirty tracking on.
 *
 *   api-latency [--requests N] [--vcpus N] [--memory SIZE] [--wss SIZE]
 *               [--dirty-log ring|bitmap|off] [--no-tracking] [--json]
 *   api-latency --socket PATH [--requests N] [--json]    (an existing ringvm)
 *   api-latency --help
 *
 * In-process by default: the same threads as ringvm (vCPUs, harvesters, API
 * epoll thread) plus this client. Target: p99 < 2 ms.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "api/server.h"
#include "bench/lib/bench_options.h"
#include "vmm/vm.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define PROGRAM "bench/api-latency"
/* samples of 8 bytes each are kept for the percentiles: 80 MB at most */
#define MAX_REQUESTS 10000000u

static void usage(FILE *out)
{
    fprintf(out, "usage: api-latency [--requests N] [--vcpus N] [--memory SIZE] [--wss SIZE]\n"
                 "                   [--dirty-log ring|bitmap|off] [--no-tracking] [--json]\n"
                 "       api-latency --socket PATH [--requests N] [--json]\n"
                 "Round-trip latency of vm.info over the API socket while the guest dirties memory at\n"
                 "full rate with dirty tracking on, in this process (target: p99 < 2 ms).\n"
                 "  --requests N    round trips to time, 100 to %u (default 20000)\n"
                 "  --vcpus N       the guest's vCPUs, 1 to %d (default 2)\n"
                 "  --memory SIZE   guest RAM, 16M to 1T, a multiple of 4K (default 1G)\n"
                 "  --wss SIZE      the dirtier's working set, a multiple of 4K (default 256M)\n"
                 "  --dirty-log M   ring (default), bitmap or off\n"
                 "  --no-tracking   do not start dirty tracking\n"
                 "  --socket PATH   time an existing ringvm's API socket instead (no guest here)\n"
                 "  --json          one JSON object on stdout\n"
                 "  -h, --help      this text\n",
            MAX_REQUESTS, RINGVM_MAX_VCPUS);
}

int main(int argc, char **argv)
{
    long requests = 20000;
    unsigned vcpus = 2;
    uint64_t memory = 1ULL << 30, wss = 0;
    enum dirty_log_mode dirty_mode = DIRTY_LOG_RING;
    const char *wss_text = "256M", *dirty_text = "ring", *socket = NULL;
    char error[512];
    bool json = false, tracking = true;
    static const struct option options[] = {
        {"requests", required_argument, NULL, 'n'}, {"vcpus", required_argument, NULL, 'c'},
        {"memory", required_argument, NULL, 'm'},   {"wss", required_argument, NULL, 'w'},
        {"dirty-log", required_argument, NULL, 'd'}, {"socket", required_argument, NULL, 's'},
        {"no-tracking", no_argument, NULL, 'T'},    {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        unsigned value;
        switch (opt) {
        case 'n':
            if (bench_option_unsigned(PROGRAM, "--requests", optarg, 100, MAX_REQUESTS, &value) != 0)
                return 2;
            requests = value;
            break;
        case 'c':
            if (bench_option_unsigned(PROGRAM, "--vcpus", optarg, 1, RINGVM_MAX_VCPUS, &vcpus) != 0)
                return 2;
            break;
        case 'm':
            /* ringvm's own --memory range */
            if (bench_option_size(PROGRAM, "--memory", optarg, 16ULL << 20, 1ULL << 40, 4096, &memory) != 0)
                return 2;
            break;
        case 'w':
            /* Parsed here for the message; the spec takes the text (it is printed as given). */
            if (bench_option_size(PROGRAM, "--wss", optarg, 4096, 1ULL << 40, 4096, &wss) != 0)
                return 2;
            wss_text = optarg;
            break;
        case 'd':
            if (dirty_log_mode_parse(optarg, &dirty_mode, error, sizeof(error)) < 0) {
                fprintf(stderr, PROGRAM ": %s\n", error);
                return 2;
            }
            dirty_text = optarg;
            break;
        case 's': socket = optarg; break;
        case 'T': tracking = false; break;
        case 'j': json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;

    struct vm *vm = NULL;
    struct api_server *server = NULL;
    char path[128];
    if (!socket) {
        struct vm_config config;
        memset(&config, 0, sizeof(config));
        config.memory_bytes = memory;
        config.vcpu_count = vcpus;
        config.create_irqchip = true;
        config.memory_options.numa_node = -1;
        config.serial.mode = SERIAL_NONE;
        char spec[128];
        snprintf(spec, sizeof(spec), "dirtier,wss=%s,rate=0", wss_text);
        if (workload_spec_parse(spec, &config.workload, error, sizeof(error)) < 0) {
            fprintf(stderr, "api-latency: %s\n", error);
            return 2;
        }
        dirty_log_config_defaults(&config.dirty_log);
        config.dirty_log.mode = dirty_mode;
        if (vm_create(&vm, &config) != 0)
            return 1;
        snprintf(path, sizeof(path), "/tmp/ringvm-api-latency-%d.sock", (int)getpid());
        if (api_server_create(&server, vm, path) != 0 || vm_start(vm) != 0) {
            api_server_destroy(server);
            vm_destroy(vm);
            return 1;
        }
        if (tracking && vm->dirty_log && dirty_log_start(vm->dirty_log) != 0) {
            fprintf(stderr, "api-latency: dirty_log_start failed\n");
            tracking = false;
        }
        socket = path;
        /* let the guest reach its full rate before measuring */
        uint64_t start = now_ns();
        while (vm_guest_pages_written(vm) < 100000 && now_ns() - start < 10000000000ull) {
            struct timespec tick = {.tv_nsec = 10000000};
            nanosleep(&tick, NULL);
        }
    } else {
        tracking = false;
    }

    struct api_client *client;
    if (api_client_connect(&client, socket, error, sizeof(error)) < 0) {
        fprintf(stderr, "api-latency: %s\n", error);
        return 3;
    }
    uint64_t *samples = calloc((size_t)requests, sizeof(uint64_t));
    if (!samples)
        return 1;
    uint64_t pages_before = vm ? vm_guest_pages_written(vm) : 0, started = now_ns();   /* vm: NULL for --socket */
    long failures = 0;
    for (long i = 0; i < requests; i++) {
        json_t *result;
        struct api_error api_error;
        uint64_t t0 = now_ns();
        int r = api_client_call(client, "vm.info", NULL, &result, &api_error, 5000);
        samples[i] = now_ns() - t0;
        if (r != 0) {
            failures++;
            if (r < 0) {
                fprintf(stderr, "api-latency: %s\n", api_error.message);
                requests = i + 1;
                break;
            }
        }
        json_decref(result);
    }
    uint64_t elapsed = now_ns() - started;
    uint64_t pages = vm ? vm_guest_pages_written(vm) - pages_before : 0;
    api_client_close(client);

    qsort(samples, (size_t)requests, sizeof(uint64_t), compare_u64);
    double p50 = samples[requests / 2] / 1e6;
    double p99 = samples[(size_t)((double)requests * 0.99)] / 1e6;
    double p999 = samples[(size_t)((double)requests * 0.999)] / 1e6;
    double max = samples[requests - 1] / 1e6;
    double guest_rate = elapsed ? (double)pages / ((double)elapsed / 1e9) : 0;
    double dirty_rate = 0;
    if (vm && vm->dirty_log) {
        struct dirty_log_stats *stats = calloc(1, sizeof(*stats));
        if (stats) {
            dirty_log_get_stats(vm->dirty_log, stats);
            dirty_rate = stats->pages_per_s_1s;
            free(stats);
        }
    }
    if (json) {
        printf("{\"requests\":%ld,\"failures\":%ld,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"p999_ms\":%.4f,"
               "\"max_ms\":%.4f,\"target_p99_ms\":2,\"p99_ok\":%s,\"vcpus\":%u,\"dirty_log\":\"%s\","
               "\"tracking\":%s,\"guest_pages_per_s\":%.0f,\"harvested_pages_per_s\":%.0f,\"seconds\":%.3f}\n",
               requests, failures, p50, p99, p999, max, p99 < 2.0 ? "true" : "false", vm ? vcpus : 0,
               vm ? dirty_text : "external", tracking ? "true" : "false", guest_rate, dirty_rate,
               (double)elapsed / 1e9);
    } else {
        printf("vm.info round trips: %ld (%ld failed) in %.2f s\n", requests, failures, (double)elapsed / 1e9);
        printf("  p50 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms   (target p99 < 2 ms: %s)\n", p50, p99,
               p999, max, p99 < 2.0 ? "met" : "MISSED");
        if (vm)
            printf("  guest: %u vCPUs dirtying %s at %.0f pages/s, dirty log %s%s (harvested %.0f pages/s)\n",
                   vcpus, wss_text, guest_rate, dirty_text, tracking ? " tracking" : "", dirty_rate);
    }
    free(samples);
    if (vm) {
        if (tracking)
            dirty_log_stop(vm->dirty_log);
        vm_request_shutdown(vm, 0);
        vm_wait(vm);
        api_server_destroy(server);
        vm_destroy(vm);
    }
    return 0;
}
