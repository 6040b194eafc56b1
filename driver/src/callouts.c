/*
 * WFP callouts. classifyFn runs at IRQL <= DISPATCH_LEVEL: it never sends and never
 * waits. A connection with no cached verdict is pended (FwpsPendOperation0), blocked
 * and absorbed with the write right cleared, and handed to the worker; the
 * reauthorization pass that follows FwpsCompleteOperation0 applies the stored verdict.
 * Provider, sublayer, callouts and filters are added in one transaction in a dynamic
 * session, so they vanish with the engine handle.
 */
#include "latch.h"
#include <initguid.h>

DEFINE_GUID(LATCH_PROVIDER_KEY, 0x6c617463, 0x6800, 0x4000, 0x80, 0x00, 0x70, 0x72, 0x6f, 0x76, 0x69, 0x64);
DEFINE_GUID(LATCH_SUBLAYER_KEY, 0x6c617463, 0x6800, 0x4001, 0x80, 0x00, 0x73, 0x75, 0x62, 0x6c, 0x61, 0x79);
DEFINE_GUID(LATCH_CALLOUT_KEY_BASE, 0x6c617463, 0x6801, 0x4000, 0x80, 0x00, 0x63, 0x61, 0x6c, 0x6c, 0x00, 0x00);

/* classifyFn (FWPS_CALLOUT_CLASSIFY_FN3) and notifyFn (FWPS_CALLOUT_NOTIFY_FN3) */
#define LATCH_CLASSIFY_ARGS                                                                                     \
    const FWPS_INCOMING_VALUES0 *inFixedValues, const FWPS_INCOMING_METADATA_VALUES0 *inMetaValues,             \
        void *layerData, const void *classifyContext, const FWPS_FILTER3 *filter, UINT64 flowContext,           \
        FWPS_CLASSIFY_OUT0 *classifyOut
static void NTAPI LatchClassifyAuth(LATCH_CLASSIFY_ARGS);
static void NTAPI LatchClassifyFlowEstablished(LATCH_CLASSIFY_ARGS);
static void NTAPI LatchClassifyStream(LATCH_CLASSIFY_ARGS);
static void NTAPI LatchClassifyDatagram(LATCH_CLASSIFY_ARGS);
static NTSTATUS NTAPI LatchNotify(FWPS_CALLOUT_NOTIFY_TYPE notifyType, const GUID *filterKey, FWPS_FILTER3 *filter);

typedef struct _LATCH_CALLOUT_DEF {
    const GUID *LayerKey;
    UINT16 LayerId;
    FWPS_CALLOUT_CLASSIFY_FN3 Classify;
    BOOLEAN FlowDelete;
    FWP_ACTION_TYPE FilterAction;
    UINT32 Flags;
} LATCH_CALLOUT_DEF;

static const LATCH_CALLOUT_DEF LatchCalloutDefs[LATCH_CALLOUT_COUNT] = {
    {&FWPM_LAYER_ALE_AUTH_CONNECT_V4, FWPS_LAYER_ALE_AUTH_CONNECT_V4, LatchClassifyAuth, FALSE, FWP_ACTION_CALLOUT_TERMINATING, 0},
    {&FWPM_LAYER_ALE_AUTH_CONNECT_V6, FWPS_LAYER_ALE_AUTH_CONNECT_V6, LatchClassifyAuth, FALSE, FWP_ACTION_CALLOUT_TERMINATING, 0},
    {&FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4, FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V4, LatchClassifyAuth, FALSE, FWP_ACTION_CALLOUT_TERMINATING, 0},
    {&FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6, FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V6, LatchClassifyAuth, FALSE, FWP_ACTION_CALLOUT_TERMINATING, 0},
    {&FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4, FWPS_LAYER_ALE_FLOW_ESTABLISHED_V4, LatchClassifyFlowEstablished, FALSE, FWP_ACTION_CALLOUT_INSPECTION, 0},
    {&FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6, FWPS_LAYER_ALE_FLOW_ESTABLISHED_V6, LatchClassifyFlowEstablished, FALSE, FWP_ACTION_CALLOUT_INSPECTION, 0},
    {&FWPM_LAYER_STREAM_V4, FWPS_LAYER_STREAM_V4, LatchClassifyStream, TRUE, FWP_ACTION_CALLOUT_INSPECTION, FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW},
    {&FWPM_LAYER_STREAM_V6, FWPS_LAYER_STREAM_V6, LatchClassifyStream, TRUE, FWP_ACTION_CALLOUT_INSPECTION, FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW},
    {&FWPM_LAYER_DATAGRAM_DATA_V4, FWPS_LAYER_DATAGRAM_DATA_V4, LatchClassifyDatagram, TRUE, FWP_ACTION_CALLOUT_INSPECTION, FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW},
    {&FWPM_LAYER_DATAGRAM_DATA_V6, FWPS_LAYER_DATAGRAM_DATA_V6, LatchClassifyDatagram, TRUE, FWP_ACTION_CALLOUT_INSPECTION, FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW},
};

