/*
 * The destination's populating thread (migration/populate.h).
 */
#include "migration/populate.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "migration/protocol.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static void *populate_main(void *argument)
{
    struct mig_populate *p = argument;
    pthread_setname_np(pthread_self(), "mig-populate");
    bool madvise_ok = true;
    uint64_t next = 0;              /* first byte not populated yet (ahead of the frontier) */
    uint64_t total = 0;
    while (!atomic_load_explicit(&p->stop, memory_order_acquire)) {
        uint64_t frontier = atomic_load_explicit(p->frontier, memory_order_relaxed) & ~(MIG_POPULATE_CHUNK - 1);
        if (next < frontier)
            next = frontier;        /* the receiver passed us: populating behind it is useless */
        uint64_t limit = frontier + MIG_POPULATE_AHEAD < p->size ? frontier + MIG_POPULATE_AHEAD : p->size;
        if (next >= limit) {
            if (next >= p->size)
                break;
            /* A helper polling for work, not synchronization: 1 ms. */
            struct timespec pause = { .tv_sec = 0, .tv_nsec = 1000000 };
            nanosleep(&pause, NULL);
            continue;
        }
        uint64_t length = limit - next < MIG_POPULATE_CHUNK ? limit - next : MIG_POPULATE_CHUNK;
        if (madvise_ok && madvise(p->host + next, length, MADV_POPULATE_WRITE) != 0) {
            if (errno == EINVAL || errno == ENOSYS) {
                madvise_ok = false;     /* old kernel: touch instead */
            } else {
                fprintf(stderr, "ringvm: migration: pre-populating RAM at 0x%" PRIx64 ": %s (continuing without)\n",
                        next, strerror(errno));
                break;
            }
        }
        if (!madvise_ok) {
            /* An atomic OR of 0 faults the page in writable without ever
             * changing a byte the receiver may be writing concurrently. */
            for (uint64_t at = 0; at < length; at += MIG_PAGE_SIZE)
                __atomic_fetch_or((uint64_t *)(p->host + next + at), 0, __ATOMIC_RELAXED);
        }
        next += length;
        total += length;
        atomic_store_explicit(&p->done, total, memory_order_relaxed);
    }
    return NULL;
}

int mig_populate_start(struct mig_populate *populate, uint8_t *host, uint64_t size,
                       const _Atomic uint64_t *frontier)
{
    populate->host = host;
    populate->size = size;
    populate->frontier = frontier;
    atomic_store_explicit(&populate->stop, false, memory_order_relaxed);
    atomic_store_explicit(&populate->done, 0, memory_order_relaxed);
    populate->started = pthread_create(&populate->thread, NULL, populate_main, populate) == 0;
    return populate->started ? 0 : -1;
}

void mig_populate_stop(struct mig_populate *populate)
{
    atomic_store_explicit(&populate->stop, true, memory_order_release);
    if (populate->started) {
        pthread_join(populate->thread, NULL);
        populate->started = false;
    }
}

uint64_t mig_populate_done(const struct mig_populate *populate)
{
    return atomic_load_explicit(&populate->done, memory_order_relaxed);
}
