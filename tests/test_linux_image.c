/*
 * The Linux guest image (make linux-guest: build/linux/bzImage, vmlinux,
 * initramfs.cpio) booted under QEMU's software emulator (TCG, so no
 * /dev/kvm is needed): the kernel banner, /init, two LEDGER OK lines per
 * vCPU from the workload program, and `poweroff` typed on the console
 * ending QEMU. Both entry paths on -M pc: the bzImage (64-bit boot
 * protocol through SeaBIOS's linuxboot) and the vmlinux ELF (QEMU's PVH
 * entry). Not -M microvm: without KVM it has no clock the kernel can
 * calibrate the TSC against (no HPET, ACPI PM timer or port 0x61), and
 * boot stops there. Prints the boot times it saw.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/harness.h"

#define LINUX_IMAGE_QEMU "qemu-system-x86_64"
#define LINUX_IMAGE_CMDLINE "console=ttyS0 reboot=k panic=1 ringvm.workload=ledger,wss=16M,verify=1"
/* TCG on a busy 2-core machine: boot ~5-20 s, then two verify periods. */
#define LINUX_IMAGE_BOOT_TIMEOUT_MS 120000
#define LINUX_IMAGE_POWEROFF_TIMEOUT_MS 60000

/* The read end of the pipe that becomes QEMU's stdin (its serial RX),
 * handed to the child by image_prepare_stdin; written only before spawn. */
static int image_stdin_read_fd = -1;

static int image_prepare_stdin(void)
{
    if (dup2(image_stdin_read_fd, STDIN_FILENO) < 0)
        return errno;
    return 0;
}

/* Full path of qemu-system-x86_64 from PATH, or NULL. */
static const char *image_find_qemu(void)
{
    static char found[4096];
    const char *path = getenv("PATH");
    char copy[4096];
    snprintf(copy, sizeof(copy), "%s", path != NULL ? path : "/usr/bin:/bin");
    char *saveptr = NULL;
    for (char *directory = strtok_r(copy, ":", &saveptr); directory != NULL;
         directory = strtok_r(NULL, ":", &saveptr)) {
        snprintf(found, sizeof(found), "%s/%s", directory, LINUX_IMAGE_QEMU);
        if (access(found, X_OK) == 0)
            return found;
    }
    return NULL;
}

static char *image_file(const char *name)
{
    char *path = strdup(harness_linux_image_file(name));
    cr_assert_not_null(path);
    return path;
}

static long image_elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000L + (now.tv_nsec - start->tv_nsec) / 1000000L;
}

/* LEDGER OK lines of one vCPU in the console text (lines end in \r\n on
 * a tty); fails the test on any line that mentions LEDGER but is not OK. */
static unsigned image_ledger_ok(const char *console, unsigned vcpu)
{
    char suffix[32];
    snprintf(suffix, sizeof(suffix), " vcpu=%u", vcpu);
    unsigned found = 0;
    for (const char *at = strstr(console, "LEDGER "); at != NULL; at = strstr(at + 1, "LEDGER ")) {
        const char *end = strpbrk(at, "\r\n");
        if (end == NULL)
            break;      /* a line still being written */
        size_t length = (size_t)(end - at);
        cr_assert(strncmp(at, "LEDGER OK pages=2048 gen=", 25) == 0, "not a LEDGER OK line: %.*s", (int)length, at);
        size_t suffix_length = strlen(suffix);
        if (length > suffix_length && memcmp(end - suffix_length, suffix, suffix_length) == 0)
            found++;
    }
    return found;
}

struct image_boot {
    const char *machine;        /* QEMU -M */
    const char *kernel;         /* "bzImage" or "vmlinux" (in build/linux/) */
};

