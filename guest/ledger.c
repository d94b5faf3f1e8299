/*
 * The `ledger` workload (ring 3): the end-to-end proof that no guest write
 * is lost (by migration, dirty tracking, ...).
 *
 * Every write to page P of this vCPU's region stores a struct
 * ringvm_ledger_record {P, generation, checksum} at the start of the page
 * (plus a deterministic fill up to write_bytes), then the generation in the
 * vCPU's table (uint32 per page at table_gpa). Page generations count up
 * from 1; table 0 means "never written", and then the page's record must
 * still be all zero. Every verify_seconds a pass over ALL the region's pages
 * compares pages and table and reports on the console:
 *   LEDGER OK pages=P gen=G vcpu=N
 *   LEDGER MISMATCH page=P want=W got=X vcpu=N     (per bad page)
 * plus RINGVM_CMD_LEDGER_MISMATCH per bad page and the ledger_* counters.
 */
#include "guest/guest.h"
#include "guest/ledger_page.h"
#include "guest/pacing.h"
#include "guest/page_walk.h"

#define GUEST_STATS_FLUSH_WRITES 256
/* Console lines and doorbell commands per pass are capped so a wholesale
 * corruption cannot flood the VMM; the counters still count every page. */
#define LEDGER_REPORTED_MISMATCHES_PER_PASS 32

struct ledger {
    unsigned vcpu;
    const struct ringvm_bootinfo *info;
    uint8_t *region;
    volatile uint32_t *table;
    uint64_t pages;
    uint64_t seed;
    uint32_t write_bytes;
    uint64_t highest_generation;
    uint64_t verify_ticks;      /* 0 = no periodic verify */
    uint64_t next_verify;
    volatile struct ringvm_vcpu_stats *stats;
};

static inline void ledger_write(struct ledger *ledger, uint64_t page)
{
    uint32_t generation = ledger_page_write(ledger->region, ledger->table, ledger->seed, ledger->write_bytes, page);
    if (generation > ledger->highest_generation)
        ledger->highest_generation = generation;
}

static void report_mismatch(struct ledger *ledger, uint64_t page, uint64_t want, uint64_t got)
{
    struct text text;
    text_reset(&text);
    text_append(&text, "LEDGER MISMATCH page=");
    text_append_u64(&text, page);
    text_append(&text, " want=");
    text_append_u64(&text, want);
    text_append(&text, " got=");
    text_append_u64(&text, got);
    text_append(&text, " vcpu=");
    text_append_u64(&text, ledger->vcpu);
    text_append(&text, "\n");
    console_write_text(ledger->info, &text);
    doorbell_send(ledger->info, RINGVM_CMD_LEDGER_MISMATCH, page);
}

/* One pass over every page of the region. Reads only (plus the stats page
 * and a console line on the stack), so it does not dirty the region. */
static void ledger_verify(struct ledger *ledger)
{
    uint64_t mismatches = 0;
    for (uint64_t page = 0; page < ledger->pages; page++) {
        uint64_t want = ledger->table[page], generation;
        if (ledger_page_good(ledger->region, ledger->seed, page, want, &generation))
            continue;
        mismatches++;
        ledger->stats->ledger_mismatches = ledger->stats->ledger_mismatches + 1;
        ledger->stats->ledger_last_mismatch_page = page;
        if (mismatches <= LEDGER_REPORTED_MISMATCHES_PER_PASS)
            report_mismatch(ledger, page, want, generation);
    }

    struct text text;
    text_reset(&text);
    if (mismatches == 0) {
        ledger->stats->ledger_verify_ok = ledger->stats->ledger_verify_ok + 1;
        text_append(&text, "LEDGER OK pages=");
    } else {
        text_append(&text, "LEDGER FAIL mismatches=");
        text_append_u64(&text, mismatches);
        text_append(&text, " pages=");
    }
    text_append_u64(&text, ledger->pages);
    text_append(&text, " gen=");
    text_append_u64(&text, ledger->highest_generation);
    text_append(&text, " vcpu=");
    text_append_u64(&text, ledger->vcpu);
    text_append(&text, "\n");
    console_write_text(ledger->info, &text);
}

static void ledger_init(struct ledger *ledger, unsigned vcpu, const struct ringvm_bootinfo *info)
{
    const struct ringvm_vcpu_bootinfo *mine = &info->vcpu[vcpu];
    ledger->vcpu = vcpu;
    ledger->info = info;
    ledger->region = (uint8_t *)(uintptr_t)mine->region_gpa;
    ledger->table = (volatile uint32_t *)(uintptr_t)mine->table_gpa;
    ledger->pages = mine->region_pages;
    ledger->seed = mine->seed;
    ledger->write_bytes = info->write_bytes;
    ledger->stats = vcpu_stats(info, vcpu);
    ledger->highest_generation = 0;
    ledger->verify_ticks = (uint64_t)info->verify_seconds * info->tsc_khz * 1000;
    ledger->next_verify = read_tsc() + ledger->verify_ticks;
}

static int ledger_verify_due(struct ledger *ledger)
{
    if (ledger->verify_ticks == 0)
        return 0;
    uint64_t now = read_tsc();
    if ((int64_t)(now - ledger->next_verify) < 0)
        return 0;
    ledger->next_verify = now + ledger->verify_ticks;
    return 1;
}

void ledger_run(unsigned vcpu, const struct ringvm_bootinfo *info)
{
    struct ledger ledger;
    ledger_init(&ledger, vcpu, info);
    if (ledger.pages == 0 || ledger.table == 0)
        return;

    struct page_walk walk;
    page_walk_init(&walk, info->pattern, ledger.pages, ledger.seed);
    struct pacing pacing;
    pacing_init(&pacing, info->rate_pages_per_s, info->tsc_khz);
    uint64_t count = info->count;
    volatile struct ringvm_vcpu_stats *stats = ledger.stats;

    uint64_t written = 0;
    unsigned until_flush = GUEST_STATS_FLUSH_WRITES;
    for (;;) {
        ledger_write(&ledger, page_walk_next(&walk));
        written++;
        if (--until_flush == 0) {
            until_flush = GUEST_STATS_FLUSH_WRITES;
            stats->pages_written = written;
            stats->passes = walk.passes;
            stats->ledger_generation = ledger.highest_generation;
            stats->tsc_last_update = read_tsc();
            if (ledger_verify_due(&ledger))
                ledger_verify(&ledger);
        }
        if (written == count)
            break;
        if (pacing.enabled)
            pacing_wait(&pacing);
    }
    stats->pages_written = written;
    stats->passes = walk.passes;
    stats->ledger_generation = ledger.highest_generation;
    stats->tsc_last_update = read_tsc();
    /* A finite run always ends with a verdict. */
    ledger_verify(&ledger);
}

/* After a finite run (phase DONE): keep verifying every verify_seconds
 * without writing the region, so a test can corrupt a page from the VMM
 * and see the mismatch deterministically. Returns at once if verify is 0. */
void ledger_verify_forever(unsigned vcpu, const struct ringvm_bootinfo *info)
{
    struct ledger ledger;
    ledger_init(&ledger, vcpu, info);
    if (ledger.pages == 0 || ledger.table == 0 || ledger.verify_ticks == 0)
        return;
    for (uint64_t page = 0; page < ledger.pages; page++)
        if (ledger.table[page] > ledger.highest_generation)
            ledger.highest_generation = ledger.table[page];
    for (;;) {
        while (!ledger_verify_due(&ledger))
            cpu_relax();
        ledger_verify(&ledger);
    }
}
