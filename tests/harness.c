/* Shared test helpers; see harness.h. */
#include "tests/harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "bpf/probes.h"
#include "migration/migration.h"
#include "vmm/host.h"
#include "vmm/linux_boot.h"
#include "vmm/linux_guest.h"
#include "vmm/memory.h"
#include "vmm/size.h"

void harness_skip(const char *format, ...)
{
    char reason[512];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(reason, sizeof(reason), format, arguments);
    va_end(arguments);
    const char *suite = criterion_current_test != NULL ? criterion_current_test->category : "?";
    const char *test = criterion_current_test != NULL ? criterion_current_test->name : "?";
    /* One line per skip, printed by the test's own process at once:
     * Criterion shows its [SKIP] line only with --verbose. */
    fprintf(stderr, "[SKIP] %s::%s: %s\n", suite, test, reason);
    fflush(stderr);
    /* The reason travels to the runner in the test's stats (message),
     * where tests/failure_summary.c groups it. */
    cr_skip_test("%s", reason);
    abort();    /* not reached: cr_skip_test does not return */
}

void harness_require_free_huge_pages(uint64_t pages)
{
    uint64_t free_pages = guest_memory_free_huge_pages();
    if (free_pages < pages)
        harness_skip("needs %" PRIu64 " free 2 MiB huge pages, %" PRIu64 " free (as root: echo %" PRIu64
                     " > /proc/sys/vm/nr_hugepages)", pages, free_pages, pages);
}

void harness_require_thp(const struct guest_memory *memory)
{
    if (!guest_memory_thp_possible(memory)) {
        char mode[32];
        guest_memory_thp_policy(memory, mode, sizeof(mode));
        harness_skip("the host gives %s RAM no transparent huge pages (policy %s)",
                     ram_file_kind_name(memory->file_kind), mode);
    }
}

const char *harness_expected_ram_file(void)
{
    char mode[32];
    guest_memory_thp_host(false, mode, sizeof(mode));
    if (strcmp(mode, "never") != 0)
        return "memfd";
    FILE *status = fopen("/proc/self/status", "r");
    cr_assert_not_null(status, "fopen(/proc/self/status): %s", strerror(errno));
    char line[256];
    unsigned long long effective = 0;
    while (fgets(line, sizeof(line), status) != NULL)
        if (sscanf(line, "CapEff: %llx", &effective) == 1)
            break;
    fclose(status);
    return effective & (1ull << 21) ? "tmpfs" : "memfd";     /* CAP_SYS_ADMIN */
}

void harness_mapping_smaps(const void *start, char *flags, size_t flags_size, unsigned long *huge_kb)
{
    FILE *smaps = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(smaps, "fopen(/proc/self/smaps): %s", strerror(errno));
    char line[512];
    bool inside = false, found = false;
    if (flags != NULL)
        flags[0] = '\0';
    if (huge_kb != NULL)
        *huge_kb = 0;
    while (fgets(line, sizeof(line), smaps) != NULL) {
        unsigned long low, high, kb;
        /* A mapping's first line ("7f12...-7f13... rw-s ..."); field lines
         * ("AnonHugePages: ...") fail the '-' after the first number. */
        if (sscanf(line, "%lx-%lx ", &low, &high) == 2) {
            inside = low == (unsigned long)start;
            continue;
        }
        if (!inside)
            continue;
        if (huge_kb != NULL && (sscanf(line, "AnonHugePages: %lu kB", &kb) == 1 ||
                                sscanf(line, "ShmemPmdMapped: %lu kB", &kb) == 1))
            *huge_kb += kb;
        if (strncmp(line, "VmFlags:", 8) == 0) {     /* a mapping's last field */
            if (flags != NULL)
                snprintf(flags, flags_size, "%s", line + 8);
            found = true;
            break;
        }
    }
    fclose(smaps);
    cr_assert(found, "no mapping at %p in /proc/self/smaps", start);
}

