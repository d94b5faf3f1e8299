/*
 * Post-copy destination: userfaultfd registration, the fault thread,
 * placing and discarding pages. See postcopy_destination.h.
 */
#include "migration/postcopy_destination.h"

#include "migration/postcopy_priority.h"
#include "vmm/log2_histogram.h"
#include "vmm/memory_extents.h"
#include "vmm/monotonic.h"
#include "vmm/page_bitmap.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define POSTCOPY_FAULT_BATCH 64u

/* A thread blocked on a page, from its fault message until the page is
 * placed. A thread blocks on one page at a time, so there are at most as
 * many waiters as threads: the table has POSTCOPY_MAX_THREADS slots. */
struct postcopy_waiter {
    bool used;
    pid_t thread_id;
    uint64_t page;
    uint64_t since_ns;          /* when the fault thread read its (first) fault */
};

/*
 * Ownership and locking:
 * - options, uffd, stop_event, pages, words: set by create, immutable until
 *   destroy.
 * - received: one bit per page. Written only under lock (after the page is
 *   in place, so a set bit means "present", or "zero and left as a hole":
 *   unplaced); read without the lock by postcopy_destination_received
 *   (acquire; the release store pairs).
 * - unplaced: under lock. Zero pages received while no thread waited for
 *   them, left as holes in the memfd instead of placed (allocating and
 *   clearing a page each: at 2 cores with running vCPUs, seconds per
 *   GiB). A hole reads as zero once the range is unregistered; until
 *   then a touch faults, and the fault thread places the zero page
 *   itself, without asking the source.
 * - requested, waiters, threads, latency, latency_max_ns and every counter:
 *   under lock. A place copies (UFFDIO_COPY/ZEROPAGE) without it, then
 *   takes it to mark the pages received and resolve their waiters: a
 *   fault read before the mark registers a waiter the mark resolves (and
 *   may ask for its page once more, answered as already present); one
 *   read after it sees the received bit. The hole punch holds it. It is
 *   never held while calling request_page or waiting for anything.
 * - fault thread: running only between create and stop; stopped (atomic,
 *   acquire/release) tells stop it already ran.
 */
struct postcopy_destination {
    struct postcopy_destination_options options;
    int uffd;
    int stop_event;             /* eventfd: written by stop, polled by the fault thread */
    uint64_t pages;
    uint64_t words;
    _Atomic uint64_t *received;
    /* Bits set in received: changed only under lock (with the bit), read
     * without it (relaxed: a count, ordered by nothing else) by
     * postcopy_destination_received_pages, so the incoming thread's
     * "pages missing" needs neither the lock nor a popcount of the map. */
    _Atomic uint64_t received_count;
    uint64_t *requested;
    uint64_t *unplaced;
    pthread_mutex_t lock;
    struct postcopy_waiter waiters[POSTCOPY_MAX_THREADS];
    struct postcopy_thread_blocktime threads[POSTCOPY_MAX_THREADS];
    unsigned thread_count;
    struct postcopy_latency_histogram latency;
    uint64_t latency_max_ns;
    struct postcopy_destination_stats counters;   /* the plain counters only */
    struct page_digest digest;  /* options.digest: pages present at registration + pages placed (under lock) */
    pthread_t fault_thread;
    bool fault_thread_started;
    atomic_bool stopped;
};

static bool postcopy_received_test(const struct postcopy_destination *d, uint64_t page)
{
    return page_bitmap_test_atomic(d->received, page, memory_order_acquire);
}

/* Under lock. */
static void postcopy_received_set(struct postcopy_destination *d, uint64_t page)
{
    if (page_bitmap_set_atomic(d->received, page, memory_order_release))
        atomic_fetch_add_explicit(&d->received_count, 1, memory_order_relaxed);
}

