/*
 * Ring 3: where every workload runs (natively fast on PVM hosts). Reports
 * phases through the stats page and the doorbell; a finished vCPU parks in
 * ring 0 through the DPL-3 halt gate, so it stops without writing memory.
 */
#include "guest/guest.h"

static void set_phase(const struct ringvm_bootinfo *info, unsigned vcpu, enum ringvm_vcpu_phase phase)
{
    vcpu_stats(info, vcpu)->phase = phase;
    doorbell_send(info, RINGVM_CMD_PHASE, phase);
}

static __attribute__((noreturn)) void halt_vcpu(void)
{
    for (;;)
        __asm__ volatile("int $" GUEST_STRINGIFY(GUEST_VECTOR_HALT) : : : "memory");
}

void ring3_main(uint64_t vcpu_index, const struct ringvm_bootinfo *info)
{
    unsigned vcpu = (unsigned)vcpu_index;
    if (info->workload == RINGVM_WORKLOAD_FAULT) {
        fault_raise(info->fault_kind);  /* fault_ring 3: first thing in ring 3 */
        halt_vcpu();
    }

    set_phase(info, vcpu, RINGVM_PHASE_RING3);
    switch (info->workload) {
    case RINGVM_WORKLOAD_DIRTIER:
        dirtier_run(vcpu, info);
        set_phase(info, vcpu, RINGVM_PHASE_DONE);
        break;
    case RINGVM_WORKLOAD_LEDGER:
        ledger_run(vcpu, info);
        set_phase(info, vcpu, RINGVM_PHASE_DONE);
        ledger_verify_forever(vcpu, info);
        break;
    default:    /* idle: halts right away */
        break;
    }
    halt_vcpu();
}
