// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// latch's kernel fast path: cgroup connect4/connect6 hooks that decide a TCP
// connection from an earlier decision of a rule, and a socket filter that the
// ruleset's xt_bpf match runs on the first datagram of a UDP flow, so that neither
// crosses to user space. A cgroup sock_ops program completes the record of a TCP
// decision with the local address and port the kernel chose. See doc.go for what
// enters the map and why the cache is exact.
//
// Built by `go generate` (bpf2go, clang); the objects are committed.

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOL_SOCKET 1
#define SO_MARK 36
#define SOCK_DGRAM 2
#define PF_KTHREAD 0x00200000
#define TCP_SYN_SENT 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCPF_SYN 0x02
#define TCPF_ACK 0x10

// Marks: see internal/intercept/linux (MarkMask, MarkReject, MarkFastAllow,
// MarkFastFlow, MarkFastRedecide). Every one is tested by its exact value under
// MARK_MASK, never by a bit.
#define MARK_MASK 0x70000000u
#define MARK_ALLOW 0x10000000u
#define MARK_REJECT 0x20000000u
#define MARK_FAST_ALLOW 0x30000000u
#define MARK_FAST_REDECIDE 0x50000000u
#define MARK_FAST_FLOW 0x60000000u

// The reader is woken only once this much waits in the ring buffer; it also reads
// on its own every few tens of milliseconds (Run). One wakeup per connection would
// cost a context switch per connection.
#define WAKEUP_BYTES (32 * 1024)

// Actions in a verdict.
#define ACT_ALLOW 1
#define ACT_REJECT 2

// Counters (per CPU).
enum { STAT_HIT_ALLOW, STAT_HIT_REJECT, STAT_MISS, STAT_STALE, STAT_NO_IDENTITY, STAT_RING_LOST, STAT_ENDS_LOST, STAT_SIMOPEN_DROPPED, STAT_MAX };

// Just the kernel members the program reads; CO-RE relocates them against the
// running kernel's BTF.
struct super_block { __u32 s_dev; } __attribute__((preserve_access_index));
struct inode { unsigned long i_ino; struct super_block *i_sb; unsigned int i_nlink; } __attribute__((preserve_access_index));
struct hlist_bl_node { struct hlist_bl_node **pprev; } __attribute__((preserve_access_index));
struct dentry { struct dentry *d_parent; struct inode *d_inode; struct hlist_bl_node d_hash; } __attribute__((preserve_access_index));
struct vfsmount { struct dentry *mnt_root; } __attribute__((preserve_access_index));
struct mount { struct vfsmount mnt; int mnt_id; } __attribute__((preserve_access_index));
struct path { struct vfsmount *mnt; struct dentry *dentry; } __attribute__((preserve_access_index));
struct file { struct path f_path; struct inode *f_inode; unsigned int f_flags; } __attribute__((preserve_access_index));
struct mm_struct { struct file *exe_file; } __attribute__((preserve_access_index));
struct ns_common { unsigned int inum; } __attribute__((preserve_access_index));
struct user_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
struct cred { struct user_namespace *user_ns; } __attribute__((preserve_access_index));
struct task_struct {
	unsigned int flags;
	struct mm_struct *mm;
	const struct cred *real_cred;
	const struct cred *cred;
} __attribute__((preserve_access_index));
typedef struct { __u32 val; } kuid_t;
struct sock { kuid_t sk_uid; __u8 sk_shutdown; } __attribute__((preserve_access_index));

struct fp_key {
	__u64 ino;        // the executable's inode number
	__u64 parent_ino; // its directory's inode number
	__u32 dev;        // the executable's file system (kernel dev_t: major << 20 | minor)
	__u32 mnt_id;     // the mount it was executed through
	__u32 uid;        // the socket's owner (what NFQUEUE reports)
	__u16 port;       // remote port, host order
	__u8 family;      // 4 or 6
	__u8 proto;       // IPPROTO_TCP or IPPROTO_UDP
	__u8 addr[16];    // remote address: IPv4 in the first 4 bytes, network order
};

// The task that created a UDP socket (cgroup/sock_create), by the socket's cookie:
// the UDP match decides a datagram only if the task sending it is of that process
// and runs the same executable (see latch_fast_udp).
struct fp_owner {
	__u64 ino;
	__u64 parent_ino;
	__u32 dev;
	__u32 mnt_id;
	__u32 tgid;
	__u32 pad;
};

struct fp_verdict {
	__u64 gen;        // rule generation the decision was made under
	__u64 expires_ns; // CLOCK_BOOTTIME after which the entry misses
	__u64 rule_id;
	__u32 action; // ACT_*
	__u32 pad;
};

struct fp_event {
	__u64 boot_ns;
	__u64 rule_id;
	struct fp_key key;
	__u32 pid;
	__u32 action;
	__u8 local[16];   // local address, of key.family: IPv4 in the first 4 bytes
	__u16 local_port; // host order; 0: not known (the local fields are unset)
	__u16 pad;
	__u32 pad2;
};

// The end of a TCP socket of the served network namespace (report_end), sent
// through the ends ring buffer, with END_KIND first (the reader checks it).
#define END_KIND 0x656e6421u // "end!"
struct fp_end {
	__u32 kind;        // END_KIND
	__u8 family;       // 4 or 6 (an IPv4-mapped address is 4)
	__u8 pad;
	__u16 pad2;
	__u8 local[16];    // IPv4 in the first 4 bytes, network order
	__u8 remote[16];
	__u16 local_port;  // host order
	__u16 remote_port; // host order
	__u32 flags;       // END_BYTES: the counters below are set
	// When the socket ended (bpf_ktime_get_boot_ns, the clock of fp_event's
	// boot_ns): the reader tells an end of an older socket on a reused 4-tuple from
	// one of the flow now registered on it.
	__u64 boot_ns;
	// The socket's packets and their bytes (L3 length, as conntrack counts them),
	// sent (out) and received (in), from the SYN to TCP_CLOSE: set (END_BYTES) for
	// an active open only (struct fp_bytes).
	__u64 bytes_out;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 packets_in;
};

// fp_end.flags: the end carries the socket's counters.
#define END_BYTES 1u

// A socket's counters (in socks), added to by latch_fast_skb_egress and
// latch_fast_skb_ingress.
struct fp_bytes {
	__u64 bytes_out;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 packets_in;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); // set by the loader
	__type(key, struct fp_key);
	__type(value, struct fp_verdict);
} verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} generation SEC(".maps");

// Socket cookie -> its creator (UDP sockets of the served cgroup and namespace,
// created while the daemon runs). Cookies are never reused within a boot; the LRU
// forgets the sockets long closed. A socket without a record is a miss.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); // set by the loader
	__type(key, __u64);
	__type(value, struct fp_owner);
} owners SEC(".maps");

// CLOCK_BOOTTIME of the daemon's last sign of life (it writes it every second):
// the UDP match, which the ruleset keeps running after the daemon is gone, stops
// matching ALIVE_NS after it.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} alive SEC(".maps");

#define ALIVE_NS (5ULL * 1000 * 1000 * 1000)

// The daemon's lease on what the ruleset lets pass by the fast path (see "The
// lease" in doc.go): latch_fast_lease matches while this map has a user
// reference, that is a file descriptor (or a pin, and it has none). The
// daemon's descriptor is its only one, and the kernel drops it when the
// daemon's file closes: at its exit, SIGKILL and crash included, in the same
// exit that detaches its connect hooks (their links are files too), and
// synchronously (bpf_map_put_uref), before anything a work queue does.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lease SEC(".maps");

// Just the member of the kernel's struct bpf_map the lease reads (CO-RE).
struct latch_atomic64 { __s64 counter; };
struct bpf_map { struct latch_atomic64 usercnt; } __attribute__((preserve_access_index));

// What the fast path keeps of one TCP socket, in the socket's own storage (socks):
//
//   - the decision a connect hook made for it (pending, ev), waiting for the kernel
//     to choose its local port: latch_fast_sockops sends it from tcp_connect, in
//     the same connect(2) call, and marks it sent;
//   - its counters (counting, bytes), from an active open that the sock_ops
//     program watches (TCP_CONNECT_CB, just before the SYN) to its end: the
//     cgroup_skb programs add each packet of the socket to them, and report_end
//     sends them with its end, so that the byte accountant need not read the
//     flow's conntrack entry once more. An accepted socket has none (its
//     handshake, which conntrack counted, came before PASSIVE_ESTABLISHED_CB): its
//     end carries no counters.
//
// One record for both: a socket's storage costs the kernel an allocation (and a
// free with the socket), one is enough.
struct fp_sock {
	__u32 pending;  // 1: ev waits to be sent; 0: nothing waits
	__u32 counting; // 1: bytes counts the socket's packets
	__u32 kept;     // 1: fast_closed kept MARK_FAST_FLOW (closing_with_reset)
	__u32 pad;
	__u64 gen;      // the rule generation ev was decided under
	struct fp_event ev;
	struct fp_bytes bytes;
};

// Socket-local storage: the kernel makes a socket's fp_sock at its first hit or
// when its counting starts, charged to the socket's option memory
// (net.core.optmem_max), and frees it with the socket (or at its end, see
// report_end). No shared map entry is added or deleted per connect, and a record a
// connect left that failed before tcp_connect (no route, no free local port) stays
// on its own socket, where no other socket's decision can push it out. Every
// connect marks the socket's decision sent first, and a hit fills it; a socket
// that connects again reuses its record. sock_addr (connect4/6, through ctx->sk)
// and sock_ops programs (ctx->sk) may call bpf_sk_storage_get since Linux 5.3
// (commits fb85c4a730af "bpf: export bpf_sock for BPF_PROG_TYPE_CGROUP_SOCK_ADDR
// prog type" and 1314ef561102 "... for BPF_PROG_TYPE_SOCK_OPS prog type"), so
// every kernel the fast path runs on (5.8+, for the ring buffer) has it.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct fp_sock);
} socks SEC(".maps");

// 1 once the loader attached latch_fast_sockops: the connect hooks leave their
// decisions in the socket's storage (socks) for it to send (and to check again);
// 0 (a kernel that refused it): they decide no TCP connect (see decide).
volatile __u32 tcp_local = 0;

// 1 once the loader wants TCP socket ends reported (latch_fast_sockops turns the
// state callback on for the sockets of the served namespace); 0: none.
volatile __u32 tcp_ends = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// The fast path's decisions (struct fp_event), for the history.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // set by the loader
} events SEC(".maps");

// TCP socket ends (struct fp_end, report_end), in a ring of their own: every TCP
// socket of the namespace ends through it (a busy server's accepted connections
// too), and a burst of them that fills it must not take the room of the
// decisions, whose loss would lose history rows. A lost end costs less: the
// byte accountant's periodic read of conntrack's table ends that flow.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // set by the loader
} ends SEC(".maps");

// 1 once the loader attached the cgroup_skb programs (and tcp_ends is on): the
// sock_ops program gives the sockets it watches from an active open their
// counters; 0: no socket has any, and ends carry none.
volatile __u32 tcp_bytes = 0;

// 1 if the kernel has what the counters need (socket storage, reachable from
// sock_ops and cgroup_skb programs, bpf_sock_ops->sk); set by the loader. With 0,
// the verifier never visits the code that uses them (a constant of the frozen
// .rodata), so the object loads on a kernel without them.
volatile const __u32 bytes_ok = 0;


// The network namespace (its cookie) whose sockets this fast path serves: the
// daemon's. Set by the loader; the hooks leave every other namespace's sockets
// alone, so daemons in other namespaces (containers, tests) keep their own.
volatile const __u64 netns_cookie = 0;

// The cgroup v2 the connect hooks are attached to, for the UDP match (which the
// ruleset runs for the whole network namespace) to serve only its processes too;
// 0: every process (the hooks are on the root). Set by the loader.
volatile const __u64 udp_cgroup = 0;

// Cgroup levels the UDP match looks up for udp_cgroup.
#define MAX_CGROUP_LEVELS 32

// Keeps fp_event in the object's BTF for bpf2go's -type.
const struct fp_event *unused_event __attribute__((unused));
const struct fp_end *unused_end __attribute__((unused));

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		*v += 1;
}

