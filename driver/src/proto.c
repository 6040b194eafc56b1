/*
 * Validating decoders and encoders for the wire format (include/latch_proto.h).
 * Pure functions over caller buffers: no allocation, no locks, any IRQL.
 */
#include "latch.h"

#define BAD(off) do { if (BadOffset != NULL) { *BadOffset = (off); } return STATUS_INVALID_PARAMETER; } while (0)

static ULONG ExpectedSize(UINT16 Type)
{
    switch (Type) {
    case LATCH_TYPE_HELLO:           return sizeof(LATCH_MSG_HELLO);
    case LATCH_TYPE_HELLO_REPLY:     return sizeof(LATCH_MSG_HELLO_REPLY);
    case LATCH_TYPE_CONNECT_REQUEST: return LATCH_CONNECT_FIXED_SIZE; /* minimum; + 2*path_len */
    case LATCH_TYPE_VERDICT:         return sizeof(LATCH_MSG_VERDICT);
    case LATCH_TYPE_FLUSH:           return sizeof(LATCH_MSG_FLUSH);
    case LATCH_TYPE_STATS_QUERY:     return sizeof(LATCH_MSG_STATS_QUERY);
    case LATCH_TYPE_STATS_REPLY:     return sizeof(LATCH_MSG_STATS_REPLY);
    case LATCH_TYPE_ACK:             return sizeof(LATCH_MSG_ACK);
    case LATCH_TYPE_HIT_BATCH:       return LATCH_HIT_BATCH_FIXED_SIZE; /* minimum; + 64*count */
    default:                        return 0;
    }
}

static BOOLEAN AllZero(const UINT8 *Bytes, ULONG Count)
{
    ULONG i;
    for (i = 0; i < Count; i++) {
        if (Bytes[i] != 0) {
            return FALSE;
        }
    }
    return TRUE;
}

NTSTATUS LatchDecodeHeader(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HEADER *Out, ULONG *BadOffset)
{
    LATCH_MSG_HEADER h;
    ULONG expected;

    RtlZeroMemory(Out, sizeof(*Out));
    if (Buffer == NULL || BufferLength < sizeof(LATCH_MSG_HEADER)) {
        BAD(BufferLength);
    }
    RtlCopyMemory(&h, Buffer, sizeof(h));
    if (h.Magic != LATCH_PROTO_MAGIC) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Magic));
    }
    if (h.Version != LATCH_PROTO_VERSION) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Version));
    }
    expected = ExpectedSize(h.Type);
    if (expected == 0) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Type));
    }
    if (h.Length != BufferLength) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Length));
    }
    if (h.Type == LATCH_TYPE_CONNECT_REQUEST) {
        if (h.Length < expected || h.Length > LATCH_CONNECT_MAX_SIZE || (h.Length - expected) % 2 != 0) {
            BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Length));
        }
    } else if (h.Type == LATCH_TYPE_HIT_BATCH) {
        if (h.Length < expected + LATCH_HIT_RECORD_SIZE || h.Length > LATCH_HIT_BATCH_MAX_SIZE ||
            (h.Length - expected) % LATCH_HIT_RECORD_SIZE != 0) {
            BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Length));
        }
    } else if (h.Length != expected) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Length));
    }
    if (h.Reserved != 0) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Reserved));
    }
    *Out = h;
    return STATUS_SUCCESS;
}

/* Header check plus the type the caller wants; copies the fixed part into Out. */
static NTSTATUS DecodeFixed(const VOID *Buffer, ULONG BufferLength, UINT16 Type, VOID *Out, ULONG OutSize,
                            ULONG *BadOffset)
{
    LATCH_MSG_HEADER h;
    NTSTATUS status;

    RtlZeroMemory(Out, OutSize);
    status = LatchDecodeHeader(Buffer, BufferLength, &h, BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (h.Type != Type) {
        BAD(FIELD_OFFSET(LATCH_MSG_HEADER, Type));
    }
    RtlCopyMemory(Out, Buffer, OutSize);
    return STATUS_SUCCESS;
}

#define FAIL_ZERO(out, off) do { RtlZeroMemory((out), sizeof(*(out))); BAD(off); } while (0)

NTSTATUS LatchDecodeHello(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HELLO *Out, ULONG *BadOffset)
{
    NTSTATUS status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_HELLO, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    /* ServiceVersion is not checked here: the driver answers a foreign version with a
       HELLO_REPLY status instead of a malformed-message ACK. */
    if (Out->DefaultAction != LATCH_ACTION_PERMIT && Out->DefaultAction != LATCH_ACTION_BLOCK) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_HELLO, DefaultAction));
    }
    if (Out->PendingTimeoutMs < LATCH_MIN_TIMEOUT_MS || Out->PendingTimeoutMs > LATCH_MAX_TIMEOUT_MS) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_HELLO, PendingTimeoutMs));
    }
    if (Out->Reserved != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_HELLO, Reserved));
    }
    return STATUS_SUCCESS;
}

