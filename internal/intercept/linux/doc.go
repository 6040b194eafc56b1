// Package linux is latch's Linux interception backend: netfilter rules send every new
// connection to an NFQUEUE queue, the backend describes each held packet as an
// engine.Request and carries out the Decider's verdict.
//
// # Ruleset
//
// The backend installs its own chains, LATCH-OUT (jumped to from the first position
// of the filter table's OUTPUT chain), with Config.Inbound LATCH-IN (from INPUT) and,
// with Config.ExemptLoopback, LATCH-POST (from the mangle table's POSTROUTING: see
// MarkLoopbackExempt), for IPv4 and IPv6, with iptables-nft or iptables-legacy; or a table "inet latch"
// where the kernel's nftables can queue natively. With Config.Hostnames, LATCH-OUT
// first copies every DNS query (UDP and TCP to port 53, conntrack direction original)
// and LATCH-IN every DNS response on a flow this host opened to the NFLOG group
// DNSLogGroup. Then LATCH-OUT returns at once, in its first rules, what the
// rules below would return unchanged, with no IPv4 options or IPv6 routing
// header (the source-route rules below take no other): with notrack the fast
// path's untracked TCP packets but SYNs (MarkFastFlow) and its SYN
// (MarkFastAllow, with the lease), and a TCP packet but a SYN of a flow whose
// conntrack mark says it was allowed, not marked MarkReject (iptablesEarlyReturns
// in firewall_linux.go: why nothing below could act on them; most packets out
// walk one to three rules). Then, in order, LATCH-OUT:
//
//  1. returns for loopback (Config.ExemptLoopback: what leaves by lo, not
//     DNAT'd or DNAT'd to a local address, since -o is the route's before
//     DNAT and a host's OUTPUT DNAT may send it elsewhere; first gives a flow whose
//     first packet leaves by lo from a source that is not local the conntrack
//     mark MarkLoopbackForged, and right after the return drops every packet
//     of a flow with that mark, as LATCH-IN does after its own loopback
//     return: see MarkLoopbackForged; gives a flow the return passes
//     the conntrack mark MarkLoopbackExempt, and LATCH-POST, first in the
//     mangle table's POSTROUTING, drops a packet of a flow with either
//     mark that leaves by another interface than lo: a host's reroute by
//     mark during the output hook, which -o does not see, review24; and an
//     untracked packet without latch's mark bits that leaves by another
//     interface than lo to a local address: the host's NOTRACK of lo left
//     no entry to mark, see untrackedPost in firewall_linux.go) and
//     for the daemon's own sockets
//     (skb mark OwnMark under MarkMask, set with SO_MARK by Control; every mark is
//     tested by its exact value under MarkMask, never by a bit; this rule comes
//     after the fast path's, whose marks are others: most packets are a fast
//     socket's); with the kernel
//     fast path (Config.FastTCP or notrack), resets an IPv6 TCP packet with a
//     routing header that carries one of the fast path's socket marks (IPV6_RTHDR
//     type 4 needs no privilege, and may be set after the connect: the packet goes
//     to the header's next segment, not to the address the fast path decided, the
//     connect's), and likewise an IPv4 TCP packet with options (header length
//     over 5 words: a loose or strict source route, IP_OPTIONS, needs no
//     privilege and makes the route's first hop the packet's destination; xt_u32
//     reads the header length, nft ip hdrlength); in every mode, resets a TCP
//     packet conntrack cannot place (INVALID) with IPv4 options or an IPv6
//     routing header, whatever its mark (the route's first hop is a new tuple,
//     on which a FIN|ACK segment, or with nf_conntrack_tcp_loose=0 every
//     segment, is INVALID: the INVALID return below would pass data of a
//     queue-allowed connection to a host nothing decided); without xt_u32 or
//     xt_ipv6header (iptables) Start installs without the fast path's TCP
//     rules and notrack, and this rule drops every INVALID TCP packet instead
//     (see optionsRules in firewall_linux.go); with notrack
//     (Config.FastSockets, see "Notrack") returns for a TCP packet conntrack does
//     not track (UNTRACKED) that carries MarkFastAllow (with Config.FastLease,
//     only while the lease program matches: the daemon lives), or MarkFastFlow unless it
//     is a SYN (a SYN with MarkFastFlow is a fast socket's next connect, which
//     only 5 decides: see MarkFastFlow); returns at once for a packet
//     of a flow whose conntrack mark says it was allowed, but a TCP SYN and a packet
//     marked MarkReject (most packets are of allowed flows, and 2 to 7 would only
//     return them at 7, see iptablesRules); returns at once for a TCP packet
//     conntrack cannot place (INVALID), but a SYN and one marked MarkReject,
//     which the rest would only return at its end (a reset a fast socket sends
//     after its TCP_CLOSE cleared its mark, such as one after
//     connect(AF_UNSPEC); the reset of close(2) with SO_LINGER 0 keeps
//     MarkFastFlow and leaves untracked, see fastpath's doc; not in
//     LATCH-FWD, which drops INVALID TCP); returns for a TCP reset conntrack
//     calls RELATED, a REJECT's (which no socket sends; held by 6 when the
//     rejected segment was a reply direction's, it never reached its socket:
//     review16; LATCH-IN too, for one over loopback); with Config.FastUDPMatch,
//     gives the first datagram of a UDP flow (conntrack NEW, conntrack mark and
//     packet mark without latch's bits) MarkAllow when the kernel fast path's UDP
//     match (xt_bpf; for native nftables a rule in chain udpfast, added over
//     netlink because nft cannot write it, whose match goes to udpfast_allow)
//     accepts it (with Config.FastLease, only while the lease matches: chain
//     udplease goes to udpfast), so that 2 decides the flow as for an allow verdict;
//  2. for a packet coming back from an allow verdict (mark MarkAllow, NF_REPEAT): saves
//     the mark to the conntrack mark and returns, so the rest of OUTPUT still applies;
//     with Config.FastSocketPin, first the socket pin (xt_bpf) records a UDP,
//     UDP-Lite or ICMP echo request packet's socket (its cookie) for the
//     packet's tuple (LATCH-IN: the reversed tuple, for the socket the
//     Resolver found for the peer's datagram, which the daemon records before
//     its verdict; with none found, for the first local socket that answers
//     on it), and LATCH-OUT then queues a packet of such a flow
//     that 7 did not return (see 7);
//  3. for a packet coming back from a reject verdict (mark MarkReject, NF_REPEAT):
//     REJECT with a TCP reset, or ICMP port unreachable for other protocols (an
//     untracked packet's reset too); with notrack, then queues an UNTRACKED TCP
//     packet carrying MarkFastRedecide (a fast socket a rule change marked, see
//     "Notrack"): decided again as 6 decides a flow marked MarkRedecide;
//  4. with Config.FastTCP, for a TCP SYN carrying MarkFastAllow (the kernel
//     fast path allowed its connect, see internal/fastpath) on a flow whose
//     conntrack mark is still
//     unset: sets MarkAllow in the conntrack mark and returns; such a SYN on a
//     flow already marked MarkAllow (a retransmission) returns too (without
//     notrack; with it, such a SYN is untracked and returned at 1); with
//     Config.FastLease only while the lease matches (native nftables: chain
//     fastlease, whose lease match goes to fastpass). Never a SYN
//     carrying MarkFastFlow, which the fast path gives the socket in place of
//     MarkFastAllow once its connection is established: the mark that lets a
//     SYN pass does not outlive the connect it was given for;
//  5. queues every other TCP SYN, matched by flags and not by conntrack state, so a SYN that
//     hits a stale conntrack entry is held too;
//  6. queues the packets that the side that opened a flow sends (conntrack direction
//     original) while its conntrack mark is MarkRedecide (see Redecide); with
//     Config.Inbound, LATCH-OUT then, after 7's returns, gives what this host
//     sends on a flow the peer opened (conntrack ESTABLISHED, direction reply;
//     not over loopback nor to one of this host's addresses out another
//     interface, whose opener is a local socket that 6 holds)
//     with any of latch's conntrack marks (MarkRedecide) MarkRedecideReply and
//     queues it by that packet mark alone (native nftables: one rule sets
//     and queues), before the returns by protocol (see Redecide); LATCH-IN
//     does the same to what the peer sends on a flow this host opened
//     (direction reply there; over loopback too, whose opener is a local
//     socket decided by its own rules), which the reader decides as that
//     flow, for the socket that receives it (review16);
//  7. returns for flows whose conntrack mark says they were allowed; with
//     Config.FastSocketPin, LATCH-OUT returns a UDP, UDP-Lite or ICMP echo
//     request packet of such a flow (at 1's early return) only if it comes
//     from the socket its allow was for (the socket pin), so that another
//     program that binds the local port an allowed socket freed, or shares it
//     with SO_REUSEADDR, is not passed by the flow's mark: with
//     Config.FastUDPMatch the UDP match (1) decides a UDP datagram of it for
//     its own socket as for a new flow (a program that opens a socket per
//     exchange soon reuses a closed one's local port), else it is queued after
//     3 and decided for its own program, like a flow marked MarkRedecide (an
//     allow records its socket at 2; a deny drops the packet and the pin
//     stays the first socket's). A flow the pin does not know (allowed before
//     the daemon started, or forgotten by its LRU map) is queued once too.
//     SCTP, DCCP and L2TP over IP are pinned too (their sockets need no
//     privilege). Other protocols, ICMP errors and echo replies pass by the
//     mark as before. Native nftables: chains sockpin and sockpin_rec, whose xt_bpf
//     rules are added over netlink like udpfast's. Without it (no kernel
//     fast path) an allowed flow passes from any socket while its conntrack
//     entry lives;
//  8. queues the first packet of every other flow (conntrack NEW): TCP picked up
//     mid-stream, UDP, and any other protocol; for UDP and other protocols also
//     what conntrack cannot place (INVALID: a raw socket's datagram with a bad
//     length, an SCTP ABORT out of the blue) or does not track (UNTRACKED);
//  9. without Config.Inbound, queues what this host sends on a UDP flow the peer
//     opened (conntrack direction reply) that no verdict allowed (see "Replies on
//     flows the peer opened");
//  10. queues every ICMP and ICMPv6 message, whatever its type and conntrack state,
//     but those the network needs (see below);
//  11. without Config.Inbound, queues the reply direction of every other protocol
//     as in 9, but SCTP and DCCP.
//
// With Config.FastSenderStash, LATCH-OUT runs the sender stash (xt_bpf, a
// match that never matches) once on every UDP datagram past 2 and 3, by
// protocol alone, before the first rule that may queue one (7's queue, 6, 8,
// 9): it records the socket that sent each datagram the queue gets (native
// nftables: a jump to chain sendstash, whose xt_bpf rule is added over
// netlink). Not with the queue rules' matches on the flow's conntrack mark,
// which another CPU may change between two rules (review14). With the socket
// pin, the allowed flow's return after 6 returns a packet other than TCP only
// from the flow's socket and queues it else, as 7 does (its mark may have
// become MarkAllow since 7's queue rule); then it queues a packet other than
// TCP of direction original whose flow has any of latch's marks, which only
// two changes of the mark during one walk bring there (MarkRedecide at 7's
// queue, MarkAllow at 6 and that return, MarkRedecide again at the queue
// after it), lest it leave by the return meant for flows from before latch
// (review15; no rule sets a mark back to 0).
//
// LATCH-IN (Config.Inbound) is the same but for the daemon's sockets, the fast path
// (4; with notrack, 1 returns an UNTRACKED TCP packet whose local socket carries
// MarkFastAllow, MarkFastFlow or MarkFastRedecide, but queues one that is a SYN without
// ACK: the peer's half of a simultaneous open, which would let the socket's
// SYN-ACK pass LATCH-OUT at 1 for a socket that kept a fast mark, unless it
// comes back from its verdict with MarkAllow or MarkReject, which 2 and 3 carry
// out (queued again, a SYN to a listener with a fast-valued mark would be
// decided for ever); and 3 queues nothing of the kind), TCP picked up mid-stream (8: a late segment of a flow conntrack forgot is no
// connection anyone opens) and 9 and 11; after 5 it drops a TCP segment with
// SYN that conntrack calls INVALID (SYN with FIN or RST; a SYN-ACK answering no
// SYN conntrack saw): Linux's SYN_SENT takes a SYN|FIN as the peer's half of a
// simultaneous open and answers with a SYN-ACK (INVALID too, and no SYN without
// ACK, so LATCH-OUT passes it), and the peer's ACK then established a
// connection whose own SYN was still held. LATCH-FWD (Config.Forward) is LATCH-IN
// plus 8 for TCP (a container's raw socket can start a flow without a SYN), and it
// drops TCP that conntrack calls INVALID (flags no handshake allows, such as a
// bare FIN): such segments join no flow latch decided, and a raw socket, which
// Docker gives a container's root by default, could otherwise carry data in them.
// Before the rules that pass an allowed flow it drops a packet with IPv4 options
// (but IGMP's and RSVP's) or an IPv6 routing header, TCP too (LATCH-OUT drops
// only other protocols' there, see iptablesRouteRules): such a raw socket writes a
// segment of its allowed connection to F, in its window, with a source route via
// F, and F sends it on to a host nobody decided.
// The host's own chains let INVALID TCP pass (see ICMP below: CAP_NET_RAW in the
// host's namespace is beyond a per-program decision; and a late segment after a
// flow ended is INVALID too, which the peer's stack answers).
//
// # Replies on flows the peer opened
//
// Without Config.Inbound nothing holds what a peer sends first: its UDP datagram
// reaches a local socket and opens a conntrack entry, with this host's side as the
// reply direction. What a local program then sends back on that entry is its own
// talk to the peer, begun without a question, so LATCH-OUT holds it (9, 11) while
// the entry's mark is not MarkAllow (0, or MarkRedecide after Redecide), and it is
// decided as an outbound connection of the sending program to the peer
// (Request.Direction out), like a first datagram the program sent itself. An allow
// marks the entry as usual and later packets, both ways, pass by the mark; a deny
// or drop leaves it unmarked, so the next datagram is held again. UDP servers on
// this host therefore need an allow for their answers when inbound is not held
// (with Config.Inbound the peer's datagram is decided on the way in, and its allow
// marks the flow). Not held: the answers to this host's own queries (DNS
// responses and the like arrive in the reply direction of a flow this host
// opened: LATCH-IN, not LATCH-OUT); TCP, SCTP and DCCP, whose reply direction
// answers a handshake the peer started (the kernel accepts the connection, as with
// any inbound connection); ICMP, whose answers to the peer's queries the kernel
// sends (see below). The flow table keeps such a request under its outbound tuple;
// Redecide and byte accounting also find it under the entry's reversed tuple, and
// count what this host sent as its bytes out.
//
// # ICMP
//
// A conntrack state NEW match would miss most of ICMP: conntrack calls types it
// does not know INVALID (extended echo, 42), neighbour discovery and MLD UNTRACKED,
// and a query reusing a stale entry ESTABLISHED. So every ICMP message is held (a
// question, decided by the engine's icmp/icmpv6 rules) except:
//
//   - errors about a flow conntrack knows (state RELATED: destination unreachable,
//     packet too big, time exceeded, parameter problem, quoting a packet of a
//     tracked flow), so that path MTU discovery works and programs learn that a
//     port is closed; an error quoting nothing conntrack knows is held;
//   - answers to a query the peer sent (ESTABLISHED, conntrack direction reply):
//     the echo reply the kernel itself sends to a ping. Without Config.Inbound such
//     queries are never held, with it they were decided on the way in;
//   - IGMP with TTL 1 (IPv4), neighbour discovery (133-137) with hop limit 255
//     and MLD (130-132, 143) with hop limit 1 (IPv6): the kernel's own
//     bookkeeping, for no program, without which no IPv6 neighbour is reachable
//     and multicast stops. The TTL and hop limit are the ones the RFCs prescribe,
//     so the same types built to travel beyond the link are held.
//
// Later packets of an allowed ICMP flow (echo requests with the same identifier)
// skip the queue by their conntrack mark, like any flow. A local program cannot use
// the peer's query to talk unheld: answers to it need a raw socket, and a ping
// socket's own echo request (type 8) does not match the reply tuple of the peer's
// (type 0), so it opens a new, held entry.
//
// What may send which ICMP: an unprivileged program can send only echo and
// extended echo requests (ping sockets, for the groups in
// net.ipv4.ping_group_range; extended echo, RFC 8335, since Linux 5.13), with any
// data, and those are held. Every other message, errors included, needs a raw
// socket, that is CAP_NET_RAW in the host's network namespace (root, or a binary
// given the capability; a user namespace's CAP_NET_RAW reaches only its own network
// namespaces). Such a process can also
// forge packets that join a flow already allowed or opened by the peer (an error
// quoting an allowed flow, a TCP segment of an allowed connection, a TCP packet
// conntrack calls INVALID): latch decides per program for programs that use
// sockets, not for holders of CAP_NET_RAW.
//
// Marks use only the bits of MarkMask, so marks set by others survive.
//
// Without a queue reader the NFQUEUE rules drop (fail-closed) or, with
// Config.FailOpen, accept (--queue-bypass). A full queue or an overflowing socket
// always drops (the queue is bound without NFQA_CFG_F_FAIL_OPEN); ENOBUFS is counted in
// Stats.Overflows and the reader reads on. A killed daemon leaves its rules in place,
// which keeps failing closed; the next daemon replaces them in one transaction, or
// Cleanup removes them. On a clean exit Run removes every rule, chain and table it
// added, including the filter tables and base chains iptables-nft created for it, so
// iptables-save and nft list ruleset print what they printed before.
//
// # Verdicts
//
// Allow sets MarkAllow and NF_REPEAT: the packet runs through the hook again, the
// ruleset saves the mark to conntrack, and later packets of the flow skip the queue.
// Reject sets MarkReject and NF_REPEAT: the ruleset answers with a TCP reset (the
// program sees "connection refused" at once) or an ICMP port unreachable. Deny does
// the same for TCP and drops other protocols; Drop drops.
//
// # Redecide
//
// Redecide gives the conntrack entries of allowed flows whose remembered Request
// matches (Config.MaxFlows and FlowTTL bound that memory; Redecide(nil) finds every
// entry by its mark) the mark MarkRedecide instead of MarkAllow. The next packet
// the side that opened the flow sends (this host for an outbound flow: a SYN, a data
// segment or bare ACK, a UDP datagram; the peer for an inbound one, with
// Config.Inbound; this host for a UDP flow the peer opened that was decided as
// outbound, see above) is then held and decided again; an allow saves MarkAllow
// again. A held TCP packet of such a flow that no program's socket sent (the
// program closed it: FIN_WAIT, TIME_WAIT) is decided as the flow of the program
// it was allowed for, for 3 minutes after the change, if a conntrack GET finds
// it in the entry the change marked (see Backend.openerOf); before, it was a
// question about an unknown program. The daemon passes
// engine.AffectedAllowed: a change that only adds allow rules or removes
// deny, reject or drop rules marks nothing.
// Marking rather than deleting the entries keeps the flow's direction: after a
// deletion, a peer that spoke first would make conntrack see the flow as a new
// inbound one, and this host's packets as its replies, which are never held. Without
// Config.Inbound the other side's packets pass until then. With it, on a flow
// the peer opened, what this host sends (conntrack direction reply) is
// held too (MarkRedecideReply, see 6) and decided as the inbound flow, for the
// program of the socket that sent it (found as for any packet this host
// sends: the sender stash, the socket's tuple), so that the first packet
// either side sends decides. An allow saves MarkAllow for the whole flow and
// pins a UDP flow to that socket (pinInbound, then 2), as an allow of the
// peer's datagram does; a deny drops the datagram (resets the local TCP
// socket: MarkReject) and the mark stays, so every later packet of either
// side is decided too. Decided as this host's outbound connection instead,
// as without Config.Inbound (9), the program's outbound rules would mark
// allowed a flow whose inbound rules now deny it, the peer's side too
// (review15: this host's side left undecided from any socket on the port
// until the peer's next packet was decided, for ever if that was denied). A
// forwarded flow's other side is held the same way (LATCH-FWD, Config.Forward)
// and decided as the flow, the request its opener's packet makes (review16:
// a container's answers to an outside host passed until that host's next
// packet was decided, for ever once it was denied). With Config.Inbound, the
// peer's side of a flow this host opened is held the same way (LATCH-IN, the
// same two rules) and decided as that flow, the local program's outbound
// request (local and remote read reversed from the packet that arrives),
// for the program of the socket that receives it (the Resolver's receive
// lookup, as for an inbound packet): an allow saves MarkAllow for the whole
// flow (and pins a UDP flow to that socket, pinInbound), so a stream the new
// rules still allow is held once and flows on; a deny drops the datagram (a
// TCP segment is answered with a reset to the peer; the local socket is reset
// when its own next segment is denied) and the mark stays. A datagram no
// local socket receives (the program closed it) is credited to the program
// the flow was allowed for (Backend.openerOf), not decided as no program's.
// Before, the
// peer's packets passed until the program's next packet was decided, which a
// program that only listens after its first datagram never sends: a peer
// pushed into a flow the rules deny for as long as it kept the entry alive,
// and a TCP peer up to a window of data, which the socket had queued before
// its ACK was held (review16, TestOutboundRedecidePeerPushes,
// TestOutboundTCPRedecidePeerPushes). Only packets of marked flows reach
// these rules: an allowed flow's packets return before them. With notrack,
// the fast path's TCP flows are outside conntrack, and the peer's segments
// of a socket marked MarkFastRedecide still pass (LATCH-IN returns them by
// the socket's mark) until this host's next segment, its ACK, is held.
// ICMP entries are deleted instead (the
// flow's own host speaks first). With notrack, the fast path's TCP flows have no
// conntrack entry: Redecide marks their sockets instead (see "Notrack").
//
// # Notrack
//
// With Config.FastSockets (the kernel fast path's TCP socket iterators) the
// ruleset keeps the fast path's TCP flows out of conntrack: no entry, no event,
// nothing for the byte accountant to read or dump per flow. In the raw table
// (iptables: chains LATCH-RAW-OUT from OUTPUT, LATCH-RAW-PRE from PREROUTING and
// LATCH-RAW-SK; nftables: chains rawout and rawpre of table inet latch, at
// priority raw, before conntrack):
//
//   - a TCP packet this host sends whose mark (under MarkMask) is MarkFastAllow,
//     MarkFastFlow or MarkFastRedecide is not tracked (CT --notrack): a TCP
//     socket's packets carry its SO_MARK, which the fast path sets (a SYN with
//     MarkFastFlow too: untracked, it is held by 5 all the same);
//   - a TCP packet that arrives for a local socket with one of those marks is not
//     tracked either; only one addressed to this host (iptables -m addrtype
//     --dst-type LOCAL, nftables fib daddr type local): the socket lookup would
//     find a listener on the wildcard address for a forwarded packet to any
//     host's port, and LATCH-FWD cannot hold an untracked flow's segments. nftables reads the socket's mark (socket mark) without
//     touching the packet's. iptables can read it only by -m socket
//     --restore-skmark, which sets the packet's whole mark to the socket's
//     (xt_socket: skb->mark = sk->sk_mark, for any local socket it finds): so
//     only a packet that carries no mark yet is looked at (one another program
//     marked keeps its mark, and is tracked), and LATCH-RAW-SK puts the mark
//     back to 0 unless the socket's is a fast one, in which case the packet
//     keeps just latch's mark (its socket's other bits are dropped); a packet
//     whose socket has no mark (mark 0 after the socket match) does not jump
//     there at all;
//   - with Config.Hostnames, TCP to and from port 53 stays tracked (the DNS
//     log's rules follow conntrack's direction).
//
// The filter chains return for those packets (1: in LATCH-OUT those marked
// MarkFastAllow, and those marked MarkFastFlow but a SYN; in LATCH-IN by the
// socket's mark, any of the three: the peer's packets of a flow being decided
// again pass until this host's next packet is decided, as for a conntrack flow)
// and hold this host's packets marked MarkFastRedecide (3). Rule 4 stays for a ruleset the firewall refused
// notrack's rules in (no socket match, no raw table: Backend.Notrack says why;
// the fast path's flows then go through conntrack as before).
//
// Redecide then works on the sockets: before the call returns, after marking
// conntrack's entries, it has the fast path's iterator give every TCP socket
// marked MarkFastAllow or MarkFastFlow MarkFastRedecide instead (the mark's other
// bits stay), but the sockets of TCP flows the flow table still knows and the change did not
// affect. A fast socket whose decision the daemon has not read yet (the
// decisions' ring buffer is read every ~50 ms) is not known, so it is marked; to
// know every socket whose decision was made under the old rules, Redecide first
// has the fast path hand over every decision recorded so far
// (SocketMarks.SyncDecisions; a connect between the rule generation's bump and
// its SYN is checked at TCP_CONNECT_CB and goes to the queue). Outbound packets
// are kept out of conntrack by the socket's mark before conntrack looks them up,
// whatever entry exists: an entry the peer's packets might open (without the
// inbound rule) never carries this host's packets, so a peer that speaks first
// cannot make them pass as replies.
//
// A queued packet with MarkFastRedecide is decided as any queued packet of a
// conntrack flow marked MarkRedecide: the same request, an outbound connection of
// its socket's program. Its flow's other packets queued meanwhile wait for that
// one decision (fastGroup: one history row, at most one question); an allow gives
// the socket its fast mark back (SocketMarks.AllowSocket, before any of the
// flow's packets is let go: MarkFastFlow, or MarkFastAllow while its SYN is on its
// way), so later packets pass in the kernel again; a deny or
// reject answers with a reset (MarkReject). For 2 s after (until the next rule
// change) the flow's packets still queued get the same verdict.
//
// The flows' ends come from their sockets (Config.SocketEnds, with their byte
// counts): conntrack has no entry to end them or to read counts from along the
// way, so periodic reports of a long notracked flow need the sockets' live counts.
// A fast-path TCP flow registered while the ruleset notracks (TrackFlow; not to
// or from port 53, which stays tracked with the DNS log) is forgotten once its
// socket's end, with the socket's counts, has ended it: the flow table then
// holds the flows that may still go on, not the tens of thousands a busy host
// ended (no conntrack entry, event or mark of such a flow is to come, and its
// socket is gone from those Redecide marks).
//
// A fast socket's mark lasts one connect (see MarkFastFlow and internal/fastpath,
// "A mark for one connect"): established, it carries MarkFastFlow, which lets no
// SYN pass, and at TCP_CLOSE (a refused connect, connect(AF_UNSPEC), its end) the
// fast path clears it, so a daemon that dies (its connect hooks go with it, its
// ruleset stays) leaves no socket that may connect anywhere by its mark (a
// connect that fails before its SYN is built gets no mark: it is given as the SYN
// is). A socket whose SYN is on its way when the daemon dies keeps
// MarkFastAllow: with Config.FastLease its next SYN, once the daemon is gone,
// is held all the same (the lease lapses with the daemon, see
// internal/fastpath, "The lease"); without (no xt_bpf) such a socket may
// connect again, anywhere, after connect(AF_UNSPEC).
//
// # Attribution
//
// With a Resolver, TCP and UDP requests name the local process: for an outbound
// packet the owner of the socket that sent it (checked against the packet's uid), for
// an inbound one the owner of the socket listening on, or bound to, the local
// address. The interface the packet leaves or arrives by goes along, so sockets bound
// to a device (SO_BINDTODEVICE: VPN clients, ping -I) are found too. A UDP
// datagram this host sends, with Config.FastSenderStash and a Resolver that
// implements SenderResolver, is attributed to the socket the sender stash
// recorded for it (the reader takes the record: one map lookup-and-delete), so
// that two sockets sharing its local port are told apart; where the stash has
// no record, or an ambiguous one, to the one socket that ever sent from the
// port through the stash if it is also the one socket bound to the port
// (whatever address the others are bound to or peer they are connected to:
// IP_PKTINFO, sendto; review14), else to no program (not to the one bound when the
// reader looks alone: the sender may have shared the port and closed its
// socket since, review12; nor to the port's one sender alone: the datagram
// may not have passed the stash, review13). A datagram the stash cannot key
// (IPv6 extension headers) is no program's.
//
// # Readers
//
// The read loop never waits for a decision: it parses the packet, builds the
// Request, calls the Decider and reads on; verdicts are written from whatever
// goroutine the Decider answers on. One reader handles what it reads, so the common
// case costs no hand-off between goroutines; a reader stuck in one packet for more
// than a couple of milliseconds (an attribution that has to scan /proc) starts a
// spare reader, up to four, so one slow attribution never stalls the queue. Spares
// leave once no reader is stuck.
package linux

