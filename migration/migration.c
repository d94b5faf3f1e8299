/*
 * Pre-copy live migration: the per-VM manager and the public API
 * (migration.h): start, cancel, progress, release, and the helpers the
 * source (migration/source.c) and the destination (migration/destination.c)
 * share. See migration.h for the lifecycle; docs/migration-protocol.md for
 * the stream.
 */
#include "migration/migration_internal.h"
#include "vmm/monotonic.h"

uint64_t mig_mono_ns(void)
{
    return monotonic_now_ns();
}

/* RINGVM_MIG_TRACE=1: phase timestamps on stderr (diagnostics). */
void mig_trace(const char *what)
{
    static int enabled = -1;
    if (enabled < 0)
        enabled = getenv("RINGVM_MIG_TRACE") != NULL;
    if (enabled) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        fprintf(stderr, "ringvm: migration trace %ld.%06ld %s\n", (long)t.tv_sec, t.tv_nsec / 1000, what);
    }
}

uint64_t mig_real_ns(void)
{
    return realtime_now_ns();
}

#define REGISTRY_MAX 32
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct migration *registry[REGISTRY_MAX];

struct migration *migration_manager_find(struct vm *vm, bool create)
{
    pthread_mutex_lock(&registry_lock);
    struct migration *found = NULL;
    int free_slot = -1;
    for (int i = 0; i < REGISTRY_MAX; i++) {
        if (registry[i] != NULL && registry[i]->vm == vm)
            found = registry[i];
        else if (registry[i] == NULL && free_slot < 0)
            free_slot = i;
    }
    if (found == NULL && create && free_slot >= 0) {
        found = calloc(1, sizeof(*found));
        if (found != NULL) {
            found->vm = vm;
            pthread_mutex_init(&found->lock, NULL);
            pthread_cond_init(&found->idle, NULL);
            pthread_cond_init(&found->postcopy_cond, NULL);
            mig_progress_board_init(&found->board);
            registry[free_slot] = found;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return found;
}

const char *mig_mode_name(enum mig_mode mode)
{
    switch (mode) {
    case MIG_MODE_PRECOPY: return "precopy";
    case MIG_MODE_POSTCOPY: return "postcopy";
    case MIG_MODE_HYBRID: return "hybrid";
    }
    return "?";
}

int mig_mode_parse(const char *text, enum mig_mode *out)
{
    static const enum mig_mode modes[] = { MIG_MODE_PRECOPY, MIG_MODE_POSTCOPY, MIG_MODE_HYBRID };
    for (size_t i = 0; text != NULL && i < sizeof(modes) / sizeof(modes[0]); i++)
        if (strcmp(text, mig_mode_name(modes[i])) == 0) {
            *out = modes[i];
            return 0;
        }
    return -1;
}

void mig_cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *lock, unsigned ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    uint64_t at = (uint64_t)until.tv_sec * 1000000000ull + (uint64_t)until.tv_nsec + (uint64_t)ms * 1000000ull;
    until.tv_sec = (time_t)(at / 1000000000ull);
    until.tv_nsec = (long)(at % 1000000000ull);
    pthread_cond_timedwait(cond, lock, &until);
}

void mig_params_defaults(struct mig_params *p)
{
    memset(p, 0, sizeof(*p));
    p->downtime_ms = 300;
    p->converge = MIG_CONVERGE_AUTO;
    p->max_bandwidth_mibs = 0;
    p->switch_over_bandwidth_mibs = 0;
    p->timeout_s = 3600;
    p->timeout_force = false;
    p->keep_alive = false;
    p->throttle.initial = 20;
    p->throttle.increment = 10;
    p->throttle.max = 99;
    p->stall_timeout_ms = 5000;
    p->verify_digest = false;
    p->source_digest = true;
    p->dirty_limit_margin = 50;
    p->mode = MIG_MODE_PRECOPY;
    p->postcopy_after_auto = true;      /* hybrid's default; ignored by the other modes */
}

void mig_publish_event(struct api_server *server, const char *name, json_t *data)
{
    if (server != NULL)
        api_server_publish_event(server, name, data);
    else
        json_decref(data);
}

/* The migration.state event of either side. */
void mig_publish_state_event(struct api_server *server, uint64_t id, const char *role, enum mig_state state,
                                const char *phase)
{
    mig_publish_event(server, MIG_EVENT_STATE,
                  json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)id, "role", role, "state",
                            mig_state_name(state), "phase", phase));
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* One memory_digest pass over ram_bytes of guest RAM, in ms: the same
 * XXH3-128 code timed over a buffer larger than this machine's caches
 * (best of two passes, faults excluded). Timed in this thread's CPU time:
 * the guest runs now and competes for the cores, but at stop-and-copy its
 * vCPUs are parked and the digests have the machine. Guest RAM with
 * never-written pages hashes faster (holes come from a cached zero piece),
 * so this errs on the long side, the safe one for a downtime limit. 0 when
 * the buffer cannot be had (then the downtime is not budgeted). */