static void image_boot_and_power_off(const struct image_boot *boot)
{
    const char *qemu = image_find_qemu();
    if (qemu == NULL)
        harness_skip(LINUX_IMAGE_QEMU " is not installed (scripts/install-deps.sh installs qemu-system-x86)");
    /* Inside scripts/nested-kvm.sh this would be QEMU's emulator inside
     * QEMU's emulator: minutes per boot. The same binary ran it on the host. */
    if (getenv("RINGVM_NESTED_KVM") != NULL)
        harness_skip("inside scripts/nested-kvm.sh: the image's QEMU boot runs on the host (make test), "
                     "not under emulation twice");
    char *kernel = image_file(boot->kernel);
    char *initrd = image_file("initramfs.cpio");

    int input[2];
    cr_assert_eq(pipe2(input, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
    image_stdin_read_fd = input[0];
    char *argv[] = { (char *)qemu, "-accel", "tcg", "-M", (char *)boot->machine, "-smp", "2", "-m", "512M",
                     "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
                     "-kernel", kernel, "-initrd", initrd, "-append", LINUX_IMAGE_CMDLINE, NULL };
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    struct harness_process process;
    harness_spawn_prepared(&process, argv, image_prepare_stdin);
    close(input[0]);

    cr_assert(harness_process_wait_output(&process, "Linux version 6.1", 1, LINUX_IMAGE_BOOT_TIMEOUT_MS),
              "no kernel banner; console:\n%s\nstderr:\n%s", process.out, process.err);
    long banner_ms = image_elapsed_ms(&start);
    cr_assert(harness_process_wait_output(&process, "ringvm-init: /init started", 1, LINUX_IMAGE_BOOT_TIMEOUT_MS),
              "/init did not run; console:\n%s\nstderr:\n%s", process.out, process.err);
    long init_ms = image_elapsed_ms(&start);
    cr_assert(harness_process_wait_output(&process, "LEDGER OK", 1, LINUX_IMAGE_BOOT_TIMEOUT_MS),
              "no LEDGER OK; console:\n%s\nstderr:\n%s", process.out, process.err);
    long ledger_ms = image_elapsed_ms(&start);

    /* Two verify passes on each vCPU (the thread of vCPU N prints vcpu=N). */
    unsigned total = 1;
    while (image_ledger_ok(process.out, 0) < 2 || image_ledger_ok(process.out, 1) < 2) {
        long left = LINUX_IMAGE_BOOT_TIMEOUT_MS - image_elapsed_ms(&start);
        cr_assert(left > 0 && harness_process_wait_output(&process, "LEDGER OK", ++total, (unsigned)left),
                  "fewer than two LEDGER OK per vCPU; console:\n%s", process.out);
    }
    cr_assert(strstr(process.out, "LEDGER MISMATCH") == NULL, "console:\n%s", process.out);
    cr_assert(strstr(process.out, "LEDGER FAIL") == NULL, "console:\n%s", process.out);
    cr_assert(strstr(process.out, "ringvm-workload: running without the ringvm channel") != NULL,
              "the workload program did not say it runs without ringvm; console:\n%s", process.out);
    cr_assert(strstr(process.out, "2 CPUs") != NULL, "/init did not see 2 CPUs; console:\n%s", process.out);

    /* `poweroff` typed on the console: the workload program's poweroff,
     * whose reboot(2) fallback powers off through ACPI under QEMU. */
    static const char command[] = "poweroff\n";
    cr_assert_eq(write(input[1], command, sizeof(command) - 1), (ssize_t)(sizeof(command) - 1), "write: %s",
                 strerror(errno));
    long poweroff_start_ms = image_elapsed_ms(&start);
    int status = harness_process_wait_exit(&process, LINUX_IMAGE_POWEROFF_TIMEOUT_MS);
    cr_assert_eq(status, 0, "QEMU did not exit 0 after poweroff (status %d); console:\n%s\nstderr:\n%s", status,
                 process.out, process.err);
    cr_assert(strstr(process.out, "reboot: Power down") != NULL, "the kernel did not power down; console:\n%s",
              process.out);
    long poweroff_ms = image_elapsed_ms(&start) - poweroff_start_ms;
    close(input[1]);

    /* Measurements for docs/benchmarks.md (host wall clock from QEMU start). */
    fprintf(stderr,
            "[INFO] linux_image %s linux/%s (TCG, 2 vCPUs): banner %ld ms, /init %ld ms, first LEDGER OK %ld ms, "
            "poweroff %ld ms\n",
            boot->machine, boot->kernel, banner_ms, init_ms, ledger_ms, poweroff_ms);
    harness_process_free(&process);
    free(kernel);
    free(initrd);
}

Test(linux_image, bzimage_boots_runs_the_ledger_and_powers_off, .timeout = 300)
{
    const struct image_boot boot = { .machine = "pc", .kernel = "bzImage" };
    image_boot_and_power_off(&boot);
}

Test(linux_image, vmlinux_pvh_boots_runs_the_ledger_and_powers_off, .timeout = 300)
{
    const struct image_boot boot = { .machine = "pc", .kernel = "vmlinux" };
    image_boot_and_power_off(&boot);
}
