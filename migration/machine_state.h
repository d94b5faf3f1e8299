/*
 * Machine state v2: everything a Linux guest (and the built-in guest, as a
 * subset) lives in outside its RAM, as a versioned, self-describing,
 * little-endian wire format (issue 14; layout in docs/migration-protocol.md,
 * "Machine state v2"). The stream's one state frame (MACHINE_STATE) for
 * both guest kinds since state format 2.
 *
 * Three layers:
 *   - encode / decode / validate: pure functions of their arguments, unit
 *     tested without KVM (tests/test_machine_state.c);
 *   - the restore plan: which KVM calls, in which order, for the sections
 *     present (pure, tested), and the MSR split that writes TSC_DEADLINE
 *     last (pure, tested);
 *   - capture and restore: the KVM ioctls following that plan (written
 *     after Firecracker's vcpu.rs / vm.rs; run on SVM KVM only, by
 *     tests/test_machine_state_kvm.c under make test-nested).
 *
 * Ownership: a struct machine_state is owned by one thread (the migration
 * thread on the source, the receiver on the destination); its arrays are
 * heap memory released by machine_state_free. Nothing here is shared or
 * locked; capture and restore need every vCPU out of KVM_RUN.
 */
#ifndef RINGVM_MIGRATION_MACHINE_STATE_H
#define RINGVM_MIGRATION_MACHINE_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/kvm.h>

#include "vmm/uart.h"

#define MACHINE_STATE_MAGIC          "RINGVMST"     /* 8 bytes, no NUL */
#define MACHINE_STATE_FORMAT_VERSION 2u
#define MACHINE_STATE_HEADER_SIZE    16u
#define MACHINE_STATE_SECTION_HEADER_SIZE 16u
#define MACHINE_STATE_NO_VCPU        0xffffffffu    /* vcpu field of a VM section */

/* Bounds (the decoder refuses more before it allocates anything). */
#define MACHINE_STATE_MAX_VCPUS      64u
#define MACHINE_STATE_MAX_SECTIONS   4096u
#define MACHINE_STATE_MAX_MSRS       1024u
#define MACHINE_STATE_MAX_CPUID      256u           /* KVM_MAX_CPUID_ENTRIES */
#define MACHINE_STATE_XSAVE_MIN      4096u          /* sizeof(struct kvm_xsave) */
#define MACHINE_STATE_XSAVE_MAX      65536u
#define MACHINE_STATE_CMDLINE_MAX    2047u          /* x86 COMMAND_LINE_SIZE - 1 */
#define MACHINE_STATE_PROTOCOL_MAX   63u

/* Section header flag: a destination that does not know this section's type
 * (or version) may skip it. Without it, an unknown section is refused. */
#define MACHINE_STATE_SECTION_MAY_SKIP 0x1u

enum machine_state_section_type {
    /* VM scope (vcpu field = MACHINE_STATE_NO_VCPU) */
    MACHINE_STATE_SECTION_MACHINE = 0x0001,     /* vCPU count, guest kind; first */
    MACHINE_STATE_SECTION_CLOCK = 0x0002,       /* KVM_GET_CLOCK */
    MACHINE_STATE_SECTION_IRQCHIP = 0x0003,     /* one KVM_GET_IRQCHIP chip */
    MACHINE_STATE_SECTION_PIT2 = 0x0004,        /* KVM_GET_PIT2 */
    MACHINE_STATE_SECTION_TSC_FREQUENCY = 0x0005, /* the VM's TSC kHz */
    MACHINE_STATE_SECTION_BOOT_INFO = 0x0006,   /* cmdline, boot protocol (may skip) */
    MACHINE_STATE_SECTION_UART = 0x0007,        /* struct uart_state */
    MACHINE_STATE_SECTION_CMOS = 0x0008,        /* CMOS index and RAM (may skip) */
    /* vCPU scope (vcpu field = index), in the save order */
    MACHINE_STATE_SECTION_MP_STATE = 0x0101,
    MACHINE_STATE_SECTION_REGS = 0x0102,
    MACHINE_STATE_SECTION_SREGS = 0x0103,
    MACHINE_STATE_SECTION_XSAVE = 0x0104,
    MACHINE_STATE_SECTION_FPU = 0x0105,         /* instead of XSAVE where it fails */
    MACHINE_STATE_SECTION_XCRS = 0x0106,
    MACHINE_STATE_SECTION_DEBUGREGS = 0x0107,
    MACHINE_STATE_SECTION_LAPIC = 0x0108,
    MACHINE_STATE_SECTION_TSC_KHZ = 0x0109,
    MACHINE_STATE_SECTION_CPUID2 = 0x010a,
    MACHINE_STATE_SECTION_MSRS = 0x010b,
    MACHINE_STATE_SECTION_VCPU_EVENTS = 0x010c,
};

