/* Byte sizes on the command line and in workload specs: "512M", "1G", "4096". */
#ifndef RINGVM_VMM_SIZE_H
#define RINGVM_VMM_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Accepts a decimal number with an optional K, M, G or T suffix (binary
 * multiples, case-insensitive, optional trailing "iB"/"B"). Returns 0, or -1
 * with a message naming the problem written to error:
 *   "'12Q': unknown size suffix 'Q' (use K, M, G or T)". */
int size_parse(const char *text, uint64_t *out, char *error, size_t error_size);

/* "256M", "1G", "4096" — the largest exact binary unit. */
void size_format(uint64_t bytes, char *out, size_t out_size);

#endif
