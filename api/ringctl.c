/*
 * ringctl: command-line client of the ringvm JSON API.
 *
 *   ringctl [-s PATH] [--json] [--timeout MS] COMMAND [OPTIONS]
 *
 * Exit status: 0 ok, 1 the VMM answered an error (code and message on
 * stderr), 2 usage, 3 cannot connect / connection lost.
 *
 * Adding a command: one entry in `commands` below (name, usage, help, run,
 * summary).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "api/report.h"
#include "api/ringctl_console.h"
#include "api/ringctl_migration.h"
#include "api/ringctl_session.h"
#include "bpf/probes.h"
#include "vmm/memory.h"

#define EXIT_VMM_ERROR RINGCTL_EXIT_VMM_ERROR
#define EXIT_USAGE RINGCTL_EXIT_USAGE
#define EXIT_CONNECT RINGCTL_EXIT_CONNECT

struct ringctl_command {
    const char *name;
    const char *usage;      /* after "ringctl [-s PATH] " */
    const char *help;       /* full text, for `ringctl COMMAND --help` */
    int (*run)(struct ringctl_session *ctl, int argc, char **argv);
    const char *summary;    /* one complete line (<= 62 columns), for `ringctl --help`;
                               every entry has one (tests/test_ringctl_help.c) */
};

static const struct ringctl_command commands[];

static const char global_help[] =
    "Global options (before the command):\n"
    "  -s, --socket PATH   API socket of the ringvm to control (default: $RINGVM_SOCKET)\n"
    "      --json          print the raw JSON result instead of text\n"
    "      --timeout MS    give up waiting for a reply after MS ms (default 60000)\n"
    "  -h, --help          this help; `ringctl COMMAND --help` for one command\n"
    "Exit status: 0 ok, 1 the VMM answered an error (code and message on stderr),\n"
    "2 usage error, 3 cannot connect or connection lost.\n";

static void usage_all(FILE *out)
{
    fprintf(out, "usage: ringctl [-s PATH] [--json] [--timeout MS] COMMAND [OPTIONS]\n\nCommands:\n");
    for (const struct ringctl_command *c = commands; c->name; c++)
        fprintf(out, "  %-15s %s\n", c->name, c->summary);
    fprintf(out, "\n%s", global_help);
}

static void usage_command(FILE *out, const struct ringctl_command *command)
{
    fprintf(out, "usage: ringctl [-s PATH] [--json] %s\n\n%s\n", command->usage, command->help);
}

/* ---- connection and calls ------------------------------------------------------- */

/* 0 with *result, or an exit status (message printed). */
static int call(struct ringctl_session *ctl, const char *cmd, json_t *args, json_t **result)
{
    return ringctl_session_call(ctl, cmd, args, result, false);
}

static void print_json(json_t *value)
{
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text) {
        printf("%s\n", text);
        free(text);
    }
    fflush(stdout);
}

/* ---- generic text output ----------------------------------------------------------- */

static void format_scalar(json_t *value, char *out, size_t size)
{
    if (json_is_string(value))
        snprintf(out, size, "%s", json_string_value(value));
    else if (json_is_integer(value))
        snprintf(out, size, "%" JSON_INTEGER_FORMAT, json_integer_value(value));
    else if (json_is_real(value))
        snprintf(out, size, "%.3f", json_real_value(value));
    else if (json_is_true(value))
        snprintf(out, size, "yes");
    else if (json_is_false(value))
        snprintf(out, size, "no");
    else if (json_is_null(value))
        snprintf(out, size, "-");
    else {
        char *text = json_dumps(value, JSON_COMPACT);
        snprintf(out, size, "%s", text ? text : "?");
        free(text);
    }
}

/* An array of objects as a table, columns from the first element. */
static void print_table(json_t *rows, const char *indent)
{
    json_t *first = json_array_get(rows, 0);
    if (!json_is_object(first))
        return;
    const char *key;
    json_t *value;
    size_t columns = json_object_size(first), c = 0;
    int *widths = calloc(columns, sizeof(int));
    const char **keys = calloc(columns, sizeof(char *));
    if (!widths || !keys) {
        free(widths);
        free(keys);
        return;
    }
    json_object_foreach(first, key, value) {
        keys[c] = key;
        widths[c] = (int)strlen(key);
        c++;
    }
    size_t i;
    json_t *row;
    char cell[128];
    json_array_foreach(rows, i, row) {
        for (c = 0; c < columns; c++) {
            format_scalar(json_object_get(row, keys[c]), cell, sizeof(cell));
            if ((int)strlen(cell) > widths[c])
                widths[c] = (int)strlen(cell);
        }
    }
    printf("%s", indent);
    for (c = 0; c < columns; c++)
        printf("%*s%s", widths[c], keys[c], c + 1 < columns ? "  " : "\n");
    json_array_foreach(rows, i, row) {
        printf("%s", indent);
        for (c = 0; c < columns; c++) {
            format_scalar(json_object_get(row, keys[c]), cell, sizeof(cell));
            printf("%*s%s", widths[c], cell, c + 1 < columns ? "  " : "\n");
        }
    }
    free(widths);
    free(keys);
}

