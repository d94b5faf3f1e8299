/*
 * The switch-over's cost in the expected downtime (issue 15, item 1):
 *  - the model (migration/switch_over.c): exact parts, the measured cost of
 *    a completed switch-over, learning, max(dry run, learned);
 *  - the wire: PROBE, PROBE_ACK and SWITCH_OVER payloads, and the
 *    receiver's rules for them (migration/receiver.c), on the 1 MiB test
 *    RAM between guard pages.
 * No /dev/kvm: the end-to-end checks are in tests/test_migration.c
 * ("switch-over budget").
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "migration/protocol.h"
#include "migration/receiver.h"
#include "migration/switch_over.h"
#include "tests/migration_stream.h"

/* ---- the model ------------------------------------------------------------ */

Test(switch_over, cost_is_the_larger_of_dry_run_and_learned_plus_the_deviation)
{
    struct mig_switch_over_model model = { .dry_run_us = 500 };
    cr_assert_eq(mig_switch_over_cost_us(&model), 500);
    /* learned_us without a completed migration behind it does not count */
    model.learned_us = 9000;
    model.deviation_us = 1000;
    cr_assert_eq(mig_switch_over_cost_us(&model), 500);
    model.learned_count = 1;
    cr_assert_eq(mig_switch_over_cost_us(&model), 10000);
    model.dry_run_us = 12000;
    cr_assert_eq(mig_switch_over_cost_us(&model), 12000);
    struct mig_switch_over_model none = { 0 };
    cr_assert_eq(mig_switch_over_cost_us(&none), 0);
}

Test(switch_over, a_learned_cost_at_or_above_the_limit_is_left_out)
{
    struct mig_switch_over_model model = { .dry_run_us = 800, .learned_us = 40000, .learned_count = 2 };
    bool ignored = true;
    cr_assert_eq(mig_switch_over_budget_us(&model, 300, &ignored), 40000);
    cr_assert_not(ignored);
    /* the deviation's margin counts while the budget stays under half the limit */
    model.learned_us = 100000;
    model.deviation_us = 49999;
    cr_assert_eq(mig_switch_over_budget_us(&model, 300, &ignored), 149999);
    cr_assert_not(ignored);
    /* ... and is dropped where the budget would take half of it */
    model.deviation_us = 50000;
    cr_assert_eq(mig_switch_over_budget_us(&model, 300, &ignored), 100000);
    cr_assert_not(ignored);
    model.deviation_us = 0;
    /* one switch-over held for a second: it would block every later one */
    model.learned_us = 1050000;
    cr_assert_eq(mig_switch_over_budget_us(&model, 300, &ignored), 800);
    cr_assert(ignored);
    model.learned_us = 300000;      /* exactly the limit: no transfer could fit beside it */
    cr_assert_eq(mig_switch_over_budget_us(&model, 300, &ignored), 800);
    cr_assert(ignored);
    model.learned_us = 299999;
    cr_assert_eq(mig_switch_over_budget_us(&model, 300, NULL), 299999);
    /* nothing learned: never "ignored" */
    struct mig_switch_over_model fresh = { .dry_run_us = 800 };
    cr_assert_eq(mig_switch_over_budget_us(&fresh, 0, &ignored), 800);
    cr_assert_not(ignored);
}

