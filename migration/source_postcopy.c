/*
 * The source's post-copy (issue 17; docs/migration-protocol.md,
 * "Post-copy"): the urgent channel, hybrid's switch rule, the switch-over
 * (pause, discard list, state, POSTCOPY_SWITCH), the background stream, END
 * and the ACK, and what happens when the connections break afterwards
 * (recovery over a new address, or the guest declared lost). Runs on the
 * migration thread; pc-serve is migration/postcopy_source.c's.
 */
#include "migration/source_internal.h"

#include "migration/postcopy_priority.h"
#include "vmm/memory_extents.h"
#include "vmm/page_bitmap.h"

/* Right after the handshake (nothing paused yet): POSTCOPY_OPEN, then the
 * second connection, the urgent channel (TLS like the first), then
 * POSTCOPY_OPEN_ACK once the destination has accepted it. */
int source_postcopy_open(struct source *s, const struct mig_address *address)
{
    if (!s->peer_postcopy)
        return source_fail(s, "postcopy-unavailable", "mode %s: the destination did not announce post-copy (no "
                           "usable userfaultfd there, RAM on huge pages, or an older ringvm); nothing was paused",
                           mig_mode_name(s->params.mode));
    uint8_t payload[MIG_POSTCOPY_OPEN_SIZE] = { 0 };
    uint8_t frame[MIG_HEADER_SIZE + MIG_POSTCOPY_OPEN_SIZE];
    size_t length = mig_frame_encode(frame, MIG_FRAME_POSTCOPY_OPEN, s->seq++, payload, sizeof(payload));
    char text[8192];
    if (mig_io_write(&s->io, frame, length, text, sizeof(text)) != 0)
        return source_fail(s, "transport", "postcopy-open: %s", text);
    s->urgent_fd = mig_connect(address, CONNECT_TIMEOUT_MS, &s->m->cancel, text, sizeof(text));
    if (s->urgent_fd < 0)
        return source_fail(s, "connect-failed", "the urgent channel: %s", text);
    s->urgent_io = (struct mig_io){ .fd = s->urgent_fd, .stall_ms = s->params.stall_timeout_ms,
                                    .cancel = &s->m->cancel, .peer = "destination (urgent channel)" };
    if (s->tls_credentials != NULL) {
        const char *server_name = s->params.tls_server_name[0] != '\0' ? s->params.tls_server_name : address->host;
        struct mig_tls_options options = { .credentials = s->tls_credentials, .server_name = server_name };
        if (mig_tls_handshake(&s->urgent_tls, &s->urgent_io, &options, text, sizeof(text)) != 0)
            return source_fail(s, "tls", "the urgent channel: %s", text);
        s->urgent_io.tls = s->urgent_tls;
    }
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header header;
    return source_read_expected(s, "postcopy-open", "postcopy-open", MIG_FRAME_POSTCOPY_OPEN_ACK, &header, reply,
                                sizeof(reply));
}

/* Hybrid: should pre-copy hand over to post-copy after this pass? */
bool source_hybrid_due(struct source *s, uint64_t iteration, const struct mig_iteration_record *record)
{
    if (s->params.mode != MIG_MODE_HYBRID)
        return false;
    if (atomic_load_explicit(&s->m->postcopy_requested, memory_order_acquire))
        return true;
    if (s->params.postcopy_after_passes != 0)
        return iteration + 1 >= s->params.postcopy_after_passes;
    if (s->params.postcopy_after_ms != 0)
        return mig_mono_ns() - s->started_mono >= s->params.postcopy_after_ms * 1000000u;
    /* auto: as soon as a pass (the bulk pass included: the guest's writes
     * during it are a measured rate) shows pre-copy cannot meet the limit
     * without throttling: the guest dirties memory at 80 %
     * or more of the link's rate (each pass then shrinks the dirty set by
     * a fifth at best; a guest rewriting its working set every pass
     * measures ~100 %, give or take a percent of noise), or the dirty set
     * did not shrink by a tenth since the pass before. */
    uint64_t dirty_bytes_per_s = record->dirty_rate_pps * MIG_PAGE_SIZE;
    uint64_t previous = s->hybrid_previous_size;
    s->hybrid_previous_size = record->size_bytes;
    if (s->bandwidth == 0)
        return false;
    return (unsigned __int128)dirty_bytes_per_s * 10 >= (unsigned __int128)s->bandwidth * 8 ||
           (iteration >= 1 && (unsigned __int128)record->size_bytes * 10 >= (unsigned __int128)previous * 9);
}

/* DISCARD frames for the set bits of `bits` (pages of guest RAM), as
 * ascending runs (at most MIG_POSTCOPY_DISCARD_MAX_RUNS per frame); *sent
 * gets the pages they cover. */
