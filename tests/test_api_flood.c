/*
 * Hostile API input during a migration (issue 7): 10 000 random and
 * malformed lines on 8 connections at once (seeded, repeatable) to a ringvm
 * process whose guest is being live-migrated to another ringvm process. Every
 * line gets its one error reply, the connections stay usable, and the
 * migration completes with equal digests.
 *
 * The flood provably overlaps the migration: it starts once the source is
 * sending (active, bulk), and the destination holds the stream at the
 * start of iteration 0 (test hook RINGVM_FAULT_INJECT=iteration0, see
 * migration/migration.c) until the flood is over. The 16 MiB the guest
 * wrote are twice what the socket buffers can hold (8 MiB at most; ~4 MiB
 * measured), so the source cannot get past its bulk copy while held, and
 * the progress sample taken after the last line was answered must still
 * say active. The data does flow meanwhile: at the 8 MiB/s cap the source
 * needs ~0.5 s to fill the buffers, longer than the flood takes here
 * (~0.3 s; the test prints both). Then the destination is released and
 * the migration completes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "tests/harness.h"

#define CONNECTIONS 8
#define LINES_PER_CONNECTION 1250

struct flooder {
    const char *socket;
    unsigned index;
    unsigned replies;
    unsigned errors;
    int failure;
};

static void random_line(unsigned short seed[3], char *line, size_t size)
{
    static const char *const templates[] = {
        "{\"id\":%ld,\"cmd\":\"vm.nonexistent\"}",
        "{\"id\":%ld,\"cmd\":\"migration.start\",\"args\":{\"dest\":12}}",
        "{\"id\":%ld,\"cmd\":\"migration.start\",\"args\":{\"dest\":\"udp:x\"}}",
        "{\"id\":%ld,\"cmd\":\"vm.info\",\"args\":[1,2,3]}",
        "{\"id\":%ld,\"cmd\":42}",
        "{\"id\":\"%ld\",\"cmd\":\"vm.info\",\"args\":{\"x\":1e999}}",
        "{\"id\":%ld,\"cmd\":\"migration.progress\",\"args\":{\"unknown\":true}}",
        "{\"id\":%ld,\"cmd\":\"migration.cancel\",\"args\":{\"x\":\"y\"}}",
        "[%ld]",
        "{\"id\":%ld",
        "%ld}",
        "null %ld",
    };
    long kind = nrand48(seed) % 16;
    if (kind < 12) {
        snprintf(line, size, templates[kind], nrand48(seed));
    } else if (kind == 12) {        /* deep nesting */
        size_t depth = 1 + (size_t)nrand48(seed) % 400, n = 0;
        for (size_t i = 0; i < depth && n + 2 < size; i++)
            line[n++] = '[';
        line[n] = '\0';
    } else {                        /* random bytes: anything but newline and NUL */
        size_t length = 1 + (size_t)nrand48(seed) % (size - 2);
        for (size_t i = 0; i < length; i++) {
            char c;
            do
                c = (char)(nrand48(seed) & 0xff);
            while (c == '\n' || c == '\0' || c == '\r');
            line[i] = c;
        }
        line[0] = 'x';              /* never a blank line */
        line[length] = '\0';
    }
}

static void *flood_main(void *argument)
{
    struct flooder *f = argument;
    struct api_client *client = NULL;
    char error[512];
    if (api_client_connect(&client, f->socket, error, sizeof(error)) != 0) {
        f->failure = 1;
        return NULL;
    }
    unsigned short seed[3] = { 0x1234, (unsigned short)f->index, 0x5678 };
    char line[1024];
    for (unsigned i = 0; i < LINES_PER_CONNECTION; i++) {
        random_line(seed, line, sizeof(line) - 1);
        size_t length = strlen(line);
        line[length++] = '\n';
        if (api_client_send_raw(client, line, length) != 0) {
            f->failure = 2;
            break;
        }
        json_t *reply = NULL;
        int r = api_client_read(client, &reply, 5000);
        if (r == -EPROTO)
            continue;   /* not reached: the server always answers with JSON */
        if (r != 0) {
            f->failure = 3;
            break;
        }
        f->replies++;
        if (json_object_get(reply, "error") != NULL)
            f->errors++;
        json_decref(reply);
    }
    /* The connection still works. */
    json_t *result = NULL;
    struct api_error e;
    if (f->failure == 0 && api_client_call(client, "vm.info", NULL, &result, &e, 5000) != 0)
        f->failure = 4;
    json_decref(result);
    api_client_close(client);
    return NULL;
}

