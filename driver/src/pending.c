/*
 * The pending table: every held connection between FwpsPendOperation0 and its one
 * FwpsCompleteOperation0. Bounded in total and per process; every entry has a
 * deadline. Entries are decided under g.Lock and completed outside it, because
 * completing an ALE_AUTH_CONNECT operation re-enters classifyFn (reauthorization),
 * which takes the lock again.
 */
#include "latch.h"

void LatchInitPending(void)
{
    InitializeListHead(&g.PendingList);
    InitializeListHead(&g.SendQueue);
}

static BOOLEAN IsInbound(const LATCH_PENDING *Entry)
{
    return Entry->Tuple.Direction == LATCH_DIRECTION_INBOUND;
}

void LatchCountAction(ULONG Action)
{
    LatchCount(Action == LATCH_ACTION_PERMIT ? LATCH_STAT_PERMITTED : LATCH_STAT_BLOCKED);
}

/* Per-process counts of Waiting + Reserved entries: a table probed at most
   LATCH_PROC_PROBE slots from the process's home slot (O(1), bounded), never a walk of
   the pending list. Caller holds g.Lock. */
static ULONG ProcHome(UINT64 ProcessId)
{
    return (ULONG)((ProcessId * 0x9E3779B97F4A7C15ULL) >> 40) & (LATCH_PROC_SLOTS - 1);
}

static LATCH_PROC_SLOT *ProcFindLocked(UINT64 ProcessId, BOOLEAN Create)
{
    LATCH_PROC_SLOT *free = NULL;
    ULONG home = ProcHome(ProcessId), i;

    for (i = 0; i < LATCH_PROC_PROBE; i++) {
        LATCH_PROC_SLOT *slot = &g.Procs[(home + i) & (LATCH_PROC_SLOTS - 1)];
        if (slot->Count != 0 && slot->ProcessId == ProcessId) {
            return slot;
        }
        if (slot->Count == 0 && free == NULL) {
            free = slot;
        }
    }
    if (Create && free != NULL) {
        free->ProcessId = ProcessId;
    }
    return Create ? free : NULL;
}

LATCH_LOCKED static void ProcReleaseLocked(UINT64 ProcessId)
{
    LATCH_PROC_SLOT *slot = ProcFindLocked(ProcessId, FALSE);
    NT_ASSERT(slot != NULL);
    if (slot != NULL) {
        slot->Count--;
    }
}

LATCH_LOCKED static void IdInsertLocked(PLATCH_PENDING Entry)
{
    PLATCH_PENDING *head = &g.IdBuckets[Entry->RequestId & (LATCH_ID_BUCKETS - 1)];
    Entry->IdNext = *head;
    *head = Entry;
}

LATCH_LOCKED static void IdRemoveLocked(PLATCH_PENDING Entry)
{
    PLATCH_PENDING *pp = &g.IdBuckets[Entry->RequestId & (LATCH_ID_BUCKETS - 1)];
    while (*pp != NULL && *pp != Entry) {
        pp = &(*pp)->IdNext;
    }
    if (*pp == Entry) {
        *pp = Entry->IdNext;
    }
    Entry->IdNext = NULL;
}

static ULONG ReauthHash(const LATCH_TUPLE *Tuple, UINT64 EndpointHandle)
{
    UINT64 h = EndpointHandle * 0x9E3779B97F4A7C15ULL;
    ULONG i;
    h ^= ((UINT64)Tuple->LocalPort << 16 | Tuple->RemotePort) * 0xC2B2AE3D27D4EB4FULL;
    for (i = 0; i < 16; i++) {
        h = (h ^ Tuple->RemoteAddr[i]) * 0x100000001B3ULL;
    }
    return (ULONG)(h >> 32) & (LATCH_REAUTH_BUCKETS - 1);
}

LATCH_LOCKED static void ReauthInsertLocked(PLATCH_PENDING Entry)
{
    PLATCH_PENDING *head = &g.ReauthBuckets[ReauthHash(&Entry->Tuple, Entry->EndpointHandle)];
    Entry->ReauthNext = *head;
    *head = Entry;
}

LATCH_LOCKED static void ReauthRemoveLocked(PLATCH_PENDING Entry)
{
    PLATCH_PENDING *pp = &g.ReauthBuckets[ReauthHash(&Entry->Tuple, Entry->EndpointHandle)];
    while (*pp != NULL && *pp != Entry) {
        pp = &(*pp)->ReauthNext;
    }
    if (*pp == Entry) {
        *pp = Entry->ReauthNext;
    }
    Entry->ReauthNext = NULL;
}

