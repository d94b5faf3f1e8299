/*
 * bench/migrate: live migration matrix on this machine, two VMs in one
 * process (source and destination each with their own KVM VM and RAM),
 * over a unix socket, plus throughput baselines measured in the same run:
 * the raw socket (one cache-resident buffer sent over and over: the
 * socket's ceiling, alone and beside the full-rate guest); before every
 * uncapped migration, the same bytes (that guest's RAM) moved plainly into
 * RAM like the destination's (the "plain sender and receiver
 * moving the same bytes"); and the migration of an idle guest (working set
 * written once), so the pipeline's own efficiency and the CPU the guest
 * takes from it can be told apart.
 *
 *   build/bench/migrate [--quick] [--json] [--memory SIZE] [--timeout S]
 *                       [--downtime-ms N] [--transport unix|tcp] [--filter CELL]
 *                       [--caps none,1024,125] [--baselines] [--dest-prealloc] [--vcpus N]
 *                       [--ram memfd|anonymous]
 *                       [--bitmap-clear-chunk SIZE] [--wss LIST] [--ring-take] [--pattern P]
 *   build/bench/migrate --reaction N [--json] [--transport unix|tcp]
 *   build/bench/migrate --help        (every option, with its range and default)
 *
 * Matrix (issue 5): working set 256 MiB / 1 GiB of a 1.5 GiB guest at full
 * rate, bandwidth cap none / 1024 / 125 MiB/s, converge none / auto /
 * dirty-limit, dirty log ring / bitmap (dirty-limit needs per-vCPU rates:
 * ring only, shown as n/a for bitmap). --quick: 256 MiB, caps none / 125.
 * Reported per run: converged, total ms, downtime ms, iterations, final
 * throttle, bytes sent, iteration 0 MiB/s and (uncapped) its share of the
 * plain move; and the guest's own pages/s just before and during the
 * migration (what tracking costs it).
 *
 * --reaction N (the speed claims that left make test, issue 18): how soon
 * the source gives its guest back, N times each, beside a plain vm_pause +
 * vm_resume of the same guest in the same run: after migration.cancel in
 * the iterations (cancel -> migration ended, cancel -> the guest writes
 * again) and after the destination's socket closes mid-stream (close ->
 * ended, close -> the guest writes again). Medians and maxima, and each
 * median as a ratio of the plain resume's.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/lib/bench_options.h"
#include "bench/lib/bench_vm.h"
#include "migration/migration.h"
#include "migration/progress.h"
#include "migration/protocol.h"
#include "migration/transport.h"
#include "vmm/memory_extents.h"
#include "vmm/size.h"
#include "vmm/vm.h"

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

struct options {
    bool quick, json;
    uint64_t memory;
    unsigned timeout_s;
    unsigned downtime_ms;
    bool tcp;
    const char *filter;     /* "WSS/CAP/CONVERGE/LOG" prefix, e.g. "256M/none/auto" */
    bool baselines_only;    /* --baselines: the throughput baselines, no matrix */
    bool ring_take;         /* --ring-take: also ring rows with --ring-reset take */
    const char *pattern;    /* --pattern: the dirtier's pattern in the matrix (default seq) */
    bool dest_prealloc;     /* --dest-prealloc: matrix destinations fault their RAM in at start */
    uint64_t caps[8];       /* --caps: MiB/s, 0 = none */
    unsigned cap_count;     /* 0 = the matrix's (or --quick's) caps */
    unsigned reaction_runs; /* --reaction N: the reaction measurements instead of the matrix */
    unsigned vcpus;         /* --vcpus: the matrix's source and destination vCPUs (default 1) */
    uint64_t bitmap_clear_chunk;    /* --bitmap-clear-chunk: bytes, 0 = ringvm's default */
    uint64_t wss[8];        /* --wss: the matrix's working sets, bytes (default 256M,1G) */
    unsigned wss_count;     /* 0 = the default */
};

#define PROGRAM "bench/migrate"
/* migration.start's largest max_bandwidth_mibs (api/commands_migration.c) */
#define MAX_CAP_MIBS (1u << 30)

static uint64_t bitmap_clear_chunk;     /* --bitmap-clear-chunk, for every VM made */
/* --ring-reset take for the VMs of the cell being run (the "ring-take"
 * rows: the A/B baseline of late reset). Set by main around run_one. */
static bool ring_reset_at_take;
/* --ram anonymous: every VM's guest RAM, and the plain move's target, on
 * anonymous memory (ringvm --ram anonymous) instead of a memfd. */
static bool anonymous_ram;

static int make_vm_vcpus(struct vm **out, uint64_t memory, unsigned vcpus, const char *workload,
                         enum dirty_log_mode mode, bool incoming, bool prealloc)
{
    struct bench_vm_options options = { .memory = memory, .vcpus = vcpus, .workload = workload, .dirty_log = mode,
                                        .incoming = incoming, .prealloc = prealloc,
                                        .bitmap_clear_chunk = bitmap_clear_chunk,
                                        .ring_reset_at_take = ring_reset_at_take, .anonymous_ram = anonymous_ram };
    return bench_vm_start(out, &options, "bench/migrate");
}

static int make_vm(struct vm **out, uint64_t memory, const char *workload, enum dirty_log_mode mode, bool incoming,
                   bool prealloc)
{
    return make_vm_vcpus(out, memory, 1, workload, mode, incoming, prealloc);
}

struct incoming {
    struct vm *vm;
    int fd;
    char address[128];
    int result;
};

static void *incoming_main(void *argument)
{
    struct incoming *in = argument;
    in->result = migration_incoming_run_fd(in->vm, in->fd, in->address, NULL);
    return NULL;
}

struct result {
    char wss[16];
    char cap[24];
    const char *converge;
    const char *mode;
    bool skipped;
    bool converged;
    uint64_t total_ms, downtime_ms, iterations, bytes;
    int final_throttle;
    double throughput_mibs;     /* iteration 0 bandwidth */
    double plain_mibs;          /* uncapped cells: the same bytes moved plainly, just before */
    double guest_pps_before;    /* guest pages/s over 0.5 s just before the migration (untracked) */
    double guest_pps_during;    /* guest pages/s from migration start to the end (total_ms) */
    uint64_t bitmap_clears;     /* bitmap mode, the source: KVM_CLEAR_DIRTY_LOG calls */
    uint64_t bitmap_cleared_pages;
    double bitmap_clear_ms;     /* time in them */
    uint64_t recycling_iterations;  /* ring mode: iterations in which the rings recycled */
    uint64_t recycling_resets;      /* harvester resets + ring-full exits during the migration */
    double entries_per_page;        /* ring entries harvested / pages taken: write-protect
                                       faults per page per pass (<= ~1 while the rings hold a pass) */
    char error[1024];
};

