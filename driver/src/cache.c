/*
 * Verdict cache: lets a re-connect from the same process to the same destination be
 * decided in classifyFn without a round trip. A fixed open-addressed table of 1024
 * slots (bounded probe) under g.Lock; entries expire; FLUSH empties it.
 *
 * Exactness (the cache never decides a connection otherwise than the service would):
 *   - An entry holds its whole key (scope, direction, IP version, protocol, remote
 *     address, remote port, process id, process path; for the connection scope also
 *     the local address and port), and a lookup compares all of it: the 64-bit hash
 *     only picks the slots. Two keys with the same hash never share a verdict. A slot
 *     window holds at most one entry per hash value (an insert replaces the entry
 *     with its hash), so a lookup compares at most one path per scope.
 *   - Paths compare with ASCII letters folded, as NT paths (and the service's rules)
 *     compare case-insensitively; anything else byte for byte.
 *   - g.CacheGeneration counts FLUSHes (and service connects/disconnects). A pending
 *     entry records the generation when it is pended; its verdict enters the cache
 *     only if no FLUSH came since (LatchDeliverVerdict): a verdict decided under old
 *     rules is applied to its own connection and nothing else.
 * Entries are allocated (LtLc, non-paged) outside the lock before an insert, and
 * freed outside it after an eviction or a flush.
 *
 * History: a hit on a new connection (not a reauthorization) is written, in the same
 * hold of the lock, as a fixed-size record (tuple, pid, action, the verdict's rule
 * tag) into g.Hits, a ring of LATCH_HIT_SLOTS records inside g: no allocation, O(1).
 * The worker takes them out in HIT_BATCH messages (LatchDequeueHits). A hit that finds
 * the ring full is decided all the same and counted in hits_lost.
 */
#include "latch.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME  0x100000001b3ULL

static UINT64 Mix(UINT64 Hash, const void *Data, SIZE_T Length)
{
    const UINT8 *p = (const UINT8 *)Data;
    SIZE_T i;
    for (i = 0; i < Length; i++) {
        Hash = (Hash ^ p[i]) * FNV_PRIME;
    }
    return Hash;
}

static WCHAR Fold(WCHAR c)
{
    return (c >= L'a' && c <= L'z') ? (WCHAR)(c - (L'a' - L'A')) : c;
}

static UINT64 MakeHash(ULONG Scope, const LATCH_TUPLE *Tuple, UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen)
{
    UINT64 h = Mix(FNV_OFFSET, &Scope, sizeof(Scope));
    h = Mix(h, &Tuple->Direction, sizeof(Tuple->Direction));
    h = Mix(h, &Tuple->IpVersion, sizeof(Tuple->IpVersion));
    h = Mix(h, &Tuple->Protocol, sizeof(Tuple->Protocol));
    h = Mix(h, Tuple->RemoteAddr, sizeof(Tuple->RemoteAddr));
    if (Scope == LATCH_SCOPE_PROCESS_DEST || Scope == LATCH_SCOPE_CONNECTION) {
        h = Mix(h, &Tuple->RemotePort, sizeof(Tuple->RemotePort));
        h = Mix(h, &ProcessId, sizeof(ProcessId));
        if (Scope == LATCH_SCOPE_CONNECTION) {
            h = Mix(h, Tuple->LocalAddr, sizeof(Tuple->LocalAddr));
            h = Mix(h, &Tuple->LocalPort, sizeof(Tuple->LocalPort));
        }
    } else {
        UINT16 i;
        /* NT paths compare case-insensitively: fold ASCII letters. */
        for (i = 0; i < PathLen; i++) {
            WCHAR c = Fold(Path[i]);
            h = Mix(h, &c, sizeof(c));
        }
        h = Mix(h, &PathLen, sizeof(PathLen));
    }
    return h == 0 ? 1 : h;
}

static BOOLEAN PathEqual(const WCHAR *a, const WCHAR *b, UINT16 Length)
{
    UINT16 i;
    if (RtlEqualMemory(a, b, sizeof(WCHAR) * (SIZE_T)Length)) {
        return TRUE; /* the usual case, and the quick one under the lock */
    }
    for (i = 0; i < Length; i++) {
        if (Fold(a[i]) != Fold(b[i])) {
            return FALSE;
        }
    }
    return TRUE;
}

