/*
 * latch kernel emulation: the harness side. Tests and latch-sim use these to load
 * the real driver, make connections that go through its callouts, inject faults and
 * read what the verifier found. See driver/emu/README.md.
 */
#ifndef EMU_HARNESS_H
#define EMU_HARNESS_H

#include "latch_emu.h"

/* ---- verifier ---- */
/* Reports a rule violation: printed to stderr and recorded; aborts the process when
   LATCH_EMU_ABORT=1 (bugcheck mode). */
void emu_violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int emu_violation_count(void);
const char *emu_violation_text(int index); /* first 256 kept */
void emu_clear_violations(void);
/* Returns 1 if any recorded violation contains needle. */
int emu_violation_contains(const char *needle);
/* Quiet mode: violations are recorded but not printed (tests that expect them). */
void emu_set_quiet(int quiet);
const char *emu_irql_name(KIRQL irql);

/* ---- schedule fuzzer ---- */
/* seed != 0: after every spin-lock release and around every completion the emulation
   delivers (operations, injections, flowDeleteFn), a delay of up to maxMicros with
   probability permille/1000, drawn from a per-thread stream of this seed. 0: off. */
void emu_sched_fuzz(unsigned long long seed, int permille, int maxMicros);
unsigned long long emu_sched_seed(void);
void emu_sched_point(void);

/* ---- time at DISPATCH_LEVEL under a spin lock ---- */
typedef struct emu_hold_site {
    void *site;           /* return address in the code that called KeAcquireSpinLock */
    long long maxNs;      /* longest hold, thread CPU time */
    long long totalNs;
    long count;
    long over;            /* holds longer than the budget */
} emu_hold_site;
/* 1: start measuring (clears what was measured), 0: stop. */
void emu_lock_hold_measure(int on, long long budgetNs);
int emu_lock_hold_sites(emu_hold_site *out, int max);
long emu_lock_holds_disturbed(void); /* holds not measured: preempted or page-faulted in user mode */

/* ---- fault injection ---- */
/* While recording, every allocation site (the caller's return address) is remembered. */
void emu_fault_record(int on);
int emu_fault_site_count(void);
void *emu_fault_site(int index);
/* All allocations from this site fail (NULL to stop failing). */
void emu_fault_fail_site(void *site);
long emu_fault_injected(void);
/* Internal: called by every allocating routine. */
int emu_fault_should_fail(void *site);

/* ---- pool ---- */
long emu_pool_outstanding(void);
long emu_pool_total_allocations(void);

/* ---- registry ---- */
void emu_registry_set_dword(const char *name, ULONG value);
void emu_registry_clear(void);

/* ---- driver lifecycle ---- */
void emu_reset(void);                                 /* before each load */
NTSTATUS emu_load(DRIVER_INITIALIZE *entry);          /* DriverEntry at PASSIVE_LEVEL */
/* Runs DriverObject->DriverUnload and the post-unload checks (leaks, incomplete
   pends, flow contexts, callouts, handles, threads, ports). Returns the number of
   violations recorded in total. */
int emu_unload(void);
/* The post-unload checks alone (after a failed DriverEntry, say). */
void emu_check_clean(const char *when);
int emu_driver_loaded(void);
void emu_set_test_name(const char *name);             /* named by the unload watchdog */
int emu_threads_running(void);                        /* system threads the driver created, still running */

/* ---- Filter Manager ---- */
void emu_set_port_path(const char *path);             /* unix socket path for the driver's port */
const char *emu_port_name(void);                      /* the name the driver gave (ASCII-folded) */
int emu_port_max_connections(void);
int emu_port_has_default_sd(void);
int emu_flt_operation_count(void);                    /* operation callbacks registered */
NTSTATUS emu_flt_instance_setup_status(void);         /* what InstanceSetup returned for a volume */
/* Calls the port's message-notify callback in-process, at PASSIVE_LEVEL, as a client
   FilterSendMessage would (exact-size heap buffers). */
NTSTATUS emu_port_call(const void *in, ULONG inLength, void *out, ULONG outLength, ULONG *returned);
int emu_port_clients(void);
/* Writes a MESSAGE frame with these bytes to the connected client, as if the driver
   had sent them (tests of the service's decoder against a broken driver). Returns 0,
   or -1 if no client is connected. */
int emu_port_inject_message(const void *message, ULONG length);

/* ---- connections through WFP ---- */
typedef struct emu_conn emu_conn;
typedef struct emu_conn_params {
    int v6;
    int inbound;           /* ALE_AUTH_RECV_ACCEPT instead of ALE_AUTH_CONNECT */
    UINT8 protocol;        /* 6 tcp, 17 udp, 1 icmp, 58 icmpv6 */
    UINT8 local[16];       /* network order; v4 uses the first 4 bytes */
    UINT8 remote[16];
    UINT16 localPort;
    UINT16 remotePort;
    UINT64 pid;            /* 0: no PROCESS_ID metadata */
    const char *path;      /* NT path (ASCII); NULL: no PROCESS_PATH metadata */
    KIRQL irql;            /* PASSIVE_LEVEL or DISPATCH_LEVEL */
    int retreatAfterAbsorb; /* inbound: once the classify absorbed the packet the stack moves its
                               data start back to the transport header (as tcpip may) */
} emu_conn_params;
enum { EMU_CONN_PENDING = 0, EMU_CONN_PERMIT = 1, EMU_CONN_BLOCK = 2 };
/* Runs the ALE classify on the calling thread at p->irql and returns the connection,
   now pending or decided. Never NULL. Owned by the emulation until emu_reset. */