NTSTATUS LatchDecodeHelloReply(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HELLO_REPLY *Out, ULONG *BadOffset)
{
    return DecodeFixed(Buffer, BufferLength, LATCH_TYPE_HELLO_REPLY, Out, sizeof(*Out), BadOffset);
}

static BOOLEAN LayerAgrees(UINT16 Layer, UINT8 Direction, UINT8 IpVersion)
{
    switch (Layer) {
    case LATCH_LAYER_CONNECT_V4:     return Direction == LATCH_DIRECTION_OUTBOUND && IpVersion == 4;
    case LATCH_LAYER_CONNECT_V6:     return Direction == LATCH_DIRECTION_OUTBOUND && IpVersion == 6;
    case LATCH_LAYER_RECV_ACCEPT_V4: return Direction == LATCH_DIRECTION_INBOUND && IpVersion == 4;
    case LATCH_LAYER_RECV_ACCEPT_V6: return Direction == LATCH_DIRECTION_INBOUND && IpVersion == 6;
    default:                         return FALSE;
    }
}

NTSTATUS LatchDecodeConnectRequest(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_CONNECT_REQUEST *Out,
                                   const WCHAR **Path, ULONG *BadOffset)
{
    NTSTATUS status;

    if (Path != NULL) {
        *Path = NULL;
    }
    status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_CONNECT_REQUEST, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (Out->RequestId == 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, RequestId));
    }
    if (Out->Layer < LATCH_LAYER_CONNECT_V4 || Out->Layer > LATCH_LAYER_RECV_ACCEPT_V6) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Layer));
    }
    if (Out->Direction != LATCH_DIRECTION_OUTBOUND && Out->Direction != LATCH_DIRECTION_INBOUND) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Direction));
    }
    if (Out->IpVersion != 4 && Out->IpVersion != 6) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, IpVersion));
    }
    if (!LayerAgrees(Out->Layer, Out->Direction, Out->IpVersion)) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Direction));
    }
    if (!AllZero(Out->Reserved1, sizeof(Out->Reserved1))) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Reserved1));
    }
    if (Out->IpVersion == 4 && !AllZero(Out->LocalAddr + 4, 12)) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, LocalAddr) + 4);
    }
    if (Out->IpVersion == 4 && !AllZero(Out->RemoteAddr + 4, 12)) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, RemoteAddr) + 4);
    }
    if (Out->Reserved2 != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Reserved2));
    }
    if (Out->PathLen > LATCH_MAX_PATH_UNITS ||
        BufferLength != LATCH_CONNECT_FIXED_SIZE + 2u * Out->PathLen) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, PathLen));
    }
    if (!AllZero(Out->Reserved3, sizeof(Out->Reserved3))) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_CONNECT_REQUEST, Reserved3));
    }
    if (Path != NULL && Out->PathLen != 0) {
        *Path = (const WCHAR *)((const UINT8 *)Buffer + LATCH_CONNECT_FIXED_SIZE);
    }
    return STATUS_SUCCESS;
}

NTSTATUS LatchDecodeVerdict(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_VERDICT *Out, ULONG *BadOffset)
{
    NTSTATUS status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_VERDICT, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (Out->RequestId == 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_VERDICT, RequestId));
    }
    if (Out->Action < LATCH_ACTION_PERMIT || Out->Action > LATCH_ACTION_REJECT) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_VERDICT, Action));
    }
    if (Out->CacheScope > LATCH_SCOPE_PATH_HOST) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_VERDICT, CacheScope));
    }
    if (Out->CacheScope == LATCH_SCOPE_NONE ? Out->CacheTtlMs != 0
                                            : (Out->CacheTtlMs < 1 || Out->CacheTtlMs > LATCH_MAX_CACHE_TTL_MS)) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_VERDICT, CacheTtlMs));
    }
    if (Out->Reserved != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_VERDICT, Reserved));
    }
    if (Out->CacheScope == LATCH_SCOPE_NONE && Out->RuleTag != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_VERDICT, RuleTag)); /* a tag names a cached verdict's rule */
    }
    return STATUS_SUCCESS;
}

