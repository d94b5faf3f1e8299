/*
 * Post-copy's two channels end to end without KVM: the source's pc-serve
 * (migration/postcopy_source.h) answering page requests over a socketpair,
 * the destination's pc-fault and pc-urgent (migration/postcopy_incoming.h)
 * on real guest RAM under userfaultfd, and the test thread as the
 * background stream, placing runs in address order from where pc-serve's
 * last answer left off (as source_postcopy_push does) while ordinary
 * threads stand in for vCPUs: they read every page (half of them through a
 * kernel copy, as KVM's own accesses fault) and then write into it.
 *
 * Each run must end with every page placed exactly once (placed + zero =
 * RAM pages), the destination's page digest over all of RAM and equal to
 * the source's, and RAM equal to the source's but for the bytes the
 * threads wrote. A place between its copy and its marking yields on every
 * third call (the after_copy hook), so the two channels meet on the same
 * pages in the window where the digest once lost one (201d746). And
 * recovery's mechanics: a paused session queues requests (pc-fault sends
 * them itself only on a live channel) and the restarted one sends them on
 * the new channel. Skips with the reason where userfaultfd is not
 * permitted.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "migration/page_digest.h"
#include "migration/postcopy_destination.h"
#include "migration/postcopy_incoming.h"
#include "migration/postcopy_priority.h"
#include "migration/postcopy_source.h"
#include "migration/progress.h"
#include "tests/harness.h"
#include "vmm/memory.h"

#define RAM_SIZE (32ull << 20)
#define PAGE 4096u
#define RAM_PAGES (RAM_SIZE / PAGE)
#define TOUCHERS 4u
#define STRIDE 7919u                /* prime: visits every page of a toucher's share once */
#define WAIT_MS 30000u

/* Owned by one test. The touchers own their counters until joined;
 * copies (after_copy) is shared with the placing threads (atomic). */
struct channels {
    struct guest_memory source;
    struct guest_memory destination;
    int fds[2];                 /* [0] the source's urgent end, [1] the destination's */
    struct postcopy_source *serve;
    struct postcopy_incoming *incoming;
    atomic_uint copies;
};

struct toucher {
    struct channels *channels;
    unsigned index;
    pthread_t thread;
    int scratch_fd;             /* odd touchers read through pwrite from RAM: a kernel-mode fault */
    uint64_t visited;
    uint64_t mismatches;
    uint64_t first_mismatch;
};

static bool page_is_hole(uint64_t page)
{
    return page % 13 == 7;
}

static void fill_source(struct channels *c)
{
    for (uint64_t page = 0; page < RAM_PAGES; page++) {
        if (page_is_hole(page))
            continue;       /* never written: a memfd hole, sent as a zero run */
        uint64_t *words = (uint64_t *)(c->source.host + page * PAGE);
        if (page % 17 == 3) {
            memset(words, 0, PAGE);     /* data, all zero */
            continue;
        }
        uint64_t x = page * 0x9e3779b97f4a7c15ull + 1;
        for (unsigned i = 0; i < PAGE / 8; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            words[i] = x;
        }
    }
}

static void yield_every_third_copy(uint64_t page, uint64_t count, void *opaque)
{
    (void)page;
    (void)count;
    struct channels *c = opaque;
    if (atomic_fetch_add_explicit(&c->copies, 1, memory_order_relaxed) % 3 == 0)
        sched_yield();
}

