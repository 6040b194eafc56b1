/*
 * latch-sim: the real driver under the kernel emulation, as a process. The driver's
 * Filter Manager port is served on --port (framing in driver/PROTOCOL.md); a
 * line-based control socket on --control makes connections and reads results.
 * See driver/emu/README.md for the commands.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "emu_harness.h"
#include "../include/latch_proto.h"

DRIVER_INITIALIZE DriverEntry;

static const char *counterNames[LATCH_STATS_COUNT] = {
    "classified", "pended", "permitted", "blocked", "timed_out", "no_client_default", "cap_exceeded",
    "cache_hits", "send_failures", "malformed_messages", "flow_contexts_live", "pending_now",
    "verdicts_late", "reauthorized", "alloc_failures", "hits_lost"};

#define MAX_TAGS 65536
static struct { char *tag; emu_conn *conn; } tags[MAX_TAGS];
static int tagCount;
static pthread_mutex_t tagLock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cmdLock = PTHREAD_MUTEX_INITIALIZER;
static int sigPipe[2];
static const char *controlPath;
static const char *portPath;

static emu_conn *find_tag(const char *tag)
{
    emu_conn *c = NULL;
    pthread_mutex_lock(&tagLock);
    for (int i = 0; i < tagCount; i++) {
        if (strcmp(tags[i].tag, tag) == 0) {
            c = tags[i].conn;
        }
    }
    pthread_mutex_unlock(&tagLock);
    return c;
}

static const char *state_name(int s)
{
    return s == EMU_CONN_PERMIT ? "permit" : s == EMU_CONN_BLOCK ? "block" : "pending";
}

static int parse_addr(int v6, const char *s, UINT8 out[16])
{
    memset(out, 0, 16);
    return inet_pton(v6 ? AF_INET6 : AF_INET, s, out) == 1;
}

static int parse_port(const char *s, UINT16 *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < 0 || v > 65535) {
        return 0;
    }
    *out = (UINT16)v;
    return 1;
}

static void cmd_connect(char *args, char *reply, size_t n)
{
    char *tok[8];
    int i;
    for (i = 0; i < 8; i++) {
        tok[i] = strsep(&args, " ");
        if (tok[i] == NULL || *tok[i] == 0) {
            snprintf(reply, n, "error connect: want TAG v4|v6 out|in tcp|udp|icmp LADDR LPORT RADDR RPORT pid=N "
                               "path=NTPATH [irql=dispatch|passive]");
            return;
        }
    }
    emu_conn_params p;
    memset(&p, 0, sizeof(p));
    p.irql = DISPATCH_LEVEL;
    if (strcmp(tok[1], "v4") != 0 && strcmp(tok[1], "v6") != 0) {
        snprintf(reply, n, "error connect: ip version %s: want v4 or v6", tok[1]);
        return;
    }
    p.v6 = tok[1][1] == '6';
    if (strcmp(tok[2], "out") != 0 && strcmp(tok[2], "in") != 0) {
        snprintf(reply, n, "error connect: direction %s: want out or in", tok[2]);
        return;
    }
    p.inbound = strcmp(tok[2], "in") == 0;
    if (strcmp(tok[3], "tcp") == 0) {
        p.protocol = 6;
    } else if (strcmp(tok[3], "udp") == 0) {
        p.protocol = 17;
    } else if (strcmp(tok[3], "icmp") == 0) {
        p.protocol = p.v6 ? 58 : 1;
    } else {
        snprintf(reply, n, "error connect: protocol %s: want tcp, udp or icmp", tok[3]);
        return;
    }
    if (!parse_addr(p.v6, tok[4], p.local) || !parse_port(tok[5], &p.localPort) ||
        !parse_addr(p.v6, tok[6], p.remote) || !parse_port(tok[7], &p.remotePort)) {
        snprintf(reply, n, "error connect: bad address or port in %s %s %s %s", tok[4], tok[5], tok[6], tok[7]);
        return;
    }
    /* pid=N, then path= takes the rest of the line (NT paths contain spaces) except a
       trailing " irql=..." */
    if (args == NULL || strncmp(args, "pid=", 4) != 0) {
        snprintf(reply, n, "error connect: missing pid=N");
        return;
    }
    char *pidText = strsep(&args, " ");
    char *end;
    unsigned long long pid = strtoull(pidText + 4, &end, 10);
    if (pidText[4] == 0 || *end != 0) {
        snprintf(reply, n, "error connect: bad %s", pidText);
        return;
    }
    p.pid = pid;
    if (args == NULL || strncmp(args, "path=", 5) != 0) {
        snprintf(reply, n, "error connect: missing path=NTPATH");
        return;
    }
    char *path = args + 5;
    char *irql = strstr(path, " irql=");
    if (irql == NULL && strncmp(path, "irql=", 5) == 0) {
        irql = path - 1;
    }
    if (irql != NULL) {
        *irql = 0;
        const char *v = irql + 6;
        if (strcmp(v, "dispatch") == 0) {
            p.irql = DISPATCH_LEVEL;
        } else if (strcmp(v, "passive") == 0) {
            p.irql = PASSIVE_LEVEL;
        } else {
            snprintf(reply, n, "error connect: irql=%s: want dispatch or passive", v);
            return;
        }
    }
    p.path = *path ? path : NULL;
    if (find_tag(tok[0]) != NULL) {
        snprintf(reply, n, "error connect: tag %s already used", tok[0]);
        return;
    }
    pthread_mutex_lock(&tagLock);
    int full = tagCount >= MAX_TAGS;
    pthread_mutex_unlock(&tagLock);
    if (full) {
        snprintf(reply, n, "error connect: too many connections");
        return;
    }
    emu_conn *c = emu_connect(&p);
    pthread_mutex_lock(&tagLock);
    tags[tagCount].tag = strdup(tok[0]);
    tags[tagCount].conn = c;
    tagCount++;
    pthread_mutex_unlock(&tagLock);
    snprintf(reply, n, "ok %s", tok[0]);
}

