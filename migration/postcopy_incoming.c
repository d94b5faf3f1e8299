/* The destination's post-copy session (migration/postcopy_incoming.h). */
#include "migration/postcopy_incoming.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "migration/postcopy_destination.h"
#include "migration/postcopy_priority.h"
#include "migration/postcopy_return.h"
#include "migration/progress.h"
#include "migration/protocol.h"
#include "migration/tls.h"
#include "vmm/monotonic.h"
#include "vmm/page_bitmap.h"

/* Pages waiting to be requested. Every faulting thread blocks on one page,
 * so at most POSTCOPY_MAX_THREADS are outstanding: the queue never fills
 * in practice; if it did, request_page says so and the fault is asked
 * again on the thread's next fault. */
#define INCOMING_QUEUE 1024u
/* An urgent MEMORY frame answers one request: at most one run of
 * POSTCOPY_REQUEST_MAX_PAGES pages. */
#define INCOMING_URGENT_FRAME_MAX (MIG_RUN_HEADER_SIZE + POSTCOPY_REQUEST_MAX_PAGES * MIG_PAGE_SIZE)

/* A request frame: header + PAGE_REQUEST. */
#define INCOMING_REQUEST_FRAME (MIG_HEADER_SIZE + POSTCOPY_PAGE_REQUEST_SIZE)

/*
 * Ownership: destination, wake_event, pages, direct_requests: set by
 * start, immutable. seq_in, frame: "pc-urgent" only. io: read by
 * pc-urgent (and by the incoming thread after joining it); written
 * (every byte sent on the urgent channel) only under send_lock, which
 * also guards seq_out, partial* and direct_off. pc-fault sends a request
 * itself when it gets send_lock at once (trylock: it never waits), the
 * channel is plaintext, direct sending is on (not paused, not failed) and
 * no earlier frame is unfinished; one non-blocking send, and whatever it
 * could not send (a partial frame) is left in partial for pc-urgent to
 * finish before anything else. Otherwise the request is queued for
 * pc-urgent as before. queue*, resumed_*: under lock. Lock order:
 * send_lock -> lock.
 * stop, failed: atomics (failed is set with release after error is
 * written; readers acquire).
 * progress: a condition on lock (CLOCK_MONOTONIC), broadcast after
 * every postcopy_incoming_place (either channel: pc-urgent or the
 * incoming thread's main stream) and when the urgent channel fails;
 * postcopy_incoming_wait_all (the incoming thread at END) waits on it.
 * The place marks its pages received (under the destination's lock)
 * before taking lock to broadcast, so a waiter that checked "missing"
 * under lock cannot miss the wake-up.
 * scratch, known_zero_filled, final_*, finished: the incoming thread's
 * (fill_progress copies the stats into scratch, which start allocates
 * once: no allocation per call).
 */
struct postcopy_incoming {
    struct postcopy_destination *destination;
    struct mig_io io;
    int wake_event;
    uint64_t pages;
    pthread_mutex_t lock;
    pthread_cond_t progress;
    uint64_t queue[INCOMING_QUEUE];
    unsigned queue_head, queue_count;
    bool resumed_pending;
    uint64_t resumed_ns;
    _Atomic bool stop;
    _Atomic bool failed;
    char error[512];
    pthread_t thread;
    bool thread_started;
    bool finished;
    uint64_t seq_out, seq_in;
    uint8_t *frame;
    pthread_mutex_t send_lock;
    bool direct_requests;       /* options: pc-fault may send requests itself (plaintext only) */
    bool direct_off;            /* under send_lock: paused or failed, queue instead */
    uint8_t partial[INCOMING_REQUEST_FRAME];
    size_t partial_length, partial_sent;
    /* After finish (destination destroyed): its last counters and digest,
     * for the final progress snapshot. */
    struct postcopy_destination_stats *final_stats;
    struct page_digest final_digest;
    struct postcopy_destination_stats *scratch;
    uint64_t known_zero_filled;     /* incoming thread: pages fill_known_zero accounted here (placed or left
                                       as holes), not received from the source */
};

