/*
 * Pre-copy live migration: the per-VM manager, the source state machine
 * (thread "migration") and the destination (migration_incoming_run).
 * See migration.h for the lifecycle; docs/migration-protocol.md for the
 * stream.
 */
#include "migration/migration.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "api/digest.h"
#include "api/server.h"
#include "bpf/probes.h"
#include "dirtyring/dirty_log.h"
#include "migration/protocol.h"
#include "migration/receiver.h"
#include "migration/sender.h"
#include "migration/transport.h"
#include "vmm/vcpu_state.h"
#include "vmm/vm.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PUBLISH_INTERVAL_NS   50000000ull   /* publish at least every 50 ms (issue: 100) */
#define CONNECT_TIMEOUT_MS    5000u
#define MIN_BANDWIDTH_SAMPLE  (256u << 10)  /* bytes; smaller iterations keep the old estimate */

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Bytes written to the migration socket that have not reached the peer
 * yet (TCP: not yet acknowledged; unix: not yet read). The sender counts
 * bytes handed to the kernel, so without this a bandwidth sample counts
 * the socket buffers' fill as if it had crossed the link: on a 1 Gbit/s
 * link iteration 0 of a 128 MiB guest read 141 MiB/s where ~115 MiB/s
 * went through, and the switch-over then overran the downtime limit.
 * 0 when the socket cannot say. */
static uint64_t socket_queued_bytes(int fd)
{
    int queued = 0;
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &queued) != 0 || queued < 0)
        return 0;
    return (uint64_t)queued;
}

/* RINGVM_MIG_TRACE=1: phase timestamps on stderr (diagnostics). */
static void trace(const char *what)
{
    static int enabled = -1;
    if (enabled < 0)
        enabled = getenv("RINGVM_MIG_TRACE") != NULL;
    if (enabled) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        fprintf(stderr, "ringvm: migration trace %ld.%06ld %s\n", (long)t.tv_sec, t.tv_nsec / 1000, what);
    }
}

static uint64_t real_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* ---- the per-VM manager ----------------------------------------------------
 *
 * Ownership: registry under registry_lock. In struct migration: thread,
 * thread_joinable, params, server under lock; active / cancel atomics
 * (written under lock by controllers, read by the migration thread);
 * board: its own lock (see progress.h).
 */
struct migration {
    struct vm *vm;
    pthread_mutex_t lock;
    pthread_cond_t idle;            /* broadcast when active becomes false */
    pthread_t thread;
    bool thread_joinable;
    _Atomic bool active;
    _Atomic bool cancel;
    /* Set (under lock) once END is about to be queued: from then on the
     * destination may resume the guest, so migration.cancel is refused
     * instead of being honoured half-way. cancel and past_end are decided
     * under lock, so exactly one of them wins. */
    bool past_end;
    uint64_t next_id;
    /* Destination's transfer timeout in ms (ringvm --incoming-stall-timeout),
     * 0 = INCOMING_STALL_DEFAULT_MS. Written under lock by
     * migration_set_incoming_stall_timeout, read under lock when an
     * incoming migration starts. */
    unsigned incoming_stall_ms;
    struct mig_params params;       /* of the running migration; set before the thread starts */
    uint64_t id;
    struct api_server *server;
    struct mig_progress_board board;
};

#define REGISTRY_MAX 32
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct migration *registry[REGISTRY_MAX];

static struct migration *manager_find(struct vm *vm, bool create)
{
    pthread_mutex_lock(&registry_lock);
    struct migration *found = NULL;
    int free_slot = -1;
    for (int i = 0; i < REGISTRY_MAX; i++) {
        if (registry[i] != NULL && registry[i]->vm == vm)
            found = registry[i];
        else if (registry[i] == NULL && free_slot < 0)
            free_slot = i;
    }
    if (found == NULL && create && free_slot >= 0) {
        found = calloc(1, sizeof(*found));
        if (found != NULL) {
            found->vm = vm;
            pthread_mutex_init(&found->lock, NULL);
            pthread_cond_init(&found->idle, NULL);
            mig_progress_board_init(&found->board);
            registry[free_slot] = found;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return found;
}

void mig_params_defaults(struct mig_params *p)
{
    memset(p, 0, sizeof(*p));
    p->downtime_ms = 300;
    p->converge = MIG_CONVERGE_AUTO;
    p->max_bandwidth_mibs = 0;
    p->timeout_s = 3600;
    p->timeout_force = false;
    p->keep_alive = false;
    p->throttle.initial = 20;
    p->throttle.increment = 10;
    p->throttle.max = 99;
    p->stall_timeout_ms = 5000;
    p->verify_digest = false;
    p->dirty_limit_margin = 50;
}

static void publish_event(struct api_server *server, const char *name, json_t *data)
{
    if (server != NULL)
        api_server_publish_event(server, name, data);
    else
        json_decref(data);
}

/* ---- the source ------------------------------------------------------------ */

struct source {
    struct migration *m;
    struct vm *vm;
    struct mig_params params;
    struct api_server *server;

    int fd;
    struct mig_io io;
    struct mig_input input;
    struct mig_sender sender;
    bool sender_started;
    bool tracking;
    bool locked;                    /* holds vm->control_lock */
    bool paused;                    /* we paused the vCPUs */
    bool user_paused;               /* the VM was PAUSED by the user at stop-and-copy */
    bool keep_paused;               /* failed with an unknown outcome: never resume (see source_complete) */
    uint64_t seq;                   /* next frame to the destination */
    uint64_t peer_seq;              /* next frame from the destination */

    struct mig_progress progress;   /* private; published copies on the board */
    struct bpf_probes_mark bpf_mark;    /* probes' counters at this iteration's start */
    bool bpf_marked;
    uint64_t started_mono;
    uint64_t last_publish;
    uint64_t deadline_mono;         /* overall timeout */
    bool force_switch;
    bool end_sent;                  /* the ACK is read by source_complete, not by ticks */
    uint64_t buffer_wait_ns;        /* time waiting for send buffers (trace) */

    uint64_t bandwidth;             /* bytes/s estimate (last iteration) */
    uint64_t digest_ms;             /* verify_digest: one XXH3 pass over RAM, estimated at start (0 = off) */
    uint64_t iteration_start_ns;    /* for a live estimate within the first iteration */
    uint64_t iteration_start_bytes;
    uint64_t pages_sent_total;
    struct mig_auto_converge auto_state;
    uint64_t dl_last_ns;            /* dirty-limit: last sample */
    uint64_t dl_last_pages[MIG_MAX_VCPUS];
    uint64_t dl_last_rate[MIG_MAX_VCPUS];
    int dl_last_throttle[MIG_MAX_VCPUS];

    struct dirty_pages pending;
    uint64_t pending_sent;          /* pages of `pending` sent so far in this iteration */

    /* Outcome. */
    const char *error_code;         /* NULL = none */
    char error[640];
    bool cancelled;
};

__attribute__((format(printf, 3, 4)))
static int source_fail(struct source *s, const char *code, const char *fmt, ...)
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

static int socket_read(void *ctx, void *data, size_t length, bool eof_ok, char *error, size_t error_size)
{
    return mig_io_read(ctx, data, length, eof_ok, error, error_size);
}

static void source_vcpu_throttles(struct source *s)
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

/* The migration.state event of either side. */
static void publish_state_event(struct api_server *server, uint64_t id, const char *role, enum mig_state state,
                                const char *phase)
{
    publish_event(server, MIG_EVENT_STATE,
                  json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)id, "role", role, "state",
                            mig_state_name(state), "phase", phase));
}

static void source_publish(struct source *s)
{
    uint64_t now = mono_ns();
    s->progress.elapsed_ms = (now - s->started_mono) / 1000000u;
    if (s->sender_started)
        s->progress.memory.transferred = mig_sender_bytes(&s->sender);
    source_vcpu_throttles(s);
    mig_progress_publish(&s->m->board, &s->progress);
    s->last_publish = now;
}

