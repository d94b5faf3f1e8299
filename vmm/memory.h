/*
 * Guest RAM: one shareable file (a memfd, or ringvm's own tmpfs file where
 * a memfd would get no huge pages: vmm/ram_file.h), mapped MAP_SHARED once
 * into the VMM (or, with
 * --ram anonymous, one private anonymous mapping: no file, so nothing to
 * hand to another process, but transparent huge pages wherever the host
 * gives them to anonymous memory, as QEMU's default RAM gets), laid out as one
 * or two regions (`slots`: RAM above 3 GiB continues at 4 GiB so the 32-bit
 * MMIO hole, the doorbell and the LAPIC page stay free). Each region is one
 * KVM memslot, or several of kvm_slot_bytes each (`kvm_slots`), so dirty
 * logging can be turned on piece by piece (dirtyring's late protection: a
 * migration enables a memslot just before its first pass reaches it). The
 * regions are what the boot code, the e820 map and the migration HELLO see;
 * only KVM registration and dirty tracking see the KVM memslots.
 *
 * "RAM offset" = byte offset into the memfd (the mapping). Page index = RAM offset / 4096.
 * The dirty set and the migration stream speak RAM offsets; only KVM and the
 * guest speak guest-physical addresses.
 *
 * Ownership: created and destroyed by the thread that owns the struct vm;
 * the layout is immutable after creation. The memslot flags (dirty logging)
 * are changed only through guest_memory_set_dirty_logging, which callers
 * serialize (dirtyring does, under its control lock).
 */
#ifndef RINGVM_VMM_MEMORY_H
#define RINGVM_VMM_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/ram_file.h"

#define GUEST_MEMORY_MAX_SLOTS 2
/* KVM memslots: at most 64 per region plus one for a remainder each. */
#define GUEST_MEMORY_MAX_KVM_SLOTS 132
#define GUEST_MEMORY_MIN_KVM_SLOT_BYTES (128ull << 20)

struct guest_memory_slot {
    uint32_t slot;          /* KVM memslot id */
    uint64_t gpa;           /* guest-physical start */
    uint64_t size;          /* bytes */
    uint64_t ram_offset;    /* offset into the memfd / host mapping */
};

struct guest_memory {
    int memfd;              /* the RAM's file (vmm/ram_file.h), -1: anonymous RAM */
    enum ram_file_kind file_kind; /* what memfd is: memfd, hugetlbfs, tmpfs; RAM_FILE_NONE when anonymous */
    int tmpfs_errno;        /* why ringvm's own tmpfs was not made (0: made, or not tried) */
    uint8_t *host;          /* MAP_SHARED mapping of the whole memfd, or the anonymous mapping */
    uint64_t size;          /* bytes of RAM */
    bool hugepages;
    bool thp_advised;       /* MADV_HUGEPAGE set on the mapping (granted or not by the host);
                               the VM's owner thread or the incoming thread (post-copy) */
    int numa_node;          /* -1 = not bound */
    unsigned slot_count;
    struct guest_memory_slot slots[GUEST_MEMORY_MAX_SLOTS];
    /* The KVM memslots, ids 0..kvm_slot_count-1 in RAM order; a plain copy
     * of slots[] unless the options asked for split regions. A struct
     * built by hand (tests) may leave kvm_slot_count 0: then slots[] are
     * the KVM memslots (guest_memory_kvm_slots). */
    unsigned kvm_slot_count;
    struct guest_memory_slot kvm_slots[GUEST_MEMORY_MAX_KVM_SLOTS];
};

struct guest_memory_options {
    bool hugepages;         /* back with 2 MiB huge pages (MFD_HUGETLB) */
    /* --ram anonymous: private anonymous memory instead of a memfd. The
     * host's THP policy for it is transparent_hugepage/enabled (madvise on
     * Debian), not shmem_enabled (never): so anonymous RAM gets huge pages
     * where a memfd does not (ringvm's own tmpfs file does, where it can
     * be made: vmm/ram_file.h), and a bulk pass into cold RAM faults 512
     * times less (bench/ram-backing). What it cannot do: a local hand-over
     * (there is no file to pass), --hugepages. */
    bool anonymous;
    int numa_node;          /* bind with libnuma; -1 = no binding */
    bool prealloc;          /* populate every page at creation (no first-touch faults later) */
    bool split_kvm_slots;   /* regions as KVM memslots of max(128 MiB, RAM / 64) each */
    /* --no-thp: no MADV_HUGEPAGE on the mapping. By default guest RAM asks
     * for transparent huge pages, as QEMU's does; the host grants them on
     * a memfd only when /sys/kernel/mm/transparent_hugepage/shmem_enabled
     * is advise, always or within_size (guest_memory_thp_host), which is
     * why ringvm's own tmpfs file is made where it is not (vmm/ram_file.h). */
    bool no_thp;
};

/* Creates the memfd (or the anonymous mapping) and the mapping. Returns 0 or -errno, with a message
 * naming what failed printed to stderr. */
int guest_memory_create(struct guest_memory *memory, uint64_t size,
                        const struct guest_memory_options *options);
/* Takes over guest RAM another ringvm created (its memfd, received in a
 * local hand-over and checked with memfd_transfer_check): maps it and lays
 * out the same memslots. Owns memfd from the call on (closed on failure).
 * 0 or -errno, message on stderr. */
int guest_memory_adopt(struct guest_memory *memory, int memfd, uint64_t size,
                       const struct guest_memory_options *options);
