/*
 * The source of a pre-copy migration: the state machine run by thread
 * "migration" (migration_source_main), from the handshake through the
 * iterations, the switch-over and the ACK. struct source and who owns what
 * in it: migration/migration_internal.h.
 */
#include "migration/source_internal.h"
#include "migration/machine_state_vm.h"
#include "vmm/console.h"
#include "vmm/memory_extents.h"
#include "vmm/page_bitmap.h"

/* ---- the source ------------------------------------------------------------ */

/* What crossed the link since this iteration started: written, plus what
 * sat in the socket at the start, minus what sits there now (`queued`,
 * mig_socket_queued_bytes: TCP's unacknowledged bytes, a unix socket's
 * unread ones). The sender counts bytes handed to the kernel, so without
 * the socket's fill a bandwidth sample counts it as if it had crossed the
 * link: on a 1 Gbit/s link iteration 0 of a 128 MiB guest read 141 MiB/s
 * where ~115 MiB/s went through, and the switch-over then overran the
 * downtime limit. */
static uint64_t source_delivered_this_iteration(struct source *s, uint64_t queued)
{
    uint64_t written = mig_sender_bytes(&s->sender) - s->iteration_start_bytes;
    return written + s->iteration_start_queued > queued ? written + s->iteration_start_queued - queued : 0;
}

__attribute__((format(printf, 3, 4)))
int source_fail(struct source *s, const char *code, const char *fmt, ...)
{
    if (s->error_code != NULL)
        return -1;      /* keep the first cause */
    s->error_code = code;
    va_list args;
    va_start(args, fmt);
    vsnprintf(s->error, sizeof(s->error), fmt, args);
    va_end(args);
    return -1;
}

int source_socket_read(void *ctx, void *data, size_t length, bool eof_ok, char *error, size_t error_size)
{
    return mig_io_read(ctx, data, length, eof_ok, error, error_size);
}

void migration_source_vcpu_throttles(struct source *s)
{
    int max = 0;
    unsigned count = s->vm->config.vcpu_count;
    s->progress.vcpu_count = count > MIG_MAX_VCPUS ? MIG_MAX_VCPUS : count;
    for (unsigned i = 0; i < s->progress.vcpu_count; i++) {
        int t = vcpu_get_throttle(&s->vm->vcpus[i]);
        s->progress.vcpu_throttle[i] = t;
        if (t > max)
            max = t;
    }
    s->progress.throttle_percent = max;
}


void source_publish(struct source *s)
{
    source_postcopy_progress(s);
    uint64_t now = mig_mono_ns();
    s->progress.elapsed_ms = (now - s->started_mono) / 1000000u;
    if (s->sender_started)
        s->progress.memory.transferred = mig_sender_bytes(&s->sender);
    mig_progress_sample_throughput(&s->progress, &s->throughput, now);
    migration_source_vcpu_throttles(s);
    mig_progress_publish(&s->m->board, &s->progress);
    s->last_publish = now;
}

void source_phase(struct source *s, enum mig_state state, const char *phase)
{
    enum mig_state old = s->progress.state;
    s->progress.state = state;
    snprintf(s->progress.phase, sizeof(s->progress.phase), "%s", phase);
    source_publish(s);
    if (old != state)
        mig_publish_state_event(s->server, s->progress.id, "outgoing", state, phase);
}


/* Periodic work while sending: publish, dirty-limit, aborts. 0 or -1. */
int source_tick(struct source *s)
{
    uint64_t now = mig_mono_ns();
    if (now - s->last_publish >= PUBLISH_INTERVAL_NS) {
        if (s->pending.count > 0 || s->progress.iteration > 0) {
            uint64_t left = s->pending.count > s->pending_sent ? s->pending.count - s->pending_sent : 0;
            s->progress.memory.remaining = left * MIG_PAGE_SIZE;
        }
        source_publish(s);
    }
    if (atomic_load_explicit(&s->m->cancel, memory_order_acquire)) {
        s->cancelled = true;
        return source_fail(s, "cancelled", "cancelled by migration.cancel");
    }
    if (atomic_load_explicit(&s->vm->shutdown_requested, memory_order_acquire)) {
        s->cancelled = true;
        return source_fail(s, "shutdown", "the VM is shutting down");
    }
    if (s->deadline_mono != 0 && now >= s->deadline_mono && !s->paused) {
        if (!s->params.timeout_force) {
            s->cancelled = true;
            return source_fail(s, "timeout", "not converged within timeout_s=%" PRIu64 " s (timeout_strategy=cancel)",
                               s->params.timeout_s);
        }
        s->force_switch = true;
    }
    /* The destination only talks mid-stream to say why it gives up. */
    if (s->fd >= 0 && !s->end_sent && mig_io_readable(&s->io, 0) == 1) {
        uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
        struct mig_frame_header header;
        char text[600];
        struct mig_io quick = s->io;
        quick.stall_ms = 1000;
        struct mig_input quick_input = { .read = source_socket_read, .ctx = &quick };
        if (mig_read_small_frame(&quick_input, s->peer_seq, &header, payload, sizeof(payload), text,
                                 sizeof(text)) != 0)
            return source_fail(s, "transport", "%s", text);
        if (header.type == MIG_FRAME_ERROR) {
            uint32_t code;
            char message[MIG_ERROR_MAX_MESSAGE + 1];
            mig_error_decode(payload, (size_t)header.length, &code, message, sizeof(message));
            return source_fail(s, code == MIG_ERR_CONFIG ? "config-mismatch" : "destination-error",
                               "destination refused: %s", message);
        }
        return source_fail(s, "stream", "destination sent an unexpected %s frame",
                           mig_frame_type_name(header.type));
    }
    if (s->sender_started) {
        char text[512];
        if (mig_sender_failed(&s->sender, text, sizeof(text))) {
            if (s->cancelled)
                return -1;
            /* A destination that refused says why before closing. */
            if (!s->end_sent && mig_io_readable(&s->io, 200) == 1) {
                uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
                struct mig_frame_header header;
                char ignored[256];
                if (mig_read_small_frame(&s->input, s->peer_seq, &header, payload, sizeof(payload), ignored,
                                         sizeof(ignored)) == 0 && header.type == MIG_FRAME_ERROR) {
                    uint32_t code;
                    char message[MIG_ERROR_MAX_MESSAGE + 1];
                    mig_error_decode(payload, (size_t)header.length, &code, message, sizeof(message));
                    return source_fail(s, "destination-error", "destination refused: %s", message);
                }
            }
            return source_fail(s, "transport", "%s", text);
        }
    }
    return 0;
}

static struct mig_buffer *source_buffer(struct source *s)
{
    uint64_t started = mig_mono_ns();
    for (;;) {
        if (source_tick(s) != 0)
            return NULL;
        struct mig_buffer *b = mig_sender_get(&s->sender, 50);
        if (b != NULL) {
            s->buffer_wait_ns += mig_mono_ns() - started;
            return b;
        }
    }
}

int source_start_sender(struct source *s)
{
    char text[256];
    uint64_t cap = s->params.max_bandwidth_mibs << 20;
    if (mig_sender_start(&s->sender, s->fd, s->tls, cap, s->params.stall_timeout_ms, &s->m->cancel, text,
                         sizeof(text)) != 0)
        return source_fail(s, "internal", "%s", text);
    s->sender_started = true;
    return 0;
}

int source_flush(struct source *s)
{
    for (;;) {
        int r = mig_sender_flush(&s->sender, 50);
        if (r == 0)
            return source_tick(s);
        if (source_tick(s) != 0)
            return -1;
        if (r < 0)
            return source_fail(s, "transport", "sender failed");
    }
}

int source_small_frame(struct source *s, uint32_t type, const void *payload, size_t length)
{
    if (MIG_HEADER_SIZE + length > MIG_SEND_BUFFER_BYTES) {
        /* A machine state of many vCPUs: over several buffers, whole. */
        char text[600];
        if (mig_sender_queue_large_frame(&s->sender, type, s->seq, payload, length,
                                         s->params.stall_timeout_ms * 2u, text, sizeof(text)) != 0)
            return source_fail(s, "transport", "queueing the %zu-byte %s frame: %s", length,
                               mig_frame_type_name(type), text);
        s->seq++;
        return 0;
    }
    struct mig_buffer *b = source_buffer(s);
    if (b == NULL)
        return -1;
    if (!mig_buffer_append_frame(b, type, s->seq, payload, length)) {
        mig_sender_put_back(&s->sender, b);
        return source_fail(s, "internal", "%s frame of %zu bytes does not fit a send buffer",
                           mig_frame_type_name(type), length);
    }
    s->seq++;
    mig_sender_submit(&s->sender, b, s->seq);
    return 0;
}


int source_stream_submit(struct source_stream *st)
{
    if (st->buffer == NULL)
        return 0;
    struct source *s = st->s;
    if (mig_builder_empty(&st->builder)) {
        mig_sender_put_back(&s->sender, st->buffer);
    } else {
        mig_builder_close(&st->builder, s->seq++);     /* the sender thread fills it */
        s->progress.memory.zero_pages += st->builder.zero_pages;
        s->progress.memory.normal_pages += st->builder.normal_pages;
        s->pages_sent_total += st->builder.pages;
        mig_sender_submit(&s->sender, st->buffer, s->seq);
    }
    st->buffer = NULL;
    return 0;
}

static int source_stream_room(struct source_stream *st)
{
    if (st->buffer != NULL && mig_builder_has_room(&st->builder)) {
        if (++st->since_tick >= 512) {
            st->since_tick = 0;
            if (source_tick(st->s) != 0)
                return -1;
        }
        return 0;
    }
    source_stream_submit(st);
    st->buffer = source_buffer(st->s);
    if (st->buffer == NULL)
        return -1;
    mig_builder_begin(&st->builder, st->buffer);
    return 0;
}

int source_stream_page(struct source_stream *st, uint64_t page)
{
    if (source_stream_room(st) != 0)
        return -1;
    /* Write-protect the page (bitmap mode: CLEAR its chunk) before its
     * first read: the zero test just below, the sender's copy later. A
     * guest write after this is in a later take; one before it is what
     * those reads see. A no-op when the chunk is already cleared. */
    int r = dirty_log_protect_before_send(st->s->vm->dirty_log, page, 1);
    if (r != 0)
        return source_fail(st->s, "internal", "write-protecting page %" PRIu64 " before sending it: %s", page,
                           strerror(-r));
    uint64_t offset = page * MIG_PAGE_SIZE;
    mig_builder_add_page(&st->builder, offset, st->s->vm->memory.host + offset);
    return 0;
}

