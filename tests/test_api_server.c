/*
 * The API server over its real socket: concurrency, framing, limits, and
 * VM control against a running guest. Every wait is on a condition with a
 * timeout.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "api/server.h"
#include "tests/harness.h"
#include "vmm/memory.h"

#define TIMEOUT_MS 10000

static void socket_path(char *out, size_t size, const char *tag)
{
    snprintf(out, size, "/tmp/ringvm-api-test-%d-%s.sock", (int)getpid(), tag);
    unlink(out);
}

static struct api_client *connect_or_fail(const char *path)
{
    struct api_client *client;
    char error[256];
    cr_assert_eq(api_client_connect(&client, path, error, sizeof(error)), 0, "%s", error);
    return client;
}

static json_t *call_ok(struct api_client *client, const char *cmd, json_t *args)
{
    json_t *result;
    struct api_error error;
    int r = api_client_call(client, cmd, args, &result, &error, TIMEOUT_MS);
    cr_assert_eq(r, 0, "%s failed: %s: %s", cmd, api_error_code_name(error.code), error.message);
    return result;
}

static struct api_error call_error(struct api_client *client, const char *cmd, json_t *args)
{
    json_t *result = NULL;
    struct api_error error = {0};
    int r = api_client_call(client, cmd, args, &result, &error, TIMEOUT_MS);
    cr_assert_eq(r, 1, "%s: expected an error reply (r=%d)", cmd, r);
    return error;
}

/* Reads one raw message, failing the test on timeout. */
static json_t *read_message(struct api_client *client)
{
    json_t *message;
    int r = api_client_read(client, &message, TIMEOUT_MS);
    cr_assert_eq(r, 0, "no message: %s", strerror(-r));
    return message;
}

static void send_text(struct api_client *client, const char *text)
{
    cr_assert_eq(api_client_send_raw(client, text, strlen(text)), 0);
}

static const char *error_code_of(json_t *reply)
{
    return json_string_value(json_object_get(json_object_get(reply, "error"), "code"));
}

/* ---- without a VM -------------------------------------------------------------------- */

Test(api_server, second_server_on_the_same_path_refuses)
{
    char path[128];
    socket_path(path, sizeof(path), "second");
    struct api_server *first, *second = NULL;
    cr_assert_eq(api_server_create(&first, NULL, path), 0);
    cr_assert_eq(api_server_create(&second, NULL, path), -EADDRINUSE);
    cr_assert_null(second);
    /* The first one still works and still owns the path. */
    struct api_client *client = connect_or_fail(path);
    json_decref(call_ok(client, "api.version", NULL));
    api_client_close(client);
    api_server_destroy(first);
}