unsigned long harness_mapping_huge_kb(const void *start)
{
    unsigned long huge_kb;
    harness_mapping_smaps(start, NULL, 0, &huge_kb);
    return huge_kb;
}

bool harness_kernel_at_least(unsigned major, unsigned minor, char *release, size_t release_size)
{
    struct utsname names;
    if (uname(&names) != 0)
        return false;
    if (release != NULL)
        snprintf(release, release_size, "%s", names.release);
    unsigned have_major = 0, have_minor = 0;
    if (sscanf(names.release, "%u.%u", &have_major, &have_minor) != 2)
        return false;
    return have_major > major || (have_major == major && have_minor >= minor);
}

void harness_pause_and_resume_waiting_guest(struct vm *vm)
{
    char release[128] = "";
    if (!harness_kernel_at_least(6, 2, release, sizeof(release))) {
        fprintf(stderr, "harness: Linux %s: a vCPU waiting for a post-copy page inside KVM_RUN cannot be kicked "
                        "before Linux 6.2 (no FOLL_INTERRUPTIBLE): pause and resume while the link is down not "
                        "checked\n", release);
        return;
    }
    int paused = vm_pause(vm);
    cr_assert_eq(paused, 0, "pausing a guest whose vCPUs wait for pages: %s (state %s)", strerror(-paused),
                 vm_state_name(vm_get_state(vm)));
    cr_assert_eq(vm_get_state(vm), VM_STATE_PAUSED);
    cr_assert_eq(vm_resume(vm), 0);
}

void harness_require_kvm(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        harness_skip("/dev/kvm unavailable: %s", strerror(errno));
    close(fd);
}

bool harness_bpf_capability(char *why, size_t why_size)
{
    const char *built_reason = NULL;
    if (!bpf_probes_built(&built_reason)) {
        snprintf(why, why_size, "BPF probes not built: %s", built_reason != NULL ? built_reason : "?");
        return false;
    }
    if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
        snprintf(why, why_size, "kernel has no BTF (/sys/kernel/btf/vmlinux: %s)", strerror(errno));
        return false;
    }
    /* The smallest thing the bpf() syscall does: a one-entry array map.
     * It fails only when the syscall is missing or not permitted to this
     * process, which is what "BPF is absent here" means. */
    union bpf_attr attributes;
    memset(&attributes, 0, sizeof(attributes));
    attributes.map_type = BPF_MAP_TYPE_ARRAY;
    attributes.key_size = 4;
    attributes.value_size = 4;
    attributes.max_entries = 1;
    long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attributes, sizeof(attributes));
    if (fd < 0) {
        int saved = errno;
        if (saved == ENOSYS)
            snprintf(why, why_size, "the kernel has no bpf() syscall (CONFIG_BPF_SYSCALL off)");
        else if (saved == EPERM || saved == EACCES)
            snprintf(why, why_size, "bpf() not permitted to this process (euid %u; needs root or CAP_BPF): %s",
                     (unsigned)geteuid(), strerror(saved));
        else
            snprintf(why, why_size, "bpf(BPF_MAP_CREATE) of a one-entry array fails here: %s", strerror(saved));
        return false;
    }
    close((int)fd);
    return true;
}

void harness_require_bpf(void)
{
    char why[256];
    if (!harness_bpf_capability(why, sizeof(why)))
        harness_skip("%s", why);
}

static void console_on_line(const char *line, size_t length, void *opaque)
{
    struct console_capture *console = opaque;
    pthread_mutex_lock(&console->lock);
    if (console->length + length + 2 > console->capacity) {
        size_t capacity = (console->capacity + length + 2) * 2;
        char *grown = realloc(console->text, capacity);
        if (grown == NULL) {
            pthread_mutex_unlock(&console->lock);
            return;
        }
        console->text = grown;
        console->capacity = capacity;
    }
    memcpy(console->text + console->length, line, length);
    console->length += length;
    console->text[console->length++] = '\n';
    console->text[console->length] = '\0';
    pthread_cond_broadcast(&console->grew);
    pthread_mutex_unlock(&console->lock);
}