#define DIGEST_CALIBRATION_BYTES (32ull << 20)
static uint64_t digest_estimate_ms(uint64_t ram_bytes)
{
    uint8_t *buffer = malloc(DIGEST_CALIBRATION_BYTES);
    if (buffer == NULL)
        return 0;
    for (uint64_t i = 0; i < DIGEST_CALIBRATION_BYTES; i += 8)
        memcpy(buffer + i, &i, sizeof(i));
    uint64_t best_ns = UINT64_MAX;
    for (int pass = 0; pass < 2; pass++) {
        char hex[MEMORY_DIGEST_HEX_SIZE];
        uint64_t started = thread_cpu_ns();
        memory_digest_buffer(buffer, DIGEST_CALIBRATION_BYTES, hex, NULL, NULL);
        uint64_t took = thread_cpu_ns() - started;
        if (took < best_ns)
            best_ns = took;
    }
    free(buffer);
    unsigned __int128 ns = (unsigned __int128)ram_bytes * best_ns / DIGEST_CALIBRATION_BYTES;
    uint64_t ms = (uint64_t)((ns + 999999u) / 1000000u);
    return ms == 0 ? 1 : ms;
}

uint64_t migration_digest_downtime_floor_ms(uint64_t ram_bytes)
{
    return mig_expected_downtime_with_digest_ms(0, digest_estimate_ms(ram_bytes));
}

