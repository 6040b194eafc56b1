/*
 * Wire format tests: golden files shared with the Go side (internal/proto/testdata),
 * every decoder's refusal of every bad field, and random mutations that must never
 * crash a decoder (ASan/UBSan watch).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "t.h"

static const char goldenPath[] = "\\Device\\HarddiskVolume3\\Windows\\System32\\curl.exe";

static ULONG build_golden(const char *name, UINT8 *buf, ULONG cap)
{
    if (strcmp(name, "hello") == 0) {
        LATCH_MSG_HELLO m;
        memset(&m, 0, sizeof(m));
        LatchInitHeader(&m.Header, LATCH_TYPE_HELLO, sizeof(m));
        m.ServiceVersion = 2;
        m.DefaultAction = 2;
        m.PendingTimeoutMs = 30000;
        return LatchEncodeFixed(&m, buf, cap);
    }
    if (strcmp(name, "hello_reply") == 0) {
        LATCH_MSG_HELLO_REPLY m;
        memset(&m, 0, sizeof(m));
        LatchInitHeader(&m.Header, LATCH_TYPE_HELLO_REPLY, sizeof(m));
        m.DriverVersion = 2;
        m.MaxPending = 4096;
        m.MaxPendingPerProcess = 256;
        return LatchEncodeFixed(&m, buf, cap);
    }
    if (strcmp(name, "connect_v4") == 0 || strcmp(name, "connect_v6") == 0) {
        LATCH_MSG_CONNECT_REQUEST m;
        WCHAR path[64];
        memset(&m, 0, sizeof(m));
        if (name[9] == '4') {
            const UINT8 l[4] = {198, 18, 0, 1}, r[4] = {198, 19, 0, 2};
            m.RequestId = 0x0102030405060708ULL;
            m.Layer = 1;
            m.Direction = 1;
            m.IpVersion = 4;
            m.Protocol = 6;
            memcpy(m.LocalAddr, l, 4);
            memcpy(m.RemoteAddr, r, 4);
            m.LocalPort = 49152;
            m.RemotePort = 443;
            m.ProcessId = 4242;
            m.Timestamp = 133000000000000000LL;
            m.PathLen = (UINT16)strlen(goldenPath);
            for (int i = 0; i < m.PathLen; i++) {
                path[i] = (WCHAR)goldenPath[i];
            }
        } else {
            const UINT8 l[16] = {0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
            const UINT8 r[16] = {0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
            m.RequestId = 9;
            m.Layer = 4;
            m.Direction = 2;
            m.IpVersion = 6;
            m.Protocol = 17;
            memcpy(m.LocalAddr, l, 16);
            memcpy(m.RemoteAddr, r, 16);
            m.LocalPort = 5353;
            m.RemotePort = 40000;
            m.ProcessId = 0;
            m.Timestamp = 133000000000000001LL;
        }
        return LatchEncodeConnectRequest(&m, path, buf, cap);
    }
    if (strcmp(name, "verdict") == 0) {
        LATCH_MSG_VERDICT m;
        memset(&m, 0, sizeof(m));
        LatchInitHeader(&m.Header, LATCH_TYPE_VERDICT, sizeof(m));
        m.RequestId = 0x0102030405060708ULL;
        m.Action = 1;
        m.CacheScope = 1;
        m.CacheTtlMs = 60000;
        m.RuleTag = 0x1122334455667788ULL;
        return LatchEncodeFixed(&m, buf, cap);
    }
    if (strcmp(name, "flush") == 0) {
        LATCH_MSG_FLUSH m;
        memset(&m, 0, sizeof(m));
        LatchInitHeader(&m.Header, LATCH_TYPE_FLUSH, sizeof(m));
        m.Flags = 3;
        return LatchEncodeFixed(&m, buf, cap);
    }
    if (strcmp(name, "stats_query") == 0) {
        LATCH_MSG_STATS_QUERY m;
        LatchInitHeader(&m.Header, LATCH_TYPE_STATS_QUERY, sizeof(m));
        return LatchEncodeFixed(&m, buf, cap);
    }
    if (strcmp(name, "stats_reply") == 0) {
        LATCH_MSG_STATS_REPLY m;
        memset(&m, 0, sizeof(m));
        LatchInitHeader(&m.Header, LATCH_TYPE_STATS_REPLY, sizeof(m));
        for (int i = 0; i < 16; i++) {
            m.Counters[i] = (UINT64)(i + 1);
        }
        return LatchEncodeFixed(&m, buf, cap);
    }
    if (strcmp(name, "hit_batch") == 0) {
        LATCH_HIT_RECORD r[2];
        memset(r, 0, sizeof(r));
        r[0].RuleTag = 0x1122334455667788ULL;
        r[0].ProcessId = 4242;
        r[0].Timestamp = 133000000000000000LL;
        inet_pton(AF_INET, "198.18.0.1", r[0].LocalAddr);
        inet_pton(AF_INET, "198.19.0.2", r[0].RemoteAddr);
        r[0].LocalPort = 49152;
        r[0].RemotePort = 443;
        r[0].Direction = 1;
        r[0].IpVersion = 4;
        r[0].Protocol = 6;
        r[0].Action = 1;
        r[1].RuleTag = 9;
        r[1].ProcessId = 7;
        r[1].Timestamp = 133000000000000001LL;
        inet_pton(AF_INET6, "2001:2::1", r[1].LocalAddr);
        inet_pton(AF_INET6, "2001:2::2", r[1].RemoteAddr);
        r[1].LocalPort = 5353;
        r[1].RemotePort = 40000;
        r[1].Direction = 2;
        r[1].IpVersion = 6;
        r[1].Protocol = 17;
        r[1].Action = 2;
        return LatchEncodeHitBatch(r, 2, buf, cap);
    }
    if (strcmp(name, "ack") == 0) {
        LATCH_MSG_ACK m;
        memset(&m, 0, sizeof(m));
        LatchInitHeader(&m.Header, LATCH_TYPE_ACK, sizeof(m));
        m.Status = 0xC0000225u;
        return LatchEncodeFixed(&m, buf, cap);
    }
    return 0;
}

static const char *goldenNames[] = {"hello", "hello_reply", "connect_v4", "connect_v6", "verdict",
                                    "flush", "stats_query", "stats_reply", "ack", "hit_batch", NULL};

/* Decodes a golden file and checks every field against the PROTOCOL.md values. */
static void check_decoded(const char *who, const char *name, const UINT8 *b, ULONG n)
{
    ULONG bad = 0;
    if (strcmp(name, "hello") == 0) {
        LATCH_MSG_HELLO m;
        REQUIRE(NT_SUCCESS(LatchDecodeHello(b, n, &m, &bad)), "%s/%s.bin does not decode (offset %u)", who, name, bad);
        CHECK(m.ServiceVersion == 2 && m.DefaultAction == 2 && m.PendingTimeoutMs == 30000 && m.Reserved == 0,
              "%s/%s.bin fields", who, name);
    } else if (strcmp(name, "hello_reply") == 0) {
        LATCH_MSG_HELLO_REPLY m;
        REQUIRE(NT_SUCCESS(LatchDecodeHelloReply(b, n, &m, &bad)), "%s/%s.bin does not decode", who, name);
        CHECK(m.DriverVersion == 2 && m.MaxPending == 4096 && m.MaxPendingPerProcess == 256 && m.Status == 0,
              "%s/%s.bin fields", who, name);
    } else if (strncmp(name, "connect_", 8) == 0) {
        LATCH_MSG_CONNECT_REQUEST m;
        const WCHAR *path = NULL;
        REQUIRE(NT_SUCCESS(LatchDecodeConnectRequest(b, n, &m, &path, &bad)), "%s/%s.bin does not decode (offset %u)",
                who, name, bad);
        if (name[9] == '4') {
            const UINT8 l[16] = {198, 18, 0, 1}, r[16] = {198, 19, 0, 2};
            CHECK(m.RequestId == 0x0102030405060708ULL && m.Layer == 1 && m.Direction == 1 && m.IpVersion == 4 &&
                      m.Protocol == 6 && memcmp(m.LocalAddr, l, 16) == 0 && memcmp(m.RemoteAddr, r, 16) == 0 &&
                      m.LocalPort == 49152 && m.RemotePort == 443 && m.ProcessId == 4242 &&
                      m.Timestamp == 133000000000000000LL && m.PathLen == strlen(goldenPath),
                  "%s/%s.bin fields", who, name);
            int same = path != NULL;
            for (int i = 0; same && i < m.PathLen; i++) {
                same = path[i] == (WCHAR)goldenPath[i];
            }
            CHECK(same, "%s/%s.bin path", who, name);
        } else {
            const UINT8 l[16] = {0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
            const UINT8 r[16] = {0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
            CHECK(m.RequestId == 9 && m.Layer == 4 && m.Direction == 2 && m.IpVersion == 6 && m.Protocol == 17 &&
                      memcmp(m.LocalAddr, l, 16) == 0 && memcmp(m.RemoteAddr, r, 16) == 0 && m.LocalPort == 5353 &&
                      m.RemotePort == 40000 && m.ProcessId == 0 && m.Timestamp == 133000000000000001LL &&
                      m.PathLen == 0 && path == NULL,
                  "%s/%s.bin fields", who, name);
        }
    } else if (strcmp(name, "verdict") == 0) {
        LATCH_MSG_VERDICT m;
        REQUIRE(NT_SUCCESS(LatchDecodeVerdict(b, n, &m, &bad)), "%s/%s.bin does not decode", who, name);
        CHECK(m.RequestId == 0x0102030405060708ULL && m.Action == 1 && m.CacheScope == 1 && m.CacheTtlMs == 60000 &&
                  m.RuleTag == 0x1122334455667788ULL,
              "%s/%s.bin fields", who, name);
    } else if (strcmp(name, "flush") == 0) {
        LATCH_MSG_FLUSH m;
        REQUIRE(NT_SUCCESS(LatchDecodeFlush(b, n, &m, &bad)), "%s/%s.bin does not decode", who, name);
        CHECK(m.Flags == 3, "%s/%s.bin fields", who, name);
    } else if (strcmp(name, "stats_query") == 0) {
        LATCH_MSG_STATS_QUERY m;
        CHECK(NT_SUCCESS(LatchDecodeStatsQuery(b, n, &m, &bad)), "%s/%s.bin does not decode", who, name);
    } else if (strcmp(name, "stats_reply") == 0) {
        LATCH_MSG_STATS_REPLY m;
        REQUIRE(NT_SUCCESS(LatchDecodeStatsReply(b, n, &m, &bad)), "%s/%s.bin does not decode", who, name);
        int ok = 1;
        for (int i = 0; i < 16; i++) {
            ok = ok && m.Counters[i] == (UINT64)(i + 1);
        }
        CHECK(ok, "%s/%s.bin counters", who, name);
    } else if (strcmp(name, "hit_batch") == 0) {
        LATCH_MSG_HIT_BATCH m;
        const LATCH_HIT_RECORD *r = NULL;
        UINT8 l4[16] = {0}, r4[16] = {0}, l6[16], r6[16];
        inet_pton(AF_INET, "198.18.0.1", l4);
        inet_pton(AF_INET, "198.19.0.2", r4);
        inet_pton(AF_INET6, "2001:2::1", l6);
        inet_pton(AF_INET6, "2001:2::2", r6);
        REQUIRE(NT_SUCCESS(LatchDecodeHitBatch(b, n, &m, &r, &bad)), "%s/%s.bin does not decode", who, name);
        CHECK(m.Count == 2 && r != NULL && r[0].RuleTag == 0x1122334455667788ULL && r[0].ProcessId == 4242 &&
                  r[0].Timestamp == 133000000000000000LL && memcmp(r[0].LocalAddr, l4, 16) == 0 &&
                  memcmp(r[0].RemoteAddr, r4, 16) == 0 && r[0].LocalPort == 49152 && r[0].RemotePort == 443 &&
                  r[0].Direction == 1 && r[0].IpVersion == 4 && r[0].Protocol == 6 && r[0].Action == 1 &&
                  r[1].RuleTag == 9 && r[1].ProcessId == 7 && r[1].Timestamp == 133000000000000001LL &&
                  memcmp(r[1].LocalAddr, l6, 16) == 0 && memcmp(r[1].RemoteAddr, r6, 16) == 0 &&
                  r[1].LocalPort == 5353 && r[1].RemotePort == 40000 && r[1].Direction == 2 && r[1].IpVersion == 6 &&
                  r[1].Protocol == 17 && r[1].Action == 2,
              "%s/%s.bin fields", who, name);
    } else if (strcmp(name, "ack") == 0) {
        LATCH_MSG_ACK m;
        REQUIRE(NT_SUCCESS(LatchDecodeAck(b, n, &m, &bad)), "%s/%s.bin does not decode", who, name);
        CHECK(m.Status == 0xC0000225u, "%s/%s.bin status", who, name);
    }
}

static long read_file(const char *path, UINT8 *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return -1;
    }
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return (long)n;
}

static void test_golden(void)
{
    static UINT8 want[LATCH_MSG_MAX_SIZE], have[LATCH_MSG_MAX_SIZE + 1];
    char path[512];
    for (int i = 0; goldenNames[i] != NULL; i++) {
        const char *name = goldenNames[i];
        ULONG n = build_golden(name, want, sizeof(want));
        REQUIRE(n != 0, "encoding %s failed", name);
        snprintf(path, sizeof(path), "%s/c/%s.bin", t_golden_dir, name);
        if (t_update) {
            snprintf(path, sizeof(path), "%s/c", t_golden_dir);
            mkdir(path, 0755);
            snprintf(path, sizeof(path), "%s/c/%s.bin", t_golden_dir, name);
            FILE *f = fopen(path, "wb");
            REQUIRE(f != NULL, "cannot write %s: %s", path, strerror(errno));
            fwrite(want, 1, n, f);
            fclose(f);
        }
        long got = read_file(path, have, sizeof(have));
        CHECK(got == (long)n && memcmp(have, want, n) == 0,
              "%s differs from this encoding (%ld bytes on disk, %u encoded); run make -C driver update-golden "
              "if the format changed on purpose", path, got, n);
        check_decoded("c", name, want, n);

        snprintf(path, sizeof(path), "%s/go/%s.bin", t_golden_dir, name);
        got = read_file(path, have, sizeof(have));
        if (got < 0) {
            printf("     notice: %s missing, skipped (the Go side writes it)\n", path);
            continue;
        }
        check_decoded("go", name, have, (ULONG)got);
        CHECK(got == (long)n && memcmp(have, want, n) == 0, "go/%s.bin is not byte-identical to the C encoding", name);
    }
}

/* ---- refusals, field by field ---- */
typedef NTSTATUS (*decoder)(const UINT8 *b, ULONG n, ULONG *bad);
static NTSTATUS d_hello(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_HELLO m; return LatchDecodeHello(b, n, &m, bad); }
static NTSTATUS d_reply(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_HELLO_REPLY m; return LatchDecodeHelloReply(b, n, &m, bad); }
static NTSTATUS d_connect(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_CONNECT_REQUEST m; return LatchDecodeConnectRequest(b, n, &m, NULL, bad); }
static NTSTATUS d_hits(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_HIT_BATCH m; return LatchDecodeHitBatch(b, n, &m, NULL, bad); }
static NTSTATUS d_verdict(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_VERDICT m; return LatchDecodeVerdict(b, n, &m, bad); }
static NTSTATUS d_flush(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_FLUSH m; return LatchDecodeFlush(b, n, &m, bad); }
static NTSTATUS d_query(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_STATS_QUERY m; return LatchDecodeStatsQuery(b, n, &m, bad); }
static NTSTATUS d_stats(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_STATS_REPLY m; return LatchDecodeStatsReply(b, n, &m, bad); }
static NTSTATUS d_ack(const UINT8 *b, ULONG n, ULONG *bad) { LATCH_MSG_ACK m; return LatchDecodeAck(b, n, &m, bad); }

typedef struct mutation {
    const char *message;
    ULONG offset;     /* byte to overwrite */
    ULONG size;       /* 1, 2, 4 or 8 */
    UINT64 value;
    ULONG wantOffset; /* the offset the decoder must name */
} mutation;

static const mutation mutations[] = {
    {"hello", 0, 4, 0x4843544D, 0},   {"hello", 4, 2, 1, 4},          {"hello", 4, 2, 3, 4},          {"hello", 6, 2, 0x81, 6},
    {"hello", 6, 2, 0x99, 6},         {"hello", 8, 4, 33, 8},         {"hello", 12, 4, 1, 12},
    {"hello", 20, 4, 0, 20},          {"hello", 20, 4, 3, 20},        {"hello", 24, 4, 99, 24},
    {"hello", 24, 4, 600001, 24},     {"hello", 28, 4, 1, 28},
    {"verdict", 16, 8, 0, 16},        {"verdict", 24, 4, 0, 24},      {"verdict", 24, 4, 4, 24},
    {"verdict", 28, 4, 3, 28},        {"verdict", 32, 4, 0, 32},      {"verdict", 32, 4, 86400001, 32},
    {"verdict", 36, 4, 7, 36},        {"verdict", 6, 2, 4, 8},
    {"flush", 16, 4, 4, 16},          {"flush", 16, 4, 0x80000000u, 16}, {"flush", 20, 4, 1, 20},
    {"hit_batch", 8, 4, 24, 8},       {"hit_batch", 8, 4, 24 + 64 * 65, 8}, {"hit_batch", 16, 4, 1, 16},
    {"hit_batch", 16, 4, 3, 16},      {"hit_batch", 16, 4, 0, 16},    {"hit_batch", 20, 4, 1, 20},
    {"hit_batch", 24 + 60, 1, 0, 24 + 60}, {"hit_batch", 24 + 60, 1, 3, 24 + 60},
    {"hit_batch", 24 + 61, 1, 5, 24 + 61}, {"hit_batch", 24 + 30, 1, 1, 24 + 28},
    {"hit_batch", 24 + 50, 1, 1, 24 + 44}, {"hit_batch", 24 + 63, 1, 0, 24 + 63},
    {"hit_batch", 24 + 63, 1, 3, 24 + 63}, {"hit_batch", 88 + 63, 1, 9, 88 + 63},
    {"ack", 20, 4, 1, 20},
    {"connect_v4", 16, 8, 0, 16},     {"connect_v4", 24, 2, 0, 24},   {"connect_v4", 24, 2, 5, 24},
    {"connect_v4", 26, 1, 0, 26},     {"connect_v4", 26, 1, 3, 26},   {"connect_v4", 26, 1, 2, 26},
    {"connect_v4", 27, 1, 5, 27},     {"connect_v4", 27, 1, 6, 26},   {"connect_v4", 29, 1, 1, 29},
    {"connect_v4", 31, 1, 1, 29},     {"connect_v4", 40, 1, 1, 36},   {"connect_v4", 60, 1, 1, 52},
    {"connect_v4", 68, 4, 1, 68},     {"connect_v4", 88, 2, 4097, 88}, {"connect_v4", 88, 2, 1, 88},
    {"connect_v4", 90, 1, 1, 90},     {"connect_v4", 95, 1, 1, 90},   {"connect_v6", 24, 2, 2, 26},
    {NULL, 0, 0, 0, 0},
};

static decoder decoder_for(const char *name)
{
    if (strcmp(name, "hello") == 0) return d_hello;
    if (strcmp(name, "hello_reply") == 0) return d_reply;
    if (strncmp(name, "connect", 7) == 0) return d_connect;
    if (strcmp(name, "verdict") == 0) return d_verdict;
    if (strcmp(name, "flush") == 0) return d_flush;
    if (strcmp(name, "stats_query") == 0) return d_query;
    if (strcmp(name, "stats_reply") == 0) return d_stats;
    if (strcmp(name, "hit_batch") == 0) return d_hits;
    return d_ack;
}

static void test_refusals(void)
{
    static UINT8 b[LATCH_MSG_MAX_SIZE + 64];
    for (const mutation *m = mutations; m->message != NULL; m++) {
        ULONG n = build_golden(m->message, b, sizeof(b));
        REQUIRE(n != 0, "encode %s", m->message);
        memcpy(b + m->offset, &m->value, m->size);
        ULONG bad = 12345;
        NTSTATUS st = decoder_for(m->message)(b, n, &bad);
        CHECK(st == STATUS_INVALID_PARAMETER, "%s with %u bytes at %u = 0x%llx: accepted", m->message, m->size,
              m->offset, (unsigned long long)m->value);
        CHECK(bad == m->wantOffset, "%s mutated at %u: decoder names offset %u, want %u", m->message, m->offset, bad,
              m->wantOffset);
    }
    /* every message: every shorter length and longer lengths are refused */
    for (int i = 0; goldenNames[i] != NULL; i++) {
        ULONG n = build_golden(goldenNames[i], b, sizeof(b));
        decoder d = decoder_for(goldenNames[i]);
        ULONG bad;
        CHECK(NT_SUCCESS(d(b, n, &bad)), "%s: the valid message is refused", goldenNames[i]);
        for (ULONG len = 0; len < n; len++) {
            CHECK(d(b, len, &bad) == STATUS_INVALID_PARAMETER, "%s truncated to %u accepted", goldenNames[i], len);
        }
        for (ULONG extra = 1; extra <= 9; extra++) {
            memset(b + n, 0, extra);
            CHECK(d(b, n + extra, &bad) == STATUS_INVALID_PARAMETER, "%s with %u extra bytes accepted",
                  goldenNames[i], extra);
        }
        CHECK(d(NULL, n, &bad) == STATUS_INVALID_PARAMETER, "%s: NULL buffer accepted", goldenNames[i]);
        /* a header claiming the right length for another type */
        UINT16 other = goldenNames[i][0] == 'a' ? LATCH_TYPE_FLUSH : LATCH_TYPE_ACK;
        memcpy(b + 6, &other, 2);
        CHECK(d(b, n, &bad) == STATUS_INVALID_PARAMETER, "%s retyped accepted", goldenNames[i]);
    }
    /* encoders refuse to produce what decoders refuse */
    LATCH_MSG_VERDICT v;
    memset(&v, 0, sizeof(v));
    LatchInitHeader(&v.Header, LATCH_TYPE_VERDICT, sizeof(v));
    v.RequestId = 1;
    v.Action = 9;
    CHECK(LatchEncodeFixed(&v, b, sizeof(b)) == 0, "encoder produced a verdict with action 9");
    {
        /* a rule tag names a cached verdict's rule: with scope 0 it is refused */
        LATCH_MSG_VERDICT t;
        ULONG bad = 0;
        memset(&t, 0, sizeof(t));
        LatchInitHeader(&t.Header, LATCH_TYPE_VERDICT, sizeof(t));
        t.RequestId = 1;
        t.Action = LATCH_ACTION_PERMIT;
        t.RuleTag = 5;
        CHECK(LatchDecodeVerdict(&t, sizeof(t), &v, &bad) == STATUS_INVALID_PARAMETER && bad == 40,
              "a rule tag with scope 0 accepted (bad offset %u)", bad);
        LATCH_HIT_RECORD none[1];
        memset(none, 0, sizeof(none));
        CHECK(LatchEncodeHitBatch(none, 0, b, sizeof(b)) == 0, "encoder produced an empty hit batch");
        CHECK(LatchEncodeHitBatch(none, 1, b, sizeof(b)) == 0, "encoder produced a record with direction 0");
    }
    v.Action = 1;
    CHECK(LatchEncodeFixed(&v, b, 39) == 0, "encoder wrote into a short buffer");
    LATCH_MSG_CONNECT_REQUEST c;
    memset(&c, 0, sizeof(c));
    c.RequestId = 1;
    c.Layer = 1;
    c.Direction = 2; /* disagrees with the layer */
    c.IpVersion = 4;
    CHECK(LatchEncodeConnectRequest(&c, NULL, b, sizeof(b)) == 0, "encoder produced a connect with direction 2 on layer 1");
    c.Direction = 1;
    c.PathLen = 5000;
    CHECK(LatchEncodeConnectRequest(&c, (const WCHAR *)b, b, sizeof(b)) == 0, "encoder accepted path_len 5000");
}

/* Random byte mutations of valid messages fed to every decoder: never a crash, and a
   message accepted by a decoder re-encodes to the same bytes. */
static void test_mutation_fuzz(void)
{
    static UINT8 b[LATCH_MSG_MAX_SIZE + 16], again[LATCH_MSG_MAX_SIZE + 16];
    unsigned seed = 12345;
    decoder all[] = {d_hello, d_reply, d_connect, d_verdict, d_flush, d_query, d_stats, d_ack, d_hits};
    long accepted = 0;
    for (int round = 0; round < 60000; round++) {
        const char *name = goldenNames[round % 10];
        ULONG n = build_golden(name, b, sizeof(b));
        int flips = 1 + (int)(rand_r(&seed) % 4);
        for (int f = 0; f < flips; f++) {
            b[rand_r(&seed) % n] = (UINT8)rand_r(&seed);
        }
        ULONG len = (rand_r(&seed) % 8 == 0) ? (ULONG)(rand_r(&seed) % (n + 8)) : n;
        UINT8 *copy = malloc(len ? len : 1); /* exact size: ASan catches overreads */
        memcpy(copy, b, len);
        for (size_t d = 0; d < sizeof(all) / sizeof(all[0]); d++) {
            ULONG bad;
            if (NT_SUCCESS(all[d](copy, len, &bad))) {
                accepted++;
                if (all[d] == d_connect) {
                    LATCH_MSG_CONNECT_REQUEST m;
                    const WCHAR *p;
                    LatchDecodeConnectRequest(copy, len, &m, &p, NULL);
                    CHECK(LatchEncodeConnectRequest(&m, p, again, sizeof(again)) == len && memcmp(again, copy, len) == 0,
                          "accepted connect request does not re-encode identically");
                } else if (all[d] == d_hits) {
                    LATCH_MSG_HIT_BATCH m;
                    const LATCH_HIT_RECORD *r;
                    LatchDecodeHitBatch(copy, len, &m, &r, NULL);
                    CHECK(LatchEncodeHitBatch(r, m.Count, again, sizeof(again)) == len && memcmp(again, copy, len) == 0,
                          "accepted hit batch does not re-encode identically");
                } else {
                    CHECK(LatchEncodeFixed(copy, again, sizeof(again)) == len && memcmp(again, copy, len) == 0,
                          "accepted %s does not re-encode identically", name);
                }
            }
        }
        free(copy);
    }
    CHECK(accepted > 0, "no mutation was ever accepted: the fuzz checks nothing");
}

const test_case proto_tests[] = {
    {"proto_golden_files", "proto", test_golden, 0},
    {"proto_refuses_every_bad_field", "proto", test_refusals, 0},
    {"proto_mutation_fuzz", "proto", test_mutation_fuzz, 0},
    {NULL, NULL, NULL, 0},
};
