// gate.c - the connection gate of `forge serve`: one thread that owns the listening socket and
// every connection until its request head is complete. It accepts (refusing with a 503 beyond
// --max-conns in total or --max-conns-per-ip from one address, after first evicting the oldest
// connection still sending its head), peeks at the bytes without consuming them, checks the
// head (http_head.c: a malformed one gets one well-formed JSON error), and hands the socket to
// one of the libmicrohttpd workers (round robin; they read the same bytes). It keeps a record of
// each connection until the worker closes it, so the whole request, head and body, has one
// deadline (--request-timeout), however slowly it trickles. Every 50 ms it also runs the
// server's sweep (fg_srv_sweep). Not here: HTTP semantics (server.c) or handlers (api_*.c).
#include "server/server_internal.h"

#include "base/status.h"
#include "base/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define GATE_MAX_HEAD 16384      // request head limit (431 beyond)
#define GATE_TICK_S 0.05         // sweep period
#define GATE_PEEK_FREE 8         // pieces of a head looked at as they arrive...
#define GATE_PEEK_QUIET_S 0.05   // ...then at most once per this (a trickle costs little)
#define GATE_HANDED_STALE_S 10.0 // a handed socket its worker never reported: forget it
#define GATE_ACCEPT_BATCH 32     // connections accepted per loop turn
#define GATE_EVICT_AGE_S 0.5     // a head this old may be closed to make room for a new one
#define GATE_PENDING_S 0.25      // a provisional connection's time to complete its head
#define GATE_MAX_PENDING 64      // provisional connections (over the limits) at once

static char k_listen_tag, k_wake_tag; // epoll tags besides srv_sock pointers

static const char *reason_phrase(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

void fg_srv_gate_write_error(fg_server *s, int fd, int status, const char *code,
                             const char *message) {
    json_t *j = fg_srv_error_json(message, status == 503 ? "server_error" : "invalid_request_error",
                                  NULL, code);
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!body)
        return;
    char rid[SRV_ID_HEX + 8] = "req-";
    if (!fg_srv_random_hex(rid + 4, SRV_ID_HEX))
        rid[4] = '\0';
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\nX-Request-Id: %s\r\n%s\r\n",
                      status, reason_phrase(status), strlen(body) + 1, rid,
                      status == 503 ? "Retry-After: 1\r\n" : "");
    char out[1536];
    int n = snprintf(out, sizeof out, "%.*s%s\n", hn, head, body);
    free(body);
    if (n > 0 && (size_t)n < sizeof out) { // a fresh socket's buffer takes it whole
        ssize_t w = send(fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    fg_srv_count_status(s, status);
}

// Closes a socket the gate owns: after our last bytes, read what the client had sent (so the
// close is a FIN, not a reset that could destroy the answer in flight).
static void close_drained(int fd) {
    shutdown(fd, SHUT_WR);
    char buf[4096];
    for (int i = 0; i < 16; i++)
        if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0)
            break;
    close(fd);
}

