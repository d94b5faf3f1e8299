/* --workload NAME,key=value,... for the built-in guest. */
#include "vmm/workload.h"

#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/size.h"

static const char *const kind_names[] = {
    [RINGVM_WORKLOAD_IDLE] = "idle",
    [RINGVM_WORKLOAD_DIRTIER] = "dirtier",
    [RINGVM_WORKLOAD_LEDGER] = "ledger",
    [RINGVM_WORKLOAD_FAULT] = "fault",
};
static const char *const pattern_names[] = {
    [RINGVM_PATTERN_SEQ] = "seq",
    [RINGVM_PATTERN_RANDOM] = "random",
    [RINGVM_PATTERN_HOT] = "hot",
};
static const char *const fault_names[] = {
    [RINGVM_FAULT_UD] = "ud",
    [RINGVM_FAULT_PF] = "pf",
    [RINGVM_FAULT_DE] = "de",
    [RINGVM_FAULT_BP] = "bp",
};

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))

void workload_spec_defaults(struct workload_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->kind = RINGVM_WORKLOAD_DIRTIER;
    spec->wss_bytes = 64ULL << 20;
    spec->pattern = RINGVM_PATTERN_SEQ;
    spec->write_bytes = 8;
    spec->verify_seconds = 5;
    spec->fault_kind = RINGVM_FAULT_UD;
    spec->fault_ring = 3;
    spec->seed = 0x52494e47564d0001ULL;
}

const char *workload_kind_name(enum ringvm_workload_kind kind)
{
    if ((unsigned)kind < COUNT_OF(kind_names))
        return kind_names[kind];
    return "unknown";
}

static int lookup(const char *value, const char *const *names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (names[i] != NULL && strcmp(value, names[i]) == 0)
            return (int)i;
    return -1;
}

static int parse_unsigned(const char *key, const char *value, uint64_t max, uint64_t *out,
                          char *error, size_t error_size)
{
    char *end = NULL;
    errno = 0;
    unsigned long long number = strtoull(value, &end, 10);
    if (*value == '\0' || *value == '-' || *end != '\0' || errno == ERANGE || number > max) {
        snprintf(error, error_size, "--workload: %s=%s: expected an integer from 0 to %" PRIu64,
                 key, value, max);
        return -1;
    }
    *out = number;
    return 0;
}

/* Applies one key=value to spec; keys valid for the chosen kind only. */
static int apply_parameter(struct workload_spec *spec, const char *key, const char *value,
                           char *error, size_t error_size)
{
    uint64_t number = 0;
    char size_error[160];
    enum ringvm_workload_kind kind = spec->kind;
    bool writes = kind == RINGVM_WORKLOAD_DIRTIER || kind == RINGVM_WORKLOAD_LEDGER;

    if (writes && strcmp(key, "wss") == 0) {
        if (size_parse(value, &spec->wss_bytes, size_error, sizeof(size_error)) != 0) {
            snprintf(error, error_size, "--workload: wss=%s: %s", value, size_error);
            return -1;
        }
        if (spec->wss_bytes == 0 || spec->wss_bytes % RINGVM_PAGE_SIZE != 0) {
            snprintf(error, error_size, "--workload: wss=%s: must be a non-zero multiple of 4K", value);
            return -1;
        }
        return 0;
    }
    if (writes && strcmp(key, "pattern") == 0) {
        int pattern = lookup(value, pattern_names, COUNT_OF(pattern_names));
        if (pattern < 0) {
            snprintf(error, error_size, "--workload: unknown pattern '%s' (expected seq, random or hot)",
                     value);
            return -1;
        }
        spec->pattern = (enum ringvm_pattern)pattern;
        return 0;
    }
    if (writes && strcmp(key, "rate") == 0) {
        if (parse_unsigned(key, value, UINT64_C(1) << 40, &spec->rate_pages_per_s, error, error_size))
            return -1;
        return 0;
    }
    if (writes && strcmp(key, "write") == 0) {
        if (strcmp(value, "8") != 0 && strcmp(value, "4096") != 0) {
            snprintf(error, error_size, "--workload: write=%s: expected 8 or 4096 (bytes per page)", value);
            return -1;
        }
        spec->write_bytes = (uint32_t)atoi(value);
        return 0;
    }
    if (writes && strcmp(key, "count") == 0)
        return parse_unsigned(key, value, UINT64_MAX, &spec->count, error, error_size);
    if (writes && strcmp(key, "seed") == 0)
        return parse_unsigned(key, value, UINT64_MAX, &spec->seed, error, error_size);
    if (kind == RINGVM_WORKLOAD_LEDGER && strcmp(key, "verify") == 0) {
        if (parse_unsigned(key, value, 3600, &number, error, error_size))
            return -1;
        spec->verify_seconds = (uint32_t)number;
        return 0;
    }
    if (kind == RINGVM_WORKLOAD_FAULT && strcmp(key, "kind") == 0) {
        int fault = lookup(value, fault_names, COUNT_OF(fault_names));
        if (fault < 0) {
            snprintf(error, error_size, "--workload: unknown fault kind '%s' (expected ud, pf, de or bp)",
                     value);
            return -1;
        }
        spec->fault_kind = (enum ringvm_fault_kind)fault;
        return 0;
    }
    if (kind == RINGVM_WORKLOAD_FAULT && strcmp(key, "ring") == 0) {
        if (strcmp(value, "0") != 0 && strcmp(value, "3") != 0) {
            snprintf(error, error_size, "--workload: ring=%s: expected 0 or 3", value);
            return -1;
        }
        spec->fault_ring = (uint32_t)atoi(value);
        return 0;
    }
    snprintf(error, error_size, "--workload: unknown parameter '%s' for workload %s", key,
             workload_kind_name(kind));
    return -1;
}

