/*
 * `ringctl report`: the migration report (api/report.h) as an HTML file.
 *
 *   ringctl [-s PATH] report [--out FILE] [--from FILE] [--bpf FILE]
 *                            [--watch [--interval MS] [--save FILE]]
 *
 * Without --from it asks the VMM for migration.progress (and, when the
 * probes are loaded, bpf.stats). --watch asks every --interval ms (default
 * 500) until the migration ends (or the connection is lost, or SIGINT),
 * so the over-time plots and the post-copy section have real samples;
 * --save writes those samples as JSON lines (every iterations[] but the
 * last left out) before rendering. --from reads a saved `ringctl progress
 * --json` output or a --save file: one snapshot, a JSON array of
 * snapshots, or several snapshots one after another (JSON lines).
 * Prints the path of the file written. Exit status as ringctl: 0 ok, 1 the
 * VMM answered an error or the report failed, 2 usage, 3 cannot connect.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/client.h"
#include "api/report.h"

#define REPORT_EXIT_ERROR 1
#define REPORT_EXIT_USAGE 2
#define REPORT_EXIT_CONNECT 3
#define REPORT_TIMEOUT_MS 30000
#define REPORT_INTERVAL_DEFAULT_MS 500
#define REPORT_INTERVAL_MIN_MS 50
#define REPORT_INTERVAL_MAX_MS 60000

static const char report_usage[] =
    "usage: ringctl [-s PATH] report [--out FILE] [--from FILE] [--bpf FILE]\n"
    "                                [--watch [--interval MS] [--save FILE]]\n"
    "\n"
    "Write the report of the last migration as a self-contained HTML page (plots by\n"
    "gnuplot, Debian package gnuplot-nox): dirty rate, bandwidth, remaining memory,\n"
    "expected downtime vs limit, throttle per vCPU, kick latency p50/p99 (with BPF\n"
    "stats), a summary, and for post-copy and hybrid migrations a post-copy section:\n"
    "pages received / requested / pushed, faults, blocktime and fault service\n"
    "latency p50/p99/max over time (faults, blocktime and latency are measured by\n"
    "the destination: report there for them).\n"
    "  --out FILE       where to write (default: migration-report.html)\n"
    "  --from FILE      read a saved `ringctl progress --json` or --save file (one\n"
    "                   snapshot, an array, or JSON lines) instead of asking the VMM\n"
    "  --bpf FILE       BPF stats JSON to include (default: asked from the VMM when\n"
    "                   live)\n"
    "  --watch          sample migration.progress every --interval until the\n"
    "                   migration ends (Ctrl-C: stop early), then write the report\n"
    "                   of every sample\n"
    "  --interval MS    with --watch: ms between samples, 50..60000 [500]\n"
    "  --save FILE      with --watch: also write the samples to FILE as JSON lines\n"
    "                   (for --from)\n";

static volatile sig_atomic_t watch_interrupted;

static void on_interrupt(int signal_number)
{
    (void)signal_number;
    watch_interrupted = 1;
}

static bool finished_state(const json_t *snapshot)
{
    const json_t *state = json_object_get(snapshot, "state");
    const char *text = json_is_string(state) ? json_string_value(state) : "";
    return strcmp(text, "completed") == 0 || strcmp(text, "failed") == 0 || strcmp(text, "cancelled") == 0;
}

/* Samples migration.progress every interval_ms until the migration ends,
 * the connection is lost (a source without keep_alive exits once it
 * completed) or SIGINT. Returns the array of samples (only the last keeps
 * its iterations[]: the report reads them from the last alone), or NULL
 * with *status set (message printed) when not even one could be read. */
static json_t *watch_samples(struct api_client *client, long interval_ms, int *status)
{
    json_t *samples = json_array();
    if (!samples) {
        fprintf(stderr, "ringctl report: out of memory\n");
        *status = REPORT_EXIT_ERROR;
        return NULL;
    }
    struct sigaction action = { .sa_handler = on_interrupt }, previous;
    sigemptyset(&action.sa_mask);
    watch_interrupted = 0;
    sigaction(SIGINT, &action, &previous);
    bool announced = false;
    for (;;) {
        json_t *snapshot = NULL;
        struct api_error api_error;
        int rc = api_client_call(client, "migration.progress", NULL, &snapshot, &api_error, REPORT_TIMEOUT_MS);
        if (rc != 0) {
            if (json_array_size(samples) == 0 || rc > 0) {
                if (rc > 0)
                    fprintf(stderr, "ringctl report: %s: %s\n", api_error_code_name(api_error.code),
                            api_error.message);
                else
                    fprintf(stderr, "ringctl report: %s\n", api_error.message);
                *status = rc > 0 ? REPORT_EXIT_ERROR : REPORT_EXIT_CONNECT;
                json_decref(samples);
                samples = NULL;
            } else if (!watch_interrupted) {
                fprintf(stderr, "ringctl report: %s: the report ends at the last of %zu samples\n",
                        api_error.message, json_array_size(samples));
            }
            break;
        }
        size_t count = json_array_size(samples);
        json_t *previous_sample = count > 0 ? json_array_get(samples, count - 1) : NULL;
        if (previous_sample != NULL &&
            json_integer_value(json_object_get(previous_sample, "id")) !=
                json_integer_value(json_object_get(snapshot, "id"))) {
            json_array_clear(samples);     /* a new migration started: report that one */
            previous_sample = NULL;
        }
        if (previous_sample != NULL)
            json_object_del(previous_sample, "iterations");
        json_array_append_new(samples, snapshot);
        if (finished_state(snapshot) || watch_interrupted)
            break;
        if (!announced) {
            fprintf(stderr, "ringctl report: sampling migration %lld every %ld ms until it ends (Ctrl-C stops "
                    "early)\n", (long long)json_integer_value(json_object_get(snapshot, "id")), interval_ms);
            announced = true;
        }
        struct timespec delay = { .tv_sec = interval_ms / 1000, .tv_nsec = (interval_ms % 1000) * 1000000L };
        while (nanosleep(&delay, &delay) != 0 && errno == EINTR && !watch_interrupted)
            ;
        if (watch_interrupted)
            break;
    }
    sigaction(SIGINT, &previous, NULL);
    return samples;
}

