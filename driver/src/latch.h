/*
 * latch WFP callout driver: shared declarations.
 *
 * Threading model (see driver/README.md):
 *   classifyFn      IRQL <= DISPATCH_LEVEL  never sends, never waits: pend + queue
 *   worker thread   PASSIVE_LEVEL           FltSendMessage (bounded), deadlines
 *   port callbacks  PASSIVE_LEVEL           verdicts, hello, flush, stats
 * One spin lock (g.Lock) guards the pending table, the send queue, the verdict cache
 * and the flow list. Nothing that may wait or call back into WFP runs under it.
 */
#ifndef LATCH_H
#define LATCH_H

#include <fltKernel.h>
#include <ndis.h>
#include <fwpsk.h>
#include <fwpmk.h>

#include "../include/latch_proto.h"

#define LATCH_TAG_PENDING 'pLtL'
#define LATCH_TAG_FLOW    'fLtL'
#define LATCH_TAG_MESSAGE 'mLtL'
#define LATCH_TAG_CACHE   'cLtL'

#define LATCH_PORT_NAME L"\\LatchPort"

#define LATCH_MAX_PENDING             4096
#define LATCH_MAX_PENDING_PER_PROCESS 256
#define LATCH_CACHE_SLOTS             1024   /* power of two */
#define LATCH_CACHE_PROBE             8
#define LATCH_SEND_TIMEOUT_MS         1000   /* FltSendMessage delivery bound */
#define LATCH_SEND_STALLED_TIMEOUT_MS 1      /* the bound once a send timed out (never 0: see worker.c) */
#define LATCH_WORKER_TICK_MS          50     /* deadline granularity */
#define LATCH_DEFAULT_TIMEOUT_MS      30000
#define LATCH_REAUTH_GRACE_MS         10000  /* decided entries kept for the reauth pass */
#define LATCH_RECENT_SLOTS            256    /* verdict ids waiting for ALE_FLOW_ESTABLISHED */
/* Cache hits waiting for the worker to deliver them (HIT_BATCH), in g.Hits under
   g.Lock; a hit that finds the ring full is counted in hits_lost, never waited for. */
#define LATCH_HIT_SLOTS               1024   /* power of two */
#define LATCH_HIT_WAKE                LATCH_MAX_HITS_PER_BATCH /* wake the worker at this many; else its tick */
/* Lookups under g.Lock at DISPATCH_LEVEL are O(1) or bounded (see PROTOCOL.md, "Time at
   DISPATCH_LEVEL"): hashed pending entries by id and by connection, a bounded-probe
   table of per-process counts, and list walks of at most LATCH_SCAN_CHUNK entries per
   lock hold. */
#define LATCH_ID_BUCKETS              8192   /* power of two */
#define LATCH_REAUTH_BUCKETS          8192   /* power of two */
#define LATCH_PROC_SLOTS              8192   /* power of two, >= 2 * LATCH_MAX_PENDING */
#define LATCH_PROC_PROBE              64
#define LATCH_SCAN_CHUNK              128
/* An absorbed packet (RECV_ACCEPT's SYN or first datagram, an outbound UDP/ICMP first
   datagram) is referenced at most LATCH_PACKET_HOLD_MS; after that it is released and
   the connection stays pending. A verdict that comes later is cached for the
   connection for LATCH_RETRANSMIT_TTL_MS so the peer's (or the program's) retransmit is
   decided at once (PROTOCOL.md, "Held packets"). */
#define LATCH_PACKET_HOLD_MS          3000
#define LATCH_RETRANSMIT_TTL_MS       60000
#define LATCH_RELEASE_BATCH           32     /* packets released per scan */
#define LATCH_MAX_FLOWS               65536  /* flow contexts; beyond, a flow gets none */
#define LATCH_FLOW_BUCKETS            16384  /* power of two */
/* The cache's own scope for a verdict that came after its held inbound packet was
   dropped: this very connection (local and remote address and port, pid, path), so
   the peer's retransmitted SYN is decided by it and nothing else. Never on the wire
   (the VERDICT decoder accepts scopes 0..2 only). */
#define LATCH_SCOPE_CONNECTION        3

/* WFP callouts we register, in table order (callouts.c). */
enum {
    LATCH_CALLOUT_CONNECT_V4 = 0,
    LATCH_CALLOUT_CONNECT_V6,
    LATCH_CALLOUT_RECV_ACCEPT_V4,
    LATCH_CALLOUT_RECV_ACCEPT_V6,
    LATCH_CALLOUT_FLOW_ESTABLISHED_V4,
    LATCH_CALLOUT_FLOW_ESTABLISHED_V6,
    LATCH_CALLOUT_STREAM_V4,
    LATCH_CALLOUT_STREAM_V6,
    LATCH_CALLOUT_DATAGRAM_V4,
    LATCH_CALLOUT_DATAGRAM_V6,
    LATCH_CALLOUT_COUNT
};

