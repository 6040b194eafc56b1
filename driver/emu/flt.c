/*
 * Filter Manager emulation: registration (no file-system filtering here: instance
 * setup is offered one volume) and communication ports as unix stream sockets with
 * the framing of driver/PROTOCOL.md ("The emulated port").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sys/mman.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "emu_harness.h"

enum { FRAME_MESSAGE = 1, FRAME_SEND = 2, FRAME_SEND_RESULT = 3, FRAME_REPLY = 4, FRAME_GET = 5 };
#define MAX_FRAME (1u << 20)
#define MAX_OUTPUT (64u * 1024u)

struct _EMU_FLT_FILTER {
    UINT32 magic;
    const FLT_REGISTRATION *reg;
    PDRIVER_OBJECT driver;
    int registered;
    int unregisterCalled;
};
#define FILTER_MAGIC 0x464c5452u

struct _EMU_FLT_PORT {
    UINT32 magic;
    int isServer;
    struct _EMU_FLT_PORT *server;
    struct _EMU_FLT_PORT *next;
    /* server */
    int listenFd;
    pthread_t acceptor;
    int closing;
    PFLT_CONNECT_NOTIFY connectFn;
    PFLT_DISCONNECT_NOTIFY disconnectFn;
    PFLT_MESSAGE_NOTIFY messageFn;
    PVOID serverCookie;
    LONG maxConnections;
    /* client */
    int fd;
    pthread_t reader;
    PVOID connCookie;
    int closedByDriver;
    int disconnected;
    int sendsInFlight;
    pthread_mutex_t writeLock;
    UINT64 nextMessageId;
    /* FRAME_GET: the client posts FilterGetMessage calls. Once it has sent one, messages
       are delivered only into a posted get, as on Windows (strict); a client that never
       sends one gets the buffered delivery of older harness versions. */
    int strict;
    int getsPosted;
};
static pthread_cond_t getCond = PTHREAD_COND_INITIALIZER;

/* ---- user-mode buffers of FilterSendMessage ----
   The message-notify callback gets the client's buffers as user-mode pointers. Here each
   lives at the end of its own mapping, followed by an inaccessible page, and is
   PROT_NONE except inside a __try block (emu_try_enter/leave): a read or write outside
   __try, or past the end, is a SEGV. When a __try block ends the input buffer's bytes
   are inverted, as a user thread racing the driver could rewrite them, so reading it
   again in a later block (a double fetch) sees other bytes. */
typedef struct user_region {
    unsigned char *map;
    size_t mapLen;
    unsigned char *data;
    size_t len;
    int rewrite;
} user_region;
static __thread user_region uregions[2];
static __thread int uregionCount;

static void *user_buffer(const void *src, size_t len, int rewrite)
{
    if (len == 0) {
        return NULL;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t dataPages = (len + page - 1) / page;
    size_t mapLen = (dataPages + 1) * page;
    unsigned char *map = mmap(NULL, mapLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        return NULL;
    }
    unsigned char *data = map + dataPages * page - len;
    if (src != NULL) {
        memcpy(data, src, len);
    }
    mprotect(map + dataPages * page, page, PROT_NONE); /* the guard page */
    mprotect(map, dataPages * page, PROT_NONE);
    user_region *r = &uregions[uregionCount++];
    r->map = map;
    r->mapLen = mapLen;
    r->data = data;
    r->len = len;
    r->rewrite = rewrite;
    return data;
}

static void user_buffer_read(const void *user, void *dst, size_t len)
{
    for (int i = 0; i < uregionCount; i++) {
        if (uregions[i].data == user) {
            mprotect(uregions[i].map, uregions[i].mapLen - (size_t)sysconf(_SC_PAGESIZE), PROT_READ);
            memcpy(dst, user, len);
        }
    }
}

static void user_buffers_release(void)
{
    for (int i = 0; i < uregionCount; i++) {
        munmap(uregions[i].map, uregions[i].mapLen);
    }
    uregionCount = 0;
}

int emu_try_enter(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < uregionCount; i++) {
        mprotect(uregions[i].map, uregions[i].mapLen - page, PROT_READ | PROT_WRITE);
    }
    return 1;
}

