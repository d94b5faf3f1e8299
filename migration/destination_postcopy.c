/*
 * The destination's post-copy (issue 17; docs/migration-protocol.md,
 * "Post-copy"): the urgent channel's accept, the discard runs, the switch
 * (RAM under userfaultfd, the state restored, the guest resumed), the end
 * (every page here, the page digest), and what happens when the
 * connections break afterwards (pause and recovery, or the guest lost).
 * Runs on the incoming thread; pc-urgent and pc-fault are
 * migration/postcopy_incoming.c's and postcopy_destination.c's.
 */
#include "migration/destination_internal.h"

#include "migration/postcopy_destination.h"
#include "migration/postcopy_priority.h"
#include "vmm/memory_extents.h"
#include "vmm/page_bitmap.h"

/* Post-copy, built-in guest: its pages/s from its own counters (the stats
 * slots in guest RAM), read only when the page holding them is here: a
 * read of a missing page would block this thread on its own fault. */
void incoming_guest_rate(struct incoming *in, uint64_t now)
{
    struct vm *vm = in->vm;
    in->progress.postcopy.guest_pages_per_s = -1;
    const uint8_t *slots = guest_memory_gpa_to_host(&vm->memory, RINGVM_STATS_GPA,
                                                    (uint64_t)RINGVM_STATS_SLOT_SIZE * vm->config.vcpu_count);
    if (vm_is_linux_guest(vm) || slots == NULL)
        return;
    uint64_t first = (uint64_t)(slots - vm->memory.host) / MIG_PAGE_SIZE;
    uint64_t last = ((uint64_t)(slots - vm->memory.host) + (uint64_t)RINGVM_STATS_SLOT_SIZE * vm->config.vcpu_count -
                     1) / MIG_PAGE_SIZE;
    for (uint64_t page = first; page <= last; page++)
        if (!postcopy_incoming_received(in->postcopy, page))
            return;
    uint64_t written = vm_guest_pages_written(vm);
    if (in->guest_rate_at_ns != 0 && now > in->guest_rate_at_ns && written >= in->guest_rate_pages)
        in->progress.postcopy.guest_pages_per_s =
            (int64_t)((unsigned __int128)(written - in->guest_rate_pages) * 1000000000u / (now - in->guest_rate_at_ns));
    in->guest_rate_at_ns = now;
    in->guest_rate_pages = written;
}

/* POSTCOPY_OPEN: accept the source's second connection (the urgent
 * channel) on the same listener, with the same peer check and TLS, within
 * the stall timeout; then POSTCOPY_OPEN_ACK on the main connection. */
int incoming_postcopy_open(struct incoming *in, int listen_fd, const struct mig_tls_credentials *credentials,
                                  char *error, size_t error_size)
{
    const _Atomic bool *stop = (const _Atomic bool *)&in->vm->shutdown_requested;
    int ready = mig_io_poll_readable(listen_fd, in->stall_ms);
    if (ready != 1) {
        snprintf(error, error_size, "postcopy-open: the source's urgent channel did not connect within %u ms",
                 in->stall_ms);
        return -1;
    }
    if (in->discarded == NULL)
        in->discarded = calloc(page_bitmap_words(in->vm->memory.size / MIG_PAGE_SIZE) + 1, sizeof(uint64_t));
    if (in->discarded == NULL) {
        snprintf(error, error_size, "out of memory for the discard bitmap");
        return -1;
    }
    int fd = mig_accept(listen_fd, stop, error, error_size);
    if (fd < 0)
        return -1;
    in->urgent = (struct mig_io){ .fd = fd, .stall_ms = in->stall_ms, .cancel = stop,
                                  .peer = "source (urgent channel)" };
    if (credentials != NULL) {
        struct mig_tls_options options = { .credentials = credentials };
        char text[512];
        if (mig_tls_handshake(&in->urgent.tls, &in->urgent, &options, text, sizeof(text)) != 0) {
            snprintf(error, error_size, "the urgent channel: %s", text);
            return -1;
        }
    }
    /* Before any discard (docs/architecture.md, "Page size: transparent huge
     * pages, huge pages, and why a discard is checked"). */
    guest_memory_forgo_thp(&in->vm->memory);
    uint8_t payload[MIG_POSTCOPY_OPEN_SIZE] = { 0 };
    if (incoming_send(in, MIG_FRAME_POSTCOPY_OPEN_ACK, payload, sizeof(payload)) != 0) {
        snprintf(error, error_size, "could not answer postcopy-open");
        return -1;
    }
    return 0;
}

