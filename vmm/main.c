/*
 * ringvm: parse the command line, build the VM, serve the API, run until
 * the guest powers off or SIGINT/SIGTERM arrives, then shut down cleanly.
 *
 * Threads: main (this file: start-up, --stats line, teardown), a signal
 * thread (sigwait for SIGINT/SIGTERM), the vCPU threads, and whatever the
 * subsystems start (harvesters, API, migration).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/server.h"
#include "bpf/probes.h"
#include "migration/migration.h"
#include "migration/postcopy_priority.h"
#include "migration/stream_window.h"
#include "migration/tls.h"
#include "migration/transport.h"
#include "vmm/console.h"
#include "vmm/crash_report.h"
#include "vmm/linux_guest.h"
#include "vmm/options.h"
#include "vmm/stats.h"
#include "vmm/vm.h"

/* Ownership: main fills it before creating the signal thread, which then
 * reads it until exit (static: the detached thread may still run while
 * exit() does). `vm` is shared: under `lock`, the signal thread asks it to
 * shut down and main sets it to NULL before destroying the VM, so a signal
 * that races a teardown (a source whose migration just completed) finds
 * no VM rather than a freed one. */
struct signal_thread {
    pthread_t thread;
    sigset_t signals;
    pthread_mutex_t lock;
    struct vm *vm;    /* under lock; NULL once main tears the VM down */
};

/* The VM goes away: the signal thread must not reach it any more. */
static void main_destroy_vm(struct signal_thread *signals, struct vm *vm)
{
    pthread_mutex_lock(&signals->lock);
    signals->vm = NULL;
    pthread_mutex_unlock(&signals->lock);
    vm_destroy(vm);
}

/*
 * Every SIGINT/SIGTERM counts. The first asks for a clean shutdown (exit
 * status 0 when it completes); a second one while shutting down means the
 * operator will not wait (a migration or a teardown taking too long): exit
 * at once with the status a shell gives a process killed by that signal,
 * 128 + signo (130 SIGINT, 143 SIGTERM). exit(), not _exit(): its atexit
 * handlers put a raw terminal (--serial stdio) back; no other cleanup runs
 * and nothing else is waited for.
 */
static void *signal_thread_main(void *argument)
{
    struct signal_thread *context = argument;
    pthread_setname_np(pthread_self(), "signals");
    unsigned received = 0;
    for (;;) {
        int signo = 0;
        int error = sigwait(&context->signals, &signo);
        if (error != 0) {
            /* Only EINVAL (a bad set) is documented: never happens with
             * this fixed set, and retrying would spin. */
            fprintf(stderr, "ringvm: sigwait(SIGINT, SIGTERM): %s: signals are no longer handled\n",
                    strerror(error));
            return NULL;
        }
        if (signo != SIGINT && signo != SIGTERM)
            continue;
        const char *name = signo == SIGINT ? "SIGINT" : "SIGTERM";
        if (++received == 1) {
            fprintf(stderr, "ringvm: %s received, shutting down (send it again to exit at once)\n", name);
            pthread_mutex_lock(&context->lock);
            if (context->vm != NULL)
                vm_request_shutdown(context->vm, 0);
            pthread_mutex_unlock(&context->lock);
            continue;
        }
        fprintf(stderr, "ringvm: %s received again while shutting down: exiting at once with status %d\n", name,
                128 + signo);
        exit(128 + signo);
    }
}

/* vm->uart_created: the console types into the UART that arrived. */
static void main_console_attach_uart(struct uart *uart, void *opaque)
{
    console_attach_uart(opaque, uart);
}