static unsigned count_locked(struct console_capture *console, const char *needle)
{
    unsigned count = 0;
    if (console->text == NULL)
        return 0;
    for (const char *at = strstr(console->text, needle); at != NULL; at = strstr(at + 1, needle))
        count++;
    return count;
}

unsigned console_count(struct console_capture *console, const char *needle)
{
    pthread_mutex_lock(&console->lock);
    unsigned count = count_locked(console, needle);
    pthread_mutex_unlock(&console->lock);
    return count;
}

char *console_snapshot(struct console_capture *console)
{
    pthread_mutex_lock(&console->lock);
    char *copy = strdup(console->text ? console->text : "");
    pthread_mutex_unlock(&console->lock);
    return copy;
}

bool console_wait_for(struct console_capture *console, const char *needle, unsigned count, unsigned timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&console->lock);
    bool found;
    while (!(found = count_locked(console, needle) >= count)) {
        if (pthread_cond_timedwait(&console->grew, &console->lock, &deadline) == ETIMEDOUT) {
            found = count_locked(console, needle) >= count;
            break;
        }
    }
    pthread_mutex_unlock(&console->lock);
    return found;
}

/* linux: NULL for the built-in guest; else the kernel, initrd and cmdline
 * (paths and text used only when not incoming). */
struct harness_linux {
    const char *kernel, *initrd, *cmdline;
};

static void vm_create_with(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                           const char *dirty_mode, bool incoming, const struct harness_linux *linux_spec)
{
    memset(harness, 0, sizeof(*harness));
    pthread_mutex_init(&harness->console.lock, NULL);
    pthread_condattr_t attributes;
    pthread_condattr_init(&attributes);
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
    pthread_cond_init(&harness->console.grew, &attributes);
    pthread_condattr_destroy(&attributes);

    struct vm_config config;
    memset(&config, 0, sizeof(config));
    char error[256];
    /* "SIZE[,hugepages][,no-thp][,anonymous]": guest RAM and its backing
     * (--hugepages, --no-thp, --ram anonymous). */
    char size_text[64];
    snprintf(size_text, sizeof(size_text), "%s", memory);
    char *saved = NULL;
    strtok_r(size_text, ",", &saved);
    for (char *flag = strtok_r(NULL, ",", &saved); flag != NULL; flag = strtok_r(NULL, ",", &saved)) {
        if (strcmp(flag, "hugepages") == 0)
            config.memory_options.hugepages = true;
        else if (strcmp(flag, "no-thp") == 0)
            config.memory_options.no_thp = true;
        else if (strcmp(flag, "anonymous") == 0)
            config.memory_options.anonymous = true;
        else
            cr_assert_fail("harness: unknown memory flag '%s' in '%s'", flag, memory);
    }
    cr_assert_eq(size_parse(size_text, &config.memory_bytes, error, sizeof(error)), 0, "%s", error);
    config.vcpu_count = vcpus;
    config.create_irqchip = true;
    config.memory_options.numa_node = -1;
    config.serial.mode = SERIAL_NONE;
    cr_assert_eq(workload_spec_parse(workload, &config.workload, error, sizeof(error)), 0, "%s", error);
    dirty_log_config_defaults(&config.dirty_log);
    /* "ring:ENTRIES": ring mode with rings of that many entries. */
    char mode[32];
    snprintf(mode, sizeof(mode), "%s", dirty_mode);
    char *entries = strchr(mode, ':');
    if (entries != NULL) {
        *entries++ = '\0';
        config.dirty_log.ring_entries = (uint32_t)strtoul(entries, NULL, 10);
    }
    cr_assert_eq(dirty_log_mode_parse(mode, &config.dirty_log.mode, error, sizeof(error)), 0, "%s", error);
    config.incoming = incoming;
    if (linux_spec != NULL) {
        config.guest_kind = VM_GUEST_LINUX;
        if (!incoming) {
            config.linux_guest.kernel_path = linux_spec->kernel;
            config.linux_guest.initrd_path = linux_spec->initrd;
            config.linux_guest.user_cmdline = linux_spec->cmdline;
            cr_assert_eq(linux_guest_open(&harness->linux_guest, &config.linux_guest, config.memory_bytes, error,
                                          sizeof(error)), 0, "%s", error);
            config.linux_guest.loaded = harness->linux_guest;
        }
    }
    cr_assert_eq(vm_create(&harness->vm, &config), 0, "vm_create failed (see stderr)");
    harness->vm->serial.on_line = console_on_line;
    harness->vm->serial.on_line_opaque = &harness->console;
}