/* POSTCOPY_DISCARD: the runs' pages leave guest RAM, so their next touch
 * (after registration) faults. */
int incoming_postcopy_discard(struct incoming *in, char *error, size_t error_size)
{
    const struct mig_receiver *r = &in->receiver;
    struct guest_ram ram = guest_memory_ram(&in->vm->memory);
    for (unsigned i = 0; i < r->discard_count; i++) {
        const struct mig_discard_run *run = &r->discard_runs[i];
        char reason[256];
        if (guest_ram_discard(&ram, run->ram_offset, run->pages * MIG_PAGE_SIZE, reason, sizeof(reason)) != 0) {
            snprintf(error, error_size, "postcopy-discard: %s", reason);
            return -1;
        }
        for (uint64_t page = run->ram_offset / MIG_PAGE_SIZE; page < run->ram_offset / MIG_PAGE_SIZE + run->pages;
             page++)
            page_bitmap_set(in->discarded, page);
    }
    return 0;
}

/* POSTCOPY_DISCARD_SYNC (hybrid's early discard): the pages of the DISCARD
 * frames before it are gone from guest RAM (each was applied as it came);
 * say so, echoing their count, so the source can pause the guest knowing
 * the punching is done. */
int incoming_postcopy_discard_sync(struct incoming *in, char *error, size_t error_size)
{
    uint64_t pages = in->receiver.discard_sync_pages;
    uint8_t payload[MIG_POSTCOPY_DISCARD_SYNC_SIZE];
    mig_put_u64(payload, pages);
    if (incoming_send(in, MIG_FRAME_POSTCOPY_DISCARD_SYNC_ACK, payload, sizeof(payload)) != 0) {
        snprintf(error, error_size, "could not answer postcopy-discard-sync");
        return -1;
    }
    in->progress.postcopy.discarded_early_pages = pages;
    return 0;
}

static int incoming_place(void *opaque, uint64_t ram_offset, uint32_t pages, const uint8_t *data)
{
    return postcopy_incoming_place(opaque, ram_offset, pages, data);
}

/* POSTCOPY_SWITCH: RAM under userfaultfd, the state restored, the guest
 * resumed (or left paused as on the source), RESUMED sent on the urgent
 * channel. From here on the guest runs here. */
