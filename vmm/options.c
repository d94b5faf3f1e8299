/* ringvm command-line parsing. */
#include "vmm/options.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "migration/postcopy_priority.h"
#include "migration/stream_window.h"
#include "vmm/linux_boot.h"
#include "vmm/size.h"

#define RINGVM_VERSION "0.1.0"
#define LINUX_DEFAULT_CMDLINE_TEXT LINUX_BOOT_DEFAULT_CMDLINE
/* The destination's transfer timeout when --incoming-stall-timeout is not
 * given: the same default as the source's stall_timeout_s. */
#define OPTIONS_DEFAULT_INCOMING_STALL_TIMEOUT_S 5u

void options_print_usage(FILE *out)
{
    fprintf(out,
"usage: ringvm [OPTIONS]\n"
"\n"
"A KVM virtual machine monitor built for live-migrating guests that dirty\n"
"memory fast. Runs the built-in guest (a ring-3 memory workload) or a Linux\n"
"kernel (--kernel).\n"
"\n"
"Guest:\n"
"  --memory SIZE            guest RAM, e.g. 512M, 1G, 16G (default 256M; K/M/G/T suffixes)\n"
"  --vcpus N                vCPUs, 1..%d (default 1)\n"
"  --workload SPEC          NAME[,key=value...] (default dirtier):\n"
"                             idle\n"
"                             dirtier,wss=SIZE,pattern=seq|random|hot,rate=PAGES_PER_S,\n"
"                                     write=8|4096,count=N,seed=N\n"
"                             ledger,wss=SIZE,verify=SECONDS,pattern=...,rate=...,write=...\n"
"                             fault,kind=ud|pf|de|bp,ring=0|3\n"
"                           wss is split across vCPUs (default 64M); rate is per vCPU,\n"
"                           0 = as fast as possible; count = page writes per vCPU, then\n"
"                           the vCPU idles (0 = forever); ledger verifies every\n"
"                           verify seconds (default 5) and prints LEDGER OK|MISMATCH\n"
"  --kernel PATH            boot this Linux kernel instead of the built-in guest: a bzImage\n"
"                           (64-bit boot protocol 2.12+) or a vmlinux ELF (PVH entry when it\n"
"                           has the Xen PVH note, else its 64-bit entry); not with --workload\n"
"  --initrd PATH            with --kernel: the initramfs, loaded at the top of low RAM\n"
"  --cmdline STRING         with --kernel: appended to the default kernel command line\n"
"                           \"" LINUX_DEFAULT_CMDLINE_TEXT "\"\n"
"                           (on PVM hosts followed by \"" LINUX_BOOT_PVM_CMDLINE "\");\n"
"                           a workload in the guest image: ringvm.workload=SPEC\n"
"  --serial MODE            console: stdout (default), none, file:PATH, stdio (interactive:\n"
"                           output to stdout, stdin to the guest's UART; on a terminal raw\n"
"                           mode, so Ctrl-C goes to the guest and Ctrl-] stops ringvm)\n"
"  --console unix:PATH      also serve the console on a Unix socket (mode 0600, same user or\n"
"                           root) for `ringctl console`: several readers, one writer at a time\n"
"  --numa-node N            bind guest RAM and vCPU threads to NUMA node N\n"
"  --hugepages              back guest RAM with 2M huge pages\n"
"  --ram memfd|anonymous    guest RAM's backing: memfd (default: a shareable file, needed\n"
"                           by a local hand-over; where shmem_enabled gives a memfd no\n"
"                           huge pages, a file on ringvm's own tmpfs mounted huge=advise,\n"
"                           which needs CAP_SYS_ADMIN; vm.info: ram_file) or anonymous\n"
"                           (private memory: the host's transparent_hugepage/enabled gives\n"
"                           it huge pages; not with --hugepages, nor local: migrations)\n"
"  --no-thp                 keep guest RAM on 4K pages: without it ringvm asks for\n"
"                           transparent huge pages (MADV_HUGEPAGE), which the host grants\n"
"                           when /sys/kernel/mm/transparent_hugepage/shmem_enabled is\n"
"                           advise or always, or where the file is ringvm's own tmpfs\n"
"                           (with --ram anonymous: enabled is madvise or always)\n"
"                           (vm.info: thp, thp_host; a memfd the host keeps on 4K pages\n"
"                           gets a note at start)\n"
"  --prealloc               fault in all guest RAM at start (no first-touch faults later;\n"
"                           with --incoming the copy runs 1.2-1.5x faster, but RAM the\n"
"                           source never wrote is committed too)\n"
"  --stats                  print guest pages/s per vCPU (and dirty tracking) every second\n"
"  --run-seconds N          shut down cleanly after N seconds (default: run until SIGINT/SIGTERM)\n"
"\n"
"Dirty tracking:\n"
"  --dirty-log MODE         ring (default), bitmap or off\n"
"  --ring-entries N         dirty ring entries per vCPU, power of two 64..65536 (default %u)\n"
"  --harvesters N           harvester threads (default: one per NUMA node running vCPUs)\n"
"  --bitmap-sync-ms N       bitmap mode: statistics sync period in ms outside a migration\n"
"                           (vm.dirty-tracking; default %u)\n"
"  --bitmap-clear-chunk SIZE  bitmap mode: a migration write-protects RAM in chunks of SIZE\n"
"                           just before sending them; multiple of 256K up to 1G (default 256K)\n"
"  --ring-reset WHEN        ring mode, during a migration: late (default: a page is\n"
"                           write-protected again just before the migration reads it) or\n"
"                           take (every page of a pass at the pass's start; for comparison)\n"
"\n"
"Control:\n"
"  --api-socket PATH        serve the JSON control API on this Unix socket (mode 0600)\n"
"  --incoming ADDRESS       wait for a live migration on unix:PATH or tcp:HOST:PORT, then run\n"
"                           the received guest (--memory and --vcpus must match the source);\n"
"                           local:PATH: a local hand-over from a ringvm on this host, which\n"
"                           passes its guest RAM (a memfd) instead of copying it\n"
"                           (Unix socket, mode 0600, same user or root; not with --prealloc)\n"
"  --incoming-stall-timeout SECONDS\n"
"                           with --incoming: give up (exit 1, the guest never runs here) when\n"
"                           the source sends nothing for SECONDS, 1..3600 (default %u); also\n"
"                           the least time any frame gets to arrive once it has started\n"
"                           (longer frames: their length at 256 KiB/s)\n"
"  --tls-psk FILE           with --incoming tcp:...: TLS 1.3 with the pre-shared key in FILE\n"
"                           (QEMU's keys.psk format, lines IDENTITY:HEXKEY, the first used;\n"
"                           the same file as the source's ringctl migrate --tls-psk; mode 0600)\n"
"  --tls-creds DIR          with --incoming tcp:...: TLS 1.3 with x509 certificates in DIR\n"
"                           (ca-cert.pem, server-cert.pem, server-key.pem; the source needs a\n"
"                           client-cert.pem from the same CA). Without either, tcp: is plaintext:\n"
"                           any peer that connects first is the source\n"
"  --postcopy-fifo PRIORITY run post-copy's fault service (pc-fault and pc-urgent on a\n"
"                           destination, pc-serve on a source) under SCHED_FIFO at PRIORITY\n"
"                           (1..99), so a vCPU's missing page is served before other threads\n"
"                           get the core; needs CAP_SYS_NICE or RLIMIT_RTPRIO >= PRIORITY\n"
"                           (checked at start). Default: the fair class, like every thread\n"
"  --postcopy-queue-budget US\n"
"                           a destination over TCP clamps the post-copy stream's receive window\n"
"                           so at most about US microseconds of it (at its rate, beyond two\n"
"                           round trips) wait in the network ahead of a requested page\n"
"                           (default %u; 0 = no clamp, the stream takes what TCP gives it)\n"
"  --bpf                    load the eBPF probes at start (see ringctl trace)\n"
"  -h, --help               this text\n"
"  --version                print the version\n"
"\n"
"Exit status: 0 clean shutdown (SIGINT/SIGTERM, or a Linux guest that powers off or\n"
"reboots), 1 guest or VMM failure, 2 bad command line.\n",
            RINGVM_MAX_VCPUS, DIRTY_LOG_DEFAULT_RING_ENTRIES, DIRTY_LOG_DEFAULT_BITMAP_SYNC_MS,
            OPTIONS_DEFAULT_INCOMING_STALL_TIMEOUT_S, STREAM_WINDOW_DEFAULT_BUDGET_US);
}

