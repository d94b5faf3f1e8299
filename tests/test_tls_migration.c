/*
 * TLS wired into the migration (issue 16, "Peers that are allowed in / TCP").
 *
 * Without KVM: the stream through struct mig_io with a TLS session (the one
 * place where plaintext and TLS part) parsed by the real receiver, the
 * non-waiting read the receiver and the ACK wait use, the record deadline
 * against a dribbling peer, the credential rules shared by ringvm
 * --tls-psk/--tls-creds and migration.start, migration.start's refusals,
 * the command line, migration.progress's "tls" field and ringctl's warning.
 *
 * With KVM (nested runner on CI): whole migrations between two VMs of this
 * process over TCP with TLS (PSK and x509, the ledger verifying on the
 * destination), and every refusal of the issue (wrong PSK, expired and
 * untrusted certificates, plaintext against TLS both ways, a man in the
 * middle flipping one byte): each a clear error on both sides, the source
 * keeps running its guest, the destination never runs one (a TLS
 * destination refuses a peer that fails the handshake and keeps waiting).
 *
 * The channel itself (handshakes, file checks, messages) is tested in
 * tests/test_tls.c.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "guest/abi.h"
#include "migration/migration.h"
#include "migration/postcopy_destination.h"
#include "migration/progress.h"
#include "migration/protocol.h"
#include "migration/receiver.h"
#include "migration/tls.h"
#include "migration/transport.h"
#include "tests/harness.h"
#include "tests/migration_destination.h"
#include "tests/migration_stream.h"
#include "tests/tls_fixtures.h"
#include "vmm/options.h"
#include "vmm/vm.h"

#define STALL_MS 5000u

/* ---- a connected TLS pair over a socketpair ----------------------------------- */

/* [0] the source's end (TLS client), [1] the destination's (server). The
 * server's handshake runs on a helper thread, joined before return. */
struct tls_pair {
    char dir[64];
    int fds[2];
    struct mig_tls_credentials *credentials[2];
    struct mig_tls_session *session[2];
};

struct handshake_side {
    struct tls_pair *pair;
    int side;
    int result;
    char error[2048];
};

static void *handshake_main(void *argument)
{
    struct handshake_side *h = argument;
    struct mig_io io = { .fd = h->pair->fds[h->side], .stall_ms = STALL_MS,
                         .peer = h->side == 0 ? "destination" : "source" };
    struct mig_tls_options options = { .credentials = h->pair->credentials[h->side], .server_name = "localhost" };
    h->result = mig_tls_handshake(&h->pair->session[h->side], &io, &options, h->error, sizeof(h->error));
    return NULL;
}

static void tls_pair_open(struct tls_pair *p)
{
    memset(p, 0, sizeof(*p));
    tls_fixture_temp_dir(p->dir, sizeof(p->dir));
    tls_fixture_write_psk(p->dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    char path[128], error[1024];
    snprintf(path, sizeof(path), "%s/keys.psk", p->dir);
    cr_assert_eq(mig_tls_credentials_load_psk(&p->credentials[0], MIG_TLS_CLIENT, path, error, sizeof(error)), 0,
                 "%s", error);
    cr_assert_eq(mig_tls_credentials_load_psk(&p->credentials[1], MIG_TLS_SERVER, path, error, sizeof(error)), 0,
                 "%s", error);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, p->fds), 0);
    struct handshake_side server = { .pair = p, .side = 1 }, client = { .pair = p, .side = 0 };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, handshake_main, &server), 0);
    handshake_main(&client);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(client.result, 0, "%s", client.error);
    cr_assert_eq(server.result, 0, "%s", server.error);
}

/* A plaintext pair: the same fds, no sessions. */
static void plain_pair_open(struct tls_pair *p)
{
    memset(p, 0, sizeof(*p));
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, p->fds), 0);
}

static void tls_pair_close(struct tls_pair *p)
{
    for (int i = 0; i < 2; i++) {
        mig_tls_session_free(p->session[i]);
        mig_tls_credentials_free(p->credentials[i]);
        close(p->fds[i]);
    }
    if (p->dir[0] != '\0')
        tls_fixture_remove_dir(p->dir);
}

static struct mig_io pair_io(struct tls_pair *p, int side, unsigned stall_ms)
{
    return (struct mig_io){ .fd = p->fds[side], .stall_ms = stall_ms, .peer = side == 0 ? "destination" : "source",
                            .tls = p->session[side] };
}

/* ---- the stream through mig_io ------------------------------------------------ */

struct stream_writer {
    struct mig_io io;
    const uint8_t *data;
    size_t length;
    int result;
    char error[512];
};

/* Writes the stream as three iovecs cut at odd places, then ends this
 * side's sending (close_notify under TLS, FIN in plaintext). */
static void *stream_writer_main(void *argument)
{
    struct stream_writer *w = argument;
    size_t first = 7, second = w->length / 2;
    struct iovec iov[3] = { { (void *)w->data, first },
                            { (void *)(w->data + first), second - first },
                            { (void *)(w->data + second), w->length - second } };
    w->result = mig_io_writev(&w->io, iov, 3, w->error, sizeof(w->error));
    mig_io_close_write(&w->io);
    return NULL;
}

