/*
 * The MP table (vmm/mptable.c), parsed back byte by byte the way Linux's
 * arch/x86/kernel/mpparse.c reads it: floating pointer and table checksums,
 * counts, and every entry, for 1, 2 and 64 vCPUs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "vmm/linux_boot.h"
#include "vmm/mptable.h"

#define GPA 0x9FC00ULL

static char error[256];
static uint8_t buffer[8192];

static uint8_t sum_of(const uint8_t *bytes, size_t length)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < length; i++)
        sum = (uint8_t)(sum + bytes[i]);
    return sum;
}

static uint16_t u16_at(const uint8_t *p)
{
    uint16_t value;
    memcpy(&value, p, 2);
    return value;
}

static uint32_t u32_at(const uint8_t *p)
{
    uint32_t value;
    memcpy(&value, p, 4);
    return value;
}

static void check_table(unsigned vcpus)
{
    memset(buffer, 0xee, sizeof(buffer));
    size_t written = 0;
    cr_assert_eq(mptable_write(buffer, LINUX_BOOT_MPTABLE_SIZE, GPA, vcpus, &written, error, sizeof(error)), 0,
                 "%s", error);
    size_t expected_size = 16 + 44 + 20 * vcpus + 8 + 8 + 16 * 8 + 2 * 8;
    cr_assert_eq(written, expected_size);
    cr_assert_eq(mptable_size(vcpus), expected_size);
    cr_assert_eq(buffer[written], 0xee, "nothing written past the table");

    /* Floating pointer: "_MP_", physptr, length 1, spec 1.4, checksum. */
    const uint8_t *pointer = buffer;
    cr_assert_eq(memcmp(pointer, "_MP_", 4), 0);
    cr_assert_eq(u32_at(pointer + 4), GPA + 16);
    cr_assert_eq(pointer[8], 1);
    cr_assert_eq(pointer[9], 4);
    cr_assert_eq(sum_of(pointer, 16), 0, "floating pointer checksum");
    for (unsigned i = 11; i < 16; i++)
        cr_assert_eq(pointer[i], 0, "feature byte %u", i - 10);

    /* Config table header. */
    const uint8_t *table = buffer + 16;
    uint16_t length = u16_at(table + 4);
    unsigned entries = 2 + vcpus + 16 + 2;
    cr_assert_eq(memcmp(table, "PCMP", 4), 0);
    cr_assert_eq(length, expected_size - 16);
    cr_assert_eq(table[6], 4, "spec 1.4");
    cr_assert_eq(sum_of(table, length), 0, "table checksum");
    cr_assert_eq(memcmp(table + 8, "RINGVM  ", 8), 0);
    cr_assert_eq(memcmp(table + 16, "RINGVM 1    ", 12), 0);
    cr_assert_eq(u32_at(table + 28), 0, "oemptr");
    cr_assert_eq(u16_at(table + 32), 0, "oemsize");
    cr_assert_eq(u16_at(table + 34), entries, "oemcount: every entry after the header");
    cr_assert_eq(u32_at(table + 36), 0xFEE00000U, "LAPIC address");
    cr_assert_eq(u32_at(table + 40), 0);

    const uint8_t *entry = table + 44;
    for (unsigned i = 0; i < vcpus; i++, entry += 20) {
        cr_assert_eq(entry[0], 0, "processor %u type", i);
        cr_assert_eq(entry[1], i, "processor %u APIC id", i);
        cr_assert_eq(entry[2], 0x14, "processor %u APIC version", i);
        cr_assert_eq(entry[3], i == 0 ? 3 : 1, "processor %u flags (enabled, BSP on 0)", i);
        cr_assert_eq(u32_at(entry + 4), 0x600, "processor %u signature", i);
        cr_assert_eq(u32_at(entry + 8), 0x201, "processor %u features", i);
        cr_assert_eq(u32_at(entry + 12), 0);
        cr_assert_eq(u32_at(entry + 16), 0);
    }
    cr_assert_eq(entry[0], 1, "bus entry");
    cr_assert_eq(entry[1], 0, "bus id");
    cr_assert_eq(memcmp(entry + 2, "ISA   ", 6), 0);
    entry += 8;
    cr_assert_eq(entry[0], 2, "IOAPIC entry");
    cr_assert_eq(entry[1], vcpus, "IOAPIC id = vCPU count");
    cr_assert_eq(entry[2], 0x11, "IOAPIC version");
    cr_assert_eq(entry[3], 1, "IOAPIC usable");
    cr_assert_eq(u32_at(entry + 4), 0xFEC00000U);
    entry += 8;
    for (unsigned irq = 0; irq < 16; irq++, entry += 8) {
        cr_assert_eq(entry[0], 3, "IRQ %u: I/O interrupt entry", irq);
        cr_assert_eq(entry[1], 0, "IRQ %u: INT", irq);
        cr_assert_eq(u16_at(entry + 2), 0, "IRQ %u: bus-default polarity and trigger", irq);
        cr_assert_eq(entry[4], 0, "IRQ %u: ISA bus", irq);
        cr_assert_eq(entry[5], irq, "IRQ %u: source", irq);
        cr_assert_eq(entry[6], vcpus, "IRQ %u: to the IOAPIC", irq);
        cr_assert_eq(entry[7], irq, "IRQ %u: pin (KVM's default routing is the identity)", irq);
    }
    cr_assert_eq(entry[0], 4, "LINT0 entry");
    cr_assert_eq(entry[1], 3, "ExtINT");
    cr_assert_eq(u16_at(entry + 2), 0);
    cr_assert_eq(entry[4], 0);
    cr_assert_eq(entry[5], 0);
    cr_assert_eq(entry[6], 0, "to the BSP");
    cr_assert_eq(entry[7], 0, "LINT0");
    entry += 8;
    cr_assert_eq(entry[0], 4, "LINT1 entry");
    cr_assert_eq(entry[1], 1, "NMI");
    cr_assert_eq(entry[6], 0xff, "to every LAPIC");
    cr_assert_eq(entry[7], 1, "LINT1");
    entry += 8;
    cr_assert_eq((size_t)(entry - buffer), expected_size);
}