static void vm_create_for_test(struct harness_vm *harness, const char *memory, unsigned vcpus,
                               const char *workload, const char *dirty_mode, bool incoming)
{
    vm_create_with(harness, memory, vcpus, workload, dirty_mode, incoming, NULL);
}

void harness_vm_create(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                       const char *dirty_mode)
{
    vm_create_for_test(harness, memory, vcpus, workload, dirty_mode, false);
}

void harness_linux_vm_create(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *kernel,
                             const char *initrd, const char *cmdline, bool incoming)
{
    harness_require_kvm();
    struct harness_linux linux_spec = { .kernel = kernel, .initrd = initrd, .cmdline = cmdline };
    vm_create_with(harness, memory, vcpus, "idle", "ring", incoming, &linux_spec);
}

void harness_vm_create_incoming(struct harness_vm *harness, const char *memory, unsigned vcpus,
                                const char *workload, const char *dirty_mode)
{
    vm_create_for_test(harness, memory, vcpus, workload, dirty_mode, true);
}

void harness_vm_start(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                      const char *dirty_mode)
{
    harness_vm_create(harness, memory, vcpus, workload, dirty_mode);
    cr_assert_eq(vm_start(harness->vm), 0, "vm_start failed");
}

void harness_vm_stop(struct harness_vm *harness)
{
    if (harness->vm != NULL) {
        vm_request_shutdown(harness->vm, 0);
        vm_wait(harness->vm);
        vm_destroy(harness->vm);
        harness->vm = NULL;
    }
    linux_guest_close(harness->linux_guest);
    harness->linux_guest = NULL;
    free(harness->console.text);
    harness->console.text = NULL;
}

void harness_for_each_thread(void (*visit)(pid_t thread_id, const char *name, void *opaque), void *opaque)
{
    DIR *tasks = opendir("/proc/self/task");
    cr_assert_not_null(tasks, "opendir(/proc/self/task): %s", strerror(errno));
    struct dirent *entry;
    while ((entry = readdir(tasks)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        char path[300], name[64] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", entry->d_name);
        FILE *file = fopen(path, "r");
        if (file == NULL)
            continue;       /* the thread ended meanwhile */
        bool named = fgets(name, sizeof(name), file) != NULL;
        fclose(file);
        if (!named)
            continue;
        name[strcspn(name, "\n")] = '\0';
        visit((pid_t)atoi(entry->d_name), name, opaque);
    }
    closedir(tasks);
}

bool harness_wait_until(bool (*predicate)(void *argument), void *argument, unsigned timeout_ms)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (predicate(argument))
            return true;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed_ms = (now.tv_sec - start.tv_sec) * 1000L + (now.tv_nsec - start.tv_nsec) / 1000000L;
        if (elapsed_ms >= (long)timeout_ms)
            return predicate(argument);
        struct timespec pause = { .tv_sec = 0, .tv_nsec = 1000000L };
        nanosleep(&pause, NULL);
    }
}

uint64_t harness_pages_written(struct vm *vm, unsigned vcpu)
{
    struct ringvm_vcpu_stats stats;
    vm_read_guest_stats(vm, vcpu, &stats);
    return stats.pages_written;
}

