/*
 * The BPF loader of a build without BPF (no clang, bpftool, kernel BTF or
 * libbpf at build time; bpf/bpf.mk says which). Every entry point fails
 * with that reason; the text/JSON helpers in probes_common.c still work.
 */
#include "bpf/probes.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifndef RINGVM_BPF_STUB_REASON
#define RINGVM_BPF_STUB_REASON "built without BPF"
#endif

static void set_reason(char *error, size_t size)
{
    if (error != NULL && size > 0)
        snprintf(error, size, "%s", RINGVM_BPF_STUB_REASON);
}

bool bpf_probes_built(const char **reason)
{
    if (reason)
        *reason = RINGVM_BPF_STUB_REASON;
    return false;
}

int bpf_probes_create(struct bpf_probes **out, struct vm *vm, char *error, size_t error_size)
{
    (void)vm;
    *out = NULL;
    set_reason(error, error_size);
    return -ENOTSUP;
}

void bpf_probes_destroy(struct bpf_probes *probes)
{
    (void)probes;
}

int bpf_probes_set_vcpu_tid(struct bpf_probes *probes, unsigned vcpu, pid_t tid)
{
    (void)probes, (void)vcpu, (void)tid;
    return -ENOTSUP;
}

int bpf_probes_start(struct bpf_probes *probes, char *error, size_t error_size)
{
    (void)probes;
    set_reason(error, error_size);
    return -ENOTSUP;
}

int bpf_probes_stop(struct bpf_probes *probes)
{
    (void)probes;
    return -ENOTSUP;
}

bool bpf_probes_running(struct bpf_probes *probes)
{
    (void)probes;
    return false;
}

void bpf_probes_print_metrics(struct bpf_probes *probes, FILE *out)
{
    (void)probes;
    fprintf(out, "ringvm: bpf: unavailable: %s\n", RINGVM_BPF_STUB_REASON);
}

void bpf_probes_print_summary(struct bpf_probes *probes, FILE *out)
{
    (void)probes;
    fprintf(out, "ringvm: bpf: unavailable: %s\n", RINGVM_BPF_STUB_REASON);
}

int bpf_probes_stats_get(struct bpf_probes *probes, struct bpf_probes_stats *out)
{
    (void)probes;
    memset(out, 0, sizeof(*out));
    return -ENOTSUP;
}

void bpf_probes_stats_free(struct bpf_probes_stats *stats)
{
    (void)stats;
}

json_t *bpf_probes_stats_json(struct bpf_probes *probes, char *error, size_t error_size)
{
    (void)probes;
    set_reason(error, error_size);
    return NULL;
}

int bpf_probes_mark(struct bpf_probes *probes, struct bpf_probes_mark *mark)
{
    (void)probes;
    memset(mark, 0, sizeof(*mark));
    return -ENOTSUP;
}

int bpf_probes_since_mark(struct bpf_probes *probes, const struct bpf_probes_mark *mark,
                          struct bpf_probes_iteration *out)
{
    (void)probes, (void)mark;
    memset(out, 0, sizeof(*out));
    return -ENOTSUP;
}

int bpf_probes_enable_run_stats(void)
{
    return -ENOTSUP;
}

int bpf_probes_prog_stats(struct bpf_probes *probes, struct bpf_probes_prog_stat *out, unsigned max)
{
    (void)probes, (void)out, (void)max;
    return -ENOTSUP;
}
