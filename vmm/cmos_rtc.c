/* MC146818 CMOS RTC, read-only clock (see cmos_rtc.h for why and what). */
#include "vmm/cmos_rtc.h"

#include <string.h>

enum {
    CMOS_SECONDS = 0x00,
    CMOS_MINUTES = 0x02,
    CMOS_HOURS = 0x04,
    CMOS_DAY_OF_WEEK = 0x06,
    CMOS_DAY_OF_MONTH = 0x07,
    CMOS_MONTH = 0x08,
    CMOS_YEAR = 0x09,
    CMOS_STATUS_A = 0x0a,
    CMOS_STATUS_B = 0x0b,
    CMOS_STATUS_C = 0x0c,
    CMOS_STATUS_D = 0x0d,
    CMOS_CENTURY = 0x32,    /* where the ACPI FADT's default points */
    CMOS_STATUS_B_24_HOUR = 0x02,
    CMOS_STATUS_D_VALID_RAM = 0x80,
    CMOS_STATUS_A_DIVIDER_32768 = 0x26,   /* 32.768 kHz base, 1024 Hz rate */
};

static uint8_t to_bcd(unsigned value)
{
    return (uint8_t)(((value / 10) << 4) | (value % 10));
}

void cmos_rtc_init(struct cmos_rtc *rtc)
{
    memset(rtc, 0, sizeof(*rtc));
    pthread_mutex_init(&rtc->lock, NULL);
}

void cmos_rtc_destroy(struct cmos_rtc *rtc)
{
    pthread_mutex_destroy(&rtc->lock);
}

static bool is_clock_register(uint8_t index)
{
    return index <= CMOS_STATUS_D || index == CMOS_CENTURY;
}

static uint8_t read_clock_register(struct cmos_rtc *rtc, uint8_t index)
{
    time_t now = rtc->now != NULL ? rtc->now(rtc->now_opaque) : time(NULL);
    struct tm utc;
    gmtime_r(&now, &utc);
    switch (index) {
    case CMOS_SECONDS: return to_bcd((unsigned)utc.tm_sec);
    case CMOS_MINUTES: return to_bcd((unsigned)utc.tm_min);
    case CMOS_HOURS: return to_bcd((unsigned)utc.tm_hour);
    case CMOS_DAY_OF_WEEK: return to_bcd((unsigned)utc.tm_wday + 1);
    case CMOS_DAY_OF_MONTH: return to_bcd((unsigned)utc.tm_mday);
    case CMOS_MONTH: return to_bcd((unsigned)utc.tm_mon + 1);
    case CMOS_YEAR: return to_bcd((unsigned)(utc.tm_year + 1900) % 100);
    case CMOS_CENTURY: return to_bcd((unsigned)(utc.tm_year + 1900) / 100);
    /* Never "update in progress" (bit 7): the guest would spin on it. */
    case CMOS_STATUS_A: return CMOS_STATUS_A_DIVIDER_32768;
    case CMOS_STATUS_B: return CMOS_STATUS_B_24_HOUR;
    case CMOS_STATUS_C: return 0;   /* no interrupt flags: no alarm, no periodic IRQ 8 */
    case CMOS_STATUS_D: return CMOS_STATUS_D_VALID_RAM;
    default: return 0;              /* the alarm registers: no alarm set */
    }
}

bool cmos_rtc_port_io(struct cmos_rtc *rtc, uint16_t port, bool is_write, uint8_t *data, uint32_t size)
{
    if (port != CMOS_RTC_INDEX_PORT && port != CMOS_RTC_DATA_PORT)
        return false;
    pthread_mutex_lock(&rtc->lock);
    if (port == CMOS_RTC_INDEX_PORT) {
        /* Bit 7 of the index is the NMI mask on real hardware: ignored. */
        if (is_write)
            rtc->index = data[0] & 0x7f;
        else
            memset(data, rtc->index, size);
    } else if (is_write) {
        if (!is_clock_register(rtc->index))
            rtc->ram[rtc->index] = data[0];
    } else {
        uint8_t value = is_clock_register(rtc->index) ? read_clock_register(rtc, rtc->index)
                                                      : rtc->ram[rtc->index];
        memset(data, value, size);
    }
    pthread_mutex_unlock(&rtc->lock);
    return true;
}
