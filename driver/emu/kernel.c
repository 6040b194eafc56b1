/*
 * Kernel emulation: IRQL, pool, spin locks, dispatcher objects, system threads,
 * time, registry, device objects — with Driver Verifier's checks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "emu_harness.h"

/* ---- per-thread state ---- */
#define MAX_HELD_LOCKS 16
typedef struct emu_tls {
    KIRQL irql;
    int held;
    PKSPIN_LOCK locks[MAX_HELD_LOCKS];
    KIRQL saved[MAX_HELD_LOCKS];
    long long holdStart[MAX_HELD_LOCKS]; /* thread CPU time at acquisition (budget on) */
    long holdDisturb[MAX_HELD_LOCKS];    /* involuntary switches + page faults at acquisition */
    void *holdSite[MAX_HELD_LOCKS];
} emu_tls;
static __thread emu_tls tls;

/* ---- schedule fuzzer ----
   When a seed is set, every spin-lock release and every completion the emulation
   delivers is followed, with probability permille/1000, by a delay of up to maxMicros
   microseconds. Each thread draws from its own xorshift64* stream derived from the
   seed and the order in which threads first reach a schedule point, so one seed
   gives the same sequence of delays per thread in every run (the OS still schedules
   the threads: a seed reproduces the delays, and so the same race windows, not one
   exact interleaving). */
static volatile unsigned long long schedSeed;
static volatile int schedPermille, schedMaxMicros;
static volatile unsigned schedGeneration, schedThreads;
static __thread unsigned long long schedState;
static __thread unsigned schedSeen;

void emu_sched_fuzz(unsigned long long seed, int permille, int maxMicros)
{
    schedPermille = permille;
    schedMaxMicros = maxMicros > 0 ? maxMicros : 1;
    __atomic_store_n(&schedThreads, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&schedSeed, seed, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&schedGeneration, 1, __ATOMIC_SEQ_CST);
}

unsigned long long emu_sched_seed(void) { return schedSeed; }

void emu_sched_point(void)
{
    unsigned long long seed = __atomic_load_n(&schedSeed, __ATOMIC_ACQUIRE);
    if (seed == 0) {
        return;
    }
    unsigned gen = __atomic_load_n(&schedGeneration, __ATOMIC_ACQUIRE);
    if (schedSeen != gen) {
        unsigned ordinal = __atomic_add_fetch(&schedThreads, 1, __ATOMIC_SEQ_CST);
        schedState = (seed ^ 0x9E3779B97F4A7C15ULL * ordinal) | 1;
        schedSeen = gen;
    }
    schedState ^= schedState >> 12;
    schedState ^= schedState << 25;
    schedState ^= schedState >> 27;
    unsigned long long r = schedState * 2685821657736338717ULL;
    if ((int)(r % 1000) >= schedPermille) {
        return;
    }
    int us = (int)((r >> 20) % (unsigned long long)schedMaxMicros);
    if (us < 5) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, (long)us * 1000L};
    nanosleep(&ts, NULL);
}

/* ---- time spent holding spin locks (at DISPATCH_LEVEL) ----
   While measuring, every KeAcquireSpinLock..KeReleaseSpinLock is timed in the thread's
   CPU time (CLOCK_THREAD_CPUTIME_ID: a preempted holder is not charged for the time it
   did not run, as a real CPU at DISPATCH_LEVEL cannot be preempted), and the longest
   hold is kept per acquiring call site. */
#define MAX_HOLD_SITES 64
static volatile int holdMeasuring;
static pthread_mutex_t holdLock = PTHREAD_MUTEX_INITIALIZER;
static long long holdBudgetNs;
static struct {
    void *site;
    long long maxNs;
    long long totalNs;
    long count;
    long over;
} holdSites[MAX_HOLD_SITES];

/* Preemptions and page faults are artefacts of user mode (a real CPU at DISPATCH_LEVEL
   is not preempted and non-paged pool does not fault): a hold they disturbed is not
   measured (counted in "disturbed"). */
static long thread_disturbances(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_nivcsw + ru.ru_minflt + ru.ru_majflt;
}
static volatile long holdsDisturbed;
long emu_lock_holds_disturbed(void) { return holdsDisturbed; }

static long long thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void emu_lock_hold_measure(int on, long long budgetNs)
{
    pthread_mutex_lock(&holdLock);
    holdBudgetNs = budgetNs;
    if (on) {
        memset(holdSites, 0, sizeof(holdSites));
        holdsDisturbed = 0;
    }
    holdMeasuring = on;
    pthread_mutex_unlock(&holdLock);
}