static int source_send_discard_bitmap(struct source *s, const uint64_t *bits, uint64_t pages, uint64_t *sent)
{
    uint8_t *payload = malloc(MIG_POSTCOPY_DISCARD_MAX_RUNS * MIG_POSTCOPY_DISCARD_RUN);
    if (payload == NULL)
        return source_fail(s, "internal", "out of memory for the discard list");
    unsigned runs = 0;
    int result = 0;
    *sent = 0;
    for (uint64_t page = 0; result == 0 && page < pages;) {
        if (!page_bitmap_test(bits, page)) {
            page = bits[page / 64] >> (page % 64) == 0 ? (page / 64 + 1) * 64 : page + 1;
            continue;
        }
        uint64_t end = page + 1;
        while (end < pages && page_bitmap_test(bits, end))
            end++;
        struct mig_discard_run run = { .ram_offset = page * MIG_PAGE_SIZE, .pages = end - page };
        mig_discard_run_encode(&run, payload + runs * MIG_POSTCOPY_DISCARD_RUN);
        *sent += end - page;
        if (++runs == MIG_POSTCOPY_DISCARD_MAX_RUNS) {
            result = source_small_frame(s, MIG_FRAME_POSTCOPY_DISCARD, payload, runs * MIG_POSTCOPY_DISCARD_RUN);
            runs = 0;
        }
        page = end;
    }
    if (result == 0 && runs > 0)
        result = source_small_frame(s, MIG_FRAME_POSTCOPY_DISCARD, payload, runs * MIG_POSTCOPY_DISCARD_RUN);
    free(payload);
    return result;
}

/* The pages the destination lacks and still holds (unsent, and not
 * discarded early: those are holes there already), as DISCARD runs. */
static int source_send_discards(struct source *s, const uint64_t *early)
{
    uint64_t pages = guest_memory_pages(&s->vm->memory);
    uint64_t *bits = page_bitmap_alloc(pages);
    if (bits == NULL)
        return source_fail(s, "internal", "out of memory for the discard list");
    uint64_t page = 0, found;
    while (page < pages && postcopy_source_next_unsent(s->postcopy, page, &found) && found >= page) {
        if (early == NULL || !page_bitmap_test(early, found))
            page_bitmap_set(bits, found);
        page = found + 1;
    }
    uint64_t sent;
    int result = source_send_discard_bitmap(s, bits, pages, &sent);
    free(bits);
    s->progress.postcopy.discarded_in_pause_pages = sent;
    return result;
}

/* Hybrid: ORs into bits (a bitmap over RAM pages) the pages stale on the
 * destination before the next take: dirtied since they were sent (the
 * pending set; a bulk pass stopped within its window: the window's takes)
 * or never sent (the rest of a stopped bulk pass). */
static void source_stale_pages(struct source *s, uint64_t *bits, uint64_t pages)
{
    for (uint64_t i = 0; i < s->pending.count; i++)
        page_bitmap_set(bits, s->pending.pages[i]);
    if (s->bulk_carry != NULL)
        for (uint64_t w = 0; w < page_bitmap_words(pages); w++)
            bits[w] |= s->bulk_carry[w];
    if (s->bulk_stopped)
        for (uint64_t page = s->bulk_end_page; page < pages; page++)
            page_bitmap_set(bits, page);
}

/*
 * Hybrid's early discard (the destination announced
 * MIG_FEATURE_EARLY_DISCARD): with the guest still running here, take the
 * dirty log and discard on the destination every page that is stale there
 * now: dirtied since it was sent (the pending set, this take, the bulk
 * pass's carry) or never sent (the rest of a stopped bulk pass: holes
 * there, cheap to punch). Then DISCARD_SYNC and wait for its answer, so
 * the destination's hole punching (~80 ms for a rewritten 1 GiB working
 * set, docs/benchmarks.md) happens before the pause, not inside it. No
 * memory frame follows (pre-copy stopped with the drain), so these pages
 * stay holes there; the pause's discard then leaves them out and lists
 * only pages first dirtied after this take. *early: the pages discarded
 * (a bitmap over RAM; the caller frees it).
 */
static int source_postcopy_discard_early(struct source *s, uint64_t **early)
{
    struct vm *vm = s->vm;
    uint64_t pages = guest_memory_pages(&vm->memory);
    uint64_t started = mig_mono_ns();
    uint64_t *bits = page_bitmap_alloc(pages);
    if (bits == NULL)
        return source_fail(s, "internal", "out of memory for the early discard");
    *early = bits;
    struct dirty_pages taken;
    dirty_pages_init(&taken);
    int64_t count = dirty_log_take(vm->dirty_log, &taken);
    if (count < 0) {
        dirty_pages_free(&taken);
        return source_fail(s, "internal", "dirty set before the early discard: %s", strerror((int)-count));
    }
    for (uint64_t i = 0; i < taken.count; i++)
        page_bitmap_set(bits, taken.pages[i]);
    s->pages_taken += taken.count;
    dirty_pages_free(&taken);
    source_stale_pages(s, bits, pages);
    uint64_t sent;
    if (source_send_discard_bitmap(s, bits, pages, &sent) != 0)
        return -1;
    uint8_t payload[MIG_POSTCOPY_DISCARD_SYNC_SIZE];
    mig_put_u64(payload, sent);
    /* Queued, then straight to the answer: no source_flush, whose ticks
     * read the socket for a destination's ERROR and would take the answer
     * for an unexpected frame. The read's stall timeout bounds the wait. */
    if (source_small_frame(s, MIG_FRAME_POSTCOPY_DISCARD_SYNC, payload, sizeof(payload)) != 0)
        return -1;
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header header;
    if (source_read_expected(s, "early discard", "postcopy-discard-sync", MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK,
                             &header, reply, sizeof(reply)) != 0)
        return -1;
    if (mig_get_u64(reply) != sent)
        return source_fail(s, "stream", "the destination discarded %" PRIu64 " pages early, %" PRIu64 " were sent",
                           mig_get_u64(reply), sent);
    s->progress.postcopy.discarded_early_pages = sent;
    s->progress.postcopy.discard_early_ms = (mig_mono_ns() - started) / 1000000u;
    return 0;
}

