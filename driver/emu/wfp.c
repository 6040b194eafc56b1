/*
 * WFP emulation: callout registration, a dynamic-session management engine with
 * transactions and filters, connections classified through the registered callouts,
 * pend/complete with simulated reauthorization, flow contexts, and the NBL clone /
 * inject path of ALE_AUTH_RECV_ACCEPT. The emulation never holds its own lock while
 * it calls into the driver.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "emu_harness.h"

#define G(n, a) const GUID n = {0x6c61796e, 0x0000, a, {0x80, 0, 0, 0, 0, 0, 0, (UCHAR)(a)}}
G(FWPM_LAYER_ALE_AUTH_CONNECT_V4, 1);
G(FWPM_LAYER_ALE_AUTH_CONNECT_V6, 2);
G(FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4, 3);
G(FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6, 4);
G(FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4, 5);
G(FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6, 6);
G(FWPM_LAYER_STREAM_V4, 7);
G(FWPM_LAYER_STREAM_V6, 8);
G(FWPM_LAYER_DATAGRAM_DATA_V4, 9);
G(FWPM_LAYER_DATAGRAM_DATA_V6, 10);

enum { K_CONNECT, K_ACCEPT, K_ESTABLISHED, K_STREAM, K_DATAGRAM };
static const struct layer_info {
    const GUID *key;
    UINT16 id;
    int v6;
    int kind;
} layers[] = {
    {&FWPM_LAYER_ALE_AUTH_CONNECT_V4, FWPS_LAYER_ALE_AUTH_CONNECT_V4, 0, K_CONNECT},
    {&FWPM_LAYER_ALE_AUTH_CONNECT_V6, FWPS_LAYER_ALE_AUTH_CONNECT_V6, 1, K_CONNECT},
    {&FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4, FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V4, 0, K_ACCEPT},
    {&FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6, FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V6, 1, K_ACCEPT},
    {&FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4, FWPS_LAYER_ALE_FLOW_ESTABLISHED_V4, 0, K_ESTABLISHED},
    {&FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6, FWPS_LAYER_ALE_FLOW_ESTABLISHED_V6, 1, K_ESTABLISHED},
    {&FWPM_LAYER_STREAM_V4, FWPS_LAYER_STREAM_V4, 0, K_STREAM},
    {&FWPM_LAYER_STREAM_V6, FWPS_LAYER_STREAM_V6, 1, K_STREAM},
    {&FWPM_LAYER_DATAGRAM_DATA_V4, FWPS_LAYER_DATAGRAM_DATA_V4, 0, K_DATAGRAM},
    {&FWPM_LAYER_DATAGRAM_DATA_V6, FWPS_LAYER_DATAGRAM_DATA_V6, 1, K_DATAGRAM},
};
#define NLAYERS ((int)(sizeof(layers) / sizeof(layers[0])))

static const struct layer_info *layer_by_key(const GUID *key)
{
    for (int i = 0; i < NLAYERS; i++) {
        if (IsEqualGUID(layers[i].key, key)) {
            return &layers[i];
        }
    }
    return NULL;
}
static const struct layer_info *layer_by_id(UINT16 id)
{
    for (int i = 0; i < NLAYERS; i++) {
        if (layers[i].id == id) {
            return &layers[i];
        }
    }
    return NULL;
}
static int layer_index(UINT16 id) { return (int)(layer_by_id(id) - layers); }

static pthread_mutex_t wlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wcond = PTHREAD_COND_INITIALIZER;

/* ---- callouts ---- */
#define MAX_CALLOUTS 64
static struct callout {
    int registered;
    FWPS_CALLOUT3 reg;
    int inflight;
} callouts[MAX_CALLOUTS]; /* id = index + 1 */
static FWPS_CALLOUT_CLASSIFY_FN3 overrideConnectV4;

void emu_override_classify(FWPS_CALLOUT_CLASSIFY_FN3 fn) { overrideConnectV4 = fn; }

int emu_callouts_registered(void)
{
    int n = 0;
    for (int i = 0; i < MAX_CALLOUTS; i++) {
        n += callouts[i].registered;
    }
    return n;
}

/* ---- connections, pends, flows, NBLs ---- */
typedef struct emu_nbl {
    NET_BUFFER_LIST nbl;
    NET_BUFFER nb;
    struct emu_nbl *parent;
    struct emu_conn *conn;
    int isClone;
    int refs;             /* FwpsReferenceNetBufferList0 */
    int inClassify;
    int clonesAlive;
    HANDLE injectedBy;
    int handedToComplete;
    int injected;
    struct emu_nbl *next;
} emu_nbl;
static emu_nbl *nbls;

enum { PEND_IN_CLASSIFY = 1, PEND_PENDED, PEND_COMPLETED };
typedef struct pend_record {
    UINT32 magic;
    int state;
    int early;             /* completed before classify returned */
    emu_nbl *earlyNbl;
    struct emu_conn *conn;
    UINT16 layerId;
    struct pend_record *next;
} pend_record;
#define PEND_MAGIC 0x50454e44u
static pend_record *pends;

typedef struct token {
    UINT32 magic;
    pend_record *pend;
    struct emu_conn *conn;
    UINT16 layerId;
    int reauth;             /* a reauthorization classify: cannot be pended */
    struct token *next;
} token;
#define TOKEN_MAGIC 0x544f4b4eu
static token *tokens;

typedef struct assoc {
    UINT64 flowId;
    UINT16 layerId;
    UINT32 calloutId;
    UINT64 context;
    int busy;
    int removePending;
    struct assoc *next;
} assoc;
static assoc *assocs;

struct emu_conn {
    UINT64 id;
    emu_conn_params p;
    FWP_BYTE_BLOB pathBlob;
    int state;
    int flowAlive;
    int flowEstablished;
    int reauths;
    emu_nbl *acceptClone;
    int datagramsSent;      /* outbound UDP/ICMP: first datagrams that left (sent or re-injected) */
    struct emu_conn *next;
};
static emu_conn *conns;
static UINT64 nextConnId = 1;

typedef struct injection {
    UINT32 magic;
    ADDRESS_FAMILY af;
    int inflight;           /* injections whose completion has not run yet */
    struct injection *next;
} injection;
#define INJ_MAGIC 0x494e4a48u
static injection *injections;

/* ---- management engine ---- */
typedef struct engine {
    UINT32 magic;
    int dynamic;
    int inTxn;
    unsigned changedLayers;
    struct engine *next;
} engine;
#define ENGINE_MAGIC 0x454e4731u
static engine *engines;

enum { OBJ_LIVE = 1, OBJ_TXN_ADDED, OBJ_TXN_DELETED };
typedef struct mobject {
    int kind;               /* 1 provider, 2 sublayer, 3 callout, 4 filter */
    int state;
    engine *owner;
    GUID key;
    /* filters */
    UINT64 filterId;
    UINT16 layerId;
    FWP_ACTION_TYPE action;
    GUID calloutKey;
    UINT32 flags;
    int weight;
    struct mobject *next;
} mobject;
static mobject *mobjects;
static UINT64 nextFilterId = 1000;

static int reauthThreadsActive; /* commit-time reauthorization threads running */

int emu_filters(void)
{
    int n = 0;
    pthread_mutex_lock(&wlock);
    for (mobject *o = mobjects; o; o = o->next) {
        n += o->kind == 4 && o->state != OBJ_TXN_ADDED;
    }
    pthread_mutex_unlock(&wlock);
    return n;
}

static engine *engine_get(HANDLE h, const char *routine)
{
    for (engine *e = engines; e; e = e->next) {
        if ((HANDLE)e == h) {
            return e;
        }
    }
    emu_violation("%s(%p): not an open engine handle", routine, h);
    return NULL;
}

NTSTATUS FwpmEngineOpen0(const wchar_t *server, UINT32 authn, void *auth, const FWPM_SESSION0 *session, HANDLE *h)
{
    (void)authn;
    (void)auth;
    emu_require_irql("FwpmEngineOpen0", PASSIVE_LEVEL);
    if (server != NULL) {
        emu_violation("FwpmEngineOpen0: kernel callers pass serverName NULL");
    }
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    engine *e = calloc(1, sizeof(*e));
    e->magic = ENGINE_MAGIC;
    e->dynamic = session != NULL && (session->flags & FWPM_SESSION_FLAG_DYNAMIC);
    pthread_mutex_lock(&wlock);
    e->next = engines;
    engines = e;
    pthread_mutex_unlock(&wlock);
    *h = (HANDLE)e;
    return STATUS_SUCCESS;
}

static void txn_finish(engine *e, int commit);