/* The four decision layers carry a dummy filter each, replaced to force WFP to
   reauthorize existing flows when the service's rules change. */
#define LATCH_DUMMY_COUNT 4
C_ASSERT(RTL_NUMBER_OF(((LATCH_GLOBALS *)0)->DummyFilterIds) >= LATCH_DUMMY_COUNT);

static GUID CalloutKey(ULONG Index)
{
    GUID key = LATCH_CALLOUT_KEY_BASE;
    key.Data4[7] = (UCHAR)Index;
    return key;
}

/* ---- classify ---- */

static void ApplyAction(FWPS_CLASSIFY_OUT0 *ClassifyOut, const FWPS_FILTER3 *Filter, ULONG Action)
{
    ClassifyOut->actionType = (Action == LATCH_ACTION_PERMIT) ? FWP_ACTION_PERMIT : FWP_ACTION_BLOCK;
    if (Action != LATCH_ACTION_PERMIT || (Filter->flags & FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT)) {
        ClassifyOut->rights &= ~FWPS_RIGHT_ACTION_WRITE; /* a block is a veto */
    }
    LatchCountAction(Action);
}

static BOOLEAN ValueIs(const FWPS_INCOMING_VALUES0 *In, UINT32 Index, FWP_DATA_TYPE Type)
{
    return Index < In->valueCount && In->incomingValue[Index].value.type == Type;
}

static BOOLEAN ReadAddr(const FWPS_INCOMING_VALUES0 *In, UINT32 Index, BOOLEAN V6, UINT8 *Out)
{
    if (V6) {
        if (!ValueIs(In, Index, FWP_BYTE_ARRAY16_TYPE) || In->incomingValue[Index].value.byteArray16 == NULL) {
            return FALSE;
        }
        RtlCopyMemory(Out, In->incomingValue[Index].value.byteArray16->byteArray16, 16);
    } else {
        UINT32 a;
        if (!ValueIs(In, Index, FWP_UINT32)) {
            return FALSE;
        }
        a = In->incomingValue[Index].value.uint32; /* host order */
        RtlZeroMemory(Out, 16);
        Out[0] = (UINT8)(a >> 24);
        Out[1] = (UINT8)(a >> 16);
        Out[2] = (UINT8)(a >> 8);
        Out[3] = (UINT8)a;
    }
    return TRUE;
}

typedef struct _LATCH_FIELD_MAP {
    UINT32 LocalAddr, RemoteAddr, LocalPort, RemotePort, Protocol, Flags, IfIndex, SubIfIndex, Direction;
} LATCH_FIELD_MAP;

#define LATCH_MAP(L) { FWPS_FIELD_##L##_IP_LOCAL_ADDRESS, FWPS_FIELD_##L##_IP_REMOTE_ADDRESS, \
    FWPS_FIELD_##L##_IP_LOCAL_PORT, FWPS_FIELD_##L##_IP_REMOTE_PORT, FWPS_FIELD_##L##_IP_PROTOCOL, \
    FWPS_FIELD_##L##_FLAGS, FWPS_FIELD_##L##_INTERFACE_INDEX, FWPS_FIELD_##L##_SUB_INTERFACE_INDEX, 0 }

static const LATCH_FIELD_MAP MapConnectV4 = LATCH_MAP(ALE_AUTH_CONNECT_V4);
static const LATCH_FIELD_MAP MapConnectV6 = LATCH_MAP(ALE_AUTH_CONNECT_V6);
static const LATCH_FIELD_MAP MapAcceptV4 = LATCH_MAP(ALE_AUTH_RECV_ACCEPT_V4);
static const LATCH_FIELD_MAP MapAcceptV6 = LATCH_MAP(ALE_AUTH_RECV_ACCEPT_V6);

