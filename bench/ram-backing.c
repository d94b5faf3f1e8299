/*
 * bench/ram-backing: what guest RAM's backing costs a pre-copy pass on this
 * host, without KVM. The bulk pass of a large working set moves every page
 * once: the source reads it through its own mapping of guest RAM for the
 * first time, the destination writes it into RAM it has never touched.
 * Those first touches, not the pipeline, can bound the pass: allocating
 * and mapping pages (4 KiB shmem pages cost most), and on a host that is
 * itself a VM handing freed memory back to its hypervisor (free page
 * reporting, these dev machines) that hypervisor's own first touch, 10-15x
 * the rest: run scripts/host-memory.sh prepare first to measure the VMM
 * and not the layer below (docs/benchmarks.md, "Host memory on these
 * machines").
 *
 *   build/bench/ram-backing [--memory SIZE] [--reps N] [--backings LIST] [--json]
 *   build/bench/ram-backing --help  (every option, with its range and default)
 *
 * The pipeline is ringvm's own: the migration thread's frame builder
 * (migration/sender.h) plans every page in RAM order, `mig-send` copies,
 * seals and sends each 1 MiB frame over a Unix socketpair, the
 * destination's receiver (migration/receiver.h) writes it into guest RAM,
 * and `mig-populate` (migration/populate.h) runs ahead of it as in
 * `ringvm --incoming`. Guest RAM is vmm/memory.c's: a memfd, 4 KiB pages or
 * 2 MiB huge pages (`ringvm --hugepages`), or anonymous memory (`ringvm
 * --ram anonymous`). The source's RAM is filled as a running guest leaves
 * it: its mapping populated (KVM's own faults do that) and its bytes
 * written through another mapping of the memfd (anonymous RAM: through
 * its only one), so the source's mapping has never been read from user
 * space.
 *
 * Backings (each a fresh pair of VMs' RAM per repetition, interleaved):
 *   4k           4 KiB pages; the destination populated ahead of the
 *                receiver (what `ringvm --incoming` does by default)
 *   4k-prealloc  4 KiB pages; the destination's RAM populated before the
 *                pass, untimed (`ringvm --incoming --prealloc`)
 *   4k-bare      4 KiB pages, nothing populated: the receiver faults every
 *                page in itself (RINGVM_MIG_NO_POPULATE)
 *   thp          the default RAM file with MADV_HUGEPAGE on both sides
 *                (ringvm's default unless --no-thp), populated ahead:
 *                transparent huge pages on a memfd where shmem_enabled
 *                grants them, else on ringvm's own tmpfs (vmm/ram_file.h)
 *   2m           2 MiB huge pages on both sides, populated ahead
 *   anon         anonymous RAM (`--ram anonymous --no-thp`), 4 KiB pages,
 *                populated ahead
 *   anon-thp     anonymous RAM with MADV_HUGEPAGE (`--ram anonymous`),
 *                populated ahead: transparent huge pages where the host
 *                grants them to anonymous memory (transparent_hugepage/
 *                enabled madvise or always: Debian's default, and how
 *                QEMU's default RAM is backed)
 * Per backing: the first pass (cold mappings, as a migration's bulk pass
 * meets them) and a second pass of the same pages (both mappings warm: the
 * pipeline's own bound), MiB/s each, medians, and the first pass's ratio to
 * `4k` in the same run. `2m` needs 2 x --memory of free huge pages; without
 * them it is left out with the reason (reserve them with
 * `echo N > /proc/sys/vm/nr_hugepages` as root); `thp` is left out where
 * shmem_enabled grants a memfd none and ringvm's tmpfs cannot be made, and
 * `anon-thp` where transparent_hugepage/enabled is never.
 *
 * Exit status 0, or 1 when something failed (message on stderr).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/lib/bench_options.h"
#include "guest/abi.h"
#include "migration/populate.h"
#include "migration/protocol.h"
#include "migration/receiver.h"
#include "migration/sender.h"
#include "vmm/memory.h"

#define PROGRAM "bench/ram-backing"
#define MAX_REPS 15u
#define STALL_MS 30000u

enum backing {
    BACKING_4K, BACKING_4K_PREALLOC, BACKING_4K_BARE, BACKING_THP, BACKING_2M, BACKING_ANON, BACKING_ANON_THP,
    BACKING_COUNT
};

static const char *const backing_names[BACKING_COUNT] = { "4k", "4k-prealloc", "4k-bare", "thp", "2m", "anon",
                                                          "anon-thp" };
#define BACKING_LIST "4k, 4k-prealloc, 4k-bare, thp, 2m, anon, anon-thp"

struct options {
    uint64_t memory;
    unsigned reps;
    bool wanted[BACKING_COUNT];
    bool json;
};

/* One backing's samples; owned by main. */
struct result {
    bool skipped;
    char reason[200];
    const char *file;       /* the source's RAM file (vmm/ram_file.h): "memfd", "tmpfs", "anonymous" */
    double cold_mibs[MAX_REPS];
    double warm_mibs[MAX_REPS];
    unsigned samples;
};