typedef enum _LATCH_PENDING_STATE {
    LatchPendingWaiting = 1, /* pended, waiting for a verdict (maybe not yet sent) */
    LatchPendingDecided,     /* verdict stored, operation completed, awaiting the reauth pass */
    LatchPendingReserved,    /* counted against the caps while LatchPend pends outside the lock */
    LatchPendingMarker       /* a scan's place holder in PendingList (ScanPending), not an entry */
} LATCH_PENDING_STATE;

/* The connection as the driver saw it at an ALE layer. */
typedef struct _LATCH_TUPLE {
    UINT16 WireLayer;       /* LATCH_LAYER_* */
    UINT8 Direction;        /* LATCH_DIRECTION_* */
    UINT8 IpVersion;        /* 4 or 6 */
    UINT8 Protocol;
    UINT8 LocalAddr[16];    /* network order */
    UINT8 RemoteAddr[16];
    UINT16 LocalPort;
    UINT16 RemotePort;
    IF_INDEX InterfaceIndex;    /* inbound re-injection */
    IF_INDEX SubInterfaceIndex;
} LATCH_TUPLE;

typedef struct _LATCH_PENDING {
    LIST_ENTRY Link;            /* g.PendingList */
    LIST_ENTRY SendLink;        /* g.SendQueue while Queued */
    LIST_ENTRY CompleteLink;    /* a local batch being completed outside the lock */
    struct _LATCH_PENDING *IdNext;     /* g.IdBuckets chain while Waiting */
    struct _LATCH_PENDING *ReauthNext; /* g.ReauthBuckets chain while Decided (outbound) */
    BOOLEAN Queued;
    LATCH_PENDING_STATE State;
    UINT64 RequestId;
    HANDLE CompletionContext;   /* from FwpsPendOperation0; completed exactly once */
    UINT64 EndpointHandle;      /* matches the reauthorization pass */
    LATCH_TUPLE Tuple;
    UINT64 ProcessId;
    UINT64 CacheGeneration;     /* g.CacheGeneration when pended: its verdict is cached only while current */
    LONGLONG Timestamp;
    ULONGLONG Deadline;         /* KeQueryInterruptTime units */
    ULONG Action;               /* LATCH_ACTION_*, once decided */
    /* RECV_ACCEPT, and the first datagram of an outbound UDP/ICMP connection: the
       referenced original packet and where to re-inject it. */
    PNET_BUFFER_LIST NetBufferList;
    ULONGLONG PacketDeadline;   /* KeQueryInterruptTime: the reference is dropped then */
    BOOLEAN PacketReleased;     /* held too long: dropped, the retransmit decides */
    SCOPE_ID RemoteScopeId;     /* outbound datagram */
    ULONG NblOffset;
    UINT32 IpHeaderSize;
    UINT32 TransportHeaderSize;
    COMPARTMENT_ID CompartmentId;
    IF_INDEX InterfaceIndex;
    IF_INDEX SubInterfaceIndex;
    UINT16 PathLen;
    WCHAR Path[1];              /* PathLen units */
} LATCH_PENDING, *PLATCH_PENDING;

/* Which request decided a connection, until its flow is established. */
typedef struct _LATCH_RECENT {
    LATCH_TUPLE Tuple;
    UINT64 RequestId;           /* 0: empty */
} LATCH_RECENT;

typedef struct _LATCH_PROC_SLOT {
    UINT64 ProcessId;
    ULONG Count;                /* Waiting + Reserved entries of the process; 0: free slot */
} LATCH_PROC_SLOT;

/* A cached verdict with its whole key (cache.c); allocated (LtLc) outside the lock. */
typedef struct _LATCH_CACHE_ENTRY {
    LIST_ENTRY Link;            /* g.CacheList while in a slot */
    ULONG Scope;                /* LATCH_SCOPE_PROCESS_DEST, _PATH_HOST or _CONNECTION */
    ULONG Action;
    UINT8 Direction;
    UINT8 IpVersion;
    UINT8 Protocol;
    UINT16 RemotePort;          /* PROCESS_DEST, CONNECTION */
    UINT16 LocalPort;           /* CONNECTION */
    UINT8 RemoteAddr[16];
    UINT8 LocalAddr[16];        /* CONNECTION */
    UINT64 ProcessId;           /* PROCESS_DEST, CONNECTION */
    UINT64 RuleTag;             /* VERDICT.rule_tag: returned in hit records */
    UINT16 PathCapacity;        /* units allocated */
    UINT16 PathLen;
    WCHAR Path[1];
} LATCH_CACHE_ENTRY, *PLATCH_CACHE_ENTRY;