unsigned postcopy_latency_bucket(uint64_t ns)
{
    if (ns < 16)
        return (unsigned)ns;
    unsigned octave = 63u - (unsigned)__builtin_clzll(ns);
    unsigned bucket = 16u + 8u * (octave - 4u) + (unsigned)((ns >> (octave - 3u)) & 7u);
    return bucket < POSTCOPY_LATENCY_BUCKETS ? bucket : POSTCOPY_LATENCY_BUCKETS - 1;
}

uint64_t postcopy_latency_bucket_low_ns(unsigned bucket)
{
    if (bucket < 16)
        return bucket;
    unsigned step = bucket - 16u;
    return (uint64_t)(8u + step % 8u) << (step / 8u + 1u);
}

static uint64_t postcopy_latency_bucket_high_ns(unsigned bucket)
{
    return postcopy_latency_bucket_low_ns(bucket + 1);
}

uint64_t postcopy_latency_quantile(const struct postcopy_latency_histogram *histogram, double q)
{
    return histogram_quantile(histogram->buckets, POSTCOPY_LATENCY_BUCKETS, q, postcopy_latency_bucket_low_ns,
                              postcopy_latency_bucket_high_ns);
}

/* Under lock: the blocktime slot of thread_id, or NULL when the table is full. */
static struct postcopy_thread_blocktime *postcopy_thread_slot(struct postcopy_destination *d, pid_t thread_id)
{
    for (unsigned i = 0; i < d->thread_count; i++)
        if (d->threads[i].thread_id == thread_id)
            return &d->threads[i];
    if (d->thread_count == POSTCOPY_MAX_THREADS)
        return NULL;
    struct postcopy_thread_blocktime *slot = &d->threads[d->thread_count++];
    *slot = (struct postcopy_thread_blocktime){ .thread_id = thread_id };
    return slot;
}

/* Under lock: every waiter on page is woken now; account its blocktime. */
static void postcopy_resolve_waiters(struct postcopy_destination *d, uint64_t page, uint64_t now)
{
    for (unsigned i = 0; i < POSTCOPY_MAX_THREADS; i++) {
        struct postcopy_waiter *w = &d->waiters[i];
        if (!w->used || w->page != page)
            continue;
        uint64_t waited = now > w->since_ns ? now - w->since_ns : 1;
        struct postcopy_thread_blocktime *slot = postcopy_thread_slot(d, w->thread_id);
        if (slot != NULL)
            slot->blocktime_ns += waited;
        d->counters.blocktime_total_ns += waited;
        d->latency.count++;
        d->latency.sum_ns += waited;
        d->latency.buckets[postcopy_latency_bucket(waited)]++;
        if (waited > d->latency_max_ns)
            d->latency_max_ns = waited;
        w->used = false;
    }
}

/* Under lock: records a blocked thread (a retry after a signal keeps its
 * first fault's time). */
static void postcopy_add_waiter(struct postcopy_destination *d, pid_t thread_id, uint64_t page, uint64_t now)
{
    struct postcopy_waiter *free_slot = NULL;
    for (unsigned i = 0; i < POSTCOPY_MAX_THREADS; i++) {
        struct postcopy_waiter *w = &d->waiters[i];
        if (w->used && w->thread_id == thread_id) {
            if (w->page != page) {     /* it moved on without our seeing the wake: restart */
                w->page = page;
                w->since_ns = now;
            }
            return;
        }
        if (!w->used && free_slot == NULL)
            free_slot = w;
    }
    if (free_slot != NULL)
        *free_slot = (struct postcopy_waiter){ .used = true, .thread_id = thread_id, .page = page, .since_ns = now };
}

/* A zero page left as a hole was touched (its unplaced bit cleared by the
 * caller, under lock): put a zero page there, which wakes every thread
 * blocked on it. Received and in the digest already. EEXIST cannot
 * happen (nothing else places a received page) but is harmless. */