Test(api_server, stale_socket_is_replaced_but_other_files_are_not)
{
    char path[128];
    socket_path(path, sizeof(path), "stale");
    /* A socket file nobody listens on, as a crashed ringvm leaves it. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strcpy(address.sun_path, path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&address, sizeof(address)), 0);
    close(fd);
    struct api_server *server;
    cr_assert_eq(api_server_create(&server, NULL, path), 0, "a stale socket must be replaced");
    api_server_destroy(server);

    int file = open(path, O_CREAT | O_WRONLY, 0644);
    cr_assert_geq(file, 0);
    close(file);
    cr_assert_eq(api_server_create(&server, NULL, path), -EEXIST);
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0);
    cr_assert(S_ISREG(st.st_mode), "a regular file must never be replaced");
    unlink(path);
}

Test(api_server, errors_keep_the_connection_and_pipelined_replies_stay_in_order)
{
    char path[128];
    socket_path(path, sizeof(path), "pipe");
    struct api_server *server;
    cr_assert_eq(api_server_create(&server, NULL, path), 0);
    struct api_client *c = connect_or_fail(path);
    send_text(c, "garbage\n{\"id\":2,\"cmd\":\"nope\"}\n\n{\"id\":3,\"cmd\":\"api.version\"}\r\n"
                 "{\"id\":4,\"cmd\":\"vm.pause\"}\n{\"id\":5,\"cmd\":\"api.version\"}\n");
    static const struct {
        const char *id;
        const char *code;
    } expected[] = {{"null", "parse-error"}, {"2", "unknown-command"}, {"3", NULL},
                    {"4", "unavailable"}, {"5", NULL}};
    for (size_t i = 0; i < 5; i++) {
        json_t *reply = read_message(c);
        json_t *want = json_loads(expected[i].id, JSON_DECODE_ANY, NULL);
        cr_assert(json_equal(json_object_get(reply, "id"), want), "reply %zu out of order", i);
        json_decref(want);
        if (expected[i].code)
            cr_assert_str_eq(error_code_of(reply), expected[i].code);
        else
            cr_assert(json_is_true(json_object_get(reply, "ok")));
        json_decref(reply);
    }
    api_client_close(c);
    api_server_destroy(server);
}

Test(api_server, line_over_1mib_is_answered_and_closed)
{
    char path[128];
    socket_path(path, sizeof(path), "big");
    struct api_server *server;
    cr_assert_eq(api_server_create(&server, NULL, path), 0);
    struct api_client *c = connect_or_fail(path);
    size_t size = (2u << 20);
    char *text = malloc(size);
    int n = snprintf(text, size, "{\"id\":42,\"cmd\":\"api.version\",\"args\":{\"x\":\"");
    memset(text + n, 'a', size - (size_t)n);
    /* the server may close while we are still writing: ignore EPIPE */
    api_client_send_raw(c, text, size);
    free(text);
    json_t *reply = read_message(c);
    cr_assert_str_eq(error_code_of(reply), "invalid-request");
    cr_assert_eq(json_integer_value(json_object_get(reply, "id")), 42);
    json_decref(reply);
    json_t *more;
    cr_assert_eq(api_client_read(c, &more, TIMEOUT_MS), -EPIPE, "connection must be closed");
    api_client_close(c);
    api_server_destroy(server);
}

Test(api_server, at_most_32_clients)
{
    char path[128];
    socket_path(path, sizeof(path), "max");
    struct api_server *server;
    cr_assert_eq(api_server_create(&server, NULL, path), 0);
    struct api_client *clients[API_MAX_CLIENTS];
    for (int i = 0; i < API_MAX_CLIENTS; i++) {
        clients[i] = connect_or_fail(path);
        json_decref(call_ok(clients[i], "api.version", NULL));   /* accepted for sure */
    }
    struct api_client *extra = connect_or_fail(path);
    json_t *reply = read_message(extra);
    cr_assert_str_eq(error_code_of(reply), "unavailable");
    json_decref(reply);
    json_t *more;
    cr_assert_eq(api_client_read(extra, &more, TIMEOUT_MS), -EPIPE);
    api_client_close(extra);
    api_client_close(clients[0]);
    /* a slot frees up once the server noticed the close */
    bool ok = false;
    for (int attempt = 0; attempt < 1000 && !ok; attempt++) {
        struct api_client *again = connect_or_fail(path);
        json_t *result;
        struct api_error error;
        ok = api_client_call(again, "api.version", NULL, &result, &error, TIMEOUT_MS) == 0;
        json_decref(result);
        api_client_close(again);
    }
    cr_assert(ok, "the freed slot was never reused");
    for (int i = 1; i < API_MAX_CLIENTS; i++)
        api_client_close(clients[i]);
    api_server_destroy(server);
}

