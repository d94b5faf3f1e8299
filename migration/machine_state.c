/*
 * Machine state v2: encode / decode / validate (see machine_state.h and
 * docs/migration-protocol.md "Machine state v2"). The restore order is
 * machine_state_order.c's, the KVM capture and restore
 * machine_state_kvm.c's.
 *
 * Wire rules in one place:
 *   - every integer little-endian, written field by field with
 *     mig_put_u32/u64 (migration/protocol.h): kernel structs have padding
 *     and reserved fields we do not control, so they never go out by memcpy.
 *     Three exceptions are byte arrays whose layout is fixed by the
 *     hardware, not by the compiler: kvm_lapic_state.regs (the APIC
 *     register page, 32-bit registers at 16-byte strides), the XSAVE region
 *     (the architectural XSAVE format, offsets from CPUID leaf 0xD) and
 *     kvm_fpu's fpr/xmm byte arrays; they are copied as bytes.
 *   - a 16-byte header (magic, format version, section count), then
 *     sections of a 16-byte header (type u32, version u16, flags u16, vcpu
 *     u32, length u32) and `length` payload bytes.
 */
#include "migration/machine_state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/protocol.h"
#include "vmm/cmos_rtc.h"

/* ---- section table -------------------------------------------------------- */

struct section_info {
    uint32_t type;
    const char *name;
    bool vcpu_scope;
    bool may_skip;      /* the flag this ringvm writes and expects */
    uint16_t version;   /* the version this ringvm reads and writes */
};

static const struct section_info section_table[] = {
    { MACHINE_STATE_SECTION_MACHINE, "machine", false, false, 1 },
    { MACHINE_STATE_SECTION_CLOCK, "clock", false, false, 1 },
    { MACHINE_STATE_SECTION_IRQCHIP, "irqchip", false, false, 1 },
    { MACHINE_STATE_SECTION_PIT2, "pit2", false, false, 1 },
    { MACHINE_STATE_SECTION_TSC_FREQUENCY, "tsc-frequency", false, false, 1 },
    { MACHINE_STATE_SECTION_BOOT_INFO, "boot-info", false, true, 1 },
    { MACHINE_STATE_SECTION_UART, "uart", false, false, 1 },
    { MACHINE_STATE_SECTION_CMOS, "cmos", false, true, 1 },
    { MACHINE_STATE_SECTION_MP_STATE, "mp-state", true, false, 1 },
    { MACHINE_STATE_SECTION_REGS, "regs", true, false, 1 },
    { MACHINE_STATE_SECTION_SREGS, "sregs", true, false, 1 },
    { MACHINE_STATE_SECTION_XSAVE, "xsave", true, false, 1 },
    { MACHINE_STATE_SECTION_FPU, "fpu", true, false, 1 },
    { MACHINE_STATE_SECTION_XCRS, "xcrs", true, false, 1 },
    { MACHINE_STATE_SECTION_DEBUGREGS, "debugregs", true, false, 1 },
    { MACHINE_STATE_SECTION_LAPIC, "lapic", true, false, 1 },
    { MACHINE_STATE_SECTION_TSC_KHZ, "tsc-khz", true, false, 1 },
    { MACHINE_STATE_SECTION_CPUID2, "cpuid2", true, false, 1 },
    { MACHINE_STATE_SECTION_MSRS, "msrs", true, false, 1 },
    { MACHINE_STATE_SECTION_VCPU_EVENTS, "vcpu-events", true, false, 1 },
};

static const struct section_info *section_lookup(uint32_t type)
{
    for (size_t i = 0; i < sizeof(section_table) / sizeof(section_table[0]); i++)
        if (section_table[i].type == type)
            return &section_table[i];
    return NULL;
}

const char *machine_state_section_name(uint32_t type)
{
    const struct section_info *info = section_lookup(type);
    return info != NULL ? info->name : NULL;
}

/* vCPU section type -> presence bit (0 for VM types). */
static uint32_t vcpu_section_bit(uint32_t type)
{
    switch (type) {
    case MACHINE_STATE_SECTION_MP_STATE: return MACHINE_STATE_HAS_MP_STATE;
    case MACHINE_STATE_SECTION_REGS: return MACHINE_STATE_HAS_REGS;
    case MACHINE_STATE_SECTION_SREGS: return MACHINE_STATE_HAS_SREGS;
    case MACHINE_STATE_SECTION_XSAVE: return MACHINE_STATE_HAS_XSAVE;
    case MACHINE_STATE_SECTION_FPU: return MACHINE_STATE_HAS_FPU;
    case MACHINE_STATE_SECTION_XCRS: return MACHINE_STATE_HAS_XCRS;
    case MACHINE_STATE_SECTION_DEBUGREGS: return MACHINE_STATE_HAS_DEBUGREGS;
    case MACHINE_STATE_SECTION_LAPIC: return MACHINE_STATE_HAS_LAPIC;
    case MACHINE_STATE_SECTION_TSC_KHZ: return MACHINE_STATE_HAS_TSC_KHZ;
    case MACHINE_STATE_SECTION_CPUID2: return MACHINE_STATE_HAS_CPUID2;
    case MACHINE_STATE_SECTION_MSRS: return MACHINE_STATE_HAS_MSRS;
    case MACHINE_STATE_SECTION_VCPU_EVENTS: return MACHINE_STATE_HAS_VCPU_EVENTS;
    }
    return 0;
}

/* "section regs of vCPU 1: " / "section clock: " then the message. */
static void __attribute__((format(printf, 5, 6)))
section_error(char *error, size_t error_size, uint32_t type, uint32_t vcpu, const char *format, ...)
{
    const char *name = machine_state_section_name(type);
    char where[64];
    if (name == NULL)
        snprintf(where, sizeof(where), "section type 0x%04" PRIx32, type);
    else
        snprintf(where, sizeof(where), "section %s", name);
    int used;
    if (vcpu == MACHINE_STATE_NO_VCPU)
        used = snprintf(error, error_size, "%s: ", where);
    else
        used = snprintf(error, error_size, "%s of vCPU %" PRIu32 ": ", where, vcpu);
    if (used < 0 || (size_t)used >= error_size)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(error + used, error_size - (size_t)used, format, args);
    va_end(args);
}

/* ---- init / free ------------------------------------------------------------ */

int machine_state_init(struct machine_state *state, uint32_t vcpu_count)
{
    memset(state, 0, sizeof(*state));
    if (vcpu_count == 0 || vcpu_count > MACHINE_STATE_MAX_VCPUS)
        return -EINVAL;
    state->vcpus = calloc(vcpu_count, sizeof(*state->vcpus));
    if (state->vcpus == NULL)
        return -ENOMEM;
    state->vcpu_count = vcpu_count;
    return 0;
}

void machine_state_free(struct machine_state *state)
{
    if (state->vcpus != NULL) {
        for (uint32_t i = 0; i < state->vcpu_count; i++) {
            free(state->vcpus[i].xsave);
            free(state->vcpus[i].cpuid);
            free(state->vcpus[i].msrs);
        }
        free(state->vcpus);
    }
    memset(state, 0, sizeof(*state));
}

static int copy_array(void **target, const void *source, size_t bytes)
{
    void *copy = malloc(bytes > 0 ? bytes : 1);
    if (copy == NULL)
        return -ENOMEM;
    if (bytes > 0)
        memcpy(copy, source, bytes);
    free(*target);
    *target = copy;
    return 0;
}

int machine_state_vcpu_set_xsave(struct machine_state_vcpu *vcpu, const void *xsave, uint32_t size)
{
    void *target = vcpu->xsave;
    int result = copy_array(&target, xsave, size);
    vcpu->xsave = target;
    if (result == 0)
        vcpu->xsave_size = size;
    return result;
}

int machine_state_vcpu_set_cpuid(struct machine_state_vcpu *vcpu, const struct kvm_cpuid_entry2 *entries,
                                 uint32_t count)
{
    void *target = vcpu->cpuid;
    int result = copy_array(&target, entries, (size_t)count * sizeof(*entries));
    vcpu->cpuid = target;
    if (result == 0)
        vcpu->cpuid_count = count;
    return result;
}

int machine_state_vcpu_set_msrs(struct machine_state_vcpu *vcpu, const struct kvm_msr_entry *entries,
                                uint32_t count)
{
    void *target = vcpu->msrs;
    int result = copy_array(&target, entries, (size_t)count * sizeof(*entries));
    vcpu->msrs = target;
    if (result == 0)
        vcpu->msr_count = count;
    return result;
}

/* ---- payload sizes ----------------------------------------------------------- */

#define MACHINE_SIZE 8u
#define CLOCK_SIZE 28u
#define PIC_SIZE (4u + 16u)
#define IOAPIC_SIZE (4u + 8u + 12u + 8u * KVM_IOAPIC_NUM_PINS)
#define PIT_CHANNEL_SIZE 24u
#define PIT2_SIZE (3u * PIT_CHANNEL_SIZE + 4u)
#define TSC_FREQUENCY_SIZE 4u
#define UART_FIXED_SIZE 13u
#define CMOS_SIZE 129u
#define MP_STATE_SIZE 4u
#define REGS_SIZE (18u * 8u)
#define SEGMENT_SIZE 23u
#define DTABLE_SIZE 10u
#define SREGS_SIZE (8u * SEGMENT_SIZE + 2u * DTABLE_SIZE + 7u * 8u + 4u * 8u)
#define FPU_SIZE (128u + 2u + 2u + 1u + 2u + 8u + 8u + 256u + 4u)
#define XCR_SIZE 12u
#define DEBUGREGS_SIZE (7u * 8u)
#define LAPIC_SIZE KVM_APIC_REG_SIZE
#define TSC_KHZ_SIZE 4u
#define CPUID_ENTRY_SIZE 28u
#define MSR_ENTRY_SIZE 12u
#define VCPU_EVENTS_SIZE 37u