static void hold_record(void *site, long long ns)
{
    pthread_mutex_lock(&holdLock);
    for (int i = 0; i < MAX_HOLD_SITES; i++) {
        if (holdSites[i].site == site || holdSites[i].site == NULL) {
            holdSites[i].site = site;
            holdSites[i].count++;
            holdSites[i].totalNs += ns;
            holdSites[i].over += holdBudgetNs > 0 && ns > holdBudgetNs;
            if (ns > holdSites[i].maxNs) {
                holdSites[i].maxNs = ns;
            }
            break;
        }
    }
    pthread_mutex_unlock(&holdLock);
}

int emu_lock_hold_sites(emu_hold_site *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&holdLock);
    for (int i = 0; i < MAX_HOLD_SITES && n < max && holdSites[i].site != NULL; i++) {
        out[n].site = holdSites[i].site;
        out[n].maxNs = holdSites[i].maxNs;
        out[n].totalNs = holdSites[i].totalNs;
        out[n].count = holdSites[i].count;
        out[n].over = holdSites[i].over;
        n++;
    }
    pthread_mutex_unlock(&holdLock);
    return n;
}

const char *emu_irql_name(KIRQL irql)
{
    switch (irql) {
    case PASSIVE_LEVEL: return "PASSIVE_LEVEL";
    case APC_LEVEL: return "APC_LEVEL";
    case DISPATCH_LEVEL: return "DISPATCH_LEVEL";
    default: return "HIGH_LEVEL";
    }
}

/* ---- violations ---- */
#define MAX_KEPT 256
static pthread_mutex_t vlock = PTHREAD_MUTEX_INITIALIZER;
static char *vtexts[MAX_KEPT];
static int vcount;
static int vquiet;

void emu_violation(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&vlock);
    if (vcount < MAX_KEPT) {
        vtexts[vcount] = strdup(buf);
    }
    vcount++;
    pthread_mutex_unlock(&vlock);
    if (!vquiet) {
        fprintf(stderr, "VERIFIER VIOLATION: %s\n", buf);
    }
    const char *abortEnv = getenv("LATCH_EMU_ABORT");
    if (abortEnv != NULL && abortEnv[0] == '1') {
        fprintf(stderr, "VERIFIER: bugcheck (LATCH_EMU_ABORT=1)\n");
        abort();
    }
}

int emu_violation_count(void)
{
    pthread_mutex_lock(&vlock);
    int n = vcount;
    pthread_mutex_unlock(&vlock);
    return n;
}

const char *emu_violation_text(int i)
{
    pthread_mutex_lock(&vlock);
    const char *t = (i >= 0 && i < vcount && i < MAX_KEPT) ? vtexts[i] : "";
    pthread_mutex_unlock(&vlock);
    return t;
}

void emu_clear_violations(void)
{
    pthread_mutex_lock(&vlock);
    for (int i = 0; i < vcount && i < MAX_KEPT; i++) {
        free(vtexts[i]);
        vtexts[i] = NULL;
    }
    vcount = 0;
    pthread_mutex_unlock(&vlock);
}

int emu_violation_contains(const char *needle)
{
    int found = 0;
    pthread_mutex_lock(&vlock);
    for (int i = 0; i < vcount && i < MAX_KEPT; i++) {
        if (strstr(vtexts[i], needle) != NULL) {
            found = 1;
        }
    }
    pthread_mutex_unlock(&vlock);
    return found;
}

void emu_set_quiet(int q) { vquiet = q; }

void EmuAssertFailed(const char *expr, const char *file, int line)
{
    emu_violation("NT_ASSERT(%s) failed at %s:%d", expr, file, line);
}

/* ---- IRQL ---- */
KIRQL KeGetCurrentIrql(void) { return tls.irql; }

void emu_require_irql(const char *routine, KIRQL max)
{
    if (tls.irql > max) {
        emu_violation("%s called at IRQL %d (%s); it requires IRQL <= %s", routine, tls.irql,
                      emu_irql_name(tls.irql), emu_irql_name(max));
    }
}

void EmuPagedCode(const char *function)
{
    if (tls.irql > APC_LEVEL) {
        emu_violation("paged code %s ran at IRQL %d (%s); PAGED_CODE requires <= APC_LEVEL", function, tls.irql,
                      emu_irql_name(tls.irql));
    }
}

void KeRaiseIrql(KIRQL newIrql, PKIRQL oldIrql)
{
    if (newIrql < tls.irql) {
        emu_violation("KeRaiseIrql to %s from %s lowers the IRQL", emu_irql_name(newIrql), emu_irql_name(tls.irql));
    }
    *oldIrql = tls.irql;
    tls.irql = newIrql;
}

void KeLowerIrql(KIRQL newIrql)
{
    if (newIrql > tls.irql) {
        emu_violation("KeLowerIrql to %s from %s raises the IRQL", emu_irql_name(newIrql), emu_irql_name(tls.irql));
    }
    if (newIrql < DISPATCH_LEVEL && tls.held > 0) {
        emu_violation("KeLowerIrql to %s while holding %d spin lock(s)", emu_irql_name(newIrql), tls.held);
    }
    tls.irql = newIrql;
}

