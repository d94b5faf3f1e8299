/*
 * The page-clearing port (guest/abi.h, RINGVM_CMD_CLEAR_PAGES): a Linux
 * guest kernel hands ringvm the pages it is about to clear, and ringvm
 * clears them with a native memset. On PVM hosts every instruction of the
 * guest's ring 0 is emulated, and clearing memory was most of the time a
 * Linux workload took to fault in its working set (guest/linux/README.md,
 * "On PVM hosts"); the guest image's kernel patch 0006 takes this route
 * when the probe answers.
 *
 * Runs on the vCPU thread that exited with the request; holds no state of
 * its own. A page it clears while dirty tracking is on is marked in the
 * dirty set after the memset (dirty_log_mark_range), so a migration that
 * read the page before sends it again.
 */
#ifndef RINGVM_VMM_PAGE_CLEARING_H
#define RINGVM_VMM_PAGE_CLEARING_H

#include <stdbool.h>
#include <stdint.h>

struct dirty_log;
struct guest_memory;

/* Decodes a request's argument, (pfn << 4) | order. 0 with the guest
 * physical range, or -EINVAL: order above RINGVM_CLEAR_PAGES_MAX_ORDER, a
 * pfn not aligned to 2^order, or a range past 2^64. */
int page_clearing_decode(uint64_t argument, uint64_t *gpa, uint64_t *bytes);

/* Clears [gpa, gpa + bytes) of guest RAM, then marks it in log (NULL or
 * not tracking: no mark). -EFAULT, with nothing written, when the range is
 * not wholly inside one RAM region (the 3-4 GiB hole, past the end). */
int page_clearing_clear(struct guest_memory *memory, struct dirty_log *log, uint64_t gpa, uint64_t bytes);

/* What a 32-bit IN of the port reads: RINGVM_CLEAR_PAGES_MAGIC when
 * offered, all ones when not (what an unclaimed port reads). */
uint32_t page_clearing_probe_value(bool offered);

/* Whether this host should offer it: PVM hosts (vmm/host.h), where the
 * guest's ring 0 is emulated. On a VMX/SVM host the guest's own clearing is
 * native and an exit per page would only cost. */
bool page_clearing_offered_here(void);

#endif
