/*
 * Flow contexts (seed 001). At ALE_FLOW_ESTABLISHED a context with the pid and
 * process path is associated with the flow for the stream (TCP) or datagram-data
 * layer, whose callouts count bytes and register flowDeleteFn, the only place a
 * context is freed. Every live context is on g.FlowList so unload can remove them
 * all before unregistering the callouts.
 */
#include "latch.h"

static void FreeFlow(PLATCH_FLOW Flow)
{
    ExFreePoolWithTag(Flow, LATCH_TAG_FLOW);
}

/* Caller holds g.Lock. NoFlows tracks FlowCount == 0 so unload can wait for the last
   flowDeleteFn however late it comes (FwpsFlowRemoveContext0 may return STATUS_PENDING). */
LATCH_LOCKED static void FlowCountIncLocked(void)
{
    if (g.FlowCount++ == 0) {
        KeClearEvent(&g.NoFlows);
    }
}

LATCH_LOCKED static void FlowCountDecLocked(void)
{
    if (--g.FlowCount == 0) {
        KeSetEvent(&g.NoFlows, IO_NO_INCREMENT, FALSE);
    }
}

static BOOLEAN SameConnection(const LATCH_TUPLE *a, const LATCH_TUPLE *b)
{
    return a->IpVersion == b->IpVersion && a->Protocol == b->Protocol && a->LocalPort == b->LocalPort &&
           a->RemotePort == b->RemotePort && RtlEqualMemory(a->LocalAddr, b->LocalAddr, 16) &&
           RtlEqualMemory(a->RemoteAddr, b->RemoteAddr, 16);
}

/* The flow table: every live context, hashed by connection so that the
   reauthorization classify finds its flow in O(1) under g.Lock. */
static ULONG FlowHash(const LATCH_TUPLE *Tuple)
{
    UINT64 h = ((UINT64)Tuple->LocalPort << 24 | (UINT64)Tuple->RemotePort << 8 | Tuple->Protocol) *
               0x9E3779B97F4A7C15ULL;
    ULONG i;
    for (i = 0; i < 16; i++) {
        h = (h ^ Tuple->RemoteAddr[i] ^ ((UINT64)Tuple->LocalAddr[i] << 8)) * 0x100000001B3ULL;
    }
    return (ULONG)(h >> 32) & (LATCH_FLOW_BUCKETS - 1);
}

LATCH_LOCKED static void FlowLinkLocked(PLATCH_FLOW Flow)
{
    PLATCH_FLOW *head = &g.FlowBuckets[FlowHash(&Flow->Tuple)];
    InsertTailList(&g.FlowList, &Flow->Link);
    Flow->HashNext = *head;
    *head = Flow;
    FlowCountIncLocked();
}

LATCH_LOCKED static void FlowUnlinkLocked(PLATCH_FLOW Flow)
{
    PLATCH_FLOW *pp = &g.FlowBuckets[FlowHash(&Flow->Tuple)];
    while (*pp != NULL && *pp != Flow) {
        pp = &(*pp)->HashNext;
    }
    if (*pp == Flow) {
        *pp = Flow->HashNext;
    }
    Flow->HashNext = NULL;
    RemoveEntryList(&Flow->Link);
    InitializeListHead(&Flow->Link);
}

LATCH_LOCKED void LatchRememberVerdictLocked(const LATCH_TUPLE *Tuple, UINT64 RequestId)
{
    LATCH_RECENT *slot = &g.Recent[g.RecentNext++ % LATCH_RECENT_SLOTS]; /* oldest goes */
    slot->Tuple = *Tuple;
    slot->RequestId = RequestId;
}

/* Takes the id of the request that decided this connection, if it is still known. */
LATCH_LOCKED static UINT64 TakeVerdictIdLocked(const LATCH_TUPLE *Tuple)
{
    ULONG i;
    for (i = 0; i < LATCH_RECENT_SLOTS; i++) {
        if (g.Recent[i].RequestId != 0 && SameConnection(&g.Recent[i].Tuple, Tuple)) {
            UINT64 id = g.Recent[i].RequestId;
            g.Recent[i].RequestId = 0;
            return id;
        }
    }
    return 0;
}

