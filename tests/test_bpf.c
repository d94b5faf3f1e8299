/*
 * The eBPF probes (bpf/probes.h) against a real VM: the kernel's view must
 * agree with the VMM's own counters. Needs /dev/kvm, root and a kernel with
 * BTF; otherwise the tests skip with the reason (never pass silently).
 * Where BPF is present as a capability (harness_require_bpf), a load or
 * attach failure of the probes is a FAILURE with the loader's reason (the
 * last line of the verifier log): a change the verifier rejects must not
 * turn these tests into skips.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf/probes.h"
#include "dirtyring/dirty_log.h"
#include "tests/harness.h"

static void sleep_ms(unsigned milliseconds)
{
    struct timespec pause = { .tv_sec = milliseconds / 1000, .tv_nsec = (long)(milliseconds % 1000) * 1000000L };
    nanosleep(&pause, NULL);
}

/* Loads the probes for vm: skips when BPF is absent here as a capability,
 * fails when it is present and the probes still do not load. */
static struct bpf_probes *require_probes(struct harness_vm *harness)
{
    char why[256];
    if (!harness_bpf_capability(why, sizeof(why))) {
        harness_vm_stop(harness);
        harness_skip("%s", why);
    }
    char error[256] = "";
    struct bpf_probes *probes = NULL;
    int rc = bpf_probes_create(&probes, harness->vm, error, sizeof(error));
    if (rc != 0) {
        harness_vm_stop(harness);
        cr_assert_fail("BPF works here but the probes do not load: %s", error);
    }
    return probes;
}

/* Attaches the probes; BPF is present (require_probes), so a failure is
 * the probes' fault: fail with the loader's reason. */
static void start_probes(struct harness_vm *harness, struct bpf_probes *probes)
{
    char error[256] = "";
    int rc = bpf_probes_start(probes, error, sizeof(error));
    if (rc != 0) {
        bpf_probes_destroy(probes);
        harness_vm_stop(harness);
        cr_assert_fail("BPF works here but the probes do not attach: %s", error);
    }
}

/* ---- no KVM needed ----------------------------------------------------------- */

Test(bpf, histogram_quantiles_and_text_bars)
{
    struct bpf_probes_hist hist = { 0 };
    /* 90 samples in [64us, 128us), 10 in [4ms, 8ms). */
    hist.buckets[16] = 90;
    hist.buckets[22] = 10;
    hist.count = 100;
    hist.sum_ns = 90 * 100000ULL + 10 * 5000000ULL;
    uint64_t p50 = bpf_probes_hist_quantile(&hist, 0.5);
    uint64_t p99 = bpf_probes_hist_quantile(&hist, 0.99);
    cr_assert(p50 >= 65536 && p50 < 131072, "p50 %" PRIu64, p50);
    cr_assert(p99 >= 4194304 && p99 < 8388608, "p99 %" PRIu64, p99);
    cr_assert_eq(bpf_probes_hist_quantile(&(struct bpf_probes_hist){ 0 }, 0.5), 0);
    cr_assert_eq(bpf_probes_bucket_low_ns(0), 0);
    cr_assert_eq(bpf_probes_bucket_high_ns(0), 2);
    cr_assert_eq(bpf_probes_bucket_low_ns(10), 1024);

    struct bpf_probes_stats stats = { 0 };
    struct bpf_probes_vcpu_stats vcpu = { 0 };
    vcpu.kick_ns = hist;
    vcpu.kicks_tgkill = 100;
    vcpu.exits[BPF_PROBES_EXIT_EINTR] = 100;
    vcpu.guest_ns[BPF_PROBES_EXIT_EINTR] = hist;
    stats.vcpus = &vcpu;
    stats.vcpu_count = 1;
    stats.metrics[BPF_METRIC_KVM_EXIT].attached = false;
    snprintf(stats.metrics[BPF_METRIC_KVM_EXIT].reason, sizeof(stats.metrics[0].reason), "not here");
    json_t *json = bpf_probes_stats_to_json(&stats);
    cr_assert_not_null(json);
    json_t *kick = json_object_get(json_array_get(json_object_get(json, "vcpus"), 0), "kick_latency_ns");
    cr_assert_eq(json_integer_value(json_object_get(kick, "count")), 100);
    cr_assert_eq(json_array_size(json_object_get(kick, "buckets")), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(json_object_get(json, "metrics"), "kvm_exit"),
                                                       "reason")),
                     "not here");

    /* ringctl renders what it received: round-trip through text. */
    char *wire = json_dumps(json, JSON_COMPACT);
    json_t *received = json_loads(wire, 0, NULL);
    char *text = bpf_probes_format_text(received, 20);
    cr_assert_not_null(text);
    cr_assert(strstr(text, "kick -> out of KVM_RUN, all kicks (tgkill + throttle timer; outside KVM_RUN = 0 ns): "
                           "100 samples") != NULL, "text:\n%s", text);
    cr_assert(strstr(text, "[VMM]    vcpu_kick -> KVM_RUN returns EINTR: no samples") != NULL, "text:\n%s", text);
    cr_assert(strstr(text, "|********************|") != NULL, "no full bar:\n%s", text);
    cr_assert(strstr(text, "EINTR exits (100)") != NULL, "text:\n%s", text);
    free(text);
    free(wire);
    json_decref(received);
    json_decref(json);

    errno = 0;
    json_t *bogus = json_pack("{s:i}", "x", 1);
    cr_assert_null(bpf_probes_format_text(bogus, 0));
    cr_assert_eq(errno, EINVAL);
    json_decref(bogus);
}