#define IOAPIC_BASE_ADDRESS 0xfec00000ull
#define CLOCK_FLAGS_KNOWN (KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC)
#define PIT_FLAGS_KNOWN (KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON)
#define CPUID_FLAGS_KNOWN \
    (KVM_CPUID_FLAG_SIGNIFCANT_INDEX | KVM_CPUID_FLAG_STATEFUL_FUNC | KVM_CPUID_FLAG_STATE_READ_NEXT)
#define EVENTS_FLAGS_KNOWN 0x3fu        /* KVM_VCPUEVENT_VALID_NMI_PENDING .. TRIPLE_FAULT */

/* ---- byte cursor ---------------------------------------------------------------- */

/* Writer: out has room for everything (sizes computed first). */
struct writer {
    uint8_t *out;
    size_t at;
};
static void put_u8(struct writer *w, uint8_t v) { w->out[w->at++] = v; }
static void put_u16(struct writer *w, uint16_t v)
{
    w->out[w->at++] = (uint8_t)v;
    w->out[w->at++] = (uint8_t)(v >> 8);
}
static void put_u32(struct writer *w, uint32_t v) { mig_put_u32(w->out + w->at, v); w->at += 4; }
static void put_u64(struct writer *w, uint64_t v) { mig_put_u64(w->out + w->at, v); w->at += 8; }
static void put_bytes(struct writer *w, const void *bytes, size_t length)
{
    if (length > 0)
        memcpy(w->out + w->at, bytes, length);
    w->at += length;
}

/* Reader over one payload whose exact length was checked before: the
 * bounds check here is a second line that never fires on a correct
 * parser; a read past the end yields zeros and sets `overrun`. */
struct reader {
    const uint8_t *in;
    size_t length, at;
    bool overrun;
};
static bool reader_take(struct reader *r, size_t n)
{
    if (r->overrun || n > r->length - r->at) {
        r->overrun = true;
        return false;
    }
    return true;
}
static uint8_t get_u8(struct reader *r)
{
    if (!reader_take(r, 1))
        return 0;
    return r->in[r->at++];
}
static uint16_t get_u16(struct reader *r)
{
    if (!reader_take(r, 2))
        return 0;
    uint16_t v = (uint16_t)(r->in[r->at] | (r->in[r->at + 1] << 8));
    r->at += 2;
    return v;
}
static uint32_t get_u32(struct reader *r)
{
    if (!reader_take(r, 4))
        return 0;
    uint32_t v = mig_get_u32(r->in + r->at);
    r->at += 4;
    return v;
}
static uint64_t get_u64(struct reader *r)
{
    if (!reader_take(r, 8))
        return 0;
    uint64_t v = mig_get_u64(r->in + r->at);
    r->at += 8;
    return v;
}
static void get_bytes(struct reader *r, void *out, size_t n)
{
    if (!reader_take(r, n)) {
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->in + r->at, n);
    r->at += n;
}

/* ---- value checks (shared by encode and decode) ------------------------------- */

#define FAIL(type, vcpu, ...) do { section_error(error, error_size, (type), (vcpu), __VA_ARGS__); return -1; } while (0)
#define CHECK_BOOL(type, vcpu, name, value) \
    do { if ((value) > 1) FAIL((type), (vcpu), "%s %u is not 0 or 1", (name), (unsigned)(value)); } while (0)

static int check_segment(const struct kvm_segment *s, const char *name, uint32_t vcpu, char *error,
                         size_t error_size)
{
    const uint32_t t = MACHINE_STATE_SECTION_SREGS;
    char field[32];
    /* type is the 4-bit descriptor type, dpl 2 bits, the rest single bits
     * of the access rights: what KVM_GET_SREGS gives back. */
    if (s->type > 15)
        FAIL(t, vcpu, "%s.type %u out of range (0..15)", name, s->type);
    if (s->dpl > 3)
        FAIL(t, vcpu, "%s.dpl %u out of range (0..3)", name, s->dpl);
    const struct { const char *field; uint8_t value; } bits[] = {
        { "present", s->present }, { "db", s->db }, { "s", s->s }, { "l", s->l },
        { "g", s->g }, { "avl", s->avl }, { "unusable", s->unusable },
    };
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        snprintf(field, sizeof(field), "%s.%s", name, bits[i].field);
        CHECK_BOOL(t, vcpu, field, bits[i].value);
    }
    return 0;
}

static int check_vcpu_values(const struct machine_state_vcpu *v, uint32_t vcpu, char *error, size_t error_size)
{
    if (v->sections & MACHINE_STATE_HAS_MP_STATE) {
        /* The states x86 KVM_SET_MP_STATE accepts (the others are s390's
         * or arm64's). */
        uint32_t m = v->mp_state.mp_state;
        if (!(m == KVM_MP_STATE_RUNNABLE || m == KVM_MP_STATE_UNINITIALIZED || m == KVM_MP_STATE_INIT_RECEIVED ||
              m == KVM_MP_STATE_HALTED || m == KVM_MP_STATE_SIPI_RECEIVED || m == KVM_MP_STATE_AP_RESET_HOLD))
            FAIL(MACHINE_STATE_SECTION_MP_STATE, vcpu, "mp_state %" PRIu32 " is not an x86 state (0..4 or 9)", m);
    }
    if (v->sections & MACHINE_STATE_HAS_SREGS) {
        const struct kvm_sregs *s = &v->sregs;
        const struct { const char *name; const struct kvm_segment *segment; } segments[] = {
            { "cs", &s->cs }, { "ds", &s->ds }, { "es", &s->es }, { "fs", &s->fs },
            { "gs", &s->gs }, { "ss", &s->ss }, { "tr", &s->tr }, { "ldt", &s->ldt },
        };
        for (size_t i = 0; i < 8; i++)
            if (check_segment(segments[i].segment, segments[i].name, vcpu, error, error_size) != 0)
                return -1;
        /* api.rst: at most one bit (an interrupt acknowledged by the APIC
         * but not yet injected). */
        unsigned bits = 0;
        for (unsigned i = 0; i < 4; i++)
            bits += (unsigned)__builtin_popcountll(s->interrupt_bitmap[i]);
        if (bits > 1)
            FAIL(MACHINE_STATE_SECTION_SREGS, vcpu, "interrupt_bitmap has %u bits set (at most 1)", bits);
    }
    if ((v->sections & MACHINE_STATE_HAS_XSAVE) &&
        (v->xsave_size < MACHINE_STATE_XSAVE_MIN || v->xsave_size > MACHINE_STATE_XSAVE_MAX ||
         v->xsave_size % 4 != 0 || v->xsave == NULL))
        FAIL(MACHINE_STATE_SECTION_XSAVE, vcpu, "size %" PRIu32 " (must be a multiple of 4 in %u..%u)",
             v->xsave_size, MACHINE_STATE_XSAVE_MIN, MACHINE_STATE_XSAVE_MAX);
    if (v->sections & MACHINE_STATE_HAS_XCRS) {
        if (v->xcrs.nr_xcrs > KVM_MAX_XCRS)
            FAIL(MACHINE_STATE_SECTION_XCRS, vcpu, "nr_xcrs %" PRIu32 " exceeds %u", v->xcrs.nr_xcrs, KVM_MAX_XCRS);
        if (v->xcrs.flags != 0)   /* KVM_SET_XCRS refuses any */
            FAIL(MACHINE_STATE_SECTION_XCRS, vcpu, "flags 0x%" PRIx32 " (must be 0)", v->xcrs.flags);
    }
    if (v->sections & MACHINE_STATE_HAS_DEBUGREGS) {
        /* KVM_SET_DEBUGREGS refuses flags and upper halves of DR6/DR7. */
        if (v->debugregs.flags != 0)
            FAIL(MACHINE_STATE_SECTION_DEBUGREGS, vcpu, "flags 0x%llx (must be 0)",
                 (unsigned long long)v->debugregs.flags);
        if (v->debugregs.dr6 >> 32)
            FAIL(MACHINE_STATE_SECTION_DEBUGREGS, vcpu, "dr6 0x%llx has bits above 31",
                 (unsigned long long)v->debugregs.dr6);
        if (v->debugregs.dr7 >> 32)
            FAIL(MACHINE_STATE_SECTION_DEBUGREGS, vcpu, "dr7 0x%llx has bits above 31",
                 (unsigned long long)v->debugregs.dr7);
    }
    if ((v->sections & MACHINE_STATE_HAS_TSC_KHZ) && v->tsc_khz == 0)
        FAIL(MACHINE_STATE_SECTION_TSC_KHZ, vcpu, "tsc_khz 0 (a TSC has a frequency)");
    if (v->sections & MACHINE_STATE_HAS_CPUID2) {
        if (v->cpuid_count == 0 || v->cpuid_count > MACHINE_STATE_MAX_CPUID || v->cpuid == NULL)
            FAIL(MACHINE_STATE_SECTION_CPUID2, vcpu, "%" PRIu32 " entries (must be 1..%u)", v->cpuid_count,
                 MACHINE_STATE_MAX_CPUID);
        for (uint32_t i = 0; i < v->cpuid_count; i++)
            if (v->cpuid[i].flags & ~(uint32_t)CPUID_FLAGS_KNOWN)
                FAIL(MACHINE_STATE_SECTION_CPUID2, vcpu, "entry %" PRIu32 " (function 0x%" PRIx32 ") has unknown flags 0x%"
                     PRIx32, i, v->cpuid[i].function, v->cpuid[i].flags);
    }
    if (v->sections & MACHINE_STATE_HAS_MSRS) {
        if (v->msr_count > MACHINE_STATE_MAX_MSRS || (v->msr_count > 0 && v->msrs == NULL))
            FAIL(MACHINE_STATE_SECTION_MSRS, vcpu, "count %" PRIu32 " exceeds %u", v->msr_count,
                 MACHINE_STATE_MAX_MSRS);
        /* One value per MSR: with two, which one the guest had is unknown.
         * Quadratic, at most 1024 entries. */
        for (uint32_t i = 1; i < v->msr_count; i++)
            for (uint32_t j = 0; j < i; j++)
                if (v->msrs[i].index == v->msrs[j].index)
                    FAIL(MACHINE_STATE_SECTION_MSRS, vcpu, "MSR 0x%" PRIx32 " appears twice (entries %" PRIu32
                         " and %" PRIu32 ")", v->msrs[i].index, j, i);
    }
    if (v->sections & MACHINE_STATE_HAS_VCPU_EVENTS) {
        const struct kvm_vcpu_events *e = &v->events;
        const uint32_t t = MACHINE_STATE_SECTION_VCPU_EVENTS;
        if (e->flags & ~EVENTS_FLAGS_KNOWN)
            FAIL(t, vcpu, "flags 0x%" PRIx32 " has unknown bits", e->flags);
        if (e->exception.nr >= 32)
            FAIL(t, vcpu, "exception.nr %u is not an exception vector (0..31)", e->exception.nr);
        if (e->interrupt.shadow & ~(KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI))
            FAIL(t, vcpu, "interrupt.shadow 0x%x has unknown bits", e->interrupt.shadow);
        if (e->sipi_vector > 0xff)
            FAIL(t, vcpu, "sipi_vector 0x%" PRIx32 " exceeds 0xff", e->sipi_vector);
        const struct { const char *name; uint8_t value; } bits[] = {
            { "exception.injected", e->exception.injected },
            { "exception.has_error_code", e->exception.has_error_code },
            { "exception.pending", e->exception.pending },
            { "interrupt.injected", e->interrupt.injected },
            { "interrupt.soft", e->interrupt.soft },
            { "nmi.injected", e->nmi.injected },
            { "nmi.pending", e->nmi.pending },
            { "nmi.masked", e->nmi.masked },
            { "smi.smm", e->smi.smm },
            { "smi.pending", e->smi.pending },
            { "smi.smm_inside_nmi", e->smi.smm_inside_nmi },
            { "smi.latched_init", e->smi.latched_init },
            { "triple_fault.pending", e->triple_fault.pending },
            { "exception_has_payload", e->exception_has_payload },
        };
        for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
            CHECK_BOOL(t, vcpu, bits[i].name, bits[i].value);
    }
    return 0;
}

