/* Workload threads of the Linux guest's workload program; see runner.h. */
#include "guest/linux/workload/runner.h"
#include "guest/linux/workload/channel.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* The built-in guest's page order and rate pacing, used as they are so
 * both guests write the same pages in the same order at the same rate. */
#include "guest/ledger_page.h"
#include "guest/pacing.h"
#include "guest/page_walk.h"

/* As guest/dirtier.c and guest/ledger.c. */
#define RUNNER_STATS_FLUSH_WRITES 256
#define RUNNER_REPORTED_MISMATCHES_PER_PASS 32

/* Shared by the main thread and the workload threads. Ownership: config is
 * read-only; lock guards `running`, `mapped` and the condition; `stop` is written
 * only by the main thread (under lock, then broadcast) and read by the
 * workload threads with relaxed loads in their loops. */
struct runner_shared {
    const struct linux_runner_config *config;
    pthread_mutex_t lock;
    pthread_cond_t changed;     /* CLOCK_MONOTONIC: running dropped or stop set */
    unsigned running;
    unsigned mapped;            /* threads past their mmap calls (runner_wait_all_mapped) */
    atomic_bool stop;
    unsigned cpu_count;
    int cpus[CPU_SETSIZE];      /* the CPUs the process may use, in order */
};

/* One workload thread. Everything but `shared` is written by that thread
 * only; the main thread reads failed/mismatches after joining it. */
struct runner_thread {
    struct runner_shared *shared;
    unsigned vcpu;
    pthread_t thread;
    bool started;
    bool failed;
    uint64_t mismatches;
    /* The channel's stats slot of this vCPU, else its --stats-at slot, else
     * `local`, so the code that updates counters is the same either way. */
    volatile struct ringvm_vcpu_stats *stats;
    struct ringvm_vcpu_stats local;
    uint8_t *region;
    uint64_t pages;
    uint32_t *table_memory;
};

/* The ledger's state, as struct ledger of guest/ledger.c. */
struct runner_ledger {
    struct runner_thread *thread;
    uint8_t *region;
    volatile uint32_t *table;
    uint64_t pages;
    uint64_t seed;
    uint32_t write_bytes;
    uint64_t highest_generation;
    uint64_t verify_ticks;      /* 0 = no periodic verify */
    uint64_t next_verify;
    uint64_t passes;            /* verify passes done (for the test hook) */
    volatile struct ringvm_vcpu_stats *stats;
};

/* One whole line with one write(2), so lines of different threads never
 * interleave on the console or in a pipe. */
static void runner_print(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void runner_print(const char *format, ...)
{
    char line[256];
    va_list arguments;
    va_start(arguments, format);
    int length = vsnprintf(line, sizeof(line), format, arguments);
    va_end(arguments);
    if (length < 0)
        return;
    if ((size_t)length >= sizeof(line))
        length = sizeof(line) - 1;
    const char *cursor = line;
    while (length > 0) {
        ssize_t written = write(STDOUT_FILENO, cursor, (size_t)length);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return;     /* nowhere left to report it */
        }
        cursor += written;
        length -= (int)written;
    }
}

static bool runner_stopping(const struct runner_shared *shared)
{
    return atomic_load_explicit(&shared->stop, memory_order_relaxed);
}

static void runner_set_phase(struct runner_thread *thread, enum ringvm_vcpu_phase phase)
{
    thread->stats->phase = phase;
    linux_channel_send(thread->shared->config->channel, RINGVM_CMD_PHASE, phase);
}

/* Waits until stop is requested or, with deadline non-NULL, until then.
 * Returns true when stopping. */
static bool runner_wait_stop(struct runner_shared *shared, const struct timespec *deadline)
{
    pthread_mutex_lock(&shared->lock);
    while (!runner_stopping(shared)) {
        int result = deadline ? pthread_cond_timedwait(&shared->changed, &shared->lock, deadline)
                              : pthread_cond_wait(&shared->changed, &shared->lock);
        if (result == ETIMEDOUT)
            break;
    }
    bool stopping = runner_stopping(shared);
    pthread_mutex_unlock(&shared->lock);
    return stopping;
}