import (
	"net/netip"
	"time"

	"github.com/latchfw/latch/internal/dnsname"
	"github.com/latchfw/latch/internal/engine"
	"github.com/latchfw/latch/internal/intercept"
	"github.com/latchfw/latch/internal/procattr"
)

// DefaultQueue is the NFQUEUE queue number latch uses unless told otherwise.
const DefaultQueue uint16 = 4242

// DefaultDNSLogGroup is the NFLOG group DNS queries and responses are copied to for
// hostnames.
const DefaultDNSLogGroup uint16 = 4243

// Marks. latch owns the bits of MarkMask in the packet mark and the conntrack mark.
const (
	MarkMask   uint32 = 0x70000000
	MarkAllow  uint32 = 0x10000000 // allowed: saved to the conntrack mark
	MarkReject uint32 = 0x20000000 // rejected: the ruleset answers with a reset/unreachable
	// OwnMark is the SO_MARK of the daemon's own sockets (see Control): their packets
	// are never held.
	OwnMark uint32 = 0x40000000
	// MarkRedecide is a conntrack mark only: Redecide gives it to allowed flows whose
	// verdict a rule change may have changed.
	MarkRedecide uint32 = 0x30000000
	// MarkFastAllow is a packet mark only: the socket mark the kernel fast path
	// (internal/fastpath) gives a connection a rule allowed before, at its
	// connect (as the kernel builds the SYN). Its SYN, on a flow no verdict
	// marked yet, gets MarkAllow in its conntrack mark and passes (with
	// Config.FastTCP). The fast path moves the
	// socket to MarkFastFlow once the connection is established and clears
	// either when the socket moves to TCP_CLOSE, so that the mark does not
	// outlive the connect it was given for.
	MarkFastAllow uint32 = 0x30000000
	// MarkFastFlow is a socket (and so packet) mark only: the kernel fast path
	// gives it in place of MarkFastAllow to a fast socket whose connection is
	// established. The flow's other packets pass with it as with
	// MarkFastAllow (with notrack: untracked, see "Notrack"), but never a SYN:
	// the socket's next connect (connect(AF_UNSPEC) ends the connection, and
	// any program may) is decided by the connect hook of a live daemon, which
	// marks it anew, or held by the queue (dropped, fail-closed, when the
	// daemon is gone and its hooks with it).
	MarkFastFlow uint32 = 0x60000000
	// MarkFastRedecide is a socket (and so packet) mark only: Redecide gives it,
	// with notrack (see "Notrack"), to the sockets of the fast path's TCP flows
	// whose verdict a rule change may have changed, instead of MarkFastAllow.
	// Their next packet this host sends is held and decided again. Its value
	// under MarkMask is no other mark's: every rule tests latch's marks by
	// their exact value under MarkMask (OwnMark too, whose bit it shares).
	MarkFastRedecide uint32 = 0x50000000
	// MarkRedecideReply is a packet mark only: with Config.Inbound, LATCH-OUT
	// gives it to a packet this host sends on a flow the peer opened
	// (conntrack direction reply) whose conntrack mark is one of latch's
	// (MarkRedecide after a rule change; see Redecide), and queues it. The
	// reader then decides it as the inbound flow it belongs to
	// (Request.Direction inbound, local and remote as sent) for the
	// program of the socket that sent it, and an allow marks the flow
	// MarkAllow and pins it to that socket, as an allow of the peer's
	// datagram does. Its value under MarkMask is no other mark's. (A program
	// that gives its own socket latch's bits with SO_MARK, which needs
	// CAP_NET_ADMIN or, since Linux 5.17, CAP_NET_RAW (checked on 6.18: an
	// unprivileged process with only CAP_NET_RAW sets it; see "ICMP" for
	// what CAP_NET_RAW may do anyway), is beyond a per-program decision, as
	// with OwnMark: with
	// this value its packets may be held where they would pass, and decided
	// as inbound.) Not over loopback, whose opener is a local socket (rule 6
	// holds its next packet; review16), nor to a local address out another
	// interface (IP_UNICAST_IF and the like: the destination's address
	// type, review18). With Config.Forward, LATCH-FWD gives
	// it to what the side that did not open a forwarded flow sends while the
	// flow has one of latch's marks, and the reader decides it as the flow:
	// the request its opener's packet makes (local and remote reversed),
	// whose allow marks it MarkAllow again (review16). With Config.Inbound,
	// LATCH-IN gives it to what the peer sends on a flow this host opened
	// (conntrack direction reply there) while the flow has one of latch's
	// marks, and the reader decides it as that flow (Request.Direction
	// outbound, local and remote reversed) for the program of the socket
	// that receives it; an allow marks the flow MarkAllow and pins a UDP
	// flow to that socket (review16: the peer pushed into a flow the rules
	// deny until the program sent again). Over loopback too: the opener is
	// a local socket, and it is its own rules that decide.
	MarkRedecideReply uint32 = 0x70000000
	// MarkLoopbackForged is a conntrack mark only (its value is the packet
	// mark MarkRedecideReply's: no rule tests that one in the conntrack
	// mark, nor this one in the packet mark): with
	// Config.ExemptLoopback, LATCH-OUT gives it to a flow whose first
	// packet leaves by lo from a source that is not one of this host's
	// addresses (an IPV6_FREEBIND socket bound to a remote host's address,
	// which needs no privilege), and LATCH-OUT and LATCH-IN drop every
	// packet of such a flow that does not travel by lo. Such a flow seems
	// opened by the remote host and nothing decided it (loopback is
	// exempt): without the drop, what a local socket sends on it to that
	// host was the reply direction of an undecided flow and passed as a
	// flow from before latch does with Config.Inbound, and the host's
	// answers with it (review18). Everything of a loopback flow stays on lo
	// and passes: a transparent proxy's flow to a local backend with the
	// client's address, whose answers policy routing brings back to lo.
	// The daemon's conntrack reads take only the exact values MarkAllow and
	// MarkRedecide and skip it (Redecide's filter, the event filter; the
	// accountant's dump selects by the bit those two share, which this
	// value has too, and observe drops it). Not given without
	// Config.ExemptLoopback: there the flow's first packet is held, and an
	// allow's CONNMARK save would overwrite it (see the README's Open note).
	MarkLoopbackForged uint32 = 0x70000000
	// MarkLoopbackExempt is a conntrack mark only (its value is the packet
	// mark MarkFastFlow's, which no rule tests in the conntrack mark): with
	// Config.ExemptLoopback, LATCH-OUT gives it to a flow whose packet the
	// loopback return passes (any packet of an entry without latch's mark,
	// not only a new one: a host's full-mask CONNMARK save erases it
	// mid-flow, review25; from a local address to a local one, or to an
	// anycast one (with IPv6 forwarding the host's own subnet-router
	// anycast addresses are reached by lo), which a forged packet on a
	// real flow's tuple is not, review27), holds a
	// packet of such a flow that gets past the returns (it leaves by
	// another interface now, its address moved: decided as any flow out,
	// review25), and a chain on the postrouting hook
	// (LATCH-POST in the mangle table; table inet latch's postrouting
	// chain) drops every packet of such a flow, or of a MarkLoopbackForged
	// one, that leaves by another interface than lo (review24). The output
	// interface the filter rules see (-o, oifname) is the nf_hook_state's,
	// fixed when the output hook is called (the socket's route, lo); a
	// host's policy routing by mark (an ip rule fwmark before the local
	// table, the mark set in the mangle table or an nft route chain)
	// reroutes the packet during the hook and it leaves by another
	// interface, undecided. Only the postrouting hook sees that interface.
	// The postrouting rule tests the two bits both loopback marks have
	// (loopbackMarks): one rule, which no other conntrack mark of latch's
	// matches (MarkAllow, MarkRedecide). A flow the queue decides (an allow
	// saves MarkAllow over it) and a flow from before the ruleset (no mark)
	// pass: only what nothing decided is dropped. The daemon's conntrack
	// reads skip it (it lacks the bit MarkAllow and MarkRedecide share).
	// An untracked loopback packet (the host's NOTRACK of lo) has no entry
	// to mark: the postrouting chain's second rule drops an untracked
	// packet without latch's bits in its packet mark that leaves by
	// another interface than lo to one of this host's addresses, tested in
	// that order so that only such a packet pays the address type's lookup
	// (untrackedPost in firewall_linux.go;
	// TestLoopbackExemptRerouteUntrackedOut).
	MarkLoopbackExempt uint32 = 0x60000000
)