/* Is the stream still leaving this host? The main socket holds up to
 * 8 MiB (transport.c's buffers), often the whole rest of a post-copy
 * stream, so the sender's writes keep succeeding for seconds after the
 * link broke, and END is "flushed" long before it arrived. The bytes the
 * peer took are the bytes written minus those still in the socket
 * (SIOCOUTQ: TCP's unacknowledged and unsent, a unix socket's unread;
 * under TLS the written count is plaintext, the queue ciphertext, which
 * only makes a stalled link look more stalled); while bytes wait, that
 * count must grow at least once per stall timeout, the destination's own
 * rule for the stream. Without it a cut link was seen only once the
 * buffer filled, or after END by the ACK wait (10 s, and then called
 * outcome-unknown). */
struct source_delivery {
    uint64_t delivered;         /* written - queued at the last sample */
    uint64_t since;             /* when it last grew (or nothing was queued) */
};

static void source_delivery_init(struct source_delivery *d)
{
    d->delivered = 0;
    d->since = mig_mono_ns();
}

/* 0, or -1 with s->error when nothing left this host for the stall
 * timeout; *queued = the bytes still in the socket (0: none, or the
 * kernel cannot tell). */
static int source_delivery_check(struct source *s, struct source_delivery *d, int *queued)
{
    uint64_t now = mig_mono_ns();
    *queued = (int)mig_socket_queued_bytes(s->fd);
    if (*queued <= 0) {
        *queued = 0;
        d->since = now;
        return 0;
    }
    uint64_t written = mig_sender_bytes(&s->sender);
    uint64_t delivered = written > (uint64_t)*queued ? written - (uint64_t)*queued : 0;
    if (delivered > d->delivered) {
        d->delivered = delivered;
        d->since = now;
        return 0;
    }
    if (now - d->since < (uint64_t)s->params.stall_timeout_ms * 1000000u)
        return 0;
    return source_fail(s, "transport", "sending to destination: nothing left this host for %u ms, %d bytes "
                       "wait in the socket (link stalled)", s->params.stall_timeout_ms, *queued);
}

/* The background stream's frames: at most this many data pages each
 * (64 KiB). The destination places a frame once it has all of it
 * (checksum), so a page on its way arrives within a frame's time (0.5 ms
 * at 125 MiB/s), short enough for pc-serve to leave a request for it to
 * the stream instead of sending it twice (migration/postcopy_source.h).
 * 1 MiB frames took 8 ms: the vCPUs, writing in address order right
 * behind the stream, asked for ~40 k of its pages meanwhile, or waited
 * 11 ms at p99 when left to it (docs/benchmarks.md). */
#ifndef SOURCE_POSTCOPY_FRAME_PAGES
#define SOURCE_POSTCOPY_FRAME_PAGES 16
#endif

/* Frames of the background stream submitted but not yet written when it
 * claims more, under a bandwidth cap (384 KiB: 3 ms at 125 MiB/s; one
 * more is being filled). A page claimed but not yet written is withdrawn
 * from its frame when requested meanwhile, so this bounds only how far
 * the stream runs ahead of the last request. Uncapped, the sender writes
 * as fast as the socket takes it and no queue builds up behind a pacer:
 * there every buffer may be queued. */
#ifndef SOURCE_POSTCOPY_STREAM_AHEAD
#define SOURCE_POSTCOPY_STREAM_AHEAD 6
#endif

/* pc-serve and the main stream's sender share the pages the stream
 * takes: those pc-serve sent first leave the stream's buffers, requests
 * for those the stream wrote wait for it (migration/postcopy_source.h).
 * Again for recovery's new sender and connection. */
static void source_postcopy_share_stream(struct source *s)
{
    postcopy_source_set_main_socket(s->postcopy, s->fd);
    mig_sender_set_withdrawn(&s->sender, postcopy_source_withdrawn, s->postcopy,
                             postcopy_source_withdrawn_counter(s->postcopy));
}

/* The background stream: every page the destination lacks, in address
 * order from wherever the last request left off, each once. */
