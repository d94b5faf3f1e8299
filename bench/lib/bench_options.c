#include "bench/lib/bench_options.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/size.h"

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Only digits: strtoull itself would skip leading spaces and take a sign
 * ("-1" becomes ULLONG_MAX), and stop quietly at the first non-digit. */
static bool whole_number(const char *text, unsigned long long *out)
{
    if (!is_digit(text[0]))
        return false;
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno == ERANGE || *end != '\0')
        return false;
    *out = value;
    return true;
}

int bench_parse_unsigned(const char *text, unsigned min, unsigned max, unsigned *out)
{
    unsigned long long value;
    if (!whole_number(text, &value) || value < min || value > max)
        return -1;
    *out = (unsigned)value;
    return 0;
}

int bench_option_unsigned(const char *program, const char *option, const char *text, unsigned min, unsigned max,
                          unsigned *out)
{
    if (bench_parse_unsigned(text, min, max, out) == 0)
        return 0;
    fprintf(stderr, "%s: %s '%s': expected a whole number from %u to %u\n", program, option, text, min, max);
    return -1;
}

/* digits, then optionally '.' and digits: what a person types for seconds.
 * strtod would also take "inf", "nan", "1e3", hex and a sign. */
static bool decimal_number(const char *text)
{
    const char *at = text;
    if (!is_digit(*at))
        return false;
    while (is_digit(*at))
        at++;
    if (*at == '.') {
        at++;
        if (!is_digit(*at))
            return false;
        while (is_digit(*at))
            at++;
    }
    return *at == '\0';
}

int bench_option_seconds(const char *program, const char *option, const char *text, double min, double max,
                         double *out)
{
    if (decimal_number(text)) {
        errno = 0;
        double value = strtod(text, NULL);
        if (errno != ERANGE && value >= min && value <= max) {
            *out = value;
            return 0;
        }
    }
    fprintf(stderr, "%s: %s '%s': expected a number of seconds from %g to %g\n", program, option, text, min, max);
    return -1;
}

int bench_option_size(const char *program, const char *option, const char *text, uint64_t min, uint64_t max,
                      uint64_t multiple, uint64_t *out)
{
    char error[200];
    uint64_t value;
    if (size_parse(text, &value, error, sizeof(error)) != 0) {
        fprintf(stderr, "%s: %s %s\n", program, option, error);
        return -1;
    }
    if (value >= min && value <= max && (multiple <= 1 || value % multiple == 0)) {
        *out = value;
        return 0;
    }
    char low[32], high[32], unit[64] = "";
    size_format(min, low, sizeof(low));
    size_format(max, high, sizeof(high));
    if (multiple > 1) {
        char step[32];
        size_format(multiple, step, sizeof(step));
        snprintf(unit, sizeof(unit), ", a multiple of %s", step);
    }
    fprintf(stderr, "%s: %s '%s': expected a size from %s to %s%s\n", program, option, text, low, high, unit);
    return -1;
}

int bench_option_working_sets(const char *program, const char *option, const char *text, uint64_t *sizes,
                              unsigned capacity, unsigned *count)
{
    char copy[128];
    bool ok = strlen(text) < sizeof(copy);
    *count = 0;
    snprintf(copy, sizeof(copy), "%s", text);
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); ok && item; item = strtok_r(NULL, ",", &save)) {
        char error[128];
        uint64_t bytes;
        ok = *count < capacity && size_parse(item, &bytes, error, sizeof(error)) == 0 && bytes >= (1u << 20) &&
             bytes <= (1ULL << 40) && bytes % (1u << 20) == 0;
        if (ok)
            sizes[(*count)++] = bytes;
    }
    if (!ok || *count == 0) {
        fprintf(stderr, "%s: %s '%s': expected up to %u sizes from 1M to 1T in whole MiB, comma-separated\n", program,
                option, text, capacity);
        return -1;
    }
    return 0;
}

int bench_option_caps(const char *program, const char *option, const char *text, unsigned max_mibs, uint64_t *caps,
                      unsigned capacity, unsigned *count)
{
    char copy[128];
    bool ok = strlen(text) < sizeof(copy);
    *count = 0;
    snprintf(copy, sizeof(copy), "%s", text);
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); ok && item; item = strtok_r(NULL, ",", &save)) {
        unsigned mibs = 0;
        ok = *count < capacity && (strcmp(item, "none") == 0 || bench_parse_unsigned(item, 1, max_mibs, &mibs) == 0);
        if (ok)
            caps[(*count)++] = mibs;
    }
    if (!ok || *count == 0) {
        fprintf(stderr, "%s: %s '%s': expected up to %u of none or MiB/s from 1 to %u, comma-separated\n", program,
                option, text, capacity, max_mibs);
        return -1;
    }
    return 0;
}

int bench_options_refuse_operands(const char *program, int argc, char **argv, int first_operand,
                                  void (*usage)(FILE *to))
{
    if (first_operand >= argc)
        return 0;
    fprintf(stderr, "%s: unexpected argument '%s'\n", program, argv[first_operand]);
    usage(stderr);
    return -1;
}