/* struct mig_input read_some over mig_io_recv_some, as the destination's. */
static ssize_t io_read_some(void *ctx, void *data, size_t capacity, char *error, size_t error_size)
{
    struct mig_io *io = ctx;
    for (;;) {
        ssize_t got = mig_io_recv_some(io, data, capacity, error, error_size);
        if (got != MIG_IO_AGAIN)
            return got;
        if (mig_io_readable(io, 100) < 0) {
            snprintf(error, error_size, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static void stream_through_mig_io(bool tls)
{
    struct tls_pair p;
    if (tls)
        tls_pair_open(&p);
    else
        plain_pair_open(&p);
    uint8_t *ram = calloc(1, MIGRATION_STREAM_RAM_BYTES);
    cr_assert_not_null(ram);
    for (unsigned page = 10; page < 20; page++)
        memset(ram + page * MIG_PAGE_SIZE, (int)page, MIG_PAGE_SIZE);
    ram[100 * MIG_PAGE_SIZE + 17] = 0x5a;
    struct migration_stream s = { 0 };
    struct mig_hello hello = migration_stream_hello();
    migration_stream_put_hello(&s, &hello);
    uint64_t pages[] = { 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 100 };
    migration_stream_put_pages(&s, ram, pages, sizeof(pages) / sizeof(pages[0]));
    migration_stream_put_tail(&s);

    struct stream_writer writer = { .io = pair_io(&p, 0, STALL_MS), .data = s.data, .length = s.length };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, stream_writer_main, &writer), 0);
    uint8_t *target = migration_stream_guarded_ram(MIGRATION_STREAM_RAM_BYTES);
    struct mig_receiver r;
    cr_assert_eq(mig_receiver_init(&r, target, MIGRATION_STREAM_RAM_BYTES, &hello), 0);
    mig_receiver_set_deadline(&r, STALL_MS, 0);
    struct mig_io reader = pair_io(&p, 1, STALL_MS);
    struct mig_input input = { .read_some = io_read_some, .ctx = &reader };
    int type;
    do {
        type = mig_receiver_next(&r, &input);
        cr_assert_gt(type, 0, "%s", r.error);
    } while (type != MIG_FRAME_END);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(writer.result, 0, "%s", writer.error);
    cr_assert_eq(memcmp(ram, target, MIGRATION_STREAM_RAM_BYTES), 0, "RAM differs after the stream");
    cr_assert_eq(atomic_load(&r.normal_pages), 11);
    cr_assert_eq(atomic_load(&r.zero_pages), 2);
    cr_assert_eq(atomic_load(&r.bytes_received), s.length);
    /* After END: the writer's end of stream, seen as 0 (close_notify under
     * TLS, EOF in plaintext), not as an error. */
    char error[512];
    uint8_t byte;
    cr_assert_eq(io_read_some(&reader, &byte, 1, error, sizeof(error)), 0, "%s", error);
    mig_receiver_destroy(&r);
    migration_stream_guarded_ram_free(target, MIGRATION_STREAM_RAM_BYTES);
    migration_stream_free(&s);
    free(ram);
    tls_pair_close(&p);
}

Test(tls_migration, a_stream_through_mig_io_over_tls_reproduces_ram, .timeout = 60)
{
    stream_through_mig_io(true);
}

Test(tls_migration, the_same_stream_through_mig_io_in_plaintext, .timeout = 60)
{
    stream_through_mig_io(false);
}

/* mig_io_recv_some never waits for a first byte: MIG_IO_AGAIN, then what
 * was sent (exactly), then MIG_IO_AGAIN again; mig_io_readable agrees. */
static void recv_some_does_not_wait(bool tls)
{
    struct tls_pair p;
    if (tls)
        tls_pair_open(&p);
    else
        plain_pair_open(&p);
    struct mig_io source = pair_io(&p, 0, STALL_MS), destination = pair_io(&p, 1, STALL_MS);
    char error[512];
    uint8_t buffer[64];
    cr_assert_eq(mig_io_readable(&destination, 0), 0);
    cr_assert_eq(mig_io_recv_some(&destination, buffer, sizeof(buffer), error, sizeof(error)), MIG_IO_AGAIN);
    cr_assert_eq(mig_io_write(&source, "0123456789", 10, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_io_readable(&destination, 5000), 1);
    cr_assert_eq(mig_io_recv_some(&destination, buffer, sizeof(buffer), error, sizeof(error)), 10, "%s", error);
    cr_assert_eq(memcmp(buffer, "0123456789", 10), 0);
    cr_assert_eq(mig_io_recv_some(&destination, buffer, sizeof(buffer), error, sizeof(error)), MIG_IO_AGAIN);
    /* Less than what is there: the rest stays for the next call. */
    cr_assert_eq(mig_io_write(&source, "abcdef", 6, error, sizeof(error)), 0, "%s", error);
    cr_assert_eq(mig_io_readable(&destination, 5000), 1);
    cr_assert_eq(mig_io_recv_some(&destination, buffer, 4, error, sizeof(error)), 4, "%s", error);
    cr_assert_eq(mig_io_readable(&destination, 0), 1);
    cr_assert_eq(mig_io_recv_some(&destination, buffer + 4, sizeof(buffer) - 4, error, sizeof(error)), 2, "%s",
                 error);
    cr_assert_eq(memcmp(buffer, "abcdef", 6), 0);
    tls_pair_close(&p);
}

Test(tls_migration, recv_some_does_not_wait_for_a_first_byte_under_tls, .timeout = 30)
{
    recv_some_does_not_wait(true);
}

Test(tls_migration, recv_some_does_not_wait_for_a_first_byte_in_plaintext, .timeout = 30)
{
    recv_some_does_not_wait(false);
}

/* Writes a TLS record header announcing 0x4011 bytes, then one byte every
 * 100 ms (pacing a misbehaving peer, not synchronisation) until stop. */
struct dribbler {
    int fd;
    _Atomic bool stop;
    unsigned bytes;
};

static void *dribbler_main(void *argument)
{
    struct dribbler *d = argument;
    static const uint8_t header[5] = { 23, 3, 3, 0x40, 0x11 };
    if (send(d->fd, header, sizeof(header), MSG_NOSIGNAL) != (ssize_t)sizeof(header))
        return NULL;
    while (!atomic_load(&d->stop) && d->bytes < 600) {
        struct timespec pause = { .tv_sec = 0, .tv_nsec = 100000000 };
        nanosleep(&pause, NULL);
        uint8_t byte = (uint8_t)d->bytes;
        if (send(d->fd, &byte, 1, MSG_NOSIGNAL) != 1)
            return NULL;
        d->bytes++;
    }
    return NULL;
}

/* Bug 1 of the issue under TLS: a peer that keeps a record coming one byte
 * at a time (never silent for the stall timeout) must not hold the reader
 * inside the record: the record as a whole gets the stall timeout. */
Test(tls_migration, a_dribbled_record_is_refused_within_the_stall_timeout, .timeout = 60)
{
    struct tls_pair p;
    tls_pair_open(&p);
    struct dribbler d = { .fd = p.fds[0] };
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, dribbler_main, &d), 0);
    struct mig_io destination = pair_io(&p, 1, 500);
    char error[512];
    uint8_t buffer[256];
    cr_assert_eq(mig_io_readable(&destination, 10000), 1);
    cr_assert_eq(mig_io_recv_some(&destination, buffer, sizeof(buffer), error, sizeof(error)), -1);
    atomic_store(&d.stop, true);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_str_eq(error, "receiving from source: a TLS record did not arrive whole within 500 ms (link stalled or "
                            "too slow)");
    cr_assert_lt(d.bytes, 600u, "the reader waited for the whole dribble");
    tls_pair_close(&p);
}

/* ---- the credential rules (ringvm --tls-*, migration.start tls_*) -------------- */

Test(tls_migration, credentials_follow_the_address_and_the_files)
{
    char dir[64], psk[128], error[1024], expected[1024];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    tls_fixture_write_psk(dir, "open.psk", PSK_IDENTITY, PSK_KEY_HEX, 0640);
    tls_fixture_x509_dir(dir, &(struct x509_setup){ 0 });
    snprintf(psk, sizeof(psk), "%s/keys.psk", dir);
    struct mig_address tcp, unix_socket;
    cr_assert_eq(mig_address_parse("tcp:127.0.0.1:4444", &tcp, error, sizeof(error)), 0);
    cr_assert_eq(mig_address_parse("unix:/tmp/x.sock", &unix_socket, error, sizeof(error)), 0);
    struct mig_tls_credentials *c = (struct mig_tls_credentials *)1;

    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_CLIENT, NULL, "", &tcp, error, sizeof(error)), 0);
    cr_assert_null(c, "nothing given is plaintext");

    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_CLIENT, psk, dir, &tcp, error, sizeof(error)), -1);
    cr_assert_null(c);
    snprintf(expected, sizeof(expected),
             "a pre-shared key (%s) and x509 credentials (%s) were both given: choose one", psk, dir);
    cr_assert_str_eq(error, expected);

    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_SERVER, psk, NULL, &unix_socket, error, sizeof(error)), -1);
    cr_assert_str_eq(error, "TLS is for tcp:HOST:PORT; a unix: socket is local, protected by its file mode and peer "
                            "check");

    char missing[128];
    snprintf(missing, sizeof(missing), "%s/none.psk", dir);
    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_CLIENT, missing, NULL, &tcp, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected), "%s: cannot open: No such file or directory", missing);
    cr_assert_str_eq(error, expected);

    char open_psk[128];
    snprintf(open_psk, sizeof(open_psk), "%s/open.psk", dir);
    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_CLIENT, open_psk, NULL, &tcp, error, sizeof(error)), -1);
    snprintf(expected, sizeof(expected),
             "%s: key file is accessible by group or others (mode 0640); refusing it: chmod 600 %s", open_psk,
             open_psk);
    cr_assert_str_eq(error, expected);

    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_CLIENT, psk, NULL, &tcp, error, sizeof(error)), 0, "%s",
                 error);
    cr_assert_not_null(c);
    cr_assert_eq(mig_tls_credentials_kind(c), MIG_TLS_PSK);
    cr_assert_eq(mig_tls_credentials_role(c), MIG_TLS_CLIENT);
    mig_tls_credentials_free(c);
    cr_assert_eq(mig_tls_credentials_load_for(&c, MIG_TLS_SERVER, "", dir, &tcp, error, sizeof(error)), 0, "%s",
                 error);
    cr_assert_eq(mig_tls_credentials_kind(c), MIG_TLS_X509);
    cr_assert_eq(mig_tls_credentials_role(c), MIG_TLS_SERVER);
    mig_tls_credentials_free(c);
    tls_fixture_remove_dir(dir);
}