// 1 if every program that calls identify may call bpf_get_current_task_btf
// (probed by the loader): identify then follows the task's pointers with plain
// loads, which the verifier turns into loads that read 0 where a pointer is bad
// (BPF_PROBE_MEM), as bpf_probe_read_kernel does, at a fraction of a helper call's
// cost each. 0: every pointer through bpf_probe_read_kernel (BPF_CORE_READ). A
// constant of the frozen .rodata: the verifier never visits the branch not taken.
volatile const __u32 task_btf = 0;

// The inode number of the user namespace latch's attribution takes for the
// host's (internal/procattr: process 1's); set by the loader. The initial user
// namespace's (PROC_USER_INIT_INO) if it is not.
volatile const __u32 host_userns = 0xEFFFFFFD;

// __FMODE_EXEC in a file's f_flags: the kernel opened it to execute it
// (execve's do_open_execat, uselib). open(2) drops the bit (it is not one of
// VALID_OPEN_FLAGS), so a file a process opened itself never has it.
#define FMODE_EXEC_FLAG 0x20

// identify fills in the executable of the current task. 0: no executable (a kernel
// thread) or it could not be read, or one that attribution does not verify, for
// which the queue decides (review28):
//   - a task in another user namespace than the host's (either credential, the
//     objective one /proc/PID/ns/user shows and the subjective one it acts
//     with): its root may name any program it may run as its executable (prctl
//     PR_SET_MM_MAP with exe_fd) while running code of its own, with the
//     host's mounts, so with the allowed program's key;
//   - an executable deleted or replaced since the task started (no link left,
//     or the name it was executed through gone from the dentry cache: a rename
//     over it, as an upgrade does): attribution calls it unverified until it
//     is restarted;
//   - an executable file the kernel did not open to execute it (no
//     __FMODE_EXEC): prctl(PR_SET_MM_MAP with exe_fd, or PR_SET_MM_EXE_FILE)
//     put a file the process opened as its executable. A CLONE_VM child in a
//     user namespace of its own may make that call on the memory it shares
//     with a parent in the host's (review28's neighbour), so the credentials
//     do not tell it; the file does. Attribution calls it unverified too
//     (internal/procattr: the record's exe flags).
static __always_inline int identify(struct fp_key *k)
{
	if (task_btf) {
		// The same chain as below, read with plain loads from the task's BTF
		// pointer (a NULL or bad pointer reads as 0, as bpf_probe_read_kernel
		// fills it); only the mount's id, in struct mount around the vfsmount,
		// which no BTF pointer reaches, takes a helper call.
		struct task_struct *t = bpf_get_current_task_btf();
		if (t->real_cred->user_ns->ns.inum != host_userns ||
		    t->cred->user_ns->ns.inum != host_userns)
			return 0;
		struct file *exe = t->mm->exe_file;
		if (!exe)
			return 0;
		if (!(exe->f_flags & FMODE_EXEC_FLAG))
			return 0;
		struct inode *in = exe->f_inode;
		struct dentry *d = exe->f_path.dentry;
		if (in->i_nlink == 0 || !d->d_hash.pprev)
			return 0;
		k->ino = in->i_ino;
		k->dev = in->i_sb->s_dev;
		k->parent_ino = d->d_parent->d_inode->i_ino;
		unsigned long vm = (unsigned long)exe->f_path.mnt;
		struct mount *m = (struct mount *)(vm - bpf_core_field_offset(struct mount, mnt));
		int id = 0;
		bpf_probe_read_kernel(&id, sizeof(id), &m->mnt_id);
		k->mnt_id = (__u32)id;
		return k->ino != 0;
	}
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(t, real_cred, user_ns, ns.inum) != host_userns ||
	    BPF_CORE_READ(t, cred, user_ns, ns.inum) != host_userns)
		return 0;
	struct file *exe = BPF_CORE_READ(t, mm, exe_file);
	if (!exe)
		return 0;
	if (!(BPF_CORE_READ(exe, f_flags) & FMODE_EXEC_FLAG))
		return 0;
	struct inode *in = BPF_CORE_READ(exe, f_inode);
	struct dentry *d = BPF_CORE_READ(exe, f_path.dentry);
	if (BPF_CORE_READ(in, i_nlink) == 0 || !BPF_CORE_READ(d, d_hash.pprev))
		return 0;
	k->ino = BPF_CORE_READ(in, i_ino);
	k->dev = BPF_CORE_READ(in, i_sb, s_dev);
	k->parent_ino = BPF_CORE_READ(d, d_parent, d_inode, i_ino);
	struct vfsmount *vm = BPF_CORE_READ(exe, f_path.mnt);
	struct mount *m = (struct mount *)((void *)vm - bpf_core_field_offset(struct mount, mnt));
	k->mnt_id = (__u32)BPF_CORE_READ(m, mnt_id);
	return k->ino != 0;
}

// set_mark puts m into the MARK_MASK bits of the socket's mark; m == 0 clears
// them only if they hold one of the two values that decide a SYN by themselves
// (MARK_FAST_ALLOW, MARK_REJECT): a connect that no hook of this daemon decided
// by a hit may carry neither. The other two values are left alone: a SYN with
// MARK_FAST_FLOW or MARK_FAST_REDECIDE goes to the queue anyway, and they may
// be an application's own mark (Mullvad's fwmark 0x6d6f6c65 is MARK_FAST_FLOW
// under MARK_MASK; clearing it would take the connect off the application's
// route). The daemon's own OwnMark is never touched. It cannot tell who set the
// bits: an application's own mark with MARK_FAST_ALLOW's or MARK_REJECT's value
// under MARK_MASK is cleared, and any is replaced by a hit's.
// ctx is a connect hook's or the sock_ops program's context.
// sk is ctx's socket: its mark is read from it (bpf_sock.mark, a load of
// sk_mark), which costs no helper call.
static __always_inline void set_mark(void *ctx, struct bpf_sock *sk, __u32 m)
{
	int cur = (int)sk->mark;
	__u32 ours = (__u32)cur & MARK_MASK;
	if (m == 0 && ours != MARK_FAST_ALLOW && ours != MARK_REJECT)
		return;
	int v = (int)(((__u32)cur & ~MARK_MASK) | m);
	if (v != cur)
		bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &v, sizeof(v));
}

// wakeup is the flag to submit a record of size bytes to ring with: its reader
// is woken once as the data waiting in the ring grows past a multiple of
// WAKEUP_BYTES (at WAKEUP_BYTES, twice that, ...), by the record that takes it
// past, never at every record while that much waits: a forced wakeup queues an
// irq_work, an interrupt (in a VM, an exit) in the connecting program's CPU,
// and a reader that falls behind (a loaded machine) would cost every
// connection one. A wakeup two CPUs' records miss between them (each counts
// the other's reserved record in the data waiting) is made up by the next
// multiple, and the reader reads on its own every readEvery anyway.
static __always_inline __u64 wakeup(void *ring, __u64 size)
{
	// What the record took of the ring: its 8-byte header and its data,
	// rounded up to 8 bytes (the ring's producer position moved by this at
	// bpf_ringbuf_reserve; BPF_RB_AVAIL_DATA counts it).
	__u64 took = (size + 8 + 7) & ~7ULL;
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	if (avail < took)
		return BPF_RB_NO_WAKEUP;
	return avail / WAKEUP_BYTES != (avail - took) / WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

// submit sends e to the reader, waking it as wakeup says.
static __always_inline void submit(struct fp_event *e)
{
	bpf_ringbuf_submit(e, wakeup(&events, sizeof(*e)));
}

// lookup finds the verdict for key: its action if the entry is of the current rule
// generation and has not expired (counted as a hit), 0 otherwise (counted as a miss
// or a stale entry). A hit is recorded: with sk (a TCP socket's, with the sock_ops
// program attached) it waits in the socket's storage (socks) for the local port,
// and if the socket's storage cannot be had it is a miss (the queue decides);
// otherwise it goes to the ring buffer at once, with the local address and port
// if local_port is not 0 (UDP: the datagram's source).
static __always_inline __u32 lookup(struct fp_key *key, struct bpf_sock *sk, const __u8 *local, __u16 local_port)
{
	struct fp_verdict *v = bpf_map_lookup_elem(&verdicts, key);
	if (!v) {
		count(STAT_MISS);
		return 0;
	}
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&generation, &zero);
	__u64 now = bpf_ktime_get_boot_ns();
	__u64 vgen = v->gen, expires = v->expires_ns, rule = v->rule_id;
	__u32 action = v->action;
	if (!gen || vgen != *gen || now >= expires || (action != ACT_ALLOW && action != ACT_REJECT)) {
		count(STAT_STALE);
		return 0;
	}
	if (sk) {
		struct fp_sock *p = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!p) {
			// No storage (out of memory, or the socket's option memory is
			// used up, which its program can do on purpose): no hit. A
			// decision that cannot wait for TCP_CONNECT_CB cannot be checked
			// there against the rules then in force (a deferred connect's
			// SYN leaves at its first write), so the queue decides it.
			count(STAT_MISS);
			return 0;
		}
		count(action == ACT_ALLOW ? STAT_HIT_ALLOW : STAT_HIT_REJECT);
		p->ev.boot_ns = now;
		p->ev.rule_id = rule;
		p->ev.key = *key;
		p->ev.pid = bpf_get_current_pid_tgid() >> 32;
		p->ev.action = action;
		p->gen = vgen;
		p->pending = 1;
		return action;
	}
	count(action == ACT_ALLOW ? STAT_HIT_ALLOW : STAT_HIT_REJECT);
	struct fp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RING_LOST);
		return action;
	}
	e->boot_ns = now;
	e->rule_id = rule;
	e->key = *key;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->action = action;
	e->pad = 0;
	e->pad2 = 0;
	if (local_port && local) {
		__builtin_memcpy(e->local, local, 16);
		e->local_port = local_port;
	} else {
		__builtin_memset(e->local, 0, 16);
		e->local_port = 0;
	}
	submit(e);
	return action;
}

// drop_pending marks empty what an earlier connect of the socket left pending
// in its storage (socks), if it has any: a connect whose hook made no hit
// sends no decision at its TCP_CONNECT_CB. A hit (lookup) stores its own in
// its place instead, in the storage it gets anyway: one look at the socket's
// storage per connect either way.
static __always_inline void drop_pending(struct bpf_sock *sk)
{
	struct fp_sock *old = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (old)
		old->pending = 0;
}