struct advance_wait {
    struct vm *vm;
    uint64_t start[RINGVM_MAX_VCPUS];
    uint64_t delta;
};

static bool all_advanced(void *argument)
{
    struct advance_wait *wait = argument;
    for (unsigned i = 0; i < wait->vm->config.vcpu_count; i++)
        if (harness_pages_written(wait->vm, i) < wait->start[i] + wait->delta)
            return false;
    return true;
}

bool harness_wait_all_vcpus_advance(struct vm *vm, uint64_t delta, unsigned timeout_ms)
{
    struct advance_wait wait = { .vm = vm, .delta = delta };
    for (unsigned i = 0; i < vm->config.vcpu_count; i++)
        wait.start[i] = harness_pages_written(vm, i);
    return harness_wait_until(all_advanced, &wait, timeout_ms);
}

struct phase_wait {
    struct vm *vm;
    unsigned vcpu;
    uint64_t phase;
};

static bool phase_reached(void *argument)
{
    struct phase_wait *wait = argument;
    struct ringvm_vcpu_stats stats;
    vm_read_guest_stats(wait->vm, wait->vcpu, &stats);
    return stats.phase == wait->phase;
}

bool harness_wait_phase(struct vm *vm, unsigned vcpu, uint64_t phase, unsigned timeout_ms)
{
    struct phase_wait wait = { .vm = vm, .vcpu = vcpu, .phase = phase };
    return harness_wait_until(phase_reached, &wait, timeout_ms);
}

const char *harness_program(const char *name)
{
    static __thread char path[4096];
    const char *directory = getenv("RINGVM_BUILD_DIR");
    snprintf(path, sizeof(path), "%s/%s", directory != NULL ? directory : "build", name);
    return path;
}

/* ---- child processes ------------------------------------------------ */

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

void harness_spawn(struct harness_process *process, char *const argv[])
{
    harness_spawn_prepared(process, argv, NULL);
}

void harness_spawn_prepared(struct harness_process *process, char *const argv[], int (*prepare)(void))
{
    memset(process, 0, sizeof(*process));
    int out[2], err[2];
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
    cr_assert_eq(pipe2(err, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* A test killed by its Criterion .timeout (SIGKILL) or a crash
         * skips its fini: the child (a ringvm running a guest) must not
         * outlive it. PDEATHSIG fires when the forking THREAD exits, so
         * harness_spawn is called from the test's own thread (Criterion
         * runs every test in its own worker process, on its main thread),
         * never from a helper thread that ends first. It survives the
         * exec chain sh -> hosts.sh -> ip netns exec -> env -> ringvm
         * (none of them set-user-ID, none forks). If the parent died
         * before the prctl, nobody would deliver the signal: exit now. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
            fprintf(stderr, "prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
            _exit(127);
        }
        if (getppid() != parent)
            _exit(127);
        dup2(out[1], STDOUT_FILENO);
        dup2(err[1], STDERR_FILENO);
        if (prepare != NULL) {
            int failed = prepare();
            if (failed != 0) {
                fprintf(stderr, "harness: preparing the child for %s failed: %s\n", argv[0], strerror(failed));
                _exit(126);
            }
        }
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    process->pid = pid;
    process->stdout_fd = out[0];
    process->stderr_fd = err[0];
    process->out = calloc(1, 1);
    process->err = calloc(1, 1);
}

static void append_from(int *fd, char **text, size_t *length)
{
    char buffer[4096];
    ssize_t got = read(*fd, buffer, sizeof(buffer));
    if (got <= 0) {
        if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
            close(*fd);
            *fd = -1;
        }
        return;
    }
    char *grown = realloc(*text, *length + (size_t)got + 1);
    if (grown == NULL)
        return;
    memcpy(grown + *length, buffer, (size_t)got);
    *length += (size_t)got;
    grown[*length] = '\0';
    *text = grown;
}