/* ---- fault injection ---- */
#define MAX_SITES 256
static pthread_mutex_t flock = PTHREAD_MUTEX_INITIALIZER;
static int frecording;
static void *fsites[MAX_SITES];
static int fsitecount;
static void *ffail;
static long finjected;

void emu_fault_record(int on)
{
    pthread_mutex_lock(&flock);
    frecording = on;
    if (on) {
        fsitecount = 0;
    }
    pthread_mutex_unlock(&flock);
}
int emu_fault_site_count(void) { return fsitecount; }
void *emu_fault_site(int i) { return (i >= 0 && i < fsitecount) ? fsites[i] : NULL; }
void emu_fault_fail_site(void *site)
{
    pthread_mutex_lock(&flock);
    ffail = site;
    finjected = 0;
    pthread_mutex_unlock(&flock);
}
long emu_fault_injected(void) { return finjected; }

int emu_fault_should_fail(void *site)
{
    int fail;
    pthread_mutex_lock(&flock);
    if (frecording) {
        int i;
        for (i = 0; i < fsitecount && fsites[i] != site; i++) {
        }
        if (i == fsitecount && fsitecount < MAX_SITES) {
            fsites[fsitecount++] = site;
        }
    }
    fail = ffail != NULL && ffail == site;
    if (fail) {
        finjected++;
    }
    pthread_mutex_unlock(&flock);
    return fail;
}

/* ---- pool ---- */
typedef struct pool_block {
    struct pool_block *next;
    void *user;
    SIZE_T size;
    ULONG tag;
    void *site;
} pool_block;
#define POOL_BUCKETS 4096
static pthread_mutex_t plock = PTHREAD_MUTEX_INITIALIZER;
static pool_block *pbuckets[POOL_BUCKETS];
static long plive, ptotal;

static size_t phash(const void *p) { return ((uintptr_t)p >> 4) % POOL_BUCKETS; }

static void tagtext(ULONG tag, char out[5])
{
    for (int i = 0; i < 4; i++) {
        char c = (char)((tag >> (8 * i)) & 0xff);
        out[i] = (c >= 32 && c < 127) ? c : '?';
    }
    out[4] = 0;
}

static PVOID pool_alloc(POOL_FLAGS flags, SIZE_T size, ULONG tag, void *site)
{
    if (flags & POOL_FLAG_PAGED) {
        emu_require_irql("ExAllocatePool2(POOL_FLAG_PAGED)", APC_LEVEL);
    } else {
        emu_require_irql("ExAllocatePool2", DISPATCH_LEVEL);
    }
    if (!(flags & (POOL_FLAG_PAGED | POOL_FLAG_NON_PAGED))) {
        emu_violation("ExAllocatePool2 without POOL_FLAG_NON_PAGED or POOL_FLAG_PAGED");
    }
    if (tag == 0) {
        emu_violation("ExAllocatePool2 with a zero pool tag");
    }
    if (size == 0) {
        return NULL;
    }
    if (emu_fault_should_fail(site)) {
        return NULL;
    }
    void *user = malloc(size);
    pool_block *b = malloc(sizeof(*b));
    if (user == NULL || b == NULL) {
        free(user);
        free(b);
        return NULL;
    }
    memset(user, (flags & POOL_FLAG_UNINITIALIZED) ? 0xCD : 0, size);
    b->user = user;
    b->size = size;
    b->tag = tag;
    b->site = site;
    pthread_mutex_lock(&plock);
    b->next = pbuckets[phash(user)];
    pbuckets[phash(user)] = b;
    plive++;
    ptotal++;
    pthread_mutex_unlock(&plock);
    return user;
}

PVOID ExAllocatePool2(POOL_FLAGS flags, SIZE_T size, ULONG tag)
{
    return pool_alloc(flags, size, tag, __builtin_return_address(0));
}

void ExFreePoolWithTag(PVOID p, ULONG tag)
{
    emu_require_irql("ExFreePoolWithTag", DISPATCH_LEVEL);
    if (p == NULL) {
        emu_violation("ExFreePoolWithTag(NULL)");
        return;
    }
    pthread_mutex_lock(&plock);
    pool_block **pp = &pbuckets[phash(p)];
    while (*pp != NULL && (*pp)->user != p) {
        pp = &(*pp)->next;
    }
    pool_block *b = *pp;
    if (b != NULL) {
        *pp = b->next;
        plive--;
    }
    pthread_mutex_unlock(&plock);
    if (b == NULL) {
        emu_violation("ExFreePoolWithTag(%p): not a live pool allocation (double free?)", p);
        return;
    }
    if (b->tag != tag) {
        char a[5], f[5];
        tagtext(b->tag, a);
        tagtext(tag, f);
        emu_violation("ExFreePoolWithTag(%p, '%s'): allocated with tag '%s'", p, f, a);
    }
    free(b->user);
    free(b);
}