int incoming_postcopy_switch(struct incoming *in, char *error, size_t error_size, uint32_t *code)
{
    struct vm *vm = in->vm;
    const struct mig_postcopy_switch *sw = &in->receiver.postcopy_switch;
    struct postcopy_incoming_options options = {
        .host = vm->memory.host, .memfd = vm->memory.memfd, .size = vm->memory.size, .urgent = in->urgent,
        .digest = (in->receiver.peer.features & MIG_FEATURE_DIGEST) != 0,
    };
    /* The stream's window is clamped before the source starts it (not at
     * the next publish: stream_window.h). */
    stream_window_update(&in->stream_window, in->fd, mig_mono_ns(),
                         atomic_load_explicit(&in->receiver.bytes_received, memory_order_relaxed));
    in->urgent.fd = -1;     /* the session's now, closed by it even when it fails */
    in->urgent.tls = NULL;
    if (postcopy_incoming_start(&in->postcopy, &options, error, error_size) != 0)
        return -1;
    /* This thread now receives the stream the vCPUs wait on (restored
     * when the migration ends, destination.c). */
    in->stream_nice_before = postcopy_priority_boost_stream(0, "mig-incoming");
    /* Missing here: the discarded pages, plus pages pre-copy sent as zero
     * runs (pages without data, filled below once the guest runs). */
    uint64_t known_zero = postcopy_incoming_known_zero(in->postcopy, in->discarded);
    uint64_t missing = postcopy_incoming_missing(in->postcopy) - known_zero;
    if (missing != sw->missing_pages) {
        *code = MIG_ERR_STREAM;
        snprintf(error, error_size, "postcopy-switch: the source says %" PRIu64 " pages are missing here, %" PRIu64
                 " are", sw->missing_pages, missing);
        return -1;
    }
    if (mig_receiver_set_placer(&in->receiver, incoming_place, in->postcopy) != 0) {
        snprintf(error, error_size, "out of memory for post-copy frames");
        return -1;
    }
    if (incoming_restore(in, error, error_size, code) != 0)
        return -1;
    bool stay_paused = (sw->flags & MIG_END_GUEST_PAUSED) != 0;
    uint64_t resumed;
    if (incoming_resume_guest(in, stay_paused, &resumed, error, error_size, code) != 0)
        return -1;
    postcopy_incoming_resumed(in->postcopy, resumed);
    if (resumed >= sw->pause_timestamp_ns) {
        in->progress.downtime_ms = (resumed - sw->pause_timestamp_ns + 999999u) / 1000000u;
        in->progress.downtime_us = (resumed - sw->pause_timestamp_ns + 999u) / 1000u;
    }
    /* The receiver's count restarts at DISCARD_SYNC: what came after it,
     * in the pause (all of them without one). */
    in->progress.postcopy.discarded_in_pause_pages = in->receiver.discard_pages;
    in->progress.postcopy.active = true;
    in->progress.postcopy.switched_at_ms = (mig_mono_ns() - in->started_mono) / 1000000u;
    in->progress.postcopy.pages_total = missing;
    fprintf(stderr, "ringvm: migration: post-copy: the guest %s here, %" PRIu64 " of %" PRIu64 " pages to come\n",
            stay_paused ? "is restored (paused as on the source)" : "runs", missing, vm->memory.size / MIG_PAGE_SIZE);
    incoming_phase(in, MIG_STATE_ACTIVE, "postcopy");
    if (known_zero > 0 && postcopy_incoming_fill_known_zero(in->postcopy, in->discarded) != 0) {
        snprintf(error, error_size, "post-copy: placing the %" PRIu64 " pages pre-copy sent as zero failed",
                 known_zero);
        return -1;
    }
    return 0;
}

/* POSTCOPY_RESUME on a recovery connection: the received bitmap, so the
 * source sends only what is still missing here. */
int incoming_send_received_bitmap(struct incoming *in, char *error, size_t error_size)
{
    uint64_t pages = in->vm->memory.size / MIG_PAGE_SIZE;
    uint64_t words = page_bitmap_words(pages);
    size_t frame_size = MIG_HEADER_SIZE + postcopy_return_bitmap_length(pages < POSTCOPY_BITMAP_MAX_PAGES
                                                                            ? pages : POSTCOPY_BITMAP_MAX_PAGES);
    uint64_t *bits = malloc(words * sizeof(uint64_t));
    uint8_t *frame = malloc(frame_size);
    int result = 0;
    if (bits == NULL || frame == NULL) {
        snprintf(error, error_size, "out of memory for the received bitmap");
        result = -1;
    }
    if (result == 0)
        postcopy_incoming_copy_received(in->postcopy, 0, words, bits);
    for (uint64_t first = 0; result == 0 && first < pages; first += POSTCOPY_BITMAP_MAX_PAGES) {
        uint64_t count = pages - first < POSTCOPY_BITMAP_MAX_PAGES ? pages - first : POSTCOPY_BITMAP_MAX_PAGES;
        size_t length = postcopy_return_encode_received_bitmap(frame, in->seq++, first * MIG_PAGE_SIZE, count,
                                                               bits + first / 64);
        char text[400];
        if (mig_io_write(&in->io, frame, length, text, sizeof(text)) != 0) {
            snprintf(error, error_size, "sending the received bitmap: %s", text);
            result = -1;
        }
    }
    free(bits);
    free(frame);
    return result;
}

/* The connections broke after the switch-over. A source that closed them
 * is gone: the pages still missing are lost with it (-1). Otherwise phase
 * postcopy-paused: vCPUs touching missing pages wait, RAM stays
 * registered, the old connections stay open (closing them would tell the
 * source this process is gone) until migration.recover names an address
 * and a source connects there; 0 with in->fd the new connection and the
 * receiver restarted, or -1 (shutdown, cancel: the guest is lost). */
