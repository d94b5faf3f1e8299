/*
 * MP table writer (see mptable.h). Pure; the boot code calls it with a host
 * pointer into guest RAM.
 */
#include "vmm/mptable.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* Layouts of the Intel MP Specification 1.4, chapter 4, with the kernel's
 * names (arch/x86/include/asm/mpspec_def.h). */
struct mptable_floating_pointer {
    char signature[4];          /* "_MP_" */
    uint32_t physptr;           /* config table address */
    uint8_t length;             /* in 16-byte paragraphs: 1 */
    uint8_t specification;      /* 4 = 1.4 */
    uint8_t checksum;           /* the 16 bytes sum to 0 */
    uint8_t feature1;           /* 0: a config table is present */
    uint8_t feature2;           /* bit 7 IMCR: 0, virtual wire mode */
    uint8_t feature3;
    uint8_t feature4;
    uint8_t feature5;
} __attribute__((packed));

struct mptable_header {
    char signature[4];          /* "PCMP" */
    uint16_t length;            /* header + entries */
    uint8_t spec;               /* 4 */
    uint8_t checksum;           /* header + entries sum to 0 */
    char oem[8];
    char productid[12];
    uint32_t oemptr;
    uint16_t oemsize;
    uint16_t oemcount;          /* entries after the header */
    uint32_t lapic;             /* LAPIC address */
    uint32_t reserved;
} __attribute__((packed));

struct mptable_processor {
    uint8_t type;               /* 0 */
    uint8_t apicid;
    uint8_t apicver;
    uint8_t cpuflag;            /* 1 enabled, 2 bootstrap processor */
    uint32_t cpufeature;        /* stepping/model/family */
    uint32_t featureflag;       /* CPUID.1:EDX */
    uint32_t reserved[2];
} __attribute__((packed));

struct mptable_bus {
    uint8_t type;               /* 1 */
    uint8_t busid;
    char bustype[6];            /* "ISA   " */
} __attribute__((packed));

struct mptable_ioapic {
    uint8_t type;               /* 2 */
    uint8_t apicid;
    uint8_t apicver;
    uint8_t flags;              /* 1 usable */
    uint32_t apicaddr;
} __attribute__((packed));

/* I/O (type 3) and local (type 4) interrupt entries share this layout. */
struct mptable_interrupt {
    uint8_t type;
    uint8_t irqtype;            /* 0 INT, 1 NMI, 3 ExtINT */
    uint16_t irqflag;           /* 0: polarity and trigger conform to the bus */
    uint8_t srcbus;
    uint8_t srcbusirq;
    uint8_t dstapic;            /* IOAPIC id, or LAPIC id (0xff all) */
    uint8_t dstirq;             /* IOAPIC pin, or LINT number */
} __attribute__((packed));

_Static_assert(sizeof(struct mptable_floating_pointer) == 16, "MP floating pointer");
_Static_assert(sizeof(struct mptable_header) == 44, "MP config table header");
_Static_assert(sizeof(struct mptable_processor) == 20, "MP processor entry");
_Static_assert(sizeof(struct mptable_bus) == 8, "MP bus entry");
_Static_assert(sizeof(struct mptable_ioapic) == 8, "MP IOAPIC entry");
_Static_assert(sizeof(struct mptable_interrupt) == 8, "MP interrupt entry");

#define MPTABLE_TYPE_PROCESSOR  0
#define MPTABLE_TYPE_BUS        1
#define MPTABLE_TYPE_IOAPIC     2
#define MPTABLE_TYPE_INTSRC     3
#define MPTABLE_TYPE_LINTSRC    4
#define MPTABLE_IRQ_INT         0
#define MPTABLE_IRQ_NMI         1
#define MPTABLE_IRQ_EXTINT      3
#define MPTABLE_CPU_ENABLED     0x01
#define MPTABLE_CPU_BSP         0x02
/* Family 6, model 0, stepping 0, and CPUID.1:EDX FPU|APIC, as Firecracker
 * and SeaBIOS write: Linux reads only the APIC id and the flags. */
#define MPTABLE_CPU_SIGNATURE   0x600
#define MPTABLE_CPU_FEATURES    0x201

size_t mptable_size(unsigned vcpu_count)
{
    return sizeof(struct mptable_floating_pointer) + sizeof(struct mptable_header) +
           vcpu_count * sizeof(struct mptable_processor) + sizeof(struct mptable_bus) +
           sizeof(struct mptable_ioapic) + MPTABLE_ISA_IRQS * sizeof(struct mptable_interrupt) +
           2 * sizeof(struct mptable_interrupt);
}

static uint8_t checksum_of(const void *bytes, size_t length)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < length; i++)
        sum = (uint8_t)(sum + ((const uint8_t *)bytes)[i]);
    return (uint8_t)(0x100 - sum);
}

