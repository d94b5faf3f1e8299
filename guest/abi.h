/*
 * The contract between the VMM (vmm/) and the built-in guest (guest/).
 *
 * Both sides include this file; it must stay freestanding (stdint only) and
 * every struct here is shared memory with a fixed layout: add fields only at
 * the end and bump RINGVM_ABI_VERSION.
 *
 * Guest-physical layout (identity mapped; guest virtual == guest physical):
 *
 *   0x0000_0000  null page (never mapped present by the guest)
 *   0x0000_1000  boot info page           written by the VMM before start
 *   0x0000_2000  stats pages (32 KiB)     written by the guest, read by the VMM
 *   0x0001_0000  page tables (VMM-built for direct 64-bit boot, U=1 everywhere)
 *   0x0010_0000  guest ELF image (PT_LOAD physical addresses)
 *   ...          guest-owned: GDT/TSS/IDT, per-vCPU stacks
 *   0x0100_0000  RINGVM_WORKLOAD_BASE: workload regions and ledger tables
 *                (placed by the VMM, described per vCPU in the boot info)
 *   0xC000_0000  RAM stops here when memory > 3 GiB and continues at 4 GiB
 *   0xD000_0000  MMIO doorbell page (no memslot: ring-3 writes exit natively)
 *
 * Why a doorbell: guest ring 0 is emulated on PVM hosts and IOPL=3 set by an
 * emulated iretq is ignored, so ring-3 code cannot use port I/O. A ring-3
 * store to a guest-physical address outside every memslot exits to the VMM as
 * KVM_EXIT_MMIO, natively. Ring-0 code (exception handlers, early boot) uses
 * the control port instead; both carry the same commands.
 */
#ifndef RINGVM_GUEST_ABI_H
#define RINGVM_GUEST_ABI_H

#include <stdint.h>

#define RINGVM_ABI_VERSION          2
#define RINGVM_BOOTINFO_MAGIC       0x4f464e49474e4952ULL /* "RINGINFO" */

#define RINGVM_PAGE_SIZE            4096ULL
#define RINGVM_BOOTINFO_GPA         0x1000ULL
#define RINGVM_STATS_GPA            0x2000ULL
#define RINGVM_STATS_SIZE           0x8000ULL
#define RINGVM_PAGE_TABLES_GPA      0x10000ULL
#define RINGVM_PAGE_TABLES_SIZE     0xF0000ULL  /* up to 0x100000 */
#define RINGVM_IMAGE_GPA            0x100000ULL
#define RINGVM_WORKLOAD_BASE        0x1000000ULL
#define RINGVM_LOW_RAM_END          0xC0000000ULL
#define RINGVM_HIGH_RAM_BASE        0x100000000ULL
#define RINGVM_DOORBELL_GPA         0xD0000000ULL

#define RINGVM_MAX_VCPUS            64

/* Port I/O (ring 0 only): 8250 UART and the control port. */
#define RINGVM_SERIAL_PORT          0x3f8
/* Control port (ring 0 only): a 32-bit OUT of ARG to RINGVM_CONTROL_PORT +
 * 4*CMD. Ring 0 only passes addresses below 4 GiB, so 32 bits suffice. */
#define RINGVM_CONTROL_PORT         0x600
#define RINGVM_CONTROL_PORT_COUNT   16

/*
 * Commands. Doorbell: a 64-bit store of ARG to RINGVM_DOORBELL_GPA + 8*CMD.
 * Control port: a 32-bit OUT of ARG to RINGVM_CONTROL_PORT + 4*CMD.
 * The issuing vCPU is the one that exits, so no vCPU id is passed.
 */