static struct timespec runner_deadline_after(unsigned seconds)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += seconds;
    return deadline;
}

/* The clock thread (config->clock_lines): at every whole multiple of the
 * period (config->clock_period_ms) of CLOCK_MONOTONIC, `CLOCK mono_ns=N`
 * with N read just before the line is written, until stop. Unpinned, so it
 * runs beside the pinned workload threads; the clock is read after the
 * wake-up, not predicted, so a late wake-up only delays the line, never
 * falsifies it. Tests compare N with the host's clock across a migration
 * (guest/linux/README.md). */
static void *runner_clock_main(void *argument)
{
    struct runner_shared *shared = argument;
    uint64_t period_ns = (uint64_t)shared->config->clock_period_ms * 1000000u;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    for (;;) {
        /* The next whole multiple after now: after a jump (a guest stopped
         * longer than a period) that one, not a burst of the missed ones. */
        uint64_t next_ns = (now_ns / period_ns + 1) * period_ns;
        struct timespec next = { .tv_sec = (time_t)(next_ns / 1000000000u), .tv_nsec = (long)(next_ns % 1000000000u) };
        if (runner_wait_stop(shared, &next))
            return NULL;
        clock_gettime(CLOCK_MONOTONIC, &now);
        now_ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
        runner_print("CLOCK mono_ns=%" PRIu64 "\n", now_ns);
    }
}

uint64_t linux_runner_thread_pages(uint64_t wss_bytes, unsigned threads, unsigned thread)
{
    uint64_t total_pages = (wss_bytes + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE;
    return total_pages / threads + (thread < total_pages % threads ? 1 : 0);
}

uint64_t linux_runner_calibrate_tsc_khz(void)
{
    struct timespec start, end;
    const struct timespec period = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };
    clock_gettime(CLOCK_MONOTONIC, &start);
    uint64_t tsc_start = read_tsc();
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &period, NULL) == EINTR)
        ;
    uint64_t tsc_end = read_tsc();
    clock_gettime(CLOCK_MONOTONIC, &end);
    uint64_t nanoseconds = (uint64_t)(end.tv_sec - start.tv_sec) * 1000000000ULL +
                           (uint64_t)end.tv_nsec - (uint64_t)start.tv_nsec;
    if (nanoseconds == 0 || tsc_end <= tsc_start)
        return 1000000;     /* cannot happen with a working TSC; assume 1 GHz */
    uint64_t khz = (tsc_end - tsc_start) * 1000000ULL / nanoseconds;
    return khz ? khz : 1;
}

/* ---- the dirtier (guest/dirtier.c) ---------------------------------------- */

static inline void runner_dirty_page(uint8_t *page, uint32_t write_bytes, uint64_t value)
{
    if (write_bytes >= RINGVM_PAGE_SIZE) {
        void *cursor = page;
        uint64_t words = RINGVM_PAGE_SIZE / 8;
        __asm__ volatile("rep stosq" : "+D"(cursor), "+c"(words) : "a"(value) : "memory");
    } else {
        *(volatile uint64_t *)page = value;
    }
}

static void runner_dirtier(struct runner_thread *thread)
{
    const struct linux_runner_config *config = thread->shared->config;
    volatile struct ringvm_vcpu_stats *stats = thread->stats;
    uint32_t write_bytes = config->spec.write_bytes;
    uint64_t count = config->spec.count;
    struct page_walk walk;
    page_walk_init(&walk, config->spec.pattern, thread->pages,
                   ringvm_vcpu_seed(config->spec.seed, thread->vcpu));
    struct pacing pacing;
    pacing_init(&pacing, config->spec.rate_pages_per_s, config->tsc_khz);

    uint64_t written = 0;
    unsigned until_flush = RUNNER_STATS_FLUSH_WRITES;
    for (;;) {
        uint64_t page = page_walk_next(&walk);
        runner_dirty_page(thread->region + page * RINGVM_PAGE_SIZE, write_bytes, written);
        written++;
        if (--until_flush == 0) {
            until_flush = RUNNER_STATS_FLUSH_WRITES;
            stats->pages_written = written;
            stats->passes = walk.passes;
            stats->tsc_last_update = read_tsc();
            if (runner_stopping(thread->shared))
                return;
        }
        if (written == count)
            break;
        if (pacing.enabled) {
            pacing_wait(&pacing);
            if (runner_stopping(thread->shared))
                break;
        }
    }
    stats->pages_written = written;
    stats->passes = walk.passes;
    stats->tsc_last_update = read_tsc();
}