// loopbackMarks is the conntrack mark bits MarkLoopbackExempt and
// MarkLoopbackForged share and no other conntrack mark of latch's has both of:
// the postrouting drop tests them (value and mask).
const loopbackMarks = MarkLoopbackExempt & MarkLoopbackForged

// Firewall mechanisms for Config.Firewall.
const (
	FirewallNftables       = "nftables"
	FirewallIptablesNft    = "iptables-nft"
	FirewallIptablesLegacy = "iptables-legacy"
)

// Resolver finds the local process that owns a connection; *procattr.Resolver
// implements it. A failure returns PID 0 / Exe "" and an error, never a wrong process.
type Resolver interface {
	// ResolveDev finds the owner of the local socket of an outbound connection from
	// local to remote. uid is the packet's socket owner (NFQUEUE's UID attribute) or
	// -1; ifindex is the interface the packet leaves by (0 if unknown), needed to find
	// a socket bound to a device (SO_BINDTODEVICE).
	ResolveDev(proto engine.Protocol, local, remote netip.AddrPort, uid int32, ifindex int) (procattr.Process, error)
	// ResolveInbound finds the process that will accept an inbound connection from
	// remote to local arriving by interface ifindex (0 if unknown): the owner of the
	// socket listening on (TCP) or bound to (UDP) local.
	ResolveInbound(proto engine.Protocol, local, remote netip.AddrPort, ifindex int) (procattr.Process, error)
}

