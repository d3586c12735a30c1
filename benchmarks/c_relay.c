/* A bare relay in C: the floor for a compiled proxy on this machine.
 *
 * benchmarks/bare_relay.py's twin, for the question the Python floors cannot
 * answer: what would a relay whose hot path is compiled, as PgBouncer's is,
 * keep of PgBouncer's rate once it writes one hash-chained line per
 * statement as DESIGN.md asks?  One thread, one epoll loop, level-triggered,
 * a 256 KiB read buffer; it accepts TCP connections and pipes bytes to and
 * from the upstream server, parsing nothing (the client logs in to the
 * server through it).  A partial write keeps the rest and stops reading the
 * other side until it is written (back-pressure both ways).
 *
 * With --record DIR it does what bare_relay.py --record does, and nothing
 * else: per session one file in DIR, and for each ReadyForQuery the server
 * sends (found by its type and length bytes; one split across two reads is
 * missed: enough for pgbench, not a recording anyone could use), before the
 * bytes go on to the client, one JSON line shaped like pgwarden's statement
 * record carrying the SHA-256 of the line before, written with one write(2).
 * The clock is read when the client's bytes come and when the answer does;
 * the date and time of day are formatted once per second.
 *
 *     cc -O2 -o c_relay benchmarks/c_relay.c -lcrypto
 *     ./c_relay --listen 6433 --upstream 127.0.0.1:5432 [--record DIR]
 *
 * benchmarks/env.py builds it (build_c_relay) and the suite's --bare paths
 * run it where a C compiler and libcrypto's headers are present.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)
#define MAX_EVENTS 256

static const char READY[5] = {'Z', 0, 0, 0, 5};   /* ReadyForQuery: type, length 5 (its status byte follows) */
/* A pgwarden statement record of pgbench -S -M prepared, field for field (about 380 bytes): bare_relay.py's _LINE. */
static const char LINE[] =
    "{\"class\":\"read\",\"decision\":\"allowed\",\"duration_ms\":%.3f,\"params\":[\"%lu\"],\"prev\":\"%s\",\"rows\":1,"
    "\"rule\":\"read.select\",\"seq\":%lu,\"started\":\"%s\",\"tag\":\"SELECT 1\","
    "\"text\":\"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\",\"ts\":\"%s\",\"type\":\"statement\","
    "\"via\":\"execute\"}\n";

struct recording {
    int fd;
    unsigned long n;
    char prev[65];
    struct timespec started;
    time_t second;          /* the second _prefix was formatted for */
    char prefix[32];
};

struct end {                /* one socket of a client/server pair */
    int fd;
    int connecting;         /* the server side, until its connect() completes */
    int closed;
    struct end *peer;
    struct recording *rec;  /* the server side, with --record */
    char *pending;          /* bytes read from the peer and not yet written to this socket */
    size_t plen, poff;
    struct end *next_dead;
};

static int epfd;
static const char *record_dir;
static struct sockaddr_in upstream;
static struct end *dead;    /* closed in this batch of events, freed after it */
static unsigned long files;

static void die(const char *what) { perror(what); exit(1); }

static void ctl(int op, struct end *e, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = e};
    if (epoll_ctl(epfd, op, e->fd, &ev) < 0) die("epoll_ctl");
}

/* What epoll watches an end for: its bytes while its peer has nothing pending for it to read after
 * (back-pressure), room to write while it has something pending. */
static void update(struct end *e) {
    ctl(EPOLL_CTL_MOD, e, (e->peer->pending ? 0 : EPOLLIN) | (e->pending ? EPOLLOUT : 0));
}

static void close_end(struct end *e) {
    if (e->closed) return;
    e->closed = 1;
    close(e->fd);            /* also leaves the epoll set */
    if (e->rec) { close(e->rec->fd); free(e->rec); e->rec = NULL; }
    free(e->pending);
    e->pending = NULL;
    e->next_dead = dead;
    dead = e;
}

static void close_pair(struct end *e) {
    struct end *peer = e->peer;
    close_end(e);
    if (peer) close_end(peer);
}

static void iso(struct recording *r, const struct timespec *t, char *out, size_t size) {
    if (t->tv_sec != r->second) {
        struct tm tm;
        r->second = t->tv_sec;
        gmtime_r(&t->tv_sec, &tm);
        strftime(r->prefix, sizeof r->prefix, "%Y-%m-%dT%H:%M:%S", &tm);
    }
    snprintf(out, size, "%s.%06dZ", r->prefix, (int)(t->tv_nsec / 1000));
}

static int record_line(struct recording *r) {
    static const char hex[] = "0123456789abcdef";
    char line[1024], started[64], ts[64];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    r->n++;
    double ms = (now.tv_sec - r->started.tv_sec) * 1e3 + (now.tv_nsec - r->started.tv_nsec) / 1e6;
    iso(r, &r->started, started, sizeof started);
    iso(r, &now, ts, sizeof ts);
    int len = snprintf(line, sizeof line, LINE, ms, r->n, r->prev, r->n, started, ts);
    if (len < 0 || (size_t)len >= sizeof line) return -1;
    if (!EVP_Digest(line, (size_t)len, md, &mdlen, EVP_sha256(), NULL)) return -1;
    for (unsigned i = 0; i < 32; i++) {
        r->prev[2 * i] = hex[md[i] >> 4];
        r->prev[2 * i + 1] = hex[md[i] & 15];
    }
    return write(r->fd, line, (size_t)len) == len ? 0 : -1;
}