static void cmd_stats(char *reply, size_t n)
{
    LATCH_MSG_STATS_QUERY q;
    LATCH_MSG_STATS_REPLY raw, r;
    ULONG got = 0;
    memset(&q, 0, sizeof(q));
    LatchInitHeader(&q.Header, LATCH_TYPE_STATS_QUERY, sizeof(q));
    NTSTATUS st = emu_port_call(&q, sizeof(q), &raw, sizeof(raw), &got);
    if (!NT_SUCCESS(st) || !NT_SUCCESS(LatchDecodeStatsReply(&raw, got, &r, NULL))) {
        snprintf(reply, n, "error stats: the driver answered 0x%08x", (unsigned)st);
        return;
    }
    size_t off = 0;
    reply[0] = 0;
    for (int i = 0; i < LATCH_STATS_COUNT && off < n; i++) {
        off += (size_t)snprintf(reply + off, n - off, "%s%s=%llu", i ? " " : "", counterNames[i],
                                (unsigned long long)r.Counters[i]);
    }
}

static void violations_line(char *reply, size_t n, const char *none)
{
    int count = emu_violation_count();
    if (count == 0) {
        snprintf(reply, n, "%s", none);
        return;
    }
    size_t off = (size_t)snprintf(reply, n, "violations:");
    for (int i = 0; i < count && i < 256 && off < n; i++) {
        off += (size_t)snprintf(reply + off, n - off, "%s %s", i ? ";" : "", emu_violation_text(i));
    }
}

static void finish(void)
{
    char line[65536];
    emu_unload();
    violations_line(line, sizeof(line), "clean");
    printf("%s\n", line);
    fflush(stdout);
}

