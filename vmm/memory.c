/*
 * Guest RAM: a shareable file (vmm/ram_file.h) mapped MAP_SHARED (so a
 * local migration can hand the fd over later), or with --ram anonymous
 * private anonymous memory, exposed to KVM as one memslot, or two when RAM
 * exceeds 3 GiB: the 3-4 GiB hole keeps the doorbell and, on VMX hosts, the
 * APIC access page free of RAM.
 */
#include "vmm/memory.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/magic.h>

#include "guest/abi.h"
#include "vmm/ram_file.h"

bool guest_memory_thp_policy_grants(const char *mode)
{
    return strcmp(mode, "advise") == 0 || strcmp(mode, "madvise") == 0 || strcmp(mode, "always") == 0 ||
           strcmp(mode, "within_size") == 0 || strcmp(mode, "force") == 0;
}

static void layout_slots(struct guest_memory *memory, bool split)
{
    uint64_t low = memory->size < RINGVM_LOW_RAM_END ? memory->size : RINGVM_LOW_RAM_END;
    memory->slots[0] = (struct guest_memory_slot){ .slot = 0, .gpa = 0, .size = low, .ram_offset = 0 };
    memory->slot_count = 1;
    if (memory->size > low) {
        memory->slots[1] = (struct guest_memory_slot){
            .slot = 1, .gpa = RINGVM_HIGH_RAM_BASE, .size = memory->size - low, .ram_offset = low,
        };
        memory->slot_count = 2;
    }
    /* KVM memslots: max(128 MiB, RAM / 64) rounded up to 2 MiB (huge page
     * backing keeps every piece aligned); a region's last piece takes the
     * remainder. */
    uint64_t piece = (memory->size / 64 + (2ull << 20) - 1) & ~((2ull << 20) - 1);
    if (piece < GUEST_MEMORY_MIN_KVM_SLOT_BYTES)
        piece = GUEST_MEMORY_MIN_KVM_SLOT_BYTES;
    memory->kvm_slot_count = 0;
    for (unsigned r = 0; r < memory->slot_count; r++) {
        const struct guest_memory_slot *region = &memory->slots[r];
        for (uint64_t done = 0; done < region->size;) {
            uint64_t size = split && region->size - done > piece ? piece : region->size - done;
            unsigned id = memory->kvm_slot_count++;
            memory->kvm_slots[id] = (struct guest_memory_slot){
                .slot = id, .gpa = region->gpa + done, .size = size, .ram_offset = region->ram_offset + done,
            };
            done += size;
        }
    }
}

static int bind_to_node(struct guest_memory *memory, int node)
{
    if (numa_available() < 0) {
        fprintf(stderr, "ringvm: --numa-node %d: NUMA is not available on this host\n", node);
        return -EINVAL;
    }
    if (node > numa_max_node()) {
        fprintf(stderr, "ringvm: --numa-node %d: this host has nodes 0..%d\n", node, numa_max_node());
        return -EINVAL;
    }
    struct bitmask *nodes = numa_allocate_nodemask();
    if (nodes == NULL) {
        fprintf(stderr, "ringvm: --numa-node %d: out of memory\n", node);
        return -ENOMEM;
    }
    numa_bitmask_setbit(nodes, (unsigned)node);
    long result = mbind(memory->host, memory->size, MPOL_BIND, nodes->maskp, nodes->size + 1, 0);
    int saved = errno;
    numa_free_nodemask(nodes);
    if (result != 0) {
        fprintf(stderr, "ringvm: mbind(guest RAM, node %d): %s\n", node, strerror(saved));
        return -saved;
    }
    return 0;
}

/* What failed when guest RAM could not be sized or mapped; on huge pages
 * the likely reason, the pool, with the numbers. */
static void report_sizing_failure(const char *call, uint64_t size, bool hugepages, int error)
{
    if (hugepages)
        fprintf(stderr, "ringvm: %s(guest RAM, %" PRIu64 " bytes, 2M huge pages): %s (needs %" PRIu64 " free huge "
                "pages, %" PRIu64 " free: reserve them in /proc/sys/vm/nr_hugepages)\n", call, size, strerror(error),
                size >> 21, guest_memory_free_huge_pages());
    else
        fprintf(stderr, "ringvm: %s(guest RAM, %" PRIu64 " bytes): %s\n", call, size, strerror(error));
}

