/*
 * latch driver <-> service wire format, version 2 (see driver/PROTOCOL.md).
 *
 * Fixed layout, little-endian, naturally aligned with explicit reserved fields, so
 * the structs below are the wire image on every Windows target (x64, ARM64: both
 * little-endian) without packing pragmas. The C_ASSERTs pin every size and offset;
 * the Go side (internal/proto) asserts the same numbers and the golden files in
 * internal/proto/testdata/ prove both agree.
 *
 * Needs UINT8/UINT16/UINT32/UINT64/INT64/WCHAR/NTSTATUS/ULONG and C_ASSERT,
 * FIELD_OFFSET from the includer (ntdef.h under the WDK, latch_emu.h in emulation).
 */
#ifndef LATCH_PROTO_H
#define LATCH_PROTO_H

#define LATCH_PROTO_MAGIC   0x4843544Cu /* "LTCH" in memory */
#define LATCH_PROTO_VERSION 2 /* 2: VERDICT rule_tag, HIT_BATCH, hits_lost */

/* Message types. */
#define LATCH_TYPE_HELLO           0x01
#define LATCH_TYPE_CONNECT_REQUEST 0x02
#define LATCH_TYPE_VERDICT         0x03
#define LATCH_TYPE_FLUSH           0x04
#define LATCH_TYPE_STATS_QUERY     0x05
#define LATCH_TYPE_HIT_BATCH       0x06 /* driver -> service: connections the cache decided */
#define LATCH_TYPE_ACK             0x80
#define LATCH_TYPE_HELLO_REPLY     0x81
#define LATCH_TYPE_STATS_REPLY     0x85

/* CONNECT_REQUEST.layer */
#define LATCH_LAYER_CONNECT_V4     1
#define LATCH_LAYER_CONNECT_V6     2
#define LATCH_LAYER_RECV_ACCEPT_V4 3
#define LATCH_LAYER_RECV_ACCEPT_V6 4

/* CONNECT_REQUEST.direction */
#define LATCH_DIRECTION_OUTBOUND 1
#define LATCH_DIRECTION_INBOUND  2

/* HELLO.default_action, VERDICT.action */
#define LATCH_ACTION_PERMIT 1
#define LATCH_ACTION_BLOCK  2
#define LATCH_ACTION_REJECT 3

/* VERDICT.cache_scope */
#define LATCH_SCOPE_NONE         0
#define LATCH_SCOPE_PROCESS_DEST 1 /* same pid + remote addr + remote port + protocol */
#define LATCH_SCOPE_PATH_HOST    2 /* same image path + remote addr + protocol, any port */

/* FLUSH.flags */
#define LATCH_FLUSH_CACHE       0x1
#define LATCH_FLUSH_REAUTHORIZE 0x2

#define LATCH_MAX_PATH_UNITS      4096
#define LATCH_MIN_TIMEOUT_MS      100
#define LATCH_MAX_TIMEOUT_MS      600000
#define LATCH_MAX_CACHE_TTL_MS    86400000
#define LATCH_STATS_COUNT         16
#define LATCH_MAX_HITS_PER_BATCH  64

/* STATS_REPLY counter indexes, in wire order. */
enum {
    LATCH_STAT_CLASSIFIED = 0,
    LATCH_STAT_PENDED,
    LATCH_STAT_PERMITTED,
    LATCH_STAT_BLOCKED,
    LATCH_STAT_TIMED_OUT,
    LATCH_STAT_NO_CLIENT_DEFAULT,
    LATCH_STAT_CAP_EXCEEDED,
    LATCH_STAT_CACHE_HITS,
    LATCH_STAT_SEND_FAILURES,
    LATCH_STAT_MALFORMED_MESSAGES,
    LATCH_STAT_FLOW_CONTEXTS_LIVE,
    LATCH_STAT_PENDING_NOW,
    LATCH_STAT_VERDICTS_LATE,
    LATCH_STAT_REAUTHORIZED,
    LATCH_STAT_ALLOC_FAILURES,
    LATCH_STAT_HITS_LOST        /* cache hits never delivered in a HIT_BATCH (ring full, send failed, unload) */
};

typedef struct _LATCH_MSG_HEADER {
    UINT32 Magic;
    UINT16 Version;
    UINT16 Type;
    UINT32 Length;   /* whole message, header included */
    UINT32 Reserved;
} LATCH_MSG_HEADER;

typedef struct _LATCH_MSG_HELLO {
    LATCH_MSG_HEADER Header;
    UINT32 ServiceVersion;
    UINT32 DefaultAction;
    UINT32 PendingTimeoutMs;
    UINT32 Reserved;
} LATCH_MSG_HELLO;

