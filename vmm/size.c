/* Byte sizes on the command line: "512M", "1G", "4096". */
#include "vmm/size.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int size_parse(const char *text, uint64_t *out, char *error, size_t error_size)
{
    if (text == NULL || *text == '\0') {
        snprintf(error, error_size, "empty size (expected a number with optional K, M, G or T)");
        return -1;
    }
    if (!isdigit((unsigned char)text[0])) {
        snprintf(error, error_size, "'%s': not a size (expected a number with optional K, M, G or T)",
                 text);
        return -1;
    }
    errno = 0;
    char *end = NULL;
    unsigned long long number = strtoull(text, &end, 10);
    if (errno == ERANGE) {
        snprintf(error, error_size, "'%s': number too large", text);
        return -1;
    }
    unsigned shift = 0;
    if (*end != '\0') {
        switch (toupper((unsigned char)*end)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        case 'B': shift = 0; break;
        default:
            snprintf(error, error_size, "'%s': unknown size suffix '%s' (use K, M, G or T)", text, end);
            return -1;
        }
        const char *rest = end + 1;
        if (shift != 0 && (strcasecmp(rest, "iB") == 0 || strcasecmp(rest, "B") == 0))
            rest += strlen(rest);
        if (*rest != '\0') {
            snprintf(error, error_size, "'%s': unknown size suffix '%s' (use K, M, G or T)", text, end);
            return -1;
        }
    }
    if (shift != 0 && number > (UINT64_MAX >> shift)) {
        snprintf(error, error_size, "'%s': size too large", text);
        return -1;
    }
    *out = (uint64_t)number << shift;
    return 0;
}

void size_format(uint64_t bytes, char *out, size_t out_size)
{
    static const char suffixes[] = "KMGT";
    int unit = -1;
    while (unit < 3 && bytes != 0 && (bytes & 1023) == 0) {
        bytes >>= 10;
        unit++;
    }
    if (unit < 0)
        snprintf(out, out_size, "%" PRIu64, bytes);
    else
        snprintf(out, out_size, "%" PRIu64 "%c", bytes, suffixes[unit]);
}
