/*
 * bench/postcopy: post-copy and hybrid migration beside pre-copy (issue
 * 17), two VMs in one process (source and destination each with their own
 * KVM VM and RAM), in one run so the machine's noise hits all three alike.
 *
 *   build/bench/postcopy [--quick] [--json] [--memory SIZE] [--wss LIST] [--caps LIST]
 *                        [--transport unix|tcp] [--timeout S] [--downtime-ms N]
 *   build/bench/postcopy --help       (every option, with its range and default)
 *
 * Cells: working set x bandwidth cap x transport (default: a 1 GiB working
 * set in a 1.5 GiB guest, caps 125 MiB/s and none, unix; --quick: 256 MiB
 * in a 512 MiB guest, 125 MiB/s only; --transport tcp: 127.0.0.1). The
 * guest has 2 vCPUs running the full-rate dirtier; its wss= is split
 * evenly over them (vmm/bootinfo.c), so wss=1G is 512 MiB per vCPU. Each
 * cell migrates three fresh guests:
 *   pre-copy   converge dirty-limit, ring dirty log (today's best pre-copy)
 *   post-copy  switch over right after the handshake, RAM pulled on first
 *              touch and pushed in the background
 *   hybrid     pre-copy with converge none, switching to post-copy at
 *              postcopy_after=auto (the first pass after the bulk pass whose
 *              dirty rate reaches the link's bandwidth)
 * and with --fifo N a fourth:
 *   post-copy fifo  post-copy with the fault-service threads (pc-fault,
 *              pc-urgent, pc-serve) under SCHED_FIFO N, as ringvm
 *              --postcopy-fifo N runs them (migration/postcopy_priority.h)
 *
 * Reported per run: completed, total ms (source: start to the destination's
 * ack, i.e. every page on the destination), downtime (source pause ->
 * destination resume), MiB sent on the main stream and on the urgent
 * channel (requested pages x 4 KiB), the ideal time = the guest RAM that
 * holds data (the source memfd's data extents just before the start: what
 * the guest wrote, plus its image and tables) / the cap, total / ideal
 * (capped cells only), total / the same cell's pre-copy total; the guest's
 * own pages/s (the dirtier's counters in guest RAM) over 0.5 s just before
 * the start, on the source while it still runs (start -> switch-over, or the
 * whole migration for pre-copy), on the destination during post-copy (from
 * the moment its progress says post-copy until the source reports the
 * migration done) and on the destination for 0.5 s after the end; and the
 * destination's post-copy counters: faults, blocktime (all vCPUs), fault
 * service latency p50/p99/max (fault read -> page placed, while the
 * background stream runs). The destination's guest counters are read only
 * once its progress says post-copy: before that they are not the guest's
 * yet, and a read fault on a memfd hole allocates the page, which the
 * source may be declaring missing (the switch would then find a page
 * present that should not be). The benchmark's own first read after the
 * switch is served like a vCPU's touch: when the counters' page has not
 * arrived yet, that is one of the faults counted.
 *
 * Post-copy needs userfaultfd on the destination: without it the reason is
 * printed, the post-copy and hybrid runs are marked skipped, pre-copy still
 * runs, and the exit status is 0. A migration that does not end within
 * timeout + 60 s is reported with both sides' progress, the remaining cells
 * are not run, and the exit status is 1.
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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/lib/bench_options.h"
#include "bench/lib/bench_vm.h"
#include "migration/migration.h"
#include "migration/postcopy_destination.h"
#include "migration/postcopy_priority.h"
#include "migration/progress.h"
#include "migration/transport.h"
#include "vmm/size.h"
#include "vmm/vm.h"

#define PROGRAM "bench/postcopy"
#define VCPUS 2u
#define POLL_NS 5000000ull              /* progress polled every 5 ms */
#define SAMPLE_NS 500000000ull          /* the before / after guest-rate windows */
#define MIN_PHASE_MS 200u               /* a shorter pre-copy phase gives no meaningful rate */
/* migration.start's largest max_bandwidth_mibs (api/commands_migration.c) */
#define MAX_CAP_MIBS (1u << 30)

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec t = { .tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull) };
    nanosleep(&t, NULL);
}

struct options {
    bool quick, json, tcp;
    uint64_t memory;        /* 0 = the default for the working sets */
    unsigned timeout_s;
    unsigned downtime_ms;
    uint64_t wss[8];
    unsigned wss_count;
    uint64_t caps[8];       /* MiB/s, 0 = none */
    unsigned cap_count;
    unsigned fifo;          /* --fifo N: also post-copy with the fault service under SCHED_FIFO N */
};

/* ---- the three ways of migrating ------------------------------------------------------- */

/* RUN_POSTCOPY_FIFO: post-copy with the fault-service threads under
 * SCHED_FIFO (ringvm --postcopy-fifo), only with --fifo N. */
enum run_kind { RUN_PRECOPY, RUN_POSTCOPY, RUN_HYBRID, RUN_POSTCOPY_FIFO, RUN_KINDS };

static const char *run_kind_name(enum run_kind kind)
{
    switch (kind) {
    case RUN_PRECOPY: return "precopy-dirty-limit";
    case RUN_POSTCOPY: return "postcopy";
    case RUN_HYBRID: return "hybrid-auto";
    case RUN_POSTCOPY_FIFO: return "postcopy-fifo";
    default: return "?";
    }
}