void LatchFlowEstablished(const FWPS_INCOMING_METADATA_VALUES0 *Meta, const LATCH_TUPLE *Tuple)
{
    UINT8 Protocol = Tuple->Protocol, IpVersion = Tuple->IpVersion;
    PLATCH_FLOW flow;
    UINT16 pathLen = 0;
    const UINT8 *pathBytes = NULL;
    ULONG index;
    BOOLEAN removeNow = FALSE, freeNow = FALSE;
    UINT64 handle;
    UINT16 layer;
    UINT32 callout;
    NTSTATUS status;
    KIRQL irql;

    if (!FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_FLOW_HANDLE)) {
        return;
    }
    if (Protocol == 6) {
        index = IpVersion == 4 ? LATCH_CALLOUT_STREAM_V4 : LATCH_CALLOUT_STREAM_V6;
    } else {
        index = IpVersion == 4 ? LATCH_CALLOUT_DATAGRAM_V4 : LATCH_CALLOUT_DATAGRAM_V6;
    }
    if (!g.CalloutRegistered[index]) {
        return;
    }
    if (FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_PROCESS_PATH) && Meta->processPath != NULL &&
        Meta->processPath->data != NULL) {
        UINT32 units = Meta->processPath->size / (UINT32)sizeof(WCHAR);
        pathBytes = Meta->processPath->data;
        while (units > 0 && pathBytes[2 * (units - 1)] == 0 && pathBytes[2 * (units - 1) + 1] == 0) {
            units--;
        }
        pathLen = units <= LATCH_MAX_PATH_UNITS ? (UINT16)units : 0;
    }
    flow = (PLATCH_FLOW)ExAllocatePool2(POOL_FLAG_NON_PAGED,
                                        FIELD_OFFSET(LATCH_FLOW, Path) + sizeof(WCHAR) * (SIZE_T)(pathLen + 1),
                                        LATCH_TAG_FLOW);
    if (flow == NULL) {
        LatchCount(LATCH_STAT_ALLOC_FAILURES);
        return;
    }
    flow->Tuple = *Tuple;
    flow->FlowHandle = Meta->flowHandle;
    flow->LayerId = IpVersion == 4 ? (Protocol == 6 ? FWPS_LAYER_STREAM_V4 : FWPS_LAYER_DATAGRAM_DATA_V4)
                                   : (Protocol == 6 ? FWPS_LAYER_STREAM_V6 : FWPS_LAYER_DATAGRAM_DATA_V6);
    flow->CalloutId = g.CalloutIds[index];
    flow->ProcessId = FWPS_IS_METADATA_FIELD_PRESENT(Meta, FWPS_METADATA_FIELD_PROCESS_ID) ? Meta->processId : 0;
    flow->PathLen = pathLen;
    if (pathLen != 0) {
        RtlCopyMemory(flow->Path, pathBytes, sizeof(WCHAR) * (SIZE_T)pathLen);
    }

    /* On the list before it is associated, so flowDeleteFn always finds it. Once the
       association succeeds the context is WFP's: flowDeleteFn may run on another CPU at
       any moment, so what the association needs is copied first, and Associating keeps
       flowDeleteFn from freeing it while this thread still looks at it. */
    handle = flow->FlowHandle;
    layer = flow->LayerId;
    callout = flow->CalloutId;
    KeAcquireSpinLock(&g.Lock, &irql);
    if (!g.Accepting || g.FlowCount >= LATCH_MAX_FLOWS) {
        KeReleaseSpinLock(&g.Lock, irql);
        FreeFlow(flow);
        return;
    }
    flow->VerdictId = TakeVerdictIdLocked(Tuple);
    flow->Associating = TRUE;
    FlowLinkLocked(flow);
    KeReleaseSpinLock(&g.Lock, irql);

    status = FwpsFlowAssociateContext0(handle, layer, callout, (UINT64)(ULONG_PTR)flow);
    KeAcquireSpinLock(&g.Lock, &irql);
    flow->Associating = FALSE;
    if (!NT_SUCCESS(status)) {
        FlowUnlinkLocked(flow);
        FlowCountDecLocked();
        freeNow = TRUE;
    } else if (flow->DeleteSeen) {
        /* flowDeleteFn already ran (and unlinked it): ours to free. */
        FlowCountDecLocked();
        freeNow = TRUE;
    } else {
        /* Unload may have swept the list between our insert and the association. */
        removeNow = flow->RemoveRequested;
    }
    KeReleaseSpinLock(&g.Lock, irql);
    if (freeNow) {
        FreeFlow(flow);
    } else if (removeNow) {
        FwpsFlowRemoveContext0(handle, layer, callout);
    }
}

