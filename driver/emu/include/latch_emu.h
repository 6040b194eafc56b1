/*
 * latch kernel emulation: the declarations of exactly the kernel, NDIS, WFP and
 * Filter Manager routines and types the driver uses, standing in for ntddk.h,
 * fltKernel.h, ndis.h, fwpsk.h and fwpmk.h. Names, field names and signatures follow
 * the WDK; sizes follow LLP64 (ULONG/LONG are 32 bits). Numeric values of enums are
 * our own where the driver never depends on them. Implemented in the driver/emu C files,
 * which check the rules Driver Verifier checks (see driver/emu/README.md).
 *
 * Build with -fshort-wchar so L"..." literals are UTF-16 like on Windows.
 */
#ifndef LATCH_EMU_H
#define LATCH_EMU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- basic types (LLP64) ---- */
typedef void VOID, *PVOID;
typedef const void *PCVOID;
typedef char CHAR, *PCHAR;
typedef const char *PCSTR;
typedef uint8_t UCHAR, *PUCHAR, BOOLEAN, *PBOOLEAN, UINT8, BYTE;
typedef int8_t INT8;
typedef uint16_t USHORT, *PUSHORT, UINT16, WORD;
typedef int16_t SHORT, INT16;
typedef uint32_t ULONG, *PULONG, UINT32, DWORD, UINT, ACCESS_MASK;
typedef int32_t LONG, *PLONG, INT32, NTSTATUS, BOOL, INT, KPRIORITY;
typedef uint64_t ULONGLONG, ULONG64, UINT64, *PULONG64, DWORD64;
typedef int64_t LONGLONG, LONG64, INT64, *PLONG64;
typedef uintptr_t ULONG_PTR, SIZE_T, *PSIZE_T, UINT_PTR;
typedef intptr_t LONG_PTR;
typedef wchar_t WCHAR, *PWCHAR, *PWSTR, wchar_16;
typedef const wchar_t *PCWSTR;
typedef void *HANDLE, **PHANDLE;
typedef UCHAR KIRQL, *PKIRQL;
typedef CHAR KPROCESSOR_MODE;
typedef ULONG64 POOL_FLAGS;
typedef ULONG DEVICE_TYPE;
typedef USHORT ADDRESS_FAMILY;
typedef ULONG COMPARTMENT_ID, IF_INDEX, NET_IFINDEX;
typedef int NDIS_STATUS;
typedef void *NDIS_HANDLE;
typedef void *PSECURITY_DESCRIPTOR;
typedef struct _EMU_OBJECT_TYPE *POBJECT_TYPE;

_Static_assert(sizeof(WCHAR) == 2, "build the emulation with -fshort-wchar");
_Static_assert(sizeof(ULONG) == 4 && sizeof(LONG) == 4 && sizeof(ULONG64) == 8, "LLP64 sizes");

#define TRUE 1
#define FALSE 0
#ifndef NULL
#define NULL ((void *)0)
#endif

typedef union _LARGE_INTEGER {
    struct { ULONG LowPart; LONG HighPart; } u;
    LONGLONG QuadPart;
} LARGE_INTEGER, *PLARGE_INTEGER;

typedef struct _GUID {
    ULONG Data1;
    USHORT Data2;
    USHORT Data3;
    UCHAR Data4[8];
} GUID;

#ifdef INITGUID
#define DEFINE_GUID(name, l, w1, w2, b1, b2, b3, b4, b5, b6, b7, b8) \
    const GUID name = {l, w1, w2, {b1, b2, b3, b4, b5, b6, b7, b8}}
#else
#define DEFINE_GUID(name, l, w1, w2, b1, b2, b3, b4, b5, b6, b7, b8) extern const GUID name
#endif

typedef struct _UNICODE_STRING {
    USHORT Length;
    USHORT MaximumLength;
    PWSTR Buffer;
} UNICODE_STRING, *PUNICODE_STRING;
typedef const UNICODE_STRING *PCUNICODE_STRING;

#define RTL_CONSTANT_STRING(s) { sizeof(s) - sizeof((s)[0]), sizeof(s), (PWSTR)(s) }

/* ---- annotations and helpers ---- */
#define _In_
#define _In_opt_
#define _Out_
#define _Out_opt_
#define _Inout_
#define _Inout_opt_
#define _In_reads_bytes_(x)
#define _In_reads_bytes_opt_(x)
#define _Out_writes_bytes_to_opt_(a, b)
#define _Outptr_result_maybenull_
#define _Use_decl_annotations_
#define _IRQL_requires_max_(x)
#define _IRQL_requires_(x)
#define _Function_class_(x)
#define _Requires_lock_not_held_(x)
#define _Must_inspect_result_
#define NTAPI
#define FLTAPI
#define NTKERNELAPI
#define __stdcall
#define __drv_aliasesMem
#define UNREFERENCED_PARAMETER(P) ((void)(P))
#define FIELD_OFFSET(type, field) ((LONG)offsetof(type, field))
#define C_ASSERT(e) _Static_assert(e, #e)
#define RTL_NUMBER_OF(a) (sizeof(a) / sizeof((a)[0]))
#define ARRAYSIZE(a) RTL_NUMBER_OF(a)
#define CONTAINING_RECORD(address, type, field) ((type *)((char *)(address) - offsetof(type, field)))
#define RtlCopyMemory(d, s, n) memcpy((d), (s), (n))
#define RtlMoveMemory(d, s, n) memmove((d), (s), (n))
#define RtlZeroMemory(d, n) memset((d), 0, (n))
#define RtlEqualMemory(a, b, n) (memcmp((a), (b), (n)) == 0)
#define NT_SUCCESS(s) (((NTSTATUS)(s)) >= 0)
#define IsEqualGUID(a, b) (memcmp((a), (b), sizeof(GUID)) == 0)

/* Structured exception handling. A __try block runs once; while it runs, the user-mode buffers of the message being
   handled are readable (outside, they are PROT_NONE: a read outside __try is a SEGV);
   when it ends, the input buffer is rewritten, as a hostile user thread could, so a
   second fetch in a later block sees other bytes (see emu/README.md). The __except
   handler never runs. */