static void ip_key(const struct sockaddr_storage *ss, unsigned char ip[16]) {
    memset(ip, 0, 16);
    if (ss->ss_family == AF_INET) {
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

static void ip_text(const unsigned char ip[16], char *out, size_t n) {
    static const unsigned char v4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!memcmp(ip, v4, 12)) {
        if (!inet_ntop(AF_INET, ip + 12, out, (socklen_t)n))
            snprintf(out, n, "?");
    } else if (!inet_ntop(AF_INET6, ip, out, (socklen_t)n)) {
        snprintf(out, n, "?");
    }
}

// ---- the table (g->mu held)
// A record counts against the limits while linked and not doomed: in n_live, or in n_pending
// while provisional.
static void count(srv_gate *g, const srv_sock *e, int d) {
    if (!e->linked || e->doomed)
        return;
    if (e->provisional)
        g->n_pending += d;
    else
        g->n_live += d;
}

static void sock_link(srv_gate *g, srv_sock *e) {
    e->prev = g->tail;
    e->next = NULL;
    if (g->tail)
        g->tail->next = e;
    else
        g->head = e;
    g->tail = e;
    e->linked = true;
    e->refs++;
    count(g, e, +1);
}

static void sock_unlink(srv_gate *g, srv_sock *e) {
    if (!e->linked)
        return;
    count(g, e, -1);
    if (e->prev)
        e->prev->next = e->next;
    else
        g->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        g->tail = e->prev;
    e->prev = e->next = NULL;
    e->linked = false;
    e->refs--;
}

static void sock_doom(srv_gate *g, srv_sock *e) {
    count(g, e, -1);
    e->doomed = true;
}

static void sock_unref(srv_sock *e) {
    if (--e->refs == 0)
        free(e);
}

// A socket in its head, closed by the gate (gate thread, g->mu held): answered first when
// status is not 0. Its record is freed after the current loop turn (an event may name it).
static void head_close(fg_server *s, srv_sock *e, int status, const char *code,
                       const char *msg) {
    srv_gate *g = &s->gate;
    if (status)
        fg_srv_gate_write_error(s, e->fd, status, code, msg);
    close_drained(e->fd);
    e->fd = -1;
    sock_doom(g, e);
    sock_unlink(g, e);
    e->next = g->grave;
    g->grave = e;
}

static void free_grave(srv_gate *g) {
    while (g->grave) {
        srv_sock *e = g->grave;
        g->grave = e->next;
        free(e);
    }
}

// A socket in a worker whose body is late, or that must make room: shut down under the worker,
// which sees the end of the stream and closes it (its NOTIFY_CLOSED unlinks the record).
static void body_close(fg_server *s, srv_sock *e, const char *msg) {
    fg_srv_gate_write_error(s, e->fd, 408, "request_timeout", msg);
    shutdown(e->fd, SHUT_RDWR);
    sock_doom(&s->gate, e);
}

static void refuse_msg(fg_server *s, const unsigned char *ip, bool ip_full, char *msg, size_t n) {
    char ipt[INET6_ADDRSTRLEN];
    ip_text(ip, ipt, sizeof ipt);
    if (ip_full)
        snprintf(msg, n, "too many open connections from %s (limit %d per address); retry later",
                 ipt, s->opts.max_conns_per_ip);
    else
        snprintf(msg, n, "too many open connections (limit %d); retry later", s->opts.max_conns);
}

// Makes room for one more counted connection from ip (g->mu held): under the limits there is
// room; at a limit, a connection still sending its head or body is closed for it, the oldest
// first (from the same address when that address is at its limit). A connection whose head is
// complete may displace any of them; one still sending its head only a connection that has had
// GATE_EVICT_AGE_S to send its own (so a flood of new connections cannot churn through the
// slots). False, with the refusal's message, when nothing may be displaced.
static bool make_room(fg_server *s, const unsigned char *ip, bool head_done, double now,
                      char *msg, size_t msg_n) {
    srv_gate *g = &s->gate;
    int32_t n_ip = 0;
    for (srv_sock *e = g->head; e; e = e->next)
        if (!e->doomed && !e->provisional && !memcmp(e->ip, ip, 16))
            n_ip++;
    bool ip_full = n_ip >= s->opts.max_conns_per_ip;
    if (!ip_full && g->n_live < s->opts.max_conns)
        return true;
    double born_before = head_done ? now : now - GATE_EVICT_AGE_S;
    srv_sock *v = NULL, *body = NULL;
    for (srv_sock *e = g->head; e && !v; e = e->next) {
        if (e->doomed || e->provisional || e->t_open > born_before ||
            (ip_full && memcmp(e->ip, ip, 16)))
            continue;
        if (e->phase == SOCK_HEAD)
            v = e;
        else if (e->phase == SOCK_BODY && !body)
            body = e;
    }
    v = v ? v : body;
    if (!v) {
        refuse_msg(s, ip, ip_full, msg, msg_n);
        return false;
    }
    char why[160];
    snprintf(why, sizeof why,
             "connection closed to make room: its request was incomplete after %.1f s",
             now - v->t_open);
    if (v->phase == SOCK_HEAD)
        head_close(s, v, 408, "request_timeout", why);
    else
        body_close(s, v, why);
    atomic_fetch_add(&g->refused[SRV_REFUSE_EVICTED], 1);
    return true;
}

static void hand_off(fg_server *s, srv_sock *e, double now);

// A new connection. Its head is looked at at once (under load it has usually arrived with the
// connection): complete, it goes to a worker; not yet, the gate watches it. At a limit with no
// room, a connection still sending its head may wait provisionally (GATE_PENDING_S, at most
// GATE_MAX_PENDING of them, not counted) for its head and a place; otherwise it gets a 503.
static void admit(fg_server *s, int fd, const struct sockaddr_storage *ss, socklen_t sl,
                  double now, char *buf) {
    srv_gate *g = &s->gate;
    unsigned char ip[16];
    ip_key(ss, ip);
    ssize_t n = recv(fd, buf, GATE_MAX_HEAD, MSG_PEEK | MSG_DONTWAIT);
    fg_http_head_verdict v;
    int rc = n > 0 ? fg_http_head_check(buf, (size_t)n, GATE_MAX_HEAD, &v) : 0;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        close(fd); // gone already
        return;
    }
    if (rc < 0) {
        fg_srv_gate_write_error(s, fd, v.status, v.status == 431 ? "request_head_too_large"
                                                 : v.status == 413 ? "request_too_large"
                                                 : v.status == 505 ? "http_version_not_supported"
                                                 : v.status == 501 ? "not_implemented"
                                                                   : "malformed_request",
                                v.message);
        close_drained(fd);
        atomic_fetch_add(&g->refused[SRV_REFUSE_MALFORMED], 1);
        return;
    }
    char msg[160];
    pthread_mutex_lock(&g->mu);
    bool room = make_room(s, ip, rc > 0, now, msg, sizeof msg);
    bool provisional = !room && rc == 0 && g->n_pending < GATE_MAX_PENDING;
    if (!room && !provisional) {
        pthread_mutex_unlock(&g->mu);
        fg_srv_gate_write_error(s, fd, 503, "too_many_connections", msg);
        close_drained(fd);
        atomic_fetch_add(&g->refused[SRV_REFUSE_LIMIT], 1);
        return;
    }
    srv_sock *e = fg_xcalloc(1, sizeof *e);
    e->fd = fd;
    e->phase = SOCK_HEAD;
    e->provisional = provisional;
    memcpy(&e->addr, ss, sl);
    e->addr_len = sl;
    memcpy(e->ip, ip, 16);
    e->t_open = e->t_peek = now;
    sock_link(g, e);
    if (rc > 0) {
        pthread_mutex_unlock(&g->mu);
        hand_off(s, e, now);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = e};
    if (epoll_ctl(g->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0)
        head_close(s, e, 503, "server_busy", "the server cannot watch more connections");
    pthread_mutex_unlock(&g->mu);
}

// Accepts what waits, up to a batch (the listener is level-triggered: the rest comes next turn,
// after the heads that arrived meanwhile have been looked at).
static void accept_some(fg_server *s, double now, char *buf) {
    srv_gate *g = &s->gate;
    for (int k = 0; k < GATE_ACCEPT_BATCH; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(g->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // out of descriptors: stop watching the listener until the next tick (the
                // backlog waits) instead of spinning on it
                struct epoll_event ev = {.events = 0, .data.ptr = &k_listen_tag};
                epoll_ctl(g->epoll_fd, EPOLL_CTL_MOD, g->listen_fd, &ev);
                g->listen_paused = true;
            }
            return;
        }
        if (sl > sizeof ss || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
            close(fd);
            continue;
        }
        admit(s, fd, &ss, sl, now, buf);
    }
}