int emu_try_leave(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < uregionCount; i++) {
        if (uregions[i].rewrite) {
            for (size_t k = 0; k < uregions[i].len; k++) {
                uregions[i].data[k] ^= 0xFF;
            }
        }
        mprotect(uregions[i].map, uregions[i].mapLen - page, PROT_NONE);
    }
    return 0;
}
#define PORT_MAGIC 0x504f5254u

static pthread_mutex_t flock_ = PTHREAD_MUTEX_INITIALIZER;
static struct _EMU_FLT_FILTER theFilter;
static struct _EMU_FLT_PORT *ports;
static char portPath[108] = "";
static char portName[128] = "";
static int portMax;
static int portDefaultSd;
static int sdLive;
static int opCount;
static NTSTATUS instanceSetupStatus = STATUS_SUCCESS;
static int clientsLive;

void emu_set_port_path(const char *path) { snprintf(portPath, sizeof(portPath), "%s", path); }
const char *emu_port_name(void) { return portName; }
int emu_port_max_connections(void) { return portMax; }
int emu_port_has_default_sd(void) { return portDefaultSd; }
int emu_flt_operation_count(void) { return opCount; }
NTSTATUS emu_flt_instance_setup_status(void) { return instanceSetupStatus; }
int emu_port_clients(void)
{
    pthread_mutex_lock(&flock_);
    int n = clientsLive;
    pthread_mutex_unlock(&flock_);
    return n;
}

/* ---- registration ---- */
static void filter_driver_unload(PDRIVER_OBJECT driver)
{
    (void)driver;
    NTSTATUS st = theFilter.reg->FilterUnloadCallback(FLTFL_FILTER_UNLOAD_MANDATORY);
    if (KeGetCurrentIrql() != PASSIVE_LEVEL) {
        emu_violation("FilterUnloadCallback returned at IRQL %d", KeGetCurrentIrql());
    }
    if (!NT_SUCCESS(st)) {
        emu_violation("FilterUnloadCallback failed a mandatory unload (0x%08x)", (unsigned)st);
    }
    if (!theFilter.unregisterCalled) {
        emu_violation("FilterUnloadCallback returned without calling FltUnregisterFilter");
    }
}