int source_stream_zero(struct source_stream *st, uint64_t first_page, uint64_t count)
{
    while (count > 0) {
        if (source_stream_room(st) != 0)
            return -1;
        uint64_t take = count > MIG_RUN_MAX_PAGES ? MIG_RUN_MAX_PAGES : count;
        mig_builder_add_zero(&st->builder, first_page * MIG_PAGE_SIZE, take);
        first_page += take;
        count -= take;
    }
    return 0;
}

static int source_iteration_marker(struct source *s, uint64_t iteration, uint64_t pages)
{
    uint8_t payload[MIG_ITERATION_SIZE];
    struct mig_iteration it = { .iteration = iteration, .pages = pages,
                                .transferred = s->sender_started ? mig_sender_bytes(&s->sender) : 0 };
    mig_iteration_encode(&it, payload);
    return source_small_frame(s, MIG_FRAME_ITERATION, payload, sizeof(payload));
}

/* Where the next data extent of guest RAM starts and ends, from page on
 * (vmm/memory_extents.h): *data_start == *data_end == RAM's pages when
 * only pages without data follow. false when the host cannot say (then
 * treat everything as data). */
static bool source_next_extent(const struct guest_memory *memory, uint64_t page, uint64_t *data_start,
                               uint64_t *data_end)
{
    struct guest_ram ram = guest_memory_ram(memory);
    return guest_ram_next_data(&ram, page, data_start, data_end) == 0;
}

/* Iteration 0: all RAM; memfd holes are zero runs without reading them.
 * Telling a hole from data is a read too: when tracking write-protects
 * late (bitmap mode), a hole found by lseek is protected and then looked
 * at again, and only what is still a hole after its protection goes as
 * zeros (a guest write before the protection made it data, one after it
 * is in a later take). Data pages are protected one by one as they are
 * planned (source_stream_page). */
/* Hybrid within the bulk pass (issue 17; migration/convergence.h, "hybrid,
 * within the bulk pass"). Called every few hundred pages of the bulk
 * pass with the next page it would send. Returns 1 to stop the pass there
 * and switch to post-copy, 0 to go on, -1 failed. migration.postcopy
 * switches at once; `auto` in ring mode, 100 ms into the pass, opens a
 * window with a take and closes it min(200 ms, downtime limit) later with
 * another: the second take's pages are what the guest dirtied in the
 * window. Both takes' pages go into s->bulk_carry: whatever the guest
 * dirtied after its page was sent must go again (the pass's end merges
 * them into the next pass's set, or the switch-over counts them stale). */
#define BULK_SETTLE_NS 100000000ull
#define BULK_WINDOW_MAX_NS 200000000ull
static int source_bulk_hybrid_check(struct source *s, uint64_t page)
{
    if (s->params.mode != MIG_MODE_HYBRID)
        return 0;
    uint64_t pages = guest_memory_pages(&s->vm->memory);
    if (atomic_load_explicit(&s->m->postcopy_requested, memory_order_acquire)) {
        fprintf(stderr, "ringvm: migration %" PRIu64 ": post-copy requested: switching within the bulk pass at page "
                "%" PRIu64 " of %" PRIu64 "\n", s->progress.id, page, pages);
        return 1;
    }
    if (!s->params.postcopy_after_auto || s->bulk_window_done ||
        dirty_log_mode(s->vm->dirty_log) != DIRTY_LOG_RING)
        return 0;
    uint64_t now = mig_mono_ns();
    if (s->bulk_window_start_ns == 0) {
        if (now - s->iteration_start_ns < BULK_SETTLE_NS)
            return 0;
        s->bulk_carry = page_bitmap_alloc(pages);
        if (s->bulk_carry == NULL)
            return source_fail(s, "internal", "out of memory for the bulk pass's dirty bitmap");
        int64_t taken = dirty_log_take_bitmap(s->vm->dirty_log, s->bulk_carry);
        if (taken < 0)
            return source_fail(s, "internal", "taking the dirty set within the bulk pass: %s", strerror((int)-taken));
        s->pages_taken += (uint64_t)taken;
        s->bulk_window_start_ns = mig_mono_ns();
        return 0;
    }
    uint64_t window_max = (uint64_t)s->params.downtime_ms * 1000000u;
    if (window_max > BULK_WINDOW_MAX_NS)
        window_max = BULK_WINDOW_MAX_NS;
    if (now - s->bulk_window_start_ns < window_max)
        return 0;
    int64_t taken = dirty_log_take_bitmap(s->vm->dirty_log, s->bulk_carry);
    uint64_t window_ns = mig_mono_ns() - s->bulk_window_start_ns;
    if (taken < 0)
        return source_fail(s, "internal", "taking the dirty set within the bulk pass: %s", strerror((int)-taken));
    s->pages_taken += (uint64_t)taken;
    s->bulk_window_done = true;
    /* The link's rate so far in this pass: what crossed it, not what
     * waits in the socket. */
    uint64_t elapsed = mig_mono_ns() - s->iteration_start_ns;
    uint64_t delivered = source_delivered_this_iteration(s, mig_socket_queued_bytes(s->fd));
    uint64_t bandwidth = elapsed > 0 ? (uint64_t)((unsigned __int128)delivered * 1000000000u / elapsed) : 0;
    bool due = mig_hybrid_window_exceeds((uint64_t)taken, window_ns, bandwidth, s->params.downtime_ms);
    fprintf(stderr, "ringvm: migration %" PRIu64 ": hybrid: the guest dirtied %" PRId64 " pages in %" PRIu64
            " ms of the bulk pass; the link moves %" PRIu64 " pages in the %" PRIu64 " ms downtime limit (%.1f MiB/s): "
            "%s\n", s->progress.id, taken, window_ns / 1000000u,
            (uint64_t)((unsigned __int128)bandwidth * s->params.downtime_ms / 1000u / MIG_PAGE_SIZE),
            (uint64_t)s->params.downtime_ms, (double)bandwidth / (1024.0 * 1024.0),
            due ? "no pass can converge without throttling, switching to post-copy now" : "staying in pre-copy");
    if (due)
        fprintf(stderr, "ringvm: migration %" PRIu64 ": switching within the bulk pass at page %" PRIu64 " of %" PRIu64
                "\n", s->progress.id, page, pages);
    return due ? 1 : 0;
}

/* The pages of s->bulk_carry, ascending, appended to s->pending; frees
 * the bitmap. The number of pages, or -ENOMEM. */
static int64_t source_pending_add_carry(struct source *s)
{
    uint64_t pages = guest_memory_pages(&s->vm->memory), words = page_bitmap_words(pages);
    uint64_t count = 0;
    for (uint64_t w = 0; w < words; w++)
        count += (uint64_t)__builtin_popcountll(s->bulk_carry[w]);
    if (s->pending.count + count > s->pending.capacity) {
        uint64_t *grown = realloc(s->pending.pages, (s->pending.count + count) * sizeof(uint64_t));
        if (grown == NULL)
            return -ENOMEM;
        s->pending.pages = grown;
        s->pending.capacity = s->pending.count + count;
    }
    for (uint64_t w = 0; w < words; w++)
        for (uint64_t bits = s->bulk_carry[w]; bits != 0; bits &= bits - 1)
            s->pending.pages[s->pending.count++] = w * 64 + (uint64_t)__builtin_ctzll(bits);
    free(s->bulk_carry);
    s->bulk_carry = NULL;
    return (int64_t)count;
}

static int source_send_all(struct source *s)
{
    struct guest_memory *memory = &s->vm->memory;
    uint64_t pages = guest_memory_pages(memory);
    bool protect_late = dirty_log_protect_unit_pages(s->vm->dirty_log) != 0;
    struct source_stream st = { .s = s };
    uint64_t page = 0;
    bool extents = true;
    s->progress.memory.remaining = memory->size;
    while (page < pages) {
        uint64_t data_start = page, data_end = pages;
        if (extents && !source_next_extent(memory, page, &data_start, &data_end))
            extents = false;
        if (!extents) {
            data_start = page;
            data_end = pages;
        }
        if (data_start > page && protect_late) {
            int r = dirty_log_protect_before_send(s->vm->dirty_log, page, data_start - page);
            if (r != 0)
                return source_fail(s, "internal", "write-protecting pages %" PRIu64 "..%" PRIu64
                                   " before sending them: %s", page, data_start - 1, strerror(-r));
            uint64_t again_start, again_end;
            if (!source_next_extent(memory, page, &again_start, &again_end)) {
                extents = false;
                data_start = page;      /* read it all: it is protected now */
                data_end = pages;
            } else if (again_start < data_start) {
                /* Written meanwhile: [page, again_start) is still a hole;
                 * the rest is looked at again from there. */
                data_start = data_end = again_start;
            }
        }
        if (data_start > page && source_stream_zero(&st, page, data_start - page) != 0)
            return -1;
        for (uint64_t p = data_start; p < data_end; p++) {
            if ((p & 255) == 0) {
                int due = source_bulk_hybrid_check(s, p);
                if (due != 0) {
                    source_stream_submit(&st);
                    if (due < 0)
                        return -1;
                    s->bulk_stopped = true;
                    s->bulk_end_page = p;
                    return 1;
                }
            }
            if (source_stream_page(&st, p) != 0)
                return -1;
            s->progress.memory.remaining = (pages - p) * MIG_PAGE_SIZE;
        }
        page = data_end;
    }
    source_stream_submit(&st);
    return 0;
}

/* Pages protected at once ahead of the sender (ring mode with late reset:
 * one KVM_RESET_DIRTY_RINGS per window at most; 1 MiB of a 125 MiB/s link
 * is 8 ms of protection ahead of the read). */
#define PROTECT_WINDOW_PAGES 256u

static int source_send_pending(struct source *s)
{
    struct source_stream st = { .s = s };
    s->pending_sent = 0;
    for (uint64_t i = 0; i < s->pending.count; i++) {
        if (i % PROTECT_WINDOW_PAGES == 0) {
            uint64_t window = s->pending.count - i < PROTECT_WINDOW_PAGES ? s->pending.count - i
                                                                           : PROTECT_WINDOW_PAGES;
            int r = dirty_log_protect_pages(s->vm->dirty_log, &s->pending.pages[i], window);
            if (r != 0)
                return source_fail(s, "internal", "write-protecting %" PRIu64 " pages from page %" PRIu64
                                   " before sending them: %s", window, s->pending.pages[i], strerror(-r));
        }
        if (source_stream_page(&st, s->pending.pages[i]) != 0)
            return -1;
        s->pending_sent = i + 1;
    }
    source_stream_submit(&st);
    return 0;
}