/* Scalars as "key: value", nested objects indented, arrays of objects as
 * tables. */
static void print_object(json_t *object, const char *indent)
{
    const char *key;
    json_t *value;
    char text[256], deeper[32];
    snprintf(deeper, sizeof(deeper), "%s  ", indent);
    json_object_foreach(object, key, value) {
        if (json_is_object(value)) {
            printf("%s%s:\n", indent, key);
            print_object(value, deeper);
        } else if (json_is_array(value) && json_is_object(json_array_get(value, 0))) {
            printf("%s%s:\n", indent, key);
            print_table(value, deeper);
        } else {
            format_scalar(value, text, sizeof(text));
            printf("%s%-20s %s\n", indent, key, text);
        }
    }
}

static int output(struct ringctl_session *ctl, json_t *result)
{
    if (ctl->json)
        print_json(result);
    else
        print_object(result, "");
    json_decref(result);
    fflush(stdout);
    return 0;
}

/* ---- per-command option parsing ------------------------------------------------------ */

/* Parses options common to every command (--help, --json) plus the
 * command's own. Returns the getopt result the command must handle, -1 at
 * the end; exits for --help and usage errors. */
static int next_option(struct ringctl_session *ctl, const struct ringctl_command *command, int argc,
                       char **argv, const struct option *extra, const char *short_extra)
{
    static struct option merged[16];
    size_t n = 0;
    merged[n++] = (struct option){"help", no_argument, NULL, 'h'};
    merged[n++] = (struct option){"json", no_argument, NULL, 'J'};
    for (size_t i = 0; extra && extra[i].name && n < 15; i++)
        merged[n++] = extra[i];
    merged[n] = (struct option){0};
    char shorts[32];
    snprintf(shorts, sizeof(shorts), "+h%s", short_extra ? short_extra : "");
    for (;;) {
        int opt = getopt_long(argc, argv, shorts, merged, NULL);
        if (opt == 'h') {
            usage_command(stdout, command);
            exit(0);
        }
        if (opt == 'J') {
            ctl->json = true;
            continue;
        }
        if (opt == '?') {
            usage_command(stderr, command);
            exit(EXIT_USAGE);
        }
        return opt;
    }
}

static void no_operands(const struct ringctl_command *command, int argc, char **argv)
{
    if (optind < argc) {
        fprintf(stderr, "ringctl %s: unexpected argument '%s'\n", command->name, argv[optind]);
        usage_command(stderr, command);
        exit(EXIT_USAGE);
    }
}

static long parse_number(const struct ringctl_command *command, const char *option,
                         const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < min || value > max) {
        fprintf(stderr, "ringctl %s: %s '%s': expected an integer %ld..%ld\n", command->name,
                option, text, min, max);
        exit(EXIT_USAGE);
    }
    return value;
}

/* ---- commands ------------------------------------------------------------------------------- */