static __always_inline int decide(struct bpf_sock_addr *ctx, __u8 family)
{
	if (ctx->type != 1 /* SOCK_STREAM */ || ctx->protocol != IPPROTO_TCP)
		return 1;
	if (bpf_get_netns_cookie(ctx) != netns_cookie)
		return 1;
	struct fp_key key = {};
	key.family = family;
	key.proto = IPPROTO_TCP;
	key.port = bpf_ntohs((__u16)ctx->user_port);
	if (family == 4) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(key.addr, &a, 4);
	} else {
		__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
		if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff)) {
			// An IPv4-mapped address: the packets are IPv4, and so is the
			// key the daemon stores for them.
			key.family = 4;
			__builtin_memcpy(key.addr, &a3, 4);
		} else {
			__builtin_memcpy(key.addr, &a0, 4);
			__builtin_memcpy(key.addr + 4, &a1, 4);
			__builtin_memcpy(key.addr + 8, &a2, 4);
			__builtin_memcpy(key.addr + 12, &a3, 4);
		}
	}
	struct bpf_sock *sk = ctx->sk;
	if (!sk) {
		count(STAT_NO_IDENTITY);
		return 1;
	}
	// Without the sock_ops program nothing could check a decision again when
	// the SYN leaves (a TCP_FASTOPEN_CONNECT connect's leaves at its first
	// write, any time later, perhaps after a rule change): TCP is not decided
	// in the kernel then, every connect goes to the queue.
	if (!tcp_local) {
		count(STAT_MISS);
		return 1;
	}
	// With the sock_ops program attached, a decision waits for the local port
	// in the socket's storage; whatever an earlier connect of this socket left
	// there is dropped (it made no connection: tcp_connect takes it): a hit
	// stores its own over it (lookup), every other outcome marks it empty
	// (drop_pending). A socket that never had a hit has no storage, and gets
	// none but by a hit. (All of it under the socket's lock, before this
	// connect's tcp_connect: the order within the hook decides nothing.)
	struct sock *ks = (struct sock *)bpf_skc_to_tcp_sock(sk);
	if (!ks) {
		count(STAT_NO_IDENTITY);
		drop_pending(sk);
		set_mark(ctx, sk, 0);
		return 1;
	}
	key.uid = ks->sk_uid.val;
	if (!identify(&key)) {
		count(STAT_NO_IDENTITY);
		drop_pending(sk);
		set_mark(ctx, sk, 0);
		return 1;
	}
	// A hit's mark (MARK_FAST_ALLOW or MARK_REJECT) is given at
	// TCP_CONNECT_CB (send_pending), as the kernel builds the SYN: a connect
	// that fails before (no route, an IPv4-mapped address on an IPv6-only
	// socket, no free local port) never leaves TCP_CLOSE, so no state change
	// would clear a mark given here, and the socket could connect again with
	// it, anywhere, once the daemon and its hooks are gone. What an earlier
	// connect of this socket left goes now, hit or miss.
	// A socket whose mark under MARK_MASK holds MARK_FAST_FLOW's or
	// MARK_FAST_REDECIDE's value gets no hit: a hit's mark would take those
	// bits, which may be an application's own fwmark (Mullvad's 0x6d6f6c65),
	// off the application's route (its kill switch drops the SYN). The queue
	// decides such a connect and leaves the mark as it is.
	// (set_mark(ctx, sk, 0) would leave either value as it is.)
	__u32 ours = sk->mark & MARK_MASK;
	if (ours == MARK_FAST_FLOW || ours == MARK_FAST_REDECIDE) {
		count(STAT_MISS);
		drop_pending(sk);
		return 1;
	}
	if (!lookup(&key, sk, 0, 0))
		drop_pending(sk);
	set_mark(ctx, sk, 0);
	return 1;
}

SEC("cgroup/connect4")
int latch_fast_connect4(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 4);
}

SEC("cgroup/connect6")
int latch_fast_connect6(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 6);
}

// send_pending sends the decision a connect hook left in this socket's storage
// (socks), and gives the socket its mark (MARK_FAST_ALLOW, MARK_REJECT), once
// the kernel chose its local address and port: tcp_connect calls
// the sock_ops program (TCP_CONNECT_CB) just before the SYN goes out, in the
// connect(2) (or, with TCP_FASTOPEN_CONNECT, the first write) that the hook
// decided, under the socket's lock, as the hook ran. It marks the record sent;
// the storage stays with the socket (for its next connect) and dies with it. A
// socket without a pending decision costs one look at its storage, and loses a
// MARK_FAST_ALLOW or MARK_REJECT it has (set_mark) if it is of the served
// namespace (ns): no connect hook of this daemon decided this connect, so no
// mark that decides a SYN may ride it. Such a mark is a daemon's gone before, on
// a socket its sweep could not see (in TCP_CLOSE, outside the hooks' cgroup):
// under this daemon's lease the ruleset would let the SYN pass by it to
// wherever the socket connects now.
// p is the socket's storage if the caller has it already (count_bytes), else 0.
static __always_inline int served_ns(__u64 c);

// same_peer is whether the socket's remote address and port at TCP_CONNECT_CB
// are the ones its connect hook decided (k): cgroup connect programs run one
// after the other (the hooks' cgroup's, then its ancestors'), and one that runs
// after latch's may rewrite the address (a service mesh's or Kubernetes' socket
// load balancing does). A decision for one address must not ride a SYN to
// another, nor be recorded for it.
static __always_inline int same_peer(struct bpf_sock_ops *ctx, const struct fp_key *k)
{
	if ((__u16)bpf_ntohl(ctx->remote_port) != k->port)
		return 0;
	__u32 k0, k1, k2, k3;
	__builtin_memcpy(&k0, k->addr, 4);
	if (ctx->family == AF_INET)
		return k->family == 4 && ctx->remote_ip4 == k0;
	// One 4-byte load each: the verifier refuses wider context reads.
	volatile __u32 *r6 = ctx->remote_ip6;
	__u32 r0 = r6[0], r1 = r6[1], r2 = r6[2], r3 = r6[3];
	if (r0 == 0 && r1 == 0 && r2 == bpf_htonl(0xffff))
		return k->family == 4 && r3 == k0; // IPv4-mapped: decided as IPv4
	__builtin_memcpy(&k1, k->addr + 4, 4);
	__builtin_memcpy(&k2, k->addr + 8, 4);
	__builtin_memcpy(&k3, k->addr + 12, 4);
	return k->family == 6 && r0 == k0 && r1 == k1 && r2 == k2 && r3 == k3;
}

static __always_inline void send_pending(struct bpf_sock_ops *ctx, struct fp_sock *p, __u64 ns)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	if (!p)
		p = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (p && p->kept && !p->pending) {
		// MARK_FAST_FLOW that fast_closed kept for a reset on close
		// (closing_with_reset) on a socket that lived on (the contrived
		// one: shutdown(2) before its connect, then connect(AF_UNSPEC)):
		// this program's own mark, not an application's, goes now; the
		// SYN goes to the queue tracked, as any connect no hook decided.
		p->kept = 0;
		__u32 cur = sk->mark;
		if ((cur & MARK_MASK) == MARK_FAST_FLOW) {
			int v = (int)(cur & ~MARK_MASK);
			bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &v, sizeof(v));
		}
	}
	if (!p || !p->pending) {
		// Only the marks that decide a SYN by themselves: a SYN with
		// MARK_FAST_FLOW or MARK_FAST_REDECIDE goes to the queue anyway, and
		// those bits may be an application's own mark outside the hooks'
		// cgroup (a VPN's fwmark), which changing would reroute. Not without
		// the namespace (ns 0, before Linux 5.15): the socket may be another
		// namespace's, whose daemon's program (on a cgroup below, run first)
		// just gave the mark.
		if (ns != 0 && served_ns(ns))
			set_mark(ctx, sk, 0);
		return;
	}
	p->pending = 0;
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&generation, &zero);
	if (!gen || *gen != p->gen) {
		// The rules changed since the connect hook decided (a deferred
		// TCP_FASTOPEN_CONNECT connect sends its SYN at the first write, any
		// time later): the decision is void, the socket gets no mark; the
		// SYN goes to the queue, decided under the rules in force.
		set_mark(ctx, sk, 0);
		count(STAT_STALE);
		return;
	}
	if (!same_peer(ctx, &p->ev.key)) {
		// A later connect program sent the connect elsewhere: the decision
		// is void, as above; the queue decides the SYN's own destination.
		set_mark(ctx, sk, 0);
		count(STAT_STALE);
		return;
	}
	// The decision's mark, for the SYN about to be built (the socket's route,
	// which the mark may change, is looked up again after this callback:
	// tcp_connect's rebuild_header).
	set_mark(ctx, sk, p->ev.action == ACT_ALLOW ? MARK_FAST_ALLOW : MARK_REJECT);
	struct fp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_RING_LOST);
		return;
	}
	*e = p->ev;
	__builtin_memset(e->local, 0, 16);
	if (e->key.family == 4) {
		// An AF_INET socket, or an AF_INET6 one connected to an IPv4-mapped
		// address: tcp_v4_connect set the IPv4 source (sk_rcv_saddr).
		__u32 a = ctx->local_ip4;
		__builtin_memcpy(e->local, &a, 4);
	} else {
		// One 4-byte load each: the verifier refuses wider context reads.
		volatile __u32 *l6 = ctx->local_ip6;
		__u32 a0 = l6[0], a1 = l6[1], a2 = l6[2], a3 = l6[3];
		__builtin_memcpy(e->local, &a0, 4);
		__builtin_memcpy(e->local + 4, &a1, 4);
		__builtin_memcpy(e->local + 8, &a2, 4);
		__builtin_memcpy(e->local + 12, &a3, 4);
	}
	e->local_port = (__u16)ctx->local_port;
	submit(e);
}

// watch asks the kernel to call the sock_ops program at each state change of this
// socket (BPF_SOCK_OPS_STATE_CB), for report_end, if tcp_ends is on and the socket
// is of the served network namespace. One flag on the socket; the callbacks it
// causes return at once but for the one to TCP_CLOSE.
// It returns 1 if it did. ns is the socket's network namespace
// (bpf_get_netns_cookie(ctx), read once by the caller).
static __always_inline int watch(struct bpf_sock_ops *ctx, __u64 ns)
{
	if (!tcp_ends || ns != netns_cookie)
		return 0;
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

// count_bytes gives a socket watch watches from an active open its counters
// (socks), at zero (a socket that connects again, after a TCP_CLOSE, starts
// over), if tcp_bytes is on. The SYN goes out after TCP_CONNECT_CB: it is counted.
// It returns the socket's storage, or 0 if it gave none.
static __always_inline struct fp_sock *count_bytes(struct bpf_sock_ops *ctx)
{
	if (!bytes_ok || !tcp_bytes)
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	struct fp_sock *c = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c)
		return 0; // no memory: this end carries no counters
	c->bytes.bytes_out = 0;
	c->bytes.bytes_in = 0;
	c->bytes.packets_out = 0;
	c->bytes.packets_in = 0;
	c->counting = 1;
	return c;
}

// add_bytes adds a packet of a socket that has counters (socks) to them:
// skb->len, the packet's length from its IP header on (a GSO or GRO packet's
// whole), which is what conntrack adds to its counters for each packet it sees.
// Any other packet costs a look at its socket's storage pointer.
static __always_inline void add_bytes(struct __sk_buff *skb, int out)
{
	if (!bytes_ok)
		return;
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return;
	struct fp_sock *s = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!s || !s->counting)
		return;
	struct fp_bytes *c = &s->bytes;
	// Atomic: a socket's packets in may be counted on several CPUs at once.
	if (out) {
		__sync_fetch_and_add(&c->bytes_out, skb->len);
		__sync_fetch_and_add(&c->packets_out, 1);
	} else {
		__sync_fetch_and_add(&c->bytes_in, skb->len);
		__sync_fetch_and_add(&c->packets_in, 1);
	}
}

// The packets a local socket sends, after the output and postrouting hooks (the
// root cgroup: every process). Never drops.
SEC("cgroup_skb/egress")
int latch_fast_skb_egress(struct __sk_buff *skb)
{
	add_bytes(skb, 1);
	return 1;
}

// 1 if the kernel lets cgroup_skb programs call bpf_get_netns_cookie (probed
// by the loader): simultaneous_open then serves the sockets of the served
// namespace only. A constant of the frozen .rodata.
volatile const __u32 skb_netns = 0;

// Extension headers tcp_offset follows in an IPv6 packet at most.
#define MAX_EXT_HEADERS 8

// tcp_offset returns the offset of the TCP header in skb (whose data starts at
// its network header, IPv4 or IPv6, as TCP received it: reassembled), or -1 if
// it cannot be found: an IPv4 header's options; an IPv6 header's extension
// headers (hop-by-hop, routing, destination options, authentication, and a
// fragment header whose offset is 0, though reassembly leaves none) up to
// MAX_EXT_HEADERS of them.
static __always_inline int tcp_offset(struct __sk_buff *skb)
{
	__u8 b[2];
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		// The header's length (byte 0) and protocol (byte 9) in one load: a
		// packet too short for either has no TCP header to find.
		__u8 h[10];
		if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) < 0)
			return -1;
		int off = (h[0] & 0xf) * 4;
		if (off < 20 || h[9] != IPPROTO_TCP)
			return -1;
		return off;
	}
	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return -1;
	__u8 nh;
	if (bpf_skb_load_bytes(skb, 6, &nh, 1) < 0)
		return -1;
	int off = 40;
	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		switch (nh) {
		case IPPROTO_TCP:
			return off;
		case 0:  // hop-by-hop options
		case 43: // routing
		case 60: // destination options
			if (bpf_skb_load_bytes(skb, off, b, 2) < 0)
				return -1;
			nh = b[0];
			off += (b[1] + 1) * 8;
			break;
		case 51: // authentication
			if (bpf_skb_load_bytes(skb, off, b, 2) < 0)
				return -1;
			nh = b[0];
			off += (b[1] + 2) * 4;
			break;
		case 44: { // fragment: the first one only has the TCP header
			__u8 f[4];
			if (bpf_skb_load_bytes(skb, off, f, 4) < 0)
				return -1;
			if (((f[2] << 8 | f[3]) & 0xfff8) != 0)
				return -1;
			nh = f[0];
			off += 8;
			break;
		}
		default:
			return -1;
		}
	}
	return nh == IPPROTO_TCP ? off : -1;
}