/* Transparent huge pages on the mapping: where the host grants them
 * (shmem_enabled advise or always), every first access through the VMM's
 * mapping costs one fault per 2 MiB instead of 512, and on hosts whose own
 * page tables are shadowed by a hypervisor (PVM) that fault is the
 * expensive part of a migration's bulk pass (docs/benchmarks.md,
 * bench/ram-backing). Best effort: EINVAL means a kernel without THP. */
static bool advise_huge_pages(void *host, uint64_t size)
{
    return madvise(host, size, MADV_HUGEPAGE) == 0;
}

/* Maps memory->memfd (size bytes, already sized and sealed; -1: anonymous
 * RAM) and finishes the set-up both creation and adoption share: NUMA
 * binding, prealloc, the memslot layout. On failure the memfd is closed. */
static int map_guest_ram(struct guest_memory *memory, uint64_t size, const struct guest_memory_options *options)
{
    void *host = memory->memfd >= 0 ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory->memfd, 0)
                                    : mmap(NULL, size, PROT_READ | PROT_WRITE,
                                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (host == MAP_FAILED) {
        int saved = errno;
        report_sizing_failure("mmap", size, options->hugepages, saved);
        if (memory->memfd >= 0)
            close(memory->memfd);
        memory->memfd = -1;
        return -saved;
    }
    memory->host = host;
    memory->size = size;
    memory->hugepages = options->hugepages;
    /* Guest RAM is large and sparse: keep it out of core dumps. */
    (void)madvise(host, size, MADV_DONTDUMP);
    /* Anonymous RAM is private: a fork (a test harness spawning a helper)
     * would share it copy-on-write, and every guest write until the
     * child's exec would copy a page, under the vCPUs. Not inherited at
     * all, as QEMU does with its RAM. (A memfd is shared, not copied.) */
    if (memory->memfd < 0 && madvise(host, size, MADV_DONTFORK) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: madvise(anonymous guest RAM, %" PRIu64 " bytes, DONTFORK): %s\n", size,
                strerror(saved));
        guest_memory_destroy(memory);
        return -saved;
    }
    if (!options->no_thp && !options->hugepages)
        memory->thp_advised = advise_huge_pages(host, size);
    /* --no-thp means 4 KiB pages: where the host's policy is "always" (an
     * emulated machine's kernel, some distributions) not advising is not
     * enough, the mapping must say no. Best effort, as the advice. */
    if (options->no_thp && !options->hugepages)
        (void)madvise(host, size, MADV_NOHUGEPAGE);
    if (options->numa_node >= 0) {
        int result = bind_to_node(memory, options->numa_node);
        if (result != 0) {
            guest_memory_destroy(memory);
            return result;
        }
        memory->numa_node = options->numa_node;
    }
    if (options->prealloc) {
        int result = guest_memory_populate(memory, 0, size);
        if (result != 0) {
            guest_memory_destroy(memory);
            return result;
        }
    }
    layout_slots(memory, options->split_kvm_slots);
    return 0;
}

int guest_memory_adopt(struct guest_memory *memory, int memfd, uint64_t size,
                       const struct guest_memory_options *options)
{
    memset(memory, 0, sizeof(*memory));
    memory->memfd = memfd;
    memory->numa_node = -1;
    memory->file_kind = ram_file_identify(memfd);
    struct stat status;
    long long held = fstat(memfd, &status) == 0 ? (long long)status.st_size : -1;
    if (held < 0 || (uint64_t)held != size) {
        fprintf(stderr, "ringvm: adopting guest RAM: the memfd holds %lld bytes, expected %" PRIu64 "\n", held,
                size);
        close(memfd);
        memory->memfd = -1;
        return -EINVAL;
    }
    return map_guest_ram(memory, size, options);
}