static void usage(FILE *to)
{
    fprintf(to,
            "usage: ram-backing [--memory SIZE] [--reps N] [--backings LIST] [--json]\n"
            "\n"
            "A pre-copy pass of all guest RAM through ringvm's own sender and receiver over a\n"
            "Unix socketpair, without KVM, once per guest RAM backing: first pass (cold mappings,\n"
            "a migration's bulk pass) and second pass (warm), MiB/s, medians.\n"
            "\n"
            "  --memory SIZE     guest RAM per side, 64M to 16G, a multiple of 2M (default 1G)\n"
            "  --reps N          repetitions per backing, 1 to %u, interleaved (default 3)\n"
            "  --backings LIST   comma-separated, of " BACKING_LIST "\n"
            "                    (default all; thp needs shmem_enabled advise or always in\n"
            "                    /sys/kernel/mm/transparent_hugepage or CAP_SYS_ADMIN for\n"
            "                    ringvm's own tmpfs, anon-thp needs enabled\n"
            "                    madvise or always there, 2m needs 2 x SIZE of free 2 MiB\n"
            "                    huge pages; left out with the reason otherwise)\n"
            "  --json            one JSON object on stdout instead of the table\n"
            "  -h, --help        this text\n",
            MAX_REPS);
}

static int parse_backings(const char *text, bool wanted[BACKING_COUNT])
{
    bool any = false;
    memset(wanted, 0, sizeof(bool) * BACKING_COUNT);
    const char *item = text;
    while (*item != '\0') {
        size_t length = strcspn(item, ",");
        bool known = false;
        for (unsigned i = 0; i < BACKING_COUNT; i++) {
            if (strlen(backing_names[i]) == length && strncmp(item, backing_names[i], length) == 0) {
                wanted[i] = any = known = true;
                break;
            }
        }
        if (!known) {
            fprintf(stderr, PROGRAM ": --backings '%s': unknown backing '%.*s' (" BACKING_LIST ")\n",
                    text, (int)length, item);
            return -1;
        }
        item += length;
        if (*item == ',')
            item++;
    }
    if (!any) {
        fprintf(stderr, PROGRAM ": --backings '%s': name at least one backing\n", text);
        return -1;
    }
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){ .memory = 1ull << 30, .reps = 3 };
    for (unsigned i = 0; i < BACKING_COUNT; i++)
        o->wanted[i] = true;
    static const struct option long_options[] = {
        { "memory", required_argument, NULL, 'm' },
        { "reps", required_argument, NULL, 'r' },
        { "backings", required_argument, NULL, 'b' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (bench_option_size(PROGRAM, "--memory", optarg, 64ull << 20, 16ull << 30, 2ull << 20, &o->memory) != 0)
                return -1;
            break;
        case 'r':
            if (bench_option_unsigned(PROGRAM, "--reps", optarg, 1, MAX_REPS, &o->reps) != 0)
                return -1;
            break;
        case 'b':
            if (parse_backings(optarg, o->wanted) != 0)
                return -1;
            break;
        case 'j':
            o->json = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    return bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage);
}

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The source's RAM as a running guest leaves it: every page populated in
 * this mapping (KVM's faults on the guest's writes do that) and written
 * through a second mapping, so this one has never been read from user
 * space. Every page holds data (its offset and a pattern), none is zero. */
