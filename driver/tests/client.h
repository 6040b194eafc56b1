/* The user-mode side of the emulated Filter Manager port, for tests. */
#ifndef LATCH_CLIENT_H
#define LATCH_CLIENT_H

#include "t.h"

typedef struct client client;
typedef struct request {
    LATCH_MSG_CONNECT_REQUEST msg;
    char pathAscii[512]; /* the path, ASCII-folded, truncated */
    UINT64 messageId;
} request;

/* Connects. With refusedStatus, waits (up to 2 s) for the harness to refuse the
   connection and returns NULL with the SEND_RESULT status if it did. */
client *client_connect(const char *path, NTSTATUS *refusedStatus);
/* FilterGetMessage posted n times (GET frames): from the first one on, the harness
   delivers each driver message only into a posted get, as Windows does. */
int client_post_gets(client *c, int n);
/* FilterSendMessage: sends msg, returns the status and copies up to outSize bytes. */
NTSTATUS client_send(client *c, const void *msg, ULONG len, void *out, ULONG outSize, ULONG *got);
/* HELLO; returns the HELLO_REPLY status (or the transport status on failure). */
NTSTATUS client_hello(client *c, ULONG defaultAction, ULONG timeoutMs);
/* The next CONNECT_REQUEST, waiting up to ms; 0 on timeout. Every request received is
   decoded and checked with LatchDecodeConnectRequest. */
int client_next_request(client *c, request *r, int ms);
/* VERDICT; returns the ACK status. */
NTSTATUS client_verdict(client *c, UINT64 id, ULONG action, ULONG scope, ULONG ttlMs);
/* VERDICT with a rule tag (returned in HIT_BATCH records). */
NTSTATUS client_verdict_tagged(client *c, UINT64 id, ULONG action, ULONG scope, ULONG ttlMs, UINT64 ruleTag);
/* HIT_BATCH records received (each batch decoded with LatchDecodeHitBatch; a bad one
   counts in client_bad_requests): waits up to ms for at least want, returns the count. */
long client_wait_hits(client *c, long want, int ms);
/* The i-th hit record received (0-based); 0 if there is none. */
int client_hit(client *c, long i, LATCH_HIT_RECORD *out);
long client_hit_batches(client *c);
NTSTATUS client_flush(client *c, ULONG flags);
int client_stats(client *c, UINT64 counters[LATCH_STATS_COUNT]);
int client_closed(client *c);
long client_bad_requests(client *c);
void client_close(client *c);

#endif