NTSTATUS FwpmEngineClose0(HANDLE h)
{
    emu_require_irql("FwpmEngineClose0", PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    engine *e = engine_get(h, "FwpmEngineClose0");
    if (e == NULL) {
        pthread_mutex_unlock(&wlock);
        return STATUS_INVALID_HANDLE;
    }
    pthread_mutex_unlock(&wlock);
    if (e->inTxn) {
        txn_finish(e, 0);
    }
    pthread_mutex_lock(&wlock);
    for (mobject **pp = &mobjects; *pp;) {
        mobject *o = *pp;
        if (o->owner == e && e->dynamic) {
            *pp = o->next;
            free(o);
        } else {
            if (o->owner == e) {
                o->owner = NULL; /* persistent object outlives the session */
            }
            pp = &o->next;
        }
    }
    for (engine **pp = &engines; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    if (!e->dynamic) {
        emu_violation("FwpmEngineClose0: the session was not dynamic; its objects persist after unload");
    }
    pthread_mutex_unlock(&wlock);
    free(e);
    return STATUS_SUCCESS;
}

NTSTATUS FwpmTransactionBegin0(HANDLE h, UINT32 flags)
{
    (void)flags;
    emu_require_irql("FwpmTransactionBegin0", PASSIVE_LEVEL);
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pthread_mutex_lock(&wlock);
    engine *e = engine_get(h, "FwpmTransactionBegin0");
    NTSTATUS st = STATUS_SUCCESS;
    if (e == NULL) {
        st = STATUS_INVALID_HANDLE;
    } else if (e->inTxn) {
        st = STATUS_FWP_TXN_IN_PROGRESS;
    } else {
        e->inTxn = 1;
        e->changedLayers = 0;
    }
    pthread_mutex_unlock(&wlock);
    return st;
}

static void *reauth_thread(void *arg);
static UINT16 auth_layer(struct emu_conn *c);
typedef struct reauth_batch {
    int count;
    struct emu_conn *list[4096];
} reauth_batch;

static void txn_finish(engine *e, int commit)
{
    pthread_mutex_lock(&wlock);
    for (mobject **pp = &mobjects; *pp;) {
        mobject *o = *pp;
        if (o->owner == e && o->state == OBJ_TXN_ADDED && !commit) {
            *pp = o->next;
            free(o);
            continue;
        }
        if (o->owner == e && o->state == OBJ_TXN_DELETED && commit) {
            *pp = o->next;
            free(o);
            continue;
        }
        if (o->owner == e) {
            o->state = OBJ_LIVE;
        }
        pp = &o->next;
    }
    unsigned changed = commit ? e->changedLayers : 0;
    e->inTxn = 0;
    e->changedLayers = 0;
    if (changed != 0) {
        /* WFP reauthorizes, asynchronously, the flows that exist when a layer's policy
           changes: the list is taken now, the classifies run later. */
        reauth_batch *b = calloc(1, sizeof(*b));
        for (emu_conn *c = conns; c && b->count < 4096; c = c->next) {
            if (c->state == EMU_CONN_PERMIT && c->flowAlive && !c->p.inbound &&
                (changed & (1u << layer_index(auth_layer(c))))) {
                b->list[b->count++] = c;
            }
        }
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        reauthThreadsActive++;
        if (pthread_create(&t, &attr, reauth_thread, b) != 0) {
            reauthThreadsActive--;
            free(b);
        }
        pthread_attr_destroy(&attr);
    }
    pthread_mutex_unlock(&wlock);
}

NTSTATUS FwpmTransactionCommit0(HANDLE h)
{
    emu_require_irql("FwpmTransactionCommit0", PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    engine *e = engine_get(h, "FwpmTransactionCommit0");
    int ok = e != NULL && e->inTxn;
    pthread_mutex_unlock(&wlock);
    if (!ok) {
        return e == NULL ? STATUS_INVALID_HANDLE : STATUS_FWP_NO_TXN_IN_PROGRESS;
    }
    txn_finish(e, 1);
    return STATUS_SUCCESS;
}

NTSTATUS FwpmTransactionAbort0(HANDLE h)
{
    emu_require_irql("FwpmTransactionAbort0", PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    engine *e = engine_get(h, "FwpmTransactionAbort0");
    int ok = e != NULL && e->inTxn;
    pthread_mutex_unlock(&wlock);
    if (!ok) {
        return e == NULL ? STATUS_INVALID_HANDLE : STATUS_FWP_NO_TXN_IN_PROGRESS;
    }
    txn_finish(e, 0);
    return STATUS_SUCCESS;
}

static mobject *find_object(int kind, const GUID *key)
{
    for (mobject *o = mobjects; o; o = o->next) {
        if (o->kind == kind && IsEqualGUID(&o->key, key) && o->state != OBJ_TXN_DELETED) {
            return o;
        }
    }
    return NULL;
}

static NTSTATUS add_object(HANDLE h, int kind, const GUID *key, const char *routine, mobject **out)
{
    emu_require_irql(routine, PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    engine *e = engine_get(h, routine);
    if (e == NULL) {
        pthread_mutex_unlock(&wlock);
        return STATUS_INVALID_HANDLE;
    }
    if (kind != 4 && find_object(kind, key) != NULL) {
        pthread_mutex_unlock(&wlock);
        return (NTSTATUS)0xC0220009; /* FWP_E_ALREADY_EXISTS */
    }
    mobject *o = calloc(1, sizeof(*o));
    o->kind = kind;
    o->key = *key;
    o->owner = e;
    o->state = e->inTxn ? OBJ_TXN_ADDED : OBJ_LIVE;
    o->next = mobjects;
    mobjects = o;
    *out = o;
    return STATUS_SUCCESS; /* returns with wlock held */
}

NTSTATUS FwpmProviderAdd0(HANDLE h, const FWPM_PROVIDER0 *p, PSECURITY_DESCRIPTOR sd)
{
    (void)sd;
    mobject *o;
    NTSTATUS st = add_object(h, 1, &p->providerKey, "FwpmProviderAdd0", &o);
    if (NT_SUCCESS(st)) {
        pthread_mutex_unlock(&wlock);
    }
    return st;
}

NTSTATUS FwpmSubLayerAdd0(HANDLE h, const FWPM_SUBLAYER0 *s, PSECURITY_DESCRIPTOR sd)
{
    (void)sd;
    mobject *o;
    pthread_mutex_lock(&wlock);
    int providerOk = s->providerKey == NULL || find_object(1, s->providerKey) != NULL;
    pthread_mutex_unlock(&wlock);
    if (!providerOk) {
        return (NTSTATUS)0xC0220005; /* FWP_E_PROVIDER_NOT_FOUND */
    }
    NTSTATUS st = add_object(h, 2, &s->subLayerKey, "FwpmSubLayerAdd0", &o);
    if (NT_SUCCESS(st)) {
        pthread_mutex_unlock(&wlock);
    }
    return st;
}

NTSTATUS FwpmCalloutAdd0(HANDLE h, const FWPM_CALLOUT0 *c, PSECURITY_DESCRIPTOR sd, UINT32 *id)
{
    (void)sd;
    (void)id;
    mobject *o;
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if (layer_by_key(&c->applicableLayer) == NULL) {
        return (NTSTATUS)0xC0220007; /* FWP_E_LAYER_NOT_FOUND */
    }
    NTSTATUS st = add_object(h, 3, &c->calloutKey, "FwpmCalloutAdd0", &o);
    if (NT_SUCCESS(st)) {
        o->layerId = layer_by_key(&c->applicableLayer)->id;
        pthread_mutex_unlock(&wlock);
    }
    return st;
}

NTSTATUS FwpmFilterAdd0(HANDLE h, const FWPM_FILTER0 *f, PSECURITY_DESCRIPTOR sd, UINT64 *id)
{
    (void)sd;
    mobject *o;
    const struct layer_info *li = layer_by_key(&f->layerKey);
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if (li == NULL) {
        return (NTSTATUS)0xC0220007;
    }
    pthread_mutex_lock(&wlock);
    int subOk = find_object(2, &f->subLayerKey) != NULL;
    mobject *co = (f->action.type & FWP_ACTION_FLAG_CALLOUT) ? find_object(3, &f->action.calloutKey) : NULL;
    pthread_mutex_unlock(&wlock);
    if (!subOk) {
        return (NTSTATUS)0xC0220006; /* FWP_E_SUBLAYER_NOT_FOUND */
    }
    if ((f->action.type & FWP_ACTION_FLAG_CALLOUT) && (co == NULL || co->layerId != li->id)) {
        return STATUS_FWP_CALLOUT_NOT_FOUND;
    }
    if (f->action.type != FWP_ACTION_PERMIT && f->action.type != FWP_ACTION_BLOCK &&
        f->action.type != FWP_ACTION_CALLOUT_TERMINATING && f->action.type != FWP_ACTION_CALLOUT_INSPECTION) {
        return STATUS_INVALID_PARAMETER;
    }
    NTSTATUS st = add_object(h, 4, &f->filterKey, "FwpmFilterAdd0", &o);
    if (!NT_SUCCESS(st)) {
        return st;
    }
    o->filterId = nextFilterId++;
    o->layerId = li->id;
    o->action = f->action.type;
    o->calloutKey = f->action.calloutKey;
    o->flags = f->flags;
    o->weight = f->weight.type == FWP_UINT8 ? f->weight.uint8 : 1000;
    o->owner->changedLayers |= 1u << layer_index(li->id);
    if (id != NULL) {
        *id = o->filterId;
    }
    pthread_mutex_unlock(&wlock);
    return STATUS_SUCCESS;
}

NTSTATUS FwpmFilterDeleteById0(HANDLE h, UINT64 id)
{
    emu_require_irql("FwpmFilterDeleteById0", PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    engine *e = engine_get(h, "FwpmFilterDeleteById0");
    NTSTATUS st = STATUS_FWP_NOT_FOUND;
    for (mobject **pp = &mobjects; e != NULL && *pp; pp = &(*pp)->next) {
        mobject *o = *pp;
        if (o->kind == 4 && o->filterId == id && o->state != OBJ_TXN_DELETED) {
            e->changedLayers |= 1u << layer_index(o->layerId);
            if (e->inTxn && o->state == OBJ_LIVE) {
                o->state = OBJ_TXN_DELETED;
            } else {
                *pp = o->next;
                free(o);
            }
            st = STATUS_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&wlock);
    return e == NULL ? STATUS_INVALID_HANDLE : st;
}

/* ---- callout registration ---- */
NTSTATUS FwpsCalloutRegister3(void *deviceObject, const FWPS_CALLOUT3 *c, UINT32 *id)
{
    emu_require_irql("FwpsCalloutRegister3", PASSIVE_LEVEL);
    PDEVICE_OBJECT d = deviceObject;
    if (d == NULL || d->EmuMagic != 0x44455643u) {
        emu_violation("FwpsCalloutRegister3: deviceObject %p is not a live device object", deviceObject);
        return STATUS_INVALID_PARAMETER;
    }
    if (c->classifyFn == NULL || c->notifyFn == NULL) {
        return STATUS_INVALID_PARAMETER;
    }
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    pthread_mutex_lock(&wlock);
    int free_slot = -1;
    for (int i = 0; i < MAX_CALLOUTS; i++) {
        if (callouts[i].registered && IsEqualGUID(&callouts[i].reg.calloutKey, &c->calloutKey)) {
            pthread_mutex_unlock(&wlock);
            return (NTSTATUS)0xC0220009;
        }
        if (!callouts[i].registered && free_slot < 0) {
            free_slot = i;
        }
    }
    callouts[free_slot].registered = 1;
    callouts[free_slot].reg = *c;
    callouts[free_slot].inflight = 0;
    *id = (UINT32)free_slot + 1;
    pthread_mutex_unlock(&wlock);
    return STATUS_SUCCESS;
}

NTSTATUS FwpsCalloutUnregisterById0(const UINT32 id)
{
    emu_require_irql("FwpsCalloutUnregisterById0", PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    if (id == 0 || id > MAX_CALLOUTS || !callouts[id - 1].registered) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsCalloutUnregisterById0(%u): no such callout", id);
        return STATUS_FWP_CALLOUT_NOT_FOUND;
    }
    int n = 0;
    for (assoc *a = assocs; a; a = a->next) {
        n += a->calloutId == id;
    }
    if (n > 0) {
        /* Real WFP: STATUS_DEVICE_BUSY and the callout stays registered (its classifyFn
           and flowDeleteFn can still be called) until a later call succeeds. */
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsCalloutUnregisterById0(%u): %d flow context(s) still associated with the callout "
                      "(the driver stays pinned: remove them with FwpsFlowRemoveContext0 first)", id, n);
        return STATUS_DEVICE_BUSY;
    }
    int filtersLeft = 0;
    for (mobject *o = mobjects; o; o = o->next) {
        filtersLeft += o->kind == 4 && o->state != OBJ_TXN_ADDED && (o->action & FWP_ACTION_FLAG_CALLOUT) &&
                       IsEqualGUID(&o->calloutKey, &callouts[id - 1].reg.calloutKey);
    }
    if (filtersLeft > 0) {
        /* Allowed by WFP, but until the filters go every matching connection is blocked
           (a callout filter without its callout blocks): remove the filters first
           (close the dynamic session) so an unload does not cut the machine off. */
        emu_violation("FwpsCalloutUnregisterById0(%u): %d filter(s) still reference the callout; they block "
                      "traffic until they are removed (close the engine first)", id, filtersLeft);
    }
    callouts[id - 1].registered = 0;
    while (callouts[id - 1].inflight > 0) {
        pthread_mutex_unlock(&wlock);
        usleep(1000);
        pthread_mutex_lock(&wlock);
    }
    pthread_mutex_unlock(&wlock);
    return STATUS_SUCCESS;
}

/* ---- pend / complete ---- */
static int conn_classify_auth(emu_conn *c, int reauth, emu_nbl *packet, pend_record **pendOut);
static void apply_result(emu_conn *c, int result, pend_record *pend);
static void post_complete(pend_record *r, emu_nbl *nbl);

static int reauthPendRefusals;
int emu_reauth_pend_refusals(void) { return reauthPendRefusals; }

NTSTATUS FwpsPendOperation0(HANDLE completionHandle, HANDLE *completionContext)
{
    if (emu_spin_locks_held() > 0) {
        emu_violation("%s called while holding %d spin lock(s): the driver's lock must not be held across calls "
                      "into WFP", "FwpsPendOperation0", emu_spin_locks_held());
    }
    emu_require_irql("FwpsPendOperation0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    token *t = tokens;
    while (t != NULL && (HANDLE)t != completionHandle) {
        t = t->next;
    }
    if (t == NULL) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsPendOperation0(%p): not the completion handle of a classify in progress", completionHandle);
        return STATUS_INVALID_PARAMETER;
    }
    if (t->pend != NULL) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsPendOperation0: this classify was already pended");
        return STATUS_INVALID_PARAMETER;
    }
    if (t->reauth) {
        /* Real WFP: a reauthorization classify cannot be pended. */
        pthread_mutex_unlock(&wlock);
        reauthPendRefusals++;
        return STATUS_FWP_CANNOT_PEND;
    }
    pend_record *r = calloc(1, sizeof(*r));
    r->magic = PEND_MAGIC;
    r->state = PEND_IN_CLASSIFY;
    r->conn = t->conn;
    r->layerId = t->layerId;
    r->next = pends;
    pends = r;
    t->pend = r;
    pthread_mutex_unlock(&wlock);
    *completionContext = (HANDLE)r;
    return STATUS_SUCCESS;
}

static emu_nbl *nbl_state(const NET_BUFFER_LIST *n)
{
    return n == NULL ? NULL : (emu_nbl *)n->EmuState;
}

void FwpsCompleteOperation0(HANDLE completionContext, PNET_BUFFER_LIST netBufferList)
{
    emu_require_irql("FwpsCompleteOperation0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    pend_record *r = pends;
    while (r != NULL && (HANDLE)r != completionContext) {
        r = r->next;
    }
    if (r == NULL) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsCompleteOperation0(%p): not a completion context from FwpsPendOperation0", completionContext);
        return;
    }
    if (r->state == PEND_COMPLETED) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsCompleteOperation0: pended operation of connection %llu completed twice",
                      (unsigned long long)r->conn->id);
        return;
    }
    emu_nbl *n = nbl_state(netBufferList);
    const struct layer_info *li = layer_by_id(r->layerId);
    if (n != NULL && (li->kind != K_ACCEPT || !n->isClone)) {
        emu_violation("FwpsCompleteOperation0: a net buffer list is only passed for ALE_AUTH_RECV_ACCEPT, and must "
                      "be a clone");
    }
    if (n != NULL) {
        n->handedToComplete = 1;
    }
    if (r->state == PEND_IN_CLASSIFY) {
        r->state = PEND_COMPLETED;
        r->early = 1;
        r->earlyNbl = n;
        pthread_mutex_unlock(&wlock);
        return; /* acted on when classify returns */
    }
    r->state = PEND_COMPLETED;
    pthread_mutex_unlock(&wlock);
    emu_sched_point();
    post_complete(r, n);
    emu_sched_point();
}

/* ---- classify machinery ---- */
static void fill_addr(FWPS_INCOMING_VALUE0 *v, const UINT8 *a, int v6, FWP_BYTE_ARRAY16 *store)
{
    if (v6) {
        memcpy(store->byteArray16, a, 16);
        v->value.type = FWP_BYTE_ARRAY16_TYPE;
        v->value.byteArray16 = store;
    } else {
        v->value.type = FWP_UINT32;
        v->value.uint32 = ((UINT32)a[0] << 24) | ((UINT32)a[1] << 16) | ((UINT32)a[2] << 8) | a[3];
    }
}

typedef struct filter_snap {
    UINT64 id;
    FWP_ACTION_TYPE action;
    GUID calloutKey;
    UINT32 flags;
    int weight;
} filter_snap;

static int snapshot_filters(UINT16 layerId, filter_snap *out, int max)
{
    int n = 0;
    for (mobject *o = mobjects; o && n < max; o = o->next) {
        if (o->kind == 4 && o->layerId == layerId && o->state != OBJ_TXN_ADDED) {
            out[n].id = o->filterId;
            out[n].action = o->action;
            out[n].calloutKey = o->calloutKey;
            out[n].flags = o->flags;
            out[n].weight = o->weight;
            n++;
        }
    }
    /* highest weight first */
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0 && out[j].weight > out[j - 1].weight; j--) {
            filter_snap t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    }
    return n;
}

static int vetoReauth, forceClearActionRight;
void emu_set_veto_reauth(int on) { vetoReauth = on; }
void emu_set_filters_clear_action_right(int on) { forceClearActionRight = on; }

/* Runs the filters of one layer for a connection. Returns EMU_CONN_PERMIT/BLOCK, or
   EMU_CONN_PENDING when a callout pended and absorbed (the record in *pendOut). */
static int classify_layer(emu_conn *c, UINT16 layerId, int reauth, void *layerData, UINT64 flowId,
                          pend_record **pendOut)
{
    const struct layer_info *li = layer_by_id(layerId);
    FWPS_INCOMING_VALUE0 values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_MAX];
    FWP_BYTE_ARRAY16 la, ra;
    FWP_BYTE_BLOB appId;
    FWPS_INCOMING_VALUES0 in;
    FWPS_INCOMING_METADATA_VALUES0 meta;
    filter_snap snaps[16];
    int result = -1;
    UINT32 rights = (reauth && vetoReauth) ? 0 : FWPS_RIGHT_ACTION_WRITE;

    memset(values, 0, sizeof(values));
    /* every layer uses the common field order of latch_emu.h */
    fill_addr(&values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_LOCAL_ADDRESS], c->p.local, li->v6, &la);
    fill_addr(&values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_REMOTE_ADDRESS], c->p.remote, li->v6, &ra);
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_LOCAL_PORT].value.type = FWP_UINT16;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_LOCAL_PORT].value.uint16 = c->p.localPort;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_REMOTE_PORT].value.type = FWP_UINT16;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_REMOTE_PORT].value.uint16 = c->p.remotePort;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_PROTOCOL].value.type = FWP_UINT8;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_IP_PROTOCOL].value.uint8 = c->p.protocol;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_FLAGS].value.type = FWP_UINT32;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_FLAGS].value.uint32 = reauth ? FWP_CONDITION_FLAG_IS_REAUTHORIZE : 0;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_INTERFACE_INDEX].value.type = FWP_UINT32;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_INTERFACE_INDEX].value.uint32 = 7;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_SUB_INTERFACE_INDEX].value.type = FWP_UINT32;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_SUB_INTERFACE_INDEX].value.uint32 = 1;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_DIRECTION].value.type = FWP_UINT32;
    values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_DIRECTION].value.uint32 = c->p.inbound ? FWP_DIRECTION_INBOUND
                                                                                 : FWP_DIRECTION_OUTBOUND;
    if (c->pathBlob.data != NULL) {
        appId = c->pathBlob;
        values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_ALE_APP_ID].value.type = FWP_BYTE_BLOB_TYPE;
        values[FWPS_FIELD_ALE_AUTH_CONNECT_V4_ALE_APP_ID].value.byteBlob = &appId;
    }
    in.layerId = layerId;
    in.valueCount = FWPS_FIELD_ALE_AUTH_CONNECT_V4_MAX;
    in.incomingValue = values;

    memset(&meta, 0, sizeof(meta));
    if (c->p.pid != 0) {
        meta.currentMetadataValues |= FWPS_METADATA_FIELD_PROCESS_ID;
        meta.processId = c->p.pid;
    }
    if (c->pathBlob.data != NULL && (li->kind == K_CONNECT || li->kind == K_ACCEPT || li->kind == K_ESTABLISHED)) {
        meta.currentMetadataValues |= FWPS_METADATA_FIELD_PROCESS_PATH;
        meta.processPath = &c->pathBlob;
    }
    if (li->kind == K_CONNECT || li->kind == K_ACCEPT) {
        meta.currentMetadataValues |= FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE | FWPS_METADATA_FIELD_COMPARTMENT_ID;
        meta.transportEndpointHandle = c->id * 16;
        meta.compartmentId = 1;
    }
    if (li->kind == K_CONNECT && li->v6) {
        meta.currentMetadataValues |= FWPS_METADATA_FIELD_REMOTE_SCOPE_ID;
        meta.remoteScopeId.Value = 0;
    }
    if (li->kind == K_ACCEPT) {
        meta.currentMetadataValues |= FWPS_METADATA_FIELD_IP_HEADER_SIZE | FWPS_METADATA_FIELD_TRANSPORT_HEADER_SIZE;
        meta.ipHeaderSize = li->v6 ? 40 : 20;
        meta.transportHeaderSize = c->p.protocol == 6 ? 20 : 8;
    }
    if (li->kind == K_ESTABLISHED || li->kind == K_STREAM || li->kind == K_DATAGRAM) {
        meta.currentMetadataValues |= FWPS_METADATA_FIELD_FLOW_HANDLE;
        meta.flowHandle = flowId;
    }

    pthread_mutex_lock(&wlock);
    int nf = snapshot_filters(layerId, snaps, 16);
    pthread_mutex_unlock(&wlock);

    for (int i = 0; i < nf && result < 0; i++) {
        if (!(snaps[i].action & FWP_ACTION_FLAG_CALLOUT)) {
            if (rights & FWPS_RIGHT_ACTION_WRITE) {
                result = snaps[i].action == FWP_ACTION_PERMIT ? EMU_CONN_PERMIT : EMU_CONN_BLOCK;
            }
            continue;
        }
        pthread_mutex_lock(&wlock);
        int ci = -1;
        for (int k = 0; k < MAX_CALLOUTS; k++) {
            if (callouts[k].registered && IsEqualGUID(&callouts[k].reg.calloutKey, &snaps[i].calloutKey)) {
                ci = k;
                break;
            }
        }
        UINT64 flowContext = 0;
        assoc *busy = NULL;
        if (ci >= 0 && (callouts[ci].reg.flags & FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW)) {
            for (assoc *a = assocs; a; a = a->next) {
                if (a->flowId == flowId && a->layerId == layerId && a->calloutId == (UINT32)ci + 1 &&
                    !a->removePending) {
                    busy = a;
                }
            }
            if (busy == NULL) {
                pthread_mutex_unlock(&wlock);
                continue; /* conditional on flow: no context, no call */
            }
            flowContext = busy->context;
            busy->busy++;
        }
        if (ci < 0) {
            pthread_mutex_unlock(&wlock);
            if (snaps[i].action == FWP_ACTION_CALLOUT_TERMINATING) {
                result = EMU_CONN_BLOCK; /* a filter whose callout is not registered blocks */
            }
            continue;
        }
        FWPS_CALLOUT_CLASSIFY_FN3 fn = callouts[ci].reg.classifyFn;
        if (layerId == FWPS_LAYER_ALE_AUTH_CONNECT_V4 && overrideConnectV4 != NULL) {
            fn = overrideConnectV4;
        }
        callouts[ci].inflight++;
        token *t = calloc(1, sizeof(*t));
        t->magic = TOKEN_MAGIC;
        t->conn = c;
        t->layerId = layerId;
        t->reauth = reauth;
        if (li->kind == K_CONNECT || li->kind == K_ACCEPT) {
            t->next = tokens;
            tokens = t;
        }
        pthread_mutex_unlock(&wlock);

        if (li->kind == K_CONNECT || li->kind == K_ACCEPT) {
            meta.currentMetadataValues |= FWPS_METADATA_FIELD_COMPLETION_HANDLE;
            meta.completionHandle = (HANDLE)t;
        }
        FWPS_FILTER3 filter;
        memset(&filter, 0, sizeof(filter));
        filter.filterId = snaps[i].id;
        filter.weight.type = FWP_UINT8;
        filter.weight.uint8 = (UINT8)(snaps[i].weight > 255 ? 255 : snaps[i].weight);
        filter.flags = ((snaps[i].flags & FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT) || forceClearActionRight)
                           ? FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT : 0;
        filter.action.type = snaps[i].action;
        filter.action.calloutId = (UINT32)ci + 1;
        FWPS_CLASSIFY_OUT0 out;
        memset(&out, 0, sizeof(out));
        out.actionType = FWP_ACTION_CONTINUE;
        out.rights = rights;
        out.filterId = snaps[i].id;

        KIRQL before = KeGetCurrentIrql();
        fn(&in, &meta, layerData, NULL, &filter, flowContext, &out);
        if (KeGetCurrentIrql() != before) {
            emu_violation("classifyFn on layer %u returned at IRQL %d, entered at %d", layerId, KeGetCurrentIrql(),
                          before);
            KIRQL dummy;
            if (KeGetCurrentIrql() < before) {
                KeRaiseIrql(before, &dummy);
            } else {
                KeLowerIrql(before);
            }
        }

        pthread_mutex_lock(&wlock);
        callouts[ci].inflight--;
        if (busy != NULL) {
            busy->busy--;
        }
        pend_record *pended = t->pend;
        if (li->kind == K_CONNECT || li->kind == K_ACCEPT) {
            for (token **pp = &tokens; *pp; pp = &(*pp)->next) {
                if (*pp == t) {
                    *pp = t->next;
                    break;
                }
            }
        }
        pthread_mutex_unlock(&wlock);
        free(t);

        if (pended != NULL) {
            if (out.actionType != FWP_ACTION_BLOCK || !(out.flags & FWPS_CLASSIFY_OUT_FLAG_ABSORB) ||
                (out.rights & FWPS_RIGHT_ACTION_WRITE)) {
                emu_violation("classifyFn pended the operation but returned action 0x%x flags 0x%x rights 0x%x; a "
                              "pended classify must return FWP_ACTION_BLOCK with FWPS_CLASSIFY_OUT_FLAG_ABSORB and "
                              "FWPS_RIGHT_ACTION_WRITE cleared", out.actionType, out.flags, out.rights);
            }
            *pendOut = pended;
            result = EMU_CONN_PENDING;
            break;
        }
        if ((filter.flags & FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT) &&
            (out.actionType == FWP_ACTION_PERMIT || out.actionType == FWP_ACTION_BLOCK) &&
            (out.rights & FWPS_RIGHT_ACTION_WRITE)) {
            emu_violation("classifyFn returned action 0x%x for a filter with FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT but "
                          "left FWPS_RIGHT_ACTION_WRITE set (a lower-priority filter could override it)",
                          out.actionType);
        }
        rights = out.rights;
        if (snaps[i].action == FWP_ACTION_CALLOUT_TERMINATING || snaps[i].action == FWP_ACTION_CALLOUT_INSPECTION) {
            if (out.actionType == FWP_ACTION_PERMIT || out.actionType == FWP_ACTION_BLOCK) {
                if (snaps[i].action == FWP_ACTION_CALLOUT_INSPECTION) {
                    emu_violation("an inspection callout returned a terminating action 0x%x", out.actionType);
                }
                result = out.actionType == FWP_ACTION_PERMIT ? EMU_CONN_PERMIT : EMU_CONN_BLOCK;
            }
        }
    }
    if (result == EMU_CONN_PENDING) {
        return result;
    }
    if (result < 0 && reauth && vetoReauth) {
        return EMU_CONN_BLOCK; /* the higher-priority filter that took the write right blocked */
    }
    return result < 0 ? EMU_CONN_PERMIT : result;
}