/* "regs", "clock", ...; NULL for an unknown type. */
const char *machine_state_section_name(uint32_t type);

/* Presence bits (struct machine_state_vcpu.sections / machine_state_vm.sections). */
enum {
    MACHINE_STATE_HAS_MP_STATE = 1u << 0,
    MACHINE_STATE_HAS_REGS = 1u << 1,
    MACHINE_STATE_HAS_SREGS = 1u << 2,
    MACHINE_STATE_HAS_XSAVE = 1u << 3,
    MACHINE_STATE_HAS_FPU = 1u << 4,
    MACHINE_STATE_HAS_XCRS = 1u << 5,
    MACHINE_STATE_HAS_DEBUGREGS = 1u << 6,
    MACHINE_STATE_HAS_LAPIC = 1u << 7,
    MACHINE_STATE_HAS_TSC_KHZ = 1u << 8,
    MACHINE_STATE_HAS_CPUID2 = 1u << 9,
    MACHINE_STATE_HAS_MSRS = 1u << 10,
    MACHINE_STATE_HAS_VCPU_EVENTS = 1u << 11,
};
enum {
    MACHINE_STATE_HAS_CLOCK = 1u << 0,
    MACHINE_STATE_HAS_PIC_MASTER = 1u << 1,
    MACHINE_STATE_HAS_PIC_SLAVE = 1u << 2,
    MACHINE_STATE_HAS_IOAPIC = 1u << 3,
    MACHINE_STATE_HAS_PIT2 = 1u << 4,
    MACHINE_STATE_HAS_TSC_FREQUENCY = 1u << 5,
    MACHINE_STATE_HAS_BOOT_INFO = 1u << 6,
    MACHINE_STATE_HAS_UART = 1u << 7,
    MACHINE_STATE_HAS_CMOS = 1u << 8,
};
#define MACHINE_STATE_HAS_IRQCHIPS \
    (MACHINE_STATE_HAS_PIC_MASTER | MACHINE_STATE_HAS_PIC_SLAVE | MACHINE_STATE_HAS_IOAPIC)

/* The kernel's structs are the in-memory form (the ioctls take them); the
 * wire carries their fields one by one (never their padding). */
struct machine_state_vcpu {
    uint32_t sections;                  /* MACHINE_STATE_HAS_* */
    struct kvm_mp_state mp_state;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    uint32_t xsave_size;                /* bytes at xsave (KVM_CAP_XSAVE2 size) */
    uint8_t *xsave;                     /* heap, owned */
    struct kvm_fpu fpu;
    struct kvm_xcrs xcrs;
    struct kvm_debugregs debugregs;
    struct kvm_lapic_state lapic;
    uint32_t tsc_khz;
    uint32_t cpuid_count;
    struct kvm_cpuid_entry2 *cpuid;     /* heap, owned */
    uint32_t msr_count;
    struct kvm_msr_entry *msrs;         /* heap, owned */
    struct kvm_vcpu_events events;
};

enum machine_state_guest_kind {
    MACHINE_STATE_GUEST_BUILTIN = 0,
    MACHINE_STATE_GUEST_LINUX = 1,
};

struct machine_state_vm {
    uint32_t sections;                  /* MACHINE_STATE_HAS_* (VM bits) */
    uint32_t guest_kind;                /* enum machine_state_guest_kind */
    struct kvm_clock_data clock;
    struct kvm_pic_state pic_master, pic_slave;
    struct kvm_ioapic_state ioapic;
    struct kvm_pit_state2 pit;
    uint32_t tsc_khz;
    char cmdline[MACHINE_STATE_CMDLINE_MAX + 1];
    char boot_protocol[MACHINE_STATE_PROTOCOL_MAX + 1];
    struct uart_state uart;
    uint8_t cmos_index;                 /* 0..127 */
    uint8_t cmos_ram[128];
};

struct machine_state {
    uint32_t vcpu_count;
    struct machine_state_vcpu *vcpus;   /* heap, vcpu_count entries */
    struct machine_state_vm vm;
};

/* Zeroed state with vcpu_count zeroed vCPUs (1..64). Returns 0 or -ENOMEM /
 * -EINVAL. Per-vCPU arrays are set with the helpers below. */
int machine_state_init(struct machine_state *state, uint32_t vcpu_count);
void machine_state_free(struct machine_state *state);     /* zeroes it; twice is fine */
/* Copies into the vCPU's own heap arrays (replacing earlier ones). -ENOMEM. */
int machine_state_vcpu_set_xsave(struct machine_state_vcpu *vcpu, const void *xsave, uint32_t size);
int machine_state_vcpu_set_cpuid(struct machine_state_vcpu *vcpu, const struct kvm_cpuid_entry2 *entries,
                                 uint32_t count);
