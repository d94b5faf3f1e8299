/* See migration_destination.h. */
#include "tests/migration_destination.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migration/migration.h"
#include "migration/progress.h"
#include "migration/tls.h"
#include "migration/transport.h"
#include "vmm/vm.h"

static void *destination_main(void *argument)
{
    struct test_destination *d = argument;
    d->result = migration_incoming_run_fd(d->harness.vm, d->listen_fd, d->address, NULL);
    return NULL;
}

/* Unix socket paths unique within the process (Criterion may run several
 * tests of one binary in parallel processes: the pid keeps them apart). */
static unsigned next_socket_index;

int test_listen_localhost_tcp(char *address, size_t size)
{
    struct mig_address any = { .kind = MIG_ADDRESS_TCP, .host = "127.0.0.1", .port = "0" };
    char error[256];
    int fd = mig_listen(&any, error, sizeof(error));
    cr_assert_geq(fd, 0, "%s", error);
    struct sockaddr_in bound;
    socklen_t length = sizeof(bound);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&bound, &length), 0);
    snprintf(address, size, "tcp:127.0.0.1:%u", ntohs(bound.sin_port));
    return fd;
}

/* The prefix of d->address: "unix:" or "local:" (a Unix socket either
 * way), or "tcp:"; TLS credentials (one of them, tcp: only) or NULL. */
static void destination_start(struct test_destination *d, const char *memory, unsigned vcpus, const char *workload,
                              const char *prefix, const char *tls_psk, const char *tls_creds, unsigned stall_ms)
{
    bool tcp = strcmp(prefix, "tcp:") == 0;
    memset(d, 0, sizeof(*d));
    struct harness_vm *h = &d->harness;
    harness_vm_create_incoming(h, memory, vcpus, workload, "ring");
    char error[1024];
    cr_assert_eq(vm_start(h->vm), 0);
    cr_assert_eq(vm_get_state(h->vm), VM_STATE_PAUSED);

    struct mig_address address;
    if (tcp) {
        d->listen_fd = test_listen_localhost_tcp(d->address, sizeof(d->address));
        cr_assert_eq(mig_address_parse(d->address, &address, error, sizeof(error)), 0, "%s", error);
    } else {
        char path[128];
        snprintf(path, sizeof(path), "/tmp/ringvm-mig-test-%d-%u.sock", getpid(),
                 __atomic_fetch_add(&next_socket_index, 1, __ATOMIC_RELAXED));
        unlink(path);
        snprintf(d->address, sizeof(d->address), "%s%s", prefix, path);
        memset(&address, 0, sizeof(address));
        address.kind = MIG_ADDRESS_UNIX;
        memcpy(address.path, path, strlen(path) + 1);     /* < 108: /tmp/ringvm-mig-test-PID-N.sock */
        d->listen_fd = mig_listen(&address, error, sizeof(error));
        cr_assert_geq(d->listen_fd, 0, "%s", error);
    }
    if (tls_psk != NULL || tls_creds != NULL) {
        struct mig_tls_credentials *credentials = NULL;
        cr_assert_eq(mig_tls_credentials_load_for(&credentials, MIG_TLS_SERVER, tls_psk, tls_creds, &address, error,
                                                  sizeof(error)),
                     0, "%s", error);
        cr_assert_eq(migration_set_incoming_tls(h->vm, credentials), 0);
    }
    if (stall_ms != 0)
        cr_assert_eq(migration_set_incoming_stall_timeout(h->vm, stall_ms), 0);
    cr_assert_eq(pthread_create(&d->thread, NULL, destination_main, d), 0);
    d->running = true;
}

void test_destination_start(struct test_destination *d, const char *memory, unsigned vcpus, const char *workload,
                            bool tcp)
{
    destination_start(d, memory, vcpus, workload, tcp ? "tcp:" : "unix:", NULL, NULL, 0);
}

void test_destination_start_stall(struct test_destination *d, const char *memory, unsigned vcpus,
                                  const char *workload, bool tcp, unsigned stall_ms)
{
    destination_start(d, memory, vcpus, workload, tcp ? "tcp:" : "unix:", NULL, NULL, stall_ms);
}

void test_destination_start_local(struct test_destination *d, const char *memory, unsigned vcpus,
                                  const char *workload)
{
    destination_start(d, memory, vcpus, workload, "local:", NULL, NULL, 0);
}

void test_destination_start_tls(struct test_destination *d, const char *memory, unsigned vcpus, const char *workload,
                                const char *tls_psk, const char *tls_creds)
{
    destination_start(d, memory, vcpus, workload, "tcp:", tls_psk, tls_creds, 0);
}

void test_destination_start_tls_stall(struct test_destination *d, const char *memory, unsigned vcpus,
                                      const char *workload, const char *tls_psk, const char *tls_creds,
                                      unsigned stall_ms)
{
    destination_start(d, memory, vcpus, workload, "tcp:", tls_psk, tls_creds, stall_ms);
}

int test_destination_join(struct test_destination *d)
{
    if (d->running) {
        pthread_join(d->thread, NULL);
        d->running = false;
    }
    const char *colon = strchr(d->address, ':');
    if (strncmp(d->address, "tcp:", 4) != 0 && colon != NULL)
        unlink(colon + 1);
    return d->result;
}

void test_destination_stop(struct test_destination *d)
{
    if (d->harness.vm != NULL && d->running)
        vm_request_shutdown(d->harness.vm, 0);   /* stops a destination still waiting */
    test_destination_join(d);
    if (d->harness.vm != NULL) {
        migration_release(d->harness.vm);
        vm_request_shutdown(d->harness.vm, 0);
        vm_wait(d->harness.vm);
        vm_destroy(d->harness.vm);
        d->harness.vm = NULL;
    }
    free(d->harness.console.text);
    d->harness.console.text = NULL;
}

uint64_t test_migration_start_on(struct vm *vm, struct api_server *server, const struct mig_params *params)
{
    uint64_t id = 0;
    const char *code = NULL;
    char message[512];
    int r = migration_start(vm, server, params, &id, &code, message, sizeof(message));
    cr_assert_eq(r, 0, "migration_start: %s: %s", code, message);
    return id;
}

uint64_t test_migration_start(struct vm *vm, const struct mig_params *params)
{
    return test_migration_start_on(vm, NULL, params);
}

void test_migration_finished(struct vm *vm, struct mig_progress *p, unsigned timeout_ms)
{
    cr_assert(migration_wait_idle(vm, timeout_ms), "the migration did not end within %u ms", timeout_ms);
    cr_assert(migration_progress(vm, p));
}

struct transferred_wait {
    struct vm *vm;
    uint64_t min_bytes;
};

static bool transferred_at_least(void *argument)
{
    const struct transferred_wait *w = argument;
    struct mig_progress *p = malloc(sizeof(*p));
    bool ok = p != NULL && migration_progress(w->vm, p) && p->state == MIG_STATE_ACTIVE &&
              p->memory.transferred >= w->min_bytes;
    free(p);
    return ok;
}

bool test_migration_wait_transferred(struct vm *vm, uint64_t min_bytes, unsigned timeout_ms)
{
    struct transferred_wait w = { .vm = vm, .min_bytes = min_bytes };
    return harness_wait_until(transferred_at_least, &w, timeout_ms);
}

void test_migration_source_stop(struct harness_vm *source)
{
    if (source->vm != NULL)
        migration_release(source->vm);
    harness_vm_stop(source);
}
