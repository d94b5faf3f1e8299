/*
 * The sender thread ("mig-send") and the frame builder that feeds it.
 *
 * The migration thread plans frames in buffers (run headers, zero pages,
 * where each data page goes) and submits them in order; the sender thread
 * copies each buffer's data pages from guest RAM and seals its checksum
 * (mig_buffer_fill), writes it with sendmsg right away while it is still in
 * this core's cache, counts bytes, optionally paces to max_bandwidth, and
 * returns the buffer to the free list. The copy (not guest RAM itself) is
 * what is hashed and sent, so a page the guest rewrites meanwhile cannot
 * break the frame checksum. Copying in the thread that sends means the
 * kernel copies a frame still in this core's L2 instead of one another
 * core wrote (docs/benchmarks.md, bench/migrate).
 *
 * Ownership:
 *   - buffers: a buffer belongs to the migration thread between
 *     mig_sender_get and mig_sender_submit, to the sender thread until it
 *     is written, then to the free list (all under lock). A submitted
 *     memory frame still points into guest RAM (copies[]): the sender
 *     thread reads those pages; RAM stays mapped for the VM's lifetime,
 *     which outlasts every migration thread and sender.
 *   - bytes_sent, failed, error: written by the sender thread; bytes_sent
 *     atomic; error readable once failed (release/acquire) is set.
 */
#ifndef RINGVM_MIGRATION_SENDER_H
#define RINGVM_MIGRATION_SENDER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration/pacing.h"
#include "migration/protocol.h"

struct mig_tls_session;

/* Overridable with -D for bench A/B builds (docs/benchmarks.md). */
#ifndef MIG_SEND_BUFFERS
#define MIG_SEND_BUFFERS        16
#endif
#ifndef MIG_SEND_BUFFER_BYTES
#define MIG_SEND_BUFFER_BYTES   (1u << 20)  /* one memory frame per buffer; fits L2 */
#endif
#ifndef MIG_SEND_BATCH_IOV
#define MIG_SEND_BATCH_IOV      4           /* buffers taken off the queue per wake-up */
#endif

/* Data runs in one frame: at most one per data page that fits a buffer. */
#define MIG_BUILDER_MAX_COPIES (MIG_SEND_BUFFER_BYTES / (MIG_RUN_HEADER_SIZE + MIG_PAGE_SIZE) + 1)

struct mig_builder_copy {
    const uint8_t *host;        /* first page of a data run in guest RAM */
    size_t at;                  /* where its data goes in the buffer */
    uint32_t pages;
};

struct mig_buffer {
    uint8_t *data;
    size_t capacity;
    size_t length;
    uint64_t seq_end;           /* frame number after this buffer's last complete frame */
    struct mig_buffer *next;
    /* Its last frame goes on in the next buffer queued (a frame larger than
     * one buffer, mig_sender_queue_large_frame). */
    bool continues;
    /* A memory frame closed but not filled yet (mig_builder_close): its
     * data pages still to copy, and its checksum to seal. */
    bool unfilled;
    size_t frame_start;
    uint64_t frame_seq;         /* its sequence number and where it ends (mig_builder_close) */
    size_t frame_end;
    unsigned copy_count;
    struct mig_builder_copy copies[MIG_BUILDER_MAX_COPIES];
};

/* Post-copy's background stream: asked, when a buffer is filled right
 * before it is written, whether a data page planned into it went another
 * way since (pc-serve sent it on the urgent channel); true leaves it out.
 * Called on the sender thread, page = RAM offset / 4096. */
typedef bool (*mig_page_withdrawn_fn)(uint64_t page, void *opaque);

struct mig_sender {
    int fd;
    struct mig_tls_session *tls;        /* NULL: plaintext (see struct mig_io) */
    unsigned stall_ms;
    uint64_t max_bandwidth;             /* bytes/s, 0 = unlimited */
    const _Atomic bool *cancel;

    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;                /* queue non-empty / buffer freed / drained */
    struct mig_buffer *free_list;
    struct mig_buffer *queue_head, *queue_tail;
    unsigned in_flight;                 /* submitted, not yet written */
    bool stop;                          /* exit now (after abort) */
    bool finish;                        /* complete the batch being written (and the frame it
                                           ends in), drop the rest, exit */
    bool taken_continues;               /* the last buffer taken for writing ends mid-frame */
    _Atomic bool abort;                 /* interrupts a write in progress (mig_sender_stop) */
    struct mig_buffer storage[MIG_SEND_BUFFERS];