static void incoming_get_stats(struct postcopy_incoming *pi, struct postcopy_destination_stats *stats)
{
    if (pi->destination != NULL)
        postcopy_destination_get_stats(pi->destination, stats);
    else if (pi->final_stats != NULL)
        *stats = *pi->final_stats;
    else
        memset(stats, 0, sizeof(*stats));
}

static void incoming_wake(struct postcopy_incoming *pi)
{
    uint64_t one = 1;
    if (write(pi->wake_event, &one, sizeof(one)) != (ssize_t)sizeof(one) && errno != EAGAIN)
        fprintf(stderr, "ringvm: postcopy: waking pc-urgent: %s\n", strerror(errno));
}

/* From "pc-fault", under nothing: the request straight onto the urgent
 * channel when that costs no wait (see the ownership comment). true if
 * it went (whole, or the rest left for pc-urgent in partial). */
static bool incoming_send_request_now(struct postcopy_incoming *pi, uint64_t page)
{
    if (!pi->direct_requests || pthread_mutex_trylock(&pi->send_lock) != 0)
        return false;
    bool sent = false;
    if (!pi->direct_off && pi->partial_length == 0 && pi->io.tls == NULL &&
        !atomic_load_explicit(&pi->failed, memory_order_acquire)) {
        uint8_t frame[INCOMING_REQUEST_FRAME];
        size_t length = postcopy_return_encode_page_request(frame, pi->seq_out, page * MIG_PAGE_SIZE, 1);
        ssize_t done = send(pi->io.fd, frame, length, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (done > 0) {
            pi->seq_out++;
            sent = true;
            if ((size_t)done < length) {
                memcpy(pi->partial, frame, length);
                pi->partial_length = length;
                pi->partial_sent = (size_t)done;
            }
        }
        /* Nothing sent (a full buffer, a broken channel): queued below,
         * and pc-urgent's own write meets the error if there is one. */
    }
    bool wake = sent && pi->partial_length > 0;
    pthread_mutex_unlock(&pi->send_lock);
    if (wake)
        incoming_wake(pi);
    return sent;
}

/* From "pc-fault": sent or queued at once (never blocks on the network). */
static int incoming_request_page(uint64_t page, void *opaque)
{
    struct postcopy_incoming *pi = opaque;
    if (incoming_send_request_now(pi, page))
        return 0;
    pthread_mutex_lock(&pi->lock);
    bool queued = pi->queue_count < INCOMING_QUEUE;
    if (queued)
        pi->queue[(pi->queue_head + pi->queue_count++) % INCOMING_QUEUE] = page;
    pthread_mutex_unlock(&pi->lock);
    if (queued)
        incoming_wake(pi);
    return queued ? 0 : -1;
}

/* Wakes postcopy_incoming_wait_all: pages were placed, or the channel failed. */
static void incoming_signal_progress(struct postcopy_incoming *pi)
{
    pthread_mutex_lock(&pi->lock);
    pthread_cond_broadcast(&pi->progress);
    pthread_mutex_unlock(&pi->lock);
}

static void incoming_fail(struct postcopy_incoming *pi, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void incoming_fail(struct postcopy_incoming *pi, const char *fmt, ...)
{
    if (atomic_load_explicit(&pi->failed, memory_order_acquire))
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(pi->error, sizeof(pi->error), fmt, args);
    va_end(args);
    atomic_store_explicit(&pi->failed, true, memory_order_release);
    incoming_signal_progress(pi);
}

int postcopy_incoming_place(struct postcopy_incoming *pi, uint64_t ram_offset, uint32_t pages, const uint8_t *data)
{
    uint64_t first = ram_offset / MIG_PAGE_SIZE;
    uint32_t i = 0;
    int result = 0;
    while (result == 0 && i < pages) {
        /* Pages the other channel placed already are skipped without a
         * syscall; the rest go in runs, one ioctl each (a page placed
         * meanwhile gives EEXIST, which the range call absorbs). */
        if (postcopy_destination_received(pi->destination, first + i)) {
            i++;
            continue;
        }
        uint32_t end = i + 1;
        while (end < pages && !postcopy_destination_received(pi->destination, first + end))
            end++;
        int r = data != NULL ? postcopy_destination_place_range(pi->destination, first + i, end - i,
                                                                data + (size_t)i * MIG_PAGE_SIZE)
                             : postcopy_destination_place_zero_range(pi->destination, first + i, end - i, NULL);
        if (r != 0)
            result = -1;
        i = end;
    }
    /* The pages are marked received now: wake the END wait (also after a
     * partial failure, for what did land). */
    incoming_signal_progress(pi);
    return result;
}

static bool incoming_known_zero(struct postcopy_incoming *pi, const uint64_t *discarded, uint64_t page)
{
    return !page_bitmap_test(discarded, page) && !postcopy_destination_received(pi->destination, page);
}

uint64_t postcopy_incoming_known_zero(struct postcopy_incoming *pi, const uint64_t *discarded)
{
    uint64_t count = 0;
    for (uint64_t page = 0; page < pi->pages; page++)
        count += incoming_known_zero(pi, discarded, page);
    return count;
}

int postcopy_incoming_fill_known_zero(struct postcopy_incoming *pi, const uint64_t *discarded)
{
    uint64_t page = 0;
    while (page < pi->pages) {
        if (!incoming_known_zero(pi, discarded, page)) {
            page++;
            continue;
        }
        uint64_t end = page + 1;
        while (end < pi->pages && incoming_known_zero(pi, discarded, end))
            end++;
        /* Only what this call accounted: a zero page pc-urgent placed
         * meanwhile (the guest touched it first) came from the source. */
        uint64_t placed = 0;
        int r = postcopy_destination_place_zero_range(pi->destination, page, end - page, &placed);
        pi->known_zero_filled += placed;
        incoming_signal_progress(pi);
        if (r != 0)
            return -1;
        page = end;
    }
    return 0;
}

/* Under send_lock: the rest of a frame pc-fault started, then RESUMED
 * (when due) and the queued requests, in as few writes as fit. */
static int incoming_send_locked(struct postcopy_incoming *pi, bool resumed, uint64_t resumed_ns,
                                const uint64_t *pages, unsigned count)
{
    char text[400];
    if (pi->partial_length > 0) {
        if (mig_io_write(&pi->io, pi->partial + pi->partial_sent, pi->partial_length - pi->partial_sent, text,
                         sizeof(text)) != 0) {
            incoming_fail(pi, "urgent channel: sending a page request: %s", text);
            return -1;
        }
        pi->partial_length = pi->partial_sent = 0;
    }
    if (!resumed && count == 0)
        return 0;
    uint8_t buffer[MIG_HEADER_SIZE + MIG_POSTCOPY_RESUMED_SIZE + 64 * INCOMING_REQUEST_FRAME];
    size_t used = 0;
    if (resumed) {
        uint8_t payload[MIG_POSTCOPY_RESUMED_SIZE];
        mig_put_u64(payload, resumed_ns);
        used += mig_frame_encode(buffer, MIG_FRAME_POSTCOPY_RESUMED, pi->seq_out++, payload, sizeof(payload));
    }
    for (unsigned i = 0; i < count; i++) {
        used += postcopy_return_encode_page_request(buffer + used, pi->seq_out++, pages[i] * MIG_PAGE_SIZE, 1);
        if (used + INCOMING_REQUEST_FRAME > sizeof(buffer) || i + 1 == count) {
            if (mig_io_write(&pi->io, buffer, used, text, sizeof(text)) != 0) {
                incoming_fail(pi, "urgent channel: sending page requests: %s", text);
                return -1;
            }
            used = 0;
        }
    }
    if (used > 0 && mig_io_write(&pi->io, buffer, used, text, sizeof(text)) != 0) {
        incoming_fail(pi, "urgent channel: sending postcopy-resumed: %s", text);
        return -1;
    }
    return 0;
}

/* Sends what pc-fault left unfinished, RESUMED (when due) and the queued
 * requests. */
static int incoming_send_pending(struct postcopy_incoming *pi)
{
    uint64_t pages[INCOMING_QUEUE];
    unsigned count = 0;
    bool resumed = false;
    uint64_t resumed_ns = 0;
    pthread_mutex_lock(&pi->lock);
    resumed = pi->resumed_pending;
    resumed_ns = pi->resumed_ns;
    pi->resumed_pending = false;
    while (pi->queue_count > 0) {
        pages[count++] = pi->queue[pi->queue_head];
        pi->queue_head = (pi->queue_head + 1) % INCOMING_QUEUE;
        pi->queue_count--;
    }
    pthread_mutex_unlock(&pi->lock);
    pthread_mutex_lock(&pi->send_lock);
    int result = incoming_send_locked(pi, resumed, resumed_ns, pages, count);
    pthread_mutex_unlock(&pi->send_lock);
    return result;
}

/* One frame from the source: 0, 1 at the end of the channel, -1 failed. */
static int incoming_read_frame(struct postcopy_incoming *pi)
{
    uint8_t raw[MIG_HEADER_SIZE];
    char text[400];
    int r = mig_io_read(&pi->io, raw, sizeof(raw), true, text, sizeof(text));
    if (r == 1)
        return 1;
    if (r != 0) {
        incoming_fail(pi, "urgent channel: %s", text);
        return -1;
    }
    struct mig_frame_header header;
    if (mig_header_decode(raw, pi->seq_in, &header, text, sizeof(text)) != 0) {
        incoming_fail(pi, "urgent channel: %s", text);
        return -1;
    }
    if ((header.type != MIG_FRAME_MEMORY && header.type != MIG_FRAME_ERROR) ||
        header.length > INCOMING_URGENT_FRAME_MAX) {
        incoming_fail(pi, "urgent channel: %s frame of %" PRIu64 " bytes (only memory frames of at most %u bytes "
                      "and error)", mig_frame_type_name(header.type), header.length, INCOMING_URGENT_FRAME_MAX);
        return -1;
    }
    if (mig_io_read(&pi->io, pi->frame, (size_t)header.length, false, text, sizeof(text)) != 0) {
        incoming_fail(pi, "urgent channel: %s", text);
        return -1;
    }
    if (mig_frame_checksum(raw, pi->frame, (size_t)header.length) != header.checksum) {
        incoming_fail(pi, "urgent channel: %s frame checksum mismatch", mig_frame_type_name(header.type));
        return -1;
    }
    pi->seq_in++;
    if (header.type == MIG_FRAME_ERROR) {
        uint32_t code;
        char message[MIG_ERROR_MAX_MESSAGE + 1];
        mig_error_decode(pi->frame, (size_t)header.length, &code, message, sizeof(message));
        incoming_fail(pi, "the source aborted the post-copy: %s", message);
        return -1;
    }
    uint64_t at = 0, previous_end = 0;
    while (at < header.length) {
        if (header.length - at < MIG_RUN_HEADER_SIZE) {
            incoming_fail(pi, "urgent channel: memory frame ends inside a run header");
            return -1;
        }
        struct mig_run run;
        mig_run_decode(pi->frame + at, &run);
        at += MIG_RUN_HEADER_SIZE;
        if (mig_run_validate(&run, pi->pages * MIG_PAGE_SIZE, header.length - at, text, sizeof(text)) != 0 ||
            (at > MIG_RUN_HEADER_SIZE && run.ram_offset < previous_end)) {
            incoming_fail(pi, "urgent channel: %s", at > MIG_RUN_HEADER_SIZE && run.ram_offset < previous_end
                          ? "memory runs overlap or go down" : text);
            return -1;
        }
        bool zero = (run.flags & MIG_RUN_ZERO) != 0;
        previous_end = run.ram_offset + (uint64_t)run.pages * MIG_PAGE_SIZE;
        if (postcopy_incoming_place(pi, run.ram_offset, run.pages, zero ? NULL : pi->frame + at) != 0) {
            incoming_fail(pi, "urgent channel: placing %" PRIu32 " pages at 0x%" PRIx64 " failed", run.pages,
                          run.ram_offset);
            return -1;
        }
        if (!zero)
            at += (uint64_t)run.pages * MIG_PAGE_SIZE;
    }
    return 0;
}

static void *incoming_urgent_main(void *argument)
{
    struct postcopy_incoming *pi = argument;
    pthread_setname_np(pthread_self(), "pc-urgent");
    (void)postcopy_priority_apply("pc-urgent");
    while (!atomic_load_explicit(&pi->stop, memory_order_acquire)) {
        if (incoming_send_pending(pi) != 0)
            break;
        /* TLS may hold decrypted bytes the fd's poll cannot see. */
        int readable = mig_io_readable(&pi->io, 0);
        if (readable < 0) {
            incoming_fail(pi, "urgent channel: poll failed");
            break;
        }
        if (readable == 0) {
            struct pollfd fds[2] = { { .fd = pi->io.fd, .events = POLLIN }, { .fd = pi->wake_event, .events = POLLIN } };
            int r = poll(fds, 2, 100);
            if (r < 0 && errno != EINTR) {
                incoming_fail(pi, "urgent channel: poll: %s", strerror(errno));
                break;
            }
            if (r > 0 && (fds[1].revents & POLLIN)) {
                uint64_t value;
                if (read(pi->wake_event, &value, sizeof(value)) < 0 && errno != EAGAIN)
                    fprintf(stderr, "ringvm: postcopy: reading the wake event: %s\n", strerror(errno));
            }
            if (r <= 0 || !(fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
        }
        int r = incoming_read_frame(pi);
        if (r != 0)
            break;      /* 1: the source closed the channel (it has sent every page); -1: failed */
    }
    return NULL;
}

int postcopy_incoming_start(struct postcopy_incoming **out, const struct postcopy_incoming_options *options,
                            char *error, size_t error_size)
{
    *out = NULL;
    struct postcopy_incoming *pi = calloc(1, sizeof(*pi));
    if (pi != NULL)
        pi->frame = malloc(INCOMING_URGENT_FRAME_MAX);
    if (pi != NULL)
        pi->scratch = malloc(sizeof(*pi->scratch));
    if (pi == NULL || pi->frame == NULL || pi->scratch == NULL) {
        snprintf(error, error_size, "out of memory for the post-copy session");
        if (pi != NULL) {
            free(pi->frame);
            free(pi->scratch);
        }
        free(pi);
        return -1;
    }
    pi->io = options->urgent;
    pi->pages = options->size / MIG_PAGE_SIZE;
    pi->direct_requests = !options->queue_requests;
    pthread_mutex_init(&pi->send_lock, NULL);
    pi->wake_event = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&pi->lock, NULL);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);   /* the END wait's deadline ignores clock steps */
    pthread_cond_init(&pi->progress, &attributes);
    pthread_condattr_destroy(&attributes);
    if (pi->wake_event < 0) {
        snprintf(error, error_size, "eventfd: %s", strerror(errno));
        goto fail;
    }
    struct postcopy_destination_options destination = {
        .host = options->host, .memfd = options->memfd, .size = options->size,
        .request_page = incoming_request_page, .opaque = pi, .digest = options->digest,
        .after_copy = options->after_copy, .after_copy_opaque = options->after_copy_opaque,
    };
    if (postcopy_destination_create(&pi->destination, &destination, error, error_size) != 0)
        goto fail;
    int r = pthread_create(&pi->thread, NULL, incoming_urgent_main, pi);
    if (r != 0) {
        snprintf(error, error_size, "pthread_create(pc-urgent): %s", strerror(r));
        goto fail;
    }
    pi->thread_started = true;
    *out = pi;
    return 0;
fail:
    if (pi->destination != NULL)
        postcopy_destination_destroy(pi->destination);     /* nothing runs on RAM yet */
    pi->destination = NULL;
    pi->finished = true;
    postcopy_incoming_destroy(pi);
    return -1;
}

void postcopy_incoming_resumed(struct postcopy_incoming *pi, uint64_t timestamp_ns)
{
    pthread_mutex_lock(&pi->lock);
    pi->resumed_pending = true;
    pi->resumed_ns = timestamp_ns;
    pthread_mutex_unlock(&pi->lock);
    incoming_wake(pi);
}

bool postcopy_incoming_received(struct postcopy_incoming *pi, uint64_t page)
{
    return pi->finished || postcopy_destination_received(pi->destination, page);
}

uint64_t postcopy_incoming_missing(struct postcopy_incoming *pi)
{
    if (pi->finished)
        return 0;
    return pi->pages - postcopy_destination_received_pages(pi->destination);
}

int postcopy_incoming_wait_all(struct postcopy_incoming *pi, unsigned timeout_ms, uint64_t *missing, char *error,
                               size_t error_size)
{
    uint64_t deadline = monotonic_now_ns() + (uint64_t)timeout_ms * 1000000u;
    struct timespec until = monotonic_timespec_at_ns(deadline);
    int result;
    pthread_mutex_lock(&pi->lock);
    for (;;) {
        *missing = postcopy_incoming_missing(pi);
        if (*missing == 0) {
            result = 0;
            break;
        }
        if (atomic_load_explicit(&pi->failed, memory_order_acquire)) {
            snprintf(error, error_size, "%s", pi->error);
            result = -1;
            break;
        }
        if (monotonic_now_ns() >= deadline) {
            result = 1;
            break;
        }
        int r = pthread_cond_timedwait(&pi->progress, &pi->lock, &until);
        if (r != 0 && r != ETIMEDOUT) {
            snprintf(error, error_size, "waiting for the last pages: pthread_cond_timedwait: %s", strerror(r));
            result = -1;
            break;
        }
    }
    pthread_mutex_unlock(&pi->lock);
    return result;
}

bool postcopy_incoming_failed(struct postcopy_incoming *pi, char *error, size_t error_size)
{
    if (!atomic_load_explicit(&pi->failed, memory_order_acquire))
        return false;
    snprintf(error, error_size, "%s", pi->error);
    return true;
}

uint64_t postcopy_incoming_digest(struct postcopy_incoming *pi, char hex[PAGE_DIGEST_HEX_SIZE])
{
    struct page_digest digest = pi->final_digest;
    if (pi->destination != NULL)
        postcopy_destination_digest(pi->destination, &digest);
    page_digest_hex(&digest, hex);
    return digest.pages;
}

void postcopy_incoming_fill_progress(struct postcopy_incoming *pi, struct mig_progress *progress,
                                     const pid_t *vcpu_tids, unsigned vcpu_count)
{
    struct postcopy_destination_stats *stats = pi->scratch;
    incoming_get_stats(pi, stats);
    /* From the source: what fill_known_zero accounted here is not counted;
     * zero pages left as holes are received (as zero) all the same. */
    uint64_t zero = stats->zero + stats->unplaced;
    uint64_t local_zero = pi->known_zero_filled < zero ? pi->known_zero_filled : zero;
    progress->postcopy.pages_received = stats->placed + zero - local_zero;
    progress->postcopy.pages_zero = zero - local_zero;
    progress->postcopy.pages_requested = stats->requested;
    progress->postcopy.faults = stats->faults;
    progress->postcopy.duplicate_faults = stats->duplicates;
    progress->postcopy.blocktime_total_ns = stats->blocktime_total_ns;
    progress->postcopy.latency_count = stats->latency.count;
    progress->postcopy.latency_p50_ns = stats->latency_p50_ns;
    progress->postcopy.latency_p99_ns = stats->latency_p99_ns;
    progress->postcopy.latency_max_ns = stats->latency_max_ns;
    for (unsigned v = 0; v < vcpu_count && v < MIG_MAX_VCPUS; v++) {
        progress->postcopy.vcpu_faults[v] = 0;
        progress->postcopy.vcpu_blocktime_ns[v] = 0;
        for (unsigned t = 0; t < stats->thread_count; t++)
            if (stats->threads[t].thread_id == vcpu_tids[v]) {
                progress->postcopy.vcpu_faults[v] = stats->threads[t].faults;
                progress->postcopy.vcpu_blocktime_ns[v] = stats->threads[t].blocktime_ns;
            }
    }
}

static void incoming_join(struct postcopy_incoming *pi)
{
    atomic_store_explicit(&pi->stop, true, memory_order_release);
    if (pi->thread_started) {
        incoming_wake(pi);
        pthread_join(pi->thread, NULL);
        pi->thread_started = false;
    }
}

void postcopy_incoming_pause(struct postcopy_incoming *pi)
{
    /* Requests wait in the queue for the next channel (restart), not in
     * the old one's send buffer. */
    pthread_mutex_lock(&pi->send_lock);
    pi->direct_off = true;
    pthread_mutex_unlock(&pi->send_lock);
    incoming_join(pi);
}

int postcopy_incoming_urgent_fd(const struct postcopy_incoming *pi)
{
    return pi->io.fd;
}

int postcopy_incoming_restart(struct postcopy_incoming *pi, struct mig_io urgent, char *error, size_t error_size)
{
    incoming_join(pi);
    pthread_mutex_lock(&pi->send_lock);
    mig_tls_session_free(pi->io.tls);
    if (pi->io.fd >= 0)
        close(pi->io.fd);
    pi->io = urgent;
    pi->seq_in = pi->seq_out = 0;
    /* Half a request left for the old channel goes with it, as a request
     * sent whole just before the break does: the page still comes, in
     * the stream the recovered source sends. */
    pi->partial_length = pi->partial_sent = 0;
    pi->direct_off = false;
    pthread_mutex_unlock(&pi->send_lock);
    pi->error[0] = '\0';
    atomic_store_explicit(&pi->failed, false, memory_order_release);
    atomic_store_explicit(&pi->stop, false, memory_order_release);
    int r = pthread_create(&pi->thread, NULL, incoming_urgent_main, pi);
    if (r != 0) {
        snprintf(error, error_size, "pthread_create(pc-urgent): %s", strerror(r));
        return -1;
    }
    pi->thread_started = true;
    incoming_wake(pi);
    return 0;
}

void postcopy_incoming_copy_received(struct postcopy_incoming *pi, uint64_t first_word, uint64_t words,
                                     uint64_t *out)
{
    postcopy_destination_copy_received(pi->destination, first_word, words, out);
}

void postcopy_incoming_finish(struct postcopy_incoming *pi)
{
    incoming_join(pi);
    pi->final_stats = malloc(sizeof(*pi->final_stats));
    if (pi->final_stats != NULL)
        postcopy_destination_get_stats(pi->destination, pi->final_stats);
    postcopy_destination_digest(pi->destination, &pi->final_digest);
    postcopy_destination_destroy(pi->destination);
    pi->destination = NULL;
    pi->finished = true;
}

void postcopy_incoming_destroy(struct postcopy_incoming *pi)
{
    if (pi == NULL)
        return;
    incoming_join(pi);
    if (!pi->finished && pi->destination != NULL)
        postcopy_destination_destroy(pi->destination);
    mig_tls_session_free(pi->io.tls);
    if (pi->io.fd >= 0)
        close(pi->io.fd);
    if (pi->wake_event >= 0)
        close(pi->wake_event);
    pthread_cond_destroy(&pi->progress);
    pthread_mutex_destroy(&pi->lock);
    pthread_mutex_destroy(&pi->send_lock);
    free(pi->frame);
    free(pi->scratch);
    free(pi->final_stats);
    free(pi);
}
