/* The channel to ringvm through /dev/mem; see channel.h. */
#include "guest/linux/workload/channel.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void *channel_map(const char *memory_path, int flags, int protection, uint64_t offset,
                         size_t length, char *reason, size_t reason_size)
{
    int fd = open(memory_path, flags | O_CLOEXEC);
    if (fd < 0) {
        snprintf(reason, reason_size, "cannot open %s: %s", memory_path, strerror(errno));
        return NULL;
    }
    /* A regular file (a test's stand-in for /dev/mem) shorter than the
     * range would map, then SIGBUS on the first access. */
    struct stat status;
    if (fstat(fd, &status) != 0) {
        snprintf(reason, reason_size, "cannot stat %s: %s", memory_path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (S_ISREG(status.st_mode) && (uint64_t)status.st_size < offset + length) {
        snprintf(reason, reason_size, "%s ends before 0x%" PRIx64, memory_path, offset + length);
        close(fd);
        return NULL;
    }
    void *mapping = mmap(NULL, length, protection, MAP_SHARED, fd, (off_t)offset);
    int saved_errno = errno;
    /* The mapping keeps its own reference to the file. */
    close(fd);
    if (mapping == MAP_FAILED) {
        snprintf(reason, reason_size, "cannot map %zu bytes of %s at 0x%" PRIx64 ": %s", length,
                 memory_path, offset, strerror(saved_errno));
        return NULL;
    }
    return mapping;
}

void *linux_memory_map(const char *memory_path, uint64_t offset, size_t length, char *reason, size_t reason_size)
{
    return channel_map(memory_path, O_RDWR, PROT_READ | PROT_WRITE, offset, length, reason, reason_size);
}

int linux_channel_open(struct linux_channel *channel, const char *memory_path)
{
    memset(channel, 0, sizeof(*channel));
    channel->info_page = channel_map(memory_path, O_RDONLY, PROT_READ, RINGVM_BOOTINFO_GPA,
                                     RINGVM_PAGE_SIZE, channel->reason, sizeof(channel->reason));
    if (channel->info_page == NULL)
        return -1;

    const volatile struct ringvm_bootinfo *info = channel->info_page;
    if (info->magic != RINGVM_BOOTINFO_MAGIC) {
        snprintf(channel->reason, sizeof(channel->reason),
                 "no ringvm boot info at 0x%llx of %s (not running under ringvm)",
                 RINGVM_BOOTINFO_GPA, memory_path);
        goto absent;
    }
    if (info->abi_version != RINGVM_ABI_VERSION) {
        snprintf(channel->reason, sizeof(channel->reason),
                 "ringvm boot info has ABI version %" PRIu32 ", this program speaks %d",
                 info->abi_version, RINGVM_ABI_VERSION);
        goto absent;
    }
    channel->vcpu_count = info->vcpu_count;
    channel->tsc_khz = info->tsc_khz;
    channel->stats_gpa = info->stats_gpa;
    channel->doorbell_gpa = info->doorbell_gpa;
    if (channel->stats_gpa == 0 || channel->stats_gpa % RINGVM_PAGE_SIZE != 0 ||
        channel->doorbell_gpa == 0 || channel->doorbell_gpa % RINGVM_PAGE_SIZE != 0) {
        snprintf(channel->reason, sizeof(channel->reason),
                 "ringvm boot info has unusable addresses: stats 0x%" PRIx64 ", doorbell 0x%" PRIx64,
                 channel->stats_gpa, channel->doorbell_gpa);
        goto absent;
    }
    channel->stats_pages = channel_map(memory_path, O_RDWR, PROT_READ | PROT_WRITE, channel->stats_gpa,
                                       RINGVM_STATS_SIZE, channel->reason, sizeof(channel->reason));
    if (channel->stats_pages == NULL)
        goto absent;
    /* O_SYNC makes the kernel map the doorbell uncached (MMIO). */
    channel->doorbell_page = channel_map(memory_path, O_RDWR | O_SYNC, PROT_READ | PROT_WRITE,
                                         channel->doorbell_gpa, RINGVM_PAGE_SIZE, channel->reason,
                                         sizeof(channel->reason));
    if (channel->doorbell_page == NULL)
        goto absent;
    channel->present = true;
    return 0;

absent:
    {
        char reason[sizeof(channel->reason)];
        memcpy(reason, channel->reason, sizeof(reason));
        linux_channel_close(channel);
        memcpy(channel->reason, reason, sizeof(reason));
    }
    return -1;
}

void linux_channel_send(const struct linux_channel *channel, enum ringvm_command command,
                        uint64_t argument)
{
    if (!channel->present || (unsigned)command >= RINGVM_CMD_COUNT)
        return;
    volatile uint64_t *bell = (volatile uint64_t *)channel->doorbell_page + command;
    *bell = argument;
}

volatile struct ringvm_vcpu_stats *linux_channel_stats(const struct linux_channel *channel,
                                                       unsigned vcpu)
{
    if (!channel->present || vcpu >= RINGVM_MAX_VCPUS)
        return NULL;
    return (volatile struct ringvm_vcpu_stats *)((uint8_t *)channel->stats_pages +
                                                 (size_t)RINGVM_STATS_SLOT_SIZE * vcpu);
}

void linux_channel_close(struct linux_channel *channel)
{
    if (channel->info_page != NULL)
        munmap(channel->info_page, RINGVM_PAGE_SIZE);
    if (channel->stats_pages != NULL)
        munmap(channel->stats_pages, RINGVM_STATS_SIZE);
    if (channel->doorbell_page != NULL)
        munmap(channel->doorbell_page, RINGVM_PAGE_SIZE);
    memset(channel, 0, sizeof(*channel));
}