/* ---- plain transfers: the baselines' sender and receiver ------------------------------ */

/* One stretch of a plain transfer: `bytes` sent from `from`, received into
 * `to`, in calls of at most TRANSFER_CHUNK (the migration sender's batch
 * size, minus copying and checksums). */
#define TRANSFER_CHUNK (4u << 20)
struct transfer_segment {
    const uint8_t *from;
    uint8_t *to;
    uint64_t bytes;
};

struct transfer_receiver {
    int listen_fd;
    const struct transfer_segment *segments;
    unsigned count;
    uint64_t received;
};

static uint64_t chunk_at(uint64_t bytes, uint64_t done)
{
    return bytes - done > TRANSFER_CHUNK ? TRANSFER_CHUNK : bytes - done;
}

static void *transfer_receive(void *argument)
{
    struct transfer_receiver *r = argument;
    char error[256];
    int fd = mig_accept(r->listen_fd, NULL, error, sizeof(error));
    if (fd < 0)
        return NULL;
    for (unsigned i = 0; i < r->count; i++) {
        const struct transfer_segment *segment = &r->segments[i];
        for (uint64_t done = 0; done < segment->bytes;) {
            ssize_t got = recv(fd, segment->to + done, (size_t)chunk_at(segment->bytes, done), 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
                mig_io_poll_readable(fd, 100);
                continue;
            }
            if (got <= 0)
                goto out;
            done += (uint64_t)got;
            r->received += (uint64_t)got;
        }
    }
out:
    close(fd);
    return NULL;
}

/* Sends the segments through a fresh socket of the run's transport to a
 * receiver thread; MiB/s from the first send to the last byte received, 0
 * when the transfer did not complete. */