/* vcpu_set_throttle takes effect at the vCPU's next exit; a ring-3 guest
 * that never exits would never see it, so a throttle switched on from 0
 * also kicks the vCPU (the loop then arms its timeslice timer). */
static void throttle_vcpu(struct vcpu *vcpu, int percent)
{
    int old = vcpu_get_throttle(vcpu);
    vcpu_set_throttle(vcpu, percent);
    if (old == 0 && percent > 0)
        vcpu_kick(vcpu);
}

static void set_all_throttles(struct source *s, int percent)
{
    for (unsigned i = 0; i < s->vm->config.vcpu_count; i++)
        throttle_vcpu(&s->vm->vcpus[i], percent);
}

/*
 * dirty-limit, once per iteration. Per-vCPU dirty rates come from the
 * rings (entries harvested per vCPU since the last call); the iteration's
 * unique dirty pages/s (the take) are split in those proportions, so
 * d_i = D * h_i / H is vCPU i's share of what must be re-sent. The pure
 * rule (convergence.c) then gives each vCPU the throttle that brings d_i
 * to its quota assuming d scales with run time. When it does not (the
 * vCPU still covers its whole working set while throttled: d did not drop
 * by a fifth although the throttle rose), the excess ratio is applied
 * twice so the loop closes in a few iterations instead of halving slowly.
 */
static void dirty_limit_apply(struct source *s, uint64_t dirty_pages, uint64_t dur_ns)
{
    struct dirty_log_stats *stats = malloc(sizeof(*stats));
    if (stats == NULL)
        return;
    dirty_log_get_stats(s->vm->dirty_log, stats);
    unsigned count = s->vm->config.vcpu_count;
    if (count > MIG_MAX_VCPUS)
        count = MIG_MAX_VCPUS;
    if (count > stats->vcpu_stats_count)
        count = stats->vcpu_stats_count;
    uint64_t harvested[MIG_MAX_VCPUS], total = 0;
    for (unsigned i = 0; i < count; i++) {
        harvested[i] = stats->vcpu[i].pages - s->dl_last_pages[i];
        s->dl_last_pages[i] = stats->vcpu[i].pages;
        total += harvested[i];
    }
    free(stats);
    bool first = s->dl_last_ns == 0;
    s->dl_last_ns = mig_mono_ns();
    if (first || dur_ns == 0)
        return;     /* baseline only */
    uint64_t unique_pps = (uint64_t)((unsigned __int128)dirty_pages * 1000000000u / dur_ns);
    uint64_t rates[MIG_MAX_VCPUS];
    int current[MIG_MAX_VCPUS], out[MIG_MAX_VCPUS];
    uint64_t quota[MIG_MAX_VCPUS];
    for (unsigned i = 0; i < count; i++) {
        rates[i] = total > 0 ? (uint64_t)((unsigned __int128)unique_pps * harvested[i] / total) : 0;
        current[i] = vcpu_get_throttle(&s->vm->vcpus[i]);
    }
    uint64_t bandwidth = s->bandwidth;
    if (s->params.max_bandwidth_mibs != 0 && (bandwidth == 0 || bandwidth > s->params.max_bandwidth_mibs << 20))
        bandwidth = s->params.max_bandwidth_mibs << 20;
    if (bandwidth == 0)
        return;
    struct mig_dirty_limit_params params = {
        .bandwidth_pps = bandwidth / MIG_PAGE_SIZE,
        .margin_percent = s->params.dirty_limit_margin,
        .idle_pps = bandwidth / MIG_PAGE_SIZE / 50 > 256 ? bandwidth / MIG_PAGE_SIZE / 50 : 256,
        .throttle_max = s->params.throttle.max,
    };
    mig_dirty_limit_compute(count, rates, current, &params, out, quota);
    bool again = false;
    uint64_t fed[MIG_MAX_VCPUS];
    for (unsigned i = 0; i < count; i++) {
        fed[i] = rates[i];
        bool saturated = current[i] > s->dl_last_throttle[i] && rates[i] * 5 > s->dl_last_rate[i] * 4;
        if (saturated && quota[i] != UINT64_MAX && quota[i] > 0 && quota[i] < rates[i]) {
            fed[i] = (uint64_t)((unsigned __int128)rates[i] * rates[i] / quota[i]);
            again = true;
        }
    }
    if (again)
        mig_dirty_limit_compute(count, fed, current, &params, out, quota);
    for (unsigned i = 0; i < count; i++) {
        s->dl_last_rate[i] = rates[i];
        s->dl_last_throttle[i] = current[i];
        throttle_vcpu(&s->vm->vcpus[i], out[i]);
    }
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace dirty-limit: bw %" PRIu64 " pps, unique %" PRIu64 " pps, rates %"
                PRIu64 "/%" PRIu64 " -> throttle %d/%d%s\n", params.bandwidth_pps, unique_pps, rates[0],
                count > 1 ? rates[1] : 0, out[0], count > 1 ? out[1] : 0, again ? " (saturated)" : "");
}

/* Reads the destination's answer to a request of the setup (`phase`:
 * "handshake", "switch-over probe"): 0 with the frame in header/reply, or
 * -1 having failed the migration: cancelled, the link (transport), or the
 * destination's ERROR (config-mismatch or destination-error). The caller
 * checks the frame's type. */
int source_read_answer(struct source *s, const char *phase, struct mig_frame_header *header,
                              uint8_t *reply, size_t reply_size)
{
    char text[600];
    if (mig_read_small_frame(&s->input, s->peer_seq++, header, reply, reply_size, text, sizeof(text)) != 0) {
        if (atomic_load_explicit(&s->m->cancel, memory_order_acquire)) {
            s->cancelled = true;
            return source_fail(s, "cancelled", "cancelled by migration.cancel");
        }
        return source_fail(s, "transport", "%s: %s", phase, text);
    }
    if (header->type == MIG_FRAME_ERROR) {
        uint32_t code;
        char message[MIG_ERROR_MAX_MESSAGE + 1];
        mig_error_decode(reply, (size_t)header->length, &code, message, sizeof(message));
        return source_fail(s, code == MIG_ERR_CONFIG ? "config-mismatch" : "destination-error",
                           "destination refused: %s", message);
    }
    return 0;
}

/* An answer of the expected type (anything else fails the stream, an
 * ERROR says why the destination refused). */
int source_read_expected(struct source *s, const char *phase, const char *what, uint32_t expected,
                         struct mig_frame_header *header, uint8_t *reply, size_t reply_size)
{
    if (source_read_answer(s, phase, header, reply, reply_size) != 0)
        return -1;
    if (header->type != expected)
        return source_fail(s, "stream", "destination answered %s with a %s frame", what,
                           mig_frame_type_name(header->type));
    return 0;
}

int source_handshake(struct source *s)
{
    struct vm *vm = s->vm;
    struct mig_hello hello;
    memset(&hello, 0, sizeof(hello));
    hello.version = MIG_PROTOCOL_VERSION;
    hello.page_size = MIG_PAGE_SIZE;
    hello.memory_bytes = vm->memory.size;
    hello.vcpu_count = vm->config.vcpu_count;
    hello.slot_count = vm->memory.slot_count;
    for (unsigned i = 0; i < vm->memory.slot_count && i < MIG_MAX_SLOTS; i++) {
        hello.slots[i].gpa = vm->memory.slots[i].gpa;
        hello.slots[i].size = vm->memory.slots[i].size;
        hello.slots[i].ram_offset = vm->memory.slots[i].ram_offset;
    }
    hello.state_format = MIG_STATE_FORMAT;
    hello.features = MIG_FEATURE_ZERO_PAGES | (s->params.verify_digest ? MIG_FEATURE_DIGEST : 0);
    hello.abi_version = RINGVM_ABI_VERSION;

    uint8_t frame[MIG_HEADER_SIZE + MIG_HELLO_SIZE], payload[MIG_HELLO_SIZE];
    mig_hello_encode(&hello, payload);
    size_t length = mig_frame_encode(frame, MIG_FRAME_HELLO, s->seq++, payload, sizeof(payload));
    char text[600];
    if (mig_io_write(&s->io, frame, length, text, sizeof(text)) != 0)
        return source_fail(s, s->cancelled ? "cancelled" : "transport", "%s", text);
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header header;
    if (source_read_expected(s, "handshake", "the hello", MIG_FRAME_HELLO_ACK, &header, reply, sizeof(reply)) != 0)
        return -1;
    struct mig_hello peer;
    if (mig_hello_decode(reply, (size_t)header.length, &peer, text, sizeof(text)) != 0)
        return source_fail(s, "stream", "destination hello: %s", text);
    if (mig_hello_compare(&hello, &peer, true, text, sizeof(text)) != 0)
        return source_fail(s, "config-mismatch", "configuration mismatch: %s", text);
    s->peer_probes = (peer.features & MIG_FEATURE_SWITCH_PROBE) != 0;
    s->peer_postcopy = (peer.features & MIG_FEATURE_POSTCOPY) != 0;
    s->peer_early_discard = s->peer_postcopy && (peer.features & MIG_FEATURE_EARLY_DISCARD) != 0;
    return 0;
}

/* Remembers the probes' counters at the start of an iteration (when
 * eBPF probes run: ringvm --bpf or bpf.start). */
static void source_bpf_mark(struct source *s)
{
    struct bpf_probes *probes = atomic_load_explicit(&s->vm->bpf_probes, memory_order_acquire);
    s->bpf_marked = probes != NULL && bpf_probes_running(probes) && bpf_probes_mark(probes, &s->bpf_mark) == 0;
}

/* Adds the iteration's kick latency and ring-full exits, then marks the
 * start of the next iteration. */
static void source_bpf_iteration(struct source *s, struct mig_iteration_record *r)
{
    struct bpf_probes *probes = atomic_load_explicit(&s->vm->bpf_probes, memory_order_acquire);
    struct bpf_probes_iteration iteration;
    if (s->bpf_marked && probes != NULL && bpf_probes_since_mark(probes, &s->bpf_mark, &iteration) == 0) {
        r->has_bpf = true;
        r->kicks = iteration.kicks;
        r->kick_p50_ns = iteration.kick_p50_ns;
        r->kick_p99_ns = iteration.kick_p99_ns;
        r->ring_full_exits = iteration.ring_full_exits;
    }
    source_bpf_mark(s);
}

