/*
 * For the migration fuzzers (migration_stream_fuzz.c, postcopy_return_fuzz.c):
 * a copy of the input with every frame's checksum made valid, so the fuzzer
 * also reaches the checks behind the checksum. Frames are walked by their
 * header's length field until one runs past the input. One buffer per
 * process, grown as needed; valid until the next call.
 */
#ifndef RINGVM_TESTS_FUZZ_SEALED_COPY_H
#define RINGVM_TESTS_FUZZ_SEALED_COPY_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "migration/protocol.h"

static inline const uint8_t *fuzz_sealed_copy(const uint8_t *data, size_t size)
{
    static uint8_t *copy;
    static size_t copy_size;
    if (size > copy_size) {
        free(copy);
        copy = malloc(size);
        if (copy == NULL)
            abort();
        copy_size = size;
    }
    memcpy(copy, data, size);
    size_t offset = 0;
    while (size - offset >= MIG_HEADER_SIZE) {
        uint64_t length = mig_get_u64(copy + offset + 16);
        if (length > size - offset - MIG_HEADER_SIZE)
            break;
        mig_header_seal(copy + offset, copy + offset + MIG_HEADER_SIZE, (size_t)length);
        offset += MIG_HEADER_SIZE + (size_t)length;
    }
    return copy;
}

#endif