LATCH_LOCKED static PLATCH_PENDING FindWaitingLocked(UINT64 RequestId)
{
    PLATCH_PENDING e;

    for (e = g.IdBuckets[RequestId & (LATCH_ID_BUCKETS - 1)]; e != NULL; e = e->IdNext) {
        if (e->State == LatchPendingWaiting && e->RequestId == RequestId) {
            return e;
        }
    }
    return NULL;
}

/* Visits every entry of PendingList with Visit (called under g.Lock), at most
   LATCH_SCAN_CHUNK entries per hold of the lock: a marker entry keeps the place while
   the lock is dropped between chunks (other scans skip markers). Visit may unlink the
   entry it is given. Entries added during the scan may or may not be visited. */
typedef void LATCH_VISIT(PLATCH_PENDING Entry, PVOID Context, PLIST_ENTRY Batch);

static void ScanPending(LATCH_VISIT *Visit, PVOID Context, PLIST_ENTRY Batch)
{
    LATCH_PENDING marker;
    KIRQL irql;
    BOOLEAN done = FALSE;

    RtlZeroMemory(&marker, sizeof(marker));
    marker.State = LatchPendingMarker;
    while (!done) {
        ULONG n;
        KeAcquireSpinLock(&g.Lock, &irql);
        if (marker.Link.Flink == NULL) {
            InsertHeadList(&g.PendingList, &marker.Link);
        }
        for (n = 0; n < LATCH_SCAN_CHUNK && marker.Link.Flink != &g.PendingList; n++) {
            PLIST_ENTRY link = marker.Link.Flink;
            PLATCH_PENDING e = CONTAINING_RECORD(link, LATCH_PENDING, Link);
            RemoveEntryList(&marker.Link);
            InsertHeadList(link, &marker.Link); /* the marker goes past e first: Visit may unlink e */
            if (e->State != LatchPendingMarker) {
                Visit(e, Context, Batch);
            }
        }
        done = marker.Link.Flink == &g.PendingList;
        if (done) {
            RemoveEntryList(&marker.Link);
        }
        KeReleaseSpinLock(&g.Lock, irql);
    }
}

/* Marks a waiting entry decided and appends it to Batch for completion outside the
   lock. Outbound entries stay in PendingList for the reauthorization pass; inbound
   ones leave it (RECV_ACCEPT is not reauthorized: we re-inject instead). */
LATCH_LOCKED static void DecideLocked(PLATCH_PENDING Entry, ULONG Action, PLIST_ENTRY Batch)
{
    NT_ASSERT(Entry->State == LatchPendingWaiting);
    if (Entry->Queued) {
        RemoveEntryList(&Entry->SendLink);
        Entry->Queued = FALSE;
    }
    IdRemoveLocked(Entry);
    ProcReleaseLocked(Entry->ProcessId);
    g.PendingCount--;
    Entry->State = LatchPendingDecided;
    Entry->Action = (Action == LATCH_ACTION_PERMIT) ? LATCH_ACTION_PERMIT : LATCH_ACTION_BLOCK;
    Entry->Deadline = KeQueryInterruptTime() + LATCH_MS_TO_100NS(LATCH_REAUTH_GRACE_MS);
    if (IsInbound(Entry)) {
        RemoveEntryList(&Entry->Link);
        if (Entry->Action == LATCH_ACTION_PERMIT) {
            LatchRememberVerdictLocked(&Entry->Tuple, Entry->RequestId);
        }
    } else {
        g.DecidedCount++;
        ReauthInsertLocked(Entry);
    }
    InsertTailList(Batch, &Entry->CompleteLink);
}

static void FreeEntry(PLATCH_PENDING Entry)
{
    ExFreePoolWithTag(Entry, LATCH_TAG_PENDING);
}

void LatchInjectionDone(void)
{
    if (InterlockedDecrement(&g.InjectionsInFlight) == 0) {
        KeSetEvent(&g.NoInjections, IO_NO_INCREMENT, FALSE);
    }
}

static void NTAPI LatchInjectComplete(void *Context, NET_BUFFER_LIST *NetBufferList, BOOLEAN DispatchLevel)
{
    FwpsFreeCloneNetBufferList0(NetBufferList, 0);
    FwpsDereferenceNetBufferList0((PNET_BUFFER_LIST)Context, DispatchLevel);
    LatchInjectionDone();
}

