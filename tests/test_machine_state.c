/*
 * Machine state v2 (migration/machine_state.{c,h}): round trip of every
 * field, every decode rejection with its exact message, truncation at
 * every byte, the restore order and the TSC_DEADLINE rules. No KVM needed;
 * the KVM capture/restore functions are not exercised here (no /dev/kvm
 * where this was written).
 *
 * Every decode reads a copy placed so that its last byte is followed by a
 * PROT_NONE page: a read past the end is a SIGSEGV, not a silent pass.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "migration/machine_state.h"
#include "migration/protocol.h"
#include "tests/fuzz_runner.h"
#include "vmm/uart.h"

/* ---- guarded input ---------------------------------------------------------- */

struct guarded {
    uint8_t *map;
    size_t map_size;
    uint8_t *data;      /* data + length == the guard page */
};

static struct guarded guarded_copy(const uint8_t *bytes, size_t length)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (length + page - 1) / page;
    struct guarded g;
    g.map_size = (pages + 1) * page;
    g.map = mmap(NULL, g.map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g.map, MAP_FAILED, "mmap: %s", strerror(errno));
    cr_assert_eq(mprotect(g.map + pages * page, page, PROT_NONE), 0, "mprotect: %s", strerror(errno));
    g.data = g.map + pages * page - length;
    if (length > 0)
        memcpy(g.data, bytes, length);
    return g;
}

static void guarded_free(struct guarded *g)
{
    cr_assert_eq(munmap(g->map, g->map_size), 0, "munmap: %s", strerror(errno));
}

static int decode_guarded(const uint8_t *bytes, size_t length, struct machine_state *state, char *error,
                          size_t error_size)
{
    struct guarded g = guarded_copy(bytes, length);
    int result = machine_state_decode(g.data, length, state, error, error_size);
    guarded_free(&g);
    return result;
}

/* ---- states -------------------------------------------------------------------- */

static uint64_t counter;
static uint64_t next64(void)
{
    counter++;
    return 0xa5a5000000000000ull + (counter << 16) + counter;
}
static uint32_t next32(void) { return 0x5a000000u + (uint32_t)(++counter); }
static uint16_t next16(void) { return (uint16_t)(0x7000u + (++counter & 0xfff)); }
static uint8_t next8(void)
{
    static uint8_t value;
    value = (uint8_t)(value % 250u + 1u);
    return value;
}

static void uart_ignore_irq(void *opaque, bool level) { (void)opaque; (void)level; }
static void uart_ignore_transmit(void *opaque, const uint8_t *bytes, size_t length)
{
    (void)opaque;
    (void)bytes;
    (void)length;
}

/* A state the real device reached: divisor, FIFOs with trigger 14, IER,
 * MCR, scratch, and five received bytes in the FIFO. */
static struct uart_state uart_busy_state(void)
{
    struct uart_callbacks callbacks = { .set_irq = uart_ignore_irq, .transmit = uart_ignore_transmit };
    struct uart *uart;
    cr_assert_eq(uart_create(&uart, &callbacks), 0);
    const struct { unsigned offset; uint8_t value; } writes[] = {
        { 3, 0x83 }, { 0, 0x0c }, { 1, 0x01 }, { 3, 0x1b }, { 1, 0x0d }, { 2, 0xc1 }, { 4, 0x0b }, { 7, 0x5a },
    };
    for (size_t i = 0; i < sizeof(writes) / sizeof(writes[0]); i++) {
        uint8_t value = writes[i].value;
        uart_port_io(uart, writes[i].offset, true, &value, 1);
    }
    cr_assert_eq(uart_receive(uart, (const uint8_t *)"hello", 5), 5);
    struct uart_state state;
    uart_state_save(uart, &state);
    uart_destroy(uart);
    return state;
}

static void fill_segment(struct kvm_segment *s, uint8_t type)
{
    s->base = next64();
    s->limit = next32();
    s->selector = next16();
    s->type = type;
    s->present = 1;
    s->dpl = 3;
    s->db = 1;
    s->s = 1;
    s->l = 1;
    s->g = 1;
    s->avl = 1;
    s->unusable = 1;
}

static void fill_vcpu(struct machine_state_vcpu *v, bool linux_guest, uint32_t index)
{
    v->sections = MACHINE_STATE_HAS_MP_STATE | MACHINE_STATE_HAS_REGS | MACHINE_STATE_HAS_SREGS |
                  MACHINE_STATE_HAS_DEBUGREGS | MACHINE_STATE_HAS_CPUID2 | MACHINE_STATE_HAS_MSRS |
                  MACHINE_STATE_HAS_VCPU_EVENTS;
    v->mp_state.mp_state = KVM_MP_STATE_HALTED;
    __u64 *regs[18] = { &v->regs.rax, &v->regs.rbx, &v->regs.rcx, &v->regs.rdx, &v->regs.rsi, &v->regs.rdi,
                        &v->regs.rsp, &v->regs.rbp, &v->regs.r8, &v->regs.r9, &v->regs.r10, &v->regs.r11,
                        &v->regs.r12, &v->regs.r13, &v->regs.r14, &v->regs.r15, &v->regs.rip, &v->regs.rflags };
    for (unsigned i = 0; i < 18; i++)
        *regs[i] = next64();
    struct kvm_segment *segments[8] = { &v->sregs.cs, &v->sregs.ds, &v->sregs.es, &v->sregs.fs,
                                        &v->sregs.gs, &v->sregs.ss, &v->sregs.tr, &v->sregs.ldt };
    for (unsigned i = 0; i < 8; i++)
        fill_segment(segments[i], (uint8_t)(8 + i));
    v->sregs.gdt.base = next64();
    v->sregs.gdt.limit = next16();
    v->sregs.idt.base = next64();
    v->sregs.idt.limit = next16();
    __u64 *control[7] = { &v->sregs.cr0, &v->sregs.cr2, &v->sregs.cr3, &v->sregs.cr4, &v->sregs.cr8,
                          &v->sregs.efer, &v->sregs.apic_base };
    for (unsigned i = 0; i < 7; i++)
        *control[i] = next64();
    v->sregs.interrupt_bitmap[2] = 1ull << 17;      /* one pending vector, 145 */
    if (linux_guest) {
        uint8_t xsave[4096 + 64];
        for (size_t i = 0; i < sizeof(xsave); i++)
            xsave[i] = (uint8_t)(i * 7 + index + 1);
        cr_assert_eq(machine_state_vcpu_set_xsave(v, xsave, sizeof(xsave)), 0);
        v->sections |= MACHINE_STATE_HAS_XSAVE | MACHINE_STATE_HAS_XCRS | MACHINE_STATE_HAS_LAPIC |
                       MACHINE_STATE_HAS_TSC_KHZ;
        v->xcrs.nr_xcrs = 2;
        v->xcrs.xcrs[0].xcr = 0;
        v->xcrs.xcrs[0].value = next64();
        v->xcrs.xcrs[1].xcr = next32();
        v->xcrs.xcrs[1].value = next64();
        for (size_t i = 0; i < sizeof(v->lapic.regs); i++)
            v->lapic.regs[i] = (char)(i * 13 + index + 3);
        v->tsc_khz = 2000000u + index;
    } else {
        v->sections |= MACHINE_STATE_HAS_FPU;
        for (size_t i = 0; i < sizeof(v->fpu.fpr); i++)
            v->fpu.fpr[i / 16][i % 16] = (uint8_t)(i + 5);
        v->fpu.fcw = next16();
        v->fpu.fsw = next16();
        v->fpu.ftwx = next8();
        v->fpu.last_opcode = next16();
        v->fpu.last_ip = next64();
        v->fpu.last_dp = next64();
        for (size_t i = 0; i < sizeof(v->fpu.xmm); i++)
            v->fpu.xmm[i / 16][i % 16] = (uint8_t)(i + 9);
        v->fpu.mxcsr = next32();
    }
    for (unsigned i = 0; i < 4; i++)
        v->debugregs.db[i] = next64();
    v->debugregs.dr6 = next32();
    v->debugregs.dr7 = next32();
    struct kvm_cpuid_entry2 cpuid[3];
    memset(cpuid, 0, sizeof(cpuid));
    for (unsigned i = 0; i < 3; i++) {
        cpuid[i].function = next32();
        cpuid[i].index = next32();
        cpuid[i].flags = (i % 3) + 1;
        cpuid[i].eax = next32();
        cpuid[i].ebx = next32();
        cpuid[i].ecx = next32();
        cpuid[i].edx = next32();
    }
    cr_assert_eq(machine_state_vcpu_set_cpuid(v, cpuid, linux_guest ? 3 : 1), 0);
    struct kvm_msr_entry msrs[4];
    memset(msrs, 0, sizeof(msrs));
    msrs[0] = (struct kvm_msr_entry){ .index = MACHINE_STATE_MSR_IA32_TSC, .data = next64() };
    msrs[1] = (struct kvm_msr_entry){ .index = 0xc0000080, .data = next64() };
    msrs[2] = (struct kvm_msr_entry){ .index = MACHINE_STATE_MSR_IA32_TSC_DEADLINE, .data = next64() };
    msrs[3] = (struct kvm_msr_entry){ .index = 0x4b564d01, .data = next64() };
    cr_assert_eq(machine_state_vcpu_set_msrs(v, msrs, linux_guest ? 4 : 2), 0);
    struct kvm_vcpu_events *e = &v->events;
    e->exception.injected = 1;
    e->exception.nr = 14;
    e->exception.has_error_code = 1;
    e->exception.pending = 1;
    e->exception.error_code = next32();
    e->interrupt.injected = 1;
    e->interrupt.nr = 0xec;
    e->interrupt.soft = 1;
    e->interrupt.shadow = 3;
    e->nmi.injected = 1;
    e->nmi.pending = 1;
    e->nmi.masked = 1;
    e->sipi_vector = 0x9a;
    e->flags = 0x3f;
    e->smi.smm = 1;
    e->smi.pending = 1;
    e->smi.smm_inside_nmi = 1;
    e->smi.latched_init = 1;
    e->triple_fault.pending = 1;
    e->exception_has_payload = 1;
    e->exception_payload = next64();
}