int machine_state_vcpu_set_msrs(struct machine_state_vcpu *vcpu, const struct kvm_msr_entry *entries,
                                uint32_t count);

/* Checks every value whose meaning is known and the presence rules (the
 * same checks decode applies after parsing). 0, or -1 with the section and
 * field named in error. */
int machine_state_validate(const struct machine_state *state, char *error, size_t error_size);

/* Bytes machine_state_encode writes for this state. */
size_t machine_state_encoded_size(const struct machine_state *state);
/* Validates, then writes exactly machine_state_encoded_size bytes (out must
 * hold them). Returns the length, or 0 with the reason in error. */
size_t machine_state_encode(const struct machine_state *state, uint8_t *out, size_t out_size, char *error,
                            size_t error_size);
/* machine_state_encode into a heap buffer of exactly
 * machine_state_encoded_size bytes (the caller frees it). NULL with the
 * reason in error (validation, or "out of memory"). */
uint8_t *machine_state_encode_alloc(const struct machine_state *state, size_t *length, char *error,
                                    size_t error_size);
/* Parses and validates; on success *state is owned by the caller
 * (machine_state_free), on failure it is left freed. Never reads outside
 * [in, in + length). 0, or -1 with e.g. "section regs of vCPU 1: length 140
 * (must be 144)". */
int machine_state_decode(const uint8_t *in, size_t length, struct machine_state *state, char *error,
                         size_t error_size);

/* ---- restore order ------------------------------------------------------- */

enum machine_state_call {
    MACHINE_STATE_CALL_SET_TSC_KHZ = 1,
    MACHINE_STATE_CALL_SET_CPUID2,
    MACHINE_STATE_CALL_SET_MP_STATE,
    MACHINE_STATE_CALL_SET_REGS,
    MACHINE_STATE_CALL_SET_SREGS,
    MACHINE_STATE_CALL_SET_XSAVE,
    MACHINE_STATE_CALL_SET_FPU,
    MACHINE_STATE_CALL_SET_XCRS,
    MACHINE_STATE_CALL_SET_DEBUGREGS,
    MACHINE_STATE_CALL_SET_LAPIC,
    MACHINE_STATE_CALL_SET_MSRS,            /* every MSR but TSC_DEADLINE */
    MACHINE_STATE_CALL_SET_TSC_DEADLINE,    /* KVM_SET_MSRS of TSC_DEADLINE alone */
    MACHINE_STATE_CALL_SET_VCPU_EVENTS,
    MACHINE_STATE_CALL_SET_PIT2,
    MACHINE_STATE_CALL_SET_CLOCK,
    MACHINE_STATE_CALL_SET_IRQCHIP_PIC_MASTER,
    MACHINE_STATE_CALL_SET_IRQCHIP_PIC_SLAVE,
    MACHINE_STATE_CALL_SET_IRQCHIP_IOAPIC,
    MACHINE_STATE_CALL_RESTORE_UART,        /* uart_state_restore (no ioctl) */
    MACHINE_STATE_CALL_RESTORE_CMOS,        /* CMOS RAM (no ioctl) */
    MACHINE_STATE_CALL_KVMCLOCK_CTRL,
};
/* "KVM_SET_REGS", ..., "uart_state_restore"; "unknown" otherwise. */
const char *machine_state_call_name(uint32_t call);

struct machine_state_step {
    enum machine_state_call call;
    uint32_t vcpu;                          /* MACHINE_STATE_NO_VCPU for VM steps */
};

struct machine_state_plan_input {
    uint32_t vcpu_count;                    /* at most MACHINE_STATE_MAX_VCPUS */
    uint32_t vcpu_sections[MACHINE_STATE_MAX_VCPUS];
    /* The vCPU's MSRs hold a TSC_DEADLINE to write after the others
     * (machine_state_msr_split's deferred_count != 0). */
    bool vcpu_tsc_deadline[MACHINE_STATE_MAX_VCPUS];
    uint32_t vm_sections;
    bool set_tsc_khz;                       /* machine_state_tsc_scaling_needed */
};

/* Most steps a plan can have. */
#define MACHINE_STATE_MAX_STEPS (MACHINE_STATE_MAX_VCPUS * 14u + 8u)

/* The ordered calls for the sections present (rules and reasons in
 * machine_state.c). Returns the step count (<= MACHINE_STATE_MAX_STEPS). */
size_t machine_state_restore_plan(const struct machine_state_plan_input *input, struct machine_state_step *steps,
                                  size_t capacity);
/* Fills input from a decoded state and the destination's TSC kHz (0 =
 * unknown: no KVM_SET_TSC_KHZ). */