int guest_memory_create(struct guest_memory *memory, uint64_t size,
                        const struct guest_memory_options *options)
{
    memset(memory, 0, sizeof(*memory));
    memory->memfd = -1;
    memory->numa_node = -1;

    uint64_t granule = options->hugepages ? (2ULL << 20) : RINGVM_PAGE_SIZE;
    if (size < RINGVM_WORKLOAD_BASE || size % granule != 0) {
        fprintf(stderr, "ringvm: --memory %" PRIu64 ": must be at least 16M and a multiple of %s\n", size,
                options->hugepages ? "2M with --hugepages" : "4K");
        return -EINVAL;
    }
    if (options->anonymous) {
        if (options->hugepages) {
            fprintf(stderr, "ringvm: --ram anonymous and --hugepages: 2M huge pages are a hugetlbfs memfd; "
                    "anonymous RAM gets transparent huge pages instead\n");
            return -EINVAL;
        }
        return map_guest_ram(memory, size, options);
    }
    /* Huge pages where a memfd gets none: ringvm's own tmpfs instance
     * (vmm/ram_file.h). Not where the policy denies every mount, nor
     * where the kernel has no THP. */
    char policy[32];
    guest_memory_thp_host(false, policy, sizeof(policy));
    bool try_tmpfs = !options->no_thp && !guest_memory_thp_policy_grants(policy) && strcmp(policy, "deny") != 0 &&
                     strcmp(policy, "unavailable") != 0;
    const char *failed_call = "";
    int fd = ram_file_create(size, options->hugepages, try_tmpfs, &memory->file_kind, &memory->tmpfs_errno,
                             &failed_call);
    if (fd < 0) {
        if (strcmp(failed_call, "ftruncate") == 0)
            report_sizing_failure("ftruncate", size, options->hugepages, -fd);
        else
            fprintf(stderr, "ringvm: %s(guest RAM%s): %s\n", failed_call, options->hugepages ? ", 2M huge pages" : "",
                    strerror(-fd));
        return fd;
    }
    memory->memfd = fd;
    return map_guest_ram(memory, size, options);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int guest_memory_populate(struct guest_memory *memory, uint64_t ram_offset, uint64_t length)
{
    if (ram_offset > memory->size || length > memory->size - ram_offset)
        return -EINVAL;
    if (madvise(memory->host + ram_offset, length, MADV_POPULATE_WRITE) == 0)
        return 0;
    int saved = errno;
    if (saved != EINVAL) {
        fprintf(stderr, "ringvm: madvise(guest RAM +0x%" PRIx64 ", %" PRIu64 " bytes, POPULATE_WRITE): %s\n",
                ram_offset, length, strerror(saved));
        return -saved;
    }
    /* Kernels before 5.14: touch one byte per page (RAM is still zero, so
     * an atomic add of 0 populates it without changing anything the
     * guest may already have written). */
    for (uint64_t offset = 0; offset < length; offset += RINGVM_PAGE_SIZE)
        __atomic_fetch_add(memory->host + ram_offset + offset, 0, __ATOMIC_RELAXED);
    return 0;
}

void guest_memory_thp_host(bool anonymous, char *out, size_t size)
{
    snprintf(out, size, "unavailable");
    FILE *file = fopen(anonymous ? "/sys/kernel/mm/transparent_hugepage/enabled"
                                 : "/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");
    if (file == NULL)
        return;
    char line[160];
    if (fgets(line, sizeof(line), file) != NULL) {
        char *open = strchr(line, '['), *close = open != NULL ? strchr(open, ']') : NULL;
        if (open != NULL && close != NULL && close > open + 1)
            snprintf(out, size, "%.*s", (int)(close - open - 1), open + 1);
    }
    fclose(file);
}

/* Operators compare guests across VMMs: a memfd on 4 KiB pages runs a
 * guest that writes its memory at 0.82-0.84x the rate of QEMU's anonymous
 * huge-page RAM on the same host (docs/benchmarks-vs-qemu.md, the issue-15
 * tracking cells), and nothing else would tell them why. Only a memfd gets
 * here: ringvm's own tmpfs (vmm/ram_file.h) is tried first. */
bool guest_memory_small_pages_note(const struct guest_memory *memory, const char *host_mode, char *out,
                                   size_t size)
{
    if (memory->file_kind != RAM_FILE_MEMFD || !memory->thp_advised || guest_memory_thp_policy_grants(host_mode))
        return false;
    char tmpfs[160] = "";
    if (memory->tmpfs_errno != 0)
        snprintf(tmpfs, sizeof(tmpfs), "; ringvm's own tmpfs with huge pages: %s%s", strerror(memory->tmpfs_errno),
                 memory->tmpfs_errno == EPERM ? " (it needs CAP_SYS_ADMIN)" : "");
    snprintf(out, size, "guest RAM is a memfd on 4 KiB pages (shmem_enabled '%s' grants no huge pages%s): a guest "
             "writing its memory runs ~15 %% slower than on huge pages. For them: shmem_enabled 'advise' (root), "
             "--hugepages, or --ram anonymous (no local hand-over); --no-thp silences this "
             "(docs/benchmarks-vs-qemu.md)", host_mode, tmpfs);
    return true;
}

void guest_memory_thp_policy(const struct guest_memory *memory, char *out, size_t size)
{
    if (memory->file_kind == RAM_FILE_TMPFS)
        snprintf(out, size, "advise");      /* the instance's own huge= */
    else if (memory->file_kind == RAM_FILE_HUGETLBFS)
        snprintf(out, size, "hugetlbfs");
    else
        guest_memory_thp_host(guest_memory_anonymous(memory), out, size);
}

bool guest_memory_thp_possible(const struct guest_memory *memory)
{
    char policy[32];
    guest_memory_thp_policy(memory, policy, sizeof(policy));
    return guest_memory_thp_policy_grants(policy);
}

void guest_memory_forgo_thp(struct guest_memory *memory)
{
    if (memory->thp_advised && madvise(memory->host, memory->size, MADV_NOHUGEPAGE) == 0)
        memory->thp_advised = false;
}

uint64_t guest_memory_free_huge_pages(void)
{
    FILE *file = fopen("/proc/meminfo", "r");
    if (file == NULL)
        return 0;
    char line[128];
    uint64_t pages = 0;
    while (fgets(line, sizeof(line), file) != NULL)
        if (sscanf(line, "HugePages_Free: %" SCNu64, &pages) == 1)
            break;
    fclose(file);
    return pages;
}

int guest_memory_replace_backing(struct guest_memory *memory, int memfd, char *error, size_t error_size)
{
    struct stat status;
    struct statfs filesystem;
    if (fstat(memfd, &status) != 0 || fstatfs(memfd, &filesystem) != 0) {
        int saved = errno;
        snprintf(error, error_size, "fstat(received guest RAM): %s", strerror(saved));
        close(memfd);
        return -saved;
    }
    if ((uint64_t)status.st_size != memory->size) {
        snprintf(error, error_size, "the received guest RAM holds %lld bytes, this VM has %" PRIu64,
                 (long long)status.st_size, memory->size);
        close(memfd);
        return -EINVAL;
    }
    bool huge = (unsigned long)filesystem.f_type == (unsigned long)HUGETLBFS_MAGIC;
    if (huge != memory->hugepages) {
        snprintf(error, error_size, "the source's guest RAM is %s huge pages, this ringvm's is %s: start it %s "
                 "--hugepages", huge ? "on 2 MiB" : "not on", memory->hugepages ? "on them" : "not",
                 huge ? "with" : "without");
        close(memfd);
        return -EINVAL;
    }
    /* The new file over the old one at the same address: no window in
     * which the range is unmapped, and KVM's memslots (which name this
     * address range, not the file) see the new pages on their next fault
     * (the MMU notifier drops whatever they had mapped; the vCPUs never
     * ran, so that is nothing). */
    void *host = mmap(memory->host, memory->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, 0);
    if (host == MAP_FAILED) {
        int saved = errno;
        snprintf(error, error_size, "mmap(received guest RAM, %" PRIu64 " bytes, MAP_FIXED over the old): %s",
                 memory->size, strerror(saved));
        close(memfd);
        return -EFAULT;
    }
    (void)madvise(host, memory->size, MADV_DONTDUMP);
    if (memory->thp_advised)
        (void)advise_huge_pages(host, memory->size);   /* the new mapping lost the old one's advice */
    enum ram_file_kind kind = ram_file_identify(memfd);
    if (memory->memfd < 0) {
        /* Anonymous RAM: its pages went with the old mapping. */
        memory->memfd = memfd;
        memory->file_kind = kind;
        return 0;
    }
    /* The old memfd's number now names the new file; the old file (and
     * its pages) goes with its last reference. */
    if (dup3(memfd, memory->memfd, O_CLOEXEC) < 0) {
        int saved = errno;
        snprintf(error, error_size, "dup3(received guest RAM over fd %d): %s", memory->memfd, strerror(saved));
        close(memfd);
        return -EFAULT;
    }
    close(memfd);
    memory->file_kind = kind;
    return 0;
}

void guest_memory_destroy(struct guest_memory *memory)
{
    if (memory->host != NULL)
        munmap(memory->host, memory->size);
    if (memory->memfd >= 0)
        close(memory->memfd);
    memory->host = NULL;
    memory->memfd = -1;
}

const struct guest_memory_slot *guest_memory_kvm_slots(const struct guest_memory *memory, unsigned *count)
{
    if (memory->kvm_slot_count == 0) {
        *count = memory->slot_count;
        return memory->slots;
    }
    *count = memory->kvm_slot_count;
    return memory->kvm_slots;
}

int guest_memory_set_kvm_slot_dirty_logging(const struct guest_memory *memory, int vm_fd, unsigned index,
                                            bool log_dirty)
{
    unsigned count;
    const struct guest_memory_slot *slots = guest_memory_kvm_slots(memory, &count);
    if (index >= count)
        return -EINVAL;
    const struct guest_memory_slot *slot = &slots[index];
    struct kvm_userspace_memory_region region = {
        .slot = slot->slot,
        .flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        .guest_phys_addr = slot->gpa,
        .memory_size = slot->size,
        .userspace_addr = (uint64_t)(uintptr_t)(memory->host + slot->ram_offset),
    };
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) != 0) {
        int saved = errno;
        fprintf(stderr, "ringvm: KVM_SET_USER_MEMORY_REGION(slot %u, gpa 0x%" PRIx64 ", %" PRIu64
                " bytes%s): %s\n", slot->slot, slot->gpa, slot->size,
                log_dirty ? ", log dirty pages" : "", strerror(saved));
        return -saved;
    }
    return 0;
}

