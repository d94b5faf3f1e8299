/*
 * Host KVM kind (see host.h).
 */
#include "vmm/host.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOST_KIND_UNKNOWN  0
#define HOST_KIND_HARDWARE 1
#define HOST_KIND_PVM      2

static int host_kind_detect(void)
{
    const char *forced = getenv("RINGVM_HOST_KVM");
    if (forced != NULL && strcmp(forced, "pvm") == 0)
        return HOST_KIND_PVM;
    if (forced != NULL && strcmp(forced, "hardware") == 0)
        return HOST_KIND_HARDWARE;
    if (forced != NULL && forced[0] != '\0')
        fprintf(stderr, "ringvm: RINGVM_HOST_KVM=%s ignored (pvm or hardware)\n", forced);
    return access("/sys/module/kvm_pvm", F_OK) == 0 ? HOST_KIND_PVM : HOST_KIND_HARDWARE;
}

bool host_kvm_is_pvm(void)
{
    /* Racing first callers detect twice and store the same answer. */
    static atomic_int cached = HOST_KIND_UNKNOWN;
    int kind = atomic_load_explicit(&cached, memory_order_relaxed);
    if (kind == HOST_KIND_UNKNOWN) {
        kind = host_kind_detect();
        atomic_store_explicit(&cached, kind, memory_order_relaxed);
    }
    return kind == HOST_KIND_PVM;
}

const char *host_kvm_kind(void)
{
    return host_kvm_is_pvm() ? "pvm" : "hardware";
}