/* ---- the ledger (guest/ledger.c) ------------------------------------------ */

static inline void runner_ledger_write(struct runner_ledger *ledger, uint64_t page)
{
    uint32_t generation = ledger_page_write(ledger->region, ledger->table, ledger->seed, ledger->write_bytes, page);
    if (generation > ledger->highest_generation)
        ledger->highest_generation = generation;
}

static void runner_ledger_corrupt_if_asked(struct runner_ledger *ledger)
{
    const struct linux_runner_config *config = ledger->thread->shared->config;
    if (!config->corrupt || config->corrupt_vcpu != ledger->thread->vcpu || ledger->passes != 1 ||
        config->corrupt_page >= ledger->pages)
        return;
    volatile uint8_t *generation_low_byte =
        ledger->region + config->corrupt_page * RINGVM_PAGE_SIZE + offsetof(struct ringvm_ledger_record, generation);
    *generation_low_byte ^= 0x80;
}

/* One pass over every page of the region: reads only, then one verdict line. */
static void runner_ledger_verify(struct runner_ledger *ledger)
{
    unsigned vcpu = ledger->thread->vcpu;
    uint64_t mismatches = 0;
    for (uint64_t page = 0; page < ledger->pages; page++) {
        uint64_t want = ledger->table[page], generation;
        if (ledger_page_good(ledger->region, ledger->seed, page, want, &generation))
            continue;
        mismatches++;
        ledger->stats->ledger_mismatches = ledger->stats->ledger_mismatches + 1;
        ledger->stats->ledger_last_mismatch_page = page;
        if (mismatches <= RUNNER_REPORTED_MISMATCHES_PER_PASS) {
            runner_print("LEDGER MISMATCH page=%" PRIu64 " want=%" PRIu64 " got=%" PRIu64 " vcpu=%u\n",
                         page, want, generation, vcpu);
            linux_channel_send(ledger->thread->shared->config->channel, RINGVM_CMD_LEDGER_MISMATCH,
                               page);
        }
    }
    if (mismatches == 0) {
        ledger->stats->ledger_verify_ok = ledger->stats->ledger_verify_ok + 1;
        runner_print("LEDGER OK pages=%" PRIu64 " gen=%" PRIu64 " vcpu=%u\n", ledger->pages,
                     ledger->highest_generation, vcpu);
    } else {
        runner_print("LEDGER FAIL mismatches=%" PRIu64 " pages=%" PRIu64 " gen=%" PRIu64 " vcpu=%u\n",
                     mismatches, ledger->pages, ledger->highest_generation, vcpu);
    }
    ledger->thread->mismatches += mismatches;
    ledger->passes++;
    runner_ledger_corrupt_if_asked(ledger);
}

static bool runner_ledger_verify_due(struct runner_ledger *ledger)
{
    if (ledger->verify_ticks == 0)
        return false;
    uint64_t now = read_tsc();
    if ((int64_t)(now - ledger->next_verify) < 0)
        return false;
    ledger->next_verify = now + ledger->verify_ticks;
    return true;
}

