#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define QUEUE_MAX 8192
#define HITS_MAX 65536

struct client {
    int fd;
    pthread_t reader;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    pthread_mutex_t sendMu;
    request *queue;
    int head, count;
    int closed;
    long badRequests;
    LATCH_HIT_RECORD *hits; /* every HIT_BATCH record received, in order (HITS_MAX kept) */
    long hitCount, hitBatches;
    int haveResult;
    NTSTATUS resultStatus;
    unsigned char resultData[65536];
    ULONG resultLen;
};

static int read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *reader_main(void *arg)
{
    client *c = arg;
    for (;;) {
        UINT32 len;
        if (read_all(c->fd, &len, 4) != 0 || len == 0 || len > (1u << 20)) {
            break;
        }
        unsigned char *f = malloc(len);
        if (read_all(c->fd, f, len) != 0) {
            free(f);
            break;
        }
        pthread_mutex_lock(&c->mu);
        UINT16 type = 0;
        if (f[0] == 1 && len >= 17 + sizeof(LATCH_MSG_HEADER)) {
            memcpy(&type, f + 17 + FIELD_OFFSET(LATCH_MSG_HEADER, Type), sizeof(type));
        }
        if (f[0] == 1 && type == LATCH_TYPE_HIT_BATCH) {
            LATCH_MSG_HIT_BATCH b;
            const LATCH_HIT_RECORD *recs = NULL;
            UINT64 *aligned = malloc(len - 17 + 8);
            memcpy(aligned, f + 17, len - 17);
            if (!NT_SUCCESS(LatchDecodeHitBatch(aligned, len - 17, &b, &recs, NULL))) {
                c->badRequests++;
            } else {
                for (ULONG i = 0; i < b.Count; i++) {
                    if (c->hitCount < HITS_MAX) {
                        c->hits[c->hitCount] = recs[i];
                    }
                    c->hitCount++;
                }
                c->hitBatches++;
            }
            free(aligned);
        } else if (f[0] == 1 && len >= 17) {
            request r;
            memset(&r, 0, sizeof(r));
            memcpy(&r.messageId, f + 9, 8);
            const WCHAR *path = NULL;
            /* FilterGetMessage hands out an aligned buffer: so do we */
            UINT64 *aligned = malloc(len - 17 + 8);
            memcpy(aligned, f + 17, len - 17);
            if (!NT_SUCCESS(LatchDecodeConnectRequest(aligned, len - 17, &r.msg, &path, NULL))) {
                c->badRequests++;
            } else if (c->count < QUEUE_MAX) {
                for (int i = 0; i < r.msg.PathLen && i + 1 < (int)sizeof(r.pathAscii); i++) {
                    r.pathAscii[i] = path[i] < 128 ? (char)path[i] : '?';
                }
                c->queue[(c->head + c->count) % QUEUE_MAX] = r;
                c->count++;
            }
            free(aligned);
        } else if (f[0] == 3 && len >= 9) {
            UINT32 st, n;
            memcpy(&st, f + 1, 4);
            memcpy(&n, f + 5, 4);
            if (n > len - 9) {
                n = len - 9;
            }
            c->resultStatus = (NTSTATUS)st;
            c->resultLen = n;
            memcpy(c->resultData, f + 9, n);
            c->haveResult = 1;
        }
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->mu);
        free(f);
    }
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

client *client_connect(const char *path, NTSTATUS *refused)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (refused) {
        *refused = STATUS_SUCCESS;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        if (refused) {
            *refused = STATUS_OBJECT_NAME_NOT_FOUND;
        }
        return NULL;
    }
    client *c = calloc(1, sizeof(*c));
    c->fd = fd;
    c->queue = calloc(QUEUE_MAX, sizeof(request));
    c->hits = calloc(HITS_MAX, sizeof(LATCH_HIT_RECORD));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    pthread_mutex_init(&c->sendMu, NULL);
    pthread_create(&c->reader, NULL, reader_main, c);
    if (refused == NULL) {
        return c;
    }
    /* The caller expects a refusal: it comes as one SEND_RESULT, then the close. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2;
    pthread_mutex_lock(&c->mu);
    while (!c->closed && !c->haveResult) {
        if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) != 0) {
            break;
        }
    }
    int gone = c->haveResult || c->closed;
    NTSTATUS st = c->haveResult ? c->resultStatus : STATUS_PORT_DISCONNECTED;
    pthread_mutex_unlock(&c->mu);
    if (gone) {
        if (refused) {
            *refused = st;
        }
        client_close(c);
        return NULL;
    }
    return c;
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int client_post_gets(client *c, int n)
{
    unsigned char f[5] = {1, 0, 0, 0, 5}; /* length 1, kind GET */
    int ok = 1;
    pthread_mutex_lock(&c->sendMu);
    for (int i = 0; i < n && ok; i++) {
        ok = send(c->fd, f, sizeof(f), MSG_NOSIGNAL) == (ssize_t)sizeof(f);
    }
    pthread_mutex_unlock(&c->sendMu);
    return ok;
}

