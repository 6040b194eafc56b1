// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// latch's record of who sent each DNS query to the local resolver (dnsproxy): a
// cgroup/skb egress program that, for every UDP datagram sent to the resolver's
// address and port, records the sending socket's owner record (the one the
// connect/sendmsg/bind hooks keep per socket cookie, see ebpf_linux.go) under the
// datagram's client address and port, server address and port and DNS id. The
// resolver then finds the program that sent a query with one map lookup (and
// delete) instead of a sock_diag request and a lookup by cookie. See
// dnsquery_linux.go for why the key is exact.
//
// Built by `go generate` (bpf2go, clang); the objects are committed.

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IPPROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

// The record the connect/sendmsg/bind hooks write per socket cookie (connRecord in
// ebpf_linux.go; 80 bytes).
struct conn_record {
	__u64 pid_tgid;
	__u64 uid_gid;
	__u64 boot_ns;
	__u8 comm[16];
	__u64 start_ns;
	__u64 exec_id;
	__u64 exe_ino;
	__u64 exe_flags;
	__u64 exe_mnt;
};

// One query's key. Addresses are IPv6, IPv4 as IPv4-mapped (::ffff:a.b.c.d); ports
// and id in host order.
struct dq_key {
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 id;
	__u16 pad;
};

#define DQ_RECORD 1    // rec is the socket's record (else it had none)
#define DQ_AMBIGUOUS 2 // set by the resolver: a datagram with this key is not to be credited

struct dq_sender {
	__u64 cookie;  // the sending socket's cookie
	__u64 sent_ns; // bpf_ktime_get_ns (CLOCK_MONOTONIC) when it was sent
	// others counts datagrams with the same key that other sockets sent before
	// this one was read: the resolver cannot tell which is whose.
	__u64 others;
	__u32 uid;   // the socket's owner (bpf_get_socket_uid)
	__u32 flags; // DQ_*
	struct conn_record rec;
};

// The conns map of the connect/sendmsg/bind hooks, replaced at load by theirs.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct conn_record);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct dq_key);
	__type(value, struct dq_sender);
} senders SEC(".maps");

// The resolver's network namespace (its cookie), address (IPv4-mapped for IPv4) and
// port, set at load.
volatile const __u64 netns_cookie;
volatile const __u8 server_addr[16];
volatile const __u16 server_port;
volatile const __u8 server_is4;

// A datagram already in the map longer than this is one the resolver never read
// (its queue overflowed): a new datagram with its key replaces it.
#define STALE_NS (5ULL * 1000 * 1000 * 1000)

// The most segments a UDP_SEGMENT datagram may have (the kernel's
// UDP_MAX_SEGMENTS, 128 since Linux 6.9; 64 before).
#define MAX_SEGS 128

static __always_inline int record(struct __sk_buff *skb, struct dq_key *key)
{
	struct dq_sender v = {};
	v.cookie = bpf_get_socket_cookie(skb);
	v.sent_ns = bpf_ktime_get_ns();
	v.uid = bpf_get_socket_uid(skb);
	struct conn_record *rec = bpf_map_lookup_elem(&conns, &v.cookie);
	if (rec) {
		v.rec = *rec;
		v.flags = DQ_RECORD;
	}
	for (int i = 0; i < 2; i++) {
		if (bpf_map_update_elem(&senders, key, &v, BPF_NOEXIST) == 0)
			return 1;
		struct dq_sender *old = bpf_map_lookup_elem(&senders, key);
		if (!old)
			continue; // read (and deleted) meanwhile: try again
		if (old->cookie == v.cookie && old->others == 0 && !(old->flags & DQ_AMBIGUOUS)) {
			// The same socket again (a retransmission): the newer record.
			bpf_map_update_elem(&senders, key, &v, BPF_EXIST);
			return 1;
		}
		// (A record a little newer than this datagram's clock reading was made on
		// another CPU meanwhile: a clash, not one to replace.)
		if (v.sent_ns > old->sent_ns && v.sent_ns - old->sent_ns > STALE_NS) {
			bpf_map_update_elem(&senders, key, &v, BPF_ANY);
			return 1;
		}
		__sync_fetch_and_add(&old->others, 1);
		return 1;
	}
	return 1;
}