/* Returns false when stopped before the end (no final verdict then). */
static bool runner_ledger_run(struct runner_thread *thread, struct runner_ledger *ledger)
{
    const struct linux_runner_config *config = thread->shared->config;
    struct page_walk walk;
    page_walk_init(&walk, config->spec.pattern, ledger->pages, ledger->seed);
    struct pacing pacing;
    pacing_init(&pacing, config->spec.rate_pages_per_s, config->tsc_khz);
    uint64_t count = config->spec.count;
    volatile struct ringvm_vcpu_stats *stats = ledger->stats;

    uint64_t written = 0;
    unsigned until_flush = RUNNER_STATS_FLUSH_WRITES;
    for (;;) {
        runner_ledger_write(ledger, page_walk_next(&walk));
        written++;
        if (--until_flush == 0) {
            until_flush = RUNNER_STATS_FLUSH_WRITES;
            stats->pages_written = written;
            stats->passes = walk.passes;
            stats->ledger_generation = ledger->highest_generation;
            stats->tsc_last_update = read_tsc();
            if (runner_stopping(thread->shared))
                return false;
            if (runner_ledger_verify_due(ledger))
                runner_ledger_verify(ledger);
        }
        if (written == count)
            break;
        if (pacing.enabled) {
            pacing_wait(&pacing);
            if (runner_stopping(thread->shared))
                return false;
        }
    }
    stats->pages_written = written;
    stats->passes = walk.passes;
    stats->ledger_generation = ledger->highest_generation;
    stats->tsc_last_update = read_tsc();
    /* A finite run always ends with a verdict. */
    runner_ledger_verify(ledger);
    return true;
}

/* After a finite run: a read-only pass every verify seconds until stopped
 * (the built-in guest spins for it; a Linux thread sleeps). */
static void runner_ledger_verify_forever(struct runner_thread *thread, struct runner_ledger *ledger)
{
    unsigned seconds = thread->shared->config->spec.verify_seconds;
    if (seconds == 0)
        return;
    for (;;) {
        struct timespec deadline = runner_deadline_after(seconds);
        if (runner_wait_stop(thread->shared, &deadline))
            return;
        runner_ledger_verify(ledger);
    }
}

static void runner_ledger(struct runner_thread *thread)
{
    const struct linux_runner_config *config = thread->shared->config;
    struct runner_ledger ledger = {
        .thread = thread,
        .region = thread->region,
        .table = thread->table_memory,
        .pages = thread->pages,
        .seed = ringvm_vcpu_seed(config->spec.seed, thread->vcpu),
        .write_bytes = config->spec.write_bytes,
        .verify_ticks = (uint64_t)config->spec.verify_seconds * config->tsc_khz * 1000,
        .stats = thread->stats,
    };
    ledger.next_verify = read_tsc() + ledger.verify_ticks;
    if (!runner_ledger_run(thread, &ledger))
        return;
    runner_set_phase(thread, RINGVM_PHASE_DONE);
    runner_ledger_verify_forever(thread, &ledger);
}

/* ---- threads ---------------------------------------------------------------- */

/* Transparent huge pages for the working set: on a PVM host (HOST-KVM.md)
 * every page the guest kernel populates costs milliseconds of emulated
 * ring 0 (allocation, accounting, page-table writes), so a 2 MiB page
 * populated at once is 512 of those costs paid once. The kernel of 6.1
 * aligns no anonymous mapping to 2 MiB, so the mapping is over-allocated
 * and trimmed to an aligned start. */
#define RUNNER_HUGE_PAGE_BYTES (2u << 20)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23   /* Linux 5.14, uapi asm-generic/mman-common.h */
#endif

/* `bytes` of private anonymous memory, 2 MiB-aligned and asking for huge
 * pages where the kernel has them, not yet populated; NULL with errno set
 * on failure. munmap(result, bytes) releases it. */