long emu_pool_outstanding(void) { return plive; }
long emu_pool_total_allocations(void) { return ptotal; }

static void pool_check_and_free(const char *when)
{
    pthread_mutex_lock(&plock);
    for (int i = 0; i < POOL_BUCKETS; i++) {
        while (pbuckets[i] != NULL) {
            pool_block *b = pbuckets[i];
            char t[5];
            tagtext(b->tag, t);
            pbuckets[i] = b->next;
            pthread_mutex_unlock(&plock);
            emu_violation("%s: leaked pool allocation %p, tag '%s', %zu bytes, allocated at %p", when, b->user, t,
                          (size_t)b->size, b->site);
            pthread_mutex_lock(&plock);
            free(b->user);
            free(b);
            plive--;
        }
    }
    pthread_mutex_unlock(&plock);
}

/* ---- spin locks ---- */
void KeInitializeSpinLock(PKSPIN_LOCK lock) { *lock = 0; }

static void spin_acquire(PKSPIN_LOCK lock, const char *routine)
{
    ULONG_PTR me = (ULONG_PTR)&tls;
    if (__atomic_load_n(lock, __ATOMIC_ACQUIRE) == me) {
        emu_violation("%s: spin lock %p acquired recursively by its owner (deadlock)", routine, (void *)lock);
        return;
    }
    for (;;) {
        ULONG_PTR expected = 0;
        if (__atomic_compare_exchange_n(lock, &expected, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            break;
        }
        sched_yield();
    }
    if (tls.held < MAX_HELD_LOCKS) {
        tls.locks[tls.held] = lock;
    }
    tls.held++;
}

static int spin_release(PKSPIN_LOCK lock, const char *routine)
{
    ULONG_PTR me = (ULONG_PTR)&tls;
    if (__atomic_load_n(lock, __ATOMIC_ACQUIRE) != me) {
        emu_violation("%s: spin lock %p released by a thread that does not hold it", routine, (void *)lock);
        return 0;
    }
    if (tls.held == 0 || (tls.held <= MAX_HELD_LOCKS && tls.locks[tls.held - 1] != lock)) {
        emu_violation("%s: spin lock %p released out of order (the most recently acquired lock is %p)", routine,
                      (void *)lock, tls.held > 0 ? (void *)tls.locks[tls.held - 1] : NULL);
        /* remove it from wherever it is, to keep going */
        for (int i = 0; i < tls.held && i < MAX_HELD_LOCKS; i++) {
            if (tls.locks[i] == lock) {
                memmove(&tls.locks[i], &tls.locks[i + 1], sizeof(tls.locks[0]) * (size_t)(tls.held - i - 1));
                break;
            }
        }
    }
    tls.held--;
    __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
    return 1;
}

void KeAcquireSpinLock(PKSPIN_LOCK lock, PKIRQL oldIrql)
{
    emu_require_irql("KeAcquireSpinLock", DISPATCH_LEVEL);
    *oldIrql = tls.irql;
    tls.irql = DISPATCH_LEVEL;
    spin_acquire(lock, "KeAcquireSpinLock");
    if (holdMeasuring && tls.held > 0 && tls.held <= MAX_HELD_LOCKS) {
        tls.holdSite[tls.held - 1] = __builtin_return_address(0);
        tls.holdDisturb[tls.held - 1] = thread_disturbances();
        tls.holdStart[tls.held - 1] = thread_cpu_ns();
    }
}

void KeReleaseSpinLock(PKSPIN_LOCK lock, KIRQL newIrql)
{
    if (tls.irql != DISPATCH_LEVEL) {
        emu_violation("KeReleaseSpinLock at IRQL %d (%s); a held spin lock means DISPATCH_LEVEL", tls.irql,
                      emu_irql_name(tls.irql));
    }
    if (holdMeasuring && tls.held > 0 && tls.held <= MAX_HELD_LOCKS && tls.holdStart[tls.held - 1] != 0) {
        long long ns = thread_cpu_ns() - tls.holdStart[tls.held - 1];
        if (thread_disturbances() == tls.holdDisturb[tls.held - 1]) {
            hold_record(tls.holdSite[tls.held - 1], ns);
        } else {
            __atomic_add_fetch(&holdsDisturbed, 1, __ATOMIC_RELAXED);
        }
    }
    if (tls.held > 0 && tls.held <= MAX_HELD_LOCKS) {
        tls.holdStart[tls.held - 1] = 0;
    }
    spin_release(lock, "KeReleaseSpinLock");
    if (newIrql > DISPATCH_LEVEL) {
        emu_violation("KeReleaseSpinLock restores IRQL %d above DISPATCH_LEVEL", newIrql);
    }
    tls.irql = newIrql;
    if (newIrql < DISPATCH_LEVEL && tls.held > 0) {
        emu_violation("KeReleaseSpinLock lowered IRQL to %s while %d spin lock(s) are still held",
                      emu_irql_name(newIrql), tls.held);
    }
    emu_sched_point(); /* another CPU gets the lock first */
}

void KeAcquireSpinLockAtDpcLevel(PKSPIN_LOCK lock)
{
    if (tls.irql != DISPATCH_LEVEL) {
        emu_violation("KeAcquireSpinLockAtDpcLevel at IRQL %d (%s); requires DISPATCH_LEVEL", tls.irql,
                      emu_irql_name(tls.irql));
    }
    spin_acquire(lock, "KeAcquireSpinLockAtDpcLevel");
}

void KeReleaseSpinLockFromDpcLevel(PKSPIN_LOCK lock)
{
    if (tls.irql != DISPATCH_LEVEL) {
        emu_violation("KeReleaseSpinLockFromDpcLevel at IRQL %d", tls.irql);
    }
    spin_release(lock, "KeReleaseSpinLockFromDpcLevel");
}

/* ---- dispatcher objects: one mutex and condition variable for all ---- */
static pthread_mutex_t dlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dcond = PTHREAD_COND_INITIALIZER;
enum { OBJ_EVENT = 1, OBJ_THREAD = 2 };

void KeInitializeEvent(PRKEVENT ev, EVENT_TYPE type, BOOLEAN state)
{
    ev->Header.Type = OBJ_EVENT;
    ev->Header.EventType = type;
    ev->Header.Signaled = state ? 1 : 0;
    ev->Header.Sync = NULL;
}

LONG KeSetEvent(PRKEVENT ev, KPRIORITY inc, BOOLEAN wait)
{
    (void)inc;
    emu_require_irql("KeSetEvent", DISPATCH_LEVEL);
    if (wait) {
        emu_violation("KeSetEvent(Wait=TRUE) is not emulated");
    }
    if (ev->Header.Type != OBJ_EVENT) {
        emu_violation("KeSetEvent on an uninitialized event %p", (void *)ev);
    }
    pthread_mutex_lock(&dlock);
    LONG prev = ev->Header.Signaled;
    ev->Header.Signaled = 1;
    pthread_cond_broadcast(&dcond);
    pthread_mutex_unlock(&dlock);
    return prev;
}

void KeClearEvent(PRKEVENT ev)
{
    pthread_mutex_lock(&dlock);
    ev->Header.Signaled = 0;
    pthread_mutex_unlock(&dlock);
}

static void deadline_from(PLARGE_INTEGER timeout, struct timespec *ts)
{
    LONGLONG t = timeout->QuadPart;
    if (t < 0) {
        clock_gettime(CLOCK_REALTIME, ts);
        LONGLONG ns = -t * 100;
        ts->tv_sec += ns / 1000000000LL;
        ts->tv_nsec += ns % 1000000000LL;
    } else {
        LONGLONG unix100 = t - 116444736000000000LL;
        ts->tv_sec = unix100 / 10000000LL;
        ts->tv_nsec = (unix100 % 10000000LL) * 100;
    }
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

NTSTATUS KeWaitForSingleObject(PVOID object, KWAIT_REASON reason, KPROCESSOR_MODE mode, BOOLEAN alertable,
                               PLARGE_INTEGER timeout)
{
    (void)reason;
    (void)mode;
    (void)alertable;
    EMU_DISPATCHER_HEADER *h = (EMU_DISPATCHER_HEADER *)object;
    if (timeout == NULL || timeout->QuadPart != 0) {
        emu_require_irql("KeWaitForSingleObject (nonzero timeout)", APC_LEVEL);
    } else {
        emu_require_irql("KeWaitForSingleObject", DISPATCH_LEVEL);
    }
    if (h->Type != OBJ_EVENT && h->Type != OBJ_THREAD) {
        emu_violation("KeWaitForSingleObject on %p, not a dispatcher object", object);
        return STATUS_INVALID_PARAMETER;
    }
    struct timespec ts;
    if (timeout != NULL) {
        deadline_from(timeout, &ts);
    }
    NTSTATUS status = STATUS_SUCCESS;
    pthread_mutex_lock(&dlock);
    while (!h->Signaled) {
        if (timeout != NULL && timeout->QuadPart == 0) {
            status = STATUS_TIMEOUT;
            break;
        }
        int rc = timeout ? pthread_cond_timedwait(&dcond, &dlock, &ts) : pthread_cond_wait(&dcond, &dlock);
        if (rc == ETIMEDOUT && !h->Signaled) {
            status = STATUS_TIMEOUT;
            break;
        }
    }
    if (status == STATUS_SUCCESS && h->Type == OBJ_EVENT && h->EventType == SynchronizationEvent) {
        h->Signaled = 0;
    }
    pthread_mutex_unlock(&dlock);
    return status;
}

NTSTATUS KeDelayExecutionThread(KPROCESSOR_MODE mode, BOOLEAN alertable, PLARGE_INTEGER interval)
{
    (void)mode;
    (void)alertable;
    emu_require_irql("KeDelayExecutionThread", APC_LEVEL);
    LONGLONG t = interval->QuadPart < 0 ? -interval->QuadPart : 0;
    struct timespec ts = {(time_t)(t / 10000000LL), (long)((t % 10000000LL) * 100)};
    nanosleep(&ts, NULL);
    return STATUS_SUCCESS;
}

/* ---- handles and thread objects ---- */
struct _EMU_OBJECT_TYPE { int kind; };
static struct _EMU_OBJECT_TYPE threadType = {OBJ_THREAD};
static POBJECT_TYPE threadTypePtr = &threadType;
POBJECT_TYPE *PsThreadType = &threadTypePtr;

struct _KTHREAD {
    EMU_DISPATCHER_HEADER Header;
    int refs;          /* handle + object references + the running thread */
    int running;
    PKSTART_ROUTINE fn;
    PVOID ctx;
    struct _KTHREAD *next;
};
static struct _KTHREAD *threads;
static int keyHandlesOpen;
static struct { int magic; int open; } keyObject;
#define KEY_MAGIC 0x4b4559

static void thread_unref_locked(struct _KTHREAD *t)
{
    if (--t->refs == 0) {
        struct _KTHREAD **pp = &threads;
        while (*pp != t) {
            pp = &(*pp)->next;
        }
        *pp = t->next;
        free(t);
    }
}

static int is_thread(HANDLE h)
{
    for (struct _KTHREAD *t = threads; t != NULL; t = t->next) {
        if ((HANDLE)t == h) {
            return 1;
        }
    }
    return 0;
}

static void thread_exit_common(struct _KTHREAD *t)
{
    if (tls.irql != PASSIVE_LEVEL || tls.held != 0) {
        emu_violation("system thread exits at IRQL %d holding %d spin lock(s)", tls.irql, tls.held);
    }
    pthread_mutex_lock(&dlock);
    t->Header.Signaled = 1;
    t->running = 0;
    pthread_cond_broadcast(&dcond);
    thread_unref_locked(t);
    pthread_mutex_unlock(&dlock);
}

static __thread struct _KTHREAD *currentThread;

static void *thread_main(void *arg)
{
    struct _KTHREAD *t = arg;
    tls.irql = PASSIVE_LEVEL;
    currentThread = t;
    t->fn(t->ctx);
    thread_exit_common(t);
    return NULL;
}

NTSTATUS PsCreateSystemThread(PHANDLE handle, ULONG access, POBJECT_ATTRIBUTES oa, HANDLE process, PCLIENT_ID cid,
                              PKSTART_ROUTINE fn, PVOID ctx)
{
    (void)access;
    (void)process;
    (void)cid;
    emu_require_irql("PsCreateSystemThread", PASSIVE_LEVEL);
    if (oa == NULL || !(oa->Attributes & OBJ_KERNEL_HANDLE)) {
        emu_violation("PsCreateSystemThread without OBJ_KERNEL_HANDLE: the handle would be in the caller's process");
    }
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    struct _KTHREAD *t = calloc(1, sizeof(*t));
    t->Header.Type = OBJ_THREAD;
    t->refs = 2;
    t->running = 1;
    t->fn = fn;
    t->ctx = ctx;
    pthread_mutex_lock(&dlock);
    t->next = threads;
    threads = t;
    pthread_mutex_unlock(&dlock);
    pthread_t tid;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&tid, &attr, thread_main, t) != 0) {
        pthread_attr_destroy(&attr);
        pthread_mutex_lock(&dlock);
        t->refs = 1;
        thread_unref_locked(t);
        pthread_mutex_unlock(&dlock);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pthread_attr_destroy(&attr);
    *handle = (HANDLE)t;
    return STATUS_SUCCESS;
}

NTSTATUS PsTerminateSystemThread(NTSTATUS status)
{
    (void)status;
    if (currentThread == NULL) {
        emu_violation("PsTerminateSystemThread from a thread PsCreateSystemThread did not create");
        return STATUS_INVALID_PARAMETER;
    }
    thread_exit_common(currentThread);
    pthread_exit(NULL);
}

NTSTATUS ObReferenceObjectByHandle(HANDLE handle, ACCESS_MASK access, POBJECT_TYPE type, KPROCESSOR_MODE mode,
                                   PVOID *object, PVOID info)
{
    (void)access;
    (void)mode;
    (void)info;
    emu_require_irql("ObReferenceObjectByHandle", APC_LEVEL);
    pthread_mutex_lock(&dlock);
    if (!is_thread(handle) || type != threadTypePtr) {
        pthread_mutex_unlock(&dlock);
        emu_violation("ObReferenceObjectByHandle(%p): not a thread handle", handle);
        return STATUS_INVALID_HANDLE;
    }
    ((struct _KTHREAD *)handle)->refs++;
    pthread_mutex_unlock(&dlock);
    *object = handle;
    return STATUS_SUCCESS;
}

void ObDereferenceObject(PVOID object)
{
    emu_require_irql("ObDereferenceObject", DISPATCH_LEVEL);
    pthread_mutex_lock(&dlock);
    if (!is_thread(object)) {
        pthread_mutex_unlock(&dlock);
        emu_violation("ObDereferenceObject(%p): no such object", object);
        return;
    }
    thread_unref_locked((struct _KTHREAD *)object);
    pthread_mutex_unlock(&dlock);
}

NTSTATUS ZwClose(HANDLE handle)
{
    emu_require_irql("ZwClose", PASSIVE_LEVEL);
    if (handle == (HANDLE)&keyObject && keyObject.open) {
        keyObject.open = 0;
        keyHandlesOpen--;
        return STATUS_SUCCESS;
    }
    pthread_mutex_lock(&dlock);
    if (!is_thread(handle)) {
        pthread_mutex_unlock(&dlock);
        emu_violation("ZwClose(%p): invalid handle", handle);
        return STATUS_INVALID_HANDLE;
    }
    thread_unref_locked((struct _KTHREAD *)handle);
    pthread_mutex_unlock(&dlock);
    return STATUS_SUCCESS;
}

/* ---- rundown protection: bit 0 = rundown active, the rest counts holders ---- */
void ExInitializeRundownProtection(PEX_RUNDOWN_REF r) { r->Count = 0; }

BOOLEAN ExAcquireRundownProtection(PEX_RUNDOWN_REF r)
{
    emu_require_irql("ExAcquireRundownProtection", DISPATCH_LEVEL);
    LONG64 v = __atomic_load_n(&r->Count, __ATOMIC_SEQ_CST);
    for (;;) {
        if (v & 1) {
            return FALSE;
        }
        if (__atomic_compare_exchange_n(&r->Count, &v, v + 2, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            return TRUE;
        }
    }
}

void ExReleaseRundownProtection(PEX_RUNDOWN_REF r)
{
    emu_require_irql("ExReleaseRundownProtection", DISPATCH_LEVEL);
    if (__atomic_sub_fetch(&r->Count, 2, __ATOMIC_SEQ_CST) < 0) {
        emu_violation("ExReleaseRundownProtection without a matching acquire");
    }
}

void ExWaitForRundownProtectionRelease(PEX_RUNDOWN_REF r)
{
    emu_require_irql("ExWaitForRundownProtectionRelease", APC_LEVEL);
    __atomic_or_fetch(&r->Count, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&r->Count, __ATOMIC_SEQ_CST) != 1) {
        usleep(1000);
    }
}

/* ---- time ---- */
void KeQuerySystemTime(PLARGE_INTEGER t)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    t->QuadPart = ((LONGLONG)ts.tv_sec + 11644473600LL) * 10000000LL + ts.tv_nsec / 100;
}