static int source_postcopy_push(struct source *s, struct source_delivery *delivery)
{
    struct guest_memory *memory = &s->vm->memory;
    uint64_t pages = guest_memory_pages(memory);
    struct source_stream st = { .s = s };
    uint64_t page = 0;
    /* Which pages hold data, read once: RAM no longer changes here (the
     * guest runs on the destination). Asked per step, or per restart
     * after a request, each lookup cost a SEEK_HOLE through the rest of
     * its data extent: ~6 ms per GiB in one syscall that the kernel does
     * not preempt (PREEMPT_NONE), so a fault-service thread woken on this
     * core waited that long (docs/benchmarks.md). Without a map (out of
     * memory, or the host cannot say) every page counts as data: correct,
     * only slower. */
    uint64_t *data_map = page_bitmap_alloc(pages);
    struct guest_ram ram = guest_memory_ram(memory);
    if (data_map != NULL && guest_ram_data_map(&ram, data_map) != 0) {
        free(data_map);
        data_map = NULL;
    }
    char text[600];
    for (;;) {
        if (postcopy_source_failed(s->postcopy, text, sizeof(text))) {
            source_stream_submit(&st);
            free(data_map);
            return source_fail(s, "postcopy-failed", "%s", text);
        }
        int queued;
        if (source_delivery_check(s, delivery, &queued) != 0) {
            source_stream_submit(&st);
            free(data_map);
            return -1;
        }
        /* Capped, claim the next step only once little of the stream waits
         * unwritten, so the stream stays close to the last request (all
         * 16 buffers of 1 MiB queued, 128 ms at 125 MiB/s, once made
         * ~490 MiB of 1 GiB go twice, docs/benchmarks.md). A sender that
         * failed is found by the next frame, as elsewhere. */
        if (s->params.max_bandwidth_mibs != 0)
            (void)mig_sender_wait_in_flight(&s->sender, SOURCE_POSTCOPY_STREAM_AHEAD, 20);
        uint64_t restart;
        if (postcopy_source_take_restart(s->postcopy, &restart)) {
            if (restart < page)
                source_stream_submit(&st);
            page = restart;
        }
        uint64_t frame_end = page;      /* runs of one frame go up: a jump back starts a new frame */
        if (!postcopy_source_next_unsent(s->postcopy, page, &page))
            break;
        if (page < frame_end)
            source_stream_submit(&st);
        /* One frame per step: at most SOURCE_POSTCOPY_FRAME_PAGES data
         * pages (64 KiB), or 256 pages of a hole (one zero run). */
        bool data = data_map == NULL || page_bitmap_test(data_map, page);
        uint64_t limit = data ? SOURCE_POSTCOPY_FRAME_PAGES : 256;
        uint64_t stop = page + 1;
        while (stop < pages && stop - page < limit &&
               (data_map == NULL || page_bitmap_test(data_map, stop) == data))
            stop++;
        for (; page < stop; page++)
            if (postcopy_source_claim(s->postcopy, page) &&
                (data ? source_stream_page(&st, page) : source_stream_zero(&st, page, 1)) != 0) {
                free(data_map);
                return -1;
            }
        source_stream_submit(&st);
    }
    source_stream_submit(&st);
    free(data_map);
    return 0;
}

void source_postcopy_progress(struct source *s)
{
    if (s->postcopy == NULL)
        return;
    struct postcopy_source_stats stats;
    postcopy_source_get_stats(s->postcopy, &stats);
    s->progress.postcopy.pages_pushed = stats.pages_pushed;
    s->progress.postcopy.pages_requested = stats.pages_requested;
    s->progress.postcopy.requests = stats.requests;
    s->progress.postcopy.requests_refused = stats.requests_refused;
    s->progress.postcopy.pages_withdrawn = stats.pages_withdrawn;
    s->progress.postcopy.pages_left_to_stream = stats.pages_left_to_stream;
    s->progress.postcopy.pages_sent_twice = stats.pages_sent_twice;
}

/* The guest gave up: it ran on the destination, which lost it (or the
 * operator gave it up), and the source never runs it again. */
static int source_guest_lost(struct source *s, const char *why)
{
    char cause[256];
    snprintf(cause, sizeof(cause), "%.255s", s->error);
    s->error_code = "guest-lost";
    snprintf(s->error, sizeof(s->error), "post-copy: %s; the guest is lost (it ran on the destination after the "
             "switch-over, and the source's copy is out of date)%s%s", why, cause[0] ? ": " : "", cause);
    return -1;
}

/* END flushed into the socket: before the ACK wait, the stream has to
 * leave this host (source_delivery_check). 0: drained, or the destination
 * answered (ACK or ERROR: source_read_ack reads it); -1 with s->error:
 * the link stalled (the caller pauses). */
static int source_postcopy_drain(struct source *s, struct source_delivery *delivery)
{
    char text[600];
    for (;;) {
        int queued;
        if (source_delivery_check(s, delivery, &queued) != 0)
            return -1;
        if (queued == 0)
            return 0;
        if (postcopy_source_failed(s->postcopy, text, sizeof(text)))
            return source_fail(s, "postcopy-failed", "%s", text);
        if (mig_mono_ns() - s->last_publish >= PUBLISH_INTERVAL_NS)
            source_publish(s);
        /* Wakes at once for the destination's answer; the queue is
         * sampled every 20 ms (no event tells it went down). */
        if (mig_io_readable(&s->io, 20) != 0)
            return 0;
    }
}

/* The destination's ACK to END: the guest has every page there. 0 done,
 * 1 digests differ (final), -1 with s->error. */
