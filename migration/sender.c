/*
 * Sender thread and memory frame builder (see sender.h).
 */
#include "migration/sender.h"
#include "migration/postcopy_priority.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#include <xxh_x86dispatch.h>    /* XXH3 for this CPU (see migration/receiver.c) */

#include "migration/receiver.h"
#include "migration/transport.h"
#include "vmm/monotonic.h"

#define PACE_SLICE (256u << 10)

static struct timespec deadline_in_ms(unsigned ms)
{
    return monotonic_deadline_after_ns((uint64_t)ms * 1000000ull);
}

static void sender_fail(struct mig_sender *s, const char *message)
{
    pthread_mutex_lock(&s->lock);
    if (!atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        snprintf(s->error, sizeof(s->error), "%s", message);
        atomic_store_explicit(&s->failed, true, memory_order_release);
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static bool is_cancelled(struct mig_sender *s)
{
    return atomic_load_explicit(&s->abort, memory_order_acquire);
}

/* Sleeps until bytes fit the cap (migration/pacing.h); false if cancelled
 * meanwhile. The sleep is a timed wait on the sender's condition, so a cap
 * changed meanwhile (the switch-over's, mig_sender_set_bandwidth) ends it at
 * once instead of after the rest of a slice's wait. The cap, its epoch and
 * the wait are read and decided under the lock, so a wait never outlives
 * the cap it was computed for, and only time slept under the cap still in
 * force is added to paced_ns. */
static bool pace(struct mig_sender *s, uint64_t bytes_total)
{
    bool go_on = true;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        if (s->finish)
            break;
        uint64_t now = monotonic_now_ns();
        uint64_t wait = mig_pacer_wait_ns(&s->pacer, now, bytes_total,
                                          __atomic_load_n(&s->max_bandwidth, __ATOMIC_RELAXED));
        if (wait == 0)
            break;
        if (is_cancelled(s) || s->stop) {
            go_on = false;
            break;
        }
        if (wait > 100000000ull)
            wait = 100000000ull;
        struct timespec deadline = monotonic_deadline_after_ns(wait);
        uint64_t epoch = s->cap_epoch;
        /* rate pacing: woken early by a cap change, finish or stop */
        while (s->cap_epoch == epoch && !s->finish && !s->stop &&
               pthread_cond_timedwait(&s->cond, &s->lock, &deadline) != ETIMEDOUT) {
        }
        if (s->cap_epoch == epoch)
            atomic_fetch_add_explicit(&s->paced_ns, monotonic_now_ns() - now, memory_order_relaxed);
    }
    pthread_mutex_unlock(&s->lock);
    return go_on;
}

static void drop_queue_locked(struct mig_sender *s)
{
    /* Finishing inside a frame that spans buffers: its remaining parts
     * stay queued and are written, so the stream still ends at a frame
     * boundary. */
    struct mig_buffer *keep_tail = NULL;
    if (s->finish && s->taken_continues && !atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        for (struct mig_buffer *b = s->queue_head; b != NULL; b = b->next) {
            keep_tail = b;
            if (!b->continues)
                break;
        }
    }
    struct mig_buffer *drop = keep_tail != NULL ? keep_tail->next : s->queue_head;
    if (keep_tail != NULL)
        keep_tail->next = NULL;
    else
        s->queue_head = NULL;
    s->queue_tail = keep_tail;
    while (drop != NULL) {
        struct mig_buffer *b = drop;
        drop = b->next;
        b->length = 0;
        b->next = s->free_list;
        s->free_list = b;
        s->in_flight--;
    }
}

static void *sender_main(void *argument)
{
    struct mig_sender *s = argument;
    pthread_setname_np(pthread_self(), "mig-send");
    /* Only mig_sender_stop interrupts a write: a cancelled migration ends
     * the stream at a frame boundary (mig_sender_finish). */
    struct mig_io io = { .fd = s->fd, .stall_ms = s->stall_ms, .cancel = &s->abort, .peer = "destination",
                         .tls = s->tls };
    mig_pacer_init(&s->pacer, monotonic_now_ns(), 0);
    bool boosted = false;
    for (;;) {
        struct mig_buffer *batch[MIG_SEND_BATCH_IOV];
        unsigned count = 0;
        pthread_mutex_lock(&s->lock);
        while (s->queue_head == NULL && !s->stop && !s->finish)
            pthread_cond_wait(&s->cond, &s->lock);
        if (s->stop || (s->finish && s->queue_head == NULL)) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        while (s->queue_head != NULL && count < MIG_SEND_BATCH_IOV) {
            batch[count++] = s->queue_head;
            s->queue_head = s->queue_head->next;
        }
        s->taken_continues = batch[count - 1]->continues;
        if (s->queue_head == NULL)
            s->queue_tail = NULL;
        mig_page_withdrawn_fn withdrawn = s->withdrawn;
        void *withdrawn_opaque = s->withdrawn_opaque;
        _Atomic uint64_t *withdrawn_pages = s->withdrawn_pages;
        pthread_mutex_unlock(&s->lock);
        if (withdrawn != NULL && !boosted) {
            /* Post-copy's stream (set at the switch-over): the vCPUs on
             * the destination wait for it (postcopy_priority.h). Ends with
             * this thread: nothing to restore. */
            (void)postcopy_priority_boost_stream(0, "mig-send");
            boosted = true;
        }

        char error[512];
        int result = 0;
        uint64_t started = monotonic_now_ns();
        uint64_t cap = __atomic_load_n(&s->max_bandwidth, __ATOMIC_RELAXED);
        /* Fill each buffer right before writing it: the kernel then copies
         * a frame that is still in this core's cache. Under a cap, write in
         * PACE_SLICE pieces, each when the pacer allows it. */
        for (unsigned i = 0; result == 0 && i < count; i++) {
            uint64_t left_out = mig_buffer_fill_withdrawing(batch[i], withdrawn, withdrawn_opaque);
            if (left_out != 0)
                atomic_fetch_add_explicit(withdrawn_pages, left_out, memory_order_release);
            for (size_t done = 0; result == 0 && done < batch[i]->length;) {
                size_t left = batch[i]->length - done;
                size_t slice = cap != 0 && left > PACE_SLICE ? PACE_SLICE : left;
                /* Others' bytes count against the cap, at most one slice
                 * of them per slice of ours: this stream keeps at least
                 * half of the cap at every moment (the peer's stall timer
                 * runs on it alone), and what others sent beyond that is
                 * charged to later slices. */
                uint64_t owed = atomic_load_explicit(&s->shared_bytes, memory_order_relaxed) - s->shared_charged;
                s->shared_charged += owed < slice ? owed : slice;
                uint64_t own = atomic_load_explicit(&s->bytes_sent, memory_order_relaxed);
                if (cap != 0 && !pace(s, own + s->shared_charged)) {
                    snprintf(error, sizeof(error), "cancelled");
                    result = -1;
                    break;
                }
                result = mig_io_write(&io, batch[i]->data + done, slice, error, sizeof(error));
                if (result == 0) {
                    atomic_fetch_add_explicit(&s->bytes_sent, slice, memory_order_relaxed);
                    done += slice;
                }
            }
        }
        atomic_fetch_add_explicit(&s->send_ns, monotonic_now_ns() - started, memory_order_relaxed);

        if (result == 0)
            atomic_store_explicit(&s->seq_written, batch[count - 1]->seq_end, memory_order_release);
        pthread_mutex_lock(&s->lock);
        for (unsigned i = 0; i < count; i++) {
            batch[i]->length = 0;
            batch[i]->next = s->free_list;
            s->free_list = batch[i];
            s->in_flight--;
        }
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        if (result != 0) {
            sender_fail(s, error);
            /* Drop whatever is still queued: the stream is dead. */
            pthread_mutex_lock(&s->lock);
            drop_queue_locked(s);
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->lock);
            break;
        }
    }
    return NULL;
}