static const char *run_kind_short(enum run_kind kind)
{
    switch (kind) {
    case RUN_PRECOPY: return "pre/dlimit";
    case RUN_POSTCOPY: return "postcopy";
    case RUN_HYBRID: return "hybrid/auto";
    case RUN_POSTCOPY_FIFO: return "pc/fifo";
    default: return "?";
    }
}

struct result {
    char wss[16];
    char cap[24];
    uint64_t cap_mibs;
    const char *transport;
    enum run_kind kind;
    bool skipped;
    bool not_asked;             /* postcopy-fifo without --fifo: not run, not reported */
    bool completed;
    bool hung;                  /* did not end within timeout + 60 s */
    bool destination_failed;    /* migration_incoming_run_fd returned -1 */
    uint64_t total_ms, downtime_us;
    uint64_t iterations;
    int final_throttle;
    uint64_t bytes_sent;        /* the main stream (source's memory.transferred) */
    uint64_t data_bytes;        /* source RAM holding data just before the start */
    double ideal_ms;            /* data_bytes / cap; 0 uncapped */
    double guest_pps_before;    /* source, 0.5 s just before the start */
    double guest_pps_precopy;   /* source, start -> switch-over (pre-copy: -> end) */
    uint64_t precopy_phase_ms;  /* the window of guest_pps_precopy */
    double guest_pps_postcopy;  /* destination, post-copy seen -> source done */
    uint64_t postcopy_window_ms;
    double guest_pps_after;     /* destination, 0.5 s after the end */
    /* post-copy, source side */
    bool postcopy_active;
    uint64_t switched_at_ms;
    uint64_t pages_total, pages_pushed, pages_served, requests, requests_refused, pages_withdrawn, pages_sent_twice,
        pages_left_to_stream;
    /* post-copy, destination side */
    uint64_t pages_asked, pages_received, pages_zero, faults, duplicate_faults;
    uint64_t blocktime_ns, vcpu_faults[VCPUS], vcpu_blocktime_ns[VCPUS];
    uint64_t latency_count, latency_p50_ns, latency_p99_ns, latency_max_ns;
    char error[2048];           /* room for both sides' progress of a stuck run */
};

static int make_vm(struct vm **out, uint64_t memory, const char *workload, bool incoming)
{
    struct bench_vm_options options = { .memory = memory, .vcpus = VCPUS, .workload = workload,
                                        .dirty_log = DIRTY_LOG_RING, .incoming = incoming };
    return bench_vm_start(out, &options, PROGRAM);
}

/* Bytes of guest RAM that hold data (the memfd's data extents; holes are
 * pages the guest never wrote, which every mode sends as zero runs). */
static uint64_t ram_data_bytes(const struct vm *vm)
{
    const struct guest_memory *memory = &vm->memory;
    uint64_t total = 0;
    for (off_t at = 0; at < (off_t)memory->size;) {
        off_t data = lseek(memory->memfd, at, SEEK_DATA);
        if (data < 0)
            break;
        off_t hole = lseek(memory->memfd, data, SEEK_HOLE);
        if (hole < 0 || hole > (off_t)memory->size)
            hole = (off_t)memory->size;
        total += (uint64_t)(hole - data);
        at = hole;
    }
    return total;
}

struct incoming {
    struct vm *vm;
    int fd;
    char address[128];
    int result;
    _Atomic bool done;
};

static void *incoming_main(void *argument)
{
    struct incoming *in = argument;
    in->result = migration_incoming_run_fd(in->vm, in->fd, in->address, NULL);
    atomic_store_explicit(&in->done, true, memory_order_release);
    return NULL;
}

/* Both sides' progress, for a run that did not end (stderr and error). */
static void describe_stuck(struct vm *source, struct vm *dest, struct result *r)
{
    struct mig_progress *p = malloc(sizeof(*p)), *q = malloc(sizeof(*q));
    if (p == NULL || q == NULL) {
        snprintf(r->error, sizeof(r->error), "did not end; out of memory for its progress");
        free(p);
        free(q);
        return;
    }
    bool have_source = migration_progress(source, p), have_dest = migration_progress(dest, q);
    snprintf(r->error, sizeof(r->error),
             "did not end within the timeout + 60 s: source %s/%s (pushed %" PRIu64 ", served %" PRIu64
             ", requests %" PRIu64 ", remaining %" PRIu64 " MiB, %s%s%s); destination %s/%s (received %" PRIu64
             " of %" PRIu64 ", asked %" PRIu64 ", faults %" PRIu64 ", %s%s%s)",
             have_source ? mig_state_name(p->state) : "none", have_source ? p->phase : "-",
             have_source ? p->postcopy.pages_pushed : 0, have_source ? p->postcopy.pages_requested : 0,
             have_source ? p->postcopy.requests : 0, have_source ? p->memory.remaining >> 20 : 0,
             have_source ? p->error_code : "", have_source && p->error_code[0] ? ": " : "",
             have_source ? p->error_message : "", have_dest ? mig_state_name(q->state) : "none",
             have_dest ? q->phase : "-", have_dest ? q->postcopy.pages_received : 0,
             have_dest ? q->postcopy.pages_total : 0, have_dest ? q->postcopy.pages_requested : 0,
             have_dest ? q->postcopy.faults : 0, have_dest ? q->error_code : "",
             have_dest && q->error_code[0] ? ": " : "", have_dest ? q->error_message : "");
    fprintf(stderr, PROGRAM ": %s %s/%s: %s\n", run_kind_name(r->kind), r->wss, r->cap, r->error);
    free(p);
    free(q);
}

