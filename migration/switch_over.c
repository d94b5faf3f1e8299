/*
 * The switch-over's cost in the expected downtime (see switch_over.h).
 */
#include "migration/switch_over.h"

#include "migration/convergence.h"

static uint64_t saturating_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t learned_with_margin_us(const struct mig_switch_over_model *model)
{
    return saturating_add(model->learned_us, model->deviation_us);
}

uint64_t mig_switch_over_cost_us(const struct mig_switch_over_model *model)
{
    uint64_t learned = model->learned_count > 0 ? learned_with_margin_us(model) : 0;
    return model->dry_run_us > learned ? model->dry_run_us : learned;
}

uint64_t mig_switch_over_budget_us(const struct mig_switch_over_model *model, uint64_t downtime_limit_ms,
                                   bool *learned_ignored)
{
    uint64_t limit_us = downtime_limit_ms > UINT64_MAX / 1000u ? UINT64_MAX : downtime_limit_ms * 1000u;
    bool ignore = model->learned_count > 0 && model->learned_us >= limit_us;
    if (learned_ignored != NULL)
        *learned_ignored = ignore;
    if (model->learned_count == 0 || ignore)
        return model->dry_run_us;
    uint64_t learned = learned_with_margin_us(model);
    if (learned >= limit_us / 2u)
        learned = model->learned_us;
    return model->dry_run_us > learned ? model->dry_run_us : learned;
}

uint64_t mig_transfer_us(uint64_t bytes, uint64_t bandwidth_bytes_per_s)
{
    return mig_transfer_time(bytes, bandwidth_bytes_per_s, 1000000u);
}

void mig_downtime_estimate(uint64_t bytes, uint64_t bandwidth_bytes_per_s, uint64_t digest_pass_ms,
                           uint64_t switch_over_us, struct mig_downtime_estimate *out)
{
    out->transfer_ms = mig_expected_downtime_ms(bytes, bandwidth_bytes_per_s);
    uint64_t with_digest = mig_expected_downtime_with_digest_ms(out->transfer_ms, digest_pass_ms);
    out->digest_ms = out->transfer_ms == UINT64_MAX ? 0 : with_digest - out->transfer_ms;
    out->switch_over_ms = switch_over_us / 1000u + (switch_over_us % 1000u != 0);
    out->total_ms = saturating_add(with_digest, out->switch_over_ms);
}

uint64_t mig_switch_over_measured_us(uint64_t downtime_us, uint64_t transfer_us, uint64_t digest_pass_us)
{
    uint64_t explained = transfer_us;
    if (digest_pass_us != 0)
        explained = saturating_add(transfer_us > digest_pass_us ? transfer_us : digest_pass_us, digest_pass_us);
    return downtime_us > explained ? downtime_us - explained : 0;
}

void mig_switch_over_learn(struct mig_switch_over_model *model, uint64_t measured_us)
{
    if (model->learned_count == 0) {
        model->learned_us = measured_us;
        model->deviation_us = measured_us / 2u + (measured_us % 2u);
    } else {
        uint64_t error = measured_us > model->learned_us ? measured_us - model->learned_us
                                                         : model->learned_us - measured_us;
        unsigned __int128 deviation = (unsigned __int128)model->deviation_us * 3u + error + 3u;
        model->deviation_us = (uint64_t)(deviation / 4u);
        unsigned __int128 learned = (unsigned __int128)model->learned_us * 3u + measured_us + 3u;
        model->learned_us = (uint64_t)(learned / 4u);
    }
    if (model->learned_count < UINT32_MAX)
        model->learned_count++;
}

uint64_t mig_switch_over_dry_run_us(uint64_t pause_us, uint64_t round_us, uint64_t destination_us,
                                    uint64_t srtt_us, bool *capped)
{
    uint64_t link_us = round_us > destination_us ? round_us - destination_us : 0;
    uint64_t cap_us = srtt_us > 250 ? 4 * srtt_us : 1000;
    bool cap = srtt_us != 0 && link_us > cap_us;
    if (capped != NULL)
        *capped = cap;
    return pause_us + destination_us + (cap ? cap_us : link_us);
}