/* The samples as JSON lines into path. 0, or -1 (message printed). */
static int save_samples(const char *path, const json_t *samples)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "ringctl report: --save %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t index;
    json_t *sample;
    json_array_foreach(samples, index, sample) {
        if (json_dumpf(sample, f, JSON_COMPACT) != 0 || fputc('\n', f) == EOF)
            break;
    }
    if (ferror(f) | (fclose(f) != 0)) {
        fprintf(stderr, "ringctl report: --save %s: write failed: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* One value, an array, or a sequence of values (JSON lines): returns the
 * single object, or an array of every value read. */
static json_t *load_snapshots(const char *path, char *error, size_t error_size)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        snprintf(error, error_size, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t size = 0;
    FILE *memory = open_memstream(&text, &size);
    if (!memory) {
        snprintf(error, error_size, "open_memstream: %s", strerror(errno));
        if (f != stdin)
            fclose(f);
        return NULL;
    }
    char buffer[65536];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), f)) > 0)
        fwrite(buffer, 1, n, memory);
    int read_failed = ferror(f);
    if (f != stdin)
        fclose(f);
    if (fclose(memory) != 0 || read_failed || !text) {
        snprintf(error, error_size, "cannot read %s", path);
        free(text);
        return NULL;
    }
    json_t *all = json_array();
    size_t offset = 0;
    while (all) {
        while (offset < size && strchr(" \t\r\n", text[offset]))
            offset++;
        if (offset >= size)
            break;
        json_error_t json_error;
        json_t *value = json_loadb(text + offset, size - offset, JSON_DISABLE_EOF_CHECK, &json_error);
        if (!value) {
            snprintf(error, error_size, "%s: not JSON at byte %zu: %s", path, offset + (size_t)json_error.position,
                     json_error.text);
            json_decref(all);
            free(text);
            return NULL;
        }
        offset += (size_t)json_error.position;
        json_array_append_new(all, value);
    }
    free(text);
    if (!all) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    if (json_array_size(all) == 0) {
        snprintf(error, error_size, "%s is empty", path);
        json_decref(all);
        return NULL;
    }
    if (json_array_size(all) == 1) {
        json_t *only = json_incref(json_array_get(all, 0));
        json_decref(all);
        /* `ringctl --json raw` style replies: take the result. */
        json_t *result = json_is_object(only) ? json_object_get(only, "result") : NULL;
        if (json_is_object(result)) {
            json_incref(result);
            json_decref(only);
            return result;
        }
        return only;
    }
    return all;
}