int guest_memory_set_dirty_logging(const struct guest_memory *memory, int vm_fd, bool log_dirty)
{
    unsigned count;
    guest_memory_kvm_slots(memory, &count);
    for (unsigned i = 0; i < count; i++) {
        int rc = guest_memory_set_kvm_slot_dirty_logging(memory, vm_fd, i, log_dirty);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int guest_memory_register(const struct guest_memory *memory, int vm_fd, bool log_dirty)
{
    return guest_memory_set_dirty_logging(memory, vm_fd, log_dirty);
}

void *guest_memory_gpa_to_host(const struct guest_memory *memory, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < memory->slot_count; i++) {
        const struct guest_memory_slot *slot = &memory->slots[i];
        if (gpa >= slot->gpa && gpa - slot->gpa <= slot->size && len <= slot->size - (gpa - slot->gpa))
            return memory->host + slot->ram_offset + (gpa - slot->gpa);
    }
    return NULL;
}

uint64_t guest_memory_gpa_to_offset(const struct guest_memory *memory, uint64_t gpa)
{
    for (unsigned i = 0; i < memory->slot_count; i++) {
        const struct guest_memory_slot *slot = &memory->slots[i];
        if (gpa >= slot->gpa && gpa - slot->gpa < slot->size)
            return slot->ram_offset + (gpa - slot->gpa);
    }
    return UINT64_MAX;
}

uint64_t guest_memory_offset_to_gpa(const struct guest_memory *memory, uint64_t ram_offset)
{
    for (unsigned i = 0; i < memory->slot_count; i++) {
        const struct guest_memory_slot *slot = &memory->slots[i];
        if (ram_offset >= slot->ram_offset && ram_offset - slot->ram_offset < slot->size)
            return slot->gpa + (ram_offset - slot->ram_offset);
    }
    return UINT64_MAX;
}

const struct guest_memory_slot *guest_memory_slot_by_id(const struct guest_memory *memory, uint32_t slot)
{
    unsigned count;
    const struct guest_memory_slot *slots = guest_memory_kvm_slots(memory, &count);
    for (unsigned i = 0; i < count; i++)
        if (slots[i].slot == slot)
            return &slots[i];
    return NULL;
}