/* migration.start refuses bad TLS arguments before it looks at the VM
 * (no KVM: a VM that is never started; the manager only keys on it). */
Test(tls_migration, migration_start_refuses_bad_tls_arguments)
{
    char dir[64], psk[128], open_psk[128], expected[1400];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    tls_fixture_write_psk(dir, "open.psk", PSK_IDENTITY, PSK_KEY_HEX, 0604);
    snprintf(psk, sizeof(psk), "%s/keys.psk", dir);
    snprintf(open_psk, sizeof(open_psk), "%s/open.psk", dir);
    struct vm *vm = calloc(1, sizeof(*vm));
    cr_assert_not_null(vm);
    struct {
        const char *dest, *psk_file, *creds_dir;
        const char *message;        /* after "TLS: "; %s = the file */
    } cases[] = {
        { "tcp:127.0.0.1:4444", psk, dir, NULL },
        { "unix:/tmp/ringvm-tls-none.sock", psk, "", "TLS is for tcp:HOST:PORT; a unix: socket is local, protected by "
                                                       "its file mode and peer check" },
        { "tcp:127.0.0.1:4444", open_psk, "", "%s: key file is accessible by group or others (mode 0604); refusing "
                                              "it: chmod 600 %s" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct mig_params params;
        mig_params_defaults(&params);
        snprintf(params.dest, sizeof(params.dest), "%s", cases[i].dest);
        snprintf(params.tls_psk_file, sizeof(params.tls_psk_file), "%s", cases[i].psk_file);
        snprintf(params.tls_creds_dir, sizeof(params.tls_creds_dir), "%s", cases[i].creds_dir);
        uint64_t id = 0;
        const char *code = NULL;
        char message[1400];
        cr_assert_eq(migration_start(vm, NULL, &params, &id, &code, message, sizeof(message)), -1, "case %zu", i);
        cr_assert_str_eq(code, "invalid-argument", "case %zu", i);
        if (cases[i].message == NULL)
            snprintf(expected, sizeof(expected),
                     "TLS: a pre-shared key (%s) and x509 credentials (%s) were both given: choose one", psk, dir);
        else {
            char tail[1200];
            snprintf(tail, sizeof(tail), cases[i].message, cases[i].psk_file, cases[i].psk_file);
            snprintf(expected, sizeof(expected), "TLS: %s", tail);
        }
        cr_assert_str_eq(message, expected, "case %zu", i);
        cr_assert(!migration_active(vm));
    }
    migration_release(vm);
    free(vm);
    tls_fixture_remove_dir(dir);
}

/* ---- ringvm's flags, progress, ringctl ---------------------------------------- */

static enum options_result parse(char **argv, struct ringvm_options *options, char *error, size_t error_size)
{
    int argc = 0;
    while (argv[argc] != NULL)
        argc++;
    return options_parse(argc, argv, options, error, error_size);
}

Test(tls_migration, ringvm_tls_flags_need_a_tcp_destination_and_one_kind)
{
    struct ringvm_options options;
    char error[512];
    char *psk[] = { "ringvm", "--incoming", "tcp:0.0.0.0:4444", "--tls-psk", "/etc/ringvm/keys.psk", NULL };
    cr_assert_eq(parse(psk, &options, error, sizeof(error)), OPTIONS_OK, "%s", error);
    cr_assert_str_eq(options.tls_psk, "/etc/ringvm/keys.psk");
    cr_assert_null(options.tls_creds);
    char *creds[] = { "ringvm", "--tls-creds", "/etc/pki/ringvm", "--incoming", "tcp:[::1]:4444", NULL };
    cr_assert_eq(parse(creds, &options, error, sizeof(error)), OPTIONS_OK, "%s", error);
    cr_assert_str_eq(options.tls_creds, "/etc/pki/ringvm");
    cr_assert_null(options.tls_psk);

    struct {
        char *argv[8];
        const char *error;
    } refused[] = {
        { { "ringvm", "--incoming", "tcp:h:1", "--tls-psk", "a", "--tls-creds", "b", NULL },
          "--tls-psk and --tls-creds: choose one (a pre-shared key or x509)" },
        { { "ringvm", "--tls-psk", "a", NULL },
          "--tls-psk applies to a destination: it needs --incoming tcp:HOST:PORT (a source takes it on ringctl "
          "migrate)" },
        { { "ringvm", "--incoming", "unix:/tmp/m.sock", "--tls-creds", "d", NULL },
          "--tls-creds needs --incoming tcp:HOST:PORT; a unix: socket is local, protected by its file mode and peer "
          "check" },
        { { "ringvm", "--incoming", "tcp:h:1", "--tls-psk", "", NULL }, "--tls-psk: expected a file path" },
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        cr_assert_eq(parse(refused[i].argv, &options, error, sizeof(error)), OPTIONS_ERROR, "case %zu", i);
        cr_assert_str_eq(error, refused[i].error, "case %zu", i);
    }
}

/* The key files are checked before anything starts (no VM, no KVM, no
 * listening socket): a usage error, exit 2, naming the file. */
Test(tls_migration, ringvm_refuses_unusable_key_files_at_start, .timeout = 30)
{
    char dir[64], missing[128], open_psk[128], expected[512];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "open.psk", PSK_IDENTITY, PSK_KEY_HEX, 0644);
    snprintf(missing, sizeof(missing), "%s/none.psk", dir);
    snprintf(open_psk, sizeof(open_psk), "%s/open.psk", dir);
    struct harness_process process;
    char *absent[] = { (char *)harness_program("ringvm"), "--incoming", "tcp:127.0.0.1:1", "--tls-psk", missing,
                       NULL };
    harness_spawn(&process, absent);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    snprintf(expected, sizeof(expected), "ringvm: --tls-psk: %s: cannot open: No such file or directory\n", missing);
    cr_assert_str_eq(process.err, expected);
    harness_process_free(&process);

    char *readable[] = { (char *)harness_program("ringvm"), "--incoming", "tcp:127.0.0.1:1", "--tls-psk", open_psk,
                         NULL };
    harness_spawn(&process, readable);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    snprintf(expected, sizeof(expected),
             "ringvm: --tls-psk: %s: key file is accessible by group or others (mode 0644); refusing it: chmod 600 "
             "%s\n",
             open_psk, open_psk);
    cr_assert_str_eq(process.err, expected);
    harness_process_free(&process);

    char *no_ca[] = { (char *)harness_program("ringvm"), "--incoming", "tcp:127.0.0.1:1", "--tls-creds", dir, NULL };
    harness_spawn(&process, no_ca);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 2, "stderr: %s", process.err);
    snprintf(expected, sizeof(expected), "ringvm: --tls-creds: %s/server-key.pem: cannot open: No such file or "
             "directory\n", dir);
    cr_assert_str_eq(process.err, expected);
    harness_process_free(&process);
    tls_fixture_remove_dir(dir);
}