static UINT16 auth_layer(emu_conn *c)
{
    if (c->p.inbound) {
        return c->p.v6 ? FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V6 : FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V4;
    }
    return c->p.v6 ? FWPS_LAYER_ALE_AUTH_CONNECT_V6 : FWPS_LAYER_ALE_AUTH_CONNECT_V4;
}

/* Classify at the connection's ALE auth layer at DISPATCH_LEVEL or the caller's IRQL
   if it is already there. */
static int conn_classify_auth(emu_conn *c, int reauth, emu_nbl *packet, pend_record **pendOut)
{
    KIRQL old;
    int raised = KeGetCurrentIrql() < DISPATCH_LEVEL && reauth;
    if (raised) {
        KeRaiseIrql(DISPATCH_LEVEL, &old);
    }
    if (packet != NULL) {
        packet->inClassify = 1;
    }
    int r = classify_layer(c, auth_layer(c), reauth, packet ? &packet->nbl : NULL, 0, pendOut);
    if (packet != NULL) {
        packet->inClassify = 0;
    }
    if (raised) {
        KeLowerIrql(old);
    }
    return r;
}

/* ---- NBLs ---- */
static emu_nbl *nbl_new(emu_conn *c, ULONG size, ULONG offset)
{
    emu_nbl *n = calloc(1, sizeof(*n));
    n->nbl.FirstNetBuffer = &n->nb;
    n->nbl.EmuState = n;
    n->nb.EmuData = calloc(1, size ? size : 1);
    n->nb.EmuCapacity = size;
    n->nb.DataOffset = offset;
    n->nb.DataLength = size - offset;
    n->conn = c;
    pthread_mutex_lock(&wlock);
    n->next = nbls;
    nbls = n;
    pthread_mutex_unlock(&wlock);
    return n;
}

