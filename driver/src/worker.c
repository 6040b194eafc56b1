/*
 * The worker: a system thread at PASSIVE_LEVEL, the only place that sends to the
 * service. FltSendMessage carries no reply buffer and a bounded timeout, so a slow
 * or absent reader costs at most LATCH_SEND_TIMEOUT_MS once (then
 * LATCH_SEND_STALLED_TIMEOUT_MS per send until one succeeds) and a slow decision costs nothing (verdicts arrive in the
 * port's message callback). It also enforces deadlines on a LATCH_WORKER_TICK_MS tick,
 * and delivers the verdict cache's hit records (HIT_BATCH, same send, same bounds)
 * once no request waits to be sent: a batch that cannot be delivered is counted in
 * hits_lost, never retried or waited for.
 */
#include "latch.h"

static KSTART_ROUTINE LatchWorker;

static void LatchWorker(PVOID Context)
{
    LARGE_INTEGER tick, sendTimeout, shortTimeout;
    BOOLEAN stalled = FALSE;
    UINT64 requestId;
    ULONG length, batches;

    UNREFERENCED_PARAMETER(Context);
    tick.QuadPart = -(LONGLONG)LATCH_MS_TO_100NS(LATCH_WORKER_TICK_MS);
    sendTimeout.QuadPart = -(LONGLONG)LATCH_MS_TO_100NS(LATCH_SEND_TIMEOUT_MS);
    /* Never a zero Timeout: the WDK documents "If Timeout is zero, the minifilter driver
       is put into a wait state indefinitely", so a stalled service would hang the
       worker. A stalled service costs one LATCH_SEND_STALLED_TIMEOUT_MS per request. */
    shortTimeout.QuadPart = -(LONGLONG)LATCH_MS_TO_100NS(LATCH_SEND_STALLED_TIMEOUT_MS);

    while (!InterlockedCompareExchange(&g.StopWorker, 0, 0)) {
        ULONGLONG lastExpiry;
        KeWaitForSingleObject(&g.WorkerEvent, Executive, KernelMode, FALSE, &tick);
        if (InterlockedCompareExchange(&g.StopWorker, 0, 0)) {
            break;
        }
        lastExpiry = KeQueryInterruptTime();
        LatchExpirePending();
        while (InterlockedCompareExchange(&g.ClientReady, 0, 0) &&
               !InterlockedCompareExchange(&g.StopWorker, 0, 0) &&
               LatchDequeueForSend(g.SendBuffer, LATCH_MSG_MAX_SIZE, &length, &requestId)) {
            NTSTATUS status = length == 0 ? STATUS_INVALID_PARAMETER
                                          : FltSendMessage(g.Filter, &g.ClientPort, g.SendBuffer, length, NULL,
                                                           NULL, stalled ? &shortTimeout : &sendTimeout);
            if (status != STATUS_SUCCESS) { /* STATUS_TIMEOUT is a success code: not delivered */
                LatchCount(LATCH_STAT_SEND_FAILURES);
                LatchSendFailed(requestId);
            }
            /* After one send timed out the service is not reading: fail the next ones at
               once (default verdict) instead of waiting a send timeout for each, until a
               send goes through again. */
            stalled = status == STATUS_TIMEOUT || (stalled && status != STATUS_SUCCESS);
            /* A service that stops reading makes every send wait; deadlines still hold. */
            if (KeQueryInterruptTime() - lastExpiry >= LATCH_MS_TO_100NS(LATCH_WORKER_TICK_MS)) {
                lastExpiry = KeQueryInterruptTime();
                LatchExpirePending();
            }
        }
        /* At most a ring's worth per round: requests come first. */
        for (batches = 0; batches < LATCH_HIT_SLOTS / LATCH_MAX_HITS_PER_BATCH &&
                          InterlockedCompareExchange(&g.ClientReady, 0, 0) &&
                          !InterlockedCompareExchange(&g.StopWorker, 0, 0);
             batches++) {
            NTSTATUS status;
            ULONG hits = LatchDequeueHits(g.SendBuffer, LATCH_MSG_MAX_SIZE, &length);
            if (hits == 0) {
                break;
            }
            status = FltSendMessage(g.Filter, &g.ClientPort, g.SendBuffer, length, NULL, NULL,
                                    stalled ? &shortTimeout : &sendTimeout);
            if (status != STATUS_SUCCESS) {
                LatchCount(LATCH_STAT_SEND_FAILURES);
                InterlockedAdd64(&g.Stats[LATCH_STAT_HITS_LOST], (LONG64)hits);
            }
            stalled = status == STATUS_TIMEOUT || (stalled && status != STATUS_SUCCESS);
        }
        LatchFreeDecidedLeftovers(FALSE);
    }
    PsTerminateSystemThread(STATUS_SUCCESS);
}

NTSTATUS LatchStartWorker(void)
{
    HANDLE thread;
    OBJECT_ATTRIBUTES attributes;
    NTSTATUS status;

    PAGED_CODE();
    InitializeObjectAttributes(&attributes, NULL, OBJ_KERNEL_HANDLE, NULL, NULL);
    status = PsCreateSystemThread(&thread, THREAD_ALL_ACCESS, &attributes, NULL, NULL, LatchWorker, NULL);
    if (!NT_SUCCESS(status)) {
        return status;
    }
    status = ObReferenceObjectByHandle(thread, SYNCHRONIZE, *PsThreadType, KernelMode, (PVOID *)&g.WorkerThread,
                                       NULL);
    ZwClose(thread);
    if (!NT_SUCCESS(status)) {
        /* The thread runs but we cannot wait for it: stop it and give up. */
        InterlockedExchange(&g.StopWorker, 1);
        KeSetEvent(&g.WorkerEvent, IO_NO_INCREMENT, FALSE);
        g.WorkerThread = NULL;
    }
    return status;
}

void LatchStopWorker(void)
{
    PAGED_CODE();
    if (g.WorkerThread == NULL) {
        return;
    }
    InterlockedExchange(&g.StopWorker, 1);
    KeSetEvent(&g.WorkerEvent, IO_NO_INCREMENT, FALSE);
    KeWaitForSingleObject(g.WorkerThread, Executive, KernelMode, FALSE, NULL);
    ObDereferenceObject(g.WorkerThread);
    g.WorkerThread = NULL;
}

void LatchWakeWorker(void)
{
    KeSetEvent(&g.WorkerEvent, IO_NO_INCREMENT, FALSE);
}
