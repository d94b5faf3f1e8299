/*
 * ringvm-workload: the built-in guest's workloads as a static Linux program
 * (the Linux guest image's /bin/ringvm-workload, started by /init with
 * ringvm.workload=SPEC from the kernel command line), and the image's
 * poweroff/halt.
 *
 *   ringvm-workload --spec SPEC [--cpus N] [--seconds S] [--memory-file PATH] [--clock-lines[=MS]]
 *                   [--wss-at PHYS] [--stats-at PHYS]
 *   ringvm-workload poweroff [CODE]      (also as /sbin/poweroff, /sbin/halt)
 *
 * SPEC is ringvm's --workload grammar (vmm/workload.c, compiled in): idle,
 * dirtier,... or ledger,...; fault is refused. --cpus defaults to the
 * online CPUs (one pinned thread each, thread N reporting as vcpu=N);
 * --seconds stops after S seconds (0, the default: run until the workload
 * ends); --memory-file replaces /dev/mem (tests lay out a regular file like
 * guest-physical memory); --clock-lines adds a line `CLOCK mono_ns=N` (the
 * guest's CLOCK_MONOTONIC in ns) at every whole second, or every whole
 * multiple of MS milliseconds, from an extra thread (/init passes it:
 * tests compare the guest's clock with the host's across a migration);
 * --wss-at PHYS puts the working set in guest-physical memory from PHYS on,
 * mapped through /dev/mem (or --memory-file) instead of anonymous memory:
 * the kernel must have been told to leave it alone (memmap=SIZE$PHYS);
 * --stats-at PHYS writes the per-vCPU stats slots (struct ringvm_vcpu_stats,
 * RINGVM_STATS_SLOT_SIZE apart, as the channel's stats pages) to
 * guest-physical memory at PHYS when there is no ringvm channel, so that
 * another VMM (QEMU: pmemsave) can read the counters; under ringvm the
 * channel's stats pages are used and PHYS is left alone. Exit status: 0; 1
 * when a ledger found a mismatch or a thread could not run; 2 for a bad
 * command line or spec.
 *
 * Test hook: RINGVM_WORKLOAD_TEST_CORRUPT=VCPU:PAGE flips one bit in that
 * page's ledger record after that thread's first verify pass (use it with
 * count=, so no later write heals the page).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <unistd.h>

#include "guest/linux/workload/channel.h"
#include "guest/linux/workload/runner.h"
#include "vmm/workload.h"

#define MAIN_PROGRAM "ringvm-workload"
#define MAIN_DEFAULT_MEMORY_FILE "/dev/mem"
/* Present only in the guest image's initramfs: the reboot(2) fallback of
 * poweroff never runs on a machine that is not that guest. */
#define MAIN_GUEST_MARKER "/etc/ringvm-guest"

static void main_usage(FILE *out)
{
    fprintf(out,
            "usage: " MAIN_PROGRAM " --spec SPEC [--cpus N] [--seconds S] [--memory-file PATH] [--clock-lines[=MS]]\n"
            "                       [--wss-at PHYS] [--stats-at PHYS]\n"
            "       " MAIN_PROGRAM " poweroff [CODE]\n"
            "Runs ringvm's built-in guest workloads (idle, dirtier, ledger; SPEC as ringvm's\n"
            "--workload) in Linux user space: one pinned thread per CPU, reporting as vcpu=N.\n"
            "Under ringvm its counters and phases reach the VMM through /dev/mem.\n"
            "--clock-lines: also print 'CLOCK mono_ns=N' (CLOCK_MONOTONIC) every whole second;\n"
            "--clock-lines=MS at every whole multiple of MS milliseconds (10..60000).\n"
            "--wss-at PHYS: the working set is guest-physical memory from PHYS on (through\n"
            "/dev/mem or --memory-file), not anonymous memory; boot the kernel with\n"
            "memmap=SIZE$PHYS so it leaves that RAM alone.\n"
            "--stats-at PHYS: without the ringvm channel (e.g. under QEMU), write the per-vCPU\n"
            "stats slots (guest/abi.h struct ringvm_vcpu_stats, 256 bytes each) to\n"
            "guest-physical memory at PHYS (reserve it with memmap= too).\n");
}

static int main_parse_unsigned(const char *option, const char *text, unsigned long min, unsigned long max,
                               unsigned *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (*text == '\0' || *text == '-' || *end != '\0' || errno != 0 || value < min || value > max) {
        fprintf(stderr, MAIN_PROGRAM ": %s %s: expected an integer from %lu to %lu\n", option, text, min, max);
        return -1;
    }
    *out = (unsigned)value;
    return 0;
}

/* --wss-at / --stats-at: a page-aligned guest-physical address above 0. */
static int main_parse_phys(const char *option, const char *text, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long at = strtoull(text, &end, 0);
    if (*text == '\0' || *text == '-' || *end != '\0' || errno != 0 || at == 0 || at % RINGVM_PAGE_SIZE != 0) {
        fprintf(stderr, MAIN_PROGRAM ": %s %s: expected a page-aligned guest-physical address "
                        "above 0 (e.g. 0x4000000)\n", option, text);
        return -1;
    }
    *out = at;
    return 0;
}

