/* The source's post-copy state and its page server (migration/postcopy_source.h). */
#include "migration/postcopy_source.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#include <xxh_x86dispatch.h>

#include "migration/postcopy_priority.h"
#include "migration/postcopy_return.h"
#include "migration/protocol.h"
#include "vmm/memory_extents.h"
#include "vmm/monotonic.h"
#include "vmm/page_bitmap.h"

#define NO_RESTART UINT64_MAX

/* A requested page whose stream copy is on its way is left to the stream
 * while at most this much of the main stream is still ahead of where an
 * urgent copy would join the queue (mig_socket_unsent_bytes): over TCP
 * the bytes not yet sent (those in flight are ahead of an urgent copy
 * too, on the same link; the destination bounds them, stream_window.h),
 * over a unix socket the unread bytes. The stream's copy then arrives at
 * most this / link rate later than an urgent one would: 0.5 ms at
 * 1 Gbit/s over TCP; over unix, where the stream moves at memory speed
 * uncapped and the pacer keeps the socket near empty under a cap,
 * 0.1-0.25 ms. Beyond it, a second copy goes on the urgent channel. */
#define STREAM_WAIT_UNSENT_BYTES_TCP (64u << 10)
#define STREAM_WAIT_UNREAD_BYTES_UNIX (256u << 10)

/*
 * Ownership: memory, pages, words: immutable. sent: atomic bits (claimed
 * with fetch_or by either thread). committed: atomic bits, one fetch_or
 * per page decides who sends it: the sender thread filling a stream
 * buffer (postcopy_source_withdrawn) or pc-serve answering a request;
 * cleared with sent by mark_unsent (recovery: what a broken connection
 * carried may be lost). main_fd: atomic (recovery sets the new one while
 * an old pc-serve may still run). io, parser, seq, limit_fd, limit: pc-serve only between
 * start and stop. restart, resumed_ns, counters: atomics. failed: set with
 * release after error is written.
 */
struct postcopy_source {
    const struct guest_memory *memory;
    uint64_t pages;
    uint64_t words;
    _Atomic uint64_t *sent;
    _Atomic uint64_t *committed;
    _Atomic int main_fd;
    struct mig_io io;
    struct postcopy_return_parser parser;
    uint64_t seq;
    int limit_fd;               /* stream_wait_limit's: the main fd it last looked at, and its limit */
    uint64_t limit;
    _Atomic uint64_t restart;
    _Atomic uint64_t resumed_ns;
    _Atomic uint64_t requests;
    _Atomic uint64_t pages_requested;
    _Atomic uint64_t pages_pushed;
    _Atomic uint64_t pages_withdrawn;   /* added by the sender (mig_sender_set_withdrawn) */
    _Atomic uint64_t pages_left_to_stream;
    _Atomic uint64_t pages_sent_twice;
    _Atomic uint64_t requests_refused;  /* the parser's, copied by pc-serve after each feed */
    _Atomic uint64_t *paced_bytes;  /* NULL, or the sender's shared_bytes (set before start) */
    _Atomic bool stop;
    _Atomic bool failed;
    char error[600];
    pthread_t thread;
    bool thread_started;
};

