/*
 * bench/tls-throughput: what the TLS channel (migration/tls.c) costs against
 * the plaintext stream, same run, same machine (issue 16: TLS >= 0.75x of
 * plaintext throughput).
 *
 * For each transport (a Unix socketpair, TCP over loopback) and each mode a
 * sender thread writes --bytes in 1 MiB frames (a 32-byte header and the
 * payload as two iovecs, as mig-send does) through struct mig_io (io.tls
 * set for the TLS modes, as the stream does) and a receiver thread reads
 * them back as header + payload. Modes: plaintext; tls-psk (negotiates
 * TLS_AES_128_GCM_SHA256); tls-x509 (certificates made here,
 * TLS_AES_256_GCM_SHA384); tls-x509-aes128 (the same with AES-128-GCM
 * preferred, to price the cipher choice); plaintext+xxh3 and tls-psk+xxh3
 * (both sides also hash every payload with XXH3-64, as the per-frame
 * checksum does: throughput with / without it, in the same run, answers
 * whether the checksum is still worth its cost under TLS). Printed: bytes/s,
 * CPU-seconds per GiB of each side, and the ratio to plaintext on the same
 * transport. Every figure is the median of --reps runs, the modes
 * interleaved so background load hits them alike.
 *
 * It also times XXH3-64 alone over the same 1 MiB frames (CPU-s/GiB).
 *
 * Usage: tls-throughput [--bytes SIZE] [--reps N] [--json]
 *        tls-throughput --help
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#include <xxh_x86dispatch.h>

#include "bench/lib/bench_options.h"
#include "bench/lib/bench_tls.h"
#include "migration/tls.h"
#include "migration/transport.h"

#define FRAME_PAYLOAD (1u << 20)
#define PROGRAM "bench/tls-throughput"
/* every run of every transport and mode is kept for the medians */
#define MAX_REPS 101
#define FRAME_HEADER 32u

enum transport { TRANSPORT_UNIX, TRANSPORT_TCP, TRANSPORT_COUNT };
enum mode { MODE_PLAIN, MODE_PSK, MODE_X509, MODE_X509_AES128, MODE_PLAIN_XXH3, MODE_PSK_XXH3, MODE_COUNT };
static const char *transport_name[TRANSPORT_COUNT] = { "unix-socketpair", "tcp-loopback" };
static const char *mode_name[MODE_COUNT] = { "plaintext", "tls-psk", "tls-x509", "tls-x509-aes128",
                                             "plaintext+xxh3", "tls-psk+xxh3" };
/* x509 with AES-128-GCM preferred (the default prefers AES-256-GCM). */
#define PRIORITY_X509_AES128 "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:-MAC-ALL:+AEAD"
/* Modes that hash every payload with XXH3-64 on both sides, as the
 * stream's per-frame checksum does (the sender while filling, the
 * receiver after reading). */
static bool mode_hashes(enum mode mode)
{
    return mode == MODE_PLAIN_XXH3 || mode == MODE_PSK_XXH3;
}

static void die(const char *what)
{
    fprintf(stderr, "tls-throughput: %s\n", what);
    exit(1);
}

static double now_seconds(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- connections ------------------------------------------------------------ */

static void tune(int fd, bool tcp)
{
    int size = 4 << 20, one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    if (tcp)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* A connected pair: [0] the source's end, [1] the destination's. */
static void connect_pair(enum transport transport, int fds[2])
{
    if (transport == TRANSPORT_UNIX) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
            die("socketpair");
        tune(fds[0], false);
        tune(fds[1], false);
        return;
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t length = sizeof(address);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0 || listen(listener, 1) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0)
        die("listening on 127.0.0.1");
    fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[0] < 0)
        die("socket");
    tune(fds[0], true);
    if (connect(fds[0], (struct sockaddr *)&address, sizeof(address)) != 0)
        die("connect to 127.0.0.1");
    fds[1] = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fds[1] < 0)
        die("accept");
    tune(fds[1], true);
    if (fcntl(fds[0], F_SETFL, O_NONBLOCK) != 0)
        die("O_NONBLOCK");
    close(listener);
}

/* ---- one run -------------------------------------------------------------------- */

struct side {
    int fd;
    bool sender;
    enum mode mode;
    const struct mig_tls_credentials *credentials;
    uint64_t bytes;
    double cpu_seconds;
    double wall_seconds;
    char cipher[64];
    char error[1024];
    int result;
};

