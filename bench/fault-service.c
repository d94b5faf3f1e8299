/*
 * bench/fault-service: post-copy's fault service path on its own, without
 * KVM and without vCPUs competing for the cores (issue 17's latency
 * target: p99 <= 1 ms plus one round trip while the background stream
 * runs).
 *
 *   build/bench/fault-service [--memory SIZE] [--transport unix|tcp|both] [--cap MIBS]
 *                             [--faults N] [--touchers N] [--interval-us N]
 *                             [--background-nice N] [--busy N] [--fifo N] [--json]
 *   build/bench/fault-service --help  (every option, with its range and default)
 *
 * bench/postcopy measures the fault service inside a real migration, where
 * two full-rate vCPUs share two cores with the fault thread, pc-urgent,
 * pc-serve and the streams; it cannot tell the protocol's own latency from
 * waiting for a core. Here the same code runs with the cores to spare:
 * the source's pc-serve (migration/postcopy_source.h) and the
 * destination's pc-fault and pc-urgent (migration/postcopy_incoming.h) on
 * real guest RAM under userfaultfd, connected by the migration transport
 * (mig_listen / mig_connect / mig_accept: the same socket options), and a
 * background stream on a second connection of the same kind (a sender
 * thread claiming 1 MiB runs as source_postcopy_push does, paced by
 * migration/pacing.h at --cap, and a receiver thread placing them with
 * postcopy_incoming_place; a plain header + pages framing, not the
 * migration stream's frames). Toucher threads stand in for vCPUs: each
 * reads one byte of a random page that is still missing, then waits
 * --interval-us, --faults times in all.
 *
 * Per transport, in one run (the machine's noise hits all alike): the
 * round trip (two threads exchanging 16 bytes over a fresh connection,
 * 2000 times), then the fault service without and with the background
 * stream (and with its threads at nice N), each up to three ways:
 * "queued", requests queued for pc-urgent to send (the old path,
 * postcopy_incoming_options.queue_requests); "direct", sent by pc-fault
 * itself, every thread on the fair class (what ringvm runs by default);
 * "fifo", direct with the fault-service threads under SCHED_FIFO (ringvm
 * --postcopy-fifo, migration/postcopy_priority.h; left out, with the
 * reason, where this process may not use it). --busy N adds N spinning
 * threads beside every run, standing in for vCPUs at full rate: the
 * contention bench/postcopy sees, without KVM. Reported:
 * the touchers' own latency (clock before the read to clock after it:
 * fault delivery, request, answer, copy, wake) p50/p99/max exactly
 * (sorted samples), the destination's histogram (fault read to
 * page placed, log2 buckets) p50/p99, the background stream's MiB/s, and
 * p99 against 1 ms + the round trip's p50.
 *
 * Exit status 0, or 1 when something failed (message on stderr); without
 * userfaultfd it says why and exits 0 with nothing measured.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/lib/bench_options.h"
#include "migration/pacing.h"
#include "migration/postcopy_destination.h"
#include "migration/postcopy_incoming.h"
#include "migration/postcopy_priority.h"
#include "migration/postcopy_source.h"
#include "migration/progress.h"
#include "migration/transport.h"
#include "vmm/memory.h"

#define PROGRAM "bench/fault-service"
#define PAGE 4096u
#define RUN_PAGES 256u              /* background runs of 1 MiB */
#define ROUND_TRIPS 2000u
#define STALL_MS 30000u