static int check_pic(const struct kvm_pic_state *p, uint32_t chip, char *error, size_t error_size)
{
    const uint32_t t = MACHINE_STATE_SECTION_IRQCHIP;
    const char *name = chip == KVM_IRQCHIP_PIC_MASTER ? "pic master" : "pic slave";
    /* What KVM's i8259 model can hold: irq_base from ICW2 & 0xf8, a 3-bit
     * priority rotation, init_state 0..3, the rest single bits. */
    if (p->irq_base & 7)
        FAIL(t, MACHINE_STATE_NO_VCPU, "%s irq_base 0x%02x is not a multiple of 8", name, p->irq_base);
    if (p->priority_add > 7)
        FAIL(t, MACHINE_STATE_NO_VCPU, "%s priority_add %u out of range (0..7)", name, p->priority_add);
    if (p->init_state > 3)
        FAIL(t, MACHINE_STATE_NO_VCPU, "%s init_state %u out of range (0..3)", name, p->init_state);
    const struct { const char *field; uint8_t value; } bits[] = {
        { "read_reg_select", p->read_reg_select }, { "poll", p->poll }, { "special_mask", p->special_mask },
        { "auto_eoi", p->auto_eoi }, { "rotate_on_auto_eoi", p->rotate_on_auto_eoi },
        { "special_fully_nested_mode", p->special_fully_nested_mode }, { "init4", p->init4 },
    };
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
        if (bits[i].value > 1)
            FAIL(t, MACHINE_STATE_NO_VCPU, "%s %s %u is not 0 or 1", name, bits[i].field, bits[i].value);
    return 0;
}

/* The same checks (and messages) as the destination's uart_state_restore. */
static int check_uart(const struct uart_state *u, char *error, size_t error_size)
{
    const uint32_t t = MACHINE_STATE_SECTION_UART;
    char reason[256];
    if (uart_state_check(u, reason, sizeof(reason)) != 0)
        FAIL(t, MACHINE_STATE_NO_VCPU, "%s", reason);
    return 0;
}

static int check_text(uint32_t type, const char *field, const char *text, size_t max, char *error,
                      size_t error_size)
{
    size_t length = strnlen(text, max + 1);
    if (length > max)
        FAIL(type, MACHINE_STATE_NO_VCPU, "%s longer than %zu bytes", field, max);
    /* Shown by vm.info and on stderr: printable ASCII only, the byte named
     * and never echoed (as the workload text in DEVICE_STATE). */
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c > 0x7e)
            FAIL(type, MACHINE_STATE_NO_VCPU, "%s has byte 0x%02x at offset %zu (printable ASCII only)", field, c, i);
    }
    return 0;
}

static int check_vm_values(const struct machine_state_vm *vm, char *error, size_t error_size)
{
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    if (vm->guest_kind != MACHINE_STATE_GUEST_BUILTIN && vm->guest_kind != MACHINE_STATE_GUEST_LINUX)
        FAIL(MACHINE_STATE_SECTION_MACHINE, none, "guest kind %" PRIu32 " unknown (0 built-in, 1 linux)",
             vm->guest_kind);
    if ((vm->sections & MACHINE_STATE_HAS_CLOCK) && (vm->clock.flags & ~(uint32_t)CLOCK_FLAGS_KNOWN))
        FAIL(MACHINE_STATE_SECTION_CLOCK, none, "flags 0x%" PRIx32 " has unknown bits", vm->clock.flags);
    if ((vm->sections & MACHINE_STATE_HAS_PIC_MASTER) &&
        check_pic(&vm->pic_master, KVM_IRQCHIP_PIC_MASTER, error, error_size) != 0)
        return -1;
    if ((vm->sections & MACHINE_STATE_HAS_PIC_SLAVE) &&
        check_pic(&vm->pic_slave, KVM_IRQCHIP_PIC_SLAVE, error, error_size) != 0)
        return -1;
    if (vm->sections & MACHINE_STATE_HAS_IOAPIC) {
        /* KVM's IOAPIC sits at the fixed base; the guest cannot move it. */
        if (vm->ioapic.base_address != IOAPIC_BASE_ADDRESS)
            FAIL(MACHINE_STATE_SECTION_IRQCHIP, none, "ioapic base_address 0x%llx (must be 0x%llx)",
                 (unsigned long long)vm->ioapic.base_address, IOAPIC_BASE_ADDRESS);
        if (vm->ioapic.id > 15)
            FAIL(MACHINE_STATE_SECTION_IRQCHIP, none, "ioapic id %" PRIu32 " out of range (0..15)", vm->ioapic.id);
        if (vm->ioapic.irr >> KVM_IOAPIC_NUM_PINS)
            FAIL(MACHINE_STATE_SECTION_IRQCHIP, none, "ioapic irr 0x%" PRIx32 " has bits above pin %u",
                 vm->ioapic.irr, KVM_IOAPIC_NUM_PINS - 1);
    }
    if (vm->sections & MACHINE_STATE_HAS_PIT2) {
        if (vm->pit.flags & ~(uint32_t)PIT_FLAGS_KNOWN)
            FAIL(MACHINE_STATE_SECTION_PIT2, none, "flags 0x%" PRIx32 " has unknown bits", vm->pit.flags);
        for (unsigned i = 0; i < 3; i++) {
            const struct kvm_pit_channel_state *c = &vm->pit.channels[i];
            if (c->count > 0x10000)
                FAIL(MACHINE_STATE_SECTION_PIT2, none, "channel %u count %" PRIu32 " exceeds 65536", i, c->count);
            if (c->bcd > 1)
                FAIL(MACHINE_STATE_SECTION_PIT2, none, "channel %u bcd %u is not 0 or 1", i, c->bcd);
            if (c->gate > 1)
                FAIL(MACHINE_STATE_SECTION_PIT2, none, "channel %u gate %u is not 0 or 1", i, c->gate);
        }
    }
    if ((vm->sections & MACHINE_STATE_HAS_TSC_FREQUENCY) && vm->tsc_khz == 0)
        FAIL(MACHINE_STATE_SECTION_TSC_FREQUENCY, none, "tsc_khz 0 (a TSC has a frequency)");
    if (vm->sections & MACHINE_STATE_HAS_BOOT_INFO) {
        if (check_text(MACHINE_STATE_SECTION_BOOT_INFO, "cmdline", vm->cmdline, MACHINE_STATE_CMDLINE_MAX, error,
                       error_size) != 0 ||
            check_text(MACHINE_STATE_SECTION_BOOT_INFO, "boot protocol", vm->boot_protocol,
                       MACHINE_STATE_PROTOCOL_MAX, error, error_size) != 0)
            return -1;
    }
    if ((vm->sections & MACHINE_STATE_HAS_UART) && check_uart(&vm->uart, error, error_size) != 0)
        return -1;
    if ((vm->sections & MACHINE_STATE_HAS_CMOS) && vm->cmos_index > 0x7f)
        FAIL(MACHINE_STATE_SECTION_CMOS, none, "index 0x%02x exceeds 0x7f", vm->cmos_index);
    return 0;
}

