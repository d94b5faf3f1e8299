/*
 * PVH boot (ring 0, vCPU 0): turn the PVH start_info into a ringvm boot info
 * so the rest of the guest runs unchanged, then start the other vCPUs.
 *
 * - If a ringvm boot info is present at RINGVM_BOOTINFO_GPA (magic), it is
 *   used as is.
 * - Otherwise defaults (dirtier, wss=64M, seq, full speed) overridden by
 *   `key=value` words of the PVH command line, separated by spaces or commas:
 *     workload=dirtier|ledger|idle|fault wss=SIZE pattern=seq|random|hot
 *     rate=PAGES_PER_S write=8|4096 verify=SECONDS count=N
 *     fault=ud|pf|de|bp fault_ring=0|3 seed=N
 *     vcpus=N          vCPUs to run (QEMU -smp N; default 1)
 *     wss.I=SIZE       vCPU I's own working set (0 = an idle vCPU)
 *   (kind= and ring= are accepted too, as in ringvm's --workload fault,...)
 *   wss= is split evenly over the vCPUs exactly as vmm/bootinfo.c does:
 *   contiguous regions from RINGVM_WORKLOAD_BASE, then the ledger tables.
 *   Unknown words (console=..., etc.) are ignored. SIZE takes K/M/G.
 * - The working set is placed at RINGVM_WORKLOAD_BASE and shrunk to the RAM
 *   the memory map reports there (below 3 GiB).
 * - There is no doorbell: console text goes to the 8250 through the ring-0
 *   console gate (slow: each byte is an exit), phase and mismatch commands
 *   are dropped, and the stats page lives in the image (its address is in
 *   the banner; one 256-byte slot per vCPU, as at RINGVM_STATS_GPA). The
 *   TSC frequency comes from kvmclock or CPUID.
 * - vCPUs 1..N-1 are started with INIT + SIPI from vCPU 0's local APIC
 *   (xAPIC MMIO, broadcast to all but self), through the real-mode
 *   trampoline in pvh.S copied to PVH_AP_TRAMPOLINE_GPA. Extra vCPUs (QEMU
 *   -smp larger than vcpus=) halt in setup_main.
 */
#include "guest/guest.h"
#include "guest/pvh_start_info.h"

#define E820_RAM 1
#define PVH_DEFAULT_WSS (64ULL << 20)
#define PVH_FALLBACK_TSC_KHZ 2000000ULL

/* SIPI vector page for the APs: below 1 MiB, 4 KiB aligned, not used by
 * QEMU's PVH loader once the command line has been parsed. */
#define PVH_AP_TRAMPOLINE_GPA 0x8000ULL
#define LAPIC_BASE 0xfee00000ULL
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define LAPIC_ICR_BUSY (1u << 12)
#define LAPIC_ALL_BUT_SELF (3u << 18)
#define LAPIC_INIT_ASSERT (0x500u | (1u << 14) | (1u << 15))   /* INIT, assert, level */
#define LAPIC_STARTUP 0x600u

/* pvh.S */
extern char pvh_ap_trampoline[], pvh_ap_trampoline_end[], pvh_ap_gdt_pointer[];
extern char guest_gdt_pointer[];
/* Read by pvh_ap_entry64 (pvh.S). */
volatile uint32_t pvh_ap_next_index = 1;
const struct ringvm_bootinfo *pvh_ap_bootinfo;

struct pvclock_vcpu_time_info {
    uint32_t version;
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t tsc_to_system_mul;
    int8_t tsc_shift;
    uint8_t flags;
    uint8_t pad[2];
};

static struct ringvm_bootinfo pvh_bootinfo __attribute__((aligned(4096)));
static uint8_t pvh_stats[RINGVM_STATS_SIZE] __attribute__((aligned(4096)));
static struct pvclock_vcpu_time_info pvh_clock __attribute__((aligned(64)));

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static void write_msr(uint32_t msr, uint64_t value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
                     : "memory");
}