static int source_postcopy_finish(struct source *s, uint64_t pause_real)
{
    struct mig_end ack;
    if (source_read_ack(s, &ack) != 0)
        return -1;
    postcopy_source_stop(s->postcopy);
    source_postcopy_progress(s);
    uint64_t resumed = postcopy_source_resumed_ns(s->postcopy);
    if (resumed >= pause_real) {
        s->progress.downtime_ms = (resumed - pause_real + 999999u) / 1000000u;
        s->progress.downtime_us = (resumed - pause_real + 999u) / 1000u;
    }
    snprintf(s->progress.digest_destination, sizeof(s->progress.digest_destination), "%s", ack.digest);
    if (s->params.verify_digest && strcmp(ack.digest, s->progress.digest_source) != 0) {
        s->error_code = "digest-mismatch";      /* final: no recovery fixes a wrong page */
        snprintf(s->error, sizeof(s->error), "page digests differ: source %s, destination %s; the destination "
                 "runs the guest, the source stays paused", s->progress.digest_source, ack.digest);
        return 1;
    }
    return 0;
}

/* Everything after the switch-over on one pair of connections: the
 * background stream, END with the page digest, the ACK. 0 done; -1 with
 * s->error (the caller decides between recovery and giving up). */
static int source_postcopy_transfer(struct source *s, uint64_t pause_real)
{
    struct vm *vm = s->vm;
    struct source_delivery delivery;
    source_delivery_init(&delivery);
    if (source_postcopy_push(s, &delivery) != 0)
        return -1;
    source_postcopy_progress(s);
    struct mig_end end = { .timestamp_ns = pause_real, .pages = s->pages_sent_total,
                           .flags = s->user_paused ? MIG_END_GUEST_PAUSED : 0 };
    if (s->params.verify_digest) {
        if (s->progress.digest_source[0] == '\0') {
            char hex[PAGE_DIGEST_HEX_SIZE];
            int r = page_digest_memory(&vm->memory, hex);
            if (r != 0)
                return source_fail(s, "internal", "page digest: %s", strerror(-r));
            snprintf(s->progress.digest_source, sizeof(s->progress.digest_source), "%s", hex);
        }
        snprintf(end.digest, sizeof(end.digest), "%s", s->progress.digest_source);
        end.flags |= MIG_END_HAS_DIGEST;
    }
    uint8_t end_bytes[MIG_END_SIZE];
    mig_end_encode(&end, end_bytes);
    s->end_sent = true;
    if (source_small_frame(s, MIG_FRAME_END, end_bytes, sizeof(end_bytes)) != 0 || source_flush(s) != 0)
        return -1;
    s->progress.memory.remaining = 0;
    source_phase(s, MIG_STATE_COMPLETING, "waiting-ack");
    if (source_postcopy_drain(s, &delivery) != 0)
        return -1;
    return source_postcopy_finish(s, pause_real);
}

/* The connections a recovery replaces: the switch-over's, or those of the
 * last attempt that got through its handshake. */
struct source_connections {
    int fd;
    struct mig_tls_session *tls;
    int urgent_fd;
    struct mig_tls_session *urgent_tls;
};

static void source_connections_close(struct source_connections *c)
{
    mig_tls_session_free(c->tls);
    if (c->fd >= 0)
        close(c->fd);
    mig_tls_session_free(c->urgent_tls);
    if (c->urgent_fd >= 0)
        close(c->urgent_fd);
}

/* A new main connection that failed before its handshake completed goes;
 * the old ones are the source's again. */
static void source_connections_restore(struct source *s, const struct source_connections *old)
{
    mig_tls_session_free(s->tls);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = old->fd;
    s->tls = old->tls;
    s->io = (struct mig_io){ .fd = old->fd, .stall_ms = s->params.stall_timeout_ms, .cancel = &s->m->cancel,
                             .peer = "destination", .tls = old->tls };
    s->input = (struct mig_input){ .read = source_socket_read, .ctx = &s->io };
    s->urgent_fd = old->urgent_fd;
    s->urgent_tls = old->urgent_tls;
    s->urgent_io.fd = old->urgent_fd;
    s->urgent_io.tls = old->urgent_tls;
}

/* A recovery connection to dest: hello, POSTCOPY_RESUME, the destination's
 * received bitmap (what it holds is not sent again), a new urgent channel,
 * pc-serve and the sender again. 0, or -1 with s->error; *replaced tells
 * whether the old connections were closed (they are once the new one got
 * through its handshake: only a paused destination answers on a recovery
 * address, since migration.recover needs the pause, so it no longer
 * watches them). Until then they stay open: closing them would read as
 * "the source's process ended" to a destination that has not noticed the
 * broken link yet (its stall timeout may be longer than ours), and it
 * would give the guest up. */