/* One migration of a fresh 2-vCPU full-rate guest. A hung run leaves its
 * VMs and threads as they are (r->hung): nothing here can end them. */
static void run_one(const struct options *o, uint64_t memory, uint64_t wss, uint64_t cap_mibs, enum run_kind kind,
                    struct result *r)
{
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->cap_mibs = cap_mibs;
    r->transport = o->tcp ? "tcp" : "unix";
    snprintf(r->wss, sizeof(r->wss), "%" PRIu64 "M", wss >> 20);
    if (cap_mibs)
        snprintf(r->cap, sizeof(r->cap), "%" PRIu64, cap_mibs);
    else
        snprintf(r->cap, sizeof(r->cap), "none");

    char workload[96];
    snprintf(workload, sizeof(workload), "dirtier,wss=%" PRIu64 "M", wss >> 20);
    struct vm *source = NULL, *dest = NULL;
    if (make_vm(&source, memory, workload, false) != 0) {
        snprintf(r->error, sizeof(r->error), "could not create the source VM (see stderr)");
        return;
    }
    if (make_vm(&dest, memory, workload, true) != 0) {
        snprintf(r->error, sizeof(r->error), "could not create the destination VM (see stderr)");
        bench_vm_stop(source);
        return;
    }
    if (!bench_wait_for_first_pass(source, VCPUS, 60000)) {
        snprintf(r->error, sizeof(r->error), "the source guest did not complete a pass over its working set in 60 s");
        bench_vm_stop(source);
        bench_vm_stop(dest);
        return;
    }