int mig_sender_start(struct mig_sender *s, int fd, struct mig_tls_session *tls, uint64_t max_bandwidth_bytes,
                     unsigned stall_ms, const _Atomic bool *cancel, char *error, size_t error_size)
{
    memset(s, 0, sizeof(*s));
    atomic_init(&s->seq_written, 1);    /* the hello (0) is written before the sender starts */
    s->fd = fd;
    s->tls = tls;
    s->stall_ms = stall_ms;
    s->max_bandwidth = max_bandwidth_bytes;
    s->cancel = cancel;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &attributes);
    pthread_condattr_destroy(&attributes);
    for (unsigned i = 0; i < MIG_SEND_BUFFERS; i++) {
        s->storage[i].data = malloc(MIG_SEND_BUFFER_BYTES);
        if (s->storage[i].data == NULL) {
            snprintf(error, error_size, "out of memory for send buffers (%u x %u bytes)", MIG_SEND_BUFFERS,
                     MIG_SEND_BUFFER_BYTES);
            mig_sender_stop(s);
            return -1;
        }
        s->storage[i].capacity = MIG_SEND_BUFFER_BYTES;
        s->storage[i].next = s->free_list;
        s->free_list = &s->storage[i];
    }
    int result = pthread_create(&s->thread, NULL, sender_main, s);
    if (result != 0) {
        snprintf(error, error_size, "pthread_create(sender): %s", strerror(result));
        mig_sender_stop(s);
        return -1;
    }
    s->started = true;
    return 0;
}