static int source_postcopy_reconnect(struct source *s, const char *dest, bool *replaced)
{
    char text[8192];
    struct mig_address address;
    *replaced = false;
    if (mig_address_parse(dest, &address, text, sizeof(text)) != 0)
        return source_fail(s, "invalid-argument", "dest: %s", text);
    struct source_connections old = { .fd = s->fd, .tls = s->tls, .urgent_fd = s->urgent_fd,
                                      .urgent_tls = s->urgent_tls };
    s->tls = NULL;
    s->io.tls = NULL;
    s->urgent_tls = NULL;
    s->urgent_fd = -1;
    s->fd = mig_connect(&address, CONNECT_TIMEOUT_MS, &s->m->cancel, text, sizeof(text));
    if (s->fd < 0) {
        source_connections_restore(s, &old);
        return source_fail(s, "connect-failed", "%s", text);
    }
    s->io = (struct mig_io){ .fd = s->fd, .stall_ms = s->params.stall_timeout_ms, .cancel = &s->m->cancel,
                             .peer = "destination" };
    s->input = (struct mig_input){ .read = source_socket_read, .ctx = &s->io };
    s->seq = 0;
    s->peer_seq = 0;
    if ((s->tls_credentials != NULL && source_tls_handshake(s, &address) != 0) || source_handshake(s) != 0) {
        source_connections_restore(s, &old);
        return -1;
    }
    source_connections_close(&old);
    *replaced = true;
    uint8_t payload[MIG_POSTCOPY_OPEN_SIZE] = { 0 };
    uint8_t frame[MIG_HEADER_SIZE + MIG_POSTCOPY_OPEN_SIZE];
    size_t length = mig_frame_encode(frame, MIG_FRAME_POSTCOPY_RESUME, s->seq++, payload, sizeof(payload));
    if (mig_io_write(&s->io, frame, length, text, sizeof(text)) != 0)
        return source_fail(s, "transport", "postcopy-resume: %s", text);
    /* The received bitmap, whole, within twice the stall timeout (at least
     * 10 s: a large guest's bitmap is MiBs), and never a stall timeout
     * without a byte of it: a link that breaks again while the bitmap is
     * in flight pauses after the stall timeout, as one that breaks
     * mid-stream does (not after the whole 10 s). */
    struct postcopy_return_parser parser;
    struct postcopy_return_options options = { .ram_bytes = s->vm->memory.size };
    if (postcopy_return_init(&parser, &options) != 0)
        return source_fail(s, "internal", "out of memory for the received bitmap");
    parser.seq = s->peer_seq;
    unsigned wait_ms = s->params.stall_timeout_ms * 2 > 10000 ? s->params.stall_timeout_ms * 2 : 10000;
    uint64_t deadline = mig_mono_ns() + (uint64_t)wait_ms * 1000000u;
    uint64_t last_byte = mig_mono_ns();
    uint8_t buffer[65536];
    int result = 0;
    while (!parser.bitmap_complete) {
        uint64_t now = mig_mono_ns();
        if (now >= deadline) {
            result = source_fail(s, "transport", "the destination's received bitmap did not arrive within %u ms",
                                 wait_ms);
            break;
        }
        if (now - last_byte >= (uint64_t)s->params.stall_timeout_ms * 1000000u) {
            result = source_fail(s, "transport", "the destination's received bitmap: nothing received for %u ms "
                                 "(link stalled)", s->params.stall_timeout_ms);
            break;
        }
        if (mig_io_readable(&s->io, 50) != 1)
            continue;
        ssize_t got = mig_io_recv_some(&s->io, buffer, sizeof(buffer), text, sizeof(text));
        if (got == MIG_IO_AGAIN)
            continue;
        if (got > 0)
            last_byte = mig_mono_ns();
        if (got <= 0 || postcopy_return_feed(&parser, buffer, (size_t)got, mig_mono_ns()) != 0) {
            result = source_fail(s, "transport", "reading the destination's received bitmap: %s",
                                 got < 0 ? text : got == 0 ? "the connection ended" : parser.error);
            break;
        }
    }
    if (result == 0) {
        uint64_t pages = guest_memory_pages(&s->vm->memory), missing = 0;
        for (uint64_t page = 0; page < pages; page++) {
            if (postcopy_return_page_received(&parser, page)) {
                postcopy_source_mark_sent(s->postcopy, page, 1);
            } else {
                postcopy_source_mark_unsent(s->postcopy, page);
                missing++;
            }
        }
        s->peer_seq = parser.seq;
        fprintf(stderr, "ringvm: migration %" PRIu64 ": post-copy resumed over %s: %" PRIu64 " pages still missing "
                "there\n", s->progress.id, dest, missing);
    }
    postcopy_return_destroy(&parser);
    if (result != 0)
        return -1;
    if (source_postcopy_open(s, &address) != 0)
        return -1;
    /* The sender first: starting it clears the counter pc-serve adds to. */
    if (source_start_sender(s) != 0)
        return -1;
    source_postcopy_share_stream(s);
    int r = postcopy_source_restart(s->postcopy, s->urgent_io);
    if (r != 0)
        return source_fail(s, "internal", "restarting pc-serve: %s", strerror(-r));
    s->end_sent = false;
    return 0;
}

/* The connections broke after the switch-over. A peer that closed them is
 * gone, and the guest with it. Otherwise the link broke: phase
 * postcopy-paused until migration_resume names a new address (or a cancel
 * or shutdown gives the guest up); a failed reconnection pauses again.
 * 0 = reconnected, 1 = END had gone out and the destination's answer to it
 * arrived on the paused connection after all (read it: source_postcopy_finish),
 * -1 = given up (s->error). */