static void *runner_map_anonymous(size_t bytes)
{
    size_t slack = bytes >= RUNNER_HUGE_PAGE_BYTES ? RUNNER_HUGE_PAGE_BYTES : 0;
    uint8_t *mapping = mmap(NULL, bytes + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED)
        return NULL;
    uint8_t *start = mapping;
    if (slack != 0) {
        start = (uint8_t *)(((uintptr_t)mapping + RUNNER_HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(RUNNER_HUGE_PAGE_BYTES - 1));
        size_t head = (size_t)(start - mapping), tail = slack - head;
        if ((head != 0 && munmap(mapping, head) != 0) || (tail != 0 && munmap(start + bytes, tail) != 0)) {
            /* A trim failed: give back what is still mapped (unmapping the
             * part a trim already gave back is harmless). */
            int saved = errno;
            munmap(mapping, bytes + slack);
            errno = saved;
            return NULL;
        }
        /* EINVAL or ENOSYS: a kernel without CONFIG_TRANSPARENT_HUGEPAGE or
         * CONFIG_ADVISE_SYSCALLS; small pages then. */
        (void)madvise(start, bytes, MADV_HUGEPAGE);
    }
    return start;
}

/* Every page of runner_map_anonymous's `bytes` at `start` present, so the
 * writer loops measure writes, not first-touch faults. 0, or -1 with errno
 * set. */
static int runner_populate(void *start, size_t bytes)
{
    if (madvise(start, bytes, MADV_POPULATE_WRITE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* A kernel before 5.14 or without CONFIG_ADVISE_SYSCALLS: the same range
     * mapped again, populated. */
    void *again = mmap(start, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE,
                       -1, 0);
    return again == MAP_FAILED ? -1 : 0;
}

/* Until every workload thread has made its mmap calls (or the run stops):
 * an mmap takes the process's mmap lock for writing, which waits for any
 * populate in progress (it holds the lock for reading throughout), so a
 * thread mapping late would start populating only once another finished.
 * With every mapping made first, the threads populate side by side. */
static void runner_wait_all_mapped(struct runner_thread *thread)
{
    struct runner_shared *shared = thread->shared;
    pthread_mutex_lock(&shared->lock);
    shared->mapped++;
    pthread_cond_broadcast(&shared->changed);
    while (shared->mapped < shared->config->threads && !atomic_load_explicit(&shared->stop, memory_order_relaxed))
        pthread_cond_wait(&shared->changed, &shared->lock);
    pthread_mutex_unlock(&shared->lock);
}

/* Maps the thread's part of the working set (from --wss-at's RAM, or
 * anonymous memory) and the ledger's table; runner_populate_thread fills
 * the anonymous ones in. */
static int runner_map(struct runner_thread *thread)
{
    const struct linux_runner_config *config = thread->shared->config;
    size_t region_bytes = (size_t)(thread->pages * RINGVM_PAGE_SIZE);
    if (config->wss_phys != 0) {
        uint64_t first_page = 0;
        for (unsigned t = 0; t < thread->vcpu; t++)
            first_page += linux_runner_thread_pages(config->spec.wss_bytes, config->threads, t);
        uint64_t offset = config->wss_phys + first_page * RINGVM_PAGE_SIZE;
        char reason[256];
        thread->region = linux_memory_map(config->memory_path, offset, region_bytes, reason, sizeof(reason));
        if (thread->region == NULL) {
            fprintf(stderr, "ringvm-workload: vcpu %u: --wss-at: %s\n", thread->vcpu, reason);
            return -1;
        }
    } else {
        thread->region = runner_map_anonymous(region_bytes);
        if (thread->region == NULL) {
            fprintf(stderr, "ringvm-workload: vcpu %u: cannot allocate its %" PRIu64 " pages: %s\n",
                    thread->vcpu, thread->pages, strerror(errno));
            return -1;
        }
    }
    if (config->spec.kind == RINGVM_WORKLOAD_LEDGER) {
        size_t table_bytes = (size_t)thread->pages * sizeof(uint32_t);
        thread->table_memory = runner_map_anonymous(table_bytes);
        if (thread->table_memory == NULL) {
            fprintf(stderr, "ringvm-workload: vcpu %u: cannot allocate its ledger table (%zu bytes): %s\n",
                    thread->vcpu, table_bytes, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int runner_populate_thread(struct runner_thread *thread)
{
    const struct linux_runner_config *config = thread->shared->config;
    if (config->wss_phys == 0 && runner_populate(thread->region, (size_t)(thread->pages * RINGVM_PAGE_SIZE)) != 0) {
        fprintf(stderr, "ringvm-workload: vcpu %u: cannot populate its %" PRIu64 " pages: %s\n", thread->vcpu,
                thread->pages, strerror(errno));
        return -1;
    }
    if (thread->table_memory != NULL &&
        runner_populate(thread->table_memory, (size_t)thread->pages * sizeof(uint32_t)) != 0) {
        fprintf(stderr, "ringvm-workload: vcpu %u: cannot populate its ledger table: %s\n", thread->vcpu,
                strerror(errno));
        return -1;
    }
    return 0;
}

static void runner_release(struct runner_thread *thread)
{
    if (thread->region != NULL && munmap(thread->region, (size_t)(thread->pages * RINGVM_PAGE_SIZE)) != 0)
        fprintf(stderr, "ringvm-workload: vcpu %u: munmap of its region: %s\n", thread->vcpu, strerror(errno));
    if (thread->table_memory != NULL &&
        munmap(thread->table_memory, (size_t)thread->pages * sizeof(uint32_t)) != 0)
        fprintf(stderr, "ringvm-workload: vcpu %u: munmap of its table: %s\n", thread->vcpu, strerror(errno));
    thread->region = NULL;
    thread->table_memory = NULL;
}

static void runner_pin(struct runner_thread *thread)
{
    struct runner_shared *shared = thread->shared;
    int cpu = shared->cpus[thread->vcpu % shared->cpu_count];
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    /* Takes effect before it returns: doorbell stores after it exit on
     * this thread's own vCPU. */
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        fprintf(stderr, "ringvm-workload: vcpu %u: cannot pin to CPU %d (running unpinned): %s\n",
                thread->vcpu, cpu, strerror(errno));
}

static void *runner_thread_main(void *argument)
{
    struct runner_thread *thread = argument;
    const struct linux_runner_config *config = thread->shared->config;
    char name[16];
    snprintf(name, sizeof(name), "vcpu%u", thread->vcpu);
    pthread_setname_np(pthread_self(), name);
    runner_pin(thread);

    bool writes = config->spec.kind == RINGVM_WORKLOAD_DIRTIER || config->spec.kind == RINGVM_WORKLOAD_LEDGER;
    bool allocates = writes && thread->pages > 0;
    int mapped = allocates ? runner_map(thread) : 0;
    runner_wait_all_mapped(thread);     /* every thread, so none waits for one that maps nothing */
    if (allocates && (mapped != 0 || runner_populate_thread(thread) != 0)) {
        thread->failed = true;
    } else {
        runner_set_phase(thread, RINGVM_PHASE_RING3);
        if (config->spec.kind == RINGVM_WORKLOAD_IDLE) {
            runner_wait_stop(thread->shared, NULL);
        } else if (thread->pages == 0) {
            /* Fewer pages than vCPUs: nothing to write (as the built-in guest). */
            runner_set_phase(thread, RINGVM_PHASE_DONE);
        } else if (config->spec.kind == RINGVM_WORKLOAD_DIRTIER) {
            runner_dirtier(thread);
            if (!runner_stopping(thread->shared))
                runner_set_phase(thread, RINGVM_PHASE_DONE);
        } else {
            runner_ledger(thread);
        }
    }
    runner_release(thread);

    pthread_mutex_lock(&thread->shared->lock);
    thread->shared->running--;
    pthread_cond_broadcast(&thread->shared->changed);
    pthread_mutex_unlock(&thread->shared->lock);
    return NULL;
}

static int runner_collect_cpus(struct runner_shared *shared)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        fprintf(stderr, "ringvm-workload: sched_getaffinity: %s\n", strerror(errno));
        return -1;
    }
    shared->cpu_count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set))
            shared->cpus[shared->cpu_count++] = cpu;
    if (shared->cpu_count == 0) {
        fprintf(stderr, "ringvm-workload: sched_getaffinity returned no CPU\n");
        return -1;
    }
    return 0;
}

static int runner_init_shared(struct runner_shared *shared, const struct linux_runner_config *config)
{
    memset(shared, 0, sizeof(*shared));
    shared->config = config;
    atomic_init(&shared->stop, false);
    pthread_condattr_t attributes;
    int result = pthread_condattr_init(&attributes);
    if (result == 0)
        result = pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    if (result == 0)
        result = pthread_cond_init(&shared->changed, &attributes);
    pthread_condattr_destroy(&attributes);
    if (result == 0)
        result = pthread_mutex_init(&shared->lock, NULL);
    if (result != 0) {
        fprintf(stderr, "ringvm-workload: cannot initialise the thread condition: %s\n", strerror(result));
        return -1;
    }
    return runner_collect_cpus(shared);
}

int linux_runner_run(const struct linux_runner_config *config)
{
    if (config->threads == 0 || config->threads > RINGVM_MAX_VCPUS) {
        fprintf(stderr, "ringvm-workload: %u threads is outside 1..%d\n", config->threads, RINGVM_MAX_VCPUS);
        return 1;
    }
    static struct runner_shared shared;
    if (runner_init_shared(&shared, config) != 0)
        return 1;
    struct runner_thread *threads = calloc(config->threads, sizeof(*threads));
    if (threads == NULL) {
        fprintf(stderr, "ringvm-workload: cannot allocate %u thread records\n", config->threads);
        return 1;
    }

    bool writes = config->spec.kind == RINGVM_WORKLOAD_DIRTIER || config->spec.kind == RINGVM_WORKLOAD_LEDGER;
    int status = 0;
    pthread_mutex_lock(&shared.lock);
    for (unsigned i = 0; i < config->threads; i++) {
        struct runner_thread *thread = &threads[i];
        thread->shared = &shared;
        thread->vcpu = i;
        thread->pages = writes ? linux_runner_thread_pages(config->spec.wss_bytes, config->threads, i) : 0;
        thread->stats = linux_channel_stats(config->channel, i);
        if (thread->stats == NULL && config->stats_slots != NULL)
            thread->stats = config->stats_slots + i;
        if (thread->stats == NULL)
            thread->stats = &thread->local;
        int result = pthread_create(&thread->thread, NULL, runner_thread_main, thread);
        if (result != 0) {
            fprintf(stderr, "ringvm-workload: cannot start the thread of vcpu %u: %s\n", i, strerror(result));
            status = 1;
            break;
        }
        thread->started = true;
        shared.running++;
    }

    pthread_t clock_thread;
    bool clock_started = false;
    if (config->clock_lines && status == 0) {
        int result = pthread_create(&clock_thread, NULL, runner_clock_main, &shared);
        if (result != 0) {
            fprintf(stderr, "ringvm-workload: cannot start the clock thread: %s\n", strerror(result));
            status = 1;
        }
        clock_started = result == 0;
    }

    /* Wait for every thread to end, or for the deadline. */
    struct timespec deadline = runner_deadline_after(config->seconds);
    while (shared.running > 0 && status == 0) {
        int result = config->seconds ? pthread_cond_timedwait(&shared.changed, &shared.lock, &deadline)
                                     : pthread_cond_wait(&shared.changed, &shared.lock);
        if (result == ETIMEDOUT)
            break;
    }
    atomic_store_explicit(&shared.stop, true, memory_order_relaxed);
    pthread_cond_broadcast(&shared.changed);
    pthread_mutex_unlock(&shared.lock);

    for (unsigned i = 0; i < config->threads; i++) {
        if (!threads[i].started)
            continue;
        int result = pthread_join(threads[i].thread, NULL);
        if (result != 0) {
            fprintf(stderr, "ringvm-workload: cannot join the thread of vcpu %u: %s\n", i, strerror(result));
            status = 1;
        }
        if (threads[i].failed || threads[i].mismatches > 0)
            status = 1;
    }
    if (clock_started) {
        int result = pthread_join(clock_thread, NULL);
        if (result != 0) {
            fprintf(stderr, "ringvm-workload: cannot join the clock thread: %s\n", strerror(result));
            status = 1;
        }
    }
    free(threads);
    return status;
}