Test(switch_over, the_estimate_adds_transfer_digest_and_switch_over)
{
    struct mig_downtime_estimate e;
    /* 100 MiB at 400 MiB/s = 250 ms; no digest; 12.345 ms -> 13 ms */
    mig_downtime_estimate(100ull << 20, 400ull << 20, 0, 12345, &e);
    cr_assert_eq(e.transfer_ms, 250);
    cr_assert_eq(e.digest_ms, 0);
    cr_assert_eq(e.switch_over_ms, 13);
    cr_assert_eq(e.total_ms, 263);
    /* digest 40 ms: max(250, 40) + 40 = 290, so the digest adds 40 */
    mig_downtime_estimate(100ull << 20, 400ull << 20, 40, 12000, &e);
    cr_assert_eq(e.transfer_ms, 250);
    cr_assert_eq(e.digest_ms, 40);
    cr_assert_eq(e.switch_over_ms, 12);
    cr_assert_eq(e.total_ms, 302);
    /* a short transfer hides under the source's digest pass: 10 ms of
     * bytes, 40 ms digest: max(10, 40) + 40 = 80, the digest adds 70 */
    mig_downtime_estimate(10ull * 1000, 1000ull * 1000, 40, 0, &e);
    cr_assert_eq(e.transfer_ms, 10);
    cr_assert_eq(e.digest_ms, 70);
    cr_assert_eq(e.total_ms, 80);
    /* nothing left to send: the switch-over alone */
    mig_downtime_estimate(0, 0, 0, 1, &e);
    cr_assert_eq(e.transfer_ms, 0);
    cr_assert_eq(e.switch_over_ms, 1);
    cr_assert_eq(e.total_ms, 1);
    /* no bandwidth measured yet: never switches over */
    mig_downtime_estimate(4096, 0, 40, 5000, &e);
    cr_assert_eq(e.transfer_ms, UINT64_MAX);
    cr_assert_eq(e.digest_ms, 0);
    cr_assert_eq(e.total_ms, UINT64_MAX);
}

Test(switch_over, transfer_time_in_microseconds_rounds_up)
{
    cr_assert_eq(mig_transfer_us(0, 0), 0);
    cr_assert_eq(mig_transfer_us(4096, 0), UINT64_MAX);
    cr_assert_eq(mig_transfer_us(4096, 4096000), 1000);
    cr_assert_eq(mig_transfer_us(4097, 4096000), 1001);
    cr_assert_eq(mig_transfer_us(1, 1000000), 1);
    cr_assert_eq(mig_transfer_us(UINT64_MAX, 1), UINT64_MAX);
}

Test(switch_over, measured_cost_is_the_downtime_the_bytes_do_not_explain)
{
    /* the numbers of a run on the PVM host: 280.427 ms downtime, 268.892
     * ms of bytes after the pause */
    cr_assert_eq(mig_switch_over_measured_us(280427, 268892, 0), 11535);
    /* verify_digest: max(100, 150) + 150 = 300 ms explained */
    cr_assert_eq(mig_switch_over_measured_us(400000, 100000, 150000), 100000);
    cr_assert_eq(mig_switch_over_measured_us(500000, 400000, 150000), 0);
    /* the bytes explain more than all of it: 0, not a wrap-around */
    cr_assert_eq(mig_switch_over_measured_us(1000, 2000, 0), 0);
    cr_assert_eq(mig_switch_over_measured_us(5, UINT64_MAX, 7), 0);
}

Test(switch_over, learning_follows_rfc_6298_with_quarter_weights)
{
    struct mig_switch_over_model model = { .dry_run_us = 400 };
    mig_switch_over_learn(&model, 12001);
    cr_assert_eq(model.learned_us, 12001);
    cr_assert_eq(model.deviation_us, 6001);     /* half the first sample, rounded up */
    cr_assert_eq(model.learned_count, 1);
    mig_switch_over_learn(&model, 3001);
    /* deviation = ceil((3 * 6001 + |3001 - 12001|) / 4) = ceil(27003 / 4) */
    cr_assert_eq(model.deviation_us, 6751);
    /* learned = ceil((3 * 12001 + 3001) / 4) = ceil(39004 / 4) */
    cr_assert_eq(model.learned_us, 9751);
    cr_assert_eq(model.learned_count, 2);
    mig_switch_over_learn(&model, 9751);
    cr_assert_eq(model.learned_us, 9751);
    cr_assert_eq(model.deviation_us, 5064);     /* ceil(3 * 6751 / 4) */
    cr_assert_eq(model.learned_count, 3);
    cr_assert_eq(model.dry_run_us, 400, "learning leaves the dry run alone");
    cr_assert_eq(mig_switch_over_cost_us(&model), 9751 + 5064);
}

/* ---- the frames ------------------------------------------------------------ */