NTSTATUS FltRegisterFilter(PDRIVER_OBJECT driver, const FLT_REGISTRATION *reg, PFLT_FILTER *out)
{
    emu_require_irql("FltRegisterFilter", PASSIVE_LEVEL);
    *out = NULL;
    if (reg == NULL || reg->Size != sizeof(FLT_REGISTRATION) || reg->Version != FLT_REGISTRATION_VERSION) {
        return STATUS_INVALID_PARAMETER;
    }
    if (theFilter.registered) {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    opCount = 0;
    for (const FLT_OPERATION_REGISTRATION *op = reg->OperationRegistration;
         op != NULL && op->MajorFunction != IRP_MJ_OPERATION_END; op++) {
        opCount++;
    }
    theFilter.magic = FILTER_MAGIC;
    theFilter.reg = reg;
    theFilter.driver = driver;
    theFilter.registered = 1;
    theFilter.unregisterCalled = 0;
    if (reg->FilterUnloadCallback != NULL) {
        driver->DriverUnload = filter_driver_unload; /* the Filter Manager owns unload now */
    }
    *out = &theFilter;
    return STATUS_SUCCESS;
}

NTSTATUS FltStartFiltering(PFLT_FILTER f)
{
    emu_require_irql("FltStartFiltering", PASSIVE_LEVEL);
    if (f != &theFilter || !theFilter.registered) {
        emu_violation("FltStartFiltering(%p): not a registered filter", (void *)f);
        return STATUS_INVALID_PARAMETER;
    }
    /* Offer one NTFS volume; a filter that wants no volumes refuses it. */
    instanceSetupStatus = STATUS_SUCCESS;
    if (theFilter.reg->InstanceSetupCallback != NULL) {
        instanceSetupStatus = theFilter.reg->InstanceSetupCallback(NULL, 0, 0x8 /* disk fs */, FLT_FSTYPE_NTFS);
    }
    return STATUS_SUCCESS;
}

static void client_shutdown_and_join(struct _EMU_FLT_PORT *c);

void FltUnregisterFilter(PFLT_FILTER f)
{
    emu_require_irql("FltUnregisterFilter", PASSIVE_LEVEL);
    if (f != &theFilter || !theFilter.registered) {
        emu_violation("FltUnregisterFilter(%p): not a registered filter", (void *)f);
        return;
    }
    theFilter.unregisterCalled = 1;
    pthread_mutex_lock(&flock_);
    for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
        if (p->isServer) {
            emu_violation("FltUnregisterFilter while a server communication port is open "
                          "(call FltCloseCommunicationPort first)");
        }
    }
    pthread_mutex_unlock(&flock_);
    /* Remaining clients are disconnected: their disconnect callbacks run now. */
    for (;;) {
        struct _EMU_FLT_PORT *c = NULL;
        pthread_mutex_lock(&flock_);
        for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
            if (!p->isServer) {
                c = p;
                break;
            }
        }
        pthread_mutex_unlock(&flock_);
        if (c == NULL) {
            break;
        }
        client_shutdown_and_join(c);
    }
    theFilter.registered = 0;
}

NTSTATUS FltBuildDefaultSecurityDescriptor(PSECURITY_DESCRIPTOR *sd, ACCESS_MASK access)
{
    emu_require_irql("FltBuildDefaultSecurityDescriptor", APC_LEVEL);
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        *sd = NULL;
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    UINT32 *d = malloc(2 * sizeof(UINT32));
    d[0] = 0x53444546u; /* "default: SYSTEM + Administrators" */
    d[1] = access;
    pthread_mutex_lock(&flock_);
    sdLive++;
    pthread_mutex_unlock(&flock_);
    *sd = d;
    return STATUS_SUCCESS;
}

void FltFreeSecurityDescriptor(PSECURITY_DESCRIPTOR sd)
{
    UINT32 *d = sd;
    if (d == NULL || d[0] != 0x53444546u) {
        emu_violation("FltFreeSecurityDescriptor(%p): not from FltBuildDefaultSecurityDescriptor", sd);
        return;
    }
    d[0] = 0;
    free(d);
    pthread_mutex_lock(&flock_);
    sdLive--;
    pthread_mutex_unlock(&flock_);
}

/* ---- socket helpers ---- */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_result(struct _EMU_FLT_PORT *c, NTSTATUS status, const void *out, UINT32 outLen)
{
    UINT32 len = 1 + 8 + outLen;
    unsigned char *f = malloc(4 + len);
    memcpy(f, &len, 4);
    f[4] = FRAME_SEND_RESULT;
    UINT32 st = (UINT32)status;
    memcpy(f + 5, &st, 4);
    memcpy(f + 9, &outLen, 4);
    if (outLen) {
        memcpy(f + 13, out, outLen);
    }
    pthread_mutex_lock(&c->writeLock);
    int rc = write_all(c->fd, f, 4 + len);
    pthread_mutex_unlock(&c->writeLock);
    free(f);
    return rc;
}

static void check_callback_return(const char *what)
{
    if (KeGetCurrentIrql() != PASSIVE_LEVEL) {
        emu_violation("%s returned at IRQL %d (%s)", what, KeGetCurrentIrql(), emu_irql_name(KeGetCurrentIrql()));
    }
}

