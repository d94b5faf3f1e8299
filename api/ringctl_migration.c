/*
 * ringctl's migration commands:
 *
 *   ringctl migrate DEST [--dispatch] [--downtime-ms N] [--converge MODE]
 *                   [--max-bandwidth MIBS] [--switch-over-bandwidth MIBS]
 *                   [--keep-alive] [--timeout S]
 *                   [--timeout-strategy cancel|force] [--throttle-initial N]
 *                   [--throttle-increment N] [--throttle-max N]
 *                   [--stall-timeout S] [--verify-digest|--no-verify] [--no-source-digest]
 *                   [--tls-psk FILE | --tls-creds DIR [--tls-server-name NAME]]
 *                   [--console unix:PATH]
 *                   [--mode precopy|postcopy|hybrid [--postcopy-after N|Ns|auto]] [--yes]
 *   ringctl migrate --resume DEST [--dispatch]
 *   ringctl progress [--watch] [--json]
 *   ringctl cancel
 *   ringctl postcopy
 *   ringctl recover ADDRESS
 *
 * `migrate` blocks until the migration ends, showing live progress: on a
 * TTY one line redrawn in place (bar, percent, iteration, dirty rate,
 * bandwidth, throttle, expected downtime; post-copy's pages once it runs),
 * otherwise one line per iteration. Exit 0 completed, 1 failed or cancelled
 * (or any VMM error, or a post-copy start the user did not confirm), 2
 * usage, 3 connection.
 *
 * Post-copy recovery (a link broken after the switch-over left both sides
 * in phase postcopy-paused): `recover ADDRESS` on the destination
 * (migration.recover), then `migrate --resume ADDRESS` on the source
 * (migration.start {dest, resume: true}), which watches the migration to
 * its end like migrate.
 *
 * Entry point for ringctl.c: ringctl_migration_main(argc, argv, session)
 * with argv[0] = "migrate" | "progress" | "cancel" | "postcopy" | "recover".
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "api/ringctl_migration.h"
#include "api/ringctl_session.h"

#define EXIT_FAILED RINGCTL_EXIT_VMM_ERROR
#define EXIT_USAGE RINGCTL_EXIT_USAGE
#define EXIT_CONNECT RINGCTL_EXIT_CONNECT

static int call_quiet(struct ringctl_session *session, const char *cmd, json_t *args, json_t **result, bool quiet)
{
    return ringctl_session_call(session, cmd, args, result, quiet);
}

static int call(struct ringctl_session *session, const char *cmd, json_t *args, json_t **result)
{
    return ringctl_session_call(session, cmd, args, result, false);
}

static int64_t get_int(json_t *object, const char *key)
{
    json_t *v = json_object_get(object, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static double get_real(json_t *object, const char *key)
{
    json_t *v = json_object_get(object, key);
    return json_is_number(v) ? json_number_value(v) : 0.0;
}

static const char *get_string(json_t *object, const char *key)
{
    json_t *v = json_object_get(object, key);
    return json_is_string(v) ? json_string_value(v) : "";
}

static bool finished(const char *state)
{
    return strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0;
}

/* The bar's "bw": the rate right now while the migration runs (a bulk
 * pass's bandwidth_mibs reads 0 until the pass ends), the last
 * iteration's once it is over (or from a VMM without throughput_mibs). */
static double bar_bandwidth(json_t *p)
{
    json_t *now = json_object_get(p, "throughput_mibs");
    if (json_is_number(now) && !finished(get_string(p, "state")))
        return json_number_value(now);
    return get_real(p, "bandwidth_mibs");
}