static uint64_t tsc_khz_from_hypervisor(void)
{
    uint32_t a, b, c, d;
    cpuid(0x40000000, &a, &b, &c, &d);
    uint32_t max_leaf = a;
    /* "KVMKVMKVM\0\0\0" */
    if (b == 0x4b4d564b && c == 0x564b4d56 && d == 0x0000004d) {
        cpuid(0x40000001, &a, &b, &c, &d);
        uint32_t msr = (a & (1u << 3)) ? 0x4b564d01 : (a & 1u) ? 0x12 : 0;
        if (msr != 0) {
            write_msr(msr, (uint64_t)(uintptr_t)&pvh_clock | 1);
            uint32_t mul = pvh_clock.tsc_to_system_mul;
            int shift = pvh_clock.tsc_shift;
            write_msr(msr, 0);
            if (mul != 0) {
                /* ns = ((ticks << shift) * mul) >> 32 */
                uint64_t khz = (1000000ULL << 32) / mul;
                return shift >= 0 ? khz >> shift : khz << -shift;
            }
        }
    }
    if (max_leaf >= 0x40000010) {
        cpuid(0x40000010, &a, &b, &c, &d);  /* VMware-style timing leaf: kHz */
        if (a != 0)
            return a;
    }
    cpuid(0, &a, &b, &c, &d);
    if (a >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);        /* base frequency, MHz */
        if (a != 0)
            return (uint64_t)a * 1000;
    }
    return PVH_FALLBACK_TSC_KHZ;
}

static int word_equals(const char *word, unsigned length, const char *literal)
{
    unsigned i = 0;
    for (; i < length && literal[i]; i++)
        if (word[i] != literal[i])
            return 0;
    return i == length && literal[i] == 0;
}

static uint64_t parse_number(const char *text, unsigned length)
{
    uint64_t value = 0;
    unsigned i = 0;
    for (; i < length && text[i] >= '0' && text[i] <= '9'; i++)
        value = value * 10 + (uint64_t)(text[i] - '0');
    if (i < length) {
        switch (text[i]) {
        case 'k': case 'K': value <<= 10; break;
        case 'm': case 'M': value <<= 20; break;
        case 'g': case 'G': value <<= 30; break;
        default: break;
        }
    }
    return value;
}

/* Parsed command line beyond what the boot info holds. */
struct pvh_parameters {
    uint64_t wss;
    uint64_t seed;
    uint64_t vcpu_wss[RINGVM_MAX_VCPUS];
    uint64_t vcpu_wss_given;    /* bit i: wss.i= was given (i < 64) */
};

static void apply_parameter(struct ringvm_bootinfo *info, struct pvh_parameters *parameters,
                            const char *key, unsigned key_length,
                            const char *value, unsigned value_length)
{
#define KEY(literal) word_equals(key, key_length, literal)
#define VALUE(literal) word_equals(value, value_length, literal)
    uint64_t number = parse_number(value, value_length);
    uint64_t *wss = &parameters->wss, *seed = &parameters->seed;
    if (key_length > 4 && key[0] == 'w' && key[1] == 's' && key[2] == 's' && key[3] == '.') {
        uint64_t index = parse_number(key + 4, key_length - 4);
        if (index < RINGVM_MAX_VCPUS) {
            parameters->vcpu_wss[index] = number;
            parameters->vcpu_wss_given |= 1ULL << index;
        }
    } else if (KEY("vcpus")) {
        info->vcpu_count = number < 1 ? 1 : number > RINGVM_MAX_VCPUS ? RINGVM_MAX_VCPUS
                                                                       : (uint32_t)number;
    } else if (KEY("workload")) {
        if (VALUE("dirtier")) info->workload = RINGVM_WORKLOAD_DIRTIER;
        else if (VALUE("ledger")) info->workload = RINGVM_WORKLOAD_LEDGER;
        else if (VALUE("idle")) info->workload = RINGVM_WORKLOAD_IDLE;
        else if (VALUE("fault")) info->workload = RINGVM_WORKLOAD_FAULT;
    } else if (KEY("pattern")) {
        if (VALUE("seq")) info->pattern = RINGVM_PATTERN_SEQ;
        else if (VALUE("random")) info->pattern = RINGVM_PATTERN_RANDOM;
        else if (VALUE("hot")) info->pattern = RINGVM_PATTERN_HOT;
    } else if (KEY("fault") || KEY("kind")) {
        if (VALUE("ud")) info->fault_kind = RINGVM_FAULT_UD;
        else if (VALUE("pf")) info->fault_kind = RINGVM_FAULT_PF;
        else if (VALUE("de")) info->fault_kind = RINGVM_FAULT_DE;
        else if (VALUE("bp")) info->fault_kind = RINGVM_FAULT_BP;
    } else if (KEY("wss")) {
        *wss = number;
    } else if (KEY("rate")) {
        info->rate_pages_per_s = number;
    } else if (KEY("write")) {
        info->write_bytes = number == 4096 ? 4096 : 8;
    } else if (KEY("verify")) {
        info->verify_seconds = (uint32_t)number;
    } else if (KEY("count")) {
        info->count = number;
    } else if (KEY("fault_ring") || KEY("ring")) {
        info->fault_ring = number == 0 ? 0 : 3;
    } else if (KEY("seed")) {
        *seed = number;
    }
#undef KEY
#undef VALUE
}