static void channels_start(struct channels *c)
{
    memset(c, 0, sizeof(*c));
    char why[400];
    if (!postcopy_destination_available(why, sizeof(why)))
        harness_skip("%s", why);
    struct guest_memory_options options = { .numa_node = -1 };
    cr_assert_eq(guest_memory_create(&c->source, RAM_SIZE, &options), 0);
    cr_assert_eq(guest_memory_create(&c->destination, RAM_SIZE, &options), 0);
    fill_source(c);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c->fds), 0);
    struct mig_io source_io = { .fd = c->fds[0], .stall_ms = WAIT_MS, .peer = "destination" };
    struct mig_io destination_io = { .fd = c->fds[1], .stall_ms = WAIT_MS, .peer = "source" };
    cr_assert_eq(postcopy_source_create(&c->serve, &c->source, source_io), 0);
    char error[512] = "";
    struct postcopy_incoming_options incoming = {
        .host = c->destination.host, .memfd = c->destination.memfd, .size = c->destination.size,
        .urgent = destination_io, .digest = true, .after_copy = yield_every_third_copy, .after_copy_opaque = c,
    };
    cr_assert_eq(postcopy_incoming_start(&c->incoming, &incoming, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(postcopy_source_start(c->serve), 0);
}

/* Every page is here: the session finished, both threads and channels
 * ended, RAM freed. */
static void channels_stop(struct channels *c)
{
    postcopy_incoming_finish(c->incoming);
    postcopy_source_stop(c->serve);
    postcopy_source_destroy(c->serve);
    postcopy_incoming_destroy(c->incoming);     /* closes fds[1] */
    close(c->fds[0]);
    guest_memory_destroy(&c->source);
    guest_memory_destroy(&c->destination);
}

static void *toucher_run(void *argument)
{
    struct toucher *t = argument;
    struct channels *c = t->channels;
    uint64_t share = RAM_PAGES / TOUCHERS;
    uint8_t buffer[PAGE];
    for (uint64_t k = 0; k < share; k++) {
        uint64_t page = (k * STRIDE) % share * TOUCHERS + t->index;
        uint8_t *ram = c->destination.host + page * PAGE;
        if (t->scratch_fd >= 0) {
            if (pwrite(t->scratch_fd, ram, PAGE, 0) != (ssize_t)PAGE || pread(t->scratch_fd, buffer, PAGE, 0) != PAGE)
                memset(buffer, 0xee, PAGE);
        } else {
            memcpy(buffer, ram, PAGE);
        }
        if (memcmp(buffer, c->source.host + page * PAGE, PAGE) != 0 && t->mismatches++ == 0)
            t->first_mismatch = page;
        /* The guest's own write: the page is here now, whoever places it
         * again finds it present and leaves this alone. */
        uint64_t mark = 0x5a5a000000000000ull | page;
        memcpy(ram + 8 * t->index, &mark, sizeof(mark));
        t->visited++;
    }
    return NULL;
}

/* The background stream: claim up to run_pages unsent pages from where
 * the last answer left off, place them (holes as zero runs). */
static void push_background(struct channels *c, uint64_t run_pages)
{
    uint64_t from = 0, page;
    for (;;) {
        uint64_t restart;
        if (postcopy_source_take_restart(c->serve, &restart) && restart < RAM_PAGES)
            from = restart;     /* pre-paging by locality, after the last answer */
        if (!postcopy_source_next_unsent(c->serve, from, &page))
            break;
        uint64_t count = 0;
        while (count < run_pages && page + count < RAM_PAGES && postcopy_source_claim(c->serve, page + count))
            count++;
        for (uint64_t i = 0; i < count;) {
            bool hole = page_is_hole(page + i);
            uint64_t end = i + 1;
            while (end < count && page_is_hole(page + end) == hole)
                end++;
            uint64_t offset = (page + i) * PAGE;
            cr_assert_eq(postcopy_incoming_place(c->incoming, offset, (uint32_t)(end - i),
                                                 hole ? NULL : c->source.host + offset), 0);
            i = end;
        }
        from = page + (count > 0 ? count : 1);
        if (from >= RAM_PAGES)
            from = 0;
    }
}

static void run_channels(uint64_t run_pages)
{
    struct channels c;
    channels_start(&c);
    struct toucher touchers[TOUCHERS];
    for (unsigned i = 0; i < TOUCHERS; i++) {
        touchers[i] = (struct toucher){ .channels = &c, .index = i, .scratch_fd = -1 };
        if (i % 2 == 1) {
            touchers[i].scratch_fd = memfd_create("postcopy-channels-scratch", MFD_CLOEXEC);
            cr_assert_geq(touchers[i].scratch_fd, 0);
        }
        cr_assert_eq(pthread_create(&touchers[i].thread, NULL, toucher_run, &touchers[i]), 0);
    }
    push_background(&c, run_pages);

    uint64_t missing = ~0ull;
    char error[512] = "";
    cr_assert_eq(postcopy_incoming_wait_all(c.incoming, WAIT_MS, &missing, error, sizeof(error)), 0,
                 "%s (%lu pages missing)", error, (unsigned long)missing);
    cr_assert_eq(missing, 0);
    for (unsigned i = 0; i < TOUCHERS; i++) {
        cr_assert_eq(pthread_join(touchers[i].thread, NULL), 0);
        if (touchers[i].scratch_fd >= 0)
            close(touchers[i].scratch_fd);
        cr_assert_eq(touchers[i].visited, RAM_PAGES / TOUCHERS);
        cr_assert_eq(touchers[i].mismatches, 0, "toucher %u read %lu pages unlike the source's (first: page %lu)", i,
                     (unsigned long)touchers[i].mismatches, (unsigned long)touchers[i].first_mismatch);
    }

    struct mig_progress *progress = calloc(1, sizeof(*progress));
    cr_assert_not_null(progress);
    postcopy_incoming_fill_progress(c.incoming, progress, NULL, 0);
    cr_assert_eq(progress->postcopy.pages_received, RAM_PAGES, "every page placed exactly once");
    cr_assert_gt(progress->postcopy.faults, 0);
    cr_assert_gt(progress->postcopy.pages_requested, 0);
    struct postcopy_source_stats served;
    postcopy_source_get_stats(c.serve, &served);
    cr_assert_gt(served.requests, 0, "no request reached pc-serve");
    cr_assert_leq(served.pages_pushed, RAM_PAGES);
    cr_assert_geq(served.pages_pushed + served.pages_requested, RAM_PAGES);

    char source_hex[PAGE_DIGEST_HEX_SIZE], destination_hex[PAGE_DIGEST_HEX_SIZE];
    cr_assert_eq(page_digest_memory(&c.source, source_hex), 0);
    uint64_t digest_pages = postcopy_incoming_digest(c.incoming, destination_hex);
    cr_assert_eq(digest_pages, RAM_PAGES, "the digest covers every page once");
    cr_assert_str_eq(destination_hex, source_hex);

    /* RAM is the source's but for the mark each toucher wrote. */
    for (uint64_t page = 0; page < RAM_PAGES; page++) {
        unsigned owner = (unsigned)(page % TOUCHERS);
        const uint8_t *have = c.destination.host + page * PAGE, *want = c.source.host + page * PAGE;
        cr_assert_eq(memcmp(have, want, 8 * owner), 0, "page %lu", (unsigned long)page);
        cr_assert_eq(memcmp(have + 8 * owner + 8, want + 8 * owner + 8, PAGE - 8 * owner - 8), 0, "page %lu",
                     (unsigned long)page);
    }

    free(progress);
    channels_stop(&c);
}

Test(postcopy_channels, page_by_page_background_and_requests_place_every_page_once_with_the_source_digest,
     .timeout = 120)
{
    run_channels(1);
}

Test(postcopy_channels, runs_of_64_pages_place_every_page_once_with_the_source_digest, .timeout = 120)
{
    run_channels(64);
}

Test(postcopy_channels, runs_of_512_pages_place_every_page_once_with_the_source_digest, .timeout = 120)
{
    run_channels(512);
}

/* One read of one page, as a vCPU's first touch. */
struct single_touch {
    struct channels *channels;
    uint64_t page;
    uint8_t data[PAGE];
    pthread_t thread;
    atomic_bool done;
};

static void *single_touch_run(void *argument)
{
    struct single_touch *t = argument;
    memcpy(t->data, t->channels->destination.host + t->page * PAGE, PAGE);
    atomic_store_explicit(&t->done, true, memory_order_release);
    return NULL;
}

static bool single_touch_done(void *argument)
{
    return atomic_load_explicit(&((struct single_touch *)argument)->done, memory_order_acquire);
}

static void single_touch_start(struct single_touch *t, struct channels *c, uint64_t page)
{
    *t = (struct single_touch){ .channels = c, .page = page };
    atomic_init(&t->done, false);
    cr_assert_eq(pthread_create(&t->thread, NULL, single_touch_run, t), 0);
}

/* Its page came (within WAIT_MS) and holds the source's bytes. */
static void single_touch_finish(struct single_touch *t, const char *why_late)
{
    cr_assert(harness_wait_until(single_touch_done, t, WAIT_MS), "page %lu: %s", (unsigned long)t->page, why_late);
    cr_assert_eq(pthread_join(t->thread, NULL), 0);
    cr_assert_eq(memcmp(t->data, t->channels->source.host + t->page * PAGE, PAGE), 0);
}

/* The fault was read and its request made (sent or queued). */
static bool request_made(void *argument)
{
    struct channels *c = argument;
    struct mig_progress *progress = calloc(1, sizeof(*progress));
    postcopy_incoming_fill_progress(c->incoming, progress, NULL, 0);
    bool seen = progress->postcopy.pages_requested > 0;
    free(progress);
    return seen;
}

/* Recovery's mechanics without KVM: a paused session (the link broke)
 * queues the request of a thread that faults meanwhile (nothing goes into
 * the old channel, whose bytes would be lost with it), and the session
 * restarted on a new channel sends it there: the thread gets its page
 * from the restarted pc-serve, and the run ends like an unbroken one. */
Test(postcopy_channels, a_paused_session_queues_requests_and_the_restarted_one_sends_them, .timeout = 120)
{
    struct channels c;
    channels_start(&c);
    postcopy_incoming_pause(c.incoming);
    postcopy_source_stop(c.serve);

    struct single_touch touch;
    single_touch_start(&touch, &c, 4242);
    cr_assert(harness_wait_until(request_made, &c, WAIT_MS), "the touch never caused a request");
    uint8_t byte;
    cr_assert_eq(recv(c.fds[0], &byte, 1, MSG_DONTWAIT), -1, "a request went into the old channel while paused");
    cr_assert_eq(errno, EAGAIN);
    cr_assert(!single_touch_done(&touch), "the page came without a channel");

    int fresh[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fresh), 0);
    close(c.fds[0]);
    c.fds[0] = fresh[0];
    struct mig_io source_io = { .fd = fresh[0], .stall_ms = WAIT_MS, .peer = "destination" };
    struct mig_io destination_io = { .fd = fresh[1], .stall_ms = WAIT_MS, .peer = "source" };
    cr_assert_eq(postcopy_source_restart(c.serve, source_io), 0);
    char error[512] = "";
    cr_assert_eq(postcopy_incoming_restart(c.incoming, destination_io, error, sizeof(error)), 0, "%s", error);
    single_touch_finish(&touch, "the queued request was never answered");
    struct postcopy_source_stats served;
    postcopy_source_get_stats(c.serve, &served);
    cr_assert_eq(served.requests, 1, "exactly the queued request reached the restarted pc-serve");

    push_background(&c, 64);
    uint64_t missing = ~0ull;
    cr_assert_eq(postcopy_incoming_wait_all(c.incoming, WAIT_MS, &missing, error, sizeof(error)), 0, "%s", error);
    char source_hex[PAGE_DIGEST_HEX_SIZE], destination_hex[PAGE_DIGEST_HEX_SIZE];
    cr_assert_eq(page_digest_memory(&c.source, source_hex), 0);
    cr_assert_eq(postcopy_incoming_digest(c.incoming, destination_hex), RAM_PAGES);
    cr_assert_str_eq(destination_hex, source_hex);
    channels_stop(&c);
}

