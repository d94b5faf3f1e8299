#include "dirtyring/rate.h"

void rate_history_init(struct rate_history *h)
{
    pthread_mutex_init(&h->lock, NULL);
    h->head = 0;
    h->len = 0;
}

void rate_history_fini(struct rate_history *h)
{
    pthread_mutex_destroy(&h->lock);
}

void rate_history_sample(struct rate_history *h, uint64_t now_ns, uint64_t count)
{
    pthread_mutex_lock(&h->lock);
    unsigned last = (h->head + RATE_HISTORY_SAMPLES - 1) % RATE_HISTORY_SAMPLES;
    if (h->len == 0 || now_ns - h->ns[last] >= 100000000ULL) {
        h->ns[h->head] = now_ns;
        h->count[h->head] = count;
        h->head = (h->head + 1) % RATE_HISTORY_SAMPLES;
        if (h->len < RATE_HISTORY_SAMPLES)
            h->len++;
    }
    pthread_mutex_unlock(&h->lock);
}

void rate_history_rates(struct rate_history *h, double *per_s_100ms, double *per_s_1s)
{
    *per_s_100ms = 0;
    *per_s_1s = 0;
    pthread_mutex_lock(&h->lock);
    if (h->len >= 2) {
        unsigned newest = (h->head + RATE_HISTORY_SAMPLES - 1) % RATE_HISTORY_SAMPLES;
        unsigned prev = (h->head + RATE_HISTORY_SAMPLES - 2) % RATE_HISTORY_SAMPLES;
        unsigned oldest = (h->head + RATE_HISTORY_SAMPLES - h->len) % RATE_HISTORY_SAMPLES;
        uint64_t dt = h->ns[newest] - h->ns[prev];
        if (dt)
            *per_s_100ms = (double)(h->count[newest] - h->count[prev]) * 1e9 / (double)dt;
        dt = h->ns[newest] - h->ns[oldest];
        if (dt)
            *per_s_1s = (double)(h->count[newest] - h->count[oldest]) * 1e9 / (double)dt;
    }
    pthread_mutex_unlock(&h->lock);
}