static void source_phase(struct source *s, enum mig_state state, const char *phase)
{
    enum mig_state old = s->progress.state;
    s->progress.state = state;
    snprintf(s->progress.phase, sizeof(s->progress.phase), "%s", phase);
    source_publish(s);
    if (old != state)
        publish_state_event(s->server, s->progress.id, "outgoing", state, phase);
}


/* Periodic work while sending: publish, dirty-limit, aborts. 0 or -1. */
static int source_tick(struct source *s)
{
    uint64_t now = mono_ns();
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
    if (s->fd >= 0 && !s->end_sent && mig_io_poll_readable(s->fd, 0) == 1) {
        uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
        struct mig_frame_header header;
        char text[600];
        struct mig_io quick = s->io;
        quick.stall_ms = 1000;
        struct mig_input quick_input = { .read = socket_read, .ctx = &quick };
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
            if (!s->end_sent && mig_io_poll_readable(s->fd, 200) == 1) {
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
    uint64_t started = mono_ns();
    for (;;) {
        if (source_tick(s) != 0)
            return NULL;
        struct mig_buffer *b = mig_sender_get(&s->sender, 50);
        if (b != NULL) {
            s->buffer_wait_ns += mono_ns() - started;
            return b;
        }
    }
}

static int source_flush(struct source *s)
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

static int source_small_frame(struct source *s, uint32_t type, const void *payload, size_t length)
{
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

/* Builder over buffers: pages go into the current frame; full frames are
 * submitted. */
struct stream {
    struct source *s;
    struct mig_buffer *buffer;
    struct mig_frame_builder builder;
    unsigned since_tick;
};

static int stream_submit(struct stream *st)
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

static int stream_room(struct stream *st)
{
    if (st->buffer != NULL && mig_builder_has_room(&st->builder)) {
        if (++st->since_tick >= 512) {
            st->since_tick = 0;
            if (source_tick(st->s) != 0)
                return -1;
        }
        return 0;
    }
    stream_submit(st);
    st->buffer = source_buffer(st->s);
    if (st->buffer == NULL)
        return -1;
    mig_builder_begin(&st->builder, st->buffer);
    return 0;
}

static int stream_page(struct stream *st, uint64_t page)
{
    if (stream_room(st) != 0)
        return -1;
    uint64_t offset = page * MIG_PAGE_SIZE;
    mig_builder_add_page(&st->builder, offset, st->s->vm->memory.host + offset);
    return 0;
}

static int stream_zero(struct stream *st, uint64_t first_page, uint64_t count)
{
    while (count > 0) {
        if (stream_room(st) != 0)
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

/* Iteration 0: all RAM; memfd holes are zero runs without reading them. */
static int source_send_all(struct source *s)
{
    struct guest_memory *memory = &s->vm->memory;
    uint64_t pages = guest_memory_pages(memory);
    struct stream st = { .s = s };
    uint64_t page = 0;
    bool extents = true;
    s->progress.memory.remaining = memory->size;
    while (page < pages) {
        uint64_t data_start = page, data_end = pages;
        if (extents) {
            off_t data = lseek(memory->memfd, (off_t)(page * MIG_PAGE_SIZE), SEEK_DATA);
            if (data < 0 && errno == ENXIO) {
                data_start = data_end = pages;
            } else if (data < 0) {
                extents = false;
            } else {
                off_t hole = lseek(memory->memfd, data, SEEK_HOLE);
                if (hole < 0) {
                    extents = false;
                } else {
                    data_start = (uint64_t)data / MIG_PAGE_SIZE;
                    data_end = ((uint64_t)hole + MIG_PAGE_SIZE - 1) / MIG_PAGE_SIZE;
                    if (data_end > pages)
                        data_end = pages;
                }
            }
        }
        if (!extents) {
            data_start = page;
            data_end = pages;
        }
        if (data_start > page && stream_zero(&st, page, data_start - page) != 0)
            return -1;
        for (uint64_t p = data_start; p < data_end; p++) {
            if (stream_page(&st, p) != 0)
                return -1;
            s->progress.memory.remaining = (pages - p) * MIG_PAGE_SIZE;
        }
        page = data_end;
    }
    stream_submit(&st);
    return 0;
}

static int source_send_pending(struct source *s)
{
    struct stream st = { .s = s };
    s->pending_sent = 0;
    for (uint64_t i = 0; i < s->pending.count; i++) {
        if (stream_page(&st, s->pending.pages[i]) != 0)
            return -1;
        s->pending_sent = i + 1;
    }
    stream_submit(&st);
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
    s->dl_last_ns = mono_ns();
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

static int source_handshake(struct source *s)
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
    hello.vcpu_state_size = sizeof(struct vcpu_state);
    hello.vcpu_state_version = VCPU_STATE_VERSION;
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
    if (mig_read_small_frame(&s->input, s->peer_seq++, &header, reply, sizeof(reply), text, sizeof(text)) != 0) {
        if (atomic_load_explicit(&s->m->cancel, memory_order_acquire)) {
            s->cancelled = true;
            return source_fail(s, "cancelled", "cancelled by migration.cancel");
        }
        return source_fail(s, "transport", "handshake: %s", text);
    }
    if (header.type == MIG_FRAME_ERROR) {
        uint32_t code;
        char message[MIG_ERROR_MAX_MESSAGE + 1];
        mig_error_decode(reply, (size_t)header.length, &code, message, sizeof(message));
        return source_fail(s, code == MIG_ERR_CONFIG ? "config-mismatch" : "destination-error",
                           "destination refused: %s", message);
    }
    if (header.type != MIG_FRAME_HELLO_ACK)
        return source_fail(s, "stream", "destination answered the hello with a %s frame",
                           mig_frame_type_name(header.type));
    struct mig_hello peer;
    if (mig_hello_decode(reply, (size_t)header.length, &peer, text, sizeof(text)) != 0)
        return source_fail(s, "stream", "destination hello: %s", text);
    if (mig_hello_compare(&hello, &peer, true, text, sizeof(text)) != 0)
        return source_fail(s, "config-mismatch", "configuration mismatch: %s", text);
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
    publish_event(s->server, MIG_EVENT_ITERATION, data);
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
        ssize_t got = recv(wait->s->fd, data, capacity, MSG_DONTWAIT);
        if (got >= 0)
            return got;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            snprintf(error, error_size, "receiving from destination: %s", strerror(errno));
            return -1;
        }
        uint64_t now = mono_ns();
        if (now >= wait->deadline_ns) {
            snprintf(error, error_size, "receiving from destination: deadline passed");
            return -1;
        }
        source_publish(wait->s);
        uint64_t left_ms = (wait->deadline_ns - now + 999999u) / 1000000u;
        if (mig_io_poll_readable(wait->s->fd, left_ms < 50 ? (unsigned)left_ms : 50u) < 0) {
            snprintf(error, error_size, "poll(destination): %s", strerror(errno));
            return -1;
        }
    }
}

/* Stop-and-copy and the ACK. */
static int source_complete(struct source *s)
{
    struct vm *vm = s->vm;
    fprintf(stderr, "ringvm: migration: memory delta transmission stopping - cutoff condition reached\n");
    source_phase(s, MIG_STATE_COMPLETING, "stop-and-copy");
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
    uint64_t pause_mono = mono_ns(), pause_real = real_ns();
    trace("src paused");
    if ((r = dirty_log_final_sync(vm->dirty_log)) != 0)
        return source_fail(s, "internal", "final dirty sync: %s", strerror(-r));
    trace("src final sync done");
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
    dirty_pages_free(&extra);
    dirty_pages_free(&s->pending);
    s->pending = merged;
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace final set: %" PRIu64 " pending + %" PRIu64 " final = %" PRIu64
                " pages\n", total - extra_count, extra_count, merged.count);
    s->progress.iteration++;
    s->progress.memory.remaining = s->pending.count * MIG_PAGE_SIZE;
    if (source_iteration_marker(s, s->progress.iteration, s->pending.count) != 0)
        return -1;
    s->buffer_wait_ns = 0;
    if (source_send_pending(s) != 0)
        return -1;
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace final pages: waited %" PRIu64 " ms for buffers, sender busy %"
                PRIu64 " ms total\n", s->buffer_wait_ns / 1000000u,
                atomic_load_explicit(&s->sender.send_ns, memory_order_relaxed) / 1000000u);

    trace("src pages queued");
    /* vCPU states. */
    struct vcpu_state *state = malloc(sizeof(*state));
    uint8_t *frame = malloc(MIG_VCPU_STATE_HEADER + sizeof(*state));
    if (state == NULL || frame == NULL) {
        free(state);
        free(frame);
        return source_fail(s, "internal", "out of memory for vCPU state");
    }
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        memset(state, 0, sizeof(*state));
        r = vcpu_state_save(vm->vcpus[i].fd, vm->msr_indices, vm->msr_count, vm->config.create_irqchip, state);
        if (r != 0) {
            free(state);
            free(frame);
            return source_fail(s, "internal", "saving vCPU %u state: %s", i, strerror(-r));
        }
        mig_put_u32(frame, i);
        mig_put_u32(frame + 4, (uint32_t)sizeof(*state));
        memcpy(frame + MIG_VCPU_STATE_HEADER, state, sizeof(*state));
        if (source_small_frame(s, MIG_FRAME_VCPU_STATE, frame, MIG_VCPU_STATE_HEADER + sizeof(*state)) != 0) {
            free(state);
            free(frame);
            return -1;
        }
    }
    free(state);
    free(frame);

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
    if (source_small_frame(s, MIG_FRAME_DEVICE_STATE, device_bytes, sizeof(device_bytes)) != 0)
        return -1;
    trace("src states queued");

    /* The digest is computed while the sender drains (RAM is frozen). */
    struct mig_end end = { .timestamp_ns = pause_real, .pages = s->pages_sent_total };
    if (s->params.verify_digest) {
        char hex[MEMORY_DIGEST_HEX_SIZE];
        r = memory_digest(&vm->memory, hex, NULL, NULL);
        if (r != 0)
            return source_fail(s, "internal", "memory digest: %s", strerror(-r));
        snprintf(s->progress.digest_source, sizeof(s->progress.digest_source), "%s", hex);
        snprintf(end.digest, sizeof(end.digest), "%s", hex);
        end.flags = MIG_END_HAS_DIGEST;
    }
    uint8_t end_bytes[MIG_END_SIZE];
    mig_end_encode(&end, end_bytes);
    pthread_mutex_lock(&s->m->lock);
    bool cancelled = atomic_load_explicit(&s->m->cancel, memory_order_acquire);
    s->m->past_end = !cancelled;
    pthread_mutex_unlock(&s->m->lock);
    if (cancelled) {
        s->cancelled = true;
        return source_fail(s, "cancelled", "cancelled by migration.cancel");
    }
    s->end_sent = true;
    if (source_small_frame(s, MIG_FRAME_END, end_bytes, sizeof(end_bytes)) != 0)
        return -1;
    trace("src digest done, end queued");
    if (source_flush(s) != 0)
        return -1;
    s->progress.memory.remaining = 0;
    source_phase(s, MIG_STATE_COMPLETING, "waiting-ack");
    trace("src flushed");

    /* The ACK: the destination restores, verifies and resumes first. The
     * whole reply must be in by a hard deadline (issue 16, item 1): we hold
     * control_lock with the vCPUs paused, and a destination trickling
     * bytes must not keep every API command queued behind us. */
    uint8_t reply[4 + MIG_ERROR_MAX_MESSAGE];
    struct mig_frame_header header;
    char text[600];
    unsigned ack_ms = s->params.stall_timeout_ms * 2 > 10000 ? s->params.stall_timeout_ms * 2 : 10000;
    uint64_t ack_started = mono_ns();
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
    if (header.type != MIG_FRAME_ACK)
        return source_fail(s, "stream", "destination answered the end with a %s frame",
                           mig_frame_type_name(header.type));
    struct mig_end ack;
    if (mig_end_decode(reply, &ack, text, sizeof(text)) != 0)
        return source_fail(s, "stream", "destination ack: %s", text);
    uint64_t now_mono = mono_ns();
    if (ack.timestamp_ns >= pause_real && ack.timestamp_ns - pause_real <= now_mono - pause_mono + 1000000u)
        s->progress.downtime_ms = (ack.timestamp_ns - pause_real + 999999u) / 1000000u;
    else
        s->progress.downtime_ms = (now_mono - pause_mono) / 1000000u;   /* clocks disagree: upper bound */
    snprintf(s->progress.digest_destination, sizeof(s->progress.digest_destination), "%s", ack.digest);
    if (!s->params.verify_digest) {
        /* Off the critical path: the vCPUs stay paused here for good. */
        char hex[MEMORY_DIGEST_HEX_SIZE];
        if (memory_digest(&vm->memory, hex, NULL, NULL) == 0)
            snprintf(s->progress.digest_source, sizeof(s->progress.digest_source), "%s", hex);
    }
    if (s->params.verify_digest && strcmp(ack.digest, s->progress.digest_source) != 0)
        return source_fail(s, "digest-mismatch", "memory digests differ: source %s, destination %s",
                           s->progress.digest_source, ack.digest);
    return 0;
}

