#!/usr/bin/env python3
# Regenerates driver/mutants/NN_name.patch from (file, old, new) edits of driver/src:
#   python3 driver/mutants/make_patches.py [NAME...]
# Run it after changing driver/src so that every patch still applies (run.sh reports
# a patch that does not apply as BROKEN).
import os, subprocess, sys, shutil, tempfile
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "driver/mutants")
M = []
def mut(name, windows, expect, edits):
    M.append((name, windows, expect, edits))

mut("send_at_dispatch", "IRQL_NOT_LESS_OR_EQUAL (0xA) / INVALID_PROCESS_ATTACH_ATTEMPT (0x5): FltSendMessage may wait, called holding a spin lock",
    "FltSendMessage called at IRQL 2",
    [("src/worker.c", """            NTSTATUS status = length == 0 ? STATUS_INVALID_PARAMETER
                                          : FltSendMessage(g.Filter, &g.ClientPort, g.SendBuffer, length, NULL,
                                                           NULL, stalled ? &shortTimeout : &sendTimeout);
""", """            KIRQL bugIrql;
            NTSTATUS status;
            KeAcquireSpinLock(&g.Lock, &bugIrql);
            status = length == 0 ? STATUS_INVALID_PARAMETER
                                          : FltSendMessage(g.Filter, &g.ClientPort, g.SendBuffer, length, NULL,
                                                           NULL, stalled ? &shortTimeout : &sendTimeout);
            KeReleaseSpinLock(&g.Lock, bugIrql);
""")])

mut("pend_completed_twice", "MULTIPLE_IRP_COMPLETE_REQUESTS-like corruption in tcpip (0x139 / 0x1E): a pended ALE operation completed twice",
    "completed twice",
    [("src/pending.c", """    } else {
        FwpsDereferenceNetBufferList0(original, FALSE);
    }
    FreeEntry(Entry);""", """    } else {
        FwpsDereferenceNetBufferList0(original, FALSE);
        FwpsCompleteOperation0(Entry->CompletionContext, NULL);
    }
    FreeEntry(Entry);""")])

mut("leaked_pool_block", "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS / Verifier 0xC4 (0x62): pool left allocated at unload",
    "leaked pool allocation",
    [("src/pending.c", """    *Action = found->Action;
    FreeEntry(found);""", """    *Action = found->Action;""")])

mut("lock_held_across_completion", "deadlock (DPC watchdog 0x133) or 0xC4: FwpsCompleteOperation0 re-enters classifyFn, which takes the same spin lock",
    "spin lock",
    [("src/pending.c", """        DecideLocked(e, Action, &batch);
    }
    KeReleaseSpinLock(&g.Lock, irql);
    LatchCacheFree(fresh); /* unused, or the entry it replaced */
    if (e == NULL) {
        LatchCount(LATCH_STAT_VERDICTS_LATE);
        return STATUS_NOT_FOUND;
    }
    CompleteBatch(&batch, LATCH_STATS_COUNT);""", """        DecideLocked(e, Action, &batch);
    }
    LatchCacheFree(fresh); /* unused, or the entry it replaced */
    if (e == NULL) {
        KeReleaseSpinLock(&g.Lock, irql);
        LatchCount(LATCH_STAT_VERDICTS_LATE);
        return STATUS_NOT_FOUND;
    }
    CompleteBatch(&batch, LATCH_STATS_COUNT);
    KeReleaseSpinLock(&g.Lock, irql);""")])

mut("paged_pool_at_dispatch", "IRQL_NOT_LESS_OR_EQUAL (0xA) / PAGE_FAULT_IN_NONPAGED_AREA (0x50): paged pool touched from classifyFn at DISPATCH_LEVEL",
    "POOL_FLAG_PAGED) called at IRQL 2",
    [("src/pending.c", """    entry = (PLATCH_PENDING)ExAllocatePool2(POOL_FLAG_NON_PAGED,""", """    entry = (PLATCH_PENDING)ExAllocatePool2(POOL_FLAG_PAGED,""")])

mut("flow_contexts_left_at_unload", "use-after-unload in WFP (0xCE DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS / 0x50): flowDeleteFn of an unloaded driver (seed 001)",
    "flow context",
    [("src/driver.c", """    LatchClosePort();
    LatchRemoveAllFlows();""", """    LatchClosePort();""")])