emu_conn *emu_connect(const emu_conn_params *p);
int emu_conn_state(emu_conn *c);
int emu_conn_wait(emu_conn *c, int ms);               /* final state, or PENDING after ms */
int emu_conn_has_flow_context(emu_conn *c);
int emu_conn_reauthorizations(emu_conn *c);
/* Outbound UDP/ICMP: how many first datagrams left (permitted at once, or re-injected
   with FwpsInjectTransportSendAsync1 after a pend absorbed the original). */
int emu_conn_datagrams_sent(emu_conn *c);
/* FwpsReferenceNetBufferList0 references held on original packets (the driver's holds). */
int emu_packet_references(void);
UINT64 emu_conn_flow_id(emu_conn *c);
/* The context the driver associated with the connection's flow at layerId (0: none). */
UINT64 emu_conn_flow_context(emu_conn *c, UINT16 layerId);           /* the flowHandle WFP gives the driver */
void emu_conn_data(emu_conn *c, ULONG bytes, int inbound); /* stream/datagram classify with the flow context */
void emu_conn_close(emu_conn *c);                     /* the flow ends: flowDeleteFn for its contexts */
int emu_pends_outstanding(void);                      /* pended operations not yet completed */
/* FwpsFlowRemoveContext0 returns STATUS_PENDING and flowDeleteFn runs ms later on another
   thread (0, the default after emu_reset: at once unless a classify holds the context). */
void emu_set_flow_delete_delay_ms(int ms);
/* 1: every successful FwpsFlowAssociateContext0 runs flowDeleteFn before it returns (the
   flow ended on another CPU as soon as the context became WFP's). */
void emu_set_flow_delete_on_associate(int on);
/* 1: reauthorization classifies reach our callouts without FWPS_RIGHT_ACTION_WRITE (a
   higher-priority filter blocked); the connection is blocked. */
void emu_set_veto_reauth(int on);
/* FwpsPendOperation0 calls refused with STATUS_FWP_CANNOT_PEND (a reauthorization). */
int emu_reauth_pend_refusals(void);
/* 1: every callout filter carries FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT; a callout that
   permits or blocks and leaves the write right set is reported. */
void emu_set_filters_clear_action_right(int on);
int emu_flow_contexts(void);                          /* associations alive */
int emu_callouts_registered(void);
int emu_filters(void);
/* Waits until no reauthorization scheduled by a transaction commit is running. */
void emu_wait_reauth_idle(void);
/* Reauthorization after completing an ALE_AUTH_CONNECT operation: 0 inline in
   FwpsCompleteOperation0, 1 deferred to an emulation thread, 2 alternating (default). */
void emu_set_reauth_mode(int mode);
/* Deferred reauthorizations wait ms before they classify (0 after emu_reset). */
void emu_set_reauth_delay_ms(int ms);
/* 1: deferred reauthorizations wait, however long, until it is set back to 0 (the
   state a test measures stays put on a slow machine); 0 after emu_reset. */
void emu_set_reauth_hold(int on);
/* Injection completions (FwpsInjectTransportReceiveAsync0/SendAsync1): 0 inline, before
   the call returns; 1 deferred, from an emulation thread ms later (emu_set_inject_delay_ms,
   2 after emu_reset); 2 alternating (default; LATCH_EMU_INJECT pins it). */
void emu_set_inject_mode(int mode);
void emu_set_inject_delay_ms(int ms);
int emu_injections_in_flight(void);                   /* completions not yet delivered */
/* One line naming every flow context, pended operation and injection still alive. */
void emu_wfp_describe_live(char *buf, size_t n);

/* ---- a raw classify, for tests that play a wrong driver (seed 000) ---- */
/* The callout registered for the ALE connect v4 layer is replaced by fn for the
   next emu_connect calls (NULL restores). */
void emu_override_classify(FWPS_CALLOUT_CLASSIFY_FN3 fn);

/* internal, shared by the emulation's files */
void emu_require_irql(const char *routine, KIRQL max);
int emu_spin_locks_held(void);                        /* by the calling thread */
void emu_flt_shutdown_all(void);
void emu_wfp_check_clean(void);
void emu_flt_check_clean(void);
void emu_kernel_check_clean(void);
void emu_wfp_reset(void);
void emu_flt_reset(void);
void emu_kernel_reset(void);
extern PDRIVER_OBJECT emu_driver_object;
extern UNICODE_STRING emu_registry_path;

#endif