static void postcopy_place_hole(struct postcopy_destination *d, uint64_t page)
{
    uint64_t start = (uint64_t)(uintptr_t)d->options.host + page * POSTCOPY_PAGE_SIZE;
    struct uffdio_zeropage zeropage = { .range = { .start = start, .len = POSTCOPY_PAGE_SIZE }, .mode = 0 };
    if (ioctl(d->uffd, UFFDIO_ZEROPAGE, &zeropage) == 0)
        return;
    int error = errno;
    struct uffdio_range range = { .start = start, .len = POSTCOPY_PAGE_SIZE };
    if (error == EEXIST && ioctl(d->uffd, UFFDIO_WAKE, &range) == 0)
        return;
    fprintf(stderr, "ringvm: postcopy: UFFDIO_ZEROPAGE(page %" PRIu64 ", a zero page left as a hole): %s\n", page,
            strerror(error == EEXIST ? errno : error));
}

static void postcopy_handle_fault(struct postcopy_destination *d, const struct uffd_msg *msg, uint64_t now)
{
    uint64_t address = msg->arg.pagefault.address;
    uint64_t base = (uint64_t)(uintptr_t)d->options.host;
    if (address < base || address - base >= d->options.size) {
        /* Only guest RAM is registered; the kernel cannot report anything
         * else. Say so rather than request a page that does not exist. */
        fprintf(stderr, "ringvm: postcopy: fault at 0x%" PRIx64 " outside guest RAM (0x%" PRIx64 " + %" PRIu64
                        " bytes) ignored\n", address, base, d->options.size);
        return;
    }
    uint64_t page = (address - base) / POSTCOPY_PAGE_SIZE;
    pid_t thread_id = (pid_t)msg->arg.pagefault.feat.ptid;

    bool request = false, place_hole = false;
    pthread_mutex_lock(&d->lock);
    d->counters.faults++;
    struct postcopy_thread_blocktime *slot = postcopy_thread_slot(d, thread_id);
    if (slot != NULL)
        slot->faults++;
    else
        d->counters.faults_untracked++;
    if (page_bitmap_test(d->unplaced, page)) {
        page_bitmap_clear(d->unplaced, page);
        d->counters.unplaced_touched++;
        place_hole = true;
    } else if (postcopy_received_test(d, page)) {
        d->counters.already_received++;
    } else {
        postcopy_add_waiter(d, thread_id, page, now);
        if (page_bitmap_test(d->requested, page)) {
            d->counters.duplicates++;
        } else {
            page_bitmap_set(d->requested, page);
            request = true;
        }
    }
    pthread_mutex_unlock(&d->lock);
    if (place_hole) {
        postcopy_place_hole(d, page);
        return;
    }
    if (!request)
        return;

    int failed = d->options.request_page(page, d->options.opaque);
    pthread_mutex_lock(&d->lock);
    if (failed != 0) {
        d->counters.request_failures++;
        page_bitmap_clear(d->requested, page);
    } else {
        d->counters.requested++;
    }
    pthread_mutex_unlock(&d->lock);
}

static void *postcopy_fault_thread(void *argument)
{
    struct postcopy_destination *d = argument;
    struct uffd_msg messages[POSTCOPY_FAULT_BATCH];
    /* --postcopy-fifo: a blocked vCPU waits for this thread (and for
     * pc-urgent and pc-serve) to get a core (postcopy_priority.h). */
    (void)postcopy_priority_apply("pc-fault");
    for (;;) {
        struct pollfd fds[2] = { { .fd = d->uffd, .events = POLLIN }, { .fd = d->stop_event, .events = POLLIN } };
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ringvm: postcopy: poll(userfaultfd): %s; the fault thread stops\n", strerror(errno));
            return NULL;
        }
        if (fds[1].revents != 0)
            return NULL;
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            fprintf(stderr, "ringvm: postcopy: userfaultfd reports an error (revents 0x%x); the fault thread stops\n",
                    (unsigned)fds[0].revents);
            return NULL;
        }
        ssize_t got = read(d->uffd, messages, sizeof(messages));
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            fprintf(stderr, "ringvm: postcopy: read(userfaultfd): %s; the fault thread stops\n", strerror(errno));
            return NULL;
        }
        uint64_t now = monotonic_now_ns();
        size_t count = (size_t)got / sizeof(messages[0]);
        for (size_t i = 0; i < count; i++)
            if (messages[i].event == UFFD_EVENT_PAGEFAULT)
                postcopy_handle_fault(d, &messages[i], now);
    }
}