mut("missing_per_process_cap", "no bugcheck: one process pins 4,096 entries of non-paged pool and starves every other program's connections",
    "per-process",
    [("src/pending.c", """    if (proc == NULL || proc->Count >= LATCH_MAX_PENDING_PER_PROCESS) {""",
      """    if (proc == NULL || proc->Count >= LATCH_MAX_PENDING) {""")])

mut("missing_total_cap", "no bugcheck at once: unbounded non-paged pool under a connection flood, then allocation failures system-wide",
    "total",
    [("src/pending.c", """    if (g.PendingCount < LATCH_MAX_PENDING && g.PendingCount + g.DecidedCount < 2 * LATCH_MAX_PENDING) {""",
      """    if (g.PendingCount < 100 * LATCH_MAX_PENDING) {""")])

mut("bad_header_length", "no bugcheck: the service reads a length that is not the message's and refuses (or misreads) every request",
    "golden",
    [("src/proto.c", """    LatchInitHeader((LATCH_MSG_HEADER *)Buffer, LATCH_TYPE_CONNECT_REQUEST, length);""",
      """    LatchInitHeader((LATCH_MSG_HEADER *)Buffer, LATCH_TYPE_CONNECT_REQUEST, LATCH_CONNECT_FIXED_SIZE + Fixed->PathLen);""")])

mut("original_released_after_injection", "0xCE / use-after-free in tcpip: the original packet released while its clone is still being injected",
    "released while",
    [("src/pending.c", """static void NTAPI LatchInjectComplete(void *Context, NET_BUFFER_LIST *NetBufferList, BOOLEAN DispatchLevel)
{
    FwpsFreeCloneNetBufferList0(NetBufferList, 0);
    FwpsDereferenceNetBufferList0((PNET_BUFFER_LIST)Context, DispatchLevel);
    LatchInjectionDone();""", """static void NTAPI LatchInjectComplete(void *Context, NET_BUFFER_LIST *NetBufferList, BOOLEAN DispatchLevel)
{
    UNREFERENCED_PARAMETER(Context);
    UNREFERENCED_PARAMETER(DispatchLevel);
    FwpsFreeCloneNetBufferList0(NetBufferList, 0);
    LatchInjectionDone();"""),
     ("src/pending.c", """                                                  clone, LatchInjectComplete, original);
        if (!NT_SUCCESS(status)) {""", """                                                  clone, LatchInjectComplete, original);
        if (NT_SUCCESS(status)) {
            FwpsDereferenceNetBufferList0(original, FALSE);
        }
        if (!NT_SUCCESS(status)) {""")])

mut("unload_not_waiting_for_injections", "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS (0xCE): tcpip calls the injection completion of an unloaded driver",
    "injection",
    [("src/driver.c", """    LatchInjectionDone(); /* drops the bias DriverEntry set */
    KeWaitForSingleObject(&g.NoInjections, Executive, KernelMode, FALSE, NULL);""", """    LatchInjectionDone(); /* drops the bias DriverEntry set */""")])

mut("worker_reads_entry_after_unlock", "0x50 / 0xC5 / silent pool corruption: the worker encodes a pending entry another CPU may have completed and freed",
    "heap-use-after-free",
    [("src/pending.c", """    e = CONTAINING_RECORD(RemoveHeadList(&g.SendQueue), LATCH_PENDING, SendLink);
    e->Queued = FALSE;
    RtlZeroMemory(&fixed, sizeof(fixed));""", """    e = CONTAINING_RECORD(RemoveHeadList(&g.SendQueue), LATCH_PENDING, SendLink);
    e->Queued = FALSE;
    KeReleaseSpinLock(&g.Lock, irql);
    RtlZeroMemory(&fixed, sizeof(fixed));"""),
     ("src/pending.c", """    *RequestId = e->RequestId;
    KeReleaseSpinLock(&g.Lock, irql);
    return TRUE;""", """    *RequestId = e->RequestId;
    return TRUE;""")])