/* RECV_ACCEPT: clone the held packet (positioned back at its IP header), complete the
   operation with the clone and re-inject it; classifyFn lets our own injection pass.
   A block completes without a clone and drops the packet. */
LATCH_UNLOCKED static void CompleteInbound(PLATCH_PENDING Entry)
{
    PNET_BUFFER_LIST original = Entry->NetBufferList;
    PNET_BUFFER_LIST clone = NULL;
    ULONG retreat = Entry->IpHeaderSize + Entry->TransportHeaderSize;
    BOOLEAN v4 = Entry->Tuple.IpVersion == 4;
    NTSTATUS status;

    if (original == NULL) {
        /* Held longer than LATCH_PACKET_HOLD_MS: the packet is gone; the verdict was
           cached for the connection and decides the peer's retransmit. */
        LatchCountAction(Entry->Action);
        FwpsCompleteOperation0(Entry->CompletionContext, NULL);
        FreeEntry(Entry);
        return;
    }
    if (Entry->Action == LATCH_ACTION_PERMIT) {
        PNET_BUFFER nb = NET_BUFFER_LIST_FIRST_NB(original);
        if (NET_BUFFER_DATA_OFFSET(nb) != Entry->NblOffset) {
            /* As the WFP inspect sample: after the absorb the stack retreated the
               packet to its transport header; only the IP header is left to go. */
            retreat = Entry->IpHeaderSize;
        }
        if (NdisRetreatNetBufferDataStart(nb, retreat, 0, NULL) == NDIS_STATUS_SUCCESS) {
            status = FwpsAllocateCloneNetBufferList0(original, NULL, NULL, 0, &clone);
            NdisAdvanceNetBufferDataStart(nb, retreat, FALSE, NULL);
            if (!NT_SUCCESS(status)) {
                clone = NULL;
                LatchCount(LATCH_STAT_ALLOC_FAILURES);
            }
        } else {
            LatchCount(LATCH_STAT_ALLOC_FAILURES);
        }
    }
    LatchCountAction(clone != NULL ? LATCH_ACTION_PERMIT : LATCH_ACTION_BLOCK);
    FwpsCompleteOperation0(Entry->CompletionContext, clone);
    if (clone != NULL) {
        InterlockedIncrement(&g.InjectionsInFlight);
        status = FwpsInjectTransportReceiveAsync0(v4 ? g.InjectionHandleV4 : g.InjectionHandleV6, NULL, NULL, 0,
                                                  v4 ? AF_INET : AF_INET6, Entry->CompartmentId,
                                                  Entry->Tuple.InterfaceIndex, Entry->Tuple.SubInterfaceIndex,
                                                  clone, LatchInjectComplete, original);
        if (!NT_SUCCESS(status)) {
            LatchInjectionDone();
            FwpsFreeCloneNetBufferList0(clone, 0);
            FwpsDereferenceNetBufferList0(original, FALSE);
            LatchCount(LATCH_STAT_SEND_FAILURES);
        }
    } else {
        FwpsDereferenceNetBufferList0(original, FALSE);
    }
    FreeEntry(Entry);
}

/* An outbound first datagram being re-sent: owns the reference on the original. */
typedef struct _LATCH_SEND {
    PNET_BUFFER_LIST Original;
    UINT64 EndpointHandle;
    SCOPE_ID RemoteScopeId;
    COMPARTMENT_ID CompartmentId;
    BOOLEAN V4;
    UINT8 RemoteAddr[16];       /* network order, as WFP wants it */
} LATCH_SEND, *PLATCH_SEND;

static void NTAPI LatchSendComplete(void *Context, NET_BUFFER_LIST *NetBufferList, BOOLEAN DispatchLevel)
{
    PLATCH_SEND send = (PLATCH_SEND)Context;
    FwpsFreeCloneNetBufferList0(NetBufferList, 0);
    FwpsDereferenceNetBufferList0(send->Original, DispatchLevel);
    ExFreePoolWithTag(send, LATCH_TAG_PENDING);
    LatchInjectionDone();
}

/* Takes the entry's datagram before its operation is completed (the reauthorization
   pass frees the entry): a send record on permit, NULL (reference dropped) otherwise. */
