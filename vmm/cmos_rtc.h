/*
 * The MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data),
 * as far as a Linux guest reads it: x86 Linux reads the wall clock from the
 * CMOS at boot (arch/x86/kernel/rtc.c, mach_get_cmos_time) on every kernel
 * configuration, so answering 0xff would start the guest in the year 2165.
 *
 * Read-only clock: the time registers report the host's UTC time of the
 * read, in BCD and 24-hour mode (status B = 0x02), never "update in
 * progress". Writes to the time registers and to status A/B are accepted and
 * ignored (the guest cannot set the host's clock); the other 114 bytes of
 * CMOS RAM read back what was written.
 *
 * Ownership: one per VM, called from any vCPU thread; the index register and
 * the RAM are under `lock` (port 0x70 then 0x71 from two vCPUs would race
 * on a real chip too, but must not tear our state).
 */
#ifndef RINGVM_VMM_CMOS_RTC_H
#define RINGVM_VMM_CMOS_RTC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define CMOS_RTC_INDEX_PORT 0x70
#define CMOS_RTC_DATA_PORT  0x71

struct cmos_rtc {
    pthread_mutex_t lock;
    uint8_t index;          /* last index written to 0x70 (low 7 bits) */
    uint8_t ram[128];
    /* Source of the wall clock; NULL = time(). Tests pin the time. */
    time_t (*now)(void *opaque);
    void *now_opaque;
};

void cmos_rtc_init(struct cmos_rtc *rtc);
void cmos_rtc_destroy(struct cmos_rtc *rtc);
/* Port I/O on 0x70/0x71; returns false for any other port. `size` bytes at
 * `data` (reads fill every byte). */
bool cmos_rtc_port_io(struct cmos_rtc *rtc, uint16_t port, bool is_write, uint8_t *data, uint32_t size);

#endif