static struct recording *open_recording(void) {
    char path[4096];
    struct recording *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(path, sizeof path, "%s/c-%d-%lu-%ld.jsonl", record_dir, (int)getpid(), ++files, (long)time(NULL));
    r->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (r->fd < 0) { free(r); return NULL; }
    memset(r->prev, '0', 64);
    r->second = -1;
    clock_gettime(CLOCK_REALTIME, &r->started);
    return r;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void on_accept(int lfd) {
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) return;                       /* EAGAIN, or a client gone before we took it */
        int sfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (sfd < 0) { close(cfd); continue; }
        nodelay(cfd);
        nodelay(sfd);
        if (connect(sfd, (struct sockaddr *)&upstream, sizeof upstream) < 0 && errno != EINPROGRESS) {
            close(cfd); close(sfd); continue;
        }
        struct end *c = calloc(1, sizeof *c), *s = calloc(1, sizeof *s);
        if (!c || !s) die("calloc");
        c->fd = cfd; s->fd = sfd;
        c->peer = s; s->peer = c;
        s->connecting = 1;
        ctl(EPOLL_CTL_ADD, s, EPOLLOUT);           /* the client is read once the server is there */
    }
}

/* Write what `to` holds pending; 1 once it is all written, 0 if some is left, -1 on error. */
static int flush(struct end *to) {
    while (to->poff < to->plen) {
        ssize_t w = write(to->fd, to->pending + to->poff, to->plen - to->poff);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        to->poff += (size_t)w;
    }
    free(to->pending);
    to->pending = NULL;
    to->plen = to->poff = 0;
    return 1;
}

static void on_readable(struct end *e, char *buf) {
    if (e->peer->pending) return;                  /* only a hang-up gets here then; write what waits first */
    ssize_t n = read(e->fd, buf, BUF_SIZE);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { close_pair(e); return; }
    if (n < 0) return;
    struct end *to = e->peer;
    if (e->rec) {                                  /* the server's bytes: a line per ReadyForQuery first */
        const char *p = buf, *stop = buf + n;
        while ((p = memmem(p, (size_t)(stop - p), READY, sizeof READY)) != NULL) {
            if (record_line(e->rec) < 0) { perror("recording"); close_pair(e); return; }
            p += sizeof READY;
        }
    } else if (to->rec) {                          /* the client's: the statement starts */
        clock_gettime(CLOCK_REALTIME, &to->rec->started);
    }
    ssize_t w = write(to->fd, buf, (size_t)n);
    if (w < 0) {
        if (errno != EAGAIN) { close_pair(e); return; }
        w = 0;
    }
    if (w < n) {                                   /* keep the rest; stop reading until it is written */
        to->pending = malloc((size_t)(n - w));
        if (!to->pending) die("malloc");
        memcpy(to->pending, buf + w, (size_t)(n - w));
        to->plen = (size_t)(n - w);
        to->poff = 0;
        update(e);
        update(to);
    }
}

static void on_writable(struct end *e) {
    if (e->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) { close_pair(e); return; }
        e->connecting = 0;
        if (record_dir && !(e->rec = open_recording())) { perror("recording"); close_pair(e); return; }
        ctl(EPOLL_CTL_MOD, e, EPOLLIN);
        ctl(EPOLL_CTL_ADD, e->peer, EPOLLIN);
        return;
    }
    int r = flush(e);
    if (r < 0) { close_pair(e); return; }
    if (r == 1) {                                  /* drained: read the other side again */
        update(e);
        update(e->peer);
    }
}

static int parse_args(int argc, char **argv, int *listen_port) {
    const char *up = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc) *listen_port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--upstream") && i + 1 < argc) up = argv[++i];
        else if (!strcmp(argv[i], "--record") && i + 1 < argc) record_dir = argv[++i];
        else return -1;
    }
    if (!up || *listen_port <= 0) return -1;
    const char *colon = strrchr(up, ':');
    if (!colon) return -1;
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - up), up);
    upstream.sin_family = AF_INET;
    upstream.sin_port = htons((unsigned short)atoi(colon + 1));
    return inet_pton(AF_INET, host, &upstream.sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    int port = 0;
    if (parse_args(argc, argv, &port) < 0) {
        fprintf(stderr, "usage: %s --listen PORT --upstream IPV4:PORT [--record DIR]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (lfd < 0) die("socket");
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 1024) < 0) die("listen");
    if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, events[MAX_EVENTS];
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");
    char *buf = malloc(BUF_SIZE);
    if (!buf) die("malloc");
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct end *e = events[i].data.ptr;
            if (!e) { on_accept(lfd); continue; }
            if (e->closed) continue;
            if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP) && (e->connecting || e->pending)) on_writable(e);
            if (!e->closed && !e->connecting && events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(e, buf);
        }
        while (dead) {
            struct end *next = dead->next_dead;
            free(dead);
            dead = next;
        }
    }
}