static void nbl_free_locked(emu_nbl *n)
{
    for (emu_nbl **pp = &nbls; *pp; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            break;
        }
    }
    free(n->nb.EmuData);
    free(n);
}

static int nbl_live_locked(emu_nbl *n)
{
    for (emu_nbl *x = nbls; x; x = x->next) {
        if (x == n) {
            return 1;
        }
    }
    return 0;
}

/* The original packet of a classify is released when the classify is over and no
   reference is held. */
static void nbl_release_if_unused(emu_nbl *n)
{
    pthread_mutex_lock(&wlock);
    if (nbl_live_locked(n) && n->refs == 0 && !n->inClassify) {
        if (n->clonesAlive > 0) {
            emu_violation("the original packet was released while %d clone(s) of it are alive", n->clonesAlive);
        } else {
            nbl_free_locked(n);
        }
    }
    pthread_mutex_unlock(&wlock);
}

void FwpsReferenceNetBufferList0(NET_BUFFER_LIST *nbl, BOOLEAN intendToModify)
{
    if (emu_spin_locks_held() > 0) {
        emu_violation("%s called while holding %d spin lock(s): the driver's lock must not be held across calls "
                      "into WFP", "FwpsReferenceNetBufferList0", emu_spin_locks_held());
    }
    (void)intendToModify;
    emu_require_irql("FwpsReferenceNetBufferList0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    emu_nbl *n = nbl_state(nbl);
    if (n == NULL || !nbl_live_locked(n)) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsReferenceNetBufferList0(%p): not a live packet", (void *)nbl);
        return;
    }
    n->refs++;
    pthread_mutex_unlock(&wlock);
}

void FwpsDereferenceNetBufferList0(NET_BUFFER_LIST *nbl, BOOLEAN dispatchLevel)
{
    (void)dispatchLevel;
    emu_require_irql("FwpsDereferenceNetBufferList0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    emu_nbl *n = nbl_state(nbl);
    if (n == NULL || !nbl_live_locked(n) || n->refs <= 0) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsDereferenceNetBufferList0(%p): no reference held", (void *)nbl);
        return;
    }
    n->refs--;
    pthread_mutex_unlock(&wlock);
    nbl_release_if_unused(n);
}

NDIS_STATUS NdisRetreatNetBufferDataStart(PNET_BUFFER nb, ULONG delta, ULONG backfill, NET_BUFFER_ALLOCATE_MDL_HANDLER h)
{
    (void)backfill;
    (void)h;
    emu_require_irql("NdisRetreatNetBufferDataStart", DISPATCH_LEVEL);
    if (delta > nb->DataOffset) {
        return -1; /* would need a new MDL: not emulated, reported as a failure */
    }
    nb->DataOffset -= delta;
    nb->DataLength += delta;
    return NDIS_STATUS_SUCCESS;
}

