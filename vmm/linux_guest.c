/*
 * A Linux guest from the command line to a VM ready to run (linux_guest.h).
 * The protocol work (bzImage/ELF parsing, zero page, e820, MP table, vCPU
 * registers) is vmm/linux_boot.c's; CPUID is vmm/cpuid.c's. This file owns
 * the files read from disk, the composed command line and the order of the
 * steps.
 */
#include "vmm/linux_guest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/cpuid.h"
#include "vmm/host.h"
#include "vmm/linux_boot.h"
#include "vmm/workload.h"

#define LINUX_GUEST_WORKLOAD_KEY "ringvm.workload="

struct linux_guest {
    char *kernel_path;
    char *initrd_path;              /* NULL = none */
    struct linux_boot_file kernel_file;
    struct linux_boot_file initrd_file;
    struct linux_kernel kernel;     /* points into kernel_file and kernel_path */
    char *cmdline;                  /* defaults + " " + --cmdline */
    char *workload;                 /* value of ringvm.workload=, NULL = none */
    struct linux_boot_entry entry;  /* filled by linux_guest_load */
    bool loaded;
};

/* The kernel takes its command line as printable ASCII in practice, and the
 * API reports it as a JSON string: refuse control characters and bytes
 * above 0x7e rather than pass them to either. */
static int check_cmdline_text(const char *text, char *error, size_t error_size)
{
    for (size_t i = 0; text[i] != '\0'; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c > 0x7e) {
            snprintf(error, error_size, "--cmdline: byte %zu is 0x%02x; the kernel command line must be "
                     "printable ASCII", i, c);
            return -EINVAL;
        }
    }
    return 0;
}

/* ringvm.workload=SPEC, checked with the same parser as --workload so a
 * typo fails now instead of inside the booted guest. The last one wins,
 * as the kernel's own parameters do. */
static int extract_workload(struct linux_guest *guest, char *error, size_t error_size)
{
    const char *found = NULL;
    for (const char *at = guest->cmdline; (at = strstr(at, LINUX_GUEST_WORKLOAD_KEY)) != NULL; at++)
        if (at == guest->cmdline || at[-1] == ' ')
            found = at + strlen(LINUX_GUEST_WORKLOAD_KEY);
    if (found == NULL)
        return 0;
    size_t length = strcspn(found, " ");
    guest->workload = strndup(found, length);
    if (guest->workload == NULL) {
        snprintf(error, error_size, "out of memory");
        return -ENOMEM;
    }
    struct workload_spec spec;
    char detail[256];
    if (workload_spec_parse(guest->workload, &spec, detail, sizeof(detail)) != 0) {
        snprintf(error, error_size, "--cmdline ringvm.workload=%s: %s", guest->workload, detail);
        return -EINVAL;
    }
    return 0;
}

int linux_guest_open(struct linux_guest **out, const struct vm_linux_guest_config *config,
                     uint64_t memory_bytes, char *error, size_t error_size)
{
    *out = NULL;
    if (config->kernel_path == NULL) {
        snprintf(error, error_size, "no --kernel given");
        return -EINVAL;
    }
    struct linux_guest *guest = calloc(1, sizeof(*guest));
    if (guest == NULL) {
        snprintf(error, error_size, "out of memory");
        return -ENOMEM;
    }
    int result = 0;
    guest->kernel_path = strdup(config->kernel_path);
    guest->initrd_path = config->initrd_path != NULL ? strdup(config->initrd_path) : NULL;
    guest->cmdline = linux_boot_cmdline(config->user_cmdline, host_kvm_is_pvm());
    if (guest->kernel_path == NULL || guest->cmdline == NULL ||
        (config->initrd_path != NULL && guest->initrd_path == NULL)) {
        snprintf(error, error_size, "out of memory");
        result = -ENOMEM;
    }
    if (result == 0 && config->user_cmdline != NULL)
        result = check_cmdline_text(config->user_cmdline, error, error_size);
    if (result == 0)
        result = linux_boot_read_file("--kernel", guest->kernel_path, &guest->kernel_file, error, error_size);
    if (result == 0)
        result = linux_kernel_parse(&guest->kernel, guest->kernel_path, guest->kernel_file.data,
                                    guest->kernel_file.size, error, error_size);
    if (result == 0 && guest->initrd_path != NULL)
        result = linux_boot_read_file("--initrd", guest->initrd_path, &guest->initrd_file, error, error_size);
    if (result == 0)
        result = linux_boot_check(&guest->kernel, memory_bytes, guest->initrd_path, guest->initrd_file.size,
                                  strlen(guest->cmdline), NULL, error, error_size);
    if (result == 0)
        result = extract_workload(guest, error, error_size);
    if (result != 0) {
        linux_guest_close(guest);
        return result;
    }
    *out = guest;
    return 0;
}

void linux_guest_close(struct linux_guest *guest)
{
    if (guest == NULL)
        return;
    linux_boot_file_free(&guest->kernel_file);
    linux_boot_file_free(&guest->initrd_file);
    free(guest->kernel_path);
    free(guest->initrd_path);
    free(guest->cmdline);
    free(guest->workload);
    free(guest);
}

const char *linux_guest_cmdline(const struct linux_guest *guest)
{
    return guest->cmdline;
}

const char *linux_guest_kernel_path(const struct linux_guest *guest)
{
    return guest->kernel_path;
}

const char *linux_guest_initrd_path(const struct linux_guest *guest)
{
    return guest->initrd_path;
}

const char *linux_guest_workload(const struct linux_guest *guest)
{
    return guest->workload;
}

const char *linux_guest_boot_protocol(const struct linux_guest *guest)
{
    if (guest->kernel.format == LINUX_KERNEL_BZIMAGE)
        return "bzImage 64-bit";
    return guest->kernel.mode == LINUX_BOOT_MODE_PVH ? "vmlinux PVH" : "vmlinux 64-bit";
}

int linux_guest_load(struct linux_guest *guest, struct guest_memory *memory, unsigned vcpu_count,
                     char *error, size_t error_size)
{
    int result = linux_boot_load(memory, &guest->kernel, guest->initrd_file.data, guest->initrd_file.size,
                                 guest->initrd_path, guest->cmdline, vcpu_count, &guest->entry, error,
                                 error_size);
    guest->loaded = result == 0;
    return result;
}

int linux_guest_setup_vcpu(const struct linux_guest *guest, const struct kvm_cpuid2 *supported, int vcpu_fd,
                           unsigned index, unsigned vcpu_count, char *error, size_t error_size)
{
    if (!guest->loaded) {
        snprintf(error, error_size, "vcpu %u: the kernel is not loaded yet (linux_guest_load first)", index);
        return -EINVAL;
    }
    /* CPUID first: KVM checks the MSRs and SREGS (long mode, NX) against it. */
    int result = cpuid_setup_vcpu(vcpu_fd, supported, index, vcpu_count, error, error_size);
    if (result != 0)
        return result;
    return linux_boot_setup_vcpu(vcpu_fd, index, &guest->entry, error, error_size);
}