static PLATCH_SEND TakeDatagram(PLATCH_PENDING Entry)
{
    PNET_BUFFER_LIST original = Entry->NetBufferList;
    PLATCH_SEND send;

    if (original == NULL) {
        return NULL;
    }
    Entry->NetBufferList = NULL;
    if (Entry->Action != LATCH_ACTION_PERMIT) {
        FwpsDereferenceNetBufferList0(original, FALSE);
        return NULL;
    }
    send = (PLATCH_SEND)ExAllocatePool2(POOL_FLAG_NON_PAGED, sizeof(LATCH_SEND), LATCH_TAG_PENDING);
    if (send == NULL) {
        LatchCount(LATCH_STAT_ALLOC_FAILURES);
        FwpsDereferenceNetBufferList0(original, FALSE);
        return NULL;
    }
    send->Original = original;
    send->EndpointHandle = Entry->EndpointHandle;
    send->RemoteScopeId = Entry->RemoteScopeId;
    send->CompartmentId = Entry->CompartmentId;
    send->V4 = Entry->Tuple.IpVersion == 4;
    RtlCopyMemory(send->RemoteAddr, Entry->Tuple.RemoteAddr, sizeof(send->RemoteAddr));
    return send;
}

/* As the WFP inspect sample: the permitted first datagram, absorbed at
   ALE_AUTH_CONNECT, is cloned and sent again on its endpoint. */
static void SendDatagram(PLATCH_SEND Send)
{
    FWPS_TRANSPORT_SEND_PARAMS1 params;
    PNET_BUFFER_LIST clone = NULL;
    NTSTATUS status;

    status = FwpsAllocateCloneNetBufferList0(Send->Original, NULL, NULL, 0, &clone);
    if (!NT_SUCCESS(status)) {
        LatchCount(LATCH_STAT_ALLOC_FAILURES);
        FwpsDereferenceNetBufferList0(Send->Original, FALSE);
        ExFreePoolWithTag(Send, LATCH_TAG_PENDING);
        return;
    }
    RtlZeroMemory(&params, sizeof(params));
    params.remoteAddress = Send->RemoteAddr;
    params.remoteScopeId = Send->RemoteScopeId;
    InterlockedIncrement(&g.InjectionsInFlight);
    status = FwpsInjectTransportSendAsync1(Send->V4 ? g.InjectionHandleV4 : g.InjectionHandleV6, NULL,
                                           Send->EndpointHandle, 0, &params, Send->V4 ? AF_INET : AF_INET6,
                                           Send->CompartmentId, clone, LatchSendComplete, Send);
    if (!NT_SUCCESS(status)) {
        FwpsFreeCloneNetBufferList0(clone, 0);
        FwpsDereferenceNetBufferList0(Send->Original, FALSE);
        ExFreePoolWithTag(Send, LATCH_TAG_PENDING);
        LatchInjectionDone();
        LatchCount(LATCH_STAT_SEND_FAILURES);
    }
}

/* Completes every entry of a batch built by DecideLocked, counting each in StatIndex
   (if not LATCH_STATS_COUNT) before it is completed: a completed connection may be
   observed at once. Must not hold g.Lock. */
LATCH_UNLOCKED static void CompleteBatch(PLIST_ENTRY Batch, ULONG StatIndex)
{
    while (!IsListEmpty(Batch)) {
        PLATCH_PENDING e = CONTAINING_RECORD(RemoveHeadList(Batch), LATCH_PENDING, CompleteLink);
        if (StatIndex < LATCH_STATS_COUNT) {
            LatchCount(StatIndex);
        }
        if (IsInbound(e)) {
            CompleteInbound(e);
        } else {
            /* Triggers the reauthorization pass, which applies e->Action and frees e
               (possibly before this call returns): e is not touched afterwards. */
            PLATCH_SEND send = TakeDatagram(e);
            FwpsCompleteOperation0(e->CompletionContext, NULL);
            if (send != NULL) {
                SendDatagram(send);
            }
        }
    }
}