/* The whole key, not the hash: scope, tuple fields of that scope, process id, path. */
static BOOLEAN EntryMatches(const LATCH_CACHE_ENTRY *e, ULONG Scope, const LATCH_TUPLE *Tuple, UINT64 ProcessId,
                            const WCHAR *Path, UINT16 PathLen)
{
    if (e->Scope != Scope || e->Direction != Tuple->Direction || e->IpVersion != Tuple->IpVersion ||
        e->Protocol != Tuple->Protocol || !RtlEqualMemory(e->RemoteAddr, Tuple->RemoteAddr, sizeof(e->RemoteAddr))) {
        return FALSE;
    }
    if (Scope == LATCH_SCOPE_PROCESS_DEST || Scope == LATCH_SCOPE_CONNECTION) {
        if (e->RemotePort != Tuple->RemotePort || e->ProcessId != ProcessId) {
            return FALSE;
        }
        if (Scope == LATCH_SCOPE_CONNECTION &&
            (e->LocalPort != Tuple->LocalPort || !RtlEqualMemory(e->LocalAddr, Tuple->LocalAddr, sizeof(e->LocalAddr)))) {
            return FALSE;
        }
    }
    /* Every scope: the same program (a pid reused by another program misses). */
    return e->PathLen == PathLen && PathEqual(e->Path, Path, PathLen);
}

LATCH_LOCKED static BOOLEAN LookupLocked(UINT64 Hash, ULONG Scope, const LATCH_TUPLE *Tuple, UINT64 ProcessId,
                                         const WCHAR *Path, UINT16 PathLen, ULONGLONG Now, ULONG *Action,
                                         UINT64 *RuleTag)
{
    ULONG i;
    for (i = 0; i < LATCH_CACHE_PROBE; i++) {
        LATCH_CACHE_SLOT *slot = &g.Cache[(Hash + i) & (LATCH_CACHE_SLOTS - 1)];
        if (slot->Hash == Hash && slot->Expires > Now) {
            /* At most one entry per hash in a window (see LatchCacheInsertLocked). */
            if (EntryMatches(slot->Entry, Scope, Tuple, ProcessId, Path, PathLen)) {
                *Action = slot->Entry->Action;
                *RuleTag = slot->Entry->RuleTag;
                return TRUE;
            }
            return FALSE;
        }
    }
    return FALSE;
}

/* Appends one hit to the ring, or counts it lost when the ring is full. Returns TRUE
   when the worker should be woken (a batch is ready). */
LATCH_LOCKED static BOOLEAN RecordHitLocked(const LATCH_TUPLE *Tuple, UINT64 ProcessId, ULONG Action, UINT64 RuleTag,
                                            LONGLONG Timestamp)
{
    LATCH_HIT_RECORD *r;
    if (g.HitCount >= LATCH_HIT_SLOTS) {
        LatchCount(LATCH_STAT_HITS_LOST);
        return FALSE;
    }
    r = &g.Hits[(g.HitHead + g.HitCount) & (LATCH_HIT_SLOTS - 1)];
    RtlZeroMemory(r, sizeof(*r));
    r->RuleTag = RuleTag;
    r->ProcessId = ProcessId;
    r->Timestamp = Timestamp;
    RtlCopyMemory(r->LocalAddr, Tuple->LocalAddr, sizeof(r->LocalAddr));
    RtlCopyMemory(r->RemoteAddr, Tuple->RemoteAddr, sizeof(r->RemoteAddr));
    r->LocalPort = Tuple->LocalPort;
    r->RemotePort = Tuple->RemotePort;
    r->Direction = Tuple->Direction;
    r->IpVersion = Tuple->IpVersion;
    r->Protocol = Tuple->Protocol;
    r->Action = (UINT8)Action;
    g.HitCount++;
    return g.HitCount == LATCH_HIT_WAKE;
}

ULONG LatchDequeueHits(UINT8 *Buffer, ULONG BufferLength, ULONG *Length)
{
    LATCH_MSG_HIT_BATCH *batch = (LATCH_MSG_HIT_BATCH *)Buffer;
    LATCH_HIT_RECORD *out = (LATCH_HIT_RECORD *)(Buffer + LATCH_HIT_BATCH_FIXED_SIZE);
    ULONG n, i;
    KIRQL irql;

    *Length = 0;
    if (BufferLength < LATCH_HIT_BATCH_MAX_SIZE) {
        return 0;
    }
    KeAcquireSpinLock(&g.Lock, &irql);
    n = g.HitCount < LATCH_MAX_HITS_PER_BATCH ? g.HitCount : LATCH_MAX_HITS_PER_BATCH;
    for (i = 0; i < n; i++) {
        out[i] = g.Hits[(g.HitHead + i) & (LATCH_HIT_SLOTS - 1)];
    }
    g.HitHead = (g.HitHead + n) & (LATCH_HIT_SLOTS - 1);
    g.HitCount -= n;
    KeReleaseSpinLock(&g.Lock, irql);
    if (n == 0) {
        return 0;
    }
    RtlZeroMemory(batch, LATCH_HIT_BATCH_FIXED_SIZE);
    LatchInitHeader(&batch->Header, LATCH_TYPE_HIT_BATCH, LATCH_HIT_BATCH_FIXED_SIZE + LATCH_HIT_RECORD_SIZE * n);
    batch->Count = n;
    *Length = batch->Header.Length;
    return n;
}

