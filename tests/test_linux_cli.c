/* The Linux guest's command line: option combinations (pure parsing) and,
 * through the real build/ringvm, the file checks that run before /dev/kvm is
 * opened (exit 2 with the file named, on any machine). */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/harness.h"
#include "vmm/host.h"
#include "vmm/options.h"

static enum options_result parse(char *error, size_t error_size, struct ringvm_options *options, ...)
{
    char *argv[32] = { "ringvm" };
    int argc = 1;
    va_list arguments;
    va_start(arguments, options);
    for (char *argument = va_arg(arguments, char *); argument != NULL && argc < 31;
         argument = va_arg(arguments, char *))
        argv[argc++] = argument;
    va_end(arguments);
    return options_parse(argc, argv, options, error, error_size);
}

Test(linux_cli, kernel_initrd_cmdline_console_are_parsed)
{
    struct ringvm_options options;
    char error[512];
    cr_assert_eq(parse(error, sizeof(error), &options, "--kernel", "/k", "--initrd", "/i", "--cmdline",
                       "ringvm.workload=ledger,wss=16M quiet", "--console", "unix:/tmp/c.sock", "--serial",
                       "stdio", NULL),
                 OPTIONS_OK, "%s", error);
    cr_assert_eq(options.vm.guest_kind, VM_GUEST_LINUX);
    cr_assert_str_eq(options.vm.linux_guest.kernel_path, "/k");
    cr_assert_str_eq(options.vm.linux_guest.initrd_path, "/i");
    cr_assert_str_eq(options.vm.linux_guest.user_cmdline, "ringvm.workload=ledger,wss=16M quiet");
    cr_assert_str_eq(options.console_socket, "/tmp/c.sock");
    cr_assert_eq(options.vm.workload.kind, RINGVM_WORKLOAD_IDLE, "the VMM places no workload for Linux");

    cr_assert_eq(parse(error, sizeof(error), &options, NULL), OPTIONS_OK);
    cr_assert_eq(options.vm.guest_kind, VM_GUEST_BUILTIN);
    cr_assert_null(options.console_socket);
}