Test(api_server, other_uid_is_refused_with_an_error_line)
{
    if (geteuid() != 0)
        harness_skip("needs root to connect as another uid");
    char path[128];
    socket_path(path, sizeof(path), "cred");
    struct api_server *server;
    cr_assert_eq(api_server_create(&server, NULL, path), 0);
    cr_assert_eq(chmod(path, 0666), 0);   /* so that the file mode lets uid 65534 in */
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        close(pipefd[0]);
        if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
            _exit(10);
        struct api_client *client;
        char error[256];
        if (api_client_connect(&client, path, error, sizeof(error)) != 0)
            _exit(11);
        json_t *message;
        if (api_client_read(client, &message, TIMEOUT_MS) != 0)
            _exit(12);
        const char *code = error_code_of(message);
        if (!code || strcmp(code, "unavailable") != 0)
            _exit(13);
        const char *text = json_string_value(json_object_get(json_object_get(message, "error"), "message"));
        if (write(pipefd[1], text, strlen(text)) < 0)
            _exit(14);
        json_t *more;
        _exit(api_client_read(client, &more, TIMEOUT_MS) == -EPIPE ? 0 : 15);
    }
    close(pipefd[1]);
    char message[256] = "";
    ssize_t n = read(pipefd[0], message, sizeof(message) - 1);
    message[n > 0 ? n : 0] = '\0';
    close(pipefd[0]);
    int status;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", WEXITSTATUS(status));
    cr_assert(strstr(message, "permission denied"), "%s", message);
    api_server_destroy(server);
}

/* ---- with a running guest --------------------------------------------------------------- */

struct api_vm {
    struct harness_vm harness;
    struct api_server *server;
    char path[128];
};

static void api_vm_start(struct api_vm *t, const char *workload, const char *dirty)
{
    harness_require_kvm();
    socket_path(t->path, sizeof(t->path), "vm");
    harness_vm_create(&t->harness, "256M", 2, workload, dirty);
    /* A pause held in flight (harness_hold_pauses) must not give up. */
    t->harness.vm->pause_give_up_ns = 120ull * 1000000000ull;
    /* before vm_start, so the state listener is registered */
    cr_assert_eq(api_server_create(&t->server, t->harness.vm, t->path), 0);
    cr_assert_eq(vm_start(t->harness.vm), 0);
}

static void api_vm_stop(struct api_vm *t)
{
    vm_request_shutdown(t->harness.vm, 0);
    vm_wait(t->harness.vm);
    api_server_destroy(t->server);
    vm_destroy(t->harness.vm);
    t->harness.vm = NULL;
    harness_vm_stop(&t->harness);
}

static uint64_t pages_written_via_api(struct api_client *client, unsigned vcpu)
{
    json_t *stats = call_ok(client, "vm.guest-stats", NULL);
    json_t *entry = json_array_get(json_object_get(stats, "vcpus"), vcpu);
    cr_assert_not_null(entry);
    uint64_t pages = (uint64_t)json_integer_value(json_object_get(entry, "pages_written"));
    json_decref(stats);
    return pages;
}

static bool wait_pages_advance(struct api_client *client, unsigned vcpu, uint64_t from, uint64_t delta)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (pages_written_via_api(client, vcpu) >= from + delta)
            return true;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > 20000)
            return false;
        struct timespec tick = {.tv_nsec = 2000000};
        nanosleep(&tick, NULL);
    }
}