mut("unload_never_removes_flow_contexts", "hang at unload (the service stop never returns; 0x9F on shutdown): unload waits for flowDeleteFn calls nobody asked for",
    "unload watchdog",
    [("src/flow.c", """        FwpsFlowRemoveContext0(handle, layer, callout);
    }
    /* No timeout""", """        UNREFERENCED_PARAMETER(handle);
        UNREFERENCED_PARAMETER(layer);
        UNREFERENCED_PARAMETER(callout);
    }
    /* No timeout""")])

mut("decided_entry_left_in_id_index", "PAGE_FAULT_IN_NONPAGED_AREA (0x50) / pool corruption: a decided entry stays in the request-id index after it is freed; the next VERDICT for an id in that bucket reads freed pool",
    "heap-use-after-free",
    [("src/pending.c", """    IdRemoveLocked(Entry);
    ProcReleaseLocked(Entry->ProcessId);
    g.PendingCount--;""", """    (void)IdRemoveLocked;
    ProcReleaseLocked(Entry->ProcessId);
    g.PendingCount--;""")])

mut("deadline_never_applied", "no bugcheck: a connection nobody answers is held forever (the application hangs), against invariant 3",
    "deadline",
    [("src/pending.c", """    if (Entry->Deadline <= args->Now) {
        DecideLocked(Entry, g.DefaultAction, Batch);""",
      """    if (Entry->Deadline <= args->Now && Entry->Deadline == 0) {
        DecideLocked(Entry, g.DefaultAction, Batch);""")])

mut("no_default_on_disconnect", "no bugcheck: connections held by a crashed service wait for their deadline (up to 600 s) instead of the default at once",
    "disconnect",
    [("src/port.c", """    FltCloseClientPort(g.Filter, &g.ClientPort);
    /* Nobody is left to answer: every held connection gets the default now. */
    LatchCompleteAllWithDefault(LATCH_STAT_NO_CLIENT_DEFAULT);""", """    FltCloseClientPort(g.Filter, &g.ClientPort);""")])

mut("pends_own_injection", "hang of every inbound connection (an endless pend/inject loop) and pool exhaustion",
    "pended its own injected packet",
    [("src/callouts.c", """        if (state == FWPS_PACKET_INJECTED_BY_SELF || state == FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF) {""",
      """        if (state == FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF) {""")])

mut("clone_not_retreated", "malformed packet in tcpip (dropped, or 0xD1 reading past the buffer): the clone is injected from its payload, not its IP header",
    "IP header",
    [("src/pending.c", """    ULONG retreat = Entry->IpHeaderSize + Entry->TransportHeaderSize;""", """    ULONG retreat = 0;"""),
     ("src/pending.c", """            retreat = Entry->IpHeaderSize;
        }""", """            retreat = 0;
        }""")])

mut("pend_without_absorb", "tcpip state corruption (0x139 / 0xD1): a pended classify that permits lets the connection go on while it is also pended",
    "a pended classify must return FWP_ACTION_BLOCK",
    [("src/pending.c", """    ClassifyOut->actionType = FWP_ACTION_BLOCK;
    ClassifyOut->flags |= FWPS_CLASSIFY_OUT_FLAG_ABSORB;""", """    ClassifyOut->actionType = FWP_ACTION_BLOCK;""")])

mut("packet_reference_leaked_on_block", "leaked NBL reference: the NIC's receive buffers are never returned (0xCE at unload, or NDIS hang)",
    "reference",
    [("src/pending.c", """    } else {
        FwpsDereferenceNetBufferList0(original, FALSE);
    }
    FreeEntry(Entry);""", """    } else {
        UNREFERENCED_PARAMETER(original);
    }
    FreeEntry(Entry);""")])

mut("flow_freed_while_associating", "0x50 / 0xC5 use-after-free: flowDeleteFn frees a context the associating thread still writes",
    "heap-use-after-free",
    [("src/flow.c", """    if (flow->Associating) {
        flow->DeleteSeen = TRUE; /* LatchFlowEstablished still holds it and frees it */
        KeReleaseSpinLock(&g.Lock, irql);
        return;
    }""", """""")])