/* ---- unavailable paths ---------------------------------------------------------- */

Test(bpf, disabled_by_environment_gives_reason_and_vm_runs_on, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "256M", 1, "dirtier,wss=16M", "off");
    setenv("RINGVM_BPF_DISABLE", "1", 1);
    char error[256] = "";
    struct bpf_probes *probes = (struct bpf_probes *)1;
    int rc = bpf_probes_create(&probes, harness.vm, error, sizeof(error));
    unsetenv("RINGVM_BPF_DISABLE");
    cr_assert_neq(rc, 0);
    cr_assert_null(probes);
    const char *why = NULL;
    if (bpf_probes_built(&why))
        cr_assert(strstr(error, "RINGVM_BPF_DISABLE") != NULL, "reason: %s", error);
    else
        cr_assert(strstr(error, "built without BPF") != NULL, "reason: %s", error);
    /* What bpf.stats answers without probes. */
    char stats_error[256] = "";
    cr_assert_null(bpf_probes_stats_json(NULL, stats_error, sizeof(stats_error)));
    cr_assert_neq(stats_error[0], '\0');
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 10000, 20000), "VM did not run on");
    harness_vm_stop(&harness);
}

/* create only reads the vCPU count before loading. */
static void ask_bpf_load(char *answer, size_t size)
{
    static struct vm fake;
    fake.config.vcpu_count = 1;
    struct bpf_probes *probes = NULL;
    if (bpf_probes_create(&probes, &fake, answer, size) == 0)
        snprintf(answer, size, "LOADED");
}

Test(bpf, without_privilege_gives_reason)
{
    const char *why = NULL;
    if (!bpf_probes_built(&why))
        harness_skip("BPF probes not built: %s", why);
    char reason[256] = "";
    harness_ask_as_nobody(ask_bpf_load, reason, sizeof(reason));
    cr_assert_str_neq(reason, "LOADED", "an unprivileged process loaded the probes");
    cr_assert(strstr(reason, "not permitted") != NULL || strstr(reason, "denied") != NULL, "reason: %s", reason);
}

/* ---- against the VMM's counters --------------------------------------------------- */

struct vmm_baseline {
    uint64_t exits_io, kicks_sent, throttle_sleeps, timer_expiries, timer_fired;
};

/* Runs of rv_signal_generate the kernel skipped (recursion on one CPU). */
static uint64_t signal_generate_misses(struct bpf_probes *probes)
{
    struct bpf_probes_prog_stat stats[16];
    int n = bpf_probes_prog_stats(probes, stats, 16);
    cr_assert_geq(n, 0, "bpf_probes_prog_stats: %s", strerror(-n));
    for (int i = 0; i < n; i++)
        if (strcmp(stats[i].name, "rv_signal_generate") == 0)
            return stats[i].recursion_misses;
    cr_assert_fail("rv_signal_generate is not loaded");
    return 0;
}