static void *reader_main(void *arg)
{
    struct _EMU_FLT_PORT *c = arg;
    for (;;) {
        UINT32 len;
        if (read_all(c->fd, &len, 4) != 0) {
            break;
        }
        if (len < 1 || len > MAX_FRAME) {
            fprintf(stderr, "emu port: frame length %u out of range; closing the client\n", len);
            break;
        }
        unsigned char *f = malloc(len);
        if (read_all(c->fd, f, len) != 0) {
            free(f);
            break;
        }
        if (f[0] == FRAME_SEND && len >= 5) {
            UINT32 outSize;
            memcpy(&outSize, f + 1, 4);
            if (outSize > MAX_OUTPUT) {
                fprintf(stderr, "emu port: output buffer size %u too large; closing the client\n", outSize);
                free(f);
                break;
            }
            UINT32 inLen = len - 5;
            void *in = user_buffer(f + 5, inLen, 1); /* user-mode buffers: see user_buffer */
            void *out = user_buffer(NULL, outSize, 0);
            unsigned char *outCopy = outSize ? malloc(outSize) : NULL;
            ULONG returned = 0;
            NTSTATUS st = c->messageFn(c->connCookie, in, inLen, out, outSize, &returned);
            check_callback_return("the message notify callback");
            if (returned > outSize) {
                emu_violation("message notify callback returned %u bytes into a %u-byte output buffer", returned,
                              outSize);
                returned = outSize;
            }
            if (!NT_SUCCESS(st)) {
                returned = 0;
            }
            if (returned > 0) {
                user_buffer_read(out, outCopy, returned);
            }
            user_buffers_release();
            int rc = send_result(c, st, outCopy, returned);
            free(outCopy);
            free(f);
            if (rc != 0) {
                break;
            }
        } else if (f[0] == FRAME_REPLY && len >= 17) {
            free(f); /* the driver never waits for replies: nobody to deliver to */
        } else if (f[0] == FRAME_GET && len == 1) {
            free(f);
            pthread_mutex_lock(&flock_);
            c->strict = 1;
            c->getsPosted++;
            pthread_cond_broadcast(&getCond);
            pthread_mutex_unlock(&flock_);
        } else {
            fprintf(stderr, "emu port: unknown frame kind %u; closing the client\n", f[0]);
            free(f);
            break;
        }
    }
    pthread_mutex_lock(&flock_);
    c->disconnected = 1;
    pthread_cond_broadcast(&getCond);
    pthread_mutex_unlock(&flock_);
    c->disconnectFn(c->connCookie);
    check_callback_return("the disconnect notify callback");
    pthread_mutex_lock(&flock_);
    if (!c->closedByDriver) {
        emu_violation("the disconnect notify callback did not call FltCloseClientPort");
        c->closedByDriver = 1;
    }
    pthread_mutex_unlock(&flock_);
    return NULL;
}

/* Shuts the socket down, waits for the reader (which runs the disconnect callback)
   and for FltSendMessage calls in flight, then frees the client port. */
