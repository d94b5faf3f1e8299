/*
 * Shared test helpers: real VMs in-process, console capture, waiting on a
 * condition with a timeout (never a bare sleep as synchronization).
 */
#ifndef RINGVM_TESTS_HARNESS_H
#define RINGVM_TESTS_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/vm.h"

/* Skips the calling Criterion test with a printed reason when /dev/kvm
 * cannot be opened read-write. */
void harness_require_kvm(void);

/* Console lines of one VM, appended by the vCPU threads. */
struct console_capture {
    pthread_mutex_t lock;
    pthread_cond_t grew;
    char *text;
    size_t length;
    size_t capacity;
};

struct harness_vm {
    struct vm *vm;
    struct console_capture console;
};

/* Parses the workload spec, creates the VM (serial discarded, lines
 * captured) and starts it. Fails the test on error. dirty_mode "off",
 * "ring" or "bitmap". */
void harness_vm_start(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                      const char *dirty_mode);
/* As above without starting; for tests that change the config. */
void harness_vm_create(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                       const char *dirty_mode);
void harness_vm_stop(struct harness_vm *harness);

/* Waits until the console holds `needle` at least `count` times. */
bool console_wait_for(struct console_capture *console, const char *needle, unsigned count,
                      unsigned timeout_ms);
unsigned console_count(struct console_capture *console, const char *needle);
/* Copy of the console text (caller frees). */
char *console_snapshot(struct console_capture *console);

/* Polls predicate(argument) every millisecond until true or timeout. */
bool harness_wait_until(bool (*predicate)(void *argument), void *argument, unsigned timeout_ms);

/* Guest counters helpers. */
uint64_t harness_pages_written(struct vm *vm, unsigned vcpu);
/* Waits until every vCPU's pages_written exceeds its value at the call
 * by at least `delta`. */
bool harness_wait_all_vcpus_advance(struct vm *vm, uint64_t delta, unsigned timeout_ms);
bool harness_wait_phase(struct vm *vm, unsigned vcpu, uint64_t phase, unsigned timeout_ms);

/* Path of a built program ($RINGVM_BUILD_DIR/NAME, default build/NAME). */
const char *harness_program(const char *name);

#endif
