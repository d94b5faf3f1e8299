/*
 * API server: socket setup, the epoll thread, the worker thread, events.
 *
 * Threads and ownership:
 *   - epoll thread ("api"): owns listener.fd, epoll_fd, clients[] and every
 *     struct api_client (buffers, sessions). Nothing else touches them.
 *   - worker thread ("api-worker"): runs API_CMD_WORKER handlers, one at a
 *     time, from work_head; hands finished calls to done_head.
 *   - any thread: api_server_publish_event (events_head), api_call_complete
 *     (done_head). Both only take `lock` briefly and write the eventfd.
 *   - the creating thread: api_server_create / api_server_destroy.
 * `lock` protects work_*, done_*, events_*, worker_stop, outstanding; it is
 * never held across I/O, handlers or VM calls.
 */
#include "api/server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/commands.h"
#include "vmm/monotonic.h"
#include "vmm/thread.h"
#include "vmm/unix_listener.h"
#include "vmm/vm.h"

#define OUT_HIGH_BYTES (1u << 20)       /* stop reading requests above this */
#define OUT_MAX_BYTES (16u << 20)       /* a client this far behind is dropped */
#define READ_CHUNK 65536
#define READ_BUDGET (256 * 1024)        /* per wake-up per client, for fairness */
#define EVENT_QUEUE_MAX 65536
#define FLUSH_ON_STOP_MS 500
#define PENDING_WAIT_MS 2000

#define TOKEN_LISTEN 0
#define TOKEN_WAKE 1

struct api_client {                     /* epoll thread only */
    int fd;
    unsigned slot;
    uint64_t token;                     /* generation << 8 | slot */
    uid_t uid;
    pid_t pid;
    struct api_linebuf in;
    char *out;
    size_t out_start, out_length, out_capacity;
    struct api_session session;
    uint32_t mask;                      /* current epoll events */
    bool registered;                    /* fd in the epoll set */
    bool busy;                          /* a call of this client is in flight */
    bool read_eof;                      /* peer shut down its sending side */
    bool peer_gone;                     /* peer closed: outputs are discarded */
    bool closing;                       /* close once the output is flushed */
    bool dead;                          /* close now */
};

struct api_event_node {
    struct api_event_node *next;
    size_t length;
    char *line;
    char name[];
};

struct api_vm_hook;

struct api_server {
    /* Immutable after create. */
    struct vm *vm;
    const struct api_command_group *const *groups;
    struct unix_listener listener;      /* the socket, its path lock (vmm/unix_listener.h) */
    int wake_fd;                        /* eventfd */
    int epoll_fd;
    pthread_t epoll_thread;
    pthread_t worker_thread;
    bool epoll_started, worker_started;
    struct api_vm_hook *hook;

    _Atomic bool stop;                  /* epoll thread: flush and exit */
    _Atomic unsigned client_count;

    /* Epoll thread only. */
    struct api_client *clients[API_MAX_CLIENTS];
    uint64_t next_generation;
    uint64_t accept_paused_until_ns;    /* EMFILE back-off, 0 = accepting */

    pthread_mutex_t lock;
    pthread_cond_t worker_cond;         /* work queued or worker_stop */
    pthread_cond_t outstanding_cond;    /* outstanding dropped */
    struct api_call *work_head, *work_tail;
    struct api_call *done_head, *done_tail;
    struct api_event_node *events_head, *events_tail;
    size_t events_queued;
    uint64_t events_dropped;
    bool worker_stop;
    int outstanding;                    /* calls handed out, not yet completed */
};

static void wake(struct api_server *server)
{
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(server->wake_fd, &one, sizeof(one));
        if (n == (ssize_t)sizeof(one) || (n < 0 && errno == EAGAIN))
            return;     /* EAGAIN: counter saturated, a wake-up is pending anyway */
        if (n < 0 && errno == EINTR)
            continue;
        fprintf(stderr, "ringvm: api: eventfd write: %s\n", n < 0 ? strerror(errno) : "short write");
        return;
    }
}

/* ---- VM state events -------------------------------------------------------- */

/* One per VM ever served. Never freed: the VM keeps the listener (and its
 * opaque pointer) until it is destroyed, possibly after the server. */