Test(tls_migration, progress_names_the_tls_session_or_null)
{
    struct mig_progress *p = calloc(1, sizeof(*p));
    cr_assert_not_null(p);
    json_t *plain = mig_progress_to_json(p);
    cr_assert_not_null(plain);
    cr_assert(json_is_null(json_object_get(plain, "tls")), "plaintext: \"tls\" must be null");
    json_decref(plain);
    struct mig_tls_info info = { "TLS1.3", "AES-256-GCM", "x509", "TLS_AES_256_GCM_SHA384" };
    p->tls = info;
    json_t *secure = mig_progress_to_json(p);
    char *text = json_dumps(json_object_get(secure, "tls"), JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert_str_eq(text, "{\"auth\":\"x509\",\"cipher\":\"AES-256-GCM\",\"suite\":\"TLS_AES_256_GCM_SHA384\","
                           "\"version\":\"TLS1.3\"}");
    free(text);
    json_decref(secure);
    free(p);
}

/* The warning comes before ringctl connects, so no VMM is needed: the
 * socket does not exist and ringctl then fails to connect (exit 3). */
Test(tls_migration, ringctl_warns_once_about_plaintext_tcp, .timeout = 30)
{
    static const char warning[] = "ringctl: warning: migrating over plaintext TCP: guest memory crosses the network "
                                  "unencrypted and unauthenticated (use --tls-psk FILE or --tls-creds DIR)\n";
    char socket_path[128];
    snprintf(socket_path, sizeof(socket_path), "/tmp/ringvm-tls-no-api-%d.sock", getpid());
    struct harness_process process;
    char *plain[] = { (char *)harness_program("ringctl"), "-s", socket_path, "migrate", "tcp:127.0.0.1:4444", NULL };
    harness_spawn(&process, plain);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 3);
    cr_assert(strncmp(process.err, warning, strlen(warning)) == 0, "stderr: %s", process.err);
    cr_assert_null(strstr(process.err + strlen(warning), "warning"), "stderr: %s", process.err);
    harness_process_free(&process);

    char *secure[] = { (char *)harness_program("ringctl"), "-s", socket_path, "migrate", "tcp:127.0.0.1:4444",
                       "--tls-psk", "keys.psk", NULL };
    harness_spawn(&process, secure);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 3);
    cr_assert_null(strstr(process.err, "warning"), "stderr: %s", process.err);
    harness_process_free(&process);

    char *local[] = { (char *)harness_program("ringctl"), "-s", socket_path, "migrate", "unix:/tmp/x.sock", NULL };
    harness_spawn(&process, local);
    cr_assert_eq(harness_process_wait_exit(&process, 10000), 3);
    cr_assert_null(strstr(process.err, "warning"), "stderr: %s", process.err);
    harness_process_free(&process);
}