// self_connect reports whether skb, whose TCP header is at off, comes from the
// address and port it goes to: a socket that connects to itself (its own SYN,
// which Linux takes as a simultaneous open), which no other host takes part in.
static __always_inline int self_connect(struct __sk_buff *skb, int off)
{
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, off, ports, 4) < 0 || ports[0] != ports[1])
		return 0;
	__u32 a[8];
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, 12, a, 8) < 0)
			return 0;
		return a[0] == a[1];
	}
	if (bpf_skb_load_bytes(skb, 8, a, 32) < 0)
		return 0;
	return a[0] == a[4] && a[1] == a[5] && a[2] == a[6] && a[3] == a[7];
}

// simultaneous_open reports whether skb, a segment TCP is about to give a full
// socket in state SYN_SENT, has SYN set and ACK clear: the peer's half of a
// simultaneous open. Such a socket is one whose SYN went out or is still held
// by the ruleset (the queue, a deny): Linux answers the peer's SYN with a
// SYN-ACK, which the ruleset passes (it answers the peer's connection), and the
// peer's ACK completes a connection latch never allowed. Dropped: a legitimate
// simultaneous open still completes, since the peer receives this socket's own
// SYN once it is allowed and answers it with a SYN-ACK, which SYN_SENT takes
// as a normal handshake; the peer of a held socket would have to guess its
// initial sequence number (never sent) for a SYN-ACK to be taken. A socket's
// own SYN (a connect to itself, self_connect) passes. A segment
// whose TCP header cannot be found (headers tcp_offset does not follow, which
// the kernel's TCP has already passed) is dropped too: for a socket whose SYN
// is held, failing closed. Other packets cost a look at their socket's state.
static __always_inline int simultaneous_open(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->state != BPF_TCP_SYN_SENT || sk->protocol != IPPROTO_TCP)
		return 0;
	// The served namespace's sockets only (the program is attached to the root
	// cgroup, every namespace's processes): other namespaces' daemons keep theirs.
	// A kernel whose cgroup_skb programs cannot read it (skb_netns 0): every
	// namespace's.
	if (skb_netns && bpf_get_netns_cookie(skb) != netns_cookie)
		return 0;
	int off = tcp_offset(skb);
	if (off < 0)
		return 1;
	__u8 flags;
	if (bpf_skb_load_bytes(skb, off + 13, &flags, 1) < 0)
		return 1;
	if ((flags & (TCPF_SYN | TCPF_ACK)) != TCPF_SYN)
		return 0;
	return !self_connect(skb, off);
}

// The packets a local socket receives, before TCP takes them (a socket's TIME_WAIT
// successor receives none through here); attached where the sock_ops program is
// (every process's sockets). It drops the peer's half of a simultaneous open to a
// socket in SYN_SENT (simultaneous_open), and nothing else.
SEC("cgroup_skb/ingress")
int latch_fast_skb_ingress(struct __sk_buff *skb)
{
	if (simultaneous_open(skb)) {
		count(STAT_SIMOPEN_DROPPED);
		return 0;
	}
	add_bytes(skb, 0);
	return 1;
}

// report_end sends the 4-tuple of a socket that moved to TCP_CLOSE (reset, both
// sides closed and the last ACK went out before tcp_time_wait's tcp_done, a
// connect that failed, a timeout) through the ends ring buffer to the reader, with
// the socket's counters if it has them (socks, whose record it then drops): the
// reader ends the flow with those, or else reads its counters from conntrack once
// more. The conntrack events of each TCP state change are then not needed (see
// doc.go).
static __always_inline void report_end(struct bpf_sock_ops *ctx)
{
	struct fp_end *e = bpf_ringbuf_reserve(&ends, sizeof(*e), 0);
	if (!e) {
		count(STAT_ENDS_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = END_KIND;
	e->boot_ns = bpf_ktime_get_boot_ns();
	if (bytes_ok && tcp_bytes) {
		struct bpf_sock *sk = ctx->sk;
		struct fp_sock *c = sk ? bpf_sk_storage_get(&socks, sk, 0, 0) : 0;
		if (c && c->counting) {
			e->flags = END_BYTES;
			e->bytes_out = c->bytes.bytes_out;
			e->bytes_in = c->bytes.bytes_in;
			e->packets_out = c->bytes.packets_out;
			e->packets_in = c->bytes.packets_in;
			// A packet after this (a reset sent on close) is not the flow's
			// as reported: the record stops counting (a socket that connects
			// again starts over at its TCP_CONNECT_CB, count_bytes). The
			// record itself stays until the socket is freed, which frees it
			// at less cost than bpf_sk_storage_delete here (whose free waits
			// for an RCU tasks-trace grace period). (Its decision was sent at
			// its TCP_CONNECT_CB: nothing else is lost.)
			c->counting = 0;
		}
	}
	// Ports: local in host order, remote in network order in the upper half.
	e->local_port = (__u16)ctx->local_port;
	e->remote_port = (__u16)bpf_ntohl(ctx->remote_port);
	if (ctx->family == AF_INET) {
		e->family = 4;
		__u32 l = ctx->local_ip4, r = ctx->remote_ip4;
		__builtin_memcpy(e->local, &l, 4);
		__builtin_memcpy(e->remote, &r, 4);
	} else {
		volatile __u32 *l6 = ctx->local_ip6;
		volatile __u32 *r6 = ctx->remote_ip6;
		__u32 l0 = l6[0], l1 = l6[1], l2 = l6[2], l3 = l6[3];
		__u32 r0 = r6[0], r1 = r6[1], r2 = r6[2], r3 = r6[3];
		if (r0 == 0 && r1 == 0 && r2 == bpf_htonl(0xffff)) {
			// Connected to an IPv4-mapped address: the packets, and
			// conntrack's entry, are IPv4.
			e->family = 4;
			__builtin_memcpy(e->local, &l3, 4);
			__builtin_memcpy(e->remote, &r3, 4);
		} else {
			e->family = 6;
			__builtin_memcpy(e->local, &l0, 4);
			__builtin_memcpy(e->local + 4, &l1, 4);
			__builtin_memcpy(e->local + 8, &l2, 4);
			__builtin_memcpy(e->local + 12, &l3, 4);
			__builtin_memcpy(e->remote, &r0, 4);
			__builtin_memcpy(e->remote + 4, &r1, 4);
			__builtin_memcpy(e->remote + 8, &r2, 4);
			__builtin_memcpy(e->remote + 12, &r3, 4);
		}
	}
	bpf_ringbuf_submit(e, wakeup(&ends, sizeof(*e)));
}

// fast_mark reads the MARK_MASK bits of the socket's mark into *ours and the
// whole mark into *cur; 0 if it could not be read (no full socket). A load of
// sk_mark through ctx->sk (bpf_sock.mark), no helper call: every callback of
// every TCP socket of the cgroup may read it.
static __always_inline int fast_mark(struct bpf_sock_ops *ctx, __u32 *cur, __u32 *ours)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	__u32 m = sk->mark;
	*cur = m;
	*ours = m & MARK_MASK;
	return 1;
}

// replace_fast gives the socket the mark to in place of its MARK_MASK bits
// (the others stay).
static __always_inline void replace_fast(struct bpf_sock_ops *ctx, __u32 cur, __u32 to)
{
	int v = (int)((cur & ~MARK_MASK) | to);
	if ((__u32)v != cur)
		bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &v, sizeof(v));
}

// A mark that lets a SYN pass (MARK_FAST_ALLOW) must not outlive the connect it
// was given for: the socket may connect again after its connection ends
// (connect(AF_UNSPEC), or a refused or failed connect), and once the daemon is
// gone (its connect hooks and this program go with it, its ruleset stays) no
// hook would decide that connect. So:
//
//   - watch_fast turns the state callback on (TCP_CONNECT_CB) for a socket whose
//     SYN leaves with MARK_FAST_ALLOW (or MARK_FAST_REDECIDE, which the daemon
//     replaces by MARK_FAST_ALLOW if the queue allows the SYN), whether or not socket ends are reported;
//   - fast_established moves a socket from MARK_FAST_ALLOW to MARK_FAST_FLOW once
//     its connection is established (ACTIVE_ESTABLISHED_CB; PASSIVE_ESTABLISHED_CB
//     for a simultaneous open): the ruleset passes the flow's other packets with
//     either mark, but a SYN with MARK_FAST_FLOW only through the queue;
//   - fast_closed clears MARK_FAST_ALLOW and MARK_FAST_FLOW when the socket moves
//     to TCP_CLOSE (a refused or timed-out connect, a reset, connect(AF_UNSPEC),
//     the end), but MARK_FAST_FLOW inside close(2) of a socket that sends a
//     reset there (closing_with_reset): that socket is destroyed just after,
//     and the reset leaves untracked by the mark;
//   - send_pending clears MARK_FAST_ALLOW (and MARK_REJECT) at TCP_CONNECT_CB of a
//     connect no connect hook of this daemon decided (a gone daemon's mark the
//     sweep missed).
//
// Only a socket whose SYN is on its way when the daemon dies keeps
// MARK_FAST_ALLOW (see doc.go). The sockets are those of the served network
// namespace with the mark's exact value under MARK_MASK; on a kernel before 5.15,
// whose sock_ops programs cannot read the namespace (the loader replaces
// bpf_get_netns_cookie by 0, see withoutNetnsCookie), those of any namespace (a
// socket of another namespace with latch's fast marks is another latch's, which
// moves them alike).
static __always_inline int served_ns(__u64 c)
{
	return c == netns_cookie || c == 0;
}

static __always_inline int served_fast(struct bpf_sock_ops *ctx)
{
	return served_ns(bpf_get_netns_cookie(ctx));
}