static int fill_source(struct guest_memory *memory)
{
    if (guest_memory_populate(memory, 0, memory->size) != 0)
        return -1;
    bool anonymous = guest_memory_anonymous(memory);
    uint8_t *other = anonymous ? memory->host
                               : mmap(NULL, memory->size, PROT_READ | PROT_WRITE, MAP_SHARED, memory->memfd, 0);
    if (other == MAP_FAILED) {
        fprintf(stderr, PROGRAM ": mmap(source RAM, second mapping): %s\n", strerror(errno));
        return -1;
    }
    for (uint64_t offset = 0; offset < memory->size; offset += MIG_PAGE_SIZE) {
        uint64_t *words = (uint64_t *)(other + offset);
        for (unsigned i = 0; i < MIG_PAGE_SIZE / sizeof(uint64_t); i += 8)
            words[i] = offset ^ 0x9e3779b97f4a7c15ull ^ i;
    }
    if (!anonymous)
        munmap(other, memory->size);
    return 0;
}

static struct mig_hello bench_hello(uint64_t memory)
{
    struct mig_hello hello;
    memset(&hello, 0, sizeof(hello));
    hello.version = MIG_PROTOCOL_VERSION;
    hello.page_size = MIG_PAGE_SIZE;
    hello.memory_bytes = memory;
    hello.vcpu_count = 1;
    hello.slot_count = 1;
    hello.slots[0].gpa = 0;
    hello.slots[0].size = memory;
    hello.slots[0].ram_offset = 0;
    hello.state_format = MIG_STATE_FORMAT;
    hello.features = MIG_FEATURE_ZERO_PAGES;
    hello.abi_version = RINGVM_ABI_VERSION;
    return hello;
}

/* The destination's side: its receiver on one end of the socketpair.
 * Ownership: the receiving thread owns everything here until joined;
 * pages_wanted is written before each pass is started (pass_lock). */
struct destination {
    int fd;
    struct mig_receiver receiver;
    pthread_mutex_t pass_lock;
    pthread_cond_t pass_cond;
    uint64_t pages_wanted;          /* receive until pages_received reaches this */
    bool done;                      /* the wanted pages are in (or failed) */
    bool failed;
    char error[MIG_RECEIVER_ERROR_MAX];
};

static ssize_t destination_read_some(void *context, void *data, size_t capacity, char *error, size_t error_size)
{
    int fd = *(int *)context;
    for (;;) {
        ssize_t got = recv(fd, data, capacity, 0);
        if (got >= 0)
            return got;
        if (errno == EINTR)
            continue;
        snprintf(error, error_size, "recv: %s", strerror(errno));
        return -1;
    }
}

static void *destination_main(void *argument)
{
    struct destination *d = argument;
    pthread_setname_np(pthread_self(), "mig-incoming");
    struct mig_input input = { .read_some = destination_read_some, .ctx = &d->fd };
    bool failed = false;
    for (;;) {
        pthread_mutex_lock(&d->pass_lock);
        uint64_t wanted = d->pages_wanted;
        if (atomic_load_explicit(&d->receiver.pages_received, memory_order_relaxed) >= wanted) {
            d->done = true;
            pthread_cond_broadcast(&d->pass_cond);
            if (wanted == UINT64_MAX || failed) {
                pthread_mutex_unlock(&d->pass_lock);
                return NULL;
            }
            while (d->pages_wanted == wanted)
                pthread_cond_wait(&d->pass_cond, &d->pass_lock);
            pthread_mutex_unlock(&d->pass_lock);
            continue;
        }
        pthread_mutex_unlock(&d->pass_lock);
        int type = mig_receiver_next(&d->receiver, &input);
        if (type < 0) {
            pthread_mutex_lock(&d->pass_lock);
            snprintf(d->error, sizeof(d->error), "%s", d->receiver.error);
            d->failed = failed = true;
            d->pages_wanted = 0;
            pthread_mutex_unlock(&d->pass_lock);
        }
    }
}

/* Asks the destination for `pages` more pages in all. */
static void destination_expect(struct destination *d, uint64_t pages)
{
    pthread_mutex_lock(&d->pass_lock);
    d->pages_wanted = pages;
    d->done = false;
    pthread_cond_broadcast(&d->pass_cond);
    pthread_mutex_unlock(&d->pass_lock);
}