mut("port_without_kernel_handle", "security hole: the server port handle lands in the caller's (System) handle table; FltCreateCommunicationPort fails with STATUS_INVALID_PARAMETER",
    "OBJ_KERNEL_HANDLE",
    [("src/port.c", """    InitializeObjectAttributes(&attributes, &name, OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE, NULL, sd);""",
      """    InitializeObjectAttributes(&attributes, &name, OBJ_CASE_INSENSITIVE, NULL, sd);""")])

mut("datagram_reference_leaked", "leaked NBL reference on every permitted UDP connect: NDIS pool exhaustion, 0xCE at unload",
    "reference",
    [("src/pending.c", """    FwpsFreeCloneNetBufferList0(NetBufferList, 0);
    FwpsDereferenceNetBufferList0(send->Original, DispatchLevel);
    ExFreePoolWithTag(send, LATCH_TAG_PENDING);""", """    FwpsFreeCloneNetBufferList0(NetBufferList, 0);
    UNREFERENCED_PARAMETER(DispatchLevel);
    ExFreePoolWithTag(send, LATCH_TAG_PENDING);""")])

mut("send_zero_timeout", "hang: a zero FltSendMessage Timeout is documented as 'wait indefinitely'; a service that stops reading hangs the worker, every later connection waits for its deadline and unload never returns",
    "zero Timeout",
    [("src/worker.c", """    shortTimeout.QuadPart = -(LONGLONG)LATCH_MS_TO_100NS(LATCH_SEND_STALLED_TIMEOUT_MS);""",
      """    shortTimeout.QuadPart = 0;""")])

mut("flow_context_wrong_family", "no bugcheck, a silent loss: FwpsFlowAssociateContext0 fails on a layer of the other IP version and the flow is never counted (nor its context removed at unload)",
    "FwpsFlowAssociateContext0: layer",
    [("src/flow.c", """    flow->LayerId = IpVersion == 4 ? (Protocol == 6 ? FWPS_LAYER_STREAM_V4 : FWPS_LAYER_DATAGRAM_DATA_V4)
                                   : (Protocol == 6 ? FWPS_LAYER_STREAM_V6 : FWPS_LAYER_DATAGRAM_DATA_V6);""",
      """    flow->LayerId = IpVersion == 6 ? (Protocol == 6 ? FWPS_LAYER_STREAM_V4 : FWPS_LAYER_DATAGRAM_DATA_V4)
                                   : (Protocol == 6 ? FWPS_LAYER_STREAM_V6 : FWPS_LAYER_DATAGRAM_DATA_V6);""")])

mut("flow_context_wrong_callout", "no bugcheck, a silent loss: the context is associated with the datagram callout on a stream layer; WFP refuses it (or never hands it to classifyFn)",
    "was added for layer",
    [("src/flow.c", """    if (Protocol == 6) {
        index = IpVersion == 4 ? LATCH_CALLOUT_STREAM_V4 : LATCH_CALLOUT_STREAM_V6;""",
      """    if (Protocol == 6) {
        index = IpVersion == 4 ? LATCH_CALLOUT_DATAGRAM_V4 : LATCH_CALLOUT_DATAGRAM_V6;""")])

mut("whole_table_under_lock", "DPC_WATCHDOG_VIOLATION (0x133) under load: the deadline scan walks all 8,192 entries at DISPATCH_LEVEL in one hold of the spin lock, while every CPU that classifies spins on it",
    "spin lock held over",
    [("src/latch.h", """#define LATCH_SCAN_CHUNK              128""", """#define LATCH_SCAN_CHUNK              100000""")])

mut("stack_buffer_4k", "KERNEL_STACK_INPAGE_ERROR / DOUBLE_FAULT (0x7F) from a stack overflow: 4 KiB of locals in a callback that runs on the caller's small kernel stack",
    "frame size",
    [("src/port.c", """        UINT8 Raw[64];
    } input;""", """        UINT8 Raw[4096];
    } input;""")])

mut("packet_held_until_verdict", "no bugcheck at once: every held connection pins a NIC receive buffer (or a send buffer) for up to 600 s; under a SYN flood the miniport runs out of receive buffers and the machine stops receiving",
    "still referenced after",
    [("src/pending.c", """    } else if (Entry->NetBufferList != NULL && Entry->PacketDeadline <= args->Now &&""",
      """    } else if (Entry->NetBufferList != NULL && Entry->PacketDeadline <= args->Now && args->All &&""")])