static int handle(char *line, char *reply, size_t n)
{
    char *args = line;
    char *cmd = strsep(&args, " ");
    if (strcmp(cmd, "connect") == 0) {
        cmd_connect(args ? args : (char *)"", reply, n);
    } else if (strcmp(cmd, "outcome") == 0 || strcmp(cmd, "close") == 0 || strcmp(cmd, "wait") == 0 ||
               strcmp(cmd, "data") == 0) {
        char *tag = args ? strsep(&args, " ") : NULL;
        emu_conn *c = tag ? find_tag(tag) : NULL;
        if (c == NULL) {
            snprintf(reply, n, "error %s: unknown tag %s", cmd, tag ? tag : "(none)");
        } else if (strcmp(cmd, "outcome") == 0) {
            snprintf(reply, n, "%s", state_name(emu_conn_state(c)));
        } else if (strcmp(cmd, "close") == 0) {
            emu_conn_close(c);
            snprintf(reply, n, "ok %s", tag);
        } else if (strcmp(cmd, "wait") == 0) {
            char *end;
            long ms = args ? strtol(args, &end, 10) : -1;
            if (args == NULL || *end != 0 || ms < 0 || ms > 600000) {
                snprintf(reply, n, "error wait: want wait TAG MS (0..600000)");
            } else {
                snprintf(reply, n, "%s", state_name(emu_conn_wait(c, (int)ms)));
            }
        } else {
            char *bytes = args ? strsep(&args, " ") : NULL;
            char *end;
            long b = bytes ? strtol(bytes, &end, 10) : -1;
            if (bytes == NULL || *end != 0 || b < 0 || b > 1 << 30 || args == NULL ||
                (strcmp(args, "in") != 0 && strcmp(args, "out") != 0)) {
                snprintf(reply, n, "error data: want data TAG BYTES in|out");
            } else {
                emu_conn_data(c, (ULONG)b, strcmp(args, "in") == 0);
                snprintf(reply, n, "ok %s", tag);
            }
        }
    } else if (strcmp(cmd, "inject") == 0) {
        /* inject HEX: a MESSAGE frame with these bytes, as if the driver sent them */
        static unsigned char bytes[65536];
        size_t count = 0, hexLen = args != NULL ? strlen(args) : 0;
        int bad = hexLen == 0 || hexLen % 2 != 0 || hexLen / 2 > sizeof(bytes);
        for (size_t i = 0; !bad && i < hexLen; i += 2) {
            unsigned v;
            char pair[3] = {args[i], args[i + 1], 0};
            char *end;
            v = (unsigned)strtoul(pair, &end, 16);
            bad = *end != 0;
            bytes[count++] = (unsigned char)v;
        }
        if (bad) {
            snprintf(reply, n, "error inject: want inject HEXBYTES (even length, at most 65536 bytes)");
        } else if (emu_port_inject_message(bytes, (ULONG)count) != 0) {
            snprintf(reply, n, "error inject: no client connected");
        } else {
            snprintf(reply, n, "ok");
        }
    } else if (strcmp(cmd, "stats") == 0) {
        cmd_stats(reply, n);
    } else if (strcmp(cmd, "violations") == 0) {
        violations_line(reply, n, "none");
    } else if (strcmp(cmd, "unload") == 0) {
        emu_unload();
        violations_line(reply, n, "clean");
        return 1;
    } else {
        snprintf(reply, n, "error unknown command %s", cmd);
    }
    return 0;
}

static void cleanup_files(void)
{
    unlink(controlPath);
    unlink(portPath);
}