/* Makes memfd (checked with memfd_transfer_check, exactly memory->size
 * bytes) the backing of RAM that already exists and whose memslots are
 * registered: the new file is mapped over the old mapping at the same
 * address (MAP_FIXED) and takes over the old fd's number (dup3), so
 * memory->host, memory->memfd, the memslots (KVM follows the mapping
 * through its MMU notifier) and every pointer into RAM stay valid; the
 * old RAM is freed. Only for a VM whose vCPUs never ran (a local
 * hand-over's destination, migration/local_handover.h). Owns memfd from
 * the call on (closed in every case). A hugetlbfs memfd needs RAM created
 * with hugepages and the reverse. Anonymous RAM becomes memfd RAM. 0 or -errno with the reason in error;
 * on failure the old RAM is left as it was, except after a failed
 * MAP_FIXED (then -EFAULT: the VM must not run). */
int guest_memory_replace_backing(struct guest_memory *memory, int memfd, char *error, size_t error_size);
void guest_memory_destroy(struct guest_memory *memory);
/* Faults in [ram_offset, ram_offset + length) writable now (MADV_POPULATE_WRITE),
 * so neither the guest nor an incoming migration pays first-touch faults. */
int guest_memory_populate(struct guest_memory *memory, uint64_t ram_offset, uint64_t length);

/* The host's transparent huge page policy for memfd RAM (anonymous false):
 * the selected word of /sys/kernel/mm/transparent_hugepage/shmem_enabled
 * ("never", "advise", "always", "within_size", "deny", "force"); for
 * anonymous RAM, of transparent_hugepage/enabled ("always", "madvise",
 * "never"); "unavailable" when the kernel has no THP. Written to out (at
 * least 16 bytes). */
void guest_memory_thp_host(bool anonymous, char *out, size_t size);
/* Whether a policy word (shmem_enabled's, enabled's, or
 * guest_memory_thp_policy's) gives MADV_HUGEPAGE mappings huge pages:
 * advise, madvise, always, within_size, force. */
bool guest_memory_thp_policy_grants(const char *mode);
/* The start-up note for guest RAM the host keeps on 4 KiB pages although
 * ringvm asked for huge pages: a memfd (where ringvm's own tmpfs could not
 * be made, vmm/ram_file.h) with MADV_HUGEPAGE that shmem_enabled host_mode
 * ("never", "deny", "unavailable") does not grant; the tmpfs's failure is
 * named. Writes the one line (no "ringvm: " prefix, no newline) to out and
 * returns true; false, out untouched, when huge pages are granted, not
 * asked for (--no-thp), tmpfs, hugetlbfs (--hugepages) or anonymous RAM. */
bool guest_memory_small_pages_note(const struct guest_memory *memory, const char *host_mode, char *out,
                                   size_t size);
/* The policy that decides whether this RAM's advised mapping gets huge
 * pages: "advise" for ringvm's own tmpfs (its huge= option), "hugetlbfs"
 * for --hugepages, else guest_memory_thp_host's word for its kind. */
void guest_memory_thp_policy(const struct guest_memory *memory, char *out, size_t size);
/* Whether that policy grants an advised mapping huge pages. */
bool guest_memory_thp_possible(const struct guest_memory *memory);
/* Free 2 MiB huge pages (HugePages_Free in /proc/meminfo; root reserves
 * them in /proc/sys/vm/nr_hugepages), 0 when unknown. */
uint64_t guest_memory_free_huge_pages(void);
/* No more transparent huge pages on this mapping (MADV_NOHUGEPAGE): a
 * post-copy destination, before it discards pages, so that what it places
 * later stays on 4 KiB pages and khugepaged leaves its RAM alone, as
 * QEMU's post-copy destination does. Pages already huge stay huge (a
 * discard inside one splits it; guest_memory_punch_hole checks). */
void guest_memory_forgo_thp(struct guest_memory *memory);

/* Discards and data extents: vmm/memory_extents.h. */

/* KVM_SET_USER_MEMORY_REGION for every KVM memslot, with or without
 * KVM_MEM_LOG_DIRTY_PAGES. */
int guest_memory_register(const struct guest_memory *memory, int vm_fd, bool log_dirty);
int guest_memory_set_dirty_logging(const struct guest_memory *memory, int vm_fd, bool log_dirty);
/* The same for one KVM memslot (index into guest_memory_kvm_slots). */
int guest_memory_set_kvm_slot_dirty_logging(const struct guest_memory *memory, int vm_fd, unsigned index,
                                            bool log_dirty);
/* The KVM memslots and their number (see kvm_slots). */
const struct guest_memory_slot *guest_memory_kvm_slots(const struct guest_memory *memory, unsigned *count);

/* Host pointer for [gpa, gpa+len) if the range lies inside one slot, else NULL. */
void *guest_memory_gpa_to_host(const struct guest_memory *memory, uint64_t gpa, uint64_t len);
/* RAM offset of gpa, or UINT64_MAX if gpa is not RAM. */
uint64_t guest_memory_gpa_to_offset(const struct guest_memory *memory, uint64_t gpa);
/* Guest-physical address of a RAM offset (offset < size). */
uint64_t guest_memory_offset_to_gpa(const struct guest_memory *memory, uint64_t ram_offset);
/* KVM memslot lookup by id (dirty ring entries carry (slot, offset)). */
const struct guest_memory_slot *guest_memory_slot_by_id(const struct guest_memory *memory,
                                                        uint32_t slot);

/* Private anonymous RAM (--ram anonymous): no memfd behind the mapping. */
static inline bool guest_memory_anonymous(const struct guest_memory *memory)
{
    return memory->memfd < 0;
}

static inline uint64_t guest_memory_pages(const struct guest_memory *memory)
{
    return memory->size / 4096;
}

#endif