Test(switch_over, probe_header_round_trip_and_rules)
{
    uint8_t bytes[MIG_PROBE_HEADER_SIZE];
    struct mig_probe_header in = { .kind = MIG_PROBE_MACHINE_STATE, .count = 0 }, out;
    char error[256];
    mig_probe_header_encode(&in, bytes);
    cr_assert_eq(mig_probe_header_decode(bytes, &out, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(out.kind, MIG_PROBE_MACHINE_STATE);
    cr_assert_eq(out.count, 0);

    const struct mig_probe_header bad[] = {
        { .kind = MIG_PROBE_MACHINE_STATE, .count = 1 },
        { .kind = 2, .count = 2 },      /* state format 1's vCPU states, retired */
        { .kind = 3, .count = 0 },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mig_probe_header_encode(&bad[i], bytes);
        cr_assert_eq(mig_probe_header_decode(bytes, &out, error, sizeof(error)), -1, "row %zu accepted", i);
    }
    mig_probe_header_encode(&bad[1], bytes);
    mig_probe_header_decode(bytes, &out, error, sizeof(error));
    cr_assert_str_eq(error, "probe of kind 2 with count 2 (the one kind: 1 machine state with count 0)");
}

Test(switch_over, probe_ack_and_switch_over_round_trip_and_rules)
{
    char error[256];
    uint8_t ack_bytes[MIG_PROBE_ACK_SIZE];
    struct mig_probe_ack ack = { .destination_ns = 123456789, .status = MIG_PROBE_UNDECODABLE }, ack_out;
    mig_probe_ack_encode(&ack, ack_bytes);
    cr_assert_eq(mig_probe_ack_decode(ack_bytes, &ack_out, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(ack_out.destination_ns, 123456789);
    cr_assert_eq(ack_out.status, MIG_PROBE_UNDECODABLE);
    ack_bytes[8] = 2;
    cr_assert_eq(mig_probe_ack_decode(ack_bytes, &ack_out, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "probe-ack with status 2 and reserved 0 (status 0 or 1, reserved 0)");
    mig_probe_ack_encode(&ack, ack_bytes);
    ack_bytes[15] = 1;
    cr_assert_eq(mig_probe_ack_decode(ack_bytes, &ack_out, error, sizeof(error)), -1);

    uint8_t report_bytes[MIG_SWITCH_OVER_SIZE];
    struct mig_switch_over report = { .transfer_us = 268892, .digest_pass_us = 7000, .learned_us = 11535,
                                      .deviation_us = 4321, .learned_count = 3 }, report_out;
    mig_switch_over_encode(&report, report_bytes);
    cr_assert_eq(mig_switch_over_decode(report_bytes, &report_out, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(report_out.transfer_us, 268892);
    cr_assert_eq(report_out.digest_pass_us, 7000);
    cr_assert_eq(report_out.learned_us, 11535);
    cr_assert_eq(report_out.deviation_us, 4321);
    cr_assert_eq(report_out.learned_count, 3);
    report.learned_count = 0;
    report.deviation_us = 0;
    mig_switch_over_encode(&report, report_bytes);
    cr_assert_eq(mig_switch_over_decode(report_bytes, &report_out, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "switch-over frame with reserved 0, learned 11535 us from 0 migrations (reserved 0; "
                            "nothing learned from none)");
}

/* ---- the receiver's rules ------------------------------------------------------ */

static struct mig_hello probing_destination(void)
{
    struct mig_hello hello = migration_stream_hello();
    hello.features |= MIG_FEATURE_SWITCH_PROBE;
    return hello;
}

/* A probe holding a machine state of `vcpus` vCPUs (fill 0x5a). */
static size_t put_probe(struct migration_stream *s, uint32_t vcpus)
{
    size_t length;
    uint8_t *state = migration_stream_machine_state(vcpus, 0x5a, &length);
    uint8_t *payload = malloc(MIG_PROBE_HEADER_SIZE + length);
    cr_assert_not_null(payload);
    struct mig_probe_header header = { .kind = MIG_PROBE_MACHINE_STATE, .count = 0 };
    mig_probe_header_encode(&header, payload);
    memcpy(payload + MIG_PROBE_HEADER_SIZE, state, length);
    migration_stream_put_frame(s, MIG_FRAME_PROBE, payload, MIG_PROBE_HEADER_SIZE + length);
    free(payload);
    free(state);
    return length;
}

static void put_switch_over(struct migration_stream *s)
{
    uint8_t payload[MIG_SWITCH_OVER_SIZE];
    struct mig_switch_over report = { .transfer_us = 1000, .learned_us = 2000, .deviation_us = 500,
                                      .learned_count = 1 };
    mig_switch_over_encode(&report, payload);
    migration_stream_put_frame(s, MIG_FRAME_SWITCH_OVER, payload, sizeof(payload));
}

/* Parses s for a destination announcing `local`; returns the result, the
 * receiver is left for inspection (freed by the caller). */
static int parse_as(const struct migration_stream *s, struct mig_hello local, struct mig_receiver *r, uint8_t **ram)
{
    *ram = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    cr_assert_eq(mig_receiver_init(r, *ram, MIGRATION_STREAM_RAM_BYTES, &local), 0);
    return mig_receiver_run_buffer(r, s->data, s->length);
}

static void parse_done(struct mig_receiver *r, uint8_t *ram, struct migration_stream *s)
{
    mig_receiver_destroy(r);
    migration_stream_guarded_ram_free(ram, MIGRATION_STREAM_RAM_BYTES);
    migration_stream_free(s);
}

Test(switch_over, the_receiver_keeps_the_probe_and_the_switch_over_report)
{
    struct migration_stream s = { 0 };
    struct mig_hello source = migration_stream_hello();
    migration_stream_put_hello(&s, &source);
    size_t probe_length = put_probe(&s, 2);
    migration_stream_put_iteration(&s, 0, 0);
    migration_stream_put_machine_state(&s, MIGRATION_STREAM_VCPUS, 0xa0);
    struct mig_device_state device = migration_stream_device_state();
    migration_stream_put_device_state(&s, &device);
    put_switch_over(&s);
    struct mig_end end = { .timestamp_ns = 123, .pages = 3 };
    migration_stream_put_end(&s, &end);
    struct mig_receiver r;
    uint8_t *ram;
    cr_assert_eq(parse_as(&s, probing_destination(), &r, &ram), 0, "%s", r.error);
    cr_assert(r.got_probe);
    cr_assert_eq(r.probe_header.kind, MIG_PROBE_MACHINE_STATE);
    cr_assert_eq(r.probe_header.count, 0);
    cr_assert_eq(r.probe_length, probe_length);
    size_t expected_length;
    uint8_t *expected = migration_stream_machine_state(2, 0x5a, &expected_length);
    cr_assert_eq(memcmp(r.probe, expected, expected_length), 0, "the probe's body is not the state sent");
    free(expected);
    cr_assert(r.have_switch_over);
    cr_assert_eq(r.switch_over.transfer_us, 1000);
    cr_assert_eq(r.switch_over.learned_us, 2000);
    cr_assert_eq(r.switch_over.deviation_us, 500);
    cr_assert_eq(r.switch_over.learned_count, 1);
    mig_receiver_drop_probe(&r);
    cr_assert_null(r.probe);
    cr_assert_eq(r.probe_length, 0);
    parse_done(&r, ram, &s);
}

struct probe_rule {
    const char *rule;
    void (*build)(struct migration_stream *s);
    bool destination_probes;
    const char *error;
};

static void hello_only(struct migration_stream *s)
{
    struct mig_hello source = migration_stream_hello();
    migration_stream_put_hello(s, &source);
}
static void probe_then_probe(struct migration_stream *s)
{
    hello_only(s);
    put_probe(s, 2);
    put_probe(s, 2);
}
static void probe_after_iteration(struct migration_stream *s)
{
    hello_only(s);
    migration_stream_put_iteration(s, 0, 0);
    put_probe(s, 2);
}
static void probe_unasked(struct migration_stream *s)
{
    hello_only(s);
    put_probe(s, 2);
}
static void switch_over_unasked(struct migration_stream *s)
{
    hello_only(s);
    put_switch_over(s);
}
static void switch_over_twice(struct migration_stream *s)
{
    hello_only(s);
    put_switch_over(s);
    put_switch_over(s);
}
static void probe_before_hello(struct migration_stream *s)
{
    put_probe(s, 2);
}
static void probe_ack_from_the_source(struct migration_stream *s)
{
    hello_only(s);
    uint8_t payload[MIG_PROBE_ACK_SIZE];
    struct mig_probe_ack ack = { .destination_ns = 1 };
    mig_probe_ack_encode(&ack, payload);
    migration_stream_put_frame(s, MIG_FRAME_PROBE_ACK, payload, sizeof(payload));
}
static void probe_with_a_bad_kind(struct migration_stream *s)
{
    hello_only(s);
    uint8_t payload[MIG_PROBE_HEADER_SIZE];
    struct mig_probe_header header = { .kind = 9, .count = 0 };
    mig_probe_header_encode(&header, payload);
    migration_stream_put_frame(s, MIG_FRAME_PROBE, payload, sizeof(payload));
}

static const struct probe_rule probe_rules[] = {
    { "one probe", probe_then_probe, true, "frame 2: second probe frame" },
    { "the probe comes before the stream", probe_after_iteration, true, "frame 2: probe frame after the stream began" },
    { "no probe to a destination that did not announce it", probe_unasked, false,
      "frame 1: probe frame, but this destination did not announce the switch-over probe" },
    { "no switch-over report to a destination that did not announce it", switch_over_unasked, false,
      "frame 1: switch-over frame, but this destination did not announce the switch-over probe" },
    { "one switch-over report", switch_over_twice, true, "frame 2: second switch-over frame" },
    { "the probe comes after the hello", probe_before_hello, true, "frame 0: probe frame before the hello" },
    { "probe-ack goes to the source only", probe_ack_from_the_source, true,
      "frame 1: unexpected probe-ack frame from the source" },
    { "known probe kinds", probe_with_a_bad_kind, true,
      "frame 1: probe of kind 9 with count 0 (the one kind: 1 machine state with count 0)" },
};

Test(switch_over, the_receiver_refuses_misplaced_or_malformed_probe_frames)
{
    for (size_t i = 0; i < sizeof(probe_rules) / sizeof(probe_rules[0]); i++) {
        struct migration_stream s = { 0 };
        probe_rules[i].build(&s);
        struct mig_receiver r;
        uint8_t *ram;
        struct mig_hello local = probe_rules[i].destination_probes ? probing_destination() : migration_stream_hello();
        int result = parse_as(&s, local, &r, &ram);
        cr_expect_eq(result, -1, "rule '%s': the stream was accepted", probe_rules[i].rule);
        cr_expect_str_eq(r.error, probe_rules[i].error, "rule '%s': error text '%s'", probe_rules[i].rule, r.error);
        cr_expect_eq(r.error_code, MIG_ERR_STREAM, "rule '%s': code %u", probe_rules[i].rule, r.error_code);
        parse_done(&r, ram, &s);
    }
}

/* The dry run counts its link time whole unless it exceeds four smoothed
 * round trips (at least 1 ms): then that cap, and *capped says so. */
Test(switch_over, a_retransmission_in_the_dry_run_is_capped_at_four_round_trips)
{
    bool capped = true;
    /* Unix socket (no srtt): 640 ms counted whole. */
    cr_assert_eq(mig_switch_over_dry_run_us(239, 640000, 44, 0, &capped), 239 + 640000);
    cr_assert_not(capped);
    /* TCP, srtt 40 us: the cap is 1 ms; 640 ms of link time -> 1 ms. */
    cr_assert_eq(mig_switch_over_dry_run_us(239, 640000, 44, 40, &capped), 239 + 44 + 1000);
    cr_assert(capped);
    /* srtt 2 ms: cap 8 ms; a 5 ms round is counted whole. */
    cr_assert_eq(mig_switch_over_dry_run_us(300, 5000, 100, 2000, &capped), 300 + 5000);
    cr_assert_not(capped);
    cr_assert_eq(mig_switch_over_dry_run_us(300, 9000, 100, 2000, &capped), 300 + 100 + 8000);
    cr_assert(capped);
    /* A destination part longer than the round (clocks): no link time. */
    cr_assert_eq(mig_switch_over_dry_run_us(10, 50, 80, 40, NULL), 10 + 80);
}
