/*
 * The Filter Manager communication port (seeds 002, 004). One client at a time,
 * SYSTEM and Administrators only (the default security descriptor from
 * FltBuildDefaultSecurityDescriptor is exactly that: D:P(A;;GA;;;SY)(A;;GA;;;BA)).
 * Every message is copied out of the caller's buffer and validated before use; a
 * malformed one gets an ACK with STATUS_INVALID_PARAMETER and changes nothing.
 */
#include "latch.h"

static NTSTATUS FLTAPI LatchPortConnect(PFLT_PORT ClientPort, PVOID ServerPortCookie, PVOID ConnectionContext,
                                 ULONG SizeOfContext, PVOID *ConnectionPortCookie)
{
    UNREFERENCED_PARAMETER(ServerPortCookie);
    UNREFERENCED_PARAMETER(ConnectionContext);
    UNREFERENCED_PARAMETER(SizeOfContext);
    PAGED_CODE();
    if (!InterlockedCompareExchange(&g.Accepting, 0, 0)) {
        return STATUS_INVALID_DEVICE_STATE;
    }
    NT_ASSERT(g.ClientPort == NULL); /* MaxConnections is 1 */
    g.ClientPort = ClientPort;
    *ConnectionPortCookie = NULL;
    InterlockedExchange(&g.ClientConnected, 1);
    return STATUS_SUCCESS;
}

static void FLTAPI LatchPortDisconnect(PVOID ConnectionCookie)
{
    UNREFERENCED_PARAMETER(ConnectionCookie);
    PAGED_CODE();
    InterlockedExchange(&g.ClientReady, 0);
    InterlockedExchange(&g.ClientConnected, 0);
    FltCloseClientPort(g.Filter, &g.ClientPort);
    /* Nobody is left to answer: every held connection gets the default now. */
    LatchCompleteAllWithDefault(LATCH_STAT_NO_CLIENT_DEFAULT);
    /* Nor to flush the cache when the rules change: empty it, so that the default
       applies at once to every connection until a service says HELLO again. */
    LatchCacheFlush();
}

static ULONG WriteAck(VOID *Output, ULONG OutputLength, NTSTATUS Status)
{
    LATCH_MSG_ACK ack;
    RtlZeroMemory(&ack, sizeof(ack));
    LatchInitHeader(&ack.Header, LATCH_TYPE_ACK, sizeof(ack));
    ack.Status = (UINT32)Status;
    return LatchEncodeFixed(&ack, Output, OutputLength);
}

/* Handles one service message already copied into kernel memory. */
NTSTATUS LatchHandleMessage(const VOID *Input, ULONG InputLength, VOID *Output, ULONG OutputLength, ULONG *Returned)
{
    LATCH_MSG_HEADER header;
    NTSTATUS status;

    *Returned = 0;
    status = LatchDecodeHeader(Input, InputLength, &header, NULL);
    if (NT_SUCCESS(status)) {
        switch (header.Type) {
        case LATCH_TYPE_HELLO: {
            LATCH_MSG_HELLO hello;
            LATCH_MSG_HELLO_REPLY reply;
            status = LatchDecodeHello(Input, InputLength, &hello, NULL);
            if (!NT_SUCCESS(status)) {
                break;
            }
            if (OutputLength < sizeof(reply)) {
                return STATUS_BUFFER_TOO_SMALL;
            }
            RtlZeroMemory(&reply, sizeof(reply));
            LatchInitHeader(&reply.Header, LATCH_TYPE_HELLO_REPLY, sizeof(reply));
            reply.DriverVersion = LATCH_PROTO_VERSION;
            reply.MaxPending = LATCH_MAX_PENDING;
            reply.MaxPendingPerProcess = LATCH_MAX_PENDING_PER_PROCESS;
            if (hello.ServiceVersion != LATCH_PROTO_VERSION) {
                reply.Status = (UINT32)STATUS_REVISION_MISMATCH;
                InterlockedExchange(&g.ClientReady, 0);
            } else {
                /* A (re)started service may have other rules than the one whose
                   verdicts are cached. */
                LatchCacheFlush();
                g.DefaultAction = hello.DefaultAction;
                g.TimeoutMs = hello.PendingTimeoutMs;
                InterlockedExchange(&g.ClientReady, 1);
                LatchWakeWorker(); /* requests held before HELLO go out now */
            }
            *Returned = LatchEncodeFixed(&reply, Output, OutputLength);
            return STATUS_SUCCESS;
        }
        case LATCH_TYPE_VERDICT: {
            LATCH_MSG_VERDICT verdict;
            status = LatchDecodeVerdict(Input, InputLength, &verdict, NULL);
            if (!NT_SUCCESS(status)) {
                break;
            }
            if (OutputLength < sizeof(LATCH_MSG_ACK)) {
                return STATUS_BUFFER_TOO_SMALL;
            }
            status = LatchDeliverVerdict(verdict.RequestId, verdict.Action, verdict.CacheScope, verdict.CacheTtlMs,
                                         verdict.RuleTag);
            *Returned = WriteAck(Output, OutputLength, status);
            return STATUS_SUCCESS;
        }
        case LATCH_TYPE_FLUSH: {
            LATCH_MSG_FLUSH flush;
            status = LatchDecodeFlush(Input, InputLength, &flush, NULL);
            if (!NT_SUCCESS(status)) {
                break;
            }
            if (OutputLength < sizeof(LATCH_MSG_ACK)) {
                return STATUS_BUFFER_TOO_SMALL;
            }
            if (flush.Flags & LATCH_FLUSH_CACHE) {
                LatchCacheFlush();
            }
            status = STATUS_SUCCESS;
            if (flush.Flags & LATCH_FLUSH_REAUTHORIZE) {
                status = LatchForceReauthorization();
            }
            *Returned = WriteAck(Output, OutputLength, status);
            return STATUS_SUCCESS;
        }
        case LATCH_TYPE_STATS_QUERY: {
            LATCH_MSG_STATS_QUERY query;
            LATCH_MSG_STATS_REPLY reply;
            KIRQL irql;
            ULONG i;
            status = LatchDecodeStatsQuery(Input, InputLength, &query, NULL);
            if (!NT_SUCCESS(status)) {
                break;
            }
            if (OutputLength < sizeof(reply)) {
                return STATUS_BUFFER_TOO_SMALL;
            }
            RtlZeroMemory(&reply, sizeof(reply));
            LatchInitHeader(&reply.Header, LATCH_TYPE_STATS_REPLY, sizeof(reply));
            for (i = 0; i < LATCH_STATS_COUNT; i++) {
                reply.Counters[i] = (UINT64)InterlockedCompareExchange64(&g.Stats[i], 0, 0);
            }
            KeAcquireSpinLock(&g.Lock, &irql);
            reply.Counters[LATCH_STAT_PENDING_NOW] = g.PendingCount;
            reply.Counters[LATCH_STAT_FLOW_CONTEXTS_LIVE] = g.FlowCount;
            KeReleaseSpinLock(&g.Lock, irql);
            *Returned = LatchEncodeFixed(&reply, Output, OutputLength);
            return STATUS_SUCCESS;
        }
        default:
            /* A driver-to-service type sent to us: malformed, as below. */
            break;
        }
    }
    LatchCount(LATCH_STAT_MALFORMED_MESSAGES);
    if (OutputLength < sizeof(LATCH_MSG_ACK)) {
        return STATUS_INVALID_PARAMETER;
    }
    *Returned = WriteAck(Output, OutputLength, STATUS_INVALID_PARAMETER);
    return STATUS_SUCCESS;
}