ULONGLONG KeQueryInterruptTime(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ULONGLONG)ts.tv_sec * 10000000ULL + (ULONGLONG)ts.tv_nsec / 100;
}

/* ---- registry: the service key's values ---- */
#define MAX_VALUES 16
static struct { char name[64]; ULONG value; } regValues[MAX_VALUES];
static int regCount;

void emu_registry_set_dword(const char *name, ULONG value)
{
    for (int i = 0; i < regCount; i++) {
        if (strcmp(regValues[i].name, name) == 0) {
            regValues[i].value = value;
            return;
        }
    }
    if (regCount < MAX_VALUES) {
        snprintf(regValues[regCount].name, sizeof(regValues[regCount].name), "%s", name);
        regValues[regCount++].value = value;
    }
}
void emu_registry_clear(void) { regCount = 0; }

static int ustr_eq_ascii(PCUNICODE_STRING u, const char *a)
{
    size_t n = strlen(a);
    if (u == NULL || u->Buffer == NULL || u->Length != n * 2) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (u->Buffer[i] != (WCHAR)(unsigned char)a[i]) {
            return 0;
        }
    }
    return 1;
}

static int ustr_eq(PCUNICODE_STRING a, PCUNICODE_STRING b)
{
    return a != NULL && b != NULL && a->Length == b->Length && memcmp(a->Buffer, b->Buffer, a->Length) == 0;
}