static void source_log_iteration(struct source *s, struct mig_iteration_record *r)
{
    source_bpf_iteration(s, r);
    char line[256];
    mig_iteration_format(r, line, sizeof(line));
    fprintf(stderr, "ringvm: migration: %s\n", line);
    mig_progress_add_iteration(&s->progress, r);
    json_t *data = mig_iteration_to_json(r);
    if (data != NULL)
        json_object_set_new(data, "id", json_integer((json_int_t)s->progress.id));
    mig_publish_event(s->server, MIG_EVENT_ITERATION, data);
}

/* Ring mode, after each iteration's take: did the rings recycle entries
 * since the last look (a harvester's threshold reset, a ring-full exit)?
 * Then pages were write-protected again before the sender reached them and
 * the guest faults on every write it makes to them: tracking costs it more
 * than it must. Not refused, not hidden: counted in progress, and said once
 * per migration (stderr and a migration.warning event), with what serves
 * such a guest better (issue 15, item 4; docs/benchmarks.md). */
static void source_check_recycling(struct source *s, bool baseline, struct mig_iteration_record *record)
{
    if (dirty_log_mode(s->vm->dirty_log) != DIRTY_LOG_RING)
        return;
    struct dirty_log_stats *stats = malloc(sizeof(*stats));
    if (stats == NULL)
        return;
    dirty_log_get_stats(s->vm->dirty_log, stats);
    if (baseline) {
        s->entries_at_hold = stats->pages;
        s->entries_at_iteration = stats->pages;
    }
    s->progress.recycling.entries_harvested = stats->pages - s->entries_at_hold;
    s->progress.recycling.pages_taken = s->pages_taken;
    uint64_t resets = stats->harvester_resets - s->recycling_seen_resets;
    uint64_t full_exits = stats->ring_full_exits - s->recycling_seen_full_exits;
    if (record != NULL) {
        record->has_ring = true;
        record->ring_entries = stats->pages - s->entries_at_iteration;
        record->ring_recycles = resets + full_exits;
        s->entries_at_iteration = stats->pages;
    }
    s->recycling_seen_resets = stats->harvester_resets;
    s->recycling_seen_full_exits = stats->ring_full_exits;
    uint32_t entries = stats->ring_entries;
    free(stats);
    if (baseline || (resets == 0 && full_exits == 0))
        return;
    bool first = s->progress.recycling.iterations == 0;
    s->progress.recycling.iterations++;
    s->progress.recycling.harvester_resets += resets;
    s->progress.recycling.ring_full_exits += full_exits;
    if (!first)
        return;
    char message[512];
    snprintf(message, sizeof(message),
             "the dirty rings are recycling (%" PRIu64 " harvester resets, %" PRIu64 " ring-full exits in iteration %"
             PRIu64 "): a vCPU writes more distinct pages per pass than its %" PRIu32 "-entry ring holds, so pages "
             "are write-protected again before they are sent and the guest faults on every write; bitmap tracking "
             "(--dirty-log bitmap) or post-copy may serve this guest better", resets, full_exits,
             s->progress.iteration, entries);
    fprintf(stderr, "ringvm: migration %" PRIu64 ": %s\n", s->progress.id, message);
    mig_publish_event(s->server, MIG_EVENT_WARNING,
                      json_pack("{s:I, s:s, s:s}", "id", (json_int_t)s->progress.id, "code", "dirty-rings-recycling",
                                "message", message));
}

/* The source's wait for the ACK (struct mig_input read_some for
 * mig_read_reply): what the socket has, waiting in 50 ms polls while the
 * snapshot stays fresh, and giving up at deadline_ns (CLOCK_MONOTONIC, the
 * clock mig_read_reply uses by default), so the wait never outlasts it.
 * Owned by the migration thread for the duration of the wait. */
struct ack_wait {
    struct source *s;
    uint64_t deadline_ns;
};

static ssize_t ack_read_some(void *ctx, void *data, size_t capacity, char *error, size_t error_size)
{
    struct ack_wait *wait = ctx;
    for (;;) {
        /* Under TLS a record that has begun is waited for inside the read,
         * at most its stall timeout: never past the deadline. */
        struct mig_io io = wait->s->io;
        uint64_t before = mig_mono_ns();
        uint64_t until_ms = before < wait->deadline_ns ? (wait->deadline_ns - before + 999999u) / 1000000u : 1;
        if (io.stall_ms == 0 || until_ms < io.stall_ms)
            io.stall_ms = (unsigned)until_ms;
        ssize_t got = mig_io_recv_some(&io, data, capacity, error, error_size);
        if (got != MIG_IO_AGAIN)
            return got;
        uint64_t now = mig_mono_ns();
        if (now >= wait->deadline_ns) {
            snprintf(error, error_size, "receiving from destination: deadline passed");
            return -1;
        }
        source_publish(wait->s);
        uint64_t left_ms = (wait->deadline_ns - now + 999999u) / 1000000u;
        if (mig_io_readable(&wait->s->io, left_ms < 50 ? (unsigned)left_ms : 50u) < 0) {
            snprintf(error, error_size, "poll(destination): %s", strerror(errno));
            return -1;
        }
    }
}


int source_capture_state(struct source *s, struct captured_state *out)
{
    char error[512];
    memset(out, 0, sizeof(*out));
    struct machine_state state;
    if (machine_state_vm_capture(s->vm, &state, error, sizeof(error)) != 0)
        return source_fail(s, "internal", "capturing the machine state: %s", error);
    size_t size = 0;
    uint8_t *bytes = machine_state_encode_alloc(&state, &size, error, sizeof(error));
    machine_state_free(&state);
    if (bytes == NULL)
        return source_fail(s, "internal", "encoding the machine state: %s", error);
    *out = (struct captured_state){ .bytes = bytes, .size = size };
    return 0;
}

/* Queues the captured state: one machine-state frame. */
int source_send_state(struct source *s, const struct captured_state *state)
{
    return source_small_frame(s, MIG_FRAME_MACHINE_STATE, state->bytes, state->size);
}

/* Queues DEVICE_STATE (the vCPUs are paused). */
int source_send_device_state(struct source *s)
{
    struct vm *vm = s->vm;
    struct mig_device_state device;
    memset(&device, 0, sizeof(device));
    device.version = 2;
    device.vcpu_count = vm->config.vcpu_count;
    workload_spec_format(&vm->config.workload, device.workload, sizeof(device.workload));
    pthread_mutex_lock(&vm->serial.lock);
    device.serial_lcr = vm->serial.line_control;
    pthread_mutex_unlock(&vm->serial.lock);
    device.last_exception_vector = atomic_load_explicit(&vm->last_exception_vector, memory_order_relaxed);
    device.ledger_mismatches = atomic_load_explicit(&vm->ledger_mismatches, memory_order_relaxed);
    for (unsigned i = 0; i < vm->config.vcpu_count && i < MIG_MAX_VCPUS; i++)
        device.guest_phase[i] = (uint32_t)atomic_load_explicit(&vm->vcpus[i].guest_phase_published,
                                                               memory_order_acquire);
    uint8_t device_bytes[MIG_DEVICE_STATE_SIZE];
    mig_device_state_encode(&device, device_bytes);
    return source_small_frame(s, MIG_FRAME_DEVICE_STATE, device_bytes, sizeof(device_bytes));
}

/* Bytes on the wire of the switch-over's last frames: SWITCH_OVER (to a
 * destination that takes it) and END. */
static uint64_t switch_over_tail_bytes(bool peer_probes)
{
    return (peer_probes ? MIG_HEADER_SIZE + MIG_SWITCH_OVER_SIZE : 0) + MIG_HEADER_SIZE + MIG_END_SIZE;
}

/* Bytes on the wire of everything the switch-over sends besides pages:
 * the state frames, DEVICE_STATE and the tail (a probing destination's). */
static uint64_t switch_over_frame_bytes(const struct captured_state *state)
{
    return MIG_HEADER_SIZE + state->size + MIG_HEADER_SIZE + MIG_DEVICE_STATE_SIZE + switch_over_tail_bytes(true);
}

/* The rate the expected downtime assumes for the bytes after the pause.
 * The stop-and-copy runs uncapped by default, so on a unix: stream that
 * is the rate the last iteration kept while the live phase's cap did not
 * hold it back (unpaced_bandwidth: the sender's own copying and writing,
 * the destination keeping up, measured with the guest still taking its
 * share of the cores, which it no longer does once paused). Over TCP the
 * measured rate: a link slower than the sender stays hidden under a cap
 * (stream_is_the_link). At most the switch-over cap where one is set.
 * Counting those bytes at the capped rate instead (until 2026-12-05)
 * overestimated the downtime by the cap's factor: a 1 GiB Linux guest at
 * 1024 MiB/s ran a second pass of 412 MiB for an expected 421 ms when the
 * stop-and-copy would have taken ~130 ms (docs/benchmarks-vs-qemu.md). */
static uint64_t source_switch_over_bandwidth(const struct source *s)
{
    uint64_t cap = s->params.switch_over_bandwidth_mibs << 20;
    if (cap != 0 && (s->unpaced_bandwidth == 0 || s->unpaced_bandwidth > cap))
        return cap;
    return s->unpaced_bandwidth;
}

/* The switch-over part of the expected downtime (switch_over.h), saying
 * once why a learned cost is left out. */
static uint64_t source_switch_over_budget_us(struct source *s)
{
    bool ignored = false;
    uint64_t budget = mig_switch_over_budget_us(&s->switch_over, s->params.downtime_ms, &ignored);
    s->progress.switch_over.learned_ignored = ignored;
    if (ignored && !s->learned_ignored_said) {
        s->learned_ignored_said = true;
        fprintf(stderr, "ringvm: migration %" PRIu64 ": the learned switch-over cost (%" PRIu64 " us from %" PRIu32
                " switch-overs) is at or above downtime_ms=%" PRIu64 ": left out, the dry run (%" PRIu64
                " us) stands in for it\n", s->progress.id, s->switch_over.learned_us, s->switch_over.learned_count,
                s->params.downtime_ms, s->switch_over.dry_run_us);
    }
    return budget;
}

/*
 * The switch-over's dry run (migration/switch_over.h), right after the
 * handshake, before the sender thread starts (the stream is ours): pause
 * the vCPUs as the switch-over does, capture and encode their state,
 * resume, send the state in a PROBE frame, and wait for the destination's
 * PROBE_ACK (it decodes the state as END's restore would). The whole round
 * is the dry run's cost. The guest pauses once, for as long as the real
 * switch-over's pause and capture take (probe_pause_us). A guest the
 * operator paused stays paused.
 */