typedef struct _LATCH_CACHE_SLOT {
    UINT64 Hash;                /* 0: empty */
    ULONGLONG Expires;
    PLATCH_CACHE_ENTRY Entry;   /* NULL: empty */
} LATCH_CACHE_SLOT;

typedef struct _LATCH_FLOW {
    LIST_ENTRY Link;            /* g.FlowList */
    struct _LATCH_FLOW *HashNext; /* g.FlowBuckets chain while on g.FlowList */
    LATCH_TUPLE Tuple;          /* matches the flow's reauthorization classify */
    UINT64 FlowHandle;
    UINT16 LayerId;
    UINT32 CalloutId;
    BOOLEAN RemoveRequested;
    BOOLEAN Associating;        /* FwpsFlowAssociateContext0 in progress: flowDeleteFn must not free */
    BOOLEAN DeleteSeen;         /* flowDeleteFn ran while Associating: the associating thread frees */
    UINT64 ProcessId;
    UINT64 VerdictId;           /* the request whose verdict permitted the flow; 0: cache or default */
    volatile LONG64 BytesIn;
    volatile LONG64 BytesOut;
    UINT16 PathLen;
    WCHAR Path[1];
} LATCH_FLOW, *PLATCH_FLOW;

typedef struct _LATCH_GLOBALS {
    PDRIVER_OBJECT DriverObject;
    PDEVICE_OBJECT DeviceObject;
    PFLT_FILTER Filter;
    PFLT_PORT ServerPort;
    PFLT_PORT ClientPort;
    HANDLE EngineHandle;
    HANDLE InjectionHandleV4;
    HANDLE InjectionHandleV6;
    BOOLEAN CalloutRegistered[LATCH_CALLOUT_COUNT];
    UINT32 CalloutIds[LATCH_CALLOUT_COUNT];
    UINT64 DummyFilterIds[4];   /* toggled to force reauthorization */

    KSPIN_LOCK Lock;
    LIST_ENTRY PendingList;
    LIST_ENTRY SendQueue;
    ULONG PendingCount;         /* entries in PendingList in state Waiting */
    ULONG DecidedCount;         /* entries in PendingList in state Decided */
    struct _LATCH_PENDING *IdBuckets[LATCH_ID_BUCKETS];
    struct _LATCH_PENDING *ReauthBuckets[LATCH_REAUTH_BUCKETS];
    LATCH_PROC_SLOT Procs[LATCH_PROC_SLOTS];
    LATCH_RECENT Recent[LATCH_RECENT_SLOTS];
    ULONG RecentNext;
    LATCH_CACHE_SLOT Cache[LATCH_CACHE_SLOTS];
    LIST_ENTRY CacheList;       /* every entry in Cache, so a flush frees them outside the lock */
    UINT64 CacheGeneration;     /* bumped by every flush, under g.Lock */
    LATCH_HIT_RECORD Hits[LATCH_HIT_SLOTS]; /* ring of cache hits for the service */
    ULONG HitHead;              /* oldest record */
    ULONG HitCount;             /* records in the ring */
    LIST_ENTRY FlowList;
    struct _LATCH_FLOW *FlowBuckets[LATCH_FLOW_BUCKETS];
    ULONG FlowCount;
    KEVENT NoFlows;             /* signaled while FlowCount is 0 (set and cleared under g.Lock) */

    volatile LONG Accepting;    /* 0 once unload started: no new holds */
    volatile LONG ClientReady;  /* a client connected and said HELLO */
    volatile LONG ClientConnected;
    volatile LONG StopWorker;
    volatile LONG InjectionsInFlight; /* biased by 1 until unload drops the bias */
    KEVENT NoInjections;        /* set when the count reaches 0 after the bias is dropped */
    volatile LONG64 NextRequestId;
    ULONG DefaultAction;
    ULONG TimeoutMs;

    EX_RUNDOWN_REF MessageRundown; /* port message callbacks in flight */
    KEVENT WorkerEvent;
    PKTHREAD WorkerThread;
    UINT8 *SendBuffer;          /* worker-owned, LATCH_MSG_MAX_SIZE */

    volatile LONG64 Stats[LATCH_STATS_COUNT];
} LATCH_GLOBALS;

extern LATCH_GLOBALS g;

/* A function that must be called with g.Lock held (checked by clang -Wthread-safety in
   `make -C driver analyze`, and by the WDK's Code Analysis through SAL). */