/* ---- whole migrations (KVM) ----------------------------------------------------- */

struct advance {
    struct vm *vm;
    unsigned vcpus;
    uint64_t start[RINGVM_MAX_VCPUS];
};

static bool all_vcpus_advanced(void *argument)
{
    struct advance *a = argument;
    for (unsigned i = 0; i < a->vcpus; i++)
        if (harness_pages_written(a->vm, i) < a->start[i] + 2000)
            return false;
    return true;
}

static void assert_guest_runs(struct vm *vm, unsigned vcpus, const char *where)
{
    struct advance a = { .vm = vm, .vcpus = vcpus };
    for (unsigned i = 0; i < vcpus; i++)
        a.start[i] = harness_pages_written(vm, i);
    cr_assert(harness_wait_until(all_vcpus_advanced, &a, 20000), "the guest does not run on the %s", where);
}

enum credentials_kind { CREDENTIALS_NONE, CREDENTIALS_PSK, CREDENTIALS_OTHER_PSK, CREDENTIALS_X509 };

static void set_source_tls(struct mig_params *params, const char *dir, enum credentials_kind kind)
{
    if (kind == CREDENTIALS_PSK || kind == CREDENTIALS_OTHER_PSK)
        snprintf(params->tls_psk_file, sizeof(params->tls_psk_file), "%s/%s", dir,
                 kind == CREDENTIALS_PSK ? "keys.psk" : "other.psk");
    else if (kind == CREDENTIALS_X509)
        snprintf(params->tls_creds_dir, sizeof(params->tls_creds_dir), "%s", dir);
}