void mig_sender_set_withdrawn(struct mig_sender *s, mig_page_withdrawn_fn withdrawn, void *opaque,
                              _Atomic uint64_t *counter)
{
    pthread_mutex_lock(&s->lock);
    s->withdrawn = withdrawn;
    s->withdrawn_opaque = opaque;
    s->withdrawn_pages = counter;
    pthread_mutex_unlock(&s->lock);
}

void mig_sender_set_bandwidth(struct mig_sender *s, uint64_t max_bandwidth_bytes)
{
    pthread_mutex_lock(&s->lock);
    __atomic_store_n(&s->max_bandwidth, max_bandwidth_bytes, __ATOMIC_RELAXED);
    s->cap_epoch++;
    atomic_store_explicit(&s->paced_ns, 0, memory_order_relaxed);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

uint64_t mig_sender_paced_ns(struct mig_sender *s)
{
    return atomic_load_explicit(&s->paced_ns, memory_order_relaxed);
}

struct mig_buffer *mig_sender_get(struct mig_sender *s, unsigned timeout_ms)
{
    struct timespec deadline = deadline_in_ms(timeout_ms);
    pthread_mutex_lock(&s->lock);
    while (s->free_list == NULL && !atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT)
            break;
    }
    struct mig_buffer *b = NULL;
    if (!atomic_load_explicit(&s->failed, memory_order_relaxed) && s->free_list != NULL) {
        b = s->free_list;
        s->free_list = b->next;
        b->next = NULL;
        b->length = 0;
        b->unfilled = false;
        b->continues = false;
    }
    pthread_mutex_unlock(&s->lock);
    return b;
}

int mig_sender_queue_large_frame(struct mig_sender *s, uint32_t type, uint64_t seq, const void *payload,
                                 size_t length, unsigned timeout_ms, char *error, size_t error_size)
{
    size_t total = MIG_HEADER_SIZE + length;
    unsigned parts = (unsigned)((total + MIG_SEND_BUFFER_BYTES - 1) / MIG_SEND_BUFFER_BYTES);
    struct mig_buffer *buffers[MIG_SEND_BUFFERS];
    if (parts > MIG_SEND_BUFFERS) {
        snprintf(error, error_size, "%s frame of %zu bytes exceeds the %u send buffers", mig_frame_type_name(type),
                 total, MIG_SEND_BUFFERS);
        return -1;
    }
    /* Every buffer first, so a frame is queued whole or not at all. */
    uint64_t deadline = monotonic_now_ns() + (uint64_t)timeout_ms * 1000000u;
    unsigned got = 0;
    while (got < parts) {
        struct mig_buffer *b = mig_sender_get(s, 50);
        if (b != NULL) {
            buffers[got++] = b;
            continue;
        }
        if (atomic_load_explicit(&s->failed, memory_order_relaxed) || monotonic_now_ns() >= deadline) {
            for (unsigned i = 0; i < got; i++)
                mig_sender_put_back(s, buffers[i]);
            if (!mig_sender_failed(s, error, error_size))
                snprintf(error, error_size, "no send buffer for a %zu-byte %s frame in %u ms", total,
                         mig_frame_type_name(type), timeout_ms);
            return -1;
        }
    }
    /* The header (sealed over the whole payload), then the payload, cut at
     * buffer boundaries: the bytes mig_frame_encode would make, in parts. */
    uint8_t header[MIG_HEADER_SIZE];
    mig_header_encode(header, type, seq, length);
    mig_header_seal(header, payload, length);
    size_t offset = 0;
    for (unsigned i = 0; i < parts; i++) {
        size_t chunk = total - offset < MIG_SEND_BUFFER_BYTES ? total - offset : MIG_SEND_BUFFER_BYTES;
        size_t from_header = offset < MIG_HEADER_SIZE ? MIG_HEADER_SIZE - offset : 0;
        if (from_header > chunk)
            from_header = chunk;
        if (from_header > 0)
            memcpy(buffers[i]->data, header + offset, from_header);
        memcpy(buffers[i]->data + from_header, (const uint8_t *)payload + (offset + from_header - MIG_HEADER_SIZE),
               chunk - from_header);
        buffers[i]->length = chunk;
        buffers[i]->continues = i + 1 < parts;
        mig_sender_submit(s, buffers[i], i + 1 < parts ? seq : seq + 1);
        offset += chunk;
    }
    return 0;
}