static void fill_pic(struct kvm_pic_state *p, uint8_t base)
{
    *p = (struct kvm_pic_state){
        .last_irr = (uint8_t)(base + 1), .irr = (uint8_t)(base + 2), .imr = (uint8_t)(base + 3),
        .isr = (uint8_t)(base + 4), .priority_add = 5, .irq_base = (uint8_t)(base & 0xf8),
        .read_reg_select = 1, .poll = 1, .special_mask = 1, .init_state = 3, .auto_eoi = 1,
        .rotate_on_auto_eoi = 1, .special_fully_nested_mode = 1, .init4 = 1, .elcr = (uint8_t)(base + 5),
        .elcr_mask = (uint8_t)(base + 6),
    };
}

/* Every section, every field non-zero and distinct where the range allows:
 * a Linux guest with 2 vCPUs. */
static void full_state(struct machine_state *s)
{
    counter = 0;
    cr_assert_eq(machine_state_init(s, 2), 0);
    for (uint32_t i = 0; i < 2; i++)
        fill_vcpu(&s->vcpus[i], true, i);
    struct machine_state_vm *vm = &s->vm;
    vm->guest_kind = MACHINE_STATE_GUEST_LINUX;
    vm->sections = MACHINE_STATE_HAS_CLOCK | MACHINE_STATE_HAS_IRQCHIPS | MACHINE_STATE_HAS_PIT2 |
                   MACHINE_STATE_HAS_TSC_FREQUENCY | MACHINE_STATE_HAS_BOOT_INFO | MACHINE_STATE_HAS_UART |
                   MACHINE_STATE_HAS_CMOS;
    vm->clock.clock = next64();
    vm->clock.realtime = next64();
    vm->clock.host_tsc = next64();
    vm->clock.flags = KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC;
    fill_pic(&vm->pic_master, 0x20);
    fill_pic(&vm->pic_slave, 0x70);
    vm->ioapic.base_address = 0xfec00000;
    vm->ioapic.ioregsel = next32();
    vm->ioapic.id = 9;
    vm->ioapic.irr = 0x00abcdef;
    for (unsigned i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
        vm->ioapic.redirtbl[i].bits = next64();
    for (unsigned i = 0; i < 3; i++) {
        struct kvm_pit_channel_state *c = &vm->pit.channels[i];
        c->count = 0x10000 - i;
        c->latched_count = next16();
        c->count_latched = next8();
        c->status_latched = next8();
        c->status = next8();
        c->read_state = next8();
        c->write_state = next8();
        c->write_latch = next8();
        c->rw_mode = next8();
        c->mode = next8();
        c->bcd = 1;
        c->gate = 1;
        c->count_load_time = (int64_t)next64();
    }
    vm->pit.flags = KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    vm->tsc_khz = 2000123;
    snprintf(vm->cmdline, sizeof(vm->cmdline), "console=ttyS0 reboot=k panic=1 pci=off ringvm.workload=ledger");
    snprintf(vm->boot_protocol, sizeof(vm->boot_protocol), "bzImage 64-bit");
    vm->uart = uart_busy_state();
    vm->cmos_index = 0x0b;
    for (unsigned i = 0; i < 128; i++)
        vm->cmos_ram[i] = (uint8_t)(0x80 + i);
}

/* The smallest real state: the built-in guest, 1 vCPU, no irqchip, FPU,
 * one CPUID entry, two MSRs, the clock. */
static void small_state(struct machine_state *s)
{
    counter = 1000;
    cr_assert_eq(machine_state_init(s, 1), 0);
    fill_vcpu(&s->vcpus[0], false, 0);
    s->vm.guest_kind = MACHINE_STATE_GUEST_BUILTIN;
    s->vm.sections = MACHINE_STATE_HAS_CLOCK;
    s->vm.clock.clock = next64();
    s->vm.clock.realtime = next64();
    s->vm.clock.flags = KVM_CLOCK_REALTIME;
}

static uint8_t *encode(const struct machine_state *s, size_t *length)
{
    size_t size = machine_state_encoded_size(s);
    uint8_t *out = malloc(size);
    cr_assert_not_null(out);
    char error[256] = "";
    *length = machine_state_encode(s, out, size, error, sizeof(error));
    cr_assert_eq(*length, size, "encode: %s", error);
    return out;
}

/* ---- comparing ------------------------------------------------------------------- */

#define ASSERT_SAME(field, what) \
    cr_assert_eq(memcmp(&a->field, &b->field, sizeof(a->field)), 0, "%s differs after the round trip", what)

static void assert_vcpu_equal(const struct machine_state_vcpu *a, const struct machine_state_vcpu *b, uint32_t i)
{
    cr_assert_eq(a->sections, b->sections, "vCPU %u sections 0x%x vs 0x%x", i, a->sections, b->sections);
    ASSERT_SAME(mp_state, "mp_state");
    ASSERT_SAME(regs, "regs");
    cr_assert_eq(a->regs.rip, b->regs.rip);
    cr_assert_eq(a->regs.rflags, b->regs.rflags);
    ASSERT_SAME(sregs.cs, "sregs.cs");
    ASSERT_SAME(sregs.tr, "sregs.tr");
    ASSERT_SAME(sregs.ldt, "sregs.ldt");
    ASSERT_SAME(sregs, "sregs");
    cr_assert_eq(a->xsave_size, b->xsave_size);
    if (a->xsave_size > 0)
        cr_assert_eq(memcmp(a->xsave, b->xsave, a->xsave_size), 0, "xsave differs");
    ASSERT_SAME(fpu, "fpu");
    ASSERT_SAME(xcrs, "xcrs");
    ASSERT_SAME(debugregs, "debugregs");
    ASSERT_SAME(lapic, "lapic");
    cr_assert_eq(a->tsc_khz, b->tsc_khz);
    cr_assert_eq(a->cpuid_count, b->cpuid_count);
    cr_assert_eq(memcmp(a->cpuid, b->cpuid, a->cpuid_count * sizeof(*a->cpuid)), 0, "cpuid differs");
    cr_assert_eq(a->msr_count, b->msr_count);
    for (uint32_t m = 0; m < a->msr_count; m++) {
        cr_assert_eq(a->msrs[m].index, b->msrs[m].index, "msr %u index", m);
        cr_assert_eq(a->msrs[m].data, b->msrs[m].data, "msr %u data", m);
    }
    ASSERT_SAME(events.exception, "events.exception");
    ASSERT_SAME(events.interrupt, "events.interrupt");
    ASSERT_SAME(events.nmi, "events.nmi");
    ASSERT_SAME(events.smi, "events.smi");
    ASSERT_SAME(events, "events");
}

static void assert_state_equal(const struct machine_state *x, const struct machine_state *y)
{
    cr_assert_eq(x->vcpu_count, y->vcpu_count);
    for (uint32_t i = 0; i < x->vcpu_count; i++)
        assert_vcpu_equal(&x->vcpus[i], &y->vcpus[i], i);
    const struct machine_state_vm *a = &x->vm, *b = &y->vm;
    cr_assert_eq(a->sections, b->sections, "vm sections 0x%x vs 0x%x", a->sections, b->sections);
    cr_assert_eq(a->guest_kind, b->guest_kind);
    ASSERT_SAME(clock, "clock");
    ASSERT_SAME(pic_master, "pic master");
    ASSERT_SAME(pic_slave, "pic slave");
    ASSERT_SAME(ioapic, "ioapic");
    ASSERT_SAME(pit, "pit");
    cr_assert_eq(a->tsc_khz, b->tsc_khz);
    cr_assert_str_eq(a->cmdline, b->cmdline);
    cr_assert_str_eq(a->boot_protocol, b->boot_protocol);
    ASSERT_SAME(uart, "uart");
    cr_assert_eq(a->cmos_index, b->cmos_index);
    ASSERT_SAME(cmos_ram, "cmos ram");
}

/* ---- round trip ----------------------------------------------------------------- */

Test(machine_state, round_trip_every_field)
{
    struct machine_state original, decoded;
    full_state(&original);
    /* The fixture really is non-zero where it should be. */
    cr_assert_neq(original.vm.uart.rx_count, 0);
    cr_assert_eq(memcmp(original.vm.uart.rx_fifo, "hello", 5), 0);
    cr_assert_neq(original.vm.uart.ier, 0);
    cr_assert_neq(original.vm.uart.dll, 0);
    size_t length;
    uint8_t *bytes = encode(&original, &length);
    char error[256] = "";
    cr_assert_eq(decode_guarded(bytes, length, &decoded, error, sizeof(error)), 0, "decode: %s", error);
    assert_state_equal(&original, &decoded);
    /* Spot checks by name, so a memcmp of two wrongly equal structs cannot
     * hide a field that is not carried. */
    cr_assert_eq(decoded.vcpus[1].events.exception_payload, original.vcpus[1].events.exception_payload);
    cr_assert_eq(decoded.vcpus[1].events.sipi_vector, 0x9a);
    cr_assert_eq(decoded.vcpus[0].sregs.interrupt_bitmap[2], 1ull << 17);
    cr_assert_eq(decoded.vcpus[1].xsave_size, 4160);
    cr_assert_eq(decoded.vm.clock.flags, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC);
    cr_assert_eq(decoded.vm.ioapic.irr, 0x00abcdef);
    cr_assert_eq(decoded.vm.pit.channels[2].count, 0xfffe);
    cr_assert_str_eq(decoded.vm.boot_protocol, "bzImage 64-bit");
    /* Re-encoding gives the same bytes. */
    size_t again_length;
    uint8_t *again = encode(&decoded, &again_length);
    cr_assert_eq(again_length, length);
    cr_assert_eq(memcmp(again, bytes, length), 0);
    /* This encoding is the fuzzer's Linux seed
     * (tests/fuzz/machine-state-corpus/linux-every-section); with
     * RINGVM_MACHINE_STATE_SEED=PATH the test writes it there. */
    const char *seed = getenv("RINGVM_MACHINE_STATE_SEED");
    if (seed != NULL) {
        FILE *f = fopen(seed, "wb");
        cr_assert_not_null(f, "%s: %s", seed, strerror(errno));
        cr_assert_eq(fwrite(bytes, 1, length, f), length);
        cr_assert_eq(fclose(f), 0);
    }
    free(again);
    free(bytes);
    machine_state_free(&decoded);
    machine_state_free(&original);
}

Test(machine_state, round_trip_small_builtin_state)
{
    struct machine_state original, decoded;
    small_state(&original);
    size_t length;
    uint8_t *bytes = encode(&original, &length);
    char error[256] = "";
    cr_assert_eq(decode_guarded(bytes, length, &decoded, error, sizeof(error)), 0, "decode: %s", error);
    assert_state_equal(&original, &decoded);
    cr_assert_eq(decoded.vcpus[0].sections & MACHINE_STATE_HAS_FPU, MACHINE_STATE_HAS_FPU);
    cr_assert_eq(decoded.vcpus[0].fpu.mxcsr, original.vcpus[0].fpu.mxcsr);
    free(bytes);
    machine_state_free(&decoded);
    machine_state_free(&original);
}

/* The documented layout, byte for byte where it is fixed. */
Test(machine_state, layout_matches_the_document)
{
    struct machine_state s;
    small_state(&s);
    size_t length;
    uint8_t *b = encode(&s, &length);
    /* header 16, machine 16+8, mp 16+4, regs 16+144, sregs 16+292, fpu
     * 16+411, debugregs 16+56, cpuid 16+4+28, msrs 16+4+24, events 16+37,
     * clock 16+28 */
    cr_assert_eq(length, 16u + 24 + 20 + 160 + 308 + 427 + 72 + 48 + 44 + 53 + 44);
    cr_assert_eq(memcmp(b, "RINGVMST", 8), 0);
    cr_assert_eq(mig_get_u32(b + 8), 2);
    cr_assert_eq(mig_get_u32(b + 12), 10);
    /* machine section header and payload */
    cr_assert_eq(mig_get_u32(b + 16), 0x0001);
    cr_assert_eq(b[20] | b[21] << 8, 1);
    cr_assert_eq(b[22] | b[23] << 8, 0);
    cr_assert_eq(mig_get_u32(b + 24), 0xffffffffu);
    cr_assert_eq(mig_get_u32(b + 28), 8);
    cr_assert_eq(mig_get_u32(b + 32), 1);
    cr_assert_eq(mig_get_u32(b + 36), 0);
    /* then vCPU 0's mp-state: type 0x0101, vcpu 0, length 4, HALTED */
    cr_assert_eq(mig_get_u32(b + 40), 0x0101);
    cr_assert_eq(mig_get_u32(b + 48), 0);
    cr_assert_eq(mig_get_u32(b + 52), 4);
    cr_assert_eq(mig_get_u32(b + 56), KVM_MP_STATE_HALTED);
    /* then regs: rax first */
    cr_assert_eq(mig_get_u32(b + 60), 0x0102);
    cr_assert_eq(mig_get_u64(b + 76), s.vcpus[0].regs.rax);
    free(b);
    machine_state_free(&s);
}

/* ---- a section editor for the rejection tests ------------------------------------ */

struct edit_section {
    uint32_t type;
    uint16_t version, flags;
    uint32_t vcpu;
    uint32_t length;
    uint8_t *payload;
};

struct blob {
    uint8_t header[16];
    size_t count;
    struct edit_section s[64];
};

static void blob_parse(struct blob *blob, const uint8_t *bytes, size_t length)
{
    memset(blob, 0, sizeof(*blob));
    memcpy(blob->header, bytes, 16);
    size_t at = 16;
    while (at < length) {
        cr_assert_lt(blob->count, 64u);
        struct edit_section *e = &blob->s[blob->count++];
        e->type = mig_get_u32(bytes + at);
        e->version = (uint16_t)(bytes[at + 4] | bytes[at + 5] << 8);
        e->flags = (uint16_t)(bytes[at + 6] | bytes[at + 7] << 8);
        e->vcpu = mig_get_u32(bytes + at + 8);
        e->length = mig_get_u32(bytes + at + 12);
        e->payload = malloc(e->length + 1);
        memcpy(e->payload, bytes + at + 16, e->length);
        at += 16 + e->length;
    }
    cr_assert_eq(blob->count, mig_get_u32(bytes + 12));
}

static uint8_t *blob_serialize(const struct blob *blob, size_t *length)
{
    size_t size = 16;
    for (size_t i = 0; i < blob->count; i++)
        size += 16 + blob->s[i].length;
    uint8_t *out = malloc(size);
    memcpy(out, blob->header, 16);
    size_t at = 16;
    for (size_t i = 0; i < blob->count; i++) {
        const struct edit_section *e = &blob->s[i];
        mig_put_u32(out + at, e->type);
        out[at + 4] = (uint8_t)e->version;
        out[at + 5] = (uint8_t)(e->version >> 8);
        out[at + 6] = (uint8_t)e->flags;
        out[at + 7] = (uint8_t)(e->flags >> 8);
        mig_put_u32(out + at + 8, e->vcpu);
        mig_put_u32(out + at + 12, e->length);
        memcpy(out + at + 16, e->payload, e->length);
        at += 16 + e->length;
    }
    *length = size;
    return out;
}

static void blob_free(struct blob *blob)
{
    for (size_t i = 0; i < blob->count; i++)
        free(blob->s[i].payload);
}

/* Index of the nth section of type for vcpu. */
static size_t blob_find(const struct blob *blob, uint32_t type, uint32_t vcpu, unsigned nth)
{
    for (size_t i = 0; i < blob->count; i++)
        if (blob->s[i].type == type && blob->s[i].vcpu == vcpu && nth-- == 0)
            return i;
    cr_assert_fail("no section 0x%x for vcpu %u", type, vcpu);
    return 0;
}

static void blob_remove(struct blob *blob, size_t index)
{
    free(blob->s[index].payload);
    memmove(&blob->s[index], &blob->s[index + 1], (blob->count - index - 1) * sizeof(blob->s[0]));
    blob->count--;
    mig_put_u32(blob->header + 12, (uint32_t)blob->count);
}

static void blob_insert_copy(struct blob *blob, size_t index, const struct edit_section *section)
{
    memmove(&blob->s[index + 1], &blob->s[index], (blob->count - index) * sizeof(blob->s[0]));
    blob->s[index] = *section;
    blob->s[index].payload = malloc(section->length + 1);
    memcpy(blob->s[index].payload, section->payload, section->length);
    blob->count++;
    mig_put_u32(blob->header + 12, (uint32_t)blob->count);
}

static void blob_set_length(struct edit_section *e, uint32_t length)
{
    e->payload = realloc(e->payload, length + 1);
    if (length > e->length)
        memset(e->payload + e->length, 0, length - e->length);
    e->length = length;
}

static void put_width(uint8_t *p, unsigned width, uint64_t value)
{
    for (unsigned i = 0; i < width; i++)
        p[i] = (uint8_t)(value >> (8 * i));
}

/* Decodes the blob (guarded) and expects exactly `expected`. */
static void expect_refused(const struct blob *blob, const char *expected)
{
    size_t length;
    uint8_t *bytes = blob_serialize(blob, &length);
    struct machine_state decoded;
    char error[512] = "";
    int result = decode_guarded(bytes, length, &decoded, error, sizeof(error));
    free(bytes);
    cr_assert_eq(result, -1, "accepted; expected \"%s\"", expected);
    cr_assert_str_eq(error, expected);
    cr_assert_null(decoded.vcpus, "a refused decode leaves the state freed");
}

static void expect_accepted(const struct blob *blob, struct machine_state *decoded)
{
    size_t length;
    uint8_t *bytes = blob_serialize(blob, &length);
    char error[512] = "";
    int result = decode_guarded(bytes, length, decoded, error, sizeof(error));
    free(bytes);
    cr_assert_eq(result, 0, "refused: %s", error);
}

static void full_blob(struct blob *blob)
{
    struct machine_state s;
    full_state(&s);
    size_t length;
    uint8_t *bytes = encode(&s, &length);
    blob_parse(blob, bytes, length);
    free(bytes);
    machine_state_free(&s);
}

/* ---- value rejections: one field patched in one section of the full state -------- */

struct field_case {
    uint32_t type;
    uint32_t vcpu;
    unsigned nth;           /* irqchip: 0 master, 1 slave, 2 ioapic */
    uint32_t offset;
    unsigned width;
    uint64_t value;
    const char *expected;
};

#define VM MACHINE_STATE_NO_VCPU
static const struct field_case field_cases[] = {
    { MACHINE_STATE_SECTION_MACHINE, VM, 0, 0, 4, 0, "section machine: vcpu_count 0 (must be 1..64)" },
    { MACHINE_STATE_SECTION_MACHINE, VM, 0, 0, 4, 65, "section machine: vcpu_count 65 (must be 1..64)" },
    { MACHINE_STATE_SECTION_MACHINE, VM, 0, 4, 4, 7, "section machine: guest kind 7 unknown (0 built-in, 1 linux)" },
    { MACHINE_STATE_SECTION_MP_STATE, 1, 0, 0, 4, 5, "section mp-state of vCPU 1: mp_state 5 is not an x86 state (0..4 or 9)" },
    { MACHINE_STATE_SECTION_MP_STATE, 1, 0, 0, 4, 10, "section mp-state of vCPU 1: mp_state 10 is not an x86 state (0..4 or 9)" },
    { MACHINE_STATE_SECTION_SREGS, 1, 0, 14, 1, 16, "section sregs of vCPU 1: cs.type 16 out of range (0..15)" },
    { MACHINE_STATE_SECTION_SREGS, 1, 0, 16, 1, 4, "section sregs of vCPU 1: cs.dpl 4 out of range (0..3)" },
    { MACHINE_STATE_SECTION_SREGS, 1, 0, 6 * 23 + 15, 1, 2, "section sregs of vCPU 1: tr.present 2 is not 0 or 1" },
    { MACHINE_STATE_SECTION_SREGS, 1, 0, 7 * 23 + 22, 1, 7, "section sregs of vCPU 1: ldt.unusable 7 is not 0 or 1" },
    { MACHINE_STATE_SECTION_SREGS, 1, 0, 260, 8, 3, "section sregs of vCPU 1: interrupt_bitmap has 3 bits set (at most 1)" },
    { MACHINE_STATE_SECTION_XCRS, 1, 0, 0, 4, 17, "section xcrs of vCPU 1: nr_xcrs 17 exceeds 16" },
    { MACHINE_STATE_SECTION_XCRS, 1, 0, 0, 4, 3, "section xcrs of vCPU 1: length 32 (must be 44)" },
    { MACHINE_STATE_SECTION_XCRS, 1, 0, 4, 4, 1, "section xcrs of vCPU 1: flags 0x1 (must be 0)" },
    { MACHINE_STATE_SECTION_DEBUGREGS, 1, 0, 48, 8, 1, "section debugregs of vCPU 1: flags 0x1 (must be 0)" },
    { MACHINE_STATE_SECTION_DEBUGREGS, 1, 0, 32, 8, 0x100000000ull, "section debugregs of vCPU 1: dr6 0x100000000 has bits above 31" },
    { MACHINE_STATE_SECTION_DEBUGREGS, 1, 0, 40, 8, 0xffff000000000400ull, "section debugregs of vCPU 1: dr7 0xffff000000000400 has bits above 31" },
    { MACHINE_STATE_SECTION_TSC_KHZ, 1, 0, 0, 4, 0, "section tsc-khz of vCPU 1: tsc_khz 0 (a TSC has a frequency)" },
    { MACHINE_STATE_SECTION_CPUID2, 1, 0, 0, 4, 0, "section cpuid2 of vCPU 1: 0 entries (must be 1..256)" },
    { MACHINE_STATE_SECTION_CPUID2, 1, 0, 0, 4, 257, "section cpuid2 of vCPU 1: 257 entries (must be 1..256)" },
    { MACHINE_STATE_SECTION_CPUID2, 1, 0, 0, 4, 0xffffffffu, "section cpuid2 of vCPU 1: 4294967295 entries (must be 1..256)" },
    { MACHINE_STATE_SECTION_CPUID2, 1, 0, 0, 4, 2, "section cpuid2 of vCPU 1: length 88 (must be 60)" },
    { MACHINE_STATE_SECTION_CPUID2, 1, 0, 4 + 28 + 8, 4, 8, "section cpuid2 of vCPU 1: entry 1 (function 0x5a00009b) has unknown flags 0x8" },
    { MACHINE_STATE_SECTION_MSRS, 1, 0, 0, 4, 1025, "section msrs of vCPU 1: count 1025 exceeds 1024" },
    { MACHINE_STATE_SECTION_MSRS, 1, 0, 0, 4, 0xffffffffu, "section msrs of vCPU 1: count 4294967295 exceeds 1024" },
    { MACHINE_STATE_SECTION_MSRS, 1, 0, 0, 4, 5, "section msrs of vCPU 1: length 52 (must be 64)" },
    { MACHINE_STATE_SECTION_MSRS, 1, 0, 4 + 36, 4, 0x10, "section msrs of vCPU 1: MSR 0x10 appears twice (entries 0 and 3)" },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, 19, 4, 0x40, "section vcpu-events of vCPU 1: flags 0x40 has unknown bits" },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, 1, 1, 32, "section vcpu-events of vCPU 1: exception.nr 32 is not an exception vector (0..31)" },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, 11, 1, 4, "section vcpu-events of vCPU 1: interrupt.shadow 0x4 has unknown bits" },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, 15, 4, 0x100, "section vcpu-events of vCPU 1: sipi_vector 0x100 exceeds 0xff" },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, 14, 1, 2, "section vcpu-events of vCPU 1: nmi.masked 2 is not 0 or 1" },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, 28, 1, 0xff, "section vcpu-events of vCPU 1: exception_has_payload 255 is not 0 or 1" },
    { MACHINE_STATE_SECTION_CLOCK, VM, 0, 24, 4, 0x1, "section clock: flags 0x1 has unknown bits" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 0, 0, 4, 3, "section irqchip: chip id 3 unknown (0 pic master, 1 pic slave, 2 ioapic)" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 1, 0, 4, 0, "section irqchip: chip 0 appears twice" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 0, 0, 4, 2, "section irqchip: chip 2 (ioapic) length 20 (must be 216)" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 0, 9, 1, 0x21, "section irqchip: pic master irq_base 0x21 is not a multiple of 8" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 1, 8, 1, 8, "section irqchip: pic slave priority_add 8 out of range (0..7)" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 1, 13, 1, 4, "section irqchip: pic slave init_state 4 out of range (0..3)" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 0, 11, 1, 2, "section irqchip: pic master poll 2 is not 0 or 1" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 2, 4, 8, 0xfee00000, "section irqchip: ioapic base_address 0xfee00000 (must be 0xfec00000)" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 2, 16, 4, 16, "section irqchip: ioapic id 16 out of range (0..15)" },
    { MACHINE_STATE_SECTION_IRQCHIP, VM, 2, 20, 4, 0x1000000, "section irqchip: ioapic irr 0x1000000 has bits above pin 23" },
    { MACHINE_STATE_SECTION_PIT2, VM, 0, 72, 4, 0x4, "section pit2: flags 0x4 has unknown bits" },
    { MACHINE_STATE_SECTION_PIT2, VM, 0, 24, 4, 0x10001, "section pit2: channel 1 count 65537 exceeds 65536" },
    { MACHINE_STATE_SECTION_PIT2, VM, 0, 48 + 14, 1, 2, "section pit2: channel 2 bcd 2 is not 0 or 1" },
    { MACHINE_STATE_SECTION_PIT2, VM, 0, 15, 1, 3, "section pit2: channel 0 gate 3 is not 0 or 1" },
    { MACHINE_STATE_SECTION_TSC_FREQUENCY, VM, 0, 0, 4, 0, "section tsc-frequency: tsc_khz 0 (a TSC has a frequency)" },
    { MACHINE_STATE_SECTION_BOOT_INFO, VM, 0, 0, 4, 3000, "section boot-info: cmdline of 3000 bytes (at most 2047)" },
    { MACHINE_STATE_SECTION_BOOT_INFO, VM, 0, 0, 4, 200, "section boot-info: cmdline of 200 bytes does not fit the length 83" },
    { MACHINE_STATE_SECTION_BOOT_INFO, VM, 0, 4 + 3, 1, 0x1b, "section boot-info: cmdline has byte 0x1b at offset 3 (printable ASCII only)" },
    { MACHINE_STATE_SECTION_BOOT_INFO, VM, 0, 4 + 5, 1, 0, "section boot-info: cmdline contains a NUL byte" },
    { MACHINE_STATE_SECTION_BOOT_INFO, VM, 0, 4 + 61, 4, 64, "section boot-info: boot protocol of 64 bytes (at most 63)" },
    { MACHINE_STATE_SECTION_UART, VM, 0, 12, 1, 17, "section uart: rx_count 17 exceeds the FIFO (16 bytes)" },
    { MACHINE_STATE_SECTION_UART, VM, 0, 12, 1, 4, "section uart: length 18 (must be 17)" },
    { MACHINE_STATE_SECTION_UART, VM, 0, 10, 1, 2, "section uart: thre_pending 2 is not 0 or 1" },
    { MACHINE_STATE_SECTION_UART, VM, 0, 11, 1, 9, "section uart: thre_after_iir_read 9 is not 0 or 1" },
    { MACHINE_STATE_SECTION_UART, VM, 0, 0, 1, 0x1d, "section uart: uart state: ier 0x1d: bits 4..7 do not exist on a 16550A" },
    { MACHINE_STATE_SECTION_UART, VM, 0, 5, 1, 0x60, "section uart: uart state: lsr 0x60: DR clear but the RX FIFO holds 5 bytes" },
    { MACHINE_STATE_SECTION_CMOS, VM, 0, 0, 1, 0x80, "section cmos: index 0x80 exceeds 0x7f" },
};