typedef struct _LATCH_MSG_HELLO_REPLY {
    LATCH_MSG_HEADER Header;
    UINT32 DriverVersion;
    UINT32 MaxPending;
    UINT32 MaxPendingPerProcess;
    UINT32 Status;   /* NTSTATUS bits */
} LATCH_MSG_HELLO_REPLY;

typedef struct _LATCH_MSG_CONNECT_REQUEST {
    LATCH_MSG_HEADER Header;
    UINT64 RequestId;
    UINT16 Layer;
    UINT8  Direction;
    UINT8  IpVersion;
    UINT8  Protocol;
    UINT8  Reserved1[3];
    UINT8  LocalAddr[16];
    UINT8  RemoteAddr[16];
    UINT16 LocalPort;
    UINT16 RemotePort;
    UINT32 Reserved2;
    UINT64 ProcessId;
    INT64  Timestamp;
    UINT16 PathLen;  /* UTF-16 code units following the fixed part */
    UINT8  Reserved3[6];
    /* WCHAR Path[PathLen] follows */
} LATCH_MSG_CONNECT_REQUEST;

typedef struct _LATCH_MSG_VERDICT {
    LATCH_MSG_HEADER Header;
    UINT64 RequestId;
    UINT32 Action;
    UINT32 CacheScope;
    UINT32 CacheTtlMs;
    UINT32 Reserved;
    UINT64 RuleTag;  /* the service's rule id, returned in HIT_BATCH records; 0 with scope 0 */
} LATCH_MSG_VERDICT;

typedef struct _LATCH_MSG_FLUSH {
    LATCH_MSG_HEADER Header;
    UINT32 Flags;
    UINT32 Reserved;
} LATCH_MSG_FLUSH;

typedef struct _LATCH_MSG_STATS_QUERY {
    LATCH_MSG_HEADER Header;
} LATCH_MSG_STATS_QUERY;

typedef struct _LATCH_MSG_STATS_REPLY {
    LATCH_MSG_HEADER Header;
    UINT64 Counters[LATCH_STATS_COUNT];
} LATCH_MSG_STATS_REPLY;

/* One connection the verdict cache decided (HIT_BATCH record), 64 bytes. */
typedef struct _LATCH_HIT_RECORD {
    UINT64 RuleTag;          /* VERDICT.rule_tag of the verdict cached; 0: none */
    UINT64 ProcessId;
    INT64  Timestamp;        /* KeQuerySystemTime at the classify */
    UINT8  LocalAddr[16];    /* as in CONNECT_REQUEST */
    UINT8  RemoteAddr[16];
    UINT16 LocalPort;
    UINT16 RemotePort;
    UINT8  Direction;
    UINT8  IpVersion;
    UINT8  Protocol;
    UINT8  Action;           /* LATCH_ACTION_PERMIT or _BLOCK */
} LATCH_HIT_RECORD;

typedef struct _LATCH_MSG_HIT_BATCH {
    LATCH_MSG_HEADER Header;
    UINT32 Count;            /* 1..LATCH_MAX_HITS_PER_BATCH records follow */
    UINT32 Reserved;
    /* LATCH_HIT_RECORD Records[Count] follow */
} LATCH_MSG_HIT_BATCH;

typedef struct _LATCH_MSG_ACK {
    LATCH_MSG_HEADER Header;
    UINT32 Status;   /* NTSTATUS bits */
    UINT32 Reserved;
} LATCH_MSG_ACK;

#define LATCH_HIT_BATCH_FIXED_SIZE 24u
#define LATCH_HIT_RECORD_SIZE      64u
#define LATCH_HIT_BATCH_MAX_SIZE   (LATCH_HIT_BATCH_FIXED_SIZE + LATCH_HIT_RECORD_SIZE * LATCH_MAX_HITS_PER_BATCH)
#define LATCH_CONNECT_FIXED_SIZE 96u
#define LATCH_CONNECT_MAX_SIZE   (LATCH_CONNECT_FIXED_SIZE + 2u * LATCH_MAX_PATH_UNITS)
/* The largest message either side ever sends. */
#define LATCH_MSG_MAX_SIZE       LATCH_CONNECT_MAX_SIZE

