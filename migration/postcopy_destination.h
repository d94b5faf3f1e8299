/*
 * Post-copy on the destination (issue 17 groundwork, not wired yet): guest
 * RAM's mapping registered with userfaultfd in MISSING mode, and the fault
 * thread `pc-fault` that turns first touches of missing pages into page
 * requests to the source.
 *
 * Life of a page: missing (a touch blocks the toucher in the kernel and
 * queues a fault) -> requested (request_page was called once, however many
 * threads fault on it) -> received (placed with postcopy_destination_place
 * or _place_zero, which wakes every thread blocked on it). A zero page
 * received while nobody waits for it is received but left as a hole
 * (place_zero_range), and placed only if something touches it. A page present
 * in the memfd when the range is registered (sent during pre-copy) counts as
 * received; postcopy_destination_discard makes pages missing again (stale
 * pages at switch-over).
 *
 * Threads: the fault thread reads faults and calls request_page (from the
 * fault thread, never with a lock held; it must not block for long: queue
 * the request and return). place/place_zero/discard/received/stats may be
 * called from any thread. place and discard of the same pages must not race
 * (discard belongs to switch-over, before anything is placed).
 *
 * Stop and shutdown (decided here): postcopy_destination_stop ends the fault
 * thread and wakes nobody: a thread blocked on a missing page stays blocked
 * until that page is placed (place keeps working after stop, so a recovered
 * link can still deliver). It is never handed a zero page or stale data. It
 * stays signalable: the kernel's wait is interruptible, a signal handler
 * runs, and the access is retried (and blocks again) when it returns; a vCPU
 * blocked inside KVM_RUN returns EINTR on a kick (Linux 6.2+,
 * FOLL_INTERRUPTIBLE) and the VMM's pause and shutdown paths work as
 * without post-copy. Before 6.2 such a vCPU stays blocked until its page
 * is placed, and a pause cannot complete meanwhile (it times out). postcopy_destination_destroy unregisters the range,
 * after which a touch of a missing page gets a fresh zero page: call it
 * only when no thread can touch guest RAM any more (vCPUs joined).
 */
#ifndef RINGVM_MIGRATION_POSTCOPY_DESTINATION_H
#define RINGVM_MIGRATION_POSTCOPY_DESTINATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "migration/page_digest.h"

#define POSTCOPY_PAGE_SIZE 4096u
/* Threads whose blocktime is kept apart (vCPUs are at most 64; the rest
 * are VMM threads reading guest RAM). Faults of further threads are still
 * served and counted in faults_untracked. */
#define POSTCOPY_MAX_THREADS 128u

/* Called by the fault thread for each page that is neither received nor
 * already requested; page = RAM offset / 4096. Returns 0, or non-zero when
 * the request could not be queued: the page then counts as not requested,
 * so the next fault on it asks again. */
typedef int (*postcopy_request_page_fn)(uint64_t page, void *opaque);

struct postcopy_destination_options {
    uint8_t *host;              /* guest RAM's MAP_SHARED mapping (struct guest_memory.host) */
    int memfd;                  /* its memfd (discard punches holes in it) */
    uint64_t size;              /* bytes, a multiple of 4096 */
    postcopy_request_page_fn request_page;
    void *opaque;
    /* Keep the page digest (migration/page_digest.h) of what RAM holds
     * from the source: every page present at registration (read then,
     * before anything runs on it) and every page placed. */
    bool digest;
    /* Tests only, NULL in production: called by a place after its
     * UFFDIO_COPY / ZEROPAGE put count pages at page in RAM and before it
     * takes the lock to mark them received, to hold a place in the window
     * where the other channel's place of the same pages finds them
     * present. */
    void (*after_copy)(uint64_t page, uint64_t count, void *opaque);
    void *after_copy_opaque;
};

/* Fault service latency, eight buckets per power of two (a quantile is
 * off by at most 1/8 of its value, where log2 buckets left a factor of
 * two: issue 17's target is p99 <= 1 ms + one round trip). Below 16 ns
 * one bucket per ns; from 16 ns, octave o = floor(log2 ns) and sub =
 * the three bits below the leading one give bucket 16 + 8 (o - 4) + sub,
 * [(8 + sub) << (o - 3), (9 + sub) << (o - 3)) ns; up to 2^48 ns. */
#define POSTCOPY_LATENCY_BUCKETS (16u + 44u * 8u)
struct postcopy_latency_histogram {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t buckets[POSTCOPY_LATENCY_BUCKETS];
};
unsigned postcopy_latency_bucket(uint64_t ns);
uint64_t postcopy_latency_bucket_low_ns(unsigned bucket);     /* the bucket's first ns; high = next's low */
/* Quantile q in [0, 1], linear inside its bucket; 0 when empty. */
uint64_t postcopy_latency_quantile(const struct postcopy_latency_histogram *histogram, double q);

struct postcopy_thread_blocktime {
    pid_t thread_id;            /* from the fault message (UFFD_FEATURE_THREAD_ID) */
    uint64_t faults;            /* faults of this thread the fault thread read */
    uint64_t blocktime_ns;      /* sum over its faults of (fault read -> page placed) */
};