NTSTATUS LatchDecodeFlush(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_FLUSH *Out, ULONG *BadOffset)
{
    NTSTATUS status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_FLUSH, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if ((Out->Flags & ~(UINT32)(LATCH_FLUSH_CACHE | LATCH_FLUSH_REAUTHORIZE)) != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_FLUSH, Flags));
    }
    if (Out->Reserved != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_FLUSH, Reserved));
    }
    return STATUS_SUCCESS;
}

NTSTATUS LatchDecodeStatsQuery(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_STATS_QUERY *Out, ULONG *BadOffset)
{
    return DecodeFixed(Buffer, BufferLength, LATCH_TYPE_STATS_QUERY, Out, sizeof(*Out), BadOffset);
}

NTSTATUS LatchDecodeStatsReply(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_STATS_REPLY *Out, ULONG *BadOffset)
{
    NTSTATUS status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_STATS_REPLY, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    return STATUS_SUCCESS;
}

NTSTATUS LatchDecodeHitBatch(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_HIT_BATCH *Out,
                             const LATCH_HIT_RECORD **Records, ULONG *BadOffset)
{
    NTSTATUS status;
    ULONG i;

    if (Records != NULL) {
        *Records = NULL;
    }
    status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_HIT_BATCH, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (Out->Count < 1 || Out->Count > LATCH_MAX_HITS_PER_BATCH ||
        BufferLength != LATCH_HIT_BATCH_FIXED_SIZE + LATCH_HIT_RECORD_SIZE * Out->Count) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_HIT_BATCH, Count));
    }
    if (Out->Reserved != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_HIT_BATCH, Reserved));
    }
    for (i = 0; i < Out->Count; i++) {
        LATCH_HIT_RECORD r;
        ULONG base = LATCH_HIT_BATCH_FIXED_SIZE + LATCH_HIT_RECORD_SIZE * i;
        RtlCopyMemory(&r, (const UINT8 *)Buffer + base, sizeof(r));
        if (r.Direction != LATCH_DIRECTION_OUTBOUND && r.Direction != LATCH_DIRECTION_INBOUND) {
            FAIL_ZERO(Out, base + FIELD_OFFSET(LATCH_HIT_RECORD, Direction));
        }
        if (r.IpVersion != 4 && r.IpVersion != 6) {
            FAIL_ZERO(Out, base + FIELD_OFFSET(LATCH_HIT_RECORD, IpVersion));
        }
        if (r.IpVersion == 4 && !AllZero(r.LocalAddr + 4, 12)) {
            FAIL_ZERO(Out, base + FIELD_OFFSET(LATCH_HIT_RECORD, LocalAddr) + 4);
        }
        if (r.IpVersion == 4 && !AllZero(r.RemoteAddr + 4, 12)) {
            FAIL_ZERO(Out, base + FIELD_OFFSET(LATCH_HIT_RECORD, RemoteAddr) + 4);
        }
        if (r.Action != LATCH_ACTION_PERMIT && r.Action != LATCH_ACTION_BLOCK) {
            FAIL_ZERO(Out, base + FIELD_OFFSET(LATCH_HIT_RECORD, Action));
        }
    }
    if (Records != NULL) {
        *Records = (const LATCH_HIT_RECORD *)((const UINT8 *)Buffer + LATCH_HIT_BATCH_FIXED_SIZE);
    }
    return STATUS_SUCCESS;
}

ULONG LatchEncodeHitBatch(const LATCH_HIT_RECORD *Records, ULONG Count, VOID *Buffer, ULONG BufferLength)
{
    LATCH_MSG_HIT_BATCH fixed;
    ULONG length;

    if (Count < 1 || Count > LATCH_MAX_HITS_PER_BATCH) {
        return 0;
    }
    length = LATCH_HIT_BATCH_FIXED_SIZE + LATCH_HIT_RECORD_SIZE * Count;
    if (BufferLength < length) {
        return 0;
    }
    RtlZeroMemory(&fixed, sizeof(fixed));
    LatchInitHeader(&fixed.Header, LATCH_TYPE_HIT_BATCH, length);
    fixed.Count = Count;
    RtlCopyMemory(Buffer, &fixed, sizeof(fixed));
    RtlCopyMemory((UINT8 *)Buffer + LATCH_HIT_BATCH_FIXED_SIZE, Records, LATCH_HIT_RECORD_SIZE * (SIZE_T)Count);
    if (!NT_SUCCESS(LatchDecodeHitBatch(Buffer, length, &fixed, NULL, NULL))) {
        RtlZeroMemory(Buffer, length);
        return 0;
    }
    return length;
}