static void print_bar(json_t *p)
{
    int percent = (int)get_int(p, "percent");
    char bar[21];
    int filled = percent / 5;
    for (int i = 0; i < 20; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[20] = '\0';
    json_t *postcopy = json_object_get(p, "postcopy");
    if (json_is_true(json_object_get(postcopy, "active"))) {
        /* After the switch-over no pass, dirty rate or throttle means
         * anything: the pages still to move do. */
        bool incoming = strcmp(get_string(p, "role"), "incoming") == 0;
        int64_t moved = incoming ? get_int(postcopy, "pages_received")
                                 : get_int(postcopy, "pages_pushed") + get_int(postcopy, "pages_requested");
        fprintf(stdout, "\r[%s] %3d%% %-13s pages %" PRId64 "/%" PRId64 "  bw %.1f MiB/s  %s %" PRId64 "   ", bar,
                percent, get_string(p, "phase"), moved, get_int(postcopy, "pages_total"),
                bar_bandwidth(p), incoming ? "faults" : "requests",
                get_int(postcopy, incoming ? "faults" : "requests"));
        fflush(stdout);
        return;
    }
    int64_t expected = get_int(p, "expected_downtime_ms");
    char downtime[32];
    if (expected >= INT64_MAX / 2)
        snprintf(downtime, sizeof(downtime), "inf");
    else
        snprintf(downtime, sizeof(downtime), "%" PRId64 "ms", expected);
    fprintf(stdout, "\r[%s] %3d%% %-13s iter %" PRId64 "  dirty %" PRId64 " pps  bw %.1f MiB/s  throttle %" PRId64
            "%%  downtime(exp) %s   ", bar, percent, get_string(p, "phase"), get_int(p, "iteration"),
            get_int(p, "dirty_rate_pps"), bar_bandwidth(p), get_int(p, "throttle_percent"), downtime);
    fflush(stdout);
}

/* The post-copy line, when the snapshot has a "postcopy" object (mode
 * postcopy or hybrid): the source's pages pushed and served on request,
 * the destination's faults, blocktime and fault service latency. */
void ringctl_print_postcopy(json_t *p, FILE *out)
{
    json_t *postcopy = json_object_get(p, "postcopy");
    if (!json_is_object(postcopy))
        return;
    if (!json_is_true(json_object_get(postcopy, "active"))) {
        fprintf(out, "post-copy: %s\n", finished(get_string(p, "state")) ? "never switched over"
                                                                         : "not switched over yet");
        return;
    }
    if (strcmp(get_string(p, "role"), "incoming") == 0) {
        json_t *latency = json_object_get(postcopy, "latency_us");
        fprintf(out, "post-copy: switched over at %" PRId64 " ms; %" PRId64 " faults (%" PRId64 " duplicate), %"
                PRId64 " of %" PRId64 " pages received (%" PRId64 " zero), blocktime %.3f ms; fault service p50 %.1f"
                " us, p99 %.1f us, max %.1f us (%" PRId64 " served)\n", get_int(postcopy, "switched_at_ms"),
                get_int(postcopy, "faults"), get_int(postcopy, "duplicate_faults"), get_int(postcopy, "pages_received"),
                get_int(postcopy, "pages_total"), get_int(postcopy, "pages_zero"),
                get_real(postcopy, "blocktime_total_ms"), get_real(latency, "p50"), get_real(latency, "p99"),
                get_real(latency, "max"), get_int(latency, "count"));
    } else {
        fprintf(out, "post-copy: switched over at %" PRId64 " ms; of %" PRId64 " pages %" PRId64 " pushed, %" PRId64
                " requested (%" PRId64 " requests, %" PRId64 " refused)\n", get_int(postcopy, "switched_at_ms"),
                get_int(postcopy, "pages_total"), get_int(postcopy, "pages_pushed"),
                get_int(postcopy, "pages_requested"), get_int(postcopy, "requests"),
                get_int(postcopy, "requests_refused"));
    }
}

static void print_summary(json_t *p, FILE *out)
{
    const char *state = get_string(p, "state");
    json_t *memory = json_object_get(p, "memory");
    fprintf(out, "migration %" PRId64 " %s: total %" PRId64 " ms, downtime %" PRId64 " ms, setup %" PRId64
            " ms, %" PRId64 " iterations, %.1f MiB transferred (%" PRId64 " normal + %" PRId64 " zero pages)\n",
            get_int(p, "id"), state, get_int(p, "total_ms"), get_int(p, "downtime_ms"), get_int(p, "setup_ms"),
            get_int(p, "iteration_count"), (double)get_int(memory, "transferred") / (1024.0 * 1024.0),
            get_int(memory, "normal_pages"), get_int(memory, "zero_pages"));
    /* What the switch-over was expected to cost, and what it did
     * (docs/api.md, expected_downtime_parts and switch_over). */
    json_t *parts = json_object_get(p, "expected_downtime_parts");
    json_t *switch_over = json_object_get(p, "switch_over");
    if (json_is_object(parts) && json_is_object(switch_over) && get_int(p, "iteration_count") > 0) {
        json_t *measured = json_object_get(switch_over, "measured_us");
        char measured_text[48] = "not measured";
        if (json_is_integer(measured))
            snprintf(measured_text, sizeof(measured_text), "measured %" PRId64 " us",
                     (int64_t)json_integer_value(measured));
        json_t *rate = json_object_get(parts, "bandwidth_mibs");
        fprintf(out, "downtime: expected %" PRId64 " ms = transfer %" PRId64 " (at %.0f MiB/s) + digest %" PRId64
                " + switch-over %" PRId64 " ms (dry run %" PRId64 " us, learned %" PRId64 " us from %" PRId64
                "); switch-over %s\n", get_int(p, "expected_downtime_ms"), get_int(parts, "transfer_ms"),
                json_is_number(rate) ? json_number_value(rate) : 0.0, get_int(parts, "digest_ms"),
                get_int(parts, "switch_over_ms"), get_int(switch_over, "dry_run_us"),
                get_int(switch_over, "learned_us"), get_int(switch_over, "learned_count"), measured_text);
        int64_t paced_us = get_int(switch_over, "paced_us");
        if (paced_us > 0)
            fprintf(out, "downtime: the stop-and-copy waited %" PRId64 " ms of it on --switch-over-bandwidth\n",
                    (paced_us + 999) / 1000);
    }
    ringctl_print_postcopy(p, out);
    const char *source = get_string(p, "memory_digest_source");
    const char *destination = get_string(p, "memory_digest_destination");
    /* Without verify_digest only the source hashes its RAM (after the ack),
     * so a bare "destination -" would read like a failed check. */
    if (*source && *destination)
        fprintf(out, "memory digest: source %s, destination %s (%s)\n", source, destination,
                strcmp(source, destination) == 0 ? "equal" : "DIFFERENT");
    else if (*source)
        fprintf(out, "memory digest: source %s, hashed after the ack in %" PRId64 " ms of the total (destination "
                "not hashed: verify_digest off)\n", source, get_int(p, "source_digest_ms"));
    else if (*destination)
        fprintf(out, "memory digest: destination %s\n", destination);
    json_t *error = json_object_get(p, "error");
    if (json_is_object(error))
        fprintf(out, "error: %s: %s\n", get_string(error, "code"), get_string(error, "message"));
}

/* Prints iteration lines not printed yet (non-TTY mode). */
static void print_new_iterations(json_t *p, int64_t *printed)
{
    json_t *iterations = json_object_get(p, "iterations");
    size_t index;
    json_t *it;
    json_array_foreach(iterations, index, it) {
        int64_t number = get_int(it, "iter");
        if (number >= *printed) {
            fprintf(stdout, "%s\n", get_string(it, "line"));
            *printed = number + 1;
        }
    }
    fflush(stdout);
}

/* The final migration.state event of migration id, if this is one. */
static bool final_event(json_t *event, int64_t id)
{
    if (strcmp(get_string(event, "event"), "migration.state") != 0)
        return false;
    json_t *data = json_object_get(event, "data");
    return get_int(data, "id") == id && strcmp(get_string(data, "role"), "outgoing") == 0 &&
           finished(get_string(data, "state"));
}

static int watch_until_done(struct ringctl_session *session, bool json, int64_t id, bool tty)
{
    int64_t printed = 0;
    bool switched = false;
    bool postcopy_announced = false;
    json_t *last = NULL;    /* the final state event, in case the source exits before we ask */
    for (;;) {
        json_t *event = NULL;
        int r = api_client_next_event(session->client, &event, 200);
        if (event) {
            if (!json && strcmp(get_string(event, "event"), "migration.warning") == 0 &&
                get_int(json_object_get(event, "data"), "id") == id) {
                /* On its own line, also on a terminal (the bar resumes). */
                fprintf(stderr, "%sringctl: warning: %s: %s\n", tty ? "\n" : "",
                        get_string(json_object_get(event, "data"), "code"),
                        get_string(json_object_get(event, "data"), "message"));
            }
            if (final_event(event, id)) {
                json_decref(last);
                last = event;
            } else {
                json_decref(event);     /* events only wake us up; progress is the truth */
            }
        }
        json_t *progress = NULL;
        int status = (r < 0 && r != -ETIMEDOUT) ? EXIT_CONNECT
                                                : call_quiet(session, "migration.progress", NULL, &progress, true);
        if (status != 0) {
            if (tty && !json)
                fputc('\n', stdout);
            if (last != NULL) {
                /* A source without keep_alive exits right after completing. */
                json_t *data = json_object_get(last, "data");
                const char *state = get_string(data, "state");
                if (json) {
                    char *text = json_dumps(data, JSON_COMPACT);
                    if (text)
                        fprintf(stdout, "%s\n", text);
                    free(text);
                } else {
                    json_t *error = json_object_get(data, "error");
                    fprintf(strcmp(state, "completed") == 0 ? stdout : stderr,
                            "migration %" PRId64 " %s: total %" PRId64 " ms, downtime %" PRId64 " ms%s%s\n", id, state,
                            get_int(data, "total_ms"), get_int(data, "downtime_ms"), json_is_object(error) ? ": " : "",
                            json_is_object(error) ? get_string(error, "message") : "");
                }
                int code = strcmp(state, "completed") == 0 ? 0 : EXIT_FAILED;
                json_decref(last);
                return code;
            }
            fprintf(stderr, "ringctl: connection to the VMM lost before the migration ended\n");
            return EXIT_CONNECT;
        }
        if (get_int(progress, "id") != id) {
            json_decref(progress);
            continue;
        }
        const char *state = get_string(progress, "state");
        const char *phase = get_string(progress, "phase");
        if (tty && !json) {
            print_bar(progress);
        } else if (!json) {
            print_new_iterations(progress, &printed);
            if (!switched && (strcmp(phase, "stop-and-copy") == 0 || strcmp(phase, "waiting-ack") == 0 ||
                              strcmp(phase, "digest") == 0)) {
                fprintf(stdout, "memory delta transmission stopping - cutoff condition reached\n");
                switched = true;
            }
            json_t *postcopy = json_object_get(progress, "postcopy");
            if (!postcopy_announced && json_is_true(json_object_get(postcopy, "active"))) {
                fprintf(stdout, "switched over to post-copy at %" PRId64 " ms: %" PRId64
                        " pages follow the guest\n", get_int(postcopy, "switched_at_ms"),
                        get_int(postcopy, "pages_total"));
                postcopy_announced = true;
            }
        }
        if (finished(state)) {
            if (tty && !json)
                fputc('\n', stdout);
            if (json) {
                char *text = json_dumps(progress, JSON_COMPACT);
                if (text)
                    fprintf(stdout, "%s\n", text);
                free(text);
            } else {
                if (!tty)
                    print_new_iterations(progress, &printed);
                print_summary(progress, strcmp(state, "completed") == 0 ? stdout : stderr);
            }
            int code = strcmp(state, "completed") == 0 ? 0 : EXIT_FAILED;
            json_decref(progress);
            json_decref(last);
            return code;
        }
        json_decref(progress);
    }
}

/* path made absolute against ringctl's working directory. 0 or -1. */
static int absolute_path(const char *path, char *out, size_t size)
{
    if (path[0] == '/')
        return (size_t)snprintf(out, size, "%s", path) < size ? 0 : -1;
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return -1;
    return (size_t)snprintf(out, size, "%s/%s", cwd, path) < size ? 0 : -1;
}

/* --postcopy-after's value as migration.start's postcopy_after: N
 * (decimal, >= 1) as an integer (passes), "Ns" and "auto" as strings (the
 * VMM checks the seconds' range against timeout_s). NULL when it is none
 * of these. */
static json_t *postcopy_after_value(const char *text)
{
    if (strcmp(text, "auto") == 0)
        return json_string(text);
    size_t digits = strspn(text, "0123456789");
    if (digits == 0 || digits > 18)
        return NULL;
    if (text[digits] == 's' && text[digits + 1] == '\0')
        return json_string(text);
    if (text[digits] != '\0')
        return NULL;
    long long passes = strtoll(text, NULL, 10);
    return passes >= 1 ? json_integer(passes) : NULL;
}

/* A post-copy (or hybrid) start needs the user's yes: after the switch-over
 * neither process alone holds the guest. 0 to go on, else the exit status
 * (message printed). Without a terminal to ask on, a script must say
 * --yes itself. */
static int confirm_postcopy(const char *mode)
{
    if (!isatty(STDIN_FILENO)) {
        fprintf(stderr, "ringctl: migrate: --mode %s: stdin is not a terminal to confirm that the guest is lost if "
                "either process dies during post-copy; pass --yes to start it anyway\n", mode);
        return EXIT_USAGE;
    }
    fprintf(stderr, "post-copy: once the guest switches over, its RAM is split between the two hosts; if either "
            "process dies before the copy ends, the guest is lost. Continue? [y/N] ");
    fflush(stderr);
    char *line = NULL;
    size_t size = 0;
    ssize_t length = getline(&line, &size, stdin);
    bool yes = false;
    if (length > 0) {
        while (length > 0 && isspace((unsigned char)line[length - 1]))
            line[--length] = '\0';
        const char *answer = line;
        while (isspace((unsigned char)*answer))
            answer++;
        yes = strcasecmp(answer, "y") == 0 || strcasecmp(answer, "yes") == 0;
    } else {
        fputc('\n', stderr);     /* end of input: finish the prompt's line */
    }
    free(line);
    if (!yes) {
        fprintf(stderr, "ringctl: migrate: not confirmed; no migration started\n");
        return EXIT_FAILED;
    }
    return 0;
}

/* events.subscribe to the migration's events: 0, or the call's status. */
static int subscribe_migration_events(struct ringctl_session *session)
{
    json_t *ignored = NULL;
    int status = call(session, "events.subscribe", json_pack("{s:[s]}", "events", "migration."), &ignored);
    json_decref(ignored);
    return status;
}

/* migrate --resume: args = {dest, resume: true} (owned). The post-copy
 * migration paused by a broken link goes on over a new connection to dest;
 * no question is asked (post-copy was agreed to when it started). Then,
 * unless dispatch, watches it to its end as migrate does. */
static int run_resume(struct ringctl_session *session, json_t *args, bool dispatch, bool json)
{
    char dest[512];
    snprintf(dest, sizeof(dest), "%s", get_string(args, "dest"));
    if (!dispatch) {
        /* Subscribe first so no state change is missed. */
        int status = subscribe_migration_events(session);
        if (status != 0) {
            json_decref(args);
            return status;
        }
    }
    json_t *result = NULL;
    int status = call(session, "migration.start", args, &result);
    if (status != 0)
        return status;
    if (dispatch) {
        if (json) {
            char *text = json_dumps(result, JSON_COMPACT);
            if (text)
                fprintf(stdout, "%s\n", text);
            free(text);
        } else {
            fprintf(stdout, "resuming the paused post-copy migration to %s\n", dest);
        }
        json_decref(result);
        return 0;
    }
    json_decref(result);
    /* The result names no migration: the progress does (the one resumed). */
    json_t *progress = NULL;
    status = call(session, "migration.progress", NULL, &progress);
    if (status != 0)
        return status;
    int64_t id = get_int(progress, "id");
    json_decref(progress);
    if (!json)
        fprintf(stdout, "migration %" PRId64 " resuming to %s\n", id, dest);
    return watch_until_done(session, json, id, isatty(STDOUT_FILENO) && !json);
}

/* --help never gets here: ringctl.c answers it from its command table. */
static int run_migrate(struct ringctl_session *session, int argc, char **argv, bool json)
{
    static const struct option options[] = {
        {"dispatch", no_argument, NULL, 'd'},
        {"downtime-ms", required_argument, NULL, 'D'},
        {"converge", required_argument, NULL, 'c'},
        {"max-bandwidth", required_argument, NULL, 'b'},
        {"switch-over-bandwidth", required_argument, NULL, 'W'},
        {"keep-alive", no_argument, NULL, 'k'},
        {"timeout", required_argument, NULL, 't'},
        {"timeout-strategy", required_argument, NULL, 'S'},
        {"throttle-initial", required_argument, NULL, 'i'},
        {"throttle-increment", required_argument, NULL, 'n'},
        {"throttle-max", required_argument, NULL, 'm'},
        {"stall-timeout", required_argument, NULL, 's'},
        {"verify-digest", no_argument, NULL, 'v'},
        {"no-verify", no_argument, NULL, 'V'},
        {"no-source-digest", no_argument, NULL, 'G'},
        {"tls-psk", required_argument, NULL, 'P'},
        {"tls-creds", required_argument, NULL, 'C'},
        {"tls-server-name", required_argument, NULL, 'N'},
        {"console", required_argument, NULL, 'O'},
        {"mode", required_argument, NULL, 'M'},
        {"postcopy-after", required_argument, NULL, 'A'},
        {"yes", no_argument, NULL, 'y'},
        {"resume", no_argument, NULL, 'R'},
        {0},
    };
    json_t *args = json_object();
    bool dispatch = false;
    bool confirmed = false;
    bool resume = false;
    const char *mode = "precopy";
    /* The first option that sets a migration.start argument: a resumed
     * migration keeps the parameters it was started with. */
    const char *parameter_option = NULL;
    optind = 0;     /* GNU: full re-initialisation (ringctl may parse several times) */
    int option;
    int option_index = 0;
    while ((option = getopt_long(argc, argv, "", options, &option_index)) != -1) {
        const char *key = NULL;
        if (option != 'd' && option != 'y' && option != 'R' && option != '?' && parameter_option == NULL)
            parameter_option = options[option_index].name;
        switch (option) {
        case 'd': dispatch = true; continue;
        case 'R': resume = true; continue;
        case 'k': json_object_set_new(args, "keep_alive", json_true()); continue;
        case 'v': json_object_set_new(args, "verify_digest", json_true()); continue;
        case 'V': json_object_set_new(args, "verify_digest", json_false()); continue;
        case 'G': json_object_set_new(args, "source_digest", json_false()); continue;
        case 'c': json_object_set_new(args, "converge", json_string(optarg)); continue;
        case 'S': json_object_set_new(args, "timeout_strategy", json_string(optarg)); continue;
        case 'N': json_object_set_new(args, "tls_server_name", json_string(optarg)); continue;
        case 'y': confirmed = true; continue;
        case 'M':
            if (strcmp(optarg, "precopy") != 0 && strcmp(optarg, "postcopy") != 0 && strcmp(optarg, "hybrid") != 0) {
                fprintf(stderr, "ringctl: migrate: --mode %s: expected precopy, postcopy or hybrid\n", optarg);
                json_decref(args);
                return EXIT_USAGE;
            }
            mode = optarg;
            json_object_set_new(args, "mode", json_string(optarg));
            continue;
        case 'A': {
            json_t *value = postcopy_after_value(optarg);
            if (value == NULL) {
                fprintf(stderr, "ringctl: migrate: --postcopy-after %s: expected N (passes, N >= 1), Ns (seconds, "
                        "N >= 1) or auto\n", optarg);
                json_decref(args);
                return EXIT_USAGE;
            }
            json_object_set_new(args, "postcopy_after", value);
            continue;
        }
        case 'O': {
            /* ringvm connects to it, from its own working directory. */
            char path[4096];
            if (strncmp(optarg, "unix:", 5) != 0 || optarg[5] == '\0') {
                fprintf(stderr, "ringctl: migrate: --console %s: expected unix:PATH (the destination's --console "
                        "socket)\n", optarg);
                json_decref(args);
                return EXIT_USAGE;
            }
            if (absolute_path(optarg + 5, path, sizeof(path)) != 0) {
                fprintf(stderr, "ringctl: migrate: --console %s: path too long or no working directory\n", optarg);
                json_decref(args);
                return EXIT_USAGE;
            }
            char text[4200];
            snprintf(text, sizeof(text), "unix:%s", path);
            json_object_set_new(args, "console", json_string(text));
            continue;
        }
        case 'P':
        case 'C': {
            /* ringvm reads the file, from its own working directory. */
            char path[4096];
            if (absolute_path(optarg, path, sizeof(path)) != 0) {
                fprintf(stderr, "ringctl: migrate: --%s %s: path too long or no working directory\n",
                        options[option_index].name, optarg);
                json_decref(args);
                return EXIT_USAGE;
            }
            json_object_set_new(args, option == 'P' ? "tls_psk_file" : "tls_creds_dir", json_string(path));
            continue;
        }
        case 'D': key = "downtime_ms"; break;
        case 'b': key = "max_bandwidth_mibs"; break;
        case 'W': key = "switch_over_bandwidth_mibs"; break;
        case 't': key = "timeout_s"; break;
        case 'i': key = "throttle_initial"; break;
        case 'n': key = "throttle_increment"; break;
        case 'm': key = "throttle_max"; break;
        case 's': key = "stall_timeout_s"; break;
        default:
            json_decref(args);
            return EXIT_USAGE;
        }
        char *end = NULL;
        errno = 0;
        long long value = strtoll(optarg, &end, 10);
        if (errno != 0 || *optarg == '\0' || *end != '\0' || value < 0) {
            fprintf(stderr, "ringctl: migrate: --%s %s: expected a non-negative integer\n",
                    options[option_index].name, optarg);
            json_decref(args);
            return EXIT_USAGE;
        }
        json_object_set_new(args, key, json_integer(value));
    }
    if (resume && parameter_option != NULL) {
        fprintf(stderr, "ringctl: migrate: --%s cannot be used with --resume (a resumed migration goes on with the "
                "parameters it was started with)\n", parameter_option);
        json_decref(args);
        return EXIT_USAGE;
    }
    if (optind != argc - 1) {
        if (resume)
            fprintf(stderr, "ringctl: migrate: --resume: expected exactly one DEST (unix:PATH or tcp:HOST:PORT "
                    "where the destination listens after `ringctl recover`)\n");
        else
            fprintf(stderr, "ringctl: migrate: expected exactly one DEST (unix:PATH, tcp:HOST:PORT or "
                    "local:PATH)\n");
        json_decref(args);
        return EXIT_USAGE;
    }
    if (resume) {
        json_object_set_new(args, "dest", json_string(argv[optind]));
        json_object_set_new(args, "resume", json_true());
        return run_resume(session, args, dispatch, json);
    }
    if (json_object_get(args, "postcopy_after") != NULL && strcmp(mode, "hybrid") != 0) {
        fprintf(stderr, "ringctl: migrate: --postcopy-after needs --mode hybrid (mode %s never switches to "
                "post-copy on a condition)\n", mode);
        json_decref(args);
        return EXIT_USAGE;
    }
    json_object_set_new(args, "dest", json_string(argv[optind]));
    if (strncmp(argv[optind], "tcp:", 4) == 0 && json_object_get(args, "tls_psk_file") == NULL &&
        json_object_get(args, "tls_creds_dir") == NULL)
        fprintf(stderr, "ringctl: warning: migrating over plaintext TCP: guest memory crosses the network "
                        "unencrypted and unauthenticated (use --tls-psk FILE or --tls-creds DIR)\n");
    if (strcmp(mode, "precopy") != 0 && !confirmed) {
        int status = confirm_postcopy(mode);
        if (status != 0) {
            json_decref(args);
            return status;
        }
    }

    if (!dispatch) {
        /* Subscribe first so no state change is missed. */
        int status = subscribe_migration_events(session);
        if (status != 0) {
            json_decref(args);
            return status;
        }
    }
    json_t *result = NULL;
    int status = call(session, "migration.start", args, &result);
    if (status != 0)
        return status;
    int64_t id = get_int(result, "id");
    if (dispatch) {
        if (json) {
            char *text = json_dumps(result, JSON_COMPACT);
            if (text)
                fprintf(stdout, "%s\n", text);
            free(text);
        } else {
            fprintf(stdout, "migration %" PRId64 " started to %s\n", id, get_string(result, "dest"));
        }
        json_decref(result);
        return 0;
    }
    json_decref(result);
    return watch_until_done(session, json, id, isatty(STDOUT_FILENO) && !json);
}

static int run_progress(struct ringctl_session *session, int argc, char **argv, bool json)
{
    static const struct option options[] = {
        {"watch", no_argument, NULL, 'w'}, {"json", no_argument, NULL, 'J'}, {"help", no_argument, NULL, 'h'}, {0}};
    bool watch = false;
    optind = 0;     /* GNU: full re-initialisation (ringctl may parse several times) */
    int option;
    int option_index = 0;
    while ((option = getopt_long(argc, argv, "", options, &option_index)) != -1) {
        if (option == 'w')
            watch = true;
        else if (option == 'J')
            json = true;
        else if (option == 'h') {
            fprintf(stdout, "usage: ringctl progress [--watch] [--json]\n");
            return 0;
        } else
            return EXIT_USAGE;
    }
    if (optind != argc) {
        fprintf(stderr, "ringctl: progress: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    json_t *progress = NULL;
    int status = call(session, "migration.progress", NULL, &progress);
    if (status != 0)
        return status;
    if (watch && !finished(get_string(progress, "state"))) {
        int64_t id = get_int(progress, "id");
        json_decref(progress);
        status = subscribe_migration_events(session);
        if (status != 0)
            return status;
        return watch_until_done(session, json, id, isatty(STDOUT_FILENO) && !json);
    }
    if (json) {
        char *text = json_dumps(progress, JSON_INDENT(2));
        if (text)
            fprintf(stdout, "%s\n", text);
        free(text);
    } else {
        json_t *memory = json_object_get(progress, "memory");
        fprintf(stdout, "migration %" PRId64 " (%s, %s): %s, phase %s, %" PRId64 "%%, iteration %" PRId64
                ", elapsed %" PRId64 " ms\n", get_int(progress, "id"), get_string(progress, "role"),
                get_string(progress, "address"), get_string(progress, "state"), get_string(progress, "phase"),
                get_int(progress, "percent"), get_int(progress, "iteration"), get_int(progress, "elapsed_ms"));
        fprintf(stdout, "  dirty rate %" PRId64 " pps, bandwidth %.2f MiB/s, throttle %" PRId64
                "%%, expected downtime %" PRId64 " ms, remaining %.1f MiB\n", get_int(progress, "dirty_rate_pps"),
                get_real(progress, "bandwidth_mibs"), get_int(progress, "throttle_percent"),
                get_int(progress, "expected_downtime_ms"), (double)get_int(memory, "remaining") / (1024.0 * 1024.0));
        json_t *iterations = json_object_get(progress, "iterations");
        size_t index;
        json_t *it;
        json_array_foreach(iterations, index, it)
            fprintf(stdout, "  %s\n", get_string(it, "line"));
        if (finished(get_string(progress, "state")))
            print_summary(progress, stdout);
        else
            ringctl_print_postcopy(progress, stdout);
    }
    json_decref(progress);
    return 0;
}

static int run_cancel(struct ringctl_session *session, int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        fprintf(stdout, "usage: ringctl cancel\n");
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "ringctl: cancel: takes no arguments\n");
        return EXIT_USAGE;
    }
    json_t *result = NULL;
    int status = call(session, "migration.cancel", NULL, &result);
    json_decref(result);
    if (status == 0)
        fprintf(stdout, "cancelling; the guest continues on this side\n");
    return status;
}

static int run_postcopy(struct ringctl_session *session, int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        fprintf(stdout, "usage: ringctl postcopy\n");
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "ringctl: postcopy: takes no arguments\n");
        return EXIT_USAGE;
    }
    json_t *result = NULL;
    int status = call(session, "migration.postcopy", NULL, &result);
    if (status != 0)
        return status;
    if (session->json) {
        char *text = json_dumps(result, JSON_COMPACT);
        if (text)
            fprintf(stdout, "%s\n", text);
        free(text);
    } else {
        fprintf(stdout, "switching to post-copy at the migration's next decision\n");
    }
    json_decref(result);
    return 0;
}