Test(machine_state, every_value_rejection_names_section_and_field)
{
    for (size_t c = 0; c < sizeof(field_cases) / sizeof(field_cases[0]); c++) {
        const struct field_case *fc = &field_cases[c];
        struct blob blob;
        full_blob(&blob);
        struct edit_section *e = &blob.s[blob_find(&blob, fc->type, fc->vcpu, fc->nth)];
        cr_assert_leq(fc->offset + fc->width, e->length, "case %zu patches outside its section", c);
        put_width(e->payload + fc->offset, fc->width, fc->value);
        expect_refused(&blob, fc->expected);
        blob_free(&blob);
    }
}

/* A uart_state that uart_state_restore refuses is refused at decode with
 * the device's own reason. */
Test(machine_state, uart_refused_with_the_devices_reason)
{
    struct uart_state bad = uart_busy_state();
    bad.iir ^= 0x02;
    struct uart_callbacks callbacks = { .set_irq = uart_ignore_irq, .transmit = uart_ignore_transmit };
    struct uart *uart;
    cr_assert_eq(uart_create(&uart, &callbacks), 0);
    char reason[256];
    cr_assert_eq(uart_state_restore(uart, &bad, reason, sizeof(reason)), -EINVAL);
    uart_destroy(uart);
    char expected[320];
    snprintf(expected, sizeof(expected), "section uart: %s", reason);

    struct blob blob;
    full_blob(&blob);
    struct edit_section *e = &blob.s[blob_find(&blob, MACHINE_STATE_SECTION_UART, VM, 0)];
    e->payload[1] = bad.iir;
    expect_refused(&blob, expected);
    blob_free(&blob);
}