// The mark is looked at before the namespace in each (a load, where the
// namespace costs a helper call; both are pure reads, so the order decides
// nothing): most sockets have no fast mark.
static __always_inline void watch_fast(struct bpf_sock_ops *ctx, __u64 ns)
{
	__u32 cur, ours;
	// MARK_FAST_REDECIDE too: the daemon gives a SYN_SENT socket with it
	// MARK_FAST_ALLOW when the queue allows its SYN (AllowSocket), and a refused
	// connect must not keep that in TCP_CLOSE.
	if (!fast_mark(ctx, &cur, &ours) || (ours != MARK_FAST_ALLOW && ours != MARK_FAST_REDECIDE) || !served_ns(ns))
		return;
	if (!(ctx->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
		bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void fast_established(struct bpf_sock_ops *ctx)
{
	__u32 cur, ours;
	if (fast_mark(ctx, &cur, &ours) && ours == MARK_FAST_ALLOW && served_fast(ctx))
		replace_fast(ctx, cur, MARK_FAST_FLOW);
}

// 1 if the loader found that sock_ops programs may call bpf_skc_to_tcp_sock
// and bpf_probe_read_kernel (closing_with_reset); 0: never visited.
volatile const __u32 close_keep = 0;

// SEND_SHUTDOWN of sk_shutdown (include/net/sock.h).
#define SEND_SHUTDOWN 2

// closing_with_reset says whether the socket moves to TCP_CLOSE inside
// close(2) of its last file reference (__tcp_close), just before the reset it
// sends there (SO_LINGER 0, or unread data): from ESTABLISHED or CLOSE_WAIT
// with SEND_SHUTDOWN already set. Nothing else makes that: shutdown(SHUT_WR)
// leaves those states as it sets the flag (to FIN_WAIT1 or LAST_ACK, under
// the same socket lock), and connect(AF_UNSPEC), a reset received or a
// timeout from them has it clear. __tcp_close sets it first thing, then
// tcp_disconnect (or the unread data's branch) sets TCP_CLOSE and sends the
// reset, and the socket is orphaned and destroyed: no program sees its mark
// again, nor can it connect again. (But for one contrived socket: shutdown(2)
// before its connect sets the flag too, with ENOTCONN, and connect keeps it;
// connect(AF_UNSPEC) once established then keeps MARK_FAST_FLOW: fast_closed
// records that in the socket's storage (kept), and its next connect
// (send_pending) takes the mark off: see doc.go.)
static __always_inline int closing_with_reset(struct bpf_sock_ops *ctx)
{
	if (!close_keep)
		return 0;
	__u32 old = ctx->args[0];
	if (old != BPF_TCP_ESTABLISHED && old != BPF_TCP_CLOSE_WAIT)
		return 0;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	struct sock *ks = (struct sock *)bpf_skc_to_tcp_sock(sk);
	if (!ks)
		return 0;
	return (BPF_CORE_READ_BITFIELD_PROBED(ks, sk_shutdown) & SEND_SHUTDOWN) != 0;
}

// A socket closed with a reset keeps MARK_FAST_FLOW for that reset (the last
// packet it sends; its mark is never read again): the ruleset keeps it out of
// conntrack and passes it by the mark (MARK_FAST_FLOW lets no SYN pass), as
// the flow's other packets, instead of conntrack making an entry for it
// (INVALID, freed at once) and LATCH-OUT walking it to its INVALID rules.
static __always_inline void fast_closed(struct bpf_sock_ops *ctx, __u64 ns)
{
	__u32 cur, ours;
	if (!fast_mark(ctx, &cur, &ours) || (ours != MARK_FAST_ALLOW && ours != MARK_FAST_FLOW) || !served_ns(ns))
		return;
	if (ours == MARK_FAST_FLOW && closing_with_reset(ctx)) {
		// Remembered, for the one socket that lives on (see
		// closing_with_reset): its next connect takes the mark off
		// (send_pending). listen(2) of it after connect(AF_UNSPEC)
		// failed with EINVAL on Linux 6.18 (checked), so no listener
		// inherits the mark there.
		struct bpf_sock *sk = ctx->sk;
		struct fp_sock *p = sk ? bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
		if (p) {
			p->kept = 1;
			return;
		}
	}
	replace_fast(ctx, cur, 0);
}

// The cgroup's sock_ops program. At TCP_CONNECT_CB (an active open, just before
// the SYN) it sends the decision a connect hook left for the socket and gives the
// socket the decision's mark (send_pending) and, like at PASSIVE_ESTABLISHED_CB (an accepted connection), turns the state
// callback on (watch), giving an actively opened socket its counters
// (count_bytes), and for a fast socket in any case (watch_fast); once the
// connection is established it moves a fast socket to MARK_FAST_FLOW
// (fast_established); at a state change to TCP_CLOSE it clears a fast socket's
// mark (fast_closed) and reports the end of a socket of the served namespace
// (report_end, if tcp_ends).
// Every other callback returns at once; reply stays 0 (the kernel's defaults).
SEC("sockops")
int latch_fast_sockops(struct bpf_sock_ops *ctx)
{
	switch (ctx->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		// The namespace read once, the storage got once (count_bytes makes
		// it, send_pending reads the decision in it).
		__u64 ns = bpf_get_netns_cookie(ctx);
		struct fp_sock *p = 0;
		if (watch(ctx, ns))
			p = count_bytes(ctx);
		send_pending(ctx, p, ns);
		watch_fast(ctx, ns);
		break;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		fast_established(ctx);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		watch(ctx, bpf_get_netns_cookie(ctx));
		fast_established(ctx);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ctx->args[1] == BPF_TCP_CLOSE) {
			__u64 ns = bpf_get_netns_cookie(ctx);
			fast_closed(ctx, ns);
			// The state callback is a flag of the socket, and every
			// sock_ops program of its cgroups is called for it: that of a
			// daemon of another network namespace (a container's, each at
			// the root cgroup) too, which turned it on. Only the served
			// namespace's ends are this daemon's (watch).
			if (tcp_ends && ns == netns_cookie)
				report_end(ctx);
		}
		break;
	}
	return 1;
}

// Records the creator of each UDP socket of the served cgroup and network
// namespace (the hook runs in the task calling socket(2)). Never refuses a socket.
SEC("cgroup/sock_create")
int latch_fast_sock_create(struct bpf_sock *sk)
{
	if (sk->type != SOCK_DGRAM || sk->protocol != IPPROTO_UDP)
		return 1;
	if (bpf_get_netns_cookie(sk) != netns_cookie)
		return 1;
	struct fp_key k = {};
	if (!identify(&k))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(sk);
	if (!cookie)
		return 1;
	struct fp_owner o = {};
	o.ino = k.ino;
	o.parent_ino = k.parent_ino;
	o.dev = k.dev;
	o.mnt_id = k.mnt_id;
	o.tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&owners, &cookie, &o, BPF_ANY);
	return 1;
}

// The first datagram of a UDP flow, from the ruleset's xt_bpf match in the output
// chain (only for a new flow whose conntrack mark nothing set): 1 (match: the
// ruleset allows the flow as an allow verdict from the queue would) if the sending
// task's executable, the socket's owner and the destination of the datagram have
// an allow entry of the current rule generation that has not expired, and the
// socket was created (cgroup/sock_create) by the sending task's process running
// that same executable; 0 (the datagram goes to the queue) otherwise. The output
// chain usually runs in the task whose sendmsg built the datagram, but not always
// (a socket lent to another program, written by it; a datagram sent again from a
// softirq or a kernel thread, through a tunnel or a qdisc): so the current task
// counts only if it is the socket's creator's process with the creator's
// executable, and never when it is a kernel thread. A deny or reject entry is no
// match: the queue decides those datagrams (see doc.go).
SEC("socket")
int latch_fast_udp(struct __sk_buff *skb)
{
	struct fp_key key = {};
	key.proto = IPPROTO_UDP;
	__u8 h[40];
	__u8 local[16] = {};
	if (bpf_skb_load_bytes_relative(skb, 0, h, 1, BPF_HDR_START_NET))
		return 0;
	__u32 l4;
	if ((h[0] >> 4) == 4) {
		if (bpf_skb_load_bytes_relative(skb, 0, h, 20, BPF_HDR_START_NET))
			return 0;
		// UDP, and not a later fragment (those carry no port).
		if (h[9] != IPPROTO_UDP || ((h[6] & 0x1f) | h[7]) != 0)
			return 0;
		// No options: a source route (LSRR, SSRR) makes the header's
		// destination a waypoint, not where the datagram goes; the queue
		// decides (and refuses) it.
		l4 = (h[0] & 0xf) * 4;
		if (l4 != 20)
			return 0;
		key.family = 4;
		__builtin_memcpy(key.addr, h + 16, 4);
		__builtin_memcpy(local, h + 12, 4);
	} else if ((h[0] >> 4) == 6) {
		if (bpf_skb_load_bytes_relative(skb, 0, h, 40, BPF_HDR_START_NET))
			return 0;
		// UDP right after the fixed header: with extension headers the queue
		// decides.
		if (h[6] != IPPROTO_UDP)
			return 0;
		l4 = 40;
		key.family = 6;
		__builtin_memcpy(key.addr, h + 24, 16);
		__builtin_memcpy(local, h + 8, 16);
	} else {
		return 0;
	}
	__u16 ports[2]; // source, destination
	if (bpf_skb_load_bytes_relative(skb, l4, ports, 4, BPF_HDR_START_NET))
		return 0;
	key.port = bpf_ntohs(ports[1]);
	// A datagram of a local socket only (the uid NFQUEUE reports is its owner's).
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (cookie == 0) {
		count(STAT_NO_IDENTITY);
		return 0;
	}
	// Only the processes the connect hooks serve (Config.CgroupPath).
	if (udp_cgroup) {
		int in = 0;
		for (int i = 0; i < MAX_CGROUP_LEVELS; i++) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(i);
			if (id == udp_cgroup) {
				in = 1;
				break;
			}
			if (id == 0)
				break;
		}
		if (!in)
			return 0;
	}
	// A daemon that died (fail-closed) leaves this program in its ruleset: the
	// queue, without a reader, then decides (drops) again, as for TCP, whose
	// hooks went with the daemon.
	__u32 zero = 0;
	__u64 *seen = bpf_map_lookup_elem(&alive, &zero);
	if (!seen || bpf_ktime_get_boot_ns() - *seen > ALIVE_NS) {
		count(STAT_STALE);
		return 0;
	}
	// A socket whose creator was recorded (one created after the daemon
	// started, in its cgroup).
	struct fp_owner *o = bpf_map_lookup_elem(&owners, &cookie);
	if (!o) {
		count(STAT_NO_IDENTITY);
		return 0;
	}
	struct fp_owner owner = *o;
	// In task context only: a kernel thread (a tunnel's or a workqueue's) is no
	// sender. (A softirq that runs on a user task's stack has that task as
	// current: it can only match if that task is of the socket's creator's
	// process, running the creator's executable, checked below; the datagram is
	// then that process's socket's, as the queue would attribute it.)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(task, flags) & PF_KTHREAD) {
		count(STAT_NO_IDENTITY);
		return 0;
	}
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) != owner.tgid) {
		count(STAT_NO_IDENTITY);
		return 0;
	}
	key.uid = bpf_get_socket_uid(skb);
	if (!identify(&key) || key.ino != owner.ino || key.parent_ino != owner.parent_ino ||
	    key.dev != owner.dev || key.mnt_id != owner.mnt_id) {
		count(STAT_NO_IDENTITY);
		return 0;
	}
	// The datagram's source is the flow's local end (conntrack's original tuple).
	return lookup(&key, 0, local, bpf_ntohs(ports[0])) == ACT_ALLOW;
}

// ---- Live byte counts (the "live" block): an iterator over socks ----
//
// latch_fast_live walks the socket storage map (socks) and writes, for every
// socket whose record is counting (an active open of the served namespace from
// its TCP_CONNECT_CB to its TCP_CLOSE), its tuple and its counters so far
// (struct fp_live, fixed size, one after the other, through bpf_seq_write):
// the byte accountant reports a long flow's bytes from them while it lives,
// without its conntrack entry (FastPath.SocketCounts). Linux 5.9+ (the
// bpf_sk_storage_map iterator); without it, Open leaves the program out.

#define LIVE_KIND 0x6c697621u // "liv!"
struct fp_live {
	__u32 kind;        // LIVE_KIND
	__u8 family;       // 4 or 6 (an IPv4-mapped address is 4)
	__u8 pad;
	__u16 pad2;
	__u8 local[16];    // IPv4 in the first 4 bytes, network order
	__u8 remote[16];
	__u16 local_port;  // host order
	__u16 remote_port; // host order
	__u32 pad3;
	__u64 bytes_out;   // as fp_bytes
	__u64 bytes_in;
	__u64 packets_out;
	__u64 packets_in;
};

const struct fp_live *unused_live __attribute__((unused));

