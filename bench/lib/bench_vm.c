#include "bench/lib/bench_vm.h"

#include <stdio.h>
#include <string.h>

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
    config.serial.mode = SERIAL_NONE;
    config.incoming = options->incoming;
    if (workload_spec_parse(options->workload, &config.workload, error, sizeof(error)) != 0) {
        fprintf(stderr, "%s: %s\n", program, error);
        return -1;
    }
    dirty_log_config_defaults(&config.dirty_log);
    config.dirty_log.mode = options->dirty_log;
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