static int source_probe_switch_over(struct source *s)
{
    struct vm *vm = s->vm;
    uint64_t started = mig_mono_ns();
    pthread_mutex_lock(&vm->control_lock);
    bool user_paused = vm_get_state(vm) == VM_STATE_PAUSED;
    int r = vm_pause_vcpus(vm);
    struct captured_state state = { 0 };
    int captured = r == 0 ? source_capture_state(s, &state) : -1;
    if (r == 0 && !user_paused)
        vm_resume_vcpus(vm);     /* a failed pause released the vCPUs itself */
    pthread_mutex_unlock(&vm->control_lock);
    uint64_t resumed = mig_mono_ns();
    if (r != 0) {
        if (r == -ECANCELED) {
            s->cancelled = true;
            return source_fail(s, "shutdown", "the VM is shutting down");
        }
        return source_fail(s, "internal", "switch-over probe: could not pause the vCPUs: %s", strerror(-r));
    }
    if (captured != 0)
        return -1;
    s->state_bytes = switch_over_frame_bytes(&state);

    size_t length = MIG_PROBE_HEADER_SIZE + state.size;
    uint8_t *frame = malloc(MIG_HEADER_SIZE + length);
    if (frame == NULL) {
        free(state.bytes);
        return source_fail(s, "internal", "out of memory for a %zu-byte probe", length);
    }
    struct mig_probe_header header = { .kind = MIG_PROBE_MACHINE_STATE, .count = 0 };
    mig_probe_header_encode(&header, frame + MIG_HEADER_SIZE);
    memcpy(frame + MIG_HEADER_SIZE + MIG_PROBE_HEADER_SIZE, state.bytes, state.size);
    free(state.bytes);
    mig_header_encode(frame, MIG_FRAME_PROBE, s->seq++, length);
    mig_header_seal(frame, frame + MIG_HEADER_SIZE, length);
    char text[600];
    r = mig_io_write(&s->io, frame, MIG_HEADER_SIZE + length, text, sizeof(text));
    free(frame);
    if (r != 0)
        return source_fail(s, s->cancelled ? "cancelled" : "transport", "switch-over probe: %s", text);

    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header reply_header;
    if (source_read_answer(s, "switch-over probe", &reply_header, reply, sizeof(reply)) != 0)
        return -1;
    if (reply_header.type != MIG_FRAME_PROBE_ACK)
        return source_fail(s, "stream", "destination answered the switch-over probe with a %s frame",
                           mig_frame_type_name(reply_header.type));
    struct mig_probe_ack ack;
    if (mig_probe_ack_decode(reply, &ack, text, sizeof(text)) != 0)
        return source_fail(s, "stream", "destination probe-ack: %s", text);
    if (ack.status != MIG_PROBE_DECODED)
        fprintf(stderr, "ringvm: migration %" PRIu64 ": the destination could not decode the switch-over probe's "
                "state (its stderr says why); continuing, the real state is checked at the switch-over\n",
                s->progress.id);
    uint64_t ended = mig_mono_ns();
    struct mig_tcp_link link = { 0 };
    mig_socket_tcp_link(s->fd, &link);
    uint64_t srtt_us = link.srtt_us;   /* a unix socket has none: no cap */
    bool capped = false;
    s->switch_over.dry_run_us = mig_switch_over_dry_run_us((resumed - started + 999u) / 1000u,
                                                           (ended - resumed + 999u) / 1000u,
                                                           (ack.destination_ns + 999u) / 1000u, srtt_us, &capped);
    if (capped)
        fprintf(stderr, "ringvm: migration %" PRIu64 ": the switch-over probe's round took %" PRIu64 " ms on a link "
                "whose smoothed round trip is %" PRIu64 " us (a retransmission?): counted as 4 round trips\n",
                s->progress.id, (ended - resumed) / 1000000u, srtt_us);
    s->progress.switch_over.dry_run_us = s->switch_over.dry_run_us;
    s->progress.switch_over.probe_pause_us = (resumed - started + 999u) / 1000u;
    s->progress.switch_over.probe_destination_us = (ack.destination_ns + 999u) / 1000u;
    s->progress.switch_over.used_us = source_switch_over_budget_us(s);
    s->progress.state_bytes = s->state_bytes;
    return 0;
}

/*
 * Test-only (tests/test_faults.c, docs/reliability.md); inert unless
 * RINGVM_FAULT_INJECT=no-switch-over: the source then never switches over
 * on its own (a forced switch at timeout_s still happens) until the file
 * named by RINGVM_FAULT_RELEASE exists, so a test can cancel "in the
 * iterations" whatever the guest's dirty rate: a guest that went quiet for
 * one short iteration would otherwise converge even at downtime_ms 1.
 */
static bool source_switch_over_held(void)
{
    const char *wanted = getenv("RINGVM_FAULT_INJECT");
    if (wanted == NULL || strcmp(wanted, "no-switch-over") != 0)
        return false;
    const char *release = getenv("RINGVM_FAULT_RELEASE");
    return release == NULL || access(release, F_OK) != 0;
}

/* Stop-and-copy's pages: the final dirty sync, merged with what the last
 * iteration left pending, sent after one more iteration marker. */
static int source_final_pages(struct source *s)
{
    struct vm *vm = s->vm;
    int r = dirty_log_final_sync(vm->dirty_log);
    if (r != 0)
        return source_fail(s, "internal", "final dirty sync: %s", strerror(-r));
    mig_trace("src final sync done");
    struct dirty_pages extra;
    dirty_pages_init(&extra);
    int64_t taken = dirty_log_take(vm->dirty_log, &extra);
    if (taken < 0) {
        dirty_pages_free(&extra);
        return source_fail(s, "internal", "final dirty set: %s", strerror((int)-taken));
    }
    /* Merge the pending set (not sent yet) with the final one. */
    struct dirty_pages merged;
    dirty_pages_init(&merged);
    uint64_t total = s->pending.count + extra.count;
    merged.pages = malloc((total ? total : 1) * sizeof(uint64_t));
    if (merged.pages == NULL) {
        dirty_pages_free(&extra);
        return source_fail(s, "internal", "out of memory merging dirty sets");
    }
    merged.capacity = total ? total : 1;
    uint64_t a = 0, b = 0;
    while (a < s->pending.count || b < extra.count) {
        uint64_t next;
        if (b >= extra.count || (a < s->pending.count && s->pending.pages[a] < extra.pages[b]))
            next = s->pending.pages[a++];
        else if (a >= s->pending.count || extra.pages[b] < s->pending.pages[a])
            next = extra.pages[b++];
        else {
            next = s->pending.pages[a++];
            b++;
        }
        merged.pages[merged.count++] = next;
    }
    uint64_t extra_count = extra.count;
    s->pages_taken += extra_count;
    source_check_recycling(s, false, NULL);
    dirty_pages_free(&extra);
    dirty_pages_free(&s->pending);
    s->pending = merged;
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace final set: %" PRIu64 " pending + %" PRIu64 " final = %" PRIu64
                " pages\n", total - extra_count, extra_count, merged.count);
    s->progress.iteration++;
    s->progress.memory.remaining = s->pending.count * MIG_PAGE_SIZE;
    s->buffer_wait_ns = 0;
    r = source_iteration_marker(s, s->progress.iteration, s->pending.count);
    if (r == 0)
        r = source_send_pending(s);
    if (r != 0)
        return -1;
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace final pages: waited %" PRIu64 " ms for buffers, sender busy %"
                PRIu64 " ms total\n", s->buffer_wait_ns / 1000000u,
                atomic_load_explicit(&s->sender.send_ns, memory_order_relaxed) / 1000000u);
    return 0;
}

/* The ACK: the destination restores, verifies and resumes first (in
 * post-copy: it holds every page). 0 with *ack, or -1 (failed; from END on
 * every reply-shaped failure keeps the source paused). */
int source_read_ack(struct source *s, struct mig_end *ack)
{
    /* The ACK: the destination restores, verifies and resumes first. The
     * whole reply must be in by a hard deadline (issue 16, item 1): we hold
     * control_lock with the vCPUs paused, and a destination trickling
     * bytes must not keep every API command queued behind us. */
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header header;
    char text[600];
    unsigned ack_ms = s->params.stall_timeout_ms * 2 > 10000 ? s->params.stall_timeout_ms * 2 : 10000;
    uint64_t ack_started = mig_mono_ns();
    struct ack_wait wait = { .s = s, .deadline_ns = ack_started + (uint64_t)ack_ms * 1000000u };
    /* No stop flag: past END the destination may already run the guest,
     * so neither cancel nor shutdown may cut the wait short. */
    struct mig_input ack_input = { .read_some = ack_read_some, .ctx = &wait };
    size_t received = 0;
    int got = mig_read_reply(&ack_input, s->peer_seq, ack_started, wait.deadline_ns, "destination", &header, reply,
                             sizeof(reply), &received, text, sizeof(text));
    if (got == MIG_REPLY_LATE && received > 0) {
        /* Part of a reply: the destination is alive and answering END,
         * and it answers ACK only after resuming the guest. Resuming here
         * could run it twice. */
        s->keep_paused = true;
        return source_fail(s, "outcome-unknown",
                           "waiting-ack: %s: it may be running the guest; the source stays paused (vm.resume here "
                           "only if the destination does not run it)", text);
    }
    if (got == MIG_REPLY_LATE) {
        /* Fix (issue 7, link cut after the last byte): the destination
         * resumes the guest before it sends the ACK, so a missing ACK
         * (no reply, connection not closed) does not mean the guest is
         * not running there: resuming here could run it on both sides.
         * Only when part of the stream never left this host (TCP bytes
         * not sent even once: SIOCOUTQNSD > 0) can the destination not
         * have END; then resuming is safe. Otherwise stay paused (VM
         * state paused) and say so; the operator resumes only after
         * checking the destination. (A TCP-level "unacked" count cannot
         * decide it: the destination may have read END and its ACK
         * segment may be what the cut link dropped.) */
        int not_sent = 0;
        if (!(ioctl(s->fd, SIOCOUTQNSD, &not_sent) == 0 && not_sent > 0)) {
            s->keep_paused = true;
            return source_fail(s, "outcome-unknown",
                               "no ack from the destination for %u ms after the whole stream was sent: it may "
                               "be running the guest; the source stays paused (vm.resume here only if the "
                               "destination does not run it)", ack_ms);
        }
        return source_fail(s, "transport", "waiting for the destination's ack: nothing for %u ms", ack_ms);
    }
    if (got != 0 && received > 0) {
        /* Bytes of a reply that then failed its checksum, sequence or
         * length check (or broke off): ACK-shaped, and the destination
         * sends ACK only after resuming the guest (issue 16, item 4). */
        s->keep_paused = true;
        return source_fail(s, "outcome-unknown",
                           "waiting-ack: the destination's reply is unreadable (%s): it may be running the "
                           "guest; the source stays paused (vm.resume here only if the destination does not run "
                           "it)", text);
    }
    if (got != 0 && s->local) {
        /* Over a network the destination's RAM is its own copy, so a
         * destination gone without an ack leaves the source's RAM as it
         * was. In a local hand-over the RAM is shared: a destination that
         * resumed the guest and died before its ack has changed it, and
         * resuming here would run the old vCPU state on newer RAM. */
        s->keep_paused = true;
        return source_fail(s, "outcome-unknown",
                           "waiting for the destination's ack: %s: in a local hand-over it may have run the guest "
                           "on the shared RAM; the source stays paused (vm.resume here only if the destination "
                           "never resumed it)", text);
    }
    if (got != 0)
        return source_fail(s, "transport", "waiting for the destination's ack: %s", text);
    s->peer_seq++;
    if (header.type == MIG_FRAME_ERROR) {
        uint32_t code;
        char message[MIG_ERROR_MAX_MESSAGE + 1];
        mig_error_decode(reply, (size_t)header.length, &code, message, sizeof(message));
        return source_fail(s, code == MIG_ERR_DIGEST ? "digest-mismatch" : "destination-error",
                           "destination refused: %s", message);
    }
    /* From here on the destination answered END with something other
     * than a refusal: it may run the guest, so the source never resumes on
     * its own (the operator decides, docs/reliability.md). */
    if (header.type != MIG_FRAME_ACK) {
        s->keep_paused = true;
        return source_fail(s, "outcome-unknown", "destination answered the end with a %s frame: it may be running "
                           "the guest; the source stays paused (vm.resume here only if the destination does not "
                           "run it)", mig_frame_type_name(header.type));
    }
    if (mig_end_decode(reply, ack, text, sizeof(text)) != 0) {
        s->keep_paused = true;
        return source_fail(s, "outcome-unknown", "destination ack: %s: it may be running the guest; the source "
                           "stays paused (vm.resume here only if the destination does not run it)", text);
    }
    return 0;
}