int incoming_postcopy_recover(struct incoming *in, const struct mig_tls_credentials *credentials,
                                     const char *cause, char *error, size_t error_size, uint32_t *code)
{
    struct vm *vm = in->vm;
    struct migration *m = in->m;
    const _Atomic bool *stop = (const _Atomic bool *)&vm->shutdown_requested;
    postcopy_incoming_pause(in->postcopy);
    /* A recovery that broke between its POSTCOPY_OPEN and the restart of
     * pc-urgent leaves the new urgent channel here: it is dead with its
     * connection (the next recovery opens another). */
    mig_tls_session_free(in->urgent.tls);
    in->urgent.tls = NULL;
    if (in->urgent.fd >= 0)
        close(in->urgent.fd);
    in->urgent.fd = -1;
    /* Each pause needs its own migration.recover: the last one's listener
     * goes (so that migration.recover may name the same address again;
     * while we held it, that failed with "another ringvm is listening
     * there" or EADDRINUSE). */
    if (in->recovery_open) {
        mig_listener_close(&in->recovery);
        in->recovery_open = false;
    }
    *code = MIG_ERR_CANCELLED;
    if (atomic_load_explicit(stop, memory_order_acquire)) {
        snprintf(error, error_size, "post-copy: the destination is shutting down: the guest is lost (%.200s)", cause);
        return -1;
    }
    /* (A recovery connection that breaks says nothing about the source's
     * life: the old connections are closed by then.) */
    if (!in->recovering &&
        (mig_socket_peer_gone(in->fd) || mig_socket_peer_gone(postcopy_incoming_urgent_fd(in->postcopy)))) {
        snprintf(error, error_size, "post-copy: the source closed its connections (its process ended?) with %" PRIu64
                 " pages still missing here: the guest is lost (%.200s)", postcopy_incoming_missing(in->postcopy),
                 cause);
        return -1;
    }
    snprintf(in->progress.error_code, sizeof(in->progress.error_code), "postcopy-paused");
    snprintf(in->progress.error_message, sizeof(in->progress.error_message), "%s", cause);
    pthread_mutex_lock(&m->lock);
    m->postcopy_paused = true;
    m->paused_incoming = true;
    m->recover_requested = false;
    pthread_mutex_unlock(&m->lock);
    incoming_phase(in, MIG_STATE_ACTIVE, "postcopy-paused");
    fprintf(stderr, "ringvm: migration: post-copy paused: %s; %" PRIu64 " pages missing, vCPUs that touch them wait: "
            "run migration.recover ADDRESS here, then migration.start with resume on the source\n", cause,
            postcopy_incoming_missing(in->postcopy));
    for (;;) {
        if (atomic_load_explicit(stop, memory_order_acquire) ||
            atomic_load_explicit(&m->cancel, memory_order_acquire)) {
            snprintf(error, error_size, "post-copy: given up while paused (%s): the guest is lost",
                     atomic_load_explicit(stop, memory_order_acquire) ? "shutting down" : "migration.cancel");
            return -1;
        }
        char address[sizeof(m->recover_address)] = "";
        struct mig_listener listener;
        bool took_listener = false;
        pthread_mutex_lock(&m->lock);
        if (m->recover_requested) {
            snprintf(address, sizeof(address), "%s", m->recover_address);
            m->recover_requested = false;
            if (m->recover_listener_open) {
                listener = m->recover_listener;     /* ours from here on */
                m->recover_listener_open = false;
                took_listener = true;
            }
        }
        pthread_mutex_unlock(&m->lock);
        if (took_listener) {
            if (in->recovery_open)
                mig_listener_close(&in->recovery);
            in->recovery = listener;
            in->recovery_open = true;
            snprintf(in->progress.address, sizeof(in->progress.address), "%s", address);
            fprintf(stderr, "ringvm: migration: post-copy recovery: listening on %s\n", address);
        }
        if (!in->recovery_open || mig_io_poll_readable(in->recovery.fd, 100) != 1) {
            if (!in->recovery_open) {
                pthread_mutex_lock(&m->lock);
                if (!m->recover_requested)
                    mig_cond_wait_ms(&m->postcopy_cond, &m->lock, 100);
                pthread_mutex_unlock(&m->lock);
            }
            if (mig_mono_ns() - in->last_publish >= PUBLISH_INTERVAL_NS)
                incoming_publish(in);
            continue;
        }
        char text[512];
        int fd = mig_accept(in->recovery.fd, stop, text, sizeof(text));
        if (fd < 0) {
            fprintf(stderr, "ringvm: migration: post-copy recovery: %s\n", text);
            continue;
        }
        stream_window_start_small(fd);
        struct mig_io io = { .fd = fd, .stall_ms = in->stall_ms, .cancel = stop, .peer = "source" };
        if (credentials != NULL) {
            struct mig_tls_options options = { .credentials = credentials };
            if (mig_tls_handshake(&io.tls, &io, &options, text, sizeof(text)) != 0) {
                /* Wrong key, plaintext, a port scan: told by the handshake
                 * (an alert or the plaintext ERROR frame), closed; still
                 * paused and listening for the real source. */
                fprintf(stderr, "ringvm: migration: post-copy recovery: refused a connection: %s; still paused, "
                        "waiting for the source\n", text);
                snprintf(in->progress.error_message, sizeof(in->progress.error_message), "%.200s; post-copy "
                         "recovery: refused a connection: %.380s", cause, text);
                incoming_publish(in);
                close(fd);
                continue;
            }
        }
        mig_tls_session_free(in->tls);
        if (in->fd >= 0)
            close(in->fd);
        in->fd = fd;
        in->io = io;
        in->tls = io.tls;
        in->seq = 0;
        mig_receiver_restart_stream(&in->receiver);
        in->recovering = true;
        pthread_mutex_lock(&m->lock);
        m->postcopy_paused = false;
        pthread_mutex_unlock(&m->lock);
        in->progress.error_code[0] = '\0';
        in->progress.error_message[0] = '\0';
        incoming_phase(in, MIG_STATE_ACTIVE, "postcopy-recovering");
        return 0;
    }
}