NTSTATUS ZwOpenKey(PHANDLE key, ACCESS_MASK access, POBJECT_ATTRIBUTES oa)
{
    (void)access;
    emu_require_irql("ZwOpenKey", PASSIVE_LEVEL);
    if (oa == NULL || !(oa->Attributes & OBJ_KERNEL_HANDLE)) {
        emu_violation("ZwOpenKey without OBJ_KERNEL_HANDLE");
    }
    if (oa == NULL || !ustr_eq(oa->ObjectName, &emu_registry_path)) {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    }
    if (keyObject.open) {
        emu_violation("ZwOpenKey: the emulation supports one open key handle");
    }
    keyObject.magic = KEY_MAGIC;
    keyObject.open = 1;
    keyHandlesOpen++;
    *key = (HANDLE)&keyObject;
    return STATUS_SUCCESS;
}

NTSTATUS ZwQueryValueKey(HANDLE key, PUNICODE_STRING name, KEY_VALUE_INFORMATION_CLASS cls, PVOID info, ULONG length,
                         PULONG resultLength)
{
    emu_require_irql("ZwQueryValueKey", PASSIVE_LEVEL);
    if (key != (HANDLE)&keyObject || !keyObject.open) {
        emu_violation("ZwQueryValueKey(%p): invalid key handle", key);
        return STATUS_INVALID_HANDLE;
    }
    if (cls != KeyValuePartialInformation) {
        return STATUS_NOT_IMPLEMENTED;
    }
    for (int i = 0; i < regCount; i++) {
        if (ustr_eq_ascii(name, regValues[i].name)) {
            ULONG need = (ULONG)offsetof(KEY_VALUE_PARTIAL_INFORMATION, Data) + sizeof(ULONG);
            *resultLength = need;
            if (length < need) {
                return STATUS_BUFFER_TOO_SMALL;
            }
            PKEY_VALUE_PARTIAL_INFORMATION p = info;
            p->TitleIndex = 0;
            p->Type = REG_DWORD;
            p->DataLength = sizeof(ULONG);
            memcpy(p->Data, &regValues[i].value, sizeof(ULONG));
            return STATUS_SUCCESS;
        }
    }
    return STATUS_OBJECT_NAME_NOT_FOUND;
}