void NTAPI LatchFlowDelete(UINT16 LayerId, UINT32 CalloutId, UINT64 FlowContext)
{
    PLATCH_FLOW flow = (PLATCH_FLOW)(ULONG_PTR)FlowContext;
    KIRQL irql;

    UNREFERENCED_PARAMETER(LayerId);
    UNREFERENCED_PARAMETER(CalloutId);
    if (flow == NULL) {
        return;
    }
    KeAcquireSpinLock(&g.Lock, &irql);
    FlowUnlinkLocked(flow);
    if (flow->Associating) {
        flow->DeleteSeen = TRUE; /* LatchFlowEstablished still holds it and frees it */
        KeReleaseSpinLock(&g.Lock, irql);
        return;
    }
    FlowCountDecLocked();
    KeReleaseSpinLock(&g.Lock, irql);
    FreeFlow(flow);
}

/* The verdict an established flow was let through with (a context exists only for a
   permitted flow), for its reauthorization pass, which cannot be pended. */
BOOLEAN LatchFlowVerdict(const LATCH_TUPLE *Tuple, ULONG *Action)
{
    PLATCH_FLOW f;
    BOOLEAN found = FALSE;
    KIRQL irql;

    KeAcquireSpinLock(&g.Lock, &irql);
    for (f = g.FlowBuckets[FlowHash(Tuple)]; f != NULL; f = f->HashNext) {
        if (SameConnection(&f->Tuple, Tuple)) {
            found = TRUE;
            break;
        }
    }
    KeReleaseSpinLock(&g.Lock, irql);
    if (found) {
        *Action = LATCH_ACTION_PERMIT;
    }
    return found;
}

void LatchFlowCountBytes(UINT64 FlowContext, SIZE_T Bytes, BOOLEAN Inbound)
{
    PLATCH_FLOW flow = (PLATCH_FLOW)(ULONG_PTR)FlowContext;
    if (flow != NULL) {
        InterlockedAdd64(Inbound ? &flow->BytesIn : &flow->BytesOut, (LONG64)Bytes);
    }
}

void LatchRemoveAllFlows(void)
{
    KIRQL irql;

    PAGED_CODE();
    for (;;) {
        PLIST_ENTRY link;
        PLATCH_FLOW flow = NULL;
        UINT64 handle = 0;
        UINT16 layer = 0;
        UINT32 callout = 0;

        /* O(1) per hold of the lock: a flow asked to go moves to the tail, so the head
           is the next one to ask until every flow has been asked (no flow is added once
           unload has begun: g.Accepting is 0). */
        KeAcquireSpinLock(&g.Lock, &irql);
        link = g.FlowList.Flink;
        if (link != &g.FlowList) {
            PLATCH_FLOW f = CONTAINING_RECORD(link, LATCH_FLOW, Link);
            if (!f->RemoveRequested) {
                f->RemoveRequested = TRUE;
                RemoveEntryList(&f->Link);
                InsertTailList(&g.FlowList, &f->Link);
                flow = f;
                handle = f->FlowHandle;
                layer = f->LayerId;
                callout = f->CalloutId;
            }
        }
        KeReleaseSpinLock(&g.Lock, irql);
        if (flow == NULL) {
            break;
        }
        /* STATUS_SUCCESS: flowDeleteFn already ran. STATUS_PENDING: it runs when the
           flow's current classify ends. Failure: the flow is being deleted (flowDeleteFn
           is on its way) or its association is still being made (LatchFlowEstablished
           sees RemoveRequested). Either way the context is freed by someone else. */
        FwpsFlowRemoveContext0(handle, layer, callout);
    }
    /* No timeout: until the last flowDeleteFn has run WFP holds pointers into our
       pool and would refuse (STATUS_DEVICE_BUSY) to unregister the callouts. */
    KeWaitForSingleObject(&g.NoFlows, Executive, KernelMode, FALSE, NULL);
}