struct api_vm_hook {
    struct api_vm_hook *next;
    struct vm *vm;
    struct api_server *server;          /* hooks_lock */
};

static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct api_vm_hook *hooks;

static void vm_state_listener_fn(struct vm *vm, enum vm_state old_state, enum vm_state new_state,
                                 void *opaque)
{
    (void)vm;
    struct api_vm_hook *hook = opaque;
    pthread_mutex_lock(&hooks_lock);
    if (hook->server)
        api_server_publish_event(hook->server, API_EVENT_VM_STATE,
                                 json_pack("{s:s, s:s}", "state", vm_state_name(new_state),
                                           "previous", vm_state_name(old_state)));
    pthread_mutex_unlock(&hooks_lock);
}

static int hook_attach(struct api_server *server)
{
    struct vm *vm = server->vm;
    pthread_mutex_lock(&hooks_lock);
    struct api_vm_hook *hook = NULL;
    for (struct api_vm_hook *h = hooks; h; h = h->next)
        if (h->vm == vm)
            hook = h;
    if (hook && hook->server) {
        pthread_mutex_unlock(&hooks_lock);
        fprintf(stderr, "ringvm: api: this VM already has an API server\n");
        return -EBUSY;
    }
    if (!hook) {
        hook = calloc(1, sizeof(*hook));
        if (!hook) {
            pthread_mutex_unlock(&hooks_lock);
            return -ENOMEM;
        }
        hook->vm = vm;
        hook->next = hooks;
        hooks = hook;
    }
    bool registered = false;
    for (unsigned i = 0; i < vm->listener_count; i++)
        if (vm->listeners[i].fn == vm_state_listener_fn && vm->listeners[i].opaque == hook)
            registered = true;
    if (!registered) {
        if (vm_get_state(vm) != VM_STATE_CREATED) {
            fprintf(stderr, "ringvm: api: the VM is already started: no vm.state events "
                            "(create the API server before vm_start)\n");
        } else {
            int result = vm_add_state_listener(vm, vm_state_listener_fn, hook);
            if (result < 0)
                fprintf(stderr, "ringvm: api: cannot watch VM state changes: %s\n",
                        strerror(-result));
        }
    }
    hook->server = server;
    server->hook = hook;
    pthread_mutex_unlock(&hooks_lock);
    return 0;
}

static void hook_detach(struct api_server *server)
{
    if (!server->hook)
        return;
    pthread_mutex_lock(&hooks_lock);
    server->hook->server = NULL;
    pthread_mutex_unlock(&hooks_lock);
    server->hook = NULL;
}

/* ---- events and completions (any thread) ------------------------------------- */

void api_server_publish_event(struct api_server *server, const char *name, json_t *data)
{
    if (!server || !name) {
        json_decref(data);
        return;
    }
    size_t length;
    char *line = api_event_line(name, api_wall_ms(), data, &length);
    if (!line)
        return;
    size_t name_length = strlen(name);
    struct api_event_node *node = malloc(sizeof(*node) + name_length + 1);
    if (!node) {
        free(line);
        return;
    }
    node->next = NULL;
    node->line = line;
    node->length = length;
    memcpy(node->name, name, name_length + 1);
    pthread_mutex_lock(&server->lock);
    if (server->events_queued >= EVENT_QUEUE_MAX) {
        server->events_dropped++;
        pthread_mutex_unlock(&server->lock);
        free(line);
        free(node);
        return;
    }
    if (server->events_tail)
        server->events_tail->next = node;
    else
        server->events_head = node;
    server->events_tail = node;
    server->events_queued++;
    pthread_mutex_unlock(&server->lock);
    wake(server);
}

void api_call_complete(struct api_call *call)
{
    struct api_server *server = call->server;
    if (!server) {          /* no server: nobody to answer */
        api_call_free(call);
        return;
    }
    call->next = NULL;
    pthread_mutex_lock(&server->lock);
    if (server->done_tail)
        server->done_tail->next = call;
    else
        server->done_head = call;
    server->done_tail = call;
    server->outstanding--;
    pthread_cond_broadcast(&server->outstanding_cond);
    pthread_mutex_unlock(&server->lock);
    wake(server);
}