/* Which sections must be there, given the others. */
static int check_presence(const struct machine_state *state, char *error, size_t error_size)
{
    const struct machine_state_vm *vm = &state->vm;
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    if (!(vm->sections & MACHINE_STATE_HAS_CLOCK)) {
        snprintf(error, error_size, "machine state: required section clock missing");
        return -1;
    }
    uint32_t chips = vm->sections & MACHINE_STATE_HAS_IRQCHIPS;
    if (chips != 0 && chips != MACHINE_STATE_HAS_IRQCHIPS) {
        snprintf(error, error_size, "machine state: irqchip %s missing (all three chips or none)",
                 !(chips & MACHINE_STATE_HAS_PIC_MASTER) ? "pic master"
                 : !(chips & MACHINE_STATE_HAS_PIC_SLAVE) ? "pic slave" : "ioapic");
        return -1;
    }
    bool irqchip = chips != 0;
    if ((vm->sections & MACHINE_STATE_HAS_PIT2) && !irqchip)
        FAIL(MACHINE_STATE_SECTION_PIT2, none, "present without the in-kernel irqchip (KVM_CREATE_PIT2 needs it)");
    if (vm->guest_kind == MACHINE_STATE_GUEST_LINUX) {
        /* A Linux VM always has them (vmm/vm.c). */
        const struct { uint32_t bit; const char *name; } needed[] = {
            { MACHINE_STATE_HAS_PIC_MASTER, "irqchip" }, { MACHINE_STATE_HAS_PIT2, "pit2" },
            { MACHINE_STATE_HAS_UART, "uart" },
        };
        for (size_t i = 0; i < 3; i++)
            if (!(vm->sections & needed[i].bit)) {
                snprintf(error, error_size, "machine state: a linux guest needs section %s", needed[i].name);
                return -1;
            }
    } else {
        if (vm->sections & MACHINE_STATE_HAS_UART)
            FAIL(MACHINE_STATE_SECTION_UART, none, "present for the built-in guest (it has no UART)");
        if (vm->sections & MACHINE_STATE_HAS_BOOT_INFO)
            FAIL(MACHINE_STATE_SECTION_BOOT_INFO, none, "present for the built-in guest");
    }
    const struct { uint32_t bit; uint32_t type; } required[] = {
        { MACHINE_STATE_HAS_MP_STATE, MACHINE_STATE_SECTION_MP_STATE },
        { MACHINE_STATE_HAS_REGS, MACHINE_STATE_SECTION_REGS },
        { MACHINE_STATE_HAS_SREGS, MACHINE_STATE_SECTION_SREGS },
        { MACHINE_STATE_HAS_DEBUGREGS, MACHINE_STATE_SECTION_DEBUGREGS },
        { MACHINE_STATE_HAS_CPUID2, MACHINE_STATE_SECTION_CPUID2 },
        { MACHINE_STATE_HAS_MSRS, MACHINE_STATE_SECTION_MSRS },
        { MACHINE_STATE_HAS_VCPU_EVENTS, MACHINE_STATE_SECTION_VCPU_EVENTS },
    };
    for (uint32_t i = 0; i < state->vcpu_count; i++) {
        uint32_t have = state->vcpus[i].sections;
        for (size_t r = 0; r < sizeof(required) / sizeof(required[0]); r++)
            if (!(have & required[r].bit)) {
                snprintf(error, error_size, "vCPU %" PRIu32 ": required section %s missing", i,
                         machine_state_section_name(required[r].type));
                return -1;
            }
        bool xsave = have & MACHINE_STATE_HAS_XSAVE, fpu = have & MACHINE_STATE_HAS_FPU;
        if (xsave == fpu) {
            snprintf(error, error_size, "vCPU %" PRIu32 ": %s (exactly one of xsave and fpu)", i,
                     xsave ? "both xsave and fpu" : "neither xsave nor fpu");
            return -1;
        }
        bool lapic = have & MACHINE_STATE_HAS_LAPIC;
        if (lapic != irqchip) {
            snprintf(error, error_size, "vCPU %" PRIu32 ": %s", i,
                     lapic ? "lapic present without the in-kernel irqchip"
                           : "lapic missing although the VM has the in-kernel irqchip");
            return -1;
        }
    }
    return 0;
}

int machine_state_validate(const struct machine_state *state, char *error, size_t error_size)
{
    if (state->vcpu_count == 0 || state->vcpu_count > MACHINE_STATE_MAX_VCPUS || state->vcpus == NULL) {
        snprintf(error, error_size, "section machine: vcpu_count %" PRIu32 " (must be 1..%u)", state->vcpu_count,
                 MACHINE_STATE_MAX_VCPUS);
        return -1;
    }
    if (check_vm_values(&state->vm, error, error_size) != 0)
        return -1;
    for (uint32_t i = 0; i < state->vcpu_count; i++)
        if (check_vcpu_values(&state->vcpus[i], i, error, error_size) != 0)
            return -1;
    return check_presence(state, error, error_size);
}

/* ---- encode ------------------------------------------------------------------- */

static size_t uart_payload_size(const struct uart_state *u)
{
    return UART_FIXED_SIZE + (u->rx_count <= UART_FIFO_SIZE ? u->rx_count : UART_FIFO_SIZE);
}

static size_t vcpu_payload_size(const struct machine_state_vcpu *v, uint32_t bit)
{
    switch (bit) {
    case MACHINE_STATE_HAS_MP_STATE: return MP_STATE_SIZE;
    case MACHINE_STATE_HAS_REGS: return REGS_SIZE;
    case MACHINE_STATE_HAS_SREGS: return SREGS_SIZE;
    case MACHINE_STATE_HAS_XSAVE: return v->xsave_size;
    case MACHINE_STATE_HAS_FPU: return FPU_SIZE;
    case MACHINE_STATE_HAS_XCRS: return 8u + XCR_SIZE * (v->xcrs.nr_xcrs <= KVM_MAX_XCRS ? v->xcrs.nr_xcrs : 0);
    case MACHINE_STATE_HAS_DEBUGREGS: return DEBUGREGS_SIZE;
    case MACHINE_STATE_HAS_LAPIC: return LAPIC_SIZE;
    case MACHINE_STATE_HAS_TSC_KHZ: return TSC_KHZ_SIZE;
    case MACHINE_STATE_HAS_CPUID2: return 4u + (size_t)CPUID_ENTRY_SIZE * v->cpuid_count;
    case MACHINE_STATE_HAS_MSRS: return 4u + (size_t)MSR_ENTRY_SIZE * v->msr_count;
    case MACHINE_STATE_HAS_VCPU_EVENTS: return VCPU_EVENTS_SIZE;
    }
    return 0;
}

/* Save order of the issue (and of the sections on the wire). */
static const struct { uint32_t bit; uint32_t type; } vcpu_wire_order[] = {
    { MACHINE_STATE_HAS_MP_STATE, MACHINE_STATE_SECTION_MP_STATE },
    { MACHINE_STATE_HAS_REGS, MACHINE_STATE_SECTION_REGS },
    { MACHINE_STATE_HAS_SREGS, MACHINE_STATE_SECTION_SREGS },
    { MACHINE_STATE_HAS_XSAVE, MACHINE_STATE_SECTION_XSAVE },
    { MACHINE_STATE_HAS_FPU, MACHINE_STATE_SECTION_FPU },
    { MACHINE_STATE_HAS_XCRS, MACHINE_STATE_SECTION_XCRS },
    { MACHINE_STATE_HAS_DEBUGREGS, MACHINE_STATE_SECTION_DEBUGREGS },
    { MACHINE_STATE_HAS_LAPIC, MACHINE_STATE_SECTION_LAPIC },
    { MACHINE_STATE_HAS_TSC_KHZ, MACHINE_STATE_SECTION_TSC_KHZ },
    { MACHINE_STATE_HAS_CPUID2, MACHINE_STATE_SECTION_CPUID2 },
    { MACHINE_STATE_HAS_MSRS, MACHINE_STATE_SECTION_MSRS },
    { MACHINE_STATE_HAS_VCPU_EVENTS, MACHINE_STATE_SECTION_VCPU_EVENTS },
};
#define VCPU_SECTION_KINDS (sizeof(vcpu_wire_order) / sizeof(vcpu_wire_order[0]))

static size_t vm_payload_size(const struct machine_state_vm *vm, uint32_t bit)
{
    switch (bit) {
    case MACHINE_STATE_HAS_CLOCK: return CLOCK_SIZE;
    case MACHINE_STATE_HAS_PIC_MASTER:
    case MACHINE_STATE_HAS_PIC_SLAVE: return PIC_SIZE;
    case MACHINE_STATE_HAS_IOAPIC: return IOAPIC_SIZE;
    case MACHINE_STATE_HAS_PIT2: return PIT2_SIZE;
    case MACHINE_STATE_HAS_TSC_FREQUENCY: return TSC_FREQUENCY_SIZE;
    case MACHINE_STATE_HAS_BOOT_INFO:
        return 8u + strnlen(vm->cmdline, MACHINE_STATE_CMDLINE_MAX) +
               strnlen(vm->boot_protocol, MACHINE_STATE_PROTOCOL_MAX);
    case MACHINE_STATE_HAS_UART: return uart_payload_size(&vm->uart);
    case MACHINE_STATE_HAS_CMOS: return CMOS_SIZE;
    }
    return 0;
}