void LatchDropHits(void)
{
    KIRQL irql;
    ULONG lost;

    KeAcquireSpinLock(&g.Lock, &irql);
    lost = g.HitCount;
    g.HitCount = 0;
    g.HitHead = 0;
    KeReleaseSpinLock(&g.Lock, irql);
    if (lost != 0) {
        InterlockedAdd64(&g.Stats[LATCH_STAT_HITS_LOST], (LONG64)lost);
    }
}

BOOLEAN LatchCacheLookup(const LATCH_TUPLE *Tuple, UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen,
                         BOOLEAN Record, ULONG *Action)
{
    LARGE_INTEGER stamp;
    UINT64 tag = 0;
    BOOLEAN wake = FALSE;
    UINT64 byProcess = MakeHash(LATCH_SCOPE_PROCESS_DEST, Tuple, ProcessId, Path, PathLen);
    UINT64 byPath = MakeHash(LATCH_SCOPE_PATH_HOST, Tuple, ProcessId, Path, PathLen);
    UINT64 byConnection = 0;
    ULONGLONG now = KeQueryInterruptTime();
    BOOLEAN hit;
    KIRQL irql;

    if (!InterlockedCompareExchange(&g.ClientConnected, 0, 0)) {
        /* No service: the default applies at once, never a verdict cached for one that
           is gone (the disconnect empties the cache too, a moment later). */
        return FALSE;
    }
    if (Tuple->Direction == LATCH_DIRECTION_INBOUND && ProcessId != 0) {
        byConnection = MakeHash(LATCH_SCOPE_CONNECTION, Tuple, ProcessId, Path, PathLen);
    }
    KeQuerySystemTime(&stamp);
    KeAcquireSpinLock(&g.Lock, &irql);
    hit = (ProcessId != 0 &&
           LookupLocked(byProcess, LATCH_SCOPE_PROCESS_DEST, Tuple, ProcessId, Path, PathLen, now, Action, &tag)) ||
          (PathLen != 0 &&
           LookupLocked(byPath, LATCH_SCOPE_PATH_HOST, Tuple, ProcessId, Path, PathLen, now, Action, &tag));
    if (!hit && byConnection != 0 &&
        LookupLocked(byConnection, LATCH_SCOPE_CONNECTION, Tuple, ProcessId, Path, PathLen, now, Action, &tag)) {
        /* The peer's retransmit of a connection already decided (and recorded) by an
           answer or a default: not a new connection, and not decided by a rule. */
        hit = TRUE;
        Record = FALSE;
    }
    if (hit && Record) {
        wake = RecordHitLocked(Tuple, ProcessId, *Action, tag, stamp.QuadPart);
    }
    KeReleaseSpinLock(&g.Lock, irql);
    if (wake) {
        LatchWakeWorker(); /* KeSetEvent without a wait: fine at DISPATCH_LEVEL */
    }
    return hit;
}

PLATCH_CACHE_ENTRY LatchCacheAllocate(UINT16 PathLen)
{
    PLATCH_CACHE_ENTRY e = (PLATCH_CACHE_ENTRY)ExAllocatePool2(
        POOL_FLAG_NON_PAGED, FIELD_OFFSET(LATCH_CACHE_ENTRY, Path) + sizeof(WCHAR) * (SIZE_T)(PathLen + 1),
        LATCH_TAG_CACHE);
    if (e == NULL) {
        LatchCount(LATCH_STAT_ALLOC_FAILURES);
        return NULL;
    }
    e->PathCapacity = PathLen;
    return e;
}

void LatchCacheFree(PLATCH_CACHE_ENTRY Entry)
{
    if (Entry != NULL) {
        ExFreePoolWithTag(Entry, LATCH_TAG_CACHE);
    }
}

/* Fills Fresh (allocated by LatchCacheAllocate for PathLen units) with the key and
   puts it in the table. Returns what the caller frees after releasing the lock: the
   entry it replaced, or Fresh itself when nothing identifies the program. */