NTSTATUS client_send(client *c, const void *msg, ULONG len, void *out, ULONG outSize, ULONG *got)
{
    pthread_mutex_lock(&c->sendMu);
    UINT32 flen = 1 + 4 + len;
    unsigned char *f = malloc(4 + flen);
    memcpy(f, &flen, 4);
    f[4] = 2;
    memcpy(f + 5, &outSize, 4);
    memcpy(f + 9, msg, len);
    pthread_mutex_lock(&c->mu);
    c->haveResult = 0;
    pthread_mutex_unlock(&c->mu);
    ssize_t w = send(c->fd, f, 4 + flen, MSG_NOSIGNAL);
    free(f);
    NTSTATUS st = STATUS_PORT_DISCONNECTED;
    if (w == (ssize_t)(4 + flen)) {
        struct timespec ts;
        deadline_in(&ts, 10000);
        pthread_mutex_lock(&c->mu);
        while (!c->haveResult && !c->closed) {
            if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) != 0) {
                break;
            }
        }
        if (c->haveResult) {
            st = c->resultStatus;
            ULONG n = c->resultLen < outSize ? c->resultLen : outSize;
            if (out != NULL) {
                memcpy(out, c->resultData, n);
            }
            if (got != NULL) {
                *got = n;
            }
            c->haveResult = 0;
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&c->sendMu);
    return st;
}

NTSTATUS client_hello(client *c, ULONG defaultAction, ULONG timeoutMs)
{
    LATCH_MSG_HELLO h;
    LATCH_MSG_HELLO_REPLY r;
    ULONG got = 0;
    memset(&h, 0, sizeof(h));
    LatchInitHeader(&h.Header, LATCH_TYPE_HELLO, sizeof(h));
    h.ServiceVersion = LATCH_PROTO_VERSION;
    h.DefaultAction = defaultAction;
    h.PendingTimeoutMs = timeoutMs;
    unsigned char out[64];
    NTSTATUS st = client_send(c, &h, sizeof(h), out, sizeof(out), &got);
    if (!NT_SUCCESS(st)) {
        return st;
    }
    if (!NT_SUCCESS(LatchDecodeHelloReply(out, got, &r, NULL))) {
        return STATUS_INVALID_PARAMETER;
    }
    return (NTSTATUS)r.Status;
}

int client_next_request(client *c, request *r, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&c->mu);
    while (c->count == 0 && !c->closed) {
        if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) != 0) {
            break;
        }
    }
    int ok = c->count > 0;
    if (ok) {
        *r = c->queue[c->head];
        c->head = (c->head + 1) % QUEUE_MAX;
        c->count--;
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static NTSTATUS ack_of(client *c, const void *msg, ULONG len)
{
    unsigned char out[64];
    ULONG got = 0;
    LATCH_MSG_ACK ack;
    NTSTATUS st = client_send(c, msg, len, out, sizeof(out), &got);
    if (!NT_SUCCESS(st)) {
        return st;
    }
    if (!NT_SUCCESS(LatchDecodeAck(out, got, &ack, NULL))) {
        return (NTSTATUS)0xDEAD0001;
    }
    return (NTSTATUS)ack.Status;
}

NTSTATUS client_verdict(client *c, UINT64 id, ULONG action, ULONG scope, ULONG ttlMs)
{
    return client_verdict_tagged(c, id, action, scope, ttlMs, 0);
}

NTSTATUS client_verdict_tagged(client *c, UINT64 id, ULONG action, ULONG scope, ULONG ttlMs, UINT64 ruleTag)
{
    LATCH_MSG_VERDICT v;
    memset(&v, 0, sizeof(v));
    LatchInitHeader(&v.Header, LATCH_TYPE_VERDICT, sizeof(v));
    v.RequestId = id;
    v.Action = action;
    v.CacheScope = scope;
    v.CacheTtlMs = ttlMs;
    v.RuleTag = ruleTag;
    return ack_of(c, &v, sizeof(v));
}

NTSTATUS client_flush(client *c, ULONG flags)
{
    LATCH_MSG_FLUSH f;
    memset(&f, 0, sizeof(f));
    LatchInitHeader(&f.Header, LATCH_TYPE_FLUSH, sizeof(f));
    f.Flags = flags;
    return ack_of(c, &f, sizeof(f));
}

int client_stats(client *c, UINT64 counters[LATCH_STATS_COUNT])
{
    LATCH_MSG_STATS_QUERY q;
    LATCH_MSG_STATS_REPLY r;
    unsigned char out[256];
    ULONG got = 0;
    memset(&q, 0, sizeof(q));
    LatchInitHeader(&q.Header, LATCH_TYPE_STATS_QUERY, sizeof(q));
    if (!NT_SUCCESS(client_send(c, &q, sizeof(q), out, sizeof(out), &got)) ||
        !NT_SUCCESS(LatchDecodeStatsReply(out, got, &r, NULL))) {
        return 0;
    }
    memcpy(counters, r.Counters, sizeof(r.Counters));
    return 1;
}

int client_closed(client *c)
{
    pthread_mutex_lock(&c->mu);
    int x = c->closed;
    pthread_mutex_unlock(&c->mu);
    return x;
}

long client_bad_requests(client *c) { return c->badRequests; }

void client_close(client *c)
{
    shutdown(c->fd, SHUT_RDWR);
    pthread_join(c->reader, NULL);
    close(c->fd);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->sendMu);
    free(c->queue);
    free(c->hits);
    free(c);
}

long client_wait_hits(client *c, long want, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&c->mu);
    while (c->hitCount < want && !c->closed) {
        if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) != 0) {
            break;
        }
    }
    long n = c->hitCount;
    pthread_mutex_unlock(&c->mu);
    return n;
}

int client_hit(client *c, long i, LATCH_HIT_RECORD *out)
{
    int ok;
    pthread_mutex_lock(&c->mu);
    ok = i >= 0 && i < c->hitCount && i < HITS_MAX;
    if (ok) {
        *out = c->hits[i];
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

long client_hit_batches(client *c)
{
    pthread_mutex_lock(&c->mu);
    long n = c->hitBatches;
    pthread_mutex_unlock(&c->mu);
    return n;
}
