/*
 * Verdict cache: lets a re-connect from the same process to the same destination be
 * decided in classifyFn without a round trip. A fixed open-addressed table (no
 * allocation, bounded probe) under g.Lock; entries expire; FLUSH empties it.
 * Keys are 64-bit hashes of the scope's fields; the scope is part of the key.
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

static UINT64 MakeKey(ULONG Scope, const LATCH_TUPLE *Tuple, UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen)
{
    UINT64 h = Mix(FNV_OFFSET, &Scope, sizeof(Scope));
    h = Mix(h, &Tuple->Direction, sizeof(Tuple->Direction));
    h = Mix(h, &Tuple->IpVersion, sizeof(Tuple->IpVersion));
    h = Mix(h, &Tuple->Protocol, sizeof(Tuple->Protocol));
    h = Mix(h, Tuple->RemoteAddr, sizeof(Tuple->RemoteAddr));
    if (Scope == LATCH_SCOPE_PROCESS_DEST) {
        h = Mix(h, &Tuple->RemotePort, sizeof(Tuple->RemotePort));
        h = Mix(h, &ProcessId, sizeof(ProcessId));
    } else {
        UINT16 i;
        /* NT paths compare case-insensitively: fold ASCII letters. */
        for (i = 0; i < PathLen; i++) {
            WCHAR c = Path[i];
            if (c >= L'a' && c <= L'z') {
                c = (WCHAR)(c - (L'a' - L'A'));
            }
            h = Mix(h, &c, sizeof(c));
        }
        h = Mix(h, &PathLen, sizeof(PathLen));
    }
    return h == 0 ? 1 : h;
}

LATCH_LOCKED static BOOLEAN LookupLocked(UINT64 Key, ULONGLONG Now, ULONG *Action)
{
    ULONG i;
    for (i = 0; i < LATCH_CACHE_PROBE; i++) {
        LATCH_CACHE_SLOT *slot = &g.Cache[(Key + i) & (LATCH_CACHE_SLOTS - 1)];
        if (slot->Key == Key && slot->Expires > Now) {
            *Action = slot->Action;
            return TRUE;
        }
    }
    return FALSE;
}

BOOLEAN LatchCacheLookup(const LATCH_TUPLE *Tuple, UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen,
                         ULONG *Action)
{
    UINT64 byProcess = MakeKey(LATCH_SCOPE_PROCESS_DEST, Tuple, ProcessId, Path, PathLen);
    UINT64 byPath = MakeKey(LATCH_SCOPE_PATH_HOST, Tuple, ProcessId, Path, PathLen);
    ULONGLONG now = KeQueryInterruptTime();
    BOOLEAN hit;
    KIRQL irql;

    KeAcquireSpinLock(&g.Lock, &irql);
    hit = (ProcessId != 0 && LookupLocked(byProcess, now, Action)) ||
          (PathLen != 0 && LookupLocked(byPath, now, Action));
    KeReleaseSpinLock(&g.Lock, irql);
    return hit;
}

LATCH_LOCKED void LatchCacheInsertLocked(const LATCH_TUPLE *Tuple, UINT64 ProcessId, const WCHAR *Path, UINT16 PathLen,
                            ULONG Scope, ULONG TtlMs, ULONG Action)
{
    UINT64 key;
    ULONGLONG now = KeQueryInterruptTime();
    LATCH_CACHE_SLOT *victim = NULL;
    ULONG i;

    if ((Scope == LATCH_SCOPE_PROCESS_DEST && ProcessId == 0) || (Scope == LATCH_SCOPE_PATH_HOST && PathLen == 0)) {
        return; /* nothing identifies the program: never cache */
    }
    key = MakeKey(Scope, Tuple, ProcessId, Path, PathLen);
    for (i = 0; i < LATCH_CACHE_PROBE; i++) {
        LATCH_CACHE_SLOT *slot = &g.Cache[(key + i) & (LATCH_CACHE_SLOTS - 1)];
        if (slot->Key == key || slot->Key == 0 || slot->Expires <= now) {
            victim = slot;
            break;
        }
        if (victim == NULL || slot->Expires < victim->Expires) {
            victim = slot; /* evict the entry closest to expiry */
        }
    }
    victim->Key = key;
    victim->Expires = now + LATCH_MS_TO_100NS(TtlMs);
    victim->Action = (Action == LATCH_ACTION_PERMIT) ? LATCH_ACTION_PERMIT : LATCH_ACTION_BLOCK;
}

void LatchCacheFlush(void)
{
    KIRQL irql;
    KeAcquireSpinLock(&g.Lock, &irql);
    RtlZeroMemory(g.Cache, sizeof(g.Cache));
    KeReleaseSpinLock(&g.Lock, irql);
}