static double transfer_throughput(bool tcp, const struct transfer_segment *segments, unsigned count)
{
    char address[128], error[256];
    struct transfer_receiver receiver = { .segments = segments, .count = count };
    uint64_t total = 0;
    for (unsigned i = 0; i < count; i++)
        total += segments[i].bytes;
    receiver.listen_fd = bench_vm_listen(tcp, PROGRAM, address, sizeof(address));
    if (receiver.listen_fd < 0)
        return 0;
    pthread_t thread;
    pthread_create(&thread, NULL, transfer_receive, &receiver);
    struct mig_address parsed;
    mig_address_parse(address, &parsed, error, sizeof(error));
    int fd = mig_connect(&parsed, 5000, NULL, error, sizeof(error));
    double mibs = 0;
    if (fd >= 0) {
        struct mig_io io = { .fd = fd, .stall_ms = 10000, .peer = "receiver" };
        uint64_t started = now_ns();
        bool failed = false;
        for (unsigned i = 0; i < count && !failed; i++)
            for (uint64_t done = 0; done < segments[i].bytes && !failed;) {
                uint64_t chunk = chunk_at(segments[i].bytes, done);
                failed = mig_io_write(&io, segments[i].from + done, (size_t)chunk, error, sizeof(error)) != 0;
                done += chunk;
            }
        if (failed)
            fprintf(stderr, "bench/migrate: plain sender: %s\n", error);
        close(fd);
        pthread_join(thread, NULL);
        uint64_t elapsed = now_ns() - started;
        if (receiver.received == total)
            mibs = (double)total / (1024.0 * 1024.0) / ((double)elapsed / 1e9);
    } else {
        fprintf(stderr, "bench/migrate: plain sender: %s\n", error);
        pthread_cancel(thread);
        pthread_join(thread, NULL);
    }
    close(receiver.listen_fd);
    if (!tcp)
        unlink(address + 5);
    return mibs;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts the three samples; their median. */
static double median_of_three(double samples[3])
{
    qsort(samples, 3, sizeof(samples[0]), compare_doubles);
    return samples[1];
}

/* ---- the same bytes, moved plainly -------------------------------------------------- */

/*
 * The baseline the pipeline is judged against (docs/benchmarks.md): the
 * bytes iteration 0 sends as data (the memfd's data extents; holes go as
 * zero runs without being read), taken straight from the source guest's
 * RAM into a fresh memfd mapping of the same size, as the destination's
 * RAM would be: no frames, checksums, zero test, staging copy or dirty
 * tracking; prealloc faults the receiving RAM in first (untimed), like
 * ringvm --incoming --prealloc. Moving data from RAM to RAM costs DRAM
 * bandwidth and first-touch faults that the cache-hot raw socket below
 * never pays. MiB/s.
 */
#define PLAIN_MAX_EXTENTS 64
static double plain_throughput_once(const struct options *o, struct vm *source, bool prealloc)
{
    struct guest_memory *memory = &source->memory;
    uint8_t *target;
    if (anonymous_ram) {
        target = mmap(NULL, memory->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (target != MAP_FAILED)
            (void)madvise(target, memory->size, MADV_HUGEPAGE);     /* as guest RAM asks */
    } else {
        int memfd = memfd_create("bench-plain-destination", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, (off_t)memory->size) != 0) {
            fprintf(stderr, "bench/migrate: memfd for the plain receiver: %s\n", strerror(errno));
            if (memfd >= 0)
                close(memfd);
            return 0;
        }
        target = mmap(NULL, memory->size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        close(memfd);
    }
    if (target == MAP_FAILED) {
        fprintf(stderr, "bench/migrate: mmap for the plain receiver: %s\n", strerror(errno));
        return 0;
    }
    if (prealloc && madvise(target, memory->size, MADV_POPULATE_WRITE) != 0)
        fprintf(stderr, "bench/migrate: MADV_POPULATE_WRITE: %s (measuring without)\n", strerror(errno));
    struct transfer_segment extents[PLAIN_MAX_EXTENTS];
    unsigned count = 0;
    struct guest_ram ram = guest_memory_ram(memory);
    for (uint64_t page = 0; page < memory->size / MIG_PAGE_SIZE && count < PLAIN_MAX_EXTENTS;) {
        uint64_t data, hole;
        if (guest_ram_next_data(&ram, page, &data, &hole) != 0 || data == hole)
            break;
        extents[count++] = (struct transfer_segment){ .from = memory->host + data * MIG_PAGE_SIZE,
                                                      .to = target + data * MIG_PAGE_SIZE,
                                                      .bytes = (hole - data) * MIG_PAGE_SIZE };
        page = hole;
    }
    double mibs = transfer_throughput(o->tcp, extents, count);
    munmap(target, memory->size);
    return mibs;
}

static double plain_throughput(const struct options *o, struct vm *source, bool prealloc)
{
    double samples[3];
    for (unsigned i = 0; i < 3; i++)
        samples[i] = plain_throughput_once(o, source, prealloc);
    return median_of_three(samples);
}

/* One migration between two fresh VMs running `workload_extra` after
 * "dirtier,wss=WSS" (e.g. ",count=N" for a guest that writes its working set
 * once and then idles). */
static void run_one(const struct options *o, uint64_t wss, const char *workload_extra, bool dest_prealloc,
                    uint64_t cap_mibs, enum mig_converge converge, enum dirty_log_mode mode, struct result *r)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->wss, sizeof(r->wss), "%" PRIu64 "M", wss >> 20);
    if (cap_mibs)
        snprintf(r->cap, sizeof(r->cap), "%" PRIu64, cap_mibs);
    else
        snprintf(r->cap, sizeof(r->cap), "none");
    r->converge = mig_converge_name(converge);
    r->mode = mode == DIRTY_LOG_RING && ring_reset_at_take ? "ring-take" : dirty_log_mode_name(mode);
    if (converge == MIG_CONVERGE_DIRTY_LIMIT && mode != DIRTY_LOG_RING) {
        r->skipped = true;
        snprintf(r->error, sizeof(r->error), "n/a: a bitmap has no per-vCPU dirty rates");
        return;
    }
    char workload[96];
    snprintf(workload, sizeof(workload), "dirtier,wss=%" PRIu64 "M%s", wss >> 20, workload_extra);
    struct vm *source = NULL, *dest = NULL;
    unsigned vcpus = o->vcpus ? o->vcpus : 1;
    if (make_vm_vcpus(&source, o->memory, vcpus, workload, mode, false, false) != 0 ||
        make_vm_vcpus(&dest, o->memory, vcpus, workload, mode, true, dest_prealloc) != 0) {
        snprintf(r->error, sizeof(r->error), "could not create the VMs");
        if (source)
            vm_destroy(source);
        return;
    }
    bench_wait_for_first_pass(source, vcpus, 60000);
    if (cap_mibs == 0)
        r->plain_mibs = plain_throughput(o, source, dest_prealloc);

    struct incoming in = { .vm = dest };
    in.fd = bench_vm_listen(o->tcp, PROGRAM, in.address, sizeof(in.address));
    pthread_t thread;
    pthread_create(&thread, NULL, incoming_main, &in);
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", in.address);
    params.converge = converge;
    params.max_bandwidth_mibs = cap_mibs;
    params.downtime_ms = o->downtime_ms;
    params.timeout_s = o->timeout_s;
    params.keep_alive = true;
    /* The migration's own time: no hash of the source's RAM after the ack
     * (a 256 MiB guest: ~40-50 ms of total_ms; runs before 2026-12-04's
     * source_digest include it). */
    params.source_digest = false;
    uint64_t id;
    const char *code;
    char message[256];
    uint64_t before_pages = bench_guest_pages_written(source, vcpus), before_ns = now_ns();
    struct timespec half = { .tv_sec = 0, .tv_nsec = 500000000 };
    nanosleep(&half, NULL);
    uint64_t start_pages = bench_guest_pages_written(source, vcpus), start_ns = now_ns();
    r->guest_pps_before = (double)(start_pages - before_pages) * 1e9 / (double)(start_ns - before_ns);
    if (migration_start(source, NULL, &params, &id, &code, message, sizeof(message)) != 0) {
        snprintf(r->error, sizeof(r->error), "%s: %s", code, message);
    } else {
        migration_wait_idle(source, (uint64_t)o->timeout_s * 1000 + 60000);
        struct mig_progress *p = malloc(sizeof(*p));
        migration_progress(source, p);
        r->converged = p->state == MIG_STATE_COMPLETED;
        r->total_ms = p->total_ms;
        r->downtime_ms = p->downtime_ms;
        r->iterations = p->iteration_count;
        r->bytes = p->memory.transferred;
        r->recycling_iterations = p->recycling.iterations;
        r->recycling_resets = p->recycling.harvester_resets + p->recycling.ring_full_exits;
        r->entries_per_page = p->recycling.pages_taken > 0
                                  ? (double)p->recycling.entries_harvested / (double)p->recycling.pages_taken
                                  : 0.0;
        /* The source's vCPUs stay paused after the switch-over (keep_alive):
         * the counters stopped there. */
        struct dirty_log_stats *stats = calloc(1, sizeof(*stats));
        if (stats != NULL) {
            dirty_log_get_stats(source->dirty_log, stats);
            r->bitmap_clears = stats->bitmap_clears;
            r->bitmap_cleared_pages = stats->bitmap_cleared_pages;
            r->bitmap_clear_ms = (double)stats->bitmap_clear_ns_total / 1e6;
            free(stats);
        }
        if (p->total_ms > 0)
            r->guest_pps_during = (double)(bench_guest_pages_written(source, vcpus) - start_pages) * 1000.0 /
                                  (double)p->total_ms;
        if (p->iteration_count > 0) {
            const struct mig_iteration_record *last =
                &p->iterations[(p->iteration_count - 1) % MIG_PROGRESS_MAX_ITERATIONS];
            r->final_throttle = last->throttle;
            r->throughput_mibs = p->iterations[0].bandwidth_mibs;
        }
        if (!r->converged)
            snprintf(r->error, sizeof(r->error), "%s: %s", p->error_code, p->error_message);
        free(p);
    }
    pthread_join(thread, NULL);
    if (strncmp(in.address, "unix:", 5) == 0)
        unlink(in.address + 5);
    bench_vm_stop(source);
    bench_vm_stop(dest);
}

/* ---- raw socket throughput ------------------------------------------------------ */

/* `bytes` from one cache-resident 4 MiB buffer into another: the socket's
 * ceiling (no DRAM, no destination RAM). MiB/s. */