static const struct { uint32_t bit; uint32_t type; } vm_wire_order[] = {
    { MACHINE_STATE_HAS_CLOCK, MACHINE_STATE_SECTION_CLOCK },
    { MACHINE_STATE_HAS_PIC_MASTER, MACHINE_STATE_SECTION_IRQCHIP },
    { MACHINE_STATE_HAS_PIC_SLAVE, MACHINE_STATE_SECTION_IRQCHIP },
    { MACHINE_STATE_HAS_IOAPIC, MACHINE_STATE_SECTION_IRQCHIP },
    { MACHINE_STATE_HAS_PIT2, MACHINE_STATE_SECTION_PIT2 },
    { MACHINE_STATE_HAS_TSC_FREQUENCY, MACHINE_STATE_SECTION_TSC_FREQUENCY },
    { MACHINE_STATE_HAS_BOOT_INFO, MACHINE_STATE_SECTION_BOOT_INFO },
    { MACHINE_STATE_HAS_UART, MACHINE_STATE_SECTION_UART },
    { MACHINE_STATE_HAS_CMOS, MACHINE_STATE_SECTION_CMOS },
};
#define VM_SECTION_KINDS (sizeof(vm_wire_order) / sizeof(vm_wire_order[0]))

size_t machine_state_encoded_size(const struct machine_state *state)
{
    size_t size = MACHINE_STATE_HEADER_SIZE + MACHINE_STATE_SECTION_HEADER_SIZE + MACHINE_SIZE;
    for (uint32_t i = 0; i < state->vcpu_count && state->vcpus != NULL; i++)
        for (size_t k = 0; k < VCPU_SECTION_KINDS; k++)
            if (state->vcpus[i].sections & vcpu_wire_order[k].bit)
                size += MACHINE_STATE_SECTION_HEADER_SIZE + vcpu_payload_size(&state->vcpus[i], vcpu_wire_order[k].bit);
    for (size_t k = 0; k < VM_SECTION_KINDS; k++)
        if (state->vm.sections & vm_wire_order[k].bit)
            size += MACHINE_STATE_SECTION_HEADER_SIZE + vm_payload_size(&state->vm, vm_wire_order[k].bit);
    return size;
}

static void put_section_header(struct writer *w, uint32_t type, uint32_t vcpu, size_t length)
{
    const struct section_info *info = section_lookup(type);
    put_u32(w, type);
    put_u16(w, info->version);
    put_u16(w, info->may_skip ? MACHINE_STATE_SECTION_MAY_SKIP : 0);
    put_u32(w, vcpu);
    put_u32(w, (uint32_t)length);
}

static void put_segment(struct writer *w, const struct kvm_segment *s)
{
    put_u64(w, s->base);
    put_u32(w, s->limit);
    put_u16(w, s->selector);
    put_u8(w, s->type);
    put_u8(w, s->present);
    put_u8(w, s->dpl);
    put_u8(w, s->db);
    put_u8(w, s->s);
    put_u8(w, s->l);
    put_u8(w, s->g);
    put_u8(w, s->avl);
    put_u8(w, s->unusable);
}

static void put_vcpu_payload(struct writer *w, const struct machine_state_vcpu *v, uint32_t bit)
{
    switch (bit) {
    case MACHINE_STATE_HAS_MP_STATE:
        put_u32(w, v->mp_state.mp_state);
        break;
    case MACHINE_STATE_HAS_REGS: {
        const struct kvm_regs *r = &v->regs;
        const uint64_t values[18] = { r->rax, r->rbx, r->rcx, r->rdx, r->rsi, r->rdi, r->rsp, r->rbp, r->r8,
                                      r->r9, r->r10, r->r11, r->r12, r->r13, r->r14, r->r15, r->rip, r->rflags };
        for (unsigned i = 0; i < 18; i++)
            put_u64(w, values[i]);
        break;
    }
    case MACHINE_STATE_HAS_SREGS: {
        const struct kvm_sregs *s = &v->sregs;
        const struct kvm_segment *segments[8] = { &s->cs, &s->ds, &s->es, &s->fs, &s->gs, &s->ss, &s->tr, &s->ldt };
        for (unsigned i = 0; i < 8; i++)
            put_segment(w, segments[i]);
        put_u64(w, s->gdt.base);
        put_u16(w, s->gdt.limit);
        put_u64(w, s->idt.base);
        put_u16(w, s->idt.limit);
        const uint64_t control[7] = { s->cr0, s->cr2, s->cr3, s->cr4, s->cr8, s->efer, s->apic_base };
        for (unsigned i = 0; i < 7; i++)
            put_u64(w, control[i]);
        for (unsigned i = 0; i < 4; i++)
            put_u64(w, s->interrupt_bitmap[i]);
        break;
    }
    case MACHINE_STATE_HAS_XSAVE:
        put_bytes(w, v->xsave, v->xsave_size);
        break;
    case MACHINE_STATE_HAS_FPU: {
        const struct kvm_fpu *f = &v->fpu;
        put_bytes(w, f->fpr, sizeof(f->fpr));
        put_u16(w, f->fcw);
        put_u16(w, f->fsw);
        put_u8(w, f->ftwx);
        put_u16(w, f->last_opcode);
        put_u64(w, f->last_ip);
        put_u64(w, f->last_dp);
        put_bytes(w, f->xmm, sizeof(f->xmm));
        put_u32(w, f->mxcsr);
        break;
    }
    case MACHINE_STATE_HAS_XCRS:
        put_u32(w, v->xcrs.nr_xcrs);
        put_u32(w, v->xcrs.flags);
        for (uint32_t i = 0; i < v->xcrs.nr_xcrs && i < KVM_MAX_XCRS; i++) {
            put_u32(w, v->xcrs.xcrs[i].xcr);
            put_u64(w, v->xcrs.xcrs[i].value);
        }
        break;
    case MACHINE_STATE_HAS_DEBUGREGS:
        for (unsigned i = 0; i < 4; i++)
            put_u64(w, v->debugregs.db[i]);
        put_u64(w, v->debugregs.dr6);
        put_u64(w, v->debugregs.dr7);
        put_u64(w, v->debugregs.flags);
        break;
    case MACHINE_STATE_HAS_LAPIC:
        put_bytes(w, v->lapic.regs, LAPIC_SIZE);
        break;
    case MACHINE_STATE_HAS_TSC_KHZ:
        put_u32(w, v->tsc_khz);
        break;
    case MACHINE_STATE_HAS_CPUID2:
        put_u32(w, v->cpuid_count);
        for (uint32_t i = 0; i < v->cpuid_count; i++) {
            const struct kvm_cpuid_entry2 *e = &v->cpuid[i];
            put_u32(w, e->function);
            put_u32(w, e->index);
            put_u32(w, e->flags);
            put_u32(w, e->eax);
            put_u32(w, e->ebx);
            put_u32(w, e->ecx);
            put_u32(w, e->edx);
        }
        break;
    case MACHINE_STATE_HAS_MSRS:
        put_u32(w, v->msr_count);
        for (uint32_t i = 0; i < v->msr_count; i++) {
            put_u32(w, v->msrs[i].index);
            put_u64(w, v->msrs[i].data);
        }
        break;
    case MACHINE_STATE_HAS_VCPU_EVENTS: {
        const struct kvm_vcpu_events *e = &v->events;
        put_u8(w, e->exception.injected);
        put_u8(w, e->exception.nr);
        put_u8(w, e->exception.has_error_code);
        put_u8(w, e->exception.pending);
        put_u32(w, e->exception.error_code);
        put_u8(w, e->interrupt.injected);
        put_u8(w, e->interrupt.nr);
        put_u8(w, e->interrupt.soft);
        put_u8(w, e->interrupt.shadow);
        put_u8(w, e->nmi.injected);
        put_u8(w, e->nmi.pending);
        put_u8(w, e->nmi.masked);
        put_u32(w, e->sipi_vector);
        put_u32(w, e->flags);
        put_u8(w, e->smi.smm);
        put_u8(w, e->smi.pending);
        put_u8(w, e->smi.smm_inside_nmi);
        put_u8(w, e->smi.latched_init);
        put_u8(w, e->triple_fault.pending);
        put_u8(w, e->exception_has_payload);
        put_u64(w, e->exception_payload);
        break;
    }
    }
}

static void put_pic(struct writer *w, uint32_t chip, const struct kvm_pic_state *p)
{
    put_u32(w, chip);
    const uint8_t fields[16] = { p->last_irr, p->irr, p->imr, p->isr, p->priority_add, p->irq_base,
                                 p->read_reg_select, p->poll, p->special_mask, p->init_state, p->auto_eoi,
                                 p->rotate_on_auto_eoi, p->special_fully_nested_mode, p->init4, p->elcr,
                                 p->elcr_mask };
    put_bytes(w, fields, sizeof(fields));
}