unsigned api_server_client_count(struct api_server *server)
{
    return atomic_load_explicit(&server->client_count, memory_order_relaxed);
}

/* ---- worker thread -------------------------------------------------------------- */

static void *worker_main(void *argument)
{
    struct api_server *server = argument;
    pthread_setname_np(pthread_self(), "api-worker");
    pthread_mutex_lock(&server->lock);
    for (;;) {
        while (!server->work_head && !server->worker_stop)
            pthread_cond_wait(&server->worker_cond, &server->lock);
        if (server->worker_stop)
            break;
        struct api_call *call = server->work_head;
        server->work_head = call->next;
        if (!server->work_head)
            server->work_tail = NULL;
        call->next = NULL;
        pthread_mutex_unlock(&server->lock);
        if (call->command->handler(call) == API_DONE)
            api_call_complete(call);
        pthread_mutex_lock(&server->lock);
    }
    pthread_mutex_unlock(&server->lock);
    return NULL;
}

/* ---- connections (epoll thread) --------------------------------------------------- */

static struct api_client *client_by_token(struct api_server *server, uint64_t token)
{
    unsigned slot = (unsigned)(token & 0xff);
    if (slot >= API_MAX_CLIENTS)
        return NULL;
    struct api_client *client = server->clients[slot];
    return client && client->token == token ? client : NULL;
}

static void client_free(struct api_server *server, struct api_client *client)
{
    if (client->registered && epoll_ctl(server->epoll_fd, EPOLL_CTL_DEL, client->fd, NULL) < 0)
        fprintf(stderr, "ringvm: api: epoll_ctl(DEL): %s\n", strerror(errno));
    if (close(client->fd) < 0)
        fprintf(stderr, "ringvm: api: close(client): %s\n", strerror(errno));
    server->clients[client->slot] = NULL;
    atomic_fetch_sub_explicit(&server->client_count, 1, memory_order_relaxed);
    api_linebuf_free(&client->in);
    api_session_reset(&client->session);
    free(client->out);
    free(client);
}

static size_t out_pending(const struct api_client *client)
{
    return client->out_length - client->out_start;
}