static double raw_throughput(bool tcp, uint64_t bytes)
{
    unsigned count = (unsigned)(bytes / TRANSFER_CHUNK);
    struct transfer_segment *segments = calloc(count, sizeof(*segments));
    uint8_t *from = malloc(TRANSFER_CHUNK), *to = malloc(TRANSFER_CHUNK);
    double mibs = 0;
    if (segments != NULL && from != NULL && to != NULL) {
        memset(from, 0x5a, TRANSFER_CHUNK);
        for (unsigned i = 0; i < count; i++)
            segments[i] = (struct transfer_segment){ .from = from, .to = to, .bytes = TRANSFER_CHUNK };
        mibs = transfer_throughput(tcp, segments, count);
    }
    free(segments);
    free(from);
    free(to);
    return mibs;
}

/* Median of three 2 GiB transfers: one alone lasts well under a second
 * here, too short to be stable on a shared machine. */
static double raw_throughput_median(bool tcp)
{
    double samples[3];
    for (unsigned i = 0; i < 3; i++)
        samples[i] = raw_throughput(tcp, 2048ull << 20);
    return median_of_three(samples);
}

/* The same raw transfer while the matrix's source guest (1 vCPU, full-rate
 * dirtier over 256 MiB, no dirty tracking) runs: the CPU a migration's
 * pipeline really has on this machine, where the vCPU keeps one core busy. */
static double raw_throughput_under_load(const struct options *o)
{
    struct vm *vm = NULL;
    if (make_vm(&vm, o->memory, "dirtier,wss=256M", DIRTY_LOG_RING, false, false) != 0)
        return 0;
    bench_wait_for_first_pass(vm, 1, 60000);
    double mibs = raw_throughput_median(o->tcp);
    vm_request_shutdown(vm, 0);
    vm_wait(vm);
    vm_destroy(vm);
    return mibs;
}

/* The idle-guest migration (1 GiB written once, then idle), each time with
 * its plain move of the same bytes just before: medians of three, since
 * one migration lasts a few hundred ms here. */
static void run_idle(const struct options *o, bool dest_prealloc, struct result *out)
{
    double migration[3], plain[3];
    bool converged = true;
    for (unsigned i = 0; i < 3; i++) {
        struct result r;
        run_one(o, 1024ull << 20, ",count=262144", dest_prealloc, 0, MIG_CONVERGE_NONE, DIRTY_LOG_RING, &r);
        if (i == 0 || (!r.converged && converged))
            *out = r;
        converged = converged && r.converged;
        migration[i] = r.throughput_mibs;
        plain[i] = r.plain_mibs;
    }
    out->converged = converged;
    out->throughput_mibs = median_of_three(migration);
    out->plain_mibs = median_of_three(plain);
}

/* ---- reaction: how soon the source gives the guest back ---------------------------------- */

/* A destination that answers the hello as a real one does, swallows the
 * stream, and closes its socket when told: a process killed mid-stream. */
struct vanishing_destination {
    int listen_fd;
    _Atomic bool close_now;
    _Atomic uint64_t closed_ns;
    _Atomic bool streaming;
};

static void *vanishing_destination_main(void *argument)
{
    struct vanishing_destination *d = argument;
    char error[256];
    int fd = mig_accept(d->listen_fd, NULL, error, sizeof(error));
    if (fd < 0) {
        fprintf(stderr, "bench/migrate: %s\n", error);
        return NULL;
    }
    struct mig_io io = { .fd = fd, .stall_ms = 10000, .peer = "source" };
    uint8_t header[MIG_HEADER_SIZE], hello[MIG_HELLO_SIZE];
    if (mig_io_read(&io, header, sizeof(header), false, error, sizeof(error)) == 0 &&
        mig_io_read(&io, hello, sizeof(hello), false, error, sizeof(error)) == 0) {
        uint8_t frame[MIG_HEADER_SIZE + MIG_HELLO_SIZE];
        size_t length = mig_frame_encode(frame, MIG_FRAME_HELLO_ACK, 0, hello, sizeof(hello));
        if (mig_io_write(&io, frame, length, error, sizeof(error)) == 0) {
            static uint8_t sink[1 << 20];
            while (!atomic_load_explicit(&d->close_now, memory_order_acquire)) {
                if (mig_io_poll_readable(fd, 1) != 1)
                    continue;
                ssize_t got = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
                if (got == 0)
                    break;
                if (got > 0)
                    atomic_store_explicit(&d->streaming, true, memory_order_release);
            }
        }
    }
    atomic_store_explicit(&d->closed_ns, now_ns(), memory_order_release);
    close(fd);
    return NULL;
}

static uint64_t pages_written(struct vm *vm)
{
    struct ringvm_vcpu_stats stats;
    vm_read_guest_stats(vm, 0, &stats);
    return stats.pages_written;
}

/* Nanoseconds from `since` until the guest's write counter moves. */
static uint64_t until_guest_writes(struct vm *vm, uint64_t since)
{
    uint64_t before = pages_written(vm);
    while (pages_written(vm) == before && now_ns() - since < 10000000000ull)
        ;
    return now_ns() - since;
}

static bool migration_in_phase(struct vm *vm, const char *phase)
{
    struct mig_progress *p = malloc(sizeof(*p));
    bool there = p != NULL && migration_progress(vm, p) && p->state == MIG_STATE_ACTIVE && strcmp(p->phase, phase) == 0;
    free(p);
    return there;
}

