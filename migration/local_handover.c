/* The local hand-over's RAM: sent as an fd, adopted in place (see local_handover.h). */
#include "migration/local_handover.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "migration/memfd_transfer.h"
#include "vmm/memory_extents.h"
#include "vmm/vm.h"

int local_handover_parse_address(const char *text, struct mig_address *out, char *error, size_t error_size)
{
    size_t prefix = strlen(LOCAL_HANDOVER_PREFIX);
    if (text == NULL || strncmp(text, LOCAL_HANDOVER_PREFIX, prefix) != 0)
        return 0;
    const char *path = text + prefix;
    struct mig_address parsed;
    memset(&parsed, 0, sizeof(parsed));
    if (*path == '\0') {
        snprintf(error, error_size, "'%s': empty socket path", text);
        return -1;
    }
    if (strlen(path) >= sizeof(parsed.path)) {
        snprintf(error, error_size, "'%s': socket path longer than %zu bytes", text, sizeof(parsed.path) - 1);
        return -1;
    }
    parsed.kind = MIG_ADDRESS_UNIX;
    memcpy(parsed.path, path, strlen(path) + 1);
    *out = parsed;
    return 1;
}

int local_handover_parse_any_address(const char *text, struct mig_address *out, char *error, size_t error_size)
{
    int local = local_handover_parse_address(text, out, error, error_size);
    if (local != 0)
        return local;
    return mig_address_parse(text, out, error, error_size) == 0 ? 0 : -1;
}

int local_handover_send_ram(int socket_fd, const struct vm *vm, char *error, size_t error_size)
{
    if (vm->memory.memfd < 0) {     /* migration_start refuses it first */
        snprintf(error, error_size, "guest RAM is anonymous (--ram anonymous): there is no memfd to hand over");
        return -1;
    }
    return memfd_transfer_send(socket_fd, vm->memory.memfd, vm->memory.size, error, error_size) == 0 ? 0 : -1;
}

/* Faults the pages the source has written (the memfd's data extents) into
 * this process's page tables, so neither the restore nor the guest's first
 * touches pay a host page fault; holes stay holes (populating them would
 * allocate RAM the guest never used). The guest keeps running on the source
 * meanwhile: MADV_POPULATE_WRITE changes no byte. Huge-page RAM is left
 * alone (512 times fewer faults, and SEEK_DATA does not describe it).
 * Best effort, in 64 MiB steps until deadline_ns (CLOCK_MONOTONIC): the
 * source waits for HELLO_ACK no longer than its stall timeout, and what is
 * not populated only costs first-touch faults later. */
#define POPULATE_STEP (64ull << 20)
static uint64_t populate_data_extents(struct guest_memory *memory, uint64_t deadline_ns)
{
    if (memory->hugepages)
        return 0;
    uint64_t populated = 0, offset = 0;
    struct guest_ram ram = guest_memory_ram(memory);
    while (offset < memory->size && vm_now_ns() < deadline_ns) {
        uint64_t data_page, hole_page;
        if (guest_ram_next_data(&ram, offset / RINGVM_PAGE_SIZE, &data_page, &hole_page) != 0 ||
            data_page == hole_page)
            break;      /* no data past offset, or the host cannot say: give up quietly */
        uint64_t start = data_page * RINGVM_PAGE_SIZE, end = hole_page * RINGVM_PAGE_SIZE;
        if (end - start > POPULATE_STEP)
            end = start + POPULATE_STEP;
        if (guest_memory_populate(memory, start, end - start) != 0)
            break;
        populated += end - start;
        offset = end;
    }
    return populated;
}

int local_handover_adopt_ram(struct vm *vm, int socket_fd, unsigned stall_ms, const _Atomic bool *stop,
                             struct local_handover_adoption *adoption, char *error, size_t error_size)
{
    memset(adoption, 0, sizeof(*adoption));
    uint64_t started = vm_now_ns();
    for (;;) {
        int readable = mig_io_poll_readable(socket_fd, 50);
        if (readable < 0) {
            snprintf(error, error_size, "poll(source) for its guest-RAM memfd: %s", strerror(errno));
            return -1;
        }
        if (readable == 1)
            break;
        if (stop != NULL && atomic_load_explicit(stop, memory_order_acquire)) {
            snprintf(error, error_size, "the destination VM is shutting down");
            return -1;
        }
        if (vm_now_ns() - started >= (uint64_t)stall_ms * 1000000u) {
            snprintf(error, error_size, "no guest-RAM memfd from the source within %u ms", stall_ms);
            return -1;
        }
    }
    int memfd = -1;
    if (memfd_transfer_receive(socket_fd, vm->memory.size, &memfd, error, error_size) != 0)
        return -1;
    if (guest_memory_replace_backing(&vm->memory, memfd, error, error_size) != 0)
        return -1;
    uint64_t adopted = vm_now_ns();
    adoption->adopt_ns = adopted - started;
    /* Half the stall timeout, so HELLO_ACK reaches a source waiting for it
     * with that same timeout in time. */
    adoption->populated_bytes = populate_data_extents(&vm->memory, adopted + (uint64_t)stall_ms * 500000u);
    adoption->populate_ns = vm_now_ns() - adopted;
    return 0;
}