int main(int argc, char **argv)
{
    crash_report_install();
    struct ringvm_options options;
    char error[512];
    switch (options_parse(argc, argv, &options, error, sizeof(error))) {
    case OPTIONS_OK:
        break;
    case OPTIONS_EXIT:
        return 0;
    case OPTIONS_ERROR:
        fprintf(stderr, "ringvm: %s\n", error);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* A Linux guest's files are read and checked before anything else, so
     * a bad kernel, initrd or command line is a usage error (exit 2) with
     * the file named, on any machine. */
    struct linux_guest *linux_guest = NULL;
    if (options.vm.guest_kind == VM_GUEST_LINUX) {
        if (linux_guest_open(&linux_guest, &options.vm.linux_guest, options.vm.memory_bytes, error,
                             sizeof(error)) != 0) {
            fprintf(stderr, "ringvm: %s\n", error);
            return 2;
        }
        options.vm.linux_guest.loaded = linux_guest;
    }

    /* The TLS key files likewise (--tls-psk / --tls-creds): a missing,
     * malformed or group/other-accessible one is a usage error (exit 2)
     * before anything starts or listens. */
    struct mig_tls_credentials *incoming_tls = NULL;
    if (options.tls_psk != NULL || options.tls_creds != NULL) {
        struct mig_address address;
        char tls_error[1200];
        if (mig_address_parse(options.incoming, &address, tls_error, sizeof(tls_error)) != 0 ||
            mig_tls_credentials_load_for(&incoming_tls, MIG_TLS_SERVER, options.tls_psk, options.tls_creds,
                                         &address, tls_error, sizeof(tls_error)) != 0) {
            fprintf(stderr, "ringvm: %s: %s\n", options.tls_psk != NULL ? "--tls-psk" : "--tls-creds", tls_error);
            linux_guest_close(linux_guest);
            return 2;
        }
    }

    /* --postcopy-fifo: tried now, so an operator who asked for real-time
     * fault service learns at start, not mid-migration, that this process
     * may not have it (exit 2). */
    if (options.postcopy_fifo_priority != 0) {
        char fifo_error[300];
        if (postcopy_priority_check(options.postcopy_fifo_priority, fifo_error, sizeof(fifo_error)) != 0) {
            fprintf(stderr, "ringvm: --postcopy-fifo %u: %s\n", options.postcopy_fifo_priority, fifo_error);
            mig_tls_credentials_free(incoming_tls);
            linux_guest_close(linux_guest);
            return 2;
        }
        postcopy_priority_set(options.postcopy_fifo_priority);
    }
    stream_window_set_budget_us(options.postcopy_queue_budget_us);

    /* Every thread created from here on inherits SIGINT/SIGTERM blocked;
     * only the signal thread takes them. */
    static struct signal_thread signals = { .lock = PTHREAD_MUTEX_INITIALIZER };
    sigemptyset(&signals.signals);
    sigaddset(&signals.signals, SIGINT);
    sigaddset(&signals.signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals.signals, NULL);

    struct vm *vm = NULL;
    if (vm_create(&vm, &options.vm) != 0) {
        mig_tls_credentials_free(incoming_tls);
        linux_guest_close(linux_guest);
        return 1;
    }
    char host_mode[32], note[512];
    guest_memory_thp_host(false, host_mode, sizeof(host_mode));
    if (guest_memory_small_pages_note(&vm->memory, host_mode, note, sizeof(note)))
        fprintf(stderr, "ringvm: note: %s\n", note);
    /* No lock yet: pthread_create publishes this write to the new thread. */
    signals.vm = vm;
    int result = pthread_create(&signals.thread, NULL, signal_thread_main, &signals);
    if (result != 0) {
        fprintf(stderr, "ringvm: pthread_create(signal thread): %s\n", strerror(result));
        vm_destroy(vm);
        mig_tls_credentials_free(incoming_tls);
        linux_guest_close(linux_guest);
        return 1;
    }
    pthread_detach(signals.thread);

    /* Probes attach before vm_start so they see the first KVM_RUN. Without
     * BPF the VM runs on: warn once, say why, and keep the reason for
     * bpf.stats (vm->bpf_unavailable_reason; the API does not exist yet). */
    bool bpf_summary_due = false;
    if (options.bpf) {
        struct bpf_probes *probes = NULL;
        char reason[512];
        if (bpf_probes_create(&probes, vm, reason, sizeof(reason)) != 0) {
            fprintf(stderr, "ringvm: --bpf: BPF probes unavailable, running without them: %s\n", reason);
            snprintf(vm->bpf_unavailable_reason, sizeof(vm->bpf_unavailable_reason), "%.480s", reason);
        } else if (bpf_probes_start(probes, reason, sizeof(reason)) != 0) {
            fprintf(stderr, "ringvm: --bpf: BPF probes did not start, running without them: %s\n", reason);
            snprintf(vm->bpf_unavailable_reason, sizeof(vm->bpf_unavailable_reason), "probes did not start: %.480s",
                     reason);
            bpf_probes_destroy(probes);
        } else {
            bpf_probes_print_metrics(probes, stderr);
            atomic_store_explicit(&vm->bpf_probes, probes, memory_order_release);
            bpf_summary_due = true;
        }
    }

    /* The console (--serial stdio, --console unix:PATH) is ready before
     * the guest prints its first byte. */
    struct console *console = NULL;
    if (options.vm.serial.mode == SERIAL_STDIO || options.console_socket != NULL) {
        struct console_config console_config = {
            .stdio = options.vm.serial.mode == SERIAL_STDIO,
            .socket_path = options.console_socket,
        };
        if (console_create(&console, &vm->serial, vm->uart, &console_config) != 0) {
            main_destroy_vm(&signals, vm);
            mig_tls_credentials_free(incoming_tls);
            linux_guest_close(linux_guest);
            return 1;
        }
        /* A destination's Linux guest brings its UART with its state. */
        vm->uart_created = main_console_attach_uart;
        vm->uart_created_opaque = console;
        vm->console = console;
    }

    /* The API registers its VM state listener, so it comes before vm_start. */
    struct api_server *api = NULL;
    if (options.api_socket != NULL && api_server_create(&api, vm, options.api_socket) != 0) {
        console_destroy(console);
        main_destroy_vm(&signals, vm);
        mig_tls_credentials_free(incoming_tls);
        linux_guest_close(linux_guest);
        return 1;
    }
    if (vm_start(vm) != 0) {
        api_server_destroy(api);
        console_destroy(console);
        main_destroy_vm(&signals, vm);
        mig_tls_credentials_free(incoming_tls);
        linux_guest_close(linux_guest);
        return 1;
    }

    /* Destination: receive, restore and resume the guest, then run it like
     * any other. A failed or refused migration leaves nothing running. */
    struct mig_tls_credentials *tls_handed = incoming_tls;
    incoming_tls = NULL;    /* migration_set_incoming_tls owns it, even when it fails */
    if (options.incoming != NULL &&
        (migration_set_incoming_tls(vm, tls_handed) != 0 ||
         migration_set_incoming_stall_timeout(vm, options.incoming_stall_timeout_s * 1000u) != 0 ||
         migration_incoming_run(vm, options.incoming, api) != 0))
        vm_request_shutdown(vm, 1);

    struct stats_sampler sampler;
    stats_sampler_init(&sampler, vm);
    uint64_t started = vm_now_ns();
    for (;;) {
        if (vm_wait_for_shutdown_request(vm, 1000000000ULL))
            break;
        if (options.stats)
            stats_print_line(&sampler, stdout);
        /* Which probes are live is only known once the vCPUs have run:
         * say it once, after the first second (the attach report above
         * could only say what is attached). A bpf.stop meanwhile shows as
         * unavailable ("probes stopped"). */
        if (bpf_summary_due) {
            struct bpf_probes *probes = atomic_load_explicit(&vm->bpf_probes, memory_order_acquire);
            if (probes != NULL)
                bpf_probes_print_summary(probes, stderr);
            bpf_summary_due = false;
        }
        if (options.demo_seconds != 0 && vm_now_ns() - started >= options.demo_seconds * 1000000000ULL) {
            vm_request_shutdown(vm, 0);
            break;
        }
    }
    int exit_code = vm_wait(vm);
    migration_release(vm);
    if (api != NULL)
        api_server_destroy(api);
    console_destroy(console);
    main_destroy_vm(&signals, vm);
    linux_guest_close(linux_guest);
    return exit_code;
}
