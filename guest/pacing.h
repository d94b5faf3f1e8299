/*
 * Rate pacing for ring-3 writers: rate pages/s per vCPU, measured with the
 * TSC (tsc_khz from the boot info). A writer that falls behind (e.g. while
 * dirty tracking makes every first write fault) catches up for at most
 * 10 ms worth of writes, then the backlog is forgotten.
 */
#ifndef RINGVM_GUEST_PACING_H
#define RINGVM_GUEST_PACING_H

#include <stdbool.h>

#include "guest/guest.h"

struct pacing {
    bool enabled;
    uint64_t rate;              /* pages/s */
    uint64_t deadline;          /* TSC at which the next write may happen */
    uint64_t ticks_whole;       /* TSC ticks per write: whole part */
    uint64_t ticks_remainder;   /* ... and remainder over rate (no drift) */
    uint64_t accumulated;
    uint64_t max_lag;           /* ticks of backlog allowed */
};

static inline void pacing_init(struct pacing *pacing, uint64_t rate, uint64_t tsc_khz)
{
    uint64_t hz = tsc_khz * 1000;
    pacing->enabled = rate != 0 && tsc_khz != 0;
    pacing->rate = rate ? rate : 1;
    pacing->ticks_whole = hz / pacing->rate;
    pacing->ticks_remainder = hz % pacing->rate;
    pacing->accumulated = 0;
    pacing->max_lag = hz / 100;
    pacing->deadline = read_tsc();
}

/* Call after each write: waits until the next write is due. */
static inline void pacing_wait(struct pacing *pacing)
{
    pacing->deadline += pacing->ticks_whole;
    pacing->accumulated += pacing->ticks_remainder;
    if (pacing->accumulated >= pacing->rate) {
        pacing->accumulated -= pacing->rate;
        pacing->deadline++;
    }
    uint64_t now = read_tsc();
    if (now > pacing->deadline + pacing->max_lag)
        pacing->deadline = now - pacing->max_lag;
    while (now < pacing->deadline) {
        cpu_relax();
        now = read_tsc();
    }
}

#endif