/* /dev/userfaultfd first (file permissions decide, and it catches KVM's
 * kernel-mode accesses), then the syscall. Without UFFD_USER_MODE_ONLY:
 * a user-mode-only fd would make KVM_RUN fail with EFAULT on a missing
 * page instead of blocking. */
static int postcopy_open_userfaultfd(char *error, size_t error_size)
{
    int device_errno = 0;
    int device = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (device >= 0) {
        int fd = ioctl(device, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        device_errno = fd < 0 ? errno : 0;
        close(device);
        if (fd >= 0)
            return fd;
    } else {
        device_errno = errno;
    }
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0)
        return fd;
    int syscall_errno = errno;
    snprintf(error, error_size,
             "userfaultfd is not available: /dev/userfaultfd: %s; userfaultfd(2): %s (needs CAP_SYS_PTRACE or "
             "vm.unprivileged_userfaultfd=1); post-copy cannot run on this destination",
             strerror(device_errno), strerror(syscall_errno));
    return -(syscall_errno != 0 ? syscall_errno : EPERM);
}

bool postcopy_destination_available(char *error, size_t error_size)
{
    int fd = postcopy_open_userfaultfd(error, error_size);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Guest RAM as the page functions of vmm/memory_extents.h take it. */
static struct guest_ram destination_ram(const struct postcopy_destination *d)
{
    return (struct guest_ram){ .memfd = d->options.memfd, .host = d->options.host, .size = d->options.size };
}

/* Pages holding data now (pre-copy's) count as received. */
static int postcopy_mark_present(struct postcopy_destination *d, char *error, size_t error_size)
{
    struct guest_ram ram = destination_ram(d);
    uint64_t position = 0;
    for (;;) {
        uint64_t data, hole;
        int result = guest_ram_next_data(&ram, position, &data, &hole);
        if (result != 0) {
            snprintf(error, error_size, "finding the pages guest RAM holds (%s): %s",
                     ram.memfd >= 0 ? "SEEK_DATA" : "/proc/self/pagemap", strerror(-result));
            return result;
        }
        if (data == hole)
            break;      /* no data after position */
        for (uint64_t page = data; page < hole; page++) {
            postcopy_received_set(d, page);
            d->counters.initially_present++;
            if (d->options.digest)
                page_digest_add(&d->digest, page, d->options.host + page * POSTCOPY_PAGE_SIZE);
        }
        position = hole;
    }
    return 0;
}

int postcopy_destination_create(struct postcopy_destination **out, const struct postcopy_destination_options *options,
                                char *error, size_t error_size)
{
    *out = NULL;
    if (options->host == NULL || options->size == 0 || options->size % POSTCOPY_PAGE_SIZE != 0 ||
        (uintptr_t)options->host % POSTCOPY_PAGE_SIZE != 0 || options->request_page == NULL) {
        snprintf(error, error_size, "postcopy: guest RAM must be a page-aligned mapping of whole pages and "
                                    "request_page must be set (host %p, %" PRIu64 " bytes)",
                 (void *)options->host, options->size);
        return -EINVAL;
    }
    struct postcopy_destination *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(error, error_size, "postcopy: out of memory");
        return -ENOMEM;
    }
    d->options = *options;
    d->uffd = -1;
    d->stop_event = -1;
    d->pages = options->size / POSTCOPY_PAGE_SIZE;
    d->words = page_bitmap_words(d->pages);
    pthread_mutex_init(&d->lock, NULL);
    atomic_init(&d->stopped, false);
    int result;
    d->received = calloc(d->words, sizeof(d->received[0]));
    d->requested = calloc(d->words, sizeof(d->requested[0]));
    d->unplaced = calloc(d->words, sizeof(d->unplaced[0]));
    if (d->received == NULL || d->requested == NULL || d->unplaced == NULL) {
        snprintf(error, error_size, "postcopy: out of memory for the page bitmaps (%" PRIu64 " pages)", d->pages);
        result = -ENOMEM;
        goto fail;
    }
    d->uffd = postcopy_open_userfaultfd(error, error_size);
    if (d->uffd < 0) {
        result = d->uffd;
        d->uffd = -1;
        goto fail;
    }
    /* Anonymous RAM needs no feature for MISSING faults; memfd RAM is shmem. */
    bool shared = options->memfd >= 0;
    struct uffdio_api api = { .api = UFFD_API,
                              .features = (shared ? UFFD_FEATURE_MISSING_SHMEM : 0) | UFFD_FEATURE_THREAD_ID };
    if (ioctl(d->uffd, UFFDIO_API, &api) != 0) {
        result = -errno;
        snprintf(error, error_size, "userfaultfd: UFFDIO_API with %sTHREAD_ID: %s (%s)",
                 shared ? "MISSING_SHMEM | " : "", strerror(errno),
                 shared ? "the kernel cannot catch faults on shared memory; post-copy cannot run here"
                        : "post-copy cannot run here");
        goto fail;
    }
    struct uffdio_register registration = {
        .range = { .start = (uint64_t)(uintptr_t)options->host, .len = options->size },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(d->uffd, UFFDIO_REGISTER, &registration) != 0) {
        result = -errno;
        snprintf(error, error_size, "userfaultfd: UFFDIO_REGISTER(guest RAM, %" PRIu64 " bytes, MISSING): %s",
                 options->size, strerror(errno));
        goto fail;
    }
    uint64_t needed = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) | (1ull << _UFFDIO_WAKE);
    if ((registration.ioctls & needed) != needed) {
        result = -EOPNOTSUPP;
        snprintf(error, error_size, "userfaultfd: guest RAM registered without COPY, ZEROPAGE and WAKE (ioctls "
                                    "0x%" PRIx64 ")", (uint64_t)registration.ioctls);
        goto fail;
    }
    result = postcopy_mark_present(d, error, error_size);
    if (result != 0)
        goto fail;
    d->stop_event = eventfd(0, EFD_CLOEXEC);
    if (d->stop_event < 0) {
        result = -errno;
        snprintf(error, error_size, "postcopy: eventfd: %s", strerror(errno));
        goto fail;
    }
    int thread_error = pthread_create(&d->fault_thread, NULL, postcopy_fault_thread, d);
    if (thread_error != 0) {
        result = -thread_error;
        snprintf(error, error_size, "postcopy: pthread_create(fault thread): %s", strerror(thread_error));
        goto fail;
    }
    pthread_setname_np(d->fault_thread, "pc-fault");
    d->fault_thread_started = true;
    *out = d;
    return 0;