    /* On the heap: a hung run returns with the destination's thread still
     * holding it. */
    struct incoming *in = calloc(1, sizeof(*in));
    if (in == NULL) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        exit(1);
    }
    in->vm = dest;
    in->fd = bench_vm_listen(o->tcp, PROGRAM, in->address, sizeof(in->address));
    if (in->fd < 0) {
        free(in);
        snprintf(r->error, sizeof(r->error), "could not listen (see stderr)");
        bench_vm_stop(source);
        bench_vm_stop(dest);
        return;
    }
    pthread_t thread;
    int error = pthread_create(&thread, NULL, incoming_main, in);
    if (error != 0) {
        snprintf(r->error, sizeof(r->error), "pthread_create for the destination: %s", strerror(error));
        close(in->fd);
        free(in);
        bench_vm_stop(source);
        bench_vm_stop(dest);
        return;
    }

    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", in->address);
    params.max_bandwidth_mibs = cap_mibs;
    params.downtime_ms = o->downtime_ms;
    params.timeout_s = o->timeout_s;
    params.keep_alive = true;       /* the source's counters stay readable (frozen at its pause) */
    params.verify_digest = false;
    switch (kind) {
    case RUN_PRECOPY:
        params.mode = MIG_MODE_PRECOPY;
        params.converge = MIG_CONVERGE_DIRTY_LIMIT;
        break;
    case RUN_POSTCOPY:
    case RUN_POSTCOPY_FIFO:
        params.mode = MIG_MODE_POSTCOPY;
        params.converge = MIG_CONVERGE_NONE;
        break;
    default:
        params.mode = MIG_MODE_HYBRID;
        params.converge = MIG_CONVERGE_NONE;    /* the guest is never throttled */
        params.postcopy_after_auto = true;
        params.postcopy_after_passes = 0;
        params.postcopy_after_ms = 0;
        break;
    }

    r->data_bytes = ram_data_bytes(source);
    if (cap_mibs > 0)
        r->ideal_ms = (double)r->data_bytes / ((double)cap_mibs * 1048576.0) * 1000.0;
    uint64_t before_pages = bench_guest_pages_written(source, VCPUS), before_ns = now_ns();
    sleep_ns(SAMPLE_NS);
    uint64_t start_pages = bench_guest_pages_written(source, VCPUS), start_ns = now_ns();
    r->guest_pps_before = (double)(start_pages - before_pages) * 1e9 / (double)(start_ns - before_ns);

    uint64_t id;
    const char *code;
    char message[256];
    struct mig_progress *p = malloc(sizeof(*p)), *q = malloc(sizeof(*q));
    if (p == NULL || q == NULL) {
        fprintf(stderr, PROGRAM ": out of memory for progress snapshots\n");
        exit(1);
    }
    if (migration_start(source, NULL, &params, &id, &code, message, sizeof(message)) != 0) {
        snprintf(r->error, sizeof(r->error), "migration.start: %s: %s", code, message);
        /* The destination still waits for a connection: shutting its VM
         * down ends migration_incoming_run_fd. */
        vm_request_shutdown(dest, 0);
        pthread_join(thread, NULL);
        goto out;
    }

    /* Until the source is done: the destination's guest counters from the
     * moment its progress says post-copy. */
    uint64_t deadline = now_ns() + ((uint64_t)o->timeout_s + 60u) * 1000000000ull;
    bool switch_seen = false, finished = false;
    uint64_t switch_pages = 0, switch_ns = 0;
    while (!(finished = migration_progress(source, p) && p->id == id && mig_state_finished(p->state))) {
        if (now_ns() >= deadline)
            break;
        if (!switch_seen && kind != RUN_PRECOPY && migration_progress(dest, q) && q->incoming && q->postcopy.active) {
            switch_pages = bench_guest_pages_written(dest, VCPUS);   /* may wait for the stats pages to arrive */
            switch_ns = now_ns();
            switch_seen = true;
        }
        sleep_ns(POLL_NS);
    }
    uint64_t end_ns = now_ns();
    if (!finished) {
        r->hung = true;
        describe_stuck(source, dest, r);
        free(p);
        free(q);
        return;     /* leaves the VMs: their threads may be blocked for good */
    }
    if (switch_seen) {
        uint64_t end_pages = bench_guest_pages_written(dest, VCPUS);
        r->postcopy_window_ms = (end_ns - switch_ns) / 1000000u;
        if (end_ns > switch_ns)
            r->guest_pps_postcopy = (double)(end_pages - switch_pages) * 1e9 / (double)(end_ns - switch_ns);
    }

    r->completed = p->state == MIG_STATE_COMPLETED;
    r->total_ms = p->total_ms;
    r->downtime_us = p->downtime_us;
    r->iterations = p->iteration_count;
    r->bytes_sent = p->memory.transferred;
    if (p->iteration_count > 0)
        r->final_throttle = p->iterations[(p->iteration_count - 1) % MIG_PROGRESS_MAX_ITERATIONS].throttle;
    r->postcopy_active = p->postcopy.active;
    r->switched_at_ms = p->postcopy.switched_at_ms;
    r->pages_total = p->postcopy.pages_total;
    r->pages_pushed = p->postcopy.pages_pushed;
    r->pages_served = p->postcopy.pages_requested;
    r->requests = p->postcopy.requests;
    r->requests_refused = p->postcopy.requests_refused;
    r->pages_withdrawn = p->postcopy.pages_withdrawn;
    r->pages_sent_twice = p->postcopy.pages_sent_twice;
    r->pages_left_to_stream = p->postcopy.pages_left_to_stream;
    /* The source's vCPUs stopped at its pause (keep_alive): its counter
     * is what the guest wrote there during the migration. */
    r->precopy_phase_ms = p->postcopy.active ? p->postcopy.switched_at_ms : p->total_ms;
    if (r->precopy_phase_ms > 0)
        r->guest_pps_precopy = (double)(bench_guest_pages_written(source, VCPUS) - start_pages) * 1000.0 /
                               (double)r->precopy_phase_ms;
    if (!r->completed)
        snprintf(r->error, sizeof(r->error), "%s: %s", p->error_code, p->error_message);

    /* The destination ends by itself once the source is done (ack sent or
     * failure seen); give it the stall timeout and a margin. */
    uint64_t join_deadline = now_ns() + 30000000000ull;
    while (!atomic_load_explicit(&in->done, memory_order_acquire) && now_ns() < join_deadline)
        sleep_ns(POLL_NS);
    if (!atomic_load_explicit(&in->done, memory_order_acquire)) {
        r->hung = true;
        describe_stuck(source, dest, r);
        free(p);
        free(q);
        return;
    }
    pthread_join(thread, NULL);
    r->destination_failed = in->result != 0;
    if (migration_progress(dest, q) && q->incoming) {
        r->pages_asked = q->postcopy.pages_requested;
        r->pages_received = q->postcopy.pages_received;
        r->pages_zero = q->postcopy.pages_zero;
        r->faults = q->postcopy.faults;
        r->duplicate_faults = q->postcopy.duplicate_faults;
        r->blocktime_ns = q->postcopy.blocktime_total_ns;
        for (unsigned i = 0; i < VCPUS; i++) {
            r->vcpu_faults[i] = q->postcopy.vcpu_faults[i];
            r->vcpu_blocktime_ns[i] = q->postcopy.vcpu_blocktime_ns[i];
        }
        r->latency_count = q->postcopy.latency_count;
        r->latency_p50_ns = q->postcopy.latency_p50_ns;
        r->latency_p99_ns = q->postcopy.latency_p99_ns;
        r->latency_max_ns = q->postcopy.latency_max_ns;
        if (r->completed && q->state != MIG_STATE_COMPLETED) {
            r->completed = false;
            snprintf(r->error, sizeof(r->error), "the source completed, the destination ended %s: %s: %s",
                     mig_state_name(q->state), q->error_code, q->error_message);
        }
    }
    if (r->completed && r->destination_failed) {
        r->completed = false;
        snprintf(r->error, sizeof(r->error), "the source completed, migration_incoming_run_fd failed (see stderr)");
    }
    if (r->completed && vm_get_state(dest) == VM_STATE_RUNNING) {
        uint64_t after_pages = bench_guest_pages_written(dest, VCPUS), after_ns = now_ns();
        sleep_ns(SAMPLE_NS);
        r->guest_pps_after = (double)(bench_guest_pages_written(dest, VCPUS) - after_pages) * 1e9 / (double)(now_ns() - after_ns);
    }
out:
    free(p);
    free(q);
    if (strncmp(in->address, "unix:", 5) == 0)
        unlink(in->address + 5);
    free(in);
    bench_vm_stop(source);
    bench_vm_stop(dest);
}

/* ---- output ----------------------------------------------------------------------------- */

static double ratio(double a, double b)
{
    return a > 0 && b > 0 ? a / b : 0;
}