int incoming_postcopy_recover_after(struct incoming *in, const struct mig_tls_credentials *credentials, char *error,
                                    size_t error_size, uint32_t *code)
{
    char cause[512];
    snprintf(cause, sizeof(cause), "%s", error);
    return incoming_postcopy_recover(in, credentials, cause, error, error_size, code);
}

/* END in post-copy: the main stream is over; requested pages may still be
 * on the urgent channel. Every page present within the stall timeout, the
 * page digest compared, RAM released from userfaultfd. */
int incoming_postcopy_end(struct incoming *in, char *error, size_t error_size, uint32_t *code)
{
    /* Asleep until pc-urgent (requested pages) or a failure wakes us; the
     * main stream's pages are all placed by now (this thread placed
     * them before it read END). */
    uint64_t missing;
    char text[512];
    int waited = postcopy_incoming_wait_all(in->postcopy, in->stall_ms, &missing, text, sizeof(text));
    if (waited < 0) {
        snprintf(error, error_size, "post-copy: %s (%" PRIu64 " pages missing)", text, missing);
        return -1;
    }
    if (waited > 0) {
        *code = MIG_ERR_STREAM;
        snprintf(error, error_size, "post-copy: the stream ended with %" PRIu64 " pages still missing after %u ms",
                 missing, in->stall_ms);
        return -1;
    }
    incoming_publish(in);
    if (in->receiver.end.flags & MIG_END_HAS_DIGEST) {
        char hex[PAGE_DIGEST_HEX_SIZE];
        uint64_t digest_pages = postcopy_incoming_digest(in->postcopy, hex);
        snprintf(in->progress.digest_destination, sizeof(in->progress.digest_destination), "%s", hex);
        snprintf(in->progress.digest_source, sizeof(in->progress.digest_source), "%s", in->receiver.end.digest);
        if (strcmp(hex, in->receiver.end.digest) != 0) {
            *code = MIG_ERR_DIGEST;
            snprintf(error, error_size, "page digest mismatch after post-copy: source %s, destination %s over %" PRIu64
                     " of %" PRIu64 " pages (the guest runs here already)", in->receiver.end.digest, hex,
                     digest_pages, in->vm->memory.size / MIG_PAGE_SIZE);
            return -1;
        }
    }
    postcopy_incoming_finish(in->postcopy);
    return 0;
}

