/*
 * Entry and unload. The driver is a WFP callout driver that registers with the
 * Filter Manager only to get a communication port (seed 002): no operation
 * callbacks, and instance setup refuses every volume. Because it registers a
 * FilterUnloadCallback, the Filter Manager owns DriverObject->DriverUnload and calls
 * LatchFilterUnload, which does all cleanup in the order the design requires.
 */
#include "latch.h"

LATCH_GLOBALS g;

static NTSTATUS FLTAPI LatchInstanceSetup(PCFLT_RELATED_OBJECTS FltObjects, FLT_INSTANCE_SETUP_FLAGS Flags,
                                          DEVICE_TYPE VolumeDeviceType, FLT_FILESYSTEM_TYPE VolumeFilesystemType);
static NTSTATUS FLTAPI LatchInstanceQueryTeardown(PCFLT_RELATED_OBJECTS FltObjects,
                                                  FLT_INSTANCE_QUERY_TEARDOWN_FLAGS Flags);

static const FLT_OPERATION_REGISTRATION LatchNoOperations[] = {
    {IRP_MJ_OPERATION_END, 0, NULL, NULL, NULL},
};

static const FLT_REGISTRATION LatchFilterRegistration = {
    sizeof(FLT_REGISTRATION),
    FLT_REGISTRATION_VERSION,
    0,                          /* Flags */
    NULL,                       /* ContextRegistration */
    LatchNoOperations,          /* OperationRegistration: none */
    LatchFilterUnload,
    LatchInstanceSetup,
    LatchInstanceQueryTeardown,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
};

static NTSTATUS FLTAPI LatchInstanceSetup(PCFLT_RELATED_OBJECTS FltObjects, FLT_INSTANCE_SETUP_FLAGS Flags,
                                   DEVICE_TYPE VolumeDeviceType, FLT_FILESYSTEM_TYPE VolumeFilesystemType)
{
    UNREFERENCED_PARAMETER(FltObjects);
    UNREFERENCED_PARAMETER(Flags);
    UNREFERENCED_PARAMETER(VolumeDeviceType);
    UNREFERENCED_PARAMETER(VolumeFilesystemType);
    return STATUS_FLT_DO_NOT_ATTACH; /* we filter no file system */
}

static NTSTATUS FLTAPI LatchInstanceQueryTeardown(PCFLT_RELATED_OBJECTS FltObjects, FLT_INSTANCE_QUERY_TEARDOWN_FLAGS Flags)
{
    UNREFERENCED_PARAMETER(FltObjects);
    UNREFERENCED_PARAMETER(Flags);
    return STATUS_SUCCESS;
}

/* Reads a REG_DWORD under the service key; returns FALSE if absent or malformed. */
static BOOLEAN LatchReadDword(HANDLE Key, PCWSTR Name, ULONG *Value)
{
    UNICODE_STRING name;
    union {
        KEY_VALUE_PARTIAL_INFORMATION Info;
        UCHAR Raw[sizeof(KEY_VALUE_PARTIAL_INFORMATION) + sizeof(ULONG)];
    } buffer;
    ULONG resultLength = 0;
    NTSTATUS status;

    PAGED_CODE();
    name.Buffer = (PWSTR)Name;
    name.Length = 0;
    while (Name[name.Length / sizeof(WCHAR)] != 0) {
        name.Length += (USHORT)sizeof(WCHAR);
    }
    name.MaximumLength = name.Length;
    status = ZwQueryValueKey(Key, &name, KeyValuePartialInformation, &buffer, sizeof(buffer), &resultLength);
    if (!NT_SUCCESS(status) || buffer.Info.Type != REG_DWORD || buffer.Info.DataLength != sizeof(ULONG)) {
        return FALSE;
    }
    /* Data[] is variable-length: the union's Raw member gives it room for a ULONG. */
    // cppcheck-suppress bufferAccessOutOfBounds
    RtlCopyMemory(Value, buffer.Info.Data, sizeof(ULONG));
    return TRUE;
}

/* DefaultAction (1 permit, 2 block) and PendingTimeoutMs under the service key set the
   behaviour until the service says HELLO; out-of-range values are ignored. */
static void LatchReadConfig(PUNICODE_STRING RegistryPath)
{
    OBJECT_ATTRIBUTES attributes;
    HANDLE key = NULL;
    ULONG value;

    PAGED_CODE();
    g.DefaultAction = LATCH_ACTION_BLOCK;
    g.TimeoutMs = LATCH_DEFAULT_TIMEOUT_MS;
    InitializeObjectAttributes(&attributes, RegistryPath, OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE, NULL, NULL);
    if (!NT_SUCCESS(ZwOpenKey(&key, KEY_READ, &attributes))) {
        return;
    }
    if (LatchReadDword(key, L"DefaultAction", &value) &&
        (value == LATCH_ACTION_PERMIT || value == LATCH_ACTION_BLOCK)) {
        g.DefaultAction = value;
    }
    if (LatchReadDword(key, L"PendingTimeoutMs", &value) && value >= LATCH_MIN_TIMEOUT_MS &&
        value <= LATCH_MAX_TIMEOUT_MS) {
        g.TimeoutMs = value;
    }
    ZwClose(key);
}