static void client_shutdown_and_join(struct _EMU_FLT_PORT *c)
{
    shutdown(c->fd, SHUT_RDWR);
    pthread_join(c->reader, NULL);
    pthread_mutex_lock(&flock_);
    while (c->sendsInFlight > 0) {
        pthread_mutex_unlock(&flock_);
        usleep(1000);
        pthread_mutex_lock(&flock_);
    }
    for (struct _EMU_FLT_PORT **pp = &ports; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    clientsLive--;
    pthread_mutex_unlock(&flock_);
    close(c->fd);
    pthread_mutex_destroy(&c->writeLock);
    c->magic = 0;
    free(c);
}

static void *acceptor_main(void *arg)
{
    struct _EMU_FLT_PORT *s = arg;
    for (;;) {
        int fd = accept(s->listenFd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR && !s->closing) {
                continue;
            }
            break;
        }
        if (s->closing) {
            close(fd);
            break;
        }
        /* reap clients that went away on their own */
        for (;;) {
            struct _EMU_FLT_PORT *gone = NULL;
            pthread_mutex_lock(&flock_);
            for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
                if (!p->isServer && p->disconnected) {
                    gone = p;
                    break;
                }
            }
            pthread_mutex_unlock(&flock_);
            if (gone == NULL) {
                break;
            }
            client_shutdown_and_join(gone);
        }
        /* The Filter Manager queues a bounded amount of undelivered messages. */
        int sndbuf = 32 * 1024;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        struct _EMU_FLT_PORT *c = calloc(1, sizeof(*c));
        c->magic = PORT_MAGIC;
        c->fd = fd;
        c->server = s;
        c->disconnectFn = s->disconnectFn;
        c->messageFn = s->messageFn;
        pthread_mutex_init(&c->writeLock, NULL);
        pthread_mutex_lock(&flock_);
        int live = 0;
        for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
            live += !p->isServer && !p->disconnected;
        }
        pthread_mutex_unlock(&flock_);
        NTSTATUS st = live >= s->maxConnections ? STATUS_CONNECTION_COUNT_LIMIT : STATUS_SUCCESS;
        if (NT_SUCCESS(st)) {
            st = s->connectFn((PFLT_PORT)c, s->serverCookie, NULL, 0, &c->connCookie);
            check_callback_return("the connect notify callback");
        }
        if (!NT_SUCCESS(st)) {
            send_result(c, st, NULL, 0);
            close(fd);
            pthread_mutex_destroy(&c->writeLock);
            free(c);
            continue;
        }
        pthread_mutex_lock(&flock_);
        c->next = ports;
        ports = c;
        clientsLive++;
        pthread_mutex_unlock(&flock_);
        pthread_create(&c->reader, NULL, reader_main, c);
    }
    return NULL;
}

NTSTATUS FltCreateCommunicationPort(PFLT_FILTER f, PFLT_PORT *serverPort, POBJECT_ATTRIBUTES oa, PVOID cookie,
                                    PFLT_CONNECT_NOTIFY connectFn, PFLT_DISCONNECT_NOTIFY disconnectFn,
                                    PFLT_MESSAGE_NOTIFY messageFn, LONG maxConnections)
{
    emu_require_irql("FltCreateCommunicationPort", PASSIVE_LEVEL);
    *serverPort = NULL;
    if (f != &theFilter || !theFilter.registered || oa == NULL || oa->ObjectName == NULL || connectFn == NULL ||
        disconnectFn == NULL || maxConnections < 1) {
        return STATUS_INVALID_PARAMETER;
    }
    if (!(oa->Attributes & OBJ_KERNEL_HANDLE)) {
        emu_violation("FltCreateCommunicationPort without OBJ_KERNEL_HANDLE");
    }
    UINT32 *sd = oa->SecurityDescriptor;
    portDefaultSd = sd != NULL && sd[0] == 0x53444546u;
    if (!portDefaultSd) {
        emu_violation("FltCreateCommunicationPort without a security descriptor: anyone could connect");
    }
    size_t n = oa->ObjectName->Length / 2;
    for (size_t i = 0; i < n && i + 1 < sizeof(portName); i++) {
        portName[i] = (char)oa->ObjectName->Buffer[i];
        portName[i + 1] = 0;
    }
    portMax = maxConnections;
    if (emu_fault_should_fail(__builtin_return_address(0))) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if (portPath[0] == 0) {
        snprintf(portPath, sizeof(portPath), "/tmp/latch-emu-%d.sock", (int)getpid());
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", portPath);
    unlink(portPath);
    mode_t old = umask(0177); /* 0600: the owner only, the analogue of SYSTEM + Administrators */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc != 0 || listen(fd, 16) != 0) {
        fprintf(stderr, "emu port: cannot listen on %s: %s\n", portPath, strerror(errno));
        close(fd);
        return STATUS_OBJECT_NAME_COLLISION;
    }
    struct _EMU_FLT_PORT *s = calloc(1, sizeof(*s));
    s->magic = PORT_MAGIC;
    s->isServer = 1;
    s->listenFd = fd;
    s->connectFn = connectFn;
    s->disconnectFn = disconnectFn;
    s->messageFn = messageFn;
    s->serverCookie = cookie;
    s->maxConnections = maxConnections;
    pthread_mutex_lock(&flock_);
    s->next = ports;
    ports = s;
    pthread_mutex_unlock(&flock_);
    pthread_create(&s->acceptor, NULL, acceptor_main, s);
    *serverPort = (PFLT_PORT)s;
    return STATUS_SUCCESS;
}