int emu_try_enter(void);
int emu_try_leave(void);
#define __try for (int emu_try_once_ = emu_try_enter(); emu_try_once_; emu_try_once_ = emu_try_leave())
#define __except(filter) if (0)
#define EXCEPTION_EXECUTE_HANDLER 1

/* Verifier assertion: a failed NT_ASSERT is reported as a violation. */
void EmuAssertFailed(const char *expr, const char *file, int line);
#define NT_ASSERT(e) ((e) ? (void)0 : EmuAssertFailed(#e, __FILE__, __LINE__))

/* ---- status codes ---- */
#define STATUS_SUCCESS                 ((NTSTATUS)0x00000000)
#define STATUS_TIMEOUT                 ((NTSTATUS)0x00000102)
#define STATUS_PENDING                 ((NTSTATUS)0x00000103)
#define STATUS_OBJECT_NAME_EXISTS      ((NTSTATUS)0x40000000)
#define STATUS_DEVICE_BUSY             ((NTSTATUS)0x80000011)
#define STATUS_UNSUCCESSFUL            ((NTSTATUS)0xC0000001)
#define STATUS_NOT_IMPLEMENTED         ((NTSTATUS)0xC0000002)
#define STATUS_INVALID_HANDLE          ((NTSTATUS)0xC0000008)
#define STATUS_INVALID_PARAMETER       ((NTSTATUS)0xC000000D)
#define STATUS_NO_MEMORY               ((NTSTATUS)0xC0000017)
#define STATUS_BUFFER_TOO_SMALL        ((NTSTATUS)0xC0000023)
#define STATUS_OBJECT_NAME_NOT_FOUND   ((NTSTATUS)0xC0000034)
#define STATUS_OBJECT_NAME_COLLISION   ((NTSTATUS)0xC0000035)
#define STATUS_PORT_DISCONNECTED       ((NTSTATUS)0xC0000037)
#define STATUS_REVISION_MISMATCH       ((NTSTATUS)0xC0000059)
#define STATUS_QUOTA_EXCEEDED          ((NTSTATUS)0xC0000044)
#define STATUS_INSUFFICIENT_RESOURCES  ((NTSTATUS)0xC000009A)
#define STATUS_DEVICE_NOT_READY        ((NTSTATUS)0xC00000A3)
#define STATUS_INVALID_DEVICE_STATE    ((NTSTATUS)0xC0000184)
#define STATUS_NOT_FOUND               ((NTSTATUS)0xC0000225)
#define STATUS_CONNECTION_COUNT_LIMIT  ((NTSTATUS)0xC0000246)
#define STATUS_FLT_DO_NOT_ATTACH       ((NTSTATUS)0xC01C000F)
#define STATUS_FWP_CALLOUT_NOT_FOUND   ((NTSTATUS)0xC0220001)
#define STATUS_FWP_NOT_FOUND           ((NTSTATUS)0xC0220008)
#define STATUS_FWP_NO_TXN_IN_PROGRESS  ((NTSTATUS)0xC022000D)
#define STATUS_FWP_TXN_IN_PROGRESS     ((NTSTATUS)0xC022000E)
#define STATUS_FWP_CANNOT_PEND         ((NTSTATUS)0xC0220034)
#define NDIS_STATUS_SUCCESS 0

/* ---- IRQL ---- */
#define PASSIVE_LEVEL  0
#define APC_LEVEL      1
#define DISPATCH_LEVEL 2
KIRQL KeGetCurrentIrql(void);
void KeRaiseIrql(KIRQL NewIrql, PKIRQL OldIrql);
void KeLowerIrql(KIRQL NewIrql);
/* PAGED_CODE(): the verifier reports paged code running above APC_LEVEL. */
void EmuPagedCode(const char *function);
#define PAGED_CODE() EmuPagedCode(__func__)

/* ---- lists (inline, as in wdm.h) ---- */
typedef struct _LIST_ENTRY {
    struct _LIST_ENTRY *Flink;
    struct _LIST_ENTRY *Blink;
} LIST_ENTRY, *PLIST_ENTRY;

static inline void InitializeListHead(PLIST_ENTRY h) { h->Flink = h->Blink = h; }
static inline BOOLEAN IsListEmpty(const LIST_ENTRY *h) { return h->Flink == h; }
static inline BOOLEAN RemoveEntryList(PLIST_ENTRY e)
{
    PLIST_ENTRY f = e->Flink, b = e->Blink;
    if (f->Blink != e || b->Flink != e) {
        EmuAssertFailed("list entry corrupt (RemoveEntryList)", __FILE__, __LINE__);
    }
    b->Flink = f;
    f->Blink = b;
    return f == b;
}
static inline PLIST_ENTRY RemoveHeadList(PLIST_ENTRY h)
{
    PLIST_ENTRY e = h->Flink;
    RemoveEntryList(e);
    return e;
}
static inline void InsertTailList(PLIST_ENTRY h, PLIST_ENTRY e)
{
    PLIST_ENTRY b = h->Blink;
    e->Flink = h;
    e->Blink = b;
    b->Flink = e;
    h->Blink = e;
}
static inline void InsertHeadList(PLIST_ENTRY h, PLIST_ENTRY e)
{
    PLIST_ENTRY f = h->Flink;
    e->Flink = f;
    e->Blink = h;
    f->Blink = e;
    h->Flink = e;
}

