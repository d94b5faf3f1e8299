/*
 * Fault matrix (issue 7, short form): real ringvm processes on two emulated
 * hosts (tests/netns/hosts.sh: network namespaces joined by a veth pair)
 * migrating over TCP, with a fault injected at a deterministic point:
 *
 *   - the destination SIGKILLed, or the link cut (veth down), at: setup,
 *     iteration 0, a later iteration, stop-and-copy, after the last byte
 *     before the ack. The destination stops at the point through its
 *     test-only hook (RINGVM_FAULT_INJECT=POINT, migration/migration.c);
 *     the test injects the fault, then releases it.
 *   - a stalled link (100 % loss, nftables): the source's stall timeout
 *     (stall_timeout_s=2) fails the migration instead of hanging.
 *   - the source SIGKILLed during stop-and-copy: the destination exits 1 and
 *     never runs the half-received guest.
 *
 * For each: the guest runs on exactly one side, the ledger keeps verifying
 * there (LEDGER OK continues, no MISMATCH), migration.progress reports the
 * state and the cause, and a later migration from where the guest runs
 * succeeds (digests equal, LEDGER OK on the new destination).
 *
 * Also: migration.cancel at 50 seeded random moments (in-process VM, fake
 * draining destination), then a real migration; the API socket file deleted
 * while the VM runs, and API clients killed mid-command.
 *
 * Tests that need root and namespaces skip with the reason. Every test has
 * its own namespace pair, removed in the fini even when the test fails.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "api/server.h"
#include "migration/migration.h"
#include "migration/protocol.h"
#include "migration/transport.h"
#include "dirtyring/dirty_log.h"
#include "tests/harness.h"
#include "vmm/vcpu.h"

#define HOSTS "tests/netns/hosts.sh"
#define MAX_PROCS 6

static uint64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* ---- fixture: namespaces, processes, scratch directory ----------------------------------- */

static struct {
    char name[16];
    bool net_up;
    char dir[64];
    struct harness_process procs[MAX_PROCS];
    unsigned nprocs;
} fx;