void machine_state_plan_input_from(const struct machine_state *state, uint32_t local_tsc_khz,
                                   struct machine_state_plan_input *input);

/* True when the source's TSC differs from ours by more than 250 ppm (the
 * tolerance QEMU and Firecracker use: TSC calibration differs slightly
 * between boots of the same CPU model). */
bool machine_state_tsc_scaling_needed(uint32_t source_khz, uint32_t local_khz);

/* Completes a KVM_GET_CLOCK result that KVM could not pair with the host's
 * CLOCK_REALTIME (it does only where the host's clocksource is the TSC;
 * our PVM hosts run on kvm-clock, an emulated machine's kernel may have
 * marked its TSC unstable): realtime becomes realtime_ns, sampled around
 * the ioctl, and KVM_CLOCK_REALTIME is set, so the destination advances
 * the guest's clock across the downtime all the same (docs/migration-
 * protocol.md, "The clock decision"). A result with the flag is left as
 * KVM gave it. */
void machine_state_clock_complete(struct kvm_clock_data *clock, uint64_t realtime_ns);

/* Guest TSC ticks in elapsed_ns at tsc_khz: what a destination adds to
 * the saved IA32_TSC for the host realtime elapsed since the source's
 * KVM_GET_CLOCK, so a guest timing itself by its TSC sees the downtime
 * pass as kvm-clock does. elapsed_ns over a day counts as a day. */
uint64_t machine_state_tsc_ticks(uint32_t tsc_khz, uint64_t elapsed_ns);

#define MACHINE_STATE_MSR_IA32_TSC          0x10u
#define MACHINE_STATE_MSR_IA32_TSC_DEADLINE 0x6e0u

/* Splits msrs into `first` (everything but TSC_DEADLINE, in order) and
 * `deferred` (TSC_DEADLINE, written after the TSC and the LAPIC). A zero
 * TSC_DEADLINE is replaced by the TSC value, as Firecracker's
 * fix_zero_tsc_deadline_msr does (the timer fires once at once and the
 * guest re-arms it, instead of a deadline lost at the switch-over); with
 * no TSC in the set a zero TSC_DEADLINE is left out (a fresh vCPU's value
 * is 0 already). Both outputs hold up to count entries. */
void machine_state_msr_split(const struct kvm_msr_entry *msrs, uint32_t count, struct kvm_msr_entry *first,
                             uint32_t *first_count, struct kvm_msr_entry *deferred, uint32_t *deferred_count);

/* ---- KVM (run on SVM KVM by tests/test_machine_state_kvm.c; not on PVM) -- */

struct machine_state_capture_config {
    const uint32_t *msr_indices;            /* msr_index_probe (vmm/msr_index.h) */
    uint32_t msr_count;
    uint32_t xsave2_size;                   /* KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM; 0 = none */
    bool has_irqchip;                       /* KVM_CREATE_IRQCHIP was done */
    bool has_pit;                           /* KVM_CREATE_PIT2 was done */
};

/* One vCPU, out of KVM_RUN, in the save order MP_STATE, REGS, SREGS,
 * XSAVE2 (else XSAVE, else FPU), XCRS, DEBUGREGS, LAPIC, TSC_KHZ, CPUID2,
 * MSRs, VCPU_EVENTS. A short MSR read names the MSR. 0 or -errno. */
int machine_state_capture_vcpu(int vcpu_fd, const struct machine_state_capture_config *config,
                               struct machine_state_vcpu *vcpu, char *error, size_t error_size);
/* The VM's KVM state: PIT2, CLOCK, IRQCHIP x3, TSC kHz. The caller fills
 * guest_kind, boot info, UART (uart_state_save) and CMOS. 0 or -errno. */
int machine_state_capture_vm(int vm_fd, const struct machine_state_capture_config *config,
                             struct machine_state_vm *vm, char *error, size_t error_size);

struct cmos_rtc;
struct machine_state_restore_target {
    int vm_fd;
    const int *vcpu_fds;                    /* vcpu_count of them */
    uint32_t vcpu_count;                    /* must equal the state's */
    uint32_t local_tsc_khz;                 /* KVM_GET_TSC_KHZ here; 0 = unknown */
    uint32_t xsave2_size;                   /* KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) here; 0 = 4096 */
    struct uart *uart;                      /* NULL: the state must have no UART */
    struct cmos_rtc *rtc;                   /* NULL: CMOS section ignored */
};
/* Runs machine_state_restore_plan. vCPUs must not run yet. 0 or -errno
 * with the call (and MSR) that failed in error. */
int machine_state_restore(const struct machine_state_restore_target *target, const struct machine_state *state,
                          char *error, size_t error_size);

#endif