static int run_recover(struct ringctl_session *session, int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        fprintf(stdout, "usage: ringctl recover ADDRESS\n");
        return 0;
    }
    if (argc >= 2 && argv[1][0] == '-') {
        fprintf(stderr, "ringctl: recover: unknown option '%s'\n", argv[1]);
        return EXIT_USAGE;
    }
    if (argc != 2) {
        fprintf(stderr, "ringctl: recover: expected exactly one ADDRESS (unix:PATH or tcp:HOST:PORT to listen "
                "on for the source's `ringctl migrate --resume ADDRESS`)\n");
        return EXIT_USAGE;
    }
    json_t *result = NULL;
    int status = call(session, "migration.recover", json_pack("{s:s}", "address", argv[1]), &result);
    if (status != 0)
        return status;
    if (session->json) {
        char *text = json_dumps(result, JSON_COMPACT);
        if (text)
            fprintf(stdout, "%s\n", text);
        free(text);
    } else {
        fprintf(stdout, "recovering: listening on %s; now run `ringctl migrate --resume %s` on the source\n",
                argv[1], argv[1]);
    }
    json_decref(result);
    return 0;
}

int ringctl_migration_main(int argc, char **argv, struct ringctl_session *session)
{
    if (argc < 1)
        return EXIT_USAGE;
    const char *name = argv[0];
    if (strcmp(name, "migrate") != 0 && strcmp(name, "progress") != 0 && strcmp(name, "cancel") != 0 &&
        strcmp(name, "postcopy") != 0 && strcmp(name, "recover") != 0) {
        fprintf(stderr, "ringctl: unknown migration command '%s'\n", name);
        return EXIT_USAGE;
    }
    /* Each command connects on its first call, after its options parsed, so
     * a usage error is reported as one (exit 2) even with no VMM to reach. */
    if (strcmp(name, "migrate") == 0)
        return run_migrate(session, argc, argv, session->json);
    if (strcmp(name, "progress") == 0)
        return run_progress(session, argc, argv, session->json);
    if (strcmp(name, "postcopy") == 0)
        return run_postcopy(session, argc, argv);
    if (strcmp(name, "recover") == 0)
        return run_recover(session, argc, argv);
    return run_cancel(session, argc, argv);
}