static void finish_channels(struct channels *c);

static struct postcopy_source_stats served_stats(struct channels *c)
{
    struct postcopy_source_stats stats;
    postcopy_source_get_stats(c->serve, &stats);
    return stats;
}

static bool one_left_to_stream(void *argument)
{
    return served_stats(argument).pages_left_to_stream == 1;
}

/* The main stream's socket as pc-serve sees it: its queue decides whether
 * a requested page the stream already wrote waits for that copy. */
static void fill_socket_beyond(int fd, int at_least)
{
    int size = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) != 0)
        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)), 0);
    static uint8_t chunk[64 << 10];
    int queued = 0;
    while (queued <= at_least) {
        cr_assert_eq(send(fd, chunk, sizeof(chunk), MSG_DONTWAIT), (ssize_t)sizeof(chunk),
                     "the socket took less than %d bytes", at_least);
        cr_assert_eq(ioctl(fd, SIOCOUTQ, &queued), 0);
    }
}

/* Who sends a requested page the background stream took: pc-serve, when
 * the stream's buffer was not filled yet (the stream then leaves it out:
 * one copy); the stream, when it filled the page first and little of the
 * stream waits in its socket (pc-serve sends nothing, the vCPU waits for
 * the stream's copy); both, behind a long queue. Recovery makes a page
 * the stream's again. */