enum {
    OPT_MEMORY = 256, OPT_VCPUS, OPT_WORKLOAD, OPT_SERIAL, OPT_STATS, OPT_NUMA_NODE, OPT_HUGEPAGES,
    OPT_DIRTY_LOG, OPT_RING_ENTRIES, OPT_HARVESTERS, OPT_BITMAP_SYNC_MS, OPT_BITMAP_CLEAR_CHUNK, OPT_RING_RESET, OPT_API_SOCKET, OPT_VERSION,
    OPT_RUN_SECONDS, OPT_PREALLOC, OPT_INCOMING, OPT_BPF, OPT_INCOMING_STALL_TIMEOUT,
    OPT_KERNEL, OPT_INITRD, OPT_CMDLINE, OPT_CONSOLE, OPT_TLS_PSK, OPT_TLS_CREDS, OPT_POSTCOPY_FIFO, OPT_POSTCOPY_QUEUE_BUDGET, OPT_NO_THP, OPT_RAM,
};

static const struct option long_options[] = {
    { "memory", required_argument, NULL, OPT_MEMORY },
    { "vcpus", required_argument, NULL, OPT_VCPUS },
    { "workload", required_argument, NULL, OPT_WORKLOAD },
    { "serial", required_argument, NULL, OPT_SERIAL },
    { "stats", no_argument, NULL, OPT_STATS },
    { "numa-node", required_argument, NULL, OPT_NUMA_NODE },
    { "hugepages", no_argument, NULL, OPT_HUGEPAGES },
    { "no-thp", no_argument, NULL, OPT_NO_THP },
    { "ram", required_argument, NULL, OPT_RAM },
    { "prealloc", no_argument, NULL, OPT_PREALLOC },
    { "dirty-log", required_argument, NULL, OPT_DIRTY_LOG },
    { "ring-entries", required_argument, NULL, OPT_RING_ENTRIES },
    { "harvesters", required_argument, NULL, OPT_HARVESTERS },
    { "bitmap-sync-ms", required_argument, NULL, OPT_BITMAP_SYNC_MS },
    { "bitmap-clear-chunk", required_argument, NULL, OPT_BITMAP_CLEAR_CHUNK },
    { "ring-reset", required_argument, NULL, OPT_RING_RESET },
    { "api-socket", required_argument, NULL, OPT_API_SOCKET },
    { "run-seconds", required_argument, NULL, OPT_RUN_SECONDS },
    { "incoming", required_argument, NULL, OPT_INCOMING },
    { "incoming-stall-timeout", required_argument, NULL, OPT_INCOMING_STALL_TIMEOUT },
    { "bpf", no_argument, NULL, OPT_BPF },
    { "kernel", required_argument, NULL, OPT_KERNEL },
    { "initrd", required_argument, NULL, OPT_INITRD },
    { "cmdline", required_argument, NULL, OPT_CMDLINE },
    { "console", required_argument, NULL, OPT_CONSOLE },
    { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
    { "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
    { "postcopy-fifo", required_argument, NULL, OPT_POSTCOPY_FIFO },
    { "postcopy-queue-budget", required_argument, NULL, OPT_POSTCOPY_QUEUE_BUDGET },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, OPT_VERSION },
    { NULL, 0, NULL, 0 },
};

static int parse_count(const char *option, const char *text, uint64_t min, uint64_t max, uint64_t *out,
                       char *error, size_t error_size)
{
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (*text == '\0' || *text == '-' || *end != '\0' || errno != 0 || value < min || value > max) {
        snprintf(error, error_size, "%s '%s': expected an integer from %" PRIu64 " to %" PRIu64, option, text,
                 min, max);
        return -1;
    }
    *out = value;
    return 0;
}

enum options_result options_parse(int argc, char **argv, struct ringvm_options *options, char *error,
                                  size_t error_size)
{
    memset(options, 0, sizeof(*options));
    struct vm_config *config = &options->vm;
    config->memory_bytes = 256ULL << 20;
    config->vcpu_count = 1;
    config->create_irqchip = true;
    config->memory_options.numa_node = -1;
    workload_spec_defaults(&config->workload);
    dirty_log_config_defaults(&config->dirty_log);
    options->incoming_stall_timeout_s = OPTIONS_DEFAULT_INCOMING_STALL_TIMEOUT_S;
    options->postcopy_queue_budget_us = STREAM_WINDOW_DEFAULT_BUDGET_US;
    bool incoming_stall_timeout_given = false;
    bool workload_given = false;

    char detail[200];
    uint64_t value = 0;
    optind = 0;
    opterr = 0;
    for (;;) {
        int option_index = 0;
        int option = getopt_long(argc, argv, ":h", long_options, &option_index);
        if (option == -1)
            break;
        switch (option) {
        case OPT_MEMORY:
            if (size_parse(optarg, &config->memory_bytes, detail, sizeof(detail)) != 0) {
                snprintf(error, error_size, "--memory %s", detail);
                return OPTIONS_ERROR;
            }
            if (config->memory_bytes < (16ULL << 20) || config->memory_bytes % 4096 != 0 ||
                config->memory_bytes > (1ULL << 40)) {
                snprintf(error, error_size, "--memory %s: must be a multiple of 4K from 16M to 1T", optarg);
                return OPTIONS_ERROR;
            }
            break;
        case OPT_VCPUS:
            if (parse_count("--vcpus", optarg, 1, RINGVM_MAX_VCPUS, &value, error, error_size))
                return OPTIONS_ERROR;
            config->vcpu_count = (unsigned)value;
            break;
        case OPT_WORKLOAD:
            if (workload_spec_parse(optarg, &config->workload, error, error_size) != 0)
                return OPTIONS_ERROR;
            workload_given = true;
            break;
        case OPT_SERIAL:
            if (serial_config_parse(optarg, &config->serial, error, error_size) != 0)
                return OPTIONS_ERROR;
            break;
        case OPT_STATS:
            options->stats = true;
            break;
        case OPT_NUMA_NODE:
            if (parse_count("--numa-node", optarg, 0, 1023, &value, error, error_size))
                return OPTIONS_ERROR;
            config->memory_options.numa_node = (int)value;
            break;
        case OPT_HUGEPAGES:
            config->memory_options.hugepages = true;
            break;
        case OPT_NO_THP:
            config->memory_options.no_thp = true;
            break;
        case OPT_RAM:
            if (strcmp(optarg, "memfd") == 0 || strcmp(optarg, "anonymous") == 0) {
                config->memory_options.anonymous = optarg[0] == 'a';
                break;
            }
            snprintf(error, error_size, "--ram '%s': expected memfd or anonymous", optarg);
            return OPTIONS_ERROR;
        case OPT_PREALLOC:
            config->memory_options.prealloc = true;
            break;
        case OPT_DIRTY_LOG:
            if (dirty_log_mode_parse(optarg, &config->dirty_log.mode, error, error_size) != 0)
                return OPTIONS_ERROR;
            break;
        case OPT_RING_ENTRIES:
            if (parse_count("--ring-entries", optarg, 64, 65536, &value, error, error_size))
                return OPTIONS_ERROR;
            if ((value & (value - 1)) != 0) {
                snprintf(error, error_size, "--ring-entries %s: must be a power of two from 64 to 65536", optarg);
                return OPTIONS_ERROR;
            }
            config->dirty_log.ring_entries = (uint32_t)value;
            break;
        case OPT_HARVESTERS:
            if (parse_count("--harvesters", optarg, 1, RINGVM_MAX_VCPUS, &value, error, error_size))
                return OPTIONS_ERROR;
            config->dirty_log.harvesters = (unsigned)value;
            break;
        case OPT_BITMAP_SYNC_MS:
            if (parse_count("--bitmap-sync-ms", optarg, 1, 60000, &value, error, error_size))
                return OPTIONS_ERROR;
            config->dirty_log.bitmap_sync_ms = (unsigned)value;
            break;
        case OPT_BITMAP_CLEAR_CHUNK: {
            uint64_t chunk = 0;
            if (size_parse(optarg, &chunk, detail, sizeof(detail)) != 0) {
                snprintf(error, error_size, "--bitmap-clear-chunk %s", detail);
                return OPTIONS_ERROR;
            }
            if (chunk < DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK || chunk > DIRTY_LOG_MAX_BITMAP_CLEAR_CHUNK ||
                chunk % DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK != 0) {
                snprintf(error, error_size, "--bitmap-clear-chunk %s: must be a multiple of 256K "
                         "(64 pages, KVM_CLEAR_DIRTY_LOG's unit) from 256K to 1G", optarg);
                return OPTIONS_ERROR;
            }
            config->dirty_log.bitmap_clear_chunk_bytes = chunk;
            break;
        }
        case OPT_RING_RESET:
            if (strcmp(optarg, "late") == 0) {
                config->dirty_log.ring_reset_at_take = false;
            } else if (strcmp(optarg, "take") == 0) {
                config->dirty_log.ring_reset_at_take = true;
            } else {
                snprintf(error, error_size, "--ring-reset '%s': expected late or take", optarg);
                return OPTIONS_ERROR;
            }
            break;
        case OPT_API_SOCKET:
            if (*optarg == '\0' || strlen(optarg) >= 108) {
                snprintf(error, error_size, "--api-socket '%s': expected a path of 1 to 107 bytes", optarg);
                return OPTIONS_ERROR;
            }
            options->api_socket = optarg;
            break;
        case OPT_RUN_SECONDS:
            if (parse_count("--run-seconds", optarg, 1, 86400 * 365, &value, error, error_size))
                return OPTIONS_ERROR;
            options->demo_seconds = (unsigned)value;
            break;
        case OPT_INCOMING:
            if (strncmp(optarg, "unix:", 5) != 0 && strncmp(optarg, "tcp:", 4) != 0 &&
                strncmp(optarg, "local:", 6) != 0) {
                snprintf(error, error_size, "--incoming '%s': expected unix:PATH, tcp:HOST:PORT or local:PATH",
                         optarg);
                return OPTIONS_ERROR;
            }
            options->incoming = optarg;
            config->incoming = true;
            break;
        case OPT_INCOMING_STALL_TIMEOUT:
            if (parse_count("--incoming-stall-timeout", optarg, 1, 3600, &value, error, error_size))
                return OPTIONS_ERROR;
            options->incoming_stall_timeout_s = (unsigned)value;
            incoming_stall_timeout_given = true;
            break;
        case OPT_BPF:
            options->bpf = true;
            break;
        case OPT_KERNEL:
        case OPT_INITRD:
            if (*optarg == '\0') {
                snprintf(error, error_size, "%s: expected a file path", option == OPT_KERNEL ? "--kernel" : "--initrd");
                return OPTIONS_ERROR;
            }
            if (option == OPT_KERNEL)
                config->linux_guest.kernel_path = optarg;
            else
                config->linux_guest.initrd_path = optarg;
            break;
        case OPT_CMDLINE:
            config->linux_guest.user_cmdline = optarg;
            break;
        case OPT_CONSOLE:
            if (strncmp(optarg, "unix:", 5) != 0 || optarg[5] == '\0' || strlen(optarg + 5) >= 108) {
                snprintf(error, error_size, "--console '%s': expected unix:PATH (a path of 1 to 107 bytes)", optarg);
                return OPTIONS_ERROR;
            }
            options->console_socket = optarg + 5;
            break;
        case OPT_TLS_PSK:
        case OPT_TLS_CREDS:
            if (*optarg == '\0') {
                snprintf(error, error_size, "%s: expected a %s", option == OPT_TLS_PSK ? "--tls-psk" : "--tls-creds",
                         option == OPT_TLS_PSK ? "file path" : "directory path");
                return OPTIONS_ERROR;
            }
            if (option == OPT_TLS_PSK)
                options->tls_psk = optarg;
            else
                options->tls_creds = optarg;
            break;
        case OPT_POSTCOPY_FIFO:
            if (parse_count("--postcopy-fifo", optarg, POSTCOPY_PRIORITY_MIN, POSTCOPY_PRIORITY_MAX, &value, error,
                            error_size))
                return OPTIONS_ERROR;
            options->postcopy_fifo_priority = (unsigned)value;
            break;
        case OPT_POSTCOPY_QUEUE_BUDGET:
            if (parse_count("--postcopy-queue-budget", optarg, 0, STREAM_WINDOW_MAX_BUDGET_US, &value, error,
                            error_size))
                return OPTIONS_ERROR;
            options->postcopy_queue_budget_us = (unsigned)value;
            break;
        case 'h':
            options_print_usage(stdout);
            return OPTIONS_EXIT;
        case OPT_VERSION:
            printf("ringvm %s\n", RINGVM_VERSION);
            return OPTIONS_EXIT;
        case ':':
            snprintf(error, error_size, "%s: missing argument", argv[optind - 1]);
            return OPTIONS_ERROR;
        default:
            snprintf(error, error_size, "unknown option '%s' (see --help)", argv[optind - 1]);
            return OPTIONS_ERROR;
        }
    }
    if (optind < argc) {
        snprintf(error, error_size, "unexpected argument '%s' (see --help)", argv[optind]);
        return OPTIONS_ERROR;
    }
    bool incoming_local = options->incoming != NULL && strncmp(options->incoming, "local:", 6) == 0;
    if (config->memory_options.prealloc && incoming_local) {
        snprintf(error, error_size, "--prealloc and --incoming local:: a local hand-over adopts the source's guest "
                 "RAM, whose pages exist already; this ringvm's own would be faulted in and thrown away");
        return OPTIONS_ERROR;
    }
    if (config->memory_options.anonymous && config->memory_options.hugepages) {
        snprintf(error, error_size, "--ram anonymous and --hugepages: 2M huge pages are a hugetlbfs memfd; anonymous "
                 "RAM gets transparent huge pages instead (see --no-thp)");
        return OPTIONS_ERROR;
    }
    if (config->memory_options.anonymous && incoming_local) {
        snprintf(error, error_size, "--ram anonymous and --incoming local:: a local hand-over adopts the source's guest "
                 "RAM, a memfd; this ringvm's anonymous RAM would be thrown away");
        return OPTIONS_ERROR;
    }
    if (incoming_stall_timeout_given && options->incoming == NULL) {
        snprintf(error, error_size, "--incoming-stall-timeout applies to a destination: it needs --incoming");
        return OPTIONS_ERROR;
    }
    if (options->tls_psk != NULL || options->tls_creds != NULL) {
        const char *flag = options->tls_psk != NULL ? "--tls-psk" : "--tls-creds";
        if (options->tls_psk != NULL && options->tls_creds != NULL) {
            snprintf(error, error_size, "--tls-psk and --tls-creds: choose one (a pre-shared key or x509)");
            return OPTIONS_ERROR;
        }
        if (options->incoming == NULL) {
            snprintf(error, error_size, "%s applies to a destination: it needs --incoming tcp:HOST:PORT (a source "
                     "takes it on ringctl migrate)", flag);
            return OPTIONS_ERROR;
        }
        if (strncmp(options->incoming, "tcp:", 4) != 0) {
            snprintf(error, error_size, "%s needs --incoming tcp:HOST:PORT; a unix: socket is local, protected by "
                     "its file mode and peer check", flag);
            return OPTIONS_ERROR;
        }
    }
    const struct vm_linux_guest_config *linux_guest = &config->linux_guest;
    if (linux_guest->kernel_path == NULL && (linux_guest->initrd_path != NULL || linux_guest->user_cmdline != NULL)) {
        snprintf(error, error_size, "%s needs --kernel (the built-in guest takes --workload)",
                 linux_guest->initrd_path != NULL ? "--initrd" : "--cmdline");
        return OPTIONS_ERROR;
    }
    if (linux_guest->kernel_path != NULL && workload_given) {
        snprintf(error, error_size, "--workload runs the built-in guest and cannot be combined with --kernel; "
                 "a Linux guest image takes its workload on the kernel command line "
                 "(--cmdline ringvm.workload=SPEC)");
        return OPTIONS_ERROR;
    }
    if (linux_guest->kernel_path != NULL && options->incoming != NULL) {
        snprintf(error, error_size, "--kernel and --incoming: a destination receives its guest (kernel "
                 "included) from the source; give it --memory and --vcpus only");
        return OPTIONS_ERROR;
    }
    if (linux_guest->kernel_path != NULL) {
        config->guest_kind = VM_GUEST_LINUX;
        /* The Linux guest runs its own workload; the VMM places none. */
        workload_spec_defaults(&config->workload);
        config->workload.kind = RINGVM_WORKLOAD_IDLE;
    }
    if (config->memory_options.hugepages && config->memory_bytes % (2ULL << 20) != 0) {
        snprintf(error, error_size, "--memory must be a multiple of 2M with --hugepages");
        return OPTIONS_ERROR;
    }
    return OPTIONS_OK;
}