static NTSTATUS FLTAPI LatchPortMessage(PVOID PortCookie, PVOID InputBuffer, ULONG InputBufferLength, PVOID OutputBuffer,
                                 ULONG OutputBufferLength, PULONG ReturnOutputBufferLength)
{
    /* Service messages are small and fixed-size; copy before validating so the
       caller cannot change them under us. */
    union {
        LATCH_MSG_HELLO Hello;
        LATCH_MSG_VERDICT Verdict;
        LATCH_MSG_FLUSH Flush;
        LATCH_MSG_STATS_QUERY Query;
        UINT8 Raw[64];
    } input;
    union {
        LATCH_MSG_HELLO_REPLY HelloReply;
        LATCH_MSG_STATS_REPLY StatsReply;
        LATCH_MSG_ACK Ack;
    } output;
    ULONG length, returned = 0;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(PortCookie);
    PAGED_CODE();
    *ReturnOutputBufferLength = 0;
    if (OutputBuffer == NULL) {
        LatchCount(LATCH_STAT_MALFORMED_MESSAGES); /* nowhere to put even an ACK */
        return STATUS_INVALID_PARAMETER;
    }
    /* Missing or oversized input is malformed: the decoder refuses an empty buffer. */
    length = (InputBuffer != NULL && InputBufferLength <= sizeof(input)) ? InputBufferLength : 0;
    RtlZeroMemory(&input, sizeof(input));
    __try {
        if (length != 0) {
            RtlCopyMemory(&input, InputBuffer, length);
        }
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        LatchCount(LATCH_STAT_MALFORMED_MESSAGES);
        return STATUS_INVALID_PARAMETER;
    }
    /* Unload waits for every message being handled; after it started, none begins. */
    if (!ExAcquireRundownProtection(&g.MessageRundown)) {
        return STATUS_DEVICE_NOT_READY;
    }
    status = LatchHandleMessage(length != 0 ? &input : NULL, length, &output,
                                OutputBufferLength < sizeof(output) ? OutputBufferLength : (ULONG)sizeof(output),
                                &returned);
    ExReleaseRundownProtection(&g.MessageRundown);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    __try {
        RtlCopyMemory(OutputBuffer, &output, returned);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return STATUS_INVALID_PARAMETER;
    }
    *ReturnOutputBufferLength = returned;
    return STATUS_SUCCESS;
}

NTSTATUS LatchOpenPort(void)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    OBJECT_ATTRIBUTES attributes;
    UNICODE_STRING name = RTL_CONSTANT_STRING(LATCH_PORT_NAME);
    NTSTATUS status;

    PAGED_CODE();
    status = FltBuildDefaultSecurityDescriptor(&sd, FLT_PORT_ALL_ACCESS);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    InitializeObjectAttributes(&attributes, &name, OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE, NULL, sd);
    status = FltCreateCommunicationPort(g.Filter, &g.ServerPort, &attributes, NULL, LatchPortConnect,
                                        LatchPortDisconnect, LatchPortMessage, 1);
    FltFreeSecurityDescriptor(sd);
    if (!NT_SUCCESS(status)) {
        g.ServerPort = NULL;
    }
    return status;
}

void LatchClosePort(void)
{
    PAGED_CODE();
    if (g.ServerPort != NULL) {
        FltCloseCommunicationPort(g.ServerPort);
        g.ServerPort = NULL;
    }
    /* A connected client is disconnected by FltUnregisterFilter, which calls
       LatchPortDisconnect; nothing is pending by then. */
}