/* Reads the connection from the layer's fixed values, checking every value's type. */
static BOOLEAN ReadTuple(const FWPS_INCOMING_VALUES0 *In, LATCH_TUPLE *T, UINT32 *Flags)
{
    const LATCH_FIELD_MAP *m;
    BOOLEAN v6;

    RtlZeroMemory(T, sizeof(*T));
    switch (In->layerId) {
    case FWPS_LAYER_ALE_AUTH_CONNECT_V4:     m = &MapConnectV4; T->WireLayer = LATCH_LAYER_CONNECT_V4; break;
    case FWPS_LAYER_ALE_AUTH_CONNECT_V6:     m = &MapConnectV6; T->WireLayer = LATCH_LAYER_CONNECT_V6; break;
    case FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V4: m = &MapAcceptV4; T->WireLayer = LATCH_LAYER_RECV_ACCEPT_V4; break;
    case FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V6: m = &MapAcceptV6; T->WireLayer = LATCH_LAYER_RECV_ACCEPT_V6; break;
    default: return FALSE;
    }
    v6 = T->WireLayer == LATCH_LAYER_CONNECT_V6 || T->WireLayer == LATCH_LAYER_RECV_ACCEPT_V6;
    T->IpVersion = v6 ? 6 : 4;
    T->Direction = (T->WireLayer <= LATCH_LAYER_CONNECT_V6) ? LATCH_DIRECTION_OUTBOUND : LATCH_DIRECTION_INBOUND;
    if (!ReadAddr(In, m->LocalAddr, v6, T->LocalAddr) || !ReadAddr(In, m->RemoteAddr, v6, T->RemoteAddr) ||
        !ValueIs(In, m->LocalPort, FWP_UINT16) || !ValueIs(In, m->RemotePort, FWP_UINT16) ||
        !ValueIs(In, m->Protocol, FWP_UINT8) || !ValueIs(In, m->Flags, FWP_UINT32)) {
        return FALSE;
    }
    T->LocalPort = In->incomingValue[m->LocalPort].value.uint16;
    T->RemotePort = In->incomingValue[m->RemotePort].value.uint16;
    T->Protocol = In->incomingValue[m->Protocol].value.uint8;
    *Flags = In->incomingValue[m->Flags].value.uint32;
    if (T->Direction == LATCH_DIRECTION_INBOUND) {
        if (!ValueIs(In, m->IfIndex, FWP_UINT32) || !ValueIs(In, m->SubIfIndex, FWP_UINT32)) {
            return FALSE;
        }
        T->InterfaceIndex = In->incomingValue[m->IfIndex].value.uint32;
        T->SubInterfaceIndex = In->incomingValue[m->SubIfIndex].value.uint32;
    }
    return TRUE;
}

