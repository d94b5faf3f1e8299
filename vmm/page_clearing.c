#include "vmm/page_clearing.h"

#include <errno.h>
#include <string.h>

#include "dirtyring/dirty_log.h"
#include "guest/abi.h"
#include "vmm/host.h"
#include "vmm/memory.h"

int page_clearing_decode(uint64_t argument, uint64_t *gpa, uint64_t *bytes)
{
    unsigned order = (unsigned)(argument & 15);
    uint64_t pfn = argument >> 4;
    if (order > RINGVM_CLEAR_PAGES_MAX_ORDER || (pfn & ((1ull << order) - 1)) != 0 || pfn >= (1ull << 52))
        return -EINVAL;
    *gpa = pfn * RINGVM_PAGE_SIZE;
    *bytes = RINGVM_PAGE_SIZE << order;
    return 0;
}

int page_clearing_clear(struct guest_memory *memory, struct dirty_log *log, uint64_t gpa, uint64_t bytes)
{
    uint8_t *host = guest_memory_gpa_to_host(memory, gpa, bytes);
    if (host == NULL || bytes == 0)
        return -EFAULT;
    memset(host, 0, bytes);
    /* After the memset: a migration that takes the mark reads the page
     * cleared; one that read it before the mark sends it again. */
    dirty_log_mark_range(log, (uint64_t)(host - memory->host), bytes);
    return 0;
}

uint32_t page_clearing_probe_value(bool offered)
{
    return offered ? RINGVM_CLEAR_PAGES_MAGIC : UINT32_MAX;
}

bool page_clearing_offered_here(void)
{
    return host_kvm_is_pvm();
}