Test(api_server_vm, info_pause_stops_counters_resume_advances, .timeout = 90)
{
    struct api_vm t;
    api_vm_start(&t, "dirtier,wss=32M", "off");
    struct api_client *c = connect_or_fail(t.path);
    json_t *info = call_ok(c, "vm.info", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "state")), "running");
    cr_assert_eq(json_integer_value(json_object_get(info, "vcpus")), 2);
    cr_assert_eq(json_integer_value(json_object_get(info, "memory_bytes")), 256 << 20);
    cr_assert_str_eq(json_string_value(json_object_get(info, "dirty_log")), "off");
    cr_assert(strstr(json_string_value(json_object_get(info, "workload")), "dirtier"));
    cr_assert_eq(json_integer_value(json_object_get(info, "postcopy_fifo_priority")), 0,
                 "the fault service stays on the fair class without --postcopy-fifo");
    cr_assert(json_is_false(json_object_get(info, "hugepages")));
    cr_assert_str_eq(json_string_value(json_object_get(info, "ram")), "memfd", "guest RAM is a memfd by default");
    cr_assert(json_is_true(json_object_get(info, "thp")), "guest RAM asks for transparent huge pages by default");
    /* Huge pages where a memfd gets none: ringvm's own tmpfs (vmm/ram_file.h). */
    const char *file = harness_expected_ram_file();
    cr_assert_str_eq(json_string_value(json_object_get(info, "ram_file")), file);
    char thp_host[32] = "advise";       /* the tmpfs instance's huge= */
    if (strcmp(file, "memfd") == 0)
        guest_memory_thp_host(false, thp_host, sizeof(thp_host));
    cr_assert_str_eq(json_string_value(json_object_get(info, "thp_host")), thp_host);
    json_decref(info);

    /* ringctl info says the same in its ram: line. */
    const char *ringctl = harness_program("ringctl");
    cr_assert_eq(access(ringctl, X_OK), 0, "%s is not built (make all builds it)", ringctl);
    {
        char *argv[] = { (char *)ringctl, "-s", t.path, "info", NULL };
        struct harness_process process;
        harness_spawn(&process, argv);
        cr_assert_eq(harness_process_wait_exit(&process, 20000), 0, "stderr: %s", process.err);
        char line[160];
        snprintf(line, sizeof(line), "\nram:        %s, transparent huge pages asked and %s (policy %s)\n", file,
                 guest_memory_thp_policy_grants(thp_host) ? "granted" : "not granted: 4 KiB pages", thp_host);
        cr_assert(strstr(process.out, line) != NULL, "no '%s' in:\n%s", line + 1, process.out);
        harness_process_free(&process);
    }

    for (unsigned v = 0; v < 2; v++)
        cr_assert(wait_pages_advance(c, v, 0, 10000), "vcpu %u never dirtied", v);

    struct api_error error = call_error(c, "vm.resume", NULL);
    cr_assert_eq(error.code, API_ERR_VM_RUNNING);
    error = call_error(c, "vm.memory-digest", NULL);
    cr_assert_eq(error.code, API_ERR_VM_RUNNING);
    cr_assert(strstr(error.message, "vm.pause"), "%s", error.message);

    json_decref(call_ok(c, "vm.pause", NULL));
    info = call_ok(c, "vm.info", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(info, "state")), "paused");
    json_decref(info);
    uint64_t before[2] = {pages_written_via_api(c, 0), pages_written_via_api(c, 1)};
    struct timespec observe = {.tv_nsec = 200000000};   /* an interval to observe, not a sync */
    nanosleep(&observe, NULL);
    cr_assert_eq(pages_written_via_api(c, 0), before[0], "vcpu 0 wrote while paused");
    cr_assert_eq(pages_written_via_api(c, 1), before[1], "vcpu 1 wrote while paused");
    error = call_error(c, "vm.pause", NULL);
    cr_assert_eq(error.code, API_ERR_VM_PAUSED);

    json_t *d1 = call_ok(c, "vm.memory-digest", NULL);
    json_t *d2 = call_ok(c, "vm.memory-digest", NULL);
    cr_assert_eq(strlen(json_string_value(json_object_get(d1, "digest"))), 32);
    cr_assert_str_eq(json_string_value(json_object_get(d1, "digest")),
                     json_string_value(json_object_get(d2, "digest")), "digest of a paused VM must be stable");
    cr_assert_eq(json_array_size(json_object_get(d1, "chunks")), 4);
    json_decref(d1);
    json_decref(d2);

    json_decref(call_ok(c, "vm.resume", NULL));
    for (unsigned v = 0; v < 2; v++)
        cr_assert(wait_pages_advance(c, v, before[v], 1000), "vcpu %u did not advance after resume", v);
    api_client_close(c);
    api_vm_stop(&t);
}