/* Reads whatever is available within timeout_ms; false when both pipes closed. */
static bool pump(struct harness_process *process, int timeout_ms)
{
    struct pollfd fds[2] = { { .fd = process->stdout_fd, .events = POLLIN },
                             { .fd = process->stderr_fd, .events = POLLIN } };
    if (process->stdout_fd < 0 && process->stderr_fd < 0)
        return false;
    if (poll(fds, 2, timeout_ms) > 0) {
        if (fds[0].revents)
            append_from(&process->stdout_fd, &process->out, &process->out_length);
        if (fds[1].revents)
            append_from(&process->stderr_fd, &process->err, &process->err_length);
    }
    return true;
}

void harness_process_read_available(struct harness_process *process)
{
    /* pump reads at most 4 KiB per pipe; repeat until a pump finds nothing.
     * A full 64 KiB pipe takes 16 rounds; the bound of 32 keeps a child that
     * writes as fast as we read from holding the caller here for ever. */
    for (unsigned round = 0; round < 32; round++) {
        size_t before = process->out_length + process->err_length;
        if (!pump(process, 0) || process->out_length + process->err_length == before)
            return;
    }
}

static long elapsed_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000L + (now.tv_nsec - start->tv_nsec) / 1000000L;
}

unsigned harness_process_output_count(const struct harness_process *process, const char *needle)
{
    unsigned found = 0;
    for (const char *at = strstr(process->out, needle); at != NULL; at = strstr(at + 1, needle))
        found++;
    return found;
}

bool harness_process_wait_output(struct harness_process *process, const char *needle, unsigned count,
                                 unsigned timeout_ms)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (harness_process_output_count(process, needle) >= count)
            return true;
        long left = (long)timeout_ms - elapsed_since(&start);
        if (left <= 0 || !pump(process, (int)(left < 100 ? left : 100)))
            return false;
    }
}

int harness_process_wait_exit(struct harness_process *process, unsigned timeout_ms)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status = 0;
        pid_t done = waitpid(process->pid, &status, WNOHANG);
        if (done == process->pid) {
            while (pump(process, 0) && (process->stdout_fd >= 0 || process->stderr_fd >= 0))
                ;
            process->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (elapsed_since(&start) >= (long)timeout_ms) {
            kill(process->pid, SIGKILL);
            waitpid(process->pid, &status, 0);
            process->pid = 0;
            return -1;
        }
        if (!pump(process, 20)) {
            struct timespec pause = { .tv_sec = 0, .tv_nsec = 5000000L };
            nanosleep(&pause, NULL);
        }
    }
}

void harness_process_free(struct harness_process *process)
{
    if (process->pid > 0) {
        kill(process->pid, SIGKILL);
        waitpid(process->pid, NULL, 0);
    }
    if (process->stdout_fd >= 0)
        close(process->stdout_fd);
    if (process->stderr_fd >= 0)
        close(process->stderr_fd);
    free(process->out);
    free(process->err);
    memset(process, 0, sizeof(*process));
}

#define HARNESS_SETUID_FAILED "SETUID-FAILED"

void harness_ask_as_nobody(void (*ask)(char *answer, size_t size), char *answer, size_t size)
{
    if (geteuid() != 0)
        harness_skip("needs root to drop to an unprivileged user");
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) {
        close(fds[0]);
        char reply[512] = HARNESS_SETUID_FAILED;
        if (setgid(65534) == 0 && setuid(65534) == 0) {
            reply[0] = '\0';
            ask(reply, sizeof(reply));
        }
        ssize_t written = write(fds[1], reply, strlen(reply));
        _exit(written < 0);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], answer, size - 1);
    close(fds[0]);
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert_gt(got, 0, "no answer from the child");
    answer[got] = '\0';
    if (strcmp(answer, HARNESS_SETUID_FAILED) == 0)
        harness_skip("cannot drop privileges here");
}

uint64_t harness_digest_downtime_ms(uint64_t ram_bytes)
{
    uint64_t floor_ms = migration_digest_downtime_floor_ms(ram_bytes);
    return 4 * floor_ms > 300 ? 10 * floor_ms : 300;
}