static void parse_command_line(struct ringvm_bootinfo *info, struct pvh_parameters *parameters,
                               const char *line)
{
    while (*line) {
        while (*line == ' ' || *line == ',' || *line == '\t' || *line == '\n')
            line++;
        const char *word = line;
        while (*line && *line != ' ' && *line != ',' && *line != '\t' && *line != '\n')
            line++;
        unsigned length = (unsigned)(line - word);
        unsigned equals = 0;
        while (equals < length && word[equals] != '=')
            equals++;
        if (equals == 0 || equals >= length)
            continue;
        apply_parameter(info, parameters, word, equals, word + equals + 1, length - equals - 1);
    }
}

/* End of the RAM range holding RINGVM_WORKLOAD_BASE, below 3 GiB; 0 if the
 * memory map says nothing. */
static uint64_t usable_ram_end(const struct hvm_start_info *start, uint64_t *total)
{
    uint64_t end = 0;
    *total = 0;
    if (start->version < 1 || start->memmap_paddr == 0)
        return 0;
    const struct hvm_memmap_table_entry *map =
        (const struct hvm_memmap_table_entry *)(uintptr_t)start->memmap_paddr;
    for (uint32_t i = 0; i < start->memmap_entries; i++) {
        if (map[i].type != E820_RAM)
            continue;
        *total += map[i].size;
        if (map[i].addr <= RINGVM_WORKLOAD_BASE && map[i].addr + map[i].size > RINGVM_WORKLOAD_BASE)
            end = map[i].addr + map[i].size;
    }
    return end > RINGVM_LOW_RAM_END ? RINGVM_LOW_RAM_END : end;
}

static void lapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = value;
}

static void lapic_send_ipi(uint32_t low)
{
    lapic_write(LAPIC_ICR_HIGH, 0);
    lapic_write(LAPIC_ICR_LOW, low);
    /* Delivery is synchronous in KVM's in-kernel APIC; bounded wait anyway. */
    for (unsigned i = 0; i < 1000; i++)
        if (!(*(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + LAPIC_ICR_LOW) & LAPIC_ICR_BUSY))
            break;
}

/* INIT, then SIPI twice, to every other vCPU (few instructions: all of ring
 * 0 is emulated on PVM hosts). No delays beyond the ICR reads: KVM latches
 * INIT and SIPI and applies them in order. */
static void pvh_start_secondary_vcpus(const struct ringvm_bootinfo *info)
{
    if (info->vcpu_count <= 1)
        return;
    pvh_ap_bootinfo = info;
    uint8_t *trampoline = (uint8_t *)(uintptr_t)PVH_AP_TRAMPOLINE_GPA;
    memcpy(trampoline, pvh_ap_trampoline, (size_t)(pvh_ap_trampoline_end - pvh_ap_trampoline));
    memcpy(trampoline + (pvh_ap_gdt_pointer - pvh_ap_trampoline), guest_gdt_pointer, 6);
    lapic_write(LAPIC_SVR, 0x1ff);     /* software-enable, spurious vector 0xff */
    lapic_send_ipi(LAPIC_ALL_BUT_SELF | LAPIC_INIT_ASSERT);
    uint32_t startup = LAPIC_ALL_BUT_SELF | LAPIC_STARTUP | (uint32_t)(PVH_AP_TRAMPOLINE_GPA >> 12);
    lapic_send_ipi(startup);
    lapic_send_ipi(startup);
}

