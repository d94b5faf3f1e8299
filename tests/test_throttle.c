/*
 * vCPU throttling on its own, without a migration around it: the
 * timeslice timer kicks the vCPU out of KVM_RUN and the thread sleeps off
 * the throttled share (vmm/vcpu.c). A ledger guest, dirty tracking on as
 * during a migration, is taken through throttle steps up to 99 % and back
 * to 0 several times: it must keep verifying (LEDGER OK, never MISMATCH,
 * no exception) and run at full speed again once the throttle is gone.
 * (Written to tell apart, under make test-nested, whether the triple
 * faults seen after throttled migrations need a migration at all; they
 * were the emulated machine's own, with two emulated CPUs: docs/testing.md,
 * "The emulator's own failures".)
 */
#include <criterion/criterion.h>
#include <time.h>

#include "dirtyring/dirty_log.h"
#include "tests/harness.h"
#include "vmm/vcpu.h"

static void set_all(struct vm *vm, int percent)
{
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        vcpu_set_throttle(&vm->vcpus[i], percent);
}

Test(throttle, a_ledger_guest_survives_throttle_steps_up_to_99_percent_and_back, .timeout = 240)
{
    harness_require_kvm();
    struct harness_vm h;
    harness_vm_start(&h, "128M", 2, "ledger,wss=16M,verify=1", "ring");
    cr_assert(console_wait_for(&h.console, "LEDGER OK", 2, 30000), "no LEDGER OK before throttling");
    cr_assert_eq(dirty_log_start(h.vm->dirty_log), 0);
    static const int steps[] = { 20, 50, 80, 99, 0, 99, 30, 0 };
    for (unsigned round = 0; round < 3; round++) {
        for (unsigned s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
            set_all(h.vm, steps[s]);
            struct timespec hold = { .tv_nsec = 300000000 };
            nanosleep(&hold, NULL);     /* how long the step lasts (the stimulus), not a synchronization */
            /* Some progress under every step (a 99 % throttle still runs
             * 10 ms in each second). */
            cr_assert(harness_wait_all_vcpus_advance(h.vm, 1, 30000), "round %u step %d %%: the guest stopped",
                      round, steps[s]);
        }
        unsigned ok = console_count(&h.console, "LEDGER OK");
        cr_assert(console_wait_for(&h.console, "LEDGER OK", ok + 2, 30000), "round %u: the ledger stopped", round);
    }
    cr_assert_eq(dirty_log_stop(h.vm->dirty_log), 0);
    cr_assert_eq(console_count(&h.console, "MISMATCH"), 0);
    cr_assert_eq(atomic_load(&h.vm->last_exception_vector), -1, "the guest took an exception");
    cr_assert_eq(vm_get_state(h.vm), VM_STATE_RUNNING);
    cr_assert(!atomic_load(&h.vm->shutdown_requested), "the guest ended (triple fault?)");
    harness_vm_stop(&h);
}