C_ASSERT(sizeof(WCHAR) == 2);
C_ASSERT(sizeof(LATCH_MSG_HEADER) == 16);
C_ASSERT(sizeof(LATCH_MSG_HELLO) == 32);
C_ASSERT(sizeof(LATCH_MSG_HELLO_REPLY) == 32);
C_ASSERT(sizeof(LATCH_MSG_CONNECT_REQUEST) == LATCH_CONNECT_FIXED_SIZE);
C_ASSERT(sizeof(LATCH_MSG_VERDICT) == 48);
C_ASSERT(sizeof(LATCH_HIT_RECORD) == LATCH_HIT_RECORD_SIZE);
C_ASSERT(sizeof(LATCH_MSG_HIT_BATCH) == LATCH_HIT_BATCH_FIXED_SIZE);
C_ASSERT(FIELD_OFFSET(LATCH_HIT_RECORD, LocalAddr) == 24);
C_ASSERT(FIELD_OFFSET(LATCH_HIT_RECORD, LocalPort) == 56);
C_ASSERT(FIELD_OFFSET(LATCH_HIT_RECORD, Direction) == 60);
C_ASSERT(FIELD_OFFSET(LATCH_HIT_RECORD, Action) == 63);
C_ASSERT(LATCH_HIT_BATCH_MAX_SIZE <= LATCH_MSG_MAX_SIZE);
C_ASSERT(sizeof(LATCH_MSG_FLUSH) == 24);
C_ASSERT(sizeof(LATCH_MSG_STATS_QUERY) == 16);
C_ASSERT(sizeof(LATCH_MSG_STATS_REPLY) == 144);
C_ASSERT(sizeof(LATCH_MSG_ACK) == 24);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_HEADER, Type) == 6);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_HEADER, Length) == 8);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, RequestId) == 16);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Layer) == 24);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Protocol) == 28);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, LocalAddr) == 32);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, RemoteAddr) == 48);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, LocalPort) == 64);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, RemotePort) == 66);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, ProcessId) == 72);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Timestamp) == 80);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, PathLen) == 88);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_VERDICT, Action) == 24);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_VERDICT, CacheTtlMs) == 32);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_VERDICT, RuleTag) == 40);
C_ASSERT(FIELD_OFFSET(LATCH_MSG_STATS_REPLY, Counters) == 16);

/*
 * Decoders (proto.c). Each checks the header (magic, version, type, length equal to
 * BufferLength and to the exact size the type demands, reserved 0) and every field,
 * copies the message into *Out and returns STATUS_SUCCESS; otherwise it returns
 * STATUS_INVALID_PARAMETER, leaves *Out zeroed and, if BadOffset is not NULL, stores
 * the byte offset of the first offending field there. They never read past
 * BufferLength. Callable at any IRQL.
 */
NTSTATUS LatchDecodeHeader(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HEADER *Out, ULONG *BadOffset);
NTSTATUS LatchDecodeHello(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HELLO *Out, ULONG *BadOffset);
NTSTATUS LatchDecodeHelloReply(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HELLO_REPLY *Out, ULONG *BadOffset);
/* Path points into Buffer (PathLen units); may be NULL when not wanted. */
NTSTATUS LatchDecodeConnectRequest(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_CONNECT_REQUEST *Out,
                                   const WCHAR **Path, ULONG *BadOffset);
NTSTATUS LatchDecodeVerdict(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_VERDICT *Out, ULONG *BadOffset);
NTSTATUS LatchDecodeFlush(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_FLUSH *Out, ULONG *BadOffset);
NTSTATUS LatchDecodeStatsQuery(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_STATS_QUERY *Out, ULONG *BadOffset);
NTSTATUS LatchDecodeStatsReply(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_STATS_REPLY *Out, ULONG *BadOffset);
/* Records points into Buffer (Count records); may be NULL when not wanted. */
NTSTATUS LatchDecodeHitBatch(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HIT_BATCH *Out,
                             const LATCH_HIT_RECORD **Records, ULONG *BadOffset);
NTSTATUS LatchDecodeAck(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_ACK *Out, ULONG *BadOffset);

/* Fills in a header (magic, version, type, length, reserved 0). */
VOID LatchInitHeader(LATCH_MSG_HEADER *Header, UINT16 Type, UINT32 Length);

/*
 * Encoders: write the message into Buffer and return its length, or 0 if
 * BufferLength is too small or a field is out of range (nothing invalid is ever
 * produced). The fixed-size messages are built by filling the struct after
 * LatchInitHeader; these cover the variable one and validation.
 */
ULONG LatchEncodeConnectRequest(const LATCH_MSG_CONNECT_REQUEST *Fixed, const WCHAR *Path, VOID *Buffer, ULONG BufferLength);
/* Count records (1..LATCH_MAX_HITS_PER_BATCH) into one HIT_BATCH. */
ULONG LatchEncodeHitBatch(const LATCH_HIT_RECORD *Records, ULONG Count, VOID *Buffer, ULONG BufferLength);
ULONG LatchEncodeFixed(const VOID *Message, VOID *Buffer, ULONG BufferLength);

#endif /* LATCH_PROTO_H */
