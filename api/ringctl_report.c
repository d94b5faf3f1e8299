/*
 * `ringctl report`: the migration report (api/report.h) as an HTML file.
 *
 *   ringctl [-s PATH] report [--out FILE] [--from FILE] [--bpf FILE]
 *
 * Without --from it asks the VMM for migration.progress (and, when the
 * probes are loaded, bpf.stats). --from reads a saved `ringctl progress
 * --json` output: one snapshot, a JSON array of snapshots, or several
 * snapshots one after another (JSON lines of `progress --watch --json`).
 * Prints the path of the file written. Exit status as ringctl: 0 ok, 1 the
 * VMM answered an error or the report failed, 2 usage, 3 cannot connect.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/client.h"
#include "api/report.h"

#define REPORT_EXIT_ERROR 1
#define REPORT_EXIT_USAGE 2
#define REPORT_EXIT_CONNECT 3
#define REPORT_TIMEOUT_MS 30000

static const char report_usage[] =
    "usage: ringctl [-s PATH] report [--out FILE] [--from FILE] [--bpf FILE]\n"
    "\n"
    "Write the report of the last migration as a self-contained HTML page (plots by\n"
    "gnuplot, Debian package gnuplot-nox): dirty rate, bandwidth, remaining memory,\n"
    "expected downtime vs limit, throttle per vCPU, kick latency p50/p99 (with BPF\n"
    "stats), and a summary.\n"
    "  --out FILE    where to write (default: migration-report.html)\n"
    "  --from FILE   read a saved `ringctl progress --json` (one snapshot, an array,\n"
    "                or JSON lines) instead of asking the VMM\n"
    "  --bpf FILE    BPF stats JSON to include (default: asked from the VMM when live)\n";

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
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out_path = "migration-report.html", *from = NULL, *bpf_path = NULL;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+o:f:b:h", options, NULL)) != -1) {
        switch (c) {
        case 'o': out_path = optarg; break;
        case 'f': from = optarg; break;
        case 'b': bpf_path = optarg; break;
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
        int rc = api_client_call(client, "migration.progress", NULL, &progress, &api_error, REPORT_TIMEOUT_MS);
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
