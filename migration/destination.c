/*
 * The destination of a migration (migration_incoming_run): listen, receive
 * the stream through the receiver (migration/receiver.h), populate RAM ahead
 * of it, restore the guest and answer END with the ACK.
 */
#include "migration/destination_internal.h"
#include "migration/machine_state_vm.h"
#include "migration/populate.h"
#include "migration/postcopy_destination.h"
#include "migration/postcopy_priority.h"
#include "migration/stream_window.h"

/* ---- the destination --------------------------------------------------------- */

void incoming_publish(struct incoming *in)
{
    uint64_t now = mig_mono_ns();
    in->progress.elapsed_ms = (now - in->started_mono) / 1000000u;
    in->progress.iteration = atomic_load_explicit(&in->receiver.iteration, memory_order_relaxed);
    in->progress.memory.transferred = atomic_load_explicit(&in->receiver.bytes_received, memory_order_relaxed);
    in->progress.memory.zero_pages = atomic_load_explicit(&in->receiver.zero_pages, memory_order_relaxed);
    in->progress.memory.normal_pages = atomic_load_explicit(&in->receiver.normal_pages, memory_order_relaxed);
    if (in->progress.elapsed_ms > 0)
        in->progress.bandwidth_mibs = (double)in->progress.memory.transferred / (1024.0 * 1024.0) /
                                      ((double)in->progress.elapsed_ms / 1000.0);
    mig_progress_sample_throughput(&in->progress, &in->throughput, now);
    if (in->postcopy != NULL) {
        pid_t tids[MIG_MAX_VCPUS];
        unsigned count = in->vm->config.vcpu_count < MIG_MAX_VCPUS ? in->vm->config.vcpu_count : MIG_MAX_VCPUS;
        for (unsigned i = 0; i < count; i++)
            tids[i] = atomic_load_explicit(&in->vm->vcpus[i].tid, memory_order_relaxed);
        postcopy_incoming_fill_progress(in->postcopy, &in->progress, tids, count);
        incoming_guest_rate(in, now);
        stream_window_update(&in->stream_window, in->fd, now, in->progress.memory.transferred);
        in->progress.postcopy.stream_window = in->stream_window.clamp;
    }
    mig_progress_publish(&in->m->board, &in->progress);
    in->last_publish = now;
}

void incoming_phase(struct incoming *in, enum mig_state state, const char *phase)
{
    enum mig_state old = in->progress.state;
    in->progress.state = state;
    snprintf(in->progress.phase, sizeof(in->progress.phase), "%s", phase);
    incoming_publish(in);
    if (old != state)
        mig_publish_state_event(in->server, in->progress.id, "incoming", state, phase);
}

/*
 * Test-only fault injection (tests/test_faults.c, docs/reliability.md); inert
 * unless RINGVM_FAULT_INJECT is set. RINGVM_FAULT_INJECT=POINT stops the
 * destination once, when it reaches POINT:
 *   setup          connection accepted, HELLO not read yet
 *   iteration0     the marker of iteration 0 received
 *   iteration1     a marker of an iteration >= 1 received (pre-copy, or the
 *                  final one when the source converged after iteration 0)
 *   stop-and-copy  the first vCPU state received (the source has paused)
 *   end            END received (the last byte), before restore and ACK
 *   discard-sync   a hybrid's POSTCOPY_DISCARD_SYNC received (the early
 *                  discard done here), before its answer: the source
 *                  waits for it with the guest still running there
 * It prints "ringvm: fault-inject: stopped at POINT" on stderr, then reads
 * nothing until the file named by RINGVM_FAULT_RELEASE exists (without it:
 * until killed or shut down), so a test can kill it or cut its link there.
 */
static bool fault_point(struct vm *vm, const char *point)
{
    static bool fired;
    const char *wanted = getenv("RINGVM_FAULT_INJECT");
    if (wanted == NULL || fired || strcmp(wanted, point) != 0)
        return false;
    fired = true;
    fprintf(stderr, "ringvm: fault-inject: stopped at %s\n", point);
    fflush(stderr);
    const char *release = getenv("RINGVM_FAULT_RELEASE");
    while (!atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire) &&
           (release == NULL || access(release, F_OK) != 0))
        poll(NULL, 0, 10);
    fprintf(stderr, "ringvm: fault-inject: released at %s\n", point);
    return true;
}

/* The receiver's input (struct mig_input read_some): what the socket has,
 * at least one byte, at most capacity; 0 when the source closed the
 * connection. Waits in 50 ms polls (publishing progress meanwhile), giving
 * up on shutdown or when nothing arrived for the stall timeout. When data
 * keeps arriving it never waits: the receiver itself checks the shutdown
 * flag before every read and the frame deadline after every read. */