Test(postcopy_channels, a_requested_page_goes_once_whoever_commits_it_first, .timeout = 120)
{
    struct channels c;
    channels_start(&c);
    int main_socket[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, main_socket), 0);
    postcopy_source_set_main_socket(c.serve, main_socket[0]);
    for (uint64_t page = 100; page < 104; page++)
        cr_assert(postcopy_source_claim(c.serve, page), "page %lu", (unsigned long)page);

    /* 100: filled into a stream buffer (committed), then requested. */
    cr_assert_not(postcopy_source_withdrawn(100, c.serve), "the stream commits page 100");
    struct single_touch first;
    single_touch_start(&first, &c, 100);
    cr_assert(harness_wait_until(one_left_to_stream, &c, WAIT_MS), "the request was not left to the stream");
    struct postcopy_source_stats stats = served_stats(&c);
    cr_assert_eq(stats.pages_requested, 0, "nothing went on the urgent channel");
    cr_assert_eq(stats.pages_sent_twice, 0);
    cr_assert(!single_touch_done(&first), "page 100 came without the stream's copy");
    cr_assert_eq(postcopy_incoming_place(c.incoming, 100 * PAGE, 1, c.source.host + 100 * PAGE), 0);
    single_touch_finish(&first, "the stream's copy did not wake it");

    /* 101: planned into a buffer not filled yet, then requested: pc-serve
     * sends it and the buffer leaves it out. */
    struct single_touch second;
    single_touch_start(&second, &c, 101);
    single_touch_finish(&second, "never came");
    cr_assert(postcopy_source_withdrawn(101, c.serve), "the stream's buffer keeps page 101");
    cr_assert_not(postcopy_source_withdrawn(102, c.serve), "page 102 is the stream's");

    /* 102: committed by the stream, but 256 KiB and more wait before it
     * in the socket: a second copy goes now. */
    fill_socket_beyond(main_socket[0], 256 << 10);
    struct single_touch third;
    single_touch_start(&third, &c, 102);
    single_touch_finish(&third, "waited behind the queue");
    stats = served_stats(&c);
    cr_assert_eq(stats.pages_requested, 2, "101 and 102 on the urgent channel");
    cr_assert_eq(stats.pages_left_to_stream, 1);
    cr_assert_eq(stats.pages_sent_twice, 1);
    cr_assert_eq(stats.requests, 3);

    /* Recovery: the destination lacks 101 (say): unsent and uncommitted,
     * so the stream's next buffer keeps it. */
    postcopy_source_mark_unsent(c.serve, 101);
    cr_assert_not(postcopy_source_withdrawn(101, c.serve));
    cr_assert_eq(postcopy_incoming_place(c.incoming, 103 * PAGE, 1, c.source.host + 103 * PAGE), 0);
    close(main_socket[0]);
    close(main_socket[1]);
    finish_channels(&c);
}