const struct ringvm_bootinfo *pvh_prepare(uint32_t start_info_paddr)
{
    const struct ringvm_bootinfo *given = (const struct ringvm_bootinfo *)RINGVM_BOOTINFO_GPA;
    if (given->magic == RINGVM_BOOTINFO_MAGIC)
        return given;

    struct ringvm_bootinfo *info = &pvh_bootinfo;
    memset(info, 0, sizeof(*info));
    info->magic = RINGVM_BOOTINFO_MAGIC;
    info->abi_version = RINGVM_ABI_VERSION;
    info->vcpu_count = 1;
    info->doorbell_gpa = 0;
    info->stats_gpa = (uint64_t)(uintptr_t)pvh_stats;
    info->workload = RINGVM_WORKLOAD_DIRTIER;
    info->pattern = RINGVM_PATTERN_SEQ;
    info->write_bytes = 8;
    info->verify_seconds = 5;
    info->fault_ring = 3;
    static struct pvh_parameters parameters;
    memset(&parameters, 0, sizeof(parameters));
    parameters.wss = PVH_DEFAULT_WSS;
    parameters.seed = 1;

    const struct hvm_start_info *start = (const struct hvm_start_info *)(uintptr_t)start_info_paddr;
    uint64_t ram_end = 0, ram_total = 0;
    if (start != 0 && start->magic == HVM_START_MAGIC_VALUE) {
        if (start->cmdline_paddr != 0 && start->cmdline_paddr < (4ULL << 30))
            parse_command_line(info, &parameters, (const char *)(uintptr_t)start->cmdline_paddr);
        ram_end = usable_ram_end(start, &ram_total);
    }
    info->memory_bytes = ram_total;
    info->tsc_khz = tsc_khz_from_hypervisor();

    /* Pages per vCPU: wss split as vmm/bootinfo.c does, or wss.I=. */
    unsigned count = info->vcpu_count;
    uint64_t total_pages = (parameters.wss + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE, sum = 0;
    for (unsigned i = 0; i < count; i++) {
        uint64_t pages = total_pages / count + (i < total_pages % count ? 1 : 0);
        if (parameters.vcpu_wss_given & (1ULL << i))
            pages = (parameters.vcpu_wss[i] + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE;
        info->vcpu[i].region_pages = pages;
        sum += pages;
    }
    int ledger = info->workload == RINGVM_WORKLOAD_LEDGER;
    if (ram_end > RINGVM_WORKLOAD_BASE && sum > 0) {
        /* Shrink to fit: pages plus (ledger) a table page per vCPU and 4
         * table bytes per page; scale every vCPU alike. */
        uint64_t room = ram_end - RINGVM_WORKLOAD_BASE - (ledger ? count * RINGVM_PAGE_SIZE : 0);
        uint64_t fit = room / (RINGVM_PAGE_SIZE + (ledger ? 4 : 0));
        if (sum > fit) {
            for (unsigned i = 0; i < count; i++)
                info->vcpu[i].region_pages = info->vcpu[i].region_pages * fit / sum;
        }
    }
    uint64_t next = RINGVM_WORKLOAD_BASE;
    for (unsigned i = 0; i < count; i++) {
        info->vcpu[i].region_gpa = next;
        next += info->vcpu[i].region_pages * RINGVM_PAGE_SIZE;
        /* Same derivation as vmm/bootinfo.c. */
        info->vcpu[i].seed = ringvm_vcpu_seed(parameters.seed, i);
    }
    for (unsigned i = 0; ledger && i < count; i++) {
        uint64_t table_bytes = info->vcpu[i].region_pages * sizeof(uint32_t);
        info->vcpu[i].table_gpa = next;
        next += (table_bytes + RINGVM_PAGE_SIZE - 1) / RINGVM_PAGE_SIZE * RINGVM_PAGE_SIZE;
    }
    pvh_start_secondary_vcpus(info);
    return info;
}