static ssize_t incoming_read_some(void *ctx, void *data, size_t capacity, char *error, size_t error_size)
{
    struct incoming *in = ctx;
    uint64_t started = mig_mono_ns();
    for (;;) {
        ssize_t got = mig_io_recv_some(&in->io, data, capacity, error, error_size);
        bool first = in->bytes_read == 0;
        if (got > 0)
            in->bytes_read += (uint64_t)got;
        if (got > 0 && first && in->tls == NULL && mig_tls_is_client_hello(data, (size_t)got)) {
            in->source_speaks_tls = true;
            snprintf(error, error_size,
                     "the source speaks TLS (a TLS ClientHello arrived instead of the ringvm hello): start this "
                     "destination with --tls-psk FILE or --tls-creds DIR, or migrate without TLS");
            return -1;
        }
        if (got != MIG_IO_AGAIN) {
            if (got > 0 && mig_mono_ns() - in->last_publish >= PUBLISH_INTERVAL_NS)
                incoming_publish(in);
            return got;
        }
        if (atomic_load_explicit(&in->vm->shutdown_requested, memory_order_acquire)) {
            snprintf(error, error_size, "the destination VM is shutting down");
            return -1;
        }
        uint64_t now = mig_mono_ns();
        if (now - started >= (uint64_t)in->stall_ms * 1000000u) {
            snprintf(error, error_size, "nothing received from the source for %u ms (link stalled)", in->stall_ms);
            return -1;
        }
        if (now - in->last_publish >= PUBLISH_INTERVAL_NS)
            incoming_publish(in);
        if (mig_io_readable(&in->io, 50) < 0) {
            snprintf(error, error_size, "poll(source): %s", strerror(errno));
            return -1;
        }
    }
}

int incoming_send(struct incoming *in, uint32_t type, const void *payload, size_t length)
{
    uint8_t frame[MIG_HEADER_SIZE + 4 + MIG_ERROR_MAX_MESSAGE + MIG_HELLO_SIZE];
    size_t total = mig_frame_encode(frame, type, in->seq++, payload, length);
    struct mig_io io = in->io;
    io.stall_ms = 2000;
    io.cancel = NULL;
    char error[256];
    if (mig_io_write(&io, frame, total, error, sizeof(error)) != 0) {
        fprintf(stderr, "ringvm: migration: %s\n", error);
        return -1;
    }
    return 0;
}

static void local_hello(struct vm *vm, bool postcopy, struct mig_hello *hello)
{
    memset(hello, 0, sizeof(*hello));
    hello->version = MIG_PROTOCOL_VERSION;
    hello->page_size = MIG_PAGE_SIZE;
    hello->memory_bytes = vm->memory.size;
    hello->vcpu_count = vm->config.vcpu_count;
    hello->slot_count = vm->memory.slot_count;
    for (unsigned i = 0; i < vm->memory.slot_count && i < MIG_MAX_SLOTS; i++) {
        hello->slots[i].gpa = vm->memory.slots[i].gpa;
        hello->slots[i].size = vm->memory.slots[i].size;
        hello->slots[i].ram_offset = vm->memory.slots[i].ram_offset;
    }
    hello->state_format = MIG_STATE_FORMAT;
    hello->features = MIG_FEATURE_ZERO_PAGES | MIG_FEATURE_DIGEST | MIG_FEATURE_SWITCH_PROBE |
                      (postcopy ? MIG_FEATURE_POSTCOPY | MIG_FEATURE_EARLY_DISCARD : 0);
    hello->abi_version = RINGVM_ABI_VERSION;
}

/* The switch-over's dry run (migration/switch_over.h): decode the probe's
 * state as the MACHINE_STATE frame will be, then answer. An undecodable
 * probe is reported, not refused: the real state frame is checked on its
 * own. */
static int incoming_answer_probe(struct incoming *in)
{
    struct mig_receiver *r = &in->receiver;
    struct mig_probe_ack ack = { .status = MIG_PROBE_DECODED };
    struct machine_state state;
    char error[MIG_RECEIVER_ERROR_MAX];
    if (mig_receiver_decode_machine_state(r, r->probe, r->probe_length, &state, error, sizeof(error)) != 0) {
        ack.status = MIG_PROBE_UNDECODABLE;
        fprintf(stderr, "ringvm: migration: the source's switch-over probe does not decode: %s\n", error);
    }
    machine_state_free(&state);
    mig_receiver_drop_probe(r);
    uint64_t now = mig_mono_ns();
    ack.destination_ns = now > r->probe_started_ns ? now - r->probe_started_ns : 0;
    uint8_t payload[MIG_PROBE_ACK_SIZE];
    mig_probe_ack_encode(&ack, payload);
    return incoming_send(in, MIG_FRAME_PROBE_ACK, payload, sizeof(payload));
}

/* After a resume: what this switch-over cost beyond its bytes, learned by
 * this process for its own next migration, on top of what the source had
 * learned (migration/switch_over.h). Needs the source's SWITCH_OVER frame
 * and a downtime (clocks that agree). */