/* Undoes whatever DriverEntry got done, in the unload order of the design:
   refuse new holds (and service messages), complete every pending operation with the
   default, wait for the worker and for the reauthorization passes that apply those
   verdicts, close the port, remove flow contexts, close the engine (the dynamic
   session removes our filters), unregister callouts, unregister the filter (which disconnects the service), delete the device. */
static void LatchCleanup(void)
{
    LARGE_INTEGER tenMs;
    ULONG spins;

    InterlockedExchange(&g.Accepting, 0);
    ExWaitForRundownProtectionRelease(&g.MessageRundown); /* no service message is being handled */
    LatchCompleteAllWithDefault(LATCH_STAT_NO_CLIENT_DEFAULT);
    LatchStopWorker();
    /* Completed outbound operations are decided by their reauthorization pass: let
       those run while our callouts are still there, so the default really applies. */
    tenMs.QuadPart = -100000LL;
    for (spins = 0; spins < 200; spins++) {
        ULONG decided;
        KIRQL irql;
        KeAcquireSpinLock(&g.Lock, &irql);
        decided = g.DecidedCount;
        KeReleaseSpinLock(&g.Lock, irql);
        if (decided == 0) {
            break;
        }
        KeDelayExecutionThread(KernelMode, FALSE, &tenMs);
    }
    LatchClosePort();
    LatchRemoveAllFlows();

    /* Re-injected inbound packets still owned by the stack hold clone references and
       call LatchInjectComplete later: wait for every one, however long (no new
       injection starts now: every pending operation is completed). */
    LatchInjectionDone(); /* drops the bias DriverEntry set */
    KeWaitForSingleObject(&g.NoInjections, Executive, KernelMode, FALSE, NULL);

    LatchUnregisterCallouts();  /* closes the engine (filters go), unregisters callouts, injection handles */
    LatchFreeDecidedLeftovers(TRUE);

    if (g.Filter != NULL) {
        FltUnregisterFilter(g.Filter);
        g.Filter = NULL;
    }
    LatchCacheFlush(); /* nothing classifies or delivers verdicts any more: free the entries */
    LatchDropHits();   /* hit records nobody will deliver now: counted in hits_lost (the ring is in g) */
    if (g.DeviceObject != NULL) {
        IoDeleteDevice(g.DeviceObject);
        g.DeviceObject = NULL;
    }
    if (g.SendBuffer != NULL) {
        ExFreePoolWithTag(g.SendBuffer, LATCH_TAG_MESSAGE);
        g.SendBuffer = NULL;
    }
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    NTSTATUS status;

    RtlZeroMemory(&g, sizeof(g));
    g.DriverObject = DriverObject;
    KeInitializeSpinLock(&g.Lock);
    InitializeListHead(&g.FlowList);
    KeInitializeEvent(&g.NoFlows, NotificationEvent, TRUE);
    KeInitializeEvent(&g.NoInjections, NotificationEvent, FALSE);
    g.InjectionsInFlight = 1; /* the bias: the count cannot reach 0 before unload */
    LatchInitPending();
    LatchInitCache();
    KeInitializeEvent(&g.WorkerEvent, SynchronizationEvent, FALSE);
    ExInitializeRundownProtection(&g.MessageRundown);
    LatchReadConfig(RegistryPath);

    g.SendBuffer = (UINT8 *)ExAllocatePool2(POOL_FLAG_NON_PAGED, LATCH_MSG_MAX_SIZE, LATCH_TAG_MESSAGE);
    if (g.SendBuffer == NULL) {
        status = STATUS_INSUFFICIENT_RESOURCES;
        goto fail;
    }
    status = IoCreateDevice(DriverObject, 0, NULL, FILE_DEVICE_NETWORK, FILE_DEVICE_SECURE_OPEN, FALSE,
                            &g.DeviceObject);
    if (!NT_SUCCESS(status)) {
        g.DeviceObject = NULL;
        goto fail;
    }
    status = FltRegisterFilter(DriverObject, &LatchFilterRegistration, &g.Filter);
    if (!NT_SUCCESS(status)) {
        g.Filter = NULL;
        goto fail;
    }
    status = LatchStartWorker();
    if (!NT_SUCCESS(status)) {
        goto fail;
    }
    status = LatchRegisterCallouts();
    if (!NT_SUCCESS(status)) {
        goto fail;
    }
    status = LatchOpenPort();
    if (!NT_SUCCESS(status)) {
        goto fail;
    }
    status = FltStartFiltering(g.Filter);
    if (!NT_SUCCESS(status)) {
        goto fail;
    }
    InterlockedExchange(&g.Accepting, 1);
    return STATUS_SUCCESS;

fail:
    DbgPrintEx(DPFLTR_IHVNETWORK_ID, DPFLTR_ERROR_LEVEL, "latch: DriverEntry failed 0x%08x\n", (unsigned)status);
    LatchCleanup();
    return status;
}

NTSTATUS FLTAPI LatchFilterUnload(FLT_FILTER_UNLOAD_FLAGS Flags)
{
    UNREFERENCED_PARAMETER(Flags);
    PAGED_CODE();
    LatchCleanup();
    return STATUS_SUCCESS;
}