void FltCloseCommunicationPort(PFLT_PORT serverPort)
{
    emu_require_irql("FltCloseCommunicationPort", PASSIVE_LEVEL);
    struct _EMU_FLT_PORT *s = (struct _EMU_FLT_PORT *)serverPort;
    pthread_mutex_lock(&flock_);
    int found = 0;
    for (struct _EMU_FLT_PORT **pp = &ports; *pp; pp = &(*pp)->next) {
        if (*pp == s && s->isServer) {
            *pp = s->next;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&flock_);
    if (!found) {
        emu_violation("FltCloseCommunicationPort(%p): not an open server port", (void *)serverPort);
        return;
    }
    s->closing = 1;
    shutdown(s->listenFd, SHUT_RDWR);
    pthread_join(s->acceptor, NULL);
    close(s->listenFd);
    unlink(portPath);
    s->magic = 0;
    free(s);
}

static struct _EMU_FLT_PORT *client_live_locked(PFLT_PORT p)
{
    for (struct _EMU_FLT_PORT *c = ports; c; c = c->next) {
        if ((PFLT_PORT)c == p && !c->isServer) {
            return c;
        }
    }
    return NULL;
}

void FltCloseClientPort(PFLT_FILTER f, PFLT_PORT *clientPort)
{
    emu_require_irql("FltCloseClientPort", PASSIVE_LEVEL);
    if (f != &theFilter) {
        emu_violation("FltCloseClientPort: wrong filter %p", (void *)f);
    }
    pthread_mutex_lock(&flock_);
    PFLT_PORT p = *clientPort;
    if (p == NULL) {
        pthread_mutex_unlock(&flock_);
        return;
    }
    struct _EMU_FLT_PORT *c = client_live_locked(p);
    if (c == NULL || c->closedByDriver) {
        pthread_mutex_unlock(&flock_);
        emu_violation("FltCloseClientPort(%p): not an open client port (closed twice?)", (void *)p);
        return;
    }
    c->closedByDriver = 1;
    *clientPort = NULL;
    shutdown(c->fd, SHUT_RDWR);
    pthread_cond_broadcast(&getCond);
    pthread_mutex_unlock(&flock_);
}

static long remaining_ms(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms;
}

NTSTATUS FltSendMessage(PFLT_FILTER f, PFLT_PORT *clientPort, PVOID buf, ULONG len, PVOID reply, PULONG replyLen,
                        PLARGE_INTEGER timeout)
{
    if (KeGetCurrentIrql() > APC_LEVEL) {
        /* seed 000: this is INVALID_PROCESS_ATTACH_ATTEMPT on a real machine */
        emu_require_irql("FltSendMessage", APC_LEVEL);
        return STATUS_UNSUCCESSFUL;
    }
    if (f != &theFilter || !theFilter.registered) {
        emu_violation("FltSendMessage: %p is not a registered filter", (void *)f);
        return STATUS_INVALID_PARAMETER;
    }
    if (reply != NULL || replyLen != NULL) {
        emu_violation("FltSendMessage with a reply buffer is not emulated (the driver must not wait for replies)");
        return STATUS_NOT_IMPLEMENTED;
    }
    if (buf == NULL || len == 0 || len > MAX_FRAME - 17) {
        return STATUS_INVALID_PARAMETER;
    }
    if (timeout != NULL && timeout->QuadPart == 0) {
        /* The WDK: "If Timeout is zero, the minifilter driver is put into a wait state
           indefinitely" (while NULL also means "wait indefinitely"): a zero value is
           at best ambiguous and at worst hangs the caller until the service reads. */
        emu_violation("FltSendMessage with a zero Timeout value: the documentation reads it as 'wait "
                      "indefinitely'; pass a nonzero relative timeout (negative 100 ns units)");
    }
    pthread_mutex_lock(&flock_);
    struct _EMU_FLT_PORT *c = *clientPort ? client_live_locked(*clientPort) : NULL;
    if (c == NULL || c->closedByDriver || c->disconnected) {
        pthread_mutex_unlock(&flock_);
        return STATUS_PORT_DISCONNECTED;
    }
    c->sendsInFlight++;
    UINT64 id = ++c->nextMessageId;
    pthread_mutex_unlock(&flock_);

    UINT32 flen = 1 + 16 + len;
    unsigned char *frame = malloc(4 + flen);
    memcpy(frame, &flen, 4);
    frame[4] = FRAME_MESSAGE;
    memset(frame + 5, 0, 8); /* ReplyLength 0, pad */
    memcpy(frame + 13, &id, 8);
    memcpy(frame + 21, buf, len);

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    long waitMs = -1;
    if (timeout != NULL) {
        LONGLONG t = timeout->QuadPart < 0 ? -timeout->QuadPart : 0; /* absolute times: treated as now */
        waitMs = (long)(t / 10000);
        deadline.tv_sec += waitMs / 1000;
        deadline.tv_nsec += (waitMs % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    NTSTATUS st = STATUS_SUCCESS;
    /* Windows: "If the application calls FilterGetMessage ... before the minifilter
       driver calls FltSendMessage, the message is delivered immediately"; otherwise the
       caller waits for a get until Timeout (STATUS_TIMEOUT, a success code), or forever
       with a NULL Timeout. */
    pthread_mutex_lock(&flock_);
    while (c->strict && c->getsPosted == 0 && !c->disconnected && !c->closedByDriver && st == STATUS_SUCCESS) {
        if (waitMs < 0) {
            pthread_cond_wait(&getCond, &flock_);
        } else {
            struct timespec real;
            long ms = remaining_ms(&deadline);
            if (ms <= 0) {
                st = STATUS_TIMEOUT;
                break;
            }
            clock_gettime(CLOCK_REALTIME, &real);
            real.tv_sec += ms / 1000;
            real.tv_nsec += (ms % 1000) * 1000000L;
            if (real.tv_nsec >= 1000000000L) {
                real.tv_sec++;
                real.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&getCond, &flock_, &real);
        }
    }
    if (st == STATUS_SUCCESS && (c->disconnected || c->closedByDriver)) {
        st = STATUS_PORT_DISCONNECTED;
    }
    if (st == STATUS_SUCCESS && c->strict) {
        c->getsPosted--;
    }
    pthread_mutex_unlock(&flock_);
    if (st != STATUS_SUCCESS) {
        free(frame);
        pthread_mutex_lock(&flock_);
        c->sendsInFlight--;
        pthread_mutex_unlock(&flock_);
        return st;
    }
    pthread_mutex_lock(&c->writeLock);
    size_t off = 0, total = 4 + flen;
    while (off < total) {
        struct pollfd pfd = {c->fd, POLLOUT, 0};
        int wait = waitMs < 0 ? -1 : (int)remaining_ms(&deadline);
        if (off > 0 && (wait >= 0 && wait < 2000)) {
            wait = 2000; /* never leave half a frame behind */
        }
        int pr = poll(&pfd, 1, wait);
        if (pr == 0) {
            if (off == 0) {
                st = STATUS_TIMEOUT; /* nobody took the message in time */
            } else {
                shutdown(c->fd, SHUT_RDWR);
                st = STATUS_PORT_DISCONNECTED;
            }
            break;
        }
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr < 0 || (pfd.revents & (POLLERR | POLLHUP))) {
            st = STATUS_PORT_DISCONNECTED;
            break;
        }
        ssize_t n = send(c->fd, frame + off, total - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            continue;
        }
        if (n <= 0) {
            st = STATUS_PORT_DISCONNECTED;
            break;
        }
        off += (size_t)n;
    }
    pthread_mutex_unlock(&c->writeLock);
    free(frame);
    pthread_mutex_lock(&flock_);
    c->sendsInFlight--;
    pthread_mutex_unlock(&flock_);
    return st;
}

NTSTATUS emu_port_call(const void *in, ULONG inLength, void *out, ULONG outLength, ULONG *returned)
{
    PFLT_MESSAGE_NOTIFY fn = NULL;
    pthread_mutex_lock(&flock_);
    for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
        if (p->isServer) {
            fn = p->messageFn;
        }
    }
    pthread_mutex_unlock(&flock_);
    if (fn == NULL) {
        return STATUS_PORT_DISCONNECTED;
    }
    void *i = user_buffer(in, inLength, 1), *o = user_buffer(NULL, outLength, 0);
    *returned = 0;
    NTSTATUS st = fn(NULL, i, inLength, o, outLength, returned);
    if (*returned <= outLength && *returned > 0) {
        user_buffer_read(o, out, *returned);
    }
    user_buffers_release();
    return st;
}

int emu_port_inject_message(const void *message, ULONG length)
{
    pthread_mutex_lock(&flock_);
    struct _EMU_FLT_PORT *c = NULL;
    for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
        if (!p->isServer && !p->disconnected && !p->closedByDriver) {
            c = p;
        }
    }
    if (c == NULL) {
        pthread_mutex_unlock(&flock_);
        return -1;
    }
    c->sendsInFlight++;
    UINT64 id = ++c->nextMessageId;
    pthread_mutex_unlock(&flock_);
    UINT32 flen = 1 + 16 + length;
    unsigned char *frame = malloc(4 + flen);
    memcpy(frame, &flen, 4);
    frame[4] = FRAME_MESSAGE;
    memset(frame + 5, 0, 8);
    memcpy(frame + 13, &id, 8);
    memcpy(frame + 21, message, length);
    pthread_mutex_lock(&c->writeLock);
    int rc = write_all(c->fd, frame, 4 + flen);
    pthread_mutex_unlock(&c->writeLock);
    free(frame);
    pthread_mutex_lock(&flock_);
    c->sendsInFlight--;
    pthread_mutex_unlock(&flock_);
    return rc;
}