struct postcopy_destination_stats {
    uint64_t faults;            /* fault messages read */
    uint64_t requested;         /* request_page calls that succeeded */
    uint64_t request_failures;  /* request_page calls that returned non-zero */
    uint64_t duplicates;        /* faults on a page already requested (another thread, or a retry after a signal) */
    uint64_t already_received;  /* faults read after their page was placed (the place woke the thread) */
    uint64_t placed;            /* pages placed with data (UFFDIO_COPY) */
    uint64_t zero;              /* pages placed as zero (UFFDIO_ZEROPAGE) */
    uint64_t unplaced;          /* zero pages received while nobody waited: left as holes, not placed */
    uint64_t unplaced_touched;  /* of them, touched later: placed then by the fault thread */
    uint64_t already_present;   /* places that found the page there (EEXIST): woken, not counted above */
    uint64_t discarded;         /* pages punched out by discard */
    uint64_t initially_present; /* pages in the memfd at registration (counted received) */
    uint64_t received_pages;    /* pages received now */
    uint64_t faults_untracked;  /* faults of threads beyond POSTCOPY_MAX_THREADS */
    uint64_t blocktime_total_ns;
    /* Fault service latency (fault read -> page placed), one sample per
     * thread woken; p50/p99 interpolated in log2 buckets, max exact. */
    struct postcopy_latency_histogram latency;
    uint64_t latency_p50_ns;
    uint64_t latency_p99_ns;
    uint64_t latency_max_ns;
    unsigned thread_count;
    struct postcopy_thread_blocktime threads[POSTCOPY_MAX_THREADS];
};

struct postcopy_destination;

/* Opens a userfaultfd (/dev/userfaultfd's USERFAULTFD_IOC_NEW, else the
 * userfaultfd syscall) with MISSING_SHMEM and THREAD_ID, registers the
 * mapping in MISSING mode, marks the pages present in the memfd as
 * received and starts the fault thread. 0, or -errno with the reason in
 * error; when userfaultfd is not permitted here the text starts with
 * "userfaultfd is not available" and names both attempts: a post-copy
 * start must be refused with it before anything is paused. */
int postcopy_destination_create(struct postcopy_destination **out, const struct postcopy_destination_options *options,
                                char *error, size_t error_size);

/* Whether this process can open a userfaultfd that catches KVM's accesses
 * too (what create needs); false with the reason (create's text). */
bool postcopy_destination_available(char *error, size_t error_size);

/* Places 4096 bytes at page (UFFDIO_COPY) and wakes its waiters. A page
 * already there (EEXIST: placed by the other stream) is woken and counted
 * as already_present; its contents stay, and the place that put it there
 * marks it received (a page counts as received only once it is in the
 * digest). 0 or -errno (message on stderr). */
int postcopy_destination_place(struct postcopy_destination *destination, uint64_t page, const void *data);
/* The same with a zero page (UFFDIO_ZEROPAGE). */
int postcopy_destination_place_zero(struct postcopy_destination *destination, uint64_t page);
/* count pages from data at [page, page + count), with as few UFFDIO_COPY
 * calls as the pages already present allow (those keep their contents and
 * are woken). 0 or -errno. */
int postcopy_destination_place_range(struct postcopy_destination *destination, uint64_t page, uint64_t count,
                                     const uint8_t *data);
/* Zero pages [page, page + count) (pages known to be zero: sent as zero
 * runs, or left as holes by pre-copy's zero runs). Those nobody waits for
 * are marked received and left as holes in the memfd (unplaced: a hole
 * reads as zero; a later touch faults and the fault thread places a zero
 * page then, without asking the source); requested ones are placed with
 * as few UFFDIO_ZEROPAGE calls as the pages already present allow.
 * *placed (if not NULL) = the pages this call accounted as received
 * (placed or left as holes), not those another place put there.
 * 0 or -errno. */
int postcopy_destination_place_zero_range(struct postcopy_destination *destination, uint64_t page, uint64_t count,
                                          uint64_t *placed);
/* Punches [page, page + count) out of the memfd (fallocate PUNCH_HOLE |
 * KEEP_SIZE) and clears their received and requested bits, so the next
 * touch faults and requests again. 0 or -errno (message on stderr). */
int postcopy_destination_discard(struct postcopy_destination *destination, uint64_t page, uint64_t count);

bool postcopy_destination_received(const struct postcopy_destination *destination, uint64_t page);
/* Pages received now (stats.received_pages without the lock, the copy or
 * the popcount: a counter kept with the bitmap). */
uint64_t postcopy_destination_received_pages(const struct postcopy_destination *destination);
/* Copies the received bitmap's 64-bit words [first_word, first_word + words)
 * (bit b of word w = page 64 w + b) for RECEIVED_BITMAP frames. */
void postcopy_destination_copy_received(const struct postcopy_destination *destination, uint64_t first_word,
                                        uint64_t words, uint64_t *out);
void postcopy_destination_get_stats(struct postcopy_destination *destination,
                                    struct postcopy_destination_stats *stats);

/* The page digest so far (options.digest); complete once every page is
 * received. */
void postcopy_destination_digest(struct postcopy_destination *destination, struct page_digest *out);

/* Ends the fault thread (idempotent); see the top of this file for what
 * blocked threads see. */
void postcopy_destination_stop(struct postcopy_destination *destination);
/* Stops, unregisters the range, closes the userfaultfd and frees. */
void postcopy_destination_destroy(struct postcopy_destination *destination);

#endif