fail:
    /* Closing the userfaultfd also unregisters the range. */
    if (d->stop_event >= 0)
        close(d->stop_event);
    if (d->uffd >= 0)
        close(d->uffd);
    free(d->received);
    free(d->requested);
    free(d->unplaced);
    pthread_mutex_destroy(&d->lock);
    free(d);
    return result;
}

static int postcopy_check_page(const struct postcopy_destination *d, uint64_t page, const char *what)
{
    if (page < d->pages)
        return 0;
    fprintf(stderr, "ringvm: postcopy: %s of page %" PRIu64 " outside guest RAM (%" PRIu64 " pages)\n", what, page,
            d->pages);
    return -ERANGE;
}

/* Under lock, after the ioctl: the page is there; wake and account. */
static int postcopy_placed(struct postcopy_destination *d, uint64_t page, int ioctl_result, int ioctl_errno,
                           const void *data)
{
    bool zero = data == NULL;
    uint64_t start = (uint64_t)(uintptr_t)d->options.host + page * POSTCOPY_PAGE_SIZE;
    if (ioctl_result != 0 && ioctl_errno != EEXIST) {
        fprintf(stderr, "ringvm: postcopy: %s(page %" PRIu64 "): %s\n", zero ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY",
                page, strerror(ioctl_errno));
        return -ioctl_errno;
    }
    if (ioctl_result != 0) {
        /* EEXIST: the page is already present and the failing ioctl woke
         * nobody; a thread may have faulted on it between the other place
         * and now, so wake the page explicitly. Nothing else: the place
         * whose copy succeeded marks the page received and adds it to the
         * digest, and it may not have taken the lock yet (its copy runs
         * without it). Marking the page here would let the END wait see
         * every page received and read the digest before that place adds
         * the page to it: a digest short of one page with nothing missing. */
        struct uffdio_range range = { .start = start, .len = POSTCOPY_PAGE_SIZE };
        if (ioctl(d->uffd, UFFDIO_WAKE, &range) != 0) {
            fprintf(stderr, "ringvm: postcopy: UFFDIO_WAKE(page %" PRIu64 "): %s\n", page, strerror(errno));
            return -errno;
        }
        d->counters.already_present++;
        return 0;
    } else if (zero) {
        d->counters.zero++;
        if (d->options.digest)
            page_digest_add_zero(&d->digest, page);
    } else {
        d->counters.placed++;
        if (d->options.digest)
            page_digest_add(&d->digest, page, data);
    }
    postcopy_received_set(d, page);
    page_bitmap_clear(d->requested, page);
    postcopy_resolve_waiters(d, page, monotonic_now_ns());
    return 0;
}