/* ---- structural rejections --------------------------------------------------------- */

Test(machine_state, header_rejections)
{
    struct blob blob;
    full_blob(&blob);
    memcpy(blob.header, "RINGVMIG", 8);
    expect_refused(&blob, "machine state: bad magic (not a ringvm machine state)");
    memcpy(blob.header, "RINGVMST", 8);
    mig_put_u32(blob.header + 8, 3);
    expect_refused(&blob, "machine state: format version 3 (this ringvm reads 2)");
    mig_put_u32(blob.header + 8, 1);
    expect_refused(&blob, "machine state: format version 1 (this ringvm reads 2)");
    mig_put_u32(blob.header + 8, 2);
    uint32_t count = (uint32_t)blob.count;
    mig_put_u32(blob.header + 12, 0);
    expect_refused(&blob, "machine state: 0 sections (must be 1..4096)");
    mig_put_u32(blob.header + 12, 4097);
    expect_refused(&blob, "machine state: 4097 sections (must be 1..4096)");
    mig_put_u32(blob.header + 12, count + 1);
    char expected[256];
    size_t length;
    uint8_t *bytes = blob_serialize(&blob, &length);
    free(bytes);
    snprintf(expected, sizeof(expected),
             "machine state: section %u of %u: header at offset %zu cut short (0 of 16 bytes)", count, count + 1,
             length);
    expect_refused(&blob, expected);
    mig_put_u32(blob.header + 12, count - 1);
    snprintf(expected, sizeof(expected), "machine state: %u bytes after the last of its %u sections",
             16 + blob.s[count - 1].length, count - 1);
    expect_refused(&blob, expected);
    blob_free(&blob);
}