    _Atomic uint64_t bytes_sent;
    /* Bytes others sent on the same link (post-copy's urgent channel,
     * pc-serve): counted against the cap, at most one slice of them per
     * slice of this stream's, so the link carries about the cap in all
     * while this stream keeps at least half of it at every moment (the
     * peer's stall timer runs on this stream alone; starved by a burst of
     * requests it would read as a dead link). Added by them, read by the
     * sender thread; shared_charged: what the pacer has counted so far
     * (sender thread only). */
    _Atomic uint64_t shared_bytes;
    uint64_t shared_charged;
    _Atomic uint64_t seq_written;       /* frames completely written: next seq after them */
    _Atomic uint64_t send_ns;           /* time spent inside sendmsg/poll */
    _Atomic bool failed;
    char error[512];
    struct mig_pacer pacer;             /* sender thread only */
    /* Bumped by every mig_sender_set_bandwidth (under lock): a pacing sleep
     * that began under an older cap ends at once and is not counted. */
    uint64_t cap_epoch;
    /* Time pace() slept under the cap set last (mig_sender_set_bandwidth
     * sets it to 0); written by the sender thread, read by anyone. */
    _Atomic uint64_t paced_ns;
    /* NULL, or which planned pages to leave out (mig_sender_set_withdrawn):
     * under lock, copied by the sender thread with each batch. */
    mig_page_withdrawn_fn withdrawn;
    void *withdrawn_opaque;
    _Atomic uint64_t *withdrawn_pages;  /* where the pages left out are added (release) */
};

/* tls: the stream's TLS session (the sender thread writes through it),
 * NULL for plaintext. */
int mig_sender_start(struct mig_sender *sender, int fd, struct mig_tls_session *tls, uint64_t max_bandwidth_bytes,
                     unsigned stall_ms, const _Atomic bool *cancel, char *error, size_t error_size);
/* From now on, each memory frame's data pages for which withdrawn says
 * true when its buffer is filled are left out of it (NULL: none), and
 * their number is added to *counter (release; it outlives the sender);
 * any thread. Only for streams whose pages go another way too
 * (post-copy): a page must reach the peer by one of the ways. */
void mig_sender_set_withdrawn(struct mig_sender *sender, mig_page_withdrawn_fn withdrawn, void *opaque,
                              _Atomic uint64_t *counter);
/* Changes the bandwidth cap (bytes/s, 0 = none); any thread. A pacing wait
 * in progress ends at once; the pacer starts a new reference point
 * (pacing.h), and mig_sender_paced_ns counts from 0 again. */
void mig_sender_set_bandwidth(struct mig_sender *sender, uint64_t max_bandwidth_bytes);
/* Nanoseconds the sender waited on the cap since the cap was last set
 * (mig_sender_start's counts as set). */
uint64_t mig_sender_paced_ns(struct mig_sender *sender);
/* A free buffer, waiting up to timeout_ms; NULL on timeout or when the
 * sender failed (check mig_sender_failed). */
struct mig_buffer *mig_sender_get(struct mig_sender *sender, unsigned timeout_ms);
/* seq_end: the frame number after the buffer's last frame. */
void mig_sender_submit(struct mig_sender *sender, struct mig_buffer *buffer, uint64_t seq_end);
/* A frame larger than one buffer (a machine state of many vCPUs: up to
 * MIG_MACHINE_STATE_MAX): encoded whole, then queued over as many buffers as
 * it takes, each but the last marked `continues`, so mig_sender_finish
 * never ends the stream inside it. Waits for free buffers (not for the
 * writes) up to timeout_ms in all; 0, or -1 with a message (the sender
 * failed, out of memory, or no buffer came in time; then nothing of the
 * frame was queued, or the parts queued end the stream when the sender
 * fails). */
int mig_sender_queue_large_frame(struct mig_sender *sender, uint32_t type, uint64_t seq, const void *payload,
                                 size_t length, unsigned timeout_ms, char *error, size_t error_size);