// The kernel's socket members the iterator reads (CO-RE; the ___live flavour
// keeps them apart from the struct sock above, CO-RE matches them by the name
// before the ___).
struct in6_addr___live {
	union {
		__u8 u6_addr8[16];
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));
struct sock_common___live {
	__u32 skc_daddr;      // network order
	__u32 skc_rcv_saddr;  // network order
	__u16 skc_dport;      // network order
	__u16 skc_num;        // host order
	unsigned short skc_family;
	struct in6_addr___live skc_v6_daddr;
	struct in6_addr___live skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock___live {
	struct sock_common___live __sk_common;
} __attribute__((preserve_access_index));

struct seq_file;
struct bpf_iter_meta___live {
	struct seq_file *seq;
} __attribute__((preserve_access_index));
struct bpf_iter__bpf_sk_storage_map___live {
	struct bpf_iter_meta___live *meta;
	void *map;
	struct sock___live *sk;
	void *value;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp___live {
	struct bpf_iter_meta___live *meta;
	struct sock_common___live *sk_common;
} __attribute__((preserve_access_index));

// write_live writes the record of the socket skc whose storage is s, if it is
// counting.
static __always_inline void write_live(struct seq_file *seq, struct sock_common___live *skc, struct fp_sock *s)
{
	if (!s->counting)
		return;
	struct fp_live r;
	__builtin_memset(&r, 0, sizeof(r));
	r.kind = LIVE_KIND;
	r.bytes_out = s->bytes.bytes_out;
	r.bytes_in = s->bytes.bytes_in;
	r.packets_out = s->bytes.packets_out;
	r.packets_in = s->bytes.packets_in;
	r.local_port = skc->skc_num;
	r.remote_port = bpf_ntohs(skc->skc_dport);
	if (skc->skc_family == AF_INET) {
		r.family = 4;
		__u32 l = skc->skc_rcv_saddr, d = skc->skc_daddr;
		__builtin_memcpy(r.local, &l, 4);
		__builtin_memcpy(r.remote, &d, 4);
	} else if (skc->skc_family == AF_INET6) {
		__u32 l[4], d[4];
		for (int i = 0; i < 4; i++) {
			l[i] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			d[i] = skc->skc_v6_daddr.in6_u.u6_addr32[i];
		}
		if (d[0] == 0 && d[1] == 0 && d[2] == bpf_htonl(0xffff)) {
			// Connected to an IPv4-mapped address: the packets, and
			// conntrack's entry, are IPv4 (as report_end).
			r.family = 4;
			__builtin_memcpy(r.local, &l[3], 4);
			__builtin_memcpy(r.remote, &d[3], 4);
		} else {
			r.family = 6;
			__builtin_memcpy(r.local, l, 16);
			__builtin_memcpy(r.remote, d, 16);
		}
	} else {
		return;
	}
	bpf_seq_write(seq, &r, sizeof(r));
}

// The iterator over socks itself (Linux 5.9): it visits the sockets that have
// a record only.
SEC("iter/bpf_sk_storage_map")
int latch_fast_live(struct bpf_iter__bpf_sk_storage_map___live *ctx)
{
	struct sock___live *sk = ctx->sk;
	struct fp_sock *s = ctx->value;
	if (!sk || !s)
		return 0;
	write_live(ctx->meta->seq, &sk->__sk_common, s);
	return 0;
}

// The same through the iterator over the TCP sockets of the reader's network
// namespace, for a kernel that refuses iterators over a map's elements: it
// visits every TCP socket and looks its record up (bpf_sk_storage_get in
// tracing programs, Linux 5.11).
SEC("iter/tcp")
int latch_fast_live_tcp(struct bpf_iter__tcp___live *ctx)
{
	struct sock_common___live *skc = ctx->sk_common;
	if (!skc)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; // a request or TIME_WAIT socket: no storage
	struct fp_sock *s = bpf_sk_storage_get(&socks, tp, 0, 0);
	if (!s)
		return 0;
	write_live(ctx->meta->seq, skc, s);
	return 0;
}

// ---- end of the "live" block ----

// ---- notrack: deciding a fast socket again (iter/tcp) ----
//
// With the ruleset's notrack rules (internal/intercept/linux, "Notrack") a TCP
// flow whose socket carries MARK_FAST_ALLOW or MARK_FAST_FLOW has no conntrack
// entry, so a rule change cannot mark the flow for deciding again in conntrack:
// the mark goes on the socket. latch_fast_redecide moves every TCP socket of the
// served network namespace from MARK_FAST_ALLOW or MARK_FAST_FLOW to
// MARK_FAST_REDECIDE (the mark's other bits stay), but those whose 4-tuple is in
// keep under the current iter_session (flows the daemon knows and found
// unaffected); the ruleset then holds the socket's next packet and the queue
// decides it again. latch_fast_restore moves the one socket of restore_tuple back
// from MARK_FAST_REDECIDE, if it still has it, once the queue allowed it again:
// to MARK_FAST_FLOW (established), or to MARK_FAST_ALLOW if its SYN is still on
// its way (SYN_SENT). Both run when the daemon reads an iterator's fd
// (the kernel walks every TCP socket of the reader's network namespace, each
// full socket under its lock); bpf_setsockopt(SOL_SOCKET, SO_MARK) is allowed
// there since Linux 5.15. The kernel's types are declared with the ___notrack
// flavour (CO-RE matches them without it), so that other blocks may declare
// their own.

struct possible_net_t___notrack { struct net___notrack *net; } __attribute__((preserve_access_index));
struct net___notrack { __u64 net_cookie; } __attribute__((preserve_access_index));
struct in6_addr___notrack { union { __u32 u6_addr32[4]; } in6_u; } __attribute__((preserve_access_index));
struct sock_common___notrack {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct possible_net_t___notrack skc_net;
	struct in6_addr___notrack skc_v6_daddr;
	struct in6_addr___notrack skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct bpf_iter_meta___notrack { __u64 seq_num; } __attribute__((preserve_access_index));
struct bpf_iter__tcp___notrack {
	struct bpf_iter_meta___notrack *meta;
	struct sock_common___notrack *sk_common;
} __attribute__((preserve_access_index));

// A TCP socket's 4-tuple as the iterators see it: an AF_INET6 socket connected
// to an IPv4-mapped address is family 4, as its packets are.
struct fp_tuple {
	__u8 family;       // 4 or 6
	__u8 pad;
	__u16 local_port;  // host order
	__u16 remote_port; // host order
	__u16 pad2;
	__u8 local[16];    // IPv4 in the first 4 bytes, network order
	__u8 remote[16];
};

// The sockets latch_fast_redecide leaves alone: a value of iter_session keeps
// the tuple (older values are leftovers of earlier runs). Filled by the daemon
// before each run; a socket whose tuple did not fit is moved (conservative).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536); // set by the loader
	__type(key, struct fp_tuple);
	__type(value, __u64);
} keep SEC(".maps");

// The socket latch_fast_restore moves back (entry 0).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_tuple);
} restore SEC(".maps");

// The current run of latch_fast_redecide (see keep).
volatile __u64 iter_session = 0;
// Sockets the last run moved (written by the iterators, read by the daemon).
volatile __u64 iter_moved = 0;

const struct fp_tuple *unused_tuple __attribute__((unused));

// tuple_of reads skc's 4-tuple into t; 0 if it is neither IPv4 nor IPv6.
static __always_inline int tuple_of(struct sock_common___notrack *skc, struct fp_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->local_port = skc->skc_num;
	t->remote_port = bpf_ntohs(skc->skc_dport);
	if (skc->skc_family == AF_INET) {
		__u32 l = skc->skc_rcv_saddr, r = skc->skc_daddr;
		t->family = 4;
		__builtin_memcpy(t->local, &l, 4);
		__builtin_memcpy(t->remote, &r, 4);
		return 1;
	}
	if (skc->skc_family != AF_INET6)
		return 0;
	__u32 r0 = skc->skc_v6_daddr.in6_u.u6_addr32[0], r1 = skc->skc_v6_daddr.in6_u.u6_addr32[1];
	__u32 r2 = skc->skc_v6_daddr.in6_u.u6_addr32[2], r3 = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	__u32 l0 = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0], l1 = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
	__u32 l2 = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2], l3 = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
	if (r0 == 0 && r1 == 0 && r2 == bpf_htonl(0xffff)) {
		t->family = 4;
		__builtin_memcpy(t->local, &l3, 4);
		__builtin_memcpy(t->remote, &r3, 4);
		return 1;
	}
	t->family = 6;
	__builtin_memcpy(t->local, &l0, 4);
	__builtin_memcpy(t->local + 4, &l1, 4);
	__builtin_memcpy(t->local + 8, &l2, 4);
	__builtin_memcpy(t->local + 12, &l3, 4);
	__builtin_memcpy(t->remote, &r0, 4);
	__builtin_memcpy(t->remote + 4, &r1, 4);
	__builtin_memcpy(t->remote + 8, &r2, 4);
	__builtin_memcpy(t->remote + 12, &r3, 4);
	return 1;
}

// move_mark gives the full TCP socket of ctx the mark to (in MARK_MASK, other
// bits kept) if it has from or from2 there, and the tuple that keep says; 1 if
// it did. to == 0 (restoring): MARK_FAST_FLOW, or MARK_FAST_ALLOW for a socket
// whose SYN is still on its way (SYN_SENT: its SYN retransmissions must pass;
// latch_fast_sockops moves it on once established).
static __always_inline int move_mark(struct bpf_iter__tcp___notrack *ctx, __u32 from, __u32 from2, __u32 to, int restoring)
{
	struct sock_common___notrack *skc = ctx->sk_common;
	if (!skc)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp) // a request or TIME_WAIT socket: no mark to move
		return 0;
	if (BPF_CORE_READ(skc, skc_net.net, net_cookie) != netns_cookie)
		return 0;
	int cur = 0;
	if (bpf_getsockopt(tp, SOL_SOCKET, SO_MARK, &cur, sizeof(cur)))
		return 0;
	__u32 ours = (__u32)cur & MARK_MASK;
	if (ours != from && ours != from2)
		return 0;
	struct fp_tuple t;
	if (!tuple_of(skc, &t))
		return 0;
	__u32 zero = 0;
	if (restoring) {
		struct fp_tuple *want = bpf_map_lookup_elem(&restore, &zero);
		if (!want)
			return 0;
		// 40 bytes, compared as 5 words (no memcmp in BPF).
		__u64 *a = (__u64 *)want, *b = (__u64 *)&t;
#pragma unroll
		for (int i = 0; i < (int)(sizeof(t) / 8); i++)
			if (a[i] != b[i])
				return 0;
	} else {
		__u64 *s = bpf_map_lookup_elem(&keep, &t);
		if (s && *s == iter_session)
			return 0;
	}
	if (restoring)
		to = skc->skc_state == TCP_SYN_SENT ? MARK_FAST_ALLOW : MARK_FAST_FLOW;
	int v = (int)(((__u32)cur & ~MARK_MASK) | to);
	if (bpf_setsockopt(tp, SOL_SOCKET, SO_MARK, &v, sizeof(v)))
		return 0;
	iter_moved += 1;
	return 1;
}

SEC("iter/tcp")
int latch_fast_redecide(struct bpf_iter__tcp___notrack *ctx)
{
	move_mark(ctx, MARK_FAST_ALLOW, MARK_FAST_FLOW, MARK_FAST_REDECIDE, 0);
	return 0;
}

SEC("iter/tcp")
int latch_fast_restore(struct bpf_iter__tcp___notrack *ctx)
{
	move_mark(ctx, MARK_FAST_REDECIDE, MARK_FAST_REDECIDE, 0, 1);
	return 0;
}

// latch_fast_sweep moves every TCP socket of the served namespace that has
// MARK_FAST_ALLOW to MARK_FAST_REDECIDE (other bits kept), once, at Open,
// before the ruleset names this daemon's lease: such a socket's mark was given
// by a daemon gone before (its SYN was on its way when it died, see "The
// lease" in doc.go), and once this daemon's lease holds, the ruleset would let
// its next SYN pass by that mark, to wherever the socket connected since,
// with no connect hook to decide it. With MARK_FAST_REDECIDE the queue decides
// it. (The keep map is empty then: nothing is kept.)
SEC("iter/tcp")
int latch_fast_sweep(struct bpf_iter__tcp___notrack *ctx)
{
	move_mark(ctx, MARK_FAST_ALLOW, MARK_FAST_ALLOW, MARK_FAST_REDECIDE, 0);
	return 0;
}

// ---- end of notrack ----

// ---- The lease (the ruleset's xt_bpf match on a SYN with MarkFastAllow) ----

// latch_fast_lease matches (returns 1) while the daemon holds its lease: while
// the lease map has a user reference (usercnt, read through the map's pointer,
// which the verifier allows a loader with CAP_PERFMON). Pinned (Config.PinDir)
// for the ruleset.
SEC("socket")
int latch_fast_lease(struct __sk_buff *skb)
{
	struct bpf_map *m = (struct bpf_map *)&lease;
	return m->usercnt.counter > 0;
}


// ---- The socket pin (the ruleset's xt_bpf match on an allowed flow's packets) ----