/* ---- devices ---- */
#define DEVICE_MAGIC 0x44455643u
static int devicesLive;

NTSTATUS IoCreateDevice(PDRIVER_OBJECT driver, ULONG extSize, PUNICODE_STRING name, DEVICE_TYPE type, ULONG chars,
                        BOOLEAN exclusive, PDEVICE_OBJECT *device)
{
    (void)extSize;
    (void)name;
    (void)type;
    (void)chars;
    (void)exclusive;
    emu_require_irql("IoCreateDevice", PASSIVE_LEVEL);
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    PDEVICE_OBJECT d = calloc(1, sizeof(*d));
    d->EmuMagic = DEVICE_MAGIC;
    d->DriverObject = driver;
    driver->DeviceObject = d;
    devicesLive++;
    *device = d;
    return STATUS_SUCCESS;
}

void IoDeleteDevice(PDEVICE_OBJECT d)
{
    emu_require_irql("IoDeleteDevice", PASSIVE_LEVEL);
    if (d == NULL || d->EmuMagic != DEVICE_MAGIC) {
        emu_violation("IoDeleteDevice(%p): not a live device object", (void *)d);
        return;
    }
    d->EmuMagic = 0;
    if (d->DriverObject->DeviceObject == d) {
        d->DriverObject->DeviceObject = NULL;
    }
    devicesLive--;
    free(d);
}