/* Just before the frame after which the destination may run the guest
 * (END, POSTCOPY_SWITCH): a cancel and this point are decided under the
 * manager's lock, so exactly one wins; from here on migration.cancel is
 * refused. 0, or -1 when the cancel came first. */
int source_pass_point_of_no_return(struct source *s)
{
    pthread_mutex_lock(&s->m->lock);
    bool cancelled = atomic_load_explicit(&s->m->cancel, memory_order_acquire);
    s->m->past_end = !cancelled;
    pthread_mutex_unlock(&s->m->lock);
    if (cancelled) {
        s->cancelled = true;
        return source_fail(s, "cancelled", "cancelled by migration.cancel");
    }
    return 0;
}

/* The switch-over's pause: control_lock held from here to the end (no API
 * command may resume the guest meanwhile), the vCPUs out of KVM_RUN, and
 * whether the operator had paused the guest (it stays paused over there). */
/* The guest is paused for the switch-over: connect this VM's console
 * clients to the destination's console now, so it keeps everything the
 * guest prints there from its first instruction (vmm/console.h). A
 * failure costs the hand-over, never the migration. */
static void source_console_prepare(struct source *s)
{
    if (s->params.console[0] == '\0' || s->vm->console == NULL)
        return;
    char error[256];
    if (console_handover_prepare(s->vm->console, s->params.console, error, sizeof(error)) < 0)
        fprintf(stderr, "ringvm: migration %" PRIu64 ": %s; the console clients stay here\n", s->progress.id,
                error);
}

int source_pause_guest(struct source *s)
{
    struct vm *vm = s->vm;
    pthread_mutex_lock(&vm->control_lock);
    s->locked = true;
    s->user_paused = vm_get_state(vm) == VM_STATE_PAUSED;
    int r = vm_pause_vcpus(vm);
    if (r != 0) {
        if (r == -ECANCELED) {
            s->cancelled = true;
            return source_fail(s, "shutdown", "the VM is shutting down");
        }
        return source_fail(s, "internal", "could not pause the vCPUs: %s", strerror(-r));
    }
    s->paused = true;
    source_console_prepare(s);
    return 0;
}

/* The guest runs on the destination: the console clients follow it.
 * wait: until they were told (the migration is over and this process
 * may end next) or not at all (post-copy's switch-over: the migration
 * thread has pages to push; the final call waits). */
void source_console_commit(struct source *s, bool wait)
{
    if (s->params.console[0] == '\0' || s->vm->console == NULL)
        return;
    char where[CONSOLE_HANDOVER_TEXT_MAX];
    snprintf(where, sizeof(where), "%.200s (console unix:%.107s)", s->params.dest, s->params.console);
    int moved = console_handover_commit(s->vm->console, where, wait ? SOURCE_CONSOLE_HANDOVER_MS : 0);
    if (wait)
        fprintf(stderr, "ringvm: migration %" PRIu64 ": %d console client%s moved to unix:%s\n", s->progress.id,
                moved, moved == 1 ? "" : "s", s->params.console);
}

/* Stop-and-copy and the ACK. */
static int source_complete(struct source *s)
{
    struct vm *vm = s->vm;
    if (!s->local)
        fprintf(stderr, "ringvm: migration: memory delta transmission stopping - cutoff condition reached\n");
    source_phase(s, MIG_STATE_COMPLETING, "stop-and-copy");
    if (source_pause_guest(s) != 0)
        return -1;
    int r;
    uint64_t pause_mono = mig_mono_ns(), pause_real = mig_real_ns();
    /* What crosses the link from here on: what was written and not yet
     * delivered (the backlog), then everything written after now. */
    uint64_t backlog_at_pause = s->local ? 0 : mig_socket_queued_bytes(s->fd);
    uint64_t written_at_pause = mig_sender_bytes(&s->sender);
    /* The guest is paused: every ms from here is downtime. The live
     * phase's cap protected the link while the guest ran; the
     * stop-and-copy gets switch_over_bandwidth_mibs (default none), as
     * QEMU lifts its rate limit for the completion stage. What is still
     * queued from before goes at that rate too. */
    if (!s->local)
        mig_sender_set_bandwidth(&s->sender, s->params.switch_over_bandwidth_mibs << 20);
    mig_trace("src paused");
    struct captured_state state;
    if (source_capture_state(s, &state) != 0)
        return -1;
    if (!s->local && source_final_pages(s) != 0) {
        free(state.bytes);
        return -1;
    }
    mig_trace("src pages queued");
    r = source_send_state(s, &state);
    free(state.bytes);
    if (r != 0)
        return -1;
    if (source_send_device_state(s) != 0)
        return -1;
    mig_trace("src states queued");

    /* The digest is computed while the sender drains (RAM is frozen). */
    struct mig_end end = { .timestamp_ns = pause_real, .pages = s->pages_sent_total,
                           .flags = s->user_paused ? MIG_END_GUEST_PAUSED : 0 };
    if (s->params.verify_digest) {
        char hex[MEMORY_DIGEST_HEX_SIZE];
        r = memory_digest(&vm->memory, hex, NULL, NULL);
        if (r != 0)
            return source_fail(s, "internal", "memory digest: %s", strerror(-r));
        snprintf(s->progress.digest_source, sizeof(s->progress.digest_source), "%s", hex);
        snprintf(end.digest, sizeof(end.digest), "%s", hex);
        end.flags |= MIG_END_HAS_DIGEST;
    }
    /* The switch-over frame carries this switch-over's transfer part, so
     * the destination can learn its cost (switch_over.h). Its bytes are
     * known exactly once everything before it is written. */
    uint64_t transfer_after_pause_us = 0;
    if (!s->local) {
        if (source_flush(s) != 0)
            return -1;
        uint64_t after_pause = mig_sender_bytes(&s->sender) - written_at_pause + backlog_at_pause +
                               switch_over_tail_bytes(s->peer_probes);
        transfer_after_pause_us = mig_transfer_us(after_pause, source_switch_over_bandwidth(s));
    }
    if (s->peer_probes && !s->local) {
        struct mig_switch_over report = {
            .transfer_us = transfer_after_pause_us,
            .digest_pass_us = s->digest_ms * 1000u,
            .learned_us = s->switch_over.learned_count > 0 ? s->switch_over.learned_us : 0,
            .deviation_us = s->switch_over.learned_count > 0 ? s->switch_over.deviation_us : 0,
            .learned_count = s->switch_over.learned_count,
        };
        uint8_t report_bytes[MIG_SWITCH_OVER_SIZE];
        mig_switch_over_encode(&report, report_bytes);
        if (source_small_frame(s, MIG_FRAME_SWITCH_OVER, report_bytes, sizeof(report_bytes)) != 0)
            return -1;
    }
    uint8_t end_bytes[MIG_END_SIZE];
    mig_end_encode(&end, end_bytes);
    if (source_pass_point_of_no_return(s) != 0)
        return -1;
    s->end_sent = true;
    if (source_small_frame(s, MIG_FRAME_END, end_bytes, sizeof(end_bytes)) != 0)
        return -1;
    mig_trace("src digest done, end queued");
    if (source_flush(s) != 0)
        return -1;
    if (!s->local)
        s->progress.switch_over.paced_us = mig_sender_paced_ns(&s->sender) / 1000u;
    s->progress.memory.remaining = 0;
    source_phase(s, MIG_STATE_COMPLETING, "waiting-ack");
    mig_trace("src flushed");

    struct mig_end ack;
    if (source_read_ack(s, &ack) != 0)
        return -1;
    uint64_t now_mono = mig_mono_ns();
    if (ack.timestamp_ns >= pause_real && ack.timestamp_ns - pause_real <= now_mono - pause_mono + 1000000u) {
        s->progress.downtime_ms = (ack.timestamp_ns - pause_real + 999999u) / 1000000u;
        s->progress.downtime_us = (ack.timestamp_ns - pause_real + 999u) / 1000u;
    } else {
        s->progress.downtime_ms = (now_mono - pause_mono) / 1000000u;   /* clocks disagree: upper bound */
        s->progress.downtime_us = (now_mono - pause_mono) / 1000u;
    }
    if (!s->local) {
        /* What this switch-over cost beyond its bytes, for this process's
         * next migration (switch_over.h). */
        uint64_t measured = mig_switch_over_measured_us(s->progress.downtime_us, transfer_after_pause_us,
                                                        s->digest_ms * 1000u);
        s->progress.switch_over.measured_us = measured;
        s->progress.switch_over.measured = true;
        pthread_mutex_lock(&s->m->lock);
        mig_switch_over_learn(&s->m->switch_over, measured);
        pthread_mutex_unlock(&s->m->lock);
    }
    snprintf(s->progress.digest_destination, sizeof(s->progress.digest_destination), "%s", ack.digest);
    if (!s->params.verify_digest && s->params.source_digest && !s->local) {
        /* Off the downtime: the guest runs on the destination and the
         * vCPUs here stay paused for good. Not off the total: the
         * migration completes after it, so it has a phase of its own and
         * its time in source_digest_ms (a 1 GiB guest: ~0.2 s on the CI
         * machines, far more under emulation), and source_digest false
         * skips it. (Never after a local hand-over: the RAM is the
         * destination's now, and changing under the hash.) */
        s->throughput = (struct mig_throughput){ 0 };     /* the link is idle from here: 0 */
        source_phase(s, MIG_STATE_COMPLETING, "digest");
        uint64_t digest_started = mig_mono_ns();
        char hex[MEMORY_DIGEST_HEX_SIZE];
        if (memory_digest(&vm->memory, hex, NULL, NULL) == 0)
            snprintf(s->progress.digest_source, sizeof(s->progress.digest_source), "%s", hex);
        s->progress.source_digest_ms = (mig_mono_ns() - digest_started + 999999u) / 1000000u;
    }
    if (s->params.verify_digest && strcmp(ack.digest, s->progress.digest_source) != 0) {
        /* The destination acked: it runs its (different) copy already. */
        s->keep_paused = true;
        return source_fail(s, "digest-mismatch", "memory digests differ: source %s, destination %s; the "
                           "destination runs the guest, the source stays paused", s->progress.digest_source,
                           ack.digest);
    }
    return 0;
}