/* count pages at page from data (NULL: zero pages) with as few ioctls as
 * the pages already present allow: a partial UFFDIO_COPY / ZEROPAGE
 * reports the bytes done, and the page after them is the one that failed
 * (EEXIST: placed by the other channel, woken and counted as present). */
static int postcopy_place_run(struct postcopy_destination *d, uint64_t page, uint64_t count, const uint8_t *data,
                              uint64_t *placed_here)
{
    if (placed_here != NULL)
        *placed_here = 0;
    if (count == 0)
        return 0;
    if (page >= d->pages || count > d->pages - page)
        return postcopy_check_page(d, page >= d->pages ? page : d->pages, "place");
    uint64_t done = 0;
    int result = 0;
    /* The copy runs without the lock, so a requested page placed by
     * pc-urgent never waits behind the background stream's 1 MiB copy;
     * the lock covers marking the pages received and waking their
     * waiters. A fault read between the copy and the mark asks for its
     * page once more (the answer finds it present): harmless. A place of
     * the same page by the other channel in that window finds it present
     * (EEXIST) and leaves the marking to this one (postcopy_placed). */
    while (result == 0 && done < count) {
        uint64_t start = (uint64_t)(uintptr_t)d->options.host + (page + done) * POSTCOPY_PAGE_SIZE;
        uint64_t length = (count - done) * POSTCOPY_PAGE_SIZE;
        int64_t bytes;
        int ioctl_result, error;
        if (data != NULL) {
            struct uffdio_copy copy = { .dst = start, .len = length, .mode = 0,
                                        .src = (uint64_t)(uintptr_t)(data + done * POSTCOPY_PAGE_SIZE) };
            ioctl_result = ioctl(d->uffd, UFFDIO_COPY, &copy);
            error = ioctl_result != 0 ? errno : 0;
            bytes = copy.copy;
        } else {
            struct uffdio_zeropage zeropage = { .range = { .start = start, .len = length }, .mode = 0 };
            ioctl_result = ioctl(d->uffd, UFFDIO_ZEROPAGE, &zeropage);
            error = ioctl_result != 0 ? errno : 0;
            bytes = zeropage.zeropage;
        }
        uint64_t placed = bytes > 0 ? (uint64_t)bytes / POSTCOPY_PAGE_SIZE : 0;
        if (placed > 0 && d->options.after_copy != NULL)
            d->options.after_copy(page + done, placed, d->options.after_copy_opaque);
        pthread_mutex_lock(&d->lock);
        for (uint64_t i = 0; result == 0 && i < placed; i++)
            result = postcopy_placed(d, page + done + i, 0, 0,
                                     data != NULL ? data + (done + i) * POSTCOPY_PAGE_SIZE : NULL);
        done += placed;
        if (placed_here != NULL)
            *placed_here += placed;
        if (result == 0 && ioctl_result != 0 && error != EAGAIN) {
            /* This page: EEXIST wakes and counts it, anything else fails.
             * (EAGAIN: the mapping changed under us; retry the rest.) */
            result = postcopy_placed(d, page + done, ioctl_result, error,
                                     data != NULL ? data + done * POSTCOPY_PAGE_SIZE : NULL);
            done++;
        }
        pthread_mutex_unlock(&d->lock);
    }
    return result;
}