static void serve_fail(struct postcopy_source *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void serve_fail(struct postcopy_source *ps, const char *fmt, ...)
{
    if (atomic_load_explicit(&ps->failed, memory_order_acquire))
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(ps->error, sizeof(ps->error), fmt, args);
    va_end(args);
    atomic_store_explicit(&ps->failed, true, memory_order_release);
}

int postcopy_source_create(struct postcopy_source **out, const struct guest_memory *memory, struct mig_io urgent)
{
    struct postcopy_source *ps = calloc(1, sizeof(*ps));
    if (ps == NULL)
        return -1;
    ps->memory = memory;
    ps->pages = memory->size / MIG_PAGE_SIZE;
    ps->words = page_bitmap_words(ps->pages);
    ps->limit_fd = -1;
    ps->sent = calloc(ps->words ? ps->words : 1, sizeof(ps->sent[0]));
    ps->committed = calloc(ps->words ? ps->words : 1, sizeof(ps->committed[0]));
    struct postcopy_return_options options = { .ram_bytes = memory->size };
    if (ps->sent == NULL || ps->committed == NULL || postcopy_return_init(&ps->parser, &options) != 0) {
        free(ps->sent);
        free(ps->committed);
        free(ps);
        return -1;
    }
    ps->io = urgent;
    atomic_init(&ps->main_fd, -1);
    atomic_store_explicit(&ps->restart, NO_RESTART, memory_order_relaxed);
    *out = ps;
    return 0;
}

void postcopy_source_mark_sent(struct postcopy_source *ps, uint64_t page, uint64_t count)
{
    for (uint64_t p = page; p < page + count && p < ps->pages; p++)
        page_bitmap_set_atomic(ps->sent, p, memory_order_relaxed);
}

void postcopy_source_mark_unsent(struct postcopy_source *ps, uint64_t page)
{
    if (page < ps->pages) {
        page_bitmap_clear_atomic(ps->sent, page, memory_order_relaxed);
        page_bitmap_clear_atomic(ps->committed, page, memory_order_relaxed);
    }
}

/* The first to set the bit sends the page: relaxed is enough, the
 * read-modify-write alone picks one winner (RAM is frozen, so what either
 * reads is the same). */
static bool commit_page(struct postcopy_source *ps, uint64_t page)
{
    return page_bitmap_set_atomic(ps->committed, page, memory_order_relaxed);
}

bool postcopy_source_withdrawn(uint64_t page, void *opaque)
{
    struct postcopy_source *ps = opaque;
    return page < ps->pages && !commit_page(ps, page);
}

_Atomic uint64_t *postcopy_source_withdrawn_counter(struct postcopy_source *ps)
{
    return &ps->pages_withdrawn;
}

void postcopy_source_set_main_socket(struct postcopy_source *ps, int fd)
{
    atomic_store_explicit(&ps->main_fd, fd, memory_order_relaxed);
}

bool postcopy_source_next_unsent(struct postcopy_source *ps, uint64_t from, uint64_t *page)
{
    if (from >= ps->pages)
        from = 0;
    for (uint64_t scanned = 0; scanned <= ps->words; scanned++) {
        uint64_t word = (from / 64 + scanned) % ps->words;
        uint64_t unsent = ~atomic_load_explicit(&ps->sent[word], memory_order_relaxed);
        if (scanned == 0)
            unsent &= ~0ull << (from % 64);     /* from on, in the first word */
        if (word == ps->words - 1)
            unsent &= page_bitmap_last_word_mask(ps->pages);
        if (unsent != 0) {
            *page = word * 64 + (uint64_t)__builtin_ctzll(unsent);
            return true;
        }
    }
    return false;
}

uint64_t postcopy_source_unsent(struct postcopy_source *ps)
{
    uint64_t sent = 0;
    for (uint64_t w = 0; w < ps->words; w++)
        sent += (uint64_t)__builtin_popcountll(atomic_load_explicit(&ps->sent[w], memory_order_relaxed));
    return ps->pages - sent;
}

bool postcopy_source_claim(struct postcopy_source *ps, uint64_t page)
{
    bool first = page_bitmap_set_atomic(ps->sent, page, memory_order_relaxed);
    if (first)
        atomic_fetch_add_explicit(&ps->pages_pushed, 1, memory_order_relaxed);
    return first;
}

bool postcopy_source_take_restart(struct postcopy_source *ps, uint64_t *page)
{
    uint64_t value = atomic_exchange_explicit(&ps->restart, NO_RESTART, memory_order_relaxed);
    if (value == NO_RESTART)
        return false;
    *page = value;
    return true;
}

uint64_t postcopy_source_resumed_ns(struct postcopy_source *ps)
{
    return atomic_load_explicit(&ps->resumed_ns, memory_order_acquire);
}

bool postcopy_source_failed(struct postcopy_source *ps, char *error, size_t error_size)
{
    if (!atomic_load_explicit(&ps->failed, memory_order_acquire))
        return false;
    snprintf(error, error_size, "%s", ps->error);
    return true;
}

void postcopy_source_get_stats(struct postcopy_source *ps, struct postcopy_source_stats *stats)
{
    stats->requests = atomic_load_explicit(&ps->requests, memory_order_relaxed);
    stats->pages_requested = atomic_load_explicit(&ps->pages_requested, memory_order_relaxed);
    /* withdrawn first (the sender adds it with release after the claims
     * counted in pages_pushed), so the difference never wraps. */
    stats->pages_withdrawn = atomic_load_explicit(&ps->pages_withdrawn, memory_order_acquire);
    stats->pages_pushed = atomic_load_explicit(&ps->pages_pushed, memory_order_relaxed) - stats->pages_withdrawn;
    stats->pages_left_to_stream = atomic_load_explicit(&ps->pages_left_to_stream, memory_order_relaxed);
    stats->pages_sent_twice = atomic_load_explicit(&ps->pages_sent_twice, memory_order_relaxed);
    stats->requests_refused = atomic_load_explicit(&ps->requests_refused, memory_order_relaxed);
}

/* STREAM_WAIT_*: by the main connection's kind, looked up once per fd
 * (recovery brings a new one). pc-serve only. */
static uint64_t stream_wait_limit(struct postcopy_source *ps, int main_fd)
{
    if (main_fd != ps->limit_fd) {
        ps->limit_fd = main_fd;
        ps->limit = mig_socket_is_tcp(main_fd) ? STREAM_WAIT_UNSENT_BYTES_TCP : STREAM_WAIT_UNREAD_BYTES_UNIX;
    }
    return ps->limit;
}

/* One request: a MEMORY frame with one run (zero when no page of it holds
 * data, the same test the background stream makes). */
static int serve_request(struct postcopy_source *ps, const struct postcopy_page_request *request)
{
    uint64_t first = request->ram_offset / MIG_PAGE_SIZE, streamed = 0;
    for (uint64_t p = first; p < first + request->pages; p++) {
        page_bitmap_set_atomic(ps->sent, p, memory_order_relaxed);
        if (!commit_page(ps, p))
            streamed++;         /* in a stream buffer already filled: on its way */
    }
    atomic_store_explicit(&ps->restart, first + request->pages, memory_order_relaxed);
    if (streamed == request->pages) {
        /* Every page on its way: leave them to the stream when little of it
         * is ahead of where an urgent copy would join (see above), so no
         * page goes twice. The destination placed nothing yet and its vCPU
         * waits for the stream's copy. */
        int main_fd = atomic_load_explicit(&ps->main_fd, memory_order_relaxed);
        if (main_fd >= 0 && mig_socket_unsent_bytes(main_fd) <= stream_wait_limit(ps, main_fd)) {
            atomic_fetch_add_explicit(&ps->pages_left_to_stream, streamed, memory_order_relaxed);
            return 0;
        }
    }
    if (streamed != 0)
        atomic_fetch_add_explicit(&ps->pages_sent_twice, streamed, memory_order_relaxed);
    uint64_t bytes = (uint64_t)request->pages * MIG_PAGE_SIZE;
    struct guest_ram ram = guest_memory_ram(ps->memory);
    bool zero = (request->pages == 1 ? guest_ram_page_holds_data(&ram, first)
                                     : guest_ram_holds_data(&ram, first, request->pages)) == 0;
    struct mig_run run = { .ram_offset = request->ram_offset, .pages = request->pages,
                           .flags = zero ? MIG_RUN_ZERO : 0 };
    uint8_t run_bytes[MIG_RUN_HEADER_SIZE];
    mig_run_encode(&run, run_bytes);
    uint64_t length = MIG_RUN_HEADER_SIZE + (zero ? 0 : bytes);
    uint8_t header[MIG_HEADER_SIZE];
    mig_header_encode(header, MIG_FRAME_MEMORY, ps->seq, length);
    const uint8_t *data_bytes = ps->memory->host + request->ram_offset;
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, header, MIG_HEADER_CHECKSUM_OFFSET);
    XXH3_64bits_update(&state, run_bytes, sizeof(run_bytes));
    if (!zero)
        XXH3_64bits_update(&state, data_bytes, bytes);
    mig_put_u64(header + MIG_HEADER_CHECKSUM_OFFSET, XXH3_64bits_digest(&state));
    struct iovec iov[3] = { { header, sizeof(header) }, { run_bytes, sizeof(run_bytes) },
                            { (void *)data_bytes, zero ? 0 : bytes } };
    char text[400];
    if (mig_io_writev(&ps->io, iov, zero ? 2 : 3, text, sizeof(text)) != 0) {
        serve_fail(ps, "urgent channel: sending %" PRIu32 " requested pages at 0x%" PRIx64 ": %s", request->pages,
                   request->ram_offset, text);
        return -1;
    }
    ps->seq++;
    if (ps->paced_bytes != NULL)
        atomic_fetch_add_explicit(ps->paced_bytes, sizeof(header) + sizeof(run_bytes) + (zero ? 0 : bytes),
                                  memory_order_relaxed);
    atomic_fetch_add_explicit(&ps->pages_requested, request->pages, memory_order_relaxed);
    return 0;
}