__attribute__((format(printf, 1, 2)))
static int sh(const char *fmt, ...)
{
    char command[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(command, sizeof(command), fmt, args);
    va_end(args);
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void fx_fini(void)
{
    for (unsigned i = 0; i < fx.nprocs; i++)
        if (fx.procs[i].pid > 0) {
            kill(fx.procs[i].pid, SIGKILL);
            harness_process_wait_exit(&fx.procs[i], 5000);
        }
    if (fx.net_up)
        sh(HOSTS " down %s", fx.name);
    if (fx.dir[0] != '\0')
        sh("rm -rf %s", fx.dir);
    memset(&fx, 0, sizeof(fx));
}

static void fx_dir(void)
{
    snprintf(fx.dir, sizeof(fx.dir), "/tmp/ringvm-faults-XXXXXX");
    cr_assert_not_null(mkdtemp(fx.dir));
}

/* Skips without root, iproute2 or the script; brings the hosts up. */
static void net_up(const char *tag)
{
    harness_require_kvm();
    if (geteuid() != 0)
        cr_skip_test("needs root: network namespaces (tests/netns/hosts.sh)");
    if (access(HOSTS, X_OK) != 0)
        cr_skip_test("run from the repository root (" HOSTS " not found)");
    if (sh("command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1") != 0)
        cr_skip_test("iproute2 (ip) and nftables (nft) are needed for the emulated hosts");
    fx_dir();
    snprintf(fx.name, sizeof(fx.name), "f%s%u", tag, (unsigned)getpid() % 1000u);
    fx.name[8] = '\0';
    fx.net_up = true;
    cr_assert_eq(sh(HOSTS " up %s >&2", fx.name), 0, "hosts.sh up %s failed", fx.name);
}

static void host_addr(const char *side, char *out, size_t size)
{
    char command[256];
    snprintf(command, sizeof(command), HOSTS " addr %s %s", fx.name, side);
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(out, (int)size, p));
    pclose(p);
    out[strcspn(out, "\n")] = '\0';
}

struct vmproc {
    struct harness_process *proc;
    char socket[128];
    char side[4];
};

/* ringvm in a namespace (side "src"/"dst", or NULL for this namespace),
 * stdout and stderr merged into proc->out. */
static void vm_spawn(struct vmproc *v, const char *side, const char *memory, const char *workload,
                     const char *incoming, const char *fault)
{
    cr_assert_lt(fx.nprocs, MAX_PROCS);
    static unsigned counter;
    snprintf(v->socket, sizeof(v->socket), "%s/api-%u.sock", fx.dir, counter++);
    snprintf(v->side, sizeof(v->side), "%s", side ? side : "");
    char fault_env[64], release_env[128];
    snprintf(fault_env, sizeof(fault_env), "RINGVM_FAULT_INJECT=%s", fault ? fault : "");
    snprintf(release_env, sizeof(release_env), "RINGVM_FAULT_RELEASE=%s/release", fx.dir);
    char *argv[32];
    unsigned n = 0;
    argv[n++] = "/bin/sh";
    argv[n++] = "-c";
    argv[n++] = "exec \"$@\" 2>&1";
    argv[n++] = "sh";
    if (side != NULL) {
        argv[n++] = HOSTS;
        argv[n++] = "exec";
        argv[n++] = fx.name;
        argv[n++] = (char *)side;
    }
    argv[n++] = "/usr/bin/env";
    if (fault != NULL) {
        argv[n++] = fault_env;
        argv[n++] = release_env;
    }
    argv[n++] = (char *)harness_program("ringvm");
    argv[n++] = "--memory";
    argv[n++] = (char *)memory;
    argv[n++] = "--workload";
    argv[n++] = (char *)workload;
    argv[n++] = "--api-socket";
    argv[n++] = v->socket;
    if (incoming != NULL) {
        argv[n++] = "--incoming";
        argv[n++] = (char *)incoming;
    }
    argv[n] = NULL;
    v->proc = &fx.procs[fx.nprocs++];
    harness_spawn(v->proc, argv);
}

static bool output_has(struct vmproc *v, const char *needle, unsigned count, unsigned timeout_ms)
{
    return harness_process_wait_output(v->proc, needle, count, timeout_ms);
}

static unsigned output_count(struct vmproc *v, const char *needle)
{
    harness_process_wait_output(v->proc, "\x01never\x01", 1, 0);   /* reads what is there */
    unsigned n = 0;
    for (const char *p = v->proc->out; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ---- API helpers ---------------------------------------------------------------------- */

static struct api_client *api_connect(const char *path, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    char error[512];
    for (;;) {
        struct api_client *client = NULL;
        if (api_client_connect(&client, path, error, sizeof(error)) == 0)
            return client;
        cr_assert_lt(now_ms(), deadline, "API %s: %s", path, error);
        poll(NULL, 0, 20);
    }
}

static struct harness_process *diagnose;  /* whose output a failed call prints */

static json_t *call(struct api_client *c, const char *cmd, json_t *args)
{
    json_t *result = NULL;
    struct api_error error;
    int r = api_client_call(c, cmd, args, &result, &error, 10000);
    if (r != 0 && diagnose != NULL)
        harness_process_wait_output(diagnose, "\x01never\x01", 1, 200);
    cr_assert_eq(r, 0, "%s: %d (code %d): %s\n%s", cmd, r, r > 0 ? (int)error.code : 0,
                 r > 0 ? error.message : "transport failure", diagnose && diagnose->out ? diagnose->out : "");
    return result;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static json_t *progress(struct api_client *c)
{
    return call(c, "migration.progress", NULL);
}

/* Waits until the incoming ringvm v listens (its progress says so). */
static struct api_client *wait_listening(struct vmproc *v)
{
    uint64_t deadline = now_ms() + 20000;
    struct api_client *c = NULL;
    for (;;) {
        char error[512];
        if (c == NULL && api_client_connect(&c, v->socket, error, sizeof(error)) != 0)
            c = NULL;
        if (c != NULL) {
            json_t *result = NULL;
            struct api_error e;
            int r = api_client_call(c, "migration.progress", NULL, &result, &e, 5000);
            if (r == 0) {
                bool listening = strcmp(jstr(result, "phase"), "listening") == 0;
                json_decref(result);
                if (listening)
                    return c;
            } else if (r < 0) {
                api_client_close(c);
                c = NULL;
            }
        }
        harness_process_wait_output(v->proc, "\x01never\x01", 1, 0);
        cr_assert_lt(now_ms(), deadline, "the destination does not listen:\n%s", v->proc->out);
        poll(NULL, 0, 20);
    }
}

static json_t *wait_ended(struct api_client *c, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        json_t *p = progress(c);
        const char *s = jstr(p, "state");
        if (strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0)
            return p;
        cr_assert_lt(now_ms(), deadline, "the migration did not end within %u ms (state %s)", timeout_ms, s);
        json_decref(p);
        poll(NULL, 0, 20);
    }
}

static const char *vm_state(struct api_client *c)
{
    static char state[32];
    json_t *info = call(c, "vm.info", NULL);
    snprintf(state, sizeof(state), "%s", jstr(info, "state"));
    json_decref(info);
    return state;
}

/* The guest runs on v: its ledger prints a new LEDGER OK and never MISMATCH. */
static void ledger_continues(struct vmproc *v, const char *where)
{
    unsigned before = output_count(v, "LEDGER OK");
    cr_assert(output_has(v, "LEDGER OK", before + 1, 15000), "%s: the ledger stopped verifying:\n%s", where,
              v->proc->out);
    cr_assert_eq(output_count(v, "MISMATCH"), 0, "%s: ledger MISMATCH:\n%s", where, v->proc->out);
}

/* A migration from `from` (which runs the guest) to a new ringvm on the
 * other host: completes with equal digests and the ledger verifies there.
 * With keep_alive the source says migrated, then
 * shuts down and exits 0. */
static void later_migration_succeeds(struct vmproc *from, const char *memory, const char *workload, unsigned port)
{
    const char *other = strcmp(from->side, "src") == 0 ? "dst" : "src";
    char ip[64], incoming[128];
    host_addr(other, ip, sizeof(ip));
    snprintf(incoming, sizeof(incoming), "tcp:%s:%u", ip, port);
    struct vmproc to;
    vm_spawn(&to, other, memory, workload, incoming, NULL);
    struct api_client *tc = wait_listening(&to);
    struct api_client *fc = api_connect(from->socket, 5000);
    json_decref(call(fc, "migration.start", json_pack("{s:s, s:b, s:b, s:i}", "dest", incoming, "verify_digest", 1,
                                                     "keep_alive", 1, "timeout_s", 60)));
    json_t *p = wait_ended(fc, 70000);
    cr_assert_str_eq(jstr(p, "state"), "completed", "later migration: %s", json_dumps(p, JSON_COMPACT));
    cr_assert_str_eq(jstr(p, "memory_digest_source"), jstr(p, "memory_digest_destination"));
    json_decref(p);
    cr_assert_str_eq(vm_state(fc), "migrated");
    json_decref(call(fc, "vm.shutdown", NULL));
    api_client_close(fc);
    cr_assert_eq(harness_process_wait_exit(from->proc, 10000), 0, "the old source must exit 0:\n%s",
                 from->proc->out);
    cr_assert_str_eq(vm_state(tc), "running");
    ledger_continues(&to, "after the later migration");
    api_client_close(tc);
}

/* ---- the matrix ------------------------------------------------------------------------- */

enum fault { KILL_DST, CUT_LINK, STALL_LINK, KILL_SRC };

struct point {
    const char *hook;           /* RINGVM_FAULT_INJECT on the destination */
    const char *memory, *workload;
    const char *phase;          /* the source's phase when the fault hits, NULL = not checked */
    unsigned max_bandwidth, downtime_ms, stall_s;
    const char *converge;
};

static const struct point points[] = {
    { "setup", "64M", "ledger,wss=8M,verify=1", "handshake", 0, 300, 2, "auto" },
    { "iteration0", "64M", "ledger,wss=8M,verify=1", "bulk", 4, 300, 2, "auto" },
    /* downtime 1 ms: never converges, so iteration >= 1 is pre-copy */
    { "iteration1", "64M", "ledger,wss=8M,verify=1", "iterating", 32, 1, 2, "none" },
    /* downtime 60 s: converges after iteration 0, so the marker of
     * iteration 1 is the stop-and-copy one; 48 MiB redirtied exceed the
     * socket buffers, so END cannot have left the source yet */
    { "iteration1", "128M", "ledger,wss=48M,verify=1", "stop-and-copy", 0, 60000, 2, "none" },
    { "end", "64M", "ledger,wss=8M,verify=1", "waiting-ack", 0, 300, 2, "auto" },
};

static void release_destination(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/release", fx.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
}

static void run_fault(enum fault fault, unsigned point_index, const char *tag)
{
    const struct point *pt = &points[point_index];
    net_up(tag);
    char ip[64], incoming[128];
    host_addr("dst", ip, sizeof(ip));
    snprintf(incoming, sizeof(incoming), "tcp:%s:7000", ip);

    struct vmproc src, dst;
    vm_spawn(&src, "src", pt->memory, pt->workload, NULL, NULL);
    cr_assert(output_has(&src, "LEDGER OK", 1, 30000), "no LEDGER OK on the source:\n%s", src.proc->out);
    vm_spawn(&dst, "dst", pt->memory, pt->workload, incoming, pt->hook);
    api_client_close(wait_listening(&dst));

    struct api_client *sc = api_connect(src.socket, 5000);
    diagnose = src.proc;
    json_t *args = json_pack("{s:s, s:b, s:i, s:i, s:i, s:s, s:i}", "dest", incoming, "verify_digest", 1,
                             "downtime_ms", (int)pt->downtime_ms, "max_bandwidth_mibs", (int)pt->max_bandwidth,
                             "stall_timeout_s", fault == KILL_SRC ? 30 : (int)pt->stall_s, "converge", pt->converge,
                             "timeout_s", 120);
    json_decref(call(sc, "migration.start", args));
    char stopped[128];
    snprintf(stopped, sizeof(stopped), "fault-inject: stopped at %s", pt->hook);
    cr_assert(output_has(&dst, stopped, 1, 30000), "the destination never reached %s:\n%s", pt->hook,
              dst.proc->out);
    if (pt->phase != NULL) {
        /* The source publishes its phase when it gets there, which may be
         * a moment after the destination's hook fired. */
        uint64_t deadline = now_ms() + 5000;
        for (;;) {
            json_t *p = progress(sc);
            bool there = strcmp(jstr(p, "phase"), pt->phase) == 0;
            char *text = json_dumps(p, JSON_COMPACT);
            json_decref(p);
            if (there) {
                free(text);
                break;
            }
            cr_assert_lt(now_ms(), deadline, "the source is not in phase %s: %s", pt->phase, text);
            free(text);
            poll(NULL, 0, 5);
        }
    }
    uint64_t fault_at = now_ms();
    switch (fault) {
    case KILL_DST:
        cr_assert_eq(kill(dst.proc->pid, SIGKILL), 0);
        break;
    case CUT_LINK:
        cr_assert_eq(sh(HOSTS " link %s down", fx.name), 0);
        release_destination();
        break;
    case STALL_LINK:
        cr_assert_eq(sh(HOSTS " stall %s", fx.name), 0);
        release_destination();
        break;
    case KILL_SRC:
        cr_assert_eq(kill(src.proc->pid, SIGKILL), 0);
        cr_assert_eq(harness_process_wait_exit(src.proc, 5000), 128 + SIGKILL);
        release_destination();
        /* The destination never resumes a half-received guest. */
        cr_assert_eq(harness_process_wait_exit(dst.proc, 15000), 1, "the destination must exit 1:\n%s",
                     dst.proc->out);
        cr_assert(strstr(dst.proc->out, "the source closed the connection (truncated stream)") != NULL ||
                      strstr(dst.proc->out, "stream ended before the end frame (truncated)") != NULL,
                  "%s", dst.proc->out);
        cr_assert_null(strstr(dst.proc->out, "received and resumed"));
        cr_assert_null(strstr(dst.proc->out, "LEDGER"), "the half-received guest ran:\n%s", dst.proc->out);
        api_client_close(sc);
        return;
    }

    bool ambiguous_end = fault == CUT_LINK && strcmp(pt->hook, "end") == 0;
    json_t *p = wait_ended(sc, 30000);
    uint64_t detected = now_ms() - fault_at;
    char *text = json_dumps(p, JSON_COMPACT);
    json_t *error = json_object_get(p, "error");
    cr_assert_str_eq(jstr(p, "state"), "failed", "%s", text);
    cr_assert_str_eq(jstr(p, "phase"), "done");
    if (ambiguous_end) {
        /* The destination has the whole stream: it runs the guest, the
         * source stays paused and says why. */
        cr_assert_str_eq(jstr(error, "code"), "outcome-unknown", "%s", text);
        cr_assert_str_eq(jstr(error, "message"),
                         "no ack from the destination for 10000 ms after the whole stream was sent: it may be "
                         "running the guest; the source stays paused (vm.resume here only if the destination does "
                         "not run it)");
        cr_assert_str_eq(vm_state(sc), "paused");
        cr_assert(output_has(&dst, "received and resumed", 1, 5000), "%s", dst.proc->out);
        unsigned src_ok = output_count(&src, "LEDGER OK");
        ledger_continues(&dst, "destination after the lost ack");
        cr_assert_eq(output_count(&src, "LEDGER OK"), src_ok, "the guest ran on both sides");
        cr_assert_eq(sh(HOSTS " link %s up", fx.name), 0);
        api_client_close(sc);
        later_migration_succeeds(&dst, pt->memory, pt->workload, 7001);
        free(text);
        json_decref(p);
        return;
    }
    cr_assert_str_eq(jstr(error, "code"), "transport", "%s", text);
    if (fault == STALL_LINK || (fault == CUT_LINK && strcmp(pt->phase, "waiting-ack") != 0))
        cr_assert(strstr(jstr(error, "message"), "(link stalled)") != NULL ||
                      strstr(jstr(error, "message"), "nothing for") != NULL,
                  "%s", text);
    if (fault == STALL_LINK)
        cr_assert_leq(detected, pt->stall_s * 1000u + 1500u, "the stall was detected after %" PRIu64 " ms", detected);
    /* The guest runs on the source only. */
    cr_assert_str_eq(vm_state(sc), "running");
    ledger_continues(&src, "source after the fault");
    int dst_exit = harness_process_wait_exit(dst.proc, 15000);
    if (fault == KILL_DST) {
        cr_assert_eq(dst_exit, 128 + SIGKILL);
    } else {
        cr_assert_eq(dst_exit, 1, "the destination must fail:\n%s", dst.proc->out);
        cr_assert(strstr(dst.proc->out, "nothing received from the source for 5000 ms (link "
                                        "stalled)") != NULL, "%s", dst.proc->out);
    }
    cr_assert_null(strstr(dst.proc->out, "received and resumed"), "%s", dst.proc->out);
    cr_assert_null(strstr(dst.proc->out, "LEDGER"), "the guest ran on the destination:\n%s", dst.proc->out);
    free(text);
    json_decref(p);
    if (fault == CUT_LINK)
        cr_assert_eq(sh(HOSTS " link %s up", fx.name), 0);
    if (fault == STALL_LINK)
        cr_assert_eq(sh(HOSTS " shape %s --loss 0", fx.name), 0);
    api_client_close(sc);
    later_migration_succeeds(&src, pt->memory, pt->workload, 7001);
}

TestSuite(faults, .fini = fx_fini);

Test(faults, destination_killed_during_setup, .timeout = 90) { run_fault(KILL_DST, 0, "ks"); }
Test(faults, destination_killed_during_iteration0, .timeout = 90) { run_fault(KILL_DST, 1, "k0"); }
Test(faults, destination_killed_during_later_iteration, .timeout = 90) { run_fault(KILL_DST, 2, "k1"); }
Test(faults, destination_killed_during_stop_and_copy, .timeout = 90) { run_fault(KILL_DST, 3, "kc"); }
Test(faults, destination_killed_after_last_byte_before_ack, .timeout = 90) { run_fault(KILL_DST, 4, "ke"); }
Test(faults, link_cut_during_setup, .timeout = 90) { run_fault(CUT_LINK, 0, "cs"); }
Test(faults, link_cut_during_iteration0, .timeout = 90) { run_fault(CUT_LINK, 1, "c0"); }
Test(faults, link_cut_during_later_iteration, .timeout = 90) { run_fault(CUT_LINK, 2, "c1"); }
Test(faults, link_cut_during_stop_and_copy, .timeout = 90) { run_fault(CUT_LINK, 3, "cc"); }
Test(faults, link_cut_after_last_byte_before_ack, .timeout = 90) { run_fault(CUT_LINK, 4, "ce"); }
Test(faults, stalled_link_is_detected_by_the_stall_timeout, .timeout = 90) { run_fault(STALL_LINK, 2, "st"); }
Test(faults, source_killed_during_stop_and_copy, .timeout = 90) { run_fault(KILL_SRC, 3, "sk"); }

/* ---- migration.cancel at 50 random moments ---------------------------------------------- */

/* Accepts connections one after the other, answers the hello and drains
 * each until the source closes it. */
struct drain_destination {
    int listen_fd;
    char address[160];
    _Atomic bool stop;
    unsigned connections;
    pthread_t thread;
};

static void *drain_main(void *argument)
{
    struct drain_destination *d = argument;
    static uint8_t buffer[1 << 20];
    while (!atomic_load(&d->stop)) {
        char error[256];
        int fd = mig_accept(d->listen_fd, &d->stop, error, sizeof(error));
        if (fd < 0)
            continue;
        d->connections++;
        struct mig_io io = { .fd = fd, .stall_ms = 5000, .peer = "source" };
        uint8_t header[MIG_HEADER_SIZE], hello[MIG_HELLO_SIZE];
        if (mig_io_read(&io, header, sizeof(header), false, error, sizeof(error)) == 0 &&
            mig_io_read(&io, hello, sizeof(hello), false, error, sizeof(error)) == 0) {
            uint8_t frame[MIG_HEADER_SIZE + MIG_HELLO_SIZE];
            size_t length = mig_frame_encode(frame, MIG_FRAME_HELLO_ACK, 0, hello, sizeof(hello));
            (void)mig_io_write(&io, frame, length, error, sizeof(error));
            for (;;) {
                int ready = mig_io_poll_readable(fd, 100);
                if (ready < 0)
                    break;
                if (ready == 0)
                    continue;
                ssize_t got = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
                if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                    break;
            }
        }
        close(fd);
    }
    return NULL;
}

Test(faults, cancel_at_50_seeded_random_moments_then_migrate, .timeout = 150, .fini = fx_fini)
{
    harness_require_kvm();
    fx_dir();
    struct harness_vm source;
    harness_vm_start(&source, "64M", 1, "ledger,wss=8M,verify=1", "ring");
    cr_assert(console_wait_for(&source.console, "LEDGER OK", 1, 20000));

    struct drain_destination *d = calloc(1, sizeof(*d));
    snprintf(d->address, sizeof(d->address), "unix:%s/drain.sock", fx.dir);
    struct mig_address address;
    char error[256];
    cr_assert_eq(mig_address_parse(d->address, &address, error, sizeof(error)), 0);
    d->listen_fd = mig_listen(&address, error, sizeof(error));
    cr_assert_geq(d->listen_fd, 0, "%s", error);
    cr_assert_eq(pthread_create(&d->thread, NULL, drain_main, d), 0);

    const long seed = 20240607;
    srand48(seed);
    struct mig_progress *p = malloc(sizeof(*p));
    unsigned phases_seen[4] = { 0 };    /* setup, bulk, iterating, other */
    uint64_t worst_cancel_ms = 0;
    for (unsigned run = 0; run < 50; run++) {
        struct mig_params params;
        mig_params_defaults(&params);
        snprintf(params.dest, sizeof(params.dest), "%s", d->address);
        params.downtime_ms = 1;                 /* never converges: only the cancel ends it */
        params.converge = run % 2 ? MIG_CONVERGE_AUTO : MIG_CONVERGE_DIRTY_LIMIT;
        params.max_bandwidth_mibs = 64;
        uint64_t id = 0;
        const char *code = NULL;
        char message[512];
        cr_assert_eq(migration_start(source.vm, NULL, &params, &id, &code, message, sizeof(message)), 0,
                     "run %u: %s: %s", run, code, message);
        unsigned delay = (unsigned)(lrand48() % 400);
        poll(NULL, 0, (int)delay);              /* the random moment (seed 20240607), not a synchronization */
        if (migration_progress(source.vm, p)) {
            const char *ph = p->phase;
            phases_seen[strcmp(ph, "connecting") == 0 || strcmp(ph, "handshake") == 0 ? 0
                        : strcmp(ph, "bulk") == 0 ? 1 : strcmp(ph, "iterating") == 0 ? 2 : 3]++;
        }
        cr_assert_eq(migration_cancel(source.vm, &code, message, sizeof(message)), 0, "run %u (delay %u ms): %s",
                     run, delay, message);
        uint64_t cancelled_at = now_ms();
        /* Issue 5's promise: the guest runs again within 1 s of a cancel. */
        cr_assert(migration_wait_idle(source.vm, 1000), "run %u: the cancel took more than 1 s", run);
        uint64_t took = now_ms() - cancelled_at;
        if (took > worst_cancel_ms)
            worst_cancel_ms = took;
        cr_assert(migration_progress(source.vm, p));
        cr_assert_eq(p->id, id);
        cr_assert_eq(p->state, MIG_STATE_CANCELLED, "run %u (delay %u ms): %s %s: %s", run, delay,
                     mig_state_name(p->state), p->error_code, p->error_message);
        cr_assert_str_eq(p->error_code, "cancelled");
        cr_assert_str_eq(p->error_message, "cancelled by migration.cancel");
        cr_assert_str_eq(p->phase, "done");
        cr_assert_eq(vm_get_state(source.vm), VM_STATE_RUNNING, "run %u", run);
        cr_assert(!dirty_log_tracking(source.vm->dirty_log), "run %u: tracking still on", run);
        cr_assert_eq(vcpu_get_throttle(&source.vm->vcpus[0]), 0, "run %u: throttle left on", run);
    }
    fprintf(stderr, "cancel x50 (seed %ld): at setup %u, bulk %u, iterating %u, other %u; slowest cancel %" PRIu64
            " ms\n", seed, phases_seen[0], phases_seen[1], phases_seen[2], phases_seen[3], worst_cancel_ms);
    unsigned ok = console_count(&source.console, "LEDGER OK");
    cr_assert(console_wait_for(&source.console, "LEDGER OK", ok + 1, 20000), "the ledger stopped");
    cr_assert_eq(console_count(&source.console, "MISMATCH"), 0);
    atomic_store(&d->stop, true);
    pthread_join(d->thread, NULL);
    close(d->listen_fd);

    /* Then a real migration to a ringvm process completes. */
    struct vmproc dest;
    char incoming[128];
    snprintf(incoming, sizeof(incoming), "unix:%s/in.sock", fx.dir);
    vm_spawn(&dest, NULL, "64M", "ledger,wss=8M,verify=1", incoming, NULL);
    struct api_client *dc = wait_listening(&dest);
    struct mig_params params;
    mig_params_defaults(&params);
    snprintf(params.dest, sizeof(params.dest), "%s", incoming);
    params.verify_digest = true;
    params.keep_alive = true;
    uint64_t id = 0;
    const char *code = NULL;
    char message[512];
    cr_assert_eq(migration_start(source.vm, NULL, &params, &id, &code, message, sizeof(message)), 0, "%s", message);
    cr_assert(migration_wait_idle(source.vm, 60000));
    cr_assert(migration_progress(source.vm, p));
    cr_assert_eq(p->state, MIG_STATE_COMPLETED, "%s: %s", p->error_code, p->error_message);
    cr_assert_str_eq(p->digest_source, p->digest_destination);
    ledger_continues(&dest, "destination after 50 cancels");
    api_client_close(dc);
    free(p);
    free(d);
    migration_release(source.vm);
    harness_vm_stop(&source);
}

/* ---- API robustness ------------------------------------------------------------------------ */

Test(faults, api_clients_killed_mid_command_and_socket_deleted, .timeout = 90, .fini = fx_fini)
{
    harness_require_kvm();
    fx_dir();
    struct vmproc vm;
    vm_spawn(&vm, NULL, "64M", "ledger,wss=8M,verify=1", NULL, NULL);
    cr_assert(output_has(&vm, "LEDGER OK", 1, 30000), "%s", vm.proc->out);
    struct api_client *a = api_connect(vm.socket, 20000);

    /* 40 clients (more than the 32 the server holds at once), each killed
     * with a request in flight or half a line sent. */
    for (unsigned i = 0; i < 40; i++) {
        int ready[2];
        cr_assert_eq(pipe(ready), 0);
        pid_t child = fork();
        cr_assert_geq(child, 0);
        if (child == 0) {
            struct api_client *c = NULL;
            char error[256];
            if (api_client_connect(&c, vm.socket, error, sizeof(error)) != 0)
                _exit(3);
            const char *line = i % 2 ? "{\"id\":1,\"cmd\":\"vm.memory-digest\"}\n"
                                     : "{\"id\":1,\"cmd\":\"vm.info\",\"args\":{\"x\":[1,2,";
            (void)api_client_send_raw(c, line, strlen(line));
            (void)!write(ready[1], "x", 1);
            pause();
            _exit(0);
        }
        close(ready[1]);
        char byte;
        cr_assert_eq(read(ready[0], &byte, 1), 1, "client %u did not connect", i);
        close(ready[0]);
        cr_assert_eq(kill(child, SIGKILL), 0);
        int status;
        cr_assert_eq(waitpid(child, &status, 0), child);
        cr_assert(WIFSIGNALED(status));
    }
    /* The other client and a new one are served; the VM is unaffected. */
    cr_assert_str_eq(vm_state(a), "running");
    struct api_client *b = api_connect(vm.socket, 5000);
    json_decref(call(b, "vm.guest-stats", NULL));
    api_client_close(b);
    ledger_continues(&vm, "after 40 killed clients");

    /* The socket file deleted: connected clients keep being served, the VM
     * runs on; new clients cannot connect (there is no file to connect to). */
    cr_assert_eq(unlink(vm.socket), 0);
    cr_assert_str_eq(vm_state(a), "running");
    struct api_client *none = NULL;
    char error[512];
    cr_assert_lt(api_client_connect(&none, vm.socket, error, sizeof(error)), 0);
    ledger_continues(&vm, "after the socket file was deleted");
    json_decref(call(a, "vm.shutdown", NULL));
    api_client_close(a);
    cr_assert_eq(harness_process_wait_exit(vm.proc, 10000), 0, "%s", vm.proc->out);
}
