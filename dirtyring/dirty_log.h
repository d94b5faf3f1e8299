/*
 * Dirty logging facade: the one interface the VMM core and migration use,
 * whatever the mode (dirty ring, bitmap, off).
 *
 * Call order from the VMM core (vmm/vm.c):
 *   dirty_log_create()          right after KVM_CREATE_VM, before any vCPU
 *                               (ring mode enables KVM_CAP_DIRTY_LOG_RING[_ACQ_REL])
 *   dirty_log_attach_vcpu()     after each KVM_CREATE_VCPU (ring mode mmaps
 *                               the ring and stores it in vcpu->dirty_ring)
 *   dirty_log_handle_ring_full()  on the vCPU thread for KVM_EXIT_DIRTY_RING_FULL
 *   dirty_log_destroy()         at VM teardown, after vCPU threads are joined
 *
 * Migration:
 *   dirty_log_start() / dirty_log_stop()   tracking on/off at run time
 *   dirty_log_take()            one iteration's dirty pages (generation swap)
 *   dirty_log_final_sync()      vCPUs paused: drain every ring/bitmap
 *   dirty_log_mark_range()      pages the VMM itself wrote
 */
#ifndef RINGVM_DIRTYRING_DIRTY_LOG_H
#define RINGVM_DIRTYRING_DIRTY_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct guest_memory;
struct vcpu;

enum dirty_log_mode {
    DIRTY_LOG_RING = 0,
    DIRTY_LOG_BITMAP,
    DIRTY_LOG_OFF,
};

#define DIRTY_LOG_DEFAULT_RING_ENTRIES 4096   /* revisited by bench/harvest */
#define DIRTY_LOG_DEFAULT_BITMAP_SYNC_MS 100

struct dirty_log_config {
    enum dirty_log_mode mode;
    uint32_t ring_entries;      /* power of two, 64..65536 */
    unsigned harvesters;        /* 0 = one per NUMA node running vCPUs */
    unsigned bitmap_sync_ms;
};

struct dirty_log;

void dirty_log_config_defaults(struct dirty_log_config *config);
const char *dirty_log_mode_name(enum dirty_log_mode mode);
/* "ring", "bitmap", "off". Returns 0 or -1 with a message in error. */
int dirty_log_mode_parse(const char *text, enum dirty_log_mode *mode, char *error, size_t error_size);

int dirty_log_create(struct dirty_log **out, const struct dirty_log_config *config,
                     int kvm_fd, int vm_fd, struct guest_memory *memory, unsigned vcpu_count);
int dirty_log_attach_vcpu(struct dirty_log *log, struct vcpu *vcpu);
void dirty_log_handle_ring_full(struct dirty_log *log, struct vcpu *vcpu);
void dirty_log_destroy(struct dirty_log *log);

#endif