mut("send_without_timeout", "hang: FltSendMessage with a NULL Timeout waits until the service posts FilterGetMessage; the worker stops, deadlines stop, every held connection waits for a service that is not reading",
    "nothing was failed fast",
    [("src/worker.c", """NULL, stalled ? &shortTimeout : &sendTimeout);""", """NULL, ((void)shortTimeout, (void)sendTimeout, (PLARGE_INTEGER)NULL));""")])

mut("user_buffer_read_outside_try", "KMODE_EXCEPTION_NOT_HANDLED (0x1E) / PAGE_FAULT_IN_NONPAGED_AREA (0x50): the service's buffer is a user-mode address; read outside __try, a bad or freed one crashes the machine",
    "SEGV",
    [("src/port.c", """    __try {
        if (length != 0) {
            RtlCopyMemory(&input, InputBuffer, length);
        }
    } __except (EXCEPTION_EXECUTE_HANDLER) {""", """    if (length != 0) {
        RtlCopyMemory(&input, InputBuffer, length);
    }
    __try {
    } __except (EXCEPTION_EXECUTE_HANDLER) {""")])

mut("double_fetch", "time-of-check/time-of-use in kernel mode: the message is validated in a copy but decoded again from user memory, which the service can change in between (with a length or index read twice: an overrun, 0x50)",
    "HELLO answered",
    [("src/port.c", """    status = LatchHandleMessage(length != 0 ? &input : NULL, length, &output,
                                OutputBufferLength < sizeof(output) ? OutputBufferLength : (ULONG)sizeof(output),
                                &returned);""", """    status = STATUS_INVALID_PARAMETER;
    __try {
        status = LatchHandleMessage(length != 0 ? InputBuffer : NULL, length, &output,
                                    OutputBufferLength < sizeof(output) ? OutputBufferLength : (ULONG)sizeof(output),
                                    &returned);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        status = STATUS_INVALID_PARAMETER;
    }""")])

mut("cache_ignores_generation", "no bugcheck, a security hole: a verdict the service decided under the old rules, delivered after the FLUSH of a rule change, is cached and lets the next connections through under the new rules",
    "a verdict delivered after a FLUSH was cached",
    [("src/pending.c", """    if (e->CacheGeneration != g.CacheGeneration) {""", """    if (e->CacheGeneration == 0) {""")])

mut("cache_hash_only", "no bugcheck, a security hole: a cache lookup trusts the 64-bit hash, so a connection whose key collides with a cached one gets that one's verdict",
    "got A's cached verdict",
    [("src/cache.c", """            if (EntryMatches(slot->Entry, Scope, Tuple, ProcessId, Path, PathLen)) {""",
      """            if (slot->Entry->Scope == Scope || EntryMatches(slot->Entry, Scope, Tuple, ProcessId, Path, PathLen)) {""")])

mut("cache_key_without_path", "no bugcheck, a security hole: a pid-scoped entry outlives its process, and another program that gets the same pid gets its verdict",
    "another program under a reused pid",
    [("src/cache.c", """    return e->PathLen == PathLen && PathEqual(e->Path, Path, PathLen);""",
      """    return Scope != LATCH_SCOPE_PATH_HOST || (e->PathLen == PathLen && PathEqual(e->Path, Path, PathLen));""")])

mut("retransmit_cached_by_process", "no bugcheck, a security hole: a person's answer for one inbound connection decides the program's other connections from that peer address and port",
    "a scope-0 verdict decided another connection",
    [("src/pending.c", """        return LATCH_SCOPE_CONNECTION;""", """        return LATCH_SCOPE_PROCESS_DEST;""")])

mut("cache_kept_without_service", "no bugcheck, against invariant 1: with the service gone, cached permits keep deciding instead of the configured default, and nobody flushes them on a rule change",
    "no service: the cached permit decided",
    [("src/port.c", """       applies at once to every connection until a service says HELLO again. */
    LatchCacheFlush();""", """       applies at once to every connection until a service says HELLO again. */"""),
     ("src/cache.c", """    if (!InterlockedCompareExchange(&g.ClientConnected, 0, 0)) {""", """    if (0) {""")])