NTSTATUS LatchDecodeAck(const VOID *Buffer, ULONG BufferLength, LATCH_MSG_ACK *Out, ULONG *BadOffset)
{
    NTSTATUS status = DecodeFixed(Buffer, BufferLength, LATCH_TYPE_ACK, Out, sizeof(*Out), BadOffset);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    if (Out->Reserved != 0) {
        FAIL_ZERO(Out, FIELD_OFFSET(LATCH_MSG_ACK, Reserved));
    }
    return STATUS_SUCCESS;
}

VOID LatchInitHeader(LATCH_MSG_HEADER *Header, UINT16 Type, UINT32 Length)
{
    Header->Magic = LATCH_PROTO_MAGIC;
    Header->Version = LATCH_PROTO_VERSION;
    Header->Type = Type;
    Header->Length = Length;
    Header->Reserved = 0;
}

ULONG LatchEncodeConnectRequest(const LATCH_MSG_CONNECT_REQUEST *Fixed, const WCHAR *Path, VOID *Buffer,
                                ULONG BufferLength)
{
    LATCH_MSG_CONNECT_REQUEST scratch;
    ULONG length;

    if (Fixed->PathLen > LATCH_MAX_PATH_UNITS || (Fixed->PathLen != 0 && Path == NULL)) {
        return 0;
    }
    length = LATCH_CONNECT_FIXED_SIZE + 2u * Fixed->PathLen;
    if (BufferLength < length) {
        return 0;
    }
    RtlCopyMemory(Buffer, Fixed, LATCH_CONNECT_FIXED_SIZE);
    LatchInitHeader((LATCH_MSG_HEADER *)Buffer, LATCH_TYPE_CONNECT_REQUEST, length);
    if (Fixed->PathLen != 0) {
        RtlCopyMemory((UINT8 *)Buffer + LATCH_CONNECT_FIXED_SIZE, Path, 2u * Fixed->PathLen);
    }
    if (!NT_SUCCESS(LatchDecodeConnectRequest(Buffer, length, &scratch, NULL, NULL))) {
        RtlZeroMemory(Buffer, length);
        return 0;
    }
    return length;
}

ULONG LatchEncodeFixed(const VOID *Message, VOID *Buffer, ULONG BufferLength)
{
    const LATCH_MSG_HEADER *h = (const LATCH_MSG_HEADER *)Message;
    union {
        LATCH_MSG_HELLO Hello;
        LATCH_MSG_HELLO_REPLY HelloReply;
        LATCH_MSG_VERDICT Verdict;
        LATCH_MSG_FLUSH Flush;
        LATCH_MSG_STATS_QUERY StatsQuery;
        LATCH_MSG_STATS_REPLY StatsReply;
        LATCH_MSG_ACK Ack;
    } scratch;
    ULONG length = ExpectedSize(h->Type);
    NTSTATUS status;

    if (length == 0 || h->Type == LATCH_TYPE_CONNECT_REQUEST || h->Type == LATCH_TYPE_HIT_BATCH ||
        BufferLength < length) {
        return 0;
    }
    RtlCopyMemory(Buffer, Message, length);
    LatchInitHeader((LATCH_MSG_HEADER *)Buffer, h->Type, length);
    switch (h->Type) {
    case LATCH_TYPE_HELLO:       status = LatchDecodeHello(Buffer, length, &scratch.Hello, NULL); break;
    case LATCH_TYPE_HELLO_REPLY: status = LatchDecodeHelloReply(Buffer, length, &scratch.HelloReply, NULL); break;
    case LATCH_TYPE_VERDICT:     status = LatchDecodeVerdict(Buffer, length, &scratch.Verdict, NULL); break;
    case LATCH_TYPE_FLUSH:       status = LatchDecodeFlush(Buffer, length, &scratch.Flush, NULL); break;
    case LATCH_TYPE_STATS_QUERY: status = LatchDecodeStatsQuery(Buffer, length, &scratch.StatsQuery, NULL); break;
    case LATCH_TYPE_STATS_REPLY: status = LatchDecodeStatsReply(Buffer, length, &scratch.StatsReply, NULL); break;
    default:                    status = LatchDecodeAck(Buffer, length, &scratch.Ack, NULL); break;
    }
    if (!NT_SUCCESS(status)) {
        RtlZeroMemory(Buffer, length);
        return 0;
    }
    return length;
}