static void read_baseline(struct vm *vm, unsigned vcpu, struct vmm_baseline *out)
{
    struct vcpu_counters *c = &vm->vcpus[vcpu].counters;
    out->exits_io = atomic_load(&c->exits_io);
    out->kicks_sent = atomic_load(&c->kicks_sent);
    out->throttle_sleeps = atomic_load(&c->throttle_sleeps);
    out->timer_expiries = atomic_load(&c->throttle_timer_expiries);
    out->timer_fired = atomic_load(&c->throttle_timer_fired);
}

Test(bpf, counts_match_the_vmm_under_throttle, .timeout = 120)
{
    harness_require_kvm();
    enum { VCPUS = 2 };
    struct harness_vm harness;
    harness_vm_start(&harness, "256M", VCPUS, "dirtier,wss=32M", "ring");
    struct vm *vm = harness.vm;
    cr_assert(harness_wait_all_vcpus_advance(vm, 10000, 30000), "guest did not start");

    /* Baselines at a quiescent point: every exit counted on both sides. */
    cr_assert_eq(vm_pause(vm), 0);
    struct bpf_probes *probes = require_probes(&harness);
    start_probes(&harness, probes);
    struct vmm_baseline base[VCPUS];
    uint64_t misses_before = signal_generate_misses(probes);
    for (unsigned i = 0; i < VCPUS; i++) {
        read_baseline(vm, i, &base[i]);
        vcpu_set_throttle(&vm->vcpus[i], 50);
    }
    struct dirty_log_stats *ring_before = calloc(1, sizeof(*ring_before));
    struct dirty_log_stats *ring_after = calloc(1, sizeof(*ring_after));
    cr_assert(ring_before && ring_after);
    cr_assert_eq(dirty_log_start(vm->dirty_log), 0);
    dirty_log_get_stats(vm->dirty_log, ring_before);
    cr_assert_eq(vm_resume(vm), 0);

    /* Full-rate dirtier, throttled: ~50 throttle timer kicks per second. */
    cr_assert(harness_wait_all_vcpus_advance(vm, 50000, 30000), "no progress under throttle");
    sleep_ms(1500); /* an observation window, not synchronization */

    /* One take while the guest runs, and what a migration does before it
     * reads the pages: late reset re-protects them (the final sync below
     * does not: no reset on the switch-over's path), so the probes see
     * KVM_RESET_DIRTY_RINGS. */
    struct dirty_pages taken;
    dirty_pages_init(&taken);
    cr_assert_geq(dirty_log_take(vm->dirty_log, &taken), 0);
    cr_assert_eq(dirty_log_protect_pages(vm->dirty_log, taken.pages, taken.count), 0);
    dirty_pages_free(&taken);
    cr_assert_eq(vm_pause(vm), 0);
    cr_assert_eq(dirty_log_final_sync(vm->dirty_log), 0);
    dirty_log_get_stats(vm->dirty_log, ring_after);

    struct bpf_probes_stats stats;
    cr_assert_eq(bpf_probes_stats_get(probes, &stats), 0);
    uint64_t misses = signal_generate_misses(probes) - misses_before;
    bpf_probes_print_summary(probes, stderr);
    fprintf(stderr, "test_bpf: rv_signal_generate skipped %" PRIu64 " runs (recursion)\n", misses);

    uint64_t pushes = 0;
    for (unsigned i = 0; i < VCPUS; i++) {
        const struct bpf_probes_vcpu_stats *v = &stats.vcpus[i];
        struct vmm_baseline now;
        read_baseline(vm, i, &now);
        uint64_t kicks_sent = now.kicks_sent - base[i].kicks_sent;
        uint64_t sleeps = now.throttle_sleeps - base[i].throttle_sleeps;
        fprintf(stderr,
                "test_bpf: vcpu %u: io exits bpf %" PRIu64 " vmm %" PRIu64 "; kicks tgkill %" PRIu64
                " vmm sent %" PRIu64 "; timer kicks %" PRIu64 " vmm throttle sleeps %" PRIu64 " expiries %" PRIu64
                "; kick hist %" PRIu64 " outside %" PRIu64 " pending %" PRIu64 " lost %" PRIu64
                "; kick p50 %" PRIu64 " ns p99 %" PRIu64 " ns; throttle sleep hist %" PRIu64
                " mean %" PRIu64 " ns; pushes %" PRIu64 "\n",
                i, v->exits[2], now.exits_io - base[i].exits_io, v->kicks_tgkill, kicks_sent, v->kicks_timer, sleeps,
                now.timer_expiries - base[i].timer_expiries,
                v->kick_ns.count, v->kicks_outside_run, v->kicks_pending, v->kicks_lost,
                bpf_probes_hist_quantile(&v->kick_ns, 0.5), bpf_probes_hist_quantile(&v->kick_ns, 0.99),
                v->throttle_sleep_ns.count,
                v->throttle_sleep_ns.count ? v->throttle_sleep_ns.sum_ns / v->throttle_sleep_ns.count : 0,
                v->dirty_pushes);

        /* Port I/O exits: exact. */
        cr_expect_eq(v->exits[2], now.exits_io - base[i].exits_io, "vcpu %u: IO exits bpf %" PRIu64 " vmm %" PRIu64,
                     i, v->exits[2], now.exits_io - base[i].exits_io);
        /* Every kick the VMM sent was seen at the sender... */
        cr_expect_eq(v->kicks_tgkill, kicks_sent, "vcpu %u: tgkill kicks bpf %" PRIu64 " vmm %" PRIu64, i,
                     v->kicks_tgkill, kicks_sent);
        /* Throttle timer kicks. The VMM's side is exact: every arming that
         * ran out (timer_settime's old value, seen when the vCPU re-arms
         * or disarms: counters.throttle_timer_fired) is one kick sent, and
         * its handler saw exactly those (si_code SI_TIMER). At both
         * snapshots the vCPUs are parked and their timers disarmed (the
         * pause path disarms before parking; throttle was 0 at the first),
         * and a signal queued before the disarming timer_settime is
         * handled when that syscall returns, before the thread acks the
         * pause: nothing is in flight.
         * The kernel's count (signal_generate of an SI_TIMER kick signal,
         * result "delivered") is not exact on this host (Linux 6.18, PVM):
         * under load the probes see 1 (rarely 2) fewer in ~1 run of 10,
         * while the VMM's fired and handled counts agree with each other
         * (measured: 71 vs 72/72, 69 vs 70/70, 79 vs 80/80 in 12 loaded
         * runs, equal in the others). No recursion miss of
         * rv_signal_generate (below) and no signal_generate event with
         * another result explain it (checked with a debug counter): the
         * tracepoint did not show the probes that expiry. Hence the +-2
         * window there, widened by the program's skipped runs. */
        uint64_t expiries = now.timer_expiries - base[i].timer_expiries;
        uint64_t fired = now.timer_fired - base[i].timer_fired;
        cr_expect(sleeps > 0 && v->kicks_timer > 0, "vcpu %u: no throttling seen (%" PRIu64 " sleeps)", i, sleeps);
        cr_expect_eq(fired, expiries, "vcpu %u: timer kicks sent %" PRIu64 " but handled %" PRIu64, i, fired,
                     expiries);
        cr_expect(v->kicks_timer + 2 + misses >= fired && fired + 2 >= v->kicks_timer,
                  "vcpu %u: kernel timer kicks %" PRIu64 " vs VMM timer kicks sent %" PRIu64 " (skipped runs %" PRIu64
                  ")", i, v->kicks_timer, fired, misses);
        /* The throttle-latency histogram holds every kick sent, exactly
         * once: the VMM's tgkill kicks (exactly those it sent, checked
         * above) and its throttle timer's as the kernel generated them;
         * those that found the vCPU outside KVM_RUN as latency 0 (bucket
         * 0). Exact: both snapshots are taken with the vCPUs parked (every
         * kick taken out of the queue by the exit that parked them) and no
         * kicker running (vm_pause's kicks returned before it did). */
        cr_expect_eq(v->kicks_pending, 0);
        cr_expect_eq(v->kick_ns.count, kicks_sent + v->kicks_timer,
                     "vcpu %u: kick histogram %" PRIu64 " != VMM tgkill kicks %" PRIu64 " + timer kicks %" PRIu64,
                     i, v->kick_ns.count, kicks_sent, v->kicks_timer);
        cr_expect_eq(v->kick_tgkill_ns.count, kicks_sent);
        cr_expect_eq(v->kick_timer_ns.count, v->kicks_timer);
        /* Bucket 0 ([0, 2) ns) holds the kicks that found the vCPU outside
         * KVM_RUN (and, in theory, an exit within 2 ns of its kick). */
        cr_expect_geq(v->kick_ns.buckets[0], v->kicks_outside_run);
        pushes += v->dirty_pushes;
    }
    /* Dirty ring: every push harvested (after the final sync). */
    uint64_t harvested = ring_after->pages - ring_before->pages;
    fprintf(stderr, "test_bpf: pushes %" PRIu64 " harvested %" PRIu64 " resets %" PRIu64 " (%" PRIu64
            " ring resets) reset p50 %" PRIu64 " ns\n", pushes, harvested, stats.reset_ioctls, stats.ring_resets,
            bpf_probes_hist_quantile(&stats.reset_latency_ns, 0.5));
    /* 32 MiB working set: each page is pushed at least once after the start. */
    cr_expect(harvested >= 8000, "only %" PRIu64 " pages harvested", harvested);
    double difference = (double)(pushes > harvested ? pushes - harvested : harvested - pushes);
    cr_expect(difference <= 0.01 * (double)harvested, "pushes %" PRIu64 " vs harvested %" PRIu64, pushes, harvested);
    cr_expect_gt(stats.reset_ioctls, 0, "no KVM_RESET_DIRTY_RINGS seen");
    cr_expect(stats.metrics[BPF_METRIC_KVM_RUN].live);
    cr_expect(stats.metrics[BPF_METRIC_KICK_LATENCY].live);
    cr_expect(stats.metrics[BPF_METRIC_DIRTY_RING_PUSH].live);

    /* The API's JSON and ringctl's text. */
    char json_error[256] = "";
    json_t *json = bpf_probes_stats_json(probes, json_error, sizeof(json_error));
    cr_assert_not_null(json, "%s", json_error);
    char *text = bpf_probes_format_text(json, 40);
    cr_assert_not_null(text);
    cr_expect(strstr(text, "kick -> out of KVM_RUN") != NULL);
    if (getenv("TEST_BPF_VERBOSE") != NULL)
        fprintf(stderr, "%s", text);
    free(text);
    json_decref(json);

    bpf_probes_stats_free(&stats);
    cr_assert_eq(dirty_log_stop(vm->dirty_log), 0);
    cr_assert_eq(bpf_probes_stop(probes), 0);
    bpf_probes_destroy(probes);
    free(ring_before);
    free(ring_after);
    cr_assert_eq(vm_resume(vm), 0);
    harness_vm_stop(&harness);
}

