#include "bench/lib/bench_vm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "migration/migration.h"
#include "migration/transport.h"
#include "vmm/vm.h"
#include "vmm/workload.h"

int bench_vm_start(struct vm **out, const struct bench_vm_options *options, const char *program)
{
    struct vm_config config;
    memset(&config, 0, sizeof(config));
    char error[256];
    config.memory_bytes = options->memory;
    config.vcpu_count = options->vcpus;
    config.create_irqchip = true;
    config.memory_options.numa_node = -1;
    config.memory_options.prealloc = options->prealloc;
    config.memory_options.anonymous = options->anonymous_ram;
    config.serial.mode = SERIAL_NONE;
    config.incoming = options->incoming;
    if (workload_spec_parse(options->workload, &config.workload, error, sizeof(error)) != 0) {
        fprintf(stderr, "%s: %s\n", program, error);
        return -1;
    }
    dirty_log_config_defaults(&config.dirty_log);
    config.dirty_log.mode = options->dirty_log;
    config.dirty_log.ring_reset_at_take = options->ring_reset_at_take;
    if (options->bitmap_clear_chunk != 0)
        config.dirty_log.bitmap_clear_chunk_bytes = options->bitmap_clear_chunk;
    if (vm_create(out, &config) != 0)
        return -1;
    if (vm_start(*out) != 0) {
        vm_destroy(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

uint64_t bench_guest_pages_written(struct vm *vm, unsigned vcpus)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < vcpus; i++) {
        struct ringvm_vcpu_stats stats;
        vm_read_guest_stats(vm, i, &stats);
        total += stats.pages_written;
    }
    return total;
}

static uint64_t monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

bool bench_wait_for_first_pass(struct vm *vm, unsigned vcpus, unsigned timeout_ms)
{
    uint64_t deadline = monotonic_ms() + timeout_ms;
    for (;;) {
        bool all = true;
        for (unsigned i = 0; i < vcpus; i++) {
            struct ringvm_vcpu_stats stats;
            vm_read_guest_stats(vm, i, &stats);
            all = all && stats.passes >= 1;
        }
        if (all)
            return true;
        if (monotonic_ms() >= deadline)
            return false;
        /* Polling the guest's counters: nothing to wait on. */
        struct timespec poll = { .tv_sec = 0, .tv_nsec = 10000000 };
        nanosleep(&poll, NULL);
    }
}

int bench_vm_listen(bool tcp, const char *program, char *address, size_t size)
{
    static unsigned counter;
    struct mig_address parsed;
    char error[256];
    memset(&parsed, 0, sizeof(parsed));
    if (tcp) {
        parsed.kind = MIG_ADDRESS_TCP;
        snprintf(parsed.host, sizeof(parsed.host), "127.0.0.1");
        snprintf(parsed.port, sizeof(parsed.port), "0");
    } else {
        /* "bench/migrate" -> "migrate": the path names the benchmark */
        const char *name = strrchr(program, '/') != NULL ? strrchr(program, '/') + 1 : program;
        snprintf(address, size, "unix:/tmp/ringvm-bench-%s-%d-%u.sock", name, (int)getpid(), counter++);
        if (mig_address_parse(address, &parsed, error, sizeof(error)) != 0) {
            fprintf(stderr, "%s: %s: %s\n", program, address, error);
            return -1;
        }
    }
    int fd = mig_listen(&parsed, error, sizeof(error));
    if (fd < 0) {
        fprintf(stderr, "%s: listening: %s\n", program, error);
        return -1;
    }
    if (tcp) {
        struct sockaddr_storage bound;
        socklen_t length = sizeof(bound);
        if (getsockname(fd, (struct sockaddr *)&bound, &length) != 0) {
            fprintf(stderr, "%s: getsockname: %s\n", program, strerror(errno));
            close(fd);
            return -1;
        }
        snprintf(address, size, "tcp:127.0.0.1:%u", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    }
    return fd;
}

void bench_vm_stop(struct vm *vm)
{
    if (vm == NULL)
        return;
    migration_release(vm);
    vm_request_shutdown(vm, 0);
    vm_wait(vm);
    vm_destroy(vm);
}