unsigned harness_stall_ms(unsigned ms)
{
    uint64_t floor_ms = migration_digest_downtime_floor_ms(256ull << 20);
    return floor_ms > 250 ? 5 * ms : ms;
}

void harness_release_fault(const char *path)
{
    FILE *file = fopen(path, "w");
    cr_assert_not_null(file, "cannot create %s: %s", path, strerror(errno));
    cr_assert_eq(fclose(file), 0, "close %s: %s", path, strerror(errno));
}

unsigned harness_linux_timeout_ms(unsigned ms)
{
    return host_kvm_is_pvm() ? 3 * ms : ms;
}

const char *harness_linux_image_file(const char *name)
{
    static __thread char path[2][4096];
    static __thread int which;
    which ^= 1;
    char relative[256];
    snprintf(relative, sizeof(relative), "linux/%s", name);
    snprintf(path[which], sizeof(path[which]), "%s", harness_program(relative));
    if (access(path[which], R_OK) != 0)
        harness_skip("%s is missing (make linux-guest builds it): %s", path[which], strerror(errno));
    return path[which];
}

const char *harness_linux_kernel(void)
{
    return harness_linux_image_file(host_kvm_is_pvm() ? "vmlinux" : "bzImage");
}

const char *harness_linux_boot_protocol(void)
{
    return host_kvm_is_pvm() ? "vmlinux PVH" : "bzImage 64-bit";
}

const char *harness_linux_cmdline(const char *user)
{
    static __thread char text[4096];
    char *cmdline = linux_boot_cmdline(user, host_kvm_is_pvm());
    cr_assert_not_null(cmdline);
    snprintf(text, sizeof(text), "%s", cmdline);
    free(cmdline);
    return text;
}

/* ---- holding pauses in flight ------------------------------------------------------------- */

static pthread_mutex_t pause_hold_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pause_hold_cond = PTHREAD_COND_INITIALIZER;
static bool pause_hold_released;
static _Atomic unsigned pause_hold_waiting;

/* On a vCPU thread, before it parks. Wakes every 10 ms to notice its VM's
 * shutdown, so a failed test that never releases still lets vm_wait join. */
static void pause_hold_park_hook(struct vcpu *vcpu)
{
    atomic_fetch_add_explicit(&pause_hold_waiting, 1, memory_order_acq_rel);
    pthread_mutex_lock(&pause_hold_lock);
    while (!pause_hold_released && !atomic_load_explicit(&vcpu->vm->shutdown_requested, memory_order_acquire)) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += 10000000;
        if (deadline.tv_nsec >= 1000000000) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&pause_hold_cond, &pause_hold_lock, &deadline);
    }
    pthread_mutex_unlock(&pause_hold_lock);
    atomic_fetch_sub_explicit(&pause_hold_waiting, 1, memory_order_acq_rel);
}

void harness_hold_pauses(void)
{
    pthread_mutex_lock(&pause_hold_lock);
    pause_hold_released = false;
    pthread_mutex_unlock(&pause_hold_lock);
    atomic_store_explicit(&vm_vcpu_park_hook, pause_hold_park_hook, memory_order_release);
}

unsigned harness_pauses_held(void)
{
    return atomic_load_explicit(&pause_hold_waiting, memory_order_acquire);
}

static bool pauses_held_at_least(void *argument)
{
    return harness_pauses_held() >= *(const unsigned *)argument;
}

bool harness_wait_pauses_held(unsigned count, unsigned timeout_ms)
{
    return harness_wait_until(pauses_held_at_least, &count, timeout_ms);
}

void harness_release_pauses(void)
{
    atomic_store_explicit(&vm_vcpu_park_hook, NULL, memory_order_release);
    pthread_mutex_lock(&pause_hold_lock);
    pause_hold_released = true;
    pthread_cond_broadcast(&pause_hold_cond);
    pthread_mutex_unlock(&pause_hold_lock);
}