/* The guest's boot talks to the VMM through port I/O and MMIO (console,
 * phase reports): with the probes attached from the first instruction on,
 * both sides must count exactly the same exits. */
Test(bpf, io_and_mmio_exits_match_the_vmm_exactly_from_boot, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_create(&harness, "256M", 2, "dirtier,wss=16M", "off");
    struct vm *vm = harness.vm;
    /* Attached before vm_start: the vCPU threads register as they name
     * themselves, so nothing from the first instruction on is missed. */
    struct bpf_probes *probes = require_probes(&harness);
    start_probes(&harness, probes);
    uint64_t io_before[2], mmio_before[2];
    for (unsigned i = 0; i < 2; i++) {
        io_before[i] = atomic_load(&vm->vcpus[i].counters.exits_io);
        mmio_before[i] = atomic_load(&vm->vcpus[i].counters.exits_mmio);
    }
    cr_assert_eq(vm_start(vm), 0);
    cr_assert(console_wait_for(&harness.console, "ringvm guest", 1, 20000), "no banner");
    for (unsigned i = 0; i < 2; i++)
        cr_assert(harness_wait_phase(vm, i, RINGVM_PHASE_RING3, 20000), "vcpu %u never reached ring 3", i);
    cr_assert(harness_wait_all_vcpus_advance(vm, 1000, 20000));
    cr_assert_eq(vm_pause(vm), 0);

    struct bpf_probes_stats stats;
    cr_assert_eq(bpf_probes_stats_get(probes, &stats), 0);
    uint64_t total = 0;
    for (unsigned i = 0; i < 2; i++) {
        uint64_t io = atomic_load(&vm->vcpus[i].counters.exits_io) - io_before[i];
        uint64_t mmio = atomic_load(&vm->vcpus[i].counters.exits_mmio) - mmio_before[i];
        fprintf(stderr, "test_bpf: vcpu %u from boot: IO exits bpf %" PRIu64 " vmm %" PRIu64 ", MMIO bpf %" PRIu64
                " vmm %" PRIu64 "\n", i, stats.vcpus[i].exits[2], io, stats.vcpus[i].exits[6], mmio);
        cr_expect_eq(stats.vcpus[i].exits[2], io, "vcpu %u: IO exits bpf %" PRIu64 " vmm %" PRIu64, i,
                     stats.vcpus[i].exits[2], io);
        cr_expect_eq(stats.vcpus[i].exits[6], mmio, "vcpu %u: MMIO exits bpf %" PRIu64 " vmm %" PRIu64, i,
                     stats.vcpus[i].exits[6], mmio);
        total += io + mmio;
    }
    cr_expect_gt(total, 0, "the boot made no I/O exit: nothing compared");
    cr_expect_gt(stats.vcpus[0].tid, 0, "vcpu 0 not registered");
    cr_expect_gt(stats.vcpus[1].tid, 0, "vcpu 1 not registered");
    bpf_probes_stats_free(&stats);
    bpf_probes_destroy(probes);
    cr_assert_eq(vm_resume(vm), 0);
    harness_vm_stop(&harness);
}