/* Waits until the destination has what it was asked for; false on failure. */
static bool destination_wait(struct destination *d, char *error, size_t error_size)
{
    pthread_mutex_lock(&d->pass_lock);
    while (!d->done && !d->failed)
        pthread_cond_wait(&d->pass_cond, &d->pass_lock);
    bool ok = !d->failed;
    if (!ok)
        snprintf(error, error_size, "%s", d->error);
    pthread_mutex_unlock(&d->pass_lock);
    return ok;
}

/* One pass over all of source RAM, as iteration 0 plans it. */
static int send_pass(struct mig_sender *sender, const struct guest_memory *source, uint64_t *seq)
{
    uint64_t offset = 0;
    while (offset < source->size) {
        struct mig_buffer *buffer = mig_sender_get(sender, STALL_MS);
        if (buffer == NULL) {
            char text[512];
            mig_sender_failed(sender, text, sizeof(text));
            fprintf(stderr, PROGRAM ": no send buffer: %s\n", text[0] != '\0' ? text : "timed out");
            return -1;
        }
        struct mig_frame_builder builder;
        mig_builder_begin(&builder, buffer);
        while (offset < source->size && mig_builder_has_room(&builder)) {
            mig_builder_add_page(&builder, offset, source->host + offset);
            offset += MIG_PAGE_SIZE;
        }
        mig_builder_close(&builder, *seq);
        *seq += 1;
        mig_sender_submit(sender, buffer, *seq);
    }
    return 0;
}