/* Gives an unused buffer back. */
void mig_sender_put_back(struct mig_sender *sender, struct mig_buffer *buffer);
/* Waits up to timeout_ms until everything submitted is written: 0 drained,
 * 1 not yet, -1 the sender failed. */
int mig_sender_flush(struct mig_sender *sender, unsigned timeout_ms);
/* The same until at most max_buffers submitted buffers are not yet
 * written (post-copy's stream keeps little queued: see source_postcopy.c). */
int mig_sender_wait_in_flight(struct mig_sender *sender, unsigned max_buffers, unsigned timeout_ms);
bool mig_sender_failed(struct mig_sender *sender, char *error, size_t error_size);
uint64_t mig_sender_bytes(struct mig_sender *sender);
/* The sequence number following the last frame completely written (the
 * seq a frame written next on the socket must carry). */
uint64_t mig_sender_seq_written(struct mig_sender *sender);
/* Ends the stream at a frame boundary: the batch being written is
 * completed (ignoring the bandwidth cap; bounded by the stall timeout),
 * queued buffers are dropped, the thread exits and is joined. Afterwards
 * the caller may write one last frame (an ERROR) on the socket itself. */
void mig_sender_finish(struct mig_sender *sender);
/* Aborts any write in progress, joins the thread, frees buffers. */
void mig_sender_stop(struct mig_sender *sender);

/*
 * Builds one memory frame in a buffer: begin, add pages (zero pages become
 * MIG_RUN_ZERO runs, consecutive pages share a run), close, fill. The
 * builder reports when the buffer cannot take another page.
 *
 * Adding a page only plans it: the zero test reads guest RAM (a non-zero
 * page usually fails it in its first cache line) and reserves the page's
 * place. Filling copies each data page and feeds the copy to the frame
 * checksum while it is still in L1. A page the guest rewrites after the
 * plan is dirty again and re-sent later (so is a page found zero and
 * written after the test).
 */
struct mig_frame_builder {
    struct mig_buffer *buffer;
    size_t run_header;          /* offset of the open run's header, or SIZE_MAX */
    struct mig_run run;
    uint64_t pages, zero_pages, normal_pages;
};

void mig_builder_begin(struct mig_frame_builder *b, struct mig_buffer *buffer);
/* Room for one more data page (run header + page)? */
bool mig_builder_has_room(const struct mig_frame_builder *b);
/* Adds the page at ram_offset whose bytes are at host (tested for zero now,
 * copied by mig_buffer_fill: host must stay mapped until then). */
void mig_builder_add_page(struct mig_frame_builder *b, uint64_t ram_offset, const uint8_t *host);
/* Adds count pages known to be zero (memfd holes) without reading them. */
void mig_builder_add_zero(struct mig_frame_builder *b, uint64_t ram_offset, uint64_t count);
bool mig_builder_empty(const struct mig_frame_builder *b);
/* Ends the frame as sequence number seq: its header and run headers are
 * written; its data pages are copied by mig_buffer_fill. */
void mig_builder_close(struct mig_frame_builder *b, uint64_t seq);
/* Copies a closed frame's data pages from guest RAM (which must still be
 * mapped) and seals its checksum; nothing to do for other buffers. */
void mig_buffer_fill(struct mig_buffer *buffer);
/* mig_buffer_fill, leaving out each data page for which withdrawn(page,
 * opaque) is true: its run is split around it (or dropped), the frame
 * gets shorter and its header says so; zero runs stay whole (they carry
 * no data). A frame keeps at least one run: when every page is withdrawn
 * its first one goes anyway. The pages left out. */
uint64_t mig_buffer_fill_withdrawing(struct mig_buffer *buffer, mig_page_withdrawn_fn withdrawn, void *opaque);
/* Close and fill in one go (tests, tools). */
void mig_builder_finish(struct mig_frame_builder *b, uint64_t seq);

/* Appends a small frame (header + payload) to a buffer; false if no room. */
bool mig_buffer_append_frame(struct mig_buffer *buffer, uint32_t type, uint64_t seq, const void *payload,
                             size_t length);

#endif