void NdisAdvanceNetBufferDataStart(PNET_BUFFER nb, ULONG delta, BOOLEAN freeMdl, NET_BUFFER_FREE_MDL_HANDLER h)
{
    (void)freeMdl;
    (void)h;
    emu_require_irql("NdisAdvanceNetBufferDataStart", DISPATCH_LEVEL);
    if (delta > nb->DataLength) {
        emu_violation("NdisAdvanceNetBufferDataStart by %u past the data (%u bytes)", delta, nb->DataLength);
        return;
    }
    nb->DataOffset += delta;
    nb->DataLength -= delta;
}

NTSTATUS FwpsAllocateCloneNetBufferList0(NET_BUFFER_LIST *original, NDIS_HANDLE p1, NDIS_HANDLE p2, ULONG flags,
                                         NET_BUFFER_LIST **out)
{
    (void)p1;
    (void)p2;
    (void)flags;
    emu_require_irql("FwpsAllocateCloneNetBufferList0", DISPATCH_LEVEL);
    *out = NULL;
    pthread_mutex_lock(&wlock);
    emu_nbl *o = nbl_state(original);
    int ok = o != NULL && nbl_live_locked(o) && (o->refs > 0 || o->inClassify);
    pthread_mutex_unlock(&wlock);
    if (!ok) {
        emu_violation("FwpsAllocateCloneNetBufferList0(%p): the original is not a live, referenced packet",
                      (void *)original);
        return STATUS_INVALID_PARAMETER;
    }
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    emu_nbl *c = nbl_new(o->conn, o->nb.EmuCapacity, 0);
    c->nb.DataOffset = o->nb.DataOffset;
    c->nb.DataLength = o->nb.DataLength;
    c->isClone = 1;
    c->parent = o;
    pthread_mutex_lock(&wlock);
    o->clonesAlive++;
    pthread_mutex_unlock(&wlock);
    *out = &c->nbl;
    return STATUS_SUCCESS;
}

void FwpsFreeCloneNetBufferList0(NET_BUFFER_LIST *nbl, ULONG flags)
{
    (void)flags;
    emu_require_irql("FwpsFreeCloneNetBufferList0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    emu_nbl *n = nbl_state(nbl);
    if (n == NULL || !nbl_live_locked(n) || !n->isClone) {
        pthread_mutex_unlock(&wlock);
        emu_violation("FwpsFreeCloneNetBufferList0(%p): not a live clone (double free?)", (void *)nbl);
        return;
    }
    emu_conn *c = n->conn;
    int dropped = n->handedToComplete && !n->injected && c->acceptClone == n;
    if (c->acceptClone == n) {
        c->acceptClone = NULL;
    }
    n->parent->clonesAlive--;
    nbl_free_locked(n);
    pthread_mutex_unlock(&wlock);
    if (dropped) {
        apply_result(c, EMU_CONN_BLOCK, NULL);
    }
}

NTSTATUS FwpsInjectionHandleCreate0(ADDRESS_FAMILY af, UINT32 flags, HANDLE *h)
{
    emu_require_irql("FwpsInjectionHandleCreate0", PASSIVE_LEVEL);
    if (!(flags & FWPS_INJECTION_TYPE_TRANSPORT)) {
        return STATUS_INVALID_PARAMETER;
    }
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    injection *i = calloc(1, sizeof(*i));
    i->magic = INJ_MAGIC;
    i->af = af;
    pthread_mutex_lock(&wlock);
    i->next = injections;
    injections = i;
    pthread_mutex_unlock(&wlock);
    *h = (HANDLE)i;
    return STATUS_SUCCESS;
}

static injection *injection_get_locked(HANDLE h)
{
    for (injection *i = injections; i; i = i->next) {
        if ((HANDLE)i == h) {
            return i;
        }
    }
    return NULL;
}

NTSTATUS FwpsInjectionHandleDestroy0(HANDLE h)
{
    emu_require_irql("FwpsInjectionHandleDestroy0", PASSIVE_LEVEL);
    pthread_mutex_lock(&wlock);
    for (injection **pp = &injections; *pp; pp = &(*pp)->next) {
        if ((HANDLE)*pp == h) {
            injection *i = *pp;
            int inflight = i->inflight;
            *pp = i->next;
            pthread_mutex_unlock(&wlock);
            free(i);
            if (inflight > 0) {
                emu_violation("FwpsInjectionHandleDestroy0: %d injection(s) on this handle still in flight; their "
                              "completion would run in an unloaded driver (0xCE)", inflight);
            }
            return STATUS_SUCCESS;
        }
    }
    pthread_mutex_unlock(&wlock);
    emu_violation("FwpsInjectionHandleDestroy0(%p): not a live injection handle", h);
    return STATUS_INVALID_HANDLE;
}

FWPS_PACKET_INJECTION_STATE FwpsQueryPacketInjectionState0(HANDLE h, const NET_BUFFER_LIST *nbl, HANDLE *ctx)
{
    emu_require_irql("FwpsQueryPacketInjectionState0", DISPATCH_LEVEL);
    if (ctx != NULL) {
        *ctx = NULL;
    }
    pthread_mutex_lock(&wlock);
    injection *i = injection_get_locked(h);
    emu_nbl *n = nbl_state(nbl);
    FWPS_PACKET_INJECTION_STATE s = FWPS_PACKET_NOT_INJECTED;
    if (i == NULL) {
        emu_violation("FwpsQueryPacketInjectionState0(%p): not a live injection handle", h);
    } else if (n != NULL && n->injectedBy != NULL) {
        s = n->injectedBy == h ? FWPS_PACKET_INJECTED_BY_SELF : FWPS_PACKET_INJECTED_BY_OTHER;
    }
    pthread_mutex_unlock(&wlock);
    return s;
}

/* Injection completions. tcpip calls the completion function when it is done with the
   injected clone: sometimes before the injection call returns, usually later, on
   another CPU. The emulation alternates (LATCH_EMU_INJECT=0 inline, 1 deferred, 2
   alternate, the default) and delivers deferred completions from a thread of its own
   after injectDelayMs, so a driver that releases the original packet before its
   clone's completion, or unloads before every completion ran, is caught. */
typedef struct inj_item {
    FWPS_INJECT_COMPLETE0 fn;
    HANDLE context;
    NET_BUFFER_LIST *nbl;
    HANDLE handle;
    struct timespec due;
    struct inj_item *next;
} inj_item;
static inj_item *iqHead, *iqTail;
static int iqBusy, iqStarted, iqStop, iqPending;
static pthread_t iqThread;
static pthread_cond_t iqCond = PTHREAD_COND_INITIALIZER;
static int injectMode = 2;
static unsigned injectCounter;
static int injectDelayMs = 2;

void emu_set_inject_mode(int mode) { injectMode = mode; }
void emu_set_inject_delay_ms(int ms) { injectDelayMs = ms; }
int emu_injections_in_flight(void)
{
    pthread_mutex_lock(&wlock);
    int n = iqPending;
    pthread_mutex_unlock(&wlock);
    return n;
}

static void inject_done_locked(HANDLE h)
{
    injection *i = injection_get_locked(h);
    if (i != NULL) {
        i->inflight--;
    }
}

static void deliver_completion(FWPS_INJECT_COMPLETE0 fn, HANDLE context, NET_BUFFER_LIST *nbl)
{
    KIRQL old;
    int raised = KeGetCurrentIrql() < DISPATCH_LEVEL;
    emu_sched_point();
    if (raised) {
        KeRaiseIrql(DISPATCH_LEVEL, &old);
    }
    fn(context, nbl, TRUE);
    if (raised) {
        KeLowerIrql(old);
    }
    emu_sched_point();
}

static void *inject_queue_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wlock);
    for (;;) {
        while (iqHead == NULL && !iqStop) {
            pthread_cond_wait(&iqCond, &wlock);
        }
        if (iqHead == NULL) {
            break;
        }
        inj_item *it = iqHead;
        /* in order of submission, each no earlier than its due time */
        while (!iqStop) {
            if (pthread_cond_timedwait(&iqCond, &wlock, &it->due) == ETIMEDOUT) {
                break;
            }
        }
        if (iqStop) {
            break;
        }
        iqHead = it->next;
        if (iqHead == NULL) {
            iqTail = NULL;
        }
        iqBusy = 1;
        /* Counted done as the call starts: what the driver does once its completion
           function signalled (unload, destroying the handle) is not in flight. */
        inject_done_locked(it->handle);
        iqPending--;
        pthread_mutex_unlock(&wlock);
        deliver_completion(it->fn, it->context, it->nbl);
        pthread_mutex_lock(&wlock);
        free(it);
        iqBusy = 0;
        pthread_cond_broadcast(&iqCond);
    }
    pthread_mutex_unlock(&wlock);
    return NULL;
}

/* Called with wlock held; the injection was accepted: its completion runs inline
   (returns 1, the caller calls it after dropping wlock) or later (returns 0). */
static int inject_schedule_locked(injection *i, FWPS_INJECT_COMPLETE0 fn, HANDLE context, NET_BUFFER_LIST *nbl)
{
    i->inflight++;
    int deferred = injectMode == 1 || (injectMode == 2 && (injectCounter++ & 1));
    if (!deferred) {
        return 1;
    }
    inj_item *it = calloc(1, sizeof(*it));
    it->fn = fn;
    it->context = context;
    it->nbl = nbl;
    it->handle = (HANDLE)i;
    clock_gettime(CLOCK_REALTIME, &it->due);
    it->due.tv_nsec += (long)injectDelayMs * 1000000L;
    it->due.tv_sec += it->due.tv_nsec / 1000000000L;
    it->due.tv_nsec %= 1000000000L;
    if (iqTail != NULL) {
        iqTail->next = it;
    } else {
        iqHead = it;
    }
    iqTail = it;
    iqPending++;
    if (!iqStarted) {
        iqStarted = 1;
        pthread_create(&iqThread, NULL, inject_queue_main, NULL);
    }
    pthread_cond_broadcast(&iqCond);
    return 0;
}

static void inject_inline_done(HANDLE h, FWPS_INJECT_COMPLETE0 fn, HANDLE context, NET_BUFFER_LIST *nbl)
{
    pthread_mutex_lock(&wlock);
    inject_done_locked(h);
    pthread_mutex_unlock(&wlock);
    deliver_completion(fn, context, nbl);
}