int postcopy_destination_place(struct postcopy_destination *d, uint64_t page, const void *data)
{
    return postcopy_place_run(d, page, 1, data, NULL);
}

int postcopy_destination_place_zero(struct postcopy_destination *d, uint64_t page)
{
    return postcopy_place_run(d, page, 1, NULL, NULL);
}

int postcopy_destination_place_range(struct postcopy_destination *d, uint64_t page, uint64_t count,
                                     const uint8_t *data)
{
    return postcopy_place_run(d, page, count, data, NULL);
}

int postcopy_destination_place_zero_range(struct postcopy_destination *d, uint64_t page, uint64_t count,
                                          uint64_t *placed)
{
    if (placed != NULL)
        *placed = 0;
    if (count == 0)
        return 0;
    if (page >= d->pages || count > d->pages - page)
        return postcopy_check_page(d, page >= d->pages ? page : d->pages, "place");
    /* Pages nobody waits for stay holes (unplaced); a requested page has
     * a thread blocked on it (or about to be), which only a placed page
     * wakes. Decided under the lock the fault thread decides under: a
     * fault read after this finds the page unplaced and places it. */
    uint64_t left = 0;
    pthread_mutex_lock(&d->lock);
    for (uint64_t p = page; p < page + count; p++) {
        if (postcopy_received_test(d, p) || page_bitmap_test(d->requested, p))
            continue;
        page_bitmap_set(d->unplaced, p);
        postcopy_received_set(d, p);
        if (d->options.digest)
            page_digest_add_zero(&d->digest, p);
        left++;
    }
    d->counters.unplaced += left;
    pthread_mutex_unlock(&d->lock);
    int result = 0;
    uint64_t accounted = left;
    for (uint64_t p = page; result == 0 && p < page + count;) {
        if (postcopy_received_test(d, p)) {
            p++;
            continue;
        }
        uint64_t end = p + 1;
        while (end < page + count && !postcopy_received_test(d, end))
            end++;
        uint64_t here = 0;
        result = postcopy_place_run(d, p, end - p, NULL, &here);
        accounted += here;
        p = end;
    }
    if (placed != NULL)
        *placed = accounted;
    return result;
}