// A packet's own tuple, as this host sends it: the key of the socket pin.
// ICMP echo (and extended echo) requests carry their identifier in sport.
struct fp_pin_key {
	__u8 family; // 4 or 6
	__u8 proto;  // IPPROTO_UDP, IPPROTO_UDPLITE, IPPROTO_SCTP, IPPROTO_DCCP, IPPROTO_L2TP, IPPROTO_ICMP or IPPROTO_ICMPV6
	__u16 sport; // network order
	__u16 dport; // network order
	__u16 pad;
	__u8 src[16];
	__u8 dst[16];
};

// The socket (cookie; 0: none) each allowed UDP, UDP-Lite or ICMP echo flow
// was allowed for, by the tuple of the packet its allow verdict carried.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); // a flow it forgot is decided again
	__type(key, struct fp_pin_key);
	__type(value, __u64);
} pins SEC(".maps");

#define IPPROTO_ICMP 1
#define IPPROTO_ICMPV6 58
#define IPPROTO_UDPLITE 136
#define IPPROTO_SCTP 132
#define IPPROTO_DCCP 33
#define IPPROTO_L2TP 115

// The value of a pin recorded for an inbound flow (no local socket known
// yet); no socket has this cookie (cookies count up from 1).
#define PIN_ANY 0xffffffffffffffffULL

// pin_key fills k from the packet's headers: 1 if the packet is one the pin
// is about (UDP, UDP-Lite, SCTP, DCCP, L2TP over IP; ICMP or ICMPv6 echo or
// extended echo request),
// 0 if not (every other protocol and ICMP type: the kernel's errors, echo
// replies it sends for a peer's ping), -1 if the headers cannot be read.
static __always_inline int pin_key(struct __sk_buff *skb, struct fp_pin_key *k)
{
	__u8 h[40];
	__u32 l4;
	if (bpf_skb_load_bytes_relative(skb, 0, h, 1, BPF_HDR_START_NET))
		return -1;
	if ((h[0] >> 4) == 4) {
		if (bpf_skb_load_bytes_relative(skb, 0, h, 20, BPF_HDR_START_NET))
			return -1;
		k->family = 4;
		k->proto = h[9];
		__builtin_memcpy(k->src, h + 12, 4);
		__builtin_memcpy(k->dst, h + 16, 4);
		l4 = (h[0] & 0xf) * 4;
		if (((h[6] & 0x1f) | h[7]) != 0)
			return k->proto == IPPROTO_ICMP ? 0 : 1; // a later fragment: no ports, key without
	} else if ((h[0] >> 4) == 6) {
		if (bpf_skb_load_bytes_relative(skb, 0, h, 40, BPF_HDR_START_NET))
			return -1;
		k->family = 6;
		k->proto = h[6];
		__builtin_memcpy(k->src, h + 8, 16);
		__builtin_memcpy(k->dst, h + 24, 16);
		l4 = 40;
	} else {
		return -1;
	}
	__u8 p[6];
	switch (k->proto) {
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	// SCTP and DCCP: ports first too, and any user's socket may send them
	// (review10: passed by an allowed flow's mark from any socket).
	case IPPROTO_SCTP:
	case IPPROTO_DCCP:
		if (bpf_skb_load_bytes_relative(skb, l4, p, 4, BPF_HDR_START_NET))
			return -1;
		__builtin_memcpy(&k->sport, p, 2);
		__builtin_memcpy(&k->dport, p + 2, 2);
		return 1;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if ((k->proto == IPPROTO_ICMP) != (k->family == 4))
			return 0;
		if (bpf_skb_load_bytes_relative(skb, l4, p, 6, BPF_HDR_START_NET))
			return -1;
		// Echo request (8; ICMPv6 128) and extended echo request (42;
		// ICMPv6 160): what a ping socket sends.
		if (k->family == 4 ? (p[0] != 8 && p[0] != 42) : (p[0] != 128 && p[0] != 160))
			return 0;
		__builtin_memcpy(&k->sport, p + 4, 2);
		return 1;
	default:
		// Another protocol after IPv6 extension headers (UDP among them)
		// gets a key without ports: still per socket, but per address pair.
		if (k->family == 6 && (k->proto == 0 || k->proto == 43 || k->proto == 44 || k->proto == 60))
			return 1;
		// L2TP over IP: any user's SOCK_DGRAM socket sends it, and
		// conntrack keys it by the address pair alone (review10).
		if (k->proto == IPPROTO_L2TP)
			return 1;
		return 0;
	}
}

// latch_fast_pin pins an allowed UDP (UDP-Lite, ICMP echo) flow to the socket
// it was allowed for. The ruleset's output chain runs it (xt_bpf) at two
// places: on a packet back from an allow verdict (mark MARK_ALLOW: recorded,
// the packet's tuple -> its socket's cookie; returns 1), and on a packet of a
// flow whose conntrack mark says allowed (returns 1, and the packet passes,
// only if its socket is the one recorded for its tuple: another socket on the
// same tuple, such as another program's that bound the local port the allowed
// socket freed, goes to the queue). In the input chain (Config.Inbound), a
// peer's packet back from an allow verdict records the reversed tuple for the
// first local socket that sends on it. A packet the pin is not about (another
// protocol, an ICMP error or echo reply) returns 1; one whose headers cannot
// be read, 0.
SEC("socket")
int latch_fast_pin(struct __sk_buff *skb)
{
	struct fp_pin_key k = {};
	int r = pin_key(skb, &k);
	if (r <= 0)
		return r == 0;
	if ((skb->mark & MARK_MASK) == MARK_ALLOW && skb->ingress_ifindex) {
		// A peer's datagram back from an allow verdict in the input chain
		// (Config.Inbound): the local socket that will receive it is not
		// known here. The reversed tuple (what this host sends back) gets
		// PIN_ANY: the first local socket to send on it claims it. Not ICMP:
		// the kernel answers a peer's echo request itself (an echo reply,
		// which the pin lets pass).
		if (k.proto == IPPROTO_ICMP || k.proto == IPPROTO_ICMPV6)
			return 1;
		struct fp_pin_key r = k;
		__builtin_memcpy(r.src, k.dst, 16);
		__builtin_memcpy(r.dst, k.src, 16);
		r.sport = k.dport;
		r.dport = k.sport;
		// Not over a record the daemon made before its verdict (the
		// socket it found will receive the datagram: only that one
		// claims the flow, see the daemon's pinInbound).
		__u64 any = PIN_ANY;
		bpf_map_update_elem(&pins, &r, &any, BPF_NOEXIST);
		return 1;
	}
	__u64 cookie = bpf_get_socket_cookie(skb);
	if ((skb->mark & MARK_MASK) == MARK_ALLOW) {
		bpf_map_update_elem(&pins, &k, &cookie, BPF_ANY);
		return 1;
	}
	__u64 *c = bpf_map_lookup_elem(&pins, &k);
	if (!c)
		return 0;
	if (*c == cookie)
		return 1;
	if (*c != PIN_ANY)
		return 0;
	// The first socket to answer an inbound flow claims it.
	bpf_map_update_elem(&pins, &k, &cookie, BPF_EXIST);
	return 1;
}

// ---- The receive check (cgroup_skb ingress: a pinned flow's packets reach only its socket) ----

// A packet of a pinned flow the kernel delivered to another socket than the
// one the flow is pinned to (dropped by latch_pin_ingress), for the daemon:
// it decides a flow a peer opened again, for the receiving socket.
struct fp_pin_move {
	struct fp_pin_key key; // the flow as this host sends it (the pin's key)
	__u64 cookie;          // the socket the kernel delivered the packet to
	__u64 pinned;          // the socket the flow is pinned to
};

// Keeps fp_pin_move in the object's BTF for bpf2go's -type.
const struct fp_pin_move *unused_pin_move __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} pin_moves SEC(".maps");

// When a flow's move to a socket was last reported, and which socket's (at
// most once a second per flow, whichever socket: a peer's flood costs one
// report).
struct fp_pin_seen {
	__u64 cookie;
	__u64 at; // CLOCK_BOOTTIME, ns
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct fp_pin_key);
	__type(value, struct fp_pin_seen);
} pin_moved SEC(".maps");

// The served namespace's IPv4 broadcast addresses (network order: the local
// routing table's broadcast routes), kept by the loader (receiveCheck's
// keepBroadcasts): a datagram to one of them goes to every socket on the
// port. Key 0 while it cannot keep them (before its first listing, after its
// subscription was lost, until it subscribed again): then an IPv4 datagram
// in a broadcast frame passes. 16384 (allocated as filled): with 1024, a host
// with more IPv4 subnets than that kept key 0 for good (review20).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} local_bcast SEC(".maps");

enum { PIN_IN_DROPPED, PIN_IN_CLAIMED, PIN_IN_LOST, PIN_IN_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PIN_IN_MAX);
	__type(key, __u32);
	__type(value, __u64);
} pin_in_stats SEC(".maps");

static __always_inline void pin_in_count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&pin_in_stats, &i);
	if (v)
		*v += 1;
}

#define PACKET_BROADCAST 1

// pin_in_key fills k with the pin's key of the flow a peer's packet to a
// local socket of protocol want belongs to (the tuple reversed: as this host
// sends on the flow): 1 if the packet is one the check is about (UDP or
// UDP-Lite to a unicast address; an ICMP or ICMPv6 echo or extended echo
// reply), 0 if not (a multicast or broadcast destination, whose datagram the
// kernel gives every socket bound to the port; another protocol; an IPv6
// header chain no longer than MAX_EXT_HEADERS to another protocol), -1 if
// its headers cannot be read, -2 if it is not to be passed for want of its
// tuple (an IPv6 header chain longer than MAX_EXT_HEADERS, which the kernel
// walks all of).
static __always_inline int pin_in_key(struct __sk_buff *skb, struct fp_pin_key *k, __u8 want)
{
	__u8 h[40];
	__u32 l4;
	__u8 proto;
	if (bpf_skb_load_bytes_relative(skb, 0, h, 1, BPF_HDR_START_NET))
		return -1;
	if ((h[0] >> 4) == 4) {
		if (bpf_skb_load_bytes_relative(skb, 0, h, 20, BPF_HDR_START_NET))
			return -1;
		// 224.0.0.0/4 multicast and 255.255.255.255. Not the rest of
		// 240.0.0.0/4: Linux routes and delivers it as unicast (since
		// 2.6.25; a host may have an address there), and its subnets'
		// broadcasts are in local_bcast (review20: the check passed any
		// datagram to an address in 240.0.0.0/4).
		if ((h[16] & 0xf0) == 0xe0 || (h[16] == 255 && h[17] == 255 && h[18] == 255 && h[19] == 255))
			return 0;
		k->family = 4;
		proto = h[9];
		__builtin_memcpy(k->src, h + 16, 4);
		__builtin_memcpy(k->dst, h + 12, 4);
		l4 = (h[0] & 0xf) * 4;
	} else if ((h[0] >> 4) == 6) {
		if (bpf_skb_load_bytes_relative(skb, 0, h, 40, BPF_HDR_START_NET))
			return -1;
		if (h[24] == 0xff)
			return 0;
		k->family = 6;
		proto = h[6];
		__builtin_memcpy(k->src, h + 24, 16);
		__builtin_memcpy(k->dst, h + 8, 16);
		l4 = 40;
		// The extension headers before it (reassembly left no fragment
		// header but the first's).
		for (int i = 0; i < MAX_EXT_HEADERS && proto != want; i++) {
			__u8 b[2];
			if (proto == 0 || proto == 43 || proto == 60) {
				if (bpf_skb_load_bytes_relative(skb, l4, b, 2, BPF_HDR_START_NET))
					return -1;
				proto = b[0];
				l4 += (b[1] + 1) * 8;
			} else if (proto == 51) {
				if (bpf_skb_load_bytes_relative(skb, l4, b, 2, BPF_HDR_START_NET))
					return -1;
				proto = b[0];
				l4 += (b[1] + 2) * 4;
			} else if (proto == 44) {
				if (bpf_skb_load_bytes_relative(skb, l4, b, 2, BPF_HDR_START_NET))
					return -1;
				proto = b[0];
				l4 += 8;
			} else {
				return 0;
			}
		}
		// A chain longer than that (the kernel and conntrack walk any
		// number of headers, and deliver the datagram): which flow it is
		// cannot be told, and it is dropped rather than passed to a socket
		// it may not be for (review19: 9 destination options headers got
		// a peer's datagram past the check).
		if (proto == 0 || proto == 43 || proto == 44 || proto == 51 || proto == 60)
			return -2;
	} else {
		return -1;
	}
	if (proto != want)
		return 0;
	k->proto = proto;
	__u8 p[6];
	// Not masked to a bound: an offset beyond it (a 1 KiB destination
	// options header) read other bytes as the ports and passed (review19).
	if (l4 > 0xffff)
		return -2;
	if (bpf_skb_load_bytes_relative(skb, l4, p, 6, BPF_HDR_START_NET))
		return -1;
	if (proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE) {
		__builtin_memcpy(&k->sport, p + 2, 2);
		__builtin_memcpy(&k->dport, p, 2);
		return 1;
	}
	// An echo (0; ICMPv6 129) or extended echo reply (43; ICMPv6 161): the
	// pin keyed the request by its identifier, in sport.
	if (k->family == 4 ? (p[0] != 0 && p[0] != 43) : (p[0] != 129 && p[0] != 161))
		return 0;
	__builtin_memcpy(&k->sport, p + 4, 2);
	return 1;
}