/* Best effort: tell the destination why its request stream was refused
 * (it then counts the urgent channel as failed). */
static void serve_send_error(struct postcopy_source *ps, const char *message)
{
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE], frame[MIG_HEADER_SIZE + 4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(MIG_ERR_STREAM, message, payload);
    size_t total = mig_frame_encode(frame, MIG_FRAME_ERROR, ps->seq++, payload, length);
    struct mig_io io = ps->io;
    io.stall_ms = 500;
    char ignored[256];
    (void)mig_io_write(&io, frame, total, ignored, sizeof(ignored));
}

static void *serve_main(void *argument)
{
    struct postcopy_source *ps = argument;
    pthread_setname_np(pthread_self(), "pc-serve");
    (void)postcopy_priority_apply("pc-serve");
    uint8_t buffer[16384];
    char text[400];
    while (!atomic_load_explicit(&ps->stop, memory_order_acquire)) {
        int readable = mig_io_readable(&ps->io, 50);
        if (readable < 0) {
            serve_fail(ps, "urgent channel: poll failed");
            break;
        }
        if (readable == 0)
            continue;
        ssize_t got = mig_io_recv_some(&ps->io, buffer, sizeof(buffer), text, sizeof(text));
        if (got == MIG_IO_AGAIN)
            continue;
        if (got == 0) {
            serve_fail(ps, "urgent channel: the destination closed it");
            break;
        }
        if (got < 0) {
            serve_fail(ps, "urgent channel: %s", text);
            break;
        }
        if (postcopy_return_feed(&ps->parser, buffer, (size_t)got, monotonic_now_ns()) != 0) {
            /* Malformed or hostile: refused before any byte of RAM is read. */
            serve_fail(ps, "urgent channel: %s", ps->parser.error);
            if (ps->parser.peer_error_code == 0)
                serve_send_error(ps, ps->parser.error);
            break;
        }
        atomic_store_explicit(&ps->requests_refused,
                              ps->parser.requests_refused_queue + ps->parser.requests_refused_rate,
                              memory_order_relaxed);
        if (ps->parser.got_resumed && atomic_load_explicit(&ps->resumed_ns, memory_order_relaxed) == 0)
            atomic_store_explicit(&ps->resumed_ns, ps->parser.resumed_ns ? ps->parser.resumed_ns : 1,
                                  memory_order_release);
        struct postcopy_page_request request;
        while (postcopy_return_pop(&ps->parser, &request)) {
            atomic_fetch_add_explicit(&ps->requests, 1, memory_order_relaxed);
            if (serve_request(ps, &request) != 0)
                goto out;
        }
    }
out:
    return NULL;
}