/* One repetition of one backing: fresh RAM on both sides, two passes. */
static int run_once(const struct options *o, enum backing backing, double *cold_mibs, double *warm_mibs,
                    const char **file)
{
    /* Both sides on the same page size; only the destination preallocated. */
    struct guest_memory_options source_options = {
        .hugepages = backing == BACKING_2M, .numa_node = -1,
        .no_thp = backing != BACKING_THP && backing != BACKING_ANON_THP,
        .anonymous = backing == BACKING_ANON || backing == BACKING_ANON_THP,
    };
    struct guest_memory_options target_options = source_options;
    target_options.prealloc = backing == BACKING_4K_PREALLOC;
    struct guest_memory source, target;
    if (guest_memory_create(&source, o->memory, &source_options) != 0)
        return -1;
    if (guest_memory_create(&target, o->memory, &target_options) != 0) {
        guest_memory_destroy(&source);
        return -1;
    }
    *file = ram_file_kind_name(source.file_kind);
    int result = -1;
    int pair[2] = { -1, -1 };
    struct destination destination = { .pages_wanted = 0 };
    struct mig_sender sender;
    bool sender_started = false, destination_started = false;
    pthread_t destination_thread;
    struct mig_populate populate = { .started = false };
    struct mig_hello hello = bench_hello(o->memory);
    _Atomic bool cancel = false;
    char error[MIG_RECEIVER_ERROR_MAX];

    if (fill_source(&source) != 0)
        goto out;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        fprintf(stderr, PROGRAM ": socketpair: %s\n", strerror(errno));
        goto out;
    }
    /* The buffers ringvm's transport asks for (migration/transport.c). */
    int buffer_bytes = 4 << 20;
    for (unsigned i = 0; i < 2; i++) {
        (void)setsockopt(pair[i], SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
        (void)setsockopt(pair[i], SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
    }
    if (mig_receiver_init(&destination.receiver, target.host, target.size, &hello) != 0) {
        fprintf(stderr, PROGRAM ": out of memory for the receiver\n");
        goto out;
    }
    destination.fd = pair[1];
    pthread_mutex_init(&destination.pass_lock, NULL);
    pthread_cond_init(&destination.pass_cond, NULL);

    uint64_t pages = o->memory / MIG_PAGE_SIZE;
    uint64_t seq = 0;
    uint8_t frame[MIG_HEADER_SIZE + MIG_HELLO_SIZE], payload[MIG_HELLO_SIZE];
    mig_hello_encode(&hello, payload);
    size_t length = mig_frame_encode(frame, MIG_FRAME_HELLO, seq++, payload, sizeof(payload));
    if (write(pair[0], frame, length) != (ssize_t)length) {
        fprintf(stderr, PROGRAM ": writing the hello: %s\n", strerror(errno));
        goto out;
    }
    if (pthread_create(&destination_thread, NULL, destination_main, &destination) != 0) {
        fprintf(stderr, PROGRAM ": cannot start the receiving thread\n");
        goto out;
    }
    destination_started = true;
    if (mig_sender_start(&sender, pair[0], NULL, 0, STALL_MS, &cancel, error, sizeof(error)) != 0) {
        fprintf(stderr, PROGRAM ": starting the sender: %s\n", error);
        goto out;
    }
    sender_started = true;

    double passes[2];
    for (unsigned pass = 0; pass < 2; pass++) {
        double started = now_seconds();
        if (pass == 0 && backing != BACKING_4K_BARE && backing != BACKING_4K_PREALLOC &&
            mig_populate_start(&populate, target.host, target.size, &destination.receiver.frontier) != 0) {
            fprintf(stderr, PROGRAM ": cannot start mig-populate\n");
            goto out;
        }
        destination_expect(&destination, pages * (pass + 1));
        if (send_pass(&sender, &source, &seq) != 0)
            goto out;
        if (!destination_wait(&destination, error, sizeof(error))) {
            fprintf(stderr, PROGRAM ": the receiver failed: %s\n", error);
            goto out;
        }
        passes[pass] = now_seconds() - started;
        mig_populate_stop(&populate);
    }
    *cold_mibs = (double)(o->memory >> 20) / passes[0];
    *warm_mibs = (double)(o->memory >> 20) / passes[1];
    if (atomic_load_explicit(&destination.receiver.normal_pages, memory_order_relaxed) != 2 * pages ||
        memcmp(source.host, target.host, source.size) != 0) {
        fprintf(stderr, PROGRAM ": the destination's RAM differs from the source's after two passes\n");
        goto out;
    }
    result = 0;

out:
    mig_populate_stop(&populate);
    if (sender_started) {
        if (result == 0)
            (void)mig_sender_flush(&sender, STALL_MS);
        mig_sender_stop(&sender);
    }
    if (pair[0] >= 0)
        shutdown(pair[0], SHUT_RDWR);   /* ends a receiver still waiting for bytes */
    if (destination_started) {
        destination_expect(&destination, UINT64_MAX);
        pthread_join(destination_thread, NULL);
    }
    if (pair[0] >= 0) {
        mig_receiver_destroy(&destination.receiver);
        pthread_mutex_destroy(&destination.pass_lock);
        pthread_cond_destroy(&destination.pass_cond);
        close(pair[0]);
        close(pair[1]);
    }
    guest_memory_destroy(&target);
    guest_memory_destroy(&source);
    return result;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *values, unsigned count)
{
    double sorted[MAX_REPS];
    memcpy(sorted, values, count * sizeof(double));
    qsort(sorted, count, sizeof(double), compare_doubles);
    return count % 2 ? sorted[count / 2] : (sorted[count / 2 - 1] + sorted[count / 2]) / 2;
}

static json_t *samples_json(const double *values, unsigned count)
{
    json_t *array = json_array();
    for (unsigned i = 0; i < count; i++)
        json_array_append_new(array, json_real(values[i]));
    return array;
}

int main(int argc, char **argv)
{
    struct options o;
    if (parse_options(argc, argv, &o) != 0)
        return 2;
    struct result results[BACKING_COUNT];
    memset(results, 0, sizeof(results));
    if (o.wanted[BACKING_2M]) {
        uint64_t needed = 2 * o.memory / (2ull << 20), available = guest_memory_free_huge_pages();
        if (available < needed) {
            results[BACKING_2M].skipped = true;
            snprintf(results[BACKING_2M].reason, sizeof(results[BACKING_2M].reason),
                     "needs %" PRIu64 " free 2 MiB huge pages, %" PRIu64 " free (as root: echo %" PRIu64
                     " > /proc/sys/vm/nr_hugepages)", needed, available, needed);
            fprintf(stderr, PROGRAM ": 2m left out: %s\n", results[BACKING_2M].reason);
        }
    }
    static const enum backing transparent[] = { BACKING_THP, BACKING_ANON_THP };
    for (unsigned i = 0; i < sizeof(transparent) / sizeof(transparent[0]); i++) {
        enum backing b = transparent[i];
        bool anonymous = b == BACKING_ANON_THP;
        if (!o.wanted[b])
            continue;
        /* What ringvm would get: a memfd where shmem_enabled grants huge
         * pages, its own tmpfs where it can make one (vmm/ram_file.h). */
        struct guest_memory probe;
        if (guest_memory_create(&probe, 16u << 20, &(struct guest_memory_options){ .numa_node = -1,
                                                                                 .anonymous = anonymous }) != 0)
            return 1;
        bool possible = guest_memory_thp_possible(&probe);
        enum ram_file_kind kind = probe.file_kind;
        guest_memory_destroy(&probe);
        if (possible)
            continue;
        char mode[32];
        guest_memory_thp_host(anonymous, mode, sizeof(mode));
        results[b].skipped = true;
        snprintf(results[b].reason, sizeof(results[b].reason),
                 "the host's /sys/kernel/mm/transparent_hugepage/%s is '%s' (as root: echo %s > it)%s",
                 anonymous ? "enabled" : "shmem_enabled", mode, anonymous ? "madvise" : "advise",
                 kind == RAM_FILE_MEMFD ? " and ringvm's own tmpfs could not be made (CAP_SYS_ADMIN)" : "");
        fprintf(stderr, PROGRAM ": %s left out: %s\n", backing_names[b], results[b].reason);
    }
    for (unsigned rep = 0; rep < o.reps; rep++) {
        for (unsigned b = 0; b < BACKING_COUNT; b++) {
            struct result *r = &results[b];
            if (!o.wanted[b] || r->skipped)
                continue;
            if (run_once(&o, (enum backing)b, &r->cold_mibs[r->samples], &r->warm_mibs[r->samples], &r->file) != 0)
                return 1;
            if (!o.json)
                fprintf(stderr, "%s rep %u: first pass %.0f MiB/s, second %.0f MiB/s\n", backing_names[b], rep + 1,
                        r->cold_mibs[r->samples], r->warm_mibs[r->samples]);
            r->samples++;
        }
    }
    double baseline = results[BACKING_4K].samples > 0 ? median(results[BACKING_4K].cold_mibs,
                                                                results[BACKING_4K].samples) : 0;
    if (o.json) {
        json_t *root = json_pack("{s:s, s:I, s:i}", "bench", "ram-backing", "memory_bytes", (json_int_t)o.memory,
                                 "reps", (int)o.reps);
        json_t *rows = json_array();
        for (unsigned b = 0; b < BACKING_COUNT; b++) {
            const struct result *r = &results[b];
            if (!o.wanted[b])
                continue;
            json_t *row = json_pack("{s:s}", "backing", backing_names[b]);
            if (r->skipped) {
                json_object_set_new(row, "skipped", json_string(r->reason));
            } else {
                double cold = median(r->cold_mibs, r->samples);
                json_object_set_new(row, "ram_file", json_string(r->file));
                json_object_set_new(row, "first_pass_mibs", samples_json(r->cold_mibs, r->samples));
                json_object_set_new(row, "second_pass_mibs", samples_json(r->warm_mibs, r->samples));
                json_object_set_new(row, "first_pass_median_mibs", json_real(cold));
                json_object_set_new(row, "second_pass_median_mibs", json_real(median(r->warm_mibs, r->samples)));
                json_object_set_new(row, "first_pass_ratio_to_4k",
                                    baseline > 0 ? json_real(cold / baseline) : json_null());
            }
            json_array_append_new(rows, row);
        }
        json_object_set_new(root, "backings", rows);
        json_dumpf(root, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(root);
        return 0;
    }
    printf("guest RAM %" PRIu64 " MiB per side, %u repetition(s), medians\n\n", o.memory >> 20, o.reps);
    printf("| backing | first pass MiB/s | second pass MiB/s | first pass / 4k |\n|---|---:|---:|---:|\n");
    for (unsigned b = 0; b < BACKING_COUNT; b++) {
        const struct result *r = &results[b];
        if (!o.wanted[b])
            continue;
        if (r->skipped) {
            printf("| %s | left out: %s | | |\n", backing_names[b], r->reason);
            continue;
        }
        double cold = median(r->cold_mibs, r->samples);
        if (baseline > 0)
            printf("| %s | %.0f | %.0f | %.2f |\n", backing_names[b], cold, median(r->warm_mibs, r->samples),
                   cold / baseline);
        else
            printf("| %s | %.0f | %.0f | |\n", backing_names[b], cold, median(r->warm_mibs, r->samples));
    }
    return 0;
}