Test(api_server_vm, events_subscribe_gets_pause_and_resume, .timeout = 90)
{
    struct api_vm t;
    api_vm_start(&t, "dirtier,wss=16M", "off");
    struct api_client *watcher = connect_or_fail(t.path);
    struct api_client *control = connect_or_fail(t.path);
    json_t *r = call_ok(watcher, "events.subscribe", NULL);
    cr_assert(json_is_true(json_object_get(r, "subscribed")));
    json_decref(r);
    json_decref(call_ok(control, "vm.pause", NULL));
    json_decref(call_ok(control, "vm.resume", NULL));
    static const char *const states[] = {"paused", "running"};
    static const char *const previous[] = {"running", "paused"};
    for (int i = 0; i < 2; i++) {
        json_t *event;
        cr_assert_eq(api_client_next_event(watcher, &event, TIMEOUT_MS), 0, "event %d missing", i);
        cr_assert_str_eq(json_string_value(json_object_get(event, "event")), "vm.state");
        cr_assert(json_integer_value(json_object_get(event, "ts_ms")) > 1600000000000LL);
        json_t *data = json_object_get(event, "data");
        cr_assert_str_eq(json_string_value(json_object_get(data, "state")), states[i]);
        cr_assert_str_eq(json_string_value(json_object_get(data, "previous")), previous[i]);
        json_decref(event);
    }
    /* the controlling connection did not subscribe: it got no events */
    json_t *message;
    cr_assert_eq(api_client_read(control, &message, 100), -ETIMEDOUT);

    /* vm.shutdown: reply, then the shutdown event before the server goes */
    json_decref(call_ok(control, "vm.shutdown", NULL));
    vm_wait(t.harness.vm);
    api_server_destroy(t.server);
    json_t *event;
    cr_assert_eq(api_client_next_event(watcher, &event, TIMEOUT_MS), 0, "no shutdown event");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(event, "data"), "state")), "shutdown");
    json_decref(event);
    cr_assert_eq(api_client_next_event(watcher, &event, TIMEOUT_MS), -EPIPE);
    api_client_close(watcher);
    api_client_close(control);
    vm_destroy(t.harness.vm);
    t.harness.vm = NULL;
    harness_vm_stop(&t.harness);
}

/* A vm.pause held in flight (its vCPUs held before they park, the give-up
 * time out of reach): the other client is answered, and sees the operator
 * state still "running", while a's pause provably has not completed. */
Test(api_server_vm, pause_in_flight_does_not_block_other_clients, .timeout = 90)
{
    struct api_vm t;
    api_vm_start(&t, "dirtier,wss=32M", "off");
    struct api_client *a = connect_or_fail(t.path);
    struct api_client *b = connect_or_fail(t.path);
    for (int round = 0; round < 2; round++) {
        harness_hold_pauses();
        int64_t id;
        cr_assert_eq(api_client_send(a, "vm.pause", NULL, &id), 0);
        cr_assert(harness_wait_pauses_held(2, TIMEOUT_MS), "round %d: the pause never reached the vCPUs", round);
        json_t *info = call_ok(b, "vm.info", NULL);
        cr_assert_str_eq(json_string_value(json_object_get(info, "state")), "running", "round %d", round);
        json_decref(info);
        json_decref(call_ok(b, "vm.guest-stats", NULL));
        struct pollfd reply_ready = { .fd = api_client_fd(a), .events = POLLIN };
        cr_assert_eq(poll(&reply_ready, 1, 0), 0, "round %d: a's pause answered while held", round);
        cr_assert_eq(harness_pauses_held(), 2, "round %d", round);
        harness_release_pauses();
        json_t *reply = read_message(a);
        cr_assert(json_is_true(json_object_get(reply, "ok")), "round %d", round);
        cr_assert_str_eq(json_string_value(json_object_get(json_object_get(reply, "result"), "state")), "paused");
        json_decref(reply);
        json_decref(call_ok(b, "vm.resume", NULL));
        /* vm.resume only releases the vCPUs; a vCPU not yet scheduled out of
         * its park when the next round's pause arrives stays parked without
         * passing the hook, and that round would wait for it in vain. */
        cr_assert(harness_wait_all_vcpus_advance(t.harness.vm, 100, 20000),
                  "round %d: the vCPUs did not run after vm.resume", round);
    }
    /* a vm.pause whose client vanished still happens; nothing crashes */
    struct api_client *gone = connect_or_fail(t.path);
    send_text(gone, "{\"id\":1,\"cmd\":\"vm.pause\"}\n");
    api_client_close(gone);
    bool paused = false;
    for (int i = 0; i < 5000 && !paused; i++) {
        json_t *info = call_ok(b, "vm.info", NULL);
        paused = strcmp(json_string_value(json_object_get(info, "state")), "paused") == 0;
        json_decref(info);
        if (!paused) {
            struct timespec tick = {.tv_nsec = 1000000};
            nanosleep(&tick, NULL);
        }
    }
    cr_assert(paused);
    json_decref(call_ok(b, "vm.resume", NULL));
    api_client_close(a);
    api_client_close(b);
    api_vm_stop(&t);
}