void postcopy_source_count_bytes_into(struct postcopy_source *ps, _Atomic uint64_t *counter)
{
    ps->paced_bytes = counter;
}

int postcopy_source_start(struct postcopy_source *ps)
{
    int r = pthread_create(&ps->thread, NULL, serve_main, ps);
    if (r != 0)
        return -r;
    ps->thread_started = true;
    return 0;
}

int postcopy_source_restart(struct postcopy_source *ps, struct mig_io urgent)
{
    postcopy_source_stop(ps);
    postcopy_return_destroy(&ps->parser);
    struct postcopy_return_options options = { .ram_bytes = ps->memory->size };
    if (postcopy_return_init(&ps->parser, &options) != 0)
        return -ENOMEM;
    ps->io = urgent;
    ps->seq = 0;
    ps->error[0] = '\0';
    atomic_store_explicit(&ps->failed, false, memory_order_release);
    atomic_store_explicit(&ps->stop, false, memory_order_release);
    return postcopy_source_start(ps);
}

void postcopy_source_stop(struct postcopy_source *ps)
{
    atomic_store_explicit(&ps->stop, true, memory_order_release);
    if (ps->thread_started) {
        pthread_join(ps->thread, NULL);
        ps->thread_started = false;
    }
}

void postcopy_source_destroy(struct postcopy_source *ps)
{
    if (ps == NULL)
        return;
    postcopy_source_stop(ps);
    postcopy_return_destroy(&ps->parser);
    free(ps->sent);
    free(ps->committed);
    free(ps);
}