struct settings {
    uint64_t memory;
    bool unix_transport, tcp_transport;
    unsigned cap_mibs;
    unsigned faults;
    unsigned touchers;
    unsigned interval_us;
    unsigned background_nice;   /* 0: no nice'd runs */
    unsigned busy;              /* spinning threads beside each run (vCPUs at full rate) */
    unsigned fifo;              /* SCHED_FIFO priority of the "fifo" runs, 0: none */
    bool json;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Exact quantile of sorted samples (nearest rank). */
static uint64_t quantile(const uint64_t *sorted, size_t count, double q)
{
    if (count == 0)
        return 0;
    size_t rank = (size_t)(q * (double)count + 0.999999);
    if (rank == 0)
        rank = 1;
    return sorted[rank > count ? count - 1 : rank - 1];
}

/* ---- connections --------------------------------------------------------- */

/* A connected pair over the transport, as a migration makes it: [0] the
 * connecting side (the source), [1] the accepted side (the destination). */
static int connect_pair(bool tcp, int fds[2])
{
    char text[200], error[400];
    static unsigned counter;
    struct mig_address address;
    int listener = -1;
    /* TCP: the first free port from a per-process start (the transport's
     * parser takes no port 0). */
    for (unsigned attempt = 0; listener < 0 && attempt < (tcp ? 200u : 1u); attempt++) {
        if (tcp)
            snprintf(text, sizeof(text), "tcp:127.0.0.1:%u", 20000u + ((unsigned)getpid() * 7u + counter++) % 40000u);
        else
            snprintf(text, sizeof(text), "unix:/tmp/ringvm-fault-service-%d-%u.sock", (int)getpid(), counter++);
        if (mig_address_parse(text, &address, error, sizeof(error)) != 0) {
            fprintf(stderr, "bench/fault-service: %s\n", error);
            return -1;
        }
        listener = mig_listen(&address, error, sizeof(error));
    }
    if (listener < 0) {
        fprintf(stderr, "bench/fault-service: listen %s: %s\n", text, error);
        return -1;
    }
    fds[0] = mig_connect(&address, 5000, NULL, error, sizeof(error));
    if (fds[0] >= 0)
        fds[1] = mig_accept(listener, NULL, error, sizeof(error));
    close(listener);
    if (!tcp)
        unlink(address.path);
    if (fds[0] < 0 || fds[1] < 0) {
        fprintf(stderr, "bench/fault-service: connecting %s: %s\n", text, error);
        if (fds[0] >= 0)
            close(fds[0]);
        return -1;
    }
    return 0;
}

/* ---- the round trip ------------------------------------------------------ */

static void *echo_run(void *argument)
{
    struct mig_io *io = argument;
    uint8_t message[16];
    char error[400];
    for (unsigned i = 0; i < ROUND_TRIPS; i++)
        if (mig_io_read(io, message, sizeof(message), false, error, sizeof(error)) != 0 ||
            mig_io_write(io, message, sizeof(message), error, sizeof(error)) != 0)
            break;
    return NULL;
}

/* p50 and p99 of ROUND_TRIPS 16-byte round trips, ns. */
static int measure_round_trip(bool tcp, uint64_t *p50, uint64_t *p99)
{
    int fds[2];
    if (connect_pair(tcp, fds) != 0)
        return -1;
    struct mig_io near = { .fd = fds[0], .stall_ms = STALL_MS, .peer = "echo" };
    struct mig_io far = { .fd = fds[1], .stall_ms = STALL_MS, .peer = "echo" };
    pthread_t echo;
    if (pthread_create(&echo, NULL, echo_run, &far) != 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    uint64_t *samples = calloc(ROUND_TRIPS, sizeof(uint64_t));
    uint8_t message[16] = { 0 };
    char error[400];
    int result = samples != NULL ? 0 : -1;
    for (unsigned i = 0; result == 0 && i < ROUND_TRIPS; i++) {
        uint64_t start = now_ns();
        if (mig_io_write(&near, message, sizeof(message), error, sizeof(error)) != 0 ||
            mig_io_read(&near, message, sizeof(message), false, error, sizeof(error)) != 0) {
            fprintf(stderr, "bench/fault-service: round trip: %s\n", error);
            result = -1;
            break;
        }
        samples[i] = now_ns() - start;
    }
    if (result != 0)
        shutdown(fds[0], SHUT_RDWR);
    pthread_join(echo, NULL);
    if (result == 0) {
        qsort(samples, ROUND_TRIPS, sizeof(uint64_t), compare_u64);
        *p50 = quantile(samples, ROUND_TRIPS, 0.50);
        *p99 = quantile(samples, ROUND_TRIPS, 0.99);
    }
    free(samples);
    close(fds[0]);
    close(fds[1]);
    return result;
}

/* ---- one fault-service run ----------------------------------------------- */

/* Owned by run_service; the threads share the atomics and read the rest. */
struct service {
    const struct settings *settings;
    struct guest_memory source, destination;
    struct postcopy_source *serve;
    struct postcopy_incoming *incoming;
    int urgent[2], main[2];
    uint64_t pages;
    _Atomic bool failed;
    uint64_t background_bytes, background_ns;
    int nice;                   /* the background stream's threads */
};

/* A stand-in for a vCPU running at full rate: CPU-bound on the default
 * slice until the run ends. Writes its own buffer, never guest RAM. */
struct busy_thread {
    _Atomic bool *stop;
    pthread_t thread;
};

static void *busy_run(void *argument)
{
    struct busy_thread *b = argument;
    static _Thread_local uint64_t words[8192];
    for (uint64_t round = 0; !atomic_load_explicit(b->stop, memory_order_relaxed); round++)
        for (unsigned i = 0; i < 8192; i += 8)
            words[i] += round;
    return NULL;
}

struct toucher {
    struct service *service;
    unsigned index;
    unsigned faults;            /* to take */
    uint64_t *samples;          /* ns, one per fault taken */
    unsigned taken;
    pthread_t thread;
};

static void fill_source(struct service *s)
{
    for (uint64_t page = 0; page < s->pages; page++) {
        if (page % 8 == 5)
            continue;       /* a hole: sent as a zero run */
        uint64_t *words = (uint64_t *)(s->source.host + page * PAGE);
        uint64_t x = page * 0x9e3779b97f4a7c15ull + 1;
        for (unsigned i = 0; i < PAGE / 8; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            words[i] = x;
        }
    }
}

static void *toucher_run(void *argument)
{
    struct toucher *t = argument;
    struct service *s = t->service;
    uint64_t x = 0x2545f4914f6cdd1dull * (t->index + 1);
    unsigned misses = 0;
    while (t->taken < t->faults && !atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t page = x % s->pages;
        if (postcopy_incoming_received(s->incoming, page)) {
            if (++misses > 64 * s->pages)
                break;      /* everything arrived: no fault left to take */
            continue;
        }
        volatile uint8_t *byte = s->destination.host + page * PAGE + (x >> 52);
        uint64_t start = now_ns();
        (void)*byte;
        t->samples[t->taken++] = now_ns() - start;
        if (s->settings->interval_us > 0) {
            /* Pacing the stand-in vCPU, not synchronization. */
            struct timespec pause = { .tv_sec = 0, .tv_nsec = (long)s->settings->interval_us * 1000 };
            nanosleep(&pause, NULL);
        }
    }
    return NULL;
}

struct run_header {
    uint64_t page;
    uint32_t count;             /* 0: the end */
    uint32_t zero;
};

/* The stream's threads at a lower priority (--background-nice): waking
 * fault-service threads then preempt them sooner. Raising one's own nice
 * needs no privilege. */
static void background_nice(const struct service *s)
{
    if (s->nice > 0 && setpriority(PRIO_PROCESS, (id_t)gettid(), s->nice) != 0)
        fprintf(stderr, "bench/fault-service: setpriority(nice %d): %s\n", s->nice, strerror(errno));
}

static void *background_send_run(void *argument)
{
    struct service *s = argument;
    background_nice(s);
    struct mig_io io = { .fd = s->main[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_pacer pacer;
    uint64_t start = now_ns(), sent = 0;
    mig_pacer_init(&pacer, start, 0);
    uint64_t cap = (uint64_t)s->settings->cap_mibs << 20;
    char error[400];
    uint64_t from = 0, page;
    for (;;) {
        uint64_t restart;
        if (postcopy_source_take_restart(s->serve, &restart) && restart < s->pages)
            from = restart;
        if (!postcopy_source_next_unsent(s->serve, from, &page))
            break;
        uint32_t count = 0;
        while (count < RUN_PAGES && page + count < s->pages && postcopy_source_claim(s->serve, page + count))
            count++;
        from = page + (count > 0 ? count : 1);
        if (from >= s->pages)
            from = 0;
        for (uint32_t i = 0; i < count;) {
            bool zero = (page + i) % 8 == 5;
            uint32_t end = i + 1;
            while (end < count && ((page + end) % 8 == 5) == zero)
                end++;
            struct run_header header = { .page = page + i, .count = end - i, .zero = zero };
            struct iovec iov[2] = { { &header, sizeof(header) },
                                    { s->source.host + (page + i) * PAGE, zero ? 0 : (size_t)(end - i) * PAGE } };
            uint64_t wait = mig_pacer_wait_ns(&pacer, now_ns(), sent, cap);
            if (wait > 0) {
                struct timespec pause = { .tv_sec = (time_t)(wait / 1000000000u), .tv_nsec = (long)(wait % 1000000000u) };
                nanosleep(&pause, NULL);
            }
            if (mig_io_writev(&io, iov, zero ? 1 : 2, error, sizeof(error)) != 0) {
                fprintf(stderr, "bench/fault-service: background stream: %s\n", error);
                atomic_store(&s->failed, true);
                return NULL;
            }
            sent += sizeof(header) + (zero ? 0 : (uint64_t)(end - i) * PAGE);
            i = end;
        }
    }
    struct run_header last = { 0 };
    if (mig_io_write(&io, &last, sizeof(last), error, sizeof(error)) != 0) {
        fprintf(stderr, "bench/fault-service: background stream: %s\n", error);
        atomic_store(&s->failed, true);
    }
    s->background_bytes = sent;
    s->background_ns = now_ns() - start;
    return NULL;
}

static void *background_receive_run(void *argument)
{
    struct service *s = argument;
    background_nice(s);
    struct mig_io io = { .fd = s->main[1], .stall_ms = STALL_MS, .peer = "source" };
    uint8_t *buffer = malloc((size_t)RUN_PAGES * PAGE);
    char error[400];
    for (;;) {
        struct run_header header;
        if (buffer == NULL || mig_io_read(&io, &header, sizeof(header), false, error, sizeof(error)) != 0) {
            fprintf(stderr, "bench/fault-service: background receiver: %s\n", buffer ? error : "out of memory");
            atomic_store(&s->failed, true);
            break;
        }
        if (header.count == 0)
            break;
        if (header.count > RUN_PAGES || header.page >= s->pages || header.count > s->pages - header.page) {
            fprintf(stderr, "bench/fault-service: background receiver: bad run\n");
            atomic_store(&s->failed, true);
            break;
        }
        if (!header.zero &&
            mig_io_read(&io, buffer, (size_t)header.count * PAGE, false, error, sizeof(error)) != 0) {
            fprintf(stderr, "bench/fault-service: background receiver: %s\n", error);
            atomic_store(&s->failed, true);
            break;
        }
        if (postcopy_incoming_place(s->incoming, header.page * PAGE, header.count, header.zero ? NULL : buffer) != 0) {
            atomic_store(&s->failed, true);
            break;
        }
    }
    free(buffer);
    return NULL;
}

struct outcome {
    unsigned faults;
    uint64_t p50_ns, p99_ns, max_ns;            /* the touchers' own */
    uint64_t destination_p50_ns, destination_p99_ns, destination_max_ns;
    double background_mibs;
};

static int run_service(const struct settings *settings, bool tcp, bool background, int nice, bool queued,
                       struct outcome *out)
{
    struct service *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    s->settings = settings;
    s->nice = nice;
    s->pages = settings->memory / PAGE;
    s->urgent[0] = s->urgent[1] = s->main[0] = s->main[1] = -1;
    struct guest_memory_options options = { .numa_node = -1 };
    int result = -1;
    struct toucher *touchers = calloc(settings->touchers, sizeof(*touchers));
    pthread_t sender, receiver;
    bool streaming = false;
    unsigned started = 0;
    if (touchers == NULL || guest_memory_create(&s->source, settings->memory, &options) != 0)
        goto out_free;
    if (guest_memory_create(&s->destination, settings->memory, &options) != 0)
        goto out_source;
    fill_source(s);
    if (connect_pair(tcp, s->urgent) != 0 || connect_pair(tcp, s->main) != 0)
        goto out_memory;
    struct mig_io source_urgent = { .fd = s->urgent[0], .stall_ms = STALL_MS, .peer = "destination" };
    struct mig_io destination_urgent = { .fd = s->urgent[1], .stall_ms = STALL_MS, .peer = "source" };
    char error[512];
    if (postcopy_source_create(&s->serve, &s->source, source_urgent) != 0)
        goto out_memory;
    struct postcopy_incoming_options incoming = {
        .host = s->destination.host, .memfd = s->destination.memfd, .size = s->destination.size,
        .urgent = destination_urgent, .queue_requests = queued,
    };
    if (postcopy_incoming_start(&s->incoming, &incoming, error, sizeof(error)) != 0) {
        fprintf(stderr, "bench/fault-service: %s\n", error);
        s->urgent[1] = -1;      /* closed by the failed start */
        goto out_serve;
    }
    s->urgent[1] = -1;          /* the session's now */
    if (postcopy_source_start(s->serve) != 0)
        goto out_incoming;
    if (background) {
        if (pthread_create(&receiver, NULL, background_receive_run, s) != 0)
            goto out_incoming;
        if (pthread_create(&sender, NULL, background_send_run, s) != 0) {
            shutdown(s->main[1], SHUT_RDWR);
            pthread_join(receiver, NULL);
            goto out_incoming;
        }
        streaming = true;
    }
    _Atomic bool busy_stop = false;
    struct busy_thread busy[64];
    unsigned busy_started = 0;
    for (; busy_started < settings->busy; busy_started++) {
        busy[busy_started] = (struct busy_thread){ .stop = &busy_stop };
        if (pthread_create(&busy[busy_started].thread, NULL, busy_run, &busy[busy_started]) != 0) {
            atomic_store(&s->failed, true);
            break;
        }
    }
    unsigned each = (settings->faults + settings->touchers - 1) / settings->touchers;
    for (; started < settings->touchers; started++) {
        struct toucher *t = &touchers[started];
        *t = (struct toucher){ .service = s, .index = started, .faults = each };
        t->samples = calloc(each, sizeof(uint64_t));
        if (t->samples == NULL || pthread_create(&t->thread, NULL, toucher_run, t) != 0) {
            free(t->samples);
            atomic_store(&s->failed, true);
            break;
        }
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(touchers[i].thread, NULL);
    atomic_store_explicit(&busy_stop, true, memory_order_relaxed);
    for (unsigned i = 0; i < busy_started; i++)
        pthread_join(busy[i].thread, NULL);
    /* The destination's histogram covers the touchers' faults only: read
     * it before the stream's end fills what they did not touch. */
    struct mig_progress *progress = calloc(1, sizeof(*progress));
    if (progress != NULL) {
        postcopy_incoming_fill_progress(s->incoming, progress, NULL, 0);
        out->destination_p50_ns = progress->postcopy.latency_p50_ns;
        out->destination_p99_ns = progress->postcopy.latency_p99_ns;
        out->destination_max_ns = progress->postcopy.latency_max_ns;
        free(progress);
    }
    if (streaming) {
        pthread_join(sender, NULL);
        pthread_join(receiver, NULL);
        out->background_mibs = s->background_ns > 0 ? (double)s->background_bytes / (1 << 20) /
                                                          ((double)s->background_ns / 1e9) : 0;
    }
    size_t count = 0;
    for (unsigned i = 0; i < started; i++)
        count += touchers[i].taken;
    uint64_t *all = calloc(count > 0 ? count : 1, sizeof(uint64_t));
    if (all != NULL && !atomic_load(&s->failed)) {
        size_t at = 0;
        for (unsigned i = 0; i < started; i++) {
            memcpy(all + at, touchers[i].samples, touchers[i].taken * sizeof(uint64_t));
            at += touchers[i].taken;
        }
        qsort(all, count, sizeof(uint64_t), compare_u64);
        out->faults = (unsigned)count;
        out->p50_ns = quantile(all, count, 0.50);
        out->p99_ns = quantile(all, count, 0.99);
        out->max_ns = count > 0 ? all[count - 1] : 0;
        result = 0;
    }
    free(all);
    for (unsigned i = 0; i < started; i++)
        free(touchers[i].samples);
out_incoming:
    postcopy_incoming_finish(s->incoming);
    postcopy_source_stop(s->serve);
    postcopy_incoming_destroy(s->incoming);
out_serve:
    postcopy_source_destroy(s->serve);
out_memory:
    for (unsigned i = 0; i < 2; i++) {
        if (s->urgent[i] >= 0 && i == 0)
            close(s->urgent[i]);
        if (s->main[i] >= 0)
            close(s->main[i]);
    }
    guest_memory_destroy(&s->destination);
out_source:
    guest_memory_destroy(&s->source);
out_free:
    free(touchers);
    free(s);
    return result;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: fault-service [--memory SIZE] [--transport unix|tcp|both] [--cap MIBS] [--faults N]\n"
            "                     [--touchers N] [--interval-us N] [--background-nice N] [--busy N]\n"
            "                     [--fifo N] [--json]\n"
            "Post-copy's fault service (fault -> request -> pc-serve -> urgent channel -> place -> wake)\n"
            "without KVM, beside the transport's round trip, with and without the background stream.\n"
            "Each case three ways (column service): queued (requests sent by pc-urgent), direct\n"
            "(sent by pc-fault: ringvm's default) and fifo (direct, the fault-service threads under\n"
            "SCHED_FIFO, as ringvm's postcopy-fifo option runs them; left out, with the reason, where\n"
            "this process may not use SCHED_FIFO).\n"
            "  --memory SIZE      guest RAM on each side, 16M to 1T, a multiple of 1M (default 256M)\n"
            "  --transport T      unix, tcp (127.0.0.1) or both (default both)\n"
            "  --cap MIBS         the background stream's cap in MiB/s, 0 = none, up to 100000\n"
            "                     (default 125)\n"
            "  --faults N         faults to take per run, over all touchers, 1 to 10000000 (default 2000)\n"
            "  --touchers N       threads standing in for vCPUs, 1 to 64 (default 2)\n"
            "  --interval-us N    each toucher's pause between faults, 0 to 1000000 (default 500)\n"
            "  --background-nice N also run the background stream's threads at nice N (1-19), same run\n"
            "  --busy N           N threads spinning beside every run, standing in for vCPUs at full\n"
            "                     rate, 0 to 64 (default 0)\n"
            "  --fifo N           SCHED_FIFO priority of the fifo runs, 1 to 99; 0 leaves them out\n"
            "                     (default 1)\n"
            "  --json             one JSON object on stdout instead of the table\n"
            "  -h, --help         this text\n");
}

int main(int argc, char **argv)
{
    struct settings settings = { .memory = 256ull << 20, .unix_transport = true, .tcp_transport = true,
                                 .cap_mibs = 125, .faults = 2000, .touchers = 2, .interval_us = 500,
                                 .fifo = 1 };
    static const struct option long_options[] = {
        { "memory", required_argument, NULL, 'm' }, { "transport", required_argument, NULL, 't' },
        { "cap", required_argument, NULL, 'c' },    { "faults", required_argument, NULL, 'f' },
        { "touchers", required_argument, NULL, 'n' }, { "interval-us", required_argument, NULL, 'i' },
        { "background-nice", required_argument, NULL, 'b' }, { "busy", required_argument, NULL, 'B' },
        { "fifo", required_argument, NULL, 'F' },   { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int option;
    while ((option = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        int parsed = 0;
        switch (option) {
        case 'm':
            /* whole background runs of 1 MiB */
            parsed = bench_option_size(PROGRAM, "--memory", optarg, 16ULL << 20, 1ULL << 40, RUN_PAGES * PAGE,
                                       &settings.memory);
            break;
        case 't':
            settings.unix_transport = strcmp(optarg, "unix") == 0 || strcmp(optarg, "both") == 0;
            settings.tcp_transport = strcmp(optarg, "tcp") == 0 || strcmp(optarg, "both") == 0;
            if (!settings.unix_transport && !settings.tcp_transport) {
                fprintf(stderr, PROGRAM ": --transport '%s': expected unix, tcp or both\n", optarg);
                parsed = -1;
            }
            break;
        case 'c': parsed = bench_option_unsigned(PROGRAM, "--cap", optarg, 0, 100000, &settings.cap_mibs); break;
        case 'f': parsed = bench_option_unsigned(PROGRAM, "--faults", optarg, 1, 10000000, &settings.faults); break;
        case 'n': parsed = bench_option_unsigned(PROGRAM, "--touchers", optarg, 1, 64, &settings.touchers); break;
        case 'i':
            parsed = bench_option_unsigned(PROGRAM, "--interval-us", optarg, 0, 1000000, &settings.interval_us);
            break;
        case 'b':
            /* 1-19: a positive nice, the one an unprivileged process may take */
            parsed = bench_option_unsigned(PROGRAM, "--background-nice", optarg, 1, 19, &settings.background_nice);
            break;
        case 'B': parsed = bench_option_unsigned(PROGRAM, "--busy", optarg, 0, 64, &settings.busy); break;
        case 'F':
            parsed = bench_option_unsigned(PROGRAM, "--fifo", optarg, 0, POSTCOPY_PRIORITY_MAX, &settings.fifo);
            break;
        case 'j': settings.json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (parsed != 0)
            return 2;
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;
    char why[400];
    if (!postcopy_destination_available(why, sizeof(why))) {
        fprintf(stderr, "bench/fault-service: nothing measured: %s\n", why);
        return 0;
    }
    if (settings.fifo > 0 && postcopy_priority_check(settings.fifo, why, sizeof(why)) != 0) {
        fprintf(stderr, PROGRAM ": the fifo runs are left out: %s\n", why);
        settings.fifo = 0;
    }
    json_t *runs = json_array();
    if (!settings.json)
        printf("%-9s %-11s %-9s | %6s %8s %8s %9s | %8s %8s | %8s %8s | %7s | %s\n", "transport", "background",
               "service",
               "faults", "p50_us", "p99_us", "max_us", "dst_p50", "dst_p99", "rtt_p50", "rtt_p99", "bg_MiBs",
               "p99 <= 1 ms + rtt");
    int status = 0;
    for (int transport = 0; transport < 2; transport++) {
        bool tcp = transport == 1;
        if ((tcp && !settings.tcp_transport) || (!tcp && !settings.unix_transport))
            continue;
        uint64_t rtt_p50 = 0, rtt_p99 = 0;
        if (measure_round_trip(tcp, &rtt_p50, &rtt_p99) != 0) {
            status = 1;
            continue;
        }
        /* Stream off, on, and on with its threads nice'd; each queued,
         * direct, then fifo. */
        for (int variant = 0; variant < (settings.background_nice > 0 ? 9 : 6); variant++) {
            int background = variant / 3 > 0;
            int nice = variant / 3 == 2 ? (int)settings.background_nice : 0;
            bool queued = variant % 3 == 0;
            unsigned fifo = variant % 3 == 2 ? settings.fifo : 0;
            if (variant % 3 == 2 && fifo == 0)
                continue;
            const char *service = queued ? "queued" : fifo > 0 ? "fifo" : "direct";
            postcopy_priority_set(fifo);
            struct outcome outcome = { 0 };
            int failed = run_service(&settings, tcp, background == 1, nice, queued, &outcome);
            postcopy_priority_set(0);
            if (failed != 0) {
                fprintf(stderr, "bench/fault-service: the %s run with%s the background stream failed\n",
                        tcp ? "tcp" : "unix", background ? "" : "out");
                status = 1;
                continue;
            }
            bool met = outcome.p99_ns <= 1000000u + rtt_p50;
            char stream[32];
            if (!background)
                snprintf(stream, sizeof(stream), "off");
            else if (settings.cap_mibs > 0)
                snprintf(stream, sizeof(stream), nice > 0 ? "%u,nice %d" : "%u MiB/s", settings.cap_mibs, nice);
            else
                snprintf(stream, sizeof(stream), nice > 0 ? "unc,nice %d" : "uncapped", nice);
            if (!settings.json)
                printf("%-9s %-11s %-9s | %6u %8.1f %8.1f %9.1f | %8.1f %8.1f | %8.1f %8.1f | %7.1f | %s\n",
                       tcp ? "tcp" : "unix", stream, service,
                       outcome.faults, outcome.p50_ns / 1e3, outcome.p99_ns / 1e3,
                       outcome.max_ns / 1e3, outcome.destination_p50_ns / 1e3, outcome.destination_p99_ns / 1e3,
                       rtt_p50 / 1e3, rtt_p99 / 1e3, outcome.background_mibs, met ? "yes" : "no");
            json_t *run = json_object();
            json_object_set_new(run, "transport", json_string(tcp ? "tcp" : "unix"));
            json_object_set_new(run, "background", json_boolean(background));
            json_object_set_new(run, "cap_mibs", json_integer(settings.cap_mibs));
            json_object_set_new(run, "background_nice", json_integer(nice));
            json_object_set_new(run, "service", json_string(service));
            json_object_set_new(run, "requests", json_string(queued ? "queued" : "direct"));
            json_object_set_new(run, "fifo_priority", json_integer(fifo));
            json_object_set_new(run, "faults", json_integer(outcome.faults));
            json_object_set_new(run, "p50_us", json_real(outcome.p50_ns / 1e3));
            json_object_set_new(run, "p99_us", json_real(outcome.p99_ns / 1e3));
            json_object_set_new(run, "max_us", json_real(outcome.max_ns / 1e3));
            json_object_set_new(run, "destination_p50_us", json_real(outcome.destination_p50_ns / 1e3));
            json_object_set_new(run, "destination_p99_us", json_real(outcome.destination_p99_ns / 1e3));
            json_object_set_new(run, "destination_max_us", json_real(outcome.destination_max_ns / 1e3));
            json_object_set_new(run, "rtt_p50_us", json_real(rtt_p50 / 1e3));
            json_object_set_new(run, "rtt_p99_us", json_real(rtt_p99 / 1e3));
            json_object_set_new(run, "background_mibs", json_real(outcome.background_mibs));
            json_object_set_new(run, "p99_within_1ms_plus_rtt", json_boolean(met));
            json_array_append_new(runs, run);
        }
    }
    if (settings.json) {
        json_t *root = json_object();
        json_object_set_new(root, "benchmark", json_string("fault-service"));
        json_object_set_new(root, "memory", json_integer((json_int_t)settings.memory));
        json_object_set_new(root, "touchers", json_integer(settings.touchers));
        json_object_set_new(root, "interval_us", json_integer(settings.interval_us));
        json_object_set_new(root, "busy_threads", json_integer(settings.busy));
        json_object_set_new(root, "runs", runs);
        json_dumpf(root, stdout, JSON_INDENT(2));
        printf("\n");
        json_decref(root);
    } else {
        json_decref(runs);
    }
    return status;
}
