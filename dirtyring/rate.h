/*
 * Rate of a monotonic counter over ~100 ms and ~1 s windows, from samples
 * taken at most every 100 ms.
 *
 * Ownership: one sampler thread calls rate_history_sample; any thread calls
 * rate_history_rates; both under the struct's own mutex.
 */
#ifndef RINGVM_DIRTYRING_RATE_H
#define RINGVM_DIRTYRING_RATE_H

#include <pthread.h>
#include <stdint.h>

#define RATE_HISTORY_SAMPLES 11     /* 10 intervals of 100 ms = 1 s */

struct rate_history {
    pthread_mutex_t lock;
    uint64_t ns[RATE_HISTORY_SAMPLES];
    uint64_t count[RATE_HISTORY_SAMPLES];
    unsigned head, len;
};

void rate_history_init(struct rate_history *h);
void rate_history_fini(struct rate_history *h);
/* Records (now_ns, count) if >= 100 ms after the previous sample. */
void rate_history_sample(struct rate_history *h, uint64_t now_ns, uint64_t count);
/* Per second over the last interval and over the whole history (~1 s);
 * 0 until two samples exist. */
void rate_history_rates(struct rate_history *h, double *per_s_100ms, double *per_s_1s);

#endif