NTSTATUS LatchPend(const LATCH_TUPLE *Tuple, const FWPS_INCOMING_METADATA_VALUES0 *Meta, void *LayerData,
                   FWPS_CLASSIFY_OUT0 *ClassifyOut)
{
    PLATCH_PENDING entry;
    UINT16 pathLen = 0;
    const UINT8 *pathBytes = NULL;
    BOOLEAN inbound = Tuple->Direction == LATCH_DIRECTION_INBOUND;
    LATCH_PROC_SLOT *proc;
    KIRQL irql;
    NTSTATUS status;

    if (!FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_COMPLETION_HANDLE) ||
        Meta->completionHandle == NULL) {
        return STATUS_INVALID_PARAMETER;
    }
    if (inbound && (LayerData == NULL ||
                    !FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_IP_HEADER_SIZE |
                                                              FWPS_METADATA_FIELD_TRANSPORT_HEADER_SIZE))) {
        return STATUS_INVALID_PARAMETER;
    }
    if (FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_PROCESS_PATH) && Meta->processPath != NULL &&
        Meta->processPath->data != NULL) {
        UINT32 units = Meta->processPath->size / (UINT32)sizeof(WCHAR);
        pathBytes = Meta->processPath->data;
        /* The blob usually carries the terminating NUL; the wire form does not. */
        while (units > 0 && pathBytes[2 * (units - 1)] == 0 && pathBytes[2 * (units - 1) + 1] == 0) {
            units--;
        }
        /* A path we cannot send whole is not sent at all: a truncated path could
           match another program's rule. */
        pathLen = units <= LATCH_MAX_PATH_UNITS ? (UINT16)units : 0;
    }

    entry = (PLATCH_PENDING)ExAllocatePool2(POOL_FLAG_NON_PAGED,
                                            FIELD_OFFSET(LATCH_PENDING, Path) + sizeof(WCHAR) * (SIZE_T)(pathLen + 1),
                                            LATCH_TAG_PENDING);
    if (entry == NULL) {
        LatchCount(LATCH_STAT_ALLOC_FAILURES);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    entry->Tuple = *Tuple;
    entry->EndpointHandle = FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE)
                                ? Meta->transportEndpointHandle : 0;
    entry->ProcessId = FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_PROCESS_ID) ? Meta->processId : 0;
    entry->PathLen = pathLen;
    if (pathLen != 0) {
        RtlCopyMemory(entry->Path, pathBytes, sizeof(WCHAR) * (SIZE_T)pathLen);
    }
    if (inbound) {
        entry->IpHeaderSize = Meta->ipHeaderSize;
        entry->TransportHeaderSize = Meta->transportHeaderSize;
        entry->CompartmentId = FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_COMPARTMENT_ID)
                                   ? Meta->compartmentId : 0;
    }
    KeQuerySystemTime((PLARGE_INTEGER)&entry->Timestamp);

    KeAcquireSpinLock(&g.Lock, &irql);
    if (!g.Accepting || !g.ClientConnected) {
        KeReleaseSpinLock(&g.Lock, irql);
        FreeEntry(entry);
        LatchCount(LATCH_STAT_NO_CLIENT_DEFAULT);
        return STATUS_DEVICE_BUSY;
    }
    /* Decided entries count too: they live until their reauthorization pass, which
       WFP normally sends at once, or LATCH_REAUTH_GRACE_MS. */
    proc = NULL;
    if (g.PendingCount < LATCH_MAX_PENDING && g.PendingCount + g.DecidedCount < 2 * LATCH_MAX_PENDING) {
        proc = ProcFindLocked(entry->ProcessId, TRUE); /* NULL: no slot within the probe bound */
    }
    if (proc == NULL || proc->Count >= LATCH_MAX_PENDING_PER_PROCESS) {
        KeReleaseSpinLock(&g.Lock, irql);
        FreeEntry(entry);
        LatchCount(LATCH_STAT_CAP_EXCEEDED);
        return STATUS_QUOTA_EXCEEDED;
    }
    /* Reserve the slot, then pend and reference outside the lock (they call into WFP). */
    entry->State = LatchPendingReserved;
    entry->CacheGeneration = g.CacheGeneration; /* before the service can see it */
    InsertTailList(&g.PendingList, &entry->Link);
    g.PendingCount++;
    proc->Count++;
    KeReleaseSpinLock(&g.Lock, irql);

    status = FwpsPendOperation0(Meta->completionHandle, &entry->CompletionContext);
    if (!NT_SUCCESS(status)) {
        KeAcquireSpinLock(&g.Lock, &irql);
        RemoveEntryList(&entry->Link);
        g.PendingCount--;
        ProcReleaseLocked(entry->ProcessId);
        KeReleaseSpinLock(&g.Lock, irql);
        FreeEntry(entry);
        return status;
    }
    if (!inbound && Tuple->Protocol != 6 && LayerData != NULL) {
        /* UDP/ICMP: the absorbed first datagram is sent again on permit. */
        FwpsReferenceNetBufferList0((PNET_BUFFER_LIST)LayerData, TRUE);
        entry->NetBufferList = (PNET_BUFFER_LIST)LayerData;
        if (FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_REMOTE_SCOPE_ID)) {
            entry->RemoteScopeId = Meta->remoteScopeId;
        }
        entry->CompartmentId = FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_COMPARTMENT_ID)
                                   ? Meta->compartmentId : 0;
    }
    if (inbound) {
        /* Keep the packet alive past classify; released after re-injection or drop. */
        FwpsReferenceNetBufferList0((PNET_BUFFER_LIST)LayerData, TRUE);
        entry->NetBufferList = (PNET_BUFFER_LIST)LayerData;
        /* Where the data started at classify (after the transport header): the stack
           may move it back once the packet is absorbed. */
        entry->NblOffset = NET_BUFFER_DATA_OFFSET(NET_BUFFER_LIST_FIRST_NB((PNET_BUFFER_LIST)LayerData));
    }
    entry->RequestId = (UINT64)InterlockedIncrement64(&g.NextRequestId);
    entry->Deadline = KeQueryInterruptTime() + LATCH_MS_TO_100NS(g.TimeoutMs);
    entry->PacketDeadline = KeQueryInterruptTime() + LATCH_MS_TO_100NS(LATCH_PACKET_HOLD_MS);

    KeAcquireSpinLock(&g.Lock, &irql);
    entry->State = LatchPendingWaiting;
    IdInsertLocked(entry);
    if (!g.Accepting || !g.ClientConnected) {
        /* Unload or a disconnect completed every waiting entry while we were pending
           this one: it gets the default like they did. */
        LIST_ENTRY batch;
        InitializeListHead(&batch);
        DecideLocked(entry, g.DefaultAction, &batch);
        KeReleaseSpinLock(&g.Lock, irql);
        CompleteBatch(&batch, LATCH_STAT_NO_CLIENT_DEFAULT);
    } else {
        InsertTailList(&g.SendQueue, &entry->SendLink);
        entry->Queued = TRUE;
        KeReleaseSpinLock(&g.Lock, irql);
    }

    LatchCount(LATCH_STAT_PENDED);
    LatchWakeWorker();
    ClassifyOut->actionType = FWP_ACTION_BLOCK;
    ClassifyOut->flags |= FWPS_CLASSIFY_OUT_FLAG_ABSORB;
    ClassifyOut->rights &= ~FWPS_RIGHT_ACTION_WRITE;
    return STATUS_SUCCESS;
}