static int source_postcopy_recover(struct source *s)
{
    struct vm *vm = s->vm;
    struct migration *m = s->m;
    bool retrying = false;      /* an attempt replaced the switch-over's connections, then failed */
    for (;;) {
        postcopy_source_stop(s->postcopy);
        if (s->sender_started) {
            mig_sender_stop(&s->sender);
            s->sender_started = false;
        }
        if (s->error_code != NULL && strcmp(s->error_code, "digest-mismatch") == 0)
            return -1;
        if (atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire))
            return source_guest_lost(s, "the source is shutting down");
        if (!retrying && (mig_socket_peer_gone(s->fd) || mig_socket_peer_gone(s->urgent_fd)))
            return source_guest_lost(s, "the destination closed its connections (its process ended?)");
        char cause[sizeof(s->error)];
        snprintf(cause, sizeof(cause), "%s", s->error[0] ? s->error : "the connection failed");
        s->error_code = NULL;
        s->error[0] = '\0';
        snprintf(s->progress.error_code, sizeof(s->progress.error_code), "postcopy-paused");
        snprintf(s->progress.error_message, sizeof(s->progress.error_message), "%s", cause);
        pthread_mutex_lock(&m->lock);
        m->postcopy_paused = true;
        m->paused_incoming = false;
        m->recover_requested = false;
        pthread_mutex_unlock(&m->lock);
        source_phase(s, MIG_STATE_ACTIVE, "postcopy-paused");
        fprintf(stderr, "ringvm: migration %" PRIu64 ": post-copy paused: %s; the guest waits on the destination "
                "for its missing pages: run migration.recover there, then migration.start with resume here "
                "(migration.cancel gives the guest up)\n", s->progress.id, cause);
        char dest[sizeof(m->recover_address)];
        bool give_up = false, answered = false;
        /* END may have left this host and only been slow to arrive (a
         * stall while flushing it): a destination that reads it after all
         * finishes and answers ACK on this same connection. Then nothing
         * is paused any more: the migration completed (a recovery
         * attempted now would find a destination that no longer listens). */
        bool watch_for_ack = s->end_sent && !retrying;
        pthread_mutex_lock(&m->lock);
        while (!m->recover_requested) {
            if (atomic_load_explicit(&m->cancel, memory_order_acquire) ||
                atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
                give_up = true;
                break;
            }
            if (watch_for_ack && mig_io_readable(&s->io, 0) != 0) {
                answered = true;
                break;
            }
            mig_cond_wait_ms(&m->postcopy_cond, &m->lock, 100);
        }
        snprintf(dest, sizeof(dest), "%s", m->recover_address);
        m->recover_requested = false;
        m->postcopy_paused = false;
        pthread_mutex_unlock(&m->lock);
        if (answered) {
            s->progress.error_code[0] = '\0';
            s->progress.error_message[0] = '\0';
            source_phase(s, MIG_STATE_COMPLETING, "waiting-ack");
            fprintf(stderr, "ringvm: migration %" PRIu64 ": post-copy: the destination answered END on the paused "
                    "connection\n", s->progress.id);
            return 1;
        }
        if (give_up) {
            s->cancelled = atomic_load_explicit(&m->cancel, memory_order_acquire);
            return source_guest_lost(s, s->cancelled ? "given up by migration.cancel while paused"
                                                     : "the source is shutting down");
        }
        s->progress.error_code[0] = '\0';
        s->progress.error_message[0] = '\0';
        bool replaced;
        if (source_postcopy_reconnect(s, dest, &replaced) == 0) {
            source_phase(s, MIG_STATE_ACTIVE, "postcopy");
            return 0;
        }
        fprintf(stderr, "ringvm: migration %" PRIu64 ": post-copy recovery over %s failed: %s\n", s->progress.id,
                dest, s->error);
        retrying = retrying || replaced;
    }
}

/* Hybrid, before the pause: pre-copy's last frames may still be in the
 * sender's queue and the link's (a socket holds up to 8 MiB, a shaped
 * link's queue more: 50 ms of it behind tbf), and the switch-over's frames
 * would wait behind them with the guest paused. Let them leave while the
 * guest still runs here: until at most SOURCE_POSTCOPY_DRAINED bytes wait
 * in the socket, for up to SOURCE_POSTCOPY_DRAIN_MS (then switch anyway).
 * What the guest dirties meanwhile is in the final sync's take. */
#define SOURCE_POSTCOPY_DRAINED (64u << 10)
#define SOURCE_POSTCOPY_DRAIN_MS 2000u
static int source_postcopy_drain_precopy(struct source *s)
{
    if (source_flush(s) != 0)
        return -1;
    uint64_t deadline = mig_mono_ns() + SOURCE_POSTCOPY_DRAIN_MS * 1000000ull;
    for (;;) {
        if (mig_socket_queued_bytes(s->fd) <= SOURCE_POSTCOPY_DRAINED || mig_mono_ns() >= deadline)
            return 0;
        if (source_tick(s) != 0)
            return -1;
        poll(NULL, 0, 1);
    }
}

static int source_postcopy_run(struct source *s, uint64_t pause_real, uint64_t missing);

/*
 * The post-copy switch-over: pause, capture the state, tell the destination
 * which pages it must drop (pure post-copy: all of them; hybrid: those
 * dirtied since they were sent), send the state and POSTCOPY_SWITCH, then
 * push every missing page while pc-serve answers requests, then END (with
 * the page digest) and the ACK once the destination holds every page.
 * From POSTCOPY_SWITCH on the source never resumes: the guest runs on the
 * destination, or is lost with it (docs/reliability.md).
 */