// latch_pin_ingress is the socket pin's receive side, attached to the root
// cgroup (cgroup_skb ingress: it runs as the packet is queued to the socket
// the kernel chose for it, skb->sk, after the ruleset passed it), every
// process's sockets, those of the served network namespace only (of every
// namespace on a kernel whose cgroup_skb programs cannot read it: a socket
// of another namespace that receives a datagram of the very tuple of a flow
// pinned here is checked against that pin too). A peer's
// UDP or UDP-Lite datagram to a unicast address, or an echo reply to a ping
// socket, of a flow the pin holds a socket for (the flow as this host sends
// it, latch_fast_pin's key) reaches only that socket: one the kernel gives to
// another socket on the port (one that joined it after the flow was allowed,
// SO_REUSEADDR or SO_REUSEPORT, or a reuseport program steering) is dropped,
// counted, and reported to the daemon (pin_moves, at most once a second per
// flow), which decides a flow the peer opened again for the
// receiving socket. A pin with no socket yet (PIN_ANY, an inbound flow whose
// socket the daemon did not find) is claimed by the first socket that
// receives on the flow. Anything else passes: a flow the pin does not know
// (from before latch, forgotten), multicast and broadcast (every socket on
// the port gets its copy), raw sockets, other protocols. An IPv6 datagram
// whose UDP header lies beyond MAX_EXT_HEADERS extension headers is dropped
// (which flow it is cannot be told).
SEC("cgroup_skb/ingress")
int latch_pin_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->type != SOCK_DGRAM)
		return 1;
	__u8 want = sk->protocol;
	if (want != IPPROTO_UDP && want != IPPROTO_UDPLITE && want != IPPROTO_ICMP && want != IPPROTO_ICMPV6)
		return 1;
	// A kernel whose cgroup_skb programs cannot read the namespace
	// (skb_netns 0): every namespace's sockets, as simultaneous_open.
	if (skb_netns && bpf_get_netns_cookie(skb) != netns_cookie)
		return 1;
	struct fp_pin_key k = {};
	int keyed = pin_in_key(skb, &k, want);
	if (keyed == -2) {
		pin_in_count(PIN_IN_DROPPED);
		return 0;
	}
	if (keyed <= 0)
		return 1;
	// Multicast and broadcast go by the destination address (pin_in_key;
	// a subnet's broadcast address by local_bcast), not by the frame's
	// (pkt_type), which the peer chooses: a datagram to this host's
	// unicast address in a frame to a multicast or broadcast MAC is
	// delivered to one socket like any other (review19).
	if (k.family == 4) {
		__u32 dst, unknown = 0;
		__builtin_memcpy(&dst, k.src, 4);
		if (bpf_map_lookup_elem(&local_bcast, &dst))
			return 1;
		if (skb->pkt_type == PACKET_BROADCAST && bpf_map_lookup_elem(&local_bcast, &unknown))
			return 1;
	}
	__u64 *c = bpf_map_lookup_elem(&pins, &k);
	if (!c)
		return 1;
	__u64 pinned = *c;
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (pinned == cookie || pinned == 0)
		return 1;
	if (pinned == PIN_ANY) {
		bpf_map_update_elem(&pins, &k, &cookie, BPF_EXIST);
		pin_in_count(PIN_IN_CLAIMED);
		return 1;
	}
	pin_in_count(PIN_IN_DROPPED);
	__u64 now = bpf_ktime_get_boot_ns();
	struct fp_pin_seen *s = bpf_map_lookup_elem(&pin_moved, &k);
	// Once a second per flow, whichever socket: per flow and socket, a
	// reuseport program steering a peer's datagrams to two sockets in turn
	// made each a report, and a conntrack update by the daemon (review19).
	if (s && now - s->at < 1000000000ULL)
		return 0;
	struct fp_pin_seen seen = {.cookie = cookie, .at = now};
	bpf_map_update_elem(&pin_moved, &k, &seen, BPF_ANY);
	struct fp_pin_move *e = bpf_ringbuf_reserve(&pin_moves, sizeof(*e), 0);
	if (!e) {
		pin_in_count(PIN_IN_LOST);
		return 0;
	}
	__builtin_memcpy(&e->key, &k, sizeof(k));
	e->cookie = cookie;
	e->pinned = pinned;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

// ---- The sender stash (the ruleset's xt_bpf match before the queue's UDP rules) ----

// What both this program and the daemon read from a UDP datagram this host
// sends: its tuple, its IPv4 identification (0 for IPv6) and the first up to
// STASH_DATA bytes of its payload (after the UDP header). Not the UDP length
// nor its checksum: the queue may hand the daemon a GSO packet whose length
// and checksum the kernel has not finished (and the daemon a segment, were
// the packet segmented: the first segment's bytes are the same).
#define STASH_DATA 32
struct fp_stash_key {
	__u8 family; // 4 or 6
	__u8 proto;  // IPPROTO_UDP
	__u16 sport; // network order
	__u16 dport; // network order
	__u16 ipid;  // network order; 0 for IPv6
	__u8 src[16];
	__u8 dst[16];
	__u32 n;     // payload bytes in data (the rest is zero)
	__u8 data[STASH_DATA];
};

// The socket (cookie) that sent each UDP datagram on its way to the queue, by
// its key; 0: more than one socket sent datagrams with that key (ambiguous).
// The daemon takes (looks up and deletes) the entry of each datagram it reads.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); // a datagram whose entry it forgot is one of an unknown sender
	__type(key, struct fp_stash_key);
	__type(value, __u64);
} sender_stash SEC(".maps");

// STASH_PORT_SHARED in stash_ports: more than one socket sent through the
// stash from that local port.
#define STASH_PORT_SHARED (~0ULL)

// The socket (cookie) that sent UDP datagrams through the stash from each
// local port (host order), or STASH_PORT_SHARED once another one did too:
// sticky, never evicted (one entry per port at most, preallocated). The
// daemon reads it for a datagram whose own record is gone or ambiguous
// (identical datagrams of one socket share a key; the first takes the
// record): the port's one sender if only one ever sent from it, else no
// program's. Without it, the one socket left on a port a sender shared and
// closed would be credited with the sender's datagrams (review12).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} stash_ports SEC(".maps");

// stash_key fills k from a UDP datagram's headers and payload: 1 if it did,
// 0 if the packet is not a whole UDP datagram directly after the IP header
// (another protocol, an IPv4 fragment, IPv6 extension headers) or cannot be
// read; -1 if its ports are in k but its payload cannot be read (the caller
// marks the port shared: the daemon, which reads the queue's copy, may key
// it). Read with bpf_skb_load_bytes, which reads pages too, not
// bpf_skb_load_bytes_relative (the linear part only): a socket with
// UDP_SEGMENT, MSG_MORE or MSG_ZEROCOPY has its payload in pages, and its
// datagrams had no record and no mark of their port, so the daemon credited
// the port's one sender (review13). In xt_bpf at LOCAL_OUT the packet's data
// starts at its IP header, where the offsets count from.
static __always_inline int stash_key(struct __sk_buff *skb, struct fp_stash_key *k)
{
	__u8 h[40];
	__u32 l4, tot;
	if (bpf_skb_load_bytes(skb, 0, h, 1))
		return 0;
	if ((h[0] >> 4) == 4) {
		if (bpf_skb_load_bytes(skb, 0, h, 20))
			return 0;
		if (h[9] != IPPROTO_UDP || (h[6] & 0x3f) | h[7]) // not UDP, or MF set or an offset
			return 0;
		k->family = 4;
		__builtin_memcpy(&k->ipid, h + 4, 2);
		__builtin_memcpy(k->src, h + 12, 4);
		__builtin_memcpy(k->dst, h + 16, 4);
		l4 = (h[0] & 0xf) * 4;
		if (l4 < 20)
			return 0;
		tot = (__u32)h[2] << 8 | h[3];
	} else if ((h[0] >> 4) == 6) {
		if (bpf_skb_load_bytes(skb, 0, h, 40))
			return 0;
		if (h[6] != IPPROTO_UDP)
			return 0;
		k->family = 6;
		tot = 40 + ((__u32)h[4] << 8 | h[5]);
		__builtin_memcpy(k->src, h + 8, 16);
		__builtin_memcpy(k->dst, h + 24, 16);
		l4 = 40;
	} else {
		return 0;
	}
	k->proto = IPPROTO_UDP;
	__u8 p[4];
	if (bpf_skb_load_bytes(skb, l4, p, 4))
		return 0;
	__builtin_memcpy(&k->sport, p, 2);
	__builtin_memcpy(&k->dport, p + 2, 2);
	// The payload: what the IP header says the packet has after the UDP
	// header, up to STASH_DATA bytes.
	__u32 off = l4 + 8;
	if (tot < off)
		return -1;
	__u32 n = tot - off;
	if (n > STASH_DATA)
		n = STASH_DATA;
	k->n = n;
	if (n == STASH_DATA) {
		if (bpf_skb_load_bytes(skb, off, k->data, STASH_DATA))
			return -1;
	} else if (n > 0) {
		// The verifier wants a constant-bounded length.
		n &= STASH_DATA - 1;
		if (n == 0 || bpf_skb_load_bytes(skb, off, k->data, n))
			return -1;
	}
	return 1;
}

// latch_send_stash records, for each UDP datagram this host sends on its way
// to the queue, the socket that sent it (see "The sender stash" in doc.go):
// the queue does not carry the packet's socket, and a lookup by the tuple
// finds the socket the kernel would deliver an answer to, which is another
// one when two sockets share the local port (SO_REUSEADDR, SO_REUSEPORT). A
// key another socket recorded first becomes ambiguous (0): the daemon then
// attributes the datagram to no program where its port is shared. The
// ruleset's LATCH-OUT runs it (xt_bpf) before the first rule that may queue
// UDP; it never matches.
SEC("socket")
int latch_send_stash(struct __sk_buff *skb)
{
	struct fp_stash_key k = {};
	int keyed = stash_key(skb, &k);
	if (!keyed)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 port = bpf_ntohs(k.sport);
	if (!cookie || keyed < 0) {
		// No socket (and no uid to check), or a payload it cannot read:
		// its datagram has no entry, and its port is shared, lest the
		// daemon credit the port's one sender with it.
		__u64 shared = STASH_PORT_SHARED;
		bpf_map_update_elem(&stash_ports, &port, &shared, BPF_ANY);
		return 0;
	}
	// The port's senders first (an insert is atomic: of two sockets racing
	// to be the first, the other finds the winner and marks the port shared).
	if (bpf_map_update_elem(&stash_ports, &port, &cookie, BPF_NOEXIST)) {
		__u64 *pc = bpf_map_lookup_elem(&stash_ports, &port);
		if (pc && *pc != cookie)
			*pc = STASH_PORT_SHARED;
	}
	for (int i = 0; i < 2; i++) {
		if (!bpf_map_update_elem(&sender_stash, &k, &cookie, BPF_NOEXIST))
			return 0;
		__u64 *c = bpf_map_lookup_elem(&sender_stash, &k);
		if (c) {
			if (*c != cookie)
				*c = 0;
			return 0;
		}
		// Taken by the daemon between the two: try once more.
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