static void format_rate(double pps, bool shown, char *out, size_t size)
{
    if (!shown)
        snprintf(out, size, "-");
    else if (pps >= 1e6)
        snprintf(out, size, "%.1fM", pps / 1e6);
    else if (pps >= 1e3)
        snprintf(out, size, "%.0fk", pps / 1e3);
    else
        snprintf(out, size, "%.0f", pps);
}

static void format_ratio(double value, char *out, size_t size)
{
    if (value > 0)
        snprintf(out, size, "%.2f", value);
    else
        snprintf(out, size, "-");
}

static void print_header(void)
{
    fprintf(stdout, "%-5s %-5s %-4s %-11s | %-4s %8s %8s %8s %7s %8s %7s %6s | %7s %7s %7s %7s | %7s %8s %8s %8s %8s\n",
            "wss", "cap", "link", "mode", "done", "total_ms", "down_ms", "sent_MiB", "urg_MiB", "ideal_ms", "x_ideal",
            "x_pre", "pps_bef", "pps_pre", "pps_pc", "pps_aft", "faults", "block_ms", "p50_us", "p99_us", "max_us");
}

static void print_row(const struct result *r, const struct result *precopy)
{
    if (r->skipped) {
        fprintf(stdout, "%-5s %-5s %-4s %-11s | skipped: %s\n", r->wss, r->cap, r->transport, run_kind_short(r->kind),
                r->error);
        return;
    }
    char ideal[16] = "-", x_ideal[16], x_pre[16], before[16], pre[16], post[16], after[16];
    if (r->ideal_ms > 0)
        snprintf(ideal, sizeof(ideal), "%.0f", r->ideal_ms);
    format_ratio(r->completed ? ratio((double)r->total_ms, r->ideal_ms) : 0, x_ideal, sizeof(x_ideal));
    format_ratio(r->completed && precopy != NULL && precopy->completed
                     ? ratio((double)r->total_ms, (double)precopy->total_ms) : 0,
                 x_pre, sizeof(x_pre));
    format_rate(r->guest_pps_before, true, before, sizeof(before));
    format_rate(r->guest_pps_precopy, r->precopy_phase_ms >= MIN_PHASE_MS, pre, sizeof(pre));
    format_rate(r->guest_pps_postcopy, r->postcopy_window_ms > 0, post, sizeof(post));
    format_rate(r->guest_pps_after, r->guest_pps_after > 0, after, sizeof(after));
    bool postcopy = r->postcopy_active;
    char faults[24] = "-", block[24] = "-", p50[24] = "-", p99[24] = "-", max[24] = "-";
    if (postcopy) {
        snprintf(faults, sizeof(faults), "%" PRIu64, r->faults);
        snprintf(block, sizeof(block), "%.1f", (double)r->blocktime_ns / 1e6);
        snprintf(p50, sizeof(p50), "%.0f", (double)r->latency_p50_ns / 1e3);
        snprintf(p99, sizeof(p99), "%.0f", (double)r->latency_p99_ns / 1e3);
        snprintf(max, sizeof(max), "%.0f", (double)r->latency_max_ns / 1e3);
    }
    fprintf(stdout, "%-5s %-5s %-4s %-11s | %-4s %8" PRIu64 " %8.1f %8.0f %7.1f %8s %7s %6s | %7s %7s %7s %7s | "
            "%7s %8s %8s %8s %8s\n",
            r->wss, r->cap, r->transport, run_kind_short(r->kind), r->hung ? "HUNG" : r->completed ? "yes" : "no",
            r->total_ms, (double)r->downtime_us / 1000.0, (double)r->bytes_sent / 1048576.0,
            (double)r->pages_served * 4096.0 / 1048576.0, ideal, x_ideal, x_pre, before, pre, post, after, faults,
            block, p50, p99, max);
    if (r->iterations > 0 || postcopy)
        fprintf(stdout, "      %" PRIu64 " pre-copy passes, final throttle %d %%", r->iterations, r->final_throttle);
    if (postcopy)
        fprintf(stdout, "; switched at %" PRIu64 " ms, %" PRIu64 " pages missing: pushed %" PRIu64
                ", served on request %" PRIu64 " (%" PRIu64 " requests, %" PRIu64 " refused; %" PRIu64
                " withdrawn from the stream, %" PRIu64 " left to it, %" PRIu64 " sent twice); destination asked %"
                PRIu64 ", received %" PRIu64 " (%" PRIu64 " zero), duplicate faults %" PRIu64
                ", vCPU faults %" PRIu64 "/%" PRIu64 ", blocktime %.1f/%.1f ms, %" PRIu64 " latency samples",
                r->switched_at_ms, r->pages_total, r->pages_pushed, r->pages_served, r->requests,
                r->requests_refused, r->pages_withdrawn, r->pages_left_to_stream, r->pages_sent_twice, r->pages_asked,
                r->pages_received, r->pages_zero, r->duplicate_faults,
                r->vcpu_faults[0], r->vcpu_faults[1], (double)r->vcpu_blocktime_ns[0] / 1e6,
                (double)r->vcpu_blocktime_ns[1] / 1e6, r->latency_count);
    if (r->iterations > 0 || postcopy)
        fprintf(stdout, "\n");
    if (!r->completed)
        fprintf(stdout, "      %s\n", r->error);
    fflush(stdout);
}