static void NTAPI LatchClassifyAuth(LATCH_CLASSIFY_ARGS)
{
    LATCH_TUPLE tuple;
    UINT32 flags = 0;
    ULONG action;
    UINT64 pid, endpoint;
    BOOLEAN reauth;
    const WCHAR *path = NULL;
    UINT16 pathLen = 0;

    UNREFERENCED_PARAMETER(classifyContext);
    UNREFERENCED_PARAMETER(flowContext);
    if (!ReadTuple(inFixedValues, &tuple, &flags)) {
        if (classifyOut->rights & FWPS_RIGHT_ACTION_WRITE) {
            ApplyAction(classifyOut, filter, g.DefaultAction);
        }
        return;
    }
    endpoint = FWPS_IS_METADATA_FIELD_PRESENT(inMetaValues, FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE)
                   ? inMetaValues->transportEndpointHandle : 0;
    if (!(classifyOut->rights & FWPS_RIGHT_ACTION_WRITE)) {
        /* A higher-priority filter already decided. If this is the reauthorization
           pass of an operation we completed, its entry is done with all the same. */
        if (flags & FWP_CONDITION_FLAG_IS_REAUTHORIZE) {
            (void)LatchTakeReauthVerdict(&tuple, endpoint, &action);
        }
        return;
    }
    if (layerData != NULL) {
        FWPS_PACKET_INJECTION_STATE state = FwpsQueryPacketInjectionState0(
            tuple.IpVersion == 4 ? g.InjectionHandleV4 : g.InjectionHandleV6, (const NET_BUFFER_LIST *)layerData, NULL);
        if (state == FWPS_PACKET_INJECTED_BY_SELF || state == FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF) {
            /* Our own re-injection (inbound packet, outbound first datagram) of a
               connection already permitted. */
            classifyOut->actionType = FWP_ACTION_PERMIT;
            if (filter->flags & FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT) {
                classifyOut->rights &= ~FWPS_RIGHT_ACTION_WRITE;
            }
            return;
        }
    }
    LatchCount(LATCH_STAT_CLASSIFIED);
    reauth = (flags & FWP_CONDITION_FLAG_IS_REAUTHORIZE) != 0;
    if (reauth && LatchTakeReauthVerdict(&tuple, endpoint, &action)) {
        ApplyAction(classifyOut, filter, action);
        return;
    }
    pid = FWPS_IS_METADATA_FIELD_PRESENT(inMetaValues, FWPS_METADATA_FIELD_PROCESS_ID) ? inMetaValues->processId : 0;
    if (FWPS_IS_METADATA_FIELD_PRESENT(inMetaValues, FWPS_METADATA_FIELD_PROCESS_PATH) &&
        inMetaValues->processPath != NULL && inMetaValues->processPath->data != NULL) {
        UINT32 units = inMetaValues->processPath->size / (UINT32)sizeof(WCHAR);
        path = (const WCHAR *)inMetaValues->processPath->data;
        while (units > 0 && path[units - 1] == 0) {
            units--;
        }
        pathLen = units <= LATCH_MAX_PATH_UNITS ? (UINT16)units : 0;
    }
    /* A reauthorization decides an existing connection again: counted, not recorded
       (history has one row per connection). */
    if (LatchCacheLookup(&tuple, pid, path, pathLen, !reauth, &action)) {
        LatchCount(LATCH_STAT_CACHE_HITS);
        ApplyAction(classifyOut, filter, action);
        return;
    }
    if (reauth) {
        /* WFP refuses to pend a reauthorization (STATUS_FWP_CANNOT_PEND): an
           established flow keeps the verdict it was let through with, anything
           else gets the default. */
        if (!LatchFlowVerdict(&tuple, &action)) {
            action = g.DefaultAction;
        }
        ApplyAction(classifyOut, filter, action);
        return;
    }
    if (NT_SUCCESS(LatchPend(&tuple, inMetaValues, layerData, classifyOut))) {
        return; /* BLOCK + ABSORB, write right cleared; the worker takes it from here */
    }
    ApplyAction(classifyOut, filter, g.DefaultAction);
}

static void ContinueIfAllowed(FWPS_CLASSIFY_OUT0 *ClassifyOut)
{
    if (ClassifyOut->rights & FWPS_RIGHT_ACTION_WRITE) {
        ClassifyOut->actionType = FWP_ACTION_CONTINUE;
    }
}

#define LATCH_FLOW_MAP(L) { FWPS_FIELD_##L##_IP_LOCAL_ADDRESS, FWPS_FIELD_##L##_IP_REMOTE_ADDRESS, \
    FWPS_FIELD_##L##_IP_LOCAL_PORT, FWPS_FIELD_##L##_IP_REMOTE_PORT, FWPS_FIELD_##L##_IP_PROTOCOL, \
    0, 0, 0, FWPS_FIELD_##L##_DIRECTION }
static const LATCH_FIELD_MAP MapEstablishedV4 = LATCH_FLOW_MAP(ALE_FLOW_ESTABLISHED_V4);
static const LATCH_FIELD_MAP MapEstablishedV6 = LATCH_FLOW_MAP(ALE_FLOW_ESTABLISHED_V6);