/* 10 ms between two empty passes, in 1 ms steps so the API, a cancel and
 * the stall checks (source_tick) are answered meanwhile. */
#define EMPTY_PASS_WAIT_MS 10
static int source_idle_between_passes(struct source *s)
{
    for (int waited = 0; waited < EMPTY_PASS_WAIT_MS; waited++) {
        poll(NULL, 0, 1);
        if (source_tick(s) != 0)
            return -1;
    }
    return 0;
}

/* TLS 1.3 over the connected socket before anything else (the source is
 * the TLS client): from here on s->io carries the session, so every read
 * and write of the stream, the sender thread's included, is encrypted. */
int source_tls_handshake(struct source *s, const struct mig_address *address)
{
    const char *server_name = s->params.tls_server_name[0] != '\0' ? s->params.tls_server_name : address->host;
    struct mig_tls_options options = { .credentials = s->tls_credentials, .server_name = server_name };
    char text[8192];
    if (mig_tls_handshake(&s->tls, &s->io, &options, text, sizeof(text)) != 0) {
        if (atomic_load_explicit(&s->m->cancel, memory_order_acquire)) {
            s->cancelled = true;
            return source_fail(s, "cancelled", "cancelled by migration.cancel");
        }
        return source_fail(s, "tls", "%s", text);
    }
    s->io.tls = s->tls;
    mig_tls_session_info(s->tls, &s->progress.tls);
    fprintf(stderr, "ringvm: migration %" PRIu64 ": %s %s with the destination (%s, authenticated by %s)\n",
            s->progress.id, s->progress.tls.version, s->progress.tls.cipher, s->progress.tls.suite,
            strcmp(s->progress.tls.auth, "psk") == 0 ? "pre-shared key" : "x509 certificates");
    return 0;
}

static int source_run(struct source *s)
{
    struct vm *vm = s->vm;
    char text[600];
    struct mig_address address;
    if (local_handover_parse_any_address(s->params.dest, &address, text, sizeof(text)) < 0)
        return source_fail(s, "invalid-argument", "%s", text);
    s->stream_is_the_link = address.kind == MIG_ADDRESS_UNIX;
    source_phase(s, MIG_STATE_SETUP, "connecting");
    s->fd = mig_connect(&address, CONNECT_TIMEOUT_MS, &s->m->cancel, text, sizeof(text));
    if (s->fd < 0) {
        if (atomic_load_explicit(&s->m->cancel, memory_order_acquire)) {
            s->cancelled = true;
            return source_fail(s, "cancelled", "cancelled by migration.cancel");
        }
        return source_fail(s, "connect-failed", "%s", text);
    }
    s->io = (struct mig_io){ .fd = s->fd, .stall_ms = s->params.stall_timeout_ms, .cancel = &s->m->cancel,
                             .peer = "destination" };
    s->input = (struct mig_input){ .read = source_socket_read, .ctx = &s->io };
    source_phase(s, MIG_STATE_SETUP, "handshake");
    /* Local hand-over: the RAM itself goes first, as an fd; the handshake
     * returns once the destination has mapped it (local_handover.h). */
    if (s->local && local_handover_send_ram(s->fd, vm, text, sizeof(text)) != 0)
        return source_fail(s, "transport", "%s", text);
    if (s->tls_credentials != NULL && source_tls_handshake(s, &address) != 0)
        return -1;
    if (source_handshake(s) != 0)
        return -1;
    pthread_mutex_lock(&s->m->lock);
    s->switch_over = s->m->switch_over;     /* its dry_run_us is unused (0); ours comes from the probe */
    pthread_mutex_unlock(&s->m->lock);
    s->progress.switch_over.learned_us = s->switch_over.learned_us;
    s->progress.switch_over.deviation_us = s->switch_over.deviation_us;
    s->progress.switch_over.learned_count = s->switch_over.learned_count;
    s->progress.switch_over.used_us = source_switch_over_budget_us(s);
    if (!s->local && s->peer_probes && source_probe_switch_over(s) != 0)
        return -1;
    if (s->params.mode != MIG_MODE_PRECOPY && source_postcopy_open(s, &address) != 0)
        return -1;
    if (source_start_sender(s) != 0)
        return -1;
    if (s->local) {
        /* No RAM to copy: straight to the pause. */
        s->progress.setup_ms = (mig_mono_ns() - s->started_mono) / 1000000u;
        return source_complete(s);
    }
    if (s->params.mode == MIG_MODE_POSTCOPY) {
        /* No pre-copy pass and no tracking: every page is missing there. */
        s->progress.setup_ms = (mig_mono_ns() - s->started_mono) / 1000000u;
        return source_postcopy(s);
    }
    /* The migration's own hold: a fresh session (empty dirty set, all RAM
     * write-protected) even when vm.dirty-tracking already keeps tracking
     * on; iteration 0 below sends every page anyway. */
    /* Pass 0 protects every page before its first read, so the memslots
     * may start logging one by one as it reaches them. */
    int r = dirty_log_hold(vm->dirty_log, DIRTY_LOG_HOLDER_MIGRATION | DIRTY_LOG_HOLD_LAZY_MEMSLOTS);
    if (r != 0)
        return source_fail(s, "internal", "starting dirty tracking: %s", strerror(-r));
    s->tracking = true;
    source_check_recycling(s, true, NULL);
    s->progress.setup_ms = (mig_mono_ns() - s->started_mono) / 1000000u;
    source_phase(s, MIG_STATE_ACTIVE, "bulk");
    if (s->params.converge == MIG_CONVERGE_DIRTY_LIMIT)
        dirty_limit_apply(s, 0, 0);     /* baseline of the per-vCPU counters */

    uint64_t iteration = 0;
    for (;;) {
        uint64_t iteration_start = mig_mono_ns();
        uint64_t bytes_start = mig_sender_bytes(&s->sender);
        s->iteration_start_ns = iteration_start;
        s->iteration_start_bytes = bytes_start;
        s->iteration_start_queued = mig_socket_queued_bytes(s->fd);
        s->iteration_start_paced_ns = mig_sender_paced_ns(&s->sender);
        uint64_t sent_pages;
        s->progress.iteration = iteration;
        int throttle_during = s->progress.throttle_percent;
        migration_source_vcpu_throttles(s);
        throttle_during = s->progress.throttle_percent;
        if (iteration == 0) {
            source_bpf_mark(s);
            if (source_iteration_marker(s, 0, guest_memory_pages(&vm->memory)) != 0)
                return -1;
            int bulk = source_send_all(s);
            if (bulk < 0)
                return -1;
            if (bulk > 0) {
                /* Hybrid, within the bulk pass: what went is on its way;
                 * the rest is missing there (source_postcopy). */
                if (source_flush(s) != 0)
                    return -1;
                return source_postcopy(s);
            }
            sent_pages = guest_memory_pages(&vm->memory);
        } else {
            if (source_iteration_marker(s, iteration, s->pending.count) != 0 || source_send_pending(s) != 0)
                return -1;
            sent_pages = s->pending.count;
        }
        if (source_flush(s) != 0)
            return -1;
        uint64_t sent_done = mig_mono_ns();
        uint64_t bytes = mig_sender_bytes(&s->sender) - bytes_start;
        uint64_t send_ns = sent_done - iteration_start;
        uint64_t queued_end = mig_socket_queued_bytes(s->fd);
        uint64_t delivered = source_delivered_this_iteration(s, queued_end);
        if (delivered >= MIN_BANDWIDTH_SAMPLE || s->bandwidth == 0) {
            s->bandwidth = send_ns > 0 ? (uint64_t)((unsigned __int128)delivered * 1000000000u / send_ns) : 0;
            uint64_t paced_ns = mig_sender_paced_ns(&s->sender) - s->iteration_start_paced_ns;
            uint64_t unpaced = s->stream_is_the_link ? mig_unpaced_rate(delivered, send_ns, paced_ns) : 0;
            s->unpaced_bandwidth = unpaced > s->bandwidth ? unpaced : s->bandwidth;
        }
        /* The dirty set of this iteration. */
        uint64_t take_start = mig_mono_ns();
        s->pending.count = 0;
        int64_t dirty;
        if (s->bulk_carry != NULL) {
            /* The bulk pass took twice already (the hybrid window): its
             * pages and this take's, each once, in order. */
            dirty = dirty_log_take_bitmap(vm->dirty_log, s->bulk_carry);
            if (dirty >= 0) {
                s->pages_taken += (uint64_t)dirty;
                dirty = source_pending_add_carry(s);
            }
        } else {
            dirty = dirty_log_take(vm->dirty_log, &s->pending);
            if (dirty >= 0)
                s->pages_taken += (uint64_t)dirty;
        }
        uint64_t take_end = mig_mono_ns();
        if (dirty < 0)
            return source_fail(s, "internal", "taking the dirty set: %s", strerror((int)-dirty));
        uint64_t dur_ns = take_end - iteration_start;
        /* Expected downtime: the pages left, the backlog still in the
         * socket and the state frames at the bandwidth, the digest, and
         * the switch-over's measured cost (switch_over.h). */
        struct mig_downtime_estimate estimate;
        uint64_t switch_over_rate = source_switch_over_bandwidth(s);
        mig_downtime_estimate(s->pending.count * MIG_PAGE_SIZE + queued_end + s->state_bytes, switch_over_rate,
                              s->digest_ms, source_switch_over_budget_us(s), &estimate);
        s->progress.expected_parts.bandwidth_mibs = (double)switch_over_rate / (1024.0 * 1024.0);
        s->progress.expected_parts.transfer_ms = estimate.transfer_ms;
        s->progress.expected_parts.digest_ms = estimate.digest_ms;
        s->progress.expected_parts.switch_over_ms = estimate.switch_over_ms;
        s->progress.backlog_bytes = queued_end;
        struct mig_iteration_record record = {
            .iteration = iteration,
            .dur_ms = dur_ns / 1000000u,
            .overhead_ms = (take_end - take_start) / 1000000u,
            .throttle = throttle_during,
            .size_bytes = s->pending.count * MIG_PAGE_SIZE,
            .dirty_rate_pps = dur_ns > 0 ? (uint64_t)((unsigned __int128)s->pending.count * 1000000000u / dur_ns) : 0,
            .bandwidth_mibs = (double)s->bandwidth / (1024.0 * 1024.0),
            .expected_downtime_ms = estimate.total_ms,
            .pages_sent = sent_pages,
            .bytes_sent = bytes,
        };
        s->progress.dirty_rate_pps = record.dirty_rate_pps;
        s->progress.bandwidth_mibs = record.bandwidth_mibs;
        s->progress.expected_downtime_ms = record.expected_downtime_ms;
        s->progress.memory.remaining = record.size_bytes;
        s->pending_sent = 0;
        source_check_recycling(s, false, &record);
        source_log_iteration(s, &record);
        source_publish(s);
        if (source_tick(s) != 0)
            return -1;

        if (s->force_switch ||
            (mig_should_switch(record.expected_downtime_ms, s->params.downtime_ms) && !source_switch_over_held()))
            break;
        if (source_hybrid_due(s, iteration, &record))
            return source_postcopy(s);
        switch (s->params.converge) {
        case MIG_CONVERGE_NONE:
            break;
        case MIG_CONVERGE_AUTO: {
            int t = mig_auto_converge_step(&s->auto_state, &s->params.throttle, record.size_bytes, bytes);
            set_all_throttles(s, t);
            break;
        }
        case MIG_CONVERGE_DIRTY_LIMIT:
            dirty_limit_apply(s, s->pending.count, dur_ns);
            break;
        }
        /* A pass that sent nothing and found nothing dirty cannot bring
         * the expected downtime down (only the switch-over's own cost
         * keeps it over the limit): wait before the next instead of
         * spinning through empty passes (325 k in 60 s over a lossy link,
         * both cores busy), serving the API meanwhile. */
        if (sent_pages == 0 && s->pending.count == 0 && source_idle_between_passes(s) != 0)
            return -1;
        iteration++;
        source_phase(s, MIG_STATE_ACTIVE, "iterating");
    }
    if (source_complete(s) != 0)
        return -1;
    return 0;
}