int migration_start(struct vm *vm, struct api_server *server, const struct mig_params *params, uint64_t *id,
                    const char **code, char *message, size_t message_size)
{
    struct migration *m = migration_manager_find(vm, true);
    if (m == NULL) {
        *code = "internal";
        snprintf(message, message_size, "out of memory (or too many VMs in this process)");
        return -1;
    }
    char text[1200];
    struct mig_address address;
    int local = local_handover_parse_any_address(params->dest, &address, text, sizeof(text));
    if (local < 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "dest: %s", text);
        return -1;
    }
    if (params->mode != MIG_MODE_PRECOPY && local == 1) {
        *code = "invalid-argument";
        snprintf(message, message_size, "mode %s: a local hand-over moves no RAM (its guest switches over at once); "
                 "use mode precopy with local:PATH", mig_mode_name(params->mode));
        return -1;
    }
    if (local == 1 && guest_memory_anonymous(&vm->memory)) {
        *code = "invalid-argument";
        snprintf(message, message_size, "dest %s: a local hand-over passes guest RAM as a memfd, and this VM's RAM is "
                 "anonymous (--ram anonymous): migrate over unix:PATH instead, or start the VM with --ram memfd",
                 params->dest);
        return -1;
    }
    if (params->mode == MIG_MODE_HYBRID &&
        (params->postcopy_after_passes != 0) + (params->postcopy_after_ms != 0) + params->postcopy_after_auto != 1) {
        *code = "invalid-argument";
        snprintf(message, message_size, "mode hybrid: postcopy_after must be one of N passes, N seconds or auto");
        return -1;
    }
    const struct mig_throttle_params *t = &params->throttle;
    if (t->initial < 1 || t->initial > 99 || t->increment < 0 || t->increment > 99 || t->max < 1 || t->max > 99 ||
        t->initial > t->max) {
        *code = "invalid-argument";
        snprintf(message, message_size,
                 "throttle_initial=%d, throttle_increment=%d, throttle_max=%d: need 1 <= initial <= max <= 99 and "
                 "0 <= increment <= 99", t->initial, t->increment, t->max);
        return -1;
    }
    if (params->downtime_ms == 0 || params->timeout_s == 0 || params->stall_timeout_ms == 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "downtime_ms, timeout_s and the stall timeout must be > 0");
        return -1;
    }
    /* With verify_digest both sides hash all RAM inside the downtime. When
     * that alone exceeds the limit no iteration could ever switch over:
     * say so now instead of throttling the guest until timeout_s. */
    /* (Post-copy compares its page digests at its end, outside the downtime.) */
    uint64_t digest_ms = params->verify_digest && params->mode != MIG_MODE_POSTCOPY
                         ? digest_estimate_ms(vm->memory.size) : 0;
    uint64_t digest_floor_ms = mig_expected_downtime_with_digest_ms(0, digest_ms);
    /* (A hybrid migration that cannot meet it switches to post-copy, whose
     * digests cost no downtime.) */
    if (params->verify_digest && params->mode == MIG_MODE_PRECOPY && digest_floor_ms > params->downtime_ms) {
        *code = "invalid-argument";
        snprintf(message, message_size,
                 "verify_digest: hashing %" PRIu64 " MiB of RAM on both sides takes about %" PRIu64
                 " ms of downtime here, more than downtime_ms=%" PRIu64 ": raise downtime_ms or turn verify_digest off",
                 vm->memory.size >> 20, digest_floor_ms, params->downtime_ms);
        return -1;
    }
    /* The key files are read here, so a bad one is this call's error
     * (nothing of them is in params but their paths). Owned by the source
     * once it exists; freed on every refusal below. */
    struct mig_tls_credentials *tls = NULL;
    if (mig_tls_credentials_load_for(&tls, MIG_TLS_CLIENT, params->tls_psk_file, params->tls_creds_dir, &address,
                                     text, sizeof(text)) != 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "TLS: %s", text);
        return -1;
    }

    pthread_mutex_lock(&m->lock);
    if (atomic_load_explicit(&m->active, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(tls);
        *code = "migration-active";
        snprintf(message, message_size, "migration %" PRIu64 " is still running (migration.cancel stops it)",
                 m->id);
        return -1;
    }
    if (m->thread_joinable) {
        pthread_join(m->thread, NULL);
        m->thread_joinable = false;
    }
    enum vm_state state = vm_get_state(vm);
    /* A paused guest migrates and stays paused on the destination
     * (MIG_END_GUEST_PAUSED; source_complete reads the state again). */
    if ((state != VM_STATE_RUNNING && state != VM_STATE_PAUSED) ||
        atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire)) {
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(tls);
        *code = "vm-not-running";
        snprintf(message, message_size, "cannot migrate: the VM is %s",
                 atomic_load_explicit(&vm->shutdown_requested, memory_order_acquire) ? "shutting down"
                                                                                      : vm_state_name(state));
        return -1;
    }
    /* A local hand-over copies no RAM, so it tracks no dirty pages. */
    if (!local && (vm->dirty_log == NULL || dirty_log_mode(vm->dirty_log) == DIRTY_LOG_OFF)) {
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(tls);
        *code = "invalid-argument";
        snprintf(message, message_size, "cannot migrate with --dirty-log off: start ringvm with --dirty-log ring "
                                        "(or bitmap)");
        return -1;
    }
    if (!local && params->converge == MIG_CONVERGE_DIRTY_LIMIT && dirty_log_mode(vm->dirty_log) != DIRTY_LOG_RING) {
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(tls);
        *code = "invalid-argument";
        snprintf(message, message_size, "converge=dirty-limit needs per-vCPU dirty rates, which only --dirty-log "
                                        "ring gives (this VM uses %s)", dirty_log_mode_name(dirty_log_mode(vm->dirty_log)));
        return -1;
    }
    struct source *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(tls);
        *code = "internal";
        snprintf(message, message_size, "out of memory");
        return -1;
    }
    s->tls_credentials = tls;
    s->m = m;
    s->vm = vm;
    s->params = *params;
    s->server = server;
    s->digest_ms = digest_ms;
    s->fd = -1;
    s->urgent_fd = -1;
    s->local = local == 1;
    s->progress.local = s->local;
    s->started_mono = mig_mono_ns();
    if (params->timeout_s < UINT64_MAX / 1000000000ull)
        s->deadline_mono = s->started_mono + params->timeout_s * 1000000000ull;
    m->id = ++m->next_id;
    m->params = *params;
    m->server = server;
    s->progress.id = m->id;
    s->progress.state = MIG_STATE_SETUP;
    snprintf(s->progress.phase, sizeof(s->progress.phase), "starting");
    snprintf(s->progress.address, sizeof(s->progress.address), "%s", params->dest);
    snprintf(s->progress.converge, sizeof(s->progress.converge), "%s", mig_converge_name(params->converge));
    s->progress.mode = (int)params->mode;
    s->progress.postcopy.guest_pages_per_s = -1;    /* the destination's to say */
    s->progress.downtime_limit_ms = params->downtime_ms;
    s->progress.digest_pass_ms = digest_ms;
    s->progress.started_at_ms = mig_real_ns() / 1000000u;
    s->progress.memory.total = vm->memory.size;
    s->progress.memory.remaining = s->local ? 0 : vm->memory.size;
    migration_source_vcpu_throttles(s);
    mig_progress_publish(&m->board, &s->progress);   /* the old snapshot ends here */
    m->past_end = false;        /* under m->lock, held since the checks above */
    atomic_store_explicit(&m->postcopy_requested, false, memory_order_release);
    atomic_store_explicit(&m->cancel, false, memory_order_release);
    atomic_store_explicit(&m->active, true, memory_order_release);
    int result = pthread_create(&m->thread, NULL, migration_source_main, s);
    if (result != 0) {
        atomic_store_explicit(&m->active, false, memory_order_release);
        pthread_mutex_unlock(&m->lock);
        mig_tls_credentials_free(s->tls_credentials);
        free(s);
        *code = "internal";
        snprintf(message, message_size, "pthread_create(migration): %s", strerror(result));
        return -1;
    }
    m->thread_joinable = true;
    *id = m->id;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