int source_postcopy(struct source *s)
{
    struct vm *vm = s->vm;
    uint64_t pages = guest_memory_pages(&vm->memory);
    fprintf(stderr, "ringvm: migration %" PRIu64 ": switching over to post-copy after %" PRIu64 " pre-copy passes\n",
            s->progress.id, s->tracking && !s->bulk_stopped ? s->progress.iteration + 1 : 0);
    source_phase(s, MIG_STATE_COMPLETING, "postcopy-switch");
    if (s->tracking && source_postcopy_drain_precopy(s) != 0)
        return -1;
    uint64_t *early = NULL;
    if (s->tracking && s->peer_early_discard && source_postcopy_discard_early(s, &early) != 0) {
        free(early);
        return -1;
    }
    if (source_pause_guest(s) != 0) {
        free(early);
        return -1;
    }
    int r;
    uint64_t pause_real = mig_real_ns();
    struct captured_state state;
    if (source_capture_state(s, &state) != 0) {
        free(early);
        return -1;
    }
    if (postcopy_source_create(&s->postcopy, &vm->memory, s->urgent_io) != 0) {
        free(state.bytes);
        free(early);
        return source_fail(s, "internal", "out of memory for the post-copy state");
    }
    if (s->tracking) {
        /* Hybrid: iteration 0 sent every page; stale now are the pending
         * set and what the final sync finds (after the state capture, as
         * in pre-copy: KVM's writes for vCPU ioctls land in it). */
        r = dirty_log_final_sync(vm->dirty_log);
        struct dirty_pages extra;
        dirty_pages_init(&extra);
        int64_t taken = r == 0 ? dirty_log_take(vm->dirty_log, &extra) : r;
        if (taken < 0) {
            dirty_pages_free(&extra);
            free(state.bytes);
            free(early);
            return source_fail(s, "internal", "final dirty set: %s", strerror((int)-taken));
        }
        /* Stale: what the early discard found (it holds the pending
         * set and the bulk pass's carry and tail as they are now), else
         * those, and what the final take found. */
        uint64_t *stale = early != NULL ? early : page_bitmap_alloc(pages);
        if (stale == NULL) {
            dirty_pages_free(&extra);
            free(state.bytes);
            return source_fail(s, "internal", "out of memory for the stale pages");
        }
        if (early == NULL)
            source_stale_pages(s, stale, pages);
        postcopy_source_mark_sent(s->postcopy, 0, pages);
        for (uint64_t w = 0; w < page_bitmap_words(pages); w++)
            for (uint64_t bits = stale[w]; bits != 0; bits &= bits - 1)
                postcopy_source_mark_unsent(s->postcopy, w * 64 + (uint64_t)__builtin_ctzll(bits));
        for (uint64_t i = 0; i < extra.count; i++)
            postcopy_source_mark_unsent(s->postcopy, extra.pages[i]);
        if (stale != early)
            free(stale);
        s->pages_taken += extra.count;
        dirty_pages_free(&extra);
    }
    uint64_t missing = postcopy_source_unsent(s->postcopy);
    r = source_send_discards(s, early);
    free(early);
    if (r == 0)
        r = source_send_state(s, &state);
    free(state.bytes);
    if (r != 0 || source_send_device_state(s) != 0)
        return -1;
    struct mig_postcopy_switch sw = { .pause_timestamp_ns = pause_real, .missing_pages = missing,
                                      .flags = s->user_paused ? (uint32_t)MIG_END_GUEST_PAUSED : 0 };
    uint8_t sw_bytes[MIG_POSTCOPY_SWITCH_SIZE];
    mig_postcopy_switch_encode(&sw, sw_bytes);
    if (source_pass_point_of_no_return(s) != 0)
        return -1;
    /* The point of no return: the destination may run the guest from the
     * moment it reads this frame. */
    s->keep_paused = true;
    if (source_small_frame(s, MIG_FRAME_POSTCOPY_SWITCH, sw_bytes, sizeof(sw_bytes)) != 0 || source_flush(s) != 0)
        return -1;
    source_release_tracking(s);     /* the source never runs the guest again */
    postcopy_source_count_bytes_into(s->postcopy, &s->sender.shared_bytes);
    source_postcopy_share_stream(s);
    r = postcopy_source_start(s->postcopy);
    if (r != 0)
        return source_fail(s, "postcopy-failed", "starting pc-serve: %s", strerror(-r));
    int migration_nice = postcopy_priority_boost_stream(0, "migration");
    r = source_postcopy_run(s, pause_real, missing);
    postcopy_priority_restore_stream(0, migration_nice);
    return r;
}

/* From pc-serve's start to the end: the background stream, recovering as
 * often as the connections break. */
static int source_postcopy_run(struct source *s, uint64_t pause_real, uint64_t missing)
{
    source_console_commit(s, false);    /* the guest runs there now; never waits for a slow client */
    s->progress.postcopy.active = true;
    s->progress.postcopy.switched_at_ms = (mig_mono_ns() - s->started_mono) / 1000000u;
    s->progress.postcopy.pages_total = missing;
    s->progress.memory.remaining = missing * MIG_PAGE_SIZE;
    source_phase(s, MIG_STATE_ACTIVE, "postcopy");
    int transferred = source_postcopy_transfer(s, pause_real);
    while (transferred != 0) {
        int recovered = source_postcopy_recover(s);
        if (recovered < 0)
            return -1;
        transferred = recovered == 1 ? source_postcopy_finish(s, pause_real) : source_postcopy_transfer(s, pause_real);
    }
    return 0;
}

