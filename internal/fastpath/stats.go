package fastpath

// Stats are the fast path's counters.
type Stats struct {
	// Connections the kernel allowed or refused from the map; a TCP connect that
	// then failed before sending anything (no route, no free local port) is
	// counted but not recorded (no Events).
	HitsAllow   uint64 `json:"hits_allow"`
	HitsReject  uint64 `json:"hits_reject"`
	Misses      uint64 `json:"misses"`       // no entry: decided through the queue
	Stale       uint64 `json:"stale"`        // an entry of an older rule generation, or expired
	NoIdentity  uint64 `json:"no_identity"`  // the task's executable or socket owner could not be read
	RingLost    uint64 `json:"ring_lost"`    // decisions not recorded: their ring buffer was full
	Events      uint64 `json:"events"`       // decisions read from their ring buffer
	BadEvents   uint64 `json:"bad_events"`   // ring buffer records that were not a decision or a socket end (ignored)
	Stored      uint64 `json:"stored"`       // verdicts stored in the map
	NotStored   uint64 `json:"not_stored"`   // verdicts the fast path may not decide itself (or found its store queue full)
	StoreErrors uint64 `json:"store_errors"` // verdicts the kernel map refused
	Entries     int    `json:"entries"`      // entries in the map (live or stale)
	MaxEntries  int    `json:"max_entries"`
	Generation  uint64 `json:"generation"`
	Cacheable   bool   `json:"cacheable"`           // the rules in force allow caching
	Why         string `json:"why,omitempty"`       // why not
	Cgroup      string `json:"cgroup,omitempty"`    // where the hooks are attached
	UDP         bool   `json:"udp"`                 // UDP flows are decided too (the ruleset runs the UDP match)
	UDPWhy      string `json:"udp_why,omitempty"`   // why not
	UDPMatch    string `json:"udp_match,omitempty"` // the pinned UDP match program
	// TCPLocal says whether the sock_ops program is attached: it records TCP
	// decisions with the connection's local address and port, and checks each
	// decision again as its SYN leaves. Without it TCP is not decided in the kernel
	// (every connect goes through the queue); TCPLocalWhy says why not.
	TCPLocal    bool   `json:"tcp_local"`
	TCPLocalWhy string `json:"tcp_local_why,omitempty"`
	// TCPRulesetWhy says why the ruleset does not pass a TCP connect the
	// fast path allowed by its socket's mark ("": it does): the firewall
	// could not load the matches that reset a fast socket's source-routed
	// packets (no xt_u32 or xt_ipv6header), and the queue decides every
	// connect.
	TCPRulesetWhy string `json:"tcp_ruleset_why,omitempty"`
	// TCPEnds says whether the kernel reports the end of every TCP socket of the
	// daemon's network namespace (the sock_ops program's state callback), which
	// ends the byte accountant's flows without conntrack's update events;
	// TCPEndsWhy says why not. Ends counts the ends read, EndsLost those their
	// full ring buffer lost (a ring of their own: a burst of ends never crowds out
	// decisions; the periodic read of conntrack's table ends those flows).
	TCPEnds    bool   `json:"tcp_ends"`
	TCPEndsWhy string `json:"tcp_ends_why,omitempty"`
	Ends       uint64 `json:"ends"`
	EndsLost   uint64 `json:"ends_lost"`
	// TCPEndBytes says whether the end of a TCP socket the kernel opened
	// actively carries the socket's counters of bytes and packets (cgroup_skb
	// programs count them in the socket's storage), with which the byte
	// accountant ends its flow without reading conntrack once more;
	// TCPEndBytesWhy says why not (the accountant reads conntrack for each end).
	// SimultaneousOpenGuard says whether the cgroup_skb ingress program is
	// attached (to SimultaneousOpenGuardCgroup: where the sock_ops program is,
	// every process's sockets, or the hooks' cgroup): it drops a segment with
	// SYN and without ACK to a socket in SYN_SENT, the peer's half of a
	// simultaneous open, with which the host a held (or denied) connect goes to
	// would connect it anyway; SimultaneousOpenDropped counts those dropped.
	// SimultaneousOpenGuardWhy says why not.
	SimultaneousOpenGuard       bool   `json:"simultaneous_open_guard"`
	SimultaneousOpenGuardWhy    string `json:"simultaneous_open_guard_why,omitempty"`
	SimultaneousOpenGuardCgroup string `json:"simultaneous_open_guard_cgroup,omitempty"`
	SimultaneousOpenDropped     uint64 `json:"simultaneous_open_dropped"`
	TCPEndBytes                 bool   `json:"tcp_end_bytes"`
	TCPEndBytesWhy              string `json:"tcp_end_bytes_why,omitempty"`
	// TCPLiveBytes says whether the counters of the TCP sockets the kernel
	// counts (TCPEndBytes) can be read while the sockets live
	// (FastPath.SocketCounts, an iterator over their storage, Linux 5.9): the
	// byte accountant reports a long flow's bytes from them when conntrack has
	// no entry for it; TCPLiveBytesWhy says why not (such a flow shows its bytes
	// at its end only).
	TCPLiveBytes    bool   `json:"tcp_live_bytes"`
	TCPLiveBytesWhy string `json:"tcp_live_bytes_why,omitempty"`
	// TCPLiveBytesVia names the iterator that reads them: "socket storage
	// iterator" (over the sockets' records, Linux 5.9) or, where the kernel
	// refuses iterators over a map's elements, "TCP socket iterator" (over every
	// TCP socket of the namespace, each one's record looked up).
	TCPLiveBytesVia string `json:"tcp_live_bytes_via,omitempty"`
	// TCPNotrack says whether the fast path's TCP flows stay out of conntrack:
	// the ruleset does not track a socket the fast path allowed, and a rule
	// change marks such sockets for deciding again through the TCP socket
	// iterators; TCPNotrackWhy says why not (no iterators: the kernel refused
	// them, before Linux 5.15; or a ruleset without the notrack rules), and the
	// flows go through conntrack as before.
	TCPNotrack bool `json:"tcp_notrack"`
	// Lease says whether the ruleset lets a SYN pass by its socket's
	// MarkFastAllow, and runs the UDP match, only while the daemon lives (its
	// xt_bpf match runs the lease program pinned at LeaseMatch, see "The
	// lease" in the package doc); LeaseWhy says why not: then a socket whose
	// SYN was on its way when the daemon died may connect again anywhere once
	// it is gone.
	Lease bool `json:"lease"`
	// SocketPin says whether the ruleset passes a packet of an allowed UDP,
	// UDP-Lite or ICMP echo flow only from the socket the flow was allowed for
	// (its xt_bpf match runs the program pinned at SocketPinMatch, see "The
	// socket pin" in the package doc); SocketPinWhy says why not: then another
	// program that binds the local port of an allowed flow's closed socket (or
	// shares it with SO_REUSEPORT) sends on that flow unasked while its
	// conntrack entry lives.
	SocketPin      bool   `json:"socket_pin"`
	SocketPinWhy   string `json:"socket_pin_why,omitempty"`
	SocketPinMatch string `json:"socket_pin_match,omitempty"`
	// SocketPinReceive says whether the socket pin's receive check is
	// attached (to SocketPinReceiveCgroup, the root cgroup; see "The receive
	// check" in the package doc): a peer's datagram (echo reply) of a pinned
	// flow reaches only the socket the flow is pinned to. Without it a
	// program that joins the local port of an allowed flow (SO_REUSEADDR,
	// SO_REUSEPORT) receives the flow's datagrams unasked.
	// SocketPinReceiveWhy says why not. SocketPinReceiveDropped counts the
	// packets it dropped, SocketPinReceiveClaimed the inbound flows the first
	// receiving socket claimed, SocketPinReceiveLost the reports of a drop
	// the daemon did not get (its ring was full).
	SocketPinReceive        bool   `json:"socket_pin_receive"`
	SocketPinReceiveWhy     string `json:"socket_pin_receive_why,omitempty"`
	SocketPinReceiveCgroup  string `json:"socket_pin_receive_cgroup,omitempty"`
	SocketPinReceiveDropped uint64 `json:"socket_pin_receive_dropped"`
	SocketPinReceiveClaimed uint64 `json:"socket_pin_receive_claimed"`
	SocketPinReceiveLost    uint64 `json:"socket_pin_receive_lost"`
	// SenderStash says whether the ruleset records, for each UDP datagram
	// this host sends to the queue, the socket that sent it (its xt_bpf
	// match runs the program pinned at SenderStashMatch, see "The sender
	// stash" in the package doc), so that the daemon attributes a datagram
	// to its sender where two sockets share its local port; SenderStashWhy
	// says why not: then such a datagram is attributed to the socket a
	// lookup of its tuple finds (the last bound), which may be another
	// program's.
	SenderStash      bool   `json:"sender_stash"`
	SenderStashWhy   string `json:"sender_stash_why,omitempty"`
	SenderStashMatch string `json:"sender_stash_match,omitempty"`
	LeaseWhy         string `json:"lease_why,omitempty"`
	LeaseMatch       string `json:"lease_match,omitempty"`
	// LeaseSwept is how many sockets a daemon gone before left with
	// MarkFastAllow (their SYN on its way when it died) Open moved to
	// MarkFastRedecide, so that this daemon's lease does not let their next SYN
	// pass undecided; LeaseSweepWhy says why Open could not look (no TCP socket
	// iterators): then such a socket's SYN retransmissions pass under this
	// daemon's lease (its next connect loses the mark if the connect hooks
	// serve its cgroup).
	LeaseSwept    int    `json:"lease_swept"`
	LeaseSweepWhy string `json:"lease_sweep_why,omitempty"`
	TCPNotrackWhy string `json:"tcp_notrack_why,omitempty"`
}