// Gives a socket whose head is complete to a worker.
static void hand_off(fg_server *s, srv_sock *e, double now) {
    srv_gate *g = &s->gate;
    epoll_ctl(g->epoll_fd, EPOLL_CTL_DEL, e->fd, NULL); // (not watched yet: harmless)
    pthread_mutex_lock(&g->mu);
    e->phase = SOCK_HANDED;
    e->t_handed = now;
    e->refs++; // the gate's, until MHD_add_connection returns
    struct MHD_Daemon *w = g->workers[g->next_worker++ % (uint32_t)g->n_workers];
    pthread_mutex_unlock(&g->mu);
    enum MHD_Result ok = MHD_add_connection(w, e->fd, (const struct sockaddr *)&e->addr,
                                            e->addr_len); // the worker owns the fd now
    pthread_mutex_lock(&g->mu);
    if (ok != MHD_YES && e->phase == SOCK_HANDED)
        sock_unlink(g, e); // closed by MHD without a NOTIFY_CONNECTION
    sock_unref(e);
    pthread_mutex_unlock(&g->mu);
}

// Looks at the bytes a socket in its head has sent so far.
static void look(fg_server *s, srv_sock *e, double now, char *buf, bool hup) {
    srv_gate *g = &s->gate;
    ssize_t n = recv(e->fd, buf, GATE_MAX_HEAD, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) && !hup)
        return;
    e->t_peek = now;
    e->n_peeks++;
    e->dirty = false;
    fg_http_head_verdict v;
    int rc = n > 0 ? fg_http_head_check(buf, (size_t)n, GATE_MAX_HEAD, &v) : 0;
    if (rc > 0) {
        char msg[160];
        pthread_mutex_lock(&g->mu);
        if (e->provisional) { // its head is complete: now it may take a place
            if (!make_room(s, e->ip, true, now, msg, sizeof msg)) {
                head_close(s, e, 503, "too_many_connections", msg);
                atomic_fetch_add(&g->refused[SRV_REFUSE_LIMIT], 1);
                pthread_mutex_unlock(&g->mu);
                return;
            }
            count(g, e, -1);
            e->provisional = false;
            count(g, e, +1);
        }
        pthread_mutex_unlock(&g->mu);
        hand_off(s, e, now);
        return;
    }
    if (rc == 0 && !hup && n > 0)
        return; // wait for the rest
    pthread_mutex_lock(&g->mu);
    if (rc < 0) {
        const char *code = v.status == 431   ? "request_head_too_large"
                           : v.status == 413 ? "request_too_large"
                           : v.status == 505 ? "http_version_not_supported"
                           : v.status == 501 ? "not_implemented"
                                             : "malformed_request";
        head_close(s, e, v.status, code, v.message);
        atomic_fetch_add(&g->refused[SRV_REFUSE_MALFORMED], 1);
    } else {
        head_close(s, e, 0, NULL, NULL); // the client left (or failed) before its head ended
    }
    pthread_mutex_unlock(&g->mu);
}

