/*
 * Shared test helpers: real VMs in-process, console capture, waiting on a
 * condition with a timeout (never a bare sleep as synchronization).
 */
#ifndef RINGVM_TESTS_HARNESS_H
#define RINGVM_TESTS_HARNESS_H

#include <pthread.h>
#include <sys/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/vm.h"

/* The one way a test skips (issue 18): prints "[SKIP] suite::test: reason"
 * on stderr at once (visible without --verbose) and hands the reason to
 * Criterion, which carries it to the runner process; the POST_ALL report
 * hook (tests/failure_summary.c, tests/skip_summary.h) counts every skip
 * and groups the reasons just above the "Synthesis" line. A bare
 * cr_skip_test anywhere else in tests/ fails test_harness.c. */
void harness_skip(const char *format, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Skips the test, with the reason, unless `pages` 2 MiB huge pages are
 * free (HugePages_Free in /proc/meminfo; reserved by root in
 * /proc/sys/vm/nr_hugepages). */
void harness_require_free_huge_pages(uint64_t pages);
/* Skips the test, with the reason, unless the host gives memory's
 * advised mapping transparent huge pages (vmm/memory.h,
 * guest_memory_thp_policy). */
struct guest_memory;
void harness_require_thp(const struct guest_memory *memory);
/* The file default guest RAM should get on this host (vmm/ram_file.h),
 * predicted without ringvm's code: "memfd" where shmem_enabled grants
 * advised mappings huge pages or forbids them everywhere (deny, no THP),
 * else "tmpfs" where this process holds CAP_SYS_ADMIN (/proc/self/status
 * CapEff), else "memfd". */
const char *harness_expected_ram_file(void);
/* The mapping that starts at start, from /proc/self/smaps: its VmFlags
 * line (if flags is not NULL) and the kB of it mapped by huge pages
 * (AnonHugePages + ShmemPmdMapped, if huge_kb is not NULL). Fails the
 * test when there is no such mapping. */
void harness_mapping_smaps(const void *start, char *flags, size_t flags_size, unsigned long *huge_kb);
/* Its huge-page kB alone. */
unsigned long harness_mapping_huge_kb(const void *start);

/* Skips the calling Criterion test with a printed reason when /dev/kvm
 * cannot be opened read-write. */
void harness_require_kvm(void);

/* Whether the running kernel is at least major.minor (uname's release);
 * release (may be NULL) gets the release text for messages. */
bool harness_kernel_at_least(unsigned major, unsigned minor, char *release, size_t release_size);

/* Pauses and resumes a destination whose vCPUs wait for missing post-copy
 * pages (the link is down), asserting both work: on Linux 6.2+ a kick
 * interrupts a vCPU blocked on a page inside KVM_RUN. Older kernels keep
 * it blocked until the page arrives, so there the check is left out with
 * a line on stderr saying so (the rest of the test still runs). */
void harness_pause_and_resume_waiting_guest(struct vm *vm);

/* Skips only when BPF is absent here as a capability: this build has no
 * BPF loader, the kernel has no BTF (/sys/kernel/btf/vmlinux), the kernel
 * has no bpf() syscall, or this process may not use it (not root, no
 * CAP_BPF; probed with a one-entry array map). Where it returns, BPF
 * works: a load or attach failure of the probes is then a test failure
 * (with the verifier's last line), never a skip. */
void harness_require_bpf(void);
/* The same check without skipping: true when BPF is usable; otherwise
 * false with the reason in why. */
bool harness_bpf_capability(char *why, size_t why_size);

/* Console lines of one VM, appended by the vCPU threads. */
struct console_capture {
    pthread_mutex_t lock;
    pthread_cond_t grew;
    char *text;
    size_t length;
    size_t capacity;
};

struct linux_guest;
struct harness_vm {
    struct vm *vm;
    struct console_capture console;
    struct linux_guest *linux_guest;    /* harness_linux_vm_create's, closed by harness_vm_stop */
};

/* Parses the workload spec, creates the VM (serial discarded, lines
 * captured) and starts it. Fails the test on error. memory "SIZE", or
 * "SIZE,hugepages" / "SIZE,no-thp" / "SIZE,anonymous" (ringvm --hugepages / --no-thp / --ram anonymous);
 * dirty_mode "off", "ring" (or "ring:ENTRIES", rings of that many entries)
 * or "bitmap". */
void harness_vm_start(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                      const char *dirty_mode);
/* As above without starting; for tests that change the config. */
void harness_vm_create(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *workload,
                       const char *dirty_mode);
/* The same for the destination of a migration (config.incoming): no guest
 * is loaded; vm_start parks the vCPUs until the state arrives. */
void harness_vm_create_incoming(struct harness_vm *harness, const char *memory, unsigned vcpus,
                                const char *workload, const char *dirty_mode);
void harness_vm_stop(struct harness_vm *harness);

/* A Linux guest in this process, as `ringvm --kernel --initrd --cmdline`
 * makes it (the console's lines captured as above, '\r' dropped), not
 * started. incoming: the destination of a migration of such a guest: the
 * same devices (irqchip, PIT, UART, CMOS), no kernel loaded (kernel,
 * initrd and cmdline are then ignored). Skips when /dev/kvm is missing. */
/* build/linux/NAME (harness_program("linux/NAME")): the Linux guest image
 * of make linux-guest; skips the test, naming the file, when it cannot be
 * read. Two calls' results may be held at once (per thread). */
const char *harness_linux_image_file(const char *name);

/* The kernel of the image the Linux tests boot on this host: the bzImage
 * on VMX/SVM hosts; on PVM hosts (vmm/host.h) the PVH vmlinux, because
 * there the bzImage's XZ decompressor runs in KVM's instruction emulator
 * and printed no banner within minutes (guest/linux/README.md, "On PVM
 * hosts"). Skips like harness_linux_image_file. */
const char *harness_linux_kernel(void);

/* What vm.info's boot_protocol says for harness_linux_kernel(). */
const char *harness_linux_boot_protocol(void);

/* ringvm's kernel command line for `user` on this host (the defaults, the
 * PVM-host options where this host is one, then user): what vm.info's
 * cmdline says. Per-thread buffer, valid until the next call. */
const char *harness_linux_cmdline(const char *user);

void harness_linux_vm_create(struct harness_vm *harness, const char *memory, unsigned vcpus, const char *kernel,
                             const char *initrd, const char *cmdline, bool incoming);

/* Waits until the console holds `needle` at least `count` times. */
bool console_wait_for(struct console_capture *console, const char *needle, unsigned count,
                      unsigned timeout_ms);
unsigned console_count(struct console_capture *console, const char *needle);
/* Copy of the console text (caller frees). */
char *console_snapshot(struct console_capture *console);

/* Polls predicate(argument) every millisecond until true or timeout. */
bool harness_wait_until(bool (*predicate)(void *argument), void *argument, unsigned timeout_ms);

/* Calls visit for every thread of this process with its kernel id and name
 * (/proc/self/task/N/comm); a thread that ends meanwhile is skipped. */
void harness_for_each_thread(void (*visit)(pid_t thread_id, const char *name, void *opaque), void *opaque);

/* Holding pauses in flight (vm_vcpu_park_hook): after harness_hold_pauses,
 * every vCPU thread that sees a pause request waits before it parks (so the
 * pause cannot complete) until harness_release_pauses or its VM's shutdown.
 * harness_pauses_held counts the vCPU threads waiting now. One hold per
 * test process (Criterion runs each test in its own). */
void harness_hold_pauses(void);
unsigned harness_pauses_held(void);
bool harness_wait_pauses_held(unsigned count, unsigned timeout_ms);
void harness_release_pauses(void);

/* A downtime limit that a migration with verify_digest can meet here: the
 * default 300 ms where the floor migration.start measures for hashing
 * ram_bytes is at most a quarter of it, else ten times the floor (a slow,
 * emulated or shared host, scripts/nested-kvm.sh: the estimate made at
 * migration.start swung up to 4.6x this process's there). Tests that verify
 * digests prove correctness, not this machine's speed. */
uint64_t harness_digest_downtime_ms(uint64_t ram_bytes);

/* A stall timeout for tests that cut links on purpose: ms on the CI's
 * hosts, five times it where the same measure of this host's speed says
 * it is emulated (scripts/nested-kvm.sh, where a recovered post-copy
 * stream sat still for over a second with nothing wrong and a 1 s stall
 * paused it again, 2026-12-03). The measure: the digest floor of 256 MiB
 * (hashing it twice), ~50 ms on the Intel PVM hosts, ~100 ms on the AMD
 * ones, seconds under TCG; over 250 ms counts as emulated. (Over 75 ms
 * did until 2026-12-05, which put the AMD hosts under 5x: their link-cut
 * tests waited 40 s for a stall meant to take 8.) Scale every stall of a
 * test alike: the order in which the sides notice stays. */
unsigned harness_stall_ms(unsigned ms);

/* How long a Linux guest may take to reach a point of its boot or its
 * workload before a test calls it hung: ms where the guest's ring 0 runs on
 * the CPU, three times it on PVM hosts, whose instruction emulator runs the
 * guest kernel (vmm/host.c): /init at ~23 s on an Intel one; on an AMD one
 * 73 s when quiet and 92 s beside other tests with a 100 Hz tick, 42 s when
 * quiet with the 25 Hz tick (2026-12-04). A bound on hangs, never a
 * measure of speed. */
unsigned harness_linux_timeout_ms(unsigned ms);

/* Guest counters helpers. */
uint64_t harness_pages_written(struct vm *vm, unsigned vcpu);
/* Waits until every vCPU's pages_written exceeds its value at the call
 * by at least `delta`. */
bool harness_wait_all_vcpus_advance(struct vm *vm, uint64_t delta, unsigned timeout_ms);
bool harness_wait_phase(struct vm *vm, unsigned vcpu, uint64_t phase, unsigned timeout_ms);

/* Runs ask() in a child process that dropped to uid and gid 65534 (nobody)
 * and copies what it wrote into answer (NUL-terminated). Skips the test
 * with the reason when this process is not root or cannot drop. */
void harness_ask_as_nobody(void (*ask)(char *answer, size_t size), char *answer, size_t size);

/* Path of a built program ($RINGVM_BUILD_DIR/NAME, default build/NAME). */
const char *harness_program(const char *name);

/* Creates the file a destination started with RINGVM_FAULT_RELEASE=path
 * waits for at its fault point (migration/destination.c): it goes on. */
void harness_release_fault(const char *path);

/* A child process with its stdout and stderr captured through pipes. */
struct harness_process {
    pid_t pid;
    int stdout_fd;
    int stderr_fd;
    char *out;          /* everything read so far, NUL-terminated */
    size_t out_length;
    char *err;
    size_t err_length;
};

/* Starts argv[0] with argv (NULL-terminated). Fails the test on error.
 * The child gets PR_SET_PDEATHSIG SIGKILL: it dies with the calling
 * thread (a test killed by its timeout leaves no process behind), so call
 * this from the test's thread, not from a helper thread that exits first. */
void harness_spawn(struct harness_process *process, char *const argv[]);
/* The same, running prepare() in the child just before exec (e.g. to drop
 * capabilities); a non-zero errno from it makes the child print why and
 * exit 126. */
void harness_spawn_prepared(struct harness_process *process, char *const argv[], int (*prepare)(void));
/* How many times stdout holds `needle` so far (nothing is read). */
unsigned harness_process_output_count(const struct harness_process *process, const char *needle);
/* Reads the child's output until stdout holds `needle` `count` times or
 * the timeout passes. */
bool harness_process_wait_output(struct harness_process *process, const char *needle, unsigned count,
                                 unsigned timeout_ms);
/* Reads everything the child has written so far, without waiting. The
 * child's stdout and stderr are pipes that only these calls empty: a child
 * that writes more than a pipe holds (64 KiB) while the test does not read
 * blocks in write(2), whichever of its threads writes (a ringvm's vCPU
 * printing LEDGER OK, its migration thread logging an iteration). A test
 * that waits on anything else while such a child runs calls this in its
 * wait loop. */
void harness_process_read_available(struct harness_process *process);
/* Waits for exit (reading remaining output); returns the exit status, or
 * 128 + signal, or -1 on timeout (the child is then killed). */
int harness_process_wait_exit(struct harness_process *process, unsigned timeout_ms);
void harness_process_free(struct harness_process *process);

#endif