// SocketMarks moves the kernel fast path's TCP sockets between their fast marks
// (MarkFastAllow, MarkFastFlow) and MarkFastRedecide (*fastpath.FastPath
// implements it, with TCP socket
// iterators). With it in Config.FastSockets, the ruleset keeps the fast path's
// TCP flows out of conntrack (see "Notrack" in doc.go).
type SocketMarks interface {
	// SyncDecisions returns once every fast-path decision recorded before the
	// call was handed on (TrackFlow registered its allowed flows); an error if
	// some may not have been.
	SyncDecisions() error
	// RedecideSockets gives every TCP socket of the network namespace marked
	// MarkFastAllow or MarkFastFlow (under MarkMask) MarkFastRedecide instead, keeping the
	// mark's other bits, but those whose (local, remote) address and port keep
	// lists; it returns how many it moved, once done.
	RedecideSockets(keep [][2]netip.AddrPort) (int, error)
	// AllowSocket gives the TCP socket from local to remote its fast mark again
	// (MarkFastFlow; MarkFastAllow while its SYN is on its way) if it has
	// MarkFastRedecide, once done, and reports whether it did.
	AllowSocket(local, remote netip.AddrPort) (bool, error)
}

// ForwardResolver is what a Resolver also does to attribute forwarded connections:
// find the process that owns the sending socket in another network namespace on
// this machine, and name that namespace.
type ForwardResolver interface {
	ResolveForwarded(proto engine.Protocol, local, remote netip.AddrPort) (procattr.Process, procattr.Netns, error)
}