SEC("cgroup_skb/egress")
int latch_dnsquery(struct __sk_buff *skb)
{
	struct dq_key key = {};
	__u32 off;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (!server_is4)
			return 1;
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return 1;
		if ((h[0] >> 4) != 4 || (h[0] & 0xf) < 5 || h[9] != IPPROTO_UDP)
			return 1;
		if (((h[6] & 0x1f) | h[7]) != 0)
			return 1; // not a first fragment: no UDP header
		if (h[16] != server_addr[12] || h[17] != server_addr[13] || h[18] != server_addr[14] || h[19] != server_addr[15])
			return 1;
		key.client[10] = 0xff;
		key.client[11] = 0xff;
		key.client[12] = h[12];
		key.client[13] = h[13];
		key.client[14] = h[14];
		key.client[15] = h[15];
		key.server[10] = 0xff;
		key.server[11] = 0xff;
		key.server[12] = h[16];
		key.server[13] = h[17];
		key.server[14] = h[18];
		key.server[15] = h[19];
		off = (h[0] & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (server_is4)
			return 1;
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)))
			return 1;
		for (int i = 0; i < 16; i++)
			if (h[24 + i] != server_addr[i])
				return 1;
		__u8 next = h[6];
		off = 40;
		// Extension headers the kernel lets a program add (hop-by-hop, routing,
		// destination options; a fragment header of a first fragment).
		for (int i = 0; i < 6 && next != IPPROTO_UDP; i++) {
			__u8 e[4];
			if (bpf_skb_load_bytes(skb, off, e, sizeof(e)))
				return 1;
			switch (next) {
			case 0:  // hop-by-hop
			case 43: // routing
			case 60: // destination options
				off += ((__u32)e[1] + 1) * 8;
				break;
			case 44: // fragment
				if (((e[2] << 8 | e[3]) & 0xfff8) != 0)
					return 1;
				off += 8;
				break;
			default:
				return 1;
			}
			next = e[0];
		}
		if (next != IPPROTO_UDP)
			return 1;
		__builtin_memcpy(key.client, h + 8, 16);
		__builtin_memcpy(key.server, h + 24, 16);
	} else {
		return 1;
	}
	// Another namespace's datagram to the same address goes to its own loopback,
	// never to the resolver.
	if (bpf_get_netns_cookie(skb) != netns_cookie)
		return 1;
	__u8 u[10]; // UDP header and the DNS id
	if (bpf_skb_load_bytes(skb, off, u, sizeof(u)))
		return 1;
	__u16 dport = (__u16)u[2] << 8 | u[3];
	if (dport != server_port)
		return 1;
	key.client_port = (__u16)u[0] << 8 | u[1];
	key.server_port = dport;
	key.id = (__u16)u[8] << 8 | u[9];
	__u32 size = skb->gso_size;
	if (size == 0)
		return record(skb, &key);
	// A datagram the sender had cut into segments (UDP_SEGMENT): this program sees
	// it once, before it is cut, and the resolver reads each segment as a query of
	// its own. Each segment is recorded under its id, else a later segment would
	// be a datagram with no record of its own, and would take the record another
	// socket left under its key. (The kernel sends no more than MAX_SEGS; a datagram
	// of more, which could not all be recorded, would be refused.)
	__u32 segs = skb->gso_segs;
	if (segs > MAX_SEGS)
		return 0;
	for (__u32 i = 0; i < MAX_SEGS && i < segs; i++) {
		__u8 id[2];
		if (bpf_skb_load_bytes(skb, off + 8 + i * size, id, sizeof(id)))
			break; // a last segment too short to carry an id: no query
		key.id = (__u16)id[0] << 8 | id[1];
		record(skb, &key);
	}
	return 1;
}

char __license[] SEC("license") = "Dual MIT/GPL";