static int source_run(struct source *s)
{
    struct vm *vm = s->vm;
    char text[600];
    struct mig_address address;
    if (mig_address_parse(s->params.dest, &address, text, sizeof(text)) != 0)
        return source_fail(s, "invalid-argument", "%s", text);
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
    s->input = (struct mig_input){ .read = socket_read, .ctx = &s->io };
    source_phase(s, MIG_STATE_SETUP, "handshake");
    if (source_handshake(s) != 0)
        return -1;
    uint64_t cap = s->params.max_bandwidth_mibs << 20;
    if (mig_sender_start(&s->sender, s->fd, cap, s->params.stall_timeout_ms, &s->m->cancel, text,
                         sizeof(text)) != 0)
        return source_fail(s, "internal", "%s", text);
    s->sender_started = true;
    /* The migration's own hold: a fresh session (empty dirty set, all RAM
     * write-protected) even when vm.dirty-tracking already keeps tracking
     * on; iteration 0 below sends every page anyway. */
    int r = dirty_log_hold(vm->dirty_log, DIRTY_LOG_HOLDER_MIGRATION);
    if (r != 0)
        return source_fail(s, "internal", "starting dirty tracking: %s", strerror(-r));
    s->tracking = true;
    s->progress.setup_ms = (mono_ns() - s->started_mono) / 1000000u;
    source_phase(s, MIG_STATE_ACTIVE, "bulk");
    if (s->params.converge == MIG_CONVERGE_DIRTY_LIMIT)
        dirty_limit_apply(s, 0, 0);     /* baseline of the per-vCPU counters */

    uint64_t iteration = 0;
    for (;;) {
        uint64_t iteration_start = mono_ns();
        uint64_t bytes_start = mig_sender_bytes(&s->sender);
        uint64_t queued_start = socket_queued_bytes(s->fd);
        s->iteration_start_ns = iteration_start;
        s->iteration_start_bytes = bytes_start;
        uint64_t sent_pages;
        s->progress.iteration = iteration;
        int throttle_during = s->progress.throttle_percent;
        source_vcpu_throttles(s);
        throttle_during = s->progress.throttle_percent;
        if (iteration == 0) {
            source_bpf_mark(s);
            if (source_iteration_marker(s, 0, guest_memory_pages(&vm->memory)) != 0 || source_send_all(s) != 0)
                return -1;
            sent_pages = guest_memory_pages(&vm->memory);
        } else {
            if (source_iteration_marker(s, iteration, s->pending.count) != 0 || source_send_pending(s) != 0)
                return -1;
            sent_pages = s->pending.count;
        }
        if (source_flush(s) != 0)
            return -1;
        uint64_t sent_done = mono_ns();
        uint64_t bytes = mig_sender_bytes(&s->sender) - bytes_start;
        uint64_t send_ns = sent_done - iteration_start;
        /* What crossed the link in this iteration: written, plus what sat
         * in the socket at the start, minus what still sits there now. */
        uint64_t queued_end = socket_queued_bytes(s->fd);
        uint64_t delivered = bytes + queued_start > queued_end ? bytes + queued_start - queued_end : 0;
        if (delivered >= MIN_BANDWIDTH_SAMPLE || s->bandwidth == 0) {
            s->bandwidth = send_ns > 0 ? (uint64_t)((unsigned __int128)delivered * 1000000000u / send_ns) : 0;
        }
        /* The dirty set of this iteration. */
        uint64_t take_start = mono_ns();
        s->pending.count = 0;
        int64_t dirty = dirty_log_take(vm->dirty_log, &s->pending);
        uint64_t take_end = mono_ns();
        if (dirty < 0)
            return source_fail(s, "internal", "taking the dirty set: %s", strerror((int)-dirty));
        uint64_t dur_ns = take_end - iteration_start;
        struct mig_iteration_record record = {
            .iteration = iteration,
            .dur_ms = dur_ns / 1000000u,
            .overhead_ms = (take_end - take_start) / 1000000u,
            .throttle = throttle_during,
            .size_bytes = s->pending.count * MIG_PAGE_SIZE,
            .dirty_rate_pps = dur_ns > 0 ? (uint64_t)((unsigned __int128)s->pending.count * 1000000000u / dur_ns) : 0,
            .bandwidth_mibs = (double)s->bandwidth / (1024.0 * 1024.0),
            .expected_downtime_ms = mig_expected_downtime_with_digest_ms(
                mig_expected_downtime_ms(s->pending.count * MIG_PAGE_SIZE, s->bandwidth), s->digest_ms),
            .pages_sent = sent_pages,
            .bytes_sent = bytes,
        };
        s->progress.dirty_rate_pps = record.dirty_rate_pps;
        s->progress.bandwidth_mibs = record.bandwidth_mibs;
        s->progress.expected_downtime_ms = record.expected_downtime_ms;
        s->progress.memory.remaining = record.size_bytes;
        s->pending_sent = 0;
        source_log_iteration(s, &record);
        source_publish(s);
        if (source_tick(s) != 0)
            return -1;

        if (mig_should_switch(record.expected_downtime_ms, s->params.downtime_ms) || s->force_switch)
            break;
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
    if (strcmp(s->error_code, "transport") == 0 || strcmp(s->error_code, "destination-error") == 0 ||
        strcmp(s->error_code, "config-mismatch") == 0 || strcmp(s->error_code, "digest-mismatch") == 0)
        return;
    uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE], frame[MIG_HEADER_SIZE + 4 + MIG_ERROR_MAX_MESSAGE];
    size_t length = mig_error_encode(s->cancelled ? MIG_ERR_CANCELLED : MIG_ERR_INTERNAL, s->error, payload);
    /* Queued frames that were dropped never reached the wire: number the
     * ERROR after the last frame written. */
    uint64_t seq = s->sender_started ? mig_sender_seq_written(&s->sender) : s->seq;
    size_t total = mig_frame_encode(frame, MIG_FRAME_ERROR, seq, payload, length);
    struct mig_io io = { .fd = s->fd, .stall_ms = 500, .cancel = NULL, .peer = "destination" };
    char ignored[256];
    (void)mig_io_write(&io, frame, total, ignored, sizeof(ignored));
}