Test(machine_state, section_header_rejections)
{
    struct blob blob;
    full_blob(&blob);
    size_t regs = blob_find(&blob, MACHINE_STATE_SECTION_REGS, 1, 0);

    blob.s[regs].version = 2;
    expect_refused(&blob, "section regs of vCPU 1: version 2 is newer than this ringvm reads (1)");
    blob.s[regs].version = 0;
    expect_refused(&blob, "section regs of vCPU 1: version 0 (versions start at 1)");
    blob.s[regs].version = 1;
    blob.s[regs].flags = 0x2;
    expect_refused(&blob, "section regs of vCPU 1: unknown flags 0x0002");
    blob.s[regs].flags = MACHINE_STATE_SECTION_MAY_SKIP;
    expect_refused(&blob, "section regs of vCPU 1: flags 0x0001 (this section is required)");
    blob.s[regs].flags = 0;
    blob.s[regs].vcpu = 2;
    expect_refused(&blob, "section regs: vCPU 2 out of range (the machine has 2)");
    blob.s[regs].vcpu = 0xffffffffu;
    expect_refused(&blob, "section regs: vCPU 4294967295 out of range (the machine has 2)");
    blob.s[regs].vcpu = 0;
    expect_refused(&blob, "section regs of vCPU 0: appears twice");
    blob.s[regs].vcpu = 1;
    blob_set_length(&blob.s[regs], 140);
    expect_refused(&blob, "section regs of vCPU 1: length 140 (must be 144)");
    blob_set_length(&blob.s[regs], 144);

    size_t clock = blob_find(&blob, MACHINE_STATE_SECTION_CLOCK, VM, 0);
    blob.s[clock].vcpu = 0;
    expect_refused(&blob, "section clock: vcpu field 0 (a VM section has 0xffffffff)");
    blob.s[clock].vcpu = VM;
    blob.s[clock].flags = MACHINE_STATE_SECTION_MAY_SKIP;
    expect_refused(&blob, "section clock: flags 0x0001 (this section is required)");
    blob.s[clock].flags = 0;

    size_t cmos = blob_find(&blob, MACHINE_STATE_SECTION_CMOS, VM, 0);
    blob.s[cmos].flags = 0;
    expect_refused(&blob, "section cmos: flags 0x0000 (this section is may-skip)");
    blob.s[cmos].flags = MACHINE_STATE_SECTION_MAY_SKIP;

    /* machine must come first, and only once */
    struct edit_section machine = blob.s[0];
    blob.s[0].type = MACHINE_STATE_SECTION_REGS;
    expect_refused(&blob, "machine state: first section is regs (must be machine)");
    blob.s[0].type = 0x7777;
    expect_refused(&blob, "machine state: first section is type 0x7777 (must be machine)");
    blob.s[0].type = MACHINE_STATE_SECTION_MACHINE;
    blob_insert_copy(&blob, 3, &machine);
    expect_refused(&blob, "section machine: appears again as section 3");
    blob_remove(&blob, 3);

    /* the last section claims more bytes than there are */
    blob.s[blob.count - 1].length += 1;
    size_t length;
    uint8_t *bytes = blob_serialize(&blob, &length);
    /* serialize wrote length+1 claimed but only length payload bytes are
     * meaningful; cut the buffer so the claim exceeds what is left */
    struct machine_state decoded;
    char error[256];
    cr_assert_eq(decode_guarded(bytes, length - 1, &decoded, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "section cmos: length 130 exceeds the 129 bytes left");
    free(bytes);
    blob.s[blob.count - 1].length -= 1;
    blob_free(&blob);
}

Test(machine_state, unknown_sections_required_refused_optional_skipped)
{
    struct blob blob;
    full_blob(&blob);
    uint8_t payload[5] = { 1, 2, 3, 4, 5 };
    struct edit_section unknown = { .type = 0x7777, .version = 1, .flags = 0, .vcpu = 1, .length = 5,
                                    .payload = payload };
    blob_insert_copy(&blob, 5, &unknown);
    expect_refused(&blob, "section type 0x7777 of vCPU 1: unknown to this ringvm and required (not marked may-skip)");
    blob.s[5].flags = MACHINE_STATE_SECTION_MAY_SKIP;
    struct machine_state decoded;
    expect_accepted(&blob, &decoded);
    machine_state_free(&decoded);

    /* a known may-skip section of a newer version is skipped (absent) */
    size_t boot = blob_find(&blob, MACHINE_STATE_SECTION_BOOT_INFO, VM, 0);
    blob.s[boot].version = 2;
    blob_set_length(&blob.s[boot], 3);      /* its new layout is not parsed */
    expect_accepted(&blob, &decoded);
    cr_assert_eq(decoded.vm.sections & MACHINE_STATE_HAS_BOOT_INFO, 0);
    cr_assert_str_eq(decoded.vm.cmdline, "");
    machine_state_free(&decoded);
    blob_free(&blob);
}

Test(machine_state, variable_sizes_bounded)
{
    struct blob blob;
    full_blob(&blob);
    size_t xsave = blob_find(&blob, MACHINE_STATE_SECTION_XSAVE, 0, 0);
    blob_set_length(&blob.s[xsave], 4092);
    expect_refused(&blob, "section xsave of vCPU 0: length 4092 (must be a multiple of 4 in 4096..65536)");
    blob_set_length(&blob.s[xsave], 4098);
    expect_refused(&blob, "section xsave of vCPU 0: length 4098 (must be a multiple of 4 in 4096..65536)");
    blob_set_length(&blob.s[xsave], 65540);
    expect_refused(&blob, "section xsave of vCPU 0: length 65540 (must be a multiple of 4 in 4096..65536)");
    blob_set_length(&blob.s[xsave], 65536);
    struct machine_state decoded;
    expect_accepted(&blob, &decoded);
    cr_assert_eq(decoded.vcpus[0].xsave_size, 65536);
    machine_state_free(&decoded);

    /* a 1024-MSR section is accepted, with its exact length */
    size_t msrs = blob_find(&blob, MACHINE_STATE_SECTION_MSRS, 0, 0);
    blob_set_length(&blob.s[msrs], 4 + 12 * 1024);
    put_width(blob.s[msrs].payload, 4, 1024);
    for (uint32_t i = 0; i < 1024; i++) {
        put_width(blob.s[msrs].payload + 4 + 12 * i, 4, 0x1000 + i);
        put_width(blob.s[msrs].payload + 8 + 12 * i, 8, i);
    }
    expect_accepted(&blob, &decoded);
    cr_assert_eq(decoded.vcpus[0].msr_count, 1024);
    cr_assert_eq(decoded.vcpus[0].msrs[1023].index, 0x1000 + 1023);
    cr_assert_eq(decoded.vcpus[0].msrs[1023].data, 1023);
    machine_state_free(&decoded);
    blob_free(&blob);
}

Test(machine_state, presence_rules)
{
    struct blob blob;
    full_blob(&blob);
    blob_remove(&blob, blob_find(&blob, MACHINE_STATE_SECTION_REGS, 1, 0));
    expect_refused(&blob, "vCPU 1: required section regs missing");
    blob_free(&blob);

    const struct { uint32_t type; uint32_t vcpu; unsigned nth; const char *expected; } removals[] = {
        { MACHINE_STATE_SECTION_MP_STATE, 0, 0, "vCPU 0: required section mp-state missing" },
        { MACHINE_STATE_SECTION_SREGS, 0, 0, "vCPU 0: required section sregs missing" },
        { MACHINE_STATE_SECTION_DEBUGREGS, 1, 0, "vCPU 1: required section debugregs missing" },
        { MACHINE_STATE_SECTION_CPUID2, 1, 0, "vCPU 1: required section cpuid2 missing" },
        { MACHINE_STATE_SECTION_MSRS, 0, 0, "vCPU 0: required section msrs missing" },
        { MACHINE_STATE_SECTION_VCPU_EVENTS, 1, 0, "vCPU 1: required section vcpu-events missing" },
        { MACHINE_STATE_SECTION_XSAVE, 1, 0, "vCPU 1: neither xsave nor fpu (exactly one of xsave and fpu)" },
        { MACHINE_STATE_SECTION_LAPIC, 0, 0, "vCPU 0: lapic missing although the VM has the in-kernel irqchip" },
        { MACHINE_STATE_SECTION_CLOCK, VM, 0, "machine state: required section clock missing" },
        { MACHINE_STATE_SECTION_IRQCHIP, VM, 1, "machine state: irqchip pic slave missing (all three chips or none)" },
        { MACHINE_STATE_SECTION_IRQCHIP, VM, 2, "machine state: irqchip ioapic missing (all three chips or none)" },
        { MACHINE_STATE_SECTION_PIT2, VM, 0, "machine state: a linux guest needs section pit2" },
        { MACHINE_STATE_SECTION_UART, VM, 0, "machine state: a linux guest needs section uart" },
    };
    for (size_t r = 0; r < sizeof(removals) / sizeof(removals[0]); r++) {
        full_blob(&blob);
        blob_remove(&blob, blob_find(&blob, removals[r].type, removals[r].vcpu, removals[r].nth));
        expect_refused(&blob, removals[r].expected);
        blob_free(&blob);
    }

    /* optional ones may go */
    full_blob(&blob);
    blob_remove(&blob, blob_find(&blob, MACHINE_STATE_SECTION_BOOT_INFO, VM, 0));
    blob_remove(&blob, blob_find(&blob, MACHINE_STATE_SECTION_CMOS, VM, 0));
    blob_remove(&blob, blob_find(&blob, MACHINE_STATE_SECTION_TSC_FREQUENCY, VM, 0));
    blob_remove(&blob, blob_find(&blob, MACHINE_STATE_SECTION_TSC_KHZ, 0, 0));
    blob_remove(&blob, blob_find(&blob, MACHINE_STATE_SECTION_XCRS, 1, 0));
    struct machine_state decoded;
    expect_accepted(&blob, &decoded);
    cr_assert_eq(decoded.vcpus[0].sections & MACHINE_STATE_HAS_TSC_KHZ, 0);
    machine_state_free(&decoded);
    blob_free(&blob);

    /* xsave and fpu together */
    struct machine_state s;
    small_state(&s);
    s.vcpus[0].sections |= MACHINE_STATE_HAS_XSAVE;
    uint8_t region[4096] = { 1 };
    cr_assert_eq(machine_state_vcpu_set_xsave(&s.vcpus[0], region, sizeof(region)), 0);
    char error[256];
    cr_assert_eq(machine_state_validate(&s, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "vCPU 0: both xsave and fpu (exactly one of xsave and fpu)");
    s.vcpus[0].sections &= ~(uint32_t)MACHINE_STATE_HAS_XSAVE;
    /* built-in guest with a UART or boot info; LAPIC without irqchip; PIT without irqchip */
    s.vm.sections |= MACHINE_STATE_HAS_UART;
    s.vm.uart = uart_busy_state();
    cr_assert_eq(machine_state_validate(&s, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "section uart: present for the built-in guest (it has no UART)");
    s.vm.sections &= ~(uint32_t)MACHINE_STATE_HAS_UART;
    s.vm.sections |= MACHINE_STATE_HAS_BOOT_INFO;
    cr_assert_eq(machine_state_validate(&s, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "section boot-info: present for the built-in guest");
    s.vm.sections &= ~(uint32_t)MACHINE_STATE_HAS_BOOT_INFO;
    s.vm.sections |= MACHINE_STATE_HAS_PIT2;
    cr_assert_eq(machine_state_validate(&s, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "section pit2: present without the in-kernel irqchip (KVM_CREATE_PIT2 needs it)");
    s.vm.sections &= ~(uint32_t)MACHINE_STATE_HAS_PIT2;
    s.vcpus[0].sections |= MACHINE_STATE_HAS_LAPIC;
    cr_assert_eq(machine_state_validate(&s, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "vCPU 0: lapic present without the in-kernel irqchip");
    s.vcpus[0].sections &= ~(uint32_t)MACHINE_STATE_HAS_LAPIC;
    cr_assert_eq(machine_state_validate(&s, error, sizeof(error)), 0, "%s", error);
    machine_state_free(&s);
}

Test(machine_state, encode_refuses_what_decode_would)
{
    struct machine_state s;
    small_state(&s);
    s.vcpus[0].msrs[1].index = s.vcpus[0].msrs[0].index;
    size_t size = machine_state_encoded_size(&s);
    uint8_t *out = malloc(size);
    char error[256];
    cr_assert_eq(machine_state_encode(&s, out, size, error, sizeof(error)), 0);
    cr_assert_str_eq(error, "section msrs of vCPU 0: MSR 0x10 appears twice (entries 0 and 1)");
    s.vcpus[0].msrs[1].index = 0xc0000080;
    cr_assert_eq(machine_state_encode(&s, out, size - 1, error, sizeof(error)), 0);
    char expected[128];
    snprintf(expected, sizeof(expected), "machine state: needs %zu bytes, the buffer has %zu", size, size - 1);
    cr_assert_str_eq(error, expected);
    cr_assert_eq(machine_state_encode(&s, out, size, error, sizeof(error)), size);
    free(out);
    machine_state_free(&s);
}

/* ---- truncation ---------------------------------------------------------------------- */

Test(machine_state, truncated_at_every_byte)
{
    struct machine_state s;
    small_state(&s);
    size_t length;
    uint8_t *bytes = encode(&s, &length);
    machine_state_free(&s);
    for (size_t cut = 0; cut < length; cut++) {
        struct machine_state decoded;
        char error[256] = "";
        cr_assert_eq(decode_guarded(bytes, cut, &decoded, error, sizeof(error)), -1, "cut at %zu accepted", cut);
        cr_assert_neq(error[0], '\0', "cut at %zu: no message", cut);
        cr_assert_null(decoded.vcpus);
    }
    /* a few cuts by their exact message */
    struct machine_state decoded;
    char error[256];
    decode_guarded(bytes, 15, &decoded, error, sizeof(error));
    cr_assert_str_eq(error, "machine state: 15 bytes, shorter than its 16-byte header");
    decode_guarded(bytes, 16, &decoded, error, sizeof(error));
    cr_assert_str_eq(error, "machine state: section 0 of 10: header at offset 16 cut short (0 of 16 bytes)");
    decode_guarded(bytes, 39, &decoded, error, sizeof(error));
    cr_assert_str_eq(error, "section machine: length 8 exceeds the 7 bytes left");
    decode_guarded(bytes, 50, &decoded, error, sizeof(error));
    cr_assert_str_eq(error, "machine state: section 1 of 10: header at offset 40 cut short (10 of 16 bytes)");
    decode_guarded(bytes, 59, &decoded, error, sizeof(error));
    cr_assert_str_eq(error, "section mp-state of vCPU 0: length 4 exceeds the 3 bytes left");
    decode_guarded(bytes, length - 1, &decoded, error, sizeof(error));
    cr_assert_str_eq(error, "section clock: length 28 exceeds the 27 bytes left");
    free(bytes);
}

/* ---- restore order ---------------------------------------------------------------------- */

static size_t plan(const struct machine_state_plan_input *input, struct machine_state_step *steps)
{
    return machine_state_restore_plan(input, steps, MACHINE_STATE_MAX_STEPS);
}

static void assert_plan(const struct machine_state_step *steps, size_t count,
                        const struct machine_state_step *expected, size_t expected_count)
{
    for (size_t i = 0; i < count && i < expected_count; i++)
        cr_assert(steps[i].call == expected[i].call && steps[i].vcpu == expected[i].vcpu,
                  "step %zu: %s vCPU %u, expected %s vCPU %u", i, machine_state_call_name(steps[i].call),
                  steps[i].vcpu, machine_state_call_name(expected[i].call), expected[i].vcpu);
    cr_assert_eq(count, expected_count);
}

#define S(call, vcpu) { MACHINE_STATE_CALL_##call, (vcpu) }

Test(machine_state, restore_order_full_set)
{
    struct machine_state s;
    full_state(&s);
    struct machine_state_plan_input input;
    /* source 2000000 kHz, destination 2001000: 500 ppm, so set */
    machine_state_plan_input_from(&s, 2001000, &input);
    cr_assert(input.set_tsc_khz);
    cr_assert(input.vcpu_tsc_deadline[0]);
    cr_assert(input.vcpu_tsc_deadline[1]);
    struct machine_state_step steps[MACHINE_STATE_MAX_STEPS];
    size_t count = plan(&input, steps);
    const struct machine_state_step expected[] = {
        S(SET_TSC_KHZ, 0), S(SET_CPUID2, 0), S(SET_MP_STATE, 0), S(SET_REGS, 0), S(SET_SREGS, 0),
        S(SET_XSAVE, 0), S(SET_XCRS, 0), S(SET_DEBUGREGS, 0), S(SET_LAPIC, 0), S(SET_MSRS, 0),
        S(SET_TSC_DEADLINE, 0), S(SET_VCPU_EVENTS, 0),
        S(SET_TSC_KHZ, 1), S(SET_CPUID2, 1), S(SET_MP_STATE, 1), S(SET_REGS, 1), S(SET_SREGS, 1),
        S(SET_XSAVE, 1), S(SET_XCRS, 1), S(SET_DEBUGREGS, 1), S(SET_LAPIC, 1), S(SET_MSRS, 1),
        S(SET_TSC_DEADLINE, 1), S(SET_VCPU_EVENTS, 1),
        S(SET_PIT2, VM), S(SET_CLOCK, VM), S(SET_IRQCHIP_PIC_MASTER, VM), S(SET_IRQCHIP_PIC_SLAVE, VM),
        S(SET_IRQCHIP_IOAPIC, VM), S(RESTORE_UART, VM), S(RESTORE_CMOS, VM),
        S(KVMCLOCK_CTRL, 0), S(KVMCLOCK_CTRL, 1),
    };
    assert_plan(steps, count, expected, sizeof(expected) / sizeof(expected[0]));
    /* the same destination frequency: no KVM_SET_TSC_KHZ */
    machine_state_plan_input_from(&s, 2000000, &input);
    cr_assert_not(input.set_tsc_khz);
    count = plan(&input, steps);
    cr_assert_eq(count, sizeof(expected) / sizeof(expected[0]) - 2);
    cr_assert_eq(steps[0].call, MACHINE_STATE_CALL_SET_CPUID2);
    /* a destination that does not know its frequency never sets it */
    machine_state_plan_input_from(&s, 0, &input);
    cr_assert_not(input.set_tsc_khz);
    /* capacity is respected */
    cr_assert_eq(machine_state_restore_plan(&input, steps, 3), 3);
    cr_assert_eq(steps[2].call, MACHINE_STATE_CALL_SET_REGS);
    machine_state_free(&s);
}

Test(machine_state, restore_order_subsets)
{
    /* the built-in guest: FPU, no XCRS/LAPIC/TSC_KHZ, no TSC_DEADLINE MSR */
    struct machine_state s;
    small_state(&s);
    struct machine_state_plan_input input;
    machine_state_plan_input_from(&s, 3000000, &input);
    cr_assert_not(input.set_tsc_khz, "no TSC_KHZ section: nothing to set");
    cr_assert_not(input.vcpu_tsc_deadline[0]);
    struct machine_state_step steps[MACHINE_STATE_MAX_STEPS];
    size_t count = plan(&input, steps);
    const struct machine_state_step expected[] = {
        S(SET_CPUID2, 0), S(SET_MP_STATE, 0), S(SET_REGS, 0), S(SET_SREGS, 0), S(SET_FPU, 0),
        S(SET_DEBUGREGS, 0), S(SET_MSRS, 0), S(SET_VCPU_EVENTS, 0), S(SET_CLOCK, VM), S(KVMCLOCK_CTRL, 0),
    };
    assert_plan(steps, count, expected, sizeof(expected) / sizeof(expected[0]));
    machine_state_free(&s);

    /* raw presence: registers only, no VM state */
    struct machine_state_plan_input raw;
    memset(&raw, 0, sizeof(raw));
    raw.vcpu_count = 1;
    raw.vcpu_sections[0] = MACHINE_STATE_HAS_REGS | MACHINE_STATE_HAS_VCPU_EVENTS | MACHINE_STATE_HAS_LAPIC |
                           MACHINE_STATE_HAS_SREGS;
    raw.set_tsc_khz = true;     /* but no TSC_KHZ section: no step */
    count = plan(&raw, steps);
    const struct machine_state_step registers_only[] = {
        S(SET_REGS, 0), S(SET_SREGS, 0), S(SET_LAPIC, 0), S(SET_VCPU_EVENTS, 0),
    };
    assert_plan(steps, count, registers_only, sizeof(registers_only) / sizeof(registers_only[0]));

    /* MSRs with a deadline flag but the deadline step only follows MSRs */
    raw.vcpu_sections[0] = MACHINE_STATE_HAS_MSRS;
    raw.vcpu_tsc_deadline[0] = true;
    raw.vm_sections = MACHINE_STATE_HAS_IRQCHIPS;
    count = plan(&raw, steps);
    const struct machine_state_step msrs_only[] = {
        S(SET_MSRS, 0), S(SET_TSC_DEADLINE, 0), S(SET_IRQCHIP_PIC_MASTER, VM), S(SET_IRQCHIP_PIC_SLAVE, VM),
        S(SET_IRQCHIP_IOAPIC, VM),
    };
    assert_plan(steps, count, msrs_only, sizeof(msrs_only) / sizeof(msrs_only[0]));
}

/* The ordering rules as relations, on the full plan for 3 vCPUs. */
Test(machine_state, restore_order_rules_hold)
{
    struct machine_state_plan_input input;
    memset(&input, 0, sizeof(input));
    input.vcpu_count = 3;
    for (unsigned i = 0; i < 3; i++) {
        input.vcpu_sections[i] = 0xfffu & ~(uint32_t)MACHINE_STATE_HAS_FPU;
        input.vcpu_tsc_deadline[i] = true;
    }
    input.vm_sections = 0x1ffu;
    input.set_tsc_khz = true;
    struct machine_state_step steps[MACHINE_STATE_MAX_STEPS];
    size_t count = plan(&input, steps);
    cr_assert_eq(count, 3 * 12 + 7 + 3);
    for (uint32_t v = 0; v < 3; v++) {
        size_t at[MACHINE_STATE_CALL_KVMCLOCK_CTRL + 1];
        for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
            at[i] = SIZE_MAX;
        for (size_t i = 0; i < count; i++)
            if (steps[i].vcpu == v)
                at[steps[i].call] = i;
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_TSC_KHZ], at[MACHINE_STATE_CALL_SET_CPUID2]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_CPUID2], at[MACHINE_STATE_CALL_SET_MP_STATE]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_REGS], at[MACHINE_STATE_CALL_SET_VCPU_EVENTS]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_SREGS], at[MACHINE_STATE_CALL_SET_LAPIC]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_LAPIC], at[MACHINE_STATE_CALL_SET_MSRS]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_MSRS], at[MACHINE_STATE_CALL_SET_TSC_DEADLINE]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_TSC_DEADLINE], at[MACHINE_STATE_CALL_SET_VCPU_EVENTS]);
        cr_assert_lt(at[MACHINE_STATE_CALL_SET_VCPU_EVENTS], at[MACHINE_STATE_CALL_KVMCLOCK_CTRL]);
    }
    size_t clock = SIZE_MAX, uart = SIZE_MAX, ioapic = SIZE_MAX, last_vcpu_event = 0;
    for (size_t i = 0; i < count; i++) {
        if (steps[i].call == MACHINE_STATE_CALL_SET_CLOCK)
            clock = i;
        if (steps[i].call == MACHINE_STATE_CALL_RESTORE_UART)
            uart = i;
        if (steps[i].call == MACHINE_STATE_CALL_SET_IRQCHIP_IOAPIC)
            ioapic = i;
        if (steps[i].call == MACHINE_STATE_CALL_SET_VCPU_EVENTS)
            last_vcpu_event = i;
    }
    cr_assert_lt(last_vcpu_event, clock, "VM state after every vCPU");
    cr_assert_lt(ioapic, uart, "UART after the irqchips");
    cr_assert_eq(steps[count - 1].call, MACHINE_STATE_CALL_KVMCLOCK_CTRL);
}