static BOOLEAN TupleEqual(const LATCH_TUPLE *a, const LATCH_TUPLE *b)
{
    return a->WireLayer == b->WireLayer && a->Protocol == b->Protocol && a->LocalPort == b->LocalPort &&
           a->RemotePort == b->RemotePort && RtlEqualMemory(a->LocalAddr, b->LocalAddr, 16) &&
           RtlEqualMemory(a->RemoteAddr, b->RemoteAddr, 16);
}

BOOLEAN LatchTakeReauthVerdict(const LATCH_TUPLE *Tuple, UINT64 EndpointHandle, ULONG *Action)
{
    PLATCH_PENDING e, found = NULL;
    KIRQL irql;

    KeAcquireSpinLock(&g.Lock, &irql);
    for (e = g.ReauthBuckets[ReauthHash(Tuple, EndpointHandle)]; e != NULL; e = e->ReauthNext) {
        if (e->State == LatchPendingDecided && e->EndpointHandle == EndpointHandle && TupleEqual(&e->Tuple, Tuple)) {
            found = e;
            ReauthRemoveLocked(e);
            RemoveEntryList(&e->Link);
            g.DecidedCount--;
            if (e->Action == LATCH_ACTION_PERMIT) {
                LatchRememberVerdictLocked(&e->Tuple, e->RequestId);
            }
            break;
        }
    }
    KeReleaseSpinLock(&g.Lock, irql);
    if (found == NULL) {
        return FALSE;
    }
    *Action = found->Action;
    FreeEntry(found);
    LatchCount(LATCH_STAT_REAUTHORIZED);
    return TRUE;
}