static void put_vm_payload(struct writer *w, const struct machine_state_vm *vm, uint32_t bit)
{
    switch (bit) {
    case MACHINE_STATE_HAS_CLOCK:
        put_u64(w, vm->clock.clock);
        put_u64(w, vm->clock.realtime);
        put_u64(w, vm->clock.host_tsc);
        put_u32(w, vm->clock.flags);
        break;
    case MACHINE_STATE_HAS_PIC_MASTER:
        put_pic(w, KVM_IRQCHIP_PIC_MASTER, &vm->pic_master);
        break;
    case MACHINE_STATE_HAS_PIC_SLAVE:
        put_pic(w, KVM_IRQCHIP_PIC_SLAVE, &vm->pic_slave);
        break;
    case MACHINE_STATE_HAS_IOAPIC:
        put_u32(w, KVM_IRQCHIP_IOAPIC);
        put_u64(w, vm->ioapic.base_address);
        put_u32(w, vm->ioapic.ioregsel);
        put_u32(w, vm->ioapic.id);
        put_u32(w, vm->ioapic.irr);
        for (unsigned i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
            put_u64(w, vm->ioapic.redirtbl[i].bits);
        break;
    case MACHINE_STATE_HAS_PIT2:
        for (unsigned i = 0; i < 3; i++) {
            const struct kvm_pit_channel_state *c = &vm->pit.channels[i];
            put_u32(w, c->count);
            put_u16(w, c->latched_count);
            const uint8_t bytes[10] = { c->count_latched, c->status_latched, c->status, c->read_state,
                                        c->write_state, c->write_latch, c->rw_mode, c->mode, c->bcd, c->gate };
            put_bytes(w, bytes, sizeof(bytes));
            put_u64(w, (uint64_t)c->count_load_time);
        }
        put_u32(w, vm->pit.flags);
        break;
    case MACHINE_STATE_HAS_TSC_FREQUENCY:
        put_u32(w, vm->tsc_khz);
        break;
    case MACHINE_STATE_HAS_BOOT_INFO: {
        size_t cmdline = strnlen(vm->cmdline, MACHINE_STATE_CMDLINE_MAX);
        size_t protocol = strnlen(vm->boot_protocol, MACHINE_STATE_PROTOCOL_MAX);
        put_u32(w, (uint32_t)cmdline);
        put_bytes(w, vm->cmdline, cmdline);
        put_u32(w, (uint32_t)protocol);
        put_bytes(w, vm->boot_protocol, protocol);
        break;
    }
    case MACHINE_STATE_HAS_UART: {
        const struct uart_state *u = &vm->uart;
        const uint8_t fixed[UART_FIXED_SIZE] = { u->ier, u->iir, u->fcr, u->lcr, u->mcr, u->lsr, u->msr, u->scr,
                                                 u->dll, u->dlm, u->thre_pending, u->thre_after_iir_read,
                                                 u->rx_count };
        put_bytes(w, fixed, sizeof(fixed));
        put_bytes(w, u->rx_fifo, u->rx_count <= UART_FIFO_SIZE ? u->rx_count : UART_FIFO_SIZE);
        break;
    }
    case MACHINE_STATE_HAS_CMOS:
        put_u8(w, vm->cmos_index);
        put_bytes(w, vm->cmos_ram, sizeof(vm->cmos_ram));
        break;
    }
}

size_t machine_state_encode(const struct machine_state *state, uint8_t *out, size_t out_size, char *error,
                            size_t error_size)
{
    if (machine_state_validate(state, error, error_size) != 0)
        return 0;
    size_t size = machine_state_encoded_size(state);
    if (out_size < size) {
        snprintf(error, error_size, "machine state: needs %zu bytes, the buffer has %zu", size, out_size);
        return 0;
    }
    uint32_t sections = 1;
    for (uint32_t i = 0; i < state->vcpu_count; i++)
        sections += (uint32_t)__builtin_popcount(state->vcpus[i].sections);
    sections += (uint32_t)__builtin_popcount(state->vm.sections);

    struct writer w = { .out = out, .at = 0 };
    put_bytes(&w, MACHINE_STATE_MAGIC, 8);
    put_u32(&w, MACHINE_STATE_FORMAT_VERSION);
    put_u32(&w, sections);
    put_section_header(&w, MACHINE_STATE_SECTION_MACHINE, MACHINE_STATE_NO_VCPU, MACHINE_SIZE);
    put_u32(&w, state->vcpu_count);
    put_u32(&w, state->vm.guest_kind);
    for (uint32_t i = 0; i < state->vcpu_count; i++) {
        const struct machine_state_vcpu *v = &state->vcpus[i];
        for (size_t k = 0; k < VCPU_SECTION_KINDS; k++) {
            if (!(v->sections & vcpu_wire_order[k].bit))
                continue;
            put_section_header(&w, vcpu_wire_order[k].type, i, vcpu_payload_size(v, vcpu_wire_order[k].bit));
            put_vcpu_payload(&w, v, vcpu_wire_order[k].bit);
        }
    }
    for (size_t k = 0; k < VM_SECTION_KINDS; k++) {
        if (!(state->vm.sections & vm_wire_order[k].bit))
            continue;
        put_section_header(&w, vm_wire_order[k].type, MACHINE_STATE_NO_VCPU,
                           vm_payload_size(&state->vm, vm_wire_order[k].bit));
        put_vm_payload(&w, &state->vm, vm_wire_order[k].bit);
    }
    return w.at;
}

uint8_t *machine_state_encode_alloc(const struct machine_state *state, size_t *length, char *error,
                                    size_t error_size)
{
    size_t size = machine_state_encoded_size(state);
    uint8_t *bytes = malloc(size);
    if (bytes == NULL) {
        snprintf(error, error_size, "machine state: out of memory for %zu bytes", size);
        return NULL;
    }
    *length = machine_state_encode(state, bytes, size, error, error_size);
    if (*length != size) {
        free(bytes);
        return NULL;
    }
    return bytes;
}

/* ---- decode ---------------------------------------------------------------------- */

static int expect_length(uint32_t type, uint32_t vcpu, uint32_t length, size_t expected, char *error,
                         size_t error_size)
{
    if (length != expected)
        FAIL(type, vcpu, "length %" PRIu32 " (must be %zu)", length, expected);
    return 0;
}

static void get_segment(struct reader *r, struct kvm_segment *s)
{
    s->base = get_u64(r);
    s->limit = get_u32(r);
    s->selector = get_u16(r);
    s->type = get_u8(r);
    s->present = get_u8(r);
    s->dpl = get_u8(r);
    s->db = get_u8(r);
    s->s = get_u8(r);
    s->l = get_u8(r);
    s->g = get_u8(r);
    s->avl = get_u8(r);
    s->unusable = get_u8(r);
}

static int parse_vcpu_section(struct reader *r, uint32_t type, uint32_t vcpu, struct machine_state_vcpu *v,
                              char *error, size_t error_size)
{
    uint32_t length = (uint32_t)r->length;
    switch (type) {
    case MACHINE_STATE_SECTION_MP_STATE:
        if (expect_length(type, vcpu, length, MP_STATE_SIZE, error, error_size) != 0)
            return -1;
        v->mp_state.mp_state = get_u32(r);
        break;
    case MACHINE_STATE_SECTION_REGS: {
        if (expect_length(type, vcpu, length, REGS_SIZE, error, error_size) != 0)
            return -1;
        struct kvm_regs *g = &v->regs;
        __u64 *fields[18] = { &g->rax, &g->rbx, &g->rcx, &g->rdx, &g->rsi, &g->rdi, &g->rsp, &g->rbp, &g->r8,
                                 &g->r9, &g->r10, &g->r11, &g->r12, &g->r13, &g->r14, &g->r15, &g->rip, &g->rflags };
        for (unsigned i = 0; i < 18; i++)
            *fields[i] = get_u64(r);
        break;
    }
    case MACHINE_STATE_SECTION_SREGS: {
        if (expect_length(type, vcpu, length, SREGS_SIZE, error, error_size) != 0)
            return -1;
        struct kvm_sregs *s = &v->sregs;
        struct kvm_segment *segments[8] = { &s->cs, &s->ds, &s->es, &s->fs, &s->gs, &s->ss, &s->tr, &s->ldt };
        for (unsigned i = 0; i < 8; i++)
            get_segment(r, segments[i]);
        s->gdt.base = get_u64(r);
        s->gdt.limit = get_u16(r);
        s->idt.base = get_u64(r);
        s->idt.limit = get_u16(r);
        __u64 *control[7] = { &s->cr0, &s->cr2, &s->cr3, &s->cr4, &s->cr8, &s->efer, &s->apic_base };
        for (unsigned i = 0; i < 7; i++)
            *control[i] = get_u64(r);
        for (unsigned i = 0; i < 4; i++)
            s->interrupt_bitmap[i] = get_u64(r);
        break;
    }
    case MACHINE_STATE_SECTION_XSAVE:
        if (length < MACHINE_STATE_XSAVE_MIN || length > MACHINE_STATE_XSAVE_MAX || length % 4 != 0)
            FAIL(type, vcpu, "length %" PRIu32 " (must be a multiple of 4 in %u..%u)", length,
                 MACHINE_STATE_XSAVE_MIN, MACHINE_STATE_XSAVE_MAX);
        if (machine_state_vcpu_set_xsave(v, r->in, length) != 0)
            FAIL(type, vcpu, "out of memory for %" PRIu32 " bytes", length);
        r->at = length;
        break;
    case MACHINE_STATE_SECTION_FPU: {
        if (expect_length(type, vcpu, length, FPU_SIZE, error, error_size) != 0)
            return -1;
        struct kvm_fpu *f = &v->fpu;
        get_bytes(r, f->fpr, sizeof(f->fpr));
        f->fcw = get_u16(r);
        f->fsw = get_u16(r);
        f->ftwx = get_u8(r);
        f->last_opcode = get_u16(r);
        f->last_ip = get_u64(r);
        f->last_dp = get_u64(r);
        get_bytes(r, f->xmm, sizeof(f->xmm));
        f->mxcsr = get_u32(r);
        break;
    }
    case MACHINE_STATE_SECTION_XCRS: {
        if (length < 8)
            FAIL(type, vcpu, "length %" PRIu32 " shorter than its 8-byte count and flags", length);
        uint32_t count = get_u32(r);
        if (count > KVM_MAX_XCRS)
            FAIL(type, vcpu, "nr_xcrs %" PRIu32 " exceeds %u", count, KVM_MAX_XCRS);
        if (expect_length(type, vcpu, length, 8u + XCR_SIZE * count, error, error_size) != 0)
            return -1;
        v->xcrs.nr_xcrs = count;
        v->xcrs.flags = get_u32(r);
        for (uint32_t i = 0; i < count; i++) {
            v->xcrs.xcrs[i].xcr = get_u32(r);
            v->xcrs.xcrs[i].value = get_u64(r);
        }
        break;
    }
    case MACHINE_STATE_SECTION_DEBUGREGS:
        if (expect_length(type, vcpu, length, DEBUGREGS_SIZE, error, error_size) != 0)
            return -1;
        for (unsigned i = 0; i < 4; i++)
            v->debugregs.db[i] = get_u64(r);
        v->debugregs.dr6 = get_u64(r);
        v->debugregs.dr7 = get_u64(r);
        v->debugregs.flags = get_u64(r);
        break;
    case MACHINE_STATE_SECTION_LAPIC:
        if (expect_length(type, vcpu, length, LAPIC_SIZE, error, error_size) != 0)
            return -1;
        get_bytes(r, v->lapic.regs, LAPIC_SIZE);
        break;
    case MACHINE_STATE_SECTION_TSC_KHZ:
        if (expect_length(type, vcpu, length, TSC_KHZ_SIZE, error, error_size) != 0)
            return -1;
        v->tsc_khz = get_u32(r);
        break;
    case MACHINE_STATE_SECTION_CPUID2: {
        if (length < 4)
            FAIL(type, vcpu, "length %" PRIu32 " shorter than its 4-byte count", length);
        uint32_t count = get_u32(r);
        if (count == 0 || count > MACHINE_STATE_MAX_CPUID)
            FAIL(type, vcpu, "%" PRIu32 " entries (must be 1..%u)", count, MACHINE_STATE_MAX_CPUID);
        if (expect_length(type, vcpu, length, 4u + (size_t)CPUID_ENTRY_SIZE * count, error, error_size) != 0)
            return -1;
        struct kvm_cpuid_entry2 *entries = calloc(count, sizeof(*entries));
        if (entries == NULL)
            FAIL(type, vcpu, "out of memory for %" PRIu32 " entries", count);
        for (uint32_t i = 0; i < count; i++) {
            entries[i].function = get_u32(r);
            entries[i].index = get_u32(r);
            entries[i].flags = get_u32(r);
            entries[i].eax = get_u32(r);
            entries[i].ebx = get_u32(r);
            entries[i].ecx = get_u32(r);
            entries[i].edx = get_u32(r);
        }
        free(v->cpuid);
        v->cpuid = entries;
        v->cpuid_count = count;
        break;
    }
    case MACHINE_STATE_SECTION_MSRS: {
        if (length < 4)
            FAIL(type, vcpu, "length %" PRIu32 " shorter than its 4-byte count", length);
        uint32_t count = get_u32(r);
        if (count > MACHINE_STATE_MAX_MSRS)
            FAIL(type, vcpu, "count %" PRIu32 " exceeds %u", count, MACHINE_STATE_MAX_MSRS);
        if (expect_length(type, vcpu, length, 4u + (size_t)MSR_ENTRY_SIZE * count, error, error_size) != 0)
            return -1;
        struct kvm_msr_entry *entries = calloc(count > 0 ? count : 1, sizeof(*entries));
        if (entries == NULL)
            FAIL(type, vcpu, "out of memory for %" PRIu32 " entries", count);
        for (uint32_t i = 0; i < count; i++) {
            entries[i].index = get_u32(r);
            entries[i].data = get_u64(r);
        }
        free(v->msrs);
        v->msrs = entries;
        v->msr_count = count;
        break;
    }
    case MACHINE_STATE_SECTION_VCPU_EVENTS: {
        if (expect_length(type, vcpu, length, VCPU_EVENTS_SIZE, error, error_size) != 0)
            return -1;
        struct kvm_vcpu_events *e = &v->events;
        e->exception.injected = get_u8(r);
        e->exception.nr = get_u8(r);
        e->exception.has_error_code = get_u8(r);
        e->exception.pending = get_u8(r);
        e->exception.error_code = get_u32(r);
        e->interrupt.injected = get_u8(r);
        e->interrupt.nr = get_u8(r);
        e->interrupt.soft = get_u8(r);
        e->interrupt.shadow = get_u8(r);
        e->nmi.injected = get_u8(r);
        e->nmi.pending = get_u8(r);
        e->nmi.masked = get_u8(r);
        e->sipi_vector = get_u32(r);
        e->flags = get_u32(r);
        e->smi.smm = get_u8(r);
        e->smi.pending = get_u8(r);
        e->smi.smm_inside_nmi = get_u8(r);
        e->smi.latched_init = get_u8(r);
        e->triple_fault.pending = get_u8(r);
        e->exception_has_payload = get_u8(r);
        e->exception_payload = get_u64(r);
        break;
    }
    }
    v->sections |= vcpu_section_bit(type);
    return 0;
}

static void get_pic(struct reader *r, struct kvm_pic_state *p)
{
    uint8_t f[16];
    get_bytes(r, f, sizeof(f));
    *p = (struct kvm_pic_state){
        .last_irr = f[0], .irr = f[1], .imr = f[2], .isr = f[3], .priority_add = f[4], .irq_base = f[5],
        .read_reg_select = f[6], .poll = f[7], .special_mask = f[8], .init_state = f[9], .auto_eoi = f[10],
        .rotate_on_auto_eoi = f[11], .special_fully_nested_mode = f[12], .init4 = f[13], .elcr = f[14],
        .elcr_mask = f[15],
    };
}

static int parse_vm_section(struct reader *r, uint32_t type, struct machine_state_vm *vm, char *error,
                            size_t error_size)
{
    const uint32_t none = MACHINE_STATE_NO_VCPU;
    uint32_t length = (uint32_t)r->length;
    uint32_t bit = 0;
    switch (type) {
    case MACHINE_STATE_SECTION_CLOCK:
        if (expect_length(type, none, length, CLOCK_SIZE, error, error_size) != 0)
            return -1;
        memset(&vm->clock, 0, sizeof(vm->clock));
        vm->clock.clock = get_u64(r);
        vm->clock.realtime = get_u64(r);
        vm->clock.host_tsc = get_u64(r);
        vm->clock.flags = get_u32(r);
        bit = MACHINE_STATE_HAS_CLOCK;
        break;
    case MACHINE_STATE_SECTION_IRQCHIP: {
        if (length < 4)
            FAIL(type, none, "length %" PRIu32 " shorter than its 4-byte chip id", length);
        uint32_t chip = get_u32(r);
        if (chip == KVM_IRQCHIP_PIC_MASTER || chip == KVM_IRQCHIP_PIC_SLAVE) {
            bit = chip == KVM_IRQCHIP_PIC_MASTER ? MACHINE_STATE_HAS_PIC_MASTER : MACHINE_STATE_HAS_PIC_SLAVE;
            if (vm->sections & bit)
                FAIL(type, none, "chip %" PRIu32 " appears twice", chip);
            if (length != PIC_SIZE)
                FAIL(type, none, "chip %" PRIu32 " (pic) length %" PRIu32 " (must be %u)", chip, length, PIC_SIZE);
            get_pic(r, chip == KVM_IRQCHIP_PIC_MASTER ? &vm->pic_master : &vm->pic_slave);
        } else if (chip == KVM_IRQCHIP_IOAPIC) {
            bit = MACHINE_STATE_HAS_IOAPIC;
            if (vm->sections & bit)
                FAIL(type, none, "chip %" PRIu32 " appears twice", chip);
            if (length != IOAPIC_SIZE)
                FAIL(type, none, "chip 2 (ioapic) length %" PRIu32 " (must be %u)", length, IOAPIC_SIZE);
            memset(&vm->ioapic, 0, sizeof(vm->ioapic));
            vm->ioapic.base_address = get_u64(r);
            vm->ioapic.ioregsel = get_u32(r);
            vm->ioapic.id = get_u32(r);
            vm->ioapic.irr = get_u32(r);
            for (unsigned i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
                vm->ioapic.redirtbl[i].bits = get_u64(r);
        } else {
            FAIL(type, none, "chip id %" PRIu32 " unknown (0 pic master, 1 pic slave, 2 ioapic)", chip);
        }
        break;
    }
    case MACHINE_STATE_SECTION_PIT2:
        if (expect_length(type, none, length, PIT2_SIZE, error, error_size) != 0)
            return -1;
        memset(&vm->pit, 0, sizeof(vm->pit));
        for (unsigned i = 0; i < 3; i++) {
            struct kvm_pit_channel_state *c = &vm->pit.channels[i];
            c->count = get_u32(r);
            c->latched_count = get_u16(r);
            uint8_t b[10];
            get_bytes(r, b, sizeof(b));
            c->count_latched = b[0];
            c->status_latched = b[1];
            c->status = b[2];
            c->read_state = b[3];
            c->write_state = b[4];
            c->write_latch = b[5];
            c->rw_mode = b[6];
            c->mode = b[7];
            c->bcd = b[8];
            c->gate = b[9];
            c->count_load_time = (int64_t)get_u64(r);
        }
        vm->pit.flags = get_u32(r);
        bit = MACHINE_STATE_HAS_PIT2;
        break;
    case MACHINE_STATE_SECTION_TSC_FREQUENCY:
        if (expect_length(type, none, length, TSC_FREQUENCY_SIZE, error, error_size) != 0)
            return -1;
        vm->tsc_khz = get_u32(r);
        bit = MACHINE_STATE_HAS_TSC_FREQUENCY;
        break;
    case MACHINE_STATE_SECTION_BOOT_INFO: {
        if (length < 4)
            FAIL(type, none, "length %" PRIu32 " shorter than the cmdline length", length);
        uint32_t cmdline = get_u32(r);
        if (cmdline > MACHINE_STATE_CMDLINE_MAX)
            FAIL(type, none, "cmdline of %" PRIu32 " bytes (at most %u)", cmdline, MACHINE_STATE_CMDLINE_MAX);
        if ((size_t)cmdline + 8u > length)
            FAIL(type, none, "cmdline of %" PRIu32 " bytes does not fit the length %" PRIu32, cmdline, length);
        memset(vm->cmdline, 0, sizeof(vm->cmdline));
        get_bytes(r, vm->cmdline, cmdline);
        uint32_t protocol = get_u32(r);
        if (protocol > MACHINE_STATE_PROTOCOL_MAX)
            FAIL(type, none, "boot protocol of %" PRIu32 " bytes (at most %u)", protocol, MACHINE_STATE_PROTOCOL_MAX);
        if (expect_length(type, none, length, 8u + (size_t)cmdline + protocol, error, error_size) != 0)
            return -1;
        memset(vm->boot_protocol, 0, sizeof(vm->boot_protocol));
        get_bytes(r, vm->boot_protocol, protocol);
        if (strlen(vm->cmdline) != cmdline || strlen(vm->boot_protocol) != protocol)
            FAIL(type, none, "%s contains a NUL byte", strlen(vm->cmdline) != cmdline ? "cmdline" : "boot protocol");
        bit = MACHINE_STATE_HAS_BOOT_INFO;
        break;
    }
    case MACHINE_STATE_SECTION_UART: {
        if (length < UART_FIXED_SIZE)
            FAIL(type, none, "length %" PRIu32 " shorter than its %u fixed bytes", length, UART_FIXED_SIZE);
        uint8_t f[UART_FIXED_SIZE];
        get_bytes(r, f, sizeof(f));
        struct uart_state *u = &vm->uart;
        memset(u, 0, sizeof(*u));
        if (f[10] > 1 || f[11] > 1)
            FAIL(type, none, "%s %u is not 0 or 1", f[10] > 1 ? "thre_pending" : "thre_after_iir_read",
                 f[10] > 1 ? f[10] : f[11]);
        if (f[12] > UART_FIFO_SIZE)
            FAIL(type, none, "rx_count %u exceeds the FIFO (%u bytes)", f[12], UART_FIFO_SIZE);
        if (expect_length(type, none, length, UART_FIXED_SIZE + (size_t)f[12], error, error_size) != 0)
            return -1;
        u->ier = f[0];
        u->iir = f[1];
        u->fcr = f[2];
        u->lcr = f[3];
        u->mcr = f[4];
        u->lsr = f[5];
        u->msr = f[6];
        u->scr = f[7];
        u->dll = f[8];
        u->dlm = f[9];
        u->thre_pending = f[10];
        u->thre_after_iir_read = f[11];
        u->rx_count = f[12];
        get_bytes(r, u->rx_fifo, u->rx_count);
        bit = MACHINE_STATE_HAS_UART;
        break;
    }
    case MACHINE_STATE_SECTION_CMOS:
        if (expect_length(type, none, length, CMOS_SIZE, error, error_size) != 0)
            return -1;
        vm->cmos_index = get_u8(r);
        get_bytes(r, vm->cmos_ram, sizeof(vm->cmos_ram));
        bit = MACHINE_STATE_HAS_CMOS;
        break;
    }
    vm->sections |= bit;
    return 0;
}

static int decode_sections(const uint8_t *in, size_t length, struct machine_state *state, char *error,
                           size_t error_size)
{
    if (length < MACHINE_STATE_HEADER_SIZE) {
        snprintf(error, error_size, "machine state: %zu bytes, shorter than its %u-byte header", length,
                 MACHINE_STATE_HEADER_SIZE);
        return -1;
    }
    if (memcmp(in, MACHINE_STATE_MAGIC, 8) != 0) {
        snprintf(error, error_size, "machine state: bad magic (not a ringvm machine state)");
        return -1;
    }
    uint32_t version = mig_get_u32(in + 8);
    if (version != MACHINE_STATE_FORMAT_VERSION) {
        snprintf(error, error_size, "machine state: format version %" PRIu32 " (this ringvm reads %u)", version,
                 MACHINE_STATE_FORMAT_VERSION);
        return -1;
    }
    uint32_t count = mig_get_u32(in + 12);
    if (count == 0 || count > MACHINE_STATE_MAX_SECTIONS) {
        snprintf(error, error_size, "machine state: %" PRIu32 " sections (must be 1..%u)", count,
                 MACHINE_STATE_MAX_SECTIONS);
        return -1;
    }
    size_t at = MACHINE_STATE_HEADER_SIZE;
    for (uint32_t index = 0; index < count; index++) {
        if (length - at < MACHINE_STATE_SECTION_HEADER_SIZE) {
            snprintf(error, error_size,
                     "machine state: section %" PRIu32 " of %" PRIu32 ": header at offset %zu cut short (%zu of %u bytes)",
                     index, count, at, length - at, MACHINE_STATE_SECTION_HEADER_SIZE);
            return -1;
        }
        const uint8_t *h = in + at;
        uint32_t type = mig_get_u32(h);
        uint16_t section_version = (uint16_t)(h[4] | (h[5] << 8));
        uint16_t flags = (uint16_t)(h[6] | (h[7] << 8));
        uint32_t vcpu = mig_get_u32(h + 8);
        uint32_t section_length = mig_get_u32(h + 12);
        at += MACHINE_STATE_SECTION_HEADER_SIZE;
        const struct section_info *info = section_lookup(type);
        /* Messages name the vCPU only when it is a valid index. */
        uint32_t where = vcpu < MACHINE_STATE_MAX_VCPUS ? vcpu : MACHINE_STATE_NO_VCPU;
        if (flags & ~MACHINE_STATE_SECTION_MAY_SKIP)
            FAIL(type, where, "unknown flags 0x%04x", flags);
        if (section_length > length - at)
            FAIL(type, where, "length %" PRIu32 " exceeds the %zu bytes left", section_length, length - at);
        bool may_skip = flags & MACHINE_STATE_SECTION_MAY_SKIP;
        if (info == NULL) {
            if (index == 0) {
                snprintf(error, error_size, "machine state: first section is type 0x%04" PRIx32 " (must be machine)",
                         type);
                return -1;
            }
            if (!may_skip)
                FAIL(type, where, "unknown to this ringvm and required (not marked may-skip)");
            at += section_length;
            continue;
        }
        if (index == 0 && type != MACHINE_STATE_SECTION_MACHINE) {
            snprintf(error, error_size, "machine state: first section is %s (must be machine)", info->name);
            return -1;
        }
        if (may_skip != info->may_skip)
            FAIL(type, where, "flags 0x%04x (this section is %s)", flags, info->may_skip ? "may-skip" : "required");
        if (section_version == 0)
            FAIL(type, where, "version 0 (versions start at 1)");
        if (section_version > info->version) {
            if (may_skip) {
                at += section_length;
                continue;
            }
            FAIL(type, where, "version %u is newer than this ringvm reads (%u)", section_version, info->version);
        }
        if (info->vcpu_scope) {
            if (vcpu >= state->vcpu_count)
                FAIL(type, MACHINE_STATE_NO_VCPU, "vCPU %" PRIu32 " out of range (the machine has %" PRIu32 ")", vcpu,
                     state->vcpu_count);
        } else if (vcpu != MACHINE_STATE_NO_VCPU) {
            FAIL(type, MACHINE_STATE_NO_VCPU, "vcpu field %" PRIu32 " (a VM section has 0xffffffff)", vcpu);
        }
        struct reader r = { .in = in + at, .length = section_length, .at = 0 };
        if (type == MACHINE_STATE_SECTION_MACHINE) {
            if (index != 0)
                FAIL(type, MACHINE_STATE_NO_VCPU, "appears again as section %" PRIu32, index);
            if (expect_length(type, MACHINE_STATE_NO_VCPU, section_length, MACHINE_SIZE, error, error_size) != 0)
                return -1;
            uint32_t vcpus = get_u32(&r);
            uint32_t kind = get_u32(&r);
            if (vcpus == 0 || vcpus > MACHINE_STATE_MAX_VCPUS)
                FAIL(type, MACHINE_STATE_NO_VCPU, "vcpu_count %" PRIu32 " (must be 1..%u)", vcpus,
                     MACHINE_STATE_MAX_VCPUS);
            if (machine_state_init(state, vcpus) != 0)
                FAIL(type, MACHINE_STATE_NO_VCPU, "out of memory for %" PRIu32 " vCPUs", vcpus);
            state->vm.guest_kind = kind;
        } else if (info->vcpu_scope) {
            struct machine_state_vcpu *v = &state->vcpus[vcpu];
            if (v->sections & vcpu_section_bit(type))
                FAIL(type, vcpu, "appears twice");
            if (parse_vcpu_section(&r, type, vcpu, v, error, error_size) != 0)
                return -1;
        } else {
            if (type != MACHINE_STATE_SECTION_IRQCHIP) {
                uint32_t before = state->vm.sections;
                /* Duplicate check: the bit this type sets. */
                uint32_t bit = 0;
                for (size_t k = 0; k < VM_SECTION_KINDS; k++)
                    if (vm_wire_order[k].type == type)
                        bit = vm_wire_order[k].bit;
                if (before & bit)
                    FAIL(type, MACHINE_STATE_NO_VCPU, "appears twice");
            }
            if (parse_vm_section(&r, type, &state->vm, error, error_size) != 0)
                return -1;
        }
        if (r.overrun || r.at != r.length) {
            /* Cannot happen with the exact length checks above; kept so a
             * future parser mistake is an error, not silent garbage. */
            FAIL(type, where, "parser consumed %zu of %" PRIu32 " bytes", r.at, section_length);
        }
        at += section_length;
    }
    if (at != length) {
        snprintf(error, error_size, "machine state: %zu bytes after the last of its %" PRIu32 " sections",
                 length - at, count);
        return -1;
    }
    return 0;
}

int machine_state_decode(const uint8_t *in, size_t length, struct machine_state *state, char *error,
                         size_t error_size)
{
    memset(state, 0, sizeof(*state));
    if (decode_sections(in, length, state, error, error_size) != 0 ||
        machine_state_validate(state, error, error_size) != 0) {
        machine_state_free(state);
        return -1;
    }
    return 0;
}