static json_t *result_json(const struct result *r, const struct result *precopy)
{
    json_t *run = json_object();
    json_object_set_new(run, "wss", json_string(r->wss));
    json_object_set_new(run, "cap_mibs", json_string(r->cap));
    json_object_set_new(run, "transport", json_string(r->transport));
    json_object_set_new(run, "mode", json_string(run_kind_name(r->kind)));
    json_object_set_new(run, "skipped", json_boolean(r->skipped));
    json_object_set_new(run, "completed", json_boolean(r->completed));
    json_object_set_new(run, "hung", json_boolean(r->hung));
    json_object_set_new(run, "error", json_string(r->error));
    if (r->skipped)
        return run;
    json_object_set_new(run, "total_ms", json_integer((json_int_t)r->total_ms));
    json_object_set_new(run, "downtime_ms", json_real((double)r->downtime_us / 1000.0));
    json_object_set_new(run, "bytes_sent", json_integer((json_int_t)r->bytes_sent));
    json_object_set_new(run, "urgent_bytes", json_integer((json_int_t)(r->pages_served * 4096u)));
    json_object_set_new(run, "ram_data_bytes", json_integer((json_int_t)r->data_bytes));
    json_object_set_new(run, "ideal_ms", r->ideal_ms > 0 ? json_real(r->ideal_ms) : json_null());
    double x_ideal = r->completed ? ratio((double)r->total_ms, r->ideal_ms) : 0;
    json_object_set_new(run, "total_over_ideal", x_ideal > 0 ? json_real(x_ideal) : json_null());
    double x_pre = r->completed && precopy != NULL && precopy->completed
                       ? ratio((double)r->total_ms, (double)precopy->total_ms) : 0;
    json_object_set_new(run, "total_over_precopy", x_pre > 0 ? json_real(x_pre) : json_null());
    json_object_set_new(run, "switched_to_postcopy", json_boolean(r->postcopy_active));
    json_object_set_new(run, "iterations", json_integer((json_int_t)r->iterations));
    json_object_set_new(run, "final_throttle", json_integer(r->final_throttle));
    json_object_set_new(run, "guest_pages_per_s_before", json_real(r->guest_pps_before));
    json_object_set_new(run, "precopy_phase_ms", json_integer((json_int_t)r->precopy_phase_ms));
    json_object_set_new(run, "guest_pages_per_s_precopy_source",
                        r->precopy_phase_ms >= MIN_PHASE_MS ? json_real(r->guest_pps_precopy) : json_null());
    json_object_set_new(run, "postcopy_window_ms", json_integer((json_int_t)r->postcopy_window_ms));
    json_object_set_new(run, "guest_pages_per_s_postcopy_destination",
                        r->postcopy_window_ms > 0 ? json_real(r->guest_pps_postcopy) : json_null());
    json_object_set_new(run, "guest_pages_per_s_after_destination", json_real(r->guest_pps_after));
    if (r->postcopy_active) {
        json_t *pc = json_object();
        json_object_set_new(pc, "switched_at_ms", json_integer((json_int_t)r->switched_at_ms));
        json_object_set_new(pc, "pages_total", json_integer((json_int_t)r->pages_total));
        json_object_set_new(pc, "pages_pushed", json_integer((json_int_t)r->pages_pushed));
        json_object_set_new(pc, "pages_served_on_request", json_integer((json_int_t)r->pages_served));
        json_object_set_new(pc, "requests", json_integer((json_int_t)r->requests));
        json_object_set_new(pc, "requests_refused", json_integer((json_int_t)r->requests_refused));
        json_object_set_new(pc, "pages_withdrawn", json_integer((json_int_t)r->pages_withdrawn));
        json_object_set_new(pc, "pages_left_to_stream", json_integer((json_int_t)r->pages_left_to_stream));
        json_object_set_new(pc, "pages_sent_twice", json_integer((json_int_t)r->pages_sent_twice));
        json_object_set_new(pc, "destination_pages_requested", json_integer((json_int_t)r->pages_asked));
        json_object_set_new(pc, "pages_received", json_integer((json_int_t)r->pages_received));
        json_object_set_new(pc, "pages_zero", json_integer((json_int_t)r->pages_zero));
        json_object_set_new(pc, "faults", json_integer((json_int_t)r->faults));
        json_object_set_new(pc, "duplicate_faults", json_integer((json_int_t)r->duplicate_faults));
        json_object_set_new(pc, "blocktime_total_ms", json_real((double)r->blocktime_ns / 1e6));
        json_t *vcpus = json_array();
        for (unsigned i = 0; i < VCPUS; i++)
            json_array_append_new(vcpus, json_pack("{s:I, s:f}", "faults", (json_int_t)r->vcpu_faults[i],
                                                   "blocktime_ms", (double)r->vcpu_blocktime_ns[i] / 1e6));
        json_object_set_new(pc, "vcpus", vcpus);
        json_object_set_new(pc, "latency_count", json_integer((json_int_t)r->latency_count));
        json_object_set_new(pc, "latency_p50_us", json_real((double)r->latency_p50_ns / 1e3));
        json_object_set_new(pc, "latency_p99_us", json_real((double)r->latency_p99_ns / 1e3));
        json_object_set_new(pc, "latency_max_us", json_real((double)r->latency_max_ns / 1e3));
        json_object_set_new(run, "postcopy", pc);
    }
    return run;
}