/* The integration tests of the issue, each with a running dirtier guest:
 * the VM-less versions could not show that a guest keeps running. */

static const char *state_via_api(struct api_client *client, char *out, size_t size)
{
    json_t *info = call_ok(client, "vm.info", NULL);
    snprintf(out, size, "%s", json_string_value(json_object_get(info, "state")));
    json_decref(info);
    return out;
}

Test(api_server_vm, half_line_from_one_client_does_not_delay_another, .timeout = 90)
{
    struct api_vm t;
    api_vm_start(&t, "dirtier,wss=32M", "off");
    struct api_client *a = connect_or_fail(t.path);
    struct api_client *b = connect_or_fail(t.path);
    for (unsigned v = 0; v < 2; v++)
        cr_assert(wait_pages_advance(b, v, 0, 1000), "vcpu %u never dirtied", v);

    /* a sends half a request and stalls */
    send_text(a, "{\"id\":1,\"cmd\":\"vm.gu");
    /* b is answered while a's line is pending: epoll-thread commands and
     * worker commands (pause/resume) alike */
    char state[32];
    for (int i = 0; i < 10; i++) {
        cr_assert_str_eq(state_via_api(b, state, sizeof(state)), "running");
        json_decref(call_ok(b, "vm.guest-stats", NULL));
    }
    json_t *r = call_ok(b, "vm.pause", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(r, "state")), "paused");
    json_decref(r);
    r = call_ok(b, "vm.resume", NULL);
    cr_assert_str_eq(json_string_value(json_object_get(r, "state")), "running");
    json_decref(r);
    /* ... and a's half line really was still pending all that time */
    json_t *early;
    cr_assert_eq(api_client_read(a, &early, 100), -ETIMEDOUT, "a was answered before its line ended");

    uint64_t before = pages_written_via_api(b, 0);
    send_text(a, "est-stats\"}\n");
    json_t *reply = read_message(a);
    cr_assert(json_is_true(json_object_get(reply, "ok")), "a's completed line failed");
    cr_assert_eq(json_integer_value(json_object_get(reply, "id")), 1);
    json_t *vcpu0 = json_array_get(json_object_get(json_object_get(reply, "result"), "vcpus"), 0);
    cr_assert_geq((uint64_t)json_integer_value(json_object_get(vcpu0, "pages_written")), before);
    json_decref(reply);
    api_client_close(a);
    api_client_close(b);
    api_vm_stop(&t);
}

struct client_count_wait {
    struct api_server *server;
    unsigned expected;
};

static bool client_count_is(void *argument)
{
    struct client_count_wait *w = argument;
    return api_server_client_count(w->server) == w->expected;
}

