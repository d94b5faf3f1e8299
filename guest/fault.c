/* The `fault` workload: raise one exception on purpose so tests can check
 * that the IDT reports it (vector, error code, RIP) instead of hanging.
 * Works in ring 0 (during setup) and ring 3. */
#include "guest/guest.h"

static inline uint16_t current_privilege_level(void)
{
    uint16_t selector;
    __asm__ volatile("mov %%cs, %0" : "=r"(selector));
    return selector & 3;
}

void fault_raise(uint32_t kind)
{
    switch (kind) {
    case RINGVM_FAULT_UD:
        __asm__ volatile("ud2");
        break;
    case RINGVM_FAULT_PF:
        /* The null page is the one page the VMM maps not-present. */
        __asm__ volatile("movq (%0), %%rax" : : "r"((uint64_t)0) : "rax", "memory");
        /* Still here: PVH boot maps the null page (its 2 MiB first page).
         * 508 GiB is outside both identity maps. */
        __asm__ volatile("movq (%0), %%rax" : : "r"(0x7f00000000ULL) : "rax", "memory");
        break;
    case RINGVM_FAULT_DE:
        __asm__ volatile("xor %%edx, %%edx\n\t"
                         "xor %%ecx, %%ecx\n\t"
                         "mov $1, %%eax\n\t"
                         "div %%ecx"
                         : : : "rax", "rcx", "rdx");
        break;
    case RINGVM_FAULT_BP:
        if ((current_privilege_level() & 3) == 0) {
            /* PVM hosts cannot emulate int3 at CPL 0 (KVM_EXIT_INTERNAL_ERROR,
             * emulation failure), so ring 0 builds the frame the CPU would
             * push for int3 and enters the #BP stub: the report is the same
             * (vector 3, RIP after the breakpoint, CS 0x08). */
            __asm__ volatile("mov %%ss, %%eax\n\t"
                             "push %%rax\n\t"
                             "lea 8(%%rsp), %%rax\n\t"
                             "push %%rax\n\t"
                             "pushfq\n\t"
                             "mov %%cs, %%eax\n\t"
                             "push %%rax\n\t"
                             "lea 1f(%%rip), %%rax\n\t"
                             "push %%rax\n\t"
                             "jmp guest_exception_stubs + 3 * %c0\n"
                             "1:"
                             : : "i"(GUEST_EXCEPTION_STUB_SIZE) : "rax", "memory");
        } else {
            __asm__ volatile("int3");
        }
        break;
    default:
        __asm__ volatile("ud2");    /* unknown kind: still an exception, not a hang */
        break;
    }
}