static void start_destination(struct test_destination *dest, const char *dir, enum credentials_kind kind,
                              unsigned vcpus)
{
    char psk[128];
    snprintf(psk, sizeof(psk), "%s/keys.psk", dir);
    if (kind == CREDENTIALS_NONE)
        test_destination_start(dest, "256M", vcpus, "idle", true);
    else
        test_destination_start_tls(dest, "256M", vcpus, "idle", kind == CREDENTIALS_PSK ? psk : NULL,
                                   kind == CREDENTIALS_X509 ? dir : NULL);
}

/* The ledger migrates over TLS and verifies on the destination; both
 * sides name the session in migration.progress. */
static void ledger_over_tls(enum credentials_kind kind, const char *cipher, const char *auth, enum mig_mode mode)
{
    harness_require_kvm();
    char dir[64];
    tls_fixture_temp_dir(dir, sizeof(dir));
    tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
    tls_fixture_x509_dir(dir, &(struct x509_setup){ 0 });
    struct harness_vm source;
    /* A slow ledger and no throttling: under the nested runner TLS runs on
     * TCG's emulated AES at a few MiB/s, and this test is about the guest
     * arriving intact over TLS, not about convergence. */
    /* (Post-copy moves the guest after the handshake whatever its rate:
     * the full-speed ledger over 32 MiB, so that the background stream,
     * capped below, cannot have delivered every page the guest touches
     * before it runs on the destination: its faults must go over the
     * urgent channel. Once, with 8 MiB and no cap, none did.) */
    harness_vm_start(&source, "256M", 2, mode == MIG_MODE_POSTCOPY ? "ledger,wss=32M,verify=1"
                                                                   : "ledger,wss=8M,verify=1,rate=200", "ring");
    cr_assert(console_wait_for(&source.console, "LEDGER OK", 1, 20000), "no LEDGER OK on the source:\n%s",
              console_snapshot(&source.console));
    struct test_destination dest;
    start_destination(&dest, dir, kind, 2);
    struct mig_params params;
    mig_params_defaults(&params);
    /* x509: the destination's certificate is for "localhost". */
    snprintf(params.dest, sizeof(params.dest), "%s", dest.address);
    snprintf(params.tls_server_name, sizeof(params.tls_server_name), "localhost");
    set_source_tls(&params, dir, kind);
    params.verify_digest = true;
    params.converge = MIG_CONVERGE_NONE;
    params.downtime_ms = 60000;     /* switch over after the first pass */
    params.timeout_s = 240;
    params.keep_alive = true;
    params.mode = mode;
    /* The 32 MiB working set takes >= 2 s to stream, so the vCPUs, however
     * late a busy host runs them, touch pages still missing: requests on
     * the urgent channel. At 128 MiB/s (250 ms) the stream, which now
     * sends each page once and leaves never-written pages as holes, once
     * had every page there before the vCPUs ran (make test, loaded). */
    if (mode == MIG_MODE_POSTCOPY)
        params.max_bandwidth_mibs = 16;
    uint64_t id = 0;
    const char *code = NULL;
    char message[1400];
    cr_assert_eq(migration_start(source.vm, NULL, &params, &id, &code, message, sizeof(message)), 0, "%s: %s", code,
                 message);
    cr_assert(migration_wait_idle(source.vm, 240000), "the migration did not end");
    struct mig_progress *p = malloc(sizeof(*p)), *q = malloc(sizeof(*q));
    cr_assert(migration_progress(source.vm, p));
    cr_assert_eq(test_destination_join(&dest), 0, "the destination failed (see stderr)");
    cr_assert_eq(p->state, MIG_STATE_COMPLETED, "%s: %s", p->error_code, p->error_message);
    cr_assert_str_eq(p->digest_source, p->digest_destination);
    cr_assert(migration_progress(dest.harness.vm, q));
    if (mode == MIG_MODE_POSTCOPY) {
        /* Both connections under TLS: the urgent channel served pages too. */
        cr_assert(p->postcopy.active);
        cr_assert_eq(q->postcopy.pages_received, q->postcopy.pages_total);
        cr_assert_gt(p->postcopy.requests, 0, "no page went over the urgent channel");
    }
    for (int side = 0; side < 2; side++) {
        const struct mig_tls_info *info = side == 0 ? &p->tls : &q->tls;
        cr_assert_str_eq(info->version, "TLS1.3", "side %d", side);
        cr_assert_str_eq(info->cipher, cipher, "side %d", side);
        cr_assert_str_eq(info->auth, auth, "side %d", side);
    }
    cr_assert_eq(vm_get_state(source.vm), VM_STATE_MIGRATED);
    struct vm *dvm = dest.harness.vm;
    cr_assert_eq(vm_get_state(dvm), VM_STATE_RUNNING);
    assert_guest_runs(dvm, 2, "destination");
    /* Post-copy: one whole verification pass on the destination reads
     * every page the switch-over left behind (the slow ledger's passes
     * take ~5 s each; pre-copy keeps its second one). */
    cr_assert(console_wait_for(&dest.harness.console, "LEDGER OK", mode == MIG_MODE_POSTCOPY ? 1 : 2, 20000),
              "the ledger does not verify on the destination:\n%s", console_snapshot(&dest.harness.console));
    cr_assert_eq(console_count(&dest.harness.console, "MISMATCH"), 0, "%s", console_snapshot(&dest.harness.console));
    free(p);
    free(q);
    test_destination_stop(&dest);
    test_migration_source_stop(&source);
    tls_fixture_remove_dir(dir);
}

