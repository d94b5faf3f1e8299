/* See pacing.h. */
#include "migration/pacing.h"

void mig_pacer_init(struct mig_pacer *pacer, uint64_t now_ns, uint64_t bytes_total)
{
    pacer->reference_ns = now_ns;
    pacer->reference_bytes = bytes_total;
    pacer->cap = 0;
}

uint64_t mig_pacer_wait_ns(struct mig_pacer *pacer, uint64_t now_ns, uint64_t bytes_total, uint64_t cap)
{
    if (cap != pacer->cap) {
        /* New or changed cap: measure from here, with a full credit. */
        pacer->cap = cap;
        pacer->reference_ns = now_ns > MIG_PACE_MAX_CREDIT_NS ? now_ns - MIG_PACE_MAX_CREDIT_NS : 0;
        pacer->reference_bytes = bytes_total;
    }
    if (cap == 0)
        return 0;
    uint64_t sent = bytes_total - pacer->reference_bytes;
    unsigned __int128 due128 = (unsigned __int128)sent * 1000000000u / cap + pacer->reference_ns;
    uint64_t due_ns = due128 > UINT64_MAX ? UINT64_MAX : (uint64_t)due128;
    if (now_ns >= due_ns) {
        if (now_ns - due_ns > MIG_PACE_MAX_CREDIT_NS) {
            /* Behind schedule by more than the allowed credit: the link was
             * idle. Forget the rest, keep MIG_PACE_MAX_CREDIT_NS of it. */
            pacer->reference_ns = now_ns - MIG_PACE_MAX_CREDIT_NS;
            pacer->reference_bytes = bytes_total;
        }
        return 0;
    }
    return due_ns - now_ns;
}

uint64_t mig_unpaced_rate(uint64_t bytes, uint64_t wall_ns, uint64_t paced_ns)
{
    if (paced_ns >= wall_ns)
        return 0;
    unsigned __int128 rate = (unsigned __int128)bytes * 1000000000u / (wall_ns - paced_ns);
    return rate > UINT64_MAX ? UINT64_MAX : (uint64_t)rate;
}
