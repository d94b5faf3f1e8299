/*
 * Log2 latency histograms as the eBPF probes (bpf/probes.h) keep them:
 * bucket 0 = [0, 2) ns, bucket i = [2^i, 2^(i+1)) ns; and the quantile of
 * any bucket layout, which the post-copy fault service's finer one
 * (migration/postcopy_destination.h) uses too. Header-only and pure, so
 * either side uses it without linking the other.
 */
#ifndef RINGVM_VMM_LOG2_HISTOGRAM_H
#define RINGVM_VMM_LOG2_HISTOGRAM_H

#include <stdint.h>

static inline uint64_t log2_histogram_bucket_low_ns(unsigned bucket)
{
    return bucket == 0 ? 0 : 1ULL << bucket;
}

static inline uint64_t log2_histogram_bucket_high_ns(unsigned bucket)   /* exclusive */
{
    if (bucket >= 63)
        return UINT64_MAX;
    return 1ULL << (bucket + 1);
}

/* Quantile q in [0, 1] of `count` buckets whose bounds low_ns(i) and
 * high_ns(i) (exclusive) give, linear inside the bucket that holds the
 * q-quantile sample; 0 for an empty histogram. Shared with layouts finer
 * than log2 (migration/postcopy_destination.h's). */
static inline uint64_t histogram_quantile(const uint64_t *buckets, unsigned count, double q,
                                          uint64_t (*low_ns)(unsigned bucket), uint64_t (*high_ns)(unsigned bucket))
{
    uint64_t total = 0;
    for (unsigned i = 0; i < count; i++)
        total += buckets[i];
    if (total == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    double rank = q * (double)total;    /* of the quantile's sample, 1-based */
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < count; i++) {
        uint64_t n = buckets[i];
        if (n == 0)
            continue;
        if ((double)(seen + n) >= rank) {
            double low = (double)low_ns(i);
            double high = (double)high_ns(i);
            return (uint64_t)(low + (high - low) * (rank - (double)seen) / (double)n);
        }
        seen += n;
    }
    return high_ns(count - 1);
}

/* The same for these log2 buckets. */
static inline uint64_t log2_histogram_quantile(const uint64_t *buckets, unsigned count, double q)
{
    return histogram_quantile(buckets, count, q, log2_histogram_bucket_low_ns, log2_histogram_bucket_high_ns);
}

#endif