void mig_sender_submit(struct mig_sender *s, struct mig_buffer *b, uint64_t seq_end)
{
    pthread_mutex_lock(&s->lock);
    b->seq_end = seq_end;
    b->next = NULL;
    if (s->queue_tail)
        s->queue_tail->next = b;
    else
        s->queue_head = b;
    s->queue_tail = b;
    s->in_flight++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void mig_sender_put_back(struct mig_sender *s, struct mig_buffer *b)
{
    pthread_mutex_lock(&s->lock);
    b->length = 0;
    b->next = s->free_list;
    s->free_list = b;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

int mig_sender_wait_in_flight(struct mig_sender *s, unsigned max_buffers, unsigned timeout_ms)
{
    struct timespec deadline = deadline_in_ms(timeout_ms);
    pthread_mutex_lock(&s->lock);
    while (s->in_flight > max_buffers && !atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == ETIMEDOUT)
            break;
    }
    int result = atomic_load_explicit(&s->failed, memory_order_relaxed) ? -1 : s->in_flight > max_buffers ? 1 : 0;
    pthread_mutex_unlock(&s->lock);
    return result;
}

int mig_sender_flush(struct mig_sender *s, unsigned timeout_ms)
{
    return mig_sender_wait_in_flight(s, 0, timeout_ms);
}

bool mig_sender_failed(struct mig_sender *s, char *error, size_t error_size)
{
    if (!atomic_load_explicit(&s->failed, memory_order_acquire))
        return false;
    if (error != NULL) {
        pthread_mutex_lock(&s->lock);
        snprintf(error, error_size, "%s", s->error);
        pthread_mutex_unlock(&s->lock);
    }
    return true;
}

uint64_t mig_sender_seq_written(struct mig_sender *s)
{
    return atomic_load_explicit(&s->seq_written, memory_order_acquire);
}

uint64_t mig_sender_bytes(struct mig_sender *s)
{
    return atomic_load_explicit(&s->bytes_sent, memory_order_relaxed);
}

void mig_sender_finish(struct mig_sender *s)
{
    if (!s->started)
        return;
    pthread_mutex_lock(&s->lock);
    s->finish = true;
    drop_queue_locked(s);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    s->started = false;
}

void mig_sender_stop(struct mig_sender *s)
{
    if (s->started) {
        atomic_store_explicit(&s->abort, true, memory_order_release);
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
        s->started = false;
    }
    for (unsigned i = 0; i < MIG_SEND_BUFFERS; i++) {
        free(s->storage[i].data);
        s->storage[i].data = NULL;
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
}

/* ---- frame builder --------------------------------------------------- */

static void builder_close_run(struct mig_frame_builder *b)
{
    if (b->run_header == SIZE_MAX)
        return;
    mig_run_encode(&b->run, b->buffer->data + b->run_header);
    b->run_header = SIZE_MAX;
}

void mig_builder_begin(struct mig_frame_builder *b, struct mig_buffer *buffer)
{
    b->pages = b->zero_pages = b->normal_pages = 0;
    b->run = (struct mig_run){ 0 };
    b->buffer = buffer;
    b->run_header = SIZE_MAX;
    buffer->frame_start = buffer->length;
    buffer->copy_count = 0;
    buffer->unfilled = false;
    buffer->length += MIG_HEADER_SIZE;
}

bool mig_builder_has_room(const struct mig_frame_builder *b)
{
    size_t payload = b->buffer->length - b->buffer->frame_start - MIG_HEADER_SIZE;
    return b->buffer->length + MIG_RUN_HEADER_SIZE + MIG_PAGE_SIZE <= b->buffer->capacity &&
           payload + MIG_RUN_HEADER_SIZE + MIG_PAGE_SIZE <= MIG_MEMORY_MAX_PAYLOAD &&
           b->buffer->copy_count < MIG_BUILDER_MAX_COPIES;
}

bool mig_builder_empty(const struct mig_frame_builder *b)
{
    return b->pages == 0;
}

/* Extends the open run or opens a new one (its header at the buffer's
 * current end); true if a new run was opened. */
static bool builder_extend(struct mig_frame_builder *b, uint64_t ram_offset, uint64_t pages, bool zero)
{
    uint32_t flags = zero ? MIG_RUN_ZERO : 0;
    if (b->run_header != SIZE_MAX && b->run.flags == flags &&
        b->run.ram_offset + (uint64_t)b->run.pages * MIG_PAGE_SIZE == ram_offset &&
        b->run.pages + pages <= MIG_RUN_MAX_PAGES) {
        b->run.pages += (uint32_t)pages;
        return false;
    }
    builder_close_run(b);
    b->run_header = b->buffer->length;
    b->buffer->length += MIG_RUN_HEADER_SIZE;
    b->run.ram_offset = ram_offset;
    b->run.pages = (uint32_t)pages;
    b->run.flags = flags;
    return true;
}

void mig_builder_add_page(struct mig_frame_builder *b, uint64_t ram_offset, const uint8_t *host)
{
    b->pages++;
    if (mig_page_is_zero(host)) {
        b->zero_pages++;
        builder_extend(b, ram_offset, 1, true);
        return;
    }
    b->normal_pages++;
    /* A data run's pages are consecutive in RAM, so one copy entry per run. */
    struct mig_buffer *buffer = b->buffer;
    if (builder_extend(b, ram_offset, 1, false) || buffer->copy_count == 0)
        buffer->copies[buffer->copy_count++] =
            (struct mig_builder_copy){ .host = host, .at = buffer->length, .pages = 1 };
    else
        buffer->copies[buffer->copy_count - 1].pages++;
    buffer->length += MIG_PAGE_SIZE;
}

void mig_builder_add_zero(struct mig_frame_builder *b, uint64_t ram_offset, uint64_t count)
{
    while (count > 0) {
        uint64_t take = count > MIG_RUN_MAX_PAGES ? MIG_RUN_MAX_PAGES : count;
        builder_extend(b, ram_offset, take, true);
        if (b->run.pages > MIG_RUN_MAX_PAGES)
            b->run.pages = MIG_RUN_MAX_PAGES;   /* unreachable: extend checks */
        b->pages += take;
        b->zero_pages += take;
        ram_offset += take * MIG_PAGE_SIZE;
        count -= take;
    }
}

void mig_builder_close(struct mig_frame_builder *b, uint64_t seq)
{
    builder_close_run(b);
    struct mig_buffer *buffer = b->buffer;
    size_t length = buffer->length - buffer->frame_start - MIG_HEADER_SIZE;
    mig_header_encode(buffer->data + buffer->frame_start, MIG_FRAME_MEMORY, seq, length);
    buffer->frame_seq = seq;
    buffer->frame_end = buffer->length;
    buffer->unfilled = true;
}

/* Rewrites a closed, unfilled frame without the withdrawn data pages. In
 * place, front to back: a run's new form (one header per kept stretch,
 * each stretch's data) is never longer than its old one (every extra
 * header is paid for by at least one page left out, and a header is
 * smaller than a page), so writing never overtakes the run headers still
 * to read; data is not in the buffer yet (fill copies it from guest RAM). */
static uint64_t buffer_withdraw(struct mig_buffer *buffer, mig_page_withdrawn_fn withdrawn, void *opaque)
{
    uint8_t *data = buffer->data;
    struct mig_builder_copy planned[MIG_BUILDER_MAX_COPIES];
    unsigned planned_count = buffer->copy_count, next_planned = 0;
    memcpy(planned, buffer->copies, planned_count * sizeof(planned[0]));
    size_t payload = buffer->frame_start + MIG_HEADER_SIZE;
    size_t read = payload, write = payload;
    unsigned copies = 0;
    uint64_t left_out = 0;
    while (read < buffer->frame_end) {
        struct mig_run run;
        mig_run_decode(data + read, &run);
        if (run.flags & MIG_RUN_ZERO) {
            memmove(data + write, data + read, MIG_RUN_HEADER_SIZE);
            read += MIG_RUN_HEADER_SIZE;
            write += MIG_RUN_HEADER_SIZE;
            continue;
        }
        read += MIG_RUN_HEADER_SIZE + (size_t)run.pages * MIG_PAGE_SIZE;
        const struct mig_builder_copy *planned_copy = &planned[next_planned++];
        uint64_t first = run.ram_offset / MIG_PAGE_SIZE;
        uint32_t stretch = UINT32_MAX;  /* first page of the kept stretch open, if any */
        for (uint32_t p = 0; p <= run.pages; p++) {
            bool keep = p < run.pages && !withdrawn(first + p, opaque);
            if (keep) {
                if (stretch == UINT32_MAX)
                    stretch = p;
                continue;
            }
            if (p < run.pages)
                left_out++;
            if (stretch == UINT32_MAX)
                continue;
            struct mig_run kept = { .ram_offset = run.ram_offset + (uint64_t)stretch * MIG_PAGE_SIZE,
                                    .pages = p - stretch, .flags = 0 };
            mig_run_encode(&kept, data + write);
            write += MIG_RUN_HEADER_SIZE;
            buffer->copies[copies++] = (struct mig_builder_copy){
                .host = planned_copy->host + (size_t)stretch * MIG_PAGE_SIZE, .at = write, .pages = kept.pages };
            write += (size_t)kept.pages * MIG_PAGE_SIZE;
            stretch = UINT32_MAX;
        }
    }
    if (left_out == 0)
        return 0;       /* nothing moved: every header was written back where it was */
    if (write == payload) {
        /* Every page withdrawn: a memory frame has at least one run
         * (docs/migration-protocol.md), so the first page goes anyway.
         * Nothing was written over the first run header. */
        struct mig_run run;
        mig_run_decode(data + payload, &run);
        run.pages = 1;
        mig_run_encode(&run, data + write);
        write += MIG_RUN_HEADER_SIZE;
        buffer->copies[copies++] = (struct mig_builder_copy){ .host = planned[0].host, .at = write, .pages = 1 };
        write += MIG_PAGE_SIZE;
        left_out--;
    }
    size_t trailing = buffer->length - buffer->frame_end;
    memmove(data + write, data + buffer->frame_end, trailing);
    buffer->length = write + trailing;
    buffer->frame_end = write;
    buffer->copy_count = copies;
    mig_header_encode(data + buffer->frame_start, MIG_FRAME_MEMORY, buffer->frame_seq, write - payload);
    return left_out;
}

uint64_t mig_buffer_fill_withdrawing(struct mig_buffer *buffer, mig_page_withdrawn_fn withdrawn, void *opaque)
{
    uint64_t left_out = 0;
    if (buffer->unfilled && withdrawn != NULL)
        left_out = buffer_withdraw(buffer, withdrawn, opaque);
    mig_buffer_fill(buffer);
    return left_out;
}

void mig_buffer_fill(struct mig_buffer *buffer)
{
    if (!buffer->unfilled)
        return;
    uint8_t *data = buffer->data;
    uint8_t *header = data + buffer->frame_start;
    /* The checksum is mig_frame_checksum's: header[0, MIG_HEADER_CHECKSUM_OFFSET) then the payload
     * in order; run headers are hashed where they sit, each data page right
     * after it is copied. */
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, header, MIG_HEADER_CHECKSUM_OFFSET);
    size_t hashed = buffer->frame_start + MIG_HEADER_SIZE;
    for (unsigned i = 0; i < buffer->copy_count; i++) {
        const struct mig_builder_copy *c = &buffer->copies[i];
        XXH3_64bits_update(&state, data + hashed, c->at - hashed);
        for (uint32_t page = 0; page < c->pages; page++) {
            uint8_t *to = data + c->at + (size_t)page * MIG_PAGE_SIZE;
            memcpy(to, c->host + (size_t)page * MIG_PAGE_SIZE, MIG_PAGE_SIZE);
            XXH3_64bits_update(&state, to, MIG_PAGE_SIZE);
        }
        hashed = c->at + (size_t)c->pages * MIG_PAGE_SIZE;
    }
    XXH3_64bits_update(&state, data + hashed, buffer->length - hashed);
    mig_put_u64(header + MIG_HEADER_CHECKSUM_OFFSET, XXH3_64bits_digest(&state));
    buffer->copy_count = 0;
    buffer->unfilled = false;
}

void mig_builder_finish(struct mig_frame_builder *b, uint64_t seq)
{
    mig_builder_close(b, seq);
    mig_buffer_fill(b->buffer);
}

bool mig_buffer_append_frame(struct mig_buffer *buffer, uint32_t type, uint64_t seq, const void *payload,
                             size_t length)
{
    if (buffer->length + MIG_HEADER_SIZE + length > buffer->capacity)
        return false;
    buffer->length += mig_frame_encode(buffer->data + buffer->length, type, seq, payload, length);
    return true;
}