enum ringvm_command {
    /* ARG = gpa | (len << 48): len bytes of text at gpa, len <= 4096. */
    RINGVM_CMD_CONSOLE_WRITE = 0,
    /* ARG = gpa of a struct ringvm_exception_report. The vCPU stops. */
    RINGVM_CMD_EXCEPTION = 1,
    /* ARG = enum ringvm_vcpu_phase reached by this vCPU. */
    RINGVM_CMD_PHASE = 2,
    /* ARG = exit code; the whole VM powers off. */
    RINGVM_CMD_POWEROFF = 3,
    /* ARG = page index (within this vCPU's region) of a ledger mismatch;
     * also reported as text on the console. */
    RINGVM_CMD_LEDGER_MISMATCH = 4,
    /* ARG = (pfn << 4) | order: the VMM clears the 2^order 4 KiB pages at
     * guest frame pfn (aligned to 2^order, order <= RINGVM_CLEAR_PAGES_MAX_ORDER)
     * natively before the OUT returns. A 32-bit IN of this command's
     * control port (0x614) reads RINGVM_CLEAR_PAGES_MAGIC where ringvm
     * offers it (PVM hosts, whose emulated ring 0 clears pages slowly) and
     * all ones elsewhere. The Linux guest image's kernel uses it
     * (guest/linux/patches/0006-x86-clear-pages-through-ringvm.patch);
     * the built-in guest does not. */
    RINGVM_CMD_CLEAR_PAGES = 5,
    RINGVM_CMD_COUNT
};

#define RINGVM_CLEAR_PAGES_MAGIC        0x50435652u  /* "RVCP" */
#define RINGVM_CLEAR_PAGES_MAX_ORDER    10

/* Every vCPU sends PHASE(RING3) once through the doorbell when its
 * workload starts (idle too: it then halts); dirtier/ledger send PHASE(DONE)
 * after `count` writes. A DONE vCPU halts in ring 0 (IF=0, blocks in
 * KVM_RUN) without writing memory, except a ledger with verify > 0, which
 * keeps running read-only verify passes (console + stats only). The fault
 * workload faults on every vCPU and sends no phase. */
enum ringvm_vcpu_phase {
    RINGVM_PHASE_BOOTING = 0,
    RINGVM_PHASE_RING3 = 1,     /* entered ring 3, workload starting */
    RINGVM_PHASE_DONE = 2,      /* finite workload finished; vCPU idles */
};

enum ringvm_workload_kind {
    RINGVM_WORKLOAD_IDLE = 0,
    RINGVM_WORKLOAD_DIRTIER = 1,
    RINGVM_WORKLOAD_LEDGER = 2,
    RINGVM_WORKLOAD_FAULT = 3,  /* raise an exception on purpose (tests) */
};

enum ringvm_pattern {
    RINGVM_PATTERN_SEQ = 0,
    RINGVM_PATTERN_RANDOM = 1,
    RINGVM_PATTERN_HOT = 2,     /* 90 % of writes to the first 10 % of pages */
};

enum ringvm_fault_kind {
    RINGVM_FAULT_UD = 0,        /* ud2: vector 6 */
    RINGVM_FAULT_PF = 1,        /* read of the null page: vector 14 */
    RINGVM_FAULT_DE = 2,        /* divide by zero: vector 0 */
    RINGVM_FAULT_BP = 3,        /* int3: vector 3 */
};

/* Per-vCPU slice of the workload. All addresses guest-physical. */
struct ringvm_vcpu_bootinfo {
    uint64_t region_gpa;        /* first page of this vCPU's working set */
    uint64_t region_pages;      /* pages in it (may be 0) */
    uint64_t table_gpa;         /* ledger: uint32_t generation per page */
    uint64_t seed;              /* per-vCPU PRNG seed */
    uint64_t reserved[2];       /* (v2: was 4, the page overflowed into stats) */
};

struct ringvm_bootinfo {
    uint64_t magic;             /* RINGVM_BOOTINFO_MAGIC */
    uint32_t abi_version;       /* RINGVM_ABI_VERSION */
    uint32_t vcpu_count;
    uint64_t memory_bytes;      /* total guest RAM */
    uint64_t tsc_khz;           /* guest TSC frequency, for pacing */
    uint64_t doorbell_gpa;      /* RINGVM_DOORBELL_GPA */
    uint64_t stats_gpa;         /* RINGVM_STATS_GPA */

