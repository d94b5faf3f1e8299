/*
 * Internal interfaces of the built-in guest (not part of the VMM ABI, which
 * is guest/abi.h). Included from C and from assembler, so the constants the
 * .S files need are plain macros; guest/setup.c checks them against abi.h.
 *
 * Privilege split (see ../shared/HOST-KVM.md): every ring-0 instruction is
 * emulated on PVM hosts, so ring 0 only sets up descriptor tables and stacks
 * and handles exceptions; workloads run in ring 3 and report through the
 * MMIO doorbell and the stats page.
 */
#ifndef RINGVM_GUEST_GUEST_H
#define RINGVM_GUEST_GUEST_H

/* GDT layout. 0x08/0x10 must match what the VMM loads for the direct
 * 64-bit entry (vmm/boot.c). vCPU i's TSS descriptor is at
 * GUEST_SELECTOR_TSS_BASE + 16 * i. */
#define GUEST_SELECTOR_KERNEL_CODE  0x08
#define GUEST_SELECTOR_KERNEL_DATA  0x10
#define GUEST_SELECTOR_USER_DATA    0x1b    /* 0x18 | RPL 3 */
#define GUEST_SELECTOR_USER_CODE    0x23    /* 0x20 | RPL 3 */
#define GUEST_SELECTOR_TSS_BASE     0x28

#define GUEST_MAX_VCPUS             64      /* == RINGVM_MAX_VCPUS */
#define GUEST_RING0_STACK_SIZE      8192
#define GUEST_RING3_STACK_SIZE      16384

/* Software interrupt gates callable from ring 3 (DPL 3). */
#define GUEST_VECTOR_HALT           0x40    /* stop this vCPU: cli; hlt forever */
#define GUEST_VECTOR_CONSOLE        0x41    /* rdi = text, rsi = length: 8250 output
                                               (used only without a doorbell, i.e. PVH) */
#define GUEST_EXCEPTION_STUB_SIZE   16      /* bytes per stub in entry.S */

/* Control port of RINGVM_CMD_EXCEPTION / RINGVM_CMD_PHASE. */
#define GUEST_PORT_EXCEPTION        (0x600 + 4 * 1)
#define GUEST_PORT_PHASE            (0x600 + 4 * 2)
#define GUEST_SERIAL_PORT           0x3f8

#define GUEST_STRINGIFY_(x) #x
#define GUEST_STRINGIFY(x) GUEST_STRINGIFY_(x)

#ifndef __ASSEMBLER__

#include <stddef.h>
#include <stdint.h>

#include "guest/abi.h"

/* ---- entry.S (ring 0) */
extern char guest_exception_stubs[];    /* 32 stubs, GUEST_EXCEPTION_STUB_SIZE apart */
extern char guest_halt_gate[];
extern char guest_console_gate[];
extern char guest_ring3_start[];        /* calls ring3_main(vcpu, info) */
__attribute__((noreturn)) void guest_enter_ring3(uint64_t rip, uint64_t rsp,
                                                 uint64_t vcpu, const void *info);
__attribute__((noreturn)) void guest_halt_forever(void);
extern uint8_t guest_ring0_stacks[];
extern uint8_t guest_ring3_stacks[];

/* ---- setup.c (ring 0): descriptor tables, banner, then ring 3. */
__attribute__((noreturn)) void setup_main(uint64_t vcpu, const struct ringvm_bootinfo *info);

/* ---- pvh.c (ring 0, PVH boot only): builds a boot info from the PVH
 * start_info (command line, memory map) and returns it. */
const struct ringvm_bootinfo *pvh_prepare(uint32_t start_info_paddr);

/* ---- fault.c: raise the requested exception (any ring). */
void fault_raise(uint32_t kind);

/* ---- ring3.c (ring 3): the workload dispatcher. */
__attribute__((noreturn)) void ring3_main(uint64_t vcpu, const struct ringvm_bootinfo *info);

/* ---- dirtier.c / ledger.c (ring 3): return when `count` writes are done. */
void dirtier_run(unsigned vcpu, const struct ringvm_bootinfo *info);
void ledger_run(unsigned vcpu, const struct ringvm_bootinfo *info);
/* After a finite ledger run: verify every verify_seconds, never write. */
void ledger_verify_forever(unsigned vcpu, const struct ringvm_bootinfo *info);

/* ---- console.c (ring 3): text to the VMM console. */
struct text {
    unsigned length;
    char data[160];
};
void text_reset(struct text *text);
void text_append(struct text *text, const char *string);
void text_append_u64(struct text *text, uint64_t value);
void text_append_hex(struct text *text, uint64_t value);
void console_write(const struct ringvm_bootinfo *info, const char *data, uint64_t length);
void console_write_text(const struct ringvm_bootinfo *info, const struct text *text);

/* ---- small helpers shared by ring-3 code. */
static inline uint64_t read_tsc(void)
{
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return ((uint64_t)high << 32) | low;
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

/* Ring 3: a 64-bit store to the doorbell exits to the VMM as MMIO. Without
 * a doorbell (PVH under another VMM) commands are dropped. */
static inline void doorbell_send(const struct ringvm_bootinfo *info, enum ringvm_command command,
                                 uint64_t argument)
{
    if (info->doorbell_gpa == 0)
        return;
    volatile uint64_t *bell = (volatile uint64_t *)(uintptr_t)(info->doorbell_gpa + 8 * command);
    *bell = argument;
}

static inline volatile struct ringvm_vcpu_stats *vcpu_stats(const struct ringvm_bootinfo *info,
                                                            unsigned vcpu)
{
    return (volatile struct ringvm_vcpu_stats *)(uintptr_t)(info->stats_gpa +
                                                            RINGVM_STATS_SLOT_SIZE * vcpu);
}

/* Freestanding memset for the compiler's implicit calls (struct zeroing). */
void *memset(void *destination, int value, size_t length);
void *memcpy(void *destination, const void *source, size_t length);

#endif /* __ASSEMBLER__ */
#endif