Test(api_server_vm, client_disconnecting_mid_request_leaves_the_vm_running, .timeout = 90)
{
    struct api_vm t;
    api_vm_start(&t, "dirtier,wss=32M", "off");
    struct api_client *b = connect_or_fail(t.path);
    for (int i = 0; i < 10; i++) {
        /* half a vm.pause, then gone: the request never existed */
        struct api_client *a = connect_or_fail(t.path);
        send_text(a, "{\"id\":1,\"cmd\":\"vm.pause\"");
        api_client_close(a);
        /* whole requests whose client is gone before the reply: one on the
         * epoll thread, one on the worker (fails vm-running) */
        a = connect_or_fail(t.path);
        send_text(a, "{\"id\":2,\"cmd\":\"vm.guest-stats\"}\n");
        api_client_close(a);
        a = connect_or_fail(t.path);
        send_text(a, "{\"id\":3,\"cmd\":\"vm.memory-digest\"}\n");
        api_client_close(a);
    }
    /* every dead connection is reaped: only b is left */
    struct client_count_wait wait = {t.server, 1};
    cr_assert(harness_wait_until(client_count_is, &wait, TIMEOUT_MS), "%u clients left, expected 1",
              api_server_client_count(t.server));
    char state[32];
    cr_assert_str_eq(state_via_api(b, state, sizeof(state)), "running", "a half vm.pause was executed");
    for (unsigned v = 0; v < 2; v++)
        cr_assert(wait_pages_advance(b, v, pages_written_via_api(b, v), 1000), "vcpu %u stopped", v);
    /* and the server still serves every kind of command */
    json_decref(call_ok(b, "vm.pause", NULL));
    cr_assert_str_eq(state_via_api(b, state, sizeof(state)), "paused");
    json_decref(call_ok(b, "vm.resume", NULL));
    struct api_client *c = connect_or_fail(t.path);
    cr_assert_str_eq(state_via_api(c, state, sizeof(state)), "running");
    api_client_close(c);
    api_client_close(b);
    api_vm_stop(&t);
}

Test(api_server_vm, socket_is_mode_0600_and_removed_on_destroy, .timeout = 90)
{
    struct api_vm t;
    mode_t old = umask(0);      /* the server must not depend on the umask */
    api_vm_start(&t, "dirtier,wss=16M", "off");
    umask(old);
    struct stat st;
    cr_assert_eq(lstat(t.path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0600, "mode is %o", st.st_mode & 0777);
    struct api_client *c = connect_or_fail(t.path);
    cr_assert(wait_pages_advance(c, 0, 0, 1000), "the guest is not running");
    api_client_close(c);
    api_vm_stop(&t);
    cr_assert_eq(lstat(t.path, &st), -1, "socket file left behind");
    cr_assert_eq(errno, ENOENT);
}

Test(api_server_vm, second_ringvm_process_refuses_to_start, .timeout = 90)
{
    harness_require_kvm();
    const char *ringvm = harness_program("ringvm");
    if (access(ringvm, X_OK) != 0)
        harness_skip("%s not built (make all)", ringvm);
    struct api_vm t;
    api_vm_start(&t, "dirtier,wss=32M", "off");
    struct api_client *c = connect_or_fail(t.path);
    for (unsigned v = 0; v < 2; v++)
        cr_assert(wait_pages_advance(c, v, 0, 1000), "vcpu %u never dirtied", v);

    struct harness_process process;
    char *argv[] = {(char *)ringvm, "--memory", "64M", "--vcpus", "1", "--workload", "idle",
                    "--api-socket", t.path, NULL};
    harness_spawn(&process, argv);
    int status = harness_process_wait_exit(&process, 20000);
    cr_assert_eq(status, 1, "the second ringvm must exit 1 (status %d); stderr:\n%s", status, process.err);
    char expected[256];
    snprintf(expected, sizeof(expected), "ringvm: --api-socket %s: another ringvm is listening there\n",
             t.path);
    cr_assert(strstr(process.err, expected), "expected '%s' in stderr:\n%s", expected, process.err);
    harness_process_free(&process);

    /* The first one still owns the path, serves, and its guest runs. */
    struct stat st;
    cr_assert_eq(lstat(t.path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    struct api_client *d = connect_or_fail(t.path);
    char state[32];
    cr_assert_str_eq(state_via_api(d, state, sizeof(state)), "running");
    for (unsigned v = 0; v < 2; v++)
        cr_assert(wait_pages_advance(d, v, pages_written_via_api(d, v), 1000), "vcpu %u stopped", v);
    api_client_close(d);
    api_client_close(c);
    api_vm_stop(&t);
}