static void NTAPI LatchClassifyFlowEstablished(LATCH_CLASSIFY_ARGS)
{
    BOOLEAN v4 = inFixedValues->layerId == FWPS_LAYER_ALE_FLOW_ESTABLISHED_V4;
    const LATCH_FIELD_MAP *m = v4 ? &MapEstablishedV4 : &MapEstablishedV6;
    LATCH_TUPLE tuple;

    UNREFERENCED_PARAMETER(layerData);
    UNREFERENCED_PARAMETER(classifyContext);
    UNREFERENCED_PARAMETER(filter);
    UNREFERENCED_PARAMETER(flowContext);
    RtlZeroMemory(&tuple, sizeof(tuple));
    tuple.IpVersion = v4 ? 4 : 6;
    if (ReadAddr(inFixedValues, m->LocalAddr, !v4, tuple.LocalAddr) &&
        ReadAddr(inFixedValues, m->RemoteAddr, !v4, tuple.RemoteAddr) && ValueIs(inFixedValues, m->LocalPort, FWP_UINT16) &&
        ValueIs(inFixedValues, m->RemotePort, FWP_UINT16) && ValueIs(inFixedValues, m->Protocol, FWP_UINT8) &&
        ValueIs(inFixedValues, m->Direction, FWP_UINT32)) {
        tuple.LocalPort = inFixedValues->incomingValue[m->LocalPort].value.uint16;
        tuple.RemotePort = inFixedValues->incomingValue[m->RemotePort].value.uint16;
        tuple.Protocol = inFixedValues->incomingValue[m->Protocol].value.uint8;
        tuple.Direction = inFixedValues->incomingValue[m->Direction].value.uint32 == FWP_DIRECTION_INBOUND
                              ? LATCH_DIRECTION_INBOUND : LATCH_DIRECTION_OUTBOUND;
        LatchFlowEstablished(inMetaValues, &tuple);
    }
    ContinueIfAllowed(classifyOut);
}

static void NTAPI LatchClassifyStream(LATCH_CLASSIFY_ARGS)
{
    FWPS_STREAM_CALLOUT_IO_PACKET0 *packet = (FWPS_STREAM_CALLOUT_IO_PACKET0 *)layerData;

    UNREFERENCED_PARAMETER(inFixedValues);
    UNREFERENCED_PARAMETER(inMetaValues);
    UNREFERENCED_PARAMETER(classifyContext);
    UNREFERENCED_PARAMETER(filter);
    if (packet != NULL && packet->streamData != NULL) {
        LatchFlowCountBytes(flowContext, packet->streamData->dataLength,
                            (packet->streamData->flags & FWPS_STREAM_FLAG_RECEIVE) != 0);
    }
    ContinueIfAllowed(classifyOut);
}

static void NTAPI LatchClassifyDatagram(LATCH_CLASSIFY_ARGS)
{
    PNET_BUFFER_LIST nbl = (PNET_BUFFER_LIST)layerData;
    UINT32 directionIndex = inFixedValues->layerId == FWPS_LAYER_DATAGRAM_DATA_V4
                                ? (UINT32)FWPS_FIELD_DATAGRAM_DATA_V4_DIRECTION
                                : (UINT32)FWPS_FIELD_DATAGRAM_DATA_V6_DIRECTION;

    UNREFERENCED_PARAMETER(inMetaValues);
    UNREFERENCED_PARAMETER(classifyContext);
    UNREFERENCED_PARAMETER(filter);
    if (nbl != NULL && NET_BUFFER_LIST_FIRST_NB(nbl) != NULL && ValueIs(inFixedValues, directionIndex, FWP_UINT32)) {
        LatchFlowCountBytes(flowContext, NET_BUFFER_DATA_LENGTH(NET_BUFFER_LIST_FIRST_NB(nbl)),
                            inFixedValues->incomingValue[directionIndex].value.uint32 == FWP_DIRECTION_INBOUND);
    }
    ContinueIfAllowed(classifyOut);
}

static NTSTATUS NTAPI LatchNotify(FWPS_CALLOUT_NOTIFY_TYPE notifyType, const GUID *filterKey, FWPS_FILTER3 *filter)
{
    UNREFERENCED_PARAMETER(notifyType);
    UNREFERENCED_PARAMETER(filterKey);
    UNREFERENCED_PARAMETER(filter);
    return STATUS_SUCCESS;
}

/* ---- registration ---- */