// Deadlines, stale hand-overs, heads that trickled in while the gate looked away.
static void sweep_socks(fg_server *s, char *buf, double now) {
    srv_gate *g = &s->gate;
    double limit = s->opts.request_timeout_s;
    srv_sock *dirty[64];
    int n_dirty = 0;
    char msg[160];
    pthread_mutex_lock(&g->mu);
    for (srv_sock *e = g->head, *next; e; e = next) {
        next = e->next;
        if (e->doomed)
            continue;
        if (e->provisional && now - e->t_open > GATE_PENDING_S) {
            head_close(s, e, 503, "too_many_connections",
                       "too many open connections and this one's request did not arrive; "
                       "retry later");
            atomic_fetch_add(&g->refused[SRV_REFUSE_LIMIT], 1);
            continue;
        }
        bool late = now - e->t_open > limit;
        if (late && (e->phase == SOCK_HEAD || e->phase == SOCK_BODY)) {
            snprintf(msg, sizeof msg, "the request %s did not arrive within %g s",
                     e->phase == SOCK_HEAD ? "head" : "body", limit);
            if (e->phase == SOCK_HEAD)
                head_close(s, e, 408, "request_timeout", msg);
            else
                body_close(s, e, msg);
            atomic_fetch_add(&g->refused[SRV_REFUSE_DEADLINE], 1);
        } else if (e->phase == SOCK_HEAD && e->dirty && n_dirty < 64) {
            dirty[n_dirty++] = e;
        } else if (e->phase == SOCK_HANDED && now - e->t_handed > GATE_HANDED_STALE_S) {
            sock_unlink(g, e); // never reported by its worker: its fd is not ours to touch
            if (e->refs == 0)
                free(e);
        }
    }
    pthread_mutex_unlock(&g->mu);
    for (int i = 0; i < n_dirty; i++) // HEAD records are only freed by this thread
        look(s, dirty[i], now, buf, false);
}

