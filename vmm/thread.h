/*
 * Helper threads that take no signals but the fatal ones: the console
 * thread, the API server's threads and the migration threads they start.
 * SIGINT/SIGTERM belong to the main thread's signal handling and the vCPU
 * kick signal to the vCPU threads; a helper that could take them would steal
 * them. The fatal ones (crash_report.h) stay open so a crash on a helper
 * still prints its report.
 */
#ifndef RINGVM_VMM_THREAD_H
#define RINGVM_VMM_THREAD_H

#include <pthread.h>

/* pthread_create with every blockable signal blocked in the new thread
 * (the caller's mask is restored before this returns). 0 or the error
 * number pthread_create returned. */
int thread_create_without_signals(pthread_t *thread, void *(*start)(void *), void *argument);

#endif