static NTSTATUS AddDummyFilter(ULONG Index, UINT64 *FilterId)
{
    FWPM_FILTER0 filter;

    RtlZeroMemory(&filter, sizeof(filter));
    filter.displayData.name = (wchar_t *)L"latch reauthorization trigger";
    filter.providerKey = (GUID *)&LATCH_PROVIDER_KEY;
    filter.layerKey = *LatchCalloutDefs[Index].LayerKey;
    filter.subLayerKey = LATCH_SUBLAYER_KEY;
    filter.weight.type = FWP_UINT8;
    filter.weight.uint8 = 0; /* below our callout filter: never decides anything */
    filter.action.type = FWP_ACTION_PERMIT;
    return FwpmFilterAdd0(g.EngineHandle, &filter, NULL, FilterId);
}

static NTSTATUS AddObjects(void)
{
    FWPM_PROVIDER0 provider;
    FWPM_SUBLAYER0 subLayer;
    NTSTATUS status;
    ULONG i;

    RtlZeroMemory(&provider, sizeof(provider));
    provider.providerKey = LATCH_PROVIDER_KEY;
    provider.displayData.name = (wchar_t *)L"latch";
    status = FwpmProviderAdd0(g.EngineHandle, &provider, NULL);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    RtlZeroMemory(&subLayer, sizeof(subLayer));
    subLayer.subLayerKey = LATCH_SUBLAYER_KEY;
    subLayer.displayData.name = (wchar_t *)L"latch";
    subLayer.providerKey = (GUID *)&LATCH_PROVIDER_KEY;
    subLayer.weight = 0x8000;
    status = FwpmSubLayerAdd0(g.EngineHandle, &subLayer, NULL);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    for (i = 0; i < LATCH_CALLOUT_COUNT; i++) {
        FWPM_CALLOUT0 callout;
        FWPM_FILTER0 filter;
        UINT64 filterId;

        RtlZeroMemory(&callout, sizeof(callout));
        callout.calloutKey = CalloutKey(i);
        callout.displayData.name = (wchar_t *)L"latch callout";
        callout.providerKey = (GUID *)&LATCH_PROVIDER_KEY;
        callout.applicableLayer = *LatchCalloutDefs[i].LayerKey;
        status = FwpmCalloutAdd0(g.EngineHandle, &callout, NULL, NULL);
        if (!NT_SUCCESS(status)) {
            return status;
        }
        RtlZeroMemory(&filter, sizeof(filter));
        filter.displayData.name = (wchar_t *)L"latch filter";
        filter.providerKey = (GUID *)&LATCH_PROVIDER_KEY;
        filter.layerKey = *LatchCalloutDefs[i].LayerKey;
        filter.subLayerKey = LATCH_SUBLAYER_KEY;
        filter.weight.type = FWP_EMPTY; /* auto */
        filter.action.type = LatchCalloutDefs[i].FilterAction;
        filter.action.calloutKey = callout.calloutKey;
        status = FwpmFilterAdd0(g.EngineHandle, &filter, NULL, &filterId);
        if (!NT_SUCCESS(status)) {
            return status;
        }
    }
    for (i = 0; i < LATCH_DUMMY_COUNT; i++) {
        status = AddDummyFilter(i, &g.DummyFilterIds[i]);
        if (!NT_SUCCESS(status)) {
            return status;
        }
    }
    return STATUS_SUCCESS;
}

NTSTATUS LatchRegisterCallouts(void)
{
    FWPM_SESSION0 session;
    NTSTATUS status;
    ULONG i;

    PAGED_CODE();
    status = FwpsInjectionHandleCreate0(AF_INET, FWPS_INJECTION_TYPE_TRANSPORT, &g.InjectionHandleV4);
    if (!NT_SUCCESS(status)) {
        g.InjectionHandleV4 = NULL;
        return status;
    }
    status = FwpsInjectionHandleCreate0(AF_INET6, FWPS_INJECTION_TYPE_TRANSPORT, &g.InjectionHandleV6);
    if (!NT_SUCCESS(status)) {
        g.InjectionHandleV6 = NULL;
        return status;
    }
    for (i = 0; i < LATCH_CALLOUT_COUNT; i++) {
        FWPS_CALLOUT3 callout;
        RtlZeroMemory(&callout, sizeof(callout));
        callout.calloutKey = CalloutKey(i);
        callout.flags = LatchCalloutDefs[i].Flags;
        callout.classifyFn = LatchCalloutDefs[i].Classify;
        callout.notifyFn = LatchNotify;
        callout.flowDeleteFn = LatchCalloutDefs[i].FlowDelete ? LatchFlowDelete : NULL;
        status = FwpsCalloutRegister3(g.DeviceObject, &callout, &g.CalloutIds[i]);
        if (!NT_SUCCESS(status)) {
            return status;
        }
        g.CalloutRegistered[i] = TRUE;
    }

    RtlZeroMemory(&session, sizeof(session));
    session.flags = FWPM_SESSION_FLAG_DYNAMIC;
    status = FwpmEngineOpen0(NULL, RPC_C_AUTHN_WINNT, NULL, &session, &g.EngineHandle);
    if (!NT_SUCCESS(status)) {
        g.EngineHandle = NULL;
        return status;
    }
    status = FwpmTransactionBegin0(g.EngineHandle, 0);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    status = AddObjects();
    if (NT_SUCCESS(status)) {
        status = FwpmTransactionCommit0(g.EngineHandle);
    }
    if (!NT_SUCCESS(status)) {
        FwpmTransactionAbort0(g.EngineHandle);
    }
    return status;
}