/* The bytes --stats-at maps for `threads` slots: whole pages. */
static uint64_t main_stats_bytes(unsigned threads)
{
    uint64_t bytes = (uint64_t)threads * RINGVM_STATS_SLOT_SIZE;
    return (bytes + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE * RINGVM_PAGE_SIZE;
}

/* RINGVM_WORKLOAD_TEST_CORRUPT=VCPU:PAGE */
static int main_parse_corrupt_hook(struct linux_runner_config *config)
{
    const char *text = getenv("RINGVM_WORKLOAD_TEST_CORRUPT");
    if (text == NULL || *text == '\0')
        return 0;
    unsigned vcpu = 0;
    unsigned long long page = 0;
    char tail = 0;
    if (sscanf(text, "%u:%llu%c", &vcpu, &page, &tail) != 2) {
        fprintf(stderr, MAIN_PROGRAM ": RINGVM_WORKLOAD_TEST_CORRUPT=%s: expected VCPU:PAGE\n", text);
        return -1;
    }
    config->corrupt = true;
    config->corrupt_vcpu = vcpu;
    config->corrupt_page = page;
    return 0;
}

static void main_report_channel(const struct linux_channel *channel, unsigned threads)
{
    if (!channel->present) {
        fprintf(stderr, MAIN_PROGRAM ": running without the ringvm channel: %s\n", channel->reason);
        return;
    }
    fprintf(stderr,
            MAIN_PROGRAM ": ringvm channel: stats at 0x%" PRIx64 ", doorbell at 0x%" PRIx64
            ", %u vCPUs, TSC %" PRIu64 " kHz\n",
            channel->stats_gpa, channel->doorbell_gpa, channel->vcpu_count, channel->tsc_khz);
    if (channel->vcpu_count != threads)
        fprintf(stderr, MAIN_PROGRAM ": warning: %u threads but ringvm reports %u vCPUs\n", threads,
                channel->vcpu_count);
}

static int main_run(int argc, char **argv)
{
    static const struct option options[] = {
        { "spec", required_argument, NULL, 's' },
        { "cpus", required_argument, NULL, 'c' },
        { "seconds", required_argument, NULL, 't' },
        { "memory-file", required_argument, NULL, 'm' },
        { "clock-lines", optional_argument, NULL, 'l' },
        { "wss-at", required_argument, NULL, 'a' },
        { "stats-at", required_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *spec_text = NULL;
    const char *memory_file = MAIN_DEFAULT_MEMORY_FILE;
    unsigned cpus = 0;
    uint64_t stats_phys = 0;
    struct linux_runner_config config;
    memset(&config, 0, sizeof(config));
    config.clock_period_ms = 1000;

    int option;
    while ((option = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (option) {
        case 's':
            spec_text = optarg;
            break;
        case 'c':
            if (main_parse_unsigned("--cpus", optarg, 1, RINGVM_MAX_VCPUS, &cpus) != 0)
                return 2;
            break;
        case 't':
            if (main_parse_unsigned("--seconds", optarg, 0, 86400 * 365, &config.seconds) != 0)
                return 2;
            break;
        case 'm':
            memory_file = optarg;
            break;
        case 'a':
            if (main_parse_phys("--wss-at", optarg, &config.wss_phys) != 0)
                return 2;
            break;
        case 'S':
            if (main_parse_phys("--stats-at", optarg, &stats_phys) != 0)
                return 2;
            break;
        case 'l':
            config.clock_lines = true;
            if (optarg != NULL &&
                main_parse_unsigned("--clock-lines", optarg, 10, 60000, &config.clock_period_ms) != 0)
                return 2;
            break;
        case 'h':
            main_usage(stdout);
            return 0;
        default:
            main_usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, MAIN_PROGRAM ": unexpected argument '%s'\n", argv[optind]);
        main_usage(stderr);
        return 2;
    }
    if (spec_text == NULL) {
        fprintf(stderr, MAIN_PROGRAM ": --spec SPEC is required\n");
        main_usage(stderr);
        return 2;
    }
    char error[256];
    if (workload_spec_parse(spec_text, &config.spec, error, sizeof(error)) != 0) {
        fprintf(stderr, MAIN_PROGRAM ": %s\n", error);
        return 2;
    }
    if (config.spec.kind == RINGVM_WORKLOAD_FAULT) {
        fprintf(stderr, MAIN_PROGRAM ": --workload: fault is a built-in guest workload only "
                        "(a Linux process would just be killed by the signal)\n");
        return 2;
    }
    if (main_parse_corrupt_hook(&config) != 0)
        return 2;
    if (cpus == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        if (online < 1) {
            fprintf(stderr, MAIN_PROGRAM ": cannot count the online CPUs: %s\n", strerror(errno));
            return 1;
        }
        cpus = online > RINGVM_MAX_VCPUS ? RINGVM_MAX_VCPUS : (unsigned)online;
    }
    config.threads = cpus;
    config.memory_path = memory_file;

    uint64_t stats_bytes = main_stats_bytes(cpus);
    if (stats_phys != 0 && config.wss_phys != 0) {
        bool writes = config.spec.kind == RINGVM_WORKLOAD_DIRTIER || config.spec.kind == RINGVM_WORKLOAD_LEDGER;
        uint64_t wss_bytes = writes ? (config.spec.wss_bytes + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE *
                                          RINGVM_PAGE_SIZE : 0;
        if (stats_phys < config.wss_phys + wss_bytes && config.wss_phys < stats_phys + stats_bytes) {
            fprintf(stderr, MAIN_PROGRAM ": --stats-at 0x%" PRIx64 ": its %" PRIu64 " bytes overlap the working "
                            "set at 0x%" PRIx64 "-0x%" PRIx64 " (--wss-at)\n",
                    stats_phys, stats_bytes, config.wss_phys, config.wss_phys + wss_bytes);
            return 2;
        }
    }

    struct linux_channel channel;
    linux_channel_open(&channel, memory_file);
    main_report_channel(&channel, cpus);
    config.channel = &channel;

    void *stats_pages = NULL;
    if (stats_phys != 0 && channel.present) {
        fprintf(stderr, MAIN_PROGRAM ": --stats-at 0x%" PRIx64 " unused: the stats go to the ringvm channel\n",
                stats_phys);
    } else if (stats_phys != 0) {
        char reason[256];
        stats_pages = linux_memory_map(memory_file, stats_phys, (size_t)stats_bytes, reason, sizeof(reason));
        if (stats_pages == NULL) {
            fprintf(stderr, MAIN_PROGRAM ": --stats-at: %s\n", reason);
            linux_channel_close(&channel);
            return 1;
        }
        /* Whatever RAM held before (a previous boot) is not this run's. */
        memset(stats_pages, 0, (size_t)stats_bytes);
        config.stats_slots = stats_pages;
        fprintf(stderr, MAIN_PROGRAM ": stats at 0x%" PRIx64 " (%u slots of %d bytes)\n", stats_phys, cpus,
                RINGVM_STATS_SLOT_SIZE);
    }
    config.tsc_khz = channel.present && channel.tsc_khz ? channel.tsc_khz : linux_runner_calibrate_tsc_khz();

    int status = linux_runner_run(&config);
    if (stats_pages != NULL)
        munmap(stats_pages, (size_t)stats_bytes);
    linux_channel_close(&channel);
    return status;
}

/* poweroff [CODE]: the doorbell's POWEROFF under ringvm, else reboot(2). */
static int main_poweroff(int argc, char **argv, const char *memory_file)
{
    unsigned code = 0;
    for (int i = 1; i < argc; i++) {
        /* busybox's poweroff options, accepted and meaningless here */
        if (strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "-n") == 0)
            continue;
        if (main_parse_unsigned("poweroff", argv[i], 0, 255, &code) != 0)
            return 2;
    }
    sync();
    struct linux_channel channel;
    if (linux_channel_open(&channel, memory_file) == 0) {
        /* The VMM ends the VM at this store; what follows runs only if it
         * did not act on it. */
        linux_channel_send(&channel, RINGVM_CMD_POWEROFF, code);
        linux_channel_close(&channel);
    }
    if (access(MAIN_GUEST_MARKER, F_OK) != 0) {
        fprintf(stderr, MAIN_PROGRAM ": poweroff: %s is missing, so this is not the ringvm guest image: "
                        "not calling reboot(2)\n", MAIN_GUEST_MARKER);
        return 1;
    }
    /* Without a power-off driver the kernel halts instead (kernel/reboot.c);
     * the guest image's kernel has ACPI for QEMU. */
    reboot(RB_POWER_OFF);
    fprintf(stderr, MAIN_PROGRAM ": poweroff: reboot(RB_POWER_OFF): %s\n", strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    char program[256];
    snprintf(program, sizeof(program), "%s", argc > 0 ? argv[0] : MAIN_PROGRAM);
    const char *name = basename(program);
    if (strcmp(name, "poweroff") == 0 || strcmp(name, "halt") == 0)
        return main_poweroff(argc, argv, MAIN_DEFAULT_MEMORY_FILE);
    if (argc >= 2 && strcmp(argv[1], "poweroff") == 0) {
        /* RINGVM_WORKLOAD_MEMORY_FILE: the tests' stand-in for /dev/mem. */
        const char *memory_file = getenv("RINGVM_WORKLOAD_MEMORY_FILE");
        return main_poweroff(argc - 1, argv + 1, memory_file ? memory_file : MAIN_DEFAULT_MEMORY_FILE);
    }
    return main_run(argc, argv);
}
