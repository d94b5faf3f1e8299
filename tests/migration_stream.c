/* See migration_stream.h. */
#include "tests/migration_stream.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "migration/machine_state.h"
#include "migration/sender.h"

struct mig_hello migration_stream_hello(void)
{
    struct mig_hello h;
    memset(&h, 0, sizeof(h));
    h.version = MIG_PROTOCOL_VERSION;
    h.page_size = MIG_PAGE_SIZE;
    h.memory_bytes = MIGRATION_STREAM_RAM_BYTES;
    h.vcpu_count = MIGRATION_STREAM_VCPUS;
    h.slot_count = 1;
    h.slots[0].gpa = 0;
    h.slots[0].size = MIGRATION_STREAM_RAM_BYTES;
    h.state_format = MIG_STATE_FORMAT;
    h.features = MIG_FEATURE_ZERO_PAGES;
    h.abi_version = 2;
    return h;
}

void migration_stream_put(struct migration_stream *s, const void *bytes, size_t length)
{
    if (s->length + length > s->capacity) {
        size_t capacity = (s->length + length) * 2;
        uint8_t *grown = realloc(s->data, capacity);
        cr_assert_not_null(grown, "growing a test stream to %zu bytes", capacity);
        s->data = grown;
        s->capacity = capacity;
    }
    if (length > 0)
        memcpy(s->data + s->length, bytes, length);
    s->length += length;
}

void migration_stream_mark_frame(struct migration_stream *s)
{
    cr_assert_lt(s->frame_count, MIGRATION_STREAM_MAX_FRAMES, "test stream: too many frames");
    s->frame_start[s->frame_count++] = s->length;
}

void migration_stream_put_frame(struct migration_stream *s, uint32_t type, const void *payload, size_t length)
{
    uint8_t *frame = malloc(MIG_HEADER_SIZE + length);
    cr_assert_not_null(frame);
    size_t total = mig_frame_encode(frame, type, s->seq++, payload, length);
    migration_stream_mark_frame(s);
    migration_stream_put(s, frame, total);
    free(frame);
}

void migration_stream_put_hello(struct migration_stream *s, const struct mig_hello *hello)
{
    uint8_t payload[MIG_HELLO_SIZE];
    mig_hello_encode(hello, payload);
    migration_stream_put_frame(s, MIG_FRAME_HELLO, payload, sizeof(payload));
}

void migration_stream_put_iteration(struct migration_stream *s, uint64_t iteration, uint64_t pages)
{
    struct mig_iteration it = { .iteration = iteration, .pages = pages };
    uint8_t payload[MIG_ITERATION_SIZE];
    mig_iteration_encode(&it, payload);
    migration_stream_put_frame(s, MIG_FRAME_ITERATION, payload, sizeof(payload));
}

uint8_t *migration_stream_machine_state(uint32_t vcpus, uint8_t fill, size_t *length)
{
    struct machine_state state;
    cr_assert_eq(machine_state_init(&state, vcpus), 0);
    state.vm.guest_kind = MACHINE_STATE_GUEST_BUILTIN;
    state.vm.sections = MACHINE_STATE_HAS_CLOCK;
    state.vm.clock.clock = 0x1000u * fill;
    for (uint32_t i = 0; i < vcpus; i++) {
        struct machine_state_vcpu *v = &state.vcpus[i];
        v->sections = MACHINE_STATE_HAS_MP_STATE | MACHINE_STATE_HAS_REGS | MACHINE_STATE_HAS_SREGS |
                      MACHINE_STATE_HAS_FPU | MACHINE_STATE_HAS_DEBUGREGS | MACHINE_STATE_HAS_CPUID2 |
                      MACHINE_STATE_HAS_MSRS | MACHINE_STATE_HAS_VCPU_EVENTS;
        v->regs.rip = MIGRATION_STREAM_STATE_RIP(fill, i);
        v->regs.rflags = 0x2;
        struct kvm_cpuid_entry2 leaf = { .function = 0, .eax = 0xd };
        cr_assert_eq(machine_state_vcpu_set_cpuid(v, &leaf, 1), 0);
        struct kvm_msr_entry efer = { .index = 0xc0000080, .data = 0 };
        cr_assert_eq(machine_state_vcpu_set_msrs(v, &efer, 1), 0);
    }
    char error[256] = "";
    uint8_t *bytes = machine_state_encode_alloc(&state, length, error, sizeof(error));
    cr_assert_not_null(bytes, "encoding the test machine state: %s", error);
    machine_state_free(&state);
    return bytes;
}