LATCH_LOCKED PLATCH_CACHE_ENTRY LatchCacheInsertLocked(PLATCH_CACHE_ENTRY Fresh, const LATCH_TUPLE *Tuple,
                                                      UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen,
                                                      ULONG Scope, ULONG TtlMs, ULONG Action, UINT64 RuleTag)
{
    UINT64 hash;
    ULONGLONG now = KeQueryInterruptTime();
    LATCH_CACHE_SLOT *victim = NULL;
    PLATCH_CACHE_ENTRY old;
    ULONG i;

    if (((Scope == LATCH_SCOPE_PROCESS_DEST || Scope == LATCH_SCOPE_CONNECTION) && ProcessId == 0) ||
        (Scope == LATCH_SCOPE_PATH_HOST && PathLen == 0) || Fresh->PathCapacity < PathLen) {
        return Fresh; /* nothing identifies the program: never cache */
    }
    hash = MakeHash(Scope, Tuple, ProcessId, Path, PathLen);
    for (i = 0; i < LATCH_CACHE_PROBE; i++) {
        LATCH_CACHE_SLOT *slot = &g.Cache[(hash + i) & (LATCH_CACHE_SLOTS - 1)];
        if (slot->Hash == hash) {
            victim = slot; /* the same key, or another with its hash: one entry per hash */
            break;
        }
        if (victim != NULL && (victim->Entry == NULL || victim->Expires <= now)) {
            continue; /* a free slot is chosen; look on only for an entry with this hash */
        }
        if (victim == NULL || slot->Entry == NULL || slot->Expires <= now || slot->Expires < victim->Expires) {
            victim = slot; /* a free slot, else the entry closest to expiry */
        }
    }
    RtlZeroMemory(Fresh, FIELD_OFFSET(LATCH_CACHE_ENTRY, Path));
    Fresh->PathCapacity = PathLen;
    Fresh->Scope = Scope;
    Fresh->Direction = Tuple->Direction;
    Fresh->IpVersion = Tuple->IpVersion;
    Fresh->Protocol = Tuple->Protocol;
    RtlCopyMemory(Fresh->RemoteAddr, Tuple->RemoteAddr, sizeof(Fresh->RemoteAddr));
    if (Scope != LATCH_SCOPE_PATH_HOST) {
        Fresh->RemotePort = Tuple->RemotePort;
        Fresh->ProcessId = ProcessId;
    }
    if (Scope == LATCH_SCOPE_CONNECTION) {
        Fresh->LocalPort = Tuple->LocalPort;
        RtlCopyMemory(Fresh->LocalAddr, Tuple->LocalAddr, sizeof(Fresh->LocalAddr));
    }
    Fresh->PathLen = PathLen;
    if (PathLen != 0) {
        RtlCopyMemory(Fresh->Path, Path, sizeof(WCHAR) * (SIZE_T)PathLen);
    }
    Fresh->Action = (Action == LATCH_ACTION_PERMIT) ? LATCH_ACTION_PERMIT : LATCH_ACTION_BLOCK;
    Fresh->RuleTag = RuleTag;

    old = victim->Entry;
    if (old != NULL) {
        RemoveEntryList(&old->Link);
    }
    InsertTailList(&g.CacheList, &Fresh->Link);
    victim->Entry = Fresh;
    victim->Hash = hash;
    victim->Expires = now + LATCH_MS_TO_100NS(TtlMs);
    return old;
}

void LatchInitCache(void)
{
    InitializeListHead(&g.CacheList);
    g.CacheGeneration = 1;
}

/* Empties the cache and starts a new generation (under one hold of the lock: no
   verdict decided before can enter it afterwards), then frees the entries. */
void LatchCacheFlush(void)
{
    LIST_ENTRY gone;
    KIRQL irql;

    InitializeListHead(&gone);
    KeAcquireSpinLock(&g.Lock, &irql);
    g.CacheGeneration++;
    if (!IsListEmpty(&g.CacheList)) {
        gone.Flink = g.CacheList.Flink;
        gone.Blink = g.CacheList.Blink;
        gone.Flink->Blink = &gone;
        gone.Blink->Flink = &gone;
        InitializeListHead(&g.CacheList);
    }
    RtlZeroMemory(g.Cache, sizeof(g.Cache));
    KeReleaseSpinLock(&g.Lock, irql);
    while (!IsListEmpty(&gone)) {
        PLIST_ENTRY link = RemoveHeadList(&gone);
        LatchCacheFree(CONTAINING_RECORD(link, LATCH_CACHE_ENTRY, Link));
    }
}
