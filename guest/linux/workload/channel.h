/*
 * The workload program's channel to ringvm (guest/abi.h) from Linux user
 * space: the boot info page, the stats pages and the MMIO doorbell, mapped
 * through /dev/mem. Present only when the boot info page carries
 * RINGVM_BOOTINFO_MAGIC (the guest runs under ringvm); under QEMU or on a
 * host the program runs without it.
 */
#ifndef RINGVM_LINUX_WORKLOAD_CHANNEL_H
#define RINGVM_LINUX_WORKLOAD_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "guest/abi.h"

/* Ownership: filled by linux_channel_open on the main thread before any
 * workload thread starts, read-only afterwards. The mapped stats slot of
 * vCPU N is written only by workload thread N (plain aligned 64-bit stores,
 * as the built-in guest does); doorbell stores come from any thread, and
 * the VMM attributes each to the vCPU that executed it. */
struct linux_channel {
    bool present;
    uint32_t vcpu_count;        /* from the boot info */
    uint64_t tsc_khz;           /* from the boot info (0 = unknown) */
    uint64_t stats_gpa;
    uint64_t doorbell_gpa;
    void *info_page;            /* the boot info page (read-only mapping) */
    void *stats_pages;          /* RINGVM_STATS_SIZE bytes, read-write */
    void *doorbell_page;        /* one page, read-write, uncached */
    char reason[192];           /* why the channel is absent */
};

/* Maps the boot info page of memory_path (normally "/dev/mem"; tests pass
 * a regular file laid out like guest-physical memory) and, when it carries
 * the magic and this ABI version, the stats and doorbell pages. Returns 0
 * with channel->present set, or -1 with channel->reason saying why the
 * channel is absent (not an error: the program then runs without it). */
int linux_channel_open(struct linux_channel *channel, const char *memory_path);

/* A 64-bit store of argument to doorbell + 8 * command; nothing when absent. */
void linux_channel_send(const struct linux_channel *channel, enum ringvm_command command,
                        uint64_t argument);

/* vCPU's stats slot, or NULL when absent or vcpu >= RINGVM_MAX_VCPUS. */
volatile struct ringvm_vcpu_stats *linux_channel_stats(const struct linux_channel *channel,
                                                       unsigned vcpu);

void linux_channel_close(struct linux_channel *channel);

/* length bytes of guest-physical memory at offset, read-write and shared,
 * through memory_path (/dev/mem, or a test's regular file laid out like
 * guest-physical memory). The mapping, or NULL with the reason. */
void *linux_memory_map(const char *memory_path, uint64_t offset, size_t length, char *reason, size_t reason_size);

#endif