void migration_stream_put_machine_state(struct migration_stream *s, uint32_t vcpus, uint8_t fill)
{
    size_t length;
    uint8_t *bytes = migration_stream_machine_state(vcpus, fill, &length);
    migration_stream_put_frame(s, MIG_FRAME_MACHINE_STATE, bytes, length);
    free(bytes);
}

struct mig_device_state migration_stream_device_state(void)
{
    struct mig_device_state d;
    memset(&d, 0, sizeof(d));
    d.version = 2;
    d.vcpu_count = MIGRATION_STREAM_VCPUS;
    d.serial_lcr = 3;
    snprintf(d.workload, sizeof(d.workload), "ledger,wss=1M,pattern=seq,rate=0,write=8,verify=1");
    d.last_exception_vector = -1;
    d.guest_phase[0] = 1;
    d.guest_phase[1] = 2;
    return d;
}

void migration_stream_put_device_state(struct migration_stream *s, const struct mig_device_state *device)
{
    uint8_t payload[MIG_DEVICE_STATE_SIZE];
    mig_device_state_encode(device, payload);
    migration_stream_put_frame(s, MIG_FRAME_DEVICE_STATE, payload, sizeof(payload));
}

void migration_stream_put_end(struct migration_stream *s, const struct mig_end *end)
{
    uint8_t payload[MIG_END_SIZE];
    mig_end_encode(end, payload);
    migration_stream_put_frame(s, MIG_FRAME_END, payload, sizeof(payload));
}

void migration_stream_put_tail(struct migration_stream *s)
{
    migration_stream_put_machine_state(s, MIGRATION_STREAM_VCPUS, 0xa0);
    struct mig_device_state device = migration_stream_device_state();
    migration_stream_put_device_state(s, &device);
    struct mig_end end = { .timestamp_ns = 123, .pages = 3 };
    migration_stream_put_end(s, &end);
}

void migration_stream_put_pages(struct migration_stream *s, const uint8_t *ram, const uint64_t *pages, size_t count)
{
    struct mig_buffer buffer = { .data = malloc(MIG_SEND_BUFFER_BYTES), .capacity = MIG_SEND_BUFFER_BYTES };
    cr_assert_not_null(buffer.data);
    struct mig_frame_builder builder;
    mig_builder_begin(&builder, &buffer);
    for (size_t i = 0; i < count; i++) {
        cr_assert(mig_builder_has_room(&builder));
        mig_builder_add_page(&builder, pages[i] * MIG_PAGE_SIZE, ram + pages[i] * MIG_PAGE_SIZE);
    }
    mig_builder_finish(&builder, s->seq++);
    migration_stream_mark_frame(s);
    migration_stream_put(s, buffer.data, buffer.length);
    free(buffer.data);
}

void migration_stream_free(struct migration_stream *s)
{
    free(s->data);
    memset(s, 0, sizeof(*s));
}

uint8_t *migration_stream_guarded_ram(size_t ram_bytes)
{
    size_t total = ram_bytes + 2 * MIG_PAGE_SIZE;
    uint8_t *map = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    cr_assert_neq(map, MAP_FAILED, "mmap of %zu bytes: %s", total, strerror(errno));
    cr_assert_eq(mprotect(map + MIG_PAGE_SIZE, ram_bytes, PROT_READ | PROT_WRITE), 0, "mprotect: %s",
                 strerror(errno));
    return map + MIG_PAGE_SIZE;
}

void migration_stream_guarded_ram_free(uint8_t *ram, size_t ram_bytes)
{
    cr_assert_eq(munmap(ram - MIG_PAGE_SIZE, ram_bytes + 2 * MIG_PAGE_SIZE), 0, "munmap: %s", strerror(errno));
}