/* Drops the migration's hold on dirty tracking (never the API's: with
 * vm.dirty-tracking on, tracking stays on). */
static void source_release_tracking(struct source *s)
{
    if (!s->tracking)
        return;
    int r = dirty_log_release(s->vm->dirty_log, DIRTY_LOG_HOLDER_MIGRATION);
    if (r != 0)
        fprintf(stderr, "ringvm: migration: stopping dirty tracking: %s\n", strerror(-r));
    s->tracking = false;
}

static void *migration_main(void *argument)
{
    struct source *s = argument;
    struct migration *m = s->m;
    struct vm *vm = s->vm;
    pthread_setname_np(pthread_self(), "migration");
    dirty_pages_init(&s->pending);
    int result = source_run(s);

    uint64_t ended = mono_ns();
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
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    s->progress.total_ms = (ended - s->started_mono) / 1000000u;
    s->progress.ended_at_ms = real_ns() / 1000000u;
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
    publish_event(s->server, MIG_EVENT_STATE, event);

    if (result == 0) {
        fprintf(stderr, "ringvm: migration %" PRIu64 " completed: %" PRIu64 " ms total, downtime %" PRIu64
                " ms, %" PRIu64 " iterations, %" PRIu64 " MiB sent\n", s->progress.id, s->progress.total_ms,
                s->progress.downtime_ms, s->progress.iteration_count, s->progress.memory.transferred >> 20);
        if (s->locked)
            pthread_mutex_unlock(&vm->control_lock);
        s->locked = false;
        if (!s->params.keep_alive)
            vm_request_shutdown(vm, 0);
    }
    dirty_pages_free(&s->pending);
    free(s);

    pthread_mutex_lock(&m->lock);
    atomic_store_explicit(&m->active, false, memory_order_release);
    pthread_cond_broadcast(&m->idle);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* One memory_digest pass over ram_bytes of guest RAM, in ms: the same
 * XXH3-128 code timed over a buffer larger than this machine's caches
 * (best of two passes, faults excluded). Timed in this thread's CPU time:
 * the guest runs now and competes for the cores, but at stop-and-copy its
 * vCPUs are parked and the digests have the machine. Guest RAM with
 * never-written pages hashes faster (holes come from a cached zero piece),
 * so this errs on the long side, the safe one for a downtime limit. 0 when
 * the buffer cannot be had (then the downtime is not budgeted). */
#define DIGEST_CALIBRATION_BYTES (32ull << 20)
static uint64_t digest_estimate_ms(uint64_t ram_bytes)
{
    uint8_t *buffer = malloc(DIGEST_CALIBRATION_BYTES);
    if (buffer == NULL)
        return 0;
    for (uint64_t i = 0; i < DIGEST_CALIBRATION_BYTES; i += 8)
        memcpy(buffer + i, &i, sizeof(i));
    uint64_t best_ns = UINT64_MAX;
    for (int pass = 0; pass < 2; pass++) {
        char hex[MEMORY_DIGEST_HEX_SIZE];
        uint64_t started = thread_cpu_ns();
        memory_digest_buffer(buffer, DIGEST_CALIBRATION_BYTES, hex, NULL, NULL);
        uint64_t took = thread_cpu_ns() - started;
        if (took < best_ns)
            best_ns = took;
    }
    free(buffer);
    unsigned __int128 ns = (unsigned __int128)ram_bytes * best_ns / DIGEST_CALIBRATION_BYTES;
    uint64_t ms = (uint64_t)((ns + 999999u) / 1000000u);
    return ms == 0 ? 1 : ms;
}

int migration_start(struct vm *vm, struct api_server *server, const struct mig_params *params, uint64_t *id,
                    const char **code, char *message, size_t message_size)
{
    struct migration *m = manager_find(vm, true);
    if (m == NULL) {
        *code = "internal";
        snprintf(message, message_size, "out of memory (or too many VMs in this process)");
        return -1;
    }
    char text[400];
    struct mig_address address;
    if (mig_address_parse(params->dest, &address, text, sizeof(text)) != 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "dest: %s", text);
        return -1;
    }
    const struct mig_throttle_params *t = &params->throttle;
    if (t->initial < 1 || t->initial > 99 || t->increment < 0 || t->increment > 99 || t->max < 1 || t->max > 99 ||
        t->initial > t->max) {
        *code = "invalid-argument";
        snprintf(message, message_size,
                 "throttle_initial=%d, throttle_increment=%d, throttle_max=%d: need 1 <= initial <= max <= 99 and "
                 "0 <= increment <= 99", t->initial, t->increment, t->max);
        return -1;
    }
    if (params->downtime_ms == 0 || params->timeout_s == 0 || params->stall_timeout_ms == 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "downtime_ms, timeout_s and the stall timeout must be > 0");
        return -1;
    }
    /* With verify_digest both sides hash all RAM inside the downtime. When
     * that alone exceeds the limit no iteration could ever switch over:
     * say so now instead of throttling the guest until timeout_s. */
    uint64_t digest_ms = params->verify_digest ? digest_estimate_ms(vm->memory.size) : 0;
    uint64_t digest_floor_ms = mig_expected_downtime_with_digest_ms(0, digest_ms);
    if (params->verify_digest && digest_floor_ms > params->downtime_ms) {
        *code = "invalid-argument";
        snprintf(message, message_size,
                 "verify_digest: hashing %" PRIu64 " MiB of RAM on both sides takes about %" PRIu64
                 " ms of downtime here, more than downtime_ms=%" PRIu64 ": raise downtime_ms or turn verify_digest off",
                 vm->memory.size >> 20, digest_floor_ms, params->downtime_ms);
        return -1;
    }

    pthread_mutex_lock(&m->lock);
    if (atomic_load_explicit(&m->active, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        *code = "migration-active";
        snprintf(message, message_size, "migration %" PRIu64 " is still running (migration.cancel stops it)",
                 m->id);
        return -1;
    }
    if (m->thread_joinable) {
        pthread_join(m->thread, NULL);
        m->thread_joinable = false;
    }
    enum vm_state state = vm_get_state(vm);
    if (state != VM_STATE_RUNNING || atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        *code = "vm-not-running";
        snprintf(message, message_size, "cannot migrate: the VM is %s",
                 atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire) ? "shutting down"
                                                                                      : vm_state_name(state));
        return -1;
    }
    if (vm->dirty_log == NULL || dirty_log_mode(vm->dirty_log) == DIRTY_LOG_OFF) {
        pthread_mutex_unlock(&m->lock);
        *code = "invalid-argument";
        snprintf(message, message_size, "cannot migrate with --dirty-log off: start ringvm with --dirty-log ring "
                                        "(or bitmap)");
        return -1;
    }
    if (params->converge == MIG_CONVERGE_DIRTY_LIMIT && dirty_log_mode(vm->dirty_log) != DIRTY_LOG_RING) {
        pthread_mutex_unlock(&m->lock);
        *code = "invalid-argument";
        snprintf(message, message_size, "converge=dirty-limit needs per-vCPU dirty rates, which only --dirty-log "
                                        "ring gives (this VM uses %s)", dirty_log_mode_name(dirty_log_mode(vm->dirty_log)));
        return -1;
    }
    struct source *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        pthread_mutex_unlock(&m->lock);
        *code = "internal";
        snprintf(message, message_size, "out of memory");
        return -1;
    }
    s->m = m;
    s->vm = vm;
    s->params = *params;
    s->server = server;
    s->digest_ms = digest_ms;
    s->fd = -1;
    s->started_mono = mono_ns();
    if (params->timeout_s < UINT64_MAX / 1000000000ull)
        s->deadline_mono = s->started_mono + params->timeout_s * 1000000000ull;
    m->id = ++m->next_id;
    m->params = *params;
    m->server = server;
    s->progress.id = m->id;
    s->progress.state = MIG_STATE_SETUP;
    snprintf(s->progress.phase, sizeof(s->progress.phase), "starting");
    snprintf(s->progress.address, sizeof(s->progress.address), "%s", params->dest);
    snprintf(s->progress.converge, sizeof(s->progress.converge), "%s", mig_converge_name(params->converge));
    s->progress.downtime_limit_ms = params->downtime_ms;
    s->progress.digest_pass_ms = digest_ms;
    s->progress.started_at_ms = real_ns() / 1000000u;
    s->progress.memory.total = vm->memory.size;
    s->progress.memory.remaining = vm->memory.size;
    source_vcpu_throttles(s);
    mig_progress_publish(&m->board, &s->progress);   /* the old snapshot ends here */
    m->past_end = false;        /* under m->lock, held since the checks above */
    atomic_store_explicit(&m->cancel, false, memory_order_release);
    atomic_store_explicit(&m->active, true, memory_order_release);
    int result = pthread_create(&m->thread, NULL, migration_main, s);
    if (result != 0) {
        atomic_store_explicit(&m->active, false, memory_order_release);
        pthread_mutex_unlock(&m->lock);
        free(s);
        *code = "internal";
        snprintf(message, message_size, "pthread_create(migration): %s", strerror(result));
        return -1;
    }
    m->thread_joinable = true;
    *id = m->id;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int migration_cancel(struct vm *vm, const char **code, char *message, size_t message_size)
{
    struct migration *m = manager_find(vm, false);
    if (m == NULL || !atomic_load_explicit(&m->active, memory_order_acquire)) {
        *code = "no-migration";
        snprintf(message, message_size, "no migration is running");
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    bool too_late = m->past_end;
    if (!too_late)
        atomic_store_explicit(&m->cancel, true, memory_order_release);
    pthread_mutex_unlock(&m->lock);
    if (too_late) {
        *code = "migration-active";
        snprintf(message, message_size,
                 "too late to cancel: the whole stream was sent and the destination may already run the guest; "
                 "the migration ends with the destination's ack (or fails after the ack timeout)");
        return -1;
    }
    return 0;
}

bool migration_active(struct vm *vm)
{
    struct migration *m = manager_find(vm, false);
    return m != NULL && atomic_load_explicit(&m->active, memory_order_acquire);
}

bool migration_progress(struct vm *vm, struct mig_progress *out)
{
    struct migration *m = manager_find(vm, false);
    if (m == NULL) {
        memset(out, 0, sizeof(*out));
        return false;
    }
    return mig_progress_read(&m->board, out);
}

bool migration_wait_idle(struct vm *vm, uint64_t timeout_ms)
{
    struct migration *m = manager_find(vm, false);
    if (m == NULL)
        return true;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    uint64_t when = (uint64_t)deadline.tv_sec * 1000000000ull + (uint64_t)deadline.tv_nsec + timeout_ms * 1000000ull;
    deadline.tv_sec = (time_t)(when / 1000000000ull);
    deadline.tv_nsec = (long)(when % 1000000000ull);
    pthread_mutex_lock(&m->lock);
    while (atomic_load_explicit(&m->active, memory_order_acquire)) {
        if (pthread_cond_timedwait(&m->idle, &m->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool idle = !atomic_load_explicit(&m->active, memory_order_acquire);
    pthread_mutex_unlock(&m->lock);
    return idle;
}

void migration_release(struct vm *vm)
{
    struct migration *m = manager_find(vm, false);
    if (m == NULL)
        return;
    atomic_store_explicit(&m->cancel, true, memory_order_release);
    pthread_mutex_lock(&m->lock);
    bool joinable = m->thread_joinable;
    m->thread_joinable = false;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(m->thread, NULL);
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < REGISTRY_MAX; i++)
        if (registry[i] == m)
            registry[i] = NULL;
    pthread_mutex_unlock(&registry_lock);
    mig_progress_board_destroy(&m->board);
    pthread_cond_destroy(&m->idle);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- the destination --------------------------------------------------------- */

/*
 * The populating thread: MADV_POPULATE_WRITE in 2 MiB chunks, running up to
 * POPULATE_AHEAD bytes ahead of the receiver's frontier (the start of the
 * data run it is writing). Iteration 0 arrives in RAM-offset order, so the
 * receiver mostly finds its pages already faulted in; RAM the source sends
 * as zero runs (memfd holes) is skipped with the frontier and never
 * allocated. Ownership: struct populate belongs to the incoming thread;
 * stop/done are atomics shared with the populater.
 */
#define POPULATE_CHUNK (2ull << 20)
#define POPULATE_AHEAD (64ull << 20)

struct populate {
    uint8_t *host;
    uint64_t size;
    const _Atomic uint64_t *frontier;
    _Atomic bool stop;
    _Atomic uint64_t done;          /* bytes populated */
    pthread_t thread;
    bool started;
};

static void *populate_main(void *argument)
{
    struct populate *p = argument;
    pthread_setname_np(pthread_self(), "mig-populate");
    bool madvise_ok = true;
    uint64_t next = 0;              /* first byte not populated yet (ahead of the frontier) */
    uint64_t total = 0;
    while (!atomic_load_explicit(&p->stop, memory_order_acquire)) {
        uint64_t frontier = atomic_load_explicit(p->frontier, memory_order_relaxed) & ~(POPULATE_CHUNK - 1);
        if (next < frontier)
            next = frontier;        /* the receiver passed us: populating behind it is useless */
        uint64_t limit = frontier + POPULATE_AHEAD < p->size ? frontier + POPULATE_AHEAD : p->size;
        if (next >= limit) {
            if (next >= p->size)
                break;
            /* A helper polling for work, not synchronization: 1 ms. */
            struct timespec pause = { .tv_sec = 0, .tv_nsec = 1000000 };
            nanosleep(&pause, NULL);
            continue;
        }
        uint64_t length = limit - next < POPULATE_CHUNK ? limit - next : POPULATE_CHUNK;
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

struct incoming {
    struct migration *m;
    struct vm *vm;
    struct api_server *server;
    int fd;
    unsigned stall_ms;
    struct mig_receiver receiver;
    struct mig_progress progress;
    uint64_t started_mono;
    uint64_t last_publish;
    uint64_t seq;                   /* next frame to the source */
};

static void incoming_publish(struct incoming *in)
{
    uint64_t now = mono_ns();
    in->progress.elapsed_ms = (now - in->started_mono) / 1000000u;
    in->progress.iteration = atomic_load_explicit(&in->receiver.iteration, memory_order_relaxed);
    in->progress.memory.transferred = atomic_load_explicit(&in->receiver.bytes_received, memory_order_relaxed);
    in->progress.memory.zero_pages = atomic_load_explicit(&in->receiver.zero_pages, memory_order_relaxed);
    in->progress.memory.normal_pages = atomic_load_explicit(&in->receiver.normal_pages, memory_order_relaxed);
    if (in->progress.elapsed_ms > 0)
        in->progress.bandwidth_mibs = (double)in->progress.memory.transferred / (1024.0 * 1024.0) /
                                      ((double)in->progress.elapsed_ms / 1000.0);
    mig_progress_publish(&in->m->board, &in->progress);
    in->last_publish = now;
}

static void incoming_phase(struct incoming *in, enum mig_state state, const char *phase)
{
    enum mig_state old = in->progress.state;
    in->progress.state = state;
    snprintf(in->progress.phase, sizeof(in->progress.phase), "%s", phase);
    incoming_publish(in);
    if (old != state)
        publish_state_event(in->server, in->progress.id, "incoming", state, phase);
}

/*
 * Test-only fault injection (tests/test_faults.c, docs/reliability.md); inert
 * unless RINGVM_FAULT_INJECT is set. RINGVM_FAULT_INJECT=POINT stops the
 * destination once, when it reaches POINT:
 *   setup          connection accepted, HELLO not read yet
 *   iteration0     the marker of iteration 0 received
 *   iteration1     a marker of an iteration >= 1 received (pre-copy, or the
 *                  final one when the source converged after iteration 0)
 *   stop-and-copy  the first vCPU state received (the source has paused)
 *   end            END received (the last byte), before restore and ACK
 * It prints "ringvm: fault-inject: stopped at POINT" on stderr, then reads
 * nothing until the file named by RINGVM_FAULT_RELEASE exists (without it:
 * until killed or shut down), so a test can kill it or cut its link there.
 */
static void fault_point(struct vm *vm, const char *point)
{
    static bool fired;
    const char *wanted = getenv("RINGVM_FAULT_INJECT");
    if (wanted == NULL || fired || strcmp(wanted, point) != 0)
        return;
    fired = true;
    fprintf(stderr, "ringvm: fault-inject: stopped at %s\n", point);
    fflush(stderr);
    const char *release = getenv("RINGVM_FAULT_RELEASE");
    while (!atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire) &&
           (release == NULL || access(release, F_OK) != 0))
        poll(NULL, 0, 10);
    fprintf(stderr, "ringvm: fault-inject: released at %s\n", point);
}

/* The receiver's input (struct mig_input read_some): what the socket has,
 * at least one byte, at most capacity; 0 when the source closed the
 * connection. Waits in 50 ms polls (publishing progress meanwhile), giving
 * up on shutdown or when nothing arrived for the stall timeout. When data
 * keeps arriving it never waits: the receiver itself checks the shutdown
 * flag before every read and the frame deadline after every read. */
static ssize_t incoming_read_some(void *ctx, void *data, size_t capacity, char *error, size_t error_size)
{
    struct incoming *in = ctx;
    uint64_t started = mono_ns();
    for (;;) {
        ssize_t got = recv(in->fd, data, capacity, MSG_DONTWAIT);
        if (got >= 0) {
            if (got > 0 && mono_ns() - in->last_publish >= PUBLISH_INTERVAL_NS)
                incoming_publish(in);
            return got;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            snprintf(error, error_size, "receiving from the source: %s", strerror(errno));
            return -1;
        }
        if (atomic_load_explicit(&in->vm->shutdown_requested, memory_order_acquire)) {
            snprintf(error, error_size, "the destination VM is shutting down");
            return -1;
        }
        uint64_t now = mono_ns();
        if (now - started >= (uint64_t)in->stall_ms * 1000000u) {
            snprintf(error, error_size, "nothing received from the source for %u ms (link stalled)", in->stall_ms);
            return -1;
        }
        if (now - in->last_publish >= PUBLISH_INTERVAL_NS)
            incoming_publish(in);
        struct pollfd p = { .fd = in->fd, .events = POLLIN };
        if (poll(&p, 1, 50) < 0 && errno != EINTR) {
            snprintf(error, error_size, "poll(source): %s", strerror(errno));
            return -1;
        }
    }
}

static int incoming_send(struct incoming *in, uint32_t type, const void *payload, size_t length)
{
    uint8_t frame[MIG_HEADER_SIZE + 4 + MIG_ERROR_MAX_MESSAGE + MIG_HELLO_SIZE];
    size_t total = mig_frame_encode(frame, type, in->seq++, payload, length);
    struct mig_io io = { .fd = in->fd, .stall_ms = 2000, .cancel = NULL, .peer = "source" };
    char error[256];
    if (mig_io_write(&io, frame, total, error, sizeof(error)) != 0) {
        fprintf(stderr, "ringvm: migration: %s\n", error);
        return -1;
    }
    return 0;
}

static void local_hello(struct vm *vm, struct mig_hello *hello)
{
    memset(hello, 0, sizeof(*hello));
    hello->version = MIG_PROTOCOL_VERSION;
    hello->page_size = MIG_PAGE_SIZE;
    hello->memory_bytes = vm->memory.size;
    hello->vcpu_count = vm->config.vcpu_count;
    hello->slot_count = vm->memory.slot_count;
    for (unsigned i = 0; i < vm->memory.slot_count && i < MIG_MAX_SLOTS; i++) {
        hello->slots[i].gpa = vm->memory.slots[i].gpa;
        hello->slots[i].size = vm->memory.slots[i].size;
        hello->slots[i].ram_offset = vm->memory.slots[i].ram_offset;
    }
    hello->vcpu_state_size = sizeof(struct vcpu_state);
    hello->vcpu_state_version = VCPU_STATE_VERSION;
    hello->features = MIG_FEATURE_ZERO_PAGES | MIG_FEATURE_DIGEST;
    hello->abi_version = RINGVM_ABI_VERSION;
}

/* Restores what the stream carried and lets the vCPUs run. */
static int incoming_restore(struct incoming *in, char *error, size_t error_size, uint32_t *code)
{
    struct vm *vm = in->vm;
    struct mig_receiver *r = &in->receiver;
    *code = MIG_ERR_INTERNAL;
    struct vcpu_state *state = malloc(sizeof(*state));
    if (state == NULL) {
        snprintf(error, error_size, "out of memory for vCPU state");
        return -1;
    }
    for (unsigned i = 0; i < vm->config.vcpu_count; i++) {
        memcpy(state, mig_receiver_vcpu_state(r, i), sizeof(*state));
        if (state->version != VCPU_STATE_VERSION || state->msr_count > VCPU_STATE_MAX_MSRS) {
            *code = MIG_ERR_STREAM;
            snprintf(error, error_size, "vCPU %u state: version %" PRIu32 ", %" PRIu32 " MSRs: invalid", i,
                     state->version, state->msr_count);
            free(state);
            return -1;
        }
        int result = vcpu_state_restore(vm->vcpus[i].fd, state);
        if (result != 0) {
            free(state);
            snprintf(error, error_size, "restoring vCPU %u: %s", i, strerror(-result));
            return -1;
        }
    }
    free(state);
    /* The guest's workload comes with it (vm.info reports it). Written
     * before awaiting_migration is cleared with release; readers acquire. */
    char workload_error[256];
    if (workload_spec_parse(r->device.workload, &vm->config.workload, workload_error, sizeof(workload_error)) != 0) {
        snprintf(error, error_size, "device state: workload '%s': %s", r->device.workload, workload_error);
        return -1;
    }
    pthread_mutex_lock(&vm->serial.lock);
    vm->serial.line_control = (uint8_t)r->device.serial_lcr;
    pthread_mutex_unlock(&vm->serial.lock);
    atomic_store_explicit(&vm->last_exception_vector, r->device.last_exception_vector, memory_order_relaxed);
    atomic_store_explicit(&vm->ledger_mismatches, r->device.ledger_mismatches, memory_order_relaxed);
    for (unsigned i = 0; i < vm->config.vcpu_count && i < MIG_MAX_VCPUS; i++) {
        /* The vCPU threads are parked: the park lock hand-off orders these. */
        vm->vcpus[i].guest_phase = (int)r->device.guest_phase[i];
        atomic_store_explicit(&vm->vcpus[i].guest_phase_published, (int)r->device.guest_phase[i],
                              memory_order_release);
    }
    vm->bootinfo = guest_memory_gpa_to_host(&vm->memory, RINGVM_BOOTINFO_GPA, sizeof(*vm->bootinfo));
    if (r->end.flags & MIG_END_HAS_DIGEST) {
        char hex[MEMORY_DIGEST_HEX_SIZE];
        int result = memory_digest(&vm->memory, hex, NULL, NULL);
        if (result != 0) {
            snprintf(error, error_size, "memory digest: %s", strerror(-result));
            return -1;
        }
        snprintf(in->progress.digest_destination, sizeof(in->progress.digest_destination), "%s", hex);
        snprintf(in->progress.digest_source, sizeof(in->progress.digest_source), "%s", r->end.digest);
        if (strcmp(hex, r->end.digest) != 0) {
            *code = MIG_ERR_DIGEST;
            snprintf(error, error_size, "memory digest mismatch: source %s, destination %s", r->end.digest, hex);
            return -1;
        }
    }
    return 0;
}

/* How long the destination waits for the next byte from the source before
 * it gives up ("nothing received from the source for N ms (link stalled)")
 * when --incoming-stall-timeout is not given. */
#define INCOMING_STALL_DEFAULT_MS 5000u

int migration_set_incoming_stall_timeout(struct vm *vm, unsigned stall_ms)
{
    if (stall_ms == 0) {
        fprintf(stderr, "ringvm: migration: the incoming stall timeout must be at least 1 ms\n");
        return -1;
    }
    struct migration *m = manager_find(vm, true);
    if (m == NULL) {
        fprintf(stderr, "ringvm: migration: out of memory\n");
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    m->incoming_stall_ms = stall_ms;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int migration_incoming_run_fd(struct vm *vm, int listen_fd, const char *address, struct api_server *server)
{
    struct migration *m = manager_find(vm, true);
    if (m == NULL) {
        fprintf(stderr, "ringvm: migration: out of memory\n");
        close(listen_fd);
        return -1;
    }
    struct incoming *in = calloc(1, sizeof(*in));
    if (in == NULL) {
        fprintf(stderr, "ringvm: migration: out of memory\n");
        close(listen_fd);
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    if (atomic_load_explicit(&m->active, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        fprintf(stderr, "ringvm: migration: a migration is already running on this VM\n");
        close(listen_fd);
        free(in);
        return -1;
    }
    atomic_store_explicit(&m->active, true, memory_order_release);
    atomic_store_explicit(&m->cancel, false, memory_order_release);
    m->id = ++m->next_id;
    unsigned stall_ms = m->incoming_stall_ms != 0 ? m->incoming_stall_ms : INCOMING_STALL_DEFAULT_MS;
    pthread_mutex_unlock(&m->lock);

    in->m = m;
    in->vm = vm;
    in->server = server;
    in->fd = -1;
    in->stall_ms = stall_ms;
    in->started_mono = mono_ns();
    in->progress.id = m->id;
    in->progress.incoming = true;
    in->progress.state = MIG_STATE_SETUP;
    in->progress.started_at_ms = real_ns() / 1000000u;
    in->progress.memory.total = vm->memory.size;
    in->progress.vcpu_count = vm->config.vcpu_count > MIG_MAX_VCPUS ? MIG_MAX_VCPUS : vm->config.vcpu_count;
    snprintf(in->progress.address, sizeof(in->progress.address), "%s", address ? address : "");
    struct mig_hello hello;
    local_hello(vm, &hello);
    char error[MIG_RECEIVER_ERROR_MAX];
    uint32_t error_code = MIG_ERR_INTERNAL;
    bool tell_source = false;
    int result = -1;
    struct populate populate = { .host = vm->memory.host, .size = vm->memory.size,
                                 .frontier = &in->receiver.frontier };

    if (mig_receiver_init(&in->receiver, vm->memory.host, vm->memory.size, &hello) != 0) {
        snprintf(error, sizeof(error), "out of memory for the receiver");
        mig_receiver_destroy(&in->receiver);
        goto out;
    }
    incoming_phase(in, MIG_STATE_SETUP, "listening");
    if (getenv("RINGVM_MIG_NO_POPULATE") != NULL)
        fprintf(stderr, "ringvm: migration: RINGVM_MIG_NO_POPULATE set: not pre-populating RAM\n");
    else if (vm->config.memory_options.prealloc)
        ;   /* --prealloc faulted everything in already: walking it again costs ~7 % of the CPU */
    else if (pthread_create(&populate.thread, NULL, populate_main, &populate) == 0)
        populate.started = true;
    else
        fprintf(stderr, "ringvm: migration: cannot start the pre-populating thread (continuing without)\n");

    in->fd = mig_accept(listen_fd, (const _Atomic bool *)&vm->shutdown_requested, error, sizeof(error));
    if (in->fd < 0)
        goto out;
    incoming_phase(in, MIG_STATE_SETUP, "handshake");
    fault_point(vm, "setup");
    tell_source = true;
    /* The receiver checks the shutdown flag before every read (a full
     * socket never makes incoming_read_some wait) and holds each frame to
     * its deadline (docs/migration-protocol.md, "Deadlines"). */
    mig_receiver_set_deadline(&in->receiver, in->stall_ms, MIG_RATE_FLOOR_BYTES_PER_S);
    struct mig_input input = { .read_some = incoming_read_some, .ctx = in, .stop = &vm->shutdown_requested };
    for (;;) {
        int type = mig_receiver_next(&in->receiver, &input);
        if (type < 0) {
            snprintf(error, sizeof(error), "%s", in->receiver.error);
            error_code = in->receiver.error_code ? in->receiver.error_code : MIG_ERR_STREAM;
            if (in->receiver.peer_error)
                tell_source = false;
            goto out;
        }
        if (type == MIG_FRAME_HELLO) {
            uint8_t payload[MIG_HELLO_SIZE];
            mig_hello_encode(&hello, payload);
            if (incoming_send(in, MIG_FRAME_HELLO_ACK, payload, sizeof(payload)) != 0) {
                snprintf(error, sizeof(error), "could not answer the hello");
                tell_source = false;
                goto out;
            }
            in->progress.setup_ms = (mono_ns() - in->started_mono) / 1000000u;
            incoming_phase(in, MIG_STATE_ACTIVE, "receiving");
        } else if (type == MIG_FRAME_END) {
            fault_point(vm, "end");
            break;
        } else if (type == MIG_FRAME_ITERATION) {
            fault_point(vm, atomic_load_explicit(&in->receiver.iteration, memory_order_relaxed) == 0 ? "iteration0"
                                                                                                   : "iteration1");
        } else if (type == MIG_FRAME_VCPU_STATE) {
            fault_point(vm, "stop-and-copy");
        }
        if (type != MIG_FRAME_HELLO && mono_ns() - in->last_publish >= PUBLISH_INTERVAL_NS)
            incoming_publish(in);
    }
    incoming_phase(in, MIG_STATE_COMPLETING, "restoring");
    trace("dst end received");
    atomic_store_explicit(&populate.stop, true, memory_order_release);
    if (populate.started) {
        pthread_join(populate.thread, NULL);
        populate.started = false;
    }
    trace("dst populate joined");
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace populated %" PRIu64 " MiB of %" PRIu64 "\n",
                atomic_load_explicit(&populate.done, memory_order_relaxed) >> 20, populate.size >> 20);
    if (incoming_restore(in, error, sizeof(error), &error_code) != 0)
        goto out;
    trace("dst restored+digest");
    pthread_mutex_lock(&vm->control_lock);
    if (atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
        pthread_mutex_unlock(&vm->control_lock);
        snprintf(error, sizeof(error), "the destination VM is shutting down");
        error_code = MIG_ERR_CANCELLED;
        goto out;
    }
    atomic_store_explicit(&vm->awaiting_migration, false, memory_order_release);
    vm_resume_vcpus(vm);
    uint64_t resumed = real_ns();
    vm_set_state(vm, VM_STATE_RUNNING);
    trace("dst resumed");
    pthread_mutex_unlock(&vm->control_lock);
    tell_source = false;
    struct mig_end ack = { .timestamp_ns = resumed,
                           .pages = atomic_load_explicit(&in->receiver.pages_received, memory_order_relaxed) };
    if (in->progress.digest_destination[0] != '\0') {
        ack.flags = MIG_END_HAS_DIGEST;
        snprintf(ack.digest, sizeof(ack.digest), "%s", in->progress.digest_destination);
    }
    uint8_t ack_bytes[MIG_ACK_SIZE];
    mig_end_encode(&ack, ack_bytes);
    /* The guest runs here now whatever happens to the ack. */
    (void)incoming_send(in, MIG_FRAME_ACK, ack_bytes, sizeof(ack_bytes));
    if (in->receiver.end.timestamp_ns != 0 && resumed >= in->receiver.end.timestamp_ns)
        in->progress.downtime_ms = (resumed - in->receiver.end.timestamp_ns + 999999u) / 1000000u;
    result = 0;

out:
    atomic_store_explicit(&populate.stop, true, memory_order_release);
    if (populate.started)
        pthread_join(populate.thread, NULL);
    if (result != 0) {
        fprintf(stderr, "ringvm: migration: %s\n", error);
        if (tell_source && in->fd >= 0) {
            uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
            size_t length = mig_error_encode(error_code, error, payload);
            if (incoming_send(in, MIG_FRAME_ERROR, payload, length) == 0) {
                /* Let the source read it before our close can reset the
                 * connection: stop writing, drain its bytes for up to 1 s. */
                shutdown(in->fd, SHUT_WR);
                uint64_t until = mono_ns() + 1000000000ull;
                static uint8_t sink[65536];
                while (mono_ns() < until) {
                    if (mig_io_poll_readable(in->fd, 50) != 1)
                        continue;
                    ssize_t got = recv(in->fd, sink, sizeof(sink), MSG_DONTWAIT);
                    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                        break;
                }
            }
        }
        in->progress.state = MIG_STATE_FAILED;
        snprintf(in->progress.error_code, sizeof(in->progress.error_code), "%s",
                 error_code == MIG_ERR_CONFIG ? "config-mismatch" : error_code == MIG_ERR_DIGEST ? "digest-mismatch"
                 : error_code == MIG_ERR_CANCELLED ? "cancelled" : error_code == MIG_ERR_STREAM ? "stream" : "internal");
        snprintf(in->progress.error_message, sizeof(in->progress.error_message), "%s", error);
    } else {
        in->progress.state = MIG_STATE_COMPLETED;
        fprintf(stderr, "ringvm: migration: received and resumed: %" PRIu64 " MiB in %" PRIu64 " ms, downtime %"
                PRIu64 " ms\n", atomic_load_explicit(&in->receiver.bytes_received, memory_order_relaxed) >> 20,
                (mono_ns() - in->started_mono) / 1000000u, in->progress.downtime_ms);
    }
    if (in->fd >= 0)
        close(in->fd);
    close(listen_fd);
    in->progress.total_ms = (mono_ns() - in->started_mono) / 1000000u;
    in->progress.ended_at_ms = real_ns() / 1000000u;
    snprintf(in->progress.phase, sizeof(in->progress.phase), "done");
    incoming_publish(in);
    publish_state_event(server, in->progress.id, "incoming", in->progress.state, "done");
    mig_receiver_destroy(&in->receiver);
    free(in);
    pthread_mutex_lock(&m->lock);
    atomic_store_explicit(&m->active, false, memory_order_release);
    pthread_cond_broadcast(&m->idle);
    pthread_mutex_unlock(&m->lock);
    return result;
}

int migration_incoming_run(struct vm *vm, const char *address, struct api_server *server)
{
    struct mig_address parsed;
    char error[400];
    if (mig_address_parse(address, &parsed, error, sizeof(error)) != 0) {
        fprintf(stderr, "ringvm: --incoming: %s\n", error);
        return -1;
    }
    struct mig_listener listener;
    if (mig_listener_open(&listener, &parsed, error, sizeof(error)) != 0) {
        if (parsed.kind != MIG_ADDRESS_UNIX)    /* the unix listener printed its cause */
            fprintf(stderr, "ringvm: --incoming: %s\n", error);
        return -1;
    }
    /* migration_incoming_run_fd closes the fd it gets: it gets a dup, so
     * the listener keeps its own until mig_listener_close removes our
     * socket file (only ours) and releases the path lock. */
    int fd = fcntl(listener.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "ringvm: --incoming: dup of the listening socket: %s\n", strerror(errno));
        mig_listener_close(&listener);
        return -1;
    }
    int result = migration_incoming_run_fd(vm, fd, address, server);
    mig_listener_close(&listener);
    return result;
}