/* How many of pc-fault, pc-urgent and pc-serve (found by name among this
 * process's threads) run under policy at priority. */
struct thread_class {
    int policy;
    int priority;
    unsigned found;
};

static void count_in_class(pid_t thread_id, const char *name, void *opaque)
{
    struct thread_class *wanted = opaque;
    if (strcmp(name, "pc-fault") != 0 && strcmp(name, "pc-urgent") != 0 && strcmp(name, "pc-serve") != 0)
        return;
    struct sched_param parameters;
    if (sched_getscheduler(thread_id) == wanted->policy && sched_getparam(thread_id, &parameters) == 0 &&
        parameters.sched_priority == wanted->priority)
        wanted->found++;
}

static bool fault_service_threads_in_class(void *argument)
{
    struct thread_class *wanted = argument;
    wanted->found = 0;
    harness_for_each_thread(count_in_class, wanted);
    return wanted->found == 3;
}

static void finish_channels(struct channels *c)
{
    push_background(c, 512);
    uint64_t missing = ~0ull;
    char error[512] = "";
    cr_assert_eq(postcopy_incoming_wait_all(c->incoming, WAIT_MS, &missing, error, sizeof(error)), 0, "%s", error);
    channels_stop(c);
}

/* ringvm --postcopy-fifo 8: the three fault-service threads run under
 * SCHED_FIFO 8 from their start; without it, on the fair class. */
Test(postcopy_channels, the_fault_service_threads_run_in_the_configured_class, .timeout = 120)
{
    struct channels c;
    channels_start(&c);
    struct thread_class fair = { .policy = SCHED_OTHER, .priority = 0 };
    cr_assert(harness_wait_until(fault_service_threads_in_class, &fair, WAIT_MS),
              "%u of pc-fault, pc-urgent and pc-serve are on SCHED_OTHER by default", fair.found);
    finish_channels(&c);

    char error[300];
    if (postcopy_priority_check(8, error, sizeof(error)) != 0)
        harness_skip("SCHED_FIFO is not permitted to this process: %s", error);
    postcopy_priority_set(8);
    channels_start(&c);
    struct thread_class fifo = { .policy = SCHED_FIFO, .priority = 8 };
    cr_assert(harness_wait_until(fault_service_threads_in_class, &fifo, WAIT_MS),
              "%u of pc-fault, pc-urgent and pc-serve are on SCHED_FIFO 8", fifo.found);
    cr_assert_eq(sched_getscheduler(0), SCHED_OTHER, "the thread that started them keeps its class");
    finish_channels(&c);
}
