/*
 * Convergence decisions (see convergence.h for the rules).
 */
#include "migration/convergence.h"

#include <string.h>

const char *mig_converge_name(enum mig_converge mode)
{
    switch (mode) {
    case MIG_CONVERGE_NONE: return "none";
    case MIG_CONVERGE_AUTO: return "auto";
    case MIG_CONVERGE_DIRTY_LIMIT: return "dirty-limit";
    }
    return "unknown";
}

int mig_converge_parse(const char *text, enum mig_converge *mode)
{
    if (strcmp(text, "none") == 0)
        *mode = MIG_CONVERGE_NONE;
    else if (strcmp(text, "auto") == 0)
        *mode = MIG_CONVERGE_AUTO;
    else if (strcmp(text, "dirty-limit") == 0)
        *mode = MIG_CONVERGE_DIRTY_LIMIT;
    else
        return -1;
    return 0;
}

uint64_t mig_expected_downtime_with_digest_ms(uint64_t transfer_ms, uint64_t digest_ms)
{
    if (digest_ms == 0)
        return transfer_ms;
    uint64_t overlapped = transfer_ms > digest_ms ? transfer_ms : digest_ms;
    return overlapped > UINT64_MAX - digest_ms ? UINT64_MAX : overlapped + digest_ms;
}

uint64_t mig_transfer_time(uint64_t bytes, uint64_t bandwidth_bytes_per_s, uint64_t units_per_second)
{
    if (bytes == 0)
        return 0;
    if (bandwidth_bytes_per_s == 0)
        return UINT64_MAX;
    unsigned __int128 numerator = (unsigned __int128)bytes * units_per_second + bandwidth_bytes_per_s - 1;
    unsigned __int128 result = numerator / bandwidth_bytes_per_s;
    return result > UINT64_MAX ? UINT64_MAX : (uint64_t)result;
}

uint64_t mig_expected_downtime_ms(uint64_t dirty_bytes, uint64_t bandwidth_bytes_per_s)
{
    return mig_transfer_time(dirty_bytes, bandwidth_bytes_per_s, 1000u);
}

static int clamp_throttle(int value, int max)
{
    if (max > 99)
        max = 99;
    if (value > max)
        value = max;
    if (value < 0)
        value = 0;
    return value;
}

int mig_auto_converge_step(struct mig_auto_converge *state, const struct mig_throttle_params *params,
                           uint64_t dirtied_bytes, uint64_t sent_bytes)
{
    /* dirtied > 50 % of sent, i.e. 2 * dirtied > sent, exactly (for odd
     * sent = 2k + 1 both mean dirtied >= k + 1) and without overflow. */
    bool high = dirtied_bytes > sent_bytes / 2;
    if (!high) {
        state->high_streak = 0;
        return state->throttle;
    }
    state->high_streak++;
    if (state->throttle == 0) {
        if (state->high_streak >= 2)
            state->throttle = clamp_throttle(params->initial, params->max);
    } else {
        state->throttle = clamp_throttle(state->throttle + params->increment, params->max);
    }
    return state->throttle;
}

uint64_t mig_unthrottled_rate(uint64_t rate_pps, int throttle)
{
    if (throttle <= 0)
        return rate_pps;
    if (throttle > 99)
        throttle = 99;
    return (rate_pps * 100u) / (uint64_t)(100 - throttle);
}

void mig_dirty_limit_compute(unsigned vcpu_count, const uint64_t *rate_pps, const int *current,
                             const struct mig_dirty_limit_params *params, int *out, uint64_t *quota)
{
    uint64_t target = params->bandwidth_pps / 100u * params->margin_percent +
                      params->bandwidth_pps % 100u * params->margin_percent / 100u;
    uint64_t total = 0;
    for (unsigned i = 0; i < vcpu_count; i++) {
        total += mig_unthrottled_rate(rate_pps[i], current[i]);
        out[i] = 0;
        if (quota)
            quota[i] = UINT64_MAX;
    }
    if (total <= target)
        return;

    /* Idle vCPUs first: charged to the budget, never throttled. */
    uint64_t budget = target;
    unsigned active = 0;
    for (unsigned i = 0; i < vcpu_count; i++) {
        uint64_t rate = mig_unthrottled_rate(rate_pps[i], current[i]);
        if (rate < params->idle_pps) {
            budget = budget > rate ? budget - rate : 0;
        } else {
            active++;
        }
    }
    if (active == 0)
        return;

    /* Water-filling over the active vCPUs in ascending rate order. */
    bool done[64] = { false };
    unsigned left = active;
    while (left > 0) {
        uint64_t share = budget / left;
        unsigned pick = vcpu_count;
        uint64_t pick_rate = UINT64_MAX;
        for (unsigned i = 0; i < vcpu_count && i < 64; i++) {
            uint64_t rate = mig_unthrottled_rate(rate_pps[i], current[i]);
            if (done[i] || rate < params->idle_pps)
                continue;
            if (rate < pick_rate) {
                pick_rate = rate;
                pick = i;
            }
        }
        if (pick == vcpu_count)
            break;
        if (pick_rate <= share) {
            /* Fits its fair share: unthrottled; the rest share what is left. */
            done[pick] = true;
            budget -= pick_rate;
            left--;
            continue;
        }
        /* Every remaining vCPU exceeds the share: all get exactly share. */
        for (unsigned i = 0; i < vcpu_count && i < 64; i++) {
            uint64_t rate = mig_unthrottled_rate(rate_pps[i], current[i]);
            if (done[i] || rate < params->idle_pps)
                continue;
            uint64_t cut = rate - share;
            uint64_t percent = (100u * cut + rate - 1) / rate;
            out[i] = clamp_throttle((int)percent, params->throttle_max);
            if (quota)
                quota[i] = share;
            done[i] = true;
        }
        break;
    }
}

bool mig_hybrid_window_exceeds(uint64_t window_pages, uint64_t window_ns, uint64_t bandwidth_bytes_per_s,
                               uint64_t downtime_ms)
{
    if (bandwidth_bytes_per_s == 0 || window_ns == 0)
        return false;
    unsigned __int128 downtime_ns = (unsigned __int128)downtime_ms * 1000000u;
    /* pages * 4096 / bandwidth > downtime, with pages scaled by
     * downtime / window when the window was longer: compared in ns. */
    unsigned __int128 pages = window_pages;
    unsigned __int128 send_ns = pages * 4096u * 1000000000u / bandwidth_bytes_per_s;
    if (window_ns > downtime_ns)
        send_ns = send_ns * downtime_ns / window_ns;
    return send_ns > downtime_ns;
}