static void *control_client(void *arg)
{
    int fd = (int)(intptr_t)arg;
    FILE *in = fdopen(fd, "r");
    char line[8192];
    char *reply = malloc(65536);
    while (in != NULL && fgets(line, sizeof(line), in) != NULL) {
        size_t len = strlen(line);
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = 0;
        }
        if (len == 0) {
            continue;
        }
        /* One command at a time across control connections, except `wait`, which
           only reads state: a waiting connection never holds up another's commands. */
        int waiting = strncmp(line, "wait ", 5) == 0;
        if (!waiting) {
            pthread_mutex_lock(&cmdLock);
        }
        int quit = handle(line, reply, 65536);
        size_t rl = strlen(reply);
        reply[rl] = '\n';
        if (send(fd, reply, rl + 1, MSG_NOSIGNAL) < 0) {
            quit = 1;
        }
        if (quit) {
            int code = emu_violation_count() == 0 ? 0 : 1;
            cleanup_files();
            _exit(code);
        }
        if (!waiting) {
            pthread_mutex_unlock(&cmdLock);
        }
    }
    free(reply);
    if (in != NULL) {
        fclose(in);
    }
    return NULL;
}

static void on_signal(int sig)
{
    char c = (char)sig;
    if (write(sigPipe[1], &c, 1) < 0) {
        _exit(3);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: latch-sim --port PATH --control PATH [--default permit|block] [--timeout-ms N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *def = NULL;
    long timeoutMs = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            portPath = argv[++i];
        } else if (strcmp(argv[i], "--control") == 0 && i + 1 < argc) {
            controlPath = argv[++i];
        } else if (strcmp(argv[i], "--default") == 0 && i + 1 < argc) {
            def = argv[++i];
        } else if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) {
            char *end;
            timeoutMs = strtol(argv[++i], &end, 10);
            if (*end != 0 || timeoutMs < LATCH_MIN_TIMEOUT_MS || timeoutMs > LATCH_MAX_TIMEOUT_MS) {
                fprintf(stderr, "latch-sim: --timeout-ms %s: want %d..%d\n", argv[i], LATCH_MIN_TIMEOUT_MS,
                        LATCH_MAX_TIMEOUT_MS);
                return 2;
            }
        } else {
            usage();
        }
    }
    if (portPath == NULL || controlPath == NULL) {
        usage();
    }
    if (strlen(portPath) >= sizeof(((struct sockaddr_un *)0)->sun_path) ||
        strlen(controlPath) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "latch-sim: socket paths must be shorter than 108 bytes\n");
        return 2;
    }
    emu_reset();
    if (def != NULL) {
        if (strcmp(def, "permit") == 0) {
            emu_registry_set_dword("DefaultAction", LATCH_ACTION_PERMIT);
        } else if (strcmp(def, "block") == 0) {
            emu_registry_set_dword("DefaultAction", LATCH_ACTION_BLOCK);
        } else {
            fprintf(stderr, "latch-sim: --default %s: want permit or block\n", def);
            return 2;
        }
    }
    if (timeoutMs > 0) {
        emu_registry_set_dword("PendingTimeoutMs", (ULONG)timeoutMs);
    }
    emu_set_port_path(portPath);
    NTSTATUS st = emu_load(DriverEntry);
    if (!NT_SUCCESS(st)) {
        fprintf(stderr, "latch-sim: DriverEntry failed: 0x%08x\n", (unsigned)st);
        return 1;
    }
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", controlPath);
    unlink(controlPath);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 8) != 0) {
        fprintf(stderr, "latch-sim: control socket %s: %s\n", controlPath, strerror(errno));
        finish();
        return 1;
    }
    if (pipe(sigPipe) != 0) {
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    printf("ready port=%s control=%s\n", portPath, controlPath);
    fflush(stdout);
    for (;;) {
        struct pollfd pfd[2] = {{lfd, POLLIN, 0}, {sigPipe[0], POLLIN, 0}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (pfd[1].revents) {
            break;
        }
        if (pfd[0].revents & POLLIN) {
            int cfd = accept(lfd, NULL, NULL);
            if (cfd >= 0) {
                pthread_t t;
                pthread_create(&t, NULL, control_client, (void *)(intptr_t)cfd);
                pthread_detach(t);
            }
        }
    }
    pthread_mutex_lock(&cmdLock);
    finish();
    int code = emu_violation_count() == 0 ? 0 : 1;
    cleanup_files();
    _exit(code);
}