Test(api_flood, ten_thousand_malformed_lines_on_8_connections_while_migrating, .timeout = 120)
{
    harness_require_kvm();
    char dir[] = "/tmp/ringvm-flood-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char src_socket[128], dst_socket[128], incoming[160];
    snprintf(src_socket, sizeof(src_socket), "%s/src.sock", dir);
    snprintf(dst_socket, sizeof(dst_socket), "%s/dst.sock", dir);
    snprintf(incoming, sizeof(incoming), "unix:%s/in.sock", dir);
    struct harness_process src, dst;
    char *src_argv[] = { (char *)harness_program("ringvm"), "--memory", "128M", "--workload", "ledger,wss=16M,verify=1",
                         "--api-socket", src_socket, NULL };
    char release[160], release_env[200];
    snprintf(release, sizeof(release), "%s/release", dir);
    snprintf(release_env, sizeof(release_env), "RINGVM_FAULT_RELEASE=%s", release);
    /* stderr (where the hook reports) merged into stdout */
    char *dst_argv[] = { "/bin/sh", "-c", "exec \"$@\" 2>&1", "sh", "/usr/bin/env", "RINGVM_FAULT_INJECT=iteration0",
                         release_env,
                         (char *)harness_program("ringvm"), "--memory", "128M", "--workload", "ledger,wss=16M,verify=1",
                         "--api-socket", dst_socket, "--incoming", incoming, NULL };
    harness_spawn(&src, src_argv);
    harness_spawn(&dst, dst_argv);
    cr_assert(harness_process_wait_output(&src, "LEDGER OK", 1, 30000), "%s", src.out);
    char error[512];
    struct api_client *control = NULL;
    cr_assert_eq(api_client_connect(&control, src_socket, error, sizeof(error)), 0, "%s", error);
    /* Wait for the destination to listen (its progress says so). */
    struct api_client *dc = NULL;
    for (unsigned i = 0;; i++) {
        json_t *p = NULL;
        struct api_error e;
        if (dc != NULL || api_client_connect(&dc, dst_socket, error, sizeof(error)) == 0) {
            if (api_client_call(dc, "migration.progress", NULL, &p, &e, 5000) == 0) {
                bool listening = strcmp(json_string_value(json_object_get(p, "phase")), "listening") == 0;
                json_decref(p);
                if (listening)
                    break;
            }
        }
        cr_assert_lt(i, 1000, "the destination does not listen");
        poll(NULL, 0, 20);
    }

    json_t *result = NULL;
    struct api_error e;
    cr_assert_eq(api_client_call(control, "migration.start",
                                 json_pack("{s:s, s:i, s:b, s:I, s:b, s:i, s:i}", "dest", incoming, "max_bandwidth_mibs",
                                           8, "verify_digest", 1, "downtime_ms",
                                           (json_int_t)harness_digest_downtime_ms(128ull << 20), "keep_alive", 1,
                                           "timeout_s", 120,
                                           /* the hold must not look like a stalled link */
                                           "stall_timeout_s", 100),
                                 &result, &e, 5000), 0, "%s", e.message);
    json_decref(result);
    result = NULL;
    /* The flood starts while the migration moves data. */
    for (unsigned i = 0;; i++) {
        cr_assert_eq(api_client_call(control, "migration.progress", NULL, &result, &e, 5000), 0);
        const char *state = json_string_value(json_object_get(result, "state"));
        const char *phase = json_string_value(json_object_get(result, "phase"));
        bool moving = strcmp(state, "active") == 0 && strcmp(phase, "bulk") == 0;
        cr_assert(strcmp(state, "setup") == 0 || strcmp(state, "active") == 0, "%s",
                  json_dumps(result, JSON_COMPACT));
        json_decref(result);
        result = NULL;
        if (moving)
            break;
        cr_assert_lt(i, 5000, "the migration never started sending");
        poll(NULL, 0, 1);
    }

    struct timespec flood_start, flood_end;
    clock_gettime(CLOCK_MONOTONIC, &flood_start);
    struct flooder flooders[CONNECTIONS];
    pthread_t threads[CONNECTIONS];
    for (unsigned i = 0; i < CONNECTIONS; i++) {
        flooders[i] = (struct flooder){ .socket = src_socket, .index = i };
        cr_assert_eq(pthread_create(&threads[i], NULL, flood_main, &flooders[i]), 0);
    }
    unsigned replies = 0, errors = 0;
    for (unsigned i = 0; i < CONNECTIONS; i++) {
        pthread_join(threads[i], NULL);
        cr_assert_eq(flooders[i].failure, 0, "connection %u failed (step %d) after %u replies", i,
                     flooders[i].failure, flooders[i].replies);
        replies += flooders[i].replies;
        errors += flooders[i].errors;
    }
    cr_assert_eq(replies, CONNECTIONS * LINES_PER_CONNECTION, "one reply per line");
    cr_assert_eq(errors, CONNECTIONS * LINES_PER_CONNECTION, "every line is refused with an error");
    clock_gettime(CLOCK_MONOTONIC, &flood_end);
    /* Every line was sent (and answered) before this sample: the migration
     * was active all along. */
    cr_assert_eq(api_client_call(control, "migration.progress", NULL, &result, &e, 5000), 0);
    cr_assert_str_eq(json_string_value(json_object_get(result, "state")), "active", "after the flood: %s",
                     json_dumps(result, JSON_COMPACT));
    cr_assert_str_eq(json_string_value(json_object_get(result, "phase")), "bulk", "after the flood: %s",
                     json_dumps(result, JSON_COMPACT));
    fprintf(stderr, "api_flood: the flood took %ld ms; %lld bytes sent when it was over\n",
            (long)((flood_end.tv_sec - flood_start.tv_sec) * 1000 + (flood_end.tv_nsec - flood_start.tv_nsec) / 1000000),
            (long long)json_integer_value(json_object_get(json_object_get(result, "memory"), "transferred")));
    json_decref(result);
    result = NULL;
    /* The hold held: the destination stopped at iteration 0. */
    cr_assert(harness_process_wait_output(&dst, "fault-inject: stopped at iteration0", 1, 30000), "%s", dst.out);
    harness_release_fault(release);

    /* The migration completes. */
    const char *state = "";
    for (unsigned i = 0;; i++) {
        json_decref(result);
        result = NULL;
        cr_assert_eq(api_client_call(control, "migration.progress", NULL, &result, &e, 5000), 0);
        state = json_string_value(json_object_get(result, "state"));
        if (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0)
            break;
        cr_assert_lt(i, 3000, "the migration did not end");
        poll(NULL, 0, 20);
    }
    cr_assert_str_eq(state, "completed", "%s", json_dumps(result, JSON_COMPACT));
    cr_assert_str_eq(json_string_value(json_object_get(result, "memory_digest_source")),
                     json_string_value(json_object_get(result, "memory_digest_destination")));
    json_decref(result);
    cr_assert(harness_process_wait_output(&dst, "LEDGER OK", 1, 20000), "%s", dst.out);
    cr_assert_null(strstr(dst.out, "MISMATCH"));
    cr_assert_eq(api_client_call(control, "vm.shutdown", NULL, &result, &e, 5000), 0);
    json_decref(result);
    api_client_close(control);
    cr_assert_eq(harness_process_wait_exit(&src, 10000), 0, "%s", src.err);
    cr_assert_eq(api_client_call(dc, "vm.shutdown", NULL, &result, &e, 5000), 0);
    json_decref(result);
    api_client_close(dc);
    cr_assert_eq(harness_process_wait_exit(&dst, 10000), 0, "%s", dst.err);
    harness_process_free(&src);
    harness_process_free(&dst);
    char command[256];
    snprintf(command, sizeof(command), "rm -rf %s", dir);
    (void)!system(command);
}