Test(bpf, iteration_helpers_and_restart, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "256M", 1, "dirtier,wss=16M", "ring");
    struct vm *vm = harness.vm;
    cr_assert(harness_wait_all_vcpus_advance(vm, 10000, 30000));
    struct bpf_probes *probes = require_probes(&harness);
    start_probes(&harness, probes);
    struct bpf_probes_mark mark;
    cr_assert_eq(bpf_probes_mark(probes, &mark), 0);
    /* Nobody else kicks this vCPU (throttle off, no migration). */
    uint64_t kicks_before = atomic_load(&vm->vcpus[0].counters.kicks_sent);
    for (int i = 0; i < 20; i++) {
        /* Back in the guest before the next kick, or it finds it outside. */
        cr_assert(harness_wait_all_vcpus_advance(vm, 1000, 10000));
        cr_assert_eq(vm_pause(vm), 0);
        cr_assert_eq(vm_resume(vm), 0);
    }
    struct bpf_probes_iteration iteration;
    cr_assert_eq(bpf_probes_since_mark(probes, &mark, &iteration), 0);
    fprintf(stderr, "test_bpf: 20 pauses: %" PRIu64 " kicks in KVM_RUN, p50 %" PRIu64 " ns, p99 %" PRIu64 " ns\n",
            iteration.kicks, iteration.kick_p50_ns, iteration.kick_p99_ns);
    /* Every kick of the 20 pauses (and of any 10 ms re-kick) is in the
     * iteration's histogram, those that found the vCPU outside KVM_RUN
     * as latency 0: the vCPU parked after each, taking its kicks. */
    uint64_t kicks_sent = atomic_load(&vm->vcpus[0].counters.kicks_sent) - kicks_before;
    cr_expect_geq(kicks_sent, 20);
    cr_expect_eq(iteration.kicks, kicks_sent, "kicks %" PRIu64 " VMM sent %" PRIu64, iteration.kicks, kicks_sent);
    cr_expect(iteration.kick_p50_ns > 0 && iteration.kick_p50_ns <= iteration.kick_p99_ns);
    json_t *json = bpf_probes_iteration_json(&iteration);
    cr_assert_not_null(json);
    json_decref(json);

    /* Stop keeps the numbers; start again continues them. */
    cr_assert_eq(bpf_probes_stop(probes), 0);
    cr_assert(!bpf_probes_running(probes));
    struct bpf_probes_stats stats;
    cr_assert_eq(bpf_probes_stats_get(probes, &stats), 0);
    uint64_t entries = stats.vcpus[0].entries;
    cr_expect_gt(entries, 0);
    bpf_probes_stats_free(&stats);
    char error[256] = "";
    cr_assert_eq(bpf_probes_start(probes, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(vm_pause(vm), 0);
    cr_assert_eq(vm_resume(vm), 0);
    /* The resumed vCPU enters KVM_RUN again some time after vm_resume
     * returns; guest pages advancing prove it has. */
    cr_assert(harness_wait_all_vcpus_advance(vm, 1000, 10000));
    cr_assert_eq(bpf_probes_stats_get(probes, &stats), 0);
    cr_expect_gt(stats.vcpus[0].entries, entries);
    bpf_probes_stats_free(&stats);
    bpf_probes_destroy(probes);
    harness_vm_stop(&harness);
}
