/* The CMOS RTC model (vmm/cmos_rtc.c): no KVM needed. */
#include <criterion/criterion.h>

#include "vmm/cmos_rtc.h"

/* 2026-12-02 04:05:06 UTC, a Wednesday. */
static time_t pinned_time(void *opaque)
{
    (void)opaque;
    return 1796184306;
}

static uint8_t read_register(struct cmos_rtc *rtc, uint8_t index)
{
    uint8_t value = index;
    cr_assert(cmos_rtc_port_io(rtc, 0x70, true, &value, 1));
    cr_assert(cmos_rtc_port_io(rtc, 0x71, false, &value, 1));
    return value;
}

Test(cmos_rtc, reports_the_time_in_bcd_24_hour)
{
    struct cmos_rtc rtc;
    cmos_rtc_init(&rtc);
    rtc.now = pinned_time;
    cr_assert_eq(read_register(&rtc, 0x00), 0x06);   /* seconds */
    cr_assert_eq(read_register(&rtc, 0x02), 0x05);   /* minutes */
    cr_assert_eq(read_register(&rtc, 0x04), 0x04);   /* hours */
    cr_assert_eq(read_register(&rtc, 0x06), 0x04);   /* Wednesday = 4 */
    cr_assert_eq(read_register(&rtc, 0x07), 0x02);   /* day */
    cr_assert_eq(read_register(&rtc, 0x08), 0x12);   /* month */
    cr_assert_eq(read_register(&rtc, 0x09), 0x26);   /* year */
    cr_assert_eq(read_register(&rtc, 0x32), 0x20);   /* century */
    cr_assert_eq(read_register(&rtc, 0x0a) & 0x80, 0, "never update-in-progress");
    cr_assert_eq(read_register(&rtc, 0x0b), 0x02, "24-hour, BCD");
    cr_assert_eq(read_register(&rtc, 0x0d), 0x80, "valid RAM");
    cmos_rtc_destroy(&rtc);
}

Test(cmos_rtc, clock_ignores_writes_and_ram_keeps_them)
{
    struct cmos_rtc rtc;
    cmos_rtc_init(&rtc);
    rtc.now = pinned_time;
    uint8_t index = 0x80 | 0x00;   /* NMI-mask bit set: still index 0 */
    cmos_rtc_port_io(&rtc, 0x70, true, &index, 1);
    uint8_t value = 0x59;
    cmos_rtc_port_io(&rtc, 0x71, true, &value, 1);
    cr_assert_eq(read_register(&rtc, 0x00), 0x06, "the guest cannot set the clock");

    index = 0x40;
    cmos_rtc_port_io(&rtc, 0x70, true, &index, 1);
    value = 0xa5;
    cmos_rtc_port_io(&rtc, 0x71, true, &value, 1);
    cr_assert_eq(read_register(&rtc, 0x40), 0xa5);
    cr_assert_eq(read_register(&rtc, 0x41), 0x00);
    cmos_rtc_destroy(&rtc);
}

Test(cmos_rtc, other_ports_are_not_its)
{
    struct cmos_rtc rtc;
    cmos_rtc_init(&rtc);
    uint8_t value = 0;
    cr_assert_not(cmos_rtc_port_io(&rtc, 0x72, false, &value, 1));
    cr_assert_not(cmos_rtc_port_io(&rtc, 0x64, true, &value, 1));
    cmos_rtc_destroy(&rtc);
}