/* Which scope a verdict for e may be cached under (LATCH_SCOPE_NONE: none). */
LATCH_LOCKED static ULONG CacheScopeLocked(const LATCH_PENDING *e, ULONG CacheScope, ULONG CacheTtlMs, ULONG *TtlMs)
{
    if (e->CacheGeneration != g.CacheGeneration) {
        return LATCH_SCOPE_NONE; /* a FLUSH came after it was pended: maybe decided under old rules */
    }
    if (CacheScope != LATCH_SCOPE_NONE) {
        *TtlMs = CacheTtlMs;
        return CacheScope;
    }
    if (e->PacketReleased && IsInbound(e)) {
        /* The held packet was dropped: the peer's retransmit of this very connection
           gets this verdict (PROTOCOL.md, "Held packets"). */
        *TtlMs = LATCH_RETRANSMIT_TTL_MS;
        return LATCH_SCOPE_CONNECTION;
    }
    return LATCH_SCOPE_NONE;
}

NTSTATUS LatchDeliverVerdict(UINT64 RequestId, ULONG Action, ULONG CacheScope, ULONG CacheTtlMs, UINT64 RuleTag)
{
    LIST_ENTRY batch;
    PLATCH_PENDING e;
    PLATCH_CACHE_ENTRY fresh = NULL;
    ULONG scope = LATCH_SCOPE_NONE, ttl = 0;
    UINT16 pathLen = 0;
    KIRQL irql;

    InitializeListHead(&batch);
    /* A cache entry is allocated outside the lock: look first whether one is wanted
       and for how long a path (fixed for the entry's life). */
    KeAcquireSpinLock(&g.Lock, &irql);
    e = FindWaitingLocked(RequestId);
    if (e != NULL) {
        scope = CacheScopeLocked(e, CacheScope, CacheTtlMs, &ttl);
        pathLen = e->PathLen;
    }
    KeReleaseSpinLock(&g.Lock, irql);
    if (scope != LATCH_SCOPE_NONE) {
        fresh = LatchCacheAllocate(pathLen); /* NULL: decided, not cached */
    }

    KeAcquireSpinLock(&g.Lock, &irql);
    e = FindWaitingLocked(RequestId);
    if (e != NULL) {
        /* Again: a FLUSH may have come in between. */
        scope = CacheScopeLocked(e, CacheScope, CacheTtlMs, &ttl);
        if (fresh != NULL && scope != LATCH_SCOPE_NONE) {
            fresh = LatchCacheInsertLocked(fresh, &e->Tuple, e->ProcessId, e->Path, e->PathLen, scope, ttl, Action,
                                           RuleTag);
        }
        DecideLocked(e, Action, &batch);
    }
    KeReleaseSpinLock(&g.Lock, irql);
    LatchCacheFree(fresh); /* unused, or the entry it replaced */
    if (e == NULL) {
        LatchCount(LATCH_STAT_VERDICTS_LATE);
        return STATUS_NOT_FOUND;
    }
    CompleteBatch(&batch, LATCH_STATS_COUNT);
    return STATUS_SUCCESS;
}

typedef struct _LATCH_SCAN_ARGS {
    ULONGLONG Now;
    BOOLEAN All;
    ULONG Released;
    PNET_BUFFER_LIST Packets[LATCH_RELEASE_BATCH];
} LATCH_SCAN_ARGS;

LATCH_LOCKED static void VisitExpired(PLATCH_PENDING Entry, PVOID Context, PLIST_ENTRY Batch)
{
    LATCH_SCAN_ARGS *args = (LATCH_SCAN_ARGS *)Context;
    if (Entry->State != LatchPendingWaiting) {
        return;
    }
    if (Entry->Deadline <= args->Now) {
        DecideLocked(Entry, g.DefaultAction, Batch);
    } else if (Entry->NetBufferList != NULL && Entry->PacketDeadline <= args->Now &&
               args->Released < LATCH_RELEASE_BATCH) {
        args->Packets[args->Released++] = Entry->NetBufferList;
        Entry->NetBufferList = NULL;
        Entry->PacketReleased = TRUE;
    }
}

/* Applies the default to entries past their deadline and drops packets held longer
   than LATCH_PACKET_HOLD_MS (at most LATCH_RELEASE_BATCH per call; the worker calls it
   every LATCH_WORKER_TICK_MS). */
