/* Command-line, size and workload-spec parsing, including every kind of bad input. */
#include <criterion/criterion.h>
#include <string.h>

#include "vmm/options.h"
#include "vmm/size.h"
#include "vmm/workload.h"

Test(size, accepts_suffixes)
{
    char error[200];
    uint64_t value = 0;
    cr_assert_eq(size_parse("4096", &value, error, sizeof(error)), 0);
    cr_assert_eq(value, 4096);
    cr_assert_eq(size_parse("512M", &value, error, sizeof(error)), 0);
    cr_assert_eq(value, 512ULL << 20);
    cr_assert_eq(size_parse("1g", &value, error, sizeof(error)), 0);
    cr_assert_eq(value, 1ULL << 30);
    cr_assert_eq(size_parse("16GiB", &value, error, sizeof(error)), 0);
    cr_assert_eq(value, 16ULL << 30);
    cr_assert_eq(size_parse("2T", &value, error, sizeof(error)), 0);
    cr_assert_eq(value, 2ULL << 40);
    cr_assert_eq(size_parse("64K", &value, error, sizeof(error)), 0);
    cr_assert_eq(value, 65536);
}

Test(size, rejects_bad_input_with_a_message)
{
    char error[200];
    uint64_t value = 0;
    cr_assert_eq(size_parse("", &value, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "empty size (expected a number with optional K, M, G or T)");
    cr_assert_eq(size_parse("12Q", &value, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'12Q': unknown size suffix 'Q' (use K, M, G or T)");
    cr_assert_eq(size_parse("-1G", &value, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'-1G': not a size (expected a number with optional K, M, G or T)");
    cr_assert_eq(size_parse("1Gx", &value, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'1Gx': unknown size suffix 'Gx' (use K, M, G or T)");
    cr_assert_eq(size_parse("99999999999999999999", &value, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'99999999999999999999': number too large");
    cr_assert_eq(size_parse("99999999999T", &value, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "'99999999999T': size too large");
}

Test(size, formats_largest_exact_unit)
{
    char text[32];
    size_format(256ULL << 20, text, sizeof(text));
    cr_assert_str_eq(text, "256M");
    size_format(1ULL << 30, text, sizeof(text));
    cr_assert_str_eq(text, "1G");
    size_format(1536ULL << 20, text, sizeof(text));
    cr_assert_str_eq(text, "1536M");
    size_format(4097, text, sizeof(text));
    cr_assert_str_eq(text, "4097");
}

Test(workload, parses_dirtier_with_every_key)
{
    struct workload_spec spec;
    char error[200];
    cr_assert_eq(workload_spec_parse("dirtier,wss=256M,pattern=hot,rate=1000,write=4096,count=77,seed=9", &spec,
                                     error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(spec.kind, RINGVM_WORKLOAD_DIRTIER);
    cr_assert_eq(spec.wss_bytes, 256ULL << 20);
    cr_assert_eq(spec.pattern, RINGVM_PATTERN_HOT);
    cr_assert_eq(spec.rate_pages_per_s, 1000);
    cr_assert_eq(spec.write_bytes, 4096);
    cr_assert_eq(spec.count, 77);
    cr_assert_eq(spec.seed, 9);
    char text[200];
    workload_spec_format(&spec, text, sizeof(text));
    cr_assert_str_eq(text, "dirtier,wss=256M,pattern=hot,rate=1000,write=4096,count=77");
}

Test(workload, parses_ledger_idle_fault_and_defaults)
{
    struct workload_spec spec;
    char error[200];
    cr_assert_eq(workload_spec_parse("ledger,wss=256M,verify=2", &spec, error, sizeof(error)), 0);
    cr_assert_eq(spec.kind, RINGVM_WORKLOAD_LEDGER);
    cr_assert_eq(spec.verify_seconds, 2);
    cr_assert_eq(spec.pattern, RINGVM_PATTERN_SEQ);
    cr_assert_eq(spec.write_bytes, 8);
    cr_assert_eq(workload_spec_parse("idle", &spec, error, sizeof(error)), 0);
    cr_assert_eq(spec.kind, RINGVM_WORKLOAD_IDLE);
    cr_assert_eq(spec.wss_bytes, 0);
    cr_assert_eq(workload_spec_parse("fault,kind=pf,ring=0", &spec, error, sizeof(error)), 0);
    cr_assert_eq(spec.fault_kind, RINGVM_FAULT_PF);
    cr_assert_eq(spec.fault_ring, 0);
    cr_assert_eq(workload_spec_parse("dirtier", &spec, error, sizeof(error)), 0);
    cr_assert_eq(spec.wss_bytes, 64ULL << 20);
    cr_assert_eq(spec.rate_pages_per_s, 0);
}

struct bad_spec {
    const char *text;
    const char *message;
};

Test(workload, rejects_bad_specs_with_exact_messages)
{
    static const struct bad_spec cases[] = {
        { "", "--workload: empty (expected idle, dirtier, ledger or fault)" },
        { "spinner", "--workload: unknown workload 'spinner' (expected idle, dirtier, ledger or fault)" },
        { "dirtier,pattern=zigzag", "--workload: unknown pattern 'zigzag' (expected seq, random or hot)" },
        { "dirtier,wss=12Q", "--workload: wss=12Q: '12Q': unknown size suffix 'Q' (use K, M, G or T)" },
        { "dirtier,wss=100", "--workload: wss=100: must be a non-zero multiple of 4K" },
        { "dirtier,write=16", "--workload: write=16: expected 8 or 4096 (bytes per page)" },
        { "dirtier,rate=fast", "--workload: rate=fast: expected an integer from 0 to 1099511627776" },
        { "dirtier,rate=-5", "--workload: rate=-5: expected an integer from 0 to 1099511627776" },
        { "dirtier,wss", "--workload: 'wss': expected key=value" },
        { "dirtier,=5", "--workload: '=5': expected key=value" },
        { "dirtier,verify=2", "--workload: unknown parameter 'verify' for workload dirtier" },
        { "idle,wss=1M", "--workload: unknown parameter 'wss' for workload idle" },
        { "ledger,verify=99999", "--workload: verify=99999: expected an integer from 0 to 3600" },
        { "fault,kind=gp", "--workload: unknown fault kind 'gp' (expected ud, pf, de or bp)" },
        { "fault,ring=1", "--workload: ring=1: expected 0 or 3" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct workload_spec spec;
        char error[200] = "";
        cr_assert_eq(workload_spec_parse(cases[i].text, &spec, error, sizeof(error)), -1, "accepted '%s'",
                     cases[i].text);
        cr_assert_str_eq(error, cases[i].message, "for '%s'", cases[i].text);
    }
}

static enum options_result parse(struct ringvm_options *options, char *error, size_t size, int argc, char **argv)
{
    return options_parse(argc, argv, options, error, size);
}

Test(options, defaults_and_full_command_line)
{
    struct ringvm_options options;
    char error[300];
    char *defaults[] = { "ringvm", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 1, defaults), OPTIONS_OK);
    cr_assert_eq(options.vm.memory_bytes, 256ULL << 20);
    cr_assert_eq(options.vm.vcpu_count, 1);
    cr_assert_eq(options.vm.dirty_log.mode, DIRTY_LOG_RING);
    cr_assert_not(options.vm.dirty_log.ring_reset_at_take, "late reset by default");
    cr_assert_eq(options.vm.memory_options.numa_node, -1);
    cr_assert_eq(options.postcopy_fifo_priority, 0, "the fault service stays on the fair class by default");
    cr_assert_eq(options.postcopy_queue_budget_us, 250, "the post-copy stream's window is clamped by default");
    cr_assert_not(options.vm.memory_options.no_thp, "guest RAM asks for transparent huge pages by default");
    cr_assert_not(options.vm.memory_options.anonymous, "guest RAM is a memfd by default");

    char *full[] = { "ringvm", "--memory", "1G", "--vcpus", "2", "--workload", "ledger,wss=256M,verify=2",
                     "--serial", "none", "--stats", "--dirty-log", "bitmap", "--bitmap-sync-ms", "50",
                     "--ring-entries", "1024", "--api-socket", "/tmp/x.sock", "--run-seconds", "3",
                     "--bitmap-clear-chunk", "1M", "--ring-reset", "take", "--postcopy-fifo", "99", "--no-thp",
                     "--postcopy-queue-budget", "0", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 29, full), OPTIONS_OK, "%s", error);
    cr_assert_eq(options.postcopy_queue_budget_us, 0);
    cr_assert(options.vm.memory_options.no_thp);
    cr_assert_eq(options.postcopy_fifo_priority, 99);
    cr_assert(options.vm.dirty_log.ring_reset_at_take);
    cr_assert_eq(options.vm.dirty_log.bitmap_clear_chunk_bytes, 1ULL << 20);
    cr_assert_eq(options.vm.memory_bytes, 1ULL << 30);
    cr_assert_eq(options.vm.vcpu_count, 2);
    cr_assert_eq(options.vm.workload.kind, RINGVM_WORKLOAD_LEDGER);
    cr_assert_eq(options.vm.serial.mode, SERIAL_NONE);
    cr_assert(options.stats);
    cr_assert_eq(options.vm.dirty_log.mode, DIRTY_LOG_BITMAP);
    cr_assert_eq(options.vm.dirty_log.bitmap_sync_ms, 50);
    cr_assert_eq(options.vm.dirty_log.ring_entries, 1024);
    cr_assert_str_eq(options.api_socket, "/tmp/x.sock");
    cr_assert_eq(options.demo_seconds, 3);
}

struct bad_option {
    const char *option;
    const char *value;
    const char *message;
};

Test(options, rejects_bad_values_with_exact_messages)
{
    static const struct bad_option cases[] = {
        { "--memory", "12Q", "--memory '12Q': unknown size suffix 'Q' (use K, M, G or T)" },
        { "--memory", "1M", "--memory 1M: must be a multiple of 4K from 16M to 1T" },
        { "--memory", "lots", "--memory 'lots': not a size (expected a number with optional K, M, G or T)" },
        { "--vcpus", "0", "--vcpus '0': expected an integer from 1 to 64" },
        { "--bitmap-clear-chunk", "100K",
          "--bitmap-clear-chunk 100K: must be a multiple of 256K (64 pages, KVM_CLEAR_DIRTY_LOG's unit) from 256K to 1G" },
        { "--bitmap-clear-chunk", "2G",
          "--bitmap-clear-chunk 2G: must be a multiple of 256K (64 pages, KVM_CLEAR_DIRTY_LOG's unit) from 256K to 1G" },
        { "--vcpus", "65", "--vcpus '65': expected an integer from 1 to 64" },
        { "--vcpus", "two", "--vcpus 'two': expected an integer from 1 to 64" },
        { "--serial", "tty", "--serial: 'tty': expected stdout, stdio, none or file:PATH" },
        { "--ring-reset", "never", "--ring-reset 'never': expected late or take" },
        { "--ring-entries", "1000", "--ring-entries 1000: must be a power of two from 64 to 65536" },
        { "--ring-entries", "32", "--ring-entries '32': expected an integer from 64 to 65536" },
        { "--dirty-log", "pml", NULL },
        { "--postcopy-fifo", "0", "--postcopy-fifo '0': expected an integer from 1 to 99" },
        { "--postcopy-fifo", "100", "--postcopy-fifo '100': expected an integer from 1 to 99" },
        { "--postcopy-queue-budget", "100001", "--postcopy-queue-budget '100001': expected an integer from 0 to 100000" },
        { "--postcopy-queue-budget", "-1", "--postcopy-queue-budget '-1': expected an integer from 0 to 100000" },
        { "--postcopy-fifo", "high", "--postcopy-fifo 'high': expected an integer from 1 to 99" },
        { "--workload", "spinner", "--workload: unknown workload 'spinner' (expected idle, dirtier, ledger or fault)" },
        { "--ram", "shared", "--ram 'shared': expected memfd or anonymous" },
        { "--ram", "", "--ram '': expected memfd or anonymous" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ringvm_options options;
        char error[300] = "";
        char *argv[] = { "ringvm", (char *)cases[i].option, (char *)cases[i].value, NULL };
        cr_assert_eq(parse(&options, error, sizeof(error), 3, argv), OPTIONS_ERROR, "accepted %s %s",
                     cases[i].option, cases[i].value);
        if (cases[i].message != NULL)
            cr_assert_str_eq(error, cases[i].message);
        else
            cr_assert(strstr(error, cases[i].value) != NULL, "message '%s' does not name '%s'", error,
                      cases[i].value);
    }
    struct ringvm_options options;
    char error[300];
    char *unknown[] = { "ringvm", "--frobnicate", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 2, unknown), OPTIONS_ERROR);
    cr_assert_str_eq(error, "unknown option '--frobnicate' (see --help)");
    char *missing[] = { "ringvm", "--memory", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 2, missing), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--memory: missing argument");
    char *extra[] = { "ringvm", "stray", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 2, extra), OPTIONS_ERROR);
    cr_assert_str_eq(error, "unexpected argument 'stray' (see --help)");
}

/* --ram: memfd (the default) or anonymous, and what anonymous RAM cannot
 * be combined with. */
Test(options, ram_backing_and_its_conflicts)
{
    struct ringvm_options options;
    char error[300] = "";
    char *anonymous[] = { "ringvm", "--ram", "anonymous", "--incoming", "unix:/tmp/in.sock", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 5, anonymous), OPTIONS_OK, "%s", error);
    cr_assert(options.vm.memory_options.anonymous);
    char *memfd[] = { "ringvm", "--ram", "anonymous", "--ram", "memfd", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 5, memfd), OPTIONS_OK, "%s", error);
    cr_assert_not(options.vm.memory_options.anonymous, "the last --ram counts");
    char *huge[] = { "ringvm", "--ram", "anonymous", "--hugepages", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 4, huge), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--ram anonymous and --hugepages: 2M huge pages are a hugetlbfs memfd; anonymous RAM gets "
                            "transparent huge pages instead (see --no-thp)");
    char *local[] = { "ringvm", "--ram", "anonymous", "--incoming", "local:/tmp/handover.sock", NULL };
    cr_assert_eq(parse(&options, error, sizeof(error), 5, local), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--ram anonymous and --incoming local:: a local hand-over adopts the source's guest RAM, "
                            "a memfd; this ringvm's anonymous RAM would be thrown away");
}