Test(mptable, one_vcpu)
{
    check_table(1);
}

Test(mptable, two_vcpus)
{
    check_table(2);
}

Test(mptable, sixty_four_vcpus)
{
    check_table(64);
    cr_assert_eq(mptable_size(64), 1500);
}

Test(mptable, the_reserved_space_is_enforced)
{
    size_t written = 0;
    /* 193 vCPUs fit the 4 KiB: 16 + 44 + 20 * 193 + 16 + 128 + 16 = 4080; 194 need 4100. */
    cr_assert_eq(mptable_size(193), 4080);
    cr_assert_eq(mptable_write(buffer, LINUX_BOOT_MPTABLE_SIZE, GPA, 193, &written, error, sizeof(error)), 0, "%s",
                 error);
    cr_assert_eq(mptable_write(buffer, LINUX_BOOT_MPTABLE_SIZE, GPA, 194, &written, error, sizeof(error)), -ENOSPC);
    cr_assert_str_eq(error, "MP table for 194 vCPUs needs 4100 bytes, 4096 are reserved at 0x9fc00");
    cr_assert_eq(mptable_write(buffer, 1024, GPA, 64, &written, error, sizeof(error)), -ENOSPC);
    cr_assert_str_eq(error, "MP table for 64 vCPUs needs 1500 bytes, 1024 are reserved at 0x9fc00");
}

Test(mptable, bad_arguments)
{
    size_t written = 0;
    cr_assert_eq(mptable_write(buffer, sizeof(buffer), GPA, 0, &written, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "MP table: 0 vCPUs, it describes 1 to 254");
    cr_assert_eq(mptable_write(buffer, sizeof(buffer), GPA, 255, &written, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "MP table: 255 vCPUs, it describes 1 to 254");
    cr_assert_eq(mptable_write(buffer, sizeof(buffer), GPA + 8, 1, &written, error, sizeof(error)), -EINVAL);
    cr_assert_str_eq(error, "MP table: address 0x9fc08 is not 16-byte aligned below 4 GiB");
}
