/* bpf.start / bpf.stop / bpf.stats through the API request handler. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/commands.h"
#include "api/dispatch.h"
#include "bpf/probes.h"
#include "tests/api_requests.h"
#include "tests/harness.h"

static const char *error_code(json_t *reply)
{
    return json_string_value(json_object_get(json_object_get(reply, "error"), "code"));
}

static const char *error_message(json_t *reply)
{
    return json_string_value(json_object_get(json_object_get(reply, "error"), "message"));
}

Test(api_bpf, unavailable_with_the_reason_and_the_vm_runs_on, .timeout = 60)
{
    harness_require_kvm();
    struct harness_vm harness;
    harness_vm_start(&harness, "128M", 1, "dirtier,wss=16M", "ring");
    /* Never asked for: how to ask. */
    json_t *reply = api_request(harness.vm, "{\"id\":0,\"cmd\":\"bpf.stats\"}");
    cr_assert_str_eq(error_code(reply), "unavailable");
    const char *why = NULL;
    if (bpf_probes_built(&why))
        cr_assert_str_eq(error_message(reply), "BPF probes are not loaded (bpf.start or ringvm --bpf)");
    json_decref(reply);
    setenv("RINGVM_BPF_DISABLE", "1", 1);
    reply = api_request(harness.vm, "{\"id\":1,\"cmd\":\"bpf.start\"}");
    cr_assert_str_eq(error_code(reply), "unavailable");
    const char *message = json_string_value(json_object_get(json_object_get(reply, "error"), "message"));
    cr_assert(strstr(message, "RINGVM_BPF_DISABLE") != NULL, "message: %s", message);
    json_decref(reply);
    unsetenv("RINGVM_BPF_DISABLE");
    /* bpf.stats keeps the reason of the failed bpf.start. */
    reply = api_request(harness.vm, "{\"id\":2,\"cmd\":\"bpf.stats\"}");
    cr_assert_str_eq(error_code(reply), "unavailable");
    if (bpf_probes_built(&why))
        cr_assert_str_eq(error_message(reply), "BPF unavailable: disabled by RINGVM_BPF_DISABLE=1");
    else
        cr_assert(strstr(error_message(reply), why) != NULL, "message: %s", error_message(reply));
    json_decref(reply);
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 10000, 20000), "the VM stopped running");
    harness_vm_stop(&harness);
}

Test(api_bpf, start_stats_stop_with_vmm_kick_latency_beside_the_kernels, .timeout = 60)
{
    harness_require_kvm();
    /* Skips only where BPF is absent; where it works, a bpf.start that
     * fails below is a failure with the loader's reason. */
    harness_require_bpf();
    struct harness_vm harness;
    harness_vm_start(&harness, "128M", 2, "dirtier,wss=16M", "ring");
    cr_assert(harness_wait_all_vcpus_advance(harness.vm, 10000, 20000));
    /* Kicks measured by the VMM before bpf.start must not show in
     * bpf.stats: it counts from the probes' start, like the other vmm.*
     * counters. Pause until the VMM has measured 5 per vCPU. */
    for (int round = 0; round < 200; round++) {
        bool enough = true;
        for (unsigned i = 0; i < 2; i++)
            enough &= atomic_load(&harness.vm->vcpus[i].counters.kick_latency_count) >= 5;
        if (enough)
            break;
        cr_assert(harness_wait_all_vcpus_advance(harness.vm, 1000, 10000));
        cr_assert_eq(vm_pause(harness.vm), 0);
        cr_assert_eq(vm_resume(harness.vm), 0);
    }
    for (unsigned i = 0; i < 2; i++)
        cr_assert_geq(atomic_load(&harness.vm->vcpus[i].counters.kick_latency_count), 5,
                      "vcpu %u: the VMM measured no kick latency", i);
    json_t *reply = api_request(harness.vm, "{\"id\":1,\"cmd\":\"bpf.start\"}");
    cr_assert(json_is_true(json_object_get(reply, "ok")), "%s", json_dumps(reply, 0));
    json_decref(reply);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(vm_pause(harness.vm), 0);
        cr_assert_eq(vm_resume(harness.vm), 0);
    }
    reply = api_request(harness.vm, "{\"id\":2,\"cmd\":\"bpf.stats\"}");
    cr_assert(json_is_true(json_object_get(reply, "ok")), "%s", json_dumps(reply, 0));
    json_t *vcpus = json_object_get(json_object_get(reply, "result"), "vcpus");
    char running_source[128];
    snprintf(running_source, sizeof(running_source), "%s",
             json_string_value(json_object_get(
                 json_object_get(json_object_get(json_object_get(reply, "result"), "metrics"), "kvm_run"), "source")));
    cr_assert_eq(json_array_size(vcpus), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *vcpu = json_array_get(vcpus, i);
        json_t *vmm = json_object_get(vcpu, "vmm_kick_latency_ns");
        cr_assert_not_null(vmm, "vcpu %zu has no vmm_kick_latency_ns", i);
        /* Every pause kicked each vCPU at least once; the VMM saw each
         * kick end KVM_RUN (or found the vCPU already outside it). */
        json_int_t kicks_sent = json_integer_value(json_object_get(json_object_get(vcpu, "vmm"), "kicks_sent"));
        cr_assert_geq(kicks_sent, 3);
        cr_assert_leq(json_integer_value(json_object_get(vmm, "count")), kicks_sent,
                      "vcpu %zu: the VMM's kick latency counts kicks from before bpf.start", i);
        /* The kernel's figure for the same kind of kick is beside it. */
        cr_assert_not_null(json_object_get(vcpu, "kick_tgkill_in_run_ns"));
        /* All kicks are in the histogram, outside KVM_RUN as 0 ns. */
        json_int_t tgkill = json_integer_value(json_object_get(json_object_get(vcpu, "kicks"), "tgkill"));
        cr_assert_eq(tgkill, kicks_sent);
        cr_assert_eq(json_integer_value(json_object_get(json_object_get(vcpu, "kick_tgkill_ns"), "count")), tgkill);
    }
    json_decref(reply);
    reply = api_request(harness.vm, "{\"id\":3,\"cmd\":\"bpf.stop\"}");
    cr_assert(json_is_true(json_object_get(reply, "ok")));
    json_decref(reply);
    /* Stopped: nothing attached, the sources still name what was used. */
    reply = api_request(harness.vm, "{\"id\":4,\"cmd\":\"bpf.stats\"}");
    cr_assert(json_is_true(json_object_get(reply, "ok")), "%s", json_dumps(reply, 0));
    json_t *kvm_run = json_object_get(json_object_get(json_object_get(reply, "result"), "metrics"), "kvm_run");
    cr_assert(json_is_false(json_object_get(kvm_run, "attached")));
    cr_assert_str_eq(json_string_value(json_object_get(kvm_run, "reason")), "probes stopped");
    cr_assert_str_eq(json_string_value(json_object_get(kvm_run, "source")), running_source);
    json_decref(reply);
    harness_vm_stop(&harness);
}