Test(linux_cli, refuses_combinations_that_make_no_sense)
{
    struct ringvm_options options;
    char error[512];
    cr_assert_eq(parse(error, sizeof(error), &options, "--initrd", "/i", NULL), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--initrd needs --kernel (the built-in guest takes --workload)");
    cr_assert_eq(parse(error, sizeof(error), &options, "--cmdline", "quiet", NULL), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--cmdline needs --kernel (the built-in guest takes --workload)");
    cr_assert_eq(parse(error, sizeof(error), &options, "--kernel", "/k", "--workload", "idle", NULL),
                 OPTIONS_ERROR);
    cr_assert_str_eq(error, "--workload runs the built-in guest and cannot be combined with --kernel; a Linux "
                     "guest image takes its workload on the kernel command line (--cmdline ringvm.workload=SPEC)");
    cr_assert_eq(parse(error, sizeof(error), &options, "--kernel", "/k", "--incoming", "unix:/tmp/x", NULL),
                 OPTIONS_ERROR);
    cr_assert_str_eq(error, "--kernel and --incoming: a destination receives its guest (kernel included) from the "
                     "source; give it --memory and --vcpus only");
    cr_assert_eq(parse(error, sizeof(error), &options, "--kernel", "", NULL), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--kernel: expected a file path");
    cr_assert_eq(parse(error, sizeof(error), &options, "--console", "tcp:1.2.3.4:5", NULL), OPTIONS_ERROR);
    cr_assert_str_eq(error, "--console 'tcp:1.2.3.4:5': expected unix:PATH (a path of 1 to 107 bytes)");
    cr_assert_eq(parse(error, sizeof(error), &options, "--console", "unix:", NULL), OPTIONS_ERROR);
}

/* ---- through build/ringvm: checked before /dev/kvm is opened ---------- */

/* Runs build/ringvm with argv (NULL-terminated, without argv[0]) and
 * expects exit 2 with exactly `message` on stderr. */
static void expect_usage_error(const char *message, ...)
{
    char *argv[16] = { (char *)harness_program("ringvm") };
    int argc = 1;
    va_list arguments;
    va_start(arguments, message);
    for (char *argument = va_arg(arguments, char *); argument != NULL && argc < 15;
         argument = va_arg(arguments, char *))
        argv[argc++] = argument;
    va_end(arguments);
    struct harness_process process;
    harness_spawn(&process, argv);
    int status = harness_process_wait_exit(&process, 10000);
    cr_assert_eq(status, 2, "exit %d, stderr: %s", status, process.err);
    char expected[1024];
    snprintf(expected, sizeof(expected), "ringvm: %s\n", message);
    cr_assert_str_eq(process.err, expected);
    harness_process_free(&process);
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *file = fopen(path, "wb");
    cr_assert_not_null(file, "fopen %s", path);
    cr_assert_eq(fwrite(data, 1, size, file), size);
    cr_assert_eq(fclose(file), 0);
}

Test(linux_cli, bad_files_exit_2_naming_the_file)
{
    char directory[] = "/tmp/ringvm-linux-cli-XXXXXX";
    cr_assert_not_null(mkdtemp(directory));
    char text_file[128];
    snprintf(text_file, sizeof(text_file), "%s/notes.txt", directory);
    write_file(text_file, "not a kernel\n", 13);

    char message[512];
    snprintf(message, sizeof(message), "--kernel %s: not a bzImage (no \"HdrS\" at 0x202) nor an x86-64 ELF",
             text_file);
    expect_usage_error(message, "--kernel", text_file, NULL);
    snprintf(message, sizeof(message), "--kernel %s/absent: No such file or directory", directory);
    char absent[160];
    snprintf(absent, sizeof(absent), "%s/absent", directory);
    expect_usage_error(message, "--kernel", absent, NULL);
    snprintf(message, sizeof(message), "--kernel %s: not a regular file", directory);
    expect_usage_error(message, "--kernel", directory, NULL);
    expect_usage_error("--cmdline: byte 5 is 0x1b; the kernel command line must be printable ASCII",
                       "--kernel", text_file, "--cmdline", "quiet\033[2J", NULL);
    unlink(text_file);
    rmdir(directory);
}


Test(linux_cli, real_kernel_with_bad_initrd_cmdline_or_truncation)
{
    const char *kernel = harness_linux_image_file("bzImage");
    char directory[] = "/tmp/ringvm-linux-cli-XXXXXX";
    cr_assert_not_null(mkdtemp(directory));
    char missing[160], large[160], truncated[160], message[1024];
    snprintf(missing, sizeof(missing), "%s/missing.cpio.gz", directory);
    snprintf(large, sizeof(large), "%s/large.cpio.gz", directory);
    snprintf(truncated, sizeof(truncated), "%s/bzImage", directory);

    snprintf(message, sizeof(message), "--initrd %s: No such file or directory", missing);
    expect_usage_error(message, "--kernel", kernel, "--initrd", missing, NULL);

    /* A 40 MiB initrd cannot fit a 48 MiB guest beside the kernel (whose
     * run-time area ends near 30 MiB); a sparse file: no disk. */
    int fd = open(large, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 40 << 20), 0);
    close(fd);
    struct harness_process process;
    char *argv[] = { (char *)harness_program("ringvm"), "--kernel", (char *)kernel, "--initrd", large,
                     "--memory", "48M", NULL };
    harness_spawn(&process, argv);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    /* Where the kernel's run-time area ends depends on the kernel build. */
    snprintf(message, sizeof(message), "ringvm: --initrd %s: 40 MiB does not fit in 48 MiB of guest RAM: it must "
             "lie above the kernel (up to 0x", large);
    cr_assert_eq(strncmp(process.err, message, strlen(message)), 0, "stderr: %s", process.err);
    const char *tail = ") and below 48 MiB (the end of guest RAM)\n";
    cr_assert(strlen(process.err) > strlen(tail) &&
              strcmp(process.err + strlen(process.err) - strlen(tail), tail) == 0, "stderr: %s", process.err);
    harness_process_free(&process);

    /* Over the kernel's cmdline_size (2047 for x86). */
    char *long_cmdline = malloc(3001);
    memset(long_cmdline, 'x', 3000);
    long_cmdline[3000] = '\0';
    char *argv_long[] = { (char *)harness_program("ringvm"), "--kernel", (char *)kernel, "--cmdline",
                          long_cmdline, NULL };
    harness_spawn(&process, argv_long);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    /* 3000 bytes plus ringvm's defaults (with the PVM-host options where
     * this host is one) and a space; 2047 is x86's COMMAND_LINE_SIZE - 1. */
    size_t defaults = strlen("console=ttyS0 reboot=k panic=1 pci=off ") +
                      (host_kvm_is_pvm() ? strlen("noxsave clearcpuid=popcnt,cx16,smap ") : 0);
    snprintf(message, sizeof(message), "ringvm: --cmdline: %zu bytes, the kernel accepts at most 2047\n",
             defaults + 3000);
    cr_assert_str_eq(process.err, message);
    harness_process_free(&process);
    free(long_cmdline);

    /* The first 64 KiB of the real image: the header promises more. */
    FILE *source = fopen(kernel, "rb");
    cr_assert_not_null(source);
    static uint8_t head[65536];
    cr_assert_eq(fread(head, 1, sizeof(head), source), sizeof(head));
    fclose(source);
    write_file(truncated, head, sizeof(head));
    char *argv_truncated[] = { (char *)harness_program("ringvm"), "--kernel", truncated, NULL };
    harness_spawn(&process, argv_truncated);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    /* The project's bzImage is exactly as long as its header says. */
    struct stat status;
    cr_assert_eq(stat(kernel, &status), 0);
    snprintf(message, sizeof(message), "ringvm: --kernel %s: truncated: 65536 bytes, the header says %lld\n",
             truncated, (long long)status.st_size);
    cr_assert_str_eq(process.err, message);
    harness_process_free(&process);

    /* A typo in the guest's workload is caught before boot. */
    char *argv_workload[] = { (char *)harness_program("ringvm"), "--kernel", (char *)kernel, "--cmdline",
                              "ringvm.workload=ledger,wss=12Q", NULL };
    harness_spawn(&process, argv_workload);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    cr_assert_eq(strncmp(process.err, "ringvm: --cmdline ringvm.workload=ledger,wss=12Q: ", 50), 0, "stderr: %s",
                 process.err);
    harness_process_free(&process);

    unlink(large);
    unlink(truncated);
    rmdir(directory);
}