    uint32_t workload;          /* enum ringvm_workload_kind */
    uint32_t pattern;           /* enum ringvm_pattern */
    uint64_t rate_pages_per_s;  /* per vCPU; 0 = as fast as possible */
    uint32_t write_bytes;       /* 8 or 4096 per page touched */
    uint32_t verify_seconds;    /* ledger: verify pass period; 0 = never */
    uint64_t count;             /* page writes per vCPU, then DONE; 0 = forever */
    uint32_t fault_kind;        /* enum ringvm_fault_kind */
    uint32_t fault_ring;        /* 0 or 3 */
    uint64_t reserved[8];

    struct ringvm_vcpu_bootinfo vcpu[RINGVM_MAX_VCPUS];
};

_Static_assert(sizeof(struct ringvm_bootinfo) <= RINGVM_PAGE_SIZE,
               "the boot info must fit its page (the stats pages follow)");

/*
 * Per-vCPU counters, one 256-byte slot per vCPU at stats_gpa + 256 * id.
 * Written only by that vCPU's guest code with plain aligned 64-bit stores
 * (atomic on x86); the VMM reads them with relaxed atomic loads.
 */
struct ringvm_vcpu_stats {
    uint64_t pages_written;     /* page writes since start */
    uint64_t passes;            /* completed passes over the region (seq) */
    uint64_t phase;             /* enum ringvm_vcpu_phase */
    uint64_t ledger_generation; /* highest generation written */
    uint64_t ledger_verify_ok;  /* verify passes that found no mismatch */
    uint64_t ledger_mismatches; /* pages found wrong, all passes */
    uint64_t ledger_last_mismatch_page; /* region page index, valid if mismatches > 0 */
    uint64_t tsc_last_update;   /* rdtsc at the last counter update */
    uint64_t reserved[24];
};

#define RINGVM_STATS_SLOT_SIZE 256
_Static_assert(sizeof(struct ringvm_vcpu_stats) == RINGVM_STATS_SLOT_SIZE, "stats slot size");
_Static_assert(RINGVM_STATS_SLOT_SIZE * RINGVM_MAX_VCPUS <= RINGVM_STATS_SIZE, "stats pages");

/* Filled by a ring-0 exception handler, reported with RINGVM_CMD_EXCEPTION. */
struct ringvm_exception_report {
    uint64_t vector;
    uint64_t error_code;
    uint64_t rip;
    uint64_t cs;                /* CPL = cs & 3 at the time of the fault */
    uint64_t rflags;
    uint64_t rsp;
    uint64_t cr2;
};

/* The ledger's record at the start of every page it writes. */
struct ringvm_ledger_record {
    uint64_t page_index;        /* index within the vCPU's region */
    uint64_t generation;        /* equals table[page_index] */
    uint64_t checksum;          /* ringvm_ledger_checksum(...) */
};

static inline uint64_t ringvm_ledger_checksum(uint64_t seed, uint64_t page_index,
                                              uint64_t generation)
{
    /* splitmix64 of the three fields: cheap, and any single-field change
     * alters the result. */
    uint64_t z = seed ^ (page_index * 0x9e3779b97f4a7c15ULL) ^
                 (generation * 0xbf58476d1ce4e5b9ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Per-vCPU PRNG seed derived from the workload seed (vmm/bootinfo.c; the
 * guest's PVH path uses the same so both boots agree). Never 0. */
static inline uint64_t ringvm_vcpu_seed(uint64_t workload_seed, uint64_t vcpu_index)
{
    uint64_t z = workload_seed + (vcpu_index + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z ? z : 0x9e3779b97f4a7c15ULL;
}

#endif