Test(tls_migration, ledger_over_tls_with_a_pre_shared_key, .timeout = 300)
{
    ledger_over_tls(CREDENTIALS_PSK, "AES-128-GCM", "psk", MIG_MODE_PRECOPY);
}

/* Post-copy under TLS: the urgent channel is a second TLS session. */
Test(tls_migration, ledger_postcopy_over_tls_with_a_pre_shared_key, .timeout = 300)
{
    char why[400];
    if (!postcopy_destination_available(why, sizeof(why)))
        harness_skip("%s", why);
    ledger_over_tls(CREDENTIALS_PSK, "AES-128-GCM", "psk", MIG_MODE_POSTCOPY);
}

Test(tls_migration, ledger_over_tls_with_x509_certificates, .timeout = 300)
{
    ledger_over_tls(CREDENTIALS_X509, "AES-256-GCM", "x509", MIG_MODE_PRECOPY);
}

/* A relay between the source and the destination (a man in the middle).
 * Ownership: the test thread owns it; the accept thread writes relay.fds. */
struct middle {
    int listen_fd;
    char address[64];           /* tcp:127.0.0.1:PORT the source connects to */
    struct mig_address destination;
    struct tls_fixture_relay relay;
    pthread_t thread, relay_thread;
    bool relay_started;
    _Atomic bool stop;
};

static void *middle_main(void *argument)
{
    struct middle *m = argument;
    char error[256];
    int client = mig_accept(m->listen_fd, &m->stop, error, sizeof(error));
    if (client < 0)
        return NULL;
    int server = mig_connect(&m->destination, 5000, &m->stop, error, sizeof(error));
    if (server < 0) {
        close(client);
        return NULL;
    }
    m->relay.client_fd = client;
    m->relay.server_fd = server;
    tls_fixture_relay_main(&m->relay);
    close(client);
    close(server);
    return NULL;
}

static void middle_start(struct middle *m, const char *destination)
{
    memset(m, 0, sizeof(*m));
    char error[256];
    cr_assert_eq(mig_address_parse(destination, &m->destination, error, sizeof(error)), 0, "%s", error);
    m->listen_fd = test_listen_localhost_tcp(m->address, sizeof(m->address));
    /* Past the handshake's records: flip a byte in the 40th record of
     * application data the source sends (guest RAM by then). */
    atomic_store(&m->relay.armed, true);
    m->relay.skip_records = 40;
    cr_assert_eq(pthread_create(&m->thread, NULL, middle_main, m), 0);
}

static void middle_stop(struct middle *m)
{
    atomic_store(&m->stop, true);
    atomic_store(&m->relay.stop, true);
    cr_assert_eq(pthread_join(m->thread, NULL), 0);
    close(m->listen_fd);
}

struct refusal {
    const char *name;
    enum credentials_kind destination, source;
    struct x509_setup x509;
    bool middle;
    /* A TLS destination refuses a peer that fails the handshake and keeps
     * waiting for its source (error "peer-refused", state setup). */
    bool destination_waits;
    const char *source_code;
    const char *source_message;         /* prefix; %s = the credentials directory */
    const char *destination_message;    /* anywhere in it; %s = the credentials directory */
};

static const struct refusal refusals[] = {
    { "wrong pre-shared key", CREDENTIALS_PSK, CREDENTIALS_OTHER_PSK, { 0 }, false, true, "tls",
      "TLS handshake with the destination: the destination refused it with the alert \"Illegal parameter\" (is "
      "%s/other.psk the same keys.psk file on both hosts?)",
      "TLS handshake with the source: the source's pre-shared key for identity \"" PSK_IDENTITY "\" is not the one "
      "in %s/keys.psk" },
    { "expired destination certificate", CREDENTIALS_X509, CREDENTIALS_X509, { .server_expired = true }, false, true,
      "tls",
      "TLS handshake with the destination: the destination's certificate is refused: The certificate is NOT "
      "trusted. The certificate chain uses expired certificate. (checked against %s/ca-cert.pem)",
      "TLS handshake with the source: the source refused it with the alert \"Certificate is bad\"" },
    { "source certificate from an untrusted CA", CREDENTIALS_X509, CREDENTIALS_X509,
      { .client_from_other_ca = true }, false, true, "tls",
      "TLS handshake with the destination: the destination refused it with the alert",
      "TLS handshake with the source: the source's certificate is refused: The certificate is NOT trusted. The "
      "certificate issuer is unknown." },
    { "plaintext source, TLS destination", CREDENTIALS_PSK, CREDENTIALS_NONE, { 0 }, false, true, "config-mismatch",
      "destination refused: this destination requires TLS: start the migration with --tls-psk FILE or --tls-creds "
      "DIR",
      "TLS handshake with the source: the source speaks plaintext (a ringvm frame of type 1 arrived instead of a "
      "TLS ClientHello)" },
    { "TLS source, plaintext destination", CREDENTIALS_NONE, CREDENTIALS_PSK, { 0 }, false, false, "tls",
      "TLS handshake with the destination: the destination speaks plaintext, not TLS; it answered with ERROR code "
      "1: \"frame 0: the source speaks TLS",
      "the source speaks TLS (a TLS ClientHello arrived instead of the ringvm hello): start this destination with "
      "--tls-psk FILE or --tls-creds DIR, or migrate without TLS" },
    { "a man in the middle flips one byte", CREDENTIALS_PSK, CREDENTIALS_PSK, { 0 }, true, false, NULL, NULL,
      "receiving from source: a TLS record failed authentication (bytes changed on the way: a faulty link or an "
      "attacker); nothing of it was used" },
};