NTSTATUS FwpsInjectTransportReceiveAsync0(HANDLE h, HANDLE injectionContext, PVOID reserved, UINT32 flags,
                                          ADDRESS_FAMILY af, COMPARTMENT_ID compartment, IF_INDEX ifIndex,
                                          IF_INDEX subIfIndex, NET_BUFFER_LIST *nbl, FWPS_INJECT_COMPLETE0 fn,
                                          HANDLE completionContext)
{
    (void)injectionContext;
    (void)reserved;
    (void)flags;
    (void)compartment;
    (void)ifIndex;
    (void)subIfIndex;
    emu_require_irql("FwpsInjectTransportReceiveAsync0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    injection *i = injection_get_locked(h);
    emu_nbl *n = nbl_state(nbl);
    int ok = i != NULL && n != NULL && nbl_live_locked(n) && n->isClone && fn != NULL;
    if (ok && i->af != af) {
        emu_violation("FwpsInjectTransportReceiveAsync0: address family %u on a handle created for %u", af, i->af);
    }
    if (ok && n->nb.DataOffset != 0) {
        emu_violation("FwpsInjectTransportReceiveAsync0: an inbound packet must be injected from its IP header "
                      "(offset %u; retreat by ipHeaderSize + transportHeaderSize before cloning)", n->nb.DataOffset);
    }
    if (ok) {
        n->injectedBy = h;
        n->injected = 1;
    }
    pthread_mutex_unlock(&wlock);
    if (!ok) {
        emu_violation("FwpsInjectTransportReceiveAsync0: bad injection handle, packet or completion function");
        return STATUS_INVALID_PARAMETER;
    }
    /* The injected packet goes through ALE_AUTH_RECV_ACCEPT again. */
    emu_conn *c = n->conn;
    pend_record *pend = NULL;
    KIRQL old;
    int raised = KeGetCurrentIrql() < DISPATCH_LEVEL;
    if (raised) {
        KeRaiseIrql(DISPATCH_LEVEL, &old);
    }
    n->inClassify = 1;
    int r = classify_layer(c, auth_layer(c), 0, &n->nbl, 0, &pend);
    n->inClassify = 0;
    pthread_mutex_lock(&wlock);
    if (c->acceptClone == n) {
        c->acceptClone = NULL;
    }
    pthread_mutex_unlock(&wlock);
    if (r == EMU_CONN_PENDING) {
        emu_violation("the driver pended its own injected packet");
    }
    apply_result(c, r, pend);
    if (raised) {
        KeLowerIrql(old);
    }
    pthread_mutex_lock(&wlock);
    int inlineDone = inject_schedule_locked(i, fn, completionContext, nbl);
    pthread_mutex_unlock(&wlock);
    if (inlineDone) {
        inject_inline_done(h, fn, completionContext, nbl);
    }
    return STATUS_SUCCESS;
}

NTSTATUS FwpsInjectTransportSendAsync1(HANDLE h, HANDLE injectionContext, UINT64 endpointHandle, UINT32 flags,
                                       FWPS_TRANSPORT_SEND_PARAMS1 *sendArgs, ADDRESS_FAMILY af,
                                       COMPARTMENT_ID compartment, NET_BUFFER_LIST *nbl, FWPS_INJECT_COMPLETE0 fn,
                                       HANDLE completionContext)
{
    (void)injectionContext;
    (void)flags;
    (void)compartment;
    emu_require_irql("FwpsInjectTransportSendAsync1", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    injection *i = injection_get_locked(h);
    emu_nbl *n = nbl_state(nbl);
    int ok = i != NULL && n != NULL && nbl_live_locked(n) && n->isClone && fn != NULL && sendArgs != NULL &&
             sendArgs->remoteAddress != NULL;
    emu_conn *c = ok ? n->conn : NULL;
    if (ok && i->af != af) {
        emu_violation("FwpsInjectTransportSendAsync1: address family %u on a handle created for %u", af, i->af);
    }
    if (ok && (c->p.inbound || endpointHandle != c->id * 16 ||
               memcmp(sendArgs->remoteAddress, c->p.remote, c->p.v6 ? 16 : 4) != 0)) {
        emu_violation("FwpsInjectTransportSendAsync1: endpoint handle or remote address is not the connection's");
    }
    if (ok) {
        n->injectedBy = h;
        n->injected = 1;
        c->datagramsSent++;
    }
    pthread_mutex_unlock(&wlock);
    if (!ok) {
        emu_violation("FwpsInjectTransportSendAsync1: bad injection handle, packet, send parameters or completion "
                      "function");
        return STATUS_INVALID_PARAMETER;
    }
    pthread_mutex_lock(&wlock);
    int inlineDone = inject_schedule_locked(i, fn, completionContext, nbl);
    pthread_mutex_unlock(&wlock);
    if (inlineDone) {
        inject_inline_done(h, fn, completionContext, nbl);
    }
    return STATUS_SUCCESS;
}

int emu_packet_references(void)
{
    int refs = 0;
    pthread_mutex_lock(&wlock);
    for (emu_nbl *x = nbls; x; x = x->next) {
        refs += x->isClone ? 0 : x->refs;
    }
    pthread_mutex_unlock(&wlock);
    return refs;
}

int emu_conn_datagrams_sent(emu_conn *c)
{
    pthread_mutex_lock(&wlock);
    int n = c->datagramsSent;
    pthread_mutex_unlock(&wlock);
    return n;
}

/* ---- flows ---- */
static emu_conn *conn_by_flow_locked(UINT64 flowId)
{
    for (emu_conn *c = conns; c; c = c->next) {
        if (c->id == flowId) {
            return c;
        }
    }
    return NULL;
}

static int deleteOnAssociate;
void emu_set_flow_delete_on_associate(int on) { deleteOnAssociate = on; }
static void call_flow_delete(assoc *a);

NTSTATUS FwpsFlowAssociateContext0(UINT64 flowId, UINT16 layerId, UINT32 calloutId, UINT64 context)
{
    emu_require_irql("FwpsFlowAssociateContext0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    emu_conn *c = conn_by_flow_locked(flowId);
    NTSTATUS st = STATUS_SUCCESS;
    if (c == NULL || !c->flowAlive) {
        st = STATUS_INVALID_PARAMETER;
    } else if (calloutId == 0 || calloutId > MAX_CALLOUTS || !callouts[calloutId - 1].registered) {
        st = STATUS_FWP_CALLOUT_NOT_FOUND;
    } else if (callouts[calloutId - 1].reg.flowDeleteFn == NULL) {
        emu_violation("FwpsFlowAssociateContext0: callout %u has no flowDeleteFn; the context could never be freed",
                      calloutId);
        st = STATUS_INVALID_PARAMETER;
    } else if (layer_by_id(layerId) == NULL) {
        st = STATUS_INVALID_PARAMETER;
    } else if (context == 0) {
        /* WFP passes the context back to flowDeleteFn and classifyFn as flowContext, where
           0 means "none": a zero context can never be told apart or freed. */
        emu_violation("FwpsFlowAssociateContext0: a zero context (flow %llu, layer %u)", (unsigned long long)flowId,
                      layerId);
        st = STATUS_INVALID_PARAMETER;
    } else if (layer_by_id(layerId)->v6 != c->p.v6) {
        emu_violation("FwpsFlowAssociateContext0: layer %u is for IPv%d, flow %llu is IPv%d", layerId,
                      layer_by_id(layerId)->v6 ? 6 : 4, (unsigned long long)flowId, c->p.v6 ? 6 : 4);
        st = STATUS_INVALID_PARAMETER;
    } else if (find_object(3, &callouts[calloutId - 1].reg.calloutKey) != NULL &&
               find_object(3, &callouts[calloutId - 1].reg.calloutKey)->layerId != layerId) {
        emu_violation("FwpsFlowAssociateContext0: callout %u was added for layer %u, not layer %u: its classifyFn "
                      "would never see the context", calloutId,
                      find_object(3, &callouts[calloutId - 1].reg.calloutKey)->layerId, layerId);
        st = STATUS_INVALID_PARAMETER;
    } else {
        for (assoc *a = assocs; a; a = a->next) {
            if (a->flowId == flowId && a->layerId == layerId && a->calloutId == calloutId) {
                st = STATUS_OBJECT_NAME_EXISTS;
            }
        }
    }
    if (st == STATUS_SUCCESS) {
        assoc *a = calloc(1, sizeof(*a));
        a->flowId = flowId;
        a->layerId = layerId;
        a->calloutId = calloutId;
        a->context = context;
        a->next = assocs;
        assocs = a;
        if (deleteOnAssociate) {
            /* The flow ends on another CPU the moment the context is WFP's: its
               flowDeleteFn runs before FwpsFlowAssociateContext0 has returned. */
            assocs = a->next;
            pthread_mutex_unlock(&wlock);
            call_flow_delete(a);
            return st;
        }
    }
    pthread_mutex_unlock(&wlock);
    return st;
}

static void call_flow_delete(assoc *a)
{
    FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0 fn = NULL;
    pthread_mutex_lock(&wlock);
    if (a->calloutId >= 1 && a->calloutId <= MAX_CALLOUTS) {
        fn = callouts[a->calloutId - 1].reg.flowDeleteFn;
    }
    pthread_mutex_unlock(&wlock);
    if (fn != NULL) {
        KIRQL old;
        KeRaiseIrql(DISPATCH_LEVEL, &old);
        fn(a->layerId, a->calloutId, a->context);
        KeLowerIrql(old);
    }
    free(a);
}

static int flowDeleteDelayMs;
void emu_set_flow_delete_delay_ms(int ms) { flowDeleteDelayMs = ms; }

static void flow_delete(UINT64 flowId, int onlyPending);

typedef struct late_delete {
    UINT64 flowId;
    int ms;
} late_delete;

static void *late_delete_thread(void *arg)
{
    late_delete *l = arg;
    usleep((useconds_t)l->ms * 1000);
    flow_delete(l->flowId, 1);
    free(l);
    return NULL;
}

NTSTATUS FwpsFlowRemoveContext0(UINT64 flowId, UINT16 layerId, UINT32 calloutId)
{
    emu_require_irql("FwpsFlowRemoveContext0", DISPATCH_LEVEL);
    pthread_mutex_lock(&wlock);
    for (assoc **pp = &assocs; *pp; pp = &(*pp)->next) {
        assoc *a = *pp;
        if (a->flowId == flowId && a->layerId == layerId && a->calloutId == calloutId && !a->removePending) {
            if (a->busy > 0) {
                a->removePending = 1;
                pthread_mutex_unlock(&wlock);
                return STATUS_PENDING;
            }
            if (flowDeleteDelayMs > 0) {
                /* As if a classify with the context were running on another CPU:
                   flowDeleteFn comes later, from another thread. */
                late_delete *l = malloc(sizeof(*l));
                pthread_t t;
                a->removePending = 1;
                pthread_mutex_unlock(&wlock);
                l->flowId = flowId;
                l->ms = flowDeleteDelayMs;
                if (pthread_create(&t, NULL, late_delete_thread, l) == 0) {
                    pthread_detach(t);
                } else {
                    free(l);
                    flow_delete(flowId, 1);
                }
                return STATUS_PENDING;
            }
            *pp = a->next;
            pthread_mutex_unlock(&wlock);
            call_flow_delete(a);
            return STATUS_SUCCESS;
        }
    }
    pthread_mutex_unlock(&wlock);
    return STATUS_UNSUCCESSFUL;
}

/* Calls flowDeleteFn for the flow's contexts (all, or those pending removal). */
static void flow_delete(UINT64 flowId, int onlyPending)
{
    for (;;) {
        assoc *found = NULL;
        pthread_mutex_lock(&wlock);
        for (assoc **pp = &assocs; *pp; pp = &(*pp)->next) {
            assoc *a = *pp;
            if (a->flowId == flowId && a->busy == 0 && (!onlyPending || a->removePending)) {
                *pp = a->next;
                found = a;
                break;
            }
        }
        pthread_mutex_unlock(&wlock);
        if (found == NULL) {
            return;
        }
        call_flow_delete(found);
    }
}

int emu_flow_contexts(void)
{
    int n = 0;
    pthread_mutex_lock(&wlock);
    for (assoc *a = assocs; a; a = a->next) {
        n++;
    }
    pthread_mutex_unlock(&wlock);
    return n;
}

/* ---- connection lifecycle ---- */
static void establish(emu_conn *c)
{
    pthread_mutex_lock(&wlock);
    int already = c->flowEstablished;
    c->flowEstablished = 1;
    c->flowAlive = 1;
    pthread_mutex_unlock(&wlock);
    if (already) {
        return;
    }
    KIRQL old;
    int raised = KeGetCurrentIrql() < DISPATCH_LEVEL;
    if (raised) {
        KeRaiseIrql(DISPATCH_LEVEL, &old);
    }
    pend_record *unused = NULL;
    classify_layer(c, c->p.v6 ? FWPS_LAYER_ALE_FLOW_ESTABLISHED_V6 : FWPS_LAYER_ALE_FLOW_ESTABLISHED_V4, 0, NULL,
                   c->id, &unused);
    if (raised) {
        KeLowerIrql(old);
    }
}

static void set_state(emu_conn *c, int s)
{
    pthread_mutex_lock(&wlock);
    c->state = s;
    pthread_cond_broadcast(&wcond);
    pthread_mutex_unlock(&wlock);
}

static void apply_result(emu_conn *c, int result, pend_record *pend)
{
    if (result == EMU_CONN_PENDING) {
        pthread_mutex_lock(&wlock);
        int early = pend->early;
        if (!early) {
            pend->state = PEND_PENDED;
        }
        /* Held until its reauthorization decides it. (A RECV_ACCEPT completed early may
           already be decided by its re-injection: leave that alone.) */
        if (!early || layer_by_id(pend->layerId)->kind == K_CONNECT) {
            c->state = EMU_CONN_PENDING;
            pthread_cond_broadcast(&wcond);
        }
        emu_nbl *n = pend->earlyNbl;
        pthread_mutex_unlock(&wlock);
        if (early) {
            post_complete(pend, n);
        }
        return;
    }
    if (result == EMU_CONN_PERMIT) {
        establish(c);
        set_state(c, EMU_CONN_PERMIT);
        return;
    }
    pthread_mutex_lock(&wlock);
    int alive = c->flowAlive;
    c->flowAlive = 0;
    pthread_mutex_unlock(&wlock);
    if (alive) {
        flow_delete(c->id, 0); /* the connection is torn down */
    }
    set_state(c, EMU_CONN_BLOCK);
}

/* The reauthorization that follows completing an ALE_AUTH_CONNECT operation. WFP runs
   it asynchronously; the emulation alternates between running it inline, inside
   FwpsCompleteOperation0 (strictest: a driver completing under its own lock deadlocks
   and is reported), and later on a thread of its own (the realistic order: the
   completing code has moved on). */
static int reauthMode = 2; /* 0 inline, 1 deferred, 2 alternate */
static unsigned reauthCounter;
typedef struct reauth_item {
    emu_conn *conn;
    struct timespec due;    /* completion time + reauthDelayMs */
    struct reauth_item *next;
} reauth_item;
static reauth_item *rqHead, *rqTail;
static int rqBusy, rqStarted, rqStop;
static pthread_t rqThread;
static pthread_cond_t rqCond = PTHREAD_COND_INITIALIZER;

static int reauthDelayMs;
static int reauthHeld; /* deferred reauthorizations wait until released */
void emu_set_reauth_mode(int mode) { reauthMode = mode; }
void emu_set_reauth_delay_ms(int ms) { reauthDelayMs = ms; }
void emu_set_reauth_hold(int on)
{
    pthread_mutex_lock(&wlock);
    reauthHeld = on;
    pthread_cond_broadcast(&rqCond);
    pthread_mutex_unlock(&wlock);
}

static void reauthorize_now(emu_conn *c)
{
    pend_record *again = NULL;
    pthread_mutex_lock(&wlock);
    c->reauths++;
    pthread_mutex_unlock(&wlock);
    int res = conn_classify_auth(c, 1, NULL, &again);
    apply_result(c, res, again);
}

static void *reauth_queue_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wlock);
    for (;;) {
        while ((rqHead == NULL || reauthHeld) && !rqStop) {
            pthread_cond_wait(&rqCond, &wlock);
        }
        if (rqHead == NULL) {
            break;
        }
        reauth_item *it = rqHead;
        while (!rqStop && pthread_cond_timedwait(&rqCond, &wlock, &it->due) != ETIMEDOUT) {
        }
        rqHead = it->next;
        if (rqHead == NULL) {
            rqTail = NULL;
        }
        rqBusy = 1;
        pthread_mutex_unlock(&wlock);
        emu_sched_point();
        reauthorize_now(it->conn);
        free(it);
        pthread_mutex_lock(&wlock);
        rqBusy = 0;
        pthread_cond_broadcast(&rqCond);
    }
    pthread_mutex_unlock(&wlock);
    return NULL;
}

static void post_complete(pend_record *r, emu_nbl *nbl)
{
    emu_conn *c = r->conn;
    const struct layer_info *li = layer_by_id(r->layerId);
    if (li->kind == K_CONNECT) {
        /* ALE_AUTH_CONNECT: completing triggers the reauthorization classify. */
        pthread_mutex_lock(&wlock);
        int deferred = reauthMode == 1 || (reauthMode == 2 && (reauthCounter++ & 1));
        if (deferred) {
            reauth_item *it = calloc(1, sizeof(*it));
            it->conn = c;
            clock_gettime(CLOCK_REALTIME, &it->due);
            it->due.tv_nsec += (long)reauthDelayMs * 1000000L;
            it->due.tv_sec += it->due.tv_nsec / 1000000000L;
            it->due.tv_nsec %= 1000000000L;
            if (rqTail != NULL) {
                rqTail->next = it;
            } else {
                rqHead = it;
            }
            rqTail = it;
            if (!rqStarted) {
                rqStarted = 1;
                pthread_create(&rqThread, NULL, reauth_queue_main, NULL);
            }
            pthread_cond_broadcast(&rqCond);
        }
        pthread_mutex_unlock(&wlock);
        if (!deferred) {
            reauthorize_now(c);
        }
        return;
    }
    /* ALE_AUTH_RECV_ACCEPT: no reauthorization. Without a clone the packet is gone;
       with one, the connection proceeds when the clone is injected. */
    if (nbl == NULL) {
        apply_result(c, EMU_CONN_BLOCK, NULL);
        return;
    }
    pthread_mutex_lock(&wlock);
    int live = nbl_live_locked(nbl);
    if (live && !nbl->injected) {
        c->acceptClone = nbl;
    }
    pthread_mutex_unlock(&wlock);
}

static void utf16_blob(const char *path, FWP_BYTE_BLOB *blob)
{
    size_t n = strlen(path);
    UINT16 *w = malloc((n + 1) * 2);
    for (size_t i = 0; i < n; i++) {
        w[i] = (UINT16)(unsigned char)path[i];
    }
    w[n] = 0;
    blob->data = (UINT8 *)w;
    blob->size = (UINT32)((n + 1) * 2); /* WFP's process path includes the terminator */
}

emu_conn *emu_connect(const emu_conn_params *p)
{
    emu_conn *c = calloc(1, sizeof(*c));
    c->p = *p;
    c->p.path = NULL;
    if (p->path != NULL) {
        utf16_blob(p->path, &c->pathBlob);
    }
    pthread_mutex_lock(&wlock);
    c->id = nextConnId++;
    c->state = EMU_CONN_PENDING;
    c->next = conns;
    conns = c;
    pthread_mutex_unlock(&wlock);

    KIRQL old = KeGetCurrentIrql();
    KIRQL dummy;
    if (p->irql > old) {
        KeRaiseIrql(p->irql, &dummy);
    }
    emu_nbl *packet = NULL;
    if (p->inbound) {
        ULONG ip = p->v6 ? 40 : 20, tr = p->protocol == 6 ? 20 : 8;
        packet = nbl_new(c, ip + tr, ip + tr); /* RECV_ACCEPT: data starts after the transport header */
    } else if (p->protocol != 6) {
        packet = nbl_new(c, 64, 0); /* ALE_AUTH_CONNECT of UDP/ICMP: the first datagram is layerData */
    }
    pend_record *pend = NULL;
    int r = conn_classify_auth(c, 0, packet, &pend);
    if (!p->inbound && p->protocol != 6 && r == EMU_CONN_PERMIT) {
        pthread_mutex_lock(&wlock);
        c->datagramsSent++; /* permitted at once: the datagram goes on */
        pthread_mutex_unlock(&wlock);
    }
    if (packet != NULL && pend != NULL && p->retreatAfterAbsorb) {
        ULONG tr = p->protocol == 6 ? 20 : 8;
        pthread_mutex_lock(&wlock);
        packet->nb.DataOffset -= tr;
        packet->nb.DataLength += tr;
        pthread_mutex_unlock(&wlock);
    }
    if (packet != NULL) {
        nbl_release_if_unused(packet);
    }
    apply_result(c, r, pend);
    if (KeGetCurrentIrql() != p->irql) {
        emu_violation("IRQL after the connection's classify is %d, expected %d", KeGetCurrentIrql(), p->irql);
    }
    if (p->irql > old) {
        KeLowerIrql(old);
    }
    return c;
}

int emu_conn_state(emu_conn *c)
{
    pthread_mutex_lock(&wlock);
    int s = c->state;
    pthread_mutex_unlock(&wlock);
    return s;
}

int emu_conn_wait(emu_conn *c, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&wlock);
    while (c->state == EMU_CONN_PENDING) {
        if (pthread_cond_timedwait(&wcond, &wlock, &ts) != 0) {
            break;
        }
    }
    int s = c->state;
    pthread_mutex_unlock(&wlock);
    return s;
}