/* Best effort: tell the destination why we stop (it then discards the VM). */
static void source_send_error(struct source *s)
{
    if (s->fd < 0 || s->error_code == NULL)
        return;
    /* "tls": the handshake failed and told the destination itself (an
     * alert); a plaintext frame now would only be noise to it. */
    if (strcmp(s->error_code, "transport") == 0 || strcmp(s->error_code, "destination-error") == 0 ||
        strcmp(s->error_code, "tls") == 0 ||
        strcmp(s->error_code, "config-mismatch") == 0 || strcmp(s->error_code, "digest-mismatch") == 0)
        return;
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE], frame[MIG_HEADER_SIZE + 4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(s->cancelled ? MIG_ERR_CANCELLED : MIG_ERR_INTERNAL, s->error, payload);
    /* Queued frames that were dropped never reached the wire: number the
     * ERROR after the last frame written. */
    uint64_t seq = s->sender_started ? mig_sender_seq_written(&s->sender) : s->seq;
    size_t total = mig_frame_encode(frame, MIG_FRAME_ERROR, seq, payload, length);
    struct mig_io io = s->io;
    io.stall_ms = 500;
    io.cancel = NULL;
    char ignored[256];
    (void)mig_io_write(&io, frame, total, ignored, sizeof(ignored));
}

/* Drops the migration's hold on dirty tracking (never the API's: with
 * vm.dirty-tracking on, tracking stays on). */
void source_release_tracking(struct source *s)
{
    if (!s->tracking)
        return;
    int r = dirty_log_release(s->vm->dirty_log, DIRTY_LOG_HOLDER_MIGRATION);
    if (r != 0)
        fprintf(stderr, "ringvm: migration: stopping dirty tracking: %s\n", strerror(-r));
    s->tracking = false;
}

void *migration_source_main(void *argument)
{
    struct source *s = argument;
    struct migration *m = s->m;
    struct vm *vm = s->vm;
    pthread_setname_np(pthread_self(), "migration");
    dirty_pages_init(&s->pending);
    int result = source_run(s);

    uint64_t ended = mig_mono_ns();
    if (result != 0) {
        /* Failure or cancel at any point: give the guest back first. */
        if (s->paused && !s->user_paused && !s->keep_paused)
            vm_resume_vcpus(vm);
        else if (s->paused && s->keep_paused)
            vm_set_state(vm, VM_STATE_PAUSED);    /* control_lock held: vm.resume can resume it */
        s->paused = false;
        if (s->locked)
            pthread_mutex_unlock(&vm->control_lock);
        s->locked = false;
        set_all_throttles(s, 0);
        if (s->sender_started) {
            /* End the stream at a frame boundary so the ERROR frame that
             * follows is readable by the destination. */
            mig_sender_finish(&s->sender);
        }
        source_send_error(s);
        source_release_tracking(s);
        console_handover_cancel(vm->console);      /* the clients stay with the guest, here (or lost) */
        s->progress.state = s->cancelled ? MIG_STATE_CANCELLED : MIG_STATE_FAILED;
        snprintf(s->progress.error_code, sizeof(s->progress.error_code), "%s", s->error_code ? s->error_code : "internal");
        snprintf(s->progress.error_message, sizeof(s->progress.error_message), "%s", s->error);
        fprintf(stderr, "ringvm: migration %" PRIu64 " %s: %s\n", s->progress.id,
                s->cancelled ? "cancelled" : "failed", s->error);
    } else {
        set_all_throttles(s, 0);
        source_release_tracking(s);
        s->progress.state = MIG_STATE_COMPLETED;
        s->progress.memory.remaining = 0;
        /* Before "completed" is visible, so observers see both together. */
        if (s->params.keep_alive)
            vm_set_state(vm, VM_STATE_MIGRATED);
    }
    if (s->sender_started) {
        s->progress.memory.transferred = mig_sender_bytes(&s->sender);
        mig_sender_stop(&s->sender);
        s->sender_started = false;
    }
    postcopy_source_destroy(s->postcopy);      /* joins pc-serve before its channel closes */
    s->postcopy = NULL;
    mig_tls_session_free(s->urgent_tls);
    s->urgent_tls = NULL;
    if (s->urgent_fd >= 0)
        close(s->urgent_fd);
    s->urgent_fd = -1;
    mig_tls_session_free(s->tls);
    s->tls = NULL;
    s->io.tls = NULL;
    mig_tls_credentials_free(s->tls_credentials);
    s->tls_credentials = NULL;
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    s->progress.total_ms = (ended - s->started_mono) / 1000000u;
    s->progress.ended_at_ms = mig_real_ns() / 1000000u;
    snprintf(s->progress.phase, sizeof(s->progress.phase), "done");
    source_publish(s);
    s->progress.elapsed_ms = s->progress.total_ms;
    mig_progress_publish(&m->board, &s->progress);
    json_t *event = json_pack("{s:I, s:s, s:s, s:s, s:I, s:I}", "id", (json_int_t)s->progress.id, "role",
                              "outgoing", "state", mig_state_name(s->progress.state), "phase", "done",
                              "total_ms", (json_int_t)s->progress.total_ms, "downtime_ms",
                              (json_int_t)s->progress.downtime_ms);
    if (event != NULL && s->progress.error_code[0] != '\0')
        json_object_set_new(event, "error", json_pack("{s:s, s:s}", "code", s->progress.error_code, "message",
                                                      s->progress.error_message));
    mig_publish_event(s->server, MIG_EVENT_STATE, event);

    if (result == 0) {
        char digest_note[96] = "";
        if (s->progress.source_digest_ms > 0)
            snprintf(digest_note, sizeof(digest_note), " (%" PRIu64 " ms of it hashing this RAM after the ack)",
                     s->progress.source_digest_ms);
        fprintf(stderr, "ringvm: migration %" PRIu64 " completed: %" PRIu64 " ms total%s, downtime %" PRIu64
                " ms, %" PRIu64 " iterations, %" PRIu64 " MiB sent\n", s->progress.id, s->progress.total_ms,
                digest_note, s->progress.downtime_ms, s->progress.iteration_count,
                s->progress.memory.transferred >> 20);
        source_console_commit(s, true);     /* after post-copy's early commit: waits for the notices */
        if (s->locked)
            pthread_mutex_unlock(&vm->control_lock);
        s->locked = false;
        if (!s->params.keep_alive)
            vm_request_shutdown(vm, 0);
    } else if (s->error_code != NULL && strcmp(s->error_code, "guest-lost") == 0 && !s->params.keep_alive) {
        /* The guest is gone from both hosts: this process ends, non-zero. */
        vm_request_shutdown(vm, 1);
    }
    dirty_pages_free(&s->pending);
    free(s->bulk_carry);
    free(s);

    pthread_mutex_lock(&m->lock);
    atomic_store_explicit(&m->active, false, memory_order_release);
    pthread_cond_broadcast(&m->idle);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}
