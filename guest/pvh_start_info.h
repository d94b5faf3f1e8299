/*
 * The PVH start-of-day structures (Xen's public header
 * include/xen/interface/hvm/start_info.h, version 1 as in Linux 6.1; the
 * kernel has no uapi copy): what a PVH loader leaves at EBX. ringvm writes
 * them for a vmlinux with a PVH note (vmm/linux_boot.c) and the built-in
 * guest reads them when another VMM boots it through PVH (guest/pvh.c).
 * Freestanding: stdint only.
 */
#ifndef RINGVM_GUEST_PVH_START_INFO_H
#define RINGVM_GUEST_PVH_START_INFO_H

#include <stdint.h>

#define HVM_START_MAGIC_VALUE 0x336ec578U

struct hvm_start_info {
    uint32_t magic;             /* HVM_START_MAGIC_VALUE */
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;      /* version >= 1 */
    uint32_t memmap_entries;
    uint32_t reserved;
};

struct hvm_modlist_entry {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;              /* e820 types: 1 RAM, 2 reserved */
    uint32_t reserved;
};

_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info is 56 bytes");
_Static_assert(sizeof(struct hvm_modlist_entry) == 32, "hvm_modlist_entry is 32 bytes");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "hvm_memmap_table_entry is 24 bytes");

#endif