void emu_flt_check_clean(void)
{
    pthread_mutex_lock(&flock_);
    if (theFilter.registered) {
        emu_violation("unload: the filter is still registered with the Filter Manager");
    }
    for (struct _EMU_FLT_PORT *p = ports; p; p = p->next) {
        emu_violation("unload: a %s communication port is still open", p->isServer ? "server" : "client");
    }
    if (sdLive != 0) {
        emu_violation("unload: %d security descriptor(s) never freed with FltFreeSecurityDescriptor", sdLive);
    }
    pthread_mutex_unlock(&flock_);
}

void emu_flt_shutdown_all(void)
{
    for (;;) {
        struct _EMU_FLT_PORT *p;
        pthread_mutex_lock(&flock_);
        p = ports;
        pthread_mutex_unlock(&flock_);
        if (p == NULL) {
            break;
        }
        if (p->isServer) {
            FltCloseCommunicationPort((PFLT_PORT)p);
        } else {
            client_shutdown_and_join(p);
        }
    }
}

void emu_flt_reset(void)
{
    memset(&theFilter, 0, sizeof(theFilter));
    portName[0] = 0;
    portMax = 0;
    portDefaultSd = 0;
    sdLive = 0;
    opCount = 0;
    clientsLive = 0;
    instanceSetupStatus = STATUS_SUCCESS;
}