static void client_flush(struct api_client *client)
{
    while (!client->dead && out_pending(client) > 0) {
        ssize_t n = send(client->fd, client->out + client->out_start, out_pending(client),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            client->out_start += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* EPIPE / ECONNRESET: the peer is gone. */
        client->peer_gone = true;
        client->out_start = client->out_length = 0;
        break;
    }
    if (out_pending(client) == 0)
        client->out_start = client->out_length = 0;
}

/* Queues a line (not consumed: copied). */
static void client_send(struct api_client *client, const char *line, size_t length)
{
    if (client->dead || client->peer_gone || !line)
        return;
    if (out_pending(client) + length > OUT_MAX_BYTES) {
        fprintf(stderr, "ringvm: api: client (pid %d) is not reading its replies/events "
                        "(%zu bytes queued): disconnected\n", (int)client->pid, out_pending(client));
        client->dead = true;
        return;
    }
    if (client->out_capacity - client->out_length < length) {
        if (client->out_start > 0) {
            memmove(client->out, client->out + client->out_start, out_pending(client));
            client->out_length -= client->out_start;
            client->out_start = 0;
        }
        if (client->out_capacity - client->out_length < length) {
            size_t want = client->out_capacity ? client->out_capacity : 4096;
            while (want - client->out_length < length)
                want *= 2;
            char *out = realloc(client->out, want);
            if (!out) {
                fprintf(stderr, "ringvm: api: out of memory for a client's output: disconnected\n");
                client->dead = true;
                return;
            }
            client->out = out;
            client->out_capacity = want;
        }
    }
    memcpy(client->out + client->out_length, line, length);
    client->out_length += length;
    client_flush(client);
}

/* Sends a line built by the protocol layer and frees it; NULL (out of
 * memory) drops the connection, since the client would wait forever. */
static void client_send_owned(struct api_client *client, char *line, size_t length)
{
    if (!line) {
        fprintf(stderr, "ringvm: api: out of memory building a reply: connection closed\n");
        client->dead = true;
        return;
    }
    client_send(client, line, length);
    free(line);
}

static void client_update_mask(struct api_server *server, struct api_client *client)
{
    if (!client->registered || client->dead)
        return;
    uint32_t want = 0;
    if (!client->read_eof && !client->closing && !client->busy &&
        out_pending(client) < OUT_HIGH_BYTES && !atomic_load_explicit(&server->stop, memory_order_relaxed))
        want |= EPOLLIN | EPOLLRDHUP;
    if (out_pending(client) > 0)
        want |= EPOLLOUT;
    if (want == client->mask)
        return;
    struct epoll_event event = {.events = want, .data.u64 = client->token};
    if (epoll_ctl(server->epoll_fd, EPOLL_CTL_MOD, client->fd, &event) < 0) {
        fprintf(stderr, "ringvm: api: epoll_ctl(MOD): %s\n", strerror(errno));
        client->dead = true;
        return;
    }
    client->mask = want;
}

static bool is_blank(const char *line, size_t length)
{
    for (size_t i = 0; i < length; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
            return false;
    return true;
}

static void handle_line(struct api_server *server, struct api_client *client, const char *line,
                        size_t length)
{
    char *reply = NULL;
    size_t reply_length = 0;
    struct api_call *call = api_call_from_line(server->groups, line, length, &reply, &reply_length);
    if (!call) {
        client_send_owned(client, reply, reply_length);
        return;
    }
    call->server = server;
    call->vm = server->vm;
    call->client_token = client->token;
    call->started_ns = monotonic_now_ns();
    pthread_mutex_lock(&server->lock);
    server->outstanding++;
    if (call->command->flags & API_CMD_WORKER) {
        if (server->worker_stop) {
            server->outstanding--;
            pthread_mutex_unlock(&server->lock);
            api_call_fail(call, API_ERR_UNAVAILABLE, "the API server is shutting down");
            reply = api_call_reply(call, &reply_length);
            api_call_free(call);
            client_send_owned(client, reply, reply_length);
            return;
        }
        if (server->work_tail)
            server->work_tail->next = call;
        else
            server->work_head = call;
        server->work_tail = call;
        pthread_cond_signal(&server->worker_cond);
        pthread_mutex_unlock(&server->lock);
        client->busy = true;
        return;
    }
    pthread_mutex_unlock(&server->lock);
    call->session = &client->session;
    if (call->command->handler(call) == API_PENDING) {
        client->busy = true;    /* completed later through api_call_complete */
        return;
    }
    pthread_mutex_lock(&server->lock);
    server->outstanding--;
    pthread_mutex_unlock(&server->lock);
    reply = api_call_reply(call, &reply_length);
    api_call_free(call);
    client_send_owned(client, reply, reply_length);
}

/* Runs the client's buffered requests as far as it may, then decides
 * whether it stays, and frees it if not. */
static void client_progress(struct api_server *server, struct api_client *client)
{
    while (!client->dead && !client->closing && !client->busy &&
           out_pending(client) < OUT_HIGH_BYTES) {
        const char *line;
        size_t length;
        enum api_line_status status = api_linebuf_next(&client->in, &line, &length);
        if (status == API_LINE_OVERFLOW) {
            json_t *id = api_id_from_prefix(line, length);
            char message[128];
            snprintf(message, sizeof(message),
                     "request line longer than %d bytes: closing the connection",
                     API_MAX_LINE_BYTES);
            size_t reply_length;
            char *reply = api_reply_error(id, API_ERR_INVALID_REQUEST, message, &reply_length);
            json_decref(id);
            client_send_owned(client, reply, reply_length);
            client->closing = true;
            break;
        }
        if (status == API_LINE_NONE) {
            /* An unterminated last line after a half-close is a request
             * too; after a full close (peer gone) it was cut off. */
            if (client->read_eof && !client->peer_gone && api_linebuf_pending(&client->in) > 0) {
                length = api_linebuf_take_rest(&client->in, &line);
                if (!is_blank(line, length))
                    handle_line(server, client, line, length);
                continue;
            }
            break;
        }
        if (!is_blank(line, length))
            handle_line(server, client, line, length);
    }
    if (!client->dead && !client->busy) {
        bool input_done = client->read_eof &&
                          (client->peer_gone || api_linebuf_pending(&client->in) == 0);
        if ((input_done || client->closing) && (out_pending(client) == 0 || client->peer_gone))
            client->dead = true;
    }
    if (client->dead) {
        client_free(server, client);
        return;
    }
    client_update_mask(server, client);
    if (client->dead)
        client_free(server, client);
}

static void client_read(struct api_client *client)
{
    size_t budget = READ_BUDGET;
    while (budget > 0 && !client->read_eof) {
        if (api_linebuf_pending(&client->in) > API_MAX_LINE_BYTES + 1 &&
            client->in.scanned >= API_MAX_LINE_BYTES + 1)
            break;      /* an over-long line: enough to report it */
        size_t available;
        char *space = api_linebuf_space(&client->in, READ_CHUNK, &available);
        if (!space) {
            fprintf(stderr, "ringvm: api: out of memory for a client's input: disconnected\n");
            client->dead = true;
            return;
        }
        if (available > budget)
            available = budget;
        ssize_t n = recv(client->fd, space, available, MSG_DONTWAIT);
        if (n > 0) {
            api_linebuf_commit(&client->in, (size_t)n);
            budget -= (size_t)n;
            /* Stop early once complete lines are there and the client
             * cannot take more now. */
            continue;
        }
        if (n == 0) {
            client->read_eof = true;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        /* ECONNRESET and friends. */
        client->read_eof = true;
        client->peer_gone = true;
        break;
    }
}

static void client_event(struct api_server *server, struct api_client *client, uint32_t events)
{
    if (events & (EPOLLHUP | EPOLLERR)) {
        /* The peer closed: run what it sent completely, discard replies. */
        client_read(client);
        client->read_eof = true;
        client->peer_gone = true;
        client->out_start = client->out_length = 0;
        if (client->registered) {
            if (epoll_ctl(server->epoll_fd, EPOLL_CTL_DEL, client->fd, NULL) < 0)
                fprintf(stderr, "ringvm: api: epoll_ctl(DEL): %s\n", strerror(errno));
            client->registered = false;
        }
    } else {
        if (events & EPOLLOUT)
            client_flush(client);
        if (events & (EPOLLIN | EPOLLRDHUP))
            client_read(client);
    }
    client_progress(server, client);
}

static void refuse(int fd, enum api_error_code code, const char *message)
{
    size_t length;
    char *line = api_reply_error(NULL, code, message, &length);
    if (line) {
        ssize_t n = send(fd, line, length, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;    /* best effort: the connection is closed either way */
        free(line);
    }
    if (shutdown(fd, SHUT_WR) < 0 && errno != ENOTCONN)
        fprintf(stderr, "ringvm: api: shutdown: %s\n", strerror(errno));
    if (close(fd) < 0)
        fprintf(stderr, "ringvm: api: close: %s\n", strerror(errno));
}

static void accept_clients(struct api_server *server)
{
    for (;;) {
        int fd = accept4(server->listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            fprintf(stderr, "ringvm: api: accept: %s; pausing new connections for 100 ms\n",
                    strerror(errno));
            if (epoll_ctl(server->epoll_fd, EPOLL_CTL_DEL, server->listener.fd, NULL) < 0)
                fprintf(stderr, "ringvm: api: epoll_ctl(DEL listen): %s\n", strerror(errno));
            server->accept_paused_until_ns = monotonic_now_ns() + 100000000ull;
            return;
        }
        struct ucred cred;
        char message[160];
        int allowed = unix_listener_check_peer(fd, &cred, message, sizeof(message));
        if (allowed < 0) {
            fprintf(stderr, "ringvm: api: SO_PEERCRED: %s\n", strerror(-allowed));
            refuse(fd, API_ERR_INTERNAL, "cannot identify the peer (SO_PEERCRED failed)");
            continue;
        }
        if (allowed == 0) {
            fprintf(stderr, "ringvm: api: refused a connection from pid %d: %s\n", (int)cred.pid,
                    message);
            refuse(fd, API_ERR_UNAVAILABLE, message);
            continue;
        }
        unsigned slot = API_MAX_CLIENTS;
        for (unsigned i = 0; i < API_MAX_CLIENTS; i++) {
            if (!server->clients[i]) {
                slot = i;
                break;
            }
        }
        if (slot == API_MAX_CLIENTS) {
            refuse(fd, API_ERR_UNAVAILABLE, "too many clients (at most 32 connections)");
            continue;
        }
        struct api_client *client = calloc(1, sizeof(*client));
        if (!client) {
            refuse(fd, API_ERR_INTERNAL, "out of memory");
            continue;
        }
        client->fd = fd;
        client->slot = slot;
        client->token = (++server->next_generation << 8) | slot;
        client->uid = cred.uid;
        client->pid = cred.pid;
        api_linebuf_init(&client->in, API_MAX_LINE_BYTES);
        client->mask = EPOLLIN | EPOLLRDHUP;
        struct epoll_event event = {.events = client->mask, .data.u64 = client->token};
        if (epoll_ctl(server->epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0) {
            fprintf(stderr, "ringvm: api: epoll_ctl(ADD): %s\n", strerror(errno));
            refuse(fd, API_ERR_INTERNAL, "cannot register the connection");
            free(client);
            continue;
        }
        client->registered = true;
        server->clients[slot] = client;
        atomic_fetch_add_explicit(&server->client_count, 1, memory_order_relaxed);
    }
}

static void drain_queues(struct api_server *server)
{
    uint64_t counter;
    ssize_t n;
    do {
        n = read(server->wake_fd, &counter, sizeof(counter));
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN)
        fprintf(stderr, "ringvm: api: eventfd read: %s\n", strerror(errno));

    pthread_mutex_lock(&server->lock);
    struct api_event_node *events = server->events_head;
    struct api_call *done = server->done_head;
    uint64_t dropped = server->events_dropped;
    server->events_head = server->events_tail = NULL;
    server->events_queued = 0;
    server->done_head = server->done_tail = NULL;
    server->events_dropped = 0;
    pthread_mutex_unlock(&server->lock);

    if (dropped)
        fprintf(stderr, "ringvm: api: %" PRIu64 " events dropped (queue full)\n", dropped);

    /* Events first: a command's state change reaches subscribers before
     * the command's reply. */
    while (events) {
        struct api_event_node *next = events->next;
        for (unsigned i = 0; i < API_MAX_CLIENTS; i++) {
            struct api_client *client = server->clients[i];
            if (client && !client->dead && !client->closing &&
                api_session_wants(&client->session, events->name))
                client_send(client, events->line, events->length);
        }
        free(events->line);
        free(events);
        events = next;
    }
    while (done) {
        struct api_call *next = done->next;
        struct api_client *client = client_by_token(server, done->client_token);
        if (client) {
            size_t length;
            char *reply = api_call_reply(done, &length);
            client->busy = false;
            client_send_owned(client, reply, length);
        }
        api_call_free(done);
        done = next;
    }
    for (unsigned i = 0; i < API_MAX_CLIENTS; i++)
        if (server->clients[i])
            client_progress(server, server->clients[i]);
}

static void flush_and_close_all(struct api_server *server)
{
    drain_queues(server);
    if (epoll_ctl(server->epoll_fd, EPOLL_CTL_DEL, server->listener.fd, NULL) < 0 && errno != ENOENT)
        fprintf(stderr, "ringvm: api: epoll_ctl(DEL listen): %s\n", strerror(errno));
    uint64_t deadline = monotonic_now_ns() + FLUSH_ON_STOP_MS * 1000000ull;
    for (;;) {
        bool pending = false;
        for (unsigned i = 0; i < API_MAX_CLIENTS; i++) {
            struct api_client *client = server->clients[i];
            if (client && !client->dead && !client->peer_gone && out_pending(client) > 0)
                pending = true;
        }
        uint64_t now = monotonic_now_ns();
        if (!pending || now >= deadline)
            break;
        struct epoll_event events[API_MAX_CLIENTS + 2];
        int n = epoll_wait(server->epoll_fd, events, API_MAX_CLIENTS + 2,
                           (int)((deadline - now) / 1000000ull) + 1);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "ringvm: api: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            struct api_client *client = client_by_token(server, events[i].data.u64);
            if (!client)
                continue;
            if (events[i].events & (EPOLLHUP | EPOLLERR))
                client->peer_gone = true;
            else if (events[i].events & EPOLLOUT)
                client_flush(client);
        }
    }
    for (unsigned i = 0; i < API_MAX_CLIENTS; i++)
        if (server->clients[i])
            client_free(server, server->clients[i]);
}

/* EEVDF (Linux >= 6.12): a short time slice for this SCHED_OTHER thread
 * gives it an early virtual deadline, so on wake-up it preempts the vCPU
 * and harvester threads instead of waiting up to a full slice (~3 ms on 2
 * CPUs). It runs for microseconds per request, so it costs them nothing.
 * Unprivileged; older kernels ignore or refuse it (then nothing changes). */
struct api_sched_attr {        /* struct sched_attr (linux/sched/types.h clashes with glibc) */
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
};

static void request_short_slice(void)
{
    struct api_sched_attr attr = {
        .size = sizeof(attr),
        .sched_policy = 0,          /* SCHED_OTHER */
        .sched_runtime = 100000,    /* ns */
    };
    if (syscall(SYS_sched_setattr, 0, &attr, 0) < 0 && errno != EINVAL && errno != E2BIG &&
        errno != EPERM && errno != ENOSYS)
        fprintf(stderr, "ringvm: api: sched_setattr: %s\n", strerror(errno));
}

static void *epoll_main(void *argument)
{
    struct api_server *server = argument;
    pthread_setname_np(pthread_self(), "api");
    request_short_slice();
    struct epoll_event events[64];
    while (!atomic_load_explicit(&server->stop, memory_order_acquire)) {
        int timeout = -1;
        if (server->accept_paused_until_ns) {
            uint64_t now = monotonic_now_ns();
            if (now >= server->accept_paused_until_ns) {
                struct epoll_event event = {.events = EPOLLIN, .data.u64 = TOKEN_LISTEN};
                if (epoll_ctl(server->epoll_fd, EPOLL_CTL_ADD, server->listener.fd, &event) < 0)
                    fprintf(stderr, "ringvm: api: epoll_ctl(ADD listen): %s\n", strerror(errno));
                server->accept_paused_until_ns = 0;
            } else {
                timeout = (int)((server->accept_paused_until_ns - now) / 1000000ull) + 1;
            }
        }
        int n = epoll_wait(server->epoll_fd, events, 64, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ringvm: api: epoll_wait: %s; the API stops\n", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t token = events[i].data.u64;
            if (token == TOKEN_LISTEN) {
                accept_clients(server);
            } else if (token == TOKEN_WAKE) {
                drain_queues(server);
            } else {
                struct api_client *client = client_by_token(server, token);
                if (client)
                    client_event(server, client, events[i].events);
            }
        }
    }
    flush_and_close_all(server);
    return NULL;
}

/* ---- threads --------------------------------------------------------------------------- */

static int start_thread(pthread_t *thread, void *(*fn)(void *), void *argument, const char *what)
{
    int result = thread_create_without_signals(thread, fn, argument);
    if (result != 0) {
        fprintf(stderr, "ringvm: api: pthread_create(%s): %s\n", what, strerror(result));
        return -result;
    }
    return 0;
}

static void server_free(struct api_server *server)
{
    unix_listener_close(&server->listener);
    if (server->wake_fd >= 0)
        close(server->wake_fd);
    if (server->epoll_fd >= 0)
        close(server->epoll_fd);
    while (server->events_head) {
        struct api_event_node *next = server->events_head->next;
        free(server->events_head->line);
        free(server->events_head);
        server->events_head = next;
    }
    while (server->done_head) {
        struct api_call *next = server->done_head->next;
        api_call_free(server->done_head);
        server->done_head = next;
    }
    pthread_mutex_destroy(&server->lock);
    pthread_cond_destroy(&server->worker_cond);
    pthread_cond_destroy(&server->outstanding_cond);
    free(server);
}

int api_server_create_with(struct api_server **out, struct vm *vm, const char *socket_path,
                           const struct api_command_group *const *groups)
{
    *out = NULL;
    struct api_server *server = calloc(1, sizeof(*server));
    if (!server) {
        fprintf(stderr, "ringvm: api: out of memory\n");
        return -ENOMEM;
    }
    server->vm = vm;
    server->groups = groups;
    server->listener.fd = server->listener.lock_fd = server->wake_fd = server->epoll_fd = -1;
    pthread_mutex_init(&server->lock, NULL);
    pthread_cond_init(&server->worker_cond, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&server->outstanding_cond, &attr);
    pthread_condattr_destroy(&attr);
    int result = unix_listener_open(&server->listener, socket_path, "--api-socket", "api");
    if (result < 0) {
        server_free(server);
        return result;
    }
    server->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    server->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (server->wake_fd < 0 || server->epoll_fd < 0) {
        result = -errno;
        fprintf(stderr, "ringvm: api: %s: %s\n", server->wake_fd < 0 ? "eventfd" : "epoll_create1",
                strerror(errno));
        server_free(server);
        return result;
    }
    struct epoll_event listen_event = {.events = EPOLLIN, .data.u64 = TOKEN_LISTEN};
    struct epoll_event wake_event = {.events = EPOLLIN, .data.u64 = TOKEN_WAKE};
    if (epoll_ctl(server->epoll_fd, EPOLL_CTL_ADD, server->listener.fd, &listen_event) < 0 ||
        epoll_ctl(server->epoll_fd, EPOLL_CTL_ADD, server->wake_fd, &wake_event) < 0) {
        result = -errno;
        fprintf(stderr, "ringvm: api: epoll_ctl: %s\n", strerror(errno));
        server_free(server);
        return result;
    }
    if (vm && (result = hook_attach(server)) < 0) {
        server_free(server);
        return result;
    }
    if ((result = start_thread(&server->worker_thread, worker_main, server, "api-worker")) < 0) {
        hook_detach(server);
        server_free(server);
        return result;
    }
    server->worker_started = true;
    if ((result = start_thread(&server->epoll_thread, epoll_main, server, "api")) < 0) {
        api_server_destroy(server);
        return result;
    }
    server->epoll_started = true;
    *out = server;
    return 0;
}

int api_server_create(struct api_server **out, struct vm *vm, const char *socket_path)
{
    return api_server_create_with(out, vm, socket_path, api_command_groups);
}

void api_server_destroy(struct api_server *server)
{
    if (!server)
        return;
    /* 1. No new VM events; the ones already queued are still delivered. */
    hook_detach(server);

    /* 2. The worker finishes its current command; queued ones are refused. */
    pthread_mutex_lock(&server->lock);
    server->worker_stop = true;
    pthread_cond_broadcast(&server->worker_cond);
    pthread_mutex_unlock(&server->lock);
    if (server->worker_started)
        pthread_join(server->worker_thread, NULL);
    pthread_mutex_lock(&server->lock);
    struct api_call *queued = server->work_head;
    server->work_head = server->work_tail = NULL;
    pthread_mutex_unlock(&server->lock);
    while (queued) {
        struct api_call *next = queued->next;
        api_call_fail(queued, API_ERR_UNAVAILABLE, "the API server is shutting down");
        api_call_complete(queued);
        queued = next;
    }

    /* 3. Calls another subsystem kept (API_PENDING) must come back before
     * the server goes away. */
    struct timespec deadline = monotonic_deadline_after_ns(PENDING_WAIT_MS * 1000000ull);
    pthread_mutex_lock(&server->lock);
    while (server->outstanding > 0) {
        if (pthread_cond_timedwait(&server->outstanding_cond, &server->lock, &deadline) == ETIMEDOUT)
            break;
    }
    int outstanding = server->outstanding;
    pthread_mutex_unlock(&server->lock);

    /* 4. The epoll thread delivers what is queued, flushes and closes. */
    atomic_store_explicit(&server->stop, true, memory_order_release);
    if (server->epoll_started) {
        wake(server);
        pthread_join(server->epoll_thread, NULL);
    }
    if (outstanding > 0) {
        /* Freeing would let a late api_call_complete write freed memory. */
        fprintf(stderr, "ringvm: api: %d command(s) still in progress at shutdown; "
                        "keeping the server's memory\n", outstanding);
        unix_listener_remove_file(&server->listener);
        return;
    }
    server_free(server);
}