static void close_listener(fg_server *s) {
    srv_gate *g = &s->gate;
    if (g->listen_fd < 0)
        return;
    epoll_ctl(g->epoll_fd, EPOLL_CTL_DEL, g->listen_fd, NULL);
    close(g->listen_fd);
    g->listen_fd = -1;
    pthread_mutex_lock(&g->mu);
    for (srv_sock *e = g->head, *next; e; e = next) {
        next = e->next;
        if (e->phase == SOCK_HEAD) {
            head_close(s, e, 503, "shutting_down", "the server is shutting down");
            atomic_fetch_add(&g->refused[SRV_REFUSE_STOPPING], 1);
        }
    }
    pthread_mutex_unlock(&g->mu);
}

static void *gate_main(void *arg) {
    fg_server *s = arg;
    srv_gate *g = &s->gate;
    char *buf = fg_xmalloc(GATE_MAX_HEAD);
    struct epoll_event ev[64];
    double next_tick = 0;
    while (!atomic_load(&g->stop)) {
        int n = epoll_wait(g->epoll_fd, ev, 64, (int)(GATE_TICK_S * 1000));
        double now = fg_time_s();
        for (int i = 0; i < n; i++) {
            void *tag = ev[i].data.ptr;
            if (tag == &k_wake_tag) {
                uint64_t x;
                ssize_t r = read(g->wake_fd, &x, sizeof x);
                (void)r;
                continue;
            }
            if (tag == &k_listen_tag) {
                if (!atomic_load(&g->stop_accepting))
                    accept_some(s, now, buf);
                continue;
            }
            srv_sock *e = tag;
            if (e->fd < 0 || e->phase != SOCK_HEAD)
                continue;
            bool hup = (ev[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
            if (!hup && e->n_peeks >= GATE_PEEK_FREE && now - e->t_peek < GATE_PEEK_QUIET_S) {
                e->dirty = true; // a trickle: looked at by the sweep
                continue;
            }
            look(s, e, now, buf, hup);
        }
        free_grave(g);
        if (atomic_load(&g->stop_accepting))
            close_listener(s);
        if (now >= next_tick) {
            next_tick = now + GATE_TICK_S;
            sweep_socks(s, buf, now);
            free_grave(g);
            fg_srv_sweep(s, now);
            if (g->listen_paused && g->listen_fd >= 0) {
                struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &k_listen_tag};
                epoll_ctl(g->epoll_fd, EPOLL_CTL_MOD, g->listen_fd, &lev);
                g->listen_paused = false;
            }
        }
    }
    close_listener(s);
    free_grave(g);
    free(buf);
    return NULL;
}

// ---- notifications from the workers
void fg_srv_gate_notify(void *cls, struct MHD_Connection *con, void **socket_context,
                        enum MHD_ConnectionNotificationCode code) {
    fg_server *s = cls;
    srv_gate *g = &s->gate;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
        int fd = ci ? ci->connect_fd : -1;
        srv_sock *found = NULL;
        pthread_mutex_lock(&g->mu);
        for (srv_sock *e = g->tail; e && fd >= 0; e = e->prev)
            if (e->fd == fd && e->phase == SOCK_HANDED) {
                found = e;
                break;
            }
        if (found) {
            found->phase = SOCK_BODY;
            found->refs++; // the worker's, until NOTIFY_CLOSED
        }
        pthread_mutex_unlock(&g->mu);
        *socket_context = found;
        return;
    }
    srv_sock *e = *socket_context;
    if (code != MHD_CONNECTION_NOTIFY_CLOSED || !e)
        return;
    pthread_mutex_lock(&g->mu);
    sock_unlink(g, e); // before the worker closes the fd: nobody touches it after this
    sock_unref(e);
    pthread_mutex_unlock(&g->mu);
    *socket_context = NULL;
}