int ringctl_report_main(int argc, char **argv, const char *socket_path)
{
    static const struct option options[] = {
        {"out", required_argument, NULL, 'o'},
        {"from", required_argument, NULL, 'f'},
        {"bpf", required_argument, NULL, 'b'},
        {"watch", no_argument, NULL, 'w'},
        {"interval", required_argument, NULL, 'i'},
        {"save", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out_path = "migration-report.html", *from = NULL, *bpf_path = NULL, *save_path = NULL;
    const char *interval_text = NULL;
    bool watch = false;
    long interval_ms = REPORT_INTERVAL_DEFAULT_MS;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+o:f:b:h", options, NULL)) != -1) {
        switch (c) {
        case 'o': out_path = optarg; break;
        case 'f': from = optarg; break;
        case 'b': bpf_path = optarg; break;
        case 'w': watch = true; break;
        case 'i': interval_text = optarg; break;
        case 's': save_path = optarg; break;
        case 'h': fputs(report_usage, stdout); return 0;
        default:
            fprintf(stderr, "ringctl report: unknown or incomplete option '%s'\n%s", argv[optind - 1], report_usage);
            return REPORT_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ringctl report: unexpected argument '%s'\n%s", argv[optind], report_usage);
        return REPORT_EXIT_USAGE;
    }
    if (!watch && (interval_text != NULL || save_path != NULL)) {
        fprintf(stderr, "ringctl report: --%s needs --watch\n", interval_text != NULL ? "interval" : "save");
        return REPORT_EXIT_USAGE;
    }
    if (watch && from != NULL) {
        fprintf(stderr, "ringctl report: --watch samples the VMM; --from reads a file: not both\n");
        return REPORT_EXIT_USAGE;
    }
    if (interval_text != NULL) {
        char *end = NULL;
        errno = 0;
        interval_ms = strtol(interval_text, &end, 10);
        if (errno != 0 || end == interval_text || *end != '\0' || interval_ms < REPORT_INTERVAL_MIN_MS ||
            interval_ms > REPORT_INTERVAL_MAX_MS) {
            fprintf(stderr, "ringctl report: --interval %s: expected an integer %d..%d (ms)\n", interval_text,
                    REPORT_INTERVAL_MIN_MS, REPORT_INTERVAL_MAX_MS);
            return REPORT_EXIT_USAGE;
        }
    }

    char error[1024];
    json_t *progress = NULL, *bpf = NULL;
    int status = 0;
    if (bpf_path) {
        bpf = load_snapshots(bpf_path, error, sizeof(error));
        if (!bpf) {
            fprintf(stderr, "ringctl report: --bpf %s\n", error);
            return REPORT_EXIT_ERROR;
        }
    }
    if (from) {
        progress = load_snapshots(from, error, sizeof(error));
        if (!progress) {
            fprintf(stderr, "ringctl report: --from %s\n", error);
            json_decref(bpf);
            return REPORT_EXIT_ERROR;
        }
    } else {
        if (!socket_path || !*socket_path) {
            fprintf(stderr, "ringctl report: no socket given: use -s PATH, set RINGVM_SOCKET, or --from FILE\n");
            json_decref(bpf);
            return REPORT_EXIT_USAGE;
        }
        struct api_client *client = NULL;
        if (api_client_connect(&client, socket_path, error, sizeof(error)) < 0) {
            fprintf(stderr, "ringctl report: %s\n", error);
            json_decref(bpf);
            return REPORT_EXIT_CONNECT;
        }
        struct api_error api_error;
        int rc = 0;
        if (watch) {
            int watch_status = 0;
            progress = watch_samples(client, interval_ms, &watch_status);
            if (!progress) {
                api_client_close(client);
                json_decref(bpf);
                return watch_status;
            }
            if (save_path != NULL && save_samples(save_path, progress) != 0) {
                api_client_close(client);
                json_decref(progress);
                json_decref(bpf);
                return REPORT_EXIT_ERROR;
            }
        } else {
            rc = api_client_call(client, "migration.progress", NULL, &progress, &api_error, REPORT_TIMEOUT_MS);
        }
        if (rc == 0 && !bpf) {
            json_t *stats = NULL;
            struct api_error ignored;
            /* Optional: only when the probes are loaded (ringvm --bpf). */
            if (api_client_call(client, "bpf.stats", NULL, &stats, &ignored, REPORT_TIMEOUT_MS) == 0)
                bpf = stats;
        }
        api_client_close(client);
        if (rc != 0) {
            if (rc > 0)
                fprintf(stderr, "ringctl report: %s: %s\n", api_error_code_name(api_error.code), api_error.message);
            else
                fprintf(stderr, "ringctl report: %s\n", api_error.message);
            json_decref(bpf);
            return rc > 0 ? REPORT_EXIT_ERROR : REPORT_EXIT_CONNECT;
        }
    }

    char temporary[4096];
    int written = snprintf(temporary, sizeof(temporary), "%s.tmp", out_path);
    FILE *out = written > 0 && (size_t)written < sizeof(temporary) ? fopen(temporary, "w") : NULL;
    if (!out) {
        fprintf(stderr, "ringctl report: cannot create %s: %s\n", temporary, strerror(errno));
        status = REPORT_EXIT_ERROR;
    } else if (report_render(progress, bpf, out, error, sizeof(error)) != 0) {
        fprintf(stderr, "ringctl %s\n", error);
        fclose(out);
        unlink(temporary);
        status = REPORT_EXIT_ERROR;
    } else if (fclose(out) != 0) {
        fprintf(stderr, "ringctl report: writing %s: %s\n", temporary, strerror(errno));
        unlink(temporary);
        status = REPORT_EXIT_ERROR;
    } else if (rename(temporary, out_path) != 0) {
        fprintf(stderr, "ringctl report: rename %s to %s: %s\n", temporary, out_path, strerror(errno));
        unlink(temporary);
        status = REPORT_EXIT_ERROR;
    } else {
        printf("%s\n", out_path);
    }
    json_decref(progress);
    json_decref(bpf);
    return status;
}