/* The cell's ratios against pre-copy and the targets. */
static void print_cell_summary(const struct result results[RUN_KINDS])
{
    const struct result *pre = &results[RUN_PRECOPY];
    for (enum run_kind k = RUN_POSTCOPY; k < RUN_KINDS; k++) {
        const struct result *r = &results[k];
        if (r->skipped || r->not_asked || !r->completed)
            continue;
        fprintf(stdout, "  %s: total %.2fx pre-copy's", run_kind_name(k),
                pre->completed ? ratio((double)r->total_ms, (double)pre->total_ms) : 0.0);
        if (r->ideal_ms > 0)
            fprintf(stdout, ", %.2fx the ideal (target <= 1.2: %s)", ratio((double)r->total_ms, r->ideal_ms),
                    (double)r->total_ms <= 1.2 * r->ideal_ms ? "met" : "NOT met");
        if (r->postcopy_active)
            fprintf(stdout, "; downtime %.1f ms (target <= 50: %s)", (double)r->downtime_us / 1000.0,
                    r->downtime_us <= 50000 ? "met" : "NOT met");
        else
            fprintf(stdout, "; completed in pre-copy (never switched to post-copy), downtime %.1f ms",
                    (double)r->downtime_us / 1000.0);
        if (r->postcopy_window_ms > 0 && pre->completed && pre->guest_pps_precopy > 0)
            fprintf(stdout, "; guest pages/s in post-copy %.2fx pre-copy's",
                    r->guest_pps_postcopy / pre->guest_pps_precopy);
        fprintf(stdout, "\n");
    }
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: postcopy [--quick] [--json] [--memory SIZE] [--wss LIST] [--caps LIST]\n"
            "                [--transport unix|tcp] [--timeout S] [--downtime-ms N] [--fifo N]\n"
            "Migrates a 2-vCPU guest running the full-rate dirtier three ways per cell (working set x\n"
            "cap), each with fresh VMs in this process: pre-copy with converge dirty-limit (ring),\n"
            "post-copy, and hybrid (converge none, postcopy_after auto). Reports total time, downtime,\n"
            "bytes, total / (guest RAM holding data / cap), total / pre-copy's, the guest's pages/s\n"
            "before, on the source during pre-copy, on the destination during post-copy and after,\n"
            "and the destination's faults, blocktime and fault service latency p50/p99/max.\n"
            "  --quick        256 MiB working set in a 512 MiB guest, cap 125 MiB/s\n"
            "  --wss LIST     working sets in whole MiB from 1M to 1T, split over the 2 vCPUs\n"
            "                 (default 1G)\n"
            "  --memory SIZE  guest RAM, 16M to 1T, a multiple of 4K (default 1.5 GiB; --quick 512 MiB)\n"
            "  --caps LIST    bandwidth caps, none or MiB/s from 1 to %u (default 125,none;\n"
            "                 --quick 125)\n"
            "  --transport    unix (default) or tcp (127.0.0.1)\n"
            "  --timeout S    the migrations' timeout_s, 1 to 86400, which bounds their pre-copy phase\n"
            "                 (default 120); a run not done within S + 60 s is reported with both\n"
            "                 sides' progress and ends the benchmark (exit 1)\n"
            "  --downtime-ms N  the downtime limit pre-copy converges to, 1 to 3600000 (default 300)\n"
            "  --fifo N       a fourth run per cell: post-copy with the fault-service threads (pc-fault,\n"
            "                 pc-urgent, pc-serve) under SCHED_FIFO at priority N, 1 to 99, as ringvm\n"
            "                 runs them with its postcopy-fifo option (default: not run)\n"
            "  --json         the same as JSON\n"
            "  -h, --help     this text\n"
            "Without userfaultfd the post-copy and hybrid runs are skipped (reason printed, exit 0);\n"
            "without /dev/kvm it says so on stderr and exits 0.\n",
            MAX_CAP_MIBS);
}