/* ---- interlocked ---- */
static inline LONG InterlockedIncrement(volatile LONG *p) { return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
static inline LONG InterlockedDecrement(volatile LONG *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_SEQ_CST); }
static inline LONG InterlockedExchange(volatile LONG *p, LONG v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline LONG InterlockedCompareExchange(volatile LONG *p, LONG x, LONG c)
{
    __atomic_compare_exchange_n(p, &c, x, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return c;
}
static inline LONG64 InterlockedIncrement64(volatile LONG64 *p) { return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
static inline LONG64 InterlockedDecrement64(volatile LONG64 *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_SEQ_CST); }
static inline LONG64 InterlockedAdd64(volatile LONG64 *p, LONG64 v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline LONG64 InterlockedCompareExchange64(volatile LONG64 *p, LONG64 x, LONG64 c)
{
    __atomic_compare_exchange_n(p, &c, x, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return c;
}

/* ---- pool ---- */
#define POOL_FLAG_UNINITIALIZED 0x0000000000000002ULL
#define POOL_FLAG_NON_PAGED     0x0000000000000040ULL
#define POOL_FLAG_PAGED         0x0000000000000100ULL
PVOID ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
void ExFreePoolWithTag(PVOID P, ULONG Tag);

/* ---- spin locks ---- */
/* For clang's -Wthread-safety (make -C driver analyze): a spin lock is a capability;
   the WDK expresses the same with SAL (_Acquires_lock_, _Requires_lock_held_). */
#if defined(__clang__)
#define EMU_CAPABILITY __attribute__((capability("spin lock")))
#define EMU_ACQUIRES(x) __attribute__((acquire_capability(x)))
#define EMU_RELEASES(x) __attribute__((release_capability(x)))
#else
#define EMU_CAPABILITY
#define EMU_ACQUIRES(x)
#define EMU_RELEASES(x)
#endif
typedef ULONG_PTR KSPIN_LOCK EMU_CAPABILITY;
typedef KSPIN_LOCK *PKSPIN_LOCK;
void KeInitializeSpinLock(PKSPIN_LOCK SpinLock);
void KeAcquireSpinLock(PKSPIN_LOCK SpinLock, PKIRQL OldIrql) EMU_ACQUIRES(*SpinLock);
void KeReleaseSpinLock(PKSPIN_LOCK SpinLock, KIRQL NewIrql) EMU_RELEASES(*SpinLock);
void KeAcquireSpinLockAtDpcLevel(PKSPIN_LOCK SpinLock) EMU_ACQUIRES(*SpinLock);
void KeReleaseSpinLockFromDpcLevel(PKSPIN_LOCK SpinLock) EMU_RELEASES(*SpinLock);

/* ---- dispatcher objects ---- */
typedef enum _EVENT_TYPE { NotificationEvent, SynchronizationEvent } EVENT_TYPE;
typedef enum _KWAIT_REASON { Executive = 0 } KWAIT_REASON;
#define KernelMode ((KPROCESSOR_MODE)0)
#define UserMode ((KPROCESSOR_MODE)1)
#define IO_NO_INCREMENT 0
typedef struct _EMU_DISPATCHER_HEADER {
    int Type;           /* emulation: 1 event, 2 thread */
    int EventType;
    volatile int Signaled;
    void *Sync;         /* emulation: mutex + condition variable */
} EMU_DISPATCHER_HEADER;
typedef struct _KEVENT { EMU_DISPATCHER_HEADER Header; } KEVENT, *PKEVENT, *PRKEVENT;
typedef struct _KTHREAD *PKTHREAD, *PETHREAD;
void KeInitializeEvent(PRKEVENT Event, EVENT_TYPE Type, BOOLEAN State);
LONG KeSetEvent(PRKEVENT Event, KPRIORITY Increment, BOOLEAN Wait);
void KeClearEvent(PRKEVENT Event);
NTSTATUS KeWaitForSingleObject(PVOID Object, KWAIT_REASON WaitReason, KPROCESSOR_MODE WaitMode,
                               BOOLEAN Alertable, PLARGE_INTEGER Timeout);
NTSTATUS KeDelayExecutionThread(KPROCESSOR_MODE WaitMode, BOOLEAN Alertable, PLARGE_INTEGER Interval);

/* ---- objects, threads ---- */
typedef struct _OBJECT_ATTRIBUTES {
    ULONG Length;
    HANDLE RootDirectory;
    PUNICODE_STRING ObjectName;
    ULONG Attributes;
    PVOID SecurityDescriptor;
    PVOID SecurityQualityOfService;
} OBJECT_ATTRIBUTES, *POBJECT_ATTRIBUTES;
#define OBJ_CASE_INSENSITIVE 0x00000040L
#define OBJ_KERNEL_HANDLE    0x00000200L
#define InitializeObjectAttributes(p, n, a, r, s) do { \
        (p)->Length = sizeof(OBJECT_ATTRIBUTES); (p)->RootDirectory = (r); (p)->Attributes = (a); \
        (p)->ObjectName = (n); (p)->SecurityDescriptor = (s); (p)->SecurityQualityOfService = NULL; } while (0)
typedef struct _CLIENT_ID { HANDLE UniqueProcess; HANDLE UniqueThread; } CLIENT_ID, *PCLIENT_ID;
typedef void KSTART_ROUTINE(PVOID StartContext);
typedef KSTART_ROUTINE *PKSTART_ROUTINE;
#define SYNCHRONIZE       0x00100000L
#define THREAD_ALL_ACCESS 0x001FFFFFL
#define KEY_READ          0x00020019L
extern POBJECT_TYPE *PsThreadType;
NTSTATUS PsCreateSystemThread(PHANDLE ThreadHandle, ULONG DesiredAccess, POBJECT_ATTRIBUTES ObjectAttributes,
                              HANDLE ProcessHandle, PCLIENT_ID ClientId, PKSTART_ROUTINE StartRoutine,
                              PVOID StartContext);
NTSTATUS PsTerminateSystemThread(NTSTATUS ExitStatus);
NTSTATUS ObReferenceObjectByHandle(HANDLE Handle, ACCESS_MASK DesiredAccess, POBJECT_TYPE ObjectType,
                                   KPROCESSOR_MODE AccessMode, PVOID *Object, PVOID HandleInformation);
void ObDereferenceObject(PVOID Object);
NTSTATUS ZwClose(HANDLE Handle);

/* ---- rundown protection ---- */
typedef struct _EX_RUNDOWN_REF { volatile LONG64 Count; } EX_RUNDOWN_REF, *PEX_RUNDOWN_REF;
void ExInitializeRundownProtection(PEX_RUNDOWN_REF RunRef);
BOOLEAN ExAcquireRundownProtection(PEX_RUNDOWN_REF RunRef);
void ExReleaseRundownProtection(PEX_RUNDOWN_REF RunRef);
void ExWaitForRundownProtectionRelease(PEX_RUNDOWN_REF RunRef);

/* ---- time ---- */
void KeQuerySystemTime(PLARGE_INTEGER CurrentTime);   /* 100 ns since 1601 */
ULONGLONG KeQueryInterruptTime(void);                 /* 100 ns, monotonic */

/* ---- registry ---- */
typedef enum _KEY_VALUE_INFORMATION_CLASS { KeyValueBasicInformation, KeyValueFullInformation,
                                            KeyValuePartialInformation } KEY_VALUE_INFORMATION_CLASS;
typedef struct _KEY_VALUE_PARTIAL_INFORMATION {
    ULONG TitleIndex;
    ULONG Type;
    ULONG DataLength;
    UCHAR Data[1];
} KEY_VALUE_PARTIAL_INFORMATION, *PKEY_VALUE_PARTIAL_INFORMATION;
#define REG_DWORD 4
NTSTATUS ZwOpenKey(PHANDLE KeyHandle, ACCESS_MASK DesiredAccess, POBJECT_ATTRIBUTES ObjectAttributes);
NTSTATUS ZwQueryValueKey(HANDLE KeyHandle, PUNICODE_STRING ValueName,
                         KEY_VALUE_INFORMATION_CLASS KeyValueInformationClass, PVOID KeyValueInformation,
                         ULONG Length, PULONG ResultLength);

/* ---- driver and device objects ---- */
typedef struct _DEVICE_OBJECT { ULONG EmuMagic; struct _DRIVER_OBJECT *DriverObject; } DEVICE_OBJECT, *PDEVICE_OBJECT;
typedef struct _DRIVER_OBJECT *PDRIVER_OBJECT;
typedef NTSTATUS DRIVER_INITIALIZE(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath);
typedef void DRIVER_UNLOAD(PDRIVER_OBJECT DriverObject);
typedef DRIVER_UNLOAD *PDRIVER_UNLOAD;
typedef struct _DRIVER_OBJECT {
    SHORT Type;
    SHORT Size;
    PDEVICE_OBJECT DeviceObject;
    ULONG Flags;
    PDRIVER_UNLOAD DriverUnload;
} DRIVER_OBJECT;
#define FILE_DEVICE_NETWORK     0x00000012
#define FILE_DEVICE_UNKNOWN     0x00000022
#define FILE_DEVICE_SECURE_OPEN 0x00000100
NTSTATUS IoCreateDevice(PDRIVER_OBJECT DriverObject, ULONG DeviceExtensionSize, PUNICODE_STRING DeviceName,
                        DEVICE_TYPE DeviceType, ULONG DeviceCharacteristics, BOOLEAN Exclusive,
                        PDEVICE_OBJECT *DeviceObject);
void IoDeleteDevice(PDEVICE_OBJECT DeviceObject);

/* ---- debug output ---- */
#define DPFLTR_IHVNETWORK_ID 0x0000004D
#define DPFLTR_ERROR_LEVEL 0
#define DPFLTR_WARNING_LEVEL 1
#define DPFLTR_INFO_LEVEL 3
ULONG DbgPrintEx(ULONG ComponentId, ULONG Level, PCSTR Format, ...) __attribute__((format(printf, 3, 4)));

/* ==== Filter Manager (fltKernel.h) ==== */
typedef struct _EMU_FLT_FILTER *PFLT_FILTER;
typedef struct _EMU_FLT_PORT *PFLT_PORT;
typedef struct _EMU_FLT_RELATED_OBJECTS *PCFLT_RELATED_OBJECTS;
typedef ULONG FLT_FILTER_UNLOAD_FLAGS, FLT_INSTANCE_SETUP_FLAGS, FLT_INSTANCE_QUERY_TEARDOWN_FLAGS,
              FLT_REGISTRATION_FLAGS, FLT_OPERATION_REGISTRATION_FLAGS;
typedef enum _FLT_FILESYSTEM_TYPE { FLT_FSTYPE_UNKNOWN, FLT_FSTYPE_RAW, FLT_FSTYPE_NTFS } FLT_FILESYSTEM_TYPE;
#define FLTFL_FILTER_UNLOAD_MANDATORY 0x00000001
#define FLT_REGISTRATION_VERSION 0x0203
#define IRP_MJ_OPERATION_END ((UCHAR)0x80)
#define FLT_PORT_ALL_ACCESS (0x0001 | 0x000F0000L | SYNCHRONIZE)
/* Pointer typedefs only, as in fltKernel.h. */
typedef NTSTATUS (FLTAPI *PFLT_FILTER_UNLOAD_CALLBACK)(FLT_FILTER_UNLOAD_FLAGS Flags);
typedef NTSTATUS (FLTAPI *PFLT_INSTANCE_SETUP_CALLBACK)(PCFLT_RELATED_OBJECTS FltObjects,
                                                        FLT_INSTANCE_SETUP_FLAGS Flags, DEVICE_TYPE VolumeDeviceType,
                                                        FLT_FILESYSTEM_TYPE VolumeFilesystemType);
typedef NTSTATUS (FLTAPI *PFLT_INSTANCE_QUERY_TEARDOWN_CALLBACK)(PCFLT_RELATED_OBJECTS FltObjects,
                                                                 FLT_INSTANCE_QUERY_TEARDOWN_FLAGS Flags);
typedef struct _FLT_OPERATION_REGISTRATION {
    UCHAR MajorFunction;
    FLT_OPERATION_REGISTRATION_FLAGS Flags;
    PVOID PreOperation;
    PVOID PostOperation;
    PVOID Reserved1;
} FLT_OPERATION_REGISTRATION;
typedef struct _FLT_REGISTRATION {
    USHORT Size;
    USHORT Version;
    FLT_REGISTRATION_FLAGS Flags;
    const void *ContextRegistration;
    const FLT_OPERATION_REGISTRATION *OperationRegistration;
    PFLT_FILTER_UNLOAD_CALLBACK FilterUnloadCallback;
    PFLT_INSTANCE_SETUP_CALLBACK InstanceSetupCallback;
    PFLT_INSTANCE_QUERY_TEARDOWN_CALLBACK InstanceQueryTeardownCallback;
    PVOID InstanceTeardownStartCallback;
    PVOID InstanceTeardownCompleteCallback;
    PVOID GenerateFileNameCallback;
    PVOID NormalizeNameComponentCallback;
    PVOID NormalizeContextCleanupCallback;
    PVOID TransactionNotificationCallback;
    PVOID NormalizeNameComponentExCallback;
    PVOID SectionNotificationCallback;
} FLT_REGISTRATION;
typedef NTSTATUS (FLTAPI *PFLT_CONNECT_NOTIFY)(PFLT_PORT ClientPort, PVOID ServerPortCookie,
                                               PVOID ConnectionContext, ULONG SizeOfContext,
                                               PVOID *ConnectionPortCookie);
typedef void (FLTAPI *PFLT_DISCONNECT_NOTIFY)(PVOID ConnectionCookie);
typedef NTSTATUS (FLTAPI *PFLT_MESSAGE_NOTIFY)(PVOID PortCookie, PVOID InputBuffer, ULONG InputBufferLength,
                                               PVOID OutputBuffer, ULONG OutputBufferLength,
                                               PULONG ReturnOutputBufferLength);

NTSTATUS FltRegisterFilter(PDRIVER_OBJECT Driver, const FLT_REGISTRATION *Registration, PFLT_FILTER *RetFilter);
NTSTATUS FltStartFiltering(PFLT_FILTER Filter);
void FltUnregisterFilter(PFLT_FILTER Filter);
NTSTATUS FltBuildDefaultSecurityDescriptor(PSECURITY_DESCRIPTOR *SecurityDescriptor, ACCESS_MASK DesiredAccess);
void FltFreeSecurityDescriptor(PSECURITY_DESCRIPTOR SecurityDescriptor);
NTSTATUS FltCreateCommunicationPort(PFLT_FILTER Filter, PFLT_PORT *ServerPort, POBJECT_ATTRIBUTES ObjectAttributes,
                                    PVOID ServerPortCookie, PFLT_CONNECT_NOTIFY ConnectNotifyCallback,
                                    PFLT_DISCONNECT_NOTIFY DisconnectNotifyCallback,
                                    PFLT_MESSAGE_NOTIFY MessageNotifyCallback, LONG MaxConnections);
void FltCloseCommunicationPort(PFLT_PORT ServerPort);
void FltCloseClientPort(PFLT_FILTER Filter, PFLT_PORT *ClientPort);
NTSTATUS FltSendMessage(PFLT_FILTER Filter, PFLT_PORT *ClientPort, PVOID SenderBuffer, ULONG SenderBufferLength,
                        PVOID ReplyBuffer, PULONG ReplyLength, PLARGE_INTEGER Timeout);

/* ==== NDIS (ndis.h), the little the driver touches ==== */
typedef struct _NET_BUFFER {
    struct _NET_BUFFER *Next;
    ULONG DataOffset;
    ULONG DataLength;
    UCHAR *EmuData;          /* emulation: the packet bytes */
    ULONG EmuCapacity;
} NET_BUFFER, *PNET_BUFFER;
typedef struct _NET_BUFFER_LIST {
    struct _NET_BUFFER_LIST *Next;
    PNET_BUFFER FirstNetBuffer;
    void *EmuState;          /* emulation bookkeeping */
} NET_BUFFER_LIST, *PNET_BUFFER_LIST;
typedef void *NET_BUFFER_ALLOCATE_MDL_HANDLER, *NET_BUFFER_FREE_MDL_HANDLER;
#define NET_BUFFER_LIST_FIRST_NB(nbl) ((nbl)->FirstNetBuffer)
#define NET_BUFFER_DATA_LENGTH(nb) ((nb)->DataLength)
#define NET_BUFFER_DATA_OFFSET(nb) ((nb)->DataOffset)
NDIS_STATUS NdisRetreatNetBufferDataStart(PNET_BUFFER NetBuffer, ULONG DataOffsetDelta, ULONG DataBackFill,
                                          NET_BUFFER_ALLOCATE_MDL_HANDLER AllocateMdlHandler);
void NdisAdvanceNetBufferDataStart(PNET_BUFFER NetBuffer, ULONG DataOffsetDelta, BOOLEAN FreeMdl,
                                   NET_BUFFER_FREE_MDL_HANDLER FreeMdlHandler);
#ifndef AF_INET
#define AF_INET  2
#define AF_INET6 23
#endif

/* ==== WFP shared types (fwptypes.h) ==== */
typedef enum FWP_DIRECTION_ { FWP_DIRECTION_OUTBOUND, FWP_DIRECTION_INBOUND } FWP_DIRECTION;
typedef enum FWP_DATA_TYPE_ {
    FWP_EMPTY, FWP_UINT8, FWP_UINT16, FWP_UINT32, FWP_UINT64, FWP_INT8, FWP_INT16, FWP_INT32, FWP_INT64,
    FWP_FLOAT, FWP_DOUBLE, FWP_BYTE_ARRAY16_TYPE, FWP_BYTE_BLOB_TYPE, FWP_SID, FWP_SECURITY_DESCRIPTOR_TYPE,
    FWP_TOKEN_INFORMATION_TYPE, FWP_TOKEN_ACCESS_INFORMATION_TYPE, FWP_UNICODE_STRING_TYPE
} FWP_DATA_TYPE;
typedef struct FWP_BYTE_ARRAY16_ { UINT8 byteArray16[16]; } FWP_BYTE_ARRAY16;
typedef struct FWP_BYTE_BLOB_ { UINT32 size; UINT8 *data; } FWP_BYTE_BLOB;
typedef struct FWP_VALUE0_ {
    FWP_DATA_TYPE type;
    union {
        UINT8 uint8;
        UINT16 uint16;
        UINT32 uint32;
        UINT64 *uint64;
        FWP_BYTE_ARRAY16 *byteArray16;
        FWP_BYTE_BLOB *byteBlob;
    };
} FWP_VALUE0;
typedef UINT32 FWP_ACTION_TYPE;
#define FWP_ACTION_FLAG_TERMINATING     0x00001000
#define FWP_ACTION_FLAG_NON_TERMINATING 0x00002000
#define FWP_ACTION_FLAG_CALLOUT         0x00004000
#define FWP_ACTION_BLOCK               (0x00000001 | FWP_ACTION_FLAG_TERMINATING)
#define FWP_ACTION_PERMIT              (0x00000002 | FWP_ACTION_FLAG_TERMINATING)
#define FWP_ACTION_CALLOUT_TERMINATING (0x00000003 | FWP_ACTION_FLAG_CALLOUT | FWP_ACTION_FLAG_TERMINATING)
#define FWP_ACTION_CALLOUT_INSPECTION  (0x00000004 | FWP_ACTION_FLAG_CALLOUT | FWP_ACTION_FLAG_NON_TERMINATING)
#define FWP_ACTION_CONTINUE            (0x00000006 | FWP_ACTION_FLAG_NON_TERMINATING)
#define FWP_ACTION_NONE                0x00000007
#define FWP_CONDITION_FLAG_IS_LOOPBACK    0x00000001
#define FWP_CONDITION_FLAG_IS_REAUTHORIZE 0x00000004

/* ==== WFP kernel API (fwpsk.h) ==== */
typedef enum FWPS_BUILTIN_LAYERS_ {
    FWPS_LAYER_STREAM_V4 = 20,
    FWPS_LAYER_STREAM_V6 = 22,
    FWPS_LAYER_DATAGRAM_DATA_V4 = 24,
    FWPS_LAYER_DATAGRAM_DATA_V6 = 26,
    FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V4 = 36,
    FWPS_LAYER_ALE_AUTH_RECV_ACCEPT_V6 = 38,
    FWPS_LAYER_ALE_AUTH_CONNECT_V4 = 40,
    FWPS_LAYER_ALE_AUTH_CONNECT_V6 = 42,
    FWPS_LAYER_ALE_FLOW_ESTABLISHED_V4 = 44,
    FWPS_LAYER_ALE_FLOW_ESTABLISHED_V6 = 46
} FWPS_BUILTIN_LAYERS;

/* Incoming value indexes. The emulation fills every layer with this common prefix;
   the WDK's own enums (identical names) are used on Windows. */
#define EMU_ALE_FIELDS(L) \
    FWPS_FIELD_##L##_ALE_APP_ID, FWPS_FIELD_##L##_ALE_USER_ID, FWPS_FIELD_##L##_IP_LOCAL_ADDRESS, \
    FWPS_FIELD_##L##_IP_LOCAL_ADDRESS_TYPE, FWPS_FIELD_##L##_IP_LOCAL_PORT, FWPS_FIELD_##L##_IP_PROTOCOL, \
    FWPS_FIELD_##L##_IP_REMOTE_ADDRESS, FWPS_FIELD_##L##_IP_REMOTE_PORT, FWPS_FIELD_##L##_INTERFACE_INDEX, \
    FWPS_FIELD_##L##_SUB_INTERFACE_INDEX, FWPS_FIELD_##L##_DIRECTION, FWPS_FIELD_##L##_FLAGS, \
    FWPS_FIELD_##L##_MAX
typedef enum { EMU_ALE_FIELDS(ALE_AUTH_CONNECT_V4) } FWPS_FIELDS_ALE_AUTH_CONNECT_V4;
typedef enum { EMU_ALE_FIELDS(ALE_AUTH_CONNECT_V6) } FWPS_FIELDS_ALE_AUTH_CONNECT_V6;
typedef enum { EMU_ALE_FIELDS(ALE_AUTH_RECV_ACCEPT_V4) } FWPS_FIELDS_ALE_AUTH_RECV_ACCEPT_V4;
typedef enum { EMU_ALE_FIELDS(ALE_AUTH_RECV_ACCEPT_V6) } FWPS_FIELDS_ALE_AUTH_RECV_ACCEPT_V6;
typedef enum { EMU_ALE_FIELDS(ALE_FLOW_ESTABLISHED_V4) } FWPS_FIELDS_ALE_FLOW_ESTABLISHED_V4;
typedef enum { EMU_ALE_FIELDS(ALE_FLOW_ESTABLISHED_V6) } FWPS_FIELDS_ALE_FLOW_ESTABLISHED_V6;
typedef enum { EMU_ALE_FIELDS(STREAM_V4) } FWPS_FIELDS_STREAM_V4;
typedef enum { EMU_ALE_FIELDS(STREAM_V6) } FWPS_FIELDS_STREAM_V6;
typedef enum { EMU_ALE_FIELDS(DATAGRAM_DATA_V4) } FWPS_FIELDS_DATAGRAM_DATA_V4;
typedef enum { EMU_ALE_FIELDS(DATAGRAM_DATA_V6) } FWPS_FIELDS_DATAGRAM_DATA_V6;

typedef struct _SCOPE_ID {
    union {
        struct {
            ULONG Zone : 28;
            ULONG Level : 4;
        };
        ULONG Value;
    };
} SCOPE_ID;

typedef struct FWPS_INCOMING_VALUE0_ { FWP_VALUE0 value; } FWPS_INCOMING_VALUE0;
typedef struct FWPS_INCOMING_VALUES0_ {
    UINT16 layerId;
    UINT32 valueCount;
    FWPS_INCOMING_VALUE0 *incomingValue;
} FWPS_INCOMING_VALUES0;

#define FWPS_METADATA_FIELD_FLOW_HANDLE                0x00000002
#define FWPS_METADATA_FIELD_IP_HEADER_SIZE             0x00000004
#define FWPS_METADATA_FIELD_TRANSPORT_HEADER_SIZE      0x00000008
#define FWPS_METADATA_FIELD_PROCESS_PATH               0x00000010
#define FWPS_METADATA_FIELD_PROCESS_ID                 0x00000040
#define FWPS_METADATA_FIELD_COMPARTMENT_ID             0x00000800
#define FWPS_METADATA_FIELD_COMPLETION_HANDLE          0x00004000
#define FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE  0x00008000
#define FWPS_METADATA_FIELD_REMOTE_SCOPE_ID            0x00020000
#define FWPS_METADATA_FIELD_PACKET_DIRECTION           0x00040000
#define FWPS_IS_METADATA_FIELD_PRESENT(m, f) (((m)->currentMetadataValues & (f)) == (f))
typedef struct FWPS_INCOMING_METADATA_VALUES0_ {
    UINT32 currentMetadataValues;
    UINT32 flags;
    UINT64 reserved;
    UINT64 flowHandle;
    UINT32 ipHeaderSize;
    UINT32 transportHeaderSize;
    FWP_BYTE_BLOB *processPath;
    UINT64 token;
    UINT64 processId;
    UINT32 sourceInterfaceIndex;
    UINT32 destinationInterfaceIndex;
    ULONG compartmentId;
    HANDLE completionHandle;
    UINT64 transportEndpointHandle;
    SCOPE_ID remoteScopeId;
    FWP_DIRECTION packetDirection;
} FWPS_INCOMING_METADATA_VALUES0;

#define FWPS_RIGHT_ACTION_WRITE       0x00000001
#define FWPS_CLASSIFY_OUT_FLAG_ABSORB 0x00000001
typedef struct FWPS_CLASSIFY_OUT0_ {
    FWP_ACTION_TYPE actionType;
    UINT64 outContext;
    UINT64 filterId;
    UINT32 rights;
    UINT32 flags;
    UINT32 reserved;
} FWPS_CLASSIFY_OUT0;

typedef struct FWPS_ACTION0_ { FWP_ACTION_TYPE type; UINT32 calloutId; } FWPS_ACTION0;
#define FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT 0x0001
typedef struct FWPS_FILTER3_ {
    UINT64 filterId;
    FWP_VALUE0 weight;
    UINT16 subLayerWeight;
    UINT16 flags;
    UINT32 numFilterConditions;
    void *filterCondition;
    FWPS_ACTION0 action;
    UINT64 context;
    void *providerContext;
} FWPS_FILTER3;

typedef enum FWPS_CALLOUT_NOTIFY_TYPE_ {
    FWPS_CALLOUT_NOTIFY_ADD_FILTER, FWPS_CALLOUT_NOTIFY_DELETE_FILTER, FWPS_CALLOUT_NOTIFY_ADD_FILTER_POST_COMMIT
} FWPS_CALLOUT_NOTIFY_TYPE;
/* Pointer typedefs, as in fwpsk.h. */
typedef void (NTAPI *FWPS_CALLOUT_CLASSIFY_FN3)(const FWPS_INCOMING_VALUES0 *inFixedValues,
                                                const FWPS_INCOMING_METADATA_VALUES0 *inMetaValues, void *layerData,
                                                const void *classifyContext, const FWPS_FILTER3 *filter,
                                                UINT64 flowContext, FWPS_CLASSIFY_OUT0 *classifyOut);
typedef NTSTATUS (NTAPI *FWPS_CALLOUT_NOTIFY_FN3)(FWPS_CALLOUT_NOTIFY_TYPE notifyType, const GUID *filterKey,
                                                  FWPS_FILTER3 *filter);
typedef void (NTAPI *FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0)(UINT16 layerId, UINT32 calloutId, UINT64 flowContext);
#define FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW 0x00000001
typedef struct FWPS_CALLOUT3_ {
    GUID calloutKey;
    UINT32 flags;
    FWPS_CALLOUT_CLASSIFY_FN3 classifyFn;
    FWPS_CALLOUT_NOTIFY_FN3 notifyFn;
    FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0 flowDeleteFn;
} FWPS_CALLOUT3;

NTSTATUS FwpsCalloutRegister3(void *deviceObject, const FWPS_CALLOUT3 *callout, UINT32 *calloutId);
NTSTATUS FwpsCalloutUnregisterById0(const UINT32 calloutId);
NTSTATUS FwpsPendOperation0(HANDLE completionHandle, HANDLE *completionContext);
void FwpsCompleteOperation0(HANDLE completionContext, PNET_BUFFER_LIST netBufferList);
NTSTATUS FwpsFlowAssociateContext0(UINT64 flowId, UINT16 layerId, UINT32 calloutId, UINT64 flowContext);
NTSTATUS FwpsFlowRemoveContext0(UINT64 flowId, UINT16 layerId, UINT32 calloutId);

typedef struct FWPS_STREAM_DATA0_ { UINT32 flags; SIZE_T dataLength; } FWPS_STREAM_DATA0;
#define FWPS_STREAM_FLAG_RECEIVE 0x00000001
#define FWPS_STREAM_FLAG_SEND    0x00000002
typedef struct FWPS_STREAM_CALLOUT_IO_PACKET0_ {
    FWPS_STREAM_DATA0 *streamData;
    SIZE_T missedBytes;
    UINT32 countBytesRequired;
    SIZE_T countBytesEnforced;
    int streamAction;
} FWPS_STREAM_CALLOUT_IO_PACKET0;

#define FWPS_INJECTION_TYPE_TRANSPORT 0x00000004
typedef enum FWPS_PACKET_INJECTION_STATE_ {
    FWPS_PACKET_NOT_INJECTED, FWPS_PACKET_INJECTED_BY_SELF, FWPS_PACKET_INJECTED_BY_OTHER,
    FWPS_PACKET_PREVIOUSLY_INJECTED_BY_SELF, FWPS_PACKET_INJECTION_STATE_MAX
} FWPS_PACKET_INJECTION_STATE;
typedef void (NTAPI *FWPS_INJECT_COMPLETE0)(void *context, NET_BUFFER_LIST *netBufferList, BOOLEAN dispatchLevel);
NTSTATUS FwpsInjectionHandleCreate0(ADDRESS_FAMILY addressFamily, UINT32 flags, HANDLE *injectionHandle);
NTSTATUS FwpsInjectionHandleDestroy0(HANDLE injectionHandle);
FWPS_PACKET_INJECTION_STATE FwpsQueryPacketInjectionState0(HANDLE injectionHandle,
                                                           const NET_BUFFER_LIST *netBufferList,
                                                           HANDLE *injectionContext);
void FwpsReferenceNetBufferList0(NET_BUFFER_LIST *netBufferList, BOOLEAN intendToModify);
void FwpsDereferenceNetBufferList0(NET_BUFFER_LIST *netBufferList, BOOLEAN dispatchLevel);
NTSTATUS FwpsAllocateCloneNetBufferList0(NET_BUFFER_LIST *originalNetBufferList,
                                         NDIS_HANDLE netBufferListPoolHandle, NDIS_HANDLE netBufferPoolHandle,
                                         ULONG allocateCloneFlags, NET_BUFFER_LIST **netBufferList);
void FwpsFreeCloneNetBufferList0(NET_BUFFER_LIST *netBufferList, ULONG freeCloneFlags);
NTSTATUS FwpsInjectTransportReceiveAsync0(HANDLE injectionHandle, HANDLE injectionContext, PVOID reserved,
                                          UINT32 flags, ADDRESS_FAMILY addressFamily,
                                          COMPARTMENT_ID compartmentId, IF_INDEX interfaceIndex,
                                          IF_INDEX subInterfaceIndex, NET_BUFFER_LIST *netBufferList,
                                          FWPS_INJECT_COMPLETE0 completionFn, HANDLE completionContext);
typedef struct _WSACMSGHDR WSACMSGHDR;
typedef struct FWPS_TRANSPORT_SEND_PARAMS1_ {
    UCHAR *remoteAddress;
    SCOPE_ID remoteScopeId;
    WSACMSGHDR *controlData;
    ULONG controlDataLength;
    UCHAR *headerIncludeHeader;
    ULONG headerIncludeHeaderLength;
} FWPS_TRANSPORT_SEND_PARAMS1;
NTSTATUS FwpsInjectTransportSendAsync1(HANDLE injectionHandle, HANDLE injectionContext, UINT64 endpointHandle,
                                       UINT32 flags, FWPS_TRANSPORT_SEND_PARAMS1 *sendArgs,
                                       ADDRESS_FAMILY addressFamily, COMPARTMENT_ID compartmentId,
                                       NET_BUFFER_LIST *netBufferList, FWPS_INJECT_COMPLETE0 completionFn,
                                       HANDLE completionContext);

/* ==== WFP management API (fwpmk.h) ==== */
typedef struct FWPM_DISPLAY_DATA0_ { wchar_t *name; wchar_t *description; } FWPM_DISPLAY_DATA0;
#define FWPM_SESSION_FLAG_DYNAMIC 0x00000001
typedef struct FWPM_SESSION0_ {
    GUID sessionKey;
    FWPM_DISPLAY_DATA0 displayData;
    UINT32 flags;
    UINT32 txnWaitTimeoutInMSec;
    DWORD processId;
    void *sid;
    wchar_t *username;
    BOOL kernelMode;
} FWPM_SESSION0;
typedef struct FWPM_PROVIDER0_ {
    GUID providerKey;
    FWPM_DISPLAY_DATA0 displayData;
    UINT32 flags;
    FWP_BYTE_BLOB providerData;
    wchar_t *serviceName;
} FWPM_PROVIDER0;
typedef struct FWPM_SUBLAYER0_ {
    GUID subLayerKey;
    FWPM_DISPLAY_DATA0 displayData;
    UINT32 flags;
    GUID *providerKey;
    FWP_BYTE_BLOB providerData;
    UINT16 weight;
} FWPM_SUBLAYER0;
typedef struct FWPM_CALLOUT0_ {
    GUID calloutKey;
    FWPM_DISPLAY_DATA0 displayData;
    UINT32 flags;
    GUID *providerKey;
    FWP_BYTE_BLOB providerData;
    GUID applicableLayer;
    UINT32 calloutId;
} FWPM_CALLOUT0;
typedef struct FWPM_ACTION0_ {
    FWP_ACTION_TYPE type;
    union { GUID filterType; GUID calloutKey; };
} FWPM_ACTION0;
#define FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT 0x00000008
typedef struct FWPM_FILTER0_ {
    GUID filterKey;
    FWPM_DISPLAY_DATA0 displayData;
    UINT32 flags;
    GUID *providerKey;
    FWP_BYTE_BLOB providerData;
    GUID layerKey;
    GUID subLayerKey;
    FWP_VALUE0 weight;
    UINT32 numFilterConditions;
    void *filterCondition;
    FWPM_ACTION0 action;
    union { UINT64 rawContext; GUID providerContextKey; };
    GUID *reserved;
    UINT64 filterId;
    FWP_VALUE0 effectiveWeight;
} FWPM_FILTER0;
#define RPC_C_AUTHN_WINNT 10
NTSTATUS FwpmEngineOpen0(const wchar_t *serverName, UINT32 authnService, void *authIdentity,
                         const FWPM_SESSION0 *session, HANDLE *engineHandle);
NTSTATUS FwpmEngineClose0(HANDLE engineHandle);
NTSTATUS FwpmTransactionBegin0(HANDLE engineHandle, UINT32 flags);
NTSTATUS FwpmTransactionCommit0(HANDLE engineHandle);
NTSTATUS FwpmTransactionAbort0(HANDLE engineHandle);
NTSTATUS FwpmProviderAdd0(HANDLE engineHandle, const FWPM_PROVIDER0 *provider, PSECURITY_DESCRIPTOR sd);
NTSTATUS FwpmSubLayerAdd0(HANDLE engineHandle, const FWPM_SUBLAYER0 *subLayer, PSECURITY_DESCRIPTOR sd);
NTSTATUS FwpmCalloutAdd0(HANDLE engineHandle, const FWPM_CALLOUT0 *callout, PSECURITY_DESCRIPTOR sd, UINT32 *id);
NTSTATUS FwpmFilterAdd0(HANDLE engineHandle, const FWPM_FILTER0 *filter, PSECURITY_DESCRIPTOR sd, UINT64 *id);
NTSTATUS FwpmFilterDeleteById0(HANDLE engineHandle, UINT64 id);

/* Layer keys (fwpmu.h). */
extern const GUID FWPM_LAYER_ALE_AUTH_CONNECT_V4, FWPM_LAYER_ALE_AUTH_CONNECT_V6,
    FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4, FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6,
    FWPM_LAYER_ALE_FLOW_ESTABLISHED_V4, FWPM_LAYER_ALE_FLOW_ESTABLISHED_V6,
    FWPM_LAYER_STREAM_V4, FWPM_LAYER_STREAM_V6, FWPM_LAYER_DATAGRAM_DATA_V4, FWPM_LAYER_DATAGRAM_DATA_V6;

#endif /* LATCH_EMU_H */