static const struct ringctl_command *find_command(const char *name)
{
    for (const struct ringctl_command *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static int simple_command(struct ringctl_session *ctl, int argc, char **argv, const char *name,
                          const char *cmd, json_t *(*make_args)(void))
{
    const struct ringctl_command *command = find_command(name);
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    no_operands(command, argc, argv);
    json_t *result;
    int status = call(ctl, cmd, make_args ? make_args() : NULL, &result);
    return status ? status : output(ctl, result);
}

static void print_duration(uint64_t ms)
{
    uint64_t s = ms / 1000;
    if (s >= 3600)
        printf("%" PRIu64 "h%02" PRIu64 "m%02" PRIu64 "s", s / 3600, s / 60 % 60, s % 60);
    else if (s >= 60)
        printf("%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
    else
        printf("%.3f s", (double)ms / 1000.0);
}

/* "ram:" line of info: the file behind guest RAM and its page size as far
 * as vm.info knows it (the policy word decides whether advised mappings
 * get huge pages; vmm/memory.h guest_memory_thp_policy). */
static void print_ram(json_t *info)
{
    const char *file = json_string_value(json_object_get(info, "ram_file"));
    const char *policy = json_string_value(json_object_get(info, "thp_host"));
    if (file == NULL)
        file = "anonymous";
    if (policy == NULL)
        policy = "unknown";
    if (json_is_true(json_object_get(info, "hugepages"))) {
        printf("ram:        %s, 2 MiB pages\n", file);
        return;
    }
    if (!json_is_true(json_object_get(info, "thp"))) {
        printf("ram:        %s, 4 KiB pages (--no-thp)\n", file);
        return;
    }
    printf("ram:        %s, transparent huge pages asked and %s (policy %s)\n", file,
           guest_memory_thp_policy_grants(policy) ? "granted" : "not granted: 4 KiB pages", policy);
}

static int run_info(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("info");
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    no_operands(command, argc, argv);
    json_t *r;
    int status = call(ctl, "vm.info", NULL, &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    uint64_t memory = (uint64_t)json_integer_value(json_object_get(r, "memory_bytes"));
    printf("state:      %s\n", json_string_value(json_object_get(r, "state")));
    printf("vcpus:      %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(r, "vcpus")));
    printf("memory:     %" PRIu64 " MiB (%" PRIu64 " bytes)\n", memory >> 20, memory);
    printf("workload:   %s\n", json_string_value(json_object_get(r, "workload")));
    printf("dirty log:  %s\n", json_string_value(json_object_get(r, "dirty_log")));
    print_ram(r);
    printf("uptime:     ");
    print_duration((uint64_t)json_integer_value(json_object_get(r, "uptime_ms")));
    printf("\npid:        %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(r, "pid")));
    json_decref(r);
    return 0;
}

static int run_pause(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("pause");
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    no_operands(command, argc, argv);
    json_t *r;
    int status = call(ctl, "vm.pause", NULL, &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    printf("paused (vCPUs stopped in %.3f ms)\n",
           json_number_value(json_object_get(r, "pause_latency_ms")));
    json_decref(r);
    return 0;
}

static int run_resume(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("resume");
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    no_operands(command, argc, argv);
    json_t *r;
    int status = call(ctl, "vm.resume", NULL, &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    printf("running\n");
    json_decref(r);
    return 0;
}

static int run_shutdown(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("shutdown");
    static const struct option options[] = {{"exit-code", required_argument, NULL, 'e'}, {0}};
    long exit_code = -1;
    int opt;
    while ((opt = next_option(ctl, command, argc, argv, options, NULL)) != -1)
        if (opt == 'e')
            exit_code = parse_number(command, "--exit-code", optarg, 0, 255);
    no_operands(command, argc, argv);
    json_t *args = exit_code >= 0 ? json_pack("{s:i}", "exit_code", (int)exit_code) : NULL;
    json_t *r;
    int status = call(ctl, "vm.shutdown", args, &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    printf(json_is_true(json_object_get(r, "already")) ? "shutdown already in progress\n"
                                                        : "shutdown requested\n");
    json_decref(r);
    return 0;
}

static int run_dirty_tracking(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("dirty-tracking");
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    if (optind + 1 != argc || (strcmp(argv[optind], "on") != 0 && strcmp(argv[optind], "off") != 0)) {
        fprintf(stderr, "ringctl dirty-tracking: expected 'on' or 'off'\n");
        usage_command(stderr, command);
        return EXIT_USAGE;
    }
    bool enable = strcmp(argv[optind], "on") == 0;
    json_t *r;
    int status = call(ctl, "vm.dirty-tracking", json_pack("{s:b}", "enable", enable), &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    bool tracking = json_is_true(json_object_get(r, "tracking"));
    char holders[128] = "";
    size_t i;
    json_t *name;
    json_array_foreach(json_object_get(r, "tracking_holders"), i, name)
        snprintf(holders + strlen(holders), sizeof(holders) - strlen(holders), "%s%s", i ? ", " : "",
                 json_string_value(name));
    if (tracking)
        printf("dirty tracking: on (held by %s)\n", holders);
    else
        printf("dirty tracking: off\n");
    json_decref(r);
    return 0;
}

static int run_dirty_stats(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("dirty-stats");
    static const struct option options[] = {{"watch", no_argument, NULL, 'w'},
                                            {"interval", required_argument, NULL, 'i'},
                                            {0}};
    bool watch = false;
    long interval = 1000;
    int opt;
    while ((opt = next_option(ctl, command, argc, argv, options, "w")) != -1) {
        if (opt == 'w')
            watch = true;
        else if (opt == 'i')
            interval = parse_number(command, "--interval", optarg, 10, 3600000);
    }
    no_operands(command, argc, argv);
    bool tty = isatty(STDOUT_FILENO);
    bool hinted = false;
    for (;;) {
        json_t *r;
        int status = call(ctl, "vm.dirty-stats", NULL, &r);
        if (status)
            return status;
        if (watch && tty && !ctl->json)
            printf("\033[H\033[2J");
        /* Rates read 0 while nobody tracks: say why, once per stretch
         * without tracking (on every screen when the screen is redrawn). */
        bool tracking = json_is_true(json_object_get(r, "tracking"));
        bool hint = !tracking && !ctl->json && (!hinted || (watch && tty));
        hinted = !tracking;
        output(ctl, r);
        if (hint) {
            fflush(stdout);
            fprintf(stderr, "ringctl: dirty tracking is off, so the rates read 0 "
                            "(`ringctl dirty-tracking on` turns it on outside a migration)\n");
        }
        if (!watch)
            return 0;
        if (!ctl->json)
            printf("\n");
        fflush(stdout);
        struct timespec ts = {.tv_sec = interval / 1000, .tv_nsec = (interval % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
    }
}

static int run_digest(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("digest");
    static const struct option options[] = {{"chunks", no_argument, NULL, 'c'}, {0}};
    bool chunks = false;
    int opt;
    while ((opt = next_option(ctl, command, argc, argv, options, NULL)) != -1)
        if (opt == 'c')
            chunks = true;
    no_operands(command, argc, argv);
    json_t *r;
    int status = call(ctl, "vm.memory-digest", NULL, &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    json_t *list = json_object_get(r, "chunks");
    printf("%s  xxh3-128 of %" JSON_INTEGER_FORMAT " MiB (%zu chunks of 64 MiB, %.1f ms)\n",
           json_string_value(json_object_get(r, "digest")),
           json_integer_value(json_object_get(r, "memory_bytes")) >> 20, json_array_size(list),
           json_number_value(json_object_get(r, "duration_ms")));
    if (chunks) {
        size_t i;
        json_t *chunk;
        json_array_foreach(list, i, chunk) {
            printf("%s  offset %" JSON_INTEGER_FORMAT " MiB, %" JSON_INTEGER_FORMAT " MiB\n",
                   json_string_value(json_object_get(chunk, "digest")),
                   json_integer_value(json_object_get(chunk, "offset")) >> 20,
                   json_integer_value(json_object_get(chunk, "bytes")) >> 20);
        }
    }
    json_decref(r);
    return 0;
}

static int run_guest_stats(struct ringctl_session *ctl, int argc, char **argv)
{
    return simple_command(ctl, argc, argv, "guest-stats", "vm.guest-stats", NULL);
}

static int run_version(struct ringctl_session *ctl, int argc, char **argv)
{
    return simple_command(ctl, argc, argv, "version", "api.version", NULL);
}

static int run_commands(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("commands");
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    no_operands(command, argc, argv);
    json_t *r;
    int status = call(ctl, "api.commands", NULL, &r);
    if (status)
        return status;
    if (ctl->json)
        return output(ctl, r);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "commands"), i, c) {
        printf("%-22s %s\n", json_string_value(json_object_get(c, "name")),
               json_string_value(json_object_get(c, "summary")));
        size_t j;
        json_t *a;
        json_array_foreach(json_object_get(c, "args"), j, a) {
            printf("    %s (%s%s)  %s\n", json_string_value(json_object_get(a, "name")),
                   json_string_value(json_object_get(a, "type")),
                   json_is_true(json_object_get(a, "required")) ? ", required" : "",
                   json_string_value(json_object_get(a, "help")) ? json_string_value(json_object_get(a, "help")) : "");
        }
    }
    json_decref(r);
    return 0;
}

static void print_event(json_t *event)
{
    uint64_t ts = (uint64_t)json_integer_value(json_object_get(event, "ts_ms"));
    time_t seconds = (time_t)(ts / 1000);
    struct tm tm;
    char when[32] = "?";
    if (localtime_r(&seconds, &tm))
        strftime(when, sizeof(when), "%H:%M:%S", &tm);
    printf("%s.%03u %s", when, (unsigned)(ts % 1000), json_string_value(json_object_get(event, "event")));
    const char *key;
    json_t *value;
    char text[256];
    json_object_foreach(json_object_get(event, "data"), key, value) {
        format_scalar(value, text, sizeof(text));
        printf(" %s=%s", key, text);
    }
    printf("\n");
    fflush(stdout);
}

static int run_events(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("events");
    static const struct option options[] = {{"count", required_argument, NULL, 'n'},
                                            {"filter", required_argument, NULL, 'f'},
                                            {0}};
    long count = 0;
    json_t *filter = json_array();
    int opt;
    while ((opt = next_option(ctl, command, argc, argv, options, "n:")) != -1) {
        if (opt == 'n')
            count = parse_number(command, "--count", optarg, 1, 1000000000);
        else if (opt == 'f')
            json_array_append_new(filter, json_string(optarg));
    }
    no_operands(command, argc, argv);
    json_t *args = json_array_size(filter) ? json_pack("{s:O}", "events", filter) : NULL;
    json_decref(filter);
    json_t *r;
    int status = call(ctl, "events.subscribe", args, &r);
    if (status)
        return status;
    json_decref(r);
    bool saw_shutdown = false;
    for (long seen = 0; count == 0 || seen < count; seen++) {
        json_t *event;
        int result = api_client_next_event(ctl->client, &event, -1);
        if (result == -EPIPE) {
            if (saw_shutdown)
                return 0;
            fprintf(stderr, "ringctl: the connection to %s was closed\n", ctl->socket);
            return EXIT_CONNECT;
        }
        if (result < 0) {
            fprintf(stderr, "ringctl: reading events from %s: %s\n", ctl->socket, strerror(-result));
            return EXIT_CONNECT;
        }
        const char *state = json_string_value(json_object_get(json_object_get(event, "data"), "state"));
        if (state && strcmp(state, "shutdown") == 0)
            saw_shutdown = true;
        if (ctl->json)
            print_json(event);
        else
            print_event(event);
        json_decref(event);
    }
    return 0;
}

static int run_raw(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("raw");
    while (next_option(ctl, command, argc, argv, NULL, NULL) != -1) {
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "ringctl raw: expected exactly one JSON request\n");
        usage_command(stderr, command);
        return EXIT_USAGE;
    }
    const char *text = argv[optind];
    if (strchr(text, '\n')) {
        fprintf(stderr, "ringctl raw: the request must be on one line\n");
        return EXIT_USAGE;
    }
    int status = ringctl_session_connect(ctl);
    if (status)
        return status;
    json_t *reply;
    int r = api_client_call_raw(ctl->client, text, &reply, ctl->timeout_ms);
    if (r < 0) {
        fprintf(stderr, "ringctl: raw request to %s: %s\n", ctl->socket,
                r == -EPIPE ? "the connection was closed before the reply" : strerror(-r));
        return EXIT_CONNECT;
    }
    print_json(reply);
    bool ok = json_is_true(json_object_get(reply, "ok"));
    if (!ok) {
        json_t *error = json_object_get(reply, "error");
        fprintf(stderr, "ringctl: %s: %s\n", json_string_value(json_object_get(error, "code")),
                json_string_value(json_object_get(error, "message")));
    }
    json_decref(reply);
    return ok ? 0 : EXIT_VMM_ERROR;
}

/* migrate, progress, cancel, postcopy and recover live in
 * api/ringctl_migration.c (on this session); report in api/ringctl_report.c
 * (it may work from a file alone). */
static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

static int run_migration(struct ringctl_session *ctl, int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        usage_command(stdout, find_command(argv[0]));
        return 0;
    }
    return ringctl_migration_main(argc, argv, ctl);
}

static int run_console(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("console");
    static const struct option options[] = {{"socket", required_argument, NULL, 'S'},
                                            {"timeout", required_argument, NULL, 'T'},
                                            {"until", required_argument, NULL, 'U'},
                                            {0}};
    const char *socket_path = getenv("RINGVM_CONSOLE");
    const char *until = NULL;
    int timeout_ms = 0;
    int opt;
    while ((opt = next_option(ctl, command, argc, argv, options, NULL)) != -1) {
        if (opt == 'S')
            socket_path = optarg;
        else if (opt == 'T')
            timeout_ms = (int)parse_number(command, "--timeout", optarg, 1, 86400000);
        else if (opt == 'U') {
            if (optarg[0] == '\0') {
                fprintf(stderr, "ringctl console: --until: expected a non-empty text\n");
                return EXIT_USAGE;
            }
            until = optarg;
        }
    }
    no_operands(command, argc, argv);
    if (socket_path == NULL || *socket_path == '\0') {
        fprintf(stderr, "ringctl console: no console socket: use --socket PATH (ringvm's --console "
                        "unix:PATH) or set RINGVM_CONSOLE\n");
        return EXIT_USAGE;
    }
    return ringctl_console_run(socket_path, timeout_ms, until);
}

static int run_report(struct ringctl_session *ctl, int argc, char **argv)
{
    return ringctl_report_main(argc, argv, ctl->socket);   /* answers --help itself */
}

static int run_trace(struct ringctl_session *ctl, int argc, char **argv)
{
    const struct ringctl_command *command = find_command("trace");
    static const struct option options[] = {{"watch", no_argument, NULL, 'w'},
                                            {"start", no_argument, NULL, 'S'},
                                            {"stop", no_argument, NULL, 'X'},
                                            {"interval", required_argument, NULL, 'i'},
                                            {"width", required_argument, NULL, 'W'},
                                            {0}};
    bool watch = false, start = false, stop = false;
    long interval = 1000, width = 50;
    int opt;
    while ((opt = next_option(ctl, command, argc, argv, options, "w")) != -1) {
        if (opt == 'w')
            watch = true;
        else if (opt == 'S')
            start = true;
        else if (opt == 'X')
            stop = true;
        else if (opt == 'i')
            interval = parse_number(command, "--interval", optarg, 10, 3600000);
        else if (opt == 'W')
            width = parse_number(command, "--width", optarg, 10, 400);
    }
    no_operands(command, argc, argv);
    json_t *r;
    int status;
    if (start) {
        if ((status = call(ctl, "bpf.start", NULL, &r)) != 0)
            return status;
        json_decref(r);
    }
    bool tty = isatty(STDOUT_FILENO);
    /* --watch runs until SIGINT/SIGTERM: with --stop those must end the loop
     * and still send bpf.stop, so they are blocked and taken synchronously
     * while waiting for the next interval (sigtimedwait). */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if (watch && stop && sigprocmask(SIG_BLOCK, &stop_signals, NULL) != 0) {
        fprintf(stderr, "ringctl: sigprocmask(SIGINT, SIGTERM): %s\n", strerror(errno));
        return 1;
    }
    for (;;) {
        if ((status = call(ctl, "bpf.stats", NULL, &r)) != 0)
            return status;
        if (watch && tty && !ctl->json)
            printf("\033[H\033[2J");
        if (ctl->json) {
            output(ctl, r);
        } else {
            char *text = bpf_probes_format_text(r, (unsigned)width);
            fputs(text ? text : "ringctl: cannot format the statistics\n", stdout);
            free(text);
            json_decref(r);
        }
        if (!watch)
            break;
        fflush(stdout);
        struct timespec ts = {.tv_sec = interval / 1000, .tv_nsec = (interval % 1000) * 1000000L};
        if (stop) {
            /* Approximate interval: an unrelated signal restarts it. */
            int got;
            while ((got = sigtimedwait(&stop_signals, NULL, &ts)) < 0 && errno == EINTR) {
            }
            if (got > 0)
                break;      /* SIGINT/SIGTERM: detach the probes below */
            if (errno != EAGAIN) {
                fprintf(stderr, "ringctl: sigtimedwait: %s\n", strerror(errno));
                break;
            }
        } else {
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
            }
        }
    }
    if (stop) {
        if ((status = call(ctl, "bpf.stop", NULL, &r)) != 0)
            return status;
        json_decref(r);
    }
    return 0;
}

static const struct ringctl_command commands[] = {
    {"info", "info",
     "Show the VM: state (running|paused|shutdown), vCPUs, memory, workload, dirty-log\n"
     "mode, guest RAM's file (memfd, tmpfs, hugetlbfs or anonymous) and whether it is\n"
     "on huge pages, uptime, ringvm's pid (vm.info).",
     run_info,
     "Show state, vCPUs, memory, workload, RAM, uptime (vm.info)."},
    {"pause", "pause",
     "Stop every vCPU; returns once all are parked (vm.pause). Error vm-paused if\n"
     "already paused.",
     run_pause,
     "Stop every vCPU (vm.pause)."},
    {"resume", "resume", "Let the vCPUs run again (vm.resume). Error vm-running if not paused.",
     run_resume,
     "Let the vCPUs run again (vm.resume)."},
    {"shutdown", "shutdown [--exit-code N]",
     "Stop the VM; ringvm then exits with status N (default 0) (vm.shutdown).", run_shutdown,
     "Stop the VM; ringvm exits (vm.shutdown)."},
    {"dirty-stats", "dirty-stats [--watch] [--interval MS]",
     "Per-vCPU dirty pages/s (over 100 ms and 1 s), ring fill high-water, ring-full\n"
     "exits and harvester totals (vm.dirty-stats). --watch repeats every --interval\n"
     "ms (default 1000) until interrupted. The rates are 0 unless dirty tracking is\n"
     "on: during a migration, or after `ringctl dirty-tracking on`.",
     run_dirty_stats,
     "Dirty pages/s per vCPU and ring health (vm.dirty-stats)."},
    {"dirty-tracking", "dirty-tracking on|off",
     "Turn dirty tracking on or off outside a migration (vm.dirty-tracking), so that\n"
     "dirty-stats shows the guest's dirty rates, e.g. to size a migration. Tracking\n"
     "costs the guest a write fault on its first write to each page after each ring\n"
     "reset (bitmap mode: sync). A migration tracks on its own and restarts tracking\n"
     "when it starts; it never turns off tracking turned on here. 'off' drops only\n"
     "this hold. Error unavailable with --dirty-log off.",
     run_dirty_tracking,
     "Dirty tracking on/off outside a migration (vm.dirty-tracking)."},
    {"digest", "digest [--chunks]",
     "XXH3-128 of all guest RAM (vm.memory-digest); --chunks also lists every 64 MiB\n"
     "chunk. The VM must be paused (ringctl pause).",
     run_digest,
     "XXH3-128 of guest RAM, VM paused (vm.memory-digest)."},
    {"guest-stats", "guest-stats", "The guest workload's counters per vCPU (vm.guest-stats).",
     run_guest_stats,
     "The guest workload's counters (vm.guest-stats)."},
    {"events", "events [--count N] [--filter PREFIX]...",
     "Subscribe to events and print one line per event until the VM shuts down, the\n"
     "connection closes or N events were printed. --filter keeps events whose name\n"
     "starts with PREFIX (repeatable).",
     run_events,
     "Print VM and migration events as they happen."},
    {"raw", "raw JSON",
     "Send one request as JSON text, e.g. '{\"cmd\":\"vm.info\"}' (an id is added if\n"
     "missing) and print the whole reply line. Exit 1 if the reply is an error.",
     run_raw,
     "Send one JSON request, print the whole reply."},
    {"migrate", "migrate [--resume] DEST [OPTIONS]",
     "Live-migrate the VM to DEST (unix:PATH or tcp:HOST:PORT of a ringvm started\n"
     "with --incoming) (migration.start). DEST local:PATH hands the guest over to a\n"
     "ringvm on this host started with --incoming local:PATH: its RAM is passed as\n"
     "a memfd, not copied (mode local). Blocks showing progress: on a terminal one\n"
     "line with percent, iteration, dirty rate, bandwidth, throttle and expected\n"
     "downtime; otherwise a line per iteration. Exit 0 completed, 1 failed or\n"
     "cancelled (cause on stderr). Options are migration.start's arguments\n"
     "(docs/api.md); unset ones take the defaults in brackets.\n"
     "  --dispatch              start it and return at once (then ringctl progress)\n"
     "  --downtime-ms N         switch over once the expected downtime <= N ms [300]\n"
     "  --converge MODE         auto (throttle all vCPUs), dirty-limit (per-vCPU\n"
     "                          quotas) or none [auto]\n"
     "  --max-bandwidth MIBS    cap the link at MIBS MiB/s while the guest runs,\n"
     "                          0 = uncapped [0]\n"
     "  --switch-over-bandwidth MIBS\n"
     "                          cap the stop-and-copy (guest paused) at MIBS\n"
     "                          MiB/s; 0 = uncapped whatever --max-bandwidth, as\n"
     "                          QEMU's completion stage [0]; the expected downtime\n"
     "                          counts at it, or when 0 at the measured rate (to a\n"
     "                          unix: DEST: the rate the last pass kept while not\n"
     "                          waiting on --max-bandwidth)\n"
     "  --keep-alive            after success keep the source VMM up (state\n"
     "                          migrated) instead of exiting 0\n"
     "  --timeout S             not converged within S s: apply the strategy [3600]\n"
     "  --timeout-strategy X    cancel (the guest stays here) or force [cancel]\n"
     "  --throttle-initial N    auto-converge's first throttle, percent [20]\n"
     "  --throttle-increment N  auto-converge's step, percent [10]\n"
     "  --throttle-max N        highest throttle, percent [99]\n"
     "  --stall-timeout S       fail when the link moves nothing for S s [5]\n"
     "  --verify-digest         compare XXH3-128 digests of RAM before the\n"
     "                          destination resumes (two hash passes over RAM in\n"
     "                          the downtime, budgeted in the expected downtime)\n"
     "  --no-verify             do not compare digests [the default]\n"
     "  --no-source-digest      without --verify-digest, do not hash this RAM\n"
     "                          after the ack either (the hash, for the\n"
     "                          summary's source digest, adds to the total time:\n"
     "                          ~0.2 s per GiB; not to the downtime)\n"
     "  --tls-psk FILE          tcp: only: TLS 1.3 with the pre-shared key in FILE\n"
     "                          (QEMU keys.psk, IDENTITY:HEXKEY; the destination's\n"
     "                          --tls-psk file; mode 0600; ringvm reads it)\n"
     "  --tls-creds DIR         tcp: only: TLS 1.3 with x509: ca-cert.pem,\n"
     "                          client-cert.pem, client-key.pem in DIR\n"
     "  --tls-server-name NAME  with --tls-creds: the name the destination's\n"
     "                          certificate must carry [HOST of DEST]\n"
     "                          Without TLS a tcp: DEST gets a warning on stderr.\n"
     "  --console unix:PATH     the destination's console socket (its --console):\n"
     "                          `ringctl console` sessions attached to this VM\n"
     "                          carry on there when the guest moves; other\n"
     "                          console clients are told where it went\n"
     "  --mode MODE             precopy (iterate, then stop and copy), postcopy\n"
     "                          (switch over at once; RAM follows, fetched on\n"
     "                          first touch and pushed in the background) or\n"
     "                          hybrid (pre-copy, then post-copy) [precopy]\n"
     "  --postcopy-after WHEN   with --mode hybrid: switch after N pre-copy passes,\n"
     "                          after Ns seconds, or auto: once the dirty rate shows\n"
     "                          pre-copy cannot meet the downtime without\n"
     "                          throttling [auto]; `ringctl postcopy` switches now\n"
     "  --yes                   start post-copy or hybrid without asking. Otherwise\n"
     "                          ringctl asks on the terminal first, because once\n"
     "                          the guest switches over its RAM is split between\n"
     "                          the hosts and it is lost if either process dies\n"
     "                          before the copy ends: anything but y or yes exits 1\n"
     "                          with no migration started; without a terminal on\n"
     "                          stdin ringctl exits 2 asking for --yes.\n"
     "  --resume                go on with the post-copy migration a broken link\n"
     "                          paused (phase postcopy-paused), over a new\n"
     "                          connection to DEST, where the destination listens\n"
     "                          after `ringctl recover DEST` there (migration.start\n"
     "                          with resume). It keeps the parameters it was\n"
     "                          started with: any option but --dispatch (and --yes,\n"
     "                          with nothing to confirm) is a usage error (exit 2).\n"
     "                          Error no-migration (exit 1) when none runs,\n"
     "                          invalid-state when it is not paused in post-copy.",
     run_migration, "Live-migrate the VM to DEST, showing progress."},
    {"progress", "progress [--watch] [--json]",
     "The progress snapshot of the current or last migration (migration.progress);\n"
     "--watch repeats until it ends.",
     run_migration, "Progress of the current or last migration."},
    {"cancel", "cancel", "Cancel the running migration; the source keeps running the guest (migration.cancel).",
     run_migration, "Cancel the running migration (migration.cancel)."},
    {"postcopy", "postcopy",
     "Switch the running hybrid migration (migrate --mode hybrid) to post-copy at\n"
     "its next decision, without waiting for --postcopy-after (migration.postcopy).\n"
     "Error invalid-state (exit 1) for a migration started as precopy (post-copy was\n"
     "not agreed to), one started as postcopy, or one already past its switch-over;\n"
     "no-migration when none runs.",
     run_migration, "Switch a hybrid migration to post-copy now."},
    {"recover", "recover ADDRESS",
     "On the destination of a post-copy migration a broken link paused (phase\n"
     "postcopy-paused): listen on ADDRESS (unix:PATH or tcp:HOST:PORT) for the\n"
     "source's new connection (migration.recover); then run `ringctl migrate\n"
     "--resume ADDRESS` on the source. Error no-migration (exit 1) when no migration\n"
     "runs here, invalid-state when it is not paused in post-copy (or this is its\n"
     "source), invalid-argument for an ADDRESS that does not parse.",
     run_migration, "Post-copy recovery: listen for the source again."},
    {"report", "report [--out FILE] [--from FILE] [--bpf FILE]",
     "Write a self-contained HTML report (plots by gnuplot, package gnuplot-nox) of the\n"
     "last migration, from the VMM (migration.progress, and bpf.stats when probes run)\n"
     "or from a saved `ringctl progress --json` file (--from; --bpf adds a saved\n"
     "`ringctl trace --json`). --out defaults to migration-report.html.",
     run_report,
     "Write an HTML report of the last migration."},
    {"trace", "trace [--start] [--stop] [--watch] [--interval MS] [--width N]",
     "eBPF measurements as text histograms (bpf.stats): KVM_RUN time in guest and in\n"
     "userspace per exit reason, kick and throttle latency (with the VMM's own\n"
     "measurement beside it), off-CPU time, dirty ring pushes and resets. --start\n"
     "attaches the probes first (bpf.start), --stop detaches them after (with --watch:\n"
     "on SIGINT/SIGTERM). Error unavailable (exit 1) when BPF cannot load on this host.",
     run_trace,
     "eBPF histograms: KVM_RUN, kicks, dirty ring (bpf.stats)."},
    {"console", "console [--socket PATH] [--timeout MS] [--until TEXT]",
     "Attach to the guest's serial console: the socket of ringvm --console unix:PATH\n"
     "(--socket, default $RINGVM_CONSOLE; -s, the API socket, is not used). The\n"
     "guest's output from now on is printed; what you type goes to its UART. Several\n"
     "clients may watch; the first that types is the writer until it disconnects,\n"
     "the others' input is refused. On a terminal every key goes to the guest raw\n"
     "(Ctrl-C included) and the terminal mode is restored on exit. Ctrl-] (byte 0x1d,\n"
     "also in piped input) detaches: exit 0.\n"
     "When stdin is not a terminal and ends, the output keeps printing until ringvm\n"
     "closes the console, or at most --timeout MS after the end of input (default:\n"
     "no limit). --until TEXT ends it as soon as the guest's output since attaching\n"
     "contains TEXT (for scripts: type a command, wait for its answer); then the\n"
     "timeout or the console closing first is exit 1.\n"
     "Exit 0 detached, closed, timed out or TEXT seen; 1 TEXT not seen; 2 usage;\n"
     "3 cannot connect or connection lost.",
     run_console,
     "Attach to the guest's serial console (Ctrl-] detaches)."},
    {"commands", "commands", "List the commands the VMM accepts, with their arguments (api.commands).",
     run_commands,
     "List the commands the VMM accepts (api.commands)."},
    {"version", "version", "Protocol version and server identity (api.version).", run_version,
     "Protocol version and server identity (api.version)."},
    {NULL, NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    struct ringctl_session ctl = {.socket = getenv("RINGVM_SOCKET"), .timeout_ms = 60000};
    static const struct option options[] = {
        {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'J'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "+s:h", options, NULL)) != -1) {
        switch (opt) {
        case 's':
            ctl.socket = optarg;
            break;
        case 'J':
            ctl.json = true;
            break;
        case 't': {
            char *end;
            errno = 0;
            long value = strtol(optarg, &end, 10);
            if (errno || *end || value < 1 || value > 86400000) {
                fprintf(stderr, "ringctl: --timeout '%s': expected milliseconds 1..86400000\n", optarg);
                return EXIT_USAGE;
            }
            ctl.timeout_ms = (int)value;
            break;
        }
        case 'h':
            usage_all(stdout);
            return 0;
        default:
            usage_all(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage_all(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        const struct ringctl_command *command = optind + 1 < argc ? find_command(argv[optind + 1]) : NULL;
        if (command)
            usage_command(stdout, command);
        else
            usage_all(stdout);
        return 0;
    }
    const struct ringctl_command *command = find_command(name);
    if (!command) {
        fprintf(stderr, "ringctl: unknown command '%s'\n", name);
        usage_all(stderr);
        return EXIT_USAGE;
    }
    /* The command's argv starts at its name, for getopt. */
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    optind = 0;     /* glibc: full re-initialization */
    int status = command->run(&ctl, sub_argc, sub_argv);
    ringctl_session_close(&ctl);
    return status;
}