static void incoming_learn_switch_over(struct incoming *in)
{
    const struct mig_receiver *r = &in->receiver;
    if (!r->have_switch_over || in->progress.downtime_us == 0)
        return;
    if (in->fault_held) {
        /* A test held this switch-over on purpose (RINGVM_FAULT_INJECT):
         * its downtime says nothing about the next one. */
        fprintf(stderr, "ringvm: migration: switch-over held by fault injection: its cost is not learned\n");
        return;
    }
    uint64_t measured = mig_switch_over_measured_us(in->progress.downtime_us, r->switch_over.transfer_us,
                                                    r->switch_over.digest_pass_us);
    pthread_mutex_lock(&in->m->lock);
    if (r->switch_over.learned_count > in->m->switch_over.learned_count) {
        in->m->switch_over.learned_us = r->switch_over.learned_us;
        in->m->switch_over.deviation_us = r->switch_over.deviation_us;
        in->m->switch_over.learned_count = r->switch_over.learned_count;
    }
    mig_switch_over_learn(&in->m->switch_over, measured);
    in->progress.switch_over.learned_us = in->m->switch_over.learned_us;
    in->progress.switch_over.deviation_us = in->m->switch_over.deviation_us;
    in->progress.switch_over.learned_count = in->m->switch_over.learned_count;
    pthread_mutex_unlock(&in->m->lock);
    in->progress.switch_over.measured_us = measured;
    in->progress.switch_over.measured = true;
}

/* Restores what the stream carried and lets the vCPUs run. */
int incoming_restore(struct incoming *in, char *error, size_t error_size, uint32_t *code)
{
    struct vm *vm = in->vm;
    struct mig_receiver *r = &in->receiver;
    *code = MIG_ERR_INTERNAL;
    /* The RAM that came over the wire is verified before any state is
     * restored: restoring writes guest RAM on KVM's side (KVM_SET_MSRS of
     * MSR_KVM_WALL_CLOCK_NEW makes KVM write the wall clock it computes now
     * into the guest's pvclock_wall_clock), which the source's digest of its
     * frozen RAM cannot know about. */
    if (r->end.flags & MIG_END_HAS_DIGEST) {
        char hex[MEMORY_DIGEST_HEX_SIZE];
        int result = memory_digest(&vm->memory, hex, NULL, NULL);
        if (result != 0) {
            snprintf(error, error_size, "memory digest: %s", strerror(-result));
            return -1;
        }
        snprintf(in->progress.digest_destination, sizeof(in->progress.digest_destination), "%s", hex);
        snprintf(in->progress.digest_source, sizeof(in->progress.digest_source), "%s", r->end.digest);
        if (strcmp(hex, r->end.digest) != 0) {
            *code = MIG_ERR_DIGEST;
            snprintf(error, error_size, "memory digest mismatch: source %s, destination %s", r->end.digest, hex);
            return -1;
        }
    }
    /* The machine state was decoded when its frame arrived (the receiver
     * refuses END without it). */
    char text[512];
    if (machine_state_vm_restore(vm, mig_receiver_machine_state(r), text, sizeof(text)) != 0) {
        snprintf(error, error_size, "restoring the machine state: %s", text);
        return -1;
    }
    /* The guest's workload comes with it (vm.info reports it). Written
     * before awaiting_migration is cleared with release; readers acquire. */
    char workload_error[256];
    if (workload_spec_parse(r->device.workload, &vm->config.workload, workload_error, sizeof(workload_error)) != 0) {
        snprintf(error, error_size, "device state: workload '%s': %s", r->device.workload, workload_error);
        return -1;
    }
    pthread_mutex_lock(&vm->serial.lock);
    vm->serial.line_control = (uint8_t)r->device.serial_lcr;
    pthread_mutex_unlock(&vm->serial.lock);
    atomic_store_explicit(&vm->last_exception_vector, r->device.last_exception_vector, memory_order_relaxed);
    atomic_store_explicit(&vm->ledger_mismatches, r->device.ledger_mismatches, memory_order_relaxed);
    for (unsigned i = 0; i < vm->config.vcpu_count && i < MIG_MAX_VCPUS; i++) {
        /* The vCPU threads are parked: the park lock hand-off orders these. */
        vm->vcpus[i].guest_phase = (int)r->device.guest_phase[i];
        atomic_store_explicit(&vm->vcpus[i].guest_phase_published, (int)r->device.guest_phase[i],
                              memory_order_release);
    }
    vm->bootinfo = guest_memory_gpa_to_host(&vm->memory, RINGVM_BOOTINFO_GPA, sizeof(*vm->bootinfo));
    return 0;
}