void LatchUnregisterCallouts(void)
{
    ULONG i;

    PAGED_CODE();
    /* Filters first (as the WFP inspect sample's TLInspectUnregisterCallouts): a filter
       whose callout is unregistered blocks every matching connection until it goes. */
    if (g.EngineHandle != NULL) {
        FwpmEngineClose0(g.EngineHandle); /* dynamic session: filters, callouts, sublayer, provider go */
        g.EngineHandle = NULL;
    }
    for (i = 0; i < LATCH_CALLOUT_COUNT; i++) {
        if (g.CalloutRegistered[i]) {
            NTSTATUS status;
            /* STATUS_DEVICE_BUSY: a flow context of this callout is still there (its
               flowDeleteFn has not run yet). Unloading with the callout registered
               would leave WFP calling into freed code, so wait it out. */
            while ((status = FwpsCalloutUnregisterById0(g.CalloutIds[i])) == STATUS_DEVICE_BUSY) {
                LARGE_INTEGER tenMs;
                tenMs.QuadPart = -100000LL;
                KeDelayExecutionThread(KernelMode, FALSE, &tenMs);
            }
            if (NT_SUCCESS(status)) {
                g.CalloutRegistered[i] = FALSE;
            } else {
                DbgPrintEx(DPFLTR_IHVNETWORK_ID, DPFLTR_ERROR_LEVEL, "latch: callout %u unregister 0x%08x\n",
                           (unsigned)i, (unsigned)status);
            }
        }
    }
    if (g.InjectionHandleV4 != NULL) {
        FwpsInjectionHandleDestroy0(g.InjectionHandleV4);
        g.InjectionHandleV4 = NULL;
    }
    if (g.InjectionHandleV6 != NULL) {
        FwpsInjectionHandleDestroy0(g.InjectionHandleV6);
        g.InjectionHandleV6 = NULL;
    }
}

NTSTATUS LatchForceReauthorization(void)
{
    static volatile LONG busy;
    UINT64 fresh[LATCH_DUMMY_COUNT];
    NTSTATUS status;
    ULONG i;

    PAGED_CODE();
    if (g.EngineHandle == NULL) {
        return STATUS_INVALID_DEVICE_STATE;
    }
    if (InterlockedCompareExchange(&busy, 1, 0) != 0) {
        return STATUS_DEVICE_BUSY; /* another FLUSH is doing it right now */
    }
    status = FwpmTransactionBegin0(g.EngineHandle, 0);
    if (NT_SUCCESS(status)) {
        for (i = 0; i < LATCH_DUMMY_COUNT && NT_SUCCESS(status); i++) {
            status = FwpmFilterDeleteById0(g.EngineHandle, g.DummyFilterIds[i]);
            if (NT_SUCCESS(status)) {
                status = AddDummyFilter(i, &fresh[i]);
            }
        }
        if (NT_SUCCESS(status)) {
            status = FwpmTransactionCommit0(g.EngineHandle);
        }
        if (NT_SUCCESS(status)) {
            for (i = 0; i < LATCH_DUMMY_COUNT; i++) {
                g.DummyFilterIds[i] = fresh[i];
            }
        } else {
            FwpmTransactionAbort0(g.EngineHandle);
        }
    }
    InterlockedExchange(&busy, 0);
    return status;
}