int postcopy_destination_discard(struct postcopy_destination *d, uint64_t page, uint64_t count)
{
    if (count == 0) {
        fprintf(stderr, "ringvm: postcopy: discard of 0 pages at page %" PRIu64 " refused\n", page);
        return -ERANGE;
    }
    if (page >= d->pages || count > d->pages - page) {
        fprintf(stderr, "ringvm: postcopy: discard of pages %" PRIu64 " + %" PRIu64 " outside guest RAM (%" PRIu64
                        " pages)\n", page, count, d->pages);
        return -ERANGE;
    }
    pthread_mutex_lock(&d->lock);
    char reason[256];
    struct guest_ram ram = destination_ram(d);
    int punched = guest_ram_discard(&ram, page * POSTCOPY_PAGE_SIZE, count * POSTCOPY_PAGE_SIZE, reason,
                                    sizeof(reason));
    if (punched != 0) {
        pthread_mutex_unlock(&d->lock);
        fprintf(stderr, "ringvm: postcopy: discarding pages %" PRIu64 " + %" PRIu64 ": %s\n", page, count, reason);
        return punched;
    }
    for (uint64_t p = page; p < page + count; p++) {
        if (page_bitmap_clear_atomic(d->received, p, memory_order_release))
            atomic_fetch_sub_explicit(&d->received_count, 1, memory_order_relaxed);
        page_bitmap_clear(d->requested, p);
        page_bitmap_clear(d->unplaced, p);
    }
    d->counters.discarded += count;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

uint64_t postcopy_destination_received_pages(const struct postcopy_destination *d)
{
    return atomic_load_explicit(&d->received_count, memory_order_relaxed);
}

bool postcopy_destination_received(const struct postcopy_destination *d, uint64_t page)
{
    return page < d->pages && postcopy_received_test(d, page);
}

void postcopy_destination_copy_received(const struct postcopy_destination *d, uint64_t first_word, uint64_t words,
                                        uint64_t *out)
{
    for (uint64_t i = 0; i < words; i++)
        out[i] = first_word + i < d->words
                     ? atomic_load_explicit(&d->received[first_word + i], memory_order_acquire)
                     : 0;
}

void postcopy_destination_get_stats(struct postcopy_destination *d, struct postcopy_destination_stats *stats)
{
    pthread_mutex_lock(&d->lock);
    *stats = d->counters;
    stats->latency = d->latency;
    stats->latency_max_ns = d->latency_max_ns;
    stats->thread_count = d->thread_count;
    memcpy(stats->threads, d->threads, sizeof(stats->threads[0]) * d->thread_count);
    uint64_t received = atomic_load_explicit(&d->received_count, memory_order_relaxed);
    pthread_mutex_unlock(&d->lock);
    stats->received_pages = received;
    /* Interpolated inside a bucket, a quantile can land above the
     * largest sample: the exact maximum bounds it. */
    stats->latency_p50_ns = postcopy_latency_quantile(&stats->latency, 0.50);
    stats->latency_p99_ns = postcopy_latency_quantile(&stats->latency, 0.99);
    if (stats->latency_p50_ns > stats->latency_max_ns)
        stats->latency_p50_ns = stats->latency_max_ns;
    if (stats->latency_p99_ns > stats->latency_max_ns)
        stats->latency_p99_ns = stats->latency_max_ns;
}

void postcopy_destination_digest(struct postcopy_destination *d, struct page_digest *out)
{
    pthread_mutex_lock(&d->lock);
    *out = d->digest;
    pthread_mutex_unlock(&d->lock);
}

void postcopy_destination_stop(struct postcopy_destination *d)
{
    if (!d->fault_thread_started || atomic_exchange_explicit(&d->stopped, true, memory_order_acq_rel))
        return;
    uint64_t one = 1;
    if (write(d->stop_event, &one, sizeof(one)) != (ssize_t)sizeof(one))
        fprintf(stderr, "ringvm: postcopy: write(stop eventfd): %s\n", strerror(errno));
    int join_error = pthread_join(d->fault_thread, NULL);
    if (join_error != 0)
        fprintf(stderr, "ringvm: postcopy: pthread_join(fault thread): %s\n", strerror(join_error));
}

void postcopy_destination_destroy(struct postcopy_destination *d)
{
    if (d == NULL)
        return;
    postcopy_destination_stop(d);
    struct uffdio_range range = { .start = (uint64_t)(uintptr_t)d->options.host, .len = d->options.size };
    if (ioctl(d->uffd, UFFDIO_UNREGISTER, &range) != 0)
        fprintf(stderr, "ringvm: postcopy: UFFDIO_UNREGISTER(guest RAM): %s\n", strerror(errno));
    close(d->uffd);
    close(d->stop_event);
    free(d->received);
    free(d->requested);
    free(d->unplaced);
    pthread_mutex_destroy(&d->lock);
    free(d);
}