#if defined(__clang__)
#define LATCH_LOCKED __attribute__((requires_capability(g.Lock)))
#define LATCH_UNLOCKED __attribute__((locks_excluded(g.Lock)))
#elif defined(_MSC_VER)
#define LATCH_LOCKED _Requires_lock_held_(g.Lock)
#define LATCH_UNLOCKED _Requires_lock_not_held_(g.Lock)
#else
#define LATCH_LOCKED
#define LATCH_UNLOCKED
#endif

#define LatchCount(i) InterlockedIncrement64(&g.Stats[(i)])
#define LATCH_MS_TO_100NS(ms) ((ULONGLONG)(ms) * 10000ULL)

/* driver.c */
DRIVER_INITIALIZE DriverEntry;
NTSTATUS FLTAPI LatchFilterUnload(FLT_FILTER_UNLOAD_FLAGS Flags);

/* callouts.c */
NTSTATUS LatchRegisterCallouts(void);
void LatchUnregisterCallouts(void);
NTSTATUS LatchForceReauthorization(void);

/* pending.c */
void LatchInitPending(void);
NTSTATUS LatchPend(const LATCH_TUPLE *Tuple, const FWPS_INCOMING_METADATA_VALUES0 *Meta, void *LayerData,
                   FWPS_CLASSIFY_OUT0 *ClassifyOut);
BOOLEAN LatchTakeReauthVerdict(const LATCH_TUPLE *Tuple, UINT64 EndpointHandle, ULONG *Action);
NTSTATUS LatchDeliverVerdict(UINT64 RequestId, ULONG Action, ULONG CacheScope, ULONG CacheTtlMs, UINT64 RuleTag);
void LatchExpirePending(void);
void LatchCompleteAllWithDefault(ULONG StatIndex);
void LatchFreeDecidedLeftovers(BOOLEAN All);
BOOLEAN LatchDequeueForSend(UINT8 *Buffer, ULONG BufferLength, ULONG *Length, UINT64 *RequestId);
void LatchSendFailed(UINT64 RequestId);
void LatchInjectionDone(void);

/* worker.c */
NTSTATUS LatchStartWorker(void);
void LatchStopWorker(void);
void LatchWakeWorker(void);

/* port.c */
NTSTATUS LatchOpenPort(void);
void LatchClosePort(void);
NTSTATUS LatchHandleMessage(const VOID *Input, ULONG InputLength, VOID *Output, ULONG OutputLength,
                            ULONG *Returned);

/* cache.c */
void LatchInitCache(void);
/* Record: a new connection (not a reauthorization) whose hit goes to the hit ring. */
BOOLEAN LatchCacheLookup(const LATCH_TUPLE *Tuple, UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen,
                         BOOLEAN Record, ULONG *Action);
PLATCH_CACHE_ENTRY LatchCacheAllocate(UINT16 PathLen);
void LatchCacheFree(PLATCH_CACHE_ENTRY Entry);
/* Caller holds g.Lock; frees what it returns after releasing it. */
LATCH_LOCKED PLATCH_CACHE_ENTRY LatchCacheInsertLocked(PLATCH_CACHE_ENTRY Fresh, const LATCH_TUPLE *Tuple,
                                                      UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen,
                                                      ULONG Scope, ULONG TtlMs, ULONG Action, UINT64 RuleTag);
/* Moves up to LATCH_MAX_HITS_PER_BATCH hit records out of the ring (oldest first)
   into one HIT_BATCH in Buffer; returns how many (0: none, *Length 0). */
ULONG LatchDequeueHits(UINT8 *Buffer, ULONG BufferLength, ULONG *Length);
/* Counts the records still in the ring as lost and empties it (unload). */
void LatchDropHits(void);
void LatchCacheFlush(void);
void LatchCountAction(ULONG Action);

/* flow.c */
void LatchFlowEstablished(const FWPS_INCOMING_METADATA_VALUES0 *Meta, const LATCH_TUPLE *Tuple);
/* Caller holds g.Lock. */
LATCH_LOCKED void LatchRememberVerdictLocked(const LATCH_TUPLE *Tuple, UINT64 RequestId);
void NTAPI LatchFlowDelete(UINT16 LayerId, UINT32 CalloutId, UINT64 FlowContext);
void LatchFlowCountBytes(UINT64 FlowContext, SIZE_T Bytes, BOOLEAN Inbound);
BOOLEAN LatchFlowVerdict(const LATCH_TUPLE *Tuple, ULONG *Action);
void LatchRemoveAllFlows(void);

#endif /* LATCH_H */
