/*
 * vm.memory-digest (worker thread) and the digest function behind it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>
/* Runtime-dispatched XXH3 (SSE2/AVX2/AVX-512, libxxhash's x86 dispatcher):
 * the header redirects XXH3_* to the *_dispatch entry points, ~2x the
 * throughput of the baseline SSE2 build on AVX2 hosts. */
#include <xxh_x86dispatch.h>

#include "api/commands.h"
#include "api/digest.h"
#include "vmm/memory_extents.h"
#include "vmm/vm.h"

#define PIECE_BYTES (1ULL << 20)    /* hashed into both states while in cache */

static const uint8_t zero_piece[PIECE_BYTES];

static void to_hex(XXH128_hash_t hash, char hex[MEMORY_DIGEST_HEX_SIZE])
{
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, hash);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        hex[2 * i] = digits[canonical.digest[i] >> 4];
        hex[2 * i + 1] = digits[canonical.digest[i] & 15];
    }
    hex[32] = '\0';
}

/* Data extents of guest RAM (vmm/memory_extents.h), for skipping pages
 * without data. */
struct extents {
    struct guest_ram ram;
    uint64_t data_start, data_end;  /* current extent [start, end) in bytes; start == ram.size: none left */
    bool usable;
};

static void extents_seek(struct extents *e, uint64_t from)
{
    uint64_t data_page, hole_page;
    if (guest_ram_next_data(&e->ram, from / GUEST_RAM_PAGE, &data_page, &hole_page) != 0) {
        e->usable = false;
        return;
    }
    /* guest_ram_next_data clamps both to RAM's pages. */
    e->data_start = data_page * GUEST_RAM_PAGE;
    e->data_end = hole_page * GUEST_RAM_PAGE;
}

/* true if [offset, offset + length) is entirely a hole. */
static bool extents_is_hole(struct extents *e, uint64_t offset, uint64_t length)
{
    if (!e->usable)
        return false;
    if (offset >= e->data_end && e->data_end < e->ram.size) {
        extents_seek(e, offset);
        if (!e->usable)
            return false;
    }
    return offset + length <= e->data_start;
}

static int digest_run(const uint8_t *base, uint64_t size, struct extents *extents,
                      char total_hex[MEMORY_DIGEST_HEX_SIZE], memory_digest_chunk_fn chunk_fn,
                      void *opaque)
{
    XXH3_state_t *total = XXH3_createState();
    XXH3_state_t *chunk = XXH3_createState();
    if (!total || !chunk) {
        XXH3_freeState(total);
        XXH3_freeState(chunk);
        return -ENOMEM;
    }
    XXH3_128bits_reset(total);
    for (uint64_t chunk_start = 0; chunk_start < size; chunk_start += MEMORY_DIGEST_CHUNK_BYTES) {
        uint64_t chunk_size = size - chunk_start < MEMORY_DIGEST_CHUNK_BYTES
                                  ? size - chunk_start
                                  : MEMORY_DIGEST_CHUNK_BYTES;
        XXH3_128bits_reset(chunk);
        for (uint64_t off = chunk_start; off < chunk_start + chunk_size; off += PIECE_BYTES) {
            uint64_t n = chunk_start + chunk_size - off < PIECE_BYTES ? chunk_start + chunk_size - off
                                                                      : PIECE_BYTES;
            const void *data = base + off;
            if (extents && extents_is_hole(extents, off, n))
                data = zero_piece;
            XXH3_128bits_update(total, data, n);
            XXH3_128bits_update(chunk, data, n);
        }
        if (chunk_fn) {
            char hex[MEMORY_DIGEST_HEX_SIZE];
            to_hex(XXH3_128bits_digest(chunk), hex);
            chunk_fn(chunk_start, chunk_size, hex, opaque);
        }
    }
    to_hex(XXH3_128bits_digest(total), total_hex);
    XXH3_freeState(total);
    XXH3_freeState(chunk);
    return 0;
}

void memory_digest_buffer(const void *data, uint64_t size, char total_hex[MEMORY_DIGEST_HEX_SIZE],
                          memory_digest_chunk_fn chunk_fn, void *opaque)
{
    if (digest_run(data, size, NULL, total_hex, chunk_fn, opaque) < 0)
        total_hex[0] = '\0';
}

int memory_digest(const struct guest_memory *memory, char total_hex[MEMORY_DIGEST_HEX_SIZE],
                  memory_digest_chunk_fn chunk_fn, void *opaque)
{
    struct extents extents = { .ram = guest_memory_ram(memory), .usable = true };
    extents_seek(&extents, 0);
    return digest_run(memory->host, memory->size, extents.usable ? &extents : NULL, total_hex, chunk_fn, opaque);
}

/* ---- the command -------------------------------------------------------- */

static void add_chunk(uint64_t offset, uint64_t size, const char hex[MEMORY_DIGEST_HEX_SIZE],
                      void *opaque)
{
    json_array_append_new(opaque, json_pack("{s:I, s:I, s:s}", "offset", (json_int_t)offset,
                                            "bytes", (json_int_t)size, "digest", hex));
}

static enum api_status cmd_vm_memory_digest(struct api_call *call)
{
    struct vm *vm = call->vm;
    if (!vm)
        return api_call_fail(call, API_ERR_UNAVAILABLE, "no VM in this process");
    enum vm_state state = vm_get_state(vm);
    if (state == VM_STATE_RUNNING)
        return api_call_fail(call, API_ERR_VM_RUNNING,
                             "the VM is running: pause the VM first (vm.pause)");
    if (state != VM_STATE_PAUSED && state != VM_STATE_MIGRATED && state != VM_STATE_SHUTDOWN)
        return api_call_fail(call, API_ERR_VM_NOT_RUNNING, "the VM is %s", vm_state_name(state));
    uint64_t pauses = atomic_load_explicit(&vm->pause_count, memory_order_acquire);
    json_t *chunks = json_array();
    if (!chunks)
        return api_call_fail(call, API_ERR_INTERNAL, "out of memory");
    char hex[MEMORY_DIGEST_HEX_SIZE];
    uint64_t started = vm_now_ns();
    int result = memory_digest(&vm->memory, hex, add_chunk, chunks);
    uint64_t elapsed = vm_now_ns() - started;
    if (result < 0) {
        json_decref(chunks);
        return api_call_fail(call, API_ERR_INTERNAL, "digest: %s", strerror(-result));
    }
    /* A resume (and re-pause) during the hash would make it meaningless. */
    if (vm_get_state(vm) != state ||
        atomic_load_explicit(&vm->pause_count, memory_order_acquire) != pauses) {
        json_decref(chunks);
        return api_call_fail(call, API_ERR_VM_RUNNING,
                             "the VM was resumed while its memory was hashed; pause it and retry");
    }
    return api_call_ok(call, json_pack("{s:s, s:s, s:I, s:I, s:o, s:f}", "algorithm", "xxh3-128",
                                       "digest", hex, "memory_bytes", (json_int_t)vm->memory.size,
                                       "chunk_bytes", (json_int_t)MEMORY_DIGEST_CHUNK_BYTES,
                                       "chunks", chunks, "duration_ms", (double)elapsed / 1e6));
}

static const struct api_command commands[] = {
    {"vm.memory-digest", cmd_vm_memory_digest, API_CMD_WORKER, NULL,
     "XXH3-128 of all guest RAM and of every 64 MiB chunk (VM paused)"},
    {NULL, NULL, 0, NULL, NULL},
};

const struct api_command_group api_commands_digest = {commands};