int emu_conn_has_flow_context(emu_conn *c)
{
    int n = 0;
    pthread_mutex_lock(&wlock);
    for (assoc *a = assocs; a; a = a->next) {
        n += a->flowId == c->id;
    }
    pthread_mutex_unlock(&wlock);
    return n;
}

int emu_conn_reauthorizations(emu_conn *c) { return c->reauths; }
UINT64 emu_conn_flow_id(emu_conn *c) { return c->id; }

UINT64 emu_conn_flow_context(emu_conn *c, UINT16 layerId)
{
    UINT64 ctx = 0;
    pthread_mutex_lock(&wlock);
    for (assoc *a = assocs; a; a = a->next) {
        if (a->flowId == c->id && a->layerId == layerId) {
            ctx = a->context;
        }
    }
    pthread_mutex_unlock(&wlock);
    return ctx;
}

void emu_conn_data(emu_conn *c, ULONG bytes, int inbound)
{
    pthread_mutex_lock(&wlock);
    int alive = c->flowAlive;
    pthread_mutex_unlock(&wlock);
    if (!alive) {
        return;
    }
    KIRQL old;
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    pend_record *unused = NULL;
    if (c->p.protocol == 6) {
        FWPS_STREAM_DATA0 sd = {inbound ? FWPS_STREAM_FLAG_RECEIVE : FWPS_STREAM_FLAG_SEND, bytes};
        FWPS_STREAM_CALLOUT_IO_PACKET0 pkt;
        memset(&pkt, 0, sizeof(pkt));
        pkt.streamData = &sd;
        classify_layer(c, c->p.v6 ? FWPS_LAYER_STREAM_V6 : FWPS_LAYER_STREAM_V4, 0, &pkt, c->id, &unused);
    } else {
        emu_nbl *n = nbl_new(c, bytes, 0);
        classify_layer(c, c->p.v6 ? FWPS_LAYER_DATAGRAM_DATA_V6 : FWPS_LAYER_DATAGRAM_DATA_V4, 0, &n->nbl, c->id,
                       &unused);
        nbl_release_if_unused(n);
    }
    KeLowerIrql(old);
    flow_delete(c->id, 1); /* removals that waited for this classify */
}