int main(int argc, char **argv)
{
    struct options o = { .timeout_s = 120, .downtime_ms = 300 };
    static const struct option long_options[] = {
        {"quick", no_argument, NULL, 'q'},          {"json", no_argument, NULL, 'j'},
        {"memory", required_argument, NULL, 'm'},   {"timeout", required_argument, NULL, 't'},
        {"transport", required_argument, NULL, 'T'}, {"caps", required_argument, NULL, 'c'},
        {"wss", required_argument, NULL, 'w'},      {"downtime-ms", required_argument, NULL, 'd'},
        {"fifo", required_argument, NULL, 'F'},     {"help", no_argument, NULL, 'h'},
        {0},
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
        case 'F':
            if (bench_option_unsigned(PROGRAM, "--fifo", optarg, POSTCOPY_PRIORITY_MIN, POSTCOPY_PRIORITY_MAX,
                                      &o.fifo) != 0)
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;
    if (o.fifo > 0) {
        char fifo_error[300];
        if (postcopy_priority_check(o.fifo, fifo_error, sizeof(fifo_error)) != 0) {
            fprintf(stderr, PROGRAM ": --fifo %u: %s\n", o.fifo, fifo_error);
            return 2;
        }
    }
    if (access("/dev/kvm", R_OK | W_OK) != 0) {
        fprintf(stderr, PROGRAM ": SKIP: /dev/kvm unavailable\n");
        return 0;
    }
    if (o.wss_count == 0) {
        o.wss[0] = o.quick ? 256ull << 20 : 1024ull << 20;
        o.wss_count = 1;
    }
    if (o.cap_count == 0) {
        o.caps[0] = 125;
        o.cap_count = 1;
        if (!o.quick)
            o.caps[o.cap_count++] = 0;
    }
    if (o.memory == 0)
        o.memory = o.quick ? 512ull << 20 : 1536ull << 20;
    char why[400] = "";
    bool userfaultfd = postcopy_destination_available(why, sizeof(why));
    if (!userfaultfd)
        fprintf(stderr, PROGRAM ": post-copy and hybrid runs skipped: %s\n", why);
    const char *transport = o.tcp ? "tcp" : "unix";
    if (!o.json) {
        fprintf(stdout, "guest: %" PRIu64 " MiB, %u vCPUs, full-rate dirtier; transport %s; pre-copy downtime limit "
                "%u ms, timeout %u s\n", o.memory >> 20, VCPUS, transport, o.downtime_ms, o.timeout_s);
        fprintf(stdout, "columns: down_ms = downtime; sent_MiB = main stream, urg_MiB = pages served on the urgent "
                "channel;\n  ideal_ms = RAM holding data / cap; x_ideal = total / ideal; x_pre = total / pre-copy's "
                "total;\n  pps_bef / pps_pre = guest pages/s on the source before / until the switch-over, pps_pc ="
                " on the\n  destination during post-copy, pps_aft = on the destination 0.5 s after; faults, "
                "block_ms, p50/p99/max_us:\n  the destination's remote faults, blocktime (all vCPUs) and fault "
                "service latency\n\n");
        print_header();
    }
    json_t *runs = json_array(), *cells = json_array();
    bool hung = false;
    for (unsigned w = 0; w < o.wss_count && !hung; w++)
        for (unsigned b = 0; b < o.cap_count && !hung; b++) {
            struct result results[RUN_KINDS];
            for (enum run_kind k = RUN_PRECOPY; k < RUN_KINDS && !hung; k++) {
                struct result *r = &results[k];
                if (k == RUN_POSTCOPY_FIFO && o.fifo == 0) {
                    memset(r, 0, sizeof(*r));
                    r->kind = k;
                    r->not_asked = true;
                    continue;
                }
                if (k != RUN_PRECOPY && !userfaultfd) {
                    memset(r, 0, sizeof(*r));
                    r->kind = k;
                    r->skipped = true;
                    r->transport = transport;
                    snprintf(r->wss, sizeof(r->wss), "%" PRIu64 "M", o.wss[w] >> 20);
                    if (o.caps[b])
                        snprintf(r->cap, sizeof(r->cap), "%" PRIu64, o.caps[b]);
                    else
                        snprintf(r->cap, sizeof(r->cap), "none");
                    snprintf(r->error, sizeof(r->error), "%s", why);
                } else {
                    postcopy_priority_set(k == RUN_POSTCOPY_FIFO ? o.fifo : 0);
                    run_one(&o, o.memory, o.wss[w], o.caps[b], k, r);
                    postcopy_priority_set(0);
                }
                hung = r->hung;
                if (!o.json)
                    print_row(r, k == RUN_PRECOPY ? NULL : &results[RUN_PRECOPY]);
                json_array_append_new(runs, result_json(r, k == RUN_PRECOPY ? NULL : &results[RUN_PRECOPY]));
                if (hung)
                    break;
            }
            if (hung)
                break;
            const struct result *pre = &results[RUN_PRECOPY];
            json_t *cell = json_pack("{s:s, s:s, s:s}", "wss", pre->wss, "cap_mibs", pre->cap, "transport", transport);
            for (enum run_kind k = RUN_POSTCOPY; k < RUN_KINDS; k++) {
                const struct result *r = &results[k];
                if (r->not_asked)
                    continue;
                bool both = !r->skipped && r->completed && pre->completed;
                char key[64];
                snprintf(key, sizeof(key), "%s_total_over_precopy", run_kind_name(k));
                json_object_set_new(cell, key, both ? json_real(ratio((double)r->total_ms, (double)pre->total_ms))
                                                    : json_null());
                snprintf(key, sizeof(key), "%s_guest_pps_over_precopy", run_kind_name(k));
                json_object_set_new(cell, key, both && r->postcopy_window_ms > 0 && pre->guest_pps_precopy > 0
                                                   ? json_real(r->guest_pps_postcopy / pre->guest_pps_precopy)
                                                   : json_null());
            }
            json_array_append_new(cells, cell);
            if (!o.json)
                print_cell_summary(results);
        }
    if (o.json) {
        json_t *root = json_pack("{s:s, s:I, s:i, s:I, s:I, s:i, s:b, s:s, s:o, s:o, s:b}", "transport", transport,
                                 "memory_bytes", (json_int_t)o.memory, "vcpus", (int)VCPUS, "downtime_limit_ms",
                                 (json_int_t)o.downtime_ms, "timeout_s", (json_int_t)o.timeout_s,
                                 "fifo_priority", (int)o.fifo,
                                 "userfaultfd_available", userfaultfd, "userfaultfd_reason", why, "runs", runs,
                                 "cells", cells, "hung", hung);
        char *text = json_dumps(root, JSON_INDENT(2));
        fprintf(stdout, "%s\n", text);
        free(text);
        json_decref(root);
    } else {
        json_decref(runs);
        json_decref(cells);
    }
    if (hung) {
        fprintf(stderr, PROGRAM ": a migration did not end; the remaining cells were not run\n");
        return 1;
    }
    return 0;
}