int mptable_write(void *buffer, size_t buffer_size, uint64_t gpa, unsigned vcpu_count, size_t *written,
                  char *error, size_t error_size)
{
    if (vcpu_count == 0 || vcpu_count > MPTABLE_MAX_VCPUS) {
        snprintf(error, error_size, "MP table: %u vCPUs, it describes 1 to %d", vcpu_count,
                 MPTABLE_MAX_VCPUS);
        return -EINVAL;
    }
    /* Linux scans for the floating pointer in 16-byte steps, and physptr is
     * 32 bits. */
    if (gpa % 16 != 0 || gpa + mptable_size(vcpu_count) > UINT32_MAX) {
        snprintf(error, error_size, "MP table: address 0x%" PRIx64 " is not 16-byte aligned below 4 GiB",
                 gpa);
        return -EINVAL;
    }
    size_t size = mptable_size(vcpu_count);
    if (size > buffer_size) {
        snprintf(error, error_size, "MP table for %u vCPUs needs %zu bytes, %zu are reserved at 0x%" PRIx64,
                 vcpu_count, size, buffer_size, gpa);
        return -ENOSPC;
    }
    uint8_t *start = buffer;
    memset(start, 0, size);

    struct mptable_floating_pointer *pointer = (struct mptable_floating_pointer *)start;
    uint8_t *table = start + sizeof(*pointer);
    uint8_t *cursor = table + sizeof(struct mptable_header);
    unsigned entries = 0;

    for (unsigned i = 0; i < vcpu_count; i++) {
        struct mptable_processor processor = {
            .type = MPTABLE_TYPE_PROCESSOR,
            .apicid = (uint8_t)i,
            .apicver = MPTABLE_LAPIC_VERSION,
            .cpuflag = MPTABLE_CPU_ENABLED | (i == 0 ? MPTABLE_CPU_BSP : 0),
            .cpufeature = MPTABLE_CPU_SIGNATURE,
            .featureflag = MPTABLE_CPU_FEATURES,
        };
        memcpy(cursor, &processor, sizeof(processor));
        cursor += sizeof(processor);
        entries++;
    }
    struct mptable_bus bus = { .type = MPTABLE_TYPE_BUS, .busid = 0 };
    memcpy(bus.bustype, "ISA   ", sizeof(bus.bustype));
    memcpy(cursor, &bus, sizeof(bus));
    cursor += sizeof(bus);
    entries++;

    uint8_t ioapic_id = (uint8_t)vcpu_count;
    struct mptable_ioapic ioapic = {
        .type = MPTABLE_TYPE_IOAPIC,
        .apicid = ioapic_id,
        .apicver = MPTABLE_IOAPIC_VERSION,
        .flags = 1,
        .apicaddr = MPTABLE_IOAPIC_ADDRESS,
    };
    memcpy(cursor, &ioapic, sizeof(ioapic));
    cursor += sizeof(ioapic);
    entries++;

    for (unsigned irq = 0; irq < MPTABLE_ISA_IRQS; irq++) {
        struct mptable_interrupt source = {
            .type = MPTABLE_TYPE_INTSRC,
            .irqtype = MPTABLE_IRQ_INT,
            .irqflag = 0,
            .srcbus = 0,
            .srcbusirq = (uint8_t)irq,
            .dstapic = ioapic_id,
            .dstirq = (uint8_t)irq,     /* identity: see mptable.h */
        };
        memcpy(cursor, &source, sizeof(source));
        cursor += sizeof(source);
        entries++;
    }
    struct mptable_interrupt local[2] = {
        { .type = MPTABLE_TYPE_LINTSRC, .irqtype = MPTABLE_IRQ_EXTINT, .dstapic = 0, .dstirq = 0 },
        { .type = MPTABLE_TYPE_LINTSRC, .irqtype = MPTABLE_IRQ_NMI, .dstapic = 0xff, .dstirq = 1 },
    };
    memcpy(cursor, local, sizeof(local));
    cursor += sizeof(local);
    entries += 2;

    struct mptable_header header = {
        .length = (uint16_t)(cursor - table),
        .spec = 4,
        .oemcount = (uint16_t)entries,
        .lapic = MPTABLE_LAPIC_ADDRESS,
    };
    memcpy(header.signature, "PCMP", 4);
    memcpy(header.oem, "RINGVM  ", 8);
    memcpy(header.productid, "RINGVM 1    ", 12);
    memcpy(table, &header, sizeof(header));
    /* The checksum byte is 0 while summing, so the table then sums to 0. */
    table[offsetof(struct mptable_header, checksum)] = checksum_of(table, header.length);

    struct mptable_floating_pointer floating = {
        .physptr = (uint32_t)(gpa + sizeof(floating)),
        .length = 1,
        .specification = 4,
    };
    memcpy(floating.signature, "_MP_", 4);
    floating.checksum = checksum_of(&floating, sizeof(floating));
    memcpy(pointer, &floating, sizeof(floating));

    *written = size;
    return 0;
}