void emu_conn_close(emu_conn *c)
{
    pthread_mutex_lock(&wlock);
    int alive = c->flowAlive;
    c->flowAlive = 0;
    pthread_mutex_unlock(&wlock);
    if (alive) {
        flow_delete(c->id, 0);
    }
}

int emu_pends_outstanding(void)
{
    int n = 0;
    pthread_mutex_lock(&wlock);
    for (pend_record *r = pends; r; r = r->next) {
        n += r->state != PEND_COMPLETED;
    }
    pthread_mutex_unlock(&wlock);
    return n;
}

/* ---- reauthorization after a policy change ---- */
static void *reauth_thread(void *arg)
{
    reauth_batch *b = arg;
    emu_conn **list = b->list;
    int n = b->count;
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&wlock);
        int still = list[i]->state == EMU_CONN_PERMIT && list[i]->flowAlive;
        pthread_mutex_unlock(&wlock);
        if (!still) {
            continue; /* closed or blocked since the commit */
        }
        pend_record *pend = NULL;
        pthread_mutex_lock(&wlock);
        list[i]->reauths++;
        pthread_mutex_unlock(&wlock);
        int r = conn_classify_auth(list[i], 1, NULL, &pend);
        apply_result(list[i], r, pend);
    }
    free(b);
    pthread_mutex_lock(&wlock);
    reauthThreadsActive--;
    pthread_cond_broadcast(&rqCond);
    pthread_mutex_unlock(&wlock);
    return NULL;
}

void emu_wait_reauth_idle(void)
{
    /* Commit threads queue deferred reauthorizations: wait until neither runs. Waiting
       for held ones releases them (an unload after a failed check must not hang). */
    pthread_mutex_lock(&wlock);
    reauthHeld = 0;
    pthread_cond_broadcast(&rqCond);
    while (rqHead != NULL || rqBusy || reauthThreadsActive > 0) {
        pthread_cond_wait(&rqCond, &wlock);
    }
    pthread_mutex_unlock(&wlock);
}

/* ---- checks and reset ---- */
void emu_wfp_describe_live(char *buf, size_t n)
{
    size_t used = 0;
    int locked = pthread_mutex_trylock(&wlock) == 0; /* best effort if a stuck thread holds it */
    int flows = 0, pendsOpen = 0;
#define APPEND(...)                                                                                            \
    do {                                                                                                       \
        if (used < n) {                                                                                        \
            int w_ = snprintf(buf + used, n - used, __VA_ARGS__);                                              \
            used += w_ > 0 ? (size_t)w_ : 0;                                                                   \
        }                                                                                                      \
    } while (0)
    buf[0] = 0;
    for (assoc *a = assocs; a; a = a->next) {
        flows++;
    }
    APPEND("%d flow context(s)", flows);
    int shown = 0;
    for (assoc *a = assocs; a && shown < 8; a = a->next, shown++) {
        APPEND("%s flow %llu layer %u callout %u%s", shown ? "," : " [", (unsigned long long)a->flowId, a->layerId,
               a->calloutId, a->removePending ? " (removal pending)" : "");
    }
    APPEND("%s", shown ? "]" : "");
    for (pend_record *r = pends; r; r = r->next) {
        pendsOpen += r->state != PEND_COMPLETED;
    }
    APPEND("; %d pended operation(s) not completed", pendsOpen);
    shown = 0;
    for (pend_record *r = pends; r && shown < 8; r = r->next) {
        if (r->state != PEND_COMPLETED) {
            APPEND("%s connection %llu", shown++ ? "," : " [", (unsigned long long)r->conn->id);
        }
    }
    APPEND("%s", shown ? "]" : "");
    APPEND("; %d injection(s) in flight", iqPending);
    int refs = 0, clones = 0;
    for (emu_nbl *x = nbls; x; x = x->next) {
        clones += x->isClone;
        refs += x->refs;
    }
    APPEND("; %d clone(s), %d packet reference(s)", clones, refs);
#undef APPEND
    if (locked) {
        pthread_mutex_unlock(&wlock);
    }
}

void emu_wfp_check_clean(void)
{
    emu_wait_reauth_idle();
    pthread_mutex_lock(&wlock);
    for (pend_record *r = pends; r; r = r->next) {
        if (r->state != PEND_COMPLETED) {
            emu_violation("unload: the pended operation of connection %llu was never completed",
                          (unsigned long long)r->conn->id);
        }
    }
    for (assoc *a = assocs; a; a = a->next) {
        emu_violation("unload: a flow context is still associated (flow %llu, layer %u, callout %u)",
                      (unsigned long long)a->flowId, a->layerId, a->calloutId);
    }
    for (int i = 0; i < MAX_CALLOUTS; i++) {
        if (callouts[i].registered) {
            emu_violation("unload: callout %d is still registered", i + 1);
        }
    }
    for (engine *e = engines; e; e = e->next) {
        emu_violation("unload: a filter engine handle is still open");
    }
    for (injection *i = injections; i; i = i->next) {
        emu_violation("unload: an injection handle was not destroyed");
    }
    if (iqPending > 0) {
        emu_violation("unload: %d injection(s) still in flight: tcpip would call the completion function of an "
                      "unloaded driver (0xCE)", iqPending);
    }
    for (emu_nbl *n = nbls; n; n = n->next) {
        if (n->isClone) {
            emu_violation("unload: a cloned net buffer list was never freed");
        } else if (n->refs > 0) {
            emu_violation("unload: a packet still holds %d reference(s) from FwpsReferenceNetBufferList0", n->refs);
        }
    }
    for (mobject *o = mobjects; o; o = o->next) {
        emu_violation("unload: a WFP object (kind %d) outlives the driver", o->kind);
    }
    pthread_mutex_unlock(&wlock);
}

void emu_wfp_reset(void)
{
    flowDeleteDelayMs = 0;
    deleteOnAssociate = 0;
    vetoReauth = 0;
    reauthPendRefusals = 0;
    forceClearActionRight = 0;
    emu_wait_reauth_idle();
    if (rqStarted) {
        pthread_mutex_lock(&wlock);
        rqStop = 1;
        pthread_cond_broadcast(&rqCond);
        pthread_mutex_unlock(&wlock);
        pthread_join(rqThread, NULL);
        rqStarted = rqStop = 0;
    }
    if (iqStarted) {
        pthread_mutex_lock(&wlock);
        iqStop = 1;
        pthread_cond_broadcast(&iqCond);
        pthread_mutex_unlock(&wlock);
        pthread_join(iqThread, NULL);
        iqStarted = iqStop = 0;
    }
    while (iqHead != NULL) { /* after a violation: completions nobody waited for */
        inj_item *it = iqHead;
        iqHead = it->next;
        free(it);
    }
    iqTail = NULL;
    iqPending = 0;
    injectCounter = 0;
    injectDelayMs = 2;
    const char *imode = getenv("LATCH_EMU_INJECT");
    injectMode = (imode != NULL && imode[0] >= '0' && imode[0] <= '2') ? imode[0] - '0' : 2;
    reauthCounter = 0;
    reauthDelayMs = 0;
    reauthHeld = 0;
    const char *mode = getenv("LATCH_EMU_REAUTH");
    reauthMode = (mode != NULL && mode[0] >= '0' && mode[0] <= '2') ? mode[0] - '0' : 2;
    pthread_mutex_lock(&wlock);
    while (pends) {
        pend_record *r = pends;
        pends = r->next;
        free(r);
    }
    while (assocs) {
        assoc *a = assocs;
        assocs = a->next;
        free(a);
    }
    while (nbls) {
        nbl_free_locked(nbls);
    }
    while (conns) {
        emu_conn *c = conns;
        conns = c->next;
        free(c->pathBlob.data);
        free(c);
    }
    while (injections) {
        injection *i = injections;
        injections = i->next;
        free(i);
    }
    while (engines) {
        engine *e = engines;
        engines = e->next;
        free(e);
    }
    while (mobjects) {
        mobject *o = mobjects;
        mobjects = o->next;
        free(o);
    }
    memset(callouts, 0, sizeof(callouts));
    overrideConnectV4 = NULL;
    pthread_mutex_unlock(&wlock);
}