mut("cache_kept_across_hello", "no bugcheck, a security hole: a restarted service (other rules, or none yet) finds the old service's cached verdicts deciding its connections",
    "a new service inherited the old one's cached verdicts",
    [("src/port.c", """       applies at once to every connection until a service says HELLO again. */
    LatchCacheFlush();""", """       applies at once to every connection until a service says HELLO again. */"""),
     ("src/port.c", """                   verdicts are cached. */
                LatchCacheFlush();""", """                   verdicts are cached. */""")])

mut("evicted_cache_entry_leaked", "leaked non-paged pool on every cache replacement (pool exhaustion over days; Verifier 0xC4 (0x62) at unload)",
    "leaked pool allocation",
    [("src/pending.c", """    LatchCacheFree(fresh); /* unused, or the entry it replaced */""", """""")])

mut("hit_ring_full_uncounted", "no bugcheck: with the ring full, cache-decided connections vanish from the history without a trace (issue 9: never silent)",
    "a full ring lost nothing",
    [("src/cache.c", """    if (g.HitCount >= LATCH_HIT_SLOTS) {
        LatchCount(LATCH_STAT_HITS_LOST);
        return FALSE;
    }""", """    if (g.HitCount >= LATCH_HIT_SLOTS) {
        return FALSE;
    }""")])

mut("hit_without_rule_tag", "no bugcheck: history rows of cache-decided connections name no rule (the cached verdict's rule tag is not returned)",
    "hit 0: tag",
    [("src/cache.c", """    Fresh->RuleTag = RuleTag;""", """    UNREFERENCED_PARAMETER(RuleTag);""")])

mut("hit_batch_send_failure_uncounted", "no bugcheck: a HIT_BATCH the service never read is dropped uncounted (history incomplete, status says nothing lost)",
    "+ lost",
    [("src/worker.c", """                InterlockedAdd64(&g.Stats[LATCH_STAT_HITS_LOST], (LONG64)hits);
""", """""")])

mut("hits_left_at_unload_uncounted", "no bugcheck: records still in the ring at unload vanish uncounted",
    "records left in the ring",
    [("src/driver.c", """    LatchDropHits();""", """""")])

mut("reauth_hit_recorded", "no bugcheck: every FLUSH that re-authorizes writes a second history row for each established flow the cache re-decides",
    "a reauthorization was recorded as a new connection",
    [("src/callouts.c", """    if (LatchCacheLookup(&tuple, pid, path, pathLen, !reauth, &action)) {""",
      """    if (LatchCacheLookup(&tuple, pid, path, pathLen, TRUE, &action)) {""")])

def main():
    only = sys.argv[1:]
    os.makedirs(OUT, exist_ok=True)
    for idx, (name, windows, expect, edits) in enumerate(M, 1):
        if only and name not in only:
            continue
        tmp = tempfile.mkdtemp()
        for sub in ("a", "b"):
            shutil.copytree(os.path.join(REPO, "driver/src"), os.path.join(tmp, sub, "driver/src"))
        for f, old, new in edits:
            p = os.path.join(tmp, "b/driver", f)
            s = open(p).read()
            if s.count(old) != 1:
                sys.exit(f"{name}: {f}: old text found {s.count(old)} times")
            s = s.replace(old, new)
            open(p, "w").write(s)
        d = subprocess.run(["diff", "-ru", "a/driver/src", "b/driver/src"], cwd=tmp, capture_output=True, text=True).stdout
        lines = [l for l in d.splitlines(True) if not l.startswith("diff ")]
        # strip timestamps
        lines = [l.split("\t")[0] + "\n" if l.startswith(("--- ", "+++ ")) else l for l in lines]
        if not lines:
            sys.exit(f"{name}: empty diff")
        fn = os.path.join(OUT, f"{idx:02d}_{name}.patch")
        with open(fn, "w") as fh:
            fh.write(f"windows: {windows}\n")
            fh.write(f"expect: {expect}\n")
            fh.writelines(lines)
        shutil.rmtree(tmp)
        print(fn)
main()
