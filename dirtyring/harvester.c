#include "dirtyring/harvester.h"

#include <errno.h>
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirtyring/reset.h"
#include "dirtyring/vcpu_ring.h"
#include "vmm/monotonic.h"

static void *harvester_alloc(size_t size, int node)
{
    if (node >= 0 && numa_available() >= 0)
        return numa_alloc_onnode(size, node);
    return calloc(1, size);
}

static void harvester_free(struct harvester *h)
{
    if (!h)
        return;
    int node = h->numa_node;
    size_t size = h->alloc_size;
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    if (node >= 0 && numa_available() >= 0)
        numa_free(h, size);
    else
        free(h);
}

static void wait_interval(struct harvester *h, uint64_t ns)
{
    struct timespec ts = monotonic_deadline_after_ns(ns);
    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        int rc = pthread_cond_timedwait(&h->cond, &h->lock, &ts);
        if (rc == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&h->lock);
}

static bool should_stop(struct harvester *h)
{
    pthread_mutex_lock(&h->lock);
    bool stop = h->stop;
    pthread_mutex_unlock(&h->lock);
    return stop;
}

static void *harvester_main(void *arg)
{
    struct harvester *h = arg;
    char name[16];
    snprintf(name, sizeof(name), "harvest%u", h->index);
    pthread_setname_np(pthread_self(), name);
    if (h->numa_node >= 0 && numa_available() >= 0 && numa_run_on_node(h->numa_node) != 0)
        fprintf(stderr, "ringvm: %s: numa_run_on_node(%d): %s (running unplaced)\n", name,
                h->numa_node, strerror(errno));

    uint32_t ring_size = h->ring_count ? h->rings[0]->ring.size : 4096;
    uint32_t target = ring_size / 8 ? ring_size / 8 : 1;
    h->interval_ns = h->policy.poll_min_ns;
    h->pending_since_ns = 0;
    h->last_sample_ns = 0;

    while (!should_stop(h)) {
        uint32_t max_batch = 0, total = 0, max_fill = 0;
        for (unsigned i = 0; i < h->ring_count; i++) {
            uint32_t n = vcpu_ring_harvest(h->rings[i], true, false);
            total += n;
            if (n > max_batch)
                max_batch = n;
            uint32_t u = vcpu_ring_fill(h->rings[i]);
            if (u > max_fill)
                max_fill = u;
        }
        atomic_fetch_add_explicit(&h->polls, 1, memory_order_relaxed);
        if (total)
            atomic_fetch_add_explicit(&h->busy_polls, 1, memory_order_relaxed);

        uint64_t now = monotonic_now_ns();
        if (max_fill == 0) {
            h->pending_since_ns = 0;
        } else {
            if (!h->pending_since_ns)
                h->pending_since_ns = now;
            bool reset = h->policy.reset_threshold == 0
                ? total > 0
                : max_fill >= h->policy.reset_threshold;
            if (!reset && h->policy.reset_max_delay_ns &&
                now - h->pending_since_ns >= h->policy.reset_max_delay_ns)
                reset = true;
            if (reset) {
                /* Late reset holds entries back until the sender reaches
                 * their pages; a ring that needs its space back gives them
                 * up now (recycling, as without late reset). */
                for (unsigned i = 0; i < h->ring_count; i++)
                    if (atomic_load_explicit(&h->rings[i]->unflagged, memory_order_relaxed))
                        vcpu_ring_flag_all(h->rings[i]);
                /* Counted where every reader finds it (the resetter), not per
                 * harvester: harvesters come and go with tracking. */
                if (ring_resetter_reset(h->resetter, false) > 0)
                    atomic_fetch_add_explicit(&h->resetter->harvester_resets, 1, memory_order_relaxed);
                h->pending_since_ns = 0;
            }
        }

        if (now - h->last_sample_ns >= 100000000ULL) {
            for (unsigned i = 0; i < h->ring_count; i++)
                vcpu_ring_sample(h->rings[i], now);
            h->last_sample_ns = now;
        }

        /* Adaptive polling: aim for batches of ~1/8 ring per poll. An idle
         * VM backs off to poll_max_ns (a few hundred wake-ups a second). */
        if (max_batch >= target) {
            h->interval_ns /= 2;
            if (h->interval_ns < h->policy.poll_min_ns)
                h->interval_ns = h->policy.poll_min_ns;
        } else if (max_batch < target / 4) {
            h->interval_ns *= 2;
            if (h->interval_ns > h->policy.poll_max_ns)
                h->interval_ns = h->policy.poll_max_ns;
        }
        wait_interval(h, h->interval_ns);
    }

    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
        atomic_store_explicit(&h->cpu_ns_at_exit,
                              (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec,
                              memory_order_relaxed);
    return NULL;
}

int harvester_group_start(struct harvester_group *group, struct vcpu_ring *const *rings,
                          unsigned ring_count, unsigned harvesters,
                          const struct harvest_policy *policy, struct ring_resetter *resetter)
{
    group->count = 0;
    group->harvesters = NULL;

    /* Distinct nodes of the rings, in order of first appearance. */
    int nodes[64];
    unsigned node_count = 0;
    for (unsigned i = 0; i < ring_count; i++) {
        if (!rings[i])
            continue;
        unsigned k;
        for (k = 0; k < node_count; k++)
            if (nodes[k] == rings[i]->numa_node)
                break;
        if (k == node_count && node_count < 64)
            nodes[node_count++] = rings[i]->numa_node;
    }
    if (node_count == 0)
        nodes[node_count++] = -1;
    if (harvesters == 0)
        harvesters = node_count;

    /* Ring assignment: rings of node k round-robin over the harvesters of
     * node k (harvester i serves node nodes[i % node_count]); a node
     * without harvester (more nodes than harvesters) falls back to
     * harvester (vcpu % harvesters). */
    unsigned *owner = calloc(ring_count ? ring_count : 1, sizeof(*owner));
    unsigned *per = calloc(harvesters, sizeof(*per));
    unsigned *rr = calloc(node_count, sizeof(*rr));
    group->harvesters = calloc(harvesters, sizeof(*group->harvesters));
    if (!owner || !per || !rr || !group->harvesters) {
        free(owner); free(per); free(rr); free(group->harvesters);
        group->harvesters = NULL;
        fprintf(stderr, "ringvm: harvesters: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    for (unsigned i = 0; i < ring_count; i++) {
        if (!rings[i])
            continue;
        unsigned k;
        for (k = 0; k < node_count; k++)
            if (nodes[k] == rings[i]->numa_node)
                break;
        unsigned local = 0;     /* harvesters serving node k */
        for (unsigned j = k; j < harvesters; j += node_count)
            local++;
        if (local) {
            owner[i] = k + node_count * (rr[k] % local);
            rr[k]++;
        } else {
            owner[i] = i % harvesters;
        }
        per[owner[i]]++;
    }

    int err = 0;
    for (unsigned j = 0; j < harvesters; j++) {
        int node = nodes[j % node_count];
        size_t size = sizeof(struct harvester) + per[j] * sizeof(struct vcpu_ring *);
        struct harvester *h = harvester_alloc(size, node);
        if (!h) {
            fprintf(stderr, "ringvm: harvester %u: allocating on node %d: %s\n", j, node,
                    strerror(ENOMEM));
            err = -ENOMEM;
            break;
        }
        memset(h, 0, size);
        h->alloc_size = size;
        h->index = j;
        h->numa_node = node;
        h->resetter = resetter;
        h->policy = *policy;
        if (h->policy.poll_min_ns == 0)
            h->policy.poll_min_ns = 1;
        if (h->policy.poll_max_ns < h->policy.poll_min_ns)
            h->policy.poll_max_ns = h->policy.poll_min_ns;
        pthread_mutex_init(&h->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&h->cond, &ca);
        pthread_condattr_destroy(&ca);
        for (unsigned i = 0; i < ring_count; i++)
            if (rings[i] && owner[i] == j)
                h->rings[h->ring_count++] = rings[i];
        group->harvesters[group->count++] = h;
        int rc = pthread_create(&h->thread, NULL, harvester_main, h);
        if (rc) {
            fprintf(stderr, "ringvm: harvester %u: pthread_create: %s\n", j, strerror(rc));
            err = -rc;
            break;
        }
        h->started = true;
        h->cpu_clock_valid = pthread_getcpuclockid(h->thread, &h->cpu_clock) == 0;
    }
    free(owner);
    free(per);
    free(rr);
    if (err)
        harvester_group_stop(group);
    return err;
}

void harvester_group_stop(struct harvester_group *group)
{
    for (unsigned j = 0; j < group->count; j++) {
        struct harvester *h = group->harvesters[j];
        pthread_mutex_lock(&h->lock);
        h->stop = true;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
    }
    for (unsigned j = 0; j < group->count; j++) {
        struct harvester *h = group->harvesters[j];
        if (h->started) {
            int rc = pthread_join(h->thread, NULL);
            if (rc)
                fprintf(stderr, "ringvm: harvester %u: pthread_join: %s\n", j, strerror(rc));
            group->retired_cpu_ns += atomic_load_explicit(&h->cpu_ns_at_exit, memory_order_relaxed);
        }
        group->retired_polls += atomic_load_explicit(&h->polls, memory_order_relaxed);
        harvester_free(h);
    }
    free(group->harvesters);
    group->harvesters = NULL;
    group->count = 0;
}

uint64_t harvester_group_cpu_ns(const struct harvester_group *group)
{
    uint64_t total = group->retired_cpu_ns;
    for (unsigned j = 0; j < group->count; j++) {
        const struct harvester *h = group->harvesters[j];
        struct timespec ts;
        if (h->started && h->cpu_clock_valid && clock_gettime(h->cpu_clock, &ts) == 0)
            total += (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    }
    return total;
}

uint64_t harvester_group_polls(const struct harvester_group *group)
{
    uint64_t total = group->retired_polls;
    for (unsigned j = 0; j < group->count; j++)
        total += atomic_load_explicit(&group->harvesters[j]->polls, memory_order_relaxed);
    return total;
}