static int start_endless_migration(struct vm *source, const char *address)
{
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", address);
    params.converge = MIG_CONVERGE_NONE;
    params.downtime_ms = 1;         /* never converges: only the event under test ends it */
    params.max_bandwidth_mibs = 64;
    params.verify_digest = false;
    params.timeout_s = 600;
    uint64_t id;
    const char *code;
    char message[256];
    if (migration_start(source, NULL, &params, &id, &code, message, sizeof(message)) != 0) {
        fprintf(stderr, "bench/migrate: migration.start: %s: %s\n", code, message);
        return -1;
    }
    return 0;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

struct reaction {
    const char *name;
    uint64_t *ns;
    unsigned count;
    uint64_t median, max;
};

static void reaction_summarise(struct reaction *r)
{
    qsort(r->ns, r->count, sizeof(*r->ns), compare_u64);
    r->median = r->count ? r->ns[r->count / 2] : 0;
    r->max = r->count ? r->ns[r->count - 1] : 0;
}

static int run_reaction(const struct options *o)
{
    unsigned runs = o->reaction_runs;
    struct vm *source = NULL;
    if (make_vm(&source, 256ull << 20, "dirtier,wss=16M", DIRTY_LOG_RING, false, false) != 0)
        return 1;
    bench_wait_for_first_pass(source, 1, 60000);
    struct reaction r[5] = {
        { .name = "plain_resume_to_guest_writes" }, { .name = "cancel_to_ended" },
        { .name = "cancel_to_guest_writes" },       { .name = "destination_close_to_ended" },
        { .name = "destination_close_to_guest_writes" },
    };
    for (unsigned i = 0; i < 5; i++)
        r[i].ns = calloc(runs, sizeof(uint64_t));
    for (unsigned run = 0; run < runs; run++) {
        /* The baseline: the same guest paused and resumed without a migration. */
        if (vm_pause(source) == 0) {
            uint64_t t0 = now_ns();
            vm_resume(source);
            r[0].ns[r[0].count++] = until_guest_writes(source, t0);
        }

        /* migration.cancel in the iterations, a real destination. */
        struct vm *dest = NULL;
        if (make_vm(&dest, 256ull << 20, "dirtier,wss=16M", DIRTY_LOG_RING, true, false) != 0)
            break;
        struct incoming in = { .vm = dest };
        in.fd = bench_vm_listen(o->tcp, PROGRAM, in.address, sizeof(in.address));
        pthread_t thread;
        pthread_create(&thread, NULL, incoming_main, &in);
        if (start_endless_migration(source, in.address) == 0) {
            while (!migration_in_phase(source, "iterating"))
                poll(NULL, 0, 1);
            const char *code;
            char message[256];
            uint64_t t0 = now_ns();
            migration_cancel(source, &code, message, sizeof(message));
            migration_wait_idle(source, 60000);
            r[1].ns[r[1].count++] = now_ns() - t0;
            r[2].ns[r[2].count++] = until_guest_writes(source, t0);
            migration_release(source);
        }
        pthread_join(thread, NULL);
        if (strncmp(in.address, "unix:", 5) == 0)
            unlink(in.address + 5);
        bench_vm_stop(dest);

        /* The destination's socket closes mid-stream. */
        struct vanishing_destination gone = { 0 };
        char address[128];
        gone.listen_fd = bench_vm_listen(o->tcp, PROGRAM, address, sizeof(address));
        pthread_create(&thread, NULL, vanishing_destination_main, &gone);
        if (start_endless_migration(source, address) == 0) {
            while (!atomic_load_explicit(&gone.streaming, memory_order_acquire) ||
                   (!migration_in_phase(source, "bulk") && !migration_in_phase(source, "iterating")))
                poll(NULL, 0, 1);
            atomic_store_explicit(&gone.close_now, true, memory_order_release);
            pthread_join(thread, NULL);
            uint64_t t0 = atomic_load_explicit(&gone.closed_ns, memory_order_acquire);
            migration_wait_idle(source, 60000);
            r[3].ns[r[3].count++] = now_ns() - t0;
            r[4].ns[r[4].count++] = until_guest_writes(source, t0);
            migration_release(source);
        } else {
            atomic_store_explicit(&gone.close_now, true, memory_order_release);
            pthread_join(thread, NULL);
        }
        close(gone.listen_fd);
        if (strncmp(address, "unix:", 5) == 0)
            unlink(address + 5);
    }
    for (unsigned i = 0; i < 5; i++)
        reaction_summarise(&r[i]);
    double base = r[0].median > 0 ? (double)r[0].median : 1.0;
    if (o->json) {
        json_t *root = json_pack("{s:s, s:I}", "transport", o->tcp ? "tcp" : "unix", "runs", (json_int_t)runs);
        for (unsigned i = 0; i < 5; i++)
            json_object_set_new(root, r[i].name,
                                json_pack("{s:I, s:f, s:f, s:f}", "count", (json_int_t)r[i].count, "median_ms",
                                          (double)r[i].median / 1e6, "max_ms", (double)r[i].max / 1e6,
                                          "median_of_plain_resume", (double)r[i].median / base));
        json_object_set_new(root, "ram", json_string(anonymous_ram ? "anonymous" : "memfd"));
        char *text = json_dumps(root, JSON_INDENT(2));
        fprintf(stdout, "%s\n", text);
        free(text);
        json_decref(root);
    } else {
        fprintf(stdout, "reaction over %s, %u runs (medians and maxima; ratio = median / plain resume's median)\n",
                o->tcp ? "tcp" : "unix", runs);
        for (unsigned i = 0; i < 5; i++)
            fprintf(stdout, "  %-36s %3u runs  median %9.3f ms  max %9.3f ms  ratio %7.1f\n", r[i].name, r[i].count,
                    (double)r[i].median / 1e6, (double)r[i].max / 1e6, (double)r[i].median / base);
    }
    for (unsigned i = 0; i < 5; i++)
        free(r[i].ns);
    vm_request_shutdown(source, 0);
    vm_wait(source);
    vm_destroy(source);
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: migrate [--quick] [--json] [--memory SIZE] [--timeout S] [--downtime-ms N]\n"
            "               [--transport unix|tcp] [--filter WSS/CAP/CONVERGE/LOG] [--caps LIST]\n"
            "               [--baselines] [--dest-prealloc] [--vcpus N]\n"
            "               [--bitmap-clear-chunk SIZE] [--wss LIST] [--ring-take] [--pattern P]\n"
            "               [--ram memfd|anonymous]\n"
            "       migrate --reaction N [--json] [--transport unix|tcp]\n"
            "  --quick      256 MiB working set, caps none and 125 MiB/s only\n"
            "  --json       one JSON object on stdout instead of the tables\n"
            "  --memory SIZE  guest RAM, 16M to 1T, a multiple of 4K (default 1536M)\n"
            "  --timeout S  the migrations' timeout_s, 1 to 86400 (default 30)\n"
            "  --downtime-ms N  the migrations' downtime limit, 1 to 3600000 (default 300)\n"
            "  --transport  unix (default) or tcp (127.0.0.1)\n"
            "  --caps       bandwidth caps to run, none or MiB/s from 1 to %u, e.g. none,1024\n"
            "               (default none,1024,125)\n"
            "  --baselines  only the throughput baselines (raw socket idle and beside the guest,\n"
            "               idle-guest migration with its plain move of the same bytes), no matrix\n"
            "  --dest-prealloc  matrix destinations run with --prealloc (RAM faulted in before\n"
            "               the migration; the plain moves then go into preallocated RAM too;\n"
            "               the baselines measure both)\n"
            "  --vcpus N    the matrix's guests get N vCPUs, 1 to 8 (default 1); the dirtier's\n"
            "               working set is shared by them\n"
            "  --bitmap-clear-chunk SIZE  the VMs' --bitmap-clear-chunk (bitmap mode): a multiple of\n"
            "               256K from 256K to 1G\n"
            "  --ring-take  also a ring-take row per cell: ring mode with --ring-reset take (every\n"
            "               page re-protected at each take), the baseline of late reset\n"
            "  --pattern P  the matrix dirtier's write pattern: seq (default), random or hot\n"
            "  --ram R      every VM's guest RAM (and the plain move's target): memfd (default) or\n"
            "               anonymous (ringvm --ram anonymous)\n"
            "  --wss LIST   the matrix's working sets, whole MiB from 1M to 1T, e.g. 16M,64M,256M,1G\n"
            "               (default 256M,1G);\n"
            "               column recycle: iterations in which the dirty rings recycled / harvester\n"
            "               resets + ring-full exits (issue 15, item 4); ent/page: ring entries\n"
            "               harvested per page taken (write-protect faults per page per pass)\n"
            "  --filter     run only the cells whose name starts with this (e.g. 256M/none/auto);\n"
            "               skips the throughput baselines (uncapped cells keep their plain move)\n"
            "Uncapped cells first move their guest's RAM plainly (median of 3) and report\n"
            "iteration 0 as a share of it (of_plain; the issue's target is >= 80 %%).\n"
            "  --reaction N  instead of the matrix: N times each (1 to 1000), how soon the guest writes\n"
            "               again after migration.cancel and after the destination's socket closes,\n"
            "               beside a plain vm_pause + vm_resume of the same guest\n"
            "  -h, --help   this text\n"
            "Without /dev/kvm it says so on stderr and exits 0.\n",
            MAX_CAP_MIBS);
}