/* ACK with this side's digest (when it verified one). */
void incoming_send_ack(struct incoming *in, uint64_t timestamp_ns)
{
    struct mig_end ack = { .timestamp_ns = timestamp_ns,
                           .pages = atomic_load_explicit(&in->receiver.pages_received, memory_order_relaxed) };
    if (in->progress.digest_destination[0] != '\0') {
        ack.flags = MIG_END_HAS_DIGEST;
        snprintf(ack.digest, sizeof(ack.digest), "%s", in->progress.digest_destination);
    }
    uint8_t ack_bytes[MIG_ACK_SIZE];
    mig_end_encode(&ack, ack_bytes);
    (void)incoming_send(in, MIG_FRAME_ACK, ack_bytes, sizeof(ack_bytes));
}

/* The state is restored: run the guest here (or leave it paused as the
 * operator had it on the source). 0 with *resumed (CLOCK_REALTIME), or -1
 * when this VM is shutting down. */
int incoming_resume_guest(struct incoming *in, bool stay_paused, uint64_t *resumed, char *error,
                                 size_t error_size, uint32_t *code)
{
    struct vm *vm = in->vm;
    pthread_mutex_lock(&vm->control_lock);
    if (atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
        pthread_mutex_unlock(&vm->control_lock);
        *code = MIG_ERR_CANCELLED;
        snprintf(error, error_size, "the destination VM is shutting down");
        return -1;
    }
    atomic_store_explicit(&vm->awaiting_migration, false, memory_order_release);
    /* A paused guest's vCPUs stay parked (since vm_start) until vm.resume. */
    if (!stay_paused)
        vm_resume_vcpus(vm);
    *resumed = mig_real_ns();
    vm_set_state(vm, stay_paused ? VM_STATE_PAUSED : VM_STATE_RUNNING);
    mig_trace(stay_paused ? "dst restored, left paused" : "dst resumed");
    pthread_mutex_unlock(&vm->control_lock);
    return 0;
}

/* How long the destination waits for the next byte from the source before
 * it gives up ("nothing received from the source for N ms (link stalled)")
 * when --incoming-stall-timeout is not given. */
#define INCOMING_STALL_DEFAULT_MS 5000u

