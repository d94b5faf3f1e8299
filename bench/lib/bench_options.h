/*
 * The benchmarks' numeric command-line options (the programs in bench/).
 * strtoul and atoi alone read "abc" as 0, "5x" as 5 and "-1" as a huge
 * number, so a typo ran a different benchmark than the one asked for.
 * These parsers refuse the same bad input in every benchmark and say what
 * they expected:
 *
 *   bench/harvest: --reps 'abc': expected a whole number from 1 to 16
 *
 * Refused: an empty value, anything but decimal digits (a sign, spaces, a
 * suffix), a number too large for strtoull (ERANGE) and one out of range.
 * The bench_option_* functions print that one line on stderr and return
 * -1; the caller exits 2. Plain functions, no state.
 */
#ifndef RINGVM_BENCH_LIB_BENCH_OPTIONS_H
#define RINGVM_BENCH_LIB_BENCH_OPTIONS_H

#include <stdint.h>
#include <stdio.h>

/* A whole number from min to max. 0 with *out set, or -1 with *out
 * untouched and nothing printed: for the items of a list, whose message
 * names the whole list. */
int bench_parse_unsigned(const char *text, unsigned min, unsigned max, unsigned *out);

/* The same for the value of `option` ("--reps") of `program`
 * ("bench/harvest"), with the message above on -1. */
int bench_option_unsigned(const char *program, const char *option, const char *text, unsigned min, unsigned max,
                          unsigned *out);

/* Seconds, whole or with a decimal fraction ("2", "0.5"; no exponent),
 * from min to max. 0 or -1 with the message. */
int bench_option_seconds(const char *program, const char *option, const char *text, double min, double max,
                         double *out);

/* A size as vmm/size.h reads it ("256M", "4096"), from min to max and a
 * multiple of `multiple` (1: any). 0 or -1 with the message: size_parse's
 * reason when the text is no size, else the range. */
int bench_option_size(const char *program, const char *option, const char *text, uint64_t min, uint64_t max,
                      uint64_t multiple, uint64_t *out);

/* The benchmarks' --wss: up to `capacity` comma-separated working sets, 1M
 * to 1T in whole MiB (the cells are named by MiB). Fills sizes[] and
 * *count; 0, or -1 with one message naming the whole list. */
int bench_option_working_sets(const char *program, const char *option, const char *text, uint64_t *sizes,
                              unsigned capacity, unsigned *count);

/* The benchmarks' --caps: up to `capacity` comma-separated bandwidth caps,
 * "none" (stored as 0) or 1 to max_mibs MiB/s. 0, or -1 with the message. */
int bench_option_caps(const char *program, const char *option, const char *text, unsigned max_mibs, uint64_t *caps,
                      unsigned capacity, unsigned *count);

/* After getopt: 0 when argv has nothing from first_operand on; else
 * "PROGRAM: unexpected argument 'X'" and the usage on stderr, and -1. */
int bench_options_refuse_operands(const char *program, int argc, char **argv, int first_operand,
                                  void (*usage)(FILE *to));

#endif