int workload_spec_parse(const char *text, struct workload_spec *spec, char *error, size_t error_size)
{
    workload_spec_defaults(spec);
    if (text == NULL || *text == '\0') {
        snprintf(error, error_size, "--workload: empty (expected idle, dirtier, ledger or fault)");
        return -1;
    }
    char *copy = strdup(text);
    if (copy == NULL) {
        snprintf(error, error_size, "--workload: out of memory");
        return -1;
    }
    int result = 0;
    char *saveptr = NULL;
    char *name = strtok_r(copy, ",", &saveptr);
    int kind = name ? lookup(name, kind_names, COUNT_OF(kind_names)) : -1;
    if (kind < 0) {
        snprintf(error, error_size, "--workload: unknown workload '%s' (expected idle, dirtier, ledger or fault)",
                 name ? name : "");
        result = -1;
        goto out;
    }
    spec->kind = (enum ringvm_workload_kind)kind;
    if (spec->kind == RINGVM_WORKLOAD_IDLE || spec->kind == RINGVM_WORKLOAD_FAULT)
        spec->wss_bytes = 0;

    for (char *item = strtok_r(NULL, ",", &saveptr); item != NULL;
         item = strtok_r(NULL, ",", &saveptr)) {
        char *equals = strchr(item, '=');
        if (equals == NULL || equals == item) {
            snprintf(error, error_size, "--workload: '%s': expected key=value", item);
            result = -1;
            goto out;
        }
        *equals = '\0';
        if (apply_parameter(spec, item, equals + 1, error, error_size) != 0) {
            result = -1;
            goto out;
        }
    }
out:
    free(copy);
    return result;
}

void workload_spec_format(const struct workload_spec *spec, char *out, size_t out_size)
{
    char wss[32];
    switch (spec->kind) {
    case RINGVM_WORKLOAD_DIRTIER:
    case RINGVM_WORKLOAD_LEDGER:
        size_format(spec->wss_bytes, wss, sizeof(wss));
        if (spec->kind == RINGVM_WORKLOAD_LEDGER)
            snprintf(out, out_size, "ledger,wss=%s,pattern=%s,rate=%" PRIu64 ",write=%u,verify=%u", wss,
                     pattern_names[spec->pattern], spec->rate_pages_per_s, spec->write_bytes,
                     spec->verify_seconds);
        else
            snprintf(out, out_size, "dirtier,wss=%s,pattern=%s,rate=%" PRIu64 ",write=%u", wss,
                     pattern_names[spec->pattern], spec->rate_pages_per_s, spec->write_bytes);
        if (spec->count != 0) {
            size_t used = strlen(out);
            snprintf(out + used, out_size - used, ",count=%" PRIu64, spec->count);
        }
        break;
    case RINGVM_WORKLOAD_FAULT:
        snprintf(out, out_size, "fault,kind=%s,ring=%u", fault_names[spec->fault_kind], spec->fault_ring);
        break;
    default:
        snprintf(out, out_size, "%s", workload_kind_name(spec->kind));
        break;
    }
}