void LatchExpirePending(void)
{
    LIST_ENTRY batch;
    LATCH_SCAN_ARGS args;
    ULONG i;

    InitializeListHead(&batch);
    args.Now = KeQueryInterruptTime();
    args.All = FALSE;
    args.Released = 0;
    ScanPending(VisitExpired, &args, &batch);
    for (i = 0; i < args.Released; i++) {
        FwpsDereferenceNetBufferList0(args.Packets[i], FALSE);
    }
    CompleteBatch(&batch, LATCH_STAT_TIMED_OUT);
}

LATCH_LOCKED static void VisitWaiting(PLATCH_PENDING Entry, PVOID Context, PLIST_ENTRY Batch)
{
    UNREFERENCED_PARAMETER(Context);
    if (Entry->State == LatchPendingWaiting) {
        DecideLocked(Entry, g.DefaultAction, Batch);
    }
}

void LatchCompleteAllWithDefault(ULONG StatIndex)
{
    LIST_ENTRY batch;

    InitializeListHead(&batch);
    ScanPending(VisitWaiting, NULL, &batch);
    CompleteBatch(&batch, StatIndex);
}

LATCH_LOCKED static void VisitDecidedLeftover(PLATCH_PENDING Entry, PVOID Context, PLIST_ENTRY Batch)
{
    LATCH_SCAN_ARGS *args = (LATCH_SCAN_ARGS *)Context;
    if (Entry->State == LatchPendingDecided && (args->All || Entry->Deadline <= args->Now)) {
        ReauthRemoveLocked(Entry);
        RemoveEntryList(&Entry->Link);
        g.DecidedCount--;
        InsertTailList(Batch, &Entry->CompleteLink);
    }
}

void LatchFreeDecidedLeftovers(BOOLEAN All)
{
    LIST_ENTRY batch;
    LATCH_SCAN_ARGS args;

    InitializeListHead(&batch);
    args.Now = KeQueryInterruptTime();
    args.All = All;
    args.Released = 0;
    ScanPending(VisitDecidedLeftover, &args, &batch);
    while (!IsListEmpty(&batch)) {
        FreeEntry(CONTAINING_RECORD(RemoveHeadList(&batch), LATCH_PENDING, CompleteLink));
    }
}

BOOLEAN LatchDequeueForSend(UINT8 *Buffer, ULONG BufferLength, ULONG *Length, UINT64 *RequestId)
{
    LATCH_MSG_CONNECT_REQUEST fixed;
    PLATCH_PENDING e;
    KIRQL irql;

    *Length = 0;
    KeAcquireSpinLock(&g.Lock, &irql);
    if (IsListEmpty(&g.SendQueue)) {
        KeReleaseSpinLock(&g.Lock, irql);
        return FALSE;
    }
    e = CONTAINING_RECORD(RemoveHeadList(&g.SendQueue), LATCH_PENDING, SendLink);
    e->Queued = FALSE;
    RtlZeroMemory(&fixed, sizeof(fixed));
    fixed.RequestId = e->RequestId;
    fixed.Layer = e->Tuple.WireLayer;
    fixed.Direction = e->Tuple.Direction;
    fixed.IpVersion = e->Tuple.IpVersion;
    fixed.Protocol = e->Tuple.Protocol;
    RtlCopyMemory(fixed.LocalAddr, e->Tuple.LocalAddr, 16);
    RtlCopyMemory(fixed.RemoteAddr, e->Tuple.RemoteAddr, 16);
    fixed.LocalPort = e->Tuple.LocalPort;
    fixed.RemotePort = e->Tuple.RemotePort;
    fixed.ProcessId = e->ProcessId;
    fixed.Timestamp = e->Timestamp;
    fixed.PathLen = e->PathLen;
    *Length = LatchEncodeConnectRequest(&fixed, e->Path, Buffer, BufferLength);
    *RequestId = e->RequestId;
    KeReleaseSpinLock(&g.Lock, irql);
    return TRUE;
}

void LatchSendFailed(UINT64 RequestId)
{
    LIST_ENTRY batch;
    PLATCH_PENDING e;
    KIRQL irql;

    InitializeListHead(&batch);
    KeAcquireSpinLock(&g.Lock, &irql);
    e = FindWaitingLocked(RequestId);
    if (e != NULL) {
        DecideLocked(e, g.DefaultAction, &batch);
    }
    KeReleaseSpinLock(&g.Lock, irql);
    CompleteBatch(&batch, LATCH_STATS_COUNT);
}