/* ---- TSC and TSC_DEADLINE ---------------------------------------------------------------- */

Test(machine_state, tsc_deadline_written_after_the_rest)
{
    const struct kvm_msr_entry msrs[] = {
        { .index = MACHINE_STATE_MSR_IA32_TSC_DEADLINE, .data = 0x5000 },
        { .index = 0xc0000080, .data = 0xd01 },
        { .index = MACHINE_STATE_MSR_IA32_TSC, .data = 0x4000 },
        { .index = 0x1b, .data = 0xfee00900 },
    };
    struct kvm_msr_entry first[4], deferred[4];
    uint32_t first_count, deferred_count;
    machine_state_msr_split(msrs, 4, first, &first_count, deferred, &deferred_count);
    cr_assert_eq(first_count, 3);
    cr_assert_eq(first[0].index, 0xc0000080);
    cr_assert_eq(first[1].index, MACHINE_STATE_MSR_IA32_TSC);
    cr_assert_eq(first[1].data, 0x4000);
    cr_assert_eq(first[2].index, 0x1b);
    cr_assert_eq(deferred_count, 1);
    cr_assert_eq(deferred[0].index, MACHINE_STATE_MSR_IA32_TSC_DEADLINE);
    cr_assert_eq(deferred[0].data, 0x5000, "a non-zero deadline is written as saved");
}