int main(int argc, char **argv)
{
    struct options o = { .memory = 1536ull << 20, .timeout_s = 30, .downtime_ms = 300 };
    static const struct option long_options[] = {
        {"quick", no_argument, NULL, 'q'},      {"json", no_argument, NULL, 'j'},
        {"memory", required_argument, NULL, 'm'}, {"timeout", required_argument, NULL, 't'},
        {"downtime-ms", required_argument, NULL, 'd'}, {"transport", required_argument, NULL, 'T'},
        {"filter", required_argument, NULL, 'f'}, {"caps", required_argument, NULL, 'c'},
        {"ring-take", no_argument, NULL, 'K'}, {"pattern", required_argument, NULL, 'P'}, {"baselines", no_argument, NULL, 'b'}, {"dest-prealloc", no_argument, NULL, 'p'},
        {"reaction", required_argument, NULL, 'r'}, {"vcpus", required_argument, NULL, 'v'},
        {"bitmap-clear-chunk", required_argument, NULL, 'C'}, {"wss", required_argument, NULL, 'w'},
        {"ram", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'}, {0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        switch (c) {
        case 'q': o.quick = true; break;
        case 'j': o.json = true; break;
        case 'm':
            /* ringvm's own --memory range */
            if (bench_option_size(PROGRAM, "--memory", optarg, 16ULL << 20, 1ULL << 40, 4096, &o.memory) != 0)
                return 2;
            break;
        case 't':
            if (bench_option_unsigned(PROGRAM, "--timeout", optarg, 1, 86400, &o.timeout_s) != 0)
                return 2;
            break;
        case 'd':
            /* migration.start's downtime_ms range */
            if (bench_option_unsigned(PROGRAM, "--downtime-ms", optarg, 1, 3600000, &o.downtime_ms) != 0)
                return 2;
            break;
        case 'T':
            if (strcmp(optarg, "tcp") != 0 && strcmp(optarg, "unix") != 0) {
                fprintf(stderr, PROGRAM ": --transport '%s': expected unix or tcp\n", optarg);
                return 2;
            }
            o.tcp = strcmp(optarg, "tcp") == 0;
            break;
        case 'f': o.filter = optarg; break;
        case 'b': o.baselines_only = true; break;
        case 'p': o.dest_prealloc = true; break;
        case 'r':
            if (bench_option_unsigned(PROGRAM, "--reaction", optarg, 1, 1000, &o.reaction_runs) != 0)
                return 2;
            break;
        case 'v':
            if (bench_option_unsigned(PROGRAM, "--vcpus", optarg, 1, 8, &o.vcpus) != 0)
                return 2;
            break;
        case 'C':
            /* ringvm's --bitmap-clear-chunk range: KVM_CLEAR_DIRTY_LOG clears 64 pages at a time */
            if (bench_option_size(PROGRAM, "--bitmap-clear-chunk", optarg, DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK,
                                  DIRTY_LOG_MAX_BITMAP_CLEAR_CHUNK, DIRTY_LOG_MIN_BITMAP_CLEAR_CHUNK,
                                  &o.bitmap_clear_chunk) != 0)
                return 2;
            bitmap_clear_chunk = o.bitmap_clear_chunk;
            break;
        case 'K': o.ring_take = true; break;
        case 'R':
            if (strcmp(optarg, "memfd") != 0 && strcmp(optarg, "anonymous") != 0) {
                fprintf(stderr, PROGRAM ": --ram '%s': expected memfd or anonymous\n", optarg);
                return 2;
            }
            anonymous_ram = optarg[0] == 'a';
            break;
        case 'P':
            if (strcmp(optarg, "seq") != 0 && strcmp(optarg, "random") != 0 && strcmp(optarg, "hot") != 0) {
                fprintf(stderr, PROGRAM ": --pattern '%s': expected seq, random or hot\n", optarg);
                return 2;
            }
            o.pattern = optarg;
            break;
        case 'c':
            if (bench_option_caps(PROGRAM, "--caps", optarg, MAX_CAP_MIBS, o.caps,
                                  (unsigned)(sizeof(o.caps) / sizeof(o.caps[0])), &o.cap_count) != 0)
                return 2;
            break;
        case 'w':
            if (bench_option_working_sets(PROGRAM, "--wss", optarg, o.wss,
                                          (unsigned)(sizeof(o.wss) / sizeof(o.wss[0])), &o.wss_count) != 0)
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;
    if (access("/dev/kvm", R_OK | W_OK) != 0) {
        fprintf(stderr, "bench/migrate: SKIP: /dev/kvm unavailable\n");
        return 0;
    }
    if (o.reaction_runs > 0)
        return run_reaction(&o);
    const uint64_t wss_default[] = { 256ull << 20, 1024ull << 20 };
    const uint64_t *wss_full = o.wss_count > 0 ? o.wss : wss_default;
    const uint64_t caps_full[] = { 0, 1024, 125 };
    const uint64_t caps_quick[] = { 0, 125 };
    const enum mig_converge converges[] = { MIG_CONVERGE_NONE, MIG_CONVERGE_AUTO, MIG_CONVERGE_DIRTY_LIMIT };
    /* ring (late reset), ring-take (--ring-reset take), bitmap */
    const enum dirty_log_mode modes[] = { DIRTY_LOG_RING, DIRTY_LOG_RING, DIRTY_LOG_BITMAP };
    const bool modes_at_take[] = { false, true, false };
    const char *const mode_names[] = { "ring", "ring-take", "bitmap" };
    unsigned wss_count = o.baselines_only ? 0 : o.wss_count > 0 ? o.wss_count : o.quick ? 1 : 2;
    unsigned cap_count = o.quick ? 2 : 3;
    const uint64_t *caps = o.quick ? caps_quick : caps_full;
    if (o.cap_count > 0) {
        caps = o.caps;
        cap_count = o.cap_count;
    }

    /* Throughput baselines, all in this run: the raw socket alone, the raw
     * socket beside the running guest, and the migration pipeline with the
     * guest idle (its working set written once), which separates the
     * pipeline's own cost from the CPU the full-rate vCPU takes away. */
    const char *transport = o.tcp ? "tcp" : "unix";
    double raw = 0, raw_loaded = 0;
    struct result idle = { 0 }, idle_prealloc = { 0 };
    if (o.filter == NULL) {
        raw = raw_throughput_median(o.tcp);
        raw_loaded = raw_throughput_under_load(&o);
        run_idle(&o, false, &idle);
        run_idle(&o, true, &idle_prealloc);
    }
    if (!o.json && o.filter == NULL) {
        fprintf(stdout, "raw %s socket (4 MiB sendmsg, median of 3 x 2 GiB), machine otherwise idle: %6.0f MiB/s\n",
                transport, raw);
        fprintf(stdout, "raw %s socket, the same, beside the full-rate 1-vCPU guest:                %6.0f MiB/s\n",
                transport, raw_loaded);
        fprintf(stdout, "migration iteration 0, idle guest (1 GiB written once; median of 3):      %6.0f MiB/s"
                " = %.0f %% of raw idle%s%s\n",
                idle.throughput_mibs, raw > 0 ? 100.0 * idle.throughput_mibs / raw : 0.0,
                idle.converged ? "" : "; FAILED: ", idle.converged ? "" : idle.error);
        fprintf(stdout, "  the same bytes moved plainly, guest RAM to fresh RAM:                    %6.0f MiB/s"
                " -> migration = %.0f %% of it\n",
                idle.plain_mibs, idle.plain_mibs > 0 ? 100.0 * idle.throughput_mibs / idle.plain_mibs : 0.0);
        fprintf(stdout, "the same, destination RAM preallocated (ringvm --incoming ... --prealloc):  %6.0f MiB/s"
                " = %.0f %% of raw idle%s%s\n",
                idle_prealloc.throughput_mibs, raw > 0 ? 100.0 * idle_prealloc.throughput_mibs / raw : 0.0,
                idle_prealloc.converged ? "" : "; FAILED: ", idle_prealloc.converged ? "" : idle_prealloc.error);
        fprintf(stdout, "  the same bytes moved plainly, guest RAM to preallocated RAM:             %6.0f MiB/s"
                " -> migration = %.0f %% of it\n\n",
                idle_prealloc.plain_mibs,
                idle_prealloc.plain_mibs > 0 ? 100.0 * idle_prealloc.throughput_mibs / idle_prealloc.plain_mibs : 0.0);
    }
    if (!o.json && !o.baselines_only)
        fprintf(stdout, "%-5s %-5s %-11s %-6s | %-9s %8s %9s %5s %8s %9s %9s %9s %11s %11s %9s %8s\n", "wss", "cap",
                "converge", "log", "converged", "total_ms", "downtime", "iters", "throttle", "sent_MiB",
                "iter0_MiBs", "of_plain", "guest_pps", "pps_before", "recycle", "ent/page");
    json_t *runs = json_array();
    unsigned converged = 0, within = 0;
    double uncapped_min = 0, uncapped_max = 0;     /* iteration 0 MiB/s of the uncapped cells */
    double ratio_min = 0, ratio_max = 0;           /* ... divided by the plain move just before each */
    for (unsigned w = 0; w < wss_count; w++)
        for (unsigned b = 0; b < cap_count; b++)
            for (unsigned v = 0; v < 3; v++)
                for (unsigned m = 0; m < 3; m++) {
                    struct result r;
                    if (modes_at_take[m] && !o.ring_take)
                        continue;
                    if (o.filter != NULL) {
                        char name[96];
                        snprintf(name, sizeof(name), "%" PRIu64 "M/%s/%s/%s", wss_full[w] >> 20,
                                 caps[b] ? "" : "none", mig_converge_name(converges[v]), mode_names[m]);
                        if (caps[b]) {
                            snprintf(name, sizeof(name), "%" PRIu64 "M/%" PRIu64 "/%s/%s", wss_full[w] >> 20, caps[b],
                                     mig_converge_name(converges[v]), mode_names[m]);
                        }
                        if (strncmp(name, o.filter, strlen(o.filter)) != 0)
                            continue;
                    }
                    ring_reset_at_take = modes_at_take[m];
                    char extra[48] = "";
                    if (o.pattern != NULL)
                        snprintf(extra, sizeof(extra), ",pattern=%s", o.pattern);
                    run_one(&o, wss_full[w], extra, o.dest_prealloc, caps[b], converges[v], modes[m], &r);
                    ring_reset_at_take = false;
                    if (!r.skipped && caps[b] == 0 && r.iterations > 0) {
                        if (uncapped_min == 0 || r.throughput_mibs < uncapped_min)
                            uncapped_min = r.throughput_mibs;
                        if (r.throughput_mibs > uncapped_max)
                            uncapped_max = r.throughput_mibs;
                        double ratio = r.plain_mibs > 0 ? r.throughput_mibs / r.plain_mibs : 0;
                        if (ratio_min == 0 || ratio < ratio_min)
                            ratio_min = ratio;
                        if (ratio > ratio_max)
                            ratio_max = ratio;
                    }
                    if (r.converged) {
                        converged++;
                        within += r.downtime_ms <= o.downtime_ms;
                    }
                    if (!o.json) {
                        if (r.skipped)
                            fprintf(stdout, "%-5s %-5s %-11s %-6s | %s\n", r.wss, r.cap, r.converge, r.mode, r.error);
                        else
                        {
                            char of_plain[16] = "-";
                            if (r.plain_mibs > 0)
                                snprintf(of_plain, sizeof(of_plain), "%.0f%%", 100.0 * r.throughput_mibs / r.plain_mibs);
                            char recycle[32];
                            snprintf(recycle, sizeof(recycle), "%" PRIu64 "/%" PRIu64, r.recycling_iterations,
                                     r.recycling_resets);
                            fprintf(stdout, "%-5s %-5s %-11s %-6s | %-9s %8" PRIu64 " %9" PRIu64 " %5" PRIu64
                                    " %7d%% %9.0f %9.1f %9s %11.0f %11.0f %9s %8.2f %s\n", r.wss, r.cap, r.converge,
                                    r.mode, r.converged ? "yes" : "no", r.total_ms, r.downtime_ms, r.iterations,
                                    r.final_throttle, (double)r.bytes / 1048576.0, r.throughput_mibs, of_plain,
                                    r.guest_pps_during, r.guest_pps_before, recycle, r.entries_per_page,
                                    r.converged ? "" : r.error);
                            if (modes[m] == DIRTY_LOG_BITMAP)
                                fprintf(stdout, "      bitmap: %" PRIu64 " KVM_CLEAR_DIRTY_LOG calls, %" PRIu64
                                        " pages cleared, %.1f ms in them\n", r.bitmap_clears,
                                        r.bitmap_cleared_pages, r.bitmap_clear_ms);
                        }
                        fflush(stdout);
                    }
                    json_array_append_new(
                        runs, json_pack("{s:s, s:s, s:s, s:s, s:b, s:b, s:I, s:I, s:I, s:i, s:I, s:f, s:f, s:f, s:f, s:I, s:I, s:f, s:s}",
                                        "wss", r.wss, "cap_mibs", r.cap, "converge", r.converge, "dirty_log", r.mode,
                                        "skipped", r.skipped, "converged", r.converged, "total_ms",
                                        (json_int_t)r.total_ms, "downtime_ms", (json_int_t)r.downtime_ms,
                                        "iterations", (json_int_t)r.iterations, "final_throttle", r.final_throttle,
                                        "bytes_sent", (json_int_t)r.bytes, "iteration0_mibs", r.throughput_mibs,
                                        "plain_same_bytes_mibs", r.plain_mibs, "guest_pages_per_s_during",
                                        r.guest_pps_during, "guest_pages_per_s_before", r.guest_pps_before,
                                        "bitmap_clears", (json_int_t)r.bitmap_clears, "bitmap_cleared_pages",
                                        (json_int_t)r.bitmap_cleared_pages, "bitmap_clear_ms", r.bitmap_clear_ms,
                                        "error", r.error));
                    json_t *last = json_array_get(runs, json_array_size(runs) - 1);
                    if (last != NULL) {
                        json_object_set_new(last, "recycling_iterations",
                                            json_integer((json_int_t)r.recycling_iterations));
                        json_object_set_new(last, "recycling_resets", json_integer((json_int_t)r.recycling_resets));
                        json_object_set_new(last, "ring_entries_per_page_taken", json_real(r.entries_per_page));
                    }
                }
    if (o.json) {
        json_t *root = json_pack("{s:s, s:I, s:I, s:b, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:o, s:I, s:I}",
                                 "transport", transport,
                                 "memory_bytes", (json_int_t)o.memory, "downtime_limit_ms",
                                 (json_int_t)o.downtime_ms, "dest_prealloc", o.dest_prealloc, "raw_socket_mibs", raw, "raw_socket_under_load_mibs",
                                 raw_loaded, "idle_guest_iteration0_mibs", idle.throughput_mibs,
                                 "idle_guest_dest_prealloc_iteration0_mibs", idle_prealloc.throughput_mibs,
                                 "idle_guest_plain_same_bytes_mibs", idle.plain_mibs,
                                 "idle_guest_dest_prealloc_plain_same_bytes_mibs", idle_prealloc.plain_mibs,
                                 "uncapped_of_plain_min", ratio_min, "uncapped_of_plain_max", ratio_max,
                                 "uncapped_iteration0_min_mibs", uncapped_min, "uncapped_iteration0_max_mibs",
                                 uncapped_max, "runs", runs, "converged", (json_int_t)converged,
                                 "within_downtime_limit", (json_int_t)within);
        json_object_set_new(root, "ram", json_string(anonymous_ram ? "anonymous" : "memfd"));
        char *text = json_dumps(root, JSON_INDENT(2));
        fprintf(stdout, "%s\n", text);
        free(text);
        json_decref(root);
    } else if (!o.baselines_only) {
        fprintf(stdout, "\nconverged runs within the %u ms downtime limit: %u of %u\n", o.downtime_ms, within,
                converged);
        if (uncapped_max > 0 && raw > 0 && raw_loaded > 0)
            fprintf(stdout,
                    "uncapped iteration 0, full-rate guest: %.0f-%.0f MiB/s = %.0f-%.0f %% of raw beside the guest, "
                    "%.0f-%.0f %% of raw idle\n",
                    uncapped_min, uncapped_max, 100.0 * uncapped_min / raw_loaded, 100.0 * uncapped_max / raw_loaded,
                    100.0 * uncapped_min / raw, 100.0 * uncapped_max / raw);
        if (ratio_max > 0)
            fprintf(stdout, "uncapped iteration 0 against the same bytes moved plainly just before it (target >= 80 %%): "
                    "%.0f-%.0f %%\n", 100.0 * ratio_min, 100.0 * ratio_max);
    }
    if (!o.json)
        json_decref(runs);
    return 0;
}