static void *side_main(void *argument)
{
    struct side *s = argument;
    const char *peer = s->sender ? "destination" : "source";
    struct mig_io io = { .fd = s->fd, .stall_ms = 10000, .peer = peer };
    struct mig_tls_session *session = NULL;
    if (s->credentials != NULL) {
        struct mig_tls_options options = { .credentials = s->credentials, .server_name = "localhost",
                                           .priority = s->mode == MODE_X509_AES128 ? PRIORITY_X509_AES128 : NULL };
        if (mig_tls_handshake(&session, &io, &options, s->error, sizeof(s->error)) != 0) {
            s->result = -1;
            return NULL;
        }
        snprintf(s->cipher, sizeof(s->cipher), "%s", mig_tls_cipher_suite(session));
    }
    uint8_t *frame = malloc(FRAME_HEADER + FRAME_PAYLOAD);
    if (frame == NULL)
        die("out of memory");
    for (size_t i = 0; i < FRAME_HEADER + FRAME_PAYLOAD; i++)
        frame[i] = (uint8_t)(i * 2654435761u >> 13);
    double cpu_start = now_seconds(CLOCK_THREAD_CPUTIME_ID), wall_start = now_seconds(CLOCK_MONOTONIC);
    /* Through struct mig_io, as the stream does: io.tls routes to TLS. */
    io.tls = session;
    volatile uint64_t digest = 0;
    int result = 0;
    for (uint64_t done = 0; result == 0 && done < s->bytes; done += FRAME_PAYLOAD) {
        if (s->sender) {
            if (mode_hashes(s->mode))
                digest ^= XXH3_64bits(frame + FRAME_HEADER, FRAME_PAYLOAD);
            struct iovec iov[2] = { { frame, FRAME_HEADER }, { frame + FRAME_HEADER, FRAME_PAYLOAD } };
            result = mig_io_writev(&io, iov, 2, s->error, sizeof(s->error));
        } else {
            result = mig_io_read(&io, frame, FRAME_HEADER, false, s->error, sizeof(s->error));
            if (result == 0)
                result = mig_io_read(&io, frame + FRAME_HEADER, FRAME_PAYLOAD, false, s->error, sizeof(s->error));
            if (result == 0 && mode_hashes(s->mode))
                digest ^= XXH3_64bits(frame + FRAME_HEADER, FRAME_PAYLOAD);
        }
    }
    (void)digest;
    s->cpu_seconds = now_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
    s->wall_seconds = now_seconds(CLOCK_MONOTONIC) - wall_start;
    s->result = result;
    free(frame);
    mig_tls_session_free(session);
    return NULL;
}

struct measurement {
    double bytes_per_second;
    double sender_cpu_per_gib;
    double receiver_cpu_per_gib;
    char cipher[64];
};

static struct measurement run_once(enum transport transport, enum mode mode, uint64_t bytes,
                                   struct mig_tls_credentials *const client[MODE_COUNT],
                                   struct mig_tls_credentials *const server[MODE_COUNT])
{
    int fds[2];
    connect_pair(transport, fds);
    struct side sender = { .fd = fds[0], .sender = true, .mode = mode, .credentials = client[mode], .bytes = bytes };
    struct side receiver = { .fd = fds[1], .sender = false, .mode = mode, .credentials = server[mode],
                             .bytes = bytes };
    pthread_t threads[2];
    if (pthread_create(&threads[0], NULL, side_main, &sender) != 0 ||
        pthread_create(&threads[1], NULL, side_main, &receiver) != 0)
        die("pthread_create");
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);
    close(fds[0]);
    close(fds[1]);
    if (sender.result != 0 || receiver.result != 0) {
        fprintf(stderr, "tls-throughput: %s %s: %s%s\n", transport_name[transport], mode_name[mode], sender.error,
                receiver.error);
        exit(1);
    }
    double gib = (double)bytes / (double)(1ull << 30);
    double wall = receiver.wall_seconds > sender.wall_seconds ? receiver.wall_seconds : sender.wall_seconds;
    struct measurement m = { .bytes_per_second = (double)bytes / wall,
                             .sender_cpu_per_gib = sender.cpu_seconds / gib,
                             .receiver_cpu_per_gib = receiver.cpu_seconds / gib };
    snprintf(m.cipher, sizeof(m.cipher), "%s", sender.cipher[0] != '\0' ? sender.cipher : "none");
    return m;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *values, int count)
{
    qsort(values, (size_t)count, sizeof(double), compare_double);
    return count % 2 ? values[count / 2] : (values[count / 2 - 1] + values[count / 2]) / 2;
}

/* XXH3-64 over 1 MiB frames, as the checksum of every frame costs each side
 * (the sender once, the receiver once). */