Test(machine_state, zero_tsc_deadline_becomes_the_tsc)
{
    const struct kvm_msr_entry msrs[] = {
        { .index = MACHINE_STATE_MSR_IA32_TSC, .data = 0x123456789 },
        { .index = MACHINE_STATE_MSR_IA32_TSC_DEADLINE, .data = 0 },
    };
    struct kvm_msr_entry first[2], deferred[2];
    uint32_t first_count, deferred_count;
    machine_state_msr_split(msrs, 2, first, &first_count, deferred, &deferred_count);
    cr_assert_eq(first_count, 1);
    cr_assert_eq(first[0].index, MACHINE_STATE_MSR_IA32_TSC);
    cr_assert_eq(deferred_count, 1);
    cr_assert_eq(deferred[0].index, MACHINE_STATE_MSR_IA32_TSC_DEADLINE);
    cr_assert_eq(deferred[0].data, 0x123456789, "Firecracker's fix_zero_tsc_deadline_msr: deadline = TSC");

    /* the plan input agrees */
    struct machine_state s;
    small_state(&s);
    cr_assert_eq(machine_state_vcpu_set_msrs(&s.vcpus[0], msrs, 2), 0);
    struct machine_state_plan_input input;
    machine_state_plan_input_from(&s, 0, &input);
    cr_assert(input.vcpu_tsc_deadline[0]);
    machine_state_free(&s);
}

