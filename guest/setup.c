/*
 * Ring-0 setup, run once by every vCPU: load the GDT (with this vCPU's
 * TSS), the IDT, print the banner (vCPU 0), then iretq to ring 3.
 *
 * Every instruction here is emulated on PVM hosts (~1 us each), so this file
 * does the minimum; all workloads run in ring 3 (ring3.c).
 *
 * Shared state: the GDT and IDT are shared by all vCPUs. Each vCPU writes
 * only its own TSS and TSS descriptor; the IDT is written identically by
 * every vCPU before its own lidt, so concurrent writers cannot leave a
 * vCPU with a half-built table.
 */
#include "guest/guest.h"

_Static_assert(GUEST_MAX_VCPUS == RINGVM_MAX_VCPUS, "vCPU limits differ");
_Static_assert(GUEST_PORT_EXCEPTION == RINGVM_CONTROL_PORT + 4 * RINGVM_CMD_EXCEPTION,
               "exception port differs from abi.h");
_Static_assert(GUEST_PORT_PHASE == RINGVM_CONTROL_PORT + 4 * RINGVM_CMD_PHASE,
               "phase port differs from abi.h");
_Static_assert(GUEST_SERIAL_PORT == RINGVM_SERIAL_PORT, "serial port differs from abi.h");
_Static_assert(sizeof(struct ringvm_exception_report) == 7 * 8,
               "entry.S reports the 7-qword interrupt frame in place");

struct task_state_segment {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t io_map_base;
} __attribute__((packed));

struct descriptor_pointer {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

#define GDT_FIXED_ENTRIES 5     /* null, kernel code, kernel data, user data, user code */

/* Flat segments. Kernel code: 64-bit (L=1), DPL 0. Kernel data: DPL 0.
 * User data/code: DPL 3. Then two 8-byte slots per vCPU for its TSS. */
static uint64_t gdt[GDT_FIXED_ENTRIES + 2 * GUEST_MAX_VCPUS] __attribute__((aligned(16))) = {
    0,
    0x00af9a000000ffffULL,
    0x00cf92000000ffffULL,
    0x00cff2000000ffffULL,
    0x00affa000000ffffULL,
};

/* Also loaded by pvh.S (32-bit lgdt reads limit and the low 32 bits of base). */
struct descriptor_pointer guest_gdt_pointer __attribute__((aligned(16))) = {
    sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt,
};

static struct task_state_segment task_states[GUEST_MAX_VCPUS] __attribute__((aligned(16)));
static uint64_t idt[2 * 256] __attribute__((aligned(4096)));

static void set_gate(unsigned vector, const void *handler, unsigned dpl)
{
    uint64_t offset = (uint64_t)(uintptr_t)handler;
    /* Present 64-bit interrupt gate (IF cleared on entry). */
    idt[2 * vector] = (offset & 0xffff) | ((uint64_t)GUEST_SELECTOR_KERNEL_CODE << 16) |
                      ((uint64_t)(0x8e | (dpl << 5)) << 40) | (((offset >> 16) & 0xffff) << 48);
    idt[2 * vector + 1] = offset >> 32;
}

static void load_tables(unsigned vcpu)
{
    struct task_state_segment *tss = &task_states[vcpu];
    tss->rsp[0] = (uint64_t)(uintptr_t)(guest_ring0_stacks + (vcpu + 1) * GUEST_RING0_STACK_SIZE);
    tss->io_map_base = sizeof(*tss);    /* no I/O bitmap: ring 3 has no ports */

    uint64_t base = (uint64_t)(uintptr_t)tss;
    uint64_t limit = sizeof(*tss) - 1;
    unsigned slot = GDT_FIXED_ENTRIES + 2 * vcpu;
    gdt[slot] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ULL << 40) |
                (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt[slot + 1] = base >> 32;

    for (unsigned vector = 0; vector < 32; vector++)
        set_gate(vector, guest_exception_stubs + vector * GUEST_EXCEPTION_STUB_SIZE,
                 vector == 3 ? 3 : 0);  /* int3 from ring 3 must reach #BP, not #GP */
    set_gate(GUEST_VECTOR_HALT, guest_halt_gate, 3);
    set_gate(GUEST_VECTOR_CONSOLE, guest_console_gate, 3);

    struct descriptor_pointer idt_pointer = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
    uint16_t tss_selector = GUEST_SELECTOR_TSS_BASE + 16 * vcpu;
    __asm__ volatile("lgdt %0\n\t"
                     "ltr %1\n\t"
                     "lidt %2"
                     :
                     : "m"(guest_gdt_pointer), "r"(tss_selector), "m"(idt_pointer)
                     : "memory");
}

static void serial_write(const char *data, unsigned length)
{
    for (unsigned i = 0; i < length; i++)
        __asm__ volatile("outb %b0, %w1" : : "a"(data[i]), "Nd"(GUEST_SERIAL_PORT));
}

static const char *workload_name(uint32_t workload)
{
    switch (workload) {
    case RINGVM_WORKLOAD_IDLE: return "idle";
    case RINGVM_WORKLOAD_DIRTIER: return "dirtier";
    case RINGVM_WORKLOAD_LEDGER: return "ledger";
    case RINGVM_WORKLOAD_FAULT: return "fault";
    default: return "unknown";
    }
}

static void print_banner(const struct ringvm_bootinfo *info)
{
    struct text text;
    text_reset(&text);
    text_append(&text, "ringvm guest: vcpu 0 up (");
    text_append_u64(&text, info->vcpu_count);
    text_append(&text, info->vcpu_count == 1 ? " vcpu, " : " vcpus, ");
    text_append(&text, workload_name(info->workload));
    if (info->doorbell_gpa == 0) {
        /* PVH boot: tell the user where the counters are. */
        text_append(&text, ", stats at ");
        text_append_hex(&text, info->stats_gpa);
    }
    text_append(&text, ")\n");
    serial_write(text.data, text.length);
}

void setup_main(uint64_t vcpu, const struct ringvm_bootinfo *info)
{
    if (info->magic != RINGVM_BOOTINFO_MAGIC || info->abi_version != RINGVM_ABI_VERSION) {
        static const char message[] = "ringvm guest: no valid boot info, halting\n";
        if (vcpu == 0)
            serial_write(message, sizeof(message) - 1);
        guest_halt_forever();
    }
    if (vcpu >= info->vcpu_count)
        guest_halt_forever();   /* the VMM started more vCPUs than it described */

    load_tables((unsigned)vcpu);
    if (vcpu == 0)
        print_banner(info);

    if (info->workload == RINGVM_WORKLOAD_FAULT && info->fault_ring == 0)
        fault_raise(info->fault_kind);  /* reported by the IDT; does not return */

    guest_enter_ring3((uint64_t)(uintptr_t)guest_ring3_start,
                      (uint64_t)(uintptr_t)(guest_ring3_stacks + (vcpu + 1) * GUEST_RING3_STACK_SIZE),
                      vcpu, info);
}