int migration_set_incoming_stall_timeout(struct vm *vm, unsigned stall_ms)
{
    if (stall_ms == 0) {
        fprintf(stderr, "ringvm: migration: the incoming stall timeout must be at least 1 ms\n");
        return -1;
    }
    struct migration *m = migration_manager_find(vm, true);
    if (m == NULL) {
        fprintf(stderr, "ringvm: migration: out of memory\n");
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    m->incoming_stall_ms = stall_ms;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/*
 * Waits for the source: accepts a connection and, with TLS credentials,
 * runs the TLS handshake (the destination is the TLS server). A peer that
 * fails the handshake (wrong key, a certificate the CA did not sign or that
 * expired, plaintext, a port scan) was told why by the handshake itself (an
 * alert, or a plaintext ERROR frame): it is logged, shown in the progress
 * snapshot (state still setup, error code "peer-refused") and closed, and
 * the wait goes on, so an unauthenticated peer can neither take the
 * incoming slot nor end the destination (the rule of the unix: peer check).
 * 0 with in->fd and in->io set, or -1 with error and *code (the wait was
 * cancelled: shutdown).
 */
static int incoming_accept_source(struct incoming *in, int listen_fd, const struct mig_tls_credentials *credentials,
                                  char *error, size_t error_size, uint32_t *code)
{
    struct vm *vm = in->vm;
    const _Atomic bool *stop = (const _Atomic bool *)&vm->shutdown_requested;
    for (;;) {
        in->fd = mig_accept(listen_fd, stop, error, error_size);
        if (in->fd < 0)
            return -1;
        if (in->postcopy_offered)
            stream_window_start_small(in->fd);      /* opened by pre-copy's first pass */
        in->io = (struct mig_io){ .fd = in->fd, .stall_ms = in->stall_ms, .cancel = stop, .peer = "source" };
        incoming_phase(in, MIG_STATE_SETUP, "handshake");
        fault_point(vm, "setup");
        if (credentials == NULL)
            return 0;
        struct mig_tls_options options = { .credentials = credentials };
        if (mig_tls_handshake(&in->tls, &in->io, &options, error, error_size) == 0) {
            in->io.tls = in->tls;
            in->progress.error_code[0] = '\0';
            in->progress.error_message[0] = '\0';
            mig_tls_session_info(in->tls, &in->progress.tls);
            fprintf(stderr, "ringvm: migration: %s %s with the source (%s, authenticated by %s)\n",
                    in->progress.tls.version, in->progress.tls.cipher, in->progress.tls.suite,
                    strcmp(in->progress.tls.auth, "psk") == 0 ? "pre-shared key" : "x509 certificates");
            incoming_publish(in);
            return 0;
        }
        if (close(in->fd) != 0)
            fprintf(stderr, "ringvm: migration: close(refused connection): %s\n", strerror(errno));
        in->fd = -1;
        in->io.fd = -1;
        if (atomic_load_explicit(stop, memory_order_acquire)) {
            *code = MIG_ERR_CANCELLED;
            return -1;
        }
        fprintf(stderr, "ringvm: migration: refused a connection: %s; still waiting for the source\n", error);
        snprintf(in->progress.error_code, sizeof(in->progress.error_code), "peer-refused");
        snprintf(in->progress.error_message, sizeof(in->progress.error_message), "%s", error);
        incoming_phase(in, MIG_STATE_SETUP, "listening");
    }
}

int migration_set_incoming_tls(struct vm *vm, struct mig_tls_credentials *credentials)
{
    struct migration *m = migration_manager_find(vm, true);
    if (m == NULL) {
        mig_tls_credentials_free(credentials);
        fprintf(stderr, "ringvm: migration: out of memory\n");
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    if (atomic_load_explicit(&m->active, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(credentials);
        fprintf(stderr, "ringvm: migration: TLS credentials cannot change while a migration runs\n");
        return -1;
    }
    struct mig_tls_credentials *old = m->incoming_tls;
    m->incoming_tls = credentials;
    pthread_mutex_unlock(&m->lock);
    mig_tls_credentials_free(old);
    return 0;
}

int migration_incoming_run_fd(struct vm *vm, int listen_fd, const char *address, struct api_server *server)
{
    struct migration *m = migration_manager_find(vm, true);
    if (m == NULL) {
        fprintf(stderr, "ringvm: migration: out of memory\n");
        close(listen_fd);
        return -1;
    }
    struct incoming *in = calloc(1, sizeof(*in));
    if (in == NULL) {
        fprintf(stderr, "ringvm: migration: out of memory\n");
        close(listen_fd);
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    if (atomic_load_explicit(&m->active, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        fprintf(stderr, "ringvm: migration: a migration is already running on this VM\n");
        close(listen_fd);
        free(in);
        return -1;
    }
    atomic_store_explicit(&m->active, true, memory_order_release);
    atomic_store_explicit(&m->cancel, false, memory_order_release);
    m->id = ++m->next_id;
    unsigned stall_ms = m->incoming_stall_ms != 0 ? m->incoming_stall_ms : INCOMING_STALL_DEFAULT_MS;
    /* Read-only from here on, freed only by migration_release (after us). */
    const struct mig_tls_credentials *tls_credentials = m->incoming_tls;
    pthread_mutex_unlock(&m->lock);

    in->m = m;
    in->vm = vm;
    in->server = server;
    in->fd = -1;
    in->stall_ms = stall_ms;
    in->started_mono = mig_mono_ns();
    in->progress.id = m->id;
    in->progress.incoming = true;
    in->progress.postcopy.guest_pages_per_s = -1;
    /* local:PATH: the source hands its RAM over as an fd (local_handover.h). */
    bool local = address != NULL && strncmp(address, LOCAL_HANDOVER_PREFIX, strlen(LOCAL_HANDOVER_PREFIX)) == 0;
    in->progress.local = local;
    in->progress.state = MIG_STATE_SETUP;
    in->progress.started_at_ms = mig_real_ns() / 1000000u;
    in->progress.memory.total = vm->memory.size;
    in->progress.vcpu_count = vm->config.vcpu_count > MIG_MAX_VCPUS ? MIG_MAX_VCPUS : vm->config.vcpu_count;
    snprintf(in->progress.address, sizeof(in->progress.address), "%s", address ? address : "");
    in->urgent.fd = -1;
    stream_window_init(&in->stream_window);
    in->stream_nice_before = POSTCOPY_STREAM_UNCHANGED;
    char postcopy_reason[400] = "";
    in->postcopy_offered = !local && !vm->memory.hugepages &&
                           postcopy_destination_available(postcopy_reason, sizeof(postcopy_reason));
    if (!local && vm->memory.hugepages)
        snprintf(postcopy_reason, sizeof(postcopy_reason), "guest RAM is on huge pages");
    if (!local && !in->postcopy_offered)
        fprintf(stderr, "ringvm: migration: post-copy is not offered to the source: %s\n", postcopy_reason);
    struct mig_hello hello;
    local_hello(vm, in->postcopy_offered, &hello);
    char error[MIG_RECEIVER_ERROR_MAX];
    uint32_t error_code = MIG_ERR_INTERNAL;
    bool tell_source = false;
    int result = -1;
    struct mig_populate populate = { .started = false };

    /* A local hand-over's receiver gets no RAM: a MEMORY frame then fails
     * the bounds check of its first run instead of writing the RAM the
     * source still runs on. */
    if (mig_receiver_init(&in->receiver, local ? NULL : vm->memory.host, local ? 0 : vm->memory.size, &hello) != 0) {
        snprintf(error, sizeof(error), "out of memory for the receiver");
        mig_receiver_destroy(&in->receiver);
        goto out;
    }
    incoming_phase(in, MIG_STATE_SETUP, "listening");
    if (getenv("RINGVM_MIG_NO_POPULATE") != NULL)
        fprintf(stderr, "ringvm: migration: RINGVM_MIG_NO_POPULATE set: not pre-populating RAM\n");
    else if (vm->config.memory_options.prealloc || local)
        ;   /* --prealloc faulted everything in already: walking it again costs ~7 % of the CPU */
    else if (mig_populate_start(&populate, vm->memory.host, vm->memory.size, &in->receiver.frontier) != 0)
        fprintf(stderr, "ringvm: migration: cannot start the pre-populating thread (continuing without)\n");

    if (incoming_accept_source(in, listen_fd, tls_credentials, error, sizeof(error), &error_code) != 0)
        goto out;
    tell_source = true;
    if (local) {
        /* Before HELLO_ACK, so before the source pauses: the RAM the
         * guest will run on is mapped and faulted in here. */
        struct local_handover_adoption adoption;
        if (local_handover_adopt_ram(vm, in->fd, in->stall_ms, (const _Atomic bool *)&vm->shutdown_requested,
                                     &adoption, error, sizeof(error)) != 0) {
            error_code = MIG_ERR_STREAM;
            goto out;
        }
        fprintf(stderr, "ringvm: migration: local hand-over: adopted the source's %" PRIu64 " MiB of guest RAM in %"
                PRIu64 " ms, %" PRIu64 " MiB of it mapped ahead in %" PRIu64 " ms\n", vm->memory.size >> 20,
                adoption.adopt_ns / 1000000u, adoption.populated_bytes >> 20, adoption.populate_ns / 1000000u);
    }
    /* The receiver checks the shutdown flag before every read (a full
     * socket never makes incoming_read_some wait) and holds each frame to
     * its deadline (docs/migration-protocol.md, "Deadlines"). */
    mig_receiver_set_deadline(&in->receiver, in->stall_ms, MIG_RATE_FLOOR_BYTES_PER_S);
    struct mig_input input = { .read_some = incoming_read_some, .ctx = in, .stop = &vm->shutdown_requested };
    for (;;) {
        int type = mig_receiver_next(&in->receiver, &input);
        char urgent_error[400];
        if (type < 0 && in->postcopy != NULL && !in->receiver.peer_error) {
            /* After the switch-over a broken link pauses (recoverable);
             * what cannot be recovered fails below. */
            char cause[MIG_RECEIVER_ERROR_MAX];
            snprintf(cause, sizeof(cause), "%s", in->receiver.error);
            if (incoming_postcopy_recover(in, tls_credentials, cause, error, sizeof(error), &error_code) != 0)
                goto out;
            continue;
        }
        if (type > 0 && in->postcopy != NULL &&
            postcopy_incoming_failed(in->postcopy, urgent_error, sizeof(urgent_error))) {
            if (incoming_postcopy_recover(in, tls_credentials, urgent_error, error, sizeof(error), &error_code) != 0)
                goto out;
            continue;
        }
        if (type < 0) {
            snprintf(error, sizeof(error), "%s", in->receiver.error);
            error_code = in->receiver.error_code ? in->receiver.error_code : MIG_ERR_STREAM;
            if (in->source_speaks_tls)
                error_code = MIG_ERR_CONFIG;
            if (in->receiver.peer_error)
                tell_source = false;
            goto out;
        }
        if (type == MIG_FRAME_HELLO) {
            uint8_t payload[MIG_HELLO_SIZE];
            mig_hello_encode(&hello, payload);
            if (incoming_send(in, MIG_FRAME_HELLO_ACK, payload, sizeof(payload)) != 0) {
                snprintf(error, sizeof(error), "could not answer the hello");
                tell_source = false;
                goto out;
            }
            in->progress.setup_ms = (mig_mono_ns() - in->started_mono) / 1000000u;
            incoming_phase(in, MIG_STATE_ACTIVE, in->postcopy != NULL ? "postcopy-recovering" : "receiving");
        } else if (type == MIG_FRAME_PROBE) {
            if (incoming_answer_probe(in) != 0) {
                snprintf(error, sizeof(error), "could not answer the switch-over probe");
                tell_source = false;
                goto out;
            }
        } else if (type == MIG_FRAME_POSTCOPY_OPEN) {
            mig_populate_stop(&populate);   /* before any discard: it must not fill holes again */
            if (incoming_postcopy_open(in, in->recovery_open ? in->recovery.fd : listen_fd, tls_credentials, error,
                                       sizeof(error)) != 0) {
                /* During a recovery the link may break again: pause. */
                if (in->postcopy == NULL || incoming_postcopy_recover_after(in, tls_credentials, error, sizeof(error),
                                                                            &error_code) != 0)
                    goto out;
                continue;
            }
            if (in->postcopy != NULL) {
                /* A recovery: pc-urgent again, on the new urgent channel. */
                struct mig_io urgent = in->urgent;
                in->urgent.fd = -1;
                in->urgent.tls = NULL;
                if (postcopy_incoming_restart(in->postcopy, urgent, error, sizeof(error)) != 0)
                    goto out;
                in->recovering = false;
                incoming_phase(in, MIG_STATE_ACTIVE, "postcopy");
            }
        } else if (type == MIG_FRAME_POSTCOPY_RESUME) {
            if (incoming_send_received_bitmap(in, error, sizeof(error)) != 0 &&
                incoming_postcopy_recover_after(in, tls_credentials, error, sizeof(error), &error_code) != 0)
                goto out;
        } else if (type == MIG_FRAME_POSTCOPY_DISCARD) {
            if (incoming_postcopy_discard(in, error, sizeof(error)) != 0)
                goto out;
        } else if (type == MIG_FRAME_POSTCOPY_DISCARD_SYNC) {
            /* Every DISCARD before it was applied as it came: answer now. */
            in->fault_held |= fault_point(vm, "discard-sync");
            if (incoming_postcopy_discard_sync(in, error, sizeof(error)) != 0) {
                tell_source = false;
                goto out;
            }
        } else if (type == MIG_FRAME_POSTCOPY_SWITCH) {
            if (incoming_postcopy_switch(in, error, sizeof(error), &error_code) != 0)
                goto out;
        } else if (type == MIG_FRAME_END) {
            in->fault_held = fault_point(vm, "end");
            break;
        } else if (type == MIG_FRAME_ITERATION) {
            if (in->postcopy_offered && in->postcopy == NULL &&
                atomic_load_explicit(&in->receiver.iteration, memory_order_relaxed) == 0)
                stream_window_open_fully(in->fd);
            fault_point(vm, atomic_load_explicit(&in->receiver.iteration, memory_order_relaxed) == 0 ? "iteration0"
                                                                                                   : "iteration1");
        } else if (type == MIG_FRAME_MACHINE_STATE) {
            in->fault_held |= fault_point(vm, "stop-and-copy");
        }
        if (type != MIG_FRAME_HELLO && mig_mono_ns() - in->last_publish >= PUBLISH_INTERVAL_NS)
            incoming_publish(in);
    }
    if (in->postcopy != NULL) {
        incoming_phase(in, MIG_STATE_COMPLETING, "postcopy-end");
        if (incoming_postcopy_end(in, error, sizeof(error), &error_code) != 0)
            goto out;
        tell_source = false;
        incoming_send_ack(in, mig_real_ns());
        result = 0;
        goto out;
    }
    incoming_phase(in, MIG_STATE_COMPLETING, "restoring");
    mig_trace("dst end received");
    mig_populate_stop(&populate);
    mig_trace("dst populate joined");
    if (getenv("RINGVM_MIG_TRACE"))
        fprintf(stderr, "ringvm: migration trace populated %" PRIu64 " MiB of %" PRIu64 "\n",
                mig_populate_done(&populate) >> 20, vm->memory.size >> 20);
    if (incoming_restore(in, error, sizeof(error), &error_code) != 0)
        goto out;
    mig_trace("dst restored+digest");
    uint64_t resumed;
    if (incoming_resume_guest(in, (in->receiver.end.flags & MIG_END_GUEST_PAUSED) != 0, &resumed, error,
                              sizeof(error), &error_code) != 0)
        goto out;
    tell_source = false;
    /* The guest runs here now whatever happens to the ack. */
    incoming_send_ack(in, resumed);
    if (in->receiver.end.timestamp_ns != 0 && resumed >= in->receiver.end.timestamp_ns) {
        in->progress.downtime_ms = (resumed - in->receiver.end.timestamp_ns + 999999u) / 1000000u;
        in->progress.downtime_us = (resumed - in->receiver.end.timestamp_ns + 999u) / 1000u;
    }
    incoming_learn_switch_over(in);
    result = 0;

out:
    mig_populate_stop(&populate);
    postcopy_priority_restore_stream(0, in->stream_nice_before);
    in->stream_nice_before = POSTCOPY_STREAM_UNCHANGED;
    if (in->postcopy != NULL) {
        incoming_publish(in);
        if (result != 0) {
            fprintf(stderr, "ringvm: migration: post-copy failed after the switch-over: the guest's RAM is split "
                    "between the two hosts and it cannot continue (%" PRIu64 " pages missing)\n",
                    postcopy_incoming_missing(in->postcopy));
            /* Out of KVM_RUN before RAM leaves userfaultfd: from then on a
             * missing page would read as zeros, which is not the guest's. */
            pthread_mutex_lock(&vm->control_lock);
            if (vm_pause_vcpus(vm) == 0)
                vm_set_state(vm, VM_STATE_PAUSED);
            pthread_mutex_unlock(&vm->control_lock);
        }
        postcopy_incoming_destroy(in->postcopy);
        in->postcopy = NULL;
    }
    mig_tls_session_free(in->urgent.tls);
    if (in->urgent.fd >= 0)
        close(in->urgent.fd);
    free(in->discarded);
    if (in->recovery_open)
        mig_listener_close(&in->recovery);
    if (result != 0) {
        fprintf(stderr, "ringvm: migration: %s\n", error);
        if (tell_source && in->fd >= 0) {
            uint8_t payload[4 + MIG_ERROR_MAX_MESSAGE];
            size_t length = mig_error_encode(error_code, error, payload);
            if (incoming_send(in, MIG_FRAME_ERROR, payload, length) == 0) {
                /* Let the source read it before our close can reset the
                 * connection: stop writing, drain its bytes for up to 1 s. */
                struct mig_io io = in->io;
                io.stall_ms = 500;
                io.cancel = NULL;
                mig_io_close_write(&io);
                uint64_t until = mig_mono_ns() + 1000000000ull;
                static uint8_t sink[65536];
                while (mig_mono_ns() < until) {
                    if (mig_io_poll_readable(in->fd, 50) != 1)
                        continue;
                    ssize_t got = recv(in->fd, sink, sizeof(sink), MSG_DONTWAIT);
                    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                        break;
                }
            }
        }
        in->progress.state = MIG_STATE_FAILED;
        snprintf(in->progress.error_code, sizeof(in->progress.error_code), "%s",
                 error_code == MIG_ERR_CONFIG ? "config-mismatch" : error_code == MIG_ERR_DIGEST ? "digest-mismatch"
                 : error_code == MIG_ERR_CANCELLED ? "cancelled" : error_code == MIG_ERR_STREAM ? "stream" : "internal");
        snprintf(in->progress.error_message, sizeof(in->progress.error_message), "%s", error);
    } else {
        in->progress.state = MIG_STATE_COMPLETED;
        const char *outcome = (in->receiver.end.flags & MIG_END_GUEST_PAUSED)
                              ? "left paused as on the source (vm.resume runs it)" : "resumed";
        if (local)
            fprintf(stderr, "ringvm: migration: local hand-over received and %s in %" PRIu64 " ms, downtime %"
                    PRIu64 " ms\n", outcome, (mig_mono_ns() - in->started_mono) / 1000000u,
                    in->progress.downtime_ms);
        else
            fprintf(stderr, "ringvm: migration: received and %s: %" PRIu64 " MiB in %" PRIu64 " ms, downtime %"
                PRIu64 " ms\n", outcome, atomic_load_explicit(&in->receiver.bytes_received, memory_order_relaxed) >> 20,
                (mig_mono_ns() - in->started_mono) / 1000000u, in->progress.downtime_ms);
    }
    mig_tls_session_free(in->tls);
    in->tls = NULL;
    in->io.tls = NULL;
    if (in->fd >= 0)
        close(in->fd);
    close(listen_fd);
    in->progress.total_ms = (mig_mono_ns() - in->started_mono) / 1000000u;
    in->progress.ended_at_ms = mig_real_ns() / 1000000u;
    snprintf(in->progress.phase, sizeof(in->progress.phase), "done");
    incoming_publish(in);
    mig_publish_state_event(server, in->progress.id, "incoming", in->progress.state, "done");
    mig_receiver_destroy(&in->receiver);
    free(in);
    pthread_mutex_lock(&m->lock);
    atomic_store_explicit(&m->active, false, memory_order_release);
    pthread_cond_broadcast(&m->idle);
    pthread_mutex_unlock(&m->lock);
    return result;
}

int migration_incoming_run(struct vm *vm, const char *address, struct api_server *server)
{
    struct mig_address parsed;
    char error[400];
    if (local_handover_parse_any_address(address, &parsed, error, sizeof(error)) < 0) {
        fprintf(stderr, "ringvm: --incoming: %s\n", error);
        return -1;
    }
    struct mig_listener listener;
    if (mig_listener_open(&listener, &parsed, error, sizeof(error)) != 0) {
        if (parsed.kind != MIG_ADDRESS_UNIX)    /* the unix listener printed its cause */
            fprintf(stderr, "ringvm: --incoming: %s\n", error);
        return -1;
    }
    /* migration_incoming_run_fd closes the fd it gets: it gets a dup, so
     * the listener keeps its own until mig_listener_close removes our
     * socket file (only ours) and releases the path lock. */
    int fd = fcntl(listener.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "ringvm: --incoming: dup of the listening socket: %s\n", strerror(errno));
        mig_listener_close(&listener);
        return -1;
    }
    int result = migration_incoming_run_fd(vm, fd, address, server);
    mig_listener_close(&listener);
    return result;
}