int migration_postcopy_now(struct vm *vm, const char **code, char *message, size_t message_size)
{
    struct migration *m = migration_manager_find(vm, false);
    if (m == NULL || !atomic_load_explicit(&m->active, memory_order_acquire)) {
        *code = "no-migration";
        snprintf(message, message_size, "no migration is running");
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    enum mig_mode mode = m->params.mode;
    bool too_late = m->past_end;
    if (mode == MIG_MODE_HYBRID && !too_late)
        atomic_store_explicit(&m->postcopy_requested, true, memory_order_release);
    pthread_mutex_unlock(&m->lock);
    if (mode == MIG_MODE_PRECOPY) {
        *code = "invalid-state";
        snprintf(message, message_size, "migration %" PRIu64 " was started as precopy: post-copy was not agreed to "
                 "(start it with mode hybrid to allow the switch)", m->id);
        return -1;
    }
    if (mode == MIG_MODE_POSTCOPY || too_late) {
        *code = "invalid-state";
        snprintf(message, message_size, "migration %" PRIu64 " is already %s", m->id,
                 mode == MIG_MODE_POSTCOPY ? "a post-copy migration" : "past its switch-over");
        return -1;
    }
    return 0;
}

static int migration_request_recovery(struct vm *vm, const char *address, bool incoming, const char **code,
                                      char *message, size_t message_size)
{
    struct migration *m = migration_manager_find(vm, false);
    if (m == NULL || !atomic_load_explicit(&m->active, memory_order_acquire)) {
        *code = "no-migration";
        snprintf(message, message_size, "no migration is running");
        return -1;
    }
    char text[400];
    struct mig_address parsed;
    if (address == NULL || strlen(address) >= sizeof(m->recover_address) ||
        mig_address_parse(address, &parsed, text, sizeof(text)) != 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "%s: %s", incoming ? "address" : "dest",
                 address == NULL ? "missing" : strlen(address) >= sizeof(m->recover_address) ? "too long" : text);
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    bool paused = m->postcopy_paused;
    bool right_side = m->paused_incoming == incoming;
    int listen_result = 0;
    if (paused && right_side && incoming) {
        /* Listening before this returns: the source may connect at once. */
        if (m->recover_listener_open) {
            mig_listener_close(&m->recover_listener);
            m->recover_listener_open = false;
        }
        listen_result = mig_listener_open(&m->recover_listener, &parsed, text, sizeof(text));
        m->recover_listener_open = listen_result == 0;
    }
    if (paused && right_side && listen_result == 0) {
        snprintf(m->recover_address, sizeof(m->recover_address), "%s", address);
        m->recover_requested = true;
        pthread_cond_broadcast(&m->postcopy_cond);
    }
    pthread_mutex_unlock(&m->lock);
    if (listen_result != 0) {
        *code = "invalid-argument";
        snprintf(message, message_size, "address: %s", text);
        return -1;
    }
    if (!paused || !right_side) {
        *code = "invalid-state";
        snprintf(message, message_size, "%s", !paused ? "the migration is not paused in post-copy"
                 : incoming ? "this is the migration's source: use migration.start with resume"
                            : "this is the migration's destination: use migration.recover");
        return -1;
    }
    return 0;
}

int migration_recover(struct vm *vm, const char *address, const char **code, char *message, size_t message_size)
{
    return migration_request_recovery(vm, address, true, code, message, message_size);
}

int migration_resume(struct vm *vm, const char *dest, const char **code, char *message, size_t message_size)
{
    return migration_request_recovery(vm, dest, false, code, message, message_size);
}

int migration_cancel(struct vm *vm, const char **code, char *message, size_t message_size)
{
    struct migration *m = migration_manager_find(vm, false);
    if (m == NULL || !atomic_load_explicit(&m->active, memory_order_acquire)) {
        *code = "no-migration";
        snprintf(message, message_size, "no migration is running");
        return -1;
    }
    pthread_mutex_lock(&m->lock);
    bool too_late = m->past_end && !m->postcopy_paused;
    if (!too_late)
        atomic_store_explicit(&m->cancel, true, memory_order_release);
    pthread_cond_broadcast(&m->postcopy_cond);
    pthread_mutex_unlock(&m->lock);
    if (too_late) {
        *code = "migration-active";
        snprintf(message, message_size,
                 "too late to cancel: the whole stream was sent and the destination may already run the guest; "
                 "the migration ends with the destination's ack (or fails after the ack timeout)");
        return -1;
    }
    return 0;
}

bool migration_active(struct vm *vm)
{
    struct migration *m = migration_manager_find(vm, false);
    return m != NULL && atomic_load_explicit(&m->active, memory_order_acquire);
}

bool migration_progress(struct vm *vm, struct mig_progress *out)
{
    struct migration *m = migration_manager_find(vm, false);
    if (m == NULL) {
        memset(out, 0, sizeof(*out));
        return false;
    }
    return mig_progress_read(&m->board, out);
}

bool migration_wait_idle(struct vm *vm, uint64_t timeout_ms)
{
    struct migration *m = migration_manager_find(vm, false);
    if (m == NULL)
        return true;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    uint64_t when = (uint64_t)deadline.tv_sec * 1000000000ull + (uint64_t)deadline.tv_nsec + timeout_ms * 1000000ull;
    deadline.tv_sec = (time_t)(when / 1000000000ull);
    deadline.tv_nsec = (long)(when % 1000000000ull);
    pthread_mutex_lock(&m->lock);
    while (atomic_load_explicit(&m->active, memory_order_acquire)) {
        if (pthread_cond_timedwait(&m->idle, &m->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool idle = !atomic_load_explicit(&m->active, memory_order_acquire);
    pthread_mutex_unlock(&m->lock);
    return idle;
}

void migration_release(struct vm *vm)
{
    struct migration *m = migration_manager_find(vm, false);
    if (m == NULL)
        return;
    atomic_store_explicit(&m->cancel, true, memory_order_release);
    pthread_mutex_lock(&m->lock);
    bool joinable = m->thread_joinable;
    m->thread_joinable = false;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(m->thread, NULL);
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < REGISTRY_MAX; i++)
        if (registry[i] == m)
            registry[i] = NULL;
    pthread_mutex_unlock(&registry_lock);
    mig_tls_credentials_free(m->incoming_tls);
    if (m->recover_listener_open)
        mig_listener_close(&m->recover_listener);
    mig_progress_board_destroy(&m->board);
    pthread_cond_destroy(&m->idle);
    pthread_cond_destroy(&m->postcopy_cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
