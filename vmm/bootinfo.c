/* Boot info encoding and the workload memory layout; see bootinfo.h. */
#include "vmm/bootinfo.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "vmm/size.h"

/* Hands out page-aligned guest-physical ranges from RINGVM_WORKLOAD_BASE
 * upwards, never across the end of a memslot. */
struct layout_cursor {
    const struct guest_memory *memory;
    unsigned slot;          /* index into memory->slots */
    uint64_t next;          /* next free gpa in that slot */
};

static bool layout_take(struct layout_cursor *cursor, uint64_t bytes, uint64_t *gpa)
{
    const struct guest_memory *memory = cursor->memory;
    while (cursor->slot < memory->slot_count) {
        const struct guest_memory_slot *slot = &memory->slots[cursor->slot];
        uint64_t end = slot->gpa + slot->size;
        if (cursor->next < slot->gpa)
            cursor->next = slot->gpa;
        if (cursor->next <= end && bytes <= end - cursor->next) {
            *gpa = cursor->next;
            cursor->next += bytes;
            return true;
        }
        cursor->slot++;     /* does not fit below the hole: continue above it */
    }
    return false;
}

static void fill_parameters(struct ringvm_bootinfo *info, const struct workload_spec *spec,
                            const struct guest_memory *memory, unsigned vcpu_count,
                            uint64_t tsc_khz)
{
    memset(info, 0, sizeof(*info));
    info->magic = RINGVM_BOOTINFO_MAGIC;
    info->abi_version = RINGVM_ABI_VERSION;
    info->vcpu_count = vcpu_count;
    info->memory_bytes = memory->size;
    info->tsc_khz = tsc_khz;
    info->doorbell_gpa = RINGVM_DOORBELL_GPA;
    info->stats_gpa = RINGVM_STATS_GPA;
    info->workload = spec->kind;
    info->pattern = spec->pattern;
    info->rate_pages_per_s = spec->rate_pages_per_s;
    info->write_bytes = spec->write_bytes;
    info->verify_seconds = spec->verify_seconds;
    info->count = spec->count;
    info->fault_kind = spec->fault_kind;
    info->fault_ring = spec->fault_ring;
    for (unsigned i = 0; i < vcpu_count; i++)
        info->vcpu[i].seed = ringvm_vcpu_seed(spec->seed, i);
}

int bootinfo_build(struct ringvm_bootinfo *info, const struct workload_spec *spec,
                   const struct guest_memory *memory, unsigned vcpu_count, uint64_t tsc_khz,
                   char *error, size_t error_size)
{
    if (vcpu_count == 0 || vcpu_count > RINGVM_MAX_VCPUS) {
        snprintf(error, error_size, "--vcpus: %u vCPUs is outside 1..%d", vcpu_count,
                 RINGVM_MAX_VCPUS);
        return -1;
    }
    if (spec->write_bytes != 8 && spec->write_bytes != RINGVM_PAGE_SIZE) {
        snprintf(error, error_size, "--workload: write=%u is not 8 or 4096", spec->write_bytes);
        return -1;
    }
    fill_parameters(info, spec, memory, vcpu_count, tsc_khz);

    bool ledger = spec->kind == RINGVM_WORKLOAD_LEDGER;
    if (!ledger && spec->kind != RINGVM_WORKLOAD_DIRTIER)
        return 0;   /* idle and fault touch no working set */

    uint64_t total_pages = (spec->wss_bytes + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE;
    struct layout_cursor cursor = { .memory = memory, .slot = 0, .next = RINGVM_WORKLOAD_BASE };
    bool fits = true;
    for (unsigned i = 0; i < vcpu_count && fits; i++) {
        uint64_t pages = total_pages / vcpu_count + (i < total_pages % vcpu_count ? 1 : 0);
        info->vcpu[i].region_pages = pages;
        fits = layout_take(&cursor, pages * RINGVM_PAGE_SIZE, &info->vcpu[i].region_gpa);
    }
    for (unsigned i = 0; i < vcpu_count && fits && ledger; i++) {
        uint64_t table_bytes = info->vcpu[i].region_pages * sizeof(uint32_t);
        table_bytes = (table_bytes + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE * RINGVM_PAGE_SIZE;
        fits = layout_take(&cursor, table_bytes, &info->vcpu[i].table_gpa);
    }
    if (!fits) {
        char wss[32], ram[32];
        size_format(spec->wss_bytes, wss, sizeof(wss));
        size_format(memory->size, ram, sizeof(ram));
        snprintf(error, error_size, "--workload: wss %s%s does not fit in %s of guest memory",
                 wss, ledger ? " plus ledger tables" : "", ram);
        memset(info->vcpu, 0, sizeof(info->vcpu));
        return -1;
    }
    return 0;
}