Test(machine_state, zero_tsc_deadline_without_tsc_left_out)
{
    const struct kvm_msr_entry msrs[] = {
        { .index = 0xc0000080, .data = 0xd01 },
        { .index = MACHINE_STATE_MSR_IA32_TSC_DEADLINE, .data = 0 },
    };
    struct kvm_msr_entry first[2], deferred[2];
    uint32_t first_count, deferred_count;
    machine_state_msr_split(msrs, 2, first, &first_count, deferred, &deferred_count);
    cr_assert_eq(first_count, 1);
    cr_assert_eq(first[0].index, 0xc0000080);
    cr_assert_eq(deferred_count, 0, "a zero deadline with no TSC to take is left out");

    struct machine_state s;
    small_state(&s);
    cr_assert_eq(machine_state_vcpu_set_msrs(&s.vcpus[0], msrs, 2), 0);
    struct machine_state_plan_input input;
    machine_state_plan_input_from(&s, 0, &input);
    cr_assert_not(input.vcpu_tsc_deadline[0]);
    struct machine_state_step steps[MACHINE_STATE_MAX_STEPS];
    size_t count = plan(&input, steps);
    for (size_t i = 0; i < count; i++)
        cr_assert_neq(steps[i].call, MACHINE_STATE_CALL_SET_TSC_DEADLINE);
    machine_state_free(&s);

    /* no deadline at all */
    machine_state_msr_split(msrs, 1, first, &first_count, deferred, &deferred_count);
    cr_assert_eq(first_count, 1);
    cr_assert_eq(deferred_count, 0);
}

Test(machine_state, tsc_scaling_tolerance_is_250_ppm)
{
    cr_assert_not(machine_state_tsc_scaling_needed(2000000, 2000000));
    cr_assert_not(machine_state_tsc_scaling_needed(2000000, 2000500), "exactly 250 ppm is within");
    cr_assert_not(machine_state_tsc_scaling_needed(2000000, 1999500));
    cr_assert(machine_state_tsc_scaling_needed(2000000, 2000501));
    cr_assert(machine_state_tsc_scaling_needed(2000000, 1999499));
    cr_assert(machine_state_tsc_scaling_needed(2000000, 3000000));
    cr_assert(machine_state_tsc_scaling_needed(4294967295u, 1));
    cr_assert_not(machine_state_tsc_scaling_needed(0, 0));
}

/* A KVM_GET_CLOCK without KVM_CLOCK_REALTIME (a host whose clocksource is
 * not the TSC) gets the realtime ringvm sampled and the flag; one with it
 * keeps KVM's pairing. */
Test(machine_state, a_clock_without_realtime_gets_the_sampled_one)
{
    struct kvm_clock_data clock = { .clock = 5000, .flags = KVM_CLOCK_TSC_STABLE };
    machine_state_clock_complete(&clock, 1700000000123456789ull);
    cr_assert_eq(clock.flags, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME);
    cr_assert_eq(clock.realtime, 1700000000123456789ull);
    cr_assert_eq(clock.clock, 5000);
    struct kvm_clock_data paired = { .clock = 7000, .realtime = 42, .host_tsc = 99,
                                     .flags = KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC };
    machine_state_clock_complete(&paired, 1700000000123456789ull);
    cr_assert_eq(paired.realtime, 42, "KVM's own realtime is kept");
    cr_assert_eq(paired.flags, KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC);
}

/* The TSC a destination writes runs ahead of the saved one by the elapsed
 * realtime at the guest's TSC frequency: exact for whole microseconds,
 * never overflowing (a day at most). */
Test(machine_state, tsc_ticks_for_the_elapsed_realtime)
{
    cr_assert_eq(machine_state_tsc_ticks(2000000, 1000000000ull), 2000000000ull, "1 s at 2 GHz");
    cr_assert_eq(machine_state_tsc_ticks(2994373, 250000000ull), 748593250ull, "250 ms at 2994.373 MHz");
    cr_assert_eq(machine_state_tsc_ticks(1000000, 1), 1, "1 ns at 1 GHz");
    cr_assert_eq(machine_state_tsc_ticks(999999, 1), 0, "a fraction of a tick rounds down");
    cr_assert_eq(machine_state_tsc_ticks(0, 1000000000ull), 0);
    uint64_t day = 86400ull * 1000000000ull;
    cr_assert_eq(machine_state_tsc_ticks(5000000, day), 86400ull * 5000000000ull);
    cr_assert_eq(machine_state_tsc_ticks(5000000, UINT64_MAX), 86400ull * 5000000000ull, "capped at a day");
}

Test(machine_state, names)
{
    cr_assert_str_eq(machine_state_section_name(MACHINE_STATE_SECTION_VCPU_EVENTS), "vcpu-events");
    cr_assert_null(machine_state_section_name(0x7777));
    cr_assert_str_eq(machine_state_call_name(MACHINE_STATE_CALL_SET_TSC_DEADLINE), "KVM_SET_MSRS(TSC_DEADLINE)");
    cr_assert_str_eq(machine_state_call_name(0), "unknown");
}

/* Random corruption (fixed seed): every input is either refused with a
 * message or decodes to a state that validates and encodes again; no read
 * leaves the guarded buffer. */
Test(machine_state, corrupted_bytes_never_escape_the_buffer)
{
    struct machine_state s;
    full_state(&s);
    size_t length;
    uint8_t *original = encode(&s, &length);
    machine_state_free(&s);
    uint8_t *bytes = malloc(length);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    unsigned accepted = 0;
    for (unsigned round = 0; round < 3000; round++) {
        memcpy(bytes, original, length);
        unsigned flips = 1 + round % 4;
        for (unsigned f = 0; f < flips; f++) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes[seed % length] ^= (uint8_t)(1u << ((seed >> 32) % 8));
        }
        struct machine_state decoded;
        char error[512] = "";
        if (decode_guarded(bytes, length, &decoded, error, sizeof(error)) == 0) {
            accepted++;
            size_t size = machine_state_encoded_size(&decoded);
            uint8_t *again = malloc(size);
            cr_assert_eq(machine_state_encode(&decoded, again, size, error, sizeof(error)), size,
                         "round %u: accepted but not encodable: %s", round, error);
            free(again);
            machine_state_free(&decoded);
        } else {
            cr_assert_neq(error[0], '\0', "round %u: refused without a message", round);
        }
    }
    /* Flips inside register values are legal states: some must pass. */
    cr_assert_gt(accepted, 0u);
    free(bytes);
    free(original);
}

/* The decoder under libFuzzer (tests/fuzz/machine_state_fuzz.c): every
 * accepted state validates, encodes canonically and plans its restore
 * within bounds. 10 s; a 2-core machine runs a few hundred thousand inputs. */
Test(machine_state, decoder_10s_under_libfuzzer_no_crash)
{
    fuzz_runner_run(&(struct fuzz_run){ .target = "machine_state_fuzz", .corpus = "tests/fuzz/machine-state-corpus",
                                        .seconds = 10, .extra_options = "-malloc_limit_mb=512",
                                        .min_executions = 20000 });
}