// Config configures the backend. The zero value is not ready: use New, which fills in
// defaults for zero fields as documented.
type Config struct {
	QueueNum uint16 // NFQUEUE queue number; 0: DefaultQueue
	Inbound  bool   // also hold new inbound connections
	// FailOpen: with no reader (daemon dead) new connections are accepted
	// (--queue-bypass). false: they are dropped.
	FailOpen bool
	// KeepRulesOnExit: a fail-closed Run that stops because its context is done
	// leaves the ruleset in place, as a crash would (no reader: new connections are
	// dropped), so that a daemon started next replaces it atomically and nothing
	// passes in between (a restart). Ignored when FailOpen.
	KeepRulesOnExit bool
	// ExemptLoopback: never hold traffic on the loopback interface that stays on
	// this host (DefaultConfig sets it; a bool's zero value cannot default to
	// true). A packet a host's DNAT sends from a local address to another host
	// is held.
	ExemptLoopback bool
	// Firewall forces a mechanism: "" detects (nftables, else iptables-nft, else
	// iptables-legacy), or one of the Firewall* constants.
	Firewall string
	// Resolver attributes connections to processes; nil: none (PID 0, Exe "").
	Resolver Resolver
	// HoldTimeout is a backstop: a held packet the Decider has not answered after it
	// is dropped and counted as an error. 0: 5 minutes. Set it above the engine's
	// prompt timeout.
	HoldTimeout time.Duration
	// MaxFlows bounds the memory of allowed flows kept for Redecide. 0: 65536.
	MaxFlows int
	// FlowTTL is how long an allowed flow is remembered for Redecide. 0: 24 hours.
	FlowTTL time.Duration
	// ReadBuffer is the queue socket's receive buffer in bytes; 0: 8 MiB. When it
	// overflows the kernel drops the packets it could not deliver (fail-closed) and
	// Stats.Overflows counts it.
	ReadBuffer int
	// Hostnames, if set, learns from DNS responses which name each address was asked
	// for, and every Request carries the name of its remote address (Request.Host).
	// The queries this host sends and the responses it receives are copied to the
	// daemon with NFLOG, which never holds them, and a response teaches only if it is
	// the first answer to one of those queries (dnsname.Learner); Backend.DNSStats
	// counts the rest.
	Hostnames *dnsname.Cache
	// DNSLogGroup is the NFLOG group for those copies; 0: DefaultDNSLogGroup.
	DNSLogGroup uint16
	// Ready, if set, is called once Run has bound the queue and installed the ruleset,
	// that is once connections are being held.
	Ready func()
	// Forward: also hold new connections this host forwards (chain LATCH-FWD from
	// FORWARD; nftables chain forward), as outbound connections of the process
	// that sent them in its own network namespace on this machine (see
	// ForwardResolver), with Request.Netns naming it.
	Forward bool
	// Logf, if set, receives notes about unusual events (leftover rules removed,
	// verdict errors). nil: silent.
	Logf func(format string, args ...any)
	// OnTraffic, if set, turns on byte accounting: Run sets the namespace's
	// net.netfilter.nf_conntrack_acct to 1 (and back when it stops), reads the
	// counters of the flows it allowed from conntrack, and calls OnTraffic with a
	// flow's totals every TrafficInterval while it moves bytes, and once more when it
	// ends (learnt from conntrack events: a TCP flow's TIME_WAIT or CLOSE, any
	// entry's destruction; or, with SocketEnds, from the flow's socket's end).
	// Calls come from one goroutine, one at a time; the slice is the backend's
	// again once the call returns (it is reused: copy what is kept).
	OnTraffic func([]intercept.Traffic)
	// TrafficInterval is how often a long-lived flow's bytes are reported; 0: 10 s.
	TrafficInterval time.Duration
	// TrafficPoll is how often conntrack's table is read when its events cannot be
	// had, which then bounds how late a flow's end is reported; 0: 500 ms (or
	// TrafficInterval if shorter). With events the table is read every
	// TrafficInterval.
	TrafficPoll time.Duration
	// FastUDPMatch is the pinned socket filter program of the kernel fast path's
	// UDP match (internal/fastpath, FastPath.UDPMatch); "": none. The output chain
	// runs it (an xt_bpf match) on the first datagram of every UDP flow that no
	// verdict marked yet, and a match decides the flow as an allow from the queue
	// does. Backend.FastUDP says whether the ruleset has it.
	FastUDPMatch string
	// FastTCP says that the kernel fast path (internal/fastpath) decides TCP
	// connects in this network namespace: LATCH-OUT lets a SYN carrying its
	// socket's MarkFastAllow pass (4). Without it that mark means nothing: a
	// socket that still carries it from an earlier daemon's fast path (one
	// whose SYN was on its way when that daemon stopped: after
	// connect(AF_UNSPEC) the socket may connect again, and no connect hook
	// runs to clear it) is held as any other. FastSockets implies it.
	FastTCP bool
	// FastLease is the pinned socket filter program of the kernel fast
	// path's lease (internal/fastpath, FastPath.Lease); "": none. LATCH-OUT
	// runs it (an xt_bpf match) on a SYN that would pass by its socket's
	// MarkFastAllow (with FastTCP), and before the UDP match (FastUDPMatch),
	// and lets the packet pass by them only on a match: while the daemon that
	// loaded it lives. A socket whose SYN was on its way when the daemon died
	// keeps the mark, and after connect(AF_UNSPEC) may connect again; its SYN
	// is then held (and dropped, fail-closed), and so is the first datagram
	// of a UDP flow. Backend.FastLease says whether the ruleset has it.
	FastLease string
	// FastSocketPin is the pinned socket filter program of the kernel fast
	// path's socket pin (internal/fastpath, FastPath.SocketPin); "": none.
	// LATCH-OUT runs it (an xt_bpf match) on a UDP, UDP-Lite or ICMP echo
	// packet back from an allow verdict (2: it records the packet's socket for
	// the packet's tuple) and on such a packet of an allowed flow (7: it
	// passes only if it comes from the socket recorded; otherwise the queue
	// decides it for its own socket's program). Without it an allowed flow's
	// conntrack mark outlives its socket: another program that binds the
	// freed local port sends on the flow unasked. Backend.FastSocketPin says
	// whether the ruleset has it. The iptables rulesets only. The pin's
	// receive check (internal/fastpath's latch_pin_ingress, not part of the
	// ruleset) drops a peer's datagram of a pinned flow that the kernel gives
	// another socket than the pinned one, and reports it to Backend.PinMoved
	// (the daemon wires FastPath.ReadPinMoves to it), which decides a UDP
	// flow the peer opened (Inbound) again for the receiving socket: its
	// conntrack entry gets MarkRedecide, LATCH-IN holds the peer's next
	// datagram, and attribution takes the receiving socket by its cookie.
	FastSocketPin string
	// FastSenderStash is the pinned socket filter program of the kernel
	// fast path's sender stash (internal/fastpath, FastPath.SenderStash);
	// "": none. LATCH-OUT runs it (an xt_bpf match that never matches) on
	// each UDP datagram before the first rule that may queue one: it records the socket
	// that sent the datagram, which the daemon takes as it reads the
	// datagram and hands, with a Resolver that implements SenderResolver,
	// to ResolveSender. Without it a datagram from a local port two sockets
	// share (SO_REUSEADDR, SO_REUSEPORT) is attributed to the socket a
	// lookup of its tuple finds, the last bound, which may be another
	// program's. Backend.FastSenderStash says whether the ruleset has it.
	FastSenderStash string
	// SocketEnds says that the end of every local TCP socket of this network
	// namespace is reported to Backend.SocketEnded (the kernel fast path's
	// sock_ops program, fastpath.Stats.TCPEnds): byte accounting then listens to
	// conntrack's destroy events only, not to its update events, which the kernel
	// would otherwise build for each TCP state change of every flow. An end that
	// carries the socket's byte counts (an active open, fastpath.Stats.TCPEndBytes)
	// ends its flow with them; any other is read from conntrack once more (see
	// accountant.endCounted). Ignored with
	// Forward (a forwarded flow has no local socket: its end is an update event).
	// A 4-tuple reused by a new connection before the old socket's end, or its
	// conntrack entry's destroy, is read is told apart by the end's time and by
	// the destroy coming within seconds of the new request (see
	// accountant.socketEnded and accountant.event).
	SocketEnds bool
	// SocketCounts, if not nil, calls fn for every local TCP socket whose bytes
	// the kernel counts (the kernel fast path's live counts,
	// fastpath.FastPath.SocketCounts, Stats.TCPLiveBytes), with the bytes it sent
	// (Out) and received (In) so far, each packet's length from its IP header on;
	// an error says not every socket was listed. The byte accountant's periodic
	// read takes them, after conntrack's table, for the flows latch allowed that
	// conntrack does not list (a flow kept out of conntrack, or whose entry was
	// deleted), and reports those as it reports conntrack's (see
	// accountant.observeSocket): without it such a flow shows its bytes at its
	// end only (its socket's end, SocketEnds).
	SocketCounts func(fn func(local, remote netip.AddrPort, bytes SocketBytes)) error
	// FastSockets, if set, moves the kernel fast path's TCP sockets between
	// their fast marks and MarkFastRedecide (fastpath.FastPath): the ruleset then
	// keeps the fast path's TCP flows out of conntrack, Redecide marks their
	// sockets, and an allow of one decided again gives its socket MarkFastAllow
	// back (see "Notrack"). Backend.Notrack says whether the ruleset has the
	// rules; without them (the firewall refused them) those flows go through
	// conntrack as before.
	FastSockets SocketMarks
}

// DefaultConfig returns the defaults: queue DefaultQueue, outbound only, fail-closed,
// loopback exempt, firewall detected, no attribution.
func DefaultConfig() Config {
	return Config{QueueNum: DefaultQueue, ExemptLoopback: true}
}

// SocketBytes are the bytes a local TCP socket sent (Out) and received (In) from
// its SYN to its end (fastpath.End.Bytes), or so far (Config.SocketCounts), each
// packet's length from its IP header on (what conntrack counts for it), as the
// kernel fast path counts them.
type SocketBytes struct{ Out, In uint64 }