bool fg_srv_gate_request_in(fg_server *s, srv_conn *c) {
    srv_sock *e = c->sock;
    if (!e)
        return true;
    pthread_mutex_lock(&s->gate.mu);
    bool ok = !e->doomed;
    if (ok)
        e->phase = SOCK_BUSY;
    pthread_mutex_unlock(&s->gate.mu);
    return ok;
}

int32_t fg_srv_gate_n_open(fg_server *s) {
    pthread_mutex_lock(&s->gate.mu);
    int32_t n = s->gate.n_live;
    pthread_mutex_unlock(&s->gate.mu);
    return n;
}

// ---- lifecycle
fg_status fg_srv_gate_listen(fg_server *s, const char *host, int32_t port, int32_t *bound_port) {
    srv_gate *g = &s->gate;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int gai = getaddrinfo(host, service, &hints, &ai);
    if (gai != 0 || !ai) {
        if (ai)
            freeaddrinfo(ai);
        return FG_FAIL(FG_ERR_INVALID_ARG, "--host: cannot resolve '%s': %s", host,
                       gai ? gai_strerror(gai) : "no address");
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        // accept() returns a connection once its first bytes are in: a prompt client's head is
        // then complete when the gate first looks (admit), which is what lets it displace a
        // slow one at the limits
        int defer_s = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof defer_s);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return FG_FAIL(FG_ERR_IO, "serve: cannot listen on %s:%d: %s", host, port,
                       strerror(err));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int32_t bp = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        bp = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port);
    g->listen_fd = fd;
    *bound_port = bp;
    return FG_OK;
}

fg_status fg_srv_gate_start(fg_server *s) {
    srv_gate *g = &s->gate;
    g->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g->epoll_fd < 0 || g->wake_fd < 0)
        return FG_FAIL(FG_ERR_IO, "serve: epoll/eventfd: %s", strerror(errno));
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &k_listen_tag};
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &k_wake_tag};
    if (epoll_ctl(g->epoll_fd, EPOLL_CTL_ADD, g->listen_fd, &lev) != 0 ||
        epoll_ctl(g->epoll_fd, EPOLL_CTL_ADD, g->wake_fd, &wev) != 0)
        return FG_FAIL(FG_ERR_IO, "serve: epoll_ctl: %s", strerror(errno));
    int rc = pthread_create(&g->thread, NULL, gate_main, s);
    if (rc != 0)
        return FG_FAIL(FG_ERR_IO, "serve: cannot start the gate thread: %s", strerror(rc));
    g->started = true;
    return FG_OK;
}

static void wake(srv_gate *g) {
    uint64_t one = 1;
    if (g->wake_fd >= 0) {
        ssize_t w = write(g->wake_fd, &one, sizeof one);
        (void)w;
    }
}

void fg_srv_gate_stop_accepting(fg_server *s) {
    atomic_store(&s->gate.stop_accepting, true);
    wake(&s->gate);
}

void fg_srv_gate_stop(fg_server *s) {
    srv_gate *g = &s->gate;
    if (!g->started)
        return;
    atomic_store(&g->stop_accepting, true);
    atomic_store(&g->stop, true);
    wake(g);
    pthread_join(g->thread, NULL);
    g->started = false;
}

void fg_srv_gate_destroy(fg_server *s) {
    srv_gate *g = &s->gate;
    fg_srv_gate_stop(s);
    if (g->listen_fd >= 0)
        close(g->listen_fd);
    if (g->epoll_fd >= 0)
        close(g->epoll_fd);
    if (g->wake_fd >= 0)
        close(g->wake_fd);
    g->listen_fd = g->epoll_fd = g->wake_fd = -1;
    // records left: HEAD ones were closed by the gate thread; the rest belong to workers that
    // are stopped by now (their NOTIFY_CLOSED ran) or were never reported
    pthread_mutex_lock(&g->mu);
    while (g->head) {
        srv_sock *e = g->head;
        sock_unlink(g, e);
        if (e->refs == 0)
            free(e);
    }
    pthread_mutex_unlock(&g->mu);
    free_grave(g);
}