/* text holds format (with dir for %s) from its start, or, when anywhere
 * is true, somewhere in it (the receiver's "frame N: " comes first). */
/* A TLS destination's progress after refusing a peer (it keeps waiting). */
static bool destination_refused_a_peer(void *argument)
{
    struct mig_progress *p = malloc(sizeof(*p));
    bool refused = p != NULL && migration_progress(argument, p) && strcmp(p->error_code, "peer-refused") == 0 &&
                   strcmp(p->phase, "listening") == 0;
    free(p);
    return refused;
}

static void assert_message(const char *text, const char *format, const char *dir, bool anywhere, const char *what)
{
    char expected[1024];
    snprintf(expected, sizeof(expected), format, dir);
    bool found = anywhere ? strstr(text, expected) != NULL : strncmp(text, expected, strlen(expected)) == 0;
    cr_assert(found, "%s:\n  got      %s\n  expected %s%s...", what, text, anywhere ? "..." : "", expected);
}

Test(tls_migration, every_refusal_is_clear_the_source_runs_on_and_the_destination_never_runs, .timeout = 300)
{
    harness_require_kvm();
    struct harness_vm source;
    harness_vm_start(&source, "256M", 1, "dirtier,wss=16M,rate=20000", "ring");
    cr_assert(harness_wait_phase(source.vm, 0, RINGVM_PHASE_RING3, 20000));
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        const struct refusal *c = &refusals[i];
        cr_log_info("case: %s", c->name);
        char dir[64];
        tls_fixture_temp_dir(dir, sizeof(dir));
        tls_fixture_write_psk(dir, "keys.psk", PSK_IDENTITY, PSK_KEY_HEX, 0600);
        tls_fixture_write_psk(dir, "other.psk", PSK_IDENTITY, PSK_OTHER_HEX, 0600);
        tls_fixture_x509_dir(dir, &c->x509);
        struct test_destination dest;
        start_destination(&dest, dir, c->destination, 1);
        struct middle middle;
        if (c->middle)
            middle_start(&middle, dest.address);
        struct mig_params params;
        mig_params_defaults(&params);
        snprintf(params.dest, sizeof(params.dest), "%s", c->middle ? middle.address : dest.address);
        snprintf(params.tls_server_name, sizeof(params.tls_server_name), "localhost");
        set_source_tls(&params, dir, c->source);
        params.timeout_s = 60;
        params.max_bandwidth_mibs = 64;     /* iterations: the flip lands mid-stream */
        uint64_t id = 0;
        const char *code = NULL;
        char message[1400];
        cr_assert_eq(migration_start(source.vm, NULL, &params, &id, &code, message, sizeof(message)), 0,
                     "%s: %s: %s", c->name, code, message);
        cr_assert(migration_wait_idle(source.vm, 60000), "%s: the migration did not end", c->name);
        struct mig_progress *p = malloc(sizeof(*p)), *q = malloc(sizeof(*q));
        cr_assert(migration_progress(source.vm, p));
        if (c->destination_waits)
            cr_assert(harness_wait_until(destination_refused_a_peer, dest.harness.vm, 10000),
                      "%s: the destination did not report the refused peer", c->name);
        else
            cr_assert_eq(test_destination_join(&dest), -1, "%s: the destination did not fail", c->name);
        cr_assert_eq(p->state, MIG_STATE_FAILED, "%s: %s", c->name, mig_state_name(p->state));
        if (c->source_code != NULL) {
            cr_assert_str_eq(p->error_code, c->source_code, "%s: %s", c->name, p->error_message);
            assert_message(p->error_message, c->source_message, dir, false, c->name);
        }
        cr_assert(migration_progress(dest.harness.vm, q));
        if (c->destination_waits) {
            cr_assert_eq(q->state, MIG_STATE_SETUP, "%s", c->name);
            cr_assert_str_eq(q->phase, "listening", "%s", c->name);
            cr_assert(migration_active(dest.harness.vm), "%s: the destination stopped waiting", c->name);
        } else {
            cr_assert_eq(q->state, MIG_STATE_FAILED, "%s", c->name);
        }
        assert_message(q->error_message, c->destination_message, dir, true, c->name);
        /* The destination never ran a guest; the source runs its own. */
        cr_assert_eq(vm_get_state(dest.harness.vm), VM_STATE_PAUSED, "%s", c->name);
        cr_assert(atomic_load(&dest.harness.vm->awaiting_migration), "%s", c->name);
        cr_assert_eq(vm_get_state(source.vm), VM_STATE_RUNNING, "%s", c->name);
        assert_guest_runs(source.vm, 1, "source");
        if (c->middle) {
            middle_stop(&middle);
            cr_assert(middle.relay.flipped, "the relay flipped nothing");
        }
        free(p);
        free(q);
        test_destination_stop(&dest);
        tls_fixture_remove_dir(dir);
    }
    test_migration_source_stop(&source);
}
