// Package fastpath is latch's Linux kernel fast path: cgroup connect4/connect6 eBPF
// hooks that decide a TCP connection from an earlier decision of a rule, and a
// socket filter the ruleset runs (xt_bpf) on the first datagram of a UDP flow, so
// that a connection a rule already decided never crosses to user space through
// NFQUEUE.
//
// The programs (fastpath.c, built by `go generate` with bpf2go and clang; the
// objects are committed, so building latch needs no clang) are CO-RE against the
// running kernel's BTF. On connect they build a key from
//
//   - the calling task's executable: inode, file system (dev), the mount it was
//     executed through and its directory's inode (task->mm->exe_file; read
//     through bpf_get_current_task_btf's pointers with plain loads where the
//     kernel offers that helper to every program that reads it, else with a
//     bpf_probe_read_kernel call per pointer: the same values, a NULL or bad
//     pointer reading as 0 either way);
//   - the socket's owner (sk_uid, the uid NFQUEUE reports);
//   - protocol, remote address and remote port;
//
// and look it up in an LRU hash map (bounded, Config.MaxEntries). A hit whose rule
// generation is the current one and whose expiry has not passed gives the socket
// its mark as the kernel builds the SYN (the sock_ops program's TCP_CONNECT_CB,
// see "A mark for one connect" and "History"): MarkFastAllow for allow (with notrack, below, the ruleset keeps the
// flow out of conntrack and lets it pass; without, it saves MarkAllow to the new
// flow's conntrack mark and lets the SYN pass, so the flow is decided exactly as
// an allow verdict from the queue decides it, Redecide included), or MarkReject for deny and
// reject (the ruleset answers the SYN with a reset, as for a verdict from the
// queue). Anything else is a miss: the connection goes to NFQUEUE exactly as
// without the fast path, and a mark an earlier hit left on a reconnecting socket is
// cleared.
//
// # A mark for one connect
//
// A socket mark outlives the connection it was given for: after connect(AF_UNSPEC)
// (any program may) or a refused connect the socket may connect again. While the
// daemon runs, its connect hook decides that connect anew (it clears what an
// earlier connect left, and a hit marks the socket again); but the hooks are links
// the daemon owns, and a daemon that dies (SIGKILL, a crash; fail-closed) leaves
// its ruleset in place and takes the hooks along. So the mark that lets a SYN pass
// must not outlive its connect: the cgroup sock_ops program (latch_fast_sockops,
// at the root cgroup where it can, see "Socket ends") gives a hit's mark only at
// TCP_CONNECT_CB, in tcp_connect as the SYN is built (a connect that fails before,
// with no route or an IPv4-mapped address on an IPv6-only socket, never leaves
// TCP_CLOSE, so no state change would clear a mark the hook gave: it gets none),
// turns the state callback on for a socket whose SYN leaves with MarkFastAllow, moves it to MarkFastFlow (0x60000000, the mark's
// other bits kept) once its connection is established (ACTIVE_ESTABLISHED_CB), and
// clears MarkFastAllow or MarkFastFlow when it moves to TCP_CLOSE (a refused or
// timed-out connect, a reset, connect(AF_UNSPEC), its end). One socket keeps
// MarkFastFlow past TCP_CLOSE: one that close(2) of its last file reference
// moves there from ESTABLISHED or CLOSE_WAIT and then resets (SO_LINGER 0,
// or unread data; the program tells it by SEND_SHUTDOWN, which close sets
// first and which no other way to TCP_CLOSE from those states has), so that
// the reset, built just after, is kept out of conntrack and passed by the
// mark as the flow's other packets (a SYN never passes by MarkFastFlow). The
// socket is destroyed right after: no program connects it again or reads its
// mark (TestNotrackCloseResetUntracked in internal/intercept/linux). One
// contrived way keeps it on a socket that lives on: shutdown(2) of a socket
// not connected yet sets SEND_SHUTDOWN (ENOTCONN), which its connect keeps,
// and connect(AF_UNSPEC) of that socket established then looks like close.
// The program remembers in the socket's storage that it kept the mark, and
// takes it off at the socket's next connect (TCP_CONNECT_CB, whose SYN then
// goes to the queue tracked): before, the queue decided that connect but its whole
// connection went untracked, passed by the mark, out of conntrack
// (TestKeptFlowMarkGoesAtNextConnect, review17). The record is this
// daemon's (its socket storage map): a daemon started after the socket's
// disconnect does not know it, and that connect is decided by the queue and
// carried untracked as before; with no daemon the SYN is held
// (TestKeptFlowMarkDeadDaemon). Where
// sock_ops programs may not call bpf_skc_to_tcp_sock and
// bpf_probe_read_kernel, it is cleared as at any end. A connect its hook
// did not decide by a hit loses MarkFastAllow or MarkReject, and keeps
// MarkFastFlow and MarkFastRedecide, which may be an application's own fwmark
// under the mask (Mullvad's 0x6d6f6c65; TestAppMarkInsideHooksKept) and with
// which a SYN goes to the queue anyway. A hit's decision is void, the socket
// unmarked and the SYN queued, if at TCP_CONNECT_CB the socket's peer is not the
// address and port the hook decided: another cgroup connect program, run after
// latch's, rewrote it (a service mesh's socket load balancing;
// TestHitRewrittenByLaterConnectHook). The ruleset lets a
// flow's other packets pass with either mark, but a SYN only with MarkFastAllow
// (and only while a fast path decides TCP, Config.FastTCP there): a socket
// reconnecting with MarkFastFlow is held by the queue, decided by a live daemon
// (whose hook marked it anew anyway) or dropped, fail-closed, by a dead one's
// ruleset. Only the sockets of the served network namespace are moved (on a
// kernel before 5.15, whose sock_ops programs cannot read the namespace, those of
// any, by the mark's exact value).
//
// A socket whose SYN is on its way when the daemon dies (its connection not yet
// established) keeps MarkFastAllow, as the program that would move it is gone;
// the ruleset lets its next SYN pass only while the daemon lives (see "The
// lease"). A socket established when the daemon dies keeps
// MarkFastFlow after its connection ends, which lets no SYN pass; the peer's SYN
// of a simultaneous open with it is held too (LATCH-IN queues an untracked SYN
// without ACK), else its SYN-ACK, no bare SYN, would pass by MarkFastFlow.
// A socket that had MarkFastAllow from before this fast
// path (an older latch) is moved once it is established or closes.
//
// # Simultaneous open
//
// Without inbound connections held, the ruleset passes a peer's SYN to a local
// socket whose own SYN it holds (or denied); Linux's SYN_SENT takes it as the
// peer's half of a simultaneous open and answers with a SYN-ACK, which the
// ruleset passes too, and the peer's ACK completes a connection no verdict
// allowed. The cgroup_skb ingress program (latch_fast_skb_ingress, attached
// where the sock_ops program is: every process's sockets, or the hooks' cgroup)
// drops a segment with SYN and without ACK to a full socket in SYN_SENT of the
// served namespace (of every namespace on a kernel whose cgroup_skb programs
// cannot read it) and counts it (Stats.SimultaneousOpenDropped). Other packets
// cost a look at their socket's state. A legitimate simultaneous open still
// connects: the peer receives this socket's SYN once it is allowed and answers
// it with a SYN-ACK, which SYN_SENT takes as a normal handshake; the peer of a
// held socket would have to guess its initial sequence number, never sent. A
// socket's own SYN (a connect to its own address and port) passes. Two hosts
// that both drop such SYNs never connect by a simultaneous open (TCP hole
// punching between two latch hosts).
//
// # The lease
//
// A program can keep a socket in SYN_SENT with MarkFastAllow on purpose (a
// connect to an allowed address that drops SYNs; TCP_SYNCNT 127 keeps it there
// for hours) and use it whenever the daemon dies: connect(AF_UNSPEC), then a
// connect anywhere, which no hook decides. So the ruleset asks whether the
// daemon lives before it lets a SYN pass by MarkFastAllow, and before it runs the
// UDP match: Open pins a second socket filter, latch_fast_lease (PinDir,
// fast-lease-PID), which the ruleset's xt_bpf match runs last in those rules
// (internal/intercept/linux, Config.FastLease; native nftables: chains fastlease
// and udplease, over netlink). It matches while the map lease has a user
// reference (the map's usercnt, which the program reads through the map's
// pointer: a loader with CAP_PERFMON may). The daemon never pins the map, so
// its file descriptor is the only user reference, and the kernel drops it, at
// once (bpf_map_put_uref), when that file is released: at Close, and at the
// daemon's exit, crash or SIGKILL, in the same exit that releases the links of
// its connect hooks. Open moves the descriptor above every other it has
// (raiseLease), and a dying process's files are released from the highest
// descriptor down (close_files queues them in ascending order, task_work_run
// runs them last in, first out; TestDeathReleasesHighestFirst checks it), so
// the lease lapses before any hook goes: no moment without both. Close closes
// it first too. There is no timer to choose, so no margin to get wrong: the
// lease never lapses while the daemon lives (a daemon stopped by SIGSTOP,
// swapped out or starved keeps it, and its hooks keep deciding every connect),
// and a lapse costs a live daemon nothing but speed anyway (the SYN goes to the
// queue, which decides it). A daemon started next pins and holds its own; the
// ruleset it installs names that one. Under it, a socket a daemon gone before
// left with MarkFastAllow (its SYN on its way, then connected anywhere) would
// pass its next SYN by that mark: so Open, before it returns the pins the
// ruleset names, moves every TCP socket of its namespace with MarkFastAllow to
// MarkFastRedecide (a TCP iterator of the notrack kind, latch_fast_sweep;
// where the kernel refuses those, Linux before 5.15, that residual stays:
// Stats.LeaseSweepWhy), and the queue decides such a socket's next SYN. A socket
// the sweep cannot see (one back in TCP_CLOSE, in no TCP hash table) loses the
// mark at its next connect, also outside the hooks' cgroup (a socket of a
// daemon gone before whose --fast-path-cgroup was another, or was removed and
// made again; TestStaleFastAllowUnsweptOutsideHooks): the sock_ops program
// takes MarkFastAllow and MarkReject, the marks that decide a SYN by
// themselves, off a socket of the served namespace whose connect no connect
// hook of this daemon decided, as the SYN is built (send_pending). It leaves
// MarkFastFlow and MarkFastRedecide, with which a SYN goes to the queue anyway,
// and which may be an application's own fwmark under the mask (Mullvad's
// 0x6d6f6c65 is MarkFastFlow there; TestAppMarkOutsideHooksKept). What remains:
// the sock_ops program serves the root cgroup, but with Config.EndsCgroupPath
// (--attribution-cgroup, for tests and benchmarks), or where the root refuses
// it (Stats.TCPLocalWhy), only that cgroup or the hooks': outside it such a
// socket's SYN still passes under the lease. Before Linux 5.15 the program
// cannot tell the socket's namespace (the socket may be another namespace's,
// whose daemon just gave it the mark:
// TestOtherNamespaceFastMarkKeptWithoutNetnsCookie) and leaves the mark; those
// kernels have no sweep either. Without xt_bpf (or without a pin directory) the
// ruleset goes without the lease (Stats.Lease, LeaseWhy) and the residual above
// is back. Cost: one run of a program of a few instructions per
// packet that reaches those rules (a fast connect's SYN, the first datagram of
// a UDP flow; BenchmarkLease: within a nanosecond of a program that returns 1).
//
// # UDP
//
// A socket mark cannot carry a UDP decision exactly: the kernel copies an
// unconnected socket's mark before the sendmsg hook runs (a mark set there applies
// to the next datagram, to any destination), and a mark left on a connected socket
// outlives its conntrack entry (a datagram after the entry expired would pass
// without asking the rules in force then). So UDP is decided where the packet is:
// Open pins a socket filter program (latch_fast_udp) on a BPF file system
// (Config.PinDir), and the ruleset's output chain runs it through an xt_bpf match
// on the first datagram of every UDP flow that no verdict marked yet and that does
// not come back from a verdict (internal/intercept/linux, Config.FastUDPMatch). It
// builds the same key as the connect hooks from the current task's executable, the
// socket's owner (bpf_get_socket_uid) and the datagram's destination (IPv4, or
// IPv6 with UDP right after the fixed header), and matches only on an allow entry
// of the current generation that has not expired, and only if the current task is
// the socket's creator. The output chain usually runs in the task whose sendmsg
// built the datagram, but that task need not be the socket's owner (a program can
// connect a socket and run an allowed program with its stdout on it, so that the
// allowed program's output is the flow's first datagram), and in softirq or
// kernel-thread paths (tunnels, qdiscs) current is some unrelated task. So a
// cgroup/sock_create hook (attached with the connect hooks, to the same cgroup)
// records each UDP socket's creator by socket cookie in an LRU hash: its process
// (tgid) and executable (inode, dev, mount, directory). The match looks the
// datagram's socket up (bpf_get_socket_cookie) and matches only if a record exists,
// the current task is no kernel thread (task->flags & PF_KTHREAD, read by CO-RE),
// its tgid is the record's and its executable is the record's. Anything else is a
// miss: the queue attributes the datagram (to whoever created or connected the
// socket) and decides. A softirq that runs on a user task's stack sees that task as
// current; it can match only if that task is of the socket creator's process and
// runs the creator's executable, and then the datagram is that process's socket's,
// as the queue would attribute it (preempt_count is not read: on x86 it is a
// per-CPU variable, not in the task). Sockets created before the daemon started
// (or before the hooks were attached, or evicted from the LRU) have no record and
// always miss. A match gives the packet
// MarkAllow and the flow the allow conntrack mark, exactly as an allow from the
// queue, so the flow's later datagrams pass by conntrack (one history row per
// flow) and Redecide finds it. A flow conntrack forgot starts over: its next
// datagram is looked up again under the rules in force then. Only allows are
// stored for UDP: a deny or reject is left to the queue, which drops (deny) or
// answers port unreachable (reject) as before; the cost is the queue's, the
// decision the same. Stats.UDP says whether the ruleset runs the match
// (FastPath.SetUDP), Stats.UDPWhy why not.
//
// # The socket pin
//
// A UDP (UDP-Lite, ICMP echo) flow is decided for the socket that sent its
// first packet, but the ruleset passes its later packets by the conntrack
// mark, which outlives the socket (30 s after its last packet): another
// program that binds the freed local port, or shares it with SO_REUSEADDR,
// and sends to the same destination would pass by that mark. Open pins a
// third socket filter, latch_fast_pin (PinDir, fast-pin-PID; FastPath.SocketPin,
// or OpenSocketPin alone: the daemon loads it so when the fast path is off),
// which the ruleset's xt_bpf match runs
// (internal/intercept/linux, Config.FastSocketPin): on a packet back from an
// allow verdict (mark MarkAllow) it records the packet's own tuple (family,
// protocol, addresses, ports or echo identifier) -> the cookie of the packet's
// socket (bpf_get_socket_cookie; 0 for a packet without one) in an LRU hash
// of 65536 flows; on a later packet of an allowed flow it matches only if the
// packet's socket cookie is the one recorded, and a miss goes to the queue,
// whose allow records the new socket. In the input chain (a peer's packet,
// skb->ingress_ifindex set) it records the reversed tuple with a cookie no
// socket has, which the first local socket to send on the flow claims, unless
// the daemon recorded the socket its Resolver found for the peer's datagram
// before its verdict (then only that socket: review10, another program that
// shared the server's port or bound it once the server closed unanswering
// claimed the wildcard). SCTP and DCCP are keyed by ports and L2TP over IP by
// the address pair, as UDP (any user's socket sends them). A packet of
// another protocol, an ICMP error or echo reply always matches.
// Stats.SocketPin says whether the ruleset runs it (FastPath.SetSocketPin).
//
// # The receive check
//
// The pin holds what a flow's sockets send; the kernel chooses the socket
// that receives a peer's datagram as it arrives, after the ruleset passed
// it by the flow's conntrack mark: a socket that joined the flow's local
// port after the flow was decided (SO_REUSEADDR, any user's where the first
// set it too; SO_REUSEPORT, the same user's; a reuseport program steering)
// would receive the flow unasked (review12). latch_pin_ingress, a
// cgroup_skb ingress program in the pin's object (sharing its map, pins),
// attached to the root cgroup by Open and by OpenSocketPin
// (Stats.SocketPinReceive, SocketPinReceiveWhy; Config.NoReceiveCheck and
// OpenSocketPin's argument leave it off for tests), runs as the kernel
// queues a packet to a socket (sk_filter, skb->sk the receiving socket):
// for a full SOCK_DGRAM socket of UDP, UDP-Lite or a ping socket of the
// served namespace (of every namespace where the kernel's cgroup_skb
// programs cannot call bpf_get_netns_cookie), and a peer's UDP or UDP-Lite
// datagram to a unicast address or an echo (extended echo) reply, it looks
// the reversed tuple up in pins (the key latch_fast_pin records for what
// this host sends). No record, a record of this socket or of none (0):
// passes. PIN_ANY (an inbound flow whose socket the daemon did not find):
// this socket claims the flow (PIN_IN_CLAIMED) and it passes. Another
// socket's: dropped (SocketPinReceiveDropped) and reported through the ring
// pin_moves (struct fp_pin_move: the key, this socket's and the pinned
// socket's cookies) at most once a second per flow, whichever socket (pin_moved,
// an LRU of 4096; SocketPinReceiveLost counts reports the full ring lost).
// ReadPinMoves hands the reports to the daemon, whose backend
// (internal/intercept/linux, Backend.PinMoved) marks a UDP flow a peer
// opened (--inbound) for deciding again and attributes the peer's next
// datagram, held by LATCH-IN, to the receiving socket (procattr's
// ResolveSender by its cookie); its allow pins the flow to it. A flow this
// host opened stays its sender's. Multicast and broadcast (a destination in
// 224.0.0.0/4, 255.255.255.255 or ff00::/8, or one of the local routing
// table's IPv4 broadcast routes, which the loader keeps in local_bcast as
// they change; the rest of 240.0.0.0/4 is unicast to Linux, review20)
// pass to every socket on the port: by the address, not by the frame's
// multicast or broadcast MAC (pkt_type), which the peer chooses and the
// kernel delivers to one socket like any unicast datagram (review19; an
// IPv4 datagram in a broadcast frame passes while the loader cannot keep
// the broadcast addresses: before its first listing, and from a lost
// subscription to route changes until it subscribed again),
// as do raw sockets. An IPv6 datagram whose UDP header (echo reply) lies
// beyond MAX_EXT_HEADERS extension headers is dropped (its flow cannot be
// told; the kernel walks any number: review19). Cost: BenchmarkReceiveCheck, a
// datagram of a pinned flow to its own socket on loopback: about 250 ns of
// the program's run time per datagram by the kernel's statistics (which
// add their own clock reads), within the noise of a send and a receive
// (7.3 to 13.5 µs, with and without the check alike); every other packet a
// socket receives (TCP) costs the program's run up to its socket's type:
// 44 ns a run, 4.3 runs (191 ns) per connect of the bench's latch+fp
// scenario (test/bench -bpfstats, whose clock reads are in these numbers).
//
// # The sender stash
//
// The queue does not carry a packet's socket, and the daemon's Resolver finds
// a UDP datagram's socket by a lookup of its tuple, which gives the socket the
// kernel would deliver an answer to: where two sockets share the local port
// (SO_REUSEADDR, which two users' UDP sockets may both set, or SO_REUSEPORT),
// the last bound, whichever sent. latch_send_stash, pinned next to the socket
// pin (FastPath.SenderStash; OpenSocketPin loads it too), is an xt_bpf match
// the ruleset's LATCH-OUT runs on every UDP datagram before the first rule
// that may queue one (by protocol alone: not by the queue rules' matches on a
// flow's conntrack mark, which another CPU may change between two rules), so
// on every datagram the queue gets; it never matches.
// It records the datagram's socket cookie in an LRU hash (16384 entries)
// under a key the daemon computes from the bytes the queue hands it: the
// tuple, the IPv4 identification (0 for IPv6) and the first up to 32 bytes of
// the payload, as many as the IP header's length says there are (not the UDP
// length nor checksum, which a GSO packet has unfinished at OUTPUT). A key
// already recorded for another socket becomes 0 (ambiguous). The daemon
// takes (looks up and deletes) the entry of each datagram it reads and hands
// the cookie to the Resolver (procattr's ResolveSender): the socket with that
// cookie among those bound to the port. It also records, per local port
// (stash_ports, a preallocated hash of at most 65536 entries, never evicted),
// the one socket that sent through it, or that more than one did (sticky).
// A datagram whose entry is gone (an identical earlier datagram of its
// socket took it, or the LRU forgot it) or ambiguous is the port's one
// sender's if that is also the one socket bound to the port that could have
// sent it, else no program's: never the one socket bound to the port when
// the daemon looks alone, which need not be the one that sent (review12: a
// program shares an allowed program's port, sends identical datagrams and
// closes its socket), nor the port's one sender alone (review13: a datagram
// that reached the queue without passing the stash). The stash reads the
// payload with bpf_skb_load_bytes, pages too (UDP_SEGMENT, MSG_MORE and
// MSG_ZEROCOPY put it there; the linear-only read left such datagrams
// without a record and their port unmarked, review13), and marks the port
// shared if it still cannot. A datagram without a key (IPv6 extension
// headers: a routing header, which any program may set, is dropped by the
// ruleset's route rules where the kernel has xt_ipv6header, and the others
// need CAP_NET_RAW) is no program's.
//
// # Exactness
//
// The cache never changes what latch decides. Only a decision made by a rule
// (engine.ReasonRule) enters the map; never a person's answer, a default, a timeout
// or a question cap, never a drop (which must stay silent), never a UDP deny, never
// a forwarded connection and never inbound.
// Decisions whose result could depend on something not in the key are not cached:
// while any rule in force has a host-name condition (DNS labels change without a
// rule change), a local-port condition or a service condition, nothing is cached.
// The program identity is checked before a decision is stored: the executable the
// process ran when attribution identified it (engine.Request.ExeFile: device, inode
// and the mount it was executed through, read from /proc/PID/exe; read again here
// only if the backend did not give it) must be the very file (device, inode) at
// the path the rule matched, so a copy at another path, or a replaced file, misses.
// Because the file is the one attribution saw, a short-lived program's first
// verdict is stored even when the process exited before the store worker ran.
// The kernel's key says only which file a task runs, not whether attribution
// would verify the task: so the hooks take no key (a miss, decided through the
// queue) for a task in another user namespace than the host's (its root may name
// any program as its executable, prctl PR_SET_MM_MAP) or whose executable was
// deleted or replaced since it started (identify in bpf/fastpath.c; review28),
// nor for one whose executable file the kernel did not open to execute it (no
// __FMODE_EXEC in mm->exe_file->f_flags): prctl(PR_SET_MM_MAP with exe_fd, or
// PR_SET_MM_EXE_FILE) put a file the process opened there. A process in the
// host's user namespace cannot make that call, but a child it clones with
// CLONE_VM | CLONE_NEWUSER can, on the memory they share (review28's
// neighbour); attribution reads the same flag in its eBPF record
// (internal/procattr) and calls such a process unverified. A fentry program on
// the kernel's replace_mm_exe_file would record every replacement, but kernels
// in lockdown (integrity) refuse fentry programs (and BPF LSM ones); the flag
// needs no hook. It does not tell a file with the flag that reached the
// process otherwise: binfmt_misc's "O" flag hands an interpreter a descriptor
// of the program executed, opened for execve, and since Linux 6.7 any user may
// register such an entry in a binfmt_misc instance of a user namespace of
// their own; that descriptor, passed to the process in the host's namespace,
// names the program with the flag (TestBinfmtExecFDMasqueradeHitsEntry; open).
// Nor does the key have the file's name: a running program renamed away within
// its directory, or whose path another file is mounted over, keeps its key while
// attribution names it otherwise. So a decision is stored only under an inotify
// watch on its executable (IN_MOVE_SELF, IN_DELETE_SELF, IN_ATTRIB), and the
// entries stored under a watch are deleted at such an event, those of the
// executables at or under a mount point at a change of the host's or the
// daemon's mount table there (POLLPRI on mountinfo; review29, review33;
// exewatch_linux.go, mountwatch_linux.go). A file whose device, as stat gives
// it, is not its super block's (overlayfs over several file systems without
// xino, a btrfs subvolume) is not stored: the kernel's key, with the super
// block's device, does not tell it from another layer's file with the same
// inode number (review33). Both are asynchronous: a connect between the rename or
// mount and the daemon handling its event still hits. Without inotify or the
// mount tables' watch nothing is stored (Stats.Why).
//
// Every rule change (add, remove, import, answer remembered as a rule, expiry) calls
// RulesChanged synchronously, before the change's API call returns; it bumps the
// generation in a BPF array, and every entry stored under an older generation
// misses. A mode change, and a step of the wall clock, call ModeChanged, which
// bumps it over the rules in force (it reads none of its own). Entries also expire at the earlier of Config.TTL and their rule's expiry
// (CLOCK_BOOTTIME in the kernel). A decision is stored under the generation read
// (Ticket) before the engine decided it, so a decision that raced with a change is
// stored under the old generation and misses.
//
// # Notrack
//
// A TCP flow the connect hooks allowed needs no conntrack entry: its socket's
// mark says it is allowed, and the ruleset (internal/intercept/linux,
// Config.FastSockets) keeps the packets of sockets marked MarkFastAllow,
// MarkFastFlow or MarkFastRedecide (0x50000000) out of conntrack, both ways. A rule change must
// then reach the sockets, since there is no entry to mark: two TCP iterator
// programs (iter/tcp, latch_fast_redecide and latch_fast_restore), attached at
// Open and run when the daemon reads an iterator's fd (the kernel walks every TCP
// socket of the reader's network namespace, each full socket under its lock, and
// the programs check the namespace's cookie too), move the marks:
// RedecideSockets gives every socket marked MarkFastAllow or MarkFastFlow (under
// the mask) MarkFastRedecide, keeping the mark's other bits (an application's own SO_MARK
// bits), but those whose 4-tuple is in the keep map (flows the daemon knows and
// found unaffected; a tuple beyond the map's room, DefaultKeepEntries, is marked:
// one more decision, never a wrong one); the ruleset then holds the socket's next
// packet for the queue to decide again. AllowSocket gives one socket, by its
// 4-tuple, its fast mark back if it still has MarkFastRedecide (the queue allowed
// it again): MarkFastFlow, or MarkFastAllow if its SYN is still on its way
// (SYN_SENT; the sock_ops program moves it on once established). bpf_setsockopt(SOL_SOCKET, SO_MARK) is allowed in TCP iterators since
// Linux 5.15; a kernel that refuses the programs loads the rest of the fast path
// without them (Notrack says why), and the ruleset then keeps conntrack's path.
// SyncDecisions hands Run's callback every decision recorded so far before
// it returns (the reader is flushed; it answers once it found the ring empty),
// so that the daemon knows every socket a decision of the old rules allowed
// before it decides which to keep. Stats.TCPNotrack says whether the ruleset
// installed keeps the flows out of conntrack (SetNotrack), TCPNotrackWhy why not.
// A connect hook's miss leaves MarkFastRedecide and MarkFastFlow (a SYN with
// either is held by the queue): they may be an application's own fwmark, and a
// socket with either gets no hit at all, so that no hit's mark replaces them.
// A socket with MarkFastRedecide has the state callback on from its SYN
// (watch_fast): the MarkFastAllow the daemon gives it when the queue allows
// that SYN goes when it closes.
//
// # Limits
//
// The UDP match needs xt_bpf (CONFIG_NETFILTER_XT_MATCH_BPF) and a BPF file system
// to pin it in (PinDir: a directory of latch's on the one systemd mounts at
// /sys/fs/bpf, else STATE_DIR/bpf with one mounted on it; the directory must not be
// a symbolic link and must be the daemon's user's, mode 0700); without them UDP
// goes through the queue and Stats.UDPWhy says why.
// It serves the processes the connect hooks serve (Config.CgroupPath: the
// program compares the sending task's cgroup ancestors with it). A datagram that
// starts a flow from a kernel thread, from a process other than the socket's
// creator (a child it shares the socket with, a program it lent the socket to) or
// after the creator ran another executable (exec) misses, and the queue decides
// it; so does one on a socket created before the daemon started. The TCP connect
// hooks run in the task calling connect(2), whose executable is the key: the
// connector is credited, as the queue credits it (procattr's record of who
// connected the socket); a program that connects and then execs another program,
// or hands the socket on, made the decision at connect time under its own entry,
// as through the queue.
// The pinned program holds its maps, and a fail-closed daemon that dies leaves the
// ruleset, and so the program, in place; but the ruleset runs it only while the
// lease holds (see "The lease"), and new UDP flows then go to the queue, which
// without a reader drops them, as the TCP hooks stop with the daemon's links.
// The program itself also matches only while the daemon writes its heartbeat
// (every second, from Open to Close): 5 seconds after the last one it stops,
// for a ruleset without the lease (no rule can change meanwhile, since only a
// daemon changes rules). Processes in other
// mount namespaces see their executable through other mounts, so they get entries
// of their own. A hard link to the program in its
// own directory under another name is the same key (creating one needs write access
// to that directory, which could replace the program anyway). A TCP socket's mark
// lasts one connect (see "A mark for one connect" for what is left when the daemon
// dies).
//
// # History
//
// Each fast-path decision is sent through a BPF ring buffer (events: pid, uid,
// executable identity, remote address and port, rule id, and the flow's local
// address and port) and handed to Run's callback, which records it like any other
// connection and registers an allowed flow with the byte accountant by its tuple.
// A full ring buffer is counted (Stats.RingLost), never silent. The ring holds
// decisions only (socket ends have their own, below), so nothing but a burst of
// decisions can fill it. Its reader is woken only once 32 KiB wait
// (WAKEUP_BYTES), and reads on its own every 50 ms (readEvery): one wake-up per
// connection would cost a context switch per connection. Both rings are read
// from their mapped memory and waited for in the Go runtime's poller
// (ringWait), not in a blocking epoll_wait: a goroutine blocked in a system
// call holds a scheduler slot that the runtime's monitor thread takes back,
// after which it polls every 20 µs for a millisecond, and that polling cost
// the daemon about a fifth of its CPU time under load. Where a ring cannot be
// mapped, a ringbuf.Reader reads it instead; both readers serve Run's loops
// through one interface (ringReader). The readers' own system calls (the boot
// clock's reads) are raw: a goroutine entering a system call the scheduler is
// told of wakes the monitor thread from its deep sleep, to poll again.
//
// The connect hooks run before the kernel picks the local port, so with TCP the
// decision waits: the hook stores it in the socket's own storage (socks, a
// BPF_MAP_TYPE_SK_STORAGE map of struct fp_sock: the kernel makes the record at
// the socket's first hit, or when its byte counting starts (below), and frees it
// with the socket; no shared map entry is added or deleted per connect), and a
// cgroup sock_ops program (latch_fast_sockops, attached to the root cgroup, see
// below; to the hooks' cgroup where the root cannot be had) sends it
// at BPF_SOCK_OPS_TCP_CONNECT_CB, which tcp_connect calls once the source address
// and port are set, just before the SYN, within the same connect(2) (a
// non-blocking one too; with TCP_FASTOPEN_CONNECT, in the first write), gives
// the socket the decision's mark there, and marks it sent. Both run under the socket's lock, and nothing another socket does can
// push a waiting decision out. A socket connected to an IPv4-mapped address is
// IPv4 in the record, with the IPv4 source tcp_v4_connect set. Every connect
// marks empty what an earlier connect of the same socket left pending, and a hit
// stores its own; so a socket that connects again is recorded once per connect
// that sent a SYN. A connect that fails between the hook and tcp_connect (no
// route, no free local port) sent nothing and is not recorded (though counted as
// a hit); its record waits unsent until the socket's next connect or its close.
// A reject hit's SYN goes out (the ruleset answers it with a reset), so it is
// recorded, once. A decision of an older rule generation than the one in force
// at TCP_CONNECT_CB (the rules changed between a TCP_FASTOPEN_CONNECT connect and
// its first write) is dropped unsent, and the socket gets no mark: the SYN goes
// to the queue and is decided under the rules in force. If the kernel
// cannot give the socket its storage (out of memory, or the socket's option
// memory, net.core.optmem_max, is used up, which the program can do on purpose,
// with TCP MD5 keys), the lookup is a miss and the queue decides the connection:
// a decision that cannot wait for TCP_CONNECT_CB cannot be checked there.
// (sock_addr and sock_ops programs may use socket storage since Linux 5.3, before
// the ring buffer's 5.8.) Without the sock_ops program (a kernel that refuses it;
// Stats.TCPLocalWhy says why) nothing could check a decision again when its SYN
// leaves, and a connect whose SYN waits for its first write (TCP_FASTOPEN_CONNECT
// with a Fast Open cookie) could pass after a rule change under the decision made
// at connect: so TCP is not decided in the kernel then, every connect goes to the
// queue (counted as a miss), and only UDP is. The UDP match sends the
// datagram's source address and port, which is the flow's local end.
//
// # Socket ends
//
// The byte accountant must learn when a TCP flow ends. conntrack's update events
// tell it, but the kernel builds one for each TCP state change of every flow (in
// the connecting program's own time) as soon as anybody listens to the group. So
// the sock_ops program also turns the state callback on (bpf_sock_ops_cb_flags_set,
// BPF_SOCK_OPS_STATE_CB_FLAG) for every TCP socket of the served network namespace
// at TCP_CONNECT_CB (an active open) and PASSIVE_ESTABLISHED_CB (an accepted
// connection), and at a change to TCP_CLOSE sends the socket's 4-tuple and the
// time it ended (struct fp_end, 88 bytes; the time tells an older socket's end
// from one of a new connection on the same 4-tuple, which may be allowed before
// the end is read) to Run's ended callback, through a ring buffer of its own
// (ends, Config.EndsRingBytes, 1 MiB: 10922 ends) with the same delayed wake-up.
// Every TCP socket of the namespace ends through it, a busy server's accepted
// connections too, which latch never decided: in the decisions' ring a burst of
// them would take the room of the decisions, and a lost decision is a lost
// history row, while a lost end only ends its flow later (below). A second
// goroutine of Run reads the ends and hands them to Run's loop, which passes each
// to ended once its own ring was seen empty after the end was read: a socket's
// decision is sent (TCP_CONNECT_CB) before the socket can end, so the callback
// has every flow's decision before its end, as with one ring. TCP_CLOSE is where
// every TCP socket ends: tcp_done after a reset sent or received, after
// tcp_time_wait (both sides closed; the last ACK went out just before), after
// LAST_ACK's final ACK, a failed connect, a timeout. The callback runs before a
// reset the kernel sends on close, so the reader ends the flow with the counters
// it reads then, whatever conntrack's state. For this the program serves the root
// cgroup (every process) whatever cgroup the connect hooks serve: a flow the queue
// allowed ends this way too (Config.EndsCgroupPath, for tests and benchmarks, puts
// it and the byte counters on a cgroup holding the connect hooks' instead: the
// sockets of the processes outside report no end). Each state change then costs one call of the
// program, which returns at once but for TCP_CLOSE, and each socket's end one ring
// buffer record. The state callback is a flag of the socket, and each sock_ops
// program of the socket's cgroups is called for it: a daemon of another network
// namespace (a container's, its program at the root cgroup too) turns it on for
// its sockets, so the program sends only the ends of the served namespace's
// sockets (by bpf_get_netns_cookie at TCP_CLOSE), never another daemon's. The
// reader is woken as the data waiting passes each multiple of WAKEUP_BYTES, not
// at every record while that much waits (a wakeup is an interrupt in the
// connecting program's CPU; a reader that falls behind would cost every
// connection one). Stats.TCPEnds says whether ends are reported (TCPEndsWhy why not:
// no sock_ops program, Config.NoTCPEnds, no root cgroup, a kernel before 5.15,
// whose sock_ops programs cannot call bpf_get_netns_cookie: there the program is
// loaded with that call replaced by a 0, and reports decisions only); Stats.EndsLost counts
// those the full ring buffer of ends lost. Sockets connected before the program was attached
// have no state callback and are never reported; nor is a lost end: the
// accountant's periodic read of conntrack's table, or the entry's destroy event,
// ends those flows.
//
// # Socket bytes
//
// The accountant would read each ended flow's counters from conntrack once more
// (a netlink request per flow, the largest part of the daemon's cost per
// connection). So an actively opened socket counts its own: at TCP_CONNECT_CB
// (before the SYN) the sock_ops program gives each socket it watches counters
// (struct fp_bytes: bytes and packets, out and in) in its socket storage
// (socks, the record a hit's decision waited in, if there was one: one
// allocation per socket), and two
// cgroup_skb programs (latch_fast_skb_egress and latch_fast_skb_ingress, attached
// with the sock_ops program to the root cgroup) add each of its packets: 1 and
// skb->len, the packet's length from its IP header on, a GSO or GRO packet's
// whole, which is what conntrack adds per packet. For every other socket they look
// at its storage pointer and return; they never drop (they return 1). report_end
// copies the counters into the end (fp_end.flags END_BYTES; End.Counted, Bytes,
// Packets) and drops the socket's record (a socket may connect again). Egress is counted after
// the output chain and postrouting, ingress as TCP takes a packet for the socket,
// conntrack before either: a packet a chain drops between the two is in
// conntrack's counts only, and a packet after TCP_CLOSE (a reset sent on close, a
// FIN the TIME_WAIT socket answers) is not in the end's. The accountant falls back
// to conntrack when the socket's counts are below what it already reported.
// An accepted socket (PASSIVE_ESTABLISHED_CB, after a handshake conntrack
// counted) has no counters, and its end carries none. Stats.TCPEndBytes says
// whether ends carry counters; TCPEndBytesWhy says why not: no socket ends, a
// kernel without socket storage for sock_ops and cgroup_skb programs (probed
// before loading; the code that uses them is then never visited by the verifier,
// bytes_ok, a constant of .rodata, being 0), a kernel that refuses them anyway
// (the programs are loaded again without), or cgroup_skb programs the root cgroup
// refused. Sockets opened before the programs were attached have no counters.
//
// # Live counts
//
// SocketCounts reads the counters of the sockets that have them while they live,
// for the byte accountant's periodic report of a flow conntrack does not list.
// It runs an iterator program (bpf_seq_write of one struct fp_live per counting
// socket: family, local and remote address and port, the counters) and decodes
// the records (decodeLives; a bad record is skipped and reported in the error).
// The iterator is latch_fast_live, over the socket storage map socks
// (iter/bpf_sk_storage_map, Linux 5.9), which visits only the sockets that have
// a record; where the kernel refuses iterators over a map's elements (a trivial
// probe program says so before loading), latch_fast_live_tcp, over the TCP
// sockets of the reader's network namespace (iter/tcp), which looks each full
// socket's record up (bpf_sk_storage_get in tracing programs, Linux 5.11). The
// one not used is replaced by a placeholder before loading (the object's
// programs load together); a kernel that refuses the one chosen anyway gets the
// object loaded again without it. Stats.TCPLiveBytes says whether there are live
// counts, TCPLiveBytesVia through which iterator, TCPLiveBytesWhy why not (no
// socket counters, no iterator). An IPv4-mapped socket is listed as IPv4, as its
// end is.
//
// # What a fast connect costs
//
// Measured on a 2-core VM (Linux 6.18, kvm-clock; `test/bench -bpfstats`, and
// the programs timed step by step with bpf_ktime_get_ns in a build for the
// purpose), a connect the fast path allows runs about 5.5 µs of eBPF programs
// in all (each run counted with the statistics' own ~0.1 µs; sequential and
// concurrent connects together):
//
//   - latch_fast_connect4, 1.3-1.9 µs, of which 1.2-1.6 µs is making the
//     socket's storage (socks: two allocations charged to the map's memory
//     cgroup, and the map's bucket lock, taken with interrupts off, which a VM
//     makes dear; a client in another memory cgroup than the daemon's costs no
//     more); the verdict lookup and identify about 0.15 µs each;
//   - attribution's connect hook (internal/procattr, latch_sockaddr), 1.3-1.7
//     µs, mostly its LRU update (a map that is not full costs the same: 4,096
//     entries instead of 65,536 changed nothing; alone, 50,000 connects to
//     loopback from a cgroup of their own: 1.22-1.27 µs a run, 0.43-0.46 µs
//     without the update, so the update is about 0.8 µs; per-CPU LRU lists,
//     BPF_F_NO_COMMON_LRU, 1.64 and 1.96 µs against 1.54 and 1.99 µs: no
//     gain);
//   - latch_fast_sockops, about 2 µs over 7 runs: TCP_CONNECT_CB 0.6-0.9 µs
//     (send_pending: a ring buffer reservation, ~0.25 µs, its spin lock taken
//     with interrupts off; the mark), the state change to TCP_CLOSE 1.1 µs
//     (report_end 0.8-1 µs: the ends ring's reservation and writing a record
//     in ring memory gone cold), the rest a few tens of ns each;
//   - the cgroup_skb programs about 0.1 µs a packet, the lease match on the
//     SYN 0.1 µs.
//
// The storage is needed with byte counting on in any case (count_bytes makes it
// at TCP_CONNECT_CB for every active open), so carrying a hit's decision to
// TCP_CONNECT_CB another way (the task's storage, made once per thread) would
// save its making only with counting off. Everything but the TCP_CLOSE
// callback is on the path a sequential client waits for, about 3.5-4 µs
// without the statistics' share: at about 17 µs for a connect without a
// firewall, the programs alone make most of the 1.13-1.4x the bench shows (the
// ruleset's notrack rules add about 5%: its notrack scenario).
//
// Where the machine's time goes with 8 clients (December 2026, the same VM,
// `perf record -a -g` during latch+fp rounds of `test/bench -bulk 0`, as a
// share of the CPU time of the bench's clients and server plus the daemon;
// two captures, other helpers' tests running alongside): the daemon 8-12%,
// netfilter 5.3-5.4% (latch's ruleset, notrack included), eBPF about 6%: the
// fast path's programs and their socket storage's allocations 2.6%, the
// attribution hook (internal/procattr, its LRU update) 1.4-1.7%, the cgroup
// hooks' dispatch 1.5%. Together 19-23%, which is what the bench's throughput
// ratio (0.73-0.84) loses: the loss is CPU time, not waiting, so a cut shows
// in throughput only as its share of that total (cutting the daemon by a
// fifth is 2%, inside the bench's ±10% noise). The daemon's wakeups are not
// the cost: 250-700 voluntary context switches a second at 8,500 connects a
// second (0.03-0.08 a connect; the rings' WAKEUP_BYTES and the accountant's
// kick already batch them), 0.09 page faults a connect. Its CPU profile
// (steady state, startup left out): the history writer (SQLite) about 30%,
// the decisions' reader 20% (half of it TrackFlow, whose flow-table lookup
// missed the cache: ended flows stayed in the 65,536-entry table until
// evicted; a fifth the request's allocation), the byte accountant 10%, the
// garbage collector 8-12% (GODEBUG=gctrace=1: about 150 ms of CPU a cycle at
// 46 MB live, one cycle per some 65,000 connects: about 2 µs a connect), the
// scheduler and netpoll about 10%. Since notrack's flows are forgotten at
// their socket's end (intercept/linux: flowEntry.untracked; the table holds
// the flows that may go on, the accountant keeps none of them until its next
// poll), the bench's "daemon CPU per connect" went from 10.6-14.9 µs (main,
// six runs) to 8.8-13.1 µs (six runs, alternated with main's, other helpers'
// tests alongside; medians 13.1 and 10.5), the decisions' reader from 2.2-3.2
// to 1.4-2.2 µs a connect and the accountant's drain from 1.2-1.7 to 0.3-0.7
// µs (CPU profiles of three runs each); the history writer, 3.5-5 µs a
// connect, is now about 40% of it. Of netfilter's share, 39-41% was the
// reset a client sends as it closes with SO_LINGER 0 (the bench's -reset, on
// by default) while fast_closed cleared every fast socket's mark at
// TCP_CLOSE, just before tcp_send_active_reset builds the reset: conntrack
// made (and freed) an entry for it, INVALID, and it walked LATCH-OUT to its
// INVALID rules. Such a socket keeps MarkFastFlow for its reset now (see "A
// mark for one connect"), and the reset leaves untracked by its mark; two
// captures each, of latch+fp alone (-scenarios latch+fp -rounds 4), stacks
// of the bench's clients and server and the daemon, base and this
// alternating: netfilter (under nf_hook_slow) 5.28% and 5.38% before, 4.37%
// and 4.53% after; under the reset's send 2.16% and 1.99% before, 1.27% and
// 1.19% after, conntrack's part of it 0.84% and 0.79% before, 0.01% after;
// the reset's whole send (tcp_send_active_reset) 4.65-4.67% before,
// 3.49-3.58% after. What stays: under the SYN's send (tcp_connect, the
// SYN-ACK's receipt in it) 2.07-2.25%, packets in (ip_rcv) 0.92-1.17%, the
// connect hooks 2.40-2.72% (the attribution hook's LRU update 0.60-1.04%),
// sock_ops 1.37-1.50%. (xt_u32 ran three times on
// every TCP packet out while the fast marks' options rules matched it before
// the mark: 0.97% and 1.09% of the clients' CPU in two runs; 0.59% and 0.69%
// since they match the mark first.)
// (This VM is a PVM guest: a sample taken while interrupts are off lands on
// pvm_irq_enable, where they come back on; its callers, not the symbol, say
// where the time went: _raw_spin_unlock_irqrestore of the LRU, the ring or
// the storage map.)
//
// What the daemon allocates a fast connect, and what its collector costs
// (December 2026, the same VM, latch+fp rounds of `test/bench -bulk 0 -n
// 20000`, 68,000 connects a run; heap profiles with GODEBUG=memprofilerate=4096,
// written after a last collection): the decisions' reader allocates one object
// a connect, the request (engine.Request, 432 bytes in the 448-byte class:
// 67,148 and 69,137 in two runs), shared by the flow table, the byte
// accountant's reports and the history's call; the history (internal/store)
// one more small one and 0.3-0.5 KB of its queues' growth. Live after a
// collection: 31-38 MB, of which the engine's 10,000 compiled rules with their
// hit counters and a copy of the own rules about 19 MB, the event hub's queue
// 8 MB (16,384 items, made with the hub whether or not an observer is on; its
// untouched pages are not resident, and taking it away would make the
// collections more frequent, not cheaper: the goal is twice the live heap),
// the history's queues 7-9 MB, everything of the fast path, the flow table and
// the accountant under 2 MB. Two collections a run (GODEBUG=gctrace=1), 30-62
// ms of CPU each, mostly marking: 0.9-1.6 µs a connect. GOGC=200 halves the
// collections and raised the daemon's peak RSS (VmHWM) from 98-100 MB to
// 119-122 MB; its daemon CPU a connect, 12.1 and 14.3 µs against 14.0 and 13.1
// µs (two runs each, alternated), is inside the bench's noise: not worth the
// memory, which grows with the rule set. Filling the fast decision's request
// field by field (not a 432-byte copy with write barriers, about 30 ns less a
// decision in a micro-benchmark), making the flow's key once for the flow table
// and the accountant, and reading the clocks after a wait that ran out only
// when a record needs them (an idle reader read them, eight tries of two
// system calls each, every 50 ms) changed the daemon's CPU a connect from
// 12.5, 14.1 and 12.6 µs (main) to 11.9, 12.4 and 12.4 µs, three runs each
// alternated, and the paired throughput ratio with the daemon's catch-up not
// measurably (0.85-0.86x against 0.71-0.85x; without it 0.89-0.90x against
// 0.76-0.89x): the daemon's per-connect CPU is the history writer's above
// all, then the request's allocation (its first touch of fresh memory and its
// share of the collections) and the scheduler's wakeups.
//
// Where the eBPF share of a fast connect goes (December 2026, the same VM,
// `perf record -a -g -F 999` over a whole `test/bench -scenarios latch+fp
// -rounds 4 -n 30000 -bulk 0` run, other helpers' builds and tests running
// alongside; 10,841 samples of the bench's client and the daemon): the daemon
// 27% of that CPU, the programs 3.2% (latch_fast_connect4 1.0%,
// latch_fast_sockops 1.0%, latch_sockaddr 0.8%, every other one under 0.1%).
// Of the client's own CPU (softirqs included, 8,052 samples): netfilter 5.8%,
// the cgroup hooks' dispatch with their programs 4.9%, of which making and
// looking up the socket's storage (socks) 1.4% (allocate_slab, the memory
// cgroup's charge, the map bucket's lock: most of latch_fast_connect4's
// samples), freeing it with the socket 0.3% (plus its deferred frees' share of
// rcu_do_batch, 0.8% for every RCU callback), latch_sockaddr's LRU update 0.8%
// (two thirds of that program's samples, on the LRU's locks), the two rings'
// reservations and submits 0.4%, bpf_setsockopt under 0.1%. None of the three
// big ones can go without a loss: the storage carries the counters (with byte
// counting on, count_bytes makes it for every active open of the served
// namespace, hit or not); the attribution record is what Resolve finds for a
// fast flow the queue decides again (notrack's MarkFastRedecide, a decision
// made void at TCP_CONNECT_CB) and ResolveEnded for its end, without which
// procattr's viaEBPF has no record and the flow's process is at best
// IdentityUnverified; each ring record is one a reader needs. The programs'
// whole share bounds what any cut in them can give the bench's throughput
// ratio, well inside its noise; the daemon is the cost. (`-bpfstats`, base
// build, three runs: latch_fast_sockops 1588-1932 ns a connect,
// latch_fast_connect4 1319-1803, latch_sockaddr 1139-1415, the rest 560-770:
// 4.7-5.9 µs with the statistics' own share; the spread is the shared
// machine's.) Reading a SYN-ACK's flags in latch_fast_skb_ingress with plain
// loads of the linear data instead of two bpf_skb_load_bytes (and one
// bpf_sk_fullsock fewer) saved about 30 ns a connect (157-226 against 197-231
// ns a run, four in-run pairs with the slots swapped, one of them no better):
// not worth the code.
package fastpath
