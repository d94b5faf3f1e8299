/*
 * libFuzzer target over the machine-state decoder (migration/machine_state.c):
 * the input is a MACHINE_STATE frame's payload, which a destination decodes
 * the moment the frame arrives (migration/receiver.c), from a source it does
 * not have to trust. The stream fuzzer reaches the decoder too, but only
 * inside a whole stream; here every mutation lands in the state.
 *
 * For each input:
 *   - decode; a refusal must say why;
 *   - an accepted state must pass machine_state_validate, encode (the
 *     encoder validates again: a destination must never accept what a
 *     source could not send) to exactly machine_state_encoded_size bytes,
 *     and that encoding must decode and encode again to the same bytes
 *     (the encoding is canonical: one state, one byte string);
 *   - the restore plan of an accepted state stays within its bounds, names
 *     only existing vCPUs, and the MSR split keeps every MSR once (the
 *     deferred TSC_DEADLINE at most once).
 * A broken promise aborts (a crash for libFuzzer).
 *
 * Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined); run for
 * 10 s by tests/test_machine_state.c from tests/fuzz/machine-state-corpus/
 * (seeds: the built-in guest's real states from tests/fuzz/migration-corpus/,
 * and a Linux guest's state with every section, docs/testing.md).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/machine_state.h"

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "machine_state_fuzz: %s%s%s\n", what, detail[0] != '\0' ? ": " : "", detail);
    abort();
}

static uint8_t *encode_or_die(const struct machine_state *state, size_t *length)
{
    char error[512] = "";
    uint8_t *bytes = machine_state_encode_alloc(state, length, error, sizeof(error));
    if (bytes == NULL)
        fail("a decoded state does not encode", error);
    if (*length != machine_state_encoded_size(state))
        fail("the encoding is not machine_state_encoded_size bytes", "");
    return bytes;
}

static void check_plan(const struct machine_state *state)
{
    static struct machine_state_step steps[MACHINE_STATE_MAX_STEPS];
    struct machine_state_plan_input input;
    /* A local TSC 1 % off the source's, so KVM_SET_TSC_KHZ steps appear. */
    uint32_t local_khz = state->vm.tsc_khz != 0 ? state->vm.tsc_khz + state->vm.tsc_khz / 100u + 1u : 0;
    machine_state_plan_input_from(state, local_khz, &input);
    size_t count = machine_state_restore_plan(&input, steps, MACHINE_STATE_MAX_STEPS);
    if (count > MACHINE_STATE_MAX_STEPS)
        fail("the restore plan overflows", "");
    for (size_t i = 0; i < count; i++)
        if (steps[i].vcpu != MACHINE_STATE_NO_VCPU && steps[i].vcpu >= state->vcpu_count)
            fail("the restore plan names a vCPU the state does not have", machine_state_call_name(steps[i].call));
    for (uint32_t v = 0; v < state->vcpu_count; v++) {
        const struct machine_state_vcpu *vcpu = &state->vcpus[v];
        uint32_t count_msrs = vcpu->msr_count;
        struct kvm_msr_entry *first = calloc(count_msrs + 1u, sizeof(*first));
        struct kvm_msr_entry *deferred = calloc(count_msrs + 1u, sizeof(*deferred));
        if (first == NULL || deferred == NULL)
            abort();
        uint32_t first_count = 0, deferred_count = 0;
        machine_state_msr_split(vcpu->msrs, count_msrs, first, &first_count, deferred, &deferred_count);
        if (first_count + deferred_count > count_msrs || deferred_count > 1)
            fail("the MSR split invents MSRs", "");
        for (uint32_t i = 0; i < first_count; i++)
            if (first[i].index == MACHINE_STATE_MSR_IA32_TSC_DEADLINE)
                fail("TSC_DEADLINE is not deferred", "");
        free(first);
        free(deferred);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct machine_state state;
    char error[512] = "";
    if (machine_state_decode(data, size, &state, error, sizeof(error)) != 0) {
        if (error[0] == '\0')
            fail("refused without a reason", "");
        return 0;
    }
    if (machine_state_validate(&state, error, sizeof(error)) != 0)
        fail("decode accepted what validate refuses", error);
    size_t first_length;
    uint8_t *first = encode_or_die(&state, &first_length);
    check_plan(&state);
    machine_state_free(&state);

    if (machine_state_decode(first, first_length, &state, error, sizeof(error)) != 0)
        fail("an encoding does not decode", error);
    size_t second_length;
    uint8_t *second = encode_or_die(&state, &second_length);
    machine_state_free(&state);
    if (second_length != first_length || memcmp(first, second, first_length) != 0)
        fail("the encoding is not canonical (encode(decode(encode(s))) != encode(s))", "");
    free(first);
    free(second);
    return 0;
}