static double xxh3_cpu_per_gib(uint64_t bytes)
{
    uint8_t *frame = malloc(FRAME_PAYLOAD);
    if (frame == NULL)
        die("out of memory");
    for (size_t i = 0; i < FRAME_PAYLOAD; i++)
        frame[i] = (uint8_t)(i * 2654435761u >> 13);
    volatile uint64_t sink = 0;
    double start = now_seconds(CLOCK_THREAD_CPUTIME_ID);
    for (uint64_t done = 0; done < bytes; done += FRAME_PAYLOAD)
        sink ^= XXH3_64bits(frame, FRAME_PAYLOAD);
    double seconds = now_seconds(CLOCK_THREAD_CPUTIME_ID) - start;
    (void)sink;
    free(frame);
    return seconds / ((double)bytes / (double)(1ull << 30));
}

static void usage(FILE *out)
{
    fprintf(out, "usage: tls-throughput [--bytes SIZE] [--reps N] [--json]\n"
                 "What the TLS channel costs against the plaintext stream: 1 MiB frames over a Unix\n"
                 "socketpair and TCP over loopback, plaintext, tls-psk, tls-x509, tls-x509-aes128,\n"
                 "plaintext+xxh3 and tls-psk+xxh3; bytes/s, CPU-s per GiB of each side and the ratio to\n"
                 "plaintext, medians of the runs, modes interleaved; and XXH3-64 alone.\n"
                 "  --bytes SIZE   bytes per run, a multiple of 1M (default 1G)\n"
                 "  --reps N       runs per figure, 1 to %d (default 3)\n"
                 "  --json         one JSON object on stdout\n"
                 "  -h, --help     this text\n",
            MAX_REPS);
}