ULONG DbgPrintEx(ULONG component, ULONG level, PCSTR format, ...)
{
    (void)component;
    const char *dbg = getenv("LATCH_EMU_DEBUG");
    if (dbg != NULL && dbg[0] == '1') {
        va_list ap;
        va_start(ap, format);
        fprintf(stderr, "[driver %u] ", (unsigned)level);
        vfprintf(stderr, format, ap);
        va_end(ap);
    }
    return 0;
}

/* ---- checks and reset ---- */
int emu_threads_running(void)
{
    int n = 0;
    int locked = pthread_mutex_trylock(&dlock) == 0;
    for (struct _KTHREAD *t = threads; t != NULL; t = t->next) {
        n += t->running != 0;
    }
    if (locked) {
        pthread_mutex_unlock(&dlock);
    }
    return n;
}

void emu_kernel_check_clean(void)
{
    pool_check_and_free("unload");
    pthread_mutex_lock(&dlock);
    for (struct _KTHREAD *t = threads; t != NULL; t = t->next) {
        if (t->running) {
            emu_violation("unload: a system thread is still running");
        } else {
            emu_violation("unload: a thread object was never dereferenced (%d references)", t->refs);
        }
    }
    pthread_mutex_unlock(&dlock);
    if (keyHandlesOpen != 0) {
        emu_violation("unload: %d registry key handle(s) left open", keyHandlesOpen);
    }
    if (devicesLive != 0) {
        emu_violation("unload: %d device object(s) not deleted", devicesLive);
    }
}

void emu_kernel_reset(void)
{
    pool_check_and_free("reset");
    keyHandlesOpen = 0;
    keyObject.open = 0;
    devicesLive = 0;
    tls.irql = PASSIVE_LEVEL;
    tls.held = 0;
}

int emu_spin_locks_held(void)
{
    return tls.held;
}