int main(int argc, char **argv)
{
    uint64_t bytes = 1ull << 30;
    int reps = 3;
    bool json = false;
    static const struct option options[] = {
        { "bytes", required_argument, NULL, 'b' }, { "reps", required_argument, NULL, 'r' },
        { "json", no_argument, NULL, 'j' },        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        unsigned value;
        switch (opt) {
        case 'b':
            /* Whole frames: the senders round up to one, the rates divide by --bytes. */
            if (bench_option_size(PROGRAM, "--bytes", optarg, FRAME_PAYLOAD, 1ULL << 40, FRAME_PAYLOAD, &bytes) != 0)
                return 2;
            break;
        case 'r':
            if (bench_option_unsigned(PROGRAM, "--reps", optarg, 1, MAX_REPS, &value) != 0)
                return 2;
            reps = (int)value;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (bench_options_refuse_operands(PROGRAM, argc, argv, optind, usage) != 0)
        return 2;

    char directory[64];
    if (bench_tls_make_credentials(directory, sizeof(directory), PROGRAM) != 0)
        return 1;
    char psk_path[128], error[1024];
    snprintf(psk_path, sizeof(psk_path), "%s/keys.psk", directory);
    struct mig_tls_credentials *client[MODE_COUNT] = { 0 }, *server[MODE_COUNT] = { 0 };
    if (mig_tls_credentials_load_psk(&client[MODE_PSK], MIG_TLS_CLIENT, psk_path, error, sizeof(error)) != 0 ||
        mig_tls_credentials_load_psk(&server[MODE_PSK], MIG_TLS_SERVER, psk_path, error, sizeof(error)) != 0 ||
        mig_tls_credentials_load_x509(&client[MODE_X509], MIG_TLS_CLIENT, directory, error, sizeof(error)) != 0 ||
        mig_tls_credentials_load_x509(&server[MODE_X509], MIG_TLS_SERVER, directory, error, sizeof(error)) != 0)
        die(error);

    /* The variants share the credentials of their kind (freed once). */
    client[MODE_X509_AES128] = client[MODE_X509];
    server[MODE_X509_AES128] = server[MODE_X509];
    client[MODE_PSK_XXH3] = client[MODE_PSK];
    server[MODE_PSK_XXH3] = server[MODE_PSK];
    struct measurement results[TRANSPORT_COUNT][MODE_COUNT];
    double *rate = calloc((size_t)reps, sizeof(double)), *send_cpu = calloc((size_t)reps, sizeof(double)),
           *receive_cpu = calloc((size_t)reps, sizeof(double));
    struct measurement all[TRANSPORT_COUNT][MODE_COUNT][MAX_REPS];
    for (int rep = 0; rep < reps; rep++)
        for (int t = 0; t < TRANSPORT_COUNT; t++)
            for (int m = 0; m < MODE_COUNT; m++)
                all[t][m][rep] = run_once((enum transport)t, (enum mode)m, bytes, client, server);
    for (int t = 0; t < TRANSPORT_COUNT; t++) {
        for (int m = 0; m < MODE_COUNT; m++) {
            for (int rep = 0; rep < reps; rep++) {
                rate[rep] = all[t][m][rep].bytes_per_second;
                send_cpu[rep] = all[t][m][rep].sender_cpu_per_gib;
                receive_cpu[rep] = all[t][m][rep].receiver_cpu_per_gib;
            }
            results[t][m] = all[t][m][0];
            results[t][m].bytes_per_second = median(rate, reps);
            results[t][m].sender_cpu_per_gib = median(send_cpu, reps);
            results[t][m].receiver_cpu_per_gib = median(receive_cpu, reps);
        }
    }
    for (int rep = 0; rep < reps; rep++)
        send_cpu[rep] = xxh3_cpu_per_gib(bytes);
    double xxh3 = median(send_cpu, reps);

    if (json) {
        json_t *root = json_object(), *runs = json_array();
        json_object_set_new(root, "bytes_per_run", json_integer((json_int_t)bytes));
        json_object_set_new(root, "reps", json_integer(reps));
        json_object_set_new(root, "frame_payload_bytes", json_integer(FRAME_PAYLOAD));
        for (int t = 0; t < TRANSPORT_COUNT; t++) {
            for (int m = 0; m < MODE_COUNT; m++) {
                struct measurement *r = &results[t][m];
                json_array_append_new(
                    runs, json_pack("{s:s, s:s, s:s, s:f, s:f, s:f, s:f}", "transport", transport_name[t], "mode",
                                    mode_name[m], "cipher", r->cipher, "bytes_per_second", r->bytes_per_second,
                                    "sender_cpu_s_per_gib", r->sender_cpu_per_gib, "receiver_cpu_s_per_gib",
                                    r->receiver_cpu_per_gib, "ratio_to_plaintext",
                                    r->bytes_per_second / results[t][MODE_PLAIN].bytes_per_second));
            }
        }
        json_object_set_new(root, "runs", runs);
        json_object_set_new(root, "xxh3_cpu_s_per_gib", json_real(xxh3));
        json_t *with_xxh3 = json_object();
        for (int t = 0; t < TRANSPORT_COUNT; t++)
            json_object_set_new(with_xxh3, transport_name[t],
                                json_pack("{s:f, s:f}", "plaintext",
                                          results[t][MODE_PLAIN_XXH3].bytes_per_second /
                                              results[t][MODE_PLAIN].bytes_per_second,
                                          "tls-psk",
                                          results[t][MODE_PSK_XXH3].bytes_per_second /
                                              results[t][MODE_PSK].bytes_per_second));
        /* Throughput with the per-frame XXH3 on both sides / without. */
        json_object_set_new(root, "xxh3_throughput_ratio", with_xxh3);
        char *text = json_dumps(root, JSON_INDENT(2));
        printf("%s\n", text);
        free(text);
        json_decref(root);
    } else {
        printf("TLS channel throughput: %llu MiB per run in 1 MiB frames, median of %d runs\n\n",
               (unsigned long long)(bytes >> 20), reps);
        printf("%-16s %-16s %-24s %10s %8s %14s %14s\n", "transport", "mode", "cipher", "MiB/s", "ratio",
               "send CPU-s/GiB", "recv CPU-s/GiB");
        for (int t = 0; t < TRANSPORT_COUNT; t++) {
            for (int m = 0; m < MODE_COUNT; m++) {
                struct measurement *r = &results[t][m];
                printf("%-16s %-16s %-24s %10.0f %7.2fx %14.3f %14.3f\n", transport_name[t], mode_name[m], r->cipher,
                       r->bytes_per_second / (1 << 20), r->bytes_per_second / results[t][MODE_PLAIN].bytes_per_second,
                       r->sender_cpu_per_gib, r->receiver_cpu_per_gib);
            }
        }
        printf("\nXXH3-64 over 1 MiB frames: %.3f CPU-s/GiB (%.1f GiB/s) on each side\n", xxh3, 1.0 / xxh3);
        for (int t = 0; t < TRANSPORT_COUNT; t++)
            printf("%s: throughput with the per-frame XXH3 on both sides / without: plaintext %.2f, tls-psk %.2f\n",
                   transport_name[t], results[t][MODE_PLAIN_XXH3].bytes_per_second / results[t][MODE_PLAIN].bytes_per_second,
                   results[t][MODE_PSK_XXH3].bytes_per_second / results[t][MODE_PSK].bytes_per_second);
    }
    for (int m = MODE_PSK; m <= MODE_X509; m++) {
        mig_tls_credentials_free(client[m]);
        mig_tls_credentials_free(server[m]);
    }
    bench_tls_remove_credentials(directory);
    free(rate);
    free(send_cpu);
    free(receive_cpu);
    return 0;
}
